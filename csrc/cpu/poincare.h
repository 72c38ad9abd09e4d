// Poincaré-ball network layers on the CPU (geoops/poincare.py): one GEMM plus fused row-wise work.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>

namespace geoops {
namespace cpu {

// Hyperplane offsets (fc, conv, MLR): a = sc lam t ch / zn - (lam - 1) sh with ch, sh = cosh, sinh(rho), rho =
// 2 sc r.  Beyond |rho| = kOffsetScaledFrom (cosh(300) ~ 1e130: below it a, a^2 and the backward's products stay
// finite in double for every point of the ball, and nothing changes) the column is scaled: ch, sh divided by
// e^ell = e^|rho| / 2 (1 + e^(-2|rho|) and +-(1 - e^(-2|rho|))), so that the row math forms b = a e^-ell, and
// asinh(a) = sign(b) (ell + log(|b| + sqrt(b^2 + q))), q = e^(-2 ell); d asinh(a) / db = 1 / sqrt(b^2 + q).
// Every column term of a backward is a product dL/dC e^ell times C e^-ell, formed as it is from the scaled
// ch, sh (geoops.reference.poincare.offset_consts).
// The fc / conv row passes of float32 layers scale from 20 (as the reference): their float column sums of
// dL/da ~ e^-|rho| would underflow near |rho| ~ 87.
constexpr double kOffsetScaledFrom = 300.0, kOffsetScaledFromF32 = 20.0;

// ch, sh (and q) of the offset angle s; returns ell (0: an ordinary column, q = 1)
inline double offset_col(double s, double& ch, double& sh, double& q, double from = kOffsetScaledFrom) {
  q = 1.0;
  if (!(std::abs(s) > from)) {
    ch = std::cosh(s);
    sh = std::sinh(s);
    return 0.0;
  }
  const double e2 = std::expm1(-2.0 * std::abs(s));
  ch = 2.0 + e2;
  sh = s < 0 ? e2 : -e2;
  q = 4.0 * (1.0 + e2);
  return std::abs(s) - std::log(2.0);
}

// asinh(a) of a = e^ell b (ell > 0; q may underflow to 0)
inline double asinh_scaled_col(double b, double ell, double q) {
  const double ab = std::abs(b);
  const double l = ell + std::log(std::max(ab + std::sqrt(ab * ab + q), 1e-300));
  return b < 0 ? -l : l;
}

// e^ell / sqrt(1 + a^2) = 1 / sqrt(b^2 + q) of a = e^ell b
inline double rsqrt_scaled_col(double b, double q) { return 1.0 / std::max(std::sqrt(b * b + q), 1e-300); }

// Poincaré fully-connected layer (HNN++ / Poincaré ResNet, HypLL's poincare_fully_connected followed by its
// project), ball curvature -c (c > 0):
//   x [N, n], z [n, m] (hyperplane orientations, one per column), bias [m] or an empty tensor (no offsets),
//   c: 0-dim tensor.  eps: the projection margin (the ball radius times 1 - eps).
// Returns (y [N, m], t [N, m]); t = x @ z is what the backward needs (an empty tensor unless `save`).
// tangent: x holds tangent vectors u at the origin and the layer's input is project(expmap0(u)) (fused: the
// GEMM runs on u, each row's scale enters the epilogue; the convolution's patch rows).
std::tuple<at::Tensor, at::Tensor> poincare_fc_fwd_cpu(const at::Tensor& x, const at::Tensor& z,
                                                       const at::Tensor& bias, const at::Tensor& c, double eps,
                                                       bool save, bool tangent);

// Gradients of sum(g * y) w.r.t. x, z, bias, c (mask bits 1, 2, 4, 8); unselected ones come back empty.
// gc is a 0-dim float64 tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_fc_bwd_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& z, const at::Tensor& bias, const at::Tensor& c,
    const at::Tensor& t, double eps, int64_t mask, bool tangent);

// The same layer given t = x @ z [N, m] and U = |x|^2 [N] (tangent: |u|^2 of the tangent rows) instead of x
// (the convolution computes t with a convolution, never the patch matrix): forward y [N, m]; backward
// (dL/dt [N, m], dL/dU [N], the column terms of dL/dz [n, m] (without x^T dL/dt), dbias, dc) for mask bits
// 2 dz, 4 dbias, 8 dc (dL/dt and dL/dU always).
at::Tensor poincare_fc_rows_fwd_cpu(const at::Tensor& t, const at::Tensor& U, const at::Tensor& z,
                                    const at::Tensor& bias, const at::Tensor& c, double eps, bool tangent);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_fc_rows_bwd_cpu(
    const at::Tensor& g, const at::Tensor& t, const at::Tensor& U, const at::Tensor& z, const at::Tensor& bias,
    const at::Tensor& c, double eps, int64_t mask, bool tangent);

// Poincaré ReLU of rows x (N, D): project(expmap0(relu(logmap0(x)))), ball curvature -c, one fused row pass.
at::Tensor poincare_relu_fwd_cpu(const at::Tensor& x, const at::Tensor& c, double eps);
// (dL/dx, dL/dc) for dL/dy = g; dL/dc a 0-dim float64 tensor.
std::tuple<at::Tensor, at::Tensor> poincare_relu_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                         const at::Tensor& c, double eps);

// The MLR head's hyperplane distances (poincare_head.cpp): rows x (N, n), z (n, m), bias (m,) or None, c 0-dim
// -> (y [N, m], t = x z [N, m] for the backward); backward -> (dx, dz, dbias, dc) for mask bits 1, 2, 4, 8
// (unselected ones undefined; dc a 0-dim float64 tensor).
std::tuple<at::Tensor, at::Tensor> poincare_mlr_fwd_cpu(const at::Tensor& x, const at::Tensor& z,
                                                        const std::optional<at::Tensor>& bias, const at::Tensor& c);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_mlr_bwd_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& z, const std::optional<at::Tensor>& bias,
    const at::Tensor& c, const at::Tensor& t, int64_t mask);

// Midpoint batch norm: the batch midpoint's sums F = sum_i lam_i x_i (D,), L = sum_i (lam_i - 1) (0-dim) of
// rows x (N, D) in one fused reduction, and its backward (dx, dc) (dc a 0-dim float64 tensor).
std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_fwd_cpu(const at::Tensor& x, const at::Tensor& c);
std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_bwd_cpu(const at::Tensor& gF, const at::Tensor& gL,
                                                                  const at::Tensor& x, const at::Tensor& c);
// The training layer's midpoint, u = logmap_m(x) and S = sum_i |u_i|^2 in one call -> (u, m, S, the sums
// [F, L, V, R] as float64 (D + 3) for the backward: poincare_bn.cpp's mid_vec); x contiguous rows.
std::tuple<at::Tensor, at::Tensor, double, at::Tensor> poincare_bn_layer_fwd_cpu(const at::Tensor& x, double c);
// Its backward from gu = dL/du and the other gradient of m (gm, the transport's) -> (dx, dc) with the logmap's
// and the midpoint's dc.
std::tuple<at::Tensor, double> poincare_bn_layer_bwd_cpu(const at::Tensor& gu, const at::Tensor& x,
                                                         const at::Tensor& m, const at::Tensor& mid,
                                                         const at::Tensor& gm, double c);
// The normalisation's fused row pass y = project(expmap_b(u M)) of rows u (N, D), M (D, D), b (D,) on the ball,
// and its backward (du, dM, db, dc) (dc a 0-dim float64 tensor).
at::Tensor poincare_bn_rows_fwd_cpu(const at::Tensor& u, const at::Tensor& M, const at::Tensor& b,
                                    const at::Tensor& c, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_bn_rows_bwd_cpu(
    const at::Tensor& g, const at::Tensor& u, const at::Tensor& M, const at::Tensor& b, const at::Tensor& c,
    double eps);
// The training layer whole (BnLayerFn): b = expmap0(bias), midpoint, logmap_m, variance, transport M, v = u M,
// the row op -> (y, var, m, u, v, M, b, [F, L], the transport's scalars) and its backward from dL/dy and what the
// forward saved -> (dx, dbias, dweight, dc) (dweight, dc 0-dim float64).
std::vector<at::Tensor> poincare_bn_train_fwd_cpu(const at::Tensor& x, const at::Tensor& bias, double w, double c,
                                                  double n, double eps, double eps_proj);
std::vector<at::Tensor> poincare_bn_train_bwd_cpu(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& bias,
                                                  const at::Tensor& m, const at::Tensor& mid, const at::Tensor& u,
                                                  const at::Tensor& v, const at::Tensor& M, const at::Tensor& b,
                                                  const at::Tensor& tr, double c, double eps_proj);
// The training layer's transport alone, forward and backward in double (for the tests: the exact-value checks of
// session 44): (b, m, gM float64; S, w, c, n, eps) -> (M (D, D), gb, gm, [gS, gw, gc]).
std::vector<at::Tensor> poincare_bn_transport_cpu(const at::Tensor& b, const at::Tensor& m, const at::Tensor& gM,
                                                  double S, double w, double c, double n, double eps);
// batch_norm's training update of its running buffers in place (one call): rm (D,) <- geodesic(momentum, rm, m) on
// the ball of curvature -c, rv (one entry) <- (1 - momentum) rv + momentum f var; rm, rv, m, var of one float dtype.
void poincare_bn_running_update_cpu(const at::Tensor& rm, const at::Tensor& rv, const at::Tensor& m,
                                    const at::Tensor& var, double momentum, double c, double f);

// The convolution's Euclidean step as a direct small-channel convolution (poincare_conv.cpp), for
// PoincareConv2dFn: pixel rows v [B*H*W, C] (channels last), z [C*kh*kw, C_out] (F.unfold's row order).
// Forward -> (t [B*Ho*Wo, C_out] = beta * conv(v, z), U [B*Ho*Wo] = beta^2 box sums of |v|^2).
// Backward from (dL/dt, dL/dU) -> (dL/dv incl. the U term [B*H*W, C], dL/dz = beta v^T dt [C*kh*kw, C_out]),
// each only when asked (else an undefined tensor).  poincare_conv2d_direct_ok: the channel counts the kernel
// takes (at most four SIMD vectors of them).
bool poincare_conv2d_direct_ok(int64_t C, int64_t Co, bool dbl);
std::tuple<at::Tensor, at::Tensor> poincare_conv2d_fwd_cpu(const at::Tensor& v, const at::Tensor& z, int64_t B,
                                                           int64_t H, int64_t W, int64_t kh, int64_t kw,
                                                           int64_t py, int64_t px, int64_t sy, int64_t sx,
                                                           double beta);
std::tuple<at::Tensor, at::Tensor> poincare_conv2d_bwd_cpu(const at::Tensor& gt, const at::Tensor& gU,
                                                           const at::Tensor& v, const at::Tensor& z, int64_t B,
                                                           int64_t H, int64_t W, int64_t kh, int64_t kw,
                                                           int64_t py, int64_t px, int64_t sy, int64_t sx,
                                                           double beta, bool need_dv, bool need_dz);
// The weight gradient dL/dz = beta u^T dt [C*kh*kw, C_out] of a convolution of any channel count from its pixel rows
// v [B*H*W, C] and dL/dt [B*Ho*Wo, C_out] (both contiguous): fixed GEMM tiles of `rows` grid rows (0: the default),
// the same bits for any thread count (poincare_conv.cpp).
at::Tensor poincare_conv2d_dz_cpu(const at::Tensor& gt, const at::Tensor& v, int64_t B, int64_t H, int64_t W,
                                  int64_t kh, int64_t kw, int64_t py, int64_t px, int64_t sy, int64_t sx,
                                  double beta, int64_t rows);
// The backward of logmap0 of the pixel rows x [N, C] (ball curvature -c) from its output v and dL/dv -> (dL/dx,
// per-row dL/dk with k = -c), each only when asked (no transcendental: the factor from v).
std::tuple<at::Tensor, at::Tensor> poincare_conv2d_logmap0_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                                   const at::Tensor& v, double c, bool need_dx,
                                                                   bool need_dk);

}  // namespace cpu
}  // namespace geoops
