"""Session 35 hunt (helper "tritonhunt"): the Triton backend of geoops.stereographic against the C++ backend on
inputs the other Triton tests do not pass.  Interpreter fixtures from conftest.py (TRITON_INTERPRET=1 on the
CPU; the triton backend is forced for every test)."""
import math

import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.stereographic as gs  # noqa: E402
from geoops import _backend  # noqa: E402

needs_cpp = pytest.mark.skipif(_backend.compiled() is None, reason="geoops._C (the C++ CPU kernels) is not built")


def _pts(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(*shape, generator=g, dtype=torch.float64) / math.sqrt(shape[-1])).to(dtype)


def _on(backend, fn, *args, **kw):
    with geoops.use_backend(backend):
        return fn(*args, **kw)


# ---------------------------------------------------------------- non-finite inputs of the pairwise kernels
@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kv", [-0.7, 0.0, 0.7])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["x", "y"])
def test_cdist_nonfinite_input_propagates(device, dtype, kv, bad, which):
    """A NaN / inf coordinate gives NaN / inf distances for its point's pairs, as the C++ backend (and the
    formula) does.  The Triton kernel clamped A = |x - y|^2 (and k > 0's denominator) with tl.maximum, which
    drops NaN (maxnum): a NaN point came out at distance 0 (k <= 0) or pi/sqrt(k) (k > 0) from everything."""
    x, y = _pts(3, 4, dtype=dtype, seed=1), _pts(5, 4, dtype=dtype, seed=2)
    t = x if which == "x" else y
    t[0, 1] = bad
    ours = gs.cdist(x.to(device), y.to(device), k=kv).cpu()
    cpp = _on("cpp", gs.cdist, x, y, k=kv)
    fin = cpp.isfinite()
    assert torch.equal(ours.isfinite(), fin), f"non-finite pattern: ours\n{ours}\ncpp\n{cpp}"
    if bad != bad:  # NaN in, NaN out
        assert torch.equal(ours.isnan(), cpp.isnan()), f"NaN pattern: ours\n{ours}\ncpp\n{cpp}"
    # (an inf coordinate makes the pair a ratio of infinities: NaN or inf by the order of the kernel's operations --
    # the AVX2 build's float32 C++ path gives NaN where its AVX-512 path and Triton give inf; non-finite is the contract)
    torch.testing.assert_close(ours[fin], cpp[fin])
    assert not (ours[0] if which == "x" else ours[:, 0]).isfinite().any()  # the bad point's pairs


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [False, True])
def test_knn_nan_point_ranks_as_topk(device, dtype, largest):
    """The docs: NaN points rank as torch.topk ranks NaN (last for the nearest, first for the farthest), with
    NaN distances.  The Triton keys had the NaN point at key 0: it came first among the nearest neighbours."""
    x, y = _pts(3, 4, dtype=dtype, seed=3), _pts(6, 4, dtype=dtype, seed=4)
    y[2, 0] = float("nan")
    d, i = gs.knn(x.to(device), y.to(device), 3, k=-1.0, largest=largest)
    dc, ic = _on("cpp", gs.knn, x, y, 3, k=-1.0, largest=largest)
    full = _on("cpp", gs.cdist, x, y, k=-1.0)
    _, it = torch.topk(full, 3, largest=largest)
    assert torch.equal(i.cpu(), it) and torch.equal(ic, it)
    assert torch.equal(d.isnan().cpu(), dc.isnan())


@needs_cpp
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("bad", [float("inf"), -float("nan")])
def test_knn_nonfinite_point_float32_kernel(device, largest, bad):
    """The fused float32 knn kernel packs a key's bits with its column: a NaN key must sort as torch.topk
    sorts NaN whatever its sign bit (inf - inf gives the negative default NaN on x86)."""
    x, y = _pts(3, 4, dtype=torch.float32, seed=5), _pts(6, 4, dtype=torch.float32, seed=6)
    y[2, 0] = bad
    _, i = gs.knn(x.to(device), y.to(device), 3, k=-1.0, largest=largest)
    full = _on("cpp", gs.cdist, x, y, k=-1.0)
    _, it = torch.topk(full, 3, largest=largest)
    assert torch.equal(i.cpu(), it), (i, it, full)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("block_elems", [1 << 22, 3])
def test_pairwise_rank_nonfinite_point_elsewhere(device, dtype, bad, block_elems):
    """A NaN (or inf) point of y that is neither query nor target is never closer (NaN compares false), so the
    other counts are the brute-force ones (the C++ backend's).  The tiled path (Triton, reference) took the tie
    band's maxima over all of y: one NaN point made every band NaN and every count 0."""
    x, y = _pts(3, 4, dtype=dtype, seed=7), _pts(6, 4, dtype=dtype, seed=8)
    y[0, 1] = bad
    q, t = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 3, 5, 2])
    full = _on("cpp", gs.cdist, x.double(), y.double(), k=-1.0)
    brute = torch.stack([(full[i] < full[i, j]).sum() for i, j in zip(q.tolist(), t.tolist())])
    ours = gs.pairwise_rank(x.to(device), y.to(device), q.to(device), t.to(device), k=-1.0, block_elems=block_elems)
    assert torch.equal(_on("cpp", gs.pairwise_rank, x, y, q, t, k=-1.0), brute)
    assert torch.equal(ours.cpu(), brute), (ours, brute)
    assert torch.equal(_on("reference", gs.pairwise_rank, x, y, q, t, k=-1.0, block_elems=block_elems), brute)


# ---------------------------------------------------------------- custom-op contract of the Triton kernels
@pytest.mark.parametrize("G", [1, 3])
def test_midpoint_fwd_outputs_do_not_alias(device, G):
    """stereo_midpoint_fwd's two outputs (F [G, D], L [G]) are slices of one buffer: with one group, `.contiguous()`
    kept both as views of it, and a custom op's outputs must not alias (torch.compile and opcheck refuse it)."""
    x = _pts(G, 5, 4, dtype=torch.float32, seed=9).to(device)
    args = (x, torch.rand(G, 5).to(device), torch.tensor([-0.7]).to(device), False)
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_weighted_midpoint_compiles(device):
    """The user's view of the same defect: weighted_midpoint of one group under torch.compile(fullgraph=True)."""
    xs = _pts(5, 4, dtype=torch.float32, seed=10).to(device)
    f = torch.compile(lambda t: gs.weighted_midpoint(t, k=-1.0, reducedim=0), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(xs), gs.weighted_midpoint(xs, k=-1.0, reducedim=0))


@pytest.mark.parametrize("largest", [False, True])
def test_knn_float32_under_vmap_and_compile(device, largest):
    """knn's fused float32 Triton kernel is a raw launch, not a custom op: it ran on vmap's BatchedTensor ("Cannot
    access storage of BatchedTensorImpl") and under torch.compile(fullgraph=True) dynamo traced into the launcher.
    Under a transform or a trace knn now takes the tiled path through the rank-key op, as on the C++ backend."""
    x, y = _pts(3, 5, 4, dtype=torch.float32, seed=11).to(device), _pts(6, 4, dtype=torch.float32, seed=12).to(device)
    d, i = gs.knn(x, y, 2, k=-1.0, largest=largest)
    dv, iv = torch.vmap(lambda a: gs.knn(a, y, 2, k=-1.0, largest=largest))(x)
    assert torch.equal(iv, i)
    torch.testing.assert_close(dv, d)
    f = torch.compile(lambda a, b: gs.knn(a, b, 2, k=-1.0, largest=largest), fullgraph=True, backend="aot_eager")
    dc, ic = f(x, y)
    assert torch.equal(ic, i)
    torch.testing.assert_close(dc, d)


def test_weighted_midpoint_compiled_backward_strided_groups(device):
    """stereo_midpoint_bwd's fake gave dx x's strides (empty_like of the permuted [G, N, D] view of the points)
    while every backend returns it contiguous: the compiled backward's view of dx failed ("view size is not
    compatible ...") for xs (5, 2, 2) reduced over dim 0 (the C++ backend too)."""
    x = _pts(5, 4, dtype=torch.float32, seed=13).to(device)
    f = lambda t: gs.weighted_midpoint(t.reshape(5, 2, 2), k=-1.0, reducedim=0)  # noqa: E731
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(f, fullgraph=True, backend="aot_eager")(a).sum().backward()
    f(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


# ---------------------------------------------------------------- session 35 (helper "apifix")
@needs_cpp
@pytest.mark.parametrize("op", ["mobius_add", "logmap", "dist"])
def test_nonnegative_dim_with_inputs_of_different_rank(device, op):
    """A non-negative dim with inputs of different rank names a different axis of each input (geoopt counts it in
    each input's own dims): the Triton backend counted it in the broadcast shape (as cpp did; the reference backend
    gave geoopt's mixture of axes).  Now a ValueError naming dim on every backend; the same rank agrees with cpp."""
    f = getattr(gs, op)
    x, y = _pts(2, 5, 3), _pts(5, 1, seed=1)
    with pytest.raises(ValueError, match=r"dim=1.*\(5, 1\)"):
        f(x, y, k=-1.0, dim=1)
    y = _pts(2, 5, 3, seed=1)
    torch.testing.assert_close(f(x, y, k=-1.0, dim=1), _on("cpp", f, x, y, k=-1.0, dim=1))


# ---------------------------------------------------------------- logmap far out on the sphere (session 39)
def _far_pairs(n, d, seed):
    """tests/test_stereographic_numhunt.py's _far_pairs (float64): x far out (|x| 3 .. 300, k = 1 / 0.5 / 2) with y
    near the origin, swapped, both far, y geodesically close to a far x, and rows with k <= 0 inside the ball."""
    from geoops.reference import stereographic as ref

    f64 = torch.float64
    g = torch.Generator().manual_seed(seed)
    # (a period of 7 rows: every kind of pair below, period 4, meets every k)
    k = torch.tensor([1.0, 0.5, 2.0, 1.0, -0.5, 0.0, 1.0] * n, dtype=f64)[:n, None]
    rad = 10 ** (0.5 + 2 * torch.rand(n, 1, generator=g, dtype=f64))
    far = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=f64), dim=-1) * rad
    near = torch.randn(n, d, generator=g, dtype=f64) * 0.3
    u = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=f64), dim=-1)
    close = ref.expmap(far, u * 0.3 / k.abs().clamp_min(0.1).sqrt() * (1 + k * rad ** 2) / 2, k=k)
    kind = torch.arange(n)[:, None] % 4
    x = torch.where(kind == 1, near, far)
    y = torch.where(kind == 0, near, torch.where(kind == 1, far, torch.where(kind == 2, far.flip(0), close)))
    ball = k <= 0  # (no close pairs there: the float64 reference, the truth here, cancels for those)
    yb = near.flip(0) / (2 + near.norm(dim=-1, keepdim=True))
    return torch.where(ball, x / (1 + x.norm(dim=-1, keepdim=True)), x), torch.where(ball, yb, y), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [3, 17])
def test_logmap_sphere_far_points(device, dtype, d):
    """The Triton kernels' logmap took the x form (k|x-y|^2 x - (1 + k|x|^2)(x - y)) / den everywhere, which cancels
    for x far out on the sphere (k|x|^2 >> 1): float32 errors up to 1e-3 against the eager reference's 2e-7.  Now the
    y form where k|x|^2 > 1 and |x| > |y| (stereo_math.h, logmap_y_form), forward and backward: per row within 2x the
    eager reference's error in the same dtype + a floor, for the output and dx, dy."""
    from geoops.reference import stereographic as ref

    # float64: `theirs` is `exp` itself, so the rule is the floor alone; the eager reference's own dy is up to 2e-14
    # relative off at these pairs (row 21 at d = 17, k = 1, |x| = 1.0015, |y| = 276: reference 2.0e-14, C++ 4.5e-15
    # against a 60-digit mpmath gradient; session 46 after reflog's stable reference forms)
    floor = {torch.float32: 2e-6, torch.float64: 5e-14}[dtype]
    x64, y64, k64 = _far_pairs(40, d, seed=d)
    w = torch.randn(x64.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def run(fn, x, y, k, dev="cpu"):
        x, y = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
        out = fn(x, y, k=k.to(dev))
        return [t.detach().cpu() for t in (out, *torch.autograd.grad((out * w.to(out)).sum(), (x, y)))]

    exp = run(ref.logmap, x64, y64, k64)
    x, y, k = (t.to(dtype) for t in (x64, y64, k64))
    theirs = run(ref.logmap, x, y, k)
    ours = run(gs.logmap, x, y, k, device)
    for o, t, e, name in zip(ours, theirs, exp, ("out", "dx", "dy")):
        rel = lambda v: (v.double() - e).norm(dim=-1) / e.norm(dim=-1)  # noqa: E731
        bad = rel(o) > 2 * rel(t) + (1 if name == "out" else 2) * floor
        assert not bad.any(), (name, rel(o)[bad], rel(t)[bad], bad.nonzero().flatten())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [3, 17])
def test_dist2plane_sphere_far_points(device, dtype, d):
    """dist2plane's epilogue formed (-p) (+)_k x in logmap's x form (its <diff, a>, and |diff|^2 expanded): with p far
    out on the sphere both cancelled (float64 errors up to 1e-11 here, the eager reference's ~1e-15).  Now the y form
    there and |diff|^2 = |x - p|^2 / den; values and gradients per row within 2x the eager reference's error in the
    same dtype + a floor."""
    from geoops.reference import stereographic as ref

    floor = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    gfloor = 2 * floor
    x64, p64, k64 = _far_pairs(40, d, seed=30 + d)
    diff = ref.mobius_add(-p64, x64, k=k64)  # a leaning on diff: away from the plane (ill-conditioned near it)
    a64 = diff + 0.5 * diff.norm(dim=-1, keepdim=True) * torch.randn(
        x64.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) / d ** 0.5
    w = torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def run(fn, x, p, a, k, dev="cpu"):
        x, p, a = (t.to(dev).requires_grad_() for t in (x, p, a))
        out = fn(x, p, a, k=k.to(dev), signed=True, keepdim=True).squeeze(-1)
        grads = torch.autograd.grad((out * w.to(out)).sum(), (x, p, a))
        return [t.detach().cpu().double().reshape(40, -1) for t in (out, *grads)]

    args = [t.to(dtype) for t in (x64, p64, a64, k64)]
    exp = run(ref.dist2plane, *(t.double() for t in args))
    theirs, ours = run(ref.dist2plane, *args), run(gs.dist2plane, *args, dev=device)
    # (dx with x far out, k|x|^2 > 1 and |x| > |p|, was up to ~1e-13 off in float64 until session 40: the antipode
    # x* = -x/(k|x|^2) there, stereo_triple.h's eval_dist2plane; checked here since)
    for o, t, e, name in zip(ours, theirs, exp, ("out", "dx", "dp", "da")):
        rel = lambda v: (v - e).norm(dim=-1) / e.norm(dim=-1)  # noqa: E731
        bad = rel(o) > 2 * rel(t) + (floor if name == "out" else gfloor)
        assert not bad.any(), (name, rel(o)[bad], rel(t)[bad], bad.nonzero().flatten())


# ---------------------------------------------------------------- the y form's edges (session 40, review39)
def _numhunt():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the CPU hunt's rows and rule
    import test_stereographic_numhunt

    return test_stereographic_numhunt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [3, 17])
def test_logmap_y_form_edges(device, dtype, d):
    """tests/test_stereographic_numhunt.py's test_logmap_y_form_edges on the Triton kernels: rows a few ulps either
    side of k|x|^2 = 1 and |x| = |y| (the forms' choice, made again in the backward) all within the low-precision rule,
    values, dx, dy."""
    nh = _numhunt()
    x, y, k = nh.boundary_pairs(d, dtype, seed=d)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def run(fn, x, y, k):
        dev = device if fn is gs.logmap else "cpu"
        x, y = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
        out = fn(x, y, k=k.to(dev))
        return [t.detach().cpu() for t in (out, *torch.autograd.grad((out * w.to(out)).sum(), (x, y)))]

    nh._check_rule(run, gs.logmap, (x, y, k), ("out", "dx", "dy"), n_vec=2)


@pytest.mark.parametrize("d", [3, 17])
def test_dist2plane_y_form_edges(device, d):
    """dist2plane at its form choice's edges (k|p|^2 = 1, |p| = |x|) on the Triton kernels, float64 (float32's da on
    the close pairs is ~1e-4 off in both the kernel and the eager reference, before session 39 too: a per-row 2x rule
    is noise there)."""
    nh = _numhunt()
    f64 = torch.float64
    p, x, k = nh.boundary_pairs(d, f64, seed=d)
    diff = nh.ref.mobius_add(-p, x, k=k)
    a = diff + 0.5 * diff.norm(dim=-1, keepdim=True) * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(4), dtype=f64) / d ** 0.5
    w = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(5), dtype=f64)

    def run(fn, x, p, a, k):
        dev = device if fn is gs.dist2plane else "cpu"
        x, p, a = (t.to(dev).requires_grad_() for t in (x, p, a))
        out = fn(x, p, a, k=k.to(dev), signed=True, keepdim=True).squeeze(-1)
        return [t.detach().cpu() for t in (out, *torch.autograd.grad((out * w.to(out)).sum(), (x, p, a)))]

    args = (x, p, a, k)
    nh._check_rule(run, gs.dist2plane, args, ("out", "dx", "dp", "da"), n_vec=3)


# ------------------------------------------------------------ cdist's backward far out on the sphere (sessions 40, 41)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cdist_sphere_far_points_gradients(device, dtype):
    """cdist's backward formed a pair's share of alpha (dx = alpha x - W y) as W + 2 g dd/d|x|^2 = W (1 - kA/p_x) and
    den as p_x p_y - kA, both of which cancel for x far out on the sphere (k|x|^2 >> 1): float32 dx up to ~1e-4, the
    eager reference's ~1e-6.  Now (k > 0) in G = <x, y>: W (1 + 2kG - k|y|^2)/p_x where k|x|^2 > 1 and |x| > |y| (and
    the same for dy), den = 1 + 2kG + k^2|x|^2|y|^2 (C++ session 40; Triton session 41: the forward saves G for k > 0
    batches, the KPOS backward reads it).  One pair per batch (its own k) and the 8 x 8 cross pairs of the rows with
    k = 1: per row within 2x the eager reference's error in the same dtype + a floor."""
    from geoops.reference import stereographic as ref

    floor = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    x64, y64, k64 = _far_pairs(40, 3, seed=43)
    g = torch.randn(40, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def run(fn, x, y, k, dev="cpu"):
        x, y = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
        out = fn(x, y, k=k.to(dev))
        return [t.detach().cpu().double().reshape(x.shape[0], -1) for t in
                (out, *torch.autograd.grad((out * g.to(out).reshape(-1, *[1] * (out.dim() - 1))[:out.shape[0]]).sum(),
                                           (x, y)))]

    k1 = (k64.squeeze(-1) == 1).nonzero().flatten()[:8]
    for shape in ("pairs", "cross"):
        if shape == "pairs":  # [40, 1, 3]: one pair a batch, k per batch
            args64 = (x64[:, None], y64[:, None], k64.reshape(-1, 1, 1))
        else:  # [8, 3] x [8, 3], k = 1: far x against near y, far y, close y (and near x against far y)
            args64 = (x64[k1], y64[k1], torch.tensor(1.0, dtype=torch.float64))
        exp = run(ref.cdist, *args64)
        args = [t.to(dtype) for t in args64]
        ours = run(gs.cdist, *args, dev=device)
        rels = lambda outs: [(o - e).norm(dim=-1) / e.norm(dim=-1) for o, e in zip(outs, exp)]  # noqa: E731
        if dtype == torch.float32:
            theirs = rels(run(ref.cdist, *args))
        else:  # the float64 reference's error: its largest change under 1-ulp changes of x and y (as numhunt's rule)
            gen = torch.Generator().manual_seed(7)
            theirs = [torch.zeros(e.shape[0], dtype=torch.float64) for e in exp]
            for _ in range(4):
                pert = [t * (1 + 2.0 ** -52 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
                        for t in args64[:2]]
                theirs = [torch.maximum(t, r) for t, r in zip(theirs, rels(run(ref.cdist, *pert, args64[2])))]
        for o, t, e, name in zip(ours, theirs, exp, ("out", "dx", "dy")):
            rel = lambda v: (v - e).norm(dim=-1) / e.norm(dim=-1)  # noqa: E731
            bad = rel(o) > 2 * t + (1 if name == "out" else 2) * floor
            assert not bad.any(), (shape, name, rel(o)[bad], t[bad], bad.nonzero().flatten())


# ---------------------------------------------------------------- (-x) (+) y's denominator (session 41, issue 6)
def _short():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the CPU tests' rows and float64 forms
    import test_stereographic_short

    return test_stereographic_short


@needs_cpp
@pytest.mark.parametrize("d", [2, 17])
def test_dist_logmap_close_pairs_near_boundary(device, d):
    """tests/test_stereographic_short.py's close pairs within 1e-6 .. 1e-2 of the boundary on the Triton kernels, fp64,
    k = -1 per row: dist's and logmap's values, dx, dy and dk within 1e-8 (values 1e-9, logmap's dk 1e-7: see the CPU
    test) of torch.autograd on the non-cancelling float64 forms (_dist_ref64, _logmap_ref64).  The kernels' den was 1 + 2k<x,y> + k^2|x|^2|y|^2
    (~1e-6 off there) and its adjoint went through <x,y>."""
    sh = _short()
    x, y = sh._close_near_boundary(d, seed=d)
    g = torch.Generator().manual_seed(d)
    for name, fn, ref_fn, w in (
            ("dist", gs.dist, sh._dist_ref64, torch.randn(x.shape[0], generator=g, dtype=torch.float64)),
            ("logmap", gs.logmap, sh._logmap_ref64, torch.randn(x.shape, generator=g, dtype=torch.float64))):
        ours, truth = sh._den_grads(lambda a, b, k: fn(a.to(device), b.to(device), k=k.to(device)).cpu(), ref_fn,
                                    x, y, -1.0, w)
        for what, o, t in zip(("out", "dx", "dy", "dk"), ours, truth):
            o, t = (o.unsqueeze(-1), t.unsqueeze(-1)) if o.dim() == 1 else (o, t)
            err = float(sh.row_rel_err(o, t).max())
            assert err <= {"out": 1e-9, "dk": 1e-7 if name == "logmap" else 1e-8}.get(what, 1e-8), (name, what, err)


@needs_cpp
def test_dist_logmap_den_forms_match_cpp(device):
    """Per-row k of both signs (the denominator's two forms, chosen per row by k's sign, in the forward and the
    backward) on random, close, near-boundary and far pairs (D = 5, fp64): dist and logmap, their dx, dy, dk as the
    C++ backend's, within 1e-12 relative per row (logmap's dk 1e-6: ill-conditioned on the near-boundary pairs, 1.2e-7
    apart before session 41 too)."""
    dtype = torch.float64
    sh = _short()
    x, y = sh._dist_house_rows(5, -1.0, seed=7, n=64 * 6)
    x, y = (x.double() * 0.5).to(dtype), (y.double() * 0.5).to(dtype)
    kv = torch.tensor([-1.0, -0.3, 0.0, 0.4, -2.0, 1.5] * 64, dtype=dtype).reshape(-1, 1)
    g = torch.Generator().manual_seed(11)
    tol = 1e-12
    for fn in (gs.dist, gs.logmap):
        w = torch.randn(x.shape if fn is gs.logmap else x.shape[:1], generator=g, dtype=torch.float64).to(dtype)
        res = []
        for dev, backend in ((device, "triton"), ("cpu", "cpp")):
            xs, ys, k = (t.to(dev).clone().requires_grad_() for t in (x, y, kv))
            with geoops.use_backend(backend):
                out = fn(xs, ys, k=k)
                grads = torch.autograd.grad((out * w.to(dev)).sum(), (xs, ys, k))
            res.append([t.detach().cpu().double() for t in (out, *grads)])
        for what, o, c in zip(("out", "dx", "dy", "dk"), *res):
            o, c = (o.unsqueeze(-1), c.unsqueeze(-1)) if o.dim() == 1 else (o, c)
            ok = c.isfinite().all(-1) & (c.norm(dim=-1) > 0)
            err = sh.row_rel_err(o[ok], c[ok])
            bound = 1e-6 if (fn is gs.logmap and what == "dk") else tol  # (1.2e-7 before session 41 too: see above)
            assert float(err.max()) <= bound, (fn.__name__, what, float(err.max()))


@needs_cpp
@pytest.mark.parametrize("d", [2, 17])
def test_dist2plane_close_pairs_near_boundary(device, d):
    """dist2plane (signed and not) on the close pairs near the boundary on the Triton kernels, fp64, k = -1 per row:
    value, dx, dp, dk within 1e-8 (values 1e-9, da 5e-8: see the CPU test) of torch.autograd on the non-cancelling
    float64 form (tests/test_stereographic_short.py, _dist2plane_ref64).  Before session 42 _triple_vjp formed den = 1 + 2k<x,p> +
    k^2|p|^2|x|^2 and 1 + k|diff|^2 from it (~1e-5 off there)."""
    sh = _short()
    x, p = sh._close_near_boundary(d, seed=d)
    g = torch.Generator().manual_seed(d)
    a = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w = torch.randn(x.shape[0], generator=g, dtype=torch.float64)
    for signed in (False, True):
        res = []
        for f in (lambda *t: gs.dist2plane(*(v.to(device) for v in t[:3]), k=t[3].to(device), signed=signed).cpu(),
                  lambda *t: sh._dist2plane_ref64(*t, signed=signed)):
            xs, ps, as_ = x.clone().requires_grad_(), p.clone().requires_grad_(), a.clone().requires_grad_()
            k = torch.full((x.shape[0], 1), -1.0, dtype=torch.float64, requires_grad=True)
            out = f(xs, ps, as_, k)
            res.append([out.detach(), *torch.autograd.grad((out * w).sum(), (xs, ps, as_, k))])
        for what, o, t in zip(("out", "dx", "dp", "da", "dk"), *res):
            o, t = (o.unsqueeze(-1), t.unsqueeze(-1)) if o.dim() == 1 else (o, t)
            err = float(sh.row_rel_err(o, t).max())
            assert err <= {"out": 1e-9, "da": 5e-8}.get(what, 1e-8), (signed, what, err)


@needs_cpp
def test_dist2plane_den_forms_match_cpp(device):
    """Per-row k of both signs (den's two forms, chosen per row by k's sign, forward and backward) on random, close,
    near-boundary and far pairs (D = 5, fp64), every flag pair: dist2plane, its dx, dp, dk as the C++ backend's (its
    dual numbers), within 1e-10 relative per row; da within 1e-8 (G_ea x - G_ea p on close pairs, test_stereographic_
    short.py's gradient test: 6e-10 apart before session 42 too)."""
    sh = _short()
    x, p = sh._dist_house_rows(5, -1.0, seed=7, n=64 * 6)
    x, p = x.double() * 0.5, p.double() * 0.5
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kv = torch.tensor([-1.0, -0.3, 0.0, 0.4, -2.0, 1.5] * 64, dtype=torch.float64).reshape(-1, 1)
    w = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for signed in (False, True):
        for scaled in (False, True):
            res = []
            for dev, backend in ((device, "triton"), ("cpu", "cpp")):
                xs, ps, as_, k = (t.to(dev).clone().requires_grad_() for t in (x, p, a, kv))
                with geoops.use_backend(backend):
                    out = gs.dist2plane(xs, ps, as_, k=k, signed=signed, scaled=scaled)
                    grads = torch.autograd.grad((out * w.to(dev)).sum(), (xs, ps, as_, k))
                res.append([t.detach().cpu() for t in (out, *grads)])
            for what, o, c in zip(("out", "dx", "dp", "da", "dk"), *res):
                o, c = (o.unsqueeze(-1), c.unsqueeze(-1)) if o.dim() == 1 else (o, c)
                ok = c.isfinite().all(-1) & (c.norm(dim=-1) > 1e-12)  # (x = p rows: da is 0 to rounding, 1e-17)
                err = float(sh.row_rel_err(o[ok], c[ok]).max())
                assert err <= (1e-8 if what == "da" else 1e-10), (signed, scaled, what, err)


@needs_cpp
def test_dist2plane_exact_every_k(device):
    """_triple_vjp's dist2plane (fp64, per-row k = -1, -0.25, 0, 0.5, 2 in one call, every flag pair) on close pairs
    near the boundary and random rows: value and gradients against exact rational arithmetic, the CPU test's rows and
    bounds (test_stereographic_short.py, test_dist2plane_fp64_exact_every_k; session 43 review)."""
    pytest.importorskip("mpmath")
    sh = _short()

    def run(x, p, a, *, k, signed, scaled):
        with geoops.use_backend("triton"):
            return gs.dist2plane(*(t.to(device) for t in (x, p, a)), k=k.to(device), signed=signed, scaled=scaled).cpu()

    sh.check_dist2plane_exact(run)


@pytest.mark.parametrize("d", [2, 7])
@pytest.mark.parametrize("op", ["parallel_transport", "gyration"])
def test_gyration_transport_close_pairs_near_boundary(device, op, d):
    """gyration (b near -a) and parallel_transport on tests/test_stereographic_short.py's close pairs near the
    boundary on the Triton kernels, fp64, k = -1 per row (every fourth row): value within 1e-9, dv0, dv1, dv2 and dk
    within that file's bounds of the exact rational values and gradients.  Before session 43 _gyr_vjp took geoopt's
    na, nb and denominator, which cancel there (the value 2.6e-7 .. 5e-6 off on these rows)."""
    sh = _short()
    vs = [t[::4] for t in sh._triple_close_rows(op, d)]
    w = torch.randn(vs[0].shape, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    exact = sh._triple_exact(op, *vs, -1.0, w)
    xs = [t.to(device).requires_grad_() for t in vs]
    k = torch.full((vs[0].shape[0], 1), -1.0, dtype=torch.float64, device=device, requires_grad=True)
    out = sh._triple_call(op, xs, k)
    ours = [t.cpu() for t in (out.detach(), *torch.autograd.grad((out * w.to(device)).sum(), (*xs, k)))]
    for what, o, t in zip(("out", "dv0", "dv1", "dv2", "dk"), ours, exact):
        o, t = o.reshape(t.shape[0], -1), t.reshape(t.shape[0], -1)
        err = float(sh.row_rel_err(o, t).max())
        assert err <= {"out": 1e-9, "dk": sh._TRIPLE_DK_TOL}.get(what, sh._TRIPLE_GRAD_TOL), (what, err)


@needs_cpp
@pytest.mark.parametrize("op", ["parallel_transport", "gyration"])
def test_gyration_transport_forms_match_cpp(device, op):
    """Per-row k of both signs and 0 (the coefficients' two forms, chosen per row by k's sign, forward and backward)
    on random, close, near-boundary, close near-boundary, equal and far pairs (D = 5, fp64; gyration's b = -y):
    the value, dv0, dv1, dv2 as the C++ backend's dual numbers within 1e-10 relative per row, dk within 1e-10 of max
    |dk| (rows whose dk is ~1e-8 .. 1e-10 of the others' -- close, equal and far pairs -- cancel in every form: both
    backends and the eager reference are 1e-9 .. 2e-7 of it off the exact rational dk there, none ahead)."""
    sh = _short()
    x, y = sh._dist_house_rows(5, -1.0, seed=7, n=64 * 6)
    x, y = x.double() * 0.5, y.double() * 0.5
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    vs = (x, y, v) if op == "parallel_transport" else (x, -y, v)
    kv = torch.tensor([-1.0, -0.3, 0.0, 0.4, -2.0, 1.5] * 64, dtype=torch.float64).reshape(-1, 1)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    res = []
    for dev, backend in ((device, "triton"), ("cpu", "cpp")):
        xs = [t.to(dev).clone().requires_grad_() for t in (*vs, kv)]
        with geoops.use_backend(backend):
            out = sh._triple_call(op, xs[:3], xs[3])
            grads = torch.autograd.grad((out * w.to(dev)).sum(), xs)
        res.append([t.detach().cpu() for t in (out, *grads)])
    for what, o, c in zip(("out", "dv0", "dv1", "dv2", "dk"), *res):
        if what == "dk":
            err = float((o - c).abs().max() / c.abs().max())
        else:
            ok = c.isfinite().all(-1) & (c.norm(dim=-1) > 1e-12)
            err = float(sh.row_rel_err(o[ok], c[ok]).max())
        assert err <= 1e-10, (what, err)


@pytest.mark.parametrize("d", [2, 7, 64])
@pytest.mark.parametrize("op", ["parallel_transport", "gyration"])
def test_gyration_transport_fp32_close_pairs_near_boundary(device, op, d):
    """float32 on the Triton kernels on those rows (tests/test_stereographic_short.py, _triple_fp32_errors): value and
    gradients by the house rule and within 5e-7 max |truth|.  Before session 43 the float32 tiles wrote c0 v0 + c1 v1
    with c0, c1 ~ 1 / (1 + k|a|^2) nearly cancelling: the value 5e-6 .. 2e-2 off, the gradients up to 5e-3."""
    sh = _short()
    for what, (err, eager, scale) in sh._triple_fp32_errors(op, d, device).items():
        assert err <= 2 * eager + 1e-6 * scale, (what, err, eager)
        assert err <= 5e-7 * scale, (what, err / scale)


# ---------------------------------------------------------------- logmap near x's antipode on the sphere (session 43)
@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 19])
def test_logmap_sphere_near_antipode(device, d, chunk):
    """tests/test_stereographic_numhunt.py's near-antipode rows (y within 1e-7 .. 1e-2 of -x / (k|x|^2), k = 0.5, 2)
    on the Triton kernels, one tile and chunked (max_block_d=8): float64 values within 1e-6 of the exact value, dx, dy,
    dk within 1e-6 of 60-digit derivatives (the kernels took den from the row sums: ~eps / den relative, 1e-2 off at
    den 1e-14), and random rows between them as the eager reference."""
    from geoops.kernels import stereographic as S
    from geoops.reference import stereographic as ref

    nh = _numhunt()
    f64 = torch.float64
    for kv in (0.5, 2.0):
        x, y = nh._antipode_pairs(6, d, kv, seed=d)
        xr, yr = (torch.randn(6, d, generator=torch.Generator().manual_seed(s), dtype=f64) * 0.5 for s in (1, 2))
        x, y = torch.cat([xr[:3], x, xr[3:]]), torch.cat([yr[:3], y, yr[3:]])
        k = torch.full((12,), kv, dtype=f64)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=f64)
        out = S._stereo_fwd(7, x, y, k, None, 0.0, max_block_d=chunk)
        dx, dy, dk, _ = S._stereo_bwd(7, w, x, y, k, None, 0.0, 7, max_block_d=chunk)
        near = slice(3, 9)
        want = nh._logmap_exact_s(x[near], y[near], kv)
        assert ((out[near] - want).norm(dim=-1) / want.norm(dim=-1)).max() <= 1e-6
        ex, ey, ek = nh._logmap_grads_mp(x[near], y[near], kv, w[near])
        for got, e in ((dx[near], ex), (dy[near], ey)):
            assert ((got - e).norm(dim=-1) / e.norm(dim=-1)).max() <= 1e-6, kv
        assert abs(dk[near].sum().item() - ek) <= 1e-6 * abs(ek)
        rest = torch.cat([torch.arange(3), torch.arange(9, 12)])
        torch.testing.assert_close(out[rest], ref.logmap(x[rest], y[rest], k=torch.tensor(kv, dtype=f64)),
                                   rtol=1e-10, atol=1e-12)


def _logmap_rule_fp32(device, chunk, x, y, k, seed=5):
    """logmap's value, dx and dy on the Triton kernels (max_block_d=chunk; float32 x, y, k) by the CPU hunt's float
    rule against the float64 reference."""
    from geoops.kernels import stereographic as S

    nh = _numhunt()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()

    def run(fn, x, y, k):
        if fn is gs.logmap:  # ours: the kernels themselves (max_block_d)
            xd, yd, kd, wd = (t.to(device) for t in (x, y, k.flatten(), w.to(x.dtype)))
            out = S._stereo_fwd(7, xd, yd, kd, None, 0.0, max_block_d=chunk)
            dx, dy, _, _ = S._stereo_bwd(7, wd, xd, yd, kd, None, 0.0, 3, max_block_d=chunk)
            return [t.cpu() for t in (out, dx, dy)]
        x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = fn(x, y, k=k)
        return [out.detach(), *torch.autograd.grad((out * w.to(out.dtype)).sum(), (x, y))]

    nh._check_rule(run, gs.logmap, (x, y, k), ("out", "dx", "dy"), n_vec=2)


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 7, 19])
def test_logmap_sphere_near_antipode_fp32(device, d, chunk):
    """float32 logmap near x's antipode (y within 1e-5 .. 1e-1 of it, k = 0.5, 2) between random rows, on the Triton
    kernels, one tile and chunked (max_block_d=8): value, dx, dy by the low-precision rule (the CPU hunt's
    test_logmap_sphere_near_antipode_fp32).  The kernels wrote those rows in float, out = a x + c (x - y) with a, c ~
    1 / sqrt(den) cancelling to O(1): 2-10x the eager float32 reference's error; now in float64 (_near_rows_out,
    _near_rows_grads)."""
    nh = _numhunt()
    f64 = torch.float64
    xs, ys, ks = [], [], []
    for kv in (0.5, 2.0):
        xa, ya = nh._antipode_pairs(12, d, kv, seed=3 + d, lo=-5, hi=-1)
        xr, yr = (torch.randn(6, d, generator=torch.Generator().manual_seed(s), dtype=f64) * 0.5 for s in (1, 2))
        xs += [xr[:3], xa, xr[3:]]
        ys += [yr[:3], ya, yr[3:]]
        ks.append(torch.full((18, 1), kv, dtype=f64))
    x, y, k = torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ks).float()
    _logmap_rule_fp32(device, chunk, x, y, k)


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 19])
def test_logmap_sphere_within_3e8_of_antipode(device, d, chunk):
    """test_stereographic_numhunt.py's rows within 1e-14 .. 1e-8 of x's antipode (den 1e-28 .. 1e-16, below
    _MIN_DEN) on the Triton kernels, one tile and chunked: float64 values within 16 eps / sqrt(den) of the exact value
    per row, dx, dy (1e-12 .. 1e-9) within 64 eps / sqrt(den) of 60-digit derivatives; y exactly at the antipode bounded by the
    sphere's largest logmap, gradients finite.  _logmap_coef clamped the second pass's den at _MIN_DEN: 0.68 .. 1.0
    short (4 of 4 failed before)."""
    from geoops.kernels import stereographic as S

    nh = _numhunt()
    f64 = torch.float64
    for kv in (0.5, 2.0):
        x, y = nh._antipode_pairs(6, d, kv, seed=30 + d, lo=-14, hi=-8)
        k = torch.full((6,), kv, dtype=f64)
        out = S._stereo_fwd(7, x, y, k, None, 0.0, max_block_d=chunk)
        want = nh._logmap_exact_s(x, y, kv)
        tol = 16 * 2.0 ** -52 / torch.logspace(-14, -8, 6, dtype=f64)
        assert ((out - want).norm(dim=-1) / want.norm(dim=-1) <= tol).all(), kv
        x, y = nh._antipode_pairs(3, d, kv, seed=40 + d, lo=-12, hi=-9)
        tol = 64 * 2.0 ** -52 / torch.logspace(-12, -9, 3, dtype=f64)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=f64)
        dx, dy, dk, _ = S._stereo_bwd(7, w, x, y, k[:3], None, 0.0, 7, max_block_d=chunk)
        ex, ey, ek = nh._logmap_grads_mp(x, y, kv, w)
        for got, e in ((dx, ex), (dy, ey)):
            assert ((got - e).norm(dim=-1) / e.norm(dim=-1) <= tol).all(), kv
    x, y = nh._antipode_exact_rows(d)
    k = torch.ones(2, dtype=f64)
    out = S._stereo_fwd(7, x, y, k, None, 0.0, max_block_d=chunk)
    assert (out.norm(dim=-1) <= math.pi * (1 + (x * x).sum(-1)) / 2).all(), out
    grads = S._stereo_bwd(7, torch.ones_like(x), x, y, k, None, 0.0, 7, max_block_d=chunk)[:3]
    assert all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 7])
def test_logmap_sphere_antipode_band_fp32(device, d, chunk):
    """The CPU hunt's test_logmap_sphere_antipode_band_fp32 on the Triton kernels, one tile and chunked: float32 rows
    with den 1e-3 .. 1 (k = 0.5, 1, 2), value, dx, dy by the float rule.  Rows above _ANTIPODE_CUT kept the float
    write (~3 eps32 / sqrt(den), gradients ~15 eps32 / den) until session 45; now in float64 up to
    _ANTIPODE_FLOAT_CUT_FWD / _BWD (_near_rows_out, _near_rows_grads)."""
    nh = _numhunt()
    xs, ys, ks = [], [], []
    for i, kv in enumerate((0.5, 1.0, 2.0)):
        for lo in (-3, -2, -1):
            xa, ya = nh._antipode_band_rows(60, d, kv, lo, lo + 1, seed=100 * i + 10 * d - lo)
            xs, ys, ks = xs + [xa], ys + [ya], ks + [torch.full((60, 1), kv, dtype=torch.float64)]
    x, y, k = torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ks).float()
    _logmap_rule_fp32(device, chunk, x, y, k, seed=6)


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 33])
def test_logmap_sphere_antipode_band_fp32_double_write(device, d, chunk):
    """The CPU hunt's test of the same name on the Triton kernels, one tile and chunked: float32 rows with den 1e-3 ..
    0.04 written in float64 (_near_rows_out), each within 4 eps32 of the float64 reference (the float write: ~3e-6)."""
    from geoops.kernels import stereographic as S
    from geoops.reference import stereographic as ref

    nh = _numhunt()
    xs, ys = zip(*[nh._antipode_band_rows(40, d, kv, -3, -1.4, seed=d + i) for i, kv in enumerate((0.5, 2.0))])
    k = torch.cat([torch.full((40,), kv) for kv in (0.5, 2.0)])
    x, y = torch.cat(xs).float(), torch.cat(ys).float()
    want = ref.logmap(x.double(), y.double(), k=k.double().reshape(-1, 1))
    got = S._stereo_fwd(7, x.to(device), y.to(device), k.to(device), None, 0.0, max_block_d=chunk).cpu()
    err = (got.double() - want).norm(dim=-1) / want.norm(dim=-1)
    assert err.max().item() <= 4 * 2.0 ** -23, err.max().item()


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("d", [2, 19])
def test_logmap_sphere_within_3e8_of_antipode_fp32(device, d, chunk):
    """The CPU hunt's test_logmap_sphere_within_3e8_of_antipode_fp32 on the Triton kernels, one tile and chunked:
    float32 rows within 1e-11 .. 1e-8 of x's antipode (den ~1e-23 .. 1e-17), which the kernels write in float64
    (_near_rows_out, _near_rows_grads), floored at _ANTIPODE_MIN_DEN: the value within 2 eps32 + 16 eps64 / sqrt(den)
    of the exact value, dx, dy within 64 eps64 / sqrt(den) + 4 eps32 of 60-digit derivatives.  With _MIN_DEN as their
    floor the value came out sqrt(den / 1e-15) of its length."""
    from geoops.kernels import stereographic as S

    nh = _numhunt()
    e32, e64 = 2.0 ** -23, 2.0 ** -52
    for kv in (1.0, 2.0):
        x, y, sden = nh._antipode_rows_fp32(d, kv)
        k = torch.full((x.shape[0],), kv, dtype=torch.float32, device=device)
        xd, yd = x.float().to(device), y.float().to(device)
        out = S._stereo_fwd(7, xd, yd, k, None, 0.0, max_block_d=chunk).cpu().double()
        want = nh._logmap_exact_s(x, y, kv)
        assert ((out - want).norm(dim=-1) / want.norm(dim=-1) <= 2 * e32 + 16 * e64 / sden).all(), kv
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(d), dtype=torch.float64).float()
        dx, dy, _, _ = S._stereo_bwd(7, w.to(device), xd, yd, k, None, 0.0, 3, max_block_d=chunk)
        ex, ey, _ = nh._logmap_grads_mp(x, y, kv, w.double())
        for got, e in ((dx, ex), (dy, ey)):
            err = (got.cpu().double() - e).norm(dim=-1) / e.norm(dim=-1)
            assert (err <= 4 * e32 + 64 * e64 / sden).all(), (kv, err.tolist())
