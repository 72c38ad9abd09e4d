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
  // per (group, chunk): F (D), L; a group of one chunk sums straight into F and L (zeros on entry)
  const chunks::Partials part(nc > 1 ? G * nc : 0, D + 1);
  at::parallel_for(0, G * nc, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / nc, i0 = (t % nc) * CH, i1 = std::min(N, i0 + CH);
      const double kk = kg(k, nk, g);
      double* a = nc > 1 ? part.row(t) : F + g * D;
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

}  // namespace

std::tuple<at::Tensor, at::Tensor> stereo_midpoint_fwd_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in,
                                                           const at::Tensor& k_in, bool posweight) {
  const Operands o(x_in, w_in, k_in);
  const at::Tensor &x = o.x, &k = o.k;
  const int64_t G = o.G, N = o.N, D = o.D;
  const auto dopt = x.options().dtype(at::kDouble);
  at::Tensor F = at::zeros({G, D}, dopt), L = at::zeros({G}, dopt);
  if (G == 0 || N == 0) return {F, L};
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
