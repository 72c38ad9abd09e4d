"""kappa-stereographic model (Poincare ball for k < 0, sphere for k > 0): fused ops.

Drop-in for ``geoopt.manifolds.stereographic.math``: same names, same keyword
arguments, same results (to rounding), but each op is one fused kernel with a
hand-written fused backward::

    import geoops.stereographic as gm
    z = gm.mobius_add(x, y, k=k)          # x, y: (..., D); k: tensor of any sign

``k`` is a tensor (a Python number is accepted too) that broadcasts against the
batch dimensions and has size 1 along ``dim``; gradients flow to every tensor
argument, k included.  Inputs broadcast as torch broadcasts, and a ``k`` (or
``r``, ``t``) with more dimensions or larger sizes than the inputs broadcasts
them, as in geoopt (a non-negative ``dim`` counts in the inputs' dims); float16
and bfloat16 are computed in float32 inside the kernels and returned in their
own dtype.  Differences from geoopt, all deliberate:

* artanh is evaluated without cancellation (log1p), and dist/logmap form
  |(-x) (+) y| from |x - y| accumulated directly, so close pairs and points near
  the boundary keep their digits;
* the ops are analytic in k through k = 0 (Taylor series near the Euclidean
  limit) and at zero vectors, where values and gradients are finite;
* a ``k`` shaped like the batch (e.g. ``(B, 1)``) gives ``dist(..., keepdim=False)``
  of shape ``(B,)`` (geoopt broadcasts it to ``(B, B)``), likewise ``dist0``, ``lambda_x``, ``norm``,
  ``dist2plane``;
* ``inner(x, u, v, keepdim=False)`` of ``(B, D)`` rows has shape ``(B,)`` (geoopt's is a
  ``(B, B)`` outer product of lambda_x^2 and <u, v>);
* a ``k`` that varies along ``dim`` (one curvature per coordinate) is refused, and so is a
  ``k`` that varies over ``weighted_midpoint``'s reduced points (geoopt's result there is
  no midpoint: see its error message);
* the result has the points' dtype (geoopt promotes float32 points to a float64 k's dtype);
* float16/bfloat16 ``project`` uses a margin of 4e-3/8e-3 (geoopt has none).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional

import torch

from . import _args, _backend, _library
from ._ops import stereographic as _ops
from .reference import stereographic as _ref

__all__ = list(_ops.STEREO_OPS)  # project, lambda_x, mobius_add, ... (geoopt's names)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Which arguments must lie on the manifold (checked under GEOOPS_CHECK=1).
_ON_MANIFOLD = {
    "mobius_add": ("x", "y"),
    "mobius_sub": ("x", "y"),
    "lambda_x": ("x",),
    "mobius_scalar_mul": ("x",),
    "expmap": ("x",),
    "logmap": ("x", "y"),
    "logmap0": ("y",),
    "dist": ("x", "y"),
    "dist0": ("x",),
    "mobius_matvec": ("x",),
    "mobius_pointwise_mul": ("x",),
    "mobius_blockdiag_matvec": ("x",),
    "weighted_midpoint": ("xs",),
}


# ---------------------------------------------------------------- autograd
# torch.autograd.Function.apply is a Python classmethod around this C-level one (see _FNS_CPP_APPLY)
_C_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_FWD = {name: fwd for name, (fwd, _) in _ops.CALLERS.items()}


def _func_twin(name: str, fwd_op, backward, reference, doc: str) -> type:
    """The torch.func variant of a row Function whose inputs are tensors plus one trailing number (kept as
    ctx.param, as the eager forward does): the same kernels (the custom ops have vmap rules), setup_context, a
    generated vmap rule, the eager backward, and a jvp (forward mode: jacfwd) from ``reference(*tensors, param)``."""

    def setup_context(ctx, inputs, output):
        *tensors, param = inputs
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.param = param

    def jvp(ctx, *tangents):
        param = ctx.param
        return _ref_jvp(lambda *a: reference(*a, param), ctx.saved_tensors, tangents[:-1])

    def forward(a, b, c, d, param):  # (five parameters, not *args: torch.compile binds a call by their count)
        return fwd_op(a, b, c, d, param)

    return _library.with_compiled_apply(type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(_library.first_order_only(backward)), "jvp": staticmethod(jvp),
        "generate_vmap_rule": True, "__module__": __name__, "__doc__": doc}))


def _kr_grads(need, k, r, n: int, dk, dr):
    """(dk, dr) of a row op's backward for the Function's k and r inputs (needs_input_grad[2], [3]): a k / r given
    once for n rows (k 0-d from _run_fast, or of shape (1,)) gets its per-row gradients summed to its shape; None
    where no gradient is wanted."""
    if need[2] and (k.dim() != 1 or k.shape[0] != n):
        dk = _library.fixed_sum(dk, 0, keepdim=True).reshape(k.shape)
    if need[3] and r.shape[0] != n:
        dr = _library.fixed_sum(dr, 0, keepdim=True)
    return (dk if need[2] else None), (dr if need[3] else None)


def _kernel_fns(op: str, fwd_op, bwd_op, grads, reference, doc: str) -> tuple:
    """The eager autograd.Function of a row op whose inputs are four tensors (None allowed) plus one trailing number
    (kept as ctx.param), and its torch.func twin (_func_twin, a jvp from ``reference``): forward runs fwd_op,
    backward bwd_op with the kernels' 4-bit mask of needs_input_grad; grads(need, saved, kernel_grads) -> the four
    tensors' gradients (None where not wanted).  Returns (name, Function, twin, backward)."""

    # forward(ctx, ...) rather than a separate setup_context: with setup_context, Function.apply binds the
    # arguments through inspect.signature on every call (~50 us).  The torch.func transforms need
    # setup_context, so each op has a second Function (the twin) that _run / _run_triple pick only inside a
    # transform: the eager path keeps this one.
    def setup_context(ctx, inputs, output):
        a, b, c, d, ctx.param = inputs
        ctx.save_for_backward(a, b, c, d)

    def forward(ctx, a, b, c, d, param):
        ctx.save_for_backward(a, b, c, d)  # (setup_context's work, inline: the eager path's per-call cost)
        ctx.param = param
        return fwd_op(a, b, c, d, param)

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 4)
        if mask == 0:
            return None, None, None, None, None
        return (*grads(need, saved, bwd_op(grad, *saved, ctx.param, mask)), None)

    # named at creation so that autograd's node is called e.g. MobiusAddFnBackward
    name = "".join(part.capitalize() for part in op.split("_")) + "Fn"
    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(_library.first_order_only(backward)),
        "__module__": __name__, "__doc__": doc})
    cls.op_context = staticmethod(setup_context)
    # the op differentiated on its own (an exported program): this Function's op_context and backward
    _library.op_autograd(f"geoops::{op}_fwd", cls)
    twin = _func_twin(name + "Func", fwd_op, backward, reference,
                      f"{name} for torch.func transforms (grad, vmap, jacrev, jacfwd).")
    return name, cls, twin, backward


def _row_grads(need, saved, grads) -> tuple:
    """(dx, dy, dk, dr) of a row op's backward kernel as its Function's gradients (_kernel_fns' grads)."""
    x, _, k, r = saved
    dx, dy, dk, dr = grads
    dk, dr = _kr_grads(need, k, r, x.shape[0], dk, dr)
    return dx if need[0] else None, dy if need[1] else None, dk, dr


def _make_fn(spec: _ops.StereoOp) -> type:
    fwd_op, bwd_op = _ops.CALLERS[spec.name]
    name, cls, _FNS_FUNC[spec.name], backward = _kernel_fns(
        spec.name, fwd_op, bwd_op, _row_grads, lambda *a: _ops._ReferenceRows._call(spec, *a),
        f"autograd.Function of {spec.name}: torch.ops.geoops.{spec.name}_fwd / _bwd.")

    # the eager CPU fast path's variant (_run checked that the custom op would run these very kernels): the
    # C++ kernels without the caller's per-call dispatch (a backward that meets a mode or a subclass goes
    # through the custom op as above)
    code = spec.code
    scalar_out = spec.scalar_out

    # shape: None (x, y are the (N, D) rows), or the broadcast shape (..., D) of the caller's x and y, which this
    # Function then reshapes to rows itself and its backward sums back (one autograd node for the op instead of
    # expand / reshape / view nodes around it: at the WordNet loss's (64, 1, 10) x (64, 11, 10) they cost more
    # than the op, session 20)
    # grp: (G, rep) when x's rows in the broadcast are G rows each repeated rep times in a row (x of shape (..., 1,
    # D) against y of (..., R, D): _rep_form) and y has the broadcast shape: the row-group entry points then take
    # x's G rows (stereo_fwd_rep_cpu / stereo_bwd_rep_cpu: the broadcast rows expanded inside C++ in one SIMD copy,
    # no ATen dispatches; dx summed per group in C++)
    def forward_cpp(ctx, x, y, k, r, param, shape=None, grp=None):
        ctx.grp = grp
        if grp is not None:
            xs = x.shape
            ctx.shapes = (shape, xs, shape)
            D = shape[-1]
            x = x.view(grp[0], D) if x.is_contiguous() else x.reshape(grp[0], D)
            y = y.view(-1, D) if y.is_contiguous() else y.reshape(-1, D)
            ctx.save_for_backward(x, y, k, r)
            ctx.param = param
            out = _backend.compiled().stereo_fwd_rep_cpu(code, x, y, k, r, param, grp[1])
            return _UNSAFE_VIEW(out, shape[:-1] if scalar_out else shape)
        if shape is not None:
            xs = x.shape
            ys = y.shape if y is not None else None
            ctx.shapes = (shape, xs, ys)
            D = shape[-1]
            # (a contiguous input of the broadcast shape: a view, one dispatch where reshape takes two)
            x = (x.view(-1, D) if xs == shape and x.is_contiguous()
                 else (x if xs == shape else x.expand(shape)).reshape(-1, D))
            if y is not None:
                y = (y.view(-1, D) if ys == shape and y.is_contiguous()
                     else (y if ys == shape else y.expand(shape)).reshape(-1, D))
        else:
            ctx.shapes = None
        ctx.save_for_backward(x, y, k, r)
        ctx.param = param
        out = _backend.compiled().stereo_fwd_cpu(code, x, y, k, r, param)
        if shape is not None and len(shape) != 2:
            # a fresh contiguous result in the caller's shape: aten's _unsafe_view (the storage shared, as view, but
            # not an autograd view: a view made inside a Function may not be changed in place, and callers' code
            # such as ``d = ball.dist(u, cand); d.pow_(2)`` does so)
            out = _UNSAFE_VIEW(out, shape[:-1] if scalar_out else shape)
        return out

    def _to_caller(dv, shape, vshape):
        """A rows gradient (N, D) as the gradient of the caller's tensor of shape vshape (summed over broadcasts):
        one sum over the broadcast dims (what sum_to_size does, without its extra dispatches)."""
        if dv is None:
            return None
        dv = dv.view(shape)
        if vshape == shape:
            return dv
        lead = len(shape) - len(vshape)
        dims = tuple(range(lead)) + tuple(i for i in range(lead, len(shape))
                                          if vshape[i - lead] == 1 and shape[i] != 1)
        if not dims:
            return dv.view(vshape)
        dv = torch.sum(dv, dims, True)
        return dv if lead == 0 else dv.view(vshape)

    def backward_cpp(ctx, grad):
        shapes = ctx.shapes
        if shapes is not None:
            if grad.is_contiguous():
                grad = grad.view(-1) if scalar_out else grad.view(-1, shapes[0][-1])
            else:
                grad = grad.reshape(-1) if scalar_out else grad.reshape(-1, shapes[0][-1])
        grp = ctx.grp
        if not _library.direct_call_ok(grad):
            if grp is None:
                dx, dy, dk, dr, _ = backward(ctx, grad)
            else:  # the custom op on the broadcast rows (materialised here), dx summed to x's shape below
                dx, dy, dk, dr = _rep_backward(ctx, grad, grp)
        else:
            x, y, k, r = ctx.saved_tensors
            need = ctx.needs_input_grad
            mask = (1 if need[0] else 0) | (2 if need[1] else 0) | (4 if need[2] else 0) | (8 if need[3] else 0)
            if mask == 0:
                return None, None, None, None, None, None, None
            if grp is None:
                dx, dy, dk, dr = _backend.compiled().stereo_bwd_cpu(code, grad, x, y, k, r, ctx.param, mask)
            else:  # dx of x's G rows (summed per group in the kernel's fixed order)
                dx, dy, dk, dr = _backend.compiled().stereo_bwd_rep_cpu(code, grad, x, y, k, r, ctx.param, mask,
                                                                        grp[1])
                if need[0]:
                    dx = dx.view(shapes[1])
            dk, dr = _kr_grads(need, k, r, x.shape[0] if grp is None else y.shape[0], dk, dr)
            dx, dy = dx if need[0] else None, dy if need[1] else None
        if shapes is not None:
            if grp is None:
                dx = _to_caller(dx, shapes[0], shapes[1])
            dy = _to_caller(dy, shapes[0], shapes[2])
        return dx, dy, dk, dr, None, None, None

    def _rep_backward(ctx, grad, grp):
        """backward() of a row-group call (a grad that needs the custom op's dispatch): x's rows broadcast to the
        op's rows, the op's backward, dx summed over each group -> (dx of x's shape, dy, dk, dr)."""
        x, y, k, r = ctx.saved_tensors
        G, rep = grp
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 4)
        if mask == 0:
            return None, None, None, None
        xr = x.unsqueeze(1).expand(G, rep, x.shape[1]).reshape(-1, x.shape[1])
        dx, dy, dk, dr = bwd_op(grad, xr, y, k, r, ctx.param, mask)
        dk, dr = _kr_grads(need, k, r, xr.shape[0], dk, dr)
        dx = dx.view(G, rep, -1).sum(1).view(ctx.shapes[1]) if need[0] else None
        return dx, dy if need[1] else None, dk, dr

    _FNS_CPP[spec.name] = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward_cpp), "backward": staticmethod(_library.first_order_only(backward_cpp)),
        "__module__": __name__,
        "__doc__": f"{name} on the eager CPU fast path: the C++ kernels of {spec.name} called directly."})
    # its apply without torch's Python wrapper (Function.apply: a setup_context check, a functorch check and a
    # generator over the arguments per call): _run_fast calls it only after _library.direct_call_ok found no
    # functorch transform active, and unwraps a dead functorch wrapper itself, as the wrapper does
    _FNS_CPP_APPLY[spec.name] = _C_FUNCTION_APPLY.__get__(None, _FNS_CPP[spec.name])
    return cls


_UNSAFE_VIEW = torch.ops.aten._unsafe_view.default  # (see forward_cpp)
_FNS_FUNC: dict = {}
_FNS_CPP: dict = {}
_FNS_CPP_APPLY: dict = {}  # op -> _FNS_CPP[op]'s C-level apply (torch._C._FunctionBase.apply bound to it)


_functorch_active = _library.functorch_active


def _transformed() -> bool:
    """Whether the torch.func variants must run: a torch.func transform, or forward-mode AD dual tensors
    (the variants carry the jvp; the eager Functions and the bare ops would drop the tangents)."""
    return _library.functorch_active() or _library.forward_ad_active()


def _ref_jvp(fn, primals, tangents):
    """Forward-mode derivative of `fn` (a reference composition) at `primals` along `tangents` (None: zero)."""
    keep = [i for i, p in enumerate(primals) if isinstance(p, torch.Tensor)]
    # contiguous: a broadcast input reaches here as a stride-0 view (a (D,) bias expanded to the rows), and
    # torch.func.jvp cannot make a dual of it ("more than one element ... refers to a single memory location")
    prim = [primals[i].contiguous() for i in keep]
    tang = [tangents[i] if tangents[i] is not None else torch.zeros_like(primals[i]) for i in keep]

    def f(*ts):
        a = list(primals)
        for i, t in zip(keep, ts):
            a[i] = t
        return fn(*a)

    if _library.functorch_active():
        return torch.func.jvp(f, tuple(prim), tuple(tang))[1]
    # forward-mode dual tensors (torch.autograd.forward_ad): a nested forward level is not allowed, so J t comes
    # from reverse mode: the vjp v -> J^T v is linear in v, and J t is the gradient of <J^T v, t> with respect to v
    with torch.enable_grad():
        xs = [p.detach().requires_grad_() for p in prim]
        out = f(*xs)
        v = torch.zeros_like(out, requires_grad=True)
        jtv = torch.autograd.grad(out, xs, v, create_graph=True, allow_unused=True)
        s = sum((g * t).sum() for g, t in zip(jtv, tang) if g is not None)
        if not isinstance(s, torch.Tensor) or not s.requires_grad:
            return torch.zeros_like(out)
        return torch.autograd.grad(s, v)[0]


MobiusAddFn = _make_fn(_ops.STEREO_OPS["mobius_add"])
MobiusSubFn = _make_fn(_ops.STEREO_OPS["mobius_sub"])
ProjectFn = _make_fn(_ops.STEREO_OPS["project"])
LambdaXFn = _make_fn(_ops.STEREO_OPS["lambda_x"])
MobiusScalarMulFn = _make_fn(_ops.STEREO_OPS["mobius_scalar_mul"])
ExpmapFn = _make_fn(_ops.STEREO_OPS["expmap"])
Expmap0Fn = _make_fn(_ops.STEREO_OPS["expmap0"])
LogmapFn = _make_fn(_ops.STEREO_OPS["logmap"])
Logmap0Fn = _make_fn(_ops.STEREO_OPS["logmap0"])
DistFn = _make_fn(_ops.STEREO_OPS["dist"])
Dist0Fn = _make_fn(_ops.STEREO_OPS["dist0"])
_FNS = {
    "mobius_add": MobiusAddFn, "mobius_sub": MobiusSubFn, "project": ProjectFn, "lambda_x": LambdaXFn,
    "mobius_scalar_mul": MobiusScalarMulFn, "expmap": ExpmapFn, "expmap0": Expmap0Fn, "logmap": LogmapFn,
    "logmap0": Logmap0Fn, "dist": DistFn, "dist0": Dist0Fn,
}  # fmt: skip


# ---------------------------------------------------------------- argument handling
def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"geoops.stereographic.{op}: {msg}")


def _called_as(e: BaseException, op: str, **renames: str) -> BaseException:
    """An argument error of the public function that the composed op ``op`` calls (lambda_x, mobius_add, ...)
    re-addressed to ``geoops.stereographic.<op>`` and its argument names (geoops._args.called_as)."""
    return _args.called_as(e, f"geoops.stereographic.{op}", **renames)


def _check_float(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in _FLOATS:
        _fail(op, f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}",
              TypeError)
    return t


def _vector_dim(op: str, x: torch.Tensor, dim, fail=None) -> int:
    """The non-negative index of ``dim`` in ``x`` (the vector dimension of a matrix-style op), after checking
    that x has one and that ``dim`` is an int in range; ``fail`` raises with the calling module's prefix."""
    fail = fail or _fail
    if x.dim() < 1:
        fail(op, "x must have at least one dimension")
    if type(dim) is not int:
        n = _args.as_index(dim)
        if n is None:
            fail(op, f"dim must be an int, got {type(dim).__name__}", TypeError)
        dim = n
    d = dim + x.dim() if dim < 0 else dim
    if not 0 <= d < x.dim():
        fail(op, f"dim={dim} is out of range for x of shape {tuple(x.shape)}", IndexError)
    return d


# inputs that geoopt reduces along ``dim`` on their own (groups: reduced together, as a product), per op; an op not
# listed reduces each of its vector inputs on its own (the others only broadcast: egrad2rgrad's grad, gyration's u)
_REDUCED = {
    "egrad2rgrad": (("x",),), "parallel_transport0": (("y",),), "parallel_transport0back": (("x",),),
    "mobius_pointwise_mul": (("x",),), "gyration": (("a",), ("b",)), "parallel_transport": (("x",), ("y",)),
    "inner": (("x",), ("u", "v")), "retr": (("x", "u"),),
}


def _check_dim_ranks(op: str, dim: int, shape, tensors: dict):
    """A non-negative ``dim`` counts in each input's own dims (geoopt's reductions do): an input that the op reduces
    along ``dim`` with fewer dims than the inputs' broadcast shape would be reduced over another axis than the
    others (not a vector op: geoopt gives a mixture of axes).  Refused, naming dim and the shapes."""
    if dim < 0:
        return
    nd = len(shape)
    for group in _REDUCED.get(op) or tuple((n,) for n in tensors):
        # an input without an own axis `dim` (dim >= its rank: geoopt's reduction fails there) takes the
        # broadcast shape's axis, right-aligned as broadcasting does: a vector op (e.g. a (D,) bias with dim=2)
        if max(tensors[n].dim() for n in group) != nd and any(dim < tensors[n].dim() for n in group):
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
            _fail(op, f"dim={dim} is non-negative but the inputs have different numbers of dimensions ({shapes}): "
                      f"counted in each input's own dims it names a different axis of {' * '.join(group)} than of "
                      f"the broadcast shape {tuple(shape)}; pass a negative dim (counted from the end) or give the "
                      f"inputs the same number of dimensions")


def _as_scalar_tensor(op: str, name: str, v, like: torch.Tensor) -> torch.Tensor:
    """k or r: a tensor, or a Python number turned into one."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        # a fill kernel on like's device (torch.tensor(v, device=...) would be a host-to-device copy that waits
        # for a GPU: a sync per call)
        return torch.full((), float(v), dtype=like.dtype, device=like.device)
    if isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool:
        v = v.to(like.dtype if like.is_floating_point() else torch.get_default_dtype())  # integer k: promoted, as geoopt
    _check_float(op, name, v)
    if v.device != like.device:
        if v.numel() == 1 and v.device.type == "cpu":
            return v.to(like.device)  # a CPU scalar travels, as torch allows
        _fail(op, f"{name} is on {v.device} but x is on {like.device}; all tensors must be on one device")
    return v


def _per_row(op: str, name: str, v: torch.Tensor, shape, dim: int, N: int, dtype) -> torch.Tensor:
    """Broadcast a curvature-like tensor to one value per row: shape (1,) or (N,)."""
    if v.dtype != dtype:
        v = v.to(dtype)
    if v.numel() == 1:
        return v if v.dim() == 1 else v.reshape(1)
    nd = len(shape)
    if v.dim() > nd:
        _fail(op, f"{name} has shape {tuple(v.shape)}, more dimensions than the inputs' {tuple(shape)}")
    vshape = (1,) * (nd - v.dim()) + tuple(v.shape)
    if vshape[dim] != 1:
        _fail(op, f"{name} must have size 1 along dim={dim - nd} (one value per row), got shape {tuple(v.shape)} "
                  f"for inputs of shape {tuple(shape)}")
    target = tuple(shape[:dim]) + (1,) + tuple(shape[dim + 1:])
    try:
        v = v.reshape(vshape).expand(target)
    except RuntimeError:
        _fail(op, f"{name} of shape {tuple(v.shape)} does not broadcast against inputs of shape {tuple(shape)}",
              _Grows)
    return v.movedim(dim, -1).reshape(N)


class _Grows(ValueError):
    """_per_row's error for a k-like tensor larger than the inputs along some dim: _run then grows the inputs'
    shape to it (checked only then, so that the ordinary per-row call pays nothing for it)."""


def _fits(v: torch.Tensor, shape, d: int) -> bool:
    """Whether a k-like tensor v (no more dimensions than ``shape``) broadcasts to ``shape`` with size 1 at d."""
    off = len(shape) - v.dim()
    for i, q in enumerate(v.shape):  # (a size along d other than 1 fits here: _per_row raises its error)
        if q != 1 and i + off != d and q != shape[i + off]:
            return False
    return True


def _grow(op: str, name: str, v: torch.Tensor, shape, d: int):
    """(shape, d) grown by a k-like tensor v that has more dimensions or larger sizes than the inputs: their
    broadcast shape (geoopt's result has it), d shifted by the new leading dims; v must have size 1 along d."""
    nd, vd = len(shape), v.dim()
    dn = d + max(vd - nd, 0)
    vshape = (1,) * (nd - vd) + tuple(v.shape)
    if vshape[dn] != 1:
        _fail(op, f"{name} must have size 1 along dim={d - nd} (one value per row), got shape {tuple(v.shape)} "
                  f"for inputs of shape {tuple(shape)}")
    try:
        return _broadcast2(shape, v.shape), dn
    except RuntimeError:
        _fail(op, f"{name} of shape {tuple(v.shape)} does not broadcast against inputs of shape {tuple(shape)}")


_broadcast2 = _args.broadcast2  # (torch.broadcast_shapes of two shapes without its per-call cost)


def _debug_checks(op: str, named: dict, k: torch.Tensor, dim: int):
    # (every tensor read, also while torch.compile traces: a graph break, as before the shared helper)
    _library.check_finite(f"geoops.stereographic.{op}", named, readable_only=False)
    _library.check_finite(f"geoops.stereographic.{op}", {"k": k}, "{name} has non-finite values [GEOOPS_CHECK]",
                          readable_only=False)
    for name in _ON_MANIFOLD.get(op, ()):
        t = named[name]
        q = 1 + k * (t.double() ** 2).sum(dim=dim, keepdim=True)
        if bool((q <= 0).any()):
            _fail(op, f"{name} has points outside the ball |{name}|^2 < 1/|k| [GEOOPS_CHECK]")


def _as_rows(t, dtype, shape, d: int, N: int, D: int):
    """An input of a row op (broadcastable to ``shape``) as the kernels' rows (N, D): ``dtype``, the broadcast shape,
    the vector dim ``d`` moved last (views where they suffice)."""
    nd = len(shape)
    if t.dtype != dtype:
        t = t.to(dtype)
    if t.dim() != nd or tuple(t.shape) != tuple(shape):
        t = t.expand(shape)
    if d != nd - 1:
        t = t.movedim(d, -1)
    return t if nd == 2 else t.reshape(N, D)


def _from_rows(out, batch: tuple, D: int, d: int, nd: int, scalar_out: bool, keepdim: bool):
    """A row op's result (N, D) (or (N,) for a scalar op) in the caller's layout: the batch dims of the broadcast
    shape with the vector dim ``d`` back in place (kept with size 1 for a scalar op when ``keepdim``)."""
    if scalar_out:
        out = out.reshape(batch) if nd != 2 else out
        return out.unsqueeze(d) if keepdim else out
    if nd != 2:
        out = out.reshape(batch + (D,))
    return out if d == nd - 1 else out.movedim(-1, d)


def _run(op: str, x, y=None, *, k, dim: int = -1, r=None, eps: float = -1.0, keepdim: bool = False,
         names=("x", "y"), r_name="r", sizes: bool = False):
    """Validate, broadcast to rows, run the op's Fn, and restore the caller's layout (``sizes``: check whether k or
    r is larger than the inputs along some dim, after _per_row found it so)."""
    spec = _ops.STEREO_OPS[op]
    if type(dim) is not int:
        dim = _int_arg(op, "dim", dim)
    if keepdim is not False and keepdim is not True:
        keepdim = _bool_arg(op, "keepdim", keepdim)
    if dim == -1 and r is None and eps < 0:
        out = _run_fast(op, spec, x, y, k, keepdim)
        if out is not None:
            return out
    nx, ny = names
    _check_float(op, nx, x)
    if spec.has_y:
        _check_float(op, ny, y)
        if y.device != x.device:
            _fail(op, f"{ny} is on {y.device} but {nx} is on {x.device}; all tensors must be on one device")
    k = _as_scalar_tensor(op, "k", k, x)
    if spec.has_r:
        r = _as_scalar_tensor(op, r_name, r, x)
    dim = _int_arg(op, "dim", dim)
    # broadcast shape and canonical dim
    # (compare the ranks first: comparing sizes of tensors of different rank puts a guard on a dynamic batch
    # under torch.export / torch.compile)
    if spec.has_y and x.dim() == y.dim() and x.shape == y.shape:
        shape = x.shape
    elif spec.has_y:
        try:
            shape = _broadcast2(x.shape, y.shape)
        except RuntimeError:
            _fail(op, f"{nx} and {ny} do not broadcast: shapes {tuple(x.shape)} and {tuple(y.shape)}")
    else:
        shape = x.shape
    nd = len(shape)
    if nd == 0:
        _fail(op, f"{nx} must have at least one dimension (the vector dimension `dim`), got a 0-d tensor")
    if spec.has_y and dim >= 0 and x.dim() != y.dim():
        _check_dim_ranks(op, dim, shape, {nx: x, ny: y})
    d = dim + nd if dim < 0 else dim + (nd - x.dim())
    if not 0 <= d < nd:
        _fail(op, f"dim={dim} is out of range for inputs of shape {tuple(shape)}", IndexError)

    # a k (or r) with more dimensions or larger sizes than the inputs broadcasts them (geoopt's result has the
    # broadcast shape): the rows grow to that shape (stride-0 views)
    grown = False
    reference = _backend.resolve(x.device, _ops.FAMILY) == "reference"
    # (under torch.compile up front: the retry after _per_row's failed expand cannot trace)
    if (sizes or reference or k.dim() > nd or (spec.has_r and r.dim() > nd)
            or ((k.numel() != 1 or (spec.has_r and r.numel() != 1)) and torch.compiler.is_compiling())):
        for vname, v in ((("k", k), (r_name, r)) if spec.has_r else (("k", k),)):
            if v.dim() > nd or (v.numel() != 1 and not _fits(v, shape, d)):
                shape, d = _grow(op, vname, v, shape, d)
                nd, grown = len(shape), True

    if _backend.checks_enabled():  # dim counted from the end: the inputs may have fewer dims than `shape`
        _debug_checks(op, {nx: x, ny: y} if spec.has_y else {nx: x}, k, d - nd)

    # (promote_types is an op with host cost: only for two dtypes)
    dtype = _args.promote_types(x.dtype, y.dtype) if (spec.has_y and y.dtype != x.dtype) else x.dtype
    kdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if eps < 0:
        eps = _ref.default_eps(dtype)

    if reference:
        args = {"k": k.to(dtype), "dim": dim}
        if grown:  # the inputs at the grown shape, so that k broadcasts within it (dim counted from the end)
            x, y = x.expand(shape), (y.expand(shape) if spec.has_y else y)
            args["dim"] = d - nd
        if op == "project":
            return _ref.project(x, eps=eps, **args)
        if spec.scalar_out:
            args["keepdim"] = keepdim
        if spec.has_r:
            return getattr(_ref, op)(r.to(dtype), x.to(dtype), **args)  # (the points' dtype, as the kernels)
        return getattr(_ref, op)(x.to(dtype), y.to(dtype), **args) if spec.has_y else getattr(_ref, op)(x, **args)

    D = shape[d]
    batch = tuple(shape[:d]) + tuple(shape[d + 1:])
    N = 1
    for s in batch:
        N *= s

    try:
        k2 = _per_row(op, "k", k, shape, d, N, kdtype)
        r2 = _per_row(op, r_name, r, shape, d, N, kdtype) if spec.has_r else None
    except _Grows:
        if sizes:
            raise
        return _run(op, x, y, k=k, dim=dim, r=r, eps=eps, keepdim=keepdim, names=names, r_name=r_name, sizes=True)
    x2 = _as_rows(x, dtype, shape, d, N, D)
    y2 = _as_rows(y, dtype, shape, d, N, D) if spec.has_y else None
    if _transformed():  # inside torch.func.grad / vmap / jacrev / jacfwd, or forward-mode AD
        out = _FNS_FUNC[op].compiled_apply(x2, y2, k2, r2, float(eps))
    elif _library.reverse_wanted(x2, y2, k2, r2):
        out = _library.apply_distinct(_FNS[op], x2, y2, k2, r2, float(eps))
    else:  # nothing to differentiate: no autograd node
        out = _FWD[op](x2, y2, k2, r2, float(eps))
    return _from_rows(out, batch, D, d, nd, spec.scalar_out, keepdim)


_FAST_DTYPES = (torch.float32, torch.float64)


def _run_fast(op: str, spec, x, y, k, keepdim: bool):
    """_run for the common eager case, with less Python per call (per-call cost is what small batches pay,
    e.g. an embedding model's loss): plain float32/float64 CPU tensors of one dtype, vectors along the last
    dim, a one-element tensor k, debug checks off, the C++ backend.  Returns None when any of that does
    not hold (the general path then runs, and validates)."""
    tx = type(x)
    if (tx is not torch.Tensor and tx is not torch.nn.Parameter) or type(k) is not torch.Tensor:
        return None
    dtype = x.dtype
    # (is_cpu rather than device.type: no torch.device object per read)
    if dtype not in _FAST_DTYPES or not x.is_cpu or k.dtype not in _FLOATS or k.numel() != 1 or not k.is_cpu:
        return None
    has_y = spec.has_y
    if has_y:
        ty = type(y)
        if (ty is not torch.Tensor and ty is not torch.nn.Parameter) or y.dtype != dtype or not y.is_cpu:
            return None
    nd = x.dim()
    if nd == 0 or (has_y and y.dim() == 0) or not _library.direct_call_ok(x, y, k):
        return None
    if _backend.checks_enabled() or _backend.resolve(_CPU, _ops.FAMILY) != "cpp":
        return None
    shape = xshape = x.shape
    same = True  # x and y (if any) have the broadcast shape
    if has_y:
        yshape = y.shape
        if y.dim() != nd or yshape != shape:
            try:
                shape = _broadcast2(xshape, yshape)
            except RuntimeError:
                return None  # the general path raises its error
            nd = len(shape)
            same = xshape == shape and yshape == shape
    D = shape[-1]
    if D == 0 or k.dim() > nd:  # reshape(-1, 0) below is ambiguous; the general path handles empty vectors
        return None  # (and a k with more dims, which grows the result's shape)
    for s in shape[:-1]:
        if s == 0:
            return None
    kd = dtype  # the kernels take k in the inputs' dtype (float32 for float32 inputs)
    # (a 0-d or (1,) k as it is: the kernels read one value in place, the backward sums dk to k's shape; a
    # reshape is a dispatch, ~1 us per call)
    k2 = k if k.dim() <= 1 and k.dtype == kd else (k if k.dtype == kd else k.to(kd)).reshape(1)
    eps = _EPS_FAST[dtype]
    # x's rows repeated in the broadcast ((..., 1, D) against y of the broadcast shape): the row-group kernels
    grp = _rep_form(xshape, shape) if not same and yshape == shape else None
    if torch.is_grad_enabled() and (x.requires_grad or k.requires_grad or (has_y and y.requires_grad)):
        # the Function takes the caller's tensors and the broadcast shape (rows inside, no view nodes around it);
        # its C-level apply (direct_call_ok above: no functorch transform), a dead functorch wrapper unwrapped as
        # Function.apply does
        out = _FNS_CPP_APPLY[op](_unwrap_if_dead(x), _unwrap_if_dead(y) if has_y else None, k2, None, eps,
                                 None if nd == 2 and same else shape, grp)
    elif grp is not None:
        out = _backend.compiled().stereo_fwd_rep_cpu(spec.code, x.reshape(grp[0], D), y.reshape(-1, D), k2, None,
                                                     eps, grp[1])
        out = out.view(shape[:-1] if spec.scalar_out else shape)
    else:
        x2 = x if xshape == shape else x.expand(shape)
        y2 = (y if yshape == shape else y.expand(shape)) if has_y else None
        if nd != 2:
            x2 = x2.reshape(-1, D)
            y2 = y2.reshape(-1, D) if has_y else None
        out = _backend.compiled().stereo_fwd_cpu(spec.code, x2, y2, k2, None, eps)
        if nd != 2:
            out = out.view(shape[:-1] if spec.scalar_out else shape)
    if spec.scalar_out and keepdim:
        return out.unsqueeze(-1)
    return out


_REP_FORMS: dict = {}  # (x's shape, broadcast shape) -> _rep_form's answer
_REP_FORMS_MAX = 256


def _rep_form(xshape, shape):
    """(G, rep) when the rows of x (shape xshape) broadcast to ``shape`` are G rows each repeated rep > 1 times in
    a row (x's leading sizes equal the broadcast's, its other batch sizes 1: e.g. (B, 1, D) against (B, R, D)), else
    None (x of the broadcast shape, or x tiled: broadcast along a leading dim, whose rows the kernels would not find
    in a row).  Cached per pair of shapes; GEOOPS_STEREO_REP=0: always None (the materialising path; read per
    call)."""
    if _REP_OFF():
        return None
    key = (xshape, shape)
    got = _REP_FORMS.get(key, False)
    if got is not False:
        return got
    nd = len(shape)
    xp = (1,) * (nd - len(xshape)) + tuple(xshape)
    m = 0
    while m < nd - 1 and xp[m] == shape[m]:
        m += 1
    res = None
    if xp[-1] == shape[-1] and all(xp[j] == 1 for j in range(m, nd - 1)):
        rep = math.prod(shape[m:nd - 1])
        if rep > 1:
            res = (math.prod(shape[:m]), rep)
    if len(_REP_FORMS) < _REP_FORMS_MAX:
        _REP_FORMS[key] = res
    return res


def _REP_OFF() -> bool:
    v = os.environ.get("GEOOPS_STEREO_REP")
    return v is not None and v.startswith("0")


_CPU = torch.device("cpu")
_EPS_FAST = {dt: _ref.default_eps(dt) for dt in _FAST_DTYPES}
_EPS_WHAT = "a margin below 1 (a negative value picks the dtype's default)"


# ---------------------------------------------------------------- public API (geoopt's signatures)
def project(x: torch.Tensor, *, k: torch.Tensor, dim: int = -1, eps: float = -1) -> torch.Tensor:
    """Pull points outside the ball back inside: rows with |x| > (1 - eps)/sqrt(-k) are scaled to that
    norm.

    Formula: ``x * min(1, (1 - eps) / (sqrt(-k) |x|))`` for k < 0; the identity for k >= 0 (the
    sphere and Euclidean space have no boundary).

    - Shapes: ``x`` is ``(..., D, ...)`` with the vector along ``dim``; ``k`` broadcasts against the
      batch dimensions with size 1 along ``dim``; ``eps < 0`` picks the dtype's default margin
      (`geoops.reference.stereographic.default_eps`).
    - Output: same shape as ``x``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``), ``k`` included, from one fused backward kernel.
    - Numerics: the margin is 1e-5 (float64) or 4e-3 (float32); float16/bfloat16 use 4e-3/8e-3 so
      that the projected point stays inside the ball after rounding.
    - Peer: ``geoopt.manifolds.stereographic.math.project`` (same signature; same values to
      rounding); geoopt has no half-precision margins.  An ``eps`` of 1 or more (a radius of 0 or less: geoopt
      returns the origin or mirrored points) or NaN (geoopt: no projection at all) raises ValueError.
    """
    if not (type(eps) in (int, float) and eps < 1.0):  # (NaN too: it compares false)
        eps = _args.float_arg("geoops.stereographic.project", "eps", eps, below=1.0, what=_EPS_WHAT)
    return _run("project", x, k=k, dim=dim, eps=eps)


def lambda_x(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Conformal factor of the metric at x: lambda_x = 2 / (1 + k|x|^2).

    Formula: ``2 / (1 + k <x, x>)`` along ``dim``.

    - Shapes: ``x`` is ``(..., D, ...)``; ``k`` broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: ``x``'s shape without ``dim`` (kept with size 1 when ``keepdim=True``).
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``), ``k`` included, from one fused backward kernel.
    - Numerics: the denominator is clamped at 1e-15 (as in geoopt); the CPU kernels accumulate |x|^2
      in float64.
    - Peer: ``geoopt.manifolds.stereographic.math.lambda_x`` (same signature; same values to
      rounding).
    """
    return _run("lambda_x", x, k=k, dim=dim, keepdim=keepdim)


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius addition x (+)_k y, the group-like operation of the kappa-stereographic model.

    Formula: ``((1 - 2k<x,y> - k|y|^2) x + (1 + k|x|^2) y) / (1 - 2k<x,y> + k^2 |x|^2 |y|^2)`` along
    ``dim``; k = 0 gives x + y.

    - Shapes: ``x`` and ``y`` broadcast against each other as torch broadcasts, along any ``dim``;
      ``k`` is a tensor or a Python number that broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: the broadcast shape of ``x`` and ``y``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``, ``y``), ``k`` included, from one fused backward
      kernel.
    - Numerics: the denominator is clamped at 1e-15 (as in geoopt); the three row sums are
      accumulated in float64 on the CPU.
    - Peer: ``geoopt.manifolds.stereographic.math.mobius_add`` (same signature; same values to
      rounding); geoopt runs one eager torch op per term, and autograd differentiates them.
    """
    return _run("mobius_add", x, y, k=k, dim=dim)


def mobius_sub(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius subtraction x (-)_k y = x (+)_k (-y).

    Formula: ``mobius_add(x, -y, k=k)``, computed by the same fused kernel without materialising
    ``-y``.

    - Shapes: ``x`` and ``y`` broadcast against each other as torch broadcasts, along any ``dim``;
      ``k`` is a tensor or a Python number that broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: the broadcast shape of ``x`` and ``y``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``, ``y``), ``k`` included, from one fused backward
      kernel.
    - Numerics: as `mobius_add`.
    - Peer: ``geoopt.manifolds.stereographic.math.mobius_sub`` (same signature; same values to
      rounding).
    """
    return _run("mobius_sub", x, y, k=k, dim=dim)


def mobius_scalar_mul(r: torch.Tensor, x: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius scalar multiplication r (x)_k x = tan_k(r artan_k(|x|)) x/|x|.

    Formula: ``tan_k(r artan_k(|x|)) x / |x|`` with tan_k(t) = tan(sqrt(k) t)/sqrt(k) (tanh for k <
    0) and artan_k its inverse; k = 0 gives r x.

    - Shapes: ``x`` is ``(..., D, ...)``; ``r`` and ``k`` are tensors (or Python numbers) with one
      value per row: they broadcast against the batch dimensions with size 1 along ``dim``.
    - Output: same shape as ``x``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``r``, ``x``), ``k`` included, from one fused backward
      kernel.
    - Numerics: curvature enters only through tanc(z) = tan(sqrt z)/sqrt z and atanc(z) = atan(sqrt
      z)/sqrt z of z = k|x|^2 (Taylor series near z = 0), so the op is analytic through k = 0 and x
      = 0 with finite gradients there; artanh goes through log1p without cancellation near the
      boundary.
    - Peer: ``geoopt.manifolds.stereographic.math.mobius_scalar_mul`` (same signature; same values
      to rounding); geoopt divides by a clamped |x| and branches on the value of k.
    """
    return _run("mobius_scalar_mul", x, k=k, dim=dim, r=r)


def expmap(x: torch.Tensor, u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at x: the point reached from x along the geodesic with initial velocity u.

    Formula: ``x (+)_k tan_k(lambda_x |u| / 2) u / |u|`` with lambda_x = 2 / (1 + k|x|^2).

    - Shapes: ``x`` (a point) and ``u`` (a tangent vector at x) broadcast against each other as
      torch broadcasts, along any ``dim``; ``k`` is a tensor or a Python number that broadcasts
      against the batch dimensions with size 1 along ``dim``.
    - Output: the broadcast shape of ``x`` and ``u``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``, ``u``), ``k`` included, from one fused backward
      kernel.
    - Numerics: one kernel for the whole composition (no intermediate tensors); analytic through k =
      0 and u = 0 (tanc series); row sums in float64 on the CPU.
    - Peer: ``geoopt.manifolds.stereographic.math.expmap`` (same signature; same values to
      rounding).
    """
    return _run("expmap", x, u, k=k, dim=dim, names=("x", "u"))


def expmap0(u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at the origin: tan_k(|u|) u/|u|.

    Formula: ``tanc(k|u|^2) u`` with tanc(z) = tan(sqrt z)/sqrt z (tanh(sqrt -z)/sqrt -z for z < 0).

    - Shapes: ``u`` is ``(..., D, ...)`` (a tangent vector at the origin); ``k`` broadcasts against
      the batch dimensions with size 1 along ``dim``.
    - Output: same shape as ``u``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``u``), ``k`` included, from one fused backward kernel.
    - Numerics: tanc uses its Taylor series for |z| < 1e-3: finite values and gradients at k = 0 and
      u = 0.
    - Peer: ``geoopt.manifolds.stereographic.math.expmap0`` (same signature; same values to
      rounding); geoopt divides by a clamped |u|.
    """
    return _run("expmap0", u, k=k, dim=dim, names=("u", None))


def logmap(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at x: the tangent vector at x that `expmap` maps to y (the inverse of expmap).

    Formula: ``(2 / lambda_x) artan_k(|s|) s / |s|`` with s = (-x) (+)_k y and lambda_x = 2 / (1 +
    k|x|^2).

    - Shapes: ``x`` and ``y`` (points) broadcast against each other as torch broadcasts, along any
      ``dim``; ``k`` is a tensor or a Python number that broadcasts against the batch dimensions
      with size 1 along ``dim``.
    - Output: the broadcast shape of ``x`` and ``y``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``, ``y``), ``k`` included, from one fused backward
      kernel.
    - Numerics: |s| is formed from |x - y| accumulated directly (no cancellation for close pairs);
      artanh through log1p keeps digits within 1e-3 of the boundary; analytic through k = 0.
    - Peer: ``geoopt.manifolds.stereographic.math.logmap`` (same signature; same values to
      rounding).
    """
    return _run("logmap", x, y, k=k, dim=dim)


def logmap0(y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at the origin: artan_k(|y|) y/|y| (the inverse of `expmap0`).

    Formula: ``atanc(k|y|^2) y`` with atanc(z) = atan(sqrt z)/sqrt z (artanh(sqrt -z)/sqrt -z for z
    < 0).

    - Shapes: ``y`` is ``(..., D, ...)``; ``k`` broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: same shape as ``y``.
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``y``), ``k`` included, from one fused backward kernel.
    - Numerics: atanc's Taylor series near z = 0; points on or outside the ball are clamped just
      inside it (as geoopt does).
    - Peer: ``geoopt.manifolds.stereographic.math.logmap0`` (same signature; same values to
      rounding).
    """
    return _run("logmap0", y, k=k, dim=dim, names=("y", None))


def dist(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Geodesic distance between x and y: 2 artan_k(|(-x) (+)_k y|).

    Formula: ``2 artan_k(|x - y| / sqrt(1 + 2k<x,y> + k^2 |x|^2 |y|^2))`` along ``dim``.

    - Shapes: ``x`` and ``y`` broadcast against each other as torch broadcasts, along any ``dim``;
      ``k`` is a tensor or a Python number that broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: the broadcast shape without ``dim`` (kept with size 1 when ``keepdim=True``).
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``, ``y``), ``k`` included, from one fused backward
      kernel.
    - Numerics: |(-x) (+) y| from |x - y| accumulated directly, so close pairs keep their relative
      accuracy (geoopt loses it to cancellation); artanh through log1p near the boundary; row sums
      in float64 on the CPU.
    - Peer: ``geoopt.manifolds.stereographic.math.dist`` (same signature; same values to rounding),
      except that a ``k`` of shape ``(B, 1)`` gives a ``(B,)`` result with ``keepdim=False`` (geoopt
      broadcasts it to ``(B, B)``).
    """
    return _run("dist", x, y, k=k, dim=dim, keepdim=keepdim)


def dist0(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Geodesic distance to the origin: 2 artan_k(|x|).

    Formula: ``2 |x| atanc(k|x|^2)``.

    - Shapes: ``x`` is ``(..., D, ...)``; ``k`` broadcasts against the batch dimensions with size 1
      along ``dim``.
    - Output: ``x``'s shape without ``dim`` (kept with size 1 when ``keepdim=True``).
    - Dtypes: float64, float32, float16, bfloat16 (half types are computed in float32 inside the
      kernels and returned in their own dtype); CPU (C++ kernels), CUDA (Triton or CUDA C++
      kernels).
    - Gradients: to every tensor argument (``x``), ``k`` included, from one fused backward kernel.
    - Numerics: atanc's Taylor series near z = 0; the gradient at x = 0 is 0 (finite, as
      are all gradients at zero vectors).
    - Peer: ``geoopt.manifolds.stereographic.math.dist0`` (same signature; same values to rounding).
    """
    return _run("dist0", x, k=k, dim=dim, keepdim=keepdim)


# ---------------------------------------------------------------- pairwise: cdist, knn, pairwise_rank
__all__ += ["cdist", "knn", "pairwise_rank", "reconstruction_metrics"]

_PAIR = _ops.PAIR_CALLERS


def _grad_mask(ctx):
    """(needs_input_grad, the backward kernels' mask: bit 1, 2, 4 for the first three inputs)."""
    need = ctx.needs_input_grad
    return need, _library.grad_mask(need, 3)


def _rows_k_grad(gk, k, R):
    """The per-row k gradient (float64 [R]) in k's dtype, summed when k was one curvature for all R rows."""
    gk = gk.to(k.dtype)
    return _library.fixed_sum(gk).reshape(1) if k.shape[0] != R else gk


class CdistFn(torch.autograd.Function):
    """autograd.Function of cdist: torch.ops.geoops.cdist_fwd / cdist_bwd (x [B,N,D], y [B,M,D], k [B])."""

    @staticmethod
    def forward(ctx, x, y, k):
        # saved: what the kernel set's cdist_bwd reads (geoops._ops.stereographic's pairwise contract: A where
        # k <= 0, the set's own where k > 0, or empty)
        d, saved = _PAIR["cdist_fwd"](x, y, k, True)
        ctx.save_for_backward(x, y, k, saved, d)  # (op_context's work)
        return d

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program; a call
        with save=False kept nothing: cdist_bwd recomputes A)."""
        d, saved = output
        ctx.save_for_backward(*inputs[:3], saved, d)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, grad):
        x, y, k, saved, d = ctx.saved_tensors
        need, mask = _grad_mask(ctx)
        if mask == 0:
            return None, None, None
        dx, dy, dk = _PAIR["cdist_bwd"](grad.contiguous(), x, y, k, saved, d, mask)
        return (dx if need[0] else None, dy if need[1] else None, dk if need[2] else None)


def _func_with_aux(name: str, eager, forward, reference, doc: str) -> type:
    """The torch.func variant of CdistFn / MobiusScaleFn: ``forward(*inputs)`` returns (out, aux), aux being
    what the eager Function saves for its backward (not differentiable); setup_context, a generated vmap
    rule (the custom ops have vmap rules), the eager Function's backward, and a jvp from ``reference``."""

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs, output[1], output[0])
        ctx.save_for_forward(*inputs)

    eager_backward = eager.backward.__wrapped__  # the kernels' backward, guarded here for the twin's signature

    def backward(ctx, grad, _gaux):
        return eager_backward(ctx, grad)

    def jvp(ctx, *tangents):
        return _ref_jvp(reference, ctx.saved_tensors, tangents), None

    body = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
            "backward": staticmethod(_library.first_order_only(backward)), "jvp": staticmethod(jvp),
            "generate_vmap_rule": True,
            "reference": staticmethod(reference), "__module__": __name__, "__doc__": doc}
    return _library.with_compiled_apply(type(name, (torch.autograd.Function,), body))


CdistFnFunc = _func_with_aux(
    "CdistFnFunc", CdistFn, lambda x, y, k: _PAIR["cdist_fwd"](x, y, k, True),
    lambda x, y, k: _ref.cdist(x, y, k=k.to(x.dtype).reshape(-1, 1, 1)),
    "CdistFn for torch.func transforms; returns (dist, saved), saved = what the backward reads (A = |x - y|^2 "
    "where k <= 0; Triton: <x, y> where k > 0).")


def _pair_args(op: str, x, y, k):
    """Validate and flatten the pairwise arguments: (x3 [B,N,D], y3 [B,M,D], k3 [B], batch, dtype, out dtype)."""
    _check_float(op, "x", x)
    _check_float(op, "y", y)
    if y.device != x.device:
        _fail(op, f"y is on {y.device} but x is on {x.device}; all tensors must be on one device")
    if x.dim() < 2:
        _fail(op, f"x must have shape [..., N, D] (at least 2 dimensions), got {tuple(x.shape)}")
    if y.dim() < 2:
        _fail(op, f"y must have shape [..., M, D] (at least 2 dimensions), got {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        _fail(op, f"x and y must have the same vector size D (last dimension), got {x.shape[-1]} and {y.shape[-1]}")
    try:  # equal batch dimensions (the common case) skip torch.broadcast_shapes (~70 us per call)
        batch = tuple(x.shape[:-2]) if x.shape[:-2] == y.shape[:-2] else tuple(
            torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]))
    except RuntimeError:
        _fail(op, f"the batch dimensions of x {tuple(x.shape[:-2])} and y {tuple(y.shape[:-2])} do not broadcast")
    out_dtype = _args.promote_types(x.dtype, y.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    k = _as_scalar_tensor(op, "k", k, x)
    if k.dtype != dtype:
        k = k.to(dtype)
    N, M, D = x.shape[-2], y.shape[-2], x.shape[-1]
    B = 1
    for s in batch:
        B *= s
    if k.numel() == 1:
        k3 = k.reshape(1).expand(B)
    else:
        if k.dim() < 2 or k.shape[-1] != 1 or k.shape[-2] != 1:
            _fail(op, f"k must be a scalar or have shape batch + (1, 1) (one curvature per [N, M] block), "
                      f"got shape {tuple(k.shape)}")
        try:
            k3 = k.expand(batch + (1, 1)).reshape(B)
        except RuntimeError:
            _fail(op, f"k of shape {tuple(k.shape)} does not broadcast against the batch dimensions {batch}")

    def flat(t, R):
        if t.dtype != dtype:
            t = t.to(dtype)
        if tuple(t.shape[:-2]) != batch:
            t = t.expand(batch + tuple(t.shape[-2:]))
        t = t.reshape(B, R, D)
        return t if t.is_contiguous() else t.contiguous()

    return flat(x, N), flat(y, M), k3, batch, dtype, out_dtype


def _pair_debug_checks(op, x3, y3, k3):
    """The GEOOPS_CHECK checks of the pairwise ops (cdist, knn, pairwise_rank / reconstruction_metrics): non-finite
    inputs, points outside the ball; nothing unless checks are on."""
    if not _backend.checks_enabled():
        return
    _library.check_finite(f"geoops.stereographic.{op}", {"x": x3, "y": y3, "k": k3}, readable_only=False)
    kk = k3.double().reshape(-1, 1)
    for name, t in (("x", x3), ("y", y3)):
        if t.numel() and bool(((1 + kk * (t.double() ** 2).sum(-1)) <= 0).any()):
            _fail(op, f"{name} has points outside the ball |{name}|^2 < 1/|k| [GEOOPS_CHECK]")


def cdist(x: torch.Tensor, y: torch.Tensor, *, k) -> torch.Tensor:
    r"""Pairwise geodesic distances of the kappa-stereographic model: ``out[..., i, j] = dist(x[..., i, :], y[..., j, :])``.

    Equal to geoopt's ``dist(x[..., :, None, :], y[..., None, :, :], k=k)`` without forming the
    ``[..., N, M, D]`` broadcast.  With :math:`A = |x-y|^2`, :math:`p_x = 1 + k|x|^2`, :math:`p_y = 1 + k|y|^2`:

    * k < 0 (ball of radius :math:`1/\sqrt{c}`, c = -k): :math:`d = \operatorname{arcosh}(1 + t)/\sqrt c`,
      :math:`t = 2cA / (p_x p_y)`, evaluated as ``log1p(t + sqrt(t (t + 2)))``;
    * k > 0 (projected sphere): :math:`d = 2\,\operatorname{atan2}(\sqrt{kA}, \sqrt{p_x p_y - kA})/\sqrt k`;
    * k = 0: :math:`d = 2|x - y|`.

    These equal :math:`2\,\operatorname{artan}_k |(-x) \oplus_k y|` since
    :math:`|(-x) \oplus_k y|^2 = A / (p_x p_y - kA)`.  Only :math:`\langle x, y\rangle` is pairwise: it
    comes from one GEMM; row norms and a fused, vectorised epilogue do the rest.

    Args:
        x: ``[..., N, D]`` points.  y: ``[..., M, D]`` points; the batch dimensions broadcast.
        k: curvature: a Python number, a tensor with one element, or a tensor of shape ``batch + (1, 1)``
            (one curvature per ``[N, M]`` block).  Integer tensors are promoted.

    Returns:
        ``[..., N, M]`` in the promoted dtype of x and y (float16/bfloat16 are computed in float32).

    Gradients: to x, y and k (tensors), computed as GEMMs too (``dx = a * x - W y``, no
    ``[N, M, D]`` tensor); once differentiable.  At x_i = y_j (distance 0, not differentiable) the
    gradient of that pair is 0.

    Numerics: :math:`A = |x|^2 + |y|^2 - 2\langle x,y\rangle` cancels for close pairs; pairs with
    :math:`A < \tau (|x|^2 + |y|^2)`, :math:`\tau \approx 512\,u\,(D + 4)`, are recomputed from the rows,
    so the float32 relative error stays below 1e-3 (close pairs and points near the boundary included)
    and x against itself gives exact zeros.  Points on or outside the ball (k < 0) are handled like
    geoopt's clamps: :math:`p` is clamped at 1e-7 (float32; 1e-15 float64) per point, giving large, finite
    distances (pairs inside the ball are never clamped, as in :func:`dist`).  Memory: the output; with a gradient the C++ backend saves nothing of size ``[N, M]`` (its
    backward recomputes ``A`` per block of rows), the Triton and reference backends save one ``[..., N, M]``
    buffer.  For nearest neighbours at scale use :func:`knn` (bounded memory).
    """
    op = "cdist"
    x3, y3, k3, batch, dtype, out_dtype = _pair_args(op, x, y, k)
    _pair_debug_checks(op, x3, y3, k3)
    N, M = x3.shape[1], y3.shape[1]
    if _transformed():  # inside torch.func.grad / vmap / jacrev / jacfwd, or forward-mode AD
        out = CdistFnFunc.compiled_apply(x3, y3, k3)[0]
    elif _library.reverse_wanted(x3, y3, k3):
        out = _library.apply_distinct(CdistFn, x3, y3, k3)
    else:
        out = _PAIR["cdist_fwd"](x3, y3, k3, False)[0]
    out = out.reshape(batch + (N, M))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _bool_arg(op: str, name: str, v) -> bool:
    return _args.bool_arg(f"geoops.stereographic.{op}", name, v)


def _int_arg(op: str, name: str, v, lo: Optional[int] = None, what: str = "") -> int:
    """An integral argument (a Python int or any integral number: numpy's, a 0-d integer tensor; not a bool) as a
    Python int, at least ``lo`` (when given; ``what`` says what is expected)."""
    return _args.int_arg(f"geoops.stereographic.{op}", name, v, lo=lo, what=what)


def _tile_sizes(N: int, M: int, n: int, block_elems: int):
    """Query and key tile sizes for a tile of about `block_elems` rank keys.

    A symbolic size (a dynamic dim under torch.export / torch.compile) is one tile along it: a Python loop over a
    symbolic count would specialise the size (torch.export: "Constraints violated"), so there the tile is the
    whole [N, M] (that graph's memory is O(N M) keys)."""
    if isinstance(N, torch.SymInt) or isinstance(M, torch.SymInt):
        return N, M
    mb = max(n + 1, min(M, 4096))
    nb = max(1, min(N, block_elems // mb))
    return nb, mb


def _spans(total, step):
    """(start, stop) of the tiles of `step` along `total`: one span for a symbolic size (see :func:`_tile_sizes`) or
    one tile's worth (torch.compile's dynamo shows a symbolic size as an int: ``total <= step`` is an inequality
    guard there, where a loop over ``range`` would specialise the size)."""
    if isinstance(total, torch.SymInt) or isinstance(step, torch.SymInt) or total <= step:
        return ((0, total),)
    return tuple((i, min(total, i + step)) for i in range(0, total, step))


def _knn_rows(x, y, k, idx):
    """knn's pairs as the row op dist's rows: (x rows [R, D], y[idx] rows [R, D], k rows [1] or [R], eps), R = B N n
    (x [B, N, D], y [B, M, D], k [B], idx [B, N, n]); the layout the composition ``dist(x[:, :, None], y[idx])``
    gives the kernels."""
    B, N, D = x.shape
    n = idx.shape[-1]
    R = B * N * n
    yr = torch.gather(y, 1, idx.reshape(B, N * n, 1).expand(B, N * n, D)).reshape(R, D)
    xr = x.unsqueeze(2).expand(B, N, n, D).reshape(R, D)
    kr = k.reshape(1) if B == 1 else k.reshape(B, 1).expand(B, N * n).reshape(R)
    return xr, yr, kr, _ref.default_eps(x.dtype)


@_library.with_func_twin
class KnnDistFn(torch.autograd.Function):
    """autograd.Function of knn's distances ``dist(x[b, i], y[b, idx[b, i, j]])`` [B, N, n] (x [B, N, D],
    y [B, M, D], k [B], idx [B, N, n] int64; block_elems: knn's): saves x, y, k and idx alone and gathers y[idx]
    again in the backward (the composition saved the gathered rows, n times x's size); the row op dist's kernels
    (torch.ops.geoops.dist_fwd / dist_bwd), gradients to x (summed over the n pairs), y (scattered back over idx,
    as gather's backward) and k.  The pair rows (x and y[idx] as (B c n, D) rows, and their gradients in the
    backward) are made per chunk of c query rows, 4 B c n D <= block_elems (session 38: they were made for all N
    at once, 4 (N n, D) tensors in the backward); the same numbers (C++ kernels: bit for bit, per-row kernels, grad y
    scattered in the same order, k's per-pair terms summed once; the reference backend's torch ops within an ulp)."""

    @staticmethod
    def forward(ctx, x, y, k, idx, block_elems):
        ctx.save_for_backward(x, y, k, idx)
        ctx.block_elems = block_elems
        B, N, n = idx.shape
        spans = _knn_spans(idx.shape, x.shape[-1], block_elems)
        if len(spans) == 1:
            xr, yr, kr, eps = _knn_rows(x, y, k, idx)
            # (not a view: the caller may change the distances in place)
            return _UNSAFE_VIEW(_FWD["dist"](xr, yr, kr, None, eps), (B, N, n))
        out = None
        for i0, i1 in spans:
            xr, yr, kr, eps = _knn_rows(x[:, i0:i1], y, k, idx[:, i0:i1])
            d = _FWD["dist"](xr, yr, kr, None, eps)
            del xr, yr
            if out is None:
                out = d.new_empty((B, N, n))
            out[:, i0:i1] = d.reshape(B, i1 - i0, n)
            del d
        return out

    @staticmethod
    @_library.first_order_only
    def backward(ctx, grad):
        x, y, k, idx = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 3)
        if mask == 0:
            return None, None, None, None, None
        B, N, n = idx.shape
        D = x.shape[-1]
        spans = _knn_spans(idx.shape, D, ctx.block_elems)
        gx = gy = dks = None
        for i0, i1 in spans:
            c = i1 - i0
            xr, yr, kr, eps = _knn_rows(x[:, i0:i1], y, k, idx[:, i0:i1])
            dx, dy, dk, _ = _ops.CALLERS["dist"][1](grad[:, i0:i1].reshape(B * c * n), xr, yr, kr, None, eps, mask)
            del xr, yr
            if need[0]:
                part = dx.reshape(B, c, n, D).sum(2)
                if len(spans) == 1:
                    gx = part
                else:
                    if gx is None:
                        gx = part.new_empty((B, N, D))
                    gx[:, i0:i1] = part
            if need[1]:  # (chunk after chunk: every y row receives its pairs' terms in the same order as at once)
                if gy is None:
                    gy = torch.zeros_like(y)
                gy.scatter_add_(1, idx[:, i0:i1].reshape(B, c * n, 1).expand(B, c * n, D), dy.reshape(B, c * n, D))
            if need[2]:  # the kernels' dk is per pair: kept (B N n scalars) and summed once, as without chunks
                if len(spans) == 1:
                    dks = dk.reshape(B, N * n)
                else:
                    if dks is None:
                        dks = dk.new_empty((B, N, n))
                    dks[:, i0:i1] = dk.reshape(B, c, n)
            del dx, dy, dk
        gk = _library.fixed_sum(dks.reshape(B, N * n), 1).to(k.dtype) if need[2] else None
        return gx, gy, gk, None, None


def _knn_spans(idx_shape, D, block_elems):
    """(i0, i1) spans of knn's query rows whose pair rows (B (i1 - i0) n rows of D; four such tensors at once in the
    backward: x's and y[idx]'s rows and their gradients) hold at most block_elems values together (at least one
    query row each); one span for a symbolic size (see :func:`_spans`)."""
    B, N, n = idx_shape
    per = 4 * B * n * D
    if isinstance(per, torch.SymInt) or isinstance(N, torch.SymInt):
        return ((0, N),)
    return _spans(N, max(1, block_elems // max(per, 1)))


def knn(x: torch.Tensor, y: torch.Tensor, n_neighbors: int, *, k, largest: bool = False,
        block_elems: int = 1 << 22):
    r"""The ``n_neighbors`` nearest (``largest=True``: farthest) points of ``y`` for every point of ``x``.

    Returns ``(distances [..., N, n], indices [..., N, n])`` sorted by distance (ascending, or descending
    when ``largest``), like ``torch.topk(cdist(x, y, k=k), n, largest=largest)`` but without the
    ``[N, M]`` matrix: ``y`` is processed in tiles, so the extra memory is
    ``O(block_elems + N n)`` (default tiles of 4M keys = 16 MiB in float32) on top of the inputs.

    Ranking uses a monotone function of the distance that needs no transcendental per pair
    (``A/(p_x p_y)`` for k < 0, ``A/(p_x p_y - kA)`` for k > 0, ``A`` for k = 0, with
    :math:`A = |x - y|^2` from one GEMM per tile and close pairs recomputed from the rows, as in
    :func:`cdist`); only the kept ``n`` per row are turned into distances, by the fused row-wise
    :func:`dist` on the gathered pairs, so the distances are differentiable with respect to x, y and k
    (the indices are not); the backward keeps x, y, k and the indices alone (``y[idx]`` is gathered again
    there, not saved: n times x's size; the pair rows are made per chunk of queries, at most block_elems
    values together).  Exactly tied keys: the C++ kernel keeps the lower index of y first; the other
    backends (Python tiles, Triton) return them in ``torch.topk``'s / the kernel's order, which is unspecified.

    Args: x ``[..., N, D]``, y ``[..., M, D]`` (batch dimensions broadcast), ``n_neighbors`` in ``[0, M]``
    (any integral number, e.g. a numpy integer), k as for :func:`cdist`, ``block_elems`` a positive int.
    """
    op = "knn"
    n_neighbors = _int_arg(op, "n_neighbors", n_neighbors)  # its range is checked against M below
    block_elems = _int_arg(op, "block_elems", block_elems, lo=1, what="a positive int (keys per tile)")
    if not isinstance(largest, bool):
        _fail(op, f"largest must be a bool, got {type(largest).__name__}", TypeError)
    x3, y3, k3, batch, dtype, out_dtype = _pair_args(op, x, y, k)
    _pair_debug_checks(op, x3, y3, k3)
    B, N, D = x3.shape
    M = y3.shape[1]
    if not 0 <= n_neighbors <= M:
        _fail(op, f"n_neighbors must be in [0, M={M}] (the number of points of y), got {n_neighbors}")
    n = n_neighbors
    nb, mb = _tile_sizes(N, M, n, block_elems)
    kd = k3.detach()
    xd, yd = x3.detach(), y3.detach()
    idx = torch.empty((B, N, n), dtype=torch.int64, device=x.device)
    fill = float("-inf") if largest else float("inf")
    fused = _backend.resolve(x.device, _ops.FAMILY) == "cpp" and _library.direct_call_ok(x, y, k3) and \
        hasattr(_backend.compiled(), "knn_cpu")
    # Triton (float32, n <= 64): one kernel keeps each row's best n in registers while it walks y (a raw launch,
    # not a custom op: eager plain tensors only, as the C++ call; under vmap / torch.compile the tiled path)
    tri = _backend.triton_kernels(_ops.FAMILY) if (not fused and dtype == torch.float32 and n > 0 and
                                                    _library.direct_call_ok(x, y, k3)) else None
    tri = tri if (tri is not None and n <= getattr(tri, "KNN_MAX_NEIGHBORS", 0) and
                  _backend.resolve(x.device, _ops.FAMILY) == "triton") else None
    # (no no_grad block without a kernel call: under torch.export an empty one is a node without outputs that
    # torch.export.load refuses)
    if fused:  # C++: GEMM per (row block, tile of y) + keys + per-row sorted top n, no [N, M] tile kept
        tile = max(n + 1, min(M, 1024))
        with torch.no_grad():
            for b in range(B):
                idx[b] = _backend.compiled().knn_cpu(xd[b], yd[b], float(kd[b]), n, largest, tile)[1]
    elif tri is not None:
        with torch.no_grad():
            idx = tri.knn_indices(xd, yd, kd, n, largest)
    blocks = []  # the Python tiles' row blocks of idx (concatenated, not written into idx: under vmap they are
    # batched and idx is not)
    with torch.no_grad():
        for i0, i1 in (_spans(N, nb) if not (fused or tri is not None) else ()):
            best_key = torch.full((B, i1 - i0, n), fill, dtype=dtype, device=x.device)
            best_idx = torch.zeros((B, i1 - i0, n), dtype=torch.int64, device=x.device)
            for j0, j1 in _spans(M, mb):
                key = _PAIR["rank_key"](xd[:, i0:i1], yd[:, j0:j1], kd)
                # the tile's own top n, then a merge of 2n candidates (no copy of the tile)
                tk, ti = torch.topk(key, min(n, j1 - j0), dim=-1, largest=largest, sorted=False)
                del key
                if j0 == 0:
                    cand_key, cand_idx = tk, ti
                else:
                    cand_key = torch.cat([best_key, tk], dim=-1)
                    cand_idx = torch.cat([best_idx, ti + j0], dim=-1)
                if cand_key.shape[-1] == n and j1 < M:
                    best_key, best_idx = cand_key, cand_idx
                    continue
                best_key, pos = torch.topk(cand_key, n, dim=-1, largest=largest, sorted=True)
                best_idx = torch.gather(cand_idx, -1, pos)
            blocks.append(best_idx)
    if blocks:
        idx = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    # distances of the kept pairs with the fused row-wise op (differentiable)
    if not _transformed() and _library.reverse_wanted(x3, y3, k3):
        # KnnDistFn saves x, y, k and idx alone (the gathered rows y[idx], n times x's size, are gathered again in
        # its backward); torch.func transforms and forward-mode AD keep the composition below (its row op's twin
        # carries the jvp that jacfwd / jvp need)
        dist_ = _library.apply(KnnDistFn, x3, y3, k3, idx, block_elems, op="knn")
    else:
        ysel = torch.gather(y3, 1, idx.reshape(B, N * n, 1).expand(B, N * n, D)).reshape(B, N, n, D)
        dist_ = dist(x3.unsqueeze(2), ysel, k=k3.reshape(B, 1, 1, 1))
    dist_ = dist_.reshape(batch + (N, n))
    return (dist_ if dist_.dtype == out_dtype else dist_.to(out_dtype)), idx.reshape(batch + (N, n))


def pairwise_rank(x: torch.Tensor, y: torch.Tensor, query: torch.Tensor, target: torch.Tensor, *, k,
                  block_elems: int = 1 << 22) -> torch.Tensor:
    r"""For each pair p, the number of points of ``y`` other than ``y[target[p]]`` strictly closer to
    ``x[query[p]]`` than ``y[target[p]]`` is (the 0-based rank of the target among all of ``y``).

    The building block of the embedding-reconstruction metrics (mean rank, MAP; see
    :func:`reconstruction_metrics`) at scale: distances are compared as rank keys (a monotone function of
    the distance, no transcendental per pair; see :func:`knn`) and ``y`` is never paired with all of ``x``
    at once, so the extra memory is ``O(block_elems + P)``, never ``[N, M]``.  On the CPU it is one C++
    call: OpenMP over blocks of query rows, one GEMM per block against all of ``y`` (at most
    ``block_elems`` keys per thread), each pair's threshold read from the same keys (the target itself is
    never counted; rounding is consistent), then the counting (vectorised).  Other backends tile ``y`` in
    Python.

    Args: x ``[N, D]``, y ``[M, D]``, query and target: integer tensors of the same shape ``[P]`` (indices
    into x and y), k a scalar curvature.  Returns int64 ``[P]``.  Not differentiable.  Non-finite inputs: keys
    compare as IEEE numbers, so a NaN distance is never strictly closer (a pair whose own distance is NaN gets
    rank 0); check ``torch.isfinite`` first where that matters (:func:`reconstruction_metrics` does).
    """
    return _rank_with_keys("pairwise_rank", x, y, query, target, k, block_elems)[0]


def _rank_with_keys(op, x, y, query, target, k, block_elems):
    """pairwise_rank's counts [P] and the rank keys [P] of the pairs themselves (the thresholds)."""
    block_elems = _int_arg(op, "block_elems", block_elems, lo=1, what="a positive int (keys per block)")
    if any(isinstance(t, torch.Tensor) and _library._batched(t) for t in (x, y, query, target, k)):
        _fail(op, "does not run under torch.func.vmap: its integer counts come from data-dependent index checks "
                  "and loops over blocks; map over the batch with a Python loop", NotImplementedError)
    for name, t in (("query", query), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            _fail(op, f"{name} must be a 1-d int32/int64 tensor of indices, got "
                      f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}", TypeError)
    if query.shape != target.shape:
        _fail(op, f"query and target must have the same shape, got {tuple(query.shape)} and {tuple(target.shape)}")
    _check_float(op, "x", x)
    if x.dim() != 2 or (isinstance(y, torch.Tensor) and y.dim() != 2):
        _fail(op, "x and y must be 2-d: [N, D] and [M, D]")
    x3, y3, k3, _, dtype, _ = _pair_args(op, x, y, k)
    if k3.numel() != 1:
        _fail(op, "k must be a scalar")
    _pair_debug_checks(op, x3, y3, k3)
    N, M = x3.shape[1], y3.shape[1]
    query = query.to(torch.int64)
    target = target.to(torch.int64)
    if query.numel() and (int(query.min()) < 0 or int(query.max()) >= N):
        _fail(op, f"query has indices outside [0, N={N})", IndexError)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= M):
        _fail(op, f"target has indices outside [0, M={M})", IndexError)
    P = query.numel()
    counts = torch.zeros(P, dtype=torch.int64, device=x.device)
    if P == 0 or M == 0:
        return counts, torch.zeros(P, dtype=dtype, device=x.device)
    xd, yd, kd = x3.detach()[0], y3.detach()[0], k3.detach()
    fused = _backend.resolve(x.device, _ops.FAMILY) == "cpp" and _library.direct_call_ok(x, y, k3) and \
        hasattr(_backend.compiled(), "pairwise_rank_cpu")
    with torch.no_grad():
        order = torch.argsort(query, stable=True)
        q_sorted, t_sorted = query[order], target[order]
        uq, inv, per = torch.unique_consecutive(q_sorted, return_inverse=True, return_counts=True)
        keys = torch.empty(P, dtype=dtype, device=x.device)
        if fused:  # one C++ call: OpenMP over blocks of queries, GEMM per block, no [N, M]
            off = torch.zeros(uq.numel() + 1, dtype=torch.int64)
            torch.cumsum(per, 0, out=off[1:])
            c_sorted, k_sorted = _backend.compiled().pairwise_rank_cpu(
                xd, yd, float(kd.reshape(-1)[0]), uq, off, t_sorted, int(block_elems))
            counts[order] = c_sorted
            keys[order] = k_sorted
            return counts, keys
        D = xd.shape[-1]
        # the key of each (query, target) pair: one 1 x 1 block per pair, same kernel and close-pair rule
        thr = _PAIR["rank_key"](xd[query].reshape(P, 1, D), yd[target].reshape(P, 1, D), kd.expand(P)).reshape(P)
        keys.copy_(thr)
        thr_sorted = thr[order]
        # keys within the kernels' error band of a threshold are decided again from the rows (as the C++ path)
        kv = float(kd.reshape(-1)[0])
        band = _rank_band(thr_sorted, xd[q_sorted], yd, kv)
        lo_sorted, hi_sorted = thr_sorted - band, thr_sorted + band
        lim_sorted = _exact_rank_limit(xd[q_sorted], yd[t_sorted], kv)
        mb = min(M, 4096)
        per_q = max(1, -(-P // uq.numel()))
        nb = max(1, min(uq.numel(), block_elems // (mb * per_q)))
        out_sorted = torch.empty(P, dtype=torch.int64, device=x.device)
        bounds = torch.searchsorted(inv, torch.arange(0, uq.numel() + nb, nb, device=x.device).clamp(max=uq.numel()))
        for bi, u0 in enumerate(range(0, uq.numel(), nb)):
            u1 = min(uq.numel(), u0 + nb)
            p0, p1 = int(bounds[bi]), int(bounds[bi + 1])
            rows = xd[uq[u0:u1]].unsqueeze(0)
            loc = inv[p0:p1] - u0
            tgt = t_sorted[p0:p1]
            lo, hi = lo_sorted[p0:p1, None], hi_sorted[p0:p1, None]
            cnt = torch.zeros(p1 - p0, dtype=torch.int64, device=x.device)
            for j0 in range(0, M, mb):
                j1 = min(M, j0 + mb)
                key = _PAIR["rank_key"](rows, yd[j0:j1].unsqueeze(0), kd)[0][loc]  # [pairs, mb]
                less = key < lo
                amb = (key >= lo) & (key <= hi)
                inside = (tgt >= j0) & (tgt < j1)  # the target itself never counts
                if bool(inside.any()):
                    r = inside.nonzero().squeeze(1)
                    amb[r, tgt[r] - j0] = False
                if bool(amb.any()):  # near ties: the same double arithmetic for candidate and target
                    r, c = amb.nonzero(as_tuple=True)
                    ek = _exact_rank_key(rows[0][loc[r]], yd[j0 + c], kv)
                    less[r, c] = ek < lim_sorted[p0:p1][r]
                cnt += less.sum(-1)
            out_sorted[p0:p1] = cnt
        counts[order] = out_sorted
    return counts, keys


def _rank_band(th, x, y, kv):
    """Half-width of the band around the rank-key thresholds `th` (of the rows `x`) within which the kernels' keys
    may round a tie either way: C++ rank_impl's band (the GEMM's bound (D + 4) u (|x|^2 + |y|^2) on A, through the
    key formula, maximised over the columns of y; twice (candidate and target), plus 16 u key)."""
    u = 2.0 ** -24 if th.dtype == torch.float32 else 2.0 ** -53
    pmin = (1e-7 if th.dtype == torch.float32 else 1e-15) if kv < 0 else -1e30
    x2, y2 = x.double().square().sum(-1), y.double().square().sum(-1)
    px = (1.0 + kv * x2).clamp_min(pmin) if kv else torch.ones_like(x2)
    py = (1.0 + kv * y2).clamp_min(pmin) if kv else torch.ones_like(y2)
    # (over the finite points: a NaN / inf point's keys are NaN / inf, never in a band, and its NaN would make
    # every band NaN, every count 0)
    fin = torch.isfinite(y2)
    w, z = torch.where(fin, 1 / py, 0.0), torch.where(fin, y2 / py, 0.0)
    wmax, zmax = (float(w.max()), float(z.max())) if y2.numel() else (0.0, 0.0)
    t = th.double()
    g = 1.0 + max(kv, 0.0) * t
    band = 2.0 * (x.shape[-1] + 4) * u * (x2 * wmax + zmax) / px * g * g + 16.0 * u * t.abs()
    return torch.where(torch.isfinite(t), band, torch.zeros_like(band)).to(th.dtype)


def _exact_rank_key(x, y, kv):
    """The rank key of row pairs in float64 from the rows (position independent; C++ exact_key)."""
    pmin = (1e-7 if x.dtype == torch.float32 else 1e-15) if kv < 0 else -1e30
    xd, yd = x.double(), y.double()
    A = (xd - yd).square().sum(-1)
    if kv == 0:
        return A
    px = (1.0 + kv * xd.square().sum(-1)).clamp_min(pmin)
    py = (1.0 + kv * yd.square().sum(-1)).clamp_min(pmin)
    return A / (px * py) if kv < 0 else A / (px * py - kv * A).clamp_min(0.0)


def _exact_rank_limit(x, y, kv):
    """A candidate's exact key must be below this (the target's, less ~1e-14 relative) to count as closer."""
    kt = _exact_rank_key(x, y, kv)
    tol = 8.0 * (x.shape[-1] + 4) * 2.0 ** -53
    return kt - tol * (1.0 + max(kv, 0.0) * kt) * kt


def reconstruction_metrics(x: torch.Tensor, edges: torch.Tensor, *, k, block_elems: int = 1 << 22):
    r"""Mean rank and mean average precision of a graph reconstructed from an embedding (Nickel & Kiela 2017).

    For every edge (u, v) of ``edges`` ``[P, 2]`` (the positives of u), the rank of v among u's
    non-neighbours: ``1 + #{w not in N(u), w != u : d(u, w) < d(u, v)}``; mean rank is the mean over edges.
    The average precision of u is the mean over its neighbours v of
    ``#{v' in N(u): d(u, v') <= d(u, v)} / (#{v' in N(u)} closer or equal + #{w not in N(u), w != u} closer)``,
    MAP the mean over the nodes that have neighbours.  Built on :func:`pairwise_rank` (bounded memory:
    no [N, N] matrix; distances as rank keys, no transcendental per pair).  Returns (mean_rank, map) floats:
    (nan, nan) when x or k has a non-finite value (a NaN distance is never "closer", so such an embedding would
    otherwise score as well as or better than a finite one).
    """
    op = "reconstruction_metrics"
    block_elems = _int_arg(op, "block_elems", block_elems, lo=1, what="a positive int (keys per block)")
    if any(isinstance(t, torch.Tensor) and _library._batched(t) for t in (x, edges, k)):
        _fail(op, "does not run under torch.func.vmap (it returns Python floats, computed with data-dependent "
                  "sorting and loops); map over the batch with a Python loop", NotImplementedError)
    if (not isinstance(edges, torch.Tensor) or edges.dim() != 2 or edges.shape[1] != 2
            or edges.dtype not in (torch.int32, torch.int64)):
        got = f"{edges.dtype} {tuple(edges.shape)}" if isinstance(edges, torch.Tensor) else type(edges).__name__
        _fail(op, f"edges must be an int32/int64 tensor of shape [P, 2], got {got}", TypeError)
    _check_float(op, "x", x)
    if isinstance(k, bool) or not isinstance(k, (torch.Tensor, numbers.Real)):
        _check_float(op, "k", k)  # (before the finiteness read below, whose torch error would name nothing)
    if isinstance(x, torch.Tensor) and x.dim() == 2 and edges.numel() and (
            int(edges.min()) < 0 or int(edges.max()) >= x.shape[0]):
        _fail(op, f"edges has node indices outside [0, N={x.shape[0]}) (the rows of x)", IndexError)
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not (
            bool(torch.isfinite(x).all()) and bool(torch.isfinite(torch.as_tensor(k, dtype=torch.float64)).all())):
        return float("nan"), float("nan")  # undefined ranks (session 35: NaN rows or k scored as perfect)
    edges = torch.unique(edges.to(torch.int64), dim=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    u, v = edges[:, 0], edges[:, 1]
    # includes u itself (d = 0); pk: the keys of the positive pairs (the same numbers the counts compared with)
    closer_all, pk = _rank_with_keys("reconstruction_metrics", x, x, u, v, k, block_elems)
    # per source u: the number of its positives strictly closer than each positive (sort by (u, key))
    import numpy as np

    lex = torch.from_numpy(np.lexsort((pk.cpu().double().numpy(), u.cpu().numpy()))).to(u.device)
    su, sk = u[lex], pk[lex]
    pos = torch.arange(su.numel(), device=u.device)
    new_grp = torch.ones_like(su, dtype=torch.bool)
    new_grp[1:] = su[1:] != su[:-1]
    new_run = new_grp.clone()
    new_run[1:] |= sk[1:] != sk[:-1]
    grp_start = torch.cummax(torch.where(new_grp, pos, torch.zeros_like(pos)), 0)[0]
    run_start = torch.cummax(torch.where(new_run, pos, torch.zeros_like(pos)), 0)[0]
    pos_closer = torch.empty_like(closer_all)
    pos_closer[lex] = run_start - grp_start
    neg_closer = (closer_all - pos_closer - 1).clamp_min(0)  # minus u itself (distance 0 < d(u, v))
    mean_rank = float((1 + neg_closer).double().mean())
    # AP: precision at each positive = (#pos with key <= own) / (that + neg closer)
    nodes, inv = torch.unique(u, return_inverse=True)
    counts = torch.bincount(inv).double()
    # positives with key <= own (itself and any positive that ties it): up to the end of its run of equal keys
    is_last = torch.ones_like(new_run)
    is_last[:-1] = new_run[1:]
    run_last = torch.flip(torch.cummin(torch.flip(torch.where(is_last, pos, torch.full_like(pos, su.numel())), (0,)),
                                       0)[0], (0,))
    pos_le = torch.empty_like(closer_all)
    pos_le[lex] = run_last - grp_start + 1
    prec = pos_le.double() / (pos_le + neg_closer).double()
    ap = torch.zeros(nodes.numel(), dtype=torch.float64).index_add_(0, inv, prec) / counts
    return mean_rank, float(ap.mean())


# ---------------------------------------------------------------- mobius_matvec, mobius_pointwise_mul
__all__ += ["mobius_matvec", "mobius_pointwise_mul", "mobius_blockdiag_matvec"]

_TANC = (1 / 3, 2 / 15, 17 / 315, 62 / 2835, 1382 / 155925)
_ATANC = (-1 / 3, 1 / 5, -1 / 7, 1 / 9, -1 / 11)
_CUT = 1e-2


def _poly(z, coefs):
    acc = torch.zeros_like(z) + coefs[-1]
    for c in reversed(coefs[:-1]):
        acc = acc * z + c
    return acc


def _series_or_closed(z, coefs, closed):
    """f(z) = 1 + z * poly(z) and f'(z): the series (coefficients ``coefs``) for |z| < _CUT, elsewhere
    ``closed(zc)`` -> (f, f') on z with the series' entries replaced by _CUT (no 0 / 0 in the unused branch)."""
    small = z.abs() < _CUT
    zs = torch.where(small, z, torch.zeros_like(z))
    f_s = 1 + zs * _poly(zs, coefs)
    df_s = _poly(zs, tuple(c * (i + 1) for i, c in enumerate(coefs)))
    f_c, df_c = closed(torch.where(small, torch.full_like(z, _CUT), z))
    return torch.where(small, f_s, f_c), torch.where(small, df_s, df_c)


def _tanc_d(z):
    """tanc(z) = tan(sqrt z)/sqrt z and its derivative (series for |z| < 1e-2, closed forms elsewhere)."""

    def closed(zc):
        sn = (-zc).clamp_min(0).sqrt()
        sp = zc.clamp_min(0).sqrt()
        t_c = torch.where(zc < 0, torch.tanh(sn) / sn.clamp_min(1e-30), torch.tan(sp) / sp.clamp_min(1e-30))
        return t_c, (1 + zc * t_c * t_c - t_c) / (2 * zc)

    return _series_or_closed(z, _TANC, closed)


def _atanc_d(z):
    """atanc(z) = atan(sqrt z)/sqrt z (artanh for z < 0; clamped just inside the ball) and its derivative."""
    lim = 1 - 1e-7 if z.dtype != torch.float64 else 1 - 1e-15

    def closed(zc):
        zc = zc.clamp_min(-lim)  # points outside the ball: clamped as geoopt clamps artanh's argument
        sn = (-zc).clamp_min(0).sqrt()
        sp = zc.clamp_min(0).sqrt()
        a_c = torch.where(zc < 0, torch.atanh(sn) / sn.clamp_min(1e-30), torch.atan(sp) / sp.clamp_min(1e-30))
        return a_c, (1 / (1 + zc) - a_c) / (2 * zc)

    return _series_or_closed(z, _ATANC, closed)


class MobiusScaleFn(torch.autograd.Function):
    """out = v * phi(|x|^2, |v|^2, k) with phi = atanc(k|x|^2) tanc(k |v|^2 atanc(k|x|^2)^2): the fused
    epilogue of mobius_matvec (v = Mx) and mobius_pointwise_mul (v = w * x), on rows v [R, Do], x [R, Di],
    k [1] or [R]: torch.ops.geoops.mobius_scale_fwd / _bwd (one pass per row forward, one backward)."""

    @staticmethod
    def forward(ctx, v, x, k):
        out, st = _PAIR["mobius_scale_fwd"](v, x, k)
        ctx.save_for_backward(v, x, k, st)  # (op_context's work)
        return out

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs, output[1])

    @staticmethod
    @_library.first_order_only
    def backward(ctx, g):
        v, x, k, st = ctx.saved_tensors[:4]
        need, mask = _grad_mask(ctx)
        if mask == 0:
            return None, None, None
        gv, gx, gk = _PAIR["mobius_scale_bwd"](g.contiguous(), v, x, k, st, mask)
        gk = _rows_k_grad(gk, k, v.shape[0]) if need[2] else gk
        return (gv if need[0] else None, gx if need[1] else None, gk if need[2] else None)


def _scale_reference(v, x, k):
    st = _ops._scale_reference_stats(v, x, k)
    return v * (st[:, 2:3] * st[:, 4:5]).to(v.dtype)


MobiusScaleFnFunc = _func_with_aux(
    "MobiusScaleFnFunc", MobiusScaleFn, lambda v, x, k: _PAIR["mobius_scale_fwd"](v, x, k), _scale_reference,
    "MobiusScaleFn for torch.func transforms; returns (out, stats), stats saved for the backward.")


def _scale_k(op, k, like):
    k = _as_scalar_tensor(op, "k", k, like)
    return k if k.dtype == like.dtype else k.to(like.dtype)


def _grow_rows(op, k, batch):
    """The batch grown by a k (vector dim last, size 1 there) that has more dimensions or larger sizes than it
    (geoopt's result has the broadcast shape); the batch itself (the same object) otherwise."""
    if k.dim() <= len(batch) + 1 and (k.numel() == 1 or _fits(k, batch + (1,), len(batch))):
        return batch
    if k.shape[-1] != 1:
        _fail(op, f"k of shape {tuple(k.shape)} must have size 1 along dim (one curvature per vector)")
    try:
        return tuple(_broadcast2(batch + (1,), k.shape)[:-1])
    except RuntimeError:
        _fail(op, f"k of shape {tuple(k.shape)} does not broadcast against the batch {batch} with size 1 along dim")


def _rows_k(op, k, batch, R):
    """k as [1] or one curvature per row [R] (k broadcasting against batch + (1,))."""
    if k.numel() == 1:
        return k.reshape(1)
    try:
        return k.expand(batch + (1,)).reshape(R)
    except RuntimeError:
        _fail(op, f"k of shape {tuple(k.shape)} does not broadcast against the batch {batch} with size 1 along dim")


def _matvec_epilogue_fn(name, doc):
    """The autograd Function of a fused Mobius matvec op pair torch.ops.geoops.<name>_fwd / _bwd: forward
    (x [R, Di], w, k [1] or [R]) -> (out, stats), backward from (g, x, w, k, out, stats, grad mask) -> (dx, dw, dk)."""
    fwd, bwd = name + "_fwd", name + "_bwd"

    def forward(ctx, x, w, k):
        out, st = _PAIR[fwd](x, w, k)
        ctx.save_for_backward(x, w, k, out, st)  # (op_context's work)
        return out

    def op_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, *output)

    @_library.first_order_only
    def backward(ctx, g):
        x, w, k, out, st = ctx.saved_tensors
        need, mask = _grad_mask(ctx)
        if mask == 0:
            return None, None, None
        dx, dw, gk = _PAIR[bwd](g.contiguous(), x, w, k, out, st, mask)
        gk = _rows_k_grad(gk, k, x.shape[0]) if need[2] else gk
        return (dx if need[0] else None, dw if need[1] else None, gk if need[2] else None)

    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Fn"
    cls = type(cls_name, (torch.autograd.Function,), {
        "__doc__": doc, "__module__": __name__, "op_context": staticmethod(op_context),
        "forward": staticmethod(forward), "backward": staticmethod(backward)})
    _library.op_autograd(f"geoops::{name}_fwd", cls, outputs=1)  # (the op differentiated on its own: export)
    return cls


def _fused_matvec_rows(op, fn, xl, w, kt):
    """Run the fused op pair ``op`` (autograd Function ``fn``) on the rows of xl [..., Di] with the matrix w and
    the curvature kt (broadcasting to the batch + (1,)): rows flattened (grown where k has more rows), one k
    per row or one for all -> [..., D_out]."""
    batch = tuple(xl.shape[:-1])
    grown = _grow_rows(op, kt, batch)
    if grown is not batch:
        xl, batch = xl.expand(grown + (xl.shape[-1],)), grown
    R = math.prod(batch)
    x2 = xl.reshape(R, xl.shape[-1])
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    wc = w if w.is_contiguous() else w.contiguous()
    kr = _rows_k(op, kt, batch, R)
    if _library.reverse_wanted(x2, wc, kr):
        out = _library.apply_distinct(fn, x2, wc, kr)
    else:
        out = _PAIR[op + "_fwd"](x2, wc, kr)[0]
    return out.reshape(batch + (out.shape[-1],))


MobiusMatvecFn = _matvec_epilogue_fn(
    "mobius_matvec", """mobius_matvec with a 2-d m on the CPU: torch.ops.geoops.mobius_matvec_fwd / _bwd (x [R, Di],
    m [Do, Di], k [1] or [R]): the GEMM and the epilogue fused per block of rows, forward and backward.""")


def _mobius_scale(op, v, x, k):
    """v [..., Do], x broadcastable to v's batch [..., Di], k broadcasting to the batch + (1,): v * phi."""
    batch = tuple(v.shape[:-1])
    grown = _grow_rows(op, k, batch)
    if grown is not batch:
        v, batch = v.expand(grown + (v.shape[-1],)), grown
    R = 1
    for s_ in batch:
        R *= s_
    Do, Di = v.shape[-1], x.shape[-1]
    if v.dtype not in (torch.float32, torch.float64):  # half types: computed in float32
        return _mobius_scale(op, v.float(), x.float(), k.float()).to(v.dtype)
    if x.dtype != v.dtype:
        x = x.to(v.dtype)
    if x.dim() != len(batch) + 1 or tuple(x.shape[:-1]) != batch:
        x = x.expand(batch + (Di,))
    v2 = v.reshape(R, Do)
    x2 = x.reshape(R, Di)
    v2 = v2 if v2.is_contiguous() else v2.contiguous()
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    kr = _rows_k(op, k, batch, R)
    if _transformed():  # inside torch.func.grad / vmap / jacrev / jacfwd, or forward-mode AD
        out = MobiusScaleFnFunc.compiled_apply(v2, x2, kr)[0]
    elif _library.reverse_wanted(v2, x2, kr):
        out = _library.apply_distinct(MobiusScaleFn, v2, x2, kr)
    else:
        out = _PAIR["mobius_scale_fwd"](v2, x2, kr)[0]
    return out.reshape(batch + (Do,))


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def mobius_matvec(m: torch.Tensor, x: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    r"""Mobius matrix-vector multiplication :math:`M \otimes_k x = \tan_k(\frac{|Mx|}{|x|}\operatorname{artan}_k|x|)\frac{Mx}{|Mx|}`.

    geoopt's ``mobius_matvec``: m ``[D_out, D_in]`` (or batched ``[..., D_out, D_in]``, then ``dim`` must be
    the last), x ``[..., D_in]`` with the vector along ``dim``; returns ``[..., D_out]``.  Rows where
    ``Mx = 0`` give exactly 0, as in geoopt.  One GEMM (``x @ m.T``, MKL) and a fused epilogue: the
    result is :math:`Mx \cdot \varphi` with :math:`\varphi = \operatorname{atanc}(k|x|^2)\,
    \operatorname{tanc}(k|Mx|^2\operatorname{atanc}(k|x|^2)^2)` computed once per row (analytic in k
    through 0; artanh's argument clamped at 1 - 1e-7 (fp32) for points outside the ball, like geoopt).
    Gradients to m, x and k: the GEMM's own backward plus a two-pass epilogue backward.  Difference from
    geoopt: at ``Mx = 0`` the gradient is that of the analytic continuation (geoopt's ``torch.where``
    gives 0 there).  k: a number, or a tensor broadcasting against x's batch with size 1 along ``dim``.
    """
    op = "mobius_matvec"
    _check_float(op, "m", m)
    _check_float(op, "x", x)
    if m.dim() < 2:
        _fail(op, f"m must be a matrix [D_out, D_in] (or batched), got shape {tuple(m.shape)}")
    d = _vector_dim(op, x, dim)
    if m.dim() > 2 and d != x.dim() - 1:
        _fail(op, "a batched m needs the vectors along the last dimension (dim=-1)")
    if m.dim() > 2:
        try:
            torch.broadcast_shapes(m.shape[:-2], x.shape[:-1])
        except RuntimeError:
            _fail(op, f"the batch dimensions of m {tuple(m.shape[:-2])} do not broadcast against x's "
                      f"{tuple(x.shape[:-1])}")
    if m.shape[-1] != x.shape[d]:
        _fail(op, f"m has D_in={m.shape[-1]} columns but x has {x.shape[d]} entries along dim={dim}")
    if _backend.checks_enabled():
        _debug_checks(op, {"m": m, "x": x}, _scale_k(op, k, x), d - x.dim())
    xl = x if d == x.dim() - 1 else x.movedim(d, -1)
    dtype = _args.promote_types(m.dtype, x.dtype)
    if xl.dtype != dtype:
        xl = xl.to(dtype)
    if m.dtype != dtype:
        m = m.to(dtype)
    if m.dim() == 2 and dtype in (torch.float32, torch.float64) and not _transformed() and \
            _backend.resolve(x.device, _ops.FAMILY) == "cpp":
        # fused: GEMM + epilogue per block of rows, forward and backward (no [R, D_out] intermediate)
        kt = _scale_k(op, k, xl)
        if kt.dim() and d != x.dim() - 1 and kt.dim() >= x.dim():
            kt = kt.movedim(d - x.dim(), -1)
        out = _fused_matvec_rows(op, MobiusMatvecFn, xl, m, kt)
        return out if d == x.dim() - 1 else out.movedim(-1, d - x.dim())
    mx = xl @ m.transpose(-1, -2) if m.dim() == 2 else (m @ xl.unsqueeze(-1)).squeeze(-1)
    kt = _scale_k(op, k, mx)
    if kt.dim() and d != x.dim() - 1 and kt.dim() >= x.dim():
        kt = kt.movedim(d - x.dim(), -1)
    out = _mobius_scale(op, mx, xl, kt)
    return out if d == x.dim() - 1 else out.movedim(-1, d - x.dim())


MobiusBlockdiagMatvecFn = _matvec_epilogue_fn(
    "mobius_blockdiag_matvec", """mobius_blockdiag_matvec on the CPU: torch.ops.geoops.mobius_blockdiag_matvec_fwd /
    _bwd (x [R, nb*Di], blocks [nb, Do, Di], k [1] or [R]): the per-block products and the epilogue fused per tile
    of rows, forward and backward (no dense matrix, no [R, nb*Do] intermediate).""")


@_library.no_autocast  # (torch.autocast: computed in the inputs' dtypes, see _library)
def mobius_blockdiag_matvec(blocks: torch.Tensor, x: torch.Tensor, *, k) -> torch.Tensor:
    r"""Mobius matvec with a block-diagonal matrix given by its diagonal blocks (H4G's radius-reducing matmul).

    blocks ``[nb, D_out_b, D_in_b]``, x ``[..., nb * D_in_b]`` (vectors along the last dimension) ->
    ``[..., nb * D_out_b]``; equal to ``mobius_matvec(torch.block_diag(*blocks), x, k=k)`` without forming
    the dense matrix.  On the CPU one fused op (forward and backward): the per-block products (a lane kernel
    over tiles of rows for small blocks, one GEMM per block and chunk of rows for large ones), the row norms
    and :func:`mobius_matvec`'s epilogue in one pass; rows with ``Mx = 0`` give exactly 0.  Elsewhere (and
    under torch.func transforms) a batched product over the blocks plus the same epilogue ops.  Gradients to
    blocks, x and k; float16/bfloat16 are computed in float32.  k: a number, or a tensor broadcasting against
    x's batch with size 1 last.
    """
    op = "mobius_blockdiag_matvec"
    _check_float(op, "blocks", blocks)
    _check_float(op, "x", x)
    if blocks.dim() != 3:
        _fail(op, f"blocks must be [n_blocks, D_out_b, D_in_b], got shape {tuple(blocks.shape)}")
    nb, do, di = blocks.shape
    if x.dim() < 1 or x.shape[-1] != nb * di:
        _fail(op, f"x must have n_blocks * D_in_b = {nb * di} entries along its last dimension, got shape "
                  f"{tuple(x.shape)}")
    if blocks.device != x.device:
        _fail(op, f"blocks is on {blocks.device} but x is on {x.device}; all tensors must be on one device")
    if _backend.checks_enabled():
        _debug_checks(op, {"blocks": blocks, "x": x}, _scale_k(op, k, x), -1)
    dtype = _args.promote_types(blocks.dtype, x.dtype)
    xl, blocks = x.to(dtype), blocks.to(dtype)
    if not _transformed() and _backend.resolve(x.device, _ops.FAMILY) == "cpp":
        if dtype not in (torch.float32, torch.float64):  # half types: computed in float32
            return mobius_blockdiag_matvec(blocks.float(), xl.float(), k=k).to(dtype)
        return _fused_matvec_rows(op, MobiusBlockdiagMatvecFn, xl, blocks, _scale_k(op, k, xl))
    mx = torch.einsum("...bi,boi->...bo", xl.reshape(*xl.shape[:-1], nb, di), blocks).reshape(*xl.shape[:-1], nb * do)
    return _mobius_scale(op, mx, xl, _scale_k(op, k, mx))


def mobius_pointwise_mul(w: torch.Tensor, x: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    r"""Mobius pointwise multiplication :math:`\operatorname{diag}(w) \otimes_k x` (geoopt's semantics).

    :math:`\tan_k(\frac{|w x|}{|x|}\operatorname{artan}_k|x|)\frac{w x}{|w x|}`, w broadcasting against x;
    rows where every entry of ``w * x`` is within 1e-8 of 0 give exactly 0 (geoopt's ``isclose`` test).
    Fused epilogue as :func:`mobius_matvec`; gradients to w, x and k.
    """
    op = "mobius_pointwise_mul"
    _check_float(op, "w", w)
    _check_float(op, "x", x)
    dim = _int_arg(op, "dim", dim)
    try:
        shape = torch.broadcast_shapes(w.shape, x.shape)
    except RuntimeError:
        _fail(op, f"w of shape {tuple(w.shape)} does not broadcast against x of shape {tuple(x.shape)}")
    d = dim + len(shape) if dim < 0 else dim
    if not 0 <= d < len(shape):
        _fail(op, f"dim={dim} is out of range for x of shape {tuple(x.shape)}", IndexError)
    _check_dim_ranks(op, dim, shape, {"w": w, "x": x})
    if _backend.checks_enabled():
        _debug_checks(op, {"w": w, "x": x.expand(shape)}, _scale_k(op, k, x), d - len(shape))
    wx = w * x
    xb = x.expand(shape) if tuple(x.shape) != tuple(shape) else x
    kt = _scale_k(op, k, wx)
    last = d == len(shape) - 1
    if not last:
        wx, xb = wx.movedim(d, -1), xb.movedim(d, -1)
        if kt.dim() >= len(shape):
            kt = kt.movedim(d - len(shape), -1)
    out = _mobius_scale(op, wx, xb, kt)
    zero = (wx.abs() <= 1e-8).all(dim=-1, keepdim=True)
    out = torch.where(zero, torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out if last else out.movedim(-1, d - len(shape))


# Resolve the lazily initialised backend state now, at import, so that the first call inside a compiled
# region does not install a guard on it (one extra recompile under torch.compile(dynamic=True)).
_backend.get_backend()
_backend.checks_enabled()


# ---------------------------------------------------------------- the rest of geoopt's math surface
# Compositions of the fused ops above (the hot parts, Mobius addition and the tan/artan maps, are fused
# kernels; the glue is a few elementwise torch ops).  Same names, signatures and results as geoopt.
__all__ += ["gyration", "mobius_coadd", "mobius_cosub", "parallel_transport", "parallel_transport0",
            "parallel_transport0back", "egrad2rgrad", "inner", "norm", "geodesic", "geodesic_unit", "antipode",
            "sproj", "inv_sproj", "dist2plane", "weighted_midpoint", "mobius_fn_apply", "mobius_fn_apply_chain",
            "tan_k", "artan_k", "arsin_k", "sin_k", "retr"]


def _kt(op, k, like):
    return _scale_k(op, k, like)


def _dot(a, b, dim, keepdim=True):
    return (a * b).sum(dim=dim, keepdim=keepdim)


def _branch_free() -> bool:
    """Under torch.compile or a torch.func transform the composed ops take no data-dependent branch (a bool()
    of a traced / batched tensor fails there); eagerly they skip work that the values make unnecessary."""
    return torch.compiler.is_compiling() or _functorch_active()


def _check_surface(op: str, dim, k=None, **tensors) -> int:
    """The composed ops' argument checks, before any kernel runs: every named argument a floating-point
    tensor on the first one's device, all broadcasting against each other (and a tensor ``k`` against
    them, with size 1 along ``dim``), ``dim`` an int in range.  Returns ``dim`` counted from the end (a k with
    more dimensions than the inputs prepends dims to the intermediate results; a non-negative dim counts in the
    inputs' dims)."""
    shape, seen, dev = None, [], None
    for name, t in tensors.items():
        _check_float(op, name, t)
        if not seen:
            shape, dev = t.shape, t.device
        elif t.device != dev:
            _fail(op, f"{name} is on {t.device} but {seen[0]} is on {dev}; all tensors must be on one device")
        else:
            try:
                shape = _broadcast2(shape, t.shape)
            except RuntimeError:
                _fail(op, f"{name} of shape {tuple(t.shape)} does not broadcast against {', '.join(seen)} "
                          f"(shape {tuple(shape)})")
        seen.append(name)
    dim = _int_arg(op, "dim", dim)
    nd = len(shape)
    if nd == 0:
        _fail(op, f"{seen[0]} must have at least one dimension (the vector dimension `dim`), got a 0-d tensor")
    if not -nd <= dim < nd:
        _fail(op, f"dim={dim} is out of range for inputs of shape {tuple(shape)}", IndexError)
    _check_dim_ranks(op, dim, shape, tensors)
    dim = dim - nd if dim >= 0 else dim
    if isinstance(k, torch.Tensor) and k.dim():
        try:
            _broadcast2(shape, k.shape)
        except RuntimeError:
            _fail(op, f"k of shape {tuple(k.shape)} does not broadcast against the inputs' shape {tuple(shape)}")
        if k.dim() >= -dim and k.shape[dim] != 1:  # geoopt would mix curvatures within one vector
            _fail(op, f"k must have size 1 along dim={dim} (one curvature per vector), got shape {tuple(k.shape)} "
                      f"for inputs of shape {tuple(shape)}")
    elif k is not None and (isinstance(k, bool) or not isinstance(k, (torch.Tensor, numbers.Real))):
        _check_float(op, "k", k)  # (its error: the inner ops would name themselves)
    if k is not None and _backend.checks_enabled():  # the inner ops' checks would name them, not `op`
        _debug_checks(op, tensors, _scale_k(op, k, tensors[seen[0]]), dim)
    return dim


# ---------------------------------------------------------------- three-vector row ops (fused)
# gyration, parallel_transport(0, 0back), dist2plane: torch.ops.geoops.<op>_fwd / _bwd (geoops._ops.stereographic,
# csrc/cpu/stereographic_triple.cpp): vectors v0, v1 (, v2) as rows (N, D), k (1,) or (N,), int flags.
_TRIPLE = _ops.TRIPLE_CALLERS
_ON_MANIFOLD.update({"gyration": ("a", "b"), "parallel_transport": ("x", "y"), "parallel_transport0": ("y",),
                     "parallel_transport0back": ("x",), "dist2plane": ("x", "p")})
# composed ops whose inner calls (lambda_x, mobius_add) check these points (_check_surface checks them first, named)
_ON_MANIFOLD.update({"egrad2rgrad": ("x",), "inner": ("x",), "norm": ("x",), "inv_sproj": ("x",),
                     "geodesic": ("x", "y"), "geodesic_unit": ("x",)})


def _triple_grads(need, saved, grads) -> tuple:
    """(d0, d1, d2, dk) of a three-vector op's backward kernel as its Function's gradients (_kernel_fns' grads)."""
    d0, d1, d2, dk = grads
    if need[3] and saved[3].shape[0] != saved[0].shape[0]:
        dk = _library.fixed_sum(dk, 0, keepdim=True)
    return d0 if need[0] else None, d1 if need[1] else None, d2 if need[2] else None, dk if need[3] else None


def _make_triple_fn(spec) -> tuple:
    """(the op's Function, its torch.func twin); the int flags ride as the Function's trailing number."""
    _, cls, twin, _ = _kernel_fns(
        spec.name, *_TRIPLE[spec.name], _triple_grads, lambda *a: _ops._TripleReference._call(spec, *a),
        f"autograd.Function of {spec.name}: torch.ops.geoops.{spec.name}_fwd / _bwd (one fused kernel each).")
    return cls, twin


GyrationFn, GyrationFnFunc = _make_triple_fn(_ops.TRIPLE_OPS["gyration"])
ParallelTransportFn, ParallelTransportFnFunc = _make_triple_fn(_ops.TRIPLE_OPS["parallel_transport"])
ParallelTransport0Fn, ParallelTransport0FnFunc = _make_triple_fn(_ops.TRIPLE_OPS["parallel_transport0"])
ParallelTransport0backFn, ParallelTransport0backFnFunc = _make_triple_fn(_ops.TRIPLE_OPS["parallel_transport0back"])
Dist2planeFn, Dist2planeFnFunc = _make_triple_fn(_ops.TRIPLE_OPS["dist2plane"])
_TRIPLE_FNS = {
    "gyration": (GyrationFn, GyrationFnFunc), "parallel_transport": (ParallelTransportFn, ParallelTransportFnFunc),
    "parallel_transport0": (ParallelTransport0Fn, ParallelTransport0FnFunc),
    "parallel_transport0back": (ParallelTransport0backFn, ParallelTransport0backFnFunc),
    "dist2plane": (Dist2planeFn, Dist2planeFnFunc),
}


def _run_triple(op: str, vecs: tuple, k, dim: int, flags: int = 0, keepdim: bool = False):
    """Validate, broadcast the vectors (and a tensor k) to rows, run the op's Fn, restore the caller's layout."""
    spec = _ops.TRIPLE_OPS[op]
    names = spec.names
    dim = _check_surface(op, dim, k, **dict(zip(names, vecs)))
    if keepdim is not False and keepdim is not True:
        keepdim = _bool_arg(op, "keepdim", keepdim)
    kt = _as_scalar_tensor(op, "k", k, vecs[0])
    dtype = vecs[0].dtype
    shape = vecs[0].shape
    for v in vecs[1:]:
        dtype = _args.promote_types(dtype, v.dtype)
        if v.dim() != len(shape) or v.shape != shape:
            shape = _broadcast2(shape, v.shape)
    nd = len(shape)
    d = dim + nd if dim < 0 else dim
    # a k with more dimensions or larger sizes than the vectors broadcasts them (as geoopt's result does)
    if kt.dim() > nd or (kt.numel() != 1 and not _fits(kt, shape, d)):
        shape, d = _grow(op, "k", kt, shape, d)
        nd = len(shape)
    if _backend.checks_enabled():
        _debug_checks(op, dict(zip(names, vecs)), kt, d - nd)
    if _backend.resolve(vecs[0].device, _ops.FAMILY) == "reference":
        args = {"k": kt.to(dtype), "dim": d - nd}
        if spec.scalar_out:
            args.update(keepdim=keepdim, signed=bool(flags & 1), scaled=bool(flags & 2))
        return getattr(_ref, op)(*[v.to(dtype).expand(shape) for v in vecs], **args)
    kdtype = torch.float64 if dtype == torch.float64 else torch.float32
    D = shape[d]
    batch = tuple(shape[:d]) + tuple(shape[d + 1:])
    N = math.prod(batch)
    rs = [_as_rows(v, dtype, shape, d, N, D) for v in vecs]
    v0, v1 = rs[0], rs[1]
    v2 = rs[2] if len(rs) == 3 else None
    k2 = _per_row(op, "k", kt, shape, d, N, kdtype)
    if _transformed():  # inside torch.func.grad / vmap / jacrev / jacfwd, or forward-mode AD
        out = _TRIPLE_FNS[op][1].compiled_apply(v0, v1, v2, k2, int(flags))
    elif _library.reverse_wanted(v0, v1, v2, k2):
        out = _library.apply_distinct(_TRIPLE_FNS[op][0], v0, v1, v2, k2, int(flags))
    else:  # nothing to differentiate: no autograd node
        out = _TRIPLE[op][0](v0, v1, v2, k2, int(flags))
    return _from_rows(out, batch, D, d, nd, spec.scalar_out, keepdim)


def gyration(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Gyration gyr[a, b]u = -(a (+) b) (+) (a (+) (b (+) u)), in geoopt's closed form
    ``u + 2 (c_a a + c_b b) / max(d, 1e-15)`` (coefficients from <a,a>, <b,b>, <a,b>, <a,u>, <b,u> and k; for
    k <= 0 in an equal form in |a + b|^2, <a + b, u> that keeps its digits for b near -a near the boundary).

    One fused kernel (forward: one pass of dot products, then the combination; backward: one hand-written fused
    kernel), gradients to a, b, u and k; same values as geoopt to rounding."""
    return _run_triple("gyration", (a, b, u), k, dim)


def _coadd(x, y, k, dim):
    """x [+] y in closed form: ((1 + k|y|^2) x + (1 + k|x|^2) y) / (1 - k^2 |x|^2 |y|^2).

    Derivation: with gamma_x^2 = 1 / (1 + k|x|^2) = lambda_x / 2, Mobius coaddition is the gyromidpoint's doubled
    mean x [+] y = (lambda_x x + lambda_y y) / (lambda_x + lambda_y - 2); multiplying through by
    (1 + k|x|^2)(1 + k|y|^2) / 2 gives the form above (<x, y> cancels).  The denominator is clamped away from 0 with
    its sign (1e-15, geoopt's clamp of mobius_add's)."""
    x, y = _to_result_dtype(x, y), _to_result_dtype(y, x)
    k = _kt("mobius_coadd", k, x)
    xx, yy = _dot(x, x, dim), _dot(y, y, dim)
    k = _library.fixed_expand(k, _broadcast2(xx.shape, yy.shape))  # (k's gradient: fixed order)
    den = 1 - k * k * xx * yy
    den = torch.where(den >= 0, den.clamp_min(1e-15), den.clamp_max(-1e-15))
    return ((1 + k * yy) * x + (1 + k * xx) * y) / den


def mobius_coadd(x: torch.Tensor, y: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Mobius coaddition x [+] y = x (+) gyr[x, -y] y, in closed form: ((1 + k|y|^2) x + (1 + k|x|^2) y) /
    (1 - k^2 |x|^2 |y|^2) (two row sums and one element-wise pass; autograd through torch ops)."""
    dim = _check_surface("mobius_coadd", dim, k, x=x, y=y)
    return _coadd(x, y, k, dim)


def mobius_cosub(x: torch.Tensor, y: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Mobius cosubtraction x [-] y = x [+] (-y): ((1 + k|y|^2) x - (1 + k|x|^2) y) / (1 - k^2 |x|^2 |y|^2)."""
    dim = _check_surface("mobius_cosub", dim, k, x=x, y=y)
    return _coadd(x, -y, k, dim)


def parallel_transport(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Parallel transport of v from x to y: gyr[y, -x] v * lambda_x / lambda_y (geoopt's clamps), one fused
    kernel forward and backward, gradients to x, y, v and k."""
    return _run_triple("parallel_transport", (x, y, v), k, dim)


def parallel_transport0(y: torch.Tensor, v: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Parallel transport of v from the origin to y: v (1 + k|y|^2) (clamped at 1e-15, as geoopt); one fused
    kernel."""
    return _run_triple("parallel_transport0", (y, v), k, dim)


def parallel_transport0back(x: torch.Tensor, v: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Parallel transport of v from x to the origin: v / (1 + k|x|^2) (clamped at 1e-15); one fused kernel."""
    return _run_triple("parallel_transport0back", (x, v), k, dim)


def _to_result_dtype(x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """x in the promoted dtype of x and ``others`` (a composed op's lambda_x of a float32 x in a float64 result would
    carry float32 rounding)."""
    dt = x.dtype
    for t in others:
        if t.dtype != dt:
            dt = _args.promote_types(dt, t.dtype)
    return x if x.dtype == dt else x.to(dt)


def egrad2rgrad(x: torch.Tensor, grad: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Riemannian gradient from the Euclidean one: grad / lambda_x^2."""
    dim = _check_surface("egrad2rgrad", dim, k, x=x, grad=grad)
    try:
        return grad / lambda_x(_to_result_dtype(x, grad), k=k, keepdim=True, dim=dim) ** 2
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "egrad2rgrad") from None


def inner(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, k, keepdim: bool = False, dim: int = -1):
    """Riemannian inner product at x: lambda_x^2 <u, v>, reduced over ``dim`` (kept with size 1 when ``keepdim``).

    Deliberate difference from geoopt: with ``keepdim=False`` geoopt multiplies a kept-dim lambda_x^2 by the
    reduced <u, v>, so rows of shape (B, D) give a (B, B) outer product; here the result has shape (B,).
    """
    dim = _check_surface("inner", dim, k, x=x, u=u, v=v)
    if keepdim is not False and keepdim is not True:
        keepdim = _bool_arg("inner", "keepdim", keepdim)
    try:
        lam = lambda_x(_to_result_dtype(x, u, v), k=k, keepdim=keepdim, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "inner") from None
    return lam ** 2 * _dot(u, v, dim, keepdim=keepdim)


def norm(x: torch.Tensor, u: torch.Tensor, *, k, keepdim: bool = False, dim: int = -1):
    """Riemannian norm at x: lambda_x |u|."""
    dim = _check_surface("norm", dim, k, x=x, u=u)
    if keepdim is not False and keepdim is not True:
        keepdim = _bool_arg("norm", "keepdim", keepdim)
    try:
        lam = lambda_x(_to_result_dtype(x, u), k=k, keepdim=keepdim, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "norm") from None
    return lam * u.norm(dim=dim, keepdim=keepdim, p=2)


def _check_time(op: str, t) -> None:
    """A geodesic's time t: a floating tensor or a real number."""
    if isinstance(t, torch.Tensor):
        _check_float(op, "t", t)
    elif not isinstance(t, numbers.Real):
        _fail(op, f"t must be a tensor or a number, got {type(t).__name__}", TypeError)


def _time_tensor(t, like: torch.Tensor) -> torch.Tensor:
    """t (a number or a tensor, checked by _check_time) in like's dtype and device; a number as a fill kernel
    (no host-to-device copy, which would sync a GPU)."""
    if isinstance(t, numbers.Real) and not isinstance(t, bool):
        return _as_scalar_tensor("geodesic", "t", t, like)
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def geodesic(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Point at time t of the geodesic from x (t = 0) to y (t = 1): x (+) t (x) ((-x) (+) y)."""
    dim = _check_surface("geodesic", dim, k, x=x, y=y)
    _check_time("geodesic", t)
    try:
        v = mobius_add(-x, y, k=k, dim=dim)
        t = _time_tensor(t, v)
        return mobius_add(x, mobius_scalar_mul(t, v, k=k, dim=dim), k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "geodesic", r="t") from None  # (t is mobius_scalar_mul's r)


def _elementwise_k(op: str, k, x: torch.Tensor) -> torch.Tensor:
    """The argument checks of an elementwise op (tan_k, artan_k, sin_k, arsin_k): x a floating tensor, and its k as
    a tensor of x's dtype broadcasting against x (else an error naming k, before torch's own names nothing),
    returned expanded to x's shape (fixed_expand: k's gradient has the same bits for any thread count)."""
    _check_float(op, "x", x)
    kk = _kt(op, k, x)
    if kk.dim():
        try:
            _broadcast2(x.shape, kk.shape)
        except RuntimeError:
            _fail(op, f"k of shape {tuple(kk.shape)} does not broadcast against x of shape {tuple(x.shape)}")
    return _library.fixed_expand(kk, x.shape)


def tan_k(x: torch.Tensor, k) -> torch.Tensor:
    """tan_k(x): tanh(sqrt(-k) x)/sqrt(-k) (k < 0), x (k = 0), tan(sqrt(k) x)/sqrt(k) (k > 0)."""
    k = _elementwise_k("tan_k", k, x)
    return _ref.tan_k(x, k)


def artan_k(x: torch.Tensor, k) -> torch.Tensor:
    """artan_k(x): artanh(sqrt(-k) x)/sqrt(-k) (k < 0), x (k = 0), atan(sqrt(k) x)/sqrt(k) (k > 0), smooth in k."""
    k = _elementwise_k("artan_k", k, x)
    return x * _ref.atanc(k * x * x, atanh=_ref._atanh_pos)  # (log1p: the same bits for any thread count)


def geodesic_unit(t: torch.Tensor, x: torch.Tensor, u: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Unit-speed geodesic from x in direction u at time t: x (+) tan_k(t/2) u/|u|."""
    dim = _check_surface("geodesic_unit", dim, k, x=x, u=u)
    _check_time("geodesic_unit", t)
    if isinstance(t, torch.Tensor):
        _check_surface("geodesic_unit", -1, None, u=u, t=t)  # t broadcasts against the inputs (names t, not torch)
    u = _to_result_dtype(u, x)
    kk = _kt("geodesic_unit", k, u)
    t = _time_tensor(t, u)
    un = u.norm(dim=dim, p=2, keepdim=True).clamp_min(1e-15)
    try:
        return mobius_add(x, tan_k(t / 2.0, kk) * (u / un), k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "geodesic_unit", y="tan_k(t / 2) u / |u|") from None


def antipode(x: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Antipode of x: -x for k <= 0; on the sphere the point at geodesic distance pi R along x's direction,
    -x / (k |x|^2) in closed form (geoopt walks the unit-speed geodesic there, through tan(pi/2); x = 0 gives 0 as
    there), formed as -(x/|x|) / (k|x|).  float16 / bfloat16 are computed in float32."""
    dim = _check_surface("antipode", dim, k, x=x)
    kk = _kt("antipode", k, x)
    sphere = kk.gt(0)
    # eager shortcut; a number k decides on the host (reading sphere.any() waits for a GPU)
    if not _branch_free() and not _any_sphere(k, sphere):
        return -x
    return _antipode_formula(x, kk, sphere, dim)


def _any_sphere(k, sphere: torch.Tensor) -> bool:
    """Whether any curvature is positive: a number k decides on the host, a tensor k reads sphere = kk > 0 (on a
    GPU a sync; the callers skip this under torch.compile's branch-free form)."""
    return k > 0 if isinstance(k, numbers.Real) else bool(sphere.any())


def _antipode_formula(x: torch.Tensor, kk: torch.Tensor, sphere: torch.Tensor, dim: int) -> torch.Tensor:
    """antipode's math without its checks and its host shortcut (sphere = kk > 0)."""
    xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    kc = kk.to(xc.dtype)
    ks = torch.where(sphere, kc, torch.ones_like(kc))  # the sphere's formula on a safe k where it is not used
    # -(x/|x|) / (k|x|): no |x|^2 to underflow, and no floor under k|x|^2 (a clamp at 1e-15 sent points within
    # ~3e-8 of the origin to -x * 1e15 instead of -x / (k|x|^2) until session 35); x = 0 gives 0 (geoopt's value)
    n = torch.linalg.vector_norm(xc, dim=dim, keepdim=True)
    nz = n > 0
    ns = torch.where(nz, n, torch.ones_like(n))
    a = torch.where(nz, -(xc / ns) / (ks * ns), torch.zeros_like(xc)).to(x.dtype)
    return torch.where(sphere, a, -x)


def sproj(x: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Stereographic projection of a point of the (D+1)-dimensional hyperboloid/sphere model onto the D-ball."""
    dim = _check_surface("sproj", dim, k, x=x)
    if x.size(dim) == 0:
        _fail("sproj", f"x has size 0 along dim={dim - x.dim() if dim >= 0 else dim} (shape {tuple(x.shape)}); a "
              f"point of the (D+1)-dimensional model needs at least one coordinate there")
    kk = _library.fixed_expand(_kt("sproj", k, x), x.narrow(dim, -1, 1).shape)  # (k's gradient: fixed order)
    inv_r = kk.abs().sqrt()
    factor = 1.0 / (1.0 + inv_r * x.narrow(dim, -1, 1))
    return factor * x.narrow(dim, 0, x.size(dim) - 1)


def inv_sproj(x: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Inverse stereographic projection: (lambda_x x, (lambda_x - 1)/sqrt|k|)."""
    dim = _check_surface("inv_sproj", dim, k, x=x)
    kk = _kt("inv_sproj", k, x)
    try:
        lam = lambda_x(x, k=kk, keepdim=True, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "inv_sproj") from None
    return torch.cat((lam * x, (lam - 1.0) / kk.abs().sqrt()), dim=dim)


def sin_k(x: torch.Tensor, k) -> torch.Tensor:
    """sin_k(x): sinh(sqrt(-k) x)/sqrt(-k) (k < 0), x (k = 0), sin(sqrt(k) x)/sqrt(k) (k > 0), smooth in k."""
    k = _elementwise_k("sin_k", k, x)
    return x * _ref.sinc(k * x * x, sinh=_ref._sinh_pos)  # (expm1: the same bits for any thread count)


def arsin_k(x: torch.Tensor, k) -> torch.Tensor:
    """arsin_k(x): asinh(sqrt(-k) x)/sqrt(-k) (k < 0), x (k = 0), asin(sqrt(k) x)/sqrt(k) (k > 0, the argument
    clamped at 1 - 1e-7), smooth in k."""
    k = _elementwise_k("arsin_k", k, x)
    return _ref.arsin_k(x, k)


def dist2plane(x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, *, k, keepdim: bool = False, signed: bool = False,
               scaled: bool = False, dim: int = -1):
    """Distance from x to the gyroplane through p with normal a (geoopt's dist2plane):
    ``arsin_k(2 |<d, a>| / ((1 + k|d|^2) |a|))`` with d = (-p) (+)_k x (|d|^2 clamped at 1e-15, the denominator's
    magnitude at 1e-15), signed without the |.|, times |a| when ``scaled``.  One fused kernel: d is never
    formed, its norm and <d, a> come from the row's dot products (|x - p|^2 accumulated directly, so close x
    and p keep their digits; for k <= 0, d's denominator is (1 + k|p|^2)(1 + k|x|^2) - k|x - p|^2 and
    1 + k|d|^2 that product over it, no clamp: terms that do not cancel near the boundary); gradients to x, p, a
    and k."""
    return _run_triple("dist2plane", (x, p, a), k, dim, flags=(1 if signed else 0) | (2 if scaled else 0),
                       keepdim=keepdim)


class MidpointSumsFn(torch.autograd.Function):
    """The weighted midpoint's reduction: (F, L) = sums over the points of each group (x [G, N, D], w [G, N] or
    None, k [1] or [G]; float64 results): torch.ops.geoops.stereo_midpoint_fwd / _bwd (one pass each)."""

    @staticmethod
    def forward(ctx, x, w, k, posweight):
        F, L = _PAIR["midpoint_fwd"](x, w, k, posweight)
        ctx.save_for_backward(x, w, k)  # (op_context's work)
        ctx.posweight = posweight
        return F, L

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs[:3])
        ctx.posweight = inputs[3]

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gF, gL):
        x, w, k = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = (1 if need[0] else 0) | (2 if need[1] and w is not None else 0) | (4 if need[2] else 0)
        if mask == 0:
            return None, None, None, None
        dx, dw, dk = _PAIR["midpoint_bwd"](gF.contiguous(), gL.contiguous(), x, w, k, ctx.posweight, mask)
        if need[2]:
            dk = _rows_k_grad(dk, k, x.shape[0])
        return (dx if need[0] else None, dw if mask & 2 else None, dk if need[2] else None, None)


def _midpoint_mean_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@_library.first_order_only
def _midpoint_mean_backward(ctx, gm):
    """geoops::stereo_midpoint_mean_fwd(F, L, Q, k) differentiated on its own (an exported program keeps MidpointFn's
    two ops, not the Function): its backward op, k's per-group gradient summed where k is one curvature."""
    F, L, Q, k = ctx.saved_tensors
    need = ctx.needs_input_grad
    gF, gL, gQ, gk = _PAIR["midpoint_mean_bwd"](gm.contiguous(), F, L, Q, k, 4 if need[3] else 0)
    if need[3]:
        gk = _rows_k_grad(gk, k, F.shape[0])
    return ((gF if need[0] else None), (gL if need[1] else None), (gQ if need[2] and Q is not None else None),
            (gk if need[3] else None))


class MidpointRootSumsFn(torch.autograd.Function):
    """geoops::stereo_midpoint_root_fwd (F, L, S) differentiated on its own (an exported program): S's first column
    Q carries a gradient, its other columns are the backward's saved sums."""

    @staticmethod
    def forward(ctx, x, w, k, posweight):
        out = _PAIR["midpoint_root_fwd"](x, w, k, posweight)
        MidpointRootSumsFn.op_context(ctx, (x, w, k, posweight), out)
        return out

    @staticmethod
    def op_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3], output[0], output[2])
        ctx.posweight = inputs[3]

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gF, gL, gS):
        x, w, k, F, S = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = (1 if need[0] else 0) | (2 if need[1] and w is not None else 0) | (4 if need[2] else 0)
        if mask == 0:
            return None, None, None, None
        gF = torch.zeros_like(F) if gF is None else gF.contiguous()
        gL = F.new_zeros(F.shape[0]) if gL is None else gL.contiguous()
        gQ = F.new_zeros(F.shape[0]) if gS is None else gS[:, 0].contiguous()
        dx, dw, dk = _PAIR["midpoint_root_bwd"](gF, gL, gQ, F, S, x, w, k, ctx.posweight, mask)
        if need[2]:
            dk = _rows_k_grad(dk, k, x.shape[0])
        return (dx if need[0] else None, dw if mask & 2 else None, dk if need[2] else None, None)


_library.op_autograd("geoops::cdist_fwd", CdistFn, outputs=1)  # (A is the backward's)
_library.op_autograd("geoops::mobius_scale_fwd", MobiusScaleFn, outputs=1)  # (the stats are the backward's)
_library.op_autograd("geoops::stereo_midpoint_fwd", MidpointSumsFn)
_library.op_autograd("geoops::stereo_midpoint_root_fwd", MidpointRootSumsFn)
_library.op_autograd("geoops::stereo_midpoint_mean_fwd", setup_context=_midpoint_mean_context,
                     backward=_midpoint_mean_backward)


def _midpoint_sums_cat(x, w, k, posweight):
    F, L = _ops.midpoint_sums_reference(x, w, k, posweight)
    return torch.cat([F, L.unsqueeze(-1)], dim=-1)


def _midpoint_func_forward(x, w, k, posweight):
    return _PAIR["midpoint_fwd"](x, w, k, posweight)


def _midpoint_func_setup(ctx, inputs, output):
    x, w, k, posweight = inputs
    ctx.save_for_backward(x, w, k)
    ctx.save_for_forward(x, w, k)
    ctx.posweight = posweight


def _midpoint_func_jvp(ctx, tx, tw, tk, _):
    x, w, k = ctx.saved_tensors
    t = _ref_jvp(lambda a, b, c: _midpoint_sums_cat(a, b, c, ctx.posweight), (x, w, k), (tx, tw, tk))
    return t[..., :-1], t[..., -1]


MidpointSumsFnFunc = _library.with_compiled_apply(type("MidpointSumsFnFunc", (torch.autograd.Function,), {
    "forward": staticmethod(_midpoint_func_forward), "setup_context": staticmethod(_midpoint_func_setup),
    "backward": staticmethod(_library.first_order_only(MidpointSumsFn.backward.__wrapped__)),
    "jvp": staticmethod(_midpoint_func_jvp), "generate_vmap_rule": True, "__module__": __name__,
    "__doc__": "MidpointSumsFn for torch.func transforms (grad, vmap, jacrev, jacfwd); jvp from the reference sums."}))


def _midpoint_sums(x, w, k, posweight):
    if _transformed():  # inside torch.func.grad / vmap / jacrev / jacfwd, or forward-mode AD
        return MidpointSumsFnFunc.compiled_apply(x, w, k, posweight)
    if _library.autograd_wanted(x, w, k):
        return MidpointSumsFn.apply(x, w, k, posweight)
    return _PAIR["midpoint_fwd"](x, w, k, posweight)


class MidpointFn(torch.autograd.Function):
    """The weighted midpoint of each group before the sphere's choice between it and its antipode (x [G, N, D],
    w [G, N] or None, k [1] or [G]): mean = 1/2 (x)_k (F / den) of the sums (F, L) [G, D] float64, den = L clamped
    away from 0; for k < 0 its root from the sums' Q (no cancellation near the boundary).  Forward:
    geoops::stereo_midpoint_root_fwd, then geoops::stereo_midpoint_mean_fwd; backward: the mean's backward op, then
    the sums' (no float64 [G, D] temporaries, no autograd graph over the epilogue)."""

    @staticmethod
    def forward(ctx, x, w, k, posweight):
        F, L, S = _PAIR["midpoint_root_fwd"](x, w, k, posweight)
        ctx.save_for_backward(x, w, k, F, L, S)
        ctx.posweight = posweight
        return _PAIR["midpoint_mean_fwd"](F, L, S[:, 0], k)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gm):
        x, w, k, F, L, S = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = (1 if need[0] else 0) | (2 if need[1] and w is not None else 0) | (4 if need[2] else 0)
        if mask == 0:
            return None, None, None, None
        gF, gL, gQ, gk = _PAIR["midpoint_mean_bwd"](gm.contiguous(), F, L, S[:, 0], k, mask & 4)
        dx, dw, dk = _PAIR["midpoint_root_bwd"](gF, gL, gQ, F, S, x, w, k, ctx.posweight, mask)
        if need[2]:
            dk = _rows_k_grad(dk + gk, k, x.shape[0])
        return (dx if need[0] else None, dw if mask & 2 else None, dk if need[2] else None, None)


def _midpoint_mean(x, w, k, posweight):
    """mean = 1/2 (x)_k (F / den) per group (float64 [G, D]): MidpointFn outside torch.func transforms (the root
    for k < 0 inside the kernels: C++ on CPU, Triton on the triton / cuda backends, the torch reference ops
    elsewhere); under them the sums (MidpointSumsFn) and the epilogue as torch ops and the row kernels."""
    if not _transformed():
        if _library.autograd_wanted(x, w, k):
            return MidpointFn.apply(x, w, k, posweight)
        F, L, S = _PAIR["midpoint_root_fwd"](x, w, k, posweight)
        return _PAIR["midpoint_mean_fwd"](F, L, S[:, 0], k)
    return _midpoint_mean_generic(x, w, k, posweight)


def _midpoint_mean_generic(x, w, k, posweight):
    """_midpoint_mean under torch.func transforms (and forward-mode AD): the sums (MidpointSumsFn: the C++ or Triton
    kernels, or torch ops), the epilogue as torch ops and the row kernels, and for k < 0 the root from the sums
    (_ops.midpoint_root_sums: a torch pass over the points; branch-free, as a transform needs)."""
    F, L = _midpoint_sums(x, w, k, posweight)
    half = torch.full((x.shape[0], 1), 0.5, dtype=torch.float64, device=x.device)
    f = F / _ops.midpoint_den(L)
    mean = mobius_scalar_mul(half, f, k=k.unsqueeze(-1))
    q = _ops.midpoint_root_sums(x, w, k, posweight, F, L)
    return _ops.midpoint_half(f, q, L.unsqueeze(-1), k.to(torch.float64).reshape(-1, 1), mean)


def _weights_at(weights: torch.Tensor, dim: int) -> torch.Tensor:
    """weighted_midpoint's weights (xs's shape without the vector dim, broadcastable) with a size-1 vector dim
    (``dim`` counted from xs's end) where they have it: weights with fewer dims than xs's dims after the vector dim
    broadcast as they are (geoopt's weights.unsqueeze(dim) with a non-negative dim does the same)."""
    pos = weights.dim() + dim + 1
    return weights.unsqueeze(pos) if pos >= 0 else weights


def weighted_midpoint(xs: torch.Tensor, weights: Optional[torch.Tensor] = None, *, k, reducedim=None, dim: int = -1,
                      keepdim: bool = False, lincomb: bool = False, posweight: bool = False) -> torch.Tensor:
    """Weighted gyromidpoint (Einstein/Mobius midpoint) of xs along `reducedim`: geoopt's weighted_midpoint.

    m = 1/2 (x) (sum_i w_i lambda_i x_i / sum_i w_i (lambda_i - 1)); on the sphere the better of m and its
    antipode; with ``lincomb`` scaled by the sum of the weights; with ``posweight`` a point of negative weight
    counts as its antipode with weight |w|.  The sums over the points are one fused pass (forward and backward,
    ``MidpointSumsFn``), the rest runs on the result rows; the ``reference`` backend runs the composition.
    """
    op = "weighted_midpoint"
    udim, dim = dim, _check_surface(op, dim, k, xs=xs)
    if keepdim is not False and keepdim is not True:
        keepdim = _bool_arg(op, "keepdim", keepdim)
    if posweight is not False and posweight is not True:
        posweight = _bool_arg(op, "posweight", posweight)
    if lincomb is not False and lincomb is not True:
        lincomb = _bool_arg(op, "lincomb", lincomb)
    if weights is not None:
        _check_float(op, "weights", weights)
        if weights.device != xs.device:
            _fail(op, f"weights is on {weights.device} but xs is on {xs.device}; all tensors must be on one device")
        if weights.dim() >= xs.dim():
            _fail(op, f"weights of shape {tuple(weights.shape)} must have fewer dimensions than "
                      f"xs {tuple(xs.shape)} (one weight per point, no vector dimension)")
        try:
            _broadcast2(xs.shape, _weights_at(weights, dim).shape)
        except RuntimeError:
            _fail(op, f"weights of shape {tuple(weights.shape)} does not broadcast against xs "
                      f"{tuple(xs.shape)} without its dim={udim}")
    nd = xs.dim()
    d = dim % nd
    if reducedim is None:
        red = [i for i in range(nd) if i != d]
    else:
        one = _args.as_index(reducedim)
        rd = [one] if one is not None else (
            [_args.as_index(i) for i in reducedim] if isinstance(reducedim, (list, tuple, range)) else [None])
        if None in rd:
            _fail(op, f"reducedim must be an int or a list of ints, got {reducedim!r}", TypeError)
        red = sorted({i % nd for i in rd if -nd <= i < nd})
        if len(set(rd)) != len(rd) or len(red) != len(rd):
            _fail(op, f"reducedim={reducedim!r} must name distinct dims in range for xs of {nd} dims", IndexError)
        if d in red:
            _fail(op, f"reducedim={reducedim!r} must not contain the vector dim={udim}")
    kk = _kt(op, k, xs)
    ured = red
    if kk.dim() > nd:  # k's leading dims: more midpoints, of the same points in each curvature (reducedim and a
        e = kk.dim() - nd  # non-negative dim count in xs's dims; geoopt counts them in the broadcast shape)
        xs = xs.expand(tuple(kk.shape[:e]) + tuple(xs.shape))
        red, d, nd = [i + e for i in red], d + e, nd + e
    kshape = (1,) * (nd - kk.dim()) + tuple(kk.shape)
    if any(kshape[i] != 1 for i in red):
        _fail(op, f"k of shape {tuple(kk.shape)} must have size 1 along the reduced dims {ured} (one curvature per "
                  f"midpoint): a k that varies over the points has no midpoint. geoopt returns no midpoint there "
                  f"either: it sums lambda_i x_i with each point's own k_i, scales that one sum by 1/2 in every k_j "
                  f"of the reduced dims (its result keeps them, keepdim or not) and, on the sphere, measures each "
                  f"candidate against one point only")
    if _backend.checks_enabled():
        _debug_checks(op, {"xs": xs} if weights is None else {"xs": xs, "weights": weights}, kk, dim)
    if _backend.resolve(xs.device, _ops.FAMILY) == "reference":
        return _weighted_midpoint_composed(xs, weights, k=kk, reducedim=red, dim=d, keepdim=keepdim,
                                           lincomb=lincomb, posweight=posweight)
    dtype = xs.dtype
    x = xs if dtype in (torch.float32, torch.float64) else xs.float()
    w = None
    if weights is not None:
        wu = _weights_at(weights, dim).to(x.dtype)
        shape = _broadcast2(x.shape, wu.shape)
        if tuple(shape) != tuple(x.shape):
            x = x.expand(shape)
        w = wu.expand(tuple(shape[:d]) + (1,) + tuple(shape[d + 1:])).squeeze(d)
    shape = tuple(x.shape)
    keep = [i for i in range(nd) if i != d and i not in red]
    G = 1
    for i in keep:
        G *= shape[i]
    N = 1
    for i in red:
        N *= shape[i]
    D = shape[d]
    x3 = x.permute(keep + red + [d]).reshape(G, N, D)
    if w is not None:
        wdims = [i if i < d else i - 1 for i in keep + red]
        w = w.permute(wdims).reshape(G, N)
    kd = kk.reshape(kshape).to(torch.float64)
    kg = kd.expand(tuple(shape[i] if i in keep else 1 for i in range(nd))).permute(keep + red + [d]).reshape(G) \
        if kd.numel() != 1 else kd.reshape(1)
    mean = _midpoint_mean(x3, w, kg, bool(posweight))
    k2 = kg.unsqueeze(-1)
    sphere = kg.gt(0)
    # a number k says on the host whether there is a sphere (reading sphere.any() waits for a GPU)
    if _branch_free() or _any_sphere(k, sphere):
        b_mean = _antipode_formula(mean, k2, sphere.unsqueeze(-1), -1)
        with torch.no_grad():  # the sphere's choice between m and its antipode (geoopt: the smaller sum of dists)
            k3 = k2.unsqueeze(-1).to(x3.dtype)
            xp = x3
            if posweight and w is not None:
                xp = torch.where(w.unsqueeze(-1) < 0, _antipode_formula(x3, k3, k3.gt(0), -1), x3)
            a_dist = dist(mean.to(x3.dtype).unsqueeze(1), xp, k=k3).sum(1)
            b_dist = dist(b_mean.to(x3.dtype).unsqueeze(1), xp, k=k3).sum(1)
            better = (sphere & (b_dist < a_dist)).unsqueeze(-1)
        mean = torch.where(better, b_mean, mean)
    if lincomb:
        if w is None:
            alpha = torch.full((G, 1), float(N), dtype=torch.float64, device=xs.device)
        else:
            alpha = (w.abs() if posweight else w).to(torch.float64).sum(1, keepdim=True)
        mean = mobius_scalar_mul(alpha, mean, k=k2)
    perm = keep + red + [d]
    out = mean.to(dtype).reshape([shape[i] for i in keep] + [1] * len(red) + [D])
    out = out.permute([perm.index(i) for i in range(nd)])
    if not keepdim:
        for i in sorted(red, reverse=True):
            out = out.squeeze(i)
    return out


def _weighted_midpoint_composed(xs, weights, *, k, reducedim, dim, keepdim, lincomb, posweight):
    """weighted_midpoint as a composition of the row kernels and torch ops (the reference backend's path; the
    previous implementation, kept for the tests' and the benchmarks' comparison)."""
    kk = k
    nd = xs.dim()
    d = dim % nd
    gamma = lambda_x(xs, k=kk, dim=dim, keepdim=True)
    # (weights in the points' dtype, as the fused path)
    w = (torch.tensor(1.0, dtype=xs.dtype, device=xs.device) if weights is None
         else _weights_at(weights, d - nd).to(xs.dtype))
    compiling = _branch_free()

    def rsum(t):  # (torch's sum over an empty dim list reduces every dim: reducedim=[] reduces nothing here)
        return t.sum(reducedim, keepdim=True) if reducedim else t
    if posweight and (compiling or bool(w.lt(0).any())):
        xs = torch.where(w.lt(0), antipode(xs, k=kk, dim=dim), xs)
        w = w.abs()
    L = rsum((gamma - 1) * w)
    num = rsum(gamma * w * xs)
    den = torch.where(L >= 0, L.clamp_min(1e-10), L.clamp_max(-1e-10))
    two_mean = num / den
    half = torch.full(two_mean.shape[:d] + (1,) + two_mean.shape[d + 1:], 0.5, dtype=xs.dtype, device=xs.device)
    mean = mobius_scalar_mul(half, two_mean, k=kk, dim=dim)
    if compiling or bool(kk.lt(0).any()):  # the ball: 1 + k|f|^2 from the sums, not from f (it cancels there)
        wb, _ = torch.broadcast_tensors(w, gamma)
        q = _ops.midpoint_root(xs, wb, gamma, kk, num, L, rsum, dim)
        mean = _ops.midpoint_half(two_mean, q, L, kk, mean)
    if compiling or bool(torch.any(kk.gt(0))):
        b_mean = antipode(mean, k=kk, dim=dim)
        a_dist = rsum(dist(mean, xs, k=kk, keepdim=True, dim=dim))
        b_dist = rsum(dist(b_mean, xs, k=kk, keepdim=True, dim=dim))
        mean = torch.where(kk.gt(0) & (b_dist < a_dist), b_mean, mean)
    if lincomb:
        if w.numel() == 1:
            alpha = w.clone()
            for i in reducedim:
                alpha = alpha * xs.size(i)
        else:
            wb, _ = torch.broadcast_tensors(w, gamma)
            alpha = rsum(wb)
        alpha = alpha.expand(mean.shape[:d] + (1,) + mean.shape[d + 1:])
        mean = mobius_scalar_mul(alpha, mean, k=kk, dim=dim)
    if not keepdim:
        for i in sorted(reducedim, reverse=True):
            mean = mean.squeeze(i)
    return mean


def mobius_fn_apply(fn, x: torch.Tensor, *args, k, dim: int = -1, **kwargs) -> torch.Tensor:
    """Mobius version of fn: expmap0(fn(logmap0(x), *args, **kwargs))."""
    if not callable(fn):
        _fail("mobius_fn_apply", f"fn must be callable, got {type(fn).__name__}", TypeError)
    return _through_origin("mobius_fn_apply", x, lambda v: fn(v, *args, **kwargs), k, dim, "fn's result")


def _from_end(x, dim):
    """A non-negative dim counted from x's end (x's dims: a k with more dimensions grows the intermediates)."""
    n = _args.as_index(dim)
    ok = isinstance(x, torch.Tensor) and n is not None
    return n - x.dim() if ok and 0 <= n < x.dim() else (dim if n is None else n)


def mobius_fn_apply_chain(x: torch.Tensor, *fns, k, dim: int = -1) -> torch.Tensor:
    """Mobius version of a chain of functions: expmap0(fn_n(...fn_1(logmap0(x))))."""
    if not fns:
        return x

    def chain(v):
        for fn in fns:
            v = fn(v)
        return v
    return _through_origin("mobius_fn_apply_chain", x, chain, k, dim, "the last fn's result")


def _through_origin(op, x, tangent_fn, k, dim, result):
    """expmap0(tangent_fn(logmap0(x))) for mobius_fn_apply(_chain); an argument error of logmap0 names x, one of
    expmap0 names `result` (what tangent_fn returned)."""
    dim = _from_end(x, dim)
    try:
        v = logmap0(x, k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, op, y="x") from None
    v = tangent_fn(v)
    try:
        return expmap0(v, k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, op, u=result) from None


def retr(x: torch.Tensor, u: torch.Tensor, *, k, dim: int = -1) -> torch.Tensor:
    """Retraction x + u followed by projection into the ball (geoopt's Stereographic.retr)."""
    _check_surface("retr", dim, k, x=x, u=u)
    try:
        return project(x + u, k=k, dim=dim)
    except _args.ARG_ERRORS as e:
        raise _called_as(e, "retr", x="x + u") from None


# ---------------------------------------------------------------- fused Riemannian SGD update
__all__ += ["riemannian_sgd_step_"]


_increment_version = torch.autograd.graph.increment_version


def riemannian_sgd_step_(x: torch.Tensor, grad: torch.Tensor, *, lr: float, k, dim: int = -1) -> torch.Tensor:
    r"""One Riemannian SGD update of the points ``x`` in place: ``x <- project(x - lr * egrad2rgrad(x, grad))``.

    That is geoopt's ``RiemannianSGD`` step without momentum on a ``Stereographic``/``PoincareBall``
    parameter (``retr(x, -lr * egrad2rgrad(x, grad))``, with ``egrad2rgrad = grad / lambda_x^2`` and
    ``retr(x, u) = project(x + u)``), in three passes and one fused kernel: the row norms, one
    ``addcmul`` with the per-row factor ``-lr (1 + k|x|^2)^2 / 4`` (the denominator clamped at 1e-15 as
    geoopt's ``lambda_x``) and the fused ``project``, written back into ``x``.  No autograd (the update
    runs under ``torch.no_grad()``); ``grad`` is not modified.  Returns ``x``.

    ``x``, ``grad``: the same shape, the vectors along ``dim``; ``k``: a number or a tensor with one element.
    """
    op = "riemannian_sgd_step_"
    lr = _args.float_arg(f"geoops.stereographic.{op}", "lr", lr)  # (NaN / inf would fill x with NaN)
    _check_float(op, "x", x)
    _check_float(op, "grad", grad)
    if grad.shape != x.shape:
        _fail(op, f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    dim = _vector_dim(op, x, dim)
    with torch.no_grad():
        # geoopt's ManifoldParameter disables __torch_function__: its views (x.view below) are plain tensors
        xp = x if type(x) in (torch.Tensor, torch.nn.Parameter) else x.view(x.shape)
        kt = _as_scalar_tensor(op, "k", k, xp)
        if kt.numel() != 1:
            _fail(op, f"k must have one element, got shape {tuple(kt.shape)}")
        last = dim in (-1, xp.dim() - 1)
        if (last and xp.dim() >= 1 and xp.dtype in (torch.float32, torch.float64) and grad.dtype == xp.dtype
                and xp.is_contiguous() and grad.is_contiguous() and xp.numel()):
            # rows [N, D]: one fused kernel in place (CPU), else lambda_x and project, one fused kernel each
            D = xp.shape[-1]
            x2, g2 = xp.view(-1, D), grad.view(-1, D)
            eps = _ref.default_eps(xp.dtype)
            if xp.device.type == "cpu" and _backend.resolve(xp.device, _ops.FAMILY) == "cpp":
                _backend.compiled().stereo_rsgd_step_cpu(x2, g2, float(kt), float(lr), eps)
                # (the kernel writes through the data pointer: autograd's version counter is bumped here, as a torch
                # in-place op does, so a graph that saved x before the step raises instead of using the new values)
                _increment_version(x)
                return x
            k1 = kt.reshape(1).to(xp.dtype)
            s = _FWD["lambda_x"](x2, None, k1, None, eps).pow_(-2.0).mul_(-float(lr))  # -lr / lambda_x^2
            x2.addcmul_(g2, s.unsqueeze(-1))
            x2.copy_(_FWD["project"](x2, None, k1, None, eps))
            return x
        x2 = (xp * xp).sum(dim=dim, keepdim=True)
        s = x2.mul_(kt.to(x2.dtype)).add_(1.0).clamp_min_(1e-15).square_().mul_(-float(lr) / 4.0)
        moved = xp.addcmul(grad, s)
        xp.copy_(project(moved, k=kt, dim=dim))
    return x
