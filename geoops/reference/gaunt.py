"""Eager reference of the Gaunt tensor product family: readable torch, fp64.

Everything this family needs is generated here, by our own code, at first use
and cached (no shipped constants):

* ``real_sh(L, beta, alpha)``: real spherical harmonics in e3nn's basis, order
  and axes, with orthonormal ("integral") normalisation,
  ``integral over S^2 of Y_i Y_j = delta_ij``.  Index ``i = l*l + l + m`` (degree
  l, then m = -l..l).  e3nn's axes: ``y`` is the polar axis, ``x = sin b sin a``,
  ``y = cos b``, ``z = sin b cos a``.  With ``N_lm = sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!)``
  and ``P_l^m`` the associated Legendre function *without* the Condon-Shortley
  phase::

      Y_l0 = N_l0 P_l(cos b)
      Y_lm = sqrt(2) N_lm P_l^m(cos b) cos(m a)        m > 0
      Y_lm = sqrt(2) N_l|m| P_l^|m|(cos b) sin(|m| a)  m < 0

  (equal to ``e3nn.o3.spherical_harmonics(..., normalize=True,
  normalization="integral")`` to 1e-15; the tests check it).
* ``sphere_grid(T)``: Gauss-Legendre nodes in ``cos b`` (``T//2 + 1`` of them)
  times ``T + 1`` uniform azimuths, with weights: integrates every product of
  spherical harmonics of total degree <= T exactly.
* ``gaunt_coefficients(L1, L2, L3)``: ``G[i, j, k] = integral Y_i Y_j Y_k`` by
  that exact quadrature (dense, fp64).
* ``gaunt_tensor_product``: the dense contraction ``out_k = sum_ij G_ijk x1_i x2_j``
  with the per-degree weights, the readable definition every route must match.
* ``fourier_matrix(L)`` / ``fourier_projection(K, L)``: the 2D-Fourier
  coefficients of the spherical harmonics (the FFT route's conversions),
  generated from an FFT of the harmonics on a torus grid.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch

__all__ = [
    "real_sh",
    "sphere_grid",
    "gaunt_coefficients",
    "gaunt_sparse",
    "gaunt_tensor_product",
    "gaunt_product",
    "gaunt_power",
    "degree_of_index",
    "fourier_matrix",
    "fourier_projection",
    "lmax_of",
]


def lmax_of(n: int) -> Optional[int]:
    """L with (L+1)^2 == n, or None when n is not a positive square."""
    if n < 1:
        return None
    r = math.isqrt(n)
    return r - 1 if r * r == n else None


def degree_of_index(L: int) -> torch.Tensor:
    """Degree l of each of the (L+1)^2 coefficients (int64)."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.int64) for l in range(L + 1)])


# ---------------------------------------------------------------- spherical harmonics
def real_sh(L: int, beta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Real orthonormal spherical harmonics of degrees 0..L at polar angle beta (from +y) and azimuth alpha.

    Returns (..., (L+1)^2) in the dtype of beta.  ``sin(beta)`` is used as is, so a beta outside [0, pi]
    gives the trigonometric-polynomial extension of the harmonics (used for the torus grid of the FFT route).
    """
    ct, st = torch.cos(beta), torch.sin(beta)
    P = {(0, 0): torch.ones_like(ct)}
    for m in range(1, L + 1):
        P[(m, m)] = (2 * m - 1) * st * P[(m - 1, m - 1)]
    for m in range(L + 1):
        if m + 1 <= L:
            P[(m + 1, m)] = (2 * m + 1) * ct * P[(m, m)]
        for l in range(m + 2, L + 1):
            P[(l, m)] = ((2 * l - 1) * ct * P[(l - 1, m)] - (l + m - 1) * P[(l - 2, m)]) / (l - m)
    out = []
    for l in range(L + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            if m == 0:
                out.append(norm * P[(l, 0)])
            elif m > 0:
                out.append(math.sqrt(2.0) * norm * P[(l, am)] * torch.cos(am * alpha))
            else:
                out.append(math.sqrt(2.0) * norm * P[(l, am)] * torch.sin(am * alpha))
    return torch.stack(out, dim=-1)


@functools.lru_cache(maxsize=None)
def sphere_grid(T: int):
    """Exact quadrature for total degree T: (beta, alpha, weight), each flat fp64 of (T//2+1)*(T+1) points.

    Gauss-Legendre in cos(beta) with T//2+1 nodes is exact for polynomials of degree <= T+1; T+1 uniform
    azimuths integrate exp(i k a) exactly for |k| <= T.  The points are ordered beta-major.
    """
    import numpy as np  # here, not at import: geoops imports without numpy (e.g. a bare GPU machine)

    nb, na = T // 2 + 1, T + 1
    xs, ws = np.polynomial.legendre.leggauss(nb)
    beta = torch.from_numpy(np.arccos(xs)).to(torch.float64)
    wb = torch.from_numpy(ws).to(torch.float64)
    alpha = torch.arange(na, dtype=torch.float64) * (2 * math.pi / na)
    B, A = torch.meshgrid(beta, alpha, indexing="ij")
    W = wb[:, None].expand(nb, na) * (2 * math.pi / na)
    return B.reshape(-1).contiguous(), A.reshape(-1).contiguous(), W.reshape(-1).contiguous()


@functools.lru_cache(maxsize=None)
def grid_sh(L: int, T: int) -> torch.Tensor:
    """Harmonics of degrees <= L on the exact grid of total degree T: (points, (L+1)^2) fp64."""
    b, a, _ = sphere_grid(T)
    return real_sh(L, b, a)


# ---------------------------------------------------------------- Gaunt coefficients
@functools.lru_cache(maxsize=None)
def gaunt_coefficients(L1: int, L2: int, L3: int) -> torch.Tensor:
    """G[i, j, k] = integral of Y_i Y_j Y_k over the sphere, (L1+1)^2 x (L2+1)^2 x (L3+1)^2 fp64, exact quadrature.

    Entries that vanish by the selection rules (l1+l2+l3 odd, triangle rule, m rules) are set to exactly 0.
    """
    T = L1 + L2 + L3
    _, _, w = sphere_grid(T)
    Y1, Y2, Y3 = grid_sh(L1, T), grid_sh(L2, T), grid_sh(L3, T)
    G = torch.einsum("p,pi,pj,pk->ijk", w, Y1, Y2, Y3)
    G[G.abs() < 1e-13] = 0.0  # quadrature round-off of the zero entries
    return G


@functools.lru_cache(maxsize=None)
def gaunt_sparse(L1: int, L2: int, L3: int):
    """The nonzero Gaunt coefficients as (i, j, k, value): int64 x3 and fp64, sorted by (i, j, k)."""
    G = gaunt_coefficients(L1, L2, L3)
    idx = G.nonzero()
    return idx[:, 0].contiguous(), idx[:, 1].contiguous(), idx[:, 2].contiguous(), G[idx[:, 0], idx[:, 1], idx[:, 2]]


def _degree_weight(w: Optional[torch.Tensor], L: int, name: str) -> Optional[torch.Tensor]:
    """A per-degree weight [..., L+1] expanded to the coefficients [..., (L+1)^2]."""
    if w is None:
        return None
    if w.shape[-1] != L + 1:
        raise ValueError(f"{name} must have last dimension L+1 = {L + 1}, got shape {tuple(w.shape)}")
    return w[..., degree_of_index(L).to(w.device)]


def _lmax_arg(x: torch.Tensor, name: str) -> int:
    L = lmax_of(x.shape[-1]) if x.dim() else None
    if L is None:
        raise ValueError(f"{name} must have a last dimension (L+1)^2 (a positive square), got shape {tuple(x.shape)}")
    return L


def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: Optional[int] = None, *,
                         weight1: Optional[torch.Tensor] = None, weight2: Optional[torch.Tensor] = None,
                         weight_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out_k = w_out[l(k)] sum_ij G_ijk (w1[l(i)] x1_i) (w2[l(j)] x2_j), by a dense contraction with G (fp64-capable).

    x1: [..., (L1+1)^2], x2: [..., (L2+1)^2]; leading dims and weights [..., L+1] broadcast.
    Returns [..., (lmax_out+1)^2] (lmax_out defaults to L1 + L2).
    """
    return gaunt_product([x1, x2], lmax_out, weights=[weight1, weight2], weight_out=weight_out)


def gaunt_product(xs: Sequence[torch.Tensor], lmax_out: Optional[int] = None, *,
                  weights: Optional[Sequence[Optional[torch.Tensor]]] = None,
                  weight_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Projection of the product of nu spherical functions onto degrees <= lmax_out (chain of dense contractions).

    The full product of degree sum(L_i) is formed exactly (intermediate degrees are not truncated), then
    projected: equal to the quadrature integral of prod_i f_i times Y_k.
    """
    xs = list(xs)
    Ls = [_lmax_arg(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if lmax_out is None:
        lmax_out = sum(Ls)
    weights = list(weights) if weights is not None else [None] * len(xs)
    cur, Lc = None, 0
    for i, (x, L, w) in enumerate(zip(xs, Ls, weights)):
        wx = _degree_weight(w, L, f"weights[{i}]")
        x = x * wx if wx is not None else x
        if cur is None:
            cur, Lc = x, L
        else:
            Ln = Lc + L if i < len(xs) - 1 else lmax_out
            G = gaunt_coefficients(Lc, L, Ln).to(device=x.device, dtype=torch.promote_types(cur.dtype, x.dtype))
            cur = torch.einsum("ijk,...i,...j->...k", G, cur, x)
            Lc = Ln
    if len(xs) == 1:  # projection of a single function
        n = (lmax_out + 1) ** 2
        cur = cur[..., :n] if cur.shape[-1] >= n else torch.nn.functional.pad(cur, (0, n - cur.shape[-1]))
    wo = _degree_weight(weight_out, lmax_out, "weight_out")
    return cur * wo if wo is not None else cur


def gaunt_power(x: torch.Tensor, nu: int, lmax_out: Optional[int] = None) -> torch.Tensor:
    """The nu-th power of the spherical function x, projected onto degrees <= lmax_out."""
    return gaunt_product([x] * nu, lmax_out)


# ---------------------------------------------------------------- 2D Fourier conversions (FFT route)
@functools.lru_cache(maxsize=None)
def fourier_matrix(L: int) -> torch.Tensor:
    """A[i, u, v] (complex128, (L+1)^2 x (2L+1) x (2L+1)), index u, v = -L..L at [u+L, v+L]:

        Y_i(b, a) = sum_{u,v} A[i, u, v] exp(i (u b + v a))

    for the trigonometric-polynomial extension of the harmonics (b over a full period).  Generated by a
    2D FFT of the harmonics on an N x N torus grid, N = 2L+1 (exact: each harmonic is a trigonometric
    polynomial of degree <= L in each angle).  Nonzero only at v = +-m, |u| <= l, u = l mod 2.
    """
    N = 2 * L + 1
    t = torch.arange(N, dtype=torch.float64) * (2 * math.pi / N)
    B, A = torch.meshgrid(t, t, indexing="ij")
    Y = real_sh(L, B, A).permute(2, 0, 1)  # (n, N, N)
    F = torch.fft.fft2(Y) / (N * N)
    F = torch.fft.fftshift(F, dim=(-2, -1))  # index 0 -> frequency -L
    F.real[F.real.abs() < 1e-14] = 0.0
    F.imag[F.imag.abs() < 1e-14] = 0.0
    return F


def _I(k: torch.Tensor) -> torch.Tensor:
    """I(k) = integral_0^pi exp(i k b) sin b db: 2/(1-k^2) for even k, +-i pi/2 for k = +-1, 0 otherwise."""
    kf = k.to(torch.float64)
    re = torch.where(k % 2 == 0, 2.0 / (1.0 - kf * kf), torch.zeros_like(kf))
    im = torch.where(k.abs() == 1, kf * (math.pi / 2), torch.zeros_like(kf))
    return torch.complex(re, im)


@functools.lru_cache(maxsize=None)
def fourier_projection(K: int, L: int) -> torch.Tensor:
    """Z[k, u, v] (complex128, (L+1)^2 x (2K+1) x (2L+1)), u = -K..K, v = -L..L:

        integral over S^2 of h Y_k = sum_{u,v} Z[k, u, v] H[u, v]   for h = sum H[u, v] exp(i (u b + v a)),

    Z[k, u, v] = 2 pi sum_{u'} A[k, u', -v] I(u + u').  Frequencies |v| > L of h do not reach degree <= L.
    """
    A = fourier_matrix(L)  # (n, 2L+1 [u'], 2L+1 [v'])
    u = torch.arange(-K, K + 1)
    up = torch.arange(-L, L + 1)
    Imat = _I(u[:, None] + up[None, :])  # (2K+1, 2L+1)
    A_negv = torch.flip(A, dims=(-1,))  # [.., v] -> A[.., -v]
    return 2 * math.pi * torch.einsum("ua,kav->kuv", Imat, A_negv)
