"""Session 35 numerical trial (helper "numhunt"): geoops.stereographic at the edges of the math, one test per defect."""
from __future__ import annotations

import math

import pytest
import torch

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

D64 = torch.float64


def _sphere_pts(n, D, radius, seed):
    """n points of norm exactly `radius` (float64) in random directions."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, D, generator=g, dtype=D64)
    return v / v.norm(dim=-1, keepdim=True) * radius


def _relerr(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


# ---------------------------------------------------------------- cdist near the ball's boundary
@pytest.mark.parametrize("epi", ["v2", "v1"])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("kval", [-1.0, -0.3])
@pytest.mark.parametrize("D", [3, 17])
def test_cdist_fp32_points_near_the_boundary(monkeypatch, epi, grad, kval, D):
    """cdist clamped p_x p_y (not each p) at 1e-7 in float32: pairs of points at 1 - 1e-4 .. 1 - 1e-6 of the radius,
    inside the ball, had distances 5-37 % short (18.9 instead of 33.3 for an antipodal pair), unlike the row op
    dist, knn's distances and the docstring (p clamped at 1e-7, relative error below 1e-3 near the boundary)."""
    monkeypatch.setenv("GEOOPS_CDIST_F32_EPI", epi)
    r = 1 / math.sqrt(-kval)
    x = torch.cat([_sphere_pts(6, D, r * f, seed=1) for f in (1 - 1e-4, 1 - 1e-5, 1 - 1e-6)]).float()
    y = torch.cat([-x, _sphere_pts(9, D, r * (1 - 1e-5), seed=2).float(), x[:3]])
    kf = float(torch.tensor(kval, dtype=torch.float32))
    assert ((1 + kf * x.double().square().sum(-1)) > 1e-7).all()  # inside the ball, above the per-point clamp
    xi = x.clone().requires_grad_(grad)
    out = gs.cdist(xi, y, k=kval).detach()
    exp = ref.cdist(x.double(), y.double(), k=torch.tensor(kf, dtype=D64))
    assert _relerr(out, exp) < 1e-3
    d, idx = gs.knn(x, y, 5, k=kval)  # knn's distances are the row op's: the same pairs, the same numbers
    torch.testing.assert_close(d, out.gather(1, idx), rtol=1e-4, atol=0)
    row = gs.dist(x[:, None], y[None], k=torch.tensor(kval))
    torch.testing.assert_close(out, row, rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("grad", [False, True])
def test_cdist_nan_curvature_gives_nan(dtype, grad):
    """A NaN k (a learnable curvature that blew up) fell into cdist's k = 0 branch (neither k < 0 nor k > 0): finite
    Euclidean distances 2|x - y| instead of NaN, unlike dist, knn's distances and the reference."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 5, 4, generator=g, dtype=D64) * 0.2).to(dtype)
    y = (torch.randn(2, 6, 4, generator=g, dtype=D64) * 0.2).to(dtype)
    k = torch.tensor([float("nan"), -1.0], dtype=dtype).reshape(2, 1, 1)
    out = gs.cdist(x.clone().requires_grad_(grad), y, k=k)
    assert out[0].isnan().all()
    assert torch.isfinite(out[1]).all()
    assert gs.cdist(x[0], y[0], k=float("nan")).isnan().all()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_reconstruction_metrics_non_finite_embedding_is_nan(backend):
    """reconstruction_metrics ranks by IEEE comparisons, where a NaN distance is never "closer": an all-NaN embedding
    or a NaN curvature scored a perfect (mean rank 1.0, MAP 1.0), and one NaN row improved the scores (13.9 / 0.16
    -> 12.7 / 0.23 here) -- a diverged model looked better.  Now (nan, nan) when x or k is not finite."""
    import geoops
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g) * 0.3
    edges = torch.randint(0, 30, (60, 2), generator=g)
    with geoops.use_backend(backend):
        clean = gs.reconstruction_metrics(x, edges, k=-1.0)
        assert all(math.isfinite(v) for v in clean)
        xn = x.clone()
        xn[3, 1] = float("nan")
        for args in ((xn, -1.0), (torch.full_like(x, float("nan")), -1.0), (x, float("nan")), (xn * float("inf"), -1.0)):
            got = gs.reconstruction_metrics(args[0], edges, k=args[1])
            assert all(math.isnan(v) for v in got), got


# ---------------------------------------------------------------- antipode of points near the origin
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("dtype, scales", [(D64, [1e-8, 1e-10, 1e-20, 1e-150]), (torch.float32, [1e-8, 1e-10, 1e-18])])
def test_antipode_sphere_near_the_origin(backend, dtype, scales):
    """antipode on the sphere divided by max(k|x|^2, 1e-15): points within ~3e-8 of the origin (k = 1) got -x * 1e15
    instead of -x / (k|x|^2) -- |x| = 1e-8 gave 1e7 for 1e8, 1e-10 gave 1e5 for 1e10 (nearer points mapped nearer
    the origin).  Now -(x/|x|) / (k|x|) (no |x|^2 to underflow); x = 0 still gives 0."""
    import geoops
    x = torch.cat([_sphere_pts(1, 3, s, seed=9) for s in scales] + [torch.zeros(1, 3, dtype=D64)]).to(dtype)
    k = torch.tensor(0.7, dtype=dtype)
    xr = x.clone().requires_grad_()
    with geoops.use_backend(backend):
        got = gs.antipode(xr, k=k)
        (g,) = torch.autograd.grad(got[:-1].sum(), xr)
    xd = x.double()
    want = -xd / (0.7 * xd.square().sum(-1, keepdim=True))
    want[-1] = 0
    torch.testing.assert_close(got.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    assert torch.isfinite(g[:-1]).all() or dtype == torch.float32  # (float32: 1/(k|x|^2) of 1e-18 overflows)


# ---------------------------------------------------------------- known, written up (strict xfails)
@pytest.mark.xfail(strict=True, reason="logmap's kernels form (-x) (+) y as (k|x-y|^2 x - (1 + k|x|^2)(x - y)) / den, "
                   "whose x terms cancel when k|x|^2 >> 1 (k > 0, x far out on the projected sphere): error ~ "
                   "k|x|^2 ulps (float32 |x| = 100: 2e-5, 60x the eager float32 reference's).  A fix needs a per-row "
                   "choice of the a x + b y form in every forward path (double lanes, float register / block paths, "
                   "CUDA, Triton) and the backward: written up, session 35")
@pytest.mark.parametrize("dtype, floor", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_logmap_sphere_far_points(dtype, floor):
    g = torch.Generator().manual_seed(5)
    x = _sphere_pts(64, 8, 100.0, seed=6).to(dtype)
    y = (torch.randn(64, 8, generator=g, dtype=D64) * 0.3).to(dtype)
    k = torch.tensor(1.0, dtype=dtype)
    exp = ref.logmap(x.double(), y.double(), k=k.double())
    err = lambda t: ((t.double() - exp).norm(dim=-1) / exp.norm(dim=-1)).max().item()  # noqa: E731
    assert err(gs.logmap(x, y, k=k)) <= 2 * err(ref.logmap(x, y, k=k)) + floor


@pytest.mark.xfail(strict=True, reason="k^2 |x|^2 |y|^2 is formed as (k k) |x|^2 |y|^2 in the kernels and the reference: "
                   "k k underflows for |k| < ~1e-154 (float64), so points at the scale of such a ball (|x| ~ 1/sqrt|k| "
                   "~ 1e150) lose the term (mobius_add / dist off by O(1)); only at curvatures no model reaches: "
                   "written up, session 35")
def test_tiny_curvature_scale_invariance():
    s = 2.0 ** 500  # k = 2^-1000 is k = 1 seen at the scale s = 1/sqrt(k): exact in binary
    x = _sphere_pts(4, 5, 0.5, seed=7)
    y = -_sphere_pts(4, 5, 0.7, seed=8)
    for kk in (1.0, -1.0):
        k, ks = torch.tensor(kk, dtype=D64), torch.tensor(kk * 2.0 ** -1000, dtype=D64)
        torch.testing.assert_close(gs.mobius_add(x * s, y * s, k=ks), gs.mobius_add(x, y, k=k) * s, rtol=1e-12, atol=0)
        torch.testing.assert_close(gs.dist(x * s, y * s, k=ks), gs.dist(x, y, k=k) * s, rtol=1e-12, atol=0)
