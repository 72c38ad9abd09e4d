// Python bindings of the attention family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/attention.h"

GEOOPS_BINDINGS(attention, m) {
  m.def("triple_attention_fwd_cpu", &geoops::cpu::triple_attention_fwd_cpu, GEOOPS_NOGIL,
        "Kronecker triple attention, forward -> (out, lse) (CPU)");
  m.def("triple_attention_bwd_cpu", &geoops::cpu::triple_attention_bwd_cpu, GEOOPS_NOGIL,
        "Kronecker triple attention, backward -> (dq, dk1, dk2, dv1, dv2) (CPU)");
}
