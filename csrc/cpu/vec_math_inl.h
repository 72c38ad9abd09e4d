// tanc / atanc (stereo_math.h) on one SIMD vector of doubles, inline, for the translation units that
// run the row math on vectors: vec_math.cpp (batched calls of the long-row kernels) and
// stereographic_short.cpp (rows in SIMD lanes).
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

namespace geoops {
namespace cpu {
namespace vecmath {

using Vec = at::vec::Vectorized<double>;

// Lane masks of a comparison are all-ones or all-zero bit patterns.
inline bool any_lane(const Vec& mask) { return mask.zero_mask() != (1 << Vec::size()) - 1; }

// tanc(z) (ATANC = false) or atanc(z, q) (ATANC = true) lane by lane.
template <bool ATANC>
inline Vec eval(const Vec& z, const Vec& q) {
  using stereo::min_den;
  using stereo::series_cut;
  const Vec cut(series_cut<double>());
  Vec out = ATANC ? stereo::atanc_series(z) : stereo::tanc_series(z);
  const Vec neg = z <= -cut, pos = z >= cut;  // |z| >= cut: the closed forms, as stereo_math.h
  if (any_lane(neg)) {
    const Vec s = at::vec::maximum(-z, cut).sqrt();
    Vec v;
    if (ATANC) {  // artanh(s)/s = 0.5*log1p(2s(1+s)/q)/s
      const Vec qc = at::vec::maximum(q, Vec(min_den<double>()));
      v = Vec(0.5) * (Vec(2.0) * s * (Vec(1.0) + s) / qc).log1p() / s;
    } else {
      v = s.tanh() / s;
    }
    out = Vec::blendv(out, v, neg);
  }
  if (any_lane(pos)) {
    const Vec s = at::vec::maximum(z, cut).sqrt();
    const Vec v = (ATANC ? s.atan() : s.tan()) / s;
    out = Vec::blendv(out, v, pos);
  }
  return out;
}

}  // namespace vecmath
}  // namespace cpu
}  // namespace geoops
