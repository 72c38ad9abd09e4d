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
#include "row_norms.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

using at::vec::Vectorized;

// asinh(a) = sign(a) log1p(|a| + a^2 / (1 + sqrt(1 + a^2)))
template <typename T>
inline Vectorized<T> asinh_v(const Vectorized<T>& a) {
  using V = Vectorized<T>;
  const V one(T(1));
  const V ax = a.abs();
  const V a2 = ax * ax;
  return (ax + a2 / (one + (a2 + one).sqrt())).log1p().copysign(a);
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

template <typename T>
inline double hsum(const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  double s = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += double(buf[i]);
  return s;
}

struct ColConsts {
  std::vector<double> zn, ch, sh;  // double: used by the backward's column terms
  bool clamped_any = false;
};

template <typename T>
ColConsts column_consts(const at::Tensor& z, const at::Tensor& bias, double sc) {
  const int64_t n = z.size(0), m = z.size(1);
  const T* zp = z.data_ptr<T>();
  ColConsts cc;
  cc.zn.assign(m, 0.0);
  cc.ch.assign(m, 1.0);
  cc.sh.assign(m, 0.0);
  for (int64_t d = 0; d < n; ++d) {
    const T* zr = zp + d * m;
    for (int64_t j = 0; j < m; ++j) cc.zn[j] += double(zr[j]) * double(zr[j]);
  }
  for (int64_t j = 0; j < m; ++j) cc.zn[j] = std::max(std::sqrt(cc.zn[j]), 1e-15);
  if (bias.numel() > 0) {
    const T* bp = bias.data_ptr<T>();
    for (int64_t j = 0; j < m; ++j) {
      const double s = 2.0 * sc * double(bp[j]);
      cc.ch[j] = std::cosh(s);
      cc.sh[j] = std::sinh(s);
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

// one row of tangent_rows: the scale s of a row with U = |u|^2 (X = s^2 U); dsdn_n, dsdc as below
inline double tangent_row(double U, double sc, double maxnorm, double dmax_dc, double* dsdn_n = nullptr,
                          double* dsdc = nullptr) {
  const double n = std::max(std::sqrt(U), 1e-15);
  const double q = sc * n;
  double s, dsdq;
  if (q < 1e-3) {
    s = 1.0 - q * q / 3.0;
    dsdq = -2.0 * q / 3.0;
  } else {
    const double th = std::tanh(q);
    s = th / q;
    dsdq = ((1.0 - th * th) - s) / q;
  }
  double dn, dc;
  if (s * n > maxnorm) {
    s = maxnorm / n;
    dn = -maxnorm / (n * n * n);
    dc = dmax_dc / n;
  } else {
    dn = sc * dsdq / n;
    dc = n * dsdq / (2.0 * sc);
  }
  if (dsdn_n) *dsdn_n = dn;
  if (dsdc) *dsdc = dc;
  return s;
}

inline TangentRows tangent_rows(std::vector<double>& X, double sc, double maxnorm, double dmax_dc) {
  const int64_t N = X.size();
  TangentRows tr;
  tr.s.resize(N); tr.dsdn_n.resize(N); tr.dsdc.resize(N);
  for (int64_t i = 0; i < N; ++i) {
    const double s = tangent_row(X[i], sc, maxnorm, dmax_dc, &tr.dsdn_n[i], &tr.dsdc[i]);
    tr.s[i] = s;
    X[i] = s * s * X[i];
  }
  return tr;
}

// per-column constants in the compute type, laid out for vector loads
template <typename T>
struct ColVec {
  std::vector<T> C, S, Z2;  // ch / zn, sh, 2 zn
  ColVec(const ColConsts& cc) {
    const int64_t m = cc.zn.size();
    C.resize(m); S.resize(m); Z2.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      C[j] = T(cc.ch[j] / cc.zn[j]);
      S[j] = T(cc.sh[j]);
      Z2[j] = T(2.0 * cc.zn[j]);
    }
  }
};

// float32: asinh and sinh/cosh from SLEEF's log / exp (u10, no double-float arithmetic as in log1p / expm1)
// with odd Taylor polynomials near 0, where log(|a| + sqrt(1 + a^2)) and (e^u - e^-u) / 2 cancel:
//   asinh(a) = a (1 - a^2/6 + 3a^4/40 - ...), |a| < 1/2 (terms to a^21: truncation < 1e-9 relative)
//   sinh(u)  = u (1 + u^2/6 + u^4/120 + ...),   |u| < 1   (terms to u^13: truncation < 1e-10 relative)
// Both sides are evaluated for every lane and blended (no branch); e^|u| overflows to inf beyond 88.7, as
// expm1 did.
inline Vectorized<float> asinh_abs_f(const Vectorized<float>& ax) {
  using V = Vectorized<float>;
  const V one(1.f);
  const V a2 = ax * ax;
  const V big = (ax + (a2 + one).sqrt()).log();
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
  return V::blendv(big, small, ax < V(0.5f));
}

// sinh(|u|) and cosh(|u|), float32 (see asinh_abs_f)
inline void sinh_cosh_abs_f(const Vectorized<float>& au, Vectorized<float>& sh, Vectorized<float>& chv) {
  using V = Vectorized<float>;
  const V half(0.5f);
  const V e = au.exp();
  const V ie = V(1.f) / e;
  const V u2 = au * au;
  V p(1.f / 6227020800.f);  // 1/13!
  p = at::vec::fmadd(p, u2, V(1.f / 39916800.f));
  p = at::vec::fmadd(p, u2, V(1.f / 362880.f));
  p = at::vec::fmadd(p, u2, V(1.f / 5040.f));
  p = at::vec::fmadd(p, u2, V(1.f / 120.f));
  p = at::vec::fmadd(p, u2, V(1.f / 6.f));
  const V small = at::vec::fmadd(p * u2, au, au);
  sh = V::blendv((e - ie) * half, small, au < V(1.f));
  chv = (e + ie) * half;
}

// One row's a, u, w (vectorised).  Calls f(j0, count, a, A, w, cosh(u)) per vector; returns |w|^2.
template <typename T, typename F>
inline double row_pass(const T* tr, const ColVec<T>& cv, T k1, T k0, T inv_sc, int64_t m, F&& f) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  V acc(T(0));
  for (int64_t j = 0; j < m; j += L) {
    const int64_t cnt = std::min<int64_t>(L, m - j);
    const V t = cnt == L ? V::loadu(tr + j) : V::loadu(tr + j, cnt);
    const V Cj = cnt == L ? V::loadu(cv.C.data() + j) : V::loadu(cv.C.data() + j, cnt);
    const V Sj = cnt == L ? V::loadu(cv.S.data() + j) : V::loadu(cv.S.data() + j, cnt);
    const V Zj = cnt == L ? V::loadu(cv.Z2.data() + j) : V::loadu(cv.Z2.data() + j, cnt);
    const V a = V(k1) * t * Cj - V(k0) * Sj;
    V A, sh, chv;
    if constexpr (std::is_same_v<T, float>) {
      const V Aabs = asinh_abs_f(a.abs());
      A = Aabs.copysign(a);
      sinh_cosh_abs_f(Zj * Aabs, sh, chv);  // Z > 0: |u| = Z |A|
    } else {
      A = asinh_v(a);
      sinh_cosh_abs((Zj * A).abs(), sh, chv);
    }
    const V w = sh.copysign(a) * V(inv_sc);  // sign(u) = sign(a)
    acc = at::vec::fmadd(w, w, acc);
    f(j, cnt, a, A, w, chv);
  }
  return hsum(acc);
}

// the squared row norms: given (U, the epilogue-only entry) or computed from the rows of x
template <typename T>
std::vector<double> row_sq_or(const at::Tensor& x, const at::Tensor& U) {
  if (!U.defined()) return row_sq<T>(x);
  const T* up = U.data_ptr<T>();
  return std::vector<double>(up, up + U.numel());
}

// The forward's epilogue of one row: t_row -> y_row (w, then its projection), X = |x|^2, s the tangent
// row's scale (1 for plain rows).  w is written into y_row and rescaled there while the row is in L1.
template <typename T>
inline void fc_fwd_row(const T* tr, T* yr, double X, double s, const ColVec<T>& cv, double c, double sc,
                       double maxnorm, int64_t m) {
  using V = Vectorized<T>;
  const double lam = 2.0 / (1.0 - c * X);
  const double Sw = row_pass<T>(tr, cv, T(sc * lam * s), T(lam - 1.0), T(1.0 / sc), m,
                                [&](int64_t j, int64_t cnt, const V&, const V&, const V& w, const V&) {
                                  if (cnt == V::size()) w.store(yr + j);
                                  else w.store(yr + j, cnt);
                                });
  const double q = std::sqrt(1.0 + c * Sw);
  double f = 1.0 / (1.0 + q);
  const double ny = std::sqrt(Sw) * f;
  if (ny > maxnorm) f *= maxnorm / ny;
  const T fT = T(f);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) yr[j] *= fT;
}

// rows_only (U defined): t = x @ z is given (e.g. computed by a convolution) with U the squared row norms of x;
// x is not used.  Otherwise the GEMM runs per block of kFwdBlock rows inside the parallel loop (one MKL call
// per block, single-threaded there) and the block's epilogue follows while its t rows are still in cache.
constexpr int64_t kFwdBlock = 64;

template <typename T>
void fc_fwd_impl(const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias, double c, double eps,
                 bool tangent, at::Tensor& t, at::Tensor& y, const at::Tensor& U = at::Tensor()) {
  const int64_t N = t.size(0), m = z.size(1);
  const double sc = std::sqrt(c);
  const double maxnorm = (1.0 - eps) / std::sqrt(c + 1e-15);
  const ColConsts cc = column_consts<T>(z, bias, sc);
  const ColVec<T> cv(cc);
  const T* tp = t.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  // row i's epilogue from X = |x_i|^2 (of the tangent input when `tangent`: rescaled here)
  auto epilogue_row = [&](int64_t i, double X) {
    double s = 1.0;
    if (tangent) { s = tangent_row(X, sc, maxnorm, 0.0); X *= s * s; }
    fc_fwd_row<T>(tp + i * m, yp + i * m, X, s, cv, c, sc, maxnorm, m);
  };
  if (U.defined()) {
    const T* up = U.data_ptr<T>();
    at::parallel_for(0, N, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) epilogue_row(i, double(up[i]));
    });
    return;
  }
  const int64_t n = x.size(1);
  const T* xp = x.data_ptr<T>();
  const int64_t nb = (N + kFwdBlock - 1) / kFwdBlock;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    at::NoGradGuard no_grad;  // grad mode is thread-local: the pool's threads would see x's requires_grad
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kFwdBlock, nr = std::min(kFwdBlock, N - r0);
      at::Tensor tb = t.narrow(0, r0, nr);
      at::mm_out(tb, x.narrow(0, r0, nr), z);
      for (int64_t i = r0; i < r0 + nr; ++i) epilogue_row(i, row_sqnorm(xp + i * n, n));
    }
  });
}

// rows_only (U defined): x is not used; gt_out gets dL/dt, gU dL/dU (U = |x|^2, or |u|^2 of tangent rows) and gz
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
  const ColVec<T> cv(cc);
  std::vector<double> X = row_sq_or<T>(x, Uin);
  const std::vector<double> U = X;  // |u|^2 of tangent rows
  TangentRows trw;
  if (tangent) trw = tangent_rows(X, sc, maxnorm, dmax_dc);
  else trw.s.assign(N, 1.0);
  const bool want_x = mask & 1, want_z = mask & 2, want_b = (mask & 4) && bias.numel() > 0, want_c = mask & 8;
  const bool need_cols = want_z || want_b || want_c;
  at::Tensor gt = at::empty({N, m}, t.options());
  std::vector<double> rowcoef(N, 0.0);
  const int nth = at::get_num_threads();
  std::vector<std::vector<double>> accZ(nth), accC(nth), accS(nth);
  std::vector<double> gc_direct(nth, 0.0), gsc_a(nth, 0.0), gsc_b(nth, 0.0);
  const T* tp = t.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  T* gtp = gt.data_ptr<T>();
  const T inv_sc = T(1.0 / sc);
  at::parallel_for(0, N, 16, [&](int64_t i0, int64_t i1) {
    using V = Vectorized<T>;
    const int tid = at::get_thread_num();
    if (need_cols && accZ[tid].empty()) {
      accZ[tid].assign(m, 0.0); accC[tid].assign(m, 0.0); accS[tid].assign(m, 0.0);
    }
    std::vector<T> wv(m), cu(m), Av(m), ra(m);
    double gcd = 0, gsa = 0, gsb = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const double lam = 2.0 / (1.0 - c * X[i]);
      const T* tr = tp + i * m;
      const T* gr = gp + i * m;
      T* gtr = gtp + i * m;
      V gw_acc(T(0));
      const V one(T(1));
      const double si = trw.s[i];
      const double Sw = row_pass<T>(tr, cv, T(sc * lam * si), T(lam - 1.0), inv_sc, m,
                                    [&](int64_t j, int64_t cnt, const V& a, const V& A, const V& w, const V& chv) {
                                      const V gj = cnt == V::size() ? V::loadu(gr + j) : V::loadu(gr + j, cnt);
                                      gw_acc = at::vec::fmadd(gj, w, gw_acc);
                                      const V r = one / (a * a + one).sqrt();
                                      if (cnt == V::size()) {
                                        w.store(wv.data() + j); (chv * V(inv_sc)).store(cu.data() + j);
                                        A.store(Av.data() + j); r.store(ra.data() + j);
                                      } else {
                                        w.store(wv.data() + j, cnt); (chv * V(inv_sc)).store(cu.data() + j, cnt);
                                        A.store(Av.data() + j, cnt); r.store(ra.data() + j, cnt);
                                      }
                                    });
      const double gyw = hsum(gw_acc);
      const double q = std::sqrt(1.0 + c * Sw);
      const double s0 = 1.0 / (1.0 + q);
      const double nw = std::sqrt(Sw);
      const double ny = nw * s0;
      double alpha, beta;
      if (ny > maxnorm) {  // projected: y = maxnorm w / |w|
        const double f = maxnorm / ny;
        alpha = f * s0;
        beta = -alpha * gyw / Sw;
        gcd += (gyw / nw) * dmax_dc;
      } else {
        alpha = s0;
        beta = -gyw * c * s0 * s0 / q;
        gcd += -gyw * Sw * s0 * s0 / (2.0 * q);
      }
      const T aT = T(alpha), bT = T(beta), k1 = T(sc * lam * si), lamT = T(lam), scT = T(sc), sT = T(si);
      T glam = 0, gsa_r = 0, gsb_r = 0;
      double* aZ = need_cols ? accZ[tid].data() : nullptr;
      double* aC = need_cols ? accC[tid].data() : nullptr;
      double* aS = need_cols ? accS[tid].data() : nullptr;
      const T* Cp = cv.C.data();
      const T* Sp = cv.S.data();
      const T* Zp = cv.Z2.data();
      const double sl = sc * lam, l1 = lam - 1.0;
      // one fused pass over the row: dL/dt (into gt), the row term through lam, the sc terms, and with
      // COLS the column terms through zn (u = 2 zn A), C = ch / zn and S = sh (double, per thread)
      auto row_grads = [&](auto cols_tag) {
        constexpr bool COLS = decltype(cols_tag)::value;
        T r_lam = 0, r_sa = 0, r_sb = 0;
#pragma omp simd reduction(+ : r_lam, r_sa, r_sb)
        for (int64_t j = 0; j < m; ++j) {
          const T gw = aT * gr[j] + bT * wv[j];
          r_sa += gw * wv[j];
          const T gu = gw * cu[j];
          const T ga = gu * Zp[j] * ra[j];
          gtr[j] = ga * k1 * Cp[j];
          const T tmp = ga * tr[j] * sT;  // ga * t_j of the point x = s u
          r_lam += tmp * scT * Cp[j] - ga * Sp[j];
          r_sb += tmp * lamT * Cp[j];
          if constexpr (COLS) {
            aZ[j] += double(gu) * 2.0 * double(Av[j]);
            aC[j] += double(tmp) * sl;
            aS[j] -= double(ga) * l1;
          }
        }
        glam += r_lam;
        gsa_r += r_sa;
        gsb_r += r_sb;
      };
      if (need_cols) row_grads(std::true_type{});
      else row_grads(std::false_type{});
      rowcoef[i] = double(glam) * c * lam * lam;
      gcd += double(glam) * X[i] * lam * lam * 0.5;
      gsa += gsa_r;
      gsb += gsb_r;
    }
    gc_direct[tid] += gcd;
    gsc_a[tid] += gsa;
    gsc_b[tid] += gsb;
  });
  double gsc = 0, gcd = 0;
  for (int k = 0; k < nth; ++k) { gsc += -gsc_a[k] / sc + gsc_b[k]; gcd += gc_direct[k]; }
  std::vector<double> gzn(m, 0.0), gC(m, 0.0), gS(m, 0.0);
  if (need_cols)
    for (int k = 0; k < nth; ++k)
      if (!accZ[k].empty())
        for (int64_t j = 0; j < m; ++j) { gzn[j] += accZ[k][j]; gC[j] += accC[k][j]; gS[j] += accS[k][j]; }
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
  std::vector<double> tan_gc(nth, 0.0);
  if (rows_only) {
    // dL/dx_row = dt_row z^T + coef x_row: coef/2 is dL/dU; u . (dt_row z^T) = dt_row . t_row
    T* gUp = gU->data_ptr<T>();
    at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
      double tg = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const double rc = rowcoef[i];
        if (!tangent) { gUp[i] = T(0.5 * rc); continue; }
        const T* tr = tp + i * m;
        const T* gtr = gtp + i * m;
        double ug = 0;
        for (int64_t j = 0; j < m; ++j) ug += double(tr[j]) * double(gtr[j]);
        const double si = trw.s[i];
        const double u_gx = ug / si + rc * si * U[i];  // ug = u . (dt z^T), as gr_ . u of the full path
        gUp[i] = T(0.5 * (rc * si * si + u_gx * trw.dsdn_n[i]));
        tg += u_gx * trw.dsdc[i];
      }
      tan_gc[at::get_thread_num()] += tg;
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
          tan_gc[at::get_thread_num()] += u_gx * trw.dsdc[i];
        }
      }
    });
  }
  if (want_z) {
    if (rows_only) gz.zero_();
    else at::mm_out(gz, x.t(), gt);
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
  for (double v : tan_gc) gcd += v;
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
