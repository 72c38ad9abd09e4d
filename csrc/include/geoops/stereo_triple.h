// Row math of the kappa-stereographic "three-vector" row ops (gyration, the parallel transports,
// dist2plane), shared by every backend that evaluates them per row.  Pure C++ (no torch headers).
//
// Each op reads up to three vectors of one row, v0, v1, v2 (gyration: a, b, u; parallel_transport: x, y, v;
// parallel_transport0: y, v; parallel_transport0back: x, v; dist2plane: x, p, a), and a curvature k.  Its
// result is a linear combination c0 v0 + c1 v1 + c2 v2 (vector ops) or a scalar c0 (dist2plane) whose
// coefficients are functions of a few dot products of the row,
//     S00 = <v0,v0>, S11 = <v1,v1>, S22 = <v2,v2>, S01 = <v0,v1>, S02 = <v0,v2>, S12 = <v1,v2>,
//     SEE = |e|^2, SE1 = <e,v1>, SE2 = <e,v2>   with e = v0 - v1 accumulated directly (v0 + v1 for gyration:
//     its form needs |a + b|^2 where b nears -a; `op_e_plus`),
// and of k.  So a kernel is one pass for the dot products, then the epilogue `eval` below, then one pass
// writing the combination.  The backward differentiates `eval` exactly by evaluating it on dual numbers
// (value + gradient with respect to the op's dot products and k, `Dual` below, its gradient a tangent type): with the adjoints G of the
// dot products every vector gradient is again a combination of v0, v1, v2 and the incoming gradient g
// (`dot_adjoint_coefs`).  Clamps follow torch's gradients (0 where clamped), as do |.| and sqrt at 0.
#pragma once

#include <cmath>

#include "geoops/stereo_math.h"

namespace geoops {
namespace triple {

enum Op : int {
  GYRATION = 0,
  PARALLEL_TRANSPORT = 1,
  PARALLEL_TRANSPORT0 = 2,
  PARALLEL_TRANSPORT0BACK = 3,
  DIST2PLANE = 4,
  NUM_OPS = 5,
};

enum Dot : int { S00 = 0, S11, S22, S01, S02, S12, SEE, SE1, SE2, NUM_DOTS };

// dist2plane's flags
constexpr int SIGNED = 1;
constexpr int SCALED = 2;

GEO_HD constexpr int op_nvec(int op) { return (op == PARALLEL_TRANSPORT0 || op == PARALLEL_TRANSPORT0BACK) ? 2 : 3; }
GEO_HD constexpr bool op_scalar_out(int op) { return op == DIST2PLANE; }
// e = v0 + v1 (gyration's a + b) where true, e = v0 - v1 (the transport's x - y, dist2plane's x - p) otherwise
GEO_HD constexpr bool op_e_plus(int op) { return op == GYRATION; }

// The dot products each op reads, in the order of its `s` array (and of its dual components; k comes last).
template <int OP> struct Dots;
template <> struct Dots<GYRATION> {
  static constexpr int n = 7;
  static constexpr int id[n] = {S00, S11, S01, S02, S12, SEE, SE2};
};
template <> struct Dots<PARALLEL_TRANSPORT> {
  static constexpr int n = 7;
  static constexpr int id[n] = {S00, S11, S01, S02, S12, SEE, SE2};
};
template <> struct Dots<PARALLEL_TRANSPORT0> {
  static constexpr int n = 1;
  static constexpr int id[n] = {S00};
};
template <> struct Dots<PARALLEL_TRANSPORT0BACK> {
  static constexpr int n = 1;
  static constexpr int id[n] = {S00};
};
template <> struct Dots<DIST2PLANE> {
  static constexpr int n = 9;
  static constexpr int id[n] = {S00, S11, S01, S12, S22, SEE, SE1, SE2, S02};
};

// Bit masks (1 << Dot) of the dot products eval<OP> reads: all of Dots<OP>::id, and for a row with k <= 0 (eval's
// own test: !(k > 0)) the subset its form reads there.  gyr_coefs' k <= 0 form reads neither <a,b> nor <b,u>, so
// gyration and parallel_transport need five sums there, not seven: the CPU forward's dot pass accumulates only those
// for such rows (session 43's seven sums cost its D = 5 / 64 float32 forward 7-17 %, session 46 remeasure46).
template <int OP> constexpr unsigned dots_mask() {
  unsigned m = 0;
  for (int i = 0; i < Dots<OP>::n; ++i) m |= 1u << Dots<OP>::id[i];
  return m;
}
template <int OP> constexpr unsigned dots_mask_nonpos() {
  // gyration: a = v0, b = v1, u = v2, d = a + b: aa, bb, au, dd, du; parallel_transport: a = v1, b = -v0, u = v2,
  // d = -(v0 - v1): aa = S11, bb = S00, au = S12, dd = SEE, du = -SE2
  if constexpr (OP == GYRATION) return (1u << S00) | (1u << S11) | (1u << S02) | (1u << SEE) | (1u << SE2);
  if constexpr (OP == PARALLEL_TRANSPORT) return (1u << S00) | (1u << S11) | (1u << S12) | (1u << SEE) | (1u << SE2);
  return dots_mask<OP>();
}

// ---------------------------------------------------------------- forward-mode dual numbers
// The tangent of a dual number: its gradient with respect to NV independent variables.  Tan() is zero,
// Tan::unit(i) the i-th unit vector, and a tangent type has +, -, * double and lin(a, s, b, t) = a s + b t.
// STan: NV plain doubles (any backend); the CPU kernels bring one on SIMD vectors (csrc/cpu/stereographic_triple.cpp).
template <int NV> struct STan {
  double d[NV];
  GEO_HD STan() {
    for (int i = 0; i < NV; ++i) d[i] = 0;
  }
  GEO_HD static STan unit(int i) {
    STan r;
    r.d[i] = 1;
    return r;
  }
};
template <int NV> GEO_HD STan<NV> operator+(const STan<NV>& a, const STan<NV>& b) {
  STan<NV> r;
  for (int i = 0; i < NV; ++i) r.d[i] = a.d[i] + b.d[i];
  return r;
}
template <int NV> GEO_HD STan<NV> operator-(const STan<NV>& a, const STan<NV>& b) {
  STan<NV> r;
  for (int i = 0; i < NV; ++i) r.d[i] = a.d[i] - b.d[i];
  return r;
}
template <int NV> GEO_HD STan<NV> operator*(const STan<NV>& a, double s) {
  STan<NV> r;
  for (int i = 0; i < NV; ++i) r.d[i] = a.d[i] * s;
  return r;
}
template <int NV> GEO_HD STan<NV> lin(const STan<NV>& a, double s, const STan<NV>& b, double t) {
  STan<NV> r;
  for (int i = 0; i < NV; ++i) r.d[i] = a.d[i] * s + b.d[i] * t;
  return r;
}

// value v and its tangent d
template <int NV, typename Tan = STan<NV>> struct Dual {
  double v;
  Tan d;
  GEO_HD Dual() : v(0), d() {}
  GEO_HD Dual(double c) : v(c), d() {}  // NOLINT: constants convert implicitly
  GEO_HD static Dual var(double c, int i) {
    Dual r(c);
    r.d = Tan::unit(i);
    return r;
  }
};

template <int NV, typename Tan> GEO_HD Dual<NV, Tan> chain(const Dual<NV, Tan>& a, double val, double da) {
  Dual<NV, Tan> r;
  r.v = val;
  r.d = a.d * da;
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator+(const Dual<NV, Tan>& a, const Dual<NV, Tan>& b) {
  Dual<NV, Tan> r;
  r.v = a.v + b.v;
  r.d = a.d + b.d;
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator-(const Dual<NV, Tan>& a, const Dual<NV, Tan>& b) {
  Dual<NV, Tan> r;
  r.v = a.v - b.v;
  r.d = a.d - b.d;
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator-(const Dual<NV, Tan>& a) { return chain(a, -a.v, -1.0); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator*(const Dual<NV, Tan>& a, const Dual<NV, Tan>& b) {
  Dual<NV, Tan> r;
  r.v = a.v * b.v;
  r.d = lin(a.d, b.v, b.d, a.v);
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator/(const Dual<NV, Tan>& a, const Dual<NV, Tan>& b) {
  Dual<NV, Tan> r;
  r.v = a.v / b.v;
  const double inv = 1.0 / b.v;
  r.d = lin(a.d, inv, b.d, -r.v * inv);
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator+(const Dual<NV, Tan>& a, double b) {
  Dual<NV, Tan> r = a;
  r.v = a.v + b;
  return r;
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator+(double a, const Dual<NV, Tan>& b) { return b + a; }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator-(const Dual<NV, Tan>& a, double b) { return a + (-b); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator-(double a, const Dual<NV, Tan>& b) {
  return chain(b, a - b.v, -1.0);
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator*(const Dual<NV, Tan>& a, double b) {
  return chain(a, a.v * b, b);
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator*(double a, const Dual<NV, Tan>& b) {
  return chain(b, a * b.v, a);
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator/(const Dual<NV, Tan>& a, double b) {
  return chain(a, a.v / b, 1.0 / b);
}
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> operator/(double a, const Dual<NV, Tan>& b) {
  return Dual<NV, Tan>(a) / b;
}
template <int NV, typename Tan> GEO_HD bool operator>(const Dual<NV, Tan>& a, const Dual<NV, Tan>& b) { return a.v > b.v; }
template <int NV, typename Tan> GEO_HD bool operator>(const Dual<NV, Tan>& a, double b) { return a.v > b; }

// value of a plain double or a dual
GEO_HD double val(double a) { return a; }
template <int NV, typename Tan> GEO_HD double val(const Dual<NV, Tan>& a) { return a.v; }

// torch's gradients: |a|' = sign(a) (0 at 0), sqrt'(0) taken as 0 (as norm's backward), clamps 0 where clamped
GEO_HD double t_abs(double a) { return fabs(a); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> t_abs(const Dual<NV, Tan>& a) {
  return chain(a, fabs(a.v), a.v > 0 ? 1.0 : (a.v < 0 ? -1.0 : 0.0));
}
GEO_HD double t_sqrt(double a) { return sqrt(a); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> t_sqrt(const Dual<NV, Tan>& a) {
  const double s = sqrt(a.v);
  return chain(a, s, s > 0 ? 0.5 / s : 0.0);
}
GEO_HD double t_asinh(double a) { return asinh(a); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> t_asinh(const Dual<NV, Tan>& a) {
  return chain(a, asinh(a.v), 1.0 / sqrt(1.0 + a.v * a.v));
}
GEO_HD double t_asin(double a) { return asin(a); }
template <int NV, typename Tan> GEO_HD Dual<NV, Tan> t_asin(const Dual<NV, Tan>& a) {
  return chain(a, asin(a.v), 1.0 / sqrt(1.0 - a.v * a.v));
}
// torch.clamp_min(a, lo) / clamp_max(a, hi): the gradient passes where a >= lo (a <= hi); NaN stays NaN
template <typename T> GEO_HD T t_max(const T& a, double lo) { return !(val(a) < lo) ? a : T(lo); }
template <typename T> GEO_HD T t_min(const T& a, double hi) { return !(val(a) > hi) ? a : T(hi); }

// geoops.stereographic.arsin_k(z, k): asinh(sqrt(-k) z)/sqrt(-k) (k < 0), asin(sqrt(k) z)/sqrt(k) (k > 0, the
// argument clamped at +-(1 - 1e-7)); z asinc(w), w = k z^2, by its Taylor series where |w| < 1e-3 (the switch on
// w, not on |k| alone: a small k with a large z took z + k z^3/6 before, 7x off at k = -9e-7, z ~ 5000)
template <typename T> GEO_HD T arsin_k(const T& z, const T& k) {
  const T w = k * z * z;
  if (fabs(val(w)) < 1e-3)
    return z * (1.0 + w * (1.0 / 6 + w * (3.0 / 40 + w * (5.0 / 112 + w * (35.0 / 1152 + w * (63.0 / 2816))))));
  const T c = t_sqrt(t_abs(k));  // |k| z^2 >= 1e-3: k != 0
  if (val(k) < 0) return t_asinh(c * z) / c;
  return t_asin(t_min(t_max(c * z, -1.0 + 1e-7), 1.0 - 1e-7)) / c;
}

// ---------------------------------------------------------------- the epilogues
// s: the op's dot products (Dots<OP>::id order), k: the row's curvature.  Writes c[0..2] (vector ops: the
// coefficients of v0, v1, v2) or c[0] (dist2plane: the value).
template <int OP, typename T> GEO_HD void eval(const T* s, const T& k, int flags, T* c);

// geoopt's gyration closed form, gyr[a, b]u = u + ca a + cb b, ca = 2 na / D, cb = 2 nb / D with
//   na = -k^2 au bb - k bu + 2k^2 ab bu,  nb = -k^2 bu aa + k au,  D = 1 - 2k ab + k^2 aa bb  (clamped at 1e-15).
// For k < 0 and b near -a near the boundary (the transport's close x, y) all three cancel: the output's error is
// ~eps |na - nb| / D ~ eps / D, D ~ (1 + k aa)^2 + |k| |a + b|^2 down to 1e-12 (3e-5 in float64, session 42).  With
// d = a + b (dd = |d|^2, du = <d, u> accumulated directly) they are, exactly,
//   na = T - k du (1 - 2k ab) - k^2 au dd,  nb = T - k^2 aa du,  T = k au (1 + k aa),
//   D = (1 + k aa)(1 + k bb) - k dd  (non-negative terms for k <= 0; stereo_math.h, sub_den),
// with 1 - 2k ab taken as (1 + k aa) + k bb - k dd (2ab = dd - aa - bb: equal; for points in the ball each term is
// O(1), so its rounding stays ~eps as with a summed ab, and the form reads five sums, dots_mask_nonpos),
// every term small there (1 + k aa, du, dd) and T, the one term that is not ~|d|, shared: its rounding moves the
// output by 2 dT d / D only (dT ~ eps), so the error is ~eps / (1 + k aa), the rounding of aa itself.  k <= 0 rows
// take this form (per row, as sub_den; the dual numbers differentiate the form taken), k > 0 rows geoopt's: there
// 1 + k aa >= 1 and b near -a cancels nothing, while the rewrite's T and k^2 au dd are ~k^2 au aa for far points and
// small b (d ~ a), where geoopt's terms are not.  Equal for k = 0 (na = nb = 0, D = 1).
template <typename T>
GEO_HD void gyr_coefs(const T& a2, const T& b2, const T& ab, const T& au, const T& bu, const T& dd, const T& du,
                      const T& k, T& ca, T& cb) {
  const T k2 = k * k;
  T na, nb, d;
  if (val(k) > 0) {
    na = -k2 * au * b2 - k * bu + 2.0 * k2 * ab * bu;
    nb = -k2 * bu * a2 + k * au;
    d = 1.0 - 2.0 * k * ab + k2 * a2 * b2;
  } else {
    const T pa = 1.0 + k * a2;
    const T t = k * au * pa;
    na = t - k * du * (pa + k * b2 - k * dd) - k2 * au * dd;
    nb = t - k2 * a2 * du;
    d = pa * (1.0 + k * b2) - k * dd;
  }
  d = t_max(d, stereo::min_den<double>());
  ca = 2.0 * na / d;
  cb = 2.0 * nb / d;
}

template <typename T> GEO_HD void eval_gyration(const T* s, const T& k, T* c) {
  // s = (aa, bb, ab, au, bu, dd, du), d = a + b (op_e_plus)
  gyr_coefs(s[0], s[1], s[2], s[3], s[4], s[5], s[6], k, c[0], c[1]);
  c[2] = T(1.0);
}

template <typename T> GEO_HD void eval_parallel_transport(const T* s, const T& k, T* c) {
  // v0 = x, v1 = y, v2 = v: gyr[y, -x] v * lambda_x / lambda_y; s = (xx, yy, xy, xv, yv, ee, ev), e = x - y:
  // a = y, b = -x, u = v, d = a + b = -e
  T ca, cb;
  gyr_coefs(s[1], s[0], -s[2], s[4], -s[3], s[5], -s[6], k, ca, cb);
  const T lx = 2.0 / t_max(1.0 + k * s[0], stereo::min_den<double>());
  const T ly = 2.0 / t_max(1.0 + k * s[1], stereo::min_den<double>());
  const T ratio = lx / ly;
  c[0] = -(cb * ratio);
  c[1] = ca * ratio;
  c[2] = ratio;
}

template <typename T> GEO_HD void eval_dist2plane_rows(const T* s, const T& k, int flags, T* c);

// dist2plane with x far out on the sphere (session 40): k xx > 1, xx > pp (x the farther point: the x form's case,
// p in logmap's x place) and not close to p (ee > xx / 4).  The value is fine in the x form, but its gradient
// dx = 2 (G_xx + G_ee) x + (G_xp - 2 G_ee + G_pe) p + (G_xa + G_ea) a cancelled: x enters through ee ~ xx and den's
// k^2 pp xx, whose adjoints times x are ~|x| / |p| times dx (~1e-13 in float64, 4-6x the eager reference's error).
// On the sphere the gyroplane is a great sphere, closed under the antipodal map x -> x* = -x / (k xx), which negates
// the signed distance: dist2plane(x) = -dist2plane(x*) (signed; the same unsigned or scaled).  x* lies inside the
// equator (k |x*|^2 = 1 / (k xx) < 1), and its dot products are exact rewrites of x's with no x-sized term left:
//   x*x* = 1 / (k^2 xx),  <x*, p> = c xp,  <x*, a> = c xa  (c = -1 / (k xx)),
//   |x* - p|^2 = (1 + 2k xp) / (k^2 xx) + pp  (= den / (k^2 xx); not c^2 xx - 2c xp + pp, whose xx-terms cancel),
//   <x* - p, p> = c xp - pp,  <x* - p, a> = c xa - pa;
// the dual numbers carry the chain rule back to x's dot products (every derivative of the rewrite is ~1 / xx times
// its own term: no cancellation).  Close pairs (ee <= xx / 4) keep the x form, whose <e, a> keeps a small distance's
// digits; there den* = 1 - 2 xp / xx + pp / xx = ee / xx would cancel.
template <typename T> GEO_HD void eval_dist2plane(const T* s, const T& k, int flags, T* c) {
  const T& xx = s[0];
  if (val(k) * val(xx) > 1.0 && val(xx) > val(s[1]) && val(s[5]) > 0.25 * val(xx)) {
    const T& pp = s[1];
    const T& xp = s[2];
    const T& pa = s[3];
    const T& xa = s[8];
    const T ik2 = 1.0 / (k * k * xx);
    const T cx = -1.0 / (k * xx);
    const T cxp = cx * xp, cxa = cx * xa;
    const T t[9] = {ik2, pp, cxp, pa, s[4], (1.0 + 2.0 * k * xp) * ik2 + pp, cxp - pp, cxa - pa, cxa};
    eval_dist2plane_rows(t, k, flags, c);
    if (flags & SIGNED) c[0] = -c[0];
    return;
  }
  eval_dist2plane_rows(s, k, flags, c);
}

template <typename T> GEO_HD void eval_dist2plane_rows(const T* s, const T& k, int flags, T* c) {
  // v0 = x, v1 = p, v2 = a; s = (xx, pp, xp, pa, aa, ee, pe, ea, xa) with e = x - p.
  // diff = (-p) (+)_k x = N / max(den, 1e-15), den = 1 + 2k <x,p> + k^2 pp xx = P - k ee (P = (1 + k pp)(1 + k xx)),
  // |N|^2 = ee den, in logmap's two forms
  // (stereo_math.h, logmap_y_form, with p in logmap's x place): the x form N = B e + k ee p, B = 1 + k pp (the
  // numerator (1 + 2k<x,p> - k xx)(-p) + B x rewritten so that close x, p keep their digits), and, where k pp > 1
  // and pp > xx (p far out on the sphere, where the x form's terms cancel: float64 values 1e-11 off at |p| ~ 100,
  // session 39), the y form N = k ee x + (1 + 2k xp - k xx) e, |diff|^2 = ee / den
  const T& xx = s[0];
  const T& pp = s[1];
  const T& xp = s[2];
  const T& pa = s[3];
  const T& aa = s[4];
  const T& ee = s[5];
  const T& pe = s[6];
  const T& ea = s[7];
  const T& xa = s[8];
  const T B = 1.0 + k * pp;
  const T P = B * (1.0 + k * xx);
  // den = P - k ee for k <= 0 (non-negative terms; the first form cancels for close x, p near the boundary),
  // 1 + 2k xp + k^2 pp xx for k > 0 (stereo_math.h, sub_den, session 41); the dual numbers follow the form taken
  const T den = t_max(stereo::sub_den(P, pp, xx, xp, ee, k), stereo::min_den<double>());
  const T kee = k * ee;
  const bool yf = val(k) * val(pp) > 1.0 && val(pp) > val(xx);
  T sc = yf ? (kee * xa + (1.0 + 2.0 * k * xp - k * xx) * ea) / den : (B * ea + kee * pa) / den;
  if (!(flags & SIGNED)) sc = t_abs(sc);
  const T an = t_sqrt(aa);
  // 1 + k |diff|^2: for k <= 0 as P / den (= (den + k ee) / den; 1 + k |diff|^2 cancels where |diff| nears the
  // boundary; |diff|^2's 1e-15 clamp moved it by at most |k| 1e-15), for k > 0 from |diff|^2 as before
  T q;
  if (val(k) > 0) {
    const T diff2 = yf ? t_max(ee / den, 1e-15)
                       : t_max((B * B * ee + 2.0 * B * kee * pe + kee * kee * pp) / (den * den), 1e-15);
    q = 1.0 + k * diff2;
  } else {
    q = P / den;
  }
  T dd = q * an;
  dd = val(dd) >= 0 ? t_max(dd, 1e-15) : t_min(dd, -1e-15);
  T d = arsin_k(2.0 * sc / dd, k);
  if (flags & SCALED) d = d * an;
  c[0] = d;
}

template <int OP, typename T> GEO_HD void eval(const T* s, const T& k, int flags, T* c) {
  if constexpr (OP == GYRATION) {
    eval_gyration(s, k, c);
  } else if constexpr (OP == PARALLEL_TRANSPORT) {
    eval_parallel_transport(s, k, c);
  } else if constexpr (OP == PARALLEL_TRANSPORT0) {
    c[0] = T(0.0);  // v0 = y, v1 = v: v * max(1 + k yy, 1e-15)
    c[1] = t_max(1.0 + k * s[0], stereo::min_den<double>());
  } else if constexpr (OP == PARALLEL_TRANSPORT0BACK) {
    c[0] = T(0.0);  // v0 = x, v1 = v: v / max(1 + k xx, 1e-15)
    c[1] = 1.0 / t_max(1.0 + k * s[0], stereo::min_den<double>());
  } else {
    eval_dist2plane(s, k, flags, c);
  }
}

// The adjoints of the dot products, G[NUM_DOTS], as vector gradients: dv_i = sum_j W[i][j] v_j (i, j < 3).
//   <v0,v0>: dv0 += 2G v0;  <v0,v1>: dv0 += G v1, dv1 += G v0;  e = v0 - p v1 (p = -1 where op_e_plus, else 1):
//   |e|^2: dv0 += 2G e, dv1 -= 2pG e;  <e,v1>: dv0 += G v1, dv1 += G (v0 - 2p v1);
//   <e,v2>: dv0 += G v2, dv1 -= pG v2, dv2 += G e
GEO_HD void dot_adjoint_coefs(const double* G, double W[3][3], bool e_plus = false) {
  const double p = e_plus ? -1.0 : 1.0;
  W[0][0] = 2 * G[S00] + 2 * G[SEE];
  W[0][1] = G[S01] - 2 * p * G[SEE] + G[SE1];
  W[0][2] = G[S02] + G[SE2];
  W[1][0] = G[S01] - 2 * p * G[SEE] + G[SE1];
  W[1][1] = 2 * G[S11] + 2 * G[SEE] - 2 * p * G[SE1];
  W[1][2] = G[S12] - p * G[SE2];
  W[2][0] = G[S02] + G[SE2];
  W[2][1] = G[S12] - p * G[SE2];
  W[2][2] = 2 * G[S22];
}

}  // namespace triple
}  // namespace geoops
