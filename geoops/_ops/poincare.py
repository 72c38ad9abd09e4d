"""torch.library registrations of the Poincaré-ball layer (poincare) family, with fake implementations.

    geoops::poincare_fc_fwd(Tensor x, Tensor z, Tensor? bias, Tensor c, float eps, bool save, bool tangent)
        -> (Tensor y, Tensor t)
        x (N, n), z (n, m), bias (m,) or None, c 0-dim (> 0) -> y (N, m) on the ball; t = x @ z (N, m) when
        save (the backward needs it), else empty.  tangent: the rows of x are tangent vectors u at the origin
        and the layer's input is project(expmap0(u), eps) (fused; the convolution's patch rows)
    geoops::poincare_fc_bwd(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, float eps, int mask,
                            bool tangent) -> (dx, dz, dbias, dc)
        mask bits 1 dx, 2 dz, 4 dbias, 8 dc (0-dim, c's dtype); unselected ones are empty

    geoops::poincare_fc_rows_fwd(Tensor t, Tensor U, Tensor z, Tensor? bias, Tensor c, float eps, bool tangent)
        -> Tensor y
        the same layer from t = x @ z (N, m) and U = |x|^2 (N,) (tangent: of the tangent rows u) without x: the
        convolution computes t and U with convolutions, never the patch matrix
    geoops::poincare_fc_rows_bwd(Tensor grad, Tensor t, Tensor U, Tensor z, Tensor? bias, Tensor c, float eps,
                                 int mask, bool tangent) -> (dt, dU, dz, dbias, dc)
        dz: only the terms through z's column norms (the caller adds x^T dt); mask bits 2 dz, 4 dbias, 8 dc

    geoops::poincare_mlr_fwd(Tensor x, Tensor z, Tensor? bias, Tensor c) -> (Tensor y, Tensor t)
        the MLR head (hyperplane_dists of rows): x (N, n), z (n, m), bias (m,) or None, c 0-dim (> 0) -> the
        signed distances y (N, m) and t = x @ z (N, m), what the backward reads
    geoops::poincare_mlr_bwd(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, int mask)
        -> (dx, dz, dbias, dc)
        mask bits 1 dx, 2 dz, 4 dbias, 8 dc (0-dim, c's dtype); unselected ones are empty

    geoops::poincare_relu_fwd(Tensor x, Tensor c, float eps) -> Tensor
        rows x (N, D) -> project(expmap0(relu(logmap0(x))), eps) (N, D): one fused row op
    geoops::poincare_relu_bwd(Tensor grad, Tensor x, Tensor c, float eps) -> (dx, dc)   (dc 0-dim, c's dtype)
    geoops::poincare_midpoint_sums_fwd(Tensor x, Tensor c) -> (F, L)
        rows x (N, D): F = sum_i lam_i x_i (D,), L = sum_i (lam_i - 1) (0-dim), lam = 2/(1 - c|x|^2): the batch
        midpoint's one fused reduction
    geoops::poincare_midpoint_sums_bwd(Tensor gF, Tensor gL, Tensor x, Tensor c) -> (dx, dc)
    geoops::poincare_bn_rows_fwd(Tensor u, Tensor M, Tensor b, Tensor c, float eps) -> Tensor
        rows u (N, D), M (D, D) (or empty: the identity), b (D,) on the ball -> project(expmap_b(u @ M), eps):
        the midpoint batch norm's fused row pass (the C++ kernels run u @ M as one GEMM, then the row pass)
    geoops::poincare_bn_rows_bwd(Tensor grad, Tensor u, Tensor M, Tensor b, Tensor c, float eps) -> (du, dM, db, dc)

    geoops::poincare_conv_rows_fwd(Tensor v, Tensor z, SymInt[] bhw, int[] kernel, int[] stride, int[] padding,
                                   float beta) -> (Tensor t, Tensor U)
        the convolution's patch-row GEMM and squared norms from the tangent pixel rows v (B*H*W, C) (channels last,
        bhw = (B, H, W)) without the patch matrix: t = u @ z (B*Ho*Wo, C_out) and U = |u|^2 (B*Ho*Wo,) for the
        beta-scaled patch rows u, by torch's convolution / sum pooling on views made inside the op (the
        compositions' compiled form: Inductor sees 2-D rows in and out, no convolution, no 4-D saved tensor)
    geoops::poincare_conv_rows_bwd(Tensor gt, Tensor gU, Tensor v, Tensor z, SymInt[] bhw, int[] kernel,
                                   int[] stride, int[] padding, float beta, int mask) -> (dv, dz)
        mask bits 1 dv, 2 dz; an unselected one is empty

x, z, bias share a float32/float64 dtype (geoops.poincare upcasts half types).  Each implementation picks
the backend per call: CPU -> the fused C++ kernels (csrc/cpu/poincare.cpp), elsewhere the eager reference
composition (geoops.reference.poincare, differentiated by autograd); CUDA tensors (and CPU tensors under
TRITON_INTERPRET=1 with the triton backend) run the Triton kernels of geoops.kernels.poincare.  torch.compile sees opaque ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _library
from .._library import define_pair, reference_autograd

FAMILY = "poincare"


def _empty(x):
    return x.new_empty(0)


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def poincare_fc_fwd(x, z, bias, c, eps, save, tangent):
        b = _empty(x) if bias is None else bias
        return tuple(_backend.compiled().poincare_fc_fwd_cpu(x, z, b, c, eps, save, tangent))

    @staticmethod
    def poincare_fc_bwd(g, x, z, bias, c, t, eps, mask, tangent):
        b = _empty(x) if bias is None else bias
        gx, gz, gb, gc = _backend.compiled().poincare_fc_bwd_cpu(g, x, z, b, c, t, eps, mask, tangent)
        return gx, gz, gb, (gc.to(c.dtype) if gc.numel() else _empty(c))

    @staticmethod
    def poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent):
        b = _empty(t) if bias is None else bias
        return _backend.compiled().poincare_fc_rows_fwd_cpu(t, U, z, b, c, eps, tangent)

    @staticmethod
    def poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent):
        b = _empty(t) if bias is None else bias
        gt, gU, gz, gb, gc = _backend.compiled().poincare_fc_rows_bwd_cpu(g, t, U, z, b, c, eps, mask, tangent)
        return gt, gU, gz, gb, (gc.to(c.dtype) if gc.numel() else _empty(c))

    @staticmethod
    def poincare_mlr_fwd(x, z, bias, c):
        return tuple(_backend.compiled().poincare_mlr_fwd_cpu(x, z, bias, c))

    @staticmethod
    def poincare_mlr_bwd(g, x, z, bias, c, t, mask):
        gx, gz, gb, gc = _backend.compiled().poincare_mlr_bwd_cpu(g, x, z, bias, c, t, mask)
        return (_empty(x) if gx is None else gx, _empty(x) if gz is None else gz, _empty(x) if gb is None else gb,
                _empty(c) if gc is None else gc.to(c.dtype))

    @staticmethod
    def poincare_relu_fwd(x, c, eps):
        return _backend.compiled().poincare_relu_fwd_cpu(x, c, eps)

    @staticmethod
    def poincare_relu_bwd(g, x, c, eps):
        gx, gc = _backend.compiled().poincare_relu_bwd_cpu(g, x, c, eps)
        return gx, gc.to(c.dtype)

    @staticmethod
    def poincare_midpoint_sums_fwd(x, c):
        return tuple(_backend.compiled().poincare_midpoint_sums_fwd_cpu(x, c))

    @staticmethod
    def poincare_midpoint_sums_bwd(gF, gL, x, c):
        gx, gc = _backend.compiled().poincare_midpoint_sums_bwd_cpu(gF, gL, x, c)
        return gx, gc.to(c.dtype)

    @staticmethod
    def poincare_bn_rows_fwd(u, M, b, c, eps):
        return _backend.compiled().poincare_bn_rows_fwd_cpu(u, M, b, c, eps)

    @staticmethod
    def poincare_bn_rows_bwd(g, u, M, b, c, eps):
        gu, gM, gb, gc = _backend.compiled().poincare_bn_rows_bwd_cpu(g, u, M, b, c, eps)
        return gu, gM, gb, gc.to(c.dtype)


class _Reference:
    """The op contract above, evaluated with geoops.reference.poincare (autograd for the backward)."""

    @staticmethod
    def _point(x, c, eps, tangent):
        from ..reference import poincare as ref

        return ref.expmap0(x, c, eps=eps) if tangent else x

    @classmethod
    def poincare_fc_fwd(cls, x, z, bias, c, eps, save, tangent):
        from ..reference import poincare as ref

        with torch.no_grad():
            cx = c.to(x.dtype)
            y = ref.poincare_fc(cls._point(x, cx, eps, tangent), z, bias, cx, eps=eps).contiguous()
            t = (x @ z) if save else _empty(x)
        return y, t

    @classmethod
    def poincare_fc_bwd(cls, g, x, z, bias, c, t, eps, mask, tangent):
        from ..reference import poincare as ref

        with reference_autograd():
            xx = x.detach().requires_grad_(True)
            zz = z.detach().requires_grad_(True)
            bb = None if bias is None else bias.detach().requires_grad_(True)
            cc = c.detach().to(x.dtype).requires_grad_(True)
            y = ref.poincare_fc(cls._point(xx, cc, eps, tangent), zz, bb, cc, eps=eps)
            ins = [xx, zz, cc] + ([bb] if bb is not None else [])
            gs = torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True)
        gx = gs[0] if mask & 1 else _empty(x)
        gz = gs[1] if mask & 2 else _empty(x)
        gb = gs[3] if (mask & 4 and bias is not None) else _empty(x)
        gc = gs[2].to(c.dtype) if mask & 8 else _empty(c)
        zero = lambda t, ref_t: torch.zeros_like(ref_t) if t is None else t  # noqa: E731
        return (zero(gx, x), zero(gz, z), zero(gb, x if bias is None else bias), zero(gc, c))


    @staticmethod
    def poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent):
        from ..reference import poincare as ref

        with torch.no_grad():
            return ref.poincare_fc_rows(t, U, z, bias, c.to(t.dtype), eps, tangent).contiguous()

    @staticmethod
    def poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent):
        from ..reference import poincare as ref

        with reference_autograd():
            tt, UU, zz = (a.detach().requires_grad_(True) for a in (t, U, z))
            bb = None if bias is None else bias.detach().requires_grad_(True)
            cc = c.detach().to(t.dtype).requires_grad_(True)
            y = ref.poincare_fc_rows(tt, UU, zz, bb, cc, eps, tangent)
            ins = [tt, UU, zz, cc] + ([bb] if bb is not None else [])
            gs = [torch.zeros_like(a) if v is None else v
                  for a, v in zip(ins, torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True))]
        gz = gs[2] if mask & 2 else _empty(t)
        gb = gs[4] if (mask & 4 and bias is not None) else _empty(t)
        gc = gs[3].to(c.dtype) if mask & 8 else _empty(c)
        return gs[0], gs[1], gz, gb, gc

    @staticmethod
    def poincare_mlr_fwd(x, z, bias, c):
        from ..reference import poincare as ref

        with torch.no_grad():
            return ref.hyperplane_dists(x, z, bias, c.to(x.dtype)).contiguous(), x @ z

    @staticmethod
    def poincare_mlr_bwd(g, x, z, bias, c, t, mask):
        from ..reference import poincare as ref

        with reference_autograd():
            ins = [a.detach().requires_grad_(True) for a in (x, z, c.to(x.dtype))]
            bb = None if bias is None else bias.detach().requires_grad_(True)
            y = ref.hyperplane_dists(ins[0], ins[1], bb, ins[2])
            ins += [bb] if bb is not None else []
            gs = [torch.zeros_like(a) if v is None else v
                  for a, v in zip(ins, torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True))]
        gx = gs[0] if mask & 1 else _empty(x)
        gz = gs[1] if mask & 2 else _empty(x)
        gb = gs[3] if (mask & 4 and bias is not None) else _empty(x)
        gc = gs[2].to(c.dtype).reshape(()) if mask & 8 else _empty(c)
        return gx, gz, gb, gc

    @staticmethod
    def _relu(x, c, eps):
        from ..reference import poincare as ref

        return ref.expmap0(torch.relu(ref.logmap0(x, c)), c, eps=eps)

    @classmethod
    def poincare_relu_fwd(cls, x, c, eps):
        with torch.no_grad():
            return cls._relu(x, c.to(x.dtype), eps).contiguous()

    @classmethod
    def poincare_relu_bwd(cls, g, x, c, eps):
        with reference_autograd():
            xx = x.detach().requires_grad_(True)
            cc = c.detach().to(x.dtype).requires_grad_(True)
            gx, gc = torch.autograd.grad(cls._relu(xx, cc, eps), (xx, cc), g.to(x.dtype))
        return gx, gc.to(c.dtype)

    @staticmethod
    def _mid(x, c):
        lam = 2 / (1 - c * x.pow(2).sum(-1, keepdim=True)).clamp_min(1e-15)
        return (lam * x).sum(0), (lam - 1).sum()

    @classmethod
    def poincare_midpoint_sums_fwd(cls, x, c):
        with torch.no_grad():
            return cls._mid(x, c.to(x.dtype))

    @classmethod
    def poincare_midpoint_sums_bwd(cls, gF, gL, x, c):
        with reference_autograd():
            xx = x.detach().requires_grad_(True)
            cc = c.detach().to(x.dtype).requires_grad_(True)
            F, L = cls._mid(xx, cc)
            gx, gc = torch.autograd.grad((F, L), (xx, cc), (gF.to(x.dtype), gL.to(x.dtype)))
        return gx, gc.to(c.dtype)

    @staticmethod
    def _bn(u, M, b, c, eps):
        from ..reference import poincare as ref

        return ref.project(ref.expmap(b, u @ M if M.numel() else u, c), c, eps=eps)  # empty M: identity

    @classmethod
    def poincare_bn_rows_fwd(cls, u, M, b, c, eps):
        with torch.no_grad():
            return cls._bn(u, M, b, c.to(u.dtype), eps).contiguous()

    @classmethod
    def poincare_bn_rows_bwd(cls, g, u, M, b, c, eps):
        with reference_autograd():
            ins = [t.detach().requires_grad_(True) for t in (u, M, b, c.to(u.dtype))]
            gu, gM, gb, gc = torch.autograd.grad(cls._bn(*ins, eps), ins, g.to(u.dtype), allow_unused=True)
        gM = torch.zeros_like(M) if gM is None else gM
        return gu, gM, gb, gc.to(c.dtype)


# the kernel set that the current backend setting picks for a device (CUDA: geoops.kernels.poincare)
kernels = _library.family_kernels(FAMILY, cpp=_Cpp, reference=_Reference)


# ---------------------------------------------------------------- registration
def _fc_fwd(x, z, bias: Optional[torch.Tensor], c, eps: float, save: bool, tangent: bool):
    return tuple(kernels(x.device).poincare_fc_fwd(x, z, bias, c, eps, save, tangent))


def _fc_fwd_fake(x, z, bias, c, eps, save, tangent):
    y = x.new_empty((x.shape[0], z.shape[1]))
    return y, (x.new_empty((x.shape[0], z.shape[1])) if save else x.new_empty(0))


def _fc_bwd(g, x, z, bias: Optional[torch.Tensor], c, t, eps: float, mask: int, tangent: bool):
    return tuple(kernels(x.device).poincare_fc_bwd(g, x, z, bias, c, t, eps, mask, tangent))


def _fc_bwd_fake(g, x, z, bias, c, t, eps, mask, tangent):
    gx = x.new_empty(x.shape) if mask & 1 else x.new_empty(0)
    gz = z.new_empty(z.shape) if mask & 2 else x.new_empty(0)
    gb = x.new_empty(bias.shape) if (mask & 4 and bias is not None) else x.new_empty(0)
    gc = c.new_empty(()) if mask & 8 else c.new_empty(0)
    return gx, gz, gb, gc


# define_pair: the ops, and their callers (the eager fast path calls the kernels directly on plain tensors,
# everything else dispatches the custom op)
poincare_fc_fwd, poincare_fc_bwd = define_pair(
    "geoops::poincare_fc",
    "(Tensor x, Tensor z, Tensor? bias, Tensor c, float eps, bool save, bool tangent) -> (Tensor, Tensor)",
    _fc_fwd, _fc_fwd_fake,
    "(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, float eps, int mask, bool tangent) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _fc_bwd, _fc_bwd_fake)


def _fc_rows_fwd(t, U, z, bias: Optional[torch.Tensor], c, eps: float, tangent: bool):
    return kernels(t.device).poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent)


def _fc_rows_fwd_fake(t, U, z, bias, c, eps, tangent):
    return t.new_empty(t.shape)


def _fc_rows_bwd(g, t, U, z, bias: Optional[torch.Tensor], c, eps: float, mask: int, tangent: bool):
    return tuple(kernels(t.device).poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent))


def _fc_rows_bwd_fake(g, t, U, z, bias, c, eps, mask, tangent):
    gz = z.new_empty(z.shape) if mask & 2 else t.new_empty(0)
    gb = t.new_empty(bias.shape) if (mask & 4 and bias is not None) else t.new_empty(0)
    gc = c.new_empty(()) if mask & 8 else c.new_empty(0)
    return t.new_empty(t.shape), U.new_empty(U.shape), gz, gb, gc


poincare_fc_rows_fwd, poincare_fc_rows_bwd = define_pair(
    "geoops::poincare_fc_rows",
    "(Tensor t, Tensor U, Tensor z, Tensor? bias, Tensor c, float eps, bool tangent) -> Tensor",
    _fc_rows_fwd, _fc_rows_fwd_fake,
    "(Tensor grad, Tensor t, Tensor U, Tensor z, Tensor? bias, Tensor c, float eps, int mask, bool tangent) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _fc_rows_bwd, _fc_rows_bwd_fake)


def _mlr_fwd(x, z, bias: Optional[torch.Tensor], c):
    return tuple(kernels(x.device).poincare_mlr_fwd(x, z, bias, c))


def _mlr_fwd_fake(x, z, bias, c):
    return x.new_empty((x.shape[0], z.shape[1])), x.new_empty((x.shape[0], z.shape[1]))


def _mlr_bwd(g, x, z, bias: Optional[torch.Tensor], c, t, mask: int):
    return tuple(kernels(x.device).poincare_mlr_bwd(g, x, z, bias, c, t, mask))


def _mlr_bwd_fake(g, x, z, bias, c, t, mask):
    return _fc_bwd_fake(g, x, z, bias, c, t, 0.0, mask, False)


poincare_mlr_fwd, poincare_mlr_bwd = define_pair(
    "geoops::poincare_mlr",
    "(Tensor x, Tensor z, Tensor? bias, Tensor c) -> (Tensor, Tensor)",
    _mlr_fwd, _mlr_fwd_fake,
    "(Tensor grad, Tensor x, Tensor z, Tensor? bias, Tensor c, Tensor t, int mask) -> (Tensor, Tensor, Tensor, Tensor)",
    _mlr_bwd, _mlr_bwd_fake)


def _relu_fwd(x, c, eps: float):
    return kernels(x.device).poincare_relu_fwd(x, c, eps)


def _relu_fwd_fake(x, c, eps):
    return x.new_empty(x.shape)


def _relu_bwd(g, x, c, eps: float):
    return tuple(kernels(x.device).poincare_relu_bwd(g, x, c, eps))


def _relu_bwd_fake(g, x, c, eps):
    return x.new_empty(x.shape), c.new_empty(())


poincare_relu_fwd, poincare_relu_bwd = define_pair(
    "geoops::poincare_relu",
    "(Tensor x, Tensor c, float eps) -> Tensor",
    _relu_fwd, _relu_fwd_fake,
    "(Tensor grad, Tensor x, Tensor c, float eps) -> (Tensor, Tensor)",
    _relu_bwd, _relu_bwd_fake)


def _conv_geometry(v, z, bhw, kernel):
    B, H, W = bhw
    C, Co = v.shape[1], z.shape[1]
    return B, H, W, C, Co, kernel[0], kernel[1]


def _conv_views(v, z, bhw, kernel, beta):
    """The tangent pixel rows v as a channels-last (B, C, H, W) view and the beta-scaled weight (C_out, C, kh, kw)
    (z rows are (channel, tap)), with the geometry."""
    B, H, W, C, Co, kh, kw = _conv_geometry(v, z, bhw, kernel)
    vimg = v.view(B, H, W, C).permute(0, 3, 1, 2)
    wk = (z * beta).view(C, kh, kw, Co).permute(3, 0, 1, 2)
    return vimg, wk, (B, H, W, C, Co, kh, kw)


def _norms_by_pooling(kernel, padding) -> bool:
    """Whether the patch rows' squared norms can come from a sum pooling (padding at most half the window, as
    avg_pool2d requires), else from a convolution with a constant kernel."""
    return 2 * padding[0] <= kernel[0] and 2 * padding[1] <= kernel[1]


def _conv_out_hw(H, W, kernel, stride, padding):
    return ((H + 2 * padding[0] - kernel[0]) // stride[0] + 1, (W + 2 * padding[1] - kernel[1]) // stride[1] + 1)


def _conv_rows_fwd(v, z, bhw: list[int], kernel: list[int], stride: list[int], padding: list[int], beta: float):
    import torch.nn.functional as F

    vimg, wk, (B, H, W, C, Co, kh, kw) = _conv_views(v, z, bhw, kernel, beta)
    t = F.conv2d(vimg, wk, None, stride, padding)
    sq = torch.linalg.vecdot(v, v).view(B, 1, H, W)
    if _norms_by_pooling(kernel, padding):
        U = F.avg_pool2d(sq, (kh, kw), stride, padding, count_include_pad=True, divisor_override=1) * (beta * beta)
    else:
        U = F.conv2d(sq, sq.new_full((1, 1, kh, kw), beta * beta), None, stride, padding)
    return t.permute(0, 2, 3, 1).reshape(-1, Co).contiguous(), U.reshape(-1).contiguous()


def _conv_rows_fwd_fake(v, z, bhw, kernel, stride, padding, beta):
    B, H, W = bhw
    Ho, Wo = _conv_out_hw(H, W, kernel, stride, padding)
    n = B * Ho * Wo
    return v.new_empty((n, z.shape[1])), v.new_empty((n,))


def _conv_rows_bwd(gt, gU, v, z, bhw: list[int], kernel: list[int], stride: list[int], padding: list[int],
                   beta: float, mask: int):
    vimg, wk, (B, H, W, C, Co, kh, kw) = _conv_views(v, z, bhw, kernel, beta)
    Ho, Wo = _conv_out_hw(H, W, kernel, stride, padding)
    gtimg = gt.contiguous().view(B, Ho, Wo, Co).permute(0, 3, 1, 2)
    gvimg, gwk, _ = torch.ops.aten.convolution_backward(gtimg, vimg, wk, None, stride, padding, [1, 1], False,
                                                        [0, 0], 1, [bool(mask & 1), bool(mask & 2), False])
    gv = v.new_empty(0)
    if mask & 1:
        gUimg = (gU.contiguous() * (beta * beta)).view(B, 1, Ho, Wo)
        shape_only = v.new_zeros(()).expand(B, 1, H, W)  # the backward reads only its input's sizes
        if _norms_by_pooling(kernel, padding):
            gsq = torch.ops.aten.avg_pool2d_backward(gUimg, shape_only, [kh, kw], stride, padding, False, True, 1)
        else:
            gsq = torch.ops.aten.convolution_backward(gUimg, shape_only, v.new_ones((1, 1, kh, kw)), None, stride,
                                                      padding, [1, 1], False, [0, 0], 1, [True, False, False])[0]
        gv = gvimg.permute(0, 2, 3, 1).reshape(v.shape) + v * (2 * gsq.reshape(-1, 1))
    gz = gwk.permute(1, 2, 3, 0).reshape(z.shape) * beta if mask & 2 else v.new_empty(0)
    return gv, gz


def _conv_rows_bwd_fake(gt, gU, v, z, bhw, kernel, stride, padding, beta, mask):
    return (v.new_empty(v.shape) if mask & 1 else v.new_empty(0),
            z.new_empty(z.shape) if mask & 2 else v.new_empty(0))


poincare_conv_rows_fwd, poincare_conv_rows_bwd = define_pair(
    "geoops::poincare_conv_rows",
    "(Tensor v, Tensor z, SymInt[] bhw, int[] kernel, int[] stride, int[] padding, float beta) -> (Tensor, Tensor)",
    _conv_rows_fwd, _conv_rows_fwd_fake,
    "(Tensor gt, Tensor gU, Tensor v, Tensor z, SymInt[] bhw, int[] kernel, int[] stride, int[] padding, "
    "float beta, int mask) -> (Tensor, Tensor)",
    _conv_rows_bwd, _conv_rows_bwd_fake)


def _mid_fwd(x, c):
    return tuple(kernels(x.device).poincare_midpoint_sums_fwd(x, c))


def _mid_fwd_fake(x, c):
    return x.new_empty((x.shape[1],)), x.new_empty(())


def _mid_bwd(gF, gL, x, c):
    return tuple(kernels(x.device).poincare_midpoint_sums_bwd(gF, gL, x, c))


def _mid_bwd_fake(gF, gL, x, c):
    return x.new_empty(x.shape), c.new_empty(())


def _bn_fwd(u, M, b, c, eps: float):
    return kernels(u.device).poincare_bn_rows_fwd(u, M, b, c, eps)


def _bn_fwd_fake(u, M, b, c, eps):
    return u.new_empty(u.shape)


def _bn_bwd(g, u, M, b, c, eps: float):
    return tuple(kernels(u.device).poincare_bn_rows_bwd(g, u, M, b, c, eps))


def _bn_bwd_fake(g, u, M, b, c, eps):
    return u.new_empty(u.shape), M.new_empty(M.shape), b.new_empty(b.shape), c.new_empty(())


poincare_midpoint_sums_fwd, poincare_midpoint_sums_bwd = define_pair(
    "geoops::poincare_midpoint_sums",
    "(Tensor x, Tensor c) -> (Tensor, Tensor)",
    _mid_fwd, _mid_fwd_fake,
    "(Tensor gF, Tensor gL, Tensor x, Tensor c) -> (Tensor, Tensor)",
    _mid_bwd, _mid_bwd_fake)
poincare_bn_rows_fwd, poincare_bn_rows_bwd = define_pair(
    "geoops::poincare_bn_rows",
    "(Tensor u, Tensor M, Tensor b, Tensor c, float eps) -> Tensor",
    _bn_fwd, _bn_fwd_fake,
    "(Tensor grad, Tensor u, Tensor M, Tensor b, Tensor c, float eps) -> (Tensor, Tensor, Tensor, Tensor)",
    _bn_bwd, _bn_bwd_fake)
