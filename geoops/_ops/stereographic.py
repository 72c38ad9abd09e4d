"""torch.library registrations of the kappa-stereographic family, with fake (meta) implementations.

Each op of the family is registered as a pair of custom ops

    geoops::<op>_fwd(Tensor x, Tensor? y, Tensor k, Tensor? r, float param) -> Tensor
    geoops::<op>_bwd(Tensor grad, Tensor x, Tensor? y, Tensor k, Tensor? r, float param, int mask)
        -> (Tensor dx, Tensor dy, Tensor dk, Tensor dr)

on row-major operands: x, y of shape (N, D) with unit inner stride (rows may
be strided, e.g. broadcast with stride 0), k and r of shape (1,) or (N,).  The
forward returns (N, D), or (N,) for scalar-valued ops.  `mask` selects the
gradients to compute (1 dx, 2 dy, 4 dk, 8 dr); each unselected one comes back
as an empty tensor.  dk and dr are per row, shape (N,), in the dtypes of k
and r: the caller sums them.

The implementation of each op picks the backend per call (geoops._backend),
so one registration serves CPU, CUDA and the Triton interpreter, and
torch.compile sees one opaque op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import _backend, _library

FAMILY = "stereographic"
__all__ = ["StereoOp", "STEREO_OPS", "stereo_kernels"]


@dataclass(frozen=True)
class StereoOp:
    name: str
    code: int  # geoops::stereo::Op in csrc/include/geoops/stereo_math.h
    has_y: bool = False
    has_r: bool = False
    scalar_out: bool = False


STEREO_OPS = {
    op.name: op
    for op in (
        StereoOp("mobius_add", 0, has_y=True),
        StereoOp("mobius_sub", 1, has_y=True),
        StereoOp("project", 2),
        StereoOp("lambda_x", 3, scalar_out=True),
        StereoOp("mobius_scalar_mul", 4, has_r=True),
        StereoOp("expmap", 5, has_y=True),
        StereoOp("expmap0", 6),
        StereoOp("logmap", 7, has_y=True),
        StereoOp("logmap0", 8),
        StereoOp("dist", 9, has_y=True, scalar_out=True),
        StereoOp("dist0", 10, scalar_out=True),
    )
}
_BY_CODE = {op.code: op for op in STEREO_OPS.values()}


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def stereo_fwd(code, x, y, k, r, param):
        return _backend.compiled().stereo_fwd_cpu(code, x, y, k, r, param)

    @staticmethod
    def stereo_bwd(code, g, x, y, k, r, param, mask):
        return _backend.compiled().stereo_bwd_cpu(code, g, x, y, k, r, param, mask)


class _Cuda:
    @staticmethod
    def stereo_fwd(code, x, y, k, r, param):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        return _backend.compiled().stereo_fwd_cuda(code, x, y, k, r, param, stream)

    @staticmethod
    def stereo_bwd(code, g, x, y, k, r, param, mask):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        return _backend.compiled().stereo_bwd_cuda(code, g, x, y, k, r, param, mask, stream)


class _ReferenceRows:
    """The op contract above, evaluated with geoops.reference (autograd for the backward)."""

    @staticmethod
    def _call(spec: StereoOp, x, y, k, r, param):
        from ..reference import stereographic as ref

        fn = getattr(ref, spec.name)
        k = k.to(x.dtype).reshape(-1, 1)
        if spec.name == "project":
            return fn(x, k=k, eps=param)
        if spec.has_r:
            return fn(r.to(x.dtype).reshape(-1, 1), x, k=k)
        return fn(x, y, k=k) if spec.has_y else fn(x, k=k)

    @classmethod
    def stereo_fwd(cls, code, x, y, k, r, param):
        with torch.no_grad():
            return cls._call(_BY_CODE[code], x, y, k, r, param).contiguous()

    @classmethod
    def stereo_bwd(cls, code, g, x, y, k, r, param, mask):
        spec = _BY_CODE[code]
        N = x.shape[0]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, y, k, r)]
            lx, ly, lk, lr = leaves
            kr = lk.expand(N) if lk.numel() == 1 else lk  # per-row k gradients
            rr = None if lr is None else (lr.expand(N) if lr.numel() == 1 else lr)
            out = cls._call(spec, lx, ly, kr, rr, param)
            want = [(1, lx), (2, ly), (4, kr), (8, rr)]
            inputs = [t for bit, t in want if (mask & bit) and t is not None]
            grads = iter(torch.autograd.grad(out, inputs, g, allow_unused=True)) if inputs else iter(())
        res = []
        for bit, t in want:
            if (mask & bit) and t is not None:
                gr = next(grads)
                res.append(torch.zeros_like(t) if gr is None else gr.contiguous())
            else:
                res.append(x.new_empty(0))
        return tuple(res)


def stereo_kernels(device: torch.device):
    """The kernel set that the current backend setting picks for `device`."""
    return _library.kernel_set(FAMILY, device, cpp=_Cpp, cuda=_Cuda, reference=_ReferenceRows)


# ---------------------------------------------------------------- registration
_FWD_SCHEMA = "(Tensor x, Tensor? y, Tensor k, Tensor? r, float param) -> Tensor"
_BWD_SCHEMA = (
    "(Tensor grad, Tensor x, Tensor? y, Tensor k, Tensor? r, float param, int mask) -> (Tensor, Tensor, Tensor, Tensor)"
)


def _register(spec: StereoOp):
    code = spec.code

    def fwd(x: torch.Tensor, y: Optional[torch.Tensor], k: torch.Tensor, r: Optional[torch.Tensor], param: float):
        return stereo_kernels(x.device).stereo_fwd(code, x, y, k, r, param)

    def bwd(g, x, y, k, r, param: float, mask: int):
        return tuple(stereo_kernels(x.device).stereo_bwd(code, g, x, y, k, r, param, mask))

    def fwd_fake(x, y, k, r, param):
        N, D = x.shape
        return x.new_empty((N,) if spec.scalar_out else (N, D))

    def bwd_fake(g, x, y, k, r, param, mask):
        N, D = x.shape
        dx = x.new_empty((N, D) if mask & 1 else (0,))
        dy = x.new_empty((N, D) if (mask & 2 and y is not None) else (0,))
        dk = k.new_empty((N,)) if mask & 4 else x.new_empty(0)
        dr = r.new_empty((N,)) if (mask & 8 and r is not None) else x.new_empty(0)
        return dx, dy, dk, dr

    fwd_op = _library.define_op(f"geoops::{spec.name}_fwd", _FWD_SCHEMA, fwd, fwd_fake)
    bwd_op = _library.define_op(f"geoops::{spec.name}_bwd", _BWD_SCHEMA, bwd, bwd_fake)
    # what the autograd.Functions call: the kernel directly on the eager fast path, else the custom op
    return _library.caller(fwd_op, fwd), _library.caller(bwd_op, bwd)


CALLERS = {name: _register(spec) for name, spec in STEREO_OPS.items()}  # name -> (fwd caller, bwd caller)
