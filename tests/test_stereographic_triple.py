"""The fused three-vector row ops of the stereographic family: gyration, parallel_transport, parallel_transport0,
parallel_transport0back, dist2plane (csrc/cpu/stereographic_triple.cpp; torch.ops.geoops.<op>_fwd / _bwd).

Parity against geoopt and against the fp64 reference compositions (geoops.reference.stereographic), gradients
(gradcheck in fp64 through the kernels, k included, per-row k), the custom ops (opcheck, torch.compile, torch.func),
and the argument errors."""
from __future__ import annotations

import pytest
import torch

import geoops
import geoops.stereographic as gs
from geoops.reference import stereographic as ref

geoopt = pytest.importorskip("geoopt")
gm = geoopt.manifolds.stereographic.math

D64 = torch.float64
OPS = ["gyration", "parallel_transport", "parallel_transport0", "parallel_transport0back", "dist2plane"]
D2P_FLAGS = [(False, False), (True, False), (False, True), (True, True)]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _ball(*shape, k=-1.0, frac=0.7, seed=0, dtype=D64):
    """Points inside the ball of curvature k (anywhere for k >= 0), norms up to frac of the radius."""
    x = torch.randn(*shape, dtype=D64, generator=_g(seed))
    r = 1.0 / abs(k) ** 0.5 if k < 0 else 1.5
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * r * frac * torch.rand(*shape[:-1], 1, dtype=D64,
                                                                                   generator=_g(seed + 50))
    return x.to(dtype)


def _args(op, shape, k=-1.0, seed=0, dtype=D64):
    p0, p1 = _ball(*shape, k=k, seed=seed, dtype=dtype), _ball(*shape, k=k, seed=seed + 1, dtype=dtype)
    u = (torch.randn(*shape, dtype=D64, generator=_g(seed + 2)) * 0.5).to(dtype)
    if op in ("parallel_transport0", "parallel_transport0back"):
        return (p0, u)
    return (p0, p1, u)


def _call(mod, op, args, k, **kw):
    return getattr(mod, op)(*args, k=k, **kw)


def _geoopt(op, args, k, **kw):
    if op == "dist2plane":  # geoopt reduces with keepdim; a per-row k then stays (B, 1)
        return gm.dist2plane(*args, k=k, keepdim=True, **kw).squeeze(-1)
    return getattr(gm, op)(*args, k=k)


def _kw(op, flags):
    return {"signed": flags[0], "scaled": flags[1]} if op == "dist2plane" else {}


CASES = [(op, f) for op in OPS for f in (D2P_FLAGS if op == "dist2plane" else [(False, False)])]
CASE_IDS = [op + ("" if op != "dist2plane" else f"-s{int(f[0])}c{int(f[1])}") for op, f in CASES]


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("kval", [-1.0, -0.3, 0.0, 0.6])
@pytest.mark.parametrize("D", [1, 7, 64])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_geoopt_and_reference_fp64(case, D, kval):
    op, flags = case
    args = _args(op, (9, D), k=kval)
    k = torch.tensor(kval, dtype=D64)
    got = _call(gs, op, args, k, **_kw(op, flags))
    torch.testing.assert_close(got, _call(ref, op, args, k, **_kw(op, flags)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, _geoopt(op, args, k, **_kw(op, flags)), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_per_row_curvature_of_every_sign(case):
    op, flags = case
    ks = torch.tensor([-2.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 1.3], dtype=D64).reshape(-1, 1)
    args = tuple(torch.cat([_args(op, (1, 5), k=-2.0, seed=i)[j] for i in range(len(ks))])
                 for j in range(len(_args(op, (1, 5)))))
    got = _call(gs, op, args, ks, **_kw(op, flags))
    torch.testing.assert_close(got, _call(ref, op, args, ks, **_kw(op, flags)).reshape(got.shape), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(got, _geoopt(op, args, ks, **_kw(op, flags)).reshape(got.shape), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("D", [3, 8, 13, 64])
@pytest.mark.parametrize("op", ["gyration", "parallel_transport"])
def test_per_row_k_sign_passes(op, D, dtype):
    """gyration / parallel_transport read five of their seven dot products for k <= 0 rows and the CPU forward runs a
    dot pass of its own for them (stereo_triple.h, dots_mask_nonpos); k > 0 rows take the full pass.  Rows of both
    signs and 0 interleaved, row lengths below, at and above the 8 double lanes: each row as the float64 reference
    (on float32 rows: the float32 inputs' float64 result rounded, within 2.5e-7), and the forward with one shared k
    equals the per-row call's row."""
    kv = [-1.0, 0.5, 0.0, -0.3, 1.3, -1e-9, 2.0, -2.0] * 3
    ks = torch.tensor(kv, dtype=D64).reshape(-1, 1)
    args = tuple(torch.cat([_args(op, (1, D), k=-2.0, seed=17 * i + D)[j] for i in range(len(kv))])
                 for j in range(3))
    got = _call(gs, op, [a.to(dtype) for a in args], ks.to(dtype))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == D64 else dict(rtol=2.5e-7, atol=1e-7)
    torch.testing.assert_close(got, _call(ref, op, [a.to(dtype).to(D64) for a in args], ks).to(dtype), **tol)
    for i in (0, 1, 2):  # one shared k: the same rows, the same bits
        one = _call(gs, op, [a.to(dtype) for a in args], torch.tensor(kv[i], dtype=dtype))
        assert torch.equal(one[i], got[i]), (op, D, i)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_near_boundary_points(case):
    op, flags = case
    k = torch.tensor(-1.0, dtype=D64)
    args = list(_args(op, (16, 6)))
    for i in range(len(args) if op != "gyration" else 2):
        if i == len(args) - 1 and op != "dist2plane" and op != "gyration":
            break  # the transported vector is a tangent vector
        v = args[i]
        args[i] = v / v.norm(dim=-1, keepdim=True) * (1 - 1e-4)
    got = _call(gs, op, args, k, **_kw(op, flags))
    want = _call(ref, op, args, k, **_kw(op, flags))
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_vectors_finite_values_and_gradients(case):
    op, flags = case
    for kval in (-1.0, 0.0, 0.5):
        args = [torch.zeros(3, 4, dtype=D64, requires_grad=True) for _ in _args(op, (3, 4))]
        k = torch.tensor(kval, dtype=D64, requires_grad=True)
        out = _call(gs, op, args, k, **_kw(op, flags))
        want = _call(ref, op, [a.detach() for a in args], k.detach(), **_kw(op, flags))
        torch.testing.assert_close(out.detach(), want)
        grads = torch.autograd.grad(out.sum(), args + [k])
        assert all(torch.isfinite(g_).all() for g_ in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_by_the_2x_rule(case, dtype):
    """|ours - ref_fp64| <= 2 |ref_dtype - ref_fp64| + floor, in the op's own dtype."""
    op, flags = case
    args = _args(op, (64, 33), k=-1.0, dtype=dtype)
    k = torch.tensor(-1.0)
    got = _call(gs, op, args, k, **_kw(op, flags))
    assert got.dtype == dtype
    exact = _call(ref, op, [a.double() for a in args], k.double(), **_kw(op, flags))
    eager = _call(ref, op, list(args), k.to(dtype), **_kw(op, flags)).double()
    floor = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    err = (got.double() - exact).abs()
    assert bool((err <= 2 * (eager - exact).abs() + floor * (1 + exact.abs())).all()), float(err.max())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_reference_fp32(case):
    op, flags = case
    args = [a.float().requires_grad_() for a in _args(op, (20, 9))]
    k = torch.tensor(-0.8, requires_grad=True)
    out = _call(gs, op, args, k, **_kw(op, flags))
    w = torch.randn(out.shape, generator=_g(9))
    got = torch.autograd.grad((out * w).sum(), args + [k])
    a64 = [a.detach().double().requires_grad_() for a in args]
    k64 = k.detach().double().requires_grad_()
    want = torch.autograd.grad((_call(ref, op, a64, k64, **_kw(op, flags)) * w.double()).sum(), a64 + [k64])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.4])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_through_kernels(case, kval):
    op, flags = case
    args = [a.requires_grad_() for a in _args(op, (4, 5), k=kval, seed=3)]
    k = torch.tensor(kval, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _call(gs, op, t[:-1], t[-1], **_kw(op, flags)), (*args, k))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_per_row_k_and_broadcast_rows(case):
    op, flags = case
    args = [a.requires_grad_() for a in _args(op, (3, 4), k=-0.5, seed=4)]
    args[0] = args[0][:1].detach().requires_grad_()  # one row broadcast against three
    k = torch.tensor([[-0.5], [0.0], [0.3]], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _call(gs, op, t[:-1], t[-1], **_kw(op, flags)), (*args, k))


def test_second_derivative_raises():
    args = [a.requires_grad_() for a in _args("gyration", (3, 4))]
    out = gs.gyration(*args, k=-1.0)
    (g,) = torch.autograd.grad(out.sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad((g ** 2).sum() + (args[0] ** 3).sum(), args[0])


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_dim_broadcast_and_noncontiguous(case):
    op, flags = case
    args = _args(op, (2, 3, 6), k=-1.0)
    k = torch.tensor(-1.0, dtype=D64)
    want = _call(ref, op, args, k, **_kw(op, flags))
    moved = [a.movedim(-1, 1) for a in args]  # (2, 6, 3), vectors along dim=1, non-contiguous
    got = _call(gs, op, moved, k, dim=1, **_kw(op, flags))
    torch.testing.assert_close(got if op == "dist2plane" else got.movedim(1, -1), want)
    # broadcasting: the first argument shared by every row
    b = list(args)
    b[0] = args[0][:1, :1]
    torch.testing.assert_close(_call(gs, op, b, k, **_kw(op, flags)), _call(ref, op, b, k, **_kw(op, flags)))
    # a k with more batch dimensions than the vectors broadcasts them
    kb = torch.tensor([-1.0, 0.5], dtype=D64).reshape(2, 1, 1, 1)
    torch.testing.assert_close(_call(gs, op, args, kb, **_kw(op, flags)), _call(ref, op, args, kb, **_kw(op, flags)))


def test_dist2plane_keepdim():
    args = _args("dist2plane", (4, 5))
    assert gs.dist2plane(*args, k=-1.0, keepdim=True).shape == (4, 1)
    assert gs.dist2plane(*args, k=-1.0).shape == (4,)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_inputs(case):
    op, flags = case
    for shape in ((0, 4), (3, 0)):
        args = [torch.zeros(shape, dtype=D64, requires_grad=True) for _ in _args(op, (1, 1))]
        k = torch.tensor(-1.0, dtype=D64, requires_grad=True)
        out = _call(gs, op, args, k, **_kw(op, flags))
        torch.testing.assert_close(out.detach(), _call(ref, op, [a.detach() for a in args], k.detach(),
                                                       **_kw(op, flags)))
        grads = torch.autograd.grad(out.sum(), args + [k], allow_unused=True)
        assert all(g_ is None or torch.isfinite(g_).all() for g_ in grads)


def test_results_do_not_depend_on_the_thread_count():
    args = _args("dist2plane", (4096, 37), dtype=torch.float32)
    n = torch.get_num_threads()
    outs = []
    for t in (1, max(2, n)):
        torch.set_num_threads(t)
        try:
            xs = [a.clone().requires_grad_() for a in args]
            o1 = gs.dist2plane(*xs, k=-1.0)
            o2 = gs.gyration(*xs, k=-1.0)
            outs.append([o1, o2, *torch.autograd.grad(o1.sum() + o2.sum(), xs)])
        finally:
            torch.set_num_threads(n)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_coadd_cosub_use_the_fused_gyration():
    x, y = _ball(6, 5, seed=7), _ball(6, 5, seed=8)
    for kval in (-1.0, 0.0, 0.5):
        k = torch.tensor(kval, dtype=D64)
        torch.testing.assert_close(gs.mobius_coadd(x, y, k=k), gm.mobius_coadd(x, y, k=k))
        torch.testing.assert_close(gs.mobius_cosub(x, y, k=k), gm.mobius_cosub(x, y, k=k))


# ---------------------------------------------------------------- custom ops, compile, torch.func
def _op_args(op):
    spec = gs._ops.TRIPLE_OPS[op]
    vs = [torch.randn(5, 4, dtype=D64, generator=_g(i)) * 0.3 for i in range(len(spec.names))]
    if len(vs) == 2:
        vs.append(None)
    return vs


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, backend):
    v0, v1, v2 = _op_args(op)
    fwd = getattr(torch.ops.geoops, f"{op}_fwd")
    bwd = getattr(torch.ops.geoops, f"{op}_bwd")
    g = torch.randn(5, dtype=D64) if op == "dist2plane" else torch.randn(5, 4, dtype=D64)
    with geoops.use_backend(backend):
        for k in (torch.tensor([-0.5], dtype=D64), torch.linspace(-1, 1, 5, dtype=D64)):
            torch.library.opcheck(fwd, (v0, v1, v2, k, 1))
            torch.library.opcheck(bwd, (g, v0, v1, v2, k, 3, 15))
            torch.library.opcheck(bwd, (g, v0, v1, v2, k, 0, 2))


@pytest.mark.parametrize("mask", [15, 1, 10])
@pytest.mark.parametrize("op", OPS)
def test_reference_backward_op_values(op, mask):
    # opcheck checks the ops' contract, not their numbers: the reference backend's backward op (autograd of the
    # reference inside the op) must give the C++ kernels' gradients for the inputs the mask asks for
    v0, v1, v2 = _op_args(op)
    g = torch.randn(5, dtype=D64) if op == "dist2plane" else torch.randn(5, 4, dtype=D64)
    bwd = getattr(torch.ops.geoops, f"{op}_bwd")
    k = torch.linspace(-1, 1, 5, dtype=D64)
    outs = {}
    for backend in ("cpp", "reference"):
        with geoops.use_backend(backend):
            outs[backend] = bwd(g, v0, v1, v2, k, 3 if op == "dist2plane" else 0, mask)
    for a, b in zip(outs["cpp"], outs["reference"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_compile_fullgraph(case):
    op, flags = case
    torch._dynamo.reset()
    args = [a.float().requires_grad_() for a in _args(op, (6, 5))]
    k = torch.tensor(-1.0, requires_grad=True)
    fn = torch.compile(lambda *a: _call(gs, op, a[:-1], a[-1], **_kw(op, flags)), fullgraph=True, backend="aot_eager")
    out = fn(*args, k)
    expect = _call(gs, op, args, k, **_kw(op, flags))
    torch.testing.assert_close(out, expect)
    for a, b in zip(torch.autograd.grad(out.sum(), args + [k]), torch.autograd.grad(expect.sum(), args + [k])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_func_transforms(case):
    op, flags = case
    args = _args(op, (3, 4), k=-0.7)
    k = torch.tensor(-0.7, dtype=D64)

    def ours(*a):
        return _call(gs, op, a, k, **_kw(op, flags)).sum()

    def theirs(*a):
        return _call(ref, op, a, k, **_kw(op, flags)).sum()

    argn = tuple(range(len(args)))
    for a, b in zip(torch.func.grad(ours, argnums=argn)(*args), torch.func.grad(theirs, argnums=argn)(*args)):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.func.jacrev(ours, argnums=argn)(*args), torch.func.jacfwd(theirs, argnums=argn)(*args)):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.func.jacfwd(ours, argnums=argn)(*args), torch.func.jacrev(theirs, argnums=argn)(*args)):
        torch.testing.assert_close(a, b)
    batched = [torch.stack([a, a * 0.5]) for a in args]
    got = torch.func.vmap(lambda *a: _call(gs, op, a, k, **_kw(op, flags)))(*batched)
    want = torch.stack([_call(ref, op, [b[i] for b in batched], k, **_kw(op, flags)) for i in range(2)])
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- errors
_X = torch.randn(4, 3) * 0.1


@pytest.mark.parametrize("call, exc, match", [
    (lambda: gs.gyration(_X, _X, torch.randn(4, 5), k=-1.0), ValueError, "gyration: u of shape"),
    (lambda: gs.gyration(_X, _X.int(), _X, k=-1.0), TypeError, "gyration: b must be a floating-point"),
    (lambda: gs.parallel_transport(_X, _X, [1.0], k=-1.0), TypeError, "parallel_transport: v must be a torch.Tensor"),
    (lambda: gs.parallel_transport0(_X, _X, k=torch.randn(3, 1)), ValueError, "parallel_transport0: k of shape"),
    (lambda: gs.parallel_transport0back(_X, _X, k=-1.0, dim=3), IndexError, "parallel_transport0back: dim=3"),
    (lambda: gs.dist2plane(_X, _X, _X, k=torch.randn(4, 3)), ValueError, "dist2plane: k must have size 1 along dim"),
    (lambda: gs.dist2plane(_X, _X, _X, k="a"), TypeError, "dist2plane: k must be a torch.Tensor"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_debug_checks_name_the_argument():
    x = _X.clone()
    bad = x.clone()
    bad[0, 0] = float("nan")
    outside = x.clone()
    outside[1] = torch.tensor([2.0, 0.0, 0.0])
    gs.gyration(bad, x, x, k=-1.0)  # off by default
    geoops.set_checks(True)
    try:
        with pytest.raises(ValueError, match="gyration: u has non-finite values"):
            gs.gyration(x, x, bad, k=-1.0)
        with pytest.raises(ValueError, match="parallel_transport: y has points outside the ball"):
            gs.parallel_transport(x, outside, x, k=-1.0)
        with pytest.raises(ValueError, match="dist2plane: p has points outside the ball"):
            gs.dist2plane(x, outside, x, k=-1.0)
        gs.parallel_transport0back(x, outside, k=-1.0)  # v is a tangent vector: may be long
    finally:
        geoops.set_checks(False)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nan_row_gives_nan_in_that_row_only(case):
    """A NaN in one row's first argument gives NaN in that row (torch's clamps let NaN through), finite elsewhere."""
    op, flags = case
    args = [a.clone() for a in _args(op, (4, 5))]
    args[0][1, 2] = float("nan")
    out = _call(gs, op, args, -1.0, **_kw(op, flags))
    want = _call(ref, op, args, torch.tensor(-1.0, dtype=D64), **_kw(op, flags))
    torch.testing.assert_close(out, want, equal_nan=True)
    assert bool(out[1].isnan().all()) and bool(torch.isfinite(out[[0, 2, 3]]).all())


# ---------------------------------------------------------------- session 19: the vectorised float / double rows
# The kernels run float / double rows on at::vec (DVec lanes of 8 / 4 columns, the last D mod lanes columns in
# scalars) and the backward's dual numbers on SIMD vectors; rows of D = 5 / 4 (the gradchecks above) are all tail.
@pytest.mark.parametrize("D", [8, 11, 19])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_vector_body_and_tail(case, D):
    op, flags = case
    args = [a.requires_grad_() for a in _args(op, (3, D), k=-0.7, seed=11)]
    k = torch.tensor([[-0.7], [0.0], [0.5]], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _call(gs, op, t[:-1], t[-1], **_kw(op, flags)), (*args, k))


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("D", [16, 37, 64])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_gradient_subset_strided_rows(case, D, dtype):
    """Every subset of the wanted gradients (one write pass serves them all) on rows with a row stride != D,
    against the fp64 reference."""
    op, flags = case
    wide = [torch.cat([a, torch.randn_like(a)], -1) for a in _args(op, (33, D), seed=12)]
    base = [a.to(dtype)[:, :D] for a in wide]  # row stride 2 D
    assert base[0].stride(0) == 2 * D
    k = torch.tensor(-0.9, dtype=dtype)
    w = torch.randn(33, *([] if op == "dist2plane" else [D]), dtype=D64, generator=_g(13))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == D64 else dict(rtol=1e-4, atol=1e-5)
    a64 = [a.detach().double().requires_grad_() for a in base]
    want = torch.autograd.grad((_call(ref, op, a64, k.double(), **_kw(op, flags)) * w).sum(), a64)
    for want_mask in range(1, 2 ** len(base)):
        args = [a.detach().requires_grad_(bool(want_mask >> i & 1)) for i, a in enumerate(base)]
        out = _call(gs, op, args, k, **_kw(op, flags))
        sel = [i for i in range(len(args)) if want_mask >> i & 1]
        got = torch.autograd.grad((out * w.to(dtype)).sum(), [args[i] for i in sel])
        for i, g_ in zip(sel, got):
            torch.testing.assert_close(g_.double(), want[i], **tol)
