"""The weighted midpoint's Triton kernels (kernels/stereographic.py: midpoint_fwd / midpoint_bwd) under
TRITON_INTERPRET=1 (or on a GPU): the sums and their backward against the float64 reference sums
(geoops._ops.stereographic.midpoint_sums_reference and its autograd), and the public function on the triton backend
against geoopt, values and gradients.  float64 |ours - ref| <= 1e-10 (1 + |ref|); float32 inputs are summed in
float64 as well (1e-6)."""
import pytest
import torch

pytest.importorskip("triton")

import geoops.stereographic as gs  # noqa: E402
from geoops._ops import stereographic as _ops  # noqa: E402
from geoops.kernels import stereographic as S  # noqa: E402

from conftest import DEVICE  # noqa: E402


def _close(ours, ref, rtol):
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    if ours.numel():
        err = (ours.double().cpu() - ref.double().cpu()).abs()
        assert (err <= rtol * (1 + ref.double().cpu().abs())).all(), err.max().item()


def _points(G, N, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(G, N, D, generator=g, dtype=torch.float64)
    x = x / (1 + x.norm(dim=-1, keepdim=True)) * 0.9
    w = torch.randn(G, N, generator=g, dtype=torch.float64)
    return x.to(device=DEVICE, dtype=dtype), w.to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G,N,D", [(3, 37, 5), (1, 300, 64), (2, 5, 300), (2, 0, 4), (4, 1, 1)])
@pytest.mark.parametrize("posweight", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_sums_and_backward_match_reference(dtype, G, N, D, posweight, weighted):
    """N = 300 (one group): the points split over S = 3 programs of 128 points (32-point tiles, 4 loop trips; the last
    split 44 points, a partial tile), partials added in order; D = 300: two column blocks (a tail of 44)."""
    x, w = _points(G, N, D, dtype, seed=G * 100 + N + D)
    w = w if weighted else None
    rtol = 1e-10 if dtype == torch.float64 else 1e-6
    for kv in ([-1.0, 0.0, 0.6, 1.5][:G] if G > 1 else [0.6], [-0.8]):
        k = torch.tensor(kv, dtype=torch.float64, device=DEVICE)
        F, L = S.midpoint_fwd(x, w, k, posweight)
        F2, L2 = _ops.midpoint_sums_reference(x, w, k, posweight)
        _close(F, F2, rtol)
        _close(L, L2, rtol)
        gF = torch.randn(G, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        gL = torch.randn(G, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        kr = k if k.numel() == G else k.expand(G).contiguous()
        for mask in (7, 1, 2, 4):
            ours = S.midpoint_bwd(gF, gL, x, w, kr, posweight, mask)
            ref = _ops._MidpointTorch.midpoint_bwd(gF, gL, x, w, kr, posweight, mask)
            for a, b in zip(ours, ref):
                _close(a, b, rtol if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("k", [-1.0, 0.8])
def test_public_function_on_triton_matches_geoopt(k):
    gm = pytest.importorskip("geoopt.manifolds.stereographic.math")
    x, w = _points(4, 6, 3, torch.float64, seed=3)
    x = x / abs(k) ** 0.5
    kt = torch.tensor(k, dtype=torch.float64, device=DEVICE)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ours = gs.weighted_midpoint(xr, wr, k=kt, reducedim=[1], lincomb=True, posweight=True)
    x2, w2 = x.cpu().clone().requires_grad_(), w.cpu().clone().requires_grad_()
    ref = gm.weighted_midpoint(x2, weights=w2, k=kt.cpu(), reducedim=[1], lincomb=True, posweight=True)
    _close(ours, ref, 1e-8)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ga = torch.autograd.grad(ours, (xr, wr), g.to(DEVICE))
    gb = torch.autograd.grad(ref, (x2, w2), g)
    for a, b in zip(ga, gb):
        _close(a, b, 1e-7)
