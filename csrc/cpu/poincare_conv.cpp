// The Poincaré convolution's Euclidean step on the CPU (geoops/poincare.py, PoincareConv2dFn): a direct
// small-channel 2D convolution of channels-last tangent pixel rows, forward and backward, in place of
// F.conv2d / aten.convolution_backward (MKL-DNN), whose fixed cost per call dominates at small channel counts
// (the digits CNN: 8x8 images, 1 -> 8 and 8 -> 8 channels).
//
// Pixel rows v [B*H*W, C] (row (b, iy, ix)), z [C*kh*kw, Co] in F.unfold's (channel, tap) row order, output
// rows o = (b, oy, ox) of [B*Ho*Wo, Co]; input pixel of tap (ky, kx): iy = oy*sy - py + ky, ix = ox*sx - px + kx
// (outside the image: the zero tangent vector).
//   forward:  t[o, :] = beta sum_{taps, ci} v[q, ci] z[(ci, ky, kx), :],   U[o] = beta^2 sum_{taps} |v[q]|^2
//             (the box sum of the squared norms in the same pass over the taps);
//   backward: dv[q, :] = beta sum_{taps} sum_co dt[o, co] z[(:, ky, kx), co] + 2 beta^2 (sum_{taps} dU[o]) v[q]
//             (a gather over the outputs that read pixel q: each dv row written once, no atomics),
//             dz[(ci, ky, kx), :] = beta sum_o v[q, ci] dt[o, :]  (partial sums per fixed chunk of rows, added in chunk order).
// The vectors run along the output channels (forward, dz) or the input channels (dv): the weights are repacked
// per call into tap-major blocks padded to the vector width (beta folded in), so a tail of a channel count that
// is not a multiple of the width costs zero lanes, never a branch.  Offsets are 64-bit.
#include "geoops/cpu_capability.h"  // first: the at::vec ISA of this translation unit

#include "poincare.h"
#include "knobs.h"
#include "poincare_gemm.h"
#include "poincare_paths.h"  // AVX2: paths::rows_to_cols8 (logmap0_rows_bwd's row sums)
#include "geoops/stereo_math.h"  // atanc / atanc_d (logmap0_bwd_scalars)

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace geoops {
namespace cpu {
namespace {

using at::vec::Vectorized;

struct ConvGeom {
  int64_t B, H, W, C, Co, kh, kw, py, px, sy, sx, Ho, Wo;
};

// Chunks of the rows for `work` multiply-adds: about 2^16 each (torch's grain), at most 64, whatever the thread
// count: dz's partial sums per chunk, added in chunk order, give the same bits with any number of threads.
inline int64_t chunks_for(int64_t work, int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>({int64_t(64), items, work / 65536 + 1}));
}

// Output columns ox of row oy whose tap kx falls inside the image: [lo, hi).
inline void ox_range(const ConvGeom& g, int64_t kx, int64_t& lo, int64_t& hi) {
  // ix = ox*sx - px + kx in [0, W)  <=>  ox >= ceil((px - kx) / sx), ox <= floor((W - 1 + px - kx) / sx)
  const int64_t a = g.px - kx;
  lo = a <= 0 ? 0 : (a + g.sx - 1) / g.sx;
  const int64_t bnum = g.W - 1 + a;
  hi = bnum < 0 ? 0 : std::min<int64_t>(g.Wo, bnum / g.sx + 1);
  lo = std::min(lo, hi);
}

// Output pixels per register block: P pixels x NV vectors of accumulators (independent FMA chains; one chain per
// pixel would wait on the FMA latency), plus the NV weight vectors and a broadcast, within the vector registers.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif
template <int NV>
constexpr int block_px() {
  return std::max(1, std::min(12, (kVecRegs - NV - 2) / NV));
}
// The block width for rows of n pixels: 12, 8 or 4 (at most block_px<NV>), the least padding, ties to the wider.
inline int pick_px(int nv, int64_t n) {
  const int pmax = nv == 1 ? block_px<1>() : nv == 2 ? block_px<2>() : nv == 3 ? block_px<3>() : block_px<4>();
  int best = 4;
  int64_t waste = (n + 3) / 4 * 4 - n;
  for (int p : {8, 12}) {
    if (p > pmax) continue;
    const int64_t w = (n + p - 1) / p * p - n;
    if (w <= waste) best = p, waste = w;
  }
  return best;
}

// Forward of the output rows r = (b, oy) in [r0, r1) from the zero-padded pixel rows vp [B][Hp][Wq][C] and their
// squared norms sp [B][Hp][Wq]: blocks of P output columns, each tap's C weight rows streamed once per block.
// One tap of a register block: acc[p][:] += sum_i a[p * astride + i] * w[i * wld + :] over the n channels i
// (P pixels x NV vectors of independent FMA chains; the weight row loaded once per channel).  The forward's
// t and the stride-1 dv's transposed convolution both run it.
template <typename T, int NV, int P>
inline void tap_fma(Vectorized<T> (&acc)[P][NV], const T* a, int64_t astride, const T* w, int64_t wld, int64_t n) {
  using V = Vectorized<T>;
  for (int64_t i = 0; i < n; ++i) {
    V wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = V::loadu(w + i * wld + j * V::size());
    for (int p = 0; p < P; ++p) {
      const V av(a[p * astride + i]);
      for (int j = 0; j < NV; ++j) acc[p][j] = at::vec::fmadd(av, wv[j], acc[p][j]);
    }
  }
}

template <typename T, int NV, int P>
void conv_fwd_rows(const ConvGeom& g, const T* vp, const T* sp, int64_t Hp, int64_t Wq, const T* wp, int64_t Cop,
                   T beta2, T* t, T* U, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t C = g.C, Co = g.Co, pstride = g.sx * C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oy = r % g.Ho, b = r / g.Ho;
    for (int64_t ox0 = 0; ox0 < g.Wo; ox0 += P) {
      V acc[P][NV];
      for (int p = 0; p < P; ++p)
        for (int j = 0; j < NV; ++j) acc[p][j] = V(T(0));
      T us[P] = {};
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t prow = (b * Hp + oy * g.sy + ky) * Wq;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const T* base = vp + (prow + ox0 * g.sx + kx) * C;
          const T* sb = sp + prow + ox0 * g.sx + kx;
          for (int p = 0; p < P; ++p) us[p] += sb[p * g.sx];
          const T* wr = wp + (ky * g.kw + kx) * C * Cop;
          tap_fma<T, NV, P>(acc, base, pstride, wr, Cop, C);
        }
      }
      const int np = static_cast<int>(std::min<int64_t>(P, g.Wo - ox0));
      const int64_t o0 = r * g.Wo + ox0;
      for (int p = 0; p < np; ++p) {
        T* tr = t + (o0 + p) * Co;
        for (int j = 0; j < NV; ++j) {
          const int64_t n = std::min<int64_t>(VS, Co - j * VS);
          if (n == VS) acc[p][j].store(tr + j * VS);
          else acc[p][j].store(tr + j * VS, static_cast<int>(n));
        }
        U[o0 + p] = beta2 * us[p];
      }
    }
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Float32 with at most 8 output channels (half a vector): two output pixels per vector, lanes interleaved (lane
// 2k: the first pixel's channel k, lane 2k + 1: the second's), so that one FMA serves both pixels.  The forward
// (C_out <= 8, stride 1) and the stride-1 dv (C <= 8: the transposed convolution of the zero-padded dt image, the
// same loop) run it.  The input image is copied once, zero-padded, channel-planar per image row ([B][Hp][Cin][Wq]),
// so that the pixels q and q + 1 of a channel are one 8-byte broadcast load (vbroadcastsd); the weights into
// [tap][Cin][16] (each output channel twice, beta folded in).  A register block is up to kPairBlk pairs of any
// output rows (the digits CNN's 8-pixel rows are 4 pairs); the accumulators are de-interleaved once per pair at the
// store.  The same FMAs in the same order per output element as conv_fwd_rows / conv_bwd_dv_rows_s1 (taps, then
// channels) and the same box sums: the same values.  GEOOPS_POINCARE_CONV_PAIRS=0 (read per call) forces those
// one-pixel loops (what more than 8 channels and strided columns run), so that the tests compare the two.
constexpr int kPairBlk = 8;

inline bool conv_pairs_on(int64_t cout) { return cout <= 8 && !knobs::off("GEOOPS_POINCARE_CONV_PAIRS"); }

// One pair pass: output pixels (b, oy, ox) of a Ho x Wo grid, the planar image `img` (tap k of output (b, oy, ox)
// at (b*Hp + oy*sy)*Cin*Wq + ox + poff[k] + ci*Wq), box sums `sq` [B][Hp][Wq] (at (b*Hp + oy*sy)*Wq + ox +
// toff[k]); per output pixel
// acc = sum_k sum_ci img * w[k][ci], us = sum_k sq.  DV = false: out[o] = acc (Cout columns), U[o] = scale * us;
// DV = true: out[o] = fma(scale * us, res[o], acc) (res: v's rows, Cout columns).
struct PairPass {
  int64_t B, Ho, Wo, Hp, Wq, sy, Cin, Cout, ntaps;
  const float* img;   // [B][Hp][Cin][Wq]: a pair is two consecutive floats (stride 1)
  const float* sq;    // [B][Hp][Wq]
  const float* w;
  const int64_t* toff;  // tap offsets in sq (positions)
  const int64_t* poff;  // tap offsets in img (floats)
  float scale;
};

// the output items [i0, i1) (item = output row r times (Wo + 1) / 2 pairs + pair)
template <bool DV>
void conv_pairs(const PairPass& q, float* out, float* U, const float* res, int64_t i0, int64_t i1) {
  const int64_t Cin = q.Cin, Co = q.Cout, npr = (q.Wo + 1) / 2;
  const __m512i deint = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
  const __mmask8 cmask = __mmask8((1u << Co) - 1u);
  for (int64_t b0 = i0; b0 < i1; b0 += kPairBlk) {
    const int np = static_cast<int>(std::min<int64_t>(kPairBlk, i1 - b0));
    int64_t base[kPairBlk], pbase[kPairBlk], orow[kPairBlk];
    bool two[kPairBlk];
    for (int p = 0; p < kPairBlk; ++p) {
      const int64_t it = b0 + std::min(p, np - 1);  // a short block repeats its last pair (computed, not stored)
      const int64_t r = it / npr, ox = 2 * (it % npr), oy = r % q.Ho, b = r / q.Ho;
      base[p] = (b * q.Hp + oy * q.sy) * q.Wq + ox;
      pbase[p] = (b * q.Hp + oy * q.sy) * Cin * q.Wq + ox;
      orow[p] = r * q.Wo + ox;
      two[p] = ox + 1 < q.Wo;
    }
    __m512 acc[kPairBlk];
    float u0[kPairBlk], u1[kPairBlk];
    for (int p = 0; p < kPairBlk; ++p) acc[p] = _mm512_setzero_ps(), u0[p] = u1[p] = 0.f;
    for (int64_t k = 0; k < q.ntaps; ++k) {
      const int64_t toff = q.toff[k], poff = q.poff[k];
      const float* wr = q.w + k * Cin * 16;
      for (int p = 0; p < kPairBlk; ++p) {
        u0[p] += q.sq[base[p] + toff];
        u1[p] += q.sq[base[p] + toff + 1];
      }
      for (int64_t ci = 0; ci < Cin; ++ci) {
        const __m512 wv = _mm512_loadu_ps(wr + ci * 16);
        for (int p = 0; p < kPairBlk; ++p) {
          double pr;
          std::memcpy(&pr, q.img + pbase[p] + poff + ci * q.Wq, sizeof(double));
          acc[p] = _mm512_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pr)), wv, acc[p]);
        }
      }
    }
    for (int p = 0; p < np; ++p) {
      __m512 o = _mm512_permutexvar_ps(deint, acc[p]);  // lanes 0..7: first pixel, 8..15: second
      float* tr = out + orow[p] * Co;
      if constexpr (DV) {
        const float* vr = res + orow[p] * Co;
        const __m512 f = _mm512_insertf32x8(_mm512_set1_ps(q.scale * u0[p]), _mm256_set1_ps(q.scale * u1[p]), 1);
        const __m512 vv = (two[p] && Co == 8) ? _mm512_loadu_ps(vr)
                                              : _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(cmask, vr)),
                                                                   _mm256_maskz_loadu_ps(two[p] ? cmask : 0, vr + Co), 1);
        o = _mm512_fmadd_ps(f, vv, o);
      } else {
        U[orow[p]] = q.scale * u0[p];
        if (two[p]) U[orow[p] + 1] = q.scale * u1[p];
      }
      if (two[p] && Co == 8) {
        _mm512_storeu_ps(tr, o);
      } else {
        _mm256_mask_storeu_ps(tr, cmask, _mm512_castps512_ps256(o));
        if (two[p]) _mm256_mask_storeu_ps(tr + Co, cmask, _mm512_extractf32x8_ps(o, 1));
      }
    }
  }
}

// The channel-planar image [B][Hp][Cin][Wq] and box-sum image [B][Hp][Wq] from rows src (B*Hs*Ws, Cin) placed at
// padded (row + oy0, column + ox0), zero elsewhere; the box-sum image: |row|^2 or the given per-row values.
void pair_image(const float* src, const float* rowval, int64_t B, int64_t Hs, int64_t Ws, int64_t Cin, int64_t Hp,
                int64_t Wq, int64_t oy0, int64_t ox0, std::vector<float>& img, std::vector<float>& sq) {
  img.assign((size_t)(B * Hp * Cin * Wq), 0.f);
  sq.assign((size_t)(B * Hp * Wq), 0.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t iy = 0; iy < Hs; ++iy) {
      const int64_t prow = b * Hp + iy + oy0;
      float* ir = img.data() + prow * Cin * Wq + ox0;
      for (int64_t ix = 0; ix < Ws; ++ix) {
        const int64_t row = (b * Hs + iy) * Ws + ix;
        const float* sr = src + row * Cin;
        float s2 = 0;
        for (int64_t ci = 0; ci < Cin; ++ci) {
          ir[ci * Wq + ix] = sr[ci];
          s2 += sr[ci] * sr[ci];
        }
        sq[prow * Wq + ix + ox0] = rowval ? rowval[row] : s2;
      }
    }
}

template <bool DV>
void conv_pairs_run(const PairPass& q, float* out, float* U, const float* res) {
  const int64_t items = q.B * q.Ho * ((q.Wo + 1) / 2);
  const int64_t per = q.ntaps * q.Cin;  // vector FMAs per item
  const int64_t blocks = (items + kPairBlk - 1) / kPairBlk;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(per * kPairBlk, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t k0, int64_t k1) {
    conv_pairs<DV>(q, out, U, res, k0 * kPairBlk, std::min(items, k1 * kPairBlk));
  });
}

// the forward by pairs (float32, C_out <= 8)
void conv_fwd_pairs_run(const ConvGeom& g, const float* v, const float* zp, double beta, float* tp, float* up) {
  const int64_t C = g.C, Co = g.Co, nt = g.kh * g.kw;
  std::vector<float> w2((size_t)(nt * C * 16), 0.f);
  std::vector<int64_t> toff(nt), poff(nt);
  const int64_t npr = (g.Wo + 1) / 2;
  const int64_t Hp = g.H + 2 * g.py, Wq = std::max<int64_t>(g.W + 2 * g.px, 2 * npr + g.kw);
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      toff[ky * g.kw + kx] = ky * Wq + kx;
      poff[ky * g.kw + kx] = ky * C * Wq + kx;
      for (int64_t ci = 0; ci < C; ++ci) {
        const float* src = zp + ((ci * g.kh + ky) * g.kw + kx) * Co;
        float* dst = w2.data() + ((ky * g.kw + kx) * C + ci) * 16;
        for (int64_t co = 0; co < Co; ++co) dst[2 * co] = dst[2 * co + 1] = float(beta) * src[co];
      }
    }
  std::vector<float> img, sq;
  pair_image(v, nullptr, g.B, g.H, g.W, C, Hp, Wq, g.py, g.px, img, sq);
  const PairPass q{g.B, g.Ho, g.Wo, Hp, Wq, g.sy, C, Co, nt, img.data(), sq.data(), w2.data(), toff.data(),
                   poff.data(), float(beta * beta)};
  conv_pairs_run<false>(q, tp, up, nullptr);
}

// the stride-1 dv by pairs (float32, C <= 8): the transposed convolution of dt (zero-padded by kh-1-py rows and
// kw-1-px columns) with the flipped taps, then dv = 2 beta^2 (box sum of dU) v + that
void conv_dv_pairs_run(const ConvGeom& g, const float* gt, const float* gU, const float* v, const float* zp,
                       double beta, float* dvp) {
  const int64_t C = g.C, Co = g.Co, nt = g.kh * g.kw;
  const int64_t npr = (g.W + 1) / 2;
  const int64_t Hg = g.H + g.kh - 1, Wg = std::max<int64_t>(g.Wo + g.kw - 1, 2 * npr + g.kw);
  std::vector<float> w2((size_t)(nt * Co * 16), 0.f);
  std::vector<int64_t> toff(nt), poff(nt);
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      toff[ky * g.kw + kx] = (g.kh - 1 - ky) * Wg + (g.kw - 1 - kx);
      poff[ky * g.kw + kx] = (g.kh - 1 - ky) * Co * Wg + (g.kw - 1 - kx);
      for (int64_t ci = 0; ci < C; ++ci) {
        const float* src = zp + ((ci * g.kh + ky) * g.kw + kx) * Co;
        for (int64_t co = 0; co < Co; ++co) {
          float* dst = w2.data() + ((ky * g.kw + kx) * Co + co) * 16;
          dst[2 * ci] = dst[2 * ci + 1] = float(beta) * src[co];
        }
      }
    }
  std::vector<float> img, sq;
  pair_image(gt, gU, g.B, g.Ho, g.Wo, Co, Hg, Wg, g.kh - 1 - g.py, g.kw - 1 - g.px, img, sq);
  const PairPass q{g.B, g.H, g.W, Hg, Wg, 1, Co, C, nt, img.data(), sq.data(), w2.data(), toff.data(),
                   poff.data(), float(2 * beta * beta)};
  conv_pairs_run<true>(q, dvp, nullptr, v);
}

// dz by pairs (float32, C >= 4, C_out <= 8, column stride 1): two consecutive output pixels (ox, ox + 1) of a row share
// one vector, lanes interleaved as in conv_pairs (lane 2k: the first pixel's dt channel k, 2k + 1: the
// second's), so that one FMA serves both; the input pixels the pair reads through tap (ky, kx) are consecutive in
// the channel-planar padded image (one 8-byte broadcast per channel, no bounds checks).  A row's odd last pixel
// is a pair whose second lanes are masked off (masked FMAs keep them at zero).  Accumulators: CB channels x 2
// pairs per (tap, channel block), in registers across a chunk's pairs; per fixed chunk of pairs (chunks_for,
// whatever the thread count) partial sums [tap][C][16], added in chunk order, then the two lanes of each channel:
// the same bits with any number of threads (a different summation order from conv_bwd_dz_rows).
// (at least 4 input channels: with fewer, the padded copies cost more than the pairs save -- 1 -> 8 at the digits
// shape measured 0.9x)
// GEOOPS_POINCARE_CONV_DZ_PAIRS=0 (read per call) forces conv_bwd_dz_rows (what fewer than 4 input or more than 8
// output channels, float64 and strided columns run), so that the tests compare the two.
inline bool conv_dz_pairs_on(int64_t cin, int64_t cout) {
  return cin >= 4 && cout <= 8 && !knobs::off("GEOOPS_POINCARE_CONV_DZ_PAIRS");
}

template <int CB>
void dz_pairs_block(const float* img, int64_t Wq, const float* dtp, const int64_t* pb, const __mmask16* pm,
                    int64_t i0, int64_t i1, int64_t off, float* dst) {
  __m512 acc[2][CB];
  for (int u = 0; u < 2; ++u)
    for (int i = 0; i < CB; ++i) acc[u][i] = _mm512_setzero_ps();
  int64_t it = i0;
  for (; it + 2 <= i1; it += 2) {
    for (int u = 0; u < 2; ++u) {
      const __m512 d = _mm512_loadu_ps(dtp + (it + u) * 16);
      const float* src = img + pb[it + u] + off;
      const __mmask16 mk = pm[it + u];
      for (int i = 0; i < CB; ++i) {
        double pr;
        std::memcpy(&pr, src + i * Wq, sizeof(double));
        acc[u][i] = _mm512_mask3_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pr)), d, acc[u][i], mk);
      }
    }
  }
  for (; it < i1; ++it) {
    const __m512 d = _mm512_loadu_ps(dtp + it * 16);
    const float* src = img + pb[it] + off;
    const __mmask16 mk = pm[it];
    for (int i = 0; i < CB; ++i) {
      double pr;
      std::memcpy(&pr, src + i * Wq, sizeof(double));
      acc[0][i] = _mm512_mask3_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pr)), d, acc[0][i], mk);
    }
  }
  for (int i = 0; i < CB; ++i)
    _mm512_storeu_ps(dst + i * 16, _mm512_add_ps(_mm512_loadu_ps(dst + i * 16), _mm512_add_ps(acc[0][i], acc[1][i])));
}

void conv_dz_pairs_run(const ConvGeom& g, const float* gt, const float* v, double beta, float* dzp) {
  const int64_t C = g.C, Co = g.Co, nt = g.kh * g.kw;
  const int64_t npr = (g.Wo + 1) / 2;
  const int64_t Hp = g.H + 2 * g.py, Wq = std::max<int64_t>(g.W + 2 * g.px, 2 * npr + g.kw);
  std::vector<float> img, sq;
  pair_image(v, nullptr, g.B, g.H, g.W, C, Hp, Wq, g.py, g.px, img, sq);
  const int64_t NI = g.B * g.Ho * npr;  // pairs: output row r = (b, oy), pair p
  std::vector<float> dtp((size_t)(NI * 16));
  std::vector<int64_t> pb((size_t)NI);
  std::vector<__mmask16> pm((size_t)NI);
  const __m512i inter = _mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
  const __mmask8 cmask = __mmask8((1u << Co) - 1u);
  for (int64_t it = 0; it < NI; ++it) {
    const int64_t r = it / npr, ox = 2 * (it % npr), oy = r % g.Ho, b = r / g.Ho;
    const bool two = ox + 1 < g.Wo;
    const float* gr = gt + (r * g.Wo + ox) * Co;
    const __m512 d = (two && Co == 8)
                         ? _mm512_loadu_ps(gr)
                         : _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(cmask, gr)),
                                              _mm256_maskz_loadu_ps(two ? cmask : 0, gr + Co), 1);
    _mm512_storeu_ps(dtp.data() + it * 16, _mm512_permutexvar_ps(inter, d));
    pb[it] = (b * Hp + oy * g.sy) * C * Wq + ox;
    pm[it] = two ? __mmask16(0xFFFF) : __mmask16(0x5555);
  }
  const int64_t nch = chunks_for(NI * nt * C, NI);
  const int64_t K = nt * C;
  std::vector<float> part((size_t)(nch * K * 16), 0.f);
  constexpr int64_t kCache = 256;  // pairs per pass over the taps (16 KiB of dt pairs stay in L1)
  auto work = [&](int64_t ch) {
    const int64_t a0 = NI * ch / nch, a1 = NI * (ch + 1) / nch;
    float* pc = part.data() + ch * K * 16;
    for (int64_t c0 = a0; c0 < a1; c0 += kCache) {
      const int64_t c1 = std::min(a1, c0 + kCache);
      for (int64_t ky = 0; ky < g.kh; ++ky)
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t k = ky * g.kw + kx;
          float* dst = pc + k * C * 16;
          int64_t ci = 0;
          for (; ci + 8 <= C; ci += 8)
            dz_pairs_block<8>(img.data(), Wq, dtp.data(), pb.data(), pm.data(), c0, c1, ky * C * Wq + kx + ci * Wq, dst + ci * 16);
          for (; ci + 4 <= C; ci += 4)
            dz_pairs_block<4>(img.data(), Wq, dtp.data(), pb.data(), pm.data(), c0, c1, ky * C * Wq + kx + ci * Wq, dst + ci * 16);
          for (; ci < C; ++ci)
            dz_pairs_block<1>(img.data(), Wq, dtp.data(), pb.data(), pm.data(), c0, c1, ky * C * Wq + kx + ci * Wq, dst + ci * 16);
        }
    }
  };
  if (nch == 1) work(0);
  else at::parallel_for(0, nch, 1, [&](int64_t i0, int64_t i1) { for (int64_t i = i0; i < i1; ++i) work(i); });
  // dz[(ci, ky, kx), co] = beta (sum over chunks, in order, of lane 2co + lane 2co + 1)
  for (int64_t ci = 0; ci < C; ++ci)
    for (int64_t k = 0; k < nt; ++k) {
      float* dst = dzp + (ci * nt + k) * Co;
      for (int64_t co = 0; co < Co; ++co) {
        float s0 = 0.f, s1 = 0.f;
        for (int64_t ch = 0; ch < nch; ++ch) {
          const float* pc = part.data() + (ch * K + k * C + ci) * 16;
          s0 += pc[2 * co];
          s1 += pc[2 * co + 1];
        }
        dst[co] = float(beta) * (s0 + s1);
      }
    }
}
#endif

// dv for stride 1 of the input rows r = (b, iy) in [r0, r1): the transposed convolution of the zero-padded dt
// image gp [B][Hg][Wg][Co] (dt[b, oy, ox] at (oy + kh-1-py, ox + kw-1-px)), in blocks of P input columns.
template <typename T, int NV, int P>
void conv_bwd_dv_rows_s1(const ConvGeom& g, const T* gp, const T* up, int64_t Hg, int64_t Wg, const T* v,
                         const T* wt, int64_t Cip, T twobeta2, T* dv, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t C = g.C, Co = g.Co;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t iy = r % g.H, b = r / g.H;
    for (int64_t ix0 = 0; ix0 < g.W; ix0 += P) {
      V acc[P][NV];
      for (int p = 0; p < P; ++p)
        for (int j = 0; j < NV; ++j) acc[p][j] = V(T(0));
      T gs[P] = {};
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t grow = (b * Hg + iy + g.kh - 1 - ky) * Wg;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t c0 = grow + ix0 + g.kw - 1 - kx;
          const T* base = gp + c0 * Co;
          for (int p = 0; p < P; ++p) gs[p] += up[c0 + p];
          const T* wr = wt + (ky * g.kw + kx) * Co * Cip;
          tap_fma<T, NV, P>(acc, base, Co, wr, Cip, Co);
        }
      }
      const int np = static_cast<int>(std::min<int64_t>(P, g.W - ix0));
      const int64_t q0 = r * g.W + ix0;
      for (int p = 0; p < np; ++p) {
        const T* vr = v + (q0 + p) * C;
        T* dr = dv + (q0 + p) * C;
        const V f(twobeta2 * gs[p]);
        for (int j = 0; j < NV; ++j) {
          const int64_t n = std::min<int64_t>(VS, C - j * VS);
          if (n == VS) at::vec::fmadd(f, V::loadu(vr + j * VS), acc[p][j]).store(dr + j * VS);
          else
            at::vec::fmadd(f, V::loadu(vr + j * VS, static_cast<int>(n)), acc[p][j]).store(dr + j * VS,
                                                                                          static_cast<int>(n));
        }
      }
    }
  }
}

// dv of the input rows [q0, q1): NV vectors of input channels in registers; a gather over the outputs that read
// each pixel (tap (ky, kx) of output (oy, ox) reads iy = oy*sy - py + ky).
template <typename T, int NV>
void conv_bwd_dv_rows(const ConvGeom& g, const T* gt, const T* gU, const T* v, const T* wt, int64_t Cip,
                      T twobeta2, T* dv, int64_t q0, int64_t q1) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t C = g.C, Co = g.Co;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t ix = q % g.W, r = q / g.W, iy = r % g.H, b = r / g.H;
    V acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = V(T(0));
    T gs = 0;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t ty = iy + g.py - ky;
      if (ty < 0 || ty % g.sy != 0) continue;
      const int64_t oy = ty / g.sy;
      if (oy >= g.Ho) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t tx = ix + g.px - kx;
        if (tx < 0 || tx % g.sx != 0) continue;
        const int64_t ox = tx / g.sx;
        if (ox >= g.Wo) continue;
        const int64_t o = (b * g.Ho + oy) * g.Wo + ox;
        const T* gr = gt + o * Co;
        const T* wr = wt + (ky * g.kw + kx) * Co * Cip;
        gs += gU[o];
        for (int64_t co = 0; co < Co; ++co) {
          const V a(gr[co]);
          for (int j = 0; j < NV; ++j) acc[j] = at::vec::fmadd(a, V::loadu(wr + co * Cip + j * VS), acc[j]);
        }
      }
    }
    const T* vr = v + q * C;
    T* dr = dv + q * C;
    const V f(twobeta2 * gs);
    for (int j = 0; j < NV; ++j) {
      const int64_t n = std::min<int64_t>(VS, C - j * VS);
      if (n == VS) {
        at::vec::fmadd(f, V::loadu(vr + j * VS), acc[j]).store(dr + j * VS);
      } else if (n > 0) {
        at::vec::fmadd(f, V::loadu(vr + j * VS, static_cast<int>(n)), acc[j]).store(dr + j * VS, static_cast<int>(n));
      }
    }
  }
}

// dz partial sums over the output rows [o0, o1) of tap (ky, kx) and input channels [ci0, ci0 + CB) into
// dst [C][Cop] (the tap's block of the partials): U pixels x CB channels x NV vectors of accumulators held in
// registers across all the rows (independent chains), added into dst once.  gr: the dt rows (stride gs); MASK:
// their last vector is partial (gs = C_out < NV*VS: masked loads of the unpadded rows, no padded copy).
template <typename T, int NV, int CB, bool MASK>
void conv_bwd_dz_block(const ConvGeom& g, const T* gr, int64_t gs, const T* v, int64_t ci0, int64_t ky,
                       int64_t kx, int64_t o0, int64_t o1, T* dst, int64_t Cop) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int tail = static_cast<int>(g.Co - (NV - 1) * VS);
  auto load_dt = [&](V (&gv)[NV], const T* gp) {
    for (int j = 0; j < NV; ++j) gv[j] = (MASK && j == NV - 1) ? V::loadu(gp + j * VS, tail) : V::loadu(gp + j * VS);
  };
  constexpr int U = std::max(1, std::min(8, 24 / (CB * NV)));
  const int64_t C = g.C;
  V acc[U][CB][NV];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < CB; ++i)
      for (int j = 0; j < NV; ++j) acc[u][i][j] = V(T(0));
  int64_t lo0, hi0;
  ox_range(g, kx, lo0, hi0);
  const int64_t r0 = o0 / g.Wo, r1 = (o1 + g.Wo - 1) / g.Wo;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oy = r % g.Ho, b = r / g.Ho;
    const int64_t iy = oy * g.sy - g.py + ky;
    if (iy < 0 || iy >= g.H) continue;
    const int64_t lo = std::max(lo0, o0 - r * g.Wo), hi = std::min(hi0, o1 - r * g.Wo);
    const T* vrow = v + (b * g.H + iy) * g.W * C + ci0;  // tap of pixel ox: vrow + (ox*sx - px + kx)*C
    const T* grow = gr + r * g.Wo * gs;
    int64_t ox = lo;
    for (; ox + U <= hi; ox += U) {
      for (int u = 0; u < U; ++u) {
        const T* gp = grow + (ox + u) * gs;
        const T* vr = vrow + ((ox + u) * g.sx - g.px + kx) * C;
        V gv[NV];
        load_dt(gv, gp);
        for (int i = 0; i < CB; ++i) {
          const V a(vr[i]);
          for (int j = 0; j < NV; ++j) acc[u][i][j] = at::vec::fmadd(a, gv[j], acc[u][i][j]);
        }
      }
    }
    for (; ox < hi; ++ox) {
      const T* gp = grow + ox * gs;
      const T* vr = vrow + (ox * g.sx - g.px + kx) * C;
      V gv[NV];
      load_dt(gv, gp);
      for (int i = 0; i < CB; ++i) {
        const V a(vr[i]);
        for (int j = 0; j < NV; ++j) acc[0][i][j] = at::vec::fmadd(a, gv[j], acc[0][i][j]);
      }
    }
  }
  for (int i = 0; i < CB; ++i)
    for (int j = 0; j < NV; ++j) {
      V s = acc[0][i][j];
      for (int u = 1; u < U; ++u) s = s + acc[u][i][j];
      T* d = dst + (ci0 + i) * Cop + j * VS;
      (V::loadu(d) + s).store(d);
    }
}

// dz partial sums over the output rows [o0, o1) into dzp [kh*kw][C][Cop]: per tap, channel blocks of CB (the
// widest that fits the registers), then 4, then single channels for the rest.
// The rows run in chunks of `chunk` output pixels (all taps and channel blocks of a chunk before the next), so
// that the chunk's dt rows and the input rows its taps read stay in L1 across the kh*kw*C/CB passes; one chunk
// over the whole range re-reads both from L2/L3 once per pass (3.5x the FMA time at 32x32 with 16 channels).
template <typename T, int NV, bool MASK>
void conv_bwd_dz_rows(const ConvGeom& g, const T* gr, int64_t gs, const T* v, int64_t Cop, T* dzp, int64_t o0,
                      int64_t o1, int64_t chunk) {
  constexpr int CB = NV == 1 ? 8 : NV == 2 ? 4 : 2;
  for (int64_t c0 = o0; c0 < o1; c0 += chunk) {
    const int64_t c1 = std::min(o1, c0 + chunk);
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        T* dst = dzp + (ky * g.kw + kx) * g.C * Cop;
        int64_t ci = 0;
        for (; ci + CB <= g.C; ci += CB) conv_bwd_dz_block<T, NV, CB, MASK>(g, gr, gs, v, ci, ky, kx, c0, c1, dst, Cop);
        if constexpr (CB > 4) {
          for (; ci + 4 <= g.C; ci += 4) conv_bwd_dz_block<T, NV, 4, MASK>(g, gr, gs, v, ci, ky, kx, c0, c1, dst, Cop);
        }
        for (; ci < g.C; ++ci) conv_bwd_dz_block<T, NV, 1, MASK>(g, gr, gs, v, ci, ky, kx, c0, c1, dst, Cop);
      }
  }
}

// Output pixels per dz chunk: whole output rows covering about 16 KiB of dt rows (stride gs).
int64_t dz_chunk(const ConvGeom& g, int64_t gs, size_t elt) {
  const int64_t px = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, gs * (int64_t)elt));
  return std::max<int64_t>(1, (px + g.Wo - 1) / g.Wo) * g.Wo;
}

template <typename T>
int nvec(int64_t n) {
  return static_cast<int>((n + Vectorized<T>::size() - 1) / Vectorized<T>::size());
}

#define GEOOPS_CONV_P_SWITCH(p, NAME, ...)                            \
  switch (p) {                                                        \
    case 12: { constexpr int NAME = 12; __VA_ARGS__; break; }         \
    case 8: { constexpr int NAME = 8; __VA_ARGS__; break; }           \
    default: { constexpr int NAME = 4; __VA_ARGS__; break; }          \
  }

#define GEOOPS_CONV_NV_SWITCH(nv, NAME, ...)                          \
  switch (nv) {                                                       \
    case 1: { constexpr int NAME = 1; __VA_ARGS__; break; }           \
    case 2: { constexpr int NAME = 2; __VA_ARGS__; break; }           \
    case 3: { constexpr int NAME = 3; __VA_ARGS__; break; }           \
    default: { constexpr int NAME = 4; __VA_ARGS__; break; }          \
  }

ConvGeom make_geom(const at::Tensor& v, const at::Tensor& z, int64_t B, int64_t H, int64_t W, int64_t kh,
                   int64_t kw, int64_t py, int64_t px, int64_t sy, int64_t sx) {
  TORCH_CHECK(v.dim() == 2 && v.is_contiguous(), "poincare_conv2d direct: v must be contiguous (B*H*W, C) rows");
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous() && z.scalar_type() == v.scalar_type(),
              "poincare_conv2d direct: z must be contiguous (C*kh*kw, C_out) of v's dtype");
  TORCH_CHECK(kh > 0 && kw > 0 && sy > 0 && sx > 0 && py >= 0 && px >= 0, "poincare_conv2d direct: bad geometry");
  ConvGeom g{B, H, W, v.size(1), z.size(1), kh, kw, py, px, sy, sx, 0, 0};
  TORCH_CHECK(v.size(0) == B * H * W, "poincare_conv2d direct: v has ", v.size(0), " rows, expected B*H*W = ",
              B * H * W);
  TORCH_CHECK(z.size(0) == g.C * kh * kw, "poincare_conv2d direct: z must have C*kh*kw rows");
  g.Ho = (H + 2 * py - kh) / sy + 1;
  g.Wo = (W + 2 * px - kw) / sx + 1;
  TORCH_CHECK(H + 2 * py >= kh && W + 2 * px >= kw, "poincare_conv2d direct: kernel larger than the padded image");
  const int64_t VS = v.scalar_type() == at::kDouble ? Vectorized<double>::size() : Vectorized<float>::size();
  TORCH_CHECK(g.Co <= 4 * VS && g.C <= 4 * VS, "poincare_conv2d direct: at most ", 4 * VS,
              " input and output channels, got ", g.C, " -> ", g.Co);
  return g;
}

// The backward of PoincareConv2dFn's logmap0 of its pixel rows (stereo_math.h's LOGMAP0, k = -c): v = A x with
// A = atanc(z, 1 + z), z = k |x|^2, so dx = A dv + 2 k A' <x, dv> x and the row's dk = A' <x, dv> |x|^2, A' =
// d atanc / dz.  The stereographic backward recomputes atanc (a log1p per row) and its derivative; here A comes
// from the forward's output, A = <v, x> / |x|^2 (to the rounding of v), and A' = stereo::atanc_d = ((q > 0 ? 1/q : 0)
// - A) / (2z) (the forward's rule: q <= 0, outside the ball, is clamped and has no 1/q term; session 49) -- or its
// Taylor series for |z| < 0.05, where that difference cancels (terms to z^13: truncation < 1e-17
// relative) -- so the pass has no transcendental: per row three dot products in double (x.x, v.x, x.dv, j
// ascending, explicit fma: the same bits wherever the row lies and whatever the thread count), the row scalars in
// double, and dx = fma(A, dv, (2 k A' <x, dv>) x) in the rows' type.  Beyond the series, A's rounding error
// (float v: ~2-3e-7 relative) enters A' amplified by at most A / |1/q - A| <= 30, and A' enters dx weighted by
// 2 |z| |<x, dv>| <= 2 |z| |x| |dv|: dx within ~2-3 float roundings (the stereographic float backward: ~1).
// When dk is asked for (a learnable curvature), A' is its main term: A then comes from atanc itself (log1p).
constexpr double kLogSeriesCut = 0.05;

// exact: A by atanc itself (a log1p per row) where the series does not apply -- for dk, in which A' is the main
// term (A's rounding from v would enter it amplified up to 30x)
inline void logmap0_bwd_scalars(double xx, double vx, double xg, double k, bool exact, double& a, double& f,
                                double& dk) {
  const double z = k * xx, q = 1.0 + z;
  a = xx > 0 ? vx / xx : 1.0;
  double ad;
  if (std::fabs(z) < kLogSeriesCut) {  // d/dz sum (-1)^n z^n / (2n + 1) = sum_{n>=1} (-1)^n n z^(n-1) / (2n + 1)
    ad = 0;
    for (int n = 14; n >= 1; --n) ad = std::fma(ad, z, (n % 2 ? -1.0 : 1.0) * n / (2 * n + 1));
  } else {  // |z| >= 0.05, above stereo_math.h's series cut: its closed forms, its clamp of q (clamp_q)
    if (exact) a = stereo::atanc(z, q);
    ad = stereo::atanc_d(z, q, a);
  }
  f = 2.0 * k * ad * xg;
  dk = ad * xg * xx;
}

#if defined(CPU_CAPABILITY_AVX2)
// AVX2 (session 29): logmap0_rows_bwd's three row sums of nb <= 16 float rows (stride C), 8 rows per vector: the
// rows' columns 8 at a time by one 8 x 8 transpose (paths::rows_to_cols8), each column widened to two vectors of 4
// doubles and fma'd into the lanes, j ascending: the scalar loop's fmas in its order (the same bits).
// GEOOPS_POINCARE_LOGMAP0_TR8=0 (read per call): the scalar loop.
inline void logmap0_sums_tr8(const float* x, const float* v, const float* g, int64_t C, int64_t nb, double* xx,
                             double* vx, double* xg) {
  for (int64_t r0 = 0; r0 < nb; r0 += 8) {
    const int nl = int(std::min<int64_t>(8, nb - r0));
    __m256d s[3][2];
    for (auto& h : s) h[0] = h[1] = _mm256_setzero_pd();
    for (int64_t d0 = 0; d0 < C; d0 += 8) {
      const int64_t n = std::min<int64_t>(8, C - d0);
      __m256 xc[8], vc[8], gc[8];
      paths::rows_to_cols8(x + r0 * C + d0, C, nl, n, xc);
      paths::rows_to_cols8(v + r0 * C + d0, C, nl, n, vc);
      paths::rows_to_cols8(g + r0 * C + d0, C, nl, n, gc);
      for (int64_t d = 0; d < n; ++d) {
        const __m256d xh[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(xc[d])), _mm256_cvtps_pd(_mm256_extractf128_ps(xc[d], 1))};
        const __m256d vh[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(vc[d])), _mm256_cvtps_pd(_mm256_extractf128_ps(vc[d], 1))};
        const __m256d gh[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(gc[d])), _mm256_cvtps_pd(_mm256_extractf128_ps(gc[d], 1))};
        for (int h = 0; h < 2; ++h) {
          s[0][h] = _mm256_fmadd_pd(xh[h], xh[h], s[0][h]);
          s[1][h] = _mm256_fmadd_pd(vh[h], xh[h], s[1][h]);
          s[2][h] = _mm256_fmadd_pd(xh[h], gh[h], s[2][h]);
        }
      }
    }
    double* outs[3] = {xx + r0, vx + r0, xg + r0};
    for (int t = 0; t < 3; ++t) {
      _mm256_storeu_pd(outs[t], s[t][0]);
      _mm256_storeu_pd(outs[t] + 4, s[t][1]);
    }
  }
}
#endif

template <typename T>
void logmap0_rows_bwd(const T* g, const T* x, const T* v, T* dx, T* dk, int64_t i0, int64_t i1, int64_t C,
                      double k) {
  constexpr int64_t R = 16;
  double xx[R], vx[R], xg[R];
#if defined(CPU_CAPABILITY_AVX2)
  const bool tr8 = std::is_same_v<T, float> && !knobs::off("GEOOPS_POINCARE_LOGMAP0_TR8");
#endif
  for (int64_t b0 = i0; b0 < i1; b0 += R) {
    const int64_t nb = std::min<int64_t>(R, i1 - b0);
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {  // 16 rows per vector: column gathers, sums in double lanes
      const __mmask16 mk = nb >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nb) - 1u);
      const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(int(C)));
      __m512d s[3][2];
      for (auto& h : s) h[0] = h[1] = _mm512_setzero_pd();
      const float *xb = x + b0 * C, *vb = v + b0 * C, *gb = g + b0 * C;
      for (int64_t j = 0; j < C; ++j) {
        const __m512 xj = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, xb + j, 4);
        const __m512 vj = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, vb + j, 4);
        const __m512 gj = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, gb + j, 4);
        const __m512d xl = _mm512_cvtps_pd(_mm512_castps512_ps256(xj)), xh = _mm512_cvtps_pd(_mm512_extractf32x8_ps(xj, 1));
        s[0][0] = _mm512_fmadd_pd(xl, xl, s[0][0]);
        s[0][1] = _mm512_fmadd_pd(xh, xh, s[0][1]);
        s[1][0] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(vj)), xl, s[1][0]);
        s[1][1] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(vj, 1)), xh, s[1][1]);
        s[2][0] = _mm512_fmadd_pd(xl, _mm512_cvtps_pd(_mm512_castps512_ps256(gj)), s[2][0]);
        s[2][1] = _mm512_fmadd_pd(xh, _mm512_cvtps_pd(_mm512_extractf32x8_ps(gj, 1)), s[2][1]);
      }
      double* outs[3] = {xx, vx, xg};
      for (int t = 0; t < 3; ++t) {
        _mm512_storeu_pd(outs[t], s[t][0]);
        _mm512_storeu_pd(outs[t] + 8, s[t][1]);
      }
    } else
#elif defined(CPU_CAPABILITY_AVX2)
    if (tr8) {  // float rows only
      if constexpr (std::is_same_v<T, float>) logmap0_sums_tr8(x + b0 * C, v + b0 * C, g + b0 * C, C, nb, xx, vx, xg);
    } else
#endif
    {
      for (int64_t i = 0; i < nb; ++i) {
        const T *xr = x + (b0 + i) * C, *vr = v + (b0 + i) * C, *gr = g + (b0 + i) * C;
        double a = 0, b = 0, d = 0;
        for (int64_t j = 0; j < C; ++j) {
          a = std::fma(double(xr[j]), double(xr[j]), a);
          b = std::fma(double(vr[j]), double(xr[j]), b);
          d = std::fma(double(xr[j]), double(gr[j]), d);
        }
        xx[i] = a, vx[i] = b, xg[i] = d;
      }
    }
    for (int64_t i = 0; i < nb; ++i) {
      double a, f, dki;
      logmap0_bwd_scalars(xx[i], vx[i], xg[i], k, dk != nullptr, a, f, dki);
      if (dx) {
        const T *xr = x + (b0 + i) * C, *gr = g + (b0 + i) * C;
        T* o = dx + (b0 + i) * C;
        const T at = T(a), ft = T(f);
        for (int64_t j = 0; j < C; ++j) o[j] = std::fma(at, gr[j], ft * xr[j]);
      }
      if (dk) dk[b0 + i] = T(dki);
    }
  }
}

}  // namespace

bool poincare_conv2d_direct_ok(int64_t C, int64_t Co, bool dbl) {
  const int64_t VS = dbl ? Vectorized<double>::size() : Vectorized<float>::size();
  return C >= 1 && Co >= 1 && C <= 4 * VS && Co <= 4 * VS;
}

std::tuple<at::Tensor, at::Tensor> poincare_conv2d_fwd_cpu(const at::Tensor& v, const at::Tensor& z, int64_t B,
                                                           int64_t H, int64_t W, int64_t kh, int64_t kw,
                                                           int64_t py, int64_t px, int64_t sy, int64_t sx,
                                                           double beta) {
  const ConvGeom g = make_geom(v, z, B, H, W, kh, kw, py, px, sy, sx);
  const int64_t No = g.B * g.Ho * g.Wo;
  at::Tensor t = at::empty({No, g.Co}, v.options());
  at::Tensor U = at::empty({No}, v.options());
#if defined(CPU_CAPABILITY_AVX512)
  if (v.scalar_type() == at::kFloat && g.sx == 1 && conv_pairs_on(g.Co)) {
    conv_fwd_pairs_run(g, v.data_ptr<float>(), z.data_ptr<float>(), beta, t.data_ptr<float>(), U.data_ptr<float>());
    return {t, U};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "poincare_conv2d_fwd_cpu", [&] {
    using T = scalar_t;
    const int64_t VS = Vectorized<T>::size();
    const int nv = nvec<T>(g.Co);
    const int64_t Cop = nv * VS;
    // wp [kh][kw][C][Cop] = beta z[(ci, ky, kx), :], zero-padded columns
    std::vector<T> wp((size_t)(g.kh * g.kw * g.C * Cop), T(0));
    const T* zp = z.data_ptr<T>();
    for (int64_t ci = 0; ci < g.C; ++ci)
      for (int64_t ky = 0; ky < g.kh; ++ky)
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const T* src = zp + ((ci * g.kh + ky) * g.kw + kx) * g.Co;
          T* dst = wp.data() + ((ky * g.kw + kx) * g.C + ci) * Cop;
          for (int64_t co = 0; co < g.Co; ++co) dst[co] = T(beta) * src[co];
        }
    // zero-padded pixel rows and squared norms, wide enough for whole blocks of P output columns
    const int P = pick_px(nv, g.Wo);
    const int64_t Hp = g.H + 2 * g.py, Wq = std::max<int64_t>(g.W + 2 * g.px, ((g.Wo + P - 1) / P * P - 1) * g.sx + g.kw);
    std::vector<T> vpad((size_t)(g.B * Hp * Wq * g.C), T(0)), spad((size_t)(g.B * Hp * Wq), T(0));
    const T* vsrc = v.data_ptr<T>();
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t iy = 0; iy < g.H; ++iy)
        for (int64_t ix = 0; ix < g.W; ++ix) {
          const int64_t d = (b * Hp + iy + g.py) * Wq + ix + g.px;
          const T* src = vsrc + ((b * g.H + iy) * g.W + ix) * g.C;
          T s2 = 0;
          for (int64_t ci = 0; ci < g.C; ++ci) {
            vpad[d * g.C + ci] = src[ci];
            s2 += src[ci] * src[ci];
          }
          spad[d] = s2;
        }
    T* tp = t.data_ptr<T>();
    T* up = U.data_ptr<T>();
    const T b2 = T(beta * beta);
    const int64_t per = g.Wo * g.kh * g.kw * g.C * nv;
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(per, 1));
    at::parallel_for(0, g.B * g.Ho, grain, [&](int64_t r0, int64_t r1) {
      GEOOPS_CONV_NV_SWITCH(nv, NV, GEOOPS_CONV_P_SWITCH(P, PX, conv_fwd_rows<T, NV, PX>(
          g, vpad.data(), spad.data(), Hp, Wq, wp.data(), Cop, b2, tp, up, r0, r1)))
    });
  });
  return {t, U};
}

std::tuple<at::Tensor, at::Tensor> poincare_conv2d_bwd_cpu(const at::Tensor& gt, const at::Tensor& gU,
                                                           const at::Tensor& v, const at::Tensor& z, int64_t B,
                                                           int64_t H, int64_t W, int64_t kh, int64_t kw,
                                                           int64_t py, int64_t px, int64_t sy, int64_t sx,
                                                           double beta, bool need_dv, bool need_dz) {
  const ConvGeom g = make_geom(v, z, B, H, W, kh, kw, py, px, sy, sx);
  const int64_t No = g.B * g.Ho * g.Wo, Ni = g.B * g.H * g.W;
  TORCH_CHECK(gt.is_contiguous() && gt.dim() == 2 && gt.size(0) == No && gt.size(1) == g.Co &&
                  gt.scalar_type() == v.scalar_type(),
              "poincare_conv2d direct: dt must be contiguous (B*Ho*Wo, C_out) of v's dtype");
  TORCH_CHECK(!need_dv || (gU.is_contiguous() && gU.numel() == No && gU.scalar_type() == v.scalar_type()),
              "poincare_conv2d direct: dU must be contiguous with B*Ho*Wo entries of v's dtype");
  at::Tensor dv = need_dv ? at::empty({Ni, g.C}, v.options()) : at::Tensor();
  at::Tensor dz = need_dz ? at::empty({g.C * g.kh * g.kw, g.Co}, v.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "poincare_conv2d_bwd_cpu", [&] {
    using T = scalar_t;
    const int64_t VS = Vectorized<T>::size();
    const T* zp = z.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    const T* gtp = gt.data_ptr<T>();
    bool dv_pairs = false;  // the stride-1 dv by pairs (float32, C <= 8)
#if defined(CPU_CAPABILITY_AVX512)
    if (std::is_same_v<T, float> && need_dv && g.sy == 1 && g.sx == 1 && g.py < g.kh && g.px < g.kw &&
        conv_pairs_on(g.C)) {
      conv_dv_pairs_run(g, gt.data_ptr<float>(), gU.data_ptr<float>(), v.data_ptr<float>(), z.data_ptr<float>(),
                        beta, dv.data_ptr<float>());
      dv_pairs = true;
    }
#endif
    if (need_dv && !dv_pairs) {
      const int nvc = nvec<T>(g.C);
      const int64_t Cip = nvc * VS;
      // wt [kh][kw][Co][Cip] = beta z[(ci, ky, kx), co], zero-padded input channels
      std::vector<T> wt((size_t)(g.kh * g.kw * g.Co * Cip), T(0));
      for (int64_t ci = 0; ci < g.C; ++ci)
        for (int64_t ky = 0; ky < g.kh; ++ky)
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const T* src = zp + ((ci * g.kh + ky) * g.kw + kx) * g.Co;
            for (int64_t co = 0; co < g.Co; ++co) wt[((ky * g.kw + kx) * g.Co + co) * Cip + ci] = T(beta) * src[co];
          }
      const T* gup = gU.data_ptr<T>();
      T* dvp = dv.data_ptr<T>();
      const T tb2 = T(2 * beta * beta);
      const int64_t per = g.kh * g.kw * g.Co * nvc;
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(per, 1));
      if (g.sy == 1 && g.sx == 1 && g.py < g.kh && g.px < g.kw) {
        // zero-padded dt image and dU for the transposed convolution, wide enough for whole blocks of P columns
        const int P = pick_px(nvc, g.W);
        const int64_t oy0 = g.kh - 1 - g.py, ox0 = g.kw - 1 - g.px;
        const int64_t Hg = g.H + g.kh - 1, Wg = (g.W + P - 1) / P * P + g.kw - 1;
        std::vector<T> gpad((size_t)(g.B * Hg * Wg * g.Co), T(0)), upad((size_t)(g.B * Hg * Wg), T(0));
        for (int64_t b = 0; b < g.B; ++b)
          for (int64_t oy = 0; oy < g.Ho; ++oy) {
            const int64_t d = (b * Hg + oy + oy0) * Wg + ox0, o = (b * g.Ho + oy) * g.Wo;
            std::memcpy(&gpad[d * g.Co], gtp + o * g.Co, sizeof(T) * g.Wo * g.Co);
            std::memcpy(&upad[d], gup + o, sizeof(T) * g.Wo);
          }
        at::parallel_for(0, g.B * g.H, std::max<int64_t>(1, grain / std::max<int64_t>(g.W, 1)),
                         [&](int64_t r0, int64_t r1) {
          GEOOPS_CONV_NV_SWITCH(nvc, NV, GEOOPS_CONV_P_SWITCH(P, PX, conv_bwd_dv_rows_s1<T, NV, PX>(
              g, gpad.data(), upad.data(), Hg, Wg, vp, wt.data(), Cip, tb2, dvp, r0, r1)))
        });
      } else {
        at::parallel_for(0, Ni, grain, [&](int64_t q0, int64_t q1) {
          GEOOPS_CONV_NV_SWITCH(nvc, NV, conv_bwd_dv_rows<T, NV>(g, gtp, gup, vp, wt.data(), Cip, tb2, dvp, q0, q1))
        });
      }
    }
    bool dz_pairs = false;  // dz by pairs (float32, C >= 4, C_out <= 8, column stride 1)
#if defined(CPU_CAPABILITY_AVX512)
    if (std::is_same_v<T, float> && need_dz && g.sx == 1 && conv_dz_pairs_on(g.C, g.Co)) {
      conv_dz_pairs_run(g, gt.data_ptr<float>(), v.data_ptr<float>(), beta, dz.data_ptr<float>());
      dz_pairs = true;
    }
#endif
    if (need_dz && !dz_pairs) {
      const int nv = nvec<T>(g.Co);
      const int64_t Cop = nv * VS;
      const int64_t K = g.kh * g.kw * g.C;
      const int64_t nth = chunks_for(No * K * nv, No);  // partial sums per chunk (not per thread)
      std::vector<T> part((size_t)(nth * K * Cop), T(0));
      // the dt rows as they are (stride C_out): a partial last vector is read with masked loads
      const int64_t chunk = dz_chunk(g, g.Co, sizeof(T));
      auto work = [&](int64_t i) {
        const int64_t o0 = No * i / nth, o1 = No * (i + 1) / nth;
        T* pi = part.data() + i * K * Cop;
        if (g.Co == Cop) {
          GEOOPS_CONV_NV_SWITCH(nv, NV, conv_bwd_dz_rows<T, NV, false>(g, gtp, g.Co, vp, Cop, pi, o0, o1, chunk))
        } else {
          GEOOPS_CONV_NV_SWITCH(nv, NV, conv_bwd_dz_rows<T, NV, true>(g, gtp, g.Co, vp, Cop, pi, o0, o1, chunk))
        }
      };
      if (nth == 1) work(0);
      else at::parallel_for(0, nth, 1, [&](int64_t i0, int64_t i1) { for (int64_t i = i0; i < i1; ++i) work(i); });
      // dz[(ci, ky, kx), co] = beta sum of the partials at [ky][kx][ci][co]
      T* dzp = dz.data_ptr<T>();
      for (int64_t ci = 0; ci < g.C; ++ci)
        for (int64_t ky = 0; ky < g.kh; ++ky)
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            T* dst = dzp + ((ci * g.kh + ky) * g.kw + kx) * g.Co;
            const int64_t src = ((ky * g.kw + kx) * g.C + ci) * Cop;
            for (int64_t co = 0; co < g.Co; ++co) {
              T s = 0;
              for (int64_t i = 0; i < nth; ++i) s += part[i * K * Cop + src + co];
              dst[co] = T(beta) * s;
            }
          }
    }
  });
  return {dv, dz};
}


std::tuple<at::Tensor, at::Tensor> poincare_conv2d_logmap0_bwd_cpu(const at::Tensor& g, const at::Tensor& x,
                                                                   const at::Tensor& v, double c, bool need_dx,
                                                                   bool need_dk) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && g.is_contiguous() && v.is_contiguous() &&
                  g.sizes() == x.sizes() && v.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() &&
                  v.scalar_type() == x.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "poincare_conv2d logmap0 backward: g, x and v = logmap0(x) must be contiguous float32/64 (N, C) "
              "rows of one dtype");
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor dx = need_dx ? at::empty_like(x) : at::Tensor();
  at::Tensor dk = need_dk ? at::empty({N}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "poincare_conv2d_logmap0_bwd_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* dxp = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    scalar_t* dkp = need_dk ? dk.data_ptr<scalar_t>() : nullptr;
    // tasks of whole 16-row blocks (logmap0_rows_bwd's; the same blocks for any thread count: the same bits), about
    // 4096 elements of work each (a row's scalars cost a division and a series, ~8 plain elements' worth per
    // element): the digits CNN's 4096 rows of 8 split over 2 threads (they ran on one)
    constexpr int64_t R = 16;
    const int64_t nblk = (N + R - 1) / R;
    at::parallel_for(0, nblk, std::max<int64_t>(1, 4096 / (R * std::max<int64_t>(C, 1))), [&](int64_t b0, int64_t b1) {
      logmap0_rows_bwd<scalar_t>(gp, xp, vp, dxp, dkp, b0 * R, std::min(N, b1 * R), C, -c);
    });
  });
  return {dx, dk};
}


// The weight gradient dz = beta u^T dt of any convolution (PoincareConv2dFn's MKL-DNN path; oneDNN's own weight
// gradient splits the reduction over its threads, so its last bits depend on the thread count) as fixed GEMM
// tiles over shifted windows of the padded pixel rows -- no patch matrix.  The zero-padded image is cut into its
// sy*sx stride phases (phase (ry, rx): padded pixels (ry + sy i, rx + sx j)), each a (B*Hph*Wph, C) row matrix, and
// dt is scattered onto the same (B, Hph, Wph) grid (zero rows off the Ho x Wo outputs); tap (ky, kx) then reads
// phase (ky % sy, kx % sx) at grid row r + (ky / sy) Wph + kx / sx for the output at grid row r, so that its block of
// dz is ONE product A_tap^T dt with A_tap a row window of a phase (the padding rows of dt add zeros; the grid is
// ~13 % larger than Ho x Wo at 32 x 32 with padding 1).  The grid rows are cut into fixed chunks of `rows` (never the
// thread count); each (chunk, tap) tile is one single-threaded MKL call (fixed_gemm::tile_tn) into its own partial
// block, and the chunks' partials are summed in chunk order: the same bits with any number of threads.
at::Tensor poincare_conv2d_dz_cpu(const at::Tensor& gt, const at::Tensor& v, int64_t B, int64_t H, int64_t W,
                                  int64_t kh, int64_t kw, int64_t py, int64_t px, int64_t sy, int64_t sx,
                                  double beta, int64_t rows) {
  TORCH_CHECK(v.dim() == 2 && v.is_contiguous() && (v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble),
              "poincare_conv2d dz: v must be contiguous float32/64 (B*H*W, C) pixel rows");
  TORCH_CHECK(kh > 0 && kw > 0 && sy > 0 && sx > 0 && py >= 0 && px >= 0 && B >= 0 && H > 0 && W > 0,
              "poincare_conv2d dz: bad geometry");
  TORCH_CHECK(v.size(0) == B * H * W, "poincare_conv2d dz: v has ", v.size(0), " rows, expected B*H*W = ", B * H * W);
  const int64_t C = v.size(1), Hp = H + 2 * py, Wp = W + 2 * px;
  TORCH_CHECK(Hp >= kh && Wp >= kw, "poincare_conv2d dz: kernel larger than the padded image");
  const int64_t Ho = (Hp - kh) / sy + 1, Wo = (Wp - kw) / sx + 1;
  TORCH_CHECK(gt.dim() == 2 && gt.is_contiguous() && gt.size(0) == B * Ho * Wo && gt.scalar_type() == v.scalar_type(),
              "poincare_conv2d dz: dt must be contiguous (B*Ho*Wo, C_out) rows of v's dtype");
  const int64_t Co = gt.size(1), ntap = kh * kw;
  at::Tensor dz = at::empty({C * ntap, Co}, v.options());
  if (dz.numel() == 0) return dz;
  if (B == 0) return dz.zero_();
  const int64_t Hph = (Hp + sy - 1) / sy, Wph = (Wp + sx - 1) / sx, Np = B * Hph * Wph;
  const int64_t tail = (kh - 1) / sy * Wph + (kw - 1) / sx;  // the last windows' reach past the grid
  const int64_t nph = sy * sx, R = rows > 0 ? rows : 2048, nch = (Np + R - 1) / R;
  at::Tensor ph = at::zeros({nph, Np + tail, C}, v.options());
  at::Tensor dtg = at::zeros({Np, Co}, v.options());
  at::Tensor parts = at::empty({nch, ntap, C, Co}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "poincare_conv2d_dz_cpu", [&] {
    using T = scalar_t;
    const T* vp = v.data_ptr<T>();
    const T* gp = gt.data_ptr<T>();
    T* php = ph.data_ptr<T>();
    T* dgp = dtg.data_ptr<T>();
    at::parallel_for(0, B * H, std::max<int64_t>(1, 16384 / std::max<int64_t>(W * C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, iy = r % H + py;
        for (int64_t ix = 0; ix < W; ++ix) {
          const int64_t jx = ix + px;
          T* dst = php + ((iy % sy * sx + jx % sx) * (Np + tail) + (b * Hph + iy / sy) * Wph + jx / sx) * C;
          std::memcpy(dst, vp + (r * W + ix) * C, sizeof(T) * C);
        }
      }
    });
    at::parallel_for(0, B * Ho, std::max<int64_t>(1, 16384 / std::max<int64_t>(Wo * Co, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / Ho, oy = r % Ho;
        std::memcpy(dgp + (b * Hph + oy) * Wph * Co, gp + r * Wo * Co, sizeof(T) * Wo * Co);
      }
    });
    at::parallel_for(0, nch * ntap, 1, [&](int64_t t0, int64_t t1) {
      at::NoGradGuard no_grad;
      fixed_gemm::OneMklThread one;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t ch = t / ntap, tap = t % ntap, ky = tap / kw, kx = tap % kw;
        const at::Tensor a = ph[ky % sy * sx + kx % sx].narrow(0, ky / sy * Wph + kx / sx, Np);
        fixed_gemm::tile_tn<T>(parts.data_ptr<T>() + t * C * Co, a, dtg, ch * R, std::min(R, Np - ch * R), 0, Co);
      }
    });
    // dz[(ci, ky, kx), :] = beta sum_ch parts[ch, (ky, kx), ci, :], the chunks in order
    const T* pp = parts.data_ptr<T>();
    T* dzp = dz.data_ptr<T>();
    const int64_t E = ntap * C * Co;
    at::parallel_for(0, ntap * C, std::max<int64_t>(1, 8192 / Co), [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t tap = q / C, ci = q % C;
        T* o = dzp + (ci * ntap + tap) * Co;
        for (int64_t co = 0; co < Co; ++co) {
          T s = pp[q * Co + co];
          for (int64_t ch = 1; ch < nch; ++ch) s += pp[ch * E + q * Co + co];
          o[co] = T(beta) * s;
        }
      }
    });
  });
  return dz;
}

}  // namespace cpu
}  // namespace geoops
