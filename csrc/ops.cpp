// Python binding of every compiled geoops kernel (module geoops._C).
//
// The operator schemas themselves are registered from Python with
// torch.library (geoops/_ops.py), which also chooses the backend per call;
// this module only exposes the kernels.  CUDA kernels are pure CUDA with
// raw-pointer launchers (csrc/cuda/*.cu); their tensor-level wrappers are
// compiled only when the extension is built with CUDA (GEOOPS_WITH_CUDA).
#include <torch/extension.h>

#include "cpu/attention.h"
#include "cpu/mkl_packed.h"
#include "cpu/gaunt.h"
#include "cpu/poincare.h"
#include "cpu/poincare_head.h"
#include "cpu/poincare_paths.h"
#include "cpu/ssm.h"
#include "cpu/stereographic.h"
#include "cpu/stereographic_pairwise.h"
#include "cpu/stereographic_midpoint.h"
#include "cpu/stereographic_triple.h"
#include "cpu/vec_math.h"
#ifdef GEOOPS_WITH_CUDA
#include "cuda/bindings.h"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "geoops compiled kernels";
  // shared: MKL's packed SGEMM (csrc/cpu/mkl_packed.h), used by the float32 row-blocked GEMMs when found
  m.def("mkl_packed_available", [] { return geoops::cpu::mkl_packed::packed_sgemm() != nullptr; },
        "whether MKL's packed SGEMM (cblas_sgemm_pack/compute) was found at run time (CPU)");
  m.def("build_isa", &geoops::cpu::build_isa,
        "the vector ISA the CPU kernels were compiled for: AVX512, AVX2 or DEFAULT (the build's, not the machine's)");
  m.def("stereo_fwd_cpu", &geoops::cpu::stereo_fwd_cpu, "kappa-stereographic row op, forward (CPU)");
  m.def("stereo_bwd_cpu", &geoops::cpu::stereo_bwd_cpu, "kappa-stereographic row op, backward (CPU)");
  m.def("stereo_fwd_rep_cpu", &geoops::cpu::stereo_fwd_rep_cpu,
        "kappa-stereographic row op, forward, x in row-group form: row i reads x row i / rep (CPU)");
  m.def("stereo_bwd_rep_cpu", &geoops::cpu::stereo_bwd_rep_cpu,
        "kappa-stereographic row op, backward, x in row-group form: dx summed per group of rep rows (CPU)");
  m.def("stereo_triple_fwd_cpu", &geoops::cpu::stereo_triple_fwd_cpu,
        "kappa-stereographic three-vector row op (gyration, transports, dist2plane), forward (CPU)");
  m.def("stereo_triple_bwd_cpu", &geoops::cpu::stereo_triple_bwd_cpu,
        "kappa-stereographic three-vector row op, backward -> (dv0, dv1, dv2, dk) (CPU)");
  m.def("stereo_rsgd_step_cpu", &geoops::cpu::stereo_rsgd_step_cpu,
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
        d["register_pass_bits_as_fused"] = l.register_pass_bits_as_fused;
        pybind11::list fm;
        for (const auto& e : l.float_mobius_ops) fm.append(e);
        d["float_mobius_ops"] = pybind11::tuple(fm);
        return d;
      },
      "the short-row kernels' compiled layout: ISA, lanes, rows per block, register pass / float Mobius terms and the ops they take (CPU)");
  // attention (Kronecker triple attention)
  m.def("triple_attention_fwd_cpu", &geoops::cpu::triple_attention_fwd_cpu,
        "Kronecker triple attention, forward -> (out, lse) (CPU)");
  m.def("triple_attention_bwd_cpu", &geoops::cpu::triple_attention_bwd_cpu,
        "Kronecker triple attention, backward -> (dq, dk1, dk2, dv1, dv2) (CPU)");
  // gaunt family
  m.def("gaunt_grid_fwd_cpu", &geoops::cpu::gaunt_grid_fwd_cpu, "Gaunt product, fused sphere-grid route (CPU)");
  m.def("gaunt_sep_fwd_cpu", &geoops::cpu::gaunt_sep_fwd_cpu, "Gaunt product, fused separable grid/Fourier kernel (CPU)");
  m.def("gaunt_sep_bwd_cpu", &geoops::cpu::gaunt_sep_bwd_cpu, "Gaunt product, fused backward of the separable grid route (CPU)");
  m.def("gaunt_direct_fwd_cpu", &geoops::cpu::gaunt_direct_fwd_cpu, "Gaunt product, fused sparse route (CPU)");
  m.def("gaunt_direct_bwd_cpu", &geoops::cpu::gaunt_direct_bwd_cpu, "Gaunt product, fused backward of the sparse route (CPU)");
  m.def("gaunt_cpu_lanes",
        [] { return std::vector<int64_t>{GEOOPS_GAUNT_VBYTES, GEOOPS_GAUNT_AVX512, GEOOPS_GAUNT_LANES}; },
        "the fused Gaunt kernels' lane layout (csrc/cpu/gaunt.h): [vector bytes, compiled with AVX-512F, rows per "
        "direct tile] (CPU)");
  // ---- stereographic, pairwise (cdist / knn): one GEMM + fused epilogue (csrc/cpu/stereographic_pairwise.cpp)
  m.def("cdist_fwd_cpu", &geoops::cpu::cdist_fwd_cpu, "kappa-stereographic pairwise distance, forward (CPU)");
  m.def("cdist_bwd_cpu", &geoops::cpu::cdist_bwd_cpu, "kappa-stereographic pairwise distance, backward (CPU)");
  m.def("cdist_rank_key_cpu", &geoops::cpu::cdist_rank_key_cpu,
        "monotone surrogate of the pairwise distance (no transcendental per pair) (CPU)");
  m.def("dist_from_key_cpu", &geoops::cpu::dist_from_key_cpu, "distance from the rank key (CPU)");
  m.def("knn_cpu", &geoops::cpu::knn_cpu, "kappa-stereographic knn: rank keys + per-row top n, fused (CPU)");
  m.def("pairwise_rank_cpu", &geoops::cpu::pairwise_rank_cpu,
        "kappa-stereographic pairwise_rank: counts below each pair's key, one parallel region (CPU)");
  m.def("mobius_scale_fwd_cpu", &geoops::cpu::mobius_scale_fwd_cpu, "mobius_matvec epilogue, forward (CPU)");
  m.def("mobius_scale_bwd_cpu", &geoops::cpu::mobius_scale_bwd_cpu, "mobius_matvec epilogue, backward (CPU)");
  m.def("mobius_matvec_fwd_cpu", &geoops::cpu::mobius_matvec_fwd_cpu, "mobius_matvec, blocked GEMM + epilogue (CPU)");
  m.def("mobius_matvec_bwd_cpu", &geoops::cpu::mobius_matvec_bwd_cpu, "mobius_matvec backward, blocked (CPU)");
  m.def("mobius_blockdiag_matvec_fwd_cpu", &geoops::cpu::mobius_blockdiag_matvec_fwd_cpu,
        "block-diagonal Moebius matvec, fused (CPU)");
  m.def("mobius_blockdiag_matvec_bwd_cpu", &geoops::cpu::mobius_blockdiag_matvec_bwd_cpu,
        "block-diagonal Moebius matvec backward, fused (CPU)");
  m.def("stereo_midpoint_fwd_cpu", &geoops::cpu::stereo_midpoint_fwd_cpu,
        "weighted midpoint sums (F, L) per group of points (CPU; csrc/cpu/stereographic_midpoint.cpp)");
  m.def("stereo_midpoint_bwd_cpu", &geoops::cpu::stereo_midpoint_bwd_cpu, "weighted midpoint sums, backward (CPU)");
  m.def("stereo_midpoint_mean_fwd_cpu", &geoops::cpu::stereo_midpoint_mean_fwd_cpu,
        "weighted midpoint: the mean of each group from its sums (CPU)");
  m.def("stereo_midpoint_mean_bwd_cpu", &geoops::cpu::stereo_midpoint_mean_bwd_cpu,
        "weighted midpoint: the mean from the sums, backward (CPU)");
  // ---- ssm (diagonal state-space family: geoops/ssm.py)
  m.def("vandermonde_fwd_cpu", &geoops::cpu::vandermonde_fwd_cpu, "2 Re sum_n v exp(x l), forward (CPU)");
  m.def("vandermonde_bwd_cpu", &geoops::cpu::vandermonde_bwd_cpu, "2 Re sum_n v exp(x l), backward (CPU)");
  m.def("fftconv_fwd_cpu", &geoops::cpu::fftconv_fwd_cpu, "FFT long convolution + D u, forward (CPU)");
  m.def("fftconv_bwd_cpu", &geoops::cpu::fftconv_bwd_cpu, "FFT long convolution + D u, backward (CPU)");
  m.def("ssm_discretize_fwd_cpu", &geoops::cpu::ssm_discretize_fwd_cpu, "ZOH / bilinear discretisation (CPU)");
  m.def("ssm_discretize_bwd_cpu", &geoops::cpu::ssm_discretize_bwd_cpu, "discretisation chain rule (CPU)");
  m.def("ssm_conv_fwd_cpu", &geoops::cpu::ssm_conv_fwd_cpu, "Vandermonde kernel into the FFT convolution (CPU)");
  m.def("ssm_conv_bwd_cpu", &geoops::cpu::ssm_conv_bwd_cpu, "fused ssm_conv backward (CPU)");
  m.def("ssm_fft_size", &geoops::cpu::ssm_fft_size, "FFT size of a causal length-L convolution");
  m.def("ssm_direct_fft", &geoops::cpu::ssm_direct_fft, "enable/disable (1/0, -1: query) the per-row MKL FFT path");
  // ---- end ssm
  // ---- poincare (Poincaré-ball network layers: geoops/poincare.py, csrc/cpu/poincare.cpp)
  m.def("poincare_fc_fwd_cpu", &geoops::cpu::poincare_fc_fwd_cpu,
        "Poincare fully-connected layer, forward -> (y, t = x @ z) (CPU)");
  m.def("poincare_fc_bwd_cpu", &geoops::cpu::poincare_fc_bwd_cpu,
        "Poincare fully-connected layer, backward -> (dx, dz, dbias, dc) (CPU)");
  m.def("poincare_fc_rows_fwd_cpu", &geoops::cpu::poincare_fc_rows_fwd_cpu,
        "Poincare fully-connected layer from t = x @ z and |x|^2, forward (CPU)");
  m.def("poincare_fc_rows_bwd_cpu", &geoops::cpu::poincare_fc_rows_bwd_cpu,
        "Poincare fully-connected layer from t and |x|^2, backward -> (dt, dU, dz cols, dbias, dc) (CPU)");
  m.def("poincare_conv2d_direct_ok", &geoops::cpu::poincare_conv2d_direct_ok,
        "Whether the direct small-channel convolution takes (C, C_out, float64) (CPU)");
  m.def("poincare_conv2d_fwd_cpu", &geoops::cpu::poincare_conv2d_fwd_cpu,
        "Poincare conv2d's direct convolution of tangent pixel rows -> (t, U) (CPU)");
  m.def("poincare_conv2d_bwd_cpu", &geoops::cpu::poincare_conv2d_bwd_cpu,
        "Poincare conv2d's direct convolution, backward -> (dv, dz) (CPU)");
  m.def("poincare_conv2d_dz_cpu", &geoops::cpu::poincare_conv2d_dz_cpu,
        "Poincare conv2d's weight gradient beta u^T dt in fixed GEMM tiles (any thread count: the same bits) (CPU)");
  m.def("poincare_conv2d_logmap0_bwd_cpu", &geoops::cpu::poincare_conv2d_logmap0_bwd_cpu,
        "Poincare conv2d's logmap0 backward from its output v -> (dx, per-row dk) (CPU)");
  m.def("poincare_relu_fwd_cpu", &geoops::cpu::poincare_relu_fwd_cpu, "Poincare ReLU of rows, forward (CPU)");
  m.def("poincare_midpoint_sums_fwd_cpu", &geoops::cpu::poincare_midpoint_sums_fwd_cpu,
        "Poincare batch midpoint sums (F, L) of rows (CPU)");
  m.def("poincare_midpoint_sums_bwd_cpu", &geoops::cpu::poincare_midpoint_sums_bwd_cpu,
        "Poincare batch midpoint sums, backward -> (dx, dc) (CPU)");
  m.def("poincare_bn_layer_fwd_cpu", &geoops::cpu::poincare_bn_layer_fwd_cpu,
        "Poincare batch norm layer: midpoint, u = logmap_m(x), S = sum |u|^2 -> (u, m, S, [F, L]) (CPU)");
  m.def("poincare_bn_layer_bwd_cpu", &geoops::cpu::poincare_bn_layer_bwd_cpu,
        "Poincare batch norm layer: the logmap's and the midpoint's backward from du and dm -> (dx, dc) (CPU)");
  m.def("poincare_bn_rows_fwd_cpu", &geoops::cpu::poincare_bn_rows_fwd_cpu,
        "Poincare midpoint batch norm row pass project(expmap_b(u M)) (CPU)");
  m.def("poincare_bn_rows_bwd_cpu", &geoops::cpu::poincare_bn_rows_bwd_cpu,
        "Poincare midpoint batch norm row pass, backward -> (du, dM, db, dc) (CPU)");
  m.def("poincare_bn_train_fwd_cpu", &geoops::cpu::poincare_bn_train_fwd_cpu,
        "Poincare batch norm training layer, forward -> (y, var, m, saved...) (CPU)");
  m.def("poincare_bn_train_bwd_cpu", &geoops::cpu::poincare_bn_train_bwd_cpu,
        "Poincare batch norm training layer, backward -> (dx, dbias, dweight, dc) (CPU)");
  m.def("poincare_bn_running_update_cpu", &geoops::cpu::poincare_bn_running_update_cpu,
        "Poincare batch norm: the running statistics' training update in place (CPU)");
  m.def("poincare_relu_bwd_cpu", &geoops::cpu::poincare_relu_bwd_cpu, "Poincare ReLU of rows, backward -> (dx, dc) (CPU)");
  m.def("poincare_mlr_fwd_cpu", &geoops::cpu::poincare_mlr_fwd_cpu,
        "Poincare MLR head (hyperplane distances) of rows -> (y, x @ z) (CPU)");
  m.def("poincare_mlr_bwd_cpu", &geoops::cpu::poincare_mlr_bwd_cpu,
        "Poincare MLR head, backward -> (dx, dz, dbias, dc) (CPU)");
  m.def("poincare_flatten_fwd_cpu", &geoops::cpu::poincare_flatten_fwd_cpu,
        "Poincare beta-concatenating flatten of an image, fused -> (y, channels-last x, pixel and image scalars) (CPU)");
  m.def("poincare_flatten_bwd_cpu", &geoops::cpu::poincare_flatten_bwd_cpu,
        "Poincare flatten, backward -> dL/dx as a channels-last image (CPU)");
  m.def("poincare_image_channels_last_cpu", &geoops::cpu::image_channels_last,
        "A (B, C, H, W) image as a channels-last tensor (a contiguous float image by a tiled transpose) (CPU)");
  m.def("poincare_image_channels_first_cpu", &geoops::cpu::image_channels_first,
        "A channels-last (B, C, H, W) image as a contiguous tensor (a float image by a tiled transpose) (CPU)");
  m.def("poincare_residual_fwd_cpu", &geoops::cpu::poincare_residual_fwd_cpu,
        "Poincare residual Mobius addition of two images (points along dim 1) or row matrices, fused (CPU)");
  m.def("poincare_residual_bwd_cpu", &geoops::cpu::poincare_residual_bwd_cpu,
        "Poincare residual Mobius addition, backward -> (dx, dy, dc) (CPU)");
  m.def(
      "poincare_row_paths",
      [] {
        pybind11::dict d;
        d["bn_tile_rows"] = geoops::cpu::poincare_bn_tile_rows();
        const auto widths = [](int64_t mask) {
          pybind11::list w;
          for (int64_t dd = 1; dd < 63; ++dd)
            if (mask >> dd & 1) w.append(dd);
          return pybind11::tuple(w);
        };
        d["relu_deint_widths"] = widths(geoops::cpu::poincare_relu_deint_mask());
        d["relu_write_widths"] = widths(geoops::cpu::poincare_relu_write_mask());
        return d;
      },
      "the batch norm's float tile rows and the ReLU's explicit float row-lane widths on this build (CPU)");
  // ---- end poincare
#ifdef GEOOPS_WITH_CUDA
  m.def("stereo_fwd_cuda", &geoops::cuda::stereo_fwd_cuda, "kappa-stereographic row op, forward (CUDA)");
  m.def("stereo_bwd_cuda", &geoops::cuda::stereo_bwd_cuda, "kappa-stereographic row op, backward (CUDA)");
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("abi_version") = 1;
}
