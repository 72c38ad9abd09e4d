// MKL's packed SGEMM (cblas_sgemm_pack / cblas_sgemm_compute), resolved at run time from the MKL that torch's
// CPU library links in (libtorch_cpu.so exports the cblas symbols); no MKL headers.  When the symbols are not
// there (another BLAS), `available()` is false and callers use at::mm.  A minimal version for the Poincaré fc
// forward (helper "fc", session 8): to be unified with the cdist one of helper "hyper".
#pragma once

#include <dlfcn.h>

#include <cstddef>
#include <cstdint>

namespace geoops {
namespace cpu {
namespace mkl_packed {

// the CBLAS enum values (MKL's mkl_cblas.h)
constexpr int kRowMajor = 101, kNoTrans = 111, kPacked = 151, kBMatrix = 162;

struct Api {
  size_t (*get_size)(int identifier, int m, int n, int k) = nullptr;
  void (*pack)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src, int ld,
               float* dest) = nullptr;
  void (*compute)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda, const float* b,
                  int ldb, float beta, float* c, int ldc) = nullptr;
  bool ok() const { return get_size && pack && compute; }
};

inline const Api& api() {
  static const Api a = [] {
    Api r;
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* hs[2] = {h, RTLD_DEFAULT};
    for (void* hh : hs) {
      if (!hh || r.ok()) continue;
      r.get_size = reinterpret_cast<decltype(r.get_size)>(dlsym(hh, "cblas_sgemm_pack_get_size"));
      r.pack = reinterpret_cast<decltype(r.pack)>(dlsym(hh, "cblas_sgemm_pack"));
      r.compute = reinterpret_cast<decltype(r.compute)>(dlsym(hh, "cblas_sgemm_compute"));
    }
    return r;
  }();
  return a;
}

}  // namespace mkl_packed
}  // namespace cpu
}  // namespace geoops
