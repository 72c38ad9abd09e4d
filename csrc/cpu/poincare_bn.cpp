// The Poincaré midpoint batch norm on the CPU (geoops/poincare.py's batch_norm / batch_norm2d, BnLayerFn): the
// midpoint sums, the row op y = project(expmap_b(u M)), the training layer's folded logmap_m, the whole training
// layer in one call each way (transport, gM's contractions), the running statistics' update.  Per-row scalars in
// double with the kappa-stereographic row math of geoops/stereo_math.h (k = -c), rows on SIMD lanes at D <= 16,
// fixed row chunks (poincare_rows.h).  (Until session 24 in poincare_layers.cpp with the ReLU.)
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "poincare.h"
#include "poincare_paths.h"
#include "poincare_gemm.h"
#include "poincare_rows.h"
#include "knobs.h"

#include "geoops/stereo_math.h"
#include "vec_math.h"
#include "vec_math_inl.h"
#include "stereographic_rows_f32.h"  // cols16: the tiles of 16 float rows (AVX-512)

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {

using namespace prows;  // grain, chunk_rows, for_row_chunks, Partials, check_rows, the dispatch helpers

namespace {

// ---------------------------------------------------------------- rows on lanes (the batch norm's row sums)
// The batch norm's per-row sums (midpoint, logmap_m, the row op, forward and backward) on SIMD lanes of rows at D <=
// kBnLaneMaxD, as one `omp simd` reduction per row above (GEOOPS_POINCARE_BN_LANES=0, read per call, forces the
// per-row path at every D, so that the tests compare the two).  On lanes: one row per lane of a vector of doubles (8
// rows per AVX-512 vector), column d of those rows gathered into one vector, each sum accumulated lane by lane in
// column order: no horizontal sum per row (GCC spilled the per-row reductions' lanes and summed them serially) and a
// fixed order of every sum, so two calls on the same data agree bit for bit whatever the buffers' alignment.
constexpr int64_t kBnLaneMaxD = 16;
inline bool bn_lanes(int64_t D) { return D <= kBnLaneMaxD && !knobs::off("GEOOPS_POINCARE_BN_LANES"); }

// Lane l (< cnt) <-> element d of row l of the rows at p (row stride D); lanes >= cnt load as 0 and are not
// stored.  AVX-512 / AVX2: masked gathers (and AVX-512 scatters); otherwise element by element.
template <typename T>
struct Cols {
  using Vec = vecmath::Vec;
  static constexpr int L = Vec::size();
  int64_t D;
  int cnt;
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(L == 8, "AVX-512 lanes of doubles");
  __m256i idx;
  __mmask8 mask;
  Cols(int64_t D_, int64_t cnt_) : D(D_), cnt(int(cnt_)) {
    idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(D)));
    mask = __mmask8((1u << cnt) - 1u);
  }
  Vec load(const T* p) const {
    if constexpr (std::is_same_v<T, float>)
      return Vec(_mm512_cvtps_pd(_mm256_mmask_i32gather_ps(_mm256_setzero_ps(), mask, idx, p, 4)));
    else
      return Vec(_mm512_mask_i32gather_pd(_mm512_setzero_pd(), mask, idx, p, 8));
  }
  void store(T* p, const Vec& v) const {
    if constexpr (std::is_same_v<T, float>)
      _mm256_mask_i32scatter_ps(p, mask, idx, _mm512_cvtpd_ps(v), 4);
    else
      _mm512_mask_i32scatter_pd(p, mask, idx, v, 8);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(L == 4, "AVX2 lanes of doubles");
  __m128i idx, mf;
  __m256i md;
  Cols(int64_t D_, int64_t cnt_) : D(D_), cnt(int(cnt_)) {
    idx = _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(int(D)));
    const __m128i on = _mm_cmpgt_epi32(_mm_set1_epi32(cnt), _mm_setr_epi32(0, 1, 2, 3));
    mf = on;
    md = _mm256_cvtepi32_epi64(on);
  }
  Vec load(const T* p) const {
    if constexpr (std::is_same_v<T, float>)
      return Vec(_mm256_cvtps_pd(_mm_mask_i32gather_ps(_mm_setzero_ps(), p, idx, _mm_castsi128_ps(mf), 4)));
    else
      return Vec(_mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, idx, _mm256_castsi256_pd(md), 8));
  }
  void store(T* p, const Vec& v) const {
    alignas(64) double t[L];
    v.store(t);
    for (int l = 0; l < cnt; ++l) p[l * D] = T(t[l]);
  }
#else
  Cols(int64_t D_, int64_t cnt_) : D(D_), cnt(int(cnt_)) {}
  Vec load(const T* p) const {
    alignas(64) double t[L] = {};
    for (int l = 0; l < cnt; ++l) t[l] = double(p[l * D]);
    return Vec::loadu(t);
  }
  void store(T* p, const Vec& v) const {
    alignas(64) double t[L];
    v.store(t);
    for (int l = 0; l < cnt; ++l) p[l * D] = T(t[l]);
  }
#endif
  // v's lanes rounded to T and back (what store writes)
  static Vec round(const Vec& v) {
    if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
      return Vec(_mm512_cvtps_pd(_mm512_cvtpd_ps(v)));
#elif defined(CPU_CAPABILITY_AVX2)
      return Vec(_mm256_cvtps_pd(_mm256_cvtpd_ps(v)));
#else
      alignas(64) double t[L];
      v.store(t);
      for (int l = 0; l < L; ++l) t[l] = double(float(t[l]));
      return Vec::loadu(t);
#endif
    } else {
      return v;
    }
  }
};

// The lanes of v summed in lane order.
inline double lane_sum(const vecmath::Vec& v) {
  alignas(64) double t[vecmath::Vec::size()];
  v.store(t);
  double s = 0;
  for (int l = 0; l < vecmath::Vec::size(); ++l) s += t[l];
  return s;
}

// Tiles of float rows (session 22, the batch norm's backward; AVX2 session 28): at D = 8 / 16 the lane passes of
// float rows take their columns from one in-register transpose of kTile = 2 vectors' worth of rows (AVX-512: 16 rows,
// f32rows::cols16, contiguous loads and permutes; AVX2: 8 rows, 8 x 8 float transposes by unpack / shuffle / lane
// permutes; exact moves) into a small SoA scratch, each half widened to a vector of doubles, instead of one masked
// gather per column and vector of rows (perf on the AMD EPYC: the gathers and the dx pass's scatters were most of the
// backward passes' time, the lane math ~15 %).  Half h of a tile is rows h * L .. h * L + L - 1 (L = Vec::size()),
// the lanes the gathers give those rows, and the widened columns are the gathers' values bit for bit, so every sum
// and coefficient is the lanes path's; the writes are per-row contiguous passes from the tile's coefficients
// (double fma chains, one rounding).  GEOOPS_POINCARE_BN_TILES=0 (read per call): the gathers.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
constexpr bool kBnTileIsa = true;
#else
constexpr bool kBnTileIsa = false;
#endif
constexpr int kHalf = vecmath::Vec::size();  // a tile's half: one vector of doubles (int: as the literal 8 was)
constexpr int64_t kTile = 2 * kHalf;         // AVX-512: 16 rows, AVX2: 8
// Whether T's rows have the tile paths in this build (the compile-time half of bn_tiles).
template <typename T>
constexpr bool kBnTiles = kBnTileIsa && std::is_same_v<T, float>;
static_assert(!kBnTileIsa || kHalf == 8 || kHalf == 4, "a tile's half is one vector of doubles (AVX-512 / AVX2)");
template <typename T>
inline bool bn_tiles(int64_t D) {
  return kBnTiles<T> && (D == 8 || D == 16) && !knobs::off("GEOOPS_POINCARE_BN_TILES");
}
// The rows of a tile's transposed scratch for DD columns (untile16): DD rows of columns, at least kTile (AVX-512's
// 16 x 16 transpose reads rows DD..15 as zeros).
constexpr int kTileCols(int DD) { return DD > int(kTile) ? DD : int(kTile); }
// The kTile rows at p (DD floats each) as SoA s[d][l] = row l's element d.
template <int DD>
inline void tile16(const float* p, float (&s)[DD][kTile]) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 c[DD];
  geoops::cpu::f32rows::cols16<DD>(p, c);
  for (int d = 0; d < DD; ++d) _mm512_storeu_ps(s[d], c[d]);
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(DD % 8 == 0 && kTile == 8, "AVX2 tiles: 8 rows of 8 / 16 floats");
  for (int d0 = 0; d0 < DD; d0 += 8) {  // columns d0 .. d0 + 7 of the 8 rows
    __m256 r[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(p + l * DD + d0);
    paths::transpose8(r);
    for (int d = 0; d < 8; ++d) _mm256_store_ps(s[d0 + d], r[d]);
  }
#else
  for (int l = 0; l < kTile; ++l)
    for (int d = 0; d < DD; ++d) s[d][l] = p[l * DD + d];
#endif
}
// The inverse: s[d][l] (d < DD; AVX-512: s's rows DD..15 zero, the caller's) as the kTile rows at p (DD floats
// each): AVX-512 the 16 x 16 transpose of cols16 and one masked store per row; AVX2 8 x 8 transposes.
template <int DD, int R>
inline void untile16(const float (&s)[R][kTile], float* p) {
  static_assert(R == kTileCols(DD), "untile16: the scratch's rows");
#if defined(CPU_CAPABILITY_AVX512)
  __m512 c[kTile];
  geoops::cpu::f32rows::cols16<kTile>(&s[0][0], c);
  for (int l = 0; l < kTile; ++l) _mm512_mask_storeu_ps(p + l * DD, static_cast<__mmask16>((1u << DD) - 1u), c[l]);
#elif defined(CPU_CAPABILITY_AVX2)
  for (int d0 = 0; d0 < DD; d0 += 8) {
    __m256 r[8];
    for (int d = 0; d < 8; ++d) r[d] = _mm256_load_ps(s[d0 + d]);
    paths::transpose8(r);
    for (int l = 0; l < 8; ++l) _mm256_storeu_ps(p + l * DD + d0, r[l]);
  }
#else
  for (int l = 0; l < kTile; ++l)
    for (int d = 0; d < DD; ++d) p[l * DD + d] = s[d][l];
#endif
}
// Lanes h * kHalf .. h * kHalf + kHalf - 1 of a tile column, widened (exact).
inline vecmath::Vec tile_half(const float* col, int h) {
#if defined(CPU_CAPABILITY_AVX512)
  return vecmath::Vec(_mm512_cvtps_pd(_mm256_loadu_ps(col + 8 * h)));
#elif defined(CPU_CAPABILITY_AVX2)
  return vecmath::Vec(_mm256_cvtps_pd(_mm_loadu_ps(col + 4 * h)));
#else
  alignas(64) double t[vecmath::Vec::size()];
  for (int l = 0; l < vecmath::Vec::size(); ++l) t[l] = double(col[vecmath::Vec::size() * h + l]);
  return vecmath::Vec::loadu(t);
#endif
}

}  // namespace

int64_t poincare_bn_tile_rows() { return kBnTiles<float> ? kTile : 0; }
int64_t poincare_relu_deint_mask() { return paths::relu_mask(false); }
int64_t poincare_relu_write_mask() { return paths::relu_mask(true); }

// ---------------------------------------------------------------- midpoint batch norm
// The batch midpoint's sums (one fused reduction): F = sum_i lam_i x_i, L = sum_i (lam_i - 1),
// lam_i = 2 / max(1 - c |x_i|^2, 1e-15); per-thread partial sums in double.  Backward (one row pass):
// dx_i = lam_i gF + (<gF, x_i> + gL) c lam_i^2 x_i, dc = sum_i (<gF, x_i> + gL) lam_i^2 |x_i|^2 / 2.
//
// Reproducibility (every batch norm pass below, forward and backward): identical inputs give bit-identical
// results whatever the buffers' alignment, the heap's state and the thread count.  Rows go in chunks of a
// fixed number of rows (chunk_rows: independent of the thread count, a multiple of kBnBlock), each chunk's sums
// in a 64-byte-aligned row of Partials, added in chunk order; per-row sums are plain sequential loops (no
// `omp simd reduction`: its peel, and with it the summation order, followed the row's alignment) or the lane
// sums; every vectorised element-wise update and write spells its FMAs out (std::fma), so an alignment peel
// computes exactly what the vector body does, and every D-vector dot product is a chain of std::fma (GCC
// vectorises `s += a[d] * b[d]` as an in-order reduction whose vector part does not fuse the multiply and
// whose scalar peel, sized by the vector's alignment, does).  (Accumulators updated in an `omp simd` loop whose
// peel follows the vector's 16-byte heap alignment make dx differ in the last bit between two identical backward
// calls after heap churn: gradcheck's "Backward is not reentrant".)
namespace {

template <typename T>
void mid_fwd_impl(const T* xp, int64_t N, int64_t D, double c, double* F, double* L, double* Xo = nullptr,
                  bool lanes = false) {
  const int64_t CH = chunk_rows(D);
  const Partials part(N, CH, D + 1);  // F (D), L
  const bool tiles = lanes && bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* a = part.row(ci);
    double l = 0;
    if (lanes) {  // rows on lanes: F and L accumulated per lane, the lanes summed in order at the end
      using vecmath::Vec;
      constexpr int64_t VL = Vec::size();
      Vec aF[kBnLaneMaxD], aL(0.0), xs[kBnLaneMaxD];
      for (int64_t d = 0; d < D; ++d) aF[d] = Vec(0.0);
      const Vec one(1.0), two(2.0), vc(c), tiny(1e-15), zero(0.0);
      int64_t i = i0;
      if constexpr (kBnTiles<T>) {
        if (tiles) {  // whole tiles of kTile rows (bn_tiles): the gathers' columns by a transpose, same expressions
          alignas(64) float ts[kBnLaneMaxD][kTile];
          for (; i + kTile <= i1; i += kTile) {
            with_tile_width(D, [&](auto W) { tile16<W>(xp + i * D, *reinterpret_cast<float(*)[W][kTile]>(ts)); });
            for (int h = 0; h < 2; ++h) {
              Vec X(0.0);
              for (int64_t d = 0; d < D; ++d) xs[d] = tile_half(ts[d], h), X = at::vec::fmadd(xs[d], xs[d], X);
              if (Xo) X.store(Xo + i + kHalf * h);
              const Vec lam = two / at::vec::maximum(one - vc * X, tiny);
              aL = aL + (lam - one);
              for (int64_t d = 0; d < D; ++d) aF[d] = at::vec::fmadd(lam, xs[d], aF[d]);
            }
          }
        }
      }
      for (; i < i1; i += VL) {
        const int64_t cnt = std::min(VL, i1 - i);
        const Cols<T> cl(D, cnt);
        const T* xr = xp + i * D;
        Vec X(0.0);
        for (int64_t d = 0; d < D; ++d) xs[d] = cl.load(xr + d), X = at::vec::fmadd(xs[d], xs[d], X);
        if (Xo) X.store(Xo + i, int(cnt));
        const Vec lam = two / at::vec::maximum(one - vc * X, tiny);
        aL = aL + Vec::set(zero, lam - one, cnt);
        for (int64_t d = 0; d < D; ++d) aF[d] = at::vec::fmadd(lam, xs[d], aF[d]);  // padded lanes: x = 0
      }
      for (int64_t d = 0; d < D; ++d) a[d] = lane_sum(aF[d]);
      a[D] = lane_sum(aL);
      return;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      double X = 0;
      for (int64_t d = 0; d < D; ++d) X = std::fma(double(xr[d]), double(xr[d]), X);
      if (Xo) Xo[i] = X;  // the batch norm layer's stats pass reuses |x_i|^2
      const double lam = 2.0 / std::max(1.0 - c * X, 1e-15);
      l += lam - 1.0;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] = std::fma(lam, double(xr[d]), a[d]);
    }
    a[D] = l;
  });
  const std::vector<double> s = part.sum();
  for (int64_t d = 0; d < D; ++d) F[d] = s[d];
  *L = s[D];
}

template <typename T>
double mid_bwd_impl(const T* gF, double gL, const T* xp, T* gxp, int64_t N, int64_t D, double c) {
  const int64_t CH = chunk_rows(D);
  const Partials part(N, CH, 1);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double gcl = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      T* gr = gxp + i * D;
      double X = 0, P = 0;
      for (int64_t d = 0; d < D; ++d) {
        X = std::fma(double(xr[d]), double(xr[d]), X);
        P = std::fma(double(gF[d]), double(xr[d]), P);
      }
      const double den = 1.0 - c * X;
      const double lam = 2.0 / std::max(den, 1e-15);
      const double w = den > 1e-15 ? (P + gL) * lam * lam : 0.0;  // d/dX of lam = c lam^2 / 2
      const T a = T(lam), b = T(w * c);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) gr[d] = std::fma(a, gF[d], b * xr[d]);
      gcl += 0.5 * w * X;
    }
    part.row(ci)[0] = gcl;
  });
  return part.sum()[0];
}

// The normalisation's row pass: y_i = project(expmap_b(u_i M)) with u_i = logmap_m(x_i) (from the stats pass
// below or the fused stereographic logmap: its rows also give the Fréchet variance), M = PT_{m->b} * sqrt(w/(var+eps))
// as one (D, D) matrix, b = expmap0(bias).  expmap and project are evaluated with the coefficient forms of
// geoops/stereo_math.h (k = -c) and differentiated with its hand-derived vjps:
//   backward per row: ge = a_p g + 2 xx_p e (project), then (gb_i, gv) from expmap's row adjoints,
//   gb = sum_i gb_i, dk = sum of the row k adjoints (double).  The op entries run v = u M as one GEMM (fixed row
//   chunks of MKL calls: bn_mm_fixed) before the row pass and gu = gv M^T, gM = u^T gv as two GEMMs after it (an
//   empty M: the identity);
//   per-row D x D products in double cost several times more than the GEMMs.
// Forward and backward walk the rows in one style: blocks of kBnBlock rows, (1) the row sums of each row in one
// pass (bn_block_sums), (2) the row math of the whole block on SIMD lanes, one row per lane, from those sums
// alone (bn_block_coefs: every vector the row math needs is a combination of b and v_i, so its dot products are
// combinations of the sums), (3) one pass per row writing y_i (dL/dv_i and the dL/db partials) from the row's
// coefficients.  (Measured against per-row scalar double math with the tanc batched separately, C++ op alone,
// 1 thread, under load, fwd / bwd: 4096 x 8 62-80 / 113-137 us vs 122-143 / 261-278 us, 32768 x 16 714-742 /
// 1249-1267 us vs 1260-1335 / 3105-3424 us.)
constexpr int64_t kLanes = vecmath::Vec::size();
static_assert(kBnBlock % kLanes == 0, "a block of rows is whole vectors of lanes");

// A block's per-row scalars (rows [i0, i0 + n); lanes n .. up to whole vectors padded with zeros) and the
// coefficients of its writes.
struct BnBlock {
  alignas(64) double vv[kBnBlock], bv[kBnBlock], gb[kBnBlock], gv[kBnBlock];
  alignas(64) double ca[kBnBlock], cb[kBnBlock], cc[kBnBlock], cd[kBnBlock];
};

// Row sums of a block: vv = |v|^2, bv = <b, v>, and with g (backward) gb = <g, b>, gv = <g, v>; one pass over
// each row (the only |v|^2 of the row pass: the lane math below takes expmap's tanc argument from it).
// bn_block_sums' backward sums of the block's whole tiles of kTile rows (bn_tiles); returns the rows done.
template <int DD>
int64_t bn_block_sums_tiles(BnBlock& k_, const float* vp, const float* gp, const double* bp, int64_t i0, int64_t n) {
  using vecmath::Vec;
  alignas(64) float vs[DD][kTile], gs[DD][kTile];
  int64_t j = 0;
  for (; j + kTile <= n; j += kTile) {
    tile16<DD>(vp + (i0 + j) * DD, vs);
    if (gp) tile16<DD>(gp + (i0 + j) * DD, gs);
    for (int h = 0; h < 2; ++h) {
      Vec vv(0.0), bv(0.0), gb(0.0), gv(0.0);
      if (gp) {
        for (int d = 0; d < DD; ++d) {
          const Vec v = tile_half(vs[d], h), g = tile_half(gs[d], h), b(bp[d]);
          vv = at::vec::fmadd(v, v, vv), bv = at::vec::fmadd(b, v, bv);
          gb = at::vec::fmadd(g, b, gb), gv = at::vec::fmadd(g, v, gv);
        }
      } else {
        for (int d = 0; d < DD; ++d) {
          const Vec v = tile_half(vs[d], h);
          vv = at::vec::fmadd(v, v, vv), bv = at::vec::fmadd(Vec(bp[d]), v, bv);
        }
      }
      const int64_t o = j + kHalf * h;
      vv.store(k_.vv + o), bv.store(k_.bv + o), gb.store(k_.gb + o), gv.store(k_.gv + o);
    }
  }
  return j;
}

template <typename T>
void bn_block_sums(BnBlock& k_, const T* vp, const T* gp, const double* bp, int64_t i0, int64_t n, int64_t D,
                   bool lanes, bool tiles = false) {
  using vecmath::Vec;
  if (lanes) {  // rows on lanes (bn_lanes): padded lanes load zeros, so their sums are 0
    int64_t j0 = 0;
    if constexpr (kBnTiles<T>) {
      if (tiles) j0 = with_tile_width(D, [&](auto W) { return bn_block_sums_tiles<W>(k_, vp, gp, bp, i0, n); });
    }
    for (int64_t j = j0; j < n; j += kLanes) {
      const Cols<T> cl(D, std::min(kLanes, n - j));
      const T* vr = vp + (i0 + j) * D;
      Vec vv(0.0), bv(0.0), gb(0.0), gv(0.0);
      if (gp) {
        const T* gr = gp + (i0 + j) * D;
        for (int64_t d = 0; d < D; ++d) {
          const Vec v = cl.load(vr + d), g = cl.load(gr + d), b(bp[d]);
          vv = at::vec::fmadd(v, v, vv), bv = at::vec::fmadd(b, v, bv);
          gb = at::vec::fmadd(g, b, gb), gv = at::vec::fmadd(g, v, gv);
        }
      } else {
        for (int64_t d = 0; d < D; ++d) {
          const Vec v = cl.load(vr + d);
          vv = at::vec::fmadd(v, v, vv), bv = at::vec::fmadd(Vec(bp[d]), v, bv);
        }
      }
      vv.store(k_.vv + j), bv.store(k_.bv + j), gb.store(k_.gb + j), gv.store(k_.gv + j);
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T* vr = vp + (i0 + j) * D;
    double vv = 0, bv = 0, gb = 0, gv = 0;
    if (gp) {
      const T* gr = gp + (i0 + j) * D;
      for (int64_t d = 0; d < D; ++d) {  // sequential sums: a fixed order (see "Reproducibility" above)
        const double v = double(vr[d]), g = double(gr[d]);
        vv = std::fma(v, v, vv);
        bv = std::fma(bp[d], v, bv);
        gb = std::fma(g, bp[d], gb);
        gv = std::fma(g, v, gv);
      }
    } else {
      for (int64_t d = 0; d < D; ++d) {
        const double v = double(vr[d]);
        vv = std::fma(v, v, vv);
        bv = std::fma(bp[d], v, bv);
      }
    }
    k_.vv[j] = vv, k_.bv[j] = bv, k_.gb[j] = gb, k_.gv[j] = gv;
  }
  const int64_t nv = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = n; j < nv; ++j) k_.vv[j] = k_.bv[j] = k_.gb[j] = k_.gv[j] = 0.0;
}

// stereo_math.h's EXPMAP calls tanc once in its forward and once in its vjp, with the same argument: the
// second call returns the first's value.
struct OnceTanc {
  vecmath::Vec t;
  bool have = false;
  vecmath::Vec tanc(const vecmath::Vec& z) {
    if (!have) t = vecmath::LaneMath().tanc(z), have = true;
    return t;
  }
  vecmath::Vec atanc(const vecmath::Vec& z, const vecmath::Vec& q) { return vecmath::LaneMath().atanc(z, q); }
};

// The row math of a block on SIMD lanes (one row per lane, stereo_math.h's forms with the Vec building blocks
// of vec_math_inl.h), from the row scalars alone: e = expmap_b(v) = A b + B v (EXPMAP's c coefficient is 0),
// |e|^2 = A^2 |b|^2 + 2 A B <b,v> + B^2 |v|^2, P = project's factor.
//   forward (GRAD = false): y = ca b + cb v with ca = P A, cb = P B.
//   backward: <g, e> = A gb + B gv; project's vjp (adjoint xx_p of |e|^2, k); ge = P g + 2 xx_p e gives
//   <ge, b>, <ge, v> for expmap's vjp (adjoints xx_, yy_, xy_ of |b|^2, |v|^2, <b,v>; EXPMAP has no dd term);
//   then per row  dL/dv = ca g + cb v + cc b,  its share of dL/db = cd g + cc v + (2 xx_p A^2 + 2 xx_) b, with
//   ca = B P, cb = 2 xx_p B^2 + 2 yy_, cc = 2 xx_p A B + xy_, cd = A P; returns the block's sums of the b
//   coefficient and of the k adjoints in *sb, *sk.
template <bool GRAD>
void bn_block_coefs(BnBlock& k_, int64_t n, double bb, double k, double eps, double* sb, double* sk) {
  using namespace geoops::stereo;
  using vecmath::Vec;
  Vec accb(0.0), acck(0.0);
  const Vec vbb(bb), vk(k), veps(eps), zero(0.0), two(2.0);
  for (int64_t j = 0; j < n; j += kLanes) {
    const Vec vv = Vec::loadu(k_.vv + j), bv = Vec::loadu(k_.bv + j);
    const Row<Vec> s1{vbb, vv, bv, zero, vk, zero};
    OnceTanc tm;
    const Coef<Vec> c1 = fwd<Vec>(EXPMAP, s1, zero, tm);
    const Vec A = c1.a, B = c1.b;
    const Vec ee = at::vec::maximum(A * A * vbb + two * A * B * bv + B * B * vv, zero);
    const Row<Vec> s2{ee, zero, zero, zero, vk, zero};
    const Vec P = fwd<Vec>(PROJECT, s2, veps, tm).a;
    if constexpr (!GRAD) {
      (P * A).store(k_.ca + j);
      (P * B).store(k_.cb + j);
    } else {
      const Vec gb = Vec::loadu(k_.gb + j), gv = Vec::loadu(k_.gv + j);
      const Row<Vec> r2 = vjp<Vec>(PROJECT, s2, veps, A * gb + B * gv, zero, zero, tm);
      const Vec x2 = two * r2.xx;
      const Vec gab = P * gb + x2 * (A * vbb + B * bv), gav = P * gv + x2 * (A * bv + B * vv);
      const Row<Vec> r1 = vjp<Vec>(EXPMAP, s1, zero, gab, gav, zero, tm);
      const Vec cc = x2 * A * B + r1.xy;
      (B * P).store(k_.ca + j);
      (x2 * B * B + two * r1.yy).store(k_.cb + j);
      cc.store(k_.cc + j);
      (A * P).store(k_.cd + j);
      // padded lanes (rows past n: v = 0, g = 0) have <g, e> = <ge, b> = <ge, v> = 0, so every adjoint is 0
      accb = accb + x2 * A * A + two * r1.xx;
      acck = acck + r2.k + r1.k;
    }
  }
  if constexpr (GRAD) {
    alignas(64) double tb[kLanes], tk[kLanes];
    accb.store(tb);
    acck.store(tk);
    for (int64_t l = 0; l < kLanes; ++l) *sb += tb[l], *sk += tk[l];
  }
}

struct BnRowCtx {
  int64_t D;
  std::vector<double> b;
  double bb, k, eps;
};

template <typename T>
void bn_fwd_impl(const T* vp, T* yp, int64_t N, const BnRowCtx& cx, bool lanes) {
  const int64_t D = cx.D;
  const double* bp = cx.b.data();
  const bool tiles = lanes && bn_tiles<T>(D);
  at::parallel_for(0, N, grain(D * 8), [&](int64_t i0, int64_t i1) {
    BnBlock blk;
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min(kBnBlock, i1 - b0);
      bn_block_sums<T>(blk, vp, nullptr, bp, b0, n, D, lanes, tiles);
      bn_block_coefs<false>(blk, n, cx.bb, cx.k, cx.eps, nullptr, nullptr);
      for (int64_t j = 0; j < n; ++j) {
        const T* vr = vp + (b0 + j) * D;
        T* yr = yp + (b0 + j) * D;
        const double a = blk.ca[j], b = blk.cb[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = T(std::fma(a, bp[d], b * double(vr[d])));
      }
    }
  });
}

template <typename T>
void bn_bwd_impl(const T* gp, const T* vp, int64_t N, const BnRowCtx& cx, T* gvp, double* gb, double* gk,
                 bool lanes) {
  const int64_t D = cx.D;
  const double* bp = cx.b.data();
  const int64_t CH = chunk_rows(D * 16);
  const Partials part(N, CH, D + 2);  // the dL/db partials (D), the k adjoints, the b coefficient
  const bool tiles = lanes && bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* pb = part.row(ci);
    BnBlock blk;
    double sb = 0, sk = 0;
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min(kBnBlock, i1 - b0);
      bn_block_sums<T>(blk, vp, gp, bp, b0, n, D, lanes, tiles);
      bn_block_coefs<true>(blk, n, cx.bb, cx.k, cx.eps, &sb, &sk);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = b0 + j;
        const T* vr = vp + i * D;
        const T* gr = gp + i * D;
        T* gvr = gvp + i * D;
        const double ca = blk.ca[j], cb = blk.cb[j], cc = blk.cc[j], cd = blk.cd[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const double g = double(gr[d]), v = double(vr[d]);
          gvr[d] = T(std::fma(ca, g, std::fma(cb, v, cc * bp[d])));
          pb[d] += std::fma(cd, g, cc * v);
        }
      }
    }
    pb[D] = sk, pb[D + 1] = sb;
  });
  const std::vector<double> s = part.sum();
  *gk = s[D];
  for (int64_t d = 0; d < D; ++d) gb[d] = std::fma(s[D + 1], bp[d], s[d]);
}

// The row op's context from b in double (the values of the dtype's b).
BnRowCtx bn_ctx_d(std::vector<double> b, double c, double eps) {
  BnRowCtx cx;
  cx.D = int64_t(b.size());
  cx.b = std::move(b);
  cx.bb = 0;
  for (int64_t d = 0; d < cx.D; ++d) cx.bb = std::fma(cx.b[d], cx.b[d], cx.bb);
  cx.k = -c;
  cx.eps = eps;
  return cx;
}

BnRowCtx bn_ctx(const at::Tensor& b, double c, double eps) {
  const at::Tensor bd = b.to(at::kDouble).contiguous();
  return bn_ctx_d(std::vector<double>(bd.data_ptr<double>(), bd.data_ptr<double>() + bd.numel()), c, eps);
}

// v = u M for D <= kBnLaneMaxD as a row pass in the dtype (session 20): fixed_gemm::rows_narrow_in (poincare_gemm.h,
// shared with the MLR head since session 21) -- every output element an fma chain over d in order (the first term a
// product), rounded in the dtype as a float GEMM rounds; rows independent, so the same bits for any thread count and
// alignment.  MKL's GEMM at these shapes (4096 x 8 x 8, the digits CNN) took 40-75 us per call on the AMD EPYC (its
// generic `def` kernels, a fixed cost per call), this pass a few us; on the Intel Xeon MKL's AVX-512 path was ~1.4x
// faster than the earlier row pass *in double* (bn14), which this float pass is not.
// GEOOPS_POINCARE_BN_SMALL_GEMM=0 (read per call) forces the GEMM (bn_mm_fixed), what D > kBnLaneMaxD runs.
// a b and a^T b (2-D, float / double) with bits independent of the thread count: fixed_gemm's fixed row chunks, one
// MKL thread per chunk, the chunks' partial products summed in order (session 24 audit: MKL's own split of at::mm /
// addmm changed the last bits between 1 and 2 threads at small N -- the batch norm's forward and backward at
// D > kBnLaneMaxD, and the row op's backward (eval mode, the composition) at any D); grad mode off.
// transpose_a: a^T b (fixed_gemm::mm_tn), else a b (fixed_gemm::mm_rows).
at::Tensor bn_mm_fixed(const at::Tensor& a, const at::Tensor& b, bool transpose_a = false) {
  const at::Tensor A = a.contiguous(), B = b.contiguous();
  const int64_t rows = A.size(transpose_a ? 1 : 0), inner = A.size(transpose_a ? 0 : 1);
  at::Tensor out = at::empty({rows, B.size(1)}, A.options());
  if (out.numel() == 0) return out;
  if (inner == 0) return out.zero_();
  at::NoGradGuard ng;
  if (transpose_a) fixed_gemm::mm_tn(out, A, B);
  else fixed_gemm::mm_rows(out, A, B);
  return out;
}

// v = u M (an empty M: the identity): D <= kBnLaneMaxD the row pass above, else one GEMM in fixed row chunks
// (bn_mm_fixed); grad mode off (thread-local: the op may run inside backward)
at::Tensor bn_times_M(const at::Tensor& u_in, const at::Tensor& M_in) {
  if (M_in.numel() == 0) return u_in;
  const int64_t D = u_in.size(1);
  if (D > 0 && D <= kBnLaneMaxD && u_in.dim() == 2 && M_in.scalar_type() == u_in.scalar_type() &&
      (u_in.scalar_type() == at::kFloat || u_in.scalar_type() == at::kDouble) &&
      !knobs::off("GEOOPS_POINCARE_BN_SMALL_GEMM")) {
    const at::Tensor u = u_in.contiguous(), M = M_in.contiguous();
    at::Tensor v = at::empty_like(u);
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "poincare_bn_times_M", [&] {
      fixed_gemm::rows_narrow_in<scalar_t>(v.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(),
                                           u.size(0), D, D, grain(D * D));
    });
    return v;
  }
  return bn_mm_fixed(u_in, M_in);
}

void check_bn_args(const at::Tensor& u, const at::Tensor& M, const at::Tensor& b) {
  check_rows("poincare_bn_rows", u);
  const int64_t D = u.size(1);
  TORCH_CHECK(M.numel() == 0 || (M.dim() == 2 && M.size(0) == D && M.size(1) == D),
              "poincare_bn_rows: M must be (D, D) (or empty: the identity)");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == D, "poincare_bn_rows: b must be (D,)");
  TORCH_CHECK(M.scalar_type() == u.scalar_type() && b.scalar_type() == u.scalar_type(),
              "poincare_bn_rows: u, M, b must share a dtype");
}

}  // namespace

// ---------------------------------------------------------------- the training layer's logmap_m, folded
// BnLayerFn (geoops/poincare.py) runs the midpoint, u_i = logmap_m(x_i) and the variance's S = sum_i |u_i|^2 as
// one C++ call (bn_layer_fwd: the midpoint sums pass, m on the D-vector in double, one stats pass that writes u
// and sums S), and the backward of all three after gu = dL/du as one call (bn_layer_bwd: a reduction pass, the
// midpoint's D-vector backward in double, one epilogue pass writing dx).  LOGMAP's coefficient form with
// x = m, y = x_i (stereo_math.h): u_i = a_i m + c_i (m - x_i) from the row scalars |m|^2, |x_i|^2, <m, x_i>,
// |m - x_i|^2 (the last summed directly); its row adjoints (xx_, yy_, xy_, dd_, k_) from ga = <gu_i, m>,
// gc = <gu_i, m - x_i> give
//   dx_i = -c_i gu_i + 2 (yy_ + dd_) x_i + (xy_ - 2 dd_) m,
//   dm  += (a_i + c_i) gu_i + (xy_ - 2 dd_) x_i + 2 (xx_ + dd_) m,
// so the reduction pass sums the D-vector sum_i (a_i + c_i) gu_i + (xy_ - 2 dd_) x_i and two scalars, and keeps
// four doubles per row (-c_i, 2 (yy_ + dd_), xy_ - 2 dd_, |x_i|^2) for the epilogue, which adds the midpoint
// sums' backward lam_i gF + (<gF, x_i> + gL) c lam_i^2 x_i in the same write.  Instead of the stereographic
// logmap kernel's forward and backward (its dm rows (N, D), their reduction), the dot for S and a separate
// accumulation pass of the midpoint's dx.
namespace {

// stereo_math.h's LOGMAP calls atanc once in its forward and once in its vjp, with the same argument.
struct OnceAtanc {
  vecmath::Vec a;
  bool have = false;
  vecmath::Vec tanc(const vecmath::Vec& z) { return vecmath::LaneMath().tanc(z); }
  vecmath::Vec atanc(const vecmath::Vec& z, const vecmath::Vec& q) {
    if (!have) a = vecmath::LaneMath().atanc(z, q), have = true;
    return a;
  }
};

struct LogBlock {
  alignas(64) double yy[kBnBlock], xy[kBnBlock], dd[kBnBlock], ga[kBnBlock], gc[kBnBlock];
  alignas(64) double ca[kBnBlock], cc[kBnBlock], cx[kBnBlock], cm[kBnBlock];
};

// Row sums of a block: yy = |x|^2, xy = <m, x>, dd = |m - x|^2, and with g: ga = <g, m>, gc = <g, m - x>;
// without g and with Xs (the rows' |x_i|^2 from the midpoint pass, mm = |m|^2) only dd is summed, xy = (mm + yy -
// dd) / 2 (its rounding, ~1e-16 of |m|^2 + |x|^2, is far below what LOGMAP's O(1) denominators notice);
// padded lanes up to whole vectors: zeros (x = 0, g = 0: finite coefficients, zero adjoints).
// log_block_sums' backward sums of the block's whole tiles of kTile rows (bn_tiles); returns the rows done.
// Without g: the forward's case (Xs, mm given), only dd summed, as log_block_sums.
template <int DD>
int64_t log_block_sums_tiles(LogBlock& k_, const float* xp, const float* gp, const double* mp, int64_t i0, int64_t n,
                             const double* Xs = nullptr, double mm = 0) {
  using vecmath::Vec;
  alignas(64) float xs[DD][kTile], gs[DD][kTile];
  int64_t j = 0;
  for (; j + kTile <= n; j += kTile) {
    tile16<DD>(xp + (i0 + j) * DD, xs);
    if (!gp) {
      for (int h = 0; h < 2; ++h) {
        Vec dd(0.0);
        for (int d = 0; d < DD; ++d) {
          const Vec e = Vec(mp[d]) - tile_half(xs[d], h);
          dd = at::vec::fmadd(e, e, dd);
        }
        const int64_t o = j + kHalf * h;
        const Vec yy = Vec::loadu(Xs + i0 + o);
        yy.store(k_.yy + o), (Vec(0.5) * (Vec(mm) + yy - dd)).store(k_.xy + o), dd.store(k_.dd + o);
        Vec(0.0).store(k_.ga + o), Vec(0.0).store(k_.gc + o);
      }
      continue;
    }
    tile16<DD>(gp + (i0 + j) * DD, gs);
    for (int h = 0; h < 2; ++h) {
      Vec yy(0.0), xy(0.0), dd(0.0), ga(0.0), gc(0.0);
      for (int d = 0; d < DD; ++d) {
        const Vec x = tile_half(xs[d], h), m(mp[d]), g = tile_half(gs[d], h), e = m - x;
        yy = at::vec::fmadd(x, x, yy), xy = at::vec::fmadd(m, x, xy), dd = at::vec::fmadd(e, e, dd);
        ga = at::vec::fmadd(g, m, ga), gc = at::vec::fmadd(g, e, gc);
      }
      const int64_t o = j + kHalf * h;
      yy.store(k_.yy + o), xy.store(k_.xy + o), dd.store(k_.dd + o), ga.store(k_.ga + o), gc.store(k_.gc + o);
    }
  }
  return j;
}

template <typename T>
void log_block_sums(LogBlock& k_, const T* xp, const T* gp, const double* mp, int64_t i0, int64_t n, int64_t D,
                    bool lanes, const double* Xs = nullptr, double mm = 0, bool tiles = false) {
  using vecmath::Vec;
  if (lanes) {  // rows on lanes (bn_lanes); padded lanes set to zeros as below
    const Vec zero(0.0), half(0.5), vmm(mm);
    int64_t j0 = 0;
    if constexpr (kBnTiles<T>) {
      if (tiles && (gp || Xs))
        j0 = with_tile_width(D, [&](auto W) { return log_block_sums_tiles<W>(k_, xp, gp, mp, i0, n, Xs, mm); });
    }
    for (int64_t j = j0; j < n; j += kLanes) {
      const int64_t cnt = std::min(kLanes, n - j);
      const Cols<T> cl(D, cnt);
      const T* xr = xp + (i0 + j) * D;
      Vec yy(0.0), xy(0.0), dd(0.0), ga(0.0), gc(0.0);
      if (gp) {
        const T* gr = gp + (i0 + j) * D;
        for (int64_t d = 0; d < D; ++d) {
          const Vec x = cl.load(xr + d), m(mp[d]), g = cl.load(gr + d), e = m - x;
          yy = at::vec::fmadd(x, x, yy), xy = at::vec::fmadd(m, x, xy), dd = at::vec::fmadd(e, e, dd);
          ga = at::vec::fmadd(g, m, ga), gc = at::vec::fmadd(g, e, gc);
        }
      } else if (Xs) {
        for (int64_t d = 0; d < D; ++d) {
          const Vec e = Vec(mp[d]) - cl.load(xr + d);
          dd = at::vec::fmadd(e, e, dd);
        }
        yy = Vec::loadu(Xs + i0 + j, int(cnt));
        xy = half * (vmm + yy - dd);
      } else {
        for (int64_t d = 0; d < D; ++d) {
          const Vec x = cl.load(xr + d), m(mp[d]), e = m - x;
          yy = at::vec::fmadd(x, x, yy), xy = at::vec::fmadd(m, x, xy), dd = at::vec::fmadd(e, e, dd);
        }
      }
      Vec::set(zero, yy, cnt).store(k_.yy + j), Vec::set(zero, xy, cnt).store(k_.xy + j);
      Vec::set(zero, dd, cnt).store(k_.dd + j);
      ga.store(k_.ga + j), gc.store(k_.gc + j);
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T* xr = xp + (i0 + j) * D;
    double yy = 0, xy = 0, dd = 0, ga = 0, gc = 0;
    if (gp) {
      const T* gr = gp + (i0 + j) * D;
      for (int64_t d = 0; d < D; ++d) {  // sequential sums: a fixed order (see "Reproducibility" above)
        const double x = double(xr[d]), m = mp[d], g = double(gr[d]), e = m - x;
        yy = std::fma(x, x, yy);
        xy = std::fma(m, x, xy);
        dd = std::fma(e, e, dd);
        ga = std::fma(g, m, ga);
        gc = std::fma(g, e, gc);
      }
    } else if (Xs) {
      for (int64_t d = 0; d < D; ++d) {
        const double e = mp[d] - double(xr[d]);
        dd = std::fma(e, e, dd);
      }
      yy = Xs[i0 + j];
      xy = 0.5 * (mm + yy - dd);
    } else {
      for (int64_t d = 0; d < D; ++d) {
        const double x = double(xr[d]), m = mp[d], e = m - x;
        yy = std::fma(x, x, yy);
        xy = std::fma(m, x, xy);
        dd = std::fma(e, e, dd);
      }
    }
    k_.yy[j] = yy, k_.xy[j] = xy, k_.dd[j] = dd, k_.ga[j] = ga, k_.gc[j] = gc;
  }
  const int64_t nv = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = n; j < nv; ++j) k_.yy[j] = k_.xy[j] = k_.dd[j] = k_.ga[j] = k_.gc[j] = 0.0;
}

// LOGMAP on the block's lanes (k = -c < 0: its x form, b = 0; stereo::logmap_y_form needs k > 0): forward ca = a,
// cc = c; backward (GRAD) ca = a + c, cc = -c, cx = 2 (yy_ + dd_),
// cm = xy_ - 2 dd_, and the block's sums of 2 (xx_ + dd_) and of k_ added to *sm, *sk.
template <bool GRAD>
void log_block_coefs(LogBlock& k_, int64_t n, double mm, double k, double* sm, double* sk) {
  using namespace geoops::stereo;
  using vecmath::Vec;
  Vec accm(0.0), acck(0.0);
  const Vec vmm(mm), vk(k), zero(0.0), two(2.0);
  for (int64_t j = 0; j < n; j += kLanes) {
    const Row<Vec> s{vmm, Vec::loadu(k_.yy + j), Vec::loadu(k_.xy + j), Vec::loadu(k_.dd + j), vk, zero};
    OnceAtanc am;
    const Coef<Vec> cf = fwd<Vec>(LOGMAP, s, zero, am);
    if constexpr (!GRAD) {
      cf.a.store(k_.ca + j);
      cf.c.store(k_.cc + j);
    } else {
      const Row<Vec> r = vjp<Vec>(LOGMAP, s, zero, Vec::loadu(k_.ga + j), zero, Vec::loadu(k_.gc + j), am);
      (cf.a + cf.c).store(k_.ca + j);
      (zero - cf.c).store(k_.cc + j);
      (two * (r.yy + r.dd)).store(k_.cx + j);
      (r.xy - two * r.dd).store(k_.cm + j);
      accm = accm + two * (r.xx + r.dd);
      acck = acck + r.k;
    }
  }
  if constexpr (GRAD) {
    alignas(64) double tm[kLanes], tk[kLanes];
    accm.store(tm);
    acck.store(tk);
    for (int64_t l = 0; l < kLanes; ++l) *sm += tm[l], *sk += tk[l];
  }
}

// bn_log_fwd_impl's lane writes on the block's whole tiles of kTile rows (bn_tiles): the lanes path's u columns and
// per-lane S terms, the rounded columns transposed back to rows; returns the rows done.
template <int DD>
int64_t bn_log_fwd_tiles(const LogBlock& blk, const float* xp, const double* mp, float* up, int64_t b0, int64_t n,
                         vecmath::Vec& sl) {
  using vecmath::Vec;
  alignas(64) float xs[DD][kTile];
  alignas(64) float us[kTileCols(DD)][kTile] = {};  // AVX-512: rows DD..15 stay zero (untile16)
  int64_t j = 0;
  for (; j + kTile <= n; j += kTile) {
    tile16<DD>(xp + (b0 + j) * DD, xs);
    for (int h = 0; h < 2; ++h) {
      const Vec a = Vec::loadu(blk.ca + j + kHalf * h), c = Vec::loadu(blk.cc + j + kHalf * h);
      Vec s(0.0);
      for (int d = 0; d < DD; ++d) {
        const Vec m(mp[d]);
        const Vec u = Cols<float>::round(a * m + c * (m - tile_half(xs[d], h)));
#if defined(CPU_CAPABILITY_AVX512)
        _mm256_storeu_ps(us[d] + 8 * h, _mm512_cvtpd_ps(u));
#elif defined(CPU_CAPABILITY_AVX2)
        _mm_storeu_ps(us[d] + 4 * h, _mm256_cvtpd_ps(u));  // u is already float-rounded: exact
#else
        alignas(64) double t[Vec::size()];
        u.store(t);
        for (int l = 0; l < Vec::size(); ++l) us[d][Vec::size() * h + l] = float(t[l]);
#endif
        s = at::vec::fmadd(u, u, s);
      }
      sl = sl + s;
    }
    untile16<DD>(us, up + (b0 + j) * DD);
  }
  return j;
}

// u_i = a_i m + c_i (m - x_i) written as T; returns S = sum_i |u_i|^2 of the written values (double).
template <typename T>
double bn_log_fwd_impl(const T* xp, const double* mp, const double* Xs, T* up, int64_t N, int64_t D, double mm,
                       double k, bool lanes) {
  const int64_t CH = chunk_rows(D * 8);
  const Partials part(N, CH, 1);
  const bool tiles = lanes && bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    LogBlock blk;
    double S = 0;
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min(kBnBlock, i1 - b0);
      log_block_sums<T>(blk, xp, nullptr, mp, b0, n, D, lanes, Xs, mm, tiles);
      log_block_coefs<false>(blk, n, mm, k, nullptr, nullptr);
      if (lanes) {  // the writes on lanes too (scatters; tiles: transposed back), S summed per lane, in order
        using vecmath::Vec;
        Vec sl(0.0);
        int64_t j0 = 0;
        if constexpr (kBnTiles<T>) {
          if (tiles) j0 = with_tile_width(D, [&](auto W) { return bn_log_fwd_tiles<W>(blk, xp, mp, up, b0, n, sl); });
        }
        for (int64_t j = j0; j < n; j += kLanes) {
          const int64_t cnt = std::min(kLanes, n - j);
          const Cols<T> cl(D, cnt);
          const T* xr = xp + (b0 + j) * D;
          T* ur = up + (b0 + j) * D;
          const Vec a = Vec::loadu(blk.ca + j), c = Vec::loadu(blk.cc + j);
          Vec s(0.0);
          for (int64_t d = 0; d < D; ++d) {
            const Vec m(mp[d]);
            const Vec u = Cols<T>::round(a * m + c * (m - cl.load(xr + d)));
            cl.store(ur + d, u);
            s = at::vec::fmadd(u, u, s);
          }
          sl = sl + Vec::set(Vec(0.0), s, cnt);
        }
        S += lane_sum(sl);
        continue;
      }
      for (int64_t j = 0; j < n; ++j) {
        const T* xr = xp + (b0 + j) * D;
        T* ur = up + (b0 + j) * D;
        const double a = blk.ca[j], c = blk.cc[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) ur[d] = T(std::fma(a, mp[d], c * (mp[d] - double(xr[d]))));
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s = std::fma(double(ur[d]), double(ur[d]), s);
        S += s;
      }
    }
    part.row(ci)[0] = S;
  });
  return part.sum()[0];
}

// The backward's reduction pass: per row (-c_i, 2 (yy_ + dd_), xy_ - 2 dd_, |x_i|^2) into cf (4 x N), the
// D-vector pm = sum_i (a_i + c_i) g_i + (xy_ - 2 dd_) x_i, *sm = sum_i 2 (xx_ + dd_), *sk = sum_i k_.
// fill (the training layer's backward, session 22): writes the rows [b0, b1) of g (gu = gv M^T + 2 gS u) just
// before the block reads them, instead of a separate pass over all rows (the block's gu stays in L1 for the sums
// and the pm pass).
using RowFill = std::function<void(int64_t, int64_t)>;
template <typename T>
void bn_log_bwd_red(const T* gp, const T* xp, const double* mp, int64_t N, int64_t D, double mm, double k,
                    double* cf, double* pm, double* sm, double* sk, bool lanes, const RowFill* fill = nullptr) {
  const int64_t CH = chunk_rows(D * 16);
  const Partials part(N, CH, D + 2);  // pm (D), sm, sk
  const bool tiles = lanes && bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* p = part.row(ci);
    LogBlock blk;
    double smt = 0, skt = 0;
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min(kBnBlock, i1 - b0);
      if (fill) (*fill)(b0, b0 + n);
      log_block_sums<T>(blk, xp, gp, mp, b0, n, D, lanes, nullptr, 0, tiles);
      log_block_coefs<true>(blk, n, mm, k, &smt, &skt);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = b0 + j;
        const T* xr = xp + i * D;
        const T* gr = gp + i * D;
        const double ag = blk.ca[j], cm = blk.cm[j];
        cf[i] = blk.cc[j], cf[N + i] = blk.cx[j], cf[2 * N + i] = cm, cf[3 * N + i] = blk.yy[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) p[d] += std::fma(ag, double(gr[d]), cm * double(xr[d]));
      }
    }
    p[D] = smt, p[D + 1] = skt;
  });
  const std::vector<double> s = part.sum();
  for (int64_t d = 0; d < D; ++d) pm[d] = s[d];
  *sm = s[D], *sk = s[D + 1];
}

// The epilogue: dx_i = -c_i g_i + (2 (yy_ + dd_) + w_i c) x_i + (xy_ - 2 dd_) m + lam_i gF with the midpoint
// sums' lam_i = 2 / max(1 - c |x_i|^2, 1e-15), w_i = (<gF, x_i> + gL) lam_i^2; returns the sums' dc.
// bn_log_bwd_dx's lane branch on the whole tiles of kTile rows from i0 (bn_tiles): P = <gF, x_i> and the row scalars
// on the tile's two halves (the lanes path's expressions), dx per row from them (contiguous rows, double fma
// chains, one rounding); the halves' dc terms added to gcv; returns the first row not done.
template <int DD>
int64_t bn_log_bwd_dx_tiles(const float* gp, const float* xp, const double* mp, const double* cf, const double* gF,
                            double gL, double c, float* dxp, int64_t N, int64_t i0, int64_t i1, vecmath::Vec& gcv) {
  using vecmath::Vec;
  const Vec one(1.0), two(2.0), half(0.5), vc(c), tiny(1e-15), zero(0.0), vgL(gL);
  alignas(64) float xs[DD][kTile];
  alignas(64) double rg[kTile], rx[kTile], rm[kTile], rl[kTile];
  int64_t i = i0;
  for (; i + kTile <= i1; i += kTile) {
    tile16<DD>(xp + i * DD, xs);
    for (int h = 0; h < 2; ++h) {
      Vec P(0.0);
      for (int d = 0; d < DD; ++d) P = at::vec::fmadd(Vec(gF[d]), tile_half(xs[d], h), P);
      const int64_t o = i + kHalf * h;
      const Vec X = Vec::loadu(cf + 3 * N + o), den = one - vc * X;
      const Vec lam = two / at::vec::maximum(den, tiny);
      const Vec w = Vec::blendv(zero, (P + vgL) * lam * lam, den > tiny);
      Vec::loadu(cf + o).store(rg + kHalf * h);
      (Vec::loadu(cf + N + o) + w * vc).store(rx + kHalf * h);
      Vec::loadu(cf + 2 * N + o).store(rm + kHalf * h);
      lam.store(rl + kHalf * h);
      gcv = gcv + half * w * X;
    }
    for (int l = 0; l < kTile; ++l) {
      const float* xr = xp + (i + l) * DD;
      const float* gr = gp + (i + l) * DD;
      float* dr = dxp + (i + l) * DD;
      const double cg = rg[l], cx = rx[l], cm = rm[l], lam = rl[l];
#pragma omp simd
      for (int d = 0; d < DD; ++d)
        dr[d] = float(std::fma(cg, double(gr[d]), std::fma(cx, double(xr[d]), std::fma(cm, mp[d], lam * gF[d]))));
    }
  }
  return i;
}

template <typename T>
double bn_log_bwd_dx(const T* gp, const T* xp, const double* mp, const double* cf, const double* gF, double gL,
                     double c, T* dxp, int64_t N, int64_t D, bool lanes) {
  const int64_t CH = chunk_rows(D * 8);
  const Partials part(N, CH, 1);
  const bool tiles = lanes && bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double gcl = 0;
    if (lanes) {  // rows on lanes: P = <gF, x_i>, the row scalars and the writes (scatters); dc per lane
      using vecmath::Vec;
      constexpr int64_t VL = Vec::size();
      const Vec one(1.0), two(2.0), half(0.5), vc(c), tiny(1e-15), zero(0.0), vgL(gL);
      Vec xs[kBnLaneMaxD], gcv(0.0);
      int64_t i = i0;
      if constexpr (kBnTiles<T>) {
        if (tiles)
          i = with_tile_width(D, [&](auto W) {
            return bn_log_bwd_dx_tiles<W>(gp, xp, mp, cf, gF, gL, c, dxp, N, i0, i1, gcv);
          });
      }
      for (; i < i1; i += VL) {
        const int64_t cnt = std::min(VL, i1 - i);
        const Cols<T> cl(D, cnt);
        const T* xr = xp + i * D;
        const T* gr = gp + i * D;
        T* dr = dxp + i * D;
        Vec P(0.0);
        for (int64_t d = 0; d < D; ++d) xs[d] = cl.load(xr + d), P = at::vec::fmadd(Vec(gF[d]), xs[d], P);
        const int ic = int(cnt);
        const Vec X = Vec::loadu(cf + 3 * N + i, ic), den = one - vc * X;
        const Vec lam = two / at::vec::maximum(den, tiny);
        const Vec w = Vec::blendv(zero, (P + vgL) * lam * lam, den > tiny);
        const Vec cg = Vec::loadu(cf + i, ic), cx = Vec::loadu(cf + N + i, ic) + w * vc;
        const Vec cm = Vec::loadu(cf + 2 * N + i, ic);
        for (int64_t d = 0; d < D; ++d)
          cl.store(dr + d, cg * cl.load(gr + d) + cx * xs[d] + cm * Vec(mp[d]) + lam * Vec(gF[d]));
        gcv = gcv + Vec::set(zero, half * w * X, cnt);
      }
      part.row(ci)[0] = lane_sum(gcv);
      return;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      const T* gr = gp + i * D;
      T* dr = dxp + i * D;
      double P = 0;
      for (int64_t d = 0; d < D; ++d) P = std::fma(gF[d], double(xr[d]), P);
      const double X = cf[3 * N + i], den = 1.0 - c * X;
      const double lam = 2.0 / std::max(den, 1e-15);
      const double w = den > 1e-15 ? (P + gL) * lam * lam : 0.0;
      const double cg = cf[i], cx = cf[N + i] + w * c, cm = cf[2 * N + i];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d)
        dr[d] = T(std::fma(cg, double(gr[d]), std::fma(cx, double(xr[d]), std::fma(cm, mp[d], lam * gF[d]))));
      gcl += 0.5 * w * X;
    }
    part.row(ci)[0] = gcl;
  });
  return part.sum()[0];
}

// The midpoint's weighted scatter V = (1/2) sum_ij lam_i lam_j |x_i - x_j|^2 = Lt S1 - |G|^2 about p = F / Lt
// (Lt = sum lam_i = L + N, S1 = sum lam_i |x_i - p|^2, G = sum lam_i (x_i - p); V does not depend on p, and at the
// weighted centroid G is rounding: no cancellation).  It gives the root's q = 1 - c |f|^2 = (N^2 + c V) / L^2
// (sum_ij cosh d(x_i, x_j) = L^2 q), whose own form cancels near the boundary: q ~ delta^2 / 4 for rows with
// 1 - c|x|^2 ~ delta, ~eps / q relative (m 1e-12 off, the layer's gradients 6e-5 at delta = 1e-4; session 44).
// The identity needs lam_i (1 - c|x_i|^2) = 2, false on rows outside the ball (lam clamped to 2 / 1e-15): for any
// lam, L^2 (1 - c|f|^2) = N^2 + c V + Lt R with R = sum_i (lam_i (1 - c|x_i|^2) - 2), zero but on those rows, where
// the R term keeps 1 - c|f|^2 exactly (every backend's midpoint there; session 45: without it such batches moved by
// ~1 %).  Rc = dR/dc = -sum over those rows of lam_i |x_i|^2.
// A second row pass (p needs F); the backward's scatter pass below adds V's and R's parts of dx.
struct MidScatter {
  double V, Lt, S1, R, Rc;
  std::vector<double> p, G;
};
template <typename T>
MidScatter mid_scatter(const T* xp, int64_t N, int64_t D, double c, const double* F, double L) {
  MidScatter o;
  o.Lt = L + double(N);
  o.p.resize(D), o.G.assign(D, 0.0);
  for (int64_t d = 0; d < D; ++d) o.p[d] = F[d] / std::max(o.Lt, 1e-300);
  const double* pp = o.p.data();
  const int64_t CH = chunk_rows(D);
  const Partials part(N, CH, D + 3);  // G (D), S1, R, Rc
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* a = part.row(ci);
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      double X = 0, ee = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double x = double(xr[d]), e = x - pp[d];
        X = std::fma(x, x, X), ee = std::fma(e, e, ee);
      }
      const double den = 1.0 - c * X;
      const double lam = 2.0 / std::max(den, 1e-15);  // the sums pass's lam
      for (int64_t d = 0; d < D; ++d) a[d] = std::fma(lam, double(xr[d]) - pp[d], a[d]);
      a[D] = std::fma(lam, ee, a[D]);
      if (!(den > 1e-15)) a[D + 1] += std::fma(lam, den, -2.0), a[D + 2] -= lam * X;
    }
  });
  const std::vector<double> sm = part.sum();
  double GG = 0;
  for (int64_t d = 0; d < D; ++d) o.G[d] = sm[d], GG = std::fma(sm[d], sm[d], GG);
  o.S1 = sm[D], o.R = sm[D + 1], o.Rc = sm[D + 2];
  o.V = std::max(o.Lt * o.S1 - GG, 0.0);
  return o;
}

// V's and R's parts of the midpoint's backward, added to dx (gV = dL/dV, gR = dL/dR): dV/dx_i = 2 lam_i (Lt e_i - G)
// + dV/dlam_i c lam_i^2 x_i, dV/dlam_i = S1 + Lt |e_i|^2 - 2 <G, e_i> (zero where lam is clamped); dR/dx_i =
// -2 c lam_i x_i where it is (lam a constant there); returns dc's part gV sum_i dV/dlam_i lam_i^2 |x_i|^2 / 2 + gR Rc.
template <typename T>
double mid_scatter_bwd(const MidScatter& ms, double gV, double gR, const T* xp, T* dxp, int64_t N, int64_t D,
                       double c) {
  const double* pp = ms.p.data();
  const double* G = ms.G.data();
  const int64_t CH = chunk_rows(D);
  const Partials part(N, CH, 1);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double gcl = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = xp + i * D;
      T* dr = dxp + i * D;
      double X = 0, ee = 0, eG = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double x = double(xr[d]), e = x - pp[d];
        X = std::fma(x, x, X), ee = std::fma(e, e, ee), eG = std::fma(e, G[d], eG);
      }
      const double den = 1.0 - c * X;
      const double lam = 2.0 / std::max(den, 1e-15);
      const bool live = den > 1e-15;
      const double dlam = live ? ms.S1 + ms.Lt * ee - 2.0 * eG : 0.0;
      const double a = 2.0 * gV * lam, b = live ? gV * dlam * c * lam * lam : -2.0 * gR * c * lam;
      for (int64_t d = 0; d < D; ++d) {
        const double x = double(xr[d]);
        dr[d] = T(double(dr[d]) + a * (ms.Lt * (x - pp[d]) - G[d]) + b * x);
      }
      gcl = std::fma(0.5 * gV * dlam * lam * lam, X, gcl);
    }
    part.row(ci)[0] = gcl;
  });
  return part.sum()[0] + gR * ms.Rc;
}

// The midpoint's D-vector step in double from the sums F (D), L and the scatter's V, R (the sums vector [F, L, V, R]):
// f = F / max(L, 1e-15), r = sqrt(q), m = f / (1 + r), q = 1 - c |f|^2.  Where that plain form is >= 1/4 it loses at
// most two bits (its terms are <= 1 apart by >= 1/4) and is taken as it is ("plain": V and R are not formed, which
// saves the scatter's row pass in the forward and two in the backward, 17-36 % of the layer; session 46); below,
// q = (N^2 + c V + (L + N) R) / L^2 (see MidScatter).  The forward and the backward decide alike from F, L and c.
struct MidVec {
  std::vector<double> f;
  double L, Lc, V, R, r, ff;
  bool plain;
};
MidVec mid_vec(const double* Fs, int64_t N, int64_t D, double c) {
  MidVec o;
  o.L = Fs[D];
  o.Lc = std::max(o.L, 1e-15);
  o.V = Fs[D + 1], o.R = Fs[D + 2];
  o.f.resize(D);
  o.ff = 0;
  for (int64_t d = 0; d < D; ++d) o.f[d] = Fs[d] / o.Lc, o.ff = std::fma(o.f[d], o.f[d], o.ff);
  const double q = std::fma(-c, o.ff, 1.0);
  o.plain = q >= 0.25;
  const double n = double(N);
  o.r = o.plain ? std::sqrt(q) : std::sqrt(n * n + c * o.V + (o.L + n) * o.R) / o.Lc;
  return o;
}

void check_layer_rows(const at::Tensor& x) {
  check_rows("poincare_bn_layer", x);
  TORCH_CHECK(x.is_contiguous(), "poincare_bn_layer: x must be contiguous rows");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_fwd_cpu(const at::Tensor& x_in, const at::Tensor& c_in) {
  check_rows("poincare_midpoint_sums", x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t D = x.size(1);
  at::Tensor F = at::empty({D}, x.options().dtype(at::kDouble));
  at::Tensor L = at::empty({}, x.options().dtype(at::kDouble));
  const double c = c_in.item<double>();
  by_dtype(x.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    mid_fwd_impl<T>(x.data_ptr<T>(), x.size(0), D, c, F.data_ptr<double>(), L.data_ptr<double>());
  });
  return {F.to(x.scalar_type()), L.to(x.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> poincare_midpoint_sums_bwd_cpu(const at::Tensor& gF_in, const at::Tensor& gL_in,
                                                                  const at::Tensor& x_in, const at::Tensor& c_in) {
  check_rows("poincare_midpoint_sums", x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gF = gF_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gF.numel() == x.size(1), "poincare_midpoint_sums: grad of F must have D entries");
  const double gL = gL_in.item<double>(), c = c_in.item<double>();
  at::Tensor gx = at::empty_like(x);
  const double gc = by_dtype(x.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    return mid_bwd_impl<T>(gF.data_ptr<T>(), gL, x.data_ptr<T>(), gx.data_ptr<T>(), x.size(0), x.size(1), c);
  });
  return {gx, at::full({}, gc, x.options().dtype(at::kDouble))};
}

at::Tensor poincare_bn_rows_fwd_cpu(const at::Tensor& u_in, const at::Tensor& M_in, const at::Tensor& b_in,
                                    const at::Tensor& c_in, double eps) {
  const at::Tensor u = u_in.contiguous(), M = M_in.contiguous(), b = b_in.contiguous();
  check_bn_args(u, M, b);
  const double c = c_in.item<double>();
  const at::Tensor v = bn_times_M(u, M).contiguous();
  const bool lanes = bn_lanes(u.size(1));
  at::Tensor y = at::empty_like(u);
  by_dtype(u.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    bn_fwd_impl<T>(v.data_ptr<T>(), y.data_ptr<T>(), u.size(0), bn_ctx(b, c, eps), lanes);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> poincare_bn_rows_bwd_cpu(
    const at::Tensor& g_in, const at::Tensor& u_in, const at::Tensor& M_in, const at::Tensor& b_in,
    const at::Tensor& c_in, double eps) {
  const at::Tensor u = u_in.contiguous(), M = M_in.contiguous(), b = b_in.contiguous();
  check_bn_args(u, M, b);
  const at::Tensor g = g_in.to(u.scalar_type()).contiguous();
  TORCH_CHECK(g.sizes() == u.sizes(), "poincare_bn_rows: grad and u must have one shape");
  const double c = c_in.item<double>();
  const int64_t D = u.size(1);
  const at::Tensor v = bn_times_M(u, M).contiguous();  // recomputed: one small GEMM instead of a saved (N, D)
  at::Tensor gv = at::empty_like(u);
  const auto dopt = u.options().dtype(at::kDouble);
  at::Tensor gb = at::empty({D}, dopt), gk = at::empty({}, dopt);
  const bool lanes = bn_lanes(D);
  by_dtype(u.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    bn_bwd_impl<T>(g.data_ptr<T>(), v.data_ptr<T>(), u.size(0), bn_ctx(b, c, eps), gv.data_ptr<T>(),
                   gb.data_ptr<double>(), gk.data_ptr<double>(), lanes);
  });
  at::Tensor gu = gv, gM = at::empty({0}, u.options());
  if (M.numel()) {
    at::NoGradGuard ng;
    gu = bn_mm_fixed(gv, M.t());
    gM = bn_mm_fixed(u, gv, /*transpose_a=*/true);
  }
  return {gu, gM, gb.to(u.scalar_type()), -gk};  // dc = -dk
}

std::tuple<at::Tensor, at::Tensor, double, at::Tensor> poincare_bn_layer_fwd_cpu(const at::Tensor& x, double c) {
  check_layer_rows(x);
  const int64_t N = x.size(0), D = x.size(1);
  const auto dopt = x.options().dtype(at::kDouble);
  at::Tensor mid = at::empty({D + 3}, dopt);  // F (D), L, V, R: the backward's midpoint step starts from them
  double* Fp = mid.data_ptr<double>();
  const bool f64 = x.scalar_type() == at::kDouble;
  const bool lanes = bn_lanes(D);
  std::unique_ptr<double[]> X(new double[N]);  // |x_i|^2 from the sums pass, for the stats pass
  by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    mid_fwd_impl<T>(x.data_ptr<T>(), N, D, c, Fp, Fp + D, X.get(), lanes);
    Fp[D + 1] = Fp[D + 2] = 0.0;  // V, R: formed only where the plain root cancels (mid_vec)
    if (!mid_vec(Fp, N, D, c).plain) {
      const MidScatter ms = mid_scatter<T>(x.data_ptr<T>(), N, D, c, Fp, Fp[D]);
      Fp[D + 1] = ms.V, Fp[D + 2] = ms.R;
    }
  });
  const MidVec mv = mid_vec(Fp, N, D, c);
  at::Tensor m = at::empty({D}, x.options());
  std::vector<double> md(D);  // m as the layer's dtype rounds it: the logmap runs at the returned point
  double mm = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double v = mv.f[d] / (1.0 + mv.r);
    if (f64) {
      m.data_ptr<double>()[d] = v, md[d] = v;
    } else {
      m.data_ptr<float>()[d] = float(v), md[d] = double(float(v));
    }
    mm = std::fma(md[d], md[d], mm);
  }
  at::Tensor u = at::empty_like(x);
  const double S = by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    return bn_log_fwd_impl<T>(x.data_ptr<T>(), md.data(), X.get(), u.data_ptr<T>(), N, D, mm, -c, lanes);
  });
  return {u, m, S, mid};
}

namespace {

// poincare_bn_layer_bwd_cpu's body on gu (x's dtype, contiguous rows) and the D-vectors m, [F, L, V, R], gm in double.
// fill: writes gu's rows inside the reduction pass (bn_log_bwd_red), gu then only allocated.
std::tuple<at::Tensor, double> bn_layer_bwd(const at::Tensor& gu, const at::Tensor& x, const double* mp,
                                            const double* Fp, const double* gmp, double c,
                                            const RowFill* fill = nullptr) {
  const int64_t N = x.size(0), D = x.size(1);
  double mm = 0;
  for (int64_t d = 0; d < D; ++d) mm = std::fma(mp[d], mp[d], mm);
  std::unique_ptr<double[]> cfp(new double[4 * N]);  // written row by row: no zero-fill pass
  double* cf = cfp.get();
  std::vector<double> pm(D);
  double sm = 0, sk = 0;
  const bool f64 = x.scalar_type() == at::kDouble;
  const bool lanes = bn_lanes(D);
  by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    bn_log_bwd_red<T>(gu.data_ptr<T>(), x.data_ptr<T>(), mp, N, D, mm, -c, cf, pm.data(), &sm, &sk, lanes, fill);
  });
  // the total gm (the transport's, the logmap's), then the midpoint's D-vector backward in double
  const MidVec mv = mid_vec(Fp, N, D, c);
  std::vector<double> gm(D), gF(D);
  double gmf = 0;
  for (int64_t d = 0; d < D; ++d) gm[d] = std::fma(sm, mp[d], gmp[d] + pm[d]), gmf = std::fma(gm[d], mv.f[d], gmf);
  const double opr = 1.0 + mv.r, gq = -gmf / (2.0 * mv.r * opr * opr);  // d/dq of m = f / (1 + sqrt(q))
  // the plain root q = 1 - c |f|^2 takes its gradient through f; the scatter form through L, V and R (not through f:
  // that chain, 1 - c <f, x_i> - q, cancels as q did)
  const double gqf = mv.plain ? -2.0 * c * gq : 0.0;
  double gFf = 0;
  for (int64_t d = 0; d < D; ++d) {
    gF[d] = std::fma(gqf, mv.f[d], gm[d] / opr) / mv.Lc;
    gFf = std::fma(gF[d], mv.f[d], gFf);
  }
  const double gLq = mv.plain ? 0.0 : gq * (mv.R / mv.Lc - 2.0 * mv.r * mv.r) / mv.Lc;
  const double gL = mv.L > 1e-15 ? -gFf + gLq : 0.0;
  const double gV = gq * c / (mv.Lc * mv.Lc), gR = gq * (mv.L + double(N)) / (mv.Lc * mv.Lc);
  at::Tensor dx = at::empty_like(x);
  const double gc3 = by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    const double g = bn_log_bwd_dx<T>(gu.data_ptr<T>(), x.data_ptr<T>(), mp, cf, gF.data(), gL, c, dx.data_ptr<T>(),
                                      N, D, lanes);
    if (mv.plain) return g;
    const MidScatter ms = mid_scatter<T>(x.data_ptr<T>(), N, D, c, Fp, Fp[D]);
    return g + mid_scatter_bwd<T>(ms, gV, gR, x.data_ptr<T>(), dx.data_ptr<T>(), N, D, c);
  });
  const double gcq = mv.plain ? -gq * mv.ff : gq * mv.V / (mv.Lc * mv.Lc);
  return {dx, -sk + gc3 + gcq};  // dc = -dk of the logmap + the midpoint's
}

}  // namespace

std::tuple<at::Tensor, double> poincare_bn_layer_bwd_cpu(const at::Tensor& gu_in, const at::Tensor& x,
                                                         const at::Tensor& m_in, const at::Tensor& mid,
                                                         const at::Tensor& gm_in, double c) {
  check_layer_rows(x);
  const int64_t D = x.size(1);
  const at::Tensor gu = gu_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gu.sizes() == x.sizes(), "poincare_bn_layer: grad of u and x must have one shape");
  TORCH_CHECK(m_in.numel() == D && gm_in.numel() == D && mid.numel() == D + 3 && mid.scalar_type() == at::kDouble,
              "poincare_bn_layer: m, its grad (D,) and the sums (D + 3, float64) must match x");
  const at::Tensor md_t = m_in.to(at::kDouble).contiguous(), gm_t = gm_in.to(at::kDouble).contiguous();
  const at::Tensor mid_c = mid.contiguous();
  return bn_layer_bwd(gu, x, md_t.data_ptr<double>(), mid_c.data_ptr<double>(), gm_t.data_ptr<double>(), c);
}

// ---------------------------------------------------------------- the whole training layer in two calls
// BnLayerFn's forward and backward (geoops/poincare.py) as one C++ call each: b = expmap0(bias), the layer's midpoint
// / logmap pass (poincare_bn_layer_fwd_cpu), the transport's scalar chain and M = alpha I + AF^T V AF (AF = [b; b - m],
// V = 2 alpha W / d, 2 x 2) in double, v = u M (one GEMM), the row op; backward: the row op's backward on the saved
// v, gM = u^T gv (GEMM), the transport's backward in double (the adjoints of the 2 x 2 algebra and of the scalar
// chain, bn_transport_bwd), gu = gv M^T + 2 gS u (one addmm), the layer's backward, expmap0's backward to bias.
// Instead of ~20 small aten calls per direction (stack, Gram, tolist, tensor, addmm, ...) and the separate expmap0
// Function.
namespace {

// The transport's scalars and V, in double; kept for the backward in a float64 tensor of kTrN entries.  Rows
// [a; f] = [b; b - m] (session 44: geoopt's rows [b; -m] and d = 1 - 2k<b, -m> + k^2 |b|^2 |m|^2 cancel for b near m
// near the boundary, 2e-5 off in float64; the same map in these rows, exactly equal, has no cancelling sum, see
// geoops/poincare.py's _transport_matrix): a2 = |b|^2, f2 = |b - m|^2 (summed from the differences), e2 = |m|^2,
// k = -c, S, w (weight), n, eps, q = 1 + k e2, p = 1 + k a2, lam = 2 / max(q, 1e-15), var = lam^2 S / n,
// s = sqrt(w / (var + eps)), ratio = p / q, alpha = s ratio, d = p q - k f2, dc = max(d, 1e-15),
// W = ((-k^2 f2, k p), (-k q + k^2 f2, -k^2 a2)), V = 2 alpha W / dc; M = alpha I + [a; f]^T V [a; f].
struct BnTransport {
  double a2, f2, e2, k, S, w, n, eps, q, p, lam, var, s, ratio, alpha, d, dc, W[2][2], V[2][2];
};
constexpr int64_t kTrN = sizeof(BnTransport) / sizeof(double);

BnTransport bn_transport(const double* b, const double* m, int64_t D, double S, double w, double c, double n,
                         double eps) {
  BnTransport t;
  t.a2 = t.f2 = t.e2 = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double fd = b[d] - m[d];
    t.a2 = std::fma(b[d], b[d], t.a2), t.f2 = std::fma(fd, fd, t.f2), t.e2 = std::fma(m[d], m[d], t.e2);
  }
  const double k = -c;
  t.k = k, t.S = S, t.w = w, t.n = n, t.eps = eps;
  t.q = 1 + k * t.e2, t.p = 1 + k * t.a2;
  t.lam = 2 / std::max(t.q, 1e-15);
  t.var = t.lam * t.lam * S / n;
  t.s = std::sqrt(w / (t.var + eps));
  t.ratio = t.p / t.q;
  t.alpha = t.s * t.ratio;
  t.d = t.p * t.q - k * t.f2;
  t.dc = std::max(t.d, 1e-15);
  const double kf = k * k * t.f2;
  t.W[0][0] = -kf, t.W[0][1] = k * t.p, t.W[1][0] = kf - k * t.q, t.W[1][1] = -k * k * t.a2;
  const double f = 2 * t.alpha / t.dc;
  for (int r = 0; r < 2; ++r)
    for (int s2 = 0; s2 < 2; ++s2) t.V[r][s2] = f * t.W[r][s2];
  return t;
}

// f = b - m in double (the second row of the transport's rows).
std::vector<double> bn_diff(const std::vector<double>& b, const std::vector<double>& m) {
  std::vector<double> f(b.size());
  for (size_t d = 0; d < b.size(); ++d) f[d] = b[d] - m[d];
  return f;
}

// M = alpha I + [a; f]^T V [a; f] (D x D, double).
std::vector<double> bn_transport_matrix(const BnTransport& t, const double* a, const double* f, int64_t D) {
  std::vector<double> Md(D * D);
  for (int64_t i = 0; i < D; ++i) {
    const double ai = a[i], fi = f[i];
    for (int64_t j = 0; j < D; ++j)
      Md[i * D + j] = (i == j ? t.alpha : 0.0) + ai * (t.V[0][0] * a[j] + t.V[0][1] * f[j]) +
                      fi * (t.V[1][0] * a[j] + t.V[1][1] * f[j]);
  }
  return Md;
}

// All that the transport's backward reads of gM (D x D, double): tr gM, Q = AF gM, R = AF gM^T (rows a = b,
// f = b - m), as one vector [tr, Q_a, Q_f, R_a, R_f] of 4 D + 1 entries (the D x D route: gM formed by rows_gram).
std::vector<double> gm_contract(const double* a, const double* f, const double* gM, int64_t D) {
  std::vector<double> o(4 * D + 1, 0.0);
  double *Q = o.data() + 1, *R = o.data() + 1 + 2 * D;
  for (int64_t i = 0; i < D; ++i) {
    const double ai = a[i], fi = f[i];
    o[0] += gM[i * D + i];
    for (int64_t j = 0; j < D; ++j) {
      const double g = gM[i * D + j];
      Q[j] = std::fma(ai, g, Q[j]), Q[D + j] = std::fma(fi, g, Q[D + j]);
      R[i] = std::fma(a[j], g, R[i]), R[D + i] = std::fma(f[j], g, R[D + i]);
    }
  }
  return o;
}

// The transport's backward from gM's contractions ct = [tr gM, AF gM, AF gM^T] (gm_contract, bn_contract):
// gV = AF gM AF^T = Q AF^T, gAF = V AF gM^T + V^T AF gM, then the scalar chain's adjoints (W, d, the ratio, s,
// var, lam) back to |b|^2, |b - m|^2, |m|^2, k, S and w -> gb, gm (D), gS, gw, gc (f = b - m: its row's gradient
// goes to b and, negated, to m).
void bn_transport_bwd(const BnTransport& t, const double* b, const double* m, const double* ct, int64_t D,
                      double* gb, double* gm, double* gS, double* gw, double* gc) {
  const double *Q = ct + 1, *R = ct + 1 + 2 * D;
  double galpha = ct[0];
  double gV[2][2] = {{0, 0}, {0, 0}};
  for (int64_t j = 0; j < D; ++j) {
    const double aj = b[j], fj = b[j] - m[j];
    gV[0][0] = std::fma(Q[j], aj, gV[0][0]), gV[0][1] = std::fma(Q[j], fj, gV[0][1]);
    gV[1][0] = std::fma(Q[D + j], aj, gV[1][0]), gV[1][1] = std::fma(Q[D + j], fj, gV[1][1]);
  }
  const double k = t.k, k2 = k * k, f = 2 * t.alpha / t.dc;
  double gVW = 0;
  for (int r = 0; r < 2; ++r)
    for (int s2 = 0; s2 < 2; ++s2) gVW += gV[r][s2] * t.W[r][s2];
  galpha += 2 / t.dc * gVW;
  const double gd = t.d > 1e-15 ? -f / t.dc * gVW : 0.0;
  const double gW00 = f * gV[0][0], gW01 = f * gV[0][1], gW10 = f * gV[1][0], gW11 = f * gV[1][1];
  // W00 = -k^2 f2, W01 = k + k^2 a2, W10 = -k - k^2 e2 + k^2 f2, W11 = -k^2 a2; d = p q - k f2
  double gk = gW00 * (-2 * k * t.f2) + gW01 * (1 + 2 * k * t.a2) + gW10 * (-1 - 2 * k * t.e2 + 2 * k * t.f2) +
              gW11 * (-2 * k * t.a2);
  double gf2 = k2 * (gW10 - gW00), ge2 = -k2 * gW10, ga2 = k2 * (gW01 - gW11);
  gk += gd * (t.a2 * t.q + t.p * t.e2 - t.f2);
  ga2 += gd * k * t.q;
  ge2 += gd * k * t.p;
  gf2 -= gd * k;
  const double gs = galpha * t.ratio, gratio = galpha * t.s;
  gk += gratio * (t.a2 / t.q - t.p * t.e2 / (t.q * t.q));
  ga2 += gratio * k / t.q;
  ge2 -= gratio * t.p * k / (t.q * t.q);
  const double ve = t.var + t.eps;
  *gw = t.s > 0 ? gs / (2 * t.s * ve) : INFINITY * gs;
  const double gvar = -gs * t.s / (2 * ve);
  const double glam = gvar * 2 * t.lam * t.S / t.n;
  *gS = gvar * t.lam * t.lam / t.n;
  if (t.q > 1e-15) {
    gk += glam * (-2 * t.e2 / (t.q * t.q));
    ge2 += glam * (-2 * k / (t.q * t.q));
  }
  // gAF = V R + V^T Q, then + the Gram terms: gb = row a + row f + 2 ga2 a + 2 gf2 f, gm = -(row f + 2 gf2 f) + 2 ge2 m
  for (int64_t j = 0; j < D; ++j) {
    const double aj = b[j], fj = b[j] - m[j];
    const double ga = t.V[0][0] * R[j] + t.V[0][1] * R[D + j] + t.V[0][0] * Q[j] + t.V[1][0] * Q[D + j];
    const double gf = t.V[1][0] * R[j] + t.V[1][1] * R[D + j] + t.V[0][1] * Q[j] + t.V[1][1] * Q[D + j] +
                      2 * gf2 * fj;
    gb[j] = ga + 2 * ga2 * aj + gf;
    gm[j] = 2 * ge2 * m[j] - gf;
  }
  *gc = -gk;
}

// b = expmap0(bias) at k = -c in double: tanc(k |bias|^2) bias.
double bn_expmap0(const double* u, int64_t D, double k, double* b) {
  double uu = 0;
  for (int64_t d = 0; d < D; ++d) uu = std::fma(u[d], u[d], uu);
  const double t = geoops::stereo::tanc(k * uu);
  for (int64_t d = 0; d < D; ++d) b[d] = t * u[d];
  return uu;
}

// t's entries in double; float / double vectors (any stride) and contiguous matrices are read in place (no
// float64 copy of the tensor), other dtypes converted.
std::vector<double> to_dvec(const at::Tensor& t) {
  const int64_t n = t.numel();
  const bool flat = t.dim() <= 1 || t.is_contiguous();
  const int64_t st = t.dim() == 1 ? t.stride(0) : 1;
  std::vector<double> o(n);
  if (flat && t.scalar_type() == at::kDouble) {
    const double* p = t.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) o[i] = p[i * st];
  } else if (flat && t.scalar_type() == at::kFloat) {
    const float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) o[i] = double(p[i * st]);
  } else {
    const at::Tensor d = t.to(at::kDouble).contiguous();
    std::copy(d.data_ptr<double>(), d.data_ptr<double>() + n, o.begin());
  }
  return o;
}

// A new tensor of `opt`'s dtype (float or double) with shape `sizes` holding v rounded to that dtype; r (when given)
// gets the rounded values back in double.
at::Tensor from_dvec(const std::vector<double>& v, at::IntArrayRef sizes, const at::TensorOptions& opt,
                     std::vector<double>* r = nullptr) {
  at::Tensor t = at::empty(sizes, opt);
  const int64_t n = int64_t(v.size());
  if (r) r->resize(n);
  if (t.scalar_type() == at::kDouble) {
    double* p = t.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = v[i];
    if (r) *r = v;
  } else {
    float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      p[i] = float(v[i]);
      if (r) (*r)[i] = double(p[i]);
    }
  }
  return t;
}

// ---- the backward's two small GEMMs as row passes (GEOOPS_POINCARE_BN_SMALL_GEMM=0, read per call, forces the fixed-
// chunk GEMMs bn_mm_fixed (a b, a^T b), what D > kBnLaneMaxD runs, so that the tests compare the two).  At D <= kBnLaneMaxD: gu = gv M^T + 2 gS
// u (MKL's addmm took ~50 us at 4096 x 8, its beta pass) -- each output element beta u (one rounding), then an
// explicit std::fma chain in double over d in order, rounded once to the dtype (at least as accurate as the float
// GEMM), rows independent; and gM = u^T gv in double in fixed row chunks (below): both bit-identical whatever the
// alignment and the thread count.  The forward's v = u M stays MKL's (rows independent; a row pass in double measured
// ~1.4x slower than its float GEMM).
inline bool bn_small_gemm(int64_t D) { return D <= kBnLaneMaxD && !knobs::off("GEOOPS_POINCARE_BN_SMALL_GEMM"); }

// Rows of T <-> vectors of doubles (L = Vec::size() entries from p).
template <typename T>
inline vecmath::Vec load_dv(const T* p) {
  using vecmath::Vec;
  if constexpr (std::is_same_v<T, double>) {
    return Vec::loadu(p);
#if defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (true) {  // 8 floats widened in one instruction (exact)
    return Vec(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#elif defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (true) {  // 4 floats widened in one instruction (exact)
    return Vec(_mm256_cvtps_pd(_mm_loadu_ps(p)));
#endif
  } else {
    alignas(64) double t[Vec::size()];
    for (int l = 0; l < Vec::size(); ++l) t[l] = double(p[l]);
    return Vec::loadu(t);
  }
}
template <typename T>
inline void store_dv(T* p, const vecmath::Vec& v) {
  using vecmath::Vec;
  if constexpr (std::is_same_v<T, double>) {
    v.store(p);
#if defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (true) {  // rounded to nearest as T(double) (the MXCSR's mode)
    _mm256_storeu_ps(p, _mm512_cvtpd_ps(v));
#elif defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (true) {  // rounded to nearest as T(double) (the MXCSR's mode)
    _mm_storeu_ps(p, _mm256_cvtpd_ps(v));
#endif
  } else {
    alignas(64) double t[Vec::size()];
    v.store(t);
    for (int l = 0; l < Vec::size(); ++l) p[l] = T(t[l]);
  }
}

// out_i = beta add_i + a_i Mat for rows a (N, D), Mat (D, D) double row-major; add may be null (beta unused).
// Every output element: beta add (one rounding), then an fma chain over d in order.  DD = D a multiple of the
// vector width (8, 16): each row's outputs in NV vectors of doubles (registers), else scalar loops.
template <typename T, int DD>
void rows_times_fixed(const T* a, const double* Mat, const T* add, double beta, T* out, int64_t i0, int64_t i1,
                      int64_t Drt) {
  using vecmath::Vec;
  constexpr int L = Vec::size();
  const int64_t D = DD ? DD : Drt;
  {
    if constexpr (DD > 0 && DD % L == 0) {
      constexpr int NV = DD / L;
      const Vec vb(beta);
      for (int64_t i = i0; i < i1; ++i) {
        Vec acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = add ? vb * load_dv(add + i * DD + v * L) : Vec(0.0);
        alignas(64) double ar[DD];  // the row widened once (broadcast loads below)
        for (int v = 0; v < NV; ++v) load_dv(a + i * DD + v * L).store(ar + v * L);
        for (int d = 0; d < DD; ++d) {
          const Vec ad = Vec(ar[d]);
          for (int v = 0; v < NV; ++v) acc[v] = at::vec::fmadd(ad, Vec::loadu(Mat + d * DD + v * L), acc[v]);
        }
        for (int v = 0; v < NV; ++v) store_dv(out + i * DD + v * L, acc[v]);
      }
    } else {
      double acc[kBnLaneMaxD];
      for (int64_t i = i0; i < i1; ++i) {
        const T* ar = a + i * D;
        for (int64_t e = 0; e < D; ++e) acc[e] = add ? beta * double(add[i * D + e]) : 0.0;
        for (int64_t d = 0; d < D; ++d)
          for (int64_t e = 0; e < D; ++e) acc[e] = std::fma(double(ar[d]), Mat[d * D + e], acc[e]);
        for (int64_t e = 0; e < D; ++e) out[i * D + e] = T(acc[e]);
      }
    }
  }
}

// rows [i0, i1) of out (rows_times_fixed at D = 8, 16, else its scalar loops)
template <typename T>
void rows_times_range(const T* a, const double* Mat, const T* add, double beta, T* out, int64_t i0, int64_t i1,
                      int64_t D) {
  with_row_width(D, [&](auto W) { rows_times_fixed<T, W>(a, Mat, add, beta, out, i0, i1, D); });
}

// out = a^T g (D x D, double) for rows a, g (N, D): fixed row chunks, each chunk's partial D x D in a Partials
// row, the chunks added in order; within a chunk every entry an fma chain over its rows in order.  DD = D a
// multiple of the vector width: columns in blocks of one vector, the block's D accumulators in registers (one
// sweep over the chunk's rows per block), else scalar loops on the Partials row.  (MKL's at::mm(u.t(), gv) split
// its reduction by the thread count: the layer's dx differed in the last bit between 1 and 2 threads.)
template <typename T, int DD>
void rows_gram_fixed(const T* a, const T* g, int64_t N, int64_t Drt, double* out) {
  using vecmath::Vec;
  constexpr int L = Vec::size();
  const int64_t D = DD ? DD : Drt;
  const int64_t CH = chunk_rows(D * D);
  const Partials part(N, CH, D * D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* p = part.row(ci);
    if constexpr (DD > 0 && DD % L == 0) {
      for (int e0 = 0; e0 < DD; e0 += L) {
        Vec acc[DD];
        for (int d = 0; d < DD; ++d) acc[d] = Vec(0.0);
        for (int64_t i = i0; i < i1; ++i) {
          const Vec gv = load_dv(g + i * DD + e0);
          alignas(64) double ar[DD];  // the row widened once (broadcast loads below)
          for (int v = 0; v < DD / L; ++v) load_dv(a + i * DD + v * L).store(ar + v * L);
          for (int d = 0; d < DD; ++d) acc[d] = at::vec::fmadd(Vec(ar[d]), gv, acc[d]);
        }
        for (int d = 0; d < DD; ++d) acc[d].store(p + d * DD + e0);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t d = 0; d < D; ++d)
          for (int64_t e = 0; e < D; ++e)
            p[d * D + e] = std::fma(double(a[i * D + d]), double(g[i * D + e]), p[d * D + e]);
    }
  });
  const std::vector<double> s = part.sum();
  std::copy(s.begin(), s.end(), out);
}

template <typename T>
void rows_gram(const T* a, const T* g, int64_t N, int64_t D, double* out) {
  with_row_width(D, [&](auto W) { rows_gram_fixed<T, W>(a, g, N, D, out); });
}

// ---- session 23: gM's contractions without gM, and gu = gv M^T from M's rank 2 (GEOOPS_POINCARE_BN_CONTRACT=0,
// read per call: the D x D route above, rows_gram + gm_contract and rows_times_range).  bn_transport_bwd reads of
// gM = u^T gv only tr gM, AE gM and AE gM^T (AE = [b; e], e = f = b - m), and per row n these are
//   tr gM = sum_n <u_n, gv_n>,  (AE gM)_a = sum_n <a, u_n> gv_n,  (AE gM^T)_a = sum_n <a, gv_n> u_n  (a = b, e):
// four dots and five D-vector multiply-adds per row (9 D instead of D^2).  Two passes per block of kBnBlock rows:
// (1) the dots on lanes of rows (one row per lane, each an fma chain over d in order from 0; columns from tiles of
// kTile float rows, bn_tiles, or gathers, Cols: every other dtype / D / ISA and the tails -- the same values either
// way), (2) the multiply-adds per row, contiguous (each accumulator element an fma chain over the chunk's rows in
// order), the chunks added in order (Partials): the same bits for any thread count.  The per-row <b, gv_n>,
// <e, gv_n> are kept (tg, 2 x N) for gu:
//   gu_n = gv_n M^T + 2 gS u_n = alpha gv_n + c0_n b + c1_n e + 2 gS u_n,  (c0, c1) = (<b, gv_n>, <e, gv_n>) V^T
// (M = alpha I + AE^T V AE in double: the adjoint of the unrounded M; the forward multiplies by M rounded to the
// dtype, which differs from it by one rounding of each entry -- in float32 ~6e-8 relative, at gu's own rounding).
// Default for float32 at D > 8 only: at D <= 8 the 9 D multiply-adds per row are not fewer than D^2, and the two
// passes measured no faster than rows_gram + the rounded M's product (4096 x 8: 0.97x; with rows_gram kept for gM
// and only gu's rank-2 form, 1.01x -- not kept); float64 rows enter pass (1) by gathers (no tiles of doubles),
// 0.86x at 32768 x 16.  GEOOPS_POINCARE_BN_CONTRACT=1: this route at every D <= kBnLaneMaxD and dtype (what the
// tests compare at D = 5, 8 and in float64); =0: never.
inline bool bn_contract_on(int64_t D, bool f64) {
  const char* e = knobs::get("GEOOPS_POINCARE_BN_CONTRACT");
  return bn_small_gemm(D) && (e && e[0] == '1' ? true : e && e[0] == '0' ? false : D > 8 && !f64);
}

// Pass (1) on one group of kLanes rows: <b, u>, <e, u> into s[0][.], s[1][.], <b, gv>, <e, gv> into t0, t1 (n <=
// kLanes rows stored).
template <typename LoadU, typename LoadG>
inline void ct_dots(const LoadU& lu, const LoadG& lg, const double* b, const double* e, int64_t D, double* s0,
                    double* s1, double* t0, double* t1, int64_t n) {
  using vecmath::Vec;
  Vec sa(0.0), se(0.0), ta(0.0), te(0.0);
  for (int64_t d = 0; d < D; ++d) {
    const Vec uc = lu(d), gc = lg(d), vb(b[d]), ve(e[d]);
    sa = at::vec::fmadd(vb, uc, sa), se = at::vec::fmadd(ve, uc, se);
    ta = at::vec::fmadd(vb, gc, ta), te = at::vec::fmadd(ve, gc, te);
  }
  if (n == kLanes) {
    sa.store(s0), se.store(s1), ta.store(t0), te.store(t1);
  } else {
    alignas(64) double r[4][kLanes];
    sa.store(r[0]), se.store(r[1]), ta.store(r[2]), te.store(r[3]);
    for (int64_t l = 0; l < n; ++l) s0[l] = r[0][l], s1[l] = r[1][l], t0[l] = r[2][l], t1[l] = r[3][l];
  }
}

// Pass (1) on the whole tiles of kTile float rows of the block [b0, b0 + n); returns the rows done.
template <int DD>
int64_t ct_dots_tiles(const float* u, const float* g, const double* b, const double* e, int64_t b0, int64_t n,
                      double (&s)[2][kBnBlock], double* tg, int64_t N) {
  alignas(64) float us[DD][kTile], gs[DD][kTile];
  int64_t j = 0;
  for (; j + kTile <= n; j += kTile) {
    tile16<DD>(u + (b0 + j) * DD, us);
    tile16<DD>(g + (b0 + j) * DD, gs);
    for (int h = 0; h < 2; ++h) {
      const int64_t o = j + kHalf * h;
      ct_dots([&](int64_t d) { return tile_half(us[d], h); }, [&](int64_t d) { return tile_half(gs[d], h); }, b, e,
              DD, s[0] + o, s[1] + o, tg + b0 + o, tg + N + b0 + o, kLanes);
    }
  }
  return j;
}

// Pass (2) on the block's rows: acc = [sum <u, gv> per element (D) | Q_a | Q_e | R_a | R_e] (5 D) +=
// (u_n * gv_n, s0_n gv_n, s1_n gv_n, t0_n u_n, t1_n u_n).  DD = D a multiple of the vector width: registers.
template <typename T, int DD>
void ct_rows(const T* u, const T* g, const double (&s)[2][kBnBlock], const double* tg, int64_t N, int64_t b0,
             int64_t n, int64_t Drt, double* acc) {
  using vecmath::Vec;
  constexpr int L = Vec::size();
  if constexpr (DD > 0 && DD % L == 0) {
    constexpr int NV = DD / L;
    Vec a[5][NV];
    for (int w = 0; w < 5; ++w)
      for (int v = 0; v < NV; ++v) a[w][v] = Vec::loadu(acc + w * DD + v * L);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = b0 + j;
      const Vec s0(s[0][j]), s1(s[1][j]), t0(tg[i]), t1(tg[N + i]);
      for (int v = 0; v < NV; ++v) {
        const Vec uv = load_dv(u + i * DD + v * L), gv = load_dv(g + i * DD + v * L);
        a[0][v] = at::vec::fmadd(uv, gv, a[0][v]);
        a[1][v] = at::vec::fmadd(s0, gv, a[1][v]), a[2][v] = at::vec::fmadd(s1, gv, a[2][v]);
        a[3][v] = at::vec::fmadd(t0, uv, a[3][v]), a[4][v] = at::vec::fmadd(t1, uv, a[4][v]);
      }
    }
    for (int w = 0; w < 5; ++w)
      for (int v = 0; v < NV; ++v) a[w][v].store(acc + w * DD + v * L);
  } else {
    const int64_t D = Drt;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = b0 + j;
      const double s0 = s[0][j], s1 = s[1][j], t0 = tg[i], t1 = tg[N + i];
      for (int64_t d = 0; d < D; ++d) {
        const double uv = double(u[i * D + d]), gv = double(g[i * D + d]);
        acc[d] = std::fma(uv, gv, acc[d]);
        acc[D + d] = std::fma(s0, gv, acc[D + d]), acc[2 * D + d] = std::fma(s1, gv, acc[2 * D + d]);
        acc[3 * D + d] = std::fma(t0, uv, acc[3 * D + d]), acc[4 * D + d] = std::fma(t1, uv, acc[4 * D + d]);
      }
    }
  }
}

// ct = [tr gM, AE gM, AE gM^T] of gM = u^T gv (4 D + 1 doubles) and tg = (<b, gv_n>, <e, gv_n>) (2 x N).
template <typename T>
void bn_contract(const T* u, const T* g, const double* b, const double* e, int64_t N, int64_t D, double* ct,
                 double* tg) {
  using vecmath::Vec;
  const int64_t CH = chunk_rows(9 * D);
  const Partials part(N, CH, 5 * D);
  const bool tiles = bn_tiles<T>(D);
  for_row_chunks(N, CH, [&](int64_t i0, int64_t i1, int64_t ci) {
    double* p = part.row(ci);
    alignas(64) double s[2][kBnBlock];
    for (int64_t b0 = i0; b0 < i1; b0 += kBnBlock) {
      const int64_t n = std::min(kBnBlock, i1 - b0);
      int64_t j = 0;
      if constexpr (kBnTiles<T>) {
        if (tiles) j = with_tile_width(D, [&](auto W) { return ct_dots_tiles<W>(u, g, b, e, b0, n, s, tg, N); });
      }
      for (; j < n; j += kLanes) {  // gathers
        const int64_t cnt = std::min(kLanes, n - j);
        const Cols<T> cl(D, cnt);
        const T* ur = u + (b0 + j) * D;
        const T* gr = g + (b0 + j) * D;
        ct_dots([&](int64_t d) { return cl.load(ur + d); }, [&](int64_t d) { return cl.load(gr + d); }, b, e, D,
                s[0] + j, s[1] + j, tg + b0 + j, tg + N + b0 + j, cnt);
      }
      with_row_width(D, [&](auto W) { ct_rows<T, W>(u, g, s, tg, N, b0, n, D, p); });
    }
  });
  const std::vector<double> a = part.sum();
  ct[0] = 0;
  for (int64_t d = 0; d < D; ++d) ct[0] += a[d];
  std::copy(a.begin() + D, a.end(), ct + 1);
}

// gu's rows [i0, i1): alpha gv_n + c0_n b + c1_n e + beta u_n (each element one fma chain in double, rounded once;
// DD = D a multiple of the vector width: vectors of doubles, else scalar loops -- the same expressions).
template <typename T, int DD>
void gu_rank2_fixed(const T* gv, const T* u, const double* tg, int64_t N, const BnTransport& t, const double* b,
                    const double* e, double beta, T* gu, int64_t i0, int64_t i1, int64_t Drt) {
  using vecmath::Vec;
  constexpr int L = Vec::size();
  const double al = t.alpha;
  if constexpr (DD > 0 && DD % L == 0) {
    constexpr int NV = DD / L;
    Vec vb[NV], ve[NV];
    for (int v = 0; v < NV; ++v) vb[v] = Vec::loadu(b + v * L), ve[v] = Vec::loadu(e + v * L);
    const Vec val(al), vbeta(beta);
    for (int64_t i = i0; i < i1; ++i) {
      const Vec c0(std::fma(t.V[0][0], tg[i], t.V[0][1] * tg[N + i]));
      const Vec c1(std::fma(t.V[1][0], tg[i], t.V[1][1] * tg[N + i]));
      for (int v = 0; v < NV; ++v) {
        const Vec r = at::vec::fmadd(c1, ve[v], vbeta * load_dv(u + i * DD + v * L));
        store_dv(gu + i * DD + v * L, at::vec::fmadd(val, load_dv(gv + i * DD + v * L), at::vec::fmadd(c0, vb[v], r)));
      }
    }
  } else {
    const int64_t D = Drt;
    for (int64_t i = i0; i < i1; ++i) {
      const double c0 = std::fma(t.V[0][0], tg[i], t.V[0][1] * tg[N + i]);
      const double c1 = std::fma(t.V[1][0], tg[i], t.V[1][1] * tg[N + i]);
      for (int64_t d = 0; d < D; ++d)
        gu[i * D + d] = T(std::fma(al, double(gv[i * D + d]),
                                   std::fma(c0, b[d], std::fma(c1, e[d], beta * double(u[i * D + d])))));
    }
  }
}

template <typename T>
void gu_rank2_rows(const T* gv, const T* u, const double* tg, int64_t N, const BnTransport& t, const double* b,
                   const double* e, double beta, T* gu, int64_t i0, int64_t i1, int64_t D) {
  with_row_width(D, [&](auto W) { gu_rank2_fixed<T, W>(gv, u, tg, N, t, b, e, beta, gu, i0, i1, D); });
}

}  // namespace

std::vector<at::Tensor> poincare_bn_train_fwd_cpu(const at::Tensor& x, const at::Tensor& bias, double w, double c,
                                                  double n, double eps, double eps_proj) {
  check_layer_rows(x);
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(bias.numel() == D, "poincare_bn_train: bias must have D entries");
  const auto [u, m, S, mid] = poincare_bn_layer_fwd_cpu(x, c);
  const std::vector<double> bu = to_dvec(bias);
  std::vector<double> bd(D), br;
  bn_expmap0(bu.data(), D, -c, bd.data());
  const at::Tensor b = from_dvec(bd, {D}, x.options(), &br);  // br, md: b and m as the layer's dtype rounds them
  const std::vector<double> md = to_dvec(m);
  const BnTransport t = bn_transport(br.data(), md.data(), D, S, w, c, n, eps);
  const std::vector<double> Md = bn_transport_matrix(t, br.data(), bn_diff(br, md).data(), D);
  const at::Tensor M = from_dvec(Md, {D, D}, x.options());
  const bool f64 = x.scalar_type() == at::kDouble;
  const at::Tensor v = bn_times_M(u, M).contiguous();  // D <= 16: a float row pass (session 20), else MKL
  at::Tensor y = at::empty_like(u);
  const BnRowCtx cx = bn_ctx_d(br, c, eps_proj);
  const bool lanes = bn_lanes(D);
  by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    bn_fwd_impl<T>(v.data_ptr<T>(), y.data_ptr<T>(), N, cx, lanes);
  });
  at::Tensor tr = at::empty({kTrN}, x.options().dtype(at::kDouble));
  std::memcpy(tr.data_ptr<double>(), &t, sizeof(BnTransport));
  const at::Tensor var = from_dvec({t.var}, {}, x.options());
  return {y, var, m, u, v, M, b, mid, tr};
}

std::vector<at::Tensor> poincare_bn_transport_cpu(const at::Tensor& b, const at::Tensor& m, const at::Tensor& gM,
                                                  double S, double w, double c, double n, double eps) {
  const int64_t D = b.numel();
  TORCH_CHECK(m.numel() == D && gM.numel() == D * D, "poincare_bn_transport: b, m (D,) and gM (D, D) expected");
  const std::vector<double> bd = to_dvec(b), md = to_dvec(m), gMd = to_dvec(gM.contiguous());
  const BnTransport t = bn_transport(bd.data(), md.data(), D, S, w, c, n, eps);
  const std::vector<double> fd = bn_diff(bd, md);
  const auto opt = b.options().dtype(at::kDouble);
  const at::Tensor M = from_dvec(bn_transport_matrix(t, bd.data(), fd.data(), D), {D, D}, opt);
  const std::vector<double> ct = gm_contract(bd.data(), fd.data(), gMd.data(), D);
  std::vector<double> gb(D), gm(D), gs(3);
  bn_transport_bwd(t, bd.data(), md.data(), ct.data(), D, gb.data(), gm.data(), &gs[0], &gs[1], &gs[2]);
  return {M, from_dvec(gb, {D}, opt), from_dvec(gm, {D}, opt), from_dvec(gs, {3}, opt)};
}

std::vector<at::Tensor> poincare_bn_train_bwd_cpu(const at::Tensor& gy_in, const at::Tensor& x, const at::Tensor& bias,
                                                  const at::Tensor& m, const at::Tensor& mid, const at::Tensor& u,
                                                  const at::Tensor& v, const at::Tensor& M, const at::Tensor& b,
                                                  const at::Tensor& tr, double c, double eps_proj) {
  check_layer_rows(x);
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(tr.numel() == kTrN && tr.scalar_type() == at::kDouble && tr.is_contiguous(),
              "poincare_bn_train: bad saved transport");
  TORCH_CHECK(mid.numel() == D + 3 && mid.scalar_type() == at::kDouble && mid.is_contiguous(),
              "poincare_bn_train: bad saved sums");
  const bool f64 = x.scalar_type() == at::kDouble;
  const at::Tensor gy = gy_in.scalar_type() == x.scalar_type() && gy_in.is_contiguous()
                            ? gy_in
                            : gy_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gy.sizes() == x.sizes(), "poincare_bn_train: grad and x must have one shape");
  BnTransport t;
  std::memcpy(&t, tr.data_ptr<double>(), sizeof(BnTransport));
  // the row op's backward on the saved v (identity M)
  at::Tensor gv = at::empty_like(x);
  std::vector<double> gb1(D);
  double gk1 = 0;
  const std::vector<double> br = to_dvec(b), md = to_dvec(m);
  const BnRowCtx cx = bn_ctx_d(br, c, eps_proj);
  const bool lanes = bn_lanes(D);
  by_dtype(f64, [&](auto z) {
    using T = decltype(z);
    bn_bwd_impl<T>(gy.data_ptr<T>(), v.data_ptr<T>(), N, cx, gv.data_ptr<T>(), gb1.data(), &gk1, lanes);
  });
  at::NoGradGuard ng;
  const bool small = bn_small_gemm(D), contract = bn_contract_on(D, f64);
  std::vector<double> ct, tg;
  const std::vector<double> fd = bn_diff(br, md);  // the transport's second row f = b - m
  if (contract) {  // session 23: gM's contractions on lanes of rows, no gM
    ct.resize(4 * D + 1);
    tg.resize(2 * N);
    by_dtype(f64, [&](auto z) {
      using T = decltype(z);
      bn_contract<T>(u.data_ptr<T>(), gv.data_ptr<T>(), br.data(), fd.data(), N, D, ct.data(), tg.data());
    });
  } else {
    std::vector<double> gMd(D * D);
    if (!small)
      gMd = to_dvec(bn_mm_fixed(u, gv, /*transpose_a=*/true));  // read in place (no float64 copy)
    else
      by_dtype(f64, [&](auto z) {
        using T = decltype(z);
        rows_gram<T>(u.data_ptr<T>(), gv.data_ptr<T>(), N, D, gMd.data());
      });
    ct = gm_contract(br.data(), fd.data(), gMd.data(), D);
  }
  std::vector<double> gb2(D), gm(D);
  double gS, gw, gc2;
  bn_transport_bwd(t, br.data(), md.data(), ct.data(), D, gb2.data(), gm.data(), &gS, &gw, &gc2);
  at::Tensor gu;
  RowFill fill;
  if (!small) {
    gu = bn_mm_fixed(gv, M.t()).add_(u, 2 * gS);  // gv M^T + 2 gS u
  } else if (contract) {
    gu = at::empty_like(x);
    fill = [&, beta = 2 * gS](int64_t i0, int64_t i1) {
      by_dtype(f64, [&](auto z) {
        using T = decltype(z);
        gu_rank2_rows<T>(gv.data_ptr<T>(), u.data_ptr<T>(), tg.data(), N, t, br.data(), fd.data(), beta,
                         gu.data_ptr<T>(), i0, i1, D);
      });
    };
    if (knobs::off("GEOOPS_POINCARE_BN_TILES")) {
      at::parallel_for(0, N, grain(4 * D), [&](int64_t i0, int64_t i1) { fill(i0, i1); });
      fill = nullptr;
    }
  } else {
    const std::vector<double> Mv = to_dvec(M);
    std::vector<double> Mt(D * D);
    for (int64_t i = 0; i < D; ++i)
      for (int64_t j = 0; j < D; ++j) Mt[j * D + i] = Mv[i * D + j];
    gu = at::empty_like(x);
    fill = [&, beta = 2 * gS, Mt = std::move(Mt)](int64_t i0, int64_t i1) {
      by_dtype(f64, [&](auto z) {
        using T = decltype(z);
        rows_times_range<T>(gv.data_ptr<T>(), Mt.data(), u.data_ptr<T>(), beta, gu.data_ptr<T>(), i0, i1, D);
      });
    };
    // session 22: gu's rows written inside the layer backward's reduction pass, block by block (bn_log_bwd_red);
    // GEOOPS_POINCARE_BN_TILES=0: one separate pass first (as before)
    if (knobs::off("GEOOPS_POINCARE_BN_TILES")) {
      at::parallel_for(0, N, grain(D * D), [&](int64_t i0, int64_t i1) { fill(i0, i1); });
      fill = nullptr;
    }
  }
  const auto [dx, gc3] = bn_layer_bwd(gu, x, md.data(), mid.data_ptr<double>(), gm.data(), c, fill ? &fill : nullptr);
  // b = expmap0(bias): gbias = t g + 2 (<g, u> tanc'(z) k) u, dk = <g, u> tanc'(z) |u|^2 (z = k |u|^2), with
  // g = gb1 + gb2 rounded to the dtype (as the composition's b gradient)
  const std::vector<double> bu = to_dvec(bias);
  std::vector<double> g(D);
  double uu = 0, gu_ = 0;
  for (int64_t d = 0; d < D; ++d) {
    g[d] = gb1[d] + gb2[d];
    if (!f64) g[d] = double(float(g[d]));
    uu = std::fma(bu[d], bu[d], uu), gu_ = std::fma(g[d], bu[d], gu_);
  }
  const double k = -c, z = k * uu, tz = geoops::stereo::tanc(z), z_ = gu_ * geoops::stereo::tanc_d(z, tz);
  std::vector<double> gbias(D);
  for (int64_t d = 0; d < D; ++d) gbias[d] = tz * g[d] + 2 * z_ * k * bu[d];
  const double gc4 = -(z_ * uu);  // dc = -dk
  // dweight and dc rounded to the dtype here (BnLayerFn's .to() calls before)
  return {dx, from_dvec(gbias, {D}, x.options()), from_dvec({gw}, {}, x.options()),
          from_dvec({-gk1 + (gc2 + gc3) + gc4}, {}, x.options())};
}

// ---------------------------------------------------------------- the running statistics' update
// batch_norm's training update of its running buffers in place, in one call (instead of ~8 small aten calls):
// rm <- geodesic(t, rm, m) as A rm + B (m - rm), the coefficients from |rm|^2, <rm, m - rm>, |m - rm|^2, |m|^2 in
// double (the Möbius formulas of geoops/poincare.py's _running_mean_step_), rv <- (1 - t) rv + t f var.
namespace {

double tanc_neg_d(double z) {
  if (z > -1e-12) return 1 + z / 3;
  const double sn = std::sqrt(-z);
  return std::tanh(sn) / sn;
}

template <typename T>
void bn_running_impl(T* rm, T* rv, const T* m, double var, int64_t D, double t, double c, double f) {
  // in x = rm and the difference g = m - rm (session 44: the <x, y> form cancels for m near rm near the boundary;
  // geoops/poincare.py's _running_mean_step_)
  double x2 = 0, xg = 0, g2 = 0, y2 = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double a = double(rm[d]), b = double(m[d]), g = b - a;
    x2 = std::fma(a, a, x2), xg = std::fma(a, g, xg), g2 = std::fma(g, g, g2), y2 = std::fma(b, b, y2);
  }
  const double k = -c;
  const double nb = 1 + k * x2, pp = nb * (1 + k * y2);
  double den = std::max(pp - k * g2, 1e-15);
  const double p = k * g2 / den, q = nb / den;  // (-x) (+) y = p x + q g
  const double v2 = p * p * x2 + 2 * p * q * xg + q * q * g2;
  // artan_k(|v|) / |v| by stereo_math.h's atanc, its 1 + k|v|^2 = pp / den without cancellation (ball_q, as dist /
  // logmap; session 49: an own artanh of |v| clamped at 1 - 1e-15, 1 - 1e-7 for float tensors, cut the step of far
  // pairs within ~1e-8 (float: ~1e-4) of the boundary by up to ~30 %)
  const double a = geoops::stereo::atanc(k * v2, geoops::stereo::ball_q(nb, pp / den));
  const double s = t * a * tanc_neg_d(k * t * t * v2 * a * a);  // t (x) v = s v
  const double w2 = s * s * v2, xw = s * (p * x2 + q * xg);
  den = std::max(1 - 2 * k * xw + k * k * x2 * w2, 1e-15);
  const double A = ((1 - 2 * k * xw - k * w2) + (1 + k * x2) * s * p) / den;
  const double B = (1 + k * x2) * s * q / den;
  for (int64_t d = 0; d < D; ++d) rm[d] = T(std::fma(A, double(rm[d]), B * (double(m[d]) - double(rm[d]))));
  rv[0] = T(std::fma(1 - t, double(rv[0]), t * f * var));
}

}  // namespace

void poincare_bn_running_update_cpu(const at::Tensor& rm, const at::Tensor& rv, const at::Tensor& m,
                                    const at::Tensor& var, double momentum, double c, double f) {
  TORCH_CHECK(rm.dim() == 1 && rm.is_contiguous() && m.is_contiguous() && m.numel() == rm.numel() &&
                  rv.numel() == 1 && var.numel() == 1 && rm.scalar_type() == m.scalar_type() &&
                  rv.scalar_type() == rm.scalar_type() && var.scalar_type() == rm.scalar_type() &&
                  (rm.scalar_type() == at::kFloat || rm.scalar_type() == at::kDouble),
              "poincare_bn_running_update: rm (D,), m (D,), rv, var (one entry) of one float dtype");
  by_dtype(rm.scalar_type() == at::kDouble, [&](auto z) {
    using T = decltype(z);
    bn_running_impl<T>(rm.data_ptr<T>(), rv.data_ptr<T>(), m.data_ptr<T>(), double(var.data_ptr<T>()[0]), rm.numel(),
                       momentum, c, f);
  });
  rm.unsafeGetTensorImpl()->bump_version();
  rv.unsafeGetTensorImpl()->bump_version();
}

}  // namespace cpu
}  // namespace geoops
