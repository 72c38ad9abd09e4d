"""Session 35 user trial ("modhunt"): torch integration of the public ops (torch.func, autocast, opcheck)."""
from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd, jacrev, jvp, vmap

import geoops.poincare as gp
import geoops.stereographic as gs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

F64 = torch.float64
K = torch.tensor(-1.0, dtype=F64)


def _pts(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gs.expmap0(torch.randn(*shape, generator=g, dtype=F64) * 0.3, k=K)


_BINARY = {
    "mobius_add": lambda x, b: gs.mobius_add(x, b, k=K),
    "mobius_sub": lambda x, b: gs.mobius_sub(x, b, k=K),
    "dist": lambda x, b: gs.dist(x, b, k=K),
    "expmap": lambda x, b: gs.expmap(x, b, k=K),
    "logmap": lambda x, b: gs.logmap(x, b, k=K),
    "gyration": lambda x, b: gs.gyration(x, b, b, k=K),
    "parallel_transport0": lambda x, b: gs.parallel_transport0(b, x, k=K),
}


@pytest.mark.parametrize("name", sorted(_BINARY))
def test_forward_mode_with_a_broadcast_second_input(name):
    """jvp / jacfwd of a row op whose other input broadcasts ((D,) against (B, D) rows: a bias) raised torch's
    'more than one element of the written-to tensor refers to a single memory location': the broadcast input
    reached the forward derivative as a stride-0 view, which torch.func.jvp cannot make a dual of."""
    f = _BINARY[name]
    x, b = _pts(3, 4, seed=1), _pts(4, seed=2)
    t = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    _, got = jvp(lambda xx: f(xx, b), (x,), (t,))
    J = jacrev(lambda xx: f(xx, b))(x)  # reverse mode: (*out, 3, 4)
    torch.testing.assert_close(got, (J * t).sum((-2, -1)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacfwd(lambda xx: f(xx, b))(x), J, rtol=1e-10, atol=1e-12)


def test_mobius_linear_jacfwd_with_bias():
    """geoops.poincare.mobius_linear (nn.MobiusLinear) adds its (out,) bias by mobius_add: jacfwd failed there."""
    g = torch.Generator().manual_seed(4)
    W, bias = torch.randn(5, 4, generator=g, dtype=F64) * 0.3, _pts(5, seed=5)
    x, c = _pts(2, 4, seed=6), torch.tensor(1.0, dtype=F64)
    f = lambda xx: gp.mobius_linear(xx, W, bias, c=c)
    torch.testing.assert_close(jacfwd(f)(x), jacrev(f)(x), rtol=1e-10, atol=1e-12)
