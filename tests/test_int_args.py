"""Integer arguments across the public API (session 36, helper "smallfix").

Every public integer argument (dim, n_neighbors, block_elems, lmax_out, nu, L, window, kernel sizes, layer
sizes, ...) takes any integer that ``operator.index`` accepts -- a Python int, a numpy integer, a 0-d integer
tensor (as torch's own ``dim=`` does) -- with the same result as the Python int, and refuses a bool and a
float with a TypeError naming the argument (before any kernel runs).
"""
import numpy as np
import pytest
import torch

import geoops.attention as ga
import geoops.gaunt as gg
import geoops.nn as gnn
import geoops.poincare as gp
import geoops.ssm as gssm
import geoops.stereographic as gs

D64 = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _r(*shape, scale=0.2, seed=0):
    return torch.randn(*shape, dtype=D64, generator=_g(seed)) * scale


K = torch.tensor(-1.0, dtype=D64)
X, Y, U, V = _r(3, 4, seed=1), _r(3, 4, seed=2), _r(3, 4, seed=3), _r(3, 4, seed=4)
IMG = _r(2, 3, 4, 4, scale=0.1, seed=5)  # (B, C, H, W) points of a 3-dim ball per pixel


def _stereo(name, *args, **kw):
    fn = getattr(gs, name)
    return lambda v: fn(*args, k=K, dim=v, **kw)


def _module(cls, *args, inp=None, **kw):
    """A constructor call: the parameters' shapes and values (seeded), and the output on `inp` if given."""
    def make(build):
        torch.manual_seed(0)
        m = build()
        out = [p.detach() for p in m.parameters()]
        if inp is not None:
            torch.manual_seed(1)
            out.append(m(inp()).detach())
        return out
    return make


def _ball():
    return gnn.PoincareBall(1.0)


def _cases():
    # stereographic: dim of every row-wise op
    yield "stereographic.mobius_add", "dim", _stereo("mobius_add", X, Y), -1
    yield "stereographic.mobius_add+", "dim", _stereo("mobius_add", X, Y), 1
    yield "stereographic.mobius_sub", "dim", _stereo("mobius_sub", X, Y), -1
    yield "stereographic.project", "dim", _stereo("project", X), -1
    yield "stereographic.lambda_x", "dim", _stereo("lambda_x", X), -1
    yield "stereographic.mobius_scalar_mul", "dim", _stereo("mobius_scalar_mul", torch.tensor(0.5, dtype=D64), X), -1
    yield "stereographic.expmap", "dim", _stereo("expmap", X, U), -1
    yield "stereographic.expmap0", "dim", _stereo("expmap0", U), -1
    yield "stereographic.logmap", "dim", _stereo("logmap", X, Y), -1
    yield "stereographic.logmap0", "dim", _stereo("logmap0", Y), -1
    yield "stereographic.dist", "dim", _stereo("dist", X, Y), -1
    yield "stereographic.dist0", "dim", _stereo("dist0", X), -1
    yield "stereographic.mobius_matvec", "dim", _stereo("mobius_matvec", _r(4, 4, seed=6), X), -1
    yield "stereographic.mobius_pointwise_mul", "dim", _stereo("mobius_pointwise_mul", _r(4, seed=7), X), -1
    yield "stereographic.gyration", "dim", _stereo("gyration", X, Y, U), -1
    yield "stereographic.mobius_coadd", "dim", _stereo("mobius_coadd", X, Y), -1
    yield "stereographic.mobius_cosub", "dim", _stereo("mobius_cosub", X, Y), -1
    yield "stereographic.parallel_transport", "dim", _stereo("parallel_transport", X, Y, V), -1
    yield "stereographic.parallel_transport0", "dim", _stereo("parallel_transport0", Y, V), -1
    yield "stereographic.parallel_transport0back", "dim", _stereo("parallel_transport0back", X, V), -1
    yield "stereographic.egrad2rgrad", "dim", _stereo("egrad2rgrad", X, U), -1
    yield "stereographic.inner", "dim", _stereo("inner", X, U, V), -1
    yield "stereographic.norm", "dim", _stereo("norm", X, U), -1
    yield "stereographic.geodesic", "dim", _stereo("geodesic", torch.tensor(0.3, dtype=D64), X, Y), -1
    yield "stereographic.geodesic_unit", "dim", _stereo("geodesic_unit", torch.tensor(0.3, dtype=D64), X, U), -1
    yield "stereographic.antipode", "dim", _stereo("antipode", X), -1
    yield "stereographic.sproj", "dim", _stereo("sproj", X), -1
    yield "stereographic.inv_sproj", "dim", _stereo("inv_sproj", X), -1
    yield "stereographic.dist2plane", "dim", _stereo("dist2plane", X, Y, U), -1
    yield "stereographic.weighted_midpoint", "dim", _stereo("weighted_midpoint", X), -1
    yield "stereographic.weighted_midpoint.reducedim", "reducedim", \
        lambda v: gs.weighted_midpoint(X, k=K, reducedim=[v]), 0
    yield "stereographic.mobius_fn_apply", "dim", lambda v: gs.mobius_fn_apply(torch.tanh, X, k=K, dim=v), -1
    yield "stereographic.mobius_fn_apply_chain", "dim", \
        lambda v: gs.mobius_fn_apply_chain(X, torch.tanh, torch.sin, k=K, dim=v), -1
    yield "stereographic.retr", "dim", _stereo("retr", X, U), -1
    yield "stereographic.riemannian_sgd_step_", "dim", \
        lambda v: gs.riemannian_sgd_step_(X.clone(), U, lr=0.1, k=K, dim=v), -1
    yield "stereographic.knn.n_neighbors", "n_neighbors", lambda v: gs.knn(X, Y, v, k=K), 2
    yield "stereographic.knn.block_elems", "block_elems", lambda v: gs.knn(X, Y, 2, k=K, block_elems=v), 8
    q, t = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    yield "stereographic.pairwise_rank", "block_elems", \
        lambda v: gs.pairwise_rank(X, Y, q, t, k=K, block_elems=v), 8
    yield "stereographic.reconstruction_metrics", "block_elems", \
        lambda v: gs.reconstruction_metrics(X, torch.tensor([[0, 1], [1, 2]]), k=K, block_elems=v), 8

    # poincare
    z, b = _r(4, 2, seed=8), _r(2, scale=0.1, seed=9)
    for name in ("poincare_fc", "hyperplane_dists", "mlr"):
        yield f"poincare.{name}", "dim", (lambda f: lambda v: f(X, z, b, c=1.0, dim=v))(getattr(gp, name)), -1
    for name in ("poincare_relu", "expmap0", "logmap0", "project"):
        yield f"poincare.{name}", "dim", (lambda f: lambda v: f(X, c=1.0, dim=v))(getattr(gp, name)), -1
    for name in ("expmap", "logmap", "dist", "mobius_add"):
        yield f"poincare.{name}", "dim", (lambda f: lambda v: f(X, Y, c=1.0, dim=v))(getattr(gp, name)), -1
    yield "poincare.transp", "dim", lambda v: gp.transp(X, Y, V, c=1.0, dim=v), -1
    yield "poincare.midpoint", "dim", lambda v: gp.midpoint(X, c=1.0, dim=v), -1
    yield "poincare.midpoint.batch_dim", "batch_dim", lambda v: gp.midpoint(X, c=1.0, batch_dim=v), 0
    yield "poincare.midpoint.batch_dim_tuple", "batch_dim", \
        lambda v: gp.midpoint(X.reshape(1, 3, 4), c=1.0, batch_dim=(v, 1)), 0
    yield "poincare.mobius_linear", "dim", lambda v: gp.mobius_linear(X, _r(5, 4, seed=10), c=1.0, dim=v), -1
    yield "poincare.mobius_linear.blocks", "blocks", \
        lambda v: gp.mobius_linear(X, _r(2, 3, 2, seed=11), c=1.0, blocks=v), 2
    zc, bc = _r(3 * 2 * 2, 2, seed=12), _r(2, scale=0.1, seed=13)
    for arg, good in (("kernel_size", 2), ("padding", 1), ("stride", 2)):
        kw = {"kernel_size": 2, "padding": 0, "stride": 1}
        yield f"poincare.poincare_conv2d.{arg}", arg, \
            (lambda a, kw: lambda v: gp.poincare_conv2d(IMG, zc, bc, c=1.0, **{**kw, a: v}))(arg, kw), good
        yield f"poincare.poincare_unfold.{arg}", arg, \
            (lambda a, kw: lambda v: gp.poincare_unfold(IMG, c=1.0, **{**kw, a: v}))(arg, kw), good
    yield "poincare.poincare_conv2d.kernel_size_pair", "kernel_size", \
        lambda v: gp.poincare_conv2d(IMG, zc, bc, c=1.0, kernel_size=(v, 2)), 2
    for arg, good in (("kernel_size", 2), ("stride", 1), ("padding", 1), ("dilation", 2)):
        kw = {"kernel_size": 2, "stride": None, "padding": 0}
        yield f"poincare.max_pool2d.{arg}", arg, \
            (lambda a, kw: lambda v: gp.max_pool2d(IMG, c=1.0, **{**kw, a: v}))(arg, kw), good
        if arg != "dilation":
            yield f"poincare.avg_pool2d.{arg}", arg, \
                (lambda a, kw: lambda v: gp.avg_pool2d(IMG, c=1.0, **{**kw, a: v}))(arg, kw), good
    for arg, good in (("start_dim", 1), ("end_dim", -1), ("man_dim", 1)):
        yield f"poincare.flatten.{arg}", arg, (lambda a: lambda v: gp.flatten(IMG, c=1.0, **{a: v}))(arg), good
    yield "poincare.beta_concat_scale.n_i", "n_i", lambda v: gp.beta_concat_scale(v, 8), 3
    yield "poincare.beta_concat_scale.n", "n", lambda v: gp.beta_concat_scale(3, v), 8

    # gaunt
    x1, x2 = _r(5, 9, seed=14), _r(5, 9, seed=15)
    yield "gaunt.gaunt_tensor_product", "lmax_out", lambda v: gg.gaunt_tensor_product(x1, x2, v), 2
    yield "gaunt.gaunt_product", "lmax_out", lambda v: gg.gaunt_product([x1, x2, x1], v), 2
    yield "gaunt.gaunt_power.nu", "nu", lambda v: gg.gaunt_power(x1, v, 2), 3
    yield "gaunt.gaunt_power.lmax_out", "lmax_out", lambda v: gg.gaunt_power(x1, 2, v), 2
    cpu = torch.device("cpu")
    yield "gaunt.choose_route.lmax_out", "lmax_out", lambda v: gg.choose_route([2, 2], v, 16, cpu), 2
    yield "gaunt.choose_route.rows", "rows", lambda v: gg.choose_route([2, 2], 2, v, cpu), 16
    yield "gaunt.choose_route.Ls", "Ls", lambda v: gg.choose_route([v, 2], 2, 16, cpu), 2
    yield "gaunt.route_table", "nu", lambda v: gg.route_table(v, cpu), 2

    # ssm
    log_dt, A = _r(3, seed=16) - 3.0, torch.complex(-0.5 * torch.ones(3, 2, dtype=D64), _r(3, 2, seed=17))
    B, C = torch.ones(3, 2, dtype=torch.complex128), torch.complex(_r(3, 2, seed=18), _r(3, 2, seed=19))
    yield "ssm.s4d_kernel", "L", lambda v: gssm.s4d_kernel(log_dt, A, B, C, v), 7
    vv, xx = torch.complex(_r(3, 2, seed=20), _r(3, 2, seed=21)), torch.complex(_r(3, 2, seed=22), _r(3, 2, seed=23))
    yield "ssm.vandermonde", "L", lambda v: gssm.vandermonde(vv, xx, v), 5

    # attention
    qkv = [_r(1, 2, 5, 4, seed=24 + i) for i in range(5)]
    yield "attention.triple_attention", "window", lambda v: ga.triple_attention(*qkv, window=v), 2
    yield "attention.triple_attention.pair", "window", lambda v: ga.triple_attention(*qkv, window=(v, 1)), 2

    # nn constructors
    yield "nn.MobiusLinear.in_features", "in_features", _module(gnn.MobiusLinear), \
        (lambda v: gnn.MobiusLinear(v, 3, _ball()), 4)
    yield "nn.MobiusLinear.blocks", "blocks", _module(gnn.MobiusLinear), \
        (lambda v: gnn.MobiusLinear(4, 4, _ball(), blocks=v), 2)
    yield "nn.PoincareLinear", "out_features", _module(gnn.PoincareLinear), \
        (lambda v: gnn.PoincareLinear(4, v, _ball()), 3)
    yield "nn.PoincareMLR", "num_classes", _module(gnn.PoincareMLR), (lambda v: gnn.PoincareMLR(4, v, _ball()), 3)
    yield "nn.PoincareEmbedding", "embedding_dim", _module(gnn.PoincareEmbedding), \
        (lambda v: gnn.PoincareEmbedding(5, v, _ball()), 3)
    yield "nn.PoincareBatchNorm", "features", _module(gnn.PoincareBatchNorm), \
        (lambda v: gnn.PoincareBatchNorm(v, _ball()), 4)
    yield "nn.PoincareBatchNorm2d", "features", _module(gnn.PoincareBatchNorm2d), \
        (lambda v: gnn.PoincareBatchNorm2d(v, _ball()), 4)
    yield "nn.PoincareConv2d.kernel_size", "kernel_size", _module(gnn.PoincareConv2d), \
        (lambda v: gnn.PoincareConv2d(3, 2, v, _ball()), 2)
    yield "nn.PoincareConv2d.stride", "stride", _module(gnn.PoincareConv2d, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareConv2d(3, 2, 2, _ball(), stride=v), 2)
    yield "nn.PoincareConv2d.padding", "padding", _module(gnn.PoincareConv2d, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareConv2d(3, 2, 2, _ball(), padding=v), 1)
    yield "nn.PoincareMaxPool2d", "kernel_size", _module(gnn.PoincareMaxPool2d, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareMaxPool2d(v, _ball()), 2)
    yield "nn.PoincareAvgPool2d", "padding", _module(gnn.PoincareAvgPool2d, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareAvgPool2d(2, _ball(), padding=v), 1)
    yield "nn.PoincareFlatten", "start_dim", _module(gnn.PoincareFlatten, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareFlatten(_ball(), start_dim=v), 1)
    yield "nn.PoincareReLU", "dim", _module(gnn.PoincareReLU, inp=lambda: IMG.float()), \
        (lambda v: gnn.PoincareReLU(_ball(), dim=v), 1)
    yield "nn.poincare_residual", "dim", lambda v: gnn.poincare_residual(IMG, IMG, _ball(), dim=v), 1
    yield "nn.S4D.d_model", "d_model", _module(gnn.S4D), (lambda v: gnn.S4D(v, d_state=4), 3)
    yield "nn.S4D.d_state", "d_state", _module(gnn.S4D), (lambda v: gnn.S4D(3, d_state=v), 4)
    yield "nn.S4DKernel", "N", _module(gnn.S4DKernel), (lambda v: gnn.S4DKernel(3, N=v), 4)
    yield "nn.TripleAttention.embed_dim", "embed_dim", _module(gnn.TripleAttention), \
        (lambda v: gnn.TripleAttention(v, 2), 8)
    yield "nn.TripleAttention.num_heads", "num_heads", _module(gnn.TripleAttention), \
        (lambda v: gnn.TripleAttention(8, v), 2)
    yield "nn.TripleAttention.head_dim", "head_dim", _module(gnn.TripleAttention), \
        (lambda v: gnn.TripleAttention(8, 2, head_dim=v), 4)
    yield "nn.TripleAttention.window", "window", \
        _module(gnn.TripleAttention, inp=lambda: _r(1, 5, 8, seed=30).float()), \
        (lambda v: gnn.TripleAttention(8, 2, window=v), 2)


def _normalise(case):
    """(call(v) -> comparable result) for plain calls and module constructors."""
    cid, name, fn, good = case
    if isinstance(good, tuple):  # a module: fn is the maker, good = (builder(v), the good int)
        make, (build, good) = fn, good
        return cid, name, (lambda v: make(lambda: build(v))), good
    return cid, name, fn, good


CASES = [_normalise(c) for c in _cases()]
IDS = [c[0] for c in CASES]


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    return [out]


def _same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
        else:
            assert x == y and type(x) is type(y)


INTEGRAL = {
    "np.int64": np.int64,
    "np.int32": np.int32,
    "np.int16": np.int16,
    "tensor0d": lambda n: torch.tensor(n),
    "tensor0d.int32": lambda n: torch.tensor(n, dtype=torch.int32),
}


@pytest.mark.parametrize("kind", list(INTEGRAL))
@pytest.mark.parametrize("cid,name,call,good", CASES, ids=IDS)
def test_integral_values_accepted(cid, name, call, good, kind):
    _same(call(INTEGRAL[kind](good)), call(good))


REFUSED = {
    "bool": lambda n: bool(n),
    "np.bool_": lambda n: np.bool_(n),
    "float": float,
    "np.float64": np.float64,
    "tensor0d.float": lambda n: torch.tensor(float(n)),
    "tensor0d.bool": lambda n: torch.tensor(bool(n)),
    "tensor1d": lambda n: torch.tensor([n]),
    "str": str,
}


@pytest.mark.parametrize("kind", list(REFUSED))
@pytest.mark.parametrize("cid,name,call,good", CASES, ids=IDS)
def test_non_integers_refused(cid, name, call, good, kind):
    with pytest.raises(TypeError, match=name):
        call(REFUSED[kind](good))
