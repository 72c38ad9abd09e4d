// Declarations of the fused CPU kernels of the Gaunt tensor product family.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace geoops {
namespace cpu {

// Grid route of the nu-ary Gaunt product (nu >= 1), fused per tile of rows:
//   out[r, :] = wout[r] * ( prod_i ( (w_i[r] * xs[i][r, :]) @ evals[i] ) ) @ proj
// xs[i]: (N, n_i) float/double, contiguous; evals[i]: (n_i, P) the harmonics on the exact grid (same dtype);
// proj: (P, n_out) quadrature weights times harmonics; ws[i], wout: per-degree weights (1 or N, L+1) or None.
// The grid values of a tile (tile x P) stay in a per-thread buffer.  Returns (N, n_out).
at::Tensor gaunt_grid_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                              const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                              const at::Tensor& proj);

// Fourier route (Luo et al.) of the nu-ary product, fused per tile of rows, with the 2D DFTs as small dense
// matrices (exact; torus grid M = 2 sum(L_i) + 1): to_rows[i] (n_i, U_i M) SH -> half spectrum -> inverse DFT
// along the azimuth (U_i = 2 (2L_i+1)); to_grid[i] (M, U_i) inverse DFT along the polar angle; back_cols
// (M, 2(V+1)) forward DFT along the azimuth for the output frequencies only; back (M 2(V+1), n_out)
// forward DFT along the polar angle composed with Fourier -> SH.  Returns (N, n_out).
at::Tensor gaunt_fourier_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                                 const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& to_rows,
                                 const std::vector<at::Tensor>& to_grid, const at::Tensor& back_cols,
                                 const at::Tensor& back);

// Direct route of the binary Gaunt product: out[r, k] = wout * sum over the nonzero (i, j, k, g) of
// g * (w1 x1)[r, i] * (w2 x2)[r, j].  ii, jj, kk: int32 (nnz,), sorted by (i, j); vals: (nnz,) in x's dtype.
at::Tensor gaunt_direct_fwd_cpu(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                                const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout,
                                const at::Tensor& ii, const at::Tensor& jj, const at::Tensor& kk,
                                const at::Tensor& vals, int64_t n_out);

}  // namespace cpu
}  // namespace geoops
