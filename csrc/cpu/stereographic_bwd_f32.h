// Float fast path of the short-row BACKWARD of expmap0 and logmap0 (stereographic_lanes.h only; include it
// after geoops/cpu_capability.h): fp32 rows of D <= 16 elements stored back to back (x, g and dx of row
// stride D), one block of <= 32 rows at a time.
//
// Per row: z = k|x|^2, F = tanc(z) (expmap0) or atanc(z, 1 + z) (logmap0), F' = dF/dz, and
//   dx = F g + 2 k <g,x> F' x,   dk = <g,x> F' |x|^2.
// The double path (bwd_rows) evaluates F twice (the vjp and the forward coefficients) and F' in double
// lanes (SLEEF double log1p / tanh, 8 rows per AVX-512 vector); here:
//   A. the row sums |x|^2 and <g,x> in double (rows on the lanes, as block_sums), and from them, in double,
//      z and q = 1 + z (accurate near the ball's boundary, where 1 + z cancels), each then rounded once to float;
//   B. F and F' in float lanes (16 rows per vector): for |z| < kCut the Taylor series of F and F' (no
//      transcendental; truncation < 1e-8 relative), beyond it the closed forms with one float call per row
//      (logmap0: log1p, with 1 - sqrt(-z) taken from q; expmap0: exp(-2s), tanh and sech^2 from it, so that
//      1 - tanh^2 does not cancel).  kCut = 0.25 keeps the cancellation of the closed-form F' (1/q - F,
//      sech^2 - F) below ~7x, i.e. a few float ulps;
//   C. the per-row coefficients F and 2 k <g,x> F' (double products, rounded to float), dk in double, and the
//      writes dx = F g + c x in float.
// A block with a "hard" row returns false and the caller runs the double path for that block (results bit for
// bit the previous ones): z >= kCut (k > 0 beyond the series: tan's condition grows without bound), |z| beyond
// float's range, any NaN, and for logmap0 q <= 1e-6 (at or outside the ball's boundary, where the double path
// clamps q).  The formulas are those of geoops/stereo_math.h (EXPMAP0 / LOGMAP0 in fwd and vjp).
// GEOOPS_STEREO_F32_BWD=0 turns the path off (the double path, which other dtypes, strides and D > 16 run; read per
// call).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "geoops/stereo_math.h"
#include "knobs.h"

namespace geoops {
namespace cpu {
namespace f32bwd {

using FV = at::vec::Vectorized<float>;
constexpr int kFL = FV::size();
constexpr int kRows = 32;  // rows per block
static_assert(kRows % kFL == 0, "a block is whole float vectors");
constexpr int kMaxD = 16;
constexpr float kCut = 0.25f;

inline bool enabled() { return !knobs::off("GEOOPS_STEREO_F32_BWD"); }

constexpr bool fast_op(int op) { return op == stereo::LOGMAP0 || op == stereo::EXPMAP0; }

// Taylor coefficients in z: atanc(z) = sum (-z)^n / (2n + 1); tanc(z) = tan(sqrt z)/sqrt z = sum t_n z^n.
// Enough terms for |z| < kCut: the first omitted term of F' is < 1e-8 relative.
constexpr int kTerms = 15;
constexpr double kTanC[kTerms] = {1.0,
                                  1.0 / 3,
                                  2.0 / 15,
                                  17.0 / 315,
                                  62.0 / 2835,
                                  1382.0 / 155925,
                                  21844.0 / 6081075,
                                  929569.0 / 638512875,
                                  6404582.0 / 10854718875,
                                  443861162.0 / 1856156927625,
                                  18888466084.0 / 194896477400625,
                                  113927491862.0 / 2900518163668125,
                                  58870668456604.0 / 3698160658676859375,
                                  8374643517010684.0 / 1298054391195577640625.0,
                                  689005380505609448.0 / 263505041412702261046875.0};

// The table checked at compile time against tan' = 1 + tan^2, i.e. (2n + 1) t_n = sum_{i+j=n-1} t_i t_j
// (two denominators once overflowed as integer literals and gave two wrong coefficients silently).
constexpr bool tanc_table_ok() {
  for (int n = 1; n < kTerms; ++n) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += kTanC[i] * kTanC[n - 1 - i];
    const double want = s / (2 * n + 1), rel = (kTanC[n] - want) / want;
    if (rel > 1e-12 || rel < -1e-12) return false;
  }
  return true;
}
static_assert(tanc_table_ok(), "kTanC: the tan(sqrt z)/sqrt z series coefficients do not satisfy their recurrence");

template <int OP>
inline double coef(int n) {
  return OP == stereo::LOGMAP0 ? ((n % 2 ? -1.0 : 1.0) / (2 * n + 1)) : kTanC[n];
}

// F and F' by their series (Horner, float).
template <int OP>
inline void series(const FV& z, FV& f, FV& fd) {
  f = FV(static_cast<float>(coef<OP>(kTerms - 1)));
  fd = FV(static_cast<float>((kTerms - 1) * coef<OP>(kTerms - 1)));
  for (int n = kTerms - 2; n >= 0; --n) {
    f = at::vec::fmadd(f, z, FV(static_cast<float>(coef<OP>(n))));
    if (n >= 1) fd = at::vec::fmadd(fd, z, FV(static_cast<float>(n * coef<OP>(n))));
  }
}

// F and F' by the closed forms, for z <= -kCut (the lanes of other z give values that are not used).
template <int OP>
inline void closed(const FV& z, const FV& q, FV& f, FV& fd) {
  const FV s = at::vec::maximum(-z, FV(kCut)).sqrt();
  const FV two_z = z + z;
  if constexpr (OP == stereo::LOGMAP0) {
    // artanh(s)/s = log1p(2 s (1 + s) / q) / (2 s), q = 1 + z = (1 - s)(1 + s) (q from double); F' = (1/q - F)/(2z)
    const FV rq = q.reciprocal();
    f = (FV(2.0f) * s * (FV(1.0f) + s) * rq).log1p() / (s + s);
    fd = (rq - f) / two_z;
  } else {
    // e = exp(-2s): tanh s = (1 - e)/(1 + e), 1 - tanh^2 s = 4e/(1 + e)^2; F = tanh(s)/s, F' = (sech^2 s - F)/(2z)
    const FV e = (FV(-2.0f) * s).exp();
    const FV r1 = (FV(1.0f) + e).reciprocal();
    f = (FV(1.0f) - e) * r1 / s;
    fd = (FV(4.0f) * e * r1 * r1 - f) / two_z;
  }
}

// One block: the rows [0, nb) of x, g (row stride D), dx (nullptr: not wanted), k of row b in kk[b] (b < kRows;
// lanes past nb repeat row nb - 1), dk (nullptr: not wanted) of row b at dk[b].  False: a hard row (above);
// nothing written.
template <int OP, int D>
inline bool block(const float* xb, const float* gb, float* ob, int nb, const double* kk, double* dk) {
  alignas(64) double xx[kRows], gx[kRows];
  alignas(64) float zf[kRows], qf[kRows], ff[kRows], fdf[kRows], cf[kRows];
  int off[kRows];
  for (int b = 0; b < kRows; ++b) {
    off[b] = std::min(b, nb - 1) * D;
    xx[b] = gx[b] = 0.0;
  }
  // A. row sums (double) and z, q
  for (int j = 0; j < D; ++j) {
#pragma omp simd
    for (int b = 0; b < kRows; ++b) {
      const double xv = static_cast<double>(xb[off[b] + j]);
      xx[b] += xv * xv;
      gx[b] += static_cast<double>(gb[off[b] + j]) * xv;
    }
  }
  int hard = 0, far = 0;
#pragma omp simd reduction(| : hard, far)
  for (int b = 0; b < kRows; ++b) {
    const double z = kk[b] * xx[b];
    const double q = 1.0 + z;
    zf[b] = static_cast<float>(z);
    qf[b] = static_cast<float>(q);
    hard |= static_cast<int>(!(z > -1e30 && z < static_cast<double>(kCut)));
    if (OP == stereo::LOGMAP0) hard |= static_cast<int>(!(q > 1e-6));
    far |= static_cast<int>(z <= -static_cast<double>(kCut));
  }
  if (hard) return false;
  // B. F, F' in float lanes
  for (int v = 0; v < kRows; v += kFL) {
    const FV z = FV::loadu(zf + v);
    FV f, fd;
    series<OP>(z, f, fd);
    if (far) {
      FV fc, fdc;
      closed<OP>(z, FV::loadu(qf + v), fc, fdc);
      const FV m = z <= FV(-kCut);
      f = FV::blendv(f, fc, m);
      fd = FV::blendv(fd, fdc, m);
    }
    f.store(ff + v);
    fd.store(fdf + v);
  }
  // C. coefficients, dk, writes
#pragma omp simd
  for (int b = 0; b < kRows; ++b) {
    const double z_ = gx[b] * static_cast<double>(fdf[b]);  // d/dz of <g, F x>
    cf[b] = static_cast<float>(2.0 * kk[b] * z_);
    xx[b] = z_ * xx[b];  // dk
  }
  if (dk) {
    for (int b = 0; b < nb; ++b) dk[b] = xx[b];
  }
  if (ob) {
    for (int b = 0; b < nb; ++b) {
      const float a = ff[b], c = cf[b];
      const float* xr = xb + b * D;
      const float* gr = gb + b * D;
      float* orow = ob + b * D;
#pragma omp simd
      for (int j = 0; j < D; ++j) orow[j] = a * gr[j] + c * xr[j];
    }
  }
  return true;
}

// block<OP, D> for a runtime D in [1, kMaxD].
template <int OP, int D = 1>
inline bool run(int64_t d, const float* xb, const float* gb, float* ob, int nb, const double* kk, double* dk) {
  if constexpr (D > kMaxD) {
    return false;
  } else {
    if (d == D) return block<OP, D>(xb, gb, ob, nb, kk, dk);
    return run<OP, D + 1>(d, xb, gb, ob, nb, kk, dk);
  }
}

}  // namespace f32bwd
}  // namespace cpu
}  // namespace geoops
