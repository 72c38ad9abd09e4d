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

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import _backend, _library

FAMILY = "stereographic"
__all__ = ["StereoOp", "STEREO_OPS", "stereo_kernels", "TripleOp", "TRIPLE_OPS", "triple_kernels"]


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
        with _library.reference_autograd():
            leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, y, k, r)]
            lx, ly, lk, lr = leaves
            kr = lk.expand(N) if lk.numel() == 1 else lk  # per-row k gradients
            rr = None if lr is None else (lr.expand(N) if lr.numel() == 1 else lr)
            out = cls._call(spec, lx, ly, kr, rr, param)
            return _library.masked_autograd(out, g, (lx, ly, kr, rr), mask, x)


# the row ops' kernel set that the current backend setting picks for a device
stereo_kernels = _library.family_kernels(FAMILY, cpp=_Cpp, cuda=_Cuda, reference=_ReferenceRows)


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

    # what the autograd.Functions call: the kernel directly on the eager fast path, else the custom op
    return _library.define_pair(f"geoops::{spec.name}", _FWD_SCHEMA, fwd, fwd_fake, _BWD_SCHEMA, bwd, bwd_fake)


CALLERS = {name: _register(spec) for name, spec in STEREO_OPS.items()}  # name -> (fwd caller, bwd caller)


# ---------------------------------------------------------------- three-vector row ops
# geoops::<op>_fwd(Tensor v0, Tensor v1, Tensor? v2, Tensor k, int flags) -> Tensor
# geoops::<op>_bwd(Tensor grad, Tensor v0, Tensor v1, Tensor? v2, Tensor k, int flags, int mask)
#     -> (Tensor dv0, Tensor dv1, Tensor dv2, Tensor dk)
# for gyration (v0, v1, v2 = a, b, u), parallel_transport (x, y, v), parallel_transport0 (y, v; v2 None),
# parallel_transport0back (x, v; v2 None) and dist2plane (x, p, a; flags 1 signed, 2 scaled): v* of shape (N, D),
# one dtype, unit inner stride; k (1,) or (N,).  The forward returns (N, D), or (N,) for dist2plane.  mask bits:
# 1 dv0, 2 dv1, 4 dv2, 8 dk; dk per row (N,) in k's dtype (the caller sums it); unselected: empty tensors.
@dataclass(frozen=True)
class TripleOp:
    name: str
    code: int  # geoops::triple::Op in csrc/include/geoops/stereo_triple.h
    names: tuple  # the public arguments' names of v0, v1 (, v2)
    scalar_out: bool = False


TRIPLE_OPS = {
    op.name: op
    for op in (
        TripleOp("gyration", 0, ("a", "b", "u")),
        TripleOp("parallel_transport", 1, ("x", "y", "v")),
        TripleOp("parallel_transport0", 2, ("y", "v")),
        TripleOp("parallel_transport0back", 3, ("x", "v")),
        TripleOp("dist2plane", 4, ("x", "p", "a"), scalar_out=True),
    )
}
_TRIPLE_BY_CODE = {op.code: op for op in TRIPLE_OPS.values()}


class _TripleCpp:
    @staticmethod
    def triple_fwd(code, v0, v1, v2, k, flags):
        return _backend.compiled().stereo_triple_fwd_cpu(code, v0, v1, v2, k, flags)

    @staticmethod
    def triple_bwd(code, g, v0, v1, v2, k, flags, mask):
        return tuple(_backend.compiled().stereo_triple_bwd_cpu(code, g, v0, v1, v2, k, flags, mask))


class _TripleReference:
    """The three-vector contract above, evaluated with geoops.reference (autograd for the backward); also the
    kernels of the CUDA C++ backend, which has none of its own for these ops."""

    @staticmethod
    def _call(spec: TripleOp, v0, v1, v2, k, flags):
        from ..reference import stereographic as ref

        k = k.to(v0.dtype).reshape(-1, 1)
        if spec.name == "dist2plane":
            return ref.dist2plane(v0, v1, v2, k=k, signed=bool(flags & 1), scaled=bool(flags & 2))
        vs = (v0, v1) if v2 is None else (v0, v1, v2)
        return getattr(ref, spec.name)(*vs, k=k)

    @classmethod
    def triple_fwd(cls, code, v0, v1, v2, k, flags):
        spec = _TRIPLE_BY_CODE[code]
        with torch.no_grad():
            half = v0.dtype in (torch.float16, torch.bfloat16)
            args = [t.float() if half and t is not None else t for t in (v0, v1, v2)]
            out = cls._call(spec, *args, k, flags)
            return out.to(v0.dtype).contiguous()

    @classmethod
    def triple_bwd(cls, code, g, v0, v1, v2, k, flags, mask):
        spec = _TRIPLE_BY_CODE[code]
        N = v0.shape[0]
        half = v0.dtype in (torch.float16, torch.bfloat16)
        up = (lambda t: t.float()) if half else (lambda t: t)
        with _library.reference_autograd():
            leaves = [up(t).detach().requires_grad_(True) if t is not None else None for t in (v0, v1, v2)]
            lk = k.detach().requires_grad_(True)
            kr = lk.expand(N) if lk.numel() == 1 else lk  # per-row k gradients
            out = cls._call(spec, *leaves, kr, flags)
            return _library.masked_autograd(out, up(g), (*leaves, kr), mask, v0, dtypes=(v0.dtype,) * 3 + (k.dtype,))


def triple_kernels(device: torch.device):
    """The three-vector kernel set for `device`: C++ (CPU), the Triton module when it has these kernels, else the
    reference compositions (CUDA C++ backend)."""
    name = _backend.resolve(device, FAMILY)
    if name == "cpp":
        return _TripleCpp
    if name == "triton":
        mod = _backend.triton_kernels(FAMILY)
        if hasattr(mod, "triple_fwd"):
            return mod
    return _TripleReference


_TRIPLE_FWD_SCHEMA = "(Tensor v0, Tensor v1, Tensor? v2, Tensor k, int flags) -> Tensor"
_TRIPLE_BWD_SCHEMA = ("(Tensor grad, Tensor v0, Tensor v1, Tensor? v2, Tensor k, int flags, int mask) "
                      "-> (Tensor, Tensor, Tensor, Tensor)")


def _register_triple(spec: TripleOp):
    code = spec.code
    nvec = len(spec.names)

    def fwd(v0: torch.Tensor, v1: torch.Tensor, v2: Optional[torch.Tensor], k: torch.Tensor, flags: int):
        return triple_kernels(v0.device).triple_fwd(code, v0, v1, v2, k, flags)

    def bwd(g, v0, v1, v2, k, flags: int, mask: int):
        return tuple(triple_kernels(v0.device).triple_bwd(code, g, v0, v1, v2, k, flags, mask))

    def fwd_fake(v0, v1, v2, k, flags):
        N, D = v0.shape
        return v0.new_empty((N,) if spec.scalar_out else (N, D))

    def bwd_fake(g, v0, v1, v2, k, flags, mask):
        N, D = v0.shape
        dv = [v0.new_empty((N, D)) if (mask >> i) & 1 and i < nvec else v0.new_empty((0,)) for i in range(3)]
        dk = k.new_empty((N,)) if mask & 8 else v0.new_empty((0,))
        return dv[0], dv[1], dv[2], dk

    callers = _library.define_pair(f"geoops::{spec.name}", _TRIPLE_FWD_SCHEMA, fwd, fwd_fake, _TRIPLE_BWD_SCHEMA, bwd,
                                   bwd_fake)
    # vmap folds the mapped dim into the rows (k of one row broadcasts)
    _library.fold_vmap(f"geoops::{spec.name}_fwd", row_broadcast=(3,))
    _library.fold_vmap(f"geoops::{spec.name}_bwd", row_broadcast=(4,))
    return callers


TRIPLE_CALLERS = {name: _register_triple(spec) for name, spec in TRIPLE_OPS.items()}


# ---------------------------------------------------------------- pairwise (cdist, knn)
# geoops::cdist_fwd(Tensor x, Tensor y, Tensor k, bool save) -> (Tensor dist, Tensor A)
# geoops::cdist_bwd(Tensor g, Tensor x, Tensor y, Tensor k, Tensor A, Tensor dist, int mask) -> (dx, dy, dk)
# on x [B, N, D], y [B, M, D] (float32/float64, contiguous), k [B]; dist and the saved tensor "A" are [B, N, M]
# ("A" empty unless save and the kernel set's SAVES_A; cdist_bwd then recomputes what it needs).  "A" is what the
# same set's cdist_bwd reads: |x_i - y_j|^2 (close pairs exact) in the batches with k <= 0, the set's own choice where
# k > 0 -- Triton saves <x_i, y_j> there (its k > 0 coefficients need it: session 41); the C++ cdist_fwd_cpu(save)
# writes A everywhere and its backward reads a saved tensor only when no batch has k > 0 (else it recomputes).  dk is
# per batch [B] in k's dtype.
class _PairCpp:
    # the C++ backward recomputes A per block of rows (one more GEMM) instead of reading an [N, M] buffer that the
    # forward would have to write (a second output stream, its page faults and its memory)
    SAVES_A = False

    @staticmethod
    def cdist_fwd(x, y, k, save):
        return tuple(_backend.compiled().cdist_fwd_cpu(x.detach(), y.detach(), k.detach(),
                                                       bool(save) and _PairCpp.SAVES_A))

    @staticmethod
    def cdist_bwd(g, x, y, k, A, d, mask):
        return tuple(_backend.compiled().cdist_bwd_cpu(g.detach(), x.detach(), y.detach(), k.detach(), A, d, mask))

    @staticmethod
    def rank_key(x, y, k):
        return _backend.compiled().cdist_rank_key_cpu(x, y, k)

    @staticmethod
    def dist_from_key(key, k):
        return _backend.compiled().dist_from_key_cpu(key, k)


class _PairReference:
    """The pairwise contract above with geoops.reference (broadcast, O(N M D) memory; autograd backward)."""

    # the backward differentiates the eager reference from x, y and k and never reads A: no [N, M] A is computed
    # (an [N, M, D] broadcast on the way) or saved (session 37)
    SAVES_A = False

    @staticmethod
    def cdist_fwd(x, y, k, save):
        from ..reference import stereographic as ref

        with torch.no_grad():
            d = ref.cdist(x, y, k=k.to(x.dtype).reshape(-1, 1, 1)).contiguous()
        return d, x.new_empty(0)

    @staticmethod
    def cdist_bwd(g, x, y, k, A, d, mask):
        from ..reference import stereographic as ref

        with _library.reference_autograd():
            lx, ly, lk = (t.detach().requires_grad_(True) for t in (x, y, k))
            out = ref.cdist(lx, ly, k=lk.to(x.dtype).reshape(-1, 1, 1))
            return _library.masked_autograd(out, g, (lx, ly, lk), mask, x)

    @staticmethod
    def rank_key(x, y, k):
        # a monotone function of the distance: the distance itself
        return _PairReference.cdist_fwd(x, y, k, False)[0]

    @staticmethod
    def dist_from_key(key, k):
        return key.clone()


def pair_kernels(device: torch.device):
    """The pairwise kernel set for `device` (CPU: C++; Triton: geoops.kernels.stereographic; else the reference)."""
    name = _backend.resolve(device, FAMILY)
    if name == "cpp":
        return _PairCpp
    if name == "triton":  # the module implements the pairwise contract above (cdist_fwd, cdist_bwd, rank_key, ...)
        return _backend.triton_kernels(FAMILY)
    return _PairReference


def _cdist_fwd(x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, save: bool):
    return pair_kernels(x.device).cdist_fwd(x, y, k, save)


def _saves_A(device: torch.device) -> bool:
    """Whether cdist_fwd(save=True) on `device` returns A (else an empty tensor, and cdist_bwd recomputes A)."""
    return getattr(pair_kernels(device), "SAVES_A", True)


def _cdist_fwd_fake(x, y, k, save):
    B, N, _ = x.shape
    M = y.shape[1]
    return x.new_empty((B, N, M)), (x.new_empty((B, N, M)) if save and _saves_A(x.device) else x.new_empty((0,)))


def _cdist_bwd(g, x, y, k, A, d, mask: int):
    return pair_kernels(x.device).cdist_bwd(g, x, y, k, A, d, mask)


def _cdist_bwd_fake(g, x, y, k, A, d, mask):
    return (torch.empty_like(x) if mask & 1 else x.new_empty((0,)),
            torch.empty_like(y) if mask & 2 else x.new_empty((0,)),
            torch.empty_like(k) if mask & 4 else x.new_empty((0,)))


def _rank_key(x, y, k):
    return pair_kernels(x.device).rank_key(x, y, k)


def _rank_key_fake(x, y, k):
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


def _dist_from_key(key, k):
    return pair_kernels(key.device).dist_from_key(key, k)


def _dist_from_key_fake(key, k):
    return torch.empty_like(key)


_rank_key_op = _library.define_op(
    "geoops::cdist_rank_key", "(Tensor x, Tensor y, Tensor k) -> Tensor", _rank_key, _rank_key_fake)
_dist_from_key_op = _library.define_op(
    "geoops::dist_from_key", "(Tensor key, Tensor k) -> Tensor", _dist_from_key, _dist_from_key_fake)

PAIR_CALLERS = {
    "rank_key": _library.caller(_rank_key_op, _rank_key),
    "dist_from_key": _library.caller(_dist_from_key_op, _dist_from_key),
}


def _define_pair(key: str, op: str, fwd_schema: str, fwd, fwd_fake, bwd_schema: str, bwd, bwd_fake) -> None:
    """Define the custom ops geoops::<op>_fwd / _bwd (schema, implementation, fake) and register their callers as
    PAIR_CALLERS["<key>_fwd"] / ["<key>_bwd"]."""
    PAIR_CALLERS[key + "_fwd"], PAIR_CALLERS[key + "_bwd"] = _library.define_pair(
        f"geoops::{op}", fwd_schema, fwd, fwd_fake, bwd_schema, bwd, bwd_fake)


_define_pair("cdist", "cdist", "(Tensor x, Tensor y, Tensor k, bool save) -> (Tensor, Tensor)", _cdist_fwd,
             _cdist_fwd_fake, "(Tensor grad, Tensor x, Tensor y, Tensor k, Tensor A, Tensor dist, int mask) "
             "-> (Tensor, Tensor, Tensor)", _cdist_bwd, _cdist_bwd_fake)


# ---------------------------------------------------------------- mobius_matvec epilogue
# geoops::mobius_scale_fwd(Tensor v, Tensor x, Tensor k) -> (Tensor out, Tensor stats)
# geoops::mobius_scale_bwd(Tensor g, Tensor v, Tensor x, Tensor k, Tensor stats, int mask) -> (dv, dx, dk)
# v [R, Do], x [R, Di] (float32/float64), k [1] or [R]; out = v * phi(|x|^2, |v|^2, k) per row, stats [R, 6]
# float64 (|x|^2, |v|^2, a, a', b, b'); dk per row [R] float64.
def _scale_reference_stats(v, x, k):
    from .. import stereographic as gs

    kk = k.to(torch.float64).reshape(-1, 1)
    x2 = (x.double() ** 2).sum(-1, keepdim=True)
    v2 = (v.double() ** 2).sum(-1, keepdim=True)
    a, da = gs._atanc_d(kk * x2)
    b, db = gs._tanc_d(kk * v2 * a * a)
    return torch.cat([x2, v2, a, da, b, db], dim=-1)


def _scale_triton(device: torch.device):
    """The Triton module when it runs mobius_scale on `device` (backend triton, or cuda where Triton imports: there
    is no CUDA C++ epilogue kernel), else None; GEOOPS_TRITON_MOBIUS_SCALE=0: the eager float64 composition."""
    if (_backend.resolve(device, FAMILY) not in ("triton", "cuda")
            or os.environ.get("GEOOPS_TRITON_MOBIUS_SCALE", "")[:1] == "0"):
        return None
    tk = _backend.triton_kernels(FAMILY)
    return tk if tk is not None and hasattr(tk, "scale_fwd") else None


def _scale_fwd(v: torch.Tensor, x: torch.Tensor, k: torch.Tensor):
    if _backend.resolve(v.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_scale_fwd_cpu(v, x, k))
    tk = _scale_triton(v.device)
    if tk is not None:
        return tuple(tk.scale_fwd(v, x, k))
    st = _scale_reference_stats(v, x, k)
    return (v * (st[:, 2:3] * st[:, 4:5]).to(v.dtype)).contiguous(), st


def _scale_bwd(g, v, x, k, st, mask: int):
    if _backend.resolve(v.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_scale_bwd_cpu(g, v, x, k, st, mask))
    tk = _scale_triton(v.device)
    if tk is not None:
        return tuple(tk.scale_bwd(g, v, x, k, st, mask))
    kk = k.to(torch.float64).reshape(-1, 1)
    x2, v2, a, da, b, db = (st[:, i:i + 1] for i in range(6))
    s = (g.double() * v.double()).sum(-1, keepdim=True)
    gv = (g.double() * (a * b) + v.double() * (2 * s * a * db * kk * a * a)).to(v.dtype) if mask & 1 else v.new_empty(0)
    gx = (x.double() * (2 * s * (da * kk * b + a * db * kk * v2 * 2 * a * da * kk))).to(x.dtype) if mask & 2 \
        else v.new_empty(0)
    gk = (s * (da * x2 * b + a * db * (v2 * a * a + kk * v2 * 2 * a * da * x2))).reshape(-1) if mask & 4 \
        else v.new_empty(0)
    return gv, gx, gk


def _epilogue_bwd_fake(v, w, mask: int):
    """Shapes of the Moebius-epilogue ops' backward (mobius_scale, mobius_matvec, mobius_blockdiag_matvec): the
    gradients of the rows v [R, ...] and of w like them, the per-row k gradient [R] float64; (0,) where mask
    says no."""
    return (torch.empty_like(v) if mask & 1 else v.new_empty((0,)),
            torch.empty_like(w) if mask & 2 else v.new_empty((0,)),
            v.new_empty((v.shape[0],), dtype=torch.float64) if mask & 4 else v.new_empty((0,)))


def _scale_fwd_fake(v, x, k):
    return torch.empty_like(v), v.new_empty((v.shape[0], 6), dtype=torch.float64)


def _scale_bwd_fake(g, v, x, k, st, mask):
    return _epilogue_bwd_fake(v, x, mask)


_define_pair("mobius_scale", "mobius_scale", "(Tensor v, Tensor x, Tensor k) -> (Tensor, Tensor)", _scale_fwd,
             _scale_fwd_fake, "(Tensor grad, Tensor v, Tensor x, Tensor k, Tensor stats, int mask) "
             "-> (Tensor, Tensor, Tensor)", _scale_bwd, _scale_bwd_fake)


# geoops::mobius_matvec_fwd(Tensor x, Tensor m, Tensor k) -> (Tensor out, Tensor stats)
# geoops::mobius_matvec_bwd(Tensor g, Tensor x, Tensor m, Tensor k, Tensor out, Tensor stats, int mask) -> (dx, dm, dk)
# x [R, Di], m [Do, Di], k [1] or [R]: the GEMM x m^T and the epilogue above fused per block of rows (CPU); the
# backward takes v = Mx as out / phi (phi = a b from the stats).  Other backends: the GEMM + the epilogue ops.
def _mv_fwd(x: torch.Tensor, m: torch.Tensor, k: torch.Tensor):
    if _backend.resolve(x.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_matvec_fwd_cpu(x.detach(), m.detach(), k.detach()))
    return _scale_fwd((x @ m.transpose(0, 1)).contiguous(), x, k)


def _mv_bwd(g, x, m, k, out, st, mask: int):
    if _backend.resolve(x.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_matvec_bwd_cpu(g.detach(), x.detach(), m.detach(), k.detach(), out, st, mask))
    v = (out.double() / (st[:, 2:3] * st[:, 4:5])).to(out.dtype)
    gv, gx, gk = _scale_bwd(g, v, x, k, st, 1 | (2 if mask & 1 else 0) | (mask & 4))
    dx = gv @ m + gx if mask & 1 else x.new_empty((0,))
    dm = gv.transpose(0, 1) @ x if mask & 2 else x.new_empty((0,))
    return dx, dm, (gk if mask & 4 else x.new_empty((0,)))


def _mv_fwd_fake(x, m, k):
    return x.new_empty((x.shape[0], m.shape[0])), x.new_empty((x.shape[0], 6), dtype=torch.float64)


def _mv_bwd_fake(g, x, m, k, out, st, mask):
    return _epilogue_bwd_fake(x, m, mask)


_define_pair("mobius_matvec", "mobius_matvec", "(Tensor x, Tensor m, Tensor k) -> (Tensor, Tensor)", _mv_fwd,
             _mv_fwd_fake, "(Tensor grad, Tensor x, Tensor m, Tensor k, Tensor out, Tensor stats, int mask) "
             "-> (Tensor, Tensor, Tensor)", _mv_bwd, _mv_bwd_fake)


# geoops::mobius_blockdiag_matvec_fwd(Tensor x, Tensor blocks, Tensor k) -> (Tensor out, Tensor stats)
# geoops::mobius_blockdiag_matvec_bwd(Tensor g, Tensor x, Tensor blocks, Tensor k, Tensor out, Tensor stats, int mask)
#   -> (dx, dblocks, dk)
# x [R, nb*Di], blocks [nb, Do, Di], k [1] or [R]: mobius_matvec with the block-diagonal matrix, never formed; the
# per-block products and the epilogue above fused per tile of rows (CPU); stats and backward algebra as
# mobius_matvec's.  Other backends: a batched product over the blocks + the epilogue ops.
def _bd_v(x, blocks):
    nb, do, di = blocks.shape
    R = x.shape[0]
    return torch.einsum("rbi,boi->rbo", x.reshape(R, nb, di), blocks).reshape(R, nb * do)


def _bd_fwd(x: torch.Tensor, blocks: torch.Tensor, k: torch.Tensor):
    if _backend.resolve(x.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_blockdiag_matvec_fwd_cpu(x.detach(), blocks.detach(), k.detach()))
    return _scale_fwd(_bd_v(x, blocks).contiguous(), x, k)


def _bd_bwd(g, x, blocks, k, out, st, mask: int):
    if _backend.resolve(x.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().mobius_blockdiag_matvec_bwd_cpu(
            g.detach(), x.detach(), blocks.detach(), k.detach(), out, st, mask))
    nb, do, di = blocks.shape
    R = x.shape[0]
    v = (out.double() / (st[:, 2:3] * st[:, 4:5])).to(out.dtype)
    gv, gx, gk = _scale_bwd(g, v, x, k, st, 1 | (2 if mask & 1 else 0) | (mask & 4))
    gvb = gv.reshape(R, nb, do)
    dx = torch.einsum("rbo,boi->rbi", gvb, blocks).reshape(R, nb * di) + gx if mask & 1 else x.new_empty((0,))
    dw = torch.einsum("rbo,rbi->boi", gvb, x.reshape(R, nb, di)) if mask & 2 else x.new_empty((0,))
    return dx, dw, (gk if mask & 4 else x.new_empty((0,)))


def _bd_fwd_fake(x, blocks, k):
    return (x.new_empty((x.shape[0], blocks.shape[0] * blocks.shape[1])),
            x.new_empty((x.shape[0], 6), dtype=torch.float64))


def _bd_bwd_fake(g, x, blocks, k, out, st, mask):
    return _epilogue_bwd_fake(x, blocks, mask)


_define_pair("mobius_blockdiag_matvec", "mobius_blockdiag_matvec",
             "(Tensor x, Tensor blocks, Tensor k) -> (Tensor, Tensor)", _bd_fwd, _bd_fwd_fake,
             "(Tensor grad, Tensor x, Tensor blocks, Tensor k, Tensor out, Tensor stats, int mask) "
             "-> (Tensor, Tensor, Tensor)", _bd_bwd, _bd_bwd_fake)


# ---------------------------------------------------------------- vmap rules (torch.func.vmap over the custom ops)
# Every op above works on independent rows ([N, D] row ops, [B, ...] blocks of the pairwise ops), so a
# vmapped call folds the vmap dimension into the leading one: one kernel call for the whole batch.
def _fold(V: int, args, in_dims, lead: int, per_row=()):
    """Fold the vmap dimension into dim 0: [V, L, ...] -> [V * L, ...].  `lead` is the per-sample leading
    size L; arguments in `per_row` (k, r) may have leading size 1 and then broadcast to L."""
    out = []
    for i, (t, bd) in enumerate(zip(args, in_dims)):
        if not isinstance(t, torch.Tensor) or (bd is None and (t.numel() == 0 or (i in per_row and t.shape[0] == 1))):
            out.append(t)  # not a tensor, an empty placeholder, or one shared value (k of shape [1])
            continue
        tb = t.movedim(bd, 0) if bd is not None else t.unsqueeze(0).expand((V,) + tuple(t.shape))
        if i in per_row and tb.shape[1] != lead:
            tb = tb.expand((V, lead) + tuple(tb.shape[2:]))
        out.append(tb.reshape((V * tb.shape[1],) + tuple(tb.shape[2:])).contiguous())
    return out


def _unfold(V: int, outs):
    res, dims = [], []
    for t in outs:
        if t.numel() == 0 and t.dim() == 1:
            res.append(t)
            dims.append(None)
        else:
            res.append(t.reshape((V, t.shape[0] // V) + tuple(t.shape[1:])))
            dims.append(0)
    return tuple(res), tuple(dims)


def _lead(args, in_dims, i=0):
    t, bd = args[i], in_dims[i]
    return t.shape[1] if bd == 0 else (t.shape[0] if bd is None else t.movedim(bd, 0).shape[1])


def _register_vmaps():
    for name, spec in STEREO_OPS.items():
        def fwd_rule(info, in_dims, x, y, k, r, param, _name=name):
            a = (x, y, k, r)
            N = _lead(a, in_dims)
            fx, fy, fk, fr = _fold(info.batch_size, a, in_dims, N, per_row=(2, 3))
            out = CALLERS[_name][0](fx, fy, fk, fr, param)
            return out.reshape((info.batch_size, N) + tuple(out.shape[1:])), 0

        def bwd_rule(info, in_dims, g, x, y, k, r, param, mask, _name=name):
            a = (g, x, y, k, r)
            N = _lead(a, in_dims, 1)
            f = _fold(info.batch_size, a, in_dims, N, per_row=(3, 4))
            return _unfold(info.batch_size, CALLERS[_name][1](*f, param, mask))

        torch.library.register_vmap(f"geoops::{name}_fwd", fwd_rule)
        torch.library.register_vmap(f"geoops::{name}_bwd", bwd_rule)

    def cdist_fwd_rule(info, in_dims, x, y, k, save):
        V = info.batch_size
        B = _lead((x, y, k), in_dims)
        return _unfold(V, PAIR_CALLERS["cdist_fwd"](*_fold(V, (x, y, k), in_dims, B), save))

    def cdist_bwd_rule(info, in_dims, g, x, y, k, A, d, mask):
        V = info.batch_size
        B = _lead((g, x, y, k, A, d), in_dims, 1)
        return _unfold(V, PAIR_CALLERS["cdist_bwd"](*_fold(V, (g, x, y, k, A, d), in_dims, B), mask))

    def rank_key_rule(info, in_dims, x, y, k):
        V = info.batch_size
        B = _lead((x, y, k), in_dims)
        out = PAIR_CALLERS["rank_key"](*_fold(V, (x, y, k), in_dims, B))
        return out.reshape((V, B) + tuple(out.shape[1:])), 0

    def scale_fwd_rule(info, in_dims, v, x, k):
        V = info.batch_size
        R = _lead((v, x, k), in_dims)
        return _unfold(V, PAIR_CALLERS["mobius_scale_fwd"](*_fold(V, (v, x, k), in_dims, R, per_row=(2,))))

    def scale_bwd_rule(info, in_dims, g, v, x, k, st, mask):
        V = info.batch_size
        R = _lead((g, v, x, k, st), in_dims, 1)
        f = _fold(V, (g, v, x, k, st), in_dims, R, per_row=(3,))
        return _unfold(V, PAIR_CALLERS["mobius_scale_bwd"](*f, mask))

    torch.library.register_vmap("geoops::cdist_fwd", cdist_fwd_rule)
    torch.library.register_vmap("geoops::cdist_bwd", cdist_bwd_rule)
    torch.library.register_vmap("geoops::cdist_rank_key", rank_key_rule)
    torch.library.register_vmap("geoops::mobius_scale_fwd", scale_fwd_rule)
    torch.library.register_vmap("geoops::mobius_scale_bwd", scale_bwd_rule)


_register_vmaps()


# ---------------------------------------------------------------- weighted midpoint (the reduction)
# geoops::stereo_midpoint_fwd(Tensor x, Tensor? w, Tensor k, bool posweight) -> (Tensor F, Tensor L)
# geoops::stereo_midpoint_bwd(Tensor gF, Tensor gL, Tensor x, Tensor? w, Tensor k, bool posweight, int mask)
#     -> (dx, dw, dk)
# x [G, N, D] (float32/float64), w [G, N] of x's dtype or None (ones), k [1] or [G].  Per group, with
# lam_i = 2 / max(1 + k |x_i|^2, 1e-15): F = sum_i w_i c_i x_i [G, D], L = sum_i s_i w_i (lam_i - 1) [G], both
# float64; c_i = lam_i, s_i = 1, except where posweight and w_i < 0: geoopt replaces x_i by its antipode with weight
# |w_i| and keeps lam_i of x_i, so s_i = -1 and, on the sphere (antipode -x / (k |x|^2)), c_i = lam_i / (k |x_i|^2)
# (0 at x_i = 0, whose antipode geoopt takes as 0).  The backward: dx [G, N, D], dw [G, N] in x's dtype, dk [G]
# float64 (per group; the caller sums a shared k's).  csrc/cpu/stereographic_midpoint.cpp, kernels/stereographic.py.
def midpoint_sums_reference(x, w, k, posweight: bool):
    """The sums above with torch ops in float64 (the reference backend, the jvp of forward mode)."""
    xd = x.to(torch.float64)
    kk = k.to(torch.float64).reshape(-1, 1)
    X = (xd * xd).sum(-1)
    lam = 2.0 / (1.0 + kk * X).clamp_min(1e-15)
    wd = torch.ones_like(lam) if w is None else w.to(torch.float64)
    c, sw = lam, wd
    if posweight:
        flip = wd < 0
        sph = flip & (kk > 0)
        safe = sph & (X > 0)  # the unused side of each where gets finite arguments (no 0 * inf in autograd)
        q = lam / torch.where(safe, kk * X, torch.ones_like(X))
        c = torch.where(sph, torch.where(X > 0, q, torch.zeros_like(lam)), lam)
        sw = torch.where(flip, -wd, wd)
    F = ((wd * c).unsqueeze(-1) * xd).sum(1)
    return F, (sw * (lam - 1.0)).sum(1)


def midpoint_root(y, u, lam, k, F, L, rsum, dim: int):
    """q = 1 + k|f|^2 of the midpoint's f = F / L for k < 0, without its cancellation near the boundary (torch ops,
    any shapes: ``rsum`` sums over the points keeping dims, ``dim`` is the vector dim, y the points after
    posweight's flip (for k <= 0 the antipode is -x and lam is unchanged), u their weights, lam = 2 / max(1 + k|y|^2,
    1e-15), F = sum u lam y, L = sum u (lam - 1)).

    With a_i = u_i lam_i, A = sum a_i, W = sum u_i:  L^2 (1 + k|f|^2) = W^2 - k V + A R, where
    V = 1/2 sum_ij a_i a_j |y_i - y_j|^2 (the weighted scatter times A; >= 0 for weights >= 0) and
    R = sum_i u_i (lam_i (1 + k|y_i|^2) - 2), non-zero only on rows whose lam the clamp holds (outside the ball).
    V is formed about a shift s as A sum a_i |y_i - s|^2 - |sum a_i (y_i - s)|^2, exact for any s; s is the centroid
    F / A (the second term ~0), detached (V does not depend on it)."""
    # L^2 where midpoint_half uses q (|L| >= 1e-10), else 1: at L = 0 (a group of zero weights) q's own gradient,
    # 1 / L^2, times the zero it gets there was NaN in every gradient
    L2 = L * L
    return midpoint_root_num(y, u, lam, k, F, rsum, dim) / torch.where(L.abs() >= 1e-10, L2, torch.ones_like(L2))


def midpoint_root_num(y, u, lam, k, F, rsum, dim: int):
    """midpoint_root's numerator W^2 - k V + A R (= L^2 q; the same arguments)."""
    a = u * lam
    A = rsum(a)
    with torch.no_grad():
        s = F / torch.where(A != 0, A, torch.ones_like(A))
    d = y - s
    S1 = rsum(a * d)
    V = A * rsum(a * (d * d).sum(dim, keepdim=True)) - (S1 * S1).sum(dim, keepdim=True)
    den1 = 1 + k * (y * y).sum(dim, keepdim=True)
    R = rsum(u * torch.where(den1 <= 1e-15, lam * den1 - 2, torch.zeros_like(den1)))
    W = rsum(u)
    return W * W - k * V + A * R


def midpoint_half(f, q, L, k, old):
    """1/2 (x)_k f = f / (1 + sqrt(1 + k|f|^2)) with the root q of midpoint_root where it applies (k < 0, L not
    clamped, q > 0), else ``old`` (the mean formed from f itself: k >= 0, where 1 + k|f|^2 does not cancel, and the
    degenerate cases).  The unused side gets a safe q (no NaN into the gradient)."""
    use = (k < 0) & (L.abs() >= 1e-10) & (q > 0)
    qs = torch.where(use, q, torch.ones_like(q))
    return torch.where(use, f / (1 + qs.sqrt()), old)


def midpoint_root_sums(x, w, k, posweight: bool, F, L):
    """midpoint_root for the sums' layout (x [G, N, D], w [G, N] or None, k [1] or [G], F [G, D], L [G]): q [G, 1]
    in float64 (a torch pass over the points, autograd-differentiable)."""
    xd = x.to(torch.float64)
    kk = k.to(torch.float64).reshape(-1, 1, 1)
    u = torch.ones(xd.shape[:2], dtype=torch.float64, device=x.device) if w is None else w.to(torch.float64)
    u = u.unsqueeze(-1)
    if posweight:  # k <= 0: geoopt's antipode of a point of negative weight is -x, with weight |w| (lam unchanged)
        flip = u < 0
        xd, u = torch.where(flip, -xd, xd), u.abs()
    lam = 2.0 / (1.0 + kk * (xd * xd).sum(-1, keepdim=True)).clamp_min(1e-15)
    q = midpoint_root(xd, u, lam, kk, F.unsqueeze(1), L.reshape(-1, 1, 1), lambda t: t.sum(1, keepdim=True), -1)
    return q.squeeze(1)


def midpoint_root_sums_reference(x, w, k, posweight: bool):
    """(F [G, D], L [G], S [G, 5]) of geoops::stereo_midpoint_root_fwd with torch ops in float64: S = (Q, A, W, S2, R)
    (S2 about the group's centroid s = F / A, F where A = 0 (midpoint_root_shift); Q and S2 only in the groups near
    the boundary, midpoint_near, else 0; zeros where k >= 0); Q differentiable."""
    F, L = midpoint_sums_reference(x, w, k, posweight)
    xd = x.to(torch.float64)
    kk = k.to(torch.float64).reshape(-1, 1, 1).expand(x.shape[0], 1, 1)
    u = torch.ones(xd.shape[:2], dtype=torch.float64, device=x.device) if w is None else w.to(torch.float64)
    u = u.unsqueeze(-1)
    if posweight:
        flip = u < 0
        xd, u = torch.where(flip, -xd, xd), u.abs()
    den1 = 1.0 + kk * (xd * xd).sum(-1, keepdim=True)
    lam = 2.0 / den1.clamp_min(1e-15)
    a = u * lam
    e = xd - midpoint_root_shift(F, a.sum(1)).unsqueeze(1)
    cols = [a.sum(1), u.sum(1), (a * (e * e).sum(-1, keepdim=True)).sum(1),
            (u * torch.where(den1 <= 1e-15, lam * den1 - 2, torch.zeros_like(den1))).sum(1)]
    Q = midpoint_root_num(xd, u, lam, kk, F.unsqueeze(1), lambda t: t.sum(1, keepdim=True), -1).reshape(-1, 1)
    near = midpoint_near(F, L, kk.reshape(-1)).unsqueeze(-1)
    S = torch.cat([torch.where(near, Q, 0.0)] + cols[:2] + [torch.where(near, cols[2], 0.0), cols[3]], dim=-1)
    return F, L, torch.where(kk.reshape(-1, 1) < 0, S, torch.zeros_like(S))


def midpoint_root_shift(F, A):
    """The point S2 is about: the centroid F / A ([G, D] from F [G, D], A [G, 1] or [G]; F where A = 0), detached.
    V = A S2 - |F - A s|^2 is exact for any s, but about a point far from the centroid (a group's first point of small
    weight, as session 46 had it) A S2 and |F - A s|^2 ~ A^2 |s - F / A|^2 cancel to V's few digits."""
    with torch.no_grad():
        A = A.reshape(-1, 1)
        return F / torch.where(A != 0, A, torch.ones_like(A))


def midpoint_near(F, L, k):
    """[G] bool: the groups whose midpoint the root forms from Q (k < 0, |L| >= 1e-10, 1 + k|F / L|^2 < 1/4, i.e.
    1 + k|m|^2 < 2/3: there 1 + k|f|^2 formed from f loses more than ~2 bits; elsewhere the mean is within ~1 ulp
    of it, session 45).  No gradient (a choice between two forms of one function)."""
    with torch.no_grad():
        ff = (F * F).sum(-1) / (L * L)
        return (k < 0) & (L.abs() >= 1e-10) & (1 + k * ff < 0.25)


class _MidpointTorch:
    @staticmethod
    def midpoint_fwd(x, w, k, posweight):
        with torch.no_grad():
            return tuple(t.contiguous() for t in midpoint_sums_reference(x, w, k, posweight))

    @staticmethod
    def midpoint_bwd(gF, gL, x, w, k, posweight, mask):
        return midpoint_reference_bwd(lambda a, b, c: midpoint_sums_reference(a, b, c, posweight), (gF, gL),
                                      x, w, k, mask)


def midpoint_reference_bwd(fn, gouts, x, w, k, mask: int):
    """(dx, dw, dk [G] float64) of the reference sums fn(x, w, k) -> outputs from their gradients `gouts` (torch
    autograd; mask bits 1 dx, 2 dw, 4 dk, unselected ones empty): the torch backends' backward of the sums ops."""
    G = x.shape[0]
    with _library.reference_autograd():
        lx, lk = x.detach().requires_grad_(True), k.detach().requires_grad_(True)
        lw = None if w is None else w.detach().requires_grad_(True)
        kr = lk.expand(G) if lk.numel() == 1 else lk
        outs = fn(lx, lw, kr)
        gouts = tuple(g.to(o.dtype) for g, o in zip(gouts, outs))
        return _library.masked_autograd(outs, gouts, (lx, lw, kr), mask, x, dtypes=(x.dtype, x.dtype, torch.float64))


def _midpoint_kernels(device: torch.device):
    name = _backend.resolve(device, FAMILY)
    if name == "cpp":
        return None
    if name in ("triton", "cuda"):  # the Triton kernels where they import (no pure-CUDA midpoint kernel)
        tk = _backend.triton_kernels(FAMILY)
        return tk if tk is not None and hasattr(tk, "midpoint_fwd") else _MidpointTorch
    return _MidpointTorch


def _midpoint_fwd(x: torch.Tensor, w: Optional[torch.Tensor], k: torch.Tensor, posweight: bool):
    ks = _midpoint_kernels(x.device)
    if ks is None:
        return tuple(_backend.compiled().stereo_midpoint_fwd_cpu(x, w, k, bool(posweight)))
    return tuple(ks.midpoint_fwd(x, w, k, bool(posweight)))


def _midpoint_bwd(gF, gL, x, w, k, posweight: bool, mask: int):
    ks = _midpoint_kernels(x.device)
    if ks is None:
        return tuple(_backend.compiled().stereo_midpoint_bwd_cpu(gF, gL, x, w, k, bool(posweight), mask))
    return tuple(ks.midpoint_bwd(gF, gL, x, w, k, bool(posweight), mask))


def _midpoint_fwd_fake(x, w, k, posweight):
    G, _, D = x.shape
    return x.new_empty((G, D), dtype=torch.float64), x.new_empty((G,), dtype=torch.float64)


def _midpoint_bwd_fake(gF, gL, x, w, k, posweight, mask):
    G, N, _ = x.shape
    # dx contiguous, as every backend returns it (not x's strides: x is often a permuted view)
    return (x.new_empty(x.shape) if mask & 1 else x.new_empty((0,)),
            x.new_empty((G, N)) if (mask & 2 and w is not None) else x.new_empty((0,)),
            x.new_empty((G,), dtype=torch.float64) if mask & 4 else x.new_empty((0,)))


_define_pair("midpoint", "stereo_midpoint", "(Tensor x, Tensor? w, Tensor k, bool posweight) -> (Tensor, Tensor)",
             _midpoint_fwd, _midpoint_fwd_fake,
             "(Tensor gF, Tensor gL, Tensor x, Tensor? w, Tensor k, bool posweight, int mask) "
             "-> (Tensor, Tensor, Tensor)", _midpoint_bwd, _midpoint_bwd_fake)


def _register_midpoint_vmaps():
    # groups are independent: the vmap dim folds into G (k of shape [1] unbatched stays shared)
    def fwd_rule(info, in_dims, x, w, k, posweight):
        V = info.batch_size
        G = _lead((x, w, k), in_dims)
        return _unfold(V, PAIR_CALLERS["midpoint_fwd"](*_fold(V, (x, w, k), in_dims, G, per_row=(2,)), posweight))

    def bwd_rule(info, in_dims, gF, gL, x, w, k, posweight, mask):
        V = info.batch_size
        G = _lead((gF, gL, x, w, k), in_dims, 2)
        f = _fold(V, (gF, gL, x, w, k), in_dims, G, per_row=(4,))
        return _unfold(V, PAIR_CALLERS["midpoint_bwd"](*f, posweight, mask))

    torch.library.register_vmap("geoops::stereo_midpoint_fwd", fwd_rule)
    torch.library.register_vmap("geoops::stereo_midpoint_bwd", bwd_rule)


_register_midpoint_vmaps()


# ---------------------------------------------------------------- weighted midpoint: the sums with the root's
# geoops::stereo_midpoint_root_fwd(Tensor x, Tensor? w, Tensor k, bool posweight) -> (Tensor F, Tensor L, Tensor S)
# geoops::stereo_midpoint_root_bwd(Tensor gF, Tensor gL, Tensor gQ, Tensor F, Tensor S, Tensor x, Tensor? w,
#     Tensor k, bool posweight, int mask) -> (dx, dw, dk)
# The sums above and S [G, 5] float64 = (Q, A, W, S2, R) per group (S2 = sum a_i |y_i - s|^2 about the centroid
# s = F / A, midpoint_root_shift): Q = W^2 - k V + A R = L^2 (1 + k|F / L|^2)
# for k < 0 without its cancellation near the boundary (midpoint_root), formed only in the groups near it
# (midpoint_near: a second pass over their points for S2; Q = S2 = 0 elsewhere, zeros where k >= 0), the rest what
# the backward needs.  MidpointFn's; CPU: one pass each (csrc/cpu/stereographic_midpoint.cpp); triton / cuda
# backends: the Triton kernels (kernels/stereographic.py: midpoint_root_fwd / _bwd); elsewhere (no Triton, the
# reference backend): the torch reference above and its autograd.
def _root_fwd(x, w, k, posweight: bool):
    ks = _midpoint_kernels(x.device)
    if ks is None:
        return tuple(_backend.compiled().stereo_midpoint_root_fwd_cpu(x, w, k, bool(posweight)))
    if hasattr(ks, "midpoint_root_fwd"):
        return tuple(ks.midpoint_root_fwd(x, w, k, bool(posweight)))
    with torch.no_grad():
        return tuple(t.contiguous() for t in midpoint_root_sums_reference(x, w, k, posweight))


def _root_bwd(gF, gL, gQ, F, S, x, w, k, posweight: bool, mask: int):
    ks = _midpoint_kernels(x.device)
    if ks is None:
        return tuple(_backend.compiled().stereo_midpoint_root_bwd_cpu(gF, gL, gQ, F, S, x, w, k, bool(posweight),
                                                                      mask))
    if hasattr(ks, "midpoint_root_bwd"):
        return tuple(ks.midpoint_root_bwd(gF, gL, gQ, F, S, x, w, k, bool(posweight), mask))

    def sums(a, b, c):
        F, L, S = midpoint_root_sums_reference(a, b, c, posweight)
        return F, L, S[:, 0]
    return midpoint_reference_bwd(sums, (gF, gL, gQ), x, w, k, mask)


def _root_fwd_fake(x, w, k, posweight):
    G, _, D = x.shape
    return (x.new_empty((G, D), dtype=torch.float64), x.new_empty((G,), dtype=torch.float64),
            x.new_empty((G, 5), dtype=torch.float64))


def _root_bwd_fake(gF, gL, gQ, F, S, x, w, k, posweight, mask):
    return _midpoint_bwd_fake(gF, gL, x, w, k, posweight, mask)


_define_pair("midpoint_root", "stereo_midpoint_root",
             "(Tensor x, Tensor? w, Tensor k, bool posweight) -> (Tensor, Tensor, Tensor)", _root_fwd, _root_fwd_fake,
             "(Tensor gF, Tensor gL, Tensor gQ, Tensor F, Tensor S, Tensor x, Tensor? w, Tensor k, bool posweight, "
             "int mask) -> (Tensor, Tensor, Tensor)", _root_bwd, _root_bwd_fake)


# ---------------------------------------------------------------- weighted midpoint (the mean from the sums)
# geoops::stereo_midpoint_mean_fwd(Tensor F, Tensor L, Tensor? Q, Tensor k) -> Tensor mean
# geoops::stereo_midpoint_mean_bwd(Tensor gm, Tensor F, Tensor L, Tensor? Q, Tensor k, int mask) -> (gF, gL, gQ, gk)
# F [G, D], L [G], Q [G] or None, k [1] or [G], all float64: mean = 1/2 (x)_k (F / den) [G, D] float64, den = L
# clamped away from 0 to +-1e-10 (its sign kept): geoopt's epilogue before the sphere's choice between the mean and
# its antipode; with Q (stereo_midpoint_root_fwd's) the root f / (1 + sqrt(Q / L^2)) where it applies (midpoint_half).
# The backward: gF [G, D], gL [G], gQ [G] (empty without Q), gk [G] per group (empty unless mask bit 4).  CPU:
# csrc/cpu/stereographic_midpoint.cpp (one pass per group); other devices: the torch composition below (and its
# autograd).
def midpoint_den(L):
    """den = L clamped away from 0 to +-1e-10, its sign kept (geoopt's clamp), as a [G, 1] column."""
    return torch.where(L >= 0, L.clamp_min(1e-10), L.clamp_max(-1e-10)).unsqueeze(-1)


def midpoint_mean_reference(F, L, k, Q=None):
    """The mean above with torch ops in float64 (geoops.reference.stereographic.mobius_scalar_mul, midpoint_half)."""
    from ..reference import stereographic as ref

    den = midpoint_den(L)
    kk = k.to(torch.float64).reshape(-1, 1)
    f = F / den
    mean = ref.mobius_scalar_mul(torch.tensor(0.5, dtype=torch.float64, device=F.device), f, k=kk)
    if Q is None:
        return mean
    Lc = L.unsqueeze(-1)
    L2 = Lc * Lc  # 1 where midpoint_half does not use q (|L| < 1e-10): Q / 0 made 0 * NaN in every gradient (L = 0)
    return midpoint_half(f, Q.unsqueeze(-1) / torch.where(Lc.abs() >= 1e-10, L2, torch.ones_like(L2)), Lc, kk, mean)


def _mean_fwd(F, L, Q, k):
    if F.device.type == "cpu" and _backend.resolve(F.device, FAMILY) == "cpp":
        return _backend.compiled().stereo_midpoint_mean_fwd_cpu(F, L, Q, k)
    with torch.no_grad():
        return midpoint_mean_reference(F, L, k, Q).contiguous()


def _mean_bwd(gm, F, L, Q, k, mask):
    if F.device.type == "cpu" and _backend.resolve(F.device, FAMILY) == "cpp":
        return tuple(_backend.compiled().stereo_midpoint_mean_bwd_cpu(gm, F, L, Q, k, mask))
    G = F.shape[0]
    with _library.reference_autograd():
        lF, lL = F.detach().requires_grad_(True), L.detach().requires_grad_(True)
        lQ = None if Q is None else Q.detach().to(torch.float64).requires_grad_(True)
        lk = k.detach().to(torch.float64).expand(G).clone().requires_grad_(True)
        m = midpoint_mean_reference(lF, lL, lk, lQ)
        inputs = [lF, lL] + ([lQ] if Q is not None else []) + ([lk] if mask & 4 else [])
        grads = torch.autograd.grad(m, inputs, gm.to(torch.float64), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    gQ = grads[2] if Q is not None else F.new_empty((0,))
    gk = grads[-1] if mask & 4 else F.new_empty((0,))
    return grads[0].contiguous(), grads[1].contiguous(), gQ.contiguous(), gk.contiguous()


def _mean_fwd_fake(F, L, Q, k):
    return torch.empty_like(F, dtype=torch.float64)


def _mean_bwd_fake(gm, F, L, Q, k, mask):
    G = F.shape[0]
    return (torch.empty_like(F, dtype=torch.float64), F.new_empty((G,), dtype=torch.float64),
            F.new_empty((G,) if Q is not None else (0,), dtype=torch.float64),
            F.new_empty((G,) if mask & 4 else (0,), dtype=torch.float64))


_define_pair("midpoint_mean", "stereo_midpoint_mean", "(Tensor F, Tensor L, Tensor? Q, Tensor k) -> Tensor",
             _mean_fwd, _mean_fwd_fake,
             "(Tensor gm, Tensor F, Tensor L, Tensor? Q, Tensor k, int mask) -> (Tensor, Tensor, Tensor, Tensor)",
             _mean_bwd, _mean_bwd_fake)
