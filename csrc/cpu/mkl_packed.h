// MKL's packed single-precision GEMM (cblas_sgemm_pack / cblas_sgemm_compute), resolved at run time.
//
// A loop of GEMMs that shares one operand (a row-blocked GEMM + epilogue: C_blk = X_blk op(Y) for every block of
// rows) makes MKL re-pack that operand on every call.  MKL's packed API packs it once.  torch's x86 CPU wheel
// links MKL statically into libtorch_cpu.so and exports these symbols, but ships no MKL header, and other builds
// (no MKL, ARM) lack them: this header declares the documented cblas ABI (LP64: int dimensions, the CBLAS enum
// values) itself and looks the functions up with dlsym once.  packed_sgemm() returns null when they are missing;
// callers then keep their at::mm path (also when GEOOPS_MKL_PACKED=0: packed_sgemm_for).  Users: the
// float32 cdist / mobius_matvec (stereographic_pairwise.cpp) and the Poincaré fc forward (poincare.cpp).  Also
// OneMklThread (MKL single-threaded on this thread) for the small GEMMs that kernels call inside their own threads.  Nothing here is needed to build or import the extension.
#pragma once

#include <ATen/ATen.h>

#include "knobs.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define GEOOPS_HAVE_DLSYM 1
#endif

namespace geoops {
namespace cpu {
namespace mkl_packed {

// CBLAS enum values (CBLAS_LAYOUT, CBLAS_TRANSPOSE, MKL's CBLAS_IDENTIFIER and CblasPacked).
enum : int {
  kRowMajor = 101,
  kNoTrans = 111,
  kTrans = 112,
  kPacked = 151,
  kAMatrix = 161,
  kBMatrix = 162,
};

struct SgemmApi {
  size_t (*get_size)(int identifier, int m, int n, int k);
  void (*pack)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src, int ld,
               float* dest);
  void (*compute)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda, const float* b,
                  int ldb, float beta, float* c, int ldc);
  int (*set_threads_local)(int nt);  // MKL_Set_Num_Threads_Local, the C entry (may be null): packing runs single-threaded
};

namespace detail {
inline void* find_symbol(const char* name) {
#ifdef GEOOPS_HAVE_DLSYM
  if (void* p = dlsym(RTLD_DEFAULT, name)) return p;
  // libtorch_cpu is usually loaded RTLD_LOCAL (outside the global scope): ask it by name (already loaded)
  static void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (torch_cpu) return dlsym(torch_cpu, name);
#endif
  (void)name;
  return nullptr;
}
}  // namespace detail

// The packed SGEMM functions, or null when this torch does not export them (looked up once).
inline const SgemmApi* packed_sgemm() {
  static const SgemmApi* api = []() -> const SgemmApi* {
    static SgemmApi a;
    a.get_size = reinterpret_cast<decltype(a.get_size)>(detail::find_symbol("cblas_sgemm_pack_get_size"));
    a.pack = reinterpret_cast<decltype(a.pack)>(detail::find_symbol("cblas_sgemm_pack"));
    a.compute = reinterpret_cast<decltype(a.compute)>(detail::find_symbol("cblas_sgemm_compute"));
    a.set_threads_local = reinterpret_cast<decltype(a.set_threads_local)>(detail::find_symbol("MKL_Set_Num_Threads_Local"));
    return (a.get_size && a.pack && a.compute) ? &a : nullptr;
  }();
  return api;
}

// MKL runs single-threaded on this thread while in scope (MKL_Set_Num_Threads_Local, thread-local; restored on
// exit).  For the BLAS calls of one parallel task: a team of one (one tile, a small `if` region, a lone worker) is
// not an active OpenMP region, so MKL would hand every small GEMM of the task to its own team -- a wake-up per call
// that, on a busy machine, waits for descheduled threads (a Gaunt gradcheck: 209 s of wall instead of 0.4 s) and,
// where MKL splits the reduction, changes the last bits with the thread count.  Inside a team of several MKL
// runs single-threaded anyway.  A no-op without MKL (other BLAS builds keep their own threading).
struct OneMklThread {
  using Fn = int (*)(int);
  Fn f;
  int prev = 0;
  explicit OneMklThread(bool on = true) : f(on ? fn() : nullptr) {
    if (f) prev = f(1);
  }
  ~OneMklThread() {
    if (f) f(prev);
  }
  OneMklThread(const OneMklThread&) = delete;
  OneMklThread& operator=(const OneMklThread&) = delete;
  static Fn fn() {
    static const Fn p = reinterpret_cast<Fn>(detail::find_symbol("MKL_Set_Num_Threads_Local"));
    return p;
  }
};

// Dimensions the LP64 interface can take.
inline bool fits_int(int64_t a, int64_t b, int64_t c) {
  const int64_t lim = std::numeric_limits<int>::max();
  return a <= lim && b <= lim && c <= lim;
}

// The API for a row-blocked GEMM of these sizes, or null (callers keep their at::mm path): no packed API in this
// torch, a size over int, or GEOOPS_MKL_PACKED=0 (read per call; same results to rounding): the at::mm path that
// builds without the packed API take, forced so that the tests run it here.
inline const SgemmApi* packed_sgemm_for(int64_t a, int64_t b, int64_t c) {
  if (knobs::off("GEOOPS_MKL_PACKED")) return nullptr;
  if (!fits_int(a, b, c)) return nullptr;
  return packed_sgemm();
}

// A float B operand packed once for C[m, n] = A[m, kd] op(B) (row-major), then used for any number of row
// blocks of A with at most m_max rows.  src is row-major: [kd, n] (trans = false) or [n, kd] (trans = true), with
// leading dimension ld.  The buffer is a float tensor (freed with it).
class PackedB {
 public:
  PackedB() = default;
  PackedB(const SgemmApi* api, bool trans, int64_t m_max, int64_t n, int64_t kd, const float* src, int64_t ld)
      : api_(api), n_(n), kd_(kd) {
    const size_t bytes = api->get_size(kBMatrix, int(m_max), int(n), int(kd));
    buf_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float)) + 16}, at::kFloat);
    // one thread: a copy of one operand; MKL's threads for it stalled at 2 threads on a loaded machine
    const int prev = api->set_threads_local ? api->set_threads_local(1) : 0;
    api->pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, int(m_max), int(n), int(kd), 1.f, src, int(ld),
              buf_.data_ptr<float>());
    if (api->set_threads_local) api->set_threads_local(prev);
  }
  // C[m, n] (leading dimension ldc) = beta C + A[m, kd] B (A row-major, leading dimension lda).
  void compute(int64_t m, const float* a, int64_t lda, float beta, float* c, int64_t ldc) const {
    api_->compute(kRowMajor, kNoTrans, kPacked, int(m), int(n_), int(kd_), a, int(lda), buf_.data_ptr<float>(),
                  int(kd_), beta, c, int(ldc));
  }
  bool valid() const { return api_ != nullptr; }

 private:
  const SgemmApi* api_ = nullptr;
  int64_t n_ = 0, kd_ = 0;
  at::Tensor buf_;
};

// C = A_blk op(B) for one block of rows (A_blk and C row-major with unit column stride): through the packed B when
// pk is a valid packing (float), else at::mm_out with Bop = op(B) (single-threaded inside a parallel region).
inline void block_gemm(const PackedB* pk, at::Tensor& C, const at::Tensor& Ablk, const at::Tensor& Bop) {
  if (pk && pk->valid() && C.scalar_type() == at::kFloat) {
    pk->compute(Ablk.size(0), Ablk.data_ptr<float>(), Ablk.stride(0), 0.f, C.data_ptr<float>(), C.stride(0));
    return;
  }
  at::mm_out(C, Ablk, Bop);
}

}  // namespace mkl_packed
}  // namespace cpu
}  // namespace geoops
