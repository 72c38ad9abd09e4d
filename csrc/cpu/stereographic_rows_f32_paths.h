// Which fp32 short-row paths take which op on this build (session 26): one table per ISA, read by the kernels
// (f32rows::reg_takes / use in stereographic_rows_f32*.h, lanes_core_g's choice of the Mobius terms) and by the
// build's layout report (stereo_short_layout, stereographic_lanes.cpp -> tests/_stereo_rows.py), so that a change of
// the kernels' choice changes what the tests expect with it.  Included by stereographic_rows_f32.h (after
// geoops/stereo_math.h and the ISA of the translation unit: geoops/cpu_capability.h).
#pragma once

#include <cstdint>

#include "geoops/stereo_math.h"

namespace geoops {
namespace cpu {
namespace f32rows {

// One op of the fp32 fast path: reg_max_d, the register pass (stereographic_rows_f32_reg.h) is compiled for rows of
// 1 <= D <= reg_max_d (0: never); reg_declined, the D of those it declines by default (bit D set: such a call takes
// the fused / eight-loop blocks, GEOOPS_STEREO_F32_REG=0's path, where those measured faster; session 40), taken
// only with GEOOPS_STEREO_F32_REG=2 (the tests' way to it); float_mob, its lane math takes the float Mobius terms
// (lanes_mob_g) when GEOOPS_STEREO_F32_MOB is on (only mobius_add, expmap and logmap have Mobius terms).
// dist (session 40) is the one op with one value per row: the register pass only (the fused / eight-loop blocks of
// stereographic_rows_f32.h, fast_op, write (N, D) rows), its own float terms whatever GEOOPS_STEREO_F32_MOB
// (lanes_dist_fg); with reg_max_d 0 (portable builds) it keeps the double path.
struct OpPaths {
  int op;
  const char* name;  // the op's name in geoops.stereographic / the tests
  int reg_max_d;
  uint32_t reg_declined;  // bit D: the register pass declines rows of D by default (d_bits)
  bool float_mob;
};

// The bits lo..hi of OpPaths::reg_declined (rows of D = lo..hi).
constexpr uint32_t d_bits(int lo, int hi) {
  uint32_t m = 0;
  for (int d = lo; d <= hi; ++d) m |= 1u << d;
  return m;
}

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512: 16-row groups, all five ops and (session 40) dist to D = 16, the float Mobius terms for all three Mobius
// ops.  Declined by default (session 40, issue 6): mobius_add at D = 5..8, expmap0 and logmap0 at D = 6..8, expmap at
// D = 8, where the fused / eight-loop blocks (GEOOPS_STEREO_F32_REG=0's path) measured faster: register pass over
// their time, in-process A/B, 2^20 rows, k = -1, outputs on the heap, medians per run (1 thread thread CPU time, 2-5
// runs; 2 threads wall time, 2-5 runs): mobius_add 1.08-1.14 / 0.98-1.14 at D = 5, 1.22-1.41 / 1.08-1.35 at D = 6..8;
// expmap0 1.19-1.44 / 1.05-1.24, logmap0 1.26-1.35 / 1.11-1.35 at D = 6..8 (at D = 5 0.79-1.09: kept); expmap at
// D = 8 0.99-1.26 / 0.91-1.08 (median 1.07; 0.89-0.96 at D = 7).  logmap 0.59-1.14 at D = 4..8: kept.  At D = 9..16
// the register pass is 0.28-0.84x the time of GEOOPS_STEREO_F32_REG=0's path (1 thread, 3 runs).
inline constexpr OpPaths kOpPaths[] = {
    {stereo::MOBIUS_ADD, "mobius_add", 16, d_bits(5, 8), true},
    {stereo::EXPMAP, "expmap", 16, d_bits(8, 8), true},
    {stereo::EXPMAP0, "expmap0", 16, d_bits(6, 8), false},
    {stereo::LOGMAP, "logmap", 16, 0, true},
    {stereo::LOGMAP0, "logmap0", 16, d_bits(6, 8), false},
    {stereo::DIST, "dist", 16, 0, false},
};
#elif defined(CPU_CAPABILITY_AVX2)
// AVX2 (session 25): 8-row groups.  Not expmap and logmap0, which measured slower in the 8-row register pass than in
// the fused / eight-loop blocks (1 thread, in-process A/B, 2^20 rows: expmap 1.18x / 1.06x the time at D = 2 / 5,
// logmap0 0.96x / 1.14x; their lane math keeps more vectors live than AVX2's 16 registers hold next to the columns);
// mobius_add 0.84x / 0.73x, logmap 0.84x / 0.72x, expmap0 0.81x / 0.96x.  expmap keeps the double Mobius terms:
// its float terms (with AVX2's exact divisions) measured no faster and came out a few float ulps beyond
// test_f32_lane_quotients's bound at D = 1, k = -0.3 (3.7e-6 against 3.5e-6).  dist (session 40): 0.35-0.48x the
// time of its double path at D = 1..8 (1 thread, in-process A/B of GEOOPS_STEREO_F32_REG, 2^20 rows, two runs; the AVX2
// build GEOOPS_MARCH=znver3 on the AMD EPYC Zen 4, a proxy for an AVX2 machine).
inline constexpr OpPaths kOpPaths[] = {
    {stereo::MOBIUS_ADD, "mobius_add", 8, 0, true},
    {stereo::EXPMAP, "expmap", 0, 0, false},
    {stereo::EXPMAP0, "expmap0", 8, 0, false},
    {stereo::LOGMAP, "logmap", 8, 0, true},
    {stereo::LOGMAP0, "logmap0", 0, 0, false},
    {stereo::DIST, "dist", 8, 0, false},
};
#else
// Without AVX-512 / AVX2 (GEOOPS_PORTABLE=1): neither path is compiled.
inline constexpr OpPaths kOpPaths[] = {
    {stereo::MOBIUS_ADD, "mobius_add", 0, 0, false},
    {stereo::EXPMAP, "expmap", 0, 0, false},
    {stereo::EXPMAP0, "expmap0", 0, 0, false},
    {stereo::LOGMAP, "logmap", 0, 0, false},
    {stereo::LOGMAP0, "logmap0", 0, 0, false},
    {stereo::DIST, "dist", 0, 0, false},
};
#endif
inline constexpr int kNumOpPaths = static_cast<int>(sizeof(kOpPaths) / sizeof(kOpPaths[0]));

// The register pass's largest D for op (0: it never takes op).
constexpr int reg_max_d(int op) {
  for (const OpPaths& e : kOpPaths) {
    if (e.op == op) return e.reg_max_d;
  }
  return 0;
}
// The D the register pass declines for op by default (OpPaths::reg_declined).
constexpr uint32_t reg_declined_d(int op) {
  for (const OpPaths& e : kOpPaths) {
    if (e.op == op) return e.reg_declined;
  }
  return 0;
}
// Whether the register pass takes op's rows of D (compile-time where op and D are): reg, GEOOPS_STEREO_F32_REG's mode
// (reg_mode(), stereographic_rows_f32_reg.h): 0 never, 1 (the default) at 1 <= D <= reg_max_d but not the D of
// reg_declined, 2 at every 1 <= D <= reg_max_d.
// The rule on op's table values (max_d: reg_max_d, declined: reg_declined_d), for callers that hold them as constants
// (reg_takes, stereographic_rows_f32_reg.h).
constexpr bool reg_on_d(int reg, int64_t D, int max_d, uint32_t declined) {
  return reg != 0 && D >= 1 && D <= max_d && (reg == 2 || ((declined >> D) & 1u) == 0);
}
constexpr bool reg_on(int reg, int op, int64_t D) { return reg_on_d(reg, D, reg_max_d(op), reg_declined_d(op)); }
// Whether op's lane math takes the float Mobius terms (when they are on: mob_terms()).
constexpr bool float_mob_op(int op) {
  for (const OpPaths& e : kOpPaths) {
    if (e.op == op) return e.float_mob;
  }
  return false;
}
// The register pass's largest D over the ops (0: not compiled).
constexpr int reg_isa_max_d() {
  int m = 0;
  for (const OpPaths& e : kOpPaths) m = e.reg_max_d > m ? e.reg_max_d : m;
  return m;
}
constexpr bool any_float_mob() {
  for (const OpPaths& e : kOpPaths) {
    if (e.float_mob) return true;
  }
  return false;
}
// The ops of the fused / eight-loop blocks (stereographic_rows_f32.h).
constexpr bool fast_op(int op) {
  return op == stereo::MOBIUS_ADD || op == stereo::EXPMAP || op == stereo::EXPMAP0 || op == stereo::LOGMAP ||
         op == stereo::LOGMAP0;
}
// The ops kOpPaths may list: fast_op's and dist (the register pass only).
constexpr bool table_op(int op) { return fast_op(op) || op == stereo::DIST; }
constexpr bool paths_valid() {
  for (const OpPaths& e : kOpPaths) {
    if (!table_op(e.op)) return false;
    if (e.reg_max_d < 0 || e.reg_max_d > 16) return false;  // the fast path's rows (kMaxD)
    if ((e.reg_declined & ~d_bits(1, e.reg_max_d)) != 0) return false;  // declines only D it is compiled for
    if (e.float_mob && !(e.op == stereo::MOBIUS_ADD || e.op == stereo::EXPMAP || e.op == stereo::LOGMAP)) return false;
  }
  return true;
}
static_assert(paths_valid(),
              "kOpPaths: the five fast ops and dist, reg_max_d in [0, 16], reg_declined within 1..reg_max_d, float "
              "Mobius terms only for mobius_add / expmap / logmap");

// The rows the register pass takes at most (stereographic_rows_f32_reg.h: reg_range's instances).
constexpr int kRegIsaMaxD = reg_isa_max_d();

}  // namespace f32rows
}  // namespace cpu
}  // namespace geoops
