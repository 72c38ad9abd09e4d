// Declarations of the fused CPU kernels of the kappa-stereographic family.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace geoops {
namespace cpu {

// x: (N, D); y: (N, D) or None; k, r: (1,) or (N,).  Returns (N, D) or (N,).
at::Tensor stereo_fwd_cpu(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
                          const c10::optional<at::Tensor>& r, double param);

// mask bits: 1 dx, 2 dy, 4 dk (per row), 8 dr (per row).  Absent outputs are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& r, double param, int64_t mask);

// The row-group form of the two above (the eager fast path's broadcast of a (..., 1, D) point against (..., R, D)
// points): x holds G rows and row i of the op reads x row i / rep (y, grad and the result: N = G * rep rows), so the
// caller never materialises the broadcast x; the backward returns dx summed over each group's rep rows, (G, D), in a
// fixed order (stereographic.cpp: sum_groups).  float32 / float64 rows, rep >= 1.
at::Tensor stereo_fwd_rep_cpu(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
                              const c10::optional<at::Tensor>& r, double param, int64_t rep);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_rep_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& r, double param, int64_t mask, int64_t rep);

// One Riemannian SGD step in place: x <- project(x - lr (1 + k|x|^2)^2 / 4 * grad) (geoopt's RiemannianSGD
// without momentum on a Stereographic parameter).  x, grad: (N, D) float/double, inner stride 1; k < 0
// projects with margin eps.  (stereographic_lanes.cpp)
void stereo_rsgd_step_cpu(at::Tensor x, const at::Tensor& grad, double k, double lr, double eps);

// The short-row layout this build compiled (stereographic_lanes.cpp): what the fp32 fast path's and the double
// path's blocks look like on this ISA, so that tests place hard rows on block boundaries without assuming one ISA
// (tests/test_stereographic_short.py).  Constants of the build, not of the environment's switches.
struct StereoShortLayout {
  const char* isa;          // the at::vec ISA of the row kernels: "AVX512", "AVX2" or "DEFAULT" (GEOOPS_PORTABLE=1)
  int64_t double_lanes;     // rows per double vector (the double path's lanes)
  int64_t float_lanes;      // rows per float vector (the fp32 fast path's lanes)
  int64_t block_rows;       // rows per short-row block, every dtype, forward and backward (the double path, the fp32
                            // fast path's blocks, the register pass, the fp32 backward of expmap0 / logmap0)
  bool register_pass;       // the fp32 forward's register pass (stereographic_rows_f32_reg.h) takes some op
  bool float_mobius_terms;  // the float Mobius terms (GEOOPS_STEREO_F32_MOB, stereographic_rows_f32.h) take some op
  int64_t short_row_max_d;  // rows of D <= this sum with the rows on the lanes (kShortRowMaxD)
  int64_t f32_max_d;        // the fp32 fast path's largest D (f32rows::kMaxD)
  // From the kernels' table (f32rows::kOpPaths, stereographic_rows_f32_paths.h) and group trait (f32rows::RegGroup):
  int64_t register_pass_max_d = 0;  // the register pass's largest D over the ops (0: none)
  int64_t register_pass_rows = 0;   // rows per register-pass group (one float vector; 0: none)
  std::vector<std::pair<std::string, int64_t>> register_pass_ops;  // (op, largest D) for each op it takes
  // (op, the D <= its largest it declines by default: GEOOPS_STEREO_F32_REG=2 takes them) for each op with such D
  std::vector<std::pair<std::string, std::vector<int64_t>>> register_pass_declined;
  bool register_pass_bits_as_fused = false;  // its writes are the fused blocks' at D = 3..8 (the same bits)
  // (op, the groups of rows whose lane math runs together at D = 1..its largest: 4, 2 or 1; RegGroup::groups) for
  // each op it takes (session 41)
  std::vector<std::pair<std::string, std::vector<int64_t>>> register_pass_groups;
  std::vector<std::string> float_mobius_ops;  // the ops whose lane math takes the float Mobius terms
};
StereoShortLayout stereo_short_layout();

}  // namespace cpu
}  // namespace geoops
