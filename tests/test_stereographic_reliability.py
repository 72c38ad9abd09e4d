"""Reliability of the row-wise stereographic ops as users hit them (issue 6, item 9): each test failed before its fix."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import geoops
import geoops.stereographic as gs

try:
    import geoopt.manifolds.stereographic.math as gm
except ImportError:
    gm = None

POINT_OPS = {  # op -> positional arguments built from (x outside the ball, y inside, r)
    "dist": lambda x, y, r: (x, y),
    "dist0": lambda x, y, r: (x,),
    "logmap": lambda x, y, r: (x, y),
    "logmap0": lambda x, y, r: (x,),
    "mobius_add": lambda x, y, r: (x, y),
    "mobius_sub": lambda x, y, r: (x, y),
    "expmap": lambda x, y, r: (x, y),
    "mobius_scalar_mul": lambda x, y, r: (r, x),
    "lambda_x": lambda x, y, r: (x,),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kval", [-1.0, -4.0, -0.25])
@pytest.mark.parametrize("op", [o for o in POINT_OPS if o != "lambda_x"])
def test_points_just_outside_the_ball_give_bounded_values_and_gradients(op, kval, dtype):
    """|x| = 1.0002 radius (bf16 rounding of a point at 0.999 radius): values finite, gradients bounded.

    Before: gradients ~1e15 in dist, dist0, logmap0 (the derivative of the clamp of 1 + k|x|^2)."""
    g = torch.Generator().manual_seed(0)
    radius = 1 / math.sqrt(-kval)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=-1, keepdim=True) * radius * 1.0002).to(dtype).requires_grad_()
    y = (torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.1 * radius).to(dtype).requires_grad_()
    r = torch.full((6, 1), 0.7, dtype=dtype)
    out = getattr(gs, op)(*POINT_OPS[op](x, y, r), k=torch.tensor(kval, dtype=dtype))
    assert torch.isfinite(out).all()
    assert out.abs().max() < 50 * max(1.0, radius)
    gx, gy = torch.autograd.grad(out.sum(), (x, y), allow_unused=True)
    for gr in (gx, gy):
        if gr is not None:
            assert torch.isfinite(gr).all()
            assert gr.abs().max() < 1e4, f"unbounded gradient {gr.abs().max().item():.3g}"


def test_export_dynamic_batch_mobius_add_bias():
    """torch.export with a dynamic batch of mobius_add(x, bias) with a (D,) bias (the commonest layer)."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.randn(8) * 0.01)

        def forward(self, x):
            return gs.mobius_add(x, self.bias, k=torch.tensor(-1.0))

    batch = torch.export.Dim("batch", min=2, max=4096)
    ep = torch.export.export(Layer(), (torch.randn(5, 8) * 0.1,), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(11, 8) * 0.1
    torch.testing.assert_close(ep.module()(x), Layer.forward(ep.module(), x) if False else ep.module()(x))
    mod = Layer()
    mod.bias.data.copy_(dict(ep.named_parameters())["bias"])
    torch.testing.assert_close(ep.module()(x), mod(x))


def test_debug_checks_positive_dim_with_broadcast():
    """GEOOPS_CHECK=1 with a positive dim on broadcast inputs behaves as the unchecked path (no IndexError)."""
    x = torch.randn(3, 4, 5) * 0.1
    bias = torch.randn(5) * 0.1
    expected = gs.mobius_add(x, bias, k=-1.0, dim=2)
    geoops.set_checks(True)
    try:
        torch.testing.assert_close(gs.mobius_add(x, bias, k=-1.0, dim=2), expected)
        torch.testing.assert_close(gs.dist(x, bias, k=-1.0, dim=2), gs.dist(x, bias, k=-1.0, dim=-1))
        with pytest.raises(ValueError, match="outside the ball"):
            gs.mobius_add(x, bias * 100, k=-1.0, dim=2)
    finally:
        geoops.set_checks(False)


@pytest.mark.parametrize("op", ["mobius_add", "dist", "expmap0", "project"])
def test_integer_curvature_tensor_is_promoted(op):
    x = torch.randn(4, 3, dtype=torch.float64) * 0.1
    y = torch.randn(4, 3, dtype=torch.float64) * 0.1
    args = (x, y) if op in ("mobius_add", "dist") else (x,)
    got = getattr(gs, op)(*args, k=torch.tensor(-1))
    exp = getattr(gs, op)(*args, k=torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(got, exp)


def test_compile_dynamic_no_extra_recompile():
    """The first geoops call in a compiled region must not guard on lazily initialised backend state."""
    code = r"""
import torch, torch._dynamo
import geoops.stereographic as gs
counts = {"n": 0}
def backend(gm, inputs):
    counts["n"] += 1
    return gm.forward
fn = torch.compile(lambda x, y: gs.mobius_add(x, y, k=torch.tensor(-1.0)), backend=backend, dynamic=True)
for n in (3, 5, 7, 9):
    fn(torch.randn(n, 4) * 0.1, torch.randn(n, 4) * 0.1)
print("COMPILES", counts["n"])
"""
    env = dict(os.environ)
    env.pop("GEOOPS_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "COMPILES" in res.stdout, res.stderr[-2000:]
    assert res.stdout.split("COMPILES")[1].split()[0] == "1", res.stdout + res.stderr[-2000:]
