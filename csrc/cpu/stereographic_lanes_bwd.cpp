// The backward of the kappa-stereographic row kernels (stereographic_lanes.h), every dtype: a unit of its own
// so that it compiles in parallel with the forward (stereographic_lanes.cpp, stereographic_lanes_fwd_wide.cpp).
#include "stereographic_lanes.h"  // first: the at::vec ISA of this translation unit (geoops/cpu_capability.h)

namespace geoops {
namespace cpu {

void stereo_lanes_bwd(int op, const at::Tensor& g, const at::Tensor& x, const at::Tensor& y, bool has_y,
                      const RowScalars& sc, double param, at::Tensor& dx, at::Tensor& dy, double* dk, double* dr) {
  // (fp32 expmap0 / logmap0 rows the float backward takes: its short-row blocks also at D = 9..16, as the forward;
  // every other op and dtype too at D <= kShortRowBwdMaxD unless GEOOPS_STEREO_BWD_SHORT=0: bwd_short_on)
  const int64_t D = x.size(1);
  const bool short_rows = D <= kShortRowMaxD || (D <= kShortRowBwdMaxD && bwd_short_on()) ||
                          (!has_y && f32bwd_applies(op, g, x, dx));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "stereo_lanes_bwd", [&] {
    dispatch_op(op, [&](auto opc) {
      constexpr int OP = decltype(opc)::value;
      auto run = [&](auto hy) {
        constexpr bool HY = decltype(hy)::value;
        if (short_rows) {
          bwd_rows<scalar_t, OP, HY, true>(g, x, y, sc, param, dx, dy, dk, dr);
        } else {
          bwd_rows<scalar_t, OP, HY, false>(g, x, y, sc, param, dx, dy, dk, dr);
        }
      };
      if (has_y) {
        if constexpr (op_has_y(OP)) run(std::true_type{});
      } else {
        run(std::false_type{});
      }
    });
  });
}

}  // namespace cpu
}  // namespace geoops
