// Poincaré-ball network layers on the CPU (geoops/poincare.py): one GEMM plus fused row-wise work.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace geoops {
namespace cpu {

// Poincaré fully-connected layer (HNN++ / Poincaré ResNet, HypLL's poincare_fully_connected followed by its
// project), ball curvature -c (c > 0):
//   x [N, n], z [n, m] (hyperplane orientations, one per column), bias [m] or an empty tensor (no offsets),
//   c: 0-dim tensor.  eps: the projection margin (the ball radius times 1 - eps).
// Returns (y [N, m], t [N, m]); t = x @ z is what the backward needs (an empty tensor unless `save`).
std::tuple<at::Tensor, at::Tensor> poincare_fc_fwd_cpu(const at::Tensor& x, const at::Tensor& z,
                                                       const at::Tensor& bias, const at::Tensor& c, double eps,
                                                       bool save);

// Gradients of sum(g * y) w.r.t. x, z, bias, c (mask bits 1, 2, 4, 8); unselected ones come back empty.
// gc is a 0-dim float64 tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_fc_bwd_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias, const at::Tensor& c,
    const at::Tensor& t, double eps, int64_t mask);

}  // namespace cpu
}  // namespace geoops
