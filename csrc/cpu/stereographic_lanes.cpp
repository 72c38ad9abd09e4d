// The forward entry point of the kappa-stereographic row kernels with part of the fp32 forward (fp32 long rows,
// expmap / logmap's short rows: fwd_unit), and the Riemannian SGD step.  The kernels: stereographic_lanes.h; the
// rest of the forward: stereographic_lanes_fwd_wide.cpp; the backward: stereographic_lanes_bwd.cpp.
#include "stereographic_lanes.h"  // first: the at::vec ISA of this translation unit (geoops/cpu_capability.h)

namespace geoops {
namespace cpu {

void stereo_lanes_fwd(int op, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc, double param,
                      at::Tensor& out) {
  // fp32 rows of D <= f32rows::kMaxD stored back to back that the float fast path takes: its short-row blocks
  // (the blocks it declines then take the rows-on-lanes double path, also for D = 9..16)
  // (its switches read once here, for the whole call)
  const int64_t D = x.size(1);
  const f32rows::Switches sw = x.scalar_type() == at::kFloat ? f32rows::switches(op, D) : f32rows::Switches{};
  const bool f32_rows = sw.use && x.stride(0) == D &&
                        out.dim() == 2 && out.stride(0) == D && (!op_has_y(op) || y.stride(0) == D);
  const bool short_rows = D <= kShortRowMaxD || f32_rows;
  if (x.scalar_type() == at::kFloat && fwd_unit<float>(op, short_rows) == 0) {
    fwd_op_rows<0, float>(op, short_rows, x, y, sc, param, out, sw);
  } else {
    stereo_lanes_fwd_wide(op, short_rows, x, y, sc, param, out, sw);  // stereographic_lanes_fwd_wide.cpp
  }
}

// One Riemannian SGD update in place (geoopt's RiemannianSGD without momentum on a Stereographic
// parameter): per row, s = -lr (1 + k|x|^2)^2 / 4 (the denominator clamped at 1e-15 as geoopt's
// lambda_x), x <- x + s g, then project x (k < 0: rows with |x| > (1 - eps)/sqrt(-k) scaled to that
// norm; the identity otherwise).  Row sums and coefficients in double.
template <typename scalar_t>
void rsgd_step_rows(scalar_t* xp, int64_t sx, const scalar_t* gp, int64_t sg, int64_t N, int64_t D, double k,
                    double lr, double eps) {
  const double maxnorm = k < 0 ? (1.0 - eps) / std::sqrt(-k) : 0.0;
  at::parallel_for(0, N, grain_for(D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* xr = xp + i * sx;
      const scalar_t* gr = gp + i * sg;
      double xx = 0.0;
#pragma omp simd reduction(+ : xx)
      for (int64_t j = 0; j < D; ++j) xx += static_cast<double>(xr[j]) * static_cast<double>(xr[j]);
      const double den = stereo::clamp_lo(1.0 + k * xx, stereo::min_den<double>());
      const scalar_t s = static_cast<scalar_t>(-lr * den * den / 4.0);
      double nn = 0.0;
#pragma omp simd reduction(+ : nn)
      for (int64_t j = 0; j < D; ++j) {
        const scalar_t v = xr[j] + s * gr[j];
        xr[j] = v;
        nn += static_cast<double>(v) * static_cast<double>(v);
      }
      if (k < 0) {
        const double n = stereo::clamp_lo(std::sqrt(nn), stereo::min_den<double>());
        if (n > maxnorm) {
          const scalar_t a = static_cast<scalar_t>(maxnorm / n);
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) xr[j] *= a;
        }
      }
    }
  });
}

void stereo_rsgd_step_cpu(at::Tensor x, const at::Tensor& g, double k, double lr, double eps) {
  TORCH_CHECK(x.dim() == 2 && g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() &&
                  (x.size(1) <= 1 || (x.stride(1) == 1 && g.stride(1) == 1)),
              "geoops: stereo_rsgd_step_cpu takes x and grad of one (N, D) shape and dtype, inner stride 1");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stereo_rsgd_step", [&] {
    rsgd_step_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), g.data_ptr<scalar_t>(), g.stride(0), x.size(0),
                             x.size(1), k, lr, eps);
  });
}

}  // namespace cpu
}  // namespace geoops
