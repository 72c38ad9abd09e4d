"""The float backward of expmap0 / logmap0 on fp32 rows of D <= 16 (csrc/cpu/stereographic_bwd_f32.h).

Gradients (dx and the per-row grad to k) of the float path (GEOOPS_STEREO_F32_BWD unset) against the fp64
reference's on the same fp32 inputs, by the fp32 2x rule (|ours - ref64| <= 2 |ref32 - ref64| + floor) and
against the double path (GEOOPS_STEREO_F32_BWD=0); hard blocks (NaN rows, k > 0 beyond the series, rows at
or outside the boundary) take the double path bit for bit."""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from geoops.parity import stereographic as pc
from geoops.reference import stereographic as ref

from _stereo_rows import block_rows

OPS = ("logmap0", "expmap0")
ROWS = 32  # the tests' unit of rows (session 24's AVX-512 blocks); the build's blocks: B
B = block_rows()  # rows per block of the float path on this build (32 with AVX-512, 16 with AVX2)


def _inputs(op: str, d: int, n: int, k: float, seed: int) -> torch.Tensor:
    """Rows of every size: zero rows, tiny rows (the series), |x| up to 0.95 of the ball's radius and every 7th
    row within 1e-4..1e-2 of the boundary (k < 0, logmap0); expmap0's tangent vectors up to |k||u|^2 ~ 9."""
    g = torch.Generator().manual_seed(seed)
    if op == "logmap0":
        frac = torch.rand(n, generator=g, dtype=torch.float64) * 0.95
        if k < 0:
            frac[::7] = 1 - torch.logspace(-4, -2, len(frac[::7]), dtype=torch.float64)
        x = pc._ball_points(g, n, d, -1.0, frac) / (abs(k) ** 0.5 if k != 0 else 1.0)
        if k > 0:  # z = k|x|^2 < 0.25 (the float path's series): larger rows are hard blocks, tested below
            x = x * 0.45
    else:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30) * torch.rand(n, 1, generator=g, dtype=torch.float64)
        x = x * (3.0 / abs(k) ** 0.5 if k < 0 else (0.45 / k ** 0.5 if k > 0 else 1.0))
    x[5::11] *= 1e-3
    x[3] = 0.0
    return x.float()


def _grads(fn, x: torch.Tensor, k: torch.Tensor, gout: torch.Tensor):
    xr = x.detach().clone().requires_grad_(True)
    kr = k.detach().clone().requires_grad_(True)
    out = fn(xr, k=kr)
    dx, dk = torch.autograd.grad(out, (xr, kr), gout)
    return dx.double(), dk.double()


def _ours(op, x, k, gout, monkeypatch, mode):
    if mode is None:
        monkeypatch.delenv("GEOOPS_STEREO_F32_BWD", raising=False)
    else:
        monkeypatch.setenv("GEOOPS_STEREO_F32_BWD", mode)
    return _grads(getattr(gs, op), x, k, gout)


@pytest.mark.parametrize("kv", (-1.0, -0.3, 0.0, 0.7))
@pytest.mark.parametrize("d", tuple(range(1, 17)))
@pytest.mark.parametrize("op", OPS)
def test_f32_bwd_accuracy(op, d, kv, monkeypatch):
    n = ROWS * 5 + 7  # a partial block at the end
    x = _inputs(op, d, n, kv, seed=10 * d + 1)
    g = torch.Generator().manual_seed(d)
    gout = torch.randn(n, d, generator=g).float()
    k = torch.full((n, 1), kv)  # per-row k: the grad to k row by row
    new = _ours(op, x, k, gout, monkeypatch, None)
    old = _ours(op, x, k, gout, monkeypatch, "0")
    r64 = _grads(getattr(ref, op), x.double(), k.double(), gout.double())
    r32 = _grads(getattr(ref, op), x, k, gout)
    for i, name in enumerate(("dx", "dk")):
        scale = r64[i].abs().amax() if name == "dk" else r64[i].norm(dim=-1, keepdim=True)
        scale = scale.clamp_min(1e-30)
        e_new = ((new[i] - r64[i]).abs() / scale).max().item()
        e_old = ((old[i] - r64[i]).abs() / scale).max().item()
        e_32 = ((r32[i] - r64[i]).abs() / scale).max().item()
        assert torch.isfinite(new[i]).all(), name
        assert e_new <= 2 * e_32 + 2e-7, (name, e_new, e_32)
        assert e_new <= 4 * e_old + 1e-6, (name, e_new, e_old)
    if kv < 0 and op == "logmap0" or op == "expmap0" and kv != 0:
        assert not torch.equal(new[0], old[0])  # the float path ran


@pytest.mark.parametrize("op", OPS)
def test_f32_bwd_hard_blocks(op, monkeypatch):
    """A block with a NaN row, a row of k > 0 beyond the series, or (logmap0) a row outside the ball takes the
    double path: equal to GEOOPS_STEREO_F32_BWD=0 bit for bit (NaN rows NaN); the other blocks do not."""
    d, n = 4, ROWS * 6
    x = _inputs(op, d, n, -1.0, seed=3)
    k = torch.full((n, 1), -1.0)
    # a hard row sends its own block of B rows (the short-row blocks of stereographic_lanes.h, the build's: 32 with
    # AVX-512, 16 with AVX2) to the double path: two hard rows per slice of ROWS rows, at 5 and B / 2 + 5 (one in each
    # half of a block of 32, or both in the first block of 16, the slice's other 16 rows a float-path block)
    hard_rows = []
    for h in (5, B // 2 + 5):
        x[ROWS * 1 + h] = float("nan")  # slice 1: NaN row
        k[ROWS * 2 + h + 4] = 4.0  # slice 2: k > 0, z = 4 |x|^2 beyond the series
        x[ROWS * 2 + h + 4] = 0.4
        hard_rows += [ROWS * 1 + h, ROWS * 2 + h + 4]
        if op == "logmap0":
            x[ROWS * 3 + h - 4] = 2.0  # slice 3: outside the ball
            hard_rows.append(ROWS * 3 + h - 4)
    gout = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    new = _ours(op, x, k, gout, monkeypatch, None)
    old = _ours(op, x, k, gout, monkeypatch, "0")
    hard = {r // B for r in hard_rows}
    for blk in range(n // B):
        s = slice(blk * B, (blk + 1) * B)
        same = torch.equal(new[0][s].nan_to_num(7.0), old[0][s].nan_to_num(7.0))
        assert same == (blk in hard), blk
    assert torch.isnan(new[0][ROWS + 5]).all() and torch.isfinite(new[0][:ROWS]).all()


@pytest.mark.parametrize("op", OPS)
def test_f32_bwd_scalar_k_and_strided(op, monkeypatch):
    """A scalar k (its grad: the sum over rows) and x with a row stride > D both match the double path closely."""
    d, n = 8, ROWS * 4 + 3
    x = _inputs(op, d, n, -1.0, seed=5)
    gout = torch.randn(n, d, generator=torch.Generator().manual_seed(2))
    k = torch.tensor(-1.0)
    new = _ours(op, x, k, gout, monkeypatch, None)
    old = _ours(op, x, k, gout, monkeypatch, "0")
    torch.testing.assert_close(new[0], old[0], rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(new[1], old[1], rtol=1e-5, atol=1e-5)
    wide = torch.zeros(n, 2 * d)
    wide[:, :d] = x
    xs = wide[:, :d]
    new_s = _ours(op, xs, k, gout, monkeypatch, None)
    torch.testing.assert_close(new_s[0], old[0], rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(new_s[1], old[1], rtol=1e-5, atol=1e-5)
