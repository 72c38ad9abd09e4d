"""torch.library registrations of the Poincaré-ball layer (poincare) family, with fake implementations.

    geoops::poincare_fc_fwd(Tensor x, Tensor z, Tensor? bias, Tensor c, float eps, bool save) -> (Tensor y, Tensor t)
        x (N, n), z (n, m), bias (m,) or None, c 0-dim (> 0) -> y (N, m) on the ball; t = x @ z (N, m) when
        save (the backward needs it), else empty
    geoops::poincare_fc_bwd(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, float eps, int mask)
        -> (dx, dz, dbias, dc); mask bits 1 dx, 2 dz, 4 dbias, 8 dc (0-dim float64); unselected ones are empty

x, z, bias share a float32/float64 dtype (geoops.poincare upcasts half types).  Each implementation picks
the backend per call: CPU -> the fused C++ kernels (csrc/cpu/poincare.cpp), elsewhere the eager reference
composition (geoops.reference.poincare, differentiated by autograd) -- there are no Triton kernels for this
family yet.  torch.compile sees opaque ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from .._library import caller, define_op, kernel_set

FAMILY = "poincare"


def _empty(x):
    return x.new_empty(0)


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def poincare_fc_fwd(x, z, bias, c, eps, save):
        b = _empty(x) if bias is None else bias
        return tuple(_backend.compiled().poincare_fc_fwd_cpu(x, z, b, c, eps, save))

    @staticmethod
    def poincare_fc_bwd(g, x, z, bias, c, t, eps, mask):
        b = _empty(x) if bias is None else bias
        gx, gz, gb, gc = _backend.compiled().poincare_fc_bwd_cpu(g, x, z, b, c, t, eps, mask)
        return gx, gz, gb, (gc.to(c.dtype) if gc.numel() else _empty(c))


class _Reference:
    """The op contract above, evaluated with geoops.reference.poincare (autograd for the backward)."""

    @staticmethod
    def poincare_fc_fwd(x, z, bias, c, eps, save):
        from ..reference import poincare as ref

        with torch.no_grad():
            y = ref.poincare_fc(x, z, bias, c.to(x.dtype), eps=eps).contiguous()
            t = (x @ z) if save else _empty(x)
        return y, t

    @staticmethod
    def poincare_fc_bwd(g, x, z, bias, c, t, eps, mask):
        from ..reference import poincare as ref

        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            zz = z.detach().requires_grad_(True)
            bb = None if bias is None else bias.detach().requires_grad_(True)
            cc = c.detach().to(x.dtype).requires_grad_(True)
            y = ref.poincare_fc(xx, zz, bb, cc, eps=eps)
            ins = [xx, zz, cc] + ([bb] if bb is not None else [])
            gs = torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True)
        gx = gs[0] if mask & 1 else _empty(x)
        gz = gs[1] if mask & 2 else _empty(x)
        gb = gs[3] if (mask & 4 and bias is not None) else _empty(x)
        gc = gs[2].to(c.dtype) if mask & 8 else _empty(c)
        zero = lambda t, ref_t: torch.zeros_like(ref_t) if t is None else t  # noqa: E731
        return (zero(gx, x), zero(gz, z), zero(gb, x if bias is None else bias), zero(gc, c))


def kernels(device: torch.device):
    """The kernel set that the current backend setting picks for `device` (no Triton kernels: reference)."""
    if _backend.get_backend() in ("auto", "triton", "cuda") and device.type != "cpu":
        return _Reference
    return kernel_set(FAMILY, device, cpp=_Cpp, reference=_Reference)


# ---------------------------------------------------------------- registration
def _fc_fwd(x, z, bias: Optional[torch.Tensor], c, eps: float, save: bool):
    return tuple(kernels(x.device).poincare_fc_fwd(x, z, bias, c, eps, save))


def _fc_fwd_fake(x, z, bias, c, eps, save):
    y = x.new_empty((x.shape[0], z.shape[1]))
    return y, (x.new_empty((x.shape[0], z.shape[1])) if save else x.new_empty(0))


def _fc_bwd(g, x, z, bias: Optional[torch.Tensor], c, t, eps: float, mask: int):
    return tuple(kernels(x.device).poincare_fc_bwd(g, x, z, bias, c, t, eps, mask))


def _fc_bwd_fake(g, x, z, bias, c, t, eps, mask):
    gx = x.new_empty(x.shape) if mask & 1 else x.new_empty(0)
    gz = z.new_empty(z.shape) if mask & 2 else x.new_empty(0)
    gb = x.new_empty(bias.shape) if (mask & 4 and bias is not None) else x.new_empty(0)
    gc = c.new_empty(()) if mask & 8 else c.new_empty(0)
    return gx, gz, gb, gc


poincare_fc_fwd_op = define_op(
    "geoops::poincare_fc_fwd", "(Tensor x, Tensor z, Tensor? bias, Tensor c, float eps, bool save) -> (Tensor, Tensor)",
    _fc_fwd, _fc_fwd_fake)
poincare_fc_bwd_op = define_op(
    "geoops::poincare_fc_bwd",
    "(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, float eps, int mask) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _fc_bwd, _fc_bwd_fake)

# eager fast path: plain tensors call the kernels directly, everything else dispatches the custom op
poincare_fc_fwd = caller(poincare_fc_fwd_op, _fc_fwd)
poincare_fc_bwd = caller(poincare_fc_bwd_op, _fc_bwd)
