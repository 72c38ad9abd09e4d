// Batched tanc / atanc on SIMD vectors of doubles (the lane math: vec_math_inl.h).
//
// The translation units that use at::vec pick the native ISA through
// geoops/cpu_capability.h, each for itself.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "vec_math.h"

#include "vec_math_inl.h"

namespace geoops {
namespace cpu {

namespace {

using vecmath::Vec;

template <bool ATANC>
void eval_n(const double* z, const double* q, double* out, int64_t n) {
  constexpr int64_t L = Vec::size();
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    vecmath::eval<ATANC>(Vec::loadu(z + i), ATANC ? Vec::loadu(q + i) : Vec(1.0)).store(out + i);
  }
  if (i < n) {  // the tail as one padded vector (z = 0 takes the series branch)
    const int64_t m = n - i;
    vecmath::eval<ATANC>(Vec::loadu(z + i, m), ATANC ? Vec::loadu(q + i, m) : Vec(1.0)).store(out + i, m);
  }
}

}  // namespace

void tanc_n(const double* z, double* out, int64_t n) { eval_n<false>(z, nullptr, out, n); }
void atanc_n(const double* z, const double* q, double* out, int64_t n) { eval_n<true>(z, q, out, n); }

const char* build_isa() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

}  // namespace cpu
}  // namespace geoops
