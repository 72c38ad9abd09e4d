// Raw-pointer launchers of the CUDA kernels of the kappa-stereographic family
// (csrc/cuda/stereographic.cu).  Pure CUDA runtime types: no torch headers, so
// the .cu files build with nvcc alone and the tensor-level wrappers
// (csrc/cuda/bindings.cpp) only need <cuda_runtime_api.h>.
//
// Conventions (the same contract as the CPU kernels, csrc/cpu/stereographic.h):
//   * x, y, out, grad, dx, dy are (N, D) row-major with unit inner stride; every
//     row stride is in ELEMENTS (not bytes) and may be 0 (broadcast rows).
//   * k and r are per row: element i sits at ptr[i * stride], stride 0 (one
//     value for all rows) or 1.  They may have their own dtype (any of Dtype).
//   * `op` is a geoops::stereo::Op (stereo_math.h); `param` is its extra scalar
//     (eps of project, unused otherwise).
//   * Scalar-valued ops (lambda_x, dist, dist0) write out[i * out_stride] (fwd)
//     and read grad[i * grad_stride] (bwd).
//   * Row scalars are accumulated, and the per-row math is done, in double for
//     DT_F64 data and in float for DT_F32 / DT_F16 / DT_BF16 data.
//   * Row operands are never dereferenced when D == 0, so their pointers may
//     then be null (as torch gives for empty tensors); k must not be null.
//   * Nothing heavy is validated; the return value is the cudaError_t of the
//     launch (cudaSuccess also for N == 0, which launches nothing).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace geoops {
namespace cuda {

// Element types of the operands.
enum Dtype : int {
  DT_F32 = 0,
  DT_F64 = 1,
  DT_F16 = 2,
  DT_BF16 = 3,
};

// out = op(x, y; k, r, param).
//   y: nullptr (and y_row_stride ignored) for ops without y.
//   r: nullptr for ops without r (read as 0).
//   out: (N, D) with row stride out_row_stride, or (N,) with stride
//        out_row_stride for scalar-valued ops.
cudaError_t launch_stereo_fwd(int op, int dtype,                                   //
                              const void* x, int64_t x_row_stride,                 //
                              const void* y, int64_t y_row_stride,                 //
                              const void* k, int64_t k_stride, int k_dtype,        //
                              const void* r, int64_t r_stride, int r_dtype,        //
                              double param,                                        //
                              void* out, int64_t out_row_stride,                   //
                              int64_t N, int64_t D, cudaStream_t stream);

// Vector-Jacobian product of op at (x, y; k, r) with the output adjoint grad.
//   grad: (N, D) with row stride grad_row_stride, or (N,) with stride
//         grad_row_stride for scalar-valued ops; dtype `dtype`.
//   dx, dy: (N, D) outputs with their row strides, dtype `dtype`; either may
//           be nullptr (not computed; dy is never written for ops without y).
//   dk, dr: per-row outputs (N,), contiguous, in dk_dtype / dr_dtype; either
//           may be nullptr.  The caller sums them where k / r were broadcast.
cudaError_t launch_stereo_bwd(int op, int dtype,                                   //
                              const void* grad, int64_t grad_row_stride,           //
                              const void* x, int64_t x_row_stride,                 //
                              const void* y, int64_t y_row_stride,                 //
                              const void* k, int64_t k_stride, int k_dtype,        //
                              const void* r, int64_t r_stride, int r_dtype,        //
                              double param,                                        //
                              void* dx, int64_t dx_row_stride,                     //
                              void* dy, int64_t dy_row_stride,                     //
                              void* dk, int dk_dtype,                              //
                              void* dr, int dr_dtype,                              //
                              int64_t N, int64_t D, cudaStream_t stream);

}  // namespace cuda
}  // namespace geoops
