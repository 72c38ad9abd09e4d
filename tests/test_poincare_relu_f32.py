"""The Poincaré ReLU's float row lanes (csrc/cpu/poincare_relu.cpp: fp32 rows of D <= 16, 32-row blocks,
GEOOPS_POINCARE_RELU_F32=0 turns them off): values and gradients (x and c) against the fp64 composition by the
low-precision rule max |ours - ref64| <= 2 max |ref32 - ref64| + floor (ref32: the eager composition in fp32), for every
D = 1..16 with full and partial blocks; zero, all-negative, all-positive and near-boundary rows; the projection
branch, NaN rows and rows on / past the boundary against the double path (the knob off)."""
from __future__ import annotations

import math

import pytest
import torch

import geoops.poincare as gp
from geoops.reference import poincare as ref

KNOB = "GEOOPS_POINCARE_RELU_F32"


def _rows(N, D, c, seed, rmax=0.99):
    """N rows of D: random directions at radius up to rmax of the ball's, with special rows mixed in."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(N, D, generator=g, dtype=torch.float64)
    r = torch.rand(N, 1, generator=g, dtype=torch.float64) * rmax
    r[1::5] = rmax  # near the boundary
    r[2::11] = 1e-3  # near 0 (the series sides of atanc / tanc and their derivatives)
    v[3::7] = v[3::7].abs()  # all positive: relu is the identity
    v[4::9] = -v[4::9].abs()  # all negative: relu -> 0
    x = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300) * r / math.sqrt(c)
    x[5::13] = 0.0  # zero rows
    return x


def _run(x, c, gy, knob, monkeypatch):
    monkeypatch.setenv(KNOB, knob)
    xr = x.clone().requires_grad_(True)
    cr = torch.tensor(c, dtype=x.dtype, requires_grad=True)
    y = gp.poincare_relu(xr, c=cr)
    gx, gc = torch.autograd.grad(y, (xr, cr), gy)
    return y.detach(), gx, gc


def _ref(x, c, gy):
    xr = x.clone().requires_grad_(True)
    cr = torch.tensor(c, dtype=x.dtype, requires_grad=True)
    y = ref.poincare_relu(xr, cr, dim=-1)
    gx, gc = torch.autograd.grad(y, (xr, cr), gy)
    return y.detach(), gx, gc


def _two_x(ours, r32, r64, floor):
    """max |ours - ref64| <= 2 max |ref32 - ref64| + floor (the max over the tensor, as flash-attention's tests)."""
    err = float((ours.double() - r64).abs().max())
    bound = 2 * float((r32.double() - r64).abs().max()) + floor
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("D", list(range(1, 17)))
@pytest.mark.parametrize("N", [64, 77])
def test_relu_f32_lanes_vs_fp64(monkeypatch, D, N):
    c = 0.8
    x64 = _rows(N, D, c, seed=100 * D + N)
    x = x64.float()
    x64 = x.double()  # the fp32 inputs exactly
    g = torch.Generator().manual_seed(D)
    gy = torch.randn(N, D, generator=g, dtype=torch.float32)
    y, gx, gc = _run(x, c, gy, "1", monkeypatch)
    y32, gx32, gc32 = _ref(x, c, gy)
    y64, gx64, gc64 = _ref(x64, c, gy.double())
    _two_x(y, y32, y64, 2e-7)
    _two_x(gx, gx32, gx64, 2e-6 * float(gx64.abs().max()))
    _two_x(gc, gc32, gc64, 1e-6 * float(gx64.abs().sum()))
    # the float lanes ran (the double path differs in the last bits somewhere) and agree with it
    yd, gxd, gcd = _run(x, c, gy, "0", monkeypatch)
    assert not torch.equal(y, yd)
    torch.testing.assert_close(y, yd, rtol=3e-6, atol=1e-7)
    torch.testing.assert_close(gx, gxd, rtol=1e-5, atol=1e-6 * float(gxd.abs().max()))


@pytest.mark.parametrize("D", [3, 8, 16])
def test_relu_f32_projection_branch(monkeypatch, D):
    """All-positive rows past the fp32 projection radius (1 - 4e-3)/sqrt(c) (relu keeps them; the projection
    moves them) next to interior rows: the float lanes vs the double path."""
    c, N = 1.3, 64
    x = _rows(N, D, c, seed=D, rmax=0.9).float()
    p = torch.rand(N // 2, D, generator=torch.Generator().manual_seed(D)) + 0.1
    x[::2] = p * (0.999 / math.sqrt(c) / p.norm(dim=1, keepdim=True))
    gy = torch.randn(N, D, generator=torch.Generator().manual_seed(3))
    y, gx, gc = _run(x, c, gy, "1", monkeypatch)
    yd, gxd, gcd = _run(x, c, gy, "0", monkeypatch)
    rad = (1 - gp.default_eps(torch.float32)) / math.sqrt(c)
    torch.testing.assert_close(y[::2].double().norm(dim=1), torch.full((N // 2,), rad, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(y, yd, rtol=3e-6, atol=1e-7)
    torch.testing.assert_close(gx, gxd, rtol=1e-5, atol=1e-6 * float(gxd.abs().max()))
    torch.testing.assert_close(gc, gcd, rtol=1e-5, atol=0)


@pytest.mark.parametrize("D", [2, 8, 16])
def test_relu_f32_hard_rows_take_double_path(monkeypatch, D):
    """A block with a NaN row, a row on the boundary or a row past it runs the double path: its results equal the
    knob-off results bit for bit (NaNs in the same places); the last block (no hard row) takes the float lanes."""
    c, N = 1.0, 128
    x = _rows(N, D, c, seed=7, rmax=0.9).float()
    x[3, 0] = float("nan")  # block 0
    x[40] = x[40].abs() / x[40].norm() * 1.5  # block 1: past the boundary
    x[70] = x[70] / x[70].norm()  # block 2: on the boundary
    gy = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    y, gx, gc = _run(x, c, gy, "1", monkeypatch)
    yd, gxd, gcd = _run(x, c, gy, "0", monkeypatch)
    torch.testing.assert_close(y[:96], yd[:96], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(gx[:96], gxd[:96], rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[3]).any() and torch.isfinite(y[4:]).all() and torch.isfinite(gx[96:]).all()
    torch.testing.assert_close(y[96:], yd[96:], rtol=3e-6, atol=1e-7)  # the last block: the float lanes
    assert not torch.equal(y[96:], yd[96:])
