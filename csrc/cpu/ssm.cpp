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
// FFT convolution  y = irfft(rfft(u, 2L) * rfft(k, 2L))[:L] + D u  (any L): ATen's real FFT
// (pocketfft / MKL); the spectral product, the channel / batch sums of the backward (before the
// inverse FFT), the truncation and the skip term are fused loops.
#include "cpu/ssm.h"

#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
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
// multiplications by exp(x * step) in between.
void powers(double a, double b, int64_t step, int64_t count, double* re, double* im) {
  const double sa = a * static_cast<double>(step), sb = b * static_cast<double>(step);
  const double ea = std::exp(sa);
  const double rr = ea * std::cos(sb), ri = ea * std::sin(sb);
  for (int64_t k0 = 0; k0 < count; k0 += kAnchor) {
    const double m = static_cast<double>(k0 * step);
    const double pa = a * m;
    double cr, ci;
    if (pa < -745.0) {
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

// ---------------------------------------------------------------- FFT convolution
namespace {

// Spectrum of the length-2L circular kernel: k (C, S, H, L) -> (C, H, L+1) complex.
at::Tensor kernel_spectrum(const at::Tensor& k, int64_t L, at::ScalarType cdt) {
  const int64_t C = k.size(0), S = k.size(1), H = k.size(2);
  at::Tensor kc = k.to(cdt);
  if (S == 1) return at::fft_rfft(kc.select(1, 0), 2 * L, -1);
  // bidirectional: k0 on [0, L), flip(k1) on [L, 2L)
  at::Tensor buf = at::empty({C, H, 2 * L}, kc.options());
  buf.narrow(2, 0, L).copy_(kc.select(1, 0));
  buf.narrow(2, L, L).copy_(kc.select(1, 1).flip({-1}));
  return at::fft_rfft(buf, 2 * L, -1);
}

// out[b, c, h, f] = uf[b, h, f] * kf[c, h, f]   (complex as interleaved pairs; out may alias uf when C = 1)
template <typename T>
void spectral_product(const T* up, const T* kp, T* op, int64_t B, int64_t C, int64_t H, int64_t F) {
#pragma omp parallel for collapse(2) schedule(static) if (B * H * C * F > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const T* ur = up + 2 * (b * H + h) * F;
      for (int64_t c = 0; c < C; ++c) {
        const T* kr = kp + 2 * (c * H + h) * F;
        T* o = op + 2 * ((b * C + c) * H + h) * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          const T a = ur[2 * f], bb = ur[2 * f + 1], cr = kr[2 * f], ci = kr[2 * f + 1];
          o[2 * f] = a * cr - bb * ci;
          o[2 * f + 1] = a * ci + bb * cr;
        }
      }
    }
}

// y[b, c, h, t] = full[b, c, h, t] (t < L of 2L) + D[c, h] u[b, h, t]
template <typename T>
void truncate_skip(const T* full, const T* up, const T* dp, T* yp, int64_t B, int64_t C, int64_t H, int64_t L) {
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * L > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < C * H; ++ch) {
      const int64_t h = ch % H;
      const T* src = full + (b * C * H + ch) * 2 * L;
      T* dst = yp + (b * C * H + ch) * L;
      if (dp) {
        const T d = dp[ch];
        const T* ur = up + (b * H + h) * L;
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) dst[t] = src[t] + d * ur[t];
      } else {
        std::copy(src, src + L, dst);
      }
    }
}

// acc[o, h, f] = sum_s conj(a[s-th, h, f]) * g[...]: the two channel/batch sums of the backward.
//   du: o = b, s = c: conj(kf[c, h]) * gf[b, c, h]     dk: o = c, s = b: conj(uf[b, h]) * gf[b, c, h]
template <typename T>
void conj_product_sum(const T* ap, const T* gp, T* accp, int64_t B, int64_t C, int64_t H, int64_t F, bool over_c) {
  const int64_t O = over_c ? B : C, Sn = over_c ? C : B;
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * F > kParallelMin)
  for (int64_t o = 0; o < O; ++o)
    for (int64_t h = 0; h < H; ++h) {
      T* acc = accp + 2 * (o * H + h) * F;
      for (int64_t s = 0; s < Sn; ++s) {
        const int64_t b = over_c ? o : s, c = over_c ? s : o;
        const T* gr = gp + 2 * ((b * C + c) * H + h) * F;
        const T* ar = over_c ? ap + 2 * (c * H + h) * F : ap + 2 * (b * H + h) * F;
        if (s == 0) {
#pragma omp simd
          for (int64_t f = 0; f < F; ++f) {
            acc[2 * f] = ar[2 * f] * gr[2 * f] + ar[2 * f + 1] * gr[2 * f + 1];
            acc[2 * f + 1] = ar[2 * f] * gr[2 * f + 1] - ar[2 * f + 1] * gr[2 * f];
          }
        } else {
#pragma omp simd
          for (int64_t f = 0; f < F; ++f) {
            acc[2 * f] += ar[2 * f] * gr[2 * f] + ar[2 * f + 1] * gr[2 * f + 1];
            acc[2 * f + 1] += ar[2 * f] * gr[2 * f + 1] - ar[2 * f + 1] * gr[2 * f];
          }
        }
      }
    }
}

// du[b, h, t] = full[b, h, t] + sum_c D[c, h] g[b, c, h, t]
template <typename T>
void du_finish(const T* full, const T* dp, const T* gp, T* op, int64_t B, int64_t C, int64_t H, int64_t L) {
#pragma omp parallel for collapse(2) schedule(static) if (B * C * H * L > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const T* src = full + (b * H + h) * 2 * L;
      T* dst = op + (b * H + h) * L;
      std::copy(src, src + L, dst);
      if (dp)
        for (int64_t c = 0; c < C; ++c) {
          const T d = dp[c * H + h];
          const T* gr = gp + ((b * C + c) * H + h) * L;
#pragma omp simd
          for (int64_t t = 0; t < L; ++t) dst[t] += d * gr[t];
        }
    }
}

// dD[c, h] = sum_{b, t} g[b, c, h, t] u[b, h, t], accumulated in double
template <typename T>
void dD_sum(const T* gp, const T* up, double* accp, int64_t B, int64_t C, int64_t H, int64_t L) {
#pragma omp parallel for schedule(static) if (B * C * H * L > kParallelMin)
  for (int64_t ch = 0; ch < C * H; ++ch) {
    const int64_t c = ch / H, h = ch % H;
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const T* gr = gp + ((b * C + c) * H + h) * L;
      const T* ur = up + (b * H + h) * L;
      double part = 0.0;
#pragma omp simd reduction(+ : part)
      for (int64_t t = 0; t < L; ++t) part += static_cast<double>(gr[t]) * static_cast<double>(ur[t]);
      s += part;
    }
    accp[ch] = s;
  }
}

template <typename T>
T* rptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fftconv_fwd_cpu(const at::Tensor& u, const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& D, bool save_uf) {
  TORCH_CHECK(u.dim() == 3 && k.dim() == 4 && k.size(2) == u.size(1) && k.size(3) == u.size(2) &&
                  (k.size(1) == 1 || k.size(1) == 2),
              "fftconv: expected u (B, H, L) and k (C, S, H, L), got ", u.sizes(), " and ", k.sizes());
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), C = k.size(0);
  const auto cdt = (u.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const auto cplx = c10::toComplexType(cdt);
  if (B == 0 || H == 0 || L == 0 || C == 0)
    return {at::zeros({B, C, H, L}, u.options()),
            save_uf ? at::zeros({B, H, L + 1}, u.options().dtype(cplx)) : at::empty({0}, u.options().dtype(cplx))};
  at::Tensor uc = u.to(cdt).contiguous();
  at::Tensor uf = at::fft_rfft(uc, 2 * L, -1).contiguous();  // (B, H, L+1)
  at::Tensor kf = kernel_spectrum(k, L, cdt).contiguous();   // (C, H, L+1)
  // the product overwrites rfft(u) when nobody keeps it and there is one output channel (no fresh pages)
  at::Tensor prod = (!save_uf && C == 1) ? uf.view({B, 1, H, L + 1}) : at::empty({B, C, H, L + 1}, uf.options());
  at::Tensor Dc;
  if (D.has_value() && D->defined()) Dc = D->to(cdt).contiguous().view({C, H});
  at::Tensor y = at::empty({B, C, H, L}, uc.options());
  if (cdt == at::kDouble) {
    spectral_product<double>(rptr<double>(uf), rptr<double>(kf), rptr<double>(prod), B, C, H, L + 1);
    at::Tensor full = at::fft_irfft(prod, 2 * L, -1).contiguous();
    prod = at::Tensor();
    truncate_skip<double>(rptr<double>(full), rptr<double>(uc), Dc.defined() ? rptr<double>(Dc) : nullptr,
                          rptr<double>(y), B, C, H, L);
  } else {
    spectral_product<float>(rptr<float>(uf), rptr<float>(kf), rptr<float>(prod), B, C, H, L + 1);
    at::Tensor full = at::fft_irfft(prod, 2 * L, -1).contiguous();
    prod = at::Tensor();
    truncate_skip<float>(rptr<float>(full), rptr<float>(uc), Dc.defined() ? rptr<float>(Dc) : nullptr,
                         rptr<float>(y), B, C, H, L);
  }
  if (u.scalar_type() != cdt) y = y.to(u.scalar_type());
  return {y, save_uf ? uf : at::empty({0}, u.options().dtype(cplx))};
}

namespace {
template <typename T>
void fftconv_bwd_impl(const at::Tensor& gc, const at::Tensor& uc, const at::Tensor& uf_saved, const at::Tensor& k,
                      const at::Tensor& Dc, bool want_du, bool want_dk, bool want_dD, at::Tensor& du, at::Tensor& dk,
                      at::Tensor& dD) {
  const int64_t B = uc.size(0), H = uc.size(1), L = uc.size(2), C = k.size(0), S = k.size(1), F = L + 1;
  const auto cdt = uc.scalar_type();
  at::Tensor gf;
  if (want_du || want_dk) gf = at::fft_rfft(gc, 2 * L, -1).contiguous();  // (B, C, H, L+1)
  if (want_du) {
    at::Tensor kf = kernel_spectrum(k, L, cdt).contiguous();
    at::Tensor acc = at::empty({B, H, F}, gf.options());
    conj_product_sum<T>(rptr<T>(kf), rptr<T>(gf), rptr<T>(acc), B, C, H, F, /*over_c=*/true);
    at::Tensor full = at::fft_irfft(acc, 2 * L, -1).contiguous();  // (B, H, 2L)
    at::Tensor out = du.scalar_type() == cdt ? du : at::empty({B, H, L}, uc.options());
    du_finish<T>(rptr<T>(full), Dc.defined() ? rptr<T>(Dc) : nullptr, rptr<T>(gc), rptr<T>(out), B, C, H, L);
    if (du.scalar_type() != cdt) du.copy_(out);
  }
  if (want_dk) {
    at::Tensor uf = uf_saved.numel() ? uf_saved.contiguous() : at::fft_rfft(uc, 2 * L, -1).contiguous();
    at::Tensor acc = at::empty({C, H, F}, gf.options());
    // summed over the batch before the inverse FFT
    conj_product_sum<T>(rptr<T>(uf), rptr<T>(gf), rptr<T>(acc), B, C, H, F, /*over_c=*/false);
    at::Tensor full = at::fft_irfft(acc, 2 * L, -1);  // (C, H, 2L): the circular cross-correlation
    dk.select(1, 0).copy_(full.narrow(2, 0, L));
    if (S == 2) dk.select(1, 1).copy_(full.narrow(2, L, L).flip({-1}));
  }
  if (want_dD) {
    at::Tensor acc = at::empty({C, H}, gc.options().dtype(at::kDouble));
    dD_sum<T>(rptr<T>(gc), rptr<T>(uc), rptr<double>(acc), B, C, H, L);
    dD.copy_(acc.view(dD.sizes()));
  }
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
  const auto cdt = (u.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  at::Tensor du = want_du ? at::zeros({B, H, L}, u.options()) : at::empty({0}, u.options());
  at::Tensor dk = want_dk ? at::zeros({C, S, H, L}, k.options()) : at::empty({0}, k.options());
  at::Tensor dD = want_dD ? at::zeros(D->sizes(), D->options()) : at::empty({0}, u.options());
  if (B == 0 || H == 0 || L == 0 || C == 0 || !(want_du || want_dk || want_dD)) return {du, dk, dD};
  at::Tensor gc = g.to(cdt).contiguous();
  at::Tensor uc = u.to(cdt).contiguous();
  at::Tensor Dc;
  if (has_D) Dc = D->to(cdt).contiguous().view({C, H});
  if (cdt == at::kDouble)
    fftconv_bwd_impl<double>(gc, uc, uf_saved, k, Dc, want_du, want_dk, want_dD, du, dk, dD);
  else
    fftconv_bwd_impl<float>(gc, uc, uf_saved, k, Dc, want_du, want_dk, want_dD, du, dk, dD);
  return {du, dk, dD};
}

}  // namespace cpu
}  // namespace geoops
