// Declarations of the CPU kernels of the diagonal state-space (S4D / DSS) family.
#pragma once

#include <ATen/ATen.h>

#include <string>
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
// Returns (y (B, C, H, L) in u's dtype, uf = rfft(u, n) (B, H, n/2+1) when save_uf else empty; n = ssm_fft_size(L)).
std::tuple<at::Tensor, at::Tensor> fftconv_fwd_cpu(const at::Tensor& u, const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& D, bool save_uf);

// g: (B, C, H, L); uf: the forward's saved spectrum or an empty tensor.  mask bits: 1 du, 2 dk, 4 dD.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fftconv_bwd_cpu(const at::Tensor& g, const at::Tensor& u,
                                                               const at::Tensor& uf, const at::Tensor& k,
                                                               const c10::optional<at::Tensor>& D, int64_t mask);

// Discretisation (one pass over (H, N), complex double): v = C * Bbar (C's shape), x = log Abar (H, N), complex128.
std::tuple<at::Tensor, at::Tensor> ssm_discretize_fwd_cpu(const at::Tensor& log_dt, const at::Tensor& A,
                                                          const at::Tensor& B, const at::Tensor& C,
                                                          const std::string& disc);
// gv (v's shape) / gx (H, N) complex (either may be empty) -> (dlog_dt, dA, dB, dC) in the inputs' dtypes;
// mask bits 1 dlog_dt, 2 dA, 4 dB, 8 dC (unselected: empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssm_discretize_bwd_cpu(
    const at::Tensor& gv, const at::Tensor& gx, const at::Tensor& log_dt, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::string& disc, int64_t mask);

// The fused pair: u (B, H, L), v (C, S, H, N) complex, x (H, N) complex, D (C, H) or None ->
// (y (B, C, H, L) in u's dtype, kf = rfft(circular K, n) / n (C, H, n/2+1) when keep_kf (else empty: the
// forward-only call never writes it), uf = rfft(u, n) when save_uf).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ssm_conv_fwd_cpu(const at::Tensor& u, const at::Tensor& v,
                                                                const at::Tensor& x,
                                                                const c10::optional<at::Tensor>& D, bool save_uf,
                                                                bool keep_kf);
// mask bits: 1 du, 2 dv, 4 dx, 8 dD.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssm_conv_bwd_cpu(
    const at::Tensor& g, const at::Tensor& u, const at::Tensor& uf, const at::Tensor& kf, const at::Tensor& v,
    const at::Tensor& x, const c10::optional<at::Tensor>& D, int64_t mask);

// The FFT size of a length-L causal convolution (smallest 2^a 3^b 5^c >= max(2, 2L - 1)).
int64_t ssm_fft_size(int64_t L);
// set >= 0: enable (1) / disable (0) the per-row MKL path; returns whether it is in use.
bool ssm_direct_fft(int64_t set);

}  // namespace cpu
}  // namespace geoops
