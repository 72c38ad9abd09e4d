// Entry points of the fused CPU kernels of the kappa-stereographic row ops (forward and backward):
// argument handling, outputs, per-row k and r in double.  The kernels are in stereographic_lanes.h
// (the row math of stereo_math.h on SIMD vectors, one lane per row).
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit (expand_groups, sum_groups)

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "geoops/stereo_math.h"
#include "stereographic.h"
#include "stereographic_rows.h"

namespace geoops {
namespace cpu {

using namespace geoops::stereo;

namespace {

// Inner stride 1 is what the loops assume; any row stride (0 for broadcast rows) is fine.
at::Tensor rows_view(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

// k (and r) as the kernels read them: one value or one per row, in double.  A one-element float32/float64 k (every
// call with one curvature) is read in place into `k1` (the value k.to(kDouble) holds): no double tensor per call.
RowScalars scalars_of(const at::Tensor& k, const c10::optional<at::Tensor>& r, at::Tensor& k64, at::Tensor& r64,
                      double& k1) {
  RowScalars sc{nullptr, 0, nullptr, 0};
  if (k.numel() == 1 && k.device().is_cpu() && (k.scalar_type() == at::kFloat || k.scalar_type() == at::kDouble)) {
    k1 = k.scalar_type() == at::kFloat ? static_cast<double>(*k.const_data_ptr<float>()) : *k.const_data_ptr<double>();
    sc.k = &k1;
  } else {
    k64 = k.to(at::kDouble).contiguous();
    sc.k = k64.data_ptr<double>();
    sc.sk = k64.numel() == 1 ? 0 : 1;
  }
  if (r.has_value() && r->defined() && r->scalar_type() == at::kFloat && r->dim() <= 1) {
    // float32 r (one value, or one per row): read in place by the kernels (RowScalars::rf), no double copy
    sc.rf = r->data_ptr<float>();
    sc.sr = r->numel() == 1 ? 0 : (r->dim() == 1 ? r->stride(0) : 0);
  } else if (r.has_value() && r->defined()) {
    r64 = r->to(at::kDouble).contiguous();
    sc.r = r64.data_ptr<double>();
    sc.sr = r64.numel() == 1 ? 0 : 1;
  }
  return sc;
}

}  // namespace

at::Tensor stereo_fwd_cpu(int64_t op, const at::Tensor& x_, const c10::optional<at::Tensor>& y_, const at::Tensor& k,
                          const c10::optional<at::Tensor>& r, double param) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown stereographic op ", op);
  const at::Tensor x = rows_view(x_);
  const at::Tensor y = (op_has_y(op) && y_.has_value() && y_->defined()) ? rows_view(*y_) : x;
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = op_scalar_out(op) ? at::empty({N}, x.options()) : at::empty({N, D}, x.options());
  if (N == 0) return out;
  at::Tensor k64, r64;
  double k1;
  RowScalars sc = scalars_of(k, r, k64, r64, k1);
  stereo_lanes_fwd(static_cast<int>(op), x, y, sc, param, out);  // stereographic_lanes.cpp
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cpu(
    int64_t op, const at::Tensor& grad_, const at::Tensor& x_, const c10::optional<at::Tensor>& y_,
    const at::Tensor& k, const c10::optional<at::Tensor>& r, double param, int64_t mask) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown stereographic op ", op);
  const bool scalar_out = op_scalar_out(op);
  const at::Tensor x = rows_view(x_);
  const bool y_given = y_.has_value() && y_->defined();
  const bool has_y = y_given && op_has_y(op);  // an op without y ignores a y it is given (zero gradient)
  const at::Tensor y = has_y ? rows_view(*y_) : x;
  const at::Tensor grad = scalar_out ? grad_.contiguous() : rows_view(grad_);
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor dx = (mask & 1) ? at::empty({N, D}, x.options()) : at::empty({0}, x.options());
  at::Tensor dy = (y_given && (mask & 2)) ? (has_y ? at::empty({N, D}, x.options()) : at::zeros({N, D}, x.options()))
                                          : at::empty({0}, x.options());
  const bool want_r = r.has_value() && r->defined() && (mask & 8);
  at::Tensor dk = (mask & 4) ? at::empty({N}, x.options().dtype(at::kDouble)) : at::empty({0}, x.options());
  at::Tensor dr = want_r ? at::empty({N}, x.options().dtype(at::kDouble)) : at::empty({0}, x.options());
  if (N > 0) {
    at::Tensor k64, r64;
    double k1;
    RowScalars sc = scalars_of(k, r, k64, r64, k1);
    at::Tensor dx_arg = (mask & 1) ? dx : at::Tensor();
    at::Tensor dy_arg = (has_y && (mask & 2)) ? dy : at::Tensor();
    double* dkp = (mask & 4) ? dk.data_ptr<double>() : nullptr;
    double* drp = want_r ? dr.data_ptr<double>() : nullptr;
    stereo_lanes_bwd(static_cast<int>(op), grad, x, y, has_y, sc, param, dx_arg, dy_arg, dkp, drp);
  }
  if (mask & 4) dk = dk.to(k.scalar_type());
  if (want_r) dr = dr.to(r->scalar_type());
  return {dx, dy, dk, dr};
}

namespace {

// The broadcast rows of a row group: row i of the (G * rep, D) result is x row i / rep, copied (no ATen dispatch per
// call: the eager fast path's x.expand(shape).reshape(-1, D) cost ~6 us of Python and ATen dispatch at the WordNet
// loss's 704 rows).  Each x row goes through SIMD vectors (a partial one for the row's tail) and is stored rep times.
template <typename scalar_t>
void expand_rows(const scalar_t* xp, int64_t sx, int64_t G, int64_t rep, int64_t D, scalar_t* op) {
  using V = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = V::size();
  for (int64_t g = 0; g < G; ++g, op += rep * D) {
    const scalar_t* xr = xp + g * sx;
    for (int64_t c = 0; c < D; c += L) {
      const int64_t w = std::min(L, D - c);
      const V v = w == L ? V::loadu(xr + c) : V::loadu(xr + c, w);
      for (int64_t j = 0; j < rep; ++j) {
        if (w == L) {
          v.store(op + j * D + c);
        } else {
          v.store(op + j * D + c, w);
        }
      }
    }
  }
}

at::Tensor expand_groups(const at::Tensor& x_, int64_t rep) {
  const int64_t G = x_.size(0), D = x_.size(1);
  at::Tensor out = at::empty({G * rep, D}, x_.options());
  if (G == 0 || D == 0) return out;
  // expand_rows copies rows of D adjacent entries: a strided vector (x[..., ::2], a transposed x) is made
  // row-contiguous first (read as adjacent, its rows were silently wrong, session 38)
  const at::Tensor x = rows_view(x_);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "expand_groups", [&] {
    expand_rows<scalar_t>(x.const_data_ptr<scalar_t>(), x.stride(0), G, rep, D, out.data_ptr<scalar_t>());
  });
  return out;
}

// dx of a row group: out[g] = the sum of rows g * rep .. g * rep + rep - 1 of d (N = G * rep rows, row-contiguous), in
// one fixed order: four chains over the first rep / 4 * 4 rows (row j into chain j % 4), the rest into chain 0, then
// ((c0 + c1) + c2) + c3, in the rows' dtype.  That is torch.sum's order over dim 1 of a contiguous float32
// (G, rep, D) at the small rep and D of the fast path's calls (e.g. the WordNet loss's (64, 11, 10): the result has
// the bits of the materialising path's torch.sum there); elsewhere it differs from torch.sum by the rounding of a
// sum of rep terms (tests/test_stereographic_rep.py bounds it).  The columns a SIMD vector at a time (the chains in
// four vectors; a partial vector for the row's tail).
template <typename scalar_t>
void sum_groups(const scalar_t* d, int64_t G, int64_t rep, int64_t D, scalar_t* out) {
  using V = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = V::size();
  const int64_t m = rep / 4 * 4;
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* dg = d + g * rep * D;
    for (int64_t c = 0; c < D; c += L) {
      const int64_t w = std::min(L, D - c);
      auto at = [&](int64_t j) { return w == L ? V::loadu(dg + j * D + c) : V::loadu(dg + j * D + c, w); };
      V a0(scalar_t(0)), a1(scalar_t(0)), a2(scalar_t(0)), a3(scalar_t(0));
      for (int64_t j = 0; j < m; j += 4) {
        a0 = a0 + at(j);
        a1 = a1 + at(j + 1);
        a2 = a2 + at(j + 2);
        a3 = a3 + at(j + 3);
      }
      for (int64_t j = m; j < rep; ++j) a0 = a0 + at(j);
      const V s = ((a0 + a1) + a2) + a3;
      if (w == L) {
        s.store(out + g * D + c);
      } else {
        s.store(out + g * D + c, w);
      }
    }
  }
}

void check_rep(const char* what, int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t rep) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS && op_has_y(op), "geoops: ", what, " takes an op with a second input y, got ",
              op);
  TORCH_CHECK(rep >= 1, "geoops: ", what, ": rep must be >= 1, got ", rep);
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "geoops: ", what, " takes x as float32 / float64 rows (G, D)");
  TORCH_CHECK(y.has_value() && y->defined(), "geoops: ", what, " needs y");
  TORCH_CHECK(y->dim() == 2 && y->size(0) == x.size(0) * rep && y->size(1) == x.size(1),
              "geoops: ", what, ": y must have G * rep = ", x.size(0) * rep, " rows of D = ", x.size(1));
}

}  // namespace

at::Tensor stereo_fwd_rep_cpu(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
                              const c10::optional<at::Tensor>& r, double param, int64_t rep) {
  check_rep("stereo_fwd_rep_cpu", op, x, y, rep);
  return stereo_fwd_cpu(op, rep == 1 ? x : expand_groups(x, rep), y, k, r, param);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_rep_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& r, double param, int64_t mask, int64_t rep) {
  check_rep("stereo_bwd_rep_cpu", op, x, y, rep);
  if (rep == 1) return stereo_bwd_cpu(op, grad, x, y, k, r, param, mask);
  auto res = stereo_bwd_cpu(op, grad, expand_groups(x, rep), y, k, r, param, mask);
  if (mask & 1) {
    const at::Tensor& d = std::get<0>(res);  // (G * rep, D), fresh and row-contiguous
    const int64_t G = x.size(0), D = x.size(1);
    at::Tensor dx = at::empty({G, D}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stereo_bwd_rep_cpu", [&] {
      sum_groups<scalar_t>(d.const_data_ptr<scalar_t>(), G, rep, D, dx.data_ptr<scalar_t>());
    });
    std::get<0>(res) = dx;
  }
  return res;
}

}  // namespace cpu
}  // namespace geoops
