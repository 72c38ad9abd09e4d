"""Triton kernels of the diagonal SSM family (forward and backward).

Installed as ``geoops.kernels.ssm``; ``geoops._backend`` uses it for CUDA tensors, and for CPU tensors
under the Triton interpreter (``TRITON_INTERPRET=1``).  It implements the contract of
``geoops._ops.ssm`` (the same one as the C++ kernels)::

    vandermonde_fwd(v, x, L, out64) -> K (C, H, L)
    vandermonde_bwd(g, v, x, mask) -> (dv, dx)
    fftconv_fwd(u, k, D, save_uf) -> (y, uf)
    fftconv_bwd(g, u, uf, k, D, mask) -> (du, dk, dD)
    ssm_discretize_fwd / ssm_discretize_bwd (O(H N) float64 kernels, closed-form chain rule)
    ssm_conv_fwd(u, v, x, D, save_uf) -> (y, kf, uf);  ssm_conv_bwd(g, u, uf, kf, v, x, D, mask)

Vandermonde.  As on CPU, l = j T + i with T ~ sqrt(L): the small factors P = exp(x j T) (J per mode) and
Q = exp(x i) (T per mode) are computed in float64 (exact products x*m, then exp / cos / sin in float64,
O(H N sqrt L)), rounded to the output precision, and the (J x 2N) . (2N x T) real products run in
``_bmm_kernel`` (tl.dot in IEEE fp32 -- TF32 operands lose ~4e-4 at L = 64K, so not TF32 -- or fp64).
Since session 32 one launch of ``_fwd_factors_kernel`` writes both GEMM operands W = [2 Re, -2 Im](v P) and
Z = [Re; Im] Q (each exp / cos / sin evaluated once; forming them inside the GEMM's K-loop instead would
recompute Z's tile per M-tile and W's per N-tile, J/BM resp. T/BN = 4x the float64 transcendental work at
L = 16K, which costs as much as the GEMM itself), so a forward is 2 launches (3 with the discretisation
kernel) and a handful of allocations instead of ~50 torch ops.  The backward's (J x T) . (T x 4N) product
runs in the same GEMM kernel on Z from ``_bwd_factors_kernel``; the sums over j (and over the channels for
dx) in float64 in ``_bwd_reduce_kernel``.  The discretisation (``_zoh_fwd_kernel``, ``_bilinear_fwd_kernel``,
``_disc_bwd_kernel``) is float64 arithmetic by hand: Kahan's expm1 / log1p, Smith's complex division, and an
atan2 from a table of atan(k/8) plus an odd series (float64 constants through ``_f64``: a bare Python float
may become a float32 constant, as it did in a tl.where between two literals; 0.5, 2, 4 etc. are exact anyway).  GEOOPS_SSM_TRITON_FUSED_FACTORS=0 (read per call) restores the torch
factors and discretisation in complex128.

FFT convolution.  The FFTs are torch's (cuFFT), of size n = fft_size(L) (2-3-5 size >= 2L - 1); the spectral product (with the channel broadcast),
the truncation + skip term + output cast, and the backward's channel / batch sums of conjugate products
(summed before the inverse FFT) are fused Triton kernels ``_spec_mul_kernel``, ``_trunc_skip_kernel`` and
``_conj_sum_kernel``; dD of float32 inputs, a compensated float32 sum, ``_dd_kernel``.  Offsets are 64-bit.  ssm_conv's forward is fused: the Vandermonde GEMM kernel stores
K straight into the zero-padded circular buffer that the kernel's FFT reads (no K tensor, no pad copy); its
backward composes the pieces (dK from the batch-summed spectrum, then the Vandermonde backward).
Half u with 2L - 1 <= 32768 (session 34) skips the FFTs: ``_monarch_conv_kernel`` convolves two rows of a
channel at once through four small DFT matrix products on tensor cores, nothing but u and y in memory (N >= 8192:
``_monarch_rows_kernel`` + ``_monarch_cols_kernel`` through a bounded float32 scratch), the backward's du
for one output channel and (L <= 2048, half k) its dk, ``_monarch_corr_kernel``; GEOOPS_SSM_TRITON_MONARCH=0
(read per call) keeps cuFFT.  The two rows of a pair enter scaled to their own binade (``_pair_row_scale``,
session 35): each row's rounding is relative to its own scale, and a non-finite row stays in its row.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ..reference.ssm import discretize_log, expm1c, fft_size
from ..reference.ssm import vandermonde_blocking as _blocking
from . import with_env

__all__ = ["vandermonde_fwd", "vandermonde_bwd", "fftconv_fwd", "fftconv_bwd", "ssm_discretize_fwd",
           "ssm_discretize_bwd", "ssm_conv_fwd", "ssm_conv_bwd", "fftconv_saves_uf", "compile_variants"]


# ---------------------------------------------------------------- batched GEMM
@triton.jit
def _bmm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, b_mod, c_off, LIM,
                sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    """c[p] = a[p] @ b[p % b_mod] for batch p = program_id(2), element (m, n) stored at
    c_ptr + c_off + p*scb + m*scm + n*scn (strides may be negative) only where m*N + n < LIM."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(2).to(tl.int64)
    pb = p % b_mod
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # 64-bit: the row offsets below never wrap
    rk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + p * sab
    b_base = b_ptr + pb * sbb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if IEEE else tl.float64)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None] * sam + kk[None, :] * sak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_base + kk[:, None].to(tl.int64) * sbk + rn[None, :] * sbn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:  # float64: no tensor-core path
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    c = c_ptr + c_off + p * scb + rm[:, None] * scm + rn[None, :] * scn
    keep = (rm[:, None] < M) & (rn[None, :] < N) & (rm[:, None] * N + rn[None, :] < LIM)
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=keep)


def _bmm(a: torch.Tensor, b: torch.Tensor, b_mod: int, into=None) -> torch.Tensor:
    """(P, M, K) @ (Q, K, N) with b's batch index p % b_mod.

    ``into=(buf, offset, (scb, scm, scn), lim)`` stores element (p, m, n) at buf's flat ``offset + p*scb + m*scm +
    n*scn`` (negative strides allowed: the fused ssm_conv writes the anti-causal kernel reversed) where
    ``m*N + n < lim``, and returns buf; K must be > 0 there (the caller zero-fills buf)."""
    P, M, K = a.shape
    N = b.shape[2]
    if into is None:
        c = torch.empty((P, M, N), device=a.device, dtype=a.dtype)
        off, (scb, scm, scn), lim = 0, c.stride(), M * N
        if P == 0 or M == 0 or N == 0:
            return c
        if K == 0:
            return c.zero_()
    else:
        c, off, (scb, scm, scn), lim = into
        if P == 0 or M == 0 or N == 0 or K == 0 or lim <= 0:
            return c
    ieee = a.dtype == torch.float32
    BM, BN = (32, 32) if ieee else (16, 16)
    BK = 16 if ieee else 8
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), P)
    _bmm_kernel[grid](a, b, c, M, N, K, b_mod, off, lim, a.stride(0), a.stride(1), a.stride(2), b.stride(0),
                      b.stride(1), b.stride(2), scb, scm, scn, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, IEEE=ieee)
    return c

# ---------------------------------------------------------------- the Vandermonde factors in one launch each
@triton.jit
def _cexp64(a, b, m):
    """(Re, Im) of exp((a + i b) m) in float64 from the exact products a*m, b*m (m float64, >= 0).  a = -inf (a
    mode with Abar = 0: the bilinear pole) enters as -1e300, so that exp(a * 0) = 1 and exp(a m) = 0 for m >= 1
    (-inf * 0 would give NaN); a NaN a stays NaN.  Clamping a (a column of modes) costs less than a select on
    the (modes x positions) products (which spilled in the sm_80 backward kernels)."""
    a = tl.where(a < -1e300, -1e300, a)
    e = tl.exp(a * m)
    t = b * m
    return e * tl.cos(t), e * tl.sin(t)


@triton.jit
def _fwd_factors_kernel(x_ptr, v_ptr, w_ptr, z_ptr, H, N, T, J,
                        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """The forward GEMM's operands from x (H, N, 2) and v (C*H, N, 2) (float64 re/im pairs):
    W[p, j, n] = 2 Re(v_n exp(x_n j T)), W[p, j, N + n] = -2 Im(...) (p = c*H + h, (C*H, J, 2N));
    Z[h, n, i] = Re exp(x_n i), Z[h, N + n, i] = Im exp(x_n i) ((H, 2N, T), written by the c = 0 programs).
    Program (p, position tile, mode tile); float64 math, rounded to the outputs' dtype at the store."""
    p = tl.program_id(0).to(tl.int64)
    l0 = tl.program_id(1).to(tl.int64) * BLOCK_L
    pos = l0 + tl.arange(0, BLOCK_L)
    n = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    h = p % H
    nm = n < N
    xa = tl.load(x_ptr + (h * N + n) * 2, mask=nm, other=0.0).to(tl.float64)[:, None]
    xb = tl.load(x_ptr + (h * N + n) * 2 + 1, mask=nm, other=0.0).to(tl.float64)[:, None]
    if l0 < J:
        kw = nm[:, None] & (pos[None, :] < J)
        vr = tl.load(v_ptr + (p * N + n) * 2, mask=nm, other=0.0).to(tl.float64)[:, None]
        vi = tl.load(v_ptr + (p * N + n) * 2 + 1, mask=nm, other=0.0).to(tl.float64)[:, None]
        pr, pi = _cexp64(xa, xb, (pos * T).to(tl.float64)[None, :])
        wb = w_ptr + p * J * 2 * N + pos[None, :] * (2 * N) + n[:, None]
        tl.store(wb, (2.0 * (vr * pr - vi * pi)).to(w_ptr.dtype.element_ty), mask=kw)
        tl.store(wb + N, (-2.0 * (vr * pi + vi * pr)).to(w_ptr.dtype.element_ty), mask=kw)
    if (l0 < T) & (p < H):
        kz = nm[:, None] & (pos[None, :] < T)
        qr, qi = _cexp64(xa, xb, pos.to(tl.float64)[None, :])
        zb = z_ptr + (h * 2 * N + n[:, None]) * T + pos[None, :]
        tl.store(zb, qr.to(z_ptr.dtype.element_ty), mask=kz)
        tl.store(zb + N * T, qi.to(z_ptr.dtype.element_ty), mask=kz)


@triton.jit
def _bwd_factors_kernel(x_ptr, z_ptr, H, N, T, NCOL, WANT_DX: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """The backward GEMM's right operand Z (H, T, NCOL): columns n, N + n = Re, Im exp(x_n i) and, with
    WANT_DX, 2N + n, 3N + n = i Re, i Im exp(x_n i) (the i-weighted products in float64, then rounded)."""
    h = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    n = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    xa = tl.load(x_ptr + (h * N + n) * 2, mask=nm, other=0.0).to(tl.float64)[:, None]
    xb = tl.load(x_ptr + (h * N + n) * 2 + 1, mask=nm, other=0.0).to(tl.float64)[:, None]
    fi = i.to(tl.float64)[None, :]
    qr, qi = _cexp64(xa, xb, fi)
    k = nm[:, None] & (i[None, :] < T)
    zb = z_ptr + (h * T + i[None, :]) * NCOL + n[:, None]
    tl.store(zb, qr.to(z_ptr.dtype.element_ty), mask=k)
    tl.store(zb + N, qi.to(z_ptr.dtype.element_ty), mask=k)
    if WANT_DX:
        tl.store(zb + 2 * N, (qr * fi).to(z_ptr.dtype.element_ty), mask=k)
        tl.store(zb + 3 * N, (qi * fi).to(z_ptr.dtype.element_ty), mask=k)


@triton.jit
def _bwd_reduce_kernel(r_ptr, x_ptr, v_ptr, dv_ptr, dx_ptr, C, H, N, T, J, NCOL,
                       WANT_DV: tl.constexpr, WANT_DX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr):
    """The sums over j of the backward, per (h, mode tile), in float64 (R (C*H, J, NCOL) from the GEMM):
    S0[c] = sum_j P_j M0[c, j], S1[c] = sum_j P_j (jT M0[c, j] + M1[c, j]) with P_j = exp(x jT),
    M0 = R[:, :, n] + i R[:, :, N + n], M1 = R[:, :, 2N + n] + i R[:, :, 3N + n];
    dv[c] = 2 conj(S0[c]) (v's dtype), dx = sum_c 2 conj(v[c] S1[c]) (x's dtype)."""
    h = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    xa = tl.load(x_ptr + (h * N + n) * 2, mask=nm, other=0.0).to(tl.float64)[:, None]
    xb = tl.load(x_ptr + (h * N + n) * 2 + 1, mask=nm, other=0.0).to(tl.float64)[:, None]
    dxr = tl.zeros((BLOCK_N,), dtype=tl.float64)
    dxi = tl.zeros((BLOCK_N,), dtype=tl.float64)
    for c in range(0, C):
        p = c * H + h
        s0r = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float64)
        s0i = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float64)
        s1r = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float64)
        s1i = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float64)
        for j0 in range(0, J, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
            k = nm[:, None] & (j[None, :] < J)
            jt = (j * T).to(tl.float64)[None, :]
            pr, pi = _cexp64(xa, xb, jt)
            rb = r_ptr + (p * J + j[None, :]) * NCOL + n[:, None]
            m0r = tl.load(rb, mask=k, other=0.0).to(tl.float64)
            m0i = tl.load(rb + N, mask=k, other=0.0).to(tl.float64)
            s0r += pr * m0r - pi * m0i
            s0i += pr * m0i + pi * m0r
            if WANT_DX:
                m1r = jt * m0r + tl.load(rb + 2 * N, mask=k, other=0.0).to(tl.float64)
                m1i = jt * m0i + tl.load(rb + 3 * N, mask=k, other=0.0).to(tl.float64)
                s1r += pr * m1r - pi * m1i
                s1i += pr * m1i + pi * m1r
        if WANT_DV:
            db = dv_ptr + (p * N + n) * 2
            tl.store(db, (2.0 * tl.sum(s0r, axis=1)).to(dv_ptr.dtype.element_ty), mask=nm)
            tl.store(db + 1, (-2.0 * tl.sum(s0i, axis=1)).to(dv_ptr.dtype.element_ty), mask=nm)
        if WANT_DX:
            ar = tl.sum(s1r, axis=1)
            ai = tl.sum(s1i, axis=1)
            vr = tl.load(v_ptr + (p * N + n) * 2, mask=nm, other=0.0).to(tl.float64)
            vi = tl.load(v_ptr + (p * N + n) * 2 + 1, mask=nm, other=0.0).to(tl.float64)
            dxr += 2.0 * (vr * ar - vi * ai)
            dxi += -2.0 * (vr * ai + vi * ar)
    if WANT_DX:
        tl.store(dx_ptr + (h * N + n) * 2, dxr.to(dx_ptr.dtype.element_ty), mask=nm)
        tl.store(dx_ptr + (h * N + n) * 2 + 1, dxi.to(dx_ptr.dtype.element_ty), mask=nm)


_FB_N, _FB_L = 16, 32  # the factor kernels' tiles (modes x positions)


def _fused_factors() -> bool:
    """GEOOPS_SSM_TRITON_FUSED_FACTORS=0 (README knob table, read per call): the factors and the discretisation by
    torch in complex128 (the path before session 32) instead of the factor kernels."""
    return os.environ.get("GEOOPS_SSM_TRITON_FUSED_FACTORS", "")[:1] != "0"


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """t (complex64 / complex128) as contiguous (re, im) pairs; the kernels widen the loads to float64 (exact,
    as torch's cast to complex128)."""
    return torch.view_as_real(t if t.is_contiguous() else t.contiguous())


def _powers(x: torch.Tensor, step: int, count: int) -> torch.Tensor:
    """exp(x * step * k), k < count, in complex128 from the exact products (x (H, N) -> (H, N, count))."""
    m = torch.arange(count, device=x.device, dtype=torch.float64) * step
    xc = x.to(torch.complex128).unsqueeze(-1)
    # the real and imaginary products apart (a complex product would form -inf * 0 = NaN in the imaginary part of
    # x = -inf + 0i, a mode with Abar = 0), and exp(x * 0) = 1 for every x
    xr = torch.where(m == 0, 0.0, xc.real * m)
    xi = torch.where(m == 0, 0.0, xc.imag * m)
    return torch.exp(torch.complex(xr, xi))


def _vandermonde_operands(v, x, L: int, rdt):
    """The blocked product's factors: W (C*H, J, 2N) = [2 Re, -2 Im] of v * exp(x j T) and Z (H, 2N, T) =
    [Re; Im] of exp(x i), so that K[c, h, j T + i] = (W[c*H + h] @ Z[h])[j, i].  One launch of
    ``_fwd_factors_kernel`` (float64 math as below), or torch in complex128 under the knob."""
    C, H, N = v.shape
    T, J = _blocking(L)
    if _fused_factors():
        W = torch.empty((C * H, J, 2 * N), device=v.device, dtype=rdt)
        Z = torch.empty((H, 2 * N, T), device=v.device, dtype=rdt)
        grid = (C * H, triton.cdiv(max(J, T), _FB_L), triton.cdiv(N, _FB_N))
        _fwd_factors_kernel[grid](_pairs(x), _pairs(v), W, Z, H, N, T, J, BLOCK_N=_FB_N, BLOCK_L=_FB_L)
        return W, Z, T, J
    Q = _powers(x, 1, T)  # (H, N, T)
    P = _powers(x, T, J)  # (H, N, J)
    Z = torch.cat([Q.real, Q.imag], dim=1).to(rdt).contiguous()  # (H, 2N, T)
    VP = v.to(torch.complex128).unsqueeze(-1) * P  # (C, H, N, J)
    W = torch.cat([2 * VP.real, -2 * VP.imag], dim=2).transpose(-1, -2).to(rdt).reshape(C * H, J, 2 * N).contiguous()
    return W, Z, T, J


def vandermonde_fwd(v, x, L: int, out64: bool):
    C, H, N = v.shape
    rdt = torch.float64 if out64 else torch.float32
    if L == 0 or C * H == 0 or N == 0:
        return torch.zeros((C, H, L), device=v.device, dtype=rdt)
    W, Z, T, J = _vandermonde_operands(v, x, L, rdt)
    K = _bmm(W, Z, H).view(C, H, J * T)
    return K[..., :L].contiguous() if J * T != L else K


def _vandermonde_bwd_fused(g, v, x, mask: int):
    """vandermonde_bwd in three launches: Z (H, T, 2N or 4N) by ``_bwd_factors_kernel``, R = G Z by
    ``_bmm_kernel`` (G = g as (C*H, J, T), zero-padded when J T > L), the float64 sums over j and c into
    dv / dx by ``_bwd_reduce_kernel``."""
    C, H, N = v.shape
    L = g.shape[-1]
    T, J = _blocking(L)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype) if mask & 1 else v.new_empty(0)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype) if mask & 2 else x.new_empty(0)
    ncol = 4 * N if mask & 2 else 2 * N
    xp = _pairs(x)
    Z = torch.empty((H, T, ncol), device=g.device, dtype=g.dtype)
    _bwd_factors_kernel[(H, triton.cdiv(T, _FB_L), triton.cdiv(N, _FB_N))](
        xp, Z, H, N, T, ncol, WANT_DX=bool(mask & 2), BLOCK_N=_FB_N, BLOCK_L=_FB_L)
    G = g if J * T == L else torch.nn.functional.pad(g, (0, J * T - L))
    R = _bmm(G.reshape(C * H, J, T), Z, H)  # (C*H, J, ncol) in g's dtype
    vp = _pairs(v) if mask & 2 else xp
    dvr = torch.view_as_real(dv) if mask & 1 else xp
    dxr = torch.view_as_real(dx) if mask & 2 else xp
    _bwd_reduce_kernel[(H, triton.cdiv(N, _FB_N))](R, xp, vp, dvr, dxr, C, H, N, T, J, ncol, WANT_DV=bool(mask & 1),
                                                 WANT_DX=bool(mask & 2), BLOCK_N=_FB_N, BLOCK_J=_FB_L)
    return dv, dx


def vandermonde_bwd(g, v, x, mask: int):
    C, H, N = v.shape
    L = g.shape[-1]
    if L > 0 and C * H > 0 and N > 0 and mask != 0 and _fused_factors():
        return _vandermonde_bwd_fused(g, v, x, mask)
    dv = torch.zeros_like(v) if mask & 1 else v.new_empty(0)
    dx = torch.zeros_like(x) if mask & 2 else x.new_empty(0)
    if L == 0 or C * H == 0 or N == 0 or mask == 0:
        return dv, dx
    rdt = g.dtype
    T, J = _blocking(L)
    Q = _powers(x, 1, T)  # (H, N, T)
    i = torch.arange(T, device=x.device, dtype=torch.float64)
    cols = [Q.real, Q.imag] + ([Q.real * i, Q.imag * i] if mask & 2 else [])
    Z = torch.cat(cols, dim=1).transpose(-1, -2).to(rdt).contiguous()  # (H, T, ncol)
    G = g if J * T == L else torch.nn.functional.pad(g, (0, J * T - L))
    G = G.reshape(C * H, J, T).contiguous()
    R = _bmm(G, Z, H).view(C, H, J, -1).double()  # (C, H, J, ncol)
    P = _powers(x, T, J)  # (H, N, J)
    M0 = torch.complex(R[..., :N], R[..., N:2 * N])  # (C, H, J, N)
    S0 = torch.einsum("hnj,chjn->chn", P, M0)
    if mask & 1:
        dv = (2 * S0.conj()).to(v.dtype)
    if mask & 2:
        M1 = torch.complex(R[..., 2 * N:3 * N], R[..., 3 * N:])
        jT = torch.arange(J, device=x.device, dtype=torch.float64) * T
        S1 = torch.einsum("hnj,chjn->chn", P, M0 * jT[:, None] + M1)
        dx = (2 * (v.to(torch.complex128) * S1).conj()).sum(0).to(x.dtype)
    return dv, dx


# ---------------------------------------------------------------- FFT convolution
@triton.jit
def _spec_mul_kernel(u_ptr, k_ptr, o_ptr, C, H, F, BLOCK: tl.constexpr):
    """o[b, c, h, f] = u[b, h, f] * k[c, h, f] (complex, interleaved re/im)."""
    row = tl.program_id(0).to(tl.int64)  # (b, c, h)
    h = row % H
    c = (row // H) % C
    b = row // (H * C)
    f = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = f < F
    ub = u_ptr + (b * H + h) * F * 2
    kb = k_ptr + (c * H + h) * F * 2
    ur = tl.load(ub + 2 * f, mask=m, other=0.0)
    ui = tl.load(ub + 2 * f + 1, mask=m, other=0.0)
    kr = tl.load(kb + 2 * f, mask=m, other=0.0)
    ki = tl.load(kb + 2 * f + 1, mask=m, other=0.0)
    ob = o_ptr + row * F * 2
    tl.store(ob + 2 * f, ur * kr - ui * ki, mask=m)
    tl.store(ob + 2 * f + 1, ur * ki + ui * kr, mask=m)


@triton.jit
def _trunc_skip_kernel(full_ptr, u_ptr, d_ptr, y_ptr, C, H, L, NFULL, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    """y[b, c, h, t] = full[b, c, h, t] (rows of NFULL) + D[c, h] u[b, h, t], cast to y's dtype."""
    row = tl.program_id(0).to(tl.int64)  # (b, c, h)
    h = row % H
    ch = row % (C * H)
    b = row // (H * C)
    t = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = t < L
    val = tl.load(full_ptr + row * NFULL + t, mask=m, other=0.0)
    if HAS_D:
        d = tl.load(d_ptr + ch)
        u = tl.load(u_ptr + (b * H + h) * L + t, mask=m, other=0.0).to(val.dtype)
        val = val + d * u
    tl.store(y_ptr + row * L + t, val.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conj_sum_kernel(a_ptr, g_ptr, o_ptr, B, C, H, F, OVER_C: tl.constexpr, BLOCK: tl.constexpr):
    """OVER_C: o[b, h] = sum_c conj(a[c, h]) g[b, c, h]  (du; a = k^)
    else:     o[c, h] = sum_b conj(a[b, h]) g[b, c, h]  (dk; a = u^, the batch sum before the inverse FFT)."""
    row = tl.program_id(0).to(tl.int64)  # (o, h)
    h = row % H
    o = row // H
    f = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = f < F
    accr = tl.zeros((BLOCK,), dtype=o_ptr.dtype.element_ty)
    acci = tl.zeros((BLOCK,), dtype=o_ptr.dtype.element_ty)
    if OVER_C:
        n = C
    else:
        n = B
    for s in range(0, n):
        if OVER_C:
            ab = a_ptr + (s * H + h) * F * 2
            gb = g_ptr + ((o * C + s) * H + h) * F * 2
        else:
            ab = a_ptr + (s * H + h) * F * 2
            gb = g_ptr + ((s * C + o) * H + h) * F * 2
        ar = tl.load(ab + 2 * f, mask=m, other=0.0)
        ai = tl.load(ab + 2 * f + 1, mask=m, other=0.0)
        gr = tl.load(gb + 2 * f, mask=m, other=0.0)
        gi = tl.load(gb + 2 * f + 1, mask=m, other=0.0)
        accr = accr + (ar * gr + ai * gi)
        acci = acci + (ar * gi - ai * gr)
    ob = o_ptr + row * F * 2
    tl.store(ob + 2 * f, accr, mask=m)
    tl.store(ob + 2 * f + 1, acci, mask=m)


@triton.jit
def _dd_kernel(g_ptr, u_ptr, o_ptr, B, C, H, L, BLOCK: tl.constexpr):
    """dD[c, h] = sum_{b, l} g[b, c, h, l] u[b, h, l] for float32 g, u, as accurate as a float64 sum rounded once
    (Ogita, Rump and Oishi's Dot2): each lane keeps its running sum and, in a second float32 accumulator, the
    rounding errors of its products (an fma: x y - fl(x y) exactly) and of its additions (Knuth's TwoSum, exact
    while the compiler contracts nothing: launched with enable_fp_fusion=False); the lanes' sums and errors are
    combined in float64 once per program (BLOCK values: no float64 work per element).  Program: (c, h)."""
    row = tl.program_id(0).to(tl.int64)  # (c, h)
    h = row % H
    c = row // H
    t = tl.arange(0, BLOCK)
    s = tl.zeros((BLOCK,), dtype=tl.float32)
    e = tl.zeros((BLOCK,), dtype=tl.float32)
    for b in range(0, B):
        gb = g_ptr + ((b * C + c) * H + h) * L
        ub = u_ptr + (b * H + h) * L
        for l0 in range(0, L, BLOCK):
            m = l0 + t < L
            x = tl.load(gb + l0 + t, mask=m, other=0.0)
            y = tl.load(ub + l0 + t, mask=m, other=0.0)
            p = x * y
            ep = tl.fma(x, y, -p)
            sn = s + p
            z = sn - s
            e = e + (((s - (sn - z)) + (p - z)) + ep)
            s = sn
    tot = tl.sum(s.to(tl.float64), axis=0) + tl.sum(e.to(tl.float64), axis=0)
    tl.store(o_ptr + row, tot.to(o_ptr.dtype.element_ty))


_DD_BLOCK = 256


def _dd_f32(gc, uc):
    """dD (C, H) float32 of float32 g (B, C, H, L) and u (B, H, L), contiguous (see _dd_kernel)."""
    B, C, H, L = gc.shape
    out = torch.empty((C, H), device=gc.device, dtype=torch.float32)
    _dd_kernel[(C * H,)](gc, uc, out, B, C, H, L, BLOCK=_DD_BLOCK, enable_fp_fusion=False)
    return out


def _cdt(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _cplx(cdt):
    return torch.complex128 if cdt == torch.float64 else torch.complex64


def _circular(k, L, n, cdt):
    """The (C, H, n) circular kernel of k (C, S, H, L) in cdt: k0 on [0, L), k1[l] at n - 1 - l (l <= L - 2)."""
    kc = k.to(cdt)
    circ = torch.zeros((k.shape[0], k.shape[2], n), device=k.device, dtype=cdt)
    circ[..., :L] = kc[:, 0]
    if k.shape[1] == 2 and L > 1:
        circ[..., n - L + 1:] = kc[:, 1, :, :L - 1].flip(-1)
    return circ


def _kernel_spectrum(k, L, n, cdt):
    """rfft(circular kernel, n) / n."""
    return torch.fft.rfft(_circular(k, L, n, cdt), n=n, norm="forward").contiguous()


_BLOCK = 256


def _conv_fwd(u, kf, D, save_uf: bool, n: int):
    """y (B, C, H, L) in u's dtype from kf = rfft(circular k, n) / n; (y, uf)."""
    B, H, L = u.shape
    C = kf.shape[0]
    cdt = _cdt(u)
    uc = u.to(cdt).contiguous()
    uf = torch.fft.rfft(uc, n=n).contiguous()
    F = n // 2 + 1
    prod = torch.empty((B, C, H, F), device=u.device, dtype=_cplx(cdt))
    _spec_mul_kernel[(B * C * H, triton.cdiv(F, _BLOCK))](
        torch.view_as_real(uf), torch.view_as_real(kf), torch.view_as_real(prod), C, H, F, BLOCK=_BLOCK)
    full = torch.fft.irfft(prod, n=n, norm="forward").contiguous()
    y = torch.empty((B, C, H, L), device=u.device, dtype=u.dtype)
    Dc = D.to(cdt).contiguous() if D is not None else full
    _trunc_skip_kernel[(B * C * H, triton.cdiv(L, _BLOCK))](full, uc, Dc, y, C, H, L, n, HAS_D=D is not None,
                                                            BLOCK=_BLOCK)
    return y, (uf if save_uf else u.new_empty(0, dtype=_cplx(cdt)))


def fftconv_fwd(u, k, D, save_uf: bool):
    B, H, L = u.shape
    C = k.shape[0]
    cdt = _cdt(u)
    n = fft_size(L)
    if B * H * L * C == 0:
        y = torch.zeros((B, C, H, L), device=u.device, dtype=u.dtype)
        uf = torch.zeros((B, H, n // 2 + 1), device=u.device, dtype=_cplx(cdt)) if save_uf \
            else u.new_empty(0, dtype=_cplx(cdt))
        return y, uf
    N = _monarch_fft_size(u, C)
    if N:
        kf = _monarch_spectrum(k, L, N, *_MONARCH_SPLIT[N])
        y = _monarch_conv(u.contiguous(), kf, None if D is None else D.contiguous(), N)
        return y, _no_uf(u, save_uf, cdt)
    return _conv_fwd(u, _kernel_spectrum(k, L, n, cdt), D, save_uf, n)


def _no_uf(u, save_uf: bool, cdt):
    """uf of the tensor-core path, which never forms the spectrum: (B, H, 0) when asked for (the shape the fake
    gives a spectrum of unknown length under a symbolic L, see fftconv_saves_uf), else (0,) as elsewhere."""
    return u.new_empty((*u.shape[:2], 0) if save_uf else (0,), dtype=_cplx(cdt))


def fftconv_saves_uf(u: torch.Tensor, C: int) -> Optional[bool]:
    """Whether fftconv_fwd / ssm_conv_fwd return rfft(u) (B, H, n//2+1) when asked to (False where the tensor-core
    path runs: it never forms the spectrum, returns it (B, H, 0), and the backward recomputes it); the ops' fake
    implementations ask this.  None where the answer depends on a symbolic L (half u under torch.compile with a
    dynamic length / torch.export): the fake then gives uf an unbacked length (n//2+1 or 0) instead of asking
    monarch_size(L), which would specialise L (session 36)."""
    L = u.shape[-1]
    if u.dtype in _HALF and isinstance(L, torch.SymInt) and not is_concrete_int(L):
        if os.environ.get("GEOOPS_SSM_TRITON_MONARCH", "") == "0" or C * u.shape[1] > _MAX_GRID_Y:
            return True
        return None
    return u.numel() * C == 0 or not _monarch_fft_size(u, C)


# ---------------------------------------------------------------- FFT convolution on tensor cores ("monarch")
# y = irfft(rfft(u) rfft(k)) as four small DFT matrix products per pair of rows (FlashFFTConv's idea; our own
# kernel).  With N = N1 * M (a power of two >= 2L - 1), n = M n1 + m and k = k1 + N1 k2:
#   X[k1, k2] = sum_m W_N^(k1 m) W_M^(m k2) sum_n1 W_N1^(k1 n1) x[n1, m]          (W_n = exp(-2 pi i / n))
# i.e. X = ((F_N1 x) * T) F_M, then Y = X * Kf (Kf = fft(k, N) / N in the same [k1, k2] order) and the
# inverse y = conj(F_N1) ((Y conj(F_M)) * conj(T)).  Two real rows of one channel travel as one complex row
# (z = u_b + i u_b': the kernel is real, so conv(z) = conv(u_b) + i conv(u_b')), which halves the work without
# an unpacking step (each row scaled by a power of two to a largest entry in [1, 2) first and its result scaled
# back, _pair_row_scale: the products' TF32 rounding, shared by the pair, is then relative to each row's own
# scale -- session 35: a row 1000x its partner's scale left the partner ~17% off in float16 -- and a NaN / inf
# row is left out, its result NaN); x is zero for n1 >= R1 (rows past L) and only the output rows n1 < R1 are needed, so the
# first and last products use R1 of F_N1's N1 rows / columns.  The products run on tensor cores (tl.dot),
# TF32 operands with float32 accumulation for half inputs (their rounding is 2^-11 against the half output's
# 2^-9 (bf16) / 2^-11 (fp16)); N >= 8192 in two passes (below).  Float32 u keeps the cuFFT path (3-pass TF32 spills registers at N >= 2048);
# the tests run the kernel on float32 u (3-pass TF32) under the interpreter, to check the algorithm to ~1e-7.
_MONARCH_SPLIT = {256: (16, 16), 512: (32, 16), 1024: (32, 32), 2048: (64, 32), 4096: (64, 64), 8192: (128, 64),
                  16384: (128, 128), 32768: (256, 128)}
# (BK, warps, stages) per FFT size: the fewest registers without spills in the sm_80 / sm_90 compile check
# (kernels/COMPILE_REPORT.md); one stage: the loop's loads are cache-resident constants, not a stream to pipeline
# (this one-pass form at N = 8192 = 128 x 64 spilled 4 KiB on sm_80 in every configuration tried -- BK 16 / 32,
# 4 / 8 / 16 warps -- hence the two-pass form there).  N = 1024 / 2048 take 8 warps since session 35: with the
# pair scaling (_pair_row_scale) 4 warps spilled 4-8 B under Triton 3.6 (sm_90 bf16 at 1024, sm_80 fp16 at 2048)
_MONARCH_CFG = {256: (16, 4, 1), 512: (16, 4, 1), 1024: (16, 8, 1), 2048: (64, 8, 1), 4096: (16, 8, 1)}
# N >= 8192 (every N under GEOOPS_SSM_TRITON_MONARCH=2): two passes (rows, then columns) through a float32 scratch;
# (BK, BC, BK2, warps) of the rows pass, (BR, BM, BC, warps) of the columns pass.  Four warps: 2 programs per
# multiprocessor at <= 236 registers (8 warps: 160-180 registers, 1 program)
def _two_pass_cfg(N: int):
    N1, M = _MONARCH_SPLIT[N]
    return 16, 32, min(32, M), 4, 32, min(64, M), min(32, N1), 4


_MONARCH_SCRATCH = 256 << 20
# the backward's dk (one program per channel, the pairs of rows looped inside): (BK, warps) per one-pass size
_MONARCH_CORR_CFG = {256: (16, 4), 512: (16, 4), 1024: (16, 4), 2048: (16, 4), 4096: (16, 8)}
_MONARCH_CONSTS: dict = {}
_HALF = (torch.float16, torch.bfloat16)
_MAX_GRID_Y = 65535  # CUDA's grid limit on axis 1 (the channels)


@triton.jit
def _ld2(ptr, off, plane):
    """The [Re; Im] planes of a complex tile stored as two real planes `plane` elements apart."""
    return tl.load(ptr + off), tl.load(ptr + plane + off)


@triton.jit
def _cmm(ar, ai, br, bi, PREC: tl.constexpr):
    """(ar + i ai) @ (br + i bi) as four real tensor-core products (float32 accumulation)."""
    re = tl.dot(ai, -bi, tl.dot(ar, br, input_precision=PREC), input_precision=PREC)
    im = tl.dot(ai, br, tl.dot(ar, bi, input_precision=PREC), input_precision=PREC)
    return re, im


@triton.jit
def _monarch_fwd_rows(far, fai, xr, xi, twr, twi, fmr, fmi, PREC: tl.constexpr):
    """Rows k1 of the forward transform X = ((F_N1[k1, :R1] x) * T[k1]) F_M (x: R1 x M complex)."""
    br, bi = _cmm(far, fai, xr, xi, PREC)
    return _cmm(br * twr - bi * twi, br * twi + bi * twr, fmr, fmi, PREC)


@triton.jit
def _monarch_inv_rows(yr, yi, twr, twi, fmr, fmi, PREC: tl.constexpr):
    """Rows k1 of E = (Y conj(F_M)) * conj(T[k1]), the inverse transform's first steps."""
    er, ei = _cmm(yr, yi, fmr, -fmi, PREC)
    return er * twr + ei * twi, ei * twr - er * twi


@triton.jit
def _pair_row_scale(row_ptr, lim, R1: tl.constexpr, BC: tl.constexpr, M: tl.constexpr):
    """(fin, fout) of one row of a pair (lim: its length, 0 for an absent row): the row enters the pair's shared
    transform times fin = 2^-e, its largest |entry| then in [1, 2) (exact: a power of two), and its result comes
    out times fout = 2^e.  So the TF32 rounding that the two rows of the complex row z = u_b + i u_b' share is
    relative to each row's own scale (not the larger row's), and a zero row gives exact zeros (fout = 0).  A row
    with a NaN / inf is left out of the transform (fin = 0) and comes out NaN (fout = NaN), as its FFT does,
    without reaching its partner."""
    m = tl.arange(0, M)
    s = tl.zeros((), tl.float32)
    for c0 in range(0, R1, BC):
        n = (c0 + tl.arange(0, BC))[:, None] * M + m[None, :]
        x = tl.load(row_ptr + n, mask=n < lim, other=0.0).to(tl.float32)
        s = tl.maximum(s, tl.max(tl.where(x - x == 0.0, tl.abs(x), float("inf"))))  # non-finite: inf
    # p = 2^e, the power of two at or below s (within [2^-126, 2^126]: 1/p a normal float), and 1/p from the exponent
    # bits (254 - biased e: exact, no division); s = inf for a non-finite row
    eb = tl.minimum(tl.maximum(s.to(tl.int32, bitcast=True) & 0x7F800000, 0x00800000), 0x7E800000)
    fin = s < float("inf")
    fin_ = tl.where(fin, (0x7F000000 - eb).to(tl.float32, bitcast=True), 0.0)
    return fin_, tl.where(s == 0.0, 0.0, tl.where(fin, eb.to(tl.float32, bitcast=True), float("nan")))


@triton.jit
def _monarch_conv_kernel(u_ptr, kf_ptr, f1_ptr, fm_ptr, tw_ptr, d_ptr, y_ptr, B, H, CH, L,
                         N1: tl.constexpr, M: tl.constexpr, R1: tl.constexpr, BK: tl.constexpr,
                         HAS_D: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr):
    """Rows (b0, b1) = (2p, 2p + 1) of channel ch = (c, h): y[b, c, h, :L] = (k[c, h] * u[b, h])[:L] + D[c, h] u.

    u (B, H, L), y (B, C, H, L) (row b * CH + ch), kf (CH, 2, N1, M) float32 = [Re; Im] fft(circular k, N) / N
    in [k1, k2] order (CONJ: its conjugate, the correlation of the backward), f1 (2, N1, N1), fm (2, M, M),
    tw (2, N1, M) = [Re; Im] of F_N1, F_M and the twiddles W_N^(k1 m).  One program per (pair, channel); the
    spectrum's N1 rows k1 are visited in blocks of BK (each block's forward product, spectral product and
    inverse row DFT are independent of the others), and each block's share of the last product conj(F_N1) E
    is added to the output tile: the live state is x and the output (R1 x M each) plus one block."""
    p = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1).to(tl.int64)
    h = ch % H
    b0 = 2 * p
    L1 = tl.where(b0 + 1 < B, L, 0)  # row b0 + 1's length (0: B odd, the last pair's second row is absent)
    n1 = tl.arange(0, R1)
    m = tl.arange(0, M)
    n = n1[:, None] * M + m[None, :]
    lm = n < L
    u0 = u_ptr + (b0 * H + h) * L
    mm = m[:, None] * M + m[None, :]
    kb_ptr = kf_ptr + ch * (2 * N1 * M)
    accr = tl.zeros((R1, M), dtype=tl.float32)
    acci = tl.zeros((R1, M), dtype=tl.float32)
    # each row scaled to its own binade (and a non-finite one left out): see _pair_row_scale
    fr0, _fo0 = _pair_row_scale(u0, L, R1, 16, M)  # (in 16-row chunks: few registers before the loop; R1 >= 16)
    fr1, _fo1 = _pair_row_scale(u0 + H * L, L1, R1, 16, M)
    for kb in range(0, N1, BK):
        k1 = kb + tl.arange(0, BK)
        # forward: B = F_N1[k1, :R1] x, C = B * T, X = C F_M (fr = 0: a non-finite row, left out)
        fa = k1[:, None] * N1 + n1[None, :]
        xr = tl.load(u0 + n, mask=lm, other=0.0).to(tl.float32)  # reloaded per block (cache hits): fewer live
        xi = tl.load(u0 + H * L + n, mask=n < L1, other=0.0).to(tl.float32)  # registers than keeping x
        xr = tl.where(fr0 > 0, xr * fr0, 0.0)
        xi = tl.where(fr1 > 0, xi * fr1, 0.0)
        far, fai = _ld2(f1_ptr, fa, N1 * N1)
        t2 = k1[:, None] * M + m[None, :]
        twr, twi = _ld2(tw_ptr, t2, N1 * M)
        fmr, fmi = _ld2(fm_ptr, mm, M * M)
        sr, si = _monarch_fwd_rows(far, fai, xr, xi, twr, twi, fmr, fmi, PREC)
        # the spectral product
        kr, ki = _ld2(kb_ptr, t2, N1 * M)
        if CONJ:
            ki = -ki
        # inverse: E = (Y conj(F_M)) * conj(T), y += conj(F_N1)[:R1, k1] E
        gr, gi = _monarch_inv_rows(sr * kr - si * ki, sr * ki + si * kr, twr, twi, fmr, fmi, PREC)
        fd = n1[:, None] * N1 + k1[None, :]
        fdr, fdi = _ld2(f1_ptr, fd, N1 * N1)
        accr = tl.dot(fdi, gi, tl.dot(fdr, gr, accr, input_precision=PREC), input_precision=PREC)
        acci = tl.dot(-fdi, gr, tl.dot(fdr, gi, acci, input_precision=PREC), input_precision=PREC)
    # the output factors read again (cache hits) rather than kept live through the loop (a spill at N = 1024)
    _fr0, fo0 = _pair_row_scale(u0, L, R1, 16, M)
    _fr1, fo1 = _pair_row_scale(u0 + H * L, L1, R1, 16, M)
    accr = accr * fo0
    acci = acci * fo1
    if HAS_D:
        d = tl.load(d_ptr + ch).to(tl.float32)
        accr = accr + d * tl.load(u0 + n, mask=lm, other=0.0).to(tl.float32)
        acci = acci + d * tl.load(u0 + H * L + n, mask=n < L1, other=0.0).to(tl.float32)
    y0 = y_ptr + (b0 * CH + ch) * L
    tl.store(y0 + n, accr.to(y_ptr.dtype.element_ty), mask=lm)
    tl.store(y0 + CH * L + n, acci.to(y_ptr.dtype.element_ty), mask=n < L1)


@triton.jit
def _monarch_corr_kernel(u_ptr, g_ptr, fu_ptr, fg_ptr, un_ptr, f1_ptr, fm_ptr, tw_ptr, dk_ptr, B, H, CH, L, scale,
                         N1: tl.constexpr, M: tl.constexpr, R1: tl.constexpr, BK: tl.constexpr,
                         TAIL: tl.constexpr, PREC: tl.constexpr):
    """The backward's dk, per channel ch = (c, h): the batch-summed circular correlation
    r[n] = sum_b sum_t g[b, c, h, t] u[b, h, t - n] as Re IFFT(sum_p W_p conj(Z_p)) over pairs of rows
    (z = u_b + i u_b', w = g_b + i g_b': W conj(Z) = P + i Q with P the pair's summed cross-spectrum and Q another
    real signal's spectrum, so the real part of the inverse is the pair's sum).  dk (C, S, H, L):
    dk[c, 0, h, l] = r[l]; TAIL (bidirectional): dk[c, 1, h, l] = r[N - 1 - l] for l <= L - 2 (r's top rows).

    Each pair enters scaled (_corr_pair_scales: u_b times fu[b, h], g_b times fg[b, ch], powers of two with
    fu_b fg_b the same for both rows, 0 for a row left out) and its product comes out times un[p, ch, 0] un[p, ch, 1]:
    the cross terms Q, whose TF32 rounding P keeps, are then no larger than the pair's own terms."""
    ch = tl.program_id(0).to(tl.int64)
    h = ch % H
    c = ch // H
    n1 = tl.arange(0, R1)
    m = tl.arange(0, M)
    n = n1[:, None] * M + m[None, :]
    lm = n < L
    mm = m[:, None] * M + m[None, :]
    acc = tl.zeros((R1, M), dtype=tl.float32)
    acct = tl.zeros((R1, M), dtype=tl.float32)
    for kb in range(0, N1, BK):
        k1 = kb + tl.arange(0, BK)
        fa = k1[:, None] * N1 + n1[None, :]
        far, fai = _ld2(f1_ptr, fa, N1 * N1)
        t2 = k1[:, None] * M + m[None, :]
        twr, twi = _ld2(tw_ptr, t2, N1 * M)
        fmr, fmi = _ld2(fm_ptr, mm, M * M)
        sr = tl.zeros((BK, M), dtype=tl.float32)
        si = tl.zeros((BK, M), dtype=tl.float32)
        for b0 in range(0, B, 2):
            L1 = tl.where(b0 + 1 < B, L, 0)
            u0 = u_ptr + (b0 * H + h) * L
            g0 = g_ptr + (b0 * CH + ch) * L
            # the pair's scale factors (B padded to even in the factors: no masks)
            fu0 = tl.load(fu_ptr + b0 * H + h)
            fu1 = tl.load(fu_ptr + (b0 + 1) * H + h)
            fg0 = tl.load(fg_ptr + b0 * CH + ch)
            fg1 = tl.load(fg_ptr + (b0 + 1) * CH + ch)
            xr = tl.load(u0 + n, mask=lm, other=0.0).to(tl.float32)
            xi = tl.load(u0 + H * L + n, mask=n < L1, other=0.0).to(tl.float32)
            zr, zi = _monarch_fwd_rows(far, fai, tl.where(fu0 > 0, xr * fu0, 0.0), tl.where(fu1 > 0, xi * fu1, 0.0),
                                       twr, twi, fmr, fmi, PREC)
            xr = tl.load(g0 + n, mask=lm, other=0.0).to(tl.float32)
            xi = tl.load(g0 + CH * L + n, mask=n < L1, other=0.0).to(tl.float32)
            wr, wi = _monarch_fwd_rows(far, fai, tl.where(fg0 > 0, xr * fg0, 0.0), tl.where(fg1 > 0, xi * fg1, 0.0),
                                       twr, twi, fmr, fmi, PREC)
            un = un_ptr + ((b0 // 2) * CH + ch) * 2
            un0 = tl.load(un)
            un1 = tl.load(un + 1)
            sr += ((wr * zr + wi * zi) * un0) * un1
            si += ((wi * zr - wr * zi) * un0) * un1
        # inverse rows E = (S conj(F_M)) * conj(T); r's rows += Re(conj(F_N1)[rows, k1] E)
        gr, gi = _monarch_inv_rows(sr, si, twr, twi, fmr, fmi, PREC)
        fd = n1[:, None] * N1 + k1[None, :]
        acc = tl.dot(tl.load(f1_ptr + N1 * N1 + fd), gi, tl.dot(tl.load(f1_ptr + fd), gr, acc, input_precision=PREC),
                     input_precision=PREC)
        if TAIL:
            ft = (N1 - R1 + n1)[:, None] * N1 + k1[None, :]
            acct = tl.dot(tl.load(f1_ptr + N1 * N1 + ft), gi,
                          tl.dot(tl.load(f1_ptr + ft), gr, acct, input_precision=PREC), input_precision=PREC)
    S: tl.constexpr = 2 if TAIL else 1
    d0 = dk_ptr + ((c * S) * H + h) * L
    tl.store(d0 + n, (acc * scale).to(dk_ptr.dtype.element_ty), mask=lm)
    if TAIL:
        nt = (N1 - R1 + n1)[:, None] * M + m[None, :]  # r's index; dk[c, 1, h, N - 1 - nt] for nt >= N - L + 1
        lt = N1 * M - 1 - nt
        tl.store(d0 + H * L + lt, (acct * scale).to(dk_ptr.dtype.element_ty), mask=(lt >= 0) & (lt <= L - 2))


@triton.jit
def _monarch_rows_kernel(u_ptr, kf_ptr, f1_ptr, fm_ptr, tw_ptr, e_ptr, B, H, L, ch0, P,
                         N1: tl.constexpr, M: tl.constexpr, R1: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
                         BK2: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr):
    """Two-pass form, pass 1 (N >= 8192): rows k1 in [kb, kb + BK) of E = ((((F_N1 x) * T) F_M) * Kf) conj(F_M)
    * conj(T) for the pair p of channel ch0 + c, stored to the scratch e (G P, 2, N1, M) float32 (row c P + p).

    Each product's operands are tiles of at most BK x M: F_N1 x runs over R1 in chunks of BC, the spectral
    product and the inverse row transform over the spectrum's columns k2 in chunks of BK2 (E accumulated)."""
    p = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    kb = tl.program_id(2).to(tl.int64) * BK
    ch = ch0 + c
    h = ch % H
    b0 = 2 * p
    L1 = tl.where(b0 + 1 < B, L, 0)
    u0 = u_ptr + (b0 * H + h) * L
    m = tl.arange(0, M)
    k1 = kb + tl.arange(0, BK)
    br = tl.zeros((BK, M), dtype=tl.float32)
    bi = tl.zeros((BK, M), dtype=tl.float32)
    fr0, _fo0 = _pair_row_scale(u0, L, R1, BC, M)  # (the columns pass applies the output factors)
    fr1, _fo1 = _pair_row_scale(u0 + H * L, L1, R1, BC, M)
    La = tl.where(fr0 > 0, L, 0)
    Lb = tl.where(fr1 > 0, L1, 0)
    for c0 in range(0, R1, BC):
        n1 = c0 + tl.arange(0, BC)
        n = n1[:, None] * M + m[None, :]
        xr = tl.load(u0 + n, mask=n < La, other=0.0).to(tl.float32) * fr0
        xi = tl.load(u0 + H * L + n, mask=n < Lb, other=0.0).to(tl.float32) * fr1
        fa = k1[:, None] * N1 + n1[None, :]
        fr, fi = _ld2(f1_ptr, fa, N1 * N1)
        br = tl.dot(-fi, xi, tl.dot(fr, xr, br, input_precision=PREC), input_precision=PREC)
        bi = tl.dot(fi, xr, tl.dot(fr, xi, bi, input_precision=PREC), input_precision=PREC)
    t2 = k1[:, None] * M + m[None, :]
    twr, twi = _ld2(tw_ptr, t2, N1 * M)
    cr = br * twr - bi * twi
    ci = br * twi + bi * twr
    er = tl.zeros((BK, M), dtype=tl.float32)
    ei = tl.zeros((BK, M), dtype=tl.float32)
    kb_ptr = kf_ptr + ch * (2 * N1 * M)
    for k20 in range(0, M, BK2):
        k2 = k20 + tl.arange(0, BK2)
        fc = m[:, None] * M + k2[None, :]  # F_M[:, k2]
        sr, si = _cmm(cr, ci, tl.load(fm_ptr + fc), tl.load(fm_ptr + M * M + fc), PREC)
        tk = k1[:, None] * M + k2[None, :]
        kr, ki = _ld2(kb_ptr, tk, N1 * M)
        if CONJ:
            ki = -ki
        yr = sr * kr - si * ki
        yi = sr * ki + si * kr
        fr2 = k2[:, None] * M + m[None, :]  # conj(F_M)[k2, :]
        gr, gi = _ld2(fm_ptr, fr2, M * M)
        er = tl.dot(yi, gi, tl.dot(yr, gr, er, input_precision=PREC), input_precision=PREC)
        ei = tl.dot(-yr, gi, tl.dot(yi, gr, ei, input_precision=PREC), input_precision=PREC)
    e0 = e_ptr + (c * P + p) * (2 * N1 * M)
    tl.store(e0 + t2, er * twr + ei * twi)
    tl.store(e0 + N1 * M + t2, ei * twr - er * twi)


@triton.jit
def _monarch_cols_kernel(e_ptr, f1_ptr, u_ptr, d_ptr, y_ptr, B, H, CH, L, ch0, P,
                         N1: tl.constexpr, M: tl.constexpr, BR: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr,
                         NMB: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr, R1: tl.constexpr,
                         BU: tl.constexpr):
    """Pass 2: the output tile rows n1 in [r0, r0 + BR) x columns m in [m0, m0 + BM) of y = conj(F_N1) E (+ D u),
    real part to row b0 = 2p, imaginary part to row b0 + 1, cast to y's dtype."""
    p = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    t = tl.program_id(2).to(tl.int64)
    r0 = (t // NMB) * BR
    m0 = (t % NMB) * BM
    ch = ch0 + c
    h = ch % H
    b0 = 2 * p
    L1 = tl.where(b0 + 1 < B, L, 0)
    n1 = r0 + tl.arange(0, BR)
    m = m0 + tl.arange(0, BM)
    e0 = e_ptr + (c * P + p) * (2 * N1 * M)
    accr = tl.zeros((BR, BM), dtype=tl.float32)
    acci = tl.zeros((BR, BM), dtype=tl.float32)
    for k0 in range(0, N1, BC):
        k1 = k0 + tl.arange(0, BC)
        fd = n1[:, None] * N1 + k1[None, :]
        fr, fi = _ld2(f1_ptr, fd, N1 * N1)
        eo = k1[:, None] * M + m[None, :]
        er, ei = _ld2(e0, eo, N1 * M)
        accr = tl.dot(fi, ei, tl.dot(fr, er, accr, input_precision=PREC), input_precision=PREC)
        acci = tl.dot(-fi, er, tl.dot(fr, ei, acci, input_precision=PREC), input_precision=PREC)
    n = n1[:, None] * M + m[None, :]
    u0 = u_ptr + (b0 * H + h) * L
    _fr0, fo0 = _pair_row_scale(u0, L, R1, BU, M)  # the rows pass's factors (R1 rows of u in chunks of BU)
    _fr1, fo1 = _pair_row_scale(u0 + H * L, L1, R1, BU, M)
    accr = accr * fo0
    acci = acci * fo1
    if HAS_D:
        d = tl.load(d_ptr + ch).to(tl.float32)
        accr = accr + d * tl.load(u0 + n, mask=n < L, other=0.0).to(tl.float32)
        acci = acci + d * tl.load(u0 + H * L + n, mask=n < L1, other=0.0).to(tl.float32)
    y0 = y_ptr + (b0 * CH + ch) * L
    tl.store(y0 + n, accr.to(y_ptr.dtype.element_ty), mask=n < L)
    tl.store(y0 + CH * L + n, acci.to(y_ptr.dtype.element_ty), mask=n < L1)


def monarch_size(L: int, dtype) -> int:
    """The FFT size of the tensor-core convolution for u of length L and dtype, or 0 where it does not run:
    float16 / bfloat16 u with 2L - 1 <= 32768 (GEOOPS_SSM_TRITON_MONARCH=0, read per call: never; =2: the
    two-pass form at every size, for A/B runs and tests)."""
    if os.environ.get("GEOOPS_SSM_TRITON_MONARCH", "") == "0" or dtype not in _HALF or L < 1:
        return 0
    n = max(256, 1 << (2 * L - 2).bit_length())
    return n if n in _MONARCH_SPLIT else 0


def _monarch_fft_size(u, C: int) -> int:
    """monarch_size for u (B, H, L) convolved with C output channels, 0 where the channel grid exceeds CUDA's."""
    return monarch_size(u.shape[-1], u.dtype) if C * u.shape[1] <= _MAX_GRID_Y else 0


def _monarch_r1(L: int, N1: int, M: int) -> int:
    """Rows n1 of the [n1, m] layout that hold the L inputs / outputs (a power of two >= 16, <= N1)."""
    return min(N1, max(16, triton.next_power_of_2(triton.cdiv(L, M))))


def _monarch_consts(N1: int, M: int, device):
    """[Re; Im] of F_N1 (N1, N1), F_M (M, M) and the twiddles W_N^(k1 m) (N1, M), float32, cached per device.
    Angles from exact integer products reduced mod N, then cos / sin in float64."""
    key = (N1, M, str(device))
    got = _MONARCH_CONSTS.get(key)
    if got is None:
        def mat(r, c, n):
            e = (torch.arange(r, dtype=torch.int64)[:, None] * torch.arange(c, dtype=torch.int64)[None, :]) % n
            a = e.double() * (-2 * torch.pi / n)
            return torch.stack([a.cos(), a.sin()]).float().contiguous().to(device)
        got = _MONARCH_CONSTS[key] = (mat(N1, N1, N1), mat(M, M, M), mat(N1, M, N1 * M))
    return got


def _monarch_spectrum(k, L: int, N: int, N1: int, M: int):
    """(C H, 2, N1, M) float32: [Re; Im] fft(circular k, N) / N in [k1, k2] order (k = k1 + N1 k2)."""
    return _monarch_kf(_circular(k, L, N, torch.float32), N1, M)


def _monarch_kf(circ, N1: int, M: int):
    """The (C, H, N) circular kernel's spectrum fft / N as (C H, 2, N1, M) float32 [Re; Im] in [k1, k2] order."""
    C, H, _ = circ.shape
    kf = torch.fft.fft(circ.float(), norm="forward").view(C * H, M, N1).transpose(1, 2)
    return torch.view_as_real(kf).permute(0, 3, 1, 2).contiguous()


def _monarch_conv(u, kf, D, N: int, conj: bool = False):
    """y (B, C, H, L) in u's dtype: the causal (or, conj, correlation) convolution through the tensor-core DFTs."""
    B, H, L = u.shape
    CH = kf.shape[0]
    N1, M = _MONARCH_SPLIT[N]
    R1 = _monarch_r1(L, N1, M)
    f1, fm, tw = _monarch_consts(N1, M, u.device)
    y = torch.empty((B, CH // H, H, L), device=u.device, dtype=u.dtype)
    prec = "tf32x3" if u.dtype == torch.float32 else "tf32"
    Dp = D if D is not None else kf
    P = triton.cdiv(B, 2)
    if N <= 4096 and os.environ.get("GEOOPS_SSM_TRITON_MONARCH", "") != "2":
        _monarch_conv_kernel[(P, CH)](
            u, kf, f1, fm, tw, Dp, y, B, H, CH, L, N1=N1, M=M, R1=R1, BK=_MONARCH_CFG[N][0],
            HAS_D=D is not None, CONJ=conj, PREC=prec, num_warps=_MONARCH_CFG[N][1],
            num_stages=_MONARCH_CFG[N][2])
        return y
    # two passes through a float32 scratch of E, a group of G channels at a time (<= _MONARCH_SCRATCH bytes)
    BK, BC, BK2, w1, BR, BM, BC2, w2 = _two_pass_cfg(N)
    G = max(1, min(CH, _MONARCH_SCRATCH // (P * N * 8)))
    e = torch.empty((G * P, 2, N1, M), device=u.device, dtype=torch.float32)
    BR = min(BR, R1)
    for ch0 in range(0, CH, G):
        g = min(G, CH - ch0)
        _monarch_rows_kernel[(P, g, N1 // BK)](
            u, kf, f1, fm, tw, e, B, H, L, ch0, P, N1=N1, M=M, R1=R1, BK=BK, BC=min(BC, R1), BK2=BK2, CONJ=conj,
            PREC=prec, num_warps=w1, num_stages=1)
        _monarch_cols_kernel[(P, g, (R1 // BR) * (M // BM))](
            e, f1, u, Dp, y, B, H, CH, L, ch0, P, N1=N1, M=M, BR=BR, BM=BM, BC=BC2, NMB=M // BM,
            HAS_D=D is not None, PREC=prec, R1=R1, BU=min(BC, R1), num_warps=w2, num_stages=2)
    return y


def _binade(t: torch.Tensor):
    """(e, ok, bad) per row of t (last dim): the largest |entry| in [2^e, 2^(e + 1)), e within [-126, 126] (2^-e a
    normal float32); ok: the row is nonzero and finite; bad: it holds a NaN / inf."""
    a = t.abs().amax(-1).float()
    bad = ~torch.isfinite(a)
    ok = (a > 0) & ~bad
    e = torch.frexp(torch.where(ok, a, 1.0)).exponent - 1
    return e.clamp(-126, 126), ok, bad


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e in float32 for an integer tensor e (0 below float32's range, inf above)."""
    return torch.ldexp(torch.ones_like(e, dtype=torch.float32), e)


def _corr_pair_scales(g, u):
    """The scale factors of _monarch_corr_kernel's pairs (torch ops on the device, no host read): fu (B', H) for
    the rows of u, fg (B', C H) for the rows of g (B' = B rounded up to even, the padding 0) and un (B' / 2, C H, 2).

    Row b's term g_b * u_b has the binade e_b = eu_b + eg_b; a pair's largest is e = max(e_b, e_b').  u_b enters
    times 2^-eu_b (its largest entry in [1, 2)), g_b times 2^(eu_b - e) (<= 2 for the pair's larger term), so both
    rows carry the same factor 2^-e and the pair's product comes out times 2^e (two factors, 2^e may not be a
    float32).  Then the cross terms g_b' * u_b (which cancel only in exact arithmetic) are no larger than the
    pair's own terms, and their TF32 rounding is relative to those.  A zero row of u or g (its term is 0) enters as
    0; a non-finite row enters as 0 and its pair comes out NaN (dk is NaN, as the batch sum of the FFT path)."""
    B, C, H, L = g.shape
    CH = C * H
    eu, oku, bad_u = _binade(u)                    # (B, H)
    eg, okg, bad_g = _binade(g.reshape(B, CH, L))  # (B, CH)
    eu_c = eu.repeat(1, C)                     # (B, CH): channel ch = c H + h reads row h of u
    term = oku.repeat(1, C) & okg
    t = torch.where(term, eu_c + eg, -1000)
    bad = bad_u.repeat(1, C) | bad_g
    if B % 2:
        pad = lambda x, v: torch.cat([x, torch.full_like(x[:1], v)])  # noqa: E731
        t, term, bad, eu_c = pad(t, -1000), pad(term, False), pad(bad, False), pad(eu_c, 0)
        oku, eu = pad(oku, False), pad(eu, 0)
    P = t.shape[0] // 2
    e = t.reshape(P, 2, CH).amax(1)            # (P, CH): the pair's largest term binade (-1000: no term)
    fu = torch.where(oku, _pow2(-eu), 0.0)
    fg = torch.where(term, _pow2(eu_c - e.repeat_interleave(2, 0)), 0.0)
    e1 = torch.div(e, 2, rounding_mode="floor")
    un = torch.stack([_pow2(e1), _pow2(e - e1)], -1)
    un = torch.where((e > -1000)[..., None], un, 0.0)
    un = torch.where(bad.reshape(P, 2, CH).any(1)[..., None], float("nan"), un)
    return fu.contiguous(), fg.contiguous(), un.contiguous()


def _monarch_corr(g, u, S: int, N: int, out_dtype):
    """dk (C, S, H, L) in out_dtype: the batch-summed correlation of g (B, C, H, L) with u (B, H, L) through the
    tensor-core DFTs (one program per channel; the one-pass sizes N <= 4096).  The op runs it for a half-precision
    dk only: TF32 operands err by ~2e-4 of the largest entry, ten times the float32 cuFFT path's error on a
    float32 dk, and the 3-pass TF32 variant spilled at N >= 2048 (the tests run it on float32 under the
    interpreter)."""
    B, C, H, L = g.shape
    N1, M = _MONARCH_SPLIT[N]
    R1 = _monarch_r1(L, N1, M)
    f1, fm, tw = _monarch_consts(N1, M, u.device)
    dk = torch.zeros((C, S, H, L), device=u.device, dtype=out_dtype)
    if dk.numel() == 0 or B == 0:
        return dk
    fu, fg, un = _corr_pair_scales(g, u)
    BK, warps = _MONARCH_CORR_CFG[N]
    _monarch_corr_kernel[(C * H,)](u, g, fu, fg, un, f1, fm, tw, dk, B, H, C * H, L, 1.0 / N, N1=N1, M=M, R1=R1,
                                   BK=BK,
                                   TAIL=S == 2, PREC="tf32" if out_dtype in _HALF else "tf32x3",  # (see caller)
                                   num_warps=warps, num_stages=1)
    return dk


def _conv_bwd(g, u, uf, kf, D, want_du: bool, want_dk: bool, want_dD: bool, n: int):
    """(du in the compute dtype or None, dkfull = irfft(sum_b conj(U_b) G_b, n) (C, H, n) or None, dD or None)."""
    B, H, L = u.shape
    C = g.shape[1]
    cdt = _cdt(u)
    cplx = _cplx(cdt)
    gc = g.to(cdt).contiguous()
    uc = u.to(cdt).contiguous()
    F = n // 2 + 1
    du = dkfull = dD = None
    if want_du or want_dk:
        gf = torch.fft.rfft(gc, n=n).contiguous()
    if want_du:
        acc = torch.empty((B, H, F), device=u.device, dtype=cplx)
        _conj_sum_kernel[(B * H, triton.cdiv(F, _BLOCK))](torch.view_as_real(kf), torch.view_as_real(gf),
                                                         torch.view_as_real(acc), B, C, H, F, OVER_C=True,
                                                         BLOCK=_BLOCK)
        du = torch.fft.irfft(acc, n=n, norm="forward")[..., :L]
        if D is not None:
            du = du + torch.einsum("ch,bchl->bhl", D.to(cdt), gc)
    if want_dk:
        ufc = uf.contiguous() if uf.numel() else torch.fft.rfft(uc, n=n).contiguous()
        acc = torch.empty((C, H, F), device=u.device, dtype=cplx)
        _conj_sum_kernel[(C * H, triton.cdiv(F, _BLOCK))](torch.view_as_real(ufc), torch.view_as_real(gf),
                                                         torch.view_as_real(acc), B, C, H, F, OVER_C=False,
                                                         BLOCK=_BLOCK)
        dkfull = torch.fft.irfft(acc, n=n)
    if want_dD:
        # float32: a compensated float32 sum (no float64 copies of g and u, no float64 GEMM: 1/64 rate on consumer
        # GPUs), as accurate as the float64 einsum it replaces rounded to float32 (session 37)
        dD = _dd_f32(gc, uc) if cdt == torch.float32 else torch.einsum("bchl,bhl->ch", gc, uc)
    return du, dkfull, dD


def _dk_from_full(full, S: int, L: int, n: int):
    """(C, H, n) circular correlation -> dk (C, S, H, L): k0 at l, k1 at n - 1 - l (k1[L - 1] unused: 0)."""
    parts = [full[..., :L]]
    if S == 2:
        k1 = torch.zeros_like(parts[0])
        if L > 1:
            k1[..., :L - 1] = full[..., n - L + 1:].flip(-1)
        parts.append(k1)
    return torch.stack(parts, dim=1)


def fftconv_bwd(g, u, uf, k, D, mask: int):
    B, H, L = u.shape
    C, S = k.shape[0], k.shape[1]
    want_du, want_dk, want_dD = bool(mask & 1), bool(mask & 2), bool(mask & 4) and D is not None
    du = torch.zeros_like(u) if want_du else u.new_empty(0)
    dk = torch.zeros_like(k) if want_dk else k.new_empty(0)
    dD = torch.zeros_like(D) if want_dD else u.new_empty(0)
    if B * H * L * C == 0:
        return du, dk, dD
    n = fft_size(L)
    cdt = _cdt(u)
    # du of one output channel: the correlation with k through the tensor-core DFTs (conjugate spectrum)
    N = _monarch_fft_size(u, 1) if want_du and C == 1 and g.dtype == u.dtype else 0
    if N:
        kfm = _monarch_spectrum(k, L, N, *_MONARCH_SPLIT[N])
        du = _monarch_conv(g.reshape(B, H, L).contiguous(), kfm, None if D is None else D.contiguous(), N,
                           conj=True).view(B, H, L)
        want_du = False
    # dk: the batch-summed correlation through the tensor-core DFTs (the one-pass sizes)
    Nk = monarch_size(L, u.dtype) if want_dk and g.dtype == u.dtype and k.dtype in _HALF else 0
    if 0 < Nk <= 4096:
        dk = _monarch_corr(g.contiguous(), u.contiguous(), S, Nk, k.dtype)
        want_dk = False
    kf = _kernel_spectrum(k, L, n, cdt) if want_du else None
    r_du, full, r_dD = _conv_bwd(g, u, uf, kf, D, want_du, want_dk, want_dD, n)
    if want_du:
        du = r_du.to(u.dtype)
    if want_dk:
        dk = _dk_from_full(full, S, L, n).to(k.dtype)
    if want_dD:
        dD = r_dD.to(D.dtype)
    return du, dk, dD


# ---------------------------------------------------------------- the ZOH discretisation in one launch
@triton.jit
def _cmul64(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _cdiv64(ar, ai, br, bi):
    """(a / b) by Smith's scaling (no overflow of |b|^2): r = the smaller part of b over the larger one."""
    big = tl.abs(br) >= tl.abs(bi)
    bl = tl.where(big, br, bi)
    bs = tl.where(big, bi, br)
    r = bs / bl
    den = bl + bs * r
    re = tl.where(big, ar + ai * r, ar * r + ai) / den
    im = tl.where(big, ai - ar * r, ai * r - ar) / den
    return re, im


@triton.jit
def _expm1_64(a, u):
    """exp(a) - 1 from u = exp(a) without cancellation (Kahan: (u - 1) a / log u, a few ulps)."""
    um1 = u - 1.0
    r = um1 * a / tl.log(u)
    r = tl.where(um1 == 0.0, a, r)
    return tl.where(um1 == -1.0, -1.0, r)


@triton.jit
def _disc_fwd_lanes(ldt_ptr, a_ptr, b_ptr, c_ptr, H, N, TOTAL, BLOCK: tl.constexpr):
    """The discretisation forward's lanes: element e of C (lead, h, n), its mask, dt = exp(log_dt[h]) and A, B, C
    widened to float64 (masked lanes: A = -1 + i, no zero denominators)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < TOTAL
    hn = e % (H * N)
    h = hn // N
    dt = tl.exp(tl.load(ldt_ptr + h, mask=m, other=0.0).to(tl.float64))
    ar = tl.load(a_ptr + hn * 2, mask=m, other=-1.0).to(tl.float64)
    ai = tl.load(a_ptr + hn * 2 + 1, mask=m, other=1.0).to(tl.float64)
    br = tl.load(b_ptr + hn * 2, mask=m, other=0.0).to(tl.float64)
    bi = tl.load(b_ptr + hn * 2 + 1, mask=m, other=0.0).to(tl.float64)
    cr = tl.load(c_ptr + e * 2, mask=m, other=0.0).to(tl.float64)
    ci = tl.load(c_ptr + e * 2 + 1, mask=m, other=0.0).to(tl.float64)
    return e, m, dt, ar, ai, br, bi, cr, ci


@triton.jit
def _disc_fwd_store(v_ptr, x_ptr, e, m, HN, vr, vi, xr, xi):
    """v at every lane, x at the lanes of the first H*N elements (float64 re, im pairs)."""
    tl.store(v_ptr + e * 2, vr, mask=m)
    tl.store(v_ptr + e * 2 + 1, vi, mask=m)
    mx = m & (e < HN)
    tl.store(x_ptr + e * 2, xr, mask=mx)
    tl.store(x_ptr + e * 2 + 1, xi, mask=mx)


@triton.jit
def _zoh_fwd_kernel(ldt_ptr, a_ptr, b_ptr, c_ptr, v_ptr, x_ptr, H, N, TOTAL, BLOCK: tl.constexpr):
    """ZOH discretisation (v, x) in float64: z = dt A (dt = exp(log_dt[h])), x = z,
    v = C (B expm1(z) / A) with expm1(z) = (expm1(Re z) cos(Im z) - 2 sin^2(Im z / 2), exp(Re z) sin(Im z))
    (the reference's expm1c).  One element of C (lead, h, n) per lane; the lanes of the first H*N elements
    also write x.  Inputs of any precision, widened (exactly) on load; v, x as float64 (re, im) pairs."""
    e, m, dt, ar, ai, br, bi, cr, ci = _disc_fwd_lanes(ldt_ptr, a_ptr, b_ptr, c_ptr, H, N, TOTAL, BLOCK)
    zr = dt * ar
    zi = dt * ai
    u = tl.exp(zr)
    s = tl.sin(0.5 * zi)
    er = _expm1_64(zr, u) * tl.cos(zi) - 2.0 * (s * s)
    ei = u * tl.sin(zi)
    wr, wi = _cmul64(br, bi, er, ei)
    wr, wi = _cdiv64(wr, wi, ar, ai)
    vr, vi = _cmul64(cr, ci, wr, wi)
    _disc_fwd_store(v_ptr, x_ptr, e, m, H * N, vr, vi, zr, zi)


@triton.jit
def _log1p64(t):
    """log(1 + t) without cancellation (Kahan: log(y) t / (y - 1) with y = 1 + t, a few ulps)."""
    y = 1.0 + t
    ym1 = y - 1.0
    return tl.where(ym1 == 0.0, t, tl.log(y) * (t / tl.where(ym1 == 0.0, 1.0, ym1)))


@triton.jit
def _f64(value: tl.constexpr):
    """A float64 constant (a bare Python float may become a rounded float32 constant, e.g. in tl.where)."""
    return tl.full([], value, tl.float64)


@triton.jit
def _atan2_64(y, x):
    """atan2(y, x) in float64: t = min / max of |x|, |y| in [0, 1], atan(t) = atan(k/8) + atan(s) with
    k = round(8 t), s = (t - k/8) / (1 + t k/8) (|s| <= 1/16; t - k/8 exact), atan(s) by its series to s^17
    (remainder < 1e-22 |s|), then the octant; atan(k/8) as the float64 constants nearest them."""
    ax = tl.abs(x)
    ay = tl.abs(y)
    hi = tl.maximum(ax, ay)
    lo = tl.minimum(ax, ay)
    t = lo / tl.where(hi == 0.0, 1.0, hi)
    k = tl.floor(t * 8.0 + 0.5)
    c = k * 0.125
    s = (t - c) / (1.0 + t * c)
    s2 = s * s
    p = _f64(1.0 / 17.0)
    p = _f64(1.0 / 15.0) - s2 * p
    p = _f64(1.0 / 13.0) - s2 * p
    p = _f64(1.0 / 11.0) - s2 * p
    p = _f64(1.0 / 9.0) - s2 * p
    p = _f64(1.0 / 7.0) - s2 * p
    p = _f64(1.0 / 5.0) - s2 * p
    p = _f64(1.0 / 3.0) - s2 * p
    a = s - s * (s2 * p)
    base = tl.where(k == 1.0, _f64(0.12435499454676144), _f64(0.0))
    base = tl.where(k == 2.0, _f64(0.24497866312686414), base)
    base = tl.where(k == 3.0, _f64(0.35877067027057225), base)
    base = tl.where(k == 4.0, _f64(0.4636476090008061), base)
    base = tl.where(k == 5.0, _f64(0.5585993153435624), base)
    base = tl.where(k == 6.0, _f64(0.6435011087932844), base)
    base = tl.where(k == 7.0, _f64(0.7188299996216245), base)
    base = tl.where(k == 8.0, _f64(0.7853981633974483), base)
    a = base + a
    a = tl.where(ay > ax, _f64(1.5707963267948966) - a, a)
    a = tl.where(x < 0.0, _f64(3.141592653589793) - a, a)
    return tl.where(y < 0.0, -a, a)


@triton.jit
def _bilinear_fwd_kernel(ldt_ptr, a_ptr, b_ptr, c_ptr, v_ptr, x_ptr, H, N, TOTAL, BLOCK: tl.constexpr):
    """Bilinear discretisation (v, x) in float64: w = dt A / 2 = p + i q, x = 2 atanh(w) =
    (log1p(4p / ((1 - p)^2 + q^2)) / 2, atan2(2q, (1 - p)(1 + p) - q^2)), v = C (B dt / (1 - w)); where that
    log1p's argument is below -1/2, log(((1 + p)^2 + q^2) / ((1 - p)^2 + q^2)) / 2 instead (1 + p exact there).
    Lanes as in _zoh_fwd_kernel."""
    e, m, dt, ar, ai, br, bi, cr, ci = _disc_fwd_lanes(ldt_ptr, a_ptr, b_ptr, c_ptr, H, N, TOTAL, BLOCK)
    p = (dt * ar) / 2.0
    q = (dt * ai) / 2.0
    wr, wi = _cdiv64(br * dt, bi * dt, 1.0 - p, -q)
    vr, vi = _cmul64(cr, ci, wr, wi)
    omp = 1.0 - p
    opp = 1.0 + p
    den = omp * omp + q * q
    t = 4.0 * p / den  # |1 + w|^2 / |1 - w|^2 - 1: log1p(t) near 0, the ratio's log near t = -1 (w near -1)
    xr = 0.5 * tl.where(t < -0.5, tl.log((opp * opp + q * q) / den), _log1p64(t))
    xi = _atan2_64(2.0 * q, omp * opp - q * q)
    _disc_fwd_store(v_ptr, x_ptr, e, m, H * N, vr, vi, xr, xi)


@triton.jit
def _disc_bwd_kernel(ldt_ptr, a_ptr, b_ptr, c_ptr, gv_ptr, gx_ptr, dld_ptr, da_ptr, db_ptr, dc_ptr, H, N, CL,
                     ZOH, HAS_GV, HAS_GX, MASK, BLOCK_N: tl.constexpr):
    """The discretisation's chain rule (ssm_discretize_bwd's closed form) in float64, one program per channel h
    (its modes in tiles of BLOCK_N, the C lead index c < CL in a loop).  ZOH, HAS_GV, HAS_GX and MASK (bit i:
    write the gradient of log_dt, A, B, C) are runtime ints: one binary per dtype combination."""
    h = tl.program_id(0).to(tl.int64)
    dt = tl.exp(tl.load(ldt_ptr + h).to(tl.float64))
    dld = tl.zeros((BLOCK_N,), dtype=tl.float64)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        nm = n < N
        hn = h * N + n
        ar = tl.load(a_ptr + hn * 2, mask=nm, other=-1.0).to(tl.float64)
        ai = tl.load(a_ptr + hn * 2 + 1, mask=nm, other=1.0).to(tl.float64)
        br = tl.load(b_ptr + hn * 2, mask=nm, other=0.0).to(tl.float64)
        bi = tl.load(b_ptr + hn * 2 + 1, mask=nm, other=0.0).to(tl.float64)
        zr = dt * ar
        zi = dt * ai
        if ZOH != 0:  # dw/dB = expm1(z) / A, dw/dz = B exp(z) / A, dw/dA = -w / A, dx/dz = 1, dw/ddt = 0
            u = tl.exp(zr)
            s = tl.sin(0.5 * zi)
            co = tl.cos(zi)
            si = tl.sin(zi)
            qbr, qbi = _cdiv64(_expm1_64(zr, u) * co - 2.0 * (s * s), u * si, ar, ai)
            wr, wi = _cmul64(br, bi, qbr, qbi)
            t1, t2 = _cmul64(br, bi, u * co, u * si)
            qzr, qzi = _cdiv64(t1, t2, ar, ai)
            qar, qai = _cdiv64(-wr, -wi, ar, ai)
            qxr = tl.full((BLOCK_N,), 1.0, tl.float64)
            qxi = tl.zeros((BLOCK_N,), dtype=tl.float64)
            qtr = tl.zeros((BLOCK_N,), dtype=tl.float64)
            qti = tl.zeros((BLOCK_N,), dtype=tl.float64)
        else:  # den = 1 - z/2: dw/dB = dt / den, dw/dz = (w / 2) / den, dx/dz = 1 / (den (1 + z/2)), dw/ddt = B / den
            denr = 1.0 - 0.5 * zr
            deni = -(0.5 * zi)
            qbr, qbi = _cdiv64(tl.zeros((BLOCK_N,), dtype=tl.float64) + dt, tl.zeros((BLOCK_N,), dtype=tl.float64),
                               denr, deni)
            wr, wi = _cmul64(br, bi, qbr, qbi)
            pr, pi = _cmul64(denr, deni, 1.0 + 0.5 * zr, 0.5 * zi)
            qxr, qxi = _cdiv64(tl.full((BLOCK_N,), 1.0, tl.float64), tl.zeros((BLOCK_N,), dtype=tl.float64), pr, pi)
            qzr, qzi = _cdiv64(0.5 * wr, 0.5 * wi, denr, deni)
            qar = tl.zeros((BLOCK_N,), dtype=tl.float64)
            qai = tl.zeros((BLOCK_N,), dtype=tl.float64)
            qtr, qti = _cdiv64(br, bi, denr, deni)
        gwr = tl.zeros((BLOCK_N,), dtype=tl.float64)
        gwi = tl.zeros((BLOCK_N,), dtype=tl.float64)
        if HAS_GV != 0:
            for c in range(0, CL):
                e = c * H * N + hn
                gr = tl.load(gv_ptr + e * 2, mask=nm, other=0.0).to(tl.float64)
                gi = tl.load(gv_ptr + e * 2 + 1, mask=nm, other=0.0).to(tl.float64)
                cr = tl.load(c_ptr + e * 2, mask=nm, other=0.0).to(tl.float64)
                ci = tl.load(c_ptr + e * 2 + 1, mask=nm, other=0.0).to(tl.float64)
                gwr += cr * gr + ci * gi
                gwi += cr * gi - ci * gr
                if (MASK & 8) != 0:
                    tl.store(dc_ptr + e * 2, (wr * gr + wi * gi).to(dc_ptr.dtype.element_ty), mask=nm)
                    tl.store(dc_ptr + e * 2 + 1, (wr * gi - wi * gr).to(dc_ptr.dtype.element_ty), mask=nm)
        elif (MASK & 8) != 0:
            for c in range(0, CL):
                e = c * H * N + hn
                tl.store(dc_ptr + e * 2, tl.zeros((BLOCK_N,), dtype=dc_ptr.dtype.element_ty), mask=nm)
                tl.store(dc_ptr + e * 2 + 1, tl.zeros((BLOCK_N,), dtype=dc_ptr.dtype.element_ty), mask=nm)
        gzr = qzr * gwr + qzi * gwi  # conj(dw/dz) gw (+ conj(dx/dz) gx)
        gzi = qzr * gwi - qzi * gwr
        if HAS_GX != 0:
            xr = tl.load(gx_ptr + hn * 2, mask=nm, other=0.0).to(tl.float64)
            xi = tl.load(gx_ptr + hn * 2 + 1, mask=nm, other=0.0).to(tl.float64)
            gzr += qxr * xr + qxi * xi
            gzi += qxr * xi - qxi * xr
        if (MASK & 2) != 0:  # dA = dt gz + conj(dw/dA) gw
            tl.store(da_ptr + hn * 2, (dt * gzr + (qar * gwr + qai * gwi)).to(da_ptr.dtype.element_ty), mask=nm)
            tl.store(da_ptr + hn * 2 + 1, (dt * gzi + (qar * gwi - qai * gwr)).to(da_ptr.dtype.element_ty), mask=nm)
        if (MASK & 4) != 0:  # dB = conj(dw/dB) gw
            tl.store(db_ptr + hn * 2, (qbr * gwr + qbi * gwi).to(db_ptr.dtype.element_ty), mask=nm)
            tl.store(db_ptr + hn * 2 + 1, (qbr * gwi - qbi * gwr).to(db_ptr.dtype.element_ty), mask=nm)
        # Re(conj(A) gz) + Re(conj(dw/ddt) gw)
        dld += tl.where(nm, (ar * gzr + ai * gzi) + (qtr * gwr + qti * gwi), 0.0)
    if (MASK & 1) != 0:
        tl.store(dld_ptr + h, (dt * tl.sum(dld, axis=0)).to(dld_ptr.dtype.element_ty))


# ---------------------------------------------------------------- discretisation and the fused pair
_DISC_BLOCK = 128
_DISC_BN = 32


def ssm_discretize_fwd(log_dt, A, B, C, disc: str):
    """(v, x) in complex128: one launch of ``_zoh_fwd_kernel`` / ``_bilinear_fwd_kernel`` (float64), or O(H N)
    torch on the device under GEOOPS_SSM_TRITON_FUSED_FACTORS=0."""
    H, N = A.shape
    if H * N > 0 and _fused_factors():
        v = torch.empty(C.shape + (2,), device=C.device, dtype=torch.float64)
        x = torch.empty((H, N, 2), device=A.device, dtype=torch.float64)
        total = C.numel()
        kern = _zoh_fwd_kernel if disc == "zoh" else _bilinear_fwd_kernel
        kern[(triton.cdiv(total, _DISC_BLOCK),)](log_dt.contiguous(), _pairs(A), _pairs(B), _pairs(C), v, x, H, N, total,
                                                BLOCK=_DISC_BLOCK)
        return torch.view_as_complex(v), torch.view_as_complex(x)
    with torch.no_grad():
        return discretize_log(log_dt, A, B, C, disc)


def ssm_discretize_bwd(gv, gx, log_dt, A, B, C, disc: str, mask: int):
    """The discretisation's chain rule in closed form (torch's conjugate-Wirtinger convention): one launch of
    ``_disc_bwd_kernel``, or torch in complex128 under GEOOPS_SSM_TRITON_FUSED_FACTORS=0."""
    H, N = A.shape
    if H * N > 0 and mask & 15 and _fused_factors():
        outs = [t.new_empty(t.shape) if mask & (1 << i) else t.new_empty(0) for i, t in enumerate((log_dt, A, B, C))]
        dld, dA, dB, dC = outs
        ap = _pairs(A)
        gvp = _pairs(gv) if gv.numel() else ap
        gxp = _pairs(gx) if gx.numel() else ap
        _disc_bwd_kernel[(H,)](log_dt.contiguous(), ap, _pairs(B), _pairs(C), gvp, gxp,
                               dld if mask & 1 else log_dt, _pairs(dA) if mask & 2 else ap,
                               _pairs(dB) if mask & 4 else ap, _pairs(dC) if mask & 8 else ap, H, N,
                               C.numel() // (H * N), 1 if disc == "zoh" else 0, 1 if gv.numel() else 0,
                               1 if gx.numel() else 0, mask & 15, BLOCK_N=_DISC_BN)
        return tuple(outs)
    cd = torch.complex128
    dt = torch.exp(log_dt.to(torch.float64)).unsqueeze(-1)
    A2, B2, C2 = A.to(cd), B.to(cd), C.to(cd)
    z = dt * A2
    if disc == "zoh":
        dw_dB = expm1c(z) / A2
        w = B2 * dw_dB
        dx_dz, dw_dz, dw_dA, dw_ddt = torch.ones_like(z), B2 * torch.exp(z) / A2, -w / A2, torch.zeros_like(z)
    else:
        den = 1.0 - 0.5 * z
        dw_dB = dt / den
        w = B2 * dw_dB
        dx_dz, dw_dz, dw_dA, dw_ddt = 1.0 / (den * (1.0 + 0.5 * z)), 0.5 * w / den, torch.zeros_like(z), B2 / den
    lead = tuple(range(C.dim() - 2))
    if gv.numel():
        gvc = gv.to(cd)
        gw = (C2.conj() * gvc).sum(lead) if lead else C2.conj() * gvc
        dC = w.conj() * gvc
    else:
        gw = torch.zeros_like(z)
        dC = torch.zeros_like(C2)
    gz = dw_dz.conj() * gw + (dx_dz.conj() * gx.to(cd) if gx.numel() else 0)
    dA = dt * gz + dw_dA.conj() * gw
    dB = dw_dB.conj() * gw
    dld = dt.squeeze(-1) * ((A2.conj() * gz).real + (dw_ddt.conj() * gw).real).sum(-1)
    outs = (dld, dA, dB, dC)
    return tuple(o.to(t.dtype) if mask & (1 << i) else t.new_empty(0)
                 for i, (o, t) in enumerate(zip(outs, (log_dt, A, B, C))))


def ssm_conv_fwd(u, v, x, D, save_uf: bool, keep_kf: bool = True):
    B, H, L = u.shape
    C, S, _, N = v.shape
    cdt = _cdt(u)
    n = fft_size(L)
    if B * H * L * C == 0:
        F = n // 2 + 1
        return (torch.zeros((B, C, H, L), device=u.device, dtype=u.dtype),
                torch.zeros((C, H, F) if keep_kf else (0,), device=u.device, dtype=_cplx(cdt)),
                torch.zeros((B, H, F), device=u.device, dtype=_cplx(cdt)) if save_uf
                else u.new_empty(0, dtype=_cplx(cdt)))
    # The fused pair: the Vandermonde GEMM stores K straight into the zero-padded circular FFT input (the causal
    # kernel at [0, L), the anti-causal one reversed at n-1-l for l <= L-2), so no (C, S, H, L) K tensor exists.
    circ = torch.zeros((C, H, n), device=u.device, dtype=cdt)
    if N > 0:
        W, Z, T, _ = _vandermonde_operands(v.reshape(C * S, H, N), x, L, cdt)
        W = W.view(C, S, H, -1, 2 * N)
        _bmm(W[:, 0].reshape(C * H, -1, 2 * N), Z, H, into=(circ, 0, (n, T, 1), L))
        if S == 2:
            _bmm(W[:, 1].reshape(C * H, -1, 2 * N), Z, H, into=(circ, n - 1, (n, -T, -1), L - 1))
    Nm = _monarch_fft_size(u, C)
    if Nm:  # half u: the tensor-core convolution on the same circular K, moved to its power-of-two size
        circN = circ
        if Nm != n:
            circN = torch.zeros((C, H, Nm), device=u.device, dtype=cdt)
            circN[..., :L] = circ[..., :L]
            if S == 2 and L > 1:
                circN[..., Nm - L + 1:] = circ[..., n - L + 1:]
        y = _monarch_conv(u.contiguous(), _monarch_kf(circN, *_MONARCH_SPLIT[Nm]),
                          None if D is None else D.contiguous(), Nm)
        kf = torch.fft.rfft(circ, n=n, norm="forward").contiguous() if keep_kf else None
        return y, (kf if keep_kf else circ.new_empty(0, dtype=_cplx(cdt))), _no_uf(u, save_uf, cdt)
    kf = torch.fft.rfft(circ, n=n, norm="forward").contiguous()
    y, uf = _conv_fwd(u, kf, D, save_uf, n)
    return y, (kf if keep_kf else kf.new_empty(0)), uf


def ssm_conv_bwd(g, u, uf, kf, v, x, D, mask: int):
    B, H, L = u.shape
    C, S, _, N = v.shape
    want_du, want_dv, want_dx = bool(mask & 1), bool(mask & 2), bool(mask & 4)
    want_dD = bool(mask & 8) and D is not None
    du = torch.zeros_like(u) if want_du else u.new_empty(0)
    dv = torch.zeros_like(v) if want_dv else v.new_empty(0)
    dx = torch.zeros_like(x) if want_dx else x.new_empty(0)
    dD = torch.zeros_like(D) if want_dD else u.new_empty(0)
    if B * H * L * C == 0 or mask == 0:
        return du, dv, dx, dD
    n = fft_size(L)
    want_dk = (want_dv or want_dx) and N > 0
    r_du, full, r_dD = _conv_bwd(g, u, uf, kf, D, want_du, want_dk, want_dD, n)
    if want_du:
        du = r_du.to(u.dtype)
    if want_dk:  # (float32 dK: the cuFFT path, see _monarch_corr)
        dk = _dk_from_full(full, S, L, n).reshape(C * S, H, L)
        rdv, rdx = vandermonde_bwd(dk, v.reshape(C * S, H, N), x, (1 if want_dv else 0) | (2 if want_dx else 0))
        if want_dv:
            dv = rdv.view(v.shape).to(v.dtype)
        if want_dx:
            dx = rdx.to(x.dtype)
    if want_dD:
        dD = r_dD.to(D.dtype)
    return du, dv, dx, dD


# ---------------------------------------------------------------- CI compile check hook
def compile_variants():
    """Every Triton variant the launchers of this module can run, for the CI compile check.

    The launchers are the op functions themselves (they call torch's FFTs on the CPU tensors around the
    patched launches).  Per compute dtype (float32 / float64): vandermonde forward and backward
    (``_bmm_kernel``, IEEE fp32 ``tl.dot`` or the fp64 product), fftconv forward with and without D for
    every u dtype (``_spec_mul_kernel``, ``_trunc_skip_kernel`` storing u's dtype) and backward with every
    gradient (``_conj_sum_kernel`` both ways; half u computes in float32, the same binaries), and the
    ssm_conv pair (the same kernels through its own launch path); session 32's factor and discretisation
    kernels (``_fwd_factors_kernel``, ``_bwd_factors_kernel``, ``_bwd_reduce_kernel``, ``_zoh_fwd_kernel``,
    ``_bilinear_fwd_kernel``, ``_disc_bwd_kernel``) through the same launchers, plus complex64 inputs.
    Expectations: 64-bit program-id arithmetic, no spills, no approximate float32 division.
    """
    expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 0}
    entries = []
    B, H, N, L = 2, 3, 4, 40
    for dtype in (torch.float32, torch.float64):
        dn = str(dtype).replace("torch.", "")
        cd = torch.complex128 if dtype == torch.float64 else torch.complex64
        v = torch.zeros(2, H, N, dtype=cd)
        x = torch.zeros(H, N, dtype=cd)
        gK = torch.zeros(2, H, L, dtype=dtype)
        out64 = dtype == torch.float64
        entries.append({"label": f"vandermonde/{dn} fwd", "expect": expect,
                        "launch": lambda v=v, x=x, o=out64: vandermonde_fwd(v, x, L, o)})
        entries.append({"label": f"vandermonde/{dn} bwd", "expect": expect,
                        "launch": lambda g=gK, v=v, x=x: vandermonde_bwd(g, v, x, 3)})
        k = torch.zeros(2, 2, H, L, dtype=dtype)
        D = torch.zeros(2, H, dtype=dtype)
        u = torch.zeros(B, H, L, dtype=dtype)
        g = torch.zeros(B, 2, H, L, dtype=dtype)
        entries.append({"label": f"fftconv/{dn} bwd", "expect": expect,
                        "launch": lambda g=g, u=u, k=k, D=D: fftconv_bwd(g, u, u.new_empty(0, dtype=_cplx(u.dtype)),
                                                                         k, D, 7)})
        v4 = torch.zeros(2, 2, H, N, dtype=torch.complex128)
        x2 = torch.zeros(H, N, dtype=torch.complex128)
        entries.append({"label": f"ssm_conv/{dn} fwd", "expect": expect,
                        "launch": lambda u=u, v4=v4, x2=x2, D=D: ssm_conv_fwd(u, v4, x2, D, True)})
        kf = torch.zeros(2, H, fft_size(L) // 2 + 1, dtype=_cplx(dtype))
        entries.append({"label": f"ssm_conv/{dn} bwd", "expect": expect,
                        "launch": lambda g=g, u=u, kf=kf, v4=v4, x2=x2, D=D: ssm_conv_bwd(
                            g, u, u.new_empty(0, dtype=_cplx(u.dtype)), kf, v4, x2, D, 15)})
    # session 32: the factor kernels (GEOOPS_SSM_TRITON_FUSED_FACTORS on, the default).  vandermonde with complex64
    # v, x (the public op's float32 inputs: loads widened in the kernels), the discretisation kernels per
    # parameter precision (log_dt float32 / float64, A, B, C complex64 / complex128; the chain rule's outputs
    # in those dtypes), both discretisations, the reduce kernel with dv alone, dx alone, both.
    for cd in (torch.complex64, torch.complex128):
        cn = str(cd).replace("torch.", "")
        rd = torch.float64 if cd == torch.complex128 else torch.float32
        v = torch.zeros(2, H, N, dtype=cd)
        x = torch.zeros(H, N, dtype=cd)
        entries.append({"label": f"vandermonde/{cn} inputs fwd", "expect": expect,
                        "launch": lambda v=v, x=x: vandermonde_fwd(v, x, L, False)})
        gK = torch.zeros(2, H, L, dtype=torch.float32)
        for mask in (1, 2):
            entries.append({"label": f"vandermonde/{cn} inputs bwd mask {mask}", "expect": expect,
                            "launch": lambda g=gK, v=v, x=x, m=mask: vandermonde_bwd(g, v, x, m)})
        ldt = torch.zeros(H, dtype=rd)
        A = torch.full((H, N), -0.5 + 1j, dtype=cd)
        Bp = torch.zeros(H, N, dtype=cd)
        Cp = torch.zeros(2, H, N, dtype=cd)
        gv = torch.zeros(2, H, N, dtype=torch.complex128)
        gx = torch.zeros(H, N, dtype=torch.complex128)
        for disc in ("zoh", "bilinear"):
            entries.append({"label": f"discretize/{cn}/{disc} fwd", "expect": expect,
                            "launch": lambda a=(ldt, A, Bp, Cp), d=disc: ssm_discretize_fwd(*a, d)})
        entries.append({"label": f"discretize/{cn} bwd", "expect": expect,
                        "launch": lambda a=(ldt, A, Bp, Cp), gv=gv, gx=gx: ssm_discretize_bwd(gv, gx, *a, "zoh", 15)})
    for udt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        un = str(udt).replace("torch.", "")
        kd = torch.float64 if udt == torch.float64 else torch.float32
        u = torch.zeros(B, H, L, dtype=udt)
        k = torch.zeros(1, 1, H, L, dtype=kd)
        D = torch.zeros(1, H, dtype=kd)
        for withD in (True, False):
            entries.append({"label": f"fftconv/{un}/{'D' if withD else 'noD'} fwd", "expect": expect,
                            "launch": lambda u=u, k=k, D=(D if withD else None): fftconv_fwd(u, k, D, False)})
    # session 34: the tensor-core convolution (half u), every FFT size (its split and configuration), forward with
    # and without D, the backward's du (the conjugate spectrum)
    for N in sorted(_MONARCH_SPLIT):
        Lm = N // 2 - (N == 32768) * 384  # 16000: Speech Commands' length
        k = torch.zeros(1, 1, H, Lm)
        D = torch.zeros(1, H)
        for udt in ((torch.bfloat16, torch.float16) if N == 2048 else (torch.bfloat16,)):
            un = str(udt).replace("torch.", "")
            u = torch.zeros(B, H, Lm, dtype=udt)
            for withD in (True, False):
                entries.append({"label": f"fftconv monarch/{N}/{un}/{'D' if withD else 'noD'} fwd", "expect": expect,
                                "launch": lambda u=u, k=k, D=(D if withD else None): fftconv_fwd(u, k, D, False)})
            entries.append({"label": f"fftconv monarch/{N}/{un} du", "expect": expect,
                            "launch": lambda u=u, k=k, D=D, Lm=Lm: fftconv_bwd(u.new_zeros(B, 1, H, Lm), u,
                                                                                 u.new_empty(0), k, D, 1)})
            if N <= 4096:  # the backward's dk (the correlation kernel), causal and bidirectional
                for S_ in (1, 2):
                    ks = torch.zeros(1, S_, H, Lm, dtype=udt)  # half k (a float32 dk stays on cuFFT)
                    entries.append({"label": f"fftconv monarch/{N}/{un}/S{S_} dk", "expect": expect,
                                    "launch": lambda u=u, k=ks, Lm=Lm: fftconv_bwd(u.new_zeros(B, 1, H, Lm), u,
                                                                                    u.new_empty(0), k, None, 2)})
    # ssm_conv on half u: the Vandermonde GEMM into the circular K, then the tensor-core convolution (one and two
    # passes)
    for Lm in (40, 3000):
        ub = torch.zeros(B, H, Lm, dtype=torch.bfloat16)
        v4 = torch.zeros(1, 2, H, N, dtype=torch.complex128)
        x2 = torch.zeros(H, N, dtype=torch.complex128)
        entries.append({"label": f"ssm_conv monarch/{monarch_size(Lm, torch.bfloat16)}/bfloat16 fwd", "expect": expect,
                        "launch": lambda u=ub, v4=v4, x2=x2: ssm_conv_fwd(u, v4, x2, torch.zeros(1, H), True)})
    # the two-pass form at the one-pass sizes of the target (GEOOPS_SSM_TRITON_MONARCH=2, for A/B runs)
    for N in (1024, 2048, 4096):
        u = torch.zeros(B, H, N // 2, dtype=torch.bfloat16)
        k = torch.zeros(1, 1, H, N // 2)
        D = torch.zeros(1, H)
        entries.append({"label": f"fftconv monarch two-pass/{N}/bfloat16/D fwd", "expect": expect,
                        "launch": lambda u=u, k=k, D=D: with_env("GEOOPS_SSM_TRITON_MONARCH", "2", fftconv_fwd,
                                                                 u, k, D, False)})
    return entries
