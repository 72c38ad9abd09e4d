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

}  // namespace cpu
}  // namespace geoops
