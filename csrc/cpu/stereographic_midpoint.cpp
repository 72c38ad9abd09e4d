// The kappa-stereographic weighted midpoint's reduction and its backward (geoops.stereographic.weighted_midpoint):
// one pass over the points each.  The D-vector epilogue (F / L, the Mobius scalar multiplications, the sphere's
// antipode choice) runs on the G result rows with the row kernels (geoops/stereographic.py).
//
// Points of group g: x[g, i, :], i < N.  Forward per point: X = |x_i|^2 (double), lam = 2 / max(1 + k X, 1e-15),
// F += w c x_i, L += s w (lam - 1), with c = lam and s = 1, except for a point that posweight flips (w < 0): geoopt
// replaces it by its antipode with weight |w| but keeps lam of the original point, so s = -1 and, on the sphere
// (k > 0, antipode -x / (k X)), c = lam / (k X) (0 at X = 0, where geoopt's antipode is 0); for k <= 0 (antipode -x)
// c = lam.  Backward, P = <gF, x_i>:
//   dx_i = w c gF + 2 (w P c_X + s w gL lam_X) x_i,  dw_i = c P + s gL (lam - 1),  dk_g = sum_i w P c_k + s w gL lam_k
// (lam_X = -k lam^2 / 2, lam_k = -X lam^2 / 2, zero where the clamp holds lam at 2e15; for the sphere's flipped
// points q = lam / (k X) = 2 / (k X + k^2 X^2): q_X = -q^2 (k + 2 k^2 X) / 2, q_k = -q^2 (X + 2 k X^2) / 2).
//
// The root of the mean for k < 0 (stereo_midpoint_root_fwd_cpu / _bwd_cpu, the mean op's Q): the sums pass adds A,
// W, R per group and the groups near the boundary a second pass for S2 (see fwd_impl and bwd_impl below).
//
// Reproducibility: each group's points go in chunks of a fixed number of points (chunks::Partials, independent of
// the thread count), every sum a fixed-order chain: the same bits for any thread count.
//
// The point loops run on double SIMD lanes (at::vec, float points widened once per load): a point's |x|^2 and
// <g, x> in two lane accumulators (lane l: the columns = l mod kL, alternating blocks of kL columns), their lanes
// added in a fixed order, the last D mod kL columns in scalars after them.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this unit

#include "stereographic_midpoint.h"

#include "dvec_rows.h"
#include "geoops/stereo_math.h"
#include "row_chunks.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace geoops {
namespace cpu {

namespace {

constexpr double kLamFloor = 1e-15;  // geoopt's lambda_x clamp of 1 + k|x|^2

// Points per chunk: about 32768 elements of work (torch's grain), at least 16 points.
inline int64_t chunk_points(int64_t D) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(D, 1)); }

using dvec::DVec;
using dvec::hsum;
using dvec::kL;
using dvec::ld;
using dvec::st;

using at::vec::fmadd;
using at::vec::fnmadd;

// |x|^2 in double (see the top of the file for the order of the sums: dvec::lane_sums).
template <typename T>
inline double sqnorm(const T* x, int64_t D) {
  double r[1];
  dvec::lane_sums(
      D, [&](DVec* a, int64_t d) { const DVec v = ld(x + d); a[0] = fmadd(v, v, a[0]); },
      [&](double* a, int64_t d) { a[0] = std::fma(double(x[d]), double(x[d]), a[0]); }, r);
  return r[0];
}

// |x|^2 and |x - t s|^2 (t = +-1: the point's offset from the shift s of the root's scatter), the same order.
template <typename T>
inline void sqnorm_off(const T* x, const double* s, double t, int64_t D, double& X, double& E) {
  const DVec tv(t);
  double r[2];
  dvec::lane_sums(
      D,
      [&](DVec* a, int64_t d) {
        const DVec v = ld(x + d), e = fnmadd(tv, ld(s + d), v);
        a[0] = fmadd(v, v, a[0]), a[1] = fmadd(e, e, a[1]);
      },
      [&](double* a, int64_t d) {
        const double v = double(x[d]), e = std::fma(-t, s[d], v);
        a[0] = std::fma(v, v, a[0]), a[1] = std::fma(e, e, a[1]);
      },
      r);
  X = r[0], E = r[1];
}

// |x|^2, <g, x>, |e|^2 and <e, h> with e = x - t s (g, s, h in double), the same order.
template <typename T>
inline void sqnorm_dot_off(const T* x, const double* g, const double* s, double t, const double* h, int64_t D, double& X,
                           double& P, double& E, double& Z) {
  const DVec tv(t);
  double r[4];
  dvec::lane_sums(
      D,
      [&](DVec* a, int64_t d) {
        const DVec v = ld(x + d), e = fnmadd(tv, ld(s + d), v);
        a[0] = fmadd(v, v, a[0]), a[1] = fmadd(ld(g + d), v, a[1]);
        a[2] = fmadd(e, e, a[2]), a[3] = fmadd(ld(h + d), e, a[3]);
      },
      [&](double* a, int64_t d) {
        const double v = double(x[d]), e = std::fma(-t, s[d], v);
        a[0] = std::fma(v, v, a[0]), a[1] = std::fma(g[d], v, a[1]);
        a[2] = std::fma(e, e, a[2]), a[3] = std::fma(h[d], e, a[3]);
      },
      r);
  X = r[0], P = r[1], E = r[2], Z = r[3];
}

// |x|^2 and <g, x> (g in double), the same order.
template <typename T>
inline void sqnorm_dot(const T* x, const double* g, int64_t D, double& X, double& P) {
  double r[2];
  dvec::lane_sums(
      D,
      [&](DVec* a, int64_t d) {
        const DVec v = ld(x + d);
        a[0] = fmadd(v, v, a[0]), a[1] = fmadd(ld(g + d), v, a[1]);
      },
      [&](double* a, int64_t d) {
        const double v = double(x[d]);
        a[0] = std::fma(v, v, a[0]), a[1] = std::fma(g[d], v, a[1]);
      },
      r);
  X = r[0], P = r[1];
}

// a += c x (a in double).
template <typename T>
inline void axpy(double c, const T* x, int64_t D, double* a) {
  const DVec C(c);
  int64_t d = 0;
  for (; d + kL <= D; d += kL) st(a + d, at::vec::fmadd(C, ld(x + d), ld(a + d)));
  for (; d < D; ++d) a[d] = std::fma(c, double(x[d]), a[d]);
}

// o = a g + b x (g in double), narrowed to o's type.
template <typename T>
inline void combine(double a, const double* g, double b, const T* x, int64_t D, T* o) {
  const DVec A(a), B(b);
  int64_t d = 0;
  for (; d + kL <= D; d += kL) st(o + d, at::vec::fmadd(A, ld(g + d), B * ld(x + d)));
  for (; d < D; ++d) o[d] = T(std::fma(a, g[d], b * double(x[d])));
}

inline double kg(const double* k, int64_t nk, int64_t g) { return nk == 1 ? k[0] : k[g]; }

// One point's coefficients (the header): F += w c x, L += s w (lam - 1); derivatives for the backward.
struct PointCoef {
  double lam, c, s, lamX, lamk, cX, ck;
};
inline PointCoef point_coef(double X, double k, double w, bool posweight, bool grads) {
  PointCoef p;
  const double den = 1.0 + k * X;
  p.lam = 2.0 / std::max(den, kLamFloor);
  const bool live = den > kLamFloor;
  p.lamX = grads && live ? -0.5 * k * p.lam * p.lam : 0.0;
  p.lamk = grads && live ? -0.5 * X * p.lam * p.lam : 0.0;
  p.c = p.lam, p.cX = p.lamX, p.ck = p.lamk, p.s = 1.0;
  if (posweight && w < 0.0) {
    p.s = -1.0;
    if (k > 0.0) {
      if (X > 0.0) {
        const double q = 2.0 / (k * X + k * k * X * X);
        p.c = q;
        p.cX = grads ? -0.5 * q * q * (k + 2.0 * k * k * X) : 0.0;
        p.ck = grads ? -0.5 * q * q * (X + 2.0 * k * X * X) : 0.0;
      } else {
        p.c = p.cX = p.ck = 0.0;
      }
    }
  }
  return p;
}

// <a, b> of double vectors (the order of sqnorm's sums).
inline double dot(const double* a, const double* b, int64_t D) {
  double r[1];
  dvec::lane_sums(
      D, [&](DVec* s, int64_t d) { s[0] = fmadd(ld(a + d), ld(b + d), s[0]); },
      [&](double* s, int64_t d) { s[0] = std::fma(a[d], b[d], s[0]); }, r);
  return r[0];
}

// The root's per-group sums (S != nullptr, k < 0; see the header): with y_i the point after posweight's flip
// (sign sg_i: for k < 0 the antipode is -x_i, lam unchanged), u_i = sg_i w_i its weight, a_i = u_i lam_i:
// A = sum a_i, W = sum u_i, R = sum over the clamped rows of u_i (lam_i (1 + k X_i) - 2) in the sums' pass (scalars
// per point); then, only in the groups whose midpoint is near the boundary (kNearQ), a second pass for
// S2 = sum a_i |y_i - s|^2 about the centroid s = F / A (midpoint_shift; y_i - s = sg_i (x_i - sg_i s)) and
// Q = W^2 - k V + A R, V = A S2 - |F - A s|^2 (exact for any s, but about a point far from the centroid, e.g. a
// group's first point of small weight, A S2 ~ A^2 |y_0 - s|^2 cancels against |F - A y_0|^2 to V's few digits).
// Elsewhere Q = S2 = 0: the mean keeps 1 + k|f|^2 from f, within ~1 ulp there, and the passes cost what they did
// (the scalars only).
constexpr int kRootCols = 4;  // A, W, S2, R
// 1 + k|f|^2 < 1/4 (1 + k|m|^2 < 2/3): there the root formed from f loses more than ~2 bits (session 45, wmid)
constexpr double kNearQ = 0.25;

inline double flip_sign(double w, bool posweight) { return posweight && w < 0.0 ? -1.0 : 1.0; }

// The shift of group g's scatter: s = F / A (F itself where A = 0: any s is exact), the same bits in both passes.
inline void midpoint_shift(const double* F, double A, int64_t D, double* s) {
  const double a = A != 0.0 ? A : 1.0;
  for (int64_t d = 0; d < D; ++d) s[d] = F[d] / a;
}

template <typename T>
void fwd_impl(const T* xp, const T* wp, const double* k, int64_t nk, bool posweight, int64_t G, int64_t N, int64_t D,
              double* F, double* L, double* S) {
  const int64_t CH = chunk_points(D);
  const int64_t nc = std::max<int64_t>(1, (N + CH - 1) / CH);
  const int64_t WP = D + 1 + (S ? kRootCols : 0);
  // per (group, chunk): F (D), L [, A, W, S2 (0 here), R]; a group of one chunk sums straight into its rows
  const chunks::Partials part(nc > 1 ? G * nc : 0, WP);
  // the groups near the boundary: k < 0, 1 + k|f|^2 < kNearQ with f = F / L (L not clamped), from the row just summed
  std::vector<char> near(S ? G : 0, 0);
  auto near_test = [&](int64_t g, double kk, const double* Fg, double Lg) {
    if (!(kk < 0.0) || !(std::fabs(Lg) >= 1e-10)) return;
    near[g] = std::fma(kk, dot(Fg, Fg, D) / (Lg * Lg), 1.0) < kNearQ;
  };
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      const double kk = kg(k, nk, g);
      double* a = nc > 1 ? part.row(t) : F + g * D;
      if (nc == 1) std::fill(a, a + D, 0.0);  // F comes uninitialised: zeroed here, by the thread that sums into it
      const bool root = S && kk < 0.0;
      double l = 0, sA = 0, sW = 0, sR = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = xp + (g * N + i) * D;
        const double X = sqnorm(xr, D);
        const double w = wp ? double(wp[g * N + i]) : 1.0;
        const PointCoef pc = point_coef(X, kk, w, posweight, false);
        l += pc.s * w * (pc.lam - 1.0);
        axpy(w * pc.c, xr, D, a);
        if (root) {
          const double u = flip_sign(w, posweight) * w, den = 1.0 + kk * X;
          sA = std::fma(u, pc.lam, sA), sW += u;
          if (!(den > kLamFloor)) sR = std::fma(u, std::fma(pc.lam, den, -2.0), sR);
        }
      }
      if (S) {
        double* r = nc > 1 ? a + D + 1 : S + g * (1 + kRootCols) + 1;
        r[0] = sA, r[1] = sW, r[2] = 0.0, r[3] = sR;
      }
      if (nc > 1) {
        a[D] = l;
      } else {
        L[g] = l;
        if (S) S[g * (1 + kRootCols)] = 0.0, near_test(g, kk, a, l);
      }
    }
  });
  if (nc > 1) {
    at::parallel_for(0, G, 16, [&](int64_t g0, int64_t g1) {
      std::vector<double> s_(WP);
      for (int64_t g = g0; g < g1; ++g) {
        part.sum(g * nc, (g + 1) * nc, s_.data());
        std::copy(s_.begin(), s_.begin() + D, F + g * D);
        L[g] = s_[D];
        if (S) {
          std::copy(s_.begin() + D + 1, s_.end(), S + g * (1 + kRootCols) + 1);
          S[g * (1 + kRootCols)] = 0.0, near_test(g, kg(k, nk, g), F + g * D, L[g]);
        }
      }
    });
  }
  if (!S || std::find(near.begin(), near.end(), 1) == near.end()) return;
  // their S2 (the second pass, in the same chunks: fixed-order sums) and Q; each task forms its group's shift (D
  // divisions, no [G, D] buffer)
  const chunks::Partials p2(G * nc, 1);
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> shv(D);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      if (!near[g]) continue;
      const double kk = kg(k, nk, g);
      const double* sh = shv.data();
      midpoint_shift(F + g * D, S[g * (1 + kRootCols) + 1], D, shv.data());
      double s2 = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = xp + (g * N + i) * D;
        const double w = wp ? double(wp[g * N + i]) : 1.0;
        const double sg = flip_sign(w, posweight);
        double X, E;
        sqnorm_off(xr, sh, sg, D, X, E);
        const PointCoef pc = point_coef(X, kk, w, posweight, false);
        s2 = std::fma(sg * w * pc.lam, E, s2);
      }
      p2.row(t)[0] = s2;
    }
  });
  std::vector<double> shv(D);
  for (int64_t g = 0; g < G; ++g) {
    if (!near[g]) continue;
    double* r = S + g * (1 + kRootCols);
    p2.sum(g * nc, (g + 1) * nc, r + 3);
    const double kk = kg(k, nk, g), A = r[1], W = r[2], S2 = r[3], R = r[4];
    const double* sh = shv.data();
    midpoint_shift(F + g * D, A, D, shv.data());
    double s1 = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double e = std::fma(-A, sh[d], F[g * D + d]);
      s1 = std::fma(e, e, s1);
    }
    const double V = std::fma(A, S2, -s1);
    r[0] = std::fma(W, W, std::fma(-kk, V, A * R));
  }
}

// The backward; with gQ (and F, S: the root's sums) it adds, in groups of k < 0, Q's part (Q = W^2 - k V + A R,
// D_i = dV/da_i = sum_j a_j |y_i - y_j|^2 = A |y_i - s|^2 - 2 <y_i - s, S1> + S2):
//   du_i = gQ (2 W + lam_i (R - k D_i) + A r_i),  r_i = lam_i (1 + k X_i) - 2 on the clamped rows (else 0);
//   dy_i = gQ (-2 k a_i (A y_i - F) + 2 y_i (u_i (R - k D_i) lam_X  [live]  |  A u_i lam_i k  [clamped]));
//   dk   = gQ (-V + sum_i (u_i (R - k D_i) lam_k  [live]  |  A u_i lam_i X_i  [clamped])).
// In x and w (x_i = sg_i y_i, w_i = sg_i u_i): dw_i += sg_i du_i; dx_i's -2 k a_i gQ (-F) sg_i = 2 k gQ w_i lam_i F
// joins the w_i c_i gF term (gF' = gF + 2 k gQ F per group), the rest is a multiple of x_i.
template <typename T>
void bwd_impl(const double* gF, const double* gL, const double* gQ, const double* Fs, const double* S, const T* xp,
              const T* wp, const double* k, int64_t nk, bool posweight, int64_t G, int64_t N, int64_t D, T* dx, T* dw,
              double* dk) {
  const int64_t CH = chunk_points(D);
  const int64_t nc = std::max<int64_t>(1, (N + CH - 1) / CH);
  const chunks::Partials part(G * nc, 1);  // per (group, chunk): dk
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> s1v, gfv, shv;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      const double kk = kg(k, nk, g);
      const double* gf = gF + g * D;
      const double gl = gL[g];
      double dkl = 0;
      // (Q = 0: a group the forward did not form Q in, or one whose mean did not use it: no gradient through Q)
      const double gq = gQ && kk < 0.0 && S[g * (1 + kRootCols)] != 0.0 ? gQ[g] : 0.0;
      if (gq != 0.0) {
        const double* r = S + g * (1 + kRootCols);
        const double A = r[1], W = r[2], S2 = r[3], R = r[4];
        const double* Fg = Fs + g * D;
        s1v.resize(D), gfv.resize(D), shv.resize(D);
        midpoint_shift(Fg, A, D, shv.data());  // the forward's shift (S2 is about it)
        double s1 = 0;
        for (int64_t d = 0; d < D; ++d) {
          s1v[d] = std::fma(-A, shv[d], Fg[d]);
          s1 = std::fma(s1v[d], s1v[d], s1);
          gfv[d] = std::fma(2.0 * kk * gq, Fg[d], gf[d]);
        }
        if (i0 == 0) dkl = -gq * std::fma(A, S2, -s1);  // -V gQ, once per group
        for (int64_t i = i0; i < i1; ++i) {
          const T* xr = xp + (g * N + i) * D;
          const double w = wp ? double(wp[g * N + i]) : 1.0;
          const double sg = flip_sign(w, posweight), u = sg * w;
          double X, P, E, Z;
          sqnorm_dot_off(xr, gf, shv.data(), sg, s1v.data(), D, X, P, E, Z);
          const PointCoef pc = point_coef(X, kk, w, posweight, true);
          const double den = 1.0 + kk * X;
          const bool live = den > kLamFloor;
          const double Di = std::fma(A, E, std::fma(-2.0 * sg, Z, S2));
          const double RkD = std::fma(-kk, Di, R);
          const double ri = live ? 0.0 : std::fma(pc.lam, den, -2.0);
          const double du = gq * (2.0 * W + pc.lam * RkD + A * ri);
          const double sgl = pc.s * gl;
          if (dw) dw[g * N + i] = T(std::fma(pc.c, P, std::fma(sgl, pc.lam - 1.0, sg * du)));
          if (dx) {
            const double bq = -2.0 * kk * gq * A * u * pc.lam +
                              (live ? 2.0 * gq * u * RkD * pc.lamX : 2.0 * gq * A * u * pc.lam * kk);
            combine(w * pc.c, gfv.data(), std::fma(2.0 * w, P * pc.cX + sgl * pc.lamX, bq), xr, D,
                    dx + (g * N + i) * D);
          }
          dkl += w * (P * pc.ck + sgl * pc.lamk) + (live ? gq * u * RkD * pc.lamk : gq * A * u * pc.lam * X);
        }
      } else {
        for (int64_t i = i0; i < i1; ++i) {
          const T* xr = xp + (g * N + i) * D;
          double X, P;
          sqnorm_dot(xr, gf, D, X, P);
          const double w = wp ? double(wp[g * N + i]) : 1.0;
          const PointCoef pc = point_coef(X, kk, w, posweight, true);
          const double sgl = pc.s * gl;
          if (dw) dw[g * N + i] = T(std::fma(pc.c, P, sgl * (pc.lam - 1.0)));
          if (dx) {
            combine(w * pc.c, gf, 2.0 * w * (P * pc.cX + sgl * pc.lamX), xr, D, dx + (g * N + i) * D);
          }
          dkl += w * (P * pc.ck + sgl * pc.lamk);
        }
      }
      part.row(t)[0] = dkl;
    }
  });
  if (dk)
    for (int64_t g = 0; g < G; ++g) part.sum(g * nc, (g + 1) * nc, dk + g);
}

void check_args(const at::Tensor& x, const c10::optional<at::Tensor>& w, const at::Tensor& k) {
  TORCH_CHECK(x.dim() == 3, "stereo_midpoint: x must be (G, N, D), got ", x.dim(), " dims");
  TORCH_CHECK(x.device().is_cpu(), "stereo_midpoint: x must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "stereo_midpoint: x must be float32 or float64");
  if (w.has_value() && w->defined()) {
    TORCH_CHECK(w->scalar_type() == x.scalar_type(), "stereo_midpoint: weights must have x's dtype");
    TORCH_CHECK(w->dim() == 2 && w->size(0) == x.size(0) && w->size(1) == x.size(1),
                "stereo_midpoint: weights must be (G, N) = (", x.size(0), ", ", x.size(1), ")");
  }
  TORCH_CHECK(k.numel() == 1 || k.numel() == x.size(0), "stereo_midpoint: k must have 1 or G = ", x.size(0),
              " elements, got ", k.numel());
}

// The entry points' operands: x contiguous, w contiguous or undefined, k in double.
struct Operands {
  at::Tensor x, w, k;
  int64_t G, N, D;
  Operands(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in, const at::Tensor& k_in) {
    check_args(x_in, w_in, k_in);
    x = x_in.contiguous();
    if (w_in.has_value() && w_in->defined()) w = w_in->contiguous();
    k = k_in.to(at::kDouble).contiguous();
    G = x.size(0), N = x.size(1), D = x.size(2);
  }
  template <typename T>
  const T* wp() const { return w.defined() ? w.data_ptr<T>() : nullptr; }
};

// ---------------------------------------------------------------- the mean of each group from its sums
// den = L clamped away from 0 (to 1e-10 / -1e-10, its sign kept; a NaN stays), t = F / den, mean = a t with
// a = mobius_scalar_mul's coefficient of r = 1/2 at |t|^2 (csrc/include/geoops/stereo_math.h).  Backward from gm:
// the coefficient's adjoints at ga = <gm, t> give dt = a gm + 2 xx_ t, then gF = dt / den, gL = -<dt, t> / den
// where the clamp passes L (|L| >= 1e-10), gk = the coefficient's k adjoint.  One group per iteration, D-vectors
// in double; the groups' sums are fixed-order chains, as above.
constexpr double kDenFloor = 1e-10;  // geoopt's clamp of the denominator sum

inline double clamp_den(double L) { return L >= 0.0 ? std::max(L, kDenFloor) : std::min(L, -kDenFloor); }


// The half-scalar-multiplication row of group g: t = F / den (written to t), returns the row scalars.
inline stereo::Row<double> half_row(const double* F, double den, double k, int64_t D, double* t) {
  const double inv = 1.0 / den;
  for (int64_t d = 0; d < D; ++d) t[d] = F[d] * inv;
  return {dot(t, t, D), 0.0, 0.0, 0.0, k, 0.5};
}

}  // namespace

namespace {

// The root's groups of the mean (Q given, k < 0, L not clamped, Q > 0): m = f / (1 + r), f = F / L, r = sqrt(Q) / |L|
// (q = Q / L^2 = 1 + k|f|^2 without its cancellation: the sums' Q, see stereo_midpoint_root_fwd_cpu).
inline bool root_group(const double* Q, double L, double k, int64_t g) {
  return Q && k < 0.0 && std::fabs(L) >= kDenFloor && Q[g] > 0.0;
}

struct MeanArgs {
  at::Tensor F, L, Q, k;
  int64_t G, D, nk;
  MeanArgs(const at::Tensor& F_in, const at::Tensor& L_in, const c10::optional<at::Tensor>& Q_in,
           const at::Tensor& k_in) {
    TORCH_CHECK(F_in.dim() == 2 && L_in.dim() == 1 && L_in.size(0) == F_in.size(0),
                "stereo_midpoint_mean: F must be (G, D) and L (G,)");
    F = F_in.to(at::kDouble).contiguous(), L = L_in.to(at::kDouble).contiguous();
    k = k_in.to(at::kDouble).contiguous();
    G = F.size(0), D = F.size(1), nk = k.numel();
    TORCH_CHECK(nk == 1 || nk == G, "stereo_midpoint_mean: k must have 1 or G = ", G, " elements, got ", nk);
    if (Q_in.has_value() && Q_in->defined()) {
      TORCH_CHECK(Q_in->dim() == 1 && Q_in->size(0) == G, "stereo_midpoint_mean: Q must be (G,) = (", G, ")");
      Q = Q_in->to(at::kDouble).contiguous();
    }
  }
  const double* Qp() const { return Q.defined() ? Q.data_ptr<double>() : nullptr; }
};

}  // namespace

at::Tensor stereo_midpoint_mean_fwd_cpu(const at::Tensor& F_in, const at::Tensor& L_in,
                                        const c10::optional<at::Tensor>& Q_in, const at::Tensor& k_in) {
  const MeanArgs o(F_in, L_in, Q_in, k_in);
  const int64_t G = o.G, D = o.D, nk = o.nk;
  at::Tensor mean = at::empty({G, D}, o.F.options());
  const double *Fp = o.F.data_ptr<double>(), *Lp = o.L.data_ptr<double>(), *kp = o.k.data_ptr<double>();
  const double* Qp = o.Qp();
  double* mp = mean.data_ptr<double>();
  at::parallel_for(0, G, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      double* out = mp + g * D;
      const double kk = kg(kp, nk, g), L = Lp[g];
      if (root_group(Qp, L, kk, g)) {
        const double c = 1.0 / (L * (1.0 + std::sqrt(Qp[g]) / std::fabs(L)));
        for (int64_t d = 0; d < D; ++d) out[d] = Fp[g * D + d] * c;
        continue;
      }
      const stereo::Row<double> s = half_row(Fp + g * D, clamp_den(L), kk, D, out);
      const double a = stereo::fwd(stereo::MOBIUS_SCALAR_MUL, s, 0.0).a;
      for (int64_t d = 0; d < D; ++d) out[d] *= a;
    }
  });
  return mean;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_mean_bwd_cpu(
    const at::Tensor& gm_in, const at::Tensor& F_in, const at::Tensor& L_in, const c10::optional<at::Tensor>& Q_in,
    const at::Tensor& k_in, int64_t mask) {
  const MeanArgs o(F_in, L_in, Q_in, k_in);
  const int64_t G = o.G, D = o.D, nk = o.nk;
  TORCH_CHECK(gm_in.dim() == 2 && gm_in.size(0) == G && gm_in.size(1) == D,
              "stereo_midpoint_mean: gm must be (G, D) = (", G, ", ", D, ")");
  const at::Tensor gm = gm_in.to(at::kDouble).contiguous();
  const auto dopt = o.F.options();
  at::Tensor gF = at::empty({G, D}, dopt), gL = at::empty({G}, dopt);
  at::Tensor gQ = o.Q.defined() ? at::empty({G}, dopt) : o.F.new_empty({0});
  at::Tensor gk = (mask & 4) ? at::empty({G}, dopt) : o.F.new_empty({0});
  const double *Fp = o.F.data_ptr<double>(), *Lp = o.L.data_ptr<double>(), *kp = o.k.data_ptr<double>();
  const double* Qp = o.Qp();
  const double* gp = gm.data_ptr<double>();
  double *gFp = gF.data_ptr<double>(), *gLp = gL.data_ptr<double>(), *gkp = (mask & 4) ? gk.data_ptr<double>() : nullptr;
  double* gQp = Qp ? gQ.data_ptr<double>() : nullptr;
  at::parallel_for(0, G, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      double* t = gFp + g * D;  // t first, then dt / den in place
      const double kk = kg(kp, nk, g), L = Lp[g];
      const double* gr = gp + g * D;
      if (root_group(Qp, L, kk, g)) {
        // m = f / (1 + r), f = F / L, r = sqrt(Q) / |L|: gf = gm / (1 + r), gr = -<gm, f> / (1 + r)^2,
        // gQ = gr / (2 r L^2), gL = -<gf, f> / L - r gr / L (r's |L|), gk 0 (k reaches m through Q only)
        const double inv = 1.0 / L, r = std::sqrt(Qp[g]) / std::fabs(L), opr = 1.0 + r;
        double gmf = 0;
        for (int64_t d = 0; d < D; ++d) gmf = std::fma(gr[d], Fp[g * D + d] * inv, gmf);
        const double grr = -gmf / (opr * opr), gff = gmf / opr;
        for (int64_t d = 0; d < D; ++d) t[d] = gr[d] / opr * inv;
        gLp[g] = -(gff + r * grr) * inv;
        gQp[g] = grr / (2.0 * r * L * L);
        if (gkp) gkp[g] = 0.0;
        continue;
      }
      const double den = clamp_den(L);
      const stereo::Row<double> s = half_row(Fp + g * D, den, kk, D, t);
      const double a = stereo::fwd(stereo::MOBIUS_SCALAR_MUL, s, 0.0).a;
      const stereo::Row<double> adj = stereo::vjp(stereo::MOBIUS_SCALAR_MUL, s, 0.0, dot(gr, t, D), 0.0, 0.0);
      const double inv = 1.0 / den, b = 2.0 * adj.xx;
      double dtt = 0.0;  // <dt, t>
      for (int64_t d = 0; d < D; ++d) {
        const double dt = std::fma(a, gr[d], b * t[d]);
        dtt = std::fma(dt, t[d], dtt);
        t[d] = dt * inv;
      }
      gLp[g] = std::fabs(L) >= kDenFloor ? -dtt * inv : 0.0;
      if (gQp) gQp[g] = 0.0;
      if (gkp) gkp[g] = adj.k;
    }
  });
  return {gF, gL, gQ, gk};
}

namespace {

template <typename F>
void by_type(const at::Tensor& x, F&& f) {
  if (x.scalar_type() == at::kDouble)
    f(double());
  else
    f(float());
}

// The sums (and the root's, S non-null) of every group: F (G, D), L (G,) [, S (G, 5)] in double.
std::vector<at::Tensor> sums_fwd(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in, const at::Tensor& k_in,
                                 bool posweight, bool root) {
  const Operands o(x_in, w_in, k_in);
  const at::Tensor &x = o.x, &k = o.k;
  const int64_t G = o.G, N = o.N, D = o.D;
  const auto dopt = x.options().dtype(at::kDouble);
  std::vector<at::Tensor> out;
  if (G == 0 || N == 0) {
    out = {at::zeros({G, D}, dopt), at::zeros({G}, dopt)};
    if (root) out.push_back(at::zeros({G, 1 + kRootCols}, dopt));
    return out;
  }
  out = {at::empty({G, D}, dopt), at::empty({G}, dopt)};  // every element written below
  if (root) out.push_back(at::empty({G, 1 + kRootCols}, dopt));
  by_type(x, [&](auto z) {
    using T = decltype(z);
    fwd_impl<T>(x.data_ptr<T>(), o.wp<T>(), k.data_ptr<double>(), k.numel(), posweight, G, N, D,
                out[0].data_ptr<double>(), out[1].data_ptr<double>(), root ? out[2].data_ptr<double>() : nullptr);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sums_bwd(const at::Tensor& gF_in, const at::Tensor& gL_in,
                                                        const at::Tensor* gQ_in, const at::Tensor* F_in,
                                                        const at::Tensor* S_in, const at::Tensor& x_in,
                                                        const c10::optional<at::Tensor>& w_in, const at::Tensor& k_in,
                                                        bool posweight, int64_t mask) {
  const Operands o(x_in, w_in, k_in);
  const at::Tensor &x = o.x, &k = o.k;
  const int64_t G = o.G, N = o.N, D = o.D;
  const at::Tensor gF = gF_in.to(at::kDouble).expand({G, D}).contiguous();
  const at::Tensor gL = gL_in.to(at::kDouble).expand({G}).contiguous();
  at::Tensor gQ, F, S;
  if (gQ_in) {
    gQ = gQ_in->to(at::kDouble).expand({G}).contiguous();
    F = F_in->to(at::kDouble).contiguous(), S = S_in->to(at::kDouble).contiguous();
    TORCH_CHECK(F.dim() == 2 && F.size(0) == G && F.size(1) == D, "stereo_midpoint_root: F must be (G, D) = (", G,
                ", ", D, ")");
    TORCH_CHECK(S.dim() == 2 && S.size(0) == G && S.size(1) == 1 + kRootCols, "stereo_midpoint_root: S must be (G, ",
                1 + kRootCols, ")");
  }
  at::Tensor dx = (mask & 1) ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dw = (mask & 2) && o.w.defined() ? at::empty({G, N}, x.options()) : x.new_empty({0});
  at::Tensor dk = (mask & 4) ? at::zeros({G}, x.options().dtype(at::kDouble)) : x.new_empty({0});
  if (G == 0 || N == 0 || !(mask & 7)) return {dx, dw, dk};
  by_type(x, [&](auto z) {
    using T = decltype(z);
    bwd_impl<T>(gF.data_ptr<double>(), gL.data_ptr<double>(), gQ_in ? gQ.data_ptr<double>() : nullptr,
                gQ_in ? F.data_ptr<double>() : nullptr, gQ_in ? S.data_ptr<double>() : nullptr, x.data_ptr<T>(),
                o.wp<T>(), k.data_ptr<double>(), k.numel(), posweight, G, N, D,
                (mask & 1) ? dx.data_ptr<T>() : nullptr, dw.numel() ? dw.data_ptr<T>() : nullptr,
                (mask & 4) ? dk.data_ptr<double>() : nullptr);
  });
  return {dx, dw, dk};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> stereo_midpoint_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& w,
                                                           const at::Tensor& k, bool posweight) {
  auto o = sums_fwd(x, w, k, posweight, false);
  return {o[0], o[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_root_fwd_cpu(const at::Tensor& x,
                                                                            const c10::optional<at::Tensor>& w,
                                                                            const at::Tensor& k, bool posweight) {
  auto o = sums_fwd(x, w, k, posweight, true);
  return {o[0], o[1], o[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_bwd_cpu(
    const at::Tensor& gF, const at::Tensor& gL, const at::Tensor& x, const c10::optional<at::Tensor>& w,
    const at::Tensor& k, bool posweight, int64_t mask) {
  return sums_bwd(gF, gL, nullptr, nullptr, nullptr, x, w, k, posweight, mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_root_bwd_cpu(
    const at::Tensor& gF, const at::Tensor& gL, const at::Tensor& gQ, const at::Tensor& F, const at::Tensor& S,
    const at::Tensor& x, const c10::optional<at::Tensor>& w, const at::Tensor& k, bool posweight, int64_t mask) {
  return sums_bwd(gF, gL, &gQ, &F, &S, x, w, k, posweight, mask);
}

}  // namespace cpu
}  // namespace geoops
