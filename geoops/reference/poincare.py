"""Eager reference of the Poincaré-ball network layers: readable torch, fp64-capable.

The oracle of ``tests/test_poincare*.py`` and the ``reference`` backend of ``geoops.poincare``.
Semantics are HypLL's (``hypll.manifolds.poincare_ball``): the ball has curvature ``-c`` with ``c > 0`` a
tensor, points lie along ``dim``, and every layer output is projected into the ball of radius
``(1 - eps) / sqrt(c)`` (eps = 4e-3 in float32, 1e-5 in float64), as HypLL's layers do.

Formulas (HNN++, Shimizu et al. 2021; Poincaré ResNet, van Spengler et al. 2023), with ``sc = sqrt(c)``:

* conformal factor ``lam(x) = 2 / (1 - c |x|^2)``
* signed distance of x to the hyperplane (z_j, r_j):
  ``v_j = (2 |z_j| / sc) asinh(sc lam <x, z_j> cosh(2 sc r_j) / |z_j| - (lam - 1) sinh(2 sc r_j))``
* fully-connected layer: ``w = sinh(sc v) / sc``, ``y = project(w / (1 + sqrt(1 + c |w|^2)))``
* beta-concatenation of n_i-dimensional blocks into n dimensions: ``expmap0(logmap0(x) B(n/2, 1/2) / B(n_i/2, 1/2))``
* midpoint (Einstein/gyro midpoint in Poincaré coordinates):
  ``m = f / (1 + sqrt(1 - c |f|^2))``, ``f = sum_i lam_i x_i / sum_i (lam_i - 1)``
* midpoint batch norm: ``y = expmap_b(sqrt(weight / (var + 1e-6)) PT_{m -> b}(logmap_m(x)))`` with ``b = expmap0(bias)``
  and ``var`` the mean squared distance of the batch to its midpoint ``m``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "default_eps", "beta_func", "project", "lambda_x", "mobius_add", "expmap0", "logmap0", "expmap", "logmap",
    "gyration", "transp", "dist", "hyperplane_dists", "poincare_fc", "poincare_relu", "beta_concat_scale",
    "poincare_unfold", "poincare_conv2d", "midpoint", "frechet_variance", "batch_norm", "flatten",
    "avg_pool2d", "max_pool2d", "mobius_linear", "mlr",
]

MIN_NORM = 1e-15


def default_eps(dtype: torch.dtype) -> float:
    """HypLL's projection margin: 4e-3 for float32 (and the half types, computed in float32), 1e-5 for float64."""
    return 1e-5 if dtype == torch.float64 else 4e-3


def beta_func(a: float, b: float) -> float:
    """The Euler beta function B(a, b) (Python floats)."""
    return math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


def _sq(x, dim, keepdim=True):
    return x.pow(2).sum(dim=dim, keepdim=keepdim)


def project(x: torch.Tensor, c: torch.Tensor, dim: int = -1, eps: float = -1.0) -> torch.Tensor:
    """Reference: rescale rows whose norm exceeds (1 - eps)/sqrt(c) onto that radius (eps < 0: the dtype's default)."""
    if eps < 0:
        eps = default_eps(x.dtype)
    maxnorm = (1 - eps) / (c + 1e-15).sqrt()
    n = x.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def lambda_x(x: torch.Tensor, c: torch.Tensor, dim: int = -1, keepdim: bool = True) -> torch.Tensor:
    """Reference: conformal factor lambda_x = 2 / (1 - c |x|^2)."""
    return 2 / (1 - c * _sq(x, dim, keepdim))


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference: Möbius addition x (+) y on the ball of curvature -c."""
    xy = (x * y).sum(dim=dim, keepdim=True)
    x2, y2 = _sq(x, dim), _sq(y, dim)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return num / (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(MIN_NORM)


def expmap0(v: torch.Tensor, c: torch.Tensor, dim: int = -1, eps: float = -1.0) -> torch.Tensor:
    """Reference: exponential map at the origin, tanh(sqrt(c)|v|) v / (sqrt(c)|v|), projected."""
    s = v.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM) * c.sqrt()
    return project(torch.tanh(s) / s * v, c, dim=dim, eps=eps)


def logmap0(y: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference: logarithmic map at the origin, artanh(sqrt(c)|y|) y / (sqrt(c)|y|)."""
    s = y.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM) * c.sqrt()
    return torch.atanh(s) / s * y


def expmap(x: torch.Tensor, v: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference: exponential map at x, x (+) tanh(sqrt(c) lambda_x |v| / 2) v / (sqrt(c)|v|), projected."""
    vn = v.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM)
    lam = (2 / (1 - c * _sq(x, dim)).clamp_min(MIN_NORM))
    sc = c.sqrt()
    return project(mobius_add(x, torch.tanh(sc * lam * vn / 2) / (sc * vn) * v, c, dim=dim), c, dim=dim)


def logmap(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference: logarithmic map at x, 2/(sqrt(c) lambda_x) artanh(sqrt(c)|d|) d/|d| with d = (-x) (+) y."""
    d = mobius_add(-x, y, c, dim=dim)
    dn = d.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM)
    lam = (2 / (1 - c * _sq(x, dim)).clamp_min(MIN_NORM))
    sc = c.sqrt()
    return 2 / (sc * lam) * torch.atanh(sc * dn) / dn * d


def gyration(u, v, w, c, dim: int = -1):
    """Reference: gyration gyr[u, v] w (Ungar's closed form on the ball of curvature -c)."""
    u2, v2 = _sq(u, dim), _sq(v, dim)
    uv, uw, vw = (u * v).sum(dim, keepdim=True), (u * w).sum(dim, keepdim=True), (v * w).sum(dim, keepdim=True)
    c2 = c * c
    a = -c2 * uw * v2 + c * vw + 2 * c2 * uv * vw
    b = -c2 * vw * u2 - c * uw
    d = 1 + 2 * c * uv + c2 * u2 * v2
    return w + 2 * (a * u + b * v) / d.clamp_min(MIN_NORM)


def transp(x, y, v, c, dim: int = -1):
    """Reference: parallel transport of v from x to y, gyr[y, -x] v lambda_x / lambda_y."""
    """Parallel transport of v from x to y."""
    lx = 2 / (1 - c * _sq(x, dim)).clamp_min(MIN_NORM)
    ly = 2 / (1 - c * _sq(y, dim)).clamp_min(MIN_NORM)
    return gyration(y, -x, v, c, dim=dim) * lx / ly


def dist(x, y, c, dim: int = -1, keepdim: bool = False):
    """Reference: geodesic distance 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)."""
    sc = c.sqrt()
    return 2 / sc * torch.atanh(sc * mobius_add(-x, y, c, dim=dim).norm(dim=dim, keepdim=keepdim))


# ---------------------------------------------------------------- fully connected
def hyperplane_dists(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor,
                     dim: int = -1) -> torch.Tensor:
    """Signed distances of the points x (along dim) to the hyperplanes (z[:, j], bias[j]); z is (n, m)."""
    xm = x.movedim(dim, -1)
    sc = c.sqrt()
    lam = 2 / (1 - c * _sq(xm, -1))
    zn = z.norm(dim=0).clamp_min(MIN_NORM)
    t = xm @ z
    return (2 * zn / sc * _asinh_a(t, lam, zn, bias, sc)).movedim(-1, dim)


# Columns whose offset angle |2 sc r_j| passes this take the scaled form of _asinh_a (cosh(20) ~ 2.4e8; below it
# a and a^2 stay finite in float32 for every point of the ball, and the direct formula runs, bit for bit as before).
OFFSET_SCALED_FROM = 20.0


def offset_consts(bias: torch.Tensor, sc: torch.Tensor):
    """The hyperplane offsets' column constants (ch, sh, q, ell, big) of a = sc lam t ch / zn - (lam - 1) sh.

    Columns with |rho| = |2 sc r| <= OFFSET_SCALED_FROM: ch, sh = cosh(rho), sinh(rho), q = 1, ell = 0 (a itself).
    Beyond (big), where cosh(rho) overflows (float32 ~89, float64 ~710) or a^2 does, both are divided by
    e^ell = e^|rho| / 2: ch = 1 + e^(-2|rho|), sh = sign(rho) (1 - e^(-2|rho|)) (both in [0, 2]), q = e^(-2 ell)
    and the row math forms b = a e^(-ell) instead of a (see _asinh_scaled).  No exponent above 0 is formed."""
    rho = 2 * sc * bias
    big = rho.detach().abs() > OFFSET_SCALED_FROM
    r0 = torch.where(big, 0.0, bias)  # the direct form's columns
    ar = torch.where(big, rho, OFFSET_SCALED_FROM + 1).abs()  # the scaled form's columns (|rho| > 20)
    e2 = torch.expm1(-2 * ar)
    ch = torch.where(big, 2 + e2, torch.cosh(2 * sc * r0))
    sh = torch.where(big, torch.where(rho < 0, e2, -e2), torch.sinh(2 * sc * r0))
    ones = torch.ones_like(ch)
    q = torch.where(big, 4 * (1 + e2), ones)
    ell = torch.where(big, ar - math.log(2.0), 0 * ones)
    return ch, sh, q, ell, big


def _asinh_scaled(b: torch.Tensor, ell: torch.Tensor, q: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """asinh(a) of a = e^ell b (offset_consts): on big columns ell + log(|b| + sqrt(b^2 + q)) with the sign of b,
    q = e^(-2 ell) (a = e^ell b is never formed: asinh(a) = log(|a| + sqrt(a^2 + 1))); elsewhere asinh(b).
    d/db = e^ell / sqrt(1 + a^2) = 1 / sqrt(b^2 + q) on both."""
    ab = torch.where(b < 0, -b, b)
    tiny = torch.finfo(b.dtype).tiny
    r = ell + torch.log((ab + (ab * ab + q).clamp_min(tiny).sqrt()).clamp_min(tiny))
    return torch.where(big, torch.where(b < 0, -r, r), torch.asinh(torch.where(big, 0.0, b)))


def _asinh_a(t, lam, zn, bias, sc):
    """asinh(a), a = sc lam t cosh(2 sc r) / zn - (lam - 1) sinh(2 sc r) (t / zn without offsets), finite for any
    offset (offset_consts; columns within OFFSET_SCALED_FROM bit for bit the direct formula)."""
    if bias is None:
        return torch.asinh(sc * lam * t / zn)
    ch, sh, q, ell, big = offset_consts(bias, sc)
    return _asinh_scaled(sc * lam * t * ch / zn - (lam - 1) * sh, ell, q, big)


def poincare_fc_rows(t: torch.Tensor, U: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor,
                     eps: float = -1.0, tangent: bool = False) -> torch.Tensor:
    """Reference: :func:`poincare_fc` of rows x (N, n) given only t = x @ z (N, m) and U = |x|^2 (N,).  tangent: the
    rows are tangent vectors u (t = u @ z, U = |u|^2) and the layer's input is project(expmap0(u))."""
    sc = c.sqrt()
    if tangent:
        if eps < 0:
            eps = default_eps(t.dtype)
        n = U.clamp_min(0).sqrt().clamp_min(MIN_NORM)
        s = torch.tanh(sc * n) / (sc * n)
        maxnorm = (1 - eps) / (c + 1e-15).sqrt()
        s = torch.where(s * n > maxnorm, maxnorm / n, s)
        t, U = t * s[:, None], U * s * s
    lam = (2 / (1 - c * U))[:, None]
    zn = z.norm(dim=0).clamp_min(MIN_NORM)
    return project(_ball_of_sinh(2 * zn * _asinh_a(t, lam, zn, bias, sc), c, sc, -1), c, eps=eps)


def poincare_fc(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor, dim: int = -1,
                eps: float = -1.0) -> torch.Tensor:
    """Reference: Poincaré fully-connected layer (HNN++): hyperplane distances of x to the hyperplanes (z, bias),
    mapped back into the ball by the closed form of HNN++ and projected."""
    sc = c.sqrt()
    return project(_ball_of_sinh(sc * hyperplane_dists(x, z, bias, c, dim=dim), c, sc, dim), c, dim=dim, eps=eps)


# Rows whose largest |u_j| passes this take the scaled form of _ball_of_sinh (sinh(20) ~ 2.4e8: such rows lie
# within 1e-8 of the boundary and are projected; below it sinh(u) / sc and |w|^2 cannot overflow).
SINH_SCALED_FROM = 20.0


def _ball_of_sinh(u: torch.Tensor, c: torch.Tensor, sc: torch.Tensor, dim: int) -> torch.Tensor:
    """y = w / (1 + sqrt(1 + c |w|^2)) with w = sinh(u) / sc (HNN++'s map of the distances back into the ball).

    Directly, sinh(u) overflows beyond |u| ~ 89 (float32; ~710 in float64) and |w|^2 already near 44 (355):
    inf / inf = NaN from finite inputs.  Rows whose largest |u_j| = T passes SINH_SCALED_FROM use the same map
    with w scaled by sinh(T): with v_j = sinh(u_j) / sinh(T) = (e^(u_j - T) - e^(-u_j - T)) / -expm1(-2T)
    (|v_j| <= 1, no exponent above 0) and q = 1 / sinh(T) = -2 e^(-T) / expm1(-2T),  y = v / (sc (q + hypot(q, |v|))).  Each branch gets
    inputs on which it is finite (so are autograd's gradients); other rows are computed as before, bit for bit."""
    T = u.abs().amax(dim=dim, keepdim=True).detach()
    big = T > SINH_SCALED_FROM
    us = torch.where(big, 0.0, u)  # the direct form's rows
    w = torch.sinh(us) / sc
    direct = w / (1 + (1 + c * _sq(w, dim)).sqrt())
    Tb = torch.where(big, T, SINH_SCALED_FROM)  # the scaled form's rows (|u| <= Tb)
    ub = torch.where(big, u, 0.0)
    den = -torch.expm1(-2 * Tb)
    v = (torch.exp(ub - Tb) - torch.exp(-ub - Tb)) / den
    q = 2 * torch.exp(-Tb) / den
    scaled = v / (sc * (q + torch.hypot(q, v.norm(dim=dim, keepdim=True))))
    return torch.where(big, scaled, direct)


def mlr(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor, dim: int = -1):
    """Hyperbolic multinomial logistic regression logits (HNN++): the signed hyperplane distances."""
    return hyperplane_dists(x, z, bias, c, dim=dim)


def mobius_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor,
                  dim: int = -1) -> torch.Tensor:
    """HNN's Möbius linear layer: project(mobius_matvec(weight, x) (+) bias) with weight (out, in); a bias on the
    ball (None: no bias).  mobius_matvec(M, x) = tanh(|Mx|/|x| artanh(sc|x|)) Mx / (sc |Mx|)."""
    xm = x.movedim(dim, -1)
    sc = c.sqrt()
    mx = xm @ weight.transpose(-1, -2)
    xn = xm.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    mxn = mx.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    res = torch.tanh(mxn / xn * torch.atanh(sc * xn)) * mx / (mxn * sc)
    res = torch.where((mx == 0).all(dim=-1, keepdim=True), torch.zeros_like(res), res)
    res = project(res, c)
    if bias is not None:
        res = project(mobius_add(res, bias, c), c)
    return res.movedim(-1, dim)


# ---------------------------------------------------------------- tangent-space ops
def poincare_relu(x: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference: Poincaré ReLU, expmap0(relu(logmap0(x)))."""
    return expmap0(torch.relu(logmap0(x, c, dim=dim)), c, dim=dim)


def beta_concat_scale(n_i: int, n: int) -> float:
    """The tangent-space factor of beta-concatenating n_i-dimensional blocks into n dimensions."""
    return beta_func(n / 2, 0.5) / beta_func(n_i / 2, 0.5)


def poincare_unfold(x: torch.Tensor, c: torch.Tensor, kernel_size, padding=0, stride=1, dilation=1) -> torch.Tensor:
    """x (B, C, H, W) with points along dim 1 -> (B, C*kh*kw, L): the beta-concatenated patches on the ball."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    C = x.shape[1]
    v = logmap0(x, c, dim=1) * beta_concat_scale(C, C * kh * kw)
    u = F.unfold(v, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    return expmap0(u, c, dim=1)


def poincare_conv2d(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor], c: torch.Tensor, kernel_size,
                    padding=0, stride=1) -> torch.Tensor:
    """HypLL's HConvolution2d: x (B, C, H, W), z (C*kh*kw, C_out) -> (B, C_out, H', W')."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    B, C, H, W = x.shape
    pad = padding if isinstance(padding, int) else padding[0]
    st = stride if isinstance(stride, int) else stride[0]
    Ho = 1 + (H + 2 * pad - kh) // st
    Wo = 1 + (W + 2 * pad - kw) // st
    u = poincare_unfold(x, c, (kh, kw), padding=padding, stride=stride)
    y = poincare_fc(u, z, bias, c, dim=1)
    return y.reshape(B, z.shape[1], Ho, Wo)


def flatten(x: torch.Tensor, c: torch.Tensor, start_dim: int = 1, end_dim: int = -1, man_dim: int = 1):
    """HypLL's flatten of a tensor with points along man_dim (beta-concatenation when man_dim is flattened)."""
    start = start_dim % x.dim()
    end = end_dim % x.dim()
    if not (start <= man_dim <= end):
        return torch.flatten(x, start, end)
    n_i = x.shape[man_dim]
    n = n_i * math.prod(x.shape[start + 1:end + 1])
    v = torch.flatten(logmap0(x, c, dim=man_dim), start, end) * beta_concat_scale(n_i, n)
    return expmap0(v, c, dim=start)


def max_pool2d(x: torch.Tensor, c: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False) -> torch.Tensor:
    """Reference: max pooling of the tangent vectors at the origin, mapped back (HypLL's max pool)."""
    return expmap0(F.max_pool2d(logmap0(x, c, dim=1), kernel_size, stride, padding, dilation, ceil_mode), c, dim=1)


# ---------------------------------------------------------------- midpoint statistics
def midpoint(x: torch.Tensor, c: torch.Tensor, man_dim: int = -1, batch_dim=0, keepdim: bool = False) -> torch.Tensor:
    """Reference: gyro-midpoint of x along ``batch_dim``: f = sum(lambda_i x_i) / sum(lambda_i - 1), then
    f / (1 + sqrt(1 - c |f|^2)) (the Einstein midpoint of the Klein model, written in ball coordinates)."""
    lam = 2 / (1 - c * _sq(x, man_dim)).clamp_min(MIN_NORM)
    num = (lam * x).sum(dim=batch_dim, keepdim=True)
    den = (lam - 1).sum(dim=batch_dim, keepdim=True)
    f = num / den.clamp_min(MIN_NORM)
    q = 1 - c * _sq(f, man_dim)  # HypLL's formula, with the root of a rounded q <= 0 taken as 0 (and its gradient)
    m = f / (1 + torch.where(q > 0, torch.where(q > 0, q, 1).sqrt(), 0))
    return m if keepdim else m.squeeze(dim=batch_dim)


def avg_pool2d(x: torch.Tensor, c: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """HypLL's HAvgPool2d(use_midpoint=True): the midpoint of each window of the beta-concatenated unfold."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    B, C, H, W = x.shape
    Ho = int((H + 2 * ph - kh) / sh + 1)
    Wo = int((W + 2 * pw - kw) / sw + 1)
    u = poincare_unfold(x, c, (kh, kw), padding=(ph, pw), stride=(sh, sw))
    u = u.view(B, C, kh * kw, u.shape[-1])
    return midpoint(u, c, man_dim=1, batch_dim=2).reshape(B, C, Ho, Wo)


def frechet_variance(x: torch.Tensor, mu: torch.Tensor, c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean squared distance of the rows of x (N, D) to mu (D,)."""
    return dist(x, mu, c, dim=dim).pow(2).mean(dim=0)


def batch_norm(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, c: torch.Tensor,
               mean: Optional[torch.Tensor] = None, var: Optional[torch.Tensor] = None, eps: float = 1e-6):
    """HypLL's HBatchNorm(use_midpoint=True) on rows x (N, D): returns (y, batch mean, batch variance).

    With `mean`/`var` given (eval mode, running statistics) they replace the batch statistics."""
    b = expmap0(bias, c)
    if mean is None:
        mean = midpoint(x, c, man_dim=-1, batch_dim=0)
    if var is None:
        var = frechet_variance(x, mean, c)
    v = transp(mean, b, logmap(mean, x, c), c)
    v = (weight / (var + eps)).sqrt() * v
    return expmap(b, v, c), mean, var
