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
// Direct route: a tile of 16 rows is transposed into coefficient-major buffers
// (16 lanes per coefficient, weights applied), and each output coefficient
// out[k] = sum over its nonzero Gaunt coefficients g_ijk of g * x1[i] * x2[j] is
// summed on all lanes in four register partial sums (direct_gather; the nonzeros
// come sorted by k).  The backward is the same loop (direct_tiles) over the same
// nonzeros sorted by i and by j: x1, x2 and g go to lanes once per tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "mkl_packed.h"  // OneMklThread

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

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

// The per-tile row loops of every kernel.  A tile is rows r0 .. r0+rows of an (N, n) row-major tensor.
// scale_rows: dst[r, c] = src[r, c] * w[r0 + r, l(c)] (src, dst: the tile's rows, may alias).
template <typename T>
void scale_rows(const T* src, int64_t n, int64_t r0, int64_t rows, const Weight& w, const int32_t* deg, T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* wr = static_cast<const T*>(w.ptr) + (r0 + r) * w.row_stride;
    for (int64_t c = 0; c < n; ++c) dst[r * n + c] = src[r * n + c] * wr[deg[c]];
  }
}

// rows_to_lanes: the tile into a lane buffer, lanes[pos(c) * W + r] = x[r0 + r, c] * w[r0 + r, l(c)] (pos = perm,
// or the identity when perm is null); lanes r >= rows are zeroed.  lanes_to_rows: the way back, into out's rows.
template <typename T>
void rows_to_lanes(const T* x, int64_t n, int64_t r0, int64_t rows, const Weight& w, const int32_t* deg,
                   const int64_t* perm, int64_t W, T* lanes) {
  if (rows < W) std::fill(lanes, lanes + n * W, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + (r0 + r) * n;
    const T* wr = w.ptr ? static_cast<const T*>(w.ptr) + (r0 + r) * w.row_stride : nullptr;
    for (int64_t c = 0; c < n; ++c) lanes[(perm ? perm[c] : c) * W + r] = wr ? xr[c] * wr[deg[c]] : xr[c];
  }
}

template <typename T>
void lanes_to_rows(const T* lanes, int64_t n, int64_t r0, int64_t rows, const Weight& w, const int32_t* deg,
                   const int64_t* perm, int64_t W, T* out) {
  for (int64_t r = 0; r < rows; ++r) {
    T* orow = out + (r0 + r) * n;
    const T* wr = w.ptr ? static_cast<const T*>(w.ptr) + (r0 + r) * w.row_stride : nullptr;
    for (int64_t c = 0; c < n; ++c) {
      const T v = lanes[(perm ? perm[c] : c) * W + r];
      orow[c] = wr ? v * wr[deg[c]] : v;
    }
  }
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
    // the tile GEMMs are small: MKL's own team for each (a team of one here is not an active region) only waits
    const mkl_packed::OneMklThread one_mkl_thread;
    std::vector<T> xbuf(tile * nmax), acc(tile * P), tmp(nu > 1 ? tile * P : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * tile;
      const int64_t rows = std::min(tile, N - r0);
      for (int64_t i = 0; i < nu; ++i) {
        const int64_t n = ns[i];
        const T* src = xp[i] + r0 * n;
        if (wp[i].ptr) {
          scale_rows<T>(src, n, r0, rows, wp[i], deg[i].data(), xbuf.data());
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
      if (wo.ptr) scale_rows<T>(orow, n_out, r0, rows, wo, dego.data(), orow);
    }
  }
}

// ---------------------------------------------------------------- separable kernel (grid and Fourier routes)
// A tile of VL rows sits side by side in the lanes of one lane vector per coefficient (GCC vector extensions).
// The vector width is chosen at compile time from the ISA (GEOOPS_GAUNT_VBYTES): with AVX-512, 64 bytes (VL = 16
// fp32, 8 fp64: one zmm register, 32 of them); otherwise 32 bytes (VL = 8 fp32, 4 fp64: one ymm register with
// AVX/AVX2, whose 16 registers then hold a block of PB = 8 accumulators, the broadcast and the B vector without
// spills; a pair of xmm on baseline x86-64).  A 64-byte vector on AVX2 was two ymm registers: the 8-accumulator
// blocks and the 16 x 16 transposes spilled (session 25).  The per-row arithmetic (each lane is one row) is the
// same at either width.  Rows <-> lanes go through VL x VL in-register transposes.  Every step is then a small
// dense matrix times a column of lane vectors, with a block of PB output vectors held in registers:
//   C[p * ldc] = sum_q A[p * lda + q] * B[q * ldb],   (A: scalars, B and C: lane vectors)
// (GEOOPS_GAUNT_VBYTES is defined in gaunt.h, so that geoops._C.gaunt_cpu_lanes reports the same width.)
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(GEOOPS_GAUNT_VBYTES)));
  typedef float Vu __attribute__((vector_size(GEOOPS_GAUNT_VBYTES), aligned(4)));
  typedef int32_t I __attribute__((vector_size(GEOOPS_GAUNT_VBYTES)));
  static constexpr int N = GEOOPS_GAUNT_VBYTES / 4;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(GEOOPS_GAUNT_VBYTES)));
  typedef double Vu __attribute__((vector_size(GEOOPS_GAUNT_VBYTES), aligned(8)));
  typedef int64_t I __attribute__((vector_size(GEOOPS_GAUNT_VBYTES)));
  static constexpr int N = GEOOPS_GAUNT_VBYTES / 8;
};

// The first cnt (<= N) elements of p as a vector (the rest zero) / stored back (AVX-512, AVX: masked moves; a
// partial vector built in memory would stall store forwarding).
#if !defined(__AVX512F__) && defined(__AVX__) && GEOOPS_GAUNT_VBYTES == 32
// AVX's masked moves take the mask as a vector (sign bit per element): the first cnt elements set.
template <typename T>
inline __m256i avx_part_mask(int cnt) {
  if constexpr (std::is_same<T, float>::value) {
    alignas(64) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - cnt));
  } else {
    alignas(64) static const int64_t m[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 4 - cnt));
  }
}
#endif
template <typename T>
inline typename Simd<T>::V load_part(const T* p, int cnt) {
  using V = typename Simd<T>::V;
  if (cnt == Simd<T>::N) return *reinterpret_cast<const typename Simd<T>::Vu*>(p);
#ifdef __AVX512F__
  if constexpr (std::is_same<T, float>::value)
    return (V)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << cnt) - 1), p);
  else
    return (V)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << cnt) - 1), p);
#elif defined(__AVX__) && GEOOPS_GAUNT_VBYTES == 32
  if constexpr (std::is_same<T, float>::value)
    return (V)_mm256_maskload_ps(p, avx_part_mask<T>(cnt));
  else
    return (V)_mm256_maskload_pd(p, avx_part_mask<T>(cnt));
#else
  V v = {};
  for (int k = 0; k < cnt; ++k) v[k] = p[k];
  return v;
#endif
}
template <typename T>
inline void store_part(T* p, const typename Simd<T>::V& v, int cnt) {
  if (cnt == Simd<T>::N) {
    *reinterpret_cast<typename Simd<T>::Vu*>(p) = v;
    return;
  }
#ifdef __AVX512F__
  if constexpr (std::is_same<T, float>::value)
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << cnt) - 1), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << cnt) - 1), (__m512d)v);
#elif defined(__AVX__) && GEOOPS_GAUNT_VBYTES == 32
  if constexpr (std::is_same<T, float>::value)
    _mm256_maskstore_ps(p, avx_part_mask<T>(cnt), (__m256)v);
  else
    _mm256_maskstore_pd(p, avx_part_mask<T>(cnt), (__m256d)v);
#else
  for (int k = 0; k < cnt; ++k) p[k] = v[k];
#endif
}

// In-place N x N transpose of r[0..N) (stage B swaps bit B of the row index with bit B of the column index).
template <typename T, int B>
inline void transpose_stage(typename Simd<T>::V* r) {
  using I = typename Simd<T>::I;
  constexpr int N = Simd<T>::N;
  I lo, hi;
  for (int k = 0; k < N; ++k) {
    lo[k] = (k & B) ? N + k - B : k;
    hi[k] = (k & B) ? N + k : k + B;
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    if (i & B) continue;
    const auto a = r[i], b = r[i + B];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + B] = __builtin_shuffle(a, b, hi);
  }
}
template <typename T>
inline void transpose(typename Simd<T>::V* r) {
  transpose_stage<T, 1>(r);
  transpose_stage<T, 2>(r);
  if constexpr (Simd<T>::N >= 8) transpose_stage<T, 4>(r);
  if constexpr (Simd<T>::N == 16) transpose_stage<T, 8>(r);
}

// Per-tile lane weights: wl[l] = (w[r0 + i, l])_i, or the shared row broadcast.
template <typename T>
void lane_weights(const Weight& w, int64_t L, int64_t r0, int64_t rows, typename Simd<T>::V* wl) {
  for (int64_t l = 0; l <= L; ++l) {
    typename Simd<T>::V v = {};
    for (int64_t i = 0; i < (w.row_stride ? rows : Simd<T>::N); ++i)
      v[i] = static_cast<const T*>(w.ptr)[(r0 + i) * w.row_stride + l];
    wl[l] = v;
  }
}

// rows -> lanes: lanes[perm[c]] = (x[r0 + i, c] * w[r0 + i, l(c)])_i; lanes of rows >= `rows` are zero.
template <typename T>
void rows_to_lanes_v(const T* x, int64_t n, int64_t r0, int64_t rows, const typename Simd<T>::V* wl,
                     const int32_t* deg, const int64_t* perm, typename Simd<T>::V* lanes) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  for (int64_t c0 = 0; c0 < n; c0 += N) {
    const int cnt = static_cast<int>(std::min<int64_t>(N, n - c0));
    V r[N];
    for (int i = 0; i < N; ++i) r[i] = i < rows ? load_part<T>(x + (r0 + i) * n + c0, cnt) : V{};
    transpose<T>(r);
    for (int k = 0; k < cnt; ++k) {
      const int64_t c = c0 + k;
      lanes[perm[c]] = wl ? r[k] * wl[deg[c]] : r[k];
    }
  }
}

// lanes -> rows: out[r0 + i, c] = lanes[perm[c]][i] * w[r0 + i, l(c)], rows i < `rows`.
template <typename T>
void lanes_to_rows_v(const typename Simd<T>::V* lanes, int64_t n, int64_t r0, int64_t rows,
                     const typename Simd<T>::V* wl, const int32_t* deg, const int64_t* perm, T* out) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  for (int64_t c0 = 0; c0 < n; c0 += N) {
    const int cnt = static_cast<int>(std::min<int64_t>(N, n - c0));
    V r[N];
    for (int k = 0; k < N; ++k) {
      if (k < cnt) {
        const int64_t c = c0 + k;
        r[k] = wl ? lanes[perm[c]] * wl[deg[c]] : lanes[perm[c]];
      } else {
        r[k] = V{};
      }
    }
    transpose<T>(r);
#if !defined(__AVX512F__)
    if (rows > N) __builtin_unreachable();  // a tile is at most N rows (tells -Warray-bounds about r[i])
#endif
    for (int i = 0; i < rows; ++i) store_part<T>(out + (r0 + i) * n + c0, r[i], cnt);
  }
}

// Per-degree sums of a tile in lanes, the weight gradients' per-row step: s[l] = sum over the coefficients c of
// degree l, ascending, of h[c] * x[c] (nv lane vectors per coefficient, at (perm ? perm[c] : c) * nv + q).  Each
// product is rounded before its add (no FMA contraction) and the sum starts from 0: the roundings and order of the
// unfused torch form (h * x).index_add(1, degree, .), so the same bits.
#if defined(__GNUC__) && !defined(__clang__)
#define GEOOPS_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define GEOOPS_NO_FP_CONTRACT
#endif
template <typename V>
GEOOPS_NO_FP_CONTRACT void degree_sums(const V* h, const V* x, const int64_t* perm, int64_t L, int nv, V* s) {
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
  for (int64_t l = 0; l <= L; ++l) {
    for (int q = 0; q < nv; ++q) {
      V acc = {};
      for (int64_t c = l * l; c < (l + 1) * (l + 1); ++c) {
        const int64_t p = (perm ? perm[c] : c) * nv + q;
        const V t = h[p] * x[p];
        acc = acc + t;
      }
      s[l * nv + q] = acc;
    }
  }
}

template <typename T, int PB>
inline void lmm_block(const T* A, int64_t lda, int64_t acs, int64_t K, const typename Simd<T>::V* B, int64_t ldb,
                      typename Simd<T>::V* C, int64_t ldc) {
  using V = typename Simd<T>::V;
  V acc[PB];
  {
    const V b = B[0];
#pragma GCC unroll 8
    for (int i = 0; i < PB; ++i) acc[i] = A[i * lda] * b;
  }
  for (int64_t q = 1; q < K; ++q) {
    const V b = B[q * ldb];
#pragma GCC unroll 8
    for (int i = 0; i < PB; ++i) acc[i] += A[i * lda + q * acs] * b;
  }
#pragma GCC unroll 8
  for (int i = 0; i < PB; ++i) C[i * ldc] = acc[i];
}

// C (M lane vectors, stride ldc) = A (M x K scalars, row stride lda, column stride acs) times B (K lane vectors,
// stride ldb), K >= 1.
template <typename T>
void lane_mm(const T* A, int64_t lda, int64_t M, int64_t K, const typename Simd<T>::V* B, int64_t ldb,
             typename Simd<T>::V* C, int64_t ldc, int64_t acs = 1) {
  int64_t p = 0;
  for (; p + 8 <= M; p += 8) lmm_block<T, 8>(A + p * lda, lda, acs, K, B, ldb, C + p * ldc, ldc);
  const T* a = A + p * lda;
  auto* c = C + p * ldc;
  switch (M - p) {
    case 7: lmm_block<T, 7>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 6: lmm_block<T, 6>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 5: lmm_block<T, 5>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 4: lmm_block<T, 4>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 3: lmm_block<T, 3>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 2: lmm_block<T, 2>(a, lda, acs, K, B, ldb, c, ldc); break;
    case 1: lmm_block<T, 1>(a, lda, acs, K, B, ldb, c, ldc); break;
    default: break;
  }
}

struct SepLayout {
  int64_t L = 0, n = 1, S = 1, G = 1;
  int64_t nae = 1, nao = 0, nbe = 0, nbo = 0;
  std::vector<int64_t> perm;     // coefficient l*l + l + m -> its lane-buffer row
  std::vector<int64_t> blk, pos;  // per signed m (index m + L): first lane-buffer row of the block, group slot
  std::vector<int64_t> col;       // per |m|: first table column (row of back) of the block
  explicit SepLayout(int64_t L_) : L(L_), n((L_ + 1) * (L_ + 1)), S((L_ + 1) * (L_ + 2) / 2), G(2 * L_ + 1) {
    nae = L / 2 + 1;
    nao = (L + 1) / 2;
    nbe = L / 2;
    nbo = (L + 1) / 2;
    perm.assign(n, 0);
    blk.assign(2 * L + 1, 0);
    pos.assign(2 * L + 1, 0);
    col.assign(L + 1, 0);
    int64_t row = 0, c0 = 0;
    for (int64_t am = 0; am <= L; ++am) {
      col[am] = c0;
      c0 += L + 1 - am;
      for (int64_t s = 1; s >= (am ? -1 : 1); s -= 2) {
        const int64_t m = s * am;
        blk[m + L] = row;
        for (int64_t l = am; l <= L; ++l) perm[l * l + l + m] = row++;
        pos[m + L] = m >= 0 ? (am % 2 == 0 ? am / 2 : nae + (am - 1) / 2)
                            : (am % 2 == 0 ? nae + nao + am / 2 - 1 : nae + nao + nbe + (am - 1) / 2);
      }
    }
  }
};

// Azimuth step of one polar row: the values at the na azimuths from g (the row's 2L+1 frequencies in group
// order), a quarter period at a time -- the four class sums at base azimuth q (tables azf) give the values at
// q, q + na/2, na - q and na/2 - q (two distinct points at q = 0 and q = na/4).  MUL: multiply them into `a`
// (a later factor) instead of storing them.
template <typename T, bool MUL>
void azimuth_to_grid(const typename Simd<T>::V* g, const SepLayout& ly, const T* azf, int64_t Q, int64_t D2,
                     int64_t na, typename Simd<T>::V* a) {
  using V = typename Simd<T>::V;
  const int64_t half = na / 2;
  const int64_t cnt[4] = {ly.nae, ly.nao, ly.nbe, ly.nbo};
  const V* grp[4] = {g, g + ly.nae, g + (ly.nae + ly.nao), g + (ly.nae + ly.nao + ly.nbe)};
  for (int64_t q = 0; q < Q; ++q) {
    V cs[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const T* t = azf + (c * Q + q) * D2;
      V s = {};
      for (int64_t e = 0; e < cnt[c]; ++e) s += t[e] * grp[c][e];
      cs[c] = s;
    }
    // u = ce + se, v = co + so, x = ce - se, y = co - so: q -> u + v, q + na/2 -> u - v, na - q -> x + y,
    // na/2 - q -> x - y
    const V u = cs[0] + cs[2], v = cs[1] + cs[3];
    V* p0 = a + q;
    V* p1 = a + (q + half);
    if (MUL) {
      *p0 *= u + v;
      *p1 *= u - v;
    } else {
      *p0 = u + v;
      *p1 = u - v;
    }
    if (!(q == 0 || 4 * q == na)) {
      const V x = cs[0] - cs[2], y = cs[1] - cs[3];
      V* p2 = a + (na - q);
      V* p3 = a + (half - q);
      if (MUL) {
        *p2 *= x + y;
        *p3 *= x - y;
      } else {
        *p2 = x + y;
        *p3 = x - y;
      }
    }
  }
}

// Shapes shared by every step of one separable call: n_theta polar rows (nh of them formed when the tables are
// mirrored about the equator, sym), na azimuths with Q = na/4 + 1 base azimuths, D2 frequency slots per class.
template <typename T>
struct SepGrid {
  int64_t nth = 0, nh = 0, Q = 0, D2 = 0, na = 0;
  bool sym = false;
  const T* af = nullptr;  // azf (4, Q, D2)
  const T* ab = nullptr;  // azb (4, D2, Q)
};

// Per-thread work buffers of the separable steps (sized for the largest degree of a call).
template <typename T>
struct SepWork {
  using V = typename Simd<T>::V;
  std::vector<V> xt, g, s, ot, wl, pe, po, pm;
  SepWork(const SepGrid<T>& sg, int64_t nmax, int64_t gmax, int64_t lmax)
      : xt(nmax), g(sg.nth * gmax), s(4 * sg.Q), ot(nmax), wl(lmax + 1), pe(sg.sym ? sg.nh : 0),
        po(sg.sym ? sg.nh : 0), pm(sg.sym ? 2 * sg.nh * gmax : 0) {}
};

// One factor of a tile to the grid: rows -> lanes (weighted), the polar step per m, the azimuth step per polar row.
// a: (nth, na) lane vectors; MUL: multiply the factor's values into a instead of storing them.
template <typename T, bool MUL>
void sep_to_grid(const T* x, const SepLayout& ly, const Weight& w, const int32_t* deg, const T* E, int64_t r0,
                 int64_t rows, const SepGrid<T>& sg, SepWork<T>& wk, typename Simd<T>::V* a) {
  using V = typename Simd<T>::V;
  const int64_t G = ly.G, nth = sg.nth, nh = sg.nh;
  // rows -> lanes (m-major), weighted
  if (w.ptr) lane_weights<T>(w, ly.L, r0, rows, wk.wl.data());
  rows_to_lanes_v<T>(x, ly.n, r0, rows, w.ptr ? wk.wl.data() : nullptr, deg, ly.perm.data(), wk.xt.data());
  // polar step: g[j, slot(m)] = sum_l evals[j, l | m] xt[l, m]
  for (int64_t m = -ly.L; m <= ly.L; ++m) {
    const int64_t am = m < 0 ? -m : m, K = ly.L + 1 - am;
    const V* xb = wk.xt.data() + ly.blk[m + ly.L];
    V* gm = wk.g.data() + ly.pos[m + ly.L];
    if (!sg.sym) {
      lane_mm<T>(E + ly.col[am], ly.S, nth, K, xb, 1, gm, G);
      continue;
    }
    // mirrored polar rows: Lambda_l|m|(pi - theta) = (-1)^(l+|m|) Lambda_l|m|(theta)
    lane_mm<T>(E + ly.col[am], ly.S, nh, (K + 1) / 2, xb, 2, wk.pe.data(), 1, 2);
    if (K > 1) lane_mm<T>(E + ly.col[am] + 1, ly.S, nh, K / 2, xb + 1, 2, wk.po.data(), 1, 2);
    for (int64_t j = 0; j < nh; ++j) {
      const V o = K > 1 ? wk.po[j] : V{};
      gm[j * G] = wk.pe[j] + o;
      if (j < nth / 2) gm[(nth - 1 - j) * G] = wk.pe[j] - o;
    }
  }
  // azimuth step, a quarter period at a time: f at q, q + na/2, na - q, na/2 - q
  for (int64_t j = 0; j < nth; ++j)
    azimuth_to_grid<T, MUL>(wk.g.data() + j * G, ly, sg.af, sg.Q, sg.D2, sg.na, a + j * sg.na);
}

// Grid values a (nth, na) of a tile back to coefficients of degrees <= lo.L (quadrature folded into azb and bk),
// in lanes wk.ot (at lo.perm), then lanes -> rows into op (weighted by wo) unless op is null.
template <typename T>
void sep_from_grid(const typename Simd<T>::V* acc, const SepLayout& lo, const T* bk, const Weight& wo,
                   const int32_t* dego, int64_t r0, int64_t rows, const SepGrid<T>& sg, SepWork<T>& wk, T* op) {
  using V = typename Simd<T>::V;
  const int64_t nth = sg.nth, nh = sg.nh, Q = sg.Q, D2 = sg.D2, na = sg.na, half = na / 2;
  V* s = wk.s.data();
  // back, azimuth: H[j, slot(m)] = sum_q azb[class, m, q] (class sums of h at the four images of q)
  const int64_t Go = lo.G;
  const int64_t cnt[4] = {lo.nae, lo.nao, lo.nbe, lo.nbo};
  for (int64_t j = 0; j < nth; ++j) {
    const V* aj = acc + j * na;
    for (int64_t q = 0; q < Q; ++q) {
      const V h0 = aj[q], h1 = aj[q + half], h2 = aj[(na - q) % na], h3 = aj[half - q];
      const V a = h0 + h1, b = h0 - h1, c = h2 + h3, d = h2 - h3;
      s[q] = a + c;
      s[Q + q] = b + d;
      s[2 * Q + q] = a - c;
      s[3 * Q + q] = b - d;
    }
    V* Hj = wk.g.data() + j * Go;
    int64_t off = 0;
    for (int c = 0; c < 4; ++c) {
      lane_mm<T>(sg.ab + c * D2 * Q, Q, cnt[c], Q, s + c * Q, 1, Hj + off, 1);
      off += cnt[c];
    }
  }
  // back, polar: ot[l, m] = sum_j back[l | m, j] H[j, slot(m)]
  if (!sg.sym) {
    for (int64_t m = -lo.L; m <= lo.L; ++m) {
      const int64_t am = m < 0 ? -m : m;
      lane_mm<T>(bk + lo.col[am] * nth, nth, lo.L + 1 - am, nth, wk.g.data() + lo.pos[m + lo.L], Go,
                 wk.ot.data() + lo.blk[m + lo.L], 1);
    }
  } else {
    // mirrored polar rows: sums (even l + |m|) and differences (odd) of H at j and nth - 1 - j
    V* P = wk.pm.data();
    V* M = wk.pm.data() + nh * Go;
    for (int64_t j = 0; j < nh; ++j) {
      const V* a = wk.g.data() + j * Go;
      const V* b = wk.g.data() + (nth - 1 - j) * Go;
      for (int64_t k = 0; k < Go; ++k) {
        const bool mid = (j == nth - 1 - j);
        P[j * Go + k] = mid ? a[k] : a[k] + b[k];
        M[j * Go + k] = mid ? a[k] : a[k] - b[k];
      }
    }
    for (int64_t m = -lo.L; m <= lo.L; ++m) {
      const int64_t am = m < 0 ? -m : m, K = lo.L + 1 - am;
      V* ob = wk.ot.data() + lo.blk[m + lo.L];
      lane_mm<T>(bk + lo.col[am] * nth, 2 * nth, (K + 1) / 2, nh, P + lo.pos[m + lo.L], Go, ob, 2);
      if (K > 1) lane_mm<T>(bk + (lo.col[am] + 1) * nth, 2 * nth, K / 2, nh, M + lo.pos[m + lo.L], Go, ob + 1, 2);
    }
  }
  // lanes -> rows, weighted (op null: the caller only reads the lanes wk.ot)
  if (!op) return;
  if (wo.ptr) lane_weights<T>(wo, lo.L, r0, rows, wk.wl.data());
  lanes_to_rows_v<T>(wk.ot.data(), lo.n, r0, rows, wo.ptr ? wk.wl.data() : nullptr, dego, lo.perm.data(), op);
}

template <typename T>
SepGrid<T> sep_grid(const at::Tensor& back, const at::Tensor& azf, const at::Tensor& azb, int64_t na, bool sym) {
  SepGrid<T> sg;
  sg.nth = back.size(1);
  sg.nh = (sg.nth + 1) / 2;
  sg.Q = azf.size(1);
  sg.D2 = azf.size(2);
  sg.na = na;
  sg.sym = sym;
  sg.af = azf.data_ptr<T>();
  sg.ab = azb.data_ptr<T>();
  return sg;
}

// The next tile's input rows (contiguous), into cache while this tile computes.
template <typename T>
void prefetch_next_tile(const std::vector<const T*>& xs, const std::vector<int64_t>& ns, int64_t r0, int64_t N) {
  constexpr int64_t W = Simd<T>::N;
  if (r0 + W >= N) return;
  const int64_t rn = std::min<int64_t>(W, N - r0 - W);
  for (size_t i = 0; i < xs.size(); ++i) {
    const char* p = reinterpret_cast<const char*>(xs[i] + (r0 + W) * ns[i]);
    const int64_t bytes = rn * ns[i] * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
  }
}

template <typename T>
void sep_impl(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
              const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals, const at::Tensor& back,
              const at::Tensor& azf, const at::Tensor& azb, int64_t na, bool sym, at::Tensor& out) {
  using V = typename Simd<T>::V;
  constexpr int64_t W = Simd<T>::N;
  const int64_t nu = static_cast<int64_t>(xs.size());
  const int64_t N = out.size(0);
  const SepGrid<T> sg = sep_grid<T>(back, azf, azb, na, sym);
  std::vector<SepLayout> lay;
  std::vector<Weight> wp(nu);
  std::vector<std::vector<int32_t>> deg(nu);
  std::vector<const T*> xp(nu);
  std::vector<int64_t> ns(nu);
  int64_t nmax = 1, gmax = 1, lmax = 0;
  for (int64_t i = 0; i < nu; ++i) {
    lay.emplace_back(lmax_of(xs[i].size(1)));
    wp[i] = weight_of<T>(ws[i], N, lay[i].L, "weight of a factor");
    deg[i] = degrees(lay[i].n);
    xp[i] = xs[i].data_ptr<T>();
    ns[i] = lay[i].n;
    nmax = std::max(nmax, lay[i].n);
    gmax = std::max(gmax, lay[i].G);
    lmax = std::max(lmax, lay[i].L);
  }
  const SepLayout lo(lmax_of(out.size(1)));
  const Weight wo = weight_of<T>(wout, N, lo.L, "weight_out");
  const std::vector<int32_t> dego = degrees(lo.n);
  lmax = std::max(lmax, lo.L);
  nmax = std::max(nmax, lo.n);
  gmax = std::max(gmax, lo.G);
  const T* bk = back.data_ptr<T>();
  T* op = out.data_ptr<T>();

  const int64_t ntiles = (N + W - 1) / W;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));
#pragma omp parallel num_threads(nthreads)
  {
    SepWork<T> wk(sg, nmax, gmax, lmax);
    std::vector<V> acc(sg.nth * na);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * W;
      const int64_t rows = std::min<int64_t>(W, N - r0);
      prefetch_next_tile<T>(xp, ns, r0, N);
      for (int64_t i = 0; i < nu; ++i) {
        const T* E = evals[i].data_ptr<T>();
        if (i == 0)
          sep_to_grid<T, false>(xp[i], lay[i], wp[i], deg[i].data(), E, r0, rows, sg, wk, acc.data());
        else
          sep_to_grid<T, true>(xp[i], lay[i], wp[i], deg[i].data(), E, r0, rows, sg, wk, acc.data());
      }
      sep_from_grid<T>(acc.data(), lo, bk, wo, dego.data(), r0, rows, sg, wk, op);
    }
  }
}

// Fused backward of the separable grid route (nu factors and the incoming gradient g share one grid: the
// backward products P_{<=L_k}[prod_{j != k} f_j * f(wout g)] have the forward's total degree).  Each tile takes
// the nu factors and wout * g to the grid once, then projects, for every wanted k, the product of the others
// and of f(wout g) (multiplied in the order of the unfused path: factors j != k ascending, then g) onto degrees
// <= L_k, weighted by owk[k] when given; and, if wanted, the raw forward product (no wout) onto degrees <= Lout.
// need[k] & 3: store that projection (outs[k]); need[k] & 4: store its per-row per-degree sums with the factor's
// unweighted rows (k < nu: sum_m h_k x_k, the gradient of w_k; k = nu: sum_m g raw, of wout) into sums[k].
template <typename T>
void sep_bwd_impl(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                  const at::Tensor& g, const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                  const std::vector<at::Tensor>& backs, const std::vector<c10::optional<at::Tensor>>& owk,
                  const std::vector<int64_t>& need, const at::Tensor& azf, const at::Tensor& azb, int64_t na,
                  bool sym, std::vector<at::Tensor>& outs, std::vector<at::Tensor>& sums) {
  using V = typename Simd<T>::V;
  constexpr int64_t W = Simd<T>::N;
  const int64_t nu = static_cast<int64_t>(xs.size());
  const int64_t N = g.size(0);
  const SepGrid<T> sg = sep_grid<T>(backs[0], azf, azb, na, sym);
  // inputs 0..nu-1: the factors; nu: g (weighted by wout)
  std::vector<SepLayout> lay;
  std::vector<Weight> wp(nu + 1), wk_out(nu + 1);
  std::vector<std::vector<int32_t>> deg(nu + 1);
  std::vector<const T*> xp(nu + 1);
  std::vector<int64_t> ns(nu + 1);
  int64_t nmax = 1, gmax = 1, lmax = 0;
  for (int64_t i = 0; i <= nu; ++i) {
    const at::Tensor& x = i < nu ? xs[i] : g;
    lay.emplace_back(lmax_of(x.size(1)));
    wp[i] = i < nu ? weight_of<T>(ws[i], N, lay[i].L, "weight of a factor") : weight_of<T>(wout, N, lay[i].L, "weight_out");
    if (i < nu) wk_out[i] = weight_of<T>(owk[i], N, lay[i].L, "weight of a gradient");
    deg[i] = degrees(lay[i].n);
    xp[i] = x.data_ptr<T>();
    ns[i] = lay[i].n;
    nmax = std::max(nmax, lay[i].n);
    gmax = std::max(gmax, lay[i].G);
    lmax = std::max(lmax, lay[i].L);
  }
  std::vector<T*> op(nu + 1, nullptr), sp(nu + 1, nullptr);
  for (int64_t k = 0; k <= nu; ++k) {
    if (need[k] & 3) op[k] = outs[k].data_ptr<T>();
    if (need[k] & 4) sp[k] = sums[k].data_ptr<T>();
  }
  std::vector<int64_t> ident(lmax + 1);
  for (int64_t l = 0; l <= lmax; ++l) ident[l] = l;
  const int64_t P = sg.nth * na;

  const int64_t ntiles = (N + W - 1) / W;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));
#pragma omp parallel num_threads(nthreads)
  {
    SepWork<T> wk(sg, nmax, gmax, lmax);
    std::vector<V> F((nu + 1) * P), acc(P), sl(lmax + 1);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * W;
      const int64_t rows = std::min<int64_t>(W, N - r0);
      prefetch_next_tile<T>(xp, ns, r0, N);
      for (int64_t i = 0; i <= nu; ++i)
        sep_to_grid<T, false>(xp[i], lay[i], wp[i], deg[i].data(), evals[i].data_ptr<T>(), r0, rows, sg, wk,
                              F.data() + i * P);
      for (int64_t k = 0; k <= nu; ++k) {
        if (!op[k] && !sp[k]) continue;
        // k < nu: prod_{j != k} F_j * F_g;  k == nu: prod_j F_j (the raw forward product)
        V* __restrict a = acc.data();
        const int64_t first = k == 0 ? 1 : 0;
        const int64_t last = k < nu ? nu : nu - 1;
        std::copy(F.data() + first * P, F.data() + (first + 1) * P, a);
        for (int64_t j = first + 1; j <= last; ++j) {
          if (j == k) continue;
          const V* __restrict b = F.data() + j * P;
          for (int64_t q = 0; q < P; ++q) a[q] *= b[q];
        }
        const int64_t kk = k < nu ? k : nu;  // output degree: L_k, or Lout (= g's degree) for the raw product
        const Weight none;
        sep_from_grid<T>(a, lay[kk], backs[k].data_ptr<T>(), k < nu ? wk_out[k] : none, deg[kk].data(), r0, rows,
                         sg, wk, op[k]);
        if (sp[k]) {
          // the weight gradient's per-row step: the unweighted rows (x_k, or g) into lanes at the layout of wk.ot
          // (wk.xt is free once the inputs are on the grid), per-degree sums of the products, lanes -> rows
          const SepLayout& ly = lay[kk];
          rows_to_lanes_v<T>(xp[kk], ly.n, r0, rows, nullptr, deg[kk].data(), ly.perm.data(), wk.xt.data());
          degree_sums<V>(wk.ot.data(), wk.xt.data(), ly.perm.data(), ly.L, 1, sl.data());
          lanes_to_rows_v<T>(sl.data(), ly.L + 1, r0, rows, nullptr, deg[kk].data(), ident.data(), sp[k]);
        }
      }
    }
  }
}

// Whether the polar rows of the tables are mirror images about the equator (row nth-1-j at pi - theta_j, as the
// Gauss-Legendre nodes of the grid route are): then Lambda_l|m| on row nth-1-j is (-1)^(l+|m|) times row j, in
// evals[i] (nth, S_i) and in back (S_out, nth), to round-off.  The torus rows of the FFT route are not.
template <typename T>
bool mirrored_tables(const std::vector<at::Tensor>& evals, const at::Tensor& back) {
  auto check = [](const T* tab, int64_t nth, int64_t L, int64_t sj, int64_t sk) {
    T scale = 0;
    const int64_t S = (L + 1) * (L + 2) / 2;
    for (int64_t j = 0; j < nth; ++j)
      for (int64_t k = 0; k < S; ++k) scale = std::max(scale, std::abs(tab[j * sj + k * sk]));
    const T tol = T(64) * std::numeric_limits<T>::epsilon() * scale;
    for (int64_t j = 0; j < nth / 2; ++j) {
      int64_t k = 0;
      for (int64_t am = 0; am <= L; ++am)
        for (int64_t l = am; l <= L; ++l, ++k) {
          const T sgn = ((l + am) % 2) ? T(-1) : T(1);
          if (std::abs(tab[j * sj + k * sk] - sgn * tab[(nth - 1 - j) * sj + k * sk]) > tol) return false;
        }
    }
    return true;
  };
  const int64_t nth = back.size(1);
  int64_t Lo = 0;
  while ((Lo + 1) * (Lo + 2) / 2 < back.size(0)) ++Lo;
  if (!check(back.data_ptr<T>(), nth, Lo, 1, nth)) return false;
  for (const at::Tensor& e : evals) {
    int64_t L = 0;
    while ((L + 1) * (L + 2) / 2 < e.size(1)) ++L;
    if (!check(e.data_ptr<T>(), nth, L, e.size(1), 1)) return false;
  }
  return true;
}

// Rows per tile of the direct route: one fp32 lane vector (16 with AVX-512, 8 with the 32-byte vectors).
constexpr int64_t kLanes = Simd<float>::N;
static_assert(kLanes == GEOOPS_GAUNT_LANES, "gaunt.h's GEOOPS_GAUNT_LANES is the direct route's tile");

// Per-thread lane buffers of the direct route and the rows <-> lanes moves of one tile.  fp32: a tile is one
// lane vector, so rows <-> lanes go through the in-register transposes of the separable kernel; fp64 (two
// vectors a tile): scalar transposes.
template <typename T>
struct DirectLanes {
  using V = typename Simd<T>::V;
  static constexpr bool vec = Simd<T>::N == kLanes;
  const int64_t* ident;
  std::vector<V> wl;
  DirectLanes(const int64_t* id, int64_t lmax) : ident(id), wl(vec ? lmax + 1 : 0) {}
  static int64_t vectors(int64_t n) { return (n * kLanes * static_cast<int64_t>(sizeof(T)) + sizeof(V) - 1) / sizeof(V); }
  // lanes[c] = x[r0 + r, c] * w[r0 + r, l(c)] for the tile's rows r (the other lanes zero)
  void load(const T* x, int64_t n, int64_t L, const Weight& w, const int32_t* deg, int64_t r0, int64_t rows,
            T* lanes) {
    if constexpr (vec) {
      if (w.ptr) lane_weights<T>(w, L, r0, rows, wl.data());
      rows_to_lanes_v<T>(x, n, r0, rows, w.ptr ? wl.data() : nullptr, deg, ident, reinterpret_cast<V*>(lanes));
    } else {
      rows_to_lanes<T>(x, n, r0, rows, w, deg, nullptr, kLanes, lanes);
    }
  }
  // out[r0 + r, c] = lanes[c][r] * w[r0 + r, l(c)]
  void store(const T* lanes, int64_t n, int64_t L, const Weight& w, const int32_t* deg, int64_t r0, int64_t rows,
             T* out) {
    if constexpr (vec) {
      if (w.ptr) lane_weights<T>(w, L, r0, rows, wl.data());
      lanes_to_rows_v<T>(reinterpret_cast<const V*>(lanes), n, r0, rows, w.ptr ? wl.data() : nullptr, deg, ident,
                         out);
    } else {
      lanes_to_rows<T>(lanes, n, r0, rows, w, deg, nullptr, kLanes, out);
    }
  }
};

// One output-major sparse list of the direct route (forward and backward): for output coefficient o, the nonzeros
// e = off[o] .. off[o+1] with the value v[e] and the lane-buffer offsets ia[e], ib[e] (coefficient * kLanes, in
// elements: unsigned, so the loop indexes without a sign extension or a shift) of the two inputs.
template <typename T>
struct GatherList {
  const int32_t* off = nullptr;
  std::vector<uint32_t> ia, ib;
  const T* v = nullptr;
  int64_t n = 0;  // outputs
};

// O[o] = sum_e v[e] * A[ia[e]] * B[ib[e]] on kLanes lanes, per output o.  The sum runs in four partial sums held
// in registers (nonzeros e0, e0+1, e0+2, e0+3 in turn, then ((s0 + s1) + (s2 + s3))): no store per nonzero and no
// chain of dependent adds through memory (the forward's former pair-major loop added each nonzero into its output
// in memory).  Fixed order: the same bits for any
// thread count or tiling.
template <typename T>
void direct_gather(const GatherList<T>& gl, const T* Ab, const T* Bb, T* Ob) {
  using V = typename Simd<T>::V;
  constexpr int NV = static_cast<int>(kLanes / Simd<T>::N);
  V* O = reinterpret_cast<V*>(Ob);
  for (int64_t o = 0; o < gl.n; ++o) {
    const int64_t e0 = gl.off[o], e1 = gl.off[o + 1];
    V s0[NV] = {}, s1[NV] = {}, s2[NV] = {}, s3[NV] = {};
    int64_t e = e0;
    const uint32_t* ia = gl.ia.data();
    const uint32_t* ib = gl.ib.data();
    auto term = [&](V* acc, int64_t f) {
      const V* ap = reinterpret_cast<const V*>(Ab + ia[f]);
      const V* bp = reinterpret_cast<const V*>(Bb + ib[f]);
      const T c = gl.v[f];
      for (int q = 0; q < NV; ++q) acc[q] += c * (ap[q] * bp[q]);
    };
    for (; e + 4 <= e1; e += 4) {
      term(s0, e);
      term(s1, e + 1);
      term(s2, e + 2);
      term(s3, e + 3);
    }
    if (e < e1) term(s0, e++);
    if (e < e1) term(s1, e++);
    if (e < e1) term(s2, e++);
    for (int q = 0; q < NV; ++q) O[o * NV + q] = (s0[q] + s1[q]) + (s2[q] + s3[q]);
  }
}

// A by-i (or by-j) list of the direct route cut into segments by the degree of g's coefficient k: within output
// o, the nonzeros regrouped (stably) by l(k), one segment per degree present.  For weight_out's gradient without
// the raw product (session 24): grad x1[i] = sum_l wout_l * seg(i, l) and sum_m g_lm raw_lm = sum_i (w1 x1)_i *
// seg(i, l), with seg(i, l) = sum_{nonzeros of i with l(k) = l} G (w2 x2)_j g_k (g unweighted); likewise by j.
template <typename T>
struct SegList {
  std::vector<int32_t> so;   // output o's segments: so[o] .. so[o+1]
  std::vector<int32_t> eo;   // segment s's nonzeros: eo[s] .. eo[s+1]
  std::vector<uint32_t> sl;  // segment s's degree times kLanes (offset into the per-degree lane buffers)
  std::vector<uint32_t> ia, ib;
  std::vector<T> v;
  int64_t n = 0;
};

template <typename T>
SegList<T> seg_list(const GatherList<T>& gl, const std::vector<int32_t>& gdeg, int64_t Lg) {
  SegList<T> sg;
  sg.n = gl.n;
  const int64_t nnz = gl.n ? gl.off[gl.n] : 0;
  sg.ia.reserve(nnz);
  sg.ib.reserve(nnz);
  sg.v.reserve(nnz);
  sg.so.push_back(0);
  sg.eo.push_back(0);
  for (int64_t o = 0; o < gl.n; ++o) {
    for (int64_t l = 0; l <= Lg; ++l) {
      const size_t before = sg.v.size();
      for (int64_t e = gl.off[o]; e < gl.off[o + 1]; ++e) {
        if (gdeg[gl.ib[e] / kLanes] != l) continue;
        sg.ia.push_back(gl.ia[e]);
        sg.ib.push_back(gl.ib[e]);
        sg.v.push_back(gl.v[e]);
      }
      if (sg.v.size() == before) continue;
      sg.eo.push_back(static_cast<int32_t>(sg.v.size()));
      sg.sl.push_back(static_cast<uint32_t>(l) * static_cast<uint32_t>(kLanes));
    }
    sg.so.push_back(static_cast<int32_t>(sg.sl.size()));
  }
  return sg;
}

// The segmented gather: O[o] = sum_l W[l] * seg(o, l) and S[l] += X[o] * seg(o, l), with seg(o, l) = sum_e v[e] *
// A[ia[e]] * G[ib[e]] over the segment (two register partial sums, nonzeros alternating).  W, S: (L+1) x kLanes
// lanes; X: the output side's weighted lanes.  Fixed order per row.
template <typename T>
void direct_gather_seg(const SegList<T>& sg, const T* Ab, const T* Gb, const T* Xb, const T* Wb, T* Ob, T* Sb) {
  using V = typename Simd<T>::V;
  constexpr int NV = static_cast<int>(kLanes / Simd<T>::N);
  V* O = reinterpret_cast<V*>(Ob);
  const uint32_t* ia = sg.ia.data();
  const uint32_t* ib = sg.ib.data();
  const T* vv = sg.v.data();
  for (int64_t o = 0; o < sg.n; ++o) {
    V acc[NV] = {};
    const V* xo = reinterpret_cast<const V*>(Xb + o * kLanes);
    for (int32_t s = sg.so[o]; s < sg.so[o + 1]; ++s) {
      V s0[NV] = {}, s1[NV] = {};
      int64_t e = sg.eo[s];
      const int64_t e1 = sg.eo[s + 1];
      auto term = [&](V* a, int64_t f) {
        const V* ap = reinterpret_cast<const V*>(Ab + ia[f]);
        const V* gp = reinterpret_cast<const V*>(Gb + ib[f]);
        const T c = vv[f];
        for (int q = 0; q < NV; ++q) a[q] += c * (ap[q] * gp[q]);
      };
      for (; e + 2 <= e1; e += 2) {
        term(s0, e);
        term(s1, e + 1);
      }
      if (e < e1) term(s0, e);
      const V* w = reinterpret_cast<const V*>(Wb + sg.sl[s]);
      V* S = reinterpret_cast<V*>(Sb + sg.sl[s]);
      for (int q = 0; q < NV; ++q) {
        const V t = s0[q] + s1[q];
        acc[q] += w[q] * t;
        S[q] += xo[q] * t;
      }
    }
    for (int q = 0; q < NV; ++q) O[o * NV + q] = acc[q];
  }
}

// One input or output of the direct route's per-output contraction: its rows x (N, n) (nullptr for an output
// that is not also an input), lmax, per-degree weight and the degree of each coefficient.
template <typename T>
struct DirectSide {
  const T* x = nullptr;
  int64_t n = 0, L = 0;
  Weight w;
  std::vector<int32_t> deg;
  DirectSide() = default;
  DirectSide(const T* xp, int64_t nc, Weight wt) : x(xp), n(nc), L(lmax_of(nc)), w(wt), deg(degrees(nc)) {}
};

// GatherList of one output-major list (off, ia, ib, vals) with n outputs.
template <typename T>
GatherList<T> gather_list(const at::Tensor& off, const at::Tensor& ia, const at::Tensor& ib, const at::Tensor& vals,
                          int64_t n) {
  GatherList<T> gl;
  const int64_t nnz = vals.size(0);
  const int32_t* pa = ia.data_ptr<int32_t>();
  const int32_t* pb = ib.data_ptr<int32_t>();
  gl.off = off.data_ptr<int32_t>();
  gl.ia.resize(nnz);
  gl.ib.resize(nnz);
  for (int64_t e = 0; e < nnz; ++e) {
    gl.ia[e] = static_cast<uint32_t>(pa[e]) * static_cast<uint32_t>(kLanes);
    gl.ib[e] = static_cast<uint32_t>(pb[e]) * static_cast<uint32_t>(kLanes);
  }
  gl.v = vals.data_ptr<T>();
  gl.n = n;
  return gl;
}

// The direct route's kernel, forward and backward alike (the three are the same contraction shape).  Sides 0, 1,
// 2 are x1, x2 and g (the forward's output).  Per tile of kLanes rows, the sides that some wanted output reads are
// moved into lanes once (weighted by side.w); then for each s with op[s] set, out_s = ow[s] * gl[s] over the
// other two sides (out_0[i] = sum_jk G x2_j g_k, out_1[j] = sum_ik G x1_i g_k, out_2[k] = sum_ij G x1_i x2_j:
// the forward), summed per output coefficient in registers (direct_gather).  With sp[s] set, also the per-row
// per-degree sums of out_s (unweighted) times side s's unweighted rows (sum_m h x: a weight gradient's per-row
// step) into sp[s] (N, L_s + 1).  Fixed order per row: the same bits for any thread count.
template <typename T>
void direct_tiles(int64_t N, const DirectSide<T> (&sd)[3], const GatherList<T> (&gl)[3], const Weight (&ow)[3],
                  T* const (&op)[3], T* const (&sp)[3]) {
  using V = typename Simd<T>::V;
  // the two lane inputs of output s (the other factor, then g; the product: x1, x2)
  const int src[3][2] = {{1, 2}, {0, 2}, {0, 1}};
  const int64_t nmax = std::max({sd[0].n, sd[1].n, sd[2].n});
  std::vector<int64_t> ident(nmax);
  for (size_t c = 0; c < ident.size(); ++c) ident[c] = static_cast<int64_t>(c);
  // weight_out's sums without the raw product (session 24): when a gradient side (x1, else x2) is formed
  // anyway, its pass runs segmented by g's degree (direct_gather_seg) with g unweighted and wout applied per
  // segment, and yields sum_m g raw per degree on the way; pass 2 is skipped unless the raw product is wanted.
  int seg = -1;
  if (sp[2] && !op[2]) seg = (op[0] || sp[0]) ? 0 : (op[1] || sp[1]) ? 1 : -1;
  bool used[3] = {false, false, false};
  bool any_sums = false;
  for (int s = 0; s < 3; ++s) {
    if (s == seg)
      used[s] = used[1 - s] = true;
    else if ((op[s] || sp[s]) && !(s == 2 && seg >= 0))
      used[src[s][0]] = used[src[s][1]] = true;
    any_sums = any_sums || sp[s];
  }
  SegList<T> sgl;
  if (seg >= 0) sgl = seg_list<T>(gl[seg], sd[2].deg, sd[2].L);
  const int64_t Lg = sd[2].L;

  const int64_t ntiles = (N + kLanes - 1) / kLanes;
  int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(ntiles)));
#pragma omp parallel num_threads(nthreads)
  {
    using DL = DirectLanes<T>;
    DL dln(ident.data(), std::max({sd[0].L, sd[1].L, sd[2].L}));
    std::vector<V> Iv[3], Ov(DL::vectors(nmax));
    T* Ib[3];
    for (int s = 0; s < 3; ++s) {
      Iv[s].resize(used[s] ? DL::vectors(sd[s].n) : 0);
      Ib[s] = reinterpret_cast<T*>(Iv[s].data());
    }
    T* Ob = reinterpret_cast<T*>(Ov.data());
    // sums: a side's unweighted rows in lanes, its per-degree sums
    std::vector<V> Xv(any_sums ? DL::vectors(nmax) : 0), Sv(any_sums ? DL::vectors(nmax) : 0);
    constexpr int NV = static_cast<int>(kLanes / Simd<T>::N);
    // segmented pass: g unweighted, wout per degree, wout's per-degree sums (lanes)
    std::vector<V> Gv(seg >= 0 ? DL::vectors(sd[2].n) : 0), Wv(seg >= 0 ? DL::vectors(Lg + 1) : 0),
        Qv(seg >= 0 ? DL::vectors(Lg + 1) : 0);
    T* Gb = reinterpret_cast<T*>(Gv.data());
    T* Wb = reinterpret_cast<T*>(Wv.data());
    T* Qb = reinterpret_cast<T*>(Qv.data());
    // a factor whose weight gets a gradient: its rows into lanes once, unweighted (Uv[s], for the sums), the
    // weighted lanes as their product with the weight's lanes (the weighted load's single rounded multiply)
    bool keepu[3] = {false, false, false};
    std::vector<V> Uv[3], Lw(DL::vectors(std::max({sd[0].L, sd[1].L, sd[2].L}) + 1));
    for (int s = 0; s < 2; ++s) {
      keepu[s] = used[s] && sp[s];
      if (keepu[s]) Uv[s].resize(DL::vectors(sd[s].n));
    }
    // lanes of a per-degree weight: out[l][r] = w[r0 + r, l] (1 without a weight; 0 past the tile's rows)
    auto weight_lanes = [&](const Weight& w, int64_t L, int64_t r0, int64_t rows, T* out) {
      for (int64_t l = 0; l <= L; ++l)
        for (int64_t r = 0; r < kLanes; ++r)
          out[l * kLanes + r] = !w.ptr ? T(1)
                                : (w.row_stride == 0 || r < rows)
                                    ? static_cast<const T*>(w.ptr)[(r0 + r) * w.row_stride + l]
                                    : T(0);
    };
    auto times_weight = [&](const T* u, const T* wl, const int32_t* deg, int64_t n, T* out) {
      for (int64_t c = 0; c < n; ++c) {
        const V* uv = reinterpret_cast<const V*>(u + c * kLanes);
        const V* wv = reinterpret_cast<const V*>(wl + deg[c] * kLanes);
        V* ov = reinterpret_cast<V*>(out + c * kLanes);
        for (int q = 0; q < NV; ++q) ov[q] = uv[q] * wv[q];
      }
    };
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * kLanes;
      const int64_t rows = std::min(kLanes, N - r0);
      for (int s = 0; s < 3; ++s) {
        if (!used[s] || (s == 2 && seg >= 0)) continue;
        if (keepu[s]) {
          T* Ub = reinterpret_cast<T*>(Uv[s].data());
          dln.load(sd[s].x, sd[s].n, sd[s].L, Weight(), sd[s].deg.data(), r0, rows, Ub);
          if (sd[s].w.ptr) {
            T* Lb = reinterpret_cast<T*>(Lw.data());
            weight_lanes(sd[s].w, sd[s].L, r0, rows, Lb);
            times_weight(Ub, Lb, sd[s].deg.data(), sd[s].n, Ib[s]);
          } else {
            std::copy(Ub, Ub + sd[s].n * kLanes, Ib[s]);
          }
        } else {
          dln.load(sd[s].x, sd[s].n, sd[s].L, sd[s].w, sd[s].deg.data(), r0, rows, Ib[s]);
        }
      }
      if (seg >= 0) {
        // g once into lanes (unweighted); wout * g, where the other gradient's pass reads it, as the lane
        // product (the same single rounded multiply as the weighted load: the same bits)
        dln.load(sd[2].x, sd[2].n, sd[2].L, Weight(), sd[2].deg.data(), r0, rows, Gb);
        weight_lanes(sd[2].w, Lg, r0, rows, Wb);
        if (used[2]) times_weight(Gb, Wb, sd[2].deg.data(), sd[2].n, Ib[2]);
        std::fill(Qb, Qb + (Lg + 1) * kLanes, T(0));
      }
      for (int s = 0; s < 3; ++s) {
        if (!op[s] && !sp[s]) continue;
        if (s == 2 && seg >= 0) {
          dln.store(Qb, Lg + 1, Lg, Weight(), sd[2].deg.data(), r0, rows, sp[2]);
          continue;
        }
        if (s == seg)
          direct_gather_seg<T>(sgl, Ib[1 - s], Gb, Ib[s], Wb, Ob, Qb);
        else
          direct_gather<T>(gl[s], Ib[src[s][0]], Ib[src[s][1]], Ob);
        if (op[s]) dln.store(Ob, sd[s].n, sd[s].L, ow[s], sd[s].deg.data(), r0, rows, op[s]);
        if (sp[s]) {
          T* Xb = reinterpret_cast<T*>(Xv.data());
          T* Sb = reinterpret_cast<T*>(Sv.data());
          if (!keepu[s]) dln.load(sd[s].x, sd[s].n, sd[s].L, Weight(), sd[s].deg.data(), r0, rows, Xb);
          degree_sums<V>(Ov.data(), keepu[s] ? Uv[s].data() : Xv.data(), nullptr, sd[s].L, NV, Sv.data());
          dln.store(Sb, sd[s].L + 1, sd[s].L, Weight(), sd[s].deg.data(), r0, rows, sp[s]);
        }
      }
    }
  }
}

// Forward of the direct route: out = wout * sum_ij G (w1 x1)_i (w2 x2)_j from the by-k list (direct_tiles, s = 2).
template <typename T>
void direct_impl(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                 const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout,
                 const std::vector<at::Tensor>& list, at::Tensor& out) {
  const int64_t N = out.size(0), n_out = out.size(1);
  const DirectSide<T> sd[3] = {
      DirectSide<T>(x1.data_ptr<T>(), x1.size(1), weight_of<T>(w1, N, lmax_of(x1.size(1)), "weight1")),
      DirectSide<T>(x2.data_ptr<T>(), x2.size(1), weight_of<T>(w2, N, lmax_of(x2.size(1)), "weight2")),
      DirectSide<T>(nullptr, n_out, Weight())};
  const GatherList<T> gl[3] = {GatherList<T>(), GatherList<T>(),
                               gather_list<T>(list[0], list[1], list[2], list[3], n_out)};
  const Weight ow[3] = {Weight(), Weight(), weight_of<T>(wout, N, sd[2].L, "weight_out")};
  T* const op[3] = {nullptr, nullptr, out.data_ptr<T>()};
  T* const sp[3] = {nullptr, nullptr, nullptr};
  direct_tiles<T>(N, sd, gl, ow, op, sp);
}

// Fused first-order backward of the direct route (binary): x1 (weighted by w1), x2 (by w2) and g (by wout) as
// the three sides of direct_tiles; out_0 weighted by owk[0], out_1 by owk[1], the raw product out_2 not (no wout),
// each where need[s] & 3; where need[s] & 4, the per-row per-degree sums of out_s (unweighted) times side s's rows.
template <typename T>
void direct_bwd_impl(const at::Tensor& x1, const at::Tensor& x2, const std::vector<c10::optional<at::Tensor>>& ws,
                     const at::Tensor& g, const c10::optional<at::Tensor>& wout,
                     const std::vector<c10::optional<at::Tensor>>& owk, const std::vector<at::Tensor>& lists,
                     const std::vector<int64_t>& need, std::vector<at::Tensor>& outs, std::vector<at::Tensor>& sums) {
  const int64_t N = g.size(0);
  const at::Tensor* in[3] = {&x1, &x2, &g};
  DirectSide<T> sd[3];
  GatherList<T> gl[3];
  Weight ow[3];
  T* op[3] = {nullptr, nullptr, nullptr};
  T* sp[3] = {nullptr, nullptr, nullptr};
  for (int s = 0; s < 3; ++s) {
    const int64_t n = in[s]->size(1);
    sd[s] = DirectSide<T>(in[s]->data_ptr<T>(), n,
                          weight_of<T>(s < 2 ? ws[s] : wout, N, lmax_of(n), s < 2 ? "weight of a factor" : "weight_out"));
    if (s < 2) ow[s] = weight_of<T>(owk[s], N, sd[s].L, "weight of a gradient");
    if (need[s] & 3) op[s] = outs[s].data_ptr<T>();
    if (need[s] & 4) sp[s] = sums[s].data_ptr<T>();
    if (need[s]) gl[s] = gather_list<T>(lists[4 * s], lists[4 * s + 1], lists[4 * s + 2], lists[4 * s + 3], n);
  }
  direct_tiles<T>(N, sd, gl, ow, op, sp);
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "gaunt: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "gaunt: ", name, " must be a contiguous (N, n) tensor, got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "gaunt: ", name,
              " must be float32 or float64");
}

// An output-major list (off (n + 1,), ia, ib (nnz,) int32 in [0, na), [0, nb), vals (nnz,) of dtype dt).
void check_gather_list(const std::vector<at::Tensor>& l, int64_t n, int64_t na, int64_t nb, at::ScalarType dt,
                       const char* who, int s) {
  const at::Tensor &off = l[0], &ia = l[1], &ib = l[2], &v = l[3];
  for (const at::Tensor* t : {&off, &ia, &ib})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kInt && t->is_contiguous() && t->dim() == 1, who,
                ": offsets and indices must be contiguous int32 CPU vectors");
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == dt && v.is_contiguous() && v.dim() == 1 &&
                  ia.size(0) == v.size(0) && ib.size(0) == v.size(0) && off.size(0) == n + 1,
              who, ": list ", s, " must be off (n_out + 1,), ia, ib, vals (nnz,) in the inputs' dtype");
  const int32_t* po = off.data_ptr<int32_t>();
  bool ok = po[0] == 0 && po[n] == v.size(0);
  for (int64_t o = 0; o < n; ++o) ok = ok && po[o] <= po[o + 1];
  const int32_t* pa = ia.data_ptr<int32_t>();
  const int32_t* pb = ib.data_ptr<int32_t>();
  for (int64_t e = 0; e < v.size(0); ++e) ok = ok && pa[e] >= 0 && pa[e] < na && pb[e] >= 0 && pb[e] < nb;
  TORCH_CHECK(ok, who, ": list ", s, " has offsets or indices out of range");
}


// The fused backwards' outputs by need code (0, 1 or 2, plus 4): output k of n[k] coefficients gets its projection
// (N, n[k]) where need[k] & 3 and its per-row per-degree sums (N, L_k + 1) where need[k] & 4.
void alloc_bwd_outputs(const std::vector<int64_t>& need, const std::vector<int64_t>& n, int64_t N,
                       const at::TensorOptions& opt, const char* who, std::vector<at::Tensor>& outs,
                       std::vector<at::Tensor>& sums) {
  outs.assign(need.size(), at::Tensor());
  sums.assign(need.size(), at::Tensor());
  for (size_t k = 0; k < need.size(); ++k) {
    TORCH_CHECK(need[k] >= 0 && need[k] <= 6 && (need[k] & 3) != 3, who, ": need[k] must be 0, 1 or 2 plus 4");
    if (need[k] & 3) outs[k] = at::empty({N, n[k]}, opt);
    if (need[k] & 4) sums[k] = at::empty({N, lmax_of(n[k]) + 1}, opt);
  }
}

// What a fused backward returns: for k ascending, the projection then the sums, where wanted.
std::vector<at::Tensor> bwd_results(const std::vector<int64_t>& need, const std::vector<at::Tensor>& outs,
                                    const std::vector<at::Tensor>& sums) {
  std::vector<at::Tensor> res;
  for (size_t k = 0; k < need.size(); ++k) {
    if (need[k] & 3) res.push_back(outs[k]);
    if (need[k] & 4) res.push_back(sums[k]);
  }
  return res;
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

at::Tensor gaunt_sep_fwd_cpu(const std::vector<at::Tensor>& xs, const std::vector<c10::optional<at::Tensor>>& ws,
                             const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                             const at::Tensor& back, const at::Tensor& azf, const at::Tensor& azb, int64_t na) {
  TORCH_CHECK(!xs.empty() && xs.size() == evals.size() && xs.size() == ws.size(),
              "gaunt_sep_fwd_cpu: xs, ws and evals must be non-empty lists of one length");
  check_rows(back, "back");
  check_rows(azf.view({azf.size(0) * azf.size(1), -1}), "azf");
  check_rows(azb.view({azb.size(0) * azb.size(1), -1}), "azb");
  const int64_t N = xs[0].size(0), nth = back.size(1);
  int64_t Lout = 0;
  while ((Lout + 1) * (Lout + 2) / 2 < back.size(0)) ++Lout;
  TORCH_CHECK((Lout + 1) * (Lout + 2) / 2 == back.size(0), "gaunt_sep_fwd_cpu: back must have (Lout+1)(Lout+2)/2 rows");
  TORCH_CHECK(na > 0 && na % 4 == 0, "gaunt_sep_fwd_cpu: na must be a positive multiple of 4");
  int64_t D = Lout;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_rows(xs[i], "a factor");
    check_rows(evals[i], "an evaluation table");
    const int64_t L = lmax_of(xs[i].size(1));
    D = std::max(D, L);
    TORCH_CHECK(xs[i].size(0) == N && xs[i].scalar_type() == xs[0].scalar_type() &&
                    evals[i].scalar_type() == xs[0].scalar_type(),
                "gaunt_sep_fwd_cpu: factors and tables must share rows and dtype");
    TORCH_CHECK(evals[i].size(0) == nth && evals[i].size(1) == (L + 1) * (L + 2) / 2,
                "gaunt_sep_fwd_cpu: evals[i] must be (n_theta, (L_i+1)(L_i+2)/2)");
  }
  TORCH_CHECK(azf.dim() == 3 && azf.size(0) == 4 && azf.size(1) == na / 4 + 1 && azf.size(2) >= D / 2 + 1 &&
                  azb.dim() == 3 && azb.size(0) == 4 && azb.size(1) == azf.size(2) && azb.size(2) == azf.size(1),
              "gaunt_sep_fwd_cpu: azf must be (4, na/4+1, >= D/2+1) and azb its (4, ., na/4+1) transpose");
  TORCH_CHECK(back.scalar_type() == xs[0].scalar_type() && azf.scalar_type() == xs[0].scalar_type() &&
                  azb.scalar_type() == xs[0].scalar_type(),
              "gaunt_sep_fwd_cpu: tables must have the factors' dtype");
  at::Tensor out = at::empty({N, (Lout + 1) * (Lout + 1)}, xs[0].options());
  if (N == 0) return out;
  if (xs[0].scalar_type() == at::kFloat) {
    sep_impl<float>(xs, ws, wout, evals, back, azf, azb, na, mirrored_tables<float>(evals, back), out);
  } else {
    TORCH_CHECK(xs[0].scalar_type() == at::kDouble, "gaunt_sep_fwd_cpu: float32 or float64 expected");
    sep_impl<double>(xs, ws, wout, evals, back, azf, azb, na, mirrored_tables<double>(evals, back), out);
  }
  return out;
}

std::vector<at::Tensor> gaunt_sep_bwd_cpu(const std::vector<at::Tensor>& xs,
                                          const std::vector<c10::optional<at::Tensor>>& ws, const at::Tensor& g,
                                          const c10::optional<at::Tensor>& wout, const std::vector<at::Tensor>& evals,
                                          const std::vector<at::Tensor>& backs,
                                          const std::vector<c10::optional<at::Tensor>>& owk,
                                          const std::vector<int64_t>& need, const at::Tensor& azf,
                                          const at::Tensor& azb, int64_t na) {
  const size_t nu = xs.size();
  TORCH_CHECK(nu >= 1 && ws.size() == nu && owk.size() == nu && evals.size() == nu + 1 && backs.size() == nu + 1 &&
                  need.size() == nu + 1,
              "gaunt_sep_bwd_cpu: xs, ws, owk (nu) and evals, backs, need (nu + 1) must be lists of matching lengths");
  check_rows(g, "g");
  check_rows(azf.view({azf.size(0) * azf.size(1), -1}), "azf");
  check_rows(azb.view({azb.size(0) * azb.size(1), -1}), "azb");
  TORCH_CHECK(na > 0 && na % 4 == 0, "gaunt_sep_bwd_cpu: na must be a positive multiple of 4");
  const int64_t N = g.size(0), nth = backs[0].size(1);
  const auto dt = g.scalar_type();
  int64_t D = 0;
  for (size_t i = 0; i <= nu; ++i) {
    const at::Tensor& x = i < nu ? xs[i] : g;
    if (i < nu) check_rows(x, "a factor");
    check_rows(evals[i], "an evaluation table");
    check_rows(backs[i], "a projection table");
    const int64_t L = lmax_of(x.size(1));
    D = std::max(D, L);
    TORCH_CHECK(x.size(0) == N && x.scalar_type() == dt && evals[i].scalar_type() == dt &&
                    backs[i].scalar_type() == dt,
                "gaunt_sep_bwd_cpu: factors, g and tables must share rows and dtype");
    TORCH_CHECK(evals[i].size(0) == nth && evals[i].size(1) == (L + 1) * (L + 2) / 2 && backs[i].size(1) == nth &&
                    backs[i].size(0) == (L + 1) * (L + 2) / 2,
                "gaunt_sep_bwd_cpu: evals[i] must be (n_theta, S_i) and backs[i] (S_i, n_theta), S_i = (L_i+1)(L_i+2)/2");
  }
  TORCH_CHECK(azf.dim() == 3 && azf.size(0) == 4 && azf.size(1) == na / 4 + 1 && azf.size(2) >= D / 2 + 1 &&
                  azb.dim() == 3 && azb.size(0) == 4 && azb.size(1) == azf.size(2) && azb.size(2) == azf.size(1) &&
                  azf.scalar_type() == dt && azb.scalar_type() == dt,
              "gaunt_sep_bwd_cpu: azf must be (4, na/4+1, >= D/2+1) and azb its (4, ., na/4+1) transpose");
  std::vector<int64_t> n(nu + 1);
  for (size_t k = 0; k <= nu; ++k) n[k] = k < nu ? xs[k].size(1) : g.size(1);
  std::vector<at::Tensor> outs, sums;
  alloc_bwd_outputs(need, n, N, g.options(), "gaunt_sep_bwd_cpu", outs, sums);
  if (N > 0) {
    bool sym = true;
    if (dt == at::kFloat) {
      for (const at::Tensor& b : backs) sym = sym && mirrored_tables<float>(evals, b);
      sep_bwd_impl<float>(xs, ws, g, wout, evals, backs, owk, need, azf, azb, na, sym, outs, sums);
    } else {
      TORCH_CHECK(dt == at::kDouble, "gaunt_sep_bwd_cpu: float32 or float64 expected");
      for (const at::Tensor& b : backs) sym = sym && mirrored_tables<double>(evals, b);
      sep_bwd_impl<double>(xs, ws, g, wout, evals, backs, owk, need, azf, azb, na, sym, outs, sums);
    }
  }
  return bwd_results(need, outs, sums);
}

at::Tensor gaunt_direct_fwd_cpu(const at::Tensor& x1, const at::Tensor& x2, const c10::optional<at::Tensor>& w1,
                                const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& wout,
                                const std::vector<at::Tensor>& list, int64_t n_out) {
  check_rows(x1, "x1");
  check_rows(x2, "x2");
  TORCH_CHECK(x1.size(0) == x2.size(0) && x1.scalar_type() == x2.scalar_type(),
              "gaunt_direct_fwd_cpu: x1 and x2 must have the same rows and dtype");
  TORCH_CHECK(list.size() == 4, "gaunt_direct_fwd_cpu: list (off, ia, ib, vals) expected");
  lmax_of(n_out);
  check_gather_list(list, n_out, x1.size(1), x2.size(1), x1.scalar_type(), "gaunt_direct_fwd_cpu", 0);
  at::Tensor out = at::empty({x1.size(0), n_out}, x1.options());
  if (x1.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "gaunt_direct_fwd_cpu",
                             [&] { direct_impl<scalar_t>(x1, x2, w1, w2, wout, list, out); });
  return out;
}

std::vector<at::Tensor> gaunt_direct_bwd_cpu(const at::Tensor& x1, const at::Tensor& x2,
                                             const std::vector<c10::optional<at::Tensor>>& ws, const at::Tensor& g,
                                             const c10::optional<at::Tensor>& wout,
                                             const std::vector<c10::optional<at::Tensor>>& owk,
                                             const std::vector<at::Tensor>& lists, const std::vector<int64_t>& need) {
  check_rows(x1, "x1");
  check_rows(x2, "x2");
  check_rows(g, "g");
  const auto dt = g.scalar_type();
  const int64_t N = g.size(0);
  TORCH_CHECK(x1.size(0) == N && x2.size(0) == N && x1.scalar_type() == dt && x2.scalar_type() == dt,
              "gaunt_direct_bwd_cpu: x1, x2 and g must have the same rows and dtype");
  TORCH_CHECK(ws.size() == 2 && owk.size() == 2 && need.size() == 3 && lists.size() == 12,
              "gaunt_direct_bwd_cpu: ws, owk (2), need (3) and lists (3 x (off, ia, ib, vals)) expected");
  // list s (output s, reading inputs src[s]): off (n_s + 1,), ia, ib (nnz,) int32 in range, vals (nnz,)
  const int64_t n[3] = {x1.size(1), x2.size(1), g.size(1)};
  const int src[3][2] = {{1, 2}, {0, 2}, {0, 1}};
  for (int s = 0; s < 3; ++s) {
    lmax_of(n[s]);
    check_gather_list(std::vector<at::Tensor>(lists.begin() + 4 * s, lists.begin() + 4 * s + 4), n[s], n[src[s][0]], n[src[s][1]], dt,
                      "gaunt_direct_bwd_cpu", s);
  }
  std::vector<at::Tensor> outs, sums;
  alloc_bwd_outputs(need, {n[0], n[1], n[2]}, N, g.options(), "gaunt_direct_bwd_cpu", outs, sums);
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "gaunt_direct_bwd_cpu",
                               [&] { direct_bwd_impl<scalar_t>(x1, x2, ws, g, wout, owk, lists, need, outs, sums); });
  }
  return bwd_results(need, outs, sums);
}

}  // namespace cpu
}  // namespace geoops
