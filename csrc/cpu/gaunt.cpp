// Fused CPU kernels of the Gaunt tensor product family (grid, Fourier and direct routes).
//
// Grid route: the rows are cut into tiles (OpenMP over tiles); for a tile, each
// factor's coefficients (scaled by their per-degree weights on the way in) are
// taken to the exact sphere grid by one BLAS GEMM into a per-thread buffer, the
// factors are multiplied point by point in that buffer, and one more GEMM
// projects the product back (quadrature weights are folded into `proj`), writing
// the output rows directly, scaled by the output weights.  Grid values never
// leave the thread's buffer (tile x P), so the whole batch makes one pass over
// its inputs and outputs.
//
// Direct route: a tile of R rows is transposed into coefficient-major buffers
// (R lanes per coefficient, weights applied), and every nonzero Gaunt
// coefficient g_ijk adds g * x1[i] * x2[j] to out[k] on all R lanes at once (a
// fixed-length loop the compiler turns into SIMD FMAs).  The nonzeros come
// sorted by (i, j), so the lane product x1[i] * x2[j] is formed once per pair.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gaunt.h"

namespace geoops {
namespace cpu {

namespace {


// Degree of each coefficient index c (l = floor(sqrt(c))).
std::vector<int32_t> degrees(int64_t n) {
  std::vector<int32_t> d(n);
  for (int64_t c = 0; c < n; ++c) {
    int64_t l = static_cast<int64_t>(std::sqrt(static_cast<double>(c)));
    while ((l + 1) * (l + 1) <= c) ++l;
    while (l * l > c) --l;
    d[c] = static_cast<int32_t>(l);
  }
  return d;
}

struct Weight {
  const void* ptr = nullptr;  // (1 or N, L+1)
  int64_t row_stride = 0;     // 0 when shared by every row
};

template <typename T>
Weight weight_of(const c10::optional<at::Tensor>& w, int64_t N, int64_t L, const char* name) {
  Weight out;
  if (!w.has_value() || !w->defined()) return out;
  const at::Tensor& t = *w;
  TORCH_CHECK(t.dim() == 2 && t.size(1) == L + 1 && (t.size(0) == 1 || t.size(0) == N),
              "gaunt: ", name, " must have shape (1 or N, L+1) = (1 or ", N, ", ", L + 1, "), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == c10::CppTypeToScalarType<T>::value, "gaunt: ", name,
              " must be contiguous and of the inputs' dtype");
  out.ptr = t.data_ptr();
  out.row_stride = t.size(0) == 1 ? 0 : (L + 1);
  return out;
}

int64_t lmax_of(int64_t n) {
  int64_t r = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  TORCH_CHECK(r * r == n, "gaunt: a coefficient dimension ", n, " is not a square");
  return r - 1;
}

}  // namespace
}  // namespace cpu
}  // namespace geoops

// The BLAS that torch links (MKL in the x86 wheels) exports the Fortran GEMMs; weak, so that a torch without
// them still loads this library (the GEMMs then go through at::mm_out on borrowed buffers).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace geoops {
namespace cpu {
namespace {

template <typename T>
void gemm_fallback(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                   int64_t ldc) {
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opt);
  at::Tensor b = at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opt);
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  at::mm_out(c, a, b);
}

// Row-major C(m x n) = A(m x k) B(k x n) with BLAS (column-major): C^T = B^T A^T.  Sizes here are small
// (a tile of rows x at most a few hundred), far below 2^31.
template <typename T>
void gemm_rm(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  const char no = 'N';
  const int M = static_cast<int>(n), Nn = static_cast<int>(m), K = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T one = 1, zero = 0;
  if constexpr (std::is_same<T, float>::value) {
    if (sgemm_) return sgemm_(&no, &no, &M, &Nn, &K, &one, B, &la, A, &lb, &zero, C, &lc);
  } else {
    if (dgemm_) return dgemm_(&no, &no, &M, &Nn, &K, &one, B, &la, A, &lb, &zero, C, &lc);
  }
  gemm_fallback<T>(m, n, k, A, lda, B, ldb, C, ldc);
}

template <typename T>
void grid_impl(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
               const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals, const at::Tensor& proj,
               at::Tensor& out) {
  const int64_t nu = static_cast<int64_t>(xs.size());
  const int64_t N = out.size(0), n_out = out.size(1), P = proj.size(0);
  std::vector<const T*> xp(nu), ep(nu);
  std::vector<int64_t> ns(nu);
  std::vector<Weight> wp(nu);
  std::vector<std::vector<int32_t>> deg(nu);
  int64_t nmax = 1;
  for (int64_t i = 0; i < nu; ++i) {
    ns[i] = xs[i].size(1);
    xp[i] = xs[i].data_ptr<T>();
    ep[i] = evals[i].data_ptr<T>();
    wp[i] = weight_of<T>(ws[i], N, lmax_of(ns[i]), "weight of a factor");
    deg[i] = degrees(ns[i]);
    nmax = std::max(nmax, ns[i]);
  }
  const Weight wo = weight_of<T>(wout, N, lmax_of(n_out), "weight_out");
  const std::vector<int32_t> dego = degrees(n_out);
  const T* pp = proj.data_ptr<T>();
  T* op = out.data_ptr<T>();

  // Tile: about 128 KiB of grid values per buffer, 16..256 rows.
  int64_t tile = std::max<int64_t>(16, std::min<int64_t>(256, (128 * 1024 / sizeof(T)) / std::max<int64_t>(P, 1)));
  tile = (tile / 8) * 8;
  const int64_t ntiles = (N + tile - 1) / tile;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));

#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> xbuf(tile * nmax), acc(tile * P), tmp(nu > 1 ? tile * P : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * tile;
      const int64_t rows = std::min(tile, N - r0);
      for (int64_t i = 0; i < nu; ++i) {
        const int64_t n = ns[i];
        const T* src = xp[i] + r0 * n;
        if (wp[i].ptr) {
          const T* w = static_cast<const T*>(wp[i].ptr);
          const int32_t* d = deg[i].data();
          for (int64_t r = 0; r < rows; ++r) {
            const T* wr = w + (r0 + r) * wp[i].row_stride;
            const T* s = src + r * n;
            T* dst = xbuf.data() + r * n;
            for (int64_t c = 0; c < n; ++c) dst[c] = s[c] * wr[d[c]];
          }
          src = xbuf.data();
        }
        T* dst = i == 0 ? acc.data() : tmp.data();
        gemm_rm<T>(rows, P, n, src, n, ep[i], P, dst, P);
        if (i > 0) {
          T* __restrict a = acc.data();
          const T* __restrict b = tmp.data();
          const int64_t m = rows * P;
#pragma omp simd
          for (int64_t q = 0; q < m; ++q) a[q] *= b[q];
        }
      }
      T* orow = op + r0 * n_out;
      gemm_rm<T>(rows, n_out, P, acc.data(), P, pp, n_out, orow, n_out);
      if (wo.ptr) {
        const T* w = static_cast<const T*>(wo.ptr);
        for (int64_t r = 0; r < rows; ++r) {
          const T* wr = w + (r0 + r) * wo.row_stride;
          T* o = orow + r * n_out;
          for (int64_t c = 0; c < n_out; ++c) o[c] *= wr[dego[c]];
        }
      }
    }
  }
}

// Fourier route, fused per tile of rows: for each factor, GEMMs take the tile's (weighted) coefficients to
// P = [Re; Im] x u x k (SH -> half spectrum composed with the inverse DFT along the azimuth), laid out (u, r, k)
// so that one more GEMM applies the inverse DFT along the polar angle to the whole tile, giving the M x M
// torus-grid values of every row (layout (j, r, k)), multiplied into the tile's accumulator; back, one GEMM
// forms the output frequencies v = 0..V along the azimuth and one more the output coefficients (Fourier -> SH).
// All intermediates stay in per-thread buffers; no GEMM is per row.
template <typename T>
void fourier_impl(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                  const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& to_rows,
                  const std::vector<at::Tensor>& to_grid, const at::Tensor& back_cols, const at::Tensor& back,
                  at::Tensor& out) {
  const int64_t nu = static_cast<int64_t>(xs.size());
  const int64_t N = out.size(0), n_out = out.size(1);
  const int64_t M = back_cols.size(0), W2 = back_cols.size(1);  // W2 = 2 (V+1)
  const int64_t MM = M * M;
  std::vector<const T*> xp(nu), ap(nu), bp(nu);
  std::vector<int64_t> ns(nu), us(nu);
  std::vector<Weight> wp(nu);
  std::vector<std::vector<int32_t>> deg(nu);
  int64_t nmax = 1, pmax = 1;
  for (int64_t i = 0; i < nu; ++i) {
    ns[i] = xs[i].size(1);
    us[i] = to_grid[i].size(1);  // 2 (2L+1)
    xp[i] = xs[i].data_ptr<T>();
    ap[i] = to_rows[i].data_ptr<T>();
    bp[i] = to_grid[i].data_ptr<T>();
    wp[i] = weight_of<T>(ws[i], N, lmax_of(ns[i]), "weight of a factor");
    deg[i] = degrees(ns[i]);
    nmax = std::max(nmax, ns[i]);
    pmax = std::max(pmax, us[i] * M);
  }
  const Weight wo = weight_of<T>(wout, N, lmax_of(n_out), "weight_out");
  const std::vector<int32_t> dego = degrees(n_out);
  const T* bc = back_cols.data_ptr<T>();
  const T* bk = back.data_ptr<T>();
  T* op = out.data_ptr<T>();

  int64_t tile = std::max<int64_t>(8, std::min<int64_t>(128, (96 * 1024 / sizeof(T)) / std::max<int64_t>(MM, 1)));
  const int64_t ntiles = (N + tile - 1) / tile;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));

#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> xbuf(tile * nmax), pbuf(tile * pmax), acc(tile * MM), tmp(nu > 1 ? tile * MM : 0),
        q(tile * M * W2), qt(tile * M * W2);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * tile;
      const int64_t rows = std::min(tile, N - r0);
      const int64_t RM = rows * M;
      for (int64_t i = 0; i < nu; ++i) {
        const int64_t n = ns[i], U = us[i];
        const T* src = xp[i] + r0 * n;
        if (wp[i].ptr) {
          const T* w = static_cast<const T*>(wp[i].ptr);
          const int32_t* d = deg[i].data();
          for (int64_t r = 0; r < rows; ++r) {
            const T* wr = w + (r0 + r) * wp[i].row_stride;
            for (int64_t c = 0; c < n; ++c) xbuf[r * n + c] = src[r * n + c] * wr[d[c]];
          }
          src = xbuf.data();
        }
        // P[u] (rows x M) = X (rows x n) @ to_rows[:, u M : (u+1) M]: layout (u, r, k)
        for (int64_t u = 0; u < U; ++u)
          gemm_rm<T>(rows, M, n, src, n, ap[i] + u * M, U * M, pbuf.data() + u * RM, M);
        // values (M [j], rows x M [r, k]) = to_grid (M x U) @ P (U x rows M)
        T* dst = i == 0 ? acc.data() : tmp.data();
        gemm_rm<T>(M, RM, U, bp[i], U, pbuf.data(), RM, dst, RM);
        if (i > 0) {
          T* __restrict aa = acc.data();
          const T* __restrict bb = tmp.data();
          const int64_t m = M * RM;
#pragma omp simd
          for (int64_t e = 0; e < m; ++e) aa[e] *= bb[e];
        }
      }
      // Q (j, r, [Re|Im] v) = values (M rows x M [k]) @ back_cols (M x W2); to (r, j, v); out = Q @ back
      gemm_rm<T>(M * rows, W2, M, acc.data(), M, bc, W2, q.data(), W2);
      for (int64_t j = 0; j < M; ++j)
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(qt.data() + (r * M + j) * W2, q.data() + (j * rows + r) * W2, W2 * sizeof(T));
      T* orow = op + r0 * n_out;
      gemm_rm<T>(rows, n_out, M * W2, qt.data(), M * W2, bk, n_out, orow, n_out);
      if (wo.ptr) {
        const T* w = static_cast<const T*>(wo.ptr);
        for (int64_t r = 0; r < rows; ++r) {
          const T* wr = w + (r0 + r) * wo.row_stride;
          T* o = orow + r * n_out;
          for (int64_t c = 0; c < n_out; ++c) o[c] *= wr[dego[c]];
        }
      }
    }
  }
}

constexpr int64_t kLanes = 16;

template <typename T>
void direct_impl(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                 const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout, const at::Tensor& ii,
                 const at::Tensor& jj, const at::Tensor& kk, const at::Tensor& vals, at::Tensor& out) {
  const int64_t N = out.size(0), n_out = out.size(1), n1 = x1.size(1), n2 = x2.size(1);
  const int64_t nnz = vals.size(0);
  const Weight wa = weight_of<T>(w1, N, lmax_of(n1), "weight1");
  const Weight wb = weight_of<T>(w2, N, lmax_of(n2), "weight2");
  const Weight wo = weight_of<T>(wout, N, lmax_of(n_out), "weight_out");
  const std::vector<int32_t> d1 = degrees(n1), d2 = degrees(n2), d3 = degrees(n_out);
  const T* a = x1.data_ptr<T>();
  const T* b = x2.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int32_t* pi = ii.data_ptr<int32_t>();
  const int32_t* pj = jj.data_ptr<int32_t>();
  const int32_t* pk = kk.data_ptr<int32_t>();
  const T* pv = vals.data_ptr<T>();

  // Pair segments: consecutive nonzeros with the same (i, j).
  std::vector<int64_t> seg;
  seg.reserve(nnz + 1);
  for (int64_t e = 0; e < nnz; ++e)
    if (e == 0 || pi[e] != pi[e - 1] || pj[e] != pj[e - 1]) seg.push_back(e);
  seg.push_back(nnz);
  const int64_t npairs = static_cast<int64_t>(seg.size()) - 1;

  const int64_t ntiles = (N + kLanes - 1) / kLanes;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> A(n1 * kLanes), B(n2 * kLanes), O(n_out * kLanes);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * kLanes;
      const int64_t rows = std::min(kLanes, N - r0);
      std::fill(A.begin(), A.end(), T(0));
      std::fill(B.begin(), B.end(), T(0));
      std::fill(O.begin(), O.end(), T(0));
      for (int64_t r = 0; r < rows; ++r) {
        const T* ar = a + (r0 + r) * n1;
        const T* br = b + (r0 + r) * n2;
        const T* war = wa.ptr ? static_cast<const T*>(wa.ptr) + (r0 + r) * wa.row_stride : nullptr;
        const T* wbr = wb.ptr ? static_cast<const T*>(wb.ptr) + (r0 + r) * wb.row_stride : nullptr;
        for (int64_t c = 0; c < n1; ++c) A[c * kLanes + r] = war ? ar[c] * war[d1[c]] : ar[c];
        for (int64_t c = 0; c < n2; ++c) B[c * kLanes + r] = wbr ? br[c] * wbr[d2[c]] : br[c];
      }
      for (int64_t p = 0; p < npairs; ++p) {
        const int64_t e0 = seg[p], e1 = seg[p + 1];
        const T* __restrict ap = A.data() + pi[e0] * kLanes;
        const T* __restrict bp = B.data() + pj[e0] * kLanes;
        T prod[kLanes];
#pragma omp simd
        for (int64_t r = 0; r < kLanes; ++r) prod[r] = ap[r] * bp[r];
        for (int64_t e = e0; e < e1; ++e) {
          const T g = pv[e];
          T* __restrict op = O.data() + pk[e] * kLanes;
#pragma omp simd
          for (int64_t r = 0; r < kLanes; ++r) op[r] += g * prod[r];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* orow = o + (r0 + r) * n_out;
        const T* wor = wo.ptr ? static_cast<const T*>(wo.ptr) + (r0 + r) * wo.row_stride : nullptr;
        for (int64_t c = 0; c < n_out; ++c) orow[c] = wor ? O[c * kLanes + r] * wor[d3[c]] : O[c * kLanes + r];
      }
    }
  }
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "gaunt: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "gaunt: ", name, " must be a contiguous (N, n) tensor, got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "gaunt: ", name,
              " must be float32 or float64");
}

}  // namespace

at::Tensor gaunt_grid_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                              const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                              const at::Tensor& proj) {
  TORCH_CHECK(!xs.empty() && xs.size() == evals.size() && xs.size() == ws.size(),
              "gaunt_grid_fwd_cpu: xs, ws and evals must be non-empty lists of one length");
  const int64_t N = xs[0].size(0);
  for (size_t i = 0; i < xs.size(); ++i) {
    check_rows(xs[i], "a factor");
    TORCH_CHECK(xs[i].size(0) == N && xs[i].scalar_type() == xs[0].scalar_type(),
                "gaunt_grid_fwd_cpu: factors must have the same rows and dtype");
    check_rows(evals[i], "an evaluation matrix");
    TORCH_CHECK(evals[i].size(0) == xs[i].size(1) && evals[i].size(1) == proj.size(0) &&
                    evals[i].scalar_type() == xs[0].scalar_type(),
                "gaunt_grid_fwd_cpu: evaluation matrix ", i, " must be (n_i, P) in the factors' dtype");
  }
  check_rows(proj, "proj");
  TORCH_CHECK(proj.scalar_type() == xs[0].scalar_type(), "gaunt_grid_fwd_cpu: proj must have the factors' dtype");
  at::Tensor out = at::empty({N, proj.size(1)}, xs[0].options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "gaunt_grid_fwd_cpu",
                             [&] { grid_impl<scalar_t>(xs, ws, wout, evals, proj, out); });
  return out;
}

at::Tensor gaunt_fourier_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                                 const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& to_rows,
                                 const std::vector<at::Tensor>& to_grid, const at::Tensor& back_cols,
                                 const at::Tensor& back) {
  TORCH_CHECK(!xs.empty() && xs.size() == ws.size() && xs.size() == to_rows.size() && xs.size() == to_grid.size(),
              "gaunt_fourier_fwd_cpu: xs, ws, to_rows and to_grid must be non-empty lists of one length");
  const int64_t N = xs[0].size(0), M = back_cols.size(0);
  check_rows(back_cols, "back_cols");
  check_rows(back, "back");
  TORCH_CHECK(back.size(0) == M * back_cols.size(1), "gaunt_fourier_fwd_cpu: back must be (M * 2(V+1), n_out)");
  for (size_t i = 0; i < xs.size(); ++i) {
    check_rows(xs[i], "a factor");
    check_rows(to_rows[i], "to_rows");
    check_rows(to_grid[i], "to_grid");
    TORCH_CHECK(xs[i].size(0) == N && xs[i].scalar_type() == xs[0].scalar_type() &&
                    to_rows[i].scalar_type() == xs[0].scalar_type() && to_grid[i].scalar_type() == xs[0].scalar_type(),
                "gaunt_fourier_fwd_cpu: factors and matrices must share rows and dtype");
    TORCH_CHECK(to_rows[i].size(0) == xs[i].size(1) && to_grid[i].size(0) == M &&
                    to_rows[i].size(1) == to_grid[i].size(1) * M,
                "gaunt_fourier_fwd_cpu: to_rows[i] must be (n_i, U M) and to_grid[i] (M, U)");
  }
  TORCH_CHECK(back.scalar_type() == xs[0].scalar_type() && back_cols.scalar_type() == xs[0].scalar_type(),
              "gaunt_fourier_fwd_cpu: back and back_cols must have the factors' dtype");
  at::Tensor out = at::empty({N, back.size(1)}, xs[0].options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "gaunt_fourier_fwd_cpu", [&] {
    fourier_impl<scalar_t>(xs, ws, wout, to_rows, to_grid, back_cols, back, out);
  });
  return out;
}

at::Tensor gaunt_direct_fwd_cpu(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                                const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout,
                                const at::Tensor& ii, const at::Tensor& jj, const at::Tensor& kk,
                                const at::Tensor& vals, int64_t n_out) {
  check_rows(x1, "x1");
  check_rows(x2, "x2");
  TORCH_CHECK(x1.size(0) == x2.size(0) && x1.scalar_type() == x2.scalar_type(),
              "gaunt_direct_fwd_cpu: x1 and x2 must have the same rows and dtype");
  TORCH_CHECK(ii.scalar_type() == at::kInt && jj.scalar_type() == at::kInt && kk.scalar_type() == at::kInt &&
                  ii.is_contiguous() && jj.is_contiguous() && kk.is_contiguous(),
              "gaunt_direct_fwd_cpu: indices must be contiguous int32");
  TORCH_CHECK(vals.scalar_type() == x1.scalar_type() && vals.is_contiguous() && vals.size(0) == ii.size(0),
              "gaunt_direct_fwd_cpu: vals must be contiguous (nnz,) in the inputs' dtype");
  lmax_of(n_out);
  at::Tensor out = at::empty({x1.size(0), n_out}, x1.options());
  if (x1.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "gaunt_direct_fwd_cpu",
                             [&] { direct_impl<scalar_t>(x1, x2, w1, w2, wout, ii, jj, kk, vals, out); });
  return out;
}

}  // namespace cpu
}  // namespace geoops
