// The Poincaré MLR head on the CPU (geoops/poincare.py, hyperplane_dists / mlr): HNN++'s signed distances of rows
// x (N, n) to m hyperplanes (z[:, j], bias[j]) of the ball of curvature -c, as one GEMM t = x z (at::mm) and one
// row pass, forward and backward (two GEMMs and two passes), instead of ~40 small aten ops per step.
//   sc = sqrt(c), lam_i = 2 / (1 - c |x_i|^2), zn_j = max(|z_j|, 1e-15), ch_j, sh_j = cosh, sinh(2 sc bias_j)
//   a_ij = sc lam_i t_ij ch_j / zn_j - (lam_i - 1) sh_j,   y_ij = (2 zn_j / sc) asinh(a_ij)
// Backward, ga = dL/da = g (2 zn / sc) / sqrt(1 + a^2):
//   dt = ga sc lam ch / zn;  dlam_i = sum_j ga (sc t ch / zn - sh);  dx = dt z^T + c lam^2 dlam x
//   dzn_j = sum_i g 2 asinh(a) / sc - sum_i ga sc lam t ch / zn^2;  dz = x^T dt + [|z_j| > 1e-15] (dzn / zn) z_j
//   dbias_j = 2 sc sum_i ga (sc lam t sh / zn - (lam - 1) ch)
//   dsc = sum_ij (-g y / sc + ga (lam t ch / zn + 2 bias sc lam t sh / zn - 2 bias (lam - 1) ch)),
//   dc = dsc / (2 sc) + sum_i dlam_i lam_i^2 |x_i|^2 / 2.
// Per-element and per-row math in double; every sum in a fixed order (rows' sums within the row, columns' sums
// over the rows in order, the curvature's over the rows in order), so that two calls agree bit for bit whatever
// the thread count.
#include "geoops/cpu_capability.h"

#include "poincare.h"
#include "poincare_head.h"
#include "stereographic.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

constexpr double kMlrMinNorm = 1e-15;

// The columns' constants: |z_j| (raw), zn_j = max(|z_j|, 1e-15), ch_j, sh_j and 2 bias_j.
struct MlrCols {
  std::vector<double> zraw, zn, ch, sh, b2;
};

template <typename T>
MlrCols mlr_cols(const T* zp, const T* bp, int64_t n, int64_t m, double sc) {
  MlrCols o;
  o.zraw.assign(m, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < m; ++j) {
      const double v = double(zp[r * m + j]);
      o.zraw[j] += v * v;
    }
  o.zn.resize(m), o.ch.resize(m), o.sh.resize(m), o.b2.resize(m);
  for (int64_t j = 0; j < m; ++j) {
    o.zraw[j] = std::sqrt(o.zraw[j]);
    o.zn[j] = std::max(o.zraw[j], kMlrMinNorm);
    o.b2[j] = bp ? 2.0 * double(bp[j]) : 0.0;
    o.ch[j] = bp ? std::cosh(sc * o.b2[j]) : 1.0;
    o.sh[j] = bp ? std::sinh(sc * o.b2[j]) : 0.0;
  }
  return o;
}

// |x_i|^2 in double as 8 partial sums by index (d mod 8; one independent chain each, a SIMD vector of them, instead
// of one serial chain of n dependent adds), combined in a fixed order: the same bits whatever the alignment.
template <typename T>
inline double row_sq(const T* xr, int64_t n) {
  double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int l = 0; l < 8; ++l) p[l] += double(xr[d + l]) * double(xr[d + l]);
  for (int l = 0; d < n; ++d, ++l) p[l] += double(xr[d]) * double(xr[d]);
  return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
}

// Rows per parallel task: ~32768 elements of work (the digits head's 64 rows run on the calling thread).
inline int64_t mlr_grain(int64_t work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1)); }

template <typename T>
void mlr_fwd_impl(const T* xp, const T* tp, const MlrCols& C, T* yp, int64_t N, int64_t n, int64_t m, double c) {
  const double sc = std::sqrt(c);
  at::parallel_for(0, N, mlr_grain(n + 8 * m), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double lam = 2.0 / (1.0 - c * row_sq(xp + i * n, n));
      for (int64_t j = 0; j < m; ++j) {
        const double a = sc * lam * double(tp[i * m + j]) * C.ch[j] / C.zn[j] - (lam - 1.0) * C.sh[j];
        yp[i * m + j] = T(2.0 * C.zn[j] / sc * std::asinh(a));
      }
    }
  });
}

// The row pass of the backward: dt (T, for the GEMMs), the row coefficient c lam^2 dlam of dx, the rows' dc
// terms, and the per-element column terms P0 = g asinh(a), P1 = ga sc lam t, P2 = ga (sc lam t sh / zn - (lam - 1)
// ch) for the column sums.
template <typename T>
void mlr_bwd_rows(const T* gp, const T* xp, const T* tp, const MlrCols& C, T* dtp, double* rowc, double* rowk,
                  double* P0, double* P1, double* P2, int64_t N, int64_t n, int64_t m, double c) {
  const double sc = std::sqrt(c);
  at::parallel_for(0, N, mlr_grain(n + 12 * m), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double X = row_sq(xp + i * n, n);
      const double lam = 2.0 / (1.0 - c * X);
      double glam = 0, gsc = 0;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t e = i * m + j;
        const double t = double(tp[e]), g = double(gp[e]);
        const double Cz = C.ch[j] / C.zn[j];
        const double a = sc * lam * t * Cz - (lam - 1.0) * C.sh[j];
        const double ash = std::asinh(a);
        const double ga = g * (2.0 * C.zn[j] / sc) / std::sqrt(1.0 + a * a);
        dtp[e] = T(ga * sc * lam * Cz);
        glam += ga * (sc * t * Cz - C.sh[j]);
        const double lt = lam * t;
        const double da_dsc = lt * Cz + C.b2[j] * (sc * lt * C.sh[j] / C.zn[j] - (lam - 1.0) * C.ch[j]);
        gsc += -g * (2.0 * C.zn[j] / sc * ash) / sc + ga * da_dsc;
        P0[e] = g * ash;
        P1[e] = ga * sc * lt;
        P2[e] = ga * (sc * lt * C.sh[j] / C.zn[j] - (lam - 1.0) * C.ch[j]);
      }
      rowc[i] = glam * c * lam * lam;
      rowk[i] = gsc / (2.0 * sc) + glam * lam * lam * X / 2.0;
    }
  });
}

void check_mlr(const at::Tensor& x, const at::Tensor& z, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && z.dim() == 2 && x.size(1) == z.size(0), "poincare_mlr: x (N, n) and z (n, m)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "poincare_mlr: float32 or float64");
  TORCH_CHECK(z.scalar_type() == x.scalar_type(), "poincare_mlr: x and z of one dtype");
  if (bias)
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == z.size(1) && bias->scalar_type() == x.scalar_type(),
                "poincare_mlr: bias (m,) of x's dtype");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> poincare_mlr_fwd_cpu(const at::Tensor& x_in, const at::Tensor& z_in,
                                                        const std::optional<at::Tensor>& bias_in,
                                                        const at::Tensor& c_in) {
  check_mlr(x_in, z_in, bias_in);
  const at::Tensor x = x_in.contiguous(), z = z_in.contiguous();
  const std::optional<at::Tensor> bias = bias_in ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  const double c = c_in.item<double>();
  const int64_t N = x.size(0), n = x.size(1), m = z.size(1);
  const at::Tensor t = at::mm(x, z);
  at::Tensor y = at::empty({N, m}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_mlr_fwd", [&] {
    const MlrCols C = mlr_cols<scalar_t>(z.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr, n, m,
                                         std::sqrt(c));
    mlr_fwd_impl<scalar_t>(x.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), C, y.data_ptr<scalar_t>(), N, n, m, c);
  });
  return {y, t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_mlr_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& z_in, const std::optional<at::Tensor>& bias_in,
    const at::Tensor& c_in, const at::Tensor& t_in, int64_t mask) {
  check_mlr(x_in, z_in, bias_in);
  const at::Tensor x = x_in.contiguous(), z = z_in.contiguous(), t = t_in.contiguous();
  const at::Tensor g = g_in.to(x.scalar_type()).contiguous();
  const std::optional<at::Tensor> bias = bias_in ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  const int64_t N = x.size(0), n = x.size(1), m = z.size(1);
  TORCH_CHECK(g.size(0) == N && g.size(1) == m && t.sizes() == g.sizes(), "poincare_mlr: grad and t must be (N, m)");
  const double c = c_in.item<double>(), sc = std::sqrt(c);
  at::Tensor dt = at::empty({N, m}, x.options());
  at::Tensor gx, gz, gb, gc;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_mlr_bwd", [&] {
    using T = scalar_t;
    const T* zp = z.data_ptr<T>();
    const MlrCols C = mlr_cols<T>(zp, bias ? bias->data_ptr<T>() : nullptr, n, m, sc);
    std::vector<double> rowc(N), rowk(N), P0(N * m), P1(N * m), P2(N * m);
    const T* xp = x.data_ptr<T>();
    mlr_bwd_rows<T>(g.data_ptr<T>(), xp, t.data_ptr<T>(), C, dt.data_ptr<T>(), rowc.data(), rowk.data(), P0.data(),
                    P1.data(), P2.data(), N, n, m, c);
    if (mask & 1) {  // dx = dt z^T + (c lam^2 dlam) x
      gx = at::mm(dt, z.t());
      T* gxp = gx.data_ptr<T>();
      at::parallel_for(0, N, mlr_grain(n), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t d = 0; d < n; ++d) gxp[i * n + d] = T(double(gxp[i * n + d]) + rowc[i] * double(xp[i * n + d]));
      });
    }
    if (mask & 6) {  // the column sums, each over the rows in order
      std::vector<double> zc(m), bc(m);
      at::parallel_for(0, m, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          double s0 = 0, s1 = 0, s2 = 0;
          for (int64_t i = 0; i < N; ++i) s0 += P0[i * m + j], s1 += P1[i * m + j], s2 += P2[i * m + j];
          const double gzn = s0 * (2.0 / sc) - s1 * C.ch[j] / (C.zn[j] * C.zn[j]);
          zc[j] = C.zraw[j] > kMlrMinNorm ? gzn / C.zn[j] : 0.0;
          bc[j] = s2 * 2.0 * sc;
        }
      });
      if (mask & 2) {  // dz = x^T dt + (dzn / zn) z
        gz = at::mm(x.t(), dt);
        T* gzp = gz.data_ptr<T>();
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j = 0; j < m; ++j) gzp[r * m + j] = T(double(gzp[r * m + j]) + zc[j] * double(zp[r * m + j]));
      }
      if ((mask & 4) && bias) {
        gb = at::empty({m}, x.options());
        T* gbp = gb.data_ptr<T>();
        for (int64_t j = 0; j < m; ++j) gbp[j] = T(bc[j]);
      }
    }
    if (mask & 8) {
      double s = 0;
      for (int64_t i = 0; i < N; ++i) s += rowk[i];
      gc = at::full({}, s, x.options().dtype(at::kDouble));
    }
  });
  return {gx, gz, gb, gc};
}

// ---------------------------------------------------------------- flatten (beta concatenation)
namespace {

// dst[b, ch, p] = src[b, p, ch] * beta for B images of P pixels and C channels (in T: torch.mul's rounding).
template <typename T>
void flat_scale(const T* src, T* dst, int64_t B, int64_t P, int64_t C, T beta, bool to_flat) {
  at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(P * C, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* s = src + b * P * C;
      T* d = dst + b * P * C;
      if (to_flat) {
        for (int64_t ch = 0; ch < C; ++ch)
          for (int64_t p = 0; p < P; ++p) d[ch * P + p] = s[p * C + ch] * beta;
      } else {
        for (int64_t p = 0; p < P; ++p)
          for (int64_t ch = 0; ch < C; ++ch) d[p * C + ch] = s[ch * P + p] * beta;
      }
    }
  });
}

void flat_scale_any(const at::Tensor& src, at::Tensor& dst, int64_t B, int64_t P, int64_t C, double beta,
                    bool to_flat) {
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "poincare_flatten", [&] {
    flat_scale<scalar_t>(src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), B, P, C, scalar_t(beta), to_flat);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_flatten_fwd_cpu(
    const at::Tensor& x, const at::Tensor& k1, double beta, double seps, const std::vector<int64_t>& ops) {
  TORCH_CHECK(x.dim() == 4 && ops.size() == 3, "poincare_flatten: x (B, C, H, W) and three op codes");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "poincare_flatten: float32/64");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const at::Tensor r = x.permute({0, 2, 3, 1}).reshape({B * P, C}).contiguous();
  const at::Tensor v = stereo_fwd_cpu(ops[0], r, c10::nullopt, k1, c10::nullopt, seps);
  at::Tensor u = at::empty({B, C * P}, x.options());
  flat_scale_any(v.contiguous(), u, B, P, C, beta, true);
  at::Tensor e = stereo_fwd_cpu(ops[1], u, c10::nullopt, k1, c10::nullopt, seps);
  at::Tensor y = stereo_fwd_cpu(ops[2], e, c10::nullopt, k1, c10::nullopt, seps);
  return {y, r, u, e};
}

at::Tensor poincare_flatten_bwd_cpu(const at::Tensor& g, const at::Tensor& r, const at::Tensor& u,
                                    const at::Tensor& e, const at::Tensor& k1, double beta, double seps, int64_t C,
                                    const std::vector<int64_t>& ops) {
  TORCH_CHECK(ops.size() == 3 && r.dim() == 2 && r.size(1) == C, "poincare_flatten: pixel rows (B*H*W, C)");
  const int64_t B = u.size(0), P = u.size(1) / C;
  const at::Tensor ge = std::get<0>(stereo_bwd_cpu(ops[2], g.to(e.scalar_type()).contiguous(), e, c10::nullopt, k1,
                                                   c10::nullopt, seps, 1));
  const at::Tensor gu = std::get<0>(stereo_bwd_cpu(ops[1], ge, u, c10::nullopt, k1, c10::nullopt, seps, 1));
  at::Tensor gv = at::empty({B * P, C}, r.options());
  flat_scale_any(gu.contiguous(), gv, B, P, C, beta, false);
  return std::get<0>(stereo_bwd_cpu(ops[0], gv, r, c10::nullopt, k1, c10::nullopt, seps, 1));
}

}  // namespace cpu
}  // namespace geoops
