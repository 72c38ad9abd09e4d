"""Session 38 ("exportgrad"): gradients through exported programs.

``torch.export`` keeps each geoops op (``torch.ops.geoops.<op>_fwd``), not the autograd.Function around it, so the
forward ops carry their own autograd formula (torch.library ``register_autograd``: the Function's ``setup_context``
and ``backward``, which call the family's ``<op>_bwd`` op; see ``geoops._library.op_autograd``).  For one small
model per family (and models of the public functions): ``export(model).module()`` then backward gives the eager
model's gradients; so does the ``torch.export.save`` / ``load`` round trip and ``torch.compile`` of the exported
module; double backward works where the eager op supports it and raises otherwise.
"""
from __future__ import annotations

import io

import pytest
import torch

import geoops
import geoops.nn as gnn
import geoops.poincare as gp
import geoops.ssm as gssm
import geoops.stereographic as st
from geoops.attention import triple_attention

import _deploy_models as dm

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Fn(torch.nn.Module):
    """A model of public functions: ``body(self, *inputs)`` with learnable parameters ``params``."""

    def __init__(self, body, **params):
        super().__init__()
        self.body = body
        for name, p in params.items():
            setattr(self, name, torch.nn.Parameter(p))

    def forward(self, *xs):
        return self.body(self, *xs)


def _ball(n, d, s=0.3, dtype=torch.float32):
    return st.expmap0(s * torch.randn(n, d, dtype=dtype), k=-1.0)


def _stereo_rows(m, x):
    k = m.k
    y = st.mobius_add(x, m.b, k=k)
    y = st.expmap(y, st.logmap0(y, k=k), k=k)
    y = st.mobius_scalar_mul(m.r, st.project(y, k=k), k=k)
    d = st.dist(y, m.b, k=k) + st.lambda_x(y, k=k) + st.dist0(y, k=k)
    return st.logmap(m.b, y, k=k).sum(-1) + d + st.mobius_sub(y, x, k=k).sum(-1)


def _stereo_triple(m, x):
    k = m.k
    v = st.logmap0(m.b, k=k).expand_as(x)
    a = st.gyration(x, m.b.expand_as(x), v, k=k)
    b = st.parallel_transport(x, m.b.expand_as(x), v, k=k)
    c = st.parallel_transport0(x, v, k=k) + st.parallel_transport0back(x, v, k=k)
    return a.sum(-1) + b.sum(-1) + c.sum(-1) + st.dist2plane(x, m.b.expand_as(x), v, k=k)


def _stereo_pair(m, x):
    k = m.k
    d = st.cdist(x, m.b, k=k)
    dk, _ = st.knn(x, m.b, 2, k=k)
    return d.sum(-1) + dk.sum(-1)


def _stereo_matrix(m, x):
    k = m.k
    y = st.mobius_matvec(m.M, x, k=k)
    y = st.mobius_pointwise_mul(m.w, y, k=k)
    y = st.mobius_blockdiag_matvec(m.Mb, y, k=k)
    mid = st.weighted_midpoint(y.unsqueeze(0).expand(2, *y.shape), weights=m.wm, k=k, reducedim=[0])
    return mid


def _poincare_fns(m, x):
    y = gp.poincare_fc(x, m.z, m.r, c=1.0)
    y = gp.poincare_relu(y, c=1.0)
    return gp.mlr(y, m.a, m.p, c=1.0)


def _ssm_fns(m, u):
    L = u.shape[-1]
    K = gssm.s4d_kernel(m.log_dt, m.A, m.B, m.C, L)
    V = gssm.vandermonde(m.v, m.A.exp() * 0.1, L)
    y = gssm.fftconv(u, K, m.D)
    z = gssm.ssm_conv(u, m.log_dt, m.A, m.B, m.C, D=m.D)
    return y + z + V.real.sum()


def _attention_fn(m, q):
    return triple_attention(q, m.k1, m.k2, m.v1, m.v2, causal=True)


def _stereo_more(m, x):
    k = m.k
    y = st.mobius_coadd(x, m.b.expand_as(x), k=k) + st.mobius_cosub(x, m.b.expand_as(x), k=k)
    u = st.egrad2rgrad(x, y, k=k)
    g = st.geodesic(m.t, x, m.b.expand_as(x), k=k) + st.geodesic_unit(m.t, x, u, k=k) + st.retr(x, 0.1 * u, k=k)
    a = st.antipode(x, k=k) + st.inv_sproj(st.sproj(x, k=k), k=k)
    f = st.mobius_fn_apply(torch.tanh, x, k=k) + st.mobius_fn_apply_chain(x, torch.tanh, torch.sin, k=k)
    n = st.inner(x, u, y, k=k) + st.norm(x, u, k=k) + st.tan_k(n0 := x.norm(dim=-1), k) + st.artan_k(0.5 * n0, k)
    return (g + a + f).sum(-1) + n + st.arsin_k(0.5 * n0, k) + st.sin_k(n0, k)


def _poincare_more(m, x):
    c = 1.0
    y = gp.max_pool2d(x, c=c, kernel_size=2) + gp.avg_pool2d(x, c=c, kernel_size=2)
    u = gp.poincare_unfold(x, c=c, kernel_size=2)
    r = gp.transp(m.b, m.b.flip(0), gp.logmap(m.b, gp.mobius_add(m.b, m.b.flip(0), c=c), c=c), c=c)
    z = gp.dist(gp.expmap(m.b, 0.1 * r, c=c), gp.project(m.b.flip(0), c=c), c=c)
    mid = gp.midpoint(gp.mobius_linear(m.b, m.W, m.bias, c=c), c=c)
    return y.sum() + u.sum() + z.sum() + mid.sum()


def _gaunt_more(m, x1, x2):
    return (geoops.gaunt.gaunt_product([x1, x2], 2, weights=[m.w1, None], weight_out=m.wo)
            + geoops.gaunt.gaunt_power(x1, 2, 2))


def build(name):
    """(model, example inputs) in training mode."""
    torch.manual_seed(0)
    if name in dm.FAMILIES:
        m, args, _ = dm.build(name)
        return m.train(), args
    if name == "stereo_rows":
        m = Fn(_stereo_rows, k=torch.tensor(-0.8), b=_ball(1, 3)[0], r=torch.tensor(0.7))
        return m, (_ball(4, 3),)
    if name == "stereo_triple":
        m = Fn(_stereo_triple, k=torch.tensor(-0.8), b=_ball(1, 3))
        return m, (_ball(4, 3),)
    if name == "stereo_pair":
        m = Fn(_stereo_pair, k=torch.tensor(-0.8), b=_ball(5, 3))
        return m, (_ball(4, 3),)
    if name == "stereo_matrix":
        m = Fn(_stereo_matrix, k=torch.tensor(-0.8), M=0.5 * torch.randn(4, 4), w=torch.randn(4),
               Mb=0.5 * torch.randn(2, 2, 2), wm=torch.rand(2, 1) + 0.5)
        return m, (_ball(3, 4),)
    if name == "poincare_fns":
        m = Fn(_poincare_fns, z=0.3 * torch.randn(4, 5), r=0.1 * torch.randn(5), a=0.3 * torch.randn(5, 3),
               p=0.1 * torch.randn(3))
        return m, (_ball(4, 4),)
    if name == "ssm_fns":
        H, N = 3, 4
        m = Fn(_ssm_fns, log_dt=torch.rand(H) - 3.0, A=torch.complex(-0.5 * torch.ones(H, N), torch.randn(H, N)),
               B=torch.randn(H, N, dtype=torch.cfloat), C=torch.randn(H, N, dtype=torch.cfloat),
               D=torch.randn(H), v=torch.randn(H, N, dtype=torch.cfloat))
        return m, (torch.randn(2, H, 8),)
    if name == "attention_fn":
        g = lambda *s: 0.5 * torch.randn(*s)  # noqa: E731
        m = Fn(_attention_fn, k1=g(1, 2, 5, 4), k2=g(1, 2, 5, 4), v1=g(1, 2, 5, 3), v2=g(1, 2, 5, 3))
        return m, (g(1, 2, 5, 4),)
    if name == "stereo_more":
        m = Fn(_stereo_more, k=torch.tensor(-0.8), b=_ball(1, 3), t=torch.tensor(0.3))
        return m, (_ball(4, 3),)
    if name == "poincare_more":
        m = Fn(_poincare_more, b=_ball(3, 4), W=0.5 * torch.randn(4, 4), bias=_ball(1, 4)[0])
        x = st.expmap0(0.1 * torch.randn(2, 4, 4, 3), k=-1.0).permute(0, 3, 1, 2).contiguous()
        return m, (x,)
    if name == "gaunt_more":
        m = Fn(_gaunt_more, w1=torch.rand(1, 3) + 0.5, wo=torch.rand(1, 3) + 0.5)
        return m, (torch.randn(3, 9), torch.randn(3, 9))
    raise KeyError(name)


CASES = ("poincare", "ssm", "gaunt", "attention", "dist", "stereo_rows", "stereo_triple", "stereo_pair",
         "stereo_matrix", "stereo_more", "poincare_fns", "poincare_more", "ssm_fns", "attention_fn", "gaunt_more")


def _loss(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum((o.real if o.is_complex() else o).sin().sum() for o in outs if o.is_floating_point() or o.is_complex())


def _grads(mod, args, *, create_graph=False):
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    loss = _loss(mod(*args))
    params = {n: p for n, p in mod.named_parameters() if p.requires_grad}
    leaves = list(params.values()) + [a for a in args if a.requires_grad]
    gs = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=create_graph)
    names = [n.removeprefix("_orig_mod.") for n in params] + [f"input{i}" for i, a in enumerate(args) if a.requires_grad]
    return dict(zip(names, gs))


def _assert_grads(got, want, exact=False):
    assert set(got) == set(want)
    for name in want:
        g, w = got[name], want[name]
        assert (g is None) == (w is None), name
        if w is not None:
            if exact:
                assert torch.equal(g, w), name
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# The portable stage (scripts/portable_tests.sh) deselects the export-vs-eager tests below: each of their checks compares
# an exported (saved and loaded, or compiled) program with the eager model in the same build, and every geoops._C
# entry point they read (57, recorded per test in session 54) is read by a passing test the portable stage keeps, in
# tests/test_stereographic_pairwise.py, test_poincare.py, test_ssm.py, test_gaunt.py, test_stereographic_midpoint.py,
# test_stereographic_triple.py, test_stereographic_rep.py, test_poincare_bn_train_passes.py, test_poincare_layers.py,
# test_stereographic.py.  test_bare_forward_op_gradcheck stays: gradcheck checks the kernels against finite differences.
_EXPORT_VS_EAGER = pytest.mark.build_relative(
    "an exported (saved / loaded, compiled) program against the eager model in one build; every geoops._C entry "
    "point it reads is read by the family files' eager tests, which the portable stage runs")


# the Poincaré layers' eager CPU path runs fused layer Functions (PoincareConv2dFn, PoincareMlrCppFn, ...) that a
# graph does not (GEOOPS_POINCARE_FUSED=0 runs the graph's route eagerly): equal to rounding; elsewhere the same
# kernels run, forward and backward, and the gradients are the same bits
_NOT_BITWISE = ("poincare", "poincare_fns", "poincare_more")


def _export(name):
    m, args = build(name)
    return m, args, torch.export.export(m, args)


@_EXPORT_VS_EAGER
@pytest.mark.parametrize("name", CASES)
def test_backward_through_the_exported_module_matches_eager(name):
    m, args, ep = _export(name)
    assert any("geoops" in str(n.target) for n in ep.graph.nodes)
    want = _grads(m, args)
    assert any(g is not None for g in want.values())
    _assert_grads(_grads(ep.module(), args), want, exact=name not in _NOT_BITWISE)


@_EXPORT_VS_EAGER
@pytest.mark.parametrize("name", ("poincare", "ssm", "gaunt", "attention", "dist", "stereo_matrix"))
def test_backward_after_save_and_load(name):
    m, args = build(name)
    if name == "poincare":
        m.eval()  # (see test_save_of_a_training_mode_batch_norm_program)
    ep = torch.export.export(m, args)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    _assert_grads(_grads(loaded.module(), args), _grads(m, args))


@_EXPORT_VS_EAGER
@pytest.mark.parametrize("name", ("ssm", "ssm_fns", "stereo_rows", "gaunt", "poincare_fns"))
def test_backward_of_a_program_exported_without_gradients(name):
    """Exported with frozen parameters (no gradient wanted at trace time) the public functions call the forward ops
    alone, with their inference-only choices (ssm_conv keeps no kernel spectrum); unfrozen afterwards, the program
    still differentiates to the eager gradients."""
    m, args = build(name)
    for p in m.parameters():
        p.requires_grad_(False)
    ep = torch.export.export(m, args)
    mod = ep.module()
    for mm in (m, mod):
        for p in mm.parameters():
            p.requires_grad_(True)
    _assert_grads(_grads(mod, args), _grads(m, args))


def test_every_forward_op_has_an_autograd_formula():
    """Each ``<op>_fwd`` op registered (define_op) is differentiable on its own (op_autograd): none is left with
    the error that says it cannot be."""
    from geoops import _library

    assert _library.FORWARD_OPS and set(_library.FORWARD_OPS) <= _library.OP_AUTOGRAD


@_EXPORT_VS_EAGER
@pytest.mark.parametrize("name", ("poincare_fns", "ssm", "gaunt", "attention", "dist", "stereo_rows"))
def test_compiled_exported_module_training_step(name):
    """torch.compile of ``ep.module()`` (dynamo + AOTAutograd, which traces the ops' autograd formulas) outside
    no_grad: one SGD step gives the eager model's parameters."""
    m, args, ep = _export(name)
    mod = ep.module()
    cm = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for model, run in ((m, m), (mod, cm)):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        opt.zero_grad()
        _loss(run(*args)).backward()
        opt.step()
    want = {n: p for n, p in m.named_parameters()}
    for n, p in mod.named_parameters():
        torch.testing.assert_close(p, want[n], rtol=1e-5, atol=1e-6, msg=lambda s: f"{n}: {s}")


@_EXPORT_VS_EAGER
def test_inductor_compiled_exported_module_gradients():
    """The same through Inductor (one small family: a C++ compile)."""
    m, args, ep = _export("attention_fn")
    cm = torch.compile(ep.module(), fullgraph=True)
    _assert_grads(_grads(cm, args), _grads(m, args))


@_EXPORT_VS_EAGER
def test_double_backward_through_the_exported_module():
    """gaunt's backward is differentiable (GauntFn's, for forces): so is the exported program's; a family whose
    backward kernels are once-differentiable raises on the second derivative, as its eager path does."""
    m, args, ep = _export("gaunt")
    mod = ep.module()

    def second(model):
        x = [a.detach().clone().requires_grad_() for a in args]
        g, = torch.autograd.grad(_loss(model(*x)), x[0], create_graph=True)
        return torch.autograd.grad(g.square().sum(), [x[0], x[1], *[p for p in model.parameters()]])

    for got, want in zip(second(mod), second(m)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    m, args, ep = _export("stereo_rows")
    x = args[0].clone().requires_grad_()
    g, = torch.autograd.grad(_loss(ep.module()(x)), x, create_graph=True)
    # (the error names the op, not torch's generated node class "GeneratedBackwardFor_geoops_..._fwd_default")
    with pytest.raises(RuntimeError, match=r"second derivatives through geoops::\w+_fwd are not supported"):
        g.sum().backward()


@_EXPORT_VS_EAGER
def test_save_of_a_training_mode_batch_norm_program():
    """A Poincaré batch norm exported in training mode updates its running statistics in the program; the update
    ran under torch.no_grad(), a region without outputs that torch.export.save (2.13) refused ("Node.meta
    wrap_with_set_grad_enabled is missing val field").  Its inputs are detached, so it needs no such region: the
    program saves, loads, trains and updates the statistics as the eager model does."""
    m, args = build("poincare")
    ep = torch.export.export(m, args)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    mod = torch.export.load(buf).module()
    _assert_grads(_grads(mod, args), _grads(m, args))
    want = dict(m.named_buffers())
    for n, b in mod.named_buffers():
        torch.testing.assert_close(b, want[n], rtol=1e-5, atol=1e-6)


def _op_cases():
    torch.manual_seed(0)
    d = torch.float64
    pt = lambda n, D: st.expmap0(0.3 * torch.randn(n, D, dtype=d), k=-1.0)  # noqa: E731
    x, y = pt(4, 3), pt(4, 3)
    k = torch.tensor([-0.8], dtype=d)
    c = torch.tensor([0.9], dtype=d)
    O = torch.ops.geoops
    H, N = 2, 3
    A = torch.complex(-0.5 * torch.ones(H, N, dtype=d), torch.randn(H, N, dtype=d))
    return {
        "dist": (O.dist_fwd.default, (x, y, k, None, -1.0), (0, 1, 2)),
        "gyration": (O.gyration_fwd.default, (x, y, x.flip(0), k, 0), (0, 1, 2, 3)),
        "cdist": (O.cdist_fwd.default, (x[None], y[None], k, True), (0, 1, 2)),
        "mobius_matvec": (O.mobius_matvec_fwd.default, (x, 0.5 * torch.randn(3, 3, dtype=d), k), (0, 1, 2)),
        "stereo_midpoint": (O.stereo_midpoint_fwd.default, (x[None], torch.rand(1, 4, dtype=d), k, False), (0, 1, 2)),
        "poincare_fc": (O.poincare_fc_fwd.default, (x, 0.5 * torch.randn(3, 2, dtype=d), torch.randn(2, dtype=d), c,
                                                    1e-5, True, False), (0, 1, 2, 3)),
        "poincare_relu": (O.poincare_relu_fwd.default, (x, c, 1e-5), (0, 1)),
        "triple_attention": (O.triple_attention_fwd.default, tuple(0.5 * torch.randn(1, 1, 3, 2, dtype=d) for _ in range(5))
                             + (0.7, False, 0, 0), (0, 1, 2, 3, 4)),
        "ssm_discretize": (O.ssm_discretize_fwd.default, (torch.rand(H, dtype=d) - 3, A, torch.randn(H, N, dtype=torch.cdouble),
                                                          torch.randn(H, N, dtype=torch.cdouble), "zoh"), (0, 1, 2, 3)),
    }


@pytest.mark.parametrize("name", list(_op_cases()))
def test_bare_forward_op_gradcheck(name):
    """The forward op differentiated on its own, as in a program: gradcheck in float64 (first output), and opcheck's
    autograd-registration test."""
    op, args, diff = _op_cases()[name]
    args = list(args)
    for i in diff:
        args[i] = args[i].detach().requires_grad_()
    torch.library.opcheck(op, tuple(args), test_utils=("test_schema", "test_autograd_registration"))

    def first(*ts):
        a = list(args)
        for i, t in zip(diff, ts):
            a[i] = t
        out = op(*a)
        return out[0] if isinstance(out, (tuple, list)) else out

    assert torch.autograd.gradcheck(first, tuple(args[i] for i in diff))
