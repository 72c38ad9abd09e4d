"""The Triton Poincaré ReLU at the ball's boundary: the stereographic family's artanh rule (session 49).

artanh(s)/s takes q = 1 - c|x|^2 clamped only where q <= 0 (outside the ball, or on its boundary), where no 1/q
gradient flows (geoops/stereo_math.h clamp_q / atanc_d, kernels/stereographic.py _atanc / _atanc_d).  Before
session 49 kernels/poincare.py's ReLU kept its own copy of the older rule (q clamped at 1e-15, the 1/q term
dropped below it): float64 rows within ~9 ulps of the boundary took another value than the C++ kernel and the
truth, and gradients without the 1/q term (~1e15).  Rows with an exact q (tests/_ball_edge_rows.py): inside
against mpmath and the C++ kernel, on / outside the boundary against the C++ kernel (the same clamp).  The batch
norm's running-mean launch for far pairs near the boundary against mpmath (its own artanh of |v| clamped at
1 - 1e-15, 1 - 1e-7 for float32, before session 49).
"""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from geoops import _backend  # noqa: E402
from geoops.kernels import poincare as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # (tests/: the exact rows and their truths)
import _ball_edge_rows as E  # noqa: E402


def _cpp():
    C = _backend.compiled()
    if C is None:
        pytest.skip("no compiled extension")
    return C


def _check_relu_rows(x, g, c, eps, tol, device, tag=None):
    """The Triton ReLU's y, dx (per row) and dc (summed) on rows x with upstream g against mpmath's truth."""
    cc = torch.tensor(c, dtype=x.dtype)
    y = P.poincare_relu_fwd(x.to(device), cc.to(device), eps).cpu()
    dx, dc = P.poincare_relu_bwd(g.to(device), x.to(device), cc.to(device), eps)
    dx, dc = dx.cpu(), dc.cpu()
    dcs = 0.0
    for i in range(x.shape[0]):
        yt, dxt, dct = E.relu_truth(x[i].tolist(), g[i].tolist(), c, eps)
        assert E.rel_err(y[i], yt) <= tol, ("y", tag, i, E.rel_err(y[i], yt))
        assert E.rel_err(dx[i], dxt) <= tol, ("dx", tag, i, E.rel_err(dx[i], dxt))
        dcs += dct
    assert E.rel_err(dc.reshape(1), [dcs]) <= tol, ("dc", tag, float(dc), dcs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 4.0])
def test_relu_inside_edge_rows_exact(dtype, c, device):
    x, g = E.edge_rows(dtype, E.NS[dtype], c)
    _check_relu_rows(x, g, c, E.EPS[dtype], E.TOL[dtype], device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 4.0])
def test_relu_edge_rows_match_cpp(dtype, c, device):
    """Inside, on and outside the boundary (n <= 0: q clamped, no 1/q gradient): Triton = C++."""
    C = _cpp()
    x, g = E.edge_rows(dtype, E.NS[dtype] + (0, -1, -3, -40), c)
    cc = torch.tensor(c, dtype=dtype)
    eps = E.EPS[dtype]
    y = P.poincare_relu_fwd(x.to(device), cc.to(device), eps).cpu()
    dx, dc = P.poincare_relu_bwd(g.to(device), x.to(device), cc.to(device), eps)
    yc = C.poincare_relu_fwd_cpu(x, cc, eps)
    dxc, dcc = C.poincare_relu_bwd_cpu(g, x, cc, eps)
    for i in range(x.shape[0]):
        assert E.rel_err(y[i], yc[i].tolist()) <= E.TOL[dtype], ("y", i)
        assert E.rel_err(dx[i].cpu(), dxc[i].tolist()) <= E.TOL[dtype], ("dx", i, dx[i], dxc[i])
    assert torch.isfinite(dx).all()
    assert E.rel_err(dc.cpu().reshape(1), [float(dcc)]) <= E.TOL[dtype], ("dc", float(dc), float(dcc))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 0.7])
def test_running_mean_step_far_pairs_exact(dtype, c, device):
    """The batch norm's running-mean launch (_bn_running_kernel) for far pairs near the boundary against mpmath:
    artanh(|v|) through the stereographic family's _atanc with 1 + k|v|^2 = pp / den (before session 49: |v|
    clamped at 1 - 1e-15, 1 - 1e-7 for float32, the step of pairs at 1 - 1e-8 / 1 - 1e-4 of the radius ~25 % short)."""
    t = 0.1
    for delta in E.STEP_DELTAS[dtype]:
        x, y = E.far_pair(delta, c, dtype)
        new = x.clone().to(device)
        P.poincare_bn_running_update_(new, torch.ones(1, dtype=dtype, device=device), y.to(device),
                                      torch.ones((), dtype=dtype, device=device),
                                      torch.tensor(c, dtype=dtype, device=device), t, 1.0)
        assert E.step_err(new.cpu(), x, y, t, c) <= E.STEP_TOL[dtype], (delta, E.step_err(new.cpu(), x, y, t, c))


@pytest.mark.parametrize("c", [1.0, 0.75])
@pytest.mark.parametrize("D", [8, 33])
def test_relu_float32_random_rows_near_boundary_exact(c, D, device):
    """float32 rows at random directions, 1 - delta of the radius (delta 1e-3 .. 1e-5), against mpmath: the row sums
    |x|^2, |relu x|^2, <g, relu x> in float64 (products of float32 entries are exact there), as the C++ kernel's
    double sums.  Before session 50 the Triton ReLU formed them in float32 and rounded |x|^2 by ~eps against
    q = 1 - c|x|^2 ~ 2 delta: y 5.7e-5, dx 1.7e-3, dc 3.6e-3 off at delta = 1e-5 (C++: <= 1e-7).  The exact rows of
    tests/_ball_edge_rows.py sum exactly in float32 too, so they could not see it."""
    import math

    gen = torch.Generator().manual_seed(50 + D)
    eps = E.EPS[torch.float32]
    for delta in (1e-3, 1e-4, 1e-5):
        u = torch.randn(3, D, generator=gen, dtype=torch.float64)
        x = (u / u.norm(dim=1, keepdim=True) * ((1 - delta) / math.sqrt(c))).float()
        g = torch.randn(3, D, generator=gen, dtype=torch.float64).float()
        _check_relu_rows(x, g, c, eps, E.TOL[torch.float32], device, delta)
