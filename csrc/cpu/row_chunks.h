// Fixed-order reductions over rows, shared by the CPU kernels that sum over many rows (the Poincaré batch norm's
// passes in poincare_bn.cpp, the stereographic weighted midpoint in stereographic_midpoint.cpp): rows go in
// chunks of a fixed number of rows (independent of the thread count), each chunk's sums land in a 64-byte-aligned
// row of Partials, and the rows are added in chunk order, so the bits do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

namespace geoops {
namespace cpu {
namespace chunks {

// Chunks [0, nc) spread over the threads: fn(i0, i1, chunk index) for rows [i0, i1) of [0, N), `rows` per chunk.
template <typename F>
void for_row_chunks(int64_t N, int64_t rows, const F& fn) {
  const int64_t nc = (N + rows - 1) / rows;
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) fn(ci * rows, std::min(N, (ci + 1) * rows), ci);
  });
}

// Per-chunk partial sums: one zeroed, 64-byte-aligned row of W doubles per chunk (nc chunks); sum() adds the rows
// in chunk order (sum(c0, c1, out): the rows [c0, c1) only).
struct Partials {
  int64_t nc, W, stride;
  std::unique_ptr<double[]> raw;
  double* base;
  Partials(int64_t nc_, int64_t W_) : nc(nc_), W(W_), stride((W_ + 7) / 8 * 8), raw(new double[nc_ * stride + 8]()) {
    base = reinterpret_cast<double*>((reinterpret_cast<std::uintptr_t>(raw.get()) + 63) & ~std::uintptr_t(63));
  }
  Partials(int64_t N, int64_t rows, int64_t W_) : Partials((N + rows - 1) / rows, W_) {}
  double* row(int64_t ci) const { return base + ci * stride; }
  void sum(int64_t c0, int64_t c1, double* out) const {
    for (int64_t w = 0; w < W; ++w) out[w] = 0.0;
    for (int64_t ci = c0; ci < c1; ++ci)
      for (int64_t w = 0; w < W; ++w) out[w] += base[ci * stride + w];
  }
  std::vector<double> sum() const {
    std::vector<double> out(W, 0.0);
    sum(0, nc, out.data());
    return out;
  }
};

}  // namespace chunks
}  // namespace cpu
}  // namespace geoops
