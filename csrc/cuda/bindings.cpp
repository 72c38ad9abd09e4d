// Tensor-level wrappers of the CUDA kernels of the kappa-stereographic family.
//
// Checks and prepares the operands (devices, dtypes, unit inner stride),
// allocates the outputs and calls the raw-pointer launchers of
// csrc/cuda/stereographic.cu (geoops/stereo_cuda.h).  Host C++ only: ATen and
// the CUDA runtime API, no c10/cuda or ATen/cuda headers (the caller passes
// its current stream as an integer, and the device is selected with the
// generic c10::DeviceGuard).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <tuple>

#include "bindings.h"
#include "geoops/stereo_cuda.h"
#include "geoops/stereo_math.h"

namespace geoops {
namespace cuda {

namespace {

using geoops::stereo::NUM_OPS;
using geoops::stereo::op_has_y;
using geoops::stereo::op_scalar_out;

// The launchers' dtype code of a tensor dtype, -1 if the kernels do not take it.
int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DT_F32;
    case at::kDouble:
      return DT_F64;
    case at::kHalf:
      return DT_F16;
    case at::kBFloat16:
      return DT_BF16;
    default:
      return -1;
  }
}

// Inner stride 1 is what the kernels assume; any row stride (0 for broadcast rows) is fine.
at::Tensor rows_view(const at::Tensor& t) { return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous(); }

void check_on(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.is_cuda(), "geoops: ", name, " must be a CUDA tensor (got ", t.device(), ")");
  TORCH_CHECK(t.device() == dev, "geoops: ", name, " is on ", t.device(), " but x is on ", dev);
}

// A (1,) or (N,) per-row operand (k, r), flat and contiguous, in a dtype the
// kernels read (its own when supported, the compute dtype otherwise).
struct PerRow {
  at::Tensor t;
  int64_t stride;
  int dtype;
};

PerRow per_row(const at::Tensor& v, const char* name, int64_t N, const at::Device& dev, at::ScalarType compute) {
  check_on(v, name, dev);
  TORCH_CHECK(v.numel() == 1 || v.numel() == N, "geoops: ", name, " must have 1 or N = ", N, " elements (got ",
              v.numel(), ")");
  at::Tensor c = dtype_code(v.scalar_type()) >= 0 ? v : v.to(compute);
  c = c.reshape({-1}).contiguous();
  return {c, c.numel() == 1 ? 0 : 1, dtype_code(c.scalar_type())};
}

cudaStream_t as_stream(int64_t stream) { return reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(stream)); }

void check_launch(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // do not leave a non-sticky launch error for torch's next check to find
  TORCH_CHECK(false, "geoops: ", what, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// Common checks of x (and y): returns x's dtype code.
int check_xy(int64_t op, const at::Tensor& x, const c10::optional<at::Tensor>& y, const char* what) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown stereographic op ", op);
  TORCH_CHECK(x.dim() == 2, "geoops: ", what, ": x must be (N, D) (got ", x.sizes(), ")");
  check_on(x, "x", x.device());
  const int dt = dtype_code(x.scalar_type());
  TORCH_CHECK(dt >= 0, "geoops: ", what, ": unsupported dtype ", x.scalar_type(),
              " (float32, float64, float16, bfloat16)");
  if (op_has_y(static_cast<int>(op))) {
    TORCH_CHECK(y.has_value() && y->defined(), "geoops: ", what, ": this op needs y");
    check_on(*y, "y", x.device());
    TORCH_CHECK(y->scalar_type() == x.scalar_type(), "geoops: ", what, ": y has dtype ", y->scalar_type(),
                " but x has ", x.scalar_type());
    TORCH_CHECK(y->sizes() == x.sizes(), "geoops: ", what, ": y has shape ", y->sizes(), " but x has ", x.sizes());
  }
  return dt;
}

// What both wrappers derive from op, x and y once check_xy has passed: the
// op's shape, x and y (for ops with y) in row layout, and N, D.
struct Rows {
  int op;
  bool has_y, scalar_out;
  at::Tensor x, y;
  int64_t N, D;
};

Rows rows_of(int64_t op, const at::Tensor& x_, const c10::optional<at::Tensor>& y_) {
  const int iop = static_cast<int>(op);
  const bool has_y = op_has_y(iop);
  const at::Tensor x = rows_view(x_);
  return {iop, has_y, op_scalar_out(iop), x, has_y ? rows_view(*y_) : at::Tensor(), x.size(0), x.size(1)};
}

// k and r as per-row operands of the rows (k checked first); without r, has_r
// is false and r an empty placeholder (stride 0, DT_F32).
struct KR {
  PerRow k, r;
  bool has_r;
};

KR per_row_kr(const at::Tensor& k, const c10::optional<at::Tensor>& r, const Rows& rows) {
  const at::ScalarType compute = rows.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool has_r = r.has_value() && r->defined();
  // A braced list is evaluated left to right: k, then r.
  return {per_row(k, "k", rows.N, rows.x.device(), compute),
          has_r ? per_row(*r, "r", rows.N, rows.x.device(), compute) : PerRow{at::Tensor(), 0, DT_F32}, has_r};
}

}  // namespace

at::Tensor stereo_fwd_cuda(int64_t op, const at::Tensor& x_, const c10::optional<at::Tensor>& y_, const at::Tensor& k,
                           const c10::optional<at::Tensor>& r, double param, int64_t stream) {
  const int dt = check_xy(op, x_, y_, "stereo_fwd_cuda");
  const c10::DeviceGuard guard(x_.device());
  const Rows rows = rows_of(op, x_, y_);
  const at::Tensor& x = rows.x;
  const int64_t N = rows.N, D = rows.D;
  const KR kr = per_row_kr(k, r, rows);

  at::Tensor out = rows.scalar_out ? at::empty({N}, x.options()) : at::empty({N, D}, x.options());
  if (N == 0) return out;
  const cudaError_t err = launch_stereo_fwd(                                        //
      rows.op, dt,                                                                  //
      x.data_ptr(), x.stride(0),                                                    //
      rows.has_y ? rows.y.data_ptr() : nullptr, rows.has_y ? rows.y.stride(0) : 0,  //
      kr.k.t.data_ptr(), kr.k.stride, kr.k.dtype,                                   //
      kr.has_r ? kr.r.t.data_ptr() : nullptr, kr.r.stride, kr.r.dtype,              //
      param,                                                                        //
      out.data_ptr(), out.stride(0),                                                //
      N, D, as_stream(stream));
  check_launch(err, "stereo_fwd_cuda");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cuda(
    int64_t op, const at::Tensor& grad_, const at::Tensor& x_, const c10::optional<at::Tensor>& y_,
    const at::Tensor& k, const c10::optional<at::Tensor>& r, double param, int64_t mask, int64_t stream) {
  const int dt = check_xy(op, x_, y_, "stereo_bwd_cuda");
  const c10::DeviceGuard guard(x_.device());
  const Rows rows = rows_of(op, x_, y_);
  const at::Tensor& x = rows.x;
  const int64_t N = rows.N, D = rows.D;

  check_on(grad_, "grad", x.device());
  TORCH_CHECK(grad_.scalar_type() == x.scalar_type(), "geoops: stereo_bwd_cuda: grad has dtype ",
              grad_.scalar_type(), " but x has ", x.scalar_type());
  at::Tensor grad;
  if (rows.scalar_out) {
    TORCH_CHECK(grad_.numel() == N, "geoops: stereo_bwd_cuda: grad must have N = ", N, " elements (got ",
                grad_.sizes(), ")");
    grad = grad_.reshape({N});  // any stride, 0 included: the kernel reads grad[i * stride]
  } else {
    TORCH_CHECK(grad_.sizes() == x.sizes(), "geoops: stereo_bwd_cuda: grad has shape ", grad_.sizes(),
                " but x has ", x.sizes());
    grad = rows_view(grad_);
  }

  const KR kr = per_row_kr(k, r, rows);
  const bool want_dx = (mask & 1) != 0, want_dy = rows.has_y && (mask & 2) != 0;
  const bool want_dk = (mask & 4) != 0, want_dr = kr.has_r && (mask & 8) != 0;
  // An absent gradient is its own empty tensor: outputs of a custom op may not alias each other
  // (torch.library checks it), so one shared empty would fail as soon as two gradients are absent.
  const auto empty = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = want_dx ? at::empty({N, D}, x.options()) : empty();
  at::Tensor dy = want_dy ? at::empty({N, D}, x.options()) : empty();
  at::Tensor dk = want_dk ? at::empty({N}, x.options().dtype(kr.k.t.scalar_type())) : empty();
  at::Tensor dr = want_dr ? at::empty({N}, x.options().dtype(kr.r.t.scalar_type())) : empty();

  if (N > 0) {
    const cudaError_t err = launch_stereo_bwd(                                        //
        rows.op, dt,                                                                  //
        grad.data_ptr(), grad.stride(0),                                              //
        x.data_ptr(), x.stride(0),                                                    //
        rows.has_y ? rows.y.data_ptr() : nullptr, rows.has_y ? rows.y.stride(0) : 0,  //
        kr.k.t.data_ptr(), kr.k.stride, kr.k.dtype,                                   //
        kr.has_r ? kr.r.t.data_ptr() : nullptr, kr.r.stride, kr.r.dtype,              //
        param,                                                                        //
        want_dx ? dx.data_ptr() : nullptr, want_dx ? dx.stride(0) : 0,                //
        want_dy ? dy.data_ptr() : nullptr, want_dy ? dy.stride(0) : 0,                //
        want_dk ? dk.data_ptr() : nullptr, kr.k.dtype,                                //
        want_dr ? dr.data_ptr() : nullptr, kr.r.dtype,                                //
        N, D, as_stream(stream));
    check_launch(err, "stereo_bwd_cuda");
  }
  // k / r in a dtype the kernels do not take were read in the compute dtype: give dk / dr back in theirs.
  if (want_dk && dk.scalar_type() != k.scalar_type()) dk = dk.to(k.scalar_type());
  if (want_dr && dr.scalar_type() != r->scalar_type()) dr = dr.to(r->scalar_type());
  return {dx, dy, dk, dr};
}

}  // namespace cuda
}  // namespace geoops
