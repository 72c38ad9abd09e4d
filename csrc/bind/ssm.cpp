// Python bindings of the ssm family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/ssm.h"

GEOOPS_BINDINGS(ssm, m) {
  m.def("vandermonde_fwd_cpu", &geoops::cpu::vandermonde_fwd_cpu, GEOOPS_NOGIL, "2 Re sum_n v exp(x l), forward (CPU)");
  m.def("vandermonde_bwd_cpu", &geoops::cpu::vandermonde_bwd_cpu, GEOOPS_NOGIL, "2 Re sum_n v exp(x l), backward (CPU)");
  m.def("fftconv_fwd_cpu", &geoops::cpu::fftconv_fwd_cpu, GEOOPS_NOGIL, "FFT long convolution + D u, forward (CPU)");
  m.def("fftconv_bwd_cpu", &geoops::cpu::fftconv_bwd_cpu, GEOOPS_NOGIL, "FFT long convolution + D u, backward (CPU)");
  m.def("ssm_discretize_fwd_cpu", &geoops::cpu::ssm_discretize_fwd_cpu, GEOOPS_NOGIL, "ZOH / bilinear discretisation (CPU)");
  m.def("ssm_discretize_bwd_cpu", &geoops::cpu::ssm_discretize_bwd_cpu, GEOOPS_NOGIL, "discretisation chain rule (CPU)");
  m.def("ssm_conv_fwd_cpu", &geoops::cpu::ssm_conv_fwd_cpu, GEOOPS_NOGIL, "Vandermonde kernel into the FFT convolution (CPU)");
  m.def("ssm_conv_bwd_cpu", &geoops::cpu::ssm_conv_bwd_cpu, GEOOPS_NOGIL, "fused ssm_conv backward (CPU)");
  m.def("ssm_fft_size", &geoops::cpu::ssm_fft_size, GEOOPS_NOGIL, "FFT size of a causal length-L convolution");
  m.def("ssm_direct_fft", &geoops::cpu::ssm_direct_fft, GEOOPS_NOGIL, "enable/disable (1/0, -1: query) the per-row MKL FFT path");
}
