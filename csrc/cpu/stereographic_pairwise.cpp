// Pairwise kappa-stereographic distance on the CPU: one GEMM (<x_i, y_j>) + row norms + fused epilogue.
//
// With A = |x - y|^2, p_x = 1 + k|x|^2, p_y = 1 + k|y|^2 and den = p_x p_y - k A
// (= 1 + 2k<x,y> + k^2|x|^2|y|^2, the denominator of |(-x) (+)_k y|^2 = A / den):
//
//   k < 0 (c = -k):  d = arcosh(1 + t)/sqrt(c) = log1p(t + sqrt(t (t + 2)))/sqrt(c),  t = 2cA/(p_x p_y)
//   k > 0:           d = 2 atan2(sqrt(kA), sqrt(den))/sqrt(k)
//   k = 0:           d = 2 sqrt(A)
//
// (d = 2 s atanc(k s^2) with s^2 = A/den, and 1 + k s^2 = p_x p_y / den.)  Only <x, y> is pairwise: it
// comes from one GEMM (at::bmm, MKL on x86).  A = |x|^2 + |y|^2 - 2<x,y> cancels for close pairs: a
// pair with A < tau (|x|^2 + |y|^2) is recomputed from the rows (sum of (x - y)^2 in double), with tau
// sized so that the GEMM's rounding cannot cost more than ~1e-3 of the distance (x vs itself gives 0).
//
// Backward (d as a function of A, |x|^2, |y|^2, k; s = sqrt(A/den)):
//   dd/dA = 1/(s den),  dd/d|x|^2 = -k s/p_x,  dd/d|y|^2 = -k s/p_y,
//   dd/dk = s^3 E(z) + (s/(p_x p_y)) (A - |x|^2 p_y - |y|^2 p_x),  z = k s^2,
//   E(z) = 2 atanc'(z) = (1/(1+z) - atanc(z))/z  (Taylor series for |z| < 1e-3),
// so with W_ij = 2 g_ij dd/dA:  dx = alpha * x - W y,  dy = beta * y - W^T x  (two GEMMs), alpha_i =
// sum_j W_ij + 2 g_ij dd/d|x|^2, beta_j likewise.  Close pairs are taken out of the GEMMs and added
// exactly as W_ij (x_i - y_j), so no [N, M, D] tensor is ever formed.  k > 0: den, the far rows' shares of
// alpha / beta and dk's linear term are expanded in G = <x, y> (session 40, BwdRow: they cancelled far out); the
// forward's den too (session 41, dist_row).
//
// Points outside the ball (k < 0, p <= 0) are treated as geoopt treats them after its clamps: p is
// clamped at a small positive value, which gives large but finite distances and bounded gradients.
//
// Epilogues run on at::vec vectors (SLEEF log1p/atan2 on AVX2/AVX-512) over rows spread with
// at::parallel_for.  The ISA comes from geoops/cpu_capability.h, included first.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "stereographic_pairwise.h"
#include "stereographic_matvec_rows.h"  // matvec_row_grad / matvec_rows_gv (the backward per row)
#include "row_norms.h"  // row_sqnorms (shared with poincare.cpp)
#include "vec_log.h"    // vecmath::log_pos (cdist forward, float)
#include "mkl_packed.h" // MKL's packed SGEMM when torch exports it (the y operand packed once per call)
#include "knobs.h"

#include "geoops/stereo_math.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <limits>
#include <vector>

namespace geoops {
namespace cpu {

namespace {

// f(std::bool_constant<A>{}, std::bool_constant<B>{}) for the runtime flags (a, b): the row kernels take their
// variants as template flags, and one call site per kernel beats four spelled-out calls.
template <typename F>
decltype(auto) with_flags(bool a, bool b, F&& f) {
  if (a) return b ? f(std::true_type{}, std::true_type{}) : f(std::true_type{}, std::false_type{});
  return b ? f(std::false_type{}, std::true_type{}) : f(std::false_type{}, std::false_type{});
}

// Reductions across blocks of rows (cdist's dy / beta / dk, mobius_matvec's dm) use this many fixed groups of
// blocks, each with its own partial, summed in group order: results independent of the number of threads.
constexpr int64_t kDetGroups = 16;

// MKL's own threads off (thread-local, restored on exit) for the GEMMs of one parallel task: a task that runs
// alone (one block or group, a team of one) would otherwise hand its GEMM to MKL's threads, whose split of the
// sums depends on their number; inside a team of several MKL runs single-threaded anyway.
using mkl_packed::OneMklThread;

template <typename T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() * 0.5;
}

// Relative threshold on A/(|x|^2+|y|^2) under which a pair is recomputed from its rows: the error of
// A = |x|^2 + |y|^2 - 2<x,y> is at most ~(D + 4) u (|x|^2 + |y|^2) (the GEMM's D u |x||y| plus the norms and
// the subtraction), so a pair kept from the GEMM has A to 1/512 relative in fp32 (the distance ~1e-3) and to
// 1e-12 in fp64 (the distance ~5e-13).
template <typename T>
double close_tau(int64_t D) {
  const double rel = std::is_same<T, float>::value ? 1.0 / 512 : 1e-12;
  return std::min(0.5, unit_roundoff<T>() * double(D + 4) / rel);
}

// Smallest p = 1 + k|x|^2 used for one point (points on or outside the boundary of the ball, k < 0): geoopt's
// artanh clamp 1 - 1e-7 corresponds to 1 - c|x|^2 ~ 2e-7 in fp32.
template <typename T>
constexpr T min_p() {
  return std::is_same<T, float>::value ? T(1e-7) : T(1e-15);
}
// Smallest p_x p_y of the forward's t = 2cA/(p_x p_y): no clamp of its own for points inside the ball, as the row
// ops clamp q = p_x p_y / den only where it is <= 0 (stereo_math.h's clamp_q, session 47): min_p^2 in double, the
// product of two clamped p (points outside); 1e-15 in float, which min_p^2 = 1e-14 never reaches (the float fast
// paths' bound 1 / min_pp).  Until session 47 double used 1e-15, which cut the distances of far pairs within ~1e-8
// of the boundary (an antipodal pair at 1 - 1e-8: 35.9 instead of 38.2) as dist and knn did; until session 35 fp32
// used min_p = 1e-7 (an antipodal pair at 1 - 1e-7 gave 18.9 instead of 33.3).  The backward never clamped it.
template <typename T>
constexpr T min_pp() {
  return std::is_same<T, float>::value ? T(1e-15) : min_p<T>() * min_p<T>();
}

template <typename T>
inline double exact_sq(const T* a, const T* b, int64_t D) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) {
    const double t = double(a[d]) - double(b[d]);
    s += t * t;
  }
  return s;
}

// Per-batch scalars of the curvature.
template <typename T>
struct Curv {
  int sign;      // -1, 0, 1
  T k, c, rs;    // k, |k|, 1/sqrt|k|
};

template <typename T>
Curv<T> curv(double kv) {
  Curv<T> cv;
  cv.sign = kv < 0 ? -1 : (kv > 0 ? 1 : 0);
  cv.k = T(kv);
  cv.c = T(std::abs(kv));
  cv.rs = cv.sign ? T(1.0 / std::sqrt(std::abs(kv))) : T(0);
  return cv;
}

// Fills A (the GEMM output G, overwritten in place) for one row: A = x2 + y2 - 2G, close pairs exact.
template <typename T>
inline void fill_A_row(T* G, const T* xi, const T* y, double x2, const double* y2, const T* y2f, int64_t M,
                       int64_t D, double tau) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  const Vec vx2{T(x2)}, two{T(2)}, vtau{T(tau)}, zero{T(0)};
  // a vector with a (possible) close pair: the test redone in double on the stored A, close pairs recomputed
  auto redo = [&](int64_t j0, int64_t j1) {
    for (int64_t jj = j0; jj < j1; ++jj)
      if (double(G[jj]) < tau * (x2 + y2[jj])) G[jj] = T(exact_sq(xi, y + jj * D, D));
  };
  int64_t j = 0;
  for (; j + L <= M; j += L) {
    const Vec vy2 = Vec::loadu(y2f + j);
    const Vec sum = vx2 + vy2;
    Vec a = sum - two * Vec::loadu(G + j);
    const Vec close = a < vtau * sum;
    a = at::vec::maximum(a, zero);
    a.store(G + j);
    if (close.zero_mask() != (1 << L) - 1) redo(j, j + L);
  }
  for (; j < M; ++j) {
    const double sum = x2 + y2[j];
    const double a = sum - 2.0 * double(G[j]);
    G[j] = T(std::max(a, 0.0));
  }
  redo(M - (M % L), M);
}

// Distances of one row from A (in place allowed: out may equal A only when A is not saved).  k > 0: den from the
// row's G = <x, y> (the GEMM's values, read before fill_A_row overwrites them), x2 = |x|^2 and y2f = |y_j|^2 as
// 1 + 2kG + (k|x|^2)(k|y|^2), not p_x p_y - kA: that cancels ~p_x p_y / den-fold for x far out on the sphere
// against y near the origin (float32 d 2.4e-5 off at k|x|^2 = 9e4, k|y|^2 = 1e-5; session 41, the backward's BwdRow).
template <typename T>
inline void dist_row(const T* A, T* out, T px, const T* py, int64_t M, const Curv<T>& cv, const T* G = nullptr,
                     T x2 = T(0), const T* y2f = nullptr) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  int64_t j = 0;
  if (cv.sign < 0) {
    const Vec two_c(T(2) * cv.c), vpx(px), rs(cv.rs), two(T(2)), pmin(min_pp<T>());
    auto f = [&](const Vec& a, const Vec& p) {
      const Vec P = at::vec::maximum(vpx * p, pmin);
      const Vec t = two_c * a / P;
      return (t + (t * (t + two)).sqrt()).log1p() * rs;
    };
    for (; j + L <= M; j += L) f(Vec::loadu(A + j), Vec::loadu(py + j)).store(out + j);
    if (j < M) {
      const int64_t m = M - j;
      f(Vec::loadu(A + j, m), Vec::loadu(py + j, m)).store(out + j, m);
    }
  } else if (cv.sign > 0) {
    const Vec vk(cv.k), two_k(T(2) * cv.k), kx2(cv.k * x2), one(T(1)), two_rs(T(2) * cv.rs), zero(T(0));
    auto f = [&](const Vec& a, const Vec& g, const Vec& y2) {
      const Vec den = at::vec::maximum(at::vec::fmadd(two_k, g, at::vec::fmadd(kx2, vk * y2, one)), zero);
      return (vk * a).sqrt().atan2(den.sqrt()) * two_rs;
    };
    for (; j + L <= M; j += L) f(Vec::loadu(A + j), Vec::loadu(G + j), Vec::loadu(y2f + j)).store(out + j);
    if (j < M) {
      const int64_t m = M - j;
      f(Vec::loadu(A + j, m), Vec::loadu(G + j, m), Vec::loadu(y2f + j, m)).store(out + j, m);
    }
  } else if (cv.k != cv.k) {  // a NaN k (neither sign): NaN, as dist and the reference (was k = 0's 2|x - y|)
    std::fill(out, out + M, std::numeric_limits<T>::quiet_NaN());
  } else {
    const Vec two(T(2));
    for (; j + L <= M; j += L) (Vec::loadu(A + j).sqrt() * two).store(out + j);
    for (; j < M; ++j) out[j] = T(2) * std::sqrt(A[j]);
  }
}

// ---- float, k < 0: one fused pass per row (GEMM value -> A -> distance), written once, no libm call
//
// d = log1p(u) / sqrt(c), u = t + sqrt(t (t + 2)), t = 2c A min(1/(p_x p_y), 1/min_pp) (= the clamp of
// dist_row).  log1p(u) = log(w) + (u - (w - 1))/w with w = fl(1 + u) (the correction restores the bits of u lost
// in the rounding of 1 + u, so small distances keep their relative accuracy; it is below ulp(w), so 1/w to 12-14
// bits (rcp) is enough), log(w) from exponent and
// mantissa (vec_math_inl.h: log_pos).  Close pairs (A < tau (|x|^2 + |y|^2)) get the sentinel -1 and are
// recomputed exactly after the row (rare; x vs itself: the diagonal).
struct NegRowF {
  float x2, ipx, two_c, rs, tau;
};

// Scalar distance (double) of one pair from A, the same formula (the close-pair fix-up).
inline float neg_dist_scalar(double A, double ipx, double ipy, double two_c, double rs) {
  const double t = two_c * A * std::min(ipx * ipy, 1.0 / double(min_pp<float>()));
  return float(std::log1p(t + std::sqrt(t * (t + 2.0))) * rs);
}

// max/min of one instruction (at::vec::maximum/minimum add a NaN test and blend): the x86 max/min return the second
// operand when either is NaN, so NaN inputs still propagate through `a`.
inline at::vec::Vectorized<float> max_keep_nan(const at::vec::Vectorized<float>& lo, const at::vec::Vectorized<float>& a) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_max_ps(lo, a);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_max_ps(lo, a);
#else
  return at::vec::maximum(a, lo);
#endif
}
inline at::vec::Vectorized<float> min_keep_nan(const at::vec::Vectorized<float>& hi, const at::vec::Vectorized<float>& a) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_min_ps(hi, a);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_min_ps(hi, a);
#else
  return at::vec::minimum(a, hi);
#endif
}

// G: the row's <x_i, y_j> (overwritten by the distances when out == G); Asave (may be null): A.
inline void neg_row_f32(const float* G, float* out, float* Asave, const float* xi, const float* y, const float* y2f,
                        const float* ipy, int64_t M, int64_t D, const NegRowF& c) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t L = Vec::size();
  const Vec vx2(c.x2), vipx(c.ipx), v2c(c.two_c), vrs(c.rs), vtau(c.tau), two(2.f), one(1.f), zero(0.f),
      pmax(1.f / min_pp<float>()), sentinel(-1.f);
  Vec anyclose(0.f);
  auto f = [&](const Vec& g, const Vec& vy2, const Vec& vipy, Vec& aout) {
    const Vec sum = vx2 + vy2;
    Vec a = at::vec::fmadd(Vec(-2.f), g, sum);
    const Vec close = a < vtau * sum;
    anyclose = anyclose | close;
    a = max_keep_nan(zero, a);
    aout = a;
    const Vec t = a * min_keep_nan(pmax, vipx * vipy) * v2c;
    const Vec u = t + (t * (t + two)).sqrt();
    const Vec w = u + one;
    const Vec l = at::vec::fmadd(u - (w - one), vecmath::approx_recip(w), vecmath::log_pos(w));
    return Vec::blendv(l * vrs, sentinel, close);
  };
  int64_t j = 0;
  Vec a;
  for (; j + L <= M; j += L) {
    f(Vec::loadu(G + j), Vec::loadu(y2f + j), Vec::loadu(ipy + j), a).store(out + j);
    if (Asave) a.store(Asave + j);
  }
  if (j < M) {
    const int64_t m = M - j;
    f(Vec::loadu(G + j, m), Vec::loadu(y2f + j, m), Vec::loadu(ipy + j, m), a).store(out + j, m);
    if (Asave) a.store(Asave + j, m);
  }
  if (!vecmath::any_lane(anyclose)) return;
  for (int64_t jj = 0; jj < M; ++jj) {
    if (!(out[jj] < 0.f)) continue;
    const double A = exact_sq(xi, y + jj * D, D);
    if (Asave) Asave[jj] = float(A);
    out[jj] = neg_dist_scalar(A, c.ipx, ipy[jj], c.two_c, c.rs);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// ---- float, k < 0, AVX-512: the same pass as neg_row_f32 in ~25 vector operations per 16 pairs instead
// of ~45.  Differences (accuracy: see the error budget in docs/families/stereographic-pairwise.md):
//  * log1p(u) from w = fl(1 + u) = 2^e m, m in [1, 2) (vgetexpps / vgetmantps: no integer shifts, e already a float),
//    log w = e ln2 + f Q(f), f = m - 1, with Q a degree-7 minimax of log1p(f)/f on [0, 1] (our own fit, max relative
//    error 1.9e-7; ~3.6e-7 with float rounding).  Where w < 2 (e = 0) f is replaced by u itself, so the bits of u
//    lost in 1 + u never enter (no correction term, no reciprocal); for w >= 2 they are below 2^-24 of log w.
//  * 1/sqrt(c) is folded into Q's coefficients and ln2 (no final multiply).
//  * t = (2c/p_x) A (1/p_y), with (2c/p_x) A from two FMAs on the GEMM value, and without the clamp of p_x p_y when
//    no pair of the row reaches it (FAST: the caller checks 1/p_x max_j 1/p_y against the clamp per row).
//  * close-pair mask and sentinel on mask registers (compare into a k-mask, OR of masks, masked move).
//  * no max(A, 0): a pair with A < 0 is a close pair (A < tau (|x|^2 + |y|^2)), replaced by its exact value.
// NaN in A propagates (ordered compares are false for NaN; vgetexp/vgetmant of NaN are NaN).
struct NegRowV2 {
  float q[8];   // rs * Q's coefficients, constant term first
  float ln2rs;  // rs * ln 2
};

// Q(f) ~ log1p(f)/f on [0, 1]: degree-7 minimax in relative error (fitted for geoops, iteratively reweighted least
// squares to equioscillation; max relative error 1.94e-7 in exact arithmetic).
constexpr float kLog1pQ[8] = {9.999998212e-01f, -4.999740422e-01f, 3.327545226e-01f, -2.449533939e-01f,
                              1.774494350e-01f, -1.076778844e-01f, 4.408712685e-02f, -8.538553491e-03f};

inline NegRowV2 neg_row_v2_consts(float rs) {
  NegRowV2 p;
  for (int i = 0; i < 8; ++i) p.q[i] = kLog1pQ[i] * rs;
  p.ln2rs = float(0.69314718055994530942 * double(rs));
  return p;
}

// FAST: no pair of the row reaches the clamp: t = aK (1/p_y) with aK = K (x2 + y2) - 2K g, K = 2c/p_x, formed by
// two FMAs (the close test on aK against tau K (x2 + y2): the same test, K > 0).  Otherwise (the clamp):
// A = x2 + y2 - 2g, t = A min(1/(p_x p_y), 1/min_pp) 2c.  SAVE: A (x2 + y2 - 2g) is also written to Asave; the
// distances do not depend on SAVE (bit for bit).
template <bool FAST, bool SAVE>
inline void neg_row_f32_v2(const float* G, float* out, float* Asave, const float* xi, const float* y,
                           const float* y2f, const float* ipy, int64_t M, int64_t D, const NegRowF& c,
                           const NegRowV2& p) {
  const float K = c.two_c * c.ipx;
  const __m512 vx2K = _mm512_set1_ps(c.x2 * K), vx2 = _mm512_set1_ps(c.x2), vK = _mm512_set1_ps(K),
               vm2K = _mm512_set1_ps(-2.f * K), vm2 = _mm512_set1_ps(-2.f), vtau = _mm512_set1_ps(c.tau),
               two = _mm512_set1_ps(2.f), one = _mm512_set1_ps(1.f), sentinel = _mm512_set1_ps(-1.f),
               vln2 = _mm512_set1_ps(p.ln2rs), v2c = _mm512_set1_ps(c.two_c), vipx = _mm512_set1_ps(c.ipx),
               pmax = _mm512_set1_ps(1.f / min_pp<float>());
  const __m512 q0 = _mm512_set1_ps(p.q[0]), q1 = _mm512_set1_ps(p.q[1]), q2 = _mm512_set1_ps(p.q[2]),
               q3 = _mm512_set1_ps(p.q[3]), q4 = _mm512_set1_ps(p.q[4]), q5 = _mm512_set1_ps(p.q[5]),
               q6 = _mm512_set1_ps(p.q[6]), q7 = _mm512_set1_ps(p.q[7]);
  __mmask16 anyclose = 0;
  auto f = [&](__m512 g, __m512 vy2, __m512 vipy, __m512& aout) {
    __m512 t;
    __mmask16 close;
    if constexpr (FAST) {
      const __m512 sum = _mm512_fmadd_ps(vy2, vK, vx2K);  // K (x2 + y2)
      const __m512 a = _mm512_fmadd_ps(vm2K, g, sum);      // K A
      close = _mm512_cmp_ps_mask(a, _mm512_mul_ps(vtau, sum), _CMP_LT_OQ);
      t = _mm512_mul_ps(a, vipy);
      if constexpr (SAVE) aout = _mm512_fmadd_ps(vm2, g, _mm512_add_ps(vx2, vy2));
    } else {
      const __m512 sum = _mm512_add_ps(vx2, vy2);
      const __m512 a = _mm512_fmadd_ps(vm2, g, sum);  // A = sum - 2g
      close = _mm512_cmp_ps_mask(a, _mm512_mul_ps(vtau, sum), _CMP_LT_OQ);
      aout = a;
      t = _mm512_mul_ps(_mm512_mul_ps(a, _mm512_min_ps(pmax, _mm512_mul_ps(vipx, vipy))), v2c);
    }
    anyclose |= close;
    const __m512 u = _mm512_add_ps(t, _mm512_sqrt_ps(_mm512_mul_ps(t, _mm512_add_ps(t, two))));
    const __m512 w = _mm512_add_ps(u, one);
    const __m512 e = _mm512_getexp_ps(w);
    // f = mant(w) - 1 where w >= 2, u itself where w < 2 (e = 0: log1p(u) = u Q(u), no bit of u lost)
    const __m512 fr = _mm512_mask_sub_ps(u, _mm512_cmp_ps_mask(w, two, _CMP_GE_OQ),
                                         _mm512_getmant_ps(w, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src), one);
    __m512 q = _mm512_fmadd_ps(q7, fr, q6);
    q = _mm512_fmadd_ps(q, fr, q5);
    q = _mm512_fmadd_ps(q, fr, q4);
    q = _mm512_fmadd_ps(q, fr, q3);
    q = _mm512_fmadd_ps(q, fr, q2);
    q = _mm512_fmadd_ps(q, fr, q1);
    q = _mm512_fmadd_ps(q, fr, q0);
    const __m512 d = _mm512_fmadd_ps(fr, q, _mm512_mul_ps(e, vln2));
    return _mm512_mask_mov_ps(d, close, sentinel);
  };
  int64_t j = 0;
  __m512 a = _mm512_setzero_ps();
  for (; j + 16 <= M; j += 16) {
    _mm512_storeu_ps(out + j, f(_mm512_loadu_ps(G + j), _mm512_loadu_ps(y2f + j), _mm512_loadu_ps(ipy + j), a));
    if (SAVE) _mm512_storeu_ps(Asave + j, a);
  }
  if (j < M) {
    const __mmask16 tm = __mmask16((1u << (M - j)) - 1);
    const __m512 d = f(_mm512_maskz_loadu_ps(tm, G + j), _mm512_maskz_loadu_ps(tm, y2f + j),
                       _mm512_maskz_loadu_ps(tm, ipy + j), a);
    _mm512_mask_storeu_ps(out + j, tm, d);
    if (SAVE) _mm512_mask_storeu_ps(Asave + j, tm, a);
  }
  if (!anyclose) return;
  for (int64_t jj = 0; jj < M; ++jj) {
    if (!(out[jj] < 0.f)) continue;
    const double A = exact_sq(xi, y + jj * D, D);
    if (SAVE) Asave[jj] = float(A);
    out[jj] = neg_dist_scalar(A, c.ipx, ipy[jj], c.two_c, c.rs);
  }
}
#endif

// The float k < 0 epilogue: neg_row_f32_v2 on AVX-512 builds, neg_row_f32 (at::vec, Cephes-degree log) on the
// others; GEOOPS_CDIST_F32_EPI=v1 selects neg_row_f32 on AVX-512 builds too (read per call), so that the tests run
// the other builds' epilogue here.
inline bool use_epi_v2() {
#if defined(CPU_CAPABILITY_AVX512)
  const char* e = knobs::get("GEOOPS_CDIST_F32_EPI");
  return !(e && std::string(e) == "v1");
#else
  return false;
#endif
}

struct Shapes {
  int64_t B, N, M, D;
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3, "cdist: x and y must be [B, N, D] and [B, M, D]");
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), "cdist: batch or feature sizes differ");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "cdist: x and y must have one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "cdist: float32/float64 only");
  TORCH_CHECK(k.dim() == 1 && k.size(0) == x.size(0), "cdist: k must be [B]");
  return {x.size(0), x.size(1), y.size(1), x.size(2)};
}

// Computes A (in G) for every batch; returns the row norms (double) and p vectors.
template <typename T>
void compute_A(const at::Tensor& x, const at::Tensor& y, at::Tensor& G, const Shapes& s,
               std::vector<double>& x2, std::vector<double>& y2) {
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  T* Gp = G.data_ptr<T>();
  x2.resize(s.B * s.N);
  y2.resize(s.B * s.M);
  row_sqnorms(xp, s.B * s.N, s.D, x2.data());
  row_sqnorms(yp, s.B * s.M, s.D, y2.data());
  std::vector<T> y2f(s.B * s.M);
  for (int64_t i = 0; i < s.B * s.M; ++i) y2f[i] = T(y2[i]);
  const double tau = close_tau<T>(s.D);
  for (int64_t b = 0; b < s.B; ++b) {
    const T* xb = xp + b * s.N * s.D;
    const T* yb = yp + b * s.M * s.D;
    T* Gb = Gp + b * s.N * s.M;
    const double* x2b = x2.data() + b * s.N;
    const double* y2b = y2.data() + b * s.M;
    const T* y2fb = y2f.data() + b * s.M;
    at::parallel_for(0, s.N, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        fill_A_row<T>(Gb + i * s.M, xb + i * s.D, yb, x2b[i], y2b, y2fb, s.M, s.D, tau);
    });
  }
}

// Rows per block of the blocked GEMM + epilogue loops: about 128K elements (512 KiB fp32) of [rows, M] per
// thread, so the GEMM's output block is still in L2 when the epilogue (and, backward, the next GEMMs) read it.
inline int64_t block_rows(int64_t N, int64_t M) {
  return std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 17) / std::max<int64_t>(M, 1)));
}

// Workers for a loop of n tasks handed out one at a time (an atomic counter; see fwd_impl / bwd_impl): at::parallel_for
// over [0, workers) gives each thread one index.  With a static split (each thread its share of the tasks) a thread
// that is descheduled on a busy machine holds back its whole share; here it holds back one task.  What a task
// computes does not depend on the thread that runs it, so the results keep their bits for any thread count.
inline int64_t task_workers(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(n, at::in_parallel_region() ? 1 : at::get_num_threads()));
}

// y [B, M, D] packed per batch as the B operand of x_blk y^T (trans) or W_blk y (no trans), for blocks of at most
// RB rows; empty when pack is null.
inline std::vector<mkl_packed::PackedB> pack_y(const mkl_packed::SgemmApi* api, const float* y, int64_t B,
                                               int64_t M, int64_t D, int64_t RB, bool trans) {
  std::vector<mkl_packed::PackedB> v;
  if (!api) return v;
  v.reserve(B);
  for (int64_t b = 0; b < B; ++b)
    v.emplace_back(api, trans, RB, trans ? M : D, trans ? D : M, y + b * M * D, D);
  return v;
}

// One block's GEMM against batch b's packed B (float, y packed once per batch: MKL otherwise re-packs it for every
// block of rows) when pk holds one, else at::mm_out (float64, no packed API, sizes over int, GEOOPS_MKL_PACKED=0).
inline void block_gemm(const std::vector<mkl_packed::PackedB>& pk, int64_t b, at::Tensor& C, const at::Tensor& Ablk,
                       const at::Tensor& Bop) {
  mkl_packed::block_gemm(pk.empty() ? nullptr : &pk[b], C, Ablk, Bop);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> fwd_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k,
                                            bool save) {
  const Shapes s = check_inputs(x, y, k);
  at::Tensor out = at::empty({s.B, s.N, s.M}, x.options());
  at::Tensor A = save ? at::empty({s.B, s.N, s.M}, x.options()) : x.new_empty({0});
  if (s.N == 0 || s.M == 0) return {out, A};
  if (s.D == 0) {
    out.zero_();
    if (save) A.zero_();
    return {out, A};
  }
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  // |y|^2 serially (M D flops: cheaper than a parallel region on a busy machine); |x|^2 per row below
  std::vector<double> y2(s.B * s.M);
  for (int64_t j = 0; j < s.B * s.M; ++j) {
    const T* r = yp + j * s.D;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < s.D; ++d) acc += double(r[d]) * double(r[d]);
    y2[j] = acc;
  }
  std::vector<T> y2f(y2.begin(), y2.end());
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  T* op = out.data_ptr<T>();
  T* Ap = save ? A.data_ptr<T>() : op;  // without save, A is built in the output and overwritten in place
  const double tau = close_tau<T>(s.D);
  std::vector<T> py(s.B * s.M);
  for (int64_t b = 0; b < s.B; ++b) {
    const T pmin = kp[b] < 0 ? min_p<T>() : T(-1e30);  // points outside the ball: clamped p (see top)
    for (int64_t j = 0; j < s.M; ++j) py[b * s.M + j] = std::max(T(1.0 + kp[b] * y2[b * s.M + j]), pmin);
  }
  // float, k < 0 (neg_row_f32): the GEMM goes into the output, A (when saved) is written by the epilogue
  constexpr bool is_f32 = std::is_same<T, float>::value;
  std::vector<T> ipy(is_f32 ? s.B * s.M : 0);
  for (size_t q = 0; q < ipy.size(); ++q) ipy[q] = T(1) / py[q];
  // float k < 0 on AVX-512: the v2 epilogue, without the clamp of 1/(p_x p_y) on rows where no pair reaches it
  const bool epi_v2 = is_f32 && use_epi_v2();
  (void)epi_v2;
  std::vector<T> ipy_max(is_f32 ? s.B : 0, T(0));
  for (int64_t b = 0; b < int64_t(ipy_max.size()); ++b)
    for (int64_t j = 0; j < s.M; ++j) ipy_max[b] = std::max(ipy_max[b], ipy[b * s.M + j]);
  // the epilogue of rows [i0, i0 + nr) of batch b, whose <x, y> is in the GEMM target (the output or A)
  auto epilogue = [&](int64_t b, int64_t i0, int64_t nr) {
    const bool neg_fast = is_f32 && kp[b] < 0;
    const Curv<T> cv = curv<T>(kp[b]);
    const T pmin = kp[b] < 0 ? min_p<T>() : T(-1e30);
    std::vector<T> grow(cv.sign > 0 ? s.M : 0);  // k > 0: a row's G, before fill_A_row (dist_row)
    for (int64_t r = b * s.N + i0; r < b * s.N + i0 + nr; ++r) {
      const T* xi = xp + r * s.D;
      double x2 = 0;
#pragma omp simd reduction(+ : x2)
      for (int64_t d = 0; d < s.D; ++d) x2 += double(xi[d]) * double(xi[d]);
      const int64_t off = r * s.M;
      const T px = std::max(T(1.0 + kp[b] * x2), pmin);
      if constexpr (is_f32) {
        if (neg_fast) {
          const NegRowF rc{float(x2), 1.f / px, float(2.0 * cv.c), cv.rs, float(tau)};
#if defined(CPU_CAPABILITY_AVX512)
          if (epi_v2) {
            const NegRowV2 pc = neg_row_v2_consts(cv.rs);
            // the clamp min(1/(p_x p_y), 1/min_p) is inactive on the whole row (NaN: take the clamped variant)
            const bool fast = rc.ipx * ipy_max[b] <= 1.f / min_pp<float>();
            float* As = save ? Ap + off : nullptr;
            const float *yb = yp + b * s.M * s.D, *y2b = y2f.data() + b * s.M, *ipyb = ipy.data() + b * s.M;
            with_flags(fast, save, [&](auto f, auto sv) {
              neg_row_f32_v2<f(), sv()>(op + off, op + off, As, xi, yb, y2b, ipyb, s.M, s.D, rc, pc);
            });
            continue;
          }
#endif
          neg_row_f32(op + off, op + off, save ? Ap + off : nullptr, xi, yp + b * s.M * s.D, y2f.data() + b * s.M,
                      ipy.data() + b * s.M, s.M, s.D, rc);
          continue;
        }
      }
      if (cv.sign > 0) std::copy(Ap + off, Ap + off + s.M, grow.begin());
      fill_A_row<T>(Ap + off, xi, yp + b * s.M * s.D, x2, y2.data() + b * s.M, y2f.data() + b * s.M, s.M, s.D,
                    tau);
      dist_row<T>(Ap + off, op + off, px, py.data() + b * s.M, s.M, cv, grow.data(), T(x2), y2f.data() + b * s.M);
    }
  };
  auto gemm_target = [&](int64_t b) { return (save && !(is_f32 && kp[b] < 0) ? A : out).select(0, b); };
  // one parallel region over (batch, block of rows): the block's GEMM (single-threaded, into the output's or A's
  // rows), then A (close pairs exact) and the distances while the block is in cache.  (One GEMM per batch on MKL's
  // own threads, then one parallel epilogue pass, measured within noise at 1 thread, 2048 x 2048 x 64 fp32, and
  // slower and far less robust under load at 2: MKL's 2-thread GEMM stalls when a thread is descheduled.)
  const int64_t RB = block_rows(s.N, s.M);
  const int64_t nblk = (s.N + RB - 1) / RB;
  std::vector<mkl_packed::PackedB> yp_packed;
  if constexpr (is_f32) yp_packed = pack_y(mkl_packed::packed_sgemm_for(RB, s.M, s.D), yp, s.B, s.M, s.D, RB, true);
  const int64_t ntask = s.B * nblk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, task_workers(ntask), 1, [&](int64_t, int64_t) {
    const OneMklThread one_mkl_thread;
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < ntask;) {
      const int64_t b = c / nblk, i0 = (c % nblk) * RB, nr = std::min(s.N, i0 + RB) - i0;
      at::Tensor Gv = gemm_target(b).narrow(0, i0, nr);
      block_gemm(yp_packed, b, Gv, x.select(0, b).narrow(0, i0, nr), y.select(0, b).t());
      epilogue(b, i0, nr);
    }
  });
  return {out, A};
}

// E(z) = (1/(1+z) - atanc(z))/z, Taylor series near 0: 2 * d/dz atanc.
template <typename T>
inline T E_series(T z) {
  return T(2) * (T(-1.0 / 3) + z * (T(2.0 / 5) + z * (T(-3.0 / 7) + z * (T(4.0 / 9) + z * (T(-5.0 / 11) + z * T(6.0 / 13))))));
}

// Per-row constants of the backward epilogue.
template <typename T>
struct BwdRow {
  T k, ik, px, ipx, x2, tau;  // ik = 1/k (0 at k = 0: only the series branch is used there)
  bool xfar;                  // k > 0 and k |x|^2 > 1 (the row's point beyond the equator; KPOS rows only)
};

// k > 0 (KPOS): the per-pair coefficients from G = <x, y> (the GEMM's value), session 40.  With q_x = p_x - kA,
// q_y = p_y - kA and den = p_x p_y - kA, a pair's (non-close) share of dx is
//   W x + 2 g dd/d|x|^2 x - W y = W (1 - kA / p_x) x - W y = W (q_x / p_x) x - W y,
// and for a point far out on the projected sphere (k |x|^2 >> 1) with y not near it, p_x ~ kA ~ k |x|^2: the sum
// W + ax of alpha (W = 2 g / sqrt(A den), ax = -2 k g s / p_x) cancelled to ~k |x|^2 ulps (float32 dx 9e-5 at |x| = 300,
// k = 0.5), and den = p_x p_y - kA itself to ~p_x p_y / den ulps.  Expanded in G the x-sized terms drop out exactly:
//   q_x = 1 + 2kG - k|y|^2,  q_y = 1 + 2kG - k|x|^2,  den = 1 + 2kG + k^2 |x|^2 |y|^2,
//   A - |x|^2 p_y - |y|^2 p_x = -2 (G + k |x|^2 |y|^2)  (dk's linear term),
// whose terms are at most ~ max(1, k |x||y|, k |y|^2) (q_x) / k^2 |x|^2 |y|^2 (den, all >= 0 save 2kG): so for k > 0
// den and dk's term always take the G form, and alpha's share takes W q_x / p_x where k|x|^2 > 1 and |x|^2 > |y|^2
// (beta's W q_y / p_y where k|y|^2 > 1 and |y|^2 > |x|^2) -- stereo::logmap_y_form's choice; elsewhere W + ax as
// before (close pairs: A exact, their W (x - y) added after the GEMMs, ax alone in alpha).  k <= 0 rows: unchanged.

// One row of the backward epilogue, branch-free (vectorisable): wr[j] = W_ij = 2 g dd/dA with close pairs
// left out (0; counted in nclose), col[j] += W_ij + 2 g dd/d|y_j|^2, returns alpha_i = sum_j W_ij + 2 g
// dd/d|x_i|^2, and (WANT_K) adds sum_j g dd/dk to dk.  With r = 1/sqrt(A den): s = A r, dd/dA = r (one square
// root and one division per pair; 1/p_x, 1/p_y precomputed).
template <typename T, bool WANT_K, bool KPOS>
inline double bwd_row(const T* gr, const T* ar, const T* gm, const T* dr, T* wr, T* col, int64_t M,
                      const BwdRow<T>& c, const T* py, const T* ipy, const T* y2f, double& dk, int64_t& nclose) {
  const T tiny = std::numeric_limits<T>::min();
  double a_acc = 0.0, dk_acc = 0.0;
  int64_t nc = 0;
#pragma omp simd reduction(+ : a_acc, dk_acc, nc)
  for (int64_t j = 0; j < M; ++j) {
    const T gij = gr[j];
    const T a = ar[j];
    const bool valid = a > T(0);
    const T as = valid ? a : T(1);
    const T pyj = py[j];
    // (KPOS: den, q_x, q_y in G = <x, y>: see BwdRow)
    const T den = KPOS ? std::max(T(1) + T(2) * c.k * gm[j] + c.k * c.x2 * (c.k * y2f[j]), tiny)
                       : std::max(c.px * pyj - c.k * as, tiny);
    const T r = T(1) / std::sqrt(as * den);
    const T sv = as * r;
    const T gsv = T(-2) * c.k * gij * sv;
    const bool close = valid && a < c.tau * (c.x2 + y2f[j]);
    nc += close ? 1 : 0;
    const T w = (valid && !close) ? T(2) * gij * r : T(0);
    const T ax = valid ? gsv * c.ipx : T(0);
    const T ay = valid ? gsv * ipy[j] : T(0);
    wr[j] = w;
    if constexpr (KPOS) {
      const T kg1 = T(1) + T(2) * c.k * gm[j];
      const bool xf = c.xfar && c.x2 > y2f[j] && valid && !close;
      const bool yf = c.k * y2f[j] > T(1) && y2f[j] > c.x2 && valid && !close;
      a_acc += double(xf ? w * (kg1 - c.k * y2f[j]) * c.ipx : w + ax);
      col[j] += yf ? w * (kg1 - c.k * c.x2) * ipy[j] : w + ay;
    } else {
      a_acc += double(w + ax);
      col[j] += w + ay;
    }
    if (WANT_K) {
      const T z = c.k * sv * sv;
      const T iP = c.ipx * ipy[j];
      const T e_ser = sv * sv * sv * E_series(z);
      const T e_cl = (sv * den * iP - dr[j] / (T(2) * sv) * sv) * c.ik;  // s^3 E(z), dr/(2s) = atanc(z)
      const T e = std::abs(z) < T(1e-3) ? e_ser : e_cl;
      const T lin = KPOS ? T(-2) * (gm[j] + c.k * c.x2 * y2f[j]) : a - c.x2 * pyj - y2f[j] * c.px;
      const T dkk = e + sv * iP * lin;
      dk_acc += valid ? double(gij * dkk) : 0.0;
    }
  }
  nclose += nc;
  dk += dk_acc;
  return a_acc;
}

#if defined(CPU_CAPABILITY_AVX512)
// float, AVX-512: fill_A_row and bwd_row fused into one vectorised pass over the block's GEMM row (session 20: g++
// left bwd_row's `omp simd` loop scalar, ~20 % of a fwd+bwd).  G holds <x_i, y_j> on entry and W_ij on exit (in
// place: the block keeps one [rows, M] buffer in L2 instead of two).  Per 16 pairs: A = x2 + y2 - 2G with the
// close test A < tau (x2 + y2); a vector with a close pair takes those pairs' A exactly from the rows (double) and
// leaves them out of W (they are pushed to `closes` with their W, added exactly after the GEMMs), as before.
// Same formulas as bwd_row; alpha_i and dk are summed in double lanes.
template <bool WANT_K, bool KPOS, typename CloseFn>
inline double bwd_row_f32_v2(float* G, const float* gr, const float* dr, float* col, const float* xi,
                             const float* y, int64_t M, int64_t D, const BwdRow<float>& c, const float* py,
                             const float* ipy, const float* y2f, double& dk, CloseFn&& on_close) {
  const __m512 vx2 = _mm512_set1_ps(c.x2), vtau = _mm512_set1_ps(c.tau), vm2 = _mm512_set1_ps(-2.f),
               zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f), vpx = _mm512_set1_ps(c.px),
               vk = _mm512_set1_ps(c.k), vm2k = _mm512_set1_ps(-2.f * c.k), vipx = _mm512_set1_ps(c.ipx),
               two = _mm512_set1_ps(2.f), tiny = _mm512_set1_ps(std::numeric_limits<float>::min()),
               vik = _mm512_set1_ps(c.ik), half = _mm512_set1_ps(0.5f), zlim = _mm512_set1_ps(1e-3f);
  // KPOS (see BwdRow): 2k, k^2 |x|^2, k |x|^2, 1 - k |x|^2
  const __m512 v2k = _mm512_set1_ps(2.f * c.k), vkkx2 = _mm512_set1_ps(c.k * c.x2 * c.k),
               vkx2 = _mm512_set1_ps(c.k * c.x2), vqy0 = _mm512_set1_ps(1.f - c.k * c.x2);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd(), dk0 = _mm512_setzero_pd(),
          dk1 = _mm512_setzero_pd();
  alignas(64) float tmp[16];
  auto step = [&](int64_t j, __mmask16 tm) {
    const __m512 g = _mm512_maskz_loadu_ps(tm, gr + j), vy2 = _mm512_maskz_loadu_ps(tm, y2f + j);
    const __m512 sum = _mm512_add_ps(vx2, vy2);
    const __m512 gv = _mm512_maskz_loadu_ps(tm, G + j);  // <x_i, y_j>
    __m512 a = _mm512_fmadd_ps(vm2, gv, sum);
    const __mmask16 close = _mm512_mask_cmp_ps_mask(tm, a, _mm512_mul_ps(vtau, sum), _CMP_LT_OQ);
    a = _mm512_max_ps(zero, a);  // NaN stays NaN
    if (close) {  // rare: those pairs' A exactly from the rows
      _mm512_store_ps(tmp, a);
      for (unsigned l = 0; l < 16; ++l)
        if (close >> l & 1u) tmp[l] = float(exact_sq(xi, y + (j + l) * D, D));
      a = _mm512_load_ps(tmp);
    }
    const __mmask16 valid = _mm512_mask_cmp_ps_mask(tm, a, zero, _CMP_GT_OQ);
    const __m512 as = _mm512_mask_mov_ps(one, valid, a);
    const __m512 vpy = _mm512_mask_loadu_ps(one, tm, py + j), vipy = _mm512_maskz_loadu_ps(tm, ipy + j);
    const __m512 den = KPOS ? _mm512_max_ps(_mm512_fmadd_ps(v2k, gv, _mm512_fmadd_ps(vkkx2, vy2, one)), tiny)
                            : _mm512_max_ps(_mm512_fnmadd_ps(vk, as, _mm512_mul_ps(vpx, vpy)), tiny);
    const __m512 r = _mm512_div_ps(one, _mm512_sqrt_ps(_mm512_mul_ps(as, den)));
    const __m512 sv = _mm512_mul_ps(as, r);
    const __m512 gsv = _mm512_mul_ps(_mm512_mul_ps(vm2k, g), sv);
    const __m512 w = _mm512_maskz_mul_ps(valid & ~close, _mm512_mul_ps(two, g), r);
    const __m512 ax = _mm512_maskz_mul_ps(valid, gsv, vipx);
    const __m512 ay = _mm512_maskz_mul_ps(valid, gsv, vipy);
    _mm512_mask_storeu_ps(G + j, tm, w);
    __m512 wa = _mm512_add_ps(w, ax), way = _mm512_add_ps(w, ay);
    if constexpr (KPOS) {  // the far rows' / columns' shares W q_x / p_x, W q_y / p_y (BwdRow)
      const __mmask16 live = valid & ~close;
      const __m512 kg1 = _mm512_fmadd_ps(v2k, gv, one);
      const __mmask16 xf = c.xfar ? _mm512_mask_cmp_ps_mask(live, vy2, vx2, _CMP_LT_OQ) : __mmask16(0);
      const __mmask16 yf = _mm512_mask_cmp_ps_mask(live, vy2, vx2, _CMP_GT_OQ) &
                           _mm512_cmp_ps_mask(_mm512_mul_ps(vk, vy2), one, _CMP_GT_OQ);
      wa = _mm512_mask_mov_ps(wa, xf, _mm512_mul_ps(_mm512_mul_ps(w, _mm512_fnmadd_ps(vk, vy2, kg1)), vipx));
      way = _mm512_mask_mov_ps(way, yf, _mm512_mul_ps(_mm512_mul_ps(w, _mm512_fmadd_ps(v2k, gv, vqy0)), vipy));
    }
    acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(wa)));
    acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(wa), 1))));
    _mm512_mask_storeu_ps(col + j, tm, _mm512_add_ps(_mm512_maskz_loadu_ps(tm, col + j), way));
    if constexpr (WANT_K) {
      const __m512 s2 = _mm512_mul_ps(sv, sv);
      const __m512 z = _mm512_mul_ps(vk, s2);
      const __m512 iP = _mm512_mul_ps(vipx, vipy);
      // E_series(z) = 2 (-1/3 + z (2/5 + z (-3/7 + z (4/9 + z (-5/11 + z 6/13)))))
      __m512 es = _mm512_fmadd_ps(z, _mm512_set1_ps(6.0f / 13), _mm512_set1_ps(-5.0f / 11));
      es = _mm512_fmadd_ps(z, es, _mm512_set1_ps(4.0f / 9));
      es = _mm512_fmadd_ps(z, es, _mm512_set1_ps(-3.0f / 7));
      es = _mm512_fmadd_ps(z, es, _mm512_set1_ps(2.0f / 5));
      es = _mm512_fmadd_ps(z, es, _mm512_set1_ps(-1.0f / 3));
      const __m512 e_ser = _mm512_mul_ps(_mm512_mul_ps(s2, sv), _mm512_mul_ps(two, es));
      const __m512 dvec = _mm512_maskz_loadu_ps(tm, dr + j);
      // s^3 E(z) = (s den / (p_x p_y) - d/2) / k   (d/(2s) = atanc(z))
      const __m512 e_cl = _mm512_mul_ps(_mm512_fmsub_ps(_mm512_mul_ps(sv, den), iP, _mm512_mul_ps(half, dvec)), vik);
      const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(z), zlim, _CMP_LT_OQ);
      const __m512 e = _mm512_mask_mov_ps(e_cl, small, e_ser);
      // A - x2 p_y - y2 p_x (KPOS: -2 (G + k x2 y2), BwdRow)
      const __m512 lin = KPOS ? _mm512_mul_ps(vm2, _mm512_fmadd_ps(vkx2, vy2, gv))
                              : _mm512_fnmadd_ps(vy2, vpx, _mm512_fnmadd_ps(vx2, vpy, a));
      const __m512 dkk = _mm512_fmadd_ps(_mm512_mul_ps(sv, iP), lin, e);
      const __m512 gd = _mm512_maskz_mul_ps(valid, g, dkk);
      dk0 = _mm512_add_pd(dk0, _mm512_cvtps_pd(_mm512_castps512_ps256(gd)));
      dk1 = _mm512_add_pd(dk1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(gd), 1))));
    }
    if (close) {  // W of the close pairs, added exactly after the GEMMs (g = 0 adds nothing)
      _mm512_store_ps(tmp, _mm512_mul_ps(_mm512_mul_ps(two, g), r));
      const __mmask16 cv = close & valid;
      for (unsigned l = 0; l < 16; ++l)
        if ((cv >> l & 1u) && gr[j + l] != 0.f) on_close(j + l, tmp[l]);
    }
  };
  int64_t j = 0;
  for (; j + 16 <= M; j += 16) step(j, __mmask16(0xFFFF));
  if (j < M) step(j, __mmask16((1u << (M - j)) - 1));
  if constexpr (WANT_K) dk += _mm512_reduce_add_pd(_mm512_add_pd(dk0, dk1));
  return _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}
#endif

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_impl(const at::Tensor& g_in, const at::Tensor& x,
                                                        const at::Tensor& y, const at::Tensor& k,
                                                        const at::Tensor& A, const at::Tensor& dist,
                                                        int64_t mask) {
  const Shapes s = check_inputs(x, y, k);
  const at::Tensor g = g_in.contiguous();
  const bool want_x = mask & 1, want_y = mask & 2, want_k = mask & 4;
  at::Tensor dk = want_k ? at::zeros({s.B}, k.options()) : x.new_empty({0});
  if (s.N == 0 || s.M == 0 || s.D == 0) {
    return {want_x ? at::zeros_like(x) : x.new_empty({0}), want_y ? at::zeros_like(y) : x.new_empty({0}), dk};
  }
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  // A saved by the forward, or (A empty) recomputed per block of rows: the block's GEMM and fill_A_row (close
  // pairs exact), while the block is in cache
  TORCH_CHECK(A.numel() == 0 || (A.dim() == 3 && A.size(0) == s.B && A.size(1) == s.N && A.size(2) == s.M),
              "cdist_bwd: A must be [B, N, M] or empty");
  // (a saved A is not used where some k > 0: those rows' coefficients need G = <x, y> itself, BwdRow)
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const bool any_kpos = std::any_of(kp, kp + s.B, [](double v) { return v > 0; });
  const bool recompute = A.numel() == 0 || any_kpos;
  const T* Ap = recompute ? nullptr : A.data_ptr<T>();
  const T* dp = want_k ? dist.data_ptr<T>() : nullptr;
  std::vector<double> x2(s.B * s.N), y2(s.B * s.M);
  row_sqnorms(xp, s.B * s.N, s.D, x2.data());
  row_sqnorms(yp, s.B * s.M, s.D, y2.data());
  const double tau = close_tau<T>(s.D);
  const T tauT = T(tau);
  // per column: clamped p_y, 1/p_y, |y|^2
  std::vector<T> pyc(s.B * s.M), ipy(s.B * s.M), y2f(s.B * s.M);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t j = 0; j < s.M; ++j) {
      const int64_t q = b * s.M + j;
      const T p = T(1.0 + kp[b] * y2[q]);
      pyc[q] = kp[b] < 0 ? std::max(p, min_p<T>()) : p;
      ipy[q] = T(1) / pyc[q];
      y2f[q] = T(y2[q]);
    }
  // dx = alpha x - W y and dy = beta y - W^T x, W formed per block of rows (never [N, M]) in one parallel region
  // over (batch, block): the block's W, then its two GEMMs while it is in cache.  dy accumulates W^T x per chunk
  // and is added to the shared [B, M, D] (negated at the end) per batch, like beta and dk.
  at::Tensor dx = want_x ? at::empty_like(x) : x.new_empty({0});
  // the groups' dy^T partials [D, M] are summed in that layout (contiguous adds), transposed once at the end
  at::Tensor dyacc = want_y ? at::zeros({s.B, s.D, s.M}, y.options()) : x.new_empty({0});
  std::vector<double> beta(s.B * s.M, 0.0), dkb(s.B, 0.0);
  struct Close {
    int64_t i, j;
    T w;
  };
  const int64_t RB = block_rows(s.N, s.M);
  const int64_t nblk = (s.N + RB - 1) / RB;
  // float: y packed once per batch for the two GEMMs that reuse it in every block (A = x_blk y^T, dx = W_blk y);
  // dy's GEMM (W_blk^T x_blk) shares no operand across blocks
  constexpr bool is_f32 = std::is_same<T, float>::value;
  std::vector<mkl_packed::PackedB> yT_packed, y_packed;
  if constexpr (is_f32) {
    const mkl_packed::SgemmApi* api = mkl_packed::packed_sgemm_for(RB, s.M, s.D);
    if (recompute) yT_packed = pack_y(api, yp, s.B, s.M, s.D, RB, true);
    if (want_x) y_packed = pack_y(api, yp, s.B, s.M, s.D, RB, false);
  }
  // The (batch, block) tasks are cut into a fixed number of groups (not one per thread): each group keeps its
  // partial beta / dk / dy per batch, summed in group order after the region, so the bits do not depend on the
  // number of threads (they did when each thread's share was added under a lock in completion order).
  const int64_t ntask = s.B * nblk, ngroups = std::min<int64_t>(ntask, kDetGroups);
  const int64_t per_group = ngroups > 0 ? (ntask + ngroups - 1) / ngroups : 0;
  struct Part {
    int64_t b;
    std::vector<double> beta;
    double dk;
    at::Tensor dy;
  };
  std::vector<std::vector<Part>> parts(ngroups);
#if defined(CPU_CAPABILITY_AVX512)
  // float on AVX-512: the fused pass (bwd_row_f32_v2) writes W over the block's GEMM output; GEOOPS_CDIST_F32_EPI=v1
  // keeps fill_A_row + bwd_row (the other builds' path) for the tests
  const bool fused = is_f32 && recompute && use_epi_v2();
#else
  constexpr bool fused = false;
#endif
  std::atomic<int64_t> next{0};  // groups handed out one at a time (task_workers)
  at::parallel_for(0, task_workers(ngroups), 1, [&](int64_t, int64_t) {
    const OneMklThread one_mkl_thread;
    at::Tensor Ablk = recompute ? at::empty({RB, s.M}, x.options()) : x.new_empty({0});
    at::Tensor Wt = fused ? Ablk : at::empty({RB, s.M}, x.options());
    T* Wp = Wt.data_ptr<T>();
    at::Tensor dyl;
    std::vector<T> colf(s.M), grow(any_kpos && !fused ? s.M : 0);  // (grow: a k > 0 row's G, before fill_A_row)
    std::vector<double> cold(s.M, 0.0), alpha(RB);
    std::vector<Close> closes;
    double dk_acc = 0.0;
    int64_t cur_b = -1, grp = -1;
    auto flush = [&]() {  // this group's share of batch cur_b, kept for the ordered sum
      if (cur_b < 0) return;
      parts[grp].push_back({cur_b, cold, dk_acc, dyl});
    };
    for (int64_t G; (G = next.fetch_add(1, std::memory_order_relaxed)) < ngroups;)
    for (int64_t c = G * per_group; c < std::min(ntask, (G + 1) * per_group); ++c) {
      const int64_t b = c / nblk, i0 = (c % nblk) * RB, nr = std::min(s.N, i0 + RB) - i0;
      if (b != cur_b || c / per_group != grp) {
        flush();
        cur_b = b;
        grp = c / per_group;
        std::fill(cold.begin(), cold.end(), 0.0);
        dk_acc = 0.0;
        dyl = want_y ? at::zeros({s.D, s.M}, x.options()) : x.new_empty({0});  // dy^T: [D, M]
      }
      const double kv = kp[b];
      const T* pyb = pyc.data() + b * s.M;
      const T* ipyb = ipy.data() + b * s.M;
      const T* y2b = y2f.data() + b * s.M;
      std::fill(colf.begin(), colf.end(), T(0));
      closes.clear();
      if (recompute) {
        at::Tensor Gv = Ablk.narrow(0, 0, nr);
        block_gemm(yT_packed, b, Gv, x.select(0, b).narrow(0, i0, nr), y.select(0, b).t());
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = i0 + r, off = (b * s.N + i) * s.M;
        const double x2i = x2[b * s.N + i];
        T* Ar = recompute ? Ablk.data_ptr<T>() + r * s.M : nullptr;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (is_f32) {
          if (fused) {
            BwdRow<float> cr;
            cr.k = float(kv);
            cr.ik = kv != 0 ? float(1.0 / kv) : 0.f;
            cr.px = std::max(float(1.0 + kv * x2i), kv < 0 ? min_p<float>() : -1e30f);
            cr.ipx = 1.f / cr.px;
            cr.x2 = float(x2i);
            cr.tau = tauT;
            cr.xfar = kv > 0 && kv * x2i > 1.0;
            auto on_close = [&](int64_t j, float w) { closes.push_back({i, j, w}); };
            const float* xi = xp + (b * s.N + i) * s.D;
            const float* yb0 = yp + b * s.M * s.D;
            const float* dpo = want_k ? dp + off : nullptr;
            alpha[r] = with_flags(want_k, kv > 0, [&](auto wk, auto kpos) {
              return bwd_row_f32_v2<wk(), kpos()>(Ar, gp + off, dpo, colf.data(), xi, yb0, s.M, s.D, cr, pyb, ipyb,
                                                  y2b, dk_acc, on_close);
            });
            continue;
          }
        }
#endif
        if (kv > 0) std::copy(Ar, Ar + s.M, grow.begin());  // (recompute: any_kpos)
        if (recompute)
          fill_A_row<T>(Ar, xp + (b * s.N + i) * s.D, yp + b * s.M * s.D, x2i, y2.data() + b * s.M, y2b, s.M, s.D,
                        tau);
        const T* ar = recompute ? Ar : Ap + off;
        BwdRow<T> cr;
        cr.k = T(kv);
        cr.ik = kv != 0 ? T(1.0 / kv) : T(0);
        cr.px = std::max(T(1.0 + kv * x2i), kv < 0 ? min_p<T>() : T(-1e30));
        cr.ipx = T(1) / cr.px;
        cr.x2 = T(x2i);
        cr.tau = tauT;
        cr.xfar = kv > 0 && kv * x2i > 1.0;
        int64_t nclose = 0;
        T* wr = Wp + r * s.M;
        const T* dpo = want_k ? dp + off : nullptr;
        alpha[r] = with_flags(want_k, kv > 0, [&](auto wk, auto kpos) {  // the sums' G row only where k > 0
          return bwd_row<T, wk(), kpos()>(gp + off, ar, kpos() ? grow.data() : nullptr, dpo, wr, colf.data(), s.M, cr,
                                          pyb, ipyb, y2b, dk_acc, nclose);
        });
        if (nclose) {  // close pairs (rare): W_ij (x_i - y_j) added exactly after the GEMMs
          for (int64_t j = 0; j < s.M; ++j) {
            const T a = ar[j];
            if (!(a > T(0)) || !(a < cr.tau * (cr.x2 + y2b[j])) || gp[off + j] == T(0)) continue;
            const T den = std::max(cr.px * pyb[j] - cr.k * a, std::numeric_limits<T>::min());
            closes.push_back({i, j, T(2) * gp[off + j] / std::sqrt(a * den)});
          }
        }
      }
      for (int64_t j = 0; j < s.M; ++j) cold[j] += double(colf[j]);
      const at::Tensor Wv = Wt.narrow(0, 0, nr);
      const at::Tensor xb = x.select(0, b), yb = y.select(0, b);
      if (want_x) {
        at::Tensor dxv = dx.select(0, b).narrow(0, i0, nr);
        block_gemm(y_packed, b, dxv, Wv, yb);
        T* o = dxv.data_ptr<T>();
        const T* xr = xp + (b * s.N + i0) * s.D;
        for (int64_t r = 0; r < nr; ++r) {
          const T al = T(alpha[r]);
#pragma omp simd
          for (int64_t d = 0; d < s.D; ++d) o[r * s.D + d] = al * xr[r * s.D + d] - o[r * s.D + d];
        }
        for (const Close& cl : closes) {
          const T* xi = xp + (b * s.N + cl.i) * s.D;
          const T* yj = yp + (b * s.M + cl.j) * s.D;
          T* od = o + (cl.i - i0) * s.D;
          for (int64_t d = 0; d < s.D; ++d) od[d] += T(double(cl.w) * (double(xi[d]) - double(yj[d])));
        }
      }
      if (want_y) {
        // dy^T [D, M] += x_blk^T W_blk: MKL packs the small x_blk^T as A and streams W's rows as B (measured on the
        // AMD EPYC, 1 thread, 32 blocks of 64 rows: ~7.0 ms against ~9.2 ms for dy [M, D] += W_blk^T x_blk)
        dyl.addmm_(xb.narrow(0, i0, nr).t(), Wv);
        T* o = dyl.data_ptr<T>();
        for (const Close& cl : closes) {
          const T* xi = xp + (b * s.N + cl.i) * s.D;
          const T* yj = yp + (b * s.M + cl.j) * s.D;
          for (int64_t d = 0; d < s.D; ++d) o[d * s.M + cl.j] += T(double(cl.w) * (double(xi[d]) - double(yj[d])));
        }
      }
    }
    flush();
  });
  for (const auto& pg : parts)  // fixed order: group by group
    for (const Part& pt : pg) {
      for (int64_t j = 0; j < s.M; ++j) beta[pt.b * s.M + j] += pt.beta[j];
      dkb[pt.b] += pt.dk;
      if (want_y) dyacc.select(0, pt.b).add_(pt.dy);
    }

  at::Tensor dy = x.new_empty({0});
  if (want_y) {
    auto beta_t = at::from_blob(beta.data(), {s.B, s.M, 1}, at::kDouble).to(x.scalar_type());
    dy = at::addcmul(dyacc.transpose(1, 2).neg(), beta_t, y).contiguous();
  }
  if (want_k) dk.copy_(at::from_blob(dkb.data(), {s.B}, at::kDouble).to(k.scalar_type()));
  return {dx, dy, dk};
}

// Rank keys of one row in place from A: A/(p_x p_y) (k < 0), A/max(p_x p_y - kA, 0) (k > 0; the antipode
// gives +inf, the largest distance), A (k = 0).  py holds the (clamped) p_y of the row's columns.
template <typename T>
inline void key_row(T* a, T px, const T* py, int64_t M, double kv) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  if (kv == 0) return;
  const T kT = T(kv);
  const Vec vpx(px), vk(kT), zero(T(0));
  int64_t j = 0;
  if (kv < 0) {
    for (; j + L <= M; j += L) (Vec::loadu(a + j) / (vpx * Vec::loadu(py + j))).store(a + j);
    for (; j < M; ++j) a[j] = a[j] / (px * py[j]);
  } else {
    for (; j + L <= M; j += L) {
      const Vec av = Vec::loadu(a + j);
      const Vec den = at::vec::maximum(vpx * Vec::loadu(py + j) - vk * av, zero);
      (av / den).store(a + j);
    }
    for (; j < M; ++j) a[j] = a[j] / std::max(px * py[j] - kT * a[j], T(0));
  }
}

template <typename T>
at::Tensor key_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  const Shapes s = check_inputs(x, y, k);
  at::Tensor G = at::bmm(x, y.transpose(1, 2));
  if (s.N == 0 || s.M == 0) return G;
  std::vector<double> x2, y2;
  compute_A<T>(x, y, G, s, x2, y2);
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  T* Ap = G.data_ptr<T>();
  std::vector<T> py(s.M);
  for (int64_t b = 0; b < s.B; ++b) {
    const double kv = kp[b];
    if (kv == 0) continue;
    for (int64_t j = 0; j < s.M; ++j) {
      const T p = T(1.0 + kv * y2[b * s.M + j]);
      py[j] = kv < 0 ? std::max(p, min_p<T>()) : p;
    }
    at::parallel_for(0, s.N, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T px = T(1.0 + kv * x2[b * s.N + i]);
        if (kv < 0) px = std::max(px, min_p<T>());
        key_row<T>(Ap + (b * s.N + i) * s.M, px, py.data(), s.M, kv);
      }
    });
  }
  return G;
}

template <typename T>
at::Tensor from_key_impl(const at::Tensor& key_in, const at::Tensor& k) {
  const at::Tensor key = key_in.contiguous();
  at::Tensor out = at::empty_like(key);
  const int64_t B = key.size(0), R = key.numel() / std::max<int64_t>(B, 1);
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const T* kk = key.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    const double kv = kp[b];
    at::parallel_for(0, R, 4096, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double v = double(kk[b * R + r]);
        double d;
        if (kv < 0) {
          const double c = -kv, t = 2 * c * v;
          d = std::log1p(t + std::sqrt(t * (t + 2))) / std::sqrt(c);
        } else if (kv > 0) {
          d = 2 * std::atan(std::sqrt(kv * v)) / std::sqrt(kv);
        } else {
          d = 2 * std::sqrt(v);
        }
        o[b * R + r] = T(d);
      }
    });
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cdist_fwd_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k,
                                                 bool save) {
  const at::Tensor xc = x.detach().contiguous(), yc = y.detach().contiguous();  // mm_out needs no-grad inputs
  if (xc.scalar_type() == at::kDouble) return fwd_impl<double>(xc, yc, k, save);
  return fwd_impl<float>(xc, yc, k, save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cdist_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                             const at::Tensor& y, const at::Tensor& k,
                                                             const at::Tensor& A, const at::Tensor& dist,
                                                             int64_t mask) {
  const at::Tensor xc = x.detach().contiguous(), yc = y.detach().contiguous(), Ac = A.contiguous(), dc = dist.contiguous();
  if (xc.scalar_type() == at::kDouble) return bwd_impl<double>(g, xc, yc, k, Ac, dc, mask);
  return bwd_impl<float>(g, xc, yc, k, Ac, dc, mask);
}

at::Tensor cdist_rank_key_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  if (xc.scalar_type() == at::kDouble) return key_impl<double>(xc, yc, k);
  return key_impl<float>(xc, yc, k);
}

at::Tensor dist_from_key_cpu(const at::Tensor& key, const at::Tensor& k) {
  if (key.scalar_type() == at::kDouble) return from_key_impl<double>(key, k);
  return from_key_impl<float>(key, k);
}


// ---------------------------------------------------------------- mobius_matvec / pointwise_mul epilogue
// out = v * phi,  phi = atanc(k|x|^2) tanc(k|v|^2 atanc(k|x|^2)^2)  (v = Mx or w*x), one pass per row.
// stats [R, 6] (double): |x|^2, |v|^2, a, a', b, b' for the backward.
namespace {

// One row of the epilogue: o = v phi (o may be v), stats (|x|^2, |v|^2, a, a', b, b') into sr.
template <typename scalar_t>
inline void scale_row(const scalar_t* vr, const scalar_t* xr, scalar_t* o, double* sr, double kk, int64_t Do,
                      int64_t Di) {
  double x2 = 0, v2 = 0;
#pragma omp simd reduction(+ : x2)
  for (int64_t d = 0; d < Di; ++d) x2 += double(xr[d]) * double(xr[d]);
#pragma omp simd reduction(+ : v2)
  for (int64_t d = 0; d < Do; ++d) v2 += double(vr[d]) * double(vr[d]);
  const double z1 = kk * x2, q1 = 1.0 + z1;
  const double a = stereo::atanc(z1, q1), da = stereo::atanc_d(z1, q1, a);
  const double z2 = kk * v2 * a * a;
  const double b = stereo::tanc(z2), db = stereo::tanc_d(z2, b);
  const scalar_t phi = scalar_t(a * b);
#pragma omp simd
  for (int64_t d = 0; d < Do; ++d) o[d] = vr[d] * phi;
  sr[0] = x2; sr[1] = v2; sr[2] = a; sr[3] = da; sr[4] = b; sr[5] = db;
}

template <typename scalar_t>
void scale_fwd_kernel(const at::Tensor& v, const at::Tensor& x, at::Tensor& out, double* st, const double* kp,
                      bool per_row, int64_t R, int64_t Do, int64_t Di) {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        scale_row(vp + r * Do, xp + r * Di, op + r * Do, st + r * 6, per_row ? kp[r] : kp[0], Do, Di);
    });
}

template <typename scalar_t>
void scale_bwd_kernel(const at::Tensor& g, const at::Tensor& v, const at::Tensor& x, at::Tensor& gv, at::Tensor& gx,
                      at::Tensor& gk, const double* st, const double* kp, bool per_row, bool want_v, bool want_x,
                      bool want_k, int64_t R, int64_t Do, int64_t Di) {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gvp = want_v ? gv.data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = want_x ? gx.data_ptr<scalar_t>() : nullptr;
    double* gkp = want_k ? gk.data_ptr<double>() : nullptr;
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const MatvecRowGrad rg = row_grad_gv<false>(gp + r * Do, vp + r * Do, Do, st + r * 6,
                                                    per_row ? kp[r] : kp[0], want_v ? gvp + r * Do : nullptr);
        if (want_x) {
          const scalar_t c = scalar_t(rg.cx);
          const scalar_t* xr = xp + r * Di;
          scalar_t* o = gxp + r * Di;
#pragma omp simd
          for (int64_t d = 0; d < Di; ++d) o[d] = xr[d] * c;
        }
        if (want_k) gkp[r] = rg.gk;
      }
    });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mobius_scale_fwd_cpu(const at::Tensor& v_in, const at::Tensor& x_in,
                                                        const at::Tensor& k) {
  const at::Tensor v = v_in.contiguous(), x = x_in.contiguous();
  TORCH_CHECK(v.dim() == 2 && x.dim() == 2 && v.size(0) == x.size(0), "mobius_scale: v [R, Do], x [R, Di]");
  const int64_t R = v.size(0), Do = v.size(1), Di = x.size(1);
  at::Tensor out = at::empty_like(v);
  at::Tensor stats = at::empty({R, 6}, v.options().dtype(at::kDouble));
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const bool per_row = kd.numel() == R && R != 1;
  double* st = stats.data_ptr<double>();
  if (v.scalar_type() == at::kDouble) scale_fwd_kernel<double>(v, x, out, st, kp, per_row, R, Do, Di);
  else scale_fwd_kernel<float>(v, x, out, st, kp, per_row, R, Do, Di);
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_scale_bwd_cpu(const at::Tensor& g_in, const at::Tensor& v_in,
                                                                    const at::Tensor& x_in, const at::Tensor& k,
                                                                    const at::Tensor& stats_in, int64_t mask) {
  const at::Tensor g = g_in.contiguous(), v = v_in.contiguous(), x = x_in.contiguous(), stats = stats_in.contiguous();
  const int64_t R = v.size(0), Do = v.size(1), Di = x.size(1);
  const bool want_v = mask & 1, want_x = mask & 2, want_k = mask & 4;
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const bool per_row = kd.numel() == R && R != 1;
  at::Tensor gv = want_v ? at::empty_like(v) : v.new_empty({0});
  at::Tensor gx = want_x ? at::empty_like(x) : v.new_empty({0});
  at::Tensor gk = want_k ? at::empty({R}, v.options().dtype(at::kDouble)) : v.new_empty({0});
  const double* st = stats.data_ptr<double>();
  if (v.scalar_type() == at::kDouble)
    scale_bwd_kernel<double>(g, v, x, gv, gx, gk, st, kp, per_row, want_v, want_x, want_k, R, Do, Di);
  else
    scale_bwd_kernel<float>(g, v, x, gv, gx, gk, st, kp, per_row, want_v, want_x, want_k, R, Do, Di);
  return {gv, gx, gk};
}


// ---------------------------------------------------------------- mobius_matvec, fused: blocked GEMM + epilogue
// x [R, Di], m [Do, Di], k [1] or [R].  Forward: per block of rows (one parallel region), the block's GEMM
// x_b m^T (single-threaded, into the output's rows) and the epilogue out = v phi on the block while it is in
// cache (v = Mx is never stored: the backward takes it as out / phi, phi = a b > 0 from the stats).  Backward:
// per block, gv = g phi + v c1 (s = <g, v> = <g, out>/phi), then dx_b = gv_b m + c_x x_b (GEMM into dx's rows)
// and dm += gv_b^T x_b (per chunk, summed at the end): the gradient of v never exists as an [R, Do] tensor.
namespace {

inline int64_t mv_block_rows(int64_t R, int64_t Do) {
  return std::max<int64_t>(1, std::min<int64_t>(R, std::max<int64_t>(16, (int64_t(1) << 15) / std::max<int64_t>(Do, 1))));
}

template <typename scalar_t>
void mv_fwd_kernel(const at::Tensor& x, const at::Tensor& m, at::Tensor& out, double* st, const double* kp,
                   bool per_row) {
  const int64_t R = x.size(0), Di = x.size(1), Do = m.size(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t RB = mv_block_rows(R, Do), nblk = (R + RB - 1) / RB;
  const at::Tensor mt = m.t();
  // float: m packed once as the B operand of every block's x_b m^T (MKL's packed SGEMM when found, as in cdist)
  std::vector<mkl_packed::PackedB> mpk;
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (Di > 0 && Do > 0) mpk = pack_y(mkl_packed::packed_sgemm_for(RB, Do, Di), m.data_ptr<float>(), 1, Do, Di, RB, true);
  }
  at::parallel_for(0, nblk, 1, [&](int64_t c0, int64_t c1) {
    const OneMklThread one_mkl_thread;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * RB, nr = std::min(R, r0 + RB) - r0;
      at::Tensor ov = out.narrow(0, r0, nr);
      block_gemm(mpk, 0, ov, x.narrow(0, r0, nr), mt);
      for (int64_t r = r0; r < r0 + nr; ++r)  // in place: the block is still in cache
        scale_row(op + r * Do, xp + r * Di, op + r * Do, st + r * 6, per_row ? kp[r] : kp[0], Do, Di);
    }
  });
}

template <typename scalar_t>
void mv_bwd_kernel(const at::Tensor& g, const at::Tensor& x, const at::Tensor& m, const at::Tensor& out,
                   at::Tensor& dx, at::Tensor& dm, double* gkp, const double* st, const double* kp, bool per_row,
                   bool want_x, bool want_m) {
  const int64_t R = x.size(0), Di = x.size(1), Do = m.size(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  const scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t RB = mv_block_rows(R, Do), nblk = (R + RB - 1) / RB;
  // dm: one partial per group of blocks (a fixed number of groups, not one per thread), summed in group order
  // after the region: the same bits for any number of threads
  const int64_t ngroups = std::min<int64_t>(nblk, kDetGroups);
  const int64_t per_group = ngroups ? (nblk + ngroups - 1) / ngroups : 0;
  std::vector<at::Tensor> dm_parts(ngroups);
  std::vector<mkl_packed::PackedB> mpk;  // float: m packed once as the B operand of every block's dx_b = gv_b m
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (want_x && Di > 0 && Do > 0) mpk = pack_y(mkl_packed::packed_sgemm_for(RB, Do, Di), m.data_ptr<float>(), 1, Do, Di, RB, false);
  }
  at::parallel_for(0, ngroups, 1, [&](int64_t g0, int64_t g1) {
    const OneMklThread one_mkl_thread;
    at::Tensor GV = at::empty({RB, Do}, x.options());
    scalar_t* gvp = GV.data_ptr<scalar_t>();
    at::Tensor dml;
    std::vector<scalar_t> cx(RB);
    for (int64_t c = g0 * per_group; c < std::min(nblk, g1 * per_group); ++c) {
      const int64_t r0 = c * RB, nr = std::min(R, r0 + RB) - r0;
      if (want_m && c % per_group == 0) dml = dm_parts[c / per_group] = at::zeros({Do, Di}, x.options());
      matvec_rows_gv(gp, op, st, kp, per_row, r0, nr, Do, gvp, cx.data(), gkp);
      const at::Tensor gvv = GV.narrow(0, 0, nr), xb = x.narrow(0, r0, nr);
      if (want_x) {
        at::Tensor dxv = dx.narrow(0, r0, nr);
        block_gemm(mpk, 0, dxv, gvv, m);
        scalar_t* o = dxv.data_ptr<scalar_t>();
        for (int64_t r = 0; r < nr; ++r) {
          const scalar_t cr = cx[r];
          const scalar_t* xr = xp + (r0 + r) * Di;
#pragma omp simd
          for (int64_t d = 0; d < Di; ++d) o[r * Di + d] += cr * xr[d];
        }
      }
      if (want_m) dml.addmm_(gvv.t(), xb);
    }
  });
  if (want_m)
    for (const at::Tensor& part : dm_parts)
      if (part.defined()) dm.add_(part);  // groups past the last block hold none
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mobius_matvec_fwd_cpu(const at::Tensor& x_in, const at::Tensor& m_in,
                                                         const at::Tensor& k) {
  const at::Tensor x = x_in.detach().contiguous(), m = m_in.detach().contiguous();
  TORCH_CHECK(x.dim() == 2 && m.dim() == 2 && m.size(1) == x.size(1), "mobius_matvec: x [R, Di], m [Do, Di]");
  TORCH_CHECK(x.scalar_type() == m.scalar_type(), "mobius_matvec: x and m must have one dtype");
  const int64_t R = x.size(0), Do = m.size(0);
  at::Tensor out = at::empty({R, Do}, x.options());
  at::Tensor stats = at::empty({R, 6}, x.options().dtype(at::kDouble));
  if (R == 0) return {out, stats};
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const bool per_row = kd.numel() == R && R != 1;
  if (x.scalar_type() == at::kDouble)
    mv_fwd_kernel<double>(x, m, out, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row);
  else
    mv_fwd_kernel<float>(x, m, out, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row);
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_matvec_bwd_cpu(const at::Tensor& g_in, const at::Tensor& x_in,
                                                                     const at::Tensor& m_in, const at::Tensor& k,
                                                                     const at::Tensor& out_in,
                                                                     const at::Tensor& stats_in, int64_t mask) {
  const at::Tensor g = g_in.contiguous(), x = x_in.detach().contiguous(), m = m_in.detach().contiguous(),
                   out = out_in.contiguous(),
                   stats = stats_in.contiguous();
  const int64_t R = x.size(0);
  const bool want_x = mask & 1, want_m = mask & 2, want_k = mask & 4;
  at::Tensor dx = want_x ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dm = want_m ? at::zeros_like(m) : x.new_empty({0});
  at::Tensor gk = want_k ? at::zeros({R}, x.options().dtype(at::kDouble)) : x.new_empty({0});
  if (R == 0 || !(want_x || want_m || want_k)) return {dx, dm, gk};
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const bool per_row = kd.numel() == R && R != 1;
  double* gkp = want_k ? gk.data_ptr<double>() : nullptr;
  if (x.scalar_type() == at::kDouble)
    mv_bwd_kernel<double>(g, x, m, out, dx, dm, gkp, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row,
                          want_x, want_m);
  else
    mv_bwd_kernel<float>(g, x, m, out, dx, dm, gkp, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row,
                         want_x, want_m);
  return {dx, dm, gk};
}


// ---------------------------------------------------------------- knn: rank keys + per-row top n, fused
// For each row of x [N, D] the n points of y [M, D] with the smallest (largest) rank key (see
// cdist_rank_key_cpu), scanning y in tiles of `tile` columns: one GEMM per (row block, tile), then the keys
// and a per-row sorted buffer of n (a candidate enters only if it beats the current n-th).  Memory
// O(rows_per_block * tile + N n).  k is a scalar (double).  Returns (keys [N, n], indices [N, n] int64),
// sorted best first.
template <typename T>
std::tuple<at::Tensor, at::Tensor> knn_impl(const at::Tensor& x, const at::Tensor& y, double kv, int64_t n,
                                            bool largest, int64_t tile) {
  const int64_t N = x.size(0), M = y.size(0), D = x.size(1);
  at::Tensor keys = at::empty({N, n}, x.options());
  at::Tensor idx = at::empty({N, n}, x.options().dtype(at::kLong));
  if (N == 0 || n == 0) return {keys, idx};
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  std::vector<double> y2(M);
  for (int64_t j = 0; j < M; ++j) {
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += double(yp[j * D + d]) * double(yp[j * D + d]);
    y2[j] = acc;
  }
  const double tau = close_tau<T>(D);
  const T pmin = kv < 0 ? min_p<T>() : T(-1e30);
  std::vector<T> py(M);
  for (int64_t j = 0; j < M; ++j) py[j] = std::max(T(1.0 + kv * y2[j]), pmin);
  T* kp = keys.data_ptr<T>();
  int64_t* ip = idx.data_ptr<int64_t>();
  const T worst_init = largest ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < N * n; ++i) { kp[i] = worst_init; ip[i] = -1; }
  const int64_t RB = 256;  // rows per block
  const int64_t nblocks = (N + RB - 1) / RB;
  const T kT = T(kv);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    const OneMklThread one_mkl_thread;
    std::vector<T> G;
    std::vector<double> x2(RB);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * RB, i1 = std::min(N, i0 + RB), nr = i1 - i0;
      for (int64_t r = 0; r < nr; ++r) {
        double acc = 0;
        const T* xi = xp + (i0 + r) * D;
        for (int64_t d = 0; d < D; ++d) acc += double(xi[d]) * double(xi[d]);
        x2[r] = acc;
      }
      for (int64_t j0 = 0; j0 < M; j0 += tile) {
        const int64_t j1 = std::min(M, j0 + tile), nc = j1 - j0;
        // single-threaded GEMM of this block (we are inside a parallel region)
        at::Tensor Gt = at::mm(x.narrow(0, i0, nr), y.narrow(0, j0, nc).t());
        const T* Gp = Gt.data_ptr<T>();
        for (int64_t r = 0; r < nr; ++r) {
          const T* xi = xp + (i0 + r) * D;
          const T px = std::max(T(1.0 + kv * x2[r]), pmin);
          T* bk = kp + (i0 + r) * n;
          int64_t* bi = ip + (i0 + r) * n;
          for (int64_t c = 0; c < nc; ++c) {
            const int64_t j = j0 + c;
            const double sum = x2[r] + y2[j];
            double a = sum - 2.0 * double(Gp[r * nc + c]);
            if (a < tau * sum) a = exact_sq(xi, yp + j * D, D);
            if (a < 0) a = 0;
            T key;
            if (kv < 0) key = T(a) / (px * py[j]);
            else if (kv > 0) key = T(a) / std::max(px * py[j] - kT * T(a), T(0));
            else key = T(a);
            // key ranks before slot p: the slot is empty, or key is strictly better; a NaN key (NaN input)
            // ranks as torch.topk ranks NaN (above every number), so every slot gets an index of y
            auto before = [&](int64_t p) {
              const T b = bk[p];
              if (bi[p] < 0) return true;
              return largest ? (key > b || (key != key && b == b)) : (key < b || (b != b && key == key));
            };
            if (!before(n - 1)) continue;
            int64_t p = n - 1;  // insertion into the sorted buffer (ties keep the earlier index first)
            while (p > 0 && before(p - 1)) {
              bk[p] = bk[p - 1];
              bi[p] = bi[p - 1];
              --p;
            }
            bk[p] = key;
            bi[p] = j;
          }
        }
      }
    }
  });
  return {keys, idx};
}

// ---------------------------------------------------------------- pairwise_rank: counts below each pair's key
// For pairs grouped by query (uq [U] the query rows of x, off [U+1] offsets into tgt [P]), counts the points
// of y whose rank key (see cdist_rank_key_cpu) against x[uq[u]] is strictly below that of y[tgt[p]].  One
// parallel region over blocks of query rows; per block one GEMM against all of y (the block has at most
// max(1, block_elems / M) rows, so the buffer is ~block_elems keys per thread), the keys in place, then each
// pair's threshold is read from the same buffer (so the target itself is never counted and rounding is
// consistent) and counted: directly (vectorised) for up to 16 targets per query, else by binary search of
// each key among the sorted thresholds and a prefix sum.  Returns (counts [P] int64, keys [P]).
// Ties: the GEMM may round one pair's dot product differently in another column, so a key within the GEMM's
// error band of the threshold (|a - th| <= band, from close_tau's bound on A) is decided again from the rows by
// exact_key (double, the same arithmetic for the candidate and the target wherever they sit in the tile): an
// exact duplicate of the target, or a point at its distance to ~1e-14 relative, is never counted as closer.

// The rank key of one pair from its rows in double (key_row's formula on exact_sq): position independent.
template <typename T>
inline double exact_key(const T* xi, const T* yj, int64_t D, double px, double y2, double kv, double pmin) {
  const double A = exact_sq(xi, yj, D);
  if (kv == 0) return A;
  const double py = std::max(1.0 + kv * y2, pmin);
  return kv < 0 ? A / (px * py) : A / std::max(px * py - kv * A, 0.0);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> rank_impl(const at::Tensor& x, const at::Tensor& y, double kv,
                                             const at::Tensor& uq, const at::Tensor& off, const at::Tensor& tgt,
                                             int64_t block_elems) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  const int64_t M = y.size(0), D = y.size(1), U = uq.size(0), P = tgt.size(0);
  at::Tensor counts = at::zeros({P}, x.options().dtype(at::kLong));
  at::Tensor keys = at::zeros({P}, x.options());
  if (P == 0 || M == 0 || U == 0) return {counts, keys};
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const int64_t* uqp = uq.data_ptr<int64_t>();
  const int64_t* offp = off.data_ptr<int64_t>();
  const int64_t* tp = tgt.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  T* kp = keys.data_ptr<T>();
  std::vector<double> y2(M);
  row_sqnorms(yp, M, D, y2.data());
  const T pmin = kv < 0 ? min_p<T>() : T(-1e30);
  std::vector<T> y2f(M), py(M);
  for (int64_t j = 0; j < M; ++j) {
    y2f[j] = T(y2[j]);
    py[j] = std::max(T(1.0 + kv * y2[j]), pmin);
  }
  const double tau = close_tau<T>(D);
  // The band: a GEMM key's A errs by at most (D + 4) u (|x|^2 + |y_j|^2) (close_tau), i.e. the key by
  // (D + 4) u (|x|^2 + |y_j|^2) / (p_x p_y_j) (1 + k+ key)^2 (k+ = max(k, 0): p_x p_y - k A cancels), bounded over
  // the columns by Wmax = max 1/p_y, Zmax = max |y|^2/p_y; twice that (candidate and target), plus 16 u key for
  // the key formula's own rounding.
  const double u = unit_roundoff<T>();
  const double kpos = std::max(kv, 0.0);
  double Wmax = 0, Zmax = 0;
  for (int64_t j = 0; j < M; ++j) {
    const double pyj = kv == 0 ? 1.0 : double(py[j]);
    Wmax = std::max(Wmax, 1.0 / pyj);
    Zmax = std::max(Zmax, y2[j] / pyj);
  }
  const double cband = 2.0 * double(D + 4) * u;
  auto band_of = [&](T th, double x2, double px) -> T {  // 0 for a non-finite threshold (+inf: the antipode; NaN)
    const double t = double(th), g = 1.0 + kpos * t;
    return std::isfinite(t) ? T(cband * (x2 * Wmax + Zmax) / px * g * g + 16.0 * u * std::abs(t)) : T(0);
  };
  // decides the keys of row a in [th - band, th + band] (other than the target t) from the rows
  const double tol_exact = 8.0 * double(D + 4) * unit_roundoff<double>();
  // the number of candidates j (keys within the band of target t's threshold) whose exact key is below t's
  auto ties_closer = [&](const T* xi, double x2, int64_t t, const int64_t* cand, int64_t n) -> int64_t {
    const double pmin_d = double(pmin);
    const double px = kv == 0 ? 1.0 : std::max(1.0 + kv * x2, pmin_d);
    const double kt = exact_key(xi, yp + t * D, D, px, y2[t], kv, pmin_d);
    const double lim = kt - tol_exact * (1.0 + kpos * kt) * kt;
    int64_t c = 0;
    for (int64_t m = 0; m < n; ++m) {
      const int64_t j = cand[m];
      if (j != t && exact_key(xi, yp + j * D, D, px, y2[j], kv, pmin_d) < lim) ++c;
    }
    return c;
  };
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(256, block_elems / M));
  const int64_t nblocks = (U + RB - 1) / RB;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    const OneMklThread one_mkl_thread;
    at::Tensor Xb = at::empty({RB, D}, x.options());
    at::Tensor G = at::empty({RB, M}, x.options());
    T* Xbp = Xb.data_ptr<T>();
    T* Gp = G.data_ptr<T>();
    std::vector<std::pair<T, int64_t>> thr;
    std::vector<T> sthr;
    std::vector<T> shi;
    std::vector<int64_t> hist, cand;
    std::vector<std::pair<int64_t, int64_t>> amb;  // (sorted threshold, column) pairs within the band
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t u0 = blk * RB, nr = std::min(U, u0 + RB) - u0;
      for (int64_t r = 0; r < nr; ++r) std::copy(xp + uqp[u0 + r] * D, xp + (uqp[u0 + r] + 1) * D, Xbp + r * D);
      at::Tensor Gv = G.narrow(0, 0, nr);
      at::mm_out(Gv, Xb.narrow(0, 0, nr), y.t());  // single-threaded inside the parallel region
      for (int64_t r = 0; r < nr; ++r) {
        const T* xi = Xbp + r * D;
        T* a = Gp + r * M;
        double x2 = 0;
        for (int64_t d = 0; d < D; ++d) x2 += double(xi[d]) * double(xi[d]);
        fill_A_row<T>(a, xi, yp, x2, y2.data(), y2f.data(), M, D, tau);
        key_row<T>(a, std::max(T(1.0 + kv * x2), pmin), py.data(), M, kv);
        const double pxb = kv == 0 ? 1.0 : double(std::max(T(1.0 + kv * x2), pmin));
        const int64_t p0 = offp[u0 + r], p1 = offp[u0 + r + 1], t = p1 - p0;
        for (int64_t p = p0; p < p1; ++p) kp[p] = a[tp[p]];
        if (t <= 16) {  // direct: one vectorised pass over the row per target (float lanes count exactly)
          for (int64_t p = p0; p < p1; ++p) {
            const T band = band_of(kp[p], x2, pxb), tlo = kp[p] - band, thi = kp[p] + band;
            const Vec lo(tlo), hi(thi), one(T(1));
            int64_t cnt = 0, cnt_hi = 0;  // keys < lo: closer; keys <= hi: more than the target in the band?
            for (int64_t c0 = 0; c0 < M; c0 += (int64_t(1) << 20)) {
              const int64_t c1 = std::min(M, c0 + (int64_t(1) << 20));
              Vec acc(T(0)), acc_hi(T(0));
              int64_t j = c0;
              for (; j + L <= c1; j += L) {
                const Vec av = Vec::loadu(a + j);
                acc = acc + ((av < lo) & one);
                acc_hi = acc_hi + ((av <= hi) & one);
              }
              T lanes[L], lanes_hi[L];
              acc.store(lanes);
              acc_hi.store(lanes_hi);
              for (int64_t l = 0; l < L; ++l) {
                cnt += int64_t(lanes[l]);
                cnt_hi += int64_t(lanes_hi[l]);
              }
              for (; j < c1; ++j) {
                cnt += a[j] < tlo ? 1 : 0;
                cnt_hi += a[j] <= thi ? 1 : 0;
              }
            }
            cand.clear();
            if (cnt_hi - cnt > 1) {  // keys in [lo, hi] besides the target's (rare): decided from the rows
              int64_t j = 0;
              for (; j + L <= M; j += L)
                if (((Vec::loadu(a + j) >= lo) & (Vec::loadu(a + j) <= hi)).zero_mask() != (1 << L) - 1)
                  for (int64_t l = 0; l < L; ++l)
                    if (a[j + l] >= tlo && a[j + l] <= thi) cand.push_back(j + l);
              for (; j < M; ++j)
                if (a[j] >= tlo && a[j] <= thi) cand.push_back(j);
            }
            if (cand.size() > 1) cnt += ties_closer(xi, x2, tp[p], cand.data(), int64_t(cand.size()));
            cp[p] = cnt;
          }
        } else {  // many targets: position of each key among the sorted lower ends th - band, then a prefix sum
          thr.resize(t);
          T maxw = T(0);  // the widest band [lo, hi]
          for (int64_t q = 0; q < t; ++q) {
            const T band = band_of(kp[p0 + q], x2, pxb);
            thr[q] = {kp[p0 + q] - band, p0 + q};
            maxw = std::max(maxw, T(2) * band);
          }
          std::sort(thr.begin(), thr.end(), [](const auto& l, const auto& rr) { return l.first < rr.first; });
          sthr.resize(t);
          shi.resize(t);
          for (int64_t q = 0; q < t; ++q) {
            sthr[q] = thr[q].first;
            const int64_t p = thr[q].second;
            shi[q] = kp[p] + band_of(kp[p], x2, pxb);
          }
          hist.assign(t + 1, 0);
          amb.clear();
          for (int64_t j = 0; j < M; ++j) {  // pos = #{lower ends <= key}: counted below the ends q >= pos
            const int64_t pos = std::upper_bound(sthr.begin(), sthr.end(), a[j]) - sthr.begin();
            ++hist[pos];
            // in the band of q < pos when hi_q >= key; lo_q >= key - maxw for those: a short walk back
            for (int64_t q = pos - 1; q >= 0 && sthr[q] >= a[j] - maxw; --q)
              if (shi[q] >= a[j]) amb.push_back({q, j});
          }
          int64_t run = 0;
          for (int64_t q = 0; q < t; ++q) {
            run += hist[q];
            cp[thr[q].second] = run;
          }
          if (amb.size() > 1) {  // group the candidates by threshold; a threshold's own target is among its own
            std::sort(amb.begin(), amb.end());
            for (size_t m0 = 0; m0 < amb.size();) {
              size_t m1 = m0;
              cand.clear();
              while (m1 < amb.size() && amb[m1].first == amb[m0].first) cand.push_back(amb[m1++].second);
              if (cand.size() > 1) {
                const int64_t p = thr[amb[m0].first].second;
                cp[p] += ties_closer(xi, x2, tp[p], cand.data(), int64_t(cand.size()));
              }
              m0 = m1;
            }
          }
        }
      }
    }
  });
  return {counts, keys};
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& x, const at::Tensor& y, double k, int64_t n,
                                           bool largest, int64_t tile) {
  const at::Tensor xc = x.detach().contiguous(), yc = y.detach().contiguous();
  TORCH_CHECK(xc.dim() == 2 && yc.dim() == 2 && xc.size(1) == yc.size(1), "knn: x [N, D], y [M, D]");
  TORCH_CHECK(n >= 0 && n <= yc.size(0), "knn: n out of range");
  tile = std::max<int64_t>(tile, 1);
  if (xc.scalar_type() == at::kDouble) return knn_impl<double>(xc, yc, k, n, largest, tile);
  return knn_impl<float>(xc, yc, k, n, largest, tile);
}

std::tuple<at::Tensor, at::Tensor> pairwise_rank_cpu(const at::Tensor& x, const at::Tensor& y, double k,
                                                     const at::Tensor& uq, const at::Tensor& off,
                                                     const at::Tensor& tgt, int64_t block_elems) {
  const at::Tensor xc = x.detach().contiguous(), yc = y.detach().contiguous();
  TORCH_CHECK(xc.dim() == 2 && yc.dim() == 2 && xc.size(1) == yc.size(1), "pairwise_rank: x [N, D], y [M, D]");
  TORCH_CHECK(xc.scalar_type() == yc.scalar_type(), "pairwise_rank: x and y must have one dtype");
  TORCH_CHECK(uq.scalar_type() == at::kLong && off.scalar_type() == at::kLong && tgt.scalar_type() == at::kLong,
              "pairwise_rank: uq, off, tgt must be int64");
  TORCH_CHECK(off.numel() == uq.numel() + 1, "pairwise_rank: off must have U + 1 entries");
  const at::Tensor u = uq.contiguous(), o = off.contiguous(), t = tgt.contiguous();
  TORCH_CHECK(u.numel() == 0 || o[-1].item<int64_t>() == t.numel(), "pairwise_rank: off[-1] must be P");
  if (xc.scalar_type() == at::kDouble) return rank_impl<double>(xc, yc, k, u, o, t, block_elems);
  return rank_impl<float>(xc, yc, k, u, o, t, block_elems);
}

}  // namespace cpu
}  // namespace geoops
