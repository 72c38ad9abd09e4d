// CPU kernels of the diagonal state-space (S4D / DSS) family.
//
// Vandermonde kernel  K[c, h, l] = 2 Re sum_n v[c, h, n] exp(x[h, n] l),  l < L.
//
// The eager recipe materialises exp(x l) as a complex (H, N, L) tensor.  Here the
// position is split l = j*T + i (0 <= i < T, 0 <= j < J = ceil(L / T), T ~ sqrt L), so that
//
//     exp(x l) = P[n, j] * Q[n, i],   P[n, j] = exp(x j T),   Q[n, i] = exp(x i),
//
// and K[c, h, j*T + i] = sum_n 2 Re(v P)[j, n] Re Q[n, i] - 2 Im(v P)[j, n] Im Q[n, i]: per
// channel one real (J x 2N) . (2N x T) GEMM (batched over channels, ATen/MKL).  Only the two
// small factors are materialised, O(H N (J + T)) = O(H N sqrt L).
//
// Accuracy.  Both factors are computed in double whatever the output dtype: each is exact
// exp(x * m) of the exactly represented integer m (x * m rounded once, so the phase error is
// 1e-16 relative to |x m|) at anchors every 64 entries, with at most 63 complex multiplications
// by exp(x) (resp. exp(x T)) in between (error <= ~64 ulp of double).  The phase is therefore
// good to ~1e-15 relative even at L = 65536, and the fp32 result carries only the rounding of
// the two factors to fp32 and of the fp32 GEMM (~1e-7 relative to max|K|).  Fast-math
// evaluation of exp(x l) in fp32 instead loses ~1e-3 at L = 64K for slowly decaying modes.
//
// Backward (g = dLoss/dK real, torch's conjugate-Wirtinger convention for complex leaves):
//     dv[c, h, n] = 2 conj(S0),  dx[h, n] = sum_c 2 conj(v S1),
//     S0 = sum_l g[l] exp(x l),  S1 = sum_l g[l] l exp(x l),
// with the same split: M^T = [Q | i Q] (4N x T) . G^T (T x J) is one real GEMM per channel and
// S0 = sum_j P[j] M[j], S1 = sum_j P[j] (j T M[j] + M'[j]) are short reductions in double.
//
// FFT convolution  y = irfft(rfft(u, n) * rfft(k, n))[:L] + D u  (any L, n >= 2L - 1 a 2-3-5 size):
// per-row MKL transforms with the pad, the spectral product, the inverse, the truncation and the
// skip term fused per row in cache (ATen's batched FFTs with fused loops in between where MKL's DFTI
// interface is not exported); see the FFT section below.  ssm_conv fuses the Vandermonde kernel
// generation into the FFT's input buffer and its backward into the FFT backward's dK rows.
#include "cpu/ssm.h"
#include "cpu/mkl_packed.h"  // OneMklThread

#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <complex>
#include <string>
#include <type_traits>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

constexpr int64_t kAnchor = 64;
// below this many inner iterations a parallel region costs more than it saves (and oversubscribed
// machines make OpenMP barriers very slow)
constexpr int64_t kParallelMin = 1 << 15;

struct Blocking {
  int64_t T, J;
};

// T ~ sqrt(L), a divisor of L when one lies in [sqrt(L)/2, 2 sqrt(L)] (no padding), else ceil(sqrt L).
Blocking choose_blocking(int64_t L) {
  if (L <= 0) return {1, 0};
  const int64_t s = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(L))));
  int64_t best = -1;
  for (int64_t t = s; t <= 2 * s && t <= L; ++t)
    if (L % t == 0) {
      best = t;
      break;
    }
  if (best < 0)
    for (int64_t t = s - 1; t >= std::max<int64_t>(1, s / 2); --t)
      if (L % t == 0) {
        best = t;
        break;
      }
  if (best < 0) best = s;
  return {best, (L + best - 1) / best};
}

// out[k] = exp(x * step * k), k < count, in double: exact-product anchors every kAnchor entries,
// multiplications by exp(x * step) in between.  exp(x * 0) = 1 for every x: a mode with Abar = 0
// (x = -inf: the bilinear pole dt A = -2, an underflowed ZOH step) has Abar**0 = 1, where the product
// -inf * 0 would give NaN.
void powers(double a, double b, int64_t step, int64_t count, double* re, double* im) {
  const double sa = a * static_cast<double>(step), sb = b * static_cast<double>(step);
  const double ea = std::exp(sa);
  const double rr = ea * std::cos(sb), ri = ea * std::sin(sb);
  for (int64_t k0 = 0; k0 < count; k0 += kAnchor) {
    const double m = static_cast<double>(k0 * step);
    const double pa = a * m;
    double cr, ci;
    if (m == 0.0) {
      cr = 1.0;
      ci = 0.0;
    } else if (pa < -745.0) {
      cr = 0.0;
      ci = 0.0;
    } else {
      const double e = std::exp(pa), ph = b * m;
      cr = e * std::cos(ph);
      ci = e * std::sin(ph);
    }
    const int64_t k1 = std::min(count, k0 + kAnchor);
    for (int64_t k = k0; k < k1; ++k) {
      re[k] = cr;
      im[k] = ci;
      const double nr = cr * rr - ci * ri;
      ci = cr * ri + ci * rr;
      cr = nr;
    }
  }
}

template <typename T>
inline T flush(double val) {
  // fp32 denormals would slow the GEMM down; they are below any meaningful K anyway
  if (sizeof(T) == 4 && std::fabs(val) < static_cast<double>(FLT_MIN)) return T(0);
  return static_cast<T>(val);
}

template <typename scalar_t>
at::Tensor vandermonde_fwd_impl(const at::Tensor& v, const at::Tensor& x, int64_t L) {
  const int64_t C = v.size(0), H = v.size(1), N = v.size(2);
  const auto rdt = c10::CppTypeToScalarType<scalar_t>::value;
  const at::TensorOptions ropt = v.options().dtype(rdt);
  if (L == 0 || C == 0 || H == 0) return at::zeros({C, H, L}, ropt);
  if (N == 0) return at::zeros({C, H, L}, ropt);
  const auto blk = choose_blocking(L);
  const int64_t T = blk.T, J = blk.J;
  at::Tensor Z = at::empty({H, 2 * N, T}, ropt);
  at::Tensor W = at::empty({C, H, 2 * N, J}, ropt);  // transposed: rows along j are contiguous
  const auto* vp = v.data_ptr<c10::complex<double>>();
  const auto* xp = x.data_ptr<c10::complex<double>>();
  scalar_t* zp = Z.data_ptr<scalar_t>();
  scalar_t* wp = W.data_ptr<scalar_t>();
  const int64_t HN = H * N;
#pragma omp parallel if (HN * (T + C * J) > kParallelMin)
  {
    std::vector<double> buf(2 * std::max(T, J));
#pragma omp for schedule(static)
    for (int64_t hn = 0; hn < HN; ++hn) {
      const int64_t h = hn / N, n = hn % N;
      const double a = xp[hn].real(), b = xp[hn].imag();
      double* re = buf.data();
      double* im = buf.data() + std::max(T, J);
      powers(a, b, 1, T, re, im);
      scalar_t* zr = zp + (h * 2 * N + n) * T;
      scalar_t* zi = zp + (h * 2 * N + N + n) * T;
      for (int64_t i = 0; i < T; ++i) {
        zr[i] = flush<scalar_t>(re[i]);
        zi[i] = flush<scalar_t>(im[i]);
      }
      powers(a, b, T, J, re, im);
      for (int64_t c = 0; c < C; ++c) {
        const double vr = vp[(c * H + h) * N + n].real(), vi = vp[(c * H + h) * N + n].imag();
        scalar_t* wr = wp + ((c * H + h) * 2 * N + n) * J;
        scalar_t* wi = wp + ((c * H + h) * 2 * N + N + n) * J;
        for (int64_t j = 0; j < J; ++j) {
          const double pr = vr * re[j] - vi * im[j];
          const double pi = vr * im[j] + vi * re[j];
          wr[j] = flush<scalar_t>(2.0 * pr);
          wi[j] = flush<scalar_t>(-2.0 * pi);
        }
      }
    }
  }
  at::Tensor K = at::matmul(W.transpose(-1, -2), Z);  // (C, H, J, T); the transpose is the GEMM's flag
  K = K.view({C, H, J * T});
  if (J * T != L) K = K.narrow(2, 0, L).contiguous();
  return K;
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> vandermonde_bwd_impl(const at::Tensor& g, const at::Tensor& v, const at::Tensor& x,
                                                        int64_t mask) {
  const int64_t C = v.size(0), H = v.size(1), N = v.size(2), L = g.size(2);
  const bool want_dv = mask & 1, want_dx = mask & 2;
  auto copt = v.options().dtype(at::kComplexDouble);
  at::Tensor dv = want_dv ? at::zeros({C, H, N}, copt) : at::Tensor();
  at::Tensor dx = want_dx ? at::zeros({H, N}, copt) : at::Tensor();
  if (L == 0 || C == 0 || H == 0 || N == 0 || mask == 0) return {dv, dx};
  const auto rdt = c10::CppTypeToScalarType<scalar_t>::value;
  const at::TensorOptions ropt = g.options().dtype(rdt);
  const auto blk = choose_blocking(L);
  const int64_t T = blk.T, J = blk.J;
  const int64_t ncol = want_dx ? 4 * N : 2 * N;
  at::Tensor Z = at::empty({H, ncol, T}, ropt);
  at::Tensor G = g;
  if (J * T != L) G = at::constant_pad_nd(g, {0, J * T - L}, 0);
  G = G.contiguous().view({C, H, J, T});
  const auto* xp = x.data_ptr<c10::complex<double>>();
  const auto* vp = v.data_ptr<c10::complex<double>>();
  scalar_t* zp = Z.data_ptr<scalar_t>();
  const int64_t HN = H * N;
#pragma omp parallel if (HN * T > kParallelMin)
  {
    std::vector<double> buf(2 * T);
#pragma omp for schedule(static)
    for (int64_t hn = 0; hn < HN; ++hn) {
      const int64_t h = hn / N, n = hn % N;
      double* re = buf.data();
      double* im = buf.data() + T;
      powers(xp[hn].real(), xp[hn].imag(), 1, T, re, im);
      scalar_t* z = zp + h * ncol * T;
      for (int64_t i = 0; i < T; ++i) {
        z[n * T + i] = flush<scalar_t>(re[i]);
        z[(N + n) * T + i] = flush<scalar_t>(im[i]);
      }
      if (want_dx)
        for (int64_t i = 0; i < T; ++i) {
          z[(2 * N + n) * T + i] = flush<scalar_t>(re[i] * static_cast<double>(i));
          z[(3 * N + n) * T + i] = flush<scalar_t>(im[i] * static_cast<double>(i));
        }
    }
  }
  at::Tensor R = at::matmul(Z, G.transpose(-1, -2)).contiguous();  // (C, H, ncol, J): rows along j contiguous
  const scalar_t* rp = R.data_ptr<scalar_t>();
  auto* dvp = want_dv ? dv.data_ptr<c10::complex<double>>() : nullptr;
  auto* dxp = want_dx ? dx.data_ptr<c10::complex<double>>() : nullptr;
#pragma omp parallel if (HN * C * J > kParallelMin)
  {
    std::vector<double> buf(2 * J);
#pragma omp for schedule(static)
    for (int64_t hn = 0; hn < HN; ++hn) {
      const int64_t h = hn / N, n = hn % N;
      double* pre = buf.data();
      double* pim = buf.data() + J;
      powers(xp[hn].real(), xp[hn].imag(), T, J, pre, pim);
      double dxr = 0.0, dxi = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* r = rp + (c * H + h) * ncol * J;
        const scalar_t* r0 = r + n * J;
        const scalar_t* r1 = r + (N + n) * J;
        double s0r = 0.0, s0i = 0.0, s1r = 0.0, s1i = 0.0;
        for (int64_t j = 0; j < J; ++j) {
          const double mr = r0[j], mi = r1[j];
          s0r += pre[j] * mr - pim[j] * mi;
          s0i += pre[j] * mi + pim[j] * mr;
        }
        if (want_dx) {
          const scalar_t* r2 = r + (2 * N + n) * J;
          const scalar_t* r3 = r + (3 * N + n) * J;
          for (int64_t j = 0; j < J; ++j) {
            const double jT = static_cast<double>(j * T);
            const double qr = jT * r0[j] + r2[j];
            const double qi = jT * r1[j] + r3[j];
            s1r += pre[j] * qr - pim[j] * qi;
            s1i += pre[j] * qi + pim[j] * qr;
          }
        }
        if (want_dv) dvp[(c * H + h) * N + n] = c10::complex<double>(2.0 * s0r, -2.0 * s0i);
        if (want_dx) {
          const double vr = vp[(c * H + h) * N + n].real(), vi = vp[(c * H + h) * N + n].imag();
          // 2 conj(v S1)
          dxr += 2.0 * (vr * s1r - vi * s1i);
          dxi -= 2.0 * (vr * s1i + vi * s1r);
        }
      }
      if (want_dx) dxp[hn] = c10::complex<double>(dxr, dxi);
    }
  }
  return {dv, dx};
}

void check_complex(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_complex(), "vandermonde: ", name, " must be complex, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "vandermonde: ", name, " must be a CPU tensor");
}

}  // namespace

at::Tensor vandermonde_fwd_cpu(const at::Tensor& v, const at::Tensor& x, int64_t L, bool out64) {
  check_complex(v, "v");
  check_complex(x, "x");
  TORCH_CHECK(v.dim() == 3 && x.dim() == 2 && v.size(1) == x.size(0) && v.size(2) == x.size(1),
              "vandermonde: expected v (C, H, N) and x (H, N), got ", v.sizes(), " and ", x.sizes());
  TORCH_CHECK(L >= 0, "vandermonde: L must be >= 0");
  auto vd = v.to(at::kComplexDouble).contiguous();
  auto xd = x.to(at::kComplexDouble).contiguous();
  return out64 ? vandermonde_fwd_impl<double>(vd, xd, L) : vandermonde_fwd_impl<float>(vd, xd, L);
}

std::tuple<at::Tensor, at::Tensor> vandermonde_bwd_cpu(const at::Tensor& g, const at::Tensor& v, const at::Tensor& x,
                                                       int64_t mask) {
  check_complex(v, "v");
  check_complex(x, "x");
  TORCH_CHECK(g.dim() == 3 && g.size(0) == v.size(0) && g.size(1) == v.size(1),
              "vandermonde backward: grad must be (C, H, L), got ", g.sizes());
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble,
              "vandermonde backward: grad must be float32 or float64");
  auto vd = v.to(at::kComplexDouble).contiguous();
  auto xd = x.to(at::kComplexDouble).contiguous();
  auto gc = g.contiguous();
  auto res = g.scalar_type() == at::kDouble ? vandermonde_bwd_impl<double>(gc, vd, xd, mask)
                                            : vandermonde_bwd_impl<float>(gc, vd, xd, mask);
  at::Tensor dv = std::get<0>(res), dx = std::get<1>(res);
  dv = dv.defined() ? dv.to(v.scalar_type()) : v.new_empty({0});
  dx = dx.defined() ? dx.to(x.scalar_type()) : x.new_empty({0});
  return {dv, dx};
}

// ---------------------------------------------------------------- discretisation (O(H N), double)
namespace {

using cd = std::complex<double>;

inline cd load_c(const at::Tensor& t, int64_t i) {
  const auto z = t.data_ptr<c10::complex<double>>()[i];
  return cd(z.real(), z.imag());
}

// exp(z) - 1 without cancellation at small |z|
inline cd expm1c(cd z) {
  const double a = z.real(), b = z.imag(), s = std::sin(0.5 * b);
  return cd(std::expm1(a) * std::cos(b) - 2.0 * s * s, std::exp(a) * std::sin(b));
}

// Per mode (h, n): x = log Abar and w = Bbar (v = C w), and for the backward the local derivatives.
struct Disc {
  cd x, w;
  cd dx_dz;   // d x / d z, z = dt A
  cd dw_dz;   // d w / d z (A fixed)
  cd dw_dA;   // d w / d A (z fixed)
  cd dw_dB;   // d w / d B
  cd dw_ddt;  // d w / d dt (z fixed)
};

inline Disc discretize_mode(double dt, cd A, cd B, bool zoh) {
  Disc d;
  const cd z = dt * A;
  if (zoh) {  // x = z, w = B (e^z - 1) / A
    const cd e1 = expm1c(z);
    d.x = z;
    d.dx_dz = 1.0;
    d.dw_dB = e1 / A;
    d.w = B * d.dw_dB;
    d.dw_dz = B * std::exp(z) / A;
    d.dw_dA = -d.w / A;
    d.dw_ddt = 0.0;
  } else {  // x = 2 atanh(z / 2), w = B dt / (1 - z/2)
    const cd den = 1.0 - 0.5 * z;
    d.x = 2.0 * std::atanh(0.5 * z);
    d.dx_dz = 1.0 / ((1.0 - 0.5 * z) * (1.0 + 0.5 * z));
    d.dw_dB = dt / den;
    d.w = B * d.dw_dB;
    d.dw_dz = 0.5 * d.w / den;
    d.dw_dA = 0.0;
    d.dw_ddt = B / den;
  }
  return d;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssm_discretize_fwd_cpu(const at::Tensor& log_dt, const at::Tensor& A,
                                                          const at::Tensor& B, const at::Tensor& C,
                                                          const std::string& disc) {
  TORCH_CHECK(disc == "zoh" || disc == "bilinear", "ssm discretize: unknown discretization ", disc);
  TORCH_CHECK(A.dim() == 2 && B.sizes() == A.sizes() && log_dt.dim() == 1 && log_dt.size(0) == A.size(0) &&
                  C.dim() >= 2 && C.size(-1) == A.size(1) && C.size(-2) == A.size(0),
              "ssm discretize: expected log_dt (H,), A, B (H, N), C (..., H, N)");
  const int64_t H = A.size(0), N = A.size(1), Cn = C.numel() / std::max<int64_t>(1, H * N);
  const auto copt = A.options().dtype(at::kComplexDouble);
  at::Tensor ld = log_dt.to(at::kDouble).contiguous();
  at::Tensor Ad = A.to(at::kComplexDouble).contiguous(), Bd = B.to(at::kComplexDouble).contiguous();
  at::Tensor Cd = C.to(at::kComplexDouble).contiguous();
  at::Tensor v = at::empty(C.sizes(), copt), x = at::empty({H, N}, copt);
  const bool zoh = disc == "zoh";
  const double* ldp = ld.data_ptr<double>();
  auto* vp = v.data_ptr<c10::complex<double>>();
  auto* xp = x.data_ptr<c10::complex<double>>();
  const auto* cp = Cd.data_ptr<c10::complex<double>>();
  for (int64_t h = 0; h < H; ++h) {
    const double dt = std::exp(ldp[h]);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t hn = h * N + n;
      const Disc d = discretize_mode(dt, load_c(Ad, hn), load_c(Bd, hn), zoh);
      xp[hn] = c10::complex<double>(d.x.real(), d.x.imag());
      for (int64_t c = 0; c < Cn; ++c) {
        const cd val = cd(cp[c * H * N + hn].real(), cp[c * H * N + hn].imag()) * d.w;
        vp[c * H * N + hn] = c10::complex<double>(val.real(), val.imag());
      }
    }
  }
  return {v, x};
}

// torch's convention: for w = f(z) holomorphic, grad_z = conj(f'(z)) grad_w; for a real s, grad_s = Re(conj(dz/ds) grad_z).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssm_discretize_bwd_cpu(
    const at::Tensor& gv, const at::Tensor& gx, const at::Tensor& log_dt, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::string& disc, int64_t mask) {
  TORCH_CHECK(disc == "zoh" || disc == "bilinear", "ssm discretize: unknown discretization ", disc);
  const int64_t H = A.size(0), N = A.size(1), Cn = C.numel() / std::max<int64_t>(1, H * N);
  const bool zoh = disc == "zoh";
  at::Tensor ld = log_dt.to(at::kDouble).contiguous();
  at::Tensor Ad = A.to(at::kComplexDouble).contiguous(), Bd = B.to(at::kComplexDouble).contiguous();
  at::Tensor Cd = C.to(at::kComplexDouble).contiguous();
  const bool has_gv = gv.numel() > 0, has_gx = gx.numel() > 0;
  at::Tensor gvd = has_gv ? gv.to(at::kComplexDouble).contiguous() : gv;
  at::Tensor gxd = has_gx ? gx.to(at::kComplexDouble).contiguous() : gx;
  const auto dopt = A.options().dtype(at::kComplexDouble);
  at::Tensor dld = at::zeros({H}, ld.options()), dA = at::zeros({H, N}, dopt), dB = at::zeros({H, N}, dopt);
  at::Tensor dC = at::zeros(C.sizes(), dopt);
  double* dldp = dld.data_ptr<double>();
  auto* dAp = dA.data_ptr<c10::complex<double>>();
  auto* dBp = dB.data_ptr<c10::complex<double>>();
  auto* dCp = dC.data_ptr<c10::complex<double>>();
  const auto* cp = Cd.data_ptr<c10::complex<double>>();
  const double* ldp = ld.data_ptr<double>();
  for (int64_t h = 0; h < H; ++h) {
    const double dt = std::exp(ldp[h]);
    double gdt = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t hn = h * N + n;
      const cd Av = load_c(Ad, hn);
      const Disc d = discretize_mode(dt, Av, load_c(Bd, hn), zoh);
      cd gw = 0.0;  // grad of w = Bbar: sum_c conj(C) grad_v
      if (has_gv)
        for (int64_t c = 0; c < Cn; ++c) {
          const cd g = load_c(gvd, c * H * N + hn);
          const cd Cc(cp[c * H * N + hn].real(), cp[c * H * N + hn].imag());
          gw += std::conj(Cc) * g;
          const cd dc = std::conj(d.w) * g;
          dCp[c * H * N + hn] = c10::complex<double>(dc.real(), dc.imag());
        }
      const cd gz = (has_gx ? std::conj(d.dx_dz) * load_c(gxd, hn) : cd(0.0)) + std::conj(d.dw_dz) * gw;
      const cd gA = dt * gz + std::conj(d.dw_dA) * gw;
      const cd gB = std::conj(d.dw_dB) * gw;
      dAp[hn] = c10::complex<double>(gA.real(), gA.imag());
      dBp[hn] = c10::complex<double>(gB.real(), gB.imag());
      gdt += (std::conj(Av) * gz).real() + (std::conj(d.dw_ddt) * gw).real();
    }
    dldp[h] = dt * gdt;
  }
  auto empty = [&](const at::Tensor& t) { return t.new_empty({0}); };
  return {mask & 1 ? dld.to(log_dt.scalar_type()) : empty(log_dt), mask & 2 ? dA.to(A.scalar_type()) : empty(A),
          mask & 4 ? dB.to(B.scalar_type()) : empty(B), mask & 8 ? dC.to(C.scalar_type()) : empty(C)};
}

// ---------------------------------------------------------------- FFT convolution
//
// FFT size n: the smallest 2^a 3^b 5^c >= 2L - 1 (a causal product needs n >= 2L - 1, not 2L), at least 2.
// Spectra are stored as n/2 + 1 complex ("kf" scaled by 1/n, so that the inverse transforms are unscaled).
//
// Two paths.  Direct (default where torch's MKL exports its DFTI interface, i.e. x86 builds): one
// OpenMP loop over channels h; per (h, b) the padded row is transformed by a per-thread MKL descriptor,
// multiplied by the kernel spectrum, transformed back and truncated + D u in cache -- the (B, H, n)
// intermediates of the batched recipe never reach memory.  Fallback: ATen's batched real FFTs with
// fused OpenMP loops in between.
extern "C" {
// MKL DFTI C interface (as exported by libtorch_cpu); weak: null where torch was built without MKL.
long DftiCreateDescriptor_s_1d(void**, int, long) __attribute__((weak));
long DftiCreateDescriptor_d_1d(void**, int, long) __attribute__((weak));
long DftiSetValue(void*, int, ...) __attribute__((weak));
long DftiCommitDescriptor(void*) __attribute__((weak));
long DftiComputeForward(void*, void*, ...) __attribute__((weak));
long DftiComputeBackward(void*, void*, ...) __attribute__((weak));
long DftiFreeDescriptor(void**) __attribute__((weak));
// Fortran BLAS (exported by libtorch_cpu's MKL / OpenBLAS); weak: at::mm where absent
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

// mkl_dfti.h's enum values (DFTI_CONFIG_PARAM / DFTI_CONFIG_VALUE)
constexpr int kDftiConjugateEvenStorage = 10, kDftiPlacement = 11, kDftiThreadLimit = 27, kDftiReal = 33,
              kDftiComplexComplex = 39, kDftiNotInplace = 44;

std::atomic<bool> g_direct_fft{true};

int64_t fft_size(int64_t L) {
  int64_t n = std::max<int64_t>(2, 2 * L - 1);
  for (;; ++n) {
    int64_t m = n;
    for (int64_t p : {2, 3, 5})
      while (m % p == 0) m /= p;
    if (m == 1) return n;
  }
}

// One real transform of size n (forward r2c to n/2+1 complex, backward c2r unnormalised), for one thread.
template <typename T>
class RealFft {
 public:
  explicit RealFft(int64_t n) {
    long st = std::is_same<T, float>::value ? DftiCreateDescriptor_s_1d(&h_, kDftiReal, static_cast<long>(n))
                                             : DftiCreateDescriptor_d_1d(&h_, kDftiReal, static_cast<long>(n));
    if (st == 0) st = DftiSetValue(h_, kDftiPlacement, kDftiNotInplace);
    if (st == 0) st = DftiSetValue(h_, kDftiConjugateEvenStorage, kDftiComplexComplex);
    if (st == 0) DftiSetValue(h_, kDftiThreadLimit, 1);  // best effort: we are inside our own threads
    if (st == 0) st = DftiCommitDescriptor(h_);
    ok_ = st == 0;
  }
  ~RealFft() {
    if (h_) DftiFreeDescriptor(&h_);
  }
  RealFft(const RealFft&) = delete;
  RealFft& operator=(const RealFft&) = delete;
  bool ok() const { return ok_; }
  bool forward(T* in, c10::complex<T>* out) { return DftiComputeForward(h_, in, out) == 0; }
  bool backward(c10::complex<T>* in, T* out) { return DftiComputeBackward(h_, in, out) == 0; }

 private:
  void* h_ = nullptr;
  bool ok_ = false;
};

bool direct_fft_linked() {
  return DftiCreateDescriptor_s_1d && DftiCreateDescriptor_d_1d && DftiSetValue && DftiCommitDescriptor &&
         DftiComputeForward && DftiComputeBackward && DftiFreeDescriptor;
}

bool direct_fft_works() {
  static const bool works = [] {
    if (!direct_fft_linked()) return false;
    RealFft<float> f(12);
    RealFft<double> d(10);
    return f.ok() && d.ok();
  }();
  return works;
}

bool use_direct() { return g_direct_fft.load() && direct_fft_works(); }

// 64-byte aligned scratch
template <typename T>
struct Buf {
  explicit Buf(int64_t n) : t(at::empty({std::max<int64_t>(1, n) * static_cast<int64_t>(sizeof(T))}, at::kByte)) {}
  T* get() { return reinterpret_cast<T*>(t.data_ptr()); }
  at::Tensor t;
};

template <typename T>
using cplx = c10::complex<T>;

template <typename T>
T* rptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// fills the length-n circular buffer r from a causal row k0 (and an anti-causal row k1, placed at n-1-l)
template <typename T>
void circular_row(T* r, const T* k0, const T* k1, int64_t L, int64_t n) {
  std::copy(k0, k0 + L, r);
  std::fill(r + L, r + n, T(0));
  if (k1)
    for (int64_t l = 0; l + 1 < L; ++l) r[n - 1 - l] = k1[l];
}

// acc (+)= conj(a) * b over F bins
template <typename T>
inline void conj_mul(const cplx<T>* a, const cplx<T>* b, cplx<T>* acc, int64_t F, bool first) {
  T* o = reinterpret_cast<T*>(acc);
  const T* ar = reinterpret_cast<const T*>(a);
  const T* br = reinterpret_cast<const T*>(b);
  if (first) {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      o[2 * f] = ar[2 * f] * br[2 * f] + ar[2 * f + 1] * br[2 * f + 1];
      o[2 * f + 1] = ar[2 * f] * br[2 * f + 1] - ar[2 * f + 1] * br[2 * f];
    }
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      o[2 * f] += ar[2 * f] * br[2 * f] + ar[2 * f + 1] * br[2 * f + 1];
      o[2 * f + 1] += ar[2 * f] * br[2 * f + 1] - ar[2 * f + 1] * br[2 * f];
    }
  }
}

// out = a * b over F bins (out may alias a)
template <typename T>
inline void mul(const cplx<T>* a, const cplx<T>* b, cplx<T>* out, int64_t F) {
  T* o = reinterpret_cast<T*>(out);
  const T* ar = reinterpret_cast<const T*>(a);
  const T* br = reinterpret_cast<const T*>(b);
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) {
    const T x = ar[2 * f], y = ar[2 * f + 1], c = br[2 * f], d = br[2 * f + 1];
    o[2 * f] = x * c - y * d;
    o[2 * f + 1] = x * d + y * c;
  }
}

// ---- direct path (per-thread MKL transforms)

// kf[c, h] = rfft(circular(k[c, 0, h], k[c, 1, h])) / n
template <typename T>
bool spectrum_direct(const T* kp, cplx<T>* kfp, int64_t C, int64_t S, int64_t H, int64_t L, int64_t n) {
  const int64_t F = n / 2 + 1;
  const T scale = T(1) / static_cast<T>(n);
  std::atomic<bool> ok{true};
#pragma omp parallel if (C * H * n > kParallelMin)
  {
    RealFft<T> fft(n);
    Buf<T> r(n);
    if (!fft.ok()) ok = false;
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < C * H; ++ch) {
      if (!ok) continue;
      const int64_t c = ch / H, h = ch % H;
      const T* k0 = kp + ((c * S) * H + h) * L;
      circular_row<T>(r.get(), k0, S == 2 ? k0 + H * L : nullptr, L, n);
      cplx<T>* out = kfp + ch * F;
      if (!fft.forward(r.get(), out)) ok = false;
      for (int64_t f = 0; f < F; ++f) out[f] *= scale;
    }
  }
  return ok;
}

// The rows of channel h: y[b, c, h] = irfft(rfft(u[b, h]) kf[c, h])[:L] + D[c, h] u[b, h] for every b, c, with
// kf[c, h] at kh + c * kstride; uf[b, h] = rfft(u[b, h]) when ufp.  r (n), s, t (n/2+1) are the caller's scratch.
template <typename T>
bool conv_channel_fwd(RealFft<T>& fft, T* r, cplx<T>* s, cplx<T>* t, const T* up, const cplx<T>* kh, int64_t kstride,
                      const T* dp, T* yp, cplx<T>* ufp, int64_t B, int64_t C, int64_t H, int64_t L, int64_t n,
                      int64_t h) {
  const int64_t F = n / 2 + 1;
  bool ok = true;
  for (int64_t b = 0; b < B; ++b) {
    const T* ur = up + (b * H + h) * L;
    std::copy(ur, ur + L, r);
    std::fill(r + L, r + n, T(0));
    if (!fft.forward(r, s)) ok = false;
    if (ufp) std::copy(s, s + F, ufp + (b * H + h) * F);
    for (int64_t c = 0; c < C; ++c) {
      mul<T>(s, kh + c * kstride, t, F);
      if (!fft.backward(t, r)) ok = false;
      T* yr = yp + ((b * C + c) * H + h) * L;
      if (dp) {
        const T d = dp[c * H + h];
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) yr[i] = r[i] + d * ur[i];
      } else {
        std::copy(r, r + L, yr);
      }
    }
  }
  return ok;
}

// y[b, c, h] = irfft(rfft(u[b, h]) kf[c, h])[:L] + D[c, h] u[b, h]; uf[b, h] = rfft(u[b, h]) when ufp
template <typename T>
bool conv_fwd_direct(const T* up, const cplx<T>* kfp, const T* dp, T* yp, cplx<T>* ufp, int64_t B, int64_t C,
                     int64_t H, int64_t L, int64_t n) {
  const int64_t F = n / 2 + 1;
  std::atomic<bool> ok{true};
#pragma omp parallel if (B * C * H * n > kParallelMin)
  {
    RealFft<T> fft(n);
    Buf<T> r(n);
    Buf<cplx<T>> s(F), t(F);
    if (!fft.ok()) ok = false;
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      if (!ok) continue;
      if (!conv_channel_fwd<T>(fft, r.get(), s.get(), t.get(), up, kfp + h * F, H * F, dp, yp, ufp, B, C, H, L, n, h))
        ok = false;
    }
  }
  return ok;
}

// Per channel h, after its batch loop: dk row (c) of length n (unscaled correlation) -> the caller's sink.
// du[b, h] = irfft(sum_c conj(kf[c, h]) G[b, c, h])[:L] + sum_c D[c, h] g[b, c, h];
// dkfull[c, h] = irfft(sum_b conj(U[b, h]) G[b, c, h]) / n;   dD[c, h] = sum_{b, t} g u  (double)
template <typename T, typename Sink>
bool conv_bwd_direct(const T* gp, const T* up, const cplx<T>* ufp, const cplx<T>* kfp, const T* dp, T* dup,
                     double* dDp, bool want_dk, int64_t B, int64_t C, int64_t H, int64_t L, int64_t n,
                     const Sink& sink) {
  const int64_t F = n / 2 + 1;
  const T scale = T(1) / static_cast<T>(n);
  std::atomic<bool> ok{true};
  const bool need_g_hat = dup || want_dk;
#pragma omp parallel if (B * C * H * n > kParallelMin)
  {
    // the sink's GEMMs (ssm_conv's Vandermonde backward) are per channel: one MKL thread (a team of one here is
    // not an active region, and MKL would wake its own team for each)
    const mkl_packed::OneMklThread one_mkl_thread;
    RealFft<T> fft(n);
    Buf<T> r(n);
    Buf<cplx<T>> gh(F), uh(F), adu(F), adk(want_dk ? C * F : 1);
    auto ctx = sink.make_scratch();
    if (!fft.ok()) ok = false;
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      if (!ok) continue;
      for (int64_t b = 0; b < B; ++b) {
        const T* ur = up + (b * H + h) * L;
        if (want_dk) {
          if (ufp) {
            std::copy(ufp + (b * H + h) * F, ufp + (b * H + h + 1) * F, uh.get());
          } else {
            std::copy(ur, ur + L, r.get());
            std::fill(r.get() + L, r.get() + n, T(0));
            if (!fft.forward(r.get(), uh.get())) ok = false;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const T* gr = gp + ((b * C + c) * H + h) * L;
          if (dDp) {
            double part = 0.0;
#pragma omp simd reduction(+ : part)
            for (int64_t i = 0; i < L; ++i) part += static_cast<double>(gr[i]) * static_cast<double>(ur[i]);
            dDp[c * H + h] += part;
          }
          if (!need_g_hat) continue;
          std::copy(gr, gr + L, r.get());
          std::fill(r.get() + L, r.get() + n, T(0));
          if (!fft.forward(r.get(), gh.get())) ok = false;
          if (dup) conj_mul<T>(kfp + (c * H + h) * F, gh.get(), adu.get(), F, c == 0);
          if (want_dk) conj_mul<T>(uh.get(), gh.get(), adk.get() + c * F, F, b == 0);
        }
        if (dup) {
          if (!fft.backward(adu.get(), r.get())) ok = false;
          T* dr = dup + (b * H + h) * L;
          std::copy(r.get(), r.get() + L, dr);
          if (dp)
            for (int64_t c = 0; c < C; ++c) {
              const T d = dp[c * H + h];
              const T* gr = gp + ((b * C + c) * H + h) * L;
#pragma omp simd
              for (int64_t i = 0; i < L; ++i) dr[i] += d * gr[i];
            }
        }
      }
      if (want_dk)
        for (int64_t c = 0; c < C; ++c) {
          if (!fft.backward(adk.get() + c * F, r.get())) ok = false;
          T* rr = r.get();
          for (int64_t i = 0; i < n; ++i) rr[i] *= scale;
          sink(ctx, c, h, rr);
        }
    }
  }
  return ok;
}

// ---- batched fallback (ATen FFTs)

at::Tensor spectrum_batched(const at::Tensor& k, int64_t L, int64_t n) {
  const int64_t C = k.size(0), S = k.size(1), H = k.size(2);
  at::Tensor buf = at::zeros({C, H, n}, k.options());
  buf.narrow(2, 0, L).copy_(k.select(1, 0));
  if (S == 2 && L > 1) buf.narrow(2, n - L + 1, L - 1).copy_(k.select(1, 1).narrow(2, 0, L - 1).flip({-1}));
  return at::fft_rfft(buf, n, -1, "forward").contiguous();
}

// out[b, c, h, f] = uf[b, h, f] * kf[c, h, f]
template <typename T>
void spectral_product(const cplx<T>* up, const cplx<T>* kp, cplx<T>* op, int64_t B, int64_t C, int64_t H, int64_t F) {
#pragma omp parallel for collapse(2) schedule(static) if (B * H * C * F > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c = 0; c < C; ++c)
        mul<T>(up + (b * H + h) * F, kp + (c * H + h) * F, op + ((b * C + c) * H + h) * F, F);
}

// y[b, c, h, t] = full[b, c, h, t] (t < L of n) + D[c, h] u[b, h, t]
template <typename T>
void truncate_skip(const T* full, const T* up, const T* dp, T* yp, int64_t B, int64_t C, int64_t H, int64_t L,
                   int64_t n) {
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * L > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < C * H; ++ch) {
      const T* src = full + (b * C * H + ch) * n;
      T* dst = yp + (b * C * H + ch) * L;
      if (dp) {
        const T d = dp[ch];
        const T* ur = up + (b * H + ch % H) * L;
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) dst[t] = src[t] + d * ur[t];
      } else {
        std::copy(src, src + L, dst);
      }
    }
}

template <typename T>
void conv_fwd_batched(const at::Tensor& uc, const at::Tensor& kf, const at::Tensor& Dc, at::Tensor& y,
                      at::Tensor& uf_out, bool save_uf, int64_t n) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2), C = kf.size(0), F = n / 2 + 1;
  at::Tensor uf = at::fft_rfft(uc, n, -1).contiguous();
  at::Tensor prod = (!save_uf && C == 1) ? uf.view({B, 1, H, F}) : at::empty({B, C, H, F}, uf.options());
  spectral_product<T>(rptr<cplx<T>>(uf), rptr<cplx<T>>(kf), rptr<cplx<T>>(prod), B, C, H, F);
  at::Tensor full = at::fft_irfft(prod, n, -1, "forward").contiguous();
  prod = at::Tensor();
  truncate_skip<T>(rptr<T>(full), rptr<T>(uc), Dc.defined() ? rptr<T>(Dc) : nullptr, rptr<T>(y), B, C, H, L, n);
  if (save_uf) uf_out = uf;
}

// the backward's sums of conjugate products over the (B, C, H, F) spectrum g:
//   over_c (du): acc[b, h] = sum_c conj(a[c, h]) g[b, c, h]   (a = kf)
//   else   (dk): acc[c, h] = sum_b conj(a[b, h]) g[b, c, h]   (a = rfft(u))
template <typename T>
void conj_sums(const cplx<T>* ap, const cplx<T>* gp, cplx<T>* accp, int64_t B, int64_t C, int64_t H, int64_t F,
               bool over_c) {
  const int64_t O = over_c ? B : C, Sn = over_c ? C : B;
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * F > kParallelMin)
  for (int64_t o = 0; o < O; ++o)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < Sn; ++s) {
        const int64_t b = over_c ? o : s, c = over_c ? s : o;
        conj_mul<T>(ap + ((over_c ? c : b) * H + h) * F, gp + ((b * C + c) * H + h) * F, accp + (o * H + h) * F, F,
                    s == 0);
      }
}

// dkfull (C, H, n) = irfft(sum_b conj(U_b) G_b) / n; du and dD into their tensors
template <typename T>
at::Tensor conv_bwd_batched(const at::Tensor& gc, const at::Tensor& uc, const at::Tensor& uf_saved, const at::Tensor& kf,
                            const at::Tensor& Dc, at::Tensor* du, double* dDp, bool want_dk, int64_t n) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2), C = gc.size(1), F = n / 2 + 1;
  at::Tensor gf, dkfull;
  if (du || want_dk) gf = at::fft_rfft(gc, n, -1).contiguous();  // (B, C, H, F)
  if (du) {
    at::Tensor acc = at::empty({B, H, F}, gf.options());
    conj_sums<T>(rptr<cplx<T>>(kf), rptr<cplx<T>>(gf), rptr<cplx<T>>(acc), B, C, H, F, /*over_c=*/true);
    at::Tensor full = at::fft_irfft(acc, n, -1, "forward").contiguous();  // (B, H, n)
    const T* fp = rptr<T>(full);
    const T* dp = Dc.defined() ? rptr<T>(Dc) : nullptr;
    const T* g = rptr<T>(gc);
    T* op = rptr<T>(*du);
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * L > kParallelMin)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        T* dst = op + (b * H + h) * L;
        std::copy(fp + (b * H + h) * n, fp + (b * H + h) * n + L, dst);
        if (dp)
          for (int64_t c = 0; c < C; ++c) {
            const T d = dp[c * H + h];
            const T* gr = g + ((b * C + c) * H + h) * L;
#pragma omp simd
            for (int64_t t = 0; t < L; ++t) dst[t] += d * gr[t];
          }
      }
  }
  if (want_dk) {
    at::Tensor uf = uf_saved.numel() ? uf_saved.contiguous() : at::fft_rfft(uc, n, -1).contiguous();
    at::Tensor acc = at::empty({C, H, F}, gf.options());
    // summed over the batch before the inverse FFT
    conj_sums<T>(rptr<cplx<T>>(uf), rptr<cplx<T>>(gf), rptr<cplx<T>>(acc), B, C, H, F, /*over_c=*/false);
    dkfull = at::fft_irfft(acc, n, -1, "backward").contiguous();  // (C, H, n), / n
  }
  if (dDp) {
    const T* g = rptr<T>(gc);
    const T* u = rptr<T>(uc);
#pragma omp parallel for schedule(static) if (B * C * H * L > kParallelMin)
    for (int64_t ch = 0; ch < C * H; ++ch) {
      const int64_t c = ch / H, h = ch % H;
      double s = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        const T* gr = g + ((b * C + c) * H + h) * L;
        const T* ur = u + (b * H + h) * L;
        double part = 0.0;
#pragma omp simd reduction(+ : part)
        for (int64_t t = 0; t < L; ++t) part += static_cast<double>(gr[t]) * static_cast<double>(ur[t]);
        s += part;
      }
      dDp[ch] = s;
    }
  }
  return dkfull;
}

// dk[c, 0, h, l] = full[l]; dk[c, 1, h, l] = full[n - 1 - l] (l <= L - 2; k1[L - 1] is unused: 0)
template <typename T>
void dk_from_full(const T* full, T* dk0, T* dk1, int64_t L, int64_t n) {
  std::copy(full, full + L, dk0);
  if (dk1) {
    for (int64_t l = 0; l + 1 < L; ++l) dk1[l] = full[n - 1 - l];
    dk1[L - 1] = T(0);
  }
}

struct NoScratch {};

// writes dk rows into a (C, S, H, L) tensor
template <typename T>
struct DkTensorSink {
  T* dkp;
  int64_t S, H, L, n;
  NoScratch make_scratch() const { return {}; }
  void operator()(NoScratch&, int64_t c, int64_t h, const T* full) const {
    T* d0 = dkp + ((c * S) * H + h) * L;
    dk_from_full<T>(full, d0, S == 2 ? d0 + H * L : nullptr, L, n);
  }
};

void check_fft_args(const at::Tensor& u, const at::Tensor& k) {
  TORCH_CHECK(u.dim() == 3 && k.dim() == 4 && k.size(2) == u.size(1) && k.size(3) == u.size(2) &&
                  (k.size(1) == 1 || k.size(1) == 2),
              "fftconv: expected u (B, H, L) and k (C, S, H, L), got ", u.sizes(), " and ", k.sizes());
}

template <typename T>
at::Tensor kernel_spectrum(const at::Tensor& kc, int64_t L, int64_t n) {
  const int64_t C = kc.size(0), S = kc.size(1), H = kc.size(2);
  if (use_direct()) {
    at::Tensor kf = at::empty({C, H, n / 2 + 1}, kc.options().dtype(c10::toComplexType(kc.scalar_type())));
    if (spectrum_direct<T>(rptr<T>(kc), rptr<cplx<T>>(kf), C, S, H, L, n)) return kf;
  }
  return spectrum_batched(kc, L, n);
}

// y (B, C, H, L) in the compute dtype from u (compute dtype, contiguous) and kf
template <typename T>
void conv_fwd(const at::Tensor& uc, const at::Tensor& kf, const at::Tensor& Dc, at::Tensor& y, at::Tensor& uf,
              bool save_uf, int64_t n) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2), C = kf.size(0);
  if (use_direct()) {
    if (save_uf) uf = at::empty({B, H, n / 2 + 1}, kf.options());
    if (conv_fwd_direct<T>(rptr<T>(uc), rptr<cplx<T>>(kf), Dc.defined() ? rptr<T>(Dc) : nullptr, rptr<T>(y),
                           save_uf ? rptr<cplx<T>>(uf) : nullptr, B, C, H, L, n))
      return;
  }
  conv_fwd_batched<T>(uc, kf, Dc, y, uf, save_uf, n);
}

// the shared backward: du, dD into tensors; dk rows to `sink` (direct) or returned as (C, H, n) (batched)
template <typename T, typename Sink>
at::Tensor conv_bwd(const at::Tensor& gc, const at::Tensor& uc, const at::Tensor& uf, const at::Tensor& kf,
                    const at::Tensor& Dc, at::Tensor* du, double* dDp, bool want_dk, int64_t n, const Sink& sink,
                    bool* done) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2), C = gc.size(1);
  if (use_direct()) {
    if (dDp) std::fill(dDp, dDp + C * H, 0.0);
    *done = conv_bwd_direct<T>(rptr<T>(gc), rptr<T>(uc), uf.numel() ? rptr<cplx<T>>(uf) : nullptr,
                               kf.defined() ? rptr<cplx<T>>(kf) : nullptr, Dc.defined() ? rptr<T>(Dc) : nullptr,
                               du ? rptr<T>(*du) : nullptr, dDp, want_dk, B, C, H, L, n, sink);
    if (*done) return at::Tensor();
  }
  *done = false;
  return conv_bwd_batched<T>(gc, uc, uf, kf, Dc, du, dDp, want_dk, n);
}

at::ScalarType compute_dtype(const at::Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

int64_t ssm_fft_size(int64_t L) { return fft_size(L); }

bool ssm_direct_fft(int64_t set) {
  if (set >= 0) g_direct_fft = set != 0;
  return use_direct();
}

std::tuple<at::Tensor, at::Tensor> fftconv_fwd_cpu(const at::Tensor& u, const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& D, bool save_uf) {
  check_fft_args(u, k);
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), C = k.size(0), n = fft_size(L), F = n / 2 + 1;
  const auto cdt = compute_dtype(u);
  const auto cplxt = c10::toComplexType(cdt);
  if (B == 0 || H == 0 || L == 0 || C == 0)
    return {at::zeros({B, C, H, L}, u.options()),
            save_uf ? at::zeros({B, H, F}, u.options().dtype(cplxt)) : at::empty({0}, u.options().dtype(cplxt))};
  at::Tensor uc = u.to(cdt).contiguous();
  at::Tensor kc = k.to(cdt).contiguous();
  at::Tensor Dc;
  if (D.has_value() && D->defined()) Dc = D->to(cdt).contiguous().view({C, H});
  at::Tensor y = at::empty({B, C, H, L}, uc.options()), uf = at::empty({0}, u.options().dtype(cplxt));
  if (cdt == at::kDouble)
    conv_fwd<double>(uc, kernel_spectrum<double>(kc, L, n), Dc, y, uf, save_uf, n);
  else
    conv_fwd<float>(uc, kernel_spectrum<float>(kc, L, n), Dc, y, uf, save_uf, n);
  if (u.scalar_type() != cdt) y = y.to(u.scalar_type());
  return {y, uf};
}

namespace {
template <typename T>
void fftconv_bwd_impl(const at::Tensor& gc, const at::Tensor& uc, const at::Tensor& uf, const at::Tensor& kc,
                      const at::Tensor& Dc, bool want_du, bool want_dk, bool want_dD, at::Tensor& du, at::Tensor& dk,
                      at::Tensor& dD) {
  const int64_t H = uc.size(1), L = uc.size(2), C = kc.size(0), S = kc.size(1), n = fft_size(L);
  at::Tensor kf = want_du ? kernel_spectrum<T>(kc, L, n) : at::Tensor();
  at::Tensor duc = want_du ? (du.scalar_type() == uc.scalar_type() ? du : at::empty(du.sizes(), uc.options()))
                           : at::Tensor();
  at::Tensor dkc = want_dk ? (dk.scalar_type() == uc.scalar_type() ? dk : at::empty(dk.sizes(), uc.options()))
                           : at::Tensor();
  at::Tensor dDd = want_dD ? at::empty({C, H}, uc.options().dtype(at::kDouble)) : at::Tensor();
  DkTensorSink<T> sink{want_dk ? rptr<T>(dkc) : nullptr, S, H, L, n};
  bool done = false;
  at::Tensor full = conv_bwd<T>(gc, uc, uf, kf, Dc, want_du ? &duc : nullptr,
                                want_dD ? dDd.data_ptr<double>() : nullptr, want_dk, n, sink, &done);
  if (want_dk && !done) {
    const T* fp = rptr<T>(full);
    NoScratch ns;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) sink(ns, c, h, fp + (c * H + h) * n);
  }
  if (want_du && !duc.is_same(du)) du.copy_(duc);
  if (want_dk && !dkc.is_same(dk)) dk.copy_(dkc);
  if (want_dD) dD.copy_(dDd.view(dD.sizes()));
}

// The input gradient du (u's shape) of the two backwards: the kernels write every (b, h) row, so no zero pass over
// it, except for the degenerate shapes (they return before any kernel); (0,) when not wanted.
at::Tensor input_grad(bool want, bool degenerate, const at::Tensor& u) {
  if (!want) return at::empty({0}, u.options());
  return degenerate ? at::zeros(u.sizes(), u.options()) : at::empty(u.sizes(), u.options());
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fftconv_bwd_cpu(const at::Tensor& g, const at::Tensor& u,
                                                               const at::Tensor& uf_saved, const at::Tensor& k,
                                                               const c10::optional<at::Tensor>& D, int64_t mask) {
  TORCH_CHECK(u.dim() == 3 && k.dim() == 4, "fftconv backward: expected u (B, H, L) and k (C, S, H, L)");
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), C = k.size(0), S = k.size(1);
  TORCH_CHECK(g.dim() == 4 && g.size(0) == B && g.size(1) == C && g.size(2) == H && g.size(3) == L,
              "fftconv backward: grad must be (B, C, H, L), got ", g.sizes());
  const bool has_D = D.has_value() && D->defined();
  const bool want_du = mask & 1, want_dk = mask & 2, want_dD = (mask & 4) && has_D;
  const auto cdt = compute_dtype(u);
  const bool degenerate = B == 0 || H == 0 || L == 0 || C == 0;
  at::Tensor du = input_grad(want_du, degenerate, u);
  at::Tensor dk = want_dk ? at::zeros({C, S, H, L}, k.options()) : at::empty({0}, k.options());
  at::Tensor dD = want_dD ? at::zeros(D->sizes(), D->options()) : at::empty({0}, u.options());
  if (degenerate || !(want_du || want_dk || want_dD)) return {du, dk, dD};
  TORCH_CHECK(uf_saved.numel() == 0 || uf_saved.size(-1) == fft_size(L) / 2 + 1,
              "fftconv backward: saved spectrum has the wrong length");
  at::Tensor gc = g.to(cdt).contiguous(), uc = u.to(cdt).contiguous(), kc = k.to(cdt).contiguous();
  at::Tensor Dc;
  if (has_D) Dc = D->to(cdt).contiguous().view({C, H});
  at::Tensor uf = uf_saved.numel() ? uf_saved.contiguous() : uf_saved;
  if (cdt == at::kDouble)
    fftconv_bwd_impl<double>(gc, uc, uf, kc, Dc, want_du, want_dk, want_dD, du, dk, dD);
  else
    fftconv_bwd_impl<float>(gc, uc, uf, kc, Dc, want_du, want_dk, want_dD, du, dk, dD);
  return {du, dk, dD};
}

// ---------------------------------------------------------------- ssm_conv: the fused pair
//
// Direct path: per channel h, the blocked Vandermonde product (one small GEMM per output channel and
// direction) writes K straight into the zero-padded FFT input buffer, which is transformed at once: K is
// never an (H, L) tensor, only its spectrum kf (C, H, n/2+1) (kept for the backward's du).  The backward
// runs the FFT convolution's backward per channel and hands each dK row, still in cache, to the
// Vandermonde backward (one GEMM against [Q | i Q] and O(N J) double reductions) -- no (C, H, L) dK tensor.
namespace {

// column-major C (m x n, ldc) = A (m x k, lda) . B (k x n, ldb), sequential: called inside our threads, which hold
// mkl_packed::OneMklThread (a team of one, below kParallelMin, would otherwise let MKL thread each call)
template <typename T>
void small_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  const T one = 1, zero = 0;
  const char nt = 'N';
  if (std::is_same<T, float>::value && sgemm_) {
    sgemm_(&nt, &nt, &mi, &ni, &ki, reinterpret_cast<const float*>(&one), reinterpret_cast<const float*>(a), &la,
           reinterpret_cast<const float*>(b), &lb, reinterpret_cast<const float*>(&zero), reinterpret_cast<float*>(c),
           &lc);
    return;
  }
  if (std::is_same<T, double>::value && dgemm_) {
    dgemm_(&nt, &nt, &mi, &ni, &ki, reinterpret_cast<const double*>(&one), reinterpret_cast<const double*>(a), &la,
           reinterpret_cast<const double*>(b), &lb, reinterpret_cast<const double*>(&zero),
           reinterpret_cast<double*>(c), &lc);
    return;
  }
  // row-major view: C^T (n x m) = B^T (n x k) . A^T (k x m)
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor ct = at::from_blob(c, {n, m}, {ldc, 1}, opt);
  at::mm_out(ct, at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opt),
             at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opt));
}

// Per-thread tables of one channel h: Q = exp(x i) (i < T) and P = exp(x j T) (j < J), in double, from
// which the real GEMM operands are rounded.
template <typename T>
struct VdmChannel {
  int64_t N, Tb, J;
  std::vector<double> pre, pim, qre, qim;
  Buf<T> Z, W, G, R;
  int64_t h = -1;
  VdmChannel(int64_t N_, int64_t Tb_, int64_t J_, bool bwd)
      : N(N_), Tb(Tb_), J(J_), pre(N_ * J_), pim(N_ * J_), qre(N_ * Tb_), qim(N_ * Tb_),
        Z((bwd ? 4 : 2) * N_ * Tb_), W(bwd ? 1 : 2 * N_ * J_), G(bwd ? J_ * Tb_ : J_ * Tb_), R(bwd ? 4 * N_ * J_ : 1) {}

  void load(const c10::complex<double>* xh, int64_t h_, bool bwd) {
    h = h_;
    for (int64_t n = 0; n < N; ++n) {
      powers(xh[n].real(), xh[n].imag(), 1, Tb, qre.data() + n * Tb, qim.data() + n * Tb);
      powers(xh[n].real(), xh[n].imag(), Tb, J, pre.data() + n * J, pim.data() + n * J);
    }
    T* z = Z.get();
    if (!bwd) {  // Z (2N x T) row-major
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < Tb; ++i) {
          z[n * Tb + i] = flush<T>(qre[n * Tb + i]);
          z[(N + n) * Tb + i] = flush<T>(qim[n * Tb + i]);
        }
    } else {  // Zb (T x 4N) row-major: [Re Q, Im Q, i Re Q, i Im Q]
      for (int64_t i = 0; i < Tb; ++i)
        for (int64_t n = 0; n < N; ++n) {
          const double re = qre[n * Tb + i], im = qim[n * Tb + i], di = static_cast<double>(i);
          z[i * 4 * N + n] = flush<T>(re);
          z[i * 4 * N + N + n] = flush<T>(im);
          z[i * 4 * N + 2 * N + n] = flush<T>(re * di);
          z[i * 4 * N + 3 * N + n] = flush<T>(im * di);
        }
    }
  }

  // out[0 .. J T) = 2 Re sum_n v_n exp(x_n l)
  void kernel_row(const c10::complex<double>* vh, T* out) {
    T* w = W.get();  // (J x 2N) row-major
    for (int64_t n = 0; n < N; ++n) {
      const double vr = vh[n].real(), vi = vh[n].imag();
      for (int64_t j = 0; j < J; ++j) {
        const double a = pre[n * J + j], b = pim[n * J + j];
        w[j * 2 * N + n] = flush<T>(2.0 * (vr * a - vi * b));
        w[j * 2 * N + N + n] = flush<T>(-2.0 * (vr * b + vi * a));
      }
    }
    small_gemm<T>(Tb, J, 2 * N, Z.get(), Tb, w, 2 * N, out, Tb);
  }

  // G (J T, zero beyond L) = dK row: dv = 2 conj(S0), dx += 2 conj(v S1)
  void backward_row(const c10::complex<double>* vh, c10::complex<double>* dvh, c10::complex<double>* dxh) {
    T* r = R.get();  // (J x 4N) row-major
    small_gemm<T>(4 * N, J, Tb, Z.get(), 4 * N, G.get(), Tb, r, 4 * N);
    for (int64_t n = 0; n < N; ++n) {
      double s0r = 0, s0i = 0, s1r = 0, s1i = 0;
      for (int64_t j = 0; j < J; ++j) {
        const double a = pre[n * J + j], b = pim[n * J + j], jT = static_cast<double>(j * Tb);
        const double mr = r[j * 4 * N + n], mi = r[j * 4 * N + N + n];
        const double qr = jT * mr + r[j * 4 * N + 2 * N + n], qi = jT * mi + r[j * 4 * N + 3 * N + n];
        s0r += a * mr - b * mi;
        s0i += a * mi + b * mr;
        s1r += a * qr - b * qi;
        s1i += a * qi + b * qr;
      }
      if (dvh) dvh[n] = c10::complex<double>(2.0 * s0r, -2.0 * s0i);
      if (dxh) {
        const double vr = vh[n].real(), vi = vh[n].imag();
        dxh[n] += c10::complex<double>(2.0 * (vr * s1r - vi * s1i), -2.0 * (vr * s1i + vi * s1r));
      }
    }
  }
};

// kf[c, h] = rfft(circular(K[c, 0, h], K[c, 1, h])) / n for every c of channel h (tab loaded for h), at
// out + c * ostride, with K generated into the FFT buffer rr (max(n, J T) entries)
template <typename T>
bool vdm_channel_spectrum(RealFft<T>& fft, VdmChannel<T>& tab, T* rr, const c10::complex<double>* vp, int64_t C,
                          int64_t S, int64_t H, int64_t L, int64_t n, int64_t h, cplx<T>* out, int64_t ostride) {
  const int64_t F = n / 2 + 1, N = tab.N;
  const T scale = T(1) / static_cast<T>(n);
  bool ok = true;
  for (int64_t c = 0; c < C; ++c) {
    tab.kernel_row(vp + ((c * S) * H + h) * N, rr);  // J T >= L entries
    std::fill(rr + L, rr + n, T(0));
    if (S == 2) {
      T* k1 = tab.G.get();
      tab.kernel_row(vp + ((c * S + 1) * H + h) * N, k1);
      for (int64_t l = 0; l + 1 < L; ++l) rr[n - 1 - l] = k1[l];
    }
    cplx<T>* o = out + c * ostride;
    if (!fft.forward(rr, o)) ok = false;
    for (int64_t f = 0; f < F; ++f) o[f] *= scale;
  }
  return ok;
}

// The fused forward, one pass over the channels: per h the C kernel spectra are generated (into kf when kfp,
// else into per-thread scratch) and, still in cache, multiplied into the B rows of u (conv_channel_fwd).
template <typename T>
bool ssm_conv_fwd_direct(const c10::complex<double>* vp, const c10::complex<double>* xp, const T* up, const T* dp,
                         T* yp, cplx<T>* kfp, cplx<T>* ufp, int64_t B, int64_t C, int64_t S, int64_t H, int64_t N,
                         int64_t L, int64_t n) {
  const int64_t F = n / 2 + 1;
  const auto blk = choose_blocking(L);
  std::atomic<bool> ok{true};
#pragma omp parallel if ((B + 1) * C * H * n > kParallelMin)
  {
    const mkl_packed::OneMklThread one_mkl_thread;  // the Vandermonde GEMMs are per channel: one MKL thread
    RealFft<T> fft(n);
    Buf<T> r(std::max(n, blk.J * blk.T));
    Buf<cplx<T>> s(F), t(F), kh(kfp ? 1 : C * F);
    VdmChannel<T> tab(N, blk.T, blk.J, false);
    if (!fft.ok()) ok = false;
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      if (!ok) continue;
      tab.load(xp + h * N, h, false);
      cplx<T>* k = kfp ? kfp + h * F : kh.get();
      const int64_t ks = kfp ? H * F : F;
      if (!vdm_channel_spectrum<T>(fft, tab, r.get(), vp, C, S, H, L, n, h, k, ks)) ok = false;
      if (!ok) continue;
      if (!conv_channel_fwd<T>(fft, r.get(), s.get(), t.get(), up, k, ks, dp, yp, ufp, B, C, H, L, n, h)) ok = false;
    }
  }
  return ok;
}

// the Vandermonde backward as the FFT backward's dK sink (per thread, per channel h)
template <typename T>
struct VdmSink {
  const c10::complex<double>* vp;
  const c10::complex<double>* xp;
  c10::complex<double>* dvp;  // (C, S, H, N) or null
  c10::complex<double>* dxp;  // (H, N) or null, zeroed
  int64_t S, H, N, L, n;
  Blocking blk;
  VdmChannel<T> make_scratch() const { return VdmChannel<T>(N, blk.T, blk.J, true); }
  void operator()(VdmChannel<T>& tab, int64_t c, int64_t h, const T* full) const {
    if (tab.h != h) tab.load(xp + h * N, h, true);
    T* g = tab.G.get();
    const int64_t JT = blk.J * blk.T;
    for (int64_t s = 0; s < S; ++s) {
      if (s == 0) {
        std::copy(full, full + L, g);
      } else {
        for (int64_t l = 0; l + 1 < L; ++l) g[l] = full[n - 1 - l];
        g[L - 1] = T(0);
      }
      std::fill(g + L, g + JT, T(0));
      const int64_t row = (c * S + s) * H + h;
      tab.backward_row(vp + row * N, dvp ? dvp + row * N : nullptr, dxp ? dxp + h * N : nullptr);
    }
  }
};

void check_ssm_conv_args(const at::Tensor& u, const at::Tensor& v, const at::Tensor& x) {
  TORCH_CHECK(u.dim() == 3 && v.dim() == 4 && x.dim() == 2 && v.size(2) == u.size(1) && x.size(0) == u.size(1) &&
                  v.size(3) == x.size(1) && (v.size(1) == 1 || v.size(1) == 2),
              "ssm_conv: expected u (B, H, L), v (C, S, H, N), x (H, N), got ", u.sizes(), ", ", v.sizes(), ", ",
              x.sizes());
  TORCH_CHECK(v.is_complex() && x.is_complex(), "ssm_conv: v and x must be complex");
}

// the fused forward: (y, kf (empty unless keep_kf), uf (empty unless save_uf)) into y, kf, uf
template <typename T>
void ssm_conv_fwd_impl(const at::Tensor& uc, const at::Tensor& vd, const at::Tensor& xd, const at::Tensor& Dc,
                       at::Tensor& y, at::Tensor& kf, at::Tensor& uf, bool save_uf, bool keep_kf, int64_t n) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2);
  const int64_t C = vd.size(0), S = vd.size(1), N = vd.size(3), F = n / 2 + 1;
  const auto copt = uc.options().dtype(c10::toComplexType(uc.scalar_type()));
  if (use_direct() && N > 0) {
    kf = keep_kf ? at::empty({C, H, F}, copt) : at::empty({0}, copt);
    uf = save_uf ? at::empty({B, H, F}, copt) : at::empty({0}, copt);
    if (ssm_conv_fwd_direct<T>(vd.data_ptr<c10::complex<double>>(), xd.data_ptr<c10::complex<double>>(), rptr<T>(uc),
                               Dc.defined() ? rptr<T>(Dc) : nullptr, rptr<T>(y),
                               keep_kf ? rptr<cplx<T>>(kf) : nullptr, save_uf ? rptr<cplx<T>>(uf) : nullptr, B, C, S,
                               H, N, L, n))
      return;
  }
  // batched fallback (and N = 0): K as a tensor, its spectrum, the convolution
  at::Tensor K = vandermonde_fwd_impl<T>(vd.view({C * S, H, N}), xd, L).view({C, S, H, L});
  kf = spectrum_batched(K, L, n);
  uf = at::empty({0}, copt);
  conv_fwd<T>(uc, kf, Dc, y, uf, save_uf, n);
  if (!keep_kf) kf = at::empty({0}, copt);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ssm_conv_fwd_cpu(const at::Tensor& u, const at::Tensor& v,
                                                                const at::Tensor& x,
                                                                const c10::optional<at::Tensor>& D, bool save_uf,
                                                                bool keep_kf) {
  check_ssm_conv_args(u, v, x);
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), C = v.size(0), n = fft_size(L), F = n / 2 + 1;
  const auto cdt = compute_dtype(u);
  const auto cplxt = c10::toComplexType(cdt);
  const auto copt = u.options().dtype(cplxt);
  if (B == 0 || H == 0 || L == 0 || C == 0)
    return {at::zeros({B, C, H, L}, u.options()), keep_kf ? at::zeros({C, H, F}, copt) : at::empty({0}, copt),
            save_uf ? at::zeros({B, H, F}, copt) : at::empty({0}, copt)};
  at::Tensor vd = v.to(at::kComplexDouble).contiguous(), xd = x.to(at::kComplexDouble).contiguous();
  at::Tensor uc = u.to(cdt).contiguous();
  at::Tensor Dc;
  if (D.has_value() && D->defined()) Dc = D->to(cdt).contiguous().view({C, H});
  at::Tensor y = at::empty({B, C, H, L}, uc.options()), uf, kf;
  if (cdt == at::kDouble)
    ssm_conv_fwd_impl<double>(uc, vd, xd, Dc, y, kf, uf, save_uf, keep_kf, n);
  else
    ssm_conv_fwd_impl<float>(uc, vd, xd, Dc, y, kf, uf, save_uf, keep_kf, n);
  if (u.scalar_type() != cdt) y = y.to(u.scalar_type());
  return {y, kf, uf};
}

namespace {
template <typename T>
void ssm_conv_bwd_impl(const at::Tensor& gc, const at::Tensor& uc, const at::Tensor& uf, const at::Tensor& kf,
                       const at::Tensor& vd, const at::Tensor& xd, const at::Tensor& Dc, int64_t mask, at::Tensor& du,
                       at::Tensor& dv, at::Tensor& dx, at::Tensor& dD) {
  const int64_t H = uc.size(1), L = uc.size(2), C = vd.size(0), S = vd.size(1), N = vd.size(3), n = fft_size(L);
  const bool want_du = mask & 1, want_dv = mask & 2, want_dx = mask & 4, want_dD = (mask & 8) && Dc.defined();
  const bool want_dk = (want_dv || want_dx) && N > 0;
  at::Tensor duc = want_du ? (du.scalar_type() == uc.scalar_type() ? du : at::empty(du.sizes(), uc.options()))
                           : at::Tensor();
  at::Tensor dDd = want_dD ? at::empty({C, H}, uc.options().dtype(at::kDouble)) : at::Tensor();
  at::Tensor dvd = want_dv ? at::zeros({C, S, H, N}, vd.options()) : at::Tensor();
  at::Tensor dxd = want_dx ? at::zeros({H, N}, vd.options()) : at::Tensor();
  VdmSink<T> sink{vd.data_ptr<c10::complex<double>>(), xd.data_ptr<c10::complex<double>>(),
                  want_dv ? dvd.data_ptr<c10::complex<double>>() : nullptr,
                  want_dx ? dxd.data_ptr<c10::complex<double>>() : nullptr, S, H, N, L, n, choose_blocking(L)};
  bool done = false;
  at::Tensor full = conv_bwd<T>(gc, uc, uf, kf, Dc, want_du ? &duc : nullptr,
                                want_dD ? dDd.data_ptr<double>() : nullptr, want_dk, n, sink, &done);
  if (want_dk && !done) {  // batched fallback: dK as a tensor, then the batched Vandermonde backward
    at::Tensor dk = at::empty({C, S, H, L}, uc.options());
    DkTensorSink<T> ts{rptr<T>(dk), S, H, L, n};
    const T* fp = rptr<T>(full);
    NoScratch ns;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) ts(ns, c, h, fp + (c * H + h) * n);
    auto res = vandermonde_bwd_impl<T>(dk.view({C * S, H, L}), vd.view({C * S, H, N}), xd,
                                       (want_dv ? 1 : 0) | (want_dx ? 2 : 0));
    if (want_dv) dvd = std::get<0>(res).view({C, S, H, N});
    if (want_dx) dxd = std::get<1>(res);
  }
  if (want_du && !duc.is_same(du)) du.copy_(duc);
  if (want_dv) dv.copy_(dvd);
  if (want_dx) dx.copy_(dxd);
  if (want_dD) dD.copy_(dDd.view(dD.sizes()));
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssm_conv_bwd_cpu(
    const at::Tensor& g, const at::Tensor& u, const at::Tensor& uf_saved, const at::Tensor& kf, const at::Tensor& v,
    const at::Tensor& x, const c10::optional<at::Tensor>& D, int64_t mask) {
  check_ssm_conv_args(u, v, x);
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), C = v.size(0), n = fft_size(L), F = n / 2 + 1;
  TORCH_CHECK(g.dim() == 4 && g.size(0) == B && g.size(1) == C && g.size(2) == H && g.size(3) == L,
              "ssm_conv backward: grad must be (B, C, H, L), got ", g.sizes());
  const bool has_D = D.has_value() && D->defined();
  const auto cdt = compute_dtype(u);
  const bool degenerate = B == 0 || H == 0 || L == 0 || C == 0;
  at::Tensor du = input_grad(mask & 1, degenerate, u);
  at::Tensor dv = (mask & 2) ? at::zeros(v.sizes(), v.options()) : at::empty({0}, v.options());
  at::Tensor dx = (mask & 4) ? at::zeros(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor dD = ((mask & 8) && has_D) ? at::zeros(D->sizes(), D->options()) : at::empty({0}, u.options());
  if (degenerate || mask == 0) return {du, dv, dx, dD};
  TORCH_CHECK(kf.dim() == 3 && kf.size(0) == C && kf.size(1) == H && kf.size(2) == F,
              "ssm_conv backward: kf must be (C, H, n/2+1) from the forward");
  TORCH_CHECK(uf_saved.numel() == 0 || uf_saved.size(-1) == F, "ssm_conv backward: saved spectrum has the wrong length");
  at::Tensor gc = g.to(cdt).contiguous(), uc = u.to(cdt).contiguous(), kfc = kf.contiguous();
  at::Tensor vd = v.to(at::kComplexDouble).contiguous(), xd = x.to(at::kComplexDouble).contiguous();
  at::Tensor Dc;
  if (has_D) Dc = D->to(cdt).contiguous().view({C, H});
  at::Tensor uf = uf_saved.numel() ? uf_saved.contiguous() : uf_saved;
  if (cdt == at::kDouble)
    ssm_conv_bwd_impl<double>(gc, uc, uf, kfc, vd, xd, Dc, mask, du, dv, dx, dD);
  else
    ssm_conv_bwd_impl<float>(gc, uc, uf, kfc, vd, xd, Dc, mask, du, dv, dx, dD);
  return {du, dv, dx, dD};
}

}  // namespace cpu
}  // namespace geoops
