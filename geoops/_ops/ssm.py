"""torch.library registrations of the diagonal state-space (ssm) family, with fake implementations.

    geoops::vandermonde_fwd(Tensor v, Tensor x, int L, bool out64) -> Tensor
        v (C, H, N) complex, x (H, N) complex -> K (C, H, L), float64 if out64 else float32
    geoops::vandermonde_bwd(Tensor grad, Tensor v, Tensor x, int mask) -> (Tensor dv, Tensor dx)
        mask: 1 dv (C, H, N) in v's dtype, 2 dx (H, N) in x's dtype; unselected ones are empty
    geoops::fftconv_fwd(Tensor u, Tensor k, Tensor? D, bool save_uf) -> (Tensor y, Tensor uf)
        u (B, H, L), k (C, S, H, L) (S = 2: bidirectional), D (C, H) -> y (B, C, H, L) in u's dtype,
        uf = rfft(u, 2L) (B, H, L+1) complex (fp32/fp64 compute dtype) when save_uf, else empty
    geoops::fftconv_bwd(Tensor grad, Tensor u, Tensor uf, Tensor k, Tensor? D, int mask) -> (du, dk, dD)
        mask: 1 du (B, H, L), 2 dk (C, S, H, L), 4 dD (C, H); uf may be empty (then recomputed)

Each implementation picks the backend per call (kernel sets below), so one registration serves CPU,
CUDA (Triton) and the eager reference; torch.compile sees opaque ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from .._library import caller, define_op, kernel_set

FAMILY = "ssm"


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def vandermonde_fwd(v, x, L, out64):
        return _backend.compiled().vandermonde_fwd_cpu(v, x, L, out64)

    @staticmethod
    def vandermonde_bwd(g, v, x, mask):
        return tuple(_backend.compiled().vandermonde_bwd_cpu(g, v, x, mask))

    @staticmethod
    def fftconv_fwd(u, k, D, save_uf):
        return tuple(_backend.compiled().fftconv_fwd_cpu(u, k, D, save_uf))

    @staticmethod
    def fftconv_bwd(g, u, uf, k, D, mask):
        return tuple(_backend.compiled().fftconv_bwd_cpu(g, u, uf, k, D, mask))


def _cdt(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


class _Reference:
    """The op contract above, evaluated with geoops.reference.ssm (autograd for the backward)."""

    @staticmethod
    def vandermonde_fwd(v, x, L, out64):
        from ..reference import ssm as ref

        cd = torch.complex128  # the oracle
        with torch.no_grad():
            return ref.vandermonde(v.to(cd), x.to(cd), L).to(torch.float64 if out64 else torch.float32)

    @staticmethod
    def vandermonde_bwd(g, v, x, mask):
        from ..reference import ssm as ref

        with torch.enable_grad():
            vv = v.detach().to(torch.complex128).requires_grad_(True)
            xx = x.detach().to(torch.complex128).requires_grad_(True)
            K = ref.vandermonde(vv, xx, g.shape[-1])
            dv, dx = torch.autograd.grad(K, (vv, xx), g.to(torch.float64))
        return (dv.to(v.dtype) if mask & 1 else v.new_empty(0), dx.to(x.dtype) if mask & 2 else x.new_empty(0))

    @staticmethod
    def _y(u, k, D):
        from ..reference import ssm as ref

        cdt = _cdt(u)
        bid = k.shape[1] == 2
        kk = k.to(cdt) if bid else k[:, 0].to(cdt)
        return ref.fftconv(u.to(cdt), kk, None if D is None else D.to(cdt), bid)

    @classmethod
    def fftconv_fwd(cls, u, k, D, save_uf):
        with torch.no_grad():
            y = cls._y(u, k, D).to(u.dtype).contiguous()
            L = u.shape[-1]
            uf = torch.fft.rfft(u.to(_cdt(u)), n=2 * L) if save_uf else u.new_empty(0, dtype=_complex_of(u))
        return y, uf

    @classmethod
    def fftconv_bwd(cls, g, u, uf, k, D, mask):
        with torch.enable_grad():
            uu = u.detach().requires_grad_(True)
            kk = k.detach().requires_grad_(True)
            DD = None if D is None else D.detach().requires_grad_(True)
            y = cls._y(uu, kk, DD)
            ins = [uu, kk] + ([DD] if DD is not None else [])
            grads = torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True)
        du = grads[0].to(u.dtype) if mask & 1 else u.new_empty(0)
        dk = grads[1].to(k.dtype) if mask & 2 else k.new_empty(0)
        dD = grads[2].to(D.dtype) if (mask & 4 and D is not None) else u.new_empty(0)
        return du, dk, dD


def _complex_of(u):
    return torch.complex128 if u.dtype == torch.float64 else torch.complex64


def kernels(device: torch.device):
    """The kernel set that the current backend setting picks for `device`."""
    return kernel_set(FAMILY, device, cpp=_Cpp, reference=_Reference)


# ---------------------------------------------------------------- registration
def _vfwd(v: torch.Tensor, x: torch.Tensor, L: int, out64: bool) -> torch.Tensor:
    return kernels(x.device).vandermonde_fwd(v, x, L, out64)


def _vfwd_fake(v, x, L, out64):
    return v.new_empty((v.shape[0], v.shape[1], L), dtype=torch.float64 if out64 else torch.float32)


def _vbwd(g, v, x, mask: int):
    return tuple(kernels(x.device).vandermonde_bwd(g, v, x, mask))


def _vbwd_fake(g, v, x, mask):
    return (v.new_empty(v.shape) if mask & 1 else v.new_empty(0), x.new_empty(x.shape) if mask & 2 else x.new_empty(0))


def _ffwd(u, k, D: Optional[torch.Tensor], save_uf: bool):
    return tuple(kernels(u.device).fftconv_fwd(u, k, D, save_uf))


def _ffwd_fake(u, k, D, save_uf):
    B, H, L = u.shape
    y = u.new_empty((B, k.shape[0], H, L))
    uf = u.new_empty((B, H, L + 1) if save_uf else (0,), dtype=_complex_of(u))
    return y, uf


def _fbwd(g, u, uf, k, D: Optional[torch.Tensor], mask: int):
    return tuple(kernels(u.device).fftconv_bwd(g, u, uf, k, D, mask))


def _fbwd_fake(g, u, uf, k, D, mask):
    du = u.new_empty(u.shape) if mask & 1 else u.new_empty(0)
    dk = k.new_empty(k.shape) if mask & 2 else k.new_empty(0)
    dD = D.new_empty(D.shape) if (mask & 4 and D is not None) else u.new_empty(0)
    return du, dk, dD


vandermonde_fwd_op = define_op("geoops::vandermonde_fwd", "(Tensor v, Tensor x, int L, bool out64) -> Tensor",
                               _vfwd, _vfwd_fake)
vandermonde_bwd_op = define_op("geoops::vandermonde_bwd", "(Tensor grad, Tensor v, Tensor x, int mask) -> (Tensor, Tensor)",
                               _vbwd, _vbwd_fake)
fftconv_fwd_op = define_op("geoops::fftconv_fwd", "(Tensor u, Tensor k, Tensor? D, bool save_uf) -> (Tensor, Tensor)",
                           _ffwd, _ffwd_fake)
fftconv_bwd_op = define_op("geoops::fftconv_bwd",
                           "(Tensor grad, Tensor u, Tensor uf, Tensor k, Tensor? D, int mask) -> (Tensor, Tensor, Tensor)",
                           _fbwd, _fbwd_fake)

# eager fast path: plain tensors call the kernels directly, everything else dispatches the custom op
vandermonde_fwd = caller(vandermonde_fwd_op, _vfwd)
vandermonde_bwd = caller(vandermonde_bwd_op, _vbwd)
fftconv_fwd = caller(fftconv_fwd_op, _ffwd)
fftconv_bwd = caller(fftconv_bwd_op, _fbwd)
