"""geoops.compat: patch_geoopt / unpatch_geoopt, and the rest of geoopt's math surface in geoops.stereographic."""
from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

import geoops.compat as compat
import geoops.stereographic as gs

geoopt = pytest.importorskip("geoopt")
gm = geoopt.manifolds.stereographic.math


def _pts(n, d, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale / d ** 0.5


def test_patch_and_unpatch_restore_exactly():
    before = {name: getattr(gm, name) for name in dir(gm)}
    compat.patch_geoopt()
    try:
        assert compat.is_patched()
        assert gm.mobius_add is gs.mobius_add and gm.dist is gs.dist
        compat.patch_geoopt()  # idempotent
    finally:
        compat.unpatch_geoopt()
    after = {name: getattr(gm, name) for name in dir(gm)}
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)
    assert not compat.is_patched()


@pytest.mark.parametrize("cls", ["PoincareBall", "Stereographic", "SphereProjection"])
def test_patched_manifold_methods_match_geoopt(cls):
    kw = {"Stereographic": {"k": -0.7}, "PoincareBall": {"c": 1.3}, "SphereProjection": {"k": 0.6}}[cls]
    man = getattr(geoopt, cls)(**kw).to(torch.float64)
    x, y, u = man.projx(_pts(7, 5, seed=1)), man.projx(_pts(7, 5, seed=2)), _pts(7, 5, seed=3)
    calls = {
        "dist": lambda: man.dist(x, y), "expmap": lambda: man.expmap(x, u), "logmap": lambda: man.logmap(x, y),
        "mobius_add": lambda: man.mobius_add(x, y), "egrad2rgrad": lambda: man.egrad2rgrad(x, u),
        "transp": lambda: man.transp(x, y, u), "retr": lambda: man.retr(x, u),
        # keepdim=True: with keepdim=False geoopt's inner broadcasts rows to (B, B) (see test_inner_keepdim_false)
        "inner": lambda: man.inner(x, u, u, keepdim=True),
        "dist0": lambda: man.dist0(x), "expmap0": lambda: man.expmap0(u), "logmap0": lambda: man.logmap0(y),
        "mobius_scalar_mul": lambda: man.mobius_scalar_mul(torch.tensor(0.7, dtype=torch.float64), x),
        "weighted_midpoint": lambda: man.weighted_midpoint(x),
        "dist2plane": lambda: man.dist2plane(x, y, u),
        "geodesic": lambda: man.geodesic(torch.tensor(0.3, dtype=torch.float64), x, y),
    }
    expected = {name: f() for name, f in calls.items()}
    with compat.patched_geoopt():
        got = {name: f() for name, f in calls.items()}
    for name in calls:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-11, msg=name)


def _train_rsgd(patched, *, shape=(10, 3), dtype=torch.float64, c=1.0, scale=0.1, lr=0.1, steps=5, strided=False):
    """A few RiemannianSGD steps pulling a ManifoldParameter towards fixed points, plain or patched."""
    torch.manual_seed(0)
    ball = geoopt.PoincareBall(c=c)
    init = ball.projx(torch.randn(*shape, dtype=dtype) * scale)
    if strided:
        init = init.t().contiguous().t()
    p = geoopt.ManifoldParameter(init, manifold=ball)
    opt = geoopt.optim.RiemannianSGD([p], lr=lr)
    target = ball.projx(torch.randn(*shape, dtype=dtype) * scale)
    with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
        for _ in range(steps):
            opt.zero_grad()
            ball.dist(p, target).pow(2).sum().backward()
            opt.step()
    return p.detach().clone()


def test_patched_riemannian_sgd_step_matches():
    torch.testing.assert_close(_train_rsgd(True), _train_rsgd(False), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_patched_rsgd_step_with_closure(momentum):
    """step(closure) runs the closure before reading the gradients, as geoopt does: a closure that creates
    the gradients (none before the first step) updates every parameter, and step returns the closure's loss
    (the fused step and the momentum fallback alike)."""
    def run(patched):
        torch.manual_seed(0)
        ball = geoopt.PoincareBall(c=0.8)
        p = geoopt.ManifoldParameter(ball.projx(torch.randn(5, 3, dtype=torch.float64) * 0.2), manifold=ball)
        q = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
        target = ball.projx(torch.randn(5, 3, dtype=torch.float64) * 0.2)
        opt = geoopt.optim.RiemannianSGD([p, q], lr=0.02, momentum=momentum)

        def closure():
            opt.zero_grad()
            loss = ball.dist(p, target).pow(2).sum() + q.pow(2).sum()
            loss.backward()
            return loss

        losses = []
        with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
            for _ in range(3):
                losses.append(float(opt.step(closure)))
        return p.detach().clone(), q.detach().clone(), losses

    (p0, q0, l0), (p1, q1, l1) = run(False), run(True)
    # geoops' dist gradient is the more accurate one (geoopt's is off by ~4e-8 here): not bit for bit
    torch.testing.assert_close(p1, p0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(q1, q0, rtol=1e-12, atol=1e-14)
    assert l1 == pytest.approx(l0, rel=1e-7)


def test_patched_zero_grad_and_unpatch_restore():
    """zero_grad under the patch clears (set_to_none) or zeros the grads as torch's, runs the step hooks'
    setup, records its profiler range while profiling, and unpatch removes it from both optimizer classes."""
    orig = {cls: cls.__dict__.get("zero_grad") for cls in (geoopt.optim.RiemannianSGD, geoopt.optim.RiemannianAdam)}
    ball = geoopt.PoincareBall()
    p = geoopt.ManifoldParameter(ball.projx(torch.randn(4, 3) * 0.1), manifold=ball)
    opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
    with compat.patched_geoopt():
        assert geoopt.optim.RiemannianSGD.zero_grad is not torch.optim.Optimizer.zero_grad
        p.grad = torch.ones_like(p)
        opt.zero_grad(set_to_none=False)
        assert p.grad is not None and bool((p.grad == 0).all())
        opt.zero_grad()
        assert p.grad is None
        p.grad = torch.ones_like(p)
        with torch.profiler.profile() as prof:
            opt.zero_grad()
        assert p.grad is None
        assert any("zero_grad" in e.name for e in prof.events())
    for cls, fn in orig.items():
        assert cls.__dict__.get("zero_grad") is fn
    assert geoopt.optim.RiemannianSGD.zero_grad is torch.optim.Optimizer.zero_grad


def test_patched_rsgd_runs_every_kind_of_step_hook():
    """The patched RiemannianSGD.step runs the per-optimizer pre/post hooks and torch's global optimizer pre/post
    hooks, each kind alone as well (session 28: the hook loops run only when a hook is registered; a guard that
    looked at the wrong registry would skip one kind)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    ball = geoopt.PoincareBall()
    p = geoopt.ManifoldParameter(ball.projx(torch.randn(6, 3) * 0.1), manifold=ball)
    opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
    calls = []
    regs = {"pre": lambda: opt.register_step_pre_hook(lambda *a: calls.append("pre")),
            "post": lambda: opt.register_step_post_hook(lambda *a: calls.append("post")),
            "global_pre": lambda: register_optimizer_step_pre_hook(lambda *a: calls.append("global_pre")),
            "global_post": lambda: register_optimizer_step_post_hook(lambda *a: calls.append("global_post"))}
    with compat.patched_geoopt():
        for kinds in (["pre"], ["post"], ["global_pre"], ["global_post"], list(regs)):
            handles = [regs[kind]() for kind in kinds]
            try:
                calls.clear()
                p.grad = torch.ones_like(p) * 1e-3
                opt.step()
                assert sorted(calls) == sorted(kinds)
            finally:
                for h in handles:
                    h.remove()
        calls.clear()
        p.grad = torch.ones_like(p) * 1e-3
        opt.step()
        assert calls == []


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_patched_rsgd_float32_direct_and_fallback(layout):
    """float32 parameters take the direct one-call step when contiguous and the checked path otherwise:
    both equal geoopt's step."""
    kw = dict(shape=(9, 5), dtype=torch.float32, c=0.7, scale=0.3, lr=0.3, steps=4, strided=layout == "strided")
    torch.testing.assert_close(_train_rsgd(True, **kw), _train_rsgd(False, **kw), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.8])
@pytest.mark.parametrize("name", ["gyration", "mobius_coadd", "mobius_cosub", "parallel_transport",
                                  "parallel_transport0", "parallel_transport0back", "egrad2rgrad", "inner", "norm",
                                  "geodesic", "geodesic_unit", "antipode", "sproj", "inv_sproj", "dist2plane",
                                  "weighted_midpoint", "mobius_fn_apply", "mobius_fn_apply_chain"])
def test_surface_matches_geoopt(name, kval):
    if kval == 0.0 and name in ("sproj", "inv_sproj"):
        pytest.skip("undefined at k = 0")
    k = torch.tensor(kval, dtype=torch.float64)
    x, y, u = _pts(6, 4, seed=4), _pts(6, 4, seed=5), _pts(6, 4, seed=6)
    t = torch.tensor(0.4, dtype=torch.float64)
    args = {
        "gyration": (x, y, u), "mobius_coadd": (x, y), "mobius_cosub": (x, y), "parallel_transport": (x, y, u),
        "parallel_transport0": (y, u), "parallel_transport0back": (x, u), "egrad2rgrad": (x, u), "inner": (x, u, y),
        "norm": (x, u), "geodesic": (t, x, y), "geodesic_unit": (t, x, u), "antipode": (x,), "sproj": (x,),
        "inv_sproj": (x,), "dist2plane": (x, y, u), "weighted_midpoint": (x,),
        "mobius_fn_apply": (torch.tanh, x), "mobius_fn_apply_chain": (x, torch.tanh, torch.sin),
    }[name]
    got = getattr(gs, name)(*args, k=k)
    if name == "inner":  # geoopt's keepdim=False result is a (B, B) outer product: compare its keepdim=True rows
        exp = gm.inner(*args, k=k, keepdim=True).squeeze(-1)
    else:
        exp = getattr(gm, name)(*args, k=k)
    torch.testing.assert_close(got, exp, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dim", [-1, 0])
def test_inner_keepdim_false(dim):
    """inner(x, u, v) reduces the vector dim to one value per row: geoopt (and geoops before) multiplied the
    kept-dim lambda_x^2 (B, 1) by the reduced <u, v> (B,), a (B, B) outer product."""
    x, u, v = _pts(5, 3, seed=7), _pts(5, 3, seed=8), _pts(5, 3, seed=9)
    k = torch.tensor([[-1.0], [-0.3], [0.0], [0.4], [0.9]], dtype=torch.float64)
    if dim == 0:
        x, u, v, k = x.t(), u.t(), v.t(), k.t()
    exp = (2 / (1 + k * (x * x).sum(dim, keepdim=True))) ** 2 * (u * v).sum(dim, keepdim=True)
    got = gs.inner(x, u, v, k=k, dim=dim)
    assert got.shape == (5,)
    torch.testing.assert_close(got, exp.squeeze(dim), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gs.inner(x, u, v, k=k, dim=dim, keepdim=True), exp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gs.inner(x[:, :1] if dim == 0 else x[0], u[:, :1] if dim == 0 else u[0],
                                        v[:, :1] if dim == 0 else v[0], k=-1.0, dim=dim).squeeze(),
                               gs.inner(x, u, v, k=-1.0, dim=dim)[0])
    with compat.patched_geoopt():
        man = geoopt.Stereographic(k=-0.5).to(torch.float64)
        assert man.inner(x.t() if dim == 0 else x, u.t() if dim == 0 else u).shape == (5,)


@pytest.mark.parametrize("scaled", [False, True])
def test_dist2plane_per_row_curvature_keepdim_false(scaled):
    """dist2plane with a per-row k (B, 1) and keepdim=False: one distance per row (B,); it multiplied k by the
    reduced (B,) sums, a (B, B) matrix (as geoopt does).  Values equal geoopt's keepdim=True rows."""
    x, p, a = _pts(5, 3, seed=12), _pts(5, 3, seed=13), _pts(5, 3, seed=14)
    k = torch.tensor([[-1.0], [-0.3], [0.0], [0.4], [0.9]], dtype=torch.float64)
    got = gs.dist2plane(x, p, a, k=k, signed=True, scaled=scaled)
    assert got.shape == (5,)
    exp = gm.dist2plane(x, p, a, k=k, keepdim=True, signed=True, scaled=scaled).squeeze(-1)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gs.dist2plane(x.t(), p.t(), a.t(), k=k.t(), dim=0, signed=True, scaled=scaled), exp,
                               rtol=1e-9, atol=1e-11)


_BAD = torch.ones(4, 3, dtype=torch.int64)
_X = torch.randn(4, 3, dtype=torch.float64) * 0.1


@pytest.mark.parametrize("call,exc,match", [
    (lambda: gs.gyration(_X, _X, _BAD, k=-1.0), TypeError, "gyration: u must be a floating-point"),
    (lambda: gs.gyration([1.0], _X, _X, k=-1.0), TypeError, "gyration: a must be a torch.Tensor"),
    (lambda: gs.gyration(_X, _X, torch.randn(4, 5), k=-1.0), ValueError, "gyration: u of shape"),
    (lambda: gs.gyration(_X, _X, _X, k=torch.randn(3, 1)), ValueError, "gyration: k of shape"),
    (lambda: gs.gyration(_X, _X, _X, k=-1.0, dim=2), IndexError, "gyration: dim=2"),
    (lambda: gs.parallel_transport(_X, torch.randn(5, 3), _X, k=-1.0), ValueError, "parallel_transport: y of shape"),
    (lambda: gs.parallel_transport0back(_X, torch.randn(4, 5), k=-1.0), ValueError, "parallel_transport0back: v"),
    (lambda: gs.egrad2rgrad(_X, torch.randn(4, 5), k=-1.0), ValueError, "egrad2rgrad: grad of shape"),
    (lambda: gs.egrad2rgrad(_X, _BAD, k=-1.0), TypeError, "egrad2rgrad: grad must be a floating-point"),
    (lambda: gs.inner(_X, _BAD, _X, k=-1.0), TypeError, "inner: u must be"),
    (lambda: gs.norm(_X, _BAD, k=-1.0), TypeError, "norm: u must be"),
    (lambda: gs.geodesic("a", _X, _X, k=-1.0), TypeError, "geodesic: t must be"),
    (lambda: gs.geodesic_unit(0.5, _X, _BAD, k=-1.0), TypeError, "geodesic_unit: u must be"),
    (lambda: gs.antipode(torch.tensor(0.5), k=1.0), ValueError, "antipode: x must have at least one dimension"),
    (lambda: gs.sproj(_BAD, k=1.0), TypeError, "sproj: x must be"),
    (lambda: gs.dist2plane(_X, _X, torch.randn(4, 5), k=-1.0), ValueError, "dist2plane: a of shape"),
    (lambda: gs.weighted_midpoint(_BAD, k=-1.0), TypeError, "weighted_midpoint: xs must be"),
    (lambda: gs.weighted_midpoint(_X, torch.rand(5), k=-1.0), ValueError, "weighted_midpoint: weights of shape"),
    (lambda: gs.mobius_fn_apply(3, _X, k=-1.0), TypeError, "mobius_fn_apply: fn must be callable"),
    (lambda: gs.retr(_X, torch.randn(4, 5), k=-1.0), ValueError, "retr: u of shape"),
])
def test_surface_errors_name_the_argument(call, exc, match):
    """The composed ops check their arguments before any kernel runs (before: torch's own messages from deep
    inside, naming no argument, or a silent broadcast of mismatched vectors / promotion of integer tensors)."""
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("kval", [-1.0, 0.6])
@pytest.mark.parametrize("name", ["antipode", "weighted_midpoint", "weighted_midpoint_posweight"])
def test_surface_compile_fullgraph(name, kval):
    """antipode and weighted_midpoint branched on tensor values (`bool(...)`): torch.compile(fullgraph=True)
    failed on a data-dependent guard; under compile they now take the branch-free path, same values."""
    import torch._dynamo

    k = torch.tensor(kval, dtype=torch.float64)
    x, w = _pts(5, 3, seed=10), torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.3
    f = {"antipode": lambda a: gs.antipode(a, k=k),
         "weighted_midpoint": lambda a: gs.weighted_midpoint(a, w.abs(), k=k),
         "weighted_midpoint_posweight": lambda a: gs.weighted_midpoint(a, w, k=k, posweight=True)}[name]
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, f(x), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(f(x), getattr(gm, name.replace("_posweight", ""))(
        x, *(() if name == "antipode" else (w.abs() if name == "weighted_midpoint" else w,)), k=k,
        **({"posweight": True} if name.endswith("posweight") else {})), rtol=1e-9, atol=1e-11)


def test_antipode_per_row_curvature_of_both_signs():
    """A per-row k with ball, Euclidean and sphere rows: the sphere's formula runs on a safe k where it is not
    used, values and gradients (to x and k) as geoopt's and finite."""
    x = _pts(3, 4, seed=11).requires_grad_()
    k = torch.tensor([[-1.0], [0.0], [0.5]], dtype=torch.float64, requires_grad=True)
    got = gs.antipode(x, k=k)
    exp = gm.antipode(x, k=k)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (x, k), g), torch.autograd.grad(exp, (x, k), g)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("opt,kw", [("RiemannianSGD", dict(lr=1e-4, momentum=0.9, nesterov=True)),
                                    ("RiemannianSGD", dict(lr=1e-2, weight_decay=0.1, stabilize=2)),
                                    ("RiemannianAdam", dict(lr=1e-2, amsgrad=True, weight_decay=0.01, stabilize=3))])
@pytest.mark.parametrize("man", ["PoincareBall-learnable", "SphereProjection", "PoincareBallExact"])
def test_patched_training_matches_geoopt(man, opt, kw):
    """A few steps of a small loss over dist, dist0, logmap0, norm and inner: patched and plain geoopt agree
    (momentum, weight decay, stabilize, Adam / AMSGrad, a learnable curvature, the Exact variant)."""
    def run():
        torch.manual_seed(0)
        m = {"PoincareBall-learnable": lambda: geoopt.PoincareBall(c=1.3, learnable=True),
             "SphereProjection": lambda: geoopt.SphereProjection(k=0.8),
             "PoincareBallExact": lambda: geoopt.PoincareBallExact(c=0.7)}[man]().to(torch.float64)
        emb = geoopt.ManifoldParameter(m.random_normal(12, 4, std=0.3, dtype=torch.float64), manifold=m)
        params = [emb] + list(m.parameters())
        o = getattr(geoopt.optim, opt)(params, **kw)
        for _ in range(4):
            o.zero_grad()
            loss = (m.dist(emb[:6], emb[6:]).pow(2).sum() + m.dist0(emb[:3]).sum() + m.logmap0(emb).pow(2).sum()
                    + m.norm(emb[:4], emb[4:8]).sum() + m.inner(emb[:2], emb[2:4], emb[4:6], keepdim=True).sum())
            loss.backward()
            o.step()
        return [p.detach().clone() for p in params]

    plain = run()
    with compat.patched_geoopt():
        patched = run()
    for a, b in zip(patched, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["tan_k", "artan_k", "sin_k", "arsin_k"])
def test_curvature_trig_matches_geoopt(name):
    """geoopt's tan_k / artan_k / sin_k / arsin_k (artan_k was missing, tan_k not exported), through k = 0."""
    assert name in gs.__all__
    x = torch.linspace(-0.6, 0.6, 7, dtype=torch.float64)  # inside the ball of k = -2
    for kval in (-2.0, -1e-7, 0.0, 1e-5, 0.5):
        k = torch.tensor(kval, dtype=torch.float64)
        torch.testing.assert_close(getattr(gs, name)(x, k), getattr(gm, name)(x, k), rtol=1e-9, atol=1e-12)


def test_missing_geoopt_gives_clear_error():
    code = (
        "import sys; sys.modules['geoopt'] = None\n"
        "import geoops.compat as c\n"
        "try:\n    c.patch_geoopt()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR geoops.compat.patch_geoopt() needs geoopt" in res.stdout, res.stdout + res.stderr[-1500:]


class _OwnK(geoopt.PoincareBall):
    """A PoincareBall subclass with its own k property (the step reads it every time)."""

    @property
    def k(self):
        return -torch.nn.functional.softplus(self.isp_c) * 1.0


@pytest.mark.parametrize("change", ["in_place", "data_swap"])
@pytest.mark.parametrize("man", ["PoincareBall", "SphereProjection", "Stereographic", "OwnK"])
def test_patched_rsgd_reads_k_again_after_it_changes(man, change):
    """The patched RiemannianSGD step reads a manifold's k once per value of the tensor it comes from (session 20:
    PoincareBall's -softplus(isp_c) is two dispatches per read): a curvature changed between steps, in place or by
    swapping .data, is the one the next step uses, as in geoopt's own step."""
    def run():
        torch.manual_seed(0)
        m = {"PoincareBall": lambda: geoopt.PoincareBall(c=1.3), "SphereProjection": lambda: geoopt.SphereProjection(k=0.8),
             "Stereographic": lambda: geoopt.Stereographic(k=-0.6), "OwnK": lambda: _OwnK(c=0.9)}[man]()
        m = m.to(torch.float64)
        emb = geoopt.ManifoldParameter(m.random_normal(10, 4, std=0.2, dtype=torch.float64), manifold=m)
        o = geoopt.optim.RiemannianSGD([emb], lr=0.05)
        src = m._parameters.get("isp_c", m._parameters.get("isp_k", m._parameters.get("k")))
        for step in range(4):
            o.zero_grad()
            (m.dist(emb[:5], emb[5:]).pow(2).sum() + m.dist0(emb).sum()).backward()
            o.step()
            with torch.no_grad():
                if change == "in_place":
                    src.mul_(1.25)
                else:
                    src.data = src.data * 1.25
        return emb.detach().clone()

    plain = run()
    with compat.patched_geoopt():
        patched = run()
    torch.testing.assert_close(patched, plain, rtol=1e-9, atol=1e-11)


def test_fused_rsgd_step_keeps_geoopts_optimizer_state():
    """geoopt's RiemannianSGD step leaves an empty ``state[p]`` per updated parameter (momentum 0): the fused step
    under patch_geoopt() left none, so ``state_dict()["state"]`` was ``{}`` instead of ``{0: {}, 1: {}}``."""
    geoopt = pytest.importorskip("geoopt")

    def run():
        torch.manual_seed(0)
        ball = geoopt.PoincareBall()
        p = geoopt.ManifoldParameter(ball.projx(torch.randn(6, 3) * 0.1), manifold=ball)
        e = torch.nn.Parameter(torch.randn(3))
        unused = torch.nn.Parameter(torch.randn(2))  # no gradient: no state, as in geoopt
        opt = geoopt.optim.RiemannianSGD([p, e, unused], lr=0.1)
        (ball.dist0(p).sum() + (e ** 2).sum()).backward()
        opt.step()
        return opt.state_dict()["state"], p.detach().clone()

    want, p_want = run()
    with compat.patched_geoopt():
        got, p_got = run()
    assert got == want == {0: {}, 1: {}}
    torch.testing.assert_close(p_got, p_want)
