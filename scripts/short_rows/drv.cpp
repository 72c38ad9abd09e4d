// reg_range (the register pass as the extension calls it: four / two groups, prefetch) of expmap / logmap / mobius_add
// at D = DD, k = -1 one value, 2^20 rows streaming and 4096 rows cached: ns per 16 rows, 1 thread, medians.  An A/B of
// a lane-math edit: build it against a copy of the headers (first -I) and against the tree's, run the two alternately
// (session 17: pairs.patch).  Build as bound.cpp (README.md), e.g.
//   g++ -O3 -march=native -std=c++17 -fopenmp -w -DDD=2 -I/tmp/hdr -Icsrc/include -Icsrc/cpu $INC \
//       scripts/short_rows/drv.cpp -o /tmp/drv_new_2;  /tmp/drv_new_2 [reps]
#include "geoops/cpu_capability.h"
#include <ATen/ATen.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>
#include "stereographic_rows.h"
#include "stereographic_rows_f32.h"
#include "stereographic_rows_f32_reg.h"
#include "driver_common.h"
using namespace geoops::cpu::f32rows;
namespace st = geoops::stereo;
alignas(64) double kc[64];
template <int OP>
__attribute__((noinline)) void run(const float* x, const float* y, float* o, int64_t n) {
  reg_range<OP, 32>(DD, 0, n, x, y, o, kc, 0, kc, 1, [](int64_t, int64_t) { std::abort(); });
}
int main(int argc, char** argv) {
  constexpr int D = DD;
  const int reps = argc > 1 ? atoi(argv[1]) : 7;
  const int64_t N = 1 << 20, NS = 4096;
  const RowInputs in = ball_inputs(N, D);
  const std::vector<float>& x = in.x; const std::vector<float>& y = in.y; const std::vector<float>& u = in.u;
  std::vector<float> o(N * D);
  for (double& v : kc) v = -1.0;
  std::fill(o.begin(), o.end(), 0.f);
  const double per = 1e9 / (N / 16.0);
  auto rep = [&](const char* name, auto fn, const std::vector<float>& X, const std::vector<float>& Y) {
    std::vector<double> a, b;
    for (int r = 0; r < reps; ++r) {
      double t0 = now(); fn(X.data(), Y.data(), o.data(), N); a.push_back(now() - t0);
      t0 = now(); for (int q = 0; q < N / NS; ++q) fn(X.data(), Y.data(), o.data(), NS); b.push_back(now() - t0);
    }
    std::sort(a.begin(), a.end()), std::sort(b.begin(), b.end());
    printf("D=%d %-10s stream %6.1f cached %6.1f\n", D, name, a[reps / 2] * per, b[reps / 2] * per);
  };
  rep("expmap", &run<st::EXPMAP>, x, u);
  rep("logmap", &run<st::LOGMAP>, x, y);
  rep("mobius_add", &run<st::MOBIUS_ADD>, x, y);
  return 0;
}
