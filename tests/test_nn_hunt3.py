"""Session 37 hunt of geoops.nn under torch.nn machinery ("nnhunt"): deferred (meta-device) initialisation,
torch.func.functional_call / vmap ensembles, parametrizations, freezing, gradient clipping, hooks, layouts."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import geoops.nn as gnn
import geoops.poincare as gp
from geoops.nn import poincare as P


def _pts(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gp.expmap0(torch.randn(*shape, generator=g) * 0.3, c=torch.tensor(1.0))


def _img(seed=0):
    return _pts(2, 5, 5, 3, seed=seed).permute(0, 3, 1, 2).contiguous()


def _materialise(module: torch.nn.Module) -> torch.nn.Module:
    """torch's deferred-initialisation recipe: to_empty, then reset_parameters on every submodule that has it."""
    module.to_empty(device="cpu")
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


_LAYERS = {
    "PoincareLinear": lambda b: P.PoincareLinear(4, 6, b),
    "PoincareConv2d": lambda b: P.PoincareConv2d(3, 4, 3, b, padding=1),
    "PoincareBatchNorm": lambda b: P.PoincareBatchNorm(4, b),
    "PoincareBatchNorm2d": lambda b: P.PoincareBatchNorm2d(3, b),
    "PoincareEmbedding": lambda b: P.PoincareEmbedding(10, 4, b),
    "MobiusLinear": lambda b: P.MobiusLinear(4, 6, b),
    "MobiusLinear blocks": lambda b: P.MobiusLinear(4, 6, b, blocks=2),
    "PoincareMLR": lambda b: P.PoincareMLR(4, 3, b),
}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_meta_device_init_then_to_empty_and_reset_parameters(name):
    """Built under torch.device("meta"), materialised with to_empty + reset_parameters (torch's deferred
    initialisation), every parameter and buffer equals the eagerly built layer's (same seed).  Before: the ball
    (no reset_parameters: c = softplus(uninitialised memory)), PoincareBatchNorm(2d) (bias, weight and running
    stats), PoincareMLR (z) kept uninitialised memory, and PoincareEmbedding's rows were drawn with the garbage c."""
    torch.manual_seed(0)
    eager = _LAYERS[name](P.PoincareBall(0.7))
    with torch.device("meta"):
        lazy = _LAYERS[name](P.PoincareBall(0.7))
    assert all(t.is_meta for t in lazy.state_dict().values())
    torch.manual_seed(0)
    _materialise(lazy)
    want, got = eager.state_dict(), lazy.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        if name == "PoincareMLR" and k == "z" or name.startswith("MobiusLinear") and k == "weight":
            # random draws: the same distribution (fresh draws after the meta construction consumed none)
            assert torch.isfinite(got[k]).all() and got[k].abs().max() < 1, k
            continue
        torch.testing.assert_close(got[k], want[k], msg=k)
    assert float(lazy.ball()) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.7))))


def test_ball_reset_parameters_restores_the_constructor_value():
    ball = P.PoincareBall(0.4, requires_grad=True)
    with torch.no_grad():
        ball.value.fill_(3.0)
    ball.reset_parameters()
    assert float(ball.value.detach()) == pytest.approx(0.4)
    assert float(ball().detach()) == pytest.approx(math.log1p(math.exp(0.4)))


_OTHER = {
    "S4D": lambda: gnn.S4D(4, 4),
    "S4D lr": lambda: gnn.S4D(4, 4, lr=1e-3, dt_min=0.01, dt_max=0.05),
    "S4D lr=0 (buffers)": lambda: gnn.S4D(4, 4, lr=0.0),
    "TripleAttention": lambda: gnn.TripleAttention(8, 2),
}


def _gaunt():
    pytest.importorskip("e3nn")
    return gnn.GauntTensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x2e")


@pytest.mark.parametrize("name", list(_OTHER) + ["GauntTensorProduct"])
def test_meta_device_init_other_modules(name):
    """S4D (D, and S4DKernel's log_dt / C / A, parameters or buffers) and GauntTensorProduct (its weights) had no
    reset_parameters: after to_empty they kept uninitialised memory.  Now the materialised module equals the eager
    one built with the same seed (the S4D-Lin initialisation drawn in the same order), and S4DKernel's ``_optim``
    hints survive."""
    make = _gaunt if name == "GauntTensorProduct" else _OTHER[name]
    torch.manual_seed(0)
    eager = make()
    with torch.device("meta"):
        lazy = make()
    torch.manual_seed(0)
    _materialise(lazy)
    want, got = eager.state_dict(), lazy.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    if name.startswith("S4D") and "lr=0" not in name:
        for p in ("log_dt", "log_A_real", "A_imag"):
            assert getattr(lazy.kernel, p)._optim == getattr(eager.kernel, p)._optim


def test_skip_init_then_reset_parameters():
    """torch.nn.utils.skip_init needs a ``device`` keyword (torch's layers take device / dtype): the Poincaré layers
    had none ("Module must support a 'device' arg to skip initialization").  And skip_init's to_empty runs over the
    shared ball too: its value became uninitialised memory for every layer of the network.  Now the layers take
    device / dtype, and the ball keeps its value through to_empty."""
    torch.manual_seed(0)
    ball = P.PoincareBall(0.6)
    c = float(ball())
    x = _pts(5, 4, seed=3)
    makers = [(P.PoincareLinear, (4, 6, ball)), (P.PoincareConv2d, (3, 4, 3, ball)), (P.PoincareBatchNorm, (4, ball)),
              (P.PoincareBatchNorm2d, (3, ball)), (P.PoincareEmbedding, (10, 4, ball)), (P.MobiusLinear, (4, 6, ball)),
              (P.PoincareMLR, (4, 3, ball))]
    for cls, args in makers:
        layer = torch.nn.utils.skip_init(cls, *args)
        assert float(ball()) == c, cls.__name__
        layer.reset_parameters()
        assert all(torch.isfinite(t).all() for t in layer.state_dict().values()), cls.__name__
    lin = torch.nn.utils.skip_init(P.PoincareLinear, 4, 6, ball)
    lin.reset_parameters()
    torch.testing.assert_close(lin(x), P.PoincareLinear(4, 6, P.PoincareBall(0.6))(x))
    emb = P.PoincareEmbedding(3, 4, ball, dtype=torch.float64)
    assert emb.weight.dtype == torch.float64 and P.PoincareBall(1.0, dtype=torch.float64).value.dtype == torch.float64
    # to_empty of a whole CPU model keeps the ball's value too (and a device / dtype move keeps it, as before)
    model = torch.nn.Sequential(P.PoincareLinear(4, 6, ball), P.PoincareReLU(ball, dim=-1)).to_empty(device="cpu")
    assert float(ball()) == c
    model.double()
    assert ball.value.dtype == torch.float64 and float(ball()) == pytest.approx(c)


def _layer_cases():
    return [
        ("PoincareLinear", lambda: P.PoincareLinear(4, 6, P.PoincareBall(1.0)), _pts(5, 4)),
        ("PoincareConv2d", lambda: P.PoincareConv2d(3, 4, 3, P.PoincareBall(1.0), padding=1, id_init=False), _img()),
        ("PoincareBatchNorm2d eval", lambda: P.PoincareBatchNorm2d(3, P.PoincareBall(1.0)).eval(), _img()),
        ("MobiusLinear blocks", lambda: P.MobiusLinear(4, 6, P.PoincareBall(1.0), blocks=2), _pts(5, 4)),
        ("PoincareMLR", lambda: P.PoincareMLR(4, 3, P.PoincareBall(1.0)), _pts(5, 4)),
        ("PoincareAvgPool2d", lambda: P.PoincareAvgPool2d(2, P.PoincareBall(1.0)), _img()),
        ("S4D", lambda: gnn.S4D(4, 4), torch.randn(2, 4, 8)),
        ("TripleAttention", lambda: gnn.TripleAttention(8, 2), torch.randn(2, 5, 8)),
    ]


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def _perturbed(m, seed, c_value):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.modules():
            if isinstance(b, P.PoincareBall):
                b.value.fill_(c_value)
    return m


@pytest.mark.parametrize("case", _layer_cases(), ids=lambda c: c[0])
def test_functional_call_uses_the_passed_parameters_and_vmap_ensemble(case):
    """functional_call with other parameters (a different curvature too) equals the module holding them, after the
    module's own ball has cached its c; vmap(functional_call) over stack_module_state of 3 modules equals running
    them one by one.  (Checked fine in session 37: the ball's cache is keyed on the value tensor.)"""
    _, make, x = case
    m = make()
    _out(m(x))  # fills the ball's curvature cache with the module's own value
    other = _perturbed(make(), 1, 0.3)
    state = {**dict(other.named_parameters()), **dict(other.named_buffers())}
    torch.testing.assert_close(_out(functional_call(m, state, (x,))), _out(other(x)))
    ms = [_perturbed(make(), i, 0.4 + 0.3 * i) for i in range(3)]
    params, buffers = stack_module_state(ms)
    base = copy.deepcopy(ms[0]).to("meta")
    ys = vmap(lambda p, b, xx: _out(functional_call(base, (p, b), (xx,))), in_dims=(0, 0, None))(params, buffers, x)
    torch.testing.assert_close(ys, torch.stack([_out(mm(x)) for mm in ms]))


def test_torch_func_grad_over_parameters_and_curvature():
    """torch.func.grad of a loss w.r.t. the parameters and a learnable curvature equals autograd's."""
    ball = P.PoincareBall(0.8, requires_grad=True)
    model = torch.nn.Sequential(P.PoincareLinear(4, 5, ball), P.PoincareReLU(ball, dim=-1), P.PoincareMLR(5, 3, ball))
    x, target = _pts(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    params = dict(model.named_parameters())

    def loss(p):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), target)

    g = torch.func.grad(loss)(params)
    loss(params).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(g[k], p.grad, msg=k)
    assert g["0.ball.value"].abs() > 0


class _Scale(torch.nn.Module):
    def forward(self, w):
        return 0.7 * w


_PARAM_CASES = [
    ("PoincareLinear z orthogonal", lambda: P.PoincareLinear(4, 4, P.PoincareBall(1.0)), "z", "orthogonal", _pts(5, 4)),
    ("PoincareLinear z weight_norm", lambda: P.PoincareLinear(6, 4, P.PoincareBall(1.0)), "z", "weight_norm",
     _pts(5, 6)),
    ("PoincareConv2d weights weight_norm", lambda: P.PoincareConv2d(3, 4, 3, P.PoincareBall(1.0), padding=1,
                                                                    id_init=False), "weights", "weight_norm", _img()),
    ("MobiusLinear blocks scale", lambda: P.MobiusLinear(4, 6, P.PoincareBall(1.0), blocks=2), "weight", "scale",
     _pts(5, 4)),
    ("PoincareMLR z orthogonal", lambda: P.PoincareMLR(4, 3, P.PoincareBall(1.0)), "z", "orthogonal", _pts(5, 4)),
]


@pytest.mark.parametrize("case", _PARAM_CASES, ids=lambda c: c[0])
def test_parametrized_weight_equals_the_materialised_weight(case):
    """register_parametrization / orthogonal / weight_norm on a layer's weight: forward and the gradient w.r.t. the
    parametrized weight equal the same layer holding the materialised weight (checked fine in session 37)."""
    _, make, pname, kind, x = case
    torch.manual_seed(0)
    m = make()
    if kind == "scale":
        torch.nn.utils.parametrize.register_parametrization(m, pname, _Scale())
    elif kind == "orthogonal":
        torch.nn.utils.parametrizations.orthogonal(m, pname)
    else:  # one norm per hyperplane (the columns)
        torch.nn.utils.parametrizations.weight_norm(m, pname, dim=1)
    xm, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.nn.utils.parametrize.cached():
        w = getattr(m, pname)
        w.retain_grad()
        y = m(xm)
        y.square().sum().backward()
    plain = make()
    with torch.no_grad():
        getattr(plain, pname).copy_(w)
    y_ref = plain(xr)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(w.grad, getattr(plain, pname).grad)
    torch.testing.assert_close(xm.grad, xr.grad)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in m.named_parameters() if n.startswith("parametrizations"))


def test_frozen_parameters_clip_grad_norm_and_hooks():
    """requires_grad_(False) on part of a model: no gradient formed for it, the rest equals the unfrozen model's
    gradients; clip_grad_norm_ over the parameters; full backward hooks see grad_input / grad_output of the
    right shapes through geoops' Functions (equal to x.grad and dL/dy)."""
    torch.manual_seed(0)
    ball = P.PoincareBall(1.0)
    model = torch.nn.Sequential(P.PoincareConv2d(3, 4, 3, ball, padding=1, id_init=False),
                                P.PoincareBatchNorm2d(4, ball), P.PoincareReLU(ball),
                                P.PoincareAvgPool2d(2, ball), P.PoincareFlatten(ball), P.PoincareMLR(16, 3, ball))
    ref = copy.deepcopy(model)
    model[0].requires_grad_(False)
    x, t = _img(), torch.tensor([0, 2])
    seen = {}
    hooks = [mod.register_full_backward_hook(lambda mod, gi, go, i=i: seen.__setitem__(i, (gi, go)))
             for i, mod in enumerate(model)]
    outs = {}
    model[0].register_forward_hook(lambda mod, inp, out: outs.__setitem__("conv", out))
    xg = x.clone().requires_grad_()
    torch.nn.functional.cross_entropy(model(xg), t).backward()
    torch.nn.functional.cross_entropy(ref(x), t).backward()
    assert all(p.grad is None for p in model[0].parameters())
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if not n.startswith("0."):
            torch.testing.assert_close(p.grad, q.grad, msg=n)
    assert outs["conv"].shape == (2, 4, 5, 5)
    gi, go = seen[0]
    assert gi[0].shape == x.shape and go[0].shape == (2, 4, 5, 5)
    torch.testing.assert_close(gi[0], xg.grad)
    for i in range(1, len(model)):
        assert seen[i][1][0] is not None and seen[i - 1][1][0].shape == seen[i][0][0].shape
    for h in hooks:
        h.remove()
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    got = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5 * float(total))
    torch.testing.assert_close(got, total)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    torch.testing.assert_close(after, 0.5 * total, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
def test_conv_and_image_layers_take_non_contiguous_inputs(layout):
    """PoincareConv2d (and the image layers after it) on channels_last / transposed / sliced inputs: same output
    and input gradient as on the contiguous copy."""
    ball = P.PoincareBall(1.0)
    torch.manual_seed(0)
    layers = [P.PoincareConv2d(3, 4, 3, ball, padding=1, stride=2, id_init=False), P.PoincareBatchNorm2d(3, ball),
              P.PoincareMaxPool2d(2, ball), P.PoincareReLU(ball)]
    base = _pts(2, 6, 10, 3).permute(0, 3, 1, 2)
    x = {"channels_last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.transpose(2, 3).contiguous().transpose(2, 3),
         "strided": base.contiguous()[..., ::2]}[layout]
    assert not x.is_contiguous()
    for layer in layers:
        a, b = x.clone().requires_grad_(), x.contiguous().requires_grad_()
        ya, yb = layer(a), layer(b)
        torch.testing.assert_close(ya, yb)
        w = torch.randn(ya.shape)
        ga, = torch.autograd.grad((ya * w).sum(), a)
        gb, = torch.autograd.grad((yb * w).sum(), b)
        torch.testing.assert_close(ga, gb)


def test_ball_cache_does_not_serve_a_new_tensor_at_a_freed_value_address():
    """Off the CPU the ball's curvature cache did not read the value (a device sync) and was keyed on (version,
    data_ptr, ...): a new value tensor at the address of a freed one with the same version counter (what the CUDA
    caching allocator hands out: a parametrized value recomputed per call, functional_call with per-step tensors
    under no_grad) got the old c.  Simulated on the CPU with the GPU path (as tests/triton/test_poincare_hostwork.py)
    and a fresh tensor set_ onto the freed value's storage.  The cache now also holds a weak reference to the value
    tensor it was computed from."""
    from unittest import mock

    def at(storage):
        return torch.empty(0).set_(storage, 0, ())

    with mock.patch.object(gp, "_host_read_free", lambda t: False):
        ball = P.PoincareBall(1.0)
        storage = torch.tensor(0.5).untyped_storage()
        v1 = at(storage)
        assert float(functional_call(ball, {"value": v1}, ())) == pytest.approx(math.log1p(math.exp(0.5)))
        del v1
        w = at(storage)
        w.fill_(2.0)
        del w
        v2 = at(storage)
        assert float(functional_call(ball, {"value": v2}, ())) == pytest.approx(math.log1p(math.exp(2.0)))
        # the module's own value still hits the cache (the same tensor object, no recomputation)
        c = ball()
        assert ball() is c
    import pickle
    assert float(pickle.loads(pickle.dumps(ball))()) == pytest.approx(float(c))
    assert float(copy.deepcopy(ball)()) == pytest.approx(float(c))


def test_full_backward_hooks_on_s4d_and_gaunt():
    """Full backward hooks on S4D (output (y, None)) and GauntTensorProduct (two inputs): grad_input equals the
    inputs' .grad, grad_output has the outputs' shapes (checked fine in session 37)."""
    s4d = gnn.S4D(4, 4)
    cap = {}
    s4d.register_full_backward_hook(lambda m, gi, go: cap.update(gi=gi, go=go))
    u = torch.randn(2, 4, 8, requires_grad=True)
    y, _ = s4d(u)
    y.square().sum().backward()
    torch.testing.assert_close(cap["gi"][0], u.grad)
    assert cap["go"][0].shape == y.shape and cap["go"][1] is None
    tp = _gaunt()
    cap.clear()
    tp.register_full_backward_hook(lambda m, gi, go: cap.update(gi=gi, go=go))
    a, b = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    out = tp(a, b)
    out.square().sum().backward()
    torch.testing.assert_close(cap["gi"][0], a.grad)
    torch.testing.assert_close(cap["gi"][1], b.grad)
    assert cap["go"][0].shape == out.shape


def _allocations(f):
    """Number of allocations in torch's CPU allocator while f() runs (the profiler's allocation timeline)."""
    from _compare import memory_events

    return sum(1 for e in memory_events(f) if e.nbytes() > 0)


def test_noop_to_allocates_nothing_and_real_moves_keep_the_ball_value():
    """Session 37's PoincareBall._apply cloned the value before every _apply (so that to_empty could not leave it
    uninitialised): a no-op ``.to()`` / ``.float()`` / ``.cpu()`` of a model allocated one copy per ball.  It now
    copies the old value into the new tensor only when _apply replaces the value (to_empty, a dtype or device
    move): a no-op conversion allocates nothing; to_empty, double(), half(), to(dtype) keep the value; a ball built
    on the meta device gets its constructor's value from to_empty; the value's gradient is moved, not overwritten."""
    ball = P.PoincareBall(0.6)
    model = torch.nn.Sequential(P.PoincareLinear(4, 6, ball), P.PoincareReLU(ball, dim=-1))
    assert _allocations(lambda: (model.to("cpu"), model.float(), model.cpu(), model.to(torch.float32))) == 0
    v0 = float(ball.value)
    model.to_empty(device="cpu")
    assert float(ball.value) == v0
    for conv, dt in ((lambda m: m.double(), torch.float64), (lambda m: m.half(), torch.float16),
                     (lambda m: m.to(torch.float32), torch.float32)):
        conv(model)
        assert ball.value.dtype == dt and float(ball.value) == pytest.approx(v0, rel=1e-3)
    # the gradient of a learnable value goes through the conversion unchanged (fn is applied to it too)
    lb = P.PoincareBall(0.3, requires_grad=True)
    lb().backward()
    g = float(lb.value.grad)
    lb.double()
    assert lb.value.dtype == torch.float64 and float(lb.value) == pytest.approx(0.3) and float(lb.value.grad) == g
    with torch.device("meta"):
        mb = P.PoincareBall(0.8)
    mb.to_empty(device="cpu")
    assert float(mb.value) == pytest.approx(0.8)
