// Batched tanc / atanc (stereo_math.h) on the CPU: SIMD over many rows' arguments.
#pragma once

#include <cstdint>

namespace geoops {
namespace cpu {

// out[i] = tanc(z[i]) for i < n.
void tanc_n(const double* z, double* out, int64_t n);
// out[i] = atanc(z[i], q[i]) for i < n.
void atanc_n(const double* z, const double* q, double* out, int64_t n);

}  // namespace cpu
}  // namespace geoops
