// Declarations of the fused CPU kernels of the kappa-stereographic family.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace geoops {
namespace cpu {

// x: (N, D); y: (N, D) or None; k, r: (1,) or (N,).  Returns (N, D) or (N,).
at::Tensor stereo_fwd_cpu(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
                          const c10::optional<at::Tensor>& r, double param);

// mask bits: 1 dx, 2 dy, 4 dk (per row), 8 dr (per row).  Absent outputs are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& r, double param, int64_t mask);

// One Riemannian SGD step in place: x <- project(x - lr (1 + k|x|^2)^2 / 4 * grad) (geoopt's RiemannianSGD
// without momentum on a Stereographic parameter).  x, grad: (N, D) float/double, inner stride 1; k < 0
// projects with margin eps.  (stereographic_lanes.cpp)
void stereo_rsgd_step_cpu(at::Tensor x, const at::Tensor& grad, double k, double lr, double eps);

}  // namespace cpu
}  // namespace geoops
