// The Poincaré network's flatten on the CPU (poincare_head.cpp): HypLL's beta-concatenating flatten of a
// channels-last image, as one call each way over the kappa-stereographic row kernels (stereographic.h).
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace geoops {
namespace cpu {

// x (B, C, H, W) with the points along C (a channels-last tensor: its pixel rows are a free view), k1 = -c as a
// (1,) tensor of x's dtype, ops = the stereographic codes of (logmap0, expmap0, project), seps their margin.
// -> (y [B, C*H*W] = project(expmap0(beta * flat(logmap0(pixel rows)))), the pixel rows r [B*H*W, C],
// u [B, C*H*W] and e = expmap0(u) for the backward).  flat: (pixel, channel) -> (channel, row, column) order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_flatten_fwd_cpu(
    const at::Tensor& x, const at::Tensor& k1, double beta, double seps, const std::vector<int64_t>& ops);
// dL/dr [B*H*W, C] (the pixel rows; the caller views it as the image) from g = dL/dy [B, C*H*W].
at::Tensor poincare_flatten_bwd_cpu(const at::Tensor& g, const at::Tensor& r, const at::Tensor& u,
                                    const at::Tensor& e, const at::Tensor& k1, double beta, double seps, int64_t C,
                                    const std::vector<int64_t>& ops);

}  // namespace cpu
}  // namespace geoops
