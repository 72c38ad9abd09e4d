// Family-neutral registration of geoops._C's Python bindings.
//
// Each family binds its own kernels in csrc/bind/<family>.cpp:
//
//     #include "geoops/bind.h"
//     #include "cpu/<family>.h"
//     GEOOPS_BINDINGS(<family>, m) {
//       m.def("<op>_fwd_cpu", &geoops::cpu::<op>_fwd_cpu, GEOOPS_NOGIL, "<what it computes> (CPU)");
//     }
//
// GEOOPS_BINDINGS registers the function in a list at load time (a static initializer of that translation unit);
// csrc/ops.cpp's module init calls every registered function, in the order of the family names.  So adding an op or
// a family edits no shared file: setup.py compiles every csrc/bind/*.cpp.
#pragma once

#include <torch/extension.h>

// Pass as an extra of every kernel's m.def: the kernel runs with the GIL released (it takes and returns tensors and
// plain values, touches no Python object), so Python threads calling geoops ops overlap as torch's own ops do.
// Argument and result conversion still hold the GIL (pybind11 runs the guard around the C++ call only).
#define GEOOPS_NOGIL pybind11::call_guard<pybind11::gil_scoped_release>()

#include <vector>

namespace geoops {

using BindFn = void (*)(pybind11::module_&);

struct Binder {
  const char* family;
  BindFn fn;
};

// Every family's binding function (one list for the whole extension: an inline function's static is shared).
inline std::vector<Binder>& binders() {
  static std::vector<Binder> list;
  return list;
}

struct RegisterBindings {
  RegisterBindings(const char* family, BindFn fn) { binders().push_back({family, fn}); }
};

}  // namespace geoops

#define GEOOPS_BINDINGS(family, m)                                                                                 \
  static void geoops_bind_##family(pybind11::module_& m);                                                         \
  static const ::geoops::RegisterBindings geoops_bind_registrar_##family(#family, &geoops_bind_##family);         \
  static void geoops_bind_##family(pybind11::module_& m)
