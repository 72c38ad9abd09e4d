// Pairwise kappa-stereographic distance (cdist) on the CPU: one GEMM + fused epilogue.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace geoops {
namespace cpu {

// x [B, N, D], y [B, M, D] contiguous float32/float64, k [B] (float32, or float64 for float64 inputs).
// Returns (dist [B, N, M], A [B, N, M]) where A = |x_i - y_j|^2 (close pairs recomputed exactly from the
// rows); A is an empty tensor unless `save` (the backward needs it).
std::tuple<at::Tensor, at::Tensor> cdist_fwd_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k,
                                                 bool save);

// Gradients of sum(g * dist) with respect to x, y (mask bits 1, 2) and k (bit 4, per batch [B]); an
// unselected gradient comes back empty.  A and dist are what cdist_fwd_cpu returned.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cdist_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                             const at::Tensor& y, const at::Tensor& k,
                                                             const at::Tensor& A, const at::Tensor& dist,
                                                             int64_t mask);

// Squared stereographic distance surrogate for ranking (monotone in the distance for a fixed k):
// r_ij = A_ij / P_ij with P = (1 + k|x|^2)(1 + k|y|^2) for k < 0, A_ij / (P_ij - k A_ij) for k > 0,
// A_ij for k = 0.  One GEMM and no transcendental per pair.  x [B, N, D], y [B, M, D], k [B].
at::Tensor cdist_rank_key_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k);

// The distance from a rank key (the inverse map of cdist_rank_key_cpu), elementwise: key [B, N, n], k [B].
at::Tensor dist_from_key_cpu(const at::Tensor& key, const at::Tensor& k);

// mobius_matvec / mobius_pointwise_mul epilogue: out = v * phi(|x|^2, |v|^2, k) per row; v [R, Do], x [R, Di],
// k [1] or [R].  Returns (out, stats [R, 6] double) and, backward, (dv, dx, dk per row [R] double).
std::tuple<at::Tensor, at::Tensor> mobius_scale_fwd_cpu(const at::Tensor& v, const at::Tensor& x, const at::Tensor& k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_scale_bwd_cpu(const at::Tensor& g, const at::Tensor& v,
                                                                    const at::Tensor& x, const at::Tensor& k,
                                                                    const at::Tensor& stats, int64_t mask);

// mobius_matvec fused (blocked GEMM + epilogue): x [R, Di], m [Do, Di], k [1] or [R] -> (out [R, Do], stats
// [R, 6] double as above); backward (mask bits 1 x, 2 m, 4 k) -> (dx, dm, dk per row [R] double), from out
// (v = out / phi) without an [R, Do] gradient of Mx.
std::tuple<at::Tensor, at::Tensor> mobius_matvec_fwd_cpu(const at::Tensor& x, const at::Tensor& m, const at::Tensor& k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_matvec_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                                     const at::Tensor& m, const at::Tensor& k,
                                                                     const at::Tensor& out, const at::Tensor& stats,
                                                                     int64_t mask);

// mobius_blockdiag_matvec fused (H4G): x [R, nb*Di], blocks [nb, Do, Di], k [1] or [R] -> (out [R, nb*Do], stats
// [R, 6] double as above); backward (mask bits 1 x, 2 blocks, 4 k) -> (dx, dblocks, dk per row [R] double).  No
// dense matrix; lanes kernel for small blocks, one GEMM per block and chunk of rows for large ones
// (stereographic_blockdiag.cpp).
std::tuple<at::Tensor, at::Tensor> mobius_blockdiag_matvec_fwd_cpu(const at::Tensor& x, const at::Tensor& blocks,
                                                                   const at::Tensor& k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_blockdiag_matvec_bwd_cpu(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& blocks, const at::Tensor& k, const at::Tensor& out,
    const at::Tensor& stats, int64_t mask);

// Fused knn over rank keys: (keys [N, n], indices [N, n]) of the n best points of y for every row of x.
std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& x, const at::Tensor& y, double k, int64_t n,
                                           bool largest, int64_t tile);

// pairwise_rank: pairs grouped by query (uq [U] rows of x, off [U+1] offsets into tgt [P] rows of y); for each
// pair the number of points of y with a rank key strictly below the pair's own (the target never counts).
// Returns (counts [P] int64, keys [P] of the pairs).  Extra memory ~block_elems keys per thread.
std::tuple<at::Tensor, at::Tensor> pairwise_rank_cpu(const at::Tensor& x, const at::Tensor& y, double k,
                                                     const at::Tensor& uq, const at::Tensor& off,
                                                     const at::Tensor& tgt, int64_t block_elems);

// Backward scalars of one row of the fused Mobius matvec epilogue (mobius_matvec and mobius_blockdiag_matvec):
// from go = <g, out> and the row's stats (x2, v2, a, da, b, db; out = v phi, phi = a b): c0 = phi and c1 with
// gv = g c0 + out c1, cx with dx += cx x (through |x|^2), gk the gradient to the row's k.
struct MatvecRowGrad {
  double c0, c1, cx, gk;
};
inline MatvecRowGrad matvec_row_grad(double go, const double* sr, double kk) {
  const double x2 = sr[0], v2 = sr[1], a = sr[2], da = sr[3], b = sr[4], db = sr[5];
  const double phi = a * b;
  const double s = go / phi;  // <g, v>, v = out / phi
  MatvecRowGrad r;
  r.c0 = phi;
  r.c1 = 2 * s * a * db * kk * a * a / phi;
  r.cx = 2 * s * (da * kk * b + a * db * kk * v2 * 2 * a * da * kk);
  r.gk = s * (da * x2 * b + a * db * (v2 * a * a + kk * v2 * 2 * a * da * x2));
  return r;
}

// The backward's per-row pass of a chunk of nr rows from row r0 (out rows and g of Co columns): gv rows (nr, Co)
// = g c0 + out c1, cx[r - r0] (dx += cx x) and, when gkp, the k gradients gkp[r] (matvec_row_grad).
template <typename T>
inline void matvec_rows_gv(const T* gp, const T* op, const double* st, const double* kp, bool per_row, int64_t r0,
                           int64_t nr, int64_t Co, T* gv, T* cx, double* gkp) {
  for (int64_t r = r0; r < r0 + nr; ++r) {
    const T* gr = gp + r * Co;
    const T* orow = op + r * Co;
    double go = 0;
#pragma omp simd reduction(+ : go)
    for (int64_t d = 0; d < Co; ++d) go += double(gr[d]) * double(orow[d]);
    const MatvecRowGrad rg = matvec_row_grad(go, st + r * 6, per_row ? kp[r] : kp[0]);
    const T c0 = T(rg.c0), c1 = T(rg.c1);
    T* gvr = gv + (r - r0) * Co;
#pragma omp simd
    for (int64_t d = 0; d < Co; ++d) gvr[d] = gr[d] * c0 + orow[d] * c1;
    cx[r - r0] = T(rg.cx);
    if (gkp) gkp[r] = rg.gk;
  }
}

}  // namespace cpu
}  // namespace geoops
