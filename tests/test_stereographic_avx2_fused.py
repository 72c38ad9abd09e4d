"""The fp32 short-row fused blocks two float vectors at a time on AVX2 builds (session 26,
csrc/cpu/stereographic_rows_f32.h: block_fused runs a 16-row block's two 8-row vectors through lanes_core_g<G = 2>,
each step of the lane math for both before the next; GEOOPS_STEREO_F32_G2=0 runs them one at a time, as before).
G does not change any operation or rounding, so the two must give the same bits: for every fast op, at D where the
fused blocks run by default on AVX2 (expmap at D >= 3, logmap0 at D <= 8, the ops the float path takes at D = 9..16)
and under GEOOPS_STEREO_F32_ROWS=2 (the fused blocks for all five ops), with per-row k that differs between a block's
two vectors, and with a declined block (a NaN row in the second vector).  On AVX-512 and portable builds the knob
changes nothing (the same assertions hold trivially)."""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

from _stereo_rows import paths_bitwise, per_row_k, row_rel_err, short_layout

LAYOUT = short_layout()
BLOCK = LAYOUT["block_rows"]
FAST_OPS = ("mobius_add", "expmap", "expmap0", "logmap", "logmap0")
KNOBS = ("GEOOPS_STEREO_F32_ROWS", "GEOOPS_STEREO_F32_REG", "GEOOPS_STEREO_F32_MOB", "GEOOPS_STEREO_F32_G2",
         "GEOOPS_STEREO_F32_SUMS")


def _env(monkeypatch, **kv):
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)
    for name, v in kv.items():
        monkeypatch.setenv(f"GEOOPS_STEREO_{name}", v)


def _call(op, x, y, k):
    return getattr(gs, op)(x, k=k) if y is None else getattr(gs, op)(x, y, k=k)


def _inputs(op: str, d: int, seed: int):
    """6 blocks and 3 rows: points at norms from the interior to ~1e-6 of the unit ball's boundary, tiny and zero
    rows; y for the two-input ops (expmap: tangent vectors)."""
    n = 6 * BLOCK + 3
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    frac = 1 - 10.0 ** (-(0.3 + 5.7 * torch.rand(n, generator=g, dtype=torch.float64)))
    frac[::5] *= torch.rand(len(frac[::5]), generator=g, dtype=torch.float64)
    x = v / v.norm(dim=-1, keepdim=True) * frac.reshape(-1, 1)
    x[2] = 0.0
    x[BLOCK + 11] *= 1e-7
    x = x.float()
    if op == "expmap0":
        return (x.double() * 1.7).float(), None
    if op == "logmap0":
        return x, None
    if op == "expmap":
        return x, (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 * (1 - (x.double() ** 2).sum(-1, keepdim=True))).float()
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (w / w.norm(dim=-1, keepdim=True) * (0.2 + 0.79 * torch.rand(n, 1, generator=g, dtype=torch.float64))).float()
    y[5:9] = x[5:9] + 1e-5 * torch.randn(4, d, generator=g)
    return x, y


# per-row k whose period (7) is not a divisor of 8: a block's two 8-row vectors see different k lane for lane
K_ROWS = (-1.0, -0.25, 0.0, -0.6, -0.05, -0.9, -0.4)


@pytest.mark.parametrize("rows", ("1", "2"))
@pytest.mark.parametrize("d", (1, 2, 3, 5, 8, 9, 10, 12, 16))
@pytest.mark.parametrize("op", FAST_OPS)
def test_f32_fused_two_vectors_same_bits(op, d, rows, monkeypatch):
    """GEOOPS_STEREO_F32_G2 unset (AVX2: two vectors at a time) against =0 (one at a time): the same bits for k = -1
    and per-row k; every row within 2x the eager fp32 reference's error + 2e-6 of the fp64 math."""
    x, y = _inputs(op, d, seed=600 + 10 * d + int(rows))
    n = x.shape[0]
    for k in (torch.tensor(-1.0), per_row_k(n, K_ROWS)):
        _env(monkeypatch, F32_ROWS=rows, F32_REG="0")
        two = _call(op, x, y, k)
        _env(monkeypatch, F32_ROWS=rows, F32_REG="0", F32_G2="0")
        one = _call(op, x, y, k)
        _env(monkeypatch)
        assert torch.equal(two, one), (op, d, rows)
        kf = k.float()
        eager = getattr(ref, op)(x, k=kf) if y is None else getattr(ref, op)(x, y, k=kf)
        expect = getattr(ref, op)(x.double(), k=k.double()) if y is None else getattr(ref, op)(x.double(), y.double(), k=k.double())
        ok = torch.isfinite(expect).all(-1)
        sx = x if op in ("mobius_add", "expmap", "logmap") else None
        e = row_rel_err(two, expect, sx)[ok] - 2 * row_rel_err(eager, expect, sx)[ok]
        assert float(e.max()) <= 2e-6, (op, d, float(e.max()))


@pytest.mark.parametrize("d", (2, 5, 10))
@pytest.mark.parametrize("op", FAST_OPS)
def test_f32_fused_two_vectors_declined_block(op, d, monkeypatch):
    """A NaN row in a block's second vector declines the whole block (its rows: the double path's bits, as one vector
    at a time), the blocks around it unchanged.  The double path is F32_ROWS=0 with F32_SUMS=0: on AVX-512 builds
    mobius_add at D > 8 otherwise takes the long rows' float sums (another float path, 1 ulp apart in some rows)."""
    x, y = _inputs(op, d, seed=700 + d)
    x[2 * BLOCK + BLOCK - 3] = float("nan")
    k = torch.tensor(-1.0)
    _env(monkeypatch, F32_ROWS="2", F32_REG="0")
    two = _call(op, x, y, k)
    _env(monkeypatch, F32_ROWS="2", F32_REG="0", F32_G2="0")
    one = _call(op, x, y, k)
    _env(monkeypatch, F32_ROWS="0", F32_SUMS="0")
    dbl = _call(op, x, y, k)
    _env(monkeypatch)
    assert torch.equal(two.nan_to_num(7.0), one.nan_to_num(7.0))
    rows = slice(2 * BLOCK, 3 * BLOCK)
    if paths_bitwise():
        assert torch.equal(two[rows].nan_to_num(7.0), dbl[rows].nan_to_num(7.0))
    else:  # portable builds: a few ulps (no hardware fma)
        torch.testing.assert_close(two[rows], dbl[rows], rtol=1e-6, atol=1e-7, equal_nan=True)
    assert torch.isnan(two[2 * BLOCK + BLOCK - 3]).all()
