"""Poincaré-ball network layers (HNN++, Poincaré ResNet, HypLL's semantics) on fused geoops kernels.

Functional ops; the ``torch.nn`` modules are in :mod:`geoops.nn.poincare`::

    import geoops.poincare as gp
    y = gp.poincare_fc(x, z, bias, c=c)          # x (..., n) on the ball, z (n, m), bias (m,), c > 0

The ball has curvature ``-c`` (``c``: a positive number or 0-dim tensor; gradients flow to it), points lie
along ``dim``.  Results equal HypLL's (``hypll.manifolds.poincare_ball``) to rounding; every layer output is
projected into the ball of radius ``(1 - eps)/sqrt(c)`` as HypLL does (eps = 4e-3 in float32, 1e-5 in
float64).

* :func:`poincare_fc` -- the Poincaré fully-connected layer: ONE GEMM (``x @ z``, MKL) plus a fused row-wise
  prologue (|x|^2) and epilogue (hyperplane distances, sinh map back, normalisation, projection), with a
  hand-written backward (the epilogue's derivative fused into one row pass, then the GEMMs ``dt z^T`` and
  ``x^T dt``) giving gradients to x, z, bias and c.  C++ on the CPU; elsewhere the reference composition.
* :func:`poincare_conv2d` -- the fully-connected layer on the beta-concatenated tangent patches, with the
  patch rows' GEMM as one convolution (``torch.nn.functional.conv2d``) of the logmap0'd pixels and their
  squared norms as one sum pooling: the patch matrix is never formed; the row passes run in the fc kernel's epilogue-only entry.
* :func:`poincare_relu`, :func:`expmap0`, :func:`logmap0`, :func:`project`, :func:`mobius_add`,
  :func:`flatten`, :func:`max_pool2d`, :func:`avg_pool2d`, :func:`midpoint`, :func:`batch_norm`,
  :func:`mobius_linear`, :func:`mlr` -- compositions of the fused row-wise kernels of
  :mod:`geoops.stereographic` (k = -c), each of which has its own fused backward.

float16/bfloat16 inputs are computed in float32 and returned in their own dtype.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Optional

import torch
import torch.nn.functional as F

from . import _args, _backend, _library
from . import stereographic as _st
from ._ops import stereographic as _st_ops
from ._ops import poincare as _ops
from .reference import poincare as _ref
from .reference import stereographic as _st_ref

__all__ = [
    "poincare_fc", "PoincareFcFn", "PoincareReluFn", "hyperplane_dists", "mlr", "poincare_conv2d", "poincare_unfold", "poincare_relu",
    "expmap0", "logmap0", "expmap", "logmap", "transp", "dist", "project", "mobius_add", "flatten", "max_pool2d",
    "avg_pool2d", "midpoint", "batch_norm", "batch_norm2d", "mobius_linear", "default_eps", "beta_concat_scale",
]

default_eps = _ref.default_eps
_HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- argument handling
def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"geoops.poincare.{op}: {msg}")


def _called_as(e: BaseException, op: str, **renames: str) -> BaseException:
    """An argument error of the function that ``op`` forwards to (a stereographic op: its k is -c here; or another
    poincare function) re-addressed to ``geoops.poincare.<op>`` and its argument names (geoops._args.called_as)."""
    return _args.called_as(e, f"geoops.poincare.{op}", k="c", **renames)


def _int_arg(op: str, name: str, v, lo=None, what: str = "") -> int:
    """An integer argument (any integer operator.index takes, not a bool) as a Python int (geoops._args)."""
    return _args.int_arg(f"geoops.poincare.{op}", name, v, lo=lo, what=what)


def beta_concat_scale(n_i: int, n: int) -> float:
    """The tangent-space factor of beta-concatenating n_i-dimensional blocks into n dimensions (positive ints)."""
    return _ref.beta_concat_scale(_int_arg("beta_concat_scale", "n_i", n_i, 1, "a positive int"),
                                  _int_arg("beta_concat_scale", "n", n, 1, "a positive int"))


def _check_bn_eps(op: str, eps) -> float:
    """batch norm's variance eps: a finite real number (a string reached the C++ layer's argument parser)."""
    return eps if type(eps) is float and 0.0 <= eps < math.inf else _args.float_arg(f"geoops.poincare.{op}", "eps", eps)


def _check_momentum(op: str, momentum) -> None:
    """batch norm's momentum: a real number in [0, 1] (as PoincareBatchNorm's constructor checks)."""
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # (the usual call: no numbers.Real ABC check, ~0.5 us)
        return
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        _fail(op, f"momentum must be a float in [0, 1], got {type(momentum).__name__}", TypeError)
    if not 0.0 <= momentum <= 1.0:
        _fail(op, f"momentum must be in [0, 1], got {momentum}")


def _check_float(op: str, name: str, t):
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if not t.is_floating_point():
        _fail(op, f"{name} must be a floating-point tensor, got {t.dtype}", TypeError)
    return t


def _check_bias(op: str, bias, n: int, what: str) -> None:
    """bias a floating-point tensor of shape (n,); `what` says what its entries are in the error."""
    _check_float(op, "bias", bias)
    if bias.shape != (n,):
        _fail(op, f"bias must have shape ({n},) ({what}), got {tuple(bias.shape)}")


def _same_device(op: str, named: dict) -> None:
    """One device for the named tensors (None entries skipped; the first is the one named in the error), checked
    after their types and dtypes (_check_float)."""
    _library.check_tensors(f"geoops.poincare.{op}", named, dtypes=None)


def _curv(op: str, c, like: torch.Tensor) -> torch.Tensor:
    """c as a 0-dim tensor on like's device (float32 for half inputs, else like's dtype)."""
    if _checked(c, like):
        return c
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            _fail(op, f"c must be a positive scalar (a number or a 1-element tensor), got shape {tuple(c.shape)}")
        if not (c.is_floating_point() or c.dtype in (torch.int32, torch.int64)):
            _fail(op, f"c must be a real number, got dtype {c.dtype}", TypeError)
        ct = c.reshape(()).to(device=like.device)
        if not ct.is_floating_point():
            ct = ct.to(torch.float32)
        # the positivity read: free on the CPU; on a GPU a device sync per call (~10-50 us, a drained launch
        # queue), so there only under GEOOPS_CHECK (a ball's curvature is checked once, when marked)
        if ((_host_read_free(ct) or _backend.checks_enabled()) and not torch.compiler.is_compiling()
                and not _is_fake(ct)):
            if _library.functorch_active() and _library._batched(ct):
                # vmap over c (an ensemble of balls): the values under the wrapper, every entry of the batch
                vals = _library.values_under_vmap(ct).detach()
                bad = vals[~((vals > 0) & (vals < math.inf))]
                if bad.numel():
                    _fail(op, f"c must be > 0 and finite (the ball has curvature -c), got {float(bad[0])} "
                              f"(an entry of the vmapped c)")
            else:
                cv = float(ct.detach())
                if not 0 < cv < math.inf:  # also NaN
                    _fail(op, f"c must be > 0 and finite (the ball has curvature -c), got {cv}")
        return ct
    if isinstance(c, numbers.Real) and not isinstance(c, bool):
        if not 0 < c < math.inf:  # also NaN
            _fail(op, f"c must be > 0 and finite (the ball has curvature -c), got {c}")
        dt = torch.float32 if like.dtype in _HALF else like.dtype
        # torch.full, not torch.tensor: on a GPU torch.tensor(v, device=...) is a host-to-device copy that waits
        # for the device (a sync per call); full is a fill kernel
        return torch.full((), float(c), dtype=dt, device=like.device)
    _fail(op, f"c must be a positive number or a 0-dim tensor, got {type(c).__name__}", TypeError)


def _host_read_free(t: torch.Tensor) -> bool:
    """Whether reading t's values on the host (item / float / bool) costs nothing: a CPU tensor.  On a GPU each
    read is a device sync (~10-50 us, and the launch queue drains), so the per-call paths read nothing there
    (tests/triton/test_poincare_hostwork.py patches this to take the GPU paths on CPU tensors)."""
    return t.device.type == "cpu"


def _mark_checked_curvature(c: torch.Tensor) -> torch.Tensor:
    """Marks c (a 0-dim floating tensor without gradient made by geoops, e.g. PoincareBall's cached curvature)
    as checked: while its version counter stays, ``_curv`` returns it as is and ``_k`` a cached -c (no per-call
    reshape / to / positivity read / negation).  A c <= 0 is left unmarked (the checks then raise per call).
    Any device: on a GPU the one read of c here is a device sync once per marked tensor (the ball's cache keeps
    it across calls), not one per layer call."""
    if c.dim() == 0 and c.is_floating_point() and not c.requires_grad and not _is_fake(c):
        cf = float(c)
        if 0 < cf < math.inf:
            # (version, -c, c as a Python float, -c as a (1,) float64 tensor: the stereographic kernels' k, which
            # they would otherwise convert to double on every call)
            c._geoops_checked = (c._version, -c, cf, (-c).to(torch.float64).reshape(1))
    return c


def _valid_mark(c):
    """The mark of ``_mark_checked_curvature`` on c while c is still at the marked version, else None."""
    mark = getattr(c, "_geoops_checked", None)
    return mark if mark is not None and mark[0] == c._version else None


def _c_float(c: torch.Tensor) -> float:
    """float(c) of a 0-dim curvature tensor; a marked one (``_mark_checked_curvature``) gives its cached value
    (no item() call)."""
    mark = _valid_mark(c)
    return mark[2] if mark is not None else float(c.detach())


def _k64_rows(c: torch.Tensor) -> torch.Tensor:
    """-c as a (1,) float64 tensor (the stereographic CPU kernels' k; bit-identical to passing -c of c's dtype,
    which they convert to double); a marked curvature gives its cached one (no neg / to / reshape per call)."""
    mark = _valid_mark(c)
    return mark[3] if mark is not None else (-c.detach()).to(torch.float64).reshape(1)


def _checked(c, like) -> bool:
    """Whether c is a marked curvature (``_mark_checked_curvature``) still at its marked version, on like's
    device, eager."""
    return (_valid_mark(c) is not None and c.device == like.device and not torch.compiler.is_compiling())


def _is_fake(t) -> bool:
    return type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter


def _knob_off(name: str) -> bool:
    """An env switch read per call (README knob table): true when the variable is set and starts with '0'."""
    return os.environ.get(name, "")[:1] == "0"


def _eps(eps, dtype, op: str = "project") -> float:
    if eps is None:
        return default_eps(dtype)
    if not (type(eps) in (int, float) and eps < 1.0):  # (a radius <= 0 mirrors the points; NaN: no projection)
        eps = _args.float_arg(f"geoops.poincare.{op}", "eps", eps, below=1.0,
                              what="a margin below 1 (None or a negative value picks the dtype's default)")
    return default_eps(dtype) if eps < 0 else float(eps)


def _debug_checks(op: str, c, points: dict, others: dict = None, k=None) -> None:
    """GEOOPS_CHECK=1 (``geoops.set_checks``): non-finite values in every named tensor, and points (name -> (tensor,
    dim)) outside the ball c |x|^2 < 1 -- raised before any kernel.  Off by default (a pass over the data); skipped
    while tracing (the test reads values).  c: the curvature (a number or tensor), or None with k = -c."""
    if not _backend.checks_enabled() or torch.compiler.is_compiling():
        return
    named = {n: t for n, (t, _) in points.items()}
    named.update(others or {})
    _library.check_finite(f"geoops.poincare.{op}", named)
    c = -k if c is None else c
    cv = float(c.detach()) if isinstance(c, torch.Tensor) else float(c)
    for name, (t, dim) in points.items():
        if not _is_fake(t) and t.numel() and bool((cv * (t.double() ** 2).sum(dim) >= 1).any()):
            _fail(op, f"{name} has points outside the ball c |{name}|^2 < 1 [GEOOPS_CHECK]")


# ---------------------------------------------------------------- fully connected
def _hyperplane_grads(ng, has_bias, c, gx, gz, gb, gc):
    """The gradients of (x, z, bias, c) of poincare_fc / hyperplane_dists that autograd asked for (ng: its
    needs_input_grad), None for the others and for an absent bias; gc in c's shape."""
    return (gx if ng[0] else None, gz if ng[1] else None, gb if (ng[2] and has_bias) else None,
            gc.reshape(c.shape) if ng[3] else None)


@_library.with_func_twin
class PoincareFcFn(torch.autograd.Function):
    """poincare_fc on 2-D x (N, n): forward geoops::poincare_fc_fwd, backward geoops::poincare_fc_bwd."""

    @staticmethod
    def forward(ctx, x, z, bias, c, eps, tangent=False):
        need = any(ctx.needs_input_grad[:4]) if ctx is not None else False
        y, t = _ops.poincare_fc_fwd(x, z, bias, c, eps, need, tangent)
        if need:
            ctx.save_for_backward(x, z, bias, c, t)
        ctx.eps = eps
        ctx.tangent = tangent
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def op_context(ctx, inputs, output):
        """forward's saving for the op differentiated on its own (an exported program, _library.op_autograd).  A
        call that kept no t (save=False: traced without a gradient wanted) computes it once more."""
        x, z, bias, c, eps, save, tangent = inputs
        t = output[1]
        if not save:
            with torch.no_grad():
                t = _ops.poincare_fc_fwd(x, z, bias, c, eps, True, tangent)[1]
        ctx.save_for_backward(x, z, bias, c, t)
        ctx.eps, ctx.tangent, ctx.has_bias = eps, tangent, bias is not None

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, z, bias, c, t = ctx.saved_tensors
        ng = ctx.needs_input_grad
        mask = _library.grad_mask(ng, 4)  # (no bias: its bit is clear)
        gx, gz, gb, gc = _ops.poincare_fc_bwd(g.contiguous(), x, z, bias, c, t, ctx.eps, mask, ctx.tangent)
        return _hyperplane_grads(ng, ctx.has_bias, c, gx, gz, gb, gc) + (None, None)


def _fc_args(op, x, z, bias, c, dim):
    _check_float(op, "x", x)
    _check_float(op, "z", z)
    if z.dim() != 2:
        _fail(op, f"z must be the (in_features, out_features) matrix of hyperplane orientations, got shape "
                  f"{tuple(z.shape)}")
    d = _st._vector_dim(op, x, dim, fail=_fail)
    if x.shape[d] != z.shape[0]:
        _fail(op, f"x has {x.shape[d]} entries along the manifold dimension dim={dim} but z has "
                  f"in_features={z.shape[0]} rows")
    if bias is not None:
        _check_bias(op, bias, z.shape[1], "one offset per output")
    _same_device(op, {"x": x, "z": z, "bias": bias})
    ct = _curv(op, c, x)
    return d, ct


def poincare_fc(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor] = None, *, c, dim: int = -1,
                eps: Optional[float] = None, from_tangent: bool = False) -> torch.Tensor:
    """Poincaré fully-connected layer (HNN++; HypLL's ``poincare_fully_connected`` followed by ``project``).

    x ``(..., n, ...)`` with the points along ``dim``, z ``(n, m)`` (one hyperplane orientation per output),
    bias ``(m,)`` (hyperplane offsets) or None, c > 0.  Returns ``(..., m, ...)`` on the ball:
    ``y = project(w / (1 + sqrt(1 + c|w|^2)))``, ``w_j = sinh(sc v_j(x)) / sc`` with ``v_j`` the signed distance
    of x to hyperplane j (see :mod:`geoops.reference.poincare`).  One GEMM plus fused row passes, forward and
    backward; gradients to x, z, bias and c.  ``from_tangent=True``: x holds tangent vectors u at the origin and
    the layer takes ``project(expmap0(u))`` (fused into the same passes: the GEMM runs on u).  ``eps``: the
    projection margin, radius ``(1 - eps)/sqrt(c)`` (None: 4e-3 for float32 and the half types, 1e-5 for float64),
    for the output and, with ``from_tangent``, for the input's projection too.
    """
    op = "poincare_fc"
    d, ct = _fc_args(op, x, z, bias, c, dim)
    _debug_checks(op, ct, {} if from_tangent else {"x": (x, d)}, {"x": x, "z": z, "bias": bias})
    out_dtype = _args.promote_types(x.dtype, z.dtype)
    cdt = torch.float32 if out_dtype in _HALF else out_dtype
    xl = x if d == x.dim() - 1 else x.movedim(d, -1)
    lead = xl.shape[:-1]
    x2 = xl.reshape(math.prod(lead), xl.shape[-1]).to(cdt).contiguous()  # (an explicit row count: n may be 0)
    zz = z.to(cdt).contiguous()
    bb = None if bias is None else bias.to(cdt).contiguous()
    cc = ct if ct.dtype == cdt else ct.to(cdt)
    y = _library.apply(PoincareFcFn, x2, zz, bb, cc, _eps(eps, cdt, "poincare_fc"), bool(from_tangent))
    y = y.reshape(*lead, z.shape[1])
    if d != x.dim() - 1:
        y = y.movedim(-1, d)
    return y.to(out_dtype) if out_dtype != cdt else y


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def hyperplane_dists(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor] = None, *, c,
                     dim: int = -1) -> torch.Tensor:
    """Signed distances of x to the hyperplanes (z[:, j], bias[j]) (HNN++'s v_j(x)): the C++ head on eager CPU
    rows, the fused Triton head (PoincareMlrOpFn) on the Triton backend, else the eager composition."""
    d, ct = _fc_args("hyperplane_dists", x, z, bias, c, dim)
    _debug_checks("hyperplane_dists", ct, {"x": (x, d)}, {"z": z, "bias": bias})
    out_dtype = _args.promote_types(x.dtype, z.dtype)
    if out_dtype in _HALF or x.dtype in _HALF:  # half types: computed in float32, returned in their own dtype
        y = hyperplane_dists(x.float(), z.float(), None if bias is None else bias.float(), c=ct.float(), dim=d)
        return y.to(out_dtype)
    if x.dtype != z.dtype or (bias is not None and bias.dtype != x.dtype):
        # mixed float dtypes (float32 with float64): computed and returned in the promoted dtype of x, z and bias
        # (the GEMM raised on x and z of different dtypes)
        pd = out_dtype if bias is None else _args.promote_types(out_dtype, bias.dtype)
        return hyperplane_dists(x.to(pd), z.to(pd), None if bias is None else bias.to(pd), c=c, dim=dim)
    cx = ct if ct.dtype == x.dtype else ct.to(x.dtype)
    if x.dtype in (torch.float32, torch.float64) and _mlr_triton_on(x, z, bias, cx):
        # the Triton backend: the fused head (one GEMM and one row pass each way; saves x, z, bias, c and t)
        return _mlr_rows(x, z, bias, cx, d)
    if (d == 1 and x.dim() == 2 and x.dtype in (torch.float32, torch.float64) and z.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype) and x.shape[0] > 0 and z.shape[0] > 0 and _fused_on()
            and _library.direct_call_ok(x, z, bias, cx)):
        if x.device.type == "cpu" and _backend.resolve(x.device, _ops.FAMILY) == "cpp":
            # eager CPU rows: one GEMM and one row pass in C++, forward and backward (gradients to c too)
            return PoincareMlrCppFn.apply(x, z, bias, cx)
        if not cx.requires_grad:
            # eager rows with a fixed curvature: one Function with a hand-written backward (the composition
            # records ~20 autograd nodes per call)
            return PoincareMlrFn.apply(x, z, bias, cx)
    return _ref.hyperplane_dists(x, z, bias, cx, dim=d)


def _mlr_triton_on(*tensors) -> bool:
    """Whether hyperplane_dists takes PoincareMlrOpFn: the Triton backend, GEOOPS_POINCARE_FUSED not 0, no forward-mode
    AD (no dual level, no torch.func transform: the composition keeps their derivatives, as on the CPU path) and
    plain tensors (subclasses: the composition)."""
    return (_fused_on() and _backend.resolve(tensors[0].device, _ops.FAMILY) == "triton"
            and torch.autograd.forward_ad._current_level < 0 and not _library.functorch_active()
            and all(type(t) in _library._PLAIN for t in tensors if isinstance(t, torch.Tensor)))


def _mlr_rows(x, z, bias, cx, d):
    """hyperplane_dists through PoincareMlrOpFn on the rows of x (points along dim d), folded back."""
    xl = x if d == x.dim() - 1 else x.movedim(d, -1)
    lead = xl.shape[:-1]
    x2 = xl.reshape(math.prod(lead), xl.shape[-1]).contiguous()  # (an explicit row count: n may be 0)
    y = _library.apply(PoincareMlrOpFn, x2, z.contiguous(), None if bias is None else bias.contiguous(), cx)
    y = y.reshape(*lead, z.shape[1])
    return y if d == x.dim() - 1 else y.movedim(-1, d)


@_library.with_func_twin
class PoincareMlrOpFn(torch.autograd.Function):
    """hyperplane_dists of rows x (N, n) through geoops::poincare_mlr_fwd / _bwd (the Triton backend's fused kernels,
    geoops.kernels.poincare.poincare_mlr_*): saves x, z, bias, c and t = x z, as PoincareMlrCppFn; gradients to
    x, z, bias and c."""

    @staticmethod
    def forward(ctx, x, z, bias, c):
        need = any(ctx.needs_input_grad[:4]) if ctx is not None else False
        y, t = _ops.poincare_mlr_fwd(x, z, bias, c)
        if need:
            ctx.save_for_backward(x, z, bias, c, t)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        x, z, bias, c = inputs
        ctx.save_for_backward(x, z, bias, c, output[1])
        ctx.has_bias = bias is not None

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, z, bias, c, t = ctx.saved_tensors
        ng = ctx.needs_input_grad
        mask = _library.grad_mask(ng, 4)  # (no bias: its bit is clear)
        gx, gz, gb, gc = _ops.poincare_mlr_bwd(g.contiguous(), x, z, bias, c, t, mask)
        return _hyperplane_grads(ng, ctx.has_bias, c, gx, gz, gb, gc)


class PoincareMlrCppFn(torch.autograd.Function):
    """hyperplane_dists of rows x (N, n) on the eager CPU path: geoops::poincare_mlr_fwd_cpu (t = x z by at::mm,
    then one row pass in double) and its backward (one row pass, dt z^T and x^T dt); gradients to x, z, bias and
    c.  A backward that meets a mode or a subclass takes the reference composition's gradients."""

    @staticmethod
    def forward(ctx, x, z, bias, c):
        y, t = _backend.compiled().poincare_mlr_fwd_cpu(x, z, bias, c)
        ctx.save_for_backward(x, z, bias, c, t)
        return y

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, z, bias, c, t = ctx.saved_tensors
        ng = ctx.needs_input_grad
        if not _library.direct_call_ok(g):
            with torch.enable_grad():
                args = [a.detach().requires_grad_(n) if a is not None else None for a, n in zip((x, z, bias, c), ng)]
                y = _ref.hyperplane_dists(*args)
                want = [a for a, n in zip(args, ng) if n and a is not None]
                got = iter(torch.autograd.grad(y, want, g))
            return tuple(next(got) if (n and a is not None) else None for a, n in zip(args, ng))
        has_b = bias is not None
        mask = _library.grad_mask(ng, 4)  # (no bias: its bit is clear)
        gx, gz, gb, gc = _backend.compiled().poincare_mlr_bwd_cpu(g, x, z, bias, c, t, mask)
        return (gx if ng[0] else None, gz if ng[1] else None, gb if (ng[2] and has_b) else None,
                gc.to(c.dtype).reshape(c.shape) if ng[3] else None)


class PoincareMlrFn(torch.autograd.Function):
    """hyperplane_dists of rows x (N, n) for a curvature without gradient, eager, off the C++ backend (other devices,
    a forced backend): forward the reference composition's ops in its order (same values), saving lam, |z|,
    t = x z, a = sc lam t ch/zn - (lam - 1) sh and asinh(a) for the backward by hand (nothing recomputed):
    ga = g (2 zn / sc) / sqrt(1 + a^2);  dt = ga sc lam ch/zn;  dlam = sum_j ga (sc t ch/zn - sh);
    dx = dt z^T + c lam^2 dlam x;  dzn = sum_i g 2 asinh(a)/sc - sum_i ga sc lam t ch / zn^2;
    dz = x^T dt + (dzn / zn) z;  dr = sum_i ga 2 sc (sc lam t sh / zn - (lam - 1) ch)."""

    @staticmethod
    def forward(ctx, x, z, bias, c):
        # the reference composition's ops in its order (same values), keeping what the backward needs
        sc = c.sqrt()
        lam = 2 / (1 - c * x.pow(2).sum(dim=-1, keepdim=True))  # (N, 1)
        zraw = z.norm(dim=0)
        zn = zraw.clamp_min(_ref.MIN_NORM)
        t = x @ z
        if bias is None:
            ch = sh = q = None
            a = sc * lam * t / zn
            ash = torch.asinh(a)
        else:
            # offsets beyond |2 sc r| = 20: ch, sh, a divided by e^ell (the reference's offset_consts), q = e^(-2 ell)
            ch, sh, q, ell, big = _ref.offset_consts(bias, sc)
            a = sc * lam * t * ch / zn - (lam - 1) * sh
            ash = _ref._asinh_scaled(a, ell, q, big)
        ctx.save_for_backward(x, z, bias, c, lam, zraw, zn, t, a, ash, ch, sh, q)
        return 2 * zn / sc * ash

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, z, bias, c, lam, zraw, zn, t, a, ash, ch, sh, q = ctx.saved_tensors
        ng = ctx.needs_input_grad
        sc = c.sqrt()
        slam = sc * lam
        Cz = 1 / zn if bias is None else ch / zn
        ga = g * (2 * zn / sc) * torch.rsqrt((1 if q is None else q) + a * a)  # scaled columns: dL/db
        gt = ga * slam * Cz
        gx = gz = gb = None
        if ng[0]:
            glam = (ga * (sc * t * Cz - (0 if bias is None else sh))).sum(1, keepdim=True)
            gx = torch.addmm(x * (glam * c * lam * lam), gt, z.t())
        if ng[1]:
            gzn = (g * ash).sum(0) * (2 / sc) - (ga * slam * t).sum(0) * Cz / zn
            gz = torch.addmm(z * torch.where(zraw > _ref.MIN_NORM, gzn / zn, 0), x.t(), gt)
        if ng[2] and bias is not None:
            gb = (ga * (slam * t * (sh / zn) - (lam - 1) * ch)).sum(0) * (2 * sc)
        return gx, gz, gb, None


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def mlr(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor] = None, *, c, dim: int = -1) -> torch.Tensor:
    """Hyperbolic multinomial logistic regression logits: :func:`hyperplane_dists` (HNN++'s unidirectional MLR)."""
    try:
        return hyperplane_dists(x, z, bias, c=c, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "mlr") from None


# ---------------------------------------------------------------- maps (fused stereographic kernels, k = -c)
def _k(op, c, like):
    if _checked(c, like):
        return c._geoops_checked[1]
    return -_curv(op, c, like)


def _rows(x: torch.Tensor, dim: int, op: str = "rows"):
    """x with the points along `dim` as (R, D) rows (a free view when dim is innermost in memory, e.g. a
    channels-last image) and the function that puts rows of that shape back.  A dim out of range raises (op's
    name in the message)."""
    d = _st._vector_dim(op, x, dim, fail=_fail)
    xl = x.movedim(d, -1)
    shape = xl.shape

    def back(r):
        return r.reshape(shape).movedim(-1, d)
    return xl.reshape(math.prod(shape[:-1]), shape[-1]), back  # (an explicit row count: D may be 0)


def project(x: torch.Tensor, *, c, dim: int = -1, eps: Optional[float] = None) -> torch.Tensor:
    """Rescale points beyond (1 - eps)/sqrt(c) onto that radius (HypLL's project)."""
    _check_float("project", "x", x)
    try:
        return _st.project(x, k=_k("project", c, x), dim=dim, eps=_eps(eps, x.dtype))
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "project") from None


def expmap0(v: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Exponential map at the origin, projected (HypLL's expmap0)."""
    _check_float("expmap0", "v", v)
    k = _k("expmap0", c, v)
    e = _eps(None, v.dtype)
    try:
        if v.dim() > 1 and v.numel() > 0 and e == _st_ref_eps(v.dtype) and _fused_on():
            # points along any dim as (R, D) rows (a free view when dim is innermost in memory): the row ops' fast
            # path, then the caller's layout back
            r, back = _rows(v, dim, "expmap0")
            return back(_st.project(_st.expmap0(r, k=k), k=k))
        return _st.project(_st.expmap0(v, k=k, dim=dim), k=k, dim=dim, eps=e)
    except _args.ARG_ERRORS as err:
        raise _called_as(err, "expmap0", u="v") from None


def logmap0(y: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at the origin (HypLL's logmap0)."""
    _check_float("logmap0", "y", y)
    try:
        return _st.logmap0(y, k=_k("logmap0", c, y), dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "logmap0") from None


def expmap(x: torch.Tensor, v: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Exponential map at x (HypLL's expmap): the point reached from x along the tangent vector v, projected
    back inside the ball as HypLL does (curvature -c, c > 0). Shapes broadcast along ``dim``; gradients to x, v and c."""
    _check_float("expmap", "x", x)
    k = _k("expmap", c, x)
    try:
        return _st.project(_st.expmap(x, v, k=k, dim=dim), k=k, dim=dim, eps=_eps(None, x.dtype))
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "expmap", u="v") from None


def logmap(x: torch.Tensor, y: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at x (HypLL's logmap): the tangent vector at x pointing to y with length d_c(x, y).
    Shapes broadcast along ``dim``; gradients to x, y and c."""
    _check_float("logmap", "x", x)
    try:
        return _st.logmap(x, y, k=_k("logmap", c, x), dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "logmap") from None


def transp(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Parallel transport of v from x to y (half types computed in float32: the transport is a composition whose
    intermediate products would round to the half type)."""
    for name, t in (("x", x), ("y", y), ("v", v)):
        _check_float("transp", name, t)
    half = _args.promote_types(_args.promote_types(x.dtype, y.dtype), v.dtype)
    if half in _HALF:
        return transp(x.float(), y.float(), v.float(), c=c, dim=dim).to(half)
    try:
        return _st.parallel_transport(x, y, v, k=_k("transp", c, x), dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "transp") from None


def dist(x: torch.Tensor, y: torch.Tensor, *, c, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Geodesic distance d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|) on the ball of curvature -c
    (HypLL's dist); reduces ``dim`` (kept with ``keepdim``). Gradients to x, y and c."""
    _check_float("dist", "x", x)
    try:
        return _st.dist(x, y, k=_k("dist", c, x), dim=dim, keepdim=keepdim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "dist") from None


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Möbius addition x (+) y (the Poincaré residual connection)."""
    _check_float("mobius_add", "x", x)
    _check_float("mobius_add", "y", y)
    if type(dim) is not int:
        dim = _int_arg("mobius_add", "dim", dim)
    if (x.shape == y.shape and x.dim() in (2, 4) and dim % x.dim() == 1 and x.dtype == y.dtype
            and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and y.device.type == "cpu"
            and x.numel() > 0 and _fused_on()):
        ct = _curv("mobius_add", c, x)
        _debug_checks("mobius_add", ct, {"x": (x, dim), "y": (y, dim)})
        if _library.direct_call_ok(x, y, ct) and _backend.resolve(x.device, _ops.FAMILY) == "cpp":
            # eager CPU: the residual of two images (points along dim 1) or of two row matrices in one C++
            # pass each way (the output channels last for an image)
            return PoincareResidualFn.apply(x, y, ct)
    k = _k("mobius_add", c, x)
    if x.shape == y.shape and x.dim() > 1:
        xr, back = _rows(x, dim, "mobius_add")
        yr, _ = _rows(y, dim, "mobius_add")
        return back(_st.mobius_add(xr, yr, k=k))
    try:
        return _st.mobius_add(x, y, k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "mobius_add") from None


class PoincareResidualFn(torch.autograd.Function):
    """mobius_add(x, y) of two images (B, C, H, W) with the points along dim 1, or two row matrices (N, D), on the
    eager CPU path: geoops::poincare_residual_fwd_cpu (one pass: the three row dots in double, the coefficients,
    the output, channels last for an image) and _bwd_cpu (one pass: dx, dy, and dc summed in row order).  A
    backward that meets a mode or a subclass takes the stereographic op's gradients."""

    @staticmethod
    def forward(ctx, x, y, c):
        C2 = _backend.compiled()
        if x.dim() == 4:  # images as channels last once (the C++ transpose of a plain one), kept for the backward
            x, y = C2.poincare_image_channels_last_cpu(x), C2.poincare_image_channels_last_cpu(y)
        ctx.save_for_backward(x, y, c)
        return C2.poincare_residual_fwd_cpu(x, y, c)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, y, c = ctx.saved_tensors
        ng = ctx.needs_input_grad
        if not _library.direct_call_ok(g):
            with torch.enable_grad():
                args = [a.detach().requires_grad_(n) for a, n in zip((x, y, c), ng)]
                xr, back = _rows(args[0], 1)
                out = back(_st.mobius_add(xr, _rows(args[1], 1)[0], k=-args[2]))
                want = [a for a, n in zip(args, ng) if n]
                got = iter(torch.autograd.grad(out, want, g))
            return tuple(next(got) if n else None for n in ng)
        mask = _library.grad_mask(ng, 3)
        gx, gy, gc = _backend.compiled().poincare_residual_bwd_cpu(g, x, y, c, mask)
        return gx, gy, (gc.to(c.dtype).reshape(c.shape) if ng[2] else None)


def _tensors_eps_context(ctx, inputs, output):
    """op_context (what backward needs; also the op's own autograd, _library.op_autograd: an exported program) of a
    Function whose inputs are tensors and then eps (PoincareReluFn, BnRowsFn): the tensors saved, eps kept."""
    ctx.save_for_backward(*inputs[:-1])
    ctx.eps = inputs[-1]


@_library.with_func_twin
class PoincareReluFn(torch.autograd.Function):
    """Poincaré ReLU of rows (N, D): forward geoops::poincare_relu_fwd, backward geoops::poincare_relu_bwd."""

    @staticmethod
    def forward(ctx, x, c, eps):
        _tensors_eps_context(ctx, (x, c, eps), None)
        return _ops.poincare_relu_fwd(x, c, eps)

    op_context = staticmethod(_tensors_eps_context)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, c = ctx.saved_tensors
        gx, gc = _ops.poincare_relu_bwd(g.contiguous(), x, c, ctx.eps)
        return gx, (gc.reshape(c.shape) if ctx.needs_input_grad[1] else None), None


def poincare_relu(x: torch.Tensor, *, c, dim: int = -1) -> torch.Tensor:
    """Poincaré ReLU: expmap0(relu(logmap0(x))), projected (HypLL's HReLU).

    One fused row op (logmap0 -> relu -> expmap0 -> project per point, forward and hand-written backward,
    gradients to x and c); the points along ``dim`` are taken as rows (a free view for a channels-last image)."""
    _check_float("poincare_relu", "x", x)
    ct = _curv("poincare_relu", c, x)
    cdt = torch.float32 if x.dtype in _HALF else x.dtype
    # an image with the points along the channels (dim 1, a plain or channels-last layout) on the eager CPU path:
    # one Function from image to image (no view nodes; a plain image's pixel rows by the C++ transpose, each way),
    # taken before the row view unless the debug checks need it (_rows' movedim / reshape are two view nodes on an x
    # that requires grad: ~15 us per call in a training step, 1 thread)
    image = (type(dim) is int and (dim == 1 or dim == -3) and x.dim() == 4 and x.shape[1] > 0
             and (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()))
    cc = _as(ct, cdt)
    cpp = (x.device.type == "cpu" and x.dtype == cdt and _fused_on() and _library.direct_call_ok(x, cc)
           and _backend.resolve(x.device, _ops.FAMILY) == "cpp")
    if image and cpp and x.numel() > 0 and not _backend.checks_enabled():
        return PoincareReluImgFn.apply(x, cc, _eps(None, cdt))
    r, back = _rows(x, dim, "poincare_relu")
    _debug_checks("poincare_relu", ct, {"x": (r, -1)})
    if cpp and r.shape[0] > 0:
        if image:
            return PoincareReluImgFn.apply(x, cc, _eps(None, cdt))
        return back(PoincareReluCppFn.apply(r.contiguous(), cc, _eps(None, cdt)))
    y = _library.apply(PoincareReluFn, _as(r, cdt).contiguous(), cc, _eps(None, cdt))
    return _as(back(y), x.dtype)


class PoincareReluCppFn(torch.autograd.Function):
    """PoincareReluFn on the eager CPU fast path: the C++ kernels called directly (no per-call kernel-set lookup;
    dc converted only when c needs it).  A backward that meets a mode or a subclass takes PoincareReluFn's."""

    @staticmethod
    def forward(ctx, x, c, eps):
        ctx.save_for_backward(x, c)
        ctx.eps = eps
        return _backend.compiled().poincare_relu_fwd_cpu(x, c, eps)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        if not _library.direct_call_ok(g):
            return PoincareReluFn.backward(ctx, g)
        x, c = ctx.saved_tensors
        gx, gc = _backend.compiled().poincare_relu_bwd_cpu(g, x, c, ctx.eps)
        return gx, (gc.to(c.dtype).reshape(c.shape) if ctx.needs_input_grad[1] else None), None


class PoincareReluImgFn(torch.autograd.Function):
    """PoincareReluCppFn for an image (B, C, H, W) with the points along the channels (channels last or contiguous):
    the pixel rows taken inside the Function (a view of a channels-last image, the C++ transpose of a contiguous
    one, as the convolution's), the output and dx returned as channels-last images on the rows' storage -- the same
    kernels and bits as the row path, without its movedim / reshape autograd nodes (and torch's strided copies of a
    contiguous image or gradient, ~1 ms each for 32 x 16 x 32 x 32 float32 on the AMD EPYC)."""

    @staticmethod
    def forward(ctx, x, c, eps):
        B, C, H, W = x.shape
        r = _image_rows(x, B * H * W, C)
        ctx.save_for_backward(r, c)
        ctx.eps = eps
        return _rows_as_image(_backend.compiled().poincare_relu_fwd_cpu(r, c, eps), B, C, H, W)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        r, c = ctx.saved_tensors
        B, C, H, W = g.shape
        if not _library.direct_call_ok(g):
            gx, gc, _ = PoincareReluFn.backward(ctx, g.movedim(1, -1).reshape(r.shape))
            return gx.reshape(B, H, W, C).movedim(-1, 1), gc, None
        gr = _image_rows(g, B * H * W, C) if (g.is_contiguous(memory_format=torch.channels_last)
                                              or g.is_contiguous()) else g.movedim(1, -1).reshape(r.shape)
        gx, gc = _backend.compiled().poincare_relu_bwd_cpu(gr.contiguous(), r, c, ctx.eps)
        return (_rows_as_image(gx, B, C, H, W),
                (gc.to(c.dtype).reshape(c.shape) if ctx.needs_input_grad[1] else None), None)


# ---------------------------------------------------------------- convolution, flatten, pooling
def _pair(v, name, op, least=None):
    """v as a pair of ints (an int or a pair of ints: any integer operator.index takes, not bools); least: the
    smallest value allowed."""
    n = _args.as_index(v)
    if n is not None:
        p = (n, n)
    elif isinstance(v, (tuple, list)) and len(v) == 2 and None not in (ps := tuple(_args.as_index(i) for i in v)):
        p = ps
    else:
        _fail(op, f"{name} must be an int or a pair of ints, got {v!r}", TypeError)
    if least is not None and min(p) < least:
        _fail(op, f"{name} must be >= {least}, got {v!r}")
    return p


def _geometry(op, x, kernel_size, padding, stride):
    """kernel_size (>= 1), padding (>= 0), stride (>= 1) as pairs, checked against the image x (B, C, H, W): at
    least one channel (the beta-concatenation's dimension) and a padded image no smaller than the kernel."""
    kernel = _pair(kernel_size, "kernel_size", op, 1)
    padding, stride = _pair(padding, "padding", op, 0), _pair(stride, "stride", op, 1)
    if x.shape[1] < 1:
        _fail(op, f"x must have at least one channel (the manifold dimension), got shape {tuple(x.shape)}")
    if any(x.shape[2 + i] + 2 * padding[i] < kernel[i] for i in range(2)):
        _fail(op, f"kernel_size {kernel} is larger than x's padded image ({x.shape[2] + 2 * padding[0]}, "
                  f"{x.shape[3] + 2 * padding[1]}) (x {tuple(x.shape)}, padding {padding})")
    return kernel, padding, stride


def _check_image(op, x, channels=None, name="x"):
    _check_float(op, name, x)
    if x.dim() != 4:
        _fail(op, f"{name} must be (B, C, H, W) with the points along dim 1 (the channels), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        _fail(op, f"{name} has {x.shape[1]} channels but the layer expects in_channels={channels}")


def _patch_rows(x, k, kernel, padding, stride):
    """(B, C, H, W) on the ball -> (B*Ho*Wo, C*kh*kw) tangent rows (beta-rescaled) in F.unfold's (channel, tap)
    order, and (Ho, Wo) (HypLL's unfold; the pooling layers' path).

    logmap0 runs on the pixels as rows; the patches are gathered from a channels-last view with strided
    windows (`Tensor.unfold`) and materialised once, by the final reshape."""
    B, C, H, W = x.shape
    kh, kw = kernel
    r, _ = _rows(x, 1)  # (B*H*W, C) rows (free for a channels-last tensor)
    v = (_st.logmap0(r, k=k) * beta_concat_scale(C, C * kh * kw)).reshape(B, H, W, C)
    if padding != (0, 0):
        v = F.pad(v, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    win = v.unfold(1, kh, stride[0]).unfold(2, kw, stride[1])  # (B, Ho, Wo, C, kh, kw) view
    Ho, Wo = win.shape[1], win.shape[2]
    return win.reshape(B * Ho * Wo, C * kh * kw), Ho, Wo


def poincare_unfold(x: torch.Tensor, *, c, kernel_size, padding=0, stride=1) -> torch.Tensor:
    """HypLL's PoincareBall.unfold: (B, C, H, W) -> (B, C*kh*kw, L) beta-concatenated patches on the ball."""
    op = "poincare_unfold"
    _check_image(op, x)
    if x.dtype in _HALF:  # compositions of kernels: computed in float32 (no half rounding in between)
        return poincare_unfold(x.float(), c=c, kernel_size=kernel_size, padding=padding, stride=stride).to(x.dtype)
    kernel, padding, stride = _geometry(op, x, kernel_size, padding, stride)
    k = _k(op, c, x)
    _debug_checks(op, None, {"x": (x, 1)}, k=k)
    rows, Ho, Wo = _patch_rows(x, k, kernel, padding, stride)
    p = _st.project(_st.expmap0(rows, k=k), k=k, eps=_eps(None, x.dtype))
    return p.reshape(x.shape[0], Ho * Wo, rows.shape[1]).transpose(1, 2)


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def poincare_conv2d(x: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor] = None, *, c, kernel_size,
                    padding=0, stride=1) -> torch.Tensor:
    """Poincaré 2D convolution (HypLL's HConvolution2d): x (B, C, H, W) with points along the channels,
    z (C*kh*kw, C_out) in F.unfold's (channel, tap) row order -> (B, C_out, H', W').

    logmap0 of the pixels; for the beta-rescaled tangent patch rows u, ``t = u @ z`` is one convolution of the
    tangent pixels with z as a (C_out, C, kh, kw) kernel and ``|u|^2`` one sum pooling of the pixels' squared
    norms (zero padding is the origin's zero tangent vector); then the fully-connected
    layer's fused row passes on (t, |u|^2) (expmap0 + project of each patch row included).  Gradients to x, z,
    bias and c."""
    op = "poincare_conv2d"
    cfg = _conv_cfg_hit(x, z, bias, c, kernel_size, padding, stride)
    if cfg is not None:
        # the same argument metadata as an earlier call that passed every check below and took the eager CPU
        # Function, and a curvature checked by its mark: the checks would pass again and pick the same path
        # (see _conv_cfg_key); the per-call conditions were re-read by _conv_cfg_hit
        return PoincareConv2dFn.apply(x, z, bias, c, cfg.geo)
    _check_image(op, x)
    _check_float(op, "z", z)
    geo_args = (kernel_size, padding, stride)  # as given: the cache's key
    kernel, padding, stride = _geometry(op, x, kernel_size, padding, stride)
    if z.dim() != 2 or z.shape[0] != x.shape[1] * kernel[0] * kernel[1]:
        _fail(op, f"z must have shape (in_channels*kh*kw, out_channels) = ({x.shape[1] * kernel[0] * kernel[1]}, "
                  f"C_out) for x with {x.shape[1]} channels and kernel {kernel}, got {tuple(z.shape)}")
    if z.shape[1] == 0:
        _fail(op, "z must have at least one column (out_channels >= 1)")
    if bias is not None:
        _check_bias(op, bias, z.shape[1], "one offset per output channel")
    _same_device(op, {"x": x, "z": z, "bias": bias})
    ct = _curv(op, c, x)
    _debug_checks(op, ct, {"x": (x, 1)}, {"z": z, "bias": bias})
    out_dtype = _args.promote_types(x.dtype, z.dtype)
    cdt = torch.float32 if out_dtype in _HALF else out_dtype
    B, C, H, W = x.shape
    kh, kw = kernel
    Co = z.shape[1]
    cc = _as(ct, cdt)
    if (_fused_on() and x.device.type == "cpu" and 2 * padding[0] <= kh and 2 * padding[1] <= kw
            and B * H * W > 0 and _library.direct_call_ok(x, z, bias, cc)
            and _backend.resolve(x.device, _ops.FAMILY) == "cpp"):
        # eager CPU: the whole layer as one Function with a hand-written backward (the composition below
        # records ~15 autograd nodes per call, which is most of the cost on small images)
        bb = None if bias is None else bias.to(cdt)
        cfg = _ConvCfg(x, Co, kernel, padding, stride, cdt)
        if (out_dtype == cdt and x.dtype == cdt and z.dtype == cdt
                and (bias is None or bias.dtype == cdt)):
            key = _conv_cfg_key(x, z, bias, *geo_args)
            if key is not None:
                if len(_CONV_CFG) >= _CONV_CFG_MAX:
                    _CONV_CFG.clear()
                _CONV_CFG[key] = cfg
        y = PoincareConv2dFn.apply(x.to(cdt), z.to(cdt), bb, cc, cfg.geo)
        return y.to(out_dtype)
    # (_as: no to() op when the dtype already matches; a marked c's cached -c: no neg op -- session 34, the same
    # tensors as before, each op ~5-20 us of host time on a GPU)
    r, _ = _rows(_as(x, cdt), 1)  # (B*H*W, C) pixel rows (free for a channels-last tensor)
    vr = _st.logmap0(r, k=cc._geoops_checked[1] if _checked(cc, r) else -cc)  # (B*H*W, C) tangent pixel rows
    beta = beta_concat_scale(C, C * kh * kw)
    zc = _as(z, cdt)
    if torch.compiler.is_compiling():
        # compiled: t and U from one opaque op on the 2-D rows (geoops::poincare_conv_rows_fwd / _bwd), so the
        # graph holds no aten convolution and saves no 4-D tensor.  Inductor's CPU convolution layout
        # optimisation (on for CPU graphs with a convolution, dynamic shapes included) re-strides 4-D
        # activations saved for the backward to channels last and hands the backward their first call's
        # concrete strides (a stride assertion at a second image size), and sorts a saved 4-D view's symbolic
        # strides without a shape environment ("cannot determine truth value of Relational"); plain torch
        # (a convolution whose input is an intermediate, dynamic=True, two sizes) fails the same way.
        trows, U = _library.apply(ConvRowsFn, vr, zc, (B, H, W), kernel, stride, padding, beta)
        Ho, Wo = _conv_out_hw(H, W, kernel, stride, padding)
    else:
        v = vr.reshape(B, H, W, C).permute(0, 3, 1, 2)  # channels-last (B, C, H, W) view
        # the patch rows' GEMM u @ z and their squared norms as convolutions (zero padding = the origin's zero
        # tangent vector): the patch matrix is never formed
        wk = (zc * beta).reshape(C, kh, kw, Co).permute(3, 0, 1, 2)  # (C_out, C, kh, kw); z rows are (channel, tap)
        t = F.conv2d(v, wk, stride=stride, padding=padding)  # (B, C_out, Ho, Wo)
        # |u|^2: the box sum of the pixels' squared norms, as a sum pooling (a 1-channel F.conv2d with a constant
        # kernel costs several times more, forward and backward; avg_pool2d takes padding <= half the kernel)
        sq = _library.apply(SqRowsFn, vr).reshape(B, 1, H, W)
        if 2 * padding[0] <= kh and 2 * padding[1] <= kw:
            U = F.avg_pool2d(sq, kernel, stride, padding, count_include_pad=True, divisor_override=1) * (beta * beta)
        else:
            ones = torch.full((1, 1, kh, kw), beta * beta, dtype=cdt, device=x.device)
            U = F.conv2d(sq, ones, stride=stride, padding=padding)
        Ho, Wo = t.shape[2], t.shape[3]
        trows = t.permute(0, 2, 3, 1).reshape(-1, Co)
    bb = None if bias is None else _as(bias, cdt)
    y = _library.apply(PoincareFcRowsFn, trows, U.reshape(-1), zc, bb, cc, _eps(None, cdt), True)
    return _as(y.reshape(B, Ho, Wo, Co).permute(0, 3, 1, 2), out_dtype)


def _st_ref_eps(dtype) -> float:
    """The stereographic row ops' default projection margin (their fast path takes it when eps < 0)."""
    return _st_ref.default_eps(dtype)


def _fused_on() -> bool:
    """The eager per-call shortcuts (the CPU layer Functions: PoincareConv2dFn, PoincareMlrCppFn / PoincareMlrFn (and
    the Triton backend's PoincareMlrOpFn),
    PoincareResidualFn, PoincareFlattenFn, the ReLU's direct call; the row routes of flatten / expmap0).
    GEOOPS_POINCARE_FUSED=0 (read per call) turns them off: the layers then run the compositions of separate
    autograd nodes that modes, subclasses, torch.compile and the other backends take, on the C++ kernels (how the
    tests compare the two)."""
    return not _knob_off("GEOOPS_POINCARE_FUSED")


_LOGMAP0 = _st_ops.STEREO_OPS["logmap0"].code


class PoincareConv2dFn(torch.autograd.Function):
    """poincare_conv2d on the eager CPU fast path as ONE Function (the C++ kernels called directly).

    Forward: v = logmap0(x) of the pixel rows (the stereographic kernel), t = conv2d(v, beta z) (MKL-DNN),
    U = beta^2 box-sum of |v|^2 (avg_pool2d with divisor 1), y = poincare_fc_rows(t, U) (the fc kernel's
    epilogue).  Backward by hand: poincare_fc_rows_bwd -> (dt, dU, column terms of dz, db, dc); one
    aten.convolution_backward for dv and the kernel's gradient (GEOOPS_POINCARE_CONV_DZ_FIXED=1: the kernel's
    gradient from poincare_conv2d_dz_cpu's fixed GEMM tiles instead); avg_pool2d_backward for d|v|^2; the
    logmap0 backward kernel for dx (and its dc).  Same kernels and math as the composition (which the
    non-eager paths keep), without its ~15 autograd nodes per call.  x: the (B, C, H, W) image; its pixel rows
    (B*H*W, C) are a free view when x is channels last.  Returns (B, C_out, Ho, Wo), a channels-last view of
    the (B*Ho*Wo, C_out) output rows (the layout changes inside the Function: no view / permute nodes)."""

    @staticmethod
    def forward(ctx, x, z, bias, c, geo):
        C2 = _backend.compiled()
        # geo: _ConvCfg's tuple (the image and output sizes, kernel / padding / stride, eps, beta, ...)
        B, C, H, W, Ho, Wo, Co, kernel, padding, stride, eps, seps, beta, direct = geo
        kh, kw = kernel
        x = _image_rows(x, B * H * W, C)
        k1 = _k64_rows(c)
        v = C2.stereo_fwd_cpu(_LOGMAP0, x, None, k1, None, seps)  # (B*H*W, C) tangent pixel rows
        if direct and _direct_conv_knob_on():
            # the direct small-channel convolution: t and the box sums U in one pass (no MKL-DNN call)
            z = z.contiguous()
            trows, Ur = C2.poincare_conv2d_fwd_cpu(v, z, B, H, W, kh, kw, *padding, *stride, beta)
            wk = sq = None
        else:
            wk = (z * beta).view(C, kh, kw, Co).permute(3, 0, 1, 2)
            vimg = v.view(B, H, W, C).permute(0, 3, 1, 2)  # channels-last view
            t = F.conv2d(vimg, wk, None, stride, padding)
            sq = torch.linalg.vecdot(v, v).mul_(beta * beta).view(B, 1, H, W)
            U = F.avg_pool2d(sq, kernel, stride, padding, False, True, 1)
            Ho, Wo = t.shape[2], t.shape[3]
            trows = t.permute(0, 2, 3, 1).reshape(B * Ho * Wo, Co)
            Ur = U.reshape(-1)
        b = x.new_empty(0) if bias is None else bias
        y = C2.poincare_fc_rows_fwd_cpu(trows, Ur, z, b, c, eps, True)
        ctx.save_for_backward(x, v, wk, sq, trows, Ur, z, bias, c, k1)
        ctx.geo = geo
        return _rows_as_image(y, B, Co, Ho, Wo)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        x, v, wk, sq, trows, Ur, z, bias, c, k1 = ctx.saved_tensors
        B, C, H, W, Ho, Wo, Co, kernel, padding, stride, eps, seps, beta, _ = ctx.geo
        ng = ctx.needs_input_grad
        C2 = _backend.compiled()
        has_b = bias is not None
        b = x.new_empty(0) if bias is None else bias
        mask = 1 | (2 if ng[1] else 0) | (4 if (ng[2] and has_b) else 0) | (8 if ng[3] else 0)
        g = _image_rows(g, B * Ho * Wo, Co).contiguous()  # free when g is channels last
        gt, gU, gzc, gb, gc = C2.poincare_fc_rows_bwd_cpu(g, trows, Ur, z, b, c, eps, mask, True)
        if wk is None:  # the forward's direct convolution: dv (with the box sums' term) and dz in one call
            gv, gzd = C2.poincare_conv2d_bwd_cpu(gt, gU, v, z, B, H, W, *kernel, *padding, *stride, beta,
                                                 bool(ng[0] or ng[3]), bool(ng[1]))
            return _conv_bwd_tail(ctx, ng, C2, x, gv, gzc.add_(gzd) if ng[1] else None, gb, gc, has_b, c, k1, seps, v)
        gtimg = gt.view(B, Ho, Wo, Co).permute(0, 3, 1, 2)
        vimg = v.view(B, H, W, C).permute(0, 3, 1, 2)
        # GEOOPS_POINCARE_CONV_DZ_FIXED=1: dz in fixed GEMM tiles (the same bits for any thread count, ~10-45 %
        # slower per layer); else oneDNN's weight gradient (float32: its last bits depend on the thread count)
        fixed = bool(ng[1]) and _conv_dz_fixed_on()
        gvimg = gwk = None
        if ng[0] or ng[3] or (ng[1] and not fixed):
            gvimg, gwk, _ = torch.ops.aten.convolution_backward(
                gtimg, vimg, wk, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                [ng[0] or ng[3], ng[1] and not fixed, False])
        gz = None
        if fixed:
            gz = gzc.add_(C2.poincare_conv2d_dz_cpu(gt, v, B, H, W, *kernel, *padding, *stride, beta, 0))
        elif ng[1]:
            gz = gzc.add_(gwk.permute(1, 2, 3, 0).reshape(z.shape), alpha=beta)
        gx = None
        gcl = None
        if ng[0] or ng[3]:
            gsq = torch.ops.aten.avg_pool2d_backward(gU.view(B, 1, Ho, Wo), sq, list(kernel), list(stride),
                                                     list(padding), False, True, 1)
            gv = gvimg.permute(0, 2, 3, 1).reshape(v.shape)
            gv = torch.addcmul(gv, v, gsq.view(-1, 1), value=2 * beta * beta)
        return _conv_bwd_tail(ctx, ng, C2, x, gv if (ng[0] or ng[3]) else None, gz, gb, gc, has_b, c, k1, seps, v)


def _rows_as_image(y: torch.Tensor, B: int, C: int, H: int, W: int) -> torch.Tensor:
    """Contiguous rows y (B*H*W, C) as a (B, C, H, W) channels-last tensor on the same storage; set_, not a view:
    autograd forbids in-place ops on views created inside a Function, and the caller may modify the output in
    place."""
    return y.new_empty(0).set_(y.untyped_storage(), y.storage_offset(), (B, C, H, W), (H * W * C, 1, W * C, C))


def _direct_conv_fits(C2, C: int, Co: int, npix: int, dtype) -> bool:
    """PoincareConv2dFn's Euclidean step by the direct small-channel kernel (csrc/cpu/poincare_conv.cpp) instead
    of MKL-DNN where it measured faster (1 thread, fwd+bwd): up to 16 input and output channels on up to 16384
    pixels (the digits CNN 1.4-1.7x; 32 channels or 32768 pixels ~0.95x, MKL-DNN's fixed cost amortised).
    The shape's part (``_ConvCfg``); GEOOPS_POINCARE_DIRECT_CONV=0 (``_direct_conv_knob_on``, read per call)
    forces F.conv2d / convolution_backward, what larger layers run, so that the tests compare the two."""
    return (C <= _DIRECT_CONV_MAX_CH and Co <= _DIRECT_CONV_MAX_CH and npix <= _DIRECT_CONV_MAX_PIX
            and C2 is not None and C2.poincare_conv2d_direct_ok(C, Co, dtype == torch.float64))


def _direct_conv_knob_on() -> bool:
    return not _knob_off("GEOOPS_POINCARE_DIRECT_CONV")


def _conv_dz_fixed_on() -> bool:
    """GEOOPS_POINCARE_CONV_DZ_FIXED=1 (read per call): PoincareConv2dFn's weight gradient beyond the direct
    kernel (the MKL-DNN path: more than 16 channels or 16384 input pixels) as fixed GEMM tiles
    (poincare_conv2d_dz_cpu: the same bits for any thread count) instead of oneDNN's convolution backward (the
    default: faster, its float32 last bits depend on the thread count)."""
    return os.environ.get("GEOOPS_POINCARE_CONV_DZ_FIXED", "")[:1] == "1"


def _int_geo(v) -> bool:
    """An int or a pair of ints, exactly (a bool, a float or a list is not: it takes the checks)."""
    return type(v) is int or (type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int)


def _conv_cfg_key(x, z, bias, kernel_size, padding, stride):
    """The key of poincare_conv2d's checked-arguments cache, or None (no caching for this call): everything its
    checks and its path choice read except the curvature and the per-call state -- the tensors' exact types
    (plain: Tensor or Parameter), shapes, dtypes and devices, and the geometry arguments as given (ints or pairs
    of ints only, so 3.0 or True cannot share a key with 3 or 1).  Values and version counters are not in it:
    no check reads a value of x, z or bias (the curvature's are checked through its mark per call)."""
    if type(x) not in _library._PLAIN or type(z) not in _library._PLAIN or (
            bias is not None and type(bias) not in _library._PLAIN):
        return None
    if not (_int_geo(kernel_size) and _int_geo(padding) and _int_geo(stride)):
        return None
    return (x.shape, x.dtype, x.device, z.shape, z.dtype, z.device,
            None if bias is None else (bias.shape, bias.dtype, bias.device), kernel_size, padding, stride)


_CONV_CFG: dict = {}  # _conv_cfg_key -> _ConvCfg, filled by poincare_conv2d's eager CPU path (cleared when full)
_CONV_CFG_MAX = 64


def _conv_cfg_hit(x, z, bias, c, kernel_size, padding, stride):
    """poincare_conv2d's cached checks: the _ConvCfg of an earlier call with the same argument metadata (only
    calls whose x, z and bias had the compute dtype and that took PoincareConv2dFn are stored) when c is a
    curvature marked as checked (``_mark_checked_curvature``: positive, version-guarded) of that dtype and the
    per-call conditions of that path hold now (eager, no mode, GEOOPS_POINCARE_FUSED, the C++ backend); else
    None (the caller runs every check)."""
    if _valid_mark(c) is None or not _library.direct_call_ok() or _backend.checks_enabled():
        return None
    key = _conv_cfg_key(x, z, bias, kernel_size, padding, stride)
    cfg = _CONV_CFG.get(key) if key is not None else None
    if (cfg is None or c.dtype != cfg.cdt or not _fused_on()
            or _backend.resolve(cfg.device, _ops.FAMILY) != "cpp"):
        return None
    return cfg


class _ConvCfg:
    """What poincare_conv2d derives from checked arguments of one metadata key: the device and compute dtype, and
    PoincareConv2dFn's ``geo`` tuple (sizes, kernel / padding / stride pairs, eps, the stereographic margin, beta,
    whether the direct kernel fits)."""

    __slots__ = ("device", "cdt", "geo")

    def __init__(self, x, Co, kernel, padding, stride, cdt):
        B, C, H, W = x.shape
        kh, kw = kernel
        Ho = (H + 2 * padding[0] - kh) // stride[0] + 1
        Wo = (W + 2 * padding[1] - kw) // stride[1] + 1
        direct = _direct_conv_fits(_backend.compiled(), C, Co, B * H * W, cdt)
        geo = (B, C, H, W, Ho, Wo, Co, kernel, padding, stride, _eps(None, cdt), _ref.default_eps(cdt),
               beta_concat_scale(C, C * kh * kw), direct)
        self.device, self.cdt, self.geo = x.device, cdt, geo


def _image_rows(x, n: int, C: int):
    """The (B, C, H, W) image x as its (B*H*W, C) pixel rows: a view for a channels-last x (as_strided, cheaper
    than the permute and reshape), a copy by the C++ transpose for a contiguous one, else permute + reshape (a
    copy)."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.as_strided((n, C), (C, 1))
    if x.is_contiguous():  # a plain image: the C++ tiled transpose (torch's strided copy costs several times more)
        return _backend.compiled().poincare_image_channels_last_cpu(x).as_strided((n, C), (C, 1))
    return x.permute(0, 2, 3, 1).reshape(n, C)


_DIRECT_CONV_MAX_CH = 16
_DIRECT_CONV_MAX_PIX = 16384


def _conv_bwd_tail(ctx, ng, C2, x, gv, gz, gb, gc, has_b, c, k1, seps, v):
    """PoincareConv2dFn.backward after the convolution's backward: the logmap0 backward of gv (dx and its dc).  For
    dx only, the convolution's own row pass (csrc/cpu/poincare_conv.cpp, poincare_conv2d_logmap0_bwd_cpu: v = A x
    gives A = <v, x> / |x|^2, so that dx = A dv + 2 k A' <x, dv> x needs no transcendental) instead of the
    stereographic kernel (which recomputes atanc and its derivative per row: ~4x its forward); with c's gradient
    the stereographic kernel (the row pass would take A from atanc itself, a scalar log1p per row: slower)."""
    gx = None
    gcl = None
    if ng[0] or ng[3]:
        if not ng[3]:
            gx, _ = C2.poincare_conv2d_logmap0_bwd_cpu(gv.contiguous(), x.contiguous(), v, _c_float(c), True, False)
        else:
            lmask = (1 if ng[0] else 0) | (4 if ng[3] else 0)
            gx, _, gk, _ = C2.stereo_bwd_cpu(_LOGMAP0, gv, x, None, k1, None, seps, lmask)
        if ng[3]:
            gcl = -_library.fixed_sum(gk)
    gcf = None
    if ng[3]:
        gcf = gc.to(c.dtype).reshape(()) + gcl
        gcf = gcf.reshape(c.shape)
    if ng[0]:
        B, C, H, W = ctx.geo[:4]
        # the rows as the image's shape, channels last
        gx = (gx.as_strided((B, C, H, W), (H * W * C, 1, W * C, C)) if gx.is_contiguous()
              else gx.view(B, H, W, C).permute(0, 3, 1, 2))
    return (gx if ng[0] else None, gz, gb if (ng[2] and has_b) else None, gcf, None)


def _conv_out_hw(H, W, kernel, stride, padding):
    return ((H + 2 * padding[0] - kernel[0]) // stride[0] + 1, (W + 2 * padding[1] - kernel[1]) // stride[1] + 1)


@_library.with_func_twin
class ConvRowsFn(torch.autograd.Function):
    """The convolution's t = u @ z (B*Ho*Wo, C_out) and U = |u|^2 (B*Ho*Wo,) of the beta-scaled patch rows u
    from the tangent pixel rows v (B*H*W, C) (geoops::poincare_conv_rows_fwd / _bwd): what compiled calls of
    poincare_conv2d run, 2-D tensors in, out and saved (see poincare_conv2d)."""

    @staticmethod
    def forward(ctx, v, z, bhw, kernel, stride, padding, beta):
        v, z = v.contiguous(), z.contiguous()
        ctx.save_for_backward(v, z)  # (op_context's work)
        ctx.geo = (list(bhw), list(kernel), list(stride), list(padding), beta)
        return _ops.poincare_conv_rows_fwd(v, z, *ctx.geo)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs[:2])
        ctx.geo = tuple(inputs[2:])

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gt, gU):
        v, z = ctx.saved_tensors
        ng = ctx.needs_input_grad
        mask = _library.grad_mask(ng, 2)
        gv, gz = _ops.poincare_conv_rows_bwd(gt.contiguous(), gU.contiguous(), v, z, *ctx.geo, mask)
        return gv if ng[0] else None, gz if ng[1] else None, None, None, None, None, None


@_library.with_func_twin
class PoincareFcRowsFn(torch.autograd.Function):
    """The fully-connected layer's row passes from t = u @ z and U = |u|^2 (geoops::poincare_fc_rows_fwd / _bwd);
    the convolution supplies t and U by convolutions, and autograd adds u^T dt to dz through them."""

    @staticmethod
    def forward(ctx, t, U, z, bias, c, eps, tangent):
        ctx.save_for_backward(t, U, z, bias, c)  # (op_context's work)
        ctx.eps, ctx.tangent, ctx.has_bias = eps, tangent, bias is not None
        return _ops.poincare_fc_rows_fwd(t.contiguous(), U.contiguous(), z.contiguous(), bias, c, eps, tangent)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs[:5])
        ctx.eps, ctx.tangent, ctx.has_bias = inputs[5], inputs[6], inputs[3] is not None

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        t, U, z, bias, c = ctx.saved_tensors
        ng = ctx.needs_input_grad
        mask = (2 if ng[2] else 0) | (4 if (ng[3] and ctx.has_bias) else 0) | (8 if ng[4] else 0)
        gt, gU, gz, gb, gc = _ops.poincare_fc_rows_bwd(g.contiguous(), t.contiguous(), U.contiguous(),
                                                       z.contiguous(), bias, c, ctx.eps, mask, ctx.tangent)
        return (gt, gU, gz if ng[2] else None, gb if (ng[3] and ctx.has_bias) else None,
                gc.reshape(c.shape) if ng[4] else None, None, None)


class PoincareFlattenFn(torch.autograd.Function):
    """flatten of an image (B, C, H, W) to (B, C*H*W) rows on the eager CPU path as ONE Function:
    geoops::poincare_flatten_fwd_cpu (logmap0 of the pixel rows, the beta-scaled (channel, row, column) reorder,
    expmap0 and project of each image's row in one pass per image: the scalars in double, one rounding per output)
    and its backward (one pass per image, dx channels last).

    A curvature with gradient takes this Function too (session 37: it took the row composition, so the result
    depended on grad mode: reentrant checkpointing, whose forward runs without grad, changed float32 gradients by
    ~4e-7): the kernels have no dc, so the backward takes dc from the row composition (:func:`_flatten_image_rows`,
    the same maps) differentiated for c alone."""

    @staticmethod
    def forward(ctx, x, c, beta, seps):
        y, xl, pix, img = _backend.compiled().poincare_flatten_fwd_cpu(x, c, beta, seps)
        ctx.save_for_backward(xl, pix, img, c, x if ctx.needs_input_grad[1] else None)
        ctx.beta = beta
        return y

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        xl, pix, img, c, x = ctx.saved_tensors
        ng = ctx.needs_input_grad
        gx = _backend.compiled().poincare_flatten_bwd_cpu(g, xl, pix, img, c, ctx.beta) if ng[0] else None
        gc = None
        if ng[1]:
            with torch.enable_grad():
                cd = c.detach().requires_grad_()
                (gc,) = torch.autograd.grad(_flatten_image_rows(x.detach(), -cd, ctx.beta), cd, g)
        return gx, gc, None, None


def _flatten_image_rows(x: torch.Tensor, k: torch.Tensor, beta: float) -> torch.Tensor:
    """flatten of an image (B, C, H, W) to (B, C*H*W) rows as row ops: logmap0 of the pixel rows (a free view of a
    channels-last image), one copy into (channel, row, column) order scaled by beta, then expmap0 and project of the
    rows along the last dim (the row ops' fast path; per call, the dim=1 route costs more Python than the kernels)."""
    B, C, H, W = x.shape
    r, _ = _rows(x, 1)
    v = _st.logmap0(r, k=k).view(B, H, W, C).permute(0, 3, 1, 2).reshape(B, C * H * W) * beta
    e = _eps(None, x.dtype)  # the row fast path takes the stereographic default margin: pass it only if it differs
    return _st.project(_st.expmap0(v, k=k), k=k, eps=-1 if e == _st_ref_eps(x.dtype) else e)


def flatten(x: torch.Tensor, *, c, start_dim: int = 1, end_dim: int = -1, man_dim: int = 1) -> torch.Tensor:
    """HypLL's flatten: beta-concatenation when the manifold dimension is among the flattened ones."""
    _check_float("flatten", "x", x)
    if x.dtype in _HALF:  # computed in float32 (no half rounding between the maps)
        return flatten(x.float(), c=c, start_dim=start_dim, end_dim=end_dim, man_dim=man_dim).to(x.dtype)
    start_dim, end_dim, man_dim = (_int_arg("flatten", n, v) for n, v in
                                   (("start_dim", start_dim), ("end_dim", end_dim), ("man_dim", man_dim)))
    for name, v in (("start_dim", start_dim), ("end_dim", end_dim), ("man_dim", man_dim)):
        if not -x.dim() <= v < x.dim():
            _fail("flatten", f"{name}={v!r} is out of range for x of shape {tuple(x.shape)}", IndexError)
    start, end = start_dim % x.dim(), end_dim % x.dim()
    if not (start <= man_dim % x.dim() <= end):
        return torch.flatten(x, start, end)
    ct = _curv("flatten", c, x)
    _debug_checks("flatten", ct, {"x": (x, man_dim)})
    n_i = x.shape[man_dim]
    n = n_i * math.prod(x.shape[start + 1:end + 1])
    if n == 0:  # no point has an entry: nothing to map (and the beta factor is undefined)
        return torch.flatten(x, start, end)
    if x.dim() == 4 and start == 1 and man_dim % 4 == 1 and end == 3 and x.numel() > 0 and _fused_on():
        # an image (B, C, H, W) to (B, C*H*W) rows (see _flatten_image_rows)
        seps = _st_ref.default_eps(x.dtype)
        if (x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"
                and _eps(None, x.dtype) == seps and _library.direct_call_ok(x, ct)
                and _backend.resolve(x.device, _ops.FAMILY) == "cpp"):
            # eager CPU: one Function, one fused C++ pass each way, whether c has a gradient or not (the route
            # must not depend on grad mode: reentrant checkpointing recomputes with grad on)
            return PoincareFlattenFn.apply(x, ct, beta_concat_scale(n_i, n), seps)
        return _flatten_image_rows(x, _k("flatten", ct, x), beta_concat_scale(n_i, n))
    k = _k("flatten", ct, x)
    v = torch.flatten(_st.logmap0(x, k=k, dim=man_dim), start, end) * beta_concat_scale(n_i, n)
    return _st.project(_st.expmap0(v, k=k, dim=start), k=k, dim=start, eps=_eps(None, x.dtype))


def max_pool2d(x: torch.Tensor, *, c, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False) -> torch.Tensor:
    """HypLL's HMaxPool2d: max pooling of logmap0(x) in the tangent space (``F.max_pool2d``'s kernel_size, stride,
    padding, dilation, ceil_mode), then expmap0."""
    _check_image("max_pool2d", x)
    if x.shape[1] < 1:  # (as avg_pool2d / poincare_conv2d: not torch's max-pool message about 3-D / 4-D input)
        _fail("max_pool2d", f"x must have at least one channel (the manifold dimension), got shape {tuple(x.shape)}")
    if x.dtype in _HALF:  # computed in float32 (no half rounding between the maps)
        return max_pool2d(x.float(), c=c, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                          ceil_mode=ceil_mode).to(x.dtype)
    kernel_size = _pair(kernel_size, "kernel_size", "max_pool2d", 1)
    stride = None if stride is None else _pair(stride, "stride", "max_pool2d", 1)
    padding, dilation = _pair(padding, "padding", "max_pool2d", 0), _pair(dilation, "dilation", "max_pool2d", 1)
    k = _k("max_pool2d", c, x)
    _debug_checks("max_pool2d", None, {"x": (x, 1)}, k=k)
    v = F.max_pool2d(_st.logmap0(x, k=k, dim=1), kernel_size, stride, padding, dilation, ceil_mode)
    return _st.project(_st.expmap0(v, k=k, dim=1), k=k, dim=1, eps=_eps(None, x.dtype))


def midpoint(x: torch.Tensor, *, c, dim: int = -1, batch_dim=0, keepdim: bool = False) -> torch.Tensor:
    """HypLL's midpoint: m = f / (1 + sqrt(1 - c|f|^2)), f = sum lam_i x_i / sum (lam_i - 1) over batch_dim."""
    _check_float("midpoint", "x", x)
    keepdim = _args.bool_arg("geoops.poincare.midpoint", "keepdim", keepdim)
    d = _st._vector_dim("midpoint", x, dim, fail=_fail)
    bdims = tuple(batch_dim) if isinstance(batch_dim, (tuple, list)) else (batch_dim,)
    bdims = tuple(_args.as_index(b) for b in bdims)
    for b in bdims:
        if b is None or not -x.dim() <= b < x.dim():
            _fail("midpoint", f"batch_dim={batch_dim!r} must be an int (or ints) in range for x of shape "
                              f"{tuple(x.shape)}", TypeError if b is None else IndexError)
        if b % x.dim() == d:
            _fail("midpoint", f"batch_dim={batch_dim!r} names the manifold dimension dim={dim}: the points lie "
                              f"along dim and are averaged over batch_dim, which must differ")
    dim, batch_dim = d, (bdims if isinstance(batch_dim, (tuple, list)) else bdims[0])
    if x.dtype in _HALF:  # a composition of torch ops: computed in float32, returned in x's dtype
        return midpoint(x.float(), c=c, dim=dim, batch_dim=batch_dim, keepdim=keepdim).to(x.dtype)
    ct = _curv("midpoint", c, x)
    den = 1 - ct * x.pow(2).sum(dim=dim, keepdim=True)
    lam = 2 / den.clamp_min(1e-15)
    L = lam.sum(dim=batch_dim, keepdim=True)
    F = (lam * x).sum(dim=batch_dim, keepdim=True)
    Lm = (lam - 1).sum(dim=batch_dim, keepdim=True).clamp_min(1e-15)
    f = F / Lm
    # q = 1 - c|f|^2 (f is the Klein point) near the boundary is ~delta^2 / 4 for rows with 1 - c|x|^2 ~ delta:
    # formed as 1 - c|f|^2 it cancels (~eps / q relative: m off by ~1e-12 at delta = 1e-4 in float64, the batch
    # norm's logmap_m rows by 2e-5, session 44).  For any lam_i, Lm^2 q = n^2 + c V + L R with the weighted scatter
    # V = (1/2) sum_ij lam_i lam_j |x_i - x_j|^2 = L sum_i lam_i |e_i|^2 - |sum_i lam_i e_i|^2, e_i = x_i - p for any
    # p (all terms >= 0; with p = F / L, detached as V does not depend on p, the last one is ~rounding), and
    # R = sum_i (lam_i (1 - c|x_i|^2) - 2): zero but on rows outside the ball, whose lam is clamped (there it keeps
    # q = 1 - c|f|^2 exactly, as every backend's midpoint; session 45: without it such batches moved by %).
    n = 1  # rows averaged (a loop: dynamo's fullgraph does not trace a generator expression)
    for b in bdims:
        n *= x.shape[b]
    e = x - (F / L).detach()
    V = (L * (lam * e.pow(2).sum(dim=dim, keepdim=True)).sum(dim=batch_dim, keepdim=True)
         - (lam * e).sum(dim=batch_dim, keepdim=True).pow(2).sum(dim=dim, keepdim=True)).clamp_min(0)
    R = torch.where(den > 1e-15, 0, lam * den - 2).sum(dim=batch_dim, keepdim=True)
    # q > 0 in exact arithmetic for points in the ball; the root of a q <= 0 (rows outside it) is taken as 0, with a
    # zero (not 0 * inf) gradient (session 35)
    q = (n * n + ct * V + L * R) / Lm.square()
    pos = q > 0
    m = f / (1 + torch.where(pos, torch.where(pos, q, 1).sqrt(), 0))
    return m if keepdim else m.squeeze(batch_dim)


def avg_pool2d(x: torch.Tensor, *, c, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """HypLL's HAvgPool2d(use_midpoint=True): the midpoint of each beta-concatenated window."""
    op = "avg_pool2d"
    _check_image(op, x)
    if x.dtype in _HALF:  # computed in float32 (no half rounding between the unfold and the midpoint)
        return avg_pool2d(x.float(), c=c, kernel_size=kernel_size, stride=stride, padding=padding).to(x.dtype)
    kernel, padding, stride = _geometry(op, x, kernel_size, padding, kernel_size if stride is None else stride)
    B, C, H, W = x.shape
    try:
        u = poincare_unfold(x, c=c, kernel_size=kernel, padding=padding, stride=stride)
        u = u.reshape(B, C, kernel[0] * kernel[1], u.shape[-1])
        Ho = (H + 2 * padding[0] - kernel[0]) // stride[0] + 1
        Wo = (W + 2 * padding[1] - kernel[1]) // stride[1] + 1
        return midpoint(u, c=c, dim=1, batch_dim=2).reshape(B, C, Ho, Wo)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, op) from None


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def batch_norm(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, *, c,
               running_mean: Optional[torch.Tensor] = None, running_var: Optional[torch.Tensor] = None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """Poincaré midpoint batch norm (HypLL's HBatchNorm(use_midpoint=True)) of rows x (N, D).

    Training: the batch midpoint m and variance var = mean_i d(x_i, m)^2; y = expmap_b(sqrt(weight/(var+eps))
    PT_{m->b}(logmap_m(x))) with b = expmap0(bias).  With running buffers, training updates them in place
    (running_mean moves along the geodesic towards m by `momentum`, running_var by an exponential average of
    the unbiased variance); eval mode (training=False) normalises with the running statistics instead.
    """
    op = "batch_norm"
    _check_float(op, "x", x)
    if x.dim() != 2:
        _fail(op, f"x must be (N, D) rows of points, got shape {tuple(x.shape)}")
    _bn_check_params(op, x, x.shape[1], bias, weight, running_mean, running_var)
    _check_momentum(op, momentum)
    eps = _check_bn_eps(op, eps)
    ct = _curv(op, c, x)
    _debug_checks(op, ct, {"x": (x, 1)}, {"bias": bias, "weight": weight})
    cdt = torch.float32 if x.dtype in _HALF else x.dtype
    # _as: no to() op when the dtype already matches (each op is ~5-20 us of host time on a GPU)
    xr, ct = _as(x, cdt).contiguous(), _as(ct, cdt)
    fused = ((training or running_mean is None) and xr.device.type == "cpu" and xr.shape[0] > 0
             and xr.shape[1] > 0 and _library.direct_call_ok(xr, bias, weight, ct)
             and not _backend.checks_enabled() and _backend.resolve(xr.device, _ops.FAMILY) == "cpp")
    if fused:
        b = k = None  # expmap0(bias) inside the layer's C++ calls
    else:
        k = ct._geoops_checked[1] if _checked(ct, xr) else -ct  # (a marked c's cached -c: no neg op)
        # the Triton transport kernel forms expmap0(bias) itself (GEOOPS_POINCARE_TRITON_FUSED_BIAS): b comes
        # from BnTransportFn below; else the stereographic expmap0 here
        b = None if _bias_transport_on(bias, cdt) else _st.expmap0(_as(bias, cdt), k=k)
    if training or running_mean is None:
        n = max(x.shape[0], 1)
        if fused:
            # eager CPU: the whole layer (midpoint, logmap_m, variance, transport, row op) in one Function
            y, var, mean = BnLayerFn.apply(xr, bias.to(cdt), weight.to(cdt), ct, n, eps, _eps(None, cdt),
                                           _c_float(ct))
        else:
            # traced / CUDA / checked / reference calls: the torch composition over the custom ops (the midpoint
            # sums, the fused logmap, the row op); d(m, x_i) = lam_m |logmap_m(x_i)|: u's rows give the variance
            y = None
            k = -ct if k is None else k
            mean = _library.apply(MidpointMeanFn, xr, ct)
            u = _st.logmap(mean, xr, k=k)
            S = _library.apply(SqSumFn, u)
            if b is None and _transport_triton_on(bias, mean, S, weight, ct):
                M, var, b = BnTransportFn.apply(bias, mean, S, _as(weight, cdt), ct, float(n), float(eps), True, True)
            elif _transport_triton_on(b := _bias_b(b, bias, cdt, k), mean, S, weight, ct):
                M, var = BnTransportFn.apply(b, mean, S, _as(weight, cdt), ct, float(n), float(eps), True)
            else:
                AF, G = _gram(b, mean)
                lam_m = 2 / (1 + k * G[2, 2]).clamp_min(1e-15)
                var = lam_m.square() * S / n
                M = _transport_matrix(AF, G, k, (weight.to(cdt) / (var + eps)).sqrt())
        if training and running_mean is not None:
            _bn_running_update_(running_mean, running_var, mean, var, x.shape[0], momentum, ct, k, fused)
        if y is not None:
            return y.to(x.dtype)
    else:
        mean, var = running_mean.to(cdt), running_var.to(cdt)
        k = -ct if k is None else k
        u = _st.logmap(mean, xr, k=k)
        if b is None and _transport_triton_on(bias, mean, var, weight, ct):
            M, _, b = BnTransportFn.apply(bias, mean.contiguous(), var, _as(weight, cdt), ct, 1.0, float(eps), False,
                                          True)
        elif _transport_triton_on(b := _bias_b(b, bias, cdt, k), mean, var, weight, ct):
            M = BnTransportFn.apply(b, mean.contiguous(), var, _as(weight, cdt), ct, 1.0, float(eps), False)[0]
        else:
            AF, G = _gram(b, mean)
            M = _transport_matrix(AF, G, k, (weight.to(cdt) / (var + eps)).sqrt())
    # M: the transport m -> b and the rescaling as one (D, D) matrix; then expmap_b(u M) + project: one fused
    # row op (the kernels run u M as a GEMM and the row pass after it)
    return _as(_library.apply(BnRowsFn, u.contiguous(), M.contiguous(), b.contiguous(), ct, _eps(None, cdt)), x.dtype)


def _shaped(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t.reshape(like.shape) without the op when t already has that shape."""
    return t if t.shape == like.shape else t.reshape(like.shape)


def _as(t: torch.Tensor, dtype) -> torch.Tensor:
    """t.to(dtype) without the op when t already has it."""
    return t if t.dtype == dtype else t.to(dtype)


def _bn_check_params(op, x, D, bias, weight, running_mean, running_var):
    """batch_norm's parameters and buffers against x's manifold dimension D and device."""
    if D < 1:  # (the forward would run and the backward fail inside autograd: no point has a coordinate)
        _fail(op, f"x must have at least one {'channel' if x.dim() == 4 else 'feature'} (the manifold dimension), "
                  f"got shape {tuple(x.shape)}")
    _check_bias(op, bias, D, "the manifold dimension of x")
    _check_float(op, "weight", weight)
    if weight.numel() != 1:
        _fail(op, f"weight must be a 1-element tensor (the target variance), got shape {tuple(weight.shape)}")
    if (running_mean is None) != (running_var is None):
        _fail(op, "running_mean and running_var must be given together (or both None)")
    if running_mean is not None:
        _check_float(op, "running_mean", running_mean)
        _check_float(op, "running_var", running_var)
        if running_mean.shape != (D,):
            _fail(op, f"running_mean must have shape ({D},) (the manifold dimension of x), got "
                      f"{tuple(running_mean.shape)}")
        if running_var.numel() != 1:
            _fail(op, f"running_var must be a 1-element tensor, got shape {tuple(running_var.shape)}")
    _same_device(op, {"x": x, "bias": bias, "weight": weight, "running_mean": running_mean,
                      "running_var": running_var})


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def batch_norm2d(x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor, *, c,
                 running_mean: Optional[torch.Tensor] = None, running_var: Optional[torch.Tensor] = None,
                 training: bool = True, momentum: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """:func:`batch_norm` of the pixel rows of an image x (B, C, H, W) with the points along the channels (HypLL's
    HBatchNorm2d) -> (B, C, H, W), channels last.  Eager CPU training of a channels-last or contiguous float32 /
    float64 image: BnLayerFn takes the image itself (its pixel rows a free view of a channels-last image, the C++
    tiled transpose of a contiguous one, inside the Function; the output rows returned as a channels-last image on
    their storage; dx in x's layout): no permute / reshape autograd nodes, no torch strided copies."""
    op = "batch_norm2d"
    _check_float(op, "x", x)
    if x.dim() != 4:
        _fail(op, f"x must be an image (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    _bn_check_params(op, x, C, bias, weight, running_mean, running_var)
    _check_momentum(op, momentum)
    eps = _check_bn_eps(op, eps)
    if _backend.checks_enabled():
        _debug_checks(op, _curv(op, c, x), {"x": (x, 1)}, {"bias": bias, "weight": weight})
    if ((training or running_mean is None) and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"
            and B * H * W > 0 and C > 0 and _library.direct_call_ok(x)
            and (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous())
            and _backend.resolve(x.device, _ops.FAMILY) == "cpp"):  # (before ct: no to() on other backends)
        ct = _curv(op, c, x).to(x.dtype)
        if _library.direct_call_ok(x, bias, weight, ct) and not _backend.checks_enabled():
            n = B * H * W
            y, var, mean = BnLayerFn.apply(x, bias.to(x.dtype), weight.to(x.dtype), ct, n, eps, _eps(None, x.dtype),
                                           _c_float(ct))
            if training and running_mean is not None:
                _bn_running_update_(running_mean, running_var, mean, var, n, momentum, ct, None, True)
            return y
    rows = x.permute(0, 2, 3, 1).reshape(-1, C)
    try:
        y = batch_norm(rows, bias, weight, c=c, running_mean=running_mean, running_var=running_var,
                       training=training, momentum=momentum, eps=eps)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, op) from None
    return y.reshape(B, H, W, C).permute(0, 3, 1, 2)


def _bn_running_update_(running_mean, running_var, mean, var, nr: int, momentum: float, ct, k, fused: bool) -> None:
    """batch_norm's training update of the running statistics in place (no gradient): running_mean moves along the
    geodesic towards the batch midpoint by momentum, running_var by an exponential average of the unbiased
    variance (nr rows)."""
    direct = fused and _running_direct_on(running_mean, mean)
    if not direct and not _running_triton_on(running_mean, running_var, mean, var):
        # the composition (what torch.export traces) on detached values, without a torch.no_grad() region: in a
        # program exported in training mode that region has no outputs, and torch.export.save (2.13) refused it
        # ("Node.meta wrap_with_set_grad_enabled is missing val field")
        kd = (-ct).detach() if k is None else k.detach()
        running_mean.copy_(_st.geodesic(momentum, running_mean, mean.detach(), k=kd))
        running_var.mul_(1 - momentum).add_(momentum * (var.detach() * (nr / max(nr - 1, 1))))
        return
    with torch.no_grad():
        if direct and _running_cpp_on(running_mean, running_var, var):
            # eager CPU: both updates in one C++ call (the geodesic step's coefficients in double)
            _backend.compiled().poincare_bn_running_update_cpu(running_mean, running_var, mean, var, momentum,
                                                               _c_float(ct), nr / max(nr - 1, 1))
        elif direct:
            # eager CPU: the geodesic step as running_mean <- A running_mean + B mean (scalars from three inner
            # products), the averages as add_ calls with Python alphas (no scalar tensors to convert)
            _running_mean_step_(running_mean, mean, momentum, _c_float(ct))
            running_var.add_(running_var, alpha=-momentum).add_(var, alpha=momentum * (nr / max(nr - 1, 1)))
        else:
            # Triton backend: both updates in one launch (the geodesic step's coefficients in float64)
            _backend.triton_kernels(_ops.FAMILY).poincare_bn_running_update_(
                running_mean, running_var, mean, var, ct, momentum, nr / max(nr - 1, 1))


def _running_triton_on(running_mean, running_var, mean, var) -> bool:
    """Whether the running update runs as one Triton launch (geoops.kernels.poincare._bn_running_kernel) instead of
    the stereographic geodesic composition: the Triton backend on the buffers' device, contiguous 1-D float32 /
    float64 buffers and a one-entry running_var on the mean's device (GEOOPS_POINCARE_TRITON_FUSED_BN=0: the
    composition)."""
    if _knob_off("GEOOPS_POINCARE_TRITON_FUSED_BN") or _backend.checks_enabled():
        return False
    if not (running_mean.dim() == 1 and running_mean.numel() > 0 and running_mean.is_contiguous()
            and running_var.numel() == 1
            and running_var.is_contiguous() and mean.dim() == 1 and var.numel() == 1
            and running_mean.device == mean.device == running_var.device == var.device
            and running_mean.dtype in (torch.float32, torch.float64)
            and running_var.dtype in (torch.float32, torch.float64)
            and _library.direct_call_ok(running_mean, running_var, mean, var)):
        return False
    return _backend.resolve(running_mean.device, _ops.FAMILY) == "triton"


def _running_direct_on(running_mean: torch.Tensor, mean: torch.Tensor) -> bool:
    """Whether batch_norm's running-mean update takes the direct two-coefficient step (eager CPU, one dtype, a 1-D
    mean) instead of the stereographic geodesic composition."""
    return (running_mean.dim() == 1 and mean.dtype == running_mean.dtype and running_mean.device.type == "cpu"
            and _library.direct_call_ok(running_mean, mean))


def _running_cpp_on(running_mean: torch.Tensor, running_var: torch.Tensor, var: torch.Tensor) -> bool:
    """Whether the direct running update runs as one C++ call (geoops::poincare_bn_running_update: the geodesic
    step's Gram and coefficients in double, the variance's average, in place) instead of ``_running_mean_step_``
    and two ``add_`` calls: contiguous buffers of the mean's dtype, a one-entry running_var."""
    return (running_mean.is_contiguous() and running_var.numel() == 1 and running_var.dtype == running_mean.dtype
            and var.dtype == running_mean.dtype and running_var.device.type == "cpu")


def _atanc_neg(z: float, q: float) -> float:
    """atanc(z) = artanh(sqrt(-z))/sqrt(-z) for z <= 0 given q = 1 + z without cancellation: stereo_math.h's atanc
    (its series below |z| = 1e-3; q clamped only where q <= 0, outside the ball) in Python floats, the same
    operations as the C++ running update's call (session 49)."""
    if abs(z) < 1e-3:
        return 1 + z * (-1 / 3 + z * (1 / 5 + z * (-1 / 7 + z * (1 / 9 + z * (-1 / 11)))))
    s = math.sqrt(-z)
    return 0.5 * math.log1p(2 * s * (1 + s) / (q if q > 0 else 1e-15)) / s


def _tanc_neg(z: float) -> float:
    """tanc(z) = tanh(sqrt(-z))/sqrt(-z) for z <= 0."""
    if z > -1e-12:
        return 1 + z / 3
    sn = math.sqrt(-z)
    return math.tanh(sn) / sn


def _running_mean_step_(rm: torch.Tensor, m: torch.Tensor, t: float, c: float) -> None:
    """rm <- geodesic(t, rm, m) on the ball of curvature -c, in place: x (+) t (x) ((-x) (+) y) is a linear
    combination A x + B g of x and g = y - x whose coefficients follow from |x|^2, |y|^2, |g|^2, <x, g> (the Möbius
    formulas of geoops.reference.stereographic on those scalars, in double); the same values as the composition up
    to rounding, in 3 small aten calls instead of ~40.  In x and the difference g (session 44): from <x, y> the
    denominator 1 + 2k<x,y> + k^2|x|^2|y|^2 and (-x) (+) y = p x + q y (p ~ -q) cancel for y near x near the
    boundary (1e-2 of the step off at 1 - |x|^2 = 1e-6); here den = (1 + k|x|^2)(1 + k|y|^2) - k|g|^2 and
    (-x) (+) y = (k|g|^2 x + (1 + k|x|^2) g) / den have no cancelling sum for k < 0."""
    G = torch.stack((rm, m - rm, m))
    (x2, xg, _), (_, g2, _), (_, _, y2) = (G @ G.t()).tolist()
    k = -c
    # v = (-x) (+) y = p x + q g
    nb = 1 + k * x2
    pp = nb * (1 + k * y2)
    den = max(pp - k * g2, 1e-15)
    p, q = k * g2 / den, nb / den
    v2 = p * p * x2 + 2 * p * q * xg + q * q * g2
    # w = t (x) v = s v; 1 + k|v|^2 = pp / den, or 0 (clamped) for x outside the ball (stereo_math.h's ball_q)
    qv = pp / den
    a = _atanc_neg(k * v2, qv if (nb > 0 or qv > 1e-15) else 0.0)
    s = t * a * _tanc_neg(k * t * t * v2 * a * a)
    w2, xw = s * s * v2, s * (p * x2 + q * xg)
    # x (+) w = A x + B g
    den = max(1 - 2 * k * xw + k * k * x2 * w2, 1e-15)
    A = ((1 - 2 * k * xw - k * w2) + (1 + k * x2) * s * p) / den
    B = (1 + k * x2) * s * q / den
    rm.add_(rm, alpha=A - 1).add_(G[1], alpha=B)  # add_ with a Python alpha: no scalar tensor to convert


class BnLayerFn(torch.autograd.Function):
    """Eager CPU training batch norm, the whole layer as one Function of two C++ calls: (x, bias, weight, c) ->
    (y, var, m).  geoops::poincare_bn_train_fwd: b = expmap0(bias), the midpoint / logmap_m / variance pass, the
    transport's scalar chain and M in double, v = u M (GEMM), the row op; poincare_bn_train_bwd: the row op's
    backward, gM = u^T gv, the transport's backward in double, gu = gv M^T + 2 gS u, the logmap's and midpoint's
    backward, expmap0's backward (measured against the same steps glued in Python: ~20 small aten calls per
    direction and a separate expmap0 node).  var and m: no gradient (running statistics)."""

    @staticmethod
    def forward(ctx, x, bias, w, c, n, eps, eps_proj, cf=None):
        cf = float(c) if cf is None else cf  # cf: float(c) when the caller has it (a marked curvature's cache)
        ctx.image = x.shape if x.dim() == 4 else None
        if ctx.image is not None:  # a (B, C, H, W) image (batch_norm2d): its pixel rows, a free view when channels last
            B, C, H, W = x.shape
            # dx in x's layout: a plain contiguous image gets a plain dx (else AccumulateGrad copies it for a leaf)
            ctx.plain = not x.is_contiguous(memory_format=torch.channels_last)
            x = _image_rows(x, B * H * W, C)  # a view (channels last) or the C++ transpose (a contiguous image)
        y, var, m, u, v, M, b, mid, tr = _backend.compiled().poincare_bn_train_fwd_cpu(
            x, bias, float(w), cf, float(n), eps, eps_proj)
        ctx.save_for_backward(x, bias, m, mid, u, v, M, b, tr)
        ctx.cf, ctx.eps_proj, ctx.wshape, ctx.c_meta = cf, eps_proj, w.shape, (c.dtype, c.shape)
        ctx.mark_non_differentiable(var, m)
        ctx.set_materialize_grads(False)  # no zero tensors for var's and m's (unused) gradients
        if ctx.image is not None:
            y = _rows_as_image(y.contiguous(), B, C, H, W)
        return y, var, m

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gy, _gvar, _gm):
        x, bias, m, mid, u, v, M, b, tr = ctx.saved_tensors
        if gy is None:  # y itself unused (set_materialize_grads(False))
            gy = torch.zeros(ctx.image if ctx.image is not None else x.shape, dtype=x.dtype, device=x.device)
            if ctx.image is not None:
                gy = gy.contiguous(memory_format=torch.channels_last)
        if ctx.image is not None:  # a view of a channels-last gy, the C++ transpose of a contiguous one
            gy = _image_rows(gy, x.shape[0], x.shape[1])
        dx, gbias, gw, gc = _backend.compiled().poincare_bn_train_bwd_cpu(
            gy, x, bias, m, mid, u, v, M, b, tr, ctx.cf, ctx.eps_proj)
        ng = ctx.needs_input_grad
        if ctx.image is not None and ng[0]:
            B, C, H, W = ctx.image
            dx = dx.view(B, H, W, C).permute(0, 3, 1, 2)  # the image's shape, channels last
            if ctx.plain:  # the C++ tiled transpose back to x's plain layout (torch's strided copy ~4x slower)
                dx = _backend.compiled().poincare_image_channels_first_cpu(dx)
        cdt, cshape = ctx.c_meta  # dweight and dc come in x's dtype, 0-dim
        if ng[3]:
            gc = gc if gc.dtype == cdt else gc.to(cdt)
            gc = gc if gc.shape == cshape else gc.reshape(cshape)
        return (dx if ng[0] else None, gbias if ng[1] else None,
                (gw if gw.shape == ctx.wshape else gw.reshape(ctx.wshape)) if ng[2] else None,
                gc if ng[3] else None, None, None, None, None)


@_library.with_func_twin
class SqSumFn(torch.autograd.Function):
    """sum(u * u) of a contiguous tensor as one dot product; backward one scaled copy (2 g u) -- instead of
    pow + sum and PowBackward's three elementwise passes."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        flat = u.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return u * (2 * g)


@_library.with_func_twin
class SqRowsFn(torch.autograd.Function):
    """Row-wise squared norms |r_i|^2 of rows r (N, D); backward one pass 2 g_i r_i."""

    @staticmethod
    def forward(ctx, r):
        ctx.save_for_backward(r)
        return torch.linalg.vecdot(r, r)

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return r * (2 * g).unsqueeze(-1)


@_library.with_func_twin
class MidpointMeanFn(torch.autograd.Function):
    """Rows x (N, D) -> the batch midpoint m = f / (1 + sqrt(q)), f = F / L, q = 1 - c|f|^2 = (N^2 + c V + Lt R) / L^2
    (see midpoint), from the fused sums (F, L) = geoops::poincare_midpoint_sums_fwd and the scatter V, R
    (_mid_scatter); backward by hand on the D-vector (gF = gm / ((1 + r) L), gL, gV, gR and q's c term), then
    geoops::poincare_midpoint_sums_bwd and V's and R's row parts."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.fused = fused = _midmean_triton_on(x, c)  # (a local: func_twin's recording ctx only records attributes)
        if fused:  # Triton backend: the partial sums and the D-vector math above, two launches
            m, fs, sc = _backend.triton_kernels(_ops.FAMILY).poincare_midpoint_mean_fwd(x, c)
            ctx.save_for_backward(x, c, fs, sc)
            return m
        F_, L_ = _ops.poincare_midpoint_sums_fwd(x, c)
        Lc = L_.clamp_min(1e-15)
        f = F_ / Lc
        # the root of q = 1 - c|f|^2 as (n^2 + c V + Lt R) / L^2 (see midpoint: 1 - c|f|^2 cancels near the boundary)
        V, R = _mid_scatter(x, c, F_)[:2]
        r = ((x.shape[0] ** 2 + c * V + (L_ + x.shape[0]) * R) / Lc.square()).sqrt()
        ctx.save_for_backward(x, c, F_, L_, f, V, R, r)
        return f / (1 + r)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gm):
        if ctx.fused:
            x, c, fs, sc = ctx.saved_tensors
            need_c = ctx.needs_input_grad[1]
            gx, gc = _backend.triton_kernels(_ops.FAMILY).poincare_midpoint_mean_bwd(gm, x, c, fs, sc, need_c)
            return gx, (gc.reshape(c.shape) if need_c else None)
        x, c, F_, L_, f, V, R, r = ctx.saved_tensors
        opr = 1 + r
        Lc = L_.clamp_min(1e-15)
        gq = -torch.dot(gm, f) / (2 * r * opr * opr)  # d/dq of the root's part, f / (1 + sqrt(q))
        gF = gm / (opr * Lc)
        # q = (n^2 + c V + (L + n) R) / L^2: its L, V and R parts (V's and R's through the rows below, not through f:
        # the chain through f, 1 - c <f, x_i> - q, cancels as the forward did)
        gL = (-torch.dot(gF, f) + gq * (R / Lc - 2 * r.square()) / Lc) * (L_ > 1e-15)
        gV = gq * c / Lc.square()
        gR = gq * (L_ + x.shape[0]) / Lc.square()
        gx, gc = _ops.poincare_midpoint_sums_bwd(gF.contiguous(), gL, x, c)
        _, _, lam, e, G, S1, Lt, live = _mid_scatter(x, c, F_)
        # V = Lt S1 - |G|^2 (Lt = sum lam_i, S1 = sum lam_i |e_i|^2, G = sum lam_i e_i, e_i = x_i - F / Lt held);
        # R's rows (lam clamped: a constant) d(lam_i (1 - c|x_i|^2)) = -lam_i (2 c x_i dx_i + |x_i|^2 dc)
        dlam = (S1 + Lt * e.square().sum(-1, keepdim=True) - 2 * (e @ G).unsqueeze(-1)) * live
        xd = x.to(lam.dtype)
        dead = gR * lam * ~live
        gx = gx + (gV * (2 * lam * (Lt * e - G) + dlam * c * lam.square() * xd) - 2 * c * dead * xd).to(gx.dtype)
        if not ctx.needs_input_grad[1]:
            return gx, None
        xx = xd.square().sum(-1, keepdim=True)
        gc = gc + gq * V / Lc.square() + gV * (dlam * lam.square() * xx).sum() / 2 - (dead * xx).sum()
        return gx, gc.reshape(c.shape)


def _mid_scatter(x, c, F_):
    """The midpoint's weighted scatter V = (1/2) sum_ij lam_i lam_j |x_i - x_j|^2 = Lt S1 - |G|^2 of rows x (N, D)
    about p = F / Lt (V does not depend on p; at the weighted centroid G ~ 0: no cancellation), R = sum of
    lam_i (1 - c|x_i|^2) - 2 over the rows whose lam is clamped (outside the ball; see midpoint), and the backward's
    pieces (lam, e, G, S1, Lt, live: 1 - c|x_i|^2 above lam's clamp)."""
    xd, cd = x.to(F_.dtype), c.to(F_.dtype)
    den = 1 - cd * xd.square().sum(-1, keepdim=True)
    live = den > 1e-15  # the sums op's clamp
    lam = 2 / den.clamp_min(1e-15)
    Lt = lam.sum()
    e = xd - F_ / Lt
    le = lam * e
    G = le.sum(0)
    S1 = (le * e).sum()
    R = torch.where(live, 0, lam * den - 2).sum()
    return (Lt * S1 - torch.dot(G, G)).clamp_min(0), R, lam, e, G, S1, Lt, live


def _midpoint_sums_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@_library.first_order_only
def _midpoint_sums_backward(ctx, gF, gL):
    """The op geoops::poincare_midpoint_sums_fwd(x, c) -> (F, L) differentiated on its own (an exported program,
    _library.op_autograd; MidpointMeanFn's torch steps around it are in the program): its backward op."""
    x, c = ctx.saved_tensors
    gx, gc = _ops.poincare_midpoint_sums_bwd(gF.contiguous(), gL, x, c)
    return gx, (gc.reshape(c.shape) if ctx.needs_input_grad[1] else None)


def _midmean_triton_on(x, c) -> bool:
    """Whether MidpointMeanFn runs on poincare_midpoint_mean_fwd / _bwd (the partial sums and a one-program finish
    kernel each way: f = F / L, the root, m; its backward's dL/dF, dL/dL, the root's dL/dc) instead of the midpoint
    sums op and ~10 torch ops on length-D vectors each way: eager plain tensors on the Triton backend, x (N, D)
    contiguous float32 / float64 with N, D > 0, c one entry of x's dtype (GEOOPS_POINCARE_TRITON_FUSED_BN=0: the
    torch ops)."""
    if _knob_off("GEOOPS_POINCARE_TRITON_FUSED_BN") or _backend.checks_enabled():
        return False
    if not (x.dim() == 2 and x.shape[0] > 0 and x.shape[1] > 0 and x.is_contiguous()
            and x.dtype in (torch.float32, torch.float64) and c.numel() == 1 and c.dtype == x.dtype
            and c.device == x.device and _library.direct_call_ok(x, c)
            and not torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return False
    return _backend.resolve(x.device, _ops.FAMILY) == "triton"


@_library.with_func_twin
class BnRowsFn(torch.autograd.Function):
    """The batch norm's row pass y = project(expmap_b(u @ M)) (geoops::poincare_bn_rows_fwd / _bwd)."""

    @staticmethod
    def forward(ctx, u, M, b, c, eps):
        _tensors_eps_context(ctx, (u, M, b, c, eps), None)
        return _ops.poincare_bn_rows_fwd(u, M, b, c, eps)

    op_context = staticmethod(_tensors_eps_context)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        u, M, b, c = ctx.saved_tensors
        gu, gM, gb, gc = _ops.poincare_bn_rows_bwd(g.contiguous(), u, M, b, c, ctx.eps)
        return gu, gM, gb, (gc.reshape(c.shape) if ctx.needs_input_grad[3] else None), None


def _bias_transport_on(bias: torch.Tensor, cdt) -> bool:
    """Whether the batch norm's b = expmap0(bias) may come from the Triton transport kernel (BnTransportFn with
    from_bias, session 34: one stereographic launch and its glue less each way): GEOOPS_POINCARE_TRITON_FUSED_BIAS
    (read per call; 0 = the stereographic expmap0) and FUSED_BN on, a contiguous 1-D bias of the compute dtype on
    the Triton backend (the transport's own conditions are checked where it runs: ``_transport_triton_on``)."""
    return (not _knob_off("GEOOPS_POINCARE_TRITON_FUSED_BIAS") and bias.dim() == 1 and bias.dtype == cdt
            and bias.is_contiguous() and not _knob_off("GEOOPS_POINCARE_TRITON_FUSED_BN")
            and _backend.resolve(bias.device, _ops.FAMILY) == "triton")


def _bias_b(b, bias, cdt, k):
    """b = expmap0(bias) (the stereographic op) unless already formed."""
    return _st.expmap0(_as(bias, cdt), k=k) if b is None else b


def _transport_triton_on(b, m, S, w, ct) -> bool:
    """Whether the batch norm's transport matrix (and var) comes from BnTransportFn (two Triton launches) instead of
    _gram / _transport_matrix's torch ops: eager plain tensors on the Triton backend, one dtype, S / w / c one
    entry (GEOOPS_POINCARE_TRITON_FUSED_BN=0: the torch ops)."""
    if _knob_off("GEOOPS_POINCARE_TRITON_FUSED_BN") or _backend.checks_enabled():
        return False
    if not (b.dim() == 1 and m.dim() == 1 and b.numel() > 0 and b.is_contiguous() and m.is_contiguous()
            and b.dtype == m.dtype
            and S.numel() == 1 and w.numel() == 1 and ct.numel() == 1 and S.dtype == b.dtype
            and b.dtype in (torch.float32, torch.float64) and b.device == m.device == S.device == w.device
            and _library.direct_call_ok(b, m, S, w, ct) and not torch._C._functorch.is_functorch_wrapped_tensor(b)):
        return False
    return _backend.resolve(b.device, _ops.FAMILY) == "triton"


class BnTransportFn(torch.autograd.Function):
    """(b, m, S, w, c) -> (M, var): the batch norm's transport-and-rescale matrix M (D, D) of _transport_matrix
    and (train) var = lam_m^2 S / n, or (eval: S is the running variance) var = S; one Triton launch each way
    (geoops.kernels.poincare.poincare_bn_transport_fwd / _bwd, the scalar chain in float64).  var: no gradient.
    from_bias (session 34): the first argument is the bias, b = expmap0(bias) is formed in the kernels, and
    (M, var, b) come back (b's gradient from its other users enters the backward kernel, which returns dL/dbias)."""

    @staticmethod
    def forward(ctx, b, m, S, w, c, n, eps, train, from_bias=False):
        kern = _backend.triton_kernels(_ops.FAMILY)
        out = kern.poincare_bn_transport_fwd(b, m, S, w, c, n, eps, train, from_bias)
        # (from_bias: the backward reads the b it wrote, and the bias for expmap0's backward)
        ctx.save_for_backward(out[2] if from_bias else b, m, S, w, c, b if from_bias else None)
        ctx.args = (n, eps, train)
        ctx.from_bias = from_bias
        ctx.mark_non_differentiable(out[1])
        ctx.set_materialize_grads(False)  # (no zero var gradient per backward; a None gM / gbo is handled there)
        return out

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gM, _gvar, gbo=None):
        b, m, S, w, c, bias = ctx.saved_tensors
        if gM is None and gbo is None:
            return None, None, None, None, None, None, None, None, None
        if gM is None:  # (b used, M not: M's gradient is 0)
            gM = torch.zeros((b.numel(), b.numel()), dtype=b.dtype, device=b.device)
        kern = _backend.triton_kernels(_ops.FAMILY)
        gb, gm, gs = kern.poincare_bn_transport_bwd(
            gM.contiguous(), b, m, S, w, c, *ctx.args, ctx.from_bias,
            None if gbo is None else _as(gbo, b.dtype).contiguous(), bias)
        ng = ctx.needs_input_grad
        return (gb if ng[0] else None, gm if ng[1] else None, _shaped(gs[0], S) if ng[2] else None,
                _shaped(_as(gs[1], w.dtype), w) if ng[3] else None,
                gs[2].to(c.dtype).reshape(c.shape) if ng[4] else None, None, None, None, None)


def _gram(b: torch.Tensor, m: torch.Tensor):
    """AF = [b; f; m] (3, D) with f = b - m (the difference formed before any sum, session 44) and its Gram matrix
    (one small GEMM): its diagonal |b|^2, |b - m|^2, |m|^2 is what ``_transport_matrix`` and lam_m read."""
    AF = torch.stack((b, b - m, m))
    return AF, AF @ AF.t()


_TRANSPORT_CONST: dict = {}


def _transport_consts(D: int, like: torch.Tensor):
    key = (D, like.dtype, like.device)
    cst = _TRANSPORT_CONST.get(key)
    if cst is None:
        o = dict(dtype=like.dtype, device=like.device)
        # (not while tracing: torch.export / compile make them FakeTensors, which a later eager call would read;
        # normal tensors under torch.inference_mode(), which a later training call saves for its backward)
        keep = len(_TRANSPORT_CONST) < 64 and not _is_fake(like) and not torch.compiler.is_compiling()
        with torch.inference_mode(False) if keep and torch.is_inference_mode_enabled() else contextlib.nullcontext():
            cst = torch.eye(D, **o)
        if keep:
            _TRANSPORT_CONST[key] = cst
    return cst


def _transport_matrix(AF: torch.Tensor, G: torch.Tensor, k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """s times the parallel transport from m to b (k = -c) as a (D, D) matrix T: s PT(v) = v @ T, from
    AF = [a; f; m] = [b; b - m; m] and its Gram matrix G (``_gram``).

    PT_{m->b}(v) = gyr[b, -m] v * lam_m / lam_b, and a gyration with both points fixed is linear in v.  geoopt's
    closed form (rows [a; -m], d = 1 - 2k<a,-m> + k^2 |a|^2 |m|^2) cancels for b near m near the boundary (d ~
    (1 + k|m|^2)^2 from O(1) terms, and the rank-2 term's O(1/d) pieces cancel to O(1); 2e-5 off in float64,
    session 44).  The same map in the rows [a; f], f = b - m (exactly equal; checked with rationals):
    gyr[a, -m] v = v + (2/den) [<a,v>, <f,v>] W [a; f] with p = 1 + k|a|^2, q = 1 + k|m|^2,
    W = [[-k^2 |f|^2, k p], [-k q + k^2 |f|^2, -k^2 |a|^2]], den = p q - k |f|^2: for k < 0 every term of den is
    non-negative, the small entries of W are small by themselves, and |f|^2 is summed from the difference."""
    eye = _transport_consts(AF.shape[1], AF)
    a2, f2, e2 = G.diagonal().unbind()
    k2 = k * k
    p, q = 1 + k * a2, 1 + k * e2
    kf = k2 * f2
    W = torch.stack((-kf, k * p, kf - k * q, -k2 * a2)).reshape(2, 2)
    den = (p * q - k * f2).clamp_min(1e-15)
    alpha = s * p / q  # s lam_m / lam_b
    A = AF[:2]
    return eye * alpha + A.t() @ (W * (2 * alpha / den)) @ A


# ---------------------------------------------------------------- HNN
def mobius_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, c,
                  dim: int = -1, blocks: Optional[int] = None) -> torch.Tensor:
    """HNN's Möbius linear layer: project(project(weight (x) x) (+) bias), weight (out, in), bias on the ball.

    ``blocks``: weight is block-diagonal (H4G's radius-reducing matrix), given as its (blocks, out_b, in_b)
    diagonal blocks; the dense matrix is never formed (a batched GEMM over the blocks)."""
    op = "mobius_linear"
    _check_float(op, "x", x)
    _check_float(op, "weight", weight)
    half = _args.promote_types(x.dtype, weight.dtype)
    if half in _HALF:  # a chain of kernels: computed in float32 (no half rounding in between)
        return mobius_linear(x.float(), weight.float(), None if bias is None else bias.float(), c=c, dim=dim,
                             blocks=blocks).to(half)
    k = _k(op, c, x)
    d = _st._vector_dim(op, x, dim, fail=_fail)
    if blocks is not None:
        blocks = _args.int_arg(f"geoops.poincare.{op}", "blocks", blocks, lo=1, what="a positive int or None")
        if weight.dim() != 3 or weight.shape[0] != blocks:
            _fail(op, f"weight must be the ({blocks}, out_b, in_b) diagonal blocks, got {tuple(weight.shape)}")
        n_in, n_out = weight.shape[0] * weight.shape[2], weight.shape[0] * weight.shape[1]
        if x.shape[d] != n_in:
            _fail(op, f"x has {x.shape[d]} entries along dim={dim}, the blocks expect {n_in}")
    else:
        if weight.dim() != 2:
            _fail(op, f"weight must be (out_features, in_features), got {tuple(weight.shape)}")
        n_out = weight.shape[0]
        if x.shape[d] != weight.shape[1]:
            _fail(op, f"x has {x.shape[d]} entries along dim={dim}, weight (out_features, in_features) = "
                      f"{tuple(weight.shape)} expects in_features={weight.shape[1]}")
    if bias is not None:
        _check_float(op, "bias", bias)
        if bias.shape != (n_out,):
            _fail(op, f"bias must be a point of the ball of shape ({n_out},) (out_features), got {tuple(bias.shape)}")
    _same_device(op, {"x": x, "weight": weight, "bias": bias})
    _debug_checks(op, None, {"x": (x, d), **({} if bias is None else {"bias": (bias, -1)})}, {"weight": weight}, k=k)
    if blocks is not None:
        xl = x if d == x.dim() - 1 else x.movedim(d, -1)
        res = _st.mobius_blockdiag_matvec(weight, xl, k=k)
        res = res if d == x.dim() - 1 else res.movedim(-1, d)
    else:
        res = _st.mobius_matvec(weight, x, k=k, dim=dim)
    eps = _eps(None, x.dtype)
    res = _st.project(res, k=k, dim=dim, eps=eps)
    if bias is not None:
        # the bias along dim (a (out,) vector broadcasts along the last dim only)
        bb = bias if d == x.dim() - 1 else bias.reshape(bias.shape[0], *([1] * (x.dim() - 1 - d)))
        # (dim counted from the end: bb may have fewer dims than res, and a non-negative dim would name another
        # axis of it)
        res = _st.project(_st.mobius_add(res, bb, k=k, dim=d - x.dim()), k=k, dim=dim, eps=eps)
    return res


# the forward ops differentiated on their own (an exported program keeps the ops, not the Functions)
_library.op_autograd("geoops::poincare_fc_fwd", PoincareFcFn, outputs=1)  # (y; t is the backward's)
_library.op_autograd("geoops::poincare_mlr_fwd", PoincareMlrOpFn, outputs=1)  # (y; t is the backward's)
for _fn, _op in ((PoincareReluFn, "poincare_relu"), (ConvRowsFn, "poincare_conv_rows"),
                 (PoincareFcRowsFn, "poincare_fc_rows"), (BnRowsFn, "poincare_bn_rows")):
    _library.op_autograd(f"geoops::{_op}_fwd", _fn)
_library.op_autograd("geoops::poincare_midpoint_sums_fwd", setup_context=_midpoint_sums_context,
                     backward=_midpoint_sums_backward)
