// One register pass per 16 rows for the fp32 short-row forward (session 11; stereographic_lanes.cpp only, included
// after stereographic_rows_f32.h): mobius_add, expmap, expmap0, logmap, logmap0 at D <= kRegMaxD with AVX-512
// (D <= 8 since session 11, D = 9..16 since session 14: columns by cols16_t's transpose, one group at a time).
//
// The fused block (block_fused) deinterleaves a block's rows into SoA scratch lanes, computes the coefficients
// into two more scratch arrays and writes in a third loop; at D = 2 that structure alone (loads, deinterleave,
// write, no math) took ~1.5x the limit op (session 10's floor).  Here each 16 rows are D vectors loaded once,
// turned into D column vectors by permutes (cols16), and the whole row math runs on those registers
// (lanes_core, the same code and roundings as the fused path: row sums and the cancelling additive terms in
// double halves, everything else in float), then each coefficient vector is expanded to the rows' elements by
// one permute per output vector and combined with the x (and y) vectors (write16).  No scratch stores between
// the stages.  A block of 32 rows (the caller's block) is two such passes; a hard lane in either returns false
// before anything is written (the caller runs the double path for the block), as the fused path.
// GEOOPS_STEREO_F32_REG=0: the previous paths (A/B; read per call); =8: only at D <= 8 (session 13's dispatch).
// Session 15: D = 5..8 prefetch the rows 128 ahead (reg_loop's PF; GEOOPS_STEREO_F32_REG_PF=0: off).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace geoops {
namespace cpu {
namespace f32rows {

constexpr int kRegMaxD = 16;     // session 14: D = 9..16 too
constexpr int kRegNarrowD = 8;   // sessions 11-13's limit (GEOOPS_STEREO_F32_REG=8)

// 1 (unset): the register pass for all five ops at D <= kRegMaxD (session 11 kept expmap at D <= 2 on its
// eight-loop blocks; session 12's interleaved groups made the register pass faster there too); 2 (=2): the same
// (tests; it was "all five" when 1 was not); 8 (=8): only at D <= 8 (sessions 11-13; D = 9..16 then take the
// fused blocks or the double path as before, A/B); 0 (=0): off.  AVX-512 builds only (elsewhere 0).
inline int reg_mode() {
  const int r = reg_env();
#if defined(CPU_CAPABILITY_AVX512)
  return r;
#else
  return (void)r, 0;
#endif
}

// GEOOPS_STEREO_F32_REG_IL=0: the register pass's two 16-row groups one after the other (session 11's order, A/B);
// unset / other: interleaved (block_reg's IL).  Same results either way.  Read per call.
inline bool reg_il() {
  const char* e = std::getenv("GEOOPS_STEREO_F32_REG_IL");
  return !(e && e[0] == '0');
}

#if defined(CPU_CAPABILITY_AVX512)
// lanes_core's columns from registers.
template <int D>
struct RegCols {
  const __m512 (&c)[D];
  FVec f(int j) const { return FVec(c[j]); }
  DVec d(int j, int h) const {
    return DVec(h == 0 ? _mm512_cvtps_pd(_mm512_castps512_ps256(c[j]))
                       : _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c[j]), 1))));
  }
};

// Session 15: four 16-row groups (two of the caller's 32-row blocks) through lanes_core_g together where that
// measured faster than two: expmap0 / logmap0 at D <= 4, expmap / logmap at D <= 2 (the standalone loop,
// scripts/short_rows/bound.cpp, 1 thread, 2^20 rows: 0.85-0.92x the time of two groups; mobius_add no better, expmap /
// logmap at D = 4 slower streaming).  Same results bit for bit (the lane math does not depend on G).
template <int OP, int D>
constexpr bool reg_four(int NB) {
  return NB == 32 && (OP == stereo::EXPMAP0 || OP == stereo::LOGMAP0 ? D <= 4
                                                                     : (OP == stereo::EXPMAP || OP == stereo::LOGMAP) && D <= 2);
}
// GEOOPS_STEREO_F32_REG_G4=0: two groups as before (A/B; read per call by reg_loop).
inline bool reg_g4() {
  const char* e = std::getenv("GEOOPS_STEREO_F32_REG_G4");
  return !(e && e[0] == '0');
}

// IL (session 12): the block's 16-row groups through lanes_core_g together (G = NB / 16 chains interleaved step
// by step); !IL: one group after the other (session 11; GEOOPS_STEREO_F32_REG_IL=0).  Same results either way.
template <int OP, int D, int NB, bool IL>
inline __attribute__((always_inline)) bool block_reg(const float* __restrict xb, const float* __restrict yb,
                                                     float* __restrict ob, const double* __restrict kk, int inline_exp) {
  static_assert(NB % 16 == 0 && NB <= 2 * kMaxRows, "whole 16-row groups");
  constexpr bool HAS_Y = stereo::op_has_y(OP);
  constexpr int DY = HAS_Y ? D : 1;
  constexpr int G = NB / 16;
  FVec a[G], b[G];
  // The one-input ops interleave at D <= 4 only: at D = 5 expmap0 measured 3-6 % slower interleaved (its 2 x D column
  // registers and the chain's vectors spill), logmap0 the same; at D = 3 both 0.85-0.95x the time of one group
  // after the other, at D = 4 even (standalone loop, 1 thread, under load).  D > 8 (session 14): one group after
  // the other, each group's columns made just before its lane math (2 x 2 x D column registers would not fit).
  constexpr bool kIL = IL && (HAS_Y ? D <= kRegNarrowD : D <= 4);
  if constexpr (kIL) {
    __m512 xc[G][D], yc[G][DY];
    for (int g = 0; g < G; ++g) {
      cols16<D>(xb + 16 * D * g, xc[g]);
      if constexpr (HAS_Y) cols16<D>(yb + 16 * D * g, yc[g]);
    }
    if (!lanes_core_g<OP, D, G>([&](int g, int j) { return FVec(xc[g][j]); },
                                [&](int g, int j, int h) { return RegCols<D>{xc[g]}.d(j, h); },
                                [&](int g, int j) { return FVec(yc[g][j]); },
                                [&](int g, int j, int h) { return RegCols<DY>{yc[g]}.d(j, h); }, kk, a, b,
                                inline_exp)) {
      return false;
    }
  } else {
    for (int g = 0; g < G; ++g) {
      __m512 xc[D], yc[DY];
      cols16<D>(xb + 16 * D * g, xc);
      if constexpr (HAS_Y) cols16<D>(yb + 16 * D * g, yc);
      if (!lanes_core<OP, D>(RegCols<D>{xc}, RegCols<DY>{yc}, kk + 16 * g, a[g], b[g], inline_exp)) return false;
    }
  }
  for (int g = 0; g < G; ++g) {
    const int off = 16 * D * g;
    write16<OP, D>(xb + off, HAS_Y ? yb + off : yb, ob + off, a[g], b[g]);
  }
  return true;
}

// Session 15: software prefetch of the rows kPfRows ahead of the block (x, y for reading, out for writing) at
// D = 5..8.  The lane math between two blocks' loads is long (~200 ns per 32 rows at D = 5) and the rows are short,
// so the hardware prefetchers (which stop at each 4 KiB page: every ~13 blocks here) leave the block's loads to miss:
// standalone over 2^20 rows (streaming, 1 thread) the prefetch took expmap 129 -> 112, logmap 123 -> 98, mobius_add
// 106 -> 79, logmap0 88 -> 68, expmap0 70 -> 56 ns per 16 rows at D = 5 (128 rows ahead with out's lines for
// writing; 64 and 256 rows, or x / y alone, measured less).  A hint only: same values.  GEOOPS_STEREO_F32_REG_PF=0:
// no prefetch (A/B; read per chunk).
constexpr int kPfRows = 128, kPfLo = 5, kPfHi = 8;
inline bool reg_pf() {
  const char* e = std::getenv("GEOOPS_STEREO_F32_REG_PF");
  return !(e && e[0] == '0');
}
// The lines of the n bytes from p, q (if HAS_Y) for reading and from w for writing (prefetchw where the target has it).
template <bool HAS_Y, int N>
inline __attribute__((always_inline)) void prefetch_rows(const float* p, const float* q, float* w) {
#pragma GCC unroll 16
  for (int b = 0; b < N; b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + b, 0, 3);
    if constexpr (HAS_Y) __builtin_prefetch(reinterpret_cast<const char*>(q) + b, 0, 3);
    __builtin_prefetch(reinterpret_cast<char*>(w) + b, 1, 3);
  }
}

// The rows [begin, end) of x, y, out (D floats each, back to back) in blocks of NB rows from begin (the caller's
// blocks); k: per row (sk = 1) or kconst (sk = 0, NB copies).  A partial or declined block: fallback(i0, nb).
// PF: prefetch_rows of the block kPfRows ahead (while it lies in [begin, end)).
template <int OP, int D, int NB, bool IL, bool PF, typename F>
inline void reg_loop(int64_t begin, int64_t end, const float* x, const float* y, float* o, const double* k,
                     int64_t sk, const double* kconst, int inline_exp, F&& fallback) {
  constexpr bool HAS_Y = stereo::op_has_y(OP);
  constexpr bool G4 = IL && reg_four<OP, D>(NB);
  alignas(64) double k2[G4 ? 2 * NB : 1];  // kconst's value for 2 NB rows (kconst holds NB)
  const bool g4 = G4 && reg_g4();
  if (G4 && g4 && sk == 0) std::fill(k2, k2 + (G4 ? 2 * NB : 1), kconst[0]);
  for (int64_t i0 = begin; i0 < end; i0 += NB) {
    if constexpr (PF) {
      if (end - i0 >= kPfRows + NB) {
        const int64_t a = (i0 + kPfRows) * D;
        prefetch_rows<HAS_Y, NB * D * 4>(x + a, HAS_Y ? y + a : y, o + a);
      }
    }
    if constexpr (G4) {  // two blocks at once; a declined pair takes the blocks one by one below (same results)
      if (g4 && end - i0 >= 2 * NB &&
          block_reg<OP, D, 2 * NB, true>(x + i0 * D, HAS_Y ? y + i0 * D : y, o + i0 * D, sk == 0 ? k2 : k + i0,
                                         inline_exp)) {
        i0 += NB;
        continue;
      }
    }
    const int64_t nb = std::min<int64_t>(NB, end - i0);
    const double* kb = sk == 0 ? kconst : k + i0;
    if (nb == NB && block_reg<OP, D, NB, IL>(x + i0 * D, HAS_Y ? y + i0 * D : y, o + i0 * D, kb, inline_exp)) {
      continue;
    }
    fallback(i0, nb);
  }
}
#endif

// Whether the register pass takes a call of op (reg: reg_mode(), m: mode(), both read once per call by the
// caller): k one value or one per row (stride 1).
inline bool reg_takes(int op, int reg, int m, int64_t D, int64_t sk) {
  if (reg == 0 || m == 3 || D < 1 || D > (reg == 8 ? kRegNarrowD : kRegMaxD) || (sk != 0 && sk != 1)) return false;
  (void)op;  // (session 12: expmap at D <= 2 too, now faster here than in its eight-loop blocks)
  return true;
}

// reg_loop for the runtime D (reg_takes must hold).
template <int OP, int NB, typename F>
inline void reg_range(int64_t D, int64_t begin, int64_t end, const float* x, const float* y, float* o,
                      const double* k, int64_t sk, const double* kconst, int inline_exp, bool il, F&& fallback) {
#if defined(CPU_CAPABILITY_AVX512)
#define GEOOPS_REG_CASE(DD)                                                                              \
  return il ? reg_loop<OP, DD, NB, true, false>(begin, end, x, y, o, k, sk, kconst, inline_exp, fallback) \
            : reg_loop<OP, DD, NB, false, false>(begin, end, x, y, o, k, sk, kconst, inline_exp, fallback)
  // D = 5..8 (session 15): with the prefetch unless GEOOPS_STEREO_F32_REG_PF=0 (interleaved groups only)
#define GEOOPS_REG_CASE_PF(DD)                                                                        \
  if (il && reg_pf()) {                                                                               \
    return reg_loop<OP, DD, NB, true, true>(begin, end, x, y, o, k, sk, kconst, inline_exp, fallback); \
  }                                                                                                   \
  GEOOPS_REG_CASE(DD)
  switch (D) {
    case 1: GEOOPS_REG_CASE(1);
    case 2: GEOOPS_REG_CASE(2);
    case 3: GEOOPS_REG_CASE(3);
    case 4: GEOOPS_REG_CASE(4);
    case 5: GEOOPS_REG_CASE_PF(5);
    case 6: GEOOPS_REG_CASE_PF(6);
    case 7: GEOOPS_REG_CASE_PF(7);
    case 8: GEOOPS_REG_CASE_PF(8);
    case 9: GEOOPS_REG_CASE(9);
    case 10: GEOOPS_REG_CASE(10);
    case 11: GEOOPS_REG_CASE(11);
    case 12: GEOOPS_REG_CASE(12);
    case 13: GEOOPS_REG_CASE(13);
    case 14: GEOOPS_REG_CASE(14);
    case 15: GEOOPS_REG_CASE(15);
    case 16: GEOOPS_REG_CASE(16);
  }
#undef GEOOPS_REG_CASE_PF
#undef GEOOPS_REG_CASE
#else
  (void)D, (void)x, (void)y, (void)o, (void)k, (void)sk, (void)kconst, (void)inline_exp, (void)il;
#endif
  for (int64_t i0 = begin; i0 < end; i0 += NB) fallback(i0, std::min<int64_t>(NB, end - i0));
}

}  // namespace f32rows
}  // namespace cpu
}  // namespace geoops
