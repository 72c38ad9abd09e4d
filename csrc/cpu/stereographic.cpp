// Fused CPU kernels of the kappa-stereographic row ops (forward and backward).
//
// One generic row kernel serves every op: a first pass over the row
// accumulates the row scalars (in double, whatever the input dtype), the
// per-op scalar math of stereo_math.h turns them into coefficients, and a
// second pass over the same row (still in L1) writes a*x + b*y + c*(x - y).
// Rows are spread over the cores with at::parallel_for.  The row sums run on
// explicit 4-lane double vectors (row_sums), the write loops are contiguous
// `omp simd` loops, each op is its own instantiation (the op code is a
// template argument, so its scalar math folds to straight-line code), and
// the transcendental functions of the scalar math are evaluated for a block
// of rows at a time on SIMD vectors (RowCalls / staged below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "geoops/stereo_math.h"
#include "stereographic.h"
#include "vec_math.h"

namespace geoops {
namespace cpu {

using namespace geoops::stereo;

namespace {

template <typename scalar_t> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

// Inner stride 1 is what the loops assume; any row stride (0 for broadcast rows) is fine.
at::Tensor rows_view(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

int64_t grain_for(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

struct Scalars {
  const double* k;
  int64_t sk;
  const double* r;
  int64_t sr;
};

// ---------------------------------------------------------------- row sums
// Row sums are accumulated in double on 4-lane vectors (GCC/Clang vector
// extensions: AVX2 registers in the native build, SSE pairs in the portable
// one), two vectors per sum so that each sum is two short FMA chains.  (An
// `omp simd reduction` spills its lanes to the stack and adds them up one by
// one at the end of every row, which costs more than the row on D = 64.)
typedef double dvec __attribute__((vector_size(32)));
typedef float fvec __attribute__((vector_size(16)));
typedef uint16_t u16vec __attribute__((vector_size(8)));
typedef uint32_t u32vec __attribute__((vector_size(16)));

// Four consecutive elements as doubles; the lanes from `n` on are zero.
template <typename scalar_t>
inline dvec load4(const scalar_t* p, int64_t n = 4) {
  if (n >= 4) {
    if constexpr (std::is_same<scalar_t, float>::value) {
      fvec f;
      std::memcpy(&f, p, sizeof(f));
      return __builtin_convertvector(f, dvec);
    } else if constexpr (std::is_same<scalar_t, double>::value) {
      dvec d;
      std::memcpy(&d, p, sizeof(d));
      return d;
    } else if constexpr (std::is_same<scalar_t, c10::BFloat16>::value) {  // the high half of a float
      u16vec h;
      std::memcpy(&h, p, sizeof(h));
      const u32vec w = __builtin_convertvector(h, u32vec) << 16;
      fvec f;
      std::memcpy(&f, &w, sizeof(f));
      return __builtin_convertvector(f, dvec);
    } else {
      return dvec{static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2]),
                  static_cast<double>(p[3])};
    }
  }
  dvec d = {0.0, 0.0, 0.0, 0.0};
  for (int64_t t = 0; t < n; ++t) d[t] = static_cast<double>(p[t]);
  return d;
}

inline double hsum(dvec v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// out[s] = sum over the row of term s, for NS terms of NIN input rows:
// terms(const dvec (&in)[NIN], dvec (&acc)[NS]) adds the terms of 4 elements
// to acc.  Every term must vanish on zero inputs (the padded tail).
template <int NS, int NIN, typename scalar_t, typename F>
inline void row_sums(const scalar_t* const (&in)[NIN], int64_t D, double (&out)[NS], F&& terms) {
  dvec acc0[NS], acc1[NS];
  for (int s = 0; s < NS; ++s) acc0[s] = acc1[s] = dvec{0.0, 0.0, 0.0, 0.0};
  dvec v0[NIN], v1[NIN];
  int64_t j = 0;
  for (; j + 8 <= D; j += 8) {
    for (int s = 0; s < NIN; ++s) {
      v0[s] = load4(in[s] + j);
      v1[s] = load4(in[s] + j + 4);
    }
    terms(v0, acc0);
    terms(v1, acc1);
  }
  for (; j < D; j += 4) {
    for (int s = 0; s < NIN; ++s) v0[s] = load4(in[s] + j, std::min<int64_t>(4, D - j));
    terms(v0, acc0);
  }
  for (int s = 0; s < NS; ++s) out[s] = hsum(acc0[s] + acc1[s]);
}

// Adds the terms of xx, yy, xy and dd = |x - y|^2 (accumulated directly) to a[0..3].
inline void pair_terms(const dvec& x, const dvec& y, dvec* a) {
  const dvec d = x - y;
  a[0] += x * x;
  a[1] += y * y;
  a[2] += x * y;
  a[3] += d * d;
}

// xx, yy, xy and dd of one row.
template <typename scalar_t, bool HAS_Y>
inline Row<double> reduce_row(const scalar_t* xr, const scalar_t* yr, int64_t D) {
  if (HAS_Y) {
    double r[4];
    row_sums<4, 2>({xr, yr}, D, r, [](const dvec(&v)[2], dvec(&a)[4]) { pair_terms(v[0], v[1], a); });
    return {r[0], r[1], r[2], r[3], 0.0, 0.0};
  }
  double r[1];
  row_sums<1, 1>({xr}, D, r, [](const dvec(&v)[1], dvec(&a)[1]) { a[0] += v[0] * v[0]; });
  return {r[0], 0.0, 0.0, 0.0, 0.0, 0.0};
}

// Stores of the write loops.  bfloat16 gets a branch-free round-to-nearest-even
// (NaN -> quiet NaN, as c10::BFloat16) so that the `omp simd` loops vectorise;
// c10's conversion has a NaN branch that kept them scalar (~4x the fp32 time).
template <typename scalar_t, typename opmath_t>
inline void store(scalar_t* o, int64_t j, opmath_t v) {
  o[j] = static_cast<scalar_t>(v);
}
inline void store(c10::BFloat16* o, int64_t j, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  reinterpret_cast<uint16_t*>(o)[j] = (v != v) ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(r);
}

// ---------------------------------------------------------------- batched scalar math
// The scalar math of a row (stereo_math.h) calls tanc/atanc at most a few
// times, and a call's argument may depend on an earlier call's value
// (mobius_scalar_mul).  To evaluate those calls on SIMD vectors across a
// block of rows, the row math is run in stages with a recording policy: in
// stage s every row's first s calls are answered from the values computed so
// far, its next call is recorded (and answered with a dummy), and the calls
// recorded by all rows are then evaluated together by tanc_n / atanc_n.  The
// run in which no row records a call is exact and its results are kept.  Ops
// without transcendentals finish in the first run.
struct RowCalls {
  static constexpr int kMax = 4;
  int calls = 0, known = 0;
  bool pending = false;
  bool is_atanc[kMax];
  double z[kMax], q[kMax], val[kMax];

  double call(bool at, double zz, double qq) {
    const int i = calls++;
    if (i >= kMax) return at ? atanc(zz, qq) : tanc(zz);  // never reached by the ops of stereo_math.h
    if (i < known) return val[i];
    if (i == known) {
      for (int j = 0; j < known; ++j) {  // the same call again (e.g. fwd after vjp): reuse its value
        if (is_atanc[j] == at && z[j] == zz && q[j] == qq) {
          is_atanc[i] = at, z[i] = zz, q[i] = qq, val[i] = val[j];
          ++known;
          return val[i];
        }
      }
      is_atanc[i] = at, z[i] = zz, q[i] = qq;
      pending = true;
    }
    return 1.0;
  }
  double tanc(double zz) { return call(false, zz, 0.0); }
  double atanc(double zz, double qq) { return call(true, zz, qq); }
};

// Runs run(b, math) for the rows b < nb of a block until every row's calls
// are known; the last run of each row is exact.
template <int64_t MAXB, typename F>
inline void staged(int64_t nb, F&& run) {
  RowCalls calls[MAXB];
  double tz[MAXB], tv[MAXB], az[MAXB], aq[MAXB], av[MAXB];
  int trow[MAXB], arow[MAXB];
  while (true) {
    int nt = 0, na = 0;
    for (int64_t b = 0; b < nb; ++b) {
      RowCalls& c = calls[b];
      c.calls = 0;
      c.pending = false;
      run(b, c);
      if (!c.pending) continue;
      const int i = c.known;
      if (c.is_atanc[i]) {
        az[na] = c.z[i], aq[na] = c.q[i], arow[na++] = static_cast<int>(b);
      } else {
        tz[nt] = c.z[i], trow[nt++] = static_cast<int>(b);
      }
    }
    if (nt + na == 0) return;
    if (nt) tanc_n(tz, tv, nt);
    if (na) atanc_n(az, aq, av, na);
    for (int j = 0; j < nt; ++j) {
      RowCalls& c = calls[trow[j]];
      c.val[c.known++] = tv[j];
    }
    for (int j = 0; j < na; ++j) {
      RowCalls& c = calls[arow[j]];
      c.val[c.known++] = av[j];
    }
  }
}

// Rows are processed in blocks: the reductions of a block first, then the
// scalar math of its rows (staged: their transcendentals on SIMD vectors),
// then the writes, with the block's rows still in L1.
constexpr int64_t kMaxBlock = 32;

template <typename scalar_t>
int64_t block_rows(int64_t D, int streams) {
  const int64_t bytes = std::max<int64_t>(D, 1) * static_cast<int64_t>(sizeof(scalar_t)) * streams;
  return std::min<int64_t>(kMaxBlock, std::max<int64_t>(1, 16384 / bytes));
}

// Software prefetch of the row `ahead` rows further on, issued while the
// current row is reduced, so that the next block's loads are in flight
// during this block's scalar math and writes (the blocked loop otherwise
// leaves the memory idle between its phases; measured 0-8% on D = 64).
// Rows of 4 KiB and more stream well enough on the hardware prefetchers.
struct RowPrefetch {
  int64_t ahead, bytes;
  explicit RowPrefetch(int64_t row_bytes)
      : ahead(row_bytes >= 4096 ? 0 : std::max<int64_t>(1, 2048 / std::max<int64_t>(row_bytes, 1))),
        bytes(row_bytes) {}
  template <typename T>
  inline void operator()(const T* row, int64_t stride, int64_t i, int64_t end) const {
    if (ahead == 0 || i + ahead >= end || stride == 0) return;
    const char* p = reinterpret_cast<const char*>(row + ahead * stride);
    for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l, 0, 3);
  }
};

template <typename scalar_t, int OP>
void fwd_loop(const at::Tensor& x, const at::Tensor& y, Scalars sc, double param, at::Tensor& out) {
  using opmath_t = typename OpMath<scalar_t>::type;
  constexpr bool HAS_Y = op_has_y(OP), SCALAR_OUT = op_scalar_out(OP);
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), so = SCALAR_OUT ? 1 : out.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* op_ = out.data_ptr<scalar_t>();
  const int64_t B = block_rows<scalar_t>(D, HAS_Y ? 3 : 2);
  const RowPrefetch prefetch(D * static_cast<int64_t>(sizeof(scalar_t)));
  at::parallel_for(0, N, grain_for(D), [&](int64_t begin, int64_t end) {
    Row<double> rows[kMaxBlock];
    Coef<double> coefs[kMaxBlock];
    for (int64_t i0 = begin; i0 < end; i0 += B) {
      const int64_t nb = std::min(B, end - i0);
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = i0 + b;
        prefetch(xp + i * sx, sx, i, end);
        if (HAS_Y) prefetch(yp + i * sy, sy, i, end);
        rows[b] = reduce_row<scalar_t, HAS_Y>(xp + i * sx, yp + i * sy, D);
        rows[b].k = sc.k[i * sc.sk];
        rows[b].r = sc.r ? sc.r[i * sc.sr] : 0.0;
      }
      staged<kMaxBlock>(nb, [&](int64_t b, RowCalls& m) { coefs[b] = fwd<double>(OP, rows[b], param, m); });
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = i0 + b;
        if (SCALAR_OUT) {
          op_[i] = static_cast<scalar_t>(coefs[b].a);
          continue;
        }
        const scalar_t* xr = xp + i * sx;
        const scalar_t* yr = yp + i * sy;
        scalar_t* orow = op_ + i * so;
        const opmath_t a = static_cast<opmath_t>(coefs[b].a);
        if (HAS_Y) {
          const opmath_t bb = static_cast<opmath_t>(coefs[b].b), cc = static_cast<opmath_t>(coefs[b].c);
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) {
            const opmath_t xv = static_cast<opmath_t>(xr[j]), yv = static_cast<opmath_t>(yr[j]);
            store(orow, j, a * xv + bb * yv + cc * (xv - yv));
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) store(orow, j, a * static_cast<opmath_t>(xr[j]));
        }
      }
    }
  });
}

template <typename scalar_t, int OP, bool HAS_Y>
void bwd_loop(const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, Scalars sc, double param,
              at::Tensor& dx, at::Tensor& dy, double* dk, double* dr) {
  using opmath_t = typename OpMath<scalar_t>::type;
  constexpr bool SCALAR_OUT = op_scalar_out(OP);
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), sg = SCALAR_OUT ? 1 : g.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* dxp = dx.defined() ? dx.data_ptr<scalar_t>() : nullptr;
  scalar_t* dyp = dy.defined() ? dy.data_ptr<scalar_t>() : nullptr;
  const int64_t B = block_rows<scalar_t>(D, HAS_Y ? 5 : 3);
  const RowPrefetch prefetch(D * static_cast<int64_t>(sizeof(scalar_t)));
  at::parallel_for(0, N, grain_for(D), [&](int64_t begin, int64_t end) {
    Row<double> rows[kMaxBlock], adjs[kMaxBlock];
    Coef<double> coefs[kMaxBlock];
    double gas[kMaxBlock], gbs[kMaxBlock], gcs[kMaxBlock];
    for (int64_t i0 = begin; i0 < end; i0 += B) {
      const int64_t nb = std::min(B, end - i0);
      for (int64_t b = 0; b < nb; ++b) {  // row sums, with <g,x>, <g,y>, <g,x-y>
        const int64_t i = i0 + b;
        const scalar_t* xr = xp + i * sx;
        const scalar_t* yr = yp + i * sy;
        const scalar_t* gr = gp + i * sg;
        prefetch(xr, sx, i, end);
        if (HAS_Y) prefetch(yr, sy, i, end);
        if (!SCALAR_OUT) prefetch(gr, sg, i, end);
        double gsum[3] = {0.0, 0.0, 0.0};
        if (!HAS_Y && !SCALAR_OUT) {  // <x,x> and <g,x> in one pass
          double r[2];
          row_sums<2, 2>({xr, gr}, D, r, [](const dvec(&v)[2], dvec(&a)[2]) {
            a[0] += v[0] * v[0];
            a[1] += v[1] * v[0];
          });
          rows[b] = Row<double>{r[0], 0.0, 0.0, 0.0, 0.0, 0.0};
          gsum[0] = r[1];
        } else if (HAS_Y && !SCALAR_OUT) {  // the four row sums and <g,x>, <g,y>, <g,x-y> in one pass
          double r[7];
          row_sums<7, 3>({xr, yr, gr}, D, r, [](const dvec(&v)[3], dvec(&a)[7]) {
            pair_terms(v[0], v[1], a);
            a[4] += v[2] * v[0];
            a[5] += v[2] * v[1];
            a[6] += v[2] * (v[0] - v[1]);
          });
          rows[b] = Row<double>{r[0], r[1], r[2], r[3], 0.0, 0.0};
          gsum[0] = r[4];
          gsum[1] = r[5];
          gsum[2] = r[6];
        } else {
          rows[b] = reduce_row<scalar_t, HAS_Y>(xr, yr, D);
          gsum[0] = static_cast<double>(gr[0]);
        }
        rows[b].k = sc.k[i * sc.sk];
        rows[b].r = sc.r ? sc.r[i * sc.sr] : 0.0;
        gas[b] = gsum[0];
        gbs[b] = gsum[1];
        gcs[b] = gsum[2];
      }
      staged<kMaxBlock>(nb, [&](int64_t b, RowCalls& m) {  // scalar math of the block
        adjs[b] = vjp<double>(OP, rows[b], param, gas[b], gbs[b], gcs[b], m);
        coefs[b] = SCALAR_OUT ? Coef<double>{0.0, 0.0, 0.0} : fwd<double>(OP, rows[b], param, m);
      });
      for (int64_t b = 0; b < nb; ++b) {
        if (dk) dk[i0 + b] = adjs[b].k;
        if (dr) dr[i0 + b] = adjs[b].r;
      }
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = i0 + b;
        const scalar_t* xr = xp + i * sx;
        const scalar_t* yr = yp + i * sy;
        const scalar_t* gr = gp + i * sg;
        const Row<double>& adj = adjs[b];
        const Coef<double>& cf = coefs[b];
        // dx = (a + c) g + 2 xx_ x + xy_ y + 2 dd_ (x - y); dy = (b - c) g + 2 yy_ y + xy_ x - 2 dd_ (x - y)
        const opmath_t gxc = static_cast<opmath_t>(cf.a + cf.c), gyc = static_cast<opmath_t>(cf.b - cf.c);
        const opmath_t cxx = static_cast<opmath_t>(2 * adj.xx), cyy = static_cast<opmath_t>(2 * adj.yy);
        const opmath_t cxy = static_cast<opmath_t>(adj.xy), cdd = static_cast<opmath_t>(2 * adj.dd);
        scalar_t* ox = dxp ? dxp + i * D : nullptr;
        scalar_t* oy = (HAS_Y && dyp) ? dyp + i * D : nullptr;
        const opmath_t gx = SCALAR_OUT ? opmath_t(0) : gxc, gy = SCALAR_OUT ? opmath_t(0) : gyc;
        auto grad_at = [&](int64_t j) { return SCALAR_OUT ? opmath_t(0) : static_cast<opmath_t>(gr[j]); };
        if (HAS_Y && ox && oy) {  // both gradients in one pass over x, y, g
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) {
            const opmath_t xv = static_cast<opmath_t>(xr[j]), yv = static_cast<opmath_t>(yr[j]), gv = grad_at(j);
            const opmath_t dv = cdd * (xv - yv);
            store(ox, j, gx * gv + cxx * xv + cxy * yv + dv);
            store(oy, j, gy * gv + cyy * yv + cxy * xv - dv);
          }
        } else if (ox) {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) {
            const opmath_t xv = static_cast<opmath_t>(xr[j]), gv = grad_at(j);
            const opmath_t yv = HAS_Y ? static_cast<opmath_t>(yr[j]) : opmath_t(0);
            store(ox, j, gx * gv + cxx * xv + cxy * yv + cdd * (xv - yv));
          }
        } else if (oy) {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) {
            const opmath_t xv = static_cast<opmath_t>(xr[j]), yv = static_cast<opmath_t>(yr[j]), gv = grad_at(j);
            store(oy, j, gy * gv + cyy * yv + cxy * xv - cdd * (xv - yv));
          }
        }
      }
    }
  });
}

// Calls f(std::integral_constant<int, OP>) for the runtime op code.
template <typename F>
void dispatch_op(int op, F&& f) {
  switch (op) {
#define GEOOPS_OP_CASE(OPC) \
  case OPC:                 \
    f(std::integral_constant<int, OPC>{}); \
    break;
    GEOOPS_OP_CASE(MOBIUS_ADD)
    GEOOPS_OP_CASE(MOBIUS_SUB)
    GEOOPS_OP_CASE(PROJECT)
    GEOOPS_OP_CASE(LAMBDA_X)
    GEOOPS_OP_CASE(MOBIUS_SCALAR_MUL)
    GEOOPS_OP_CASE(EXPMAP)
    GEOOPS_OP_CASE(EXPMAP0)
    GEOOPS_OP_CASE(LOGMAP)
    GEOOPS_OP_CASE(LOGMAP0)
    GEOOPS_OP_CASE(DIST)
    GEOOPS_OP_CASE(DIST0)
#undef GEOOPS_OP_CASE
    default:
      TORCH_CHECK(false, "geoops: unknown stereographic op ", op);
  }
}

Scalars scalars_of(const at::Tensor& k, const c10::optional<at::Tensor>& r, at::Tensor& k64, at::Tensor& r64) {
  k64 = k.to(at::kDouble).contiguous();
  Scalars sc{k64.data_ptr<double>(), k64.numel() == 1 ? 0 : 1, nullptr, 0};
  if (r.has_value() && r->defined()) {
    r64 = r->to(at::kDouble).contiguous();
    sc.r = r64.data_ptr<double>();
    sc.sr = r64.numel() == 1 ? 0 : 1;
  }
  return sc;
}

}  // namespace

at::Tensor stereo_fwd_cpu(int64_t op, const at::Tensor& x_, const c10::optional<at::Tensor>& y_, const at::Tensor& k,
                          const c10::optional<at::Tensor>& r, double param) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown stereographic op ", op);
  const at::Tensor x = rows_view(x_);
  const at::Tensor y = (op_has_y(op) && y_.has_value() && y_->defined()) ? rows_view(*y_) : x;
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = op_scalar_out(op) ? at::empty({N}, x.options()) : at::empty({N, D}, x.options());
  if (N == 0) return out;
  at::Tensor k64, r64;
  Scalars sc = scalars_of(k, r, k64, r64);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "stereo_fwd_cpu", [&] {
    dispatch_op(op, [&](auto opc) { fwd_loop<scalar_t, decltype(opc)::value>(x, y, sc, param, out); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_bwd_cpu(
    int64_t op, const at::Tensor& grad_, const at::Tensor& x_, const c10::optional<at::Tensor>& y_,
    const at::Tensor& k, const c10::optional<at::Tensor>& r, double param, int64_t mask) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown stereographic op ", op);
  const bool scalar_out = op_scalar_out(op);
  const at::Tensor x = rows_view(x_);
  const bool y_given = y_.has_value() && y_->defined();
  const bool has_y = y_given && op_has_y(op);  // an op without y ignores a y it is given (zero gradient)
  const at::Tensor y = has_y ? rows_view(*y_) : x;
  const at::Tensor grad = scalar_out ? grad_.contiguous() : rows_view(grad_);
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor dx = (mask & 1) ? at::empty({N, D}, x.options()) : at::empty({0}, x.options());
  at::Tensor dy = (y_given && (mask & 2)) ? (has_y ? at::empty({N, D}, x.options()) : at::zeros({N, D}, x.options()))
                                          : at::empty({0}, x.options());
  const bool want_r = r.has_value() && r->defined() && (mask & 8);
  at::Tensor dk = (mask & 4) ? at::empty({N}, x.options().dtype(at::kDouble)) : at::empty({0}, x.options());
  at::Tensor dr = want_r ? at::empty({N}, x.options().dtype(at::kDouble)) : at::empty({0}, x.options());
  if (N > 0) {
    at::Tensor k64, r64;
    Scalars sc = scalars_of(k, r, k64, r64);
    at::Tensor dx_arg = (mask & 1) ? dx : at::Tensor();
    at::Tensor dy_arg = (has_y && (mask & 2)) ? dy : at::Tensor();
    double* dkp = (mask & 4) ? dk.data_ptr<double>() : nullptr;
    double* drp = want_r ? dr.data_ptr<double>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "stereo_bwd_cpu", [&] {
      dispatch_op(op, [&](auto opc) {
        constexpr int OP = decltype(opc)::value;
        if (has_y) {
          if constexpr (op_has_y(OP)) bwd_loop<scalar_t, OP, true>(grad, x, y, sc, param, dx_arg, dy_arg, dkp, drp);
        } else {
          bwd_loop<scalar_t, OP, false>(grad, x, y, sc, param, dx_arg, dy_arg, dkp, drp);
        }
      });
    });
  }
  if (mask & 4) dk = dk.to(k.scalar_type());
  if (want_r) dr = dr.to(r->scalar_type());
  return {dx, dy, dk, dr};
}

}  // namespace cpu
}  // namespace geoops
