"""torch.library registrations of Kronecker triple attention, with fake (meta) implementations.

    geoops::triple_attention_fwd(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, float scale,
                                 bool causal, int w1, int w2) -> (Tensor out, Tensor lse)
    geoops::triple_attention_bwd(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2,
                                 Tensor out, Tensor lse, float scale, bool causal, int w1, int w2)
        -> (Tensor dq, Tensor dk1, Tensor dk2, Tensor dv1, Tensor dv2)

q (B, H, N, D); k1 (B, Hk, M1, D); k2 (B, Hk, M2, D); v1 (B, Hk, M1, Dv); v2 (B, Hk, M2, Dv) with
H % Hk == 0, all of one floating dtype (validated by geoops.attention before any kernel runs).
w1, w2 > 0 are sliding windows (they imply causal); 0 means no window.  out has q's dtype, lse is
float32 (float64 for float64 inputs); the gradients come back in the inputs' dtype.

The implementation picks the backend per call (geoops._backend): C++ on CPU, Triton on CUDA (and on
CPU under TRITON_INTERPRET=1), the eager reference when forced or when nothing compiled is there.
"""
from __future__ import annotations

import math

import torch

from .. import _backend, _library

FAMILY = "attention"
__all__ = ["attention_kernels", "FWD", "BWD"]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2):
        return tuple(_backend.compiled().triple_attention_fwd_cpu(q, k1, k2, v1, v2, scale, causal, w1, w2))

    @staticmethod
    def triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
        return tuple(_backend.compiled().triple_attention_bwd_cpu(dout, q, k1, k2, v1, v2, out, lse, scale, causal,
                                                                  w1, w2))


class _Reference:
    """The op contract above, evaluated with geoops.reference.attention (autograd for the backward)."""

    @staticmethod
    def _window(w1, w2):
        return (int(w1), int(w2)) if (w1 > 0 or w2 > 0) else None

    @classmethod
    def triple_attention_fwd(cls, q, k1, k2, v1, v2, scale, causal, w1, w2):
        from ..reference import attention as ref

        with torch.no_grad():
            out, lse = ref.triple_attention(q, k1, k2, v1, v2, scale=scale, causal=causal,
                                            window=cls._window(w1, w2), return_lse=True)
        return out.contiguous(), lse.contiguous()

    @classmethod
    def triple_attention_bwd(cls, dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
        from ..reference import attention as ref

        with _library.reference_autograd():
            leaves = [t.detach().requires_grad_(True) for t in (q, k1, k2, v1, v2)]
            # a non-finite dout: each query over its own pairs (dense, a masked pair's zero P times it is NaN)
            per_query = None if bool(torch.isfinite(dout).all()) else (causal or w1 > 0)
            o = ref.triple_attention(*leaves, scale=scale, causal=causal, window=cls._window(w1, w2),
                                     per_query=per_query)
            grads = torch.autograd.grad(o, leaves, dout, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, leaves))


# the C++ kernels where the extension has them (one built before this family existed does not: the reference runs)
attention_kernels = _library.family_kernels(
    FAMILY, cpp=_Cpp if hasattr(_backend.compiled(), "triple_attention_fwd_cpu") else None, reference=_Reference)


# ---------------------------------------------------------------- registration
_FWD_SCHEMA = ("(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, float scale, bool causal, int w1, int w2)"
               " -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, Tensor out, Tensor lse, "
               "float scale, bool causal, int w1, int w2) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _fwd(q, k1, k2, v1, v2, scale: float, causal: bool, w1: int, w2: int):
    out, lse = attention_kernels(q.device).triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2)
    return _nonfinite_values_nan(out, v1, v2, causal or w1 > 0, w1, w2), lse


def _all_finite(*ts) -> bool:
    """No inf / NaN in any of ts: one sum each (a non-finite element makes its sum non-finite; a finite sum that
    overflows only sends the caller down its exact path)."""
    return math.isfinite(float(sum(t.sum() for t in ts if t.numel())))


def _ranges(N, M, causal, w, device):
    """Admissible key range [lo, hi] of every query under the causal mask / window (empty when hi < lo)."""
    i = torch.arange(N, device=device)
    lo = (i - w + 1).clamp_min(0) if w > 0 else torch.zeros_like(i)
    return lo, (i.clamp_max(M - 1) if causal else torch.full_like(i, M - 1))


def _nonfinite_values_nan(out, v1, v2, causal, w1, w2):
    """out[i, e] = NaN where the IEEE sum of the terms P[i, j, k] v1[j, e] v2[k, e] over i's admissible pairs is NaN
    while the kernels, which contract over one key set first, give +-inf: an inf v1[j, e] (v2 likewise) at an
    admissible j whose other values v2[k, e] in i's range are 0 (inf * 0) or of both signs (inf - inf).  Masked
    pairs are no terms (session 48: a non-finite value that query i may not see does not reach it; the kernels skip
    masked pairs).  A weight that underflows to exactly 0 is not emulated.  Costs O((M1 + M2 + N) Dv) per key head;
    on the CPU only when a value is non-finite (checked first), elsewhere always (no host sync).
    """
    if out.numel() == 0:
        return out
    if out.device.type == "cpu" and _all_finite(v1, v2):
        return out
    B, H, N, Dv = out.shape
    M1, M2 = v1.shape[2], v2.shape[2]
    if M1 == 0 or M2 == 0:
        return out  # no pairs: no term
    dev = out.device
    r1, r2 = _ranges(N, M1, causal, w1, dev), _ranges(N, M2, causal, w2, dev)

    def in_range(flags, lo, hi, M):  # (B, Hk, N, Dv): the number of flagged rows in each query's range
        c = torch.nn.functional.pad(flags.to(torch.int32).cumsum(2), (0, 0, 1, 0))  # c[m] = #flagged rows < m
        n = c[:, :, (hi + 1).clamp(0, M)] - c[:, :, lo.clamp_max(M)]
        return torch.where((hi >= lo).view(1, 1, N, 1), n, torch.zeros((), dtype=n.dtype, device=dev))

    nan = torch.zeros((B, v1.shape[1], N, Dv), dtype=torch.bool, device=dev)
    for v, (lo, hi), M, vo, (lo_o, hi_o), M_o in ((v1, r1, M1, v2, r2, M2), (v2, r2, M2, v1, r1, M1)):
        bad_in = in_range(~torch.isfinite(v), lo, hi, M)
        pos = in_range(vo > 0, lo_o, hi_o, M_o) > 0
        neg = in_range(vo < 0, lo_o, hi_o, M_o) > 0
        zero = in_range(vo == 0, lo_o, hi_o, M_o) > 0
        nan |= (bad_in > 0) & (zero | (pos & neg))
    rep = H // v1.shape[1]
    if rep > 1:
        nan = nan.repeat_interleave(rep, dim=1)
    return out.masked_fill(nan, float("nan"))


def _bwd(dout, q, k1, k2, v1, v2, out, lse, scale: float, causal: bool, w1: int, w2: int):
    # (non-finite inputs: the kernels leave masked pairs out of every product, so the gradients of a key see only
    # the queries that may see it; a non-finite value's effect through out, delta_i = <dout_i, out_i>, comes from
    # the forward's rule)
    return tuple(attention_kernels(q.device).triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal,
                                                                  w1, w2))


def _fwd_fake(q, k1, k2, v1, v2, scale, causal, w1, w2):
    B, H, N, _ = q.shape
    return q.new_empty((B, H, N, v1.shape[-1])), q.new_empty((B, H, N), dtype=_lse_dtype(q.dtype))


def _bwd_fake(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))


# (the backward op takes no mask: the kernels form all five gradients)
FWD, BWD = _library.define_pair("geoops::triple_attention", _FWD_SCHEMA, _fwd, _fwd_fake, _BWD_SCHEMA, _bwd, _bwd_fake)
# vmap folds the mapped dim into the batch dim B (one kernel call; per-sample gradients under vmap(grad))
_library.fold_vmap("geoops::triple_attention_fwd")
_library.fold_vmap("geoops::triple_attention_bwd")
