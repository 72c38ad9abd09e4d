// Fused CPU kernels of the kappa-stereographic three-vector row ops: gyration, parallel_transport,
// parallel_transport0, parallel_transport0back, dist2plane (row math: csrc/include/geoops/stereo_triple.h).
//
// One kernel shape for all five.  Forward, per row: one pass accumulating the op's dot products in double
// (and, backward, <g, v_j>), the epilogue in double, one pass writing c0 v0 + c1 v1 + c2 v2 (or the scalar).
// Backward, per row: the same dot pass plus <g, v_j>, the epilogue on dual numbers (its exact derivatives
// with respect to the dot products and k), one pass writing every wanted dv_i as a combination of v0, v1, v2
// and g (each element of the row loaded and widened once for all the gradients).  Rows are independent and
// each row is summed in a fixed order: results do not depend on the number of threads.
//
// Session 19 (the backward was ~2.3-2.8x the forward, cache-resident, fp32 D = 64; perf: 15 % dot pass, 32 %
// the scalar dual epilogue, 52 % the gradient writes, one pass per gradient re-widening the row each time):
// float / double rows run explicit at::vec loops (DVec accumulators, float rows widened once per element), the
// dual numbers carry their tangent on SIMD vectors (VTan below: one vector op per dual op instead of n + 1
// scalar ones), and the gradients are written in one pass.  Half types keep the scalar loops.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this unit

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "geoops/stereo_triple.h"
#include "dvec_rows.h"
#include "stereographic_triple.h"

namespace geoops {
namespace triple {

using DVec = at::vec::Vectorized<double>;
constexpr int kL = DVec::size();

// A dual number's tangent (NV components) on SIMD vectors (Dual<NV, VTan<NV>>): each dual operation one vector
// operation per kL components instead of NV scalar ones.
template <int NV> struct VTan {
  static constexpr int NB = (NV + kL - 1) / kL;
  DVec d[NB];
  VTan() {
    for (int b = 0; b < NB; ++b) d[b] = DVec(0.0);
  }
  static VTan unit(int i) {
    VTan r;
    alignas(64) double t[kL] = {};
    t[i % kL] = 1.0;
    r.d[i / kL] = DVec::loadu(t);
    return r;
  }
  void store(double* out) const {  // NB * kL doubles
    for (int b = 0; b < NB; ++b) d[b].store(out + b * kL);
  }
};
// doubles a tangent's store writes, at most (NV <= NUM_DOTS + 1)
constexpr int kMaxTanStore = (NUM_DOTS + 1 + kL - 1) / kL * kL;
template <int NV> GEO_HD VTan<NV> operator+(const VTan<NV>& a, const VTan<NV>& b) {
  VTan<NV> r;
  for (int q = 0; q < VTan<NV>::NB; ++q) r.d[q] = a.d[q] + b.d[q];
  return r;
}
template <int NV> GEO_HD VTan<NV> operator-(const VTan<NV>& a, const VTan<NV>& b) {
  VTan<NV> r;
  for (int q = 0; q < VTan<NV>::NB; ++q) r.d[q] = a.d[q] - b.d[q];
  return r;
}
template <int NV> GEO_HD VTan<NV> operator*(const VTan<NV>& a, double s) {
  VTan<NV> r;
  const DVec sv(s);
  for (int q = 0; q < VTan<NV>::NB; ++q) r.d[q] = a.d[q] * sv;
  return r;
}
template <int NV> GEO_HD VTan<NV> lin(const VTan<NV>& a, double s, const VTan<NV>& b, double t) {
  VTan<NV> r;
  const DVec sv(s), tv(t);
  for (int q = 0; q < VTan<NV>::NB; ++q) r.d[q] = at::vec::fmadd(a.d[q], sv, b.d[q] * tv);
  return r;
}

}  // namespace triple
}  // namespace geoops

namespace geoops {
namespace cpu {

using namespace geoops::triple;

namespace {

template <int OP> constexpr bool needs(int dot) {
  for (int i = 0; i < Dots<OP>::n; ++i)
    if (Dots<OP>::id[i] == dot) return true;
  return false;
}

struct Ptrs {
  const void* v[3];
  int64_t s[3];  // row strides
};

// The op's dot products of one row (all NUM_DOTS slots; those the op does not read stay 0) and, when g is
// given, gv[j] = <g, v_j>.
template <int OP, typename scalar_t, bool GRAD>
inline void row_dots(const scalar_t* a, const scalar_t* b, const scalar_t* c, const scalar_t* g, int64_t D,
                     double* s, double* gv) {
  constexpr bool three = op_nvec(OP) == 3;
  constexpr bool n00 = needs<OP>(S00), n11 = needs<OP>(S11), n22 = needs<OP>(S22), n01 = needs<OP>(S01);
  constexpr bool n02 = needs<OP>(S02), n12 = needs<OP>(S12), nee = needs<OP>(SEE), ne1 = needs<OP>(SE1);
  constexpr bool ne2 = needs<OP>(SE2);
  constexpr bool vec = !op_scalar_out(OP);
  constexpr bool plus = op_e_plus(OP);
  double s00 = 0, s11 = 0, s22 = 0, s01 = 0, s02 = 0, s12 = 0, see = 0, se1 = 0, se2 = 0, g0 = 0, g1 = 0, g2 = 0;
#pragma omp simd reduction(+ : s00, s11, s22, s01, s02, s12, see, se1, se2, g0, g1, g2)
  for (int64_t j = 0; j < D; ++j) {
    const double x = static_cast<double>(a[j]);
    const double y = static_cast<double>(b[j]);
    const double z = three ? static_cast<double>(c[j]) : 0.0;
    const double e = plus ? x + y : x - y;
    if (n00) s00 += x * x;
    if (n11) s11 += y * y;
    if (n22) s22 += z * z;
    if (n01) s01 += x * y;
    if (n02) s02 += x * z;
    if (n12) s12 += y * z;
    if (nee) see += e * e;
    if (ne1) se1 += e * y;
    if (ne2) se2 += e * z;
    if (GRAD && vec) {
      const double gg = static_cast<double>(g[j]);
      g0 += gg * x;
      g1 += gg * y;
      if (three) g2 += gg * z;
    }
  }
  s[S00] = s00, s[S11] = s11, s[S22] = s22, s[S01] = s01, s[S02] = s02, s[S12] = s12;
  s[SEE] = see, s[SE1] = se1, s[SE2] = se2;
  if (GRAD) gv[0] = g0, gv[1] = g1, gv[2] = g2;
}

// ---------------------------------------------------------------- float / double rows on at::vec
// (ld / st / hsum: csrc/cpu/dvec_rows.h)
template <typename T> constexpr bool kVecRows = dvec::kRows<T>;
using dvec::hsum;
using dvec::ld;
using dvec::st;

// row_dots for float / double rows: one DVec accumulator per sum (lane l sums the columns = l mod kL), the
// last D mod kL columns in scalar accumulators added after the lanes.  M: the sums formed (the rest stay 0; a
// subset of the op's for rows whose eval reads fewer, dots_mask_nonpos).
template <int OP, typename scalar_t, bool GRAD, unsigned M = dots_mask<OP>()>
inline void row_dots_vec(const scalar_t* a, const scalar_t* b, const scalar_t* c, const scalar_t* g, int64_t D,
                         double* s, double* gv) {
  constexpr bool three = op_nvec(OP) == 3;
  constexpr bool vec = !op_scalar_out(OP);
  constexpr int ids[9] = {S00, S11, S22, S01, S02, S12, SEE, SE1, SE2};
  static_assert((M & ~dots_mask<OP>()) == 0, "M: a subset of the op's dot products");
  constexpr bool nd[9] = {(M >> S00) & 1, (M >> S11) & 1, (M >> S22) & 1, (M >> S01) & 1, (M >> S02) & 1,
                          (M >> S12) & 1, (M >> SEE) & 1, (M >> SE1) & 1, (M >> SE2) & 1};
  constexpr bool ng[3] = {GRAD && vec, GRAD && vec, GRAD && vec && three};
  constexpr bool plus = op_e_plus(OP);
  DVec acc[12];
  for (int q = 0; q < 12; ++q) acc[q] = DVec(0.0);
  auto step = [&](const DVec& x, const DVec& y, const DVec& z, const DVec& gg, DVec* A) {
    const DVec e = plus ? x + y : x - y;
    if (nd[0]) A[0] = at::vec::fmadd(x, x, A[0]);
    if (nd[1]) A[1] = at::vec::fmadd(y, y, A[1]);
    if (nd[2]) A[2] = at::vec::fmadd(z, z, A[2]);
    if (nd[3]) A[3] = at::vec::fmadd(x, y, A[3]);
    if (nd[4]) A[4] = at::vec::fmadd(x, z, A[4]);
    if (nd[5]) A[5] = at::vec::fmadd(y, z, A[5]);
    if (nd[6]) A[6] = at::vec::fmadd(e, e, A[6]);
    if (nd[7]) A[7] = at::vec::fmadd(e, y, A[7]);
    if (nd[8]) A[8] = at::vec::fmadd(e, z, A[8]);
    if (ng[0]) A[9] = at::vec::fmadd(gg, x, A[9]);
    if (ng[1]) A[10] = at::vec::fmadd(gg, y, A[10]);
    if (ng[2]) A[11] = at::vec::fmadd(gg, z, A[11]);
  };
  int64_t j = 0;
  for (; j + kL <= D; j += kL) {
    const DVec x = ld(a + j), y = ld(b + j);
    const DVec z = three ? ld(c + j) : DVec(0.0);
    const DVec gg = ng[0] ? ld(g + j) : DVec(0.0);
    step(x, y, z, gg, acc);
  }
  double r[12];
  // rows shorter than kL ran no lane step: their accumulators are zero, not summed (per row, a lane sum each;
  // the same bits: every sum starts at +0 either way)
  const bool lanes = D >= kL;
  for (int q = 0; q < 12; ++q) r[q] = (lanes && (q < 9 ? nd[q] : ng[q - 9])) ? hsum(acc[q]) : 0.0;
  for (; j < D; ++j) {  // the tail, in scalars
    const double x = static_cast<double>(a[j]), y = static_cast<double>(b[j]);
    const double z = three ? static_cast<double>(c[j]) : 0.0, e = plus ? x + y : x - y;
    const double gg = ng[0] ? static_cast<double>(g[j]) : 0.0;
    const double t[12] = {x * x, y * y, z * z, x * y, x * z, y * z, e * e, e * y, e * z, gg * x, gg * y, gg * z};
    for (int q = 0; q < 12; ++q) r[q] += t[q];
  }
  for (int q = 0; q < 9; ++q) s[ids[q]] = nd[q] ? r[q] : 0.0;
  if (GRAD) gv[0] = r[9], gv[1] = r[10], gv[2] = r[11];
}

// out[q] = w[q][0] v0 + w[q][1] v1 + w[q][2] v2 + w[q][3] g for the q < NQ with out[q] != nullptr, one pass over
// the row (each element loaded and widened once).  V2 / G: whether v2 / g are read.
template <int NQ, bool V2, bool G, typename scalar_t>
inline void row_combine(const scalar_t* a, const scalar_t* b, const scalar_t* c, const scalar_t* g, int64_t D,
                        const double (*w)[4], scalar_t* const* out) {
  if constexpr (kVecRows<scalar_t>) {
    DVec W[NQ][4];
    for (int q = 0; q < NQ; ++q)
      for (int m = 0; m < 4; ++m) W[q][m] = DVec(w[q][m]);
    bool on[NQ];
    for (int q = 0; q < NQ; ++q) on[q] = out[q] != nullptr;
    int64_t j = 0;
    for (; j + kL <= D; j += kL) {
      const DVec x = ld(a + j), y = ld(b + j);
      DVec z, gg;
      if (V2) z = ld(c + j);
      if (G) gg = ld(g + j);
      for (int q = 0; q < NQ; ++q) {
        if (!on[q]) continue;
        DVec o = at::vec::fmadd(W[q][1], y, x * W[q][0]);
        if (V2) o = at::vec::fmadd(W[q][2], z, o);
        if (G) o = at::vec::fmadd(W[q][3], gg, o);
        st(out[q] + j, o);
      }
    }
    for (; j < D; ++j) {
      const double x = static_cast<double>(a[j]), y = static_cast<double>(b[j]);
      const double z = V2 ? static_cast<double>(c[j]) : 0.0, gg = G ? static_cast<double>(g[j]) : 0.0;
      for (int q = 0; q < NQ; ++q) {
        if (!on[q]) continue;
        double o = std::fma(w[q][1], y, x * w[q][0]);
        if (V2) o = std::fma(w[q][2], z, o);
        if (G) o = std::fma(w[q][3], gg, o);
        out[q][j] = static_cast<scalar_t>(o);
      }
    }
  } else {
    for (int q = 0; q < NQ; ++q) {
      if (!out[q]) continue;
      scalar_t* o = out[q];
      const double w0 = w[q][0], w1 = w[q][1], w2 = w[q][2], wg = w[q][3];
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        double v = w0 * static_cast<double>(a[j]) + w1 * static_cast<double>(b[j]);
        if (V2) v += w2 * static_cast<double>(c[j]);
        if (G) v += wg * static_cast<double>(g[j]);
        o[j] = static_cast<scalar_t>(v);
      }
    }
  }
}

inline int64_t grain(int64_t D) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(D, 1)); }

template <int OP, typename scalar_t>
void fwd_kernel(const Ptrs& p, const double* kp, int64_t sk, int flags, scalar_t* out, int64_t N, int64_t D) {
  constexpr bool three = op_nvec(OP) == 3;
  at::parallel_for(0, N, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* a = static_cast<const scalar_t*>(p.v[0]) + i * p.s[0];
      const scalar_t* b = static_cast<const scalar_t*>(p.v[1]) + i * p.s[1];
      const scalar_t* c = three ? static_cast<const scalar_t*>(p.v[2]) + i * p.s[2] : nullptr;
      double s[NUM_DOTS], sel[Dots<OP>::n];
      if constexpr (kVecRows<scalar_t>) {
        if (dots_mask_nonpos<OP>() != dots_mask<OP>() && !(kp[i * sk] > 0))  // eval's k <= 0 form: fewer sums
          row_dots_vec<OP, scalar_t, false, dots_mask_nonpos<OP>()>(a, b, c, nullptr, D, s, nullptr);
        else
          row_dots_vec<OP, scalar_t, false>(a, b, c, nullptr, D, s, nullptr);
      } else {
        row_dots<OP, scalar_t, false>(a, b, c, nullptr, D, s, nullptr);
      }
      for (int m = 0; m < Dots<OP>::n; ++m) sel[m] = s[Dots<OP>::id[m]];
      double co[3] = {0.0, 0.0, 0.0};
      eval<OP, double>(sel, kp[i * sk], flags, co);
      if constexpr (op_scalar_out(OP)) {
        out[i] = static_cast<scalar_t>(co[0]);
      } else {
        scalar_t* o[1] = {out + i * D};
        const double w[1][4] = {{co[0], co[1], co[2], 0.0}};
        row_combine<1, three, false>(a, b, c, static_cast<const scalar_t*>(nullptr), D, w, o);
      }
    }
  });
}

template <int OP, typename scalar_t>
void bwd_kernel(const Ptrs& p, const scalar_t* gp, int64_t sg, const double* kp, int64_t sk, int flags,
                scalar_t* const* dv, double* dk, int64_t N, int64_t D) {
  constexpr bool three = op_nvec(OP) == 3;
  constexpr bool vec = !op_scalar_out(OP);
  constexpr int n = Dots<OP>::n;
  constexpr int nq = three ? 3 : 2;
  using TanT = VTan<n + 1>;
  using DualT = Dual<n + 1, TanT>;
  static_assert(TanT::NB * kL <= kMaxTanStore, "a tangent fits gd");
  at::parallel_for(0, N, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* a = static_cast<const scalar_t*>(p.v[0]) + i * p.s[0];
      const scalar_t* b = static_cast<const scalar_t*>(p.v[1]) + i * p.s[1];
      const scalar_t* c = three ? static_cast<const scalar_t*>(p.v[2]) + i * p.s[2] : nullptr;
      const scalar_t* g = vec ? gp + i * sg : nullptr;
      double s[NUM_DOTS], gv[3] = {0.0, 0.0, 0.0};
      if constexpr (kVecRows<scalar_t>) {
        row_dots_vec<OP, scalar_t, true>(a, b, c, g, D, s, gv);
      } else {
        row_dots<OP, scalar_t, true>(a, b, c, g, D, s, gv);
      }
      DualT sd[n];
      for (int m = 0; m < n; ++m) sd[m] = DualT::var(s[Dots<OP>::id[m]], m);
      const DualT kd = DualT::var(kp[i * sk], n);
      DualT co[3] = {DualT(0.0), DualT(0.0), DualT(0.0)};
      eval<OP, DualT>(sd, kd, flags, co);
      // adjoints of the dot products and of k: sum_j dL/dc_j dc_j/d(s, k)
      const double w0 = vec ? gv[0] : static_cast<double>(gp[i * sg]), w1 = vec ? gv[1] : 0.0;
      const double w2 = vec ? gv[2] : 0.0;
      alignas(64) double gd[kMaxTanStore];
      TanT t = co[0].d * w0;
      if (vec) t = lin(t, 1.0, co[1].d, w1);
      if (vec && three) t = lin(t, 1.0, co[2].d, w2);
      t.store(gd);
      double G[NUM_DOTS] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int m = 0; m < n; ++m) G[Dots<OP>::id[m]] = gd[m];
      if (dk) dk[i] = gd[n];
      double W[3][3];
      dot_adjoint_coefs(G, W, op_e_plus(OP));
      double w[3][4];
      scalar_t* o[3];
      for (int q = 0; q < nq; ++q) {
        w[q][0] = W[q][0], w[q][1] = W[q][1], w[q][2] = W[q][2], w[q][3] = vec ? co[q].v : 0.0;
        o[q] = dv[q] ? dv[q] + i * D : nullptr;
      }
      row_combine<nq, three, vec>(a, b, c, g, D, w, o);
    }
  });
}

template <typename F>
void dispatch_triple(int64_t op, F&& f) {
  switch (op) {
    case GYRATION: f(std::integral_constant<int, GYRATION>{}); break;
    case PARALLEL_TRANSPORT: f(std::integral_constant<int, PARALLEL_TRANSPORT>{}); break;
    case PARALLEL_TRANSPORT0: f(std::integral_constant<int, PARALLEL_TRANSPORT0>{}); break;
    case PARALLEL_TRANSPORT0BACK: f(std::integral_constant<int, PARALLEL_TRANSPORT0BACK>{}); break;
    case DIST2PLANE: f(std::integral_constant<int, DIST2PLANE>{}); break;
    default: TORCH_CHECK(false, "geoops: unknown three-vector stereographic op ", op);
  }
}

at::Tensor rows_of(const at::Tensor& t, const char* name, int64_t N, int64_t D, at::ScalarType dt) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == D, "geoops: ", name, " must be (", N, ", ", D,
              "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dt, "geoops: ", name, " must have dtype ", dt, ", got ", t.scalar_type());
  return (D <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

Ptrs ptrs_of(int64_t op, const at::Tensor& v0, const at::Tensor& v1, const c10::optional<at::Tensor>& v2,
             at::Tensor& h0, at::Tensor& h1, at::Tensor& h2) {
  const int64_t N = v0.size(0), D = v0.size(1);
  const auto dt = v0.scalar_type();
  h0 = rows_of(v0, "v0", N, D, dt);
  h1 = rows_of(v1, "v1", N, D, dt);
  Ptrs p{{h0.data_ptr(), h1.data_ptr(), nullptr}, {h0.stride(0), h1.stride(0), 0}};
  if (op_nvec(static_cast<int>(op)) == 3) {
    TORCH_CHECK(v2.has_value() && v2->defined(), "geoops: this op needs a third vector");
    h2 = rows_of(*v2, "v2", N, D, dt);
    p.v[2] = h2.data_ptr();
    p.s[2] = h2.stride(0);
  }
  return p;
}

at::Tensor k_rows(const at::Tensor& k, int64_t N) {
  TORCH_CHECK(k.numel() == 1 || k.numel() == N, "geoops: k must have 1 or ", N, " values, got ", k.numel());
  return k.to(at::kDouble).contiguous();
}

}  // namespace

at::Tensor stereo_triple_fwd_cpu(int64_t op, const at::Tensor& v0, const at::Tensor& v1,
                                 const c10::optional<at::Tensor>& v2, const at::Tensor& k, int64_t flags) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown three-vector stereographic op ", op);
  TORCH_CHECK(v0.dim() == 2, "geoops: v0 must be (N, D), got ", v0.sizes());
  const int64_t N = v0.size(0), D = v0.size(1);
  at::Tensor out = op_scalar_out(static_cast<int>(op)) ? at::empty({N}, v0.options()) : at::empty({N, D}, v0.options());
  if (N == 0) return out;
  at::Tensor h0, h1, h2;
  const Ptrs p = ptrs_of(op, v0, v1, v2, h0, h1, h2);
  const at::Tensor k64 = k_rows(k, N);
  const int64_t sk = k64.numel() == 1 ? 0 : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v0.scalar_type(), "stereo_triple_fwd", [&] {
    dispatch_triple(op, [&](auto opc) {
      fwd_kernel<decltype(opc)::value, scalar_t>(p, k64.data_ptr<double>(), sk, static_cast<int>(flags),
                                                 out.data_ptr<scalar_t>(), N, D);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stereo_triple_bwd_cpu(
    int64_t op, const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& v1,
    const c10::optional<at::Tensor>& v2, const at::Tensor& k, int64_t flags, int64_t mask) {
  TORCH_CHECK(op >= 0 && op < NUM_OPS, "geoops: unknown three-vector stereographic op ", op);
  TORCH_CHECK(v0.dim() == 2, "geoops: v0 must be (N, D), got ", v0.sizes());
  const int o = static_cast<int>(op);
  const int64_t N = v0.size(0), D = v0.size(1);
  const int nvec = op_nvec(o);
  at::Tensor d[3];
  for (int q = 0; q < 3; ++q)
    d[q] = (q < nvec && (mask >> q) & 1) ? at::empty({N, D}, v0.options()) : at::empty({0}, v0.options());
  at::Tensor dk = (mask & 8) ? at::empty({N}, v0.options().dtype(at::kDouble)) : at::empty({0}, v0.options());
  if (N > 0 && (mask & 15)) {  // D == 0 runs too: every dot product is 0
    at::Tensor h0, h1, h2;
    const Ptrs p = ptrs_of(op, v0, v1, v2, h0, h1, h2);
    const at::Tensor k64 = k_rows(k, N);
    const int64_t sk = k64.numel() == 1 ? 0 : 1;
    at::Tensor g;
    int64_t sg;
    if (op_scalar_out(o)) {
      TORCH_CHECK(grad.numel() == N, "geoops: grad must have ", N, " values, got ", grad.sizes());
      g = grad.to(v0.scalar_type()).reshape({N}).contiguous();
      sg = 1;
    } else {
      g = rows_of(grad.to(v0.scalar_type()), "grad", N, D, v0.scalar_type());
      sg = g.stride(0);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v0.scalar_type(), "stereo_triple_bwd", [&] {
      scalar_t* dv[3];
      for (int q = 0; q < 3; ++q) dv[q] = d[q].numel() ? d[q].data_ptr<scalar_t>() : nullptr;
      dispatch_triple(op, [&](auto opc) {
        bwd_kernel<decltype(opc)::value, scalar_t>(p, g.data_ptr<scalar_t>(), sg, k64.data_ptr<double>(), sk,
                                                   static_cast<int>(flags), dv, (mask & 8) ? dk.data_ptr<double>() : nullptr,
                                                   N, D);
      });
    });
  }
  if (mask & 8) dk = dk.to(k.scalar_type());
  return {d[0], d[1], d[2], dk};
}

}  // namespace cpu
}  // namespace geoops
