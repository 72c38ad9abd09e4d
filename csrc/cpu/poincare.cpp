// Poincaré fully-connected layer on the CPU: one GEMM (at::mm, MKL) plus fused row-wise epilogues.
//
// Ball of curvature -c, sc = sqrt(c).  For a row x (|x|^2 = X, lam = 2 / (1 - c X)) and the layer's column j
// (orientation z_j = z[:, j], zn_j = max(|z_j|, 1e-15), offset r_j):
//
//   t_j = <x, z_j>                                      (the GEMM)
//   a_j = sc lam t_j ch_j / zn_j - (lam - 1) sh_j,       ch_j = cosh(2 sc r_j), sh_j = sinh(2 sc r_j)
//   v_j = (2 zn_j / sc) asinh(a_j)                       (signed distance to hyperplane j, HNN++)
//   w_j = sinh(sc v_j) / sc = sinh(u_j) / sc,            u_j = 2 zn_j asinh(a_j)
//   y   = w / (1 + sqrt(1 + c |w|^2)),  then projected into the ball of radius (1 - eps) / sqrt(c)
//
// (without offsets ch = 1, sh = 0).  asinh and sinh are evaluated as log1p / expm1 on at::vec vectors
// (SLEEF), accurate near 0.  The backward recomputes a, u, w per row from the saved t (no transcendental
// is stored), forms dL/dt row by row and finishes with the two GEMMs dx = dt z^T + (row term) x and
// dz = x^T dt + (column term) z; the column terms (through zn, ch, sh) are reduced per thread in double.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "poincare.h"
#include "knobs.h"
#include "row_norms.h"
#include "vec_math.h"
#include "vec_math_inl.h"  // vecmath::LaneMath (tanc on SIMD lanes of rows)
#include "mkl_packed.h"
#include "poincare_gemm.h"
#include "vec_log.h"  // vecmath::any_lane
#include "poincare_rows.h"  // grain
#include "poincare_paths.h"  // AVX2: paths::rows_to_cols8 / cols_to_rows8 (the FC rows on 8 row lanes)

#include <cstdlib>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

using at::vec::Vectorized;

// m (>= 0 or +0) with the sign bit of s: two bit operations (Vectorized::copysign is an out-of-line SLEEF call,
// which spilled every live vector register around it in the row passes' element loops)
template <typename T>
inline Vectorized<T> with_sign_of(const Vectorized<T>& m, const Vectorized<T>& s) {
  return m | (s & Vectorized<T>(T(-0.0)));
}

// asinh(a) = sign(a) log1p(|a| + a^2 / (1 + sqrt(1 + a^2)))
template <typename T>
inline Vectorized<T> asinh_v(const Vectorized<T>& a) {
  using V = Vectorized<T>;
  const V one(T(1));
  const V ax = a.abs();
  const V a2 = ax * ax;
  return with_sign_of((ax + a2 / (one + (a2 + one).sqrt())).log1p(), a);
}

// sinh(|u|) and cosh(|u|) from e = expm1(|u|) (no cancellation near 0, no inf/inf for large |u|)
template <typename T>
inline void sinh_cosh_abs(const Vectorized<T>& au, Vectorized<T>& sh, Vectorized<T>& chv) {
  using V = Vectorized<T>;
  const V one(T(1)), half(T(0.5));
  const V e = au.expm1();
  const V ep1 = e + one;
  const V big = V(T(1e30));
  V frac = e / ep1;
  frac = V::blendv(frac, one, e > big);
  sh = (e + frac) * half;
  chv = (ep1 + one / ep1) * half;
}

// Offsets beyond kOffsetScaledFrom (poincare.h): scaled columns; such a layer takes the scaled row pass (in
// double) for every row.
struct ColConsts {
  std::vector<double> zn, ch, sh;  // double: used by the backward's column terms
  std::vector<double> q, ell;      // the scaled columns' e^(-2 ell) and ell (1 and 0 elsewhere)
  bool clamped_any = false;
  bool scaled_any = false;  // some column scaled: every row takes the scaled row pass
};

template <typename T>
ColConsts column_consts(const at::Tensor& z, const at::Tensor& bias, double sc) {
  const int64_t n = z.size(0), m = z.size(1);
  const T* zp = z.data_ptr<T>();
  ColConsts cc;
  cc.zn.assign(m, 0.0);
  cc.ch.assign(m, 1.0);
  cc.sh.assign(m, 0.0);
  cc.q.assign(m, 1.0);
  cc.ell.assign(m, 0.0);
  for (int64_t d = 0; d < n; ++d) {
    const T* zr = zp + d * m;
    for (int64_t j = 0; j < m; ++j) cc.zn[j] += double(zr[j]) * double(zr[j]);
  }
  for (int64_t j = 0; j < m; ++j) cc.zn[j] = std::max(std::sqrt(cc.zn[j]), 1e-15);
  if (bias.numel() > 0) {
    const T* bp = bias.data_ptr<T>();
    for (int64_t j = 0; j < m; ++j) {
      const double s = 2.0 * sc * double(bp[j]);
      cc.ell[j] = offset_col(s, cc.ch[j], cc.sh[j], cc.q[j],
                             std::is_same_v<T, float> ? kOffsetScaledFromF32 : kOffsetScaledFrom);
      if (cc.ell[j] > 0) cc.scaled_any = true;
    }
  }
  return cc;
}

template <typename T>
std::vector<double> row_sq(const at::Tensor& x) {
  std::vector<double> X(x.size(0));
  row_sqnorms(x.data_ptr<T>(), x.size(0), x.size(1), X.data());
  return X;
}

// Tangent input (poincare_fc of project(expmap0(u))): row i's point is x_i = s_i u_i with
// s = tanh(sc n) / (sc n), n = max(|u|, 1e-15), or maxnorm / n where that point lies beyond maxnorm.
// Returns s per row and turns U = |u|^2 into X = |x|^2 in place; dsdn_n = (ds/dn) / n and dsdc = ds/dc.
struct TangentRows {
  std::vector<double> s, dsdn_n, dsdc;
};

// per-column constants in the compute type, laid out for vector loads
template <typename T>
struct ColVec {
  std::vector<T> C, S, Z2;  // ch / zn, sh, 2 zn
  std::vector<T> Zt;        // Z2 repeated for `rows` rows (the flat row-block layout)
  bool all_scaled = false;  // every row to the scaled row pass (ColConsts::scaled_any)
  explicit ColVec(const ColConsts& cc, int64_t rows = 0) : all_scaled(cc.scaled_any) {
    const int64_t m = cc.zn.size();
    C.resize(m); S.resize(m); Z2.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      C[j] = T(cc.ch[j] / cc.zn[j]);
      S[j] = T(cc.sh[j]);
      Z2[j] = T(2.0 * cc.zn[j]);
    }
    Zt.resize(rows * m);
    for (int64_t i = 0; i < rows; ++i) std::copy(Z2.begin(), Z2.end(), Zt.begin() + i * m);
  }
  // C and S finite in T (cosh(2 sc r) of a large offset overflows float32 beyond 89): else every row takes the
  // scaled row pass (in double), and the row-lane paths, which form products with C and S of every lane, are off
  bool finite() const {
    if (all_scaled) return false;
    for (size_t j = 0; j < C.size(); ++j)
      if (!std::isfinite(C[j]) || !std::isfinite(S[j])) return false;
    return true;
  }
};

// (e^r - 1) / r for the reduced argument |r| <= ln2 / 2 of the float exps below: Taylor terms to r^6 (Horner)
inline Vectorized<float> expm1_over_r_f(const Vectorized<float>& r) {
  using V = Vectorized<float>;
  V p(1.f / 5040.f);
  p = at::vec::fmadd(p, r, V(1.f / 720.f));
  p = at::vec::fmadd(p, r, V(1.f / 120.f));
  p = at::vec::fmadd(p, r, V(1.f / 24.f));
  p = at::vec::fmadd(p, r, V(1.f / 6.f));
  p = at::vec::fmadd(p, r, V(0.5f));
  return at::vec::fmadd(p, r, V(1.f));
}

// e^x of float vectors with 1 <= x (the sinh / cosh side of sinh_cosh_abs_f), inline (no SLEEF call, which
// spilled every live vector register): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor
// polynomial to r^7 (truncation < 6e-9 relative), times 2^(n-1) * 2 (so that e^x just below the float maximum
// stays finite); x is clamped at 89 (e^89 > FLT_MAX: inf, as SLEEF's expf).  Without AVX-512/AVX2: SLEEF's.
inline Vectorized<float> exp_ge1_f(const Vectorized<float>& x_in) {
  using V = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const V x = at::vec::minimum(x_in, V(89.f));
  const V n = (x * V(1.44269504088896341f)).round();
  const V r = (x - n * V(0.693145751953125f)) - n * V(1.42860682030941723e-06f);
  V p = expm1_over_r_f(r);
  p = at::vec::fmadd(p, r, V(1.f));
  const V p2 = vecmath::pow2_f(n, 126);  // 2^(n-1)
  return (p * p2) * V(2.f);
#else
  return x_in.exp();
#endif
}

// float32: asinh and sinh/cosh from log / exp (inline: vecmath::log_pos, exp_ge1_f; no SLEEF call, no
// double-float arithmetic as in log1p / expm1) with odd Taylor polynomials near 0, where
// log(|a| + sqrt(1 + a^2)) and (e^u - e^-u) / 2 cancel:
//   asinh(a) = a (1 - a^2/6 + 3a^4/40 - ...), |a| < 1/2 (terms to a^21: truncation < 1e-9 relative)
//   sinh(u)  = u (1 + u^2/6 + u^4/120 + ...),   |u| < 1   (terms to u^13: truncation < 1e-10 relative)
// Both sides are evaluated where a vector's lanes need both and blended per lane; e^|u| overflows to inf
// beyond 88.7, as expm1 did.  NaN lanes take the series (NaN out).
// log(|a| + sqrt(1 + a^2)) for |a| >= 1/2; beyond 1e18 (a^2 near float overflow) as log(2 |a|)
inline Vectorized<float> asinh_log_f(const Vectorized<float>& ax, const Vectorized<float>& a2) {
  using V = Vectorized<float>;
  const V w = V::blendv(ax + (a2 + V(1.f)).sqrt(), ax + ax, ax > V(1e18f));
  return vecmath::log_pos(w);
}
inline Vectorized<float> asinh_abs_f(const Vectorized<float>& ax) {
  using V = Vectorized<float>;
  const V a2 = ax * ax;
  const V is_big = ax >= V(0.5f);
  const bool any_big = vecmath::any_lane(is_big);
  if (any_big && is_big.zero_mask() == 0) return asinh_log_f(ax, a2);  // no lane needs the series
  // the series coefficients (-1)^k (2k)! / (4^k (k!)^2 (2k + 1)), k = 10 .. 1
  V p(0.0083903358f);
  p = at::vec::fmadd(p, a2, V(-0.0097616095f));
  p = at::vec::fmadd(p, a2, V(0.0115518009f));
  p = at::vec::fmadd(p, a2, V(-0.0139648438f));
  p = at::vec::fmadd(p, a2, V(0.0173527644f));
  p = at::vec::fmadd(p, a2, V(-0.0223721591f));
  p = at::vec::fmadd(p, a2, V(0.0303819444f));
  p = at::vec::fmadd(p, a2, V(-0.0446428571f));
  p = at::vec::fmadd(p, a2, V(0.075f));
  p = at::vec::fmadd(p, a2, V(-0.1666666667f));
  const V small = at::vec::fmadd(p * a2, ax, ax);
  if (!any_big) return small;  // no lane needs log / sqrt
  return V::blendv(small, asinh_log_f(ax, a2), is_big);
}

// sinh(|u|) and cosh(|u|), float32 (see asinh_abs_f)
inline void sinh_cosh_abs_f(const Vectorized<float>& au, Vectorized<float>& sh, Vectorized<float>& chv) {
  using V = Vectorized<float>;
  const V half(0.5f);
  const V u2 = au * au;
  V p(1.f / 6227020800.f);  // 1/13!
  p = at::vec::fmadd(p, u2, V(1.f / 39916800.f));
  p = at::vec::fmadd(p, u2, V(1.f / 362880.f));
  p = at::vec::fmadd(p, u2, V(1.f / 5040.f));
  p = at::vec::fmadd(p, u2, V(1.f / 120.f));
  p = at::vec::fmadd(p, u2, V(1.f / 6.f));
  const V small = at::vec::fmadd(p * u2, au, au);
  if (!vecmath::any_lane(au >= V(1.f))) {  // every lane |u| < 1: no exp / division; cosh(u) = sum u^2k/(2k)!
    V q(1.f / 479001600.f);                // 1/12!: truncation < 1e-10 relative
    q = at::vec::fmadd(q, u2, V(1.f / 3628800.f));
    q = at::vec::fmadd(q, u2, V(1.f / 40320.f));
    q = at::vec::fmadd(q, u2, V(1.f / 720.f));
    q = at::vec::fmadd(q, u2, V(1.f / 24.f));
    q = at::vec::fmadd(q, u2, V(0.5f));
    sh = small;
    chv = at::vec::fmadd(q, u2, V(1.f));
    return;
  }
  const V e = exp_ge1_f(au);  // lanes with |u| < 1 take the series below
  // (the division measured faster than rcp14 + one Newton step here: 0.9x the forward's time, interleaved)
  const V ie = V(1.f) / e;
  sh = V::blendv((e - ie) * half, small, au < V(1.f));
  chv = (e + ie) * half;
}

// One vector's a -> A = asinh(a), w = sinh(Z A) / sc and cosh(Z A) (Z = 2 zn > 0, so |u| = Z |A|, sign(u) = sign(a)).
template <typename T>
inline void lane_math(const Vectorized<T>& a, const Vectorized<T>& Z, T inv_sc, Vectorized<T>& A, Vectorized<T>& w,
                      Vectorized<T>& chv) {
  Vectorized<T> sh;
  if constexpr (std::is_same_v<T, float>) {
    const Vectorized<T> Aabs = asinh_abs_f(a.abs());
    A = with_sign_of(Aabs, a);
    sinh_cosh_abs_f(Z * Aabs, sh, chv);
  } else {
    A = asinh_v(a);
    sinh_cosh_abs((Z * A).abs(), sh, chv);
  }
  w = with_sign_of(sh, a) * Vectorized<T>(inv_sc);
}

// Row blocks.  The per-row scalars of a block of rows (|x|^2, the tangent rows' scale s = tanh(q)/q on SIMD
// vectors of doubles, lam, k1 = sc lam s, k0 = lam - 1, later |w|^2 and the output scale) are formed
// for the whole block at once, and the element math (asinh, sinh/cosh) runs on full vectors over the block:
// row by row when m is a multiple of the vector width (or large), else over the block's rows as one flat array
// (m = 8 or 16 in the convolutions: a row is less than one vector), the per-row factors expanded per element.
constexpr int64_t kRowBlock = 128;

template <typename T>
struct BlockBuf {
  double X[kRowBlock], U[kRowBlock], s[kRowBlock], k1[kRowBlock], k0[kRowBlock], lam[kRowBlock], z[kRowBlock];
  double Sw[kRowBlock], G[kRowBlock], R[kRowBlock];  // R: the backward's per-row direct dc terms (row lanes)
  int64_t bad[kRowBlock], nbad = 0;  // rows whose |w|^2 overflowed (sinh): redone by the scaled row pass below
  std::vector<T> P, Q;  // flat: k1_i C_j and k0_i S_j per element
  explicit BlockBuf(int64_t m, bool flat) {
    if (flat) { P.resize(kRowBlock * m); Q.resize(kRowBlock * m); }
  }
};

// The scaled row pass: rows whose w_j = sinh(u_j) / sc (u_j = 2 zn_j asinh(a_j)) or |w|^2 overflow or near it
// (largest |u_j| = T beyond ~35 in float32, ~320 in float64; the true output lies near the boundary, projected) are redone
// in double, one row at a time, with w scaled by sigma = sinh(T):
//   v_j = sinh(u_j) / sigma = (e^(u_j - T) - e^(-u_j - T)) / -expm1(-2T),  ch_j = cosh(u_j) / sigma likewise,
//   q = 1 / sigma,  Sh = hypot(q, |v|),  Dh = q + Sh:  y = v / (sc Dh), or maxnorm v / |v| where that lies beyond
//   maxnorm (sigma = 1 below T = 20: then v = sc w, q = 1 and these are the direct formulas).
// The backward in the same scaled terms: dL/dw = Gam / sigma with Gam = (B + g q Dh) / (Dh^2 Sh), B_j = g_j |v|^2 -
// v_j <g, v> (projected: Gam = sc maxnorm B / |v|^3), so that every product the row pass forms (dL/dw w,
// dL/dw cosh(u)/sc, the direct dc term) is a finite product of scaled factors.  B of the largest |v_j| (where
// v_j^2 ~ |v|^2 and the two terms cancel) as sum_{k != j} v_k (g_j v_k - v_j g_k).  The fast passes detect such a row by its |w|^2
// (not finite) and hand it here; no other row changes.
// The fast passes hand a row here once |w|^2 exceeds sw_max (or is not finite): |w| > 1e15 (float; the forward's
// scale maxnorm / |w| and the backward's dL/dw ~ g / |w| then near float's smallest normals) or 1e140 (double);
// |w| > 1e15 means sc times a distance > ~35, a row within 1e-15 of the boundary (projected).
template <typename T>
constexpr double sw_max() { return std::is_same_v<T, float> ? 1e30 : 1e280; }

struct ScaledRow {
  std::vector<double> t, a, A, v, ch;
  double q = 1, Sv = 0, Sh = 1, Dh = 2;
};

// the point's scalars of a row from its |x|^2 (or |u|^2 of a tangent row): s, lam, and X = |x|^2
inline void row_point(double U, bool tangent, double c, double sc, double maxnorm, double& s, double& lam, double& X) {
  s = 1.0;
  if (tangent) {
    const double n = std::max(std::sqrt(U), 1e-15), q = sc * n;
    s = q < 1e-8 ? 1.0 : std::tanh(q) / q;
    if (s * n > maxnorm) s = maxnorm / n;
  }
  X = s * s * U;
  lam = 2.0 / (1.0 - c * X);
}

// a, A, u -> v, ch, q, Sv, Sh, Dh of one row (r.t holds its t in double); k1 = sc lam s, k0 = lam - 1
inline void scaled_row(ScaledRow& r, int64_t m, const ColConsts& cc, double k1, double k0) {
  r.a.resize(m); r.A.resize(m); r.v.resize(m); r.ch.resize(m);
  double T = 0;
  for (int64_t j = 0; j < m; ++j) {
    r.a[j] = k1 * r.t[j] * (cc.ch[j] / cc.zn[j]) - k0 * cc.sh[j];  // b = a e^-ell of a scaled column
    r.A[j] = cc.ell[j] > 0 ? asinh_scaled_col(r.a[j], cc.ell[j], cc.q[j]) : std::asinh(r.a[j]);
    r.v[j] = 2.0 * cc.zn[j] * r.A[j];  // u_j for now
    T = std::max(T, std::abs(r.v[j]));
  }
  const bool scaled = T > 20.0;
  const double den = scaled ? -std::expm1(-2.0 * T) : 1.0;
  r.q = scaled ? 2.0 * std::exp(-T) / den : 1.0;
  r.Sv = 0;
  for (int64_t j = 0; j < m; ++j) {
    const double u = r.v[j];
    if (scaled) {
      const double ep = std::exp(u - T), em = std::exp(-u - T);
      r.v[j] = (ep - em) / den;
      r.ch[j] = (ep + em) / den;
    } else {
      r.v[j] = std::sinh(u);
      r.ch[j] = std::cosh(u);
    }
    r.Sv += r.v[j] * r.v[j];
  }
  r.Sh = std::hypot(r.q, std::sqrt(r.Sv));
  r.Dh = r.q + r.Sh;
}

// the forward of one such row: t row (double) -> y row
template <typename T>
void scaled_row_fwd(ScaledRow& r, T* y, int64_t m, const ColConsts& cc, double c, double sc, double U, bool tangent,
                    double maxnorm) {
  double s, lam, X;
  row_point(U, tangent, c, sc, maxnorm, s, lam, X);
  scaled_row(r, m, cc, sc * lam * s, lam - 1.0);
  const double nv = std::sqrt(r.Sv);
  const double f = nv / (sc * r.Dh) > maxnorm ? maxnorm / nv : 1.0 / (sc * r.Dh);
  for (int64_t j = 0; j < m; ++j) y[j] = T(r.v[j] * f);
}

// The backward of one such row (the point's s, lam, X from block_scalars): writes its dL/dt row, adds its column
// terms to the block's sums (fA: dL/dw w, fB: through sc in a, fZ: through zn in u (without the 2), fC, fS: through
// C = ch / zn and S = sh), and returns its per-row terms: rowc (the row coefficient through lam), gl (the dc term
// through lam), R (the direct dc term) and ug = t . dt.
struct ScaledRowGrads { double rowc, gl, R, ug; };

template <typename T>
ScaledRowGrads scaled_row_bwd(ScaledRow& r, const T* tr, const T* gr, T* gtr, int64_t m, const ColConsts& cc, double c,
                              double sc, double s, double lam, double X, double maxnorm, double dmax_dc,
                              T* fA, T* fB, T* fZ, T* fC, T* fS) {
  r.t.assign(tr, tr + m);
  const double k1 = sc * lam * s;
  scaled_row(r, m, cc, k1, lam - 1.0);
  double Gv = 0;
  for (int64_t j = 0; j < m; ++j) Gv += double(gr[j]) * r.v[j];
  const double nv = std::sqrt(r.Sv);
  const bool proj = nv / (sc * r.Dh) > maxnorm;
  int64_t jmax = 0;
  for (int64_t j = 1; j < m; ++j)
    if (std::abs(r.v[j]) > std::abs(r.v[jmax])) jmax = j;
  double Bmax = 0;
  for (int64_t k = 0; k < m; ++k)
    if (k != jmax) Bmax += r.v[k] * (double(gr[jmax]) * r.v[k] - r.v[jmax] * double(gr[k]));
  const double Bf = proj ? sc * maxnorm / (nv * r.Sv) : 1.0 / (r.Dh * r.Dh * r.Sh);  // Gam = Bf (B + Bq g)
  const double Bq = proj ? 0.0 : r.q * r.Dh;
  ScaledRowGrads o{0, 0, 0, 0};
  o.R = proj ? Gv / nv * dmax_dc : -Gv * r.Sv / (2.0 * sc * c * r.Dh * r.Dh * r.Sh);
  double glam = 0;
  for (int64_t j = 0; j < m; ++j) {
    const double B = j == jmax ? Bmax : double(gr[j]) * r.Sv - r.v[j] * Gv;
    const double Gam = Bf * (B + Bq * double(gr[j]));
    const double C = cc.ch[j] / cc.zn[j];
    const double gu = Gam * r.ch[j] / sc;                                   // dL/du_j
    const double ga = cc.ell[j] > 0 ? gu * 2.0 * cc.zn[j] * rsqrt_scaled_col(r.a[j], cc.q[j])  // dL/db_j
                                    : gu * 2.0 * cc.zn[j] / std::hypot(1.0, r.a[j]);          // dL/da_j
    const T gt = T(ga * k1 * C);
    gtr[j] = gt;
    const double tmp = ga * r.t[j] * s;
    glam += tmp * sc * C - ga * cc.sh[j];
    fA[j] += T(Gam * r.v[j] / sc);
    fB[j] += T(tmp * lam * C);
    fZ[j] += T(gu * r.A[j]);
    fC[j] += T(tmp * sc * lam);
    fS[j] -= T(ga * (lam - 1.0));
    o.ug += r.t[j] * double(gt);
  }
  o.rowc = glam * c * lam * lam;
  o.gl = glam * X * lam * lam * 0.5;
  return o;
}

template <typename T>
inline bool flat_rows(int64_t m) {
  constexpr int64_t L = Vectorized<T>::size();
  return m % L != 0 && m < 4 * L;
}

// rows [0, n) of a block: X holds |x|^2, or |u|^2 of tangent rows (then U keeps |u|^2, X becomes s^2 |u|^2,
// dn / dc (when given) get the scale's derivatives); fills s, lam, k1, k0
//
// The tangent rows' scalars run on SIMD vectors of doubles, one row per lane, both sides of each branch evaluated
// and blended (tangent_rows_lanes below).

// The tangent rows' scale on SIMD lanes of rows [0, n): n = max(|u|, 1e-15), q = sc n, s = tanh(q)/q (its series
// 1 - q^2/3 + 2q^4/15 below q = 1e-3: truncation < 1e-19, d/dq < 1e-12 relative), or maxnorm / n where s n would
// lie beyond maxnorm (projected); dn = (ds/dn) / n, dc = ds/dc.  Per lane, both sides of each branch evaluated and
// blended (a partial last vector: zero lanes, computed and not stored)
inline void tangent_rows_lanes(double* X, double* U, double* s, int64_t n, double c, double sc, double maxnorm,
                               double dmax_dc, double* dn, double* dc) {
  using VD = Vectorized<double>;
  constexpr int64_t L = VD::size();
  const VD one(1.0), tiny(1e-15), vsc(sc), vmax(maxnorm), vdm(dmax_dc), vmc(-c), two_sc(2.0 * sc);
  vecmath::LaneMath lm;
  for (int64_t i = 0; i < n; i += L) {
    const int64_t cnt = std::min<int64_t>(L, n - i);
    const VD Ui = VD::loadu(X + i, cnt);
    Ui.store(U + i, cnt);
    const VD nn = at::vec::maximum(Ui.sqrt(), tiny);
    const VD q = vsc * nn;
    const VD q2 = q * q;
    const VD small = q < VD(1e-3);
    VD si = one + q2 * (VD(-1.0 / 3.0) + q2 * VD(2.0 / 15.0));
    VD dsdq = q * (VD(-2.0 / 3.0) + q2 * VD(8.0 / 15.0));
    const VD th = lm.tanc(vmc * Ui) * q;  // tanc(-q^2) = tanh(q)/q, as tanc_n
    const VD sb = th / q;
    si = VD::blendv(sb, si, small);
    dsdq = VD::blendv(((one - th * th) - sb) / q, dsdq, small);
    const VD proj = si * nn > vmax;
    VD dnv = vsc * dsdq / nn, dcv = nn * dsdq / two_sc;
    if (vecmath::any_lane(proj)) {
      si = VD::blendv(si, vmax / nn, proj);
      dnv = VD::blendv(dnv, vmax.neg() / (nn * nn * nn), proj);
      dcv = VD::blendv(dcv, vdm / nn, proj);
    }
    si.store(s + i, cnt);
    (si * si * Ui).store(X + i, cnt);
    if (dn) dnv.store(dn + i, cnt);
    if (dc) dcv.store(dc + i, cnt);
  }
}

inline void block_scalars(double* X, double* U, double* s, double* lam, double* k1, double* k0,
                          int64_t n, bool tangent, double c, double sc, double maxnorm, double dmax_dc,
                          double* dn = nullptr, double* dc = nullptr) {
  if (tangent) {
    tangent_rows_lanes(X, U, s, n, c, sc, maxnorm, dmax_dc, dn, dc);
  } else {
    for (int64_t i = 0; i < n; ++i) s[i] = 1.0;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    lam[i] = 2.0 / (1.0 - c * X[i]);
    k1[i] = sc * lam[i] * s[i];
    k0[i] = lam[i] - 1.0;
  }
}

// The element math of rows [0, nr) of a block (tb: its t rows): f(offset, count, a, A, w, cosh) per vector, the
// offset into the block's (nr, m) elements.
template <typename T, typename F>
inline void block_lanes(const T* tb, int64_t nr, int64_t m, const ColVec<T>& cv, BlockBuf<T>& bb, T inv_sc, F&& f) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  if (!bb.P.empty()) {  // flat
    for (int64_t i = 0; i < nr; ++i) {
      const T k1 = T(bb.k1[i]), k0 = T(bb.k0[i]);
      T* Pr = bb.P.data() + i * m;
      T* Qr = bb.Q.data() + i * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) { Pr[j] = k1 * cv.C[j]; Qr[j] = k0 * cv.S[j]; }
    }
    const int64_t ne = nr * m;
    const T* Zt = cv.Zt.data();
    for (int64_t e = 0; e < ne; e += L) {
      const int64_t cnt = std::min<int64_t>(L, ne - e);
      V t, P, Q, Z;
      if (cnt == L) {
        t = V::loadu(tb + e); P = V::loadu(bb.P.data() + e); Q = V::loadu(bb.Q.data() + e); Z = V::loadu(Zt + e);
      } else {
        t = V::loadu(tb + e, cnt); P = V::loadu(bb.P.data() + e, cnt); Q = V::loadu(bb.Q.data() + e, cnt);
        Z = V::loadu(Zt + e, cnt);
      }
      const V a = t * P - Q;
      V A, w, chv;
      lane_math<T>(a, Z, inv_sc, A, w, chv);
      f(e, cnt, a, A, w, chv);
    }
    return;
  }
  for (int64_t i = 0; i < nr; ++i) {
    const V k1(T(bb.k1[i])), k0(T(bb.k0[i]));
    const T* tr = tb + i * m;
    for (int64_t j = 0; j < m; j += L) {
      const int64_t cnt = std::min<int64_t>(L, m - j);
      const V t = cnt == L ? V::loadu(tr + j) : V::loadu(tr + j, cnt);
      const V Cj = cnt == L ? V::loadu(cv.C.data() + j) : V::loadu(cv.C.data() + j, cnt);
      const V Sj = cnt == L ? V::loadu(cv.S.data() + j) : V::loadu(cv.S.data() + j, cnt);
      const V Zj = cnt == L ? V::loadu(cv.Z2.data() + j) : V::loadu(cv.Z2.data() + j, cnt);
      const V a = k1 * t * Cj - k0 * Sj;
      V A, w, chv;
      lane_math<T>(a, Zj, inv_sc, A, w, chv);
      f(i * m + j, cnt, a, A, w, chv);
    }
  }
}

template <typename T>
inline void store_n(const Vectorized<T>& v, T* p, int64_t cnt) {
  if (cnt == Vectorized<T>::size()) v.store(p);
  else v.store(p, cnt);
}

// the squared row norms: given (U, the epilogue-only entry) or computed from the rows of x
template <typename T>
std::vector<double> row_sq_or(const at::Tensor& x, const at::Tensor& U) {
  if (!U.defined()) return row_sq<T>(x);
  const T* up = U.data_ptr<T>();
  return std::vector<double>(up, up + U.numel());
}

// Short float rows on row lanes (fc_lanes16_on(): float32 with
// AVX-512, m <= 16: the convolutions' m = 8): 16 rows per vector, one column j at a time (a gather of 16 rows'
// t[:, j] at stride m; the outputs scattered back), so that the per-row sums (|w|^2, <g, w>, the backward's row
// coefficient and u . dt) are lane-wise adds over the columns instead of horizontal reductions per row, and the
// per-row scalars are 16-lane vectors.  The column sums of the backward are vector accumulators per column,
// reduced (a fixed shuffle tree) once per row block.  Same formulas; float sums in column order (the flat path
// sums a row with a shuffle tree): values agree to float rounding.
// AVX2 (session 29): the same lanes form with 8 rows per vector (kLanesF = 8), m <= 16 as well; the rows <->
// column vectors by 8 x 8 transposes of 8 columns at a time (paths::rows_to_cols8 / cols_to_rows8: masked loads
// and stores past m, no gathers, no scatters), the per-lane doubles two vectors of 4.  The AVX-512 functions are
// left as they were (their machine code unchanged); the AVX2 ones are twins of them, not one template: the
// gather / scatter + __mmask16 form and the transpose-per-8-columns form differ in every load and store.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kLanesF = Vectorized<float>::size();  // rows per lane vector: 16 (AVX-512), 8 (AVX2)
constexpr int64_t kLanesMaxM = 16;                      // columns per row on the lanes

// GEOOPS_POINCARE_FC_LANES16=0 (read per call) forces the 8-row double-lane path that m > 16, float64 and
// builds without AVX-512 / AVX2 run (the tests cover it that way).
inline bool fc_lanes16_on(int64_t m) {
  return m >= 1 && m <= kLanesMaxM && !knobs::off("GEOOPS_POINCARE_FC_LANES16");
}

// zero the per-row scalars of the lanes [nr, next multiple of kLanesF) of a block: padding lanes compute on zeros
template <typename T>
inline void pad_block_lanes(BlockBuf<T>& bb, int64_t nr) {
  for (int64_t i = nr; i < (nr + kLanesF - 1) / kLanesF * kLanesF && i < kRowBlock; ++i)
    bb.X[i] = bb.U[i] = bb.s[i] = bb.k1[i] = bb.k0[i] = bb.lam[i] = 0.0;
}

// tangent_k16's float part (the same on both ISAs): k1, k0 of the rows from the lane vectors nn = |u|, q = sc |u|,
// n and r (e^(-2 min(q, 9)) = 2^n e^r) and q2 = q^2 (formed in double by the ISA's tangent_k16).  always_inline: the
// code (and its FMA contraction, hence the bits) is that of one function, as when each tangent_k16 spelled it out.
__attribute__((always_inline)) inline void tangent_k_lanes(const Vectorized<float>& nn, const Vectorized<float>& q,
                                                           const Vectorized<float>& n, const Vectorized<float>& r,
                                                           const Vectorized<float>& q2, double sc, double maxnorm,
                                                           double lmax, Vectorized<float>& k1, Vectorized<float>& k0) {
  using V = Vectorized<float>;
  const V p = expm1_over_r_f(r) * r;  // e^r - 1
  const V p2 = vecmath::pow2_f(n);    // 2^n
  const V num = at::vec::fnmadd(p2, p, V(1.f) - p2), den = at::vec::fmadd(p2, p, V(1.f) + p2);
  const V e = at::vec::fmadd(p2, p, p2);
  const V ss = stereo::tanc_series(q2.neg());
  const V small = q2 < V(0.05f);
  const V s = V::blendv(num / (den * q), ss, small);
  const V lam = V::blendv((den * den) / (e + e), V(2.f) / at::vec::fnmadd(q2 * ss, ss, V(1.f)), small);
  k1 = V(float(sc)) * lam * s;
  k0 = lam - V(1.f);
  const V proj = s * nn > V(float(maxnorm));
  if (vecmath::any_lane(proj)) {
    k1 = V::blendv(k1, V(float(sc * lmax * maxnorm)) / nn, proj);
    k0 = V::blendv(k0, V(float(lmax - 1.0)), proj);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512)

// lane l -> l * m (the gather / scatter offsets of a group of 16 rows)
inline __m512i lane_rows(int64_t m) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(int(m)));
}
inline __mmask16 lane_mask(int64_t cnt) { return cnt >= kLanesF ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1u); }

// 16 doubles (two vectors) <-> one float vector, rounded as float(double)
inline __m512 f32_of(const __m512d lo, const __m512d hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}
inline __m512 f32_of(const double* p) { return f32_of(_mm512_loadu_pd(p), _mm512_loadu_pd(p + 8)); }
inline __m512d lo_pd(const __m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d hi_pd(const __m512 v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }

// The tangent rows' forward scalars k1 = sc lam s, k0 = lam - 1 of 16 rows in float lanes, in place of
// block_scalars' double-lane SLEEF tanh and its divisions (those measured ~25 % of the forward at the digits shape).
// q = sc max(|u|, 1e-15), s = tanh(q)/q, lam = 2 / (1 - tanh(q)^2):
//   q^2 < 0.05: s by stereo::tanc_series(-q^2) (truncation < 1e-10), lam = 2 / (1 - q^2 s^2) (q^2 s^2 < 0.05:
//     no cancellation);
//   else e = exp(-2q) = 2^n (1 + p), n = round(-2q / ln 2) <= -1, the reduction r = -2q - n ln 2 formed in
//     double and rounded once (so q's own rounding is not amplified by 2q), e^r - 1 = p by its Taylor polynomial
//     to r^7 (|r| <= ln2/2, truncation < 1e-8); s = ((1 - 2^n) - 2^n p) / (((1 + 2^n) + 2^n p) q) and
//     lam = 2 cosh(q)^2 = ((1 + 2^n) + 2^n p)^2 / (2 e): no cancelling difference (1 - 2^n >= 1/2), where the
//     float form 2 / (1 - c |x|^2) (the eager reference's) loses lam times a rounding near the boundary;
//   projected rows (s |u| > maxnorm): s = maxnorm / |u|, lam = 2 / (1 - c maxnorm^2) (double constants).
// Each of s and lam within a few float roundings (~4e-7 relative), k1 = sc lam s one more: the elements' a =
// k1 t C - k0 S are then within a few roundings of the double path's (which rounds k1, k0 to float too).  q is
// clamped at 9 for the exp (tanh(9) = 1 in float: such rows are projected for any eps >= 1.2e-7).
// The backward's first pass (fc_bwd_block_lanes16) recomputes a from the same k1, k0, so its w, A match the
// forward's; its derivative terms keep the double scalars.  Out of line (as it was with three callers): the
// compiler's FMA contraction of inlined float code depends on the surrounding code, and so would the bits.
__attribute__((noinline)) void tangent_k16(const double* U, double c, double sc, double maxnorm, Vectorized<float>& k1,
                        Vectorized<float>& k0) {
  using V = Vectorized<float>;
  const double lmax = 2.0 / (1.0 - c * maxnorm * maxnorm);
  __m512d nd[2], qd[2], n2[2], rd[2];
  for (int h = 0; h < 2; ++h) {
    nd[h] = _mm512_max_pd(_mm512_set1_pd(1e-15), _mm512_sqrt_pd(_mm512_loadu_pd(U + 8 * h)));  // NaN stays NaN
    qd[h] = _mm512_mul_pd(_mm512_set1_pd(sc), nd[h]);
    const __m512d x = _mm512_mul_pd(_mm512_set1_pd(-2.0), _mm512_min_pd(qd[h], _mm512_set1_pd(9.0)));
    n2[h] = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    rd[h] = _mm512_fnmadd_pd(n2[h], _mm512_set1_pd(0.69314718055994531), x);
  }
  const V nn(f32_of(nd[0], nd[1])), q(f32_of(qd[0], qd[1])), n(f32_of(n2[0], n2[1])), r(f32_of(rd[0], rd[1]));
  const V q2(f32_of(_mm512_mul_pd(qd[0], qd[0]), _mm512_mul_pd(qd[1], qd[1])));
  tangent_k_lanes(nn, q, n, r, q2, sc, maxnorm, lmax, k1, k0);
}

// fc_fwd_block's element math, output scale and store on row lanes (bb's scalars already formed by block_scalars)
// (out of line, so that the wide GEMM path's epilogue, fc_fwd_block, is compiled on its own)
__attribute__((noinline)) void fc_fwd_block_lanes16(const float* tb, float* yb, int64_t nr, BlockBuf<float>& bb,
                                                    bool tangent, const ColVec<float>& cv, double c, double sc,
                                                    double maxnorm, int64_t m, bool ftan) {
  using V = Vectorized<float>;
  const double inv_sc = 1.0 / sc;
  ftan = ftan && tangent;  // bb.X: |u|^2 of the rows (padding lanes zeroed below)
  if (!ftan)
    block_scalars(bb.X, bb.U, bb.s, bb.lam, bb.k1, bb.k0, nr, tangent, c, sc, maxnorm, 0.0);
  pad_block_lanes(bb, nr);
  const __m512i idx = lane_rows(m);
  alignas(64) float wbuf[kLanesF * kLanesF];
  const __m512d one = _mm512_set1_pd(1.0), vc = _mm512_set1_pd(c), vmax = _mm512_set1_pd(maxnorm);
  bb.nbad = 0;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const __mmask16 mk = lane_mask(nr - g0);
    V k1, k0;
    if (ftan) tangent_k16(bb.X + g0, c, sc, maxnorm, k1, k0);
    else k1 = V(f32_of(bb.k1 + g0)), k0 = V(f32_of(bb.k0 + g0));
    const float* tg = tb + g0 * m;
    __m512d slo = _mm512_setzero_pd(), shi = _mm512_setzero_pd();
    for (int64_t j = 0; j < m; ++j) {
      const V t = V(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, tg + j, 4));
      const V a = t * (k1 * V(cv.C[j])) - k0 * V(cv.S[j]);
      V A, w, chv;
      lane_math<float>(a, V(cv.Z2[j]), float(inv_sc), A, w, chv);
      w.store(wbuf + j * kLanesF);
      const __m512d wl = lo_pd(w), wh = hi_pd(w);
      slo = _mm512_fmadd_pd(wl, wl, slo);
      shi = _mm512_fmadd_pd(wh, wh, shi);
    }
    // the output scale per lane: 1 / (1 + sqrt(1 + c |w|^2)), or maxnorm / |w| where the point lies beyond maxnorm
    __m512d F[2];
    const __m512d S2[2] = {slo, shi};
    for (int h = 0; h < 2; ++h) {
      const __m512d q = _mm512_sqrt_pd(_mm512_fmadd_pd(vc, S2[h], one));
      const __m512d f = _mm512_div_pd(one, _mm512_add_pd(one, q));
      const __m512d nw = _mm512_sqrt_pd(S2[h]);
      const __mmask8 proj = _mm512_cmp_pd_mask(_mm512_mul_pd(nw, f), vmax, _CMP_GT_OQ);
      F[h] = _mm512_mask_blend_pd(proj, f, _mm512_div_pd(vmax, nw));
      // |w|^2 beyond sw_max or not finite: the scaled row pass redoes the row
      const __mmask8 nf = _mm512_cmp_pd_mask(S2[h], _mm512_set1_pd(sw_max<float>()), _CMP_NLE_UQ);
      if (nf)
        for (int l = 0; l < 8; ++l)
          if (((nf >> l) & 1) && g0 + 8 * h + l < nr) bb.bad[bb.nbad++] = g0 + 8 * h + l;
    }
    const V Fv = V(f32_of(F[0], F[1]));
    for (int64_t j = 0; j < m; ++j)
      _mm512_mask_i32scatter_ps(yb + g0 * m + j, mk, idx, V::loadu(wbuf + j * kLanesF) * Fv, 4);
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
// 8 doubles (two vectors of 4) <-> one float vector, rounded as float(double)
inline __m256 f32_of(const __m256d lo, const __m256d hi) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
inline __m256 f32_of(const double* p) { return f32_of(_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)); }
inline __m256d lo_pd(const __m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi_pd(const __m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
// lanes 4 h .. 4 h + 3 of the first n (the per-row doubles' stores of a partial group)
inline __m256i half_mask(int h, int n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - 4 * h), _mm256_setr_epi64x(0, 1, 2, 3));
}
// the sum of 8 floats (a fixed tree: halves, then pairs)
inline float hsum8(const float* p) {
  __m128 s = _mm_add_ps(_mm_loadu_ps(p), _mm_loadu_ps(p + 4));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// tangent_k16 of the AVX-512 build (see there: the same formulas and double steps) on 8 rows; the double part on
// two vectors of 4.
__attribute__((noinline)) void tangent_k16(const double* U, double c, double sc, double maxnorm, Vectorized<float>& k1,
                                           Vectorized<float>& k0) {
  using V = Vectorized<float>;
  const double lmax = 2.0 / (1.0 - c * maxnorm * maxnorm);
  __m256d nd[2], qd[2], n2[2], rd[2];
  for (int h = 0; h < 2; ++h) {
    nd[h] = _mm256_max_pd(_mm256_set1_pd(1e-15), _mm256_sqrt_pd(_mm256_loadu_pd(U + 4 * h)));  // NaN stays NaN
    qd[h] = _mm256_mul_pd(_mm256_set1_pd(sc), nd[h]);
    const __m256d x = _mm256_mul_pd(_mm256_set1_pd(-2.0), _mm256_min_pd(qd[h], _mm256_set1_pd(9.0)));
    n2[h] = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    rd[h] = _mm256_fnmadd_pd(n2[h], _mm256_set1_pd(0.69314718055994531), x);
  }
  const V nn(f32_of(nd[0], nd[1])), q(f32_of(qd[0], qd[1])), n(f32_of(n2[0], n2[1])), r(f32_of(rd[0], rd[1]));
  const V q2(f32_of(_mm256_mul_pd(qd[0], qd[0]), _mm256_mul_pd(qd[1], qd[1])));
  tangent_k_lanes(nn, q, n, r, q2, sc, maxnorm, lmax, k1, k0);
}

// fc_fwd_block_lanes16 on AVX2: groups of 8 rows, 8 columns at a time through one transpose each way
__attribute__((noinline)) void fc_fwd_block_lanes16(const float* tb, float* yb, int64_t nr, BlockBuf<float>& bb,
                                                    bool tangent, const ColVec<float>& cv, double c, double sc,
                                                    double maxnorm, int64_t m, bool ftan) {
  using V = Vectorized<float>;
  const double inv_sc = 1.0 / sc;
  ftan = ftan && tangent;  // bb.X: |u|^2 of the rows (padding lanes zeroed below)
  if (!ftan)
    block_scalars(bb.X, bb.U, bb.s, bb.lam, bb.k1, bb.k0, nr, tangent, c, sc, maxnorm, 0.0);
  pad_block_lanes(bb, nr);
  alignas(32) float wbuf[kLanesMaxM * kLanesF];
  const __m256d one = _mm256_set1_pd(1.0), vc = _mm256_set1_pd(c), vmax = _mm256_set1_pd(maxnorm);
  const __m256d swm = _mm256_set1_pd(sw_max<float>());
  bb.nbad = 0;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const int nl = int(std::min<int64_t>(kLanesF, nr - g0));
    V k1, k0;
    if (ftan) tangent_k16(bb.X + g0, c, sc, maxnorm, k1, k0);
    else k1 = V(f32_of(bb.k1 + g0)), k0 = V(f32_of(bb.k0 + g0));
    __m256d S2[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t d0 = 0; d0 < m; d0 += 8) {
      const int64_t n = std::min<int64_t>(8, m - d0);
      __m256 r[8];
      paths::rows_to_cols8(tb + g0 * m + d0, m, nl, n, r);
      for (int64_t d = 0; d < n; ++d) {
        const int64_t j = d0 + d;
        const V a = V(r[d]) * (k1 * V(cv.C[j])) - k0 * V(cv.S[j]);
        V A, w, chv;
        lane_math<float>(a, V(cv.Z2[j]), float(inv_sc), A, w, chv);
        w.store(wbuf + j * kLanesF);
        const __m256d wl = lo_pd(w), wh = hi_pd(w);
        S2[0] = _mm256_fmadd_pd(wl, wl, S2[0]);
        S2[1] = _mm256_fmadd_pd(wh, wh, S2[1]);
      }
    }
    // the output scale per lane: 1 / (1 + sqrt(1 + c |w|^2)), or maxnorm / |w| where the point lies beyond maxnorm
    __m256d F[2];
    for (int h = 0; h < 2; ++h) {
      const __m256d q = _mm256_sqrt_pd(_mm256_fmadd_pd(vc, S2[h], one));
      const __m256d f = _mm256_div_pd(one, _mm256_add_pd(one, q));
      const __m256d nw = _mm256_sqrt_pd(S2[h]);
      const __m256d proj = _mm256_cmp_pd(_mm256_mul_pd(nw, f), vmax, _CMP_GT_OQ);
      F[h] = _mm256_blendv_pd(f, _mm256_div_pd(vmax, nw), proj);
      // |w|^2 beyond sw_max or not finite: the scaled row pass redoes the row
      const int nf = _mm256_movemask_pd(_mm256_cmp_pd(S2[h], swm, _CMP_NLE_UQ));
      for (int l = 0; nf && l < 4; ++l)
        if (((nf >> l) & 1) && 4 * h + l < nl) bb.bad[bb.nbad++] = g0 + 4 * h + l;
    }
    const V Fv = V(f32_of(F[0], F[1]));
    for (int64_t d0 = 0; d0 < m; d0 += 8) {
      const int64_t n = std::min<int64_t>(8, m - d0);
      __m256 r[8];
      for (int64_t d = 0; d < 8; ++d)
        r[d] = d < n ? __m256(V::loadu(wbuf + (d0 + d) * kLanesF) * Fv) : _mm256_setzero_ps();
      paths::cols_to_rows8(yb + g0 * m + d0, m, nl, n, r);
    }
  }
}
#else
inline bool fc_lanes16_on(int64_t) { return false; }
#endif

// The forward's element math of a block: w into y.  Out of line, as the compiler chose when fc_fwd_block was its
// only caller in the float GEMM path (inlined into the block loop it measured 3-5 % slower at FC 4096x512->512).
template <typename T>
__attribute__((noinline)) void fwd_block_w(const T* tb, T* yb, int64_t nr, int64_t m, const ColVec<T>& cv,
                                           BlockBuf<T>& bb, T inv_sc) {
  using V = Vectorized<T>;
  block_lanes<T>(tb, nr, m, cv, bb, inv_sc,
                 [&](int64_t e, int64_t cnt, const V&, const V&, const V& w, const V&) { store_n(w, yb + e, cnt); });
}

// The forward's epilogue of a block of nr rows: t rows tb -> y rows yb (w, then its projection); bb.X holds
// |x|^2 (|u|^2 of tangent rows).  w is written into y and rescaled there while the block is in cache.
template <typename T>
inline void fc_fwd_block(const T* tb, T* yb, int64_t nr, BlockBuf<T>& bb, bool tangent, const ColVec<T>& cv,
                         double c, double sc, double maxnorm, int64_t m) {
  block_scalars(bb.X, bb.U, bb.s, bb.lam, bb.k1, bb.k0, nr, tangent, c, sc, maxnorm, 0.0);
  fwd_block_w<T>(tb, yb, nr, m, cv, bb, T(1.0 / sc));
  bb.nbad = 0;
  for (int64_t i = 0; i < nr; ++i) {
    bb.Sw[i] = row_sqnorm(yb + i * m, m);
    if (!(bb.Sw[i] <= sw_max<T>()) || cv.all_scaled) bb.bad[bb.nbad++] = i;  // redone by the scaled row pass
  }
  double* F = bb.z;  // the output scale per row
#pragma omp simd
  for (int64_t i = 0; i < nr; ++i) {
    const double q = std::sqrt(1.0 + c * bb.Sw[i]);
    const double f = 1.0 / (1.0 + q);
    const double ny = std::sqrt(bb.Sw[i]) * f;
    F[i] = ny > maxnorm ? maxnorm / std::sqrt(bb.Sw[i]) : f;
  }
  for (int64_t i = 0; i < nr; ++i) {
    const T fT = T(F[i]);
    T* yr = yb + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) yr[j] *= fT;
  }
}

// fc_fwd_block, or its 16-row-lanes form (float, m <= 16: fc_lanes16_on)
template <typename T>
inline void fc_fwd_block_any(const T* tb, T* yb, int64_t nr, BlockBuf<T>& bb, bool tangent, const ColVec<T>& cv,
                             double c, double sc, double maxnorm, int64_t m, bool lanes16, bool ftan = false) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    if (lanes16) return fc_fwd_block_lanes16(tb, yb, nr, bb, tangent, cv, c, sc, maxnorm, m, ftan);
  }
#endif
  (void)ftan;
  fc_fwd_block<T>(tb, yb, nr, bb, tangent, cv, c, sc, maxnorm, m);
}

// Rows per at::parallel_for task: prows::grain (poincare_rows.h), about 32768 elements, torch's own grain, so that
// small inputs run serially instead of waking the pool for a few microseconds.
using prows::grain;

// Row blocks per task of the epilogue's row passes (fc_fwd_impl's rows_only loop, fc_bwd_impl's row pass): each
// element costs a few transcendentals (asinh, sinh / cosh; the backward twice over), ~kFcElemWork plain elements'
// worth, so the grain counts m * kFcElemWork per row.  The digits CNN's convolutions (4096 rows of 8, a third of
// the step's kernel time on 2 threads) split in two there: fwd ~100 -> ~55 us, bwd ~240 -> ~140 us per call (AMD
// EPYC, 2 threads; the bare grain(m) kept them on one thread).  The sums stay per fixed row block (the same bits
// for any thread count).
constexpr int64_t kFcElemWork = 8;
inline int64_t fc_block_grain(int64_t m) { return std::max<int64_t>(1, grain(m * kFcElemWork) / kRowBlock); }

// rows_only (U defined): t = x @ z is given (e.g. computed by a convolution) with U the squared row norms of x;
// x is not used.  Otherwise the GEMM runs per block of kFwdBlock rows inside the parallel loop (one MKL call
// per block, single-threaded there) and the block's epilogue follows while its t rows are still in cache.
constexpr int64_t kFwdBlock = 64;
static_assert(kFwdBlock <= kRowBlock, "the GEMM blocks use the row-block buffers");

template <typename T>
void fc_fwd_impl(const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias, double c, double eps,
                 bool tangent, at::Tensor& t, at::Tensor& y, const at::Tensor& U = at::Tensor()) {
  const int64_t N = t.size(0), m = z.size(1);
  const double sc = std::sqrt(c);
  const double maxnorm = (1.0 - eps) / std::sqrt(c + 1e-15);
  const ColConsts cc = column_consts<T>(z, bias, sc);
  const bool flat = flat_rows<T>(m);
  const ColVec<T> cv(cc, flat ? kRowBlock : 0);
  const T* tp = t.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const bool lanes16 = std::is_same_v<T, float> && fc_lanes16_on(m) && cv.finite();
  const bool ftan = lanes16 && tangent;
  if (U.defined()) {
    const T* up = U.data_ptr<T>();
    const int64_t nb = (N + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, nb, fc_block_grain(m), [&](int64_t b0, int64_t b1) {
      BlockBuf<T> bb(m, flat);
      ScaledRow sr;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kRowBlock, nr = std::min(kRowBlock, N - r0);
        for (int64_t i = 0; i < nr; ++i) bb.X[i] = double(up[r0 + i]);
        fc_fwd_block_any<T>(tp + r0 * m, yp + r0 * m, nr, bb, tangent, cv, c, sc, maxnorm, m, lanes16, ftan);
        for (int64_t k = 0; k < bb.nbad; ++k) {
          const int64_t i = r0 + bb.bad[k];
          sr.t.assign(tp + i * m, tp + (i + 1) * m);
          scaled_row_fwd<T>(sr, yp + i * m, m, cc, c, sc, double(up[i]), tangent, maxnorm);
        }
      }
    });
    return;
  }
  const int64_t n = x.size(1);
  const T* xp = x.data_ptr<T>();
  const int64_t nb = (N + kFwdBlock - 1) / kFwdBlock;
  // float32 with MKL: z packed once (cblas_sgemm_pack) and reused by every block's GEMM (cblas_sgemm_compute),
  // instead of MKL packing it again inside each block's sgemm; GEOOPS_MKL_PACKED=0 turns it off
  mkl_packed::PackedB zpk;
  if constexpr (std::is_same_v<T, float>) {
    if (nb > 1 && n > 0 && m > 0)
      if (const auto* api = mkl_packed::packed_sgemm_for(N, n, m))
        zpk = mkl_packed::PackedB(api, /*trans=*/false, kFwdBlock, m, n, z.data_ptr<float>(), m);
  }
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    at::NoGradGuard no_grad;  // grad mode is thread-local: the pool's threads would see x's requires_grad
    BlockBuf<T> bb(m, flat);
    ScaledRow sr;
    const T* zp = z.data_ptr<T>();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kFwdBlock, nr = std::min(kFwdBlock, N - r0);
      at::Tensor tb = t.narrow(0, r0, nr);
      mkl_packed::block_gemm(&zpk, tb, x.narrow(0, r0, nr), z);
      for (int64_t i = 0; i < nr; ++i) bb.X[i] = row_sqnorm(xp + (r0 + i) * n, n);
      fc_fwd_block_any<T>(tp + r0 * m, yp + r0 * m, nr, bb, tangent, cv, c, sc, maxnorm, m, lanes16, ftan);
      for (int64_t k = 0; k < bb.nbad; ++k) {  // the scaled row pass; t again (y overwrote it unless saved)
        const int64_t i = r0 + bb.bad[k];
        const T* xr = xp + i * n;
        sr.t.assign(m, 0.0);
        for (int64_t d = 0; d < n; ++d)
          for (int64_t j = 0; j < m; ++j) sr.t[j] += double(xr[d]) * double(zp[d * m + j]);
        scaled_row_fwd<T>(sr, yp + i * m, m, cc, c, sc, row_sqnorm(xr, n), tangent, maxnorm);
      }
    }
  });
}

// The backward's per-row output scalars of rows [0, nr) of a block, one row per SIMD lane of doubles: from
// Sw = |w|^2 and G = <g, w> to alpha (k1), beta (k0) and the row's direct dc term (R); the operations of the
// scalar loop in fc_bwd_impl, the projection branch (y = maxnorm w / |w|) blended per lane (a partial last
// vector: zero lanes, computed and not stored)
template <typename T>
inline void out_scalars_lanes(BlockBuf<T>& bb, int64_t nr, double c, double maxnorm, double dmax_dc) {
  using VD = Vectorized<double>;
  constexpr int64_t L = VD::size();
  const VD one(1.0), two(2.0), vc(c), vmax(maxnorm), vdm(dmax_dc);
  for (int64_t i = 0; i < nr; i += L) {
    const int64_t cnt = std::min<int64_t>(L, nr - i);
    const VD Sw = VD::loadu(bb.Sw + i, cnt), gyw = VD::loadu(bb.G + i, cnt);
    const VD q = (one + vc * Sw).sqrt();
    const VD s0 = one / (one + q);
    const VD nw = Sw.sqrt();
    const VD proj = nw * s0 > vmax;
    VD k1 = s0;
    VD k0 = gyw.neg() * vc * s0 * s0 / q;
    VD gc = gyw.neg() * Sw * s0 * s0 / (two * q);
    if (vecmath::any_lane(proj)) {
      const VD k1p = (vmax / (nw * s0)) * s0;
      k1 = VD::blendv(k1, k1p, proj);
      k0 = VD::blendv(k0, k1p.neg() * gyw / Sw, proj);
      gc = VD::blendv(gc, (gyw / nw) * vdm, proj);
    }
    k1.store(bb.k1 + i, cnt);
    k0.store(bb.k0 + i, cnt);
    gc.store(bb.R + i, cnt);
  }
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The backward's block on row lanes (see fc_fwd_block_lanes16), after block_scalars: pass 1 per group of 16 rows
// forms a, A = asinh(a), w, cosh(u)/sc, 1/sqrt(1 + a^2) per column into `sc16` (layout [group][field][j][16]) and
// |w|^2, <g, w> per lane into bb.Sw / bb.G; the output scalars per row (out_scalars_lanes); pass 2 per group forms
// dL/dt (scattered into gt), the row coefficient (through lam) and u . dt as lane sums over the columns, and the
// column terms as vector accumulators per column (acc: [6][j][16]: fA, fB, fZ, fC, fS), reduced per block by the
// caller.  Per-row outputs: rowcoef, the dc terms (glam part into gl[], in row order by the caller), and with du
// (u . dt into bb.Sw for the caller's dL/dU).  Returns the block's direct dc terms (summed in row order).
struct Lanes16Bwd {
  const float* tb;  // the block's t rows
  const float* gb;  // the block's g rows
  float* gtb;       // the block's dt rows
  const float *C, *S, *Z2;
  double c, sc;
  int64_t m;
  bool ftan;        // tangent rows with the forward's float scalars (tangent_k16): pass 1's a from them too
#if defined(CPU_CAPABILITY_AVX2)
  const double *Cd, *Sd;  // ch / zn, sh in double (the AVX2 twin's glam terms in double, as the generic pass)
#endif
};
#endif

#if defined(CPU_CAPABILITY_AVX512)
__attribute__((noinline)) double fc_bwd_block_lanes16(const Lanes16Bwd& p, int64_t nr, BlockBuf<float>& bb, float* sc16, float* acc,
                                   double maxnorm, double dmax_dc, double* rowc, double* gl) {
  using V = Vectorized<float>;
  const int64_t m = p.m;
  const __m512i idx = lane_rows(m);
  const float inv_sc = float(1.0 / p.sc);
  const int64_t fs = m * kLanesF;  // one field of a group
  bb.nbad = 0;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const __mmask16 mk = lane_mask(nr - g0);
    float* gsc = sc16 + (g0 / kLanesF) * 7 * fs;  // t, g, w, cu, A, ra (+1 spare)
    V k1, k0;
    if (p.ftan) tangent_k16(bb.U + g0, p.c, p.sc, maxnorm, k1, k0);
    else k1 = V(f32_of(bb.k1 + g0)), k0 = V(f32_of(bb.k0 + g0));
    __m512d slo = _mm512_setzero_pd(), shi = _mm512_setzero_pd(), glo = _mm512_setzero_pd(), ghi = slo;
    for (int64_t j = 0; j < m; ++j) {
      const V t = V(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, p.tb + g0 * m + j, 4));
      const V g = V(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, p.gb + g0 * m + j, 4));
      const V a = t * (k1 * V(p.C[j])) - k0 * V(p.S[j]);
      const int64_t o = j * kLanesF;
      V A, w, chv;
      lane_math<float>(a, V(p.Z2[j]), inv_sc, A, w, chv);
      w.store(gsc + 2 * fs + o);
      (chv * V(inv_sc)).store(gsc + 3 * fs + o);
      A.store(gsc + 4 * fs + o);
      t.store(gsc + o);
      g.store(gsc + fs + o);
      const V aa = a.abs();  // 1 / sqrt(1 + a^2); beyond |a| = 1e18 (a^2 overflows float32) 1 / |a|
      // (an explicit FMA: the compiler's own contraction of aa * aa + 1 depends on the surrounding code)
      V::blendv(V(1.f) / at::vec::fmadd(aa, aa, V(1.f)).sqrt(), V(1.f) / aa, aa > V(1e18f)).store(gsc + 5 * fs + o);
      const __m512d wl = lo_pd(w), wh = hi_pd(w);
      slo = _mm512_fmadd_pd(wl, wl, slo);
      shi = _mm512_fmadd_pd(wh, wh, shi);
      glo = _mm512_fmadd_pd(lo_pd(g), wl, glo);
      ghi = _mm512_fmadd_pd(hi_pd(g), wh, ghi);
    }
    _mm512_storeu_pd(bb.Sw + g0, slo);
    _mm512_storeu_pd(bb.Sw + g0 + 8, shi);
    _mm512_storeu_pd(bb.G + g0, glo);
    _mm512_storeu_pd(bb.G + g0 + 8, ghi);
    // rows whose |w|^2 overflowed: their lanes' fields zeroed (pass 2 adds nothing for them), redone by the caller
    // with the scaled row pass
    const __mmask8 nf0 = _mm512_cmp_pd_mask(slo, _mm512_set1_pd(sw_max<float>()), _CMP_NLE_UQ);
    const __mmask8 nf1 = _mm512_cmp_pd_mask(shi, _mm512_set1_pd(sw_max<float>()), _CMP_NLE_UQ);
    const unsigned nf = (unsigned(nf0) | (unsigned(nf1) << 8)) & unsigned(mk);
    if (nf)
      for (int l = 0; l < kLanesF; ++l) {
        if (!((nf >> l) & 1)) continue;
        bb.bad[bb.nbad++] = g0 + l;
        bb.Sw[g0 + l] = bb.G[g0 + l] = 0.0;
        for (int f = 0; f < 6; ++f)
          for (int64_t j = 0; j < m; ++j) gsc[f * fs + j * kLanesF + l] = 0.f;
      }
  }
  out_scalars_lanes(bb, nr, p.c, maxnorm, dmax_dc);  // alpha, beta into k1 / k0 (padding lanes keep 0)
  double gcd = 0;  // the rows' direct dc terms, in row order
  for (int64_t ii = 0; ii < nr; ++ii) gcd += bb.R[ii];
  const __m512d vsc = _mm512_set1_pd(p.sc), one = _mm512_set1_pd(1.0);
  float* fA = acc;
  float* fB = acc + fs;
  float* fZ = acc + 2 * fs;
  float* fC = acc + 3 * fs;
  float* fS = acc + 4 * fs;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const __mmask16 mk = lane_mask(nr - g0);
    const float* gsc = sc16 + (g0 / kLanesF) * 7 * fs;
    const float* wcA = gsc + 2 * fs;  // w, cosh(u)/sc, A: pass 1's (consecutive)
    const V aT = V(f32_of(bb.k1 + g0)), bT = V(f32_of(bb.k0 + g0));
    __m512d lam[2], s[2];
    for (int h = 0; h < 2; ++h) { lam[h] = _mm512_loadu_pd(bb.lam + g0 + 8 * h); s[h] = _mm512_loadu_pd(bb.s + g0 + 8 * h); }
    const V k1T = V(f32_of(_mm512_mul_pd(_mm512_mul_pd(vsc, lam[0]), s[0]), _mm512_mul_pd(_mm512_mul_pd(vsc, lam[1]), s[1])));
    const V lamT = V(f32_of(lam[0], lam[1])), sT = V(f32_of(s[0], s[1]));
    const V slT = V(f32_of(_mm512_mul_pd(vsc, lam[0]), _mm512_mul_pd(vsc, lam[1])));
    const V l1T = V(f32_of(_mm512_sub_pd(lam[0], one), _mm512_sub_pd(lam[1], one)));
    const V scT(float(p.sc));
    V glam(0.f);
    __m512d ulo = _mm512_setzero_pd(), uhi = _mm512_setzero_pd();
    for (int64_t j = 0; j < m; ++j) {
      const int64_t o = j * kLanesF;
      const V t = V::loadu(gsc + o), g = V::loadu(gsc + fs + o), w = V::loadu(wcA + o);
      const V cu = V::loadu(wcA + fs + o), A = V::loadu(wcA + 2 * fs + o), ra = V::loadu(gsc + 5 * fs + o);
      const V Cj(p.C[j]), Sj(p.S[j]);
      const V gw = aT * g + bT * w;
      (V::loadu(fA + o) + gw * w).store(fA + o);
      const V gu = gw * cu;
      const V ga = gu * V(p.Z2[j]) * ra;
      const V gt = ga * k1T * Cj;
      _mm512_mask_i32scatter_ps(p.gtb + g0 * m + j, mk, idx, gt, 4);
      const V tmp = ga * t * sT;  // ga * t_j of the point x = s u
      glam = glam + (tmp * scT * Cj - ga * Sj);
      (V::loadu(fB + o) + tmp * lamT * Cj).store(fB + o);
      (V::loadu(fZ + o) + gu * A).store(fZ + o);
      (V::loadu(fC + o) + tmp * slT).store(fC + o);
      (V::loadu(fS + o) - ga * l1T).store(fS + o);
      ulo = _mm512_fmadd_pd(lo_pd(t), lo_pd(gt), ulo);
      uhi = _mm512_fmadd_pd(hi_pd(t), hi_pd(gt), uhi);
    }
    // per lane: rowcoef = glam c lam^2, the dc term glam X lam^2 / 2 (summed by the caller in row order), u . dt
    const __m512d gld[2] = {lo_pd(glam), hi_pd(glam)};
    const __m512d vc = _mm512_set1_pd(p.c), half = _mm512_set1_pd(0.5);
    for (int h = 0; h < 2; ++h) {
      const __m512d l2 = _mm512_mul_pd(lam[h], lam[h]);
      _mm512_mask_storeu_pd(rowc + g0 + 8 * h, __mmask8(h ? (mk >> 8) : (mk & 0xFF)),
                            _mm512_mul_pd(_mm512_mul_pd(gld[h], vc), l2));
      _mm512_storeu_pd(gl + g0 + 8 * h,
                       _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(gld[h], _mm512_loadu_pd(bb.X + g0 + 8 * h)), l2), half));
    }
    _mm512_storeu_pd(bb.Sw + g0, ulo);  // u . dt per row (bb.Sw: free after the output scalars)
    _mm512_storeu_pd(bb.Sw + g0 + 8, uhi);
  }
  return gcd;
}
#elif defined(CPU_CAPABILITY_AVX2)
// fc_bwd_block_lanes16 on AVX2 (see there: the same fields, sums and outputs per lane): groups of 8 rows, t and g
// in and dt out 8 columns at a time through one transpose each; the fields' layout [group][field][j][8].  Unlike
// the AVX-512 form it carries the generic row pass's session 25 precision fix: dL/dw = alpha g + beta w from the
// double row scalars (rounded once to float) and glam's terms ga (t s sc Cd - Sd) formed and summed in double
// (both cancel in projected rows; in float the curvature gradient's median error was 1.5x the eager float32
// reference's at m = 2 on this path, 0.65x with them: tests/test_poincare.py's dc median test runs it on AVX2).
__attribute__((noinline)) double fc_bwd_block_lanes16(const Lanes16Bwd& p, int64_t nr, BlockBuf<float>& bb, float* sc16,
                                                      float* acc, double maxnorm, double dmax_dc, double* rowc,
                                                      double* gl) {
  using V = Vectorized<float>;
  const int64_t m = p.m;
  const float inv_sc = float(1.0 / p.sc);
  const int64_t fs = m * kLanesF;  // one field of a group
  const __m256d swm = _mm256_set1_pd(sw_max<float>());
  bb.nbad = 0;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const int nl = int(std::min<int64_t>(kLanesF, nr - g0));
    float* gsc = sc16 + (g0 / kLanesF) * 7 * fs;  // t, g, w, cu, A, ra (+1 spare)
    V k1, k0;
    if (p.ftan) tangent_k16(bb.U + g0, p.c, p.sc, maxnorm, k1, k0);
    else k1 = V(f32_of(bb.k1 + g0)), k0 = V(f32_of(bb.k0 + g0));
    __m256d S[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, G[2] = {S[0], S[1]};  // |w|^2, <g, w>
    for (int64_t d0 = 0; d0 < m; d0 += 8) {
      const int64_t n = std::min<int64_t>(8, m - d0);
      __m256 tc[8], gc[8];
      paths::rows_to_cols8(p.tb + g0 * m + d0, m, nl, n, tc);
      paths::rows_to_cols8(p.gb + g0 * m + d0, m, nl, n, gc);
      for (int64_t d = 0; d < n; ++d) {
        const int64_t j = d0 + d, o = j * kLanesF;
        const V t(tc[d]), g(gc[d]);
        const V a = t * (k1 * V(p.C[j])) - k0 * V(p.S[j]);
        V A, w, chv;
        lane_math<float>(a, V(p.Z2[j]), inv_sc, A, w, chv);
        w.store(gsc + 2 * fs + o);
        (chv * V(inv_sc)).store(gsc + 3 * fs + o);
        A.store(gsc + 4 * fs + o);
        t.store(gsc + o);
        g.store(gsc + fs + o);
        const V aa = a.abs();  // 1 / sqrt(1 + a^2); beyond |a| = 1e18 1 / |a| (an explicit FMA, as on AVX-512)
        V::blendv(V(1.f) / at::vec::fmadd(aa, aa, V(1.f)).sqrt(), V(1.f) / aa, aa > V(1e18f)).store(gsc + 5 * fs + o);
        const __m256d wh[2] = {lo_pd(w), hi_pd(w)}, gh[2] = {lo_pd(g), hi_pd(g)};
        for (int h = 0; h < 2; ++h) {
          S[h] = _mm256_fmadd_pd(wh[h], wh[h], S[h]);
          G[h] = _mm256_fmadd_pd(gh[h], wh[h], G[h]);
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      _mm256_storeu_pd(bb.Sw + g0 + 4 * h, S[h]);
      _mm256_storeu_pd(bb.G + g0 + 4 * h, G[h]);
    }
    // rows whose |w|^2 overflowed: their lanes' fields zeroed (pass 2 adds nothing for them), redone by the caller
    const unsigned nf = unsigned(_mm256_movemask_pd(_mm256_cmp_pd(S[0], swm, _CMP_NLE_UQ)) |
                                 (_mm256_movemask_pd(_mm256_cmp_pd(S[1], swm, _CMP_NLE_UQ)) << 4)) &
                        ((1u << nl) - 1u);
    for (int l = 0; nf && l < kLanesF; ++l) {
      if (!((nf >> l) & 1)) continue;
      bb.bad[bb.nbad++] = g0 + l;
      bb.Sw[g0 + l] = bb.G[g0 + l] = 0.0;
      for (int f = 0; f < 6; ++f)
        for (int64_t j = 0; j < m; ++j) gsc[f * fs + j * kLanesF + l] = 0.f;
    }
  }
  out_scalars_lanes(bb, nr, p.c, maxnorm, dmax_dc);  // alpha, beta into k1 / k0 (padding lanes keep 0)
  double gcd = 0;  // the rows' direct dc terms, in row order
  for (int64_t ii = 0; ii < nr; ++ii) gcd += bb.R[ii];
  const __m256d vsc = _mm256_set1_pd(p.sc), one = _mm256_set1_pd(1.0), vc = _mm256_set1_pd(p.c);
  const __m256d half = _mm256_set1_pd(0.5);
  float* fA = acc;
  float* fB = acc + fs;
  float* fZ = acc + 2 * fs;
  float* fC = acc + 3 * fs;
  float* fS = acc + 4 * fs;
  for (int64_t g0 = 0; g0 < nr; g0 += kLanesF) {
    const int nl = int(std::min<int64_t>(kLanesF, nr - g0));
    const float* gsc = sc16 + (g0 / kLanesF) * 7 * fs;
    const float* wcA = gsc + 2 * fs;  // w, cosh(u)/sc, A: pass 1's (consecutive)
    __m256d lam[2], s[2], sl[2];
    for (int h = 0; h < 2; ++h) {
      lam[h] = _mm256_loadu_pd(bb.lam + g0 + 4 * h);
      s[h] = _mm256_loadu_pd(bb.s + g0 + 4 * h);
      sl[h] = _mm256_mul_pd(vsc, lam[h]);
    }
    const V k1T = V(f32_of(_mm256_mul_pd(sl[0], s[0]), _mm256_mul_pd(sl[1], s[1])));
    const V lamT = V(f32_of(lam[0], lam[1])), sT = V(f32_of(s[0], s[1])), slT = V(f32_of(sl[0], sl[1]));
    const V l1T = V(f32_of(_mm256_sub_pd(lam[0], one), _mm256_sub_pd(lam[1], one)));
    __m256d al[2], be[2], ssc[2];  // alpha, beta, s sc per lane in double
    for (int h = 0; h < 2; ++h) {
      al[h] = _mm256_loadu_pd(bb.k1 + g0 + 4 * h);
      be[h] = _mm256_loadu_pd(bb.k0 + g0 + 4 * h);
      ssc[h] = _mm256_mul_pd(s[h], vsc);
    }
    __m256d gld[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};  // glam (double)
    __m256d ud[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};   // u . dt
    for (int64_t d0 = 0; d0 < m; d0 += 8) {
      const int64_t n = std::min<int64_t>(8, m - d0);
      __m256 gtc[8];
      for (int64_t d = 0; d < 8; ++d) {
        if (d >= n) { gtc[d] = _mm256_setzero_ps(); continue; }
        const int64_t j = d0 + d, o = j * kLanesF;
        const V t = V::loadu(gsc + o), g = V::loadu(gsc + fs + o), w = V::loadu(wcA + o);
        const V cu = V::loadu(wcA + fs + o), A = V::loadu(wcA + 2 * fs + o), ra = V::loadu(gsc + 5 * fs + o);
        const V Cj(p.C[j]);
        const V gw(f32_of(_mm256_fmadd_pd(al[0], lo_pd(g), _mm256_mul_pd(be[0], lo_pd(w))),
                          _mm256_fmadd_pd(al[1], hi_pd(g), _mm256_mul_pd(be[1], hi_pd(w)))));
        (V::loadu(fA + o) + gw * w).store(fA + o);
        const V gu = gw * cu;
        const V ga = gu * V(p.Z2[j]) * ra;
        const V gt = ga * k1T * Cj;
        gtc[d] = gt;
        const V tmp = ga * t * sT;  // ga * t_j of the point x = s u
        const __m256d cdj = _mm256_set1_pd(p.Cd[j]), sdj = _mm256_set1_pd(p.Sd[j]);
        const __m256d th[2] = {lo_pd(t), hi_pd(t)}, gah[2] = {lo_pd(ga), hi_pd(ga)};
        for (int h = 0; h < 2; ++h)
          gld[h] = _mm256_fmadd_pd(gah[h], _mm256_fmsub_pd(_mm256_mul_pd(th[h], ssc[h]), cdj, sdj), gld[h]);
        (V::loadu(fB + o) + tmp * lamT * Cj).store(fB + o);
        (V::loadu(fZ + o) + gu * A).store(fZ + o);
        (V::loadu(fC + o) + tmp * slT).store(fC + o);
        (V::loadu(fS + o) - ga * l1T).store(fS + o);
        ud[0] = _mm256_fmadd_pd(th[0], lo_pd(gt), ud[0]);
        ud[1] = _mm256_fmadd_pd(th[1], hi_pd(gt), ud[1]);
      }
      paths::cols_to_rows8(p.gtb + g0 * m + d0, m, nl, n, gtc);
    }
    // per lane: rowcoef = glam c lam^2, the dc term glam X lam^2 / 2 (summed by the caller in row order), u . dt
    for (int h = 0; h < 2; ++h) {
      const __m256d l2 = _mm256_mul_pd(lam[h], lam[h]);
      _mm256_maskstore_pd(rowc + g0 + 4 * h, half_mask(h, nl), _mm256_mul_pd(_mm256_mul_pd(gld[h], vc), l2));
      _mm256_storeu_pd(gl + g0 + 4 * h,
                       _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(gld[h], _mm256_loadu_pd(bb.X + g0 + 4 * h)), l2), half));
      _mm256_storeu_pd(bb.Sw + g0 + 4 * h, ud[h]);  // u . dt per row (bb.Sw: free after the output scalars)
    }
  }
  return gcd;
}
#endif

// rows_only (U defined): x is not used; gt_out gets dL/dt, gU dL/dU (U = |x|^2, or |u|^2 of tangent rows) and gz
// The per-row sums |w|^2 and <g, w> of nr float rows of m <= 8 (the digits CNN's convolutions: m = 8) as one
// masked 8-float load per row widened to one AVX-512 vector of doubles and a reduction tree: the omp simd
// reduction below spilled its lanes and summed them back serially, every row).  The products of
// floats are exact in double; only the summation order differs (fixed here).  Returns false where it does not
// apply (other types, m > 8, no AVX-512): the caller's loop runs.
template <typename T>
inline bool short_row_sums(const T* wp, const T* gp, int64_t nr, int64_t m, double* Sw, double* G) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if (m > 8) return false;
    const __mmask8 mk = __mmask8((1u << m) - 1u);
    for (int64_t ii = 0; ii < nr; ++ii) {
      const __m512d w = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mk, wp + ii * m));
      const __m512d g = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mk, gp + ii * m));
      Sw[ii] = _mm512_reduce_add_pd(_mm512_mul_pd(w, w));
      G[ii] = _mm512_reduce_add_pd(_mm512_mul_pd(g, w));
    }
    return true;
  }
#endif
  (void)wp; (void)gp; (void)nr; (void)m; (void)Sw; (void)G;
  return false;
}

// only the column terms (the caller adds x^T dL/dt, e.g. a convolution's weight gradient)
template <typename T>
void fc_bwd_impl(const at::Tensor& g, const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias, double c,
                 const at::Tensor& t, double eps, int64_t mask, bool tangent, at::Tensor& gx, at::Tensor& gz,
                 at::Tensor& gb, at::Tensor& gc, const at::Tensor& Uin = at::Tensor(),
                 at::Tensor* gt_out = nullptr, at::Tensor* gU = nullptr) {
  const bool rows_only = Uin.defined();
  const int64_t N = t.size(0), m = z.size(1);
  const double sc = std::sqrt(c);
  const double maxnorm = (1.0 - eps) / std::sqrt(c + 1e-15);
  const double dmax_dc = -0.5 * (1.0 - eps) / ((c + 1e-15) * std::sqrt(c + 1e-15));
  const ColConsts cc = column_consts<T>(z, bias, sc);
  const ColVec<T> cv(cc, flat_rows<T>(m) ? kRowBlock : 0);
  std::vector<double> Cd(m), Sd(m);  // ch / zn and sh in double (the float rows' glam terms)
  for (int64_t j = 0; j < m; ++j) { Cd[j] = cc.ch[j] / cc.zn[j]; Sd[j] = cc.sh[j]; }
  std::vector<double> X = row_sq_or<T>(x, Uin);
  const std::vector<double> U = X;  // |u|^2 of tangent rows
  TangentRows trw;  // filled block by block in the row pass below (X becomes |x|^2 there)
  trw.s.resize(N);
  if (tangent) { trw.dsdn_n.resize(N); trw.dsdc.resize(N); }
  const bool flat = flat_rows<T>(m);
  const bool want_x = mask & 1, want_z = mask & 2, want_b = (mask & 4) && bias.numel() > 0, want_c = mask & 8;
  const bool need_cols = want_z || want_b || want_c;
  at::Tensor gt = at::empty({N, m}, t.options());
  std::vector<double> rowcoef(N, 0.0);
  const T* tp = t.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  T* gtp = gt.data_ptr<T>();
  const T inv_sc = T(1.0 / sc);
  const int64_t nblk = (N + kRowBlock - 1) / kRowBlock;
  // Sums over rows that do not depend on the thread count: each row block's column terms (through zn, C, S) and
  // scalars (dc direct, the sc terms fA / fB, the tangent dc terms) into its own slot, reduced in block order
  // below (~3 m doubles per 128 rows); later per-row dc terms per row, summed in row order.
  std::vector<double> blk_cols(need_cols ? nblk * 3 * m : 0), blk_sc(nblk * 4, 0.0);
  std::vector<double> tan_rows(tangent ? N : 0, 0.0);
  // rows_only tangent rows: dL/dU (and the dc term through s) of a block's rows right after its row
  // pass, while its t and dt rows are in cache: the rows' dots u . (dt z^T) = t . dt, then their scalars on SIMD
  // lanes (one row per lane; a partial last vector: zero lanes, computed and not stored), in row order
  const bool du_in_pass = rows_only && tangent;
  const bool lanes16 = std::is_same_v<T, float> && fc_lanes16_on(m) && cv.finite();
  [[maybe_unused]] const bool ftan = lanes16 && tangent;  // (float only)
  T* gUp = rows_only ? gU->data_ptr<T>() : nullptr;
  auto du_rows = [&](int64_t r0, int64_t nr, double* ugb, double* gub, double* tgb, bool have_ug = false) {
    using VD = Vectorized<double>;
    constexpr int64_t L = VD::size();
    for (int64_t k = 0; k < (have_ug ? 0 : nr); ++k) {
      const T* tr = tp + (r0 + k) * m;
      const T* gtr = gtp + (r0 + k) * m;
      double ug = 0;
#pragma omp simd reduction(+ : ug)
      for (int64_t j = 0; j < m; ++j) ug += double(tr[j]) * double(gtr[j]);
      ugb[k] = ug;
    }
    for (int64_t k = 0; k < nr; k += L) {
      const int64_t cnt = std::min<int64_t>(L, nr - k), i = r0 + k;
      const VD rc = VD::loadu(rowcoef.data() + i, cnt), si = VD::loadu(trw.s.data() + i, cnt);
      const VD u_gx = VD::loadu(ugb + k, cnt) / si + rc * si * VD::loadu(U.data() + i, cnt);
      (VD(0.5) * (rc * si * si + u_gx * VD::loadu(trw.dsdn_n.data() + i, cnt))).store(gub + k, cnt);
      (u_gx * VD::loadu(trw.dsdc.data() + i, cnt)).store(tgb + k, cnt);
    }
    double tg = 0;
    for (int64_t k = 0; k < nr; ++k) gUp[r0 + k] = T(gub[k]);
    for (int64_t k = 0; k < nr; ++k) tg += tgb[k];
    return tg;
  };
  at::parallel_for(0, nblk, fc_block_grain(m), [&](int64_t b0, int64_t b1) {
    using V = Vectorized<T>;
    int64_t cur = b0;  // the block being summed
    BlockBuf<T> bb(m, flat);
    // the block's w, cosh(u)/sc, A = asinh(a), 1/sqrt(1 + a^2) per element
    std::vector<T> wv(kRowBlock * m), cu(kRowBlock * m), Av(kRowBlock * m), ra(kRowBlock * m);
    // the block's column sums in T (float: one vector add per element instead of three float -> double
    // conversions and a reduction per row), promoted to double per block: the column terms (through zn, C, S;
    // fZ without the factor 2) and, summed over columns at the block's end, the sc terms (fA, fB)
    std::vector<T> colsum(6 * m);
    T* fZ = colsum.data();
    T* fC = fZ + m;
    T* fS = fC + m;
    T* fA = fS + m;
    T* fB = fA + m;
    T* rl = fB + m;  // one row's terms of its row coefficient (through lam), summed on vectors after the pass
    // float rows: those terms in double (float ga and t, double column constants ch / zn and sh), summed in double:
    // the row sum cancels (|glam| ~ 1/10 of the sum of |terms| at scale 5) and its error, times X lam^2 / 2, was
    // the largest part of the float32 curvature gradient's error at m = 80 (session 25)
    std::vector<double> rld(std::is_same_v<T, float> ? m : 0);
    double gcd = 0, gsa = 0, gsb = 0, tgc = 0;
    // the block's column sums (fA, fB; with need_cols fZ, fC, fS) into the block's slots
    auto fold_cols = [&]() {
      for (int64_t j = 0; j < m; ++j) { gsa += double(fA[j]); gsb += double(fB[j]); }
      if (need_cols) {
        double* aZ = blk_cols.data() + cur * 3 * m;
        double* aC = aZ + m;
        double* aS = aC + m;
        for (int64_t j = 0; j < m; ++j) {
          aZ[j] = 2.0 * double(fZ[j]);
          aC[j] = double(fC[j]);
          aS[j] = double(fS[j]);
        }
      }
    };
    auto store_scalars = [&]() {
      double* o = blk_sc.data() + cur * 4;
      o[0] = gcd; o[1] = gsa; o[2] = gsb; o[3] = tgc;
    };
    ScaledRow sr;
    std::vector<float> sc16, acc16;  // lanes16: the block's per-group fields and column accumulators
    [[maybe_unused]] double gl16[kRowBlock];  // the float lanes16 path only (AVX-512, AVX2)
    if (lanes16) { sc16.resize(kRowBlock * 7 * m); acc16.resize(5 * 16 * m); }
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kRowBlock, nr = std::min(kRowBlock, N - r0);
      cur = blk;
      gcd = gsa = gsb = tgc = 0;
      std::fill(colsum.begin(), colsum.end(), T(0));
      std::copy(X.begin() + r0, X.begin() + r0 + nr, bb.X);
      block_scalars(bb.X, bb.U, bb.s, bb.lam, bb.k1, bb.k0, nr, tangent, c, sc, maxnorm, dmax_dc,
                    tangent ? trw.dsdn_n.data() + r0 : nullptr, tangent ? trw.dsdc.data() + r0 : nullptr);
      std::copy(bb.X, bb.X + nr, X.begin() + r0);
      std::copy(bb.s, bb.s + nr, trw.s.begin() + r0);
      const T* tb = tp + r0 * m;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float>) {
        if (lanes16) {
          pad_block_lanes(bb, nr);
#if defined(CPU_CAPABILITY_AVX512)
          const Lanes16Bwd p{tb, gp + r0 * m, gtp + r0 * m, cv.C.data(), cv.S.data(), cv.Z2.data(), c, sc, m, ftan};
#else
          const Lanes16Bwd p{tb, gp + r0 * m, gtp + r0 * m, cv.C.data(), cv.S.data(), cv.Z2.data(), c, sc, m, ftan,
                             Cd.data(), Sd.data()};
#endif
          std::fill(acc16.begin(), acc16.end(), 0.f);
          gcd += fc_bwd_block_lanes16(p, nr, bb, sc16.data(), acc16.data(), maxnorm, dmax_dc, rowcoef.data() + r0, gl16);
          for (int64_t ii = 0; ii < nr; ++ii) gcd += gl16[ii];
          T* cs[5] = {fA, fB, fZ, fC, fS};
          for (int k = 0; k < 5; ++k)
#if defined(CPU_CAPABILITY_AVX512)
            for (int64_t j = 0; j < m; ++j) cs[k][j] = _mm512_reduce_add_ps(_mm512_loadu_ps(acc16.data() + (k * m + j) * 16));
#else
            for (int64_t j = 0; j < m; ++j) cs[k][j] = hsum8(acc16.data() + (k * m + j) * kLanesF);
#endif
          for (int64_t k = 0; k < bb.nbad; ++k) {  // the scaled row pass (rows in ascending order)
            const int64_t ii = bb.bad[k], i = r0 + ii;
            const ScaledRowGrads o = scaled_row_bwd<T>(sr, tb + ii * m, gp + i * m, gtp + i * m, m, cc, c, sc, bb.s[ii],
                                                      bb.lam[ii], bb.X[ii], maxnorm, dmax_dc, fA, fB, fZ, fC, fS);
            rowcoef[i] = o.rowc;
            gcd += o.gl + o.R;
            bb.Sw[ii] = o.ug;
          }
          fold_cols();
          if (du_in_pass) tgc += du_rows(r0, nr, bb.Sw, bb.G, bb.R, true);
          store_scalars();
          continue;
        }
      }
#endif
      block_lanes<T>(tb, nr, m, cv, bb, inv_sc, [&](int64_t e, int64_t cnt, const V& a, const V& A, const V& w, const V& chv) {
        store_n(w, wv.data() + e, cnt);
        store_n(chv * V(inv_sc), cu.data() + e, cnt);
        store_n(A, Av.data() + e, cnt);
        // 1 / sqrt(1 + a^2); beyond |a| = 1e18 (a^2 overflows float32) 1 / |a|
        const V aa = a.abs();
        store_n(V::blendv(V(T(1)) / (aa * aa + V(T(1))).sqrt(), V(T(1)) / aa, aa > V(T(1e18))), ra.data() + e, cnt);
      });
      // the block's per-row output scalars first, then the row passes: the rows' square roots and divisions are
      // independent and overlap, instead of one serial chain per row in front of each row's pass (the same
      // operations in the same order: same values).  bb.k1 / bb.k0 (no longer needed after block_lanes) hold
      // each row's alpha / beta.
      if (!short_row_sums(wv.data(), gp + r0 * m, nr, m, bb.Sw, bb.G))
      for (int64_t ii = 0; ii < nr; ++ii) {
        const T* gr = gp + (r0 + ii) * m;
        const T* wr = wv.data() + ii * m;
        double Sw = 0, gyw = 0;
#pragma omp simd reduction(+ : Sw, gyw)
        for (int64_t j = 0; j < m; ++j) {
          Sw += double(wr[j]) * double(wr[j]);
          gyw += double(gr[j]) * double(wr[j]);
        }
        bb.Sw[ii] = Sw;
        bb.G[ii] = gyw;
      }
      bb.nbad = 0;
      for (int64_t ii = 0; ii < nr; ++ii)
        if (!(bb.Sw[ii] <= sw_max<T>()) || cv.all_scaled) {  // |w|^2 overflowed: the scaled row pass below
          bb.bad[bb.nbad++] = ii;
          bb.Sw[ii] = bb.G[ii] = 0.0;
        }
      out_scalars_lanes(bb, nr, c, maxnorm, dmax_dc);  // the dc terms summed in row order
      for (int64_t ii = 0; ii < nr; ++ii) gcd += bb.R[ii];
      int64_t kbad = 0;
      for (int64_t ii = 0; ii < nr; ++ii) {
      const int64_t i = r0 + ii;
      if (kbad < bb.nbad && bb.bad[kbad] == ii) {
        ++kbad;
        const ScaledRowGrads o = scaled_row_bwd<T>(sr, tp + i * m, gp + i * m, gtp + i * m, m, cc, c, sc, bb.s[ii],
                                                  bb.lam[ii], X[i], maxnorm, dmax_dc, fA, fB, fZ, fC, fS);
        rowcoef[i] = o.rowc;
        gcd += o.gl + o.R;
        continue;
      }
      const double lam = bb.lam[ii];
      const T* tr = tp + i * m;
      const T* gr = gp + i * m;
      T* gtr = gtp + i * m;
      const T* wr = wv.data() + ii * m;
      const T* cur = cu.data() + ii * m;
      const T* Ar = Av.data() + ii * m;
      const T* rar = ra.data() + ii * m;
      const double si = bb.s[ii];
      const double alpha = bb.k1[ii], beta = bb.k0[ii];
      const T aT = T(alpha), bT = T(beta), k1 = T(sc * lam * si), lamT = T(lam), scT = T(sc), sT = T(si);
      double glam = 0;  // (float rows: rld, double terms)
      const double ssc = si * sc;
      const T* Cp = cv.C.data();
      const T* Sp = cv.S.data();
      const T* Zp = cv.Z2.data();
      const T slT = T(sc * lam), l1T = T(lam - 1.0);
      // one fused pass over the row: dL/dt (into gt), the row term through lam, the sc terms, and with
      // COLS the column terms through zn (u = 2 zn A), C = ch / zn and S = sh (into the block's column sums)
      auto row_grads = [&](auto cols_tag) {
        constexpr bool COLS = decltype(cols_tag)::value;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) {
          // dL/dw_j = alpha g_j + beta w_j.  float: alpha, beta kept in double and the sum rounded once.  In a
          // projected row beta w_j cancels alpha g_j in the dominant column (dL/dw is g's part orthogonal to w);
          // float alpha, beta and float products left an error of ~1 ulp of alpha |g_j| there, which the
          // curvature gradient's row sum (glam, times X lam^2 / 2) amplified to ~2x the eager float32
          // reference's dc error (session 25)
          T gw;
          if constexpr (std::is_same_v<T, float>) gw = T(alpha * double(gr[j]) + beta * double(wr[j]));
          else gw = aT * gr[j] + bT * wr[j];
          fA[j] += gw * wr[j];
          const T gu = gw * cur[j];
          const T ga = gu * Zp[j] * rar[j];
          gtr[j] = ga * k1 * Cp[j];
          const T tmp = ga * tr[j] * sT;  // ga * t_j of the point x = s u
          if constexpr (std::is_same_v<T, float>) rld[j] = double(ga) * (double(tr[j]) * ssc * Cd[j] - Sd[j]);
          else rl[j] = tmp * scT * Cp[j] - ga * Sp[j];
          fB[j] += tmp * lamT * Cp[j];
          if constexpr (COLS) {
            fZ[j] += gu * Ar[j];
            fC[j] += tmp * slT;
            fS[j] -= ga * l1T;
          }
        }
        // (an omp simd reduction here summed its lanes one by one, serially, for every row).  m < one vector
        // (the digits CNN's m = 8): one zero-padded vector and vec_reduce_all's shuffle tree; reduce_all's
        // partial-vector path went through a stack array per lane (store-forwarding stalls: ~40 % of this
        // lambda's time at m = 8, perf)
        if constexpr (std::is_same_v<T, float>) {
          using VD = Vectorized<double>;
          const auto add = [](const VD& p, const VD& q) { return p + q; };
          glam += m < VD::size() ? at::vec::vec_reduce_all<double>(add, VD::loadu(rld.data(), m))
                                : at::vec::reduce_all<double>(add, rld.data(), m);
        } else {
          const auto add = [](const V& p, const V& q) { return p + q; };
          glam += m < V::size() ? at::vec::vec_reduce_all<T>(add, V::loadu(rl, m)) : at::vec::reduce_all<T>(add, rl, m);
        }
      };
      if (need_cols) row_grads(std::true_type{});
      else row_grads(std::false_type{});
      rowcoef[i] = glam * c * lam * lam;
      gcd += glam * X[i] * lam * lam * 0.5;
      }
      fold_cols();
      if (du_in_pass) tgc += du_rows(r0, nr, bb.Sw, bb.G, bb.R);  // Sw, G, R: free after the row scalars
      store_scalars();
    }
  });
  double gsc = 0, gcd = 0, tgc_all = 0;
  for (int64_t b = 0; b < nblk; ++b) {
    const double* o = blk_sc.data() + b * 4;
    gcd += o[0];
    gsc += -o[1] / sc + o[2];
    tgc_all += o[3];
  }
  std::vector<double> gzn(m, 0.0), gC(m, 0.0), gS(m, 0.0);
  if (need_cols)
    for (int64_t b = 0; b < nblk; ++b) {
      const double* aZ = blk_cols.data() + b * 3 * m;
      for (int64_t j = 0; j < m; ++j) { gzn[j] += aZ[j]; gC[j] += aZ[m + j]; gS[j] += aZ[2 * m + j]; }
    }
  const bool has_bias = bias.numel() > 0;
  std::vector<double> gr(m, 0.0);
  for (int64_t j = 0; j < m; ++j) {
    const double zn = cc.zn[j], ch = cc.ch[j], sh = cc.sh[j];
    const double gch = gC[j] / zn;
    gzn[j] -= gC[j] * ch / (zn * zn);
    if (has_bias) {
      const double rj = double(bias.data_ptr<T>()[j]);
      gr[j] = 2.0 * sc * (gch * sh + gS[j] * ch);
      gsc += 2.0 * rj * (gch * sh + gS[j] * ch);
    }
  }
  if (rows_only) {
    // dL/dx_row = dt_row z^T + coef x_row: coef/2 is dL/dU; u . (dt_row z^T) = dt_row . t_row
    if (!du_in_pass)
    at::parallel_for(0, N, grain(m), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const double rc = rowcoef[i];
        if (!tangent) { gUp[i] = T(0.5 * rc); continue; }
        const T* tr = tp + i * m;
        const T* gtr = gtp + i * m;
        double ug = 0;
#pragma omp simd reduction(+ : ug)
        for (int64_t j = 0; j < m; ++j) ug += double(tr[j]) * double(gtr[j]);
        const double si = trw.s[i];
        const double u_gx = ug / si + rc * si * U[i];  // ug = u . (dt z^T), as gr_ . u of the full path
        gUp[i] = T(0.5 * (rc * si * si + u_gx * trw.dsdn_n[i]));
        tan_rows[i] = u_gx * trw.dsdc[i];
      }
    });
    *gt_out = gt;
  } else if (want_x || (tangent && want_c)) {
    at::Tensor gxb = want_x ? gx : at::empty_like(x);  // tangent rows: dc needs u . dL/dx
    // z is (n, m) with m small (16 for the 3x3 conv): MKL runs gt @ z^T ~2x faster with the transposed
    // operand materialised (an (m, n) copy of a few KB) than on the strided view
    at::mm_out(gxb, gt, z.t().contiguous());
    T* gxp = gxb.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const int64_t n = x.size(1);
    at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* gr_ = gxp + i * n;
        const T* xr = xp + i * n;
        if (!tangent) {
          const T rc = T(rowcoef[i]);
#pragma omp simd
          for (int64_t d = 0; d < n; ++d) gr_[d] += rc * xr[d];
        } else {
          // gr_ = s dL/dx (the GEMM took dt of the point s u); dL/du = s dL/dx + (u . dL/dx) (ds/dn)/n u
          const double si = trw.s[i], rc = rowcoef[i];
          double ug = 0;
#pragma omp simd reduction(+ : ug)
          for (int64_t d = 0; d < n; ++d) ug += double(gr_[d]) * double(xr[d]);
          const double u_gx = ug / si + rc * si * U[i];
          const T coef = T(rc * si * si + u_gx * trw.dsdn_n[i]);
#pragma omp simd
          for (int64_t d = 0; d < n; ++d) gr_[d] += coef * xr[d];
          tan_rows[i] = u_gx * trw.dsdc[i];
        }
      }
    });
  }
  if (want_z) {
    if (rows_only) gz.zero_();
    else fixed_gemm::mm_tn(gz, x, gt);  // x^T dt: the same bits for any thread count
    T* gzp = gz.data_ptr<T>();
    const T* zp = z.data_ptr<T>();
    const int64_t n = z.size(0);
    std::vector<T> colf(m);
    for (int64_t j = 0; j < m; ++j) colf[j] = cc.zn[j] > 1e-15 ? T(gzn[j] / cc.zn[j]) : T(0);
    for (int64_t d = 0; d < n; ++d) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) gzp[d * m + j] += colf[j] * zp[d * m + j];
    }
  }
  if (want_b) {
    T* gbp = gb.data_ptr<T>();
    for (int64_t j = 0; j < m; ++j) gbp[j] = T(gr[j]);
  }
  gcd += tgc_all;
  for (double v : tan_rows) gcd += v;
  if (want_c) gc.fill_(gcd + gsc / (2.0 * sc));
}

void check_fc_args(const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && z.dim() == 2 && x.size(1) == z.size(0), "poincare_fc: x [N, n], z [n, m]");
  TORCH_CHECK(x.scalar_type() == z.scalar_type(), "poincare_fc: x and z must share a dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "poincare_fc: float32 or float64 on the CPU");
  TORCH_CHECK(bias.numel() == 0 || (bias.dim() == 1 && bias.size(0) == z.size(1)), "poincare_fc: bias [m]");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> poincare_fc_fwd_cpu(const at::Tensor& x_in, const at::Tensor& z_in,
                                                       const at::Tensor& bias_in, const at::Tensor& c_in, double eps,
                                                       bool save, bool tangent) {
  const at::Tensor x = x_in.contiguous(), z = z_in.contiguous();
  check_fc_args(x, z, bias_in);
  const at::Tensor bias = bias_in.numel() ? bias_in.to(x.scalar_type()).contiguous() : bias_in;
  const double c = c_in.item<double>();
  const int64_t N = x.size(0), m = z.size(1);
  at::Tensor t = at::empty({N, m}, x.options());
  at::Tensor y = save ? at::empty({N, m}, x.options()) : t;  // without save, y overwrites t in place
  if (x.scalar_type() == at::kDouble) fc_fwd_impl<double>(x, z, bias, c, eps, tangent, t, y);
  else fc_fwd_impl<float>(x, z, bias, c, eps, tangent, t, y);
  return {y, save ? t : x.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_fc_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& z_in, const at::Tensor& bias_in,
    const at::Tensor& c_in, const at::Tensor& t_in, double eps, int64_t mask, bool tangent) {
  const at::Tensor x = x_in.contiguous(), z = z_in.contiguous();
  check_fc_args(x, z, bias_in);
  const at::Tensor bias = bias_in.numel() ? bias_in.to(x.scalar_type()).contiguous() : bias_in;
  const at::Tensor g = g_in.to(x.scalar_type()).contiguous();
  const double c = c_in.item<double>();
  at::Tensor t = t_in.numel() == x.size(0) * z.size(1) ? t_in.contiguous() : at::mm(x, z);
  at::Tensor gx = (mask & 1) ? at::empty_like(x) : x.new_empty({0});
  at::Tensor gz = (mask & 2) ? at::empty_like(z) : x.new_empty({0});
  at::Tensor gb = ((mask & 4) && bias.numel()) ? at::empty({z.size(1)}, x.options()) : x.new_empty({0});
  at::Tensor gc = (mask & 8) ? at::zeros({}, x.options().dtype(at::kDouble)) : x.new_empty({0});
  if (x.scalar_type() == at::kDouble) fc_bwd_impl<double>(g, x, z, bias, c, t, eps, mask, tangent, gx, gz, gb, gc);
  else fc_bwd_impl<float>(g, x, z, bias, c, t, eps, mask, tangent, gx, gz, gb, gc);
  return {gx, gz, gb, gc};
}

// The argument checks shared by poincare_fc_rows_fwd_cpu / _bwd_cpu (t [N, m], U [N], z [n, m], one float dtype).
static void check_fc_rows_args(const at::Tensor& t, const at::Tensor& U, const at::Tensor& z) {
  TORCH_CHECK(t.dim() == 2 && z.dim() == 2 && t.size(1) == z.size(1) && U.numel() == t.size(0),
              "poincare_fc_rows: t [N, m], U [N], z [n, m]");
  TORCH_CHECK(t.scalar_type() == z.scalar_type() && U.scalar_type() == z.scalar_type(),
              "poincare_fc_rows: t, U and z must share a dtype");
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, "poincare_fc_rows: float32 or float64");
}

at::Tensor poincare_fc_rows_fwd_cpu(const at::Tensor& t_in, const at::Tensor& U_in, const at::Tensor& z_in,
                                    const at::Tensor& bias_in, const at::Tensor& c_in, double eps, bool tangent) {
  const at::Tensor z = z_in.contiguous();
  const at::Tensor t = t_in.contiguous(), U = U_in.contiguous();
  check_fc_rows_args(t, U, z);
  TORCH_CHECK(bias_in.numel() == 0 || (bias_in.dim() == 1 && bias_in.size(0) == z.size(1)), "poincare_fc_rows: bias [m]");
  const at::Tensor bias = bias_in.numel() ? bias_in.to(z.scalar_type()).contiguous() : bias_in;
  const double c = c_in.item<double>();
  at::Tensor tt = t;
  at::Tensor y = at::empty_like(t);
  if (z.scalar_type() == at::kDouble) fc_fwd_impl<double>(at::Tensor(), z, bias, c, eps, tangent, tt, y, U);
  else fc_fwd_impl<float>(at::Tensor(), z, bias, c, eps, tangent, tt, y, U);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_fc_rows_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& t_in, const at::Tensor& U_in, const at::Tensor& z_in,
    const at::Tensor& bias_in, const at::Tensor& c_in, double eps, int64_t mask, bool tangent) {
  const at::Tensor z = z_in.contiguous();
  const at::Tensor t = t_in.contiguous(), U = U_in.contiguous();
  check_fc_rows_args(t, U, z);
  const at::Tensor bias = bias_in.numel() ? bias_in.to(z.scalar_type()).contiguous() : bias_in;
  const at::Tensor g = g_in.to(z.scalar_type()).contiguous();
  const double c = c_in.item<double>();
  at::Tensor gx = t.new_empty({0});
  at::Tensor gz = (mask & 2) ? at::empty_like(z) : t.new_empty({0});
  at::Tensor gb = ((mask & 4) && bias.numel()) ? at::empty({z.size(1)}, t.options()) : t.new_empty({0});
  at::Tensor gc = (mask & 8) ? at::zeros({}, t.options().dtype(at::kDouble)) : t.new_empty({0});
  at::Tensor gt, gU = at::empty({t.size(0)}, t.options());
  const int64_t m2 = (mask & ~int64_t(1)) | 1;  // the row terms are always formed
  if (z.scalar_type() == at::kDouble)
    fc_bwd_impl<double>(g, at::Tensor(), z, bias, c, t, eps, m2, tangent, gx, gz, gb, gc, U, &gt, &gU);
  else fc_bwd_impl<float>(g, at::Tensor(), z, bias, c, t, eps, m2, tangent, gx, gz, gb, gc, U, &gt, &gU);
  return {gt, gU, gz, gb, gc};
}

}  // namespace cpu
}  // namespace geoops
