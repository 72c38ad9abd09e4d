// Row squared norms in double, shared by the CPU kernels that need |x_i|^2 of (R, D) row-major rows
// (csrc/cpu/poincare.cpp, csrc/cpu/stereographic_pairwise.cpp).  Include after geoops/cpu_capability.h.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace geoops {
namespace cpu {

// sum_d r[d]^2 of one row, accumulated in double.
template <typename T>
inline double row_sqnorm(const T* r, int64_t D) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) s += double(r[d]) * double(r[d]);
  return s;
}

// out[i] = sum_d x[i, d]^2 (accumulated in double), rows spread over the at::parallel_for threads.
template <typename T>
inline void row_sqnorms(const T* x, int64_t R, int64_t D, double* out) {
  at::parallel_for(0, R, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = row_sqnorm(x + i * D, D);
  });
}

}  // namespace cpu
}  // namespace geoops
