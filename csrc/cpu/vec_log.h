// log of positive float vectors from exponent and mantissa (no libm, no SLEEF call): for epilogues that take one
// log per element and must vectorise (stereographic_pairwise.cpp's cdist forward).  Include
// geoops/cpu_capability.h FIRST in the .cpp (the at::vec ISA).
//
// w = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1:  log w = e ln2 + log1p(f),  log1p(f) = f - f^2/2 + f^3 P(f)
// with the degree-8 minimax P of the Cephes library's logf (|error| ~1 ulp on that interval); ln2 split in a
// high part exact in float and a low part.  Valid for finite normal w > 0 (callers pass w >= 1).
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace geoops {
namespace cpu {
namespace vecmath {

// Reinterprets the bits of a float vector as int32 (at::vec has the other direction only).
inline at::vec::Vectorized<int32_t> bits_of(const at::vec::Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castps_si512(v);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_castps_si256(v);
#else
  return at::vec::cast<int32_t>(v);
#endif
}

// ~1/v to about 14 (AVX-512: rcp14) or 22 (AVX2: rcpps's 12 bits and one Newton step) bits (exact division
// elsewhere): for small correction terms.  (With rcpps alone, cdist's float k < 0 epilogue -- its only user -- was
// 7.7e-5 off in relative terms at distances below ~6e-8 on an AVX2-only machine, session 24.)
inline at::vec::Vectorized<float> approx_recip(const at::vec::Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_rcp14_ps(v);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 r = _mm256_rcp_ps(v);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(v, r, _mm256_set1_ps(2.0f)));  // r (2 - v r)
#else
  return v.reciprocal();
#endif
}

// Any lane of a comparison mask set (lane masks are all-ones or all-zero bit patterns); float or double
// vectors, shared with vec_math_inl.h.
template <typename V>
inline bool any_lane(const V& mask) {
  return mask.zero_mask() != (1 << V::size()) - 1;
}

inline at::vec::Vectorized<float> log_pos(const at::vec::Vectorized<float>& w) {
  using VF = at::vec::Vectorized<float>;
  using VI = at::vec::Vectorized<int32_t>;
  const VI ib = bits_of(w);
  const VI e = (ib - VI(0x3f3504f3)) >> VI(23);  // exponent of w relative to a mantissa in [sqrt(1/2), sqrt(2))
  const VF m = at::vec::cast<float>(ib - (e << VI(23)));
  const VF ef = at::vec::convert_to_fp_of_same_size<float>(e);
  const VF f = m - VF(1.f), f2 = f * f;
  VF p(7.0376836292e-2f);
  p = at::vec::fmadd(p, f, VF(-1.1514610310e-1f));
  p = at::vec::fmadd(p, f, VF(1.1676998740e-1f));
  p = at::vec::fmadd(p, f, VF(-1.2420140846e-1f));
  p = at::vec::fmadd(p, f, VF(1.4249322787e-1f));
  p = at::vec::fmadd(p, f, VF(-1.6668057665e-1f));
  p = at::vec::fmadd(p, f, VF(2.0000714765e-1f));
  p = at::vec::fmadd(p, f, VF(-2.4999993993e-1f));
  p = at::vec::fmadd(p, f, VF(3.3333331174e-1f));
  VF y = f2 * f * p;
  y = at::vec::fmadd(ef, VF(-2.12194440e-4f), y);
  y = at::vec::fmadd(VF(-0.5f), f2, y);
  return at::vec::fmadd(ef, VF(0.693359375f), f + y);
}

}  // namespace vecmath
}  // namespace cpu
}  // namespace geoops
