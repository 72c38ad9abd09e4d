"""Triton kernels of the diagonal SSM family (forward and backward).

Installed as ``geoops.kernels.ssm``; ``geoops._backend`` uses it for CUDA tensors, and for CPU tensors
under the Triton interpreter (``TRITON_INTERPRET=1``).  It implements the contract of
``geoops._ops.ssm`` (the same one as the C++ kernels)::

    vandermonde_fwd(v, x, L, out64) -> K (C, H, L)
    vandermonde_bwd(g, v, x, mask) -> (dv, dx)
    fftconv_fwd(u, k, D, save_uf) -> (y, uf)
    fftconv_bwd(g, u, uf, k, D, mask) -> (du, dk, dD)

Vandermonde.  As on CPU, l = j T + i with T ~ sqrt(L): the small factors P = exp(x j T) (J per mode) and
Q = exp(x i) (T per mode) are computed in float64 by torch (exact products x*m, O(H N sqrt L)), rounded
to the output precision, and the (J x 2N) . (2N x T) real products run in ``_bmm_kernel`` (tl.dot in
IEEE fp32 -- TF32 operands lose ~4e-4 at L = 64K, so not TF32 -- or fp64).  The backward's
(J x T) . (T x 4N) product runs in the same kernel; the short reductions over j are torch in float64.

FFT convolution.  The FFTs are torch's (cuFFT); the spectral product (with the channel broadcast),
the truncation + skip term + output cast, and the backward's channel / batch sums of conjugate products
(summed before the inverse FFT) are fused Triton kernels ``_spec_mul_kernel``, ``_trunc_skip_kernel`` and
``_conj_sum_kernel``.  Offsets are 64-bit.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["vandermonde_fwd", "vandermonde_bwd", "fftconv_fwd", "fftconv_bwd"]


# ---------------------------------------------------------------- batched GEMM
@triton.jit
def _bmm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, b_mod,
                sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    """c[p] = a[p] @ b[p % b_mod] for batch p = program_id(2)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    pb = p % b_mod
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + p * sab
    b_base = b_ptr + pb * sbb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if IEEE else tl.float64)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None].to(tl.int64) * sam + kk[None, :] * sak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_base + kk[:, None].to(tl.int64) * sbk + rn[None, :] * sbn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:  # float64: no tensor-core path
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    c = c_ptr + p * scb + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _bmm(a: torch.Tensor, b: torch.Tensor, b_mod: int) -> torch.Tensor:
    """(P, M, K) @ (Q, K, N) with b's batch index p % b_mod."""
    P, M, K = a.shape
    N = b.shape[2]
    c = torch.empty((P, M, N), device=a.device, dtype=a.dtype)
    if P == 0 or M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    ieee = a.dtype == torch.float32
    BM, BN = (32, 32) if ieee else (16, 16)
    BK = 16 if ieee else 8
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), P)
    _bmm_kernel[grid](a, b, c, M, N, K, b_mod, a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1),
                      b.stride(2), c.stride(0), c.stride(1), c.stride(2), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                      IEEE=ieee)
    return c


def _blocking(L: int):
    s = math.isqrt(max(L - 1, 0)) + 1 if L > 0 else 1
    for t in range(s, min(2 * s, L) + 1):
        if L % t == 0:
            return t, L // t
    for t in range(s - 1, max(1, s // 2) - 1, -1):
        if L % t == 0:
            return t, L // t
    return s, -(-L // s)


def _powers(x: torch.Tensor, step: int, count: int) -> torch.Tensor:
    """exp(x * step * k), k < count, in complex128 from the exact products (x (H, N) -> (H, N, count))."""
    m = torch.arange(count, device=x.device, dtype=torch.float64) * step
    return torch.exp(x.to(torch.complex128).unsqueeze(-1) * m)


def vandermonde_fwd(v, x, L: int, out64: bool):
    C, H, N = v.shape
    rdt = torch.float64 if out64 else torch.float32
    if L == 0 or C * H == 0 or N == 0:
        return torch.zeros((C, H, L), device=v.device, dtype=rdt)
    T, J = _blocking(L)
    Q = _powers(x, 1, T)  # (H, N, T)
    P = _powers(x, T, J)  # (H, N, J)
    Z = torch.cat([Q.real, Q.imag], dim=1).to(rdt).contiguous()  # (H, 2N, T)
    VP = v.to(torch.complex128).unsqueeze(-1) * P  # (C, H, N, J)
    W = torch.cat([2 * VP.real, -2 * VP.imag], dim=2).transpose(-1, -2).to(rdt).reshape(C * H, J, 2 * N).contiguous()
    K = _bmm(W, Z, H).view(C, H, J * T)
    return K[..., :L].contiguous() if J * T != L else K


def vandermonde_bwd(g, v, x, mask: int):
    C, H, N = v.shape
    L = g.shape[-1]
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
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
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
def _trunc_skip_kernel(full_ptr, u_ptr, d_ptr, y_ptr, C, H, L, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    """y[b, c, h, t] = full[b, c, h, t] (of 2L) + D[c, h] u[b, h, t], cast to y's dtype."""
    row = tl.program_id(0).to(tl.int64)  # (b, c, h)
    h = row % H
    ch = row % (C * H)
    b = row // (H * C)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = t < L
    val = tl.load(full_ptr + row * 2 * L + t, mask=m, other=0.0)
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
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
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


def _cdt(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _kernel_spectrum(k, L, cdt):
    kc = k.to(cdt)
    if k.shape[1] == 1:
        return torch.fft.rfft(kc[:, 0], n=2 * L)
    buf = torch.cat([kc[:, 0], kc[:, 1].flip(-1)], dim=-1)  # k0 on [0, L), flip(k1) on [L, 2L)
    return torch.fft.rfft(buf, n=2 * L)


_BLOCK = 256


def fftconv_fwd(u, k, D, save_uf: bool):
    B, H, L = u.shape
    C = k.shape[0]
    cdt = _cdt(u)
    cplx = torch.complex128 if cdt == torch.float64 else torch.complex64
    if B * H * L * C == 0:
        y = torch.zeros((B, C, H, L), device=u.device, dtype=u.dtype)
        uf = torch.zeros((B, H, L + 1), device=u.device, dtype=cplx) if save_uf else u.new_empty(0, dtype=cplx)
        return y, uf
    uc = u.to(cdt).contiguous()
    uf = torch.fft.rfft(uc, n=2 * L).contiguous()
    kf = _kernel_spectrum(k, L, cdt).contiguous()
    F = L + 1
    prod = torch.empty((B, C, H, F), device=u.device, dtype=cplx)
    _spec_mul_kernel[(B * C * H, triton.cdiv(F, _BLOCK))](
        torch.view_as_real(uf), torch.view_as_real(kf), torch.view_as_real(prod), C, H, F, BLOCK=_BLOCK)
    full = torch.fft.irfft(prod, n=2 * L).contiguous()
    y = torch.empty((B, C, H, L), device=u.device, dtype=u.dtype)
    Dc = D.to(cdt).contiguous() if D is not None else full
    _trunc_skip_kernel[(B * C * H, triton.cdiv(L, _BLOCK))](full, uc, Dc, y, C, H, L, HAS_D=D is not None,
                                                            BLOCK=_BLOCK)
    return y, (uf if save_uf else u.new_empty(0, dtype=cplx))


def fftconv_bwd(g, u, uf, k, D, mask: int):
    B, H, L = u.shape
    C, S = k.shape[0], k.shape[1]
    want_du, want_dk, want_dD = bool(mask & 1), bool(mask & 2), bool(mask & 4) and D is not None
    du = torch.zeros_like(u) if want_du else u.new_empty(0)
    dk = torch.zeros_like(k) if want_dk else k.new_empty(0)
    dD = torch.zeros_like(D) if want_dD else u.new_empty(0)
    if B * H * L * C == 0:
        return du, dk, dD
    cdt = _cdt(u)
    cplx = torch.complex128 if cdt == torch.float64 else torch.complex64
    gc = g.to(cdt).contiguous()
    uc = u.to(cdt).contiguous()
    F = L + 1
    if want_du or want_dk:
        gf = torch.fft.rfft(gc, n=2 * L).contiguous()
    if want_du:
        kf = _kernel_spectrum(k, L, cdt).contiguous()
        acc = torch.empty((B, H, F), device=u.device, dtype=cplx)
        _conj_sum_kernel[(B * H, triton.cdiv(F, _BLOCK))](torch.view_as_real(kf), torch.view_as_real(gf),
                                                         torch.view_as_real(acc), B, C, H, F, OVER_C=True,
                                                         BLOCK=_BLOCK)
        r = torch.fft.irfft(acc, n=2 * L)[..., :L]
        if D is not None:
            r = r + torch.einsum("ch,bchl->bhl", D.to(cdt), gc)
        du = r.to(u.dtype)
    if want_dk:
        ufc = uf.contiguous() if uf.numel() else torch.fft.rfft(uc, n=2 * L).contiguous()
        acc = torch.empty((C, H, F), device=u.device, dtype=cplx)
        _conj_sum_kernel[(C * H, triton.cdiv(F, _BLOCK))](torch.view_as_real(ufc), torch.view_as_real(gf),
                                                         torch.view_as_real(acc), B, C, H, F, OVER_C=False,
                                                         BLOCK=_BLOCK)
        full = torch.fft.irfft(acc, n=2 * L)
        dk[:, 0] = full[..., :L].to(k.dtype)
        if S == 2:
            dk[:, 1] = full[..., L:].flip(-1).to(k.dtype)
    if want_dD:
        dD = torch.einsum("bchl,bhl->ch", gc.double(), uc.double()).to(D.dtype)
    return du, dk, dD
