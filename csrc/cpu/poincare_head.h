// The Poincaré network's head on the CPU (poincare_head.cpp): HypLL's beta-concatenating flatten of an image and
// the residual Möbius addition, each one fused pass each way.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace geoops {
namespace cpu {

// x (B, C, H, W) with the points along C (a channels-last tensor is read in place; others are copied), c > 0 a
// 1-element tensor -> (y [B, C*H*W] = project(expmap0(beta * flat(logmap0(pixel rows)))) in one pass per image,
// the channels-last image and the per-pixel / per-image double scalars the backward takes).
// flat: (pixel, channel) -> (channel, row, column) order; seps: the projection margin.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_flatten_fwd_cpu(const at::Tensor& x,
                                                                                     const at::Tensor& c,
                                                                                     double beta, double seps);
// dL/dx as a channels-last image from g = dL/dy [B, C*H*W] and the forward's saved tensors (the curvature
// takes no gradient on this path).
at::Tensor poincare_flatten_bwd_cpu(const at::Tensor& g, const at::Tensor& xl, const at::Tensor& pix,
                                    const at::Tensor& img, const at::Tensor& c, double beta);

// The image x (B, C, H, W) as a channels-last tensor (the same values as x.contiguous(ChannelsLast); a contiguous
// float / double image by a tiled transpose, several times faster than that copy).
at::Tensor image_channels_last(const at::Tensor& x);
// The inverse: a channels-last image x as a contiguous (B, C, H, W) tensor (the same values as x.contiguous(); a
// channels-last float / double image by the same tiled transpose).
at::Tensor image_channels_first(const at::Tensor& x);

// The residual x (+) y (Möbius addition on the ball of curvature -c, no projection) of two images (B, C, H, W)
// with the points along C (the output channels last) or two row matrices (N, D), one pass.
at::Tensor poincare_residual_fwd_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& c);
// (dx, dy, dc as a 0-dim double) for mask bits 1, 2, 4; dx, dy in the layout of the forward's output.
std::tuple<at::Tensor, at::Tensor, at::Tensor> poincare_residual_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                                         const at::Tensor& y, const at::Tensor& c,
                                                                         int64_t mask);

}  // namespace cpu
}  // namespace geoops
