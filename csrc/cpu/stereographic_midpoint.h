// The kappa-stereographic weighted midpoint's reduction (geoops.stereographic.weighted_midpoint), CPU.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace geoops {
namespace cpu {

// x: (G, N, D) float/double, w: (G, N) of x's dtype or None (all ones), k: (1,) or (G,).  Per group g, with
// lam_i = 2 / max(1 + k_g |x_i|^2, 1e-15) from |x_i|^2 in double:
//   F_g = sum_i w_i c_i x_i (D),   L_g = sum_i s_i w_i (lam_i - 1),
// c_i = lam_i and s_i = 1, except for the points of negative weight under posweight (geoopt: the antipode of x_i with
// weight |w_i|, lam_i of x_i): s_i = -1, and on the sphere (k_g > 0) c_i = lam_i / (k_g |x_i|^2).
// Returns (F (G, D), L (G,)) in double.
std::tuple<at::Tensor, at::Tensor> stereo_midpoint_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& w,
                                                           const at::Tensor& k, bool posweight);

// The sums above and, for the root of the mean in groups of k < 0, S (G, 5) = (Q, A, W, S2, R) in double: with y_i
// the points after posweight's flip (for k < 0 the antipode -x_i, lam_i unchanged), u_i their weights, a_i = u_i lam_i,
// A = sum a_i, W = sum u_i, S2 = sum a_i |y_i - s|^2 about the centroid s = F / A (F where A = 0), R = sum over the
// clamped rows (1 + k|x_i|^2 <= 1e-15) of u_i (lam_i (1 + k|x_i|^2) - 2) and Q = W^2 - k V + A R =
// L^2 (1 + k|F / L|^2) without its cancellation near the boundary, V = A S2 - |F - A s|^2 =
// 1/2 sum_ij a_i a_j |y_i - y_j|^2 (the scatter; |F - A s| ~ 0 keeps its digits).  Q and
// S2 only in the groups near the boundary (1 + k|F / L|^2 < 1/4, |L| >= 1e-10: a second pass over their points),
// else 0 (the mean then keeps 1 + k|f|^2 from f, within ~1 ulp there).  Groups of k >= 0: S's row is zeros.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_root_fwd_cpu(const at::Tensor& x,
                                                                            const c10::optional<at::Tensor>& w,
                                                                            const at::Tensor& k, bool posweight);

// Backward of the sums above from gF (G, D), gL (G,) (double): mask bits 1 dx (G, N, D), 2 dw (G, N), 4 dk (G,)
// (double).  Absent outputs are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_bwd_cpu(
    const at::Tensor& gF, const at::Tensor& gL, const at::Tensor& x, const c10::optional<at::Tensor>& w,
    const at::Tensor& k, bool posweight, int64_t mask);

// The same with the root's Q: from gF, gL and gQ (G,), given F and S of stereo_midpoint_root_fwd_cpu.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_root_bwd_cpu(
    const at::Tensor& gF, const at::Tensor& gL, const at::Tensor& gQ, const at::Tensor& F, const at::Tensor& S,
    const at::Tensor& x, const c10::optional<at::Tensor>& w, const at::Tensor& k, bool posweight, int64_t mask);

// The midpoint of each group from its sums: mean = 1/2 (x)_k (F / den), den = L clamped away from 0 to +-1e-10
// (geoopt's epilogue before the sphere's antipode choice).  With Q (G,) (S's first column): in groups of k < 0
// with |L| >= 1e-10 and Q > 0, mean = f / (1 + sqrt(Q) / |L|), f = F / L (the root without the cancellation of
// 1 + k|f|^2).  F (G, D), L (G,), Q (G,) or None, k (1,) or (G,); double result.
at::Tensor stereo_midpoint_mean_fwd_cpu(const at::Tensor& F, const at::Tensor& L, const c10::optional<at::Tensor>& Q,
                                        const at::Tensor& k);

// Its backward from gm (G, D): (gF (G, D), gL (G,), gQ (G,) (empty without Q), gk (G,) per group (empty unless
// mask bit 4)), double.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_midpoint_mean_bwd_cpu(
    const at::Tensor& gm, const at::Tensor& F, const at::Tensor& L, const c10::optional<at::Tensor>& Q,
    const at::Tensor& k, int64_t mask);

}  // namespace cpu
}  // namespace geoops
