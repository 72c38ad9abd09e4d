// Row loads and stores widened to / narrowed from double SIMD lanes, and a fixed-order lane sum: shared by the CPU
// kernels that run float / double rows through at::vec::Vectorized<double> loops (stereographic_triple.cpp,
// stereographic_midpoint.cpp).  Include after geoops/cpu_capability.h (the .cpp file picks the ISA).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#include "stereographic_rows_f32.h"  // f32rows::widen

namespace geoops {
namespace cpu {
namespace dvec {

using DVec = at::vec::Vectorized<double>;
constexpr int kL = DVec::size();

// Whether a row type runs the DVec loops (others: scalar loops).
template <typename T> constexpr bool kRows = std::is_same_v<T, float> || std::is_same_v<T, double>;

// kL elements at p widened to double; kL doubles narrowed and stored at p.
inline DVec ld(const double* p) { return DVec::loadu(p); }
inline DVec ld(const float* p) { return f32rows::widen(p); }
inline void st(double* p, const DVec& v) { v.store(p); }
inline void st(float* p, const DVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm256_storeu_ps(p, _mm512_cvtpd_ps(v));
#elif defined(CPU_CAPABILITY_AVX2)
  _mm_storeu_ps(p, _mm256_cvtpd_ps(v));
#else
  alignas(64) double t[kL];
  v.store(t);
  for (int i = 0; i < kL; ++i) p[i] = static_cast<float>(t[i]);
#endif
}

// The lanes of v summed in a fixed order.
inline double hsum(const DVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_reduce_add_pd(v);
#else
  alignas(64) double t[kL];
  v.store(t);
  double r = 0;
  for (int i = 0; i < kL; ++i) r += t[i];
  return r;
#endif
}

}  // namespace dvec
}  // namespace cpu
}  // namespace geoops
