// Python bindings of the gaunt family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/gaunt.h"

GEOOPS_BINDINGS(gaunt, m) {
  m.def("gaunt_grid_fwd_cpu", &geoops::cpu::gaunt_grid_fwd_cpu, GEOOPS_NOGIL, "Gaunt product, fused sphere-grid route (CPU)");
  m.def("gaunt_sep_fwd_cpu", &geoops::cpu::gaunt_sep_fwd_cpu, GEOOPS_NOGIL, "Gaunt product, fused separable grid/Fourier kernel (CPU)");
  m.def("gaunt_sep_bwd_cpu", &geoops::cpu::gaunt_sep_bwd_cpu, GEOOPS_NOGIL, "Gaunt product, fused backward of the separable grid route (CPU)");
  m.def("gaunt_direct_fwd_cpu", &geoops::cpu::gaunt_direct_fwd_cpu, GEOOPS_NOGIL, "Gaunt product, fused sparse route (CPU)");
  m.def("gaunt_direct_bwd_cpu", &geoops::cpu::gaunt_direct_bwd_cpu, GEOOPS_NOGIL, "Gaunt product, fused backward of the sparse route (CPU)");
  m.def("gaunt_cpu_lanes",
        [] { return std::vector<int64_t>{GEOOPS_GAUNT_VBYTES, GEOOPS_GAUNT_AVX512, GEOOPS_GAUNT_LANES}; },
        "the fused Gaunt kernels' lane layout (csrc/cpu/gaunt.h): [vector bytes, compiled with AVX-512F, rows per "
        "direct tile] (CPU)");
}
