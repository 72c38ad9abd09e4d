"""The Poincaré layers' C++ kernels at the ball's boundary: the stereographic family's artanh rule (session 49).

artanh(s)/s takes q = 1 - c|x|^2 clamped only where q <= 0 (outside the ball, or on its boundary), where no 1/q
gradient flows (geoops/stereo_math.h clamp_q / atanc_d).  poincare_conv2d's logmap0 backward row pass
(csrc/cpu/poincare_conv.cpp, logmap0_bwd_scalars: dx when c is fixed, also dk when asked) kept its own copy of the
older rule, q clamped at 1e-15 and the 1/q term dropped below it: float64 pixel rows within ~9 ulps of the boundary
got dx (and dk) without the 1/q term (~1e15), while the forward (the stereographic kernel) took their true q and a
learnable c's path (the stereographic backward) the 1/q term.  Rows with an exact q (tests/_ball_edge_rows.py):
inside against mpmath, on / outside the boundary against the stereographic backward (the same clamp); the fused
ReLU (already on the shared helpers) against mpmath as a guard.  The batch norm's running-mean step (C++ and eager
Python) for far pairs near the boundary against mpmath: its own artanh of |v| clamped at 1 - 1e-15 (1 - 1e-7 for
float tensors) before session 49.
"""
import pytest
import torch

import _ball_edge_rows as E
from geoops import _backend
from geoops.poincare import _LOGMAP0

C2 = _backend.compiled()
pytestmark = pytest.mark.skipif(C2 is None, reason="no compiled extension")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 4.0])
@pytest.mark.parametrize("need_dk", [False, True])
def test_conv_logmap0_bwd_inside_edge_rows_exact(dtype, c, need_dk):
    """The row pass's dx (and per-row dk = -dL/dc) on rows inside the ball within a few ulps of the boundary."""
    x, g = E.edge_rows(dtype, E.NS[dtype], c)
    truths = [E.logmap0_truth(x[i].tolist(), g[i].tolist(), c) for i in range(x.shape[0])]
    v = torch.tensor([t[0] for t in truths], dtype=torch.float64).to(dtype)  # the forward's output, rounded
    gx, gk = C2.poincare_conv2d_logmap0_bwd_cpu(g, x, v, c, True, need_dk)
    for i, (_, dxt, dct) in enumerate(truths):
        assert E.rel_err(gx[i], dxt) <= E.TOL[dtype], ("dx", i, E.rel_err(gx[i], dxt))
        if need_dk:
            assert E.rel_err(gk[i].reshape(1), [-dct]) <= E.TOL[dtype], ("dk", i, float(gk[i]), -dct)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 4.0])
def test_conv_logmap0_bwd_edge_rows_match_stereo(dtype, c):
    """Inside, on and outside the boundary (n <= 0: q clamped, no 1/q gradient): the row pass = the stereographic
    LOGMAP0 backward (a learnable c's path), dx alone and with dk."""
    x, g = E.edge_rows(dtype, E.NS[dtype] + (0, -1, -3, -40), c)
    k1 = torch.tensor([-c], dtype=torch.float64)
    v = C2.stereo_fwd_cpu(_LOGMAP0, x, None, k1, None, 1e-15)
    gxr, _, gkr, _ = C2.stereo_bwd_cpu(_LOGMAP0, g, x, None, k1, None, 1e-15, 5)
    for need_dk in (False, True):
        gx, gk = C2.poincare_conv2d_logmap0_bwd_cpu(g, x, v, c, True, need_dk)
        assert torch.isfinite(gx).all()
        for i in range(x.shape[0]):
            assert E.rel_err(gx[i], gxr[i].tolist()) <= E.TOL[dtype], ("dx", need_dk, i, gx[i], gxr[i])
            if need_dk:
                assert E.rel_err(gk[i].reshape(1), [float(gkr.reshape(-1)[i])]) <= E.TOL[dtype], ("dk", i)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 4.0])
def test_relu_inside_edge_rows_exact(dtype, c):
    """The fused ReLU's C++ kernel (stereo_math.h's helpers since session 47) on the same rows: a guard."""
    x, g = E.edge_rows(dtype, E.NS[dtype], c)
    cc = torch.tensor(c, dtype=dtype)
    eps = E.EPS[dtype]
    y = C2.poincare_relu_fwd_cpu(x, cc, eps)
    dx, dc = C2.poincare_relu_bwd_cpu(g, x, cc, eps)
    dcs = 0.0
    for i in range(x.shape[0]):
        yt, dxt, dct = E.relu_truth(x[i].tolist(), g[i].tolist(), c, eps)
        assert E.rel_err(y[i], yt) <= E.TOL[dtype], ("y", i)
        assert E.rel_err(dx[i], dxt) <= E.TOL[dtype], ("dx", i)
        dcs += dct
    assert E.rel_err(dc.reshape(1), [dcs]) <= E.TOL[dtype], ("dc", float(dc), dcs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [1.0, 0.7])
@pytest.mark.parametrize("path", ["cpp", "python"])
def test_running_mean_step_far_pairs_exact(dtype, c, path):
    """The batch norm's running-mean step (geodesic(t, rm, m), C++ poincare_bn_running_update and the eager
    _running_mean_step_) for far pairs near the boundary against mpmath: artanh(|v|) of v = (-rm) (+) m through
    stereo_math.h's atanc with 1 + k|v|^2 = pp / den.  Before session 49 both clamped |v| at 1 - 1e-15 (1 - 1e-7 for
    float tensors): the step of pairs at 1 - 1e-8 (float: 1 - 1e-4) of the radius was ~25 % short."""
    import geoops.poincare as gp
    t = 0.1
    for delta in E.STEP_DELTAS[dtype]:
        x, y = E.far_pair(delta, c, dtype)
        new = x.clone()
        if path == "cpp":
            C2.poincare_bn_running_update_cpu(new, torch.ones(1, dtype=dtype), y, torch.ones(1, dtype=dtype), t, c, 1.0)
        else:
            gp._running_mean_step_(new, y, t, c)
        assert E.step_err(new, x, y, t, c) <= E.STEP_TOL[dtype], (delta, E.step_err(new, x, y, t, c))


def test_running_step_scalar_twins_match_reference():
    """The running-mean step's Python-float helpers (geoops.poincare._atanc_neg / _tanc_neg: the eager step works on
    the Gram's Python floats; a 0-dim tensor call of the reference per step costs ~300 us against the step's 3 aten
    calls) against their tensor twins geoops.reference.stereographic.atanc(z, q=q) / tanc(z), the Python side of
    stereo_math.h's atanc (the C++ and Triton steps' rule): within 2 ulps on the series side, either side of the
    cut, tiny positive q (a true value however small), q <= 0 or NaN (clamped at 1e-15).  Before session 49 the
    Python copy clamped |v| at 1 - 1e-15 and took 1 - |v| from |v| alone."""
    import math

    import geoops.poincare as gp
    from geoops.reference import stereographic as rs

    def close(a, b):
        return a == b or abs(a - b) <= 2 * 2.0 ** -52 * abs(b)

    zs = [0.0, -1e-12, -5e-4, -1e-3 * (1 - 1e-12), -1e-3, -1e-3 * (1 + 1e-12), -0.01, -0.5, -0.9, -(1 - 1e-10),
          -(1 - 2.0 ** -52), -1.0, -1.5]
    qs = [1e-17, 2.0 ** -52, 1e-15, 1e-12, 0.0, -1e-16, -0.5, math.nan]
    t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for z in zs:
        for q in [1 + z] + qs:
            a, b = gp._atanc_neg(z, q), rs.atanc(t64(z), q=t64(q)).item()
            assert close(a, b), (z, q, a, b)
    for z in [0.0, -1e-13, -1e-12, -1e-9, -1e-6, -1e-3, -0.5, -5.0, -100.0, -1e4]:
        a, b = gp._tanc_neg(z), rs.tanc(t64(z)).item()
        assert close(a, b), (z, a, b)
