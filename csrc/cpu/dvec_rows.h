// Row loads and stores widened to / narrowed from double SIMD lanes, and fixed-order lane sums: shared by the CPU
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

// K sums over a row's columns 0 .. D in a fixed order (for any thread count and ISA width kL): columns in blocks of
// kL alternating between two sets of K lane accumulators (lane l of set j: the columns = l mod kL of every other
// block), the two sets added and their lanes summed by hsum, then the last D mod kL columns in scalars after them.
// vstep(acc, d) adds columns d .. d + kL to acc (DVec[K]); sstep(sum, d) adds column d to sum (double[K]).
template <int K, typename VStep, typename SStep>
inline void lane_sums(int64_t D, VStep&& vstep, SStep&& sstep, double (&sum)[K]) {
  DVec a[K], b[K];
  for (int i = 0; i < K; ++i) a[i] = DVec(0.0), b[i] = DVec(0.0);
  int64_t d = 0;
  for (; d + 2 * kL <= D; d += 2 * kL) vstep(a, d), vstep(b, d + kL);
  if (d + kL <= D) vstep(a, d), d += kL;
  for (int i = 0; i < K; ++i) sum[i] = hsum(a[i] + b[i]);
  for (; d < D; ++d) sstep(sum, d);
}

}  // namespace dvec
}  // namespace cpu
}  // namespace geoops
