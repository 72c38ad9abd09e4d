// Fused CPU kernels of Kronecker triple attention (forward and backward).
//
//   T[i, j, k] = s * sum_d q[i,d] k1[j,d] k2[k,d],  P[i] = softmax over admissible (j, k) of T[i],
//   out[i]     = sum_{j,k} P[i,j,k] (v1[j] (.) v2[k]).
//
// The two key sets play symmetric roles, so the kernels call them "folded" (a) and "shared" (b): a work
// item is a tile of BQ queries; its GEMM rows are the pairs (i, j) of a query and one of its folded keys,
// A[(i,j), :] = s q_i (.) ka_j, and the GEMM columns are a chunk of shared keys, so that
//
//   S  = A . Kb_chunk^T                       (rows (i, j), columns k: the scores)
//   PV = P . Vb_chunk,  acc_i += sum_j PV[(i,j)] (.) va_j
//
// with an online softmax per query over the (folded-chunk, shared-chunk) sequence.  Each row (i, j)
// enumerates exactly query i's admissible folded keys (no waste along a), and the shared chunk spans
// the union of the tile's admissible shared keys (waste (BQ + w_b - 1) / w_b for a window).  With a
// window the narrower key set is folded, so (w1, w2) = (64, 16) folds k2 and shares k1.  Nothing of
// size N^2 is stored: the per-thread workspace is O(BQ * BJ * (BK + D + Dv)).
//
// GEMMs run on MKL's sgemm/dgemm (the Fortran entry points that libtorch_cpu exports), called from
// inside the parallel region, where MKL runs single-threaded (each worker holds OneMklThread: a lone worker,
// one tile of work or one torch thread, is no active OpenMP region and MKL would thread every small GEMM).
//
// Backward (recomputes P = exp(S - lse) from the forward's log-sum-exp, delta_i = <dout_i, out_i>):
//   G   = dout_i (.) va_j          dP = G . Vb^T         dS = P (.) (dP - delta_i)
//   dVb += P^T . G                 dKb += dS^T . A       E = dS . Kb      F = P . Vb
//   dq_i += s sum_j E[(i,j)] (.) ka_j,  dKa_j += s sum_i E[(i,j)] (.) q_i,  dVa_j += sum_i F[(i,j)] (.) dout_i
// Query tiles are dealt to a number of groups that depends only on the shapes; each (batch, head, group)
// accumulates the key gradients in its own buffer, over the key range its tiles touch, and the buffers are
// summed in a fixed order (heads of a key group, then groups): deterministic, no atomics, and the same
// bits for any number of threads.
//
// float16 / bfloat16 inputs are computed in float32 (converted once, O(N D) memory); float64 in double.
// at::vec::Vectorized (exp on SIMD vectors) for the ISA of the native build; its code lives in the inline
// namespace at::vec::<CPU_CAPABILITY>, so this choice does not leak into other translation units.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "mkl_packed.h"  // OneMklThread

// MKL's (or OpenBLAS') Fortran GEMM entry points, which libtorch_cpu exports in the x86 wheels.  Weak, so that
// the extension still loads against a torch whose BLAS does not export them: then gemm_rm falls back to at::mm.
extern "C" {
__attribute__((weak)) void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                                  const float* beta, float* c, const int* ldc);
__attribute__((weak)) void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const double* alpha, const double* a, const int* lda, const double* b,
                                  const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace geoops {
namespace cpu {

namespace {

constexpr int64_t kBQ = 16;   // queries per tile
constexpr int64_t kBJ = 16;   // folded keys per query and chunk (rows per tile: BQ * BJ)
constexpr int64_t kBK = 256;  // shared keys per chunk

template <typename T>
bool have_blas() {
  return std::is_same<T, float>::value ? (&sgemm_ != nullptr) : (&dgemm_ != nullptr);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                      const double* a, const int* lda, const double* b, const int* ldb, const double* beta,
                      double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C (M x N) = op(A) op(B) + beta C with plain loops: the fallback when no BLAS symbols are exported
// (correct, much slower).
template <typename T>
void gemm_rm_loops(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                   int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < N; ++c) {
      T acc = T(0);
      for (int64_t x = 0; x < K; ++x) acc += (ta ? A[x * lda + r] : A[r * lda + x]) * (tb ? B[c * ldb + x] : B[x * ldb + c]);
      C[r * ldc + c] = beta == T(0) ? acc : beta * C[r * ldc + c] + acc;
    }
}

// Row-major C (M x N) = op(A) op(B) + beta C, op(A): M x K, op(B): K x N.  (Column-major BLAS computes
// C^T = op(B)^T op(A)^T on the same memory.)  Tile sizes are far below 2^31.
template <typename T>
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < N; ++c) C[r * ldc + c] = beta == T(0) ? T(0) : beta * C[r * ldc + c];
    return;
  }
  if (!have_blas<T>()) {
    gemm_rm_loops<T>(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(std::max<int64_t>(lda, 1)), lb = static_cast<int>(std::max<int64_t>(ldb, 1));
  const int lc = static_cast<int>(std::max<int64_t>(ldc, 1));
  const T one = T(1);
  blas_gemm(&cb, &ca, &m, &n, &k, &one, B, &lb, A, &la, &beta, C, &lc);
}

template <typename T>
using Vec = at::vec::Vectorized<T>;

// max(a, b) that returns NaN when either is NaN (std::max drops a NaN second argument): a NaN score must
// reach the softmax sum, so that the query's output is NaN as in the eager softmax, not "no admissible pair"
template <typename T>
inline T max_nan(T a, T b) {
  return (b > a || b != b) ? b : a;
}

template <typename T>
T row_max(const T* x, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  T m = -std::numeric_limits<T>::infinity();
  int64_t c = 0;
  if (n >= L) {
    Vec<T> vm = Vec<T>::loadu(x);
    for (c = L; c + L <= n; c += L) vm = at::vec::maximum(vm, Vec<T>::loadu(x + c));  // propagates NaN
    T tmp[L];
    vm.store(tmp);
    for (int64_t t = 0; t < L; ++t) m = max_nan(m, tmp[t]);
  }
  for (; c < n; ++c) m = max_nan(m, x[c]);
  return m;
}

// x[c] <- exp(x[c] - m) for c < n; returns the sum.
template <typename T>
T exp_shift_sum(T* x, int64_t n, T m) {
  constexpr int64_t L = Vec<T>::size();
  const Vec<T> vm(m);
  Vec<T> s0(T(0)), s1(T(0));
  int64_t c = 0;
  for (; c + 2 * L <= n; c += 2 * L) {
    Vec<T> e0 = (Vec<T>::loadu(x + c) - vm).exp_u20();
    Vec<T> e1 = (Vec<T>::loadu(x + c + L) - vm).exp_u20();
    e0.store(x + c);
    e1.store(x + c + L);
    s0 = s0 + e0;
    s1 = s1 + e1;
  }
  for (; c + L <= n; c += L) {
    Vec<T> e0 = (Vec<T>::loadu(x + c) - vm).exp_u20();
    e0.store(x + c);
    s0 = s0 + e0;
  }
  T tmp[L];
  (s0 + s1).store(tmp);
  T s = T(0);
  for (int64_t t = 0; t < L; ++t) s += tmp[t];
  for (; c < n; ++c) {
    x[c] = std::exp(x[c] - m);
    s += x[c];
  }
  return s;
}

// p[c] <- exp(s[c] - L); d[c] <- p[c] * (d[c] - delta) for c < n.
template <typename T>
void exp_dsoftmax(T* s, T* d, int64_t n, T L_, T delta) {
  constexpr int64_t L = Vec<T>::size();
  const Vec<T> vl(L_), vd(delta);
  int64_t c = 0;
  for (; c + L <= n; c += L) {
    Vec<T> p = (Vec<T>::loadu(s + c) - vl).exp_u20();
    p.store(s + c);
    (p * (Vec<T>::loadu(d + c) - vd)).store(d + c);
  }
  for (; c < n; ++c) {
    const T p = std::exp(s[c] - L_);
    s[c] = p;
    d[c] = p * (d[c] - delta);
  }
}

inline void zero(float* x, int64_t n) { if (n > 0) std::memset(x, 0, sizeof(float) * n); }
inline void zero(double* x, int64_t n) { if (n > 0) std::memset(x, 0, sizeof(double) * n); }

template <typename T>
bool all_finite(const T* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c)
    if (!std::isfinite(x[c])) return false;
  return true;
}

// Masked pairs stay out of every product.  The GEMMs of a chunk run over all its bk shared keys, while query i
// sees only the columns [c0, c1): a masked column's zero probability (or dS) times an inf / NaN key or value row
// would be NaN (0 * inf) in i's row, and a masked column's gradient would take 0 times a non-finite row of
// A (q, ka) or G (dout, va).  Such a chunk is rare (a non-finite value where some query of the tile may not look:
// padding, an unfilled buffer): it takes one GEMM per query over exactly its columns instead (masked_chunk).
// True when the chunk's rows [k0, k0 + bk) of x (width per row) hold a non-finite value outside [vis0, vis1),
// the columns that every active query of the tile sees (vis1 <= vis0: none; all rows are checked).
template <typename T>
bool masked_rows_nonfinite(const T* x, int64_t width, int64_t bk, int64_t vis0, int64_t vis1) {
  if (vis1 <= vis0) return !all_finite(x, bk * width);
  return !all_finite(x, vis0 * width) || !all_finite(x + vis1 * width, (bk - vis1) * width);
}

// Admissible key ranges of query i: [lo, hi] (empty when hi < lo).
struct Geometry {
  int64_t B, H, Hk, N, Ma, Mb, D, Dv;
  bool causal;
  int64_t wa, wb;  // 0: no window
  int64_t lo_a(int64_t i) const { return wa > 0 ? std::max<int64_t>(0, i - wa + 1) : 0; }
  int64_t hi_a(int64_t i) const { return causal ? std::min(i, Ma - 1) : Ma - 1; }
  int64_t lo_b(int64_t i) const { return wb > 0 ? std::max<int64_t>(0, i - wb + 1) : 0; }
  int64_t hi_b(int64_t i) const { return causal ? std::min(i, Mb - 1) : Mb - 1; }
  // max over the tile's queries of the number of admissible folded keys (0 if a query has no shared key)
  int64_t folded_len(int64_t i0, int64_t i1) const {
    int64_t t = 0;
    for (int64_t i = i0; i < i1; ++i)
      if (hi_b(i) >= lo_b(i)) t = std::max(t, hi_a(i) - lo_a(i) + 1);
    return t;
  }
};

// ---------------------------------------------------------------- forward
template <typename T>
struct FwdWork {
  std::vector<T> A, S, PV, acc, m, l;
  std::vector<int64_t> jrow;
  FwdWork(int64_t D, int64_t Dv) {
    const int64_t R = kBQ * kBJ;
    A.resize(R * D);
    S.resize(R * kBK);
    PV.resize(R * Dv);
    acc.resize(kBQ * Dv);
    m.resize(kBQ);
    l.resize(kBQ);
    jrow.resize(R);
  }
};

template <typename T>
void fwd_tile(const Geometry& g, const T* q, const T* ka, const T* kb, const T* va, const T* vb, T scale, int64_t i0,
              int64_t i1, T* out, T* lse, FwdWork<T>& w) {
  const int64_t D = g.D, Dv = g.Dv, nq = i1 - i0;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::fill(w.m.begin(), w.m.begin() + nq, ninf);
  std::fill(w.l.begin(), w.l.begin() + nq, T(0));
  zero(w.acc.data(), nq * Dv);
  const int64_t Ta = g.folded_len(i0, i1);
  const int64_t klo = g.lo_b(i0), khi = g.hi_b(i1 - 1);
  if (Ta > 0 && khi >= klo) {
    const int64_t BJ = std::min<int64_t>(Ta, kBJ);
    for (int64_t t0 = 0; t0 < Ta; t0 += BJ) {
      const int64_t bj = std::min(BJ, Ta - t0), R = nq * bj;
      // rows (i, j): A = s q_i (.) ka_j
      for (int64_t ii = 0; ii < nq; ++ii) {
        const int64_t i = i0 + ii;
        const bool any_b = g.hi_b(i) >= g.lo_b(i);
        const T* qi = q + ii * D;
        for (int64_t tt = 0; tt < bj; ++tt) {
          const int64_t r = ii * bj + tt, j = g.lo_a(i) + t0 + tt;
          T* Ar = w.A.data() + r * D;
          if (!any_b || j > g.hi_a(i)) {
            w.jrow[r] = -1;
            zero(Ar, D);
            continue;
          }
          w.jrow[r] = j;
          const T* kj = ka + j * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) Ar[d] = scale * qi[d] * kj[d];
        }
      }
      for (int64_t k0 = klo; k0 <= khi; k0 += kBK) {
        const int64_t bk = std::min<int64_t>(kBK, khi + 1 - k0);
        T* S = w.S.data();
        gemm_rm<T>(false, true, R, bk, D, w.A.data(), D, kb + k0 * D, D, T(0), S, bk);
        for (int64_t ii = 0; ii < nq; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t c0 = std::max(g.lo_b(i), k0) - k0, c1 = std::min(g.hi_b(i) + 1, k0 + bk) - k0;
          T mx = ninf;
          if (c1 > c0)
            for (int64_t tt = 0; tt < bj; ++tt)
              if (w.jrow[ii * bj + tt] >= 0) mx = max_nan(mx, row_max(S + (ii * bj + tt) * bk + c0, c1 - c0));
          // a NaN or +inf score (NaN input or scale, overflow): the eager softmax gives NaN; l stays NaN and the
          // query's out and lse are NaN (not left to exp(inf - inf), which the vector exp need not make NaN)
          const bool poison = !(mx < std::numeric_limits<T>::infinity());
          if (mx == ninf || poison) {  // nothing admissible for this query in this chunk, or poisoned
            if (poison) w.l[ii] = std::numeric_limits<T>::quiet_NaN();
            zero(S + ii * bj * bk, bj * bk);
            continue;
          }
          const T mnew = std::max(w.m[ii], mx);
          if (mnew != w.m[ii]) {
            const T alpha = std::exp(w.m[ii] - mnew);  // 0 when m was -inf
            w.l[ii] *= alpha;
            T* acc = w.acc.data() + ii * Dv;
#pragma omp simd
            for (int64_t e = 0; e < Dv; ++e) acc[e] *= alpha;
            w.m[ii] = mnew;
          }
          T sum = T(0);
          for (int64_t tt = 0; tt < bj; ++tt) {
            T* Sr = S + (ii * bj + tt) * bk;
            if (w.jrow[ii * bj + tt] < 0) {
              zero(Sr, bk);
              continue;
            }
            zero(Sr, c0);
            zero(Sr + c1, bk - c1);
            sum += exp_shift_sum(Sr + c0, c1 - c0, mnew);
          }
          w.l[ii] += sum;
        }
        // the columns that every active query sees: [vis0, vis1) (rows without a folded key give no output)
        int64_t vis0 = 0, vis1 = bk;
        for (int64_t ii = 0; ii < nq; ++ii) {
          if (w.jrow[ii * bj] < 0) continue;
          const int64_t i = i0 + ii;
          vis0 = std::max(vis0, std::max(g.lo_b(i), k0) - k0);
          vis1 = std::min(vis1, std::min(g.hi_b(i) + 1, k0 + bk) - k0);
        }
        const T* vbc = vb + k0 * Dv;
        if ((vis0 > 0 || vis1 < bk) && masked_rows_nonfinite(vbc, Dv, bk, vis0, vis1)) {
          for (int64_t ii = 0; ii < nq; ++ii) {  // masked_chunk: each query's rows times its own columns only
            const int64_t i = i0 + ii;
            const int64_t c0 = std::min(std::max(g.lo_b(i), k0) - k0, bk);
            const int64_t c1 = std::min(g.hi_b(i) + 1, k0 + bk) - k0;
            gemm_rm<T>(false, false, bj, Dv, std::max<int64_t>(c1 - c0, 0), S + ii * bj * bk + c0, bk,
                       vbc + c0 * Dv, Dv, T(0), w.PV.data() + ii * bj * Dv, Dv);
          }
        } else {
          gemm_rm<T>(false, false, R, Dv, bk, S, bk, vbc, Dv, T(0), w.PV.data(), Dv);
        }
        for (int64_t ii = 0; ii < nq; ++ii) {
          T* acc = w.acc.data() + ii * Dv;
          for (int64_t tt = 0; tt < bj; ++tt) {
            const int64_t r = ii * bj + tt, j = w.jrow[r];
            if (j < 0) continue;
            const T* pv = w.PV.data() + r * Dv;
            const T* vj = va + j * Dv;
#pragma omp simd
            for (int64_t e = 0; e < Dv; ++e) acc[e] += pv[e] * vj[e];
          }
        }
      }
    }
  }
  for (int64_t ii = 0; ii < nq; ++ii) {
    T* o = out + ii * Dv;
    const T l = w.l[ii];
    if (l > T(0)) {
      const T inv = T(1) / l;
      const T* acc = w.acc.data() + ii * Dv;
#pragma omp simd
      for (int64_t e = 0; e < Dv; ++e) o[e] = acc[e] * inv;
      lse[ii] = w.m[ii] + std::log(l);
    } else if (l != l) {  // poisoned by a NaN or +inf score (above): NaN, as the eager softmax
      std::fill(o, o + Dv, std::numeric_limits<T>::quiet_NaN());
      lse[ii] = std::numeric_limits<T>::quiet_NaN();
    } else {
      zero(o, Dv);
      lse[ii] = ninf;
    }
  }
}

template <typename T>
void fwd_impl(const Geometry& g, const T* q, const T* ka, const T* kb, const T* va, const T* vb, T scale, T* out,
              T* lse) {
  const int64_t ntiles = (g.N + kBQ - 1) / kBQ, rep = g.H / g.Hk;
  const int64_t items = g.B * g.H * ntiles;
  // items handed out one at a time to the torch threads (dynamic schedule), each with its own workspace
  std::atomic<int64_t> next{0};
  const int64_t nth = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  auto worker = [&](int64_t) {
    const mkl_packed::OneMklThread one_mkl_thread;  // a lone worker is no active region: MKL would thread each GEMM
    FwdWork<T> w(g.D, g.Dv);
    for (int64_t it = next.fetch_add(1); it < items; it = next.fetch_add(1)) {
      // last tiles first: under a causal mask they are the largest, and go first for balance
      const int64_t tile = ntiles - 1 - it % ntiles, bh = it / ntiles, b = bh / g.H, h = bh % g.H, hk = h / rep;
      const int64_t i0 = tile * kBQ, i1 = std::min(i0 + kBQ, g.N);
      const int64_t kvh = b * g.Hk + hk;
      fwd_tile<T>(g, q + (bh * g.N + i0) * g.D, ka + kvh * g.Ma * g.D, kb + kvh * g.Mb * g.D,
                  va + kvh * g.Ma * g.Dv, vb + kvh * g.Mb * g.Dv, scale, i0, i1, out + (bh * g.N + i0) * g.Dv,
                  lse + bh * g.N + i0, w);
    }
  };
  if (nth <= 1) {
    worker(0);
  } else {
    at::parallel_for(0, nth, 1, [&](int64_t b, int64_t) { worker(b); });
  }
}

// ---------------------------------------------------------------- backward
template <typename T>
struct BwdWork {
  std::vector<T> A, G, S, dS, E, F, dq, delta, L;
  std::vector<int64_t> jrow;
  std::vector<char> rowbad;  // per query: a non-finite value in its A or G rows (this chunk of folded keys)
  BwdWork(int64_t D, int64_t Dv) {
    const int64_t R = kBQ * kBJ;
    A.resize(R * D);
    G.resize(R * Dv);
    S.resize(R * kBK);
    dS.resize(R * kBK);
    E.resize(R * D);
    F.resize(R * Dv);
    dq.resize(kBQ * D);
    delta.resize(kBQ);
    L.resize(kBQ);
    jrow.resize(R);
    rowbad.resize(kBQ);
  }
};

// Partial key gradients of one (batch, head, group), for keys a in [alo, alo + na) and b in [blo, blo + nb).
template <typename T>
struct Partial {
  T* dka;
  T* dva;
  T* dkb;
  T* dvb;
  int64_t alo, blo;
};

template <typename T>
void bwd_tile(const Geometry& g, const T* q, const T* ka, const T* kb, const T* va, const T* vb, const T* dout,
              const T* out, const T* lse, T scale, int64_t i0, int64_t i1, T* dq, const Partial<T>& p,
              BwdWork<T>& w) {
  const int64_t D = g.D, Dv = g.Dv, nq = i1 - i0;
  zero(w.dq.data(), nq * D);
  const int64_t Ta = g.folded_len(i0, i1);
  const int64_t klo = g.lo_b(i0), khi = g.hi_b(i1 - 1);
  if (Ta > 0 && khi >= klo) {
    for (int64_t ii = 0; ii < nq; ++ii) {
      T s = T(0);
      const T* o = out + ii * Dv;
      const T* d = dout + ii * Dv;
      for (int64_t e = 0; e < Dv; ++e) s += o[e] * d[e];
      w.delta[ii] = s;
      w.L[ii] = lse[ii];
    }
    const int64_t BJ = std::min<int64_t>(Ta, kBJ);
    for (int64_t t0 = 0; t0 < Ta; t0 += BJ) {
      const int64_t bj = std::min(BJ, Ta - t0), R = nq * bj;
      for (int64_t ii = 0; ii < nq; ++ii) {
        const int64_t i = i0 + ii;
        // lse = -inf: no admissible pair (zero gradients); lse = NaN (a NaN forward) propagates NaN
        const bool any = w.L[ii] != -std::numeric_limits<T>::infinity() && g.hi_b(i) >= g.lo_b(i);
        const T* qi = q + ii * D;
        const T* di = dout + ii * Dv;
        bool bad = false;
        for (int64_t tt = 0; tt < bj; ++tt) {
          const int64_t r = ii * bj + tt, j = g.lo_a(i) + t0 + tt;
          T* Ar = w.A.data() + r * D;
          T* Gr = w.G.data() + r * Dv;
          if (!any || j > g.hi_a(i)) {
            w.jrow[r] = -1;
            zero(Ar, D);
            zero(Gr, Dv);
            continue;
          }
          w.jrow[r] = j;
          const T* kj = ka + j * D;
          const T* vj = va + j * Dv;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) Ar[d] = scale * qi[d] * kj[d];
#pragma omp simd
          for (int64_t e = 0; e < Dv; ++e) Gr[e] = di[e] * vj[e];
          bad = bad || (g.causal && (!all_finite(Ar, D) || !all_finite(Gr, Dv)));  // dense: no chunk is partial
        }
        w.rowbad[ii] = bad;
      }
      bool first = true;
      for (int64_t k0 = klo; k0 <= khi; k0 += kBK) {
        const int64_t bk = std::min<int64_t>(kBK, khi + 1 - k0);
        T* S = w.S.data();
        T* dS = w.dS.data();
        gemm_rm<T>(false, true, R, bk, D, w.A.data(), D, kb + k0 * D, D, T(0), S, bk);
        gemm_rm<T>(false, true, R, bk, Dv, w.G.data(), Dv, vb + k0 * Dv, Dv, T(0), dS, bk);
        for (int64_t ii = 0; ii < nq; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t c0 = std::max(g.lo_b(i), k0) - k0, c1 = std::min(g.hi_b(i) + 1, k0 + bk) - k0;
          for (int64_t tt = 0; tt < bj; ++tt) {
            const int64_t r = ii * bj + tt;
            T* Sr = S + r * bk;
            T* dSr = dS + r * bk;
            if (w.jrow[r] < 0 || c1 <= c0) {
              zero(Sr, bk);
              zero(dSr, bk);
              continue;
            }
            zero(Sr, c0);
            zero(Sr + c1, bk - c1);
            zero(dSr, c0);
            zero(dSr + c1, bk - c1);
            exp_dsoftmax(Sr + c0, dSr + c0, c1 - c0, w.L[ii], w.delta[ii]);
          }
        }
        const int64_t kb0 = k0 - p.blo;
        const T* kbc = kb + k0 * D;
        const T* vbc = vb + k0 * Dv;
        const T beta = first ? T(0) : T(1);
        // masked_chunk (see the forward): a non-finite key / value row in a column that some active query does
        // not see, or a non-finite A / G row of a query that does not see every column of the chunk
        int64_t vis0 = 0, vis1 = bk;
        bool bad_rows = false;
        for (int64_t ii = 0; ii < nq; ++ii) {
          if (w.jrow[ii * bj] < 0) continue;
          const int64_t i = i0 + ii;
          const int64_t c0 = std::max(g.lo_b(i), k0) - k0, c1 = std::min(g.hi_b(i) + 1, k0 + bk) - k0;
          vis0 = std::max(vis0, c0);
          vis1 = std::min(vis1, c1);
          bad_rows = bad_rows || (w.rowbad[ii] && (c0 > 0 || c1 < bk));
        }
        const bool partial = vis0 > 0 || vis1 < bk;
        if (partial && (bad_rows || masked_rows_nonfinite(kbc, D, bk, vis0, vis1) ||
                        masked_rows_nonfinite(vbc, Dv, bk, vis0, vis1))) {
          for (int64_t ii = 0; ii < nq; ++ii) {  // each query's rows with its own columns [c0, c1) only
            const int64_t i = i0 + ii, r0 = ii * bj;
            const int64_t c0 = std::min(std::max(g.lo_b(i), k0) - k0, bk);
            const int64_t n = std::max<int64_t>(std::min(g.hi_b(i) + 1, k0 + bk) - k0 - c0, 0);
            const T* Si = S + r0 * bk + c0;
            const T* dSi = dS + r0 * bk + c0;
            if (w.jrow[r0] >= 0) {
              gemm_rm<T>(true, false, n, Dv, bj, Si, bk, w.G.data() + r0 * Dv, Dv, T(1), p.dvb + (kb0 + c0) * Dv, Dv);
              gemm_rm<T>(true, false, n, D, bj, dSi, bk, w.A.data() + r0 * D, D, T(1), p.dkb + (kb0 + c0) * D, D);
            }
            gemm_rm<T>(false, false, bj, D, n, dSi, bk, kbc + c0 * D, D, beta, w.E.data() + r0 * D, D);
            gemm_rm<T>(false, false, bj, Dv, n, Si, bk, vbc + c0 * Dv, Dv, beta, w.F.data() + r0 * Dv, Dv);
          }
        } else {
          gemm_rm<T>(true, false, bk, Dv, R, S, bk, w.G.data(), Dv, T(1), p.dvb + kb0 * Dv, Dv);
          gemm_rm<T>(true, false, bk, D, R, dS, bk, w.A.data(), D, T(1), p.dkb + kb0 * D, D);
          gemm_rm<T>(false, false, R, D, bk, dS, bk, kbc, D, beta, w.E.data(), D);
          gemm_rm<T>(false, false, R, Dv, bk, S, bk, vbc, Dv, beta, w.F.data(), Dv);
        }
        first = false;
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const T* qi = q + ii * D;
        const T* di = dout + ii * Dv;
        T* dqi = w.dq.data() + ii * D;
        for (int64_t tt = 0; tt < bj; ++tt) {
          const int64_t r = ii * bj + tt, j = w.jrow[r];
          if (j < 0) continue;
          const T* Er = w.E.data() + r * D;
          const T* Fr = w.F.data() + r * Dv;
          const T* kj = ka + j * D;
          T* dkj = p.dka + (j - p.alo) * D;
          T* dvj = p.dva + (j - p.alo) * Dv;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {
            dqi[d] += Er[d] * kj[d];
            dkj[d] += scale * Er[d] * qi[d];
          }
#pragma omp simd
          for (int64_t e = 0; e < Dv; ++e) dvj[e] += Fr[e] * di[e];
        }
      }
    }
  }
  for (int64_t ii = 0; ii < nq; ++ii) {
    T* o = dq + ii * D;
    const T* a = w.dq.data() + ii * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = scale * a[d];
  }
}

struct GroupPlan {
  int64_t G, ntiles;
  bool contiguous;
  std::vector<int64_t> alo, na, blo, nb, off;  // per group: key ranges, offset in a (b, h) slab
  int64_t slab;                                  // elements per (b, h)
  int64_t tile_of(int64_t g, int64_t n) const { return contiguous ? tpg() * g + n : n * G + g; }
  int64_t tiles_in(int64_t g) const {
    if (contiguous) return std::max<int64_t>(0, std::min(ntiles, tpg() * (g + 1)) - tpg() * g);
    return (ntiles - g + G - 1) / G;
  }
  int64_t tpg() const { return (ntiles + G - 1) / G; }
};

GroupPlan plan_groups(const Geometry& g) {
  GroupPlan p;
  p.ntiles = (g.N + kBQ - 1) / kBQ;
  const int64_t bh = std::max<int64_t>(1, g.B * g.H);
  // enough independent items for a few threads, a number that depends on the shapes only
  p.G = std::max<int64_t>(1, std::min<int64_t>(p.ntiles, (16 + bh - 1) / bh));
  // windowed: contiguous blocks of tiles touch contiguous, short key ranges; otherwise interleave the
  // tiles (balances the causal triangle; every group touches (nearly) all keys anyway)
  p.contiguous = g.wa > 0 || g.wb > 0;
  // (no query tiles, N = 0: tpg() is 0, nothing to regroup; G stays 1 with no tiles)
  if (p.contiguous && p.ntiles > 0) p.G = std::min(p.G, (p.ntiles + p.tpg() - 1) / p.tpg());
  p.slab = 0;
  for (int64_t gi = 0; gi < p.G; ++gi) {
    int64_t alo = g.Ma, ahi = -1, blo = g.Mb, bhi = -1;
    for (int64_t n = 0; n < p.tiles_in(gi); ++n) {
      const int64_t t = p.tile_of(gi, n), i0 = t * kBQ, i1 = std::min(i0 + kBQ, g.N);
      alo = std::min(alo, g.lo_a(i0));
      ahi = std::max(ahi, g.hi_a(i1 - 1));
      blo = std::min(blo, g.lo_b(i0));
      bhi = std::max(bhi, g.hi_b(i1 - 1));
    }
    const int64_t na = std::max<int64_t>(0, ahi - alo + 1), nb = std::max<int64_t>(0, bhi - blo + 1);
    p.alo.push_back(na ? alo : 0);
    p.na.push_back(na);
    p.blo.push_back(nb ? blo : 0);
    p.nb.push_back(nb);
    p.off.push_back(p.slab);
    p.slab += (na + nb) * (g.D + g.Dv);
  }
  return p;
}

template <typename T>
void bwd_impl(const Geometry& g, const T* q, const T* ka, const T* kb, const T* va, const T* vb, const T* dout,
              const T* out, const T* lse, T scale, T* dq, T* dka, T* dkb, T* dva, T* dvb) {
  const GroupPlan plan = plan_groups(g);
  const int64_t rep = g.H / g.Hk, D = g.D, Dv = g.Dv;
  const int64_t items = g.B * g.H * plan.G;
  std::vector<T> part(static_cast<size_t>(g.B * g.H) * plan.slab);  // zero-initialised
  auto partial = [&](int64_t bh, int64_t gi) {
    T* base = part.data() + bh * plan.slab + plan.off[gi];
    const int64_t na = plan.na[gi], nb = plan.nb[gi];
    return Partial<T>{base, base + na * D, base + na * (D + Dv), base + na * (D + Dv) + nb * D, plan.alo[gi],
                      plan.blo[gi]};
  };
  std::atomic<int64_t> next{0};
  const int64_t nth = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  auto worker = [&](int64_t) {
    const mkl_packed::OneMklThread one_mkl_thread;  // a lone worker is no active region: MKL would thread each GEMM
    BwdWork<T> w(D, Dv);
    for (int64_t it = next.fetch_add(1); it < items; it = next.fetch_add(1)) {
      const int64_t gi = it % plan.G, bh = it / plan.G, b = bh / g.H, h = bh % g.H, hk = h / rep;
      const int64_t kvh = b * g.Hk + hk;
      const Partial<T> p = partial(bh, gi);
      for (int64_t n = 0; n < plan.tiles_in(gi); ++n) {
        const int64_t t = plan.tile_of(gi, n), i0 = t * kBQ, i1 = std::min(i0 + kBQ, g.N);
        const int64_t row = bh * g.N + i0;
        bwd_tile<T>(g, q + row * D, ka + kvh * g.Ma * D, kb + kvh * g.Mb * D, va + kvh * g.Ma * Dv,
                    vb + kvh * g.Mb * Dv, dout + row * Dv, out + row * Dv, lse + row, scale, i0, i1, dq + row * D, p,
                    w);
      }
    }
  };
  if (nth <= 1) {
    worker(0);
  } else {
    at::parallel_for(0, nth, 1, [&](int64_t b, int64_t) { worker(b); });
  }
  // Fixed-order reduction: for each key head, its query heads in order, then the groups in order.
  auto reduce = [&](T* dst, int64_t M, int64_t width, bool is_a, bool is_k) {
    const int64_t rows_per = 64;
    const int64_t nblk = (M + rows_per - 1) / rows_per;
    at::parallel_for(0, g.B * g.Hk * nblk, 1, [&](int64_t s, int64_t e) {
      for (int64_t x = s; x < e; ++x) {
        const int64_t blk = x % nblk, kvh = x / nblk, b = kvh / g.Hk, hk = kvh % g.Hk;
        const int64_t m0 = blk * rows_per, m1 = std::min(M, m0 + rows_per);
        T* o = dst + (kvh * M) * width;
        for (int64_t m = m0; m < m1; ++m) zero(o + m * width, width);
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h) {
          const int64_t bh = b * g.H + h;
          for (int64_t gi = 0; gi < plan.G; ++gi) {
            const Partial<T> p = partial(bh, gi);
            const int64_t lo = is_a ? p.alo : p.blo, n = is_a ? plan.na[gi] : plan.nb[gi];
            const T* src = is_a ? (is_k ? p.dka : p.dva) : (is_k ? p.dkb : p.dvb);
            const int64_t r0 = std::max(m0, lo), r1 = std::min(m1, lo + n);
            for (int64_t m = r0; m < r1; ++m) {
              T* om = o + m * width;
              const T* sm = src + (m - lo) * width;
#pragma omp simd
              for (int64_t c = 0; c < width; ++c) om[c] += sm[c];
            }
          }
        }
      }
    });
  };
  reduce(dka, g.Ma, D, true, true);
  reduce(dva, g.Ma, Dv, true, false);
  reduce(dkb, g.Mb, D, false, true);
  reduce(dvb, g.Mb, Dv, false, false);
}

// Which key set is folded with the queries: the one with the narrower window (k1 without windows).
bool fold_second(int64_t w1, int64_t w2, int64_t M1, int64_t M2) {
  if (w1 <= 0 || w2 <= 0) return false;
  return std::min(w2, M2) < std::min(w1, M1);
}

void check_inputs(const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
                  const at::Tensor& v2) {
  TORCH_CHECK(q.dim() == 4 && k1.dim() == 4 && k2.dim() == 4 && v1.dim() == 4 && v2.dim() == 4,
              "triple_attention: q, k1, k2, v1, v2 must be 4-D (B, H, N, D)");
  TORCH_CHECK(k1.size(0) == q.size(0) && k2.size(0) == q.size(0) && v1.size(0) == q.size(0) &&
                  v2.size(0) == q.size(0),
              "triple_attention: batch sizes differ");
  const int64_t Hk = k1.size(1);
  TORCH_CHECK(Hk > 0 && k2.size(1) == Hk && v1.size(1) == Hk && v2.size(1) == Hk && q.size(1) % Hk == 0,
              "triple_attention: key/value heads must agree and divide the query heads");
  TORCH_CHECK(k1.size(3) == q.size(3) && k2.size(3) == q.size(3), "triple_attention: key dim differs from q's");
  TORCH_CHECK(v1.size(2) == k1.size(2) && v2.size(2) == k2.size(2) && v1.size(3) == v2.size(3),
              "triple_attention: value shapes do not match the keys");
  for (const auto* t : {&q, &k1, &k2, &v1, &v2}) {
    TORCH_CHECK(t->device().is_cpu(), "triple_attention_*_cpu: CPU tensors expected");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "triple_attention: all inputs must have q's dtype");
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

Geometry geometry(const at::Tensor& q, const at::Tensor& ka, const at::Tensor& kb, const at::Tensor& va,
                  bool causal, int64_t wa, int64_t wb) {
  Geometry g;
  g.B = q.size(0);
  g.H = q.size(1);
  g.Hk = ka.size(1);
  g.N = q.size(2);
  g.D = q.size(3);
  g.Ma = ka.size(2);
  g.Mb = kb.size(2);
  g.Dv = va.size(3);
  g.wa = wa > 0 ? wa : 0;
  g.wb = wb > 0 ? wb : 0;
  g.causal = causal || g.wa > 0 || g.wb > 0;
  return g;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> triple_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k1,
                                                            const at::Tensor& k2, const at::Tensor& v1,
                                                            const at::Tensor& v2, double scale, bool causal,
                                                            int64_t w1, int64_t w2) {
  check_inputs(q, k1, k2, v1, v2);
  const auto dt = q.scalar_type(), at_ = acc_type(dt);
  const bool sw = fold_second(w1, w2, k1.size(2), k2.size(2));
  auto prep = [&](const at::Tensor& t) { return t.to(at_).contiguous(); };
  const at::Tensor qc = prep(q), ka = prep(sw ? k2 : k1), kb = prep(sw ? k1 : k2), va = prep(sw ? v2 : v1),
                   vb = prep(sw ? v1 : v2);
  const Geometry g = geometry(qc, ka, kb, va, causal, sw ? w2 : w1, sw ? w1 : w2);
  at::Tensor out = at::empty({g.B, g.H, g.N, g.Dv}, q.options().dtype(at_));
  at::Tensor lse = at::empty({g.B, g.H, g.N}, q.options().dtype(at_));
  if (out.numel() > 0 || lse.numel() > 0) {
    if (at_ == at::kDouble) {
      fwd_impl<double>(g, qc.data_ptr<double>(), ka.data_ptr<double>(), kb.data_ptr<double>(), va.data_ptr<double>(),
                       vb.data_ptr<double>(), scale, out.data_ptr<double>(), lse.data_ptr<double>());
    } else {
      fwd_impl<float>(g, qc.data_ptr<float>(), ka.data_ptr<float>(), kb.data_ptr<float>(), va.data_ptr<float>(),
                      vb.data_ptr<float>(), static_cast<float>(scale), out.data_ptr<float>(), lse.data_ptr<float>());
    }
  }
  return {out.to(dt), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> triple_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k1, const at::Tensor& k2, const at::Tensor& v1,
    const at::Tensor& v2, const at::Tensor& out, const at::Tensor& lse, double scale, bool causal, int64_t w1,
    int64_t w2) {
  check_inputs(q, k1, k2, v1, v2);
  const auto dt = q.scalar_type(), at_ = acc_type(dt);
  TORCH_CHECK(dout.sizes() == out.sizes() && out.size(0) == q.size(0) && out.size(1) == q.size(1) &&
                  out.size(2) == q.size(2) && out.size(3) == v1.size(3),
              "triple_attention_bwd_cpu: dout/out must have shape (B, H, N, Dv)");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "triple_attention_bwd_cpu: lse must have shape (B, H, N)");
  const bool sw = fold_second(w1, w2, k1.size(2), k2.size(2));
  auto prep = [&](const at::Tensor& t) { return t.to(at_).contiguous(); };
  const at::Tensor qc = prep(q), ka = prep(sw ? k2 : k1), kb = prep(sw ? k1 : k2), va = prep(sw ? v2 : v1),
                   vb = prep(sw ? v1 : v2), doc = prep(dout), lc = prep(lse);
  const Geometry g = geometry(qc, ka, kb, va, causal, sw ? w2 : w1, sw ? w1 : w2);
  // delta_i = <dout_i, out_i> must use the unrounded output: with a float16/bfloat16 out, the rounding
  // of out would leave dP - delta off by ~1e-3 relative even where the exact dS vanishes (a single
  // admissible pair), so the output is recomputed in float32 (one more forward, half precision only).
  at::Tensor oc;
  if (dt == at_) {
    oc = prep(out);
  } else {
    oc = at::empty({g.B, g.H, g.N, g.Dv}, qc.options());
    at::Tensor lse32 = at::empty({g.B, g.H, g.N}, qc.options());
    if (oc.numel() > 0)
      fwd_impl<float>(g, qc.data_ptr<float>(), ka.data_ptr<float>(), kb.data_ptr<float>(), va.data_ptr<float>(),
                      vb.data_ptr<float>(), static_cast<float>(scale), oc.data_ptr<float>(), lse32.data_ptr<float>());
  }
  at::Tensor dq = at::empty(qc.sizes(), qc.options());
  at::Tensor dka = at::empty(ka.sizes(), qc.options()), dkb = at::empty(kb.sizes(), qc.options());
  at::Tensor dva = at::empty(va.sizes(), qc.options()), dvb = at::empty(vb.sizes(), qc.options());
  if (at_ == at::kDouble) {
    bwd_impl<double>(g, qc.data_ptr<double>(), ka.data_ptr<double>(), kb.data_ptr<double>(), va.data_ptr<double>(),
                     vb.data_ptr<double>(), doc.data_ptr<double>(), oc.data_ptr<double>(), lc.data_ptr<double>(),
                     scale, dq.data_ptr<double>(), dka.data_ptr<double>(), dkb.data_ptr<double>(),
                     dva.data_ptr<double>(), dvb.data_ptr<double>());
  } else {
    bwd_impl<float>(g, qc.data_ptr<float>(), ka.data_ptr<float>(), kb.data_ptr<float>(), va.data_ptr<float>(),
                    vb.data_ptr<float>(), doc.data_ptr<float>(), oc.data_ptr<float>(), lc.data_ptr<float>(),
                    static_cast<float>(scale), dq.data_ptr<float>(), dka.data_ptr<float>(), dkb.data_ptr<float>(),
                    dva.data_ptr<float>(), dvb.data_ptr<float>());
  }
  at::Tensor dk1 = sw ? dkb : dka, dk2 = sw ? dka : dkb, dv1 = sw ? dvb : dva, dv2 = sw ? dva : dvb;
  return {dq.to(dt), dk1.to(dt), dk2.to(dt), dv1.to(dt), dv2.to(dt)};
}

}  // namespace cpu
}  // namespace geoops
