"""torch.func over geoops.stereographic (grad, vmap, jacrev, jacfwd) against the reference under the same
transforms; the fused Riemannian SGD step of patch_geoopt(); the WordNet benchmark's data path."""
from __future__ import annotations

import contextlib
import time

import pytest
import torch
from torch.func import grad, jacfwd, jacrev, vmap

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

F64 = torch.float64
ROW_OPS = {  # name: (number of point arguments, scalar output)
    "mobius_add": 2, "mobius_sub": 2, "expmap": 2, "logmap": 2, "dist": 2,
    "lambda_x": 1, "expmap0": 1, "logmap0": 1, "dist0": 1, "project": 1,
}


def _pts(*shape, scale=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale / shape[-1] ** 0.5


def _fns(op, k):
    if ROW_OPS[op] == 2:
        return (lambda a, b: getattr(gs, op)(a, b, k=k)), (lambda a, b: getattr(ref, op)(a, b, k=k))
    return (lambda a, b: getattr(gs, op)(a, k=k) + 0 * b.sum()), (lambda a, b: getattr(ref, op)(a, k=k) + 0 * b.sum())


@pytest.mark.parametrize("kv", [-1.0, 0.0, 0.6])
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_row_ops_per_sample_grads_and_jacobians(op, kv):
    k = torch.tensor(kv, dtype=F64)
    x, y = _pts(4, 3, 5, seed=1), _pts(4, 3, 5, seed=2)
    ours, truth = _fns(op, k)
    g = vmap(grad(lambda a, b: ours(a, b).sum(), argnums=(0, 1)))(x, y)
    gr = vmap(grad(lambda a, b: truth(a, b).sum(), argnums=(0, 1)))(x, y)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    jr, jf, jt = jacrev(ours)(x[0], y[0]), jacfwd(ours)(x[0], y[0]), jacrev(truth)(x[0], y[0])
    torch.testing.assert_close(jr, jt, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jf, jt, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vmap(ours)(x, y), truth(x, y), rtol=1e-9, atol=1e-12)


def test_grad_wrt_k_and_r():
    x = _pts(6, 4, seed=3)
    f = lambda kk: gs.dist0(x, k=kk).sum()  # noqa: E731
    fr = lambda kk: ref.dist0(x, k=kk).sum()  # noqa: E731
    k = torch.tensor(-0.8, dtype=F64)
    torch.testing.assert_close(grad(f)(k), grad(fr)(k), rtol=1e-9, atol=1e-12)
    r = torch.tensor([[0.5]] * 6, dtype=F64)
    h = lambda rr: gs.mobius_scalar_mul(rr, x, k=k)  # noqa: E731
    hr = lambda rr: ref.mobius_scalar_mul(rr, x, k=k)  # noqa: E731
    torch.testing.assert_close(jacrev(h)(r), jacrev(hr)(r), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacfwd(h)(r), jacrev(hr)(r), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kv", [-1.0, 0.0, 0.7])
def test_cdist_and_matvec_under_transforms(kv):
    k = torch.tensor(kv, dtype=F64)
    x, y = _pts(3, 4, 5, seed=4), _pts(6, 5, seed=5)
    f = lambda a: gs.cdist(a, y, k=k)  # noqa: E731
    fr = lambda a: ref.cdist(a, y, k=k)  # noqa: E731
    torch.testing.assert_close(vmap(grad(lambda a: f(a).sum()))(x), vmap(grad(lambda a: fr(a).sum()))(x),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacfwd(f)(x[0]), jacrev(fr)(x[0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacrev(f)(x[0]), jacrev(fr)(x[0]), rtol=1e-9, atol=1e-12)
    m = torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(6))
    h = lambda a: gs.mobius_matvec(m, a, k=k)  # noqa: E731
    hr = lambda a: ref.mobius_matvec(m, a, k=k)  # noqa: E731
    torch.testing.assert_close(vmap(h)(x), hr(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacrev(h)(x[0, 0]), jacrev(hr)(x[0, 0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacfwd(h)(x[0, 0]), jacrev(hr)(x[0, 0]), rtol=1e-9, atol=1e-12)
    w = torch.rand(5, dtype=F64) + 0.5
    p = lambda a: gs.mobius_pointwise_mul(w, a, k=k)  # noqa: E731
    pr = lambda a: ref.mobius_pointwise_mul(w, a, k=k)  # noqa: E731
    torch.testing.assert_close(vmap(grad(lambda a: p(a).sum()))(x[0]), vmap(grad(lambda a: pr(a).sum()))(x[0]),
                               rtol=1e-9, atol=1e-12)


def test_composition_ops_vmap():
    k = torch.tensor(-1.0, dtype=F64)
    x, y, v = _pts(4, 3, 5, seed=7), _pts(4, 3, 5, seed=8), _pts(4, 3, 5, seed=9)
    f = lambda a, b, c: gs.parallel_transport(a, b, c, k=k)  # noqa: E731
    torch.testing.assert_close(vmap(f)(x, y, v), f(x, y, v), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["weighted_midpoint_posweight", "antipode_batched_k", "weighted_midpoint_sphere"])
def test_composition_ops_vmap_data_dependent(name):
    """vmap over weighted_midpoint(posweight=True) with batched weights and antipode with a batched k raised
    ("data-dependent control flow": a bool() of a batched tensor); they take the branch-free path now."""
    xs = _pts(3, 5, 4, seed=12)
    w = torch.rand(3, 5, dtype=F64, generator=torch.Generator().manual_seed(2)) - 0.3
    kb = torch.tensor([-1.0, 0.0, 0.5], dtype=F64)
    f, args = {
        "weighted_midpoint_posweight": (lambda a, b: gs.weighted_midpoint(a, b, k=torch.tensor(0.6, dtype=F64),
                                                                          posweight=True), (xs, w)),
        "antipode_batched_k": (lambda a, kk: gs.antipode(a, k=kk), (xs, kb)),
        "weighted_midpoint_sphere": (lambda a, kk: gs.weighted_midpoint(a, k=kk), (xs, kb)),
    }[name]
    expected = torch.stack([f(*[a[i] for a in args]) for i in range(3)])
    torch.testing.assert_close(vmap(f)(*args), expected, rtol=1e-12, atol=1e-14)


def test_second_derivative_raises_instead_of_zero():
    x, y = _pts(3, 4, seed=10), _pts(3, 4, seed=11)
    with pytest.raises(RuntimeError):
        jacrev(grad(lambda a: gs.dist(a, y, k=-1.0).sum()))(x)


def test_eager_path_unchanged_overhead():
    """The torch.func machinery is picked only inside a transform: the eager call stays on the fast Function."""
    x = torch.rand(4, 3, requires_grad=True)
    y = gs.mobius_add(x, x, k=-1.0)
    assert type(y.grad_fn).__name__ == "MobiusAddFnBackward"
    with torch.no_grad():
        assert gs.mobius_add(x, x, k=-1.0).grad_fn is None


# ---------------------------------------------------------------- fused Riemannian SGD step
@pytest.mark.parametrize("kv", [-1.0, -0.3, 0.5])
def test_riemannian_sgd_step_matches_egrad2rgrad_retr(kv):
    x = _pts(50, 6, scale=0.9, seed=12)
    x[:3] *= 3.0  # a few points that the projection pulls back
    g = _pts(50, 6, scale=2.0, seed=13)
    k = torch.tensor(kv, dtype=F64)
    den = (1 + k * (x * x).sum(-1, keepdim=True)).clamp_min(1e-15)  # geoopt clamps lambda_x so
    want = ref.project(x - 0.3 * g * (den ** 2 / 4), k=k, eps=ref.default_eps(F64))
    got = x.clone()
    gs.riemannian_sgd_step_(got, g, lr=0.3, k=k)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    got2 = x.t().contiguous()  # vectors along dim 0: the general path
    gs.riemannian_sgd_step_(got2, g.t().contiguous(), lr=0.3, k=k, dim=0)
    torch.testing.assert_close(got2.t(), want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="grad must have x's shape"):
        gs.riemannian_sgd_step_(x, g[:3], lr=0.1, k=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kv", [-1.0, -0.3, 0.0, 0.5])
@pytest.mark.parametrize("d", [1, 2, 10, 33])
def test_riemannian_sgd_step_kernel_matches_composition(d, kv, dtype):
    """The one-call CPU step (stereo_rsgd_step_cpu) against the reference composition, per dtype, incl.
    rows that the projection pulls back, rows at 0 and a non-contiguous row stride (a column slice)."""
    x = _pts(37, d, scale=0.9, seed=21).to(dtype)
    x[:4] *= 3.0
    x[4] = 0
    g = _pts(37, d, scale=2.0, seed=22).to(dtype)
    k = torch.tensor(kv, dtype=dtype)
    x64, g64 = x.double(), g.double()
    den = (1 + kv * (x64 * x64).sum(-1, keepdim=True)).clamp_min(1e-15)
    want = ref.project(x64 - 0.3 * g64 * (den ** 2 / 4), k=k.double(), eps=ref.default_eps(dtype))
    got = x.clone()
    gs.riemannian_sgd_step_(got, g, lr=0.3, k=k)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got.double(), want, **tol)
    wide = torch.zeros(37, d + 3, dtype=dtype)  # x: rows of stride d + 3 (a view into a wider buffer)
    wide[:, :d] = x
    view = wide[:, :d]
    gs.riemannian_sgd_step_(view, g, lr=0.3, k=k)
    torch.testing.assert_close(view.double(), want, **tol)
    assert (wide[:, d:] == 0).all()


geoopt = pytest.importorskip("geoopt")


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_patched_rsgd_fused_step_matches_geoopt(wd):
    import geoops.compat as compat

    def run(patched):
        torch.manual_seed(0)
        ball = geoopt.PoincareBall(c=1.3)
        emb = geoopt.ManifoldParameter(torch.randn(40, 5, dtype=F64) * 0.1, manifold=ball)  # well inside the ball
        lin = torch.nn.Parameter(torch.randn(5, dtype=F64))
        opt = geoopt.optim.RiemannianSGD([emb, lin], lr=0.01, weight_decay=wd, stabilize=3)
        calls = []
        opt.register_step_post_hook(lambda *a: calls.append(1))
        ctx = compat.patched_geoopt() if patched else contextlib.nullcontext()
        with ctx:
            for i in range(5):
                opt.zero_grad()
                loss = ball.dist(emb[:20], emb[20:]).sum() + 0.1 * (emb.sum(0) * lin).sum() ** 2
                loss.backward()
                opt.step()
        return emb.detach().clone(), lin.detach().clone(), len(calls)

    a, b = run(False), run(True)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-8)  # k is float32 (-1.3): geoopt and geoops round it apart
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-8)
    assert a[2] == b[2] == 5  # the optimizer's step hooks still run under the patch


def test_patched_rsgd_falls_back_with_momentum():
    import geoops.compat as compat

    ball = geoopt.PoincareBall()
    emb = geoopt.ManifoldParameter(torch.rand(4, 3, dtype=F64) * 0.1, manifold=ball)
    opt = geoopt.optim.RiemannianSGD([emb], lr=0.1, momentum=0.9)
    emb.grad = torch.ones_like(emb)
    with compat.patched_geoopt():
        opt.step()
    assert "momentum_buffer" in opt.state[emb]  # geoopt's own step ran
    assert not compat.is_patched()


def test_wordnet_data_and_negatives():
    from bench import wordnet as W

    names, edges = W.load_closure(W.MAMMALS)
    assert len(names) == 1182 and edges.shape == (6542, 2)
    assert W.MAMMALS.parent.joinpath("LICENSE-WordNet-3.0").exists()
    keys = W._pair_keys(edges, len(names))
    gen = torch.Generator().manual_seed(0)
    batches = W.epoch_batches(edges, len(names), 10, 64, keys, gen)
    assert sum(u.numel() for u, _ in batches) == edges.shape[0]
    u, cand = batches[0]
    assert cand.shape == (64, 11)
    adj = set(map(tuple, edges.tolist()))
    for i in range(64):
        for w in cand[i, 1:].tolist():
            assert w != int(u[i]) and (int(u[i]), w) not in adj


def test_wordnet_training_agrees_patched_and_plain():
    """Two epochs at the paper's lr = 10 (the bench's training loop): float64 training agrees, patched vs plain, to
    rounding; in float32 each run drifts from the float64 one (lr = 10 amplifies a rounding: ~2e-5 in the largest
    element for plain geoopt) and the patched run must drift no more than 2x plain geoopt's (+ a floor), in the
    largest element and in RMS.  (The two float32 runs against each other, the earlier form, measured 0.99e-3
    relative apart on native builds and 4.2e-3 on portable ones, each as close to the float64 run as geoopt:
    a comparison of two roundings, not of either's accuracy.)"""
    from bench import wordnet as W

    names, edges = W.load_closure(W.MAMMALS)
    kw = dict(epochs=2, burn_in=1, lr=10.0)
    r64 = W.train_both(edges[:640], len(names), dtype=torch.float64, **kw)
    truth = r64["geoopt"][0]
    torch.testing.assert_close(r64["geoopt+patch_geoopt"][0], truth, rtol=1e-10, atol=1e-12)
    r32 = W.train_both(edges[:640], len(names), **kw)
    err = {name: (r32[name][0].double() - truth).abs() for name in r32}
    plain, ours = err["geoopt"], err["geoopt+patch_geoopt"]
    assert float(plain.max()) < 1e-4  # (2.2e-5 measured: the comparison below means something)
    assert float(ours.max()) <= 2 * float(plain.max()) + 1e-6, (float(ours.max()), float(plain.max()))
    rms = {name: float(e.pow(2).mean().sqrt()) for name, e in err.items()}
    assert rms["geoopt+patch_geoopt"] <= 2 * rms["geoopt"] + 1e-8, rms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_riemannian_sgd_step_block_rows_equal_single_rows(dtype):
    """Short rows (D <= 32) run kRsgdBlock rows at a time, the rows after the last whole block one at a time
    (session 20): a row gives the same bits in either place (same arithmetic, same order of its sums)."""
    row = _pts(1, 10, scale=0.9, seed=31).to(dtype)
    grow = _pts(1, 10, scale=2.0, seed=32).to(dtype)
    x, g = row.repeat(13, 1), grow.repeat(13, 1)  # rows 0..7: one block; rows 8..12: one at a time
    gs.riemannian_sgd_step_(x, g, lr=0.3, k=torch.tensor(-1.0, dtype=dtype))
    assert all(torch.equal(x[i], x[0]) for i in range(13))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kshape", [(), (1,)])
def test_one_k_read_in_place_values_and_grads(kshape, dtype):
    """A one-element k goes to the kernels as it is (0-d or (1,): the C++ reads the value in place, session 20);
    k a view with a storage offset, float32 / float64 k with either dtype of points: values, and k's gradient
    summed to k's own shape."""
    x, y = _pts(7, 5, seed=41).to(dtype), _pts(7, 5, seed=42).to(dtype)
    for kdt in (torch.float32, torch.float64):
        base = torch.tensor([0.7, -0.8, 0.2], dtype=kdt)
        k = base[1:2].reshape(kshape)  # a view at offset 1
        assert k.storage_offset() == 1
        want = ref.dist(x.double(), y.double(), k=torch.tensor(-0.8, dtype=kdt).double())
        tol = dict(rtol=1e-12, atol=1e-14) if dtype == kdt == F64 else dict(rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(gs.dist(x, y, k=k).double(), want, **tol)
        kg = k.detach().clone().requires_grad_()
        for op in ("dist", "mobius_add", "expmap0"):
            out = getattr(gs, op)(x, y, k=kg) if op != "expmap0" else gs.expmap0(x, k=kg)
            (dk,) = torch.autograd.grad(out.sum(), kg)
            assert dk.shape == kg.shape and dk.dtype == kg.dtype
            kr = kg.detach().double().requires_grad_()
            outr = getattr(ref, op)(x.double(), y.double(), k=kr) if op != "expmap0" else ref.expmap0(x.double(), k=kr)
            (dkr,) = torch.autograd.grad(outr.sum(), kr)
            torch.testing.assert_close(dk.double(), dkr, **(dict(rtol=1e-10, atol=1e-12) if dtype == kdt == F64
                                                            else dict(rtol=1e-4, atol=1e-5)))


def test_one_k_0d_gradcheck_fast_path():
    """fp64 gradcheck through the eager fast path with a 0-d k that needs its gradient (x, y and k)."""
    x, y = _pts(6, 4, seed=51).requires_grad_(), _pts(6, 4, seed=52).requires_grad_()
    k = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    for op in ("dist", "mobius_add", "logmap"):
        assert torch.autograd.gradcheck(lambda a, b, c: getattr(gs, op)(a, b, k=c), (x, y, k))


@pytest.mark.parametrize("shapes", [((5, 1, 4), (5, 3, 4)), ((4,), (6, 4)), ((1, 4), (6, 4)), ((2, 1, 3, 4), (5, 1, 4)),
                                    ((3, 4), (3, 4)), ((2, 3, 4), (2, 3, 4))])
@pytest.mark.parametrize("op", ["dist", "mobius_add", "logmap"])
def test_fast_path_broadcast_inside_one_node(op, shapes):
    """On the eager fast path the Function takes the caller's x and y and the broadcast shape, makes the rows
    itself and sums the gradients back (session 20): one autograd node, whose inputs are the caller's tensors
    (no expand / reshape / view nodes); values, gradients (fp64 gradcheck) and shapes as the reference's."""
    x = _pts(*shapes[0], seed=61).requires_grad_()
    y = _pts(*shapes[1], seed=62).requires_grad_()
    k = torch.tensor(-0.9, dtype=F64)
    out = getattr(gs, op)(x, y, k=k)
    want = getattr(ref, op)(x, y, k=k)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    nxt = [f for f, _ in out.grad_fn.next_functions if f is not None]
    assert type(out.grad_fn).__name__.endswith("FnBackward")
    assert [type(f).__name__ for f in nxt] == ["AccumulateGrad", "AccumulateGrad"]
    w = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(63))
    gx, gy = torch.autograd.grad((out * w).sum(), (x, y))
    rx, ry = torch.autograd.grad((want * w).sum(), (x, y))
    assert gx.shape == x.shape and gy.shape == y.shape
    torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gy, ry, rtol=1e-9, atol=1e-11)
    assert torch.autograd.gradcheck(lambda a, b: getattr(gs, op)(a, b, k=k), (x, y))
    d = gs.dist(x, y, k=k, keepdim=True)  # keepdim: a view of the node's output
    assert d.shape == ref.dist(x, y, k=k, keepdim=True).shape


def test_fast_path_skips_function_apply_wrapper(monkeypatch):
    """The eager fast path calls its Function's C-level apply, not torch's Python ``Function.apply`` (a
    setup_context check, a functorch check and a generator over the arguments per call: ~2-3 us of the WordNet
    loss's step, session 28): with the Python wrapper made to raise, values and gradients still come."""
    x = _pts(5, 1, 4, seed=71).requires_grad_()
    y = _pts(5, 3, 4, seed=72).requires_grad_()
    k = torch.tensor(-0.8, dtype=F64)

    def boom(*a, **kw):
        raise AssertionError("the fast path went through torch.autograd.Function.apply")

    for op in ("dist", "mobius_add"):
        monkeypatch.setattr(gs._FNS_CPP[op], "apply", boom)
        out = getattr(gs, op)(x, y, k=k)
        torch.testing.assert_close(out, getattr(ref, op)(x, y, k=k), rtol=1e-10, atol=1e-12)
        gx, gy = torch.autograd.grad(out.sum(), (x, y))
        rx, ry = torch.autograd.grad(getattr(ref, op)(x, y, k=k).sum(), (x, y))
        torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(gy, ry, rtol=1e-9, atol=1e-11)


def test_fast_path_dead_functorch_wrapper():
    """A tensor that leaked out of a finished torch.func transform (a dead functorch wrapper: a plain
    torch.Tensor to Python, no storage of its own) works through the fast path's Function as through torch's
    Function.apply, which unwraps it (the fast path's C-level apply unwraps it itself; without that the kernels
    raise "Cannot access data pointer of Tensor that doesn't have storage")."""
    leaked = []

    def f(a):
        leaked.append(a)
        return (a * 2).sum()

    base = _pts(4, 3, seed=73)
    grad(f)(base)
    x = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(x)
    y = _pts(4, 3, seed=74).requires_grad_()
    k = torch.tensor(-1.0, dtype=F64)
    d = gs.dist(x, y, k=k)
    assert type(d.grad_fn).__name__ == "DistFnBackward"
    torch.testing.assert_close(d, ref.dist(base, y, k=k), rtol=1e-10, atol=1e-12)
    (gy,) = torch.autograd.grad(d.sum(), y)
    (ry,) = torch.autograd.grad(ref.dist(base, y, k=k).sum(), y)
    torch.testing.assert_close(gy, ry, rtol=1e-9, atol=1e-11)
