// Internal header of the Poincaré layers' row passes (poincare_relu.cpp, poincare_bn.cpp): the row grain and the
// fixed row chunks both use, the rows check of their entry points, and the small dispatch helpers that turn a
// runtime row width or dtype into a template argument (one place for the ladders the passes share).
// Include after geoops/cpu_capability.h (the including .cpp picks the at::vec ISA; every .cpp of the extension is
// built with the same flags).
#pragma once

#include <torch/extension.h>

#include "row_chunks.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace geoops {
namespace cpu {
namespace prows {

// Rows per at::parallel_for task: about 32768 elements of work, torch's own grain, so that small inputs (the
// digits CNN's 4096 x 8 rows) run on the calling thread instead of paying a parallel region each call.
inline int64_t grain(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1)); }

// Fixed row chunks and their partial sums (the reproducibility notes at the batch norm, poincare_bn.cpp; the ReLU
// uses them too).
constexpr int64_t kBnBlock = 256;  // rows per block of the row passes: their scalars and coefficients stay in L1

// Rows per chunk of the reductions: about grain(work_per_row) rows rounded up to whole blocks.
inline int64_t chunk_rows(int64_t work_per_row) { return (grain(work_per_row) + kBnBlock - 1) / kBnBlock * kBnBlock; }

// for_row_chunks, Partials: csrc/cpu/row_chunks.h (shared with the stereographic weighted midpoint)
using chunks::for_row_chunks;
using chunks::Partials;

// x must be (N, D) rows of float32 / float64 (op: the name in the message).
inline void check_rows(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (N, D) rows");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32 or float64 on the CPU");
}

// ---- dispatch: a runtime value as a template argument.  A generic lambda receives a tag and reads the type or the
// width from it, e.g.
//   by_dtype(f64, [&](auto z) { using T = decltype(z); impl<T>(x.data_ptr<T>(), ...); });
//   j = with_tile_width(D, [&](auto W) { return pass_tiles<W>(...); });
// (W converts to its int in a template argument; the lambda's body is instantiated only for the widths called.)
template <int W>
using Width = std::integral_constant<int, W>;

// f(double{}) when f64, else f(float{}): the entry points' call of a pass on the tensor's dtype (float32 / float64,
// checked before: check_rows).
template <typename F>
inline decltype(auto) by_dtype(bool f64, F&& f) {
  return f64 ? f(double{}) : f(float{});
}

// The fixed-width row passes: f(Width<8>) at D = 8, f(Width<16>) at D = 16 (bodies with the row in whole vectors of
// doubles), else f(Width<0>) (the same expressions on the runtime D).
template <typename F>
inline decltype(auto) with_row_width(int64_t D, F&& f) {
  if (D == 8) return f(Width<8>{});
  if (D == 16) return f(Width<16>{});
  return f(Width<0>{});
}

// The tile paths of 16 float rows (poincare_bn.cpp's bn_tiles: D is 8 or 16 there): f(Width<16>) or f(Width<8>).
template <typename F>
inline decltype(auto) with_tile_width(int64_t D, F&& f) {
  return D == 16 ? f(Width<16>{}) : f(Width<8>{});
}

// f(Width<D>) for a runtime D in [1, MaxD] (the ReLU's float blocks: one body per width); false when D is outside.
template <int MaxD, typename F>
inline bool with_width_upto(int64_t D, F&& f) {
  return [&]<int... W>(std::integer_sequence<int, W...>) {
    bool r = false;
    ((D == W + 1 && ((r = f(Width<W + 1>{})), true)) || ...);
    return r;
  }(std::make_integer_sequence<int, MaxD>{});
}

}  // namespace prows
}  // namespace cpu
}  // namespace geoops
