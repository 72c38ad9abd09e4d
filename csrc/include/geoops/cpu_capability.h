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
