"""Session 35 user trial of geoops.nn ("modhunt"): the Poincaré layers dropped into an existing training script."""
from __future__ import annotations

import pytest
import torch

from geoops.nn import poincare as P


@pytest.fixture
def ball():
    return P.PoincareBall(1.0)


_BAD_SIZES = [
    ("PoincareLinear in_features float", lambda b: P.PoincareLinear(4.0, 5, b), TypeError, "in_features"),
    ("PoincareLinear out_features 0", lambda b: P.PoincareLinear(4, 0, b), ValueError, "out_features"),
    ("PoincareLinear in_features -1", lambda b: P.PoincareLinear(-1, 5, b), ValueError, "in_features"),
    ("PoincareLinear ball a float", lambda b: P.PoincareLinear(4, 5, 1.0), TypeError, "ball"),
    ("PoincareConv2d kernel 0", lambda b: P.PoincareConv2d(3, 4, 0, b), ValueError, "kernel_size"),
    ("PoincareConv2d kernel float", lambda b: P.PoincareConv2d(3, 4, 3.0, b), TypeError, "kernel_size"),
    ("PoincareConv2d kernel 1-tuple", lambda b: P.PoincareConv2d(3, 4, (3,), b), ValueError, "kernel_size"),
    ("PoincareConv2d channels float", lambda b: P.PoincareConv2d(3, 4.0, 3, b), TypeError, "out_channels"),
    ("PoincareBatchNorm features float", lambda b: P.PoincareBatchNorm(4.5, b), TypeError, "features"),
    ("PoincareBatchNorm features 0", lambda b: P.PoincareBatchNorm(0, b), ValueError, "features"),
    ("PoincareBatchNorm momentum None", lambda b: P.PoincareBatchNorm(4, b, momentum=None), TypeError, "momentum"),
    ("PoincareBatchNorm2d momentum 2", lambda b: P.PoincareBatchNorm2d(4, b, momentum=2.0), ValueError, "momentum"),
    ("PoincareEmbedding dim float", lambda b: P.PoincareEmbedding(10, 4.0, b), TypeError, "embedding_dim"),
    ("MobiusLinear blocks 0", lambda b: P.MobiusLinear(4, 6, b, blocks=0), ValueError, "blocks"),
    ("MobiusLinear out 0", lambda b: P.MobiusLinear(4, 0, b), ValueError, "out_features"),
    ("PoincareMLR classes 0", lambda b: P.PoincareMLR(4, 0, b), ValueError, "num_classes"),
    ("PoincareMLR in float", lambda b: P.PoincareMLR(4.0, 3, b), TypeError, "in_features"),
]


@pytest.mark.parametrize("make, exc, name", [c[1:] for c in _BAD_SIZES], ids=[c[0] for c in _BAD_SIZES])
def test_bad_constructor_arguments_name_the_argument(ball, make, exc, name):
    """A bad size, kernel, momentum or ball raised deep torch / Python errors ("empty() takes 1 positional argument
    but 2 were given", ZeroDivisionError from the initialisation, IndexError, pybind's "incompatible function
    arguments" at the first batch norm forward for momentum=None) or was taken (momentum=2).  Now a TypeError /
    ValueError naming the argument, at construction."""
    with pytest.raises(exc, match=name):
        make(ball)


def test_reprs_show_the_layer_configuration(ball):
    """The Poincaré layers had no extra_repr: print(model) showed ``PoincareLinear((ball): PoincareBall())`` with no
    sizes (torch's layers show theirs)."""
    cases = {
        P.PoincareBall(0.5, requires_grad=True): ["value=0.5", "requires_grad=True"],
        P.PoincareLinear(4, 6, ball, bias=False): ["in_features=4", "out_features=6", "bias=False"],
        P.PoincareConv2d(3, 8, 3, ball, stride=2, padding=1): ["3, 8", "kernel_size=(3, 3)", "stride=2", "padding=1"],
        P.PoincareReLU(ball, dim=-1): ["dim=-1"],
        P.PoincareBatchNorm2d(5, ball, momentum=0.2): ["5", "momentum=0.2", "track_running_stats=True"],
        P.PoincareFlatten(ball): ["start_dim=1", "end_dim=-1", "man_dim=1"],
        P.PoincareMaxPool2d(2, ball): ["kernel_size=2"],
        P.PoincareAvgPool2d(2, ball, stride=1): ["kernel_size=2", "stride=1"],
        P.PoincareEmbedding(10, 4, ball): ["10, 4"],
        P.MobiusLinear(4, 6, ball, blocks=2): ["in_features=4", "out_features=6", "blocks=2"],
        P.PoincareMLR(4, 3, ball): ["in_features=4", "num_classes=3"],
    }
    for module, parts in cases.items():
        text = repr(module)
        for part in parts:
            assert part in text, (text, part)
    assert "c=softplus(value)=0.974077" in repr(P.PoincareBall(0.5))


def test_batch_norm_eval_after_torch_export(ball):
    """PoincareBatchNorm in eval mode builds its transport constants (eye(D), two 2x2 matrices) once per (D, dtype,
    device) in a module-level cache.  torch.export traced them as FakeTensors into that cache: the next eager call
    failed ("Could not guard on data-dependent expression"), a second export of the layer too ("fake tensor in the
    exported program constant's list")."""
    import geoops.poincare as gp

    torch.manual_seed(0)
    bn = P.PoincareBatchNorm(5, ball).eval()  # D = 5: a cache key no other test fills first
    with torch.no_grad():
        bn.bias.normal_(0, 0.1)
    x = gp.expmap0(torch.randn(4, 5) * 0.3, c=torch.tensor(1.0))
    for key in [k for k in gp._TRANSPORT_CONST if k[0] == 5]:
        del gp._TRANSPORT_CONST[key]
    batch = torch.export.Dim("batch", min=2, max=1024)
    ep = torch.export.export(bn, (x,), dynamic_shapes=({0: batch},))
    want = ep.module()(x)
    torch.testing.assert_close(bn(x), want)
    ep2 = torch.export.export(bn, (x,), dynamic_shapes=({0: batch},))
    torch.testing.assert_close(ep2.module()(x), want)


def test_s4d_under_default_dtype_float64():
    """A script that sets torch.set_default_dtype(torch.float64) before building S4D: A_imag was always float32 (an
    explicit dtype) and log_A_real float64, and forward failed in torch.complex ("Expected object of scalar type
    Double but got scalar type Float").  A_imag now follows the default dtype (state-spaces' S4D does) and the
    kernel's parameters are promoted to one precision."""
    import geoops.nn as gnn

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        layer = gnn.S4D(4, 8)
        u = torch.randn(2, 4, 16)
        y, _ = layer(u)
        assert layer.kernel.A_imag.dtype == torch.float64
        want, _ = __import__("copy").deepcopy(layer).double()(u)  # the same layer in float64 throughout
    finally:
        torch.set_default_dtype(old)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-7)


def test_ball_under_default_dtype_float64():
    """PoincareBall stored its value as float32 whatever the default dtype: a float64 model built under
    torch.set_default_dtype(torch.float64) ran with c rounded to float32 (outputs 1e-8 off the float64 layer;
    HypLL's Curvature takes the default dtype).  The value now takes the default dtype."""
    import geoops.poincare as gp

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        ball = P.PoincareBall(1.0)
        layer = P.PoincareLinear(4, 6, ball)
        with torch.no_grad():
            layer.z.normal_(0, 0.3)
        x = gp.expmap0(torch.randn(3, 4) * 0.3, c=torch.tensor(1.0))
        got = layer(x)
        want = gp.poincare_fc(x, layer.z, layer.bias, c=torch.nn.functional.softplus(torch.tensor(1.0)))
    finally:
        torch.set_default_dtype(old)
    assert ball.value.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    assert P.PoincareBall(1.0).value.dtype == torch.float32


def _layers(ball):
    import geoops.poincare as gp

    torch.manual_seed(0)
    vec = gp.expmap0(torch.randn(5, 4) * 0.3, c=torch.tensor(1.0))
    img = gp.expmap0(torch.randn(2, 3, 4, 4) * 0.3, c=torch.tensor(1.0), dim=1)
    return {"linear": (P.PoincareLinear(4, 5, ball), vec), "mlr": (P.PoincareMLR(4, 3, ball), vec),
            "mobius": (P.MobiusLinear(4, 5, ball), vec), "conv": (P.PoincareConv2d(3, 4, 3, ball, padding=1), img),
            "relu": (P.PoincareReLU(ball), img), "bn2d": (P.PoincareBatchNorm2d(3, ball), img),
            "flatten": (P.PoincareFlatten(ball), img), "avg_pool": (P.PoincareAvgPool2d(2, ball), img)}


@pytest.mark.parametrize("name", sorted(_layers(P.PoincareBall(1.0))))
def test_training_after_an_inference_mode_evaluation(name):
    """An evaluation loop under torch.inference_mode() before training (or a fresh model's first call there): the
    ball cached its c as an inference tensor, and the next training forward failed ("Inference tensors do not track
    version counter").  The cached c is made outside inference mode."""
    ball = P.PoincareBall(1.0)
    layer, x = _layers(ball)[name]
    with torch.inference_mode():
        layer.eval()
        want = layer(x)
        layer.train()
    layer.eval()
    torch.testing.assert_close(layer(x), want)
    layer.train()
    xr = x.clone().requires_grad_()
    layer(xr).pow(2).sum().backward()
    assert xr.grad is not None and bool(torch.isfinite(xr.grad).all())


def test_ball_built_in_inference_mode():
    """A model built (or loaded) inside torch.inference_mode() holds an inference-tensor value: the ball's cache key
    read its version counter and failed; it computes c without the cache there."""
    with torch.inference_mode():
        ball = P.PoincareBall(1.0)
        layer, x = _layers(ball)["linear"]
        y = layer(x)
    assert torch.isfinite(y).all()
