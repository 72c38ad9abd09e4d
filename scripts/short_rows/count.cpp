// Standalone instantiation of the register pass for instruction counts (objdump): one noinline function per
// (op, D, mob) running block_reg over 32 rows; mob: the float Mobius terms (lanes_mob_g, true) or the double ones.
#include "geoops/cpu_capability.h"
#include <ATen/ATen.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include "stereographic_rows.h"
#include "stereographic_rows_f32.h"
#include "stereographic_rows_f32_reg.h"
using namespace geoops::cpu::f32rows;
namespace st = geoops::stereo;
#define INST(NAME, OP, D, M) \
  extern "C" __attribute__((noinline)) bool NAME(const float* x, const float* y, float* o, const double* k) { \
    return block_reg<OP, D, 32>(x, y, o, k, M); }
INST(expmap_2_old, st::EXPMAP, 2, false)
INST(expmap_2_new, st::EXPMAP, 2, true)
INST(logmap_2_old, st::LOGMAP, 2, false)
INST(logmap_2_new, st::LOGMAP, 2, true)
INST(mobius_add_2_old, st::MOBIUS_ADD, 2, false)
INST(mobius_add_2_new, st::MOBIUS_ADD, 2, true)
INST(expmap0_2, st::EXPMAP0, 2, false)
INST(logmap0_2, st::LOGMAP0, 2, false)
INST(expmap_5_old, st::EXPMAP, 5, false)
INST(expmap_5_new, st::EXPMAP, 5, true)
INST(logmap_5_old, st::LOGMAP, 5, false)
INST(logmap_5_new, st::LOGMAP, 5, true)
INST(mobius_add_5_old, st::MOBIUS_ADD, 5, false)
INST(mobius_add_5_new, st::MOBIUS_ADD, 5, true)
INST(expmap0_5, st::EXPMAP0, 5, false)
INST(logmap0_5, st::LOGMAP0, 5, false)
// the register pass at D = 10, 16 (columns by the 16 x 16 transpose of cols16_t)
INST(mobius_add_10, st::MOBIUS_ADD, 10, true)
INST(expmap_10, st::EXPMAP, 10, true)
INST(logmap_10, st::LOGMAP, 10, true)
INST(expmap0_10, st::EXPMAP0, 10, false)
INST(logmap0_10, st::LOGMAP0, 10, false)
INST(mobius_add_16, st::MOBIUS_ADD, 16, true)
INST(expmap_16, st::EXPMAP, 16, true)
INST(logmap_16, st::LOGMAP, 16, true)
