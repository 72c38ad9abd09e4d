"""A row's result must not depend on the thread count (nor on where the rows' buffers start).

The CPU row ops decide some things per block of rows — the fp32 paths take the float or the double transcendental
for a whole block, the short-row register pass falls back per group of 16 rows — so the blocks must sit at fixed row
indices whatever the thread count: with mixed-sign per-row curvatures (k > 0 rows make their block take the double
call) and NaN rows (the fallback), 1 and 2 threads must give the same bits, forward and backward."""
from __future__ import annotations

import random

import pytest
import torch

import geoops.stereographic as gs
from _stress import assert_bitwise_repeatable

OPS = {
    "mobius_add": lambda x, y, k, r: gs.mobius_add(x, y, k=k),
    "expmap": lambda x, y, k, r: gs.expmap(x, y, k=k),
    "logmap": lambda x, y, k, r: gs.logmap(x, y, k=k),
    "expmap0": lambda x, y, k, r: gs.expmap0(y, k=k),
    "logmap0": lambda x, y, k, r: gs.logmap0(x, k=k),
    "dist": lambda x, y, k, r: gs.dist(x, y, k=k, keepdim=True),
    "dist0": lambda x, y, k, r: gs.dist0(x, k=k, keepdim=True),
    "mobius_scalar_mul": lambda x, y, k, r: gs.mobius_scalar_mul(r, x, k=k),
}


def _inputs(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.where(torch.rand(n, 1, generator=g) < 0.9, -torch.rand(n, 1, generator=g) * 2 - 0.1,
                    torch.rand(n, 1, generator=g))  # ~10 % of rows with k > 0
    rad = torch.rand(n, 1, generator=g) ** 0.25 * 0.999 / k.abs().clamp_min(1.0).sqrt()
    x, y = (torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1) * rad for _ in range(2))
    r = torch.randn(n, 1, generator=g) * 2
    x[torch.randint(0, n, (max(1, n // 500),), generator=g)] = float("nan")
    return [t.to(dtype) for t in (x, y, k, r)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 5, 16, 17, 64])
@pytest.mark.parametrize("op", sorted(OPS))
def test_rows_same_bits_for_1_and_2_threads(op, d, dtype):
    # enough rows that two threads split them (the short rows' chunks are >= 32768 elements) at an odd row
    n = max(1031, 3 * 32768 // d + 7)
    x, y, k, r = _inputs(n, d, dtype, seed=d)
    w = torch.randn(n, 1 if op.startswith("dist") else d, dtype=dtype, generator=torch.Generator().manual_seed(1))

    def run(x, y, k, r):
        x, y, r = (t.detach().requires_grad_() for t in (x, y, r))
        out = OPS[op](x, y, k, r)
        grads = torch.autograd.grad((out * w).nansum(), (x, y, r), allow_unused=True)
        # NaN rows stay NaN; torch.equal would call them unequal, so they are compared as a marker value
        return [t.nan_to_num(nan=1234.5) for t in [out.detach()] + [g for g in grads if g is not None]]

    assert_bitwise_repeatable(run, (x, y, k, r), reps=4, rng=random.Random(d), held=[], tag=(op, d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 10, 33])
def test_rsgd_step_same_bits_for_1_and_2_threads(d, dtype):
    """The fused Riemannian SGD step (stereo_rsgd_step_cpu): short rows go kRsgdBlock rows at a time and the rows
    after a thread's last whole block one at a time (session 20), with the same per-row arithmetic, so a row's bits
    do not depend on where the chunks begin.  Enough rows that two threads split them at a row that is not a
    multiple of the block, some rows that the projection pulls back."""
    n = 3 * (16384 // d) + 5
    g = torch.Generator().manual_seed(d)
    x = (torch.rand(n, d, generator=g) - 0.5) * (2.5 / d ** 0.5)
    grad = torch.randn(n, d, generator=g)
    k = torch.tensor(-1.0, dtype=dtype)

    def run(x, grad):
        out = x.clone()
        gs.riemannian_sgd_step_(out, grad, lr=0.05, k=k)
        return [out]

    assert_bitwise_repeatable(run, (x.to(dtype), grad.to(dtype)), reps=4, rng=random.Random(d), held=[],
                              tag=("rsgd", d))
