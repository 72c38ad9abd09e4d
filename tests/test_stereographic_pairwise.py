"""kappa-stereographic pairwise ops: cdist, knn, pairwise_rank (CPU kernels vs fp64 reference and geoopt)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.stereographic as gs
from geoops.reference import stereographic as ref

try:
    import geoopt.manifolds.stereographic.math as gm
except ImportError:  # geoopt is optional
    gm = None
needs_geoopt = pytest.mark.skipif(gm is None, reason="needs geoopt")
KS = [-1.0, -0.3, 0.0, 1e-4, 0.7, -2.5]


def _ball(*shape, k=-1.0, frac=0.9, dtype=torch.float64, seed=0):
    """Points with random directions and norms uniform in [0, frac * radius) (radius 1 for k >= 0)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = 1 / math.sqrt(-k) if k < 0 else 1.0
    return (v * torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64) * frac * r).to(dtype)


def _ref64(x, y, k):
    return ref.cdist(x.double(), y.double(), k=torch.as_tensor(k, dtype=torch.float64))


def _relerr(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(1e-30)).max().item()


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("kval", KS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cdist_matches_reference(kval, dtype):
    x = _ball(37, 13, k=kval, dtype=dtype, seed=1)
    y = _ball(29, 13, k=kval, dtype=dtype, seed=2)
    out = gs.cdist(x, y, k=torch.tensor(kval, dtype=dtype))
    exp = _ref64(x, y, kval)
    assert out.shape == (37, 29) and out.dtype == dtype
    assert _relerr(out, exp) < (1e-12 if dtype == torch.float64 else 1e-5)


@needs_geoopt
@pytest.mark.parametrize("kval", [-1.0, -0.3, 0.0, 0.7])
def test_cdist_matches_geoopt_broadcast(kval):
    x = _ball(2, 20, 8, k=kval, seed=3)
    y = _ball(2, 15, 8, k=kval, seed=4)
    k = torch.tensor(kval, dtype=torch.float64)
    exp = gm.dist(x[..., :, None, :], y[..., None, :, :], k=k)
    out = gs.cdist(x, y, k=k)
    torch.testing.assert_close(out, exp, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 1.0])
def test_cdist_close_pairs_near_boundary_fp32(kval):
    """Close pairs (|x - y| from 1e-6 to 1e-2) at norms up to 0.999 of the radius: fp32 relative error <= 1e-3."""
    D = 64
    base = _ball(200, D, k=kval, frac=0.999, seed=5)
    if kval < 0:  # half of them right at the boundary
        base[:100] = base[:100] / base[:100].norm(dim=-1, keepdim=True) * 0.999
    g = torch.Generator().manual_seed(6)
    step = torch.randn(200, D, generator=g, dtype=torch.float64)
    step = step / step.norm(dim=-1, keepdim=True) * torch.logspace(-6, -2, 200, dtype=torch.float64)[:, None]
    x = base.float()
    y = (base + step).float()
    out = gs.cdist(x, y, k=kval)
    exp = _ref64(x, y, kval)
    assert _relerr(out, exp) < 1e-3  # includes the diagonal (close pairs) and every far pair


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cdist_self_exact_zero(kval, dtype):
    x = _ball(50, 17, k=kval, frac=0.99, dtype=dtype, seed=7)
    out = gs.cdist(x, x, k=kval)
    assert (out.diagonal() == 0).all()
    assert _relerr(out + torch.eye(50, dtype=dtype), _ref64(x, x, kval) + torch.eye(50, dtype=torch.float64)) < (
        1e-4 if dtype == torch.float32 else 1e-12)


def test_cdist_batched_broadcast_and_per_batch_curvature():
    x = _ball(3, 1, 10, 5, seed=8)
    y = _ball(4, 7, 5, seed=9)
    k = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64).reshape(3, 1, 1, 1)
    out = gs.cdist(x, y, k=k)
    assert out.shape == (3, 4, 10, 7)
    exp = ref.cdist(x.expand(3, 4, 10, 5), y.expand(3, 4, 7, 5), k=k)
    torch.testing.assert_close(out, exp, rtol=1e-11, atol=1e-13)


def test_cdist_sizes_odd_one_empty():
    for N, M, D in [(1, 1, 1), (0, 5, 3), (4, 0, 3), (3, 5, 0), (17, 33, 3)]:
        x = _ball(N, D, seed=10) if D else torch.zeros(N, 0, dtype=torch.float64)
        y = _ball(M, D, seed=11) if D else torch.zeros(M, 0, dtype=torch.float64)
        out = gs.cdist(x, y, k=-1.0)
        assert out.shape == (N, M)
        if N and M:
            torch.testing.assert_close(out, _ref64(x, y, -1.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cdist_half_returns_own_dtype(dtype):
    x = _ball(9, 8, seed=12).to(dtype)
    y = _ball(11, 8, seed=13).to(dtype)
    out = gs.cdist(x, y, k=-1.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), _ref64(x, y, -1.0), rtol=1e-2, atol=1e-2)


def test_cdist_integer_curvature_tensor():
    x, y = _ball(4, 3, seed=14), _ball(5, 3, seed=15)
    torch.testing.assert_close(gs.cdist(x, y, k=torch.tensor(-1)), _ref64(x, y, -1.0))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kval", [-1.0, -0.3, 0.0, 1e-5, 0.8])
def test_cdist_gradcheck(kval):
    x = _ball(2, 6, 4, k=kval, frac=0.8, seed=16).requires_grad_()
    y = _ball(2, 5, 4, k=kval, frac=0.8, seed=17).requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b, c: gs.cdist(a, b, k=c), (x, y, k), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cdist_gradcheck_close_pairs_and_per_batch_k():
    x = _ball(2, 5, 3, frac=0.9, seed=18)
    y = torch.cat([x[:, :2] + 1e-4, _ball(2, 3, 3, seed=19)], dim=1)  # two close pairs per batch
    x.requires_grad_()
    y.requires_grad_()
    k = torch.tensor([-1.0, 0.6], dtype=torch.float64).reshape(2, 1, 1).requires_grad_()
    assert gradcheck(lambda a, b, c: gs.cdist(a, b, k=c), (x, y, k), eps=1e-8, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
def test_cdist_gradients_fp32_match_reference(kval):
    x = _ball(40, 16, k=kval, frac=0.95, seed=20)
    y = torch.cat([x[:10] + 1e-3 * torch.randn(10, 16, dtype=torch.float64), _ball(30, 16, k=kval, seed=21)])
    g = torch.randn(40, 40, dtype=torch.float64)
    grads = []
    for dt in (torch.float32, torch.float64):
        a = x.to(dt).requires_grad_()
        b = y.to(dt).requires_grad_()
        c = torch.tensor(kval, dtype=dt, requires_grad=True)
        if dt == torch.float64:
            out = ref.cdist(a, b, k=c)
        else:
            out = gs.cdist(a, b, k=c)
        out.backward(g.to(dt))
        grads.append((a.grad.double(), b.grad.double(), c.grad.double()))
    for got, exp in zip(*grads):
        assert ((got - exp).abs().max() / exp.abs().max()).item() < 1e-4


def test_cdist_self_gradient_finite():
    x = _ball(6, 4, seed=22).requires_grad_()
    gs.cdist(x, x, k=-1.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cdist_no_grad_saves_nothing():
    x, y = _ball(5, 3, seed=23), _ball(4, 3, seed=24)
    out = gs.cdist(x, y, k=-1.0)
    assert out.grad_fn is None


# ---------------------------------------------------------------- errors
def test_cdist_errors_name_the_argument():
    x, y = _ball(4, 3), _ball(5, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        gs.cdist([1.0], y, k=-1.0)
    with pytest.raises(TypeError, match="y must be a floating-point"):
        gs.cdist(x, torch.ones(5, 3, dtype=torch.int64), k=-1.0)
    with pytest.raises(ValueError, match="vector size D"):
        gs.cdist(x, _ball(5, 4), k=-1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        gs.cdist(x[0], y, k=-1.0)
    with pytest.raises(ValueError, match="batch dimensions"):
        gs.cdist(_ball(2, 4, 3), _ball(3, 5, 3), k=-1.0)
    with pytest.raises(ValueError, match="k must be a scalar or have shape"):
        gs.cdist(x, y, k=torch.tensor([-1.0, -2.0]))


def test_cdist_debug_checks():
    x, y = _ball(4, 3), _ball(5, 3)
    x[0] = 2.0
    geoops.set_checks(True)
    try:
        with pytest.raises(ValueError, match="x has points outside the ball"):
            gs.cdist(x, y, k=-1.0)
    finally:
        geoops.set_checks(False)


@pytest.mark.parametrize("op", ["knn", "pairwise_rank", "reconstruction_metrics"])
def test_ranking_debug_checks(op):
    """GEOOPS_CHECK=1 covers knn / pairwise_rank (and the metrics built on them) as cdist: a NaN or a point
    outside the ball would otherwise rank silently (before session 25 they had no checks at all)."""
    x, y = _ball(6, 3), _ball(7, 3)
    q = torch.tensor([0, 1, 2])
    t = torch.tensor([1, 2, 3])
    run = {"knn": lambda a, b: gs.knn(a, b, 2, k=-1.0),
           "pairwise_rank": lambda a, b: gs.pairwise_rank(a, b, q, t, k=-1.0),
           "reconstruction_metrics": lambda a, b: gs.reconstruction_metrics(a, torch.stack([q, t], 1), k=-1.0)}[op]
    bad_ball, bad_nan = x.clone(), y.clone()
    bad_ball[1] = 2.0
    bad_nan[2, 1] = float("nan")
    run(bad_ball, y)  # unchecked: no error
    geoops.set_checks(True)
    try:
        run(x, y)
        with pytest.raises(ValueError, match="x has points outside the ball"):
            run(bad_ball, y)
        if op != "reconstruction_metrics":
            with pytest.raises(ValueError, match="y has non-finite values"):
                run(x, bad_nan)
    finally:
        geoops.set_checks(False)


# ---------------------------------------------------------------- dispatch / compile
def test_cdist_opcheck():
    x = _ball(2, 5, 3, seed=25)
    y = _ball(2, 4, 3, seed=26)
    k = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.cdist_fwd.default, (x, y, k, True))
    torch.library.opcheck(torch.ops.geoops.cdist_fwd.default, (x, y, k, False))
    d, A = torch.ops.geoops.cdist_fwd(x, y, k, True)
    g = torch.randn(2, 5, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.cdist_bwd.default, (g, x, y, k, A, d, 7))
    torch.library.opcheck(torch.ops.geoops.cdist_rank_key.default, (x, y, k))
    torch.library.opcheck(torch.ops.geoops.dist_from_key.default, (torch.ops.geoops.cdist_rank_key(x, y, k), k))


def test_cdist_reference_backend_agrees():
    x = _ball(6, 5, seed=27).requires_grad_()
    y = _ball(7, 5, seed=28).requires_grad_()
    outs = []
    for be in ("cpp", "reference"):
        with geoops.use_backend(be):
            out = gs.cdist(x, y, k=-0.7)
            gx, gy = torch.autograd.grad(out.sum(), (x, y))
            outs.append((out, gx, gy))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cdist_torch_compile_fullgraph():
    x = _ball(6, 5, seed=29).float().requires_grad_()
    y = _ball(7, 5, seed=30).float()
    k = torch.tensor(-1.0)
    fn = torch.compile(lambda a, b, c: gs.cdist(a, b, k=c), fullgraph=True, backend="aot_eager")
    out = fn(x, y, k)
    torch.testing.assert_close(out, gs.cdist(x, y, k=k))
    (gx,) = torch.autograd.grad(out.sum(), (x,))
    (ex,) = torch.autograd.grad(gs.cdist(x, y, k=k).sum(), (x,))
    torch.testing.assert_close(gx, ex)


# ---------------------------------------------------------------- knn, pairwise_rank, reconstruction metrics
@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.8])
@pytest.mark.parametrize("largest", [False, True])
def test_knn_matches_brute_force(kval, largest):
    x = _ball(2, 50, 6, k=kval, seed=31).float()
    y = _ball(2, 300, 6, k=kval, seed=32).float()
    d, i = gs.knn(x, y, 7, k=kval, largest=largest, block_elems=4096)  # many tiles over y and x
    full = _ref64(x, y, kval)
    ed, ei = torch.topk(full, 7, dim=-1, largest=largest)
    assert d.shape == i.shape == (2, 50, 7) and i.dtype == torch.int64
    torch.testing.assert_close(d.double(), ed, rtol=1e-4, atol=1e-6)
    # same neighbours (distances of the returned indices equal the brute-force ones)
    torch.testing.assert_close(torch.gather(full, -1, i), ed, rtol=1e-4, atol=1e-6)


def test_knn_self_and_gradients():
    x = _ball(40, 5, seed=33).requires_grad_()
    d, i = gs.knn(x, x, 3, k=-1.0)
    assert (i[:, 0] == torch.arange(40)).all() and (d[:, 0] == 0).all()
    g = torch.randn_like(d)
    (gx,) = torch.autograd.grad((d * g).sum(), x)
    xe = x.detach().clone().requires_grad_()
    de = ref.dist(xe[:, None, :], xe[i], k=torch.tensor(-1.0, dtype=torch.float64))
    (ex,) = torch.autograd.grad((de * g).sum(), xe)
    torch.testing.assert_close(gx, ex)


def test_knn_edge_cases_and_errors():
    x, y = _ball(4, 3, seed=34), _ball(5, 3, seed=35)
    d, i = gs.knn(x, y, 0, k=-1.0)
    assert d.shape == (4, 0)
    d, i = gs.knn(x, y, 5, k=-1.0)
    assert (i.sort(-1).values == torch.arange(5)).all()
    with pytest.raises(ValueError, match=r"n_neighbors must be in \[0, M=5\]"):
        gs.knn(x, y, 6, k=-1.0)
    with pytest.raises(TypeError, match="n_neighbors must be an int"):
        gs.knn(x, y, 2.0, k=-1.0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_knn_empty_vectors(backend):
    with geoops.use_backend(backend):
        # D = 0: every distance 0 (the row-wise dist's fast path used to fail on reshape(-1, 0))
        for xs, ys in (((5, 0), (4, 0)), ((2, 5, 0), (2, 4, 0))):
            d, i = gs.knn(torch.zeros(xs), torch.zeros(ys), 2, k=-1.0)
            assert d.shape == i.shape == xs[:-1] + (2,) and not d.any() and ((i >= 0) & (i < 4)).all()


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_knn_nan_points_and_ties(backend):
    with geoops.use_backend(backend):
        # a NaN point: its row ranks NaN keys as torch.topk does (NaN distances, valid indices; the C++
        # kernel used to leave index -1 and fail in the gather with "index -1 is out of bounds")
        x, y = _ball(4, 3, seed=41), _ball(6, 3, seed=42)
        x[1, 0] = float("nan")
        y[2, 0] = float("nan")
        for largest in (False, True):
            d, i = gs.knn(x, y, 6, k=-1.0, largest=largest)
            assert (i.sort(-1).values == torch.arange(6)).all()
            assert d[1].isnan().all() and d[[0, 2, 3]].isnan().sum() == 3
            assert (i[[0, 2, 3], -1 if not largest else 0] == 2).all()  # the NaN point last / first, like topk
    # exact ties (duplicated points of y): the C++ kernel keeps the lower index first (docstring)
    y = _ball(5, 3, seed=43)
    y = torch.cat([y, y])
    d, i = gs.knn(_ball(3, 3, seed=44), y, 10, k=-1.0)
    assert (i.view(3, 5, 2).diff(dim=-1) == 5).all()


def test_pairwise_errors_name_the_argument():
    """Errors raised before any kernel, naming the argument (were: a pybind signature dump for a non-bool
    `largest`, a float `edges` silently truncated, out-of-range edges blamed on an internal `target`, and a
    batched m whose batch does not broadcast reported by matmul)."""
    x, y = _ball(4, 3, seed=45), _ball(5, 3, seed=46)
    with pytest.raises(TypeError, match="largest must be a bool"):
        gs.knn(x, y, 2, k=-1.0, largest="yes")
    with pytest.raises(TypeError, match="edges must be an int32/int64 tensor"):
        gs.reconstruction_metrics(x, torch.tensor([[0.0, 1.0]]), k=-1.0)
    with pytest.raises(IndexError, match=r"edges has node indices outside \[0, N=4\)"):
        gs.reconstruction_metrics(x, torch.tensor([[0, 9]]), k=-1.0)
    with pytest.raises(ValueError, match="batch dimensions of m"):
        gs.mobius_matvec(torch.randn(3, 2, 3, dtype=torch.float64), x, k=-1.0)


@pytest.mark.parametrize("kval", [-1.0, 0.5])
def test_pairwise_rank_matches_brute_force(kval):
    x = _ball(60, 4, k=kval, seed=36).float()
    y = _ball(500, 4, k=kval, seed=37).float()
    g = torch.Generator().manual_seed(38)
    q = torch.randint(0, 60, (200,), generator=g)
    t = torch.randint(0, 500, (200,), generator=g)
    got = gs.pairwise_rank(x, y, q, t, k=kval, block_elems=8192)
    full = _ref64(x, y, kval)
    thr = full[q, t]
    exp = (full[q] < thr[:, None]).sum(-1)
    assert (got == exp).all()


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_reconstruction_metrics_tied_positives(backend):
    """AP counts the positives at a distance <= d(u, v), ties included (it counted strictly closer + 1)."""
    # node 0 at the origin; a negative w at 0.1; its positives v and -v at 0.3 (exactly tied: <0, y> = 0)
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.3, 0.0], [-0.3, 0.0]], dtype=torch.float64)
    edges = torch.tensor([[0, 2], [0, 3]])
    with geoops.use_backend(backend):
        mr, mean_ap = gs.reconstruction_metrics(x, edges, k=-1.0)
    assert mr == 2.0  # w is closer than either positive; the tied positive is not
    assert mean_ap == pytest.approx(2 / 3)  # 2 positives within d(0, v) / (2 + 1 negative closer); was 1/2


def test_reconstruction_metrics_matches_brute_force():
    g = torch.Generator().manual_seed(39)
    N = 80
    x = _ball(N, 3, seed=40).float()
    edges = torch.randint(0, N, (400, 2), generator=g)
    mr, mean_ap = gs.reconstruction_metrics(x, edges, k=-1.0, block_elems=2048)
    # brute force
    full = _ref64(x, x, -1.0)
    adj = torch.zeros(N, N, dtype=torch.bool)
    adj[edges[:, 0], edges[:, 1]] = True
    adj.fill_diagonal_(False)
    ranks, aps = [], []
    for u in range(N):
        pos = adj[u].nonzero().squeeze(1)
        if pos.numel() == 0:
            continue
        neg = ~adj[u]
        neg[u] = False
        precs = []
        for v in pos:
            dv = full[u, v]
            nc = int((full[u][neg] < dv).sum())
            pc = int((full[u][pos] < dv).sum())
            ranks.append(1 + nc)
            precs.append((pc + 1) / (pc + 1 + nc))
        aps.append(sum(precs) / len(precs))
    assert mr == pytest.approx(sum(ranks) / len(ranks), rel=1e-9)
    assert mean_ap == pytest.approx(sum(aps) / len(aps), rel=1e-9)


# ---------------------------------------------------------------- mobius_matvec, mobius_pointwise_mul
def _assert_matches_geoopt(a, b, inputs):
    """Our output a and geoopt's b of the same inputs (float64): values to 1e-10 and the gradients of their sums
    with respect to every input to 1e-8."""
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for u, v in zip(torch.autograd.grad(a.sum(), inputs), torch.autograd.grad(b.sum(), inputs)):
        torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-10)


@needs_geoopt
@pytest.mark.parametrize("kval", [-1.0, 0.0, 1e-4, 0.7])
def test_mobius_matvec_matches_geoopt_values_and_grads(kval):
    g = torch.Generator().manual_seed(41)
    x = (torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    m = torch.randn(4, 7, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    _assert_matches_geoopt(gs.mobius_matvec(m, x, k=k), gm.mobius_matvec(m, x, k=k), (m, x, k))


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
def test_mobius_matvec_gradcheck_and_exact_zero(kval):
    g = torch.Generator().manual_seed(42)
    x = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    m = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b, c: gs.mobius_matvec(a, b, k=c), (m, x, k))
    out = gs.mobius_matvec(torch.zeros(4, 5, dtype=torch.float64), x, k=k)
    assert (out == 0).all()
    assert (gs.mobius_matvec(m, torch.zeros(2, 5, dtype=torch.float64), k=k) == 0).all()


def test_mobius_matvec_batched_m_and_dim():
    g = torch.Generator().manual_seed(43)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.2
    m = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    out = gs.mobius_matvec(m, x, k=-1.0)
    exp = torch.stack([ref.mobius_matvec(m[i], x[i], k=torch.tensor(-1.0, dtype=torch.float64)) for i in range(3)])
    torch.testing.assert_close(out, exp)
    out_t = gs.mobius_matvec(m[0], x.T, k=-1.0, dim=0)
    torch.testing.assert_close(out_t.T, ref.mobius_matvec(m[0], x, k=torch.tensor(-1.0, dtype=torch.float64)))
    with pytest.raises(ValueError, match="D_in=5 columns but x has 4"):
        gs.mobius_matvec(m[0], x[:, :4], k=-1.0)
    with pytest.raises(TypeError, match="m must be a floating-point"):
        gs.mobius_matvec(m.long(), x, k=-1.0)


@needs_geoopt
@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
def test_mobius_pointwise_mul_matches_geoopt(kval):
    g = torch.Generator().manual_seed(44)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    w = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    _assert_matches_geoopt(gs.mobius_pointwise_mul(w, x, k=k), gm.mobius_pointwise_mul(w, x, k=k), (w, x, k))
    assert gradcheck(lambda a_, b_, c_: gs.mobius_pointwise_mul(a_, b_, k=c_), (w, x, k))
    assert (gs.mobius_pointwise_mul(torch.zeros(5, dtype=torch.float64), x, k=k) == 0).all()


def test_mobius_matvec_fp32_and_compile():
    g = torch.Generator().manual_seed(45)
    x = torch.randn(8, 6, generator=g) * 0.2
    m = torch.randn(3, 6, generator=g)
    exp = ref.mobius_matvec(m.double(), x.double(), k=torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(gs.mobius_matvec(m, x, k=-1.0).double(), exp, rtol=1e-5, atol=1e-6)
    fn = torch.compile(lambda a, b: gs.mobius_matvec(a, b, k=torch.tensor(-1.0)), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(m, x), gs.mobius_matvec(m, x, k=-1.0))


def test_mobius_scale_opcheck_and_reference_backend():
    g = torch.Generator().manual_seed(46)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.3
    x = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.3
    k = torch.tensor([-1.0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.mobius_scale_fwd.default, (v, x, k))
    out, st = torch.ops.geoops.mobius_scale_fwd(v, x, k)
    gr = torch.randn(5, 4, generator=g, dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.mobius_scale_bwd.default, (gr, v, x, k, st, 7))
    m = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    xr = x.clone().requires_grad_()
    res = []
    for be in ("cpp", "reference"):
        with geoops.use_backend(be):
            o = gs.mobius_matvec(m, xr, k=-0.8)
            res.append((o,) + torch.autograd.grad((o * gr).sum(), (m, xr)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kval", [-1.0, 0.5])
def test_knn_fused_many_tiles_matches_tiled_python_path(kval):
    x = _ball(300, 5, k=kval, seed=47).float()
    y = _ball(2600, 5, k=kval, seed=48).float()  # three tiles of y, two row blocks of x in the C++ path
    d, i = gs.knn(x, y, 6, k=kval)
    with geoops.use_backend("reference"):
        dr, ir = gs.knn(x, y, 6, k=kval, block_elems=50_000)
    torch.testing.assert_close(d, dr, rtol=1e-4, atol=1e-6)
    full = _ref64(x, y, kval)
    torch.testing.assert_close(torch.gather(full, -1, i), torch.topk(full, 6, largest=False).values, rtol=1e-4,
                               atol=1e-6)


# ---------------------------------------------------------------- float64 close pairs (issue 6: 1e-12 relative)
def _cdist_direct64(x, y, kval):
    """The distance from A = sum (x - y)^2 formed from the differences (no cancellation), float64."""
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    px = 1 + kval * (x * x).sum(-1)[:, None]
    py = 1 + kval * (y * y).sum(-1)[None, :]
    if kval < 0:
        c = -kval
        t = 2 * c * A / (px * py)
        return torch.log1p(t + torch.sqrt(t * (t + 2))) / math.sqrt(c)
    if kval > 0:
        return 2 * torch.atan2(torch.sqrt(kval * A), torch.sqrt(px * py - kval * A)) / math.sqrt(kval)
    return 2 * torch.sqrt(A)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
@pytest.mark.parametrize("D", [3, 64])
def test_cdist_fp64_close_pairs_1e12(kval, D):
    # pairs 1e-7 .. 1e-2 apart: before the fix A came from the GEMM down to A ~ 5e-13 (|x|^2 + |y|^2), so a pair
    # 1e-5 apart kept ~1e-6 relative error (the parity floor was 2e-5)
    x = _ball(6, D, k=kval, frac=0.8, seed=60)
    g = torch.Generator().manual_seed(61)
    dirs = torch.randn(6, 6, D, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    seps = torch.tensor([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2], dtype=torch.float64)
    y = (x[:, None, :] + seps[None, :, None] * dirs).reshape(36, D)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    d = gs.cdist(xr, yr, k=kval)
    xe, ye = x.clone().requires_grad_(), y.clone().requires_grad_()
    de = _cdist_direct64(xe, ye, kval)
    assert _relerr(d.detach(), de.detach()) < 1e-12
    gout = torch.rand(d.shape, generator=g, dtype=torch.float64)
    gx, gy = torch.autograd.grad((d * gout).sum(), (xr, yr))
    gxe, gye = torch.autograd.grad((de * gout).sum(), (xe, ye))
    torch.testing.assert_close(gx, gxe, rtol=1e-11, atol=1e-11 * gxe.abs().max().item())
    torch.testing.assert_close(gy, gye, rtol=1e-11, atol=1e-11 * gye.abs().max().item())


# ---------------------------------------------------------------- pairwise_rank: the C++ path (one call)
def _rank_brute(x, y, q, t, kval):
    full = _ref64(x, y, kval)
    thr = full[q, t]
    return (full[q] < thr[:, None]).sum(-1)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.5])
@pytest.mark.parametrize("block_elems", [1, 3000, 1 << 22])
def test_pairwise_rank_fused_many_targets_and_blocks(kval, block_elems):
    # queries with 1 .. 40 targets (the direct count up to 16, the sorted-threshold count above), repeated
    # queries and targets, several blocks of query rows (block_elems / M rows per block, at least one)
    x = _ball(50, 5, k=kval, seed=62)
    y = _ball(700, 5, k=kval, seed=63)
    g = torch.Generator().manual_seed(64)
    per = torch.randint(1, 41, (50,), generator=g)
    q = torch.repeat_interleave(torch.arange(50), per)
    q = q[torch.randperm(q.numel(), generator=g)]
    t = torch.randint(0, 700, (q.numel(),), generator=g)
    for dtype in (torch.float64, torch.float32):
        got = gs.pairwise_rank(x.to(dtype), y.to(dtype), q, t, k=kval, block_elems=block_elems)
        exp = _rank_brute(x.to(dtype), y.to(dtype), q, t, kval)
        if dtype == torch.float64:
            assert (got == exp).all()
        else:  # float32 keys: a point tying the target to ~1e-7 may be counted either way
            assert (got - exp).abs().max() <= 1
            assert (got == exp).float().mean() > 0.99


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
def test_pairwise_rank_never_counts_ties_with_the_target(backend, kval):
    """Exact duplicates of the target and points at exactly its distance (mirror images about a query at the
    origin) are not closer.  The keys came from a GEMM whose rounding of one dot product depends on the column,
    so a duplicate sitting elsewhere in y could come out below the target's own key and was counted (seen in
    float64 at D = 3 and in float32); both counting paths (<= 16 and > 16 targets per query) and both backends."""
    g = torch.Generator().manual_seed(70)
    for dtype in (torch.float32, torch.float64):
        for D, M in ((3, 300), (10, 50), (10, 2000)):
            y = (_ball(M, D, k=min(kval, -0.5), seed=71 + D + M, frac=0.6) / (1 + max(kval, 0))).to(dtype)
            t = torch.randint(0, M, (40,), generator=g)
            y[torch.randint(0, M, (40,), generator=g)] = y[t]  # duplicates of targets anywhere in y
            y[-5:] = -y[-10:-5]
            x = y[:20].clone()
            x[0] = 0  # from the origin, y and -y are at one distance
            for nq in (20, 3):  # ~2 targets per query (direct count), ~130 (sorted thresholds)
                q = torch.randint(0, nq, (400,), generator=g)
                q[:5] = 0
                tg = torch.randint(0, M, (400,), generator=g)
                tg[5:45] = t
                tg[:5] = torch.arange(M - 5, M)
                with geoops.use_backend(backend):
                    got = gs.pairwise_rank(x, y, q, tg, k=kval, block_elems=4096)
                exp = _rank_brute(x, y, q, tg, kval)
                bad = (got != exp).nonzero().squeeze(1)
                assert bad.numel() == 0, (dtype, D, M, nq, got[bad].tolist(), exp[bad].tolist())


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_reconstruction_metrics_with_duplicate_points(backend):
    """A negative that duplicates a positive ties it: not closer (mean rank 1, MAP 1 when nothing else is closer)."""
    for dtype in (torch.float32, torch.float64):
        base = _ball(60, 3, seed=73, frac=0.8).to(dtype)
        x = torch.cat([base, base])  # node i + 60 duplicates node i
        u = torch.arange(60)
        nearest = _ref64(base, base, -1.0).fill_diagonal_(float("inf")).argmin(-1)
        edges = torch.stack([u, nearest], 1)  # each node's nearest other point: its only positive
        with geoops.use_backend(backend):
            mr, mean_ap = gs.reconstruction_metrics(x, edges, k=-1.0)
        # closer than the positive: only u's own duplicate u + 60 (distance 0); the positive's duplicate ties it
        assert mr == 2.0, (dtype, mr)
        assert mean_ap == pytest.approx(0.5), (dtype, mean_ap)


def test_pairwise_rank_fused_matches_python_tiles():
    x = _ball(40, 4, seed=65).float()
    y = _ball(900, 4, seed=66).float()
    g = torch.Generator().manual_seed(67)
    q = torch.randint(0, 40, (300,), generator=g)
    t = torch.randint(0, 900, (300,), generator=g)
    got = gs.pairwise_rank(x, y, q, t, k=-1.0)
    with geoops.use_backend("reference"):
        exp = gs.pairwise_rank(x, y, q, t, k=-1.0, block_elems=5000)
    assert (got - exp).abs().max() <= 1
    assert (got == exp).float().mean() > 0.99


# ---------------------------------------------------------------- mobius_matvec: the fused CPU op (blocked GEMM)
def test_mobius_matvec_fused_opcheck():
    g = torch.Generator().manual_seed(68)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64) * 0.3
    m = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for k in (torch.tensor([-1.0], dtype=torch.float64), torch.linspace(-1, 0.5, 7, dtype=torch.float64)):
        torch.library.opcheck(torch.ops.geoops.mobius_matvec_fwd.default, (x, m, k))
        out, st = torch.ops.geoops.mobius_matvec_fwd(x, m, k)
        gr = torch.randn(7, 4, generator=g, dtype=torch.float64)
        for mask in (1, 2, 4, 7):
            torch.library.opcheck(torch.ops.geoops.mobius_matvec_bwd.default, (gr, x, m, k, out, st, mask))


def _cpp_and_reference(f, inputs, gr, dtype):
    """[(out, *grads) of the cpp backend, the same of the reference backend] for f(*inputs) in dtype, the
    gradients of sum(out * gr) to every input."""
    res = []
    for be in ("cpp", "reference"):
        ins = [t.to(dtype).clone().requires_grad_() for t in inputs]
        with geoops.use_backend(be):
            o = f(*ins)
            res.append((o,) + torch.autograd.grad((o * gr.to(dtype)).sum(), ins))
    return res


@pytest.mark.parametrize("packed", ["1", "0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mobius_matvec_fused_many_blocks_matches_reference(dtype, packed, monkeypatch):
    # 700 rows: several row blocks per thread; per-row k (a tensor broadcasting against the batch); zero rows of x;
    # float32: m packed once (MKL's packed SGEMM, when found) or the at::mm path (GEOOPS_MKL_PACKED=0)
    monkeypatch.setenv("GEOOPS_MKL_PACKED", packed)
    g = torch.Generator().manual_seed(69)
    x = torch.randn(7, 100, 24, generator=g, dtype=torch.float64) * 0.04
    x[0, :3] = 0
    m = torch.randn(40, 24, generator=g, dtype=torch.float64) / 5
    k = (torch.rand(7, 100, 1, generator=g, dtype=torch.float64) * 1.5 - 1.0)
    gr = torch.randn(7, 100, 40, generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    res = _cpp_and_reference(lambda x_, m_, k_: gs.mobius_matvec(m_, x_, k=k_), (x, m, k), gr, dtype)
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, **tol)
    # the vectors along dim 0
    xt = x[1].T.contiguous()
    torch.testing.assert_close(gs.mobius_matvec(m, xt, k=-0.5, dim=0).T,
                               ref.mobius_matvec(m, x[1], k=torch.tensor(-0.5, dtype=torch.float64)),
                               rtol=1e-10, atol=1e-12)


def test_cpu_entry_points_accept_inputs_that_require_grad():
    # the blocked kernels write GEMM blocks with mm_out, which refuses inputs that require grad: the C++ entry
    # points detach (the autograd Functions own the gradients)
    C = geoops._backend.compiled()
    x = _ball(1, 5, 3, seed=70).requires_grad_()
    y = _ball(1, 4, 3, seed=71).requires_grad_()
    k = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    d, A = C.cdist_fwd_cpu(x, y, k, True)
    torch.testing.assert_close(d, _ref64(x.detach(), y.detach(), -1.0), rtol=1e-12, atol=1e-14)
    dx, dy, dk = C.cdist_bwd_cpu(torch.ones(1, 5, 4, dtype=torch.float64), x, y, k, A, d, 7)
    ex, ey, ek = torch.autograd.grad(gs.cdist(x, y, k=k).sum(), (x, y, k))
    torch.testing.assert_close(dx, ex)
    torch.testing.assert_close(dy, ey)
    m = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out, st = C.mobius_matvec_fwd_cpu(x[0], m, k)
    torch.testing.assert_close(out, ref.mobius_matvec(m.detach(), x[0].detach(), k=torch.tensor(-1.0, dtype=torch.float64)))
    dx, dm, _ = C.mobius_matvec_bwd_cpu(torch.ones_like(out), x[0], m, k, out, st, 3)
    ex, em = torch.autograd.grad(gs.mobius_matvec(m, x[0], k=k).sum(), (x, m))
    torch.testing.assert_close(dx, ex[0])
    torch.testing.assert_close(dm, em)


@pytest.mark.parametrize("kval", [-1.0, -0.3, -4.0])
@pytest.mark.parametrize("D", [1, 3, 17])
def test_cdist_fp32_ball_fused_epilogue_tail_lanes_and_saved_path(kval, D):
    """The float k < 0 forward (one vectorised pass, own log, close pairs fixed up after the row): close pairs
    and exact duplicates in the tail lanes (M = 37), distances from ~1e-6 to ~15 (points at 0.999 of the
    radius, where p_x p_y stays above the clamp), the same values with and without the saved buffer for the backward; fp32 rel. error <= 1e-3."""
    r = 1 / math.sqrt(-kval)
    x = _ball(40, D, k=kval, frac=0.999, seed=11)
    x[:10] = x[:10] / x[:10].norm(dim=-1, keepdim=True) * (0.999 * r)
    g = torch.Generator().manual_seed(12)
    y = torch.cat([_ball(32, D, k=kval, frac=0.999, seed=13), x[32:37] * (1 - 1e-5)])  # j = 32..36: close pairs
    y[33] = x[33]  # an exact duplicate in a tail lane
    y[:8] = -x[:8]  # antipodal points near the boundary: the largest distances
    y[8:16] = x[8:16] + 1e-6 * r * torch.randn(8, D, generator=g, dtype=torch.float64)
    xf, yf = x.float(), y.float()
    out = gs.cdist(xf, yf, k=kval)
    exp = _ref64(xf, yf, kval)
    assert _relerr(out, exp) < 1e-3
    assert out[33, 33] == 0
    assert (gs.cdist(xf, xf, k=kval).diagonal() == 0).all()
    out_g = gs.cdist(xf.clone().requires_grad_(), yf, k=kval)
    torch.testing.assert_close(out_g.detach(), out, rtol=1e-6, atol=0)


def _cdist64_from_A(x, y, k, A):
    """The float64 distances [B, N, M] from the exact squared differences A = |x - y|^2 in closed form,
    d = 2 artan_k(|(-x) (+)_k y|) with |(-x) (+)_k y|^2 = A / (1 + 2k<x, y> + k^2 |x|^2 |y|^2): the reference's
    distance without its [B, N, M, D] intermediates (ref.cdist: 1.8 CPU s on these 2.7M pairs, this about 0.3 s)."""
    x, y, k = x.double(), y.double(), k.double().reshape(-1, 1, 1)
    x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1).unsqueeze(-2)
    u = (A / (1 + 2 * k * (x @ y.transpose(-1, -2)) + k * k * x2 * y2)).sqrt()
    return 2 * ref.artan_k(u, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kval", [-1.0, 0.7, 0.0])
def test_cdist_cpu_forward_row_blocks(dtype, kval):
    """The CPU forward's row blocks (about 128K pairs each: 4 rows at M = 30006, so 45 rows make 12 blocks with a
    partial last one) match the float64 reference, with and without the saved A (A against the reference's
    |x - y|^2), close pairs and exact zeros for duplicates included."""
    C = geoops._backend.compiled()
    x = _ball(2, 45, 9, k=-1.0, frac=0.9, seed=80).to(dtype)
    y = torch.cat([_ball(2, 30000, 9, k=-1.0, frac=0.9, seed=81).to(dtype), x[:, :6] * (1 - 1e-6)], 1)
    y[:, 3] = x[:, 3]
    k = torch.tensor([kval, kval / 2], dtype=torch.float64)
    A_exp = torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    exp = _cdist64_from_A(x, y, k, A_exp)
    # the closed form is the reference's distance: checked on the last 500 columns (the close pairs among them)
    assert _relerr(exp[..., -500:], _ref64(x, y[:, -500:], k.reshape(-1, 1, 1))) < 1e-12
    d0, _ = C.cdist_fwd_cpu(x, y, k, False)
    for save in (False, True):
        d, A = C.cdist_fwd_cpu(x, y, k, save)
        assert torch.equal(d, d0)  # the saved A changes nothing in the distances
        assert (d[:, 3, 3] == 0).all(), save
        assert _relerr(d, exp) < (1e-3 if dtype == torch.float32 else 1e-9), save
        if save:
            torch.testing.assert_close(A.double(), A_exp, rtol=1e-4 if dtype == torch.float32 else 1e-9,
                                       atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kval", [-1.0, 0.7, 0.0])
def test_cdist_cpu_backward_recomputes_A(dtype, kval):
    """cdist_bwd_cpu with an empty A (the CPU forward no longer saves it) recomputes A per block of rows: the same
    gradients as from the forward's saved A, close pairs (taken out of the GEMMs) and duplicates included, for x,
    y and k; and the autograd path (which passes the empty A) matches the float64 reference."""
    C = geoops._backend.compiled()
    x = _ball(2, 45, 9, k=-1.0, frac=0.9, seed=82).to(dtype)
    y = torch.cat([_ball(2, 30, 9, k=-1.0, frac=0.9, seed=83).to(dtype), x[:, :6] * (1 - 1e-5)], 1)
    y[:, 3] = x[:, 3]
    k = torch.tensor([kval, kval / 2], dtype=dtype)
    d, A = C.cdist_fwd_cpu(x, y, k, True)
    assert A.shape == d.shape
    g = torch.randn(d.shape, generator=torch.Generator().manual_seed(84), dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-12)
    for mask in (7, 1, 2, 4):
        saved = C.cdist_bwd_cpu(g, x, y, k, A, d, mask)
        recomputed = C.cdist_bwd_cpu(g, x, y, k, x.new_empty(0), d, mask)
        for a, b in zip(saved, recomputed):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, **tol)
    d2, A2 = torch.ops.geoops.cdist_fwd(x, y, k, True)
    assert A2.numel() == 0 and torch.equal(d2, d)
    xs, ys, ks = (t.detach().double().requires_grad_() for t in (x, y, k))
    exp = torch.autograd.grad(ref.cdist(xs, ys, k=ks.reshape(-1, 1, 1)), (xs, ys, ks), g.double())
    xg, yg, kg = (t.detach().clone().requires_grad_() for t in (x, y, k))
    got = torch.autograd.grad(gs.cdist(xg, yg, k=kg.reshape(-1, 1, 1)), (xg, yg, kg), g)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a.double(), b, rtol=1e-3 if dtype == torch.float32 else 1e-9,
                                   atol=1e-3 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("kval", [-1.0, 0.7, 0.0])
def test_cdist_cpu_packed_gemm_and_mm_paths(kval, monkeypatch):
    """float32 CPU cdist: the MKL packed-SGEMM path (y packed once per call, forward and backward; used when torch
    exports cblas_sgemm_pack/compute) and the at::mm fallback (GEOOPS_MKL_PACKED=0) both match the float64
    reference, with a partial last row block, close pairs and exact zeros for duplicates; forward and x/y/k
    gradients of the two paths agree to rounding.  M = 1005: backward row blocks of 130 rows, so 150 rows make
    two with a partial last one."""
    C = geoops._backend.compiled()
    import platform
    if platform.machine() in ("x86_64", "AMD64") and hasattr(torch._C, "has_mkl") and torch._C.has_mkl:
        assert C.mkl_packed_available()  # torch's x86 MKL build exports the packed API
    x = _ball(2, 150, 17, k=-1.0, frac=0.9, seed=90, dtype=torch.float32)  # 150 rows: blocks of 64 with a partial last one
    y = torch.cat([_ball(2, 1000, 17, k=-1.0, frac=0.9, seed=91, dtype=torch.float32), x[:, :5] * (1 - 1e-5)], 1)
    y[:, 3] = x[:, 3]
    k = torch.tensor([kval, kval / 2])
    g = torch.randn(2, 150, 1005, generator=torch.Generator().manual_seed(92))
    xr, yr, kr = (t.clone().double().requires_grad_() for t in (x, y, k))  # the reference's gradients, for both modes
    dr = _ref64(xr, yr, kr.reshape(-1, 1, 1))
    ref = dr.detach()
    mask = torch.ones_like(dr, dtype=torch.bool)
    mask[:, :5, 1000:1005] = False  # near-duplicate pairs: the reference's gradient is ill-conditioned there
    mask[:, 3, 3] = False
    (dr * g.double() * mask).sum().backward()
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("GEOOPS_MKL_PACKED", mode)
        d, A = C.cdist_fwd_cpu(x, y, k, False)
        assert _relerr(d, ref) < 1e-3, mode
        assert (d[:, 3, 3] == 0).all(), mode
        results[mode] = (d,) + tuple(C.cdist_bwd_cpu(g, x, y, k, A, d, 7))
        # the kernel's gradients over the well-conditioned pairs only (the masked cotangent)
        dx, dy, dk = C.cdist_bwd_cpu(g * mask, x, y, k, A, d, 7)
        for got, exp in ((dx, xr.grad), (dy, yr.grad), (dk, kr.grad)):
            torch.testing.assert_close(got.double(), exp, rtol=2e-3, atol=2e-3 * exp.abs().max().item())
    for a, b in zip(results["1"], results["0"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kval", [-1.0, -0.3, 0.7, 0.0])
def test_cdist_cpu_bwd_fused_f32_matches_two_pass(kval, monkeypatch):
    """float32 CPU cdist backward: the fused AVX-512 pass (session 20: A, the close test and W in one vectorised pass,
    W written over the block's GEMM output; dy accumulated as dy^T = x_blk^T W_blk; groups handed out one at a time)
    and the two-pass path (fill_A_row + bwd_row, GEOOPS_CDIST_F32_EPI=v1, the other builds' path) give the same x, y
    and k gradients to rounding, and both match the float64 reference.  M = 1005 (a 13-lane tail), 150 rows (row
    blocks with a partial last one), close pairs (near-duplicates and an exact duplicate, whose gradient is 0-safe),
    zeros in the cotangent, points near the boundary; 1 and 2 threads give the same bits."""
    C = geoops._backend.compiled()
    x = _ball(2, 150, 17, k=-1.0, frac=0.9, seed=190, dtype=torch.float32)
    radius = 1 / abs(kval) ** 0.5 if kval < 0 else 1.0
    x[:, 7] = x[:, 7] / x[:, 7].norm(dim=-1, keepdim=True) * (radius * (1 - 1e-4))  # near batch 0's boundary
    y = torch.cat([_ball(2, 1000, 17, k=-1.0, frac=0.9, seed=191, dtype=torch.float32), x[:, :5] * (1 - 1e-5)], 1)
    y[:, 3] = x[:, 3]
    if kval > 0:
        x, y = x * 0.5, y * 0.5
    k = torch.tensor([kval, kval / 2])
    g = torch.randn(2, 150, 1005, generator=torch.Generator().manual_seed(192))
    g[:, 1, 1000] = 0.0  # a close pair with a zero cotangent
    d, A = C.cdist_fwd_cpu(x, y, k, False)
    res = {}
    for epi in ("v2", "v1"):
        monkeypatch.setenv("GEOOPS_CDIST_F32_EPI", epi)
        res[epi] = C.cdist_bwd_cpu(g, x, y, k, A, d, 7)
        assert all(torch.isfinite(t).all() for t in res[epi]), epi
    for a, b in zip(res["v2"], res["v1"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    monkeypatch.delenv("GEOOPS_CDIST_F32_EPI")
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = C.cdist_bwd_cpu(g, x, y, k, A, d, 7)
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one, res["v2"]):
        assert torch.equal(a, b)
    xr, yr, kr = (t.clone().double().requires_grad_() for t in (x, y, k))
    dr = _ref64(xr, yr, kr.reshape(-1, 1, 1))
    mask = torch.ones_like(dr, dtype=torch.bool)
    mask[:, :5, 1000:1005] = False  # near-duplicates: the reference's gradient is ill-conditioned there
    mask[:, 3, 3] = False
    (dr * g.double() * mask).sum().backward()
    dx, dy, dk = C.cdist_bwd_cpu(g * mask, x, y, k, A, d, 7)
    for got, exp in ((dx, xr.grad), (dy, yr.grad), (dk, kr.grad)):
        torch.testing.assert_close(got.double(), exp, rtol=2e-3, atol=2e-3 * exp.abs().max().item())


@pytest.mark.parametrize("kval", [-1.0, -0.3, -4.0])
@pytest.mark.parametrize("epi", ["v2", "v1"])
def test_cdist_fp32_ball_epilogue_log_worst_inputs(kval, epi, monkeypatch):
    """The float k < 0 forward's logarithm at its worst inputs (the AVX-512 epilogue `v2`: vgetexp/vgetmant,
    a degree-7 polynomial of log1p(f)/f, u itself where w = 1 + u < 2; `v1` the other builds' epilogue, selected by
    GEOOPS_CDIST_F32_EPI): points of y at distances from the origin with u = t + sqrt(t (t + 2)) from 1e-7 to ~1e7,
    crowded around w = 2^e (the edges of the range reduction) and u = 1, against the origin, random points and
    themselves: relative error <= 1e-6 against the float64 reference where p_x p_y >= 1e-6 (v2 measured 3.7e-7;
    v1 2e-5: its correction term takes 1/w from rcp14, ~1e-5 off at w = 1, i.e. for distances below ~6e-8).
    Rows whose p_x p_y reaches the clamp (points at 1 - 1e-5 of the radius) take the clamped variant and agree with
    v1; a NaN in a row propagates to that row only; x against itself gives exact zeros."""
    monkeypatch.setenv("GEOOPS_CDIST_F32_EPI", epi)
    kval = float(torch.tensor(kval, dtype=torch.float32))  # the kernel's k (p_y ~ 1e-6 at the boundary: k to 1e-8 matters)
    c = -kval
    D = 16
    g = torch.Generator().manual_seed(21)
    us = torch.cat([torch.logspace(-7, 7, 300, dtype=torch.float64),
                    (2.0 ** torch.arange(0, 22, dtype=torch.float64)) - 1,  # w = 2^e exactly
                    torch.tensor([0.25, 1 - 2 ** -20, 1 + 2 ** -20, 3 - 1e-6, 3 + 1e-6, 0.4142135, 0.4142136],
                                 dtype=torch.float64)])
    # |y| with d(0, y) = log1p(u)/sqrt(c): sqrt(c)|y| = tanh(log1p(u)/2)
    r = torch.tanh(torch.log1p(us) / 2) / math.sqrt(c)
    v = torch.randn(us.numel(), D, generator=g, dtype=torch.float64)
    y = (v / v.norm(dim=-1, keepdim=True) * r[:, None]).float()
    x = torch.cat([torch.zeros(1, D), _ball(20, D, k=kval, frac=0.99, seed=22).float(), y[::37]])
    out = gs.cdist(x, y, k=kval)
    exp = _ref64(x, y, kval)
    px, py = (1 - c * t.double().pow(2).sum(-1) for t in (x, y))
    ok = (px[:, None] * py[None, :] >= 1e-6) & (exp > 0)  # away from the clamp of p_x p_y (1e-7)
    assert ok.sum() > 8000 and (out[exp == 0] == 0).all()
    assert _relerr(out[ok], exp[ok]) < (1e-6 if epi == "v2" else 2e-5)
    # the clamp of p_x p_y (points at 1 - 1e-5 of the radius): the same values as the v1 epilogue
    b = torch.randn(8, D, generator=g, dtype=torch.float64)
    b = (b / b.norm(dim=-1, keepdim=True) * (1 - 1e-5) / math.sqrt(c)).float()
    xb = torch.cat([b, x[:4]])
    out_b = gs.cdist(xb, torch.cat([b.flip(0), y[:40]]), k=kval)
    monkeypatch.setenv("GEOOPS_CDIST_F32_EPI", "v1")
    ref_b = gs.cdist(xb, torch.cat([b.flip(0), y[:40]]), k=kval)
    monkeypatch.setenv("GEOOPS_CDIST_F32_EPI", epi)
    assert torch.isfinite(out_b).all()
    nz = ref_b > 0
    assert (out_b[~nz] == 0).all() and _relerr(out_b[nz], ref_b[nz]) < 2e-5
    # NaN propagation (a NaN coordinate poisons its row, nothing else) and exact zeros on the diagonal
    xn = x.clone()
    xn[3, 5] = float("nan")
    out_n = gs.cdist(xn, y, k=kval)
    assert out_n[3].isnan().all() and not out_n[torch.arange(len(x)) != 3].isnan().any()
    assert (gs.cdist(y, y, k=kval).diagonal() == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3000, 1100, 17, 9), (40, 30, 200, 5)], ids=["many-blocks", "one-block"])
def test_pairwise_gradients_independent_of_thread_count(dtype, shape):
    """cdist's dy / dk and mobius_matvec's dm were summed per thread in completion order (and a lone block's
    GEMM ran on MKL's threads): their bits changed with the number of threads."""
    N, M, D, Do = shape
    g = torch.Generator().manual_seed(47)
    x0 = (torch.rand(N, D, generator=g) * 0.2 / D ** 0.5).to(dtype)
    y0 = (torch.rand(M, D, generator=g) * 0.2 / D ** 0.5).to(dtype)
    m0 = (torch.randn(Do, D, generator=g) * 0.3).to(dtype)
    prev = torch.get_num_threads()
    runs = []
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            x, y, m = (t.clone().requires_grad_() for t in (x0, y0, m0))
            k = torch.tensor(-1.0, dtype=dtype, requires_grad=True)
            gs.cdist(x, y, k=k).sum().backward()
            z = gs.mobius_matvec(m, x, k=-1.0)
            (z * z).sum().backward()
            runs.append([x.grad, y.grad, k.grad, m.grad])
    finally:
        torch.set_num_threads(prev)
    for other in runs[1:]:
        for name, a, b in zip(("dx", "dy", "dk", "dm"), runs[0], other):
            assert torch.equal(a, b), name



# ---------------------------------------------------------------- mobius_blockdiag_matvec: the fused CPU op (H4G)
# (nb, Do, Di): the lane kernel (small blocks, odd sizes, one block, more outputs than inputs) and the GEMM route
# (both sides >= 32)
BD_SHAPES = [(8, 8, 8), (16, 4, 4), (3, 5, 7), (1, 6, 3), (4, 2, 9), (2, 33, 40), (1, 32, 32), (1, 64, 65)]


def _bd_inputs(nb, do, di, rows=(5, 7), dtype=torch.float64, seed=80):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(nb, do, di, generator=g, dtype=torch.float64) / di ** 0.5
    x = torch.randn(*rows, nb * di, generator=g, dtype=torch.float64) * 0.4 / (nb * di) ** 0.5
    return blocks.to(dtype), x.to(dtype)


@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
@pytest.mark.parametrize("shape", BD_SHAPES)
def test_mobius_blockdiag_matvec_matches_dense_route(shape, kval):
    blocks, x = _bd_inputs(*shape, rows=(3, 23))  # 69 rows: several lane tiles and a ragged last one
    x[0, :2] = 0  # x = 0 rows
    blocks, x = blocks.requires_grad_(), x.requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    gr = torch.randn(3, 23, shape[0] * shape[1], generator=torch.Generator().manual_seed(81), dtype=torch.float64)
    out = gs.mobius_blockdiag_matvec(blocks, x, k=k)
    exp = gs.mobius_matvec(torch.block_diag(*blocks), x, k=k)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-14)
    assert (out[0, :2] == 0).all()
    for a, b in zip(torch.autograd.grad((out * gr).sum(), (blocks, x, k)),
                    torch.autograd.grad((exp * gr).sum(), (blocks, x, k))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ["0", "1"], ids=["lanes", "gemm"])
@pytest.mark.parametrize("shape", [(8, 8, 8), (3, 5, 7), (2, 33, 40), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mobius_blockdiag_matvec_forced_routes(shape, route, dtype, monkeypatch):
    # both CPU routes on every shape (GEOOPS_BLOCKDIAG_GEMM), per-row k, against the composed reference backend
    monkeypatch.setenv("GEOOPS_BLOCKDIAG_GEMM", route)
    blocks, x = _bd_inputs(*shape, rows=(2, 150), seed=89)
    k = torch.rand(2, 150, 1, generator=torch.Generator().manual_seed(90), dtype=torch.float64) * 1.5 - 1.0
    gr = torch.randn(2, 150, shape[0] * shape[1], generator=torch.Generator().manual_seed(91), dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    res = _cpp_and_reference(lambda b_, x_, k_: gs.mobius_blockdiag_matvec(b_, x_, k=k_), (blocks, x, k), gr, dtype)
    for i, (a, b) in enumerate(zip(*res)):
        # fp64 gradients to 1e-8: the reference's closed-form derivatives switch to the series at another |z|
        torch.testing.assert_close(a, b, **(dict(rtol=1e-8, atol=1e-10) if i and dtype == torch.float64 else tol))


@needs_geoopt
@pytest.mark.parametrize("kval", [-1.0, 1e-4, 0.7])
def test_mobius_blockdiag_matvec_matches_geoopt(kval):
    blocks, x = _bd_inputs(3, 4, 5, rows=(2, 9), seed=82)
    blocks, x = blocks.requires_grad_(), x.requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    ours = gs.mobius_blockdiag_matvec(blocks, x, k=k)
    theirs = gm.mobius_matvec(torch.block_diag(*blocks), x, k=k)
    _assert_matches_geoopt(ours, theirs, (blocks, x, k))


@pytest.mark.parametrize("shape", [(3, 2, 3), (2, 32, 33)])
@pytest.mark.parametrize("kval", [-1.0, 0.0, 0.7])
def test_mobius_blockdiag_matvec_gradcheck_and_exact_zero(shape, kval):
    blocks, x = _bd_inputs(*shape, rows=(4,), seed=83)
    blocks, x = blocks.requires_grad_(), x.requires_grad_()
    k = torch.tensor(kval, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b, c: gs.mobius_blockdiag_matvec(a, b, k=c), (blocks, x, k))
    kr = torch.linspace(-1, 0.5, 4, dtype=torch.float64).reshape(4, 1).requires_grad_()  # one k per row
    assert gradcheck(lambda a, b, c: gs.mobius_blockdiag_matvec(a, b, k=c), (blocks, x, kr))
    z = torch.zeros_like(blocks)
    assert (gs.mobius_blockdiag_matvec(z, x, k=k) == 0).all()
    assert (gs.mobius_blockdiag_matvec(blocks, torch.zeros_like(x), k=k) == 0).all()


@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 4, 4), (3, 5, 7), (2, 33, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mobius_blockdiag_matvec_low_precision_within_twice_eager(shape, dtype):
    # |ours - fp64| <= 2 |eager dense route in dtype - fp64| + floor, forward and the gradients
    blocks, x = _bd_inputs(*shape, rows=(300,), seed=84)
    g = torch.randn(300, shape[0] * shape[1], generator=torch.Generator().manual_seed(85), dtype=torch.float64)
    k = -1.0

    def run(fn, dt, be):
        b_, x_ = blocks.to(dt).requires_grad_(), x.to(dt).requires_grad_()
        with geoops.use_backend(be):
            o = fn(b_, x_)
            gb, gx = torch.autograd.grad((o * g.to(dt)).sum(), (b_, x_))
        return [t.double() for t in (o, gb, gx)]

    ours = run(lambda b_, x_: gs.mobius_blockdiag_matvec(b_, x_, k=k), dtype, "cpp")
    eager = run(lambda b_, x_: ref.mobius_matvec(torch.block_diag(*b_), x_, k=torch.tensor(k, dtype=x_.dtype)),
                dtype, "reference")
    exact = run(lambda b_, x_: ref.mobius_matvec(torch.block_diag(*b_), x_, k=torch.tensor(k, dtype=x_.dtype)),
                torch.float64, "reference")
    floor = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for name, o, e, t in zip(("out", "dblocks", "dx"), ours, eager, exact):
        err, err_ref = (o - t).abs().max().item(), (e - t).abs().max().item()
        assert err <= 2 * err_ref + floor * t.abs().max().item(), (name, err, err_ref)
    assert gs.mobius_blockdiag_matvec(blocks.to(dtype), x.to(dtype), k=k).dtype == dtype


def test_mobius_blockdiag_matvec_opcheck_compile_and_reference_backend():
    blocks, x = _bd_inputs(3, 2, 4, rows=(7,), seed=86)
    for k in (torch.tensor([-1.0], dtype=torch.float64), torch.linspace(-1, 0.5, 7, dtype=torch.float64)):
        torch.library.opcheck(torch.ops.geoops.mobius_blockdiag_matvec_fwd.default, (x, blocks, k))
        out, st = torch.ops.geoops.mobius_blockdiag_matvec_fwd(x, blocks, k)
        gr = torch.randn(7, 6, generator=torch.Generator().manual_seed(87), dtype=torch.float64)
        for mask in (1, 2, 4, 7):
            torch.library.opcheck(torch.ops.geoops.mobius_blockdiag_matvec_bwd.default,
                                  (gr, x, blocks, k, out, st, mask))
    xf, bf = x.float(), blocks.float()
    fn = torch.compile(lambda a, b: gs.mobius_blockdiag_matvec(a, b, k=torch.tensor(-1.0)), fullgraph=True,
                       backend="aot_eager")
    torch.testing.assert_close(fn(bf, xf), gs.mobius_blockdiag_matvec(bf, xf, k=-1.0))
    with geoops.use_backend("reference"):  # the composed route (other devices)
        b_, x_ = blocks.clone().requires_grad_(), x.clone().requires_grad_()
        o = gs.mobius_blockdiag_matvec(b_, x_, k=-0.5)
        gref = torch.autograd.grad(o.sum(), (b_, x_))
    b2, x2 = blocks.clone().requires_grad_(), x.clone().requires_grad_()
    o2 = gs.mobius_blockdiag_matvec(b2, x2, k=-0.5)
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(o2.sum(), (b2, x2)), gref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    f = torch.func.grad(lambda x_: gs.mobius_blockdiag_matvec(blocks, x_, k=-0.5).sum())  # transforms: composed
    torch.testing.assert_close(f(x), gref[1], rtol=1e-10, atol=1e-12)


def test_mobius_blockdiag_matvec_empty_and_bad_input():
    blocks, x = _bd_inputs(2, 3, 4, rows=(0,))
    out = gs.mobius_blockdiag_matvec(blocks.requires_grad_(), x.requires_grad_(), k=-1.0)
    assert out.shape == (0, 6)
    out.sum().backward()
    assert blocks.grad is not None and (blocks.grad == 0).all() and x.grad.shape == (0, 8)
    assert gs.mobius_blockdiag_matvec(torch.zeros(0, 3, 4), torch.zeros(5, 0), k=-1.0).shape == (5, 0)
    b, x = _bd_inputs(2, 3, 4, rows=(5,))
    with pytest.raises(ValueError, match="blocks must be"):
        gs.mobius_blockdiag_matvec(b[0], x, k=-1.0)
    with pytest.raises(ValueError, match="x must have n_blocks"):
        gs.mobius_blockdiag_matvec(b, x[:, :7], k=-1.0)
    with pytest.raises(TypeError, match="blocks must be a floating-point"):
        gs.mobius_blockdiag_matvec(b.long(), x, k=-1.0)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        gs.mobius_blockdiag_matvec(b, x.long(), k=-1.0)
    with pytest.raises(ValueError, match="k of shape"):
        gs.mobius_blockdiag_matvec(b, x, k=torch.zeros(4, 1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 8, 8), (2, 40, 32)], ids=["lanes", "gemm"])
def test_mobius_blockdiag_matvec_bits_independent_of_thread_count(dtype, shape):
    blocks0, x0 = _bd_inputs(*shape, rows=(2100,), dtype=dtype, seed=88)
    prev = torch.get_num_threads()
    runs = []
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            b, x = blocks0.clone().requires_grad_(), x0.clone().requires_grad_()
            k = torch.tensor(-1.0, dtype=dtype, requires_grad=True)
            z = gs.mobius_blockdiag_matvec(b, x, k=k)
            (z * z).sum().backward()
            runs.append([z, b.grad, x.grad, k.grad])
    finally:
        torch.set_num_threads(prev)
    for other in runs[1:]:
        for name, a, b in zip(("out", "dblocks", "dx", "dk"), runs[0], other):
            assert torch.equal(a, b), name
