"""Eager reference of the Gaunt tensor product family: readable torch, fp64.

Everything this family needs is generated here, by our own code, at first use
and cached in bounded LRU caches (no shipped constants; a sweep over many degrees
evicts the oldest tables instead of keeping every one):

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


def _table(maxsize: int):
    """A bounded ``functools.lru_cache`` of a table builder, whose tensors are normal ones even when the first
    call runs under ``torch.inference_mode()`` (a serving thread): an inference tensor in the cache made every later
    reference product that records a graph raise ("Inference tensors cannot be saved for backward")."""
    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def table(*args):
            if torch.is_inference_mode_enabled():
                with torch.inference_mode(False), torch.no_grad():
                    return cached(*args)
            return cached(*args)

        table.cache_clear, table.cache_info = cached.cache_clear, cached.cache_info
        return table
    return wrap


def lmax_of(n: int) -> Optional[int]:
    """L with (L+1)^2 == n, or None when n is not a positive square."""
    if n < 1:
        return None
    r = 1  # not math.isqrt: torch.compile(dynamic=True) passes a symbolic n, which isqrt cannot trace
    while (r + 1) * (r + 1) <= n:
        r += 1
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


@_table(maxsize=64)
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


@_table(maxsize=128)
def grid_sh(L: int, T: int) -> torch.Tensor:
    """Harmonics of degrees <= L on the exact grid of total degree T: (points, (L+1)^2) fp64."""
    b, a, _ = sphere_grid(T)
    return real_sh(L, b, a)


# ---------------------------------------------------------------- Gaunt coefficients
@_table(maxsize=16)
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


@_table(maxsize=128)
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
@_table(maxsize=64)
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


@_table(maxsize=128)
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


# ---------------------------------------------------------------- separable (Legendre x azimuth) tables
# The fused CPU kernels of the grid and FFT routes evaluate a spherical function on a product grid
# (theta_j) x (alpha_k) in two small steps instead of one dense (L+1)^2 x grid matrix:
#   g_m(theta_j) = sum_l x_lm Lambda_l|m|(theta_j)          (per m: a (n_theta x (L+1-|m|)) block)
#   f(theta_j, alpha_k) = sum_m g_m(theta_j) t_m(alpha_k)  (t_0 = 1, t_m = sqrt2 cos(m a), t_-m = sqrt2 sin(m a))
# and back; Lambda_lm = N_lm P_l^m(cos theta) (no Condon-Shortley phase), so Y_lm = Lambda_l|m| t_m.
def m_major_blocks(L: int):
    """Offsets of the per-|m| column blocks: block |m| holds l = |m|..L, so it starts at sum_{m'<|m|} (L+1-m')."""
    offs, o = [], 0
    for m in range(L + 1):
        offs.append(o)
        o += L + 1 - m
    return offs, o


def _legendre_cols(L: int, beta: torch.Tensor) -> torch.Tensor:
    """Lambda_lm(beta_j) for m = 0..L, l = m..L, as (n_theta, (L+1)(L+2)/2) in m-major block order."""
    Y = real_sh(L, beta, torch.zeros_like(beta))  # m > 0: sqrt2 Lambda; m = 0: Lambda; m < 0: 0
    cols = []
    for m in range(L + 1):
        for l in range(m, L + 1):
            cols.append(Y[:, l * l + l + m] / (math.sqrt(2.0) if m else 1.0))
    return torch.stack(cols, 1)


def azimuth_grid_size(T: int) -> int:
    """Uniform azimuths for products of total degree T: the smallest multiple of 4 that is > T (exact for
    frequencies |k| <= T; a multiple of 4 lets the kernels use the a -> a + pi and a -> -a symmetries)."""
    return 4 * (T // 4 + 1)


@_table(maxsize=64)
def azimuth_tables(na: int, D: int):
    """Quarter-period azimuth tables (fp64) for na uniform azimuths (na % 4 == 0), frequencies <= D.

    With Q = na/4 + 1 base azimuths a_q = 2 pi q / na, q = 0..na/4, one base point gives the four grid points
    q, q + na/2, na - q, na/2 - q by the parities of cos / sin and of m.  Forward (coefficients -> values),
    fwd[g, q, e] for the groups g = (cos, even m = 2e), (cos, odd m = 2e+1), (sin, even m = 2e+2),
    (sin, odd m = 2e+1); back[g, e, q] = the transposed tables times the azimuth quadrature weight 2 pi / na
    (halved at q = 0 and q = na/4, whose four images are two points counted twice).
    """
    assert na % 4 == 0
    Q = na // 4 + 1
    D2 = D // 2 + 1
    a = torch.arange(Q, dtype=torch.float64) * (2 * math.pi / na)
    e = torch.arange(D2, dtype=torch.float64)
    s2 = math.sqrt(2.0)
    ce = torch.cos(2 * e[None, :] * a[:, None]) * torch.where(e == 0, torch.ones_like(e), torch.full_like(e, s2))
    co = s2 * torch.cos((2 * e[None, :] + 1) * a[:, None])
    se = s2 * torch.sin((2 * e[None, :] + 2) * a[:, None])
    so = s2 * torch.sin((2 * e[None, :] + 1) * a[:, None])
    fwd = torch.stack([ce, co, se, so], 0)  # (4, Q, D2)
    dup = torch.ones(Q, dtype=torch.float64)
    dup[0] = dup[-1] = 0.5
    back = (fwd * (dup * (2 * math.pi / na))[None, :, None]).transpose(1, 2)  # (4, D2, Q)
    return fwd.contiguous(), back.contiguous()


@_table(maxsize=256)
def separable_grid_tables(Ls: tuple, lmax_out: int):
    """Tables of the separable grid route: Gauss-Legendre nodes in cos(theta) (T//2 + 1, T = sum(Ls) + lmax_out,
    exact), azimuth_grid_size(T) azimuths.  Returns (evals, back, na): evals[i] (n_theta, S_i) = Lambda of
    factor i in m-major blocks; back (S_out, n_theta) = Gauss-Legendre weight times Lambda of the output."""
    import numpy as np

    T = sum(Ls) + lmax_out
    xs, ws = np.polynomial.legendre.leggauss(T // 2 + 1)
    beta = torch.from_numpy(np.arccos(xs)).to(torch.float64)
    w = torch.from_numpy(ws).to(torch.float64)
    evals = [_legendre_cols(L, beta).contiguous() for L in Ls]
    back = (_legendre_cols(lmax_out, beta) * w[:, None]).t().contiguous()
    return evals, back, azimuth_grid_size(T)


@_table(maxsize=256)
def separable_fourier_tables(Ls: tuple, lmax_out: int):
    """Tables of the FFT route in the same separable form, from the 2D Fourier coefficients (fourier_matrix,
    fourier_projection).  The product of the factors has polar frequencies |u| <= K = sum(Ls), so the torus
    needs M = 2K + 1 polar angles theta_j = 2 pi j / M; f(2 pi - theta, a) = f(theta, a + pi) (the trigonometric
    extension), so only j = 0..K are formed and the mirrored rows are folded into the back table.

    evals[i] (K+1, S_i): per m, the SH -> Fourier block A[(l, m), u, v=m] (|u| <= l) composed with the inverse
    DFT along theta; back (S_out, K+1): per m, the closed-form Fourier -> SH projection Z[k, u, v=+-m]
    composed with the forward DFT along theta and the mirror fold.  Returns (evals, back, na)."""
    K = sum(Ls)
    M = 2 * K + 1
    theta = torch.arange(M, dtype=torch.float64) * (2 * math.pi / M)
    evals = []
    for L in Ls:
        A = fourier_matrix(L)  # (n, u=-L..L, v=-L..L)
        u = torch.arange(-L, L + 1, dtype=torch.float64)
        E = torch.exp(1j * theta[: K + 1, None] * u[None, :])  # (j, u)
        cols = []
        for m in range(L + 1):
            for l in range(m, L + 1):
                # the e^{i m a} part of Y_{l,m}: Lambda/2 * sqrt2 (m > 0) or Lambda (m = 0)
                col = (E @ A[l * l + l + m, :, L + m]).real
                cols.append(col * (math.sqrt(2.0) if m else 1.0))
        evals.append(torch.stack(cols, 1).contiguous())
    Lo = lmax_out
    Z = fourier_projection(K, Lo)  # (n_out, u=-K..K, v=-Lo..Lo)
    uu = torch.arange(-K, K + 1, dtype=torch.float64)
    Eb = torch.exp(-1j * theta[:, None] * uu[None, :]) / M  # (j, u)
    z = torch.einsum("ju,kuv->kjv", Eb, Z)  # (n_out, j, v): out_k = sum_{j,v} z[k,j,v] H_v(theta_j)
    rows = []
    for m in range(Lo + 1):
        for l in range(m, Lo + 1):
            k = l * l + l + m
            if m == 0:
                c = (z[k, :, Lo] / (2 * math.pi)).real
            else:  # H_m = (Hhat_m - i Hhat_-m) / (2 sqrt2 pi), H_-m = conj: the Hhat_m coefficient
                c = ((z[k, :, Lo + m] + z[k, :, Lo - m]) / (2 * math.sqrt(2.0) * math.pi)).real
            sgn = -1.0 if m % 2 else 1.0
            folded = c[: K + 1].clone()
            folded[1:] += sgn * torch.flip(c[K + 1:], (0,))  # row M - j onto row j, j = 1..K
            rows.append(folded)
    back = torch.stack(rows, 0).contiguous()
    T = K + lmax_out
    return evals, back, azimuth_grid_size(T)


def separable_product(xs, lmax_out: int, tables) -> torch.Tensor:
    """The separable algorithm in readable torch (fp64): what the fused kernels compute, for testing tables.
    xs: list of (N, (L_i+1)^2) tensors; tables: separable_grid_tables(...) or separable_fourier_tables(...)."""
    evals, back, na = tables
    D = max([lmax_of(x.shape[-1]) for x in xs] + [lmax_out])
    alpha = torch.arange(na, dtype=torch.float64) * (2 * math.pi / na)
    h = None
    for x, E in zip(xs, evals):
        L = lmax_of(x.shape[-1])
        offs, _ = m_major_blocks(L)
        f = 0
        for m in range(-L, L + 1):
            am = abs(m)
            cols = E[:, offs[am]: offs[am] + L + 1 - am]  # (j, l)
            xm = x[:, [l * l + l + m for l in range(am, L + 1)]]  # (N, l)
            g = xm @ cols.t()  # (N, j)
            t = (torch.ones_like(alpha) if m == 0 else
                 math.sqrt(2.0) * (torch.cos(m * alpha) if m > 0 else torch.sin(am * alpha)))
            f = f + g[:, :, None] * t[None, None, :]
        h = f if h is None else h * f
    offs, _ = m_major_blocks(lmax_out)
    out = h.new_zeros((h.shape[0], (lmax_out + 1) ** 2))
    for m in range(-lmax_out, lmax_out + 1):
        am = abs(m)
        t = (torch.ones_like(alpha) if m == 0 else
             math.sqrt(2.0) * (torch.cos(m * alpha) if m > 0 else torch.sin(am * alpha)))
        Hm = (h * t).sum(-1) * (2 * math.pi / na)  # (N, j)
        rows = back[offs[am]: offs[am] + lmax_out + 1 - am]  # (l, j)
        out[:, [l * l + l + m for l in range(am, lmax_out + 1)]] = Hm @ rows.t()
    return out
