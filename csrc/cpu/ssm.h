// Declarations of the CPU kernels of the diagonal state-space (S4D / DSS) family.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace geoops {
namespace cpu {

// K[c, h, l] = 2 Re sum_n v[c, h, n] exp(x[h, n] l), l < L, without the (H, N, L) tensor.
// v: (C, H, N) complex; x: (H, N) complex (complex64 or complex128; phases always in double).
// Returns (C, H, L) float64 when out64 else float32.
at::Tensor vandermonde_fwd_cpu(const at::Tensor& v, const at::Tensor& x, int64_t L, bool out64);

// g: (C, H, L) real.  mask bits: 1 dv (C, H, N) in v's dtype, 2 dx (H, N) in x's dtype (torch's
// conjugate-Wirtinger convention).  Unselected outputs are empty tensors.
std::tuple<at::Tensor, at::Tensor> vandermonde_bwd_cpu(const at::Tensor& g, const at::Tensor& v, const at::Tensor& x,
                                                       int64_t mask);

// u: (B, H, L) any float; k: (C, S, H, L) (S = 1 causal, 2 bidirectional); D: (C, H) or None.
// Returns (y (B, C, H, L) in u's dtype, uf = rfft(u, 2L) (B, H, L+1) when save_uf else empty).
std::tuple<at::Tensor, at::Tensor> fftconv_fwd_cpu(const at::Tensor& u, const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& D, bool save_uf);

// g: (B, C, H, L); uf: the forward's saved spectrum or an empty tensor.  mask bits: 1 du, 2 dk, 4 dD.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fftconv_bwd_cpu(const at::Tensor& g, const at::Tensor& u,
                                                               const at::Tensor& uf, const at::Tensor& k,
                                                               const c10::optional<at::Tensor>& D, int64_t mask);

}  // namespace cpu
}  // namespace geoops
