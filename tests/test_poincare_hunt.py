"""Session 33 user trial (helper "hunt2"): defects of geoops.poincare found by probing, one test each."""
from __future__ import annotations

import pytest
import torch

import geoops
import geoops.poincare as gp


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("xdt,zdt,bdt", [(torch.float32, torch.float64, None), (torch.float64, torch.float32, None),
                                         (torch.float64, torch.float32, torch.float32),
                                         (torch.float32, torch.bfloat16, None),
                                         (torch.float32, torch.float32, torch.float64)])
def test_mlr_mixed_float_dtypes_promote(backend, xdt, zdt, bdt):
    """mlr / hyperplane_dists of a float32 x with a float64 z (or the reverse): computed in the promoted dtype of x, z
    and bias (it raised 'expected m1 and m2 to have the same dtype' from the matmul; a float64 bias with float32 x and
    z gave float64 logits from float32 products)."""
    g = torch.Generator().manual_seed(0)
    x = gp.expmap0(torch.randn(7, 5, generator=g, dtype=torch.float64) * 0.6, c=0.9)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(4, generator=g, dtype=torch.float64) * 0.2
    with geoops.use_backend(backend):
        xs, zs = x.to(xdt), z.to(zdt)
        bs = None if bdt is None else b.to(bdt)
        want_dtype = torch.promote_types(xdt, zdt) if bdt is None else torch.promote_types(torch.promote_types(xdt, zdt), bdt)
        for fn in (gp.mlr, gp.hyperplane_dists):
            y = fn(xs, zs, bs, c=0.9)
            assert y.dtype == want_dtype
            cdt = want_dtype
            want = fn(xs.to(cdt), zs.to(cdt), None if bs is None else bs.to(cdt), c=0.9)
            torch.testing.assert_close(y, want, rtol=0, atol=0)
        xg, zg = xs.clone().requires_grad_(), zs.clone().requires_grad_()
        gx, gz = torch.autograd.grad(gp.mlr(xg, zg, bs, c=0.9).sum(), (xg, zg))
        assert gx.dtype == xdt and gz.dtype == zdt


def test_midpoint_checks_dim_and_batch_dim():
    """midpoint's dim / batch_dim: out of range raised torch's bare 'Dimension out of range'; batch_dim == dim
    silently averaged the coordinates of each point (a meaningless result)."""
    x = gp.expmap0(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 0.5, c=1.0)
    with pytest.raises(IndexError, match=r"geoops.poincare.midpoint: dim=5"):
        gp.midpoint(x, c=1.0, dim=5)
    with pytest.raises(IndexError, match=r"geoops.poincare.midpoint: batch_dim=3"):
        gp.midpoint(x, c=1.0, batch_dim=3)
    with pytest.raises(TypeError, match=r"geoops.poincare.midpoint: batch_dim"):
        gp.midpoint(x, c=1.0, batch_dim=0.0)
    for dim, bd in ((-1, 1), (0, 0), (1, -1), (-1, (0, 1))):
        with pytest.raises(ValueError, match=r"geoops.poincare.midpoint: batch_dim=.* names the manifold dimension"):
            gp.midpoint(x, c=1.0, dim=dim, batch_dim=bd)
    # the valid calls are unchanged
    torch.testing.assert_close(gp.midpoint(x, c=1.0, dim=-1, batch_dim=-2), gp.midpoint(x, c=1.0), rtol=0, atol=0)
    torch.testing.assert_close(gp.midpoint(x.t(), c=1.0, dim=0, batch_dim=1), gp.midpoint(x, c=1.0), rtol=0, atol=0)
    y = gp.midpoint(x.reshape(2, 3, 4), c=1.0, batch_dim=(0, 1))
    torch.testing.assert_close(y, gp.midpoint(x, c=1.0), rtol=0, atol=1e-6)


def test_conv_module_kernel_size_list():
    """PoincareConv2d(kernel_size=[kh, kw]) (a list, as torch.nn.Conv2d accepts): raised "can't multiply sequence by
    non-int of type 'list'" from the constructor."""
    from geoops.nn import poincare as gnn
    ball = gnn.PoincareBall(1.0)
    torch.manual_seed(0)
    a = gnn.PoincareConv2d(3, 4, [3, 2], ball, padding=1)
    b = gnn.PoincareConv2d(3, 4, (3, 2), ball, padding=1)
    assert a.kernel_size == (3, 2) and a.weights.shape == (18, 4)
    b.load_state_dict(a.state_dict())
    x = gp.expmap0(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 0.5, c=1.0, dim=1)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_linear_module_zero_dim_input():
    """PoincareLinear on a 0-d tensor: IndexError 'tuple index out of range' from x.shape[-1]; now the module's
    ValueError naming in_features."""
    from geoops.nn import poincare as gnn
    lin = gnn.PoincareLinear(1, 2, gnn.PoincareBall(1.0))
    with pytest.raises(ValueError, match=r"PoincareLinear: x has no entries .* expected in_features=1"):
        lin(torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"PoincareLinear: x has 3 entries .* expected in_features=1"):
        lin(torch.zeros(2, 3))
    assert lin(torch.full((4, 1), 0.1)).shape == (4, 2)


# ---------------------------------------------------------------- session 35 (helper "apifix")
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("fn", ["batch_norm", "batch_norm2d", "module"])
def test_batch_norm_momentum_in_unit_interval(backend, fn):
    """batch_norm(..., momentum=-0.1) (and batch_norm2d, and a PoincareBatchNorm whose momentum was set after
    construction) was taken: the running mean moved away from the batch midpoint, the running variance by a negative
    weight.  PoincareBatchNorm's constructor already refused it (session 35); the functional forms now agree: a
    ValueError naming momentum outside [0, 1] (running buffers untouched), a TypeError for a non-number; 0 and 1 and a
    numpy float are fine."""
    np = pytest.importorskip("numpy")
    from geoops.nn.poincare import PoincareBall, PoincareBatchNorm
    g = torch.Generator().manual_seed(0)
    x = gp.expmap0(torch.randn(8, 4, generator=g, dtype=torch.float64) * 0.5, c=1.0)
    bias, w = torch.zeros(4, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones((), dtype=torch.float64)

    def call(m):
        if fn == "module":
            bn = PoincareBatchNorm(4, PoincareBall(1.0)).double()
            bn.momentum = m
            return bn(x)
        if fn == "batch_norm":
            return gp.batch_norm(x, bias, w, c=1.0, running_mean=rm, running_var=rv, momentum=m)
        return gp.batch_norm2d(x.reshape(2, 2, 2, 4).permute(0, 3, 1, 2), bias, w, c=1.0, running_mean=rm,
                               running_var=rv, momentum=m)

    with geoops.use_backend(backend):
        for bad in (-0.1, 1.5, float("nan"), -1e-12):
            with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
                call(bad)
        assert (rm == 0).all() and (rv == 1).all()
        for bad in (None, "0.1", True, torch.tensor(0.1)):
            with pytest.raises(TypeError, match="momentum must be a"):
                call(bad)
        for ok in (0.0, 1.0, 0.3, np.float64(0.3), 1):
            call(ok)
