// A/B of two register-pass variants in one process: rounds interleaved A B A B, medians, ns per 16 rows; bit compare.
#include <immintrin.h>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "driver_common.h"
typedef void (*Fn)(const float*, const float*, float*, int64_t, const double*);
#define DECL(S, NAME, D) extern "C" void run_##S##_##NAME##_##D(const float*, const float*, float*, int64_t, const double*);
#define DALL(S, D) DECL(S, expmap, D) DECL(S, logmap, D) DECL(S, mobius_add, D) DECL(S, expmap0, D) DECL(S, logmap0, D)
DALL(A, 2) DALL(A, 5) DALL(B, 2) DALL(B, 5) DALL(A, 6) DALL(B, 6) DALL(A, 7) DALL(B, 7) DALL(A, 8) DALL(B, 8)
struct E { const char* name; int D; Fn a, b; int xin, yin; };  // 0 x, 1 y, 2 u
#define ROW(NAME, D, X, Y) {#NAME, D, &run_A_##NAME##_##D, &run_B_##NAME##_##D, X, Y}
int main(int argc, char** argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 9;
  std::string want = argc > 2 ? argv[2] : "all";
  double kv = argc > 3 ? atof(argv[3]) : -1.0;
  E es[] = {ROW(expmap, 2, 0, 2), ROW(logmap, 2, 0, 1), ROW(mobius_add, 2, 0, 1), ROW(expmap0, 2, 2, 1), ROW(logmap0, 2, 0, 1),
            ROW(expmap, 5, 0, 2), ROW(logmap, 5, 0, 1), ROW(mobius_add, 5, 0, 1), ROW(expmap0, 5, 2, 1), ROW(logmap0, 5, 0, 1),
            ROW(expmap, 6, 0, 2), ROW(logmap, 6, 0, 1), ROW(mobius_add, 6, 0, 1), ROW(expmap0, 6, 2, 1), ROW(logmap0, 6, 0, 1),
            ROW(expmap, 7, 0, 2), ROW(logmap, 7, 0, 1), ROW(mobius_add, 7, 0, 1), ROW(expmap0, 7, 2, 1), ROW(logmap0, 7, 0, 1),
            ROW(expmap, 8, 0, 2), ROW(logmap, 8, 0, 1), ROW(mobius_add, 8, 0, 1), ROW(expmap0, 8, 2, 1), ROW(logmap0, 8, 0, 1)};
  alignas(64) static double kc[64];
  for (double& v : kc) v = kv;
  const int64_t N = 1 << 20, NS = 4096;
  for (const E& e : es) {
    std::string tag = std::string(e.name) + "_" + std::to_string(e.D);
    if (want != "all" && ("," + want + ",").find("," + tag + ",") == std::string::npos) continue;
    RowInputs in = ball_inputs(N, e.D);
    const std::vector<float>* v[3] = {&in.x, &in.y, &in.u};
    // inputs and outputs 64-byte aligned, as torch's CPU allocations (a std::vector's large block is 16-byte aligned:
    // a 16-row group at D = 5 then spans six cache lines instead of five)
    struct AF { float* p; explicit AF(size_t n) : p(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {}
                ~AF() { std::free(p); } float* data() { return p; } float& operator[](size_t i) { return p[i]; } };
    AF xa(N * e.D), ya(N * e.D);
    std::copy(v[e.xin]->begin(), v[e.xin]->end(), xa.data()), std::copy(v[e.yin]->begin(), v[e.yin]->end(), ya.data());
    const float *X = xa.data(), *Y = ya.data();
    AF oa(N * e.D), ob(N * e.D);
    e.a(X, Y, oa.data(), N, kc), e.b(X, Y, ob.data(), N, kc);
    int64_t diff = 0; float md = 0;
    for (int64_t i = 0; i < N * e.D; ++i) if (std::memcmp(&oa[i], &ob[i], 4)) { ++diff; md = std::max(md, std::fabs(oa[i] - ob[i]) / std::max(1e-30f, std::fabs(oa[i]))); }
    const double per = 1e9 / (N / 16.0);
    std::vector<double> sa, sb, ca, cb, rs, rc;
    for (int r = 0; r < reps; ++r) {
      double t0 = now(); e.a(X, Y, oa.data(), N, kc); double ta = now() - t0;
      t0 = now(); e.b(X, Y, ob.data(), N, kc); double tb = now() - t0;
      sa.push_back(ta), sb.push_back(tb), rs.push_back(tb / ta);
      t0 = now(); for (int q = 0; q < N / NS; ++q) e.a(X, Y, oa.data(), NS, kc); ta = now() - t0;
      t0 = now(); for (int q = 0; q < N / NS; ++q) e.b(X, Y, ob.data(), NS, kc); tb = now() - t0;
      ca.push_back(ta), cb.push_back(tb), rc.push_back(tb / ta);
    }
    auto med = [](std::vector<double> t) { std::sort(t.begin(), t.end()); return t[t.size() / 2]; };
    auto mn = [](std::vector<double> t) { return *std::min_element(t.begin(), t.end()); };
    printf("%-14s stream A %6.1f B %6.1f (B/A %.3f, min %.3f)  cached A %6.1f B %6.1f (B/A %.3f, min %.3f)  diff %lld (max rel %.2g)\n",
           tag.c_str(), med(sa) * per, med(sb) * per, med(rs), mn(sb) / mn(sa), med(ca) * per, med(cb) * per, med(rc), mn(cb) / mn(ca), (long long)diff, md);
    fflush(stdout);
  }
}
