"""Session 35 numerical trial (helper "numhunt"): geoops.poincare at the edges of the math, one test per defect."""
from __future__ import annotations

import pytest
import torch

import geoops.poincare as gp
from geoops.reference import poincare as ref


def _near_boundary(n, D, f, seed, c=1.0):
    """n float32 copies of one direction at f of the radius (kept only if the rounded point is inside)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(1, D, generator=g, dtype=torch.float64)
    x = (d / d.norm() * f / c ** 0.5).repeat(n, 1).float()
    return x if (1 - c * x.double().square().sum(-1)).min() > 0 else None


@pytest.mark.parametrize("f", [1 - 1e-6, 1 - 3e-7])
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_midpoint_fp32_points_near_the_boundary_is_finite(f, c):
    """midpoint's m = f / (1 + sqrt(1 - c|f|^2)) (HypLL's formula): for float32 points inside the ball within ~1e-6
    of the boundary 1 - c|f|^2 rounds below 0 (f is the Klein point: |f| < 1/sqrt(c) only in exact arithmetic), so
    the midpoint of copies of one point was NaN for ~17-40 % of the directions.  Now the root's
    argument is clamped at 0.  (In float32 1 - c|f|^2 ~ p^2/4 is pure rounding here either way: the midpoint keeps
    ~sqrt(eps) relative accuracy, as the eager float32 formula where it is finite.)"""
    done = 0
    for seed in range(40):
        x = _near_boundary(4, 8, f, seed, c)
        if x is None:
            continue
        xr = x.clone().requires_grad_()
        m = gp.midpoint(xr, c=c, batch_dim=0)
        exp = ref.midpoint(x.double(), torch.tensor(c, dtype=torch.float64), batch_dim=0)
        assert torch.isfinite(m).all(), seed
        torch.testing.assert_close(m.double(), exp, rtol=1e-3, atol=0)
        (gx,) = torch.autograd.grad(m.sum(), xr)
        assert torch.isfinite(gx).all(), seed
        done += 1
    assert done >= 20
