// The kernels of the kappa-stereographic row ops, forward and backward (the lane machinery), shared by the
// translation units that instantiate them: stereographic_lanes.cpp (the forward's entry point, part of the fp32
// forward: fwd_unit below; the Riemannian SGD step), stereographic_lanes_fwd_wide.cpp (the rest of the forward) and
// stereographic_lanes_bwd.cpp (the backward).  They were one file that compiled for ~170 s, the tail of every build;
// split so that the three compile in parallel, with the same code (the kernels stay in an anonymous namespace,
// instantiated in one unit each).  Include only from those units, first (it includes geoops/cpu_capability.h first).
//
// Fused CPU kernels of the kappa-stereographic row ops, forward and backward: the row math of
// stereo_math.h on SIMD vectors, one lane per row.
//
// For a block of rows: the row sums first (double, whatever the dtype), then the row math of
// stereo_math.h branch-free on at::vec::Vectorized<double> (its tanc/atanc are SLEEF vector calls,
// vec_math_inl.h; no per-row scalar math), then the writes out = a x + b y + c (x - y) (backward: the
// gradients, see bwd_rows), row by row with each row's coefficients broadcast, while the block is
// still in L1.  Each op is its own instantiation (the op code is a template argument, so its math
// folds to straight-line vector code).
//
// Short rows (D <= kShortRowMaxD): the row sums put the ROWS on the lanes too (the D-loop outside,
// the row loop inside, strided vector loads), since one row alone would leave most lanes idle and its
// horizontal sums would dominate.  Longer rows: one row at a time on 4-lane double vectors
// (row_sums, stereographic_rows.h), with software prefetch of the rows ahead; fp32 long rows on AVX-512:
// long_sums_f32 (16 floats per load, a transposing lane sum per 8 rows), on AVX2 (session 28) its port (8 floats,
// a transposing lane sum per 4 rows).
#pragma once

#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "knobs.h"
#include "stereographic_bwd_f32.h"
#include "stereographic_rows.h"
#include "stereographic_rows_f32.h"
#include "stereographic_rows_f32_reg.h"
#include "vec_math_inl.h"

namespace geoops {
namespace cpu {

namespace {

using vecmath::Vec;
using namespace geoops::stereo;

constexpr int kLanes = Vec::size();
constexpr int kBlock = 4 * kLanes;  // rows per block of short rows: 32 with AVX-512, 16 with AVX2
static_assert(kBlock <= kMaxBlock, "the long-row blocks bound the lane arrays");

// Rows of at most this many elements reduce with the rows on the lanes (measured: 0.5-0.8x the time of
// the per-row sums at D = 2..5, 1.0-1.3x at D = 10..16).
constexpr int64_t kShortRowMaxD = 8;
// The backward's rows of D = kShortRowMaxD + 1 .. kShortRowBwdMaxD take the short-row blocks too (session 29: the
// dist backward at the WordNet loss's D = 10 ran the per-row long path at about twice the forward's time);
// GEOOPS_STEREO_BWD_SHORT=0: the long-row path there, as before (read per call).
constexpr int64_t kShortRowBwdMaxD = 16;
inline bool bwd_short_on() { return !knobs::off("GEOOPS_STEREO_BWD_SHORT"); }
// Rows of at most this many elements, stored back to back, are written as one stream per block
// (write_block) instead of row by row.  Measured (single thread, 2^20 rows fp32, A/B against the
// per-row writes): 0.79-0.99x the time at D = 2, ~1.0x at D = 5, 1.06-1.22x at D = 10..16 (the
// coefficient gathers cost more than the short masked stores they replace).
constexpr int64_t kStreamMaxD = 4;

// The row math's tanc / atanc, one lane per row (vec_math_inl.h, with the Vec forms of stereo_math.h's
// building blocks).
using vecmath::LaneMath;

// ---------------------------------------------------------------- float transcendentals (fp32/fp16/bf16 rows)
// Ops whose forward calls tanc or atanc exactly once, with an argument that does not depend on another
// transcendental: for float inputs their forward evaluates that one call in float (16 rows per AVX-512
// vector, SLEEF's float tanh / log1p, 1 ulp) and everything else (the row sums and the algebra around
// the call, where 1 + k|x|^2 and the denominators cancel near the boundary) in double, as before.
// Three passes over a block's lanes: (1) the double algebra up to the call, recording its arguments
// z, q (StagedMath; the rest of that pass is dead code), (2) the call in float, (3) the double algebra
// again with the call's value replayed.  On z <= 0 (k <= 0: tanh, artanh) both functions
// are well conditioned in z and q (relative condition numbers <= 1), so rounding z and q to float
// costs a few float ulps of the result, below the output's own rounding to float; blocks with a lane
// of z >= series cut (k > 0: tan, whose condition grows without bound near pi/2), a NaN, or |z|, q
// beyond float's range keep the double call.
// mobius_scalar_mul chains two calls, a1 = atanc(z1, q1) with z1 = k|x|^2, q1 = 1 + z1 (formed
// in double: near the boundary q1 = (1 - s)(1 + s) keeps its digits), then tanc(z2) with
// z2 = k r^2 |x|^2 a1^2: one record / float call stage per call (the second stage replays the first call's
// float value), then the coefficients.  Each stage decides float or double for the block on its own.
// GEOOPS_STEREO_FLOAT_CALL=0: every call in double (read per call): the path of the blocks that decline the float
// call, forced for every block so that tests compare the two.
constexpr bool float_call_op(int op) {
  return op == EXPMAP || op == EXPMAP0 || op == LOGMAP || op == LOGMAP0 || op == DIST || op == DIST0 ||
         op == MOBIUS_SCALAR_MUL;
}
constexpr int n_calls(int op) { return op == MOBIUS_SCALAR_MUL ? 2 : 1; }
// Whether call c of OP's forward is atanc (else tanc).
constexpr bool call_is_atanc(int op, int c) {
  return op == MOBIUS_SCALAR_MUL ? c == 0 : (op == LOGMAP || op == LOGMAP0 || op == DIST || op == DIST0);
}

inline bool float_call_on() { return !knobs::off("GEOOPS_STEREO_FLOAT_CALL"); }

using FVec = at::vec::Vectorized<float>;
constexpr int kFLanes = FVec::size();
static_assert(kMaxBlock % kFLanes == 0, "a block of lanes is whole float vectors");

// The tanc / atanc policy of the staged passes: calls before `stage` return their recorded values, call
// `stage` records its arguments z, q (and returns 1: what follows it in that pass is dead code).
struct StagedMath {
  int stage;
  const Vec* vals;
  int n = 0;
  Vec z = Vec(0.0), q = Vec(1.0);
  Vec take(const Vec& z_, const Vec& q_) {
    const int c = n++;
    if (c < stage) return vals[c];
    if (c == stage) z = z_, q = q_;
    return Vec(1.0);
  }
  Vec tanc(const Vec& z_) { return take(z_, Vec(1.0)); }
  Vec atanc(const Vec& z_, const Vec& q_) { return take(z_, q_); }
};

// The float call of nf lanes (a multiple of the float lanes): vd = tanc / atanc(zd, qd) evaluated on float vectors (the
// arguments rounded to float, the value widened back), every lane with z below the float series cut (no k > 0 form).
inline void float_call_values(bool atanc, const double* zd, const double* qd, int64_t nf, double* vd) {
  alignas(64) float zf[kMaxBlock], qf[kMaxBlock], vf[kMaxBlock];
#pragma omp simd
  for (int64_t b = 0; b < nf; ++b) {
    zf[b] = static_cast<float>(zd[b]);
    qf[b] = static_cast<float>(qd[b]);
  }
  for (int64_t v = 0; v < nf; v += kFLanes) {
    const FVec z = FVec::loadu(zf + v), q = FVec::loadu(qf + v);
    (atanc ? vecmath::eval_series_neg<true>(z, q) : vecmath::eval_series_neg<false>(z, q)).store(vf + v);
  }
#pragma omp simd
  for (int64_t b = 0; b < nf; ++b) vd[b] = static_cast<double>(vf[b]);
}

// The forward coefficients of the nv lanes of a block (row scalars in xx .. rr), OP's tanc/atanc calls in
// float where every lane of the block allows it (see above), in double otherwise (FLOAT = false: always).
template <int OP>
inline void block_fwd_float_call(const double* xx, const double* yy, const double* xy, const double* dd,
                                 const double* kk, const double* rr, int64_t nv, double param, bool use_float,
                                 double* ca, double* cb, double* cc) {
  constexpr int NC = n_calls(OP);
  alignas(64) double zd[kMaxBlock], qd[kMaxBlock], vd[NC][kMaxBlock];
  auto row_at = [&](int64_t v) {
    return Row<Vec>{Vec::loadu(xx + v), Vec::loadu(yy + v), Vec::loadu(xy + v),
                    Vec::loadu(dd + v), Vec::loadu(kk + v), Vec::loadu(rr + v)};
  };
  auto vals_at = [&](int64_t v, Vec (&vals)[NC]) {
    for (int c = 0; c < NC; ++c) vals[c] = Vec::loadu(vd[c] + v);
  };
  const int64_t nf = (nv + kFLanes - 1) / kFLanes * kFLanes;  // lanes nv .. nf: z = 0, q = 1
  const Vec cut(static_cast<double>(series_cut<float>())), big(1e30);
  for (int c = 0; c < NC; ++c) {
    Vec ok = Vec(0.0) == Vec(0.0);
    for (int64_t v = 0; v < nf; v += kLanes) {  // (1) call c's arguments
      Vec vals[NC];
      vals_at(v, vals);
      StagedMath rec{c, vals};
      if (v < nv) (void)stereo::fwd<Vec>(OP, row_at(v), Vec(param), rec);
      ok = ok & (rec.z < cut) & (rec.z > -big) & (rec.q < big);  // !(z < cut) also catches NaN
      rec.z.store(zd + v);
      rec.q.store(qd + v);
    }
    const bool in_float = use_float && ok.zero_mask() == 0;
    const bool atanc = call_is_atanc(OP, c);
    if (in_float) {  // (2) the call in float
      float_call_values(atanc, zd, qd, nf, vd[c]);
    } else {
      for (int64_t v = 0; v < nv; v += kLanes) {
        const Vec z = Vec::loadu(zd + v), q = Vec::loadu(qd + v);
        (atanc ? vecmath::eval<true>(z, q) : vecmath::eval<false>(z, q)).store(vd[c] + v);
      }
    }
  }
  for (int64_t v = 0; v < nv; v += kLanes) {  // (3) the coefficients with the calls' values
    Vec vals[NC];
    vals_at(v, vals);
    StagedMath rep{NC, vals};
    const Coef<Vec> c = stereo::fwd<Vec>(OP, row_at(v), Vec(param), rep);
    c.a.store(ca + v);
    c.b.store(cb + v);
    c.c.store(cc + v);
  }
}

// The backward of dist / dist0 without dk (session 29): no atanc call.  v = 2 w A(k w^2) (w = |s| or |x|), and the
// vjp's gradient to the row sums reads A only through A + 2z A'(z), where above the double series cut
// A'(z) = (1/q - A)/(2z) (0 - A over 2z outside the ball): A + (1/q - A) = 1/q (or 0), whatever A is (dist's vjp
// takes 1/q itself there since session 46).  So the lanes there take A = 1 (finite, no SLEEF log1p / atan), the lanes below the cut
// atanc's Taylor series (the value the double call gives there): the gradients to x and y equal the double call's up
// to double roundings (the same float bits in every check; the tests bound them by a few ulps).  dk reads A'(z)
// alone: with dk wanted the call runs.  Every dtype, every k.  GEOOPS_STEREO_BWD_SKIP_CALL=0: the call (read per call).
constexpr bool bwd_skip_call_op(int op) { return op == DIST || op == DIST0; }
inline bool bwd_skip_call_on() { return !knobs::off("GEOOPS_STEREO_BWD_SKIP_CALL"); }

struct SkipCallMath {  // the tanc / atanc policy of stereo::vjp<Vec> for those lanes (only atanc is called)
  Vec tanc(const Vec& z) { return stereo::tanc_series(z); }
  Vec atanc(const Vec& z, const Vec&) {
    const Vec cut(series_cut<double>());
    return Vec::blendv(Vec(1.0), stereo::atanc_series(z), z.abs() < cut);
  }
};

// Row sums of the rows i0 .. i0+kBlock-1 (rows past `last` repeat row `last`), rows on the lanes:
// xx, and for two-input ops yy, xy and dd = |x - y|^2 accumulated directly; with HAS_G (backward of
// a vector op) also gx = <g,x>, and for two-input ops gy = <g,y>, gd = <g,x-y>.
// The strided loads are gathers from the block's first row with offsets of type index_t: int32 when
// the block spans less than 2^31 elements (the usual case: a gather then fetches 8 lanes with 32-bit
// indices instead of 4 with 64-bit ones), int64 otherwise.
template <typename index_t, typename scalar_t, bool HAS_Y, bool HAS_G>
inline void block_sums_idx(const scalar_t* xp, int64_t sx, const scalar_t* yp, int64_t sy, int64_t i0, int64_t last,
                           int64_t D, double* xx, double* yy, double* xy, double* dd, const scalar_t* gp, int64_t sg,
                           double* gx, double* gy, double* gd) {
  index_t ox[kBlock], oy[kBlock], og[kBlock];
  const scalar_t* xb = xp + i0 * sx;
  const scalar_t* yb = HAS_Y ? yp + i0 * sy : yp;
  const scalar_t* gb = HAS_G ? gp + i0 * sg : gp;
  for (int b = 0; b < kBlock; ++b) {
    const int64_t r = std::min<int64_t>(i0 + b, last) - i0;
    ox[b] = static_cast<index_t>(r * sx);
    oy[b] = static_cast<index_t>(r * sy);
    og[b] = static_cast<index_t>(r * sg);
    xx[b] = yy[b] = xy[b] = dd[b] = 0.0;
    if (HAS_G) gx[b] = gy[b] = gd[b] = 0.0;
  }
  for (index_t j = 0; j < static_cast<index_t>(D); ++j) {  // D <= kShortRowMaxD
#pragma omp simd
    for (int b = 0; b < kBlock; ++b) {
      const double xv = static_cast<double>(load_elem(xb + (ox[b] + j)));
      xx[b] += xv * xv;
      const double gv = HAS_G ? static_cast<double>(load_elem(gb + (og[b] + j))) : 0.0;
      if (HAS_G) gx[b] += gv * xv;
      if (HAS_Y) {
        const double yv = static_cast<double>(load_elem(yb + (oy[b] + j)));
        const double d = xv - yv;
        yy[b] += yv * yv;
        xy[b] += xv * yv;
        dd[b] += d * d;
        if (HAS_G) {
          gy[b] += gv * yv;
          gd[b] += gv * d;
        }
      }
    }
  }
}

template <typename scalar_t, bool HAS_Y, bool HAS_G = false>
inline void block_sums(const scalar_t* xp, int64_t sx, const scalar_t* yp, int64_t sy, int64_t i0, int64_t last,
                       int64_t D, double* xx, double* yy, double* xy, double* dd, const scalar_t* gp = nullptr,
                       int64_t sg = 0, double* gx = nullptr, double* gy = nullptr, double* gd = nullptr) {
  const int64_t span = kBlock * (std::max<int64_t>({sx, HAS_Y ? sy : 0, HAS_G ? sg : 0}) + D);
  if (span < (int64_t{1} << 31)) {
    block_sums_idx<int32_t, scalar_t, HAS_Y, HAS_G>(xp, sx, yp, sy, i0, last, D, xx, yy, xy, dd, gp, sg, gx, gy, gd);
  } else {
    block_sums_idx<int64_t, scalar_t, HAS_Y, HAS_G>(xp, sx, yp, sy, i0, last, D, xx, yy, xy, dd, gp, sg, gx, gy, gd);
  }
}

// Software prefetch of the short rows [i, i + kBlock) of one stream (rows of stride `stride`, D
// elements), issued kPrefetchBlocks blocks ahead of the block being reduced so that its loads (and,
// with WRITE, the lines of a fresh output) are in flight during this block's lane math and writes.
// Contiguous rows: each cache line of the range once; strided rows: each row's first line.
constexpr int64_t kPrefetchBlocks = 2;
template <bool WRITE, typename T>
inline void prefetch_block(const T* p, int64_t stride, int64_t D, int64_t i, int64_t end) {
  if (i >= end || stride == 0) return;
  const int64_t i1 = std::min<int64_t>(i + kBlock, end);
  if (stride == D) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p + i * stride) & ~uintptr_t{63};
    const uintptr_t b = reinterpret_cast<uintptr_t>(p + i1 * stride);
    for (uintptr_t l = a; l < b; l += 64) __builtin_prefetch(reinterpret_cast<const void*>(l), WRITE ? 1 : 0, 3);
  } else {
    for (int64_t r = i; r < i1; ++r) __builtin_prefetch(p + r * stride, WRITE ? 1 : 0, 3);
  }
}

// Rows per block: kBlock for short rows; for long rows as many as keep the block's `streams` rows in
// L1, a multiple of the lanes (at least one vector).
template <typename scalar_t, bool SHORT>
int64_t lane_block(int64_t D, int streams) {
  return SHORT ? kBlock : std::max<int64_t>(kLanes, block_rows<scalar_t>(D, streams) / kLanes * kLanes);
}

// The block loop shared by fwd_rows and bwd_rows: the rows [0, N) in parallel chunks (at least
// `grain_elems` elements each for short rows), each chunk in blocks of rows;
// block(i0, nb, nv, end) runs for the nb rows from i0 (nv: nb rounded up to whole vectors, the lanes
// computed; rows past nb repeat row end - 1, the chunk's last).
// The rows [0, N) in parallel chunks of about `grain` rows that start at multiples of `align` rows: the blocks a
// chunk is cut into then sit at the same rows whatever the thread count, and so do the choices made per block (the
// float or the double call, the register pass or its fallback), so that a row's bits do not depend on the threads.
template <typename F>
inline void parallel_rows(int64_t N, int64_t align, int64_t grain, F&& chunk) {
  at::parallel_for(0, (N + align - 1) / align, std::max<int64_t>(1, grain / align), [&](int64_t b0, int64_t b1) {
    chunk(b0 * align, std::min<int64_t>(N, b1 * align));
  });
}

// chunk_end() runs at the end of each thread's chunk of rows
template <typename scalar_t, bool SHORT, typename F, typename E = void (*)()>
inline void for_row_blocks(int64_t N, int64_t D, int streams, int64_t grain_elems, F&& block, E chunk_end = [] {}) {
  const int64_t B = lane_block<scalar_t, SHORT>(D, streams);
  const int64_t grain = SHORT ? std::max<int64_t>(kBlock, grain_elems / std::max<int64_t>(D, 1)) : grain_for(D);
  parallel_rows(N, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = begin; i0 < end; i0 += B) {
      const int64_t nb = std::min<int64_t>(B, end - i0);
      block(i0, nb, (nb + kLanes - 1) / kLanes * kLanes, end);
    }
    chunk_end();
  });
}

// k (and r) of the block's nv >= 1 lanes (a do-while: the first lane is written on every path, which GCC's
// -Wmaybe-uninitialized can see for the block's kk passed on as const double*).
template <bool HAS_R>
inline void block_scalars(const RowScalars& sc, int64_t i0, int64_t nv, int64_t end, double* kk, double* rr) {
  int64_t b = 0;
  do {
    const int64_t i = std::min<int64_t>(i0 + b, end - 1);
    kk[b] = sc.k[i * sc.sk];
    rr[b] = HAS_R ? sc.r_at(i) : 0.0;
  } while (++b < nv);
}

// logmap on the sphere near x's antipode (stereo::antipode_cut, stereo_math.h): the mask of the lanes of 0 .. nv (a
// whole number of vectors, at most kMaxBlock) with k > 0 and den = 1 + 2k xy + k^2 xx yy (sub_den's k > 0 form)
// below cut_ (antipode_cut, or a float type's write cut).  One compare per row; 0 in the usual case.
inline uint64_t antipode_lanes(const double* xx, const double* yy, const double* xy, const double* kk, int64_t nv,
                               double cut_) {
  static_assert(kMaxBlock <= 64, "antipode_lanes: one bit per row of a block");
  const Vec zero(0.0), one(1.0), two(2.0), cut(cut_);
  uint64_t m = 0;
  for (int64_t v = 0; v < nv; v += kLanes) {
    const Vec k = Vec::loadu(kk + v);
    const Vec den = one + two * k * Vec::loadu(xy + v) + k * k * Vec::loadu(xx + v) * Vec::loadu(yy + v);
    m |= uint64_t(~((k > zero) & (den < cut)).zero_mask() & ((1 << kLanes) - 1)) << v;
  }
  return m;
}

// A row's den as |x + k xx y|^2 / xx (stereo_math.h, above antipode_cut): a second pass over the row.
template <typename scalar_t>
inline double antipode_den(const scalar_t* xr, const scalar_t* yr, int64_t D, double k, double xx) {
  const double kx = k * xx;
  double s = 0.0;
  for (int64_t j = 0; j < D; ++j) {
    const double t = static_cast<double>(load_elem(xr + j)) + kx * static_cast<double>(load_elem(yr + j));
    s += t * t;
  }
  return s / xx;  // (xx > 0: den = 1 at x = 0)
}

// logmap's rows near x's antipode in a block of rows i0 .. i0 + nb (row sums xx, yy, xy and k per lane, initialised
// up to nb rounded up to whole vectors): visit(b, den) for each row b with k > 0 and the sums' den below cut
// (antipode_cut; a float type's write cut, stereo::antipode_float_cut_fwd / _bwd, above it), den antipode_den's where
// the sums' den is below antipode_cut, else -1 (the block's coefficients stand); one vector compare per lane vector in
// the usual case (antipode_lanes).  The forward's coefficients and the backward's adjoints of the rows with a den
// take it (fwd_rows' block_coefs, bwd_rows), floored at stereo::antipode_min_den in every scalar type: the rows
// visited are written in double in every type (write_near_row, bwd_rows' double write_grads), and min_den's 1e-15
// shortened the rows within ~3e-8 of the antipode by up to 97 % (float inputs reach den ~1e-28 too).
template <typename scalar_t, typename F>
inline void antipode_block(const scalar_t* xp, int64_t sx, const scalar_t* yp, int64_t sy, int64_t i0, int64_t nb,
                           int64_t D, const double* xx, const double* yy, const double* xy, const double* kk, double cut,
                           F&& visit) {
  uint64_t m = antipode_lanes(xx, yy, xy, kk, (nb + kLanes - 1) / kLanes * kLanes, cut);
  if (nb < 64) m &= (uint64_t(1) << nb) - 1;
  for (; m; m &= m - 1) {
    const int64_t b = __builtin_ctzll(m), i = i0 + b;
    const double k = kk[b], den0 = 1.0 + 2.0 * k * xy[b] + k * k * xx[b] * yy[b];
    visit(b, den0 < stereo::antipode_cut<double>() ? antipode_den(xp + i * sx, yp + i * sy, D, k, xx[b]) : -1.0);
  }
}

// Writes out = a x + b y + c (x - y) for the nb rows of a block of contiguous short rows (x, y, out
// rows of stride D, starting at the block's first row) as one stream of nb * D elements, each with
// the coefficients of its row (rowof[e] = e / D; fa, fb, fc: the block's coefficients in opmath_t),
// instead of one short row at a time (a masked store of D elements per row).
template <typename scalar_t, bool HAS_Y, typename opmath_t>
inline void write_block(const scalar_t* xb, const scalar_t* yb, scalar_t* ob, int n, const int* rowof,
                        const opmath_t* fa, const opmath_t* fb, const opmath_t* fc) {
  if (HAS_Y) {
#pragma omp simd
    for (int e = 0; e < n; ++e) {
      const int r = rowof[e];
      const opmath_t xv = load_elem(xb + e), yv = load_elem(yb + e);
      store(ob, e, fa[r] * xv + fb[r] * yv + fc[r] * (xv - yv));
    }
  } else {
#pragma omp simd
    for (int e = 0; e < n; ++e) store(ob, e, fa[rowof[e]] * load_elem(xb + e));
  }
}

// out = a x + b y + c (x - y) of one row of D elements (one-input ops: a x): the per-row writes of fwd_rows
// and of its one-pass loop (the same code, so that both round alike).  NO_B (logmap's fp32 long rows whose b is 0:
// all but its y-form rows, stereo::logmap_y_form): out = fma(c, x - y, a x), the value the general loop computes there
// (GCC contracts it to fma(c, x - y, fma(a, x, b y)), and b y = 0) up to the sign of an exact zero, without
// the b y product.
template <typename scalar_t, bool HAS_Y, bool NO_B = false, typename opmath_t>
inline void write_row(const scalar_t* xr, const scalar_t* yr, scalar_t* orow, int64_t D, opmath_t a, opmath_t bb,
                      opmath_t c) {
  if (HAS_Y && NO_B) {
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) {
      const opmath_t xv = load_elem(xr + j), yv = load_elem(yr + j);
      store(orow, j, std::fma(c, xv - yv, a * xv));
    }
  } else if (HAS_Y) {
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) {
      const opmath_t xv = load_elem(xr + j), yv = load_elem(yr + j);
      store(orow, j, a * xv + bb * yv + c * (xv - yv));
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) store(orow, j, a * load_elem(xr + j));
  }
}

// ---------------------------------------------------------------- fp32 long rows on AVX-512 (and AVX2, below)
// Row sums of fp32 rows longer than the short-row cut: each row 16 floats at a time (a masked load for the
// tail), widened to two 8-lane double vectors and accumulated in double (two FMA chains per sum), the eight
// rows of a lane vector then summed across their lanes in one transposing tree (hsum8), so that lane b of
// the result is row b's sum.  dd = |x - y|^2 only for the ops that read it (logmap, dist).  Replaces, for
// fp32, the 4-lane double row_sums (one vcvtps2pd per 4 floats and a scalar horizontal sum per row and sum):
// perf put those at ~50 % of fwd_rows at 2^18 x 64.  GEOOPS_STEREO_LONG_SUMS=0: the row_sums path (read per call;
// the path of other builds and dtypes, forced here so that tests compare the two).
constexpr bool fwd_reads_dd(int op) { return op == LOGMAP || op == DIST; }

inline bool long_sums_on() { return !knobs::off("GEOOPS_STEREO_LONG_SUMS"); }

// Float row sums of fp32 mobius_add / mobius_sub rows of D <= kFloatSumsMaxD (long_sums_f32's FS):
// each of the 16 lanes x 2 chains sums D / 32 products in float (the chains then added, the 16 lane sums
// widened and summed in double), so a row sum is within ~(D / 16 + 1) float ulps of the sum of its terms'
// magnitudes (inductor's loop, compiled geoopt, and the eager reference sum in float too).  The coefficients
// divide by den = 1 - 2k<x,y> + k^2|x|^2|y|^2, whose rounding from these sums is ~16 ulps absolute: a block with
// a lane of den < kFloatSumsMinDen (near-boundary pairs pointing apart) or NaN takes the double sums again, so
// the coefficients stay within ~32 float ulps (docs/families/stereographic.md).
// GEOOPS_STEREO_F32_SUMS=0: the double sums (the fallback of those blocks and of D > kFloatSumsMaxD) for every
// block (read per call; the accuracy tests compare the two).
constexpr int64_t kFloatSumsMaxD = 256;
constexpr double kFloatSumsMinDen = 0.5;
// Whether a row's float sums (xx, yy, xy of mobius_add; sgn = -1 for mobius_sub) may stand: a Mobius denominator of
// at least kFloatSumsMinDen and finite sums (a float sum that overflowed, of a row double sums keep finite, fails).
inline bool float_sums_fine(double sgn, double k, double xx, double yy, double xy) {
  const double den = 1.0 - 2.0 * sgn * k * xy + k * k * xx * yy;
  return den >= kFloatSumsMinDen && std::isfinite(den) && std::isfinite(xx) && std::isfinite(yy);
}
inline bool float_sums_on() { return !knobs::off("GEOOPS_STEREO_F32_SUMS"); }

// Non-temporal writes of long fp32 rows (the one-pass loop of fwd_rows, AVX-512 / AVX2; the output row-contiguous,
// 64-byte aligned, D a multiple of 16): the output's lines are written without reading them first (no read for
// ownership) and not kept in the caches.  Worth it where a fresh output's pages are not already in the caches: on huge
// pages (2 MiB cleared at the first touch, evicted from L1 / L2 before the rows reach them) and beyond the last-level
// cache. With 4 KiB page faults each page is cleared just before its rows are written, so its lines are in L1 and
// regular stores win (measured, AMD EPYC: docs/families/stereographic.md, Session 20).  Default: on for outputs of at
// least kNtMinBytes when torch's allocator puts large tensors on huge pages (THP_MEM_ALLOC_ENABLE=1);
// GEOOPS_STEREO_NT_STORES=1 / =0 forces them on / off (read per call).  Bit-identical either way.
constexpr int64_t kNtMinBytes = int64_t{32} << 20;
inline bool nt_stores_on(int64_t out_bytes) {
  if (const char* e = knobs::get("GEOOPS_STEREO_NT_STORES")) return e[0] == '1';
  const char* thp = knobs::get("THP_MEM_ALLOC_ENABLE");
  return out_bytes >= kNtMinBytes && thp && thp[0] == '1';
}

// The loop of long fp32 vector rows (AVX-512 and AVX2 builds, fwd_rows), GEOOPS_STEREO_LONG_LOOP (read per call):
// * pass: the one pass, block j's row sums interleaved, row by row, with the writes of block j - 1 (session 12,
//   measured faster than the blocked loop on an Intel Xeon: 1.11-1.18x the limit op vs 1.29-1.30x, 2^18 x 64, huge pages);
// * block: the blocked loop (a block's sums, its lane math, then its writes);
// * row (mobius_add / mobius_sub; the others take the one pass): one row at a time, as inductor's loop: the row's
//   sums, its coefficients (in scalar double: stereo::mobius_add_coef), its write.  On the AMD EPYC (Zen 4), from DRAM on
//   huge pages, the structure of the loop decides: a standalone harness of the three (scripts/rows_ab/harness.cpp,
//   same flags) and the same kernels called on torch's tensors put the one pass at 1.34x the time of x + y, the
//   blocked loop at 1.14x, one row at a time at 1.04x (docs/families/stereographic.md, Session 21).
// Default: row for mobius_add / mobius_sub on CPUs other than Intel's, pass otherwise (Intel keeps the path measured
// there); AVX2 builds: pass for every op (session 28, AMD EPYC Zen 3: row 0.94-1.17x the time of pass for mobius_add,
// slower in five of six A/Bs).  pass and block: the same sums, coefficients and writes, bit-identical; row: the same
// per row, except that a row's float sums go back to double only when its own Mobius denominator asks for it (the
// block loops redo the whole block), so rows that share a block with such a row can differ by the float sums'
// rounding (within the documented bounds; tests/test_stereographic_long_f32.py::test_long_loops).
// * group (session 22; A/B, no default): the blocked loop on groups of G rows (8; group4: 4; long_group, below), a
//   group's sums, its lane math, its writes, so that each row is written a few rows after its loads.  pass and block
//   take a row count too (pass8, pass32, block8: the same loops on G-row blocks).  The per-block choices (float or
//   double call, float or double sums) are then made per G rows: the same bits as B-row blocks except rows whose
//   block or group holds a row that declines the float call / float sums (each loop redoes its own block or group).
//   On the AMD EPYC none measured faster than pass for expmap / logmap / mobius_scalar_mul (group4 ~1.3x slower:
//   the lane-math phase paid per 4 rows; docs/families/stereographic.md, Session 22).
enum LongLoop { kLoopPass = 0, kLoopBlock = 1, kLoopRow = 2 };
inline int long_loop(int op) {
  const bool row_op = op == MOBIUS_ADD || op == MOBIUS_SUB;
  if (const char* e = knobs::get("GEOOPS_STEREO_LONG_LOOP")) {
    if (e[0] == 'b' || e[0] == 'g') return kLoopBlock;
    if (e[0] == 'r' && row_op) return kLoopRow;
    return kLoopPass;
  }
#if defined(CPU_CAPABILITY_AVX2)
  (void)row_op;
  return kLoopPass;  // AVX2 builds (AMD EPYC, Zen 3): row measured slower than the one pass (session 28)
#else
  static const bool intel = __builtin_cpu_is("intel");
  return !intel && row_op ? kLoopRow : kLoopPass;
#endif
}
// Rows per block of the pass / block loops (GEOOPS_STEREO_LONG_LOOP, above) for blocks of B rows: B unless the knob
// value is group (8) or ends in a row count G (pass32, block8, group4: G = 4 or a multiple of the lanes, at most
// kMaxBlock) that divides B or that B divides; the loops' thread chunks then start at multiples of max(B, G) rows.
inline int64_t long_group(int64_t B) {
  int64_t g = B;
  if (const char* e = knobs::get("GEOOPS_STEREO_LONG_LOOP")) {
    size_t n = std::strlen(e);
    while (n > 0 && e[n - 1] >= '0' && e[n - 1] <= '9') --n;
    if (e[n] != 0) {
      g = std::strtoll(e + n, nullptr, 10);
    } else if (e[0] == 'g') {
      g = 8;
    }
  }
  const bool fits = g == 4 || (g > 0 && g % kLanes == 0 && g <= kMaxBlock);
  return fits && (B % g == 0 || g % B == 0) ? g : B;
}
// The one pass's software prefetch distance in rows, GEOOPS_STEREO_LONG_PF=N (read per call; A/B): N rows ahead,
// 0 none; unset: `dflt` (RowPrefetch's 8 rows at D = 64).
inline int64_t long_prefetch(int64_t dflt) {
  if (const char* e = knobs::get("GEOOPS_STEREO_LONG_PF")) return std::strtoll(e, nullptr, 10);
  return dflt;
}

// The one-pass loop's (kLoopPass) write order of the pending block, GEOOPS_STEREO_PASS_ROT (read per call): with
// the sums of row b of block j it writes row (b + s) mod pn of block j - 1.  s = 0 writes row b, 16 rows (4 KiB at
// D = 64) behind the x / y row then loaded: on huge pages x, y and the output start at the same offset mod 4 KiB, so
// each store and the next loads alias in their low 12 address bits (the loads wait on the store's address check).
// Default (unset / auto): for mobius_scalar_mul (auto_op), the s in [0, B) whose store address lies farthest,
// mod 4 KiB, from both loads' (8 at D = 64 on aligned tensors: 2 KiB); s = 0 for the other ops, whose loop waits on
// the block's float-call math rather than on the stores (session 21, AMD EPYC, huge pages: the auto s measured 3-6 %
// faster for mobius_scalar_mul, 4-9 % slower for expmap / logmap at 2 threads); =auto: the computed s for every op;
// =N: s = N mod B.  Only the order of the row writes changes (each row's write reads its own x, y rows and
// coefficients): bit-identical to s = 0.
inline int64_t pass_rotation(const void* out, int64_t so, const void* x, int64_t sx, const void* y, int64_t sy,
                             bool has_y, int64_t row0, int64_t B, int64_t elem, bool auto_op) {
  if (const char* e = knobs::get("GEOOPS_STEREO_PASS_ROT")) {
    if (e[0] >= '0' && e[0] <= '9') return std::strtoll(e, nullptr, 10) % B;
    if (e[0] == 'a') auto_op = true;
  }
  if (!auto_op) return 0;
  auto circ = [](int64_t d) {
    d &= 4095;
    return std::min<int64_t>(d, 4096 - d);
  };
  const int64_t o = reinterpret_cast<intptr_t>(out), xa = reinterpret_cast<intptr_t>(x),
                ya = reinterpret_cast<intptr_t>(y);
  int64_t best = 0, score = -1;
  for (int64_t s = 0; s < B; ++s) {
    const int64_t st = o + (row0 + s) * so * elem;  // the store of pending row s, with the loads of row row0 + B
    int64_t m = circ(st - (xa + (row0 + B) * sx * elem));
    if (has_y) m = std::min(m, circ(st - (ya + (row0 + B) * sy * elem)));
    if (m > score) best = s, score = m;
  }
  return best;
}

// The one-call float ops' staging in registers of long fp32 rows (block_fwd_float_reg, AVX-512 builds, below);
// GEOOPS_STEREO_FLOAT_STAGE=0: block_fwd_float_call, its fallback, for every block (read per call).
inline bool float_stage_on() { return !knobs::off("GEOOPS_STEREO_FLOAT_STAGE"); }

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kLongSumsF32 = true;
using LaneAccD = __m512d;  // one row's sums before their horizontal sum (row_acc_f32, hsum8_one)
// Lane b of the result: the sum of the 8 lanes of a[b].
inline __m512d hsum8(const __m512d (&a)[8]) {
  __m512d s[4];
  for (int p = 0; p < 4; ++p) {
    s[p] = _mm512_add_pd(_mm512_unpacklo_pd(a[2 * p], a[2 * p + 1]), _mm512_unpackhi_pd(a[2 * p], a[2 * p + 1]));
  }
  const __m512d t0 = _mm512_add_pd(_mm512_shuffle_f64x2(s[0], s[1], 0x88), _mm512_shuffle_f64x2(s[0], s[1], 0xDD));
  const __m512d t1 = _mm512_add_pd(_mm512_shuffle_f64x2(s[2], s[3], 0x88), _mm512_shuffle_f64x2(s[2], s[3], 0xDD));
  return _mm512_add_pd(_mm512_shuffle_f64x2(t0, t1, 0x88), _mm512_shuffle_f64x2(t0, t1, 0xDD));
}
// long_sums_f32's vector steps (it follows the ISA sections): groups of 8 rows, one hsum8 a sum.
constexpr int kSumLanes = 8;
inline __m512d hsum_lanes(const __m512d (&a)[8]) { return hsum8(a); }
inline void store_lanes(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
inline __m512d zero_lanes() { return _mm512_setzero_pd(); }

// The sums of one fp32 row (x row xr, y row yr) as 8-lane double vectors acc[s] (s: xx, yy, xy, dd), whose 8 lanes
// hsum8 / hsum8_one then add: FS (float sums, mobius_add / mobius_sub) the products in float, 16 lanes x two chains
// (32-float steps), the two chains added and the 16 lane sums widened to 8 doubles; else in double, two chains.
template <bool HAS_Y, bool DD, bool FS>
inline void row_acc_f32(const float* xr, const float* yr, int64_t D, __m512d* acc) {
  constexpr int NS = HAS_Y ? (DD ? 4 : 3) : 1;
  if constexpr (FS) {
    __m512 f0[NS], f1[NS];
    for (int s = 0; s < NS; ++s) f0[s] = f1[s] = _mm512_setzero_ps();
    auto mask_at = [D](int64_t j) {
      return D - j >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>(D > j ? (1u << (D - j)) - 1u : 0u);
    };
    for (int64_t j = 0; j < D; j += 32) {  // explicit FMAs: the same rounding whatever the compiler
      const __mmask16 m0 = mask_at(j), m1 = mask_at(j + 16);
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, xr + j), x1 = _mm512_maskz_loadu_ps(m1, xr + j + 16);
      f0[0] = _mm512_fmadd_ps(x0, x0, f0[0]);
      f1[0] = _mm512_fmadd_ps(x1, x1, f1[0]);
      if (HAS_Y) {
        const __m512 y0 = _mm512_maskz_loadu_ps(m0, yr + j), y1 = _mm512_maskz_loadu_ps(m1, yr + j + 16);
        f0[1] = _mm512_fmadd_ps(y0, y0, f0[1]);
        f1[1] = _mm512_fmadd_ps(y1, y1, f1[1]);
        f0[2] = _mm512_fmadd_ps(x0, y0, f0[2]);
        f1[2] = _mm512_fmadd_ps(x1, y1, f1[2]);
      }
    }
    for (int s = 0; s < NS; ++s) {
      const __m512 f = _mm512_add_ps(f0[s], f1[s]);
      acc[s] = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)));
    }
    return;
  }
  __m512d a0[NS], a1[NS];
  for (int s = 0; s < NS; ++s) a0[s] = a1[s] = _mm512_setzero_pd();
  for (int64_t j = 0; j < D; j += 16) {
    const __mmask16 m = D - j >= 16 ? static_cast<__mmask16>(0xFFFF)
                                    : static_cast<__mmask16>((1u << (D - j)) - 1u);
    const __m512 xv = _mm512_maskz_loadu_ps(m, xr + j);
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
    const __m512d x1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(xv, 1));
    a0[0] = _mm512_fmadd_pd(x0, x0, a0[0]);
    a1[0] = _mm512_fmadd_pd(x1, x1, a1[0]);
    if (HAS_Y) {
      const __m512 yv = _mm512_maskz_loadu_ps(m, yr + j);
      const __m512d y0 = _mm512_cvtps_pd(_mm512_castps512_ps256(yv));
      const __m512d y1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(yv, 1));
      a0[1] = _mm512_fmadd_pd(y0, y0, a0[1]);
      a1[1] = _mm512_fmadd_pd(y1, y1, a1[1]);
      a0[2] = _mm512_fmadd_pd(x0, y0, a0[2]);
      a1[2] = _mm512_fmadd_pd(x1, y1, a1[2]);
      if (DD) {
        const __m512d d0 = _mm512_sub_pd(x0, y0), d1 = _mm512_sub_pd(x1, y1);
        a0[NS - 1] = _mm512_fmadd_pd(d0, d0, a0[NS - 1]);
        a1[NS - 1] = _mm512_fmadd_pd(d1, d1, a1[NS - 1]);
      }
    }
  }
  for (int s = 0; s < NS; ++s) acc[s] = _mm512_add_pd(a0[s], a1[s]);
}

// The sum of the 8 lanes of a in hsum8's order (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))): the same bits as
// hsum8's lane for a row.
inline double hsum8_one(__m512d a) {
  alignas(64) double t[8];
  _mm512_store_pd(t, a);
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}


// The one-call float ops' coefficients of one block of long fp32 rows with the staging in registers
// (mobius_scalar_mul's two chained calls measured ~3 % slower this way and keep block_fwd_float_call):
// per 16 lanes (two double vectors, one float vector) the arguments of call c (the double algebra of
// stereo::fwd up to the call; StagedMath), rounded to float, the call on the float vector, its value widened
// back, and after the last call the coefficients, without the block's arrays of arguments and values that
// block_fwd_float_call stages through (its three passes over the block and its out-of-line call).  The float
// calls run for every lane speculatively; `ok` collects the same per-block, per-call test as
// block_fwd_float_call's, and a block that fails it (a lane with k > 0, a NaN, float overflow) is redone by
// block_fwd_float_call, which then takes the double call there.  So the results equal block_fwd_float_call's
// (the same operations on the same values; tested bit for bit against GEOOPS_STEREO_FLOAT_STAGE=0, which
// runs that fallback for every block; read per call: float_stage_on, above).

template <int OP>
inline bool block_fwd_float_reg(const double* xx, const double* yy, const double* xy, const double* dd,
                                const double* kk, const double* rr, int64_t nv, double param, double* ca, double* cb,
                                double* cc) {
  constexpr int NC = n_calls(OP);
  static_assert(kFLanes == 2 * kLanes, "one float vector = two double vectors");
  const Vec cut(static_cast<double>(series_cut<float>())), big(1e30);
  auto row_at = [&](int64_t v) {
    return Row<Vec>{Vec::loadu(xx + v), Vec::loadu(yy + v), Vec::loadu(xy + v),
                    Vec::loadu(dd + v), Vec::loadu(kk + v), Vec::loadu(rr + v)};
  };
  auto to_f = [](const Vec& lo, const Vec& hi) {
    return FVec(_mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1));
  };
  Vec ok = Vec(0.0) == Vec(0.0);
  for (int64_t v = 0; v < nv; v += kFLanes) {
    const bool two = v + kLanes < nv;  // else lanes v + 8 .. v + 15 are past the block: z = 0, q = 1
    const Row<Vec> r0 = row_at(v);
    const Row<Vec> r1 = two ? row_at(v + kLanes) : r0;
    Vec v0[NC], v1[NC];
    for (int c = 0; c < NC; ++c) {
      StagedMath rec0{c, v0}, rec1{c, v1};
      (void)stereo::fwd<Vec>(OP, r0, Vec(param), rec0);
      if (two) (void)stereo::fwd<Vec>(OP, r1, Vec(param), rec1);
      ok = ok & (rec0.z < cut) & (rec0.z > -big) & (rec0.q < big) & (rec1.z < cut) & (rec1.z > -big) &
           (rec1.q < big);  // !(z < cut) also catches NaN
      const FVec z = to_f(rec0.z, rec1.z), q = to_f(rec0.q, rec1.q);
      const __m512 f = call_is_atanc(OP, c) ? __m512(vecmath::eval_series_neg<true>(z, q))
                                            : __m512(vecmath::eval_series_neg<false>(z, q));
      v0[c] = Vec(_mm512_cvtps_pd(_mm512_castps512_ps256(f)));
      v1[c] = Vec(_mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)));
    }
    StagedMath rep0{NC, v0};
    const Coef<Vec> c0 = stereo::fwd<Vec>(OP, r0, Vec(param), rep0);
    c0.a.store(ca + v), c0.b.store(cb + v), c0.c.store(cc + v);
    if (two) {
      StagedMath rep1{NC, v1};
      const Coef<Vec> c1 = stereo::fwd<Vec>(OP, r1, Vec(param), rep1);
      c1.a.store(ca + v + kLanes), c1.b.store(cb + v + kLanes), c1.c.store(cc + v + kLanes);
    }
  }
  return ok.zero_mask() == 0;
}

// logmap's coefficients of one block of long fp32 rows with one reciprocal of the denominator: the
// staging of block_fwd_float_reg (the float call on 16 lanes in registers), with stereo::fwd's four double
// divisions per lane (z = k dd / den, q = nb (1 + k yy) / den, a = f k dd / den, c = -f nb / den) replaced by one,
// rd = 1 / den, and products: z = k dd rd, q = nb (1 + k yy) rd, a = f z, c = -(f nb rd).  Each of z, q, a, c
// then differs from the divisions' value by at most ~3 double roundings (~3e-16 relative); the coefficients are
// rounded to float before the writes, so the output differs from the divisions' only where a coefficient lies
// within ~3e-16 relative of a float rounding boundary (a 1-float-ulp change of that coefficient; none in the
// tests).  den, nb, 1 + k yy stay in double (they cancel near the boundary).  The per-block test is
// block_fwd_float_reg's (z below the float series cut, z and q finite in float); a block that fails it is redone
// by block_fwd_float_call (the divisions, then the double call).  GEOOPS_STEREO_LOGMAP_RCP=0: block_fwd_float_reg's
// divisions (A/B, read per call).
inline bool logmap_rcp_on() { return !knobs::off("GEOOPS_STEREO_LOGMAP_RCP"); }

inline bool block_fwd_logmap_rcp(const double* xx, const double* yy, const double* xy, const double* dd,
                                 const double* kk, int64_t nv, double* ca, double* cb, double* cc) {
  const Vec cut(static_cast<double>(series_cut<float>())), big(1e30), one(1.0), two_(2.0), lo(min_den<double>());
  Vec ok = Vec(0.0) == Vec(0.0);
  for (int64_t v = 0; v < nv; v += kFLanes) {
    const bool two = v + kLanes < nv;  // else lanes v + 8 .. v + 15 are past the block: z = 0, q = 1
    Vec z[2] = {Vec(0.0), Vec(0.0)}, q[2] = {one, one}, nb[2], rd[2];
    for (int h = 0; h < (two ? 2 : 1); ++h) {
      const int64_t o = v + h * kLanes;
      const Vec k = Vec::loadu(kk + o), x2 = Vec::loadu(xx + o), y2 = Vec::loadu(yy + o), d2 = Vec::loadu(dd + o);
      nb[h] = one + k * x2;
      const Vec pp = nb[h] * (one + k * y2);
      // (stereo_math.h's sub_den, session 41: pp - k dd for k <= 0, no cancellation for close pairs near the boundary)
      const Vec den = clamp_lo(sub_den(pp, x2, y2, Vec::loadu(xy + o), d2, k), lo);
      rd[h] = one / den;
      z[h] = k * d2 * rd[h];
      q[h] = ball_q(nb[h], pp * rd[h]);
      ok = ok & (z[h] < cut) & (z[h] > -big) & (q[h] < big);  // !(z < cut) also catches NaN
      // (the x form only: a block with a row of the y form, stereo::logmap_y_form, takes the divisions' path)
      ok = ok & ((k * x2 <= one) | (x2 <= y2));  // not logmap_y_form (a NaN lane fails: declined above already)
    }
    const __m512 zf = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(z[0])), _mm512_cvtpd_ps(z[1]), 1);
    const __m512 qf = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(q[0])), _mm512_cvtpd_ps(q[1]), 1);
    const __m512 f = vecmath::eval_series_neg<true>(FVec(zf), FVec(qf));
    const Vec A[2] = {Vec(_mm512_cvtps_pd(_mm512_castps512_ps256(f))), Vec(_mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)))};
    for (int h = 0; h < (two ? 2 : 1); ++h) {
      const int64_t o = v + h * kLanes;
      const Vec fa = A[h] * clamp_lo(nb[h], lo);
      (fa * z[h]).store(ca + o);
      Vec(0.0).store(cb + o);
      (fa * nb[h] * rd[h]).neg().store(cc + o);
    }
  }
  return ok.zero_mask() == 0;
}

// mobius_scalar_mul's coefficients of a block in registers, in float (fp32/fp16/bf16 rows on AVX-512,
// k <= 0).  stereo::fwd's r a1 tanc(z2), with a1 = atanc(z1, q1) = artanh(s)/s, s = sqrt(-z1), z1 = k|x|^2, and
// z2 = k r^2 |x|^2 a1^2 = -sigma^2, sigma = |r| artanh(s), is r's sign times tanh(sigma) / s; with L = 2 artanh(s) =
// log1p(2s(1 + s)/q1) (atanc's own argument, q1 = 1 + z1 formed in double and rounded once, as before) and
// em = expm1(-2 sigma) in (-1, 0], tanh(sigma) = -em / (2 + em).  Below the float series cut (|z1| or |z2| < cut)
// a1 and tanc(z2) come from their series, as in block_fwd_float_call.  So one log1p, one expm1 and two float
// divisions per 16 rows, in place of block_fwd_float_call's two staged calls (atanc, then tanh, with their three
// passes over the block's arrays).  No overflow for any sigma (em -> -1); a zero row gives r.  A block declines
// (returns false; block_fwd_float_call then, the float or double calls as before) on a lane with k > 0 (z1 > 0), a
// NaN, |z1|, q1 or |r| beyond 1e30, or 0 < -z1 < 1e-30 (where s would be a float subnormal).  Accuracy: within the
// float calls' bounds (tests/test_stereographic_float_call.py: <= 3e-7 of the fp64 reference per row).
// (out of line: inlined into the one-pass sums loop, where its first part runs, its constants cost that loop registers)
__attribute__((noinline)) bool block_fwd_msm_closed(const double* xx, const double* kk, const double* rr, int64_t nv,
                                                    double* ca, double* cb, double* cc) {
  const Vec big(1e30), tiny_d(-1e-30), zero(0.0), one(1.0);
  const __m512 two_f = _mm512_set1_ps(2.0f), one_f = _mm512_set1_ps(1.0f), half_f = _mm512_set1_ps(0.5f),
               lo_f = _mm512_set1_ps(min_den<float>()), sign_f = _mm512_set1_ps(-0.0f),
               neg_cut = _mm512_set1_ps(-series_cut<float>());
  Vec ok = zero == zero;
  auto to_f = [](const Vec& lo, const Vec& hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
  };
  for (int64_t v = 0; v < nv; v += kFLanes) {
    const bool two = v + kLanes < nv;  // else lanes v + 8 .. v + 15 are past the block: z1 = 0, r = 0
    Vec z[2] = {zero, zero}, q[2] = {one, one}, r[2] = {zero, zero};
    for (int h = 0; h < (two ? 2 : 1); ++h) {
      const int64_t o = v + h * kLanes;
      z[h] = Vec::loadu(kk + o) * Vec::loadu(xx + o);
      q[h] = one + z[h];
      r[h] = Vec::loadu(rr + o);
      // (z1 <= 0 fails for NaN)
      ok = ok & (z[h] <= zero) & (z[h] > -big) & (q[h] < big) & (r[h].abs() < big) & ((z[h] == zero) | (z[h] <= tiny_d));
    }
    const __m512 zf = to_f(z[0], z[1]), qf = to_f(q[0], q[1]), rf = to_f(r[0], r[1]);
    // s = sqrt(-z1); L = 2 artanh(s) and a1 = L / (2 s): below the float series cut |z1| < cut a1 from atanc's
    // series and L = 2 s a1, else L = log1p(2s(1 + s)/q1); y = |r| L = 2 sigma, sigma = |r| artanh(s)
    const __m512 zero_f = _mm512_setzero_ps(), s = _mm512_sqrt_ps(_mm512_sub_ps(zero_f, zf));
    const __mmask16 zsmall = _mm512_cmp_ps_mask(zf, neg_cut, _CMP_GT_OQ);
    const __m512 a1s = __m512(stereo::atanc_series(FVec(zf)));
    const __m512 qc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(qf, zero_f, _CMP_GT_OQ), lo_f, qf);  // stereo::clamp_q
    const __m512 arg = _mm512_div_ps(_mm512_mul_ps(_mm512_mul_ps(two_f, s), _mm512_add_ps(one_f, s)), qc);
    const __m512 L = _mm512_mask_blend_ps(zsmall, __m512(FVec(arg).log1p()), _mm512_mul_ps(_mm512_mul_ps(two_f, s), a1s));
    const __m512 ra = _mm512_andnot_ps(sign_f, rf);  // |r|
    const __m512 y = _mm512_mul_ps(ra, L), h = _mm512_mul_ps(half_f, y);
    // tanc(z2) = tanh(sigma) / sigma, z2 = -sigma^2: its series below the cut, else tanh(sigma) = -em / (2 + em)
    // with em = expm1(-2 sigma) in (-1, 0]
    const __m512 z2 = _mm512_sub_ps(zero_f, _mm512_mul_ps(h, h));
    const __mmask16 tsmall = _mm512_cmp_ps_mask(z2, neg_cut, _CMP_GT_OQ);
    const __m512 tc = __m512(stereo::tanc_series(FVec(z2)));
    const __m512 em = __m512(FVec(_mm512_sub_ps(zero_f, y)).expm1());
    // |coefficient| = |r| a1 tanc(z2) = num / den: sigma large: tanh(sigma) / s; sigma small: (sigma tanc) / s, or
    // (z1 small too) |r| a1 tanc
    const __m512 num = _mm512_mask_blend_ps(
        tsmall, _mm512_sub_ps(zero_f, em),
        _mm512_mask_blend_ps(zsmall, _mm512_mul_ps(h, tc), _mm512_mul_ps(_mm512_mul_ps(ra, a1s), tc)));
    const __m512 den = _mm512_mask_blend_ps(tsmall, _mm512_mul_ps(_mm512_add_ps(two_f, em), s),
                                            _mm512_mask_blend_ps(zsmall, s, one_f));
    const __m512 c = _mm512_or_ps(_mm512_div_ps(num, den), _mm512_and_ps(rf, sign_f));  // r's sign (num / den >= 0)
    const Vec c0(_mm512_cvtps_pd(_mm512_castps512_ps256(c))), c1(_mm512_cvtps_pd(_mm512_extractf32x8_ps(c, 1)));
    c0.store(ca + v), zero.store(cb + v), zero.store(cc + v);
    if (two) c1.store(ca + v + kLanes), zero.store(cb + v + kLanes), zero.store(cc + v + kLanes);
  }
  return ok.zero_mask() == 0;
}
// out = a x + b y + c (x - y) of one long fp32 row with non-temporal stores (the writes of fwd_rows' one-pass loop
// where nt_stores_on says so): the same operations as write_row's loop, which GCC contracts to
// fma(c, x - y, fma(a, x, b y)) (NO_B, logmap: fma(c, x - y, a x); one-input ops: a x), so the same bits
// (tested against the regular stores).  orow 64-byte aligned, D a multiple of 16 (the caller checks).
template <bool HAS_Y, bool NO_B>
inline void write_row_f32_nt(const float* xr, const float* yr, float* orow, int64_t D, float a, float b, float c) {
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), vc = _mm512_set1_ps(c);
  for (int64_t j = 0; j < D; j += 16) {
    const __m512 xv = _mm512_loadu_ps(xr + j);
    __m512 o;
    if constexpr (HAS_Y) {
      const __m512 yv = _mm512_loadu_ps(yr + j);
      const __m512 d = _mm512_sub_ps(xv, yv);
      o = NO_B ? _mm512_fmadd_ps(vc, d, _mm512_mul_ps(va, xv))
               : _mm512_fmadd_ps(vc, d, _mm512_fmadd_ps(va, xv, _mm512_mul_ps(vb, yv)));
    } else {
      o = _mm512_mul_ps(va, xv);
    }
    _mm512_stream_ps(orow + j, o);
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
// ---------------------------------------------------------------- fp32 long rows on AVX2
// The AVX-512 long-row machinery above on 8-float / 4-double vectors (session 28): long_sums_f32 / row_acc_f32 with a
// transposing lane sum per 4 rows (hsum4), the one-pass loop (long_loop) and the non-temporal writes
// (write_row_f32_nt).  Double sums: 4 floats per load (a masked load for the tail) widened to one 4-double vector, four
// FMA chains per sum for one-input rows (two for two-input rows, whose three or four sums then hold 6-8 chains; 16
// registers), the chains added to one 4-lane vector per row.  Float sums (FS, mobius_add / mobius_sub): 8 lanes x four
// chains (32-float steps: each chain sums D / 32 products in float, as AVX-512's 16 lanes x two chains), the chains
// added in float ((c0 + c1) + (c2 + c3)), the 8 lane sums widened and added in double, so the same bound as AVX-512's
// (kFloatSumsMaxD, float_sums_fine, above).  The staged float calls (block_fwd_float_reg, block_fwd_logmap_rcp,
// block_fwd_msm_closed) stay AVX-512-only: AVX2 blocks take block_fwd_float_call (a port of the first two measured no
// gain on AVX2, session 28).
constexpr bool kLongSumsF32 = true;
using LaneAccD = __m256d;  // one row's sums before their horizontal sum (row_acc_f32, hsum8_one)
// Lane b of the result: the sum of the 4 lanes of a[b], ((a0 + a1) + (a2 + a3)).
inline __m256d hsum4(const __m256d (&a)[4]) {
  const __m256d s0 = _mm256_add_pd(_mm256_unpacklo_pd(a[0], a[1]), _mm256_unpackhi_pd(a[0], a[1]));
  const __m256d s1 = _mm256_add_pd(_mm256_unpacklo_pd(a[2], a[3]), _mm256_unpackhi_pd(a[2], a[3]));
  return _mm256_add_pd(_mm256_permute2f128_pd(s0, s1, 0x20), _mm256_permute2f128_pd(s0, s1, 0x31));
}
// long_sums_f32's vector steps (it follows the ISA sections): groups of 4 rows, one hsum4 a sum.
constexpr int kSumLanes = 4;
inline __m256d hsum_lanes(const __m256d (&a)[4]) { return hsum4(a); }
inline void store_lanes(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
inline __m256d zero_lanes() { return _mm256_setzero_pd(); }
// The sum of the 4 lanes of a in hsum4's order: the same bits as hsum4's lane for a row (the one-row loop).
inline double hsum8_one(__m256d a) {
  alignas(32) double t[4];
  _mm256_store_pd(t, a);
  return (t[0] + t[1]) + (t[2] + t[3]);
}
// The n (< 0: none, > 8: 8) first floats from p, zeros past them (a masked load: no access past them).
inline __m256 load8_tail(const float* p, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::max<int64_t>(n, 0))),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_maskload_ps(p, m);
}
inline __m256d load4_pd_tail(const float* p, int64_t n) {
  if (n >= 4) return _mm256_cvtps_pd(_mm_loadu_ps(p));
  const __m128i m =
      _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(std::max<int64_t>(n, 0))), _mm_setr_epi32(0, 1, 2, 3));
  return _mm256_cvtps_pd(_mm_maskload_ps(p, m));
}

// The sums of one fp32 row (x row xr, y row yr) as 4-lane double vectors acc[s] (s: xx, yy, xy, dd), whose 4 lanes
// hsum4 / hsum8_one then add (FS: float sums; see the section's head).
template <bool HAS_Y, bool DD, bool FS>
inline void row_acc_f32(const float* xr, const float* yr, int64_t D, __m256d* acc) {
  constexpr int NS = HAS_Y ? (DD ? 4 : 3) : 1;
  if constexpr (FS) {
    __m256 f[4][NS];
    for (int c = 0; c < 4; ++c) {
      for (int s = 0; s < NS; ++s) f[c][s] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < D; j += 32) {  // explicit FMAs: the same rounding whatever the compiler
      for (int c = 0; c < 4; ++c) {
        const int64_t o = j + 8 * c;
        const __m256 xv = load8_tail(xr + o, D - o);
        f[c][0] = _mm256_fmadd_ps(xv, xv, f[c][0]);
        if (HAS_Y) {
          const __m256 yv = load8_tail(yr + o, D - o);
          f[c][1] = _mm256_fmadd_ps(yv, yv, f[c][1]);
          f[c][2] = _mm256_fmadd_ps(xv, yv, f[c][2]);
        }
      }
    }
    for (int s = 0; s < NS; ++s) {
      const __m256 t = _mm256_add_ps(_mm256_add_ps(f[0][s], f[1][s]), _mm256_add_ps(f[2][s], f[3][s]));
      acc[s] = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(t)), _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
    }
    return;
  }
  constexpr int NC = NS == 1 ? 4 : 2;  // chains per sum
  __m256d a[NC][NS];
  for (int c = 0; c < NC; ++c) {
    for (int s = 0; s < NS; ++s) a[c][s] = _mm256_setzero_pd();
  }
  for (int64_t j = 0; j < D; j += 16) {
    for (int q = 0; q < 4; ++q) {
      const int c = q % NC;
      const int64_t o = j + 4 * q;
      const __m256d xd = load4_pd_tail(xr + o, D - o);
      a[c][0] = _mm256_fmadd_pd(xd, xd, a[c][0]);
      if (HAS_Y) {
        const __m256d yd = load4_pd_tail(yr + o, D - o);
        a[c][1] = _mm256_fmadd_pd(yd, yd, a[c][1]);
        a[c][2] = _mm256_fmadd_pd(xd, yd, a[c][2]);
        if (DD) {
          const __m256d d = _mm256_sub_pd(xd, yd);
          a[c][NS - 1] = _mm256_fmadd_pd(d, d, a[c][NS - 1]);
        }
      }
    }
  }
  for (int s = 0; s < NS; ++s) {
    acc[s] = NC == 4 ? _mm256_add_pd(_mm256_add_pd(a[0][s], a[1][s]), _mm256_add_pd(a[NC - 2][s], a[NC - 1][s]))
                     : _mm256_add_pd(a[0][s], a[1][s]);
  }
}

// write_row_f32_nt (AVX-512, above) on 8-float vectors: the same operations, the same bits as write_row
// (orow 64-byte aligned, D a multiple of 16: the caller checks).
template <bool HAS_Y, bool NO_B>
inline void write_row_f32_nt(const float* xr, const float* yr, float* orow, int64_t D, float a, float b, float c) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), vc = _mm256_set1_ps(c);
  for (int64_t j = 0; j < D; j += 8) {
    const __m256 xv = _mm256_loadu_ps(xr + j);
    __m256 o;
    if constexpr (HAS_Y) {
      const __m256 yv = _mm256_loadu_ps(yr + j);
      const __m256 d = _mm256_sub_ps(xv, yv);
      o = NO_B ? _mm256_fmadd_ps(vc, d, _mm256_mul_ps(va, xv))
               : _mm256_fmadd_ps(vc, d, _mm256_fmadd_ps(va, xv, _mm256_mul_ps(vb, yv)));
    } else {
      o = _mm256_mul_ps(va, xv);
    }
    _mm256_stream_ps(orow + j, o);
  }
}
inline bool logmap_rcp_on() { return false; }
inline bool block_fwd_msm_closed(const double*, const double*, const double*, int64_t, double*, double*, double*) {
  return false;
}
inline bool block_fwd_logmap_rcp(const double*, const double*, const double*, const double*, const double*, int64_t,
                                 double*, double*, double*) {
  return false;
}
template <int OP>
inline bool block_fwd_float_reg(const double*, const double*, const double*, const double*, const double*,
                                const double*, int64_t, double, double*, double*, double*) {
  return false;
}
#else
using LaneAccD = __m512d;
template <bool HAS_Y, bool DD, bool FS>
inline void row_acc_f32(const float*, const float*, int64_t, LaneAccD*) {}
inline double hsum8_one(LaneAccD) { return 0.0; }
template <bool HAS_Y, bool NO_B>
inline void write_row_f32_nt(const float*, const float*, float*, int64_t, float, float, float) {}
constexpr bool kLongSumsF32 = false;
inline bool logmap_rcp_on() { return false; }
inline bool block_fwd_msm_closed(const double*, const double*, const double*, int64_t, double*, double*, double*) {
  return false;
}
inline bool block_fwd_logmap_rcp(const double*, const double*, const double*, const double*, const double*, int64_t,
                                 double*, double*, double*) {
  return false;
}
template <bool HAS_Y, bool DD, typename W>
inline void long_sums_f32(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, double*,
                          double*, double*, double*, int64_t, int64_t, W&&) {}
template <int OP>
inline bool block_fwd_float_reg(const double*, const double*, const double*, const double*, const double*,
                                const double*, int64_t, double, double*, double*, double*) {
  return false;
}
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The sums of the nb rows from row i0 (x rows of stride sx, y of sy; nb <= nv, nv a multiple of kSumLanes (8 lanes on
// AVX-512, 4 on AVX2), the lanes nb .. nv repeat row nb - 1); software prefetch of the row pf rows ahead (0: none).
// after_row(b) runs after the loads and sums of lane b (b = 0 .. nv - 1): the one-pass loop writes a row of the
// previous block there.  FS: float sums (row_acc_f32).  One body for both ISAs: the vector steps are the section's
// LaneAccD, kSumLanes, hsum_lanes, store_lanes and zero_lanes.
template <bool HAS_Y, bool DD, bool FS = false, typename W>
inline void long_sums_f32(const float* xp, int64_t sx, const float* yp, int64_t sy, int64_t i0, int64_t nb,
                          int64_t nv, int64_t D, double* xx, double* yy, double* xy, double* dd,
                          int64_t end, int64_t pf, W&& after_row) {
  static_assert(!(FS && DD), "float sums: no dd");
  constexpr int NS = HAS_Y ? (DD ? 4 : 3) : 1;
  LaneAccD acc[NS][kSumLanes];
  for (int64_t g = 0; g < nv; g += kSumLanes) {
    for (int r = 0; r < kSumLanes; ++r) {
      const int64_t b = std::min<int64_t>(g + r, nb - 1);
      const int64_t i = i0 + b;
      const float* xr = xp + i * sx;
      const float* yr = yp + i * sy;
      if (pf > 0 && i + pf < end) {
        for (int64_t l = 0; l < D * 4; l += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(xr + pf * sx) + l, 0, 3);
          if (HAS_Y) __builtin_prefetch(reinterpret_cast<const char*>(yr + pf * sy) + l, 0, 3);
        }
      }
      LaneAccD a[NS];
      row_acc_f32<HAS_Y, DD, FS>(xr, yr, D, a);
      for (int s = 0; s < NS; ++s) acc[s][r] = a[s];
      after_row(g + r);
    }
    store_lanes(xx + g, hsum_lanes(acc[0]));
    if (HAS_Y) {
      store_lanes(yy + g, hsum_lanes(acc[1]));
      store_lanes(xy + g, hsum_lanes(acc[2]));
      store_lanes(dd + g, DD ? hsum_lanes(acc[NS - 1]) : zero_lanes());
    } else {
      store_lanes(yy + g, zero_lanes());
      store_lanes(xy + g, zero_lanes());
      store_lanes(dd + g, zero_lanes());
    }
  }
}
#endif

// sw: the fp32 float path's switches of the call (f32rows::switches; all off for other dtypes).
template <typename scalar_t, int OP, bool SHORT>
void fwd_rows(const at::Tensor& x, const at::Tensor& y, const RowScalars& sc, double param, at::Tensor& out,
              const f32rows::Switches& sw) {
  using opmath_t = typename OpMath<scalar_t>::type;
  constexpr bool HAS_Y = op_has_y(OP), SCALAR_OUT = op_scalar_out(OP), HAS_R = op_has_r(OP);
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), so = SCALAR_OUT ? 1 : out.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* op_ = out.data_ptr<scalar_t>();
  // short rows stored back to back (the usual case): the writes as one stream per block
  const bool stream = !SCALAR_OUT && D <= kStreamMaxD && sx == D && so == D && (!HAS_Y || sy == D);
  const int64_t B = lane_block<scalar_t, SHORT>(D, HAS_Y ? 3 : 2);
  int rowof[kMaxBlock * kStreamMaxD];
  if (stream) {
    for (int e = 0; e < B * D; ++e) rowof[e] = static_cast<int>(e / D);
  }
  const RowPrefetch prefetch(D * static_cast<int64_t>(sizeof(scalar_t)));
  // fp32 rows of D <= 16 back to back: the float fast path (stereographic_rows_f32.h) per block, the
  // double path below for the blocks it declines (dist, session 40: the register pass only, f32rows::f32_op; its
  // output one float per row, so = 1)
  constexpr bool kF32Op = std::is_same<scalar_t, float>::value && SHORT && f32rows::f32_op(OP);
  const int f32_mode = kF32Op ? sw.mode : 0;
  const int f32_lane_mode = kF32Op ? sw.lane : 0;
  const int f32_reg = kF32Op ? sw.reg : 0;
  const bool f32_fast = kF32Op && sx == D && so == (SCALAR_OUT ? 1 : D) && (!HAS_Y || sy == D) && sw.use;
  // fp32 rows longer than the short-row cut: the AVX-512 / AVX2 row sums (above)
  constexpr bool kF32Long = std::is_same<scalar_t, float>::value && !SHORT && kLongSumsF32;
  const bool f32_long = kF32Long && long_sums_on();
  // rows ahead (8 at D = 64; 0 and 4 measured slower; GEOOPS_STEREO_LONG_PF: long_prefetch)
  [[maybe_unused]] const int64_t long_pf = kF32Long ? long_prefetch(prefetch.ahead) : 0;
  // the one-pass loop's row writes (f32_long: that loop runs) with non-temporal stores (nt_stores_on, above)
  [[maybe_unused]] const bool nt = kF32Long && !SCALAR_OUT && f32_long && so == D && D % 16 == 0 &&
                                   reinterpret_cast<uintptr_t>(op_) % 64 == 0 &&
                                   nt_stores_on(N * D * static_cast<int64_t>(sizeof(scalar_t)));
  // the fast path's k per row: a call-wide curvature filled once (a per-block scalar fill of 32 rows cost about
  // a third of the D = 2 block's load/store floor), per-row k of stride 1 read in place
  const bool float_on = float_call_on();
  const bool float_stage = !SHORT && float_on && float_call_op(OP) && n_calls(OP) == 1 && float_stage_on();
  const bool logmap_rcp = OP == LOGMAP && float_stage && logmap_rcp_on();
  alignas(64) double kconst[kMaxBlock];
  if (kF32Op && f32_fast && sc.sk == 0 && N > 0) std::fill(kconst, kconst + kMaxBlock, sc.k[0]);
  // the lane math of a block: the coefficients ca, cb, cc of its nv lanes from its row sums (kk, rr: scratch)
  auto block_coefs_sums = [&](int64_t i0, int64_t nv, int64_t end, const double* xx, const double* yy, const double* xy,
                         const double* dd, double* kk, double* rr, double* ca, double* cb, double* cc) {
    block_scalars<HAS_R>(sc, i0, nv, end, kk, rr);
    if constexpr (!std::is_same<scalar_t, double>::value && float_call_op(OP)) {
      // long rows on AVX-512: the staging in registers (above), block_fwd_float_call for the blocks it declines
      // (logmap_rcp holds for logmap only: its one-reciprocal staging in place of block_fwd_float_reg)
      if constexpr (!SHORT && kLongSumsF32 && n_calls(OP) == 1) {
        if (logmap_rcp) {
          if (block_fwd_logmap_rcp(xx, yy, xy, dd, kk, nv, ca, cb, cc)) return;
        } else if (float_stage && block_fwd_float_reg<OP>(xx, yy, xy, dd, kk, rr, nv, param, ca, cb, cc)) {
          return;
        }
      }
      if constexpr (OP == MOBIUS_SCALAR_MUL) {
        if (float_on && block_fwd_msm_closed(xx, kk, rr, nv, ca, cb, cc)) return;
      }
      block_fwd_float_call<OP>(xx, yy, xy, dd, kk, rr, nv, param, float_on, ca, cb, cc);
    } else {
      LaneMath lm;
      for (int64_t v = 0; v < nv; v += kLanes) {
        const Row<Vec> row{Vec::loadu(xx + v), Vec::loadu(yy + v), Vec::loadu(xy + v),
                           Vec::loadu(dd + v), Vec::loadu(kk + v), Vec::loadu(rr + v)};
        const Coef<Vec> c = stereo::fwd<Vec>(OP, row, Vec(param), lm);
        c.a.store(ca + v);
        c.b.store(cb + v);
        c.c.store(cc + v);
      }
    }
  };
  // ... and logmap's rows near x's antipode (k > 0, antipode_lanes) again in scalar double with den from a second pass
  // over the row (antipode_den): the sums' den is off by ~eps / den relative there.  Returns those rows' mask (bit b:
  // row i0 + b; 0 in the usual case), which the writes take (write_block_row, write_near_rows).
  // In float types the mask reaches up to stereo::antipode_float_cut_fwd (the rows between antipode_cut and it keep
  // their coefficients, double there: z >= the float series cut; only their write changes).
  auto block_coefs = [&](int64_t i0, int64_t nv, int64_t end, const double* xx, const double* yy, const double* xy,
                         const double* dd, double* kk, double* rr, double* ca, double* cb, double* cc) -> uint64_t {
    block_coefs_sums(i0, nv, end, xx, yy, xy, dd, kk, rr, ca, cb, cc);
    uint64_t near = 0;
    if constexpr (OP == LOGMAP) {
      const double cut = std::is_same<scalar_t, double>::value ? stereo::antipode_cut<double>()
                                                                : stereo::antipode_float_cut_fwd<double>();
      antipode_block(xp, sx, yp, sy, i0, std::min(nv, end - i0), D, xx, yy, xy, kk, cut, [&](int64_t b, double den) {
        near |= uint64_t(1) << b;
        if (den < 0.0) return;
        DirectMath<double> dm;
        const double lo = stereo::antipode_min_den<double>();
        const Coef<double> c = stereo::logmap_coef(Row<double>{xx[b], yy[b], xy[b], dd[b], kk[b], 0.0}, den, dm, lo);
        ca[b] = c.a, cb[b] = c.b, cc[b] = c.c;
      });
    }
    return near;
  };
  // row b of a block from row i0 with coefficients ca, cb, cc: the per-row write (no_b: write_row's NO_B)
  auto write_row_as = [&](auto no_b, int64_t i0, int64_t b, const double* ca, const double* cb, const double* cc) {
    const int64_t i = i0 + b;
    constexpr bool kNoB = decltype(no_b)::value;
    if constexpr (kF32Long && !SCALAR_OUT) {
      if (nt) {
        write_row_f32_nt<HAS_Y, kNoB>(reinterpret_cast<const float*>(xp + i * sx),
                                      reinterpret_cast<const float*>(yp + i * sy), reinterpret_cast<float*>(op_ + i * so),
                                      D, static_cast<float>(ca[b]), static_cast<float>(cb[b]), static_cast<float>(cc[b]));
        return;
      }
    }
    write_row<scalar_t, HAS_Y, kNoB>(xp + i * sx, yp + i * sy, op_ + i * so, D, static_cast<opmath_t>(ca[b]),
                               static_cast<opmath_t>(cb[b]), static_cast<opmath_t>(cc[b]));
  };
  // logmap's rows near x's antipode (block_coefs' mask) in float types: the write in double.  Their a, c ~ 1 / sqrt(den)
  // and the terms a x, c (x - y) cancel to O(1), so a float write (coefficients, x - y and products rounded to float)
  // is ~eps32 / sqrt(den) off, more than the eager reference (which cancels only in its numerator); in double the
  // row rounds once.  (float64 rows: the usual write is this one.)
  constexpr bool kNearDouble = OP == LOGMAP && !std::is_same<scalar_t, double>::value;
  auto write_near_row = [&](int64_t i0, int64_t b, const double* ca, const double* cb, const double* cc) {
    const int64_t i = i0 + b;
    write_row<scalar_t, HAS_Y>(xp + i * sx, yp + i * sy, op_ + i * so, D, ca[b], cb[b], cc[b]);
  };
  // ... the rows of a block's mask near (nonzero), over the usual write of the block: out of line, so that the short
  // rows' block function (the blocks the fp32 fast paths decline: most at k > 0) keeps its size and its row loop no
  // test (session 44 tested each row in the loop: its fp32 forward at 2^20 x 5, k = +1 was 4.5 % slower)
  auto write_near_rows = [&](int64_t i0, uint64_t near, const double* ca, const double* cb, const double* cc)
      __attribute__((noinline, cold)) {
    for (; near; near &= near - 1) write_near_row(i0, __builtin_ctzll(near), ca, cb, cc);
  };
  auto write_block_row = [&](int64_t i0, int64_t b, const double* ca, const double* cb, const double* cc,
                             uint64_t near) {
    if constexpr (kNearDouble) {
      if (near >> b & 1) return write_near_row(i0, b, ca, cb, cc);
    }
    // NO_B for logmap's fp32 long rows, whose b is 0 but in the rows of its y form (stereo::logmap_y_form,
    // session 39: a = 0, b != 0), which take the general write
    if constexpr (OP == LOGMAP && !SHORT && std::is_same<scalar_t, float>::value) {
      if (cb[b] == 0.0) return write_row_as(std::true_type{}, i0, b, ca, cb, cc);
    }
    write_row_as(std::false_type{}, i0, b, ca, cb, cc);
  };
  // the row sums of long fp32 rows (long_sums_f32): mobius_add / mobius_sub's in float for D <= kFloatSumsMaxD
  // (GEOOPS_STEREO_F32_SUMS=0: in double, read per call), the others' in double
  constexpr bool kFSumOp = OP == MOBIUS_ADD || OP == MOBIUS_SUB;
  const bool f32_fsum = kF32Long && kFSumOp && D <= kFloatSumsMaxD && float_sums_on();
  auto long_sums = [&](int64_t i0, int64_t nb, int64_t nv, int64_t end, double* xx, double* yy, double* xy,
                       double* dd, auto&& after_row) {
    if constexpr (kF32Long) {
      const float* xf = reinterpret_cast<const float*>(xp);
      const float* yf = reinterpret_cast<const float*>(yp);
      if constexpr (kFSumOp) {
        if (f32_fsum) {
          long_sums_f32<HAS_Y, false, true>(xf, sx, yf, sy, i0, nb, nv, D, xx, yy, xy, dd, end, long_pf, after_row);
          // a lane whose Mobius denominator is below kFloatSumsMinDen (or NaN, or a sum beyond float's range): the
          // block's sums again in double
          // (its rows are still in L1), so that the float sums' roundings are never amplified by a small den
          const double sgn = OP == MOBIUS_SUB ? -1.0 : 1.0;
          bool fine = true;
          for (int64_t b = 0; b < nv; ++b) {
            const double k = sc.k[std::min<int64_t>(i0 + b, end - 1) * sc.sk];
            fine &= float_sums_fine(sgn, k, xx[b], yy[b], xy[b]);
          }
          if (!fine) {
            long_sums_f32<HAS_Y, false>(xf, sx, yf, sy, i0, nb, nv, D, xx, yy, xy, dd, end, 0, [](int64_t) {});
          }
          return;
        }
      }
      long_sums_f32<HAS_Y, fwd_reads_dd(OP)>(xf, sx, yf, sy, i0, nb, nv, D, xx, yy, xy, dd, end, long_pf, after_row);
    }
  };
  if constexpr (kF32Long && !SCALAR_OUT) {
    // One pass: block j's row sums interleaved, row by row, with the writes of block j - 1 (whose x, y rows are
    // still in L1), so that the loads of fresh rows and the stores of the output are in flight together (a
    // blocked loop alternates a load-bound sums phase and a store-bound write phase: measured 1.29-1.30x the
    // limit op vs 1.11-1.18x for the one pass, 2^18 x 64).  The same sums, coefficients and row writes as the
    // blocked loop below (scalar outputs, GEOOPS_STEREO_LONG_SUMS=0): bit-identical results.
    // mobius_scalar_mul: the closed-form coefficients of a block's first kFLanes lanes run inside its row sums, as
    // soon as those lanes' sums are stored (after row kFLanes), so that their latency overlaps the loads of the
    // block's other rows; the other lanes after the sums.  The coefficients are lane by lane, so the split changes
    // no bits; a part that declines sends the whole block to block_coefs, the same per-block choice as without the
    // split.  (The same split of logmap's 16-row blocks, 8 lanes inside the sums, measured no gain.)
    const bool msm_early = OP == MOBIUS_SCALAR_MUL && float_on;
    // the coefficients of lanes v0 .. v1 of the block from row i0 into c (false: declined)
    auto msm_part = [&](int64_t i0, int64_t v0, int64_t v1, int64_t end, const double* xx, double* kk, double* rr,
                        double (*c)[kMaxBlock]) {
      block_scalars<HAS_R>(sc, i0 + v0, v1 - v0, end, kk + v0, rr + v0);
      return block_fwd_msm_closed(xx + v0, kk + v0, rr + v0, v1 - v0, c[0] + v0, c[1] + v0, c[2] + v0);
    };
    const int loop = long_loop(OP);
    if constexpr (kFSumOp) {
      if (f32_long && loop == kLoopRow) {
        // one row at a time (long_loop, above): its sums, its coefficients, its write
        parallel_rows(N, B, grain_for(D), [&](int64_t begin, int64_t end) {
          const float* xf = reinterpret_cast<const float*>(xp);
          const float* yf = reinterpret_cast<const float*>(yp);
          const double sgn = OP == MOBIUS_SUB ? -1.0 : 1.0;
          double ca[1], cb[1], cc[1];
          for (int64_t i = begin; i < end; ++i) {
            const float* xr = xf + i * sx;
            const float* yr = yf + i * sy;
            const double k = sc.k[i * sc.sk];
            LaneAccD a[3];
            double sxx = 0, syy = 0, sxy = 0;
            bool dbl = !f32_fsum;
            if (f32_fsum) {
              row_acc_f32<true, false, true>(xr, yr, D, a);
              sxx = hsum8_one(a[0]), syy = hsum8_one(a[1]), sxy = hsum8_one(a[2]);
              dbl = !float_sums_fine(sgn, k, sxx, syy, sxy);  // the block loops' test, for this row alone
            }
            if (dbl) {
              row_acc_f32<true, false, false>(xr, yr, D, a);
              sxx = hsum8_one(a[0]), syy = hsum8_one(a[1]), sxy = hsum8_one(a[2]);
            }
            // the coefficients in scalar double (a vdivpd of a whole vector per row was ~18 % of the loop's samples)
            const Coef<double> c = stereo::mobius_add_coef(sxx, syy, sgn * sxy, k);
            ca[0] = c.a, cb[0] = sgn * c.b, cc[0] = 0.0;
            write_block_row(i, 0, ca, cb, cc, 0);
          }
          if (nt) _mm_sfence();  // the streamed rows visible before the chunk ends
        });
        return;
      }
    }
    // the pass / block loops' rows per block (long_group: B, or a group of G rows that tiles the B-row blocks)
    const int64_t G = long_group(B);
    if (f32_long && loop == kLoopPass) {
      parallel_rows(N, std::max(B, G), grain_for(D), [&](int64_t begin, int64_t end) {
        alignas(64) double xx[kMaxBlock], yy[kMaxBlock], xy[kMaxBlock], dd[kMaxBlock], kk[kMaxBlock], rr[kMaxBlock];
        alignas(64) double co[2][3][kMaxBlock];
        uint64_t near[2] = {0, 0};  // block_coefs' masks
        int64_t p0 = begin, pn = 0;  // the pending block: rows p0 .. p0 + pn, coefficients co[1 - cur]
        int cur = 0;
        // the pending rows' write order (pass_rotation, above): row (b + rot) mod pn with the sums of row b
        const int64_t rot =
            pass_rotation(op_, so, xp, sx, yp, sy, HAS_Y, begin, G, sizeof(scalar_t), OP == MOBIUS_SCALAR_MUL);
        for (int64_t i0 = begin; i0 < end; i0 += G) {
          const int64_t nb = std::min<int64_t>(G, end - i0), nv = (nb + kLanes - 1) / kLanes * kLanes;
          const double *pa = co[1 - cur][0], *pb = co[1 - cur][1], *pc = co[1 - cur][2];
          const int64_t s = rot < pn ? rot : 0;
          bool early = false;  // mobius_scalar_mul: the first kFLanes lanes' coefficients done (msm_part)
          const uint64_t pnear = near[1 - cur];
          auto write_pending = [&](int64_t b) {
            write_block_row(p0, b + s < pn ? b + s : b + s - pn, pa, pb, pc, pnear);
          };
          long_sums(i0, nb, nv, end, xx, yy, xy, dd, [&](int64_t b) {
            if (b < pn) write_pending(b);
            if constexpr (OP == MOBIUS_SCALAR_MUL) {
              if (b == kFLanes && msm_early) early = msm_part(i0, 0, kFLanes, end, xx, kk, rr, co[cur]);
            }
          });
          for (int64_t b = nv; b < pn; ++b) write_pending(b);
          near[cur] = 0;
          if (!(early && msm_part(i0, kFLanes, nv, end, xx, kk, rr, co[cur]))) {
            near[cur] = block_coefs(i0, nv, end, xx, yy, xy, dd, kk, rr, co[cur][0], co[cur][1], co[cur][2]);
          }
          p0 = i0, pn = nb, cur = 1 - cur;
        }
        for (int64_t b = 0; b < pn; ++b) {
          write_block_row(p0, b, co[1 - cur][0], co[1 - cur][1], co[1 - cur][2], near[1 - cur]);
        }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
        if (nt) _mm_sfence();  // the streamed rows visible before the chunk ends
#endif
      });
      return;
    }
  }
  auto block = [&](int64_t i0, int64_t nb, int64_t nv, int64_t end) {
    alignas(64) double xx[kMaxBlock], yy[kMaxBlock], xy[kMaxBlock], dd[kMaxBlock], kk[kMaxBlock], rr[kMaxBlock];
    alignas(64) double ca[kMaxBlock], cb[kMaxBlock], cc[kMaxBlock];
    if constexpr (kF32Op && f32rows::fast_op(OP)) {  // (the fused / eight-loop blocks: not dist)
      if (f32_fast) {
        const double* kb = sc.sk == 0 ? kconst : (sc.sk == 1 ? sc.k + i0 : kk);
        if (sc.sk != 0 && sc.sk != 1) {
          for (int64_t b = 0; b < nb; ++b) kk[b] = sc.k[(i0 + b) * sc.sk];
        }
        const float* xf = reinterpret_cast<const float*>(xp) + i0 * D;
        const float* yf = HAS_Y ? reinterpret_cast<const float*>(yp) + i0 * D : nullptr;
        if (f32rows::run<OP, kBlock>(f32_mode, f32_lane_mode, D, xf, yf, reinterpret_cast<float*>(op_) + i0 * D, static_cast<int>(nb), kb)) return;
      }
    }
    if (SHORT) {
      const int64_t ia = i0 + kPrefetchBlocks * kBlock;
      prefetch_block<false>(xp, sx, D, ia, end);
      if (HAS_Y) prefetch_block<false>(yp, sy, D, ia, end);
      if (!SCALAR_OUT) prefetch_block<true>(op_, so, D, ia, end);
      block_sums<scalar_t, HAS_Y>(xp, sx, yp, sy, i0, end - 1, D, xx, yy, xy, dd);
    } else if (f32_long) {
      if constexpr (kF32Long) {
        long_sums(i0, nb, nv, end, xx, yy, xy, dd, [](int64_t) {});
      }
    } else {
      for (int64_t b = 0; b < nv; ++b) {
        if (b >= nb) {
          xx[b] = xx[nb - 1], yy[b] = yy[nb - 1], xy[b] = xy[nb - 1], dd[b] = dd[nb - 1];
          continue;
        }
        const int64_t i = i0 + b;
        prefetch(xp + i * sx, sx, i, end);
        if (HAS_Y) prefetch(yp + i * sy, sy, i, end);
        const Row<double> s = reduce_row<scalar_t, HAS_Y>(xp + i * sx, yp + i * sy, D);
        xx[b] = s.xx, yy[b] = s.yy, xy[b] = s.xy, dd[b] = s.dd;
      }
    }
    const uint64_t near = block_coefs(i0, nv, end, xx, yy, xy, dd, kk, rr, ca, cb, cc);
    if (SCALAR_OUT) {
      for (int64_t b = 0; b < nb; ++b) store(op_, i0 + b, static_cast<opmath_t>(ca[b]));
      return;
    }
    if (stream) {
      alignas(64) opmath_t fa[kMaxBlock], fb[kMaxBlock], fc[kMaxBlock];
      for (int64_t b = 0; b < nv; ++b) {
        fa[b] = static_cast<opmath_t>(ca[b]), fb[b] = static_cast<opmath_t>(cb[b]);
        fc[b] = static_cast<opmath_t>(cc[b]);
      }
      write_block<scalar_t, HAS_Y>(xp + i0 * D, HAS_Y ? yp + i0 * D : nullptr, op_ + i0 * D, static_cast<int>(nb * D), rowof, fa, fb,
                                   fc);
      if constexpr (kNearDouble) {  // (over the stream's write of those rows)
        if (near) write_near_rows(i0, near, ca, cb, cc);
      }
      return;
    }
    if constexpr (SHORT) {
      for (int64_t b = 0; b < nb; ++b) write_block_row(i0, b, ca, cb, cc, 0);
      if constexpr (kNearDouble) {  // (likewise)
        if (near) write_near_rows(i0, near, ca, cb, cc);
      }
    } else {  // (long rows: their write may be streamed stores, so those rows are not written twice)
      for (int64_t b = 0; b < nb; ++b) write_block_row(i0, b, ca, cb, cc, near);
    }
  };
  if constexpr (kF32Op) {
    // fp32 rows of the ops / D of kOpPaths: one register pass per group of rows over each chunk's blocks
    // (stereographic_rows_f32_reg.h), the blocks it declines as above (the same blocks as for_row_blocks)
    if (f32_fast && f32rows::reg_takes<OP>(f32_reg, f32_mode, D, sc.sk)) {
      const float* xf = reinterpret_cast<const float*>(xp);
      const float* yf = HAS_Y ? reinterpret_cast<const float*>(yp) : nullptr;
      float* of = reinterpret_cast<float*>(op_);
      const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(D, 1));
      parallel_rows(N, kBlock, grain, [&](int64_t begin, int64_t end) {
        f32rows::reg_range<OP, kBlock>(D, begin, end, xf, yf, of, sc.k, sc.sk, kconst, f32_lane_mode,
                                       [&](int64_t i0, int64_t nb) {
                                         block(i0, nb, (nb + kLanes - 1) / kLanes * kLanes, end);
                                       });
      });
      return;
    }
  }
  if constexpr (kF32Long && !SCALAR_OUT) {
    // the blocked loop on groups of G rows (GEOOPS_STEREO_LONG_LOOP=group, long_group, above): chunks of whole
    // B-row blocks as for_row_blocks cuts them, each in groups of G rows
    const int64_t G = f32_long && long_loop(OP) == kLoopBlock ? long_group(B) : B;
    if (G != B) {
      parallel_rows(N, std::max(B, G), grain_for(D), [&](int64_t begin, int64_t end) {
        for (int64_t i0 = begin; i0 < end; i0 += G) {
          const int64_t nb = std::min<int64_t>(G, end - i0);
          block(i0, nb, (nb + kLanes - 1) / kLanes * kLanes, end);
        }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
        if (nt) _mm_sfence();  // the streamed rows visible before the chunk ends
#endif
      });
      return;
    }
    if (nt) {  // the blocked loop of long fp32 rows with non-temporal writes (long_loop, above)
      for_row_blocks<scalar_t, SHORT>(N, D, HAS_Y ? 3 : 2, 32768, block, [] {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
        _mm_sfence();  // the streamed rows visible before the chunk ends
#endif
      });
      return;
    }
  }
  for_row_blocks<scalar_t, SHORT>(N, D, HAS_Y ? 3 : 2, 32768, block);
}

// The float backward of stereographic_bwd_f32.h applies to this call: fp32 expmap0 / logmap0, D <= 16, x, g and
// dx (if wanted) of row stride D and inner stride 1, GEOOPS_STEREO_F32_BWD not 0.
inline bool f32bwd_applies(int op, const at::Tensor& g, const at::Tensor& x, const at::Tensor& dx) {
  const int64_t D = x.size(1);
  auto rows = [D](const at::Tensor& t) { return t.dim() == 2 && t.stride(0) == D && (D == 1 || t.stride(1) == 1); };
  return x.scalar_type() == at::kFloat && f32bwd::fast_op(op) && D >= 1 && D <= f32bwd::kMaxD && rows(x) &&
         rows(g) && (!dx.defined() || rows(dx)) && f32bwd::enabled();
}

// Backward: the same blocks; row sums with <g,x>, <g,y>, <g,x-y>, the vjp (and, for vector ops, the
// forward coefficients) of stereo_math.h on the lanes, then per row
//   dx = (a + c) g + 2 xx_ x + xy_ y + 2 dd_ (x - y),  dy = (b - c) g + 2 yy_ y + xy_ x - 2 dd_ (x - y).
template <typename scalar_t, int OP, bool HAS_Y, bool SHORT>
void bwd_rows(const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc, double param,
              at::Tensor& dx, at::Tensor& dy, double* dk, double* dr) {
  using opmath_t = typename OpMath<scalar_t>::type;
  constexpr bool SCALAR_OUT = op_scalar_out(OP), HAS_R = op_has_r(OP);
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), sg = SCALAR_OUT ? 1 : g.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* dxp = dx.defined() ? dx.data_ptr<scalar_t>() : nullptr;
  scalar_t* dyp = dy.defined() ? dy.data_ptr<scalar_t>() : nullptr;
  const RowPrefetch prefetch(D * static_cast<int64_t>(sizeof(scalar_t)));
  // fp32 expmap0 / logmap0 rows of D <= 16 back to back: the float backward (stereographic_bwd_f32.h) per block,
  // the double path below for the blocks it declines
  constexpr bool kF32Bwd = std::is_same<scalar_t, float>::value && SHORT && f32bwd::fast_op(OP) && !HAS_Y;
  const bool f32_bwd = kF32Bwd && f32bwd_applies(OP, g, x, dx);
  // dist / dist0 without dk: the vjp without its call (SkipCallMath)
  constexpr bool kSkipCall = bwd_skip_call_op(OP);
  const bool skip_call = kSkipCall && dk == nullptr && bwd_skip_call_on();
  for_row_blocks<scalar_t, SHORT>(N, D, HAS_Y ? 5 : 3, 16384, [&](int64_t i0, int64_t nb, int64_t nv, int64_t end) {
    alignas(64) double xx[kMaxBlock], yy[kMaxBlock], xy[kMaxBlock], dd[kMaxBlock], kk[kMaxBlock], rr[kMaxBlock];
    alignas(64) double ga[kMaxBlock], gb[kMaxBlock], gc[kMaxBlock];
    alignas(64) double axx[kMaxBlock], ayy[kMaxBlock], axy[kMaxBlock], add[kMaxBlock], ak[kMaxBlock], ar[kMaxBlock];
    alignas(64) double ca[kMaxBlock], cb[kMaxBlock], cc[kMaxBlock];
    if constexpr (kF32Bwd) {
      if (f32_bwd) {
        // (lanes past the block repeat its last row's k, as f32bwd::block's rows: with kBlock < kRows (AVX2, 16-row
        // blocks) the next block's k must not make this block hard)
        for (int b = 0; b < f32bwd::kRows; ++b) kk[b] = sc.k[(i0 + std::min<int64_t>(b, nb - 1)) * sc.sk];
        if (f32bwd::run<OP>(D, reinterpret_cast<const float*>(xp) + i0 * D, reinterpret_cast<const float*>(gp) + i0 * D,
                            dxp ? reinterpret_cast<float*>(dxp) + i0 * D : nullptr, static_cast<int>(nb), kk,
                            dk ? dk + i0 : nullptr))
          return;
      }
    }
    if (SHORT) {
      block_sums<scalar_t, HAS_Y, !SCALAR_OUT>(xp, sx, yp, sy, i0, end - 1, D, xx, yy, xy, dd, gp, sg, ga, gb, gc);
    } else {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = i0 + b;
        const scalar_t* xr = xp + i * sx;
        const scalar_t* yr = yp + i * sy;
        const scalar_t* gr = gp + i * sg;
        prefetch(xr, sx, i, end);
        if (HAS_Y) prefetch(yr, sy, i, end);
        if (!SCALAR_OUT) prefetch(gr, sg, i, end);
        if (!HAS_Y && !SCALAR_OUT) {  // <x,x> and <g,x> in one pass
          double r[2];
          row_sums<2, 2>({xr, gr}, D, r, [](const dvec(&v)[2], dvec(&a)[2]) {
            a[0] += v[0] * v[0];
            a[1] += v[1] * v[0];
          });
          xx[b] = r[0], yy[b] = xy[b] = dd[b] = 0.0, ga[b] = r[1];
        } else if (HAS_Y && !SCALAR_OUT) {  // the four row sums and <g,x>, <g,y>, <g,x-y> in one pass
          double r[7];
          row_sums<7, 3>({xr, yr, gr}, D, r, [](const dvec(&v)[3], dvec(&a)[7]) {
            pair_terms(v[0], v[1], a);
            a[4] += v[2] * v[0];
            a[5] += v[2] * v[1];
            a[6] += v[2] * (v[0] - v[1]);
          });
          xx[b] = r[0], yy[b] = r[1], xy[b] = r[2], dd[b] = r[3], ga[b] = r[4], gb[b] = r[5], gc[b] = r[6];
        } else {
          const Row<double> s = reduce_row<scalar_t, HAS_Y>(xr, yr, D);
          xx[b] = s.xx, yy[b] = s.yy, xy[b] = s.xy, dd[b] = s.dd;
        }
      }
      for (int64_t b = nb; b < nv; ++b) {
        xx[b] = xx[nb - 1], yy[b] = yy[nb - 1], xy[b] = xy[nb - 1], dd[b] = dd[nb - 1];
        ga[b] = ga[nb - 1], gb[b] = gb[nb - 1], gc[b] = gc[nb - 1];
      }
    }
    block_scalars<HAS_R>(sc, i0, nv, end, kk, rr);
    for (int64_t b = 0; b < nv; ++b) {
      const int64_t i = std::min<int64_t>(i0 + b, end - 1);
      if (SCALAR_OUT) ga[b] = static_cast<double>(load_elem(gp + i)), gb[b] = gc[b] = 0.0;
      if (!HAS_Y && !SCALAR_OUT) gb[b] = gc[b] = 0.0;
    }
    // the row adjoints (and, for vector ops, the forward coefficients) of the block's lanes with the math policy m
    auto lane_adjoints = [&](auto& m) {
      for (int64_t v = 0; v < nv; v += kLanes) {
        const Row<Vec> row{Vec::loadu(xx + v), Vec::loadu(yy + v), Vec::loadu(xy + v),
                           Vec::loadu(dd + v), Vec::loadu(kk + v), Vec::loadu(rr + v)};
        const Row<Vec> adj = stereo::vjp<Vec>(OP, row, Vec(param), Vec::loadu(ga + v), Vec::loadu(gb + v),
                                              Vec::loadu(gc + v), m);
        adj.xx.store(axx + v), adj.yy.store(ayy + v), adj.xy.store(axy + v), adj.dd.store(add + v);
        adj.k.store(ak + v), adj.r.store(ar + v);
        if (!SCALAR_OUT) {
          const Coef<Vec> c = stereo::fwd<Vec>(OP, row, Vec(param), m);
          c.a.store(ca + v), c.b.store(cb + v), c.c.store(cc + v);
        }
      }
    };
    if (kSkipCall && skip_call) {  // dist / dist0 without dk: no call (SkipCallMath; scalar ops: no forward here)
      SkipCallMath sm;
      lane_adjoints(sm);
    } else {
      LaneMath lm;
      lane_adjoints(lm);
    }
    // logmap's rows near x's antipode: the forward's den (fwd_rows' block_coefs), so that the gradient is the
    // derivative of the value computed
    // (and, in float types, their gradients written in double: like the forward's write, dx and dy are sums of
    // ~1 / den-sized terms that cancel, ~eps32 / sqrt(den) off in float)
    // (float types: up to stereo::antipode_float_cut_bwd, the rows above antipode_cut with their lane adjoints)
    uint64_t near = 0;
    if constexpr (OP == LOGMAP) {
      const double cut = std::is_same<scalar_t, double>::value ? stereo::antipode_cut<double>()
                                                                : stereo::antipode_float_cut_bwd<double>();
      antipode_block(xp, sx, yp, sy, i0, nb, D, xx, yy, xy, kk, cut, [&](int64_t b, double den) {
        near |= uint64_t(1) << b;
        if (den < 0.0) return;
        DirectMath<double> dm;
        const Row<double> s{xx[b], yy[b], xy[b], dd[b], kk[b], 0.0};
        const double lo = stereo::antipode_min_den<double>();
        const Row<double> adj = stereo::logmap_vjp(s, den, ga[b], gb[b], gc[b], dm, lo);
        axx[b] = adj.xx, ayy[b] = adj.yy, axy[b] = adj.xy, add[b] = adj.dd, ak[b] = adj.k, ar[b] = adj.r;
        const Coef<double> c = stereo::logmap_coef(s, den, dm, lo);
        ca[b] = c.a, cb[b] = c.b, cc[b] = c.c;
      });
    }
    for (int64_t b = 0; b < nb; ++b) {
      if (dk) dk[i0 + b] = ak[b];
      if (dr) dr[i0 + b] = ar[b];
    }
    // the gradient rows in the arithmetic type T (opmath_t; double for the rows in near)
    auto write_grads = [&](auto t0, int64_t b) {
      using T = decltype(t0);
      const int64_t i = i0 + b;
      const scalar_t* xr = xp + i * sx;
      const scalar_t* yr = yp + i * sy;
      const scalar_t* gr = gp + i * sg;
      const T gx = SCALAR_OUT ? T(0) : static_cast<T>(ca[b] + cc[b]);
      const T gy = SCALAR_OUT ? T(0) : static_cast<T>(cb[b] - cc[b]);
      const T cxx = static_cast<T>(2 * axx[b]), cyy = static_cast<T>(2 * ayy[b]);
      const T cxy = static_cast<T>(axy[b]), cdd = static_cast<T>(2 * add[b]);
      scalar_t* ox = dxp ? dxp + i * D : nullptr;
      scalar_t* oy = (HAS_Y && dyp) ? dyp + i * D : nullptr;
      auto grad_at = [&](int64_t j) { return SCALAR_OUT ? T(0) : static_cast<T>(load_elem(gr + j)); };
      if (HAS_Y && ox && oy) {  // both gradients in one pass over x, y, g
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          const T xv = load_elem(xr + j), yv = load_elem(yr + j), gv = grad_at(j);
          const T dv = cdd * (xv - yv);
          store(ox, j, gx * gv + cxx * xv + cxy * yv + dv);
          store(oy, j, gy * gv + cyy * yv + cxy * xv - dv);
        }
      } else if (ox) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          const T xv = load_elem(xr + j), gv = grad_at(j);
          const T yv = HAS_Y ? T(load_elem(yr + j)) : T(0);
          store(ox, j, gx * gv + cxx * xv + cxy * yv + cdd * (xv - yv));
        }
      } else if (oy) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          const T xv = load_elem(xr + j), yv = load_elem(yr + j), gv = grad_at(j);
          store(oy, j, gy * gv + cyy * yv + cxy * xv - cdd * (xv - yv));
        }
      }
    };
    // every row in opmath_t, then the rows in near again in double, out of line (session 44 chose per row in the
    // loop: its float32 logmap backward was 5-27 % slower at 2^20 x 2, for either sign of k)
    for (int64_t b = 0; b < nb; ++b) write_grads(opmath_t(0), b);
    if constexpr (!std::is_same<opmath_t, double>::value) {
      auto write_near_grads = [&](uint64_t m) __attribute__((noinline, cold)) {
        for (; m; m &= m - 1) write_grads(double(0), __builtin_ctzll(m));
      };
      if (near) write_near_grads(near);
    }
  });
}


// The forward's instantiations are split between two units of similar compile time (the fp32 short-row register
// paths of stereographic_rows_f32.h are the largest part): unit 0, stereographic_lanes.cpp, holds the fp32 forward of
// long rows and of expmap / logmap's short rows; unit 1, stereographic_lanes_fwd_wide.cpp, the fp32 short rows of the
// other ops and every other dtype.
template <typename scalar_t>
constexpr int fwd_unit(int op, bool short_rows) {
  return std::is_same<scalar_t, float>::value && (!short_rows || op == EXPMAP || op == LOGMAP) ? 0 : 1;
}

// The forward of the runtime op code on scalar_t rows (short_rows: the rows-on-lanes blocks; stereo_lanes_fwd), in
// the unit that holds its instantiation (fwd_unit; the caller picks the unit).
template <int UNIT, typename scalar_t>
void fwd_op_rows(int op, bool short_rows, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc,
                 double param, at::Tensor& out, const f32rows::Switches& sw) {
  dispatch_op(op, [&](auto opc) {
    constexpr int OP = decltype(opc)::value;
    if (short_rows) {
      if constexpr (fwd_unit<scalar_t>(OP, true) == UNIT) fwd_rows<scalar_t, OP, true>(x, y, sc, param, out, sw);
    } else {
      if constexpr (fwd_unit<scalar_t>(OP, false) == UNIT) fwd_rows<scalar_t, OP, false>(x, y, sc, param, out, sw);
    }
    TORCH_INTERNAL_ASSERT(fwd_unit<scalar_t>(OP, short_rows) == UNIT, "stereo_lanes_fwd: op ", OP, " in unit ", UNIT);
  });
}

}  // namespace

// The forward of stereo_lanes_fwd that unit 1 holds (fwd_unit; stereographic_lanes_fwd_wide.cpp).
void stereo_lanes_fwd_wide(int op, bool short_rows, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc,
                           double param, at::Tensor& out, const f32rows::Switches& sw);

}  // namespace cpu
}  // namespace geoops
