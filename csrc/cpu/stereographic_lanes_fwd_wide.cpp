// Part of the forward of the kappa-stereographic row kernels (stereographic_lanes.h): every dtype but fp32, and
// fp32's short rows of the ops other than expmap / logmap (fwd_unit), called by stereo_lanes_fwd
// (stereographic_lanes.cpp, which holds the rest): a unit of its own so that the two compile in parallel.
#include "stereographic_lanes.h"  // first: the at::vec ISA of this translation unit (geoops/cpu_capability.h)

namespace geoops {
namespace cpu {

void stereo_lanes_fwd_wide(int op, bool short_rows, const at::Tensor& x, const at::Tensor& y, const RowScalars& sc,
                           double param, at::Tensor& out, const f32rows::Switches& sw) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "stereo_lanes_fwd", [&] {
    fwd_op_rows<1, scalar_t>(op, short_rows, x, y, sc, param, out, sw);
  });
}

}  // namespace cpu
}  // namespace geoops
