// Tensor-level wrappers of the CUDA kernels of the kappa-stereographic family
// (compiled only when the extension is built with CUDA, GEOOPS_WITH_CUDA).
//
// Same contract as the CPU kernels (csrc/cpu/stereographic.h); `stream` is the
// raw cudaStream_t of the caller's current stream as an integer
// (torch.cuda.current_stream(device).cuda_stream), so that neither this header
// nor bindings.cpp needs torch's CUDA headers.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace geoops {
namespace cuda {

// x: (N, D); y: (N, D) or None; k, r: (1,) or (N,).  Returns (N, D) or (N,).
at::Tensor stereo_fwd_cuda(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
                           const c10::optional<at::Tensor>& r, double param, int64_t stream);

// mask bits: 1 dx, 2 dy, 4 dk (per row), 8 dr (per row).  Absent outputs are
// empty tensors; dk / dr come back in the dtypes of k / r.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cuda(
    int64_t op, const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& r, double param, int64_t mask, int64_t stream);

}  // namespace cuda
}  // namespace geoops
