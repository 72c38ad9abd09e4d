"""Session 44: the Triton twins of tests/test_poincare_bn_transport.py -- the batch norm's transport kernels
(poincare_bn_transport_fwd / _bwd, with b given and formed from the bias) and the running statistics' kernel against
exact arithmetic (mpmath) for a bias point / running mean near the batch midpoint near the boundary (geoopt's
closed form in the rows [b; -m]: 1e-4 of M off in float64 at 1 - c|m|^2 = 1e-6)."""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("mpmath")

import geoops.poincare as gp  # noqa: E402
from geoops import stereographic as st  # noqa: E402
from geoops.kernels import poincare as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # (tests/: the exact oracles)
import _bn_transport_exact as ex  # noqa: E402

TOL, _pair, _rel, _running = ex.TOL, ex.pair, ex.rel, ex.running_step

CASES = [(D, c, delta) for D in (2, 7, 40) for c in (1.0, 0.3) for delta in (1e-6, 1e-4)]


@pytest.mark.parametrize("D,c,delta", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_triton_transport_exact(D, c, delta, train):
    b, m = _pair(D, c, delta)
    S = 0.3 * (1 - c * float(m @ m)) ** 2 if train else 0.7
    w, n, eps = 0.5, 8.0 if train else 1.0, 1e-6
    St, wt = torch.tensor(S, dtype=torch.float64), torch.tensor([w], dtype=torch.float64)
    ct = torch.tensor(c, dtype=torch.float64)
    M, var = P.poincare_bn_transport_fwd(b, m, St, wt, ct, n, eps, train)
    ref, _ = ex.transport_t(b, m, -c, S, w, n, eps, train=train)
    assert _rel(M, ref) < TOL
    gM = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gb, gm, gs = P.poincare_bn_transport_bwd(gM, b, m, St, wt, ct, n, eps, train)
    want = ex.transport_grad(gM, b, m, -c, S, w, n, eps, train=train)
    assert _rel(torch.cat((gb, gm, gs)), torch.cat((want[0], want[1], torch.tensor(want[2:], dtype=torch.float64)))) \
        < 100 * TOL


@pytest.mark.parametrize("D", [3, 7])
def test_triton_transport_from_bias_exact(D):
    """from_bias (b = expmap0(bias) in the kernel): M against the exact value at the b the kernel formed."""
    c = 1.0
    b0, m = _pair(D, c, 1e-6)
    bias = st.logmap0(b0, k=torch.tensor(-c, dtype=torch.float64))
    St, wt = torch.tensor(0.7, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    M, var, b = P.poincare_bn_transport_fwd(bias, m, St, wt, torch.tensor(c, dtype=torch.float64), 1.0, 1e-6, False,
                                            True)
    ref, _ = ex.transport_t(b, m, -c, 0.7, 0.5, 1, 1e-6, train=False)
    assert _rel(M, ref) < TOL


@pytest.mark.parametrize("D,c,delta", CASES)
def test_triton_running_update_exact(D, c, delta):
    m, rm = _pair(D, c, delta)
    want = _running(rm, m, 0.1, c)
    r, rv = rm.clone(), torch.ones(1, dtype=torch.float64)
    P.poincare_bn_running_update_(r, rv, m, torch.ones((), dtype=torch.float64), torch.tensor(c, dtype=torch.float64),
                                  0.1, 1.0)
    step = float((want - rm).abs().max())
    assert float((r - want).abs().max()) <= 1e-5 * step + 4e-16
    # the same as the CPU path's (the formulas of geoops.poincare._running_mean_step_)
    r2 = rm.clone()
    gp._running_mean_step_(r2, m, 0.1, c)
    assert float((r - r2).abs().max()) <= 4e-16


@pytest.mark.parametrize("D,c", [(2, 1.0), (7, 0.3)])
def test_triton_midpoint_mean_near_boundary_exact(D, c):
    """poincare_midpoint_mean_fwd / _bwd (float64) on a batch with 1 - c|x|^2 ~ 1e-4 against the 50-digit midpoint:
    as tests/test_poincare_midpoint_exact.py's bounds (m to ulps, dx to 20 eps / delta)."""
    delta = 1e-4
    x, _ = ex.cloud(6, D, c, delta, 1e-3, seed=D)
    ct = torch.tensor(c, dtype=torch.float64)
    m, fs, sc = P.poincare_midpoint_mean_fwd(x, ct)
    g = torch.randn(D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gx, gc = P.poincare_midpoint_mean_bwd(g, x, ct, fs, sc, True)
    me, gxe, gce = ex.midpoint_exact(x, c, g)
    assert float((m - me).abs().max()) < 8e-16 / c ** 0.5
    tol = 20 * 2.0 ** -53 / delta
    assert _rel(gx, gxe) < tol
    assert abs(float(gc) - gce) < tol * x.shape[0] * float(gxe.abs().max() * x.norm(dim=-1).max()) / c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["boundary", "outside"])
def test_triton_midpoint_mean_programs_match_torch(dtype, case):
    """Several programs (the scatter combined from the programs' own, _mid_fin_fwd_kernel): m, dx, dc against
    geoops.poincare.midpoint's torch composition in float64 (checked against mpmath in
    tests/test_poincare_midpoint_exact.py) near the boundary (1 - c|x|^2 ~ 1e-4) and with rows outside the ball
    (their clamped lam: the old form 1 - c|f|^2 there).  float32: to ~eps32 / delta for dx."""
    c = 0.7
    if case == "boundary":
        x, _ = ex.cloud(700, 5, c, 1e-4, 1e-2, seed=3)
    else:
        g0 = torch.Generator().manual_seed(0)
        x = gp.expmap0(torch.randn(700, 5, generator=g0, dtype=torch.float64) * 0.5, c=0.45)
        assert bool((c * x.square().sum(-1) >= 1).any())
    x = x.to(dtype)
    ct = torch.tensor(c, dtype=dtype)
    m, fs, sc = P.poincare_midpoint_mean_fwd(x, ct)
    g = torch.randn(5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gx, gc = P.poincare_midpoint_mean_bwd(g.to(dtype), x, ct, fs, sc, True)
    xr, cr = x.double().requires_grad_(), torch.tensor(float(ct), dtype=torch.float64, requires_grad=True)
    me = gp.midpoint(xr, c=cr, dim=-1, batch_dim=0)
    gxe, gce = torch.autograd.grad(me, (xr, cr), g)
    eps = 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24
    tol = 20 * eps / (1e-4 if case == "boundary" else 1)
    assert float((m.double() - me).abs().max()) < 8 * eps / c ** 0.5
    assert _rel(gx.double(), gxe) < tol
    assert abs(float(gc) - float(gce)) < tol * float(gce.abs().clamp_min(1))
