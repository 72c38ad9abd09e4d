"""Eager reference of Kronecker triple attention (2-simplicial attention): readable torch, fp64-capable.

This is the oracle of the test-suite and the ``reference`` backend.  It materialises the full
(B, H, N, M1, M2) score tensor, so it is meant for small shapes only.

    T[b, h, i, j, k] = scale * sum_d q[b,h,i,d] * k1[b,h',j,d] * k2[b,h',k,d]
    P[b, h, i, :, :] = softmax over the admissible (j, k) of T[b, h, i, :, :]
    out[b, h, i, e]  = sum_{j,k} P[b,h,i,j,k] * v1[b,h',j,e] * v2[b,h',k,e]
    lse[b, h, i]     = log sum_{admissible j,k} exp(T[b,h,i,j,k])

with h' = h // (H // H_kv) (grouped keys).  Admissible pairs: all (j, k) by default; ``causal``:
j <= i and k <= i; ``window=(w1, w2)``: i - w1 < j <= i and i - w2 < k <= i (implies causal).
Indices are absolute (query i and key j count from 0 in both sequences).  A query with no
admissible pair gets out = 0 and lse = -inf.

Masked pairs are no terms: a query's output and its gradients depend only on the keys and values it may see
(session 48).  The dense einsums would multiply a masked pair's zero weight (and, in autograd, its zero dT) by
the keys and values of that pair, so an inf / NaN at a position that query i may not see (padding, an unfilled
buffer) would still make i's output NaN.  So when the mask hides some pairs and an input holds an inf or NaN,
the reference evaluates each query over its own admissible key ranges only (``per_query``; a loop over the
queries, small shapes).  Finite inputs take the dense einsums, which agree with it.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

__all__ = ["triple_attention", "admissible_mask"]


def _expand_heads(t: torch.Tensor, H: int) -> torch.Tensor:
    """(B, H_kv, M, D) -> (B, H, M, D) by repeating each key head H // H_kv times (grouped keys)."""
    hk = t.shape[1]
    return t if hk == H else t.repeat_interleave(H // hk, dim=1)


def admissible_mask(N: int, M1: int, M2: int, *, causal: bool = False,
                    window: Optional[Tuple[int, int]] = None, device=None) -> torch.Tensor:
    """Boolean (N, M1, M2) mask of the admissible (i, j, k) triples."""
    i = torch.arange(N, device=device).view(N, 1, 1)
    j = torch.arange(M1, device=device).view(1, M1, 1)
    k = torch.arange(M2, device=device).view(1, 1, M2)
    ok = torch.ones(N, M1, M2, dtype=torch.bool, device=device)
    if causal or window is not None:
        ok = ok & (j <= i) & (k <= i)
    if window is not None:
        w1, w2 = window
        ok = ok & (j > i - w1) & (k > i - w2)
    return ok


def _per_query(q, k1, k2, v1, v2, scale, causal, window):
    """(out, lse) with each query over its own admissible key ranges [lo, hi] (no masked pair is ever formed)."""
    B, H, N, _ = q.shape
    M1, M2, Dv = k1.shape[2], k2.shape[2], v1.shape[3]
    masked = causal or window is not None
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    outs, lses = [], []
    for i in range(N):
        lo1, lo2 = (max(0, i - window[0] + 1), max(0, i - window[1] + 1)) if window is not None else (0, 0)
        hi1, hi2 = (min(i, M1 - 1), min(i, M2 - 1)) if masked else (M1 - 1, M2 - 1)
        if hi1 < lo1 or hi2 < lo2:  # no admissible pair
            outs.append(q.new_zeros((B, H, Dv)))
            lses.append(torch.full((B, H), float("-inf"), dtype=lse_dtype, device=q.device))
            continue
        T = torch.einsum("bhd,bhjd,bhkd->bhjk", q[:, :, i] * scale, k1[:, :, lo1:hi1 + 1], k2[:, :, lo2:hi2 + 1])
        flat = T.reshape(B, H, -1)
        P = torch.softmax(flat, dim=-1).reshape(T.shape)
        outs.append(torch.einsum("bhjk,bhje,bhke->bhe", P, v1[:, :, lo1:hi1 + 1], v2[:, :, lo2:hi2 + 1]))
        lses.append(torch.logsumexp(flat, dim=-1).to(lse_dtype))
    if N == 0:
        return q.new_zeros((B, H, 0, Dv)), torch.zeros((B, H, 0), dtype=lse_dtype, device=q.device)
    return torch.stack(outs, 2), torch.stack(lses, 2)


def triple_attention(q: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, *,
                     scale: Optional[float] = None, causal: bool = False,
                     window: Optional[Union[int, Tuple[int, int]]] = None, return_lse: bool = False,
                     per_query: Optional[bool] = None):
    """Kronecker triple attention, computed eagerly with einsum (see the module docstring).

    q: (B, H, N, D); k1: (B, H_kv, M1, D); k2: (B, H_kv, M2, D); v1: (B, H_kv, M1, Dv); v2: (B, H_kv, M2, Dv).
    Returns out (B, H, N, Dv) in q's dtype, and lse (B, H, N) in float32 (float64 for float64 inputs)
    when ``return_lse``.  Computed in the inputs' dtype (so it is also the "same-dtype" reference of
    the low-precision rule); differentiable by autograd.  ``per_query``: evaluate each query over its own
    key ranges (True), the dense einsums (False), or the former when the mask hides some pairs and an input
    is non-finite (None; a caller that differentiates with a non-finite upstream gradient passes True).
    """
    B, H, N, D = q.shape
    M1, M2 = k1.shape[2], k2.shape[2]
    if scale is None:  # (D = 0: every score is the empty sum 0; scale 1 as the public function)
        scale = D ** -0.5 if D > 0 else 1.0
    if isinstance(window, int):
        window = (window, window)
    k1, k2, v1, v2 = (_expand_heads(t, H) for t in (k1, k2, v1, v2))
    if per_query is None:
        per_query = (causal or window is not None) and not all(bool(torch.isfinite(t).all())
                                                               for t in (q, k1, k2, v1, v2))
    if per_query:
        out, lse = _per_query(q, k1, k2, v1, v2, scale, causal, window)
        return (out, lse) if return_lse else out
    T = torch.einsum("bhid,bhjd,bhkd->bhijk", q * scale, k1, k2)
    ok = admissible_mask(N, M1, M2, causal=causal, window=window, device=q.device)
    T = T.masked_fill(~ok, float("-inf"))
    flat = T.reshape(B, H, N, M1 * M2)
    has = ok.reshape(N, M1 * M2).any(-1).view(1, 1, N, 1)  # queries with at least one admissible pair
    # rows without one are replaced by zeros before the softmax (no -inf - -inf, no NaN in the
    # gradient) and their probabilities zeroed after it
    safe = torch.where(has, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
    P = torch.softmax(safe, dim=-1) * has if M1 * M2 else safe
    lse = torch.logsumexp(safe, dim=-1) if M1 * M2 else safe.new_zeros((B, H, N))
    lse = lse.masked_fill(~has.view(1, 1, N), float("-inf"))
    P = P.reshape(B, H, N, M1, M2)
    out = torch.einsum("bhijk,bhje,bhke->bhie", P, v1, v2)
    if return_lse:
        return out, lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    return out
