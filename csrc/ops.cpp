// The module geoops._C: every compiled geoops kernel, bound by its family.
//
// Each family binds its kernels in csrc/bind/<family>.cpp with GEOOPS_BINDINGS (csrc/include/geoops/bind.h); this
// file knows no family: it binds the shared helpers and calls the families' binding functions.  The operator
// schemas themselves are registered from Python with torch.library (geoops/_ops/<family>.py), which also chooses
// the backend per call.  CUDA kernels are pure CUDA with raw-pointer launchers (csrc/cuda/*.cu); their tensor-level
// wrappers are compiled only when the extension is built with CUDA (GEOOPS_WITH_CUDA).
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/mkl_packed.h"
#include "cpu/vec_math.h"
#include "geoops/bind.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "geoops compiled kernels";
  // shared: MKL's packed SGEMM (csrc/cpu/mkl_packed.h), used by the float32 row-blocked GEMMs when found
  m.def("mkl_packed_available", [] { return geoops::cpu::mkl_packed::packed_sgemm() != nullptr; },
        "whether MKL's packed SGEMM (cblas_sgemm_pack/compute) was found at run time (CPU)");
  m.def("build_isa", &geoops::cpu::build_isa,
        "the vector ISA the CPU kernels were compiled for: AVX512, AVX2 or DEFAULT (the build's, not the machine's)");
  // every family's bindings (csrc/bind/<family>.cpp), in the order of the family names
  std::vector<geoops::Binder> families = geoops::binders();
  std::sort(families.begin(), families.end(),
            [](const geoops::Binder& a, const geoops::Binder& b) { return std::strcmp(a.family, b.family) < 0; });
  pybind11::list names;
  for (const geoops::Binder& b : families) {
    b.fn(m);
    names.append(b.family);
  }
  m.attr("bound_families") = pybind11::tuple(names);
#ifdef GEOOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("abi_version") = 1;
}
