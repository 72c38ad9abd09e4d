"""Triton kernels of the kappa-stereographic row ops (forward and backward).

Installed as ``geoops.kernels.stereographic``; ``geoops._backend`` uses it for
CUDA tensors, and for CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``).  The module implements the row-op contract of
``geoops._ops.stereographic`` (the same one as the C++ kernels)::

    stereo_fwd(code, x, y, k, r, param)            -> (N, D), or (N,) for scalar ops
    stereo_bwd(code, grad, x, y, k, r, param, mask) -> (dx, dy, dk, dr)

and the three-vector contract (gyration, the parallel transports, dist2plane; section "three-vector row
ops" below): ``triple_fwd(code, v0, v1, v2, k, flags)``, ``triple_bwd(code, grad, v0, v1, v2, k, flags, mask)``.

Layout.  One generic forward kernel and one generic backward kernel serve all
ops: ``OP`` is a compile-time constant, so every op gets its own specialised
binary.  A program handles ``BLOCK_M`` rows; a row of width D sits in one tile
of ``BLOCK_D = next_pow2(D)`` columns up to ``MAX_BLOCK_D``, and is walked in
chunks of ``MAX_BLOCK_D`` columns beyond that (two passes: reduce, then
write).  Per row the kernels reduce

    xx = <x,x>, yy = <y,y>, xy = <x,y>, dd = |x - y|^2   (dd accumulated directly)
    ga = <g,x>, gb = <g,y>, gc = <g,x - y>               (backward of vector ops)

and the row scalar math below turns them into coefficients / adjoints.

Scalar math.  The ``@triton.jit`` helpers ``_tanc``, ``_tanc_d``, ``_atanc``,
``_atanc_d``, ``_mobius_add_coef``, ``_mobius_add_vjp``, ``_fwd_coef`` and
``_vjp`` mirror ``csrc/include/geoops/stereo_math.h`` op by op (same
expressions, same clamps, same order of operations).  The C++ branches become
``tl.where`` over the rows, and the untaken side of every branch is fed a safe
argument so that no lane divides by zero or takes sqrt of a negative number.

Precision.  Tiles are loaded in the tile type CT: float64 for float64 inputs,
float32 for the others (float16/bfloat16 are loaded, upcast, and stored back in
their dtype).  The row sums are reduced in the sum type ST: float64 for every
dtype (each element widened, its products and x - y formed and summed in
float64, like the C++ kernels' row sums; GEOOPS_TRITON_STEREO_F64_SUMS=0:
float32 sums, the kernels before session 31).  The per-row scalar math
(coefficients and adjoints, from the row sums) runs in float64 for every
dtype, with the Taylor cut 1e-3, like the C++ kernels; the coefficients are
cast back to CT for the element-wise pass.  Every division is IEEE (``_div``: div.rn, never the
approximate div.full.f32 a plain float32 `/` compiles to).  k and r are loaded
in their own dtype (float32 or float64).  ``param`` (the
margin of ``project``) is a compile-time constant, so float64 keeps all its
digits (a runtime float argument would be passed as float32); it is pinned to
the compute type in the kernel, and only ``project`` is specialised on it.

Transcendentals.  tanh, tan, atan and log1p come from libdevice when compiled.
The Triton interpreter cannot run libdevice calls, so when the kernels are
interpreted the same names resolve to numpy (``_NumpyMath``).
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl

from . import sm_count

try:  # Triton >= 3.0: backend-neutral stubs, mapped to CUDA/HIP libdevice at compile time
    from triton.language.extra import libdevice as _libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra.cuda import libdevice as _libdevice

__all__ = ["stereo_fwd", "stereo_bwd", "triple_fwd", "triple_bwd", "MAX_BLOCK_D", "midpoint_fwd", "midpoint_bwd",
           "midpoint_root_fwd", "midpoint_root_bwd"]

# Op codes: geoops::stereo::Op in csrc/include/geoops/stereo_math.h.
MOBIUS_ADD = tl.constexpr(0)
MOBIUS_SUB = tl.constexpr(1)
PROJECT = tl.constexpr(2)
LAMBDA_X = tl.constexpr(3)
MOBIUS_SCALAR_MUL = tl.constexpr(4)
EXPMAP = tl.constexpr(5)
EXPMAP0 = tl.constexpr(6)
LOGMAP = tl.constexpr(7)
LOGMAP0 = tl.constexpr(8)
DIST = tl.constexpr(9)
DIST0 = tl.constexpr(10)
NUM_OPS = 11

# Static facts per op (op_has_y / op_scalar_out / op_has_r of stereo_math.h).
HAS_Y_OPS = frozenset({0, 1, 5, 7, 9})
SCALAR_OUT_OPS = frozenset({3, 9, 10})
HAS_R_OPS = frozenset({4})

# The per-row scalar math (coefficients, adjoints) runs in float64 for every input dtype, like the C++
# kernels: near the ball's boundary expmap's float32 backward lost 5 digits to cancellation (6x outside
# the parity bound); rows are reduced in the tile type CT, and the coefficients cast back to it.
F64 = tl.constexpr(tl.float64)
# geoopt's guard on denominators and norms (min_den<T>()).
_MIN_DEN = tl.constexpr(1e-15)
# Taylor cuts (series_cut<T>()).
_CUT_F64 = 1e-3
_CUT_F32 = 0.05
# logmap (k > 0) near x's antipode: rows whose den from the row sums is below this take it from a second pass,
# |x + k xx y|^2 / xx (antipode_cut<T>(), stereo_math.h: why, and the bound that sets it).
_ANTIPODE_CUT = tl.constexpr(1e-3)
# ... and the floor of that den (antipode_min_den<T>(), stereo_math.h; min_den's 1e-15 shortened the rows within ~3e-8
# of the antipode by up to 97 %): those rows are written in float64 in every dtype
_ANTIPODE_MIN_DEN = tl.constexpr(1e-30)
# ... and in the float types the rows written in float64 reach up to these (antipode_float_cut_fwd / _bwd<T>(),
# stereo_math.h: a float write is ~3 eps32 / sqrt(den) off, its gradients ~15 eps32 / den); the rows between
# _ANTIPODE_CUT and them keep the sums' den
_ANTIPODE_FLOAT_CUT_FWD = tl.constexpr(0.05)
_ANTIPODE_FLOAT_CUT_BWD = tl.constexpr(0.5)

# A row up to this width lives in one tile; wider rows are walked in chunks of it.
MAX_BLOCK_D = 4096
# Elements per program aimed at (rows x columns), forward and backward.
_TILE_FWD = 4096
_TILE_BWD = 2048
_MAX_BLOCK_M = 64


# ---------------------------------------------------------------- math functions
class _NumpyMath:
    """tanh/tan/atan/log1p on interpreter tensors (the interpreter has no libdevice)."""

    @staticmethod
    def _unary(fn, x):
        """numpy's `fn` (a name, or a function of an ndarray) on the interpreter tensor x."""
        import numpy as np  # only the interpreter needs numpy: imported here, not at module level
        from triton.runtime.interpreter import TensorHandle

        h = x.handle
        with np.errstate(all="ignore"):
            f = getattr(np, fn) if isinstance(fn, str) else fn
            data = np.asarray(f(h.data)).astype(h.data.dtype, copy=False)
        return tl.core.tensor(TensorHandle(data, h.dtype.scalar), x.type)

    tanh = staticmethod(lambda x: _NumpyMath._unary("tanh", x))
    tan = staticmethod(lambda x: _NumpyMath._unary("tan", x))
    atan = staticmethod(lambda x: _NumpyMath._unary("arctan", x))
    log1p = staticmethod(lambda x: _NumpyMath._unary("log1p", x))
    asinh = staticmethod(lambda x: _NumpyMath._unary("arcsinh", x))
    asin = staticmethod(lambda x: _NumpyMath._unary("arcsin", x))


# Resolved by the kernels at run/compile time; set below once we know whether
# the kernels are interpreted.
_math = _libdevice


@triton.jit
def _sqrt(x):
    # correctly rounded in both precisions, like C++ sqrt
    if x.dtype == tl.float64:
        s = tl.sqrt(x)
    else:
        s = tl.sqrt_rn(x)
    return s


@triton.jit
def _div(a, b):
    # a / b correctly rounded in both precisions, like C++ (nvcc: div.rn.f32).  A plain `/` on float32
    # compiles to div.full.f32 (approximate, up to 2 ulp, and 0 for |b| > 2^126); the row math below
    # divides by clamped denominators and feeds cancellations, so every float32 division is IEEE here.
    # The compile check's table counts div.full/approximate instructions per kernel.
    if b.dtype == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _clamp_min_den(v):
    # v > min_den ? v : min_den
    return tl.where(v > _MIN_DEN, v, _MIN_DEN)


@triton.jit
def _clamp_min_den_live(v):
    # (live ? v : min_den, live) with live = v > min_den: the clamp and whether it let v through
    live = v > _MIN_DEN
    return tl.where(live, v, _MIN_DEN), live


@triton.jit
def _clamp_q_live(q):
    # (stereo_math.h's clamp_q) atanc's q: only q <= 0 (or NaN; outside the ball) takes min_den, a positive q
    # however small is a point inside's (session 47); live: q let through
    live = q > 0.0
    return tl.where(live, q, _MIN_DEN), live


@triton.jit
def _ball_q(nb, q):
    # (stereo_math.h's ball_q) a pair's q = pp / den, or 0 (clamped) where x is outside the ball and q <= min_den
    return tl.where((nb > 0.0) | (q > _MIN_DEN), q, 0.0)


# ---------------------------------------------------------------- tanc / atanc
# The closed forms run in float64 for every input precision: float32 kernels round once at the end.
# libdevice's float32 tan/tanh/atan are up to 4/2/2 ulp off and sqrt's rounding is amplified by the
# slope of tan near pi/2; near the ball's boundary expmap's and logmap's backward amplify those
# errors by 1/(1 + k|x|^2)^2, which put the float32 kernels outside the parity bound when run at
# libdevice's error levels (tests/triton: test_parity_floors_at_libdevice_error_levels).  The cost
# is a few float64 operations per row, against D elements of memory traffic per row.
@triton.jit
def _tan_cw(s):
    """tan(s) for float64 s >= 0 without libdevice: the float32/float16/bfloat16 kernels' tan.

    libdevice's double tan carries a call to its large-argument reduction (`__internal_trig_reduction_
    slowpathd`, Payne-Hanek), around which ptxas kept a word or two on the stack in the float32 row kernels.
    Here: Cody-Waite.  n = nearest integer to s / (pi/2); r = s - n pi/2 with pi/2 = C1 + C2 + C3 (three
    float64 words) subtracted by fmas: the first is exact (|r| < 2, a multiple of ulp(C1)), the others round
    once each relative to r itself, so r keeps its relative accuracy next to a multiple of pi/2 (the rest
    of pi/2, n * 5.6e-50, is below any such r for s < 2^50; the kernels' float32 arguments carry far more
    error than that beyond s ~ 2^24, and for s >= 2^50 r is that of a rounded n, clamped: finite).  Then
    tan r = sin r / cos r, Taylor to r^17 / r^16 on |r| <= pi/4 (truncation < 1e-18), -cos/sin for odd n:
    a few float64 ulp, then rounded to float32 or below."""
    n = tl.floor(s * 0.6366197723675814 + 0.5)
    # float64 tensors: a Python float in tl.fma would become a float32 constant (C2, C3 would lose bits)
    c1 = tl.full(s.shape, 1.5707963267948966, tl.float64)
    c2 = tl.full(s.shape, 6.123233995736766e-17, tl.float64)
    c3 = tl.full(s.shape, -1.4973849048591698e-33, tl.float64)
    r = tl.fma(-n, c3, tl.fma(-n, c2, tl.fma(-n, c1, s)))
    r = tl.minimum(tl.maximum(r, -0.79), 0.79)
    r2 = r * r
    sn = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (
        -1.0 / 39916800 + r2 * (1.0 / 6227020800 + r2 * (-1.0 / 1307674368000 + r2 * (1.0 / 355687428096000))))))))
    cs = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800 + r2 * (
        1.0 / 479001600 + r2 * (-1.0 / 87178291200 + r2 * (1.0 / 20922789888000))))))))
    odd = (n - 2.0 * tl.floor(0.5 * n)) != 0.0
    return tl.where(odd, -cs / sn, sn / cs)


@triton.jit
def _tanc_closed(az, neg):
    """tan(s)/s, or tanh(s)/s where `neg`, for s = sqrt(az), az > 0: in float64, cast to az's type.

    float64 kernels use libdevice's tan (exact reduction for any argument); the others _tan_cw."""
    s = tl.sqrt(az.to(tl.float64))
    if az.dtype == tl.float64:
        tn = _math.tan(s)
    else:
        tn = _tan_cw(s)
    r = tl.where(neg, _math.tanh(s) / s, tn / s)
    return r.to(az.dtype)


@triton.jit
def _atanc_closed(az, q, neg, NEG: tl.constexpr = False):
    """atan(s)/s, or artanh(s)/s where `neg` (q = 1 - s^2), for s = sqrt(az): in float64, cast to az's type.
    NEG: every lane is a `neg` one (the Poincaré ball's k < 0): no atan is evaluated."""
    s = tl.sqrt(az.to(tl.float64))
    q64, _ = _clamp_q_live(q.to(tl.float64))
    # artanh(s) = 0.5*log1p(2s/(1-s)) and 1 - s = q/(1 + s)
    r = 0.5 * _math.log1p(2.0 * s * (1.0 + s) / q64) / s
    if not NEG:
        r = tl.where(neg, r, _math.atan(s) / s)
    return r.to(az.dtype)


@triton.jit
def _tanc(z, CUT: tl.constexpr):
    """tan(sqrt z)/sqrt z (tanh(sqrt -z)/sqrt -z for z < 0), series for |z| < CUT."""
    az = tl.abs(z)
    small = az < CUT
    series = 1.0 + z * (1.0 / 3 + z * (2.0 / 15 + z * (17.0 / 315 + z * (62.0 / 2835 + z * (1382.0 / 155925)))))
    closed = _tanc_closed(tl.where(small, 1.0, az), z < 0)  # a safe |z| = 1 on the series lanes
    return tl.where(small, series, closed)


@triton.jit
def _tanc_d(z, t, CUT: tl.constexpr):
    """d tanc / dz given t = tanc(z)."""
    small = tl.abs(z) < CUT
    series = 1.0 / 3 + z * (4.0 / 15 + z * (51.0 / 315 + z * (248.0 / 2835 + z * (6910.0 / 155925))))
    zs = tl.where(small, 1.0, z)
    closed = _div(1.0 + zs * t * t - t, 2.0 * zs)
    return tl.where(small, series, closed)


@triton.jit
def _atanc(z, q, CUT: tl.constexpr, NEG: tl.constexpr = False):
    """atan(sqrt z)/sqrt z (artanh(sqrt -z)/sqrt -z for z < 0); q = 1 + z formed by the caller.  NEG: the caller's
    z are <= 0 (the Poincaré ball, k = -c < 0): the artanh branch alone (_atanc_closed)."""
    az = tl.abs(z)
    small = az < CUT
    series = 1.0 + z * (-1.0 / 3 + z * (1.0 / 5 + z * (-1.0 / 7 + z * (1.0 / 9 + z * (-1.0 / 11)))))
    closed = _atanc_closed(tl.where(small, 1.0, az), q, z < 0, NEG)
    return tl.where(small, series, closed)


@triton.jit
def _atanc_d(z, q, a, CUT: tl.constexpr):
    """d atanc / dz given a = atanc(z)."""
    small = tl.abs(z) < CUT
    series = -1.0 / 3 + z * (2.0 / 5 + z * (-3.0 / 7 + z * (4.0 / 9 + z * (-5.0 / 11))))
    zs = tl.where(small, 1.0, z)
    # Outside the ball (q <= 0) the value was taken at the clamped q, and the 1/q term is the clamp's
    # derivative, which geoopt's clamp zeroes: drop it (as stereo_math.h does), so that points just outside
    # the ball get bounded gradients instead of ~1/min_den.
    qc, live = _clamp_q_live(q)
    closed = _div(tl.where(live, _div(1.0, qc), 0.0) - a, 2.0 * zs)
    return tl.where(small, series, closed)


# ---------------------------------------------------------------- mobius_add
@triton.jit
def _mobius_add_coef(xx, yy, xy, k):
    den = _clamp_min_den(1.0 - 2.0 * k * xy + k * k * xx * yy)
    return _div(1.0 - 2.0 * k * xy - k * yy, den), _div(1.0 + k * xx, den)


@triton.jit
def _mobius_add_vjp(xx, yy, xy, k, ga, gb):
    """Adjoints (xx, yy, xy, k) of mobius_add's coefficients (a, b)."""
    den, live = _clamp_min_den_live(1.0 - 2.0 * k * xy + k * k * xx * yy)
    a = _div(1.0 - 2.0 * k * xy - k * yy, den)
    b = _div(1.0 + k * xx, den)
    na_ = _div(ga, den)
    nb_ = _div(gb, den)
    den_ = tl.where(live, _div(-(ga * a + gb * b), den), 0.0)
    g_xx = nb_ * k + den_ * k * k * yy
    g_yy = -na_ * k + den_ * k * k * xx
    g_xy = -2.0 * k * (na_ + den_)
    g_k = na_ * (-2.0 * xy - yy) + nb_ * xx + den_ * (-2.0 * xy + 2.0 * k * xx * yy)
    return g_xx, g_yy, g_xy, g_k


@triton.jit
def _sub_den(pp, xx, yy, xy, dd, k):
    """Denominator of (-x) (+) y (unclamped), pp = (1 + k xx)(1 + k yy): pp - k dd for k <= 0 (non-negative terms;
    1 + 2k xy + k^2 xx yy cancels for close pairs near the boundary), that form for k > 0 (its terms never sum to
    more than pp + k dd).  Why: stereo_math.h, sub_den (session 41)."""
    return tl.where(k > 0, 1.0 + 2.0 * k * xy + k * k * xx * yy, pp - k * dd)


@triton.jit
def _sub_den_vjp(den_, live, xx, yy, xy, dd, k):
    """Adjoints (xx, yy, xy, dd, k) of _sub_den from its adjoint den_ (0 where not live), in the form it took."""
    pos = k > 0
    kd = den_ * k
    g_xx = tl.where(live, kd * tl.where(pos, k * yy, 1.0 + k * yy), 0.0)
    g_yy = tl.where(live, kd * tl.where(pos, k * xx, 1.0 + k * xx), 0.0)
    g_xy = tl.where(live & pos, 2.0 * kd, 0.0)
    g_dd = tl.where(live & (k <= 0), -kd, 0.0)
    g_k = tl.where(live, den_ * tl.where(pos, 2.0 * xy + 2.0 * k * xx * yy,
                                         xx * (1.0 + k * yy) + yy * (1.0 + k * xx) - dd), 0.0)
    return g_xx, g_yy, g_xy, g_dd, g_k


# ---------------------------------------------------------------- forward coefficients
@triton.jit
def _logmap_coef(xx, yy, xy, dd, k, den0, lo, CUT: tl.constexpr):
    """logmap's (a, b, c) given den0, the denominator of (-x) (+) y before its clamp at lo (_sub_den of the row sums
    and _MIN_DEN, or _antipode_den's near x's antipode).
    s = (-x) (+) y = (k dd x - (1 + k xx)(x - y)) / den  (x form)
                   = (k dd y - (1 + 2k xy - k yy)(x - y)) / den  (y form: k xx > 1 and xx > yy),
    |s|^2 = dd / den, out = (1 + k xx) A(k |s|^2) s.  Why two forms: stereo_math.h, logmap_y_form."""
    nb = 1.0 + k * xx
    pp = nb * (1.0 + k * yy)
    den = tl.where(den0 > lo, den0, lo)
    p = _clamp_min_den(nb)
    z = _div(k * dd, den)
    q = _ball_q(nb, _div(pp, den))
    f = _atanc(z, q, CUT) * p
    yf = (k * xx > 1.0) & (xx > yy)
    w = 1.0 + 2.0 * k * xy - k * yy
    F = _div(f * k * dd, den)
    a = tl.where(yf, 0.0, F)
    b = tl.where(yf, F, 0.0)
    c = _div(-f * tl.where(yf, w, nb), den)
    return a, b, c


@triton.jit
def _logmap_vjp(xx, yy, xy, dd, k, den0, lo, ga, gb, gc, CUT: tl.constexpr):
    """Adjoints (xx, yy, xy, dd, k) of logmap's (a, b, c) given den0 and its floor lo as _logmap_coef."""
    nb = 1.0 + k * xx
    pp = nb * (1.0 + k * yy)
    den_live = den0 > lo
    den = tl.where(den_live, den0, lo)
    p, p_live = _clamp_min_den_live(nb)
    z = _div(k * dd, den)
    q = _ball_q(nb, _div(pp, den))
    A = _atanc(z, q, CUT)
    f = A * p
    # x form: a = F, c = -f nb / den; y form: b = F, c = -f w / den (F = f k dd / den, w = 1 + 2k xy - k yy);
    # w's adjoint wy (0 in x-form rows) carried to xy, yy below (one live value: the sm_90 float64 variant spilled
    # with the mask and the adjoint both live)
    yf = (k * xx > 1.0) & (xx > yy)
    mw = tl.where(yf, 1.0 + 2.0 * k * xy - k * yy, nb)
    gF = tl.where(yf, gb, ga)
    a = _div(f * k * dd, den)
    c = _div(-f * mw, den)
    f_ = _div(gF * k * dd, den) - _div(gc * mw, den)
    dd_ = _div(gF * f * k, den)
    mw_ = _div(-gc * f, den)
    wy = tl.where(yf, mw_, 0.0)
    nb_ = tl.where(yf, 0.0, mw_)
    den_ = _div(-(a * gF + c * gc), den)
    k_ = _div(gF * f * dd, den) + wy * (2.0 * xy - yy)
    # f = A(z) p
    A_ = f_ * p
    p_ = f_ * A
    z_ = A_ * _atanc_d(z, q, A, CUT)
    k_ += _div(z_ * dd, den)
    dd_ += _div(z_ * k, den)
    den_ -= _div(z_ * z, den)
    xx1 = nb_ + tl.where(p_live, p_, 0.0)
    g_xx = xx1 * k
    k_ += xx1 * xx
    s_xx, s_yy, s_xy, s_dd, s_k = _sub_den_vjp(den_, den_live, xx, yy, xy, dd, k)
    g_xy = s_xy + wy * 2.0 * k  # (+ the y form's w)
    g_xx = g_xx + s_xx
    g_yy = s_yy - wy * k
    g_dd = dd_ + s_dd
    g_k = k_ + s_k
    return g_xx, g_yy, g_xy, g_dd, g_k


@triton.jit
def _fwd_coef(OP: tl.constexpr, xx, yy, xy, dd, k, r, PARAM: tl.constexpr, CUT: tl.constexpr):
    """Coefficients (a, b, c): out = a x + b y + c (x - y); scalar ops return their value in a."""
    zero = tl.zeros_like(xx)
    a = zero
    b = zero
    c = zero
    if OP == MOBIUS_ADD:
        a, b = _mobius_add_coef(xx, yy, xy, k)
    elif OP == MOBIUS_SUB:
        a, b0 = _mobius_add_coef(xx, yy, -xy, k)
        b = -b0
    elif OP == PROJECT:
        # maxnorm = (1 - eps)/sqrt(-k) on the ball, no bound otherwise
        eps = zero + PARAM  # pinned to the compute type
        n = _clamp_min_den(_sqrt(xx))
        kneg = k < 0
        m = _div(1.0 - eps, _sqrt(tl.where(kneg, -k, 1.0)))
        a = tl.where(kneg & (n > m), _div(m, n), 1.0)
    elif OP == LAMBDA_X:
        p = 1.0 + k * xx
        p = tl.where(p != p, p, _clamp_min_den(p))  # a NaN stays NaN (torch.clamp_min)
        a = _div(2.0, p)
    elif OP == MOBIUS_SCALAR_MUL:
        # tan_k(r artan_k(|x|)) / |x| = r A(k|x|^2) T(k r^2 |x|^2 A^2)
        z1 = k * xx
        a1 = _atanc(z1, 1.0 + z1, CUT)
        z2 = k * r * r * xx * a1 * a1
        a = r * a1 * _tanc(z2, CUT)
    elif OP == EXPMAP:
        # x (+) t u with t = h T(k h^2 |u|^2), h = 1/(1 + k|x|^2)
        p = _clamp_min_den(1.0 + k * xx)
        h = _div(1.0, p)
        t = h * _tanc(k * h * h * yy, CUT)
        ca, cb = _mobius_add_coef(xx, t * t * yy, t * xy, k)
        a = ca
        b = cb * t
    elif OP == EXPMAP0:
        a = _tanc(k * xx, CUT)
    elif OP == LOGMAP:
        a, b, c = _logmap_coef(xx, yy, xy, dd, k, _sub_den((1.0 + k * xx) * (1.0 + k * yy), xx, yy, xy, dd, k),
                               _MIN_DEN, CUT)
    elif OP == LOGMAP0:
        z = k * xx
        a = _atanc(z, 1.0 + z, CUT)
    elif OP == DIST:
        pp = (1.0 + k * xx) * (1.0 + k * yy)
        den = _clamp_min_den(_sub_den(pp, xx, yy, xy, dd, k))
        ss = _div(dd, den)
        z = k * ss
        q = _ball_q(1.0 + k * xx, _div(pp, den))
        a = 2.0 * _sqrt(ss) * _atanc(z, q, CUT)
    elif OP == DIST0:
        z = k * xx
        a = 2.0 * _sqrt(xx) * _atanc(z, 1.0 + z, CUT)
    return a, b, c


# ---------------------------------------------------------------- vector-Jacobian products
@triton.jit
def _vjp(OP: tl.constexpr, xx, yy, xy, dd, k, r, ga, gb, gc, PARAM: tl.constexpr, CUT: tl.constexpr):
    """Adjoints (xx, yy, xy, dd, k, r) of the row scalars from the adjoints (ga, gb, gc) of (a, b, c)."""
    zero = tl.zeros_like(xx)
    g_xx = zero
    g_yy = zero
    g_xy = zero
    g_dd = zero
    g_k = zero
    g_r = zero
    if OP == MOBIUS_ADD:
        g_xx, g_yy, g_xy, g_k = _mobius_add_vjp(xx, yy, xy, k, ga, gb)
    elif OP == MOBIUS_SUB:
        g_xx, g_yy, m_xy, g_k = _mobius_add_vjp(xx, yy, -xy, k, ga, -gb)
        g_xy = -m_xy
    elif OP == PROJECT:
        eps = zero + PARAM
        n = _sqrt(xx)
        kneg = k < 0
        m = _div(1.0 - eps, _sqrt(tl.where(kneg, -k, 1.0)))
        on = kneg & (n > _MIN_DEN) & (n > m)
        ns = tl.where(on, n, 1.0)
        nk = tl.where(on, -k, 1.0)
        # a = m / n
        g_xx = tl.where(on, _div(-ga * m, 2.0 * ns * ns * ns), 0.0)
        g_k = tl.where(on, _div(ga * m, ns * 2.0 * nk), 0.0)
    elif OP == LAMBDA_X:
        p0 = 1.0 + k * xx
        live = p0 > _MIN_DEN
        p = tl.where(live, p0, 1.0)
        p_ = _div(-2.0 * ga, p * p)
        g_xx = tl.where(live, p_ * k, 0.0)
        g_k = tl.where(live, p_ * xx, 0.0)
    elif OP == MOBIUS_SCALAR_MUL:
        z1 = k * xx
        q1 = 1.0 + z1
        a1 = _atanc(z1, q1, CUT)
        z2 = k * r * r * xx * a1 * a1
        t2 = _tanc(z2, CUT)
        z2_ = ga * r * a1 * _tanc_d(z2, t2, CUT)
        a1_ = ga * r * t2 + z2_ * 2.0 * k * r * r * xx * a1
        z1_ = a1_ * _atanc_d(z1, q1, a1, CUT)
        g_xx = z2_ * k * r * r * a1 * a1 + z1_ * k
        g_k = z2_ * r * r * xx * a1 * a1 + z1_ * xx
        g_r = ga * a1 * t2 + z2_ * 2.0 * k * r * xx * a1 * a1
    elif OP == EXPMAP:
        p, live = _clamp_min_den_live(1.0 + k * xx)
        h = _div(1.0, p)
        z = k * h * h * yy
        tz = _tanc(z, CUT)
        t = h * tz
        Y = t * t * yy
        XY = t * xy
        ca, cb = _mobius_add_coef(xx, Y, XY, k)
        # out = A x + (B t) u
        m_xx, m_yy, m_xy, m_k = _mobius_add_vjp(xx, Y, XY, k, ga, gb * t)
        t_ = gb * cb + m_yy * 2.0 * t * yy + m_xy * xy
        g_yy = m_yy * t * t
        g_xy = m_xy * t
        g_xx = m_xx
        g_k = m_k
        h_ = t_ * tz
        z_ = t_ * h * _tanc_d(z, tz, CUT)
        g_k += z_ * h * h * yy
        h_ += z_ * 2.0 * k * h * yy
        g_yy += z_ * k * h * h
        p_ = -h_ * h * h
        g_xx = tl.where(live, g_xx + p_ * k, g_xx)
        g_k = tl.where(live, g_k + p_ * xx, g_k)
    elif OP == EXPMAP0:
        z = k * xx
        z_ = ga * _tanc_d(z, _tanc(z, CUT), CUT)
        g_xx = z_ * k
        g_k = z_ * xx
    elif OP == LOGMAP:
        pp = (1.0 + k * xx) * (1.0 + k * yy)
        g_xx, g_yy, g_xy, g_dd, g_k = _logmap_vjp(xx, yy, xy, dd, k, _sub_den(pp, xx, yy, xy, dd, k), _MIN_DEN, ga, gb,
                                                  gc, CUT)
    elif OP == LOGMAP0:
        z = k * xx
        q = 1.0 + z
        z_ = ga * _atanc_d(z, q, _atanc(z, q, CUT), CUT)
        g_xx = z_ * k
        g_k = z_ * xx
    elif OP == DIST:
        pp = (1.0 + k * xx) * (1.0 + k * yy)
        den, den_live = _clamp_min_den_live(_sub_den(pp, xx, yy, xy, dd, k))
        ss = _div(dd, den)
        # |s| is not differentiable at 0: zero subgradient, like torch.norm
        on = ss > 0
        w = _sqrt(tl.where(on, ss, 1.0))
        z = k * ss
        q = _ball_q(1.0 + k * xx, _div(pp, den))
        A = _atanc(z, q, CUT)
        Ad = _atanc_d(z, q, A, CUT)
        # v = 2 w A(k w^2), dv/dss = ss_ = ga P / w, P = A + 2z A'(z) = 1 / (1 + z): 1 / q above the cut
        # (stereo_math.h); u = ss_ / den / P
        series = tl.abs(z) < CUT
        qc, q_live = _clamp_q_live(q)
        P = tl.where(series, A + 2.0 * z * Ad, tl.where(q_live, _div(1.0, qc), 0.0))
        u = _div(ga, w * den)
        k_ = ga * 2.0 * w * Ad * ss
        den_ = -u * P * ss
        g_xx, g_yy, g_xy, s_dd, s_k = _sub_den_vjp(den_, on & den_live, xx, yy, xy, dd, k)
        # dd's whole adjoint where k <= 0, u P (1 + z) with P (1 + z) = 1 above the cut: the sum of ss_ / den and
        # s_dd = -k den_ (~1 / q each near the boundary) lost ~eps / q relative (stereo_math.h, DIST)
        Pz = tl.where(series, P * (1.0 + z), tl.where(q_live, 1.0, 0.0))
        g_dd = tl.where(on, tl.where(den_live & (k <= 0), u * Pz, u * P + s_dd), 0.0)
        g_k = tl.where(on, k_ + s_k, 0.0)
    elif OP == DIST0:
        on = xx > 0
        w = _sqrt(tl.where(on, xx, 1.0))
        z = k * xx
        q = 1.0 + z
        A = _atanc(z, q, CUT)
        Ad = _atanc_d(z, q, A, CUT)
        g_xx = tl.where(on, ga * (_div(A, w) + 2.0 * w * k * Ad), 0.0)
        g_k = tl.where(on, ga * 2.0 * w * Ad * xx, 0.0)
    return g_xx, g_yy, g_xy, g_dd, g_k, g_r


# ---------------------------------------------------------------- kernels
# Both kernels walk a row in (BLOCK_M, BLOCK_D) tiles: one tile per row (ONE_CHUNK), kept in
# registers between the reduce and the write, or chunk by chunk, reloaded for the write.  The
# helpers below are shared by the two paths and by the forward and the backward.
@triton.jit
def _row_scalars(K, R, rows64, rmask, stride_k, stride_r, HAS_R: tl.constexpr, CT: tl.constexpr):
    k = tl.load(K + rows64 * stride_k, mask=rmask, other=0.0).to(CT)
    if HAS_R:
        r = tl.load(R + rows64 * stride_r, mask=rmask, other=0.0).to(CT)
    else:
        r = tl.zeros_like(k)
    return k, r


@triton.jit
def _load_tiles(x_row, y_row, g_row, cc, rmask, D, HAS_Y: tl.constexpr, HAS_G: tl.constexpr, CT: tl.constexpr):
    """Mask and tiles x, y, x - y, g at columns cc of the rows, upcast to CT (masked lanes read 0).

    Without HAS_Y (HAS_G) the y and x - y (g) tiles are zero placeholders that no caller reads."""
    m2 = rmask[:, None] & (cc[None, :] < D)
    xv = tl.load(x_row[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
    yv = tl.zeros_like(xv)
    dv = yv
    gv = yv
    if HAS_Y:
        yv = tl.load(y_row[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
        dv = xv - yv
    if HAS_G:
        gv = tl.load(g_row[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
    return m2, xv, yv, dv, gv


@triton.jit
def _tile_sums(xv, yv, gv, HAS_Y: tl.constexpr, HAS_G: tl.constexpr, ST: tl.constexpr):
    """A tile's share of the row sums (xx, yy, xy, dd, ga, gb, gc) in the sum type ST; those the op lacks are 0.

    The tiles are widened to ST first, and x - y is formed in ST: with ST = float64 and float32 (or narrower)
    tiles every product and difference is exact, and only the float64 additions round (the C++ kernels' row
    sums).  Float32 sums rounded xx, xy, yy a few float32 ulps, which the near-singular rows amplify: 1 + k|x|^2
    near the boundary, k xx yy terms of dk at |k| << 1 (session 31, issue 6)."""
    xs = xv.to(ST)
    xx = tl.sum(xs * xs, axis=1)
    zero = tl.zeros_like(xx)
    yy, xy, dd, ga, gb, gc = zero, zero, zero, zero, zero, zero
    if HAS_Y:
        ys = yv.to(ST)
        ds = xs - ys
        yy = tl.sum(ys * ys, axis=1)
        xy = tl.sum(xs * ys, axis=1)
        dd = tl.sum(ds * ds, axis=1)
    if HAS_G:
        gs = gv.to(ST)
        ga = tl.sum(gs * xs, axis=1)
        if HAS_Y:
            gb = tl.sum(gs * ys, axis=1)
            gc = tl.sum(gs * ds, axis=1)
    return xx, yy, xy, dd, ga, gb, gc


@triton.jit
def _chunked_sums(
    x_row, y_row, g_row, rmask, D,
    HAS_Y: tl.constexpr, HAS_G: tl.constexpr, CT: tl.constexpr, ST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The row sums of `_tile_sums` over rows wider than a tile, accumulated chunk by chunk in ST."""
    cols = tl.arange(0, BLOCK_D)
    zero = tl.zeros([BLOCK_M], dtype=ST)
    xx, yy, xy, dd, ga, gb, gc = zero, zero, zero, zero, zero, zero, zero
    for d0 in range(0, D, BLOCK_D):
        m2, xv, yv, dv, gv = _load_tiles(x_row, y_row, g_row, d0 + cols, rmask, D, HAS_Y, HAS_G, CT)
        t_xx, t_yy, t_xy, t_dd, t_ga, t_gb, t_gc = _tile_sums(xv, yv, gv, HAS_Y, HAS_G, ST)
        xx += t_xx
        yy += t_yy
        xy += t_xy
        dd += t_dd
        ga += t_ga
        gb += t_gb
        gc += t_gc
    return xx, yy, xy, dd, ga, gb, gc


@triton.jit
def _store_tile(row_ptrs, cc, m2, v):
    """Store tile v at columns cc of the rows, cast to the element type they point to."""
    tl.store(row_ptrs[:, None] + cc[None, :], v.to(row_ptrs.dtype.element_ty), mask=m2)


@triton.jit
def _out_tile(a, b, c, xv, yv, dv, HAS_Y: tl.constexpr):
    """Forward output of a tile: a x + b y + c (x - y), or a x for ops without y."""
    if HAS_Y:
        o = a[:, None] * xv + b[:, None] * yv + c[:, None] * dv
    else:
        o = a[:, None] * xv
    return o


@triton.jit
def _store_grad_tiles(
    dx_row, dy_row, cc, m2, xv, yv, dv, gv,
    cxx, cyy, cxy, cdd, gxc, gyc,
    need_dx, need_dy, HAS_Y: tl.constexpr, HAS_G: tl.constexpr,
):  # fmt: skip
    """Assemble and store a tile of dx and/or dy from the (BLOCK_M, 1) coefficients of pass 2 of the backward.

    need_dx / need_dy are run-time flags (uniform over the program): one binary serves every gradient mask."""
    if need_dx:
        if HAS_Y:
            dxv = cxx * xv + cxy * yv + cdd * dv
        else:
            dxv = cxx * xv
        if HAS_G:
            dxv = gxc * gv + dxv
        _store_tile(dx_row, cc, m2, dxv)
    if HAS_Y:
        if need_dy:
            dyv = cyy * yv + cxy * xv - cdd * dv
            if HAS_G:
                dyv = gyc * gv + dyv
            _store_tile(dy_row, cc, m2, dyv)


@triton.jit
def _program_rows(X, Y, K, R, N, stride_x, stride_y, stride_k, stride_r, HAS_R: tl.constexpr, CT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's BLOCK_M rows: their 64-bit indices (pid is widened before the multiply: N may exceed 2^31
    rows, so may the offsets), mask, the column offsets, the x and y row pointers, the rows' k and r."""
    rows64 = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows64 < N
    k, r = _row_scalars(K, R, rows64, rmask, stride_k, stride_r, HAS_R, CT)
    return rows64, rmask, tl.arange(0, BLOCK_D), X + rows64 * stride_x, Y + rows64 * stride_y, k, r


@triton.jit
def _antipode_den(xx, yy, xy, dd, k, sq):
    """logmap's den0 (float64) and its floor: _sub_den of the row sums, or sq / xx (sq = |x + k xx y|^2, the second
    pass) in the rows near x's antipode (k > 0, below _ANTIPODE_CUT), where the sums' den is ~eps / den off
    (stereo_math.h); the floor _MIN_DEN, or _ANTIPODE_MIN_DEN in those rows, which every dtype writes in float64
    (_near_rows_out, _near_rows_grads below float64)."""
    den0 = _sub_den((1.0 + k * xx) * (1.0 + k * yy), xx, yy, xy, dd, k)
    near = (k > 0) & (den0 < _ANTIPODE_CUT)
    lo = tl.where(near, _ANTIPODE_MIN_DEN, _MIN_DEN)
    return tl.where(near, sq / tl.where(near, xx, 1.0), den0), lo


@triton.jit
def _antipode_near(xx, yy, xy, k, cut):
    """Per row: near x's antipode (k > 0 and the sums' den below cut): with _ANTIPODE_CUT the rows that _antipode_den
    takes, with _ANTIPODE_FLOAT_CUT_FWD / _BWD the rows the float types write in float64."""
    den0 = 1.0 + 2.0 * k * xy + k * k * xx * yy  # (_sub_den's k > 0 form)
    return (k > 0) & (den0 < cut)


@triton.jit
def _antipode_rows(xx, yy, xy, k, cut):
    """Whether this program has a row near x's antipode (_antipode_near): the one branch per program that the usual
    rows pay."""
    return tl.max(_antipode_near(xx, yy, xy, k, cut).to(tl.int32), axis=0) > 0


@triton.jit
def _antipode_sq(xv, yv, kxx):
    """|x + k xx y|^2 of a tile's rows in float64 (kxx = k xx per row)."""
    t = xv.to(F64) + kxx[:, None] * yv.to(F64)
    return tl.sum(t * t, axis=1)


@triton.jit
def _antipode_sq_chunked(x_row, y_row, rmask, D, kxx, CT: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """_antipode_sq over rows wider than a tile, chunk by chunk."""
    cols = tl.arange(0, BLOCK_D)
    sq = tl.zeros([BLOCK_M], dtype=F64)
    for d0 in range(0, D, BLOCK_D):
        m2, xv, yv, dv, gv = _load_tiles(x_row, y_row, x_row, d0 + cols, rmask, D, True, False, CT)
        sq += _antipode_sq(xv, yv, kxx)
    return sq


@triton.jit
def _logmap_den0(xx, yy, xy, dd, k, xv, yv, x_row, y_row, rmask, D, CT: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr):
    """logmap's den0 and its floor (float64 row sums in, _antipode_den): only a program with a row near x's antipode
    (_antipode_rows below _ANTIPODE_CUT) takes the second pass, on the tiles xv, yv (ONE_CHUNK; unread placeholders
    otherwise) or chunk by chunk.  The forward and the backward share it: the gradient of the value
    computed."""
    sq = xx
    near = _antipode_rows(xx, yy, xy, k, _ANTIPODE_CUT)
    if near:
        if ONE_CHUNK:
            sq = _antipode_sq(xv, yv, k * xx)
        else:
            sq = _antipode_sq_chunked(x_row, y_row, rmask, D, k * xx, CT, BLOCK_M, BLOCK_D)
    den0, lo = _antipode_den(xx, yy, xy, dd, k, sq)
    return den0, lo


# logmap's rows near x's antipode in the float types (CT below float64; the sums' den below _ANTIPODE_FLOAT_CUT_FWD /
# _BWD): their output and gradients in float64, the usual float write masked off them.  There a, c ~ 1 / sqrt(den)
# and the terms a x, c (x - y) cancel to O(1) (dx, dy: ~1 / den-sized terms), so a float write is ~eps32 / sqrt(den)
# off (gradients ~eps32 / den), more than the float rule allows beside the eager reference, whose error is of the same
# order (it cancels in its numerator); in float64 the rows round once (as csrc/cpu/stereographic_lanes.h's
# write_near_row).  The tiles are reloaded in float64: no float64 tile is held in the usual path.
@triton.jit
def _near_rows_out(o_row, x_row, y_row, nmask, cols, D, a, b, c, BLOCK_D: tl.constexpr):
    """The forward's rows nmask (float64 coefficients a, b, c) in float64."""
    for d0 in range(0, D, BLOCK_D):
        cc = d0 + cols
        m2, xv, yv, dv, gv = _load_tiles(x_row, y_row, x_row, cc, nmask, D, True, False, F64)
        _store_tile(o_row, cc, m2, _out_tile(a, b, c, xv, yv, dv, True).to(tl.float32))


@triton.jit
def _near_rows_grads(dx_row, dy_row, x_row, y_row, g_row, nmask, D, cxx, cyy, cxy, cdd, gxc, gyc, need_dx, need_dy):
    """The backward's rows nmask (float64 coefficients as _store_grad_tiles', per row) in float64, one column of the
    rows at a time: no float64 tile (float64 tiles spilled 56-84 B in the narrow float32 kernel, sm_90)."""
    for j in range(0, D):
        xv = tl.load(x_row + j, mask=nmask, other=0.0).to(F64)
        yv = tl.load(y_row + j, mask=nmask, other=0.0).to(F64)
        gv = tl.load(g_row + j, mask=nmask, other=0.0).to(F64)
        dv = xv - yv
        if need_dx:
            tl.store(dx_row + j, (gxc * gv + (cxx * xv + cxy * yv + cdd * dv)).to(tl.float32).to(
                dx_row.dtype.element_ty), mask=nmask)
        if need_dy:
            tl.store(dy_row + j, (gyc * gv + (cyy * yv + cxy * xv - cdd * dv)).to(tl.float32).to(
                dy_row.dtype.element_ty), mask=nmask)


@triton.jit
def _stereo_fwd_kernel(
    X, Y, K, R, OUT,
    N, D,
    stride_x, stride_y, stride_k, stride_r, stride_o,
    OP: tl.constexpr, HAS_Y: tl.constexpr, HAS_R: tl.constexpr, SCALAR_OUT: tl.constexpr,
    PARAM: tl.constexpr, CT: tl.constexpr, ST: tl.constexpr, CUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
):  # fmt: skip
    rows64, rmask, cols, x_row, y_row, k, r = _program_rows(X, Y, K, R, N, stride_x, stride_y, stride_k, stride_r,
                                                            HAS_R, CT, BLOCK_M, BLOCK_D)
    o_row = OUT + rows64 * stride_o

    # ---- pass 1: row sums (no g in the forward: x_row stands in for the g rows, never read)
    if ONE_CHUNK:
        # the whole row in one tile: load once, reduce, write from registers
        m2, xv, yv, dv, gv = _load_tiles(x_row, y_row, x_row, cols, rmask, D, HAS_Y, False, CT)
        xx, yy, xy, dd, ga, gb, gc = _tile_sums(xv, yv, gv, HAS_Y, False, ST)
    else:
        # wide rows: pass 1 reduces chunk by chunk, pass 2 reloads and writes
        xx, yy, xy, dd, ga, gb, gc = _chunked_sums(x_row, y_row, x_row, rmask, D, HAS_Y, False, CT, ST, BLOCK_M,
                                                   BLOCK_D)

    # ---- pass 2: out = a x + b y + c (x - y), or the row value a for scalar ops (row math in float64)
    if OP == LOGMAP:
        # logmap's rows near x's antipode: den from a second pass over the row (_logmap_den0), only in the
        # programs that have one; in float types, those rows (up to _ANTIPODE_FLOAT_CUT_FWD) in float64 below
        xx, yy, xy, dd, k = xx.to(F64), yy.to(F64), xy.to(F64), dd.to(F64), k.to(F64)
        if not ONE_CHUNK:
            xv, yv = rmask, rmask  # (unread placeholders)
        den0, lo = _logmap_den0(xx, yy, xy, dd, k, xv, yv, x_row, y_row, rmask, D, CT, BLOCK_M, BLOCK_D,
                                ONE_CHUNK)
        a, b, c = _logmap_coef(xx, yy, xy, dd, k, den0, lo, CUT)
    else:
        a, b, c = _fwd_coef(OP, xx.to(F64), yy.to(F64), xy.to(F64), dd.to(F64), k.to(F64), r.to(F64), PARAM, CUT)
    wmask = rmask  # the rows of the usual write
    if OP == LOGMAP:
        if CT != F64:
            if _antipode_rows(xx, yy, xy, k, _ANTIPODE_FLOAT_CUT_FWD):  # those rows in float64 (_near_rows_out)
                nmask = rmask & _antipode_near(xx, yy, xy, k, _ANTIPODE_FLOAT_CUT_FWD)
                _near_rows_out(o_row, x_row, y_row, nmask, cols, D, a, b, c, BLOCK_D)
                wmask = rmask & ~nmask
    if not SCALAR_OUT:
        a, b, c = a.to(CT), b.to(CT), c.to(CT)
    if SCALAR_OUT:
        # via CT: float64 -> bfloat16 directly is not lowered everywhere (nor in the interpreter)
        tl.store(OUT + rows64, a.to(CT).to(OUT.dtype.element_ty), mask=rmask)
    elif ONE_CHUNK:
        if OP == LOGMAP:
            m2 = m2 & wmask[:, None]
        _store_tile(o_row, cols, m2, _out_tile(a, b, c, xv, yv, dv, HAS_Y))
    else:
        for d0 in range(0, D, BLOCK_D):
            cc = d0 + cols
            mt, xt, yt, dt, gt = _load_tiles(x_row, y_row, x_row, cc, wmask, D, HAS_Y, False, CT)
            _store_tile(o_row, cc, mt, _out_tile(a, b, c, xt, yt, dt, HAS_Y))


# GRAD_MASK (bits 1 dx, 2 dy, 4 dk, 8 dr: the gradients the kernel writes) is a run-time argument and
# is not specialised (Triton would otherwise specialise the value 1): every mask runs the same binary.
@triton.jit(do_not_specialize=["GRAD_MASK"])
def _stereo_bwd_kernel(
    G, X, Y, K, R, DX, DY, DK, DR,
    N, D,
    stride_g, stride_x, stride_y, stride_k, stride_r, stride_dx, stride_dy,
    GRAD_MASK,
    OP: tl.constexpr, HAS_Y: tl.constexpr, HAS_R: tl.constexpr, SCALAR_OUT: tl.constexpr,
    PARAM: tl.constexpr, CT: tl.constexpr, ST: tl.constexpr, CUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
):  # fmt: skip
    HAS_G: tl.constexpr = not SCALAR_OUT  # vector ops have a (N, D) grad; scalar ops one value a row
    rows64, rmask, cols, x_row, y_row, k, r = _program_rows(X, Y, K, R, N, stride_x, stride_y, stride_k, stride_r,
                                                            HAS_R, CT, BLOCK_M, BLOCK_D)
    g_row = G + rows64 * stride_g
    dx_row = DX + rows64 * stride_dx
    dy_row = DY + rows64 * stride_dy

    # ---- pass 1: row scalars (and <g,x>, <g,y>, <g,x-y> for vector ops; scalar ops read ga directly)
    if SCALAR_OUT:
        g_scalar = tl.load(g_row, mask=rmask, other=0.0).to(CT)
    if ONE_CHUNK:
        m2, xv, yv, dv, gv = _load_tiles(x_row, y_row, g_row, cols, rmask, D, HAS_Y, HAS_G, CT)
        xx, yy, xy, dd, ga, gb, gc = _tile_sums(xv, yv, gv, HAS_Y, HAS_G, ST)
    else:
        xx, yy, xy, dd, ga, gb, gc = _chunked_sums(x_row, y_row, g_row, rmask, D, HAS_Y, HAS_G, CT, ST, BLOCK_M,
                                                   BLOCK_D)
        m2, xv, yv, dv, gv = rmask, rmask, rmask, rmask, rmask  # (unread placeholders: the tiles are reloaded)
    if SCALAR_OUT:
        ga = g_scalar

    # ---- row adjoints (row math in float64)
    xx, yy, xy, dd, k, r = xx.to(F64), yy.to(F64), xy.to(F64), dd.to(F64), k.to(F64), r.to(F64)
    if OP == LOGMAP:
        # the forward's den near x's antipode (_logmap_den0): the gradient of the value computed
        den0, lo = _logmap_den0(xx, yy, xy, dd, k, xv, yv, x_row, y_row, rmask, D, CT, BLOCK_M, BLOCK_D,
                                ONE_CHUNK)
        # a row near x's antipode up to _ANTIPODE_FLOAT_CUT_BWD: this program's gradients in float64 below (the flag
        # taken here, before the adjoints: 255 -> 250 registers in the narrow float32 kernel, Triton 3.6)
        near_f64 = _antipode_rows(xx, yy, xy, k, _ANTIPODE_FLOAT_CUT_BWD)
        g_xx, g_yy, g_xy, g_dd, g_k = _logmap_vjp(xx, yy, xy, dd, k, den0, lo, ga.to(F64), gb.to(F64), gc.to(F64), CUT)
        g_r = tl.zeros_like(xx)
    else:
        g_xx, g_yy, g_xy, g_dd, g_k, g_r = _vjp(OP, xx, yy, xy, dd, k, r, ga.to(F64), gb.to(F64), gc.to(F64), PARAM,
                                                CUT)
    need_dx = (GRAD_MASK & 1) != 0
    need_dy = (GRAD_MASK & 2) != 0  # only set for ops with y
    if (GRAD_MASK & 4) != 0:
        tl.store(DK + rows64, g_k.to(DK.dtype.element_ty), mask=rmask)
    if HAS_R:
        if (GRAD_MASK & 8) != 0:
            tl.store(DR + rows64, g_r.to(DR.dtype.element_ty), mask=rmask)

    # ---- pass 2: dx = (a + c) g + 2 xx_ x + xy_ y + 2 dd_ (x - y)
    #              dy = (b - c) g + 2 yy_ y + xy_ x - 2 dd_ (x - y)
    if (GRAD_MASK & 3) != 0:  # dx or dy
        if SCALAR_OUT:
            gxc = tl.zeros_like(xx)
            gyc = gxc
        else:
            if OP == LOGMAP:
                a, b, c = _logmap_coef(xx, yy, xy, dd, k, den0, lo, CUT)
            else:
                a, b, c = _fwd_coef(OP, xx, yy, xy, dd, k, r, PARAM, CUT)
            gxc = a + c
            gyc = b - c
        NEAR_F64: tl.constexpr = OP == LOGMAP and CT != F64
        if NEAR_F64:
            if near_f64:
                # a program with a row near x's antipode (up to _ANTIPODE_FLOAT_CUT_BWD): all its rows in float64
                # (_near_rows_grads).  Those rows
                # alone, the usual write masked off them as in the forward, took 255 registers and spilled 4 B
                # (narrow float32, Triton 3.6 sm_90)
                _near_rows_grads(dx_row, dy_row, x_row, y_row, g_row, rmask, D, 2.0 * g_xx, 2.0 * g_yy, g_xy,
                                 2.0 * g_dd, gxc, gyc, need_dx, need_dy)
            else:
                _grad_rows(dx_row, dy_row, x_row, y_row, g_row, rmask, cols, D, m2, xv, yv, dv, gv, g_xx, g_yy, g_xy,
                           g_dd, gxc, gyc, need_dx, need_dy, HAS_Y, HAS_G, CT, BLOCK_D, ONE_CHUNK)
        else:
            _grad_rows(dx_row, dy_row, x_row, y_row, g_row, rmask, cols, D, m2, xv, yv, dv, gv, g_xx, g_yy, g_xy, g_dd,
                       gxc, gyc, need_dx, need_dy, HAS_Y, HAS_G, CT, BLOCK_D, ONE_CHUNK)


@triton.jit
def _grad_rows(dx_row, dy_row, x_row, y_row, g_row, rmask, cols, D, m2, xv, yv, dv, gv, g_xx, g_yy, g_xy, g_dd, gxc, gyc,
               need_dx, need_dy, HAS_Y: tl.constexpr, HAS_G: tl.constexpr, CT: tl.constexpr, BLOCK_D: tl.constexpr,
               ONE_CHUNK: tl.constexpr):
    """The backward's pass 2 in CT from the float64 row adjoints and coefficients gxc = a + c, gyc = b - c: from the
    tiles m2, xv, yv, dv, gv (ONE_CHUNK; unread placeholders otherwise) or reloading them chunk by chunk."""
    cxx = (2.0 * g_xx).to(CT)[:, None]
    cyy = (2.0 * g_yy).to(CT)[:, None]
    cxy = g_xy.to(CT)[:, None]
    cdd = (2.0 * g_dd).to(CT)[:, None]
    gxc = gxc.to(CT)[:, None]
    gyc = gyc.to(CT)[:, None]
    if ONE_CHUNK:
        _store_grad_tiles(
            dx_row, dy_row, cols, m2, xv, yv, dv, gv, cxx, cyy, cxy, cdd, gxc, gyc, need_dx, need_dy, HAS_Y, HAS_G
        )
    else:
        for d0 in range(0, D, BLOCK_D):
            cc = d0 + cols
            mt, xt, yt, dt, gt = _load_tiles(x_row, y_row, g_row, cc, rmask, D, HAS_Y, HAS_G, CT)
            _store_grad_tiles(
                dx_row, dy_row, cc, mt, xt, yt, dt, gt, cxx, cyy, cxy, cdd, gxc, gyc, need_dx, need_dy, HAS_Y, HAS_G
            )


def _fix_interpreter_loop_bounds() -> bool:
    """Work around a Triton interpreter bug with numpy >= 2.4 (True when the shim was installed).

    Triton <= 3.6's interpreter turns a run-time loop bound (``range(0, D, BLOCK_D)`` of the chunked
    path) into a Python int with ``int(ndarray)`` on a 1-element array, which numpy 2.4 rejects
    ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.9 squeezes the array
    first.  When the installed interpreter has the unsqueezed form, its tensor patch is wrapped to
    install the squeezing one.  Only the interpreter is touched; compiled kernels never see this.
    """
    import inspect

    from triton.runtime import interpreter as _interp

    orig = getattr(_interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_geoops_shim", False):
        return False
    try:
        src = inspect.getsource(orig)
    except (OSError, TypeError):
        return False
    if "int(self.handle.data)" not in src:
        return False

    def _patch_lang_tensor(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    _patch_lang_tensor._geoops_shim = True
    _interp._patch_lang_tensor = _patch_lang_tensor
    return True


INTERPRETED = type(_stereo_fwd_kernel).__name__ == "InterpretedFunction"


def _maxnreg(num_warps: int) -> dict:
    """Let ptxas use every register a block of num_warps may hold (a launch option; none in the interpreter).

    Left to itself, ptxas targeted 64 registers in some row kernels and 128 in the n = 64 knn and spilled
    (4-16 B) rather than use more; with .maxnreg it keeps them in registers (kernels/COMPILE_REPORT.md)."""
    if INTERPRETED:
        return {}
    return {"maxnreg": min(255, (65536 // (32 * num_warps)) // 8 * 8)}
if INTERPRETED:
    _math = _NumpyMath  # noqa: F811 - the interpreter cannot call libdevice
    _fix_interpreter_loop_bounds()


# ---------------------------------------------------------------- launchers
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, D) with unit inner stride (any row stride, 0 included)."""
    if t.dim() != 2:
        raise ValueError(f"geoops.kernels.stereographic: expected a 2-D (N, D) tensor, got shape {tuple(t.shape)}")
    return t if (t.size(1) <= 1 or t.stride(1) == 1) else t.contiguous()


def _per_row(t: torch.Tensor, N: int, name: str):
    """A tensor of one value (any shape: the kernels read its entry with row stride 0) or an (N,) tensor of k / r,
    and its row stride (0 for a single value).  No reshape op for a single value (each op costs host time)."""
    if t.numel() == 1:
        return t, 0
    t = t.reshape(-1)
    if t.numel() != N:
        raise ValueError(f"geoops.kernels.stereographic: {name} must have 1 or N={N} values, got {t.numel()}")
    return t, t.stride(0)


def _k_r_rows(k: torch.Tensor, r, N: int, has_r: bool):
    """(k, stride_k, r, stride_r) for the kernels; an op without r gets k as a stand-in it never reads."""
    k, sk = _per_row(k, N, "k")
    if not has_r:
        return k, sk, k, 0
    if r is None:
        raise ValueError("geoops.kernels.stereographic: mobius_scalar_mul needs r")
    r, sr = _per_row(r, N, "r")
    return k, sk, r, sr


def _sum_type(ct):
    """The row sums' type: float64 (default), or the tile type with GEOOPS_TRITON_STEREO_F64_SUMS=0 (read per call)."""
    return ct if os.environ.get("GEOOPS_TRITON_STEREO_F64_SUMS") == "0" else tl.float64


def _compute_type(dtype: torch.dtype):
    if dtype not in _FLOATS:
        raise TypeError(f"geoops.kernels.stereographic: unsupported dtype {dtype}")
    return (tl.float64, _CUT_F64) if dtype == torch.float64 else (tl.float32, _CUT_F32)


def _blocks(N: int, D: int, tile: int, max_block_d=None, *, elem_bytes: int = 4, rows_per_thread: int = 2):
    """(BLOCK_M, BLOCK_D, ONE_CHUNK, num_warps) for N rows of width D (a heuristic, not autotuned).

    A program takes up to `tile` elements.  Triton lays the (BLOCK_M, BLOCK_D) tile out with 16-byte
    vectors along a row, up to 32 threads along it and the rest of a warp on further rows; the per-row
    scalar math runs on every thread for each row that thread holds.  BLOCK_M is capped so that a
    thread holds at most `rows_per_thread` rows: the float64 row math of several rows in one thread
    is what made the float64 kernels spill (see kernels/COMPILE_REPORT.md).
    """
    limit = MAX_BLOCK_D if max_block_d is None else int(max_block_d)
    if limit < 1 or limit & (limit - 1):
        raise ValueError(f"max_block_d must be a power of two, got {limit}")
    block_d = triton.next_power_of_2(max(D, 1))
    one_chunk = block_d <= limit
    if not one_chunk:
        block_d = limit
    block_m = max(1, min(tile // block_d, _MAX_BLOCK_M, triton.next_power_of_2(max(N, 1))))
    elems = block_m * block_d
    num_warps = 1 if elems <= 128 else 2 if elems <= 512 else 4 if elems <= 2048 else 8
    vec = max(1, min(16 // elem_bytes, block_d))  # elements of a 16-byte load
    rows_per_warp = max(1, 32 // max(1, block_d // vec))  # rows one warp covers in one layout repetition
    block_m = max(1, min(block_m, rows_per_thread * rows_per_warp * num_warps))
    if block_m == 1 and block_d >= 4096 and elem_bytes < 8:
        # one 4096-wide row a program: 16 warps (8 elements a thread and tile); with 8 warps ptxas caps the
        # float16 chunked backward at 64 registers and spills (kernels/COMPILE_REPORT.md).  float64 stays at 8
        # warps (.maxnreg 255): at 16 (.maxnreg 128) logmap's backward, which reads <g, y> for the far-point
        # form since session 39, spilled 20 B on sm_90 with Triton 3.9
        num_warps = 16
    return block_m, block_d, one_chunk, num_warps


def _tile(tile: int, dtype: torch.dtype) -> int:
    # float64 tiles take twice the registers
    return tile // 2 if dtype == torch.float64 else tile


def _launch_blocks(N: int, D: int, tile: int, dtype: torch.dtype, max_block_d=None):
    """_blocks for inputs of `dtype`: the float64 row math of one row a thread."""
    return _blocks(N, D, _tile(tile, dtype), max_block_d, elem_bytes=dtype.itemsize, rows_per_thread=1)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t.to(dtype) without the op when t already has it."""
    return t if t.dtype == dtype else t.to(dtype)


def _param_for(code: int, param: float) -> float:
    # only project reads param: keep the other ops on one compiled variant
    return float(param) if code == 2 else 0.0


def _device_guard(t: torch.Tensor):
    """Make t's CUDA device current for a launch (a no-op context for CPU tensors).

    Triton launches on torch.cuda.current_device() and that device's current stream: without the
    guard a tensor on cuda:1 while cuda:0 is current would run with the wrong device's context."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check_code(code: int) -> int:
    code = int(code)
    if not 0 <= code < NUM_OPS:
        raise ValueError(f"geoops: unknown stereographic op {code}")
    return code


def _stereo_fwd(code, x, y, k, r, param, *, max_block_d=None):
    code = _check_code(code)
    has_y, has_r, scalar_out = code in HAS_Y_OPS, code in HAS_R_OPS, code in SCALAR_OUT_OPS
    x = _rows(x)
    N, D = x.shape
    out = x.new_empty((N,) if scalar_out else (N, D))
    if N == 0 or (D == 0 and not scalar_out):
        return out
    ct, _ = _compute_type(x.dtype)
    # like the C++ kernel, an op with y run without one reads y = x
    y = _rows(_as(y, x.dtype)) if (has_y and y is not None) else x
    k, sk, r, sr = _k_r_rows(k, r, N, has_r)
    block_m, block_d, one_chunk, num_warps = _launch_blocks(N, D, _TILE_FWD, x.dtype, max_block_d)
    grid = (triton.cdiv(N, block_m),)
    with _device_guard(x):
        _stereo_fwd_kernel[grid](
            x, y, k, r, out,
            N, D,
            x.stride(0), y.stride(0), sk, sr, 1 if scalar_out else out.stride(0),
            OP=code, HAS_Y=has_y, HAS_R=has_r, SCALAR_OUT=scalar_out,
            PARAM=_param_for(code, param), CT=ct, ST=_sum_type(ct), CUT=_CUT_F64,
            BLOCK_M=block_m, BLOCK_D=block_d, ONE_CHUNK=one_chunk,
            num_warps=num_warps, **_maxnreg(num_warps),
        )  # fmt: skip
    return out


def _stereo_bwd(code, grad, x, y, k, r, param, mask, *, max_block_d=None):
    code = _check_code(code)
    has_y, has_r, scalar_out = code in HAS_Y_OPS, code in HAS_R_OPS, code in SCALAR_OUT_OPS
    mask = int(mask)
    x = _rows(x)
    N, D = x.shape
    y_given = y is not None
    r_given = r is not None
    need_dx = bool(mask & 1)
    need_dy = y_given and bool(mask & 2)
    need_dk = bool(mask & 4)
    need_dr = r_given and bool(mask & 8)
    # Unselected gradients are empty (distinct tensors: custom-op outputs may not alias).
    # An op without y (or r) that is given one anyway has zero gradients there.
    dx = x.new_empty((N, D)) if need_dx else x.new_empty(0)
    dy = (x.new_empty((N, D)) if has_y else x.new_zeros((N, D))) if need_dy else x.new_empty(0)
    dk = torch.empty(N, dtype=k.dtype, device=x.device) if need_dk else x.new_empty(0)
    if need_dr:
        dr = torch.empty(N, dtype=r.dtype, device=x.device) if has_r else torch.zeros(N, dtype=r.dtype, device=x.device)
    else:
        dr = x.new_empty(0)
    kern_dy = need_dy and has_y
    kern_dr = need_dr and has_r
    if N == 0 or not (need_dx or kern_dy or need_dk or kern_dr):
        return dx, dy, dk, dr
    ct, _ = _compute_type(x.dtype)
    yk = _rows(_as(y, x.dtype)) if (has_y and y_given) else x
    if scalar_out:
        g = _as(grad if tuple(grad.shape) == (N,) else grad.reshape(N), x.dtype)
        sg = g.stride(0)
    else:
        g = _rows(_as(grad, x.dtype))
        if tuple(g.shape) != (N, D):
            raise ValueError(f"geoops.kernels.stereographic: grad has shape {tuple(grad.shape)}, expected {(N, D)}")
        sg = g.stride(0)
    k1, sk, r1, sr = _k_r_rows(k, r, N, has_r)
    block_m, block_d, one_chunk, num_warps = _launch_blocks(N, D, _TILE_BWD, x.dtype, max_block_d)
    grid = (triton.cdiv(N, block_m),)
    with _device_guard(x):
        _stereo_bwd_kernel[grid](
            g, x, yk, k1, r1,
            dx if need_dx else x, dy if kern_dy else x, dk if need_dk else k1, dr if kern_dr else k1,
            N, D,
            sg, x.stride(0), yk.stride(0), sk, sr, dx.stride(0) if need_dx else 0, dy.stride(0) if kern_dy else 0,
            int(need_dx) | 2 * int(kern_dy) | 4 * int(need_dk) | 8 * int(kern_dr),
            OP=code, HAS_Y=has_y, HAS_R=has_r, SCALAR_OUT=scalar_out,
            PARAM=_param_for(code, param), CT=ct, ST=_sum_type(ct), CUT=_CUT_F64,
            BLOCK_M=block_m, BLOCK_D=block_d, ONE_CHUNK=one_chunk,
            num_warps=num_warps, **_maxnreg(num_warps),
        )  # fmt: skip
    return dx, dy, dk, dr


# ---------------------------------------------------------------- public (backend adapter of geoops._ops.stereographic)
def stereo_fwd(code, x, y, k, r, param):
    """Forward of stereographic op `code` on rows: (N, D), or (N,) for scalar-valued ops."""
    return _stereo_fwd(code, x, y, k, r, param)


def stereo_bwd(code, grad, x, y, k, r, param, mask):
    """(dx, dy, dk, dr) of op `code`; mask bits 1 dx, 2 dy, 4 dk, 8 dr; unselected ones are empty."""
    return _stereo_bwd(code, grad, x, y, k, r, param, mask)


# ---------------------------------------------------------------- three-vector row ops
# gyration (v0, v1, v2 = a, b, u), parallel_transport (x, y, v), parallel_transport0 (y, v),
# parallel_transport0back (x, v), dist2plane (x, p, a): the contract of geoops._ops.stereographic's
# TRIPLE section (the same as csrc/cpu/stereographic_triple.cpp):
#
#     triple_fwd(code, v0, v1, v2, k, flags)              -> (N, D), or (N,) for dist2plane
#     triple_bwd(code, grad, v0, v1, v2, k, flags, mask)  -> (dv0, dv1, dv2, dk)
#
# Per row the kernels reduce the dot products S00 = <v0,v0>, S11, S22, S01, S02, S12 and SEE = |e|^2, SE2 = <e,v2>
# (gyration, parallel_transport, dist2plane), SE1 = <e,v1> (dist2plane) with e = v0 - v1, for gyration e = v0 + v1
# (csrc/include/geoops/stereo_triple.h), in chunks
# of BLOCK_D columns, in the tile type CT; the epilogue runs in float64.  The forward writes
# c0 v0 + c1 v1 + c2 v2 (or the scalar); the backward's epilogue is the hand-derived vector-Jacobian product
# of the coefficients (the C++ kernels evaluate the same epilogue on dual numbers; the tests compare the two),
# and every gradient is a combination of v0, v1, v2 and g, written in a second pass.
GYRATION = tl.constexpr(0)
PARALLEL_TRANSPORT = tl.constexpr(1)
PARALLEL_TRANSPORT0 = tl.constexpr(2)
PARALLEL_TRANSPORT0BACK = tl.constexpr(3)
DIST2PLANE = tl.constexpr(4)
TRIPLE_OP_NAMES = ("gyration", "parallel_transport", "parallel_transport0", "parallel_transport0back", "dist2plane")
_TRIPLE_NVEC = (3, 3, 2, 2, 3)


@triton.jit
def _live_min(v, lo):
    """(torch.clamp_min(v, lo), whether the gradient passes: v >= lo; NaN passes, as in torch)."""
    live = ~(v < lo)
    return tl.where(live, v, lo), live


@triton.jit
def _gyr_vjp(a2, b2, ab, au, bu, dd, du, k, A, B):
    """geoopt's gyration coefficients ca, cb (gyr[a, b]u = u + ca a + cb b) and the vjp of (A, B) = the adjoints
    of (ca, cb) -> adjoints of a2, b2, ab, au, bu, dd, du, k; dd = |a + b|^2, du = <a + b, u>.  k > 0 rows take
    geoopt's form, k <= 0 rows the one in d = a + b that keeps its digits for b near -a near the boundary (exactly
    equal; why: csrc/include/geoops/stereo_triple.h, gyr_coefs):
    na = t - k du (1 - 2k ab) - k^2 au dd, nb = t - k^2 a2 du, t = k au (1 + k a2), d = (1 + k a2)(1 + k b2) - k dd."""
    k2 = k * k
    pos = k > 0
    pa = 1.0 + k * a2
    pb = 1.0 + k * b2
    t = k * au * pa
    m = 1.0 - 2.0 * k * ab
    na = tl.where(pos, -k2 * au * b2 - k * bu + 2.0 * k2 * ab * bu, t - k * du * m - k2 * au * dd)
    nb = tl.where(pos, -k2 * bu * a2 + k * au, t - k2 * a2 * du)
    d, live = _live_min(tl.where(pos, 1.0 - 2.0 * k * ab + k2 * a2 * b2, pa * pb - k * dd), 1e-15)
    ca = 2.0 * na / d
    cb = 2.0 * nb / d
    adj_na = 2.0 * A / d
    adj_nb = 2.0 * B / d
    adj_d = tl.where(live, -(A * ca + B * cb) / d, 0.0)
    # geoopt's form (k > 0)
    p_a2 = adj_nb * (-k2 * bu) + adj_d * k2 * b2
    p_b2 = adj_na * (-k2 * au) + adj_d * k2 * a2
    p_ab = adj_na * (2.0 * k2 * bu) - adj_d * 2.0 * k
    p_au = adj_na * (-k2 * b2) + adj_nb * k
    p_bu = adj_na * (2.0 * k2 * ab - k) + adj_nb * (-k2 * a2)
    p_k = (adj_na * (-2.0 * k * au * b2 - bu + 4.0 * k * ab * bu) + adj_nb * (-2.0 * k * bu * a2 + au)
           + adj_d * (2.0 * k * a2 * b2 - 2.0 * ab))
    # the d = a + b form (k <= 0)
    adj_t = adj_na + adj_nb
    dt_dk = au * (pa + k * a2)
    n_a2 = (adj_t * k * au + adj_d * pb) * k - adj_nb * k2 * du
    n_b2 = adj_d * pa * k
    n_ab = adj_na * 2.0 * k2 * du
    n_au = adj_t * k * pa - adj_na * k2 * dd
    n_dd = -adj_na * k2 * au - adj_d * k
    n_du = -adj_na * k * m - adj_nb * k2 * a2
    n_k = (adj_na * (dt_dk - du * m + 2.0 * k * du * ab - 2.0 * k * au * dd) + adj_nb * (dt_dk - 2.0 * k * a2 * du)
           + adj_d * (a2 * pb + pa * b2 - dd))
    g_a2 = tl.where(pos, p_a2, n_a2)
    g_b2 = tl.where(pos, p_b2, n_b2)
    g_ab = tl.where(pos, p_ab, n_ab)
    g_au = tl.where(pos, p_au, n_au)
    g_bu = tl.where(pos, p_bu, 0.0)
    g_dd = tl.where(pos, 0.0, n_dd)
    g_du = tl.where(pos, 0.0, n_du)
    g_k = tl.where(pos, p_k, n_k)
    return ca, cb, g_a2, g_b2, g_ab, g_au, g_bu, g_dd, g_du, g_k


@triton.jit
def _arsin_k_vjp(z, k, adj):
    """geoops.stereographic.arsin_k(z, k) and the vjp of adj -> (adjoint of z, adjoint of k): z asinc(w), w = k z^2,
    by its Taylor series S(w) where |w| < 1e-3 (the switch on w, not on |k| alone), the closed forms elsewhere."""
    w = k * z * z
    small = tl.abs(w) < 1e-3
    ser = 1.0 + w * (1.0 / 6.0 + w * (3.0 / 40.0 + w * (5.0 / 112.0 + w * (35.0 / 1152.0 + w * (63.0 / 2816.0)))))
    dser = 1.0 / 6.0 + w * (6.0 / 40.0 + w * (15.0 / 112.0 + w * (140.0 / 1152.0 + w * (315.0 / 2816.0))))
    kabs = tl.where(small, 1.0, tl.abs(k))  # (|k| z^2 >= 1e-3 off the series: k != 0)
    c = _sqrt(kabs)
    cz = c * z
    # k < 0: asinh(c z) / c
    rn = 1.0 / _sqrt(1.0 + cz * cz)
    hn = _math.asinh(cz)
    # k > 0: asin(clamp(c z, +-(1 - 1e-7))) / c
    lo = -1.0 + 1e-7
    hi = 1.0 - 1e-7
    live = (cz >= lo) & (cz <= hi)
    wc = tl.minimum(tl.maximum(cz, lo), hi)
    hp = _math.asin(wc)
    rp = 1.0 / _sqrt(1.0 - wc * wc)
    neg = k < 0
    val = tl.where(small, z * ser, tl.where(neg, hn, hp) / c)
    dz = tl.where(neg, rn, tl.where(live, rp, 0.0))
    dc = tl.where(neg, z * rn / c - hn / (c * c), tl.where(live, rp * z / c, 0.0) - hp / (c * c))
    dcdk = tl.where(neg, -0.5 / c, 0.5 / c)
    adj_z = tl.where(small, adj * (ser + 2.0 * w * dser), adj * dz)
    adj_k = tl.where(small, adj * z * z * z * dser, adj * dc * dcdk)
    return val, adj_z, adj_k


@triton.jit
def _triple_vjp(OP: tl.constexpr, FLAGS: tl.constexpr, s00, s11, s22, s01, s02, s12, see, se1, se2, k, w0, w1, w2):
    """Coefficients (c0, c1, c2) of the op (dist2plane: its value in c0) from the row's dot products and k, and
    the vjp of the adjoints (w0, w1, w2) of (c0, c1, c2): the adjoints of the nine dot products and of k.
    Float64 row vectors in and out."""
    zero = tl.zeros_like(k)
    c0, c1, c2 = zero, zero, zero
    g00, g11, g22, g01, g02, g12, gee, ge1, ge2, gk = zero, zero, zero, zero, zero, zero, zero, zero, zero, zero
    if OP == GYRATION:  # (a, b, u): u + ca a + cb b
        # e = a + b (_triple_sums): see = |a + b|^2, se2 = <a + b, u>
        ca, cb, g00, g11, g01, g02, g12, gee, ge2, gk = _gyr_vjp(s00, s11, s01, s02, s12, see, se2, k, w0, w1)
        c0, c1, c2 = ca, cb, zero + 1.0
    elif OP == PARALLEL_TRANSPORT:  # (x, y, v): gyr[y, -x] v * lambda_x / lambda_y
        qx, live_x = _live_min(1.0 + k * s00, 1e-15)
        qy, live_y = _live_min(1.0 + k * s11, 1e-15)
        ratio = (2.0 / qx) / (2.0 / qy)
        # a = y, b = -x, u = v: a + b = -e (e = x - y)
        ca, cb, g_a2, g_b2, g_ab, g_au, g_bu, g_dd, g_du, gk = _gyr_vjp(s11, s00, -s01, s12, -s02, see, -se2, k,
                                                                        w1 * ratio, -w0 * ratio)
        c0 = -(cb * ratio)
        c1 = ca * ratio
        c2 = ratio
        adj_ratio = -w0 * cb + w1 * ca + w2
        adj_qy = tl.where(live_y, adj_ratio * ratio / qy, 0.0)
        adj_qx = tl.where(live_x, -adj_ratio * ratio / qx, 0.0)
        g00 = g_b2 + adj_qx * k
        g11 = g_a2 + adj_qy * k
        g01 = -g_ab
        g02 = -g_bu
        g12 = g_au
        gee = g_dd
        ge2 = -g_du
        gk = gk + adj_qy * s11 + adj_qx * s00
    elif OP == PARALLEL_TRANSPORT0:  # (y, v): v * max(1 + k yy, 1e-15)
        q, live = _live_min(1.0 + k * s00, 1e-15)
        c1 = q
        g00 = tl.where(live, w1 * k, 0.0)
        gk = tl.where(live, w1 * s00, 0.0)
    elif OP == PARALLEL_TRANSPORT0BACK:  # (x, v): v / max(1 + k xx, 1e-15)
        q, live = _live_min(1.0 + k * s00, 1e-15)
        c1 = 1.0 / q
        adj_q = tl.where(live, -w1 / (q * q), 0.0)
        g00 = adj_q * k
        gk = adj_q * s00
    else:  # DIST2PLANE (x, p, a): xx = s00, pp = s11, aa = s22, xp = s01, xa = s02, pa = s12, ee, pe = se1, ea = se2
        # x far out (k xx > 1, xx > pp, ee > xx / 4): the row is evaluated at the antipode x* = -x / (k xx), whose
        # signed distance is the negated one, from the exact rewrites of its dot products (stereo_triple.h's
        # eval_dist2plane, session 40: x's own x form cancelled in dx); the adjoints are chained back below
        xf = (k * s00 > 1.0) & (s00 > s11) & (see > 0.25 * s00)
        kxx = tl.where(xf, k * s00, 1.0)
        cx = -1.0 / kxx
        ik2 = 1.0 / (k * kxx)
        mk = tl.where(xf, k, 1.0)  # (k of the rewrite's d/dk: 1 off the far rows, whose chain is not taken)
        xx0, xp0, xa0, ee0, pe0, ea0 = s00, s01, s02, see, se1, se2
        s00 = tl.where(xf, ik2, xx0)
        s01 = tl.where(xf, cx * xp0, xp0)
        s02 = tl.where(xf, cx * xa0, xa0)
        see = tl.where(xf, (1.0 + 2.0 * k * xp0) * ik2 + s11, ee0)
        se1 = tl.where(xf, cx * xp0 - s11, pe0)
        se2 = tl.where(xf, cx * xa0 - s12, ea0)
        if FLAGS & 1:
            w0 = tl.where(xf, -w0, w0)
        # diff = (-p) (+) x = N / den, N = B e + k ee p (x form) = k ee x + w e (y form, where k pp > 1 and pp > xx:
        # logmap's two forms, stereo_math.h's logmap_y_form, with p in x's place), |N|^2 = ee den
        yf = (k * s11 > 1.0) & (s11 > s00)
        B = 1.0 + k * s11
        C = 1.0 + k * s00
        w = 1.0 + 2.0 * k * s01 - k * s00
        # den = B C - k ee for k <= 0, the first form for k > 0 (_sub_den, session 41; it cancelled for close x, p
        # near the boundary); 1 + k |diff|^2 = B C / den for k <= 0, from |diff|^2 (clamped) for k > 0
        pos = k > 0
        den, live_den = _live_min(_sub_den(B * C, s11, s00, s01, see, k), 1e-15)
        kee = k * see
        n2 = B * B * see + 2.0 * B * kee * se1 + kee * kee * s11
        r2 = tl.where(yf, see / den, n2 / (den * den))
        diff2, live_d2 = _live_min(r2, 1e-15)
        scs = tl.where(yf, kee * s02 + w * se2, B * se2 + kee * s12) / den
        if FLAGS & 1:
            sc = scs
        else:
            sc = tl.abs(scs)
        an = _sqrt(s22)
        q = tl.where(pos, 1.0 + k * diff2, B * C / den)
        dd_raw = q * an
        live_dd = ~(tl.abs(dd_raw) < 1e-15)
        dd = tl.where(live_dd, dd_raw, tl.where(dd_raw >= 0, 1e-15, -1e-15))
        z = 2.0 * sc / dd
        if FLAGS & 2:
            d, adj_z, gk = _arsin_k_vjp(z, k, w0 * an)
            c0 = d * an
            adj_an = w0 * d
        else:
            d, adj_z, gk = _arsin_k_vjp(z, k, w0)
            c0 = d
            adj_an = zero
        adj_sc = adj_z * 2.0 / dd
        adj_dd = tl.where(live_dd, -adj_z * z / dd, 0.0)
        adj_q = adj_dd * an
        adj_diff2 = tl.where(pos, adj_q * k, 0.0)
        gk += tl.where(pos, adj_q * diff2, 0.0)
        adj_P = tl.where(pos, 0.0, adj_q / den)  # q = P / den, P = B C (k <= 0)
        adj_an += adj_dd * q
        g22 = tl.where(an > 0, adj_an * 0.5 / tl.where(an > 0, an, 1.0), 0.0)
        if FLAGS & 1:
            adj_scs = adj_sc
        else:
            adj_scs = tl.where(scs > 0, adj_sc, tl.where(scs < 0, -adj_sc, 0.0))
        adj_num = adj_scs / den
        adj_den = -(adj_scs * scs + adj_P * B * C) / den
        adj_r2 = tl.where(live_d2, adj_diff2, 0.0)
        # x form: r2 = n2 / den^2, num = B ea + kee pa; y form: r2 = ee / den, num = kee xa + w ea
        adj_n2 = tl.where(yf, 0.0, adj_r2 / (den * den))
        adj_den += tl.where(yf, -adj_r2 * r2 / den, -2.0 * adj_r2 * r2 / den)
        adj_nx = tl.where(yf, 0.0, adj_num)
        adj_ny = tl.where(yf, adj_num, 0.0)
        adj_B = adj_nx * se2 + adj_n2 * (2.0 * B * see + 2.0 * kee * se1) + adj_P * C
        adj_w = adj_ny * se2
        ge2 = adj_nx * B + adj_ny * w
        adj_kee = adj_nx * s12 + adj_n2 * (2.0 * B * se1 + 2.0 * kee * s11) + adj_ny * s02
        g12 = adj_nx * kee
        g02 = adj_ny * kee
        gee = adj_n2 * B * B + adj_kee * k + tl.where(yf, adj_r2 / den, 0.0)
        ge1 = adj_n2 * 2.0 * B * kee
        g11 = adj_n2 * kee * kee
        gk += adj_kee * see
        d_pp, d_xx, d_xp, d_ee, d_k = _sub_den_vjp(adj_den, live_den, s11, s00, s01, see, k)
        adj_C = adj_P * B
        g01 = d_xp + adj_w * 2.0 * k
        g11 += d_pp + adj_B * k
        g00 = d_xx - adj_w * k + adj_C * k
        gee += d_ee
        gk += d_k + adj_B * s11 + adj_w * (2.0 * s01 - s00) + adj_C * s00
        if FLAGS & 1:
            c0 = tl.where(xf, -c0, c0)
        # x far: the adjoints of x*'s dot products chained to x's (xx* = ik2 = 1/(k^2 xx), <x*, p> = c xp,
        # <x*, a> = c xa, |x* - p|^2 = (1 + 2k xp) ik2 + pp, <x* - p, p> = c xp - pp, <x* - p, a> = c xa - pa,
        # c = -1/(k xx): d/dxx of each is minus itself over xx, save pp / pa; d/dk minus itself over k, save
        # |x* - p|^2's (2 xp ik2 - 2 (1 + 2k xp) ik2 / k) and pp / pa)
        u01, u02 = cx * xp0, cx * xa0
        uee = (1.0 + 2.0 * k * xp0) * ik2
        gxx = -(g00 * ik2 + (g01 + ge1) * u01 + (g02 + ge2) * u02 + gee * uee) / tl.where(xf, xx0, 1.0)
        gkf = gk - (2.0 * g00 * ik2 + (g01 + ge1) * u01 + (g02 + ge2) * u02 + 2.0 * gee * uee) / mk + gee * 2.0 * xp0 * ik2
        gxp = (g01 + ge1) * cx + gee * 2.0 * k * ik2
        gxa = (g02 + ge2) * cx
        g11 = tl.where(xf, g11 + gee - ge1, g11)
        g12 = tl.where(xf, g12 - ge2, g12)
        g00 = tl.where(xf, gxx, g00)
        g01 = tl.where(xf, gxp, g01)
        g02 = tl.where(xf, gxa, g02)
        gk = tl.where(xf, gkf, gk)
        gee = tl.where(xf, 0.0, gee)
        ge1 = tl.where(xf, 0.0, ge1)
        ge2 = tl.where(xf, 0.0, ge2)
    return c0, c1, c2, g00, g11, g22, g01, g02, g12, gee, ge1, ge2, gk


@triton.jit
def _triple_sums(p0, p1, p2, pg, rmask, D, OP: tl.constexpr, THREE: tl.constexpr, HAS_G: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The row's dot products (and <g, v_j> with HAS_G) in float64 for every dtype (as the C++ kernel: near the
    boundary 1 + k|x|^2 cancels, and float32 sums cost the gradients their 2x bound), chunk by chunk."""
    cols = tl.arange(0, BLOCK_D)
    z = tl.zeros([BLOCK_M], dtype=tl.float64)
    s00, s11, s22, s01, s02, s12, see, se1, se2, g0, g1, g2 = z, z, z, z, z, z, z, z, z, z, z, z
    for d0 in range(0, D, BLOCK_D):
        cc = d0 + cols
        m2 = rmask[:, None] & (cc[None, :] < D)
        a = tl.load(p0[:, None] + cc[None, :], mask=m2, other=0.0).to(tl.float64)
        b = tl.load(p1[:, None] + cc[None, :], mask=m2, other=0.0).to(tl.float64)
        s00 += tl.sum(a * a, axis=1)
        if OP != PARALLEL_TRANSPORT0 and OP != PARALLEL_TRANSPORT0BACK:
            s11 += tl.sum(b * b, axis=1)
            s01 += tl.sum(a * b, axis=1)
        if HAS_G:
            gv = tl.load(pg[:, None] + cc[None, :], mask=m2, other=0.0).to(tl.float64)
            g0 += tl.sum(gv * a, axis=1)
            g1 += tl.sum(gv * b, axis=1)
        if THREE:
            c = tl.load(p2[:, None] + cc[None, :], mask=m2, other=0.0).to(tl.float64)
            s12 += tl.sum(b * c, axis=1)
            s02 += tl.sum(a * c, axis=1)
            if OP == GYRATION:
                e = a + b
            else:
                e = a - b
            see += tl.sum(e * e, axis=1)
            se2 += tl.sum(e * c, axis=1)
            if OP == DIST2PLANE:
                s22 += tl.sum(c * c, axis=1)
                se1 += tl.sum(e * b, axis=1)
            if HAS_G:
                g2 += tl.sum(gv * c, axis=1)
    return s00, s11, s22, s01, s02, s12, see, se1, se2, g0, g1, g2


@triton.jit
def _triple_fwd_kernel(V0, V1, V2, K, OUT, N, D, s0, s1, s2, sk,
                       OP: tl.constexpr, FLAGS: tl.constexpr, THREE: tl.constexpr, SCALAR: tl.constexpr,
                       CT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < N
    p0 = V0 + rows * s0
    p1 = V1 + rows * s1
    p2 = V2 + rows * s2
    s00, s11, s22, s01, s02, s12, see, se1, se2, _g0, _g1, _g2 = _triple_sums(
        p0, p1, p2, p0, rmask, D, OP, THREE, False, BLOCK_M, BLOCK_D)
    k = tl.load(K + rows * sk, mask=rmask, other=0.0).to(tl.float64)
    zero = tl.zeros_like(k)
    c0, c1, c2, _a, _b, _c, _d, _e, _f, _g, _h, _i, _j = _triple_vjp(
        OP, FLAGS, s00, s11, s22, s01, s02, s12, see, se1, se2, k, zero, zero, zero)
    if SCALAR:
        tl.store(OUT + rows, c0.to(CT).to(OUT.dtype.element_ty), mask=rmask)  # float64 -> bfloat16 via CT
    elif OP == GYRATION:
        # c0 a + c1 b = c0 (a + b) + (c1 - c0) b: for b near -a near the boundary c0, c1 are ~1 / (1 + k|a|^2) and
        # nearly equal, while c0 |a + b| and c1 - c0 stay ~1 (float32 tiles: 1e-2 .. 2e-2 off there before)
        _triple_store_comb(OUT, rows, rmask, D, p0, p1, p2, p0, c0, c1 - c0, c2, zero, THREE, False, CT, BLOCK_D, -1)
    elif OP == PARALLEL_TRANSPORT:  # the same with a = y, b = -x: c0 (x - y) + (c1 + c0) y
        _triple_store_comb(OUT, rows, rmask, D, p0, p1, p2, p0, c0, c1 + c0, c2, zero, THREE, False, CT, BLOCK_D, 1)
    else:
        _triple_store_comb(OUT, rows, rmask, D, p0, p1, p2, p0, c0, c1, c2, zero, THREE, False, CT, BLOCK_D)


@triton.jit
def _triple_store_comb(PD, rows, rmask, D, p0, p1, p2, pg, w0, w1, w2, wg, THREE: tl.constexpr,
                       HAS_G: tl.constexpr, CT: tl.constexpr, BLOCK_D: tl.constexpr, ESIGN: tl.constexpr = 0):
    """Store the rows w0 v0 + w1 v1 + w2 v2 (+ wg g with HAS_G) into PD ((N, D), contiguous), chunk by chunk; with
    ESIGN = 1 / -1 the rows w0 (v0 - v1) + w1 v1 + ... / w0 (v0 + v1) + w1 v1 + ... (e formed per element: exact for
    close rows by Sterbenz; see _triple_fwd_kernel)."""
    cols = tl.arange(0, BLOCK_D)
    a0 = w0.to(CT)[:, None]
    a1 = w1.to(CT)[:, None]
    a2 = w2.to(CT)[:, None]
    ag = wg.to(CT)[:, None]
    pd = PD + rows * D
    for d0 in range(0, D, BLOCK_D):
        cc = d0 + cols
        m2 = rmask[:, None] & (cc[None, :] < D)
        x0 = tl.load(p0[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
        x1 = tl.load(p1[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
        if ESIGN == 1:
            x0 = x0 - x1
        elif ESIGN == -1:
            x0 = x0 + x1
        o = a0 * x0
        o += a1 * x1
        if THREE:
            o += a2 * tl.load(p2[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
        if HAS_G:
            o += ag * tl.load(pg[:, None] + cc[None, :], mask=m2, other=0.0).to(CT)
        tl.store(pd[:, None] + cc[None, :], o.to(PD.dtype.element_ty), mask=m2)


@triton.jit
def _triple_bwd_kernel(G, V0, V1, V2, K, D0, D1, D2, DK, N, D, sg, s0, s1, s2, sk,
                       OP: tl.constexpr, FLAGS: tl.constexpr, THREE: tl.constexpr, SCALAR: tl.constexpr,
                       MASK: tl.constexpr, CT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < N
    p0 = V0 + rows * s0
    p1 = V1 + rows * s1
    p2 = V2 + rows * s2
    pg = G + rows * sg
    s00, s11, s22, s01, s02, s12, see, se1, se2, g0, g1, g2 = _triple_sums(
        p0, p1, p2, pg, rmask, D, OP, THREE, not SCALAR, BLOCK_M, BLOCK_D)
    k = tl.load(K + rows * sk, mask=rmask, other=0.0).to(tl.float64)
    if SCALAR:
        g0 = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float64)
    c0, c1, c2, q00, q11, q22, q01, q02, q12, qee, qe1, qe2, gk = _triple_vjp(
        OP, FLAGS, s00, s11, s22, s01, s02, s12, see, se1, se2, k, g0, g1, g2)
    if MASK & 8:
        tl.store(DK + rows, gk, mask=rmask)
    zero = tl.zeros_like(k)
    if SCALAR:
        c0, c1, c2 = zero, zero, zero
    # gyration / parallel_transport write each gradient's w0 v0 + w1 v1 as w0 e + (w1 + p w0) v1 (as the forward)
    if OP == GYRATION:
        _triple_bwd_stores(D0, D1, D2, rows, rmask, D, p0, p1, p2, pg, q00, q11, q22, q01, q02, q12, qee, qe1, qe2,
                           c0, c1, c2, THREE, SCALAR, MASK, CT, BLOCK_D, -1)
    elif OP == PARALLEL_TRANSPORT:
        _triple_bwd_stores(D0, D1, D2, rows, rmask, D, p0, p1, p2, pg, q00, q11, q22, q01, q02, q12, qee, qe1, qe2,
                           c0, c1, c2, THREE, SCALAR, MASK, CT, BLOCK_D, 1)
    else:
        _triple_bwd_stores(D0, D1, D2, rows, rmask, D, p0, p1, p2, pg, q00, q11, q22, q01, q02, q12, qee, qe1, qe2,
                           c0, c1, c2, THREE, SCALAR, MASK, CT, BLOCK_D, 0)


@triton.jit
def _triple_bwd_stores(D0, D1, D2, rows, rmask, D, p0, p1, p2, pg, q00, q11, q22, q01, q02, q12, qee, qe1, qe2,
                       c0, c1, c2, THREE: tl.constexpr, SCALAR: tl.constexpr, MASK: tl.constexpr, CT: tl.constexpr,
                       BLOCK_D: tl.constexpr, ESIGN: tl.constexpr):
    """The wanted gradients dv_i = W_i0 v0 + W_i1 v1 + W_i2 v2 + c_i g from the dot products' adjoints q (stereo_triple.h,
    dot_adjoint_coefs, with e = v0 - p v1: p = -1 for gyration (e = a + b), else 1); ESIGN != 0 (p = ESIGN) writes
    W_i0 e + (W_i1 + p W_i0) v1 (_triple_store_comb)."""
    if ESIGN == -1:
        pe = -1.0
    else:
        pe = 1.0
    if ESIGN == 0:
        fold = 0.0
    else:
        fold = pe
    if MASK & 1:
        w0 = 2.0 * q00 + 2.0 * qee
        _triple_store_comb(D0, rows, rmask, D, p0, p1, p2, pg, w0, q01 - 2.0 * pe * qee + qe1 + fold * w0,
                           q02 + qe2, c0, THREE, not SCALAR, CT, BLOCK_D, ESIGN)
    if MASK & 2:
        w0 = q01 - 2.0 * pe * qee + qe1
        _triple_store_comb(D1, rows, rmask, D, p0, p1, p2, pg, w0, 2.0 * q11 + 2.0 * qee - 2.0 * pe * qe1 + fold * w0,
                           q12 - pe * qe2, c1, THREE, not SCALAR, CT, BLOCK_D, ESIGN)
    if THREE:
        if MASK & 4:
            w0 = q02 + qe2
            _triple_store_comb(D2, rows, rmask, D, p0, p1, p2, pg, w0, q12 - pe * qe2 + fold * w0, 2.0 * q22, c2,
                               THREE, not SCALAR, CT, BLOCK_D, ESIGN)


def _triple_blocks(N, D):
    """(BLOCK_M, BLOCK_D): tiles of <= 512 elements (the float64 epilogue of a row needs the registers), rows wider
    than 128 walked in 128-wide chunks."""
    block_d = min(triton.next_power_of_2(max(D, 1)), 128)
    block_m = max(1, min(_MAX_BLOCK_M, 512 // block_d, triton.next_power_of_2(max(N, 1))))
    return block_m, block_d


def _triple_prep(code, v0, v1, v2):
    v0, v1 = _rows(v0), _rows(v1)
    three = _TRIPLE_NVEC[code] == 3
    v2 = _rows(v2) if three else v0
    ct = tl.float64 if v0.dtype == torch.float64 else tl.float32
    return v0, v1, v2, three, ct


def triple_fwd(code, v0, v1, v2, k, flags):
    """Forward of three-vector op `code` (geoops._ops.stereographic.TRIPLE_OPS) on rows."""
    N, D = v0.shape
    scalar = code == 4
    out = torch.empty((N,) if scalar else (N, D), dtype=v0.dtype, device=v0.device)
    if N == 0:
        return out
    v0, v1, v2, three, ct = _triple_prep(code, v0, v1, v2)
    kk, sk = _per_row(k, N, "k")
    bm, bd = _triple_blocks(N, D)
    _triple_fwd_kernel[(triton.cdiv(N, bm),)](
        v0, v1, v2, kk, out, N, D, v0.stride(0), v1.stride(0), v2.stride(0), sk,
        OP=code, FLAGS=int(flags), THREE=three, SCALAR=scalar, CT=ct, BLOCK_M=bm, BLOCK_D=bd, num_warps=4,
        **_maxnreg(4))
    return out


def triple_bwd(code, grad, v0, v1, v2, k, flags, mask):
    """(dv0, dv1, dv2, dk) of three-vector op `code`; mask bits 1 dv0, 2 dv1, 4 dv2, 8 dk (per row, k's dtype)."""
    N, D = v0.shape
    scalar = code == 4
    nvec = _TRIPLE_NVEC[code]
    d = [torch.empty((N, D), dtype=v0.dtype, device=v0.device) if (mask >> i) & 1 and i < nvec
         else v0.new_empty(0) for i in range(3)]
    dk = torch.empty(N, dtype=torch.float64, device=v0.device) if mask & 8 else v0.new_empty(0)
    m = int(mask) & (15 if nvec == 3 else 11)
    if N and m:
        v0, v1, v2, three, ct = _triple_prep(code, v0, v1, v2)
        g = grad.to(v0.dtype).reshape(N).contiguous() if scalar else _rows(grad.to(v0.dtype))
        kk, sk = _per_row(k, N, "k")
        bm, bd = _triple_blocks(N, D)
        _triple_bwd_kernel[(triton.cdiv(N, bm),)](
            g, v0, v1, v2, kk, d[0] if d[0].numel() else v0, d[1] if d[1].numel() else v0,
            d[2] if d[2].numel() else v0, dk if mask & 8 else kk, N, D, 0 if scalar else g.stride(0),
            v0.stride(0), v1.stride(0), v2.stride(0), sk,
            OP=code, FLAGS=int(flags), THREE=three, SCALAR=scalar, MASK=m, CT=ct, BLOCK_M=bm, BLOCK_D=bd,
            num_warps=4, **_maxnreg(4))
    if mask & 8:
        dk = dk.to(k.dtype)
    return d[0], d[1], d[2], dk


# ---------------------------------------------------------------- Moebius matvec epilogue (mobius_scale)
# The contract of geoops._ops.stereographic's mobius_scale (the same as csrc/cpu/stereographic_pairwise.cpp):
#   scale_fwd(v [R, Do], x [R, Di], k [1] or [R]) -> (out = v * phi, stats [R, 6] float64: |x|^2, |v|^2, a, a', b, b')
#   scale_bwd(g, v, x, k, stats, mask) -> (gv [R, Do], gx [R, Di], gk [R] float64); mask bits 1 gv, 2 gx, 4 gk
# with phi = a b, a = atanc(k |x|^2), b = tanc(k |v|^2 a^2) (mobius_matvec: v = M x; mobius_pointwise_mul: v = w * x).
# One program per BLOCK_M rows: the row sums in float64 over BLOCK_D-wide chunks of each vector, the row scalars in
# float64 (the row kernels' atanc / tanc), phi rounded to the row type once, then one pass writing the rows.
@triton.jit
def _rowsq(P, rows, rmask, W, CT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """sum over the W columns of P's rows of p^2, float64 (P rows contiguous, row stride W)."""
    acc = tl.zeros([BLOCK_M], tl.float64)
    for c0 in range(0, W, BLOCK_D):
        cc = c0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (cc[None, :] < W)
        p = tl.load(P + rows[:, None] * W + cc[None, :], mask=m2, other=0.0).to(tl.float64)
        acc += tl.sum(p * p, 1)
    return acc


@triton.jit
def _scale_fwd_kernel(V, X, K, OUT, ST, R, DO, DI, sk, CT: tl.constexpr, CUT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < R
    x2 = _rowsq(X, rows, rmask, DI, CT, BLOCK_M, BLOCK_D)
    v2 = _rowsq(V, rows, rmask, DO, CT, BLOCK_M, BLOCK_D)
    k = tl.load(K + rows * sk, mask=rmask, other=0.0).to(tl.float64)
    z1 = k * x2
    q1 = 1.0 + z1
    a = _atanc(z1, q1, CUT)
    da = _atanc_d(z1, q1, a, CUT)
    z2 = k * v2 * a * a
    b = _tanc(z2, CUT)
    db = _tanc_d(z2, b, CUT)
    st = ST + rows * 6
    tl.store(st, x2, mask=rmask)
    tl.store(st + 1, v2, mask=rmask)
    tl.store(st + 2, a, mask=rmask)
    tl.store(st + 3, da, mask=rmask)
    tl.store(st + 4, b, mask=rmask)
    tl.store(st + 5, db, mask=rmask)
    phi = (a * b).to(CT)  # rounded once, as the C++ kernel's scalar_t(a * b)
    for c0 in range(0, DO, BLOCK_D):
        cc = c0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (cc[None, :] < DO)
        off = rows[:, None] * DO + cc[None, :]
        v = tl.load(V + off, mask=m2, other=0.0).to(CT)
        tl.store(OUT + off, (v * phi[:, None]).to(OUT.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["MASK"])
def _scale_bwd_kernel(G, V, X, K, ST, GV, GX, GK, R, DO, DI, sk, MASK, CT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < R
    s = tl.zeros([BLOCK_M], tl.float64)  # <g, v> per row
    for c0 in range(0, DO, BLOCK_D):
        cc = c0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (cc[None, :] < DO)
        off = rows[:, None] * DO + cc[None, :]
        g = tl.load(G + off, mask=m2, other=0.0).to(tl.float64)
        v = tl.load(V + off, mask=m2, other=0.0).to(tl.float64)
        s += tl.sum(g * v, 1)
    k = tl.load(K + rows * sk, mask=rmask, other=0.0).to(tl.float64)
    st = ST + rows * 6
    x2 = tl.load(st, mask=rmask, other=0.0)
    v2 = tl.load(st + 1, mask=rmask, other=0.0)
    a = tl.load(st + 2, mask=rmask, other=1.0)
    da = tl.load(st + 3, mask=rmask, other=0.0)
    b = tl.load(st + 4, mask=rmask, other=1.0)
    db = tl.load(st + 5, mask=rmask, other=0.0)
    # the same row algebra as csrc/cpu/stereographic_matvec_rows.h's scale_row_grad
    if MASK & 1:
        c0r = (a * b).to(CT)
        c1r = (2.0 * s * a * db * k * a * a).to(CT)
        for c0 in range(0, DO, BLOCK_D):
            cc = c0 + tl.arange(0, BLOCK_D)
            m2 = rmask[:, None] & (cc[None, :] < DO)
            off = rows[:, None] * DO + cc[None, :]
            g = tl.load(G + off, mask=m2, other=0.0).to(CT)
            v = tl.load(V + off, mask=m2, other=0.0).to(CT)
            tl.store(GV + off, (g * c0r[:, None] + v * c1r[:, None]).to(GV.dtype.element_ty), mask=m2)
    if MASK & 2:
        cx = (2.0 * s * (da * k * b + a * db * k * v2 * 2.0 * a * da * k)).to(CT)
        for c0 in range(0, DI, BLOCK_D):
            cc = c0 + tl.arange(0, BLOCK_D)
            m2 = rmask[:, None] & (cc[None, :] < DI)
            off = rows[:, None] * DI + cc[None, :]
            x = tl.load(X + off, mask=m2, other=0.0).to(CT)
            tl.store(GX + off, (x * cx[:, None]).to(GX.dtype.element_ty), mask=m2)
    if MASK & 4:
        gk = s * (da * x2 * b + a * db * (v2 * a * a + k * v2 * 2.0 * a * da * x2))
        tl.store(GK + rows, gk, mask=rmask)


def _scale_blocks(R: int, W: int):
    """(BLOCK_M, BLOCK_D) of the epilogue kernels: tiles of <= 2048 elements, rows wider than 128 in chunks."""
    block_d = min(triton.next_power_of_2(max(W, 1)), 128)
    block_m = max(1, min(_MAX_BLOCK_M, 2048 // block_d, triton.next_power_of_2(max(R, 1))))
    if INTERPRETED:
        block_m = min(block_m, 16)
    return block_m, block_d


def scale_fwd(v, x, k):
    """mobius_scale's forward (contract above): (out, stats)."""
    v, x = v.contiguous(), x.contiguous()  # the kernels read rows of stride Do / Di
    R, Do = v.shape
    Di = x.shape[1]
    out = torch.empty_like(v)
    st = torch.empty((R, 6), dtype=torch.float64, device=v.device)
    if R == 0:
        return out, st
    kk, sk = _per_row(k, R, "k")
    bm, bd = _scale_blocks(R, max(Do, Di))
    ct = tl.float64 if v.dtype == torch.float64 else tl.float32
    with _device_guard(v):
        _scale_fwd_kernel[(triton.cdiv(R, bm),)](v, x, kk, out, st, R, Do, Di, sk, CT=ct, CUT=_CUT_F64,
                                                 BLOCK_M=bm, BLOCK_D=bd, num_warps=4, **_maxnreg(4))
    return out, st


def scale_bwd(g, v, x, k, st, mask):
    """mobius_scale's backward (contract above): (gv, gx, gk); unselected gradients are empty."""
    v, x = v.contiguous(), x.contiguous()
    R, Do = v.shape
    Di = x.shape[1]
    mask = int(mask) & 7
    gv = torch.empty_like(v) if mask & 1 else v.new_empty(0)
    gx = torch.empty_like(x) if mask & 2 else v.new_empty(0)
    gk = torch.empty(R, dtype=torch.float64, device=v.device) if mask & 4 else v.new_empty(0)
    if R == 0 or mask == 0:
        return gv, gx, gk
    g = g.to(v.dtype).contiguous()
    kk, sk = _per_row(k, R, "k")
    st = st.to(torch.float64).contiguous()
    bm, bd = _scale_blocks(R, max(Do, Di))
    ct = tl.float64 if v.dtype == torch.float64 else tl.float32
    with _device_guard(v):
        _scale_bwd_kernel[(triton.cdiv(R, bm),)](
            g, v, x, kk, st, gv if mask & 1 else v, gx if mask & 2 else x, gk if mask & 4 else st, R, Do, Di, sk,
            mask, CT=ct, BLOCK_M=bm, BLOCK_D=bd, num_warps=4, **_maxnreg(4))
    return gv, gx, gk


def _scale_compile_variants():
    """The epilogue kernels: float32 / float64, forward and backward (every gradient), rows of 256 (two chunks)."""
    entries = []
    for dtype in (torch.float32, torch.float64):
        kd = torch.float64 if dtype == torch.float64 else torch.float32
        dname = str(dtype).replace("torch.", "")
        v, x, k = torch.zeros(64, 256, dtype=dtype), torch.zeros(64, 256, dtype=dtype), torch.zeros(1, dtype=kd)
        st = torch.zeros(64, 6, dtype=torch.float64)
        expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 32 if dtype == torch.float64 else 0}
        entries.append({"label": f"scale/{dname} fwd", "launch": (lambda v=v, x=x, k=k: scale_fwd(v, x, k)),
                        "expect": expect})
        entries.append({"label": f"scale/{dname} bwd",
                        "launch": (lambda v=v, x=x, k=k, st=st: scale_bwd(v, v, x, k, st, 7)), "expect": expect})
    return entries


# ---------------------------------------------------------------- compile check (.ci/triton_compile_check.py)
OP_NAMES = ("mobius_add", "mobius_sub", "project", "lambda_x", "mobius_scalar_mul", "expmap", "expmap0", "logmap",
            "logmap0", "dist", "dist0")

# Shapes whose launches cover every path of the launchers: (name, N, D).  "one-tile" is the usual
# configuration (BLOCK_M rows of one tile), "narrow" short rows (many rows a program), "single-row"
# one row per program (small N), "wide" the widest one-tile row, "chunked" rows wider than MAX_BLOCK_D
# (two passes).
_COMPILE_SHAPES = (("one-tile", 4096, 64), ("narrow", 4096, 4), ("single-row", 1, 16), ("wide", 2, MAX_BLOCK_D),
                   ("chunked", 2, MAX_BLOCK_D + 4))


COMPILE_NOTES = """\
Row kernels: float32/float16/bfloat16 allow no spill.  Their tanc uses _tan_cw (Cody-Waite reduction with
three float64 words of pi/2 and sin/cos polynomials), not libdevice's tan, whose float64 large-argument
reduction (`__internal_trig_reduction_slowpathd`, a call) kept 4-8 B on the stack; and they launch with
.maxnreg (65536 / threads, at most 255): left to itself ptxas targeted 64 registers and spilled 4-8 B even
without that call.  Every float32/float16/bfloat16 row variant, every column: no spill.  float64 keeps libdevice's tan
(exact reduction for any argument) and may keep up to 32 B on the stack: the slow-path call, and ptxas's
own choice at 64 registers in dist/logmap (Triton 3.6 sm_80).  Pairwise kernels (pair/...): no spills
tolerated; the n = 64 knn walks features in 16-wide chunks (32 kept 8 B on the stack with Triton 3.6 on
sm_80); approximate instructions there are libdevice's log1p/atan internals (the divisions and square
roots of the epilogue are IEEE)."""


def compile_variants():
    """Every Triton variant the launchers of this module can run, for the CI compile check.

    One entry per (op, dtype, shape class, forward / backward): the launch calls ``_stereo_fwd`` or
    ``_stereo_bwd`` (all gradients: the gradient mask is a run-time argument, so every mask runs this
    binary) on small CPU tensors; the check compiles what it would launch.  ``project`` is specialised
    on its margin eps (a compile-time constant): its entries use each dtype's default.  Expectations:
    IEEE float32 division (``_div``), 64-bit row index, at most 32 bytes of spills.
    """
    from geoops.reference.stereographic import default_eps

    entries = []
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        kd = torch.float64 if dtype == torch.float64 else torch.float32
        dname = str(dtype).replace("torch.", "")
        for shape, N, D in _COMPILE_SHAPES:
            if shape in ("narrow", "single-row") and dtype in (torch.float16, torch.bfloat16):
                continue  # the half types differ from float32 only in loads/stores: the main shapes cover them
            for code, name in enumerate(OP_NAMES):
                x = torch.zeros(N, D, dtype=dtype)
                y = x if code in HAS_Y_OPS else None
                k = torch.zeros(1, dtype=kd)
                r = torch.zeros(1, dtype=kd) if code in HAS_R_OPS else None
                eps = default_eps(dtype)
                g = torch.zeros(N, dtype=dtype) if code in SCALAR_OUT_OPS else x
                # no spill in float32/float16/bfloat16 (their tan is _tan_cw: no libdevice slow path); float64
                # may keep up to 32 B on the stack (COMPILE_NOTES: libdevice's tan reduction call, and ptxas's
                # own choice at 64 registers in a few Triton 3.6 sm_80 variants); anything more fails the check
                expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 32 if dtype == torch.float64 else 0}

                def fwd(code=code, x=x, y=y, k=k, r=r, eps=eps):
                    _stereo_fwd(code, x, y, k, r, eps)

                def bwd(code=code, g=g, x=x, y=y, k=k, r=r, eps=eps):
                    _stereo_bwd(code, g, x, y, k, r, eps, 15)

                entries.append({"label": f"{name}/{dname}/{shape} fwd", "launch": fwd, "expect": expect})
                entries.append({"label": f"{name}/{dname}/{shape} bwd", "launch": bwd, "expect": expect})
    return (entries + _pair_compile_variants() + _midpoint_compile_variants() + _triple_compile_variants()
            + _scale_compile_variants())


# Three-vector launches: one binary per (op, flags, dtype, forward / backward with every gradient); the row
# width only changes BLOCK_D (one-tile D = 64, chunked D = 300 walks 128-wide chunks).  The epilogue runs in
# float64 for every dtype (libdevice asinh / asin in dist2plane).
def _triple_compile_variants():
    entries = []
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        kd = torch.float64 if dtype == torch.float64 else torch.float32
        dname = str(dtype).replace("torch.", "")
        expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 32 if dtype == torch.float64 else 0}
        for shape, N, D in (("one-tile", 4096, 64), ("chunked", 2, 300)):
            if shape == "chunked" and dtype in (torch.float16, torch.bfloat16):
                continue
            for code, name in enumerate(TRIPLE_OP_NAMES):
                for flags in ((0, 1, 2, 3) if code == 4 else (0,)):
                    x = torch.zeros(N, D, dtype=dtype)
                    v2 = x if _TRIPLE_NVEC[code] == 3 else None
                    k = torch.zeros(1, dtype=kd)
                    g = torch.zeros(N, dtype=dtype) if code == 4 else x
                    tag = f"{name}" + (f"[flags={flags}]" if code == 4 else "")

                    def fwd(code=code, x=x, v2=v2, k=k, flags=flags):
                        triple_fwd(code, x, x, v2, k, flags)

                    def bwd(code=code, g=g, x=x, v2=v2, k=k, flags=flags):
                        triple_bwd(code, g, x, x, v2, k, flags, 15)

                    entries.append({"label": f"triple/{tag}/{dname}/{shape} fwd", "launch": fwd, "expect": expect})
                    entries.append({"label": f"triple/{tag}/{dname}/{shape} bwd", "launch": bwd, "expect": expect})
    return entries


# Pairwise launches: the forward's binary depends on the dtype and on what it writes (distances, + A, rank
# keys); the backward's on the dtype, the feature block (16, 32, 64: D = 10, 32, 64; wider rows are walked in
# 64-wide blocks), the role (dx with or without dk, dy).
_PAIR_COMPILE_DIMS = (10, 32, 64)


def _pair_compile_variants():
    entries = []
    expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 0}
    for dtype in (torch.float32, torch.float64):
        dname = str(dtype).replace("torch.", "")
        x = torch.zeros(1, 37, 64, dtype=dtype)
        k = torch.zeros(1, dtype=dtype)
        for label, fn in (("cdist", lambda x=x, k=k: _pair_fwd(x, x, k, False, False)),
                          ("cdist+A", lambda x=x, k=k: _pair_fwd(x, x, k, True, False)),
                          ("rank_key", lambda x=x, k=k: _pair_fwd(x, x, k, False, True))):
            entries.append({"label": f"pair/{label}/{dname} fwd", "launch": fn, "expect": expect})
        for D in _PAIR_COMPILE_DIMS:
            xd = torch.zeros(1, 37, D, dtype=dtype)
            g = torch.zeros(1, 37, 37, dtype=dtype)
            for mask, what in ((7, "dx,dy,dk"), (1, "dx")):
                for split, tag in ((0, ""), (2, " split")):  # split: the column-split partials (SPLIT)
                    for kpos in (False, True):  # KPOS: a call with a k > 0 batch (reads G beside A)
                        def bwd(xd=xd, g=g, k=k, mask=mask, split=split, kpos=kpos):
                            _pair_bwd(g, xd, xd, k, g, g, mask, split=split, kpos=kpos)

                        entries.append({"label": f"pair/cdist/{dname}/D{D} bwd{tag}{' kpos' if kpos else ''} {what}",
                                        "launch": bwd, "expect": expect})
    # the fused float32 knn: one binary per top-n width NP (2..KNN_MAX_NEIGHBORS) and direction
    x = torch.zeros(1, 37, 10)
    y = torch.zeros(1, 100, 10)
    k = torch.zeros(1)
    n = 2  # n = 1 runs the NP = 2 binary
    while n <= KNN_MAX_NEIGHBORS:
        for largest in (False, True):
            entries.append({"label": f"pair/knn/float32/n{n} {'largest' if largest else 'nearest'}",
                            "launch": lambda n=n, largest=largest: knn_indices(x, y, k, n, largest),
                            "expect": expect})
        n *= 2
    return entries


# ================================================================ pairwise: cdist, rank keys (knn / pairwise_rank)
# The pairwise contract of geoops._ops.stereographic (the same as the C++ kernels):
#   cdist_fwd(x [B,N,D], y [B,M,D], k [B], save) -> (dist [B,N,M], saved [B,N,M] or empty)
#   cdist_bwd(g, x, y, k, saved, dist, mask)     -> (dx, dy, dk [B])   (mask bits 1 dx, 2 dy, 4 dk)
#   rank_key(x, y, k) -> a monotone function of the distance [B,N,M]; dist_from_key(key, k)
# x and y are float32 or float64.  The saved tensor is per batch A = |x - y|^2 (close pairs exact) where
# k <= 0 and G = <x, y> where k > 0 (session 41: the k > 0 coefficients need G, which A has lost far out).
#
# Forward (_pair_fwd_kernel): one program per (BLOCK_M rows of x, BLOCK_N rows of y, batch): G = x y^T by
# tl.dot over BLOCK_K-wide chunks of D in the input precision (float32: input_precision="ieee", never
# TF32), with the row norms |x|^2, |y|^2 reduced from the same chunks; A = |x|^2 + |y|^2 - 2G.  A pair
# with A < tau (|x|^2 + |y|^2) (tau = u (D + 4)/rel, rel = 1/512 fp32, 1e-12 fp64, as the C++ kernel) lost too many digits to the
# cancellation: a tile that holds one recomputes its close pairs exactly, sum_d (x_d - y_d)^2 (so x
# against itself gives exact zeros).  The epilogue turns A into the distance (or the rank key) in the
# input precision, with IEEE division and square root and libdevice log1p / atan; k > 0's den (distance and key) as
# 1 + 2kG + (k|x|^2)(k|y|^2) from the tile's G, not p_x p_y - kA (which cancels far out on the sphere; session 42).
#
# Backward (_pair_bwd_kernel, once for dx and once for dy with the roles of x and y swapped): per pair,
# from A, g and the row norms, W = 2 g dd/dA and the self term 2 g dd/d|p|^2 |p|... as in
# csrc/cpu/stereographic_pairwise.cpp; dP = alpha * P - W Q accumulated by tl.dot over tiles of Q
# (no [N, M, D] tensor).  Close pairs are left out of W (their W (x - y) cancels in the GEMM form) and
# added exactly afterwards, like the C++ kernel: the pass flags each row holding one, and _pair_close_fix_kernel
# recomputes those rows' close pairs and adds W (p_i - q_j) into its own rows (session 51: no host read).  dk: per row
# partial sums of g dd/dk, summed per batch.  k > 0 (far out on the projected sphere, k|x|^2 >> 1,
# p_p p_q - kA and W + 2 g dd/d|p|^2 cancel ~k|x|^2-fold): those batches run the KPOS variant, which reads
# the saved G (A = |x|^2 + |y|^2 - 2G, close pairs exact, formed by _pair_a_kernel) and forms den,
# dk's linear term and far rows' alpha share in G (the C++ BwdRow); k <= 0 batches run the kernel as before (same
# bits) from the saved A.  Both variants are launched on every call, each program doing its batch only where k is
# of its kind: no host read of k's sign (session 51).
_PAIR_MIN_P = {torch.float32: 1e-7, torch.float64: 1e-15}  # clamp of p = 1 + k|x|^2 for k < 0 (C++ min_p)


@triton.jit
def _pair_p(k, n2, PMIN: tl.constexpr):
    """p = 1 + k |x|^2, clamped at PMIN for k < 0 (points on or outside the ball)."""
    p = 1.0 + k * n2
    return tl.where(k < 0, tl.maximum(p, PMIN), p)


@triton.jit
def _pair_dot(X, Y, xrow, yrow, rmask, cmask, D, CT: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """<x_i, y_j> for a (BLOCK_M, BLOCK_N) tile by tl.dot (exact float32 products: no TF32), and the row norms."""
    g = tl.zeros([BLOCK_M, BLOCK_N], CT)
    x2 = tl.zeros([BLOCK_M], CT)
    y2 = tl.zeros([BLOCK_N], CT)
    for d0 in range(0, D, BLOCK_K):
        kk = d0 + tl.arange(0, BLOCK_K)
        km = kk < D
        xt = tl.load(X + xrow[:, None] + kk[None, :], mask=rmask[:, None] & km[None, :], other=0.0).to(CT)
        yt = tl.load(Y + yrow[:, None] + kk[None, :], mask=cmask[:, None] & km[None, :], other=0.0).to(CT)
        g += tl.dot(xt, tl.trans(yt), input_precision="ieee")
        x2 += tl.sum(xt * xt, 1)
        y2 += tl.sum(yt * yt, 1)
    return g, x2, y2


@triton.jit
def _pair_exact_sq(X, Y, xrow, yrow, rmask, cmask, D, CT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """sum_d (x_id - y_jd)^2 for every pair of the tile (the close-pair recompute: D scalar steps)."""
    e = tl.zeros([BLOCK_M, BLOCK_N], CT)
    for d in range(0, D):
        xc = tl.load(X + xrow + d, mask=rmask, other=0.0).to(CT)
        yc = tl.load(Y + yrow + d, mask=cmask, other=0.0).to(CT)
        t = xc[:, None] - yc[None, :]
        e += t * t
    return e


@triton.jit
def _pair_a_tile(X, Y, xrow, yrow, rmask, cmask, k, D, tau, CT: tl.constexpr, PMIN: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A = |x - y|^2 of a tile (close pairs recomputed exactly), G = <x, y>, the row norms and the tile's mask.

    (No p_x p_y tile: each branch of the epilogue forms its own denominator from the norms, so no third pairwise
    tile is live beside A and G.)"""
    g, x2, y2 = _pair_dot(X, Y, xrow, yrow, rmask, cmask, D, CT, BLOCK_M, BLOCK_N, BLOCK_K)
    s2 = x2[:, None] + y2[None, :]
    a = s2 - 2.0 * g
    m2 = rmask[:, None] & cmask[None, :]
    close = (a < tau * s2) & m2
    a = tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)  # (a NaN point's pairs stay NaN: maxnum drops it)
    if tl.max(close.to(tl.int32)) > 0:  # rare: tiles that hold a close pair (the diagonal of cdist(x, x))
        a = tl.where(close, _pair_exact_sq(X, Y, xrow, yrow, rmask, cmask, D, CT, BLOCK_M, BLOCK_N), a)
    return a, g, x2, y2, m2


@triton.jit
def _pair_pp(k, x2, y2, PMIN: tl.constexpr):
    """p_x p_y of a tile (each p clamped for k < 0)."""
    return _pair_p(k, x2, PMIN)[:, None] * _pair_p(k, y2, PMIN)[None, :]


@triton.jit
def _pair_den_pos(g, x2, y2, k):
    """den = 1 + 2k<x, y> + (k|x|^2)(k|y|^2) >= 0 for k > 0 (clamped at 0: the antipode), as the C++ kernels and
    the Triton backward form it: p_x p_y - kA cancels ~p_x p_y / den-fold for x far out against y near 0."""
    den = 1.0 + 2.0 * k * g + (k * x2)[:, None] * (k * y2)[None, :]
    return tl.maximum(den, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _pair_key(a, g, x2, y2, k, PMIN: tl.constexpr):
    """The rank key: A/(p_x p_y) for k < 0, A/den for k > 0 (_pair_den_pos; antipode: +inf), A for k = 0."""
    den = tl.where(k < 0, _pair_pp(k, x2, y2, PMIN), tl.where(k > 0, _pair_den_pos(g, x2, y2, k), 1.0))
    return _div(a, den)


@triton.jit
def _pair_fwd_kernel(X, Y, K, OUT, SOUT, N, M, D, tau,
                     KEY: tl.constexpr, SAVE: tl.constexpr, CT: tl.constexpr, PMIN: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_M  # 64-bit before any arithmetic
    j0 = tl.program_id(1).to(tl.int64) * BLOCK_N
    b = tl.program_id(2).to(tl.int64)
    rows = i0 + tl.arange(0, BLOCK_M)
    cols = j0 + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cmask = cols < M
    k = tl.load(K + b).to(CT)
    a, g, x2, y2, m2 = _pair_a_tile(X, Y, (b * N + rows) * D, (b * M + cols) * D, rmask, cmask, k, D, tau, CT,
                                    PMIN, BLOCK_M, BLOCK_N, BLOCK_K)
    off = (b * N + rows[:, None]) * M + cols[None, :]
    if SAVE:  # the backward's saved tensor (_pair_a_kernel): A where k <= 0, G = <x, y> where k > 0
        tl.store(SOUT + off, tl.where(k > 0, g, a).to(SOUT.dtype.element_ty), mask=m2)
    if KEY:
        v = _pair_key(a, g, x2, y2, k, PMIN)
    else:  # k is uniform over the program: one branch runs (and holds registers)
        rs = _div(1.0, _sqrt(tl.where(k != 0, tl.abs(k), 1.0)))
        if k < 0:  # log1p(t + sqrt(t (t + 2)))/sqrt(c), t = 2cA/(p_x p_y), c = -k
            # (C++ min_pp: p_x p_y's own floor only below PMIN^2, the product of two clamped p; inside the ball the
            # row ops clamp no positive q, session 47)
            t = _div(-2.0 * k * a, tl.maximum(_pair_pp(k, x2, y2, PMIN), PMIN * PMIN))
            v = _math.log1p(t + _sqrt(t * (t + 2.0))) * rs
        elif k > 0:  # 2 atan2(sqrt(kA), sqrt(den))/sqrt(k), den = p_x p_y - kA formed from G (_pair_den_pos)
            den = _pair_den_pos(g, x2, y2, k)
            ratio = _div(_sqrt(k * a), _sqrt(tl.where(den != 0, den, 1.0)))  # (den >= 0, or NaN: kept)
            v = 2.0 * tl.where(den != 0, _math.atan(ratio), 1.5707963267948966) * rs
        else:  # k = 0, or a NaN k (k * 0: NaN then, as dist; it was 2|x - y|)
            v = 2.0 * _sqrt(a) + k * 0.0
    tl.store(OUT + off, v.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _pair_w(g, asafe, den, ok):
    """den clamped at FLT_MIN, s = |(-x) (+) y| = sqrt(A / den) and W = 2 g / (s den) where ok (else 0): the terms of a
    pair that _pair_coef forms for every pair and _pair_close_fix_kernel again for the close ones."""
    den = tl.maximum(den, 1.1754943508222875e-38)
    s = _sqrt(_div(asafe, den))
    return den, s, tl.where(ok, _div(2.0 * g, s * den), 0.0)


@triton.jit
def _pair_coef(g, a, xy, p2, q2, pp, pq, k, tau, valid, KPOS: tl.constexpr):
    """Per pair: W = 2 g dd/dA (0 for close pairs), s = |(-x) (+) y|, den = p_p p_q - kA and the close mask.

    KPOS (k > 0 batches, xy = <p, q>): den = 1 + 2k<p, q> + k^2 |p|^2 |q|^2, which does not cancel far out on the
    sphere (p_p p_q - kA does: C++ BwdRow).  Two IEEE divisions and one square root a pair."""
    asafe = tl.where(valid, a, 1.0)
    if KPOS:
        den = tl.where(k > 0, 1.0 + 2.0 * k * xy + (k * p2)[:, None] * (k * q2)[None, :],
                       pp[:, None] * pq[None, :] - k * asafe)
    else:
        den = pp[:, None] * pq[None, :] - k * asafe
    den, s, w = _pair_w(g, asafe, den, valid)
    close = valid & (a < tau * (p2[:, None] + q2[None, :]))
    return tl.where(close, 0.0, w), s, den, close


@triton.jit
def _pair_dk(g, a, xy, d, s, den, p2, q2, pp, pq, ipp, ipq, k, valid, KPOS: tl.constexpr):
    """g dd/dk per pair: s^3 E(z) + (s/P)(A - |p|^2 p_q - |q|^2 p_p), z = k s^2, P = p_p p_q (C++ bwd_impl);
    KPOS (k > 0 batches): the linear term as -2 (<p, q> + k |p|^2 |q|^2), free of far out cancellation.

    The closed form of s^3 E(z) is (s den/P - d/2)/k (d = 2 s atanc(z)): no division a pair."""
    z = k * s * s
    small = tl.abs(z) < 1e-3
    series = 2.0 * (-1.0 / 3 + z * (2.0 / 5 + z * (-3.0 / 7 + z * (4.0 / 9 + z * (-5.0 / 11 + z * (6.0 / 13))))))
    s_p = s * ipp[:, None] * ipq[None, :]  # s/P
    ik = _div(1.0, tl.where(k != 0, k, 1.0))
    e = tl.where(small, s * s * s * series, (s_p * den - 0.5 * d) * ik)
    lin = a - p2[:, None] * pq[None, :] - q2[None, :] * pp[:, None]
    if KPOS:
        lin = tl.where(k > 0, -2.0 * (xy + (k * p2)[:, None] * q2[None, :]), lin)
    return tl.where(valid, g * (e + s_p * lin), 0.0)


@triton.jit
def _pair_a_from_g(P_, Q_, xy, p2, q2, prow, qrow, rmask, cmask, m2, D, tau, CT: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """A = |p|^2 + |q|^2 - 2<p, q> of a k > 0 tile from the saved G, as the forward forms it (_pair_a_tile): its close
    pairs (the forward's test) recomputed exactly from the rows, in a branch that only tiles holding one take."""
    s2 = p2[:, None] + q2[None, :]
    a = s2 - 2.0 * xy
    near = (a < tau * s2) & m2
    a = tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if tl.max(near.to(tl.int32)) > 0:
        a = tl.where(near, _pair_exact_sq(P_, Q_, prow * D, qrow * D, rmask, cmask, D, CT, BLOCK_P, BLOCK_Q), a)
    return a


@triton.jit
def _pair_a_kernel(X, Y, XY, X2, Y2, K, AOUT, N, M, D, tau, CT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """A of the k > 0 batches for the backward (AOUT [B, N, M]) from the saved G (_pair_a_from_g); the programs of
    k <= 0 batches return at once (their saved tensor is A).  Launched on every backward: no host read of k's sign
    (session 51; before, the host formed it after reading whether some k > 0 and the nonzero of the close pairs)."""
    b = tl.program_id(2).to(tl.int64)
    k = tl.load(K + b).to(CT)
    if k > 0:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        cmask = cols < M
        m2 = rmask[:, None] & cmask[None, :]
        off = (b * N + rows[:, None]) * M + cols[None, :]
        xy = tl.load(XY + off, mask=m2, other=0.0).to(CT)
        x2 = tl.load(X2 + b * N + rows, mask=rmask, other=0.0).to(CT)
        y2 = tl.load(Y2 + b * M + cols, mask=cmask, other=0.0).to(CT)
        a = _pair_a_from_g(X, Y, xy, x2, y2, b * N + rows, b * M + cols, rmask, cmask, m2, D, tau, CT, BLOCK_M,
                           BLOCK_N)
        tl.store(AOUT + off, a.to(AOUT.dtype.element_ty), mask=m2)


@triton.jit
def _pair_bwd_kernel(P_, Q_, G, A, XY, DIST, P2, Q2, K, OUT, DKP, FLAGS, NP, NQ, D, stride_gp, stride_gq, tau, q_per,
                     n_dblk, NEED_K: tl.constexpr, SPLIT: tl.constexpr, KPOS: tl.constexpr, CT: tl.constexpr,
                     PMIN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """dP = alpha * P - W Q for BLOCK_P points of P and BLOCK_D features; P is x (Q = y) or y (Q = x).

    G: the upstream gradient; A: |x - y|^2 (close pairs exact).  KPOS (the k > 0 batches): XY holds <x, y>, which
    forms den, dk's linear term and (far rows) alpha's share (session 41, the C++ BwdRow), and A is _pair_a_kernel's
    (since session 51; before, the host's).

    SPLIT: program_id(1) = split * n_dblk + feature block; the split walks columns [sp q_per, (sp + 1) q_per)
    of Q and writes its partial alpha_s P - W_s Q (and dk partials) to OUT / DKP's slice sp ([S, B, NP, D],
    [S, B, NP]); the caller adds the slices in split order.  Without SPLIT: all columns, the result itself.

    FLAGS [B, NP] (uint8, zeroed): set to 1 where the row holds a close pair (left out of W here), by the programs
    of the first feature block; _pair_close_fix_kernel adds those pairs' terms.  Both variants are launched: each
    program does its batch only where k is of its kind (KPOS: k > 0)."""
    p0 = tl.program_id(0).to(tl.int64) * BLOCK_P
    b = tl.program_id(2).to(tl.int64)
    if SPLIT:
        sp = tl.program_id(1).to(tl.int64) // n_dblk
        c0 = (tl.program_id(1).to(tl.int64) % n_dblk) * BLOCK_D
        # the column bounds in 32 bits (< NQ) as in the unsplit loop (64-bit loop indices cost registers)
        q_lo = (sp * q_per).to(tl.int32)
        q_hi = tl.minimum(q_lo + q_per, NQ)
    else:
        c0 = tl.program_id(1).to(tl.int64) * BLOCK_D
        q_lo = 0
        q_hi = NQ
    rows = p0 + tl.arange(0, BLOCK_P)
    rmask = rows < NP
    dc = c0 + tl.arange(0, BLOCK_D)
    dmask = dc < D
    k = tl.load(K + b).to(CT)
    # both variants run on every call (no host read of k's sign, session 51): a program whose batch's k is not of
    # this variant's kind (KPOS: k > 0; else k <= 0 or NaN) walks no column and stores nothing
    if KPOS:
        np_mine = tl.where(k > 0, NP, 0)  # the rows this program stores: all or none
    else:
        np_mine = tl.where(k > 0, 0, NP)  # (a NaN k: this variant, as before)
    q_hi = tl.where(np_mine > 0, q_hi, q_lo)
    p2 = tl.load(P2 + b * NP + rows, mask=rmask, other=0.0).to(CT)
    pp = _pair_p(k, p2, PMIN)
    ipp = _div(1.0, pp)
    gbase = b * NP * NQ
    acc = tl.zeros([BLOCK_P, BLOCK_D], CT)
    alpha = tl.zeros([BLOCK_P], CT)
    gs_ = tl.zeros([BLOCK_P], CT)
    dk = tl.zeros([BLOCK_P], CT)
    anyc = tl.zeros([BLOCK_P, BLOCK_Q], tl.int1)
    for q0 in range(q_lo, q_hi, BLOCK_Q):
        cols = q0 + tl.arange(0, BLOCK_Q)
        cmask = cols < q_hi
        m2 = rmask[:, None] & cmask[None, :]
        off = gbase + rows[:, None] * stride_gp + cols[None, :] * stride_gq
        g = tl.load(G + off, mask=m2, other=0.0).to(CT)
        q2 = tl.load(Q2 + b * NQ + cols, mask=cmask, other=0.0).to(CT)
        a = tl.load(A + off, mask=m2, other=0.0).to(CT)
        if KPOS:
            xy = tl.load(XY + off, mask=m2, other=0.0).to(CT)
        else:
            xy = a  # (unused)
        pq = _pair_p(k, q2, PMIN)
        valid = m2 & (a > 0)
        w, s, den, close = _pair_coef(g, a, xy, p2, q2, pp, pq, k, tau, valid, KPOS)
        anyc = anyc | close  # (reduced once after the loop)
        if KPOS:  # k > 0, p far out (k|p|^2 > 1) and beyond q: alpha's share W + 2 g dd/d|p|^2 as W q_p / p_p
            far = (k * p2 > 1.0)[:, None] & (p2[:, None] > q2[None, :]) & valid & (close == 0)
            gs_ += tl.sum(tl.where(valid & (far == 0), g * s, 0.0), 1)
            alpha += tl.sum(tl.where(far, w * (1.0 + 2.0 * k * xy - k * q2[None, :]) * ipp[:, None], w), 1)
        else:
            gs_ += tl.sum(tl.where(valid, g * s, 0.0), 1)
            alpha += tl.sum(w, 1)
        qt = tl.load(Q_ + (b * NQ + cols[:, None]) * D + dc[None, :], mask=cmask[:, None] & dmask[None, :],
                     other=0.0).to(CT)
        acc += tl.dot(w, qt, input_precision="ieee")
        if NEED_K:
            d = tl.load(DIST + off, mask=m2, other=0.0).to(CT)
            dk += tl.sum(_pair_dk(g, a, xy, d, s, den, p2, q2, pp, pq, ipp, _div(1.0, pq), k, valid, KPOS), 1)
    # the self term sum_j 2 g dd/d|p|^2 = -2k sum_j g s / p_p, with one division a row
    alpha += -2.0 * k * gs_ * ipp
    if c0 == 0:  # the rows' close-pair flags: 1 where some column (of this split) holds one; FLAGS zeroed by the
        # caller, splits store the same 1 (a tl.max per column tile and a flag per tile spilled 12-156 B on sm_90)
        tl.store(FLAGS + b * NP + rows, 1, mask=rmask & (tl.max(anyc.to(tl.int32), 1) > 0))
    if SPLIT:  # this split's slice of the partials (the offsets formed here: not live across the loop)
        sp = tl.program_id(1).to(tl.int64) // n_dblk
        OUT += sp * tl.num_programs(2).to(tl.int64) * NP * D
        DKP += sp * tl.num_programs(2).to(tl.int64) * NP
    pt = tl.load(P_ + (b * NP + rows[:, None]) * D + dc[None, :], mask=rmask[:, None] & dmask[None, :],
                 other=0.0).to(CT)
    out = alpha[:, None] * pt - acc
    tl.store(OUT + (b * NP + rows[:, None]) * D + dc[None, :], out.to(OUT.dtype.element_ty),
             mask=(rows < np_mine)[:, None] & dmask[None, :])
    if NEED_K:
        if c0 == 0:
            tl.store(DKP + b * NP + rows, dk.to(DKP.dtype.element_ty), mask=rows < np_mine)


@triton.jit
def _pair_close_fix_kernel(P_, Q_, G, A, AK, P2, Q2, K, FLAGS, OUT, NP, NQ, D, stride_gp, stride_gq, tau,
                           CT: tl.constexpr, PMIN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """OUT[i] += sum_j w_ij (p_i - q_j) over the close pairs that _pair_bwd_kernel left out of W (dP's exact terms:
    in the GEMM form W p_i - W q_j cancels ~|p|/|p - q|-fold).  One program per (BLOCK_P rows of P, batch): a row
    tile with a row that _pair_bwd_kernel flagged (BLOCK_P byte loads; nothing else where none) walks its column
    tiles, and those holding a close pair (the test of _pair_coef, and g != 0) recompute W of their close pairs
    (den = p_p p_q - kA, exact for them since A is) and add the sums feature by feature into the program's own rows:
    no atomics, one order (the same bits on every run).  A: the saved tensor (k <= 0 batches); AK: _pair_a_kernel's
    (k > 0)."""
    p0 = tl.program_id(0).to(tl.int64) * BLOCK_P
    b = tl.program_id(1).to(tl.int64)
    rows = p0 + tl.arange(0, BLOCK_P)
    rmask = rows < NP
    if tl.max(tl.load(FLAGS + b * NP + rows, mask=rmask, other=0).to(tl.int32)) != 0:  # rare: a close pair
        k = tl.load(K + b).to(CT)
        p2 = tl.load(P2 + b * NP + rows, mask=rmask, other=0.0).to(CT)
        pp = _pair_p(k, p2, PMIN)
        for q0 in range(0, NQ, BLOCK_Q):
            cols = q0 + tl.arange(0, BLOCK_Q)
            cmask = cols < NQ
            m2 = rmask[:, None] & cmask[None, :]
            off = b * NP * NQ + rows[:, None] * stride_gp + cols[None, :] * stride_gq
            g = tl.load(G + off, mask=m2, other=0.0).to(CT)
            if k > 0:  # (the saved tensor holds G there: A is _pair_a_kernel's)
                a = tl.load(AK + off, mask=m2, other=0.0).to(CT)
            else:
                a = tl.load(A + off, mask=m2, other=0.0).to(CT)
            q2 = tl.load(Q2 + b * NQ + cols, mask=cmask, other=0.0).to(CT)
            close = m2 & (a > 0) & (a < tau * (p2[:, None] + q2[None, :])) & (g != 0)
            if tl.max(close.to(tl.int32)) > 0:
                asafe = tl.where(close, a, 1.0)
                # (as _pair_coef; close pairs' den ~ p_p p_q)
                _den, _s, w = _pair_w(g, asafe, pp[:, None] * _pair_p(k, q2, PMIN)[None, :] - k * asafe, close)
                for d in range(0, D):
                    pc = tl.load(P_ + (b * NP + rows) * D + d, mask=rmask, other=0.0).to(CT)
                    qc = tl.load(Q_ + (b * NQ + cols) * D + d, mask=cmask, other=0.0).to(CT)
                    v = tl.sum(tl.where(close, w * (pc[:, None] - qc[None, :]), 0.0), 1)
                    o = OUT + (b * NP + rows) * D + d
                    tl.store(o, (tl.load(o, mask=rmask, other=0.0).to(CT) + v).to(OUT.dtype.element_ty), mask=rmask)


# knn (float32): one program per BLOCK_M rows of x walks all of y in BLOCK_N tiles, keeping the best NP keys
# of each row in registers (never a key tile in memory).  A key (>= 0, float32) and its column are packed
# in one int64, (key bits << 32) | column, so that one integer top-k (tl.topk: bitonic, largest first)
# selects keys and carries their indices; nearest = the largest of the negated packs.  Ties go to the
# lower column index.
_KNN_WORST = tl.constexpr(-9223372036854775807)  # below every pack (a constexpr: compiled kernels read it)


@triton.jit
def _pair_knn_kernel(X, Y, K, IDX, N, M, D, tau, n_out,
                     LARGEST: tl.constexpr, PMIN: tl.constexpr, NP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    i0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    b = tl.program_id(1).to(tl.int64)
    rows = i0 + tl.arange(0, BLOCK_M)
    rmask = rows < N
    xrow = (b * N + rows) * D
    k = tl.load(K + b).to(tl.float32)
    best = tl.full([BLOCK_M, NP], _KNN_WORST, tl.int64)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        cmask = cols < M
        a, g, x2, y2, m2 = _pair_a_tile(X, Y, xrow, (b * M + cols) * D, rmask, cmask, k, D, tau, tl.float32, PMIN,
                                        BLOCK_M, BLOCK_N, BLOCK_K)
        key = _pair_key(a, g, x2, y2, k, PMIN)
        # a NaN key as the positive quiet NaN (above +inf, as torch.topk ranks NaN) whatever its sign bit
        bits = tl.where(key == key, key.to(tl.int32, bitcast=True), 0x7FC00000).to(tl.int64) << 32
        c64 = cols.to(tl.int64)[None, :]
        if LARGEST:
            pack = bits | (2147483647 - c64)
        else:
            pack = -(bits | c64)
        pack = tl.where(m2, pack, _KNN_WORST)
        both = tl.reshape(tl.join(best, tl.topk(pack, NP)), [BLOCK_M, 2 * NP])
        best = tl.topk(both, NP)
    if LARGEST:
        idx = 2147483647 - (best & 0xFFFFFFFF)
    else:
        idx = (-best) & 0xFFFFFFFF
    c = tl.arange(0, NP)
    tl.store(IDX + (b * N + rows[:, None]) * n_out + c[None, :], idx, mask=rmask[:, None] & (c[None, :] < n_out))


KNN_MAX_NEIGHBORS = 64  # larger n: the tiled rank keys + torch.topk (geoops.stereographic.knn)


def knn_indices(x, y, k, n, largest):
    """Indices [B, N, n] of the n nearest (largest: farthest) points of y per row of x, float32 x and y."""
    x, y, k = _pair_check(x, y, k)
    B, N, D = x.shape
    M = y.shape[1]
    if x.dtype != torch.float32 or not 0 < n <= min(M, KNN_MAX_NEIGHBORS):
        raise ValueError(f"geoops.kernels.stereographic: knn_indices takes float32 and 0 < n <= "
                         f"min(M, {KNN_MAX_NEIGHBORS}), got {x.dtype}, n={n}, M={M}")
    idx = torch.empty((B, N, n), dtype=torch.int64, device=x.device)
    if N == 0:
        return idx
    NP = max(2, triton.next_power_of_2(n))
    if INTERPRETED:
        blk = dict(BLOCK_M=16, BLOCK_N=max(16, NP), BLOCK_K=16, num_warps=1)
    else:
        # 8 warps: with 4, the int64 packs of a 32 x 64 tile and the bitonic top-n spilled 24 B (n = 16);
        # NP = 64: 16-wide feature chunks (32 kept one 8-byte word on the stack with Triton 3.6 on sm_80 at
        # 255 registers; 16 query rows, 16 warps or .maxnreg spilled 8-56 B on some column)
        blk = dict(BLOCK_M=32, BLOCK_N=max(64, NP), BLOCK_K=16 if NP >= 64 else 32, num_warps=8)
    if B > 65535:
        raise ValueError("geoops.kernels.stereographic: knn supports <= 65535 batches per call")
    with _device_guard(x):
        _pair_knn_kernel[(triton.cdiv(N, blk["BLOCK_M"]), B)](
            x, y, k, idx, N, M, D, _pair_tau(D, x.dtype), n,
            LARGEST=bool(largest), PMIN=_PAIR_MIN_P[x.dtype], NP=NP, **blk)
    return idx


def _pair_tau(D: int, dtype: torch.dtype) -> float:
    """The close-pair threshold of the C++ kernel, rounded to float32 (the kernels' and the host's test agree)."""
    u = 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53
    rel = 1.0 / 512 if dtype == torch.float32 else 1e-12  # A's relative accuracy outside the close pairs
    return struct.unpack("f", struct.pack("f", min(0.5, u * (D + 4) / rel)))[0]  # (no tensor made per call)


def _pair_check(x, y, k):
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"geoops.kernels.stereographic: cdist expects x [B,N,D], y [B,M,D], got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if x.dtype not in (torch.float32, torch.float64) or y.dtype != x.dtype:
        raise TypeError(f"geoops.kernels.stereographic: cdist takes float32/float64 x and y of one dtype, got "
                        f"{x.dtype}, {y.dtype}")
    return x.contiguous(), y.contiguous(), k.reshape(-1).to(x.dtype).contiguous()


def _pair_fwd_blocks(dtype: torch.dtype):
    if INTERPRETED:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1)
    # 8 pairs a thread (float32: 64 x 64 tiles over 8 warps): the epilogue's transcendental keeps several
    # values per pair live, and 32 pairs a thread spilled (kernels/COMPILE_REPORT.md).  float64 with .maxnreg: with
    # k > 0's den from G (session 42) ptxas held the cdist forward at 128 registers and spilled 4 B (Triton 3.6 sm_80)
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, **_maxnreg(4))
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=8)


def _pair_fwd(x, y, k, save: bool, key: bool):
    x, y, k = _pair_check(x, y, k)
    B, N, D = x.shape
    M = y.shape[1]
    out = x.new_empty((B, N, M))
    saved = x.new_empty((B, N, M)) if save else x.new_empty(0)  # the backward's: A where k <= 0, <x, y> where k > 0
    if out.numel() == 0:
        return out, saved
    blk = _pair_fwd_blocks(x.dtype)
    grid = (triton.cdiv(N, blk["BLOCK_M"]), triton.cdiv(M, blk["BLOCK_N"]), B)
    if grid[1] > 65535 or B > 65535:  # CUDA's limit on the grid's y and z dimensions
        raise ValueError(f"geoops.kernels.stereographic: cdist supports M <= {65535 * blk['BLOCK_N']} points of y "
                         f"and <= 65535 batches per call, got M={M}, B={B} (split y, e.g. with knn's tiling)")
    with _device_guard(x):
        _pair_fwd_kernel[grid](x, y, k, out, saved if save else out, N, M, D, _pair_tau(D, x.dtype),
                               KEY=key, SAVE=save, CT=_compute_type(x.dtype)[0], PMIN=_PAIR_MIN_P[x.dtype], **blk)
    return out, saved


# The backward's programs, (NP / BLOCK_P) x (D / BLOCK_D) x B, each walk all NQ columns: at N = 2048, D = 64, B = 1
# that is 64 programs on a 132-SM H200 (session 31: the backward 1.13 ms).  Few programs: the columns are split S
# ways (programs >= _PAIR_SPLIT_WAVES x the SM count, each split >= _PAIR_SPLIT_MIN_STEPS column tiles), the splits'
# partials added by torch in split order.  GEOOPS_TRITON_CDIST_SPLIT (read per call): 0 = never split (the
# kernel before session 32), n > 0 = S = n (as far as the column tiles allow; for tests), unset = the heuristic.
_PAIR_SPLIT_WAVES = 4
_PAIR_SPLIT_MIN_STEPS = 4
_INTERPRETER_SMS = 132  # the interpreter has no SM count: an H200's, so small test shapes stay unsplit


def _sm_count(device: torch.device) -> int:
    n = None if INTERPRETED else sm_count(device)
    return _INTERPRETER_SMS if n is None else n


def _pair_split(NP: int, NQ: int, n_dblk: int, B: int, bp: int, bq: int, device: torch.device, split=None):
    """(S, columns per split) of a backward pass over NP rows of P against NQ columns of Q (S = 1: unsplit).

    split: None = GEOOPS_TRITON_CDIST_SPLIT / the heuristic, else that knob value (the compile check's variants)."""
    env = os.environ.get("GEOOPS_TRITON_CDIST_SPLIT") if split is None else str(int(split))
    if env == "0":
        return 1, NQ
    if env is not None and env.isdigit():
        S = int(env)
    else:
        progs = triton.cdiv(NP, bp) * n_dblk * B
        S = min(triton.cdiv(_PAIR_SPLIT_WAVES * _sm_count(device), progs), NQ // (_PAIR_SPLIT_MIN_STEPS * bq))
    S = min(S, 65535 // n_dblk)  # CUDA's limit on the grid's y dimension (split x feature block)
    if S <= 1:
        return 1, NQ
    q_per = triton.cdiv(triton.cdiv(NQ, S), bq) * bq  # whole column tiles a split
    return triton.cdiv(NQ, q_per), q_per


def _pair_bwd(g, x, y, k, saved, d, mask: int, *, split=None, kpos=None):
    """(dx, dy, dk) of cdist from the forward's saved tensor (A where k <= 0, <x, y> where k > 0: _pair_fwd).

    kpos: None = both variants (each program does its batch where k is of its kind: no host read); True / False =
    the KPOS variant or the other alone (the compile check's variants)."""
    x, y, k = _pair_check(x, y, k)
    B, N, D = x.shape
    M = y.shape[1]
    want_x, want_y, want_k = bool(mask & 1), bool(mask & 2), bool(mask & 4)
    # (B == 0 too: _pair_split's heuristic divides by the number of programs, 0 there)
    if B == 0 or N == 0 or M == 0 or D == 0 or not (want_x or want_y or want_k):
        return (torch.zeros_like(x) if want_x else x.new_empty(0), torch.zeros_like(y) if want_y else x.new_empty(0),
                torch.zeros(B, dtype=k.dtype, device=x.device) if want_k else x.new_empty(0))
    g, saved, d = g.contiguous().to(x.dtype), saved.contiguous(), d.contiguous()
    x2 = (x * x).sum(-1).contiguous()
    y2 = (y * y).sum(-1).contiguous()
    tau = _pair_tau(D, x.dtype)
    kinds = (False, True) if kpos is None else (bool(kpos),)
    ak = saved  # A of the k > 0 batches (_pair_a_kernel's) where the KPOS variant runs
    ct = _compute_type(x.dtype)[0]
    pmin = _PAIR_MIN_P[x.dtype]
    bd = min(64, max(16, triton.next_power_of_2(D)))  # wider feature blocks spilled (D > 64: several blocks)
    nd = triton.cdiv(D, bd)
    if INTERPRETED:
        bp, bq, nw = 16, 16, 1
    else:
        # 4 (float64) / 8 (float32) pairs a thread: the per-pair coefficients (and dk's) keep ~10 values
        # per pair live; 16 pairs a thread spilled
        bp, bq, nw = (32, 16, 4) if x.dtype == torch.float64 else (32, 32, 4)
    # KPOS: 16-row tiles on the GPU (<x, y> beside A: one more value a pair; at 32 rows two variants spilled 24 B)
    bpk = {False: bp, True: bp if INTERPRETED else 16}
    blk = dict(CT=ct, PMIN=pmin, BLOCK_Q=bq, BLOCK_D=bd)
    # KPOS (the compile check's choice, no spills on sm_80 / sm_90 with Triton 3.6 / 3.9): .maxnreg for the passes
    # with dk and in float64 (left alone ptxas held the float32 D = 64 x pass with dk at 128-168 registers and the
    # float64 D = 32 split y pass at 80 and spilled 8-12 B; with it they take 100-180); not for the float32 passes
    # without dk (they take 64-165 left alone; with .maxnreg ptxas scheduled the D = 64 ones up to 255 and spilled)
    # Since session 51 (the close-pair flags and the kind test: left alone ptxas held these at 96-168 registers and
    # spilled 8 B, sm_80 / sm_90, Triton 3.6 / 3.9) also the KPOS float32 passes without dk up to D = 32, and in the
    # other variant the float64 passes without dk, unsplit or the split x pass
    def regs(kind, nw_, need_k, split, ypass=False):
        if kind:
            return _maxnreg(nw_) if need_k or x.dtype == torch.float64 or bd <= 32 else {}
        return _maxnreg(nw_) if x.dtype == torch.float64 and not need_k and not (split and ypass) else {}
    # warps of the split kernels (the compile check's choice, no spills on sm_80 / sm_90 with Triton 3.6 / 3.9): the
    # y pass at 8 (at 4 ptxas held it at 168 registers and spilled 8 B); the x pass at 4 with dk or in float32 (at 8
    # the float32 D = 64 pass with dk spilled 8 B at 128 registers, D = 32 without 4 B at 80 on sm_80), else at 8 (the
    # float64 D = 32 pass spilled 4 B at 4 warps on sm_90, Triton 3.9); .maxnreg made ptxas spill more (40-236 B)
    nw_x = nw if INTERPRETED or want_k or x.dtype == torch.float32 else 8
    nw_y = nw if INTERPRETED else 8
    # the close pairs' exact terms W (x_i - y_j) (left out of W: their GEMM form cancels): one launch a pass over the
    # rows _pair_bwd_kernel flagged, no host read (session 51; before, a nonzero of the close pairs and index_add_)
    # (8 warps on the GPU: at 4 ptxas held the float32 y pass's at 96 registers and spilled 8 B, Triton 3.6 sm_90)
    fix = dict(CT=ct, PMIN=pmin, BLOCK_P=bp, BLOCK_Q=bq, num_warps=nw if INTERPRETED else 8)
    dx = dy = dk = None
    with _device_guard(x):
        if True in kinds:  # (one [B, N, M] temporary, as the host's close-pair test made before session 51)
            ak = torch.empty_like(saved)
            ba = 16 if INTERPRETED else 32
            _pair_a_kernel[(triton.cdiv(N, ba), triton.cdiv(M, ba), B)](
                x, y, saved, x2, y2, k, ak, N, M, D, tau, CT=ct, BLOCK_M=ba, BLOCK_N=ba, num_warps=nw)
        # dx (and the dk partials per row of x); dk alone still runs the x pass (its result unused)
        if want_x or want_k:
            S, q_per = _pair_split(N, M, nd, B, bp, bq, x.device, split)
            # split: the partials [S, B, N, D] (dk alone: no dx, a stand-in the kernel writes)
            out = x.new_empty((S, B, N, D)) if S > 1 or not want_x else x.new_zeros((B, N, D))
            dkp = (x.new_empty((S, B, N)) if S > 1 else x.new_empty((B, N))) if want_k else x
            w_ = nw_x if S > 1 else nw
            flags = x.new_zeros((B, N), dtype=torch.uint8)
            for kind in kinds:  # (S and q_per from the k <= 0 tiles: both variants write the same slices)
                _pair_bwd_kernel[(triton.cdiv(N, bpk[kind]), S * nd, B)](
                    x, y, g, ak if kind else saved, saved, d, x2, y2, k, out, dkp, flags, N, M, D, M, 1, tau,
                    q_per, nd,
                    NEED_K=want_k, SPLIT=S > 1, KPOS=kind, BLOCK_P=bpk[kind], num_warps=w_,
                    **regs(kind, w_, want_k, S > 1), **blk)
            if want_x:
                dx = out.sum(0) if S > 1 else out
                _pair_close_fix_kernel[(triton.cdiv(N, bp), B)](
                    x, y, g, saved, ak, x2, y2, k, flags, dx, N, M, D, M, 1, tau, **fix)
        if want_y:
            S, q_per = _pair_split(M, N, nd, B, bp, bq, x.device, split)
            out = x.new_empty((S, B, M, D)) if S > 1 else x.new_zeros((B, M, D))
            w_ = nw_y if S > 1 else nw
            flags = x.new_zeros((B, M), dtype=torch.uint8)
            for kind in kinds:
                _pair_bwd_kernel[(triton.cdiv(M, bpk[kind]), S * nd, B)](
                    y, x, g, ak if kind else saved, saved, d, y2, x2, k, out, out, flags, M, N, D, 1, M, tau,
                    q_per, nd,
                    NEED_K=False, SPLIT=S > 1, KPOS=kind, BLOCK_P=bpk[kind], num_warps=w_,
                    **regs(kind, w_, False, S > 1, ypass=True), **blk)
            dy = out.sum(0) if S > 1 else out
            _pair_close_fix_kernel[(triton.cdiv(M, bp), B)](
                y, x, g, saved, ak, y2, x2, k, flags, dy, M, N, D, 1, M, tau, **fix)
    if want_k:
        dk = (dkp.sum((0, 2)) if dkp.dim() == 3 else dkp.sum(1)).to(k.dtype)
    dx, dy, dk = (t if t is not None else x.new_empty(0) for t in (dx, dy, dk))
    return dx, dy, dk


def cdist_fwd(x, y, k, save):
    """(dist [B,N,M], saved [B,N,M] when save, else empty) for x [B,N,D], y [B,M,D], k [B]; saved[b] = |x - y|^2
    (close pairs exact) where k[b] <= 0, <x, y> where k[b] > 0 (what cdist_bwd reads)."""
    return _pair_fwd(x, y, k, bool(save), False)


def cdist_bwd(g, x, y, k, saved, d, mask):
    """(dx, dy, dk [B]) of cdist from cdist_fwd's saved tensor; mask bits 1 dx, 2 dy, 4 dk; unselected ones empty."""
    return _pair_bwd(g, x, y, k, saved, d, int(mask))


def rank_key(x, y, k):
    """A monotone function of the distance per pair, no transcendental (see geoops.stereographic.knn)."""
    return _pair_fwd(x, y, k, False, True)[0]


def dist_from_key(key, k):
    """The distance of a rank key (elementwise, float64 math)."""
    kk = k.reshape(-1, *([1] * (key.dim() - 1))).to(torch.float64)
    v = key.to(torch.float64)
    c = kk.abs()
    rs = torch.where(c > 0, c, torch.ones_like(c)).rsqrt()
    t = 2 * c * v
    dn = torch.log1p(t + torch.sqrt(t * (t + 2))) * rs
    dp = 2 * torch.atan(torch.sqrt(kk.clamp_min(0) * v)) * rs
    return torch.where(kk < 0, dn, torch.where(kk > 0, dp, 2 * torch.sqrt(v))).to(key.dtype)


# ================================================================ weighted midpoint: the reduction over the points
# The contract of geoops._ops.stereographic (the same as csrc/cpu/stereographic_midpoint.cpp):
#   midpoint_fwd(x [G,N,D], w [G,N] or None, k [1] or [G], posweight) -> (F [G,D], L [G]) float64
#   midpoint_bwd(gF [G,D], gL [G], x, w, k, posweight, mask) -> (dx [G,N,D], dw [G,N], dk [G] float64)
# Per point: X = |x_i|^2, lam = 2 / max(1 + k X, 1e-15), F += w c x_i, L += s w (lam - 1) (c = lam, s = 1 except
# for posweight's points of negative weight: s = -1, and on the sphere c = lam / (k X), 0 at X = 0).
#
# Forward (_midpoint_fwd_kernel): one program per (group, split of the points, BLOCK_D columns of F); it walks its
# points in BLOCK_N-row tiles in order, |x_i|^2 over all columns (BLOCK_D chunks), then F's columns and L, all in
# float64.  The splits' partial sums ([G, S, D + 1] float64) are added in split order by torch (a fixed order: the
# same bits on every run).  Backward (_midpoint_bwd_kernel): one program per (group, split); per tile |x_i|^2 and
# <gF, x_i> over the column chunks, then dx written chunk by chunk, dw, and the split's dk partial.
@triton.jit
def _midpoint_coef(X, k, w, POSW: tl.constexpr):
    """(lam, c, s, lam_X, lam_k, c_X, c_k) of a tile of points (float64)."""
    den = 1.0 + k * X
    live = den > 1e-15
    lam = 2.0 / tl.where(live, den, 1e-15)
    lam_x = tl.where(live, -0.5 * k * lam * lam, 0.0)
    lam_k = tl.where(live, -0.5 * X * lam * lam, 0.0)
    c, c_x, c_k, s = lam, lam_x, lam_k, tl.full(X.shape, 1.0, tl.float64)
    if POSW:
        flip = w < 0.0
        s = tl.where(flip, -1.0, 1.0)
        sph = flip & ((X * 0.0 + k) > 0.0)  # k broadcast to the tile (a scalar & a block: the interpreter's numpy)
        pos = X > 0.0
        u = k * X + k * k * X * X
        q = 2.0 / tl.where(sph & pos, u, 1.0)
        qx = -0.5 * q * q * (k + 2.0 * k * k * X)
        qk = -0.5 * q * q * (X + 2.0 * k * X * X)
        c = tl.where(sph, tl.where(pos, q, 0.0), c)
        c_x = tl.where(sph, tl.where(pos, qx, 0.0), c_x)
        c_k = tl.where(sph, tl.where(pos, qk, 0.0), c_k)
    return lam, c, s, lam_x, lam_k, c_x, c_k


@triton.jit
def _midpoint_split(sp, n_per, N):
    """Points [i_lo, i_hi) of split sp."""
    i_lo = sp * n_per
    return i_lo, tl.minimum(i_lo + n_per, N)


@triton.jit
def _midpoint_rows(i0, i_hi, BLOCK_N: tl.constexpr):
    """A tile's point indices and their mask."""
    rows = i0 + tl.arange(0, BLOCK_N)
    return rows, rows < i_hi


@triton.jit
def _midpoint_w(W_ptr, idx, rmask, HAS_W: tl.constexpr):
    """The weights of a tile of points in float64 (1 without weights; 0 on masked rows)."""
    if HAS_W:
        w = tl.load(W_ptr + idx, mask=rmask, other=0.0).to(tl.float64)
    else:
        w = tl.where(rmask, 1.0, 0.0).to(tl.float64)
    return w


@triton.jit
def _midpoint_fwd_kernel(X_ptr, W_ptr, K_ptr, PART, N, D, n_per, S, stride_k,
                         HAS_W: tl.constexpr, POSW: tl.constexpr, ROOT: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1).to(tl.int64)
    dc = tl.program_id(2).to(tl.int64)
    k = tl.load(K_ptr + g * stride_k).to(tl.float64)
    cols = dc * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc_f = tl.zeros([BLOCK_D], tl.float64)
    acc_l = tl.zeros([BLOCK_N], tl.float64)
    acc_a = tl.zeros([BLOCK_N], tl.float64)
    acc_w = tl.zeros([BLOCK_N], tl.float64)
    acc_r = tl.zeros([BLOCK_N], tl.float64)
    i_lo, i_hi = _midpoint_split(sp, n_per, N)
    for i0 in range(i_lo, i_hi, BLOCK_N):
        rows, rmask = _midpoint_rows(i0, i_hi, BLOCK_N)
        base = X_ptr + (g * N + rows)[:, None] * D
        xx = tl.zeros([BLOCK_N], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cc = d0 + tl.arange(0, BLOCK_D)
            xt = tl.load(base + cc[None, :], mask=rmask[:, None] & (cc < D)[None, :], other=0.0).to(tl.float64)
            xx += tl.sum(xt * xt, axis=1)
        w = _midpoint_w(W_ptr, g * N + rows, rmask, HAS_W)
        lam, c, s, lam_x, lam_k, c_x, c_k = _midpoint_coef(xx, k, w, POSW)
        acc_l += tl.where(rmask, s * w * (lam - 1.0), 0.0)
        xt = tl.load(base + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float64)
        acc_f += tl.sum(tl.where(rmask, w * c, 0.0)[:, None] * xt, axis=0)
        if ROOT:  # the root's scalars (u = s w: the flipped point's weight; masked rows have w = 0)
            u = s * w
            den = 1.0 + k * xx
            acc_a += u * lam
            acc_w += u
            acc_r += tl.where(den > 1e-15, 0.0, u * (lam * den - 2.0))
    if ROOT:
        out = PART + (g * S + sp) * (D + 4)
    else:
        out = PART + (g * S + sp) * (D + 1)
    tl.store(out + cols, acc_f, mask=cmask)
    if dc == 0:
        tl.store(out + D, tl.sum(acc_l, axis=0))
        if ROOT:  # zeros where k >= 0 (the contract's S)
            neg = k < 0.0
            tl.store(out + D + 1, tl.where(neg, tl.sum(acc_a, axis=0), 0.0))
            tl.store(out + D + 2, tl.where(neg, tl.sum(acc_w, axis=0), 0.0))
            tl.store(out + D + 3, tl.where(neg, tl.sum(acc_r, axis=0), 0.0))


@triton.jit
def _midpoint_t(w, rmask, POSW: tl.constexpr):
    """posweight's flip sign sg_i of a tile of points (y_i - s = sg_i (x_i - sg_i s) about the shift s), a block
    (of ones without posweight)."""
    if POSW:
        t = tl.where(w < 0.0, -1.0, 1.0)
    else:
        t = tl.full(rmask.shape, 1.0, tl.float32)
    return t


@triton.jit
def _midpoint_s2_kernel(X_ptr, W_ptr, K_ptr, NEAR, SH, P2, N, D, n_per, S, stride_k,
                        HAS_W: tl.constexpr, POSW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1).to(tl.int64)
    k = tl.load(K_ptr + g * stride_k).to(tl.float64)
    near = tl.load(NEAR + g)
    acc = tl.zeros([BLOCK_N], tl.float64)
    i_lo, i_hi = _midpoint_split(sp, n_per, N)
    i_hi = tl.where(near != 0, i_hi, i_lo)  # a far group's programs walk no points
    for i0 in range(i_lo, i_hi, BLOCK_N):
        rows, rmask = _midpoint_rows(i0, i_hi, BLOCK_N)
        base = X_ptr + (g * N + rows)[:, None] * D
        w = _midpoint_w(W_ptr, g * N + rows, rmask, HAS_W)
        t = _midpoint_t(w, rmask, POSW)
        xx = tl.zeros([BLOCK_N], tl.float64)
        ee = tl.zeros([BLOCK_N], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cc = d0 + tl.arange(0, BLOCK_D)
            xt = tl.load(base + cc[None, :], mask=rmask[:, None] & (cc < D)[None, :], other=0.0).to(tl.float64)
            xs = tl.load(SH + g * D + cc, mask=cc < D, other=0.0)
            e = xt - t[:, None] * xs[None, :]
            xx += tl.sum(xt * xt, axis=1)
            ee += tl.sum(e * e, axis=1)
        lam, c, s, lam_x, lam_k, c_x, c_k = _midpoint_coef(xx, k, w, POSW)
        acc += tl.where(rmask, s * w * lam * ee, 0.0)
    tl.store(P2 + g * S + sp, tl.sum(acc, axis=0))


@triton.jit
def _midpoint_bwd_kernel(GF, GF2, GL, RS, S1V, SH, X_ptr, W_ptr, K_ptr, DX, DW, DKP, N, D, n_per, S, stride_k,
                         HAS_W: tl.constexpr, POSW: tl.constexpr, ROOT: tl.constexpr, NEED_DX: tl.constexpr,
                         NEED_DW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1).to(tl.int64)
    k = tl.load(K_ptr + g * stride_k).to(tl.float64)
    gl = tl.load(GL + g).to(tl.float64)
    if ROOT:  # the group's (gQ, A, W, S2, R); gQ = 0: no Q terms
        gq = tl.load(RS + g * 5).to(tl.float64)
        rA = tl.load(RS + g * 5 + 1).to(tl.float64)
        rW = tl.load(RS + g * 5 + 2).to(tl.float64)
        rS2 = tl.load(RS + g * 5 + 3).to(tl.float64)
        rR = tl.load(RS + g * 5 + 4).to(tl.float64)
    acc_k = tl.zeros([BLOCK_N], tl.float64)
    i_lo, i_hi = _midpoint_split(sp, n_per, N)
    for i0 in range(i_lo, i_hi, BLOCK_N):
        rows, rmask = _midpoint_rows(i0, i_hi, BLOCK_N)
        base = (g * N + rows)[:, None] * D
        w = _midpoint_w(W_ptr, g * N + rows, rmask, HAS_W)
        xx = tl.zeros([BLOCK_N], tl.float64)
        pp = tl.zeros([BLOCK_N], tl.float64)
        if ROOT:  # y_i - s = t (x_i - t s), t = sg_i, s the shift: E = |x_i - t s|^2, Z = <x_i - t s, F - A s>
            t = _midpoint_t(w, rmask, POSW)
            ee = tl.zeros([BLOCK_N], tl.float64)
            zz = tl.zeros([BLOCK_N], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cc = d0 + tl.arange(0, BLOCK_D)
            m2 = rmask[:, None] & (cc < D)[None, :]
            xt = tl.load(X_ptr + base + cc[None, :], mask=m2, other=0.0).to(tl.float64)
            gf = tl.load(GF + g * D + cc, mask=cc < D, other=0.0).to(tl.float64)
            xx += tl.sum(xt * xt, axis=1)
            pp += tl.sum(xt * gf[None, :], axis=1)
            if ROOT:
                mq = (cc < D) & ((cc * 0.0 + gq) != 0.0)  # (gq broadcast to the chunk: the interpreter's numpy)
                xs = tl.load(SH + g * D + cc, mask=mq, other=0.0)
                s1 = tl.load(S1V + g * D + cc, mask=mq, other=0.0)
                e = xt - t[:, None] * xs[None, :]
                ee += tl.sum(e * e, axis=1)
                zz += tl.sum(e * s1[None, :], axis=1)
        lam, c, s, lam_x, lam_k, c_x, c_k = _midpoint_coef(xx, k, w, POSW)
        sgl = s * gl
        dw = c * pp + sgl * (lam - 1.0)
        b = 2.0 * w * (pp * c_x + sgl * lam_x)
        dkt = w * (pp * c_k + sgl * lam_k)
        if ROOT:  # Q's part (csrc/cpu/stereographic_midpoint.cpp's bwd_impl; u = s w, y = s x)
            u = s * w
            den = 1.0 + k * xx
            live = den > 1e-15
            rkd = rR - k * (rA * ee - 2.0 * s * zz + rS2)
            ri = tl.where(live, 0.0, lam * den - 2.0)
            dw += s * (gq * (2.0 * rW + lam * rkd + rA * ri))
            b += -2.0 * k * gq * rA * u * lam + tl.where(live, 2.0 * gq * u * rkd * lam_x, 2.0 * gq * rA * u * lam * k)
            dkt += tl.where(live, gq * u * rkd * lam_k, gq * rA * u * lam * xx)
        if NEED_DW:
            tl.store(DW + g * N + rows, dw.to(DW.dtype.element_ty), mask=rmask)
        acc_k += tl.where(rmask, dkt, 0.0)
        if NEED_DX:
            a = w * c
            for d0 in range(0, D, BLOCK_D):
                cc = d0 + tl.arange(0, BLOCK_D)
                m2 = rmask[:, None] & (cc < D)[None, :]
                xt = tl.load(X_ptr + base + cc[None, :], mask=m2, other=0.0).to(tl.float64)
                gf = tl.load(GF2 + g * D + cc, mask=cc < D, other=0.0).to(tl.float64)
                v = a[:, None] * gf[None, :] + b[:, None] * xt
                tl.store(DX + base + cc[None, :], v.to(DX.dtype.element_ty), mask=m2)
    tl.store(DKP + g * S + sp, tl.sum(acc_k, axis=0))


_MID_TILE = 2048  # float64 elements of a program's tile
# warps per program, launched with .maxnreg (_maxnreg): left to itself ptxas spilled 4 B in the float32 posweight
# backward (Triton 3.6, sm_90)
_MID_WARPS = 4


def _midpoint_launch(x: torch.Tensor, k: torch.Tensor):
    """(x contiguous [G,N,D], k [1] or [G], its stride, BLOCK_N, BLOCK_D, S splits, points per split)."""
    if x.dim() != 3 or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"geoops.kernels.stereographic: midpoint x must be float32/float64 (G, N, D), got "
                         f"{tuple(x.shape)} {x.dtype}")
    x = x.contiguous()
    G, N, D = x.shape
    k = k.reshape(-1)
    if k.numel() not in (1, G):
        raise ValueError(f"geoops.kernels.stereographic: midpoint k must have 1 or G={G} values, got {k.numel()}")
    block_d = min(triton.next_power_of_2(max(D, 1)), 256)
    block_n = max(1, min(_MID_TILE // block_d, triton.next_power_of_2(max(N, 1))))
    # enough programs for the machine when there are few groups: split the points (partials added in order)
    S = max(1, min(triton.cdiv(N, block_n * 4), triton.cdiv(256, max(G, 1)))) if N else 1
    n_per = triton.cdiv(max(N, 1), S)
    n_per = triton.cdiv(n_per, block_n) * block_n
    S = max(1, triton.cdiv(max(N, 1), n_per))
    return x, k.contiguous(), (0 if k.numel() == 1 else 1), block_n, block_d, S, n_per


def _midpoint_sums(x, w, k, posweight, root: bool):
    """The sums launch: [G, D + 1 (+ 3: A, W, R with root)] float64 per group (the splits' partials added in order)
    and the launch's operands."""
    x, k, sk, block_n, block_d, S, n_per = _midpoint_launch(x, k)
    G, N, D = x.shape
    w = w.to(x.dtype).contiguous() if w is not None else None
    width = D + (4 if root else 1)
    if G == 0 or N == 0:
        return x.new_zeros((G, width), dtype=torch.float64), (x, w, k, sk, block_n, block_d, S, n_per)
    part = torch.empty((G, S, width), dtype=torch.float64, device=x.device)
    grid = (G, S, triton.cdiv(max(D, 1), block_d))
    with _device_guard(x):
        _midpoint_fwd_kernel[grid](x, w if w is not None else x, k, part, N, D, n_per, S, sk,
                                   HAS_W=w is not None, POSW=bool(posweight), ROOT=root, BLOCK_N=block_n,
                                   BLOCK_D=block_d, num_warps=_MID_WARPS, **_maxnreg(_MID_WARPS))
    return (part.sum(1) if S > 1 else part[:, 0]), (x, w, k, sk, block_n, block_d, S, n_per)


def midpoint_fwd(x, w, k, posweight):
    """(F [G,D], L [G]) float64: the weighted midpoint's sums per group (see the contract above)."""
    s, _ = _midpoint_sums(x, w, k, posweight, False)
    D = x.shape[-1]
    # copies, not views: with one group .contiguous() kept both as views of one buffer (a custom op's outputs
    # must not alias: torch.compile / opcheck refuse it)
    return s[:, :D].clone(memory_format=torch.contiguous_format), s[:, D].clone()


# The root's sums for k < 0 (geoops._ops.stereographic's stereo_midpoint_root_fwd / _bwd contract, as
# csrc/cpu/stereographic_midpoint.cpp): S [G, 5] = (Q, A, W, S2, R).  Forward: the sums launch adds A, W, R per
# group (ROOT); the groups near the boundary (_ops.midpoint_near, tested on the device: no host sync) get a second
# launch (_midpoint_s2_kernel, every (group, split) program; a far group's walk no points) for S2 about the group's
# centroid s = F / A (_ops.midpoint_root_shift); then per group in torch V = A S2 - |F - A s|^2,
# Q = W^2 - k V + A R (0 in far groups).  Backward: the sums' backward kernel with Q's terms (ROOT) from the
# per-group gQ (0 where Q = 0), A, W, S2, R, s, F - A s and gF' = gF + 2 k gQ F; the -gQ V of dk added per group in
# torch.


def midpoint_root_fwd(x, w, k, posweight):
    """(F [G,D], L [G], S [G,5]) float64: the sums and the root's (see the contract above)."""
    s, (x, w, k, sk, block_n, block_d, S, n_per) = _midpoint_sums(x, w, k, posweight, True)
    G, N, D = x.shape
    F = s[:, :D].clone(memory_format=torch.contiguous_format)
    L = s[:, D].clone()
    out = torch.zeros((G, 5), dtype=torch.float64, device=x.device)
    if G == 0 or N == 0:
        return F, L, out
    from geoops._ops.stereographic import midpoint_near, midpoint_root_shift  # (late: geoops._ops imports these)

    kk = k.to(torch.float64).expand(G)
    near = midpoint_near(F, L, kk)
    A, W, R = s[:, D + 1], s[:, D + 2], s[:, D + 3]
    sh = midpoint_root_shift(F, A).contiguous()
    p2 = torch.empty((G, S), dtype=torch.float64, device=x.device)
    with _device_guard(x):
        _midpoint_s2_kernel[(G, S)](x, w if w is not None else x, k, near.to(torch.int8), sh, p2, N, D, n_per, S, sk,
                                    HAS_W=w is not None, POSW=bool(posweight), BLOCK_N=block_n, BLOCK_D=block_d,
                                    num_warps=_MID_WARPS, **_maxnreg(_MID_WARPS))
    S2 = p2.sum(1) if S > 1 else p2[:, 0]
    e = F - A.unsqueeze(-1) * sh
    V = A * S2 - (e * e).sum(-1)
    Q = W * W - kk * V + A * R
    zero = torch.zeros_like(Q)
    torch.stack([torch.where(near, Q, zero), A, W, torch.where(near, S2, zero), R], dim=-1, out=out)
    return F, L, out


def midpoint_bwd(gF, gL, x, w, k, posweight, mask):
    """(dx, dw, dk [G] float64) of the sums; mask bits 1 dx, 2 dw, 4 dk; unselected ones are empty."""
    return _midpoint_backward(gF, gL, None, None, None, x, w, k, posweight, mask)


def midpoint_root_bwd(gF, gL, gQ, F, S, x, w, k, posweight, mask):
    """(dx, dw, dk [G] float64) of the root's sums (F, L, Q = S[:, 0]); as midpoint_bwd."""
    return _midpoint_backward(gF, gL, gQ, F, S, x, w, k, posweight, mask)


def _midpoint_backward(gF, gL, gQ, F, Sr, x, w, k, posweight, mask):
    x, k, sk, block_n, block_d, S, n_per = _midpoint_launch(x, k)
    G, N, D = x.shape
    mask = int(mask)
    need_dx, need_dw, need_dk = bool(mask & 1), bool(mask & 2) and w is not None, bool(mask & 4)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dw = x.new_empty((G, N)) if need_dw else x.new_empty(0)
    if G == 0 or N == 0 or not (need_dx or need_dw or need_dk):
        dk = x.new_zeros((G,), dtype=torch.float64) if need_dk else x.new_empty(0)
        return dx, dw, dk
    w = w.to(x.dtype).contiguous() if w is not None else None
    gF = gF.to(torch.float64).expand(G, D).contiguous()
    gL = gL.to(torch.float64).expand(G).contiguous()
    root = gQ is not None
    gF2, rs, s1v, sh, dk0 = gF, gL, gF, gF, None
    if root:
        from geoops._ops.stereographic import midpoint_root_shift  # (late: geoops._ops imports these kernels)

        kk = k.to(torch.float64).expand(G)
        F = F.to(torch.float64)
        Sr = Sr.to(torch.float64)
        # a group whose S has Q = 0 (not formed, or k >= 0) takes no gradient through Q (the reference's where)
        gq = torch.where((kk < 0) & (Sr[:, 0] != 0), gQ.to(torch.float64).expand(G), 0.0)
        A, S2 = Sr[:, 1], Sr[:, 3]
        sh = midpoint_root_shift(F, A).contiguous()  # the forward's (S2 is about it)
        s1v = (F - A.unsqueeze(-1) * sh).contiguous()
        gF2 = (gF + (2.0 * kk * gq).unsqueeze(-1) * F).contiguous()
        rs = torch.stack([gq, A, Sr[:, 2], S2, Sr[:, 4]], dim=-1).contiguous()
        dk0 = -gq * (A * S2 - (s1v * s1v).sum(-1))  # -V gQ, once per group
    # Q's terms carry two more [BLOCK_N, BLOCK_D] float64 operands per column chunk: half the tile's rows (a split
    # holds a multiple of either), else ptxas spills (sm_90: up to 360 B)
    block_n = max(1, block_n // 2) if root else block_n
    dkp = torch.empty((G, S), dtype=torch.float64, device=x.device)
    with _device_guard(x):
        _midpoint_bwd_kernel[(G, S)](gF, gF2, gL, rs, s1v, sh, x, w if w is not None else x, k, dx if need_dx else x,
                                     dw if need_dw else x, dkp, N, D, n_per, S, sk,
                                     HAS_W=w is not None, POSW=bool(posweight), ROOT=root, NEED_DX=need_dx,
                                     NEED_DW=need_dw, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=_MID_WARPS,
                                     **_maxnreg(_MID_WARPS))
    if not need_dk:
        return dx, dw, x.new_empty(0)
    dk = dkp.sum(1) if S > 1 else dkp[:, 0].contiguous()
    return dx, dw, (dk + dk0 if root else dk)


def _midpoint_compile_variants():
    entries = []
    expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 0}
    for dtype in (torch.float32, torch.float64):
        dname = str(dtype).replace("torch.", "")
        for D in (64, 300):
            x = torch.zeros(2, 37, D, dtype=dtype)
            w = torch.zeros(2, 37, dtype=dtype)
            k = torch.zeros(2, dtype=torch.float64)
            gF = torch.zeros(2, D, dtype=torch.float64)
            gL = torch.zeros(2, dtype=torch.float64)
            for pw in (False, True):
                tag = f"midpoint/{dname}/D{D}{'/posweight' if pw else ''}"
                entries.append({"label": f"{tag} fwd", "expect": expect,
                                "launch": lambda x=x, w=w, k=k, pw=pw: midpoint_fwd(x, w, k, pw)})
                entries.append({"label": f"{tag} bwd", "expect": expect,
                                "launch": lambda x=x, w=w, k=k, pw=pw, gF=gF, gL=gL: midpoint_bwd(gF, gL, x, w, k, pw, 7)})
                # the root's launches (ROOT sums, the near groups' S2, the backward with Q's terms)
                entries.append({"label": f"{tag}/root fwd", "expect": expect,
                                "launch": lambda x=x, w=w, k=k, pw=pw: midpoint_root_fwd(x, w, k, pw)})
                entries.append({"label": f"{tag}/root bwd", "expect": expect,
                                "launch": lambda x=x, w=w, k=k, pw=pw, gF=gF, gL=gL:
                                midpoint_root_bwd(gF, gL, gL, gF, torch.zeros(2, 5, dtype=torch.float64), x, w, k, pw,
                                                  7)})
    return entries
