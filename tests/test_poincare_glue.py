"""The Poincaré layers' per-call glue -- the batch norm's direct running-mean step, the
image batch norm as one BnLayerFn node, the marked curvature's cached float / float64 k."""
import pytest
import torch

from geoops import poincare as gp
from geoops import stereographic as st
from geoops.nn import PoincareBall, PoincareBatchNorm2d, PoincareConv2d


def _points(n, d, scale, dtype, seed, c):
    g = torch.Generator().manual_seed(seed)
    return gp.expmap0(torch.randn(n, d, generator=g, dtype=dtype) * scale, c=c)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
@pytest.mark.parametrize("scale, t, c", [(0.3, 0.1, 1.0), (0.8, 0.5, 0.7), (0.0, 0.1, 1.3), (0.6, 0.9, 2.0)])
def test_running_mean_step_matches_geodesic(dtype, tol, scale, t, c):
    """_running_mean_step_ (A x + B y from three inner products) vs the stereographic geodesic composition (in
    float64 on the same inputs), points up to ~0.95 of the ball's radius."""
    x, y = _points(2, 7, scale, dtype, 3, c)
    y = y if scale else _points(1, 7, 0.5, dtype, 4, c)[0]  # x at the origin, y not
    want = st.geodesic(t, x.double(), y.double(), k=torch.tensor(-c, dtype=torch.float64)).to(dtype)
    got = x.clone()
    gp._running_mean_step_(got, y, t, c)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _layout(t, fmt):
    """t (B, C, H, W) as a channels-last, a contiguous or a non-contiguous (a channel slice of a wider image)
    tensor of the same values."""
    if fmt == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if fmt == "contiguous":
        return t.contiguous()
    wide = torch.cat((t, t[:, :1]), 1).contiguous()
    return wide[:, :t.shape[1]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("xfmt", ["channels_last", "contiguous", "strided"])
@pytest.mark.parametrize("gfmt", ["channels_last", "contiguous", "strided"])
def test_batchnorm2d_image_node(dtype, xfmt, gfmt):
    """batch_norm2d: a channels-last or contiguous image goes into ONE BnLayerFn node (no permute / view nodes;
    a contiguous image and gradient through the C++ transposes), values and gradients bit-identical to
    batch_norm of its pixel rows (the route a non-contiguous image takes), for each layout of the upstream
    gradient; the output channels last, dx in x's layout (no copy by AccumulateGrad for a contiguous leaf)."""
    c = torch.tensor(0.9, dtype=dtype)
    x0 = _layout(_points(3 * 5 * 4, 6, 0.8, dtype, 1, 0.9).reshape(3, 5, 4, 6).permute(0, 3, 1, 2), xfmt)
    gy = _layout(torch.randn(3, 6, 5, 4, dtype=dtype, generator=torch.Generator().manual_seed(2)), gfmt)
    res = {}
    for image in (False, True):
        x = x0.detach().requires_grad_(True)
        bias = torch.linspace(-0.2, 0.3, 6, dtype=dtype).requires_grad_(True)
        w = torch.tensor(1.3, dtype=dtype, requires_grad=True)
        rm, rv = torch.zeros(6, dtype=dtype), torch.ones((), dtype=dtype)
        if image:
            y = gp.batch_norm2d(x, bias, w, c=c, running_mean=rm, running_var=rv)
            assert type(y.grad_fn).__name__.startswith("BnLayerFn") == (xfmt != "strided")
        else:
            y = gp.batch_norm(x.permute(0, 2, 3, 1).reshape(-1, 6), bias, w, c=c, running_mean=rm,
                              running_var=rv).reshape(3, 5, 4, 6).permute(0, 3, 1, 2)
        assert y.shape == x0.shape and y.is_contiguous(memory_format=torch.channels_last)
        y.backward(gy)
        res[image] = (y.detach(), x.grad, bias.grad, w.grad, rm, rv)
    for a, b in zip(res[True], res[False]):
        assert torch.equal(a, b)
    # dx as the Function returns it (x.grad of a leaf is restrided by AccumulateGrad either way)
    x = x0.detach().requires_grad_(True)
    (dx,) = torch.autograd.grad(gp.batch_norm2d(x, bias, w, c=c), x, gy)
    if xfmt == "contiguous":
        assert dx.is_contiguous()
    elif xfmt == "channels_last":
        assert dx.is_contiguous(memory_format=torch.channels_last)
    y = gp.batch_norm2d(x0.clone(), bias.detach(), w.detach(), c=c)
    y.mul_(2)  # the output may be modified in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 16, 32, 32), (3, 5, 7, 9), (1, 2, 1, 65), (3, 8, 5, 13), (2, 24, 3, 7)])
def test_image_transposes(dtype, shape):
    """The C++ image transposes (NCHW -> channels last and back): the values of torch's copies, both layouts
    round trip exactly (pixel counts that are and are not multiples of the 64-pixel tile; on AVX2 float32 images
    with C a multiple of 8 go by 8 x 8 transposes, the tile's last P % 8 pixels by the loop: C = 8, 16, 24 with
    whole and partial blocks of 8 pixels)."""
    from geoops._backend import compiled

    x = torch.randn(shape, dtype=dtype)
    cl = compiled().poincare_image_channels_last_cpu(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    back = compiled().poincare_image_channels_first_cpu(cl)
    assert back.is_contiguous() and torch.equal(back, x)
    s = x[:, :, :, :1]  # neither layout: torch's copy
    assert torch.equal(compiled().poincare_image_channels_first_cpu(s), s)


def test_marked_curvature_caches_bit_identical():
    """The marked curvature's cached float (BnLayerFn) and float64 k (PoincareConv2dFn's logmap0): the layers
    give bit-identical values and gradients with a fresh unmarked c of the same value."""
    ball = PoincareBall(0.4)
    torch.manual_seed(0)
    conv = PoincareConv2d(4, 6, 3, ball, padding=1, id_init=False)
    bn = PoincareBatchNorm2d(6, ball)
    x0 = _points(2 * 5 * 5, 4, 0.9, torch.float32, 7, 1.0).reshape(2, 5, 5, 4).permute(0, 3, 1, 2)
    res = []
    for marked in (True, False):
        c = ball()
        assert hasattr(c, "_geoops_checked")
        if not marked:
            c = c.clone()
        x = x0.clone().requires_grad_(True)
        t = gp.poincare_conv2d(x, conv.weights, conv.bias, c=c, kernel_size=3, padding=1)
        y = gp.batch_norm2d(t, bn.bias, bn.weight, c=c)
        y.square().sum().backward()
        res.append((y.detach(), x.grad, conv.weights.grad.clone(), bn.bias.grad.clone()))
        conv.weights.grad = bn.bias.grad = None
    for a, b in zip(*res):
        assert torch.equal(a, b)
