// Standalone timing of loop structures for fp32 mobius_add rows (N x 64, k = -1) from DRAM on huge pages
// (session 21, docs/families/stereographic.md).  Not part of the package.  Build with setup.py's flags:
//   g++ -O3 -march=native -fopenmp -o /tmp/rows_harness scripts/rows_ab/harness.cpp
// run: /tmp/rows_harness [threads] [rounds] [fresh: 1 = a fresh madvised output per call (torch's THP allocator),
//      0 = one output reused] [N]
// Prints per variant the median ms over the rounds (variants interleaved, order rotated each round) and the ratio
// to the copy loop (x + y).  HV=name,name,... runs only those variants.
// As a library for torch's tensors (scripts/rows_ab/torch_ab.py: the same kernels on the bench's inputs and torch's
// fresh outputs, interleaved with the limit op and geoops):
//   g++ -O3 -march=native -fopenmp -shared -fPIC -DROWS_HARNESS_LIB -o /tmp/rows_harness.so scripts/rows_ab/harness.cpp
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int D = 64;
constexpr size_t kHuge = size_t{2} << 20;

float* alloc_huge(size_t bytes) {
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge + kHuge;
  char* p = static_cast<char*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (p == MAP_FAILED) std::abort();
  char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge);
  madvise(a, len - (a - p), MADV_HUGEPAGE);
  return reinterpret_cast<float*>(a);
}

struct Buf {
  float* p;
  size_t bytes;
};

double now(bool thread_clock) {
  timespec t;
  clock_gettime(thread_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

inline float hadd(__m512 v) { return _mm512_reduce_add_ps(v); }

// store helper
template <bool NT>
inline void st(float* p, __m512 v) {
  if (NT) _mm512_stream_ps(p, v); else _mm512_store_ps(p, v);
}

// (a) copy-like limit: out = x + y
template <bool NT>
void v_add(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float) {
  for (int64_t i = r0 * D; i < r1 * D; i += 16) st<NT>(o + i, _mm512_add_ps(_mm512_load_ps(x + i), _mm512_load_ps(y + i)));
}

// software prefetch of the x and y rows PF rows ahead of row i (PF = 0: none)
template <int PF>
inline void prefetch_ahead(const float* x, const float* y, int64_t i, int64_t r1) {
  if (PF == 0 || i + PF >= r1) return;
  for (int l = 0; l < D * 4; l += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(x + (i + PF) * D) + l, 0, 3);
    __builtin_prefetch(reinterpret_cast<const char*>(y + (i + PF) * D) + l, 0, 3);
  }
}

// the three float sums of one row (two chains, as ours)
inline void row_sums(const float* xr, const float* yr, float& xx, float& yy, float& xy) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0;
  for (int j = 0; j < D; j += 32) {
    const __m512 x0 = _mm512_load_ps(xr + j), x1 = _mm512_load_ps(xr + j + 16);
    const __m512 y0 = _mm512_load_ps(yr + j), y1 = _mm512_load_ps(yr + j + 16);
    a0 = _mm512_fmadd_ps(x0, x0, a0), a1 = _mm512_fmadd_ps(x1, x1, a1);
    b0 = _mm512_fmadd_ps(y0, y0, b0), b1 = _mm512_fmadd_ps(y1, y1, b1);
    c0 = _mm512_fmadd_ps(x0, y0, c0), c1 = _mm512_fmadd_ps(x1, y1, c1);
  }
  xx = hadd(_mm512_add_ps(a0, a1)), yy = hadd(_mm512_add_ps(b0, b1)), xy = hadd(_mm512_add_ps(c0, c1));
}

// coefficients of mobius_add from the sums (double, as our lane math)
inline void coefs(double k, double xx, double yy, double xy, double& a, double& b) {
  const double den = std::max(1.0 - 2.0 * k * xy + k * k * xx * yy, 1e-15);
  a = (1.0 - 2.0 * k * xy - k * yy) / den;
  b = (1.0 + k * xx) / den;
}

template <bool NT>
inline void write_row(const float* xr, const float* yr, float* orow, float a, float b) {
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  for (int j = 0; j < D; j += 16) {
    st<NT>(orow + j, _mm512_fmadd_ps(va, _mm512_load_ps(xr + j), _mm512_mul_ps(vb, _mm512_load_ps(yr + j))));
  }
}

// (b) inductor-style: one row at a time, float sums, scalar float coefficients, a division per vector
template <bool NT>
void v_ind(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float k) {
  for (int64_t i = r0; i < r1; ++i) {
    const float* xr = x + i * D;
    const float* yr = y + i * D;
    __m512 a = _mm512_setzero_ps(), b = a, c = a;
    for (int j = 0; j < D; j += 16) {
      const __m512 xv = _mm512_load_ps(xr + j), yv = _mm512_load_ps(yr + j);
      a = _mm512_fmadd_ps(xv, yv, a), b = _mm512_fmadd_ps(yv, yv, b), c = _mm512_fmadd_ps(xv, xv, c);
    }
    const float sxy = hadd(a), syy = hadd(b), sxx = hadd(c);
    const float ca = 1.f - 2.f * k * sxy - k * syy, cb = 1.f + k * sxx;
    const float den = std::max(1.f - 2.f * k * sxy + k * k * sxx * syy, 1e-15f);
    const __m512 va = _mm512_set1_ps(ca), vb = _mm512_set1_ps(cb), vd = _mm512_set1_ps(den);
    for (int j = 0; j < D; j += 16) {
      const __m512 xv = _mm512_load_ps(xr + j), yv = _mm512_load_ps(yr + j);
      st<NT>(o + i * D + j, _mm512_div_ps(_mm512_fmadd_ps(va, xv, _mm512_mul_ps(vb, yv)), vd));
    }
  }
}

// (d1) one row at a time, our float sums, double scalar coefficients, no division in the write
template <bool NT, int PF>
void v_row1(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float k) {
  for (int64_t i = r0; i < r1; ++i) {
    const float* xr = x + i * D;
    const float* yr = y + i * D;
    prefetch_ahead<PF>(x, y, i, r1);
    float xx, yy, xy;
    row_sums(xr, yr, xx, yy, xy);
    double a, b;
    coefs(k, xx, yy, xy, a, b);
    write_row<NT>(xr, yr, o + i * D, static_cast<float>(a), static_cast<float>(b));
  }
}

// (d2) R rows interleaved: the sums of R rows, their coefficients, their writes
template <bool NT, int R>
void v_rowR(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float k) {
  int64_t i = r0;
  for (; i + R <= r1; i += R) {
    float xx[R], yy[R], xy[R];
    for (int r = 0; r < R; ++r) row_sums(x + (i + r) * D, y + (i + r) * D, xx[r], yy[r], xy[r]);
    for (int r = 0; r < R; ++r) {
      double a, b;
      coefs(k, xx[r], yy[r], xy[r], a, b);
      write_row<NT>(x + (i + r) * D, y + (i + r) * D, o + (i + r) * D, static_cast<float>(a), static_cast<float>(b));
    }
  }
  for (; i < r1; ++i) v_row1<NT, 0>(x, y, o, i, i + 1, k);
}

// (c) ours: blocks of B rows; block j's sums row by row, each followed by the write of row b of block j - 1;
// then block j's lane math (double vectors); software prefetch PF rows ahead
template <bool NT, int B, int PF, int ROT = 0>
void v_blk(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float k) {
  alignas(64) double sxx[B], syy[B], sxy[B], co[2][2][B];
  int64_t p0 = r0, pn = 0;
  int cur = 0;
  const __m512d vk = _mm512_set1_pd(k), one = _mm512_set1_pd(1.0), two = _mm512_set1_pd(2.0),
                tiny = _mm512_set1_pd(1e-15);
  for (int64_t i0 = r0; i0 < r1; i0 += B) {
    const int nb = static_cast<int>(std::min<int64_t>(B, r1 - i0));
    const double* pa = co[1 - cur][0];
    const double* pb = co[1 - cur][1];
    for (int b = 0; b < B; ++b) {
      const int64_t i = i0 + std::min(b, nb - 1);
      const float* xr = x + i * D;
      const float* yr = y + i * D;
      prefetch_ahead<PF>(x, y, i, r1);
      float xx, yy, xy;
      row_sums(xr, yr, xx, yy, xy);
      sxx[b] = xx, syy[b] = yy, sxy[b] = xy;
      const int w = (b + ROT) % B;
      if (w < pn) {
        write_row<NT>(x + (p0 + w) * D, y + (p0 + w) * D, o + (p0 + w) * D, static_cast<float>(pa[w]),
                      static_cast<float>(pb[w]));
      }
    }
    for (int v = 0; v < B; v += 8) {
      const __m512d xx = _mm512_load_pd(sxx + v), yy = _mm512_load_pd(syy + v), xy = _mm512_load_pd(sxy + v);
      const __m512d kxy2 = _mm512_mul_pd(two, _mm512_mul_pd(vk, xy));
      const __m512d den = _mm512_max_pd(
          _mm512_fmadd_pd(_mm512_mul_pd(vk, vk), _mm512_mul_pd(xx, yy), _mm512_sub_pd(one, kxy2)), tiny);
      const __m512d rd = _mm512_div_pd(one, den);
      _mm512_store_pd(co[cur][0] + v, _mm512_mul_pd(_mm512_fnmadd_pd(vk, yy, _mm512_sub_pd(one, kxy2)), rd));
      _mm512_store_pd(co[cur][1] + v, _mm512_mul_pd(_mm512_fmadd_pd(vk, xx, one), rd));
    }
    p0 = i0, pn = nb, cur = 1 - cur;
  }
  for (int b = 0; b < pn; ++b) {
    write_row<NT>(x + (p0 + b) * D, y + (p0 + b) * D, o + (p0 + b) * D, static_cast<float>(co[1 - cur][0][b]),
                  static_cast<float>(co[1 - cur][1][b]));
  }
}

// lane work of a block standing in for the package's generic lane math: EXTRA rounds of vector divisions
template <int EXTRA>
inline void extra_lane_work(double* a, int n) {
  if (EXTRA == 0) return;
  for (int v = 0; v < n; v += 8) {
    __m512d c = _mm512_loadu_pd(a + v);
    const __m512d one = _mm512_set1_pd(1.0);
    for (int e = 0; e < EXTRA; ++e) c = _mm512_div_pd(one, _mm512_add_pd(c, one));
    _mm512_storeu_pd(a + v, _mm512_mul_pd(_mm512_loadu_pd(a + v), _mm512_add_pd(one, _mm512_mul_pd(c, _mm512_setzero_pd()))));
  }
}

// (d3) blocks of B rows, all sums first (prefetch), lane math, then the block's writes (the blocked loop)
template <bool NT, int B, int PF = 0, int EXTRA = 0>
void v_blocked(const float* x, const float* y, float* o, int64_t r0, int64_t r1, float k) {
  alignas(64) float sxx[B], syy[B], sxy[B];
  for (int64_t i0 = r0; i0 < r1; i0 += B) {
    const int nb = static_cast<int>(std::min<int64_t>(B, r1 - i0));
    for (int b = 0; b < nb; ++b) {
      const int64_t i = i0 + b;
      prefetch_ahead<PF>(x, y, i, r1);
      row_sums(x + i * D, y + i * D, sxx[b], syy[b], sxy[b]);
    }
    if (EXTRA) {
      alignas(64) double t[B];
      for (int b = 0; b < B; ++b) t[b] = sxx[b];
      extra_lane_work<EXTRA>(t, B);
      for (int b = 0; b < B; ++b) sxx[b] = static_cast<float>(t[b]);
    }
    for (int b = 0; b < nb; ++b) {
      double a, bb;
      coefs(k, sxx[b], syy[b], sxy[b], a, bb);
      write_row<NT>(x + (i0 + b) * D, y + (i0 + b) * D, o + (i0 + b) * D, static_cast<float>(a), static_cast<float>(bb));
    }
  }
}

using Fn = void (*)(const float*, const float*, float*, int64_t, int64_t, float);
struct Variant {
  const char* name;
  Fn fn;
};

}  // namespace

#ifdef ROWS_HARNESS_LIB
// One variant over rows [0, n) on the calling thread (x, y, o: n x 64 floats, 64-byte aligned rows).
extern "C" int run_variant(const char* name, const float* x, const float* y, float* o, long n) {
  static const std::vector<Variant> lib = {
      {"add", v_add<false>},         {"ind", v_ind<false>},           {"row1", v_row1<false, 0>},
      {"row1_nt", v_row1<true, 0>},  {"row2_nt", v_rowR<true, 2>},    {"blk16_nt", v_blk<true, 16, 8>},
      {"blocked16_nt", v_blocked<true, 16>}, {"blocked16_nt_pf8", v_blocked<true, 16, 8>}};
  for (const auto& v : lib) {
    if (std::string(v.name) == name) {
      v.fn(x, y, o, 0, n, -1.f);
      _mm_sfence();
      return 0;
    }
  }
  return 1;
}
#else
int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 11;
  const int fresh_mode = argc > 3 ? std::atoi(argv[3]) : 1;  // 2: fresh 4 KiB pages
  const bool fresh = fresh_mode != 0;
  const int64_t N = argc > 4 ? std::atoll(argv[4]) : (int64_t{1} << 18);
  const char* only = std::getenv("HV");  // comma list of variant names to run (default all)
  omp_set_num_threads(threads);
  const size_t bytes = static_cast<size_t>(N) * D * sizeof(float);
  float* x = alloc_huge(bytes);
  float* y = alloc_huge(bytes);
  srand(1);
  for (size_t i = 0; i < bytes / 4; ++i) {
    x[i] = (rand() / (float)RAND_MAX - 0.5f) * 0.05f;
    y[i] = (rand() / (float)RAND_MAX - 0.5f) * 0.05f;
  }
  float* keep = alloc_huge(bytes);
  std::memset(keep, 0, bytes);
  std::vector<Variant> all = {
      {"add", v_add<false>},           {"add_nt", v_add<true>},
      {"ind", v_ind<false>},           {"ind_nt", v_ind<true>},
      {"row1", v_row1<false, 0>},      {"row1_nt", v_row1<true, 0>},
      {"row1_pf8", v_row1<false, 8>},  {"row1_nt_pf8", v_row1<true, 8>},
      {"row2", v_rowR<false, 2>},      {"row2_nt", v_rowR<true, 2>},
      {"row4", v_rowR<false, 4>},      {"row4_nt", v_rowR<true, 4>},
      {"blk16", v_blk<false, 16, 8>},  {"blk16_nt", v_blk<true, 16, 8>},
      {"blk16_nopf", v_blk<false, 16, 0>}, {"blk16_nt_nopf", v_blk<true, 16, 0>},
      {"blk4", v_blk<false, 8, 8>},    {"blk8_nt_nopf", v_blk<true, 8, 0>},
      {"blk16_rot8", v_blk<false, 16, 8, 8>}, {"blk16_nt_rot8", v_blk<true, 16, 8, 8>},
      {"blocked16", v_blocked<false, 16>}, {"blocked16_nt", v_blocked<true, 16>},
      {"blocked16_pf8", v_blocked<false, 16, 8>}, {"blocked16_nt_pf8", v_blocked<true, 16, 8>},
      {"blocked16_nt_x8", v_blocked<true, 16, 0, 8>}, {"blocked16_nt_x24", v_blocked<true, 16, 0, 24>},
      {"blocked16_nt_pf8_x24", v_blocked<true, 16, 8, 24>},
      {"blocked16_nt_pf16", v_blocked<true, 16, 16>}, {"blocked16_nt_pf4", v_blocked<true, 16, 4>},
  };
  std::vector<Variant> vs;
  for (auto& v : all) {
    if (!only || (std::string(",") + only + ",").find(std::string(",") + v.name + ",") != std::string::npos) vs.push_back(v);
  }
  const bool tclock = threads == 1;
  std::vector<std::vector<double>> t(vs.size());
  const float k = -1.f;
  for (int r = -1; r < rounds; ++r) {
    for (size_t q = 0; q < vs.size(); ++q) {
      const size_t vi = (q + std::max(r, 0)) % vs.size();
      float* o = keep;
      char* base = nullptr;
      size_t len = 0;
      if (fresh) {
        len = bytes + kHuge;
        base = static_cast<char*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(base) + kHuge - 1) / kHuge * kHuge);
        madvise(a, bytes, fresh_mode == 2 ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
        o = reinterpret_cast<float*>(a);
      }
      const double t0 = now(tclock);
#pragma omp parallel
      {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t per = (N / nt + 15) / 16 * 16;
        const int64_t r0 = std::min<int64_t>(N, id * per), r1 = std::min<int64_t>(N, (id + 1) * per);
        vs[vi].fn(x, y, o, r0, r1, k);
        _mm_sfence();
      }
      const double t1 = now(tclock);
      volatile float sink = o[N * D / 2 + 3];
      (void)sink;
      if (fresh) munmap(base, len);
      if (r >= 0) t[vi].push_back(t1 - t0);
    }
  }
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double base_ms = 0;
  for (size_t q = 0; q < vs.size(); ++q) {
    if (std::string(vs[q].name) == "add") base_ms = med(t[q]);
  }
  double lavg[3];
  getloadavg(lavg, 3);
  std::printf("N=%lld D=%d threads=%d fresh=%d rounds=%d load=%.2f\n", (long long)N, D, threads, (int)fresh, rounds,
              lavg[0]);
  for (size_t q = 0; q < vs.size(); ++q) {
    const double m = med(t[q]);
    std::printf("  %-16s %8.3f ms  x add %.3f  min %.3f\n", vs[q].name, m, base_ms > 0 ? m / base_ms : 0.0,
                *std::min_element(t[q].begin(), t[q].end()));
  }
  return 0;
}
#endif
