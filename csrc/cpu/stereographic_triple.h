// Fused CPU kernels of the kappa-stereographic three-vector row ops (gyration, parallel_transport,
// parallel_transport0, parallel_transport0back, dist2plane): csrc/cpu/stereographic_triple.cpp, row math in
// csrc/include/geoops/stereo_triple.h.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace geoops {
namespace cpu {

// op: geoops::triple::Op.  v0, v1, v2: (N, D) of one floating dtype with inner stride 1 (any row stride; 0
// broadcasts a row); v2 absent for the two-vector ops; k: (1,) or (N,), any floating dtype; flags: dist2plane's
// (1 signed, 2 scaled).  Returns (N, D), or (N,) for dist2plane.
at::Tensor stereo_triple_fwd_cpu(int64_t op, const at::Tensor& v0, const at::Tensor& v1,
                                 const c10::optional<at::Tensor>& v2, const at::Tensor& k, int64_t flags);

// mask bits: 1 dv0, 2 dv1, 4 dv2, 8 dk (per row, (N,) in k's dtype).  Unrequested gradients are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_triple_bwd_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& v1,
    const c10::optional<at::Tensor>& v2, const at::Tensor& k, int64_t flags, int64_t mask);

}  // namespace cpu
}  // namespace geoops
