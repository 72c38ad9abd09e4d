"""tests/test_stereographic_reference_exact.py's far-pair dist cases (x near the boundary, y far; session 46, helper
distdy) on the triton backend in the interpreter (CPU tensors), with that test's bounds: the Triton dist backward
formed dd's adjoint as the C++ one did (two ~1 / delta-sized terms that cancel, dy ~eps / delta relative off)."""
import os
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("mpmath")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_stereographic_reference_exact as E  # noqa: E402

import geoops.stereographic as gs  # noqa: E402
from geoops import _backend  # noqa: E402

from conftest import DEVICE  # noqa: E402


@pytest.mark.skipif(DEVICE != "cpu", reason="the case builders make CPU tensors: the interpreter's run")
@pytest.mark.parametrize("k_grad", [True, False])
@pytest.mark.parametrize("k,delta", [(-1.0, 1e-6), (-1.0, 1e-8), (-0.3, 1e-7)])
def test_dist_far_pair_near_boundary_exact_triton(k, delta, k_grad):
    with _backend.use_backend("triton"):
        errs, bounds = E._errors_and_bounds("dist", gs.dist, k, delta, "far", k_grad=k_grad)
    for name, e, b in list(zip(("value", "dx", "dy", "dk"), errs, bounds))[:4 if k_grad else 3]:
        assert e <= b, f"dist {name}: {e:.3g} > {b:.3g}"


@pytest.mark.skipif(DEVICE != "cpu", reason="the case builders make CPU tensors: the interpreter's run")
@pytest.mark.parametrize("op", ["logmap", "dist"])
@pytest.mark.parametrize("k,delta", [(-1.0, 1e-9), (-0.3, 3e-9)])
def test_both_near_boundary_exact_triton(op, k, delta):
    """Both points within delta of the boundary, far apart (session 47): q ~ delta^2 below 1e-15 was clamped as if
    outside the ball (dist 1.6e-1 / 1.1e-1 relative short); tests/test_stereographic_reference_exact.py's bound."""
    with _backend.use_backend("triton"):
        errs, bounds = E._errors_and_bounds(op, getattr(gs, op), k, delta, "both")
    for name, e, b in zip(("value", "dx", "dy", "dk"), errs, bounds):
        assert e <= b, f"{op} {name}: {e:.3g} > {b:.3g}"


@pytest.mark.skipif(DEVICE != "cpu", reason="the case builders make CPU tensors: the interpreter's run")
def test_both_near_boundary_cdist_triton():
    """cdist's epilogue (its own clamp of p_x p_y at 1e-15 until session 47) against mpmath."""
    import torch

    k = -1.0
    x, y = E.both_rows(k, 1e-9, 6, 3)
    exact = torch.tensor(E.mp_dist_rows(x, y, k), dtype=torch.float64)
    with _backend.use_backend("triton"):
        got = gs.cdist(x, y, k=torch.tensor(k, dtype=torch.float64)).diagonal()
    err = float((got - exact).abs().max())
    assert err < 32 * E.EPS / 1e-9, f"cdist: {err:.3g}"  # (test_kernel_both_near_boundary_rows' bound)
