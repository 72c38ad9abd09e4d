// Fused CPU kernels of the kappa-stereographic three-vector row ops: gyration, parallel_transport,
// parallel_transport0, parallel_transport0back, dist2plane (row math: csrc/include/geoops/stereo_triple.h).
//
// One kernel shape for all five.  Forward, per row: one pass accumulating the op's dot products in double
// (and, backward, <g, v_j>), the epilogue in double, one pass writing c0 v0 + c1 v1 + c2 v2 (or the scalar).
// Backward, per row: the same dot pass plus <g, v_j>, the epilogue on dual numbers (its exact derivatives
// with respect to the dot products and k), one pass writing each wanted dv_i as a combination of v0, v1, v2
// and g.  Rows are independent and each row is summed in a fixed order: results do not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "geoops/stereo_triple.h"
#include "stereographic_triple.h"

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
  double s00 = 0, s11 = 0, s22 = 0, s01 = 0, s02 = 0, s12 = 0, see = 0, se1 = 0, se2 = 0, g0 = 0, g1 = 0, g2 = 0;
#pragma omp simd reduction(+ : s00, s11, s22, s01, s02, s12, see, se1, se2, g0, g1, g2)
  for (int64_t j = 0; j < D; ++j) {
    const double x = static_cast<double>(a[j]);
    const double y = static_cast<double>(b[j]);
    const double z = three ? static_cast<double>(c[j]) : 0.0;
    const double e = x - y;
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
      row_dots<OP, scalar_t, false>(a, b, c, nullptr, D, s, nullptr);
      for (int m = 0; m < Dots<OP>::n; ++m) sel[m] = s[Dots<OP>::id[m]];
      double co[3] = {0.0, 0.0, 0.0};
      eval<OP, double>(sel, kp[i * sk], flags, co);
      if constexpr (op_scalar_out(OP)) {
        out[i] = static_cast<scalar_t>(co[0]);
      } else {
        scalar_t* o = out + i * D;
        const double c0 = co[0], c1 = co[1], c2 = co[2];
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          double v = c0 * static_cast<double>(a[j]) + c1 * static_cast<double>(b[j]);
          if (three) v += c2 * static_cast<double>(c[j]);
          o[j] = static_cast<scalar_t>(v);
        }
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
  using DualT = Dual<n + 1>;
  at::parallel_for(0, N, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* a = static_cast<const scalar_t*>(p.v[0]) + i * p.s[0];
      const scalar_t* b = static_cast<const scalar_t*>(p.v[1]) + i * p.s[1];
      const scalar_t* c = three ? static_cast<const scalar_t*>(p.v[2]) + i * p.s[2] : nullptr;
      const scalar_t* g = vec ? gp + i * sg : nullptr;
      double s[NUM_DOTS], gv[3] = {0.0, 0.0, 0.0};
      row_dots<OP, scalar_t, true>(a, b, c, g, D, s, gv);
      DualT sd[n];
      for (int m = 0; m < n; ++m) sd[m] = DualT::var(s[Dots<OP>::id[m]], m);
      const DualT kd = DualT::var(kp[i * sk], n);
      DualT co[3] = {DualT(0.0), DualT(0.0), DualT(0.0)};
      eval<OP, DualT>(sd, kd, flags, co);
      // adjoints of the dot products and of k
      double w[3];  // dL/dc_j
      if (vec) {
        w[0] = gv[0], w[1] = gv[1], w[2] = gv[2];
      } else {
        w[0] = static_cast<double>(gp[i * sg]), w[1] = 0.0, w[2] = 0.0;
      }
      double G[NUM_DOTS] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int m = 0; m < n; ++m) G[Dots<OP>::id[m]] = w[0] * co[0].d[m] + w[1] * co[1].d[m] + w[2] * co[2].d[m];
      if (dk) dk[i] = w[0] * co[0].d[n] + w[1] * co[1].d[n] + w[2] * co[2].d[n];
      double W[3][3];
      dot_adjoint_coefs(G, W);
      for (int q = 0; q < (three ? 3 : 2); ++q) {
        if (!dv[q]) continue;
        scalar_t* o = dv[q] + i * D;
        const double w0 = W[q][0], w1 = W[q][1], w2 = W[q][2], wg = vec ? co[q].v : 0.0;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          double v = w0 * static_cast<double>(a[j]) + w1 * static_cast<double>(b[j]);
          if (three) v += w2 * static_cast<double>(c[j]);
          if (vec) v += wg * static_cast<double>(g[j]);
          o[j] = static_cast<scalar_t>(v);
        }
      }
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
