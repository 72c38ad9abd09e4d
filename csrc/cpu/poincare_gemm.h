// The Poincaré layers' backward GEMMs with results independent of the thread count.
//
// MKL splits a GEMM's reduction (K) dimension across its threads for tall-skinny products such as the weight
// gradient x^T dt (K = the batch rows): the partial sums, and so the last bits, then depend on the thread count.
// Here the rows are cut into fixed chunks (kRows, never the thread count), each chunk's product is one MKL call
// pinned to one thread (MKL_Set_Num_Threads_Local, looked up as mkl_packed.h does; other BLAS builds: their own
// threading inside at::parallel_for), and the chunks' partial products are summed in chunk order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include "knobs.h"
#include "mkl_packed.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {
namespace fixed_gemm {

using mkl_packed::OneMklThread;  // MKL single-threaded on this thread while in scope

constexpr int64_t kRows = 1024;  // rows of the reduction per chunk

// cblas_sgemm / cblas_dgemm (row-major, LP64), or null: then at::mm_out (its per-call overhead, ~10 us, is what
// the raw call saves on the small products of the convolutions)
template <typename T>
using GemmFn = void (*)(int, int, int, int, int, int, T, const T*, int, const T*, int, T, T*, int);
template <typename T>
inline GemmFn<T> cblas_gemm() {
  static const GemmFn<T> f = reinterpret_cast<GemmFn<T>>(
      mkl_packed::detail::find_symbol(std::is_same_v<T, float> ? "cblas_sgemm" : "cblas_dgemm"));
  return f;
}

constexpr int64_t kCols = 256;   // output columns per tile (128: ~6 % slower at 4096 x 512 -> 512, 1 thread)

// c[:, j0 : j0 + nc] (c (n, m) row-major) = a^T b[:, j0 : j0 + nc] over rows [r0, r0 + nr) of a (K, n), b (K, m)
// (contiguous): one tile, the same call whatever the thread count
template <typename T>
inline void tile_tn(T* c, const at::Tensor& a, const at::Tensor& b, int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
  const int64_t n = a.size(1), m = b.size(1);
  if (const auto f = cblas_gemm<T>(); f && mkl_packed::fits_int(n, m, nr)) {
    f(mkl_packed::kRowMajor, mkl_packed::kTrans, mkl_packed::kNoTrans, int(n), int(nc), int(nr), T(1),
      a.data_ptr<T>() + r0 * n, int(n), b.data_ptr<T>() + r0 * m + j0, int(m), T(0), c + j0, int(m));
    return;
  }
  at::Tensor out = at::from_blob(c, {n, m}, a.options()).narrow(1, j0, nc);
  at::mm_out(out, a.narrow(0, r0, nr).t(), b.narrow(0, r0, nr).narrow(1, j0, nc));
}

// ---- small narrow products without MKL (session 20; the MLR head's x z, dt z^T and x^T dt).  On the AMD EPYC MKL ran
// these (64 x 512 -> 10 and its transposes, the digits CNN's head) in its generic `def` kernels at 40-100 us per call
// for ~0.3 M multiply-adds; the loops below take a few us.  Only products of at most kNarrowWork multiply-adds with an
// output (mm_rows: n, mm_tn: m) or reduction (mm_rows: k) of at most kNarrow: larger ones keep MKL.  Every output
// element is an fma chain over the reduction in order (in double, rounded once, where the reduction is long: mm_rows
// with n <= kNarrow, mm_tn; in the dtype for mm_rows' k <= kNarrow), so the bits do not depend on the thread count or
// the buffers' alignment.
// GEOOPS_POINCARE_NARROW_GEMM=0 (read per call) keeps MKL for these too (what the tests compare with).
constexpr int64_t kNarrow = 16;
constexpr int64_t kNarrowWork = int64_t(1) << 22;
constexpr int64_t kNarrowGrain = int64_t(1) << 19;  // multiply-adds per task, at least (smaller products: one thread)
inline bool narrow_on() { return !knobs::off("GEOOPS_POINCARE_NARROW_GEMM"); }

// out (N, n) = a (N, k) b (k, n), n <= kNarrow: b padded to kNarrow columns (whole vectors) in double; R rows at a
// time (R independent chains per vector); each output an fma chain in double over k in order, rounded once to the
// dtype (a float chain over k = 512 in order missed the 2x rule against MKL's blocked sums); explicit at::vec fmadd
// (GCC's own vectorisation of the scalar loop shuffled xmm lanes and ran 2x slower than MKL)
template <typename T>
void rows_narrow_out(T* out, const T* a, const T* b, int64_t N, int64_t k, int64_t n) {
  using V = at::vec::Vectorized<double>;
  constexpr int64_t W = kNarrow, R = 4, L = V::size(), NV = W / L;
  static_assert(W % L == 0, "kNarrow: whole vectors");
  std::vector<double> bp(size_t(std::max<int64_t>(k, 1) * W), 0.0);
  for (int64_t d = 0; d < k; ++d)
    for (int64_t j = 0; j < n; ++j) bp[d * W + j] = double(b[d * n + j]);
  const double* B = bp.data();
  at::parallel_for(0, (N + R - 1) / R, std::max<int64_t>(1, kNarrowGrain / (R * W * std::max<int64_t>(k, 1))),
                   [&](int64_t g0, int64_t g1) {
    alignas(64) double tmp[W];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t i0 = g * R, nr = std::min(R, N - i0);
      V acc[R][NV];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t v = 0; v < NV; ++v) acc[r][v] = V(0.0);
      if (nr == R) {
        for (int64_t d = 0; d < k; ++d) {
          const double* br = B + d * W;
          V bv[NV];
          for (int64_t v = 0; v < NV; ++v) bv[v] = V::loadu(br + v * L);
          for (int64_t r = 0; r < R; ++r) {
            const V ad(double(a[(i0 + r) * k + d]));
            for (int64_t v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ad, bv[v], acc[r][v]);
          }
        }
      } else {
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t d = 0; d < k; ++d) {
            const V ad(double(a[(i0 + r) * k + d]));
            for (int64_t v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ad, V::loadu(B + d * W + v * L), acc[r][v]);
          }
      }
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t v = 0; v < NV; ++v) acc[r][v].store(tmp + v * L);
        for (int64_t j = 0; j < n; ++j) out[(i0 + r) * n + j] = T(tmp[j]);
      }
    }
  });
}

// out (N, n) = a (N, k) b (k, n), k <= kNarrow: every output element an fma chain over b's rows (contiguous) in order
// in the dtype, the first term a product (as a float GEMM rounds; an fma onto +0 would turn a -0 product into +0);
// rows independent, so the same bits for any thread count.  NN = n fixed at compile time (8, 16: the row's outputs in
// registers), else n at run time; grain: rows per task.  The MLR head's dt z^T (mm_rows) and the batch norm's
// v = u M (poincare_bn.cpp, bn_times_M: D <= 16, grain ~32768 / D^2 rows) -- one loop for both since session 21.
template <typename T, int NN = 0>
void rows_narrow_in_n(T* out, const T* a, const T* b, int64_t N, int64_t k, int64_t n_rt, int64_t grain) {
  const int64_t n = NN ? NN : n_rt;
  at::parallel_for(0, N, std::max<int64_t>(grain, 1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* ar = a + i * k;
      T* o = out + i * n;
      if (k == 0) {
        std::fill(o, o + n, T(0));
        continue;
      }
      T buf[NN > 0 ? NN : 1];
      T* acc = NN > 0 ? buf : o;  // NN: the row's outputs in registers, written once
      const T a0 = ar[0];
      for (int64_t e = 0; e < n; ++e) acc[e] = a0 * b[e];
      for (int64_t d = 1; d < k; ++d) {
        const T ad = ar[d];
        const T* br = b + d * n;
        for (int64_t e = 0; e < n; ++e) acc[e] = std::fma(ad, br[e], acc[e]);
      }
      if constexpr (NN > 0) std::copy(buf, buf + NN, o);
    }
  });
}

template <typename T>
void rows_narrow_in(T* out, const T* a, const T* b, int64_t N, int64_t k, int64_t n, int64_t grain) {
  (n == 8 ? rows_narrow_in_n<T, 8> : n == 16 ? rows_narrow_in_n<T, 16> : rows_narrow_in_n<T, 0>)(out, a, b, N, k, n,
                                                                                                   grain);
}

// mm_rows' rows per task: ~kNarrowGrain multiply-adds (the digits head's 64 x 10 -> 512 runs on one thread: a fork
// cost more)
inline int64_t narrow_in_grain(int64_t k, int64_t n) {
  return std::max<int64_t>(1, kNarrowGrain / std::max<int64_t>(n * std::max<int64_t>(k, 1), 1));
}

// out (n, m) = a^T b for a (K, n), b (K, m), m <= kNarrow: blocks of RB of a's columns over the threads; per block,
// each entry an fma chain in double over the rows in order, rounded once to the dtype
template <typename T>
void tn_narrow(T* out, const T* a, const T* b, int64_t K, int64_t n, int64_t m) {
  constexpr int64_t RB = 256;
  const int64_t nblk = (n + RB - 1) / RB;
  at::parallel_for(0, nblk, K * m * RB >= kNarrowGrain ? 1 : nblk, [&](int64_t b0, int64_t b1) {
    std::vector<double> acc(static_cast<size_t>(kNarrow * RB)), ad(static_cast<size_t>(RB));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * RB, nb = std::min(RB, n - r0);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < K; ++i) {
        const T* ar = a + i * n + r0;
        for (int64_t r = 0; r < nb; ++r) ad[r] = double(ar[r]);
        for (int64_t j = 0; j < m; ++j) {
          const double bij = double(b[i * m + j]);
          double* aj = acc.data() + j * RB;
          for (int64_t r = 0; r < nb; ++r) aj[r] = std::fma(ad[r], bij, aj[r]);
        }
      }
      for (int64_t r = 0; r < nb; ++r)
        for (int64_t j = 0; j < m; ++j) out[(r0 + r) * m + j] = T(acc[j * RB + r]);
    }
  });
}

// out (n, m) = a^T b for a (K, n), b (K, m), all contiguous: tiles of kRows reduction rows x kCols output
// columns over the threads (so that one chunk of rows still runs on all threads), the chunks' partial products
// summed in chunk order
inline void mm_tn(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool narrow = false) {
  if (narrow && b.size(1) <= kNarrow && a.size(0) * a.size(1) * b.size(1) <= kNarrowWork && narrow_on()) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fixed_gemm_tn_narrow", [&] {
      tn_narrow<scalar_t>(out.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), a.size(0),
                          a.size(1), b.size(1));
    });
    return;
  }
  const int64_t K = a.size(0), m = b.size(1), nch = std::max<int64_t>(1, (K + kRows - 1) / kRows);
  const int64_t npan = std::max<int64_t>(1, (m + kCols - 1) / kCols);
  at::Tensor parts = nch == 1 ? out : at::empty({nch, a.size(1), m}, a.options());
  at::parallel_for(0, nch * npan, 1, [&](int64_t t0, int64_t t1) {
    at::NoGradGuard no_grad;
    OneMklThread one;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fixed_gemm_mm_tn", [&] {
      for (int64_t tl = t0; tl < t1; ++tl) {
        const int64_t ch = tl / npan, j0 = (tl % npan) * kCols;
        tile_tn<scalar_t>(parts.data_ptr<scalar_t>() + ch * a.size(1) * m, a, b, ch * kRows,
                          std::min(kRows, K - ch * kRows), j0, std::min(kCols, m - j0));
      }
    });
  });
  if (nch == 1) return;
  const int64_t E = a.size(1) * b.size(1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fixed_gemm_mm_tn", [&] {
    const scalar_t* p = parts.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, E, 8192, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        scalar_t s = p[e];
        for (int64_t ch = 1; ch < nch; ++ch) s += p[ch * E + e];
        o[e] = s;
      }
    });
  });
}

// out (N, n) = a b for a (N, m) and b (m, n) (contiguous): fixed chunks of rows, one MKL thread each
// (narrow: small products with n or k <= kNarrow by the loops above instead)
inline void mm_rows(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t rows = 512, bool narrow = false) {
  const int64_t N = a.size(0), k = a.size(1), n = b.size(1), nch = std::max<int64_t>(1, (N + rows - 1) / rows);
  if (narrow && (n <= kNarrow || k <= kNarrow) && N * k * n <= kNarrowWork && narrow_on()) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fixed_gemm_rows_narrow", [&] {
      if (n <= kNarrow)
        rows_narrow_out<scalar_t>(out.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), N, k, n);
      else
        rows_narrow_in<scalar_t>(out.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), N, k, n,
                                 narrow_in_grain(k, n));
    });
    return;
  }
  at::parallel_for(0, nch, 1, [&](int64_t c0, int64_t c1) {
    at::NoGradGuard no_grad;
    OneMklThread one;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fixed_gemm_mm_rows", [&] {
      using T = scalar_t;
      for (int64_t ch = c0; ch < c1; ++ch) {
        const int64_t r0 = ch * rows, nr = std::min(rows, N - r0);
        if (const auto f = cblas_gemm<T>(); f && mkl_packed::fits_int(nr, n, k)) {
          f(mkl_packed::kRowMajor, mkl_packed::kNoTrans, mkl_packed::kNoTrans, int(nr), int(n), int(k), T(1),
            a.data_ptr<T>() + r0 * k, int(k), b.data_ptr<T>(), int(n), T(0), out.data_ptr<T>() + r0 * n, int(n));
        } else {
          at::Tensor oc = out.narrow(0, r0, nr);
          at::mm_out(oc, a.narrow(0, r0, nr), b);
        }
      }
    });
  });
}

}  // namespace fixed_gemm
}  // namespace cpu
}  // namespace geoops
