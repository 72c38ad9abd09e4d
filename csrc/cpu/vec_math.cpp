// Batched tanc / atanc on SIMD vectors of doubles.
//
// at::vec::Vectorized<double> maps tanh, tan, log1p and atan to SLEEF's
// vector functions (1-ulp accuracy) when this file is compiled for AVX2 or
// AVX-512 (the default native build), and to the scalar std:: functions
// otherwise (GEOOPS_PORTABLE=1), so the results are the same either way up
// to rounding.  Each vector of arguments takes the Taylor branch, the k < 0
// branch and the k > 0 branch of stereo_math.h lane by lane; a branch is only
// evaluated when some lane needs it (in a batch of one curvature, one is).
//
// The translation units that use at::vec pick the native ISA through
// geoops/cpu_capability.h, each for itself.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "vec_math.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "geoops/stereo_math.h"

namespace geoops {
namespace cpu {

namespace {

using Vec = at::vec::Vectorized<double>;
using stereo::atanc_series;
using stereo::min_den;
using stereo::series_cut;
using stereo::tanc_series;

// Lane masks of a comparison are all-ones or all-zero bit patterns.
inline bool any_lane(const Vec& mask) { return mask.zero_mask() != (1 << Vec::size()) - 1; }

template <bool ATANC>
Vec eval(const Vec& z, const Vec& q) {
  const Vec cut(series_cut<double>());
  Vec out = ATANC ? atanc_series(z) : tanc_series(z);
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

template <bool ATANC>
void eval_n(const double* z, const double* q, double* out, int64_t n) {
  constexpr int64_t L = Vec::size();
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    eval<ATANC>(Vec::loadu(z + i), ATANC ? Vec::loadu(q + i) : Vec(1.0)).store(out + i);
  }
  if (i < n) {  // the tail as one padded vector (z = 0 takes the series branch)
    const int64_t m = n - i;
    eval<ATANC>(Vec::loadu(z + i, m), ATANC ? Vec::loadu(q + i, m) : Vec(1.0)).store(out + i, m);
  }
}

}  // namespace

void tanc_n(const double* z, double* out, int64_t n) { eval_n<false>(z, nullptr, out, n); }
void atanc_n(const double* z, const double* q, double* out, int64_t n) { eval_n<true>(z, q, out, n); }

}  // namespace cpu
}  // namespace geoops
