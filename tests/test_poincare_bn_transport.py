"""Session 44 (issue 11, no silent wrong answers): the Poincaré batch norm's transport matrix M = s lam_m / lam_b
gyr[b, -m] for a bias point b near the batch midpoint m near the boundary, against exact arithmetic (mpmath at 50
digits, tests/_bn_transport_exact.py).  geoopt's closed form in the rows [b; -m] (d = 1 - 2k<b,-m> + k^2|b|^2|m|^2
and the rank-2 term's O(1/d) pieces) cancelled there: 1e-4 of M off in float64 at 1 - c|m|^2 = 1e-6 in all three
backends; the rows [b; b - m] with |b - m|^2 summed from the difference do not.  Also the running mean's geodesic
step (the same cancellation in (-x) (+) y for m near running_mean).  The Triton twins: tests/triton/
test_poincare_bn_transport_triton.py."""
import warnings

import mpmath  # noqa: F401  (a test extra)
import pytest
import torch

import geoops.poincare as gp
from geoops import _backend

import _bn_transport_exact as ex

CASES = [(D, c, delta) for D in (2, 7, 64) for c in (1.0, 0.3) for delta in (1e-6, 1e-4)]
TOL, _pair, _rel, _running = ex.TOL, ex.pair, ex.rel, ex.running_step


@pytest.mark.parametrize("D,c,delta", CASES)
def test_reference_transport_exact(D, c, delta):
    """geoops.poincare._transport_matrix (the torch composition: eval, traced, checked and reference calls) and its
    autograd against the exact M and <gM, M>'s exact gradient (b, m, var, weight, c)."""
    b, m = _pair(D, c, delta)
    var, w, eps = 0.7, 0.5, 1e-6
    ref, _ = ex.transport_t(b, m, -c, var, w, 1, eps, train=False)
    bb, mm = b.clone().requires_grad_(), m.clone().requires_grad_()
    vv = torch.tensor(var, dtype=torch.float64, requires_grad=True)
    ww = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    cc = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    M = gp._transport_matrix(*gp._gram(bb, mm), -cc, (ww / (vv + eps)).sqrt())
    assert _rel(M.detach(), ref) < TOL
    gM = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gb, gm, gS, gw, gc = ex.transport_grad(gM, b, m, -c, var, w, 1, eps, train=False)
    M.backward(gM)
    got = torch.cat((bb.grad, mm.grad, torch.stack((vv.grad, ww.grad, cc.grad))))
    want = torch.cat((gb, gm, torch.tensor([gS, gw, gc], dtype=torch.float64)))
    assert _rel(got, want) < 100 * TOL


@pytest.mark.parametrize("D,c,delta", CASES)
def test_cpp_transport_exact(D, c, delta):
    """The C++ transport (bn_transport, bn_transport_matrix, bn_transport_bwd: the fused training layer's) forward
    and hand-written backward against the exact values, through the test hook poincare_bn_transport_cpu."""
    C = _backend.compiled()
    b, m = _pair(D, c, delta)
    S, w, n, eps = 0.3 * (1 - c * float(m @ m)) ** 2, 0.5, 8.0, 1e-6
    gM = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    M, gb, gm, gs = C.poincare_bn_transport_cpu(b, m, gM, S, w, c, n, eps)
    ref, _ = ex.transport_t(b, m, -c, S, w, n, eps, train=True)
    assert _rel(M, ref) < TOL
    want = ex.transport_grad(gM, b, m, -c, S, w, n, eps, train=True)
    got = torch.cat((gb, gm, gs))
    assert _rel(got, torch.cat((want[0], want[1], torch.tensor(want[2:], dtype=torch.float64)))) < 100 * TOL


@pytest.mark.parametrize("D", [3, 16])
def test_cpp_layer_transport_is_the_hook(D):
    """The fused training layer's M (poincare_bn_train_fwd_cpu) is the hook's value, on a batch whose midpoint is
    near the boundary and a bias point near it (b, m as the layer rounds them); and the exact M there."""
    C = _backend.compiled()
    c = 1.0
    x, bias = ex.cloud(8, D, c, 1e-6, 1e-3, seed=D)
    y, var, m, u, v, M, b, mid, tr = C.poincare_bn_train_fwd_cpu(x, bias, 0.5, c, 8.0, 1e-6, 1e-12)
    S = float((u.double() ** 2).sum())
    M2 = C.poincare_bn_transport_cpu(b, m, torch.zeros(D, D, dtype=torch.float64), S, 0.5, c, 8.0, 1e-6)[0]
    assert _rel(M, M2) < 1e-13
    ref, _ = ex.transport_t(b, m, -c, S, 0.5, 8, 1e-6, train=True)
    assert _rel(M, ref) < TOL


@pytest.mark.parametrize("D", [3, 7])
def test_cpp_layer_gradcheck_near_midpoint(D):
    """The fused layer's hand-written backward is the derivative of its forward (x, bias, weight, c), with the bias
    point at the batch midpoint (f = b - m ~ 0: the new rows' degenerate case)."""
    c0 = 0.7
    x, bias = ex.cloud(5, D, c0, 0.3, 0.5, seed=D)
    x = x.requires_grad_()
    bias = bias.clone().requires_grad_()
    w = torch.tensor([0.6], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(c0, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(lambda x, bias, w, c: gp.batch_norm(x, bias, w, c=c, eps=1e-6),
                                        (x, bias, w, c), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("D,c,delta", CASES)
@pytest.mark.parametrize("backend", ["python", "cpp"])
def test_running_mean_step_exact(D, c, delta, backend):
    """The running mean's geodesic step towards a batch midpoint near it near the boundary: within a few ulps of
    the exact point (the <x, y> form: 1e-2 of the step off at 1 - c|x|^2 = 1e-6, 1e-11 absolute)."""
    m, rm = _pair(D, c, delta)
    want = _running(rm, m, 0.1, c)
    r = rm.clone()
    if backend == "python":
        gp._running_mean_step_(r, m, 0.1, c)
    else:
        rv = torch.ones(1, dtype=torch.float64)
        _backend.compiled().poincare_bn_running_update_cpu(r, rv, m, torch.ones((), dtype=torch.float64), 0.1, c, 1.0)
    step = float((want - rm).abs().max())
    assert float((r - want).abs().max()) <= 1e-5 * step + 4e-16
