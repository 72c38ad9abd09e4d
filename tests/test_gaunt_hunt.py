"""Session 33 user trial (helper "hunt2"): defects of geoops.gaunt found by probing, one test each."""
from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from geoops.gaunt import gaunt_product, gaunt_tensor_product


@pytest.mark.parametrize("route", ["grid", "grid_gemm", "direct", "fft"])
def test_vmap_with_an_unbatched_single_row_input(route):
    """vmap with in_dims=None for one input whose rows are a single row (a 1-D coefficient vector, or (1, n)):
    the fold rule expanded it to a stride-0 (V, n) view and the kernel raised 'a factor must be a contiguous
    (N, n) tensor'."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 9, generator=g, dtype=torch.float64)
    x2 = torch.randn(16, generator=g, dtype=torch.float64)
    want = gaunt_tensor_product(x1, x2, route=route)
    got = vmap(lambda a, b: gaunt_tensor_product(a, b, route=route), in_dims=(0, None))(x1, x2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    got = vmap(lambda a, b: gaunt_tensor_product(a, b, route=route), in_dims=(None, 0))(x2, x1)
    torch.testing.assert_close(got, gaunt_tensor_product(x2, x1, route=route), rtol=0, atol=1e-14)
    got = vmap(lambda a, b: gaunt_tensor_product(a, b, route=route), in_dims=(0, None))(x1[:, None], x2[None])
    torch.testing.assert_close(got, want[:, None], rtol=0, atol=1e-14)
    got = vmap(lambda a, b: gaunt_product([a, b, a], 3, route=route), in_dims=(0, None))(x1, x2)
    torch.testing.assert_close(got, gaunt_product([x1, x2, x1], 3, route=route), rtol=0, atol=1e-14)
    # per-sample gradients with a shared factor
    gx = vmap(grad(lambda a, b: gaunt_tensor_product(a, b, route=route).pow(2).sum()), in_dims=(0, None))(x1, x2)
    xg = x1.clone().requires_grad_()
    (want_gx,) = torch.autograd.grad(gaunt_tensor_product(xg, x2, route=route).pow(2).sum(), xg)
    torch.testing.assert_close(gx, want_gx, rtol=1e-12, atol=1e-12)
