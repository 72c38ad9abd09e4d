"""geoops.nn.poincare modules vs HypLL's layers (same weights) and the fp64 reference; patch_hypll()."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import geoops
import geoops.compat as compat
import geoops.poincare as gp
from geoops.nn import poincare as gnn
from geoops.reference import poincare as ref

hypll = pytest.importorskip("hypll")
import hypll.nn as hnn  # noqa: E402
from hypll.manifolds.poincare_ball import Curvature, PoincareBall as HBall  # noqa: E402
from hypll.tensors import ManifoldTensor, TangentTensor  # noqa: E402

from _compare import assert_2x_rule, assert_close_to_largest  # noqa: E402
from _poincare_rows import bn_rows  # noqa: E402
from _stress import assert_bitwise_repeatable, heap_churn, num_threads, offset_copies  # noqa: E402

F32 = dict(rtol=5e-4, atol=5e-5)


def _img(B=2, C=3, H=6, W=5, c=1.0, dtype=torch.float32, seed=0, radius=0.8):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    n = v.norm(dim=1, keepdim=True)
    r = torch.rand(n.shape, generator=g, dtype=torch.float64) * radius
    return (v / n * r / math.sqrt(c)).to(dtype)


def _balls(value=1.0):
    hb = HBall(c=Curvature(value))
    gb = gnn.PoincareBall(value)
    return hb, gb, float(gb())


def _mt(x, hb, man_dim=1):
    return ManifoldTensor(data=x, manifold=hb, man_dim=man_dim)


def test_linear_matches_hlinear():
    hb, gb, c = _balls(0.5)
    torch.manual_seed(0)
    h = hnn.HLinear(12, 7, hb)
    ours = gnn.PoincareLinear(12, 7, gb)
    with torch.no_grad():
        h.z.tensor.normal_(0, 0.3)
        h.bias.normal_(0, 0.2)
        ours.z.copy_(h.z.tensor)
        ours.bias.copy_(h.bias)
    x = gp.expmap0(torch.randn(9, 12) * 0.5, c=c)
    yh = h(_mt(x, hb, -1)).tensor
    yo = ours(x)
    torch.testing.assert_close(yo, yh, **F32)


def test_linear_identity_init():
    """in <= out: z = I/2 and bias 0 make the layer the identity on the first `in` outputs (Poincaré ResNet)."""
    _, gb, c = _balls(1.0)
    lin = gnn.PoincareLinear(6, 8, gb)
    x = gp.expmap0(torch.randn(5, 6, dtype=torch.float64) * 0.3, c=c)
    y = gp.poincare_fc(x, lin.z.double(), lin.bias.double(), c=torch.tensor(c, dtype=torch.float64))
    torch.testing.assert_close(y[:, :6], x, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y[:, 6:], torch.zeros(5, 2, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cfg", [dict(k=3, s=1, p=1, cin=3, cout=4), dict(k=2, s=2, p=0, cin=2, cout=5),
                                 dict(k=1, s=1, p=0, cin=4, cout=3), dict(k=3, s=2, p=2, cin=2, cout=3)])
def test_conv2d_matches_hconvolution(cfg):
    hb, gb, c = _balls(1.0)
    torch.manual_seed(1)
    h = hnn.HConvolution2d(cfg["cin"], cfg["cout"], cfg["k"], hb, stride=cfg["s"], padding=cfg["p"])
    ours = gnn.PoincareConv2d(cfg["cin"], cfg["cout"], cfg["k"], gb, stride=cfg["s"], padding=cfg["p"])
    with torch.no_grad():
        h.bias.normal_(0, 0.2)
        ours.weights.copy_(h.weights.tensor)
        ours.bias.copy_(h.bias)
    x = _img(2, cfg["cin"], 7, 6, c=c)
    xh = x.clone().requires_grad_(True)
    xo = x.clone().requires_grad_(True)
    yh = h(_mt(xh, hb)).tensor
    yo = ours(xo)
    torch.testing.assert_close(yo, yh, **F32)
    g = torch.randn_like(yh)
    gh = torch.autograd.grad(yh, (xh, h.weights.tensor, h.bias), g)
    go = torch.autograd.grad(yo, (xo, ours.weights, ours.bias), g)
    for a, b in zip(go, gh):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("pad", [1, 2])  # |u|^2 as a sum pooling (padding <= kernel/2), else the box convolution
def test_conv2d_fp64_reference_and_gradcheck(pad):
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = _img(1, 2, 4, 4, c=0.7, dtype=torch.float64).requires_grad_(True)
    z = (torch.randn(18, 3, dtype=torch.float64) * 0.3).requires_grad_(True)
    b = (torch.randn(3, dtype=torch.float64) * 0.1).requires_grad_(True)
    ours = gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=pad)
    truth = ref.poincare_conv2d(x, z, b, c, 3, padding=pad)
    torch.testing.assert_close(ours, truth, rtol=1e-9, atol=1e-11)
    assert torch.autograd.gradcheck(lambda x, z, b, c: gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=pad),
                                    (x, z, b, c), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_conv2d_identity_init():
    """Poincaré ResNet's identity init: a 1x1 convolution is the identity; a 3x3 one keeps every pixel's
    direction (its centre tap is I/2, the neighbours only shrink the radius through the patch's conformal factor)."""
    _, gb, c = _balls(1.0)
    ct = torch.tensor(c, dtype=torch.float64)
    x = _img(2, 4, 5, 5, c=c, dtype=torch.float64)
    one = gnn.PoincareConv2d(4, 4, 1, gb)
    y1 = gp.poincare_conv2d(x, one.weights.double(), one.bias.double(), c=ct, kernel_size=1)
    torch.testing.assert_close(y1, x, rtol=1e-9, atol=1e-10)
    three = gnn.PoincareConv2d(4, 6, 3, gb, padding=1)
    y3 = gp.poincare_conv2d(x, three.weights.double(), three.bias.double(), c=ct, kernel_size=3, padding=1)
    cos = torch.nn.functional.cosine_similarity(y3[:, :4], x, dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-9)
    assert y3[:, 4:].abs().max() < 1e-12


def test_relu_pool_flatten_match_hypll():
    hb, gb, c = _balls(1.0)
    x = _img(2, 3, 6, 6, c=c)
    torch.testing.assert_close(gnn.PoincareReLU(gb)(x), hnn.HReLU(hb)(_mt(x, hb)).tensor, **F32)
    torch.testing.assert_close(gnn.PoincareMaxPool2d(2, gb)(x), hnn.HMaxPool2d(2, hb)(_mt(x, hb)).tensor, **F32)
    torch.testing.assert_close(gnn.PoincareAvgPool2d(2, gb)(x),
                               hnn.HAvgPool2d(2, hb, use_midpoint=True)(_mt(x, hb)).tensor, **F32)
    torch.testing.assert_close(gnn.PoincareFlatten(gb)(x), hnn.HFlatten()(_mt(x, hb)).tensor, **F32)


@pytest.mark.parametrize("two_d", [False, True])
def test_batchnorm_matches_hypll_midpoint(two_d):
    hb, gb, c = _balls(1.0)
    if two_d:
        h = hnn.HBatchNorm2d(4, hb, use_midpoint=True)
        ours = gnn.PoincareBatchNorm2d(4, gb)
        x = _img(3, 4, 5, 5, c=c)
        hn = h.norm
    else:
        h = hnn.HBatchNorm(4, hb, use_midpoint=True)
        ours = gnn.PoincareBatchNorm(4, gb)
        x = _img(30, 4, 1, 1, c=c)[:, :, 0, 0]
        hn = h
    with torch.no_grad():
        hn.bias.normal_(0, 0.3)
        hn.weight.fill_(0.7)
        ours.bias.copy_(hn.bias)
        ours.weight.copy_(hn.weight)
    xh, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yh = h(_mt(xh, hb, 1)).tensor
    yo = ours(xo)
    torch.testing.assert_close(yo, yh, **F32)
    g = torch.randn_like(yh)
    gh = torch.autograd.grad(yh, (xh, hn.bias, hn.weight), g)
    go = torch.autograd.grad(yo, (xo, ours.bias, ours.weight), g)
    for a, b in zip(go, gh):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


def test_batchnorm_running_stats_and_eval():
    _, gb, c = _balls(1.0)
    bn = gnn.PoincareBatchNorm(3, gb, momentum=0.5)
    x = gp.expmap0(torch.randn(64, 3, dtype=torch.float64) * 0.4 + 0.2, c=c)
    bn = bn.double()
    for _ in range(30):
        bn(x)
    ct = torch.tensor(c, dtype=torch.float64)
    m = ref.midpoint(x, ct)
    torch.testing.assert_close(bn.running_mean, m, rtol=1e-6, atol=1e-7)
    var = ref.frechet_variance(x, m, ct) * 64 / 63
    torch.testing.assert_close(bn.running_var, var, rtol=1e-6, atol=1e-7)
    bn.eval()
    y_eval = bn(x)
    bn.train()
    y_train = bn(x)
    # eval with converged statistics: the unbiased variance instead of the biased one
    scale = math.sqrt(64 / 63)
    torch.testing.assert_close(gp.logmap0(y_eval, c=c), gp.logmap0(y_train, c=c) / scale, rtol=1e-6, atol=1e-7)
    # eval mode does not touch the buffers and depends on no other row
    rm = bn.running_mean.clone()
    bn.eval()
    torch.testing.assert_close(bn(x[:5]), bn(x)[:5], rtol=1e-12, atol=1e-12)
    assert torch.equal(bn.running_mean, rm)


def test_batchnorm_fp64_reference():
    c = torch.tensor(0.9, dtype=torch.float64)
    x = gp.expmap0(torch.randn(20, 5, dtype=torch.float64) * 0.5, c=c)
    bias = torch.randn(5, dtype=torch.float64) * 0.2
    w = torch.tensor(0.8, dtype=torch.float64)
    ours = gp.batch_norm(x, bias, w, c=c)
    truth, _, _ = ref.batch_norm(x, bias, w, c)
    torch.testing.assert_close(ours, truth, rtol=1e-9, atol=1e-11)


def test_mobius_linear_and_blockdiag():
    _, gb, c = _balls(1.0)
    ct = torch.tensor(c, dtype=torch.float64)
    x = gp.expmap0(torch.randn(10, 8, dtype=torch.float64) * 0.5, c=c)
    w = torch.randn(6, 8, dtype=torch.float64) * 0.3
    b = gp.expmap0(torch.randn(6, dtype=torch.float64) * 0.1, c=c)
    torch.testing.assert_close(gp.mobius_linear(x, w, b, c=ct), ref.mobius_linear(x, w, b, ct), rtol=1e-9, atol=1e-10)
    blocks = torch.randn(2, 3, 4, dtype=torch.float64) * 0.3
    dense = torch.block_diag(*blocks)
    torch.testing.assert_close(gp.mobius_linear(x, blocks, b, c=ct, blocks=2), ref.mobius_linear(x, dense, b, ct),
                               rtol=1e-9, atol=1e-10)
    layer = gnn.MobiusLinear(8, 6, gb, blocks=2)
    assert layer.weight.shape == (2, 3, 4)
    assert layer(x.float()).shape == (10, 6)


def test_mlr_and_embedding():
    _, gb, c = _balls(1.0)
    head = gnn.PoincareMLR(5, 3, gb)
    x = gp.expmap0(torch.randn(4, 5) * 0.5, c=c)
    logits = head(x)
    want = ref.hyperplane_dists(x, head.z, head.bias, gb())
    torch.testing.assert_close(logits, want)
    emb = gnn.PoincareEmbedding(10, 4, gb)
    assert emb(torch.tensor([1, 3])).shape == (2, 4)
    assert (emb.weight.norm(dim=-1) < 1 / math.sqrt(c)).all()


def test_bad_input_names_the_argument():
    _, gb, _ = _balls(1.0)
    with pytest.raises(ValueError, match="in_channels = 3"):
        gnn.PoincareConv2d(3, 4, 3, gb)(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="features = 4"):
        gnn.PoincareBatchNorm2d(4, gb)(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="in_features=6"):
        gnn.PoincareLinear(6, 2, gb)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="z must have shape"):
        gp.poincare_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(17, 3), None, c=1.0, kernel_size=3)
    with pytest.raises(TypeError, match="kernel_size"):
        gp.poincare_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(18, 3), None, c=1.0, kernel_size=3.0)


@pytest.mark.parametrize("fused", ["1", "0"])
def test_bad_geometry_and_parameters_raise_before_kernels(fused, monkeypatch):
    """Every error names its argument and raises before a kernel runs (these used to surface as a ZeroDivisionError,
    'math domain error', a C++ 'bad geometry', an AttributeError or a wrongly named argument -- or not at all)."""
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", fused)
    img = _img(1, 2, 4, 4)
    z = torch.zeros(18, 3)
    conv = lambda x=img, z=z, **kw: gp.poincare_conv2d(x, z, None, c=1.0, **{"kernel_size": 3, **kw})  # noqa: E731
    for kw, exc, msg in [(dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
                         (dict(stride=0), ValueError, "stride must be >= 1"),
                         (dict(stride=(1, -1)), ValueError, "stride must be >= 1"),
                         (dict(padding=-1), ValueError, "padding must be >= 0"),
                         (dict(padding=(True, 0)), TypeError, "padding must be an int"),
                         (dict(z=torch.zeros(18, 3, dtype=torch.long)), TypeError, "z must be a floating-point"),
                         (dict(z=torch.zeros(18, 0)), ValueError, "out_channels >= 1"),
                         (dict(x=img[:, :0], z=torch.zeros(0, 3)), ValueError, "at least one channel"),
                         (dict(kernel_size=5, z=torch.zeros(50, 3)), ValueError, "larger than x's padded image")]:
        with pytest.raises(exc, match=msg):
            conv(**kw)
    for f, msg in [(lambda: gp.poincare_unfold(img, c=1.0, kernel_size=2, stride=0), "stride must be >= 1"),
                   (lambda: gp.avg_pool2d(img, c=1.0, kernel_size=0), "kernel_size must be >= 1"),
                   (lambda: gp.avg_pool2d(img, c=1.0, kernel_size=2, padding=-1), "padding must be >= 0")]:
        with pytest.raises(ValueError, match=msg):
            f()
    x = _img(1, 3, 1, 4).reshape(3, 4).t().contiguous()  # (4, 3) rows
    with pytest.raises(IndexError, match="dim=3 is out of range"):
        gp.poincare_relu(x, c=1.0, dim=3)
    with pytest.raises(IndexError, match="dim=-3 is out of range"):
        gp.expmap0(x, c=1.0, dim=-3)
    with pytest.raises(IndexError, match="man_dim=4"):
        gp.flatten(img, c=1.0, man_dim=4)
    with pytest.raises(IndexError, match="start_dim=5"):
        gp.flatten(img, c=1.0, start_dim=5)
    w1 = torch.tensor(1.0)
    bn = lambda **kw: gp.batch_norm(x, **{"bias": torch.zeros(3), "weight": w1, "c": 1.0, **kw})  # noqa: E731
    for kw, exc, msg in [(dict(bias=torch.zeros(3, dtype=torch.long)), TypeError, "bias must be a floating-point"),
                         (dict(weight=1.0), TypeError, "weight must be a torch.Tensor"),
                         (dict(weight=torch.ones(2)), ValueError, "weight must be a 1-element"),
                         (dict(running_mean=torch.zeros(3)), ValueError, "running_mean and running_var"),
                         (dict(running_mean=torch.zeros(2), running_var=torch.ones(())), ValueError,
                          r"running_mean must have shape \(3,\)"),
                         (dict(running_mean=torch.zeros(2), running_var=torch.ones(()), training=False), ValueError,
                          r"running_mean must have shape \(3,\)"),
                         (dict(running_mean=torch.zeros(3), running_var=torch.ones(2)), ValueError,
                          "running_var must be a 1-element")]:
        with pytest.raises(exc, match=msg):
            bn(**kw)
    cl = _img(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="weight must be a 1-element"):
        gp.batch_norm2d(cl, torch.zeros(3), torch.ones(2), c=1.0)
    with pytest.raises(ValueError, match=r"weight \(out_features, in_features\) = \(4, 2\) expects in_features=2"):
        gp.mobius_linear(x, torch.zeros(4, 2), c=1.0)
    with pytest.raises(ValueError, match=r"bias must be a point of the ball of shape \(4,\)"):
        gp.mobius_linear(x, torch.zeros(4, 3), torch.zeros(3), c=1.0)
    with pytest.raises(ValueError, match=r"bias must be a point of the ball of shape \(4,\)"):
        gp.mobius_linear(torch.zeros(5, 4), torch.zeros(2, 2, 2), torch.zeros(3), c=1.0, blocks=2)


def test_empty_manifold_or_batch_dims():
    """Size 0 along the manifold or batch dimension: empty results of the right shape (these used to raise from a
    reshape(-1, 0) / reshape(0, L, -1) of an empty tensor, or 'math domain error' from the beta factor)."""
    x = _img(2, 3, 4, 4)
    assert gp.poincare_relu(torch.zeros(5, 0), c=1.0).shape == (5, 0)
    assert gp.expmap0(torch.zeros(2, 0, 3), c=1.0, dim=1).shape == (2, 0, 3)
    assert gp.avg_pool2d(x[:0], c=1.0, kernel_size=2).shape == (0, 3, 2, 2)
    assert gp.poincare_unfold(x[:0], c=1.0, kernel_size=2).shape == (0, 12, 9)
    assert gp.flatten(x[:, :0], c=1.0).shape == (2, 0)
    assert gp.flatten(x[:, :, :0], c=1.0).shape == (2, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mlr_half_types_computed_in_float32(dtype):
    """mlr / hyperplane_dists of half inputs: computed in float32 and returned in their dtype, as every other op of the
    family (they ran the composition in half precision: ~5x the error of the float32 result's rounding)."""
    g = torch.Generator().manual_seed(0)
    x = gp.expmap0(torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.6, c=0.9).to(dtype)
    z = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    b = (torch.randn(4, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    y = gp.mlr(x, z, b, c=0.9)
    assert y.dtype == dtype
    assert torch.equal(y, gp.mlr(x.float(), z.float(), b.float(), c=0.9).to(dtype))
    truth = ref.mlr(x.double(), z.double(), b.double(), torch.tensor(0.9, dtype=torch.float64))
    assert_2x_rule(y, ref.mlr(x, z, b, torch.tensor(0.9, dtype=dtype)).float().to(dtype), truth,
                   1e-3 if dtype == torch.float16 else 8e-3)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(gp.mlr(xg, z, b, c=0.9).sum(), xg)
    assert gx.dtype == dtype


@pytest.mark.parametrize("blocks", [None, 2])
def test_mobius_linear_bias_along_dim(blocks):
    """mobius_linear with the points along a dim other than the last: the bias goes along that dim (it was added
    along the last one: an error, or -- when that dim had out_features entries -- a silently wrong result)."""
    c = torch.tensor(0.8, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = gp.expmap0(torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5, c=c)  # 4 points = out_features
    W = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3
    b = gp.expmap0(torch.randn(4, generator=g, dtype=torch.float64) * 0.2, c=c)
    w = W if blocks is None else torch.stack([W[:2, :3], W[2:, 3:]])
    dense = W if blocks is None else torch.block_diag(W[:2, :3], W[2:, 3:])
    want = ref.mobius_linear(x, dense, b, c)
    torch.testing.assert_close(gp.mobius_linear(x, w, b, c=c, blocks=blocks), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gp.mobius_linear(x.t(), w, b, c=c, dim=0, blocks=blocks).t(), want, rtol=1e-10,
                               atol=1e-12)
    x3 = x.t().unsqueeze(0).expand(2, 6, 4)  # (2, 6, 4), points along dim 1
    torch.testing.assert_close(gp.mobius_linear(x3, w, b, c=c, dim=1, blocks=blocks),
                               want.t().unsqueeze(0).expand(2, 4, 4), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg", [dict(kernel_size=2, dilation=2), dict(kernel_size=3, stride=2, ceil_mode=True),
                                 dict(kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(1, 2), ceil_mode=True)])
def test_max_pool2d_dilation_ceil_mode_match_hypll(cfg):
    """HMaxPool2d's dilation and ceil_mode (they were missing: PoincareMaxPool2d could not express HypLL's layer)."""
    hb, gb, c = _balls(0.7)
    x = _img(2, 3, 7, 8, c=c, seed=6)
    xh, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yh = hnn.HMaxPool2d(manifold=hb, **cfg)(_mt(xh, hb)).tensor
    yo = gnn.PoincareMaxPool2d(ball=gb, **cfg)(xo)
    torch.testing.assert_close(yo, yh, **F32)
    g = torch.randn_like(yh)
    torch.testing.assert_close(torch.autograd.grad(yo, xo, g)[0], torch.autograd.grad(yh, xh, g)[0], **F32)


def test_debug_checks_cover_the_layers():
    """GEOOPS_CHECK (geoops.set_checks(True)): points outside the ball and non-finite values raise before any kernel
    in every public op of the family, the fused eager paths and a warm convolution cache included (the one-Function
    paths skipped the checks: garbage outputs from points outside the ball); valid inputs pass; off by default."""
    x = _img(2, 3, 5, 5, c=1.0, seed=3)
    bad = x.clone()
    bad[0, :, 1, 1] = torch.tensor([0.9, 0.9, 0.0])
    nan = x.clone()
    nan[1, 0, 0, 0] = float("nan")
    rows = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    z, zc = torch.randn(3, 4) * 0.3, torch.randn(27, 4) * 0.3
    conv = gnn.PoincareConv2d(3, 4, 3, gnn.PoincareBall(0.5414), padding=1)  # c = softplus(0.5414) = 1.0
    ops = {
        "poincare_fc": lambda t: gp.poincare_fc(rows(t), z, c=1.0),
        "hyperplane_dists": lambda t: gp.mlr(rows(t), z, c=1.0),
        "poincare_relu": lambda t: gp.poincare_relu(cl(t), c=1.0, dim=1),
        "poincare_conv2d": lambda t: gp.poincare_conv2d(cl(t), zc, c=1.0, kernel_size=3, padding=1),
        "conv module": lambda t: conv(cl(t)),
        "batch_norm": lambda t: gp.batch_norm2d(cl(t), torch.zeros(3), torch.tensor(1.0), c=1.0),
        "batch_norm rows": lambda t: gp.batch_norm(rows(t), torch.zeros(3), torch.tensor(1.0), c=1.0),
        "flatten": lambda t: gp.flatten(cl(t), c=1.0),
        "max_pool2d": lambda t: gp.max_pool2d(t, c=1.0, kernel_size=2),
        "avg_pool2d": lambda t: gp.avg_pool2d(t, c=1.0, kernel_size=2),
        "mobius_add": lambda t: gp.mobius_add(t, x, c=1.0, dim=1),
        "mobius_linear": lambda t: gp.mobius_linear(rows(t), torch.randn(4, 3) * 0.3, c=1.0),
    }
    prev = geoops._backend.checks_enabled()
    geoops.set_checks(False)
    for f in ops.values():  # off: no check (and the convolution's argument cache warm)
        f(bad), f(x)
    geoops.set_checks(True)
    try:
        for name, f in ops.items():
            f(x)
            for t in (bad, nan):
                with pytest.raises(ValueError, match=r"(outside the ball|non-finite).*GEOOPS_CHECK"):
                    f(t)
    finally:
        geoops.set_checks(prev)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compositions_half_types_computed_in_float32(dtype):
    """transp, midpoint, the pools, unfold, flatten and mobius_linear (compositions of kernels and torch ops) of half
    inputs: computed in float32 and returned in their dtype (their intermediate results rounded to the half type:
    10-300x the error of the float32 result's rounding for transp and midpoint)."""
    g = torch.Generator().manual_seed(0)
    x = gp.expmap0(torch.randn(64, 5, generator=g, dtype=torch.float64) * 0.9, c=0.9).to(dtype)
    y, v = x.roll(1, 0), (x * 0.7).to(dtype)
    img = _img(2, 3, 4, 4, c=0.9, seed=2).to(dtype)
    w = (torch.randn(4, 5, generator=g) * 0.3).to(dtype)
    for f in (lambda x, y, v, im: gp.transp(x, y, v, c=0.9), lambda x, y, v, im: gp.midpoint(x, c=0.9),
              lambda x, y, v, im: gp.avg_pool2d(im, c=0.9, kernel_size=2),
              lambda x, y, v, im: gp.max_pool2d(im, c=0.9, kernel_size=2),
              lambda x, y, v, im: gp.poincare_unfold(im, c=0.9, kernel_size=2),
              lambda x, y, v, im: gp.flatten(im, c=0.9),
              lambda x, y, v, im: gp.mobius_linear(x, w.to(x.dtype), v[0, :4], c=0.9)):
        got = f(x, y, v, img)
        assert got.dtype == dtype
        assert torch.equal(got, f(x.float(), y.float(), v.float(), img.float()).to(dtype))


def test_batchnorm2d_under_vmap():
    """torch.func.vmap over a channels-last test of batch_norm2d: the layout query no longer runs under the
    transform (it raised 'NYI: querying is_contiguous inside of vmap'); each mapped slice is its own batch."""
    c = torch.tensor(0.8, dtype=torch.float64)
    xs = torch.stack([_img(2, 3, 3, 2, c=0.8, dtype=torch.float64, seed=s) for s in range(2)])
    bias = torch.randn(3, dtype=torch.float64) * 0.2
    w = torch.tensor(0.7, dtype=torch.float64)
    got = torch.func.vmap(lambda x: gp.batch_norm2d(x, bias, w, c=c))(xs)
    for i in range(2):
        want = gp.batch_norm2d(xs[i].contiguous(memory_format=torch.channels_last), bias, w, c=c)
        torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- patch_hypll
def _hypll_block(hb, C=4):
    torch.manual_seed(5)
    return torch.nn.ModuleList([hnn.HConvolution2d(C, C, 3, hb, padding=1), hnn.HBatchNorm2d(C, hb, use_midpoint=True),
                                hnn.HReLU(hb), hnn.HConvolution2d(C, C, 3, hb, padding=1),
                                hnn.HBatchNorm2d(C, hb, use_midpoint=True)])


def _run_block(mods, hb, x):
    h = _mt(x, hb)
    y = h
    for m in mods:
        y = m(y)
    return hb.mobius_add(y, h).tensor


def test_patch_hypll_fully_connected_function_does_not_project():
    """HypLL's poincare_fully_connected does not project (PoincareBall.fully_connected projects after it): the
    patched function must not either -- it projected with the dtype's margin, 4e-3 off for outputs beyond it."""
    import hypll.manifolds.poincare_ball.manifold as hm

    for dtype, tol in ((torch.float64, dict(rtol=1e-9, atol=1e-11)), (torch.float32, dict(rtol=1e-5, atol=1e-6))):
        c = torch.tensor(0.8, dtype=dtype, requires_grad=True)
        x = gp.expmap0(torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=dtype) * 2.0, c=0.8)
        z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
        b = torch.tensor([0.1, -0.2, 0.3], dtype=dtype)
        want = hm.poincare_fully_connected(x, z, b, c)
        assert (want.norm(dim=-1) > (1 - gp.default_eps(dtype)) / math.sqrt(0.8)).any()  # beyond the margin
        with compat.patched_hypll():
            got = hm.poincare_fully_connected(x, z, b, c)
        torch.testing.assert_close(got, want, **tol)
        if dtype == torch.float64:  # (float32 gradients of saturated rows: HypLL's own error is ~1e-2 there)
            torch.testing.assert_close(torch.autograd.grad(got.sum(), c), torch.autograd.grad(want.sum(), c), **tol)


def test_patch_hypll_same_results_and_restores():
    import hypll.manifolds.poincare_ball.manifold as hm

    hb = HBall(c=Curvature(1.0))
    mods = _hypll_block(hb)
    x = _img(2, 4, 6, 6, c=float(hb.c()))
    params = [getattr(p, "tensor", p) for m in mods for n, p in m.named_parameters() if not n.endswith("value")]
    xa = x.clone().requires_grad_(True)
    ya = _run_block(mods, hb, xa)
    ga = torch.autograd.grad(ya.square().sum(), [xa] + params)
    originals = {n: getattr(hm, n) for n in compat.HYPLL_PATCHED_NAMES}
    fc = hm.PoincareBall.fully_connected
    with compat.patched_hypll():
        assert compat.is_hypll_patched()
        assert hm.poincare_fully_connected is not originals["poincare_fully_connected"]
        xb = x.clone().requires_grad_(True)
        yb = _run_block(mods, hb, xb)
        gb_ = torch.autograd.grad(yb.square().sum(), [xb] + params)
    assert not compat.is_hypll_patched()
    for n, f in originals.items():
        assert getattr(hm, n) is f
    assert hm.PoincareBall.fully_connected is fc
    torch.testing.assert_close(yb, ya, **F32)
    for a, b in zip(gb_, ga):
        torch.testing.assert_close(a, b, rtol=3e-3, atol=3e-4)


@pytest.mark.parametrize("radius", [0.5, 0.999999])
def test_relu_fused_fp64_reference_and_gradcheck(radius):
    """The fused ReLU row op vs the fp64 composition (values and gradients to x and c) and gradcheck; radius
    0.999999 puts rows with only positive entries past the projection radius (the projection branch)."""
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = _img(2, 5, 3, 3, c=0.7, dtype=torch.float64, radius=radius)
    x[0, :, 0, 0] = x[0, :, 0, 0].abs()  # one row with relu(x) = x
    x[1, :, 1, 1] = 0.0  # a zero row
    x[1, :, 2, 2] = -x[1, :, 2, 2].abs()  # a row with relu(x) = 0
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ours = gp.poincare_relu(x, c=c, dim=1)
    truth = ref.poincare_relu(x, c, dim=1)
    torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ours)
    go = torch.autograd.grad(ours, (x, c), g)
    gt = torch.autograd.grad(truth, (x, c), g)
    for a, b in zip(go, gt):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    if radius < 0.9:
        xs = x.detach()[:1, :, :2, :2].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, c: gp.poincare_relu(x, c=c, dim=1), (xs, c), eps=1e-6, atol=1e-6,
                                        rtol=1e-5)


def test_relu_fused_fp32_opcheck_compile():
    import geoops._ops.poincare as pops

    c = torch.tensor(1.3)
    x = _img(2, 4, 3, 5, c=1.3).permute(0, 2, 3, 1).reshape(-1, 4).contiguous()
    y = gp.poincare_relu(x, c=c)
    torch.testing.assert_close(y, ref.poincare_relu(x.double(), c.double()).float(), rtol=2e-5, atol=2e-6)
    torch.library.opcheck(torch.ops.geoops.poincare_relu_fwd.default, (x, c, 4e-3))
    torch.library.opcheck(torch.ops.geoops.poincare_relu_bwd.default, (torch.randn_like(x), x, c, 4e-3))
    f = torch.compile(lambda x: gp.poincare_relu(x, c=c), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), y)
    assert gp.poincare_relu(x.half(), c=c).dtype == torch.float16
    assert gp.poincare_relu(x[:0], c=c).shape == (0, 4)


def test_batchnorm_fused_grads_fp64_and_gradcheck():
    """Midpoint batch norm through the fused kernels (midpoint sums, bn row pass) vs the fp64 reference: values,
    gradients to x, bias, weight and c, and gradcheck."""
    c = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    x = gp.expmap0(torch.randn(12, 4, dtype=torch.float64) * 0.6, c=0.9).detach().requires_grad_(True)
    bias = (torch.randn(4, dtype=torch.float64) * 0.3).requires_grad_(True)
    w = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    ours = gp.batch_norm(x, bias, w, c=c)
    truth, _, _ = ref.batch_norm(x, bias, w, c)
    torch.testing.assert_close(ours, truth, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(ours)
    go = torch.autograd.grad(ours, (x, bias, w, c), g)
    gt = torch.autograd.grad(truth, (x, bias, w, c), g)
    for a, b in zip(go, gt):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x, b, w, c: gp.batch_norm(x, b, w, c=c), (x, bias, w, c), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


class _Passthrough(TorchFunctionMode):
    """A torch-function mode that changes nothing but makes ``direct_call_ok`` false: the traced-call route."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _bn_eager_vs_composition(dtype, N, D, cval, wval, scale, seed):
    """The training batch norm's eager CPU path (one BnLayerFn node) vs the torch composition that traced / CUDA
    calls take (forced by a torch-function mode): values, gradients to x, bias, weight, c and running statistics.
    float32: neither is exact, so both are measured against the float64 composition on the same input and the eager
    path's error may be at most twice the composition's, plus a floor (the house low-precision rule; on AVX2 builds
    one gradient element of 8000 at N = 1000 differed by 2.3e-5 from the float32 composition)."""
    g0 = torch.Generator().manual_seed(seed)
    x0 = gp.expmap0(torch.randn(N, D, generator=g0, dtype=dtype) * scale, c=cval).detach()

    def run(mode, dt):
        x = x0.to(dt).clone().requires_grad_(True)
        c = torch.tensor(cval, dtype=dt, requires_grad=True)
        bias = torch.linspace(-0.3, 0.4, D, dtype=dt).requires_grad_(True)
        w = torch.tensor(wval, dtype=dt, requires_grad=True)
        rm, rv = torch.zeros(D, dtype=dt), torch.ones((), dtype=dt)
        with (mode() if mode else contextlib.nullcontext()):
            y = gp.batch_norm(x, bias, w, c=c, running_mean=rm, running_var=rv)
        assert ("BnLayerFn" in type(y.grad_fn).__name__) == (mode is None)
        g = torch.linspace(-1, 1.5, y.numel(), dtype=dt).reshape(y.shape)
        return (y.detach(), *torch.autograd.grad(y, (x, bias, w, c), g), rm, rv)

    ours, comp = run(None, dtype), run(_Passthrough, dtype)
    if dtype == torch.float64:
        for a, r in zip(ours, comp):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
        return
    exact = run(_Passthrough, torch.float64)
    for i, (a, r, e) in enumerate(zip(ours, comp, exact)):
        err, ref_err = (a.double() - e).abs(), (r.double() - e).abs()
        bound = 2 * ref_err + 2e-5 + 2e-4 * e.abs()
        assert bool((err <= bound).all()), (i, float((err - bound).max()), float(err.max()), float(ref_err.max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N, D", [(33, 5), (41, 6), (2, 3), (700, 16), (1000, 8)])  # N = 1: y = b, gradients are noise
def test_batchnorm_layer_fn_vs_torch_composition(dtype, N, D):
    """Eager CPU training batch norm: one BnLayerFn node (the logmap_m folded into the C++ layer kernels, several
    256-row blocks, partial vectors of lanes, two threads' chunks at N = 700 and 1000) vs the torch composition."""
    _bn_eager_vs_composition(dtype, N, D, 1.3 if D == 5 else 0.8, 0.7 if D == 5 else 1.4, 0.8 if D == 5 else 0.7,
                             N + D)


@pytest.mark.parametrize("N, D", [(13, 6), (2, 3), (19, 4)])
def test_batchnorm_layer_fn_gradcheck(N, D):
    """BnLayerFn's own fp64 gradcheck: x, bias (its expmap0 inside the C++ calls), weight and the curvature (the
    transport's scalar chain and 2 x 2 algebra in C++, the folded logmap's and the midpoint's hand-written
    backward)."""
    g0 = torch.Generator().manual_seed(N + D)
    x = gp.expmap0(torch.randn(N, D, generator=g0, dtype=torch.float64) * 0.7, c=0.8).detach().requires_grad_(True)
    b = (torch.randn(D, generator=g0, dtype=torch.float64) * 0.3).requires_grad_(True)
    ins = (x, b, torch.tensor(0.9, dtype=torch.float64, requires_grad=True),
           torch.tensor(0.8, dtype=torch.float64, requires_grad=True))
    fn = gp.BnLayerFn
    # no nondet_tol: every sum of the C++ passes runs in a fixed order (poincare_bn.cpp, "Reproducibility"),
    # so two backward passes agree bit for bit
    assert torch.autograd.gradcheck(lambda *t: fn.apply(*t, N, 1e-6, 1e-5)[0], ins, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_batchnorm_bias_zero_vs_composition():
    """bias = 0 (the modules' initial value: expmap0's series branch) through the C++ layer (BnLayerFn) and the
    composition that the other backends run (the reference backend here) agreeing on values and every gradient."""
    g0 = torch.Generator().manual_seed(5)
    x0 = gp.expmap0(torch.randn(40, 6, generator=g0, dtype=torch.float64) * 0.7, c=1.1)
    outs = []
    for fused, bias0 in ((True, 0.0), (False, 0.0), (True, 0.2), (False, 0.2)):
        x = x0.clone().requires_grad_(True)
        bias = torch.full((6,), bias0, dtype=torch.float64).requires_grad_(True)
        w = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        c = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
        with geoops.use_backend("cpp" if fused else "reference"):
            y = gp.batch_norm(x, bias, w, c=c)
            assert type(y.grad_fn).__name__.startswith("BnLayerFn") == fused
            g = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
            outs.append((y.detach(), *torch.autograd.grad(y, (x, bias, w, c), g)))
    for i in (0, 2):
        for a, r in zip(outs[i], outs[i + 1]):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N, D", [(1, 5), (13, 3), (600, 5), (2003, 16)])
def test_bn_layer_kernel_vs_midpoint_and_logmap(dtype, N, D):
    """geoops::poincare_bn_layer_fwd (midpoint sums, m, the stats pass writing u = logmap_m(x) and S) vs the
    midpoint formula and the stereographic logmap; its backward vs autograd through that composition (fp64)."""
    from geoops._backend import compiled

    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    g0 = torch.Generator().manual_seed(N * D)
    x = gp.expmap0(torch.randn(N, D, generator=g0, dtype=torch.float64) * 0.9, c=1.1).to(dtype).double()
    u, m, S, mid = compiled().poincare_bn_layer_fwd_cpu(x.to(dtype), 1.1)  # sums in double: fp32 input, exact
    mr = gp.midpoint(x, c=1.1)
    torch.testing.assert_close(m.double(), mr, **tol)
    ur = gp.logmap(m.double(), x, c=1.1)
    torch.testing.assert_close(u.double(), ur, **tol)
    torch.testing.assert_close(torch.tensor(S, dtype=torch.float64), ur.pow(2).sum(), **tol)
    if dtype == torch.float64:
        xr = x.clone().requires_grad_(True)
        c = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
        mm = gp.midpoint(xr, c=c)
        uu = gp.logmap(mm, xr, c=c)
        gu = torch.randn(N, D, generator=g0, dtype=torch.float64)
        gm = torch.randn(D, generator=g0, dtype=torch.float64)
        dx_r, dc_r = torch.autograd.grad((uu * gu).sum() + (mm * gm).sum(), (xr, c))
        dx, dc = compiled().poincare_bn_layer_bwd_cpu(gu, x, m, mid, gm, 1.1)
        # (sums over N rows in another order; 1 / L amplifies them at N = 2003: 6e-10 absolute there)
        torch.testing.assert_close(dx, dx_r, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(torch.tensor(dc, dtype=torch.float64), dc_r, rtol=1e-7, atol=1e-9)


def test_batchnorm_fused_ops_opcheck():
    import geoops._ops.poincare as pops

    c = torch.tensor(0.9)
    x = gp.expmap0(torch.randn(10, 4) * 0.6, c=0.9)
    F_, L_ = torch.ops.geoops.poincare_midpoint_sums_fwd.default(x, c)
    lam = 2 / (1 - 0.9 * x.double().pow(2).sum(-1, keepdim=True))
    torch.testing.assert_close(F_.double(), (lam * x.double()).sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L_.double(), (lam - 1).sum(), rtol=1e-5, atol=1e-6)
    torch.library.opcheck(torch.ops.geoops.poincare_midpoint_sums_fwd.default, (x, c))
    torch.library.opcheck(torch.ops.geoops.poincare_midpoint_sums_bwd.default, (torch.randn(4), torch.tensor(0.3), x, c))
    u = torch.randn(10, 4) * 0.5
    M = torch.eye(4) + torch.randn(4, 4) * 0.1
    b = gp.expmap0(torch.randn(4) * 0.3, c=0.9)
    torch.library.opcheck(torch.ops.geoops.poincare_bn_rows_fwd.default, (u, M, b, c, 4e-3))
    torch.library.opcheck(torch.ops.geoops.poincare_bn_rows_bwd.default, (torch.randn(10, 4), u, M, b, c, 4e-3))
    bn = gnn.PoincareBatchNorm2d(4, gnn.PoincareBall(1.0))
    xi = _img(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    f = torch.compile(bn, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(xi), gnn.PoincareBatchNorm2d(4, gnn.PoincareBall(1.0))(xi), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N, D", [(0, 5), (1, 5), (37, 5), (600, 5), (2003, 16), (1, 1), (13, 3)])
def test_bn_rows_cpp_vs_reference_with_and_without_M(dtype, N, D):
    """The C++ row op's GEMM-first path (u @ M inside the op; gu = gv M^T, gM = u^T gv after the row pass) and its
    empty-M (identity) path vs the reference kernel set: values and du, dM, db, dc; both projection branches;
    N = 600: several 256-row blocks of the SIMD row math and a partial last one; N = 2003 (D = 16: two threads'
    chunks, partial vectors of lanes at the end of each), N = 1, 13: one partial vector."""
    import geoops._ops.poincare as pops

    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    g0 = torch.Generator().manual_seed(N)
    c = torch.tensor(0.9, dtype=dtype)
    u = (torch.randn(N, D, generator=g0, dtype=dtype) * torch.linspace(0.2, 4.0, max(N, 1), dtype=dtype)[:N, None])
    M = torch.eye(D, dtype=dtype) * 0.7 + torch.randn(D, D, generator=g0, dtype=dtype) * 0.2
    b = gp.expmap0(torch.randn(D, generator=g0, dtype=dtype) * 0.3, c=0.9)
    g = torch.randn(N, D, generator=g0, dtype=dtype)
    for MM in (M, M.new_empty(0)):
        y = pops._Cpp.poincare_bn_rows_fwd(u, MM, b, c, 4e-3)
        yr = pops._Reference.poincare_bn_rows_fwd(u, MM, b, c, 4e-3)
        torch.testing.assert_close(y, yr, **tol)
        for a, r in zip(pops._Cpp.poincare_bn_rows_bwd(g, u, MM, b, c, 4e-3),
                        pops._Reference.poincare_bn_rows_bwd(g, u, MM, b, c, 4e-3)):
            assert a.shape == r.shape and a.dtype == r.dtype
            torch.testing.assert_close(a, r, **tol)


def test_bn_rows_gradcheck_both_projection_branches():
    """fp64 gradcheck of the row op (u, M, b and c) through the C++ kernels (SIMD row math), with rows inside the
    ball and rows that land on the projection, N = 19 (two full vectors of lanes and a partial one)."""
    g0 = torch.Generator().manual_seed(3)
    u = (torch.randn(19, 6, generator=g0, dtype=torch.float64)
         * torch.linspace(0.02, 8.0, 19, dtype=torch.float64)[:, None]).requires_grad_(True)
    M = (torch.eye(6, dtype=torch.float64) * 0.8 + torch.randn(6, 6, generator=g0, dtype=torch.float64) * 0.1)
    b = gp.expmap0(torch.randn(6, generator=g0, dtype=torch.float64) * 0.1, c=1.3)
    c = torch.tensor(1.3, dtype=torch.float64)
    args = (u, M.requires_grad_(True), b.detach().requires_grad_(True), c.requires_grad_(True))
    y = gp.BnRowsFn.apply(*args, 1e-5)
    assert (y.norm(dim=1) > (1 - 2e-5) / 1.3 ** 0.5).any() and (y.norm(dim=1) < 0.9 / 1.3 ** 0.5).any()
    assert torch.autograd.gradcheck(lambda u, M, b, c: gp.BnRowsFn.apply(u, M, b, c, 1e-5), args, eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tangent", [True, False])
@pytest.mark.parametrize("radius", [0.5, 3.0])  # 3.0: tangent rows whose expmap0 lands on the projection
def test_fc_rows_ops_vs_reference_and_opcheck(tangent, radius):
    """geoops::poincare_fc_rows_fwd/_bwd (the layer from t = u @ z and |u|^2, the convolution's path): the C++
    kernels vs the reference composition, values and every gradient, and opcheck of both ops."""
    import geoops._ops.poincare as pops

    torch.manual_seed(3)
    N, n, m = 37, 9, 5
    c = torch.tensor(0.8, dtype=torch.float64)
    u = torch.randn(N, n, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(N, 1, dtype=torch.float64) * (radius if tangent else 0.9)
    z = torch.randn(n, m, dtype=torch.float64) * 0.4
    b = torch.randn(m, dtype=torch.float64) * 0.2
    t, U = u @ z, (u * u).sum(1)
    eps = 1e-5
    y = pops.poincare_fc_rows_fwd(t, U, z, b, c, eps, tangent)
    truth = pops._Reference.poincare_fc_rows_fwd(t, U, z, b, c, eps, tangent)
    torch.testing.assert_close(y, truth, rtol=1e-10, atol=1e-12)
    full = ref.poincare_fc(ref.expmap0(u, c, eps=eps) if tangent else u, z, b, c, eps=eps)
    torch.testing.assert_close(y, full, rtol=1e-10, atol=1e-12)
    g = torch.randn(N, m, dtype=torch.float64)
    ours = pops.poincare_fc_rows_bwd(g, t, U, z, b, c, eps, 14, tangent)
    want = pops._Reference.poincare_fc_rows_bwd(g, t, U, z, b, c, eps, 14, tangent)
    for a, w in zip(ours, want):
        torch.testing.assert_close(a.reshape(w.shape).to(w.dtype), w, rtol=1e-8, atol=1e-10)
    tf, Uf, zf, bf, cf = (a.float() for a in (t, U, z, b, c))
    torch.library.opcheck(torch.ops.geoops.poincare_fc_rows_fwd.default, (tf, Uf, zf, bf, cf, 4e-3, tangent))
    torch.library.opcheck(torch.ops.geoops.poincare_fc_rows_bwd.default, (g.float(), tf, Uf, zf, bf, cf, 4e-3, 14, tangent))
    torch.library.opcheck(torch.ops.geoops.poincare_fc_rows_bwd.default, (g.float(), tf, Uf, zf, None, cf, 4e-3, 8, tangent))


def _graph_has(y, name):
    """Whether y's autograd graph holds a node of the Function `name`."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if type(n).__name__.startswith(name):
            return True
        todo.extend(f for f, _ in n.next_functions)
    return False


def _conv_layer_run(x0, z0, b0, dtype, cgrad, k, p, s):
    """poincare_conv2d on fresh leaves copied from (x0, z0, b0) and c = 0.8 (a leaf when cgrad), then the
    gradients of a fixed random cotangent: (y, (y.detach(), grads of the leaves that require grad))."""
    x = x0.clone().requires_grad_(True)
    z = z0.clone().requires_grad_(True)
    b = None if b0 is None else b0.clone().requires_grad_(True)
    c = torch.tensor(0.8, dtype=dtype, requires_grad=cgrad)
    y = gp.poincare_conv2d(x, z, b, c=c, kernel_size=k, padding=p, stride=s)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    ins = [t for t in (x, z, b, c) if t is not None and t.requires_grad]
    return y, (y.detach(), torch.autograd.grad(y, ins, gy))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [dict(k=3, s=1, p=1, cin=3, cout=4, bias=True, cl=True, cgrad=True),
                                 dict(k=2, s=2, p=0, cin=2, cout=5, bias=False, cl=False, cgrad=False),
                                 dict(k=3, s=2, p=1, cin=1, cout=8, bias=True, cl=False, cgrad=True),
                                 dict(k=1, s=1, p=0, cin=4, cout=3, bias=True, cl=True, cgrad=False)])
def test_conv2d_fused_fn_vs_composition(monkeypatch, dtype, cfg):
    """The eager CPU conv Function (PoincareConv2dFn: one node, hand-written backward) against the autograd
    composition (GEOOPS_POINCARE_FUSED=0): values and the gradients of x, z, bias and c, channels-last and
    contiguous inputs, with and without bias / c's gradient."""
    k, s, p, cin, cout = cfg["k"], cfg["s"], cfg["p"], cfg["cin"], cfg["cout"]
    x0 = _img(2, cin, 7, 6, c=0.8, dtype=dtype, seed=3)
    if cfg["cl"]:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    z0 = (torch.randn(cin * k * k, cout, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    b0 = (torch.randn(cout, generator=g, dtype=torch.float64) * 0.2).to(dtype) if cfg["bias"] else None
    outs = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", fused)
        y, outs[fused] = _conv_layer_run(x0, z0, b0, dtype, cfg["cgrad"], k, p, s)
        assert (fused == "1") == _graph_has(y, "PoincareConv2dFn")
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(outs["1"][0], outs["0"][0], **tol)
    for a, b_ in zip(outs["1"][1], outs["0"][1]):
        torch.testing.assert_close(a, b_, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_bias", [True, False])
def test_mlr_fn_vs_composition_and_gradcheck(monkeypatch, dtype, with_bias):
    """The eager MLR Function off the C++ backend (PoincareMlrFn: hand-written backward, fixed curvature; the
    reference backend here) against the autograd composition (GEOOPS_POINCARE_FUSED=0), and gradcheck in float64;
    a learnable c takes the composition."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(9, 7, generator=g, dtype=torch.float64)
    x0 = (x0 / x0.norm(dim=1, keepdim=True) * torch.rand(9, 1, generator=g, dtype=torch.float64) * 0.9 / 0.8 ** 0.5).to(dtype)
    z0 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    z0[:, 2] = 0  # a zero hyperplane normal: zn clamped, no gradient through its norm
    b0 = (torch.randn(4, generator=g, dtype=torch.float64) * 0.3).to(dtype) if with_bias else None
    c = torch.tensor(0.8, dtype=dtype)
    gy = torch.randn(9, 4, generator=g, dtype=torch.float64).to(dtype)
    outs = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", fused)
        x, z = x0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
        b = None if b0 is None else b0.clone().requires_grad_(True)
        with geoops.use_backend("reference"):  # PoincareMlrFn (the C++ head: test_mlr_cpp_*)
            y = gp.mlr(x, z, b, c=c)
            assert (fused == "1") == _graph_has(y, "PoincareMlrFn")
            ins = [t for t in (x, z, b) if t is not None]
            outs[fused] = (y.detach(), torch.autograd.grad(y, ins, gy))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(outs["1"][0], outs["0"][0], rtol=0, atol=0)  # the forward is the composition's
    for a, b_ in zip(outs["1"][1], outs["0"][1]):
        torch.testing.assert_close(a, b_, **tol)
    if dtype == torch.float64:
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
        zg = z0.clone()
        zg[:, 2] = 0.3  # |z_j| is not differentiable at 0: gradcheck on nonzero normals
        ins = [x0.clone().requires_grad_(True), zg.requires_grad_(True)]
        if with_bias:
            ins.append(b0.clone().requires_grad_(True))
        assert torch.autograd.gradcheck(lambda *a: gp.mlr(*a, c=c), tuple(ins), eps=1e-6, atol=1e-6, rtol=1e-5)
    cg = torch.tensor(0.8, dtype=dtype, requires_grad=True)  # a learnable curvature: the composition
    assert not _graph_has(gp.mlr(x0.clone().requires_grad_(True), z0, b0, c=cg), "PoincareMlrFn")


def _mlr_case(N, n, m, dtype, seed, radius=0.9, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * torch.rand(N, 1, generator=g, dtype=torch.float64) * radius / 0.8 ** 0.5
    z = torch.randn(n, m, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(m, generator=g, dtype=torch.float64) * 0.3 if with_bias else None
    gy = torch.randn(N, m, generator=g, dtype=torch.float64)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(x), cast(z), cast(b), gy.to(dtype)


def _mlr_grads(x0, z0, b0, c0, gy):
    x, z, c = x0.clone().requires_grad_(True), z0.clone().requires_grad_(True), c0.clone().requires_grad_(True)
    b = None if b0 is None else b0.clone().requires_grad_(True)
    y = gp.mlr(x, z, b, c=c)
    ins = [t for t in (x, z, b, c) if t is not None]
    return y, [y.detach()] + list(torch.autograd.grad(y, ins, gy))


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 3), (64, 512, 10), (33, 5, 17)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_mlr_cpp_vs_reference_fp32_error(monkeypatch, shape, with_bias):
    """The C++ MLR head (PoincareMlrCppFn, float32): its error against the float64 reference is at most twice
    the eager reference composition's float32 error (values and the gradients to x, z, bias and c)."""
    x, z, b, gy = _mlr_case(*shape, torch.float32, seed=sum(shape), with_bias=with_bias)
    c = torch.tensor(0.8)
    f64 = (lambda t: None if t is None else t.double())
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")  # the eager reference composition, float32 and float64
    _, exact = _mlr_grads(f64(x), f64(z), f64(b), c.double(), gy.double())
    _, eager = _mlr_grads(x, z, b, c, gy)
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
    y, ours = _mlr_grads(x, z, b, c, gy)
    assert _graph_has(y, "PoincareMlrCppFn")
    for e, r, o in zip(exact, eager, ours):
        err_ref = (r.double() - e).abs().max().item()
        err = (o.double() - e).abs().max().item()
        assert err <= 2 * err_ref + 1e-6 * max(1.0, e.abs().max().item()), (err, err_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 1), (64, 512, 10), (37, 700, 16), (300, 48, 10), (9, 20, 17)])
def test_mlr_narrow_gemm_vs_mkl(monkeypatch, dtype, shape):
    """The MLR head's small narrow products (x z, dt z^T, x^T dt with at most 16 output columns or reduction rows and
    at most 2^22 multiply-adds: fma chains, in double where the reduction is long) vs MKL's
    (GEOOPS_POINCARE_NARROW_GEMM=0): values and every gradient equal to rounding (float64 1e-12, float32 relative to
    the largest entry); (9, 20, 17): 17 columns, MKL on both sides, bit-identical."""
    x, z, b, gy = _mlr_case(*shape, dtype, seed=sum(shape))
    c = torch.tensor(0.8, dtype=dtype)
    monkeypatch.setenv("GEOOPS_POINCARE_NARROW_GEMM", "0")
    y0, want = _mlr_grads(x, z, b, c, gy)
    monkeypatch.delenv("GEOOPS_POINCARE_NARROW_GEMM")
    y1, got = _mlr_grads(x, z, b, c, gy)
    assert _graph_has(y1, "PoincareMlrCppFn")
    if shape[2] > 16 and shape[1] > 16:
        for a, e in zip(got, want):
            assert torch.equal(a, e)
        return
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    assert_close_to_largest(got, want, tag=shape, **tol)


@pytest.mark.parametrize("with_bias", [True, False])
def test_mlr_cpp_fp64_gradcheck_and_composition(monkeypatch, with_bias):
    """The C++ MLR head in float64: the reference composition's values and gradients (x, z, bias and a learnable
    c; a zero hyperplane normal), gradcheck incl. c, NaN rows stay NaN rows, and the reference backend takes
    PoincareMlrFn."""
    x, z, b, gy = _mlr_case(11, 6, 5, torch.float64, seed=3, with_bias=with_bias)
    z[:, 1] = 0
    c = torch.tensor(0.7, dtype=torch.float64)
    y, ours = _mlr_grads(x, z, b, c, gy)
    assert _graph_has(y, "PoincareMlrCppFn")
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    _, exact = _mlr_grads(x, z, b, c, gy)
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
    for o, e in zip(ours, exact):
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-12)
    zg = z.clone()
    zg[:, 1] = 0.4
    ins = [t.clone().requires_grad_(True) for t in (x, zg) + ((b,) if with_bias else ()) + (c,)]
    fn = (lambda x_, z_, b_, c_: gp.mlr(x_, z_, b_, c=c_)) if with_bias else (lambda x_, z_, c_: gp.mlr(x_, z_, c=c_))
    assert torch.autograd.gradcheck(fn, tuple(ins), eps=1e-6, atol=1e-6, rtol=1e-5)
    xn = x.clone()
    xn[4, 2] = float("nan")
    yn = gp.mlr(xn, z, b, c=c)
    assert yn[4].isnan().all() and not yn[torch.arange(11) != 4].isnan().any()
    with geoops.use_backend("reference"):
        assert _graph_has(gp.mlr(x.clone().requires_grad_(True), z, b, c=c), "PoincareMlrFn")


def test_mlr_cpp_backward_bitwise_repeatable():
    """Two identical backward calls of the C++ MLR head agree bit for bit, with 1 and 2 threads."""
    x, z, b, gy = _mlr_case(300, 40, 12, torch.float32, seed=9)
    c = torch.tensor(0.9)
    runs = []
    for th in (1, 2, 1, 2):
        with num_threads(th):
            runs.append(_mlr_grads(x, z, b, c, gy)[1])
    for r in runs[1:]:
        for a, e in zip(r, runs[0]):
            assert torch.equal(a, e)


def _layer_grads(kind, dtype, m, seed=0):
    g0 = torch.Generator().manual_seed(seed)
    if kind.startswith("conv"):
        B, S = (5, 64) if kind == "conv_wide" else (16, 16)  # conv_wide: 20480 pixels, beyond the direct kernel
        v = torch.randn(B, 8, S, S, generator=g0, dtype=torch.float64)
        x = 0.9 * v / v.norm(dim=1, keepdim=True) * torch.rand(B, 1, S, S, generator=g0, dtype=torch.float64)
        z = torch.randn(72, m, generator=g0, dtype=torch.float64) / 8
    else:
        v = torch.randn(3000, 48, generator=g0, dtype=torch.float64)
        x = 0.9 * v / v.norm(dim=1, keepdim=True) * torch.rand(3000, 1, generator=g0, dtype=torch.float64)
        z = torch.randn(48, m, generator=g0, dtype=torch.float64) / 7
    b = 0.3 * torch.randn(m, generator=g0, dtype=torch.float64)
    args = [t.to(dtype).requires_grad_(True) for t in (x, z, b, torch.tensor(0.9, dtype=torch.float64))]
    x, z, b, c = args
    if kind.startswith("conv"):
        y = gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=1, stride=2 if kind == "conv_s2" else 1)
    elif kind == "mlr":
        y = gp.mlr(x, z, b, c=c)
    else:
        y = gp.poincare_fc(x, z, b, c=c, from_tangent=kind == "fc_tangent")
    gy = torch.randn(y.shape, generator=g0, dtype=torch.float64).to(dtype)
    return [y.detach()] + list(torch.autograd.grad(y, args, gy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,m", [("fc", 8), ("fc", 20), ("fc", 64), ("fc_tangent", 20), ("mlr", 10), ("mlr", 20),
                                    ("mlr", 200),
                                    ("conv", 8), ("conv", 20), ("conv_s2", 20), ("conv_wide", 8)])
def test_fc_family_grads_same_bits_any_thread_count(monkeypatch, kind, m, dtype):
    """fc / conv / MLR: values and every gradient (x, z, bias, c) bit-identical with 1, 2, 3 and 4 threads (3000
    rows, 4096 pixels: many row blocks and several fixed GEMM chunks).  Before: the per-thread partial sums of the
    column and dc terms and MKL's split of x^T dt made z / bias / c differ in the last bits.  Convolutions beyond
    the direct kernel (more than 16 channels: m = 20, also with stride 2; more than 16384 pixels: conv_wide) with
    GEOOPS_POINCARE_CONV_DZ_FIXED=1: the weight gradient in fixed GEMM tiles (oneDNN's, the default, differs in
    float32's last bits across thread counts)."""
    monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_FIXED", "1")
    runs = []
    for th in (1, 2, 3, 4):
        with num_threads(th):
            runs.append(_layer_grads(kind, dtype, m))
    for th, r in zip((2, 3, 4), runs[1:]):
        for name, a, e in zip(("y", "dx", "dz", "db", "dc"), r, runs[0]):
            assert torch.equal(a, e), f"{kind} m={m} {dtype}: {name} differs between 1 and {th} threads"


@pytest.mark.parametrize("cgrad", [True, False])
def test_relu_direct_fn_vs_op_path(monkeypatch, cgrad):
    """The ReLU's eager direct-call Functions (PoincareReluImgFn for an image with the points along the channels,
    PoincareReluCppFn for rows) run the same kernels as PoincareReluFn through the op caller
    (GEOOPS_POINCARE_FUSED=0): identical values and gradients (x channels-last and contiguous, the upstream
    gradient contiguous, channels-last and permuted; rows)."""
    x0 = _img(3, 6, 5, 4, c=0.9, dtype=torch.float32, seed=7)
    r0 = x0.permute(0, 2, 3, 1).reshape(-1, 6)
    for x_, dim, fn in ((x0, 1, "PoincareReluImgFn"), (x0.contiguous(memory_format=torch.channels_last), 1,
                                                       "PoincareReluImgFn"), (r0, -1, "PoincareReluCppFn")):
        for gfmt in ("contiguous", "channels_last", "permuted"):
            res = {}
            for fused in ("1", "0"):
                monkeypatch.setenv("GEOOPS_POINCARE_FUSED", fused)
                x = x_.clone().requires_grad_(True)
                c = torch.tensor(0.9, requires_grad=cgrad)
                y = gp.poincare_relu(x, c=c, dim=dim)
                assert _graph_has(y, fn) == (fused == "1")
                gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
                if gfmt == "channels_last" and gy.dim() == 4:
                    gy = gy.contiguous(memory_format=torch.channels_last)
                elif gfmt == "permuted":
                    gy = gy.transpose(0, -1).contiguous().transpose(0, -1)
                res[fused] = (y.detach(), torch.autograd.grad(y, [x, c] if cgrad else [x], gy))
            torch.testing.assert_close(res["1"][0], res["0"][0], rtol=0, atol=0)
            for a, b in zip(res["1"][1], res["0"][1]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_image_channels_last_transpose():
    """geoops' transpose of a contiguous image to channels last (the convolution's, ReLU's, flatten's and residual's
    pixel rows) gives x.contiguous(channels_last) exactly: float32 / float64, one channel, odd sizes, empty
    images, a non-contiguous view (torch's copy); the strides are channels last."""
    C2 = gp._backend.compiled()
    for dt in (torch.float32, torch.float64):
        for shp in ((3, 5, 7, 9), (2, 16, 32, 32), (1, 1, 4, 4), (0, 3, 2, 2), (2, 3, 0, 5), (4, 100, 3, 3),
                    (2, 7, 1, 131)):
            x = torch.randn(shp, dtype=dt)
            y, ref = C2.poincare_image_channels_last_cpu(x), x.contiguous(memory_format=torch.channels_last)
            assert y.stride() == ref.stride() and torch.equal(y, ref), shp
        xs = torch.randn(2, 8, 6, 6, dtype=dt)[:, ::2]
        assert torch.equal(C2.poincare_image_channels_last_cpu(xs), xs.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", [1, 5, 13, 300])
def test_relu_backward_row_lanes_vs_reference(monkeypatch, dtype, N):
    """The ReLU backward's per-row scalars on SIMD lanes of doubles (one row per lane; float32 forced onto them
    with GEOOPS_POINCARE_RELU_F32=0) vs the float64 kernel on the same inputs and, in float64, the fp64
    composition: row counts that leave a partial vector of lanes (1, 5, 13; 300 = a 256-row block and a partial
    one), rows on the projection next to interior rows, an all-negative row (R = 0) and rows near 0 (the series
    sides of atanc / tanc and their derivatives)."""
    c64 = 0.6
    g = torch.Generator().manual_seed(N)
    x = torch.randn(N, 6, generator=g, dtype=torch.float64)
    r = torch.rand(N, 1, generator=g, dtype=torch.float64) * 0.9
    r[::3] = 0.9999999  # beyond the projection radius once positive
    r[1::7] = 1e-4
    x[::3] = x[::3].abs()
    x = x / x.norm(dim=1, keepdim=True) / c64 ** 0.5 * r
    if N > 4:
        x[4] = -x[4].abs()
    xd = x.to(dtype)
    c = torch.tensor(c64, dtype=dtype)
    gy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    monkeypatch.setenv("GEOOPS_POINCARE_RELU_F32", "0")
    res = {}
    xr, cr = xd.clone().requires_grad_(True), c.clone().requires_grad_(True)
    res["1"] = torch.autograd.grad(gp.poincare_relu(xr, c=cr), (xr, cr), gy)
    if dtype == torch.float32:  # vs the float64 kernel on the same inputs and the same projection margin
        from geoops._backend import compiled
        eps = gp.default_eps(torch.float32)
        want = compiled().poincare_relu_bwd_cpu(gy.double(), xd.double(), c.double(), eps)
        for a, b in zip(res["1"], want):
            b = b.reshape(a.shape)
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * max(1.0, b.abs().max().item()))
    if dtype == torch.float64:
        r64 = x.clone().requires_grad_(True)
        c_64 = torch.tensor(c64, dtype=torch.float64, requires_grad=True)
        gt = torch.autograd.grad(ref.poincare_relu(r64, c_64, dim=-1), (r64, c_64), gy)
        for a, b in zip(res["1"], gt):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relu_projection_branch_vs_reference(dtype):
    """Rows whose ReLU image lies beyond the projection radius (1 - eps)/sqrt(c): positive rows at 0.9999999 of
    the ball's radius (relu is then the identity and only the projection moves them) next to interior rows;
    values and the gradients to x and c against the fp64 composition."""
    c64 = 0.6
    g = torch.Generator().manual_seed(11)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x[:20] = x[:20].abs()
    x = x / x.norm(dim=1, keepdim=True) / c64 ** 0.5
    x[:20] *= 0.9999999
    x[20:] *= torch.rand(20, 1, generator=g, dtype=torch.float64) * 0.9
    xd = x.to(dtype).requires_grad_(True)
    c = torch.tensor(c64, dtype=dtype, requires_grad=True)
    ours = gp.poincare_relu(xd, c=c)
    r64 = x.clone().requires_grad_(True)
    c_64 = torch.tensor(c64, dtype=torch.float64, requires_grad=True)
    truth = ref.poincare_relu(r64, c_64, dim=-1)
    assert (truth[:20].norm(dim=1) < x[:20].norm(dim=1) * (1 - 1e-6)).all()  # the projection acted on those rows
    gy = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    go = torch.autograd.grad(ours, (xd, c), gy.to(dtype))
    if dtype == torch.float64:
        torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-12)
        gt = torch.autograd.grad(truth, (r64, c_64), gy)
        for a, b in zip(go, gt):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    else:  # float32 (margin 4e-3; the fp32 composition itself hits NaN at this radius): the projected rows sit on
        # the fp32 radius, the interior rows match the fp64 truth, gradients are finite
        rad = (1 - gp.default_eps(dtype)) / c64 ** 0.5
        torch.testing.assert_close(ours[:20].double().norm(dim=1), torch.full((20,), rad, dtype=torch.float64),
                                   rtol=2e-6, atol=0)
        torch.testing.assert_close(ours[20:].double(), truth[20:].detach(), rtol=1e-5, atol=1e-6)
        assert all(torch.isfinite(t).all() for t in go)


def _direct_conv_inputs(B, C, H, W, Co, k, p, sy, sx, seed):
    """float32 inputs of the direct convolution kernels from one generator, in this order: the pixel rows v
    (B*H*W, C), the weights z (C*k*k, Co), the gradients gt (B*Ho*Wo, Co) and gU (B*Ho*Wo,); and Ho, Wo."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B * H * W, C, generator=g)
    z = torch.randn(C * k * k, Co, generator=g)
    Ho, Wo = (H + 2 * p - k) // sy + 1, (W + 2 * p - k) // sx + 1
    gt = torch.randn(B * Ho * Wo, Co, generator=g)
    gU = torch.randn(B * Ho * Wo, generator=g)
    return v, z, gt, gU, Ho, Wo


def _direct_conv_ref(v, z, B, H, W, k, p, s, beta):
    """t = beta conv(v, z) and U = beta^2 box sums of |v|^2 by F.conv2d in float64 (the oracle of the direct
    kernel), as rows (B*Ho*Wo, C_out) and (B*Ho*Wo,)."""
    C, Co = v.shape[1], z.shape[1]
    img = v.view(B, H, W, C).permute(0, 3, 1, 2)
    wk = (z * beta).view(C, k[0], k[1], Co).permute(3, 0, 1, 2)
    t = torch.nn.functional.conv2d(img, wk, None, s, p)
    sq = (v * v).sum(1).view(B, 1, H, W)
    U = torch.nn.functional.conv2d(sq, torch.full((1, 1, k[0], k[1]), beta * beta, dtype=v.dtype), None, s, p)
    return t.permute(0, 2, 3, 1).reshape(-1, Co), U.reshape(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [(2, 1, 8, 8, 1, 8, 3, 1, 1), (2, 8, 8, 8, 8, 8, 3, 1, 1), (1, 3, 7, 5, 5, 3, 3, 2, 1),
                                 (2, 17, 9, 6, 5, 19, 5, 2, 2), (1, 16, 1, 1, 16, 16, 1, 1, 0),
                                 (1, 4, 1, 1, 4, 3, 3, 1, 1), (3, 6, 6, 7, 9, 6, (3, 1), (2, 1), (1, 0)),
                                 (1, 2, 5, 5, 2, 33 - 1, 5, 1, 0), (2, 5, 6, 6, 7, 13, 2, 2, 0)])
def test_conv2d_direct_kernel_vs_conv2d(dtype, cfg):
    """The direct small-channel convolution (poincare_conv2d_fwd_cpu / _bwd_cpu) against F.conv2d and autograd in
    float64: t, U, dv (with the box sums' term) and dz; odd sizes, strides 1 / 2, padding 0 / 1 / 2, kernels
    1 / 2 / 3 / 5 and non-square, channel counts off the vector width, a single pixel (B*H*W = 1)."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, _, Co, k, s, p = cfg
    if not C2.poincare_conv2d_direct_ok(C, Co, dtype == torch.float64):
        pytest.skip("channel count beyond this build's vector width (GEOOPS_PORTABLE)")
    k, s, p = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p
    g = torch.Generator().manual_seed(7)
    v = torch.randn(B * H * W, C, generator=g, dtype=torch.float64)
    z = torch.randn(C * k[0] * k[1], Co, generator=g, dtype=torch.float64)
    beta = 0.37
    vr, zr = v.clone().requires_grad_(True), z.clone().requires_grad_(True)
    t_ref, U_ref = _direct_conv_ref(vr, zr, B, H, W, k, p, s, beta)
    gt = torch.randn(t_ref.shape, generator=g, dtype=torch.float64)
    gU = torch.randn(U_ref.shape, generator=g, dtype=torch.float64)
    dv_ref, dz_ref = torch.autograd.grad((t_ref * gt).sum() + (U_ref * gU).sum(), (vr, zr))
    t, U = C2.poincare_conv2d_fwd_cpu(v.to(dtype), z.to(dtype), B, H, W, *k, *p, *s, beta)
    dv, dz = C2.poincare_conv2d_bwd_cpu(gt.to(dtype), gU.to(dtype), v.to(dtype), z.to(dtype), B, H, W, *k, *p, *s,
                                        beta, True, True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for ours, ref_ in ((t, t_ref), (U, U_ref), (dv, dv_ref), (dz, dz_ref)):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.double(), ref_.detach(), **tol)
    only_dz = C2.poincare_conv2d_bwd_cpu(gt.to(dtype), gU.to(dtype), v.to(dtype), z.to(dtype), B, H, W, *k, *p,
                                         *s, beta, False, True)
    assert only_dz[0] is None or only_dz[0].numel() == 0
    torch.testing.assert_close(only_dz[1], dz)


@pytest.mark.parametrize("cfg", [(2, 8, 8, 8, 8, 3, 1, 1), (2, 5, 9, 7, 13, 3, 2, 1), (1, 17, 6, 5, 3, 3, 1, 0),
                                 (3, 16, 10, 12, 16, 3, 1, 1), (1, 5, 20, 24, 16, 3, 1, 1), (2, 3, 32, 32, 8, 3, 1, 1)])
def test_conv2d_direct_dz_chunks(cfg):
    """dz in chunks of whole output rows (~16 KiB of dt rows each: several chunks on the last two images, one on
    the others) against F.conv2d's autograd in float64, 1 and 2 threads (chunks inside thread ranges)."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, Co, k, s, p = cfg
    if not C2.poincare_conv2d_direct_ok(C, Co, True):
        pytest.skip("channel count beyond this build's vector width (GEOOPS_PORTABLE)")
    g = torch.Generator().manual_seed(11)
    v = torch.randn(B * H * W, C, generator=g, dtype=torch.float64)
    z = torch.randn(C * k * k, Co, generator=g, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    t_ref, _ = _direct_conv_ref(v, zr, B, H, W, (k, k), (p, p), (s, s), 0.6)
    gt = torch.randn(t_ref.shape, generator=g, dtype=torch.float64)
    gU = torch.zeros(t_ref.shape[0], dtype=torch.float64)
    (dz_ref,) = torch.autograd.grad((t_ref * gt).sum(), (zr,))
    for n in (1, 2):
        with num_threads(n):
            for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 2e-4)):
                _, dz = C2.poincare_conv2d_bwd_cpu(gt.to(dtype), gU.to(dtype), v.to(dtype), z.to(dtype), B, H, W,
                                                   k, k, p, p, s, s, 0.6, False, True)
                torch.testing.assert_close(dz.double(), dz_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("cfg", [(64, 8, 8, 8, 8, 3, 1, 1), (64, 1, 8, 8, 8, 3, 1, 1), (2, 5, 9, 7, 3, 3, 2, 1),
                                 (3, 16, 6, 5, 1, 3, 1, 0), (1, 3, 7, 9, 8, 5, 1, 2), (2, 4, 5, 6, 7, 1, 1, 0),
                                 (2, 8, 6, 6, 8, 3, 2, 0), (2, 6, 7, 5, 16, 3, 1, 1), (1, 8, 5, 7, 12, 3, 1, 2)])
def test_conv2d_direct_pairs_vs_rows(monkeypatch, cfg):
    """The float32 stride-1 forward (C_out <= 8) and dv (C <= 8) with two pixels per vector (conv_pairs) against
    the row blocks (GEOOPS_POINCARE_CONV_PAIRS=0): t and dv bit for bit (the same FMAs in the same order), U to
    rounding, odd widths, kernels 1 / 3 / 5, padding 0 / 1 / 2, blocks that span rows, 1 and 2 threads (stride 2
    keeps the row blocks); and against F.conv2d and its autograd."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, Co, k, s, p = cfg
    v, z, gt, gU, _, _ = _direct_conv_inputs(B, C, H, W, Co, k, p, s, s, seed=12)
    outs = {}
    for n in (1, 2):
        with num_threads(n):
            for pairs in ("1", "0"):
                monkeypatch.setenv("GEOOPS_POINCARE_CONV_PAIRS", pairs)
                outs[n, pairs] = (C2.poincare_conv2d_fwd_cpu(v, z, B, H, W, k, k, p, p, s, s, 0.7)
                                  + C2.poincare_conv2d_bwd_cpu(gt, gU, v, z, B, H, W, k, k, p, p, s, s, 0.7, True,
                                                               False)[:1])
    t0, U0, dv0 = outs[1, "0"]
    for key, (t, U, dv) in outs.items():
        assert torch.equal(t, t0), key
        assert torch.equal(dv, dv0), key
        torch.testing.assert_close(U, U0, rtol=1e-6, atol=1e-7)
    vr = v.double().requires_grad_(True)
    t_ref, U_ref = _direct_conv_ref(vr, z.double(), B, H, W, (k, k), (p, p), (s, s), 0.7)
    (dv_ref,) = torch.autograd.grad((t_ref * gt.double()).sum() + (U_ref * gU.double()).sum(), (vr,))
    torch.testing.assert_close(outs[2, "1"][0].double(), t_ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[2, "1"][1].double(), U_ref.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(outs[2, "1"][2].double(), dv_ref, rtol=1e-4, atol=1e-4)


def test_conv2d_direct_kernel_threads():
    """dz's per-chunk partial sums and the parallel row ranges: the same values with 1 and 2 threads (a shape large
    enough to split; dz bit for bit)."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, Co = 4, 16, 32, 32, 16
    if not C2.poincare_conv2d_direct_ok(C, Co, False):
        pytest.skip("channel count beyond this build's vector width (GEOOPS_PORTABLE)")
    v, z, gt, gU, _, _ = _direct_conv_inputs(B, C, H, W, Co, 3, 1, 1, 1, seed=3)
    res = []
    for n in (1, 2):
        with num_threads(n):
            res.append(C2.poincare_conv2d_fwd_cpu(v, z, B, H, W, 3, 3, 1, 1, 1, 1, 0.5)
                       + C2.poincare_conv2d_bwd_cpu(gt, gU, v, z, B, H, W, 3, 3, 1, 1, 1, 1, 0.5, True, True))
    t_ref, U_ref = _direct_conv_ref(v.double(), z.double(), B, H, W, (3, 3), (1, 1), (1, 1), 0.5)
    torch.testing.assert_close(res[0][0].double(), t_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(res[0], res[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # dz's partial sums run per fixed chunk of rows, added in chunk order: the same bits with 1 and 2 threads
    assert torch.equal(res[0][3], res[1][3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [dict(k=3, s=1, p=1, cin=8, cout=8, bias=True, cgrad=True),
                                 dict(k=3, s=2, p=1, cin=1, cout=8, bias=False, cgrad=False),
                                 dict(k=5, s=1, p=2, cin=3, cout=5, bias=True, cgrad=True),
                                 dict(k=1, s=1, p=0, cin=13, cout=3, bias=True, cgrad=False),
                                 dict(k=3, s=1, p=1, cin=17, cout=3, bias=True, cgrad=False, direct=False)])
def test_conv2d_direct_vs_knob_off(monkeypatch, dtype, cfg):
    """PoincareConv2dFn with the direct convolution against GEOOPS_POINCARE_DIRECT_CONV=0 (F.conv2d /
    convolution_backward): values and the gradients of x, z, bias and c; more than 16 channels keep MKL-DNN."""
    k, s, p, cin, cout = cfg["k"], cfg["s"], cfg["p"], cfg["cin"], cfg["cout"]
    x0 = _img(2, cin, 7, 6, c=0.8, dtype=dtype, seed=4).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    z0 = (torch.randn(cin * k * k, cout, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    b0 = (torch.randn(cout, generator=g, dtype=torch.float64) * 0.2).to(dtype) if cfg["bias"] else None
    outs = {}
    calls = []
    from geoops import _backend
    C2 = _backend.compiled()
    real = C2.poincare_conv2d_fwd_cpu
    for direct in ("1", "0"):
        monkeypatch.setenv("GEOOPS_POINCARE_DIRECT_CONV", direct)
        monkeypatch.setattr(C2, "poincare_conv2d_fwd_cpu", lambda *a: calls.append(direct) or real(*a))
        y, outs[direct] = _conv_layer_run(x0, z0, b0, dtype, cfg["cgrad"], k, p, s)
        assert _graph_has(y, "PoincareConv2dFn")
    direct = cfg.get("direct", True) and C2.poincare_conv2d_direct_ok(cin, cout, dtype == torch.float64)
    assert calls == (["1"] if direct else [])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(outs["1"][0], outs["0"][0], **tol)
    for a, b_ in zip(outs["1"][1], outs["0"][1]):
        torch.testing.assert_close(a, b_, **tol)


@pytest.mark.parametrize("cfg", [(2, 8, 8, 8, 8, 3, 1, 1, 0), (1, 3, 7, 5, 3, 3, 2, 1, 5), (2, 17, 9, 6, 19, 5, 2, 2, 0),
                                 (1, 16, 1, 1, 16, 1, 1, 0, 0), (3, 6, 7, 9, 6, (3, 1), (2, 1), (1, 0), 7),
                                 (2, 5, 6, 6, 13, 2, 2, 0, 3), (2, 40, 9, 7, 33, 3, 1, 1, 64), (1, 4, 8, 7, 3, 3, 3, 2, 0),
                                 (1, 2, 5, 6, 3, (1, 3), (1, 2), (0, 1), 1), (3, 20, 12, 10, 24, 3, 1, 1, 0)])
def test_conv2d_dz_fixed_tiles_vs_conv2d(cfg):
    """poincare_conv2d_dz_cpu (the weight gradient beyond the direct kernel: fixed GEMM tiles over shifted
    windows of the stride phases of the padded image) against F.conv2d's autograd in float64: strides 1 / 2 / 3
    and mixed, padding 0 / 1 / 2 (also beyond half the kernel), kernels 1 / 2 / 3 / 5 and non-square, channel
    counts off any vector width, a single pixel, chunks of 1 / 3 / 5 / 7 / 64 grid rows (0: the default) with odd
    tails; float32 to rounding."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, Co, k, s, p, rows = cfg
    k, s, p = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p
    g = torch.Generator().manual_seed(5)
    v = torch.randn(B * H * W, C, generator=g, dtype=torch.float64)
    zr = torch.randn(C * k[0] * k[1], Co, generator=g, dtype=torch.float64).requires_grad_(True)
    t_ref, _ = _direct_conv_ref(v, zr, B, H, W, k, p, s, 0.43)
    gt = torch.randn(t_ref.shape, generator=g, dtype=torch.float64)
    (dz_ref,) = torch.autograd.grad((t_ref * gt).sum(), (zr,))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        dz = C2.poincare_conv2d_dz_cpu(gt.to(dtype), v.to(dtype), B, H, W, *k, *p, *s, 0.43, rows)
        assert dz.dtype == dtype and dz.shape == dz_ref.shape
        torch.testing.assert_close(dz.double(), dz_ref, rtol=tol, atol=tol * dz_ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [dict(cin=17, cout=20, k=3, s=1, p=1), dict(cin=17, cout=5, k=3, s=2, p=1),
                                 dict(cin=3, cout=33, k=(3, 1), s=(2, 1), p=(1, 0))])
def test_conv2d_dz_fixed_vs_onednn(monkeypatch, dtype, cfg):
    """PoincareConv2dFn beyond the direct kernel with the fixed-tile weight gradient (GEOOPS_POINCARE_CONV_DZ_FIXED=1)
    against =0 and unset (the default: oneDNN's convolution backward): dz to rounding, the value and the other
    gradients (x, bias, c) bit for bit; the fixed path never asks convolution_backward for the weight gradient."""
    k, s, p, cin, cout = cfg["k"], cfg["s"], cfg["p"], cfg["cin"], cfg["cout"]
    x0 = _img(2, cin, 9, 7, c=0.8, dtype=dtype, seed=6).contiguous(memory_format=torch.channels_last)
    kk = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(2)
    z0 = (torch.randn(cin * kk[0] * kk[1], cout, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    b0 = (torch.randn(cout, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    masks = []
    real = torch.ops.aten.convolution_backward

    class Spy:  # records the output masks of convolution_backward
        def __call__(self, *a):
            masks.append(tuple(a[-1]))
            return real(*a)

    monkeypatch.setattr(torch.ops.aten, "convolution_backward", Spy())
    outs = {}
    for fixed in ("1", "0", None):
        if fixed is None:
            monkeypatch.delenv("GEOOPS_POINCARE_CONV_DZ_FIXED", raising=False)
        else:
            monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_FIXED", fixed)
        y, outs[fixed] = _conv_layer_run(x0, z0, b0, dtype, True, k, p, s)
        assert _graph_has(y, "PoincareConv2dFn")
    assert [m[1] for m in masks] == [False, True, True]  # the default: oneDNN's weight gradient
    torch.testing.assert_close(outs["1"][0], outs["0"][0], rtol=0, atol=0)
    names = ("dx", "dz", "db", "dc")
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for name, a, b_ in zip(names, outs["1"][1], outs["0"][1]):
        if name == "dz":
            torch.testing.assert_close(a, b_, **tol)
        else:
            assert torch.equal(a, b_), name


def test_conv2d_dz_fixed_gradcheck(monkeypatch):
    """fp64 gradcheck of poincare_conv2d through PoincareConv2dFn's MKL-DNN path (GEOOPS_POINCARE_DIRECT_CONV=0)
    with the fixed-tile weight gradient (GEOOPS_POINCARE_CONV_DZ_FIXED=1): stride 2, padding 1, an odd image."""
    monkeypatch.setenv("GEOOPS_POINCARE_DIRECT_CONV", "0")
    monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_FIXED", "1")
    x = _img(1, 3, 5, 4, c=0.8, dtype=torch.float64, seed=8).requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(27, 2, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    b = (torch.randn(2, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    y = gp.poincare_conv2d(x, z, b, c=0.8, kernel_size=3, padding=1, stride=2)
    assert _graph_has(y, "PoincareConv2dFn")
    assert torch.autograd.gradcheck(lambda x_, z_, b_: gp.poincare_conv2d(x_, z_, b_, c=0.8, kernel_size=3,
                                                                           padding=1, stride=2), (x, z, b))


def _flatten_case(shape, channels_last, dtype, seed, gseed):
    """An image batch of `shape` at c = 0.7 with points near the boundary (radius 0.95; channels-last or not) from
    _img(seed), the curvature tensor, and an upstream gradient of the flattened shape from gseed."""
    B, C, H, W = shape
    x0 = _img(B, C, H, W, c=0.7, dtype=dtype, seed=seed, radius=0.95)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(B, C * H * W, generator=torch.Generator().manual_seed(gseed), dtype=torch.float64).to(dtype)
    return x0, torch.tensor(0.7, dtype=dtype), gy


def _flatten_by_knob(monkeypatch, knob, x0, c, gy, fn_node):
    """{value: (y, dx)} of gp.flatten with the env knob set to "1" and "0"; fn_node(value): whether the graph must
    hold the eager PoincareFlattenFn node."""
    outs = {}
    for v in ("1", "0"):
        monkeypatch.setenv(knob, v)
        x = x0.clone().requires_grad_(True)
        y = gp.flatten(x, c=c)
        assert y.shape == gy.shape
        assert _graph_has(y, "PoincareFlattenFn") == fn_node(v)
        outs[v] = (y.detach(), torch.autograd.grad(y, x, gy)[0])
    return outs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 4, 3), True), ((2, 8, 8, 8), True), ((2, 3, 1, 7), False),
                                                 ((1, 1, 5, 5), True)])
def test_flatten_fn_vs_composition(monkeypatch, dtype, shape, channels_last):
    """The eager flatten Function (PoincareFlattenFn: logmap0, reorder + beta, expmap0, project in one node)
    against the composition (GEOOPS_POINCARE_FUSED=0): values and dx; odd sizes, a channel count of 1, a
    non-channels-last image; gradcheck in float64.  A learnable c takes the Function too (session 37: it took the
    composition, so the result depended on grad mode), dc from the composition: gradcheck in x and c."""
    x0, c, gy = _flatten_case(shape, channels_last, dtype, seed=6, gseed=2)
    outs = _flatten_by_knob(monkeypatch, "GEOOPS_POINCARE_FUSED", x0, c, gy, fn_node=lambda v: v == "1")
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b_ in zip(outs["1"], outs["0"]):
        torch.testing.assert_close(a, b_, **tol)
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
    cl = c.clone().requires_grad_(True)
    assert _graph_has(gp.flatten(x0.clone().requires_grad_(True), c=cl), "PoincareFlattenFn")
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda t: gp.flatten(t, c=c), (x0.clone().requires_grad_(True),))
        assert torch.autograd.gradcheck(lambda t, cc: gp.flatten(t, c=cc), (x0.clone().requires_grad_(True), cl))


def _bitwise_grads_repeat(fn, ins, g):
    """The gradients of fn(*ins) from 6 backward calls with 1 / 2 threads and heap churn in between: all equal."""
    import random
    rng, held = random.Random(0), []
    out = fn(*ins)
    runs = []
    for rep in range(6):
        with num_threads(1 + rep % 2):
            heap_churn(rng, held, sizes=(8, 16, 24, 40, 64, 96, 200, 1000))
            runs.append(torch.autograd.grad(out, [t for t in ins if t.requires_grad], g, retain_graph=True))
    for r in runs[1:]:
        for a, e in zip(r, runs[0]):
            assert torch.equal(a, e)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 4, 3), True), ((64, 8, 8, 8), True), ((2, 3, 1, 7), False),
                                                 ((1, 1, 5, 5), True)])
def test_flatten_fused_vs_composition_near_boundary(monkeypatch, dtype, shape, channels_last):
    """PoincareFlattenFn's fused C++ pass each way (poincare_flatten_fwd_cpu / _bwd_cpu) against the composition
    of the stereographic row ops (GEOOPS_POINCARE_FUSED=0): values and dx to rounding, against the float64
    reference too (fp32 error within 2x the composition's + floor); a NaN pixel poisons only its image's row;
    points near the boundary (project active)."""
    W = shape[3]
    x0, c, gy = _flatten_case(shape, channels_last, dtype, seed=8, gseed=4)
    outs = _flatten_by_knob(monkeypatch, "GEOOPS_POINCARE_FUSED", x0, c, gy, fn_node=lambda v: v == "1")
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
    x64 = x0.double().requires_grad_(True)
    y64 = gp.flatten(x64, c=c.double())
    ref = (y64.detach(), torch.autograd.grad(y64, x64, gy.double())[0])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b_, r in zip(outs["1"], outs["0"], ref):
        torch.testing.assert_close(a, b_, **tol)
        if dtype == torch.float32:
            assert_2x_rule(a, b_, r, 1e-7 * r.abs().max().item())
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda t: gp.flatten(t, c=c), (x0[:2].clone().requires_grad_(True),))
    xn = x0.clone()
    xn[0, 0, 0, min(1, W - 1)] = float("nan")
    yn = gp.flatten(xn, c=c)
    assert yn[0].isnan().all() and not yn[1:].isnan().any()


def test_flatten_fused_backward_bitwise_repeatable():
    """The fused flatten's backward gives the same bits with 1 and 2 threads and after heap churn (odd sizes: the
    per-image chunks of the threads, unaligned buffers)."""
    for dtype in (torch.float32, torch.float64):
        x = _img(37, 5, 7, 3, c=0.8, dtype=dtype, seed=3, radius=0.9).contiguous(memory_format=torch.channels_last)
        g = torch.randn(37, 5 * 21, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        _bitwise_grads_repeat(lambda t: gp.flatten(t, c=0.8), [x.requires_grad_(True)], g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,layout", [((3, 5, 4, 3), "cl"), ((64, 8, 8, 8), "cl"), ((2, 3, 1, 7), "nchw"),
                                          ((37, 6), "rows"), ((5, 1), "rows")])
def test_residual_fn_vs_stereographic(monkeypatch, dtype, shape, layout):
    """PoincareResidualFn (mobius_add of two images along dim 1 / two row matrices in one C++ pass each way)
    against the stereographic row op (GEOOPS_POINCARE_FUSED=0): values and gradients to x, y and c,
    fp32 error vs float64 within 2x the row op's (+ floor); gradcheck in float64 with the curvature's gradient;
    nearly opposite points near the boundary."""
    g0 = torch.Generator().manual_seed(5)
    if layout == "rows":
        x0 = gp.expmap0(torch.randn(*shape, generator=g0, dtype=torch.float64) * 1.5, c=0.9)
        y0 = gp.expmap0(torch.randn(*shape, generator=g0, dtype=torch.float64) * 1.5, c=0.9)
        y0[0] = -x0[0] * 0.999
        dim = -1
    else:
        B, C, H, W = shape
        x0 = _img(B, C, H, W, c=0.9, dtype=torch.float64, seed=11, radius=0.97)
        y0 = _img(B, C, H, W, c=0.9, dtype=torch.float64, seed=12, radius=0.97)
        y0[0, :, 0, 0] = -x0[0, :, 0, 0] * 0.999
        if layout == "cl":
            x0, y0 = (t.contiguous(memory_format=torch.channels_last) for t in (x0, y0))
        dim = 1
    gout = torch.randn(shape, generator=g0, dtype=torch.float64)
    outs = {}
    for cpp, dt in (("1", dtype), ("0", dtype), ("1", torch.float64)):
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", cpp)
        x, y = x0.to(dt).requires_grad_(True), y0.to(dt).requires_grad_(True)
        c = torch.tensor(0.9, dtype=dt, requires_grad=True)
        out = gp.mobius_add(x, y, c=c, dim=dim)
        assert _graph_has(out, "PoincareResidualFn") == (cpp == "1")
        assert out.shape == shape
        outs[cpp, dt] = (out.detach(), *torch.autograd.grad(out, (x, y, c), gout.to(dt)))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    for a, b_, r in zip(outs["1", dtype], outs["0", dtype], outs["1", torch.float64]):
        torch.testing.assert_close(a, b_, **tol)
        if dtype == torch.float32:
            assert_2x_rule(a, b_, r, 1e-6 * max(r.abs().max().item(), 1.0))
    if dtype == torch.float64:
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
        xs, ys = x0[:2].clone().requires_grad_(True), y0[:2].clone().requires_grad_(True)
        cs = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, cc: gp.mobius_add(a, b, c=cc, dim=dim), (xs, ys, cs))


def test_residual_backward_bitwise_repeatable():
    """The residual's backward (dx, dy and the row-ordered dc) gives the same bits with 1 and 2 threads and
    after heap churn."""
    for dtype in (torch.float32, torch.float64):
        x = _img(33, 8, 9, 7, c=0.9, dtype=dtype, seed=1).contiguous(memory_format=torch.channels_last)
        y = _img(33, 8, 9, 7, c=0.9, dtype=dtype, seed=2).contiguous(memory_format=torch.channels_last)
        c = torch.tensor(0.9, dtype=dtype, requires_grad=True)
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        _bitwise_grads_repeat(lambda a, b, cc: gp.mobius_add(a, b, c=cc, dim=1),
                              [x.requires_grad_(True), y.requires_grad_(True), c], g)


def test_poincare_ball_cached_curvature():
    """A fixed PoincareBall computes c once per value of its parameter (the same checked tensor each call, a
    new one after the parameter changes or the cached tensor is modified in place); a learnable one builds c
    per call with its gradient; the layers give the same values as with a c computed per call (unmarked)."""
    ball = gnn.PoincareBall(0.8)
    c1, c2 = ball(), ball()
    assert c1 is c2 and not c1.requires_grad
    torch.testing.assert_close(c1, torch.nn.functional.softplus(torch.tensor(0.8)))
    assert gp._curv("t", c1, torch.zeros(2)) is c1 and gp._k("t", c1, torch.zeros(2)) is gp._k("t", c1, torch.zeros(2))
    with torch.no_grad():
        ball.value.fill_(1.3)
    c3 = ball()
    assert c3 is not c1
    torch.testing.assert_close(c3, torch.nn.functional.softplus(torch.tensor(1.3)))
    torch.testing.assert_close(gp._k("t", c3, torch.zeros(2)), -c3)
    c3.mul_(2.0)  # the caller modified the cached tensor: neither the cache nor its check mark hold any more
    assert ball() is not c3 and gp._k("t", c3, torch.zeros(2)).item() == pytest.approx(-c3.item())
    # an in-place change through .data keeps the parameter's version counter: the value is part of the key (the
    # cached c of the old value was returned before, wrong layer outputs)
    c4 = ball()
    ball.value.data.fill_(3.0)
    torch.testing.assert_close(ball(), torch.nn.functional.softplus(torch.tensor(3.0)))
    assert ball() is not c4
    x3 = _img(2, 3, 2, 2, c=3.0, seed=4)
    torch.testing.assert_close(gnn.PoincareReLU(ball)(x3), gp.poincare_relu(x3, c=float(torch.nn.functional.softplus(
        torch.tensor(3.0))), dim=1))
    with torch.no_grad():
        ball.value.fill_(-200.0)  # softplus underflows to 0: not marked, the checks raise per call
    with pytest.raises(ValueError, match="c must be > 0"):
        gp.poincare_relu(torch.zeros(2, 3), c=ball())
    lball = gnn.PoincareBall(0.8, requires_grad=True)
    assert lball() is not lball() and lball().requires_grad
    x = _img(2, 3, 4, 4, c=0.5, seed=2).requires_grad_(True)
    gnn.PoincareReLU(lball)(x).sum().backward()
    assert lball.value.grad is not None and lball.value.grad.abs().item() > 0
    fixed = gnn.PoincareBall(0.5)
    net = torch.nn.Sequential(gnn.PoincareReLU(fixed), gnn.PoincareFlatten(fixed))
    assert fixed() is fixed()
    cf = torch.nn.functional.softplus(torch.tensor(0.5))  # as the ball computes it, without the mark
    assert not hasattr(cf, "_geoops_checked")
    assert torch.equal(net(x.detach()), gp.flatten(gp.poincare_relu(x.detach(), c=cf, dim=1), c=cf))


@pytest.mark.parametrize("fused", ["1", "0"])
def test_conv2d_output_inplace(monkeypatch, fused):
    """The conv layer's output may be modified in place (PoincareConv2dFn returns a plain channels-last tensor,
    not a view made inside the Function): the gradients then match the composition's."""
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", fused)
    x0 = _img(2, 3, 5, 4, c=0.8, dtype=torch.float64, seed=8)
    z0 = torch.randn(27, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.4
    x, z = x0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    y = gp.poincare_conv2d(x, z, None, c=0.8, kernel_size=3, padding=1)
    assert not y._is_view() or fused == "0"
    assert y.shape == (2, 4, 5, 4)
    y.mul_(torch.linspace(0.5, 1.5, 4, dtype=torch.float64).view(1, 4, 1, 1))
    gx, gz = torch.autograd.grad((y * y).sum(), (x, z))
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    xr, zr = x0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    yr = gp.poincare_conv2d(xr, zr, None, c=0.8, kernel_size=3, padding=1) * torch.linspace(
        0.5, 1.5, 4, dtype=torch.float64).view(1, 4, 1, 1)
    torch.testing.assert_close(y.detach(), yr.detach(), rtol=1e-10, atol=1e-12)
    for a, b_ in zip((gx, gz), torch.autograd.grad((yr * yr).sum(), (xr, zr))):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- the batch norm's row sums on SIMD lanes of rows
# (csrc/cpu/poincare_bn.cpp: bn_lanes / Cols; GEOOPS_POINCARE_BN_LANES=0 keeps the per-row reductions)


def _bn_kernel_outputs(x, b, g, gm, c, eps=4e-3, M=None):
    """Every kernel of the training layer and of the row op on x: the layer's forward (u, m, S, sums) and backward
    (dx, dc), the row op's forward and backward on u (identity M, or M)."""
    from geoops._backend import compiled

    C = compiled()
    u, m, S, mid = C.poincare_bn_layer_fwd_cpu(x, c)
    dx, dc = C.poincare_bn_layer_bwd_cpu(g, x, m, mid, gm, c)
    MM = x.new_empty(0) if M is None else M
    ct = torch.tensor(c, dtype=x.dtype)
    y = C.poincare_bn_rows_fwd_cpu(u, MM, b, ct, eps)
    gv, gM, gb, gc = C.poincare_bn_rows_bwd_cpu(g, u, MM, b, ct, eps)
    return [u, m, torch.tensor(S), mid, dx, torch.tensor(dc), y, gv, gM, gb, gc]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", list(range(1, 18)))  # D = 17: past kBnLaneMaxD, the row path either way
def test_bn_lanes_vs_row_sums(monkeypatch, dtype, D):
    """The batch norm kernels' rows-on-lanes sums (gathers per column, masked partial vectors, lane sums in
    order) vs the per-row reductions (GEOOPS_POINCARE_BN_LANES=0): N = 2, 7 (one partial vector), 9, 263 (a full
    256-row block and a partial one), with one row near the boundary; both the layer and the row op (with M).
    (N = 1 is degenerate: u = 0, the gradients rounding noise.)"""
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=3e-6, atol=1e-7)
    for N in (2, 7, 9, 263):
        x, b, g, gm = bn_rows(N, D, dtype, 100 * D + N)
        gM = torch.Generator().manual_seed(D + N)
        M = (torch.eye(D, dtype=torch.float64) * 0.8 + torch.randn(D, D, generator=gM, dtype=torch.float64) * 0.1)
        M = M.to(dtype)
        for MM in (None, M):
            monkeypatch.setenv("GEOOPS_POINCARE_BN_LANES", "0")
            rows = _bn_kernel_outputs(x, b, g, gm, 0.9, M=MM)
            monkeypatch.delenv("GEOOPS_POINCARE_BN_LANES")
            lanes = _bn_kernel_outputs(x, b, g, gm, 0.9, M=MM)
            # fp32 outputs: the sums are double either way, so only the last rounding may differ; the dx and
            # dc of the near-boundary row scale with lam^2 ~ 1e6: relative to the largest entry
            assert_close_to_largest(lanes, rows, tag=(N, MM is not None), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [3, 8, 16])
def test_bn_lanes_bitwise_reproducible(dtype, D):
    """Rows on lanes: every sum in a fixed order, so the kernels agree bit for bit on the same data at any buffer
    alignment (the rows copied to 4-byte offsets in a larger buffer)."""
    N = 301
    x, b, g, gm = bn_rows(N, D, dtype, D)
    outs = []
    for off in range(4):
        xs, gs = offset_copies(off, x, g)
        outs.append(_bn_kernel_outputs(xs, b, gs, gm, 0.9))
    for o in outs[1:]:
        for a, r in zip(o, outs[0]):
            assert torch.equal(a, r)


@pytest.mark.parametrize("D", [1, 5, 8, 16])
def test_bn_lanes_nan_stays_in_its_row(D):
    """A NaN in one row of the row op's input (forward) or gradient (backward) reaches only that row's outputs
    (and the reductions over rows): no lane leaks into its neighbours; and a NaN row of the layer's input makes the
    batch midpoint NaN, as the per-row path does."""
    from geoops._backend import compiled

    C = compiled()
    N, r = 21, 9  # row 9: lane 1 of the second vector of 8 lanes
    x, b, g, gm = bn_rows(N, D, torch.float32, D)
    ct = torch.tensor(0.9)
    none = x.new_empty(0)
    u = x.clone()
    u[r, 0] = float("nan")
    y = C.poincare_bn_rows_fwd_cpu(u, none, b, ct, 4e-3)
    assert torch.isnan(y[r]).all() and torch.isfinite(torch.cat((y[:r], y[r + 1:]))).all()
    gn = g.clone()
    gn[r, -1] = float("nan")
    gv, _, gb, _ = C.poincare_bn_rows_bwd_cpu(gn, x, none, b, ct, 4e-3)
    assert torch.isnan(gv[r]).all() and torch.isfinite(torch.cat((gv[:r], gv[r + 1:]))).all()
    assert torch.isnan(gb).all()
    un, m, S, mid = C.poincare_bn_layer_fwd_cpu(u, 0.9)
    assert torch.isnan(m).all() and torch.isnan(un).all() and math.isnan(S)


@pytest.mark.parametrize("D", [2, 8, 16])
@pytest.mark.parametrize("training", [True, False])
def test_bn_lanes_fp32_accuracy_vs_fp64(D, training):
    """fp32 layer (train: BnLayerFn; eval: the row op with the running statistics) vs the fp64 reference: values
    and gradients within 2x the eager reference's own fp32 error (+ a floor)."""
    torch.manual_seed(D)
    N = 777
    x64 = gp.expmap0(torch.randn(N, D, dtype=torch.float64) * 0.9, c=0.9)
    bias64 = torch.randn(D, dtype=torch.float64) * 0.2
    w64 = torch.tensor(0.8, dtype=torch.float64)
    rm64 = gp.expmap0(torch.randn(D, dtype=torch.float64) * 0.2, c=0.9)
    rv64 = torch.tensor(0.7, dtype=torch.float64)
    gy = torch.randn(N, D, dtype=torch.float64)

    def run(f, dtype):
        x = x64.to(dtype).requires_grad_(True)
        bias = bias64.to(dtype).requires_grad_(True)
        w = w64.to(dtype).requires_grad_(True)
        c = torch.tensor(0.9, dtype=dtype, requires_grad=True)
        y = f(x, bias, w, c, dtype)
        return [y.detach().double(), *(t.double() for t in torch.autograd.grad(y, (x, bias, w, c), gy.to(dtype)))]

    def ours(x, bias, w, c, dtype):
        return gp.batch_norm(x, bias, w, c=c, running_mean=None if training else rm64.to(dtype),
                             running_var=None if training else rv64.to(dtype), training=training)

    def eager(x, bias, w, c, dtype):
        if training:
            return ref.batch_norm(x, bias, w, c)[0]
        return ref.batch_norm(x, bias, w, c, rm64.to(dtype), rv64.to(dtype))[0]

    truth = run(eager, torch.float64)
    r32 = run(eager, torch.float32)
    o32 = run(ours, torch.float32)
    for i, (o, r, t) in enumerate(zip(o32, r32, truth)):
        # floor: 1e-6 of the largest entry; the scalar weight / curvature gradients (i = 3, 4) are sums over N x D
        # terms that the eval path's fp32 torch ops (the transport matrix, u^T gv) accumulate in float: 1e-5
        assert_2x_rule(o, r, t, (1e-5 if i >= 3 else 1e-6) * t.abs().max().clamp_min(1), tag=(i,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [8, 16, 17, 33])
def test_batchnorm_layer_same_bits_any_thread_count(dtype, D):
    """batch_norm's output and every gradient, training (BnLayerFn) and eval (the row op with M), the same bits with
    1 and 2 threads.  Session 24 audit: the products u M, u^T gv and gv M^T went through MKL's at::mm / addmm, whose
    result at small N depended on the thread count (D > 16 train and eval, the eval backward's dx at D = 16)."""
    out = []
    for nt in (1, 2):
        with num_threads(nt):
            runs = []
            for N in (5, 17, 33):
                x, b, g, _ = bn_rows(N, D, dtype, 7 * D + N)
                rm = gp.expmap0(b.flip(0) * 0.5, c=0.9)
                for training in (True, False):
                    xs, bs = x.clone().requires_grad_(True), (b * 0.3).requires_grad_(True)
                    w = torch.tensor(1.3, dtype=dtype, requires_grad=True)
                    c = torch.tensor(0.9, dtype=dtype, requires_grad=True)
                    y = gp.batch_norm(xs, bs, w, c=c, running_mean=None if training else rm,
                                      running_var=None if training else torch.tensor(0.7, dtype=dtype),
                                      training=training)
                    runs += [y.detach(), *torch.autograd.grad(y, (xs, bs, w, c), g)]
            out.append(runs)
    for i, (a, b) in enumerate(zip(*out)):
        assert torch.equal(a, b), (i, (a.double() - b.double()).abs().max().item())


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="glibc malloc (Linux) only")
@pytest.mark.parametrize("D", [4, 8, 20])
def test_bn_kernels_bitwise_reproducible_heap_and_threads(D):
    """The CI failure of test_batchnorm_fused_grads_fp64_and_gradcheck ("Backward is not reentrant"): the layer's
    backward dx differed in the last bit between two identical calls when the heap had moved.  Every batch norm
    kernel must agree bit for bit on identical inputs after heap churn, at any buffer alignment, and with 1 or
    2 threads (N = 5000: several row chunks, split differently per thread count)."""
    import random

    rng, held = random.Random(D), []
    for N in (12, 5000):
        for seed in range(6 if N == 12 else 2):
            x, b, g, gm = bn_rows(N, D, torch.float64, seed)
            assert_bitwise_repeatable(lambda xs, gs: _bn_kernel_outputs(xs, b, gs, gm, 0.9), (x, g),
                                      12 if N == 12 else 4, rng, held, tag=(N, seed))


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="glibc malloc (Linux) only")
def test_batchnorm_backward_reentrant_after_heap_churn():
    """gradcheck's reentrancy check of test_batchnorm_fused_grads_fp64_and_gradcheck (12 x 4, fp64) made likely
    to fail: the full Jacobian by 48 backward calls, twice, with heap churn before every call (kernels whose sums
    follow the heap alignment differ in ~1 of 5 inputs here)."""
    import random

    rng, held = random.Random(12), []
    for seed in range(12):
        g0 = torch.Generator().manual_seed(seed)
        c = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        x = gp.expmap0(torch.randn(12, 4, generator=g0, dtype=torch.float64) * 0.6, c=0.9)
        x = x.detach().requires_grad_(True)
        bias = (torch.randn(4, generator=g0, dtype=torch.float64) * 0.3).requires_grad_(True)
        w = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        y = gp.batch_norm(x, bias, w, c=c)

        def jacobian():
            rows, g = [], torch.zeros_like(y)
            for j in range(y.numel()):
                heap_churn(rng, held)
                g.view(-1).zero_()
                g.view(-1)[j] = 1
                gs = torch.autograd.grad(y, (x, bias, w, c), g, retain_graph=True)
                rows.append(torch.cat([t.reshape(-1) for t in gs]))
            return torch.stack(rows)

        assert torch.equal(jacobian(), jacobian()), seed


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="glibc malloc (Linux) only")
@pytest.mark.parametrize("dtype, D, knobs", [(torch.float32, 8, {}), (torch.float32, 5, {}),
                                             (torch.float32, 8, {"GEOOPS_POINCARE_RELU_F32": "0"}),
                                             (torch.float32, 20, {}), (torch.float64, 8, {})])
def test_relu_kernels_bitwise_reproducible_heap_and_threads(monkeypatch, dtype, D, knobs):
    """The ReLU's forward and backward (gx and dL/dc) agree bit for bit on identical inputs after heap churn, at
    any buffer alignment and with 1 or 2 threads: the float row lanes (32-row blocks), the double path, fp64.
    N = 9000 rows: several row chunks (each split into blocks and a partial tail the same way whatever the thread
    count), with a tail block."""
    import random

    from geoops import _backend

    for kk, vv in knobs.items():
        monkeypatch.setenv(kk, vv)
    C = _backend.compiled()
    rng, held = random.Random(D), []
    c = torch.tensor(0.9, dtype=dtype)
    for N in (77, 9000):
        g0 = torch.Generator().manual_seed(N + D)
        x = gp.expmap0(torch.randn(N, D, generator=g0, dtype=torch.float64) * 0.8, c=0.9).to(dtype)
        g = torch.randn(N, D, generator=g0, dtype=torch.float64).to(dtype)
        assert_bitwise_repeatable(
            lambda xs, gs: (C.poincare_relu_fwd_cpu(xs, c, 4e-3), *C.poincare_relu_bwd_cpu(gs, xs, c, 4e-3)),
            (x, g), 8, rng, held, tag=(N,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", [dict(cin=8, cout=8, k=3, s=1, p=1, cgrad=True, cl=True),     # the digits layer
                                 dict(cin=1, cout=8, k=3, s=1, p=1, cgrad=True, cl=False),
                                 dict(cin=13, cout=5, k=3, s=2, p=1, cgrad=False, cl=True),
                                 dict(cin=3, cout=4, k=1, s=1, p=0, cgrad=False, cl=False),
                                 dict(cin=8, cout=8, k=3, s=1, p=1, cgrad=False, cl=True),
                                 dict(cin=17, cout=6, k=3, s=1, p=1, cgrad=True, cl=True)])  # MKL-DNN conv
def test_conv2d_logmap0_bwd_vs_stereo(monkeypatch, dtype, cfg):
    """PoincareConv2dFn's logmap0 backward by its own row pass (poincare_conv2d_logmap0_bwd_cpu) against the
    composition (GEOOPS_POINCARE_FUSED=0: the stereographic kernel's logmap0) and float64: values and the gradients
    of x, z, bias and c; points at the origin, tiny and near the ball's boundary; which path ran."""
    from geoops import _backend
    C2 = _backend.compiled()
    k, s, p, cin, cout = cfg["k"], cfg["s"], cfg["p"], cfg["cin"], cfg["cout"]
    x0 = _img(2, cin, 7, 6, c=0.8, dtype=torch.float64, seed=6, radius=0.999)
    x0[0, :, 0, 0] = 0.0                   # the origin: the series side, z = 0
    x0[0, :, 1, 1] *= 1e-6 / x0[0, :, 1, 1].norm().clamp_min(1e-30)  # tiny
    x0[1, :, 2, 3] *= 0.9999 / math.sqrt(0.8) / x0[1, :, 2, 3].norm()  # |x| = 0.9999 of the radius
    x0 = x0.to(dtype)
    if cfg["cl"]:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(7)
    z0 = (torch.randn(cin * k * k, cout, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    b0 = (torch.randn(cout, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    calls = []
    real = C2.poincare_conv2d_logmap0_bwd_cpu
    monkeypatch.setattr(C2, "poincare_conv2d_logmap0_bwd_cpu", lambda *a: calls.append(a[4:]) or real(*a))
    outs = {}
    for knob in ("1", "0"):
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", knob)
        y, outs[knob] = _conv_layer_run(x0, z0, b0, dtype, cfg["cgrad"], k, p, s)
        assert _graph_has(y, "PoincareConv2dFn") == (knob == "1")
    assert calls == ([] if cfg["cgrad"] else [(True, False)])  # a learnable c keeps the stereographic kernel
    if dtype == torch.float64:
        torch.testing.assert_close(outs["1"][0], outs["0"][0], rtol=1e-12, atol=1e-14)
        for a, b_ in zip(outs["1"][1], outs["0"][1]):
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)
        return
    # float32: the fused path's error against float64 at most 2x the composition's (+ a floor)
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")
    _, o64 = _conv_layer_run(x0.double(), z0.double(), b0.double(), torch.float64, cfg["cgrad"], k, p, s)
    new, old = [outs["1"][0]] + list(outs["1"][1]), [outs["0"][0]] + list(outs["0"][1])
    ref64 = [o64[0]] + list(o64[1])
    for a, b_, r in zip(new, old, ref64):
        ea = (a.double() - r).abs().max().item()
        eb = (b_.double() - r).abs().max().item()
        assert ea <= 2 * eb + 1e-6 * (1 + r.abs().max().item()), (ea, eb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_logmap0_kernel(dtype):
    """poincare_conv2d_logmap0_bwd_cpu alone (the factor from v = logmap0(x), no transcendental): dx and the
    per-row dk against the stereographic backward (float64 tight, float32 to rounding), rows at the origin, tiny,
    on both sides of the series cut |z| = 0.05, near the boundary and just outside the ball (the clamped side);
    1 vs 2 threads and shifted (unaligned) copies bit for bit."""
    from geoops import _backend
    from geoops.poincare import _LOGMAP0
    C2 = _backend.compiled()
    g = torch.Generator().manual_seed(11)
    c = 0.7
    for C in (1, 3, 8, 16, 19):
        N = 1000
        x = torch.randn(N, C, generator=g, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True) * torch.rand(N, 1, generator=g, dtype=torch.float64) / math.sqrt(c)
        x[0] = 0.0
        x[1] *= 1e-9
        x[2] *= 0.99999 / math.sqrt(c) / x[2].norm()
        x[3] *= 1.001 / math.sqrt(c) / x[3].norm()  # outside: the clamped branch
        x[4] *= math.sqrt(0.0499999 / c) / x[4].norm()  # |z| just below / above the series cut
        x[5] *= math.sqrt(0.0500001 / c) / x[5].norm()
        x = x.to(dtype)
        gv = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype)
        k1 = torch.tensor([-c], dtype=torch.float64)
        seps = gp._ref.default_eps(dtype)
        v = C2.stereo_fwd_cpu(_LOGMAP0, x, None, k1, None, seps)
        gx, gk = C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, True, True)
        gxr, _, gkr, _ = C2.stereo_bwd_cpu(_LOGMAP0, gv, x, None, k1, None, seps, 5)
        if dtype == torch.float64:
            torch.testing.assert_close(gx, gxr, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(gk, gkr.reshape(gk.shape), rtol=1e-9, atol=1e-12)
            gx_only = C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, True, False)[0]
            torch.testing.assert_close(gx_only, gxr, rtol=1e-10, atol=1e-13)
        else:  # against the float64 backward: at most 2x the stereographic float32 kernel's error (+ a floor)
            x64, g64 = x.double(), gv.double()
            gx64, _, gk64, _ = C2.stereo_bwd_cpu(_LOGMAP0, g64, x64, None, k1, None, 1e-15, 5)
            # (dx alone takes A from v: a few float roundings, floor 6e-7 of the row's largest entry)
            gx_only = C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, True, False)[0]
            # a dx row's scale: its largest entry or the size of the terms a g, f x it sums (a = |v| / |x|), whichever
            # is larger: outside the ball at C = 1 the two terms cancel to an exact 0 (the clamped side's radial
            # gradient), which every float kernel misses by a rounding of a g (~1e-9 here)
            a64 = (v.double().norm(dim=-1) / x.double().norm(dim=-1)).nan_to_num(nan=1.0).unsqueeze(-1)
            terms = a64 * g64.abs().amax(dim=-1, keepdim=True)
            for ours, theirs, r, fl in ((gx, gxr, gx64, 2e-7), (gk, gkr.reshape(gk.shape), gk64.reshape(gk.shape), 2e-7),
                                        (gx_only, gxr, gx64, 6e-7)):
                scale = torch.maximum(r.abs().amax(dim=-1, keepdim=True), terms) if r.dim() == 2 else r.abs()
                ok = torch.isfinite(r) & (scale > 0) if r.dim() == 1 else torch.isfinite(r)
                eo = ((ours.double() - r).abs() / (scale + 1e-30))[ok].max().item()
                et = ((theirs.double() - r).abs() / (scale + 1e-30))[ok].max().item()
                assert eo <= 2 * et + fl, (C, eo, et)
        assert torch.equal(C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, False, True)[1], gk)
        with num_threads(1 if torch.get_num_threads() > 1 else 2):
            xs = torch.empty(N * C + 3, dtype=dtype)[3:].view(N, C).copy_(x)
            gs = torch.empty(N * C + 1, dtype=dtype)[1:].view(N, C).copy_(gv)
            vs = torch.empty(N * C + 2, dtype=dtype)[2:].view(N, C).copy_(v)
            gx2, gk2 = C2.poincare_conv2d_logmap0_bwd_cpu(gs, xs, vs, c, True, True)
        assert torch.equal(gx, gx2) and torch.equal(gk, gk2)


@pytest.mark.parametrize("C", [1, 3, 8, 13, 16, 19, 32])
@pytest.mark.parametrize("N", [1, 7, 16, 23, 1001])
def test_conv2d_logmap0_tr8_same_bits(monkeypatch, C, N):
    """AVX2 builds: the logmap0 backward's float32 row sums on 8 row lanes (8 x 8 transposes of 8 columns, masked
    past C; the scalar loop's fmas in its order) vs GEOOPS_POINCARE_LOGMAP0_TR8=0 (the scalar loop): dx and dk bit
    for bit, with partial 8- and 16-row groups and partial column chunks.  (Other builds: the knob changes nothing,
    the same assertion holds.)"""
    from geoops import _backend
    from geoops.poincare import _LOGMAP0
    C2 = _backend.compiled()
    g = torch.Generator().manual_seed(C * 1000 + N)
    c = 0.7
    x = torch.randn(N, C, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True) * torch.rand(N, 1, generator=g, dtype=torch.float64) / math.sqrt(c)).float()
    gv = torch.randn(N, C, generator=g).float()
    k1 = torch.tensor([-c], dtype=torch.float64)
    v = C2.stereo_fwd_cpu(_LOGMAP0, x, None, k1, None, gp._ref.default_eps(torch.float32))
    on = C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, True, True)
    monkeypatch.setenv("GEOOPS_POINCARE_LOGMAP0_TR8", "0")
    off = C2.poincare_conv2d_logmap0_bwd_cpu(gv, x, v, c, True, True)
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])
    assert torch.isfinite(on[0]).all() and torch.isfinite(on[1]).all()


@pytest.mark.parametrize("cgrad", [False, True])
def test_conv2d_logmap0_bwd_gradcheck(cgrad):
    """gradcheck (float64) of the conv layer with the logmap0 backward's row pass on (a fixed c: the row pass;
    a learnable c: the stereographic kernel)."""
    x = _img(1, 3, 4, 3, c=0.8, dtype=torch.float64, seed=9, radius=0.95).requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(27, 4, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    b = (torch.randn(4, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=cgrad)
    f = lambda x, z, b, c: gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=1)
    assert _graph_has(f(x, z, b, c), "PoincareConv2dFn")
    assert torch.autograd.gradcheck(f, (x, z, b, c) if cgrad else (x, z, b, c.detach()))


@pytest.mark.parametrize("cfg", [(64, 8, 8, 8, 8, 3, 1, 1, 1), (64, 1, 8, 8, 8, 3, 1, 1, 1),
                                 (2, 5, 9, 7, 3, 3, 2, 1, 1), (3, 13, 6, 5, 1, 3, 1, 0, 1),
                                 (1, 3, 7, 9, 8, 5, 1, 2, 1), (2, 4, 5, 6, 7, 1, 1, 0, 1),
                                 (2, 9, 7, 6, 6, 3, 2, 1, 2), (40, 16, 9, 9, 5, 3, 1, 1, 1),
                                 (1, 2, 1, 1, 4, 3, 1, 1, 1)])
def test_conv2d_direct_dz_pairs(monkeypatch, cfg):
    """dz with two output pixels per vector (float32, C >= 4, C_out <= 8, column stride 1; conv_dz_pairs_run) against the
    per-pixel kernel (GEOOPS_POINCARE_CONV_DZ_PAIRS=0) to rounding and against float64 autograd: odd widths (a
    row's last pixel alone), channel blocks of 8 / 4 / 1, kernels 1 / 3 / 5, padding 0 / 1 / 2, row stride 2 (column
    stride 2 keeps the per-pixel kernel), several chunks; 1 and 2 threads and unaligned inputs bit for bit; a NaN
    in an input column that only a masked-off lane reads does not reach dz."""
    from geoops import _backend
    C2 = _backend.compiled()
    B, C, H, W, Co, k, sy, p, sx = cfg
    v, z, gt, gU, Ho, Wo = _direct_conv_inputs(B, C, H, W, Co, k, p, sy, sx, seed=21)
    run = lambda vv, gg: C2.poincare_conv2d_bwd_cpu(gg, gU, vv, z, B, H, W, k, k, p, p, sy, sx, 0.7, False, True)[1]
    outs = {}
    for n in (1, 2):
        with num_threads(n):
            for knob in ("1", "0"):
                monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_PAIRS", knob)
                outs[n, knob] = run(v, gt)
            monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_PAIRS", "1")
            vs = torch.empty(v.numel() + 1)[1:].view_as(v).copy_(v)
            gs = torch.empty(gt.numel() + 3)[3:].view_as(gt).copy_(gt)
            outs[n, "u"] = run(vs, gs)
    pairs_ran = geoops._backend.build_isa() == "AVX512" and sx == 1 and Co <= 8 and C >= 4
    assert torch.equal(outs[1, "1"], outs[2, "1"]) and torch.equal(outs[1, "1"], outs[1, "u"])
    assert torch.equal(outs[2, "1"], outs[2, "u"])
    if pairs_ran and B * Ho * Wo * C * k * k > 2000:
        assert not torch.equal(outs[1, "1"], outs[1, "0"])  # the pairs' summation order: some bits differ
    torch.testing.assert_close(outs[1, "1"], outs[1, "0"], rtol=2e-5, atol=2e-5)
    vr = v.double().requires_grad_(True)
    zr = z.double().requires_grad_(True)
    t_ref, U_ref = _direct_conv_ref(vr, zr, B, H, W, (k, k), (p, p), (sy, sx), 0.7)
    (dz_ref,) = torch.autograd.grad((t_ref * gt.double()).sum(), (zr,))
    torch.testing.assert_close(outs[2, "1"].double(), dz_ref, rtol=1e-4, atol=1e-4)
    if pairs_ran and Wo % 2 == 1 and p == 1 and k == 3:
        # the last input column: through tap kx = 0 only the masked-off second lane of a row's last pair reads it
        vn = v.clone().view(B, H, W, C)
        vn[:, :, -1, :] = float("nan")
        nan_pairs = torch.isnan(run(vn.view(-1, C), gt))
        monkeypatch.setenv("GEOOPS_POINCARE_CONV_DZ_PAIRS", "0")
        nan_rows = torch.isnan(run(vn.view(-1, C), gt))
        assert torch.equal(nan_pairs, nan_rows) and not nan_pairs.all()


@pytest.mark.build_relative("compiled against eager in one build; every geoops._C entry point it reads (poincare_conv2d_*, "
                            "poincare_fc_rows_*, poincare_bn_*, poincare_midpoint_sums_*, stereo_*) is read by this "
                            "file's eager tests, which the portable stage runs")
def test_conv_bn2d_train_compile_inductor_dynamic():
    """torch.compile(dynamic=True) with Inductor of PoincareConv2d -> PoincareBatchNorm2d in train mode, two image
    sizes (one compiled graph, symbolic sizes): outputs, gradients and the running statistics as eager.  Before
    session 25 Inductor failed on the convolution's composition (what compiled calls run): its channels-last
    (B, C, H, W) view of the tangent pixels, saved for the backward, has symbolic strides (3 s^2, 1, 3 s, 3) that
    Inductor's stride-order sort (no shape environment) cannot order ("cannot determine truth value of
    Relational"); under compilation the view is now made contiguous."""
    def model():
        torch.manual_seed(0)
        ball = gnn.PoincareBall(1.0)
        return torch.nn.Sequential(gnn.PoincareConv2d(3, 4, 3, ball, padding=1), gnn.PoincareBatchNorm2d(4, ball)).train()

    eager, comp = model(), model()
    f = torch.compile(comp, dynamic=True)
    for B, H in ((2, 6), (3, 5)):
        x = _img(B, 3, H, H)
        g = torch.randn(B, 4, H, H)
        ye, yc = eager(x), f(x)
        torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-5)
        ge = torch.autograd.grad(ye, [p for p in eager.parameters() if p.requires_grad], g)
        gc = torch.autograd.grad(yc, [p for p in comp.parameters() if p.requires_grad], g)
        for a, b in zip(gc, ge):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(comp[1].running_mean, eager[1].running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(comp[1].running_var, eager[1].running_var, rtol=1e-4, atol=1e-6)


@pytest.mark.build_relative("compiled against eager in one build; every geoops._C entry point it reads (poincare_conv2d_*, "
                            "poincare_fc_rows_*, stereo_*) is read by this file's eager tests, which the portable stage runs")
@pytest.mark.parametrize("case", ["conv", "conv_x_no_grad", "conv_relu", "conv_stride2_learn_c", "conv_wide_pad"])
def test_conv_compile_inductor_dynamic_two_sizes(case):
    """torch.compile(dynamic=True) with Inductor of PoincareConv2d alone / -> PoincareReLU, two image sizes through
    one compiled graph: outputs and the gradients to x, the weights, the bias (and a learnable curvature) as eager.
    Before session 26 the backward at the second size failed an Inductor stride assertion with the first call's
    strides of the saved tangent image (Inductor's CPU convolution layout optimisation re-strides a saved 4-D
    activation to channels last and gives the backward its concrete first-call strides), and with x requiring
    grad the forward failed to sort a saved 4-D view's symbolic strides ("cannot determine truth value of
    Relational"); compiled calls now run t and U through geoops::poincare_conv_rows_fwd / _bwd on 2-D rows."""
    torch._dynamo.reset()
    kw = dict(padding=1)
    if case == "conv_stride2_learn_c":
        kw = dict(padding=1, stride=2)
    if case == "conv_wide_pad":
        kw = dict(padding=2)  # 2 * padding > kernel: the box sum as a convolution with a constant kernel

    def model():
        torch.manual_seed(0)
        ball = gnn.PoincareBall(1.0, requires_grad=case == "conv_stride2_learn_c")
        mods = [gnn.PoincareConv2d(3, 4, 3, ball, id_init=False, **kw)]
        if case == "conv_relu":
            mods.append(gnn.PoincareReLU(ball))
        return torch.nn.Sequential(*mods)

    eager, comp = model(), model()
    f = torch.compile(comp, dynamic=True)
    for B, H, W in ((2, 6, 7), (3, 5, 4)):  # (a third size, B = 1, was one more compile: 0 / 1 specialise)
        x = _img(B, 3, H, W, seed=B + H)
        xg = case != "conv_x_no_grad"  # (the stride assertion; with x's gradient the forward's sort error)
        xe, xc = x.clone().requires_grad_(xg), x.clone().requires_grad_(xg)
        ye, yc = eager(xe), f(xc)
        torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-5)
        g = torch.randn(ye.shape, generator=torch.Generator().manual_seed(H))
        pe = [xe] * xg + [p for p in eager.parameters() if p.requires_grad]
        pc = [xc] * xg + [p for p in comp.parameters() if p.requires_grad]
        assert len(pc) == (4 if case == "conv_stride2_learn_c" else 2 + xg)
        for a, b in zip(torch.autograd.grad(yc, pc, g), torch.autograd.grad(ye, pe, g)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_conv_rows_ops_opcheck():
    """geoops::poincare_conv_rows_fwd / _bwd (the compiled convolution's t and U on 2-D rows): opcheck (fake
    impl's shapes and strides, schema, autograd registration) and values against the patch matrix."""
    from geoops._ops import poincare as pops

    g = torch.Generator().manual_seed(3)
    for B, H, W, C, Co, k, s, p in ((2, 5, 6, 3, 4, (3, 3), (1, 1), (1, 1)), (1, 7, 4, 2, 3, (3, 2), (2, 1), (2, 1))):
        v = torch.randn(B * H * W, C, generator=g, dtype=torch.float64)
        z = torch.randn(C * k[0] * k[1], Co, generator=g, dtype=torch.float64)
        args = (v, z, [B, H, W], list(k), list(s), list(p), 0.7)
        torch.library.opcheck(torch.ops.geoops.poincare_conv_rows_fwd.default, args)
        t, U = torch.ops.geoops.poincare_conv_rows_fwd.default(*args)
        img = v.view(B, H, W, C).permute(0, 3, 1, 2)
        patches = torch.nn.functional.unfold(img, k, padding=p, stride=s).transpose(1, 2).reshape(-1, C * k[0] * k[1])
        torch.testing.assert_close(t, 0.7 * patches @ z)
        torch.testing.assert_close(U, 0.49 * (patches * patches).sum(-1))
        gt, gU = torch.randn(t.shape, generator=g, dtype=torch.float64), torch.randn(U.shape, generator=g, dtype=torch.float64)
        for mask in (1, 2, 3):
            torch.library.opcheck(torch.ops.geoops.poincare_conv_rows_bwd.default, (gt, gU) + args + (mask,))
        gv, gz = torch.ops.geoops.poincare_conv_rows_bwd.default(gt, gU, *args, 3)
        vv, zz = v.clone().requires_grad_(), z.clone().requires_grad_()
        pim = vv.view(B, H, W, C).permute(0, 3, 1, 2)
        pp = torch.nn.functional.unfold(pim, k, padding=p, stride=s).transpose(1, 2).reshape(-1, C * k[0] * k[1])
        ev, ez = torch.autograd.grad(((0.7 * pp @ zz) * gt).sum() + (0.49 * (pp * pp).sum(-1) * gU).sum(), (vv, zz))
        torch.testing.assert_close(gv, ev)
        torch.testing.assert_close(gz, ez)


def _klein_q(x, c):
    """1 - c|f|^2 of the batch midpoint's Klein point f = F / L (float64 sums, as the C++ layer forms them)."""
    X = (x * x).sum(-1)
    lam = 2 / (1 - c * X).clamp_min(1e-15)
    f = (lam[:, None] * x).sum(0) / (lam - 1).sum()
    return float(1 - c * (f * f).sum())


@pytest.mark.parametrize("side", [-1, 1])
def test_bn_layer_root_forms_meet(side):
    """The C++ layer takes the midpoint's root as 1 - c|f|^2 where that is >= 1/4 and from the scatter (N^2 + cV +
    L R) / L^2 below (session 46: the scatter's row passes only where the plain form cancels).  Batches just above
    and just below the switch: the layer's m, u and its backward (dx, dc) against autograd through gp.midpoint and
    gp.logmap in float64, so both forms and their gradients are checked where they meet."""
    from geoops._backend import compiled

    c, N, D = 1.1, 37, 5
    g0 = torch.Generator().manual_seed(7)
    dirn = torch.randn(D, generator=g0, dtype=torch.float64)
    base = dirn / dirn.norm() + 0.15 * torch.randn(N, D, generator=g0, dtype=torch.float64)
    lo, hi = 0.0, 0.999 / (c ** 0.5 * base.norm(dim=-1).max().item())  # q(s) falls from 1 as the cluster moves out
    for _ in range(80):  # bisect the scale where q = 1/4, then step just across it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _klein_q(mid * base, c) > 0.25 else (lo, mid)
    x = (lo if side > 0 else hi) * base * (1 - side * 1e-9)  # a little further from the switch
    q = _klein_q(x, c)
    assert (q >= 0.25) == (side > 0) and abs(q - 0.25) < 1e-6
    u, m, S, midv = compiled().poincare_bn_layer_fwd_cpu(x, c)
    xr = x.clone().requires_grad_(True)
    ct = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    mm = gp.midpoint(xr, c=ct)
    uu = gp.logmap(mm, xr, c=ct)
    torch.testing.assert_close(m, mm.detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(u, uu.detach(), rtol=1e-11, atol=1e-12)
    gu = torch.randn(N, D, generator=g0, dtype=torch.float64)
    gm = torch.randn(D, generator=g0, dtype=torch.float64)
    dx_r, dc_r = torch.autograd.grad((uu * gu).sum() + (mm * gm).sum(), (xr, ct))
    dx, dc = compiled().poincare_bn_layer_bwd_cpu(gu, x, m, midv, gm, c)
    torch.testing.assert_close(dx, dx_r, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(torch.tensor(dc, dtype=torch.float64), dc_r, rtol=1e-9, atol=1e-11)
