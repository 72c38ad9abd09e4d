"""tests/test_poincare_midpoint_exact.py's weighted_midpoint cases (k = -1, near the boundary, against the 50-digit
midpoint: 6 cases x 2 deltas) on the triton backend in the interpreter (CPU tensors): the sums path with the Triton
sums kernels and the root from the sums, with that test's bounds."""
import os
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("mpmath")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_poincare_midpoint_exact as E  # noqa: E402

from conftest import DEVICE  # noqa: E402


@pytest.mark.skipif(DEVICE != "cpu", reason="the case builders make CPU tensors: the interpreter's run")
@pytest.mark.parametrize("case", E.CASES)
@pytest.mark.parametrize("delta", [1e-4, 1e-6])
def test_weighted_midpoint_near_boundary_exact_triton(case, delta):
    E.test_stereographic_weighted_midpoint_near_boundary_exact("triton", case, delta)


@pytest.mark.skipif(DEVICE != "cpu", reason="the case builders make CPU tensors: the interpreter's run")
@pytest.mark.parametrize("mode", ["eager", "compile", "func"])
def test_weighted_midpoint_zero_weight_group_finite_gradients_triton(mode):
    """A group of all-zero weights on the triton backend: finite gradients, the other group's as alone.  The mean
    op's torch backward (midpoint_mean_reference, every non-C++ backend since session 46) formed q = Q / L^2 at
    L = 0: 0 * NaN in dx, dweights and the shared k's gradient (session 47, review46)."""
    E.test_stereographic_weighted_midpoint_zero_weight_group_finite_gradients("triton", mode)
