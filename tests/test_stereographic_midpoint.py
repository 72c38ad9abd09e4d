"""weighted_midpoint's fused reduction (csrc/cpu/stereographic_midpoint.cpp, MidpointSumsFn) and the closed-form
mobius_coadd / mobius_cosub: parity against geoopt, the previous composition and the reference backend (float64),
low precision by the 2x rule, gradients (gradcheck in float64 through the kernels, weights and k included), the
custom ops (opcheck), torch.compile, torch.func (grad, vmap with batched weights and k, jacrev, jacfwd), bit-equal
results for 1 and 2 threads, empty inputs and errors that name the argument."""
from __future__ import annotations

import random

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.stereographic as gs
from geoops._ops import stereographic as _ops
from _stress import assert_bitwise_repeatable

gm = pytest.importorskip("geoopt.manifolds.stereographic.math")

KS = [-1.0, 0.0, 0.8]
LAYOUTS = [  # (xs shape, reducedim, weights shape)
    ((7, 5), None, (7,)),
    ((4, 6, 3), [1], (4, 6)),
    ((4, 6, 3), [0], (4, 6)),
    ((4, 6, 3), [0, 1], (6,)),  # weights broadcast over dim 0 (unsqueezed at dim=-1 as geoopt does)
    ((3, 4, 5, 2), [1, 2], (3, 4, 5)),
]


def _ball(*shape, k=-1.0, seed=0, dtype=torch.float64, radius=0.9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x = x / (1 + x.norm(dim=-1, keepdim=True)) * radius
    if k != 0:
        x = x / abs(k) ** 0.5
    return x.to(dtype)


def _weights(shape, negative, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    return w if negative else w.abs() + 0.1


def _close(ours, ref, rtol):
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    err = (ours.double() - ref.double()).abs()
    assert (err <= rtol * (1 + ref.double().abs())).all(), err.max().item()


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("weighted", ["none", "positive", "negative"])
@pytest.mark.parametrize("lincomb,keepdim", [(False, False), (True, True)])
def test_matches_geoopt(k, layout, weighted, lincomb, keepdim):
    shape, red, wshape = LAYOUTS[layout]
    x = _ball(*shape, k=k, seed=layout)
    w = None if weighted == "none" else _weights(wshape, weighted == "negative", seed=layout + 1)
    posweight = weighted == "negative"  # negative weights without posweight leave the ball (geoopt clamps there)
    kt = torch.tensor(k, dtype=torch.float64)
    ref = gm.weighted_midpoint(x, weights=w, k=kt, reducedim=red, keepdim=keepdim, lincomb=lincomb,
                               posweight=posweight)
    ours = gs.weighted_midpoint(x, w, k=kt, reducedim=red, keepdim=keepdim, lincomb=lincomb, posweight=posweight)
    # on the sphere lincomb's scalar multiplication by the summed weights amplifies geoopt's rounding
    _close(ours, ref, 1e-7 if (k > 0 and lincomb) else 1e-10)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("posweight", [False, True])
@pytest.mark.parametrize("lincomb", [False, True])
def test_matches_composition_and_reference_backend(k, posweight, lincomb):
    # negative weights without posweight too: the previous composition (the row kernels) and the reference
    # backend agree there as well
    x = _ball(4, 9, 3, k=k, seed=3)
    w = _weights((4, 9), True, seed=4)
    kt = torch.tensor(k, dtype=torch.float64)
    args = dict(k=kt, reducedim=[1], lincomb=lincomb, posweight=posweight)
    ours = gs.weighted_midpoint(x, w, **args)
    comp = gs._weighted_midpoint_composed(x, w, k=kt, reducedim=[1], dim=2, keepdim=False, lincomb=lincomb,
                                          posweight=posweight)
    _close(ours, comp, 1e-10)
    # the reference backend clamps points outside the ball differently (docs: known gaps): in-ball means only
    wr = w if posweight else w.abs()
    with geoops._backend.use_backend("reference"):
        ref = gs.weighted_midpoint(x, wr, **args)
    _close(gs.weighted_midpoint(x, wr, **args), ref, 1e-9)


def test_per_group_curvature_and_dim():
    # k per group (one curvature per output row), vectors along dim 0
    x = _ball(6, 4, 5, k=-1.0, seed=5).movedim(-1, 0)  # (5, 6, 4): vectors along dim 0
    k = torch.tensor([-1.0, -0.3, 0.0, 0.5], dtype=torch.float64).reshape(1, 1, 4)
    w = _weights((6, 4), False, seed=6)
    ours = gs.weighted_midpoint(x, w, k=k, reducedim=[1], dim=0)
    ref = gm.weighted_midpoint(x, weights=w, k=k, reducedim=[1], dim=0)
    _close(ours, ref, 1e-10)


def test_curvature_varying_over_points_is_rejected():
    # one curvature per midpoint: a k that varies over the reduced points has no midpoint (geoopt broadcasts the
    # result against it; the composed version failed inside mobius_scalar_mul with a message about its own inputs)
    x = _ball(5, 3, seed=7)
    k = torch.linspace(-1.0, -0.5, 5, dtype=torch.float64).reshape(5, 1)
    with pytest.raises(ValueError, match=r"weighted_midpoint: k of shape \(5, 1\) must have size 1 along the reduced"):
        gs.weighted_midpoint(x, k=k, reducedim=[0])


def test_weights_broadcast_regression():
    # weights of fewer dims than xs minus one: geoopt unsqueezes them at dim=-1; the composed version unsqueezed
    # at dim % xs.dim() (out of range for a 1-d weight against 3-d points) and raised IndexError
    x = _ball(4, 6, 3, seed=8)
    w = _weights((6,), False, seed=9)
    kt = torch.tensor(-1.0, dtype=torch.float64)
    _close(gs.weighted_midpoint(x, w, k=kt), gm.weighted_midpoint(x, weights=w, k=kt), 1e-10)


@pytest.mark.parametrize("k", [-1.0, 0.8])
def test_near_boundary(k):
    x = _ball(64, 8, k=k, seed=10, radius=1 - 1e-6)
    w = _weights((64,), False, seed=11)
    kt = torch.tensor(k, dtype=torch.float64)
    comp = gs._weighted_midpoint_composed(x, w, k=kt, reducedim=[0], dim=1, keepdim=False, lincomb=False,
                                          posweight=False)
    ours = gs.weighted_midpoint(x, w, k=kt)
    _close(ours, comp, 1e-9)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("dtype,floor", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("k", [-1.0, 0.8])
def test_low_precision_2x_rule(dtype, floor, k):
    x64 = _ball(33, 16, 8, k=k, seed=12)
    w64 = _weights((33, 16), False, seed=13)
    x, w = x64.to(dtype), w64.to(dtype)
    kt = torch.tensor(k, dtype=torch.float64)
    ref64 = gm.weighted_midpoint(x.double(), weights=w.double(), k=kt, reducedim=[1])
    ref_lo = gm.weighted_midpoint(x.float() if dtype != torch.float32 else x, weights=w.float(), k=kt.float(),
                                  reducedim=[1]).to(dtype)
    ours = gs.weighted_midpoint(x, w, k=kt.to(dtype), reducedim=[1])
    assert ours.dtype == dtype
    err, err_ref = (ours.double() - ref64).abs(), (ref_lo.double() - ref64).abs()
    assert (err <= 2 * err_ref + floor * (1 + ref64.abs())).all(), (err.max().item(), err_ref.max().item())


@pytest.mark.parametrize("shape,red,out", [((0, 3), None, (3,)), ((5, 0), None, (0,)), ((0, 4, 3), [1], (0, 3)),
                                           ((4, 0, 3), [1], (4, 3))])
def test_empty(shape, red, out):
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    kt = torch.tensor(-1.0, dtype=torch.float64)
    ours = gs.weighted_midpoint(x, k=kt, reducedim=red)
    ref = gm.weighted_midpoint(x.detach(), k=kt, reducedim=red)
    assert tuple(ours.shape) == out == tuple(ref.shape)
    assert torch.equal(ours.detach(), ref)
    ours.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(weights=torch.rand(10, 4)), ValueError, "weights of shape (10, 4) must have fewer dimensions"),
    (dict(weights=torch.rand(7)), ValueError, "weights of shape (7,) does not broadcast"),
    (dict(weights=torch.ones(10, dtype=torch.int64)), TypeError, "weights must be a floating-point tensor"),
    (dict(reducedim=[1]), ValueError, "must not contain the vector dim"),
    (dict(reducedim=[5]), IndexError, "reducedim=[5]"),
    (dict(reducedim=[0, 0]), IndexError, "reducedim=[0, 0]"),
    (dict(reducedim="a"), TypeError, "reducedim must be an int or a list of ints"),
    (dict(dim=3), IndexError, "dim=3"),
])
def test_errors_name_the_argument(kwargs, exc, needle):
    x = torch.rand(10, 4) * 0.1
    w = kwargs.pop("weights", None)
    with pytest.raises(exc, match="weighted_midpoint") as e:
        gs.weighted_midpoint(x, w, k=-1.0, **kwargs)
    assert needle in str(e.value)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("posweight", [False, True])
def test_gradcheck(k, posweight):
    x = _ball(2, 4, 3, k=k, seed=14).requires_grad_()
    w = _weights((2, 4), posweight, seed=15).requires_grad_()
    # the antipode jumps at k = 0 (geoopt: -x for k <= 0, -x / (k|x|^2) for k > 0): no k derivative there
    kt = torch.tensor(k, dtype=torch.float64, requires_grad=not (posweight and k == 0))
    assert gradcheck(lambda x, w, kt: gs.weighted_midpoint(x, w, k=kt, reducedim=[1], lincomb=True,
                                                          posweight=posweight), (x, w, kt))
    kg = torch.tensor([k, 0.3], dtype=torch.float64, requires_grad=k != 0)
    assert gradcheck(lambda x, w, kg: gs.MidpointSumsFn.apply(x, w, kg, posweight), (x, w, kg))
    assert gradcheck(lambda x, kg: gs.MidpointSumsFn.apply(x, None, kg, posweight), (x, kg))


def test_grad_matches_geoopt_fp32():
    x = _ball(40, 6, seed=16, dtype=torch.float32).requires_grad_()
    w = _weights((40,), False, seed=17).float().requires_grad_()
    k = torch.tensor(-0.7, requires_grad=True)
    g1 = torch.autograd.grad(gs.weighted_midpoint(x, w, k=k, lincomb=True).square().sum(), (x, w, k))
    x2, w2, k2 = (t.detach().double().requires_grad_() for t in (x, w, k))
    g2 = torch.autograd.grad(gm.weighted_midpoint(x2, weights=w2, k=k2, lincomb=True).square().sum(), (x2, w2, k2))
    for a, b in zip(g1, g2):
        _close(a, b, 1e-4)


def test_second_derivative_raises():
    x = _ball(6, 3, seed=18).requires_grad_()
    (g,) = torch.autograd.grad(gs.weighted_midpoint(x, k=-1.0).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives through MidpointFn"):
        torch.autograd.grad(g.sum(), x)


# ---------------------------------------------------------------- custom ops, compile, torch.func
@pytest.mark.parametrize("posweight", [False, True])
def test_opcheck(posweight):
    x = _ball(2, 5, 3, seed=19)
    w = _weights((2, 5), True, seed=20)
    k = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_fwd.default, (x, w, k, posweight))
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_fwd.default, (x.float(), None, k[:1], posweight))
    gF, gL = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    for mask in (1, 2, 4, 7):
        torch.library.opcheck(torch.ops.geoops.stereo_midpoint_bwd.default, (gF, gL, x, w, k, posweight, mask))


@pytest.mark.parametrize("k", [-1.0, 0.8])
def test_compile_fullgraph(k):
    x = _ball(4, 6, 3, k=k, seed=21)
    w = _weights((4, 6), True, seed=22)

    def f(x, w):
        return gs.weighted_midpoint(x, w, k=k, reducedim=[1], lincomb=True, posweight=True)

    torch._dynamo.reset()
    _close(torch.compile(f, fullgraph=True)(x, w), f(x, w), 1e-12)


def test_torch_func():
    from torch.func import grad, jacfwd, jacrev, vmap

    xb = _ball(3, 6, 4, seed=23)
    wb = _weights((3, 6), False, seed=24)
    kb = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    out = vmap(lambda x, w, k: gs.weighted_midpoint(x, w, k=k, lincomb=True))(xb, wb, kb)
    ref = torch.stack([gm.weighted_midpoint(xb[i], weights=wb[i], k=kb[i], lincomb=True) for i in range(3)])
    _close(out, ref, 1e-10)
    f = lambda x: gs.weighted_midpoint(x, wb[0], k=-1.0)  # noqa: E731
    _close(jacfwd(f)(xb[0]), jacrev(f)(xb[0]), 1e-10)
    # forward mode with posweight's flips (the jvp differentiates the reference sums: no 0 * inf in its wheres)
    wn = _weights((6,), True, seed=31)
    for kv in (-1.0, 0.5):
        fp = lambda x: gs.weighted_midpoint(x, wn, k=kv, posweight=True)  # noqa: E731
        jf = jacfwd(fp)(xb[0])
        assert torch.isfinite(jf).all()
        _close(jf, jacrev(fp)(xb[0]), 1e-9)
    fk = lambda k: gs.weighted_midpoint(xb[0], wb[0], k=k).sum()  # noqa: E731
    k0 = torch.tensor(-0.7, dtype=torch.float64)
    kr = k0.clone().requires_grad_()
    (ref_gk,) = torch.autograd.grad(gm.weighted_midpoint(xb[0], weights=wb[0], k=kr).sum(), kr)
    _close(grad(fk)(k0), ref_gk, 1e-9)
    gw = vmap(grad(lambda w, x: gs.weighted_midpoint(x, w, k=-1.0).sum()))(wb, xb)
    for i in range(3):
        wr = wb[i].clone().requires_grad_()
        (g,) = torch.autograd.grad(gm.weighted_midpoint(xb[i], weights=wr, k=torch.tensor(-1.0,
                                   dtype=torch.float64)).sum(), wr)
        _close(gw[i], g, 1e-9)


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,red", [((9000, 8), None), ((3, 2100, 16), [1]), ((300, 7, 64), [1])])
def test_same_bits_for_1_and_2_threads(dtype, shape, red):
    x = _ball(*shape, seed=25, dtype=dtype)
    w = _weights(shape[:-1], True, seed=26).to(dtype)
    k = torch.tensor(-0.9, dtype=dtype)

    def run(x, w, k):
        x, w, k = (t.detach().requires_grad_() for t in (x, w, k))
        out = gs.weighted_midpoint(x, w, k=k, reducedim=red, posweight=True, lincomb=True)
        gx, gw, gk = torch.autograd.grad(out.square().sum(), (x, w, k))
        return [out.detach(), gx, gw, gk]

    assert_bitwise_repeatable(run, (x, w, k), reps=4, rng=random.Random(0), held=[], tag=shape)


# ---------------------------------------------------------------- mobius_coadd / mobius_cosub (closed form)
@pytest.mark.parametrize("k", [-1.3, 0.0, 0.7])
def test_coadd_cosub_match_geoopt(k):
    x, y = _ball(9, 4, k=k, seed=27), _ball(9, 4, k=k, seed=28)
    kt = torch.tensor(k, dtype=torch.float64)
    _close(gs.mobius_coadd(x, y, k=kt), gm.mobius_coadd(x, y, k=kt), 1e-12)
    _close(gs.mobius_cosub(x, y, k=kt), gm.mobius_cosub(x, y, k=kt), 1e-12)
    # the definition: x (+) gyr[x, -y] y
    _close(gs.mobius_coadd(x, y, k=kt), gs.mobius_add(x, gs.gyration(x, -y, y, k=kt), k=kt), 1e-12)
    xr, yr, kr = (t.clone().requires_grad_() for t in (x, y, kt))
    assert gradcheck(lambda a, b, c: gs.mobius_coadd(a, b, k=c), (xr, yr, kr))
    assert gradcheck(lambda a, b, c: gs.mobius_cosub(a, b, k=c), (xr, yr, kr))


def test_midpoint_sums_reference_matches_kernel():
    x = _ball(3, 40, 5, seed=29)
    w = _weights((3, 40), True, seed=30)
    for k in ([-1.0, 0.0, 0.6], [0.6]):
        kt = torch.tensor(k, dtype=torch.float64)
        for pw in (False, True):
            F, L = geoops._backend.compiled().stereo_midpoint_fwd_cpu(x, w, kt, pw)
            F2, L2 = _ops.midpoint_sums_reference(x, w, kt, pw)
            _close(F, F2, 1e-12)
            _close(L, L2, 1e-12)


# The point loops run on double SIMD lanes: blocks of 2 kL columns, one block of kL, then scalar columns (kL = 8 with
# AVX-512, 4 with AVX2).  Widths that take each combination, forward and backward against the float64 reference.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [1, 3, 4, 7, 8, 12, 16, 17, 24, 37, 64])
def test_kernel_lanes_every_width(dtype, D):
    x = _ball(2, 33, D, seed=31 + D, dtype=dtype)
    w = _weights((2, 33), True, seed=32 + D).to(dtype)
    xd, wd = x.double(), w.double()  # the reference on the same values (the kernel widens them exactly)
    gF = torch.randn(2, D, generator=torch.Generator().manual_seed(D), dtype=torch.float64)
    gL = torch.tensor([0.7, -1.3], dtype=torch.float64)
    lib = geoops._backend.compiled()
    for k in ([-1.0, 0.6], [0.6]):
        kt = torch.tensor(k, dtype=torch.float64)
        for pw in (False, True):
            F, L = lib.stereo_midpoint_fwd_cpu(x, w, kt, pw)
            F2, L2 = _ops.midpoint_sums_reference(xd, wd, kt, pw)
            _close(F, F2, 1e-12)
            _close(L, L2, 1e-12)
            dx, dw, dk = lib.stereo_midpoint_bwd_cpu(gF, gL, x, w, kt, pw, 7)
            dx2, dw2, dk2 = _ops._MidpointTorch.midpoint_bwd(gF, gL, xd, wd, kt, pw, 7)
            assert dx.dtype == dtype and dw.dtype == dtype
            tol = 1e-12 if dtype == torch.float64 else 2e-7  # float32: the gradients' one rounding
            _close(dx, dx2, tol)
            _close(dw, dw2, tol)
            _close(dk, dk2, 1e-12)  # per group, both


# ---------------------------------------------------------------- the mean from the sums (MidpointFn's second op)
def _mean_case(G, D, seed):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(G, D, generator=g, dtype=torch.float64)
    L = torch.randn(G, generator=g, dtype=torch.float64) * 3
    L[:4] = torch.tensor([1e-12, -1e-12, 0.0, -2.5], dtype=torch.float64)[:min(4, G)]  # clamped both ways, negative
    F[0] *= 1e-11  # a clamped group whose t = F / den stays inside the ball
    return F, L


@pytest.mark.parametrize("k", [[-1.0], [0.0], [0.6], "per-group"])
@pytest.mark.parametrize("D", [1, 5, 8, 19, 64])
def test_mean_op_matches_reference(k, D):
    G = 7
    F, L = _mean_case(G, D, seed=D)
    kt = (torch.linspace(-1.2, 0.9, G, dtype=torch.float64) if k == "per-group"
          else torch.tensor(k, dtype=torch.float64))
    F = F * 0.05 / (1 + kt.abs().max())  # |t| = |F / den| inside every curvature's ball for |L| >~ 1
    lib = geoops._backend.compiled()
    m = lib.stereo_midpoint_mean_fwd_cpu(F, L, None, kt)
    Fr, Lr, kr = (t.clone().requires_grad_() for t in (F, L, kt.expand(G).clone()))
    mr = _ops.midpoint_mean_reference(Fr, Lr, kr)
    _close(m, mr, 1e-12)
    gm = torch.randn(G, D, generator=torch.Generator().manual_seed(D + 1), dtype=torch.float64)
    gF, gL, gQ, gk = lib.stereo_midpoint_mean_bwd_cpu(gm, F, L, None, kt, 4)
    gF2, gL2, gk2 = torch.autograd.grad(mr, (Fr, Lr, kr), gm)
    _close(gF, gF2, 1e-11)
    _close(gL, gL2, 1e-11)
    _close(gk, gk2, 1e-11)
    assert gL[0] == 0 and gL[1] == 0 and gL[2] == 0  # the clamp holds L: no gradient through it
    assert lib.stereo_midpoint_mean_bwd_cpu(gm, F, L, None, kt, 0)[3].numel() == 0 and gQ.numel() == 0


def test_mean_op_opcheck_and_fallback():
    F, L = _mean_case(5, 4, seed=40)
    F = F * 0.05
    for k in (torch.tensor([-1.0], dtype=torch.float64), torch.linspace(-1, 0.5, 5, dtype=torch.float64)):
        torch.library.opcheck(torch.ops.geoops.stereo_midpoint_mean_fwd.default, (F, L, None, k))
        gm = torch.randn(5, 4, dtype=torch.float64)
        for mask in (0, 4):
            torch.library.opcheck(torch.ops.geoops.stereo_midpoint_mean_bwd.default, (gm, F, L, None, k, mask))
        # the torch implementation other devices run, here on the CPU under the reference backend
        ref = torch.ops.geoops.stereo_midpoint_mean_fwd(F, L, None, k)
        with geoops.use_backend("reference"):
            _close(torch.ops.geoops.stereo_midpoint_mean_fwd(F, L, None, k), ref, 1e-12)
            back = torch.ops.geoops.stereo_midpoint_mean_bwd(gm, F, L, None, k, 4)
        for a, b in zip(back, torch.ops.geoops.stereo_midpoint_mean_bwd(gm, F, L, None, k, 4)):
            _close(a, b, 1e-11)


@pytest.mark.parametrize("k", KS)
def test_fused_mean_matches_sums_path(k):
    # MidpointFn (CPU) against the sums + torch epilogue that other devices and torch.func run
    x = _ball(5, 9, 6, k=k, seed=41).requires_grad_()
    w = _weights((5, 9), True, seed=42).requires_grad_()
    kt = torch.tensor([k], dtype=torch.float64, requires_grad=True)
    m1 = gs._midpoint_mean(x, w, kt, True)
    assert m1.grad_fn is not None and "MidpointFn" in type(m1.grad_fn).__name__
    F, L = gs.MidpointSumsFn.apply(x, w, kt, True)
    den = torch.where(L >= 0, L.clamp_min(1e-10), L.clamp_max(-1e-10)).unsqueeze(-1)
    m2 = gs.mobius_scalar_mul(torch.full((5, 1), 0.5, dtype=torch.float64), F / den, k=kt.unsqueeze(-1))
    _close(m1, m2, 1e-12)
    g = torch.randn(5, 6, generator=torch.Generator().manual_seed(43), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(m1, (x, w, kt), g), torch.autograd.grad(m2, (x, w, kt), g)):
        _close(a, b, 1e-10)
