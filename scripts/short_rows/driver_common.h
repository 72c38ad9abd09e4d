// Shared parts of the short-row C++ drivers (bound.cpp, drv.cpp): the SLEEF entry points the row headers
// reference (not linked here; the AVX-512 register pass never calls them), a thread-CPU clock, and the inputs:
// x, y inside the unit ball (radius <= 0.9), u tangent vectors (norm <= 1.5), N rows of D floats, seed 0.
#pragma once
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

extern "C" __m512 Sleef_tanhf16_u10(__m512) { std::abort(); }
extern "C" __m512 Sleef_log1pf16_u10(__m512) { std::abort(); }

static double now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

struct RowInputs { std::vector<float> x, y, u; };

static RowInputs ball_inputs(int64_t N, int D) {
  RowInputs in{std::vector<float>(N * D), std::vector<float>(N * D), std::vector<float>(N * D)};
  std::mt19937 gen(0);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud;
  auto ball = [&](std::vector<float>& v, float r) {
    for (int64_t i = 0; i < N; ++i) {
      float s = 0; for (int j = 0; j < D; ++j) { v[i * D + j] = nd(gen); s += v[i * D + j] * v[i * D + j]; }
      const float f = r * ud(gen) / std::sqrt(s);
      for (int j = 0; j < D; ++j) v[i * D + j] *= f;
    }
  };
  ball(in.x, 0.9f), ball(in.y, 0.9f), ball(in.u, 1.5f);
  return in;
}
