// Float fast path of the short-row forward (stereographic_lanes.h only; include it after
// geoops/cpu_capability.h): fp32 rows of D <= 16 elements stored back to back, the ops mobius_add,
// expmap, expmap0, logmap, logmap0 (and dist, session 40: its lane math lanes_dist_fg, in the register pass of
// stereographic_rows_f32_reg.h only; the blocks below write (N, D) rows).  block_fused (below) is the same math as
// passes A-C in three loops; block (passes A-C, D <= 8) runs where it measured faster than the fused loops
// (prefer_unfused).
//
// One block of <= 32 rows, three loops over the block while it is in L1, the row length D a template
// argument (so the loads/stores of a row are a fixed interleave the compiler vectorises, no gathers):
//   A. per row (rows on the SIMD lanes; deinterleaved into SoA lanes, then single-type loops): the row sums in double, and in double only the ADDITIVE terms
//      that cancel near the boundary (1 + k|x|^2, 1 + k|y|^2, the Mobius denominators and numerators);
//      each is then rounded once to float, and everything multiplicative (quotients, products, the
//      tanh/artanh arguments) is float;
//   B. the one tanc/atanc call in float lanes (tanc: tanc_neg's inline exp; atanc: SLEEF float log1p; 16 rows
//      per AVX-512 vector);
//   C. the coefficients (float; for expmap the Mobius sum with t = tan_k(...)/|u|, whose denominator
//      1 - 2k t<x,u> + k^2 t^2 |x|^2|u|^2 cancels: double) and the writes out = a x + b y (+ c (x - y)).
// Products and quotients of accurately rounded values lose only a few float ulps, so the results stay
// within a few ulps of the double path (tests/test_stereographic_short.py: test_f32_fast_path_*).
// A block with a "hard" lane (the call's argument z >= the float series cut, i.e. k > 0 beyond the
// series; z or q or a float term out of float range; any NaN; logmap's rows of the y form, stereo::logmap_y_form,
// session 39: these paths write logmap's x form only) returns false, and the caller runs the
// double path for that block (the double path's results, bit for bit).
// The formulas are those of geoops/stereo_math.h (fwd), regrouped: a change there must be mirrored
// here (the fp32 accuracy tests compare both against the fp64 reference).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "geoops/stereo_math.h"
#include "knobs.h"
#include "stereographic_rows_f32_paths.h"
#include "vec_math_inl.h"

namespace geoops {
namespace cpu {
namespace f32rows {

using FVec = at::vec::Vectorized<float>;
constexpr int kF = FVec::size();
constexpr int kMaxRows = 32;  // rows per block (the short-row block of stereographic_lanes.h)
static_assert(kMaxRows % kF == 0, "a block is whole float vectors");
constexpr int kMaxD = 16;  // the fused path; the eight-loop blocks (block) run at D <= 8
// The rows and ops the register pass takes (kRegIsaMaxD, reg_max_d) and the ops with float Mobius terms
// (float_mob_op): the table kOpPaths, one per ISA, that the layout report reads too.

// fast_op: the ops of the fused / eight-loop blocks (run below; stereographic_rows_f32_paths.h).
// The ops of the fp32 short-row float path on this build: fast_op's, and those the register pass alone takes (dist on
// AVX-512 and AVX2 builds, session 40: kOpPaths).
constexpr bool f32_op(int op) { return fast_op(op) || reg_max_d(op) > 0; }

// Where the path runs (mode 1, the default): every op at D <= 8; at D = 9..16 all five ops on AVX-512 builds (the
// register pass, stereographic_rows_f32_reg.h, unless GEOOPS_STEREO_F32_REG=0), elsewhere expmap, expmap0, logmap,
// logmap0 at D = 9..12 and expmap at D = 13..16: where the float path measured faster than the double path (1 thread,
// A/B in docs/families/stereographic.md: the fused blocks 0.86-0.95x at D = 9..12, expmap 0.89x at D = 13..16, the
// other ops 0.98-1.07x there).  GEOOPS_STEREO_F32_ROWS=0: always the double path (the path of other dtypes, strided
// rows and hard blocks); =2: the fused blocks for all five ops at every D <= kMaxD (so that tests reach them on
// every build).  Read per call (once: switches(), stereographic_rows_f32_reg.h).
// dist (session 40; not fast_op: no fused / eight-loop blocks) only where the register pass takes it (reg on, D up to
// its reg_max_d, any mode but 0); elsewhere its double path, as before (its D = 9..16 rows the long-row path).  Mode 2
// with the register pass off: dist's short-row double blocks at those D (the path of the register pass's declined
// blocks, so that tests compare them bit for bit; its D = 9..16 rows otherwise take the long-row double path, whose
// sums round in another order).
// The value's bit 2 (kModeG1, modes 1 and 2 only): GEOOPS_STEREO_F32_G2=0, the fused blocks one float vector at a
// time on AVX2 builds (block_fused, session 26: its A/B and the tests' reference; no effect on other builds).
constexpr int kModeG1 = 4;
inline int mode() {
  const char* e = knobs::get("GEOOPS_STEREO_F32_ROWS");
  const int m = e && e[0] == '0' ? 0 : (e && e[0] == '2' ? 2 : 1);
  return m != 0 && knobs::off("GEOOPS_STEREO_F32_G2") ? m | kModeG1 : m;
}
// m: mode(), reg: reg_mode() (0 off, 1 the default, 2 also at the D kOpPaths declines: reg_on).
inline bool use(int m, int reg, int op, int64_t D) {
  m &= ~kModeG1;
  if (m == 0 || !f32_op(op) || D > kMaxD) return false;
  if (!fast_op(op)) return (reg_on(reg, op, D) || m == 2) && D >= 1 && D <= reg_max_d(op);  // (dist: register pass only)
  if (m == 2 || D <= 8) return true;
  if (reg_on(reg, op, D)) return true;  // the register pass takes all five ops at D = 9..16 (AVX-512 builds)
#if defined(CPU_CAPABILITY_AVX2)
  // AVX2 builds (session 26; the fused blocks two vectors at a time): all five ops at D = 9..15, expmap at D = 16.
  // 1 thread, kernel-only A/B on the AMD EPYC (Zen 3) of the fused blocks (GEOOPS_STEREO_F32_ROWS=2) against the
  // double path: 0.52-0.91x the time at D = 9..15 (mobius_add at D = 9..12 included), but 1.36-2.0x at D = 16
  // (mobius_add, expmap0, logmap0, logmap), where the double path's rows are two whole vectors.
  return op == stereo::EXPMAP || D < 16;
#else
  return op == stereo::EXPMAP || (D <= 12 && op != stereo::MOBIUS_ADD);
#endif
}
// Mode 1 at D <= 8: the eight-loop block (with the inline tanh) where it measured faster than the fused pass
// (mobius_add 1.11-1.16x and logmap 1.10x slower fused at D = 2..5; expmap at D <= 2 0.92x; same A/B).
// AVX2 builds (session 26): not expmap (the fused blocks, two vectors at a time, measured 0.80-0.91x the time at
// D = 1 and 0.96-0.97x at D = 2).
constexpr bool prefer_unfused(int op, int64_t D) {
#if defined(CPU_CAPABILITY_AVX2)
  return D <= 8 && (op == stereo::MOBIUS_ADD || op == stereo::LOGMAP);
#else
  return D <= 8 && (op == stereo::MOBIUS_ADD || op == stereo::LOGMAP || (op == stereo::EXPMAP && D <= 2));
#endif
}

// v within float's working range (0 for NaN).  A macro: block() has its own optimize attribute, and GCC
// does not inline a function without it into it (an out-of-line call per row kept the loop scalar).
#define GEOOPS_F32_FIN(v) (static_cast<int>((v) > -1e30f) & static_cast<int>((v) < 1e30f))

// The scratch lanes of one block: the call's arguments z, q and value v, the float terms u0..u2 of the
// coefficients, expmap's Mobius terms e1..e3 in double.
struct Scratch {
  alignas(64) float z[kMaxRows], q[kMaxRows], v[kMaxRows], u0[kMaxRows], u1[kMaxRows], u2[kMaxRows];
  alignas(64) double e1[kMaxRows], e2[kMaxRows], e3[kMaxRows];
};

// ---------------------------------------------------------------- AVX-512 row permutes (3 <= D <= 8)
// GCC 12 compiles the deinterleave and write loops below to vector permutes at D = 1, 2 but to one scalar
// load/store per element (deinterleave) or one 4-wide row at a time (writes) at D = 3..8 (objdump:
// the D = 5 deinterleave alone cost ~2.5 ns per row).  So there, with AVX-512, explicitly: 16 rows of D floats
// are D vectors; column j of them is one two-source permute per pair of vectors, merged by lane masks; the writes
// expand each row's coefficient to its D elements with one permute per output vector.
template <int D>
struct PermTab {
  alignas(64) int32_t col[D][16];  // column j, lane l: element (D l + j) mod 32 of its pair of vectors
  alignas(64) int32_t row[D][16];  // output vector i, lane l: row (16 i + l) / D
  uint16_t pair[D][(D + 1) / 2];   // column j: the lanes whose element lies in pair p (vectors 2p, 2p + 1)
  constexpr PermTab() : col{}, row{}, pair{} {
    for (int j = 0; j < D; ++j) {
      for (int l = 0; l < 16; ++l) {
        col[j][l] = (D * l + j) % 32;
        pair[j][(D * l + j) / 32] |= static_cast<uint16_t>(1u << l);
        row[j][l] = (16 * j + l) / D;
      }
    }
  }
};
template <int D>
inline constexpr PermTab<D> kPermTab{};
constexpr bool perm_rows(int D) {
#if defined(CPU_CAPABILITY_AVX512)
  return kF == 16 && D >= 3 && D <= 8;
#else
  return (void)D, false;
#endif
}
#define GEOOPS_F32_INL inline __attribute__((optimize("no-trapping-math")))
#if defined(CPU_CAPABILITY_AVX512)
// The NB rows at p (D floats each, back to back) into SoA lanes xs[j][b].
// The 16 rows at p (D floats each, back to back) as D column vectors c[j] (lane l: row l's element j).
// D = 9..16: the 16 rows as 16 row vectors (masked loads, lanes >= D zero), then a 16 x 16
// transpose (unpack ps, unpack pd, two 128-bit shuffles) that makes only the D columns wanted: 16 loads + 32 +
// ~2 D operations where the pair permutes above take D loads + ~D^2 (D = 10: 90, D = 16: 240).  Exact moves: the
// same columns bit for bit.
template <int D>
inline __attribute__((always_inline)) void cols16_t(const float* __restrict p, __m512 (&c)[D]) {
  static_assert(D > 8 && D <= 16, "rows of 9..16 floats");
  const __mmask16 m = static_cast<__mmask16>((1u << D) - 1u);
  __m512 a[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512 r0 = _mm512_maskz_loadu_ps(m, p + i * D), r1 = _mm512_maskz_loadu_ps(m, p + (i + 1) * D);
    a[i] = _mm512_unpacklo_ps(r0, r1), a[i + 1] = _mm512_unpackhi_ps(r0, r1);
  }
  // b[4 n + q], 128-bit lane L: column 4 L + q of rows 4 n .. 4 n + 3
  __m512 b[16];
  for (int n = 0; n < 4; ++n) {
    const __m512d a0 = _mm512_castps_pd(a[4 * n]), a1 = _mm512_castps_pd(a[4 * n + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * n + 2]), a3 = _mm512_castps_pd(a[4 * n + 3]);
    b[4 * n] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * n + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * n + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * n + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  // column 4 L + q = lane L of b[q], b[4 + q], b[8 + q], b[12 + q]; lanes L0, L0 + 1 at a time
  for (int l0 = 0; l0 < 4; l0 += 2) {
    for (int q = 0; q < 4; ++q) {
      if (4 * l0 + q >= D) continue;
      const __m512 d01 = l0 == 0 ? _mm512_shuffle_f32x4(b[q], b[4 + q], 0x44) : _mm512_shuffle_f32x4(b[q], b[4 + q], 0xEE);
      const __m512 d23 = l0 == 0 ? _mm512_shuffle_f32x4(b[8 + q], b[12 + q], 0x44)
                                 : _mm512_shuffle_f32x4(b[8 + q], b[12 + q], 0xEE);
      c[4 * l0 + q] = _mm512_shuffle_f32x4(d01, d23, 0x88);
      if (4 * (l0 + 1) + q < D) c[4 * (l0 + 1) + q] = _mm512_shuffle_f32x4(d01, d23, 0xDD);
    }
  }
}
template <int D>
inline __attribute__((always_inline)) void cols16(const float* __restrict p, __m512 (&c)[D]) {
  if constexpr (D > 8) {
    cols16_t<D>(p, c);
    return;
  }
  const PermTab<D>& T = kPermTab<D>;
  __m512 v[D];
  for (int i = 0; i < D; ++i) v[i] = _mm512_loadu_ps(p + 16 * i);
  if constexpr (D == 1) {
    c[0] = v[0];
  } else {
    for (int j = 0; j < D; ++j) {
      const __m512i ix = _mm512_loadu_si512(T.col[j]);
      __m512 r = _mm512_permutex2var_ps(v[0], ix, v[1]);
      for (int q = 1; 2 * q < D; ++q) {
        r = _mm512_mask_mov_ps(r, T.pair[j][q], _mm512_permutex2var_ps(v[2 * q], ix, v[2 * q + 1 < D ? 2 * q + 1 : 2 * q]));
      }
      c[j] = r;
    }
  }
}
// The NB rows at p into SoA lanes xs[j][b].
template <int D, int NB>
GEOOPS_F32_INL void deint_v(const float* __restrict p, float (&xs)[D][NB]) {
  for (int r0 = 0; r0 < NB; r0 += 16) {
    __m512 c[D];
    cols16<D>(p + r0 * D, c);
    for (int j = 0; j < D; ++j) _mm512_storeu_ps(&xs[j][r0], c[j]);
  }
}
// out = a x + b y (logmap: a x + b (x - y); one-input ops: a x) for the NB rows, coefficients ca[b], cb[b].
// out = a x + b y (logmap: a x + b (x - y); one-input ops: a x) for the 16 rows at xb, yb, ob, coefficients in
// the lanes of a, b (each expanded to its row's D elements by one permute per output vector).
template <int OP, int D>
inline __attribute__((always_inline)) void write16(const float* __restrict xb, const float* __restrict yb, float* __restrict ob, __m512 a,
                            __m512 b) {
  const PermTab<D>& T = kPermTab<D>;
  for (int i = 0; i < D; ++i) {
    const __m512i ix = _mm512_loadu_si512(T.row[i]);
    const __m512 xv = _mm512_loadu_ps(xb + 16 * i);
    const __m512 ai = D == 1 ? a : _mm512_permutexvar_ps(ix, a), bi = D == 1 ? b : _mm512_permutexvar_ps(ix, b);
    __m512 o = _mm512_mul_ps(ai, xv);
    if (OP == stereo::LOGMAP) {
      o = _mm512_fmadd_ps(bi, _mm512_sub_ps(xv, _mm512_loadu_ps(yb + 16 * i)), o);
    } else if (stereo::op_has_y(OP)) {
      o = _mm512_fmadd_ps(bi, _mm512_loadu_ps(yb + 16 * i), o);
    }
    _mm512_storeu_ps(ob + 16 * i, o);
  }
}
template <int OP, int D, int NB>
GEOOPS_F32_INL void write_v(const float* __restrict xb, const float* __restrict yb, float* __restrict ob,
                            const float* __restrict ca, const float* __restrict cb) {
  for (int r0 = 0; r0 < NB; r0 += 16) {
    const int off = r0 * D;
    write16<OP, D>(xb + off, stereo::op_has_y(OP) ? yb + off : yb, ob + off, _mm512_loadu_ps(ca + r0),
                   _mm512_loadu_ps(cb + r0));
  }
}
#endif

// Passes A and C: NB rows exactly (the caller's full blocks; a partial block takes the double path), a
// compile-time count; own functions (__restrict kept) with no-trapping-math, without which GCC turned the
// clamps before the divisions into branches and left the loops scalar (perf: vcomiss / vcvtss2sd per
// row).  They call nothing (GCC does not inline a function of other options into them).
#define GEOOPS_F32_PASS __attribute__((noinline, optimize("no-trapping-math")))

// A. Returns false when a lane is hard (see above).
template <int OP, int D, int NB>
GEOOPS_F32_PASS bool pass_a(const float* __restrict xb, const float* __restrict yb, const double* __restrict kk,
                            Scratch& __restrict s) {
  using namespace geoops::stereo;
  constexpr bool HAS_Y = op_has_y(OP);
  constexpr bool CALL = OP != MOBIUS_ADD;
  const float cut = series_cut<float>();
  const double lo = min_den<double>();
  // Each step its own single-type loop: one loop mixing float and double lanes stayed scalar with GCC 12.
  // (1) the rows into SoA float lanes (contiguous loads + permutes)
  alignas(64) float xs[D][NB], ys[HAS_Y ? D : 1][NB];
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (perm_rows(D)) {
    deint_v<D, NB>(xb, xs);
    if constexpr (HAS_Y) deint_v<D, NB>(yb, ys);
  } else
#endif
  {
#pragma omp simd
    for (int b = 0; b < NB; ++b) {
      for (int j = 0; j < D; ++j) {
        xs[j][b] = xb[b * D + j];
        if (HAS_Y) ys[j][b] = yb[b * D + j];
      }
    }
  }
  // (2) widened to double
  alignas(64) double xd[D][NB], yd[HAS_Y ? D : 1][NB];
  for (int j = 0; j < D; ++j) {
#pragma omp simd
    for (int b = 0; b < NB; ++b) {
      xd[j][b] = xs[j][b];
      if (HAS_Y) yd[j][b] = ys[j][b];
    }
  }
  // (3) row sums and the cancelling additive terms, double
  alignas(64) double t0[NB], t1[NB], t2[NB], t3[NB], t4[NB];
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    double xx = 0, yy = 0, xy = 0, dd = 0;
    for (int j = 0; j < D; ++j) {
      const double xv = xd[j][b];
      xx += xv * xv;
      if (HAS_Y) {
        const double yv = yd[j][b], d = xv - yv;
        yy += yv * yv, xy += xv * yv, dd += d * d;
      }
    }
    const double k = kk[b];
    if (OP == MOBIUS_ADD) {
      const double den = 1.0 - 2.0 * k * xy + k * k * xx * yy;
      t0[b] = 1.0 - 2.0 * k * xy - k * yy, t1[b] = 1.0 + k * xx, t2[b] = den > lo ? den : lo;
    } else if (OP == EXPMAP) {
      const double p = 1.0 + k * xx;
      t0[b] = p > lo ? p : lo, t1[b] = p, t2[b] = k * yy;
      s.e1[b] = -2.0 * k * xy, s.e2[b] = k * k * xx * yy, s.e3[b] = -k * yy;
    } else if (OP == EXPMAP0 || OP == LOGMAP0) {
      t0[b] = k * xx, t1[b] = 1.0 + k * xx;
    } else if (OP == LOGMAP) {
      // (sub_den: p_x p_y - k dd for k <= 0, no cancellation for close pairs near the boundary; session 42)
      const double nb1 = 1.0 + k * xx, den0 = sub_den(nb1 * (1.0 + k * yy), xx, yy, xy, dd, k);
      t0[b] = den0 > lo ? den0 : lo, t1[b] = nb1, t2[b] = nb1 > lo ? nb1 : lo, t3[b] = k * dd, t4[b] = 1.0 + k * yy;
    }
  }
  // (4) rounded to float once
  constexpr int NT = OP == LOGMAP ? 5 : (OP == EXPMAP0 || OP == LOGMAP0 ? 2 : 3);
  alignas(64) float f[5][NB];
  const double* tt[5] = {t0, t1, t2, t3, t4};
  for (int i = 0; i < NT; ++i) {
#pragma omp simd
    for (int b = 0; b < NB; ++b) f[i][b] = static_cast<float>(tt[i][b]);
  }
  // (5) the float algebra: the call's arguments and the coefficients' float terms; the hard-lane check
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int b = 0; b < NB; ++b) {
    float zb = 0.f, qb = 1.f;
    int ok = 1;
    if (OP == MOBIUS_ADD) {
      s.u0[b] = f[0][b], s.u1[b] = f[1][b], s.u2[b] = f[2][b];
      ok = GEOOPS_F32_FIN(f[0][b]) & GEOOPS_F32_FIN(f[1][b]) & GEOOPS_F32_FIN(f[2][b]);
    } else if (OP == EXPMAP) {
      const float h = 1.0f / f[0][b];
      zb = f[2][b] * h * h;
      s.u0[b] = h, s.u1[b] = f[1][b];
      ok = GEOOPS_F32_FIN(h) & GEOOPS_F32_FIN(f[1][b]);
    } else if (OP == EXPMAP0 || OP == LOGMAP0) {
      zb = f[0][b], qb = f[1][b];
    } else if (OP == LOGMAP) {
      const float rden = 1.0f / f[0][b];
      zb = f[3][b] * rden;
      qb = f[1][b] * f[4][b] * rden;
      qb = ball_q(f[1][b], qb);
      s.u0[b] = f[2][b] * zb;            // a = atanc * p * k dd / den
      s.u1[b] = -f[2][b] * f[1][b] * rden;  // c = -atanc * p * (1 + k xx) / den
      // (den < 1e30: beyond it 1 / den is 0 or subnormal in float -- den ~ 1e40 for |x|, |y| ~ 1e10 at k = -1 made
      // every coefficient 0, and q = inf * 0 = NaN, which ball_q turns into 0 before the q < 1e30 check; session 49)
      ok = GEOOPS_F32_FIN(f[0][b]) & GEOOPS_F32_FIN(rden) & GEOOPS_F32_FIN(s.u0[b]) & GEOOPS_F32_FIN(s.u1[b]);
      ok &= static_cast<int>(f[1][b] < 2.f) | static_cast<int>(f[1][b] < f[4][b]);  // x form only (OkMask::x_form)
    }
    if (CALL) ok = ok & static_cast<int>(zb < cut) & static_cast<int>(zb > -1e30f) & static_cast<int>(qb < 1e30f);
    s.z[b] = zb, s.q[b] = qb;
    bad |= ok ^ 1;
  }
  return bad == 0;
}

// Forced inline: GCC kept tanc_neg_f / atanc_neg_f / tanc_neg out of line, a call per 16 rows that
// spilled the live vectors.
#define GEOOPS_F32_AI inline __attribute__((always_inline))
GEOOPS_F32_AI FVec tanc_neg(const FVec& z);  // below

// B. The call, in float lanes (atanc: SLEEF's log1p via eval_series_neg; tanc: tanc_neg's inline exp).
template <int OP, int NB>
inline void pass_b(Scratch& s) {
  constexpr bool ATANC = OP == stereo::LOGMAP || OP == stereo::LOGMAP0;
  // B. the call, in float lanes
  if (OP != stereo::MOBIUS_ADD) {
    for (int b = 0; b < NB; b += kF) {
      (ATANC ? vecmath::eval_series_neg<ATANC>(FVec::loadu(s.z + b), FVec::loadu(s.q + b))
             : tanc_neg(FVec::loadu(s.z + b)))
          .store(s.v + b);
    }
  }
}

// out = a x + b y (logmap: a x + b (x - y)): the write of both block paths.
template <int OP, int D, int NB>
GEOOPS_F32_PASS void write_rows(const float* __restrict xb, const float* __restrict yb, float* __restrict ob,
                                const float* __restrict ca, const float* __restrict cb) {
  constexpr bool HAS_Y = stereo::op_has_y(OP);
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (perm_rows(D)) {
    write_v<OP, D, NB>(xb, yb, ob, ca, cb);
    return;
  }
#endif
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    for (int j = 0; j < D; ++j) {
      const float xv = xb[b * D + j];
      if (OP == stereo::LOGMAP) {
        ob[b * D + j] = ca[b] * xv + cb[b] * (xv - yb[b * D + j]);
      } else if (HAS_Y) {
        ob[b * D + j] = ca[b] * xv + cb[b] * yb[b * D + j];
      } else {
        ob[b * D + j] = ca[b] * xv;
      }
    }
  }
}

// C. Coefficients and writes.
template <int OP, int D, int NB>
GEOOPS_F32_PASS void pass_c(const float* __restrict xb, const float* __restrict yb, float* __restrict ob,
                            const Scratch& __restrict s) {
  using namespace geoops::stereo;
  constexpr bool HAS_Y = op_has_y(OP);
  constexpr bool CALL = OP != MOBIUS_ADD;
  const float cut = series_cut<float>();
  const double lo = min_den<double>();
  (void)cut, (void)lo, (void)HAS_Y, (void)CALL;
  // C. coefficients and writes
  alignas(64) float ca[kMaxRows], cb[kMaxRows];
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    if (OP == MOBIUS_ADD) {
      const float r = 1.0f / s.u2[b];
      ca[b] = s.u0[b] * r, cb[b] = s.u1[b] * r;
    } else if (OP == EXPMAP) {
      const float t = s.u0[b] * s.v[b];
      const double td = t;
      const double den = 1.0 + td * (s.e1[b] + td * s.e2[b]);
      const float r = 1.0f / static_cast<float>(den > lo ? den : lo);
      ca[b] = static_cast<float>(1.0 + td * (s.e1[b] + td * s.e3[b])) * r;
      cb[b] = s.u1[b] * r * t;
    } else if (OP == LOGMAP) {
      ca[b] = s.v[b] * s.u0[b], cb[b] = s.v[b] * s.u1[b];  // out = a x + c (x - y)
    } else {
      ca[b] = s.v[b];
    }
  }
  write_rows<OP, D, NB>(xb, yb, ob, ca, cb);
}
#undef GEOOPS_F32_PASS

// The NB rows from xb / yb (D elements each, back to back) into ob; kk[b] the row's curvature.  Returns
// false (nothing written) when a lane is hard.
template <int OP, int D, int NB>
inline bool block(const float* xb, const float* yb, float* ob, const double* kk) {
  static_assert(NB <= kMaxRows && NB % kF == 0, "whole float vectors");
  Scratch s;
  if (!pass_a<OP, D, NB>(xb, yb, kk, s)) return false;
  pass_b<OP, NB>(s);
  pass_c<OP, D, NB>(xb, yb, ob, s);
  return true;
}

// ------------------------------------------------------------------------------------------------ fused
// The same math in three loops instead of eight, the lane values kept in registers in between:
//   1. the rows into SoA float lanes (the deinterleave of pass A, vector code by GCC);
//   2. per float vector of rows (16 with AVX-512), explicit at::vec code: widened to two double vectors, the
//      row sums and the cancelling terms in double, rounded once to float, the float algebra, the hard-lane
//      check, the call (SLEEF float) and the coefficients, stored as two float lane arrays ca, cb;
//   3. the writes (pass C's write loop).
// Same formulas and roundings as passes A-C; a hard lane returns false before step 3 (nothing written).
using DVec = at::vec::Vectorized<double>;
constexpr int kD = DVec::size();
static_assert(kF == 2 * kD, "a float vector widens to two double vectors");

// The kD floats at p widened to double; two double vectors narrowed to one float vector.
inline DVec widen(const float* p) {
#if defined(CPU_CAPABILITY_AVX512)
  return DVec(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#elif defined(CPU_CAPABILITY_AVX2)
  return DVec(_mm256_cvtps_pd(_mm_loadu_ps(p)));
#else
  alignas(64) double t[kD];
  for (int i = 0; i < kD; ++i) t[i] = p[i];
  return DVec::loadu(t);
#endif
}
inline FVec narrow(const DVec& lo, const DVec& hi) {
#if defined(CPU_CAPABILITY_AVX512)
  return FVec(_mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1));
#elif defined(CPU_CAPABILITY_AVX2)
  return FVec(_mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1));
#else
  alignas(64) double t[2 * kD];
  alignas(64) float f[kF];
  lo.store(t), hi.store(t + kD);
  for (int i = 0; i < kF; ++i) f[i] = static_cast<float>(t[i]);
  return FVec::loadu(f);
#endif
}
inline void widen2(const FVec& v, DVec& lo, DVec& hi) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 w = v;
  lo = DVec(_mm512_cvtps_pd(_mm512_castps512_ps256(w)));
  hi = DVec(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1))));
#else
  alignas(64) float t[kF];
  v.store(t);
  lo = widen(t), hi = widen(t + kD);
#endif
}
inline FVec fin(const FVec& v) { return (v > FVec(-1e30f)) & (v < FVec(1e30f)); }
// The hard-lane check of lanes_core_g as one lane mask: with AVX-512 a mask register that each comparison
// narrows (a masked compare: no vector masks, no and-ops); elsewhere vector masks.
// lt / gt: ordered (a NaN lane fails); fin: within float's working range (-1e30, 1e30), as fin() above.
struct OkMask {
#if defined(CPU_CAPABILITY_AVX512)
  __mmask16 m = 0xFFFF;
  void lt(const FVec& a, const FVec& b) { m = _mm512_mask_cmp_ps_mask(m, a, b, _CMP_LT_OQ); }
  void gt(const FVec& a, const FVec& b) { m = _mm512_mask_cmp_ps_mask(m, a, b, _CMP_GT_OQ); }
  void also(const OkMask& o) { m &= o.m; }
  bool all() const { return m == 0xFFFF; }
#else
  FVec v = FVec(0.f) == FVec(0.f);
  void lt(const FVec& a, const FVec& b) { v = v & (a < b); }
  void gt(const FVec& a, const FVec& b) { v = v & (a > b); }
  void also(const OkMask& o) { v = v & o.v; }
  bool all() const { return v.zero_mask() == 0; }
#endif
  void fin(const FVec& a) { gt(a, FVec(-1e30f)), lt(a, FVec(1e30f)); }
  // dist (session 40): lanes whose float |x - y|^2 and |s|^2 = |x - y|^2 / den are normal (> 1e-30: a few ulps), or
  // whose differences x - y are all zero (wbits: the OR of their bits; +-0 only when every one is).  A lane with
  // |x - y| below ~1e-15 but not 0 (its squares lose digits as float denormals, or round to 0) fails.
  void normal_or_zero(const FVec& s2, const FVec& ss, const FVec& wbits) {
#if defined(CPU_CAPABILITY_AVX512)
    const __mmask16 nz = _mm512_cmp_ps_mask(_mm512_min_ps(s2, ss), _mm512_set1_ps(1e-30f), _CMP_GT_OQ);
    m &= static_cast<__mmask16>(nz | _mm512_cmp_ps_mask(wbits.abs(), _mm512_setzero_ps(), _CMP_EQ_OQ));
#else
    v = v & ((at::vec::minimum(s2, ss) > FVec(1e-30f)) | (wbits.abs() == FVec(0.f)));
#endif
  }
  // logmap's x form only (session 39): a lane whose row the double path writes in the y form (stereo::logmap_y_form:
  // k xx > 1 and xx > yy) is hard.  From px = 1 + k xx, py = 1 + k yy rounded to float: px < 2 or px < py (rounding
  // is monotone, so every y-form row fails it, and a few borderline x-form rows too; a NaN fails).
  void x_form(const FVec& px, const FVec& py) {
#if defined(CPU_CAPABILITY_AVX512)
    m &= static_cast<__mmask16>(_mm512_cmp_ps_mask(px, FVec(2.f), _CMP_LT_OQ) | _mm512_cmp_ps_mask(px, py, _CMP_LT_OQ));
#else
    v = v & ((px < FVec(2.f)) | (px < py));
#endif
  }
};
// max(v, lo) with clamp_lo's semantics (a NaN v gives lo): vmaxpd returns its second operand when either is NaN.
inline DVec clamp_lo_d(const DVec& v, const DVec& lo) {
#if defined(CPU_CAPABILITY_AVX512)
  return DVec(_mm512_max_pd(v, lo));
#else
  return DVec::blendv(lo, v, v > lo);
#endif
}

// max(v, c), min(v, c) for a constant c (never NaN) and the select z <= c ? b : a as one instruction
// each with AVX-512 (vmaxps / vminps with v second: a NaN v comes out as NaN, as at::vec::maximum / minimum, whose
// NaN-propagating form cost four (vcmpunordps, vmaxps, vpmovm2d, vorps); the select from a mask register where
// blendv took a vector mask and a compare back to a mask).  Same values (a NaN's payload aside).
GEOOPS_F32_AI FVec max_c(const FVec& v, const FVec& c) {
#if defined(CPU_CAPABILITY_AVX512)
  return FVec(_mm512_max_ps(c, v));
#else
  return at::vec::maximum(v, c);
#endif
}
GEOOPS_F32_AI FVec min_c(const FVec& v, const FVec& c) {
#if defined(CPU_CAPABILITY_AVX512)
  return FVec(_mm512_min_ps(c, v));
#else
  return at::vec::minimum(v, c);
#endif
}
GEOOPS_F32_AI FVec sel_le(const FVec& z, const FVec& c, const FVec& a, const FVec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  return FVec(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, c, _CMP_LE_OQ), a, b));
#else
  return FVec::blendv(a, b, z <= c);
#endif
}

// tanc(z) = tanh(s)/s, s = sqrt(-z), for z < series cut (the float lanes of the fused path): the series for
// |z| < cut as vecmath::eval_series_neg, and for z <= -cut (s >= 0.22) (1 - e) / ((1 + e) s) with e = exp(-2s)
// <= 0.64 from an inline exp (Cody-Waite reduction by ln 2, Taylor polynomial to r^7 on |r| <= ln2/2, 1 -/+ e
// formed from 2^n and e^r - 1 without cancellation), in place of SLEEF's tanhf (u10), which took about half of the fused block's
// time at D = 2 (perf).  s is clamped at 9 (e < 2^-25: tanh(s) = 1 in float).  Without AVX-512/AVX2: SLEEF's.
// Its callers: the eight-loop blocks' pass B and the lane math of expmap where the double Mobius terms run.
// The Mobius terms of mobius_add / expmap / logmap in float without cancellation (lanes_mob_g below): AVX-512 builds,
// and (session 25) AVX2 builds for mobius_add and logmap (expmap there: the double terms, see lanes_core_g);
// elsewhere, and with GEOOPS_STEREO_F32_MOB=0 (read per call: how tests reach that path here), the terms in double
// halves rounded once to float.  mob_terms() travels to the lane math as its `mob` argument.
inline bool mob_terms() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return !knobs::off("GEOOPS_STEREO_F32_MOB");
#else
  return false;
#endif
}
// The caller's lane-mode argument of run / reg_range: 1 with the float Mobius terms, 0 with the double ones.
inline int lane_mode() { return mob_terms() ? 1 : 0; }
// sqrt, 1/v and the double quotient without vsqrtps / vdivps / vdivpd (zmm throughput ~12 / ~10 / ~16
// cycles on one port, the largest single cost of expmap's and logmap's 16 rows at D = 2), each as accurate as the
// exact operation up to a rare last-bit difference: the estimate (vrsqrt14 / vrcp14, relative error < 2^-14)
// refined by one Newton step (< 2^-27 before rounding) and then corrected once by its exact FMA residual
// (sqrt: s + (v - s^2) / (2 s); 1/v: r + r (1 - v r)), which leaves an error ~2^-46 relative plus the final rounding:
// the correctly rounded result unless the exact one lies within ~2^-46 of a rounding midpoint.  The double
// reciprocal: two Newton steps from vrcp14pd (2^-14 -> 2^-28 -> 2^-56 before rounding), the quotient num * (1/den)
// within ~2 double ulps, then rounded to float once.  Without AVX-512: the exact operations.
inline FVec rcp_nr(const FVec& v);
inline FVec rsqrt_nr(const FVec& v);
GEOOPS_F32_AI FVec rcp_cr(const FVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  const FVec r = rcp_nr(v);
  return at::vec::fmadd(r, at::vec::fnmadd(v, r, FVec(1.f)), r);
#else
  return FVec(1.f) / v;
#endif
}
// 1/v as a division (correctly rounded: rcp_cr's value but for rcp_cr's rare last-bit misses) where the chain's
// latency binds (expmap's two reciprocals: vdivps ~11 cycles on Zen 4, rcp_cr's estimate and four dependent FMAs
// ~20); where the divider's throughput binds (mobius_add) rcp_cr measured faster.
GEOOPS_F32_AI FVec rcp_div(const FVec& v) { return FVec(1.f) / v; }
// s0 ~ sqrt(v) (s0 = v rs, rs ~ 1/sqrt(v)) corrected once by its FMA residual: s0 + (v - s0^2) rs / 2.
GEOOPS_F32_AI FVec sqrt_fix(const FVec& v, const FVec& s0, const FVec& rs) {
  return at::vec::fmadd(at::vec::fnmadd(s0, s0, v), FVec(0.5f) * rs, s0);
}
GEOOPS_F32_AI FVec sqrt_cr(const FVec& v) {  // v > 0 (finite)
#if defined(CPU_CAPABILITY_AVX512)
  const FVec rs = rsqrt_nr(v);
  return sqrt_fix(v, v * rs, rs);
#else
  return v.sqrt();
#endif
}
GEOOPS_F32_AI DVec rcp_pd(const DVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  DVec r(_mm512_rcp14_pd(v));
  r = at::vec::fmadd(r, at::vec::fnmadd(v, r, DVec(1.0)), r);
  return at::vec::fmadd(r, at::vec::fnmadd(v, r, DVec(1.0)), r);
#else
  return DVec(1.0) / v;
#endif
}
GEOOPS_F32_AI FVec tanc_neg(const FVec& z) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  {
    const FVec cut(stereo::series_cut<float>());
    const FVec series = stereo::tanc_series(z);
    const FVec s = sqrt_cr(max_c(z.neg(), cut));
    const FVec x = FVec(-2.f) * min_c(s, FVec(9.f));
    const FVec n = (x * FVec(1.44269504088896341f)).round();
    const FVec r = (x - n * FVec(0.693145751953125f)) - n * FVec(1.42860682030941723e-06f);
    FVec p = FVec(1.f / 5040.f) * r + FVec(1.f / 720.f);
    p = p * r + FVec(1.f / 120.f);
    p = p * r + FVec(1.f / 24.f);
    p = p * r + FVec(1.f / 6.f);
    p = p * r + FVec(0.5f);
    p = p * r + FVec(1.f);
    const FVec q = p * r;  // e^r - 1
    const FVec sc = vecmath::pow2_f(n);  // 2^n
    // e = 2^n (1 + q): 1 -/+ e = (1 -/+ 2^n) -/+ 2^n q (n = -1 .. -26), so 1 - e amplifies q's rounding by at
    // most ~0.4 (and not e's by 1.8); that assembly and the quotient in double, rounded once (in float they
    // added ~1.5 ulp, which expmap's cancelling write a x + b u turned into 6.6e-6 on a test row)
    DVec d[3][2];
    widen2(sc, d[0][0], d[0][1]);
    widen2(q, d[1][0], d[1][1]);
    widen2(s, d[2][0], d[2][1]);
    DVec vd[2];
    for (int h = 0; h < 2; ++h) {
      const DVec sq = d[0][h] * d[1][h];
      vd[h] = ((DVec(1.0) - d[0][h]) - sq) * rcp_pd(((DVec(1.0) + d[0][h]) + sq) * d[2][h]);
    }
    const FVec v = narrow(vd[0], vd[1]);
    return sel_le(z, cut.neg(), series, v);
  }
#else
  return vecmath::eval_series_neg<false>(z, FVec(1.f));
#endif
}

// 1/sqrt(v) and 1/v for v > 0 in float lanes: AVX-512's 14-bit estimates refined by one Newton step (relative
// error ~2^-27 before the final rounding: within about one float ulp), in place of vsqrtps / vdivps, whose
// zmm throughput (one per ~6-12 cycles on one port) was a large share of expmap0's short-row block.
// Without AVX-512: the exact operations.
inline FVec rsqrt_nr(const FVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  const FVec r(_mm512_rsqrt14_ps(v));
  const FVec h = at::vec::fnmadd(v * r, r, FVec(1.f));  // 1 - v r^2
  return at::vec::fmadd(FVec(0.5f) * r, h, r);
#else
  return FVec(1.f) / v.sqrt();
#endif
}
inline FVec rcp_nr(const FVec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  const FVec r(_mm512_rcp14_ps(v));
  return at::vec::fmadd(r, at::vec::fnmadd(v, r, FVec(1.f)), r);
#else
  return FVec(1.f) / v;
#endif
}

// tanc(z) for z < series cut, all in float (expmap0's coefficient, whose write out = tanc * u does
// not cancel): the series for |z| < cut; for z <= -cut, s = sqrt(-z) and 1/s from one reciprocal square root,
// e = exp(-2s) = 2^n (1 + q) from tanc_neg's inline exp, and tanh(s)/s = ((1 - 2^n) - 2^n q) / ((1 + 2^n) + 2^n q)
// / s with one division (vdivps, correctly rounded; session 23: in place of a reciprocal estimate, a Newton step
// and a Newton step on the quotient, which gave the same bits on 2^20 rows but were ~5 operations deeper in the chain:
// on the AMD EPYC (Zen 4) the lane math is bound by the chain's latency, vdivps zmm ~11 cycles against ~25 for the
// estimate and three dependent FMAs; expmap0 / logmap0 (log1p_big_fg's quotient likewise) 0.90-0.95x the time at
// D = 2, 5).  No double conversions, no vsqrtps.
// G independent vectors of rows at once (the register pass runs its 16-row groups as G = 2 or 4): every
// step of the chain for each group before the next step, so that the out-of-order core finds G independent chains
// in its window; one group's chain (sums -> z -> rsqrt -> exp/log -> quotient, ~100 dependent vector operations)
// alone ran at ~0.7 instructions per cycle.  G = 1 is the single-vector function; the operations and their
// roundings do not depend on G.
#define GEOOPS_G for (int g = 0; g < G; ++g)
// n = round(m) (ties to even) and sc = 2^n for integer-valued results n in [-126, 127], |m| < 2^22 (the inline exps'
// n = round(x log2 e)).  AVX-512: m + 1.5 2^23 rounds to the integer C + n (spacing 1 in [2^23, 2^24),
// ties to even as C is even: the n of vrndscaleps), n = that - C exactly, and 2^n's bits are (n + 127) << 23 = (the
// sum's bits + 127) << 23 modulo 2^32 (the sum's bits are 0x4B400000 + n, whose high part shifts out): one add and
// one subtract in place of vrndscaleps (two uops) and vcvtps2dq, the same n and 2^n bit for bit (n = -0 becomes +0,
// which no caller tells apart: x - n c is x either way).  Elsewhere round() and vecmath::pow2_f.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
GEOOPS_F32_AI void round_pow2(const FVec& m, FVec& n, FVec& sc) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 c = _mm512_set1_ps(12582912.f);  // 1.5 2^23
  const __m512 t = _mm512_add_ps(m, c);
  n = FVec(_mm512_sub_ps(t, c));
  sc = FVec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127)), 23)));
#else
  n = m.round();
  sc = vecmath::pow2_f(n);
#endif
}
#endif
// One vector as the G = 1 array of the functions below.
inline const FVec (&as1(const FVec& v))[1] { return *reinterpret_cast<const FVec(*)[1]>(&v); }
// QUOT (expmap's float Mobius terms, lanes_mob_g; session 30): s as sqrt_cr's (the estimate corrected once by its
// FMA residual; session 42: vsqrtps, correctly rounded, the same bits on the A/B's 2^20 rows at D = 2, 5 and ~8
// multiply-class operations fewer per vector; measured 0.97-0.99x expmap's time there) and tanh(s)/s as one
// quotient ((1 - e) / ((1 + e) s)) of that same s, where 1/s from the estimate and s = s2 (1/s) carried its error
// twice (tanh(s)/s's sensitivity to s is ~0 for small s, but 1/s's error is not cancelled by anything): expmap's
// t missed by up to ~8 float ulps (x = 0 rows) against ~2.7 with the double terms' tanc_neg, and its cancelling
// write a x + b u turned that into 1.5-2.6x the eager fp32 error in the worst rows.
template <int G, bool QUOT = false>
GEOOPS_F32_AI void tanc_neg_fg(const FVec (&z)[G], FVec (&out)[G]) {
  const FVec cut(stereo::series_cut<float>());
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  FVec s2[G], rs[G], s[G], x[G], n[G], r[G], p[G], q[G], sc[G], num[G], den[G];
  GEOOPS_G s2[g] = max_c(z[g].neg(), cut);
  if constexpr (QUOT) {
    GEOOPS_G s[g] = s2[g].sqrt();
  } else {
    GEOOPS_G rs[g] = rsqrt_nr(s2[g]);  // 1/s
    GEOOPS_G s[g] = s2[g] * rs[g];
  }
  GEOOPS_G x[g] = FVec(-2.f) * min_c(s[g], FVec(9.f));
  GEOOPS_G round_pow2(x[g] * FVec(1.44269504088896341f), n[g], sc[g]);  // n = round(x log2 e), sc = 2^n
  GEOOPS_G r[g] = at::vec::fnmadd(n[g], FVec(1.42860682030941723e-06f), at::vec::fnmadd(n[g], FVec(0.693145751953125f), x[g]));
  GEOOPS_G p[g] = at::vec::fmadd(FVec(1.f / 5040.f), r[g], FVec(1.f / 720.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], r[g], FVec(1.f / 120.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], r[g], FVec(1.f / 24.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], r[g], FVec(1.f / 6.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], r[g], FVec(0.5f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], r[g], FVec(1.f));
  GEOOPS_G q[g] = p[g] * r[g];  // e^r - 1
  if constexpr (QUOT) {
    GEOOPS_G num[g] = at::vec::fnmadd(sc[g], q[g], FVec(1.f) - sc[g]);         // (1 - 2^n) - 2^n q
    GEOOPS_G den[g] = at::vec::fmadd(sc[g], q[g], FVec(1.f) + sc[g]) * s[g];  // ((1 + 2^n) + 2^n q) s
  } else {
    GEOOPS_G num[g] = at::vec::fnmadd(sc[g], q[g], FVec(1.f) - sc[g]) * rs[g];  // ((1 - 2^n) - 2^n q) / s
    GEOOPS_G den[g] = at::vec::fmadd(sc[g], q[g], FVec(1.f) + sc[g]);        // (1 + 2^n) + 2^n q, in [1, 2)
  }
  GEOOPS_G {
    const FVec v = num[g] / den[g];  // (vdivps: see above)
    out[g] = sel_le(z[g], cut.neg(), stereo::tanc_series(z[g]), v);
  }
#else
  (void)cut;
  GEOOPS_G out[g] = vecmath::eval_series_neg<false>(z[g], FVec(1.f));
#endif
}
GEOOPS_F32_AI FVec tanc_neg_f(const FVec& z) {
  FVec out[1];
  return tanc_neg_fg<1>(as1(z), out), out[0];
}

// atanc(z, q) = artanh(s)/s (s = sqrt(-z), q = 1 - s^2 from the double terms) for z < series cut, the float
// lanes of the fused logmap0 / logmap: eval_series_neg<true>'s 0.5 log1p(2s(1 + s)/q)/s with s and 1/s
// from one reciprocal square root and 1/q from a reciprocal (Newton-refined estimates) in place of vsqrtps and two
// vdivps; the log1p inline (log1p_big_f).
// log1p(w) for w >= 0.5 (finite; atanc_neg_f's w >= 0.57): log(1 + w) inline (in place of SLEEF's log1pf
// call, which spilled the register pass's live vectors): 1 + w = m 2^e with m in [0.75, 1.5) (vgetexpps /
// vgetmantps), log m = 2 artanh(t), t = (m - 1)/(m + 1) (|t| <= 0.2; one division, see tanc_neg_fg), the odd series to t^11 (truncation < 1e-9 relative), e ln 2 in two parts.  The
// rounding of 1 + w costs at most 2^-24 / log(1.5) ~ 1.5e-7 relative.  AVX2: the exponent / mantissa split from the
// bits (session 25; it was SLEEF's log1pf call there); other builds: SLEEF's log1p.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// log(m 2^e) for m in [0.75, 1.5): log m = 2 artanh(t), t = (m - 1)/(m + 1), the odd series to t^11, plus e ln 2 in
// two parts (log1p_big_fg's steps after its ISA's exponent / mantissa split).
template <int G>
GEOOPS_F32_AI void log_mant_exp_fg(const FVec (&m)[G], const FVec (&e)[G], FVec (&out)[G]) {
  FVec num[G], den[G], t[G], t2[G], p[G];
  GEOOPS_G num[g] = m[g] - FVec(1.f), den[g] = m[g] + FVec(1.f);
  GEOOPS_G t[g] = num[g] / den[g];
  GEOOPS_G t2[g] = t[g] * t[g];
  GEOOPS_G p[g] = at::vec::fmadd(FVec(1.f / 11.f), t2[g], FVec(1.f / 9.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 7.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 5.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 3.f));
  GEOOPS_G {
    const FVec lm = at::vec::fmadd(FVec(2.f) * t[g] * t2[g], p[g], FVec(2.f) * t[g]);  // log m = 2t + 2t^3 p
    out[g] = at::vec::fmadd(e[g], FVec(0.693145751953125f), at::vec::fmadd(e[g], FVec(1.42860682030941723e-06f), lm));
  }
}
#endif

template <int G>
GEOOPS_F32_AI void log1p_big_fg(const FVec (&w)[G], FVec (&out)[G]) {
#if defined(CPU_CAPABILITY_AVX512)
  FVec m[G], e[G];
  GEOOPS_G {
    const __m512 u = FVec(1.f) + w[g];
    const __m512 m1 = _mm512_getmant_ps(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
    const __m512 e1 = _mm512_getexp_ps(u);
    const __mmask16 big = _mm512_cmp_ps_mask(m1, _mm512_set1_ps(1.5f), _CMP_GE_OQ);
    m[g] = FVec(_mm512_mask_mul_ps(m1, big, m1, _mm512_set1_ps(0.5f)));
    e[g] = FVec(_mm512_mask_add_ps(e1, big, e1, _mm512_set1_ps(1.f)));
  }
  log_mant_exp_fg<G>(m, e, out);
#elif defined(CPU_CAPABILITY_AVX2)
  // The same steps without vgetexpps / vgetmantps: 1 + w >= 1.5 is a positive normal float, so its exponent is
  // (bits >> 23) - 127 and its mantissa in [1, 2) the bits with the exponent field of 1.0: the values getexp /
  // getmant give (same bits from here on).  1 + w = inf or NaN: that value, as getexp returns there.
  FVec m[G], e[G], u[G], l[G];
  GEOOPS_G {
    u[g] = FVec(1.f) + w[g];
    const __m256i bits = _mm256_castps_si256(u[g]);
    const __m256 m1 = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
    const __m256 e1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    const __m256 big = _mm256_cmp_ps(m1, _mm256_set1_ps(1.5f), _CMP_GE_OQ);
    m[g] = FVec(_mm256_blendv_ps(m1, _mm256_mul_ps(m1, _mm256_set1_ps(0.5f)), big));
    e[g] = FVec(_mm256_blendv_ps(e1, _mm256_add_ps(e1, _mm256_set1_ps(1.f)), big));
  }
  log_mant_exp_fg<G>(m, e, l);
  GEOOPS_G {
    const __m256 special = _mm256_cmp_ps(u[g], _mm256_set1_ps(INFINITY), _CMP_NLT_UQ);  // inf or NaN
    out[g] = FVec(_mm256_blendv_ps(l[g], u[g], special));
  }
#else
  GEOOPS_G out[g] = w[g].log1p();
#endif
}
GEOOPS_F32_AI FVec log1p_big_f(const FVec& w) {
  FVec out[1];
  return log1p_big_fg<1>(as1(w), out), out[0];
}

#if defined(CPU_CAPABILITY_AVX512)
// log(n / d) for positive normal floats n, d with n / d >= 1.5 (atanc_neg_fg's (1 + s)^2 / q) and one division
// (session 42, in place of 1 / d, w = n / d - 1 as products and log1p_big_fg's second division): n = mn 2^en,
// d = md 2^ed with mn, md in [1, 2) (vgetmantps / vgetexpps, exact), so n / d = (mn / md) 2^(en - ed) with mn / md in
// (0.5, 2) and log(mn / md) = 2 artanh(t), t = (mn - md) / (mn + md) in (-1/3, 1/3): mn - md is exact (Sterbenz: md / 2
// <= mn <= 2 md), mn + md one rounding, the quotient one more.  The odd series to t^15 (truncation < (1/3)^16 / 17 ~
// 1.4e-9 relative; two terms more than log_mant_exp_fg's, whose |t| <= 0.2).  n / d >= 1.5 keeps the result >= 0.4
// whatever en - ed: no cancellation between e ln 2 and log(mn / md).
template <int G>
GEOOPS_F32_AI void log_ratio_fg(const FVec (&n)[G], const FVec (&d)[G], FVec (&out)[G]) {
  FVec mn[G], md[G], e[G], t[G], t2[G], p[G];
  GEOOPS_G {
    mn[g] = FVec(_mm512_getmant_ps(n[g], _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src));
    md[g] = FVec(_mm512_getmant_ps(d[g], _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src));
    e[g] = FVec(_mm512_getexp_ps(n[g])) - FVec(_mm512_getexp_ps(d[g]));
  }
  GEOOPS_G t[g] = (mn[g] - md[g]) / (mn[g] + md[g]);
  GEOOPS_G t2[g] = t[g] * t[g];
  GEOOPS_G p[g] = at::vec::fmadd(FVec(1.f / 15.f), t2[g], FVec(1.f / 13.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 11.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 9.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 7.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 5.f));
  GEOOPS_G p[g] = at::vec::fmadd(p[g], t2[g], FVec(1.f / 3.f));
  GEOOPS_G {
    const FVec lm = at::vec::fmadd(FVec(2.f) * t[g] * t2[g], p[g], FVec(2.f) * t[g]);  // log(mn / md) = 2t + 2t^3 p
    out[g] = at::vec::fmadd(e[g], FVec(0.693145751953125f), at::vec::fmadd(e[g], FVec(1.42860682030941723e-06f), lm));
  }
}
#endif

// AVX-512 (session 42): 1 + w = 1 + 2s(1 + s)/q = (1 + s)^2 / q (q = 1 - s^2), so log1p(w) = log((1 + s)^2 / q) by
// log_ratio_fg: one division where 1/q (estimate and Newton step), the products of w, 1 + w and log1p_big_fg's
// normalisation and quotient took more operations per vector.  The ratio's rounding: (1 + s)^2 as one FMA (~1.5 2^-24
// relative) against s(1 + s), 2s, the reciprocal, the product and 1 + w before (worst rows of test_f32_atanc_log_ratio
// 1.8-2.4e-7 against 2.5-2.8e-7; (1 + s) rounded and then squared gave 3.0e-7); q is the caller's (the double terms'
// accurately rounded 1 + z): the cancelling 1 - s^2 is still never formed in float.  s = vsqrtps
// (correctly rounded) and the final 1/s a division, in place of the reciprocal square root's estimate, its Newton step
// and s = s^2 (1/s) (~6 multiply-class operations per vector; the divider is otherwise idle here).
template <int G>
GEOOPS_F32_AI void atanc_neg_fg(const FVec (&z)[G], const FVec (&q)[G], FVec (&out)[G]) {
  const FVec cut(stereo::series_cut<float>()), zero(0.f), lo(stereo::min_den<float>());
  FVec s2[G], s[G], w[G], l[G];
  GEOOPS_G s2[g] = max_c(z[g].neg(), cut);
#if defined(CPU_CAPABILITY_AVX512)
  FVec qc[G];
  GEOOPS_G {
    s[g] = s2[g].sqrt();
    // (1 + s)^2 as 1 + s (2 + s), one FMA: ~1.5 2^-24 relative where (1 + s) squared after its rounding doubled it
    // (stereo::clamp_q: only q <= 0 takes min_den)
    w[g] = at::vec::fmadd(s[g], FVec(2.f) + s[g], FVec(1.f)), qc[g] = sel_le(q[g], zero, q[g], lo);
    // (1 + s)^2 = q + 2s(1 + s) only while q = 1 - s^2: where q was clamped (points on or outside the boundary) the
    // ratio is (q + 2s(1 + s)) / q as in every other path (the double terms, the fused blocks, the reference's
    // clamp regime), else this path's values there moved by ~log(2s / (1 + s)) (review, session 42)
    w[g] = sel_le(q[g], zero, w[g], at::vec::fmadd(FVec(2.f) * s[g], FVec(1.f) + s[g], qc[g]));
  }
  log_ratio_fg<G>(w, qc, l);
  GEOOPS_G out[g] = sel_le(z[g], cut.neg(), stereo::atanc_series(z[g]), FVec(0.5f) * l[g] / s[g]);
#else
  FVec rs[G];
  GEOOPS_G rs[g] = rsqrt_nr(s2[g]);
  GEOOPS_G s[g] = s2[g] * rs[g];
  GEOOPS_G w[g] = FVec(2.f) * s[g] * (FVec(1.f) + s[g]) * rcp_nr(sel_le(q[g], zero, q[g], lo));  // clamp_q
  log1p_big_fg<G>(w, l);
  GEOOPS_G out[g] = sel_le(z[g], cut.neg(), stereo::atanc_series(z[g]), FVec(0.5f) * l[g] * rs[g]);
#endif
}
GEOOPS_F32_AI FVec atanc_neg_f(const FVec& z, const FVec& q) {
  FVec out[1];
  return atanc_neg_fg<1>(as1(z), as1(q), out), out[0];
}

// expmap0's lanes all in float: |u|^2 as float FMAs (no cancelling term: the
// coefficient tanh(s)/s depends on |u|^2 only through s, with a condition number <= 1), z = k |u|^2, the hard-lane
// check as lanes() (z < cut, z and q finite in float: a row whose float |u|^2 overflows takes the double path).
// XC: the rows' columns (ArrCols or RegCols below); kk: the k of these kF rows.
// G groups of rows: XF xf(g, j) the float column j of group g; kk + kF g the k of group g.
template <int D, int G, typename XF>
GEOOPS_F32_AI bool lanes_expmap0_fg(const XF& xf, const double* kk, FVec (&a)[G]) {
  FVec xx[G], z[G];
  OkMask ok;
  GEOOPS_G xx[g] = FVec(0.f);
  for (int j = 0; j < D; ++j) {
    GEOOPS_G {
      const FVec xv = xf(g, j);
      xx[g] = at::vec::fmadd(xv, xv, xx[g]);
    }
  }
  GEOOPS_G {
    const FVec k = narrow(DVec::loadu(kk + kF * g), DVec::loadu(kk + kF * g + kD));
    z[g] = k * xx[g];
    // (1 + z < 1e30 follows from z < cut: no check of q needed)
    ok.lt(z[g], FVec(stereo::series_cut<float>())), ok.gt(z[g], FVec(-1e30f));
  }
  if (!ok.all()) return false;
  tanc_neg_fg<G>(z, a);
  return true;
}
template <int D, typename XC>
inline bool lanes_expmap0_f(const XC& xc, const double* kk, FVec& a) {
  FVec aa[1];
  if (!lanes_expmap0_fg<D, 1>([&](int, int j) { return xc.f(j); }, kk, aa)) return false;
  a = aa[0];
  return true;
}

#define GEOOPS_F32_PASS __attribute__((noinline, optimize("no-trapping-math")))
// 1. The NB rows into SoA float lanes.
template <int D, int NB, bool HAS_Y>
GEOOPS_F32_PASS void deinterleave(const float* __restrict xb, const float* __restrict yb, float (&xs)[D][NB],
                                  float (&ys)[HAS_Y ? D : 1][NB]) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (perm_rows(D)) {
    deint_v<D, NB>(xb, xs);
    if constexpr (HAS_Y) deint_v<D, NB>(yb, ys);
    return;
  }
#endif
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    for (int j = 0; j < D; ++j) {
      xs[j][b] = xb[b * D + j];
      if (HAS_Y) ys[j][b] = yb[b * D + j];
    }
  }
}
#undef GEOOPS_F32_PASS

// The columns of kF rows for lanes_core: f(j) column j as floats, d(j, h) its half h widened to double.
// ArrCols: from the SoA lanes of a block at offset o; RegCols: from registers (stereographic_rows_f32_reg.h).
template <int D, int NB>
struct ArrCols {
  const float (&xs)[D][NB];
  int o;
  FVec f(int j) const { return FVec::loadu(&xs[j][o]); }
  DVec d(int j, int h) const { return widen(&xs[j][o + h * kD]); }
};

// |x|^2 and |y|^2 of G float vectors of rows in double halves (xd(g, j, h): column j's half h widened), one FMA
// chain per half in column order: the row sums of lanes_mob_g and lanes_dist_fg.
template <int D, int G, typename XD, typename YD>
GEOOPS_F32_AI void sq_sums_g(const XD& xd, const YD& yd, DVec (&xx)[G][2], DVec (&yy)[G][2]) {
  GEOOPS_G for (int h = 0; h < 2; ++h) xx[g][h] = yy[g][h] = DVec(0.0);
  for (int j = 0; j < D; ++j) {
    for (int h = 0; h < 2; ++h) {
      GEOOPS_G {
        const DVec xv = xd(g, j, h);
        xx[g][h] = at::vec::fmadd(xv, xv, xx[g][h]);
        const DVec yv = yd(g, j, h);
        yy[g][h] = at::vec::fmadd(yv, yv, yy[g][h]);
      }
    }
  }
}

// mobius_add, expmap and logmap with their Mobius terms regrouped so that nothing cancels for k <= 0
// (the hyperbolic case), all in float but for 1 + k|x|^2 and 1 + k|y|^2 (row sums and the term in double, rounded
// once).  With p_x = 1 + k|x|^2, p_y = 1 + k|y|^2 and w = x + y:
//   1 - 2k<x,y> - k|y|^2 = p_x - k|w|^2,   1 - 2k<x,y> + k^2|x|^2|y|^2 = p_x p_y - k|w|^2
// (expand |w|^2 = |x|^2 + 2<x,y> + |y|^2), and logmap's (-x) + y denominator is p_x p_y - k|x - y|^2.  For k <= 0
// both sides are sums of non-negative terms: each rounded float operation adds at most 2^-24 relative to its own
// result, so num and den come out within ~(D + 4) 2^-24 relative (w_j = x_j + t u_j is one FMA, one rounding of the
// exact value; |w|^2 D FMAs of positive terms; -k|w|^2 one product, k rounded to float; the sum of two non-negative
// terms one rounding), where the double terms (lanes_core_g's, used without AVX-512 or with GEOOPS_STEREO_F32_MOB=0)
// round once (2^-24) but spend ~56 double operations and ~43 conversions per 16 rows on them (expmap, D = 2).  For k > 0 (spherical) num may cancel: its absolute error is
// then ~(D + 4) 2^-24 (p_x + k|w|^2), i.e. relative to the output's terms (the test's tolerance), not to num.
// expmap's y = t u (t = tanc(z)/p_x rounded to float): p_y = 1 + k t^2|u|^2 in double for that float t, rounded once
// (the double terms are those of the float y = t u too; sech^2(s) from the tanc's exp(-2s) instead measured up to
// 0.17 relative error on rows whose y lies within ~1e-10 of the boundary: the float t then misses |y| by an ulp, and
// num, den must be those of the float y).
// expmap's z = k|u|^2 / p_x^2 (k|u|^2 from the double sum, rounded once) and its tanc through tanc_neg_fg's QUOT form
// (session 30: t within ~3 float ulps, as with the double terms; the write a x + b u amplifies t's error where it
// cancels).
// A lane whose float terms leave (-1e30, 1e30) (|w|^2 overflow, ...) is hard: the block takes the double path.
// mobius_add (session 39): so is a lane with a point beyond the equator (k|x|^2 or k|y|^2 >= 1: p_x or p_y >= 2):
// there p_x - k|w|^2 and p_x p_y - k|w|^2 cancel far beyond the eager reference's 1 - 2k<x,y> - k|y|^2 (float32
// 3e-4 against its 5e-8 at |x| = 300, k = 0.5; the double terms, GEOOPS_STEREO_F32_MOB=0, round each term once).
template <int OP, int D, int G, typename XF, typename XD, typename YF, typename YD>
GEOOPS_F32_AI bool lanes_mob_g(const XF& xf, const XD& xd, const YF& yf, const YD& yd, const double* kk,
                               FVec (&a)[G], FVec (&b)[G]) {
  using namespace geoops::stereo;
  const DVec one(1.0);
  DVec xx[G][2], yy[G][2];
  sq_sums_g<D, G>(xd, yd, xx, yy);
  FVec px[G], py[G], kf[G], s2[G];  // s2: |w|^2 (mobius_add), |x - y|^2 (logmap), k|u|^2 (expmap)
  GEOOPS_G {
    DVec k[2], p[2], q[2];
    for (int h = 0; h < 2; ++h) {
      k[h] = DVec::loadu(kk + kF * g + h * kD);
      p[h] = at::vec::fmadd(k[h], xx[g][h], one);
      if constexpr (OP != EXPMAP) q[h] = at::vec::fmadd(k[h], yy[g][h], one);
    }
    px[g] = narrow(p[0], p[1]), kf[g] = narrow(k[0], k[1]);
    if constexpr (OP != EXPMAP) py[g] = narrow(q[0], q[1]);
  }
  if constexpr (OP == EXPMAP) {
    // expmap: s2 = k|u|^2 from the double sum, rounded once (as the double terms' z; a float sum added D roundings
    // to z and so to t)
    GEOOPS_G {
      DVec ku[2];
      for (int h = 0; h < 2; ++h) ku[h] = DVec::loadu(kk + kF * g + h * kD) * yy[g][h];
      s2[g] = narrow(ku[0], ku[1]);
    }
  } else {
    GEOOPS_G s2[g] = FVec(0.f);
    for (int j = 0; j < D; ++j) {
      GEOOPS_G {
        const FVec xv = xf(g, j), yv = yf(g, j);
        const FVec w = OP == MOBIUS_ADD ? xv + yv : xv - yv;
        s2[g] = at::vec::fmadd(w, w, s2[g]);
      }
    }
  }
  const FVec lo(min_den<float>());
  OkMask ok;
  if constexpr (OP == MOBIUS_ADD) {
    GEOOPS_G {
      const FVec kw = kf[g] * s2[g];
      const FVec num = px[g] - kw, den = max_c(at::vec::fmsub(px[g], py[g], kw), lo);
      const FVec r = rcp_cr(den);
      a[g] = num * r, b[g] = px[g] * r;
      ok.fin(num), ok.fin(den), ok.fin(px[g]), ok.fin(kw);
      ok.lt(px[g], FVec(2.f)), ok.lt(py[g], FVec(2.f));  // (session 39: see the comment above)
    }
    return ok.all();
  } else if constexpr (OP == LOGMAP) {
    FVec z[G], q[G], v[G], u0[G], u1[G];
    GEOOPS_G {
      const FVec kd = kf[g] * s2[g];
      const FVec den = max_c(at::vec::fmsub(px[g], py[g], kd), lo);
      const FVec rden = rcp_cr(den);
      const FVec pc = max_c(px[g], lo);
      // z as one division (session 47): z heads the atanc's chain (sqrt, log ratio), where kd * rden waited on
      // rcp_cr's estimate and its four dependent FMAs (vdivps ~11 cycles); q and u1, off that chain, keep rden (a
      // division for each of the three measured no faster than before: the divider's throughput).  One process per
      // build, 1 thread, AMD EPYC (Zen 4) under load: 0.95x the time at D = 5, 0.99x at D = 2
      z[g] = kd / den, q[g] = px[g] * py[g] * rden;
      u0[g] = pc * z[g], u1[g] = (pc * px[g] * rden).neg();
      ok.fin(kd), ok.fin(u0[g]), ok.fin(u1[g]);  // (rden: in (0, 1e15] or NaN, and then z fails below)
      ok.lt(z[g], FVec(series_cut<float>())), ok.gt(z[g], FVec(-1e30f)), ok.lt(q[g], FVec(1e30f));
      ok.x_form(px[g], py[g]);
    }
    if (!ok.all()) return false;
    atanc_neg_fg<G>(z, q, v);
    GEOOPS_G a[g] = v[g] * u0[g], b[g] = v[g] * u1[g];
    return true;
  } else {
    static_assert(OP == EXPMAP, "mobius_add, expmap, logmap");
    FVec hh[G], z[G], v[G];
    GEOOPS_G {
      hh[g] = rcp_div(max_c(px[g], lo));
      z[g] = s2[g] * hh[g] * hh[g];
      ok.fin(px[g]), ok.gt(s2[g], FVec(-1e30f));  // (hh: in (0, 1e15] for a px that passes)
      ok.lt(z[g], FVec(series_cut<float>())), ok.gt(z[g], FVec(-1e30f));
    }
    if (!ok.all()) return false;
    tanc_neg_fg<G, true>(z, v);
    GEOOPS_G {
      const FVec t = hh[g] * v[g];  // y = t u
      DVec td[2], q[2];
      widen2(t, td[0], td[1]);
      for (int h = 0; h < 2; ++h) {  // p_y = 1 + k t^2 |u|^2 for this float t (see above)
        q[h] = at::vec::fmadd(DVec::loadu(kk + kF * g + h * kD) * (td[h] * td[h]), yy[g][h], one);
      }
      py[g] = narrow(q[0], q[1]);
      FVec w2(0.f);
      for (int j = 0; j < D; ++j) {
        const FVec w = at::vec::fmadd(t, yf(g, j), xf(g, j));
        w2 = at::vec::fmadd(w, w, w2);
      }
      const FVec kw = kf[g] * w2;
      const FVec num = px[g] - kw, den = max_c(at::vec::fmsub(px[g], py[g], kw), lo);
      const FVec r = rcp_div(den);
      a[g] = num * r, b[g] = px[g] * r * t;
      ok.fin(kw), ok.fin(a[g]), ok.fin(b[g]);
    }
    return ok.all();
  }
}

// dist (session 40): out = 2 |s| atanc(k|s|^2, q) with |s|^2 = |x - y|^2 / den (stereo_math.h fwd, case DIST), from
// logmap's float Mobius terms (lanes_mob_g): p_x = 1 + k|x|^2, p_y = 1 + k|y|^2 from the double sums, rounded once;
// |x - y|^2 as D float FMAs of the float differences (exact for close pairs: Sterbenz); den = p_x p_y - k|x - y|^2
// (one fmsub), rden = 1/den, z = k|x - y|^2 rden, q = p_x p_y rden (= 1 + z, formed without the cancellation of
// 1 + z near z = -1), ss = |x - y|^2 rden and out = 2 sqrt(ss) v with v = atanc_neg_fg(z, q) and sqrt vsqrtps (exact;
// sqrt(0) = 0 for x = y).  For k <= 0 every term of den is non-negative (p_x, p_y > 0: the lanes with a point on or
// beyond the boundary, p <= 0 in float, are hard), so den, q, ss each come out within ~(D + 4) 2^-24 relative; for
// k > 0 a lane that passes has z < series cut, so den >= 20 k|x - y|^2 (no cancellation either).  dist's error is a
// few float ulps here (<= 3.3e-7 measured, tests: test_f32_register_pass_dist*), where the double path (the
// rows-on-lanes blocks: den = 1 + 2k<x,y> + k^2|x|^2|y|^2 in double, which cancels for close pairs near the boundary)
// reaches 4e-5.  Hard lanes (the block takes the double path): NaN, p_x or p_y <= 0, k|x - y|^2, z, q or ss beyond
// float range, z >= series cut (k > 0 beyond the series), and |x - y| tiny but not 0 (OkMask::normal_or_zero: its
// float squares would lose digits).  logmap_y_form does not concern dist: only |s| enters, not the form of s's
// numerator.
template <int D, int G, typename XF, typename XD, typename YF, typename YD>
GEOOPS_F32_AI bool lanes_dist_fg(const XF& xf, const XD& xd, const YF& yf, const YD& yd, const double* kk,
                                 FVec (&a)[G]) {
  using namespace geoops::stereo;
  const DVec one(1.0);
  DVec xx[G][2], yy[G][2];
  sq_sums_g<D, G>(xd, yd, xx, yy);
  FVec px[G], py[G], kf[G], s2[G], wb[G];
  GEOOPS_G {
    DVec k[2], p[2], q[2];
    for (int h = 0; h < 2; ++h) {
      k[h] = DVec::loadu(kk + kF * g + h * kD);
      p[h] = at::vec::fmadd(k[h], xx[g][h], one);
      q[h] = at::vec::fmadd(k[h], yy[g][h], one);
    }
    px[g] = narrow(p[0], p[1]), py[g] = narrow(q[0], q[1]), kf[g] = narrow(k[0], k[1]);
  }
  GEOOPS_G s2[g] = FVec(0.f), wb[g] = FVec(0.f);
  for (int j = 0; j < D; ++j) {
    GEOOPS_G {
      const FVec w = xf(g, j) - yf(g, j);
      s2[g] = at::vec::fmadd(w, w, s2[g]);
      wb[g] = wb[g] | w;
    }
  }
  const FVec lo(min_den<float>()), zero(0.f);
  OkMask ok;
  FVec z[G], q[G], ss[G], v[G];
  GEOOPS_G {
    const FVec kd = kf[g] * s2[g];
    const FVec pp = px[g] * py[g];
    const FVec rden = rcp_cr(max_c(at::vec::fmsub(px[g], py[g], kd), lo));
    z[g] = kd * rden, q[g] = pp * rden, ss[g] = s2[g] * rden;
    ok.gt(px[g], zero), ok.gt(py[g], zero), ok.fin(kd);  // (NaN lanes fail here)
    ok.lt(z[g], FVec(series_cut<float>())), ok.gt(z[g], FVec(-1e30f)), ok.lt(q[g], FVec(1e30f));
    ok.lt(ss[g], FVec(1e30f)), ok.normal_or_zero(s2[g], ss[g], wb[g]);
  }
  if (!ok.all()) return false;
  atanc_neg_fg<G>(z, q, v);
  GEOOPS_G a[g] = FVec(2.f) * ss[g].sqrt() * v[g];
  return true;
}

// 2. G float vectors of rows (group g: column j as floats xf(g, j), its half h widened to double xd(g, j, h), y's
// yf(g, j) and yd(g, j, h); k at kk + kF g): the coefficients a[g], b[g]; false on a hard lane of any group.
// mob: mob_terms() (mobius_add / expmap / logmap through lanes_mob_g).
template <int OP, int D, int G, typename XF, typename XD, typename YF, typename YD>
GEOOPS_F32_AI bool lanes_core_g(const XF& xf, const XD& xd, const YF& yf, const YD& yd, const double* kk,
                                FVec (&a)[G], FVec (&b)[G], bool mob) {
  using namespace geoops::stereo;
  if constexpr (OP == DIST) {  // (session 40: the register pass only; its own float terms, whatever mob)
    GEOOPS_G b[g] = FVec(0.f);
    return lanes_dist_fg<D, G>(xf, xd, yf, yd, kk, a);
  }
  if constexpr (OP == MOBIUS_ADD || OP == EXPMAP || OP == LOGMAP) {
    // The ops without float Mobius terms on this build keep the double ones (kOpPaths: AVX2's expmap, session 25).
    if constexpr (!float_mob_op(OP)) mob = false;
    if (mob) return lanes_mob_g<OP, D, G>(xf, xd, yf, yd, kk, a, b);
  } else {
    (void)mob;
  }
  if constexpr (OP == EXPMAP0) {
    GEOOPS_G b[g] = FVec(0.f);
    return lanes_expmap0_fg<D, G>(xf, kk, a);
  }
  constexpr bool HAS_Y = op_has_y(OP);
  constexpr bool CALL = OP != MOBIUS_ADD;
  const DVec one(1.0), two(2.0), lo(min_den<double>());
  auto cl = [&](const DVec& v) { return clamp_lo_d(v, lo); };  // as v > lo ? v : lo
  DVec t[G][5][2], e[G][3][2];
  DVec xx[G][2], yy[G][2], xy[G][2], dd[G][2];
  GEOOPS_G for (int h = 0; h < 2; ++h) xx[g][h] = yy[g][h] = xy[g][h] = dd[g][h] = DVec(0.0);
  for (int j = 0; j < D; ++j) {
    for (int h = 0; h < 2; ++h) {
      GEOOPS_G {
        const DVec xv = xd(g, j, h);
        xx[g][h] = xx[g][h] + xv * xv;
        if (HAS_Y) {
          const DVec yv = yd(g, j, h), d = xv - yv;
          yy[g][h] = yy[g][h] + yv * yv, xy[g][h] = xy[g][h] + xv * yv, dd[g][h] = dd[g][h] + d * d;
        }
      }
    }
  }
  for (int h = 0; h < 2; ++h) {
    GEOOPS_G {
      const DVec k = DVec::loadu(kk + kF * g + h * kD);
      const DVec &x2 = xx[g][h], &y2 = yy[g][h], &xy2 = xy[g][h];
      DVec(&tt)[5][2] = t[g];
      if (OP == MOBIUS_ADD) {
        const DVec den = one - two * k * xy2 + k * k * x2 * y2;
        tt[0][h] = one - two * k * xy2 - k * y2, tt[1][h] = one + k * x2, tt[2][h] = cl(den);
      } else if (OP == EXPMAP) {
        const DVec p = one + k * x2;
        tt[0][h] = cl(p), tt[1][h] = p, tt[2][h] = k * y2;
        e[g][0][h] = -two * k * xy2, e[g][1][h] = k * k * x2 * y2, e[g][2][h] = (k * y2).neg();
      } else if (OP == EXPMAP0 || OP == LOGMAP0) {
        tt[0][h] = k * x2, tt[1][h] = one + k * x2;
      } else if (OP == LOGMAP) {
        // (sub_den, as the fused blocks' staging: p_x p_y - k dd for k <= 0; session 42)
        const DVec nb1 = one + k * x2, den0 = sub_den(nb1 * (one + k * y2), x2, y2, xy2, dd[g][h], k);
        tt[0][h] = cl(den0), tt[1][h] = nb1, tt[2][h] = cl(nb1);
        tt[3][h] = k * dd[g][h], tt[4][h] = one + k * y2;
      }
    }
  }
  constexpr int NT = OP == LOGMAP ? 5 : (OP == EXPMAP0 || OP == LOGMAP0 ? 2 : 3);
  FVec f[G][5], z[G], q[G], u0[G], u1[G];
  OkMask okg[G];
  GEOOPS_G for (int i = 0; i < NT; ++i) f[g][i] = narrow(t[g][i][0], t[g][i][1]);
  GEOOPS_G {
    z[g] = FVec(0.f), q[g] = FVec(1.f);
    if (OP == MOBIUS_ADD) {
      okg[g].fin(f[g][0]), okg[g].fin(f[g][1]), okg[g].fin(f[g][2]);
    } else if (OP == EXPMAP) {
      const FVec hh = rcp_cr(f[g][0]);
      z[g] = f[g][2] * hh * hh, u0[g] = hh, u1[g] = f[g][1];
      okg[g].fin(hh), okg[g].fin(f[g][1]);
    } else if (OP == EXPMAP0 || OP == LOGMAP0) {
      z[g] = f[g][0], q[g] = f[g][1];
    } else if (OP == LOGMAP) {
      const FVec rden = rcp_cr(f[g][0]);
      z[g] = f[g][3] * rden, q[g] = f[g][1] * f[g][4] * rden;
      // (q < 1e30 is checked where it does not follow from z < cut: logmap's q = p_x p_y / den; checked before
      // ball_q, which turns a NaN q of an x outside the ball into 0: such a row (p_x p_y overflowing float, 1 / den
      // rounded to 0) still takes the double path)
      okg[g].lt(q[g], FVec(1e30f));
      q[g] = ball_q(f[g][1], q[g]);
      u0[g] = f[g][2] * z[g], u1[g] = (f[g][2] * f[g][1] * rden).neg();
      okg[g].fin(rden), okg[g].fin(u0[g]), okg[g].fin(u1[g]);
      okg[g].x_form(f[g][1], f[g][4]);
    }
    if (CALL) okg[g].lt(z[g], FVec(series_cut<float>())), okg[g].gt(z[g], FVec(-1e30f));
    // (expmap's q is 1, expmap0's / logmap0's 1 + k|x|^2 rounded from the double whose k|x|^2 rounded to z < cut)
  }
  for (int g = 1; g < G; ++g) okg[0].also(okg[g]);
  if (!okg[0].all()) return false;
  GEOOPS_G b[g] = FVec(0.f);
  if (OP == MOBIUS_ADD) {
    GEOOPS_G {
      const FVec r = rcp_cr(f[g][2]);
      a[g] = f[g][0] * r, b[g] = f[g][1] * r;
    }
    return true;
  }
  FVec v[G];
  if (OP == LOGMAP || OP == LOGMAP0) {
    atanc_neg_fg<G>(z, q, v);
  } else {
    GEOOPS_G v[g] = tanc_neg(z[g]);
  }
  GEOOPS_G {
    if (OP == EXPMAP) {
      const FVec tf = u0[g] * v[g];
      DVec td[2];
      widen2(tf, td[0], td[1]);
      DVec den[2], num[2];
      for (int h = 0; h < 2; ++h) {
        den[h] = cl(one + td[h] * (e[g][0][h] + td[h] * e[g][1][h]));
        num[h] = one + td[h] * (e[g][0][h] + td[h] * e[g][2][h]);
      }
      const FVec r = rcp_cr(narrow(den[0], den[1]));
      a[g] = narrow(num[0], num[1]) * r, b[g] = u1[g] * r * tf;
    } else if (OP == LOGMAP) {
      a[g] = v[g] * u0[g], b[g] = v[g] * u1[g];
    } else {
      a[g] = v[g];
    }
  }
  return true;
}
// One float vector of rows (columns xc, yc; k at kk): lanes_core_g with G = 1.
template <int OP, int D, typename XC, typename YC>
GEOOPS_F32_AI bool lanes_core(const XC& xc, const YC& yc, const double* kk, FVec& a, FVec& b, bool mob) {
  FVec aa[1], bb[1];
  if (!lanes_core_g<OP, D, 1>([&](int, int j) { return xc.f(j); }, [&](int, int j, int h) { return xc.d(j, h); },
                              [&](int, int j) { return yc.f(j); }, [&](int, int j, int h) { return yc.d(j, h); }, kk,
                              aa, bb, mob)) {
    return false;
  }
  a = aa[0], b = bb[0];
  return true;
}

// lanes_core on the rows at offset o of a block's SoA lanes, the coefficients stored to ca, cb.
template <int OP, int D, int NB>
inline bool lanes(const float (&xs)[D][NB], const float (&ys)[stereo::op_has_y(OP) ? D : 1][NB], const double* kk,
                  int o, float* ca, float* cb, bool mob) {
  constexpr int DY = stereo::op_has_y(OP) ? D : 1;
  FVec a, b;
  if (!lanes_core<OP, D>(ArrCols<D, NB>{xs, o}, ArrCols<DY, NB>{ys, o}, kk + o, a, b, mob)) return false;
  a.store(ca + o);
  b.store(cb + o);
  return true;
}

template <int OP, int D, int NB>
inline bool block_fused(const float* xb, const float* yb, float* ob, const double* kk, bool mob, bool g2) {
  static_assert(NB <= kMaxRows && NB % kF == 0, "whole float vectors");
  constexpr bool HAS_Y = stereo::op_has_y(OP);
  alignas(64) float xs[D][NB], ys[HAS_Y ? D : 1][NB];
  alignas(64) float ca[NB], cb[NB];
  deinterleave<D, NB, HAS_Y>(xb, yb, xs, ys);
  (void)g2;
#if defined(CPU_CAPABILITY_AVX2)
  if (NB % (2 * kF) == 0 && g2) {
    // AVX2 (session 26): the block's vectors two at a time through lanes_core_g<G = 2> (each step of the chain for
    // both before the next: two independent chains in the out-of-order window; the columns are loads from the
    // scratch lanes, so the second chain costs no spills of live columns); the same operations and roundings per
    // lane as one at a time (G does not change them), so the same bits.
    constexpr int DY = HAS_Y ? D : 1;
    for (int o = 0; o < NB; o += 2 * kF) {
      FVec a[2], b[2];
      if (!lanes_core_g<OP, D, 2>([&](int g, int j) { return FVec::loadu(&xs[j][o + kF * g]); },
                                  [&](int g, int j, int h) { return widen(&xs[j][o + kF * g + h * kD]); },
                                  [&](int g, int j) { return FVec::loadu(&ys[j < DY ? j : 0][o + kF * g]); },
                                  [&](int g, int j, int h) { return widen(&ys[j < DY ? j : 0][o + kF * g + h * kD]); },
                                  kk + o, a, b, mob)) {
        return false;
      }
      for (int g = 0; g < 2; ++g) a[g].store(ca + o + kF * g), b[g].store(cb + o + kF * g);
    }
    write_rows<OP, D, NB>(xb, yb, ob, ca, cb);
    return true;
  }
#endif
  for (int o = 0; o < NB; o += kF) {
    if (!lanes<OP, D, NB>(xs, ys, kk, o, ca, cb, mob)) return false;
  }
  write_rows<OP, D, NB>(xb, yb, ob, ca, cb);
  return true;
}

// block<OP, D, NB> (the eight loops, prefer_unfused in mode 1: they use the double Mobius terms) or
// block_fused<OP, D, NB> for the runtime D and nb rows (nb == NB, else false).
// m: mode(), lm: lane_mode(), both read once per call (switches(); a getenv per block cost more than the block's
// loops).
template <int OP, int NB>
inline bool run(int m, int lm, int64_t D, const float* xb, const float* yb, float* ob, int nb, const double* kk) {
  if (nb != NB) return false;
  const bool g2 = (m & kModeG1) == 0;
  m &= ~kModeG1;
  if (m == 1 && prefer_unfused(OP, D)) {
    switch (D) {
      case 1: return block<OP, 1, NB>(xb, yb, ob, kk);
      case 2: return block<OP, 2, NB>(xb, yb, ob, kk);
      case 3: return block<OP, 3, NB>(xb, yb, ob, kk);
      case 4: return block<OP, 4, NB>(xb, yb, ob, kk);
      case 5: return block<OP, 5, NB>(xb, yb, ob, kk);
      case 6: return block<OP, 6, NB>(xb, yb, ob, kk);
      case 7: return block<OP, 7, NB>(xb, yb, ob, kk);
      case 8: return block<OP, 8, NB>(xb, yb, ob, kk);
    }
    return false;
  }
  const bool mob = lm != 0;
  switch (D) {
    case 1: return block_fused<OP, 1, NB>(xb, yb, ob, kk, mob, g2);
    case 2: return block_fused<OP, 2, NB>(xb, yb, ob, kk, mob, g2);
    case 3: return block_fused<OP, 3, NB>(xb, yb, ob, kk, mob, g2);
    case 4: return block_fused<OP, 4, NB>(xb, yb, ob, kk, mob, g2);
    case 5: return block_fused<OP, 5, NB>(xb, yb, ob, kk, mob, g2);
    case 6: return block_fused<OP, 6, NB>(xb, yb, ob, kk, mob, g2);
    case 7: return block_fused<OP, 7, NB>(xb, yb, ob, kk, mob, g2);
    case 8: return block_fused<OP, 8, NB>(xb, yb, ob, kk, mob, g2);
    case 9: return block_fused<OP, 9, NB>(xb, yb, ob, kk, mob, g2);
    case 10: return block_fused<OP, 10, NB>(xb, yb, ob, kk, mob, g2);
    case 11: return block_fused<OP, 11, NB>(xb, yb, ob, kk, mob, g2);
    case 12: return block_fused<OP, 12, NB>(xb, yb, ob, kk, mob, g2);
    case 13: return block_fused<OP, 13, NB>(xb, yb, ob, kk, mob, g2);
    case 14: return block_fused<OP, 14, NB>(xb, yb, ob, kk, mob, g2);
    case 15: return block_fused<OP, 15, NB>(xb, yb, ob, kk, mob, g2);
    case 16: return block_fused<OP, 16, NB>(xb, yb, ob, kk, mob, g2);
  }
  return false;
}

}  // namespace f32rows
#undef GEOOPS_F32_FIN
}  // namespace cpu
}  // namespace geoops
