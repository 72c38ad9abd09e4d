"""Triton kernels of Kronecker triple attention (forward and backward).

Installed as ``geoops.kernels.attention``; ``geoops._backend`` uses it for CUDA tensors, and for CPU
tensors under the Triton interpreter (``TRITON_INTERPRET=1``).  The module implements the contract of
``geoops._ops.attention`` (the same one as the C++ kernels)::

    triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2) -> (out, lse)
    triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2)
        -> (dq, dk1, dk2, dv1, dv2)

Forward (``_triple_attention_fwd_kernel``): one program per (query tile of BLOCK_M rows, batch x head).
For each admissible first key j (a scalar loop) and each tile of BLOCK_N second keys, the score tile
is S = (Q_I (.) k1_j) K2_tile^T (a dot, chunked over the head dim), and the value update is (P V2_tile) (.) v1_j, with an online
softmax (running max and sum per query) over the (j, k-tile) sequence.  Nothing of size N^2 is stored.

Backward (no atomics, deterministic): delta_i = <dout_i, out_i> (float16/bfloat16: sum_jk P_ijk dP_ijk from
the forward kernel in its DELTA mode, dP rounded as the backward kernels round it) and the forward's lse give
P = exp(S - lse) again.
  * ``_triple_attention_bwd_dq_kernel``: per query tile, dq_i = s sum_j sum_k dS_ijk (k1_j (.) k2_k) (one
    accumulator; float16/bfloat16 keep the per-j partial sum, k1_j applied in float32).
  * ``_triple_attention_bwd_dkv_kernel``: per tile of "shared" keys (k2, v2), loops over the query heads
    of its key group, the query tiles that can see the tile, and their first keys j:
    dV2 += P^T (dout (.) v1_j), dK2 += dS^T (s q (.) k1_j).  The op is symmetric in (k1, v1) <-> (k2, v2),
    so the same kernel with the key sets swapped gives dK1, dV1 in float64 (and under GEOOPS_ATTN_TRITON_DKV1=0).
  * ``_triple_attention_bwd_dkv1_kernel`` (float32/float16/bfloat16): dK1, dV1, one program per first key j,
    with the scores formed exactly as the forward forms them, (Q (.) k1_j) K2_tile^T: the swapped kernel's
    (Q (.) k2_k) K1_tile^T rounds differently, and exp(S - lse) of scores that are not the ones lse summed
    does not cancel the rounding (large logits: dv1 2-3x the eager reference's error, session 31).

Precision: float64 in float64 (interpreter / tests); everything else accumulates in float32; fp32 dots
use input_precision="ieee" (exact fp32, as the tests need); float16/bfloat16 tiles feed the dots in their
own dtype with float32 accumulation -- except the split dkv kernel's (SPLIT, float32 partial sums), whose dV2 /
dK2 dots take P, dout (.) v1_j, dS and q (.) k1_j as float32 at Triton's default precision: TF32 on the GPU
(float16's 10-bit mantissa, float32's range; exact float32 in the interpreter).  Offsets are 64-bit.

Registers: the score and dp dots (K = the head dim) are walked in BLOCK_K-wide chunks of the head dim
(``_chunked_scores``: no operand is held over the whole head dim; exact float32 dots lower to FMA loops
whose registers grow with K).  The launch configuration per dtype and head dim is chosen in one place,
``_blocks``; kernels/COMPILE_REPORT.md shows the result (registers, spills) per variant.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from . import sm_count, with_env

__all__ = ["triple_attention_fwd", "triple_attention_bwd"]


@triton.jit
def _ranges(offs, N, M, W, CAUSAL: tl.constexpr):
    """Admissible key range [lo, hi] of each query row in offs (window W > 0: i - W < j; causal: j <= i)."""
    lo = tl.where(W > 0, tl.maximum(offs - W + 1, 0), 0)
    if CAUSAL:
        hi = tl.minimum(offs, M - 1)
    else:
        hi = tl.zeros_like(offs) + (M - 1)
    return lo, hi


@triton.jit
def _query_tile(Q, K1, K2, V1, V2, DO, N, M1, M2, D, DV, H, REP, W1, W2, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """The prologue shared by the forward and the dq kernel: one query tile of (batch x head) bh.

    Returns the tile's rows, its row pointers into Q (head dim D) and DO (DV; the forward passes DO = Q, unused),
    the per-row admissible key ranges, the (j, k) loop bounds over the first and second keys, and the
    key/value bases of bh's key head.  The program ids are widened to 64 bits before any arithmetic (rows
    past 2^31 do not wrap)."""
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    kvh = (bh // H) * (H // REP) + (bh % H) // REP
    offs_m = i0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    lo1, hi1 = _ranges(offs_m, N, M1, W1, CAUSAL)
    lo2, hi2 = _ranges(offs_m, N, M2, W2, CAUSAL)
    i_last = tl.minimum(i0 + BLOCK_M, N) - 1
    j_start = tl.where(W1 > 0, tl.maximum(i0 - W1 + 1, 0), 0)
    k_start = tl.where(W2 > 0, tl.maximum(i0 - W2 + 1, 0), 0)
    if CAUSAL:
        j_end = tl.minimum(i_last + 1, M1)
        k_end = tl.minimum(i_last + 1, M2)
    else:
        j_end = M1 + tl.zeros_like(i0)
        k_end = M2 + tl.zeros_like(i0)
    return (bh, kvh, offs_m, row_ok, Q + (bh * N + offs_m) * D, DO + (bh * N + offs_m) * DV, lo1, hi1, lo2, hi2,
            j_start, j_end, k_start, k_end, K1 + kvh * M1 * D, V1 + kvh * M1 * DV, K2 + kvh * M2 * D,
            V2 + kvh * M2 * DV)


@triton.jit
def _split_keys(j_start, j_end, sp, JS):
    """The first-key loop bounds [j_start, j_end) of split sp (SPLIT kernels): cut to the split's keys
    [sp JS, (sp + 1) JS)."""
    return tl.maximum(j_start, sp * JS), tl.minimum(j_end, (sp + 1) * JS)


@triton.jit
def _seeing_queries(first, last, W, N, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """The query loop bounds [i_lo, i_hi) of the key-side backward kernels: the queries that can see some key in
    [first, last] (causal: i >= first; window W > 0: i < last + W), i_lo rounded down to a query tile's start."""
    if CAUSAL:
        i_lo = first
    else:
        i_lo = 0
    i_hi = tl.where(W > 0, tl.minimum(N, last + W), N)
    return (i_lo // BLOCK_M) * BLOCK_M, i_hi


@triton.jit
def _row_stats(LSE, DELTA, bh, offs_m, row_ok, N, ct: tl.constexpr):
    """The backward's per-row inputs of query rows offs_m of head bh: delta, live (rows with an admissible pair; a
    NaN lse propagates) and lse_safe (lse where live, else 0)."""
    lse = tl.load(LSE + bh * N + offs_m, mask=row_ok, other=float("-inf")).to(ct)
    delta = tl.load(DELTA + bh * N + offs_m, mask=row_ok, other=0.0).to(ct)
    live = row_ok & (lse != float("-inf"))
    return delta, live, tl.where(live, lse, 0.0)


@triton.jit
def _store_out_lse(O, LSE, acc, l, m, bh, N, DV, offs_m, row_ok, offs_e, emask, F64: tl.constexpr):
    """out = acc / l and lse = m + log l of query rows offs_m of head bh, stored (l = 0: no admissible pair, out 0
    and lse -inf; NaN, from a NaN or +inf score, propagates)."""
    has = l != 0
    l_safe = tl.where(has, l, 1.0)
    if F64:
        out = acc / l_safe[:, None]
    else:  # IEEE division (a float32 `/` compiles to the approximate div.full.f32)
        out = tl.div_rn(acc, l_safe[:, None])
    out = tl.where(has[:, None], out, 0.0)
    lse = tl.where(has, m + tl.log(l_safe), float("-inf"))
    tl.store(O + (bh * N + offs_m[:, None]) * DV + offs_e[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & emask[None, :])
    tl.store(LSE + bh * N + offs_m, lse.to(LSE.dtype.element_ty), mask=row_ok)


@triton.jit
def _half_fit(x, AXIS: tl.constexpr, OPERAND: tl.constexpr):
    """Powers of two (f, 1/f) per row (AXIS = 1) or column (AXIS = 0) of the float32 tile x, for a dot operand
    rounded to OPERAND: a float16 row whose max |x| reaches 2^15 is brought into [2^14, 2^15) by f (exact), so
    that the rounding cannot overflow float16's 65504 where the dot's float32 result, times 1/f, is in range
    (q (.) k1 = 9e4 with moderate scores was inf: out NaN; session 47).  f = 1 elsewhere and for bfloat16 (float32's
    range): those tiles keep their bits.  A row holding inf / NaN stays inf / NaN."""
    if OPERAND == tl.float16:
        f, inv = _half_pow2(tl.max(tl.abs(x), AXIS))
    else:
        f = tl.full([x.shape[1 - AXIS]], 1.0, tl.float32)
        inv = f
    return f, inv


@triton.jit
def _half_pow2(amax):
    """_half_fit's (f, 1/f) for float16 from the rows' max |x| (amax, float32)."""
    eb = (amax.to(tl.int32, bitcast=True) & 0x7F800000) >> 23  # biased exponent of the max
    big = eb >= 127 + 15
    f = tl.where(big, ((127 + 141 - eb) << 23).to(tl.float32, bitcast=True), 1.0)  # 2^(14 - e)
    inv = tl.where(big, ((eb - 14) << 23).to(tl.float32, bitcast=True), 1.0)  # 2^(e - 14)
    return f, inv


@triton.jit
def _chunked_scores(a_rows, a_scale, w_ptr, b_rows, a_ok, b_ok, L, CT: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    ROWMAX: tl.constexpr = False):
    """S[m, n] = sum_{d < L} (a[m, d] * a_scale * w[d]) * b[n, d]: the score (and dp) dots of every kernel.

    a_rows / b_rows: pointers to the rows of a (BLOCK_M) and b (BLOCK_N), masked by a_ok / b_ok; w: the
    first key (or value) row.  The head dim is walked in chunks of BLOCK_K (a run-time loop, the last chunk
    masked), so no operand is ever held over the whole head dim: exact float32 dots (input_precision="ieee")
    lower to FMA loops whose registers grow with K, which spilled from D = 16 on.  float16/bfloat16 feed the
    chunk's tensor-core dot in their own dtype (the product a * a_scale * w in float32, rounded once; in float16
    each row first brought into range by a power of two, _half_fit).  ROWMAX: also each row's max |a * a_scale * w|
    over the head dim (float32), returned as (S, max)."""
    s = tl.zeros([BLOCK_M, BLOCK_N], CT)
    if ROWMAX:
        amax = tl.zeros([BLOCK_M], CT)
    for d0 in range(0, L, BLOCK_K):
        offs = d0 + tl.arange(0, BLOCK_K)
        dm = offs < L
        a = tl.load(a_rows[:, None] + offs[None, :], mask=a_ok[:, None] & dm[None, :], other=0.0).to(CT) * a_scale
        w = tl.load(w_ptr + offs, mask=dm, other=0.0).to(CT)
        b = tl.load(b_rows[:, None] + offs[None, :], mask=b_ok[:, None] & dm[None, :], other=0.0)
        a = a * w[None, :]
        if ROWMAX:
            amax = tl.maximum(amax, tl.max(tl.abs(a), 1))
        if HALF:
            f, inv = _half_fit(a, 1, b.dtype)
            s += tl.dot((a * f[:, None]).to(b.dtype), tl.trans(b)) * inv[:, None]
        else:
            s += tl.dot(a, tl.trans(b.to(CT)), input_precision="ieee")
    if ROWMAX:
        return s, amax
    else:
        return s


@triton.jit
def _bad_rows(C, base, lo, hi):
    """Whether rows [lo, hi) (hi <= M) of a key set (or the queries) hold an inf / NaN: C holds the prefix counts of
    the flagged rows, M + 1 per head from base (_nonfinite_prefix).  Two scalar loads."""
    return (tl.load(C + base + hi) - tl.load(C + base + lo)) > 0


@triton.jit
def _clean_bound(C, base, lo, hi, R):
    """R where rows [lo, hi) hold no inf / NaN (not _bad_rows), else 0: the common kernels' load bound of a tile's
    rows (offs < bound), so that a flagged tile reads as 0 with no branch."""
    return tl.where(tl.load(C + base + hi) == tl.load(C + base + lo), R, 0)


@triton.jit
def _key_row(base, j, L, offs, lmask, C, cbase, ct: tl.constexpr, FIX: tl.constexpr, CAUSAL: tl.constexpr):
    """Row j of a key set (L entries from base + j L, offs < L: lmask) in ct, and (FIX) whether it holds an inf / NaN
    (_bad_rows; else False).  CAUSAL and not FIX: a non-finite row reads as 0 (its products added by the fix-up)."""
    bad = False
    if FIX:
        row = tl.load(base + j * L + offs, mask=lmask, other=0.0).to(ct)
        bad = _bad_rows(C, cbase, j, j + 1)
    elif CAUSAL:
        row = tl.load(base + j * L + offs, mask=offs < _clean_bound(C, cbase, j, j + 1, L), other=0.0).to(ct)
    else:
        row = tl.load(base + j * L + offs, mask=lmask, other=0.0).to(ct)
    return row, bad


@triton.jit
def _key_tile_mask(offs_n, nmask, lmask, C, cbase, k0, M, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """The load mask of a key tile's rows offs_n (nmask: offs_n < M) times lmask over the entries; CAUSAL: a tile
    holding a non-finite row reads as 0 (its products added by the fix-up)."""
    if CAUSAL:
        nmask = offs_n < _clean_bound(C, cbase, k0, tl.minimum(k0 + BLOCK_N, M), M)
    return nmask[:, None] & lmask[None, :]


@triton.jit
def _masked_dot(c, a, ok, B, r0, R, w, L, offs, CT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """c + (the dot a . (B rows (.) w) with the masked entries left out): c[m, :] += sum over the n with ok[m, n] of
    a[m, n] (b[r0 + n, offs] (.) w) (a dot multiplies a masked entry's zero a by the row: 0 * inf = NaN).  b: rows
    of L elements at B (rows >= R read as 0), offs: the columns c holds (the whole row, or a chunk of it: CH),
    w: those columns' (masked past L).  One column of a at a time, accumulated into c in place (no second tile
    held): slow, for the rare tiles where a non-finite row meets a masked entry."""
    cols = tl.arange(0, BLOCK_N)
    lm = offs < L
    for n in range(0, BLOCK_N):
        sel = ok & (cols[None, :] == n)
        a_n = tl.sum(tl.where(sel, a, 0.0), 1)
        ok_n = tl.max(sel.to(tl.int32), 1) > 0
        row = r0 + n + tl.zeros_like(offs)
        b_n = tl.load(B + row * L + offs, mask=lm & (row < R), other=0.0).to(CT) * w
        c += tl.where(ok_n[:, None], a_n[:, None] * b_n[None, :], 0.0)
    return c


@triton.jit
def _triple_attention_fwd_kernel(Q, K1, K2, V1, V2, O, LSE, N, M1, M2, D, DV, H, REP, scale: tl.float64, W1, W2,
                                 CAUSAL: tl.constexpr, F64: tl.constexpr, HALF: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DO, DELTA: tl.constexpr,
                                 C1, C2, JS=0, SPLIT: tl.constexpr = False, FIX: tl.constexpr = False):
    """The forward (out, lse; DO unused); with DELTA (the float16/bfloat16 backward) instead delta_i = sum_jk P_ijk dP_ijk
    into O (B x H x N, float32), dP formed by the backward kernels' own _chunked_scores call (dout (.) v1_j
    rounded to the input dtype, as they round it), so that dP - delta vanishes where the exact dS does (a
    single admissible pair) instead of leaving that rounding (~5e-4 relative in float16); no lse stored.

    SPLIT (not with DELTA): program_id(2) = sp takes the first keys [sp JS, (sp + 1) JS) only and stores its
    unnormalised partial accumulator into O ([S, B H, N, DV], the compute type) and its running max and sum into
    LSE ([S, B H, N, 2]); _triple_attention_combine_kernel merges the splits (small B H: more programs).

    C1, C2 (CAUSAL): prefix counts of the non-finite rows of (k1, v1) and (k2, v2) (_nonfinite_prefix): a (j,
    k-tile) whose v1_j or v2 tile holds such a row is "flagged" and its P V2 product left out (v1_j / the v2 tile
    read as 0: one scalar test, no branch, so the common kernel keeps main's registers); its scores still enter
    the row max and sum.  FIX (causal, after the forward): the fix-up launch adds the flagged tiles' products to
    out with the final lse, P = exp(S - lse), over the admissible pairs only (_masked_dot: a masked zero P never
    meets the inf / NaN, 0 * inf; session 48); a head without a non-finite row exits at once (empty loop)."""
    ct = tl.float64 if F64 else tl.float32
    if not F64:  # scale is a float64 parameter (a plain Python float argument arrives rounded to float32)
        scale = tl.cast(scale, ct)
    (bh, kvh, offs_m, row_ok, q_rows, do_rows, lo1, hi1, lo2, hi2, j_start, j_end, k_start, k_end,
     k1_base, v1_base, k2_base, v2_base) = _query_tile(Q, K1, K2, V1, V2, DO, N, M1, M2, D, DV, H, REP, W1, W2,
                                                       CAUSAL, BLOCK_M)
    if SPLIT:
        sp = tl.program_id(2).to(tl.int64)
        j_start, j_end = _split_keys(j_start, j_end, sp, JS)
    offs_e = tl.arange(0, BLOCK_DV)
    emask = offs_e < DV
    m_i = tl.full([BLOCK_M], float("-inf"), ct)
    l_i = tl.zeros([BLOCK_M], ct)
    if FIX:
        lse_f = tl.load(LSE + bh * N + offs_m, mask=row_ok, other=float("-inf")).to(ct)
        lse_f = tl.where(lse_f == float("-inf"), 0.0, lse_f)  # no admissible pair: every P entry is masked
        j_end = tl.where(_bad_rows(C1, kvh * (M1 + 1), 0, M1) | _bad_rows(C2, kvh * (M2 + 1), 0, M2), j_end, j_start)
    if DELTA:
        acc = tl.zeros([BLOCK_M], ct)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_DV], ct)
    for j in range(j_start, j_end):
        if not DELTA:
            v1j, bad1 = _key_row(v1_base, j, DV, offs_e, emask, C1, kvh * (M1 + 1), ct, FIX, CAUSAL)
        jok = row_ok & (j >= lo1) & (j <= hi1)
        for k0 in range(k_start, k_end, BLOCK_N):
            offs_n = k0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < M2
            s = _chunked_scores(q_rows, scale, k1_base + j * D, k2_base + offs_n * D, row_ok, nmask, D, ct, HALF,
                                BLOCK_M, BLOCK_N, BLOCK_K)
            ok = jok[:, None] & nmask[None, :] & (offs_n[None, :] >= lo2[:, None]) & (offs_n[None, :] <= hi2[:, None])
            s = tl.where(ok, s, float("-inf"))
            if FIX:  # the flagged tiles only, with the final lse
                if bad1 | _bad_rows(C2, kvh * (M2 + 1), k0, tl.minimum(k0 + BLOCK_N, M2)):
                    acc = _masked_dot(acc, tl.exp(s - lse_f[:, None]), ok, v2_base, k0, M2, v1j, DV, offs_e, ct,
                                      BLOCK_M, BLOCK_N)
            else:
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp(m_i - m_safe)
                p = tl.exp(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                if DELTA:
                    dp = _chunked_scores(do_rows, 1.0, v1_base + j * DV, v2_base + offs_n * DV, row_ok, nmask, DV,
                                         ct, HALF, BLOCK_M, BLOCK_N, BLOCK_K)
                    acc = acc * alpha + tl.sum(tl.where(ok, p * dp, 0.0), 1)
                else:
                    vmask = _key_tile_mask(offs_n, nmask, emask, C2, kvh * (M2 + 1), k0, M2, CAUSAL, BLOCK_N)
                    v2 = tl.load(v2_base + offs_n[:, None] * DV + offs_e[None, :], mask=vmask, other=0.0)
                    if HALF:
                        pv = tl.dot(p.to(v2.dtype), v2)
                    else:
                        pv = tl.dot(p, v2.to(ct), input_precision="ieee")
                    acc = acc * alpha[:, None] + pv * v1j[None, :]
                m_i = m_new
    if FIX:
        o_ptr = O + (bh * N + offs_m[:, None]) * DV + offs_e[None, :]
        o_ok = row_ok[:, None] & emask[None, :]
        tl.store(o_ptr, (tl.load(o_ptr, mask=o_ok, other=0.0).to(ct) + acc).to(O.dtype.element_ty), mask=o_ok)
    elif SPLIT:
        part = (sp * tl.num_programs(1).to(tl.int64) + bh) * N + offs_m
        tl.store(O + part[:, None] * DV + offs_e[None, :], acc, mask=row_ok[:, None] & emask[None, :])
        tl.store(LSE + part * 2, m_i, mask=row_ok)
        tl.store(LSE + part * 2 + 1, l_i, mask=row_ok)
    elif DELTA:
        has = l_i != 0  # l_i = 0: no admissible pair (delta 0); NaN (a NaN or +inf score) propagates
        delta = tl.where(has, tl.div_rn(acc, tl.where(has, l_i, 1.0)), 0.0)
        tl.store(O + bh * N + offs_m, delta, mask=row_ok)
    else:
        _store_out_lse(O, LSE, acc, l_i, m_i, bh, N, DV, offs_m, row_ok, offs_e, emask, F64)


@triton.jit
def _triple_attention_combine_kernel(PO, PML, O, LSE, S, N, DV, F64: tl.constexpr, BLOCK_M: tl.constexpr,
                                     BLOCK_DV: tl.constexpr):
    """out and lse from the forward's S splits (in split order: the same bits on every run): M = max_s m_s,
    L = sum_s l_s exp(m_s - M), out = sum_s acc_s exp(m_s - M) / L, lse = M + log L (L = 0: out 0, lse -inf)."""
    ct = tl.float64 if F64 else tl.float32
    bh = tl.program_id(1).to(tl.int64)
    BH = tl.num_programs(1).to(tl.int64)
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    offs_e = tl.arange(0, BLOCK_DV)
    emask = offs_e < DV
    mx = tl.full([BLOCK_M], float("-inf"), ct)
    for sp in range(0, S):
        part = (sp * BH + bh) * N + offs_m
        mx = tl.maximum(mx, tl.load(PML + part * 2, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(mx == float("-inf"), 0.0, mx)
    l_sum = tl.zeros([BLOCK_M], ct)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], ct)
    for sp in range(0, S):
        part = (sp * BH + bh) * N + offs_m
        w = tl.exp(tl.load(PML + part * 2, mask=row_ok, other=float("-inf")) - m_safe)  # an empty split: 0
        l_sum += tl.load(PML + part * 2 + 1, mask=row_ok, other=0.0) * w
        acc += tl.load(PO + part[:, None] * DV + offs_e[None, :], mask=row_ok[:, None] & emask[None, :],
                       other=0.0) * w[:, None]
    _store_out_lse(O, LSE, acc, l_sum, mx, bh, N, DV, offs_m, row_ok, offs_e, emask, F64)


@triton.jit
def _triple_attention_bwd_dq_kernel(Q, K1, K2, V1, V2, DO, LSE, DELTA, DQ, N, M1, M2, D, DV, H, REP, scale: tl.float64,
                                    W1, W2,
                                    CAUSAL: tl.constexpr, F64: tl.constexpr, HALF: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, C1, C2, JS=0,
                                    SPLIT: tl.constexpr = False, FIX: tl.constexpr = False,
                                    CH: tl.constexpr = False):
    """dq of one query tile; SPLIT: program_id(2) = sp takes the first keys [sp JS, (sp + 1) JS) and stores its
    partial dq into DQ [S, B H, N, D] (the compute type), summed over the splits by the launcher.  C1, C2
    (CAUSAL): as the forward's; a (j, k-tile) whose k1_j or k2 tile holds a non-finite row is left out (read as 0)
    and FIX (the fix-up launch, after the common one) adds it into DQ with _masked_dot.  CH (FIX only): dq's
    columns [c BLOCK_D, (c + 1) BLOCK_D) for c = program_id(2) (_head_chunks), the scores over the whole D."""
    ct = tl.float64 if F64 else tl.float32
    if not F64:
        scale = tl.cast(scale, ct)
    (bh, kvh, offs_m, row_ok, q_rows, do_rows, lo1, hi1, lo2, hi2, j_start, j_end, k_start, k_end,
     k1_base, v1_base, k2_base, v2_base) = _query_tile(Q, K1, K2, V1, V2, DO, N, M1, M2, D, DV, H, REP, W1, W2,
                                                       CAUSAL, BLOCK_M)
    if SPLIT:
        sp = tl.program_id(2).to(tl.int64)
        j_start, j_end = _split_keys(j_start, j_end, sp, JS)
        DQ += sp * tl.num_programs(1).to(tl.int64) * N * D
    offs_d = tl.arange(0, BLOCK_D)
    if CH:
        offs_d += tl.program_id(2).to(tl.int64) * BLOCK_D
    dmask = offs_d < D
    delta, live, lse_safe = _row_stats(LSE, DELTA, bh, offs_m, row_ok, N, ct)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ct)
    if FIX:  # a key head without a non-finite row: nothing to add
        j_end = tl.where(_bad_rows(C1, kvh * (M1 + 1), 0, M1) | _bad_rows(C2, kvh * (M2 + 1), 0, M2), j_end, j_start)
    for j in range(j_start, j_end):
        k1j, bad1 = _key_row(k1_base, j, D, offs_d, dmask, C1, kvh * (M1 + 1), ct, FIX, CAUSAL)
        jok = live & (j >= lo1) & (j <= hi1)
        dqj = tl.zeros([BLOCK_M, BLOCK_D], ct)  # float16/bfloat16 only (k1_j applied once per j, in float32)
        for k0 in range(k_start, k_end, BLOCK_N):
            offs_n = k0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < M2
            s = _chunked_scores(q_rows, scale, k1_base + j * D, k2_base + offs_n * D, row_ok, nmask, D, ct, HALF,
                                BLOCK_M, BLOCK_N, BLOCK_K)
            dp = _chunked_scores(do_rows, 1.0, v1_base + j * DV, v2_base + offs_n * DV, row_ok, nmask, DV, ct, HALF,
                                 BLOCK_M, BLOCK_N, BLOCK_K)
            ok = jok[:, None] & nmask[None, :] & (offs_n[None, :] >= lo2[:, None]) & (offs_n[None, :] <= hi2[:, None])
            p = tl.where(ok, tl.exp(s - lse_safe[:, None]), 0.0)
            ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)  # masked: 0, also for a NaN delta (as eager's)
            if FIX:  # the flagged tiles only: no masked (zero) dS entry times the inf / NaN
                if bad1 | _bad_rows(C2, kvh * (M2 + 1), k0, tl.minimum(k0 + BLOCK_N, M2)):
                    acc = _masked_dot(acc, ds, ok, k2_base, k0, M2, k1j, D, offs_d, ct, BLOCK_M, BLOCK_N)
            else:
                kmask = _key_tile_mask(offs_n, nmask, dmask, C2, kvh * (M2 + 1), k0, M2, CAUSAL, BLOCK_N)
                k2 = tl.load(k2_base + offs_n[:, None] * D + offs_d[None, :], mask=kmask, other=0.0)
                if HALF:
                    f, inv = _half_fit(ds, 1, k2.dtype)
                    dqj += tl.dot((ds * f[:, None]).to(k2.dtype), k2) * inv[:, None]
                else:  # sum_k dS_ijk (k1_j (.) k2_k): one accumulator, no per-j partial sum held
                    acc += tl.dot(ds, k2.to(ct) * k1j[None, :], input_precision="ieee")
        if HALF:
            if not FIX:
                acc += dqj * k1j[None, :]
    dq_ptr = DQ + (bh * N + offs_m[:, None]) * D + offs_d[None, :]
    if FIX:  # added to the common kernel's dq
        dq_ok = row_ok[:, None] & dmask[None, :]
        acc = tl.load(dq_ptr, mask=dq_ok, other=0.0).to(ct) + acc * scale
        tl.store(dq_ptr, acc.to(DQ.dtype.element_ty), mask=dq_ok)
    else:
        tl.store(dq_ptr, (acc * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & dmask[None, :])


@triton.jit
def _key_side_rows(Q, DO, LSE, DELTA, bh, i0, N, D, DV, ct: tl.constexpr, BLOCK_M: tl.constexpr):
    """The query tile i0 of head bh as the key-side backward kernels (dkv, dkv1) read it: its rows, row pointers
    into Q and DO, delta, and lse (live: rows with an admissible pair; a NaN lse propagates; lse_safe 0 elsewhere)."""
    offs_m = i0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    delta, live, lse_safe = _row_stats(LSE, DELTA, bh, offs_m, row_ok, N, ct)
    return offs_m, row_ok, Q + (bh * N + offs_m) * D, DO + (bh * N + offs_m) * DV, delta, live, lse_safe


@triton.jit
def _triple_attention_bwd_dkv_kernel(Q, KA, KB, VA, VB, DO, LSE, DELTA, DKB, DVB, N, MA, MB, D, DV, H, REP,
                                     scale: tl.float64,
                                     WA, WB, CAUSAL: tl.constexpr, F64: tl.constexpr, HALF: tl.constexpr,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CA, CQ, JS=0,
                                     SPLIT: tl.constexpr = False, FIX: tl.constexpr = False,
                                     CH: tl.constexpr = False):
    """Gradients of the key set B (KB, VB) for one tile of BLOCK_N of its keys and one key head.  SPLIT:
    program_id(2) = sp takes the first keys (set A) [sp JS, (sp + 1) JS) and stores partial gradients into DKB
    [S, B Hk, MB, D] / DVB [S, B Hk, MB, DV] (the compute type), summed over the splits by the launcher.
    CA, CQ (CAUSAL): prefix counts of the non-finite rows of (KA, VA) and of the queries (q, dout)
    (_nonfinite_prefix): the common kernel leaves out a query tile with such a q / dout row whole (an empty j loop)
    and a j whose ka_j / va_j holds one (both read as 0: the two dots add 0); FIX (the fix-up launch, after the
    common one) adds exactly those (query tile, j) into DKB / DVB with _masked_dot, so that a key's gradients
    never take a query that may not see it (0 * inf).  A key head whose query heads and key set A hold no
    non-finite row exits at once.  CH (FIX only): the columns [c BLOCK_D, (c + 1) BLOCK_D) of dkb and
    [c BLOCK_DV, (c + 1) BLOCK_DV) of dvb for c = program_id(2) (_head_chunks), the scores over the whole D, DV."""
    n0 = tl.program_id(0).to(tl.int64) * BLOCK_N  # 64-bit before any arithmetic
    kvh = tl.program_id(1).to(tl.int64)
    if SPLIT:
        sp = tl.program_id(2).to(tl.int64)
        DKB += sp * tl.num_programs(1).to(tl.int64) * MB * D
        DVB += sp * tl.num_programs(1).to(tl.int64) * MB * DV
    HK = H // REP
    b = kvh // HK
    hk = kvh % HK
    ct = tl.float64 if F64 else tl.float32
    F16: tl.constexpr = DKB.dtype.element_ty == tl.float16  # not the split's float32 partial sums
    if not F64:
        scale = tl.cast(scale, ct)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    if CH:
        offs_d += tl.program_id(2).to(tl.int64) * BLOCK_D
        offs_e += tl.program_id(2).to(tl.int64) * BLOCK_DV
    nmask = offs_n < MB
    dmask = offs_d < D
    emask = offs_e < DV
    kb_rows = KB + (kvh * MB + offs_n) * D
    vb_rows = VB + (kvh * MB + offs_n) * DV
    dkb = tl.zeros([BLOCK_N, BLOCK_D], ct)
    dvb = tl.zeros([BLOCK_N, BLOCK_DV], ct)
    n_last = tl.minimum(n0 + BLOCK_N, MB) - 1
    i_lo, i_hi = _seeing_queries(n0, n_last, WB, N, CAUSAL, BLOCK_M)  # the queries that see a key of this tile
    ka_base = KA + kvh * MA * D
    va_base = VA + kvh * MA * DV
    if FIX:
        bad_a = _bad_rows(CA, kvh * (MA + 1), 0, MA)
    for hq in range(0, REP):
        bh = b * H + hk * REP + hq
        i_end = i_hi
        if FIX:  # nothing to add for this query head
            i_end = tl.where(bad_a | _bad_rows(CQ, bh * (N + 1), 0, N), i_hi, i_lo)
        for i0 in range(i_lo, i_end, BLOCK_M):
            offs_m, row_ok, q_rows, do_rows, delta, live, lse_safe = _key_side_rows(Q, DO, LSE, DELTA, bh, i0, N, D, DV,
                                                                                    ct, BLOCK_M)
            loa, hia = _ranges(offs_m, N, MA, WA, CAUSAL)
            lob, hib = _ranges(offs_m, N, MB, WB, CAUSAL)
            kok = live[:, None] & nmask[None, :] & (offs_n[None, :] >= lob[:, None]) & (offs_n[None, :] <= hib[:, None])
            i_last = tl.minimum(i0 + BLOCK_M, N) - 1
            j_start = tl.where(WA > 0, tl.maximum(i0 - WA + 1, 0), 0)
            if CAUSAL:
                j_end = tl.minimum(i_last + 1, MA)
            else:
                j_end = MA
            if SPLIT:
                j_start, j_end = _split_keys(j_start, j_end, sp, JS)
            if FIX:  # a non-finite q / dout row in this query tile (prefix counts, two scalar loads)
                badq = _bad_rows(CQ, bh * (N + 1), i0, tl.minimum(i0 + BLOCK_M, N))
            elif CAUSAL:  # the common kernel leaves such a query tile out whole (the fix-up adds it)
                j_end = tl.where(_bad_rows(CQ, bh * (N + 1), i0, tl.minimum(i0 + BLOCK_M, N)), j_start, j_end)
            for j in range(j_start, j_end):
                if F16:  # and each row's max |q (.) k_a|, |dout (.) v_a| (the dkb, dvb dots' operands below)
                    s, qmax = _chunked_scores(q_rows, scale, ka_base + j * D, kb_rows, row_ok, nmask, D, ct, HALF,
                                              BLOCK_M, BLOCK_N, BLOCK_K, ROWMAX=True)
                    dp, gmax = _chunked_scores(do_rows, 1.0, va_base + j * DV, vb_rows, row_ok, nmask, DV, ct, HALF,
                                               BLOCK_M, BLOCK_N, BLOCK_K, ROWMAX=True)
                else:
                    s = _chunked_scores(q_rows, scale, ka_base + j * D, kb_rows, row_ok, nmask, D, ct, HALF,
                                        BLOCK_M, BLOCK_N, BLOCK_K)
                    dp = _chunked_scores(do_rows, 1.0, va_base + j * DV, vb_rows, row_ok, nmask, DV, ct, HALF,
                                         BLOCK_M, BLOCK_N, BLOCK_K)
                ok = kok & ((j >= loa) & (j <= hia))[:, None]
                p = tl.where(ok, tl.exp(s - lse_safe[:, None]), 0.0)
                ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)  # masked: 0, also for a NaN delta (as eager's)
                # the (query, first key) operands of the two accumulating dots, over the whole head dims
                if FIX or not CAUSAL:
                    kaj = tl.load(ka_base + j * D + offs_d, mask=dmask, other=0.0).to(ct)
                    vaj = tl.load(va_base + j * DV + offs_e, mask=emask, other=0.0).to(ct)
                else:  # a non-finite k_a_j / v_a_j: both read as 0 (the tile's q / dout rows are finite here)
                    a_ok = _clean_bound(CA, kvh * (MA + 1), j, j + 1, 1)
                    kaj = tl.load(ka_base + j * D + offs_d, mask=offs_d < a_ok * D, other=0.0).to(ct)
                    vaj = tl.load(va_base + j * DV + offs_e, mask=offs_e < a_ok * DV, other=0.0).to(ct)
                if FIX:  # the flagged (query tile, j) only: no masked (zero) P / dS entry times the inf / NaN
                    if badq | _bad_rows(CA, kvh * (MA + 1), j, j + 1):
                        okt = tl.trans(ok.to(tl.int32)) != 0
                        dvb = _masked_dot(dvb, tl.trans(p), okt, DO + bh * N * DV, i0, N, vaj, DV, offs_e, ct,
                                          BLOCK_N, BLOCK_M)
                        dkb = _masked_dot(dkb, tl.trans(ds), okt, Q + bh * N * D, i0, N, kaj * scale, D, offs_d, ct,
                                          BLOCK_N, BLOCK_M)
                else:
                    qj = tl.load(q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None] & dmask[None, :],
                                 other=0.0).to(ct) * scale * kaj[None, :]
                    gj = tl.load(do_rows[:, None] + offs_e[None, :], mask=row_ok[:, None] & emask[None, :],
                                 other=0.0).to(ct) * vaj[None, :]
                    if HALF:
                        if F16:
                            # each row of q (.) k_a that would overflow float16 brought into range by a power of two
                            # (_half_pow2 of its max, taken as the scores formed it), undone on the same row of dS:
                            # the rows are the dot's K, so dkb still accumulates in place (a scale on the dot's
                            # result, or the max taken from qj here, spilled at D = 128 on sm_80).  dout (.) v_a the
                            # same way, its max from the dp scores, undone on P's row (p <= 1: p / f reaches 65504
                            # only where one product p |dout (.) v_a| passes 2^30; session 51; at 4 warps this
                            # spilled 24-60 B at D = 128, which takes 8: _triple_attention_bwd)
                            fq, iq = _half_pow2(qmax)
                            qj = qj * fq[:, None]
                            ds = ds * iq[:, None]
                            fg, ig = _half_pow2(gmax)
                            gj = gj * fg[:, None]
                            p = p * ig[:, None]
                        dvb += tl.dot(tl.trans(p.to(DVB.dtype.element_ty)), gj.to(DVB.dtype.element_ty))
                        dkb += tl.dot(tl.trans(ds.to(DKB.dtype.element_ty)), qj.to(DKB.dtype.element_ty))
                    else:
                        dvb += tl.dot(tl.trans(p), gj, input_precision="ieee")
                        dkb += tl.dot(tl.trans(ds), qj, input_precision="ieee")
    dkb_ptr = DKB + (kvh * MB + offs_n[:, None]) * D + offs_d[None, :]
    dvb_ptr = DVB + (kvh * MB + offs_n[:, None]) * DV + offs_e[None, :]
    if FIX:  # added to the common kernel's gradients
        dkb += tl.load(dkb_ptr, mask=nmask[:, None] & dmask[None, :], other=0.0).to(ct)
        dvb += tl.load(dvb_ptr, mask=nmask[:, None] & emask[None, :], other=0.0).to(ct)
    tl.store(dkb_ptr, dkb.to(DKB.dtype.element_ty), mask=nmask[:, None] & dmask[None, :])
    tl.store(dvb_ptr, dvb.to(DVB.dtype.element_ty), mask=nmask[:, None] & emask[None, :])


def _fix_interpreter_bf16_dot() -> bool:
    """Make the Triton interpreter's ``tl.dot`` read bfloat16 operands as numbers (True when installed).

    The interpreter keeps bfloat16 tensors as their uint16 bit patterns and its ``create_dot`` converts
    only 8-bit float operands before ``np.matmul``, so a bfloat16 dot multiplied the bit patterns
    (values ~1e10; triton-lang/triton#11584, "not supported yet" upstream).  The wrapper widens bfloat16
    operands to float32 first (exact: a bfloat16 is the top half of a float32), which is what the tensor
    cores compute (exact products, float32 accumulation).  Only the interpreter is touched; compiled
    kernels never see this.  Idempotent."""
    import numpy as np  # only the interpreter needs numpy: imported here, not at module level
    from triton.runtime import interpreter as _interp

    builder = getattr(_interp, "InterpreterBuilder", None)
    orig = getattr(builder, "create_dot", None)
    if orig is None or getattr(orig, "_geoops_shim", False):
        return False

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        bits = np.ascontiguousarray(h.data).view(np.uint16).astype(np.uint32) << 16
        return _interp.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args, **kwargs):
        return orig(self, widen(a), widen(b), d, *args, **kwargs)

    create_dot._geoops_shim = True
    builder.create_dot = create_dot
    return True


@triton.jit
def _triple_attention_bwd_dkv1_kernel(Q, K1, K2, V1, V2, DO, LSE, DELTA, DK1, DV1, N, M1, M2, D, DV, H, REP,
                                      scale: tl.float64, W1, W2, CAUSAL: tl.constexpr, F64: tl.constexpr,
                                      HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                      BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, C2,
                                      FIX: tl.constexpr = False, CH: tl.constexpr = False):
    """Gradients of the first key set (k1, v1) for one first key j and one key head, with the scores formed
    as the forward forms them: S = (Q (.) k1_j) K2_tile^T (_chunked_scores, the forward's operands and
    chunks), so P = exp(S - lse) is normalised by the lse of the very scores it is recomputed from.

    The swapped dkv kernel formed (Q (.) k2_k) K1_tile^T instead: the same numbers rounded differently, whose
    difference exp() turns into relative errors of P that do not cancel against the forward's lse (large
    logits: dv1 2-3x the eager reference's error in float32/float16; session 31).  Per query tile:
    dV1_j += sum_rows dout (.) (P V2), dK1_j += s sum_rows q (.) (dS K2), the two dots accumulated over the
    second-key tiles in float32 (float16/bfloat16: P and dS rounded to the input dtype, V2 / K2 as stored).
    C2 (CAUSAL): as the forward's: a (k2, v2) tile with a non-finite row is left out (read as 0) and FIX (the
    fix-up launch, after the common one; a key head without such a row exits at once) adds its products into
    DK1 / DV1 with _masked_dot; the dout / q rows that may not see j are read as 0 (pv, dsk are 0 there).  CH (FIX
    only): the columns [c BLOCK_D, (c + 1) BLOCK_D) of dk1 and [c BLOCK_DV, (c + 1) BLOCK_DV) of dv1 for
    c = program_id(2) (_head_chunks), the scores over the whole D, DV."""
    j = tl.program_id(0).to(tl.int64)  # 64-bit before any arithmetic
    kvh = tl.program_id(1).to(tl.int64)
    HK = H // REP
    b = kvh // HK
    hk = kvh % HK
    ct = tl.float64 if F64 else tl.float32
    if not F64:
        scale = tl.cast(scale, ct)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_DV)
    if CH:
        offs_d += tl.program_id(2).to(tl.int64) * BLOCK_D
        offs_e += tl.program_id(2).to(tl.int64) * BLOCK_DV
    dmask = offs_d < D
    emask = offs_e < DV
    k1j = K1 + (kvh * M1 + j) * D
    v1j = V1 + (kvh * M1 + j) * DV
    k2_base = K2 + kvh * M2 * D
    v2_base = V2 + kvh * M2 * DV
    dk = tl.zeros([BLOCK_D], ct)
    dv = tl.zeros([BLOCK_DV], ct)
    i_lo, i_hi = _seeing_queries(j, j, W1, N, CAUSAL, BLOCK_M)  # the queries that see key j
    if FIX:  # nothing to add for this key head
        i_hi = tl.where(_bad_rows(C2, kvh * (M2 + 1), 0, M2), i_hi, i_lo)
    for hq in range(0, REP):
        bh = b * H + hk * REP + hq
        for i0 in range(i_lo, i_hi, BLOCK_M):
            offs_m, row_ok, q_rows, do_rows, delta, live, lse_safe = _key_side_rows(Q, DO, LSE, DELTA, bh, i0, N, D, DV,
                                                                                    ct, BLOCK_M)
            lo1, hi1 = _ranges(offs_m, N, M1, W1, CAUSAL)
            lo2, hi2 = _ranges(offs_m, N, M2, W2, CAUSAL)
            jok = live & (j >= lo1) & (j <= hi1)
            k_start = tl.where(W2 > 0, tl.maximum(i0 - W2 + 1, 0), 0)
            if CAUSAL:
                k_end = tl.minimum(tl.minimum(i0 + BLOCK_M, N), M2)
            else:
                k_end = M2
            pv = tl.zeros([BLOCK_M, BLOCK_DV], ct)
            dsk = tl.zeros([BLOCK_M, BLOCK_D], ct)
            for k0 in range(k_start, k_end, BLOCK_N):
                offs_n = k0 + tl.arange(0, BLOCK_N)
                nmask = offs_n < M2
                s = _chunked_scores(q_rows, scale, k1j, k2_base + offs_n * D, row_ok, nmask, D, ct, HALF,
                                    BLOCK_M, BLOCK_N, BLOCK_K)
                dp = _chunked_scores(do_rows, 1.0, v1j, v2_base + offs_n * DV, row_ok, nmask, DV, ct, HALF,
                                     BLOCK_M, BLOCK_N, BLOCK_K)
                ok = jok[:, None] & nmask[None, :] & (offs_n[None, :] >= lo2[:, None]) & (offs_n[None, :] <= hi2[:, None])
                p = tl.where(ok, tl.exp(s - lse_safe[:, None]), 0.0)
                ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)  # masked: 0, also for a NaN delta (as eager's)
                if FIX:  # the flagged tiles only: no masked (zero) P / dS entry times the inf / NaN
                    if _bad_rows(C2, kvh * (M2 + 1), k0, tl.minimum(k0 + BLOCK_N, M2)):
                        pv = _masked_dot(pv, p, ok, v2_base, k0, M2, tl.full([BLOCK_DV], 1.0, ct), DV, offs_e, ct,
                                         BLOCK_M, BLOCK_N)
                        dsk = _masked_dot(dsk, ds, ok, k2_base, k0, M2, tl.full([BLOCK_D], 1.0, ct), D, offs_d, ct,
                                          BLOCK_M, BLOCK_N)
                else:
                    vmask = nmask[:, None] & emask[None, :]
                    kmask = nmask[:, None] & dmask[None, :]
                    if CAUSAL:  # a non-finite k2 / v2 row in the tile: the tile read as 0 (its products: the fix-up)
                        n_ok = offs_n < _clean_bound(C2, kvh * (M2 + 1), k0, tl.minimum(k0 + BLOCK_N, M2), M2)
                        vmask = n_ok[:, None] & emask[None, :]
                        kmask = n_ok[:, None] & dmask[None, :]
                    v2 = tl.load(v2_base + offs_n[:, None] * DV + offs_e[None, :], mask=vmask, other=0.0)
                    k2 = tl.load(k2_base + offs_n[:, None] * D + offs_d[None, :], mask=kmask, other=0.0)
                    if HALF:
                        pv += tl.dot(p.to(v2.dtype), v2)
                        f, inv = _half_fit(ds, 1, k2.dtype)
                        dsk += tl.dot((ds * f[:, None]).to(k2.dtype), k2) * inv[:, None]
                    else:
                        pv += tl.dot(p, v2.to(ct), input_precision="ieee")
                        dsk += tl.dot(ds, k2.to(ct), input_precision="ieee")
            if CAUSAL:  # rows that may not see j read as 0 (pv, dsk are 0 there: no 0 * inf from a dout / q row)
                g_ok = jok
            else:
                g_ok = row_ok
            g = tl.load(do_rows[:, None] + offs_e[None, :], mask=g_ok[:, None] & emask[None, :], other=0.0).to(ct)
            qs = tl.load(q_rows[:, None] + offs_d[None, :], mask=g_ok[:, None] & dmask[None, :], other=0.0).to(ct)
            dv += tl.sum(g * pv, 0)
            dk += tl.sum(qs * dsk, 0)
    if FIX:  # added to the common kernel's gradients
        dk = tl.load(DK1 + (kvh * M1 + j) * D + offs_d, mask=dmask, other=0.0).to(ct) + dk * scale
        dv += tl.load(DV1 + (kvh * M1 + j) * DV + offs_e, mask=emask, other=0.0).to(ct)
        tl.store(DK1 + (kvh * M1 + j) * D + offs_d, dk.to(DK1.dtype.element_ty), mask=dmask)
        tl.store(DV1 + (kvh * M1 + j) * DV + offs_e, dv.to(DV1.dtype.element_ty), mask=emask)
    else:
        tl.store(DK1 + (kvh * M1 + j) * D + offs_d, (dk * scale).to(DK1.dtype.element_ty), mask=dmask)
        tl.store(DV1 + (kvh * M1 + j) * DV + offs_e, dv.to(DV1.dtype.element_ty), mask=emask)


INTERPRETED = type(_triple_attention_fwd_kernel).__name__ == "InterpretedFunction"
if INTERPRETED:
    _fix_interpreter_bf16_dot()


def _device_guard(t: torch.Tensor):
    """Make t's CUDA device current for the launches (Triton launches on the current device and stream)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _blocks(D: int, DV: int, dtype: torch.dtype, bwd: bool = False, causal: bool = False) -> dict:
    """Launch configuration per dtype and head dims (forward, or the backward's dq/dkv kernels): what a GPU
    launch uses (also what the compile check compiles), or the interpreter's.  The one place it is chosen.

    Every dtype walks the score/dp dots over the head dim in BLOCK_K = 16 chunks (_chunked_scores), and
    compiles with maxnreg=255 (without it ptxas capped some kernels at 128/168 registers and spilled).
    float32 (exact FMA dots, whose registers grow with K): 32 query x 16 key tiles (K of the P V and dS K2
    dots = 16), 8 warps from head dim 128 on (4 spilled 2.4 KB in the dkv kernel at D = 128).  float64:
    32 x 32, 16 x 16 from head dim 128 (a 32 x 32 dkv kernel took 192 KB of shared memory with Triton 3.6
    on sm_80), one pipeline stage (three took 173-197 KB at D = 128, over sm_80's 163 KB per block).
    float16/bfloat16 (tensor-core dots): 64 x 64 in the forward up to head dim 64, 32 x 32 otherwise (64 x 64
    spilled 0.5-1.3 KB in the backward and ~0.1 KB in the forward at D = 128).

    causal (a causal / window launch: its kernels carry the per-tile non-finite test and the fix-ups): float64 at
    head dim 64 (32 x 32 tiles) takes 8 warps (4 spilled 104 B in the forward, 112 B in the dkv kernel and 48 B in
    the dq fix-up with Triton 3.6 on sm_90; session 50); the launches that narrow those tiles to 16 x 16 set 4
    warps again.

    Head dims over 128 (not in the compile check's _COMPILE_DIMS): 16 x 16 tiles for every dtype, 8 warps (4 for
    the half types): at head dim 256 the tiles above spilled in 16-21 of 49 kernels per column (up to 1 KB, the
    dkv kernels most); now none does, the backward's causal fix-ups walking the head dims in chunks (_head_chunks;
    session 51)."""
    bd = max(16, triton.next_power_of_2(max(D, 1)))
    be = max(16, triton.next_power_of_2(max(DV, 1)))
    if INTERPRETED:  # the interpreter: smallest legal dot tiles (head dims > 16 take the chunked path)
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_D=bd, BLOCK_DV=be)
    wide = max(bd, be)
    if dtype in (torch.float16, torch.bfloat16):
        bm = bn = 64 if not bwd and wide <= 64 else 32
    elif dtype == torch.float64:
        bm = bn = 16 if wide >= 128 else 32
    else:
        bm, bn = 32, 16
    warps = 8 if (dtype == torch.float32 and wide >= 128) or (causal and dtype == torch.float64 and wide == 64) else 4
    if wide > 128:  # head dims over 128: 16 x 16 tiles (a tile's rows span the head dim), 8 warps but in half types
        bm = bn = 16
        warps = 4 if dtype in (torch.float16, torch.bfloat16) else 8
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=16, BLOCK_D=bd, BLOCK_DV=be, num_warps=warps, maxnreg=255,
                **({"num_stages": 1} if dtype == torch.float64 else {}))


# head-dim chunk of the backward fix-ups (CH) over head dims over 128: each program adds one chunk of the
# gradients' columns, its scores recomputed over the whole head dims (at head dim 256 the whole-width fix-ups
# spilled up to 1.8 KB; float64's dkv fix-up still 140 B in chunks of 64 with Triton 3.6 on sm_90; session 51)
_FIX_CHUNK = {torch.float64: 32}


def _head_chunks(blk: dict, grid: tuple, dtype: torch.dtype, D: int, DV: int) -> tuple:
    """(blk, grid) of a backward fix-up launch (FIX=True): unchanged up to head dim 128; over it, BLOCK_D and
    BLOCK_DV narrowed to the chunk (_FIX_CHUNK, 64 by default), CH=True and a third grid axis over the chunks of
    max(D, DV) (program_id(2); a chunk past D or DV adds nothing there)."""
    if max(blk["BLOCK_D"], blk["BLOCK_DV"]) <= 128:
        return blk, grid
    ch = _FIX_CHUNK.get(dtype, 64)
    return (dict(blk, BLOCK_D=min(blk["BLOCK_D"], ch), BLOCK_DV=min(blk["BLOCK_DV"], ch), CH=True),
            grid + (triton.cdiv(max(D, DV), ch),))


def _flags(dtype: torch.dtype) -> dict:
    return dict(F64=dtype == torch.float64, HALF=dtype in (torch.float16, torch.bfloat16))


def _split_count(programs: int, first_keys: int, device: torch.device) -> int:
    """How many programs split a kernel's loop over the first keys (the forward, dq and dkv kernels): 1 (no
    split) unless the grid has fewer than twice the GPU's multiprocessors, then enough splits to reach that, each
    with >= 4 first keys.  GEOOPS_ATTN_TRITON_SPLIT (read per call): 0 never splits, a number n > 0 forces n
    splits (also in the interpreter, which has no multiprocessor count and otherwise never splits)."""
    knob = os.environ.get("GEOOPS_ATTN_TRITON_SPLIT", "").strip()
    if knob[:1] == "0" or first_keys <= 1:
        return 1
    if knob.isdigit():
        return max(1, min(int(knob), first_keys))
    n = None if INTERPRETED else sm_count(device)
    if n is None:
        return 1
    target = 2 * n
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(first_keys, 4)))


def _splits(programs: int, first_keys: int, device: torch.device):
    """(S, JS): S splits of JS first keys each (the last may be shorter; none empty), or (1, 0)."""
    S = _split_count(programs, first_keys, device)
    if S <= 1:
        return 1, 0
    js = triton.cdiv(first_keys, S)
    return triton.cdiv(first_keys, js), js


def _nonfinite_prefix(causal, *ts):
    """Prefix counts (int32, (B x heads) x (M + 1)) of the rows (dim 2) where any of ts (same B, heads, M) holds an inf
    or NaN: the kernels' per-tile test whether a masked product could meet one (_bad_rows).  Dense (not causal): no
    pair is masked, nothing to test; a placeholder.  A few elementwise passes over the inputs, no host sync."""
    if not causal:
        return torch.zeros(1, dtype=torch.int32, device=ts[0].device)
    bad = None
    for t in ts:
        b = ~torch.isfinite(t).all(-1)
        bad = b if bad is None else bad | b
    c = torch.zeros((bad.shape[0] * bad.shape[1], bad.shape[2] + 1), dtype=torch.int32, device=bad.device)
    torch.cumsum(bad.reshape(c.shape[0], -1), 1, out=c[:, 1:])
    return c


def _triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2, dout=None):
    """(out, lse); with dout (float16/bfloat16 backward): (delta, lse) instead, delta float32 (B, H, N), lse unset."""
    q, k1, k2, v1, v2 = (t.contiguous() for t in (q, k1, k2, v1, v2))
    B, H, N, D = q.shape
    Hk, M1, M2, DV = k1.shape[1], k1.shape[2], k2.shape[2], v1.shape[3]
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if dout is None:
        out = torch.empty((B, H, N, DV), dtype=q.dtype, device=q.device)
    else:
        out = torch.zeros((B, H, N), dtype=torch.float32, device=q.device)
    lse = torch.empty((B, H, N), dtype=lse_dtype, device=q.device)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    causal = bool(causal) or w1 > 0 or w2 > 0
    blk = _blocks(D, DV, q.dtype, causal=causal)
    grid = (triton.cdiv(N, blk["BLOCK_M"]), B * H)
    if N == 0 or B * H == 0:
        return out, lse
    S, js = _splits(grid[0] * grid[1], M1, q.device) if dout is None else (1, 0)
    c1, c2 = _nonfinite_prefix(causal and dout is None, k1, v1), _nonfinite_prefix(causal and dout is None, k2, v2)
    if S > 1:  # few programs (small B H): the first keys split across programs, merged by the combine kernel
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        sblk, sgrid = blk, grid
        if q.dtype == torch.float64 and not INTERPRETED:  # 32 x 32 float64 tiles spilled 96-120 B split (sm_90)
            sblk = dict(blk, BLOCK_M=16, BLOCK_N=16, num_warps=4)
            sgrid = (triton.cdiv(N, 16), B * H)
        po = torch.empty((S, B * H, N, DV), dtype=acc, device=q.device)
        pml = torch.empty((S, B * H, N, 2), dtype=acc, device=q.device)
        _triple_attention_fwd_kernel[sgrid + (S,)](q, k1, k2, v1, v2, po, pml, N, M1, M2, D, DV, H, H // Hk,
                                                   float(scale), int(w1), int(w2), CAUSAL=causal, **_flags(q.dtype),
                                                   **sblk, DO=q, DELTA=False, C1=c1, C2=c2, JS=js, SPLIT=True)
        _triple_attention_combine_kernel[sgrid](po, pml, out, lse, S, N, DV, F64=q.dtype == torch.float64,
                                                BLOCK_M=sblk["BLOCK_M"], BLOCK_DV=sblk["BLOCK_DV"], num_warps=4)
    else:
        _triple_attention_fwd_kernel[grid](q, k1, k2, v1, v2, out, lse, N, M1, M2, D, DV, H, H // Hk, float(scale),
                                           int(w1), int(w2), CAUSAL=causal, **_flags(q.dtype), **blk,
                                           DO=q if dout is None else dout.contiguous(), DELTA=dout is not None,
                                           C1=c1, C2=c2)
    if causal and dout is None:  # the fix-up: the tiles left out for a non-finite row (exits at once where none)
        _triple_attention_fwd_kernel[grid](q, k1, k2, v1, v2, out, lse, N, M1, M2, D, DV, H, H // Hk, float(scale),
                                           int(w1), int(w2), CAUSAL=True, **_flags(q.dtype), **blk, DO=q,
                                           DELTA=False, C1=c1, C2=c2, FIX=True)
    return out, lse


def _triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
    q, k1, k2, v1, v2, dout = (t.contiguous() for t in (q, k1, k2, v1, v2, dout))
    B, H, N, D = q.shape
    Hk, M1, M2, DV = k1.shape[1], k1.shape[2], k2.shape[2], v1.shape[3]
    causal = bool(causal) or w1 > 0 or w2 > 0
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if q.dtype in (torch.float16, torch.bfloat16):  # delta = sum P dP with the kernels' rounding of dP
        delta, _ = _triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2, dout=dout)
    else:
        delta = (dout.to(acc) * out.to(acc)).sum(-1).contiguous()
    lse = lse.to(acc).contiguous()
    dq = torch.empty_like(q)
    dk1, dk2, dv1, dv2 = (torch.empty_like(t) for t in (k1, k2, v1, v2))
    blk = _blocks(D, DV, q.dtype, bwd=True, causal=causal)
    fl = _flags(q.dtype)
    c1, c2, cq = (_nonfinite_prefix(causal, *ts) for ts in ((k1, v1), (k2, v2), (q, dout)))
    # the causal dq kernel of the half types from head dim 128 on: 8 warps (4 spilled 44 B in float16 with Triton
    # 3.6 on sm_90; its fix-up keeps 4)
    qblk = dict(blk, num_warps=8) if causal and fl["HALF"] and max(blk["BLOCK_D"], blk["BLOCK_DV"]) >= 128 else blk
    if q.numel():
        grid = (triton.cdiv(N, blk["BLOCK_M"]), B * H)
        S, js = _splits(grid[0] * grid[1], M1, q.device)
        if S > 1:  # partial dq per split of the first keys, summed in split order
            dqp = torch.empty((S,) + tuple(q.shape), dtype=acc, device=q.device)
            _triple_attention_bwd_dq_kernel[grid + (S,)](q, k1, k2, v1, v2, dout, lse, delta, dqp, N, M1, M2, D, DV,
                                                         H, H // Hk, float(scale), int(w1), int(w2), CAUSAL=causal,
                                                         **fl, **qblk, C1=c1, C2=c2, JS=js, SPLIT=True)
            dq = dqp.sum(0).to(q.dtype)
        else:
            _triple_attention_bwd_dq_kernel[grid](q, k1, k2, v1, v2, dout, lse, delta, dq, N, M1, M2, D, DV, H,
                                                  H // Hk, float(scale), int(w1), int(w2), CAUSAL=causal, **fl, **qblk,
                                                  C1=c1, C2=c2)
        if causal:  # the fix-up: the tiles left out for a non-finite row (exits at once where none)
            xblk, xgrid = _head_chunks(blk, grid, q.dtype, D, DV)
            _triple_attention_bwd_dq_kernel[xgrid](q, k1, k2, v1, v2, dout, lse, delta, dq, N, M1, M2, D, DV, H,
                                                   H // Hk, float(scale), int(w1), int(w2), CAUSAL=True, **fl, **xblk,
                                                   C1=c1, C2=c2, FIX=True)
    else:
        dq.zero_()
    sets = [(k1, k2, v1, v2, dk2, dv2, M1, M2, w1, w2, c1)]
    # k1's gradients: float64 and GEOOPS_ATTN_TRITON_DKV1=0 (README knob table, read per call) by the swapped
    # dkv kernel; otherwise in the forward's orientation (_triple_attention_bwd_dkv1_kernel)
    if q.dtype == torch.float64 or os.environ.get("GEOOPS_ATTN_TRITON_DKV1", "")[:1] == "0":
        sets.append((k2, k1, v2, v1, dk1, dv1, M2, M1, w2, w1, c2))
    elif dk1.numel() or dv1.numel():
        # the half types from head dim 128 on: 8 warps (4 spilled 24-28 B on sm_80 in the compile check)
        blk1 = dict(blk, num_warps=8) if fl["HALF"] and max(blk["BLOCK_D"], blk["BLOCK_DV"]) >= 128 else blk
        _triple_attention_bwd_dkv1_kernel[(M1, B * Hk)](q, k1, k2, v1, v2, dout, lse, delta, dk1, dv1, N, M1, M2, D,
                                                        DV, H, H // Hk, float(scale), int(w1), int(w2),
                                                        CAUSAL=causal, **fl, **blk1, C2=c2)
        if causal:  # the fix-up (exits at once where no k2 / v2 row is non-finite), at 8 warps (4: 16 B spilled at
            # D = 64 on sm_80), 16-row query tiles for the half types from head dim 128 (32: 8-48 B, Triton 3.6 sm_80)
            fblk = dict(blk1, num_warps=8)
            if fl["HALF"] and max(blk["BLOCK_D"], blk["BLOCK_DV"]) >= 128 and not INTERPRETED:
                fblk["BLOCK_M"] = 16
            fblk, fgrid = _head_chunks(fblk, (M1, B * Hk), q.dtype, D, DV)
            _triple_attention_bwd_dkv1_kernel[fgrid](q, k1, k2, v1, v2, dout, lse, delta, dk1, dv1, N, M1, M2,
                                                     D, DV, H, H // Hk, float(scale), int(w1), int(w2),
                                                     CAUSAL=True, **fl, **fblk, C2=c2, FIX=True)
    # the float16 dkv kernel (not split) from head dim 128 on: 8 warps (4 spilled 24-60 B once dout (.) v_a's rows
    # were scaled into float16's range too; session 51)
    kblk = dict(blk, num_warps=8) if q.dtype == torch.float16 and max(blk["BLOCK_D"], blk["BLOCK_DV"]) >= 128 else blk
    for ka, kb, va, vb, dkb, dvb, Ma, Mb, wa, wb, ca in sets:
        if dkb.numel() == 0 and dvb.numel() == 0:
            continue
        grid = (triton.cdiv(Mb, blk["BLOCK_N"]), B * Hk)
        S, js = _splits(grid[0] * grid[1], Ma, q.device)
        if S > 1:  # partial gradients per split of the first keys (set A), summed in split order
            pk = torch.empty((S,) + tuple(kb.shape), dtype=acc, device=q.device)
            pv = torch.empty((S,) + tuple(vb.shape), dtype=acc, device=q.device)
            _triple_attention_bwd_dkv_kernel[grid + (S,)](q, ka, kb, va, vb, dout, lse, delta, pk, pv, N, Ma, Mb, D,
                                                          DV, H, H // Hk, float(scale), int(wa), int(wb),
                                                          CAUSAL=causal, **fl, **blk, CA=ca, CQ=cq, JS=js,
                                                          SPLIT=True)
            dkb.copy_(pk.sum(0))
            dvb.copy_(pv.sum(0))
        else:
            _triple_attention_bwd_dkv_kernel[grid](q, ka, kb, va, vb, dout, lse, delta, dkb, dvb, N, Ma, Mb, D, DV,
                                                   H, H // Hk, float(scale), int(wa), int(wb), CAUSAL=causal, **fl,
                                                   **kblk, CA=ca, CQ=cq)
        if causal:  # the fix-up: the (query tile, j) left out for a non-finite row (exits at once where none)
            fblk, fgrid = blk, grid
            if q.dtype == torch.float64 and not INTERPRETED and blk["BLOCK_N"] > 16:  # 32 x 32 float64 tiles
                fblk = dict(blk, BLOCK_M=16, BLOCK_N=16, num_warps=4)  # spilled 132 B (sm_90, D = 64)
                fgrid = (triton.cdiv(Mb, 16), B * Hk)
            elif fl["HALF"] and max(blk["BLOCK_D"], blk["BLOCK_DV"]) > 128:  # head dims over 128: 8 warps (4 spilled
                fblk = dict(blk, num_warps=8)  # 20 B in float16 on Triton 3.9 sm_80)
            fblk, fgrid = _head_chunks(fblk, fgrid, q.dtype, D, DV)
            _triple_attention_bwd_dkv_kernel[fgrid](q, ka, kb, va, vb, dout, lse, delta, dkb, dvb, N, Ma, Mb, D, DV,
                                                    H, H // Hk, float(scale), int(wa), int(wb), CAUSAL=True, **fl,
                                                    **fblk, CA=ca, CQ=cq, FIX=True)
    return dq, dk1, dk2, dv1, dv2


# the kernel-set contract of geoops._ops.attention (launched on q's device: see _device_guard)
def triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2):
    with _device_guard(q):
        return _triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2)


def triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
    with _device_guard(q):
        return _triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2)


# ---------------------------------------------------------------- compile check (.ci/triton_compile_check.py)
COMPILE_NOTES = """\
No spill in any float32, float16 or bfloat16 variant, on any column (the hook allows none: a spill there fails
the check).  Exact float32 dots (input_precision="ieee", never TF32) lower to FMA loops whose registers grow
with the dot's K, so the score and dp dots walk the head dim in BLOCK_K = 16 chunks (_chunked_scores) and
float32 uses 32 x 16 tiles (K = 16 in the P V and dS K2 dots), 8 warps from head dim 128 on; float16/bfloat16
use 32 x 32 tiles except the forward up to head dim 64 (64 x 64).  Every kernel compiles with maxnreg=255:
left to itself ptxas aimed at 128-168 registers and spilled.  Before (main, 2026-11-30): 46-59 of 84
kernels per column spilled, up to 2-5 KB.  float64 (one pipeline stage; 16 x 16 tiles from head dim 128,
32 x 32 below): 32 B (16 B stores + 16 B loads) in the dense D = 64 forward with Triton 3.6 on sm_90 only, at
255 registers: the 32 x 32 float64 tiles' accumulator and online-softmax state; allowed up to 64 B
(_SPILL_ALLOWANCE).  Causal launches (the per-tile non-finite test and the fix-up kernels, session 49) run
float64 at head dim 64 (32 x 32 tiles) and the float16/bfloat16 dq kernel from head dim 128 at 8 warps (at 4,
Triton 3.6 on sm_90 spilled 104-112 B in the float64 D = 64 forward and dkv kernels and 44 B in the float16
D = 128 dq kernel; session 50); the float64 D = 128 dkv fix-up (16 x 16 tiles) keeps 20 B (12 B stores + 8 B
loads) there.  The float16 dkv kernel (not split) runs 8 warps from head dim 128 (at 4 it spilled 24-60 B once
dout (.) v_a's rows were scaled into float16's range as q (.) k_a's; session 51).  Head dim 256: 16 x 16 tiles
(8 warps, the half types 4), and the backward's causal fix-ups add their gradients in head-dim chunks of 64
(float64 32; whole [16, 256] tiles spilled up to 1.8 KB; session 51)."""
# Head dims whose block configurations differ: 16 (the smallest tile), 64 (the usual one), 128 (the
# widest tile with 64-row float16/bfloat16 blocks; wider heads take 32-row blocks like float32) and 256 (head
# dims over 128: 16 x 16 tiles, the backward fix-ups in head-dim chunks; session 51).  Sequence lengths are not
# multiples of 16 (Triton would specialise those: same code, fewer masks).
_COMPILE_DIMS = (16, 64, 128, 256)
# spill bytes (stores + loads) tolerated per dtype: none, except float64's (explained in COMPILE_NOTES)
_SPILL_ALLOWANCE = {torch.float32: 0, torch.float16: 0, torch.bfloat16: 0, torch.float64: 64}


def compile_variants():
    """Every Triton variant the launchers can run, for the CI compile check (see kernels/__init__.py).

    Per dtype (float32, float64, float16, bfloat16) x masking (full, causal; a window is the causal
    binary with run-time bounds) x head dim of _COMPILE_DIMS: the forward, and the backward (its dq
    kernel, the dkv kernel(s) and the dkv1 kernel, and for the half types the DELTA-mode forward it
    recomputes delta with).  Expectations: 64-bit program-id arithmetic, IEEE float32 division, no
    spill in float32/float16/bfloat16 (a spill there fails the check), float64 up to _SPILL_ALLOWANCE
    bytes (explained in COMPILE_NOTES).
    """
    entries = []
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        dname = str(dtype).replace("torch.", "")
        for causal in (False, True):
            for D in _COMPILE_DIMS:
                q = torch.zeros(1, 2, 37, D, dtype=dtype)
                kv = torch.zeros(1, 1, 37, D, dtype=dtype)
                lse = torch.zeros(1, 2, 37, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
                mode = "causal" if causal else "full"
                expect = {"index64": True, "ieee_div": True, "max_spill_bytes": _SPILL_ALLOWANCE[dtype]}

                def fwd(q=q, kv=kv, causal=causal):
                    _triple_attention_fwd(q, kv, kv, kv, kv, 0.125, causal, 0, 0)

                def bwd(q=q, kv=kv, lse=lse, causal=causal):
                    _triple_attention_bwd(q, q, kv, kv, kv, kv, q, lse, 0.125, causal, 0, 0)

                entries.append({"label": f"{dname}/{mode}/D{D} fwd", "launch": fwd, "expect": expect})
                entries.append({"label": f"{dname}/{mode}/D{D} bwd", "launch": bwd, "expect": expect})
                if D == 64:  # the split binaries (SPLIT=True, and the combine kernel) at the usual head dim
                    entries.append({"label": f"{dname}/{mode}/D{D} fwd split", "launch": _forced_splits(fwd),
                                    "expect": expect})
                    entries.append({"label": f"{dname}/{mode}/D{D} bwd split", "launch": _forced_splits(bwd),
                                    "expect": expect})
    return entries


def _forced_splits(launch, n: int = 3):
    """`launch` run with GEOOPS_ATTN_TRITON_SPLIT=n (the split kernels on a machine without a GPU)."""
    return lambda: with_env("GEOOPS_ATTN_TRITON_SPLIT", str(n), launch)
