// Which explicit SIMD row paths the batch norm and the ReLU (poincare_bn.cpp, poincare_relu.cpp) compile on this
// build's ISA (session 28): the ReLU's predicates themselves (constexpr, on the translation unit's ISA: include after
// geoops/cpu_capability.h) and the report functions that csrc/ops.cpp's poincare_row_paths returns, so that the
// tests know which path a shape reaches and check that the ISA's path exists (tests/test_poincare_row_paths.py).
// (The report functions are defined in poincare_bn.cpp: defined in poincare_relu.cpp, two more functions there
// changed which of its width instances GCC inlined on AVX-512 builds.)
#pragma once

#include <cstdint>
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace geoops {
namespace cpu {
namespace paths {

constexpr int kReluMaxD = 16;  // the ReLU's float row lanes: D <= 16 (poincare_relu.cpp's kReluF32MaxD)
// AVX-512: the rows <-> SoA lanes and the writes by permutes (f32rows' deint_v and row table) at D = 3..16.
constexpr bool relu_perm(int D) {
#if defined(CPU_CAPABILITY_AVX512)
  return D >= 3 && D <= kReluMaxD;
#else
  return (void)D, false;
#endif
}
// AVX2: the rows -> SoA lanes by 8 x 8 transposes at D = 3..16, the writes as contiguous vectors at D = 8, 16.
constexpr bool relu_tr8(int D) {
#if defined(CPU_CAPABILITY_AVX2)
  return D >= 3 && D <= kReluMaxD;
#else
  return (void)D, false;
#endif
}
constexpr bool relu_tr8_write(int D) { return relu_tr8(D) && D % 8 == 0; }
// Bit d set for the D = d with an explicit deinterleave (write = false) / explicit writes (write = true).
constexpr int64_t relu_mask(bool write) {
  int64_t r = 0;
  for (int d = 1; d <= kReluMaxD; ++d)
    if (relu_perm(d) || (write ? relu_tr8_write(d) : relu_tr8(d))) r |= int64_t(1) << d;
  return r;
}

#if defined(CPU_CAPABILITY_AVX2)
// The 8 x 8 float transpose of AVX2's row paths (the batch norm's tiles, the ReLU's rows -> lanes, the image
// transposes): r[l] (row l) -> r[d] (column d), by unpack / shuffle / 128-bit lane permutes (exact moves).
inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Session 29 (the Poincaré FC rows' and the conv logmap0 backward's row lanes on AVX2, poincare.cpp /
// poincare_conv.cpp): up to 8 rows of stride ld <-> column vectors, one lane per row.
// Lanes l < n all-ones (the masked loads / stores of a row's first n <= 8 floats).
inline __m256i lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// p[l * ld + d] for rows l < nrows and columns d < n (n <= 8) -> r[d], lane l (zero past nrows and past n;
// nothing read past either).
inline void rows_to_cols8(const float* p, int64_t ld, int nrows, int64_t n, __m256 (&r)[8]) {
  const __m256i mk = lanes_below(n);
  for (int l = 0; l < 8; ++l)
    r[l] = l >= nrows ? _mm256_setzero_ps() : n >= 8 ? _mm256_loadu_ps(p + l * ld) : _mm256_maskload_ps(p + l * ld, mk);
  transpose8(r);
}
// The inverse: r[d] lane l -> p[l * ld + d] for rows l < nrows and columns d < n (r is transposed in place).
inline void cols_to_rows8(float* p, int64_t ld, int nrows, int64_t n, __m256 (&r)[8]) {
  transpose8(r);
  const __m256i mk = lanes_below(n);
  for (int l = 0; l < nrows; ++l) {
    if (n >= 8) _mm256_storeu_ps(p + l * ld, r[l]);
    else _mm256_maskstore_ps(p + l * ld, mk, r[l]);
  }
}
#endif

}  // namespace paths

// The batch norm's float tiles: rows per tile (AVX-512 16, AVX2 8; 0: the gathers only), taken at D = 8 / 16.
int64_t poincare_bn_tile_rows();
// paths::relu_mask(false), relu_mask(true) of the build.
int64_t poincare_relu_deint_mask();
int64_t poincare_relu_write_mask();

}  // namespace cpu
}  // namespace geoops
