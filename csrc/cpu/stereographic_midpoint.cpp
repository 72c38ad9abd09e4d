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

// |x|^2 in double (see the top of the file for the order of the sums).
template <typename T>
inline double sqnorm(const T* x, int64_t D) {
  DVec a0(0.0), a1(0.0);
  int64_t d = 0;
  for (; d + 2 * kL <= D; d += 2 * kL) {
    const DVec v0 = ld(x + d), v1 = ld(x + d + kL);
    a0 = at::vec::fmadd(v0, v0, a0), a1 = at::vec::fmadd(v1, v1, a1);
  }
  if (d + kL <= D) {
    const DVec v = ld(x + d);
    a0 = at::vec::fmadd(v, v, a0), d += kL;
  }
  double X = hsum(a0 + a1);
  for (; d < D; ++d) X = std::fma(double(x[d]), double(x[d]), X);
  return X;
}

// |x|^2 and <g, x> (g in double), the same order.
template <typename T>
inline void sqnorm_dot(const T* x, const double* g, int64_t D, double& X, double& P) {
  DVec a0(0.0), a1(0.0), b0(0.0), b1(0.0);
  int64_t d = 0;
  for (; d + 2 * kL <= D; d += 2 * kL) {
    const DVec v0 = ld(x + d), v1 = ld(x + d + kL);
    a0 = at::vec::fmadd(v0, v0, a0), a1 = at::vec::fmadd(v1, v1, a1);
    b0 = at::vec::fmadd(ld(g + d), v0, b0), b1 = at::vec::fmadd(ld(g + d + kL), v1, b1);
  }
  if (d + kL <= D) {
    const DVec v = ld(x + d);
    a0 = at::vec::fmadd(v, v, a0), b0 = at::vec::fmadd(ld(g + d), v, b0), d += kL;
  }
  X = hsum(a0 + a1), P = hsum(b0 + b1);
  for (; d < D; ++d) X = std::fma(double(x[d]), double(x[d]), X), P = std::fma(g[d], double(x[d]), P);
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

template <typename T>
void fwd_impl(const T* xp, const T* wp, const double* k, int64_t nk, bool posweight, int64_t G, int64_t N, int64_t D,
              double* F, double* L) {
  const int64_t CH = chunk_points(D);
  const int64_t nc = std::max<int64_t>(1, (N + CH - 1) / CH);
  // per (group, chunk): F (D), L; a group of one chunk sums straight into its F row (zeroed first) and L
  const chunks::Partials part(nc > 1 ? G * nc : 0, D + 1);
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      const double kk = kg(k, nk, g);
      double* a = nc > 1 ? part.row(t) : F + g * D;
      if (nc == 1) std::fill(a, a + D, 0.0);  // F comes uninitialised: zeroed here, by the thread that sums into it
      double l = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = xp + (g * N + i) * D;
        const double X = sqnorm(xr, D);
        const double w = wp ? double(wp[g * N + i]) : 1.0;
        const PointCoef pc = point_coef(X, kk, w, posweight, false);
        l += pc.s * w * (pc.lam - 1.0);
        axpy(w * pc.c, xr, D, a);
      }
      if (nc > 1)
        a[D] = l;
      else
        L[g] = l;
    }
  });
  if (nc == 1) return;
  at::parallel_for(0, G, 16, [&](int64_t g0, int64_t g1) {
    std::vector<double> s_(D + 1);
    for (int64_t g = g0; g < g1; ++g) {
      part.sum(g * nc, (g + 1) * nc, s_.data());
      std::copy(s_.begin(), s_.begin() + D, F + g * D);
      L[g] = s_[D];
    }
  });
}

template <typename T>
void bwd_impl(const double* gF, const double* gL, const T* xp, const T* wp, const double* k, int64_t nk,
              bool posweight, int64_t G, int64_t N, int64_t D, T* dx, T* dw, double* dk) {
  const int64_t CH = chunk_points(D);
  const int64_t nc = std::max<int64_t>(1, (N + CH - 1) / CH);
  const chunks::Partials part(G * nc, 1);  // per (group, chunk): dk
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      const double kk = kg(k, nk, g);
      const double* gf = gF + g * D;
      const double gl = gL[g];
      double dkl = 0;
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

inline double dot(const double* a, const double* b, int64_t D) {
  DVec s0(0.0), s1(0.0);
  int64_t d = 0;
  for (; d + 2 * kL <= D; d += 2 * kL)
    s0 = at::vec::fmadd(ld(a + d), ld(b + d), s0), s1 = at::vec::fmadd(ld(a + d + kL), ld(b + d + kL), s1);
  if (d + kL <= D) s0 = at::vec::fmadd(ld(a + d), ld(b + d), s0), d += kL;
  double r = hsum(s0 + s1);
  for (; d < D; ++d) r = std::fma(a[d], b[d], r);
  return r;
}

// The half-scalar-multiplication row of group g: t = F / den (written to t), returns the row scalars.
inline stereo::Row<double> half_row(const double* F, double den, double k, int64_t D, double* t) {
  const double inv = 1.0 / den;
  for (int64_t d = 0; d < D; ++d) t[d] = F[d] * inv;
  return {dot(t, t, D), 0.0, 0.0, 0.0, k, 0.5};
}

}  // namespace

at::Tensor stereo_midpoint_mean_fwd_cpu(const at::Tensor& F_in, const at::Tensor& L_in, const at::Tensor& k_in) {
  TORCH_CHECK(F_in.dim() == 2 && L_in.dim() == 1 && L_in.size(0) == F_in.size(0),
              "stereo_midpoint_mean: F must be (G, D) and L (G,)");
  const at::Tensor F = F_in.to(at::kDouble).contiguous(), L = L_in.to(at::kDouble).contiguous();
  const at::Tensor k = k_in.to(at::kDouble).contiguous();
  const int64_t G = F.size(0), D = F.size(1), nk = k.numel();
  TORCH_CHECK(nk == 1 || nk == G, "stereo_midpoint_mean: k must have 1 or G = ", G, " elements, got ", nk);
  at::Tensor mean = at::empty({G, D}, F.options());
  const double *Fp = F.data_ptr<double>(), *Lp = L.data_ptr<double>(), *kp = k.data_ptr<double>();
  double* mp = mean.data_ptr<double>();
  at::parallel_for(0, G, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      double* o = mp + g * D;
      const stereo::Row<double> s = half_row(Fp + g * D, clamp_den(Lp[g]), kg(kp, nk, g), D, o);
      const double a = stereo::fwd(stereo::MOBIUS_SCALAR_MUL, s, 0.0).a;
      for (int64_t d = 0; d < D; ++d) o[d] *= a;
    }
  });
  return mean;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_mean_bwd_cpu(const at::Tensor& gm_in, const at::Tensor& F_in,
                                                                           const at::Tensor& L_in, const at::Tensor& k_in,
                                                                           int64_t mask) {
  const at::Tensor F = F_in.to(at::kDouble).contiguous(), L = L_in.to(at::kDouble).contiguous();
  const at::Tensor k = k_in.to(at::kDouble).contiguous();
  const int64_t G = F.size(0), D = F.size(1), nk = k.numel();
  TORCH_CHECK(gm_in.dim() == 2 && gm_in.size(0) == G && gm_in.size(1) == D,
              "stereo_midpoint_mean: gm must be (G, D) = (", G, ", ", D, ")");
  const at::Tensor gm = gm_in.to(at::kDouble).contiguous();
  at::Tensor gF = at::empty({G, D}, F.options()), gL = at::empty({G}, F.options());
  at::Tensor gk = (mask & 4) ? at::empty({G}, F.options()) : F.new_empty({0});
  const double *Fp = F.data_ptr<double>(), *Lp = L.data_ptr<double>(), *kp = k.data_ptr<double>();
  const double* gp = gm.data_ptr<double>();
  double *gFp = gF.data_ptr<double>(), *gLp = gL.data_ptr<double>(), *gkp = (mask & 4) ? gk.data_ptr<double>() : nullptr;
  at::parallel_for(0, G, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      double* t = gFp + g * D;  // t first, then dt / den in place
      const double den = clamp_den(Lp[g]);
      const double* gr = gp + g * D;
      const stereo::Row<double> s = half_row(Fp + g * D, den, kg(kp, nk, g), D, t);
      const double a = stereo::fwd(stereo::MOBIUS_SCALAR_MUL, s, 0.0).a;
      const stereo::Row<double> adj = stereo::vjp(stereo::MOBIUS_SCALAR_MUL, s, 0.0, dot(gr, t, D), 0.0, 0.0);
      const double inv = 1.0 / den, b = 2.0 * adj.xx;
      double dtt = 0.0;  // <dt, t>
      for (int64_t d = 0; d < D; ++d) {
        const double dt = std::fma(a, gr[d], b * t[d]);
        dtt = std::fma(dt, t[d], dtt);
        t[d] = dt * inv;
      }
      gLp[g] = std::fabs(Lp[g]) >= kDenFloor ? -dtt * inv : 0.0;
      if (gkp) gkp[g] = adj.k;
    }
  });
  return {gF, gL, gk};
}

std::tuple<at::Tensor, at::Tensor> stereo_midpoint_fwd_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in,
                                                           const at::Tensor& k_in, bool posweight) {
  const Operands o(x_in, w_in, k_in);
  const at::Tensor &x = o.x, &k = o.k;
  const int64_t G = o.G, N = o.N, D = o.D;
  const auto dopt = x.options().dtype(at::kDouble);
  if (G == 0 || N == 0) return {at::zeros({G, D}, dopt), at::zeros({G}, dopt)};
  at::Tensor F = at::empty({G, D}, dopt), L = at::empty({G}, dopt);  // every element written below
  if (x.scalar_type() == at::kDouble)
    fwd_impl<double>(x.data_ptr<double>(), o.wp<double>(), k.data_ptr<double>(), k.numel(),
                     posweight, G, N, D, F.data_ptr<double>(), L.data_ptr<double>());
  else
    fwd_impl<float>(x.data_ptr<float>(), o.wp<float>(), k.data_ptr<double>(), k.numel(),
                    posweight, G, N, D, F.data_ptr<double>(), L.data_ptr<double>());
  return {F, L};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_bwd_cpu(
    const at::Tensor& gF_in, const at::Tensor& gL_in, const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in,
    const at::Tensor& k_in, bool posweight, int64_t mask) {
  const Operands o(x_in, w_in, k_in);
  const at::Tensor &x = o.x, &k = o.k;
  const int64_t G = o.G, N = o.N, D = o.D;
  const at::Tensor gF = gF_in.to(at::kDouble).expand({G, D}).contiguous();
  const at::Tensor gL = gL_in.to(at::kDouble).expand({G}).contiguous();
  at::Tensor dx = (mask & 1) ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dw = (mask & 2) && o.w.defined() ? at::empty({G, N}, x.options()) : x.new_empty({0});
  at::Tensor dk = (mask & 4) ? at::zeros({G}, x.options().dtype(at::kDouble)) : x.new_empty({0});
  if (G == 0 || N == 0 || !(mask & 7)) return {dx, dw, dk};
  if (x.scalar_type() == at::kDouble)
    bwd_impl<double>(gF.data_ptr<double>(), gL.data_ptr<double>(), x.data_ptr<double>(),
                     o.wp<double>(), k.data_ptr<double>(), k.numel(), posweight, G, N, D,
                     (mask & 1) ? dx.data_ptr<double>() : nullptr, dw.numel() ? dw.data_ptr<double>() : nullptr,
                     (mask & 4) ? dk.data_ptr<double>() : nullptr);
  else
    bwd_impl<float>(gF.data_ptr<double>(), gL.data_ptr<double>(), x.data_ptr<float>(),
                    o.wp<float>(), k.data_ptr<double>(), k.numel(), posweight, G, N, D,
                    (mask & 1) ? dx.data_ptr<float>() : nullptr, dw.numel() ? dw.data_ptr<float>() : nullptr,
                    (mask & 4) ? dk.data_ptr<double>() : nullptr);
  return {dx, dw, dk};
}

}  // namespace cpu
}  // namespace geoops
