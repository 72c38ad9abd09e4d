"""Session 37 hunt of geoops.nn under torch.nn machinery ("nnhunt"): deferred (meta-device) initialisation,
torch.func.functional_call / vmap ensembles, parametrizations, freezing, gradient clipping, hooks, layouts."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import geoops.nn as gnn
import geoops.poincare as gp
from geoops.nn import poincare as P


def _pts(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gp.expmap0(torch.randn(*shape, generator=g) * 0.3, c=torch.tensor(1.0))


def _img(seed=0):
    return _pts(2, 5, 5, 3, seed=seed).permute(0, 3, 1, 2).contiguous()


def _materialise(module: torch.nn.Module) -> torch.nn.Module:
    """torch's deferred-initialisation recipe: to_empty, then reset_parameters on every submodule that has it."""
    module.to_empty(device="cpu")
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


_LAYERS = {
    "PoincareLinear": lambda b: P.PoincareLinear(4, 6, b),
    "PoincareConv2d": lambda b: P.PoincareConv2d(3, 4, 3, b, padding=1),
    "PoincareBatchNorm": lambda b: P.PoincareBatchNorm(4, b),
    "PoincareBatchNorm2d": lambda b: P.PoincareBatchNorm2d(3, b),
    "PoincareEmbedding": lambda b: P.PoincareEmbedding(10, 4, b),
    "MobiusLinear": lambda b: P.MobiusLinear(4, 6, b),
    "MobiusLinear blocks": lambda b: P.MobiusLinear(4, 6, b, blocks=2),
    "PoincareMLR": lambda b: P.PoincareMLR(4, 3, b),
}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_meta_device_init_then_to_empty_and_reset_parameters(name):
    """Built under torch.device("meta"), materialised with to_empty + reset_parameters (torch's deferred
    initialisation), every parameter and buffer equals the eagerly built layer's (same seed).  Before: the ball
    (no reset_parameters: c = softplus(uninitialised memory)), PoincareBatchNorm(2d) (bias, weight and running
    stats), PoincareMLR (z) kept uninitialised memory, and PoincareEmbedding's rows were drawn with the garbage c."""
    torch.manual_seed(0)
    eager = _LAYERS[name](P.PoincareBall(0.7))
    with torch.device("meta"):
        lazy = _LAYERS[name](P.PoincareBall(0.7))
    assert all(t.is_meta for t in lazy.state_dict().values())
    torch.manual_seed(0)
    _materialise(lazy)
    want, got = eager.state_dict(), lazy.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        if name == "PoincareMLR" and k == "z" or name.startswith("MobiusLinear") and k == "weight":
            # random draws: the same distribution (fresh draws after the meta construction consumed none)
            assert torch.isfinite(got[k]).all() and got[k].abs().max() < 1, k
            continue
        torch.testing.assert_close(got[k], want[k], msg=k)
    assert float(lazy.ball()) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.7))))


def test_ball_reset_parameters_restores_the_constructor_value():
    ball = P.PoincareBall(0.4, requires_grad=True)
    with torch.no_grad():
        ball.value.fill_(3.0)
    ball.reset_parameters()
    assert float(ball.value.detach()) == pytest.approx(0.4)
    assert float(ball()) == pytest.approx(math.log1p(math.exp(0.4)))


_OTHER = {
    "S4D": lambda: gnn.S4D(4, 4),
    "S4D lr": lambda: gnn.S4D(4, 4, lr=1e-3, dt_min=0.01, dt_max=0.05),
    "S4D lr=0 (buffers)": lambda: gnn.S4D(4, 4, lr=0.0),
    "TripleAttention": lambda: gnn.TripleAttention(8, 2),
}


def _gaunt():
    pytest.importorskip("e3nn")
    return gnn.GauntTensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x2e")


@pytest.mark.parametrize("name", list(_OTHER) + ["GauntTensorProduct"])
def test_meta_device_init_other_modules(name):
    """S4D (D, and S4DKernel's log_dt / C / A, parameters or buffers) and GauntTensorProduct (its weights) had no
    reset_parameters: after to_empty they kept uninitialised memory.  Now the materialised module equals the eager
    one built with the same seed (the S4D-Lin initialisation drawn in the same order), and S4DKernel's ``_optim``
    hints survive."""
    make = _gaunt if name == "GauntTensorProduct" else _OTHER[name]
    torch.manual_seed(0)
    eager = make()
    with torch.device("meta"):
        lazy = make()
    torch.manual_seed(0)
    _materialise(lazy)
    want, got = eager.state_dict(), lazy.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    if name.startswith("S4D") and "lr=0" not in name:
        for p in ("log_dt", "log_A_real", "A_imag"):
            assert getattr(lazy.kernel, p)._optim == getattr(eager.kernel, p)._optim
