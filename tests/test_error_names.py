"""Every public function of the hyperbolic modules, called with one bad argument at a time: an error must name the
function the user called (``geoops.<module>.<function>: ...``), not a function it forwards to, and must be geoops'
own (session 46, helper reflog).  Before: ``poincare.dist`` / ``logmap`` / ``expmap`` / ... said
``geoops.stereographic.dist`` (with stereographic's argument names, ``u`` for ``v``), ``inv_sproj`` / ``inner`` /
``norm`` / ``egrad2rgrad`` under GEOOPS_CHECK said ``lambda_x``, ``geodesic`` said ``mobius_add`` /
``mobius_scalar_mul`` (``r`` for ``t``), ``mlr`` said ``hyperplane_dists``, ``batch_norm2d`` said ``batch_norm``;
and torch's own errors, naming nothing, came from ``tan_k``'s k, ``geodesic_unit``'s t, ``riemannian_sgd_step_``'s
dim, a list x of ``poincare.dist`` / ``pairwise_rank``, a string k of ``reconstruction_metrics`` and a string eps of
``poincare.batch_norm`` (the C++ layer's argument parser)."""
import inspect

import pytest
import torch

import geoops.poincare as gp
import geoops.stereographic as gs
from geoops import _backend

B, D = 3, 4
_g = torch.Generator().manual_seed(0)


def _pt(*shape, scale=0.3):
    v = torch.randn(*shape, generator=_g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True) * scale


def _mat(*shape, scale=0.3):
    return torch.randn(*shape, generator=_g, dtype=torch.float64) * scale


x, y, u, v = _pt(B, D), _pt(B, D, scale=0.5), _pt(B, D), _pt(B, D)
col = torch.full((B, 1), 0.5, dtype=torch.float64)
img = _mat(2, 4, 5, 5, scale=0.05)

# a valid call of each public function: (positional args, keyword args); the curvature is added by the test
STEREO = {
    "mobius_add": ((x, y), {}), "mobius_sub": ((x, y), {}), "project": ((x,), {}), "lambda_x": ((x,), {}),
    "mobius_scalar_mul": ((col, x), {}), "expmap": ((x, u), {}), "expmap0": ((u,), {}), "logmap": ((x, y), {}),
    "logmap0": ((y,), {}), "dist": ((x, y), {}), "dist0": ((x,), {}), "cdist": ((x, y), {}),
    "knn": ((x, y), {"n_neighbors": 2}),
    "pairwise_rank": ((x, y, torch.tensor([0, 1]), torch.tensor([1, 2])), {}),
    "reconstruction_metrics": ((x, torch.tensor([[0, 1], [1, 2]])), {}),
    "mobius_matvec": ((torch.eye(D, dtype=torch.float64) * 0.5, x), {}),
    "mobius_pointwise_mul": ((torch.full((D,), 0.5, dtype=torch.float64), x), {}),
    "mobius_blockdiag_matvec": ((torch.eye(2, dtype=torch.float64).expand(2, 2, 2).contiguous(), x), {}),
    "gyration": ((x, y, u), {}), "mobius_coadd": ((x, y), {}), "mobius_cosub": ((x, y), {}),
    "parallel_transport": ((x, y, v), {}), "parallel_transport0": ((y, v), {}),
    "parallel_transport0back": ((x, v), {}), "egrad2rgrad": ((x, u), {}), "inner": ((x, u, v), {}),
    "norm": ((x, u), {}), "geodesic": ((col, x, y), {}), "geodesic_unit": ((col, x, u), {}),
    "antipode": ((x,), {}), "sproj": ((x,), {}), "inv_sproj": ((x,), {}), "dist2plane": ((x, y, u), {}),
    "weighted_midpoint": ((x,), {}), "mobius_fn_apply": ((torch.tanh, x), {}),
    "mobius_fn_apply_chain": ((x, torch.tanh), {}), "tan_k": ((x,), {}), "artan_k": ((x,), {}),
    "arsin_k": ((x,), {}), "sin_k": ((x,), {}), "retr": ((x, u), {}),
    "riemannian_sgd_step_": ((x, u), {"lr": 0.1}),
}
POINCARE = {
    "poincare_fc": ((x, _mat(D, 5)), {}), "hyperplane_dists": ((x, _mat(D, 5)), {}), "mlr": ((x, _mat(D, 5)), {}),
    "poincare_conv2d": ((img, _mat(4 * 9, 6, scale=0.1)), {"kernel_size": 3}),
    "poincare_unfold": ((img,), {"kernel_size": 3}), "poincare_relu": ((x,), {}), "expmap0": ((u,), {}),
    "logmap0": ((y,), {}), "expmap": ((x, u), {}), "logmap": ((x, y), {}), "transp": ((x, y, v), {}),
    "dist": ((x, y), {}), "project": ((x,), {}), "mobius_add": ((x, y), {}), "flatten": ((img,), {}),
    "max_pool2d": ((img,), {"kernel_size": 2}), "avg_pool2d": ((img,), {"kernel_size": 2}), "midpoint": ((x,), {}),
    "batch_norm": ((x, torch.zeros(D, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), {}),
    "batch_norm2d": ((img, torch.zeros(4, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), {}),
    "mobius_linear": ((x, _mat(5, D)), {}),
}
_K_POSITIONAL = {"tan_k", "artan_k", "arsin_k", "sin_k"}
MODULES = {"stereographic": (gs, STEREO, "k", -1.0), "poincare": (gp, POINCARE, "c", 1.0)}


def _bad_variants(fn, args, kwargs, curv):
    """(label, args, kwargs, under GEOOPS_CHECK) with one argument made bad: each tensor argument as an int tensor /
    a list / with a NaN / scaled outside the ball / one entry wider / twice as long / 0-d / float32 (an index tensor:
    as floats / out of range), then dim, keepdim, the scalar options and the curvature."""
    sig = inspect.signature(fn)
    params = list(sig.parameters)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        name = params[i]
        swap = lambda new, i=i: args[:i] + (new,) + args[i + 1:]
        if a.is_floating_point():
            first = torch.arange(a.numel()).reshape(a.shape) == 0
            yield f"{name}=int", swap(a.round().long()), kwargs, False
            yield f"{name}=list", swap(a.tolist()), kwargs, False
            yield f"{name}=nan", swap(torch.where(first, float("nan"), a)), kwargs, True
            yield f"{name}=outside", swap(a * 20), kwargs, True
            yield f"{name}=wide", swap(torch.cat([a, a[..., :1]], -1)), kwargs, False
            yield f"{name}=long", swap(torch.cat([a, a], 0)), kwargs, False
            yield f"{name}=0d", swap(a.reshape(-1)[0]), kwargs, False
            yield f"{name}=f32", swap(a.float()), kwargs, False
        else:
            yield f"{name}=float", swap(a.double()), kwargs, False
            yield f"{name}=oob", swap(a + 100), kwargs, False
    if "dim" in sig.parameters:
        yield "dim=7", args, {**kwargs, "dim": 7}, False
        yield "dim=str", args, {**kwargs, "dim": "a"}, False
    if "keepdim" in sig.parameters:
        yield "keepdim=no", args, {**kwargs, "keepdim": "no"}, False
    for p in ("eps", "lr", "momentum", "kernel_size", "n_neighbors", "reducedim", "batch_dim", "block_elems",
              "man_dim", "start_dim"):
        if p in sig.parameters and params.index(p) >= len(args):
            for bad in ("a", float("nan"), -5):
                yield f"{p}={bad!r}", args, {**kwargs, p: bad}, False
    yield f"{curv}=str", args, {**kwargs, curv: "a"}, False
    yield f"{curv}=nan", args, {**kwargs, curv: float("nan")}, True
    yield f"{curv}=shape", args, {**kwargs, curv: torch.ones(7, dtype=torch.float64)}, False
    yield f"{curv}=int-shape", args, {**kwargs, curv: torch.ones(7, dtype=torch.int64)}, False


def _call(fn, name, args, kwargs, curv):
    kwargs = dict(kwargs)
    if name in _K_POSITIONAL:
        return fn(*args, kwargs.pop(curv), **kwargs)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("module,name", [(m, n) for m, (_, table, _, _) in MODULES.items() for n in table])
def test_errors_name_the_called_function(module, name):
    mod, table, curv, cval = MODULES[module]
    fn = getattr(mod, name)
    args, kwargs = table[name]
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)  # (in-place ops)
    _call(fn, name, args, {curv: cval, **kwargs}, curv)  # the valid call runs
    want = f"geoops.{module}.{name}: "
    wrong, raised = [], 0
    for label, a, kw, check in _bad_variants(fn, args, kwargs, curv):
        before = _backend.checks_enabled()
        _backend.set_checks(check or before)
        try:
            _call(fn, name, a, {curv: cval, **kw}, curv)
            continue  # (not every variant is an error for every function)
        except Exception as e:  # noqa: BLE001 -- any error must name the function
            msg = str(e)
        finally:
            _backend.set_checks(before)
        raised += 1
        if not msg.startswith(want):
            wrong.append(f"{label}: {type(e).__name__}: {msg[:160]}")
    assert raised, "no bad variant raised: the test would check nothing"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("call,words", [
    (lambda: gp.expmap(x, u.long(), c=1.0), "v must be"),  # stereographic's u is poincare's v
    (lambda: gs.mobius_fn_apply(torch.tanh, x.long(), k=-1.0), "x must be a floating"),  # logmap0's y
    (lambda: gs.geodesic(torch.ones(B, 2, dtype=torch.float64), x, y, k=-1.0), "t must have size 1"),
])
def test_errors_use_the_callers_argument_names(call, words):
    with pytest.raises((TypeError, ValueError, IndexError), match=words):
        call()
