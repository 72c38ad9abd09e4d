"""Session 41 (helper "review40"): the Triton cdist forward far out on the sphere (a strict xfail until session 42:
the forward formed den as p_x p_y - kA; helper "tritonpair" forms it from G, as the backward and the C++ kernels).  Interpreter fixtures from
conftest.py (TRITON_INTERPRET=1 on the CPU; the triton backend is forced for every test)."""
import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.stereographic as gs  # noqa: E402
from geoops import _backend  # noqa: E402

needs_cpp = pytest.mark.skipif(_backend.compiled() is None, reason="geoops._C (the C++ CPU kernels) is not built")


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cdist_sphere_far_near_forward(device, dtype):
    """(Failed before session 42: float32 1.5e-5, float64 1.9e-14.)  x at k|x|^2 = 9e4 against y at k|y|^2 = 9e-6 (k = 1): within 2e-6 (float32) / 1e-14 (float64) relative of the
    C++ float64 forward (exact there to ~1e-16 on these pairs: test_stereographic_numhunt's
    test_cdist_sphere_far_near_forward)."""
    g = torch.Generator().manual_seed(2)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    x, y = (unit(8, 5) * 300).to(dtype), (unit(16, 5) * 0.003).to(dtype)
    with geoops.use_backend("cpp"):
        exp = gs.cdist(x.double(), y.double(), k=torch.tensor(1.0, dtype=torch.float64))
    ours = gs.cdist(x.to(device), y.to(device), k=torch.tensor(1.0, dtype=dtype)).cpu().double()
    rel = ((ours - exp).abs() / exp.abs()).max().item()
    assert rel <= (2e-6 if dtype == torch.float32 else 1e-14), rel


def _far_near_keys(dtype):
    """x far out on the sphere (k|x|^2 = 9e4), y near the origin (k|y|^2 = 9e-6), k = 1, and the exact float64 rank
    keys A/den of the rounded points, den = 1 + 2k<x, y> + k^2|x|^2|y|^2 (no cancellation in float64 here)."""
    g = torch.Generator().manual_seed(2)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    x, y = (unit(8, 5) * 300).to(dtype), (unit(16, 5) * 0.003).to(dtype)
    xd, yd = x.double(), y.double()
    den = 1 + 2 * xd @ yd.T + (xd * xd).sum(-1)[:, None] * (yd * yd).sum(-1)[None]
    return x, y, (xd[:, None] - yd[None]).pow(2).sum(-1) / den


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_key_sphere_far_near(device, dtype):
    """The Triton rank keys (knn / pairwise_rank) of far-near pairs on the sphere within 1e-5 / 1e-14 relative of
    the exact A/den (before session 42, with den = p_x p_y - kA: float32 5.2e-2, float64 3.5e-11 off)."""
    from geoops.kernels import stereographic as ks
    x, y, exp = _far_near_keys(dtype)
    key = ks.rank_key(x[None].to(device), y[None].to(device), torch.tensor([1.0], dtype=dtype, device=device))
    rel = ((key[0].cpu().double() - exp).abs() / exp).max().item()
    assert rel <= (1e-5 if dtype == torch.float32 else 1e-14), rel


def test_knn_fused_sphere_far_near_order(device):
    """The fused float32 knn kernel ranks far-near pairs on the sphere by the exact keys: the exact key of its j-th
    pick is the j-th smallest exact key to 1e-5 (before session 42: 6 of 128 picks misordered, keys 5 % off)."""
    from geoops.kernels import stereographic as ks
    x, y, exp = _far_near_keys(torch.float32)
    idx = ks.knn_indices(x[None].to(device), y[None].to(device), torch.tensor([1.0], device=device), 16, False)[0]
    picked = exp.gather(1, idx.cpu())
    want = exp.sort(-1).values
    assert ((picked - want).abs() / want).max().item() <= 1e-5
