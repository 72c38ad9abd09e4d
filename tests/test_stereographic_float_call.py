"""The forward's tanc / atanc calls in float lanes for float inputs (csrc/cpu/stereographic_lanes.h,
block_fwd_float_call), mobius_scalar_mul's two chained calls included (atanc of k|x|^2, then tanc of
k r^2 |x|^2 atanc^2), at any D the float short-row path does not take (all D for mobius_scalar_mul).

Against the fp64 reference on the same fp32 inputs, and against the double calls (GEOOPS_STEREO_FLOAT_CALL=0):
rows near the boundary, tiny and zero norms, k < 0, k = 0, k > 0 (double calls: the block declines), NaN rows,
partial blocks, D not a multiple of 16, r small / large / negative / zero.
"""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

DIMS = (5, 17, 31, 64, 100)


def _rows(n: int, d: int, seed: int, max_norm: float) -> torch.Tensor:
    """fp64 rows: random directions, norms in [0, max_norm) with special rows (boundary, tiny, zero)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_norm
    r[1::9] = max_norm * (1 - 1e-3)
    r[2::9] = max_norm * (1 - 1e-5)
    r[4::13] = 1e-4
    r[6::17] = 1e-19
    r[8::23] = 0.0
    return v * r


def _scalars(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = 0.5 + 1.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    r[3::11] = 1e-5
    r[5::11] = 40.0
    r[7::11] = -1.7
    r[9::19] = 0.0
    return r


def _rel_row_err(out: torch.Tensor, expect: torch.Tensor) -> torch.Tensor:
    """|out - expect| / |expect| per row (rows of zero output: absolute)."""
    return (out.double() - expect).norm(dim=-1) / expect.norm(dim=-1).clamp_min(1e-30)


def _both(r, x, k, monkeypatch):
    monkeypatch.setenv("GEOOPS_STEREO_FLOAT_CALL", "0")
    old = gs.mobius_scalar_mul(r, x, k=k)
    monkeypatch.delenv("GEOOPS_STEREO_FLOAT_CALL")
    new = gs.mobius_scalar_mul(r, x, k=k)
    return new, old


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kv", (-1.0, -0.3))
def test_scalar_mul_float_call_accuracy(d, kv, monkeypatch):
    """k < 0: the float calls. Each row within 3e-7 of the fp64 reference (relative; measured <= 1.7e-7, the
    double calls <= 7.5e-8), and no worse than the double calls' error + 2e-7; 16 * 5 + 7 rows (a partial
    block)."""
    n = 16 * 5 + 7
    k = torch.tensor(kv)
    x = (_rows(n, d, seed=d, max_norm=1.0 / abs(kv) ** 0.5)).float()
    r = _scalars(n, seed=d + 1).float()
    expect = ref.mobius_scalar_mul(r.double(), x.double(), k=k.double())
    new, old = _both(r, x, k, monkeypatch)
    e_new, e_old = _rel_row_err(new, expect), _rel_row_err(old, expect)
    assert float(e_new.max()) < 3e-7, (float(e_new.max()), int(e_new.argmax()))
    assert bool((e_new <= e_old + 2e-7).all()), float((e_new - e_old).max())
    assert torch.equal(new[x.norm(dim=-1) == 0], x[x.norm(dim=-1) == 0])  # zero rows stay zero


@pytest.mark.parametrize("d", (17, 64))
@pytest.mark.parametrize("kv", (0.0, 0.5))
def test_scalar_mul_float_call_k_nonneg(d, kv, monkeypatch):
    """k = 0 (z = 0: the series in float) and k > 0 (tan: the block keeps the double calls, bit for bit)."""
    n = 16 * 3 + 5
    k = torch.tensor(kv)
    x = _rows(n, d, seed=3, max_norm=0.8).float()
    r = (0.5 + torch.rand(n, 1, generator=torch.Generator().manual_seed(4))).float()
    expect = ref.mobius_scalar_mul(r.double(), x.double(), k=k.double())
    new, old = _both(r, x, k, monkeypatch)
    assert float(_rel_row_err(new, expect).max()) < 3e-7
    if kv > 0:
        assert torch.equal(new, old)


def test_scalar_mul_float_call_mixed_k_nan_and_overflow(monkeypatch):
    """Per-row k of both signs (a block with a k > 0 lane whose z >= the series cut declines to the double calls,
    bit for bit), a NaN row stays NaN in its row, an r whose z2 exceeds float's range (its block's second call
    declines to double) stays accurate.  Blocks of 32 rows at D = 48."""
    n, d = 16 * 4 + 3, 48
    x = _rows(n, d, seed=7, max_norm=0.9).float()
    r = _scalars(n, seed=8).float()
    k = torch.full((n, 1), -1.0)
    k[40:44] = 0.2
    x[40:44] *= 0.8 / x[40:44].norm(dim=-1, keepdim=True)  # z1 = 0.128 > the float series cut
    x[10, 7] = float("nan")
    r[65] = 1e20  # z2 = k r^2 |x|^2 a1^2 ~ -1e40: beyond float
    expect = ref.mobius_scalar_mul(r.double(), x.double(), k=k.double())
    new, old = _both(r, x, k, monkeypatch)
    rows_nan = new.isnan().any(-1)
    assert rows_nan.nonzero().flatten().tolist() == [10]
    ok = ~rows_nan
    assert float(_rel_row_err(new[ok], expect[ok]).max()) < 3e-7
    assert torch.equal(new[32:64], old[32:64])  # the block with k > 0 lanes
    # (row 65's block takes the closed form, which has no z2: see test_scalar_mul_closed_form)


# ---------------------------------------------------------------- the closed form
# mobius_scalar_mul's closed form (block_fwd_msm_closed: tanh(|r| artanh(s)) / s with r's sign, one log1p and one
# expm1 in float).  A block declines it on a row of 0 < k|x|^2 < 1e-30 (the 1e-19 rows of _rows), so these inputs
# replace those rows by 1e-6 ones; blocks of rows near the boundary, tiny / zero rows, r = 1e-5, 40, -1.7, 0, 1e20.
@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("one_pass", ("pass", "block"))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kv", (-1.0, -0.3))
def test_scalar_mul_closed_form(d, kv, one_pass, threads, monkeypatch):
    """Each row within 3e-7 of the fp64 reference and of the double calls' error + 2e-7; zero rows stay zero;
    the one pass (its first 16 lanes' coefficients inside the sums) and the blocked loop alike, 1 and 2 threads."""
    monkeypatch.setenv("GEOOPS_STEREO_LONG_LOOP", one_pass)
    n = 16 * 9 + 7
    k = torch.tensor(kv)
    x = _rows(n, d, seed=d + 40, max_norm=1.0 / abs(kv) ** 0.5)
    x[6::17] *= 1e13  # the 1e-19 rows -> 1e-6
    x = x.float()
    r = _scalars(n, seed=d + 41)
    r[20] = 1e20
    r = r.float()
    expect = ref.mobius_scalar_mul(r.double(), x.double(), k=k.double())
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        new, old = _both(r, x, k, monkeypatch)
    finally:
        torch.set_num_threads(prev)
    e_new, e_old = _rel_row_err(new, expect), _rel_row_err(old, expect)
    assert float(e_new.max()) < 3e-7, (float(e_new.max()), int(e_new.argmax()))
    assert bool((e_new <= e_old + 2e-7).all()), float((e_new - e_old).max())
    assert torch.equal(new[x.norm(dim=-1) == 0], x[x.norm(dim=-1) == 0])


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_scalar_mul_float_call_half(dtype, monkeypatch):
    """fp16 / bf16 rows take the same float calls: within one rounding of the dtype of the double calls'
    result (tiny outputs, r = 1e-5, are subnormal in fp16 on both paths)."""
    n, d = 16 * 2 + 9, 33
    x = _rows(n, d, seed=9, max_norm=0.95).to(dtype)
    r = _scalars(n, seed=10)
    r[5::11] = 3.0
    r = r.to(dtype)
    k = torch.tensor(-1.0)
    new, old = _both(r, x, k, monkeypatch)
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(new, old, rtol=tol, atol=1e-7)


SINGLE_CALL_OPS = ("expmap", "expmap0", "logmap", "logmap0", "dist", "dist0")


@pytest.mark.parametrize("d", (17, 64))
@pytest.mark.parametrize("op", SINGLE_CALL_OPS)
def test_single_call_float(op, d, monkeypatch):
    """The one-call ops' float call (default) against the double call (GEOOPS_STEREO_FLOAT_CALL=0), on the fp64
    reference of the same fp32 inputs: rows near the boundary (|x| = 1 - 1e-3, 1 - 1e-5), tiny and zero rows, a
    partial block, k = -1.  Row error relative to max(|out|, |x| / 10) (expmap's and logmap's writes a x + b y
    cancel in float on both paths)."""
    n = 16 * 5 + 7
    k = torch.tensor(-1.0)
    x = _rows(n, d, seed=d + 20, max_norm=1.5 if op == "expmap0" else 1.0).float()
    args = [x]
    if op in ("expmap", "logmap", "dist"):
        y = _rows(n, d, seed=d + 21, max_norm=1.5 if op == "expmap" else 1.0).float()
        args.append(y)
    fn = getattr(gs, op)
    expect = getattr(ref, op)(*(a.double() for a in args), k=k.double())
    monkeypatch.setenv("GEOOPS_STEREO_FLOAT_CALL", "0")
    old = fn(*args, k=k)
    monkeypatch.delenv("GEOOPS_STEREO_FLOAT_CALL")
    new = fn(*args, k=k)

    def err(out):
        if out.dim() == 1:
            return (out.double() - expect).abs() / expect.abs().clamp_min(1e-6)
        scale = torch.maximum(expect.norm(dim=-1), x.double().norm(dim=-1) * 0.1).clamp_min(1e-30)
        return (out.double() - expect).norm(dim=-1) / scale

    e_new, e_old = err(new), err(old)
    assert float(e_new.max()) < 3e-7, (float(e_new.max()), float(e_old.max()))
    assert bool((e_new <= e_old + 2e-7).all()), float((e_new - e_old).max())
