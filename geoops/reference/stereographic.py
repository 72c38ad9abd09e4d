"""Eager reference of the kappa-stereographic ops: readable torch, fp64-capable.

This is the oracle of the test-suite and the ``reference`` backend.  The
signatures are geoopt's (``geoopt.manifolds.stereographic.math``): ``k`` is a
tensor of any sign (k < 0 Poincare ball of radius 1/sqrt(-k), k = 0 Euclidean
space, k > 0 projected sphere) that broadcasts against the batch dimensions.

Curvature enters only through the two analytic functions

    tanc(z)  = tan(sqrt z)/sqrt z    (= tanh(sqrt -z)/sqrt -z for z < 0)
    atanc(z) = atan(sqrt z)/sqrt z   (= artanh(sqrt -z)/sqrt -z for z < 0)

with z = k*|v|^2, so that tan_k(|v|) v/|v| = tanc(k|v|^2) v and
artan_k(|v|) v/|v| = atanc(k|v|^2) v.  Near z = 0 both use their Taylor series:
the ops are smooth in k through the Euclidean limit and at v = 0.
"""
from __future__ import annotations

import torch

__all__ = [
    "project",
    "lambda_x",
    "mobius_add",
    "mobius_sub",
    "mobius_scalar_mul",
    "expmap",
    "expmap0",
    "logmap",
    "logmap0",
    "dist",
    "dist0",
    "tan_k",
    "artan_k",
    "default_eps",
    "gyration",
    "parallel_transport",
    "parallel_transport0",
    "parallel_transport0back",
    "arsin_k",
    "sin_k",
    "dist2plane",
]

MIN_NORM = 1e-15
_SERIES_CUT = 1e-3

# Default projection margins (geoopt's for fp32/fp64; half types keep the
# boundary representable after rounding to their 8/11-bit mantissas).
_BALL_EPS = {torch.float64: 1e-5, torch.float32: 4e-3, torch.float16: 4e-3, torch.bfloat16: 8e-3}


def default_eps(dtype: torch.dtype) -> float:
    """Default margin of ``project`` for ``dtype``: 1e-5 (float64), 4e-3 (float32, float16), 8e-3 (bfloat16)."""
    return _BALL_EPS.get(dtype, 4e-3)


# torch.atanh and torch.sinh round differently in their vectorised loop and its scalar tail, so their bits depend on
# where a thread's chunk starts (torch.set_num_threads); log1p and expm1 do not.  These forms are as accurate (within
# ~2 ulps, float32 and float64) and keep the composed public helpers (artan_k, sin_k) bitwise thread-count independent.
# The references keep torch.atanh / torch.sinh: the parity rule bounds a kernel's error by the eager same-dtype
# error, and log1p's backward (exact 1 - s) is more accurate near the boundary than atanh's 1 / (1 - s^2).
def _atanh_pos(s: torch.Tensor) -> torch.Tensor:
    """artanh(s) for 0 <= s < 1: log1p(2s / (1 - s)) / 2 (1 - s is exact for s >= 1/2)."""
    return 0.5 * torch.log1p(2 * s / (1 - s))


def _sinh_pos(s: torch.Tensor) -> torch.Tensor:
    """sinh(s) for s >= 0: (e + e / (e + 1)) / 2 with e = expm1(s) (no cancellation); e^(s/2) e^(s/2) / 2 beyond
    s = 20, where e^-2s is below float64's half ulp, so it overflows only where sinh does.  Each branch sees a safe
    argument, so the unused one puts no NaN into the gradient.  float16 switches at s = 10 (e^-20 is far below its
    half ulp): its expm1 overflows past s = 11.1, and inf + inf / inf was NaN where sinh is inf."""
    big = s > (10 if s.dtype == torch.float16 else 20)
    e = torch.expm1(torch.where(big, torch.zeros_like(s), s))
    t = torch.where(big, s, torch.zeros_like(s))
    # (e^(t/2) as two nodes, the same bits: through one node the gradient formed e^(t/2) e^(t/2) or 2 sinh, which
    # overflowed short of cosh, e.g. float32 s in (88.7, 89.4]; each node's share here is sinh / 2)
    return torch.where(big, (0.5 * torch.exp(0.5 * t)) * torch.exp(0.5 * t), 0.5 * (e + e / (e + 1)))


def _split(z: torch.Tensor):
    """Masks and clamped copies of z for the three regimes (safe under autograd)."""
    small = z.abs() < _SERIES_CUT
    neg = z < 0
    z_s = z.clamp(-_SERIES_CUT, _SERIES_CUT)
    z_neg = z.clamp(max=-_SERIES_CUT)
    z_pos = z.clamp(min=_SERIES_CUT)
    return small, neg, z_s, z_neg, z_pos


def tanc(z: torch.Tensor) -> torch.Tensor:
    """tan(sqrt z)/sqrt z, analytic through z = 0."""
    small, neg, zs, zn, zp = _split(z)
    series = 1 + zs * (1 / 3 + zs * (2 / 15 + zs * (17 / 315 + zs * (62 / 2835 + zs * (1382 / 155925)))))
    sn, sp = (-zn).sqrt(), zp.sqrt()
    closed = torch.where(neg, torch.tanh(sn) / sn, torch.tan(sp) / sp)
    return torch.where(small, series, closed)


def atanc(z: torch.Tensor, atanh=torch.atanh, q: torch.Tensor | None = None) -> torch.Tensor:
    """atan(sqrt z)/sqrt z, analytic through z = 0 (artanh branch for z < 0; ``atanh`` for it: torch.atanh, what an
    eager user writes, keeps the parity rule's same-dtype baseline; geoops.stereographic.artan_k passes
    _atanh_pos).

    ``q``: 1 + z, where the caller has it without cancellation (logmap: (1 + k|x|^2)(1 + k|y|^2) / den).  The
    artanh branch then takes artanh(s) = log1p(2s (1 + s) / q) / 2 (1 - s = q / (1 + s)): near the ball's boundary
    1 - s from s alone keeps only ~eps / q of its digits.  q <= 0 (points outside the ball; `_ball_q` marks the
    other case) is clamped at 1e-15 and no gradient flows through it, as the kernels' clamp_q; a positive q however
    small is a point inside's (session 47: clamping every q below 1e-15 cut the dist of far float64 pairs within
    ~1e-8 of the boundary by 6 %).  float16 takes this branch in float32 (`_ball_q`)."""
    small, neg, zs, zn, zp = _split(z)
    series = 1 + zs * (-1 / 3 + zs * (1 / 5 + zs * (-1 / 7 + zs * (1 / 9 + zs * (-1 / 11)))))
    sp = zp.sqrt()
    if q is None:
        # points outside the ball (z <= -1) are clamped just inside it, like geoopt
        sn = (-zn).sqrt().clamp(max=1 - 1e-15 if z.dtype == torch.float64 else 1 - 1e-7)
        artanh = atanh(sn)
    else:
        # float16 in float32: the ratio 2s (1 + s) / q ~ e^(d sqrt|k|) passes 65504 beyond a distance d of ~11 / sqrt|k|
        # (pairs both near the boundary), and MIN_NORM rounds to 0 in it: dist and logmap were inf (session 48)
        w = torch.float32 if z.dtype == torch.float16 else z.dtype
        sn, q = (-zn).to(w).sqrt(), q.to(w)
        artanh = 0.5 * torch.log1p(2 * sn * (1 + sn) / torch.where(q > 0, q, MIN_NORM))
        sn, artanh = sn.to(z.dtype), artanh.to(z.dtype)
    closed = torch.where(neg, artanh / sn, torch.atan(sp) / sp)
    return torch.where(small, series, closed)


def _sqnorm(x: torch.Tensor, dim: int, keepdim: bool = True) -> torch.Tensor:
    return (x * x).sum(dim=dim, keepdim=keepdim)


def _dot(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return (a * b).sum(dim=dim, keepdim=True)


def tan_k(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """tan_k(x) = tan(sqrt(k) x)/sqrt(k) (tanh(sqrt(-k) x)/sqrt(-k) for k < 0, x at k = 0), elementwise, smooth in k."""
    return x * tanc(k * x * x)


def artan_k(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """artan_k(x) = atan(sqrt(k) x)/sqrt(k) (artanh(sqrt(-k) x)/sqrt(-k) for k < 0, x at k = 0), elementwise, smooth in k."""
    return x * atanc(k * x * x)


def project(x: torch.Tensor, *, k: torch.Tensor, dim: int = -1, eps: float = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.project`: rows of norm > (1 - eps)/sqrt(-k) scaled back to that norm (k < 0
    only; the identity for k >= 0)."""
    if eps < 0:
        eps = default_eps(x.dtype)
    norm = x.norm(dim=dim, keepdim=True, p=2).clamp_min(MIN_NORM)
    ball = k < 0
    # k >= 0: the identity, as the kernels (geoopt caps the norm at 1e15 there); maxnorm on a safe k, finite
    maxnorm = (1 - eps) / torch.where(ball, k.abs().clamp_min(MIN_NORM), torch.ones_like(k)).sqrt()
    return torch.where(ball & (norm > maxnorm), x / norm * maxnorm, x)


def lambda_x(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.lambda_x`: 2 / (1 + k|x|^2), reduced over ``dim``."""
    lam = 2 / (1 + k * _sqnorm(x, dim)).clamp_min(MIN_NORM)
    return lam if keepdim else lam.squeeze(dim)


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.mobius_add`:
    ((1 - 2k<x,y> - k|y|^2) x + (1 + k|x|^2) y) / (1 - 2k<x,y> + k^2 |x|^2 |y|^2)."""
    x2, y2 = _sqnorm(x, dim), _sqnorm(y, dim)
    xy = (x * y).sum(dim=dim, keepdim=True)
    num = (1 - 2 * k * xy - k * y2) * x + (1 + k * x2) * y
    den = 1 - 2 * k * xy + k * k * x2 * y2
    return num / den.clamp_min(MIN_NORM)


def mobius_sub(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.mobius_sub`: x (+)_k (-y)."""
    return mobius_add(x, -y, k=k, dim=dim)


def mobius_scalar_mul(r: torch.Tensor, x: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.mobius_scalar_mul`: tan_k(r artan_k(|x|)) x/|x|."""
    # tan_k(r artan_k(|x|)) x/|x|  with  artan_k(|x|) = |x| atanc(k|x|^2)
    x2 = _sqnorm(x, dim)
    a = atanc(k * x2)
    return x * (r * a * tanc(k * r * r * x2 * a * a))


def expmap0(u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.expmap0`: tan_k(|u|) u/|u| = tanc(k|u|^2) u."""
    return u * tanc(k * _sqnorm(u, dim))


def logmap0(y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.logmap0`: artan_k(|y|) y/|y| = atanc(k|y|^2) y."""
    return y * atanc(k * _sqnorm(y, dim))


def expmap(x: torch.Tensor, u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.expmap`: x (+)_k tan_k(lambda_x |u| / 2) u/|u|."""
    # x (+) tan_k(lambda_x |u| / 2) u/|u|
    half_lam = lambda_x(x, k=k, keepdim=True, dim=dim) / 2
    second = u * (half_lam * tanc(k * half_lam * half_lam * _sqnorm(u, dim)))
    return mobius_add(x, second, k=k, dim=dim)


def _ball_q(b: torch.Tensor, c: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """A pair's q = b c / den = (1 + k|x|^2)(1 + k|y|^2) / den for `atanc`, or 0 (its clamp) where x is outside the
    ball (b <= 0) and q <= 1e-15: with y outside too q > 0, and no point inside's (the kernels' ball_q).  float16
    factors give q in float32, as `atanc` takes it: q ~ 4 e^(-d sqrt|k|) falls below float16's normal range for a
    distance d beyond ~11 / sqrt|k|, and its gradient ~1 / q passes 65504 (session 48)."""
    if b.dtype == torch.float16:
        b, c, den = b.float(), c.float(), den.float()
    q = b * c / den
    return torch.where((b > 0) | (q > MIN_NORM), q, torch.zeros_like(q))


def _sub_den(xx: torch.Tensor, yy: torch.Tensor, xy: torch.Tensor, dd: torch.Tensor,
             k: torch.Tensor) -> torch.Tensor:
    """Denominator of (-x) (+)_k y, 1 + 2k<x,y> + k^2 |x|^2 |y|^2, from |x|^2, |y|^2, <x,y> and dd = |x - y|^2.

    k <= 0: as (1 + k|x|^2)(1 + k|y|^2) - k|x - y|^2, whose terms are non-negative inside the ball; the first form
    cancels (1 - 2 + 1) for close pairs near the boundary, to ~eps / den relative.  k > 0: the first form, whose
    terms are never the larger (the kernels' sub_den, csrc/include/geoops/stereo_math.h)."""
    return torch.where(k > 0, 1 + 2 * k * xy + k * k * xx * yy, (1 + k * xx) * (1 + k * yy) - k * dd)


def logmap(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.logmap`: (2/lambda_x) artan_k(|s|) s/|s| with s = (-x) (+)_k y.

    Written in x - y, which close pairs keep exactly (the kernels' form): with e = x - y, dd = |e|^2,
        s = (k dd x - (1 + k|x|^2) e) / den,   |s|^2 = dd / den,   1 + k|s|^2 = (1 + k|x|^2)(1 + k|y|^2) / den,
    den from `_sub_den`.  Near the boundary (1 + k|x|^2 = 2/lambda_x -> 0) Möbius addition's a x + b y and its
    denominator cancel, and 1 - sqrt(-k)|s| formed from |s| loses the rest (before session 46: a close pair at
    1 - |x| sqrt(-k) = 1e-6 was 1.2e-4 off relative, its k-gradient 8.4e-3;
    tests/test_stereographic_reference_exact.py).
    den is clamped at 1e-15 (geoopt's clamp; the kernels' too).  For k > 0 with x beyond the equator and the farther
    point (k|x|^2 > 1, |x| > |y|) the numerator's equal y form k dd y - (1 + 2k<x,y> - k|y|^2) e, whose terms do not
    cancel there."""
    e = x - y
    xx, yy, xy, dd = _sqnorm(x, dim), _sqnorm(y, dim), _dot(x, y, dim), _sqnorm(e, dim)
    b = 1 + k * xx  # = 2 / lambda_x
    den = _sub_den(xx, yy, xy, dd, k).clamp_min(MIN_NORM)
    x_form = k * dd * x - b * e
    y_form = k * dd * y - (1 + 2 * k * xy - k * yy) * e
    num = torch.where((k * xx > 1) & (xx > yy), y_form, x_form)
    a = atanc(k * dd / den, q=_ball_q(b, 1 + k * yy, den))
    return num * (b.clamp_min(MIN_NORM) * a / den)


def dist(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.dist`: 2 artan_k(|(-x) (+)_k y|), as logmap's length: |s| = |x - y| /
    sqrt(den) (den from `_sub_den`) and artanh through 1 + k|s|^2 = (1 + k|x|^2)(1 + k|y|^2) / den, so that close
    pairs and points near the boundary keep their digits."""
    xx, yy, xy = _sqnorm(x, dim), _sqnorm(y, dim), _dot(x, y, dim)
    dd = _sqnorm(x - y, dim)
    den = _sub_den(xx, yy, xy, dd, k).clamp_min(MIN_NORM)
    s_norm = (x - y).norm(dim=dim, p=2, keepdim=True) / den.sqrt()
    d = 2 * s_norm * atanc(k * s_norm * s_norm, q=_ball_q(1 + k * xx, 1 + k * yy, den))
    return d if keepdim else d.squeeze(dim)


def dist0(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.dist0`: 2 artan_k(|x|)."""
    d = 2 * artan_k(x.norm(dim=dim, p=2, keepdim=True), k)
    return d if keepdim else d.squeeze(dim)


# ---------------------------------------------------------------- three-vector row ops
# The compositions that geoops.stereographic ran before its fused kernels (csrc/cpu/stereographic_triple.cpp):
# geoopt's formulas and clamps, one torch op per term.
def gyration(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.gyration`: geoopt's closed form of gyr[a, b]u, the denominator clamped
    at 1e-15."""
    a2, b2, ab = _dot(a, a, dim), _dot(b, b, dim), _dot(a, b, dim)
    au, bu = _dot(a, u, dim), _dot(b, u, dim)
    k2 = k * k
    ca = -k2 * au * b2 - k * bu + 2 * k2 * ab * bu
    cb = -k2 * bu * a2 + k * au
    d = 1 - 2 * k * ab + k2 * a2 * b2
    return u + 2 * (ca * a + cb * b) / d.clamp_min(MIN_NORM)


def parallel_transport(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, k: torch.Tensor,
                       dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.parallel_transport`: gyr[y, -x] v * lambda_x / lambda_y."""
    lx = lambda_x(x, k=k, keepdim=True, dim=dim)
    ly = lambda_x(y, k=k, keepdim=True, dim=dim)
    return gyration(y, -x, v, k=k, dim=dim) * lx / ly


def parallel_transport0(y: torch.Tensor, v: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.parallel_transport0`: v (1 + k|y|^2), clamped at 1e-15."""
    return v * (1 + k * _sqnorm(y, dim)).clamp_min(MIN_NORM)


def parallel_transport0back(x: torch.Tensor, v: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.parallel_transport0back`: v / (1 + k|x|^2), clamped at 1e-15."""
    return v / (1 + k * _sqnorm(x, dim)).clamp_min(MIN_NORM)


def asinc(z: torch.Tensor) -> torch.Tensor:
    """asin(sqrt z)/sqrt z (sqrt z clamped at 1 - 1e-7), = asinh(sqrt -z)/sqrt -z for z < 0; analytic through
    z = 0 (its Taylor series for |z| < 1e-3)."""
    small, neg, zs, zn, zp = _split(z)
    series = 1 + zs * (1 / 6 + zs * (3 / 40 + zs * (5 / 112 + zs * (35 / 1152 + zs * (63 / 2816)))))
    sn, sp = (-zn).sqrt(), zp.sqrt()
    closed = torch.where(neg, torch.asinh(sn) / sn, torch.asin(sp.clamp(max=1 - 1e-7)) / sp)
    return torch.where(small, series, closed)


def sinc(z: torch.Tensor, sinh=torch.sinh) -> torch.Tensor:
    """sin(sqrt z)/sqrt z (= sinh(sqrt -z)/sqrt -z for z < 0), analytic through z = 0 (its Taylor series for
    |z| < 1e-3); ``sinh`` as atanc's ``atanh`` (geoops.stereographic.sin_k passes _sinh_pos)."""
    small, neg, zs, zn, zp = _split(z)
    series = 1 + zs * (-1 / 6 + zs * (1 / 120 + zs * (-1 / 5040 + zs * (1 / 362880 + zs * (-1 / 39916800)))))
    sn, sp = (-zn).sqrt(), zp.sqrt()
    closed = torch.where(neg, sinh(sn) / sn, torch.sin(sp) / sp)
    return torch.where(small, series, closed)


def sin_k(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reference of `geoops.stereographic.sin_k`: sinh(sqrt(-k) x)/sqrt(-k) (k < 0), sin(sqrt(k) x)/sqrt(k)
    (k > 0), x at k = 0; x sinc(k x^2), smooth in k (the series where |k x^2| < 1e-3)."""
    return x * sinc(k * x * x)


def arsin_k(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reference of `geoops.stereographic.arsin_k`: asinh(sqrt(-k) x)/sqrt(-k) (k < 0), asin(sqrt(k) x)/sqrt(k)
    (k > 0, the argument clamped at 1 - 1e-7), x at k = 0; x asinc(k x^2), smooth in k (the series where
    |k x^2| < 1e-3: the switch is on k x^2, not on |k| alone, so a small k with a large x keeps its digits)."""
    return x * asinc(k * x * x)


def dist2plane(x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False,
               signed: bool = False, scaled: bool = False, dim: int = -1) -> torch.Tensor:
    """Reference of `geoops.stereographic.dist2plane`: geoopt's distance from x to the gyroplane through p with
    normal a, arsin_k(2 |<(-p) (+) x, a>| / ((1 + k|(-p) (+) x|^2) |a|)) (times |a| when ``scaled``)."""
    diff = mobius_add(-p, x, k=k, dim=dim)
    diff2 = _dot(diff, diff, dim).clamp_min(MIN_NORM)
    sc = _dot(diff, a, dim)
    if not signed:
        sc = sc.abs()
    an = a.norm(dim=dim, keepdim=True, p=2)
    den = (1 + k * diff2) * an
    den = torch.where(den >= 0, den.clamp_min(MIN_NORM), den.clamp_max(-MIN_NORM))
    d = arsin_k(2.0 * sc / den, k)
    d = d * an if scaled else d
    return d if keepdim else d.squeeze(dim)


# ---------------------------------------------------------------- pairwise
def cdist(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor) -> torch.Tensor:
    """Pairwise distances dist(x[..., :, None, :], y[..., None, :, :]) by broadcasting ([..., N, M, D]).

    `k` broadcasts against the batch dimensions with two trailing singleton dimensions (..., 1, 1), or is a
    scalar.  Memory O(N M D): the oracle, not the fast path.
    """
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device)
    return dist(x.unsqueeze(-2), y.unsqueeze(-3), k=k.unsqueeze(-1) if k.dim() else k)


def mobius_matvec(m: torch.Tensor, x: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius matrix-vector product tan_k(|Mx|/|x| artan_k|x|) Mx/|Mx| (exactly 0 where Mx = 0), geoopt's."""
    if dim != -1 and dim != x.dim() - 1:
        x = x.movedim(dim, -1)
    mx = x @ m.transpose(-1, -2)
    xn2 = _sqnorm(x, -1)
    mxn2 = _sqnorm(mx, -1)
    xn = xn2.clamp_min(MIN_NORM ** 2).sqrt()
    mxn = mxn2.clamp_min(MIN_NORM ** 2).sqrt()
    # tan_k(q) / |Mx| with q = |Mx|/|x| artan_k|x| = |Mx| atanc(k|x|^2)
    q2 = mxn2 * atanc(k * xn2) ** 2
    res = mx * (atanc(k * xn2) * tanc(k * q2))
    zero = (mx == 0).all(dim=-1, keepdim=True)
    res = torch.where(zero, torch.zeros_like(res), res)
    del xn, mxn
    return res if dim == -1 or dim == x.dim() - 1 else res.movedim(-1, dim)


def mobius_pointwise_mul(w: torch.Tensor, x: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius pointwise multiplication tan_k(|w*x|/|x| artan_k|x|) (w*x)/|w*x| (exactly 0 where w*x = 0)."""
    wx = w * x
    xn2 = _sqnorm(x, dim)
    q2 = _sqnorm(wx, dim) * atanc(k * xn2) ** 2
    res = wx * (atanc(k * xn2) * tanc(k * q2))
    zero = (wx == 0).all(dim=dim, keepdim=True)
    return torch.where(zero, torch.zeros_like(res), res)
