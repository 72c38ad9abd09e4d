// Declarations of the fused CPU kernels of Kronecker triple attention (geoops.attention).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace geoops {
namespace cpu {

// q: (B, H, N, D); k1: (B, Hk, M1, D); k2: (B, Hk, M2, D); v1: (B, Hk, M1, Dv); v2: (B, Hk, M2, Dv), H % Hk == 0.
// w1, w2 > 0: sliding windows i - w < j <= i (they imply causal); 0: no window.
// Returns out (B, H, N, Dv) in q's dtype and lse (B, H, N) in float32 (float64 for float64 inputs).
std::tuple<at::Tensor, at::Tensor> triple_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k1,
                                                            const at::Tensor& k2, const at::Tensor& v1,
                                                            const at::Tensor& v2, double scale, bool causal,
                                                            int64_t w1, int64_t w2);

// Gradients (dq, dk1, dk2, dv1, dv2) in the inputs' dtypes, from the upstream gradient dout and the
// forward's out and lse.  Deterministic: no atomics, partial sums reduced in a fixed order that does not
// depend on the number of threads.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> triple_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, double scale, bool causal, int64_t w1,
    int64_t w2);

}  // namespace cpu
}  // namespace geoops
