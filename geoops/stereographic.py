"""kappa-stereographic model (Poincare ball for k < 0, sphere for k > 0): fused ops.

Drop-in for ``geoopt.manifolds.stereographic.math``: same names, same keyword
arguments, same results (to rounding), but each op is one fused kernel with a
hand-written fused backward::

    import geoops.stereographic as gm
    z = gm.mobius_add(x, y, k=k)          # x, y: (..., D); k: tensor of any sign

``k`` is a tensor (a Python number is accepted too) that broadcasts against the
batch dimensions and has size 1 along ``dim``; gradients flow to every tensor
argument, k included.  Inputs broadcast as torch broadcasts; float16 and
bfloat16 are computed in float32 inside the kernels and returned in their own
dtype.  Differences from geoopt, all deliberate:

* artanh is evaluated without cancellation (log1p), and dist/logmap form
  |(-x) (+) y| from |x - y| accumulated directly, so close pairs and points near
  the boundary keep their digits;
* the ops are analytic in k through k = 0 (Taylor series near the Euclidean
  limit) and at zero vectors, where values and gradients are finite;
* a ``k`` shaped like the batch (e.g. ``(B, 1)``) gives ``dist(..., keepdim=False)``
  of shape ``(B,)`` (geoopt broadcasts it to ``(B, B)``);
* float16/bfloat16 ``project`` uses a margin of 4e-3/8e-3 (geoopt has none).
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from . import _backend
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
}


# ---------------------------------------------------------------- autograd
_FWD = {name: fwd for name, (fwd, _) in _ops.CALLERS.items()}


def _make_fn(spec: _ops.StereoOp) -> type:
    fwd_op, bwd_op = _ops.CALLERS[spec.name]

    # forward(ctx, ...) rather than a separate setup_context: with setup_context, Function.apply binds the
    # arguments through inspect.signature on every call (~50 us), and functorch transforms, the reason for
    # it, do not run through custom ops' autograd anyway.
    def forward(ctx, x, y, k, r, param):
        ctx.save_for_backward(x, y, k, r)
        ctx.param = param
        return fwd_op(x, y, k, r, param)

    def backward(ctx, grad):
        x, y, k, r = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = (1 if need[0] else 0) | (2 if need[1] else 0) | (4 if need[2] else 0) | (8 if need[3] else 0)
        if mask == 0:
            return None, None, None, None, None
        dx, dy, dk, dr = bwd_op(grad, x, y, k, r, ctx.param, mask)
        n = x.shape[0]
        if need[2] and k.shape[0] != n:
            dk = dk.sum(0, keepdim=True)
        if need[3] and r.shape[0] != n:
            dr = dr.sum(0, keepdim=True)
        return (dx if need[0] else None, dy if need[1] else None, dk if need[2] else None,
                dr if need[3] else None, None)

    # named at creation so that autograd's node is called e.g. MobiusAddFnBackward
    name = "".join(part.capitalize() for part in spec.name.split("_")) + "Fn"
    body = {"forward": staticmethod(forward), "backward": staticmethod(backward), "__module__": __name__,
            "__doc__": f"autograd.Function of {spec.name}: torch.ops.geoops.{spec.name}_fwd / _bwd."}
    return type(name, (torch.autograd.Function,), body)


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


def _check_float(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in _FLOATS:
        _fail(op, f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}",
              TypeError)
    return t


def _as_scalar_tensor(op: str, name: str, v, like: torch.Tensor) -> torch.Tensor:
    """k or r: a tensor, or a Python number turned into one."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return torch.tensor(float(v), dtype=like.dtype, device=like.device)
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
        return v.reshape(1)
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
        _fail(op, f"{name} of shape {tuple(v.shape)} does not broadcast against inputs of shape {tuple(shape)}")
    return v.movedim(dim, -1).reshape(N)


def _debug_checks(op: str, named: dict, k: torch.Tensor, dim: int):
    for name, t in named.items():
        if t is not None and not torch.isfinite(t).all():
            _fail(op, f"{name} has non-finite values (NaN or Inf) [GEOOPS_CHECK]")
    if not torch.isfinite(k).all():
        _fail(op, "k has non-finite values [GEOOPS_CHECK]")
    for name in _ON_MANIFOLD.get(op, ()):
        t = named[name]
        q = 1 + k * (t.double() ** 2).sum(dim=dim, keepdim=True)
        if bool((q <= 0).any()):
            _fail(op, f"{name} has points outside the ball |{name}|^2 < 1/|k| [GEOOPS_CHECK]")


def _run(op: str, x, y=None, *, k, dim: int = -1, r=None, eps: float = -1.0, keepdim: bool = False,
         names=("x", "y"), r_name="r"):
    """Validate, broadcast to rows, run the op's Fn, and restore the caller's layout."""
    spec = _ops.STEREO_OPS[op]
    nx, ny = names
    _check_float(op, nx, x)
    if spec.has_y:
        _check_float(op, ny, y)
        if y.device != x.device:
            _fail(op, f"{ny} is on {y.device} but {nx} is on {x.device}; all tensors must be on one device")
    k = _as_scalar_tensor(op, "k", k, x)
    if spec.has_r:
        r = _as_scalar_tensor(op, r_name, r, x)
    if not isinstance(dim, int) or isinstance(dim, bool):
        _fail(op, f"dim must be an int, got {type(dim).__name__}", TypeError)
    # broadcast shape and canonical dim
    if spec.has_y and x.shape == y.shape:
        shape = x.shape
    elif spec.has_y:
        try:
            shape = torch.broadcast_shapes(x.shape, y.shape)
        except RuntimeError:
            _fail(op, f"{nx} and {ny} do not broadcast: shapes {tuple(x.shape)} and {tuple(y.shape)}")
    else:
        shape = x.shape
    nd = len(shape)
    if nd == 0:
        _fail(op, f"{nx} must have at least one dimension (the vector dimension `dim`), got a 0-d tensor")
    d = dim + nd if dim < 0 else dim + (nd - x.dim())
    if not 0 <= d < nd:
        _fail(op, f"dim={dim} is out of range for inputs of shape {tuple(shape)}", IndexError)

    if _backend.checks_enabled():
        _debug_checks(op, {nx: x, ny: y} if spec.has_y else {nx: x}, k, dim)

    dtype = torch.promote_types(x.dtype, y.dtype) if spec.has_y else x.dtype
    kdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if eps < 0:
        eps = _ref.default_eps(dtype)

    if _backend.resolve(x.device, _ops.FAMILY) == "reference":
        args = {"k": k.to(dtype), "dim": dim}
        if op == "project":
            return _ref.project(x, eps=eps, **args)
        if spec.scalar_out:
            args["keepdim"] = keepdim
        if spec.has_r:
            return getattr(_ref, op)(r, x.to(dtype), **args)
        return getattr(_ref, op)(x.to(dtype), y.to(dtype), **args) if spec.has_y else getattr(_ref, op)(x, **args)

    D = shape[d]
    batch = tuple(shape[:d]) + tuple(shape[d + 1:])
    N = 1
    for s in batch:
        N *= s

    last = d == nd - 1

    def rows(t):
        if t.dtype != dtype:
            t = t.to(dtype)
        if tuple(t.shape) != tuple(shape):
            t = t.expand(shape)
        if not last:
            t = t.movedim(d, -1)
        return t if nd == 2 else t.reshape(N, D)

    x2 = rows(x)
    y2 = rows(y) if spec.has_y else None
    k2 = _per_row(op, "k", k, shape, d, N, kdtype)
    r2 = _per_row(op, r_name, r, shape, d, N, kdtype) if spec.has_r else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x2, y2, k2, r2)):
        out = _FNS[op].apply(x2, y2, k2, r2, float(eps))
    else:  # nothing to differentiate: no autograd node
        out = _FWD[op](x2, y2, k2, r2, float(eps))
    if spec.scalar_out:
        out = out.reshape(batch) if nd != 2 else out
        return out.unsqueeze(d) if keepdim else out
    if nd != 2:
        out = out.reshape(batch + (D,))
    return out if last else out.movedim(-1, d)


# ---------------------------------------------------------------- public API (geoopt's signatures)
def project(x: torch.Tensor, *, k: torch.Tensor, dim: int = -1, eps: float = -1) -> torch.Tensor:
    """Pull points outside the ball back to norm (1 - eps)/sqrt(-k); eps < 0 picks the dtype's default."""
    return _run("project", x, k=k, dim=dim, eps=eps)


def lambda_x(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Conformal factor 2 / (1 + k|x|^2)."""
    return _run("lambda_x", x, k=k, dim=dim, keepdim=keepdim)


def mobius_add(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius addition x (+)_k y."""
    return _run("mobius_add", x, y, k=k, dim=dim)


def mobius_sub(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius subtraction x (+)_k (-y)."""
    return _run("mobius_sub", x, y, k=k, dim=dim)


def mobius_scalar_mul(r: torch.Tensor, x: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mobius scalar multiplication r (x)_k x = tan_k(r artan_k|x|) x/|x|; r has one value per row."""
    return _run("mobius_scalar_mul", x, k=k, dim=dim, r=r)


def expmap(x: torch.Tensor, u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at x of the tangent vector u."""
    return _run("expmap", x, u, k=k, dim=dim, names=("x", "u"))


def expmap0(u: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at the origin: tan_k(|u|) u/|u|."""
    return _run("expmap0", u, k=k, dim=dim, names=("u", None))


def logmap(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at x of the point y."""
    return _run("logmap", x, y, k=k, dim=dim)


def logmap0(y: torch.Tensor, *, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at the origin: artan_k(|y|) y/|y|."""
    return _run("logmap0", y, k=k, dim=dim, names=("y", None))


def dist(x: torch.Tensor, y: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Geodesic distance 2 artan_k(|(-x) (+)_k y|)."""
    return _run("dist", x, y, k=k, dim=dim, keepdim=keepdim)


def dist0(x: torch.Tensor, *, k: torch.Tensor, keepdim: bool = False, dim: int = -1) -> torch.Tensor:
    """Geodesic distance to the origin 2 artan_k(|x|)."""
    return _run("dist0", x, k=k, dim=dim, keepdim=keepdim)
