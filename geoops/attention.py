"""Kronecker triple attention (Alman & Song 2023; "2-simplicial" attention): exact, fused, memory-efficient.

For every query i the op takes a softmax over PAIRS of keys (j, k) of the trilinear score
<q_i, k1_j (.) k2_k> and averages the Kronecker (elementwise) products of the paired values::

    T[b,h,i,j,k] = scale * sum_d q[b,h,i,d] * k1[b,h',j,d] * k2[b,h',k,d]
    P[b,h,i,:,:] = softmax over the admissible (j, k) of T[b,h,i,:,:]
    out[b,h,i,:] = sum_{j,k} P[b,h,i,j,k] * v1[b,h',j,:] * v2[b,h',k,:]

    import geoops.attention as ga
    out = ga.triple_attention(q, k1, k2, v1, v2, causal=True)            # (B, H, N, Dv)
    out = ga.triple_attention(q, k1, k2, v1, v2, window=(64, 16))        # 2-D sliding window

The kernels never store anything of size N^2 (let alone the N^3 score tensor of the eager einsum):
an online softmax runs over (key-1, key-2 chunk) pairs with GEMM-shaped inner loops, and the backward
recomputes the probabilities from the saved log-sum-exp.  See ``docs/families/attention.md``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import torch

from . import _args, _backend, _library
from ._ops import attention as _ops

__all__ = ["triple_attention", "TripleAttentionFn"]

@_library.with_func_twin
class TripleAttentionFn(torch.autograd.Function):
    """autograd.Function of triple_attention: torch.ops.geoops.triple_attention_fwd / _bwd.

    forward(q, k1, k2, v1, v2, scale, causal, w1, w2) -> (out, lse); both differentiable.
    """

    @staticmethod
    def forward(ctx, q, k1, k2, v1, v2, scale, causal, w1, w2):
        args = (q, k1, k2, v1, v2, scale, causal, w1, w2)
        res = _ops.FWD(*args)
        TripleAttentionFn.op_context(ctx, args, res)
        return res

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        out, lse = output
        ctx.save_for_backward(*inputs[:5], out, lse)
        ctx.args = tuple(inputs[5:])
        ctx.set_materialize_grads(False)  # (no zero lse gradient made per backward; a None dout is handled there)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, dout, dlse):
        q, k1, k2, v1, v2, out, lse = ctx.saved_tensors
        mask = _library.grad_mask(ctx.needs_input_grad, 5)
        if not mask:
            return (None,) * 9
        if dout is None:
            dout = torch.zeros_like(out)
        half = dlse is not None and q.dtype in (torch.float16, torch.bfloat16)
        if half:
            # the half backwards never read out (delta from their own float32 recompute, C++, or from sum P dP,
            # Triton), so the column below would be ignored: run float32, with out and lse recomputed unrounded
            # (the half forward's arithmetic on the CPU), and round the gradients once
            q, k1, k2, v1, v2, dout = (t.float() for t in (q, k1, k2, v1, v2, dout))
            out, lse = _ops.FWD(q, k1, k2, v1, v2, *ctx.args)
        if dlse is not None:
            # dS = P (dP - delta + dlse) with delta = <dout, out>: the kernels' own backward on one more value
            # column, zero in v1 and v2 (dP unchanged) with dout = 1 and out = -dlse there (delta - dlse)
            dv = v1.shape[-1]
            v1, v2 = (torch.cat((v, v.new_zeros(v.shape[:-1] + (1,))), -1) for v in (v1, v2))
            dout = torch.cat((dout, dout.new_ones(dout.shape[:-1] + (1,))), -1)
            out = torch.cat((out, -dlse.unsqueeze(-1).to(out.dtype)), -1)
        # (the kernels form all five gradients: the op takes no mask)
        grads = _ops.BWD(dout.contiguous(), q, k1, k2, v1, v2, out, lse, *ctx.args)
        if dlse is not None:
            grads = (*grads[:3], grads[3][..., :dv], grads[4][..., :dv])
        if half:
            grads = tuple(g.to(t.dtype) for g, t in zip(grads, ctx.saved_tensors[:5]))
        return tuple(g if (mask >> i) & 1 else None for i, g in enumerate(grads)) + (None,) * 4


_library.op_autograd("geoops::triple_attention_fwd", TripleAttentionFn)

_NAME = "geoops.attention.triple_attention"


def _fail(msg: str, exc=ValueError):
    raise exc(f"{_NAME}: {msg}")


def _window_arg(window, causal: bool) -> Tuple[int, int]:
    if window is None:
        return 0, 0
    one = _args.as_index(window)  # any integer operator.index takes (a numpy int, a 0-d integer tensor), not a bool
    pair = (one, one) if one is not None else (
        tuple(_args.as_index(w) for w in window) if isinstance(window, (tuple, list)) else ())
    if len(pair) != 2 or None in pair:
        _fail(f"window must be None, a positive int or a pair (w1, w2) of positive ints, got {window!r}",
              TypeError)
    w1, w2 = pair
    if w1 < 1 or w2 < 1:
        _fail(f"window must be positive (i - w1 < j <= i needs w1 >= 1), got window=({w1}, {w2})")
    return w1, w2


def _check(q, k1, k2, v1, v2):
    named = {"q": q, "k1": k1, "k2": k2, "v1": v1, "v2": v2}
    _library.check_tensors(_NAME, named, same_dtype=True)
    for name, t in named.items():
        if t.dim() != 4:
            _fail(f"{name} must be 4-D (batch, heads, sequence, features), got shape {tuple(t.shape)}")
    B, H, N, D = q.shape
    for name, t in named.items():
        if t.shape[0] != B:
            _fail(f"{name} has batch size {t.shape[0]} but q has {B}")
    Hk = k1.shape[1]
    for name in ("k2", "v1", "v2"):
        if named[name].shape[1] != Hk:
            _fail(f"{name} has {named[name].shape[1]} heads but k1 has {Hk}; keys and values share their heads")
    if Hk == 0 or H % Hk != 0:
        _fail(f"the number of query heads H={H} (q) must be a multiple of the key/value heads H_kv={Hk} (k1)")
    for name in ("k1", "k2"):
        if named[name].shape[3] != D:
            _fail(f"{name} has feature dim {named[name].shape[3]} but q has D={D}")
    if v1.shape[2] != k1.shape[2]:
        _fail(f"v1 has {v1.shape[2]} positions but k1 has M1={k1.shape[2]}")
    if v2.shape[2] != k2.shape[2]:
        _fail(f"v2 has {v2.shape[2]} positions but k2 has M2={k2.shape[2]}")
    if v1.shape[3] != v2.shape[3]:
        _fail(f"v1 and v2 must share their value dim, got {v1.shape[3]} and {v2.shape[3]}")


def triple_attention(q: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, *,
                     scale: Optional[float] = None, causal: bool = False,
                     window: Optional[Union[int, Tuple[int, int]]] = None, return_lse: bool = False):
    r"""Kronecker triple attention (2-simplicial attention), exact, with a fused backward.

    .. math::
        T_{ijk} = s \sum_d q_{id}\, k^{(1)}_{jd}\, k^{(2)}_{kd},\qquad
        P_{ijk} = \frac{\exp T_{ijk}}{\sum_{(j',k')\ \mathrm{admissible}} \exp T_{ij'k'}},\qquad
        \mathrm{out}_i = \sum_{j,k} P_{ijk}\, \bigl(v^{(1)}_j \odot v^{(2)}_k\bigr)

    Args:
        q: queries (B, H, N, D).
        k1, v1: first keys (B, H_kv, M1, D) and values (B, H_kv, M1, Dv).
        k2, v2: second keys (B, H_kv, M2, D) and values (B, H_kv, M2, Dv).  H must be a multiple of H_kv
            (grouped keys: query head h uses key head h // (H // H_kv)); Dv may differ from D.
        scale: s; default 1/sqrt(D).  Alman & Song state the op without a scale (s = 1): pass scale=1.0.
        causal: only pairs with j <= i and k <= i (absolute positions: query i and keys j, k count from 0).
        window: (w1, w2) (an int w means (w, w)): only i - w1 < j <= i and i - w2 < k <= i; implies causal.
            Costs O(N w1 w2 D) instead of O(N M1 M2 D).
        return_lse: also return the log-sum-exp of the admissible scores, (B, H, N).

    Returns:
        out (B, H, N, Dv) in the inputs' dtype, and with ``return_lse`` also lse (B, H, N) in float32
        (float64 for float64 inputs; differentiable: a loss may use it beside out).  A query without any admissible pair (e.g. a
        window that reaches past the end of a shorter key sequence) gets out = 0 and lse = -inf, never NaN.
        A query with a NaN or +inf admissible score (NaN inputs, a NaN or infinite scale, overflow) gets
        out = NaN and lse = NaN, as the eager softmax does.  Masked pairs are no terms: an inf or NaN input at a
        position that a query may not see (padding, an unfilled buffer) reaches neither that query's output nor
        its gradients, nor a key's gradients through a query that may not see the key.

    Dtypes: float32 and float64 natively; float16 and bfloat16 are computed with float32 accumulation and
    float32 softmax statistics and rounded once at the end.  Gradients flow to q, k1, k2, v1 and v2
    (hand-written fused backward that recomputes the probabilities from lse; on the CPU it is
    deterministic: no atomics, and the same bits for any number of threads).

    Numerics: online softmax (running max) over the (j, k) pairs, so large logits do not overflow.  The
    eager peer (einsum + softmax over the flattened N x M1 x M2 tensor) needs memory for the whole score
    tensor; this op needs O((N + M1 + M2) D) plus a small per-thread workspace.

    Raises:
        TypeError / ValueError naming the argument for non-tensors, non-floating or mixed dtypes, mixed
        devices, wrong ranks, batch/head/feature/length mismatches, H not a multiple of H_kv, windows
        that are not positive ints, a non-bool ``causal`` or ``return_lse`` and a non-real ``scale``.
    """
    _check(q, k1, k2, v1, v2)
    if not isinstance(causal, bool):
        _fail(f"causal must be a bool, got {type(causal).__name__}", TypeError)
    if not isinstance(return_lse, bool):
        _fail(f"return_lse must be a bool, got {type(return_lse).__name__}", TypeError)
    w1, w2 = _window_arg(window, causal)
    if scale is None:
        scale = q.shape[-1] ** -0.5 if q.shape[-1] > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        _fail(f"scale must be a real number or None, got {type(scale).__name__}", TypeError)
    if _backend.checks_enabled():
        _library.check_finite(_NAME, {"q": q, "k1": k1, "k2": k2, "v1": v1, "v2": v2})
        if not math.isfinite(scale):
            _fail(f"scale is not finite ({scale}) [GEOOPS_CHECK]")
    causal = bool(causal) or w1 > 0
    if w1 > 0:  # a window of N or more keeps every j, k <= i: clamped, so that huge ints fit the op's int64 args
        n = max(q.shape[2], 1)
        w1, w2 = min(w1, n), min(w2, n)
    # strided inputs (TripleAttention's heads are views of its projections) are made contiguous once, here, and
    # those copies are what the Function saves: the kernels' own copies ran in the forward and again in the backward
    # (one copy per distinct tensor: self-attention may pass one tensor as q, k1 and k2)
    # (all contiguous, the usual call: nothing to do -- the loop's generators cost ~3 us a call)
    if not (q.is_contiguous() and k1.is_contiguous() and k2.is_contiguous() and v1.is_contiguous()
            and v2.is_contiguous()):
        ins, plain = (q, k1, k2, v1, v2), []
        for i, t in enumerate(ins):
            j = next((j for j in range(i) if ins[j] is t), None)
            plain.append(t.contiguous() if j is None else plain[j])
        q, k1, k2, v1, v2 = plain
    out, lse = _library.apply(TripleAttentionFn, q, k1, k2, v1, v2, float(scale), causal, w1, w2)
    return (out, lse) if return_lse else out
