"""kappa-stereographic family: parity, gradients, geoopt agreement, properties, errors, compile."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.stereographic as gs
from geoops import parity
from geoops.parity import stereographic as parity_cases
from geoops._ops.stereographic import STEREO_OPS
from geoops.reference import stereographic as ref

OPS = list(STEREO_OPS)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CPU_BACKENDS = ["cpp", "reference"]
CASES = parity_cases.cases()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _call(op, *tensors, k, **kw):
    return getattr(gs, op)(*tensors, k=k, **kw)


_GEN = torch.Generator().manual_seed(1234)


def _rand(*shape, scale=0.3, dtype=torch.float64, gen=None):
    """Seeded normal samples (the module's generator unless one is given)."""
    return torch.randn(*shape, dtype=dtype, generator=gen or _GEN) * scale


def _inputs(op, shape, dtype=torch.float64, seed=0, scale=0.3):
    """Positional tensors of `op` for vectors of `shape` (inside the unit ball for moderate shapes)."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    s = scale / math.sqrt(max(d, 1))
    spec = STEREO_OPS[op]
    if spec.has_r:
        return [_rand(*shape[:-1], 1, scale=1.0, dtype=dtype, gen=g), _rand(*shape, scale=s, dtype=dtype, gen=g)]
    if spec.has_y:
        return [_rand(*shape, scale=s, dtype=dtype, gen=g), _rand(*shape, scale=s, dtype=dtype, gen=g)]
    return [_rand(*shape, scale=s * (8 if op == "project" else 1), dtype=dtype, gen=g)]


# ---------------------------------------------------------------- parity with the fp64 reference
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_parity_cases(op, dtype):
    """Every case of the parity run (interior, boundary, tiny, zero, odd D; 6 curvatures) holds its bound."""
    failures = []
    for case in (c for c in CASES if c.op == op):
        for q, err, bound, finite in parity.check_case(case, "cpp", dtype):
            if not finite or err > bound:
                failures.append(f"{case.name}:{q} err={err:.3e} bound={bound:.3e} finite={finite}")
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(7, 33), (1, 1), (0, 3), (2, 3, 5), (4, 0)], ids=str)
def test_forward_matches_reference_fp64(op, shape, backend):
    args = _inputs(op, shape)
    k = torch.tensor(-0.7, dtype=torch.float64)
    with geoops.use_backend(backend):
        ours = _call(op, *args, k=k)
    expect = _call_ref(op, *args, k=k)
    assert ours.shape == expect.shape and ours.dtype == expect.dtype
    torch.testing.assert_close(ours, expect, rtol=1e-10, atol=1e-12)


def _call_ref(op, *args, k, **kw):
    return getattr(ref, op)(*args, k=k, **kw)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kval", [-1.0, -1e-4, 0.0, 0.6])
def test_gradcheck_through_kernels(op, kval):
    """fp64 gradcheck of the hand-written backward kernels, w.r.t. every input, k included."""
    args = [a.requires_grad_() for a in _inputs(op, (3, 4), seed=1)]
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    with geoops.use_backend("cpp"):
        assert gradcheck(lambda *a: _call(op, *a[:-1], k=a[-1]), (*args, k), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_per_row_curvature(op):
    """k with one value per row (shape (B, 1)), mixed signs."""
    args = [a.requires_grad_() for a in _inputs(op, (4, 3), seed=2)]
    k = torch.tensor([[-1.0], [0.3], [-2e-4], [0.0]], dtype=torch.float64, requires_grad=True)
    with geoops.use_backend("cpp"):
        assert gradcheck(lambda *a: _call(op, *a[:-1], k=a[-1]), (*args, k), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", [o for o in OPS if o not in ("mobius_add", "mobius_sub", "project", "lambda_x")])
def test_mixed_regimes_in_one_block(op):
    """The CPU kernel evaluates tanc/atanc for blocks of rows on SIMD vectors: rows whose z = k|v|^2 falls in
    different branches (series at |z| < 1e-3, k < 0, k > 0, z = 0 exactly, z at the cut) share a vector.
    Values and gradients (x, y, k, r) of every row must still match the fp64 reference; 37 rows = one full
    block, a partial one, and a tail that is not a multiple of the vector width."""
    n, d = 37, 5
    g = torch.Generator().manual_seed(11)
    kvals = torch.tensor([-1.0, 0.4, -3e-4, 0.0, 2e-4, -0.02, 1.5, -0.3], dtype=torch.float64)
    k = kvals[torch.arange(n) % len(kvals)].reshape(n, 1).clone().requires_grad_()
    args = _inputs(op, (n, d), seed=5)
    scale = torch.logspace(-3, 0, n, dtype=torch.float64).reshape(n, 1)  # |v| from 1e-3 to ~0.3: z spans the cut
    args[-1] = args[-1] * scale * 2
    args[-1][3] = 0.0
    if STEREO_OPS[op].has_y:
        args[0] = args[0] * scale.flip(0)
    grads = {}
    for backend in CPU_BACKENDS:
        leaves = [a.clone().requires_grad_() for a in args]
        kk = k.detach().clone().requires_grad_()
        with geoops.use_backend(backend):
            out = _call(op, *leaves, k=kk)
        w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
        grads[backend] = (out.detach(), *torch.autograd.grad(out, leaves + [kk], w))
    for name, a, b in zip(["value"] + [f"grad{i}" for i in range(len(args) + 1)], grads["cpp"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{op} {name}: {m}")


@pytest.mark.parametrize("op", OPS)
def test_gradients_match_reference_fp32(op):
    args = _inputs(op, (17, 9), dtype=torch.float32, seed=3)
    k = torch.tensor(-0.9)
    res = {}
    for backend in CPU_BACKENDS:
        leaves = [a.clone().requires_grad_() for a in args]
        kk = k.clone().requires_grad_()
        with geoops.use_backend(backend):
            out = _call(op, *leaves, k=kk)
        g = torch.ones_like(out) * torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        res[backend] = torch.autograd.grad(out, leaves + [kk], g)
    for a, b in zip(res["cpp"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("op", OPS)
def test_zero_vectors_finite_values_and_gradients(op):
    args = [torch.zeros(3, 4, dtype=torch.float64) for _ in _inputs(op, (3, 4))]
    if STEREO_OPS[op].has_r:
        args[0] = torch.full((3, 1), 0.5, dtype=torch.float64)
    args = [a.requires_grad_() for a in args]
    for kval in (-1.0, 0.0, 1.0):
        k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
        out = _call(op, *args, k=k)
        grads = torch.autograd.grad(out.sum(), args + [k])
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(g).all() for g in grads), op


# ---------------------------------------------------------------- agreement with geoopt (independent oracle)
# A missing geoopt skips these tests only (pytest.importorskip here would skip the whole module).
try:
    import geoopt.manifolds.stereographic.math as geoopt_math
except ImportError:
    geoopt_math = None
needs_geoopt = pytest.mark.skipif(geoopt_math is None, reason="needs geoopt (a test dependency)")


@needs_geoopt
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kval", [-1.0, -0.3, 0.0, 0.5])
def test_matches_geoopt_fp64(op, kval):
    args = [a.requires_grad_() for a in _inputs(op, (6, 5), seed=4)]
    k1 = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    k2 = k1.detach().clone().requires_grad_()
    ours = _call(op, *args, k=k1)
    theirs = getattr(geoopt_math, op)(*args, k=k2)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)
    g = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ga = torch.autograd.grad(ours, args + [k1], g, allow_unused=True)
    gb = torch.autograd.grad(theirs, args + [k2], g, allow_unused=True)
    for a, b in zip(ga, gb):
        if b is None:  # geoopt's k=0 path has no k gradient; ours has the exact Euclidean-limit one
            continue
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@needs_geoopt
def test_better_than_geoopt_where_geoopt_is_poor():
    """fp32 logmap0 of tiny vectors and dist near the boundary: geoops stays accurate."""
    k = torch.tensor(-1.0)
    y = torch.full((4, 8), 1e-6 / math.sqrt(8))  # |y| = 1e-6
    truth = ref.logmap0(y.double(), k=k.double())
    ours_err = (gs.logmap0(y, k=k).double() - truth).abs().max() / truth.abs().max()
    geo_err = (geoopt_math.logmap0(y, k=k).double() - truth).abs().max() / truth.abs().max()
    assert ours_err < 1e-6 < geo_err
    # points at 1e-4 .. 1e-3 from the boundary
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, 16, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    x = (u * (1 - torch.logspace(-4, -3, 64, dtype=torch.float64)).unsqueeze(-1)).float()
    y = (torch.roll(u, 1, 0) * 0.5).float()
    truth = ref.dist(x.double(), y.double(), k=k.double())
    ours = (gs.dist(x, y, k=k).double() - truth).abs().max()
    theirs = (geoopt_math.dist(x, y, k=k).double() - truth).abs().max()
    assert ours < 1e-4 and ours * 10 < theirs


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("op", ["mobius_add", "logmap", "dist", "expmap"])
def test_broadcasting_and_bias_gradient(op):
    x = _rand(4, 1, 5, scale=0.15).requires_grad_()
    y = _rand(3, 5, scale=0.15).requires_grad_()
    k = torch.tensor([[[-0.5]], [[-1.0]], [[0.2]], [[0.0]]], dtype=torch.float64, requires_grad=True)
    ours = _call(op, x, y, k=k)
    expect = _call_ref(op, x, y, k=k)
    torch.testing.assert_close(ours, expect, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (x, y, k), g), torch.autograd.grad(expect, (x, y, k), g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("op", OPS)
def test_dim_and_noncontiguous(op):
    """Vectors along dim=1 of a transposed (non-contiguous) view give the same rows."""
    args = _inputs(op, (5, 6, 7), seed=5)  # vectors along the last dim
    k = torch.tensor(-0.8, dtype=torch.float64)
    base = _call(op, *args, k=k)
    moved = [a.transpose(1, 2) for a in args]  # vectors along dim 1; r becomes (5, 1, 6)
    assert not moved[-1].is_contiguous()
    for d in (1, -2):
        ours = _call(op, *moved, k=k, dim=d)
        torch.testing.assert_close(ours, _call_ref(op, *moved, k=k, dim=d), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours if STEREO_OPS[op].scalar_out else ours.transpose(1, 2), base,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", ["lambda_x", "dist", "dist0"])
def test_keepdim(op):
    args = _inputs(op, (3, 4, 5))
    k = torch.tensor(-1.0, dtype=torch.float64)
    for keepdim in (True, False):
        for d in (0, 1, -1):
            ours = _call(op, *args, k=k, dim=d, keepdim=keepdim)
            expect = _call_ref(op, *args, k=k, dim=d, keepdim=keepdim)
            assert ours.shape == expect.shape
            torch.testing.assert_close(ours, expect, rtol=1e-10, atol=1e-12)


def test_python_number_curvature_and_mixed_dtypes():
    x, y = _rand(3, 4, dtype=torch.float32), _rand(3, 4)
    out = gs.mobius_add(x, y, k=-1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.mobius_add(x.double(), y, k=torch.tensor(-1.0, dtype=torch.float64)))


def test_bfloat16_rounding_matches_torch():
    """The CPU kernels round their float results to bfloat16 with their own (vectorisable) code: it must give
    torch's bits, ties to even, NaN and overflow included.  At k = 0, mobius_scalar_mul(r, x) = r * x exactly in
    float, and products of 8-bit mantissas land on bfloat16 ties often."""
    mant = torch.arange(128, dtype=torch.float32) / 128 + 1  # every bfloat16 in [1, 2)
    x = torch.cat([mant, -mant * 2.0 ** -20, mant * 2.0 ** 120, torch.tensor([float("nan"), float("inf"), 0.0])])
    x = x.bfloat16().reshape(-1, 1)
    for rv in (1.5, 1.25, 0.75, 1.0078125, 3.0):
        r = torch.tensor(rv)
        ours = gs.mobius_scalar_mul(r, x, k=0.0)
        truth = gs.mobius_scalar_mul(r, x.float(), k=0.0).bfloat16()
        assert torch.equal(ours.view(torch.int16), truth.view(torch.int16)) or torch.equal(
            ours.isnan(), truth.isnan()) and torch.equal(ours[~ours.isnan()].view(torch.int16),
                                                         truth[~truth.isnan()].view(torch.int16)), rv


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_returns_own_dtype(dtype):
    x, y = _rand(5, 8, dtype=dtype), _rand(5, 8, dtype=dtype)
    for op in ("mobius_add", "dist", "expmap0"):
        args = (x, y) if STEREO_OPS[op].has_y else (x,)
        assert _call(op, *args, k=torch.tensor(-1.0)).dtype == dtype


# ---------------------------------------------------------------- properties of the geometry
@pytest.mark.parametrize("kval", [-1.0, -0.2, 0.0, 0.7])
def test_geometric_identities(kval):
    k = torch.tensor(kval, dtype=torch.float64)
    x, y = _inputs("mobius_add", (32, 6), seed=7)
    u = _rand(32, 6, scale=0.1)
    # left cancellation (-x) (+) (x (+) y) = y
    torch.testing.assert_close(gs.mobius_add(-x, gs.mobius_add(x, y, k=k), k=k), y, rtol=1e-9, atol=1e-12)
    # logmap inverts expmap, and both maps at 0 agree with the general ones
    torch.testing.assert_close(gs.logmap(x, gs.expmap(x, u, k=k), k=k), u, rtol=1e-8, atol=1e-11)
    zero = torch.zeros_like(x)
    torch.testing.assert_close(gs.expmap(zero, u, k=k), gs.expmap0(u, k=k), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gs.logmap(zero, y, k=k), gs.logmap0(y, k=k), rtol=1e-12, atol=1e-14)
    # distance: symmetric, dist(0, x) = dist0(x), and |logmap_x(y)|_x = dist(x, y)
    torch.testing.assert_close(gs.dist(x, y, k=k), gs.dist(y, x, k=k), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gs.dist(zero, y, k=k), gs.dist0(y, k=k), rtol=1e-10, atol=1e-12)
    riem = gs.lambda_x(x, k=k) * gs.logmap(x, y, k=k).norm(dim=-1)
    torch.testing.assert_close(riem, gs.dist(x, y, k=k), rtol=1e-9, atol=1e-12)
    # scalar multiplication: 2 (x) x = x (+) x, and r (x) (s (x) x) = (r s) (x) x
    two = torch.full((32, 1), 2.0, dtype=torch.float64)
    torch.testing.assert_close(gs.mobius_scalar_mul(two, x, k=k), gs.mobius_add(x, x, k=k), rtol=1e-9, atol=1e-12)
    r, s = torch.full((32, 1), 0.3, dtype=torch.float64), torch.full((32, 1), -1.7, dtype=torch.float64)
    torch.testing.assert_close(gs.mobius_scalar_mul(r, gs.mobius_scalar_mul(s, x, k=k), k=k),
                               gs.mobius_scalar_mul(r * s, x, k=k), rtol=1e-9, atol=1e-12)


def test_rotation_equivariance():
    """Every op commutes with orthogonal maps (dist is invariant)."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    k = torch.tensor(-1.3, dtype=torch.float64)
    x, y = _inputs("mobius_add", (10, 6), seed=8)
    for op in ("mobius_add", "expmap", "logmap"):
        torch.testing.assert_close(_call(op, x @ q, y @ q, k=k), _call(op, x, y, k=k) @ q, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gs.dist(x @ q, y @ q, k=k), gs.dist(x, y, k=k), rtol=1e-10, atol=1e-12)


def test_project_lands_inside():
    for dtype in DTYPES:
        x = torch.randn(50, 7).to(dtype) * 3
        for kval in (-1.0, -4.0):
            p = gs.project(x, k=torch.tensor(kval))
            assert p.dtype == dtype
            assert (p.double().norm(dim=-1) < 1 / math.sqrt(-kval)).all(), dtype


# ---------------------------------------------------------------- errors (one per documented message)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [2, 16, 64])
def test_lambda_x_nan_row_gives_nan(d, dtype, backend):
    """A NaN in a row makes that row's lambda_x NaN, as torch.clamp_min (geoopt, the reference): the kernels'
    clamp of 1 + k|x|^2 at 1e-15 turned it into 2e15, and egrad2rgrad then scaled the NaN row's gradient
    to ~0 instead of NaN.  The other rows keep their values."""
    x = _rand(9, d, scale=0.3 / math.sqrt(d)).to(dtype)
    x[4, d // 2] = float("nan")
    with geoops.use_backend(backend):
        for kval in (-1.0, 0.0, 0.5):
            k = torch.tensor(kval, dtype=dtype)
            lam = gs.lambda_x(x, k=k)
            assert lam[4].isnan(), (kval, lam[4].item())
            exp = ref.lambda_x(x.double(), k=k.double())
            keep = torch.arange(9) != 4
            torch.testing.assert_close(lam[keep].double(), exp[keep], rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                                       atol=0)
            assert gs.egrad2rgrad(x, torch.ones_like(x), k=k)[4].isnan().all()


def test_error_integer_dtype_names_argument():
    with pytest.raises(TypeError, match=r"mobius_add: y must be a floating-point tensor"):
        gs.mobius_add(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64), k=torch.tensor(-1.0))
    with pytest.raises(TypeError, match=r"expmap0: u must be a floating-point tensor"):
        gs.expmap0(torch.ones(2, 3, dtype=torch.int32), k=-1.0)


def test_error_not_a_tensor():
    with pytest.raises(TypeError, match=r"dist: x must be a torch.Tensor, got list"):
        gs.dist([1.0, 2.0], torch.randn(2), k=-1.0)


def test_error_shapes_do_not_broadcast():
    with pytest.raises(ValueError, match=r"x and y do not broadcast: shapes \(3, 4\) and \(5, 4\)"):
        gs.mobius_add(torch.randn(3, 4), torch.randn(5, 4), k=torch.tensor(-1.0))


def test_error_mixed_devices():
    with pytest.raises(ValueError, match=r"y is on meta but x is on cpu"):
        gs.dist(torch.randn(3, 4), torch.randn(3, 4, device="meta"), k=torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"k is on meta but x is on cpu"):
        gs.expmap0(torch.randn(3, 4), k=torch.randn(3, 1, device="meta"))


def test_error_curvature_shape():
    with pytest.raises(ValueError, match=r"k must have size 1 along dim=-1"):
        gs.mobius_add(torch.randn(3, 4), torch.randn(3, 4), k=torch.randn(4))
    with pytest.raises(ValueError, match=r"k of shape \(2, 1\) does not broadcast"):
        gs.logmap0(torch.randn(3, 4), k=torch.randn(2, 1))
    with pytest.raises(TypeError, match=r"k must be a floating-point tensor"):  # integer k is promoted (issue 6)
        gs.logmap0(torch.randn(3, 4), k=torch.tensor(True))


def test_error_scalar_mul_r_shape():
    with pytest.raises(ValueError, match=r"r must have size 1 along dim=-1"):
        gs.mobius_scalar_mul(torch.randn(3, 4), torch.randn(3, 4), k=-1.0)


def test_error_dim_out_of_range():
    with pytest.raises(IndexError, match=r"dim=2 is out of range"):
        gs.dist0(torch.randn(3, 4), k=-1.0, dim=2)
    with pytest.raises(ValueError, match=r"at least one dimension"):
        gs.dist0(torch.tensor(0.3), k=-1.0)


def test_debug_checks_switch():
    x = torch.randn(4, 3) * 0.1
    bad = x.clone()
    bad[1, 2] = float("nan")
    outside = x.clone()
    outside[0] = torch.tensor([2.0, 0.0, 0.0])
    k = torch.tensor(-1.0)
    gs.mobius_add(bad, x, k=k)  # off by default: no pass over the data
    geoops.set_checks(True)
    try:
        with pytest.raises(ValueError, match=r"mobius_add: x has non-finite values"):
            gs.mobius_add(bad, x, k=k)
        with pytest.raises(ValueError, match=r"dist: y has points outside the ball"):
            gs.dist(x, outside, k=k)
        gs.expmap0(outside, k=k)  # tangent vectors may be long
    finally:
        geoops.set_checks(False)


def test_debug_check_messages_exact():
    """The non-finite checks of the row ops, the three-vector ops, cdist and the poincare layers (all through
    geoops._library.check_finite since session 25) keep their exact messages, and the stereographic ones still run
    while torch.compile traces (a graph break: every tensor read), as before the shared helper."""
    import geoops.poincare as gp

    x = torch.rand(4, 3) * 0.1
    nan = x.clone()
    nan[1, 2] = float("nan")
    pre = "geoops.stereographic."
    cases = [
        (lambda: gs.mobius_add(x, nan, k=-1.0),
         pre + "mobius_add: y has non-finite values (NaN or Inf) [GEOOPS_CHECK]"),
        (lambda: gs.dist0(x, k=torch.tensor(float("inf"))), pre + "dist0: k has non-finite values [GEOOPS_CHECK]"),
        (lambda: gs.gyration(x, nan, x, k=-1.0), pre + "gyration: b has non-finite values (NaN or Inf) [GEOOPS_CHECK]"),
        (lambda: gs.cdist(x, nan, k=-1.0), pre + "cdist: y has non-finite values (NaN or Inf) [GEOOPS_CHECK]"),
        (lambda: gs.cdist(x, x, k=float("nan")), pre + "cdist: k has non-finite values (NaN or Inf) [GEOOPS_CHECK]"),
        (lambda: gp.poincare_relu(nan, c=1.0), "geoops.poincare.poincare_relu: x has non-finite values (NaN or Inf) "
                                                "[GEOOPS_CHECK]"),
        (lambda: gp.mlr(x, torch.full((3, 2), float("nan")), c=1.0),
         "geoops.poincare.mlr: z has non-finite values (NaN or Inf) [GEOOPS_CHECK]"),  # (the function called)
    ]
    geoops.set_checks(True)
    try:
        for f, msg in cases:
            with pytest.raises(ValueError) as e:
                f()
            assert str(e.value) == msg
        torch._dynamo.reset()
        compiled = torch.compile(lambda a, b: gs.mobius_add(a, b, k=-1.0), backend="eager")
        with pytest.raises(ValueError, match=r"mobius_add: y has non-finite values \(NaN or Inf\)"):
            compiled(x, nan)
    finally:
        geoops.set_checks(False)
        torch._dynamo.reset()


# ---------------------------------------------------------------- backend switch
def test_backend_switch():
    x, y = _inputs("mobius_add", (4, 5))
    k = torch.tensor(-1.0, dtype=torch.float64)
    assert geoops.get_backend() == "auto"
    with geoops.use_backend("reference"):
        assert geoops.get_backend() == "reference"
        a = gs.mobius_add(x, y, k=k)
    with geoops.use_backend("cpp"):
        b = gs.mobius_add(x, y, k=k)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="backend must be one of"):
        geoops.set_backend("fast")
    with geoops.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' cannot run tensors on cpu"):
        gs.mobius_add(x, y, k=k)


def test_backend_env_var():
    code = "import geoops, torch; print(geoops.get_backend())"
    env = {**os.environ, "GEOOPS_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"


# ---------------------------------------------------------------- torch.library / torch.compile
def _op_samples(op):
    spec = STEREO_OPS[op]
    x = _rand(5, 4)
    y = _rand(5, 4) if spec.has_y else None
    k = torch.tensor([-0.5])
    r = torch.randn(5) if spec.has_r else None
    return x, y, k, r


# the C++ ops' registrations and outputs differ only by (has_y, has_r, scalar_out) (the fakes in _register;
# stereo_fwd_cpu / stereo_bwd_cpu allocate by op_has_y / op_scalar_out / r): one op of each such class on the
# compiled backend; every op on the reference backend, whose functions differ per op
_OPCHECK_CPP = list({(s.has_y, s.has_r, s.scalar_out): name for name, s in reversed(STEREO_OPS.items())}.values())


@pytest.mark.parametrize("op,backend", [(op, "auto") for op in _OPCHECK_CPP] + [(op, "reference") for op in OPS])
def test_opcheck(op, backend):
    # the reference backend's backward ops differentiate the reference inside the op (_library.reference_autograd)
    x, y, k, r = _op_samples(op)
    k = k.double()
    r = None if r is None else r.double()
    fwd = getattr(torch.ops.geoops, f"{op}_fwd")
    bwd = getattr(torch.ops.geoops, f"{op}_bwd")
    g = torch.randn(5, dtype=torch.float64) if STEREO_OPS[op].scalar_out else torch.randn(5, 4, dtype=torch.float64)
    with geoops.use_backend(backend):
        torch.library.opcheck(fwd, (x, y, k, r, 4e-3))
        torch.library.opcheck(bwd, (g, x, y, k, r, 4e-3, 15))
        torch.library.opcheck(bwd, (g, x, y, k, r, 4e-3, 1))


@pytest.mark.parametrize("mask", [15, 1, 6])
@pytest.mark.parametrize("op", OPS)
def test_reference_backward_op_values(op, mask):
    # opcheck above checks the ops' contract, not their numbers: the reference backend's backward op (autograd
    # of the reference inside the op) must give the C++ kernels' gradients for the inputs the mask asks for
    x, y, k, r = _op_samples(op)
    k, r = k.double(), None if r is None else r.double()
    g = torch.randn(5, dtype=torch.float64) if STEREO_OPS[op].scalar_out else torch.randn(5, 4, dtype=torch.float64)
    bwd = getattr(torch.ops.geoops, f"{op}_bwd")
    outs = {}
    for backend in ("cpp", "reference"):
        with geoops.use_backend(backend):
            outs[backend] = bwd(g, x, y, k, r, 4e-3, mask)
    for a, b in zip(outs["cpp"], outs["reference"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.build_relative("compiled against eager in one build; the entry points it reads (stereo_fwd_cpu / "
                            "stereo_bwd_cpu) are read by this file's eager tests, which the portable stage runs")
@pytest.mark.parametrize("op", OPS)
def test_torch_compile_fullgraph(op):
    torch._dynamo.reset()
    args = [a.float().requires_grad_() for a in _inputs(op, (6, 5))]
    k = torch.tensor(-1.0, requires_grad=True)
    fn = torch.compile(lambda *a: _call(op, *a[:-1], k=a[-1]), fullgraph=True, backend="aot_eager")
    out = fn(*args, k)
    expect = _call(op, *args, k=k)
    torch.testing.assert_close(out, expect)
    ga = torch.autograd.grad(out.sum(), args + [k])
    gb = torch.autograd.grad(expect.sum(), args + [k])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_eager_fast_path_matches_dispatch_and_fake_mode():
    """Plain eager calls run the kernels directly (no custom-op dispatch, no autograd node without grad); under a
    dispatch mode they go through torch.ops.geoops.* and give the same numbers; FakeTensorMode gets the fakes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    from geoops import _library as _ops

    x, y = _inputs("logmap", (5, 7), seed=8)
    k = torch.tensor(-0.8, dtype=torch.float64)
    assert _ops.direct_call_ok(x, None, k)
    with Record():
        assert not _ops.direct_call_ok(x, None, k)
    assert _ops.direct_call_ok(torch.nn.Parameter(x), k)

    class Sub(torch.Tensor):
        pass

    assert not _ops.direct_call_ok(x.as_subclass(Sub), k)
    direct = gs.logmap(x, y, k=k)
    assert direct.grad_fn is None
    with Record():
        dispatched = gs.logmap(x, y, k=k)
    assert any("geoops.logmap_fwd" in s for s in seen), seen
    torch.testing.assert_close(direct, dispatched, rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    out = gs.logmap(xg, y, k=k)
    assert type(out.grad_fn).__name__ == "LogmapFnBackward"
    seen.clear()
    with Record():
        (gx,) = torch.autograd.grad(gs.logmap(xg, y, k=k), xg, torch.ones_like(out))
    assert any("geoops.logmap_bwd" in s for s in seen), seen
    torch.testing.assert_close(gx, torch.autograd.grad(out, xg, torch.ones_like(out))[0], rtol=0, atol=0)
    with FakeTensorMode() as mode:
        fx, fy, fk = mode.from_tensor(x), mode.from_tensor(y), mode.from_tensor(k)
        fo = gs.dist(fx, fy, k=fk, keepdim=True)
        assert fo.shape == (5, 1) and fo.dtype == torch.float64


def test_torch_compile_inductor():
    torch._dynamo.reset()
    x, y = [a.float() for a in _inputs("mobius_add", (8, 16))]
    fn = torch.compile(lambda a, b: gs.dist(gs.mobius_add(a, b, k=-1.0), b, k=-1.0), fullgraph=True)
    torch.testing.assert_close(fn(x, y), gs.dist(gs.mobius_add(x, y, k=-1.0), y, k=-1.0))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_cuda_parity_cases(op, dtype, backend):
    if not geoops._backend.available(backend, torch.device("cuda"), "stereographic"):
        pytest.skip(f"backend {backend} not available on cuda")
    failures = []
    for case in (c for c in CASES if c.op == op):
        for q, err, bound, finite in parity.check_case(case, backend, dtype, "cuda"):
            if not finite or err > bound:
                failures.append(f"{case.name}:{q} err={err:.3e} bound={bound:.3e}")
    assert not failures, "\n".join(failures[:20])


@cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_large_broadcast_and_gradcheck(backend):
    if not geoops._backend.available(backend, torch.device("cuda"), "stereographic"):
        pytest.skip(f"backend {backend} not available on cuda")
    with geoops.use_backend(backend):
        x = _rand(3, 7, 129).cuda().requires_grad_()
        y = _rand(129).cuda().requires_grad_()
        k = torch.tensor(-0.8, dtype=torch.float64, device="cuda", requires_grad=True)
        assert gradcheck(lambda a, b, c: gs.logmap(a, b, k=c), (x, y, k), eps=1e-6, atol=1e-7)
        big = torch.randn(2**17, 64, device="cuda") * 0.05
        got = gs.mobius_add(big, big.flip(0), k=-1.0).cpu()
    # the CPU comparison runs outside use_backend(backend), which (by design) refuses CPU tensors
    want = _on_cpu_kernels(lambda a, b: gs.mobius_add(a, b, k=-1.0), big.cpu(), big.flip(0).cpu())
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- GPU backends, device-generic
# Each test below runs a GPU backend on CUDA tensors (skipped without a GPU) and, so that the test itself is
# exercised by the CPU CI, the C++ backend on CPU tensors.  The expected values always come from CPU
# kernels, computed outside the backend under test: the C++ kernels for a GPU run (float64 row math), the
# eager reference for the CPU run.
DEVICE_BACKENDS = [pytest.param("cpp", "cpu", id="cpp-cpu")] + [
    pytest.param(b, "cuda", marks=cuda, id=f"{b}-cuda") for b in ("cuda", "triton")
]
# (N, D): the CUDA 256-thread group (no vector loads at odd D; 16-byte vectors for fp32 at 1024, for the
# half types at 2048), sub-warp groups at short rows with many of them, and one row wider than the
# Triton one-tile limit (chunked path).
LARGE_SHAPES = [(3, 4099), (64, 1024), (16, 2048), (5000, 8), (2, 8200)]
CPU_SHAPES = [(3, 129), (40, 5)]  # the CPU run checks the test, not the kernels: small shapes
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _on_cpu_kernels(fn, *tensors, backend="cpp"):
    """fn on CPU tensors with the CPU kernels (`backend`), whatever backend the caller forced."""
    with geoops.use_backend(backend):
        return fn(*tensors)


def _need(backend, device):
    if not geoops._backend.available(backend, torch.device(device), "stereographic"):
        pytest.skip(f"backend {backend} not available on {device}")


def _expected_backend(backend):
    return "reference" if backend == "cpp" else "cpp"


def _close(got, want, dtype, what):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if want.numel() == 0:
        return
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max err {err:.3g} > {TOL[dtype]:.1g} * {scale:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
def test_device_large_rows_every_dtype(backend, device, dtype):
    """Values and all gradients at large N and D, every dtype, against the CPU kernels on the same inputs."""
    _need(backend, device)
    for N, D in LARGE_SHAPES if device == "cuda" else CPU_SHAPES:
        for op in ("mobius_add", "logmap", "dist", "mobius_scalar_mul", "expmap0", "project"):
            if op == "project" and dtype in (torch.float16, torch.bfloat16):
                continue  # points at the margin switch branch under half-precision rounding: no common truth
            ins = [t.to(dtype) for t in _inputs(op, (N, D), seed=N + D)]
            k = torch.tensor(-0.7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            cot = None
            outs = {}
            for key, where, bk in (("dev", device, backend), ("cpu", "cpu", _expected_backend(backend))):
                leaves = [t.to(where).requires_grad_() for t in ins] + [k.to(where).requires_grad_()]
                with geoops.use_backend(bk):
                    out = _call(op, *leaves[:-1], k=leaves[-1])
                    if cot is None:
                        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
                    grads = torch.autograd.grad(out, leaves, cot.to(where), allow_unused=True)
                outs[key] = [out] + [g if g is not None else torch.zeros_like(t)
                                                                    for g, t in zip(grads, leaves)]
            for i, (a, b) in enumerate(zip(outs["dev"], outs["cpu"])):
                _close(a, b, dtype, f"{op} {N}x{D} {dtype} {'out' if i == 0 else f'grad {i - 1}'}")


def _row_inputs(op, N, D, device, dtype=torch.float32, bcast=False):
    """Op-level operands (x, y, k, r, grad) on `device`; with bcast, stride-0 rows built on the device."""
    spec = STEREO_OPS[op]
    g = torch.Generator().manual_seed(N * 7 + D)
    x = (torch.randn(N, D, generator=g, dtype=torch.float64) * 0.3 / math.sqrt(D)).to(device=device, dtype=dtype)
    y = None
    if spec.has_y:
        y0 = (torch.randn(1 if bcast else N, D, generator=g, dtype=torch.float64) * 0.3 / math.sqrt(D))
        y = y0.to(device=device, dtype=dtype)
        if bcast:
            y = y.expand(N, D)  # made on the device: stride 0
    kd = torch.float64 if dtype == torch.float64 else torch.float32
    k = (torch.tensor([-0.9]) if bcast else -0.5 - torch.rand(N, generator=g)).to(device=device, dtype=kd)
    r = (torch.tensor([1.3]) if bcast else torch.randn(N, generator=g)).to(device=device, dtype=kd) if spec.has_r else None
    if spec.scalar_out:
        gr = torch.randn(N, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    else:
        gr = torch.randn(1 if bcast else N, D, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        if bcast:
            gr = gr.expand(N, D)
    return x, y, k, r, gr


def _ops_run(op, backend, x, y, k, r, gr, mask, param=1e-3):
    if backend == "reference":  # its backward differentiates with autograd: called directly, not as a custom op
        from geoops._ops.stereographic import _ReferenceRows as R

        code = STEREO_OPS[op].code
        return [R.stereo_fwd(code, x, y, k, r, param), *R.stereo_bwd(code, gr, x, y, k, r, param, mask)]
    with geoops.use_backend(backend):
        out = getattr(torch.ops.geoops, f"{op}_fwd")(x, y, k, r, param)
        grads = getattr(torch.ops.geoops, f"{op}_bwd")(gr, x, y, k, r, param, mask)
    return [out, *grads]


def _cpu_copy(t):
    return None if t is None else t.detach().cpu()


@pytest.mark.parametrize("op", ["mobius_add", "mobius_scalar_mul", "logmap", "dist", "expmap0"])
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
def test_device_every_gradient_mask(backend, device, op):
    """Every gradient subset (mask 0..15, dx == dy == nullptr included) in the 256-thread group (N=300,
    D=700: the CUDA block per row) and in short rows: the same tensors, and the same empties, as on CPU."""
    _need(backend, device)
    for N, D in ((300, 700), (64, 5)) if device == "cuda" else ((9, 70), (8, 5)):
        x, y, k, r, gr = _row_inputs(op, N, D, device)
        for mask in range(16):
            got = _ops_run(op, backend, x, y, k, r, gr, mask)[1:]
            want = _ops_run(op, _expected_backend(backend), *map(_cpu_copy, (x, y, k, r, gr)), mask)[1:]
            for what, a, b in zip(("dx", "dy", "dk", "dr"), got, want):
                _close(a, b, torch.float32, f"{op} {N}x{D} mask {mask} {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
def test_device_stride0_rows(backend, device, dtype):
    """Op-level broadcast rows (y and the cotangent with row stride 0, one k and r), made on the device."""
    _need(backend, device)
    for op in ("mobius_add", "logmap", "dist", "mobius_scalar_mul", "expmap"):
        for N, D in ((1000, 64), (4, 3000)) if device == "cuda" else ((30, 16), (3, 100)):
            x, y, k, r, gr = _row_inputs(op, N, D, device, dtype, bcast=True)
            if y is not None:
                assert y.stride(0) == 0 and y.device.type == device
            got = _ops_run(op, backend, x, y, k, r, gr, 15)
            want = _ops_run(op, _expected_backend(backend), *(None if t is None else t.cpu().contiguous()
                                                              for t in (x, y, k, r, gr)), 15)
            for what, a, b in zip(("out", "dx", "dy", "dk", "dr"), got, want):
                _close(a, b, dtype, f"{op} {N}x{D} bcast {what}")


def test_parity_says_when_a_backend_is_unavailable(capsys):
    """A backend named on the command line that cannot run fails the parity run, with the reason."""
    rc = parity.main(["--device", "cpu", "--backends", "cuda", "--dtypes", "float64", "--quick"])
    out = capsys.readouterr().out
    assert rc == 1 and "backend cuda on cpu: not run" in out, out
    rc = parity.main(["--device", "cpu", "--backends", "cpp,cuda", "--dtypes", "float64", "--quick"])
    assert rc == 1, "a named backend that is unavailable must fail the run"


def test_missing_extension_falls_back_with_one_warning():
    """Without geoops._C, import still works, warns once how to build, and runs the reference."""
    code = (
        "import sys, warnings\n"
        "sys.modules['geoops._C'] = None  # makes `import geoops._C` fail\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, geoops, geoops.stereographic as gs\n"
        "    out = gs.mobius_add(torch.zeros(2, 3), torch.ones(2, 3) * 0.1, k=-1.0)\n"
        "msgs = [str(x.message) for x in w if 'geoops._C' in str(x.message)]\n"
        "print(len(msgs), 'pip install --no-build-isolation' in msgs[0], geoops.backend_info()['cpu_backend']['stereographic'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True", "reference"]
