// Float fast path of the short-row forward (stereographic_lanes.cpp only; include it after
// geoops/cpu_capability.h): fp32 rows of D <= 8 elements stored back to back, the ops mobius_add,
// expmap, expmap0, logmap, logmap0.
//
// One block of <= 32 rows, three loops over the block while it is in L1, the row length D a template
// argument (so the loads/stores of a row are a fixed interleave the compiler vectorises, no gathers):
//   A. per row (rows on the SIMD lanes; deinterleaved into SoA lanes, then single-type loops): the row sums in double, and in double only the ADDITIVE terms
//      that cancel near the boundary (1 + k|x|^2, 1 + k|y|^2, the Mobius denominators and numerators);
//      each is then rounded once to float, and everything multiplicative (quotients, products, the
//      tanh/artanh arguments) is float;
//   B. the one tanc/atanc call in float lanes (SLEEF float tanh / log1p, 16 rows per AVX-512 vector);
//   C. the coefficients (float; for expmap the Mobius sum with t = tan_k(...)/|u|, whose denominator
//      1 - 2k t<x,u> + k^2 t^2 |x|^2|u|^2 cancels: double) and the writes out = a x + b y (+ c (x - y)).
// Products and quotients of accurately rounded values lose only a few float ulps, so the results stay
// within a few ulps of the double path (tests/test_stereographic_short.py: test_f32_fast_path_*).
// A block with a "hard" lane (the call's argument z >= the float series cut, i.e. k > 0 beyond the
// series; z or q or a float term out of float range; any NaN) returns false, and the caller runs the
// double path for that block (whose results are the previous ones, bit for bit).
// The formulas are those of geoops/stereo_math.h (fwd), regrouped: a change there must be mirrored
// here (the fp32 accuracy tests compare both against the fp64 reference).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "geoops/stereo_math.h"
#include "vec_math_inl.h"

namespace geoops {
namespace cpu {
namespace f32rows {

using FVec = at::vec::Vectorized<float>;
constexpr int kF = FVec::size();
constexpr int kMaxRows = 32;  // rows per block (the short-row block of stereographic_lanes.cpp)
static_assert(kMaxRows % kF == 0, "a block is whole float vectors");
constexpr int kMaxD = 8;

constexpr bool fast_op(int op) {
  return op == stereo::MOBIUS_ADD || op == stereo::EXPMAP || op == stereo::EXPMAP0 || op == stereo::LOGMAP ||
         op == stereo::LOGMAP0;
}

// Where the path runs: by default the five ops at D <= 8 except mobius_add at D >= 5.  Measured (session 8,
// 1 thread, 2^20 rows, A/B against the double path): 0.52-0.74x the time at D = 2, 0.73-0.89x at D = 5,
// 0.79-0.82x at D = 8 — but mobius_add at D = 5 took 1.29x (1 thread) / 1.11x (2 threads): the one loss, so it
// keeps the double path from D = 5 on.  GEOOPS_STEREO_F32_ROWS=0: off; =2: all five ops at D <= 8 (tests).
// Read per call.
inline int mode() {
  const char* e = std::getenv("GEOOPS_STEREO_F32_ROWS");
  if (!e || !*e) return 1;
  return e[0] == '0' ? 0 : (e[0] == '2' ? 2 : 1);
}
inline bool use(int op, int64_t D) {
  const int m = mode();
  if (m == 0 || !fast_op(op) || D > kMaxD) return false;
  return m == 2 || !(op == stereo::MOBIUS_ADD && D >= 5);
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
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    for (int j = 0; j < D; ++j) {
      xs[j][b] = xb[b * D + j];
      if (HAS_Y) ys[j][b] = yb[b * D + j];
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
      const double den0 = 1.0 + 2.0 * k * xy + k * k * xx * yy, nb1 = 1.0 + k * xx;
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
      s.u0[b] = f[2][b] * zb;            // a = atanc * p * k dd / den
      s.u1[b] = -f[2][b] * f[1][b] * rden;  // c = -atanc * p * (1 + k xx) / den
      ok = GEOOPS_F32_FIN(rden) & GEOOPS_F32_FIN(s.u0[b]) & GEOOPS_F32_FIN(s.u1[b]);
    }
    if (CALL) ok = ok & static_cast<int>(zb < cut) & static_cast<int>(zb > -1e30f) & static_cast<int>(qb < 1e30f);
    s.z[b] = zb, s.q[b] = qb;
    bad |= ok ^ 1;
  }
  return bad == 0;
}

// B. The call, in float lanes (SLEEF).
template <int OP, int NB>
inline void pass_b(Scratch& s) {
  constexpr bool ATANC = OP == stereo::LOGMAP || OP == stereo::LOGMAP0;
  // B. the call, in float lanes
  if (OP != stereo::MOBIUS_ADD) {
    for (int b = 0; b < NB; b += kF) {
      vecmath::eval_series_neg<ATANC>(FVec::loadu(s.z + b), FVec::loadu(s.q + b)).store(s.v + b);
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
#pragma omp simd
  for (int b = 0; b < NB; ++b) {
    for (int j = 0; j < D; ++j) {
      const float xv = xb[b * D + j];
      if (OP == LOGMAP) {
        ob[b * D + j] = ca[b] * xv + cb[b] * (xv - yb[b * D + j]);
      } else if (HAS_Y) {
        ob[b * D + j] = ca[b] * xv + cb[b] * yb[b * D + j];
      } else {
        ob[b * D + j] = ca[b] * xv;
      }
    }
  }
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

// block<OP, D, NB> for the runtime D (1 <= D <= kMaxD) and nb rows (nb == NB, else false).
template <int OP, int NB>
inline bool run(int64_t D, const float* xb, const float* yb, float* ob, int nb, const double* kk) {
  if (nb != NB) return false;
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

}  // namespace f32rows
#undef GEOOPS_F32_FIN
}  // namespace cpu
}  // namespace geoops
