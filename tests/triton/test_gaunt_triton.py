"""Triton kernels of the Gaunt family (interpreter on CPU, tiny shapes): fused grid route vs the fp64 reference."""
import os

import pytest
import torch

pytest.importorskip("triton")

# conftest.py sets TRITON_INTERPRET before this import; interpreted kernels run on CPU tensors
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"

import geoops  # noqa: E402
from geoops import gaunt as ga  # noqa: E402
from geoops.reference import gaunt as R  # noqa: E402


def _rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("L1,L2,L3", [(1, 2, 2), (2, 1, 3), (0, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grid_kernel_matches_reference(L1, L2, L3, dtype):
    from geoops._backend import resolve

    assert resolve(torch.device(DEVICE), "gaunt") == "triton"
    x1, x2 = _rand(5, (L1 + 1) ** 2, seed=1), _rand(5, (L2 + 1) ** 2, seed=2)  # 5 rows: a partial block
    w1, wo = _rand(L1 + 1, seed=3), _rand(5, L3 + 1, seed=4)
    ref = R.gaunt_tensor_product(x1, x2, L3, weight1=w1, weight_out=wo)
    out = ga.gaunt_tensor_product(x1.to(dtype).to(DEVICE), x2.to(dtype).to(DEVICE), L3, weight1=w1.to(dtype).to(DEVICE),
                                  weight_out=wo.to(dtype).to(DEVICE), route="grid")
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (out.double().cpu() - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


def test_grid_kernel_empty_and_other_routes():
    out = ga.gaunt_tensor_product(torch.empty(0, 4, dtype=torch.float64, device=DEVICE),
                                  torch.empty(0, 4, dtype=torch.float64, device=DEVICE), 2, route="grid")
    assert out.shape == (0, 9)
    x1, x2 = _rand(3, 4, seed=5).to(DEVICE), _rand(3, 9, seed=6).to(DEVICE)
    ref = R.gaunt_tensor_product(x1.cpu(), x2.cpu(), 3)
    for route in ("fft", "direct"):
        assert (ga.gaunt_tensor_product(x1, x2, 3, route=route).cpu() - ref).abs().max() < 1e-12
