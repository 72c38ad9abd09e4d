// Fused CPU kernels of the kappa-stereographic row ops (forward and backward).
//
// One generic row kernel serves every op: a first pass over the row
// accumulates the row scalars (in double, whatever the input dtype), the
// per-op scalar math of stereo_math.h turns them into coefficients, and a
// second pass over the same row (still in L1) writes a*x + b*y + c*(x - y).
// Rows are spread over the cores with at::parallel_for; the inner loops are
// contiguous and `omp simd` so that the compiler vectorises them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <tuple>

#include "geoops/stereo_math.h"
#include "stereographic.h"

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

// Row sums of NS per-element terms, in double, kept as W independent partial
// sums per term so that the additions do not form one long latency chain.
template <int NS, int W, typename F>
inline void row_sums(int64_t D, double (&out)[NS], F&& terms) {
  double part[NS][W] = {};
  int64_t j = 0;
  for (; j + W <= D; j += W) {
#pragma omp simd
    for (int t = 0; t < W; ++t) {
      double v[NS];
      terms(j + t, v);
      for (int s = 0; s < NS; ++s) part[s][t] += v[s];
    }
  }
  for (; j < D; ++j) {
    double v[NS];
    terms(j, v);
    for (int s = 0; s < NS; ++s) part[s][0] += v[s];
  }
  for (int s = 0; s < NS; ++s) {
    double acc = 0;
    for (int t = 0; t < W; ++t) acc += part[s][t];
    out[s] = acc;
  }
}

// xx, yy, xy and dd = |x - y|^2 (accumulated directly) of one row.
template <typename scalar_t, bool HAS_Y>
inline Row<double> reduce_row(const scalar_t* xr, const scalar_t* yr, int64_t D) {
  if (HAS_Y) {  // four independent sums already keep the adders busy
    double xx = 0, yy = 0, xy = 0, dd = 0;
#pragma omp simd reduction(+ : xx, yy, xy, dd)
    for (int64_t j = 0; j < D; ++j) {
      const double xv = static_cast<double>(xr[j]), yv = static_cast<double>(yr[j]);
      const double dv = xv - yv;
      xx += xv * xv;
      yy += yv * yv;
      xy += xv * yv;
      dd += dv * dv;
    }
    return {xx, yy, xy, dd, 0.0, 0.0};
  }
  double r[1];
  row_sums<1, 16>(D, r, [&](int64_t j, double* v) {
    const double xv = static_cast<double>(xr[j]);
    v[0] = xv * xv;
  });
  return {r[0], 0.0, 0.0, 0.0, 0.0, 0.0};
}

// Rows are processed in blocks: the reductions of a block first, then the
// scalar math of its rows (independent, so the out-of-order core overlaps
// their transcendental latency chains), then the writes, with the block's
// rows still in L1.
constexpr int64_t kMaxBlock = 16;

template <typename scalar_t>
int64_t block_rows(int64_t D, int streams) {
  const int64_t bytes = std::max<int64_t>(D, 1) * static_cast<int64_t>(sizeof(scalar_t)) * streams;
  return std::min<int64_t>(kMaxBlock, std::max<int64_t>(1, 16384 / bytes));
}

template <typename scalar_t, bool HAS_Y, bool SCALAR_OUT>
void fwd_loop(int op, const at::Tensor& x, const at::Tensor& y, Scalars sc, double param, at::Tensor& out) {
  using opmath_t = typename OpMath<scalar_t>::type;
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), so = SCALAR_OUT ? 1 : out.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* op_ = out.data_ptr<scalar_t>();
  const int64_t B = block_rows<scalar_t>(D, HAS_Y ? 3 : 2);
  at::parallel_for(0, N, grain_for(D), [&](int64_t begin, int64_t end) {
    Row<double> rows[kMaxBlock];
    Coef<double> coefs[kMaxBlock];
    for (int64_t i0 = begin; i0 < end; i0 += B) {
      const int64_t nb = std::min(B, end - i0);
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t i = i0 + b;
        rows[b] = reduce_row<scalar_t, HAS_Y>(xp + i * sx, yp + i * sy, D);
        rows[b].k = sc.k[i * sc.sk];
        rows[b].r = sc.r ? sc.r[i * sc.sr] : 0.0;
      }
      for (int64_t b = 0; b < nb; ++b) coefs[b] = fwd<double>(op, rows[b], param);
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
            orow[j] = static_cast<scalar_t>(a * xv + bb * yv + cc * (xv - yv));
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) orow[j] = static_cast<scalar_t>(a * static_cast<opmath_t>(xr[j]));
        }
      }
    }
  });
}

template <typename scalar_t, bool HAS_Y, bool SCALAR_OUT>
void bwd_loop(int op, const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, Scalars sc, double param,
              at::Tensor& dx, at::Tensor& dy, double* dk, double* dr) {
  using opmath_t = typename OpMath<scalar_t>::type;
  const int64_t N = x.size(0), D = x.size(1);
  const int64_t sx = x.stride(0), sy = y.stride(0), sg = SCALAR_OUT ? 1 : g.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* dxp = dx.defined() ? dx.data_ptr<scalar_t>() : nullptr;
  scalar_t* dyp = dy.defined() ? dy.data_ptr<scalar_t>() : nullptr;
  const int64_t B = block_rows<scalar_t>(D, HAS_Y ? 5 : 3);
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
        double gsum[3] = {0.0, 0.0, 0.0};
        if (!HAS_Y && !SCALAR_OUT) {  // <x,x> and <g,x> in one pass
          double r2[2];
          row_sums<2, 8>(D, r2, [&](int64_t j, double* v) {
            const double xv = static_cast<double>(xr[j]);
            v[0] = xv * xv;
            v[1] = static_cast<double>(gr[j]) * xv;
          });
          rows[b] = Row<double>{r2[0], 0.0, 0.0, 0.0, 0.0, 0.0};
          gsum[0] = r2[1];
        } else {
          rows[b] = reduce_row<scalar_t, HAS_Y>(xr, yr, D);
        }
        rows[b].k = sc.k[i * sc.sk];
        rows[b].r = sc.r ? sc.r[i * sc.sr] : 0.0;
        if (SCALAR_OUT) {
          gsum[0] = static_cast<double>(gr[0]);
        } else if (HAS_Y) {
          double ga = 0, gb = 0, gc = 0;
#pragma omp simd reduction(+ : ga, gb, gc)
          for (int64_t j = 0; j < D; ++j) {
            const double gv = static_cast<double>(gr[j]);
            const double xv = static_cast<double>(xr[j]), yv = static_cast<double>(yr[j]);
            ga += gv * xv;
            gb += gv * yv;
            gc += gv * (xv - yv);
          }
          gsum[0] = ga;
          gsum[1] = gb;
          gsum[2] = gc;
        }
        gas[b] = gsum[0];
        gbs[b] = gsum[1];
        gcs[b] = gsum[2];
      }
      for (int64_t b = 0; b < nb; ++b) {  // scalar math of the block
        adjs[b] = vjp<double>(op, rows[b], param, gas[b], gbs[b], gcs[b]);
        coefs[b] = SCALAR_OUT ? Coef<double>{0.0, 0.0, 0.0} : fwd<double>(op, rows[b], param);
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
        if (dxp) {
          scalar_t* o = dxp + i * D;
          if (SCALAR_OUT) {
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) {
              const opmath_t xv = static_cast<opmath_t>(xr[j]);
              const opmath_t yv = HAS_Y ? static_cast<opmath_t>(yr[j]) : opmath_t(0);
              o[j] = static_cast<scalar_t>(cxx * xv + cxy * yv + cdd * (xv - yv));
            }
          } else {
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) {
              const opmath_t xv = static_cast<opmath_t>(xr[j]), gv = static_cast<opmath_t>(gr[j]);
              const opmath_t yv = HAS_Y ? static_cast<opmath_t>(yr[j]) : opmath_t(0);
              o[j] = static_cast<scalar_t>(gxc * gv + cxx * xv + cxy * yv + cdd * (xv - yv));
            }
          }
        }
        if (HAS_Y && dyp) {
          scalar_t* o = dyp + i * D;
          const opmath_t gmul = SCALAR_OUT ? opmath_t(0) : gyc;
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) {
            const opmath_t xv = static_cast<opmath_t>(xr[j]), yv = static_cast<opmath_t>(yr[j]);
            const opmath_t gv = SCALAR_OUT ? opmath_t(0) : static_cast<opmath_t>(gr[j]);
            o[j] = static_cast<scalar_t>(gmul * gv + cyy * yv + cxy * xv - cdd * (xv - yv));
          }
        }
      }
    }
  });
}

template <typename F>
void dispatch_shape(int op, F&& f) {
  const bool has_y = op_has_y(op), scalar_out = op_scalar_out(op);
  if (has_y && scalar_out) f(std::true_type{}, std::true_type{});
  else if (has_y) f(std::true_type{}, std::false_type{});
  else if (scalar_out) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
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
    dispatch_shape(op, [&](auto has_y, auto scalar_out) {
      fwd_loop<scalar_t, decltype(has_y)::value, decltype(scalar_out)::value>(op, x, y, sc, param, out);
    });
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
      dispatch_shape(op, [&](auto hy, auto so) {
        bwd_loop<scalar_t, decltype(hy)::value, decltype(so)::value>(op, grad, x, y, sc, param, dx_arg, dy_arg, dkp,
                                                                      drp);
      });
    });
  }
  if (mask & 4) dk = dk.to(k.scalar_type());
  if (want_r) dr = dr.to(r->scalar_type());
  return {dx, dy, dk, dr};
}

}  // namespace cpu
}  // namespace geoops
