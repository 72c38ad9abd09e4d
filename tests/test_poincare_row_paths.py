"""The batch norm's and the ReLU's explicit SIMD row paths per build ISA (session 28: the AVX2 ones next to AVX-512's):
which exist (geoops._C.poincare_row_paths, from csrc/cpu/poincare_paths.h) and that each gives the bits of the
portable route it replaces -- the batch norm's float tiles (AVX-512 16 rows, AVX2 8 rows, transposed in registers)
vs the gathers (GEOOPS_POINCARE_BN_TILES=0) through the whole module in training and in eval mode, the ReLU's AVX2
8 x 8 transposes and explicit writes vs GCC's loops (GEOOPS_POINCARE_RELU_TR8=0)."""
import pytest
import torch

import geoops
from geoops import poincare as gp
from geoops._backend import compiled
from geoops.nn import PoincareBall, PoincareBatchNorm2d

C = compiled()
pytestmark = pytest.mark.skipif(C is None, reason="needs the compiled extension")


def test_row_paths_match_the_build_isa():
    """AVX-512: tiles of 16 float rows, the ReLU's permutes at D = 3..16 (deinterleave and writes); AVX2: tiles of 8
    rows, the ReLU's transposes at D = 3..16 and explicit writes at D = 8, 16; otherwise none."""
    p = C.poincare_row_paths()
    isa = geoops._backend.build_isa()
    widths = tuple(range(3, 17))
    want = {
        "AVX512": (16, widths, widths),
        "AVX2": (8, widths, (8, 16)),
    }.get(isa, (0, (), ()))
    assert (p["bn_tile_rows"], tuple(p["relu_deint_widths"]), tuple(p["relu_write_widths"])) == want, (isa, p)


def _bn_module(x, gy, training, seed):
    """PoincareBatchNorm2d's forward and backward (x, bias, weight), after one training step (running stats)."""
    torch.manual_seed(seed)
    m = PoincareBatchNorm2d(x.shape[1], PoincareBall(0.9))
    with torch.no_grad():
        m.bias.copy_(torch.randn_like(m.bias) * 0.1)
        m.weight.fill_(0.8)
    m.train()
    m(x)  # the running statistics
    m.train(training)
    xr = x.clone().requires_grad_(True)
    y = m(xr)
    grads = torch.autograd.grad(y, (xr, m.bias, m.weight), gy)
    return [y.detach(), m.running_mean.clone(), m.running_var.clone(), *grads]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("D", [5, 8, 16])
def test_bn_module_tiles_same_bits_as_gathers(monkeypatch, D, training):
    """fp32 images with D = 8 / 16 channels take the tiles in every lane pass (midpoint sums, logmap_m, the row
    op's sums, the backward's passes and contractions; eval: the row op with the running mean) on AVX-512 and AVX2
    builds: the same bits as the gathers for y, the running statistics and every gradient; batch x H x W with whole
    tiles and a tail of rows (< 8); D = 5 runs the gathers either way."""
    for B, H, W in ((2, 4, 4), (3, 5, 7), (4, 13, 11)):
        g = torch.Generator().manual_seed(B * H * W + D)
        x = gp.expmap0(torch.randn(B, D, H, W, generator=g) * 0.4, c=0.9, dim=1)
        gy = torch.randn(B, D, H, W, generator=g)
        monkeypatch.setenv("GEOOPS_POINCARE_BN_TILES", "0")
        want = _bn_module(x, gy, training, D)
        monkeypatch.delenv("GEOOPS_POINCARE_BN_TILES")
        got = _bn_module(x, gy, training, D)
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), (B, H, W, i, float((a - b).abs().max()))


@pytest.mark.parametrize("D", list(range(1, 17)))
def test_relu_transposes_same_bits_as_loops(monkeypatch, D):
    """fp32 rows of D = 1..16 on the float row lanes (whole 32-row blocks and a tail): the AVX2 build's transposes
    (D = 3..16, masked loads past D) and explicit writes (D = 8, 16) vs GCC's loops (GEOOPS_POINCARE_RELU_TR8=0):
    the same bits for y, dx and dc (exact moves, the same expressions).  Other builds: the knob changes nothing."""
    g = torch.Generator().manual_seed(D)
    N = 32 * 5 + 7
    v = torch.randn(N, D, generator=g)
    x = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30) * torch.rand(N, 1, generator=g) * 0.95
    gy = torch.randn(N, D, generator=g)

    def run():
        xr = x.clone().requires_grad_(True)
        cr = torch.tensor(0.8, requires_grad=True)
        y = gp.poincare_relu(xr, c=cr)
        return [y.detach(), *torch.autograd.grad(y, (xr, cr), gy)]

    monkeypatch.setenv("GEOOPS_POINCARE_RELU_TR8", "0")
    want = run()
    monkeypatch.delenv("GEOOPS_POINCARE_RELU_TR8")
    got = run()
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), (i, float((a - b).abs().max()))
