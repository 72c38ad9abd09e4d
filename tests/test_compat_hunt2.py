"""Session 35 user trial of geoops.compat ("modhunt"): patch_geoopt / patch_hypll dropped into existing code."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import geoops.compat as compat

geoopt = pytest.importorskip("geoopt")


def _train_learnable_k(patched, cls, kw, k_first, steps=3):
    """RiemannianSGD over a ManifoldParameter and its manifold's learnable curvature, the curvature listed first
    (what model.parameters() gives when the manifold is registered before the points) or last."""
    torch.manual_seed(0)
    man = getattr(geoopt, cls)(**kw, learnable=True).double()
    with torch.no_grad():
        p0 = man.projx(torch.randn(6, 3, dtype=torch.float64) * 0.2)
        target = man.projx(torch.randn(6, 3, dtype=torch.float64) * 0.2)
    p = geoopt.ManifoldParameter(p0, manifold=man)
    params = list(man.parameters()) + [p] if k_first else [p] + list(man.parameters())
    opt = geoopt.optim.RiemannianSGD(params, lr=0.1)
    with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
        for _ in range(steps):
            opt.zero_grad()
            man.dist(p, target).pow(2).sum().backward()
            opt.step()
    return p.detach().clone(), [q.detach().clone() for q in man.parameters()]


@pytest.mark.parametrize("k_first", [True, False], ids=["k_first", "k_last"])
@pytest.mark.parametrize("cls, kw", [("Stereographic", {"k": -0.4}), ("PoincareBall", {"c": 1.2}),
                                      ("SphereProjection", {"k": 0.4})], ids=["stereo", "ball", "sphere"])
def test_patched_rsgd_learnable_curvature_in_any_order_matches_geoopt(cls, kw, k_first):
    """geoopt's step updates the parameters in order, so a point after its manifold's curvature retracts with the
    curvature already updated in this step; the patched step read k for every point before any update
    (0.8 % off after three steps when the curvature came first)."""
    (p0, k0), (p1, k1) = _train_learnable_k(False, cls, kw, k_first), _train_learnable_k(True, cls, kw, k_first)
    torch.testing.assert_close(p1, p0, rtol=1e-12, atol=1e-14)
    for a, b in zip(k1, k0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_patched_rsgd_learnable_stereographic_k_warns_nothing():
    """A learnable Stereographic k is the Parameter itself: the patched step's float(k) warned 'Converting a tensor
    with requires_grad=True to a scalar' (an error under -W error) where geoopt's step is silent.  Fresh process:
    torch gives that warning once per process."""
    code = textwrap.dedent("""
        import warnings, torch, geoopt
        import geoops.compat as compat
        warnings.simplefilter("error")
        man = geoopt.Stereographic(k=-0.4, learnable=True)
        with torch.no_grad():
            p = geoopt.ManifoldParameter(man.projx(torch.randn(6, 3) * 0.2), manifold=man)
        opt = geoopt.optim.RiemannianSGD([p, *man.parameters()], lr=0.1)
        with compat.patched_geoopt():
            for _ in range(2):
                opt.zero_grad()
                man.dist0(p).sum().backward()
                opt.step()
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_rsgd_built_while_patched_keeps_its_step_hooks_after_unpatch():
    """torch wraps an optimizer class's step in its hook runner when the first instance is built.  When the first
    RiemannianSGD was built under patch_geoopt() (the patched step is already hooked), unpatch_geoopt() put back the
    bare step: that optimizer's step pre/post hooks (and torch's global ones) silently stopped running.  Fresh
    process: no RiemannianSGD exists before the patch."""
    code = textwrap.dedent("""
        import torch, geoopt
        import geoops.compat as compat
        compat.patch_geoopt()
        p = geoopt.ManifoldParameter(torch.zeros(3, 2), manifold=geoopt.PoincareBall())
        opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
        calls = []
        opt.register_step_pre_hook(lambda *a: calls.append("pre"))
        opt.register_step_post_hook(lambda *a: calls.append("post"))
        p.grad = torch.full((3, 2), 0.1)
        opt.step()
        compat.unpatch_geoopt()
        assert not compat.is_patched()
        opt.step()
        assert calls == ["pre", "post"] * 2, calls
        # unpatched again: geoopt's own step (under torch's hook runner), and a second patch / unpatch cycle too
        step = geoopt.optim.RiemannianSGD.step
        assert getattr(step, "hooked", False) and "geoopt" in step.__wrapped__.__module__
        compat.patch_geoopt(); compat.unpatch_geoopt()
        assert geoopt.optim.RiemannianSGD.step is step
        opt.step()
        assert calls == ["pre", "post"] * 3, calls
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("cls, kw", [("PoincareBall", {}), ("SphereProjection", {"k": 0.5})], ids=["ball", "sphere"])
def test_patched_k_first_read_in_inference_mode(cls, kw):
    """Under the patch the manifold's k is cached per value of its source parameter; read first inside
    torch.inference_mode() (an evaluation before training) it was cached as an inference tensor and the next
    training step failed ("Inference tensors cannot be saved for backward"); geoopt itself is fine."""
    torch.manual_seed(0)
    man = getattr(geoopt, cls)(**kw)
    x, t = man.projx(torch.randn(5, 3) * 0.2), man.projx(torch.randn(5, 3) * 0.2)
    p = geoopt.ManifoldParameter(x.clone(), manifold=man)
    opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
    with compat.patched_geoopt():
        with torch.inference_mode():
            want = man.dist(p, t)
        opt.zero_grad()
        d = man.dist(p, t)
        d.sum().backward()
        opt.step()
    torch.testing.assert_close(d.detach(), want)


def test_patched_step_of_a_subclass_runs_the_hooks_once():
    """A RiemannianSGD subclass whose step calls super().step(): torch wraps the subclass's step in its hook runner,
    and the patched RiemannianSGD.step (hooked itself) ran the step hooks a second time (a post hook counting steps,
    an EMA update, ran twice per step; geoopt: once)."""

    class MySGD(geoopt.optim.RiemannianSGD):
        def step(self, closure=None):
            return super().step(closure)

    ball = geoopt.PoincareBall()
    p = geoopt.ManifoldParameter(torch.zeros(3, 2), manifold=ball)
    calls = []
    with compat.patched_geoopt():
        opt = MySGD([p], lr=0.1)
        opt.register_step_pre_hook(lambda *a: calls.append("pre"))
        opt.register_step_post_hook(lambda *a: calls.append("post"))
        p.grad = torch.full((3, 2), 0.1)
        opt.step()
        plain = geoopt.optim.RiemannianSGD([p], lr=0.1)  # no override: the patched step runs the hooks itself
        plain.register_step_post_hook(lambda *a: calls.append("plain post"))
        plain.step()
    assert calls == ["pre", "post", "plain post"], calls
