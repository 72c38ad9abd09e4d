// One variant of the register pass for ab2.sh (headers: the first -I; SUF names the entry points run_<SUF>_<op>_<D>)
#include "geoops/cpu_capability.h"
#include <ATen/ATen.h>
#include <cstdlib>
#include "stereographic_rows.h"
#include "stereographic_rows_f32.h"
#include "stereographic_rows_f32_reg.h"
using namespace geoops::cpu::f32rows;
namespace st = geoops::stereo;
// AB2_NOABORT: a declined block is skipped (experiments whose rows are not the real ones), else abort
#ifdef AB2_NOABORT
#define FALLBACK (void)0
#else
#define FALLBACK std::abort()
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define ENTRY(NAME, OP, D) \
  extern "C" __attribute__((noinline)) void CAT(CAT(run_, SUF), _##NAME##_##D)(const float* x, const float* y, float* o, int64_t n, const double* kc) { \
    reg_range<OP, 32>(D, 0, n, x, y, o, kc, 0, kc, 1, [](int64_t, int64_t) { FALLBACK; }); }
#define ALL(D) ENTRY(expmap, st::EXPMAP, D) ENTRY(logmap, st::LOGMAP, D) ENTRY(mobius_add, st::MOBIUS_ADD, D) \
  ENTRY(expmap0, st::EXPMAP0, D) ENTRY(logmap0, st::LOGMAP0, D)
ALL(2)
ALL(5)
ALL(6)
ALL(7)
ALL(8)
