// Per-row scalar math of the kappa-stereographic ops, shared by the C++ (CPU)
// and CUDA kernels.  Pure C++ plus CUDA qualifiers: no torch headers.
//
// Every row-wise op of the family is written in terms of a handful of row
// scalars S = (xx, yy, xy, dd, k, r):
//     xx = <x,x>, yy = <y,y>, xy = <x,y>, dd = |x - y|^2 (accumulated directly,
//     never as xx + yy - 2xy, so close pairs keep their accuracy),
//     k  = curvature of the row, r = the scalar of mobius_scalar_mul.
// A vector-valued op returns coefficients (a, b, c) and the kernel writes
//     out = a*x + b*y + c*(x - y);
// a scalar-valued op returns its value in `a`.
// Each op also has a hand-derived vector-Jacobian product: given the adjoints
// of its outputs (ga, gb, gc) it returns the adjoints of the row scalars.  The
// kernel turns those into vector gradients:
//     dx = (a + c) g + 2 xx_ x + xy_ y + 2 dd_ (x - y)
//     dy = (b - c) g + 2 yy_ y + xy_ x - 2 dd_ (x - y)
// (for vector ops ga = <g,x>, gb = <g,y>, gc = <g,x-y>; for scalar ops ga = g
// and the g-terms are absent).
//
// Curvature enters only through z = k * |v|^2 and the two smooth functions
//     tanc(z)  = tan_k(v)/|v|   = tan(sqrt z)/sqrt z   (z > 0), tanh(sqrt -z)/sqrt -z (z < 0)
//     atanc(z) = artan_k(v)/|v| = atan(sqrt z)/sqrt z  (z > 0), artanh(sqrt -z)/sqrt -z (z < 0)
// evaluated by their Taylor series near z = 0.  Both are analytic in k through
// k = 0, so values and k-gradients are continuous across the Euclidean limit
// and there is no sqrt(|v|) singularity at v = 0.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define GEO_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced so that a call with a constant `op` folds to that op's straight-line code.
#define GEO_HD inline __attribute__((always_inline))
#else
#define GEO_HD inline
#endif

namespace geoops {
namespace stereo {

enum Op : int {
  MOBIUS_ADD = 0,
  MOBIUS_SUB = 1,
  PROJECT = 2,
  LAMBDA_X = 3,
  MOBIUS_SCALAR_MUL = 4,
  EXPMAP = 5,
  EXPMAP0 = 6,
  LOGMAP = 7,
  LOGMAP0 = 8,
  DIST = 9,
  DIST0 = 10,
  NUM_OPS = 11,
};

// Static facts about each op, used by every backend.
GEO_HD constexpr bool op_has_y(int op) {
  return op == MOBIUS_ADD || op == MOBIUS_SUB || op == EXPMAP || op == LOGMAP || op == DIST;
}
GEO_HD constexpr bool op_scalar_out(int op) { return op == LAMBDA_X || op == DIST || op == DIST0; }
GEO_HD constexpr bool op_has_r(int op) { return op == MOBIUS_SCALAR_MUL; }

// geoopt's guard on denominators and norms.
template <typename T> GEO_HD T min_den() { return T(1e-15); }

// Branch-free building blocks of the forward math below, so that it also runs on SIMD vectors of
// rows (T = at::vec::Vectorized<double>: the short-row kernels of csrc/cpu/stereographic_short.cpp
// specialise these for it; a comparison there gives a lane mask instead of a bool).
template <typename C, typename T> GEO_HD T sel(C c, T a, T b) { return c ? a : b; }
// max(v, lo) with geoopt's clamp semantics (a NaN v gives lo).
template <typename T> GEO_HD T clamp_lo(T v, T lo) { return v > lo ? v : lo; }
template <typename T> GEO_HD T vsqrt(T v) { return sqrt(v); }
template <typename T> GEO_HD T vabs(T v) { return fabs(v); }

template <typename T> struct Row {
  T xx, yy, xy, dd, k, r;
};
template <typename T> struct Coef {
  T a, b, c;
};

// Below this |z| the Taylor series are used: truncation error < 1e-17 (double) and
// < 1e-9 (float; ~4e-7 relative for atanc_d at the cut).  Just above the cut the
// closed-form derivatives lose about log10(1/|z|) digits to cancellation.
template <typename T> GEO_HD T series_cut();
template <> GEO_HD double series_cut<double>() { return 1e-3; }
template <> GEO_HD float series_cut<float>() { return 0.05f; }

// Taylor series of tanc and atanc at z = 0, written with + and * only so that
// the CPU kernels can evaluate them on SIMD vectors too (T = at::vec::Vectorized).
template <typename T> GEO_HD T tanc_series(T z) {
  return T(1.0) + z * (T(1.0 / 3) + z * (T(2.0 / 15) + z * (T(17.0 / 315) + z * (T(62.0 / 2835) + z * T(1382.0 / 155925)))));
}
template <typename T> GEO_HD T atanc_series(T z) {
  return T(1.0) + z * (T(-1.0 / 3) + z * (T(1.0 / 5) + z * (T(-1.0 / 7) + z * (T(1.0 / 9) + z * T(-1.0 / 11)))));
}

template <typename T> GEO_HD T tanc(T z) {
  if (fabs(z) < series_cut<T>()) return tanc_series(z);
  if (z < 0) {
    T s = sqrt(-z);
    return tanh(s) / s;
  }
  T s = sqrt(z);
  return tan(s) / s;
}

// d tanc / dz, given t = tanc(z).
template <typename T> GEO_HD T tanc_d(T z, T t) {
  return sel(vabs(z) < series_cut<T>(),
             T(1.0 / 3) + z * (T(4.0 / 15) + z * (T(51.0 / 315) + z * (T(248.0 / 2835) + z * T(6910.0 / 155925)))),
             (T(1) + z * t * t - t) / (T(2) * z));
}

// q = 1 + z, passed in separately because callers can often form it without
// cancellation (e.g. (1 + k|x|^2)(1 + k|y|^2)/den for dist); near the ball's
// boundary q is tiny and 1 - sqrt(-z) would lose every digit.  Only q <= 0 (or NaN: a point
// outside the ball, or on its boundary) is clamped, to min_den: a positive q is a true value however
// small (two float64 points within 1e-8 of the boundary and far apart have q ~ 1e-16; the old clamp of
// every q below min_den cut their dist by 6 %, session 47).  Callers mark the other out-of-ball case
// with q = 0 (ball_q).
template <typename T> GEO_HD T clamp_q(T q) { return q > T(0) ? q : min_den<T>(); }

// q = pp / den of a pair (dist, logmap; nb = 1 + k|x|^2), or 0 (clamp_q's floor, no 1/q gradient) where x lies
// outside the ball and q is below min_den: with y outside too pp > 0, and that q, however small, is no point
// inside's (the clamp there as before session 47; one outside point alone gives q < 0 anyway).
template <typename T> GEO_HD T ball_q(T nb, T q) { return sel((nb > T(0)) | (q > min_den<T>()), q, T(0)); }

template <typename T> GEO_HD T atanc(T z, T q) {
  if (fabs(z) < series_cut<T>()) return atanc_series(z);
  if (z < 0) {
    // artanh(s) = 0.5*log1p(2s/(1-s)) and 1 - s = q/(1 + s)
    T s = sqrt(-z);
    return T(0.5) * log1p(T(2) * s * (T(1) + s) / clamp_q(q)) / s;
  }
  T s = sqrt(z);
  return atan(s) / s;
}

// The way the op math below evaluates tanc and atanc: directly (CUDA, and the
// reference semantics), or through a policy of the same shape that batches
// the calls of many rows (the CPU kernels; see csrc/cpu/stereographic.cpp).
template <typename T> struct DirectMath {
  GEO_HD T tanc(T z) { return stereo::tanc(z); }
  GEO_HD T atanc(T z, T q) { return stereo::atanc(z, q); }
};

// d atanc / dz, given a = atanc(z).
template <typename T> GEO_HD T atanc_d(T z, T q, T a) {
  // Outside the ball (q <= 0: the value was taken at the clamped q, clamp_q) the 1/q term is the derivative
  // of the clamp, which geoopt's clamp of artanh's argument zeroes: drop it, so that points just
  // outside the ball get bounded gradients instead of ~1/min_den = 1e15.
  return sel(vabs(z) < series_cut<T>(),
             T(-1.0 / 3) + z * (T(2.0 / 5) + z * (T(-3.0 / 7) + z * (T(4.0 / 9) + z * T(-5.0 / 11)))),
             (sel(q > T(0), T(1) / q, T(0)) - a) / (T(2) * z));
}

// ---------------------------------------------------------------- forward
template <typename T> GEO_HD Coef<T> mobius_add_coef(T xx, T yy, T xy, T k) {
  T den = clamp_lo(T(1) - T(2) * k * xy + k * k * xx * yy, min_den<T>());
  return {(T(1) - T(2) * k * xy - k * yy) / den, (T(1) + k * xx) / den, T(0)};
}

// Row adjoints of mobius_add's coefficients (ga = dL/da, gb = dL/db).
template <typename T> GEO_HD Row<T> mobius_add_vjp(T xx, T yy, T xy, T k, T ga, T gb) {
  T den0 = T(1) - T(2) * k * xy + k * k * xx * yy;
  auto live = den0 > min_den<T>();
  T den = sel(live, den0, min_den<T>());
  T a = (T(1) - T(2) * k * xy - k * yy) / den, b = (T(1) + k * xx) / den;
  T na_ = ga / den, nb_ = gb / den;
  T den_ = sel(live, -(ga * a + gb * b) / den, T(0));
  Row<T> g;
  g.xx = nb_ * k + den_ * k * k * yy;
  g.yy = -na_ * k + den_ * k * k * xx;
  g.xy = -T(2) * k * (na_ + den_);
  g.dd = T(0);
  g.k = na_ * (-T(2) * xy - yy) + nb_ * xx + den_ * (-T(2) * xy + T(2) * k * xx * yy);
  g.r = T(0);
  return g;
}

// Denominator of (-x) (+) y (callers clamp it), given pp = (1 + k xx)(1 + k yy) (session 41):
//     den = 1 + 2k xy + k^2 xx yy = pp - k dd.
// k <= 0: pp - k dd, whose terms are non-negative inside the ball (1 + k xx, 1 + k yy >= 0, -k dd >= 0), so it rounds
// to ~eps relative; the first form cancels for close pairs near the boundary (1 - 2 + 1 against den ~ pp: ~eps / den
// relative, 1e-5 of dist and logmap in float64 for pairs within 1e-6 of it).  k > 0: the first form, whose terms'
// magnitudes sum to at most the second's (1 + 2k|xy| + k^2 xx yy <= pp + k dd, as 2|xy| <= xx + yy), so its rounding
// is never the larger; both cancel only for y near x's antipode -x / (k xx), the first form less
// (tests/test_stereographic_short.py, test_sub_den_k_positive_form).  dd is the directly accumulated |x - y|^2.
template <typename T> GEO_HD T sub_den(T pp, T xx, T yy, T xy, T dd, T k) {
  return sel(k > T(0), T(1) + T(2) * k * xy + k * k * xx * yy, pp - k * dd);
}

// k > 0 near x's antipode -x / (k xx) den -> 0, and the rounding of the row sums (~eps (1 + 2k|xy| + k^2 xx yy), about
// 4 eps there, more with D) is ~eps / den of it: logmap's value f N / den (|N| = |x - y| sqrt(den), f ~ sqrt(den)) is
// off by that much (den 1e-14: 1e-2 in double).  The same den as a sum of squares does not cancel:
//     xx den = xx + 2k xx xy + k^2 xx^2 yy = |x + k xx y|^2,
// whose terms x_j + k xx y_j round to ~eps |x_j| against |x + k xx y| = |x| sqrt(den): ~eps / sqrt(den) relative,
// the problem's own condition (the eager reference's error, which also divides the vector N).  It needs xx first, a
// second pass over the row, so the kernels take it (antipode_den, csrc/cpu/stereographic_lanes.h) only for the rows
// with k > 0 and den0 < antipode_cut: above it the sums' den moves the value by at most ~2e-13 D relative (half
// of 4 D eps / cut); random rows almost never fall below it (y within a few % of x's antipode).  dist needs no such care:
// den enters it only through |s| = sqrt(dd / den) in atan's saturated tail (tests: test_dist_sphere_near_antipode).
template <typename T> GEO_HD T antipode_cut() { return T(1e-3); }
// The floor of logmap's den where antipode_den took it and the row is written in double.  In the saturated atan the
// value's length goes as sqrt(den0 / den): min_den's 1e-15 shortened the rows with y within ~3e-8 (relative) of the
// antipode by up to 97 % (den 1e-18), although the second pass has den to ~eps / sqrt(den) there.  1e-30 (~(4 eps)^2,
// where that den has no digit left) keeps the double write a x + c (x - y), whose terms ~1 / sqrt(den) cancel to O(1),
// bounded at the antipode itself (den0 = 0): ~eps 1e15 ~ 0.2 of the sphere's largest logmap.  Every kernel writes
// those rows in double, the float types' too (CPU write_near_row, Triton _near_rows_out, CUDA's double compute), so
// every type takes this floor.
template <typename T> GEO_HD T antipode_min_den() { return T(1e-30); }
// The float types' near-antipode rows written in double reach beyond antipode_cut (the rows between take the sums'
// den: only their write changes).  A float write of logmap's row, out = a x + c (x - y) with a, c ~ 1 / sqrt(den)
// (x + k xx y, the direction that survives, is the difference of O(1) terms), is off by ~3 eps32 / sqrt(den) relative
// (the coefficients and the sums are double, so not D-dependent); its gradients, sums of ~1 / den-sized terms, by
// ~15 eps32 / den.  The eager float32 reference is of the same order (more with D: its sums are float), so per row the
// float rule (ours <= 2x eager + 2e-6, 4e-6 for gradients) holds only where that error is below the floor itself:
// den >~ 0.03 for the value, ~0.5 for the gradients (a scan of random rows near the antipode, D = 2: value rows over
// the rule up to den 1e-1.5, gradient rows up to ~0.3).  Both cuts stay below 0.95: there z = k dd / den >= 0.05, the
// float series cut, so the fp32 fast paths and the float calls (which need z below it) decline every such row and the
// rows' coefficients are double.
template <typename T> GEO_HD T antipode_float_cut_fwd() { return T(0.05); }
template <typename T> GEO_HD T antipode_float_cut_bwd() { return T(0.5); }

// Which form logmap writes (-x) (+) y's numerator N = k dd x - (1 + k xx)(x - y) in (session 39).  N has three
// equal forms, N = a x + b y = k dd x - b (x - y) = k dd y + a (x - y) with a = -(1 + 2k<x,y> - k yy), b = 1 + k xx
// (a + b = k dd); their rounding errors are ~eps times the size of their terms, against |N| = |x - y| sqrt(den):
//   x form, k dd x - b (x - y): ~ (k |x - y| |x| + |b|) / sqrt(den) -- fine for close pairs (the reason it exists)
//     and wherever k xx <= 1, but for x far out on the projected sphere (k xx >> 1) and y not geodesically close,
//     both terms are ~k |x|^3 and cancel: ~k xx / max(1, k |x||y|) ulps of N (float, |x| = 100, k = 1: 2e-5);
//   y form, k dd y + a (x - y): ~ (k |x - y| |y| + |a| + 1 + 2k|x||y| + k yy) / sqrt(den) -- no x-sized term
//     times k dd, fine for k xx > 1 with |x| > |y| (x the farther point), and for close pairs (k > 0: a ~ -(1 + k yy),
//     no cancellation in it); bad for y far out and x near (k dd y ~ k |y|^3);
//   a x + b y (the eager reference's mobius_add): fine far out, cancels for close pairs.
// So the y form where k xx > 1 and xx > yy (x beyond the equator, the farther of the two; k > 0 only), the x form
// elsewhere: k <= 0 and k = 0 rows keep the x form and their bits (for k < 0 the ball bounds k xx by 1, and the x
// form shares b with the factor 2 / lambda_x = b, which near the boundary keeps its digits; the y form's a would not).
// The fp32 fast paths (csrc/cpu/stereographic_rows_f32.h, block_fwd_logmap_rcp) write the x form only: their blocks
// with a y-form row take the double path.
template <typename T> GEO_HD auto logmap_y_form(T xx, T yy, T k) { return (k * xx > T(1)) & (xx > yy); }

// Adds the adjoint den_ of sub_den to the row adjoints g, in the form sub_den took: k > 0 through xy (and xx, yy, k),
// k <= 0 (pp - k dd) through xx, yy, dd and k -- no xy term, so dx's den term 2k den_ ((1 + k yy) x - (x - y)) keeps
// its digits for close pairs (the first form's 2k den_ (y + k yy x) cancels there).
// with_dd false: the k <= 0 form's dd term -k den_ is left to the caller (dist, which has dd's whole adjoint in a
// form that does not cancel).
template <typename T> GEO_HD void add_sub_den_vjp(const Row<T>& s, T den_, Row<T>& g, bool with_dd = true) {
  const T k = s.k;
  auto pos = k > T(0);
  T kd = den_ * k;
  g.xy += sel(pos, T(2) * kd, T(0));
  g.xx += kd * sel(pos, k * s.yy, T(1) + k * s.yy);
  g.yy += kd * sel(pos, k * s.xx, T(1) + k * s.xx);
  if (with_dd) g.dd += sel(pos, T(0), -kd);
  g.k += den_ * sel(pos, T(2) * s.xy + T(2) * k * s.xx * s.yy,
                    s.xx * (T(1) + k * s.yy) + s.yy * (T(1) + k * s.xx) - s.dd);
}

// logmap's coefficients (fwd, case LOGMAP) and row adjoints (vjp, case LOGMAP) given den0, the denominator of
// (-x) (+) y before its clamp: sub_den of the row sums, or antipode_den's where those sums' rounding would show.
// lo: den0's floor (min_den; antipode_min_den for antipode_den's rows, written in double).
template <typename T, typename M> GEO_HD Coef<T> logmap_coef(const Row<T>& s, T den0, M& m, T lo = min_den<T>()) {
  const T k = s.k;
  // s = (-x) (+) y = (k dd x - (1 + k xx)(x - y)) / den  (x form)
  //                = (k dd y - (1 + 2k xy - k yy)(x - y)) / den  (y form, logmap_y_form: k xx > 1, xx > yy),
  // |s|^2 = dd / den, out = (1 + k xx) A(k |s|^2) s
  T nb = T(1) + k * s.xx;
  T pp = nb * (T(1) + k * s.yy);
  T den = clamp_lo(den0, lo);
  T p = clamp_lo(nb, min_den<T>());
  T z = k * s.dd / den;
  T q = ball_q(nb, pp / den);
  T f = m.atanc(z, q) * p;
  T F = f * k * s.dd / den;
  auto yf = logmap_y_form(s.xx, s.yy, k);
  T w = T(1) + T(2) * k * s.xy - k * s.yy;
  return {sel(yf, T(0), F), sel(yf, F, T(0)), -f * sel(yf, w, nb) / den};
}

template <typename T, typename M>
GEO_HD Row<T> logmap_vjp(const Row<T>& s, T den0, T ga, T gb, T gc, M& m, T lo = min_den<T>()) {
  const T k = s.k;
  Row<T> g{T(0), T(0), T(0), T(0), T(0), T(0)};
  T nb = T(1) + k * s.xx;
  T pp = nb * (T(1) + k * s.yy);
  auto den_live = den0 > lo;
  T den = sel(den_live, den0, lo);
  auto p_live = nb > min_den<T>();
  T p = sel(p_live, nb, min_den<T>());
  T z = k * s.dd / den;
  T q = ball_q(nb, pp / den);
  T A = m.atanc(z, q);
  T f = A * p;
  // x form: a = F, c = -f nb / den; y form (logmap_y_form): b = F, c = -f w / den; F = f k dd / den,
  // w = 1 + 2k xy - k yy
  auto yf = logmap_y_form(s.xx, s.yy, k);
  T w = T(1) + T(2) * k * s.xy - k * s.yy;
  T mw = sel(yf, w, nb);
  T gF = sel(yf, gb, ga);
  T a = f * k * s.dd / den, c = -f * mw / den;
  T f_ = gF * k * s.dd / den - gc * mw / den;
  T dd_ = gF * f * k / den;
  T mw_ = -gc * f / den;
  T nb_ = sel(yf, T(0), mw_);
  T den_ = -(a * gF + c * gc) / den;
  T k_ = gF * f * s.dd / den;
  // y form: w's adjoint mw_ to xy, yy, k
  k_ = sel(yf, k_ + mw_ * (T(2) * s.xy - s.yy), k_);
  g.xy = sel(yf, mw_ * T(2) * k, T(0));
  g.yy = sel(yf, -(mw_ * k), T(0));
  // f = A(z) p
  T A_ = f_ * p;
  T p_ = f_ * A;
  T z_ = A_ * atanc_d(z, q, A);
  k_ += z_ * s.dd / den;
  dd_ += z_ * k / den;
  den_ -= z_ * z / den;
  T xx1 = nb_ + sel(p_live, p_, T(0));
  g.xx = xx1 * k;
  k_ += xx1 * s.xx;
  g.k = k_;
  g.dd = dd_;
  add_sub_den_vjp(s, sel(den_live, den_, T(0)), g);
  return g;
}

template <typename T, typename M> GEO_HD Coef<T> fwd(int op, const Row<T>& s, T param, M& m) {
  const T k = s.k;
  switch (op) {
    case MOBIUS_ADD:
      return mobius_add_coef(s.xx, s.yy, s.xy, k);
    case MOBIUS_SUB: {
      Coef<T> c = mobius_add_coef(s.xx, s.yy, -s.xy, k);
      return {c.a, -c.b, T(0)};
    }
    case PROJECT: {
      // param = eps; maxnorm = (1 - eps)/sqrt(-k) on the ball, no bound otherwise
      T n = clamp_lo(vsqrt(s.xx), min_den<T>());
      T mx = (T(1) - param) / vsqrt(sel(k < T(0), -k, T(1)));
      return {sel((k < T(0)) & (n > mx), mx / n, T(1)), T(0), T(0)};
    }
    case LAMBDA_X: {
      // clamped as torch.clamp_min (geoopt): a NaN 1 + k|x|^2 stays NaN (clamp_lo alone gave 2e15)
      T p = T(1) + k * s.xx;
      return {T(2) / sel(p != p, p, clamp_lo(p, min_den<T>())), T(0), T(0)};
    }
    case MOBIUS_SCALAR_MUL: {
      // tan_k(r artan_k(|x|)) / |x| = r A(k|x|^2) T(k r^2 |x|^2 A^2)
      T z1 = k * s.xx;
      T a1 = m.atanc(z1, T(1) + z1);
      T z2 = k * s.r * s.r * s.xx * a1 * a1;
      return {s.r * a1 * m.tanc(z2), T(0), T(0)};
    }
    case EXPMAP: {
      // x (+) t u with t = tan_k(lambda_x |u| / 2)/|u| = h T(k h^2 |u|^2), h = 1/(1 + k|x|^2)
      T h = T(1) / clamp_lo(T(1) + k * s.xx, min_den<T>());
      T t = h * m.tanc(k * h * h * s.yy);
      Coef<T> c = mobius_add_coef(s.xx, t * t * s.yy, t * s.xy, k);
      return {c.a, c.b * t, T(0)};
    }
    case EXPMAP0:
      return {m.tanc(k * s.xx), T(0), T(0)};
    case LOGMAP: {
      T pp = (T(1) + k * s.xx) * (T(1) + k * s.yy);
      return logmap_coef(s, sub_den(pp, s.xx, s.yy, s.xy, s.dd, k), m);
    }
    case LOGMAP0: {
      T z = k * s.xx;
      return {m.atanc(z, T(1) + z), T(0), T(0)};
    }
    case DIST: {
      T pp = (T(1) + k * s.xx) * (T(1) + k * s.yy);
      T den = clamp_lo(sub_den(pp, s.xx, s.yy, s.xy, s.dd, k), min_den<T>());
      T ss = s.dd / den;
      T z = k * ss;
      T q = ball_q(T(1) + k * s.xx, pp / den);
      return {T(2) * vsqrt(ss) * m.atanc(z, q), T(0), T(0)};
    }
    case DIST0: {
      T z = k * s.xx;
      return {T(2) * vsqrt(s.xx) * m.atanc(z, T(1) + z), T(0), T(0)};
    }
  }
  return {T(0), T(0), T(0)};
}

// ---------------------------------------------------------------- backward
// Adjoints of the row scalars from the adjoints (ga, gb, gc) of the op's
// coefficients (vector ops) or of its value (scalar ops, ga only).
template <typename T, typename M> GEO_HD Row<T> vjp(int op, const Row<T>& s, T param, T ga, T gb, T gc, M& m) {
  const T k = s.k;
  Row<T> g{T(0), T(0), T(0), T(0), T(0), T(0)};
  switch (op) {
    case MOBIUS_ADD:
      return mobius_add_vjp(s.xx, s.yy, s.xy, k, ga, gb);
    case MOBIUS_SUB: {
      g = mobius_add_vjp(s.xx, s.yy, -s.xy, k, ga, -gb);
      g.xy = -g.xy;
      return g;
    }
    case PROJECT: {
      T n = vsqrt(s.xx);
      T nc = clamp_lo(n, min_den<T>());
      T mx = (T(1) - param) / vsqrt(sel(k < T(0), -k, T(1)));
      auto act = (k < T(0)) & (n > min_den<T>()) & (n > mx);  // a = mx / n
      g.xx = sel(act, -ga * mx / (T(2) * nc * nc * nc), T(0));
      g.k = sel(act, ga * mx / (nc * T(2) * (-k)), T(0));
      return g;
    }
    case LAMBDA_X: {
      T p = T(1) + k * s.xx;
      T p_ = sel(p > min_den<T>(), -T(2) * ga / (p * p), T(0));
      g.xx = p_ * k;
      g.k = p_ * s.xx;
      return g;
    }
    case MOBIUS_SCALAR_MUL: {
      T z1 = k * s.xx, q1 = T(1) + z1;
      T a1 = m.atanc(z1, q1);
      T z2 = k * s.r * s.r * s.xx * a1 * a1;
      T t2 = m.tanc(z2);
      T z2_ = ga * s.r * a1 * tanc_d(z2, t2);
      T a1_ = ga * s.r * t2 + z2_ * T(2) * k * s.r * s.r * s.xx * a1;
      T z1_ = a1_ * atanc_d(z1, q1, a1);
      g.xx = z2_ * k * s.r * s.r * a1 * a1 + z1_ * k;
      g.k = z2_ * s.r * s.r * s.xx * a1 * a1 + z1_ * s.xx;
      g.r = ga * a1 * t2 + z2_ * T(2) * k * s.r * s.xx * a1 * a1;
      return g;
    }
    case EXPMAP: {
      T p0 = T(1) + k * s.xx;
      auto live = p0 > min_den<T>();
      T h = T(1) / sel(live, p0, min_den<T>());
      T z = k * h * h * s.yy;
      T tz = m.tanc(z);
      T t = h * tz;
      T Y = t * t * s.yy, XY = t * s.xy;
      Coef<T> c = mobius_add_coef(s.xx, Y, XY, k);
      // out = A x + (B t) u
      Row<T> m = mobius_add_vjp(s.xx, Y, XY, k, ga, gb * t);
      T t_ = gb * c.b + m.yy * T(2) * t * s.yy + m.xy * s.xy;
      g.yy = m.yy * t * t;
      g.xy = m.xy * t;
      g.xx = m.xx;
      g.k = m.k;
      T h_ = t_ * tz;
      T z_ = t_ * h * tanc_d(z, tz);
      g.k += z_ * h * h * s.yy;
      h_ += z_ * T(2) * k * h * s.yy;
      g.yy += z_ * k * h * h;
      T p_ = sel(live, -h_ * h * h, T(0));
      g.xx += p_ * k;
      g.k += p_ * s.xx;
      return g;
    }
    case EXPMAP0: {
      T z = k * s.xx;
      T z_ = ga * tanc_d(z, m.tanc(z));
      g.xx = z_ * k;
      g.k = z_ * s.xx;
      return g;
    }
    case LOGMAP: {
      T pp = (T(1) + k * s.xx) * (T(1) + k * s.yy);
      return logmap_vjp(s, sub_den(pp, s.xx, s.yy, s.xy, s.dd, k), ga, gb, gc, m);
    }
    case LOGMAP0: {
      T z = k * s.xx, q = T(1) + z;
      T z_ = ga * atanc_d(z, q, m.atanc(z, q));
      g.xx = z_ * k;
      g.k = z_ * s.xx;
      return g;
    }
    case DIST: {
      T pp = (T(1) + k * s.xx) * (T(1) + k * s.yy);
      T den0 = sub_den(pp, s.xx, s.yy, s.xy, s.dd, k);
      auto den_live = den0 > min_den<T>();
      T den = sel(den_live, den0, min_den<T>());
      T ss0 = s.dd / den;
      auto live = ss0 > T(0);  // |s| is not differentiable at 0: zero subgradient, like torch.norm
      T ss = sel(live, ss0, T(1));
      T w = vsqrt(ss);
      T z = k * ss;
      T q = ball_q(T(1) + k * s.xx, pp / den);
      T A = m.atanc(z, q), Ad = atanc_d(z, q, A);
      // v = 2 w A(k w^2), dv/dss = ss_ = ga P / w with P = A + 2z A'(z) = 1 / (1 + z) (artan_k's derivative): the
      // series below the cut, 1 / q above it (0 outside the ball, q <= 0, as atanc_d), whatever A is (SkipCallMath's A = 1)
      auto series = vabs(z) < series_cut<T>();
      T P = sel(series, A + T(2) * z * Ad, sel(q > T(0), T(1) / q, T(0)));
      T u = ga / (w * den);  // ss_ / den = u P (one division for the three adjoints below)
      T k_ = ga * T(2) * w * Ad * ss;
      T den_ = -u * P * ss;  // -ss_ ss / den
      // dd's adjoint, k <= 0: ss_ / den directly plus -k den_ through den = pp - k dd, = u P (1 + z).  Near the
      // boundary 1 + z = q -> 0 and the two terms are ~1 / q each: their sum lost ~eps / q relative (dy of a far
      // pair, whose dy is O(1)).  As P (1 + z) = 1 above the cut, the product instead (session 46).
      T Pz = sel(series, P * (T(1) + z), sel(q > T(0), T(1), T(0)));
      g.dd = sel(live, u * sel(den_live & (k <= T(0)), Pz, P), T(0));
      g.k = sel(live, k_, T(0));
      add_sub_den_vjp(s, sel(live & den_live, den_, T(0)), g, false);
      return g;
    }
    case DIST0: {
      auto live = s.xx > T(0);
      T xx = sel(live, s.xx, T(1));
      T w = vsqrt(xx);
      T z = k * xx, q = T(1) + z;
      T A = m.atanc(z, q), Ad = atanc_d(z, q, A);
      g.xx = sel(live, ga * (A / w + T(2) * w * k * Ad), T(0));
      g.k = sel(live, ga * T(2) * w * Ad * xx, T(0));
      return g;
    }
  }
  return g;
}

template <typename T> GEO_HD Coef<T> fwd(int op, const Row<T>& s, T param) {
  DirectMath<T> m;
  return fwd(op, s, param, m);
}
template <typename T> GEO_HD Row<T> vjp(int op, const Row<T>& s, T param, T ga, T gb, T gc) {
  DirectMath<T> m;
  return vjp(op, s, param, ga, gb, gc, m);
}

}  // namespace stereo
}  // namespace geoops
