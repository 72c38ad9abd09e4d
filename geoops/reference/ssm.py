"""Eager reference of the diagonal state-space (S4D / DSS) family: readable torch, fp64-capable.

This is the oracle of the test-suite and the ``reference`` backend.  It
materialises the complex (H, N, L) Vandermonde tensor and the zero-padded
FFT operands exactly as the usual eager recipe does: simple, slow, and
memory-hungry (O(H*N*L)).  Run it in float64 / complex128 to get the oracle.

Conventions (shared with :mod:`geoops.ssm`):

* Half spectrum (S4D's convention): the N complex modes stand for N conjugate
  pairs, so the real kernel is ``K[h, l] = 2 * Re sum_n C~[h, n] * Abar[h, n]**l``.
* ZOH: ``Abar = exp(dt*A)``, ``C~ = C * B * (exp(dt*A) - 1) / A``;
  bilinear: ``Abar = (1 + dt*A/2) / (1 - dt*A/2)``, ``C~ = C * B * dt / (1 - dt*A/2)``;
  ``dt = exp(log_dt)`` per channel.
* fftconv: causal convolution ``y[t] = sum_{l<=t} k[l] u[t-l] + D u[t]`` by an
  FFT of size 2L; ``bidirectional=True`` takes a causal kernel ``k[..., 0, :, :]``
  and an anti-causal one ``k[..., 1, :, :]`` (state-spaces' layout): the
  length-2L circular kernel is ``k0`` padded with L zeros on the right plus
  ``flip(k1)`` padded with L zeros on the left, i.e.
  ``y[t] = sum_{l<=t} k0[l] u[t-l] + sum_{l<=L-2-t} k1[l] u[t+1+l] + D u[t]``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["vandermonde", "discretize", "discretize_log", "s4d_kernel", "fftconv", "ssm_conv", "expm1c", "fft_size"]


def vandermonde_blocking(L: int):
    """(T, J) with T * J >= L, T close to sqrt(L): the blocked Vandermonde form l = j*T + i.

    Prefers an exact factorisation L = T * J with T in [sqrt(L), 2 sqrt(L)] (then below sqrt(L) down to
    sqrt(L)/2); otherwise T = ceil(sqrt(L)) and J = ceil(L / T), whose last block overshoots L.
    """
    s = math.isqrt(max(L - 1, 0)) + 1 if L > 0 else 1
    for t in range(s, min(2 * s, L) + 1):
        if L % t == 0:
            return t, L // t
    for t in range(s - 1, max(1, s // 2) - 1, -1):
        if L % t == 0:
            return t, L // t
    return s, -(-L // s)


def fft_size(L: int) -> int:
    """FFT size of a causal length-L convolution: the smallest 2^a 3^b 5^c >= max(2, 2L - 1).

    (A causal product of two length-L signals has 2L - 1 terms, so n = 2L - 1 already avoids the circular
    wrap; a 2-3-5 size keeps the transform fast for any L.)
    """
    n = max(2, 2 * int(L) - 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def expm1c(z: torch.Tensor) -> torch.Tensor:
    """exp(z) - 1 for complex z without cancellation at small |z|."""
    a, b = z.real, z.imag
    re = torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2
    im = torch.exp(a) * torch.sin(b)
    return torch.complex(re, im)


def vandermonde(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """K[..., h, l] = 2 Re sum_n v[..., h, n] exp(x[h, n] * l), l = 0 .. L-1.

    v: (H, N) or (C, H, N) complex; x: (H, N) complex.  Returns (H, L) or (C, H, L) real.
    Materialises exp(x * l) as (H, N, L).
    """
    rdt = x.real.dtype
    ell = torch.arange(L, device=x.device, dtype=rdt)
    xl = x.unsqueeze(-1) * ell
    E = torch.exp(torch.where(ell == 0, torch.zeros_like(xl), xl))  # (H, N, L); exp(x * 0) = 1 even for x = -inf
    return 2.0 * torch.einsum("...hn,hnl->...hl", v.to(E.dtype), E).real


def discretize(log_dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, discretization: str = "zoh"):
    """(C~, Abar) of the discretised diagonal SSM: C~ (H, N) or (C_out, H, N), Abar (H, N)."""
    dt = torch.exp(log_dt).unsqueeze(-1).to(A.real.dtype)  # (H, 1)
    dtA = dt * A
    if discretization == "zoh":
        Abar = torch.exp(dtA)
        Bbar = expm1c(dtA) / A * B
    elif discretization == "bilinear":
        den = 1.0 - dtA / 2
        Abar = (1.0 + dtA / 2) / den
        Bbar = dt / den * B
    else:
        raise ValueError(f"discretization must be 'zoh' or 'bilinear', got {discretization!r}")
    return C * Bbar, Abar


def discretize_log(log_dt, A, B, C, discretization: str = "zoh"):
    """(v, x) in complex128 with ``K = vandermonde(v, x, L)``: x = log Abar, v = C~.

    x = ``dt A`` (ZOH) or ``2 artanh(dt A / 2)`` (bilinear: log((1 + z/2)/(1 - z/2)) with z = dt A); ZOH's
    exp(z) - 1 without cancellation.  Readable torch (autograd gives the reference backward).
    """
    cd = torch.complex128
    dt = torch.exp(log_dt.to(torch.float64)).unsqueeze(-1)
    A2, B2, C2 = A.to(cd), B.to(cd), C.to(cd)
    z = dt * A2
    if discretization == "zoh":
        x = z
        v = C2 * (B2 * expm1c(z) / A2)
    elif discretization == "bilinear":
        half = z / 2
        x = 2.0 * torch.atanh(half)
        v = C2 * (B2 * dt / (1.0 - half))
    else:
        raise ValueError(f"discretization must be 'zoh' or 'bilinear', got {discretization!r}")
    return v, x


def s4d_kernel(log_dt, A, B, C, L: int, discretization: str = "zoh") -> torch.Tensor:
    """K[..., h, l] = 2 Re sum_n C~[..., h, n] Abar[h, n]**l (the S4D kernel), materialising (H, N, L).

    Abar**l is formed as exp(l log Abar) with log Abar in closed form (``dt A``, or ``2 artanh(dt A / 2)``
    bilinear): where dt |Re A| > ~745 Abar underflows to 0 and the derivative of torch's complex ``0**l`` is NaN
    (session 35), while exp's is the right 0."""
    Ct, _ = discretize(log_dt, A, B, C, discretization)
    dtA = torch.exp(log_dt).unsqueeze(-1).to(A.real.dtype) * A
    x = dtA if discretization == "zoh" else 2.0 * torch.atanh(dtA / 2)
    ell = torch.arange(L, device=A.device, dtype=A.real.dtype)
    # x l by parts (a complex product would make -inf * 0 = NaN in the imaginary part at the bilinear pole, x = -inf)
    xl = torch.complex(x.real.unsqueeze(-1) * ell, x.imag.unsqueeze(-1) * ell)  # (H, N, L)
    V = torch.exp(torch.where(ell == 0, torch.zeros_like(xl), xl))  # Abar**0 = 1, also for Abar = 0
    return 2.0 * torch.einsum("...hn,hnl->...hl", Ct, V).real


def fftconv(u: torch.Tensor, k: torch.Tensor, D: Optional[torch.Tensor] = None, bidirectional: bool = False):
    """Causal (or bidirectional) long convolution by a real FFT of size 2L, + D*u.

    u: (B, H, L); k: (H, L) or (C, H, L), with bidirectional (2, H, L) or (C, 2, H, L);
    D: None, (H,) or (C, H).  Returns (B, H, L), or (B, C, H, L) when k has a C axis.
    """
    L = u.shape[-1]
    n = 2 * L
    has_c = k.dim() == (4 if bidirectional else 3)
    if u.numel() == 0 or k.numel() == 0:  # torch.fft refuses empty transforms; the result is empty too
        Bsz, H = u.shape[0], u.shape[1]
        deps = u.sum() + k.sum() + (0 if D is None else D.sum())  # keeps the (empty) result in the graph
        return deps.expand((Bsz, k.shape[0], H, L) if has_c else (Bsz, H, L)) * 0
    if bidirectional:
        k0, k1 = k.unbind(-3)
        kk = F.pad(k0, (0, L)) + F.pad(k1.flip(-1), (L, 0))
    else:
        kk = k
    kf = torch.fft.rfft(kk, n=n)  # (C?, H, L+1)
    uf = torch.fft.rfft(u, n=n)  # (B, H, L+1)
    if has_c:
        uf = uf.unsqueeze(1)
    y = torch.fft.irfft(uf * kf, n=n)[..., :L]
    if D is not None:
        uu = u.unsqueeze(1) if has_c else u
        y = y + D.unsqueeze(-1) * uu
    return y


def ssm_conv(u, log_dt, A, B, C, D=None, discretization: str = "zoh", bidirectional: bool = False):
    """fftconv(u, s4d_kernel(log_dt, A, B, C, L), D, bidirectional).

    With bidirectional=True, C has a leading axis of 2 (or (C_out, 2, H, N)): the causal and the anti-causal
    kernel's output matrices.
    """
    L = u.shape[-1]
    k = s4d_kernel(log_dt, A, B, C, L, discretization)
    return fftconv(u, k, D, bidirectional)
