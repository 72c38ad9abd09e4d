// Pairwise kappa-stereographic distance on the CPU: one GEMM (<x_i, y_j>) + row norms + fused epilogue.
//
// With A = |x - y|^2, p_x = 1 + k|x|^2, p_y = 1 + k|y|^2 and den = p_x p_y - k A
// (= 1 + 2k<x,y> + k^2|x|^2|y|^2, the denominator of |(-x) (+)_k y|^2 = A / den):
//
//   k < 0 (c = -k):  d = arcosh(1 + t)/sqrt(c) = log1p(t + sqrt(t (t + 2)))/sqrt(c),  t = 2cA/(p_x p_y)
//   k > 0:           d = 2 atan2(sqrt(kA), sqrt(den))/sqrt(k)
//   k = 0:           d = 2 sqrt(A)
//
// (d = 2 s atanc(k s^2) with s^2 = A/den, and 1 + k s^2 = p_x p_y / den.)  Only <x, y> is pairwise: it
// comes from one GEMM (at::bmm, MKL on x86).  A = |x|^2 + |y|^2 - 2<x,y> cancels for close pairs: a
// pair with A < tau (|x|^2 + |y|^2) is recomputed from the rows (sum of (x - y)^2 in double), with tau
// sized so that the GEMM's rounding cannot cost more than ~1e-3 of the distance (x vs itself gives 0).
//
// Backward (d as a function of A, |x|^2, |y|^2, k; s = sqrt(A/den)):
//   dd/dA = 1/(s den),  dd/d|x|^2 = -k s/p_x,  dd/d|y|^2 = -k s/p_y,
//   dd/dk = s^3 E(z) + (s/(p_x p_y)) (A - |x|^2 p_y - |y|^2 p_x),  z = k s^2,
//   E(z) = 2 atanc'(z) = (1/(1+z) - atanc(z))/z  (Taylor series for |z| < 1e-3),
// so with W_ij = 2 g_ij dd/dA:  dx = alpha * x - W y,  dy = beta * y - W^T x  (two GEMMs), alpha_i =
// sum_j W_ij + 2 g_ij dd/d|x|^2, beta_j likewise.  Close pairs are taken out of the GEMMs and added
// exactly as W_ij (x_i - y_j), so no [N, M, D] tensor is ever formed.
//
// Points outside the ball (k < 0, p <= 0) are treated as geoopt treats them after its clamps: p is
// clamped at a small positive value, which gives large but finite distances and bounded gradients.
//
// Epilogues run on at::vec vectors (SLEEF log1p/atan2 on AVX2/AVX-512) over rows spread with
// at::parallel_for.  The ISA comes from geoops/cpu_capability.h, included first.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "stereographic_pairwise.h"
#include "row_norms.h"  // row_sqnorms (shared with poincare.cpp)

#include "geoops/stereo_math.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

namespace geoops {
namespace cpu {

namespace {

template <typename T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() * 0.5;
}

// Relative threshold on A/(|x|^2+|y|^2) under which a pair is recomputed from its rows: the GEMM's
// error on <x,y> is at most ~D u |x||y|, so A keeps ~1e-3 relative accuracy (the distance twice that).
template <typename T>
double close_tau(int64_t D) {
  return std::min(0.5, 512.0 * unit_roundoff<T>() * double(D + 4));
}

// Smallest p_x p_y used (points on or outside the boundary of the ball): geoopt's artanh clamp 1 - 1e-7
// corresponds to 1 - c|x|^2 ~ 2e-7 in fp32.
template <typename T>
constexpr T min_p() {
  return std::is_same<T, float>::value ? T(1e-7) : T(1e-15);
}

template <typename T>
inline double exact_sq(const T* a, const T* b, int64_t D) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) {
    const double t = double(a[d]) - double(b[d]);
    s += t * t;
  }
  return s;
}

// Per-batch scalars of the curvature.
template <typename T>
struct Curv {
  int sign;      // -1, 0, 1
  T k, c, rs;    // k, |k|, 1/sqrt|k|
};

template <typename T>
Curv<T> curv(double kv) {
  Curv<T> cv;
  cv.sign = kv < 0 ? -1 : (kv > 0 ? 1 : 0);
  cv.k = T(kv);
  cv.c = T(std::abs(kv));
  cv.rs = cv.sign ? T(1.0 / std::sqrt(std::abs(kv))) : T(0);
  return cv;
}

// Fills A (the GEMM output G, overwritten in place) for one row: A = x2 + y2 - 2G, close pairs exact.
template <typename T>
inline void fill_A_row(T* G, const T* xi, const T* y, double x2, const double* y2, const T* y2f, int64_t M,
                       int64_t D, double tau) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  const Vec vx2{T(x2)}, two{T(2)}, vtau{T(tau)}, zero{T(0)};
  bool any_close = false;
  int64_t j = 0;
  for (; j + L <= M; j += L) {
    const Vec vy2 = Vec::loadu(y2f + j);
    const Vec sum = vx2 + vy2;
    Vec a = sum - two * Vec::loadu(G + j);
    const Vec close = a < vtau * sum;
    if (close.zero_mask() != (1 << L) - 1) any_close = true;
    a = at::vec::maximum(a, zero);
    a.store(G + j);
  }
  for (; j < M; ++j) {
    const double sum = x2 + y2[j];
    const double a = sum - 2.0 * double(G[j]);
    if (a < tau * sum) any_close = true;
    G[j] = T(std::max(a, 0.0));
  }
  if (any_close) {  // redo the test in double on the stored A; recompute the close pairs from the rows
    for (int64_t jj = 0; jj < M; ++jj) {
      if (double(G[jj]) < tau * (x2 + y2[jj])) G[jj] = T(exact_sq(xi, y + jj * D, D));
    }
  }
}

// Distances of one row from A (in place allowed: out may equal A only when A is not saved).
template <typename T>
inline void dist_row(const T* A, T* out, T px, const T* py, int64_t M, const Curv<T>& cv) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  int64_t j = 0;
  if (cv.sign < 0) {
    const Vec two_c(T(2) * cv.c), vpx(px), rs(cv.rs), two(T(2)), pmin(min_p<T>());
    auto f = [&](const Vec& a, const Vec& p) {
      const Vec P = at::vec::maximum(vpx * p, pmin);
      const Vec t = two_c * a / P;
      return (t + (t * (t + two)).sqrt()).log1p() * rs;
    };
    for (; j + L <= M; j += L) f(Vec::loadu(A + j), Vec::loadu(py + j)).store(out + j);
    if (j < M) {
      const int64_t m = M - j;
      f(Vec::loadu(A + j, m), Vec::loadu(py + j, m)).store(out + j, m);
    }
  } else if (cv.sign > 0) {
    const Vec vk(cv.k), vpx(px), two_rs(T(2) * cv.rs), zero(T(0));
    auto f = [&](const Vec& a, const Vec& p) {
      const Vec ka = vk * a;
      const Vec den = at::vec::maximum(vpx * p - ka, zero);
      return ka.sqrt().atan2(den.sqrt()) * two_rs;
    };
    for (; j + L <= M; j += L) f(Vec::loadu(A + j), Vec::loadu(py + j)).store(out + j);
    if (j < M) {
      const int64_t m = M - j;
      f(Vec::loadu(A + j, m), Vec::loadu(py + j, m)).store(out + j, m);
    }
  } else {
    const Vec two(T(2));
    for (; j + L <= M; j += L) (Vec::loadu(A + j).sqrt() * two).store(out + j);
    for (; j < M; ++j) out[j] = T(2) * std::sqrt(A[j]);
  }
}

struct Shapes {
  int64_t B, N, M, D;
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3, "cdist: x and y must be [B, N, D] and [B, M, D]");
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), "cdist: batch or feature sizes differ");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "cdist: x and y must have one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "cdist: float32/float64 only");
  TORCH_CHECK(k.dim() == 1 && k.size(0) == x.size(0), "cdist: k must be [B]");
  return {x.size(0), x.size(1), y.size(1), x.size(2)};
}

// Computes A (in G) for every batch; returns the row norms (double) and p vectors.
template <typename T>
void compute_A(const at::Tensor& x, const at::Tensor& y, at::Tensor& G, const Shapes& s,
               std::vector<double>& x2, std::vector<double>& y2) {
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  T* Gp = G.data_ptr<T>();
  x2.resize(s.B * s.N);
  y2.resize(s.B * s.M);
  row_sqnorms(xp, s.B * s.N, s.D, x2.data());
  row_sqnorms(yp, s.B * s.M, s.D, y2.data());
  std::vector<T> y2f(s.B * s.M);
  for (int64_t i = 0; i < s.B * s.M; ++i) y2f[i] = T(y2[i]);
  const double tau = close_tau<T>(s.D);
  for (int64_t b = 0; b < s.B; ++b) {
    const T* xb = xp + b * s.N * s.D;
    const T* yb = yp + b * s.M * s.D;
    T* Gb = Gp + b * s.N * s.M;
    const double* x2b = x2.data() + b * s.N;
    const double* y2b = y2.data() + b * s.M;
    const T* y2fb = y2f.data() + b * s.M;
    at::parallel_for(0, s.N, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        fill_A_row<T>(Gb + i * s.M, xb + i * s.D, yb, x2b[i], y2b, y2fb, s.M, s.D, tau);
    });
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> fwd_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k,
                                            bool save) {
  const Shapes s = check_inputs(x, y, k);
  at::Tensor G = at::bmm(x, y.transpose(1, 2));  // [B, N, M], contiguous
  if (s.N == 0 || s.M == 0) return {G, save ? G.clone() : x.new_empty({0})};
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  // |y|^2 serially (M D flops: cheaper than a parallel region on a busy machine); |x|^2 per row below
  std::vector<double> y2(s.B * s.M);
  for (int64_t j = 0; j < s.B * s.M; ++j) {
    const T* r = yp + j * s.D;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < s.D; ++d) acc += double(r[d]) * double(r[d]);
    y2[j] = acc;
  }
  std::vector<T> y2f(y2.begin(), y2.end());
  at::Tensor out = save ? at::empty_like(G) : G;
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  T* Ap = G.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const double tau = close_tau<T>(s.D);
  std::vector<T> py(s.B * s.M);
  for (int64_t b = 0; b < s.B; ++b) {
    const T pmin = kp[b] < 0 ? min_p<T>() : T(-1e30);  // points outside the ball: clamped p (see top)
    for (int64_t j = 0; j < s.M; ++j) py[b * s.M + j] = std::max(T(1.0 + kp[b] * y2[b * s.M + j]), pmin);
  }
  // one parallel region over all rows of all batches: A (close pairs exact), then the distances
  at::parallel_for(0, s.B * s.N, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / s.N;
      const T* xi = xp + r * s.D;
      double x2 = 0;
#pragma omp simd reduction(+ : x2)
      for (int64_t d = 0; d < s.D; ++d) x2 += double(xi[d]) * double(xi[d]);
      const int64_t off = r * s.M;
      fill_A_row<T>(Ap + off, xi, yp + b * s.M * s.D, x2, y2.data() + b * s.M, y2f.data() + b * s.M, s.M, s.D,
                    tau);
      const Curv<T> cv = curv<T>(kp[b]);
      const T pmin = kp[b] < 0 ? min_p<T>() : T(-1e30);
      const T px = std::max(T(1.0 + kp[b] * x2), pmin);
      dist_row<T>(Ap + off, op + off, px, py.data() + b * s.M, s.M, cv);
    }
  });
  return {out, save ? G : x.new_empty({0})};
}

// E(z) = (1/(1+z) - atanc(z))/z, Taylor series near 0: 2 * d/dz atanc.
template <typename T>
inline T E_series(T z) {
  return T(2) * (T(-1.0 / 3) + z * (T(2.0 / 5) + z * (T(-3.0 / 7) + z * (T(4.0 / 9) + z * (T(-5.0 / 11) + z * T(6.0 / 13))))));
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_impl(const at::Tensor& g_in, const at::Tensor& x,
                                                        const at::Tensor& y, const at::Tensor& k,
                                                        const at::Tensor& A, const at::Tensor& dist,
                                                        int64_t mask) {
  const Shapes s = check_inputs(x, y, k);
  const at::Tensor g = g_in.contiguous();
  const bool want_x = mask & 1, want_y = mask & 2, want_k = mask & 4;
  at::Tensor dk = want_k ? at::zeros({s.B}, k.options()) : x.new_empty({0});
  if (s.N == 0 || s.M == 0 || s.D == 0) {
    return {want_x ? at::zeros_like(x) : x.new_empty({0}), want_y ? at::zeros_like(y) : x.new_empty({0}), dk};
  }
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  const T* Ap = A.data_ptr<T>();
  const T* dp = dist.data_ptr<T>();
  std::vector<double> x2(s.B * s.N), y2(s.B * s.M);
  row_sqnorms(xp, s.B * s.N, s.D, x2.data());
  row_sqnorms(yp, s.B * s.M, s.D, y2.data());
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const double tau = close_tau<T>(s.D);

  at::Tensor W = at::empty({s.B, s.N, s.M}, x.options());
  T* Wp = W.data_ptr<T>();
  std::vector<double> alpha(s.B * s.N, 0.0), beta(s.B * s.M, 0.0), dkb(s.B, 0.0);
  struct Close {
    int64_t b, i, j;
    double w;
  };
  std::vector<Close> closes;
  std::mutex mu;
  const int nth = at::get_num_threads();
  std::vector<T> pyc(s.B * s.M), y2f(s.B * s.M);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t j = 0; j < s.M; ++j) {
      const T p = T(1.0 + kp[b] * y2[b * s.M + j]);
      pyc[b * s.M + j] = kp[b] < 0 ? std::max(p, min_p<T>()) : p;
      y2f[b * s.M + j] = T(y2[b * s.M + j]);
    }

  for (int64_t b = 0; b < s.B; ++b) {
    const double kv = kp[b];
    const T kT = T(kv);
    std::vector<T> py(s.M);
    for (int64_t j = 0; j < s.M; ++j) py[j] = T(1.0 + kv * y2[b * s.M + j]);
    // per-thread column sums (beta) and dk partials
    std::vector<std::vector<double>> beta_t(nth, std::vector<double>(s.M, 0.0));
    std::vector<double> dk_t(nth, 0.0);
    at::parallel_for(0, s.N, 16, [&](int64_t i0, int64_t i1) {
      const int tid = at::get_thread_num();
      std::vector<double>& bt = beta_t[tid];
      std::vector<Close> local;
      double dk_acc = 0.0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t off = (b * s.N + i) * s.M;
        const double x2i = x2[b * s.N + i];
        const T px = std::max(T(1.0 + kv * x2i), kv < 0 ? min_p<T>() : T(-1e30));
        double a_acc = 0.0;
        if (!want_k) {
          // branch-free, vectorisable: every pair computed, invalid ones (A = 0) masked to 0; close pairs
          // counted here and moved out of W in a second, scalar pass over the (rare) rows that have them
          const T* pyb = pyc.data() + b * s.M;
          const T* y2b = y2f.data() + b * s.M;
          const T tauT = T(tau), x2T = T(x2i), tiny = std::numeric_limits<T>::min();
          double* btp = bt.data();
          int64_t nclose = 0;
#pragma omp simd reduction(+ : a_acc, nclose)
          for (int64_t j = 0; j < s.M; ++j) {
            const T gij = gp[off + j];
            const T a = Ap[off + j];
            const bool valid = a > T(0);
            const T as = valid ? a : T(1);
            const T pyj = pyb[j];
            const T den = std::max(px * pyj - kT * as, tiny);
            const T sv = std::sqrt(as / den);
            const T gsv = T(-2) * kT * gij * sv;
            const T w = valid ? T(2) * gij / (sv * den) : T(0);
            const T ax = valid ? gsv / px : T(0);
            const T ay = valid ? gsv / pyj : T(0);
            const bool close = valid && a < tauT * (x2T + y2b[j]);
            nclose += close ? 1 : 0;
            Wp[off + j] = close ? T(0) : w;
            const T wk = close ? T(0) : w;
            a_acc += double(wk + ax);
            btp[j] += double(wk + ay);
          }
          if (nclose) {
            for (int64_t j = 0; j < s.M; ++j) {
              const T a = Ap[off + j];
              if (!(a > T(0)) || !(double(a) < tau * (x2i + y2[b * s.M + j])) || gp[off + j] == T(0)) continue;
              const T pyj = pyb[j];
              const T den = std::max(px * pyj - kT * a, tiny);
              const T sv = std::sqrt(a / den);
              local.push_back({b, i, j, double(T(2) * gp[off + j] / (sv * den))});
            }
          }
        } else
        for (int64_t j = 0; j < s.M; ++j) {
          const T gij = gp[off + j];
          const T a = Ap[off + j];
          T w = 0, ax = 0, ay = 0;
          if (gij != T(0) && a > T(0)) {
            const T pyj = kv < 0 ? std::max(py[j], min_p<T>()) : py[j];
            const T P = px * pyj;
            const T den = std::max(P - kT * a, std::numeric_limits<T>::min());
            const T sv = std::sqrt(a / den);
            const T fA = T(1) / (sv * den);
            w = T(2) * gij * fA;
            const T gs = T(-2) * kT * gij * sv;  // 2 g dd/d|x|^2 * p_x
            ax = gs / px;
            ay = gs / pyj;
            if (want_k) {
              const T z = kT * sv * sv;
              T e;
              if (std::abs(z) < T(1e-3)) {
                e = sv * sv * sv * E_series(z);
              } else {
                const T h = dp[off + j] / (T(2) * sv);  // atanc(z)
                e = (sv * den / P - h * sv) / kT;       // s^3 E(z)
              }
              const double x2d = x2i, y2d = y2[b * s.M + j];
              const T dkk = e + (sv / P) * T(double(a) - x2d * double(pyj) - y2d * double(px));
              dk_acc += double(gij) * double(dkk);
            }
            const double sum = x2i + y2[b * s.M + j];
            if (double(a) < tau * sum) {  // close pair: exact correction after the GEMMs
              local.push_back({b, i, j, double(w)});
              w = 0;
            }
          }
          Wp[off + j] = w;
          a_acc += double(w) + double(ax);
          bt[j] += double(w) + double(ay);
        }
        alpha[b * s.N + i] = a_acc;
      }
      dk_t[tid] += dk_acc;
      if (!local.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        closes.insert(closes.end(), local.begin(), local.end());
      }
    });
    for (int t = 0; t < nth; ++t) {
      for (int64_t j = 0; j < s.M; ++j) beta[b * s.M + j] += beta_t[t][j];
      dkb[b] += dk_t[t];
    }
  }

  at::Tensor dx = x.new_empty({0}), dy = x.new_empty({0});
  auto alpha_t = at::from_blob(alpha.data(), {s.B, s.N, 1}, at::kDouble).to(x.scalar_type());
  auto beta_t = at::from_blob(beta.data(), {s.B, s.M, 1}, at::kDouble).to(x.scalar_type());
  if (want_x) dx = alpha_t * x - at::bmm(W, y);
  if (want_y) dy = beta_t * y - at::bmm(W.transpose(1, 2), x);
  for (const Close& c : closes) {
    const T* xi = xp + (c.b * s.N + c.i) * s.D;
    const T* yj = yp + (c.b * s.M + c.j) * s.D;
    if (want_x) {
      T* o = dx.data_ptr<T>() + (c.b * s.N + c.i) * s.D;
      for (int64_t d = 0; d < s.D; ++d) o[d] += T(c.w * (double(xi[d]) - double(yj[d])));
    }
    if (want_y) {
      T* o = dy.data_ptr<T>() + (c.b * s.M + c.j) * s.D;
      for (int64_t d = 0; d < s.D; ++d) o[d] -= T(c.w * (double(xi[d]) - double(yj[d])));
    }
  }
  if (want_k) {
    auto dkd = at::from_blob(dkb.data(), {s.B}, at::kDouble).to(k.scalar_type());
    dk.copy_(dkd);
  }
  return {dx, dy, dk};
}

template <typename T>
at::Tensor key_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  const Shapes s = check_inputs(x, y, k);
  at::Tensor G = at::bmm(x, y.transpose(1, 2));
  if (s.N == 0 || s.M == 0) return G;
  std::vector<double> x2, y2;
  compute_A<T>(x, y, G, s, x2, y2);
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  T* Ap = G.data_ptr<T>();
  std::vector<T> py(s.M);
  for (int64_t b = 0; b < s.B; ++b) {
    const double kv = kp[b];
    if (kv == 0) continue;
    const T kT = T(kv);
    for (int64_t j = 0; j < s.M; ++j) {
      const T p = T(1.0 + kv * y2[b * s.M + j]);
      py[j] = kv < 0 ? std::max(p, min_p<T>()) : p;
    }
    at::parallel_for(0, s.N, 16, [&](int64_t i0, int64_t i1) {
      using Vec = at::vec::Vectorized<T>;
      constexpr int64_t L = Vec::size();
      for (int64_t i = i0; i < i1; ++i) {
        T* a = Ap + (b * s.N + i) * s.M;
        T px = T(1.0 + kv * x2[b * s.N + i]);
        if (kv < 0) px = std::max(px, min_p<T>());
        const Vec vpx(px), vk(kT), zero(T(0));
        int64_t j = 0;
        if (kv < 0) {
          for (; j + L <= s.M; j += L) (Vec::loadu(a + j) / (vpx * Vec::loadu(py.data() + j))).store(a + j);
          for (; j < s.M; ++j) a[j] = a[j] / (px * py[j]);
        } else {  // A/den; den -> 0 (antipode) gives +inf, the largest distance
          for (; j + L <= s.M; j += L) {
            const Vec av = Vec::loadu(a + j);
            const Vec den = at::vec::maximum(vpx * Vec::loadu(py.data() + j) - vk * av, zero);
            (av / den).store(a + j);
          }
          for (; j < s.M; ++j) a[j] = a[j] / std::max(px * py[j] - kT * a[j], T(0));
        }
      }
    });
  }
  return G;
}

template <typename T>
at::Tensor from_key_impl(const at::Tensor& key_in, const at::Tensor& k) {
  const at::Tensor key = key_in.contiguous();
  at::Tensor out = at::empty_like(key);
  const int64_t B = key.size(0), R = key.numel() / std::max<int64_t>(B, 1);
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const T* kk = key.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    const double kv = kp[b];
    at::parallel_for(0, R, 4096, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double v = double(kk[b * R + r]);
        double d;
        if (kv < 0) {
          const double c = -kv, t = 2 * c * v;
          d = std::log1p(t + std::sqrt(t * (t + 2))) / std::sqrt(c);
        } else if (kv > 0) {
          d = 2 * std::atan(std::sqrt(kv * v)) / std::sqrt(kv);
        } else {
          d = 2 * std::sqrt(v);
        }
        o[b * R + r] = T(d);
      }
    });
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cdist_fwd_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k,
                                                 bool save) {
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  if (xc.scalar_type() == at::kDouble) return fwd_impl<double>(xc, yc, k, save);
  return fwd_impl<float>(xc, yc, k, save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cdist_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                             const at::Tensor& y, const at::Tensor& k,
                                                             const at::Tensor& A, const at::Tensor& dist,
                                                             int64_t mask) {
  const at::Tensor xc = x.contiguous(), yc = y.contiguous(), Ac = A.contiguous(), dc = dist.contiguous();
  if (xc.scalar_type() == at::kDouble) return bwd_impl<double>(g, xc, yc, k, Ac, dc, mask);
  return bwd_impl<float>(g, xc, yc, k, Ac, dc, mask);
}

at::Tensor cdist_rank_key_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& k) {
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  if (xc.scalar_type() == at::kDouble) return key_impl<double>(xc, yc, k);
  return key_impl<float>(xc, yc, k);
}

at::Tensor dist_from_key_cpu(const at::Tensor& key, const at::Tensor& k) {
  if (key.scalar_type() == at::kDouble) return from_key_impl<double>(key, k);
  return from_key_impl<float>(key, k);
}


// ---------------------------------------------------------------- mobius_matvec / pointwise_mul epilogue
// out = v * phi,  phi = atanc(k|x|^2) tanc(k|v|^2 atanc(k|x|^2)^2)  (v = Mx or w*x), one pass per row.
// stats [R, 6] (double): |x|^2, |v|^2, a, a', b, b' for the backward.
namespace {

template <typename scalar_t>
void scale_fwd_kernel(const at::Tensor& v, const at::Tensor& x, at::Tensor& out, double* st, const double* kp,
                      bool per_row, int64_t R, int64_t Do, int64_t Di) {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* vr = vp + r * Do;
        const scalar_t* xr = xp + r * Di;
        double x2 = 0, v2 = 0;
#pragma omp simd reduction(+ : x2)
        for (int64_t d = 0; d < Di; ++d) x2 += double(xr[d]) * double(xr[d]);
#pragma omp simd reduction(+ : v2)
        for (int64_t d = 0; d < Do; ++d) v2 += double(vr[d]) * double(vr[d]);
        const double kk = per_row ? kp[r] : kp[0];
        const double z1 = kk * x2, q1 = 1.0 + z1;
        const double a = stereo::atanc(z1, q1), da = stereo::atanc_d(z1, q1, a);
        const double z2 = kk * v2 * a * a;
        const double b = stereo::tanc(z2), db = stereo::tanc_d(z2, b);
        const scalar_t phi = scalar_t(a * b);
        scalar_t* o = op + r * Do;
#pragma omp simd
        for (int64_t d = 0; d < Do; ++d) o[d] = vr[d] * phi;
        double* sr = st + r * 6;
        sr[0] = x2; sr[1] = v2; sr[2] = a; sr[3] = da; sr[4] = b; sr[5] = db;
      }
    });
}

template <typename scalar_t>
void scale_bwd_kernel(const at::Tensor& g, const at::Tensor& v, const at::Tensor& x, at::Tensor& gv, at::Tensor& gx,
                      at::Tensor& gk, const double* st, const double* kp, bool per_row, bool want_v, bool want_x,
                      bool want_k, int64_t R, int64_t Do, int64_t Di) {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gvp = want_v ? gv.data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = want_x ? gx.data_ptr<scalar_t>() : nullptr;
    double* gkp = want_k ? gk.data_ptr<double>() : nullptr;
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* vr = vp + r * Do;
        const scalar_t* gr = gp + r * Do;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < Do; ++d) s += double(gr[d]) * double(vr[d]);
        const double* sr = st + r * 6;
        const double x2 = sr[0], v2 = sr[1], a = sr[2], da = sr[3], b = sr[4], db = sr[5];
        const double kk = per_row ? kp[r] : kp[0];
        const double phi = a * b;
        if (want_v) {
          const scalar_t c0 = scalar_t(phi), c1 = scalar_t(2 * s * a * db * kk * a * a);
          scalar_t* o = gvp + r * Do;
#pragma omp simd
          for (int64_t d = 0; d < Do; ++d) o[d] = gr[d] * c0 + vr[d] * c1;
        }
        if (want_x) {
          const double phi_x2 = da * kk * b + a * db * kk * v2 * 2 * a * da * kk;
          const scalar_t c = scalar_t(2 * s * phi_x2);
          const scalar_t* xr = xp + r * Di;
          scalar_t* o = gxp + r * Di;
#pragma omp simd
          for (int64_t d = 0; d < Di; ++d) o[d] = xr[d] * c;
        }
        if (want_k) gkp[r] = s * (da * x2 * b + a * db * (v2 * a * a + kk * v2 * 2 * a * da * x2));
      }
    });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mobius_scale_fwd_cpu(const at::Tensor& v_in, const at::Tensor& x_in,
                                                        const at::Tensor& k) {
  const at::Tensor v = v_in.contiguous(), x = x_in.contiguous();
  TORCH_CHECK(v.dim() == 2 && x.dim() == 2 && v.size(0) == x.size(0), "mobius_scale: v [R, Do], x [R, Di]");
  const int64_t R = v.size(0), Do = v.size(1), Di = x.size(1);
  at::Tensor out = at::empty_like(v);
  at::Tensor stats = at::empty({R, 6}, v.options().dtype(at::kDouble));
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const bool per_row = kd.numel() == R && R != 1;
  double* st = stats.data_ptr<double>();
  if (v.scalar_type() == at::kDouble) scale_fwd_kernel<double>(v, x, out, st, kp, per_row, R, Do, Di);
  else scale_fwd_kernel<float>(v, x, out, st, kp, per_row, R, Do, Di);
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mobius_scale_bwd_cpu(const at::Tensor& g_in, const at::Tensor& v_in,
                                                                    const at::Tensor& x_in, const at::Tensor& k,
                                                                    const at::Tensor& stats_in, int64_t mask) {
  const at::Tensor g = g_in.contiguous(), v = v_in.contiguous(), x = x_in.contiguous(), stats = stats_in.contiguous();
  const int64_t R = v.size(0), Do = v.size(1), Di = x.size(1);
  const bool want_v = mask & 1, want_x = mask & 2, want_k = mask & 4;
  const at::Tensor kd = k.to(at::kDouble).contiguous();
  const double* kp = kd.data_ptr<double>();
  const bool per_row = kd.numel() == R && R != 1;
  at::Tensor gv = want_v ? at::empty_like(v) : v.new_empty({0});
  at::Tensor gx = want_x ? at::empty_like(x) : v.new_empty({0});
  at::Tensor gk = want_k ? at::empty({R}, v.options().dtype(at::kDouble)) : v.new_empty({0});
  const double* st = stats.data_ptr<double>();
  if (v.scalar_type() == at::kDouble)
    scale_bwd_kernel<double>(g, v, x, gv, gx, gk, st, kp, per_row, want_v, want_x, want_k, R, Do, Di);
  else
    scale_bwd_kernel<float>(g, v, x, gv, gx, gk, st, kp, per_row, want_v, want_x, want_k, R, Do, Di);
  return {gv, gx, gk};
}


// ---------------------------------------------------------------- knn: rank keys + per-row top n, fused
// For each row of x [N, D] the n points of y [M, D] with the smallest (largest) rank key (see
// cdist_rank_key_cpu), scanning y in tiles of `tile` columns: one GEMM per (row block, tile), then the keys
// and a per-row sorted buffer of n (a candidate enters only if it beats the current n-th).  Memory
// O(rows_per_block * tile + N n).  k is a scalar (double).  Returns (keys [N, n], indices [N, n] int64),
// sorted best first.
template <typename T>
std::tuple<at::Tensor, at::Tensor> knn_impl(const at::Tensor& x, const at::Tensor& y, double kv, int64_t n,
                                            bool largest, int64_t tile) {
  const int64_t N = x.size(0), M = y.size(0), D = x.size(1);
  at::Tensor keys = at::empty({N, n}, x.options());
  at::Tensor idx = at::empty({N, n}, x.options().dtype(at::kLong));
  if (N == 0 || n == 0) return {keys, idx};
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  std::vector<double> y2(M);
  for (int64_t j = 0; j < M; ++j) {
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += double(yp[j * D + d]) * double(yp[j * D + d]);
    y2[j] = acc;
  }
  const double tau = close_tau<T>(D);
  const T pmin = kv < 0 ? min_p<T>() : T(-1e30);
  std::vector<T> py(M);
  for (int64_t j = 0; j < M; ++j) py[j] = std::max(T(1.0 + kv * y2[j]), pmin);
  T* kp = keys.data_ptr<T>();
  int64_t* ip = idx.data_ptr<int64_t>();
  const T worst_init = largest ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < N * n; ++i) { kp[i] = worst_init; ip[i] = -1; }
  const int64_t RB = 256;  // rows per block
  const int64_t nblocks = (N + RB - 1) / RB;
  const T kT = T(kv);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> G;
    std::vector<double> x2(RB);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * RB, i1 = std::min(N, i0 + RB), nr = i1 - i0;
      for (int64_t r = 0; r < nr; ++r) {
        double acc = 0;
        const T* xi = xp + (i0 + r) * D;
        for (int64_t d = 0; d < D; ++d) acc += double(xi[d]) * double(xi[d]);
        x2[r] = acc;
      }
      for (int64_t j0 = 0; j0 < M; j0 += tile) {
        const int64_t j1 = std::min(M, j0 + tile), nc = j1 - j0;
        // single-threaded GEMM of this block (we are inside a parallel region)
        at::Tensor Gt = at::mm(x.narrow(0, i0, nr), y.narrow(0, j0, nc).t());
        const T* Gp = Gt.data_ptr<T>();
        for (int64_t r = 0; r < nr; ++r) {
          const T* xi = xp + (i0 + r) * D;
          const T px = std::max(T(1.0 + kv * x2[r]), pmin);
          T* bk = kp + (i0 + r) * n;
          int64_t* bi = ip + (i0 + r) * n;
          for (int64_t c = 0; c < nc; ++c) {
            const int64_t j = j0 + c;
            const double sum = x2[r] + y2[j];
            double a = sum - 2.0 * double(Gp[r * nc + c]);
            if (a < tau * sum) a = exact_sq(xi, yp + j * D, D);
            if (a < 0) a = 0;
            T key;
            if (kv < 0) key = T(a) / (px * py[j]);
            else if (kv > 0) key = T(a) / std::max(px * py[j] - kT * T(a), T(0));
            else key = T(a);
            const bool better = largest ? key > bk[n - 1] : key < bk[n - 1];
            if (!better) continue;
            int64_t p = n - 1;  // insertion into the sorted buffer (ties keep the earlier index first)
            while (p > 0 && (largest ? key > bk[p - 1] : key < bk[p - 1])) {
              bk[p] = bk[p - 1];
              bi[p] = bi[p - 1];
              --p;
            }
            bk[p] = key;
            bi[p] = j;
          }
        }
      }
    }
  });
  return {keys, idx};
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& x, const at::Tensor& y, double k, int64_t n,
                                           bool largest, int64_t tile) {
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  TORCH_CHECK(xc.dim() == 2 && yc.dim() == 2 && xc.size(1) == yc.size(1), "knn: x [N, D], y [M, D]");
  TORCH_CHECK(n >= 0 && n <= yc.size(0), "knn: n out of range");
  tile = std::max<int64_t>(tile, 1);
  if (xc.scalar_type() == at::kDouble) return knn_impl<double>(xc, yc, k, n, largest, tile);
  return knn_impl<float>(xc, yc, k, n, largest, tile);
}

}  // namespace cpu
}  // namespace geoops
