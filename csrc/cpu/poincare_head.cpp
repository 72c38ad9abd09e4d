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
#include "poincare_paths.h"  // AVX2: paths::transpose8
#include "poincare_gemm.h"
#include "poincare_rows.h"  // grain
#include "stereographic.h"
#include "vec_math.h"  // atanc_n

#include "geoops/stereo_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <optional>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

constexpr double kMlrMinNorm = 1e-15;

// A CPU scalar tensor's value without the dispatcher (item() records an aten call per read).
double scalar_value(const at::Tensor& c) {
  TORCH_CHECK(c.numel() == 1 && c.device().is_cpu(), "geoops: c must be a 1-element CPU tensor");
  if (c.scalar_type() == at::kFloat) return double(*c.data_ptr<float>());
  if (c.scalar_type() == at::kDouble) return *c.data_ptr<double>();
  return c.item<double>();
}

// The columns' constants: |z_j| (raw), zn_j = max(|z_j|, 1e-15), ch_j, sh_j and 2 bias_j.
struct MlrCols {
  std::vector<double> zraw, zn, ch, sh, b2;
  std::vector<double> q, ell;  // offsets beyond kOffsetScaledFrom (poincare.h): scaled ch, sh; else 1, 0
  bool scaled_any = false;     // such a column: the row passes' SCALED instance
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
  o.zn.resize(m), o.ch.resize(m), o.sh.resize(m), o.b2.resize(m), o.q.assign(m, 1.0), o.ell.assign(m, 0.0);
  for (int64_t j = 0; j < m; ++j) {
    o.zraw[j] = std::sqrt(o.zraw[j]);
    o.zn[j] = std::max(o.zraw[j], kMlrMinNorm);
    o.b2[j] = bp ? 2.0 * double(bp[j]) : 0.0;
    o.ch[j] = 1.0;
    o.sh[j] = 0.0;
    if (bp) o.ell[j] = offset_col(sc * o.b2[j], o.ch[j], o.sh[j], o.q[j]);
    if (o.ell[j] > 0) o.scaled_any = true;
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

// Rows per parallel task: prows::grain (poincare_rows.h), ~32768 elements of work (the digits head's 64 rows run on
// the calling thread).
using prows::grain;

// SCALED: the layer has a scaled column (poincare.h); the other instance is the plain formula (the same code, and
// bits, as before scaled columns existed)
template <typename T, bool SCALED>
void mlr_fwd_impl(const T* xp, const T* tp, const MlrCols& C, T* yp, int64_t N, int64_t n, int64_t m, double c) {
  const double sc = std::sqrt(c);
  at::parallel_for(0, N, grain(n + 8 * m), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double lam = 2.0 / (1.0 - c * row_sq(xp + i * n, n));
      for (int64_t j = 0; j < m; ++j) {
        const double a = sc * lam * double(tp[i * m + j]) * C.ch[j] / C.zn[j] - (lam - 1.0) * C.sh[j];
        if constexpr (SCALED)
          yp[i * m + j] = T(2.0 * C.zn[j] / sc * (C.ell[j] > 0 ? asinh_scaled_col(a, C.ell[j], C.q[j]) : std::asinh(a)));
        else
          yp[i * m + j] = T(2.0 * C.zn[j] / sc * std::asinh(a));
      }
    }
  });
}

// The row pass of the backward: dt (T, for the GEMMs), the row coefficient c lam^2 dlam of dx, the rows' dc
// terms, and the per-element column terms P0 = g asinh(a), P1 = ga sc lam t, P2 = ga (sc lam t sh / zn - (lam - 1)
// ch) for the column sums.
template <typename T, bool SCALED>
void mlr_bwd_rows(const T* gp, const T* xp, const T* tp, const MlrCols& C, T* dtp, double* rowc, double* rowk,
                  double* P0, double* P1, double* P2, int64_t N, int64_t n, int64_t m, double c) {
  const double sc = std::sqrt(c);
  at::parallel_for(0, N, grain(n + 12 * m), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double X = row_sq(xp + i * n, n);
      const double lam = 2.0 / (1.0 - c * X);
      double glam = 0, gsc = 0;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t e = i * m + j;
        const double t = double(tp[e]), g = double(gp[e]);
        const double Cz = C.ch[j] / C.zn[j];
        const double a = sc * lam * t * Cz - (lam - 1.0) * C.sh[j];
        double ash, ga;
        if constexpr (SCALED) {  // a scaled column (poincare.h): a holds b = a e^-ell, ga = dL/db
          const bool scl = C.ell[j] > 0;
          ash = scl ? asinh_scaled_col(a, C.ell[j], C.q[j]) : std::asinh(a);
          ga = scl ? g * (2.0 * C.zn[j] / sc) * rsqrt_scaled_col(a, C.q[j])
                   : g * (2.0 * C.zn[j] / sc) / std::sqrt(1.0 + a * a);
        } else {
          ash = std::asinh(a);
          ga = g * (2.0 * C.zn[j] / sc) / std::sqrt(1.0 + a * a);
        }
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
  const double c = scalar_value(c_in);
  const int64_t N = x.size(0), n = x.size(1), m = z.size(1);
  // t = x z as fixed 512-row chunks, one MKL thread each: MKL's own split of this GEMM gives other last bits for
  // another thread count on some CPUs (AMD EPYC: 3000 x 48 -> 20 float32), and y must not depend on it
  at::Tensor t = at::empty({N, m}, x.options());
  fixed_gemm::mm_rows(t, x, z, 512, true);  // small narrow products: no MKL (session 20)
  at::Tensor y = at::empty({N, m}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_mlr_fwd", [&] {
    const MlrCols C = mlr_cols<scalar_t>(z.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr, n, m,
                                         std::sqrt(c));
    (C.scaled_any ? mlr_fwd_impl<scalar_t, true> : mlr_fwd_impl<scalar_t, false>)(
        x.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), C, y.data_ptr<scalar_t>(), N, n, m, c);
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
  const double c = scalar_value(c_in), sc = std::sqrt(c);
  at::Tensor dt = at::empty({N, m}, x.options());
  at::Tensor gx, gz, gb, gc;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_mlr_bwd", [&] {
    using T = scalar_t;
    const T* zp = z.data_ptr<T>();
    const MlrCols C = mlr_cols<T>(zp, bias ? bias->data_ptr<T>() : nullptr, n, m, sc);
    std::vector<double> rowc(N), rowk(N), P0(N * m), P1(N * m), P2(N * m);
    const T* xp = x.data_ptr<T>();
    (C.scaled_any ? mlr_bwd_rows<T, true> : mlr_bwd_rows<T, false>)(g.data_ptr<T>(), xp, t.data_ptr<T>(), C, dt.data_ptr<T>(), rowc.data(), rowk.data(), P0.data(),
                    P1.data(), P2.data(), N, n, m, c);
    if (mask & 1) {  // dx = dt z^T + (c lam^2 dlam) x
      gx = at::empty({N, n}, x.options());
      fixed_gemm::mm_rows(gx, dt, z.t().contiguous(), 512, true);  // dt z^T, x^T dt: the same bits for any thread count
      T* gxp = gx.data_ptr<T>();
      at::parallel_for(0, N, grain(n), [&](int64_t i0, int64_t i1) {
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
        gz = at::empty({n, m}, x.options());
        fixed_gemm::mm_tn(gz, x, dt, true);
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

// ---------------------------------------------------------------- flatten (beta concatenation), fused
// An image x (B, C, H, W) with its points along C, read as its B*P pixel rows r_p (P = H*W; a free view of a
// channels-last image), to rows y (B, C*P) in (channel, pixel) order:
//   a_p = atanc(k |r_p|^2)                 (logmap0: v_p = a_p r_p; k = -c)
//   u[ch*P + p] = beta a_p r_p[ch]         (the beta concatenation; |u|^2 = beta^2 sum_p a_p^2 |r_p|^2)
//   t = tanc(k |u|^2), n = t |u|           (expmap0: e = t u, |e| = n)
//   s = mx / n if n > mx else 1            (project, mx = (1 - seps) / sqrt(c))
//   y = s t u                              (the pixel's factor s t beta a_p rounded to T, times r_p in T)
// Backward (curvature without gradient), G = <g, u> = beta sum_p a_p w_p, w_p = <g_p, r_p> (g_p: pixel p's C
// entries of the image's row of g):
//   project: gxx_e = [active] -(t G) mx / (2 n^3);  expmap0: gxx_u = k tanc'(k|u|^2) (s G + 2 gxx_e t |u|^2)
//   gu = F g + H u with F = s t, H = 2 t^2 gxx_e + 2 gxx_u
//   logmap0: gr_p = beta a_p F g_p + (beta^2 a_p^2 H + 2 k atanc'(k|r_p|^2) beta (F w_p + H beta a_p |r_p|^2)) r_p
// Every image is independent (no sums across images); within an image the sums run in a fixed order and the
// two-term element updates use explicit fma: the same bits whatever the thread count or the buffers' alignment.
namespace {

// Per-pixel (a_p, |r_p|^2) and per-image (t, s, k tanc'(k|u|^2), |u|^2, the project
// coefficient [active] -mx / (2 n^3)) saved by the forward for the backward.
constexpr int kFlatPix = 2, kFlatImg = 5;

template <typename T>
void flatten_fwd_impl(const T* r, T* y, double* pix, double* img, int64_t B, int64_t P, int64_t C, double k,
                      double beta, double mx) {
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(P * C, 1)), [&](int64_t b0, int64_t b1) {
    std::vector<double> z(P), q(P), a(P);
    for (int64_t b = b0; b < b1; ++b) {
      const T* rb = r + b * P * C;
      double* pb = pix + b * P * kFlatPix;
      for (int64_t p = 0; p < P; ++p) {
        double xx = 0;
        for (int64_t ch = 0; ch < C; ++ch) xx = std::fma(double(rb[p * C + ch]), double(rb[p * C + ch]), xx);
        pb[p * kFlatPix + 1] = xx;
        z[p] = k * xx;
        q[p] = 1.0 + z[p];
      }
      atanc_n(z.data(), q.data(), a.data(), P);
      double uu = 0;
      for (int64_t p = 0; p < P; ++p) {
        const double ap = a[p];
        pb[p * kFlatPix] = ap;
        const double ba = beta * ap;
        uu = std::fma(ba * ba, pb[p * kFlatPix + 1], uu);
      }
      const double zu = k * uu;
      const double t = stereo::tanc(zu);
      const double n = t * std::sqrt(uu);
      const double nc = std::max(n, stereo::min_den<double>());
      const bool act = n > mx;  // (a NaN row stays NaN: s = 1)
      const double s = act ? mx / nc : 1.0;
      double* ib = img + b * kFlatImg;
      ib[0] = t, ib[1] = s, ib[2] = k * stereo::tanc_d(zu, t), ib[3] = uu;
      ib[4] = (act && n > stereo::min_den<double>()) ? -mx / (2.0 * nc * nc * nc) : 0.0;
      const double f = s * t * beta;
      T* yb = y + b * P * C;
      T* cf = reinterpret_cast<T*>(z.data());  // the pixels' output factors in T (z is no longer needed)
      for (int64_t p = 0; p < P; ++p) cf[p] = T(f * a[p]);
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t p = 0; p < P; ++p) yb[ch * P + p] = cf[p] * rb[p * C + ch];
    }
  });
}

template <typename T>
void flatten_bwd_impl(const T* g, const T* r, const double* pix, const double* img, T* gr, int64_t B, int64_t P,
                      int64_t C, double beta, double k) {
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(P * C, 1)), [&](int64_t b0, int64_t b1) {
    std::vector<double> w(P), w2(P);
    for (int64_t b = b0; b < b1; ++b) {
      const T* rb = r + b * P * C;
      const T* gb = g + b * P * C;
      const double* pb = pix + b * P * kFlatPix;
      const double* ib = img + b * kFlatImg;
      double G = 0;
      for (int64_t p = 0; p < P; ++p) {
        double wp = 0;
        for (int64_t ch = 0; ch < C; ++ch) wp = std::fma(double(gb[ch * P + p]), double(rb[p * C + ch]), wp);
        w[p] = wp;
        G = std::fma(pb[p * kFlatPix], wp, G);
      }
      G *= beta;
      const double t = ib[0], s = ib[1], ktd = ib[2], uu = ib[3];
      const double gxx_e = ib[4] * (t * G);
      const double gxx_u = ktd * std::fma(2.0 * gxx_e * t, uu, s * G);
      const double F = s * t, H = std::fma(2.0 * t * t, gxx_e, 2.0 * gxx_u);
      T* grb = gr + b * P * C;
      for (int64_t p = 0; p < P; ++p) {  // k atanc'(z_p), z_p = k |r_p|^2 (not needed by the forward)
        const double zp = k * pb[p * kFlatPix + 1];
        w2[p] = k * stereo::atanc_d(zp, 1.0 + zp, pb[p * kFlatPix]);
      }
      for (int64_t p = 0; p < P; ++p) {
        const double ap = pb[p * kFlatPix], bap = beta * ap;
        const double ga = beta * std::fma(H * bap, pb[p * kFlatPix + 1], F * w[p]);  // <g_v_p, r_p>
        const double cg = bap * F;
        const double cr = std::fma(bap * bap, H, 2.0 * w2[p] * ga);
        for (int64_t ch = 0; ch < C; ++ch)
          grb[p * C + ch] = T(std::fma(cg, double(gb[ch * P + p]), cr * double(rb[p * C + ch])));
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_flatten_fwd_cpu(const at::Tensor& x,
                                                                                     const at::Tensor& c_in,
                                                                                     double beta, double seps) {
  TORCH_CHECK(x.dim() == 4, "poincare_flatten: x (B, C, H, W)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "poincare_flatten: float32/64");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const double c = scalar_value(c_in);
  const at::Tensor xl = image_channels_last(x);  // its pixel rows, (B*P, C) in memory
  at::Tensor y = at::empty({B, C * P}, x.options());
  const auto dopt = x.options().dtype(at::kDouble);
  at::Tensor pix = at::empty({B * P, kFlatPix}, dopt), img = at::empty({B, kFlatImg}, dopt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_flatten_fwd", [&] {
    flatten_fwd_impl<scalar_t>(xl.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), pix.data_ptr<double>(),
                               img.data_ptr<double>(), B, P, C, -c, beta, (1.0 - seps) / std::sqrt(c));
  });
  return {y, xl, pix, img};
}

at::Tensor poincare_flatten_bwd_cpu(const at::Tensor& g_in, const at::Tensor& xl, const at::Tensor& pix,
                                    const at::Tensor& img, const at::Tensor& c_in, double beta) {
  TORCH_CHECK(xl.dim() == 4 && xl.is_contiguous(at::MemoryFormat::ChannelsLast),
              "poincare_flatten: the saved channels-last image");
  const int64_t B = xl.size(0), C = xl.size(1), P = xl.size(2) * xl.size(3);
  const at::Tensor g = g_in.to(xl.scalar_type()).contiguous();
  TORCH_CHECK(g.dim() == 2 && g.size(0) == B && g.size(1) == C * P, "poincare_flatten: grad (B, C*H*W)");
  at::Tensor gr = at::empty_like(xl, at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(xl.scalar_type(), "poincare_flatten_bwd", [&] {
    flatten_bwd_impl<scalar_t>(g.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), pix.data_ptr<double>(),
                               img.data_ptr<double>(), gr.data_ptr<scalar_t>(), B, P, C, beta, -scalar_value(c_in));
  });
  return gr;
}

// ---------------------------------------------------------------- images as pixel rows
// A (B, C, H, W) image as a channels-last tensor (its (B*H*W, C) pixel rows contiguous).  A plain contiguous float /
// double image (the usual input layout) is transposed here, one (C, H*W) -> (H*W, C) matrix per image in tiles of
// kPixTile pixels (reads along the pixels, writes within a tile of C * kPixTile entries): the same values as
// x.contiguous(ChannelsLast), whose strided TensorIterator copy measured ~1.1 ms for 32 x 16 x 32 x 32 float32 on
// the AMD EPYC (1 thread; a plain copy of the same bytes ~0.05 ms).  Other layouts and dtypes take that copy.
namespace {
constexpr int64_t kPixTile = 64;

// kToRows: (B, C, P) -> pixel rows (B*P, C) (reads along the pixels, writes within a tile of C * kPixTile
// entries); else the inverse (reads within the tile, writes along the pixels).
template <typename T, bool kToRows>
void transpose_image(const T* in, T* out, int64_t B, int64_t C, int64_t P) {
  const int64_t tiles = (P + kPixTile - 1) / kPixTile;
  at::parallel_for(0, B * tiles, std::max<int64_t>(1, 16384 / std::max<int64_t>(C * kPixTile, 1)),
                   [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / tiles, p0 = (t % tiles) * kPixTile, np = std::min(kPixTile, P - p0);
      const int64_t planes = b * C * P + p0, rows = (b * P + p0) * C;
      int64_t pv = 0;  // pixels [0, pv) of the tile done by the 8 x 8 transposes below
#if defined(CPU_CAPABILITY_AVX2)
      // AVX2 (session 28), float, C a multiple of 8: blocks of 8 channels x 8 pixels as one 8 x 8 transpose
      // (exact moves: the loop's values); the tile's last np % 8 pixels by the loop.
      if constexpr (std::is_same_v<T, float>) {
        if (C % 8 == 0) {
          for (; pv + 8 <= np; pv += 8) {
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
              __m256 r[8];
              if constexpr (kToRows) {
                for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + planes + (c0 + i) * P + pv);
                paths::transpose8(r);
                for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + rows + (pv + j) * C + c0, r[j]);
              } else {
                for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(in + rows + (pv + j) * C + c0);
                paths::transpose8(r);
                for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + planes + (c0 + i) * P + pv, r[i]);
              }
            }
          }
        }
      }
#endif
      for (int64_t c = 0; c < C; ++c) {
        if constexpr (kToRows) {
          const T* sr = in + planes + c * P;
          T* dst = out + rows + c;
          for (int64_t p = pv; p < np; ++p) dst[p * C] = sr[p];
        } else {
          const T* src = in + rows + c;
          T* dr = out + planes + c * P;
          for (int64_t p = pv; p < np; ++p) dr[p] = src[p * C];
        }
      }
    }
  });
}
}  // namespace

at::Tensor image_channels_last(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) <= 1 || x.is_contiguous(at::MemoryFormat::ChannelsLast) || !x.is_contiguous() ||
      !x.device().is_cpu() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
    return x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_channels_last",
                             [&] { transpose_image<scalar_t, true>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, C, P); });
  return out;
}

at::Tensor image_channels_first(const at::Tensor& x) {
  if (x.dim() != 4 || x.size(1) <= 1 || x.is_contiguous() || !x.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      !x.device().is_cpu() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
    return x.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_channels_first",
                             [&] { transpose_image<scalar_t, false>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, C, P); });
  return out;
}

// ---------------------------------------------------------------- the residual Möbius addition
// out = x (+) y along the points' dimension of two images (B, C, H, W) (points along C, read as channels-last
// pixel rows) or two row matrices (N, D), no projection (the stereographic op's semantics).  Forward: the
// stereographic row kernel (its SIMD lanes of rows) on the pixel rows, its output returned as the channels-last
// image.  Backward: blocks of 64 rows -- the five row dots (xx, yy, xy, <g,x>, <g,y>) in double as sequential fma
// chains, the coefficients and their adjoints (stereo_math.h's mobius_add_coef / mobius_add_vjp, k = -c) as a
// loop over the block's rows (SIMD over rows), then dx, dy with explicit fma; the curvature's gradient sums the
// rows' terms in row order: the same bits whatever the thread count or the buffers' alignment.
namespace {

at::MemoryFormat rows_format(const at::Tensor& x) {
  return x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// x laid out by rows_format (an image through image_channels_last).
at::Tensor in_format(const at::Tensor& x, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast ? image_channels_last(x) : x.contiguous(fmt);
}

// The (N, D) rows of a tensor laid out by rows_format.
at::Tensor as_rows(const at::Tensor& x) {
  return x.dim() == 4 ? x.permute({0, 2, 3, 1}).reshape({-1, x.size(1)}) : x;
}

constexpr int64_t kResBlock = 64;

template <typename T>
void residual_bwd_rows(const T* gp, const T* xp, const T* yp, T* gxp, T* gyp, double* rowk, int64_t i0, int64_t i1,
                       int64_t D, double k) {
  double xx[kResBlock], yy[kResBlock], xy[kResBlock], ga[kResBlock], gb[kResBlock];
  double ca[kResBlock], cb[kResBlock], sxx[kResBlock], syy[kResBlock], sxy[kResBlock], sk[kResBlock];
  for (int64_t ib = i0; ib < i1; ib += kResBlock) {
    const int64_t n = std::min(kResBlock, i1 - ib);
    for (int64_t r = 0; r < n; ++r) {
      const T *xr = xp + (ib + r) * D, *yr = yp + (ib + r) * D, *gr = gp + (ib + r) * D;
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double u = double(xr[d]), v = double(yr[d]), w = double(gr[d]);
        a0 = std::fma(u, u, a0), a1 = std::fma(v, v, a1), a2 = std::fma(u, v, a2);
        a3 = std::fma(w, u, a3), a4 = std::fma(w, v, a4);
      }
      xx[r] = a0, yy[r] = a1, xy[r] = a2, ga[r] = a3, gb[r] = a4;
    }
    for (int64_t r = 0; r < n; ++r) {
      const auto cf = stereo::mobius_add_coef(xx[r], yy[r], xy[r], k);
      const auto s = stereo::mobius_add_vjp(xx[r], yy[r], xy[r], k, ga[r], gb[r]);
      ca[r] = cf.a, cb[r] = cf.b, sxx[r] = 2.0 * s.xx, syy[r] = 2.0 * s.yy, sxy[r] = s.xy, sk[r] = s.k;
    }
    for (int64_t r = 0; r < n; ++r) {
      const int64_t o = (ib + r) * D;
      const T *xr = xp + o, *yr = yp + o, *gr = gp + o;
      // dx = a g + 2 xx_ x + xy_ y;  dy = b g + 2 yy_ y + xy_ x
      if (gxp)
        for (int64_t d = 0; d < D; ++d)
          gxp[o + d] = T(std::fma(ca[r], double(gr[d]), std::fma(sxx[r], double(xr[d]), sxy[r] * double(yr[d]))));
      if (gyp)
        for (int64_t d = 0; d < D; ++d)
          gyp[o + d] = T(std::fma(cb[r], double(gr[d]), std::fma(syy[r], double(yr[d]), sxy[r] * double(xr[d]))));
      if (rowk) rowk[ib + r] = -sk[r];  // dL/dc = -dL/dk
    }
  }
}

}  // namespace

at::Tensor poincare_residual_fwd_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& c_in) {
  TORCH_CHECK((x_in.dim() == 4 || x_in.dim() == 2) && x_in.sizes() == y_in.sizes(),
              "poincare_residual: x and y of one shape, (B, C, H, W) or (N, D)");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type() &&
                  (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble),
              "poincare_residual: x and y of one dtype, float32 or float64");
  const auto fmt = rows_format(x_in);
  const at::Tensor x = in_format(x_in, fmt), y = in_format(y_in, fmt);
  const at::Tensor k1 = at::full({1}, -scalar_value(c_in), x.options());
  const at::Tensor rows = stereo_fwd_cpu(stereo::MOBIUS_ADD, as_rows(x), as_rows(y), k1, c10::nullopt, 0.0);
  TORCH_CHECK(rows.is_contiguous(), "poincare_residual: the row kernel's output must be contiguous");
  // the rows' storage as the image (a plain tensor, not a view: the caller may modify it in place)
  return at::empty({0}, x.options()).set_(rows.storage(), rows.storage_offset(), x.sizes(), x.strides());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> poincare_residual_bwd_cpu(const at::Tensor& g_in,
                                                                         const at::Tensor& x_in,
                                                                         const at::Tensor& y_in,
                                                                         const at::Tensor& c_in, int64_t mask) {
  TORCH_CHECK(x_in.sizes() == y_in.sizes() && g_in.sizes() == x_in.sizes(), "poincare_residual: g, x, y of one shape");
  const auto fmt = rows_format(x_in);
  const at::Tensor x = in_format(x_in, fmt), y = in_format(y_in, fmt);
  const at::Tensor g = in_format(g_in.to(x.scalar_type()), fmt);
  const int64_t D = x.size(1), N = D ? x.numel() / D : 0;
  const double k = -scalar_value(c_in);
  at::Tensor gx = (mask & 1) ? at::empty_like(x, fmt) : at::Tensor();
  at::Tensor gy = (mask & 2) ? at::empty_like(x, fmt) : at::Tensor();
  at::Tensor gc;
  std::vector<double> rowk((mask & 4) ? N : 0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_residual_bwd", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *yp = y.data_ptr<T>(), *gp = g.data_ptr<T>();
    T* gxp = (mask & 1) ? gx.data_ptr<T>() : nullptr;
    T* gyp = (mask & 2) ? gy.data_ptr<T>() : nullptr;
    double* rk = (mask & 4) ? rowk.data() : nullptr;
    at::parallel_for(0, N, std::max<int64_t>(kResBlock, 8192 / std::max<int64_t>(D, 1)), [&](int64_t i0, int64_t i1) {
      residual_bwd_rows<T>(gp, xp, yp, gxp, gyp, rk, i0, i1, D, k);
    });
  });
  if (mask & 4) {
    double sum = 0;
    for (int64_t i = 0; i < N; ++i) sum += rowk[i];
    gc = at::full({}, sum, x.options().dtype(at::kDouble));
  }
  return {gx, gy, gc};
}

}  // namespace cpu
}  // namespace geoops
