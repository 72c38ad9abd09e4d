"""Scalar arguments of the hyperbolic ops that used to be taken silently (session 45's user trial, probe45).

``eps`` (the projection margin, radius (1 - eps)/sqrt(-k)) of 1 or more mirrored the points through the origin
(eps = 2 sent (0.1, 0.2) to -(0.447, 0.894)) or collapsed them to it (eps = 1), and NaN skipped the projection:
geoopt does the same; geoops now refuses them naming ``eps``.  ``riemannian_sgd_step_``'s ``lr`` that is not a
finite number failed with float()'s message (no argument named) or filled the points with NaN."""
import math

import pytest
import torch

import geoops
import geoops.poincare as gp
import geoops.stereographic as gs

BAD_EPS = [1.0, 2.0, math.inf, math.nan, torch.tensor(1.5)]


def _x():
    return torch.tensor([[3.0, 4.0], [0.1, 0.2]])


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("eps", BAD_EPS, ids=str)
def test_stereographic_project_refuses_eps_at_or_above_one(backend, eps):
    with geoops.use_backend(backend), pytest.raises(ValueError, match=r"project: eps must be a margin below 1"):
        gs.project(_x(), k=torch.tensor(-1.0), eps=eps)


@pytest.mark.parametrize("eps", BAD_EPS, ids=str)
def test_poincare_project_and_fc_refuse_eps_at_or_above_one(eps):
    with pytest.raises(ValueError, match=r"geoops\.poincare\.project: eps must be a margin below 1"):
        gp.project(_x(), c=1.0, eps=eps)
    z, b = torch.randn(2, 3), torch.zeros(3)
    with pytest.raises(ValueError, match=r"geoops\.poincare\.poincare_fc: eps must be a margin below 1"):
        gp.poincare_fc(_x() * 0.1, z, b, c=1.0, eps=eps)


@pytest.mark.parametrize("eps", ["0.1", None, torch.tensor([0.1, 0.2]), 1j], ids=repr)
def test_stereographic_project_eps_type(eps):
    with pytest.raises(TypeError, match=r"geoops\.stereographic\.project: eps must be a real number"):
        gs.project(_x(), k=torch.tensor(-1.0), eps=eps)


def test_project_legal_eps_unchanged():
    x = _x()
    k = torch.tensor(-1.0)
    # a negative eps picks the dtype's default margin (geoopt's -1 default); 0 <= eps < 1 is the margin itself
    torch.testing.assert_close(gs.project(x, k=k, eps=-5.0), gs.project(x, k=k))
    torch.testing.assert_close(gs.project(x, k=k, eps=0.5)[0].norm(), torch.tensor(0.5))
    torch.testing.assert_close(gs.project(x, k=k, eps=torch.tensor(0.5)), gs.project(x, k=k, eps=0.5))
    torch.testing.assert_close(gp.project(x, c=1.0, eps=0), x / x.norm(dim=-1, keepdim=True).clamp_min(1.0))
    torch.testing.assert_close(gp.project(x, c=1.0, eps=None), gp.project(x, c=1.0, eps=-1.0))


@pytest.mark.parametrize("lr", ["0.1", None, math.nan, math.inf, torch.ones(2)], ids=repr)
def test_riemannian_sgd_step_lr_named(lr):
    x = torch.randn(4, 3) * 0.1
    before = x.clone()
    with pytest.raises((TypeError, ValueError), match=r"riemannian_sgd_step_: lr must be"):
        gs.riemannian_sgd_step_(x, torch.randn(4, 3), lr=lr, k=-1.0)
    assert torch.equal(x, before)  # refused before any write


def test_riemannian_sgd_step_lr_forms():
    g = torch.randn(4, 3)
    x0 = torch.randn(4, 3) * 0.1
    want = gs.riemannian_sgd_step_(x0.clone(), g, lr=0.1, k=-1.0)
    for lr in (torch.tensor(0.1), torch.tensor(0.1, dtype=torch.float64)):
        torch.testing.assert_close(gs.riemannian_sgd_step_(x0.clone(), g, lr=lr, k=-1.0), want)
    torch.testing.assert_close(gs.riemannian_sgd_step_(x0.clone(), g, lr=0, k=-1.0), x0)


_KEEPDIM_OPS = {
    "dist": lambda kd: gs.dist(_x() * 0.1, _x() * 0.05, k=-1.0, keepdim=kd),
    "dist0": lambda kd: gs.dist0(_x() * 0.1, k=-1.0, keepdim=kd),
    "lambda_x": lambda kd: gs.lambda_x(_x() * 0.1, k=-1.0, keepdim=kd),
    "inner": lambda kd: gs.inner(_x() * 0.1, _x(), _x(), k=-1.0, keepdim=kd),
    "norm": lambda kd: gs.norm(_x() * 0.1, _x(), k=-1.0, keepdim=kd),
    "dist2plane": lambda kd: gs.dist2plane(_x() * 0.1, _x() * 0.05, _x(), k=-1.0, keepdim=kd),
}


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("op", sorted(_KEEPDIM_OPS))
def test_keepdim_must_be_bool(op, backend):
    """keepdim="no" was taken as True (Python's truth value) and keepdim=1 too; torch's own keepdim refuses both."""
    f = _KEEPDIM_OPS[op]
    with geoops.use_backend(backend):
        for bad in ("no", 1, None, torch.tensor(True)):
            with pytest.raises(TypeError, match=rf"geoops\.stereographic\.{op}: keepdim must be a bool"):
                f(bad)
        assert f(True).shape == (2, 1) and f(False).shape == (2,)
        np = pytest.importorskip("numpy")
        assert f(np.bool_(True)).shape == (2, 1)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_weighted_midpoint_flags_must_be_bool(backend):
    """weighted_midpoint's keepdim (and its posweight / lincomb flags) took "no" and 1 as True, as the other reducing
    ops did before session 45 (session 46, review45: probe45's check left this op out)."""
    x = torch.randn(3, 4, 2, dtype=torch.float64) * 0.1
    with geoops.use_backend(backend):
        for name in ("keepdim", "posweight", "lincomb"):
            for bad in ("no", 1, None, torch.tensor(True)):
                with pytest.raises(TypeError, match=rf"geoops\.stereographic\.weighted_midpoint: {name} must be a bool"):
                    gs.weighted_midpoint(x, None, k=-1.0, reducedim=1, **{name: bad})
        assert gs.weighted_midpoint(x, None, k=-1.0, reducedim=1, keepdim=True).shape == (3, 1, 2)
        np = pytest.importorskip("numpy")
        assert gs.weighted_midpoint(x, None, k=-1.0, reducedim=1, keepdim=np.bool_(False)).shape == (3, 2)


def test_poincare_keepdim_must_be_bool():
    x = torch.randn(4, 3, dtype=torch.float64) * 0.1
    for bad in ("no", 1):
        with pytest.raises(TypeError, match=r"geoops\.poincare\.midpoint: keepdim must be a bool"):
            gp.midpoint(x, c=1.0, keepdim=bad)  # took "no" as True: shape (1, 3)
        with pytest.raises(TypeError, match=r"dist: keepdim must be a bool"):
            gp.dist(x, x * 0.5, c=1.0, keepdim=bad)
    assert gp.midpoint(x, c=1.0, keepdim=True).shape == (1, 3) and gp.midpoint(x, c=1.0).shape == (3,)
