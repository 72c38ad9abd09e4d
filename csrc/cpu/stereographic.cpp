// Entry points of the fused CPU kernels of the kappa-stereographic row ops (forward and backward):
// argument handling, outputs, per-row k and r in double.  The kernels are in stereographic_lanes.h
// (the row math of stereo_math.h on SIMD vectors, one lane per row).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
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

}  // namespace cpu
}  // namespace geoops
