"""torch.jit.trace of every geoops.nn layer (a deployment path): the trace replays on new inputs like the eager
layer and saves / loads (torch.jit.save / torch.jit.load), traced with autograd on (the default: parameters require
grad) and under torch.no_grad().  The Gaunt layer, whose op the tracer cannot record, raises naming torch.export.

Session 37: the Poincaré layers ran their Python autograd.Functions also while tracing (and the stereographic ops
theirs whenever a parameter required grad), which the tracer records as opaque ``prim::PythonOp`` nodes:
``torch.jit.save`` refused them ("Could not export Python function call 'PoincareFcFn'").  While tracing, the
Functions' forwards now run inline, recording the custom ops.
"""
from __future__ import annotations

import io
import warnings

import pytest
import torch

import geoops.poincare as gp
import geoops.stereographic as gs
from geoops.nn import poincare as P


def _img(g, c=0.5):
    return gp.expmap0(torch.randn(2, 3, 4, 4, generator=g) * 0.5, c=c, dim=1)


def _vec(g, n=16, c=0.5):
    return gp.expmap0(torch.randn(5, n, generator=g) * 0.5, c=c)


class _First(torch.nn.Module):
    """S4D's forward returns (y, None): the tracer takes tensors only."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, u):
        return self.m(u)[0]


def _cases():
    """name -> (module or function, input maker, whether the output is compared after a backward check)."""
    torch.manual_seed(0)
    ball = P.PoincareBall(0.5)
    lball = P.PoincareBall(0.5, requires_grad=True)
    from geoops.nn import attention as A
    from geoops.nn import ssm as S
    return {
        "PoincareLinear": (P.PoincareLinear(16, 6, ball), _vec),
        "PoincareLinear.learnable_ball": (P.PoincareLinear(16, 6, lball), _vec),
        "PoincareConv2d": (P.PoincareConv2d(3, 4, 3, ball, padding=1), _img),
        "PoincareConv2d.stride2": (P.PoincareConv2d(3, 2, 2, ball, stride=2, id_init=False), _img),
        "PoincareReLU": (P.PoincareReLU(ball), _img),
        "PoincareReLU.vec": (P.PoincareReLU(ball, dim=-1), _vec),
        "PoincareBatchNorm.eval": (P.PoincareBatchNorm(16, ball).eval(), _vec),
        "PoincareBatchNorm2d.eval": (P.PoincareBatchNorm2d(3, ball).eval(), _img),
        "PoincareBatchNorm2d.no_stats": (P.PoincareBatchNorm2d(3, ball, track_running_stats=False), _img),
        "PoincareFlatten": (P.PoincareFlatten(ball), _img),
        "PoincareFlatten.learnable_ball": (P.PoincareFlatten(lball), _img),
        "PoincareMaxPool2d": (P.PoincareMaxPool2d(2, ball), _img),
        "PoincareAvgPool2d": (P.PoincareAvgPool2d(2, ball), _img),
        "MobiusLinear": (P.MobiusLinear(16, 6, ball), _vec),
        "MobiusLinear.blocks": (P.MobiusLinear(16, 8, ball, blocks=2), _vec),
        "PoincareMLR": (P.PoincareMLR(16, 3, ball), _vec),
        "poincare_residual": (lambda a: P.poincare_residual(a, a.flip(0), ball, dim=-1), _vec),
        "PoincareEmbedding": (P.PoincareEmbedding(7, 3, ball), lambda g: torch.randint(0, 7, (4,), generator=g)),
        "stereographic.dist.grad_input": (lambda a: gs.dist(a, a.flip(0), k=-1.0), _vec),
        "stereographic.cdist.grad_input": (lambda a: gs.cdist(a, a, k=-1.0), _vec),
        "stereographic.mobius_matvec.grad_input": (lambda a: gs.mobius_matvec(torch.eye(16) * 0.5, a, k=-1.0), _vec),
        "stereographic.weighted_midpoint.grad_input": (lambda a: gs.weighted_midpoint(a, k=-1.0, reducedim=[0]), _vec),
        "S4D": (_First(S.S4D(4, d_state=4)), lambda g: torch.randn(2, 4, 8, generator=g)),
        "TripleAttention": (A.TripleAttention(8, 2), lambda g: torch.randn(2, 5, 8, generator=g)),
    }


_GRAD_INPUT = ("stereographic.",)  # cases traced on an input that requires grad (a function without parameters)


def _trace(fn, x, grad: bool):
    with warnings.catch_warnings(), (torch.enable_grad() if grad else torch.no_grad()):
        warnings.simplefilter("ignore")  # (TracerWarnings of the layers' shape checks)
        return torch.jit.trace(fn, x, check_trace=False)


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("case", list(_cases()))
def test_traced_layer_saves_and_loads(case, grad):
    """Traced, saved and loaded: the loaded module's outputs on a new input equal the eager layer's.  Failed for
    PoincareLinear, PoincareConv2d, PoincareReLU and PoincareBatchNorm(2d) (both modes), MobiusLinear, the
    learnable-ball layers and the stereographic ops on an input that requires grad (grad mode) before."""
    fn, make = _cases()[case]
    g = torch.Generator().manual_seed(1)
    x0, x1 = make(g), make(g)
    if grad and case.startswith(_GRAD_INPUT):
        x0 = x0.requires_grad_()
    traced = _trace(fn, x0, grad)
    with torch.no_grad():
        want = _out(fn(x1))
        torch.testing.assert_close(_out(traced(x1)), want, rtol=1e-5, atol=1e-6)  # replay on a new input
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        torch.testing.assert_close(_out(loaded(x1)), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_out(loaded(x1)).detach(), want, rtol=1e-5, atol=1e-6)  # (grad mode on too)


@pytest.mark.parametrize("name", ["PoincareLinear.learnable_ball", "PoincareConv2d", "MobiusLinear", "PoincareMLR",
                                  "stereographic.weighted_midpoint.grad_input", "S4D", "TripleAttention"])
def test_traced_backward_gives_the_eager_gradients(name):
    """The trace holds the forward custom ops without the Functions' backwards.  Session 37: a backward through a
    replay raised (no autograd formula on the op).  Session 38: the forward ops carry their own autograd
    (geoops._library.op_autograd), so a replay differentiates, to the eager gradients."""
    m, mk = _cases()[name]
    g = torch.Generator().manual_seed(2)
    x0, x1 = mk(g), mk(g)
    wants_x = name.startswith(_GRAD_INPUT)
    traced = _trace(m, x0.clone().requires_grad_(wants_x), grad=True)

    def grads(f):
        x = x1.clone().requires_grad_(wants_x)
        params = [p for p in (m.parameters() if isinstance(m, torch.nn.Module) else ()) if p.requires_grad]
        return torch.autograd.grad(_out(f(x)).sin().sum(), params + ([x] if wants_x else []))

    for got, want in zip(grads(traced), grads(m)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_traced_gaunt_layer_names_torch_export():
    """The Gaunt op's Tensor?[] schema cannot be recorded by the tracer: a clear error naming torch.export."""
    pytest.importorskip("e3nn")
    from geoops.nn import gaunt as G
    m = G.GauntTensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x2e")
    x = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="torch.export"):
        _trace(lambda a: m(a, a), x, grad=False)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "rows"])
def test_traced_batch_norm_training_updates_running_stats(two_d, grad):
    """A traced batch norm in training mode, saved and loaded: its outputs and its running statistics after three
    batches equal the eager module's (the in-place buffer updates are in the trace)."""
    import copy

    torch.manual_seed(0)
    ball = P.PoincareBall(0.5)
    m = P.PoincareBatchNorm2d(3, ball) if two_d else P.PoincareBatchNorm(16, ball)
    g = torch.Generator().manual_seed(4)
    xs = [(_img if two_d else _vec)(g) for _ in range(3)]
    eager, tm = copy.deepcopy(m), copy.deepcopy(m)
    traced = _trace(tm, xs[0], grad)
    with torch.no_grad():  # (tracing ran one update: back to the initial statistics)
        traced.running_mean.copy_(m.running_mean)
        traced.running_var.copy_(m.running_var)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for x in xs:
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), eager(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.running_mean, eager.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.running_var, eager.running_var, rtol=1e-5, atol=1e-6)
