// tanc / atanc (stereo_math.h) on one SIMD vector of doubles, inline, for the translation units that
// run the row math on vectors: vec_math.cpp (batched calls of the long-row kernels),
// stereographic_lanes.h, poincare_bn.cpp and poincare_relu.cpp (rows in SIMD lanes: LaneMath and the Vec
// specialisations of stereo_math.h's building blocks at the end of this file).
//
// Include geoops/cpu_capability.h FIRST in the .cpp (it picks the at::vec ISA of that translation unit).
//
// at::vec::Vectorized<double> maps tanh, tan, log1p and atan to SLEEF's vector functions (1-ulp
// accuracy) when compiled for AVX2 or AVX-512 (the default native build), and to the scalar std::
// functions otherwise (GEOOPS_PORTABLE=1), so the results are the same either way up to rounding.
// Each vector of arguments takes the Taylor branch, the k < 0 branch and the k > 0 branch of
// stereo_math.h lane by lane; a branch is only evaluated when some lane needs it (in a batch of one
// curvature, one is).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "geoops/stereo_math.h"
#include "vec_log.h"  // vecmath::any_lane

namespace geoops {
namespace cpu {
namespace vecmath {

using Vec = at::vec::Vectorized<double>;

// The Taylor branch of tanc(z) (ATANC = false) or atanc(z, q) (ATANC = true) with the k < 0 closed form
// (z <= -cut) blended in, on double or float lanes (the float lanes: stereographic_lanes.h).
template <bool ATANC, typename V>
inline V eval_series_neg(const V& z, const V& q) {
  using S = typename V::value_type;
  const V cut(stereo::series_cut<S>());
  V out = ATANC ? stereo::atanc_series(z) : stereo::tanc_series(z);
  const V neg = z <= -cut;
  if (any_lane(neg)) {
    const V s = at::vec::maximum(-z, cut).sqrt();
    V v;
    if (ATANC) {  // artanh(s)/s = 0.5*log1p(2s(1+s)/q)/s
      const V qc = V::blendv(V(stereo::min_den<S>()), q, q > V(S(0)));  // stereo::clamp_q: only q <= 0 (or NaN)
      v = V(S(0.5)) * (V(S(2)) * s * (V(S(1)) + s) / qc).log1p() / s;
    } else {
      v = s.tanh() / s;
    }
    out = V::blendv(out, v, neg);
  }
  return out;
}

// tanc(z) (ATANC = false) or atanc(z, q) (ATANC = true) lane by lane.
template <bool ATANC>
inline Vec eval(const Vec& z, const Vec& q) {
  const Vec cut(stereo::series_cut<double>());
  Vec out = eval_series_neg<ATANC>(z, q);
  const Vec pos = z >= cut;  // |z| >= cut: the closed forms, as stereo_math.h
  if (any_lane(pos)) {
    const Vec s = at::vec::maximum(z, cut).sqrt();
    const Vec v = (ATANC ? s.atan() : s.tan()) / s;
    out = Vec::blendv(out, v, pos);
  }
  return out;
}

// stereo_math.h's row math (fwd / vjp) with one row per lane: its tanc / atanc on the lanes.
struct LaneMath {
  Vec tanc(const Vec& z) { return eval<false>(z, Vec(1.0)); }
  Vec atanc(const Vec& z, const Vec& q) { return eval<true>(z, q); }
};

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// 2^(n + bias - 127) on float lanes whose values n are integers (the exponent of an inline exp's Cody-Waite
// reduction), built in the exponent field; n + bias must lie in [1, 254] (no inf / subnormal handling).
// The inline exps of stereographic_rows_f32.h (bias 127: 2^n) and poincare.cpp (bias 126: 2^(n-1)) use it.
inline at::vec::Vectorized<float> pow2_f(const at::vec::Vectorized<float>& n, int bias = 127) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(bias)), 23));
#else
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(bias)), 23));
#endif
}
#endif

}  // namespace vecmath
}  // namespace cpu

namespace stereo {
// The branch-free building blocks of stereo_math.h on vectors of rows (lane masks instead of bools), for
// stereo::fwd<Vec> / stereo::vjp<Vec> (stereographic_lanes.h, poincare_bn.cpp's batch-norm row pass).
using cpu::vecmath::Vec;
template <> inline Vec sel<Vec, Vec>(Vec c, Vec a, Vec b) { return Vec::blendv(b, a, c); }
// sel on float lanes: stereographic_rows_f32.h's logmap takes stereo::ball_q on its 8 / 16 rows per vector
template <> inline at::vec::Vectorized<float> sel(at::vec::Vectorized<float> c, at::vec::Vectorized<float> a,
                                                  at::vec::Vectorized<float> b) {
  return at::vec::Vectorized<float>::blendv(b, a, c);
}
template <> inline Vec clamp_lo<Vec>(Vec v, Vec lo) { return Vec::blendv(lo, v, v > lo); }
template <> inline Vec vsqrt<Vec>(Vec v) { return v.sqrt(); }
template <> inline Vec vabs<Vec>(Vec v) { return v.abs(); }
template <> inline Vec series_cut<Vec>() { return Vec(series_cut<double>()); }
}  // namespace stereo
}  // namespace geoops
