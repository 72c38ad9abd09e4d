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


def _rows_op_case():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, dtype=torch.float64, generator=g) * 0.2).requires_grad_()
    z = torch.randn(3, 2, dtype=torch.float64, generator=g)
    b = torch.randn(2, dtype=torch.float64, generator=g)
    return x, z, b, torch.tensor(0.7, dtype=torch.float64)


@pytest.mark.parametrize("op", ["poincare_mlr", "poincare_fc", "cdist", "mobius_matvec"])
def test_op_intermediate_output_is_not_differentiable(op):
    """op_autograd(..., outputs=n): an op that also returns intermediates its Function keeps for the backward (t = x z
    of poincare_mlr_fwd / poincare_fc_fwd, cdist's A, the row ops' stats) dropped their gradients (grads[:n]): a
    loss through such an output, the op called directly, got a silent zero gradient (mlr: x's gradient 0, the
    true one z.sum(1)).  The intermediates are now non-differentiable outputs of the op (torch's error, as for any
    tensor without a gradient), and the main output's gradient is unchanged."""
    x, z, b, c = _rows_op_case()
    if op == "poincare_mlr":
        outs = torch.ops.geoops.poincare_mlr_fwd(x, z, b, c)
    elif op == "poincare_fc":
        outs = torch.ops.geoops.poincare_fc_fwd(x, z, b, c, 1e-5, True, False)
    elif op == "cdist":
        outs = torch.ops.geoops.cdist_fwd(x[None], x[None].detach() * 0.5, c.reshape(1) * -1, True)
    else:
        outs = torch.ops.geoops.mobius_matvec_fwd(x, z.t().contiguous(), c.reshape(1) * -1)
    main, rest = outs[0], outs[1:]
    assert main.requires_grad
    assert rest and not any(t.requires_grad for t in rest)  # (before: differentiable, to a silent zero gradient)
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(rest[0].sum(), x)


def test_sproj_of_points_without_coordinates_is_a_clear_error():
    """review38's open item: sproj of x with size 0 along dim raised torch's narrow IndexError ("start out of
    range"); now a ValueError naming the op, x and the dim (geoopt raises torch's error)."""
    import geoops.stereographic as gs

    for x, dim in ((torch.zeros(3, 0), -1), (torch.zeros(0, 4), 0), (torch.zeros(2, 0, 3), 1)):
        with pytest.raises(ValueError, match=r"sproj: x has size 0 along dim=-?\d"):
            gs.sproj(x, k=-1.0, dim=dim)
    assert gs.sproj(torch.zeros(0, 3), k=-1.0).shape == (0, 2)  # (no points: fine)
