"""poincare_conv2d's checked-arguments cache -- a call with
the argument metadata of an earlier checked call and a marked curvature skips the checks; every other call runs
them, so every error path still raises before a kernel runs."""
import pytest
import torch

from geoops import poincare as gp
from geoops.nn import PoincareBall, PoincareConv2d


def _image(B, C, H, W, dtype=torch.float32, seed=0, channels_last=True, c=1.0):
    g = torch.Generator().manual_seed(seed)
    x = gp.expmap0(torch.randn(B, C, H, W, generator=g, dtype=dtype) * 0.4, c=c, dim=1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


@pytest.fixture
def hits(monkeypatch):
    """Records what each poincare_conv2d call's cache lookup returned (True: a hit)."""
    seen = []
    real = gp._conv_cfg_hit

    def spy(*a):
        cfg = real(*a)
        seen.append(cfg is not None)
        return cfg

    monkeypatch.setattr(gp, "_conv_cfg_hit", spy)
    return seen


def _run(conv, x, g_seed=5, checked=False):
    """The layer's forward and backward; checked: poincare_conv2d called with an unmarked copy of the layer's
    curvature, so that it runs every check (no cache lookup)."""
    x = x.detach().clone().requires_grad_()
    if checked:
        y = gp.poincare_conv2d(x, conv.weights, conv.bias, c=conv.ball().clone(), kernel_size=conv.kernel_size,
                               padding=conv.padding, stride=conv.stride)
    else:
        y = conv(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(g_seed), dtype=y.dtype)
    y.backward(g)
    out = (y.detach().clone(), x.grad.clone(), conv.weights.grad.clone(),
           None if conv.bias is None else conv.bias.grad.clone())
    conv.zero_grad(set_to_none=True)
    return out


def _same(a, b):
    for p, q in zip(a, b):
        assert (p is None) == (q is None)
        if p is not None:
            assert p.dtype == q.dtype and p.shape == q.shape and p.stride() == q.stride()
            assert torch.equal(p, q)


@pytest.mark.parametrize("Ci, Co, k, pad, stride, bias, dtype, cl", [
    (8, 8, 3, 1, 1, True, torch.float32, True),    # the digits shape
    (1, 8, 3, 1, 1, True, torch.float32, True),
    (8, 8, 3, 1, 2, False, torch.float32, False),  # no bias, stride 2, NCHW input
    (3, 5, (3, 1), (1, 0), 1, True, torch.float64, True),
    (4, 20, 5, 2, 1, True, torch.float32, True),   # 20 channels out: F.conv2d, not the direct kernel
])
def test_conv_cache_bit_identical(monkeypatch, hits, Ci, Co, k, pad, stride, bias, dtype, cl):
    """Cached calls (the second and later) give the same bits, strides and gradients as the checked ones (an
    unmarked curvature); the first call stores, the later ones hit."""
    torch.manual_seed(0)
    ball = PoincareBall(1.0)
    conv = PoincareConv2d(Ci, Co, k, ball, bias=bias, stride=stride, padding=pad, id_init=False).to(dtype)
    x = _image(2, Ci, 7, 6, dtype, channels_last=cl)
    gp._CONV_CFG.clear()
    ref = _run(conv, x, checked=True)
    assert hits == [False]
    gp._CONV_CFG.clear()
    first, second, third = _run(conv, x), _run(conv, x), _run(conv, x)
    assert hits == [False, False, True, True]
    for got in (first, second, third):
        _same(got, ref)
    with torch.no_grad():  # the no-grad hit (keep False) gives the same values
        _same((conv(x),), (ref[0],))
    assert hits[-1]


def test_conv_cache_invalidation(monkeypatch, hits):
    """A change of the input's shape or dtype, the weight's shape or values, the curvature (a new ball value or
    an in-place change of the cached c) never reuses what it must not: each result equals the uncached call."""
    torch.manual_seed(0)
    ball = PoincareBall(1.0)
    conv = PoincareConv2d(8, 8, 3, ball, padding=1, id_init=False)
    gp._CONV_CFG.clear()

    def check(x):
        got = _run(conv, x)
        _same(got, _run(conv, x, checked=True))

    x = _image(4, 8, 8, 8)
    check(x)
    check(x)
    assert hits[-2] is True  # (each check: the cached call, then the uncached one)
    check(_image(3, 8, 8, 8))  # batch size
    assert hits[-2] is False
    check(_image(4, 8, 5, 9))  # image size
    assert hits[-2] is False
    check(x)
    assert hits[-2] is True
    with torch.no_grad():  # the weight's values (version): nothing of them is cached
        conv.weights.mul_(1.5)
        conv.bias.add_(0.1)
    check(x)
    assert hits[-2] is True
    ball.value.data.fill_(0.3)  # a new curvature: the ball computes and marks a new c
    check(_image(4, 8, 8, 8, c=ball().item()))
    assert hits[-2] is True
    c = ball()
    c.mul_(2.0)  # an in-place change of the marked c: its mark no longer holds, the checks run
    y1 = gp.poincare_conv2d(x, conv.weights, conv.bias, c=c, kernel_size=(3, 3), padding=1, stride=1)
    assert hits[-1] is False
    assert torch.equal(y1, gp.poincare_conv2d(x, conv.weights, conv.bias, c=c.item(), kernel_size=3, padding=1))
    y0 = gp.poincare_conv2d(x, conv.weights, conv.bias, c=ball(), kernel_size=3, padding=1)  # the ball: a new c
    assert not torch.equal(y0, y1)
    # float64 input with the float32 layer: promoted, not stored (x's dtype is not the compute dtype's z)
    ball.value.data.fill_(1.0)
    x64 = _image(4, 8, 8, 8, torch.float64)
    a = conv(x64)
    b = conv(x64)
    assert hits[-2:] == [False, False] and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert torch.equal(a, _run(conv, x64, checked=True)[0])
    # a float64 ball and layer with a float32 input: c has the compute dtype, x does not -- not stored either
    ball64 = PoincareBall(1.0).double()
    conv64 = PoincareConv2d(8, 8, 3, ball64, padding=1, id_init=False).double()
    a, b = conv64(x), conv64(x)
    assert hits[-2:] == [False, False] and a.dtype == torch.float64 and torch.equal(a, b)
    assert torch.equal(a, _run(conv64, x, checked=True)[0])


def test_conv_cache_errors_still_raise(monkeypatch):
    """With the cache warm for a shape, every error path of poincare_conv2d still raises its message before any
    kernel runs (PoincareConv2dFn replaced by a tripwire)."""
    torch.manual_seed(0)
    ball = PoincareBall(1.0)
    conv = PoincareConv2d(8, 8, 3, ball, padding=1)
    x = _image(2, 8, 6, 6)
    z, b = conv.weights.detach(), conv.bias.detach()
    c = ball()
    gp._CONV_CFG.clear()
    conv(x)
    conv(x)
    assert gp._conv_cfg_hit(x, z, b, c, conv.kernel_size, 1, 1) is not None

    def boom(*a):
        raise AssertionError("a kernel ran")

    monkeypatch.setattr(gp.PoincareConv2dFn, "apply", boom)
    k = conv.kernel_size
    cases = [
        (dict(x=x[:, :5]), ValueError, "z must have shape"),
        (dict(x=x[0]), ValueError, "must be \\(B, C, H, W\\)"),
        (dict(x=(x * 10).int()), TypeError, "floating-point"),
        (dict(z=z[:70]), ValueError, "z must have shape"),
        (dict(b=b[:7]), ValueError, "bias must have shape"),
        (dict(b=b.int()), TypeError, "floating-point"),
        (dict(kernel_size=3.0), TypeError, "kernel_size must be"),
        (dict(kernel_size=[3, 3]), None, None),  # a list is accepted (checked), never cached
        (dict(padding=True), TypeError, "padding must be"),
        (dict(stride=(1, 1.0)), TypeError, "stride must be"),
        (dict(c=-1.0), ValueError, "c must be > 0"),
        (dict(c=torch.tensor(-0.5)), ValueError, "c must be > 0"),
        (dict(c=torch.ones(2)), ValueError, "c must be a positive scalar"),
        (dict(c=torch.tensor(1)), None, None),  # an int tensor is accepted (checked)
    ]
    for kw, exc, msg in cases:
        args = dict(x=x, z=z, b=b, c=c, kernel_size=k, padding=1, stride=1)
        args.update(kw)
        call = lambda: gp.poincare_conv2d(args["x"], args["z"], args["b"], c=args["c"], kernel_size=args["kernel_size"],
                                          padding=args["padding"], stride=args["stride"])
        if exc is None:
            with pytest.raises(AssertionError, match="a kernel ran"):
                call()
        else:
            with pytest.raises(exc, match=msg):
                call()
    # the marked curvature changed in place to a bad value: its mark is gone, the check raises
    c.fill_(-1.0)
    with pytest.raises(ValueError, match="c must be > 0"):
        gp.poincare_conv2d(x, z, b, c=c, kernel_size=k, padding=1, stride=1)


def test_conv_cache_fused_off_and_modes(monkeypatch, hits):
    """A call with an unmarked curvature never hits (its checks run); GEOOPS_POINCARE_FUSED=0 and a torch-function
    mode take the composition even when the key is cached."""
    torch.manual_seed(0)
    ball = PoincareBall(1.0)
    conv = PoincareConv2d(8, 8, 3, ball, padding=1)
    x = _image(2, 8, 6, 6)
    gp._CONV_CFG.clear()
    _run(conv, x, checked=True)
    _run(conv, x, checked=True)
    assert hits == [False, False]
    gp._CONV_CFG.clear()
    conv(x)
    y = conv(x)
    assert hits[-1] is True and type(y.grad_fn).__name__.startswith("PoincareConv2dFn")
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    y = conv(x.requires_grad_())
    assert hits[-1] is False and not type(y.grad_fn).__name__.startswith("PoincareConv2dFn")
    monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "1")

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Mode():
        y = conv(x)
    assert hits[-1] is False and not type(y.grad_fn).__name__.startswith("PoincareConv2dFn")
