// The fused Mobius matvec epilogue's backward per row, shared by mobius_matvec (stereographic_pairwise.cpp) and
// mobius_blockdiag_matvec (stereographic_blockdiag.cpp).  Internal: included by those kernels' translation units
// only (compiled with OpenMP), never by ops.cpp.
#pragma once

#include <cstdint>

namespace geoops {
namespace cpu {

// Backward scalars of one row of the Mobius matvec epilogue out = v phi(|x|^2, |v|^2, k), phi = a b, from
// s = <g, v> and the row's stats (x2, v2, a, da, b, db): c0 = phi and c1 with gv = g c0 + v c1, cx with
// dx += cx x (through |x|^2), gk the gradient to the row's k.  mobius_scale's backward (v kept) uses it as is.
struct MatvecRowGrad {
  double c0, c1, cx, gk;
};
inline MatvecRowGrad scale_row_grad(double s, const double* sr, double kk) {
  const double x2 = sr[0], v2 = sr[1], a = sr[2], da = sr[3], b = sr[4], db = sr[5];
  MatvecRowGrad r;
  r.c0 = a * b;
  r.c1 = 2 * s * a * db * kk * a * a;
  r.cx = 2 * s * (da * kk * b + a * db * kk * v2 * 2 * a * da * kk);
  r.gk = s * (da * x2 * b + a * db * (v2 * a * a + kk * v2 * 2 * a * da * x2));
  return r;
}

// The same from go = <g, out> when only out is kept (mobius_matvec and mobius_blockdiag_matvec): s = go / phi,
// and c1 multiplies out (gv = g c0 + out c1).
inline MatvecRowGrad matvec_row_grad(double go, const double* sr, double kk) {
  const double phi = sr[2] * sr[4];
  MatvecRowGrad r = scale_row_grad(go / phi, sr, kk);
  r.c1 /= phi;
  return r;
}

// One row of the backward: s = <g, w> over Co columns (w = out when FROM_OUT, matvec_row_grad; w = v otherwise,
// scale_row_grad), and, when gvr, the row gv = g c0 + w c1.  Returns the row's scalars (cx, gk).
template <bool FROM_OUT, typename T>
inline MatvecRowGrad row_grad_gv(const T* gr, const T* wr, int64_t Co, const double* sr, double kk, T* gvr) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < Co; ++d) s += double(gr[d]) * double(wr[d]);
  const MatvecRowGrad rg = FROM_OUT ? matvec_row_grad(s, sr, kk) : scale_row_grad(s, sr, kk);
  if (gvr) {
    const T c0 = T(rg.c0), c1 = T(rg.c1);
#pragma omp simd
    for (int64_t d = 0; d < Co; ++d) gvr[d] = gr[d] * c0 + wr[d] * c1;
  }
  return rg;
}

// The backward's per-row pass of a chunk of nr rows from row r0 (out rows and g of Co columns): gv rows (nr, Co)
// = g c0 + out c1, cx[r - r0] (dx += cx x) and, when gkp, the k gradients gkp[r] (matvec_row_grad).
template <typename T>
inline void matvec_rows_gv(const T* gp, const T* op, const double* st, const double* kp, bool per_row, int64_t r0,
                           int64_t nr, int64_t Co, T* gv, T* cx, double* gkp) {
  for (int64_t r = r0; r < r0 + nr; ++r) {
    const MatvecRowGrad rg = row_grad_gv<true>(gp + r * Co, op + r * Co, Co, st + r * 6, per_row ? kp[r] : kp[0],
                                               gv + (r - r0) * Co);
    cx[r - r0] = T(rg.cx);
    if (gkp) gkp[r] = rg.gk;
  }
}

}  // namespace cpu
}  // namespace geoops
