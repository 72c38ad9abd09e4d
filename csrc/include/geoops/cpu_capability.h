// The at::vec ISA of a translation unit: include this FIRST (before any ATen header) in a .cpp file whose
// loops use at::vec::Vectorized (SLEEF exp/log1p/tanh/... on SIMD vectors).
//
// torch's headers default to the scalar fallback unless CPU_CAPABILITY names the ISA; this picks the one the
// native build targets (-march=native: AVX-512 or AVX2+FMA) and nothing under GEOOPS_PORTABLE=1.  The
// vectorised code lives in the inline namespace at::vec::<CPU_CAPABILITY>, so the choice does not leak into
// other translation units.  Not for headers: each .cpp decides for itself.
#pragma once

#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#endif

// GCC 12's AVX-512 intrinsics (_mm512_sqrt_pd, _mm512_max_pd, _mm512_cvtpd_ps, _mm512_cvtps_pd, _mm512_rcp14_ps, ...)
// pass _mm512_undefined_*() / _mm256_undefined_*() as the unused merge source, a self-initialised `__m512 __Y = __Y;`,
// which GCC 12 reports, once inlined into a kernel, as "'__Y' may be used uninitialized" / "is used uninitialized"
// (GCC bug 105593, its headers' own false positive: thousands of lines per build, pointing into avx512fintrin.h and
// avxintrin.h).  immintrin.h is included here, first, with those two warnings off for its own lines only: a pragma
// applies at a warning's location, so an uninitialised value of ours is still reported at our line (checked: a
// `__m512d v;` passed to _mm512_add_pd still warns, the __Y lines are gone).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12 && (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
