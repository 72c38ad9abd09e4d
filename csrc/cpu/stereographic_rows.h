// Internal pieces shared by the row-kernel translation units of the kappa-stereographic family:
// stereographic.cpp (the entry points) and the stereographic_lanes*.cpp units (the kernels, stereographic_lanes.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "geoops/stereo_math.h"

namespace geoops {
namespace cpu {

// Per-row curvature k and scalar r (mobius_scalar_mul) in double; stride 0 broadcasts one value.
// rf: a float32 r read in place (stride sr) and widened per row, exactly, in place of r (then
// null): no double copy of r per call (r.to(kDouble) of 2^18 rows cost ~1.3 ms, ~6 % of the op).
struct RowScalars {
  const double* k;
  int64_t sk;
  const double* r;
  int64_t sr;
  const float* rf = nullptr;
  // r of row i (as double)
  double r_at(int64_t i) const { return rf ? static_cast<double>(rf[i * sr]) : r[i * sr]; }
};

// The row kernels (stereographic_lanes.h; defined in stereographic_lanes.cpp and stereographic_lanes_bwd.cpp): the row
// math on SIMD vectors, one lane per row.
// x, y, g: (N, D) with inner stride 1 (any row stride, 0 broadcasts a row); out: (N, D) or (N,);
// g of a scalar-output op: (N,) contiguous.  dx, dy: contiguous (N, D) or undefined; dk, dr: (N,) or null.
void stereo_lanes_fwd(int op, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc, double param,
                      at::Tensor& out);
void stereo_lanes_bwd(int op, const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, bool has_y,
                      const RowScalars& sc, double param, at::Tensor& dx, at::Tensor& dy, double* dk, double* dr);

// Calls f(std::integral_constant<int, OP>) for the runtime op code.
template <typename F>
void dispatch_op(int op, F&& f) {
  using namespace geoops::stereo;
  switch (op) {
#define GEOOPS_OP_CASE(OPC) \
  case OPC:                 \
    f(std::integral_constant<int, OPC>{}); \
    break;
    GEOOPS_OP_CASE(MOBIUS_ADD)
    GEOOPS_OP_CASE(MOBIUS_SUB)
    GEOOPS_OP_CASE(PROJECT)
    GEOOPS_OP_CASE(LAMBDA_X)
    GEOOPS_OP_CASE(MOBIUS_SCALAR_MUL)
    GEOOPS_OP_CASE(EXPMAP)
    GEOOPS_OP_CASE(EXPMAP0)
    GEOOPS_OP_CASE(LOGMAP)
    GEOOPS_OP_CASE(LOGMAP0)
    GEOOPS_OP_CASE(DIST)
    GEOOPS_OP_CASE(DIST0)
#undef GEOOPS_OP_CASE
    default:
      TORCH_CHECK(false, "geoops: unknown stereographic op ", op);
  }
}

// ---------------------------------------------------------------- element loads and stores
// Branch-free conversions, so that the loops around them vectorise.  bfloat16: the high half of a
// float, stored with round-to-nearest-even (NaN -> quiet NaN, as c10::BFloat16; c10's conversion has
// a NaN branch that kept the loops scalar).  float16: the compiler's _Float16 (one vcvtph2ps /
// vcvtps2ph per vector with F16C or AVX512-FP16; IEEE round-to-nearest-even like c10::Half).
template <typename scalar_t> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

template <typename scalar_t>
inline typename OpMath<scalar_t>::type load_elem(const scalar_t* p) {
  return static_cast<typename OpMath<scalar_t>::type>(*p);
}
inline float load_elem(const c10::BFloat16* p) {
  const uint32_t w = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(p)) << 16;
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
#if defined(__FLT16_MAX__) && !defined(__CUDACC__)
inline float load_elem(const c10::Half* p) {
  _Float16 h;
  std::memcpy(&h, p, sizeof(h));
  return static_cast<float>(h);
}
#endif

template <typename scalar_t, typename opmath_t>
inline void store(scalar_t* o, int64_t j, opmath_t v) {
  o[j] = static_cast<scalar_t>(v);
}
inline void store(c10::BFloat16* o, int64_t j, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  reinterpret_cast<uint16_t*>(o)[j] = (v != v) ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(r);
}
#if defined(__FLT16_MAX__) && !defined(__CUDACC__)
inline void store(c10::Half* o, int64_t j, float v) {
  const _Float16 h = static_cast<_Float16>(v);
  std::memcpy(reinterpret_cast<uint16_t*>(o) + j, &h, sizeof(h));
}
#endif

// ---------------------------------------------------------------- row sums of long rows
inline int64_t grain_for(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

// Row sums are accumulated in double on 4-lane vectors (GCC/Clang vector
// extensions: AVX2 registers in the native build, SSE pairs in the portable
// one), two vectors per sum so that each sum is two short FMA chains.  (An
// `omp simd reduction` spills its lanes to the stack and adds them up one by
// one at the end of every row, which costs more than the row on D = 64.)
typedef double dvec __attribute__((vector_size(32)));
typedef float fvec __attribute__((vector_size(16)));
typedef uint16_t u16vec __attribute__((vector_size(8)));
typedef uint32_t u32vec __attribute__((vector_size(16)));

// Four consecutive elements as doubles; the lanes from `n` on are zero.
template <typename scalar_t>
inline dvec load4(const scalar_t* p, int64_t n = 4) {
  if (n >= 4) {
    if constexpr (std::is_same<scalar_t, float>::value) {
      fvec f;
      std::memcpy(&f, p, sizeof(f));
      return __builtin_convertvector(f, dvec);
    } else if constexpr (std::is_same<scalar_t, double>::value) {
      dvec d;
      std::memcpy(&d, p, sizeof(d));
      return d;
    } else if constexpr (std::is_same<scalar_t, c10::BFloat16>::value) {  // the high half of a float
      u16vec h;
      std::memcpy(&h, p, sizeof(h));
      const u32vec w = __builtin_convertvector(h, u32vec) << 16;
      fvec f;
      std::memcpy(&f, &w, sizeof(f));
      return __builtin_convertvector(f, dvec);
#if defined(__FLT16_MAX__)
    } else if constexpr (std::is_same<scalar_t, c10::Half>::value) {
      typedef _Float16 hvec __attribute__((vector_size(8)));
      hvec h;
      std::memcpy(&h, p, sizeof(h));
      return __builtin_convertvector(__builtin_convertvector(h, fvec), dvec);
#endif
    } else {
      return dvec{static_cast<double>(load_elem(p)), static_cast<double>(load_elem(p + 1)),
                  static_cast<double>(load_elem(p + 2)), static_cast<double>(load_elem(p + 3))};
    }
  }
  dvec d = {0.0, 0.0, 0.0, 0.0};
  for (int64_t t = 0; t < n; ++t) d[t] = static_cast<double>(load_elem(p + t));
  return d;
}

inline double hsum(dvec v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// out[s] = sum over the row of term s, for NS terms of NIN input rows:
// terms(const dvec (&in)[NIN], dvec (&acc)[NS]) adds the terms of 4 elements
// to acc.  Every term must vanish on zero inputs (the padded tail).
template <int NS, int NIN, typename scalar_t, typename F>
inline void row_sums(const scalar_t* const (&in)[NIN], int64_t D, double (&out)[NS], F&& terms) {
  dvec acc0[NS], acc1[NS];
  for (int s = 0; s < NS; ++s) acc0[s] = acc1[s] = dvec{0.0, 0.0, 0.0, 0.0};
  dvec v0[NIN], v1[NIN];
  int64_t j = 0;
  for (; j + 8 <= D; j += 8) {
    for (int s = 0; s < NIN; ++s) {
      v0[s] = load4(in[s] + j);
      v1[s] = load4(in[s] + j + 4);
    }
    terms(v0, acc0);
    terms(v1, acc1);
  }
  for (; j < D; j += 4) {
    for (int s = 0; s < NIN; ++s) v0[s] = load4(in[s] + j, std::min<int64_t>(4, D - j));
    terms(v0, acc0);
  }
  for (int s = 0; s < NS; ++s) out[s] = hsum(acc0[s] + acc1[s]);
}

// Adds the terms of xx, yy, xy and dd = |x - y|^2 (accumulated directly) to a[0..3].
inline void pair_terms(const dvec& x, const dvec& y, dvec* a) {
  const dvec d = x - y;
  a[0] += x * x;
  a[1] += y * y;
  a[2] += x * y;
  a[3] += d * d;
}

// xx, yy, xy and dd of one row.
template <typename scalar_t, bool HAS_Y>
inline stereo::Row<double> reduce_row(const scalar_t* xr, const scalar_t* yr, int64_t D) {
  if (HAS_Y) {
    double r[4];
    row_sums<4, 2>({xr, yr}, D, r, [](const dvec(&v)[2], dvec(&a)[4]) { pair_terms(v[0], v[1], a); });
    return {r[0], r[1], r[2], r[3], 0.0, 0.0};
  }
  double r[1];
  row_sums<1, 1>({xr}, D, r, [](const dvec(&v)[1], dvec(&a)[1]) { a[0] += v[0] * v[0]; });
  return {r[0], 0.0, 0.0, 0.0, 0.0, 0.0};
}
// Rows are processed in blocks: the reductions of a block first, then the
// math of its rows, then the writes, with the block's rows still in L1.
constexpr int64_t kMaxBlock = 32;

template <typename scalar_t>
inline int64_t block_rows(int64_t D, int streams) {
  const int64_t bytes = std::max<int64_t>(D, 1) * static_cast<int64_t>(sizeof(scalar_t)) * streams;
  return std::min<int64_t>(kMaxBlock, std::max<int64_t>(1, 16384 / bytes));
}

// Software prefetch of the row `ahead` rows further on, issued while the
// current row is reduced, so that the next block's loads are in flight
// during this block's scalar math and writes (the blocked loop otherwise
// leaves the memory idle between its phases; measured 0-8% on D = 64).
// Rows of 4 KiB and more stream well enough on the hardware prefetchers.
struct RowPrefetch {
  int64_t ahead, bytes;
  explicit RowPrefetch(int64_t row_bytes)
      : ahead(row_bytes >= 4096 ? 0 : std::max<int64_t>(1, 2048 / std::max<int64_t>(row_bytes, 1))),
        bytes(row_bytes) {}
  template <typename T>
  inline void operator()(const T* row, int64_t stride, int64_t i, int64_t end) const {
    if (ahead == 0 || i + ahead >= end || stride == 0) return;
    const char* p = reinterpret_cast<const char*>(row + ahead * stride);
    for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l, 0, 3);
  }
};

}  // namespace cpu
}  // namespace geoops
