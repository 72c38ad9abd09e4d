// The Poincaré ReLU on the CPU (geoops/poincare.py's poincare_relu): one fused row op each way, per-row scalars in
// double with the kappa-stereographic row math of geoops/stereo_math.h (k = -c), float32 rows of D <= 16 on float
// lanes.  Rows in fixed chunks (poincare_rows.h).  (Until session 24 in poincare_layers.cpp with the batch norm.)
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "poincare.h"
#include "poincare_paths.h"
#include "poincare_rows.h"
#include "knobs.h"

#include "geoops/stereo_math.h"
#include "vec_math.h"
#include "vec_math_inl.h"
#include "stereographic_rows_f32.h"  // the float row lanes (deinterleave, tanc / atanc on float vectors)

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {

using namespace prows;  // grain, chunk_rows, for_row_chunks, Partials, check_rows, the dispatch helpers

// ---------------------------------------------------------------- Poincaré ReLU (one fused row op)
// y = project(expmap0(relu(logmap0(x)))) per row, k = -c:  logmap0(x) = h x with h = atanc(k|x|^2) > 0, so
// relu(h x) = h r (r = relu(x)), and expmap0(h r) = tanc(k h^2 |r|^2) h r.  Hence y = f r with
// f = tanc(z2) h, z2 = k h^2 R (R = |r|^2), times mx / |y| where |y| = f sqrt(R) exceeds mx = (1 - eps)/sqrt(c)
// (atanc / tanc and their derivatives from geoops/stereo_math.h, in double per row).  Backward, G = <g, r>:
//   dL/dr = f g + 2 G (df/dR) r,  dL/dx = [x > 0] dL/dr + 2 G (df/dh)(dh/dX) x  (X = |x|^2),
//   df/dR = k h^3 tanc'(z2),  df/dh = tanc(z2) + 2 k h^2 R tanc'(z2),  dh/dX = k atanc'(z1), z1 = k X;
// on the projection branch y = mx r/|r|: dL/dr = (mx/|r|)(g - G r/R) and dL/dx has no X term.
namespace {

// The forward's scale of one row (y = f relu(x)): f = t2 h, or mx / |r| on the projection branch.  h = atanc(k X)
// and t2 = tanc(k h^2 R) come in from the batched SIMD evaluation (relu_block below); mx = (1 - eps)/sqrt(-k), the
// projection radius, from the caller (once per call: per row, its square root and division were a serial latency
// chain that cost as much as the rest of the forward).
inline double relu_row_f(double R, double mx, double h, double t2) {
  const double f = t2 * h;
  const double sR = std::sqrt(R);
  return f * sR > mx ? mx / std::max(sR, 1e-15) : f;
}

// A block of rows' scalars: the row sums X = |x|^2, R = |relu x|^2 (and G = <g, relu x> for the backward) of
// rows [i0, i0 + n), then h = atanc(k X) and t2 = tanc(k h^2 R) for all n rows at once on SIMD vectors
// (vec_math.h: SLEEF), instead of one libm call chain per row.
constexpr int64_t kReluBlock = 256;
struct ReluBlock {
  double X[kReluBlock], R[kReluBlock], G[kReluBlock], z[kReluBlock], q[kReluBlock], h[kReluBlock], t[kReluBlock];
  double F[kReluBlock], A[kReluBlock], B[kReluBlock], K[kReluBlock];  // the backward's row lanes: f, G fR2, G fX2, G fk
};

// The backward's row scalars (the formulas above) for rows [0, n) of a block on SIMD lanes of doubles, one row per
// lane (the stereo_math.h derivatives on Vec, both branches evaluated and blended per lane; a partial last vector:
// zero lanes, computed and not stored), relu_rows_bwd_lanes; relu_bwd_vec is one vector of rows: F = f,
// A = G fR2, B = G fX2, K = G fk from the row sums X, R, G and h = atanc(k X), t2 = tanc(k h^2 R) (y = f r,
// dL/dr = f g + G fR2 r, dL/dx += G fX2 x, dL/dk += G fk); vfk = (1 - eps) / (2 (-k)^(3/2)), the projection's dfk.
using VD = geoops::cpu::vecmath::Vec;
inline void relu_bwd_vec(const VD& X, const VD& R, const VD& G, const VD& h, const VD& t2, double k, double mx,
                         double vfk, VD& F, VD& A, VD& B, VD& K) {
  const VD vk(k), one(1.0), two(2.0), vmx(mx), tiny(1e-15);
  VD f = t2 * h;
  const VD sR = R.sqrt();
  const VD proj = f * sR > vmx;
  const VD z1 = vk * X, q1 = one + z1;
  const VD z2 = vk * h * h * R;
  const VD t2d = stereo::tanc_d(z2, t2);
  const VD h1 = stereo::atanc_d(z1, q1, h);
  const VD dh_dX = vk * h1, dh_dk = X * h1;
  const VD df_dh = t2 + two * vk * h * h * R * t2d;
  VD fR2 = two * vk * h * h * h * t2d;
  VD fX2 = two * df_dh * dh_dX;
  VD fk = h * t2d * h * h * R + df_dh * dh_dk;
  if (geoops::cpu::vecmath::any_lane(proj)) {
    const VD nr = at::vec::maximum(sR, tiny);
    f = VD::blendv(f, vmx / nr, proj);
    fR2 = VD::blendv(fR2, vmx.neg() / (nr * nr * nr), proj);
    fX2 = VD::blendv(fX2, VD(0.0), proj);
    fk = VD::blendv(fk, VD(vfk) / nr, proj);
  }
  F = f, A = G * fR2, B = G * fX2, K = G * fk;
}

inline double relu_vfk(double k, double eps) { return 0.5 * (1.0 - eps) / (-k * std::sqrt(-k)); }

inline void relu_rows_bwd_lanes(ReluBlock& b, int64_t n, double k, double eps, double mx) {
  constexpr int64_t L = VD::size();
  const double vfk = relu_vfk(k, eps);
  for (int64_t i = 0; i < n; i += L) {
    const int64_t cnt = std::min<int64_t>(L, n - i);
    const VD X = VD::loadu(b.X + i, cnt), R = VD::loadu(b.R + i, cnt), G = VD::loadu(b.G + i, cnt);
    const VD h = VD::loadu(b.h + i, cnt), t2 = VD::loadu(b.t + i, cnt);
    VD F, A, B, K;
    relu_bwd_vec(X, R, G, h, t2, k, mx, vfk, F, A, B, K);
    F.store(b.F + i, cnt);
    A.store(b.A + i, cnt);
    B.store(b.B + i, cnt);
    K.store(b.K + i, cnt);
  }
}

template <typename T>
void relu_block(ReluBlock& b, const T* xp, const T* gp, int64_t i0, int64_t n, int64_t D, double k) {
  for (int64_t j = 0; j < n; ++j) {
    const T* xr = xp + (i0 + j) * D;
    // element d into partial sum d % 4 (std::fma; four scalars, unrolled), the partials added in a fixed order: the
    // same sums whatever the row's alignment (no `omp simd reduction`), four independent chains, relu as maxsd (GCC compiled std::max
    // to a branch per element: mispredicted on random signs, 3x the double path's time)
    double X0 = 0, X1 = 0, X2 = 0, X3 = 0, R0 = 0, R1 = 0, R2 = 0, R3 = 0, G0 = 0, G1 = 0, G2 = 0, G3 = 0;
    const T* gr = gp ? gp + (i0 + j) * D : nullptr;
    auto acc = [&](int64_t d, double& x, double& r, double& g) {
      const double v = double(xr[d]);
#if defined(__SSE2__)
      const double rv = _mm_cvtsd_f64(_mm_max_sd(_mm_set_sd(v), _mm_setzero_pd()));  // no branch (GCC's std::max)
#else
      const double rv = v > 0 ? v : 0.0;
#endif
      x = std::fma(v, v, x);
      r = std::fma(rv, rv, r);
      if (gr) g = std::fma(double(gr[d]), rv, g);
    };
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) acc(d, X0, R0, G0), acc(d + 1, X1, R1, G1), acc(d + 2, X2, R2, G2), acc(d + 3, X3, R3, G3);
    if (d < D) acc(d, X0, R0, G0);
    if (d + 1 < D) acc(d + 1, X1, R1, G1);
    if (d + 2 < D) acc(d + 2, X2, R2, G2);
    b.X[j] = (X0 + X1) + (X2 + X3);
    b.R[j] = (R0 + R1) + (R2 + R3);
    b.G[j] = (G0 + G1) + (G2 + G3);
    b.z[j] = k * b.X[j];
    b.q[j] = 1.0 + b.z[j];
  }
  atanc_n(b.z, b.q, b.h, n);
  for (int64_t j = 0; j < n; ++j) b.z[j] = k * b.h[j] * b.h[j] * b.R[j];
  tanc_n(b.z, b.t, n);
}

// ---- float row lanes (fp32 rows of D <= 16; GEOOPS_POINCARE_RELU_F32=0, read per call, forces the double row
// lanes that float64, D > 16 and the hard blocks below run, so that the tests compare the two)
// Blocks of 32 rows deinterleaved into SoA float lanes (stereographic_rows_f32.h's AVX-512 permutes at D = 3..16,
// relu_perm below), 16 rows per AVX-512 vector.  Forward all in float: X = |x|^2 and R = |relu x|^2 as float FMAs (no
// cancellation: 1 + k X is one fused rounding), h = atanc(k X) and t2 = tanc(k h^2 R) from f32rows' atanc_neg_f /
// tanc_neg_f, f = t2 h or the projection's mx / |r|, and y = f max(x, 0).  Backward: the row sums X, R,
// G = <g, relu x> in float (X again in double), then the row math in float lanes (relu_bwd_vec_f below: its terms
// regrouped so that none cancels; tanc'/atanc' in their closed forms cancel ~1/|z| above the series cut, so from
// float t2 and h they would lose up to ~1e-5 relative), the coefficients rounded to float for the
// writes gx = [x > 0](f g + a x) + b x.  A block with a hard row (1 + k X <= 1e-6 in float: on or past the ball's
// boundary; X or G not finite, NaN) or a partial block (< 32 rows) takes the double path (relu_block), whose
// results are unchanged.
using FVec = at::vec::Vectorized<float>;
namespace f32r = geoops::cpu::f32rows;
constexpr int kReluF32Rows = 32;
constexpr int kReluF32MaxD = 16;
inline bool relu_f32_on() { return !knobs::off("GEOOPS_POINCARE_RELU_F32"); }


// AVX-512 permutes for the rows <-> SoA lanes at D = 3..16 (f32rows' deint_v and its row table; the header uses
// them at D <= 8 only, where its blocks measured faster; here GCC's loop at D = 9..16 was half of the D = 16
// backward's time, perf); D = 1, 2: GCC's loops (vector permutes already).
constexpr bool relu_perm(int D) {
#if defined(CPU_CAPABILITY_AVX512)
  return f32r::kF == 16 && D >= 3 && D <= kReluF32MaxD;
#else
  return (void)D, false;
#endif
}
// AVX2 (session 28): the rows -> SoA lanes at D = 3..16 by 8 x 8 float transposes (unpack / shuffle / 128-bit lane
// permutes: exact moves, so the lanes hold what GCC's deinterleave loop puts there, bit for bit): 8 rows at a time,
// each row's columns d0 .. d0 + 7 one (masked past D) load; the writes at D = 8, 16 one broadcast of the row's
// coefficients and one contiguous vector per 8 elements, the other D GCC's loop (no masked stores).
using paths::relu_tr8;        // (poincare_paths.h: the predicates the build's report reads)
using paths::relu_tr8_write;
static_assert(paths::kReluMaxD == kReluF32MaxD, "poincare_paths.h: the ReLU's float lanes' D");
static_assert(
    [] {
      for (int d = 1; d <= kReluF32MaxD; ++d)
        if (relu_perm(d) != paths::relu_perm(d)) return false;
      return true;
    }(),
    "poincare_paths.h's relu_perm is this file's");
#if defined(CPU_CAPABILITY_AVX2)
static_assert(f32r::kF == 8, "AVX2: 8 float lanes");
#endif
#if defined(CPU_CAPABILITY_AVX2)
// GEOOPS_POINCARE_RELU_TR8=0 (read once per call by relu_fwd_impl / relu_bwd_impl, not per block: getenv per 32
// rows would cost more than the transposes save): GCC's loops at every D, so that the tests compare the two bit for
// bit (a process-wide switch, as the environment is; relaxed: a flag, nothing published through it).
inline std::atomic<bool> g_relu_tr8{true};
inline bool relu_tr8_on() { return g_relu_tr8.load(std::memory_order_relaxed); }
inline void relu_tr8_read_knob() { g_relu_tr8.store(!knobs::off("GEOOPS_POINCARE_RELU_TR8"), std::memory_order_relaxed); }
// The NB rows at p (D floats each, back to back) into SoA lanes xs[j][b].
template <int D, int NB>
inline void relu_deint_tr8(const float* p, float (&xs)[D][NB]) {
  static_assert(NB % 8 == 0, "whole groups of 8 rows");
  for (int d0 = 0; d0 < D; d0 += 8) {
    constexpr int kFull = 8;
    const int w = D - d0 < kFull ? D - d0 : kFull;  // the columns of this block (a compile-time value per d0)
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int r0 = 0; r0 < NB; r0 += 8) {
      __m256 r[8];
      for (int l = 0; l < 8; ++l)
        r[l] = w == kFull ? _mm256_loadu_ps(p + (r0 + l) * D + d0) : _mm256_maskload_ps(p + (r0 + l) * D + d0, m);
      paths::transpose8(r);
      for (int d = 0; d < w; ++d) _mm256_store_ps(&xs[d0 + d][r0], r[d]);
    }
  }
}
#endif
template <int D, int NB, bool HAS_G>
inline void relu_deint(const float* xb, const float* gb, float (&xs)[D][NB], float (&gs)[HAS_G ? D : 1][NB]) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (relu_perm(D)) {
    f32r::deint_v<D, NB>(xb, xs);
    if constexpr (HAS_G) f32r::deint_v<D, NB>(gb, gs);
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (relu_tr8(D)) {
    if (relu_tr8_on()) {
      relu_deint_tr8<D, NB>(xb, xs);
      if constexpr (HAS_G) relu_deint_tr8<D, NB>(gb, gs);
      return;
    }
  }
#endif
  f32r::deinterleave<D, NB, HAS_G>(xb, gb, xs, gs);
}

// One float vector of rows from lane o: the row sums X, R (and G when BWD) and the hard-row check.
template <int D, int NB, bool BWD>
inline bool relu_sums_f(const float (&xs)[D][NB], const float (&gs)[BWD ? D : 1][NB], int o, float k,
                                 FVec& X, FVec& R, FVec& G, FVec& q1) {
  const FVec zero(0.f);
  X = zero, R = zero, G = zero;
  for (int j = 0; j < D; ++j) {
    const FVec v = FVec::loadu(&xs[j][o]);
    const FVec r = v & (v > zero);
    X = at::vec::fmadd(v, v, X);
    R = at::vec::fmadd(r, r, R);
    if (BWD) G = at::vec::fmadd(FVec::loadu(&gs[j][o]), r, G);
  }
  q1 = at::vec::fmadd(FVec(k), X, FVec(1.f));
  FVec ok = (q1 > FVec(1e-6f)) & (X < FVec(1e30f));
  if (BWD) ok = ok & f32r::fin(G);
  return ok.zero_mask() == 0;
}

// y = f max(x, 0) for the NB rows (f: ca[b]); gx = [x > 0](f g + a x) + b x (f, a, b: ca, cb, cc) when BWD.
template <int D, int NB, bool BWD>
__attribute__((noinline, optimize("no-trapping-math"))) void relu_write_f(
    const float* __restrict xb, const float* __restrict gb, float* __restrict ob, const float* __restrict ca,
    const float* __restrict cb, const float* __restrict cc) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (relu_perm(D)) {
    const f32r::PermTab<D>& T = f32r::kPermTab<D>;
    const __m512 zero = _mm512_setzero_ps();
    for (int r0 = 0; r0 < NB; r0 += 16) {
      const __m512 f = _mm512_loadu_ps(ca + r0);
      __m512 a = zero, b = zero;
      if (BWD) a = _mm512_loadu_ps(cb + r0), b = _mm512_loadu_ps(cc + r0);
      for (int i = 0; i < D; ++i) {
        const __m512i ix = _mm512_loadu_si512(T.row[i]);
        const int off = r0 * D + 16 * i;
        const __m512 xv = _mm512_loadu_ps(xb + off);
        __m512 o;
        if (BWD) {
          const __mmask16 pos = _mm512_cmp_ps_mask(xv, zero, _CMP_GT_OQ);
          const __m512 t = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, f), _mm512_loadu_ps(gb + off),
                                           _mm512_mul_ps(_mm512_permutexvar_ps(ix, a), xv));
          o = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, b), xv, _mm512_maskz_mov_ps(pos, t));
        } else {
          o = _mm512_mul_ps(_mm512_permutexvar_ps(ix, f), _mm512_max_ps(xv, zero));
        }
        _mm512_storeu_ps(ob + off, o);
      }
    }
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (relu_tr8_write(D)) {
    if (relu_tr8_on()) {  // the same expressions as the loop below, explicitly
      const __m256 zero = _mm256_setzero_ps();
      for (int b = 0; b < NB; ++b) {
        const __m256 f = _mm256_broadcast_ss(ca + b);
        const __m256 a = BWD ? _mm256_broadcast_ss(cb + b) : zero, bb = BWD ? _mm256_broadcast_ss(cc + b) : zero;
        for (int j = 0; j < D; j += 8) {
          const int off = b * D + j;
          const __m256 xv = _mm256_loadu_ps(xb + off);
          const __m256 pos = _mm256_cmp_ps(xv, zero, _CMP_GT_OQ);
          __m256 o;
          if (BWD) {
            const __m256 t = _mm256_fmadd_ps(f, _mm256_loadu_ps(gb + off), _mm256_mul_ps(a, xv));
            o = _mm256_fmadd_ps(bb, xv, _mm256_and_ps(pos, t));
          } else {
            o = _mm256_and_ps(pos, _mm256_mul_ps(f, xv));
          }
          _mm256_storeu_ps(ob + off, o);
        }
      }
      return;
    }
  }
#endif
  // GCC does not inline std::fma into this function (its optimize attribute differs from the caller-less inline's
  // options: "optimization level attribute mismatch"), so std::fma was an out-of-line call per element and the
  // loop did not vectorise: on AVX2 builds (every D) 80 % of the D = 16 backward (6.4 ms at 32768 rows, 1 thread).
  // __builtin_fmaf is the same fused multiply-add (the same bits), expanded in place.  The AVX-512 build keeps
  // std::fma (its D = 1, 2 rows; unmeasured there).
#if defined(CPU_CAPABILITY_AVX512)
#define GEOOPS_RELU_FMAF std::fma
#else
#define GEOOPS_RELU_FMAF __builtin_fmaf
#endif
  for (int b = 0; b < NB; ++b) {
    const float f = ca[b], a = BWD ? cb[b] : 0.f, bb = BWD ? cc[b] : 0.f;
#pragma omp simd
    for (int j = 0; j < D; ++j) {
      const float v = xb[b * D + j];
      if (BWD) {
        ob[b * D + j] = GEOOPS_RELU_FMAF(bb, v, v > 0.f ? GEOOPS_RELU_FMAF(f, gb[b * D + j], a * v) : 0.f);
      } else {
        ob[b * D + j] = v > 0.f ? f * v : 0.f;
      }
    }
  }
}
#undef GEOOPS_RELU_FMAF

// The forward of NB rows at xb into yb; false (nothing written) on a hard row.
template <int D, int NB>
inline bool relu_f32_fwd_block(const float* xb, float* yb, float k, float mx) {
  alignas(64) float xs[D][NB], none[1][NB];
  alignas(64) float ca[NB];
  relu_deint<D, NB, false>(xb, nullptr, xs, none);
  for (int o = 0; o < NB; o += f32r::kF) {
    FVec X, R, G, q1;
    if (!relu_sums_f<D, NB, false>(xs, none, o, k, X, R, G, q1)) return false;
    const FVec vk(k);
    const FVec h = f32r::atanc_neg_f(vk * X, q1);
    const FVec t2 = f32r::tanc_neg_f(vk * h * h * R);
    FVec f = t2 * h;
    const FVec sR = R.sqrt();
    const FVec proj = f * sR > FVec(mx);
    if (proj.zero_mask() != (1 << f32r::kF) - 1) f = FVec::blendv(f, FVec(mx) / at::vec::maximum(sR, FVec(1e-15f)), proj);
    f.store(ca + o);
  }
  relu_write_f<D, NB, false>(xb, nullptr, yb, ca, nullptr, nullptr);
  return true;
}

// ---- the backward's row math in float lanes.  With u = sqrt(c h^2 R) (z2 = -u^2), s^2 = c X (z1 = -s^2) and
// e = exp(-2u), relu_bwd_vec's terms regrouped so that none cancels:
//   df/dh = t2 + 2 z2 tanc'(z2) = sech^2 u = 4e / (1 + e)^2 (from e: no 1 - tanh^2 near tanh = 1);
//   tanc'(z2) = (t2 - sech^2 u) / (2u^2) for u^2 >= 1 (the difference >= 0.34 t2: ~2 ulp), below it
//     2 sech^2 u S(2u) with S(w) = (sinh w - w)/w^3 = sum_n w^2n / (2n+3)! (all terms positive; 7 terms for
//     w^2 < 4: truncation < 3e-10 relative);
//   atanc'(z1) = (h - 1/q1) / (2 s^2) for s^2 >= 1/4 (the difference >= 0.18 / q1: the float h's ~2 ulp become
//     <= ~6 ulp), below it -sum_{n>=1} n/(2n+1) s^(2n-2) (13 terms: truncation < 1e-8 relative);
// q1 = 1 + k X from X in double (it cancels near the boundary), h = atanc_neg_f, t2 = tanc_neg_f (the
// forward's float functions, ~1-2 ulp), e from SLEEF's float exp (1 ulp).  Then fR2 = 2 k h^3 tanc', fX2 = 2 k
// sech^2 u atanc', fk = h^3 R tanc' + sech^2 u X atanc' (its two terms cancel on rows with relu x = x, where
// the exact dL/dk is 0: float leaves ~1e-7 |G| X there), each a few float ulps: the gradients stay within ~1e-6
// relative of the double lanes (tests/test_poincare_relu_f32.py).  The projection branch as relu_bwd_vec.
template <int N>
inline FVec horner_f(const FVec& x, const float (&c)[N]) {
  FVec p(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) p = at::vec::fmadd(p, x, FVec(c[i]));
  return p;
}
constexpr float kSinhS[7] = {1.f / 6, 1.f / 120, 1.f / 5040, 1.f / 362880, 1.f / 39916800, 1.f / 6227020800.f,
                             1.f / 1307674368000.f};
constexpr float kAtancD[13] = {1.f / 3,  2.f / 5,   3.f / 7,   4.f / 9,   5.f / 11,  6.f / 13, 7.f / 15,
                               8.f / 17, 9.f / 19, 10.f / 21, 11.f / 23, 12.f / 25, 13.f / 27};
// F = f, A = G fR2, B = G fX2, K = G fk for one float vector of rows from X, q1 (= 1 + k X, rounded once from
// double), R, G.
inline void relu_bwd_vec_f(const FVec& X, const FVec& q1, const FVec& R, const FVec& G, float k, float mx, float vfk,
                           FVec& F, FVec& A, FVec& B, FVec& K) {
  const FVec vk(k), one(1.f), two(2.f), zero(0.f);
  const FVec h = f32r::atanc_neg_f(vk * X, q1);
  const FVec u2 = (vk * h * h * R).neg();
  const FVec t2 = f32r::tanc_neg_f(u2.neg());
  const FVec e = (FVec(-2.f) * u2.sqrt()).exp();
  const FVec re = f32r::rcp_cr(one + e);
  const FVec sech2 = FVec(4.f) * e * re * re;
  const FVec t2d = FVec::blendv(two * sech2 * horner_f(FVec(4.f) * u2, kSinhS),
                                (t2 - sech2) * f32r::rcp_cr(two * u2), u2 >= one);
  const FVec y = vk.neg() * X;
  const FVec h1 = FVec::blendv(horner_f(y, kAtancD).neg(), (h - f32r::rcp_cr(q1)) * f32r::rcp_cr(two * y),
                               y >= FVec(0.25f));
  const FVec h3 = h * h * h;
  FVec f = t2 * h;
  FVec fR2 = two * vk * h3 * t2d;
  FVec fX2 = two * vk * sech2 * h1;
  FVec fk = at::vec::fmadd(h3 * R, t2d, sech2 * X * h1);
  const FVec sR = R.sqrt();
  const FVec vmx(mx);
  const FVec proj = f * sR > vmx;
  if (proj.zero_mask() != (1 << f32r::kF) - 1) {
    const FVec rn = f32r::rcp_cr(at::vec::maximum(sR, FVec(1e-15f)));
    f = FVec::blendv(f, vmx * rn, proj);
    fR2 = FVec::blendv(fR2, vmx.neg() * rn * rn * rn, proj);
    fX2 = FVec::blendv(fX2, zero, proj);
    fk = FVec::blendv(fk, FVec(vfk) * rn, proj);
  }
  F = f, A = G * fR2, B = G * fX2, K = G * fk;
}

// The backward of NB rows: gx into gxb, the rows' dL/dk added to acc; false (nothing written) on a hard row.
// The row math in float lanes (relu_bwd_vec_f).
template <int D, int NB>
inline bool relu_f32_bwd_block(const float* xb, const float* gb, float* gxb, double k, double mx,
                                        double vfk, double& acc) {
  alignas(64) float xs[D][NB], gs[D][NB];
  alignas(64) float ca[NB], cb[NB], cc[NB];
  relu_deint<D, NB, true>(xb, gb, xs, gs);
  const VD vk(k), one(1.0);
  VD kacc(0.0);
  for (int o = 0; o < NB; o += f32r::kF) {
    FVec X, R, G, q1;
    if (!relu_sums_f<D, NB, true>(xs, gs, o, float(k), X, R, G, q1)) return false;
    // X again in double: 1 + k X cancels near the boundary and tanc' / atanc' amplify its rounding there (the
    // float sum gave ~8x the double path's gradient error on rows at 0.99 of the radius)
    VD Xd[2] = {VD(0.0), VD(0.0)};
    for (int j = 0; j < D; ++j) {
      const VD lo = f32r::widen(&xs[j][o]), hi = f32r::widen(&xs[j][o + f32r::kD]);
      Xd[0] = at::vec::fmadd(lo, lo, Xd[0]);
      Xd[1] = at::vec::fmadd(hi, hi, Xd[1]);
    }
    const FVec q1d = f32r::narrow(at::vec::fmadd(vk, Xd[0], one), at::vec::fmadd(vk, Xd[1], one));
    FVec Ff, Af, Bf, Kf;
    relu_bwd_vec_f(X, q1d, R, G, float(k), float(mx), float(vfk), Ff, Af, Bf, Kf);
    Ff.store(ca + o);
    Af.store(cb + o);
    Bf.store(cc + o);
    VD K0, K1;
    f32r::widen2(Kf, K0, K1);
    kacc = kacc + K0 + K1;
  }
  relu_write_f<D, NB, true>(xb, gb, gxb, ca, cb, cc);
  alignas(64) double kl[VD::size()];
  kacc.store(kl);
  for (int i = 0; i < VD::size(); ++i) acc += kl[i];
  return true;
}


// The float blocks for the runtime D (<= kReluF32MaxD).
template <bool BWD>
inline bool relu_f32_block(int64_t D, const float* xb, const float* gb, float* ob, double k, double mx, double vfk,
                           double& acc) {
  constexpr int NB = kReluF32Rows;
  return with_width_upto<kReluF32MaxD>(D, [&](auto W) {
    if constexpr (BWD)
      return relu_f32_bwd_block<W, NB>(xb, gb, ob, k, mx, vfk, acc);
    else
      return relu_f32_fwd_block<W, NB>(xb, ob, float(k), float(mx));
  });
}

// Rows in fixed chunks (chunk_rows: whole 32-row float blocks, independent of the thread count) and dL/dk summed
// per chunk in a Partials row, the chunks added in order: identical inputs give bit-identical outputs whatever the
// thread count and the buffers' alignment (the row sums sequential std::fma chains, the writes explicit FMAs).
// (Per-thread ranges would move the 32-row blocks and the partial tails — the double path — with the thread count.)
// The forward has no sum across rows, so its chunks count the per-row work (a log and a tanh per row, ~8 plain
// elements' worth per element) and split the digits CNN's 4096 rows of 8 over 2 threads (41 -> ~22 us per call);
// chunks of whole 256-row blocks give the same 32-row float blocks as one chunk: the same bits.  (The backward
// keeps chunk_rows(D): its dL/dk partial sums are per chunk.)
constexpr int64_t kReluElemWork = 8;

template <typename T>
void relu_fwd_impl(const T* xp, T* yp, int64_t N, int64_t D, double k, double eps) {
#if defined(CPU_CAPABILITY_AVX2)
  relu_tr8_read_knob();
#endif
  const double mx = (1.0 - eps) / std::sqrt(-k);
  const bool f32 = std::is_same<T, float>::value && D <= kReluF32MaxD && relu_f32_on();
  for_row_chunks(N, chunk_rows(D * kReluElemWork), [&](int64_t i0, int64_t i1, int64_t) {
    ReluBlock blk;
    const int64_t step = f32 ? kReluF32Rows : kReluBlock;
    for (int64_t b0 = i0; b0 < i1; b0 += step) {
      const int64_t n = std::min(step, i1 - b0);
      if constexpr (std::is_same<T, float>::value) {
        double unused = 0;
        if (f32 && n == kReluF32Rows &&
            relu_f32_block<false>(D, xp + b0 * D, nullptr, yp + b0 * D, k, mx, 0.0, unused))
          continue;
      }
      relu_block<T>(blk, xp, nullptr, b0, n, D, k);
      for (int64_t j = 0; j < n; ++j) {
        const T* xr = xp + (b0 + j) * D;
        T* yr = yp + (b0 + j) * D;
        const T f = T(relu_row_f(blk.R[j], mx, blk.h[j], blk.t[j]));
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] > T(0) ? f * xr[d] : T(0);
      }
    }
  });
}

// gx = [x > 0](f g + a x) + b x with explicit FMAs (as the AVX-512 write of relu_write_f).
template <typename T>
inline void relu_bwd_write_row(const T* xr, const T* gr, T* gxr, int64_t D, T f, T a, T b) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const T v = xr[d];
    gxr[d] = std::fma(b, v, v > T(0) ? std::fma(f, gr[d], a * v) : T(0));
  }
}

template <typename T>
double relu_bwd_impl(const T* gp, const T* xp, T* gxp, int64_t N, int64_t D, double k, double eps) {
#if defined(CPU_CAPABILITY_AVX2)
  relu_tr8_read_knob();
#endif
  const double mx = (1.0 - eps) / std::sqrt(-k);
  const bool f32 = std::is_same<T, float>::value && D <= kReluF32MaxD && relu_f32_on();
  const double vfk = relu_vfk(k, eps);
  const int64_t CH = chunk_rows(D);
  const Partials part(N, CH, 1);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double acc = 0;
    ReluBlock blk;
    const int64_t step = f32 ? kReluF32Rows : kReluBlock;
    for (int64_t b0 = i0; b0 < i1; b0 += step) {
      const int64_t n = std::min(step, i1 - b0);
      if constexpr (std::is_same<T, float>::value) {
        if (f32 && n == kReluF32Rows &&
            relu_f32_block<true>(D, xp + b0 * D, gp + b0 * D, gxp + b0 * D, k, mx, vfk, acc))
          continue;
      }
      relu_block<T>(blk, xp, gp, b0, n, D, k);
      relu_rows_bwd_lanes(blk, n, k, eps, mx);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = b0 + j;
        relu_bwd_write_row<T>(xp + i * D, gp + i * D, gxp + i * D, D, T(blk.F[j]), T(blk.A[j]), T(blk.B[j]));
        acc += blk.K[j];
      }
    }
    part.row(ci)[0] = acc;
  });
  return part.sum()[0];
}

}  // namespace

at::Tensor poincare_relu_fwd_cpu(const at::Tensor& x_in, const at::Tensor& c_in, double eps) {
  check_rows("poincare_relu", x_in);
  const at::Tensor x = x_in.contiguous();
  const double k = -c_in.item<double>();
  at::Tensor y = at::empty_like(x);
  by_dtype(x.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    relu_fwd_impl<T>(x.data_ptr<T>(), y.data_ptr<T>(), x.size(0), x.size(1), k, eps);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> poincare_relu_bwd_cpu(const at::Tensor& g_in, const at::Tensor& x_in,
                                                         const at::Tensor& c_in, double eps) {
  check_rows("poincare_relu", x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = g_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == x.sizes(), "poincare_relu: grad and x must have one shape");
  const double k = -c_in.item<double>();
  at::Tensor gx = at::empty_like(x);
  const double gk = by_dtype(x.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    return relu_bwd_impl<T>(g.data_ptr<T>(), x.data_ptr<T>(), gx.data_ptr<T>(), x.size(0), x.size(1), k, eps);
  });
  return {gx, at::full({}, -gk, x.options().dtype(at::kDouble))};  // dc = -dk
}
}  // namespace cpu
}  // namespace geoops
