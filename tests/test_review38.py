"""Session 38 review hunt (helper "review38"): defects found in the session's own changes, each test failing before
its fix."""
import pytest
import torch

import geoops  # noqa: F401
from geoops import _library
from geoops import gaunt as G


def test_gaunt_op_called_directly_with_a_none_weight_differentiates_its_factors():
    """torch.ops.geoops.gaunt_fwd called directly (as a traced program replays it) with weights mixing None and a
    tensor: torch.library's autograd gives such a ``Tensor?[]`` no gradient edges, and the op's backward (exportgrad's
    op_autograd) paired the saved weight with the next edge: StopIteration from inside the backward.  The factors'
    gradients now come as through the public function (the weight in such a list stays without gradient: torch
    does not track it; the public functions pass ones for its Nones)."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(6, 9, dtype=torch.float64, generator=g)
    x2 = torch.randn(6, 4, dtype=torch.float64, generator=g)
    w2 = torch.randn(1, 2, dtype=torch.float64, generator=g)
    wo = torch.randn(6, 3, dtype=torch.float64, generator=g)
    gout = torch.randn(6, 9, dtype=torch.float64, generator=g)
    a1, a2, ao = x1.clone().requires_grad_(), x2.clone().requires_grad_(), wo.clone().requires_grad_()
    out = torch.ops.geoops.gaunt_fwd([a1, a2], [None, w2], ao, 2, "grid")
    got = torch.autograd.grad(out, [a1, a2, ao], gout)
    b1, b2, bo = x1.clone().requires_grad_(), x2.clone().requires_grad_(), wo.clone().requires_grad_()
    ref = G.gaunt_tensor_product(b1, b2, lmax_out=2, weight2=w2, weight_out=bo, route="grid")
    want = torch.autograd.grad(ref, [b1, b2, bo], gout)
    torch.testing.assert_close(out, ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dim", [0, -1, (0,), [-1]])
@pytest.mark.parametrize("keepdim", [False, True])
def test_fixed_sum_of_a_zero_dim_tensor_over_its_dim(dim, keepdim):
    """_library.fixed_sum is ``t.sum(dim, keepdim)``: torch sums a 0-dim tensor over dim 0 / -1 (itself); fixed_sum
    read t.shape[dim] of it and raised IndexError."""
    t = torch.tensor(3.25, dtype=torch.float64)
    got = _library.fixed_sum(t, dim, keepdim=keepdim)
    want = t.sum(dim, keepdim=keepdim)
    assert got.shape == want.shape and torch.equal(got, want)
