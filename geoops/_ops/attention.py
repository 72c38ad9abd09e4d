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
            o = ref.triple_attention(*leaves, scale=scale, causal=causal, window=cls._window(w1, w2))
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
    """out[i, e] = NaN where the eager einsum, a sum of the terms P[i, j, k] v1[j, e] v2[k, e] over every pair,
    meets an inf or NaN value in a term that is NaN or in terms of both signs (the kernels contract over one key set
    first, so they give +-inf there).  For a non-finite v1[j, e] (v2 likewise): a masked pair containing j (zero
    weight: 0 * inf = NaN; j outside i's range, or inside it while i's other range is not all of the other keys),
    or, j admissible, other values v2[k, e] of i's range that are 0 or of both signs.  A weight that underflows to
    exactly 0 is not emulated.  Costs O((M1 + M2 + N) Dv) per key head; on the CPU only when a value is
    non-finite (checked first), elsewhere always (no host sync).
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
        return torch.where((hi >= lo).view(1, 1, N, 1), n, torch.zeros((), dtype=n.dtype, device=dev)), c[:, :, M:]

    nan = torch.zeros((B, v1.shape[1], N, Dv), dtype=torch.bool, device=dev)
    for v, (lo, hi), M, vo, (lo_o, hi_o), M_o in ((v1, r1, M1, v2, r2, M2), (v2, r2, M2, v1, r1, M1)):
        bad_in, bad_all = in_range(~torch.isfinite(v), lo, hi, M)
        not_all = ~((lo_o == 0) & (hi_o >= M_o - 1)).view(1, 1, N, 1)  # i's other range misses some keys
        pos = in_range(vo > 0, lo_o, hi_o, M_o)[0] > 0
        neg = in_range(vo < 0, lo_o, hi_o, M_o)[0] > 0
        zero = in_range(vo == 0, lo_o, hi_o, M_o)[0] > 0
        nan |= (bad_all > bad_in) | ((bad_all > 0) & not_all) | ((bad_in > 0) & (zero | (pos & neg)))
    rep = H // v1.shape[1]
    if rep > 1:
        nan = nan.repeat_interleave(rep, dim=1)
    return out.masked_fill(nan, float("nan"))


def _bwd(dout, q, k1, k2, v1, v2, out, lse, scale: float, causal: bool, w1: int, w2: int):
    grads = attention_kernels(q.device).triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2)
    return _masked_pairs_grad_nan(tuple(grads), dout, q, k1, k2, v1, v2, out, lse, causal or w1 > 0, w1, w2)


def _masked_pairs_grad_nan(grads, dout, q, k1, k2, v1, v2, out, lse, causal, w1, w2):
    """NaN where the eager backward multiplies a masked triple's zero (dT = 0, P = 0) by a non-finite factor.

    The eager reference differentiates einsums over every (i, j, k): dq[i] = s sum dT[i,j,k] k1[j] (.) k2[k],
    dk1[j] = s sum dT q[i] (.) k2[k], dv1[j] = sum P dout[i] (.) v2[k] (k2, v2 alike), where masked triples have
    dT = 0 and P = 0 -- except a query whose scores hold a NaN, whose P row is NaN everywhere.  So a non-finite
    factor reaches every gradient row that shares a masked triple with it; the kernels skip masked triples.
    (A non-finite value's effect through out, delta_i = <dout_i, out_i>, comes from the forward's rule.)
    O((N + M1 + M2)(D + Dv)) per head; on the CPU only when an input, dout or lse is non-finite.
    """
    dq, dk1, dk2, dv1, dv2 = grads
    if not causal or q.shape[2] == 0 or k1.shape[2] == 0 or k2.shape[2] == 0:
        return grads  # no masked triple (dense), or no triple at all
    if dq.device.type == "cpu" and _all_finite(dout, q, k1, k2, v1, v2, out):  # out: NaN for a NaN P row
        return grads
    B, H, N, _ = q.shape
    Hk, M1, M2 = k1.shape[1], k1.shape[2], k2.shape[2]
    rep = H // Hk
    dev = dq.device
    r1, r2 = _ranges(N, M1, True, w1, dev), _ranges(N, M2, True, w2, dev)
    nf = lambda t: ~torch.isfinite(t)  # noqa: E731
    group = lambda t: t.view(B, Hk, rep, *t.shape[2:]).any(2)  # query heads -> their key head  # noqa: E731

    def query_rows(fa, ra, Ma, fb, rb, Mb):  # (B, Hk, N, F): a flagged key row in a masked pair of query i
        res = None
        for f, (lo, hi), M, (lo_o, hi_o), M_o in ((fa, ra, Ma, rb, Mb), (fb, rb, Mb, ra, Ma)):
            c = torch.nn.functional.pad(f.to(torch.int32).cumsum(2), (0, 0, 1, 0))
            n = c[:, :, (hi + 1).clamp(0, M)] - c[:, :, lo.clamp_max(M)]
            n = torch.where((hi >= lo).view(1, 1, N, 1), n, torch.zeros((), dtype=n.dtype, device=dev))
            tot = c[:, :, M:]
            not_all = ~((lo_o == 0) & (hi_o >= M_o - 1)).view(1, 1, N, 1)
            r = (tot > n) | ((tot > 0) & not_all)
            res = r if res is None else res | r
        return res

    def key_rows(fq, M, w, fo, Mo, wo, lo_o, hi_o):  # (B, Hk, M, F): rows j of one key set sharing a masked triple
        # with a flagged query i (fq, grouped) or a flagged row k of the other key set (fo)
        j = torch.arange(M, device=dev)
        ilo = j  # queries admitting key j: [j, j + w - 1] (causal)
        ihi = (j + w - 1).clamp_max(N - 1) if w > 0 else torch.full_like(j, N - 1)
        not_all_o = ~((lo_o == 0) & (hi_o >= Mo - 1)).view(1, 1, N, 1)
        c = torch.nn.functional.pad(fq.to(torch.int32).cumsum(2), (0, 0, 1, 0))
        c2 = torch.nn.functional.pad((fq & not_all_o).to(torch.int32).cumsum(2), (0, 0, 1, 0))
        empty = (ihi < ilo).view(1, 1, M, 1)
        inside = torch.where(empty, 0, c[:, :, (ihi + 1).clamp(0, N)] - c[:, :, ilo.clamp_max(N)])
        inside2 = torch.where(empty, 0, c2[:, :, (ihi + 1).clamp(0, N)] - c2[:, :, ilo.clamp_max(N)])
        res = (c[:, :, N:] > inside) | (inside2 > 0)
        # a flagged row k of the other set: some query masks (j, k) unless (j, k) = (0, 0) is admitted by all
        cnt = fo.to(torch.int32).sum(2, keepdim=True)  # (B, Hk, 1, F)
        all00 = N <= min(w if w > 0 else N, wo if wo > 0 else N)
        cnt_j = cnt.expand(B, Hk, M, cnt.shape[-1])
        if all00:
            cnt_j = cnt_j.clone()
            cnt_j[:, :, :1] -= fo[:, :, :1].to(torch.int32)
        return res | (cnt_j > 0)

    fq, fdo = group(nf(q)), group(nf(dout))
    poisoned = group(lse.isnan().unsqueeze(-1)).any(2, keepdim=True)  # (B, Hk, 1, 1): a query with a NaN P row
    masks = (
        query_rows(nf(k1), r1, M1, nf(k2), r2, M2).repeat_interleave(rep, dim=1),
        key_rows(fq, M1, w1, nf(k2), M2, w2, *r2),
        key_rows(fq, M2, w2, nf(k1), M1, w1, *r1),
        key_rows(fdo, M1, w1, nf(v2), M2, w2, *r2) | poisoned,
        key_rows(fdo, M2, w2, nf(v1), M1, w1, *r1) | poisoned,
    )
    return tuple(g.masked_fill(m, float("nan")) for g, m in zip(grads, masks))


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
