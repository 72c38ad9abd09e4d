// Declarations of the fused CPU kernels of the Gaunt tensor product family.
#pragma once

#include <ATen/ATen.h>

#include <vector>

// Lane vector width of the fused kernels (csrc/cpu/gaunt.cpp), chosen from the ISA the file is compiled for: 64
// bytes (one zmm) with AVX-512F, else 32 (one ymm with AVX/AVX2; session 25).  GEOOPS_GAUNT_LANES: rows per tile of
// the direct route (one fp32 vector).
#if defined(__AVX512F__)
#define GEOOPS_GAUNT_VBYTES 64
#define GEOOPS_GAUNT_AVX512 1
#else
#define GEOOPS_GAUNT_VBYTES 32
#define GEOOPS_GAUNT_AVX512 0
#endif
#define GEOOPS_GAUNT_LANES (GEOOPS_GAUNT_VBYTES / 4)

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

// Separable kernel of the grid and FFT routes (nu-ary, fused per tile of rows, rows in SIMD lanes): each factor
// goes to a product grid (theta_j) x (na uniform azimuths) in two small steps -- per m, evals[i] (n_theta,
// (L_i+1)(L_i+2)/2, one column block per |m|) over l; then the azimuthal sums over m with the quarter-period
// tables azf (4, na/4+1, D2) -- the factors are multiplied on the grid, and the product comes back by azb (4, D2,
// na/4+1) and back ((Lout+1)(Lout+2)/2, n_theta).  Grid route: Gauss-Legendre nodes; FFT route: the torus rows
// (see geoops.reference.gaunt.separable_*_tables).  Returns (N, (Lout+1)^2).
at::Tensor gaunt_sep_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                             const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                             const at::Tensor& back, const at::Tensor& azf, const at::Tensor& azb, int64_t na);

// Fused backward of the separable grid route (Gauss-Legendre tables; the backward products of a Gaunt product
// have the forward's total degree, so they share its grid).  Per tile of rows, the nu factors (weighted by ws)
// and g (N, n_out) (weighted by wout) go to the grid once; then for every k < nu with need[k]:
//   out_k = owk[k] * P_{<= L_k}[ prod_{j != k} f_j * f(wout g) ]      (backs[k]: the projection onto L_k)
// and, with need[nu], the raw forward product P_{<= Lout}[ prod_j f_j ] (backs[nu]).  evals: the nu factors'
// tables, then g's.  need[k] is 0, 1 or 2 (store out_k; owk decides its weight), plus 4 for the per-row per-degree
// sums (N, L_k + 1) of the unweighted out_k times the unweighted rows of xs[k] (k = nu: of g): the weight
// gradients' per-row step, sum_m h x, summed in ascending m.  Returns, for k = 0..nu, out_k then the sums, where
// wanted.  Bit-identical to the same products through gaunt_sep_fwd_cpu (same steps, same order of the grid
// products), the sums to torch's (h * x).index_add over degrees, for any thread count.
std::vector<at::Tensor> gaunt_sep_bwd_cpu(const std::vector<at::Tensor>& xs,
                                          const std::vector<c10::optional<at::Tensor>>& ws, const at::Tensor& g,
                                          const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                                          const std::vector<at::Tensor>& backs,
                                          const std::vector<c10::optional<at::Tensor>>& owk,
                                          const std::vector<int64_t>& need, const at::Tensor& azf,
                                          const at::Tensor& azb, int64_t na);

// Direct route of the binary Gaunt product: out[r, k] = wout * sum over the nonzero (i, j, k, g) of
// g * (w1 x1)[r, i] * (w2 x2)[r, j].  list: the nonzeros sorted by k, as off (n_out + 1,), ia = i, ib = j (nnz,)
// int32, vals (nnz,) in x's dtype (the third list of gaunt_direct_bwd_cpu); each output sums its nonzeros in four
// register partial sums (the backward's loop), the same bits for any thread count.
at::Tensor gaunt_direct_fwd_cpu(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                                const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout,
                                const std::vector<at::Tensor>& list, int64_t n_out);

// Fused first-order backward of the direct route (binary).  x1, x2 weighted by ws[0], ws[1] and g (N, n_out)
// weighted by wout are moved into lanes once per tile; lists holds the nonzeros G_ijk in three output-major orders
// (off (n_s + 1,), ia, ib (nnz,) int32, vals (nnz,)): by i (ia = j, ib = k), by j (ia = i, ib = k), by k (ia = i,
// ib = j).  Returns, for each need[s] set, in order: owk[0] * sum_jk G (w2 x2)_j (wout g)_k (N, n1), owk[1] * sum_ik
// G (w1 x1)_i (wout g)_k (N, n2), and the raw product sum_ij G (w1 x1)_i (w2 x2)_j (N, n_out, no wout); need[s] as
// in gaunt_sep_bwd_cpu (plus 4: the per-row per-degree sums of the unweighted output s times x1, x2 or g after it).
// Each output sums its nonzeros in four register partial sums (not the forward's order: equal to round-off, not bit
// for bit); the same bits for any thread count.
std::vector<at::Tensor> gaunt_direct_bwd_cpu(const at::Tensor& x1, const at::Tensor& x2,
                                             const std::vector<c10::optional<at::Tensor>>& ws, const at::Tensor& g,
                                             const c10::optional<at::Tensor>& wout,
                                             const std::vector<c10::optional<at::Tensor>>& owk,
                                             const std::vector<at::Tensor>& lists, const std::vector<int64_t>& need);


}  // namespace cpu
}  // namespace geoops
