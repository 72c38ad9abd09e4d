// Batched tanc / atanc (stereo_math.h) on the CPU: SIMD over many rows' arguments.
#pragma once

#include <cstdint>

namespace geoops {
namespace cpu {

// out[i] = tanc(z[i]) for i < n.
void tanc_n(const double* z, double* out, int64_t n);
// out[i] = atanc(z[i], q[i]) for i < n.
void atanc_n(const double* z, const double* q, double* out, int64_t n);

// The at::vec ISA the native kernels were compiled for (geoops/cpu_capability.h): "AVX512", "AVX2", or "DEFAULT"
// (a portable build, GEOOPS_PORTABLE=1, or a target with neither).  The build's, not the machine's: torch's
// get_cpu_capability() names what the machine runs, which a portable build does not use.
const char* build_isa();

}  // namespace cpu
}  // namespace geoops
