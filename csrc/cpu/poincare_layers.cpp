// Poincaré-ball layers on the CPU besides the fully-connected layer (csrc/cpu/poincare.cpp): the fused row ops
// of the Poincaré ReLU and of the midpoint batch norm (geoops/poincare.py).  Per-row scalars in double with the
// kappa-stereographic row math of geoops/stereo_math.h (k = -c); rows spread with at::parallel_for.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "poincare.h"

#include "geoops/stereo_math.h"
#include "vec_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace geoops {
namespace cpu {

namespace {
// Rows per at::parallel_for task: about 32768 elements of work, torch's own grain, so that small inputs (the
// digits CNN's 4096 x 8 rows) run on the calling thread instead of paying a parallel region each call.
inline int64_t grain(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1)); }
}  // namespace

// ---------------------------------------------------------------- Poincaré ReLU (one fused row op)
// y = project(expmap0(relu(logmap0(x)))) per row, k = -c:  logmap0(x) = h x with h = atanc(k|x|^2) > 0, so
// relu(h x) = h r (r = relu(x)), and expmap0(h r) = tanc(k h^2 |r|^2) h r.  Hence y = f r with
// f = tanc(z2) h, z2 = k h^2 R (R = |r|^2), times mx / |y| where |y| = f sqrt(R) exceeds mx = (1 - eps)/sqrt(c)
// (atanc / tanc and their derivatives from geoops/stereo_math.h, in double per row).  Backward, G = <g, r>:
//   dL/dr = f g + 2 G (df/dR) r,  dL/dx = [x > 0] dL/dr + 2 G (df/dh)(dh/dX) x  (X = |x|^2),
//   df/dR = k h^3 tanc'(z2),  df/dh = tanc(z2) + 2 k h^2 R tanc'(z2),  dh/dX = k atanc'(z1), z1 = k X;
// on the projection branch y = mx r/|r|: dL/dr = (mx/|r|)(g - G r/R) and dL/dx has no X term.
namespace {

struct ReluRow {
  double f, fR2, fX2, fk;  // y = f r; dL/dr = f g + G fR2 r; dL/dx += G fX2 x; dL/dk += G fk
};

// h = atanc(k X) and t2 = tanc(k h^2 R) come in from the batched SIMD evaluation (relu_block below); mx = (1 -
// eps)/sqrt(-k), the projection radius, from the caller (once per call: per row, its square root and division
// were a serial latency chain that cost as much as the rest of the forward).
inline ReluRow relu_row(double X, double R, double k, double eps, double mx, bool grads, double h, double t2) {
  using namespace geoops::stereo;
  ReluRow o{t2 * h, 0, 0, 0};
  const double sR = std::sqrt(R);
  const bool proj = o.f * sR > mx;
  const double nr = std::max(sR, 1e-15);
  if (proj) o.f = mx / nr;
  if (!grads) return o;
  const double z1 = k * X, q1 = 1.0 + z1;
  const double z2 = k * h * h * R;
  if (proj) {
    o.fR2 = -mx / (nr * nr * nr);
    o.fk = 0.5 * (1.0 - eps) / (-k * std::sqrt(-k)) / nr;
    return o;
  }
  const double t2d = tanc_d(z2, t2);
  const double h1 = atanc_d(z1, q1, h);
  const double dh_dX = k * h1, dh_dk = X * h1;
  const double df_dh = t2 + 2.0 * k * h * h * R * t2d;
  o.fR2 = 2.0 * k * h * h * h * t2d;
  o.fX2 = 2.0 * df_dh * dh_dX;
  o.fk = h * t2d * h * h * R + df_dh * dh_dk;
  return o;
}

// A block of rows' scalars: the row sums X = |x|^2, R = |relu x|^2 (and G = <g, relu x> for the backward) of
// rows [i0, i0 + n), then h = atanc(k X) and t2 = tanc(k h^2 R) for all n rows at once on SIMD vectors
// (vec_math.h: SLEEF), instead of one libm call chain per row.
constexpr int64_t kReluBlock = 256;
struct ReluBlock {
  double X[kReluBlock], R[kReluBlock], G[kReluBlock], z[kReluBlock], q[kReluBlock], h[kReluBlock], t[kReluBlock];
};

template <typename T>
void relu_block(ReluBlock& b, const T* xp, const T* gp, int64_t i0, int64_t n, int64_t D, double k) {
  for (int64_t j = 0; j < n; ++j) {
    const T* xr = xp + (i0 + j) * D;
    double X = 0, R = 0, G = 0;
    if (gp) {
      const T* gr = gp + (i0 + j) * D;
#pragma omp simd reduction(+ : X, R, G)
      for (int64_t d = 0; d < D; ++d) {
        const double v = double(xr[d]);
        const double r = v > 0 ? v : 0.0;
        X += v * v;
        R += r * r;
        G += double(gr[d]) * r;
      }
    } else {
#pragma omp simd reduction(+ : X, R)
      for (int64_t d = 0; d < D; ++d) {
        const double v = double(xr[d]);
        X += v * v;
        R += v > 0 ? v * v : 0.0;
      }
    }
    b.X[j] = X;
    b.R[j] = R;
    b.G[j] = G;
    b.z[j] = k * X;
    b.q[j] = 1.0 + b.z[j];
  }
  atanc_n(b.z, b.q, b.h, n);
  for (int64_t j = 0; j < n; ++j) b.z[j] = k * b.h[j] * b.h[j] * b.R[j];
  tanc_n(b.z, b.t, n);
}

template <typename T>
void relu_fwd_impl(const T* xp, T* yp, int64_t N, int64_t D, double k, double eps) {
  const double mx = (1.0 - eps) / std::sqrt(-k);
  at::parallel_for(0, N, grain(D), [&](int64_t i0, int64_t i1) {
    ReluBlock blk;
    for (int64_t b0 = i0; b0 < i1; b0 += kReluBlock) {
      const int64_t n = std::min(kReluBlock, i1 - b0);
      relu_block<T>(blk, xp, nullptr, b0, n, D, k);
      for (int64_t j = 0; j < n; ++j) {
        const T* xr = xp + (b0 + j) * D;
        T* yr = yp + (b0 + j) * D;
        const T f = T(relu_row(blk.X[j], blk.R[j], k, eps, mx, false, blk.h[j], blk.t[j]).f);
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] > T(0) ? f * xr[d] : T(0);
      }
    }
  });
}

template <typename T>
double relu_bwd_impl(const T* gp, const T* xp, T* gxp, int64_t N, int64_t D, double k, double eps) {
  const double mx = (1.0 - eps) / std::sqrt(-k);
  const int nth = at::get_num_threads();
  std::vector<double> gk(nth, 0.0);
  at::parallel_for(0, N, grain(D), [&](int64_t i0, int64_t i1) {
    double acc = 0;
    ReluBlock blk;
    for (int64_t b0 = i0; b0 < i1; b0 += kReluBlock) {
      const int64_t n = std::min(kReluBlock, i1 - b0);
      relu_block<T>(blk, xp, gp, b0, n, D, k);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = b0 + j;
        const T* xr = xp + i * D;
        const T* gr = gp + i * D;
        T* gxr = gxp + i * D;
        const double G = blk.G[j];
        const ReluRow o = relu_row(blk.X[j], blk.R[j], k, eps, mx, true, blk.h[j], blk.t[j]);
        const T f = T(o.f), a = T(G * o.fR2), b = T(G * o.fX2);
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const T v = xr[d];
          gxr[d] = (v > T(0) ? f * gr[d] + a * v : T(0)) + b * v;
        }
        acc += G * o.fk;
      }
    }
    gk[at::get_thread_num()] += acc;
  });
  double s = 0;
  for (double v : gk) s += v;
  return s;
}

void check_rows(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (N, D) rows");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32 or float64 on the CPU");
}

}  // namespace

at::Tensor poincare_relu_fwd_cpu(const at::Tensor& x_in, const at::Tensor& c_in, double eps) {
  check_rows("poincare_relu", x_in);
  const at::Tensor x = x_in.contiguous();
  const double k = -c_in.item<double>();
  at::Tensor y = at::empty_like(x);
  if (x.scalar_type() == at::kDouble)
    relu_fwd_impl<double>(x.data_ptr<double>(), y.data_ptr<double>(), x.size(0), x.size(1), k, eps);
  else
    relu_fwd_impl<float>(x.data_ptr<float>(), y.data_ptr<float>(), x.size(0), x.size(1), k, eps);
  return y;
}

std::tuple<at::Tensor, at::Tensor> poincare_relu_bwd_cpu(const at::Tensor& g_in, const at::Tensor& x_in,
                                                         const at::Tensor& c_in, double eps) {
  check_rows("poincare_relu", x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = g_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == x.sizes(), "poincare_relu: grad and x must have one shape");
  const double k = -c_in.item<double>();
  at::Tensor gx = at::empty_like(x);
  double gk;
  if (x.scalar_type() == at::kDouble)
    gk = relu_bwd_impl<double>(g.data_ptr<double>(), x.data_ptr<double>(), gx.data_ptr<double>(), x.size(0),
                               x.size(1), k, eps);
  else
    gk = relu_bwd_impl<float>(g.data_ptr<float>(), x.data_ptr<float>(), gx.data_ptr<float>(), x.size(0), x.size(1),
                              k, eps);
  return {gx, at::full({}, -gk, x.options().dtype(at::kDouble))};  // dc = -dk
}

// ---------------------------------------------------------------- midpoint batch norm
// The batch midpoint's sums (one fused reduction): F = sum_i lam_i x_i, L = sum_i (lam_i - 1),
// lam_i = 2 / max(1 - c |x_i|^2, 1e-15); per-thread partial sums in double.  Backward (one row pass):
// dx_i = lam_i gF + (<gF, x_i> + gL) c lam_i^2 x_i, dc = sum_i (<gF, x_i> + gL) lam_i^2 |x_i|^2 / 2.
namespace {

template <typename T>
void mid_fwd_impl(const T* xp, int64_t N, int64_t D, double c, double* F, double* L) {
  const int nth = at::get_num_threads();
  std::vector<std::vector<double>> acc(nth);
  std::vector<double> accL(nth, 0.0);
  at::parallel_for(0, N, grain(D), [&](int64_t i0, int64_t i1) {
    const int tid = at::get_thread_num();
    if (acc[tid].empty()) acc[tid].assign(D, 0.0);
    double* a = acc[tid].data();
    double l = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      double X = 0;
#pragma omp simd reduction(+ : X)
      for (int64_t d = 0; d < D; ++d) X += double(xr[d]) * double(xr[d]);
      const double lam = 2.0 / std::max(1.0 - c * X, 1e-15);
      l += lam - 1.0;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += lam * double(xr[d]);
    }
    accL[tid] += l;
  });
  for (int64_t d = 0; d < D; ++d) F[d] = 0;
  *L = 0;
  for (int t = 0; t < nth; ++t) {
    *L += accL[t];
    if (!acc[t].empty())
      for (int64_t d = 0; d < D; ++d) F[d] += acc[t][d];
  }
}

template <typename T>
double mid_bwd_impl(const T* gF, double gL, const T* xp, T* gxp, int64_t N, int64_t D, double c) {
  const int nth = at::get_num_threads();
  std::vector<double> gcs(nth, 0.0);
  at::parallel_for(0, N, grain(D), [&](int64_t i0, int64_t i1) {
    double gcl = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      T* gr = gxp + i * D;
      double X = 0, P = 0;
#pragma omp simd reduction(+ : X, P)
      for (int64_t d = 0; d < D; ++d) {
        X += double(xr[d]) * double(xr[d]);
        P += double(gF[d]) * double(xr[d]);
      }
      const double den = 1.0 - c * X;
      const double lam = 2.0 / std::max(den, 1e-15);
      const double w = den > 1e-15 ? (P + gL) * lam * lam : 0.0;  // d/dX of lam = c lam^2 / 2
      const T a = T(lam), b = T(w * c);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) gr[d] = a * gF[d] + b * xr[d];
      gcl += 0.5 * w * X;
    }
    gcs[at::get_thread_num()] += gcl;
  });
  double s = 0;
  for (double v : gcs) s += v;
  return s;
}

// The normalisation's row pass: y_i = project(expmap_b(u_i M)) with u_i = logmap_m(x_i) (the fused
// stereographic logmap runs first: its rows also give the Fréchet variance), M = PT_{m->b} * sqrt(w/(var+eps))
// as one (D, D) matrix, b = expmap0(bias).  expmap and project are evaluated with the coefficient forms of
// geoops/stereo_math.h (k = -c) and differentiated with its hand-derived vjps:
//   backward per row: ge = a_p g + 2 xx_p e (project), then (gb_i, gv) from expmap's row adjoints,
//   gb = sum_i gb_i, dk = sum of the row k adjoints (double).  The op entries run v = u M as one GEMM (at::mm,
//   MKL) before the row pass and gu = gv M^T, gM = u^T gv as two GEMMs after it (an empty M: the identity);
//   per-row D x D products in double cost several times more than the GEMMs.
template <typename T>
struct BnRowCtx {
  int64_t D;
  std::vector<double> b;
  double bb, k, eps;
};

// expmap_b's one transcendental, tanc(k h^2 |v|^2) with h = 1/(1 + k|b|^2), comes in precomputed for a block of
// rows (tanc_n of vec_math.h: SIMD over the block, instead of a libm sqrt/tanh chain per row); this policy
// hands it to stereo_math.h's forms (EXPMAP's fwd and vjp call m.tanc exactly once, with that argument).
struct GivenTanc {
  double t;
  double tanc(double) const { return t; }
  double atanc(double z, double q) const { return stereo::atanc(z, q); }
};

constexpr int64_t kBnBlock = 256;

// z_j = k h^2 |v_j|^2 for rows [i0, i0 + n), then t_j = tanc(z_j) on SIMD vectors.
template <typename T>
void bn_block_tanc(const T* vp, int64_t i0, int64_t n, int64_t D, double k, double bb, double* z, double* t) {
  const double h = 1.0 / stereo::clamp_lo(1.0 + k * bb, stereo::min_den<double>());
  for (int64_t j = 0; j < n; ++j) {
    const T* vr = vp + (i0 + j) * D;
    double vv = 0;
#pragma omp simd reduction(+ : vv)
    for (int64_t d = 0; d < D; ++d) vv += double(vr[d]) * double(vr[d]);
    z[j] = k * h * h * vv;
  }
  tanc_n(z, t, n);
}

template <typename T>
inline void bn_row_fwd(const BnRowCtx<T>& cx, const T* ur, double* v, double* e, stereo::Row<double>& s1,
                       stereo::Coef<double>& c1, stereo::Row<double>& s2, stereo::Coef<double>& c2, GivenTanc& gt) {
  using namespace geoops::stereo;
  const int64_t D = cx.D;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) v[d] = double(ur[d]);  // the rows already hold v = u M (one GEMM first)
  double vv = 0, bv = 0, dd = 0;
  const double* bp = cx.b.data();
#pragma omp simd reduction(+ : vv, bv, dd)
  for (int64_t d = 0; d < D; ++d) {
    vv += v[d] * v[d];
    bv += bp[d] * v[d];
    const double t = bp[d] - v[d];
    dd += t * t;
  }
  s1 = Row<double>{cx.bb, vv, bv, dd, cx.k, 0.0};
  c1 = fwd(EXPMAP, s1, 0.0, gt);
  double ee = 0;
#pragma omp simd reduction(+ : ee)
  for (int64_t d = 0; d < D; ++d) {
    e[d] = c1.a * bp[d] + c1.b * v[d] + c1.c * (bp[d] - v[d]);
    ee += e[d] * e[d];
  }
  s2 = Row<double>{ee, 0.0, 0.0, 0.0, cx.k, 0.0};
  c2 = fwd(PROJECT, s2, cx.eps);
}

template <typename T>
BnRowCtx<T> bn_ctx(const at::Tensor& b, double c, double eps) {
  BnRowCtx<T> cx;
  cx.D = b.size(0);
  cx.b.resize(cx.D);
  cx.bb = 0;
  const T* bp = b.data_ptr<T>();
  for (int64_t d = 0; d < cx.D; ++d) {
    cx.b[d] = double(bp[d]);
    cx.bb += cx.b[d] * cx.b[d];
  }
  cx.k = -c;
  cx.eps = eps;
  return cx;
}

template <typename T>
void bn_fwd_impl(const T* up, T* yp, int64_t N, const BnRowCtx<T>& cx) {
  const int64_t D = cx.D;
  at::parallel_for(0, N, grain(D * 8), [&](int64_t i0, int64_t i1) {
    std::vector<double> v(D), e(D), z(kBnBlock), tz(kBnBlock);
    stereo::Row<double> s1, s2;
    stereo::Coef<double> c1, c2;
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min<int64_t>(kBnBlock, i1 - b0);
      bn_block_tanc(up, b0, n, D, cx.k, cx.bb, z.data(), tz.data());
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = b0 + j;
        GivenTanc gt{tz[j]};
        bn_row_fwd(cx, up + i * D, v.data(), e.data(), s1, c1, s2, c2, gt);
        T* yr = yp + i * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = T(c2.a * e[d]);
      }
    }
  });
}

template <typename T>
void bn_bwd_impl(const T* gp, const T* vp_in, int64_t N, const BnRowCtx<T>& cx, T* gvp_out, double* gb,
                 double* gk) {
  using namespace geoops::stereo;
  const int64_t D = cx.D;
  const int nth = at::get_num_threads();
  std::vector<std::vector<double>> ab(nth);
  std::vector<double> ak(nth, 0.0);
  at::parallel_for(0, N, grain(D * 16), [&](int64_t i0, int64_t i1) {
    const int tid = at::get_thread_num();
    if (ab[tid].empty()) ab[tid].assign(D, 0.0);
    double* pb = ab[tid].data();
    std::vector<double> v(D), e(D), ge(D), z(kBnBlock), tz(kBnBlock);
    Row<double> s1, s2;
    Coef<double> c1, c2;
    double kk = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t j = (i - i0) % kBnBlock;
      if (j == 0) bn_block_tanc(vp_in, i, std::min<int64_t>(kBnBlock, i1 - i), D, cx.k, cx.bb, z.data(), tz.data());
      GivenTanc gt{tz[j]};
      const T* gr = gp + i * D;
      bn_row_fwd(cx, vp_in + i * D, v.data(), e.data(), s1, c1, s2, c2, gt);
      double ga = 0;
#pragma omp simd reduction(+ : ga)
      for (int64_t d = 0; d < D; ++d) ga += double(gr[d]) * e[d];
      const Row<double> r2 = vjp(PROJECT, s2, cx.eps, ga, 0.0, 0.0);
      double gab = 0, gav = 0, gad = 0;
      const double* bp = cx.b.data();
      double* gep = ge.data();
      const double* vp = v.data();
      const double* ep = e.data();
#pragma omp simd reduction(+ : gab, gav, gad)
      for (int64_t d = 0; d < D; ++d) {
        gep[d] = (c2.a + c2.c) * double(gr[d]) + 2.0 * r2.xx * ep[d];
        gab += gep[d] * bp[d];
        gav += gep[d] * vp[d];
        gad += gep[d] * (bp[d] - vp[d]);
      }
      const Row<double> r1 = vjp(EXPMAP, s1, 0.0, gab, gav, gad, gt);
      kk += r2.k + r1.k;
      T* gvr = gvp_out + i * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        const double bd = bp[d], vd = vp[d], dlt = bd - vd;
        pb[d] += (c1.a + c1.c) * gep[d] + 2.0 * r1.xx * bd + r1.xy * vd + 2.0 * r1.dd * dlt;
        gvr[d] = T((c1.b - c1.c) * gep[d] + 2.0 * r1.yy * vd + r1.xy * bd - 2.0 * r1.dd * dlt);
      }
    }
    ak[tid] += kk;
  });
  for (int64_t d = 0; d < D; ++d) gb[d] = 0;
  *gk = 0;
  for (int t = 0; t < nth; ++t) {
    *gk += ak[t];
    if (ab[t].empty()) continue;
    for (int64_t d = 0; d < D; ++d) gb[d] += ab[t][d];
  }
}

// v = u M (an empty M: the identity) as one GEMM; grad mode off (thread-local: the op may run inside backward)
at::Tensor bn_times_M(const at::Tensor& u, const at::Tensor& M) {
  if (M.numel() == 0) return u;
  at::NoGradGuard ng;
  return at::mm(u, M);
}

void check_bn_args(const at::Tensor& u, const at::Tensor& M, const at::Tensor& b) {
  check_rows("poincare_bn_rows", u);
  const int64_t D = u.size(1);
  TORCH_CHECK(M.numel() == 0 || (M.dim() == 2 && M.size(0) == D && M.size(1) == D),
              "poincare_bn_rows: M must be (D, D) (or empty: the identity)");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == D, "poincare_bn_rows: b must be (D,)");
  TORCH_CHECK(M.scalar_type() == u.scalar_type() && b.scalar_type() == u.scalar_type(),
              "poincare_bn_rows: u, M, b must share a dtype");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_fwd_cpu(const at::Tensor& x_in, const at::Tensor& c_in) {
  check_rows("poincare_midpoint_sums", x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t D = x.size(1);
  at::Tensor F = at::empty({D}, x.options().dtype(at::kDouble));
  at::Tensor L = at::empty({}, x.options().dtype(at::kDouble));
  const double c = c_in.item<double>();
  if (x.scalar_type() == at::kDouble)
    mid_fwd_impl<double>(x.data_ptr<double>(), x.size(0), D, c, F.data_ptr<double>(), L.data_ptr<double>());
  else
    mid_fwd_impl<float>(x.data_ptr<float>(), x.size(0), D, c, F.data_ptr<double>(), L.data_ptr<double>());
  return {F.to(x.scalar_type()), L.to(x.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_bwd_cpu(const at::Tensor& gF_in, const at::Tensor& gL_in,
                                                                  const at::Tensor& x_in, const at::Tensor& c_in) {
  check_rows("poincare_midpoint_sums", x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gF = gF_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gF.numel() == x.size(1), "poincare_midpoint_sums: grad of F must have D entries");
  const double gL = gL_in.item<double>(), c = c_in.item<double>();
  at::Tensor gx = at::empty_like(x);
  double gc;
  if (x.scalar_type() == at::kDouble)
    gc = mid_bwd_impl<double>(gF.data_ptr<double>(), gL, x.data_ptr<double>(), gx.data_ptr<double>(), x.size(0),
                              x.size(1), c);
  else
    gc = mid_bwd_impl<float>(gF.data_ptr<float>(), gL, x.data_ptr<float>(), gx.data_ptr<float>(), x.size(0),
                             x.size(1), c);
  return {gx, at::full({}, gc, x.options().dtype(at::kDouble))};
}

at::Tensor poincare_bn_rows_fwd_cpu(const at::Tensor& u_in, const at::Tensor& M_in, const at::Tensor& b_in,
                                    const at::Tensor& c_in, double eps) {
  const at::Tensor u = u_in.contiguous(), M = M_in.contiguous(), b = b_in.contiguous();
  check_bn_args(u, M, b);
  const double c = c_in.item<double>();
  const at::Tensor v = bn_times_M(u, M).contiguous();
  at::Tensor y = at::empty_like(u);
  if (u.scalar_type() == at::kDouble)
    bn_fwd_impl<double>(v.data_ptr<double>(), y.data_ptr<double>(), u.size(0), bn_ctx<double>(b, c, eps));
  else
    bn_fwd_impl<float>(v.data_ptr<float>(), y.data_ptr<float>(), u.size(0), bn_ctx<float>(b, c, eps));
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_bn_rows_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& u_in, const at::Tensor& M_in, const at::Tensor& b_in,
    const at::Tensor& c_in, double eps) {
  const at::Tensor u = u_in.contiguous(), M = M_in.contiguous(), b = b_in.contiguous();
  check_bn_args(u, M, b);
  const at::Tensor g = g_in.to(u.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == u.sizes(), "poincare_bn_rows: grad and u must have one shape");
  const double c = c_in.item<double>();
  const int64_t D = u.size(1);
  const at::Tensor v = bn_times_M(u, M).contiguous();  // recomputed: one small GEMM instead of a saved (N, D)
  at::Tensor gv = at::empty_like(u);
  const auto dopt = u.options().dtype(at::kDouble);
  at::Tensor gb = at::empty({D}, dopt), gk = at::empty({}, dopt);
  if (u.scalar_type() == at::kDouble)
    bn_bwd_impl<double>(g.data_ptr<double>(), v.data_ptr<double>(), u.size(0), bn_ctx<double>(b, c, eps),
                        gv.data_ptr<double>(), gb.data_ptr<double>(), gk.data_ptr<double>());
  else
    bn_bwd_impl<float>(g.data_ptr<float>(), v.data_ptr<float>(), u.size(0), bn_ctx<float>(b, c, eps),
                       gv.data_ptr<float>(), gb.data_ptr<double>(), gk.data_ptr<double>());
  at::Tensor gu = gv, gM = at::empty({0}, u.options());
  if (M.numel()) {
    at::NoGradGuard ng;
    gu = at::mm(gv, M.t());
    gM = at::mm(u.t(), gv);
  }
  return {gu, gM, gb.to(u.scalar_type()), -gk};  // dc = -dk
}

}  // namespace cpu
}  // namespace geoops
