// Python bindings of the ssm family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/ssm.h"

GEOOPS_BINDINGS(ssm, m) {
  m.def("vandermonde_fwd_cpu", &geoops::cpu::vandermonde_fwd_cpu, "2 Re sum_n v exp(x l), forward (CPU)");
  m.def("vandermonde_bwd_cpu", &geoops::cpu::vandermonde_bwd_cpu, "2 Re sum_n v exp(x l), backward (CPU)");
  m.def("fftconv_fwd_cpu", &geoops::cpu::fftconv_fwd_cpu, "FFT long convolution + D u, forward (CPU)");
  m.def("fftconv_bwd_cpu", &geoops::cpu::fftconv_bwd_cpu, "FFT long convolution + D u, backward (CPU)");
  m.def("ssm_discretize_fwd_cpu", &geoops::cpu::ssm_discretize_fwd_cpu, "ZOH / bilinear discretisation (CPU)");
  m.def("ssm_discretize_bwd_cpu", &geoops::cpu::ssm_discretize_bwd_cpu, "discretisation chain rule (CPU)");
  m.def("ssm_conv_fwd_cpu", &geoops::cpu::ssm_conv_fwd_cpu, "Vandermonde kernel into the FFT convolution (CPU)");
  m.def("ssm_conv_bwd_cpu", &geoops::cpu::ssm_conv_bwd_cpu, "fused ssm_conv backward (CPU)");
  m.def("ssm_fft_size", &geoops::cpu::ssm_fft_size, "FFT size of a causal length-L convolution");
  m.def("ssm_direct_fft", &geoops::cpu::ssm_direct_fft, "enable/disable (1/0, -1: query) the per-row MKL FFT path");
}
