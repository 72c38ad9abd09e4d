"""The fp32 short-row forward on builds with AVX2 and without AVX-512 (session 25): the float Mobius terms
(csrc/cpu/stereographic_rows_f32.h: lanes_mob_g, GEOOPS_STEREO_F32_MOB) are the default there too, and the float
atanc's log1p is inline (log1p_big_fg: the exponent / mantissa split from the float's bits, where AVX-512 builds take
vgetexpps / vgetmantps and other builds SLEEF's log1pf).  The float Mobius terms' accuracy on cancelling rows is
tests/test_stereographic_short.py's test_f32_mobius_float_terms_accuracy (every build); here: that the switch reaches a
different computation on these builds too, and the inline log1p's accuracy over its whole argument range (atanc's
w = 2s(1 + s)/q from 0.57 up to ~1e8 as the points approach the boundary), against the fp64 math."""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

from _stereo_rows import per_row_k, row_rel_err, short_layout

LAYOUT = short_layout()  # what the build compiled (not the machine: a portable build has no AVX2 / AVX-512 paths)
SIMD = LAYOUT["float_mobius_terms"]
simd_only = pytest.mark.skipif(not SIMD, reason="the float Mobius terms are built for AVX2 / AVX-512 only")


def _call(op, x, y, k):
    return getattr(gs, op)(x, k=k) if y is None else getattr(gs, op)(x, y, k=k)


def _near_boundary(n: int, d: int, seed: int, kv: float = -1.0):
    """n points of the ball of curvature kv (< 0): norms 1 - 10^-a of the radius, a uniform in [0.5, 7] (in fp32 the
    closest round to within ~1 ulp of the boundary), random directions; some interior, tiny and zero rows."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = 0.5 + 6.5 * torch.rand(n, generator=g, dtype=torch.float64)
    frac = 1 - 10.0 ** (-a)
    frac[::9] = torch.rand(len(frac[::9]), generator=g, dtype=torch.float64) * 0.9
    frac[4::23] = 1e-6
    x = v / v.norm(dim=-1, keepdim=True) * (frac / abs(kv) ** 0.5).reshape(-1, 1)
    x[7] = 0.0
    return x.float()


@simd_only
def test_f32_mobius_float_terms_default(monkeypatch):
    """The float Mobius terms are the default on AVX2 builds as on AVX-512 ones (AVX2: mobius_add and logmap; expmap
    keeps the double terms there): GEOOPS_STEREO_F32_MOB=0 (the double terms) gives different bits on cancelling rows,
    and =1 the default's (read per call).  (Before session 25 AVX2 builds always ran the double terms: the switch
    changed nothing there.)"""
    monkeypatch.setenv("GEOOPS_STEREO_F32_ROWS", "2")  # the fused blocks for all five ops at every D <= 16
    k = torch.tensor(-1.0)
    for op in ("mobius_add", "expmap", "logmap"):
        for d in (2, 5, 10):
            x = _near_boundary(256 + 5, d, seed=d)
            g = torch.Generator().manual_seed(100 + d)
            if op == "mobius_add":
                y = (-x * 0.999 + 1e-3 * torch.randn(x.shape, generator=g)).float()
            elif op == "logmap":
                y = (x * 0.999 + 1e-3 * torch.randn(x.shape, generator=g)).float()
            else:
                y = (-x * (1 + k * (x * x).sum(-1, keepdim=True)) * 3.0).float()
            monkeypatch.delenv("GEOOPS_STEREO_F32_MOB", raising=False)
            a = _call(op, x, y, k)
            monkeypatch.setenv("GEOOPS_STEREO_F32_MOB", "0")
            b = _call(op, x, y, k)
            monkeypatch.setenv("GEOOPS_STEREO_F32_MOB", "1")
            c = _call(op, x, y, k)
            monkeypatch.delenv("GEOOPS_STEREO_F32_MOB", raising=False)
            assert torch.equal(a, c), (op, d)
            if op not in LAYOUT["float_mobius_ops"]:
                assert torch.equal(a, b), (op, d)
            else:
                assert not torch.equal(a, b), (op, d)
            # (how close: test_f32_mobius_float_terms_accuracy, against the fp64 math; on these cancelling rows the two
            # differ by more than an allclose of the outputs would allow, both within their bounds there)


@pytest.mark.parametrize("d", (1, 2, 3, 5, 8, 10, 16))
@pytest.mark.parametrize("op", ("logmap0", "logmap"))
@pytest.mark.parametrize("rows", ("1", "2"))
def test_f32_atanc_log1p_accuracy(op, d, rows, monkeypatch):
    """The float atanc (logmap0; logmap with its Mobius difference) on points from the interior to within ~1 ulp of the
    boundary, k = -1, -0.3 and per-row k: every row's error vs the fp64 math on the same fp32 inputs at most 2x the
    eager fp32 reference's + 2e-6 (relative to the output, logmap: or |x| / 10); the float path's default mode
    (GEOOPS_STEREO_F32_ROWS unset: logmap0's fused blocks, logmap's eight-loop blocks at D <= 8) and =2 (the fused
    blocks, logmap's float Mobius terms: the inline log1p for both ops)."""
    if rows == "1":
        monkeypatch.delenv("GEOOPS_STEREO_F32_ROWS", raising=False)
    else:
        monkeypatch.setenv("GEOOPS_STEREO_F32_ROWS", rows)
    n = 32 * 6 + 3
    for kv in (-1.0, -0.3, None):
        kk = -1.0 if kv is None else kv
        x = _near_boundary(n, d, seed=10 * d + (1 if op == "logmap" else 0), kv=kk)
        k = per_row_k(n, (-1.0, -1.0, -1.0)) if kv is None else torch.tensor(kv)
        if op == "logmap0":
            y = None
            out = gs.logmap0(x, k=k)
            eager = ref.logmap0(x, k=k.float())
            expect = ref.logmap0(x.double(), k=k.double())
            scale_x = None
        else:  # y near the boundary too, x interior or near it: -x + y's norm sweeps the ball
            y = _near_boundary(n, d, seed=10 * d + 7, kv=kk)
            out = gs.logmap(x, y, k=k)
            eager = ref.logmap(x, y, k=k.float())
            expect = ref.logmap(x.double(), y.double(), k=k.double())
            scale_x = x
        ok = torch.isfinite(expect).all(-1)
        e_out = row_rel_err(out, expect, scale_x)[ok]
        e_eager = row_rel_err(eager, expect, scale_x)[ok]
        assert torch.isfinite(out[ok]).all(), (kv,)
        worst = float((e_out - 2 * e_eager).max())
        assert worst <= 2e-6, (kv, worst, float(e_out.max()), float(e_eager.max()))


# ---------------------------------------------------------------- the register pass (AVX2: 8-row groups, D <= 8)
# AVX-512 builds run it on 16-row groups at D <= 16 (tests/test_stereographic_short.py pins that layout); AVX2 builds
# since session 25 on 8-row groups at D <= 8 (csrc/cpu/stereographic_rows_f32_reg.h: block_reg / reg_loop with the
# AVX2 group trait, cols8 / write8) for the ops of the build's table (the layout's register_pass_op_max_d: mobius_add,
# logmap and expmap0, and since session 40 dist; expmap and logmap0 measured slower there: their default stays the
# fused / eight-loop blocks, which the same checks hold to; dist has no fused blocks:
# tests/test_stereographic_short.py's test_f32_register_pass_dist* compare it with its double path).
# Both against the fused blocks (GEOOPS_STEREO_F32_REG=0 with GEOOPS_STEREO_F32_ROWS=2: the same lane math on scratch
# lanes) and the double path (GEOOPS_STEREO_F32_ROWS=0) for the blocks the float path declines.
BLOCK = LAYOUT["block_rows"]  # rows per block of the fp32 short-row forward
FAST_OPS = ("mobius_add", "expmap", "expmap0", "logmap", "logmap0")


def _reg_inputs(op: str, d: int, seed: int):
    """8 blocks and 5 rows (a partial last block): interior rows, rows within 1e-2 .. 1e-6 of the boundary, tiny and
    zero rows, close pairs; x and y (None for the one-input ops) in fp32."""
    n = 8 * BLOCK + 5
    g = torch.Generator().manual_seed(seed)
    x = _near_boundary(n, d, seed)
    if op == "expmap0":
        x = (x.double() * 1.7).float()  # tangent vectors |u| < 1.7
    if op in ("expmap0", "logmap0"):
        return x, None
    if op == "expmap":
        y = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.4 * (1 - (x.double() ** 2).sum(-1, keepdim=True))).float()
    else:
        y = _near_boundary(n, d, seed + 1)
        y[10:14] = x[10:14] + 1e-6 * torch.randn(4, d, generator=g)  # close pairs
    return x, y


def _env(monkeypatch, **kv):
    for name in ("GEOOPS_STEREO_F32_ROWS", "GEOOPS_STEREO_F32_REG", "GEOOPS_STEREO_F32_MOB"):
        monkeypatch.delenv(name, raising=False)
    for name, v in kv.items():
        monkeypatch.setenv(f"GEOOPS_STEREO_{name}", v)


@simd_only
@pytest.mark.parametrize("d", (1, 2, 3, 4, 5, 6, 7, 8))
@pytest.mark.parametrize("op", FAST_OPS)
def test_f32_register_pass_vs_fused(op, d, monkeypatch):
    """The register pass (GEOOPS_STEREO_F32_REG=2: where the build compiles it, the D it declines by default included,
    session 40; where it does not, the default) against the fused blocks (the same lane math on scratch lanes), for
    k = -1, 0, 0.5
    and per-row k (the second 8-row group of a block has other k than the first): the one-input ops (out = a x) equal
    bit for bit; the two-input ops' write a x + b y (one FMA here, GCC's loop there) rounds differently and cancels
    near the boundary, so their largest error vs the fp64 math within 2x the fused path's + 2e-6 (per row they differ
    on rows of hopeless condition: x, y within 2e-7 of the boundary on opposite sides); the partial last block
    equal to the fused path's bit for bit (the register pass hands it over); every row within 2x the eager fp32
    reference's error + 2e-6 of the fp64 math.  (Per-row k within [-1, 0]: the points lie in the unit ball; a positive k beyond the float series declines
    the block.)"""
    x, y = _reg_inputs(op, d, seed=300 + d)
    n = x.shape[0]
    ks = {"-1": torch.tensor(-1.0), "0": torch.tensor(0.0), "0.5": torch.tensor(0.5),
          "per_row": per_row_k(n, (-1.0, -0.3, 0.0, -0.5, -0.7, -1.0, -0.1, -0.9, -0.2))}
    for name, k in ks.items():
        xs, ys = (x, y) if name != "0.5" else ((x.double() * 0.3).float(), None if y is None else (y.double() * 0.3).float())
        _env(monkeypatch, F32_REG="2")
        reg = _call(op, xs, ys, k)
        _env(monkeypatch, F32_ROWS="2", F32_REG="0")
        fused = _call(op, xs, ys, k)
        _env(monkeypatch)
        if ys is None:  # out = a x: the same bits
            assert torch.equal(reg.nan_to_num(7.0), fused.nan_to_num(7.0)), name
        tail = n - n % BLOCK
        assert torch.equal(reg[tail:], fused[tail:]), name
        kf = k.float()
        eager = getattr(ref, op)(xs, k=kf) if ys is None else getattr(ref, op)(xs, ys, k=kf)
        expect = (getattr(ref, op)(xs.double(), k=k.double()) if ys is None
                  else getattr(ref, op)(xs.double(), ys.double(), k=k.double()))
        ok = torch.isfinite(expect).all(-1)
        sx = xs if op in ("mobius_add", "expmap", "logmap") else None
        e = row_rel_err(reg, expect, sx)[ok] - 2 * row_rel_err(eager, expect, sx)[ok]
        assert float(e.max()) <= 2e-6, (name, float(e.max()))
        e_reg, e_fused = float(row_rel_err(reg, expect, sx)[ok].max()), float(row_rel_err(fused, expect, sx)[ok].max())
        assert e_reg <= 2 * e_fused + 2e-6, (name, e_reg, e_fused)


@simd_only
@pytest.mark.parametrize("d", (2, 5, 8))
@pytest.mark.parametrize("op", FAST_OPS + ("dist",))
def test_f32_register_pass_declined_blocks(op, d, monkeypatch):
    """A block with a NaN row, or a row whose float terms leave float's range, is declined as a whole: its rows equal
    the double path's (GEOOPS_STEREO_F32_ROWS=0) bit for bit, the NaN row is NaN, and the blocks around it are the
    register pass's (equal to a call on those rows alone).  GEOOPS_STEREO_F32_REG=2: the register pass also at the D
    it declines by default (session 40)."""
    x, y = _reg_inputs(op, d, seed=400 + d)
    x[BLOCK + 3] = float("nan")
    x[3 * BLOCK + 9] = 3e19  # |x|^2 beyond float's range
    k = torch.tensor(-1.0)
    _env(monkeypatch, F32_REG="2")
    out = _call(op, x, y, k)
    _env(monkeypatch, F32_ROWS="0")
    dbl = _call(op, x, y, k)
    _env(monkeypatch, F32_REG="2")
    assert torch.isnan(out[BLOCK + 3]).all()
    for b in (1, 3):
        rows = slice(b * BLOCK, (b + 1) * BLOCK)
        assert torch.equal(out[rows].nan_to_num(7.0), dbl[rows].nan_to_num(7.0)), b
    alone = _call(op, x[:BLOCK], None if y is None else y[:BLOCK], k)
    assert torch.equal(out[:BLOCK], alone)
    alone = _call(op, x[4 * BLOCK:], None if y is None else y[4 * BLOCK:], k)
    assert torch.equal(out[4 * BLOCK:], alone)
