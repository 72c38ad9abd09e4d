// Block-diagonal Moebius matvec (H4G) on the CPU, fused: x [R, nb*Di], blocks [nb, Do, Di], k [1] or [R] ->
// out [R, nb*Do] = v * phi with v_b = W_b x_b per block and phi = atanc(k|x|^2) tanc(k|v|^2 atanc(k|x|^2)^2),
// i.e. mobius_matvec(block_diag(W), x) without the dense matrix.  Same stats [R, 6] (double: |x|^2, |v|^2, a, a',
// b, b') and backward algebra as mobius_matvec_fwd/bwd_cpu (stereographic_pairwise.cpp); v is never stored (the
// backward takes it as out / phi).
//
// Two routes, chosen by the block shape:
//  * small blocks (lanes): a tile of TR = 2 SIMD vectors of rows is transposed into [column][row] buffers, so every
//    per-block product is a broadcast-weight FMA over row lanes (four outputs at a time share each load of x); the
//    row norms come out of the same buffers, the epilogue runs per row, the result is transposed back.  Backward:
//    the same transposed tiles give gv, dx_b = W_b^T gv_b (the same kernel with W_b^T) and dW_b += gv_b x_b^T as
//    lane-wide accumulators (one SIMD vector per weight), reduced once per group of tiles.
//  * large blocks (GEMM): per chunk of rows one BLAS GEMM per block on strided views of the rows (no copies), the
//    epilogue in place while the chunk is in cache; backward dx_b and dW_b by two GEMMs per block and chunk.
// dW is summed over a fixed number of groups of tiles/chunks (never the thread count), in group order: the same
// bits for any number of threads; MKL is pinned to one thread per task.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "stereographic_pairwise.h"
#include "stereographic_matvec_rows.h"  // matvec_row_grad / matvec_rows_gv (the backward per row)
#include "poincare_gemm.h"  // fixed_gemm::OneMklThread
#include "knobs.h"

#include "geoops/stereo_math.h"
#include "vec_math_inl.h"  // vecmath::eval (tanc / atanc on SIMD vectors of rows, SLEEF)

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace geoops {
namespace cpu {

namespace {

constexpr int64_t kBdGroups = 16;  // fixed groups of tiles for the dW reduction (thread-count independent bits)

// The GEMM route for blocks of at least 32 x 32 when there are at most two of them, or of at least 64 x 64: the
// lane kernel wins below (16384 rows, float32, 1 thread, AMD EPYC, session 21: lanes / GEMM time fwd+bwd 0.37 at
// nb=32 b=8, 0.73 at nb=16 b=16, 0.94 at nb=4 b=32, 1.04 at nb=8 b=32, 1.23 at nb=2 b=32, 1.40 at nb=2 b=64).
// GEOOPS_BLOCKDIAG_GEMM=1 / =0 forces the GEMM / lane route (tests, timing).
inline bool bd_gemm_route(int64_t nb, int64_t Do, int64_t Di) {
  const char* e = knobs::get("GEOOPS_BLOCKDIAG_GEMM");
  if (e && e[0] == '1') return true;
  if (e && e[0] == '0') return false;
  const int64_t b = std::min(Do, Di);
  return b >= 64 || (b >= 32 && nb <= 2);
}

// The epilogue scalars of n rows from |x|^2, |v|^2 and k (mobius_scale's scale_row arithmetic, its tanc / atanc
// on SIMD vectors of rows: SLEEF, ~1 ulp): stats rows st[r * 6 ..] and phi[r] = a b.  kk: n values, or one when
// !per_row.
inline void bd_stats_n(const double* x2, const double* v2, const double* kk, bool per_row, double* st, double* phi,
                       int64_t n) {
  using VD = vecmath::Vec;
  constexpr int64_t LD = VD::size();
  double buf[6][LD];
  for (int64_t r0 = 0; r0 < n; r0 += LD) {
    const int64_t m = std::min(LD, n - r0);
    VD X, V, K;
    if (m == LD) {
      X = VD::loadu(x2 + r0);
      V = VD::loadu(v2 + r0);
      K = per_row ? VD::loadu(kk + r0) : VD(kk[0]);
    } else {  // ragged tail: the missing lanes are rows of zeros (never stored)
      X = VD::loadu(x2 + r0, m);
      V = VD::loadu(v2 + r0, m);
      K = per_row ? VD::loadu(kk + r0, m) : VD(kk[0]);
    }
    const VD z1 = K * X, q1 = VD(1.0) + z1;
    const VD a = vecmath::eval<true>(z1, q1), da = stereo::atanc_d(z1, q1, a);
    const VD z2 = K * V * a * a;
    const VD b = vecmath::eval<false>(z2, VD(1.0)), db = stereo::tanc_d(z2, b);
    X.store(buf[0]); V.store(buf[1]); a.store(buf[2]); da.store(buf[3]); b.store(buf[4]); db.store(buf[5]);
    (a * b).store(phi + r0, m);
    for (int64_t t = 0; t < m; ++t)
      for (int c = 0; c < 6; ++c) st[(r0 + t) * 6 + c] = buf[c][t];
  }
}

// ---------------------------------------------------------------- lanes route
// dst[(b*P + p) * TR + t] = sum_q M[b, p, q] src[(b*Q + q) * TR + t] for t < TR (two vectors), M [nb, P, Q].
template <typename T>
inline void lanes_blockmv(const T* M, const T* src, T* dst, int64_t nb, int64_t P, int64_t Q) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size(), TR = 2 * L;
  for (int64_t b = 0; b < nb; ++b) {
    const T* Mb = M + b * P * Q;
    const T* sb = src + b * Q * TR;
    T* db = dst + b * P * TR;
    int64_t p = 0;
    for (; p + 4 <= P; p += 4) {
      Vec a00(T(0)), a01(T(0)), a10(T(0)), a11(T(0)), a20(T(0)), a21(T(0)), a30(T(0)), a31(T(0));
      const T* m0 = Mb + p * Q;
      for (int64_t q = 0; q < Q; ++q) {
        const Vec x0 = Vec::loadu(sb + q * TR), x1 = Vec::loadu(sb + q * TR + L);
        const Vec w0(m0[q]), w1(m0[Q + q]), w2(m0[2 * Q + q]), w3(m0[3 * Q + q]);
        a00 = at::vec::fmadd(w0, x0, a00); a01 = at::vec::fmadd(w0, x1, a01);
        a10 = at::vec::fmadd(w1, x0, a10); a11 = at::vec::fmadd(w1, x1, a11);
        a20 = at::vec::fmadd(w2, x0, a20); a21 = at::vec::fmadd(w2, x1, a21);
        a30 = at::vec::fmadd(w3, x0, a30); a31 = at::vec::fmadd(w3, x1, a31);
      }
      T* d = db + p * TR;
      a00.store(d); a01.store(d + L);
      a10.store(d + TR); a11.store(d + TR + L);
      a20.store(d + 2 * TR); a21.store(d + 2 * TR + L);
      a30.store(d + 3 * TR); a31.store(d + 3 * TR + L);
    }
    for (; p < P; ++p) {
      Vec a0(T(0)), a1(T(0));
      const T* m0 = Mb + p * Q;
      for (int64_t q = 0; q < Q; ++q) {
        const Vec w(m0[q]);
        a0 = at::vec::fmadd(w, Vec::loadu(sb + q * TR), a0);
        a1 = at::vec::fmadd(w, Vec::loadu(sb + q * TR + L), a1);
      }
      a0.store(db + p * TR);
      a1.store(db + p * TR + L);
    }
  }
}

// rows [nr, C] (row stride C) -> buf [C][TR], zero rows past nr
template <typename T, int64_t TR>
inline void lanes_load(const T* rows, int64_t nr, int64_t C, T* buf) {
  if (nr < TR) std::fill(buf, buf + C * TR, T(0));
  for (int64_t t = 0; t < nr; ++t) {
    const T* r = rows + t * C;
    for (int64_t c = 0; c < C; ++c) buf[c * TR + t] = r[c];
  }
}

// sum over columns of buf [C][TR] squared, in double, per row lane
template <int64_t TR, typename T>
inline void lanes_sqnorm(const T* buf, int64_t C, double* acc) {
  for (int64_t t = 0; t < TR; ++t) acc[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T* r = buf + c * TR;
#pragma omp simd
    for (int64_t t = 0; t < TR; ++t) acc[t] += double(r[t]) * double(r[t]);
  }
}

template <typename T>
void lanes_fwd(const T* xp, const T* W, T* op, double* st, const double* kp, bool per_row, int64_t R, int64_t nb,
               int64_t Do, int64_t Di) {
  constexpr int64_t TR = 2 * at::vec::Vectorized<T>::size();
  const int64_t C = nb * Di, Co = nb * Do, ntiles = (R + TR - 1) / TR;
  at::parallel_for(0, ntiles, 8, [&](int64_t t0, int64_t t1) {
    std::vector<T> xt(C * TR), vt(Co * TR);
    double x2[TR], v2[TR], phi[TR];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * TR, nr = std::min(R - r0, TR);
      lanes_load<T, TR>(xp + r0 * C, nr, C, xt.data());
      lanes_sqnorm<TR>(xt.data(), C, x2);
      lanes_blockmv(W, xt.data(), vt.data(), nb, Do, Di);
      lanes_sqnorm<TR>(vt.data(), Co, v2);
      bd_stats_n(x2, v2, per_row ? kp + r0 : kp, per_row, st + r0 * 6, phi, nr);
      for (int64_t t = 0; t < nr; ++t) {
        const T ph = T(phi[t]);
        T* o = op + (r0 + t) * Co;
        for (int64_t j = 0; j < Co; ++j) o[j] = vt[j * TR + t] * ph;
      }
    }
  });
}

template <typename T>
void lanes_bwd(const T* gp, const T* xp, const T* W, const T* op, T* dxp, T* dWp, double* gkp, const double* st,
               const double* kp, bool per_row, int64_t R, int64_t nb, int64_t Do, int64_t Di) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size(), TR = 2 * L;
  const int64_t C = nb * Di, Co = nb * Do, ntiles = (R + TR - 1) / TR, NW = nb * Do * Di;
  const int64_t ngroups = std::min<int64_t>(ntiles, kBdGroups);
  const int64_t per_group = (ntiles + ngroups - 1) / ngroups;
  std::vector<T> Wt;  // [nb, Di, Do]: dx_b = W_b^T gv_b through lanes_blockmv
  if (dxp) {
    Wt.resize(NW);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t o = 0; o < Do; ++o)
        for (int64_t i = 0; i < Di; ++i) Wt[(b * Di + i) * Do + o] = W[(b * Do + o) * Di + i];
  }
  std::vector<T> parts(dWp ? ngroups * NW : 0);
  at::parallel_for(0, ngroups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<T> xt(C * TR), gt(Co * TR), ot(Co * TR), dxt(dxp ? C * TR : 0);
    std::vector<T> acc(dWp ? NW * L : 0);  // one lane vector per weight
    double go[TR];
    T c0[TR], c1[TR], cx[TR];
    for (int64_t grp = g0; grp < g1; ++grp) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t tile = grp * per_group; tile < std::min(ntiles, (grp + 1) * per_group); ++tile) {
        const int64_t r0 = tile * TR, nr = std::min(R - r0, TR);
        lanes_load<T, TR>(xp + r0 * C, nr, C, xt.data());
        lanes_load<T, TR>(gp + r0 * Co, nr, Co, gt.data());
        lanes_load<T, TR>(op + r0 * Co, nr, Co, ot.data());
        for (int64_t t = 0; t < TR; ++t) go[t] = 0;
        for (int64_t j = 0; j < Co; ++j) {
          const T* gr = gt.data() + j * TR;
          const T* orow = ot.data() + j * TR;
#pragma omp simd
          for (int64_t t = 0; t < TR; ++t) go[t] += double(gr[t]) * double(orow[t]);
        }
        for (int64_t t = 0; t < TR; ++t) {
          if (t < nr) {
            const MatvecRowGrad rg = matvec_row_grad(go[t], st + (r0 + t) * 6, per_row ? kp[r0 + t] : kp[0]);
            c0[t] = T(rg.c0); c1[t] = T(rg.c1); cx[t] = T(rg.cx);
            if (gkp) gkp[r0 + t] = rg.gk;
          } else {
            c0[t] = c1[t] = cx[t] = T(0);
          }
        }
        for (int64_t j = 0; j < Co; ++j) {  // gv in place of g
          T* gr = gt.data() + j * TR;
          const T* orow = ot.data() + j * TR;
#pragma omp simd
          for (int64_t t = 0; t < TR; ++t) gr[t] = gr[t] * c0[t] + orow[t] * c1[t];
        }
        if (dxp) {
          lanes_blockmv(Wt.data(), gt.data(), dxt.data(), nb, Di, Do);
          for (int64_t t = 0; t < nr; ++t) {
            const T c = cx[t];
            T* o = dxp + (r0 + t) * C;
            const T* xr = xp + (r0 + t) * C;
            for (int64_t j = 0; j < C; ++j) o[j] = dxt[j * TR + t] + c * xr[j];
          }
        }
        if (dWp) {
          for (int64_t b = 0; b < nb; ++b)
            for (int64_t o = 0; o < Do; ++o) {
              const T* gr = gt.data() + (b * Do + o) * TR;
              const Vec g0v = Vec::loadu(gr), g1v = Vec::loadu(gr + L);
              T* ar = acc.data() + (b * Do + o) * Di * L;
              const T* xb = xt.data() + b * Di * TR;
              for (int64_t i = 0; i < Di; ++i) {
                Vec a = Vec::loadu(ar + i * L);
                a = at::vec::fmadd(g0v, Vec::loadu(xb + i * TR), a);
                a = at::vec::fmadd(g1v, Vec::loadu(xb + i * TR + L), a);
                a.store(ar + i * L);
              }
            }
        }
      }
      if (dWp) {
        T* part = parts.data() + grp * NW;
        for (int64_t w = 0; w < NW; ++w) {
          T s = 0;
          for (int64_t l = 0; l < L; ++l) s += acc[w * L + l];
          part[w] = s;
        }
      }
    }
  });
  if (dWp) {
    std::fill(dWp, dWp + NW, T(0));
    for (int64_t grp = 0; grp < ngroups; ++grp)
      for (int64_t w = 0; w < NW; ++w) dWp[w] += parts[grp * NW + w];
  }
}

// ---------------------------------------------------------------- GEMM route
inline int64_t bd_chunk_rows(int64_t R, int64_t Co) {
  return std::max<int64_t>(1, std::min<int64_t>(R, std::max<int64_t>(16, (int64_t(1) << 15) / std::max<int64_t>(Co, 1))));
}

template <typename T>
void gemm_fwd(const at::Tensor& x, const at::Tensor& w, at::Tensor& out, double* st, const double* kp, bool per_row) {
  const int64_t R = x.size(0), nb = w.size(0), Do = w.size(1), Di = w.size(2);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t C = nb * Di, Co = nb * Do, RB = bd_chunk_rows(R, Co), nchunks = (R + RB - 1) / RB;
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    const fixed_gemm::OneMklThread one_mkl_thread;
    std::vector<double> x2(RB), v2(RB), phi(RB);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * RB, nr = std::min(R, r0 + RB) - r0;
      const at::Tensor xc = x.narrow(0, r0, nr);
      at::Tensor oc = out.narrow(0, r0, nr);
      for (int64_t b = 0; b < nb; ++b) {  // strided views of the rows (leading dimensions C, Co): no copies
        at::Tensor ob = oc.narrow(1, b * Do, Do);
        at::mm_out(ob, xc.narrow(1, b * Di, Di), w[b].t());
      }
      for (int64_t r = r0; r < r0 + nr; ++r) {
        const T* xr = xp + r * C;
        const T* o = op + r * Co;
        double sx = 0, sv = 0;
#pragma omp simd reduction(+ : sx)
        for (int64_t d = 0; d < C; ++d) sx += double(xr[d]) * double(xr[d]);
#pragma omp simd reduction(+ : sv)
        for (int64_t d = 0; d < Co; ++d) sv += double(o[d]) * double(o[d]);
        x2[r - r0] = sx;
        v2[r - r0] = sv;
      }
      bd_stats_n(x2.data(), v2.data(), per_row ? kp + r0 : kp, per_row, st + r0 * 6, phi.data(), nr);
      for (int64_t r = r0; r < r0 + nr; ++r) {  // in place: the chunk is still in cache
        const T ph = T(phi[r - r0]);
        T* o = op + r * Co;
#pragma omp simd
        for (int64_t d = 0; d < Co; ++d) o[d] *= ph;
      }
    }
  });
}

template <typename T>
void gemm_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& out, at::Tensor& dx,
              at::Tensor& dw, double* gkp, const double* st, const double* kp, bool per_row, bool want_x,
              bool want_w) {
  const int64_t R = x.size(0), nb = w.size(0), Do = w.size(1), Di = w.size(2);
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* op = out.data_ptr<T>();
  T* dxp = want_x ? dx.data_ptr<T>() : nullptr;
  const int64_t C = nb * Di, Co = nb * Do, RB = bd_chunk_rows(R, Co), nchunks = (R + RB - 1) / RB;
  const int64_t ngroups = std::min<int64_t>(nchunks, kBdGroups);
  const int64_t per_group = (nchunks + ngroups - 1) / ngroups;
  at::Tensor parts = want_w ? at::zeros({ngroups, nb, Do, Di}, x.options()) : at::Tensor();
  at::parallel_for(0, ngroups, 1, [&](int64_t g0, int64_t g1) {
    const fixed_gemm::OneMklThread one_mkl_thread;
    at::Tensor GVt = at::empty({RB, Co}, x.options());
    T* GV = GVt.data_ptr<T>();
    std::vector<T> cx(RB);
    for (int64_t grp = g0; grp < g1; ++grp) {
      for (int64_t c = grp * per_group; c < std::min(nchunks, (grp + 1) * per_group); ++c) {
        const int64_t r0 = c * RB, nr = std::min(R, r0 + RB) - r0;
        matvec_rows_gv(gp, op, st, kp, per_row, r0, nr, Co, GV, cx.data(), gkp);
        const at::Tensor gvc = GVt.narrow(0, 0, nr), xc = x.narrow(0, r0, nr);
        for (int64_t b = 0; b < nb; ++b) {
          const at::Tensor gvb = gvc.narrow(1, b * Do, Do);
          if (want_x) {  // dx_b = gv_b W_b into dx's strided columns
            at::Tensor dxb = dx.narrow(0, r0, nr).narrow(1, b * Di, Di);
            at::mm_out(dxb, gvb, w[b]);
          }
          if (want_w) parts[grp][b].addmm_(gvb.t(), xc.narrow(1, b * Di, Di));  // dW_b += gv_b^T x_b
        }
        if (dxp)
          for (int64_t r = 0; r < nr; ++r) {
            const T cr = cx[r];
            const T* xr = xp + (r0 + r) * C;
            T* o = dxp + (r0 + r) * C;
#pragma omp simd
            for (int64_t d = 0; d < C; ++d) o[d] += cr * xr[d];
          }
      }
    }
  });
  if (want_w)
    for (int64_t grp = 0; grp < ngroups; ++grp) dw.add_(parts[grp]);  // group order: thread-count independent
}

void bd_check(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 3 && x.size(1) == w.size(0) * w.size(2),
              "mobius_blockdiag_matvec: x [R, nb*Di], blocks [nb, Do, Di]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "mobius_blockdiag_matvec: x and blocks must have one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "mobius_blockdiag_matvec: float32 or float64");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mobius_blockdiag_matvec_fwd_cpu(const at::Tensor& x_in, const at::Tensor& w_in,
                                                                   const at::Tensor& k) {
  const at::Tensor x = x_in.detach().contiguous(), w = w_in.detach().contiguous();
  bd_check(x, w);
  const int64_t R = x.size(0), nb = w.size(0), Do = w.size(1), Di = w.size(2);
  at::Tensor out = at::empty({R, nb * Do}, x.options());
  at::Tensor stats = at::empty({R, 6}, x.options().dtype(at::kDouble));
  if (R == 0) return {out, stats};
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const bool per_row = kd.numel() == R && R != 1;
  const bool gemm = bd_gemm_route(nb, Do, Di);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mobius_blockdiag_matvec_fwd", [&] {
    if (gemm)
      gemm_fwd<scalar_t>(x, w, out, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row);
    else
      lanes_fwd<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                          stats.data_ptr<double>(), kd.data_ptr<double>(), per_row, R, nb, Do, Di);
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_blockdiag_matvec_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& k,
    const at::Tensor& out_in, const at::Tensor& stats_in, int64_t mask) {
  const at::Tensor g = g_in.contiguous(), x = x_in.detach().contiguous(), w = w_in.detach().contiguous(),
                   out = out_in.contiguous(), stats = stats_in.contiguous();
  bd_check(x, w);
  const int64_t R = x.size(0), nb = w.size(0), Do = w.size(1), Di = w.size(2);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == R && g.size(1) == nb * Do && out.sizes() == g.sizes() &&
                  g.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(),
              "mobius_blockdiag_matvec backward: grad and out [R, nb*Do] in x's dtype");
  const bool want_x = mask & 1, want_w = mask & 2, want_k = mask & 4;
  at::Tensor dx = want_x ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dw = want_w ? at::zeros_like(w) : x.new_empty({0});
  at::Tensor gk = want_k ? at::zeros({R}, x.options().dtype(at::kDouble)) : x.new_empty({0});
  if (R == 0 || !(want_x || want_w || want_k)) return {dx, dw, gk};
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const bool per_row = kd.numel() == R && R != 1;
  const bool gemm = bd_gemm_route(nb, Do, Di);
  double* gkp = want_k ? gk.data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mobius_blockdiag_matvec_bwd", [&] {
    if (gemm)
      gemm_bwd<scalar_t>(g, x, w, out, dx, dw, gkp, stats.data_ptr<double>(), kd.data_ptr<double>(), per_row,
                         want_x, want_w);
    else
      lanes_bwd<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>(), want_x ? dx.data_ptr<scalar_t>() : nullptr,
                          want_w ? dw.data_ptr<scalar_t>() : nullptr, gkp, stats.data_ptr<double>(),
                          kd.data_ptr<double>(), per_row, R, nb, Do, Di);
  });
  return {dx, dw, gk};
}

}  // namespace cpu
}  // namespace geoops
