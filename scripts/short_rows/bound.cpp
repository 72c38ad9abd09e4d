// What bounds the register pass at small D: time block_reg over (a) 2^20 rows streaming from memory
// and (b) the same 4096 rows (L1/L2-resident) repeated, per op, against the limit-op loop (o = -x, o = x + y) over
// the same rows, and the floor (columns + write, a = 1: no lane math).  1 thread, thread CPU time, medians.
// Build: see README.md (bound).  usage: bound D ops reps [variant]
#include "geoops/cpu_capability.h"
#include <ATen/ATen.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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

// pf: software prefetch pf rows ahead (0: none); pw: also the output's lines (prefetchw)
template <int OP, int D, int NB = 32>
__attribute__((noinline)) void run_rows(const float* x, const float* y, float* o, int64_t n, const double* k, int lm,
                                        int pf = 0, bool pw = false) {
  for (int64_t i = 0; i < n; i += NB) {
    if (pf) {
      for (int l = 0; l < 32 * D * 4; l += 64) {
        __builtin_prefetch(reinterpret_cast<const char*>(x + (i + pf) * D) + l, 0, 3);
        if (st::op_has_y(OP)) __builtin_prefetch(reinterpret_cast<const char*>(y + (i + pf) * D) + l, 0, 3);
        if (pw) __builtin_prefetch(reinterpret_cast<const char*>(o + (i + pf) * D) + l, 1, 3);
      }
    }
    if (!block_reg<OP, D, NB>(x + i * D, y + i * D, o + i * D, k, lm != 0)) std::abort();
  }
}
template <int D, bool ADD>
__attribute__((noinline)) void run_limit(const float* x, const float* y, float* o, int64_t n) {
  const int64_t m = n * D;
  for (int64_t i = 0; i < m; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(o + i, ADD ? _mm512_add_ps(v, _mm512_loadu_ps(y + i)) : _mm512_sub_ps(_mm512_setzero_ps(), v));
  }
}
template <int D, bool HY>
__attribute__((noinline)) void run_floor(const float* x, const float* y, float* o, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __m512 c[D], cy[D];
    cols16<D>(x + i * D, c);
    if (HY) cols16<D>(y + i * D, cy);
    __m512 a = c[0];
    for (int j = 1; j < D; ++j) a = _mm512_add_ps(a, c[j]);
    if (HY) for (int j = 0; j < D; ++j) a = _mm512_add_ps(a, cy[j]);
    write16<HY ? st::MOBIUS_ADD : st::EXPMAP0, D>(x + i * D, y + i * D, o + i * D, a, a);
  }
}
template <typename F>
double med(F&& f, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) { double a = now(); f(); t.push_back(now() - a); }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
int main(int argc, char** argv) {
  constexpr int D = DD;
  const int reps = argc > 2 ? atoi(argv[2]) : 9;
  const std::string ops = argc > 1 ? argv[1] : "expmap0,logmap0,expmap";
  const int64_t N = 1 << 20, NS = 4096;
  const RowInputs in = ball_inputs(N, D);
  const std::vector<float>& x = in.x; const std::vector<float>& y = in.y; const std::vector<float>& u = in.u;
  std::vector<float> o(N * D);
  alignas(64) double k[64];
  for (double& v : k) v = -1.0;
  const int lm = lane_mode();
  const double per = 1e9 / (N / 16.0);  // ns per 16 rows
  std::fill(o.begin(), o.end(), 0.f);
  auto rep = [&](const char* name, auto&& fs, auto&& fc) {
    // interleaved: stream, cached (4096 rows x 256)
    std::vector<double> a, b;
    for (int r = 0; r < reps; ++r) {
      double t0 = now(); fs(); a.push_back(now() - t0);
      t0 = now(); for (int q = 0; q < N / NS; ++q) fc(); b.push_back(now() - t0);
    }
    std::sort(a.begin(), a.end()), std::sort(b.begin(), b.end());
    printf("D=%d %-16s stream %6.1f  cached %6.1f ns/16 rows (min %5.1f / %5.1f)\n", D, name, a[reps / 2] * per,
           b[reps / 2] * per, a[0] * per, b[0] * per);
  };
  if (const char* dump = std::getenv("BOUND_DUMP")) {  // the outputs of the five ops (G = 2) to a file (bit A/B)
    FILE* f = std::fopen(dump, "wb");
    auto one = [&](auto fn, const std::vector<float>& X, const std::vector<float>& Y) {
      fn(X.data(), Y.data(), o.data(), N, k, lm, 0, false);
      std::fwrite(o.data(), sizeof(float), o.size(), f);
    };
    one(&run_rows<st::EXPMAP0, D>, u, y), one(&run_rows<st::LOGMAP0, D>, x, y), one(&run_rows<st::EXPMAP, D>, x, u);
    one(&run_rows<st::LOGMAP, D>, x, y), one(&run_rows<st::MOBIUS_ADD, D>, x, y);
    for (double& v : k) v = -0.37;
    one(&run_rows<st::EXPMAP0, D>, u, y), one(&run_rows<st::LOGMAP0, D>, x, y), one(&run_rows<st::EXPMAP, D>, x, u);
    one(&run_rows<st::LOGMAP, D>, x, y);
    std::fclose(f);
    return 0;
  }
  rep("neg", [&] { run_limit<D, false>(x.data(), y.data(), o.data(), N); },
      [&] { run_limit<D, false>(x.data(), y.data(), o.data(), NS); });
  rep("add", [&] { run_limit<D, true>(x.data(), y.data(), o.data(), N); },
      [&] { run_limit<D, true>(x.data(), y.data(), o.data(), NS); });
  rep("floor1", [&] { run_floor<D, false>(x.data(), y.data(), o.data(), N); },
      [&] { run_floor<D, false>(x.data(), y.data(), o.data(), NS); });
  rep("floor2", [&] { run_floor<D, true>(x.data(), y.data(), o.data(), N); },
      [&] { run_floor<D, true>(x.data(), y.data(), o.data(), NS); });
#ifdef GVAR
  {
    // the register pass with G = 1 (16-row blocks: one group at a time), 2 (block_reg's default), 3, 4 groups interleaved;
    // the variants interleaved round by round
    using Fn = void (*)(const float*, const float*, float*, int64_t, const double*, int, int, bool);
    auto var = [&](const char* name, const std::vector<float>& X, const std::vector<float>& Y, const Fn (&f)[4]) {
      if (ops.find(name) == std::string::npos) return;
      std::vector<double> a[4], b[4];
      for (int r = 0; r < reps; ++r) {
        for (int gv = 0; gv < 4; ++gv) {
          const int64_t ns = gv == 2 ? 4080 : NS, nn = gv == 2 ? N / NS * 4080 : N;
          double t0 = now(); f[gv](X.data(), Y.data(), o.data(), nn, k, lm, 0, false); a[gv].push_back((now() - t0) * N / nn);
          t0 = now(); for (int q = 0; q < N / NS; ++q) f[gv](X.data(), Y.data(), o.data(), ns, k, lm, 0, false);
          b[gv].push_back((now() - t0) * NS / ns);
        }
      }
      for (int gv = 0; gv < 4; ++gv) {
        std::sort(a[gv].begin(), a[gv].end()), std::sort(b[gv].begin(), b[gv].end());
        printf("D=%d %-10s G%d stream %6.1f  cached %6.1f ns/16 rows (min %5.1f / %5.1f)\n", D, name, gv + 1,
               a[gv][reps / 2] * per, b[gv][reps / 2] * per, a[gv][0] * per, b[gv][0] * per);
      }
    };
#define OPRUN(NAME, OP, XV, YV)                                                                            \
    { const Fn f[4] = {&run_rows<OP, D, 16>, &run_rows<OP, D, 32>, &run_rows<OP, D, 48>, &run_rows<OP, D, 64>}; \
      var(NAME, XV, YV, f); }
#else
  const int pfs[] = {0, 64, 128, 256, 512};
  for (int pf : pfs) {
    for (int pw = 0; pw < (pf ? 2 : 1); ++pw) {
      char tag[64];
#define OPRUN(NAME, OP, XV, YV)                                                                            \
  if (ops.find(NAME) != std::string::npos) {                                                               \
    snprintf(tag, sizeof tag, "%s pf%d%s", NAME, pf, pw ? "w" : "");                                        \
    rep(tag, [&] { run_rows<OP, D>(XV.data(), YV.data(), o.data(), N, k, lm, pf, pw); },                   \
        [&] { run_rows<OP, D>(XV.data(), YV.data(), o.data(), NS, k, lm, pf, pw); });                      \
  }
#endif
      OPRUN("expmap0", st::EXPMAP0, u, y)
      OPRUN("logmap0", st::LOGMAP0, x, y)
      OPRUN("expmap,", st::EXPMAP, x, u)
      OPRUN("logmap,", st::LOGMAP, x, y)
      OPRUN("mobius_add", st::MOBIUS_ADD, x, y)
#ifndef GVAR
    }
#endif
  }
  return 0;
}
