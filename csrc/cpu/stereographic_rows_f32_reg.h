// One register pass per group of rows for the fp32 short-row forward (stereographic_lanes.h only, included after
// stereographic_rows_f32.h): the ops and widths of kOpPaths (stereographic_rows_f32_paths.h) -- AVX-512: mobius_add,
// expmap, expmap0, logmap, logmap0 and (session 40) dist at D <= 16 in 16-row groups (columns by permutes at D <= 8,
// by cols16_t's transpose at D = 9..16), by default not mobius_add at D = 5..8, expmap0 / logmap0 at D = 6..8, expmap
// at D = 8 (session 40, below); AVX2 (session 25): mobius_add, logmap, expmap0 (and dist, session 40) at D <= 8 in
// 8-row groups.
// dist's output is one value per row: a group's values are one float vector, stored as is (block_reg: one store per
// group); the fused / eight-loop blocks do not take dist (a declined block runs its double path).
//
// The fused block (block_fused) deinterleaves a block's rows into SoA scratch lanes, computes the coefficients
// into two more scratch arrays and writes in a third loop; at D = 2 that structure alone (loads, deinterleave,
// write, no math) took ~1.5x the limit op.  Here each group's rows are D vectors loaded once,
// turned into D column vectors by permutes (RegGroup::cols), and the whole row math runs on those registers
// (lanes_core, the same code and roundings as the fused path: row sums and the cancelling additive terms in
// double halves, everything else in float), then each coefficient vector is expanded to the rows' elements by
// one permute per output vector and combined with the x (and y) vectors (RegGroup::write).  No scratch stores
// between the stages.  A block (the caller's) is several such groups; a hard lane in any returns false before
// anything is written (the caller runs the double path for the block), as the fused path.
// One template (block_reg, reg_loop, reg_range) for both ISAs (session 26); what differs is the group trait
// RegGroup: vector type, rows per group, cols / write / widen, interleaving of the groups, four-group pairs,
// prefetch.
// Session 40: the D of an op's reg_declined (kOpPaths) take the fused / eight-loop blocks by default, where those
// measured faster (AVX-512: mobius_add at D = 5..8, expmap0 and logmap0 at D = 6..8, expmap at D = 8);
// GEOOPS_STEREO_F32_REG=2: the register pass at those D too (the tests' way to it).  GEOOPS_STEREO_F32_REG=0: off
// (the fused / eight-loop blocks, the path of portable builds and of k with a stride other than 0 or 1; dist: its
// double path; read per call).  D = 5..8 prefetch the rows 128 ahead (reg_loop's PF).
#pragma once

#include <algorithm>
#include <cstdint>

#include "knobs.h"

namespace geoops {
namespace cpu {
namespace f32rows {

static_assert(kRegIsaMaxD <= kMaxD, "the register pass's rows are the fast path's");
constexpr int kRegNarrowD = 8;  // two-input ops interleave their groups up to here (block_reg)

// 1: the register pass for the ops and widths of kOpPaths less the D each op's reg_declined names (AVX-512 and AVX2
// builds; unset), 2: at every D of kOpPaths, the declined D included (GEOOPS_STEREO_F32_REG=2: the tests' way to
// the register pass there), 0: off (GEOOPS_STEREO_F32_REG=0, and every build without AVX-512 or AVX2).  reg_on
// (stereographic_rows_f32_paths.h) reads the mode.
inline int reg_mode() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const char* e = knobs::get("GEOOPS_STEREO_F32_REG");
  return e && e[0] == '0' ? 0 : (e && e[0] == '2' ? 2 : 1);
#else
  return 0;
#endif
}

// The switches of one fp32 row-op call (op, rows of D), each environment variable read once, at the call's entry
// (stereo_lanes_fwd), and passed down: mode(), then, where the float path can take the call at all, reg_mode() and
// lane_mode() (at most three getenv per call; the separate reads of each switch cost ~1 us per call, which showed
// at batches of 64 rows).  Still read per call (tests flip them between calls).
struct Switches {
  int mode = 0;  // mode()
  int reg = 0;   // reg_mode()
  int lane = 0;  // lane_mode()
  bool use = false;  // use(): the float path takes op at D (if the rows are back to back)
};
inline Switches switches(int op, int64_t D) {
  Switches s;
  s.mode = mode();
  if (s.mode == 0 || !f32_op(op) || D > kMaxD) return s;
  s.reg = reg_mode();
  s.lane = lane_mode();
  s.use = use(s.mode, s.reg, op, D);
  return s;
}


// Software prefetch of the rows kPfRows ahead of the block (x, y for reading, out for writing) at D = 5..8.  The
// lane math between two blocks' loads is long (~200 ns per 32 rows at D = 5) and the rows are short, so the hardware
// prefetchers (which stop at each 4 KiB page: every ~13 blocks here) leave the block's loads to miss: standalone over
// 2^20 rows (streaming, 1 thread) the prefetch took expmap 129 -> 112, logmap 123 -> 98, mobius_add 106 -> 79,
// logmap0 88 -> 68, expmap0 70 -> 56 ns per 16 rows at D = 5 (128 rows ahead with out's lines for writing; 64 and
// 256 rows, or x / y alone, measured less).  A hint only: same values.
constexpr int kPfRows = 128;
// The lines of the N bytes from p, q (if HAS_Y) for reading and, for the one-input ops only, of the NW bytes from w for
// writing (prefetchw where the target has it).  The two-input ops go without the write prefetch: one process per
// build, 1 thread, thread CPU time, AMD EPYC (Zen 4) under load, both build orders (session 46): expmap D = 6
// 0.76-0.77x the time, D = 5 expmap / logmap 0.93-0.96x (a one-input op, whose code did not change, 0.96x in the
// same runs: build layout), dist 0.98x; session 43's ab2.sh had measured the two-input ops 0.74-0.95x streaming and
// logmap0 (one input) 1.07x slower without it.  A hint only: same values.
template <bool HAS_Y, int N, int NW = N>
inline __attribute__((always_inline)) void prefetch_rows(const float* p, const float* q, float* w) {
#pragma GCC unroll 16
  for (int b = 0; b < N; b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + b, 0, 3);
    if constexpr (HAS_Y) __builtin_prefetch(reinterpret_cast<const char*>(q) + b, 0, 3);
    if (!HAS_Y && b < NW) __builtin_prefetch(reinterpret_cast<char*>(w) + b, 1, 3);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Four 16-row groups (two of the caller's 32-row blocks) through lanes_core_g together where that measured faster
// than two: expmap0 / logmap0 at D <= 8 (D <= 4 before session 41), expmap / logmap at D <= 2 (the standalone loop,
// scripts/short_rows/bound.cpp, 1 thread, 2^20 rows: 0.85-0.92x the time of two groups; mobius_add no better, expmap /
// logmap at D = 4 slower streaming, at D = 5 1.34-1.42x streaming).  Session 41 (ab2.sh, in-process, 1 thread):
// expmap0 / logmap0 four groups interleaved against one group after the other (reg_loop's block of two) at D = 5:
// 0.77-0.80 / 0.75-0.87x the time on cached rows, 0.86-0.96 / 0.87-0.94x streaming; D = 6..8 below (RegGroup::
// interleave).  reg_loop's prefetch stays one block per iteration (prefetching both blocks of a pair measured
// slower streaming at D = 5: 0.95-0.99x of the old time against 0.86-0.88x).  Same results bit for bit (the lane math
// does not depend on G).
constexpr bool reg_four_d(int op, int64_t D) {
  return op == stereo::EXPMAP0 || op == stereo::LOGMAP0 ? D <= 8 : (op == stereo::EXPMAP || op == stereo::LOGMAP) && D <= 2;
}
template <int OP, int D>
constexpr bool reg_four(int NB) {
  return NB == 32 && reg_four_d(OP, D);
}

// The register pass's group on AVX-512: 16 rows (one __m512 per column), columns by cols16 (permutes at D <= 8,
// cols16_t's transpose at D = 9..16), writes by write16 (the fused blocks' own write at D = 3..8: the same bits).
struct RegGroup {
  using V = __m512;
  static constexpr int kRows = 16;                // rows per group: one float vector
  static constexpr int kMaxBlock = 2 * kMaxRows;  // block_reg's rows at most (reg_four: two blocks at once)
  static constexpr bool kWritesAsFused = true;    // write16 is write_rows's write at D = 3..8 (perm_rows)
  template <int D>
  static inline __attribute__((always_inline)) void cols(const float* __restrict p, V (&c)[D]) {
    cols16<D>(p, c);
  }
  template <int OP, int D>
  static inline __attribute__((always_inline)) void write(const float* __restrict xb, const float* __restrict yb,
                                                          float* __restrict ob, const FVec& a, const FVec& b) {
    write16<OP, D>(xb, yb, ob, a, b);
  }
  // half h of column c widened to double (lanes_core's xd / yd)
  static inline __attribute__((always_inline)) __m512d widen(const V& c, int h) {
    return h == 0 ? _mm512_cvtps_pd(_mm512_castps512_ps256(c))
                  : _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c), 1)));
  }
  // The block's groups through lanes_core_g together (chains interleaved step by step) or one after the other.
  // Two-input ops interleave up to kRegNarrowD (at D = 5 one group after the other took expmap / logmap 1.26-1.59x
  // the time, session 41).  The one-input ops too (session 41; D <= 4 before: session 12 measured expmap0 3-6 % slower
  // interleaved at D = 5, with the lane math of then): with four groups (reg_four), against one group after the
  // other, 1 thread, in-process (ab2.sh), cached / streaming rows: D = 5 above; D = 6 expmap0 0.88 / 1.04x, logmap0
  // 0.85 / 0.93x; D = 7 0.84 / 1.02x, 0.56 / 0.71x; D = 8 0.87 / 0.95x, 0.57 / 0.64x (logmap0's lone chain at D = 7, 8
  // spilled: ~70 ns per 16 rows cached, against ~40 interleaved).
  // D > 8: one group after the other, each group's columns made just before its lane math (2 x 2 x D column
  // registers would not fit).
  static constexpr bool interleave_d(int op, int64_t D) { return stereo::op_has_y(op) ? D <= kRegNarrowD : D <= 8; }
  template <int OP, int D>
  static constexpr bool interleave() {
    return interleave_d(OP, D);
  }
  template <int OP, int D>
  static constexpr bool four(int NB) {
    return reg_four<OP, D>(NB);
  }
  // 16-row groups whose lane math runs together (the layout's register_pass_groups): 4, 2 or 1
  static constexpr int groups(int op, int64_t D) { return reg_four_d(op, D) ? 4 : (interleave_d(op, D) ? 2 : 1); }
  // prefetch_rows kPfRows ahead (reg_loop's PF)
  static constexpr bool prefetch(int D) { return D >= 5 && D <= 8; }
};
#elif defined(CPU_CAPABILITY_AVX2)
// AVX2 builds (session 25): the same register pass on groups of 8 rows (one float vector), D <= 8.  Without the
// two-source permutes of AVX-512, column j of 8 rows of D floats (lane l: element D l + j of the D loaded vectors,
// in vector (D l + j) / 8 at position (D l + j) mod 8) is one vpermps per source vector with the same index
// vector, merged by vblendvps; the writes expand each coefficient vector to the rows' elements with one vpermps per
// output vector.  The lane math is lanes_core (the fused blocks' code on these 8 lanes: the same roundings), each
// 8-row group after the other (AVX2 has 16 vector registers: two groups' chains would spill).  Before, these rows
// ran the fused / eight-loop blocks (deinterleave into scratch lanes, lane math, coefficients through scratch,
// a separate write loop per 16-row block).
template <int D>
struct PermTab8 {
  alignas(32) int32_t idx[D][8];     // column j, lane l: position (D l + j) mod 8 in its source vector
  alignas(32) int32_t sel[D][D][8];  // column j, source vector s: -1 in the lanes whose element lies in vector s
  alignas(32) int32_t row[D][8];     // output vector i, lane l: row (8 i + l) / D
  constexpr PermTab8() : idx{}, sel{}, row{} {
    for (int j = 0; j < D; ++j) {
      for (int l = 0; l < 8; ++l) {
        idx[j][l] = (D * l + j) % 8;
        sel[j][(D * l + j) / 8][l] = -1;
        row[j][l] = (8 * j + l) / D;
      }
    }
  }
};
template <int D>
inline constexpr PermTab8<D> kPermTab8{};

inline __m256i load_idx8(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// The 8 rows at p (D floats each, back to back) as D column vectors c[j] (lane l: row l's element j).  Exact moves.
template <int D>
inline __attribute__((always_inline)) void cols8(const float* __restrict p, __m256 (&c)[D]) {
  static_assert(D >= 1 && D <= 8, "rows of 1..8 floats");
  const PermTab8<D>& T = kPermTab8<D>;
  __m256 v[D];
  for (int i = 0; i < D; ++i) v[i] = _mm256_loadu_ps(p + 8 * i);
  if constexpr (D == 1) {
    c[0] = v[0];
  } else {
    for (int j = 0; j < D; ++j) {
      const __m256i ix = load_idx8(T.idx[j]);
      const int s1 = (7 * D + j) / 8;  // the last source vector of column j (the first: 0)
      __m256 r = _mm256_permutevar8x32_ps(v[0], ix);
      for (int s = 1; s <= s1; ++s) {
        r = _mm256_blendv_ps(r, _mm256_permutevar8x32_ps(v[s], ix), _mm256_castsi256_ps(load_idx8(T.sel[j][s])));
      }
      c[j] = r;
    }
  }
}

// out = a x + b y (logmap: a x + b (x - y); one-input ops: a x) for the 8 rows at xb, yb, ob, coefficients in the
// lanes of a, b (as write16).
template <int OP, int D>
inline __attribute__((always_inline)) void write8(const float* __restrict xb, const float* __restrict yb,
                                                  float* __restrict ob, __m256 a, __m256 b) {
  const PermTab8<D>& T = kPermTab8<D>;
  for (int i = 0; i < D; ++i) {
    const __m256 xv = _mm256_loadu_ps(xb + 8 * i);
    __m256 ai = a, bi = b;
    if constexpr (D > 1) {
      const __m256i ix = load_idx8(T.row[i]);
      ai = _mm256_permutevar8x32_ps(a, ix);
      if constexpr (stereo::op_has_y(OP)) bi = _mm256_permutevar8x32_ps(b, ix);
    }
    __m256 o = _mm256_mul_ps(ai, xv);
    if constexpr (OP == stereo::LOGMAP) {
      o = _mm256_fmadd_ps(bi, _mm256_sub_ps(xv, _mm256_loadu_ps(yb + 8 * i)), o);
    } else if constexpr (stereo::op_has_y(OP)) {
      o = _mm256_fmadd_ps(bi, _mm256_loadu_ps(yb + 8 * i), o);
    }
    _mm256_storeu_ps(ob + 8 * i, o);
  }
}

// The register pass's group on AVX2: 8 rows (one __m256 per column), cols8 / write8 (its own write order: round-off
// apart from the fused blocks' scalar writes), the groups one after the other, no four-group pairs.
struct RegGroup {
  using V = __m256;
  static constexpr int kRows = 8;             // rows per group: one float vector
  static constexpr int kMaxBlock = kMaxRows;  // block_reg's rows at most
  static constexpr bool kWritesAsFused = false;
  template <int D>
  static inline __attribute__((always_inline)) void cols(const float* __restrict p, V (&c)[D]) {
    cols8<D>(p, c);
  }
  template <int OP, int D>
  static inline __attribute__((always_inline)) void write(const float* __restrict xb, const float* __restrict yb,
                                                          float* __restrict ob, const FVec& a, const FVec& b) {
    write8<OP, D>(xb, yb, ob, a, b);
  }
  static inline __attribute__((always_inline)) __m256d widen(const V& c, int h) {
    return h == 0 ? _mm256_cvtps_pd(_mm256_castps256_ps128(c)) : _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1));
  }
  // AVX2 has 16 vector registers: two groups' chains would spill
  template <int OP, int D>
  static constexpr bool interleave() {
    return false;
  }
  template <int OP, int D>
  static constexpr bool four(int) {
    return false;
  }
  static constexpr int groups(int, int64_t) { return 1; }  // (the layout's register_pass_groups)
  static constexpr bool prefetch(int D) { return D >= 5 && D <= 8; }
};
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// lanes_core's columns from registers (one group: RegGroup::kRows rows).
template <int D>
struct RegCols {
  const RegGroup::V (&c)[D];
  FVec f(int j) const { return FVec(c[j]); }
  DVec d(int j, int h) const { return DVec(RegGroup::widen(c[j], h)); }
};

// The block's G = NB / R groups of R = RegGroup::kRows rows (ob: the block's output, D floats per row, or one for
// dist): every group's coefficients first (a hard lane in any returns false before anything is written: the caller
// runs the double path for the block, as the fused path), then the writes.  The groups' lane math interleaved
// (lanes_core_g, G chains step by step) where RegGroup::interleave says so, else one group after the other.  Same
// results either way.
template <int OP, int D, int NB>
inline __attribute__((always_inline)) bool block_reg(const float* __restrict xb, const float* __restrict yb,
                                                     float* __restrict ob, const double* __restrict kk, bool mob) {
  constexpr int R = RegGroup::kRows;
  static_assert(NB % R == 0 && NB <= RegGroup::kMaxBlock, "whole groups");
  constexpr bool HAS_Y = stereo::op_has_y(OP);
  constexpr int DY = HAS_Y ? D : 1;
  constexpr int G = NB / R;
  using V = RegGroup::V;
  FVec a[G], b[G];
  if constexpr (RegGroup::interleave<OP, D>()) {
    V xc[G][D], yc[G][DY];
    for (int g = 0; g < G; ++g) {
      RegGroup::cols<D>(xb + R * D * g, xc[g]);
      if constexpr (HAS_Y) RegGroup::cols<D>(yb + R * D * g, yc[g]);
    }
    if (!lanes_core_g<OP, D, G>([&](int g, int j) { return FVec(xc[g][j]); },
                                [&](int g, int j, int h) { return RegCols<D>{xc[g]}.d(j, h); },
                                [&](int g, int j) { return FVec(yc[g][j]); },
                                [&](int g, int j, int h) { return RegCols<DY>{yc[g]}.d(j, h); }, kk, a, b,
                                mob)) {
      return false;
    }
  } else {
    for (int g = 0; g < G; ++g) {
      V xc[D], yc[DY];
      RegGroup::cols<D>(xb + R * D * g, xc);
      if constexpr (HAS_Y) RegGroup::cols<D>(yb + R * D * g, yc);
      if (!lanes_core<OP, D>(RegCols<D>{xc}, RegCols<DY>{yc}, kk + R * g, a[g], b[g], mob)) return false;
    }
  }
  for (int g = 0; g < G; ++g) {
    if constexpr (stereo::op_scalar_out(OP)) {  // dist: the group's R values, one vector
      a[g].store(ob + R * g);
    } else {
      const int off = R * D * g;
      RegGroup::write<OP, D>(xb + off, HAS_Y ? yb + off : yb, ob + off, a[g], b[g]);
    }
  }
  return true;
}

// The rows [begin, end) of x, y, out (D floats each, back to back; out one float per row for dist) in blocks of NB
// rows from begin (the caller's blocks); k: per row (sk = 1) or kconst (sk = 0, NB copies).  A partial or declined
// block: fallback(i0, nb).  PF: prefetch_rows of the block kPfRows ahead (while it lies in [begin, end)).
// RegGroup::four: two blocks at once where that measured faster (AVX-512, reg_four).
template <int OP, int D, int NB, bool PF, typename F>
inline void reg_loop(int64_t begin, int64_t end, const float* x, const float* y, float* o, const double* k,
                     int64_t sk, const double* kconst, bool mob, F&& fallback) {
  constexpr bool HAS_Y = stereo::op_has_y(OP);
  constexpr int OD = stereo::op_scalar_out(OP) ? 1 : D;  // out's floats per row
  constexpr bool G4 = RegGroup::four<OP, D>(NB);
  alignas(64) double k2[G4 ? 2 * NB : 1];  // kconst's value for 2 NB rows (kconst holds NB)
  if (G4 && sk == 0) std::fill(k2, k2 + (G4 ? 2 * NB : 1), kconst[0]);
  for (int64_t i0 = begin; i0 < end; i0 += NB) {
    if constexpr (PF) {
      if (end - i0 >= kPfRows + NB) {
        const int64_t a = (i0 + kPfRows) * D;
        prefetch_rows<HAS_Y, NB * D * 4, NB * OD * 4>(x + a, HAS_Y ? y + a : y, o + (i0 + kPfRows) * OD);
      }
    }
    if constexpr (G4) {  // two blocks at once; a declined pair takes the blocks one by one below (same results)
      if (end - i0 >= 2 * NB &&
          block_reg<OP, D, 2 * NB>(x + i0 * D, HAS_Y ? y + i0 * D : y, o + i0 * OD, sk == 0 ? k2 : k + i0, mob)) {
        i0 += NB;
        continue;
      }
    }
    const int64_t nb = std::min<int64_t>(NB, end - i0);
    const double* kb = sk == 0 ? kconst : k + i0;
    if (nb == NB && block_reg<OP, D, NB>(x + i0 * D, HAS_Y ? y + i0 * D : y, o + i0 * OD, kb, mob)) {
      continue;
    }
    fallback(i0, nb);
  }
}
#endif

// Whether the register pass takes a call of OP (reg: reg_mode(), read once per call: switches(); m, the caller's
// mode(), does not matter: mode 0 never gets here): D up to OP's reg_max_d on this build (kOpPaths,
// stereographic_rows_f32_paths.h: where each ISA measured the register pass faster), less the D of OP's reg_declined
// unless reg is 2 (session 40: those take the fused / eight-loop blocks, GEOOPS_STEREO_F32_REG=0's path), k one
// value or one per row (stride 1).  OP a template argument: the bounds are constants before the caller's code is
// built (with a runtime op folded after inlining, GCC allocated the callers' registers differently on AVX-512,
// session 26).
template <int OP>
inline bool reg_takes(int reg, int m, int64_t D, int64_t sk) {
  (void)m;
  constexpr int kMax = reg_max_d(OP);
  constexpr uint32_t kDeclined = reg_declined_d(OP);
  return reg_on_d(reg, D, kMax, kDeclined) && (sk == 0 || sk == 1);
}

// reg_loop for the runtime D (reg_takes must hold); lm: lane_mode().  Instances for D <= reg_max_d(OP) only, the
// declined D included (GEOOPS_STEREO_F32_REG=2 runs them).
template <int OP, int NB, typename F>
inline void reg_range(int64_t D, int64_t begin, int64_t end, const float* x, const float* y, float* o,
                      const double* k, int64_t sk, const double* kconst, int lm, F&& fallback) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const bool mob = lm != 0;
#define GEOOPS_REG_CASE(DD)                                                                                     \
  case DD:                                                                                                      \
    if constexpr (DD <= reg_max_d(OP)) {                                                                        \
      return reg_loop<OP, DD, NB, RegGroup::prefetch(DD)>(begin, end, x, y, o, k, sk, kconst, mob, fallback); \
    }                                                                                                           \
    break
  switch (D) {
    GEOOPS_REG_CASE(1);
    GEOOPS_REG_CASE(2);
    GEOOPS_REG_CASE(3);
    GEOOPS_REG_CASE(4);
    GEOOPS_REG_CASE(5);
    GEOOPS_REG_CASE(6);
    GEOOPS_REG_CASE(7);
    GEOOPS_REG_CASE(8);
    GEOOPS_REG_CASE(9);
    GEOOPS_REG_CASE(10);
    GEOOPS_REG_CASE(11);
    GEOOPS_REG_CASE(12);
    GEOOPS_REG_CASE(13);
    GEOOPS_REG_CASE(14);
    GEOOPS_REG_CASE(15);
    GEOOPS_REG_CASE(16);
  }
#undef GEOOPS_REG_CASE
#else
  (void)D, (void)x, (void)y, (void)o, (void)k, (void)sk, (void)kconst, (void)lm;
#endif
  for (int64_t i0 = begin; i0 < end; i0 += NB) fallback(i0, std::min<int64_t>(NB, end - i0));
}

}  // namespace f32rows
}  // namespace cpu
}  // namespace geoops
