// The forward entry point of the kappa-stereographic row kernels with part of the fp32 forward (fp32 long rows,
// expmap / logmap's short rows: fwd_unit), the Riemannian SGD step and the short-row layout's report
// (stereo_short_layout).  The kernels: stereographic_lanes.h; the
// rest of the forward: stereographic_lanes_fwd_wide.cpp; the backward: stereographic_lanes_bwd.cpp.
#include "stereographic_lanes.h"  // first: the at::vec ISA of this translation unit (geoops/cpu_capability.h)

#include "stereographic.h"  // stereo_rsgd_step_cpu, stereo_short_layout

namespace geoops {
namespace cpu {

void stereo_lanes_fwd(int op, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc, double param,
                      at::Tensor& out) {
  // fp32 rows of D <= f32rows::kMaxD stored back to back that the float fast path takes: its short-row blocks
  // (the blocks it declines then take the rows-on-lanes double path, also for D = 9..16)
  // (its switches read once here, for the whole call)
  const int64_t D = x.size(1);
  const f32rows::Switches sw = x.scalar_type() == at::kFloat ? f32rows::switches(op, D) : f32rows::Switches{};
  // (out: (N, D) rows of stride D, or for dist, session 40, one value per row: (N,) of stride 1)
  const bool out_rows = op_scalar_out(op) ? out.dim() == 1 && out.stride(0) == 1 : out.dim() == 2 && out.stride(0) == D;
  const bool f32_rows = sw.use && x.stride(0) == D && out_rows && (!op_has_y(op) || y.stride(0) == D);
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
//
// Short rows (D <= kRsgdShortD) go kRsgdBlock rows at a time with the row sums interleaved across the rows
// (column j of every row of the block, then column j + 1): one row's chain (|x|^2 -> s -> update -> |x'|^2 ->
// sqrt -> projection) is ~100 cycles of dependent latency, and a per-row `omp simd reduction` over D = 10
// floats (conversions, masked remainder, horizontal sum) took ~40 ns per row on the AMD EPYC: 50 us of the
// WordNet example's 1182 x 10 step.  Interleaved, the block's chains overlap: ~8 us (session 20).
constexpr int64_t kRsgdShortD = 32;
constexpr int kRsgdBlock = 8;

template <typename scalar_t>
inline void rsgd_project_row(scalar_t* xr, int64_t D, double nn, double maxnorm) {
  const double n = stereo::clamp_lo(std::sqrt(nn), stereo::min_den<double>());
  if (n > maxnorm) {
    const scalar_t a = static_cast<scalar_t>(maxnorm / n);
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) xr[j] *= a;
  }
}

template <typename scalar_t>
inline void rsgd_step_row(scalar_t* xr, const scalar_t* gr, int64_t D, double k, double lr, double maxnorm) {
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
  if (k < 0) rsgd_project_row(xr, D, nn, maxnorm);
}

// NB short rows (kRsgdBlock, or 1 for the rows after the last whole block): each row's sums in column order, one
// chain per row, so that a row's bits do not depend on where a thread's chunk of rows begins
template <int NB, typename scalar_t>
inline void rsgd_step_block(scalar_t* xp, int64_t sx, const scalar_t* gp, int64_t sg, int64_t D, double k,
                            double lr, double maxnorm) {
  double acc[NB];
  scalar_t s[NB];
  for (int r = 0; r < NB; ++r) acc[r] = 0.0;
  for (int64_t j = 0; j < D; ++j) {
    for (int r = 0; r < NB; ++r) {
      const double v = static_cast<double>(xp[r * sx + j]);
      acc[r] += v * v;
    }
  }
  for (int r = 0; r < NB; ++r) {
    const double den = stereo::clamp_lo(1.0 + k * acc[r], stereo::min_den<double>());
    s[r] = static_cast<scalar_t>(-lr * den * den / 4.0);
    acc[r] = 0.0;
  }
  for (int64_t j = 0; j < D; ++j) {
    for (int r = 0; r < NB; ++r) {
      const scalar_t v = xp[r * sx + j] + s[r] * gp[r * sg + j];
      xp[r * sx + j] = v;
      acc[r] += static_cast<double>(v) * static_cast<double>(v);
    }
  }
  if (k < 0) {
    for (int r = 0; r < NB; ++r) rsgd_project_row(xp + r * sx, D, acc[r], maxnorm);
  }
}

template <typename scalar_t>
void rsgd_step_rows(scalar_t* xp, int64_t sx, const scalar_t* gp, int64_t sg, int64_t N, int64_t D, double k,
                    double lr, double eps) {
  const double maxnorm = k < 0 ? (1.0 - eps) / std::sqrt(-k) : 0.0;
  at::parallel_for(0, N, grain_for(D), [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    if (D <= kRsgdShortD) {
      for (; i + kRsgdBlock <= end; i += kRsgdBlock) {
        rsgd_step_block<kRsgdBlock>(xp + i * sx, sx, gp + i * sg, sg, D, k, lr, maxnorm);
      }
      for (; i < end; ++i) rsgd_step_block<1>(xp + i * sx, sx, gp + i * sg, sg, D, k, lr, maxnorm);
      return;
    }
    for (; i < end; ++i) rsgd_step_row(xp + i * sx, gp + i * sg, D, k, lr, maxnorm);
  });
}

StereoShortLayout stereo_short_layout() {
  StereoShortLayout l;
#if defined(CPU_CAPABILITY_AVX512)
  l.isa = "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  l.isa = "AVX2";
#else
  l.isa = "DEFAULT";
#endif
  l.double_lanes = kLanes;
  l.float_lanes = f32rows::kF;
  l.block_rows = kBlock;
  // What the kernels take, from their own table (kOpPaths, stereographic_rows_f32_paths.h: reg_takes, reg_range,
  // lanes_core_g's Mobius terms read it) and the register pass's group trait (RegGroup, stereographic_rows_f32_reg.h).
  l.register_pass = f32rows::kRegIsaMaxD > 0;
  l.float_mobius_terms = f32rows::any_float_mob();
  l.register_pass_max_d = f32rows::kRegIsaMaxD;
  for (const f32rows::OpPaths& e : f32rows::kOpPaths) {
    if (e.reg_max_d > 0) l.register_pass_ops.emplace_back(e.name, e.reg_max_d);
    std::vector<int64_t> declined;
    for (int d = 1; d <= e.reg_max_d; ++d) {
      if (!f32rows::reg_on(1, e.op, d)) declined.push_back(d);
    }
    if (!declined.empty()) l.register_pass_declined.emplace_back(e.name, declined);
    if (e.float_mob) l.float_mobius_ops.emplace_back(e.name);
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  l.register_pass_rows = f32rows::RegGroup::kRows;
  l.register_pass_bits_as_fused = f32rows::RegGroup::kWritesAsFused;
  for (const f32rows::OpPaths& e : f32rows::kOpPaths) {
    std::vector<int64_t> groups;
    for (int d = 1; d <= e.reg_max_d; ++d) groups.push_back(f32rows::RegGroup::groups(e.op, d));
    if (!groups.empty()) l.register_pass_groups.emplace_back(e.name, groups);
  }
#else
  l.register_pass_rows = 0;
  l.register_pass_bits_as_fused = false;
#endif
  l.short_row_max_d = kShortRowMaxD;
  l.f32_max_d = f32rows::kMaxD;
  return l;
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
