// Python bindings of the stereographic family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/stereographic.h"
#include "cpu/stereographic_pairwise.h"
#include "cpu/stereographic_midpoint.h"
#include "cpu/stereographic_triple.h"
#ifdef GEOOPS_WITH_CUDA
#include "cuda/bindings.h"
#endif

GEOOPS_BINDINGS(stereographic, m) {
  m.def("stereo_fwd_cpu", &geoops::cpu::stereo_fwd_cpu, GEOOPS_NOGIL, "kappa-stereographic row op, forward (CPU)");
  m.def("stereo_bwd_cpu", &geoops::cpu::stereo_bwd_cpu, GEOOPS_NOGIL, "kappa-stereographic row op, backward (CPU)");
  m.def("stereo_fwd_rep_cpu", &geoops::cpu::stereo_fwd_rep_cpu, GEOOPS_NOGIL,
        "kappa-stereographic row op, forward, x in row-group form: row i reads x row i / rep (CPU)");
  m.def("stereo_bwd_rep_cpu", &geoops::cpu::stereo_bwd_rep_cpu, GEOOPS_NOGIL,
        "kappa-stereographic row op, backward, x in row-group form: dx summed per group of rep rows (CPU)");
  m.def("stereo_triple_fwd_cpu", &geoops::cpu::stereo_triple_fwd_cpu, GEOOPS_NOGIL,
        "kappa-stereographic three-vector row op (gyration, transports, dist2plane), forward (CPU)");
  m.def("stereo_triple_bwd_cpu", &geoops::cpu::stereo_triple_bwd_cpu, GEOOPS_NOGIL,
        "kappa-stereographic three-vector row op, backward -> (dv0, dv1, dv2, dk) (CPU)");
  m.def("stereo_rsgd_step_cpu", &geoops::cpu::stereo_rsgd_step_cpu, GEOOPS_NOGIL,
        "kappa-stereographic Riemannian SGD step, in place (CPU)");
  m.def(
      "stereo_short_layout",
      [] {
        const geoops::cpu::StereoShortLayout l = geoops::cpu::stereo_short_layout();
        pybind11::dict d;
        d["isa"] = l.isa;
        d["double_lanes"] = l.double_lanes;
        d["float_lanes"] = l.float_lanes;
        d["block_rows"] = l.block_rows;
        d["register_pass"] = l.register_pass;
        d["float_mobius_terms"] = l.float_mobius_terms;
        d["short_row_max_d"] = l.short_row_max_d;
        d["f32_max_d"] = l.f32_max_d;
        d["register_pass_max_d"] = l.register_pass_max_d;
        d["register_pass_rows"] = l.register_pass_rows;
        pybind11::list ops;
        pybind11::dict op_max_d;
        for (const auto& e : l.register_pass_ops) {
          ops.append(e.first);
          op_max_d[pybind11::str(e.first)] = e.second;
        }
        d["register_pass_ops"] = pybind11::tuple(ops);
        d["register_pass_op_max_d"] = op_max_d;
        // {op: tuple of ints} from (op, values) pairs
        auto per_op = [](const std::vector<std::pair<std::string, std::vector<int64_t>>>& entries) {
          pybind11::dict out;
          for (const auto& e : entries) {
            pybind11::list vs;
            for (int64_t v : e.second) vs.append(v);
            out[pybind11::str(e.first)] = pybind11::tuple(vs);
          }
          return out;
        };
        d["register_pass_declined_d"] = per_op(l.register_pass_declined);
        d["register_pass_bits_as_fused"] = l.register_pass_bits_as_fused;
        d["register_pass_groups"] = per_op(l.register_pass_groups);
        pybind11::list fm;
        for (const auto& e : l.float_mobius_ops) fm.append(e);
        d["float_mobius_ops"] = pybind11::tuple(fm);
        return d;
      },
      "the short-row kernels' compiled layout: ISA, lanes, rows per block, register pass / float Mobius terms and the ops they take (CPU)");
  // ---- stereographic, pairwise (cdist / knn): one GEMM + fused epilogue (csrc/cpu/stereographic_pairwise.cpp)
  m.def("cdist_fwd_cpu", &geoops::cpu::cdist_fwd_cpu, GEOOPS_NOGIL, "kappa-stereographic pairwise distance, forward (CPU)");
  m.def("cdist_bwd_cpu", &geoops::cpu::cdist_bwd_cpu, GEOOPS_NOGIL, "kappa-stereographic pairwise distance, backward (CPU)");
  m.def("cdist_rank_key_cpu", &geoops::cpu::cdist_rank_key_cpu, GEOOPS_NOGIL,
        "monotone surrogate of the pairwise distance (no transcendental per pair) (CPU)");
  m.def("dist_from_key_cpu", &geoops::cpu::dist_from_key_cpu, GEOOPS_NOGIL, "distance from the rank key (CPU)");
  m.def("knn_cpu", &geoops::cpu::knn_cpu, GEOOPS_NOGIL, "kappa-stereographic knn: rank keys + per-row top n, fused (CPU)");
  m.def("pairwise_rank_cpu", &geoops::cpu::pairwise_rank_cpu, GEOOPS_NOGIL,
        "kappa-stereographic pairwise_rank: counts below each pair's key, one parallel region (CPU)");
  m.def("mobius_scale_fwd_cpu", &geoops::cpu::mobius_scale_fwd_cpu, GEOOPS_NOGIL, "mobius_matvec epilogue, forward (CPU)");
  m.def("mobius_scale_bwd_cpu", &geoops::cpu::mobius_scale_bwd_cpu, GEOOPS_NOGIL, "mobius_matvec epilogue, backward (CPU)");
  m.def("mobius_matvec_fwd_cpu", &geoops::cpu::mobius_matvec_fwd_cpu, GEOOPS_NOGIL, "mobius_matvec, blocked GEMM + epilogue (CPU)");
  m.def("mobius_matvec_bwd_cpu", &geoops::cpu::mobius_matvec_bwd_cpu, GEOOPS_NOGIL, "mobius_matvec backward, blocked (CPU)");
  m.def("mobius_blockdiag_matvec_fwd_cpu", &geoops::cpu::mobius_blockdiag_matvec_fwd_cpu, GEOOPS_NOGIL,
        "block-diagonal Moebius matvec, fused (CPU)");
  m.def("mobius_blockdiag_matvec_bwd_cpu", &geoops::cpu::mobius_blockdiag_matvec_bwd_cpu, GEOOPS_NOGIL,
        "block-diagonal Moebius matvec backward, fused (CPU)");
  m.def("stereo_midpoint_fwd_cpu", &geoops::cpu::stereo_midpoint_fwd_cpu, GEOOPS_NOGIL,
        "weighted midpoint sums (F, L) per group of points (CPU; csrc/cpu/stereographic_midpoint.cpp)");
  m.def("stereo_midpoint_bwd_cpu", &geoops::cpu::stereo_midpoint_bwd_cpu, GEOOPS_NOGIL, "weighted midpoint sums, backward (CPU)");
  m.def("stereo_midpoint_root_fwd_cpu", &geoops::cpu::stereo_midpoint_root_fwd_cpu, GEOOPS_NOGIL,
        "weighted midpoint sums (F, L) and the root's S = (Q, A, W, S2, R) per group (CPU)");
  m.def("stereo_midpoint_root_bwd_cpu", &geoops::cpu::stereo_midpoint_root_bwd_cpu, GEOOPS_NOGIL,
        "weighted midpoint sums and the root's Q, backward (CPU)");
  m.def("stereo_midpoint_mean_fwd_cpu", &geoops::cpu::stereo_midpoint_mean_fwd_cpu, GEOOPS_NOGIL,
        "weighted midpoint: the mean of each group from its sums (CPU)");
  m.def("stereo_midpoint_mean_bwd_cpu", &geoops::cpu::stereo_midpoint_mean_bwd_cpu, GEOOPS_NOGIL,
        "weighted midpoint: the mean from the sums, backward (CPU)");
#ifdef GEOOPS_WITH_CUDA
  m.def("stereo_fwd_cuda", &geoops::cuda::stereo_fwd_cuda, GEOOPS_NOGIL, "kappa-stereographic row op, forward (CUDA)");
  m.def("stereo_bwd_cuda", &geoops::cuda::stereo_bwd_cuda, GEOOPS_NOGIL, "kappa-stereographic row op, backward (CUDA)");
#endif
}
