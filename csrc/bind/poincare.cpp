// Python bindings of the poincare family's compiled kernels (module geoops._C; see csrc/include/geoops/bind.h).
#include "geoops/bind.h"

#include "cpu/poincare.h"
#include "cpu/poincare_head.h"
#include "cpu/poincare_paths.h"

GEOOPS_BINDINGS(poincare, m) {
  m.def("poincare_fc_fwd_cpu", &geoops::cpu::poincare_fc_fwd_cpu, GEOOPS_NOGIL,
        "Poincare fully-connected layer, forward -> (y, t = x @ z) (CPU)");
  m.def("poincare_fc_bwd_cpu", &geoops::cpu::poincare_fc_bwd_cpu, GEOOPS_NOGIL,
        "Poincare fully-connected layer, backward -> (dx, dz, dbias, dc) (CPU)");
  m.def("poincare_fc_rows_fwd_cpu", &geoops::cpu::poincare_fc_rows_fwd_cpu, GEOOPS_NOGIL,
        "Poincare fully-connected layer from t = x @ z and |x|^2, forward (CPU)");
  m.def("poincare_fc_rows_bwd_cpu", &geoops::cpu::poincare_fc_rows_bwd_cpu, GEOOPS_NOGIL,
        "Poincare fully-connected layer from t and |x|^2, backward -> (dt, dU, dz cols, dbias, dc) (CPU)");
  m.def("poincare_conv2d_direct_ok", &geoops::cpu::poincare_conv2d_direct_ok, GEOOPS_NOGIL,
        "Whether the direct small-channel convolution takes (C, C_out, float64) (CPU)");
  m.def("poincare_conv2d_fwd_cpu", &geoops::cpu::poincare_conv2d_fwd_cpu, GEOOPS_NOGIL,
        "Poincare conv2d's direct convolution of tangent pixel rows -> (t, U) (CPU)");
  m.def("poincare_conv2d_bwd_cpu", &geoops::cpu::poincare_conv2d_bwd_cpu, GEOOPS_NOGIL,
        "Poincare conv2d's direct convolution, backward -> (dv, dz) (CPU)");
  m.def("poincare_conv2d_dz_cpu", &geoops::cpu::poincare_conv2d_dz_cpu, GEOOPS_NOGIL,
        "Poincare conv2d's weight gradient beta u^T dt in fixed GEMM tiles (any thread count: the same bits) (CPU)");
  m.def("poincare_conv2d_logmap0_bwd_cpu", &geoops::cpu::poincare_conv2d_logmap0_bwd_cpu, GEOOPS_NOGIL,
        "Poincare conv2d's logmap0 backward from its output v -> (dx, per-row dk) (CPU)");
  m.def("poincare_relu_fwd_cpu", &geoops::cpu::poincare_relu_fwd_cpu, GEOOPS_NOGIL, "Poincare ReLU of rows, forward (CPU)");
  m.def("poincare_midpoint_sums_fwd_cpu", &geoops::cpu::poincare_midpoint_sums_fwd_cpu, GEOOPS_NOGIL,
        "Poincare batch midpoint sums (F, L) of rows (CPU)");
  m.def("poincare_midpoint_sums_bwd_cpu", &geoops::cpu::poincare_midpoint_sums_bwd_cpu, GEOOPS_NOGIL,
        "Poincare batch midpoint sums, backward -> (dx, dc) (CPU)");
  m.def("poincare_bn_layer_fwd_cpu", &geoops::cpu::poincare_bn_layer_fwd_cpu, GEOOPS_NOGIL,
        "Poincare batch norm layer: midpoint, u = logmap_m(x), S = sum |u|^2 -> (u, m, S, [F, L]) (CPU)");
  m.def("poincare_bn_layer_bwd_cpu", &geoops::cpu::poincare_bn_layer_bwd_cpu, GEOOPS_NOGIL,
        "Poincare batch norm layer: the logmap's and the midpoint's backward from du and dm -> (dx, dc) (CPU)");
  m.def("poincare_bn_rows_fwd_cpu", &geoops::cpu::poincare_bn_rows_fwd_cpu, GEOOPS_NOGIL,
        "Poincare midpoint batch norm row pass project(expmap_b(u M)) (CPU)");
  m.def("poincare_bn_rows_bwd_cpu", &geoops::cpu::poincare_bn_rows_bwd_cpu, GEOOPS_NOGIL,
        "Poincare midpoint batch norm row pass, backward -> (du, dM, db, dc) (CPU)");
  m.def("poincare_bn_train_fwd_cpu", &geoops::cpu::poincare_bn_train_fwd_cpu, GEOOPS_NOGIL,
        "Poincare batch norm training layer, forward -> (y, var, m, saved...) (CPU)");
  m.def("poincare_bn_train_bwd_cpu", &geoops::cpu::poincare_bn_train_bwd_cpu, GEOOPS_NOGIL,
        "Poincare batch norm training layer, backward -> (dx, dbias, dweight, dc) (CPU)");
  m.def("poincare_bn_transport_cpu", &geoops::cpu::poincare_bn_transport_cpu, GEOOPS_NOGIL,
        "Poincare batch norm's transport matrix and its backward in double -> (M, gb, gm, [gS, gw, gc]) (CPU, tests)");
  m.def("poincare_bn_running_update_cpu", &geoops::cpu::poincare_bn_running_update_cpu, GEOOPS_NOGIL,
        "Poincare batch norm: the running statistics' training update in place (CPU)");
  m.def("poincare_relu_bwd_cpu", &geoops::cpu::poincare_relu_bwd_cpu, GEOOPS_NOGIL, "Poincare ReLU of rows, backward -> (dx, dc) (CPU)");
  m.def("poincare_mlr_fwd_cpu", &geoops::cpu::poincare_mlr_fwd_cpu, GEOOPS_NOGIL,
        "Poincare MLR head (hyperplane distances) of rows -> (y, x @ z) (CPU)");
  m.def("poincare_mlr_bwd_cpu", &geoops::cpu::poincare_mlr_bwd_cpu, GEOOPS_NOGIL,
        "Poincare MLR head, backward -> (dx, dz, dbias, dc) (CPU)");
  m.def("poincare_flatten_fwd_cpu", &geoops::cpu::poincare_flatten_fwd_cpu, GEOOPS_NOGIL,
        "Poincare beta-concatenating flatten of an image, fused -> (y, channels-last x, pixel and image scalars) (CPU)");
  m.def("poincare_flatten_bwd_cpu", &geoops::cpu::poincare_flatten_bwd_cpu, GEOOPS_NOGIL,
        "Poincare flatten, backward -> dL/dx as a channels-last image (CPU)");
  m.def("poincare_image_channels_last_cpu", &geoops::cpu::image_channels_last, GEOOPS_NOGIL,
        "A (B, C, H, W) image as a channels-last tensor (a contiguous float image by a tiled transpose) (CPU)");
  m.def("poincare_image_channels_first_cpu", &geoops::cpu::image_channels_first, GEOOPS_NOGIL,
        "A channels-last (B, C, H, W) image as a contiguous tensor (a float image by a tiled transpose) (CPU)");
  m.def("poincare_residual_fwd_cpu", &geoops::cpu::poincare_residual_fwd_cpu, GEOOPS_NOGIL,
        "Poincare residual Mobius addition of two images (points along dim 1) or row matrices, fused (CPU)");
  m.def("poincare_residual_bwd_cpu", &geoops::cpu::poincare_residual_bwd_cpu, GEOOPS_NOGIL,
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
}
