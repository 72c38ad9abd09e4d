// CUDA kernels of the kappa-stereographic row ops (forward and backward).
//
// Pure CUDA (no torch headers): the tensor-level wrappers live in bindings.cpp
// and call the raw-pointer launchers declared in geoops/stereo_cuda.h.
//
// The kernels mirror the CPU kernels (csrc/cpu/stereographic.cpp) exactly:
//   1. a first pass over the row accumulates the row scalars xx, yy, xy, dd
//      (dd = |x - y|^2 directly) and, in the backward of vector-valued ops,
//      ga = <g,x>, gb = <g,y>, gc = <g,x-y>;
//   2. the per-op scalar math of stereo_math.h turns them into coefficients
//      (forward) or row adjoints (backward);
//   3. a second pass over the row (now in L1/L2) writes
//        out = a x + b y + c (x - y)                                   (fwd)
//        dx  = (a + c) g + 2 xx_ x + xy_ y + 2 dd_ (x - y)             (bwd)
//        dy  = (b - c) g + 2 yy_ y + xy_ x - 2 dd_ (x - y)
//      (the g-terms are absent for scalar-valued ops).
// Compute type T: double for every data type (fp64, fp32, fp16, bf16: loaded,
// widened, and rounded back once on store).
//
// Work layout: a "group" of G threads owns one row at a time and walks the
// rows grid-stride.  G <= 32 is a slice of a warp (256-thread blocks hold
// 256/G rows) reduced with width-G xor shuffles; G = 256 is a whole block per
// row (warp shuffles, then shared memory).  G is picked from the row length so
// that short rows do not leave most of a warp idle.  Loads and stores are
// 16-byte vectors (float4-like packs) when every row pointer is 16-byte
// aligned and D and the row strides are multiples of the pack width.  All
// offsets are 64-bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "geoops/stereo_cuda.h"
#include "geoops/stereo_math.h"

namespace geoops {
namespace cuda {

using namespace geoops::stereo;

namespace {

template <int I> using Int = std::integral_constant<int, I>;
template <bool B> using Bool = std::integral_constant<bool, B>;

// ---------------------------------------------------------------- element types
// Load / store between the storage type S and the compute type T: double is
// computed in its own type (the primary template), float and the half types in
// double.
template <typename S> struct Elem {
  static_assert(std::is_floating_point<S>::value, "unsupported element type");
  using T = S;
  static __device__ __forceinline__ S load(S v) { return v; }
  static __device__ __forceinline__ S store(S v) { return v; }
};
// float data is computed in double, like the C++ CPU kernels: the float row math lost 5 digits to
// cancellation in expmap's backward near the ball's boundary (6x outside the parity bound in the
// Triton kernels, which shared it; see kernels/stereographic.py).  Loads widen, stores round once.
template <> struct Elem<float> {
  using T = double;
  static __device__ __forceinline__ double load(float v) { return static_cast<double>(v); }
  static __device__ __forceinline__ float store(double v) { return static_cast<float>(v); }
};
// The half types too (as the Triton kernels do): in float, expmap's backward at k = -1e-4 next to the
// boundary kept only ~2 digits, which bfloat16's own rounding then pushed past the parity bound (dy 0.519
// against 0.500 on an H200, session 31).  One rounding on store (__double2half / __double2bfloat16).
template <> struct Elem<__half> {
  using T = double;
  static __device__ __forceinline__ double load(__half v) { return static_cast<double>(__half2float(v)); }
  static __device__ __forceinline__ __half store(double v) { return __double2half(v); }
};
template <> struct Elem<__nv_bfloat16> {
  using T = double;
  static __device__ __forceinline__ double load(__nv_bfloat16 v) { return static_cast<double>(__bfloat162float(v)); }
  static __device__ __forceinline__ __nv_bfloat16 store(double v) { return __double2bfloat16(v); }
};

// V consecutive elements moved as one aligned access (16 bytes for the vector path).
template <typename S, int V> struct alignas(sizeof(S) * V) Pack {
  S v[V];
};

template <typename S, int V>
__device__ __forceinline__ void load_pack(const S* __restrict__ p, typename Elem<S>::T (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = Elem<S>::load(p[0]);
  } else {
    const Pack<S, V> pk = *reinterpret_cast<const Pack<S, V>*>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = Elem<S>::load(pk.v[e]);
  }
}

template <typename S, int V>
__device__ __forceinline__ void store_pack(S* __restrict__ p, const typename Elem<S>::T (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = Elem<S>::store(in[0]);
  } else {
    Pack<S, V> pk;
#pragma unroll
    for (int e = 0; e < V; ++e) pk.v[e] = Elem<S>::store(in[e]);
    *reinterpret_cast<Pack<S, V>*>(p) = pk;
  }
}

// Per-row scalars (k, r) and their adjoints (dk, dr) carry their own dtype.
template <typename T> __device__ __forceinline__ T load_any(const void* p, int dt, int64_t i) {
  switch (dt) {
    case DT_F64:
      return static_cast<T>(static_cast<const double*>(p)[i]);
    case DT_F16:
      return static_cast<T>(__half2float(static_cast<const __half*>(p)[i]));
    case DT_BF16:
      return static_cast<T>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    default:
      return static_cast<T>(static_cast<const float*>(p)[i]);
  }
}

template <typename T> __device__ __forceinline__ void store_any(void* p, int dt, int64_t i, T v) {
  switch (dt) {
    case DT_F64:
      static_cast<double*>(p)[i] = static_cast<double>(v);
      break;
    case DT_F16:
      if constexpr (std::is_same<T, double>::value) static_cast<__half*>(p)[i] = __double2half(v);
      else static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case DT_BF16:
      if constexpr (std::is_same<T, double>::value) static_cast<__nv_bfloat16*>(p)[i] = __double2bfloat16(v);
      else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
  }
}

// ---------------------------------------------------------------- groups
template <int G> struct Cfg {
  static_assert(G >= 2 && (G & (G - 1)) == 0 && (G <= 32 || G % 32 == 0), "bad group size");
  static constexpr int kBlock = G > 32 ? G : 256;  // threads per block
  static constexpr int kRows = kBlock / G;         // rows in flight per block
  static constexpr int kWarps = G > 32 ? G / 32 : 1;
};

// The calling thread's index within its group, and the grid-stride walk over
// the rows: the group's first row, and the step to its next one.
template <int G> __device__ __forceinline__ int thread_in_group() { return static_cast<int>(threadIdx.x) & (G - 1); }
template <int G> __device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * Cfg<G>::kRows + threadIdx.x / G;
}
template <int G> __device__ __forceinline__ int64_t row_step() {
  return static_cast<int64_t>(gridDim.x) * Cfg<G>::kRows;
}

// Lanes of the calling thread's group (G <= 32), for the *_sync intrinsics.
template <int G> __device__ __forceinline__ unsigned group_mask() {
  if constexpr (G >= 32) {
    return 0xffffffffu;
  } else {
    const unsigned base = (threadIdx.x & 31u) & ~static_cast<unsigned>(G - 1);
    return ((1u << G) - 1u) << base;
  }
}

// Sum each v[i] over the group; every thread of the group gets the same,
// bitwise identical result (xor butterflies are symmetric), so the per-row
// math below runs uniformly.  smem: NV * kWarps values (G > 32 only).
template <typename T, int G, int NV> __device__ __forceinline__ void group_sum(T (&v)[NV], T* smem) {
  constexpr int W = G < 32 ? G : 32;
  const unsigned mask = group_mask<G>();
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] += __shfl_xor_sync(mask, v[i], off, W);
  }
  if constexpr (G > 32) {
    constexpr int NW = Cfg<G>::kWarps;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < NV; ++i) smem[i * NW + warp] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      T s = smem[i * NW];
#pragma unroll
      for (int w = 1; w < NW; ++w) s += smem[i * NW + w];
      v[i] = s;
    }
    __syncthreads();  // smem is reused by the next row
  }
}

// ---------------------------------------------------------------- row reduction
// The dot products of one row: xx (, yy, xy, dd) with y, and with g (the
// backward of vector-valued ops) ga = <g,x> (, gb = <g,y>, gc = <g,x-y>).
// Absent ones are 0.
template <typename T> struct RowSums {
  T xx, yy, xy, dd;
  T ga, gb, gc;
};

// How many of them a row has.
template <bool HAS_Y, bool WITH_G> constexpr int kNumSums = (HAS_Y ? 4 : 1) + (WITH_G ? (HAS_Y ? 3 : 1) : 0);

// Shared scratch of group_sum for NV values per row.
template <typename T, int G, int NV> using GroupSmem = T[G > 32 ? NV * Cfg<G>::kWarps : 1];

// First pass over a row: the group's threads walk its packs (thread t takes
// packs t, t + G, ...), accumulate the dot products and sum them over the
// group (smem: GroupSmem<T, G, kNumSums<HAS_Y, WITH_G>>).  yr is only read
// with HAS_Y, gr only with WITH_G.
template <typename S, int G, int V, bool HAS_Y, bool WITH_G, typename T = typename Elem<S>::T>
__device__ __forceinline__ RowSums<T> row_sums(const S* xr, const S* yr, const S* gr, int t, int64_t nvec, T* smem) {
  constexpr int NS = HAS_Y ? 4 : 1;  // xx (, yy, xy, dd), then ga (, gb, gc)
  constexpr int NV = kNumSums<HAS_Y, WITH_G>;
  T acc[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) acc[i] = T(0);
  for (int64_t v = t; v < nvec; v += G) {
    T xv[V], yv[V];
    load_pack<S, V>(xr + v * V, xv);
    if constexpr (HAS_Y) load_pack<S, V>(yr + v * V, yv);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      acc[0] += xv[e] * xv[e];
      if constexpr (HAS_Y) {
        const T dv = xv[e] - yv[e];
        acc[1] += yv[e] * yv[e];
        acc[2] += xv[e] * yv[e];
        acc[3] += dv * dv;
      }
    }
    if constexpr (WITH_G) {
      T gv[V];
      load_pack<S, V>(gr + v * V, gv);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        acc[NS] += gv[e] * xv[e];
        if constexpr (HAS_Y) {
          acc[NS + 1] += gv[e] * yv[e];
          acc[NS + 2] += gv[e] * (xv[e] - yv[e]);
        }
      }
    }
  }
  group_sum<T, G, NV>(acc, smem);

  RowSums<T> r{};  // absent sums stay 0
  r.xx = acc[0];
  if constexpr (HAS_Y) {
    r.yy = acc[1];
    r.xy = acc[2];
    r.dd = acc[3];
  }
  if constexpr (WITH_G) {
    r.ga = acc[NS];
    if constexpr (HAS_Y) {
      r.gb = acc[NS + 1];
      r.gc = acc[NS + 2];
    }
  }
  return r;
}

// ---------------------------------------------------------------- per-op math
// f(Int<OP>{}) with op as a compile-time constant: A, B or C when op is one
// of them, D otherwise.
template <int A, int B, int C, int D, typename F> __device__ __forceinline__ auto one_of4(int op, F&& f) {
  switch (op) {
    case A:
      return f(Int<A>{});
    case B:
      return f(Int<B>{});
    case C:
      return f(Int<C>{});
    default:
      return f(Int<D>{});
  }
}

// f(Int<OP>{}) for the ops of one (HAS_Y, SCALAR_OUT) shape only, so that the
// inlined math of the other ops is pruned from the kernel.
template <bool HAS_Y, bool SCALAR_OUT, typename F> __device__ __forceinline__ auto with_op(int op, F&& f) {
  if constexpr (HAS_Y && SCALAR_OUT) {
    return f(Int<DIST>{});
  } else if constexpr (HAS_Y) {
    return one_of4<MOBIUS_ADD, MOBIUS_SUB, EXPMAP, LOGMAP>(op, f);
  } else if constexpr (SCALAR_OUT) {
    return op == LAMBDA_X ? f(Int<LAMBDA_X>{}) : f(Int<DIST0>{});
  } else {
    return one_of4<PROJECT, MOBIUS_SCALAR_MUL, EXPMAP0, LOGMAP0>(op, f);
  }
}

template <typename T, bool HAS_Y, bool SCALAR_OUT>
__device__ __forceinline__ Coef<T> fwd_shaped(int op, const Row<T>& s, T param) {
  return with_op<HAS_Y, SCALAR_OUT>(op, [&](auto o) { return fwd<T>(decltype(o)::value, s, param); });
}

template <typename T, bool HAS_Y, bool SCALAR_OUT>
__device__ __forceinline__ Row<T> vjp_shaped(int op, const Row<T>& s, T param, T ga, T gb, T gc) {
  return with_op<HAS_Y, SCALAR_OUT>(op, [&](auto o) { return vjp<T>(decltype(o)::value, s, param, ga, gb, gc); });
}

// ---------------------------------------------------------------- kernels
// The kernels' parameter blocks.  Both have the fields x, y, k, r, sx, sy,
// sk, sr, N, D, param, op, k_dtype, r_dtype, which the helpers templated on
// the block (row_scalars, set_row_args) use.
struct FwdParams {
  const void* x;
  const void* y;
  const void* k;
  const void* r;
  void* out;
  int64_t sx, sy, sk, sr, so;
  int64_t N, D;
  double param;
  int op, k_dtype, r_dtype;
};

struct BwdParams {
  const void* g;
  const void* x;
  const void* y;
  const void* k;
  const void* r;
  void* dx;
  void* dy;
  void* dk;
  void* dr;
  int64_t sg, sx, sy, sk, sr, sdx, sdy;
  int64_t N, D;
  double param;
  int op, k_dtype, r_dtype, dk_dtype, dr_dtype;
};

// The row scalars of the per-op math: the row's dot products, k and r.
template <typename T, typename Params>
__device__ __forceinline__ Row<T> row_scalars(const Params& p, const RowSums<T>& d, int64_t row) {
  Row<T> s;
  s.xx = d.xx;
  s.yy = d.yy;
  s.xy = d.xy;
  s.dd = d.dd;
  s.k = load_any<T>(p.k, p.k_dtype, row * p.sk);
  s.r = p.r ? load_any<T>(p.r, p.r_dtype, row * p.sr) : T(0);
  return s;
}

// logmap (k > 0) near x's antipode: the row's den as |x + k xx y|^2 / xx from a second pass over the row, where the
// row sums' den = 1 + 2k xy + k^2 xx yy is below stereo::antipode_cut (stereo_math.h: there its rounding is ~eps / den
// relative, the second pass's ~eps / sqrt(den)); -1 for every other row (the sums' den stands), floored at
// antipode_min_den in every dtype (T is double for all of them: a double write).  Every thread of the group holds the
// same sums, so the branch, and group_sum in it, are uniform over the group (G > 32: the block).
// smem: group_sum's scratch for one value (any GroupSmem of the kernel holds it).
template <typename S, int G, int V, typename T>
__device__ __forceinline__ T antipode_den(const S* xr, const S* yr, int t, int64_t nvec, const Row<T>& s, T* smem) {
  const T k = s.k;
  if (!(k > T(0)) || !(T(1) + T(2) * k * s.xy + k * k * s.xx * s.yy < antipode_cut<T>())) return T(-1);
  const T kx = k * s.xx;
  T acc[1] = {T(0)};
  for (int64_t v = t; v < nvec; v += G) {
    T xv[V], yv[V];
    load_pack<S, V>(xr + v * V, xv);
    load_pack<S, V>(yr + v * V, yv);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const T u = xv[e] + kx * yv[e];
      acc[0] += u * u;
    }
  }
  group_sum<T, G, 1>(acc, smem);
  return acc[0] / s.xx;  // (xx > 0: den = 1 at x = 0)
}

template <typename S, int G, int V, bool HAS_Y, bool SCALAR_OUT>
__global__ void __launch_bounds__(Cfg<G>::kBlock) stereo_fwd_kernel(const FwdParams p) {
  using T = typename Elem<S>::T;
  __shared__ GroupSmem<T, G, kNumSums<HAS_Y, false>> smem;

  const S* __restrict__ xp = static_cast<const S*>(p.x);
  const S* __restrict__ yp = static_cast<const S*>(p.y);
  S* __restrict__ outp = static_cast<S*>(p.out);
  const int t = thread_in_group<G>();
  const int64_t nvec = p.D / V;
  const T param = static_cast<T>(p.param);

  for (int64_t row = first_row<G>(); row < p.N; row += row_step<G>()) {
    const S* xr = xp + row * p.sx;
    const S* yr = HAS_Y ? yp + row * p.sy : xr;

    const RowSums<T> d = row_sums<S, G, V, HAS_Y, false>(xr, yr, nullptr, t, nvec, smem);
    const Row<T> s = row_scalars(p, d, row);
    Coef<T> c = fwd_shaped<T, HAS_Y, SCALAR_OUT>(p.op, s, param);
    if constexpr (HAS_Y && !SCALAR_OUT) {  // logmap near x's antipode: antipode_den's den
      if (p.op == LOGMAP) {
        const T den = antipode_den<S, G, V>(xr, yr, t, nvec, s, smem);
        DirectMath<T> m;
        if (den >= T(0)) c = logmap_coef(s, den, m, antipode_min_den<T>());
      }
    }

    if constexpr (SCALAR_OUT) {
      if (t == 0) outp[row * p.so] = Elem<S>::store(c.a);
    } else {
      S* orow = outp + row * p.so;
      for (int64_t v = t; v < nvec; v += G) {
        T xv[V], o[V];
        load_pack<S, V>(xr + v * V, xv);
        if constexpr (HAS_Y) {
          T yv[V];
          load_pack<S, V>(yr + v * V, yv);
#pragma unroll
          for (int e = 0; e < V; ++e) o[e] = c.a * xv[e] + c.b * yv[e] + c.c * (xv[e] - yv[e]);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) o[e] = c.a * xv[e];
        }
        store_pack<S, V>(orow + v * V, o);
      }
    }
  }
}

template <typename S, int G, int V, bool HAS_Y, bool SCALAR_OUT>
__global__ void __launch_bounds__(Cfg<G>::kBlock) stereo_bwd_kernel(const BwdParams p) {
  using T = typename Elem<S>::T;
  __shared__ GroupSmem<T, G, kNumSums<HAS_Y, !SCALAR_OUT>> smem;

  const S* __restrict__ gp = static_cast<const S*>(p.g);
  const S* __restrict__ xp = static_cast<const S*>(p.x);
  const S* __restrict__ yp = static_cast<const S*>(p.y);
  S* __restrict__ dxp = static_cast<S*>(p.dx);
  S* __restrict__ dyp = HAS_Y ? static_cast<S*>(p.dy) : nullptr;
  const int t = thread_in_group<G>();
  const int64_t nvec = p.D / V;
  const T param = static_cast<T>(p.param);

  for (int64_t row = first_row<G>(); row < p.N; row += row_step<G>()) {
    const S* xr = xp + row * p.sx;
    const S* yr = HAS_Y ? yp + row * p.sy : xr;
    const S* gr = gp + row * p.sg;

    // Vector-valued ops reduce ga, gb, gc with the row; scalar-valued ones take ga = g.
    RowSums<T> d = row_sums<S, G, V, HAS_Y, !SCALAR_OUT>(xr, yr, gr, t, nvec, smem);
    const Row<T> s = row_scalars(p, d, row);
    if constexpr (SCALAR_OUT) d.ga = Elem<S>::load(gr[0]);
    Row<T> adj = vjp_shaped<T, HAS_Y, SCALAR_OUT>(p.op, s, param, d.ga, d.gb, d.gc);
    // logmap near x's antipode: the forward's den (antipode_den), so that the gradient is the derivative of the
    // value computed
    T den = T(-1);
    if constexpr (HAS_Y && !SCALAR_OUT) {
      if (p.op == LOGMAP) {
        den = antipode_den<S, G, V>(xr, yr, t, nvec, s, smem);
        DirectMath<T> m;
        if (den >= T(0)) adj = logmap_vjp(s, den, d.ga, d.gb, d.gc, m, antipode_min_den<T>());
      }
    }
    if (t == 0) {
      if (p.dk) store_any<T>(p.dk, p.dk_dtype, row, adj.k);
      if (p.dr) store_any<T>(p.dr, p.dr_dtype, row, adj.r);
    }
    if (dxp == nullptr && dyp == nullptr) continue;

    Coef<T> cf{T(0), T(0), T(0)};
    if constexpr (!SCALAR_OUT) {
      cf = fwd_shaped<T, HAS_Y, SCALAR_OUT>(p.op, s, param);
      DirectMath<T> m;
      if (den >= T(0)) cf = logmap_coef(s, den, m, antipode_min_den<T>());
    }
    const T gxc = cf.a + cf.c, gyc = cf.b - cf.c;
    const T cxx = T(2) * adj.xx, cyy = T(2) * adj.yy, cxy = adj.xy, cdd = T(2) * adj.dd;
    S* dxr = dxp ? dxp + row * p.sdx : nullptr;
    S* dyr = dyp ? dyp + row * p.sdy : nullptr;
    for (int64_t v = t; v < nvec; v += G) {
      T xv[V], yv[V], gv[V];
      load_pack<S, V>(xr + v * V, xv);
      if constexpr (HAS_Y) {
        load_pack<S, V>(yr + v * V, yv);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) yv[e] = T(0);
      }
      if constexpr (!SCALAR_OUT) load_pack<S, V>(gr + v * V, gv);
      if (dxr) {
        T o[V];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const T base = cxx * xv[e] + cxy * yv[e] + cdd * (xv[e] - yv[e]);
          if constexpr (SCALAR_OUT) o[e] = base;
          else o[e] = gxc * gv[e] + base;
        }
        store_pack<S, V>(dxr + v * V, o);
      }
      if constexpr (HAS_Y) {
        if (dyr) {
          T o[V];
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const T base = cyy * yv[e] + cxy * xv[e] - cdd * (xv[e] - yv[e]);
            if constexpr (SCALAR_OUT) o[e] = base;
            else o[e] = gyc * gv[e] + base;
          }
          store_pack<S, V>(dyr + v * V, o);
        }
      }
    }
  }
}

// The instantiation of each kernel for a (dtype, group, pack width, shape).
struct FwdKernel {
  template <typename S, int G, int V, bool HY, bool SO> static auto get() {
    return &stereo_fwd_kernel<S, G, V, HY, SO>;
  }
};
struct BwdKernel {
  template <typename S, int G, int V, bool HY, bool SO> static auto get() {
    return &stereo_bwd_kernel<S, G, V, HY, SO>;
  }
};

// ---------------------------------------------------------------- dispatch
template <typename S> struct Tag {
  using type = S;
};

constexpr int64_t kMaxBlocks = int64_t(1) << 22;  // the kernels loop over rows grid-stride

template <typename F> cudaError_t with_dtype(int dtype, F&& f) {
  switch (dtype) {
    case DT_F32:
      return f(Tag<float>{});
    case DT_F64:
      return f(Tag<double>{});
    case DT_F16:
      return f(Tag<__half>{});
    case DT_BF16:
      return f(Tag<__nv_bfloat16>{});
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename F> cudaError_t with_shape(int op, F&& f) {
  const bool has_y = op_has_y(op), scalar_out = op_scalar_out(op);
  if (has_y && scalar_out) return f(Bool<true>{}, Bool<true>{});
  if (has_y) return f(Bool<true>{}, Bool<false>{});
  if (scalar_out) return f(Bool<false>{}, Bool<true>{});
  return f(Bool<false>{}, Bool<false>{});
}

// Threads per row: enough for one pack per thread on short rows, a warp for
// medium rows, a 256-thread block for long rows (or for fairly long rows when
// there are too few rows to fill the GPU with warps).
int pick_group(int64_t nvec, int64_t N) {
  if (nvec > 512 || (nvec > 128 && N < 2048)) return 256;
  int g = 2;
  while (g < 32 && g < nvec) g <<= 1;
  return g;
}

template <typename F> cudaError_t with_group(int g, F&& f) {
  switch (g) {
    case 2:
      return f(Int<2>{});
    case 4:
      return f(Int<4>{});
    case 8:
      return f(Int<8>{});
    case 16:
      return f(Int<16>{});
    case 32:
      return f(Int<32>{});
    default:
      return f(Int<256>{});
  }
}

template <typename F> cudaError_t with_vec(bool vec, F&& f) {
  if (vec) return f(Bool<true>{});
  return f(Bool<false>{});
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether rows at p with this row stride can be moved in 16-byte packs of vw elements.
bool packable(const void* p, int64_t row_stride, int vw) { return aligned16(p) && row_stride % vw == 0; }

template <typename Kernel, typename Params>
cudaError_t launch_rows(Kernel kernel, int block, int rows_per_block, int64_t N, Params params, cudaStream_t stream) {
  int64_t blocks = (N + rows_per_block - 1) / rows_per_block;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  void* args[] = {&params};
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(blocks)),
                          dim3(static_cast<unsigned>(block)), args, 0, stream);
}

// Picks the instantiation of Kernel (FwdKernel / BwdKernel) for the dtype, the
// shape of p.op, the pack width (16-byte packs when D and
// rows_packable(vw, has_y, scalar_out) allow them) and the group size, and launches it.
template <typename Kernel, typename Params, typename RowsPackable>
cudaError_t launch_shaped(int dtype, const Params& p, RowsPackable&& rows_packable, cudaStream_t stream) {
  return with_dtype(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    constexpr int VW = static_cast<int>(16 / sizeof(S));
    return with_shape(p.op, [&](auto hy, auto so) {
      constexpr bool HY = decltype(hy)::value, SO = decltype(so)::value;
      const bool vec = p.D % VW == 0 && rows_packable(VW, HY, SO);
      const int64_t nvec = vec ? p.D / VW : p.D;
      return with_vec(vec, [&](auto v) {
        constexpr int V = decltype(v)::value ? VW : 1;
        return with_group(pick_group(nvec, p.N), [&](auto g) {
          constexpr int G = decltype(g)::value;
          return launch_rows(Kernel::template get<S, G, V, HY, SO>(), Cfg<G>::kBlock, Cfg<G>::kRows, p.N, p, stream);
        });
      });
    });
  });
}

bool valid_dtype(int dt) { return dt >= DT_F32 && dt <= DT_BF16; }

// The dtype of an optional operand matters only when it is given.
bool valid_dtype_of(const void* p, int dt) { return p == nullptr || valid_dtype(dt); }

// The checks both launchers make.
bool valid_args(int op, int dtype, const void* k, int k_dtype, const void* r, int r_dtype, int64_t N, int64_t D) {
  return op >= 0 && op < NUM_OPS && valid_dtype(dtype) && valid_dtype(k_dtype) && N >= 0 && D >= 0 && k != nullptr &&
         valid_dtype_of(r, r_dtype);
}

// Sets the fields both parameter blocks have; y and its stride are dropped for ops without y.
template <typename Params>
void set_row_args(Params& p, int op, const void* x, int64_t sx, const void* y, int64_t sy, const void* k, int64_t sk,
                  int k_dtype, const void* r, int64_t sr, int r_dtype, double param, int64_t N, int64_t D) {
  const bool has_y = op_has_y(op);
  p.x = x;
  p.y = has_y ? y : nullptr;
  p.k = k;
  p.r = r;
  p.sx = sx;
  p.sy = has_y ? sy : 0;
  p.sk = sk;
  p.sr = sr;
  p.N = N;
  p.D = D;
  p.param = param;
  p.op = op;
  p.k_dtype = k_dtype;
  p.r_dtype = r_dtype;
}

}  // namespace

cudaError_t launch_stereo_fwd(int op, int dtype, const void* x, int64_t x_row_stride, const void* y,
                              int64_t y_row_stride, const void* k, int64_t k_stride, int k_dtype, const void* r,
                              int64_t r_stride, int r_dtype, double param, void* out, int64_t out_row_stride,
                              int64_t N, int64_t D, cudaStream_t stream) {
  if (!valid_args(op, dtype, k, k_dtype, r, r_dtype, N, D)) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;

  FwdParams p;
  set_row_args(p, op, x, x_row_stride, y, y_row_stride, k, k_stride, k_dtype, r, r_stride, r_dtype, param, N, D);
  p.out = out;
  p.so = out_row_stride;
  return launch_shaped<FwdKernel>(
      dtype, p,
      [&](int vw, bool hy, bool so) {
        return packable(p.x, p.sx, vw) && (!hy || packable(p.y, p.sy, vw)) && (so || packable(p.out, p.so, vw));
      },
      stream);
}

cudaError_t launch_stereo_bwd(int op, int dtype, const void* grad, int64_t grad_row_stride, const void* x,
                              int64_t x_row_stride, const void* y, int64_t y_row_stride, const void* k,
                              int64_t k_stride, int k_dtype, const void* r, int64_t r_stride, int r_dtype,
                              double param, void* dx, int64_t dx_row_stride, void* dy, int64_t dy_row_stride,
                              void* dk, int dk_dtype, void* dr, int dr_dtype, int64_t N, int64_t D,
                              cudaStream_t stream) {
  if (!valid_args(op, dtype, k, k_dtype, r, r_dtype, N, D) || !valid_dtype_of(dk, dk_dtype) ||
      !valid_dtype_of(dr, dr_dtype))
    return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;

  const bool has_y = op_has_y(op);
  BwdParams p;
  set_row_args(p, op, x, x_row_stride, y, y_row_stride, k, k_stride, k_dtype, r, r_stride, r_dtype, param, N, D);
  p.g = grad;
  p.dx = dx;
  p.dy = has_y ? dy : nullptr;
  p.dk = dk;
  p.dr = dr;
  p.sg = grad_row_stride;
  p.sdx = dx_row_stride;
  p.sdy = has_y ? dy_row_stride : 0;
  p.dk_dtype = dk_dtype;
  p.dr_dtype = dr_dtype;
  return launch_shaped<BwdKernel>(
      dtype, p,
      [&](int vw, bool hy, bool so) {
        return packable(p.x, p.sx, vw) && (!hy || packable(p.y, p.sy, vw)) && (so || packable(p.g, p.sg, vw)) &&
               (p.dx == nullptr || packable(p.dx, p.sdx, vw)) && (p.dy == nullptr || packable(p.dy, p.sdy, vw));
      },
      stream);
}

}  // namespace cuda
}  // namespace geoops
