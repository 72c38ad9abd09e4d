"""geoopt-compatibility of geoops.stereographic's argument handling (session 19): a k (or r, t) that broadcasts the
inputs (more dimensions or larger sizes than them: geoopt's result has the broadcast shape), a non-negative `dim`
with such a k, a k that varies along the vector dim (refused: one curvature per vector), weighted_midpoint with a k
that varies over the reduced points (refused, the message says what geoopt computes instead) and with a k of more
dimensions (extra midpoints).  Values and gradients against geoopt in float64 where geoopt's result is well
defined (negative dims), against a loop over the curvatures otherwise; gradcheck through the kernels."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.stereographic as gs

gm = pytest.importorskip("geoopt.manifolds.stereographic.math")

F64 = torch.float64


def _pts(*shape, seed=0, scale=0.15):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


def _k(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64) * 2.0 - 1.2  # both signs, |k| <= 1.2


def _r(*shape, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64) + 0.5


# op -> (number of point-like tensor arguments, leading scalar argument r / t or None, keepdim-able)
OPS = {
    "project": (1, None, False), "expmap0": (1, None, False), "logmap0": (1, None, False),
    "antipode": (1, None, False), "inv_sproj": (1, None, False), "sproj": (1, None, False),
    "mobius_add": (2, None, False), "mobius_sub": (2, None, False), "mobius_coadd": (2, None, False),
    "mobius_cosub": (2, None, False), "expmap": (2, None, False), "logmap": (2, None, False),
    "egrad2rgrad": (2, None, False), "parallel_transport0": (2, None, False),
    "parallel_transport0back": (2, None, False), "gyration": (3, None, False),
    "parallel_transport": (3, None, False), "mobius_scalar_mul": (1, "r", False), "geodesic": (2, "t", False),
    "geodesic_unit": (2, "t", False), "lambda_x": (1, None, True), "dist0": (1, None, True),
    "dist": (2, None, True), "norm": (2, None, True), "inner": (3, None, True), "dist2plane": (3, None, True),
}
KSHAPES = [(3, 1, 1), (3, 5, 1), (1, 1, 1), (2, 1, 1, 1)]


def _args(op, shape, dim, seed=0):
    n, scalar, _ = OPS[op]
    vecs = [_pts(*shape, seed=seed + i) for i in range(n)]
    if scalar is None:
        return vecs
    rshape = list(shape)
    rshape[dim] = 1
    return [_r(*rshape, seed=seed + 7)] + vecs


def _call(mod, op, args, k, dim, keepdim=None):
    kw = {"k": k, "dim": dim}
    if keepdim is not None:
        kw["keepdim"] = keepdim
    return getattr(mod, op)(*args, **kw)


def _value_and_grads(mod, op, args, k, dim, keepdim=None):
    args = [a.detach().clone().requires_grad_() for a in args]
    k = k.detach().clone().requires_grad_()
    out = _call(mod, op, args, k, dim, keepdim)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    grads = torch.autograd.grad((out * w).sum(), args + [k], allow_unused=True)
    return out.detach(), grads


def _assert_same(a, b, tol=1e-10):
    (oa, ga), (ob, gb) = a, b
    assert oa.shape == ob.shape, (tuple(oa.shape), tuple(ob.shape))
    assert torch.allclose(oa, ob, rtol=tol, atol=tol), (oa - ob).abs().max().item()
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.shape == y.shape
            assert torch.allclose(x, y, rtol=1e-8, atol=1e-9), (x - y).abs().max().item()


# ---------------------------------------------------------------- a k that broadcasts the inputs
@pytest.mark.parametrize("kshape", KSHAPES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_k_with_more_dims_matches_geoopt(op, kshape):
    # x (5, 4), k with more dims: geoopt broadcasts its result to (..., 5, 4); the reduced ops are compared with
    # keepdim=True (with keepdim=False geoopt broadcasts k against the reduced result: the documented difference)
    if op in ("geodesic", "geodesic_unit", "mobius_scalar_mul") and kshape == (3, 5, 1):
        kshape = (3, 1, 1)
    args = _args(op, (5, 4), -1)
    k = _k(*kshape)
    keep = True if OPS[op][2] else None
    ours = _value_and_grads(gs, op, args, k, -1, keep)
    ref = _value_and_grads(gm, op, args, k, -1, keep)
    _assert_same(ours, ref)
    if keep:  # keepdim=False: the same values with the vector dim dropped
        out = _call(gs, op, args, k, -1, False)
        torch.testing.assert_close(out, ref[0].squeeze(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", sorted(OPS))
def test_k_with_larger_sizes_matches_geoopt(op):
    # x (1, 4) against k (5, 1): geoopt's result is (5, 4)
    args = _args(op, (1, 4), -1, seed=10)
    k = _k(5, 1, seed=11)
    keep = True if OPS[op][2] else None
    _assert_same(_value_and_grads(gs, op, args, k, -1, keep), _value_and_grads(gm, op, args, k, -1, keep))


@pytest.mark.parametrize("op", ["mobius_scalar_mul", "geodesic"])
def test_r_or_t_with_more_rows_than_x(op):
    # mobius_scalar_mul(r (5, 1, 1), x (1, 3, 4)) and geodesic(t, ...): r / t broadcast the points, as in geoopt
    n = OPS[op][0]
    args = [_r(5, 1, 1, seed=4)] + [_pts(1, 3, 4, seed=5 + i) for i in range(n)]
    k = torch.tensor(-0.7, dtype=F64)
    _assert_same(_value_and_grads(gs, op, args, k, -1), _value_and_grads(gm, op, args, k, -1))


def test_one_element_k_with_more_dims_on_the_fast_path():
    # a (1, 1, 1) k is one curvature, but geoopt's result has its 3 dims: (1, 5, 4), not (5, 4)
    x, y = _pts(5, 4, seed=1).float(), _pts(5, 4, seed=2).float()
    k = torch.full((1, 1, 1), -0.7)
    out = gs.mobius_add(x, y, k=k)
    assert out.shape == (1, 5, 4)
    torch.testing.assert_close(out, gm.mobius_add(x, y, k=k))
    assert gs.dist(x, y, k=k, keepdim=True).shape == (1, 5, 1)


@pytest.mark.parametrize("op", ["mobius_matvec", "mobius_pointwise_mul", "mobius_fn_apply", "mobius_fn_apply_chain"])
@pytest.mark.parametrize("kshape", [(3, 1, 1), (3, 5, 1), (5, 1), (1, 1, 1)])
def test_matrix_style_ops_with_a_broadcasting_k(op, kshape):
    x = _pts(5, 4, seed=6) if kshape != (5, 1) else _pts(1, 4, seed=6)
    k = _k(*kshape, seed=7)
    if op == "mobius_matvec":
        args = [torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=F64), x]
    elif op == "mobius_pointwise_mul":
        args = [torch.randn(4, generator=torch.Generator().manual_seed(8), dtype=F64), x]
    else:
        args = [x]
    if op.startswith("mobius_fn"):
        fn = torch.tanh

        def run(mod, a, kk):
            return mod.mobius_fn_apply(fn, *a, k=kk) if op == "mobius_fn_apply" else \
                mod.mobius_fn_apply_chain(*a, fn, torch.sin, k=kk)
    else:
        def run(mod, a, kk):
            return getattr(mod, op)(*a, k=kk)

    def vg(mod):
        a = [t.detach().clone().requires_grad_() for t in args]
        kk = k.detach().clone().requires_grad_()
        out = run(mod, a, kk)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        return out.detach(), torch.autograd.grad((out * w).sum(), a + [kk])

    _assert_same(vg(gs), vg(gm))


# ---------------------------------------------------------------- dim >= 0 with a k of more dimensions
@pytest.mark.parametrize("op", sorted(OPS) + ["mobius_pointwise_mul", "mobius_fn_apply"])
def test_nonnegative_dim_counts_in_the_inputs_dims(op):
    # vectors along dim 0 of (4, 5), k (3, 1, 5): dim=0 means the inputs' dim 0 (their dim -2), as with a k of the
    # inputs' rank; geoopt counts it in the broadcast shape for some steps (its k dim) and gives other numbers
    if op == "mobius_pointwise_mul":
        args = [torch.randn(4, 1, generator=torch.Generator().manual_seed(8), dtype=F64), _pts(4, 5)]
    elif op == "mobius_fn_apply":
        args = [_pts(4, 5)]
    else:
        args = _args(op, (4, 5), 0)
    k = _k(3, 1, 5, seed=9)
    keep = True if op in OPS and OPS[op][2] else None

    def call(dim, kk):
        if op == "mobius_fn_apply":
            return gs.mobius_fn_apply(torch.tanh, *args, k=kk, dim=dim)
        return _call(gs, op, args, kk, dim, keep)

    pos, neg = call(0, k), call(-2, k)
    torch.testing.assert_close(pos, neg, rtol=0, atol=0)
    ref = gm.mobius_fn_apply(torch.tanh, *args, k=k, dim=-2) if op == "mobius_fn_apply" else \
        _call(gm, op, args, k, -2, keep)
    torch.testing.assert_close(neg, ref, rtol=1e-10, atol=1e-10)
    loop = torch.stack([call(0, k[i]) for i in range(3)])
    torch.testing.assert_close(pos, loop, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- a k that varies along the vector dim
@pytest.mark.parametrize("op", ["mobius_coadd", "mobius_cosub", "antipode", "sproj", "inv_sproj", "egrad2rgrad",
                                "norm", "inner", "geodesic", "geodesic_unit", "gyration", "weighted_midpoint"])
def test_k_varying_along_the_vector_dim_is_refused(op):
    # one curvature per vector: geoopt applies a (5, 4) k coordinate-wise (mobius_coadd's closed form then differed
    # from geoopt's without an error; sproj failed inside torch)
    args = _args(op, (5, 4), -1) if op in OPS else [_pts(5, 4)]
    with pytest.raises(ValueError, match=rf"{op}: k must have size 1 along dim=-1"):
        getattr(gs, op)(*args, k=_k(5, 4))


# ---------------------------------------------------------------- weighted_midpoint
def test_midpoint_k_varying_over_points_refused_with_reason():
    # geoopt's result for a per-point k: one row per k_j, 1/2 (x)_{k_j} of one sum built with each point's own
    # k_i (no midpoint; the reduced dim survives, keepdim or not); the error says so
    x = _pts(5, 4, seed=12)
    k = _k(5, 1, seed=13) * 0.5 - 0.3
    ref = gm.weighted_midpoint(x, k=k, reducedim=[0])
    assert ref.shape == (5, 4) and gm.weighted_midpoint(x, k=k, reducedim=[0], keepdim=True).shape == (5, 4)
    with pytest.raises(ValueError, match=r"varies over the points has no midpoint\. geoopt returns no midpoint"):
        gs.weighted_midpoint(x, k=k, reducedim=[0])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kshape,xshape,red", [((3, 1, 1), (5, 4), [-2]), ((2, 1, 1, 1), (3, 5, 4), [-2]),
                                               ((2, 3, 1, 1), (3, 5, 4), [-2]), ((1, 1, 1), (5, 4), [-2])])
def test_midpoint_k_with_more_dims_matches_geoopt(kshape, xshape, red, weighted):
    # k's leading dims give more midpoints of the same points (geoopt, with reducedim counted from the end)
    x = _pts(*xshape, seed=14)
    k = _k(*kshape, seed=15)
    w = torch.rand(xshape[:-1], generator=torch.Generator().manual_seed(16), dtype=F64) + 0.1 if weighted else None

    def vg(mod):
        xx = x.clone().requires_grad_()
        kk = k.clone().requires_grad_()
        out = mod.weighted_midpoint(xx, w, k=kk, reducedim=red, lincomb=True)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        return out.detach(), torch.autograd.grad((out * g).sum(), [xx, kk])

    _assert_same(vg(gs), vg(gm), tol=1e-9)
    # a non-negative reducedim names the same dim of xs (geoopt's would name one of k's leading dims)
    pos = gs.weighted_midpoint(x, w, k=k, reducedim=[r % len(xshape) for r in red], lincomb=True)
    torch.testing.assert_close(pos, vg(gs)[0], rtol=0, atol=0)


# ---------------------------------------------------------------- gradients through the kernels, reference backend
@pytest.mark.parametrize("op", ["mobius_add", "expmap", "dist", "gyration", "dist2plane", "mobius_scalar_mul"])
def test_gradcheck_with_a_broadcasting_k(op):
    args = [a.requires_grad_() for a in _args(op, (1, 3, 4), -1, seed=20)]
    k = _k(2, 3, 1, seed=21).requires_grad_()
    keep = True if OPS[op][2] else None
    assert gradcheck(lambda *t: _call(gs, op, t[:-1], t[-1], -1, keep), (*args, k))


def test_gradcheck_midpoint_k_with_more_dims():
    x = _pts(4, 3, seed=22).requires_grad_()
    k = _k(2, 1, 1, seed=23).requires_grad_()
    assert gradcheck(lambda a, b: gs.weighted_midpoint(a, k=b, reducedim=[-2]), (x, k))


@pytest.mark.parametrize("op", ["mobius_add", "dist", "mobius_scalar_mul", "gyration", "dist2plane"])
def test_reference_backend_with_a_broadcasting_k(op):
    args = _args(op, (1, 5, 4), -1, seed=30)
    k = _k(3, 5, 1, seed=31)
    keep = False if OPS[op][2] else None
    ours = _call(gs, op, args, k, -1, keep)
    with geoops._backend.use_backend("reference"):
        ref = _call(gs, op, args, k, -1, keep)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kshape,xshape", [((3, 1, 1), (5, 4)), ((5, 1), (1, 4))])
def test_broadcasting_k_under_compile(kshape, xshape):
    # torch.compile(fullgraph=True): the grown shape (and the retry after _per_row's _Grows) trace without a break
    x, y, k = _pts(*xshape, seed=40).float(), _pts(1, 4, seed=41).float(), _k(*kshape, seed=42).float()
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, kk: gs.dist(a, b, k=kk, keepdim=True) + gs.mobius_add(a, b, k=kk).sum(-1, True),
                      fullgraph=True)
    ref = gm.dist(y, x, k=k, keepdim=True) + gm.mobius_add(y, x, k=k).sum(-1, True)
    torch.testing.assert_close(f(y, x, k), ref, rtol=1e-5, atol=1e-6)


def test_patched_manifold_k_is_cached_and_exact():
    """Under patch_geoopt() PoincareBall.k / SphereProjection.k come from the step's k cache (session 29): the same
    bits as geoopt's getter, re-read after an in-place change of the parameter, a graph when one is wanted through a
    learnable curvature, geoopt's getter again after unpatch_geoopt()."""
    import geoopt
    from geoopt.manifolds.stereographic.manifold import PoincareBall, SphereProjection

    import geoops.compat as compat

    orig = (PoincareBall.__dict__["k"], SphereProjection.__dict__["k"])
    was = compat.is_patched()
    compat.unpatch_geoopt()
    try:
        balls = [geoopt.PoincareBall(c=0.7), geoopt.SphereProjection(k=0.4), geoopt.PoincareBallExact(c=1.3)]
        want = [b.k.clone() for b in balls]
        compat.patch_geoopt()
        assert PoincareBall.__dict__["k"] is not orig[0] and SphereProjection.__dict__["k"] is not orig[1]
        for b, w in zip(balls, want):
            k1, k2 = b.k, b.k
            assert torch.equal(k1, w) and k2 is k1  # one tensor per value of the parameter
        src = balls[0].isp_c
        with torch.no_grad():
            src.add_(0.25)
        assert torch.equal(balls[0].k, orig[0].fget(balls[0]))  # the in-place change seen
        learn = geoopt.PoincareBall(c=0.9, learnable=True)
        kl = learn.k
        assert kl.requires_grad
        kl.backward()
        assert learn.isp_c.grad is not None
        with torch.no_grad():
            assert torch.equal(learn.k, orig[0].fget(learn))

        class OwnC(geoopt.PoincareBall):  # a subclass with its own c reads it
            @property
            def c(self):
                return 2 * torch.nn.functional.softplus(self.isp_c)

        own = OwnC(c=1.0)
        assert torch.equal(own.k, orig[0].fget(own)) and float(own.k) == -2.0
        compat.unpatch_geoopt()
        assert PoincareBall.__dict__["k"] is orig[0] and SphereProjection.__dict__["k"] is orig[1]
    finally:
        (compat.patch_geoopt if was else compat.unpatch_geoopt)()
