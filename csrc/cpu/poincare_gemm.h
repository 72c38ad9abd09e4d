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

#include "mkl_packed.h"

#include <algorithm>
#include <type_traits>

namespace geoops {
namespace cpu {
namespace fixed_gemm {

// MKL runs single-threaded on this thread while in scope
struct OneMklThread {
  using Fn = int (*)(int);
  Fn f;
  int prev = 0;
  OneMklThread() : f(fn()) {
    if (f) prev = f(1);
  }
  ~OneMklThread() {
    if (f) f(prev);
  }
  static Fn fn() {
    static const Fn p = reinterpret_cast<Fn>(mkl_packed::detail::find_symbol("MKL_Set_Num_Threads_Local"));
    return p;
  }
};

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

// out (n, m) = a^T b for a (K, n), b (K, m), all contiguous: tiles of kRows reduction rows x kCols output
// columns over the threads (so that one chunk of rows still runs on all threads), the chunks' partial products
// summed in chunk order
inline void mm_tn(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
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
inline void mm_rows(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t rows = 512) {
  const int64_t N = a.size(0), k = a.size(1), n = b.size(1), nch = std::max<int64_t>(1, (N + rows - 1) / rows);
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
