"""Triton backend of the Poincaré layer family (geoops.kernels.poincare), small and odd shapes.

Op by op against the contract's eager reference evaluated in float64 (geoops._ops.poincare._Reference:
geoops.reference.poincare, backward by autograd): values and every gradient of the fc layer (with and
without bias, tangent rows, both projection branches), the fused ReLU, the midpoint sums, the batch norm
row pass and the patch gather; empty inputs; then the public functions (forced to the triton backend by
conftest) against the same reference, and the fp32 GEMM staying IEEE when TF32 is switched on.
"""
import pytest
import torch

pytest.importorskip("triton")

import geoops.poincare as gp  # noqa: E402
from geoops._ops.poincare import _Reference as R  # noqa: E402
from geoops.kernels import poincare as P  # noqa: E402
from geoops.reference import poincare as ref  # noqa: E402

TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _ball(N, D, c, radius, g, dtype=torch.float64):
    """N points of the ball of curvature -c with norms up to radius/sqrt(c)."""
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(N, 1, generator=g, dtype=torch.float64) * radius / c ** 0.5
    return (x * r).to(dtype)


def _close(a, b, dtype, what):
    a64, b64 = a.detach().cpu().to(torch.float64), b.detach().cpu().to(torch.float64)
    scale = b64.abs().max().clamp_min(1.0) if b64.numel() else 1.0
    err = (a64 - b64).abs().max().item() / float(scale) if b64.numel() else 0.0
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]}"


def _c(val, dtype=torch.float64):
    return torch.tensor(val, dtype=dtype)


# ---------------------------------------------------------------- fully connected
# (9, 16, 300): two 256-wide column chunks (m = 300), 9 row programs of one row in float64 (two sweeps of the
# column finish's 8 partials, the second partial), 4 + 4 + 1 rows in float32; 37 rows took the same paths at ~4x
# the interpreter's time (session 53; several row-prologue programs: the large-distance tests)
_BIG_FC = (9, 16, 300)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,n,m", [(1, 3, 5), (7, 9, 33), _BIG_FC, (0, 4, 6)])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("tangent", [False, True])
def test_fc_vs_reference(dtype, N, n, m, has_bias, tangent, device):
    g = torch.Generator().manual_seed(N * 1000 + n * 10 + m)
    c = _c(0.7)
    x = _ball(N, n, 0.7, 0.9, g) if not tangent else torch.randn(N, n, generator=g, dtype=torch.float64) * 0.7
    z = torch.randn(n, m, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(m, generator=g, dtype=torch.float64) * 0.3 if has_bias else None
    eps = ref.default_eps(dtype)
    yr, _ = R.poincare_fc_fwd(x, z, b, c, eps, False, tangent)
    gout = torch.randn(N, m, generator=g, dtype=torch.float64)
    gr = R.poincare_fc_bwd(gout, x, z, b, c, x.new_empty(0), eps, 15, tangent)
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    y, t = P.poincare_fc_fwd(cast(x), cast(z), cast(b), cast(c), eps, True, tangent)
    _close(y, yr, dtype, "y")
    gk = P.poincare_fc_bwd(cast(gout), cast(x), cast(z), cast(b), cast(c), t, eps, 15, tangent)
    for name, a, r in zip(("dx", "dz", "db", "dc"), gk, gr):
        if name == "db" and b is None:
            assert a.numel() == 0
            continue
        _close(a, r.reshape(a.shape), dtype, name)
    # recomputed t (save=False) and a partial mask give the same gradients
    gk2 = P.poincare_fc_bwd(cast(gout), cast(x), cast(z), cast(b), cast(c), cast(x.new_empty(0)), eps, 1, tangent)
    _close(gk2[0], gk[0], dtype, "dx (mask 1)")
    assert gk2[1].numel() == 0 and gk2[3].numel() == 0


def _projection_case():
    """Rows of 6 -> 7 whose outputs land beyond the margin (large curvature, big z): (g, x, z, b, c, eps)."""
    g = torch.Generator().manual_seed(3)
    x = _ball(11, 6, 2.0, 0.99, g)
    z = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    b = torch.randn(7, generator=g, dtype=torch.float64)
    return g, x, z, b, _c(2.0), 1e-5


def test_fc_projection_branch(device):
    """Rows whose output lands beyond the margin take the projection's gradient (large curvature, big z)."""
    g, x, z, b, c, eps = _projection_case()
    yr, _ = R.poincare_fc_fwd(x, z, b, c, eps, False, False)
    assert (yr.norm(dim=1) >= (1 - eps) / 2 ** 0.5 - 1e-9).any()
    dev = [a.to(device) for a in (x, z, b, c)]
    y, t = P.poincare_fc_fwd(*dev, eps, True, False)
    _close(y, yr, torch.float64, "y")
    gout = torch.randn(11, 7, generator=g, dtype=torch.float64)
    for a, r in zip(P.poincare_fc_bwd(gout.to(device), *dev, t, eps, 15, False),
                    R.poincare_fc_bwd(gout, x, z, b, c, t.cpu(), eps, 15, False)):
        _close(a, r.reshape(a.shape), torch.float64, "grad")


# ---- large hyperplane distances and offsets (tests/test_poincare_overflow.py's cases on the Triton kernels)
def _near_columns(n, m, scale, g, bias_angle=0.0, c=1.0):
    """z (n, m): columns of norm ~scale pointing nearly one way (several outputs of a row near its largest
    distance); bias (m,) of offset angles 2 sc r within +-0.4, or of magnitude bias_angle with both signs."""
    d = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = d / d.norm() + 0.05 * torch.randn(n, m, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=0) * scale * (1 + 0.02 * torch.rand(m, generator=g, dtype=torch.float64))
    ang = 0.01 * torch.randn(m, generator=g, dtype=torch.float64)
    if bias_angle:
        sign = torch.where(torch.arange(m) % 2 == 0, 1.0, -1.0).to(torch.float64)
        ang = sign * bias_angle * (1 + 0.3 * torch.rand(m, generator=g, dtype=torch.float64))
        ang[::5] = 0.3  # ordinary columns in the same layer
    return z, ang / (2 * c ** 0.5)


def _fc_vals_grads(fc_fwd, fc_bwd, x, z, b, c, gout, eps):
    y, t = fc_fwd(x, z, b, c, eps, True, False)
    return [y] + list(fc_bwd(gout, x, z, b, c, t, eps, 15, False))


def _check_2x(ours, truth, same, label):
    """Finite, and within 2x the same-dtype reference's error of the float64 truth plus a floor (1e-9 / 1e-5 of
    the tensor's largest entry)."""
    for name, o, t, r in zip(("y", "dx", "dz", "db", "dc"), ours, truth, same):
        o, t, r = o.detach().cpu().double().reshape(t.shape), t.detach().double(), r.detach().double().reshape(t.shape)
        assert torch.isfinite(o).all(), f"{label}: {name} not finite"
        scale = t.abs().max().item()
        floor = (1e-9 if ours[0].dtype == torch.float64 else 1e-5) * scale + 1e-300
        err, err_ref = (o - t).abs().max().item(), (r - t).abs().max().item()
        assert err <= 2 * err_ref + floor, f"{label}: {name} error {err:.3g} (reference {err_ref:.3g}, scale {scale:.3g})"


# sc * distance up to ~60-90 (float32, beyond the overflow near 44) / ~500-800 (float64, beyond ~355)
_FC_SCALES = {torch.float32: 12.0, torch.float64: 150.0}


def _large_rows(m):
    """Rows of the large-distance cases: 70 (several row programs of 32 / 64 at m = 8, 20); 39 at m = 300 (two
    column chunks; one row a program in float64, 9 x 4 + 3 in float32), where 70 rows cost ~2x the interpreter's
    time for the same paths (session 53).  39: the draws still pass the overflow (the asserts) and, in both
    dtypes, scaled rows have their largest |u| in the second chunk (fewer rows missed a mutant that scales only
    the first chunk's outputs)."""
    return 70 if m < 300 else 39


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [8, 20, 300])
@pytest.mark.parametrize("case", ["distances", "offsets"])
def test_fc_large_distances_and_offsets_vs_reference(dtype, m, case, device):
    """Rows whose largest sc * distance |u| passes 20 take the kernels' scaled form (w = sinh(u)/sinh(T) ...), and
    offsets with |2 sc r| > 20 the scaled column form (a e^-ell): values and all gradients finite and within the
    2x rule of the float64 reference, next to ordinary rows and columns of the same blocks.  The direct formulas
    gave NaN / zeros there (float32 |w|^2 overflows near |u| ~ 44, cosh(2 sc r) near 89)."""
    g = torch.Generator().manual_seed(7 * m + (dtype == torch.float32))
    N, n = _large_rows(m), 16
    cv = 0.8
    c = _c(cv)
    x = _ball(N, n, cv, 0.9, g)
    x[::7] *= 1e-5  # rows near the origin: small distances (direct rows next to scaled ones)
    if case == "distances":
        z, b = _near_columns(n, m, _FC_SCALES[dtype], g, c=cv)
    else:  # |2 sc r| ~ 150-200 (float32: cosh overflows at 89) / 1000-1300 (float64: 710), distances still large
        z, b = _near_columns(n, m, 0.15 if dtype == torch.float32 else 0.4, g,
                             bias_angle=150.0 if dtype == torch.float32 else 1000.0, c=cv)
    u = c.sqrt() * ref.hyperplane_dists(x, z, b, c)
    T = u.abs().amax(dim=1)
    if case == "distances":
        assert (T > 20).any() and (T <= 20).any()  # scaled and direct rows in one launch
        assert T.max().item() > (45 if dtype == torch.float32 else 360)  # beyond the overflow
    else:
        rho = (2 * c.sqrt() * b).abs()
        assert (rho > (89 if dtype == torch.float32 else 710)).any() and (rho < 1).any()
    gout = torch.randn(N, m, generator=g, dtype=torch.float64)
    eps = ref.default_eps(dtype)
    truth = _fc_vals_grads(R.poincare_fc_fwd, R.poincare_fc_bwd, x, z, b, c, gout, eps)
    args = [a.to(dtype) for a in (x, z, b, c, gout)]
    same = _fc_vals_grads(R.poincare_fc_fwd, R.poincare_fc_bwd, *args[:4], args[4], eps)
    dev = [a.to(device) for a in args]
    ours = _fc_vals_grads(P.poincare_fc_fwd, P.poincare_fc_bwd, *dev[:4], dev[4], eps)
    _check_2x(ours, truth, same, f"{case} {dtype} m={m}")


def test_fc_gemm_stays_ieee_under_tf32(monkeypatch, device):
    """With TF32 switched on globally the float32 GEMM runs the IEEE Triton kernel (exact fp32 products)."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(37, 70, generator=g).to(device)
    b = torch.randn(70, 19, generator=g).to(device)
    out = P._mm(a, b, force_ieee=True)
    exact = (a.double() @ b.double())
    assert (out.double() - exact).abs().max().item() < 1e-4
    assert P._mm(a[:0], b, force_ieee=True).shape == (0, 19)


# ---- the fc row passes from t = x @ z and U = |x|^2 (poincare_conv2d's entry) on the fc kernels
def _fc_rows_case(N, n, m, has_bias, tangent, seed, scale=0.5, bias_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    x = _ball(N, n, 0.7, 0.9, g) if not tangent else torch.randn(N, n, generator=g, dtype=torch.float64) * 0.7
    z = torch.randn(n, m, generator=g, dtype=torch.float64) * scale
    b = torch.randn(m, generator=g, dtype=torch.float64) * bias_scale if has_bias else None
    gout = torch.randn(N, m, generator=g, dtype=torch.float64)
    return x, z, b, gout


def _fc_rows_check(t, U, z, b, c, gout, eps, tangent, dtype, device, masks=(15, 14, 10, 6, 2, 4, 8, 0, 1),
                   check=None):
    """Values and every gradient of P.poincare_fc_rows_fwd/bwd (dtype, device) against the float64 reference; the
    outputs a mask leaves out are empty, the others have the contract's shapes and dtypes."""
    yr = R.poincare_fc_rows_fwd(t, U, z, b, c, eps, tangent)
    gr = R.poincare_fc_rows_bwd(gout, t, U, z, b, c, eps, 15, tangent)
    cast = (lambda a: None if a is None else a.to(device=device, dtype=dtype))
    y = P.poincare_fc_rows_fwd(cast(t), cast(U), cast(z), cast(b), cast(c), eps, tangent)
    (check or _close)(y, yr, dtype, "y")
    for mask in masks:
        gk = P.poincare_fc_rows_bwd(cast(gout), cast(t), cast(U), cast(z), cast(b), cast(c), eps, mask, tangent)
        assert len(gk) == 5
        wanted = (True, True, bool(mask & 2), bool(mask & 4) and b is not None, bool(mask & 8))
        for name, a, r, want in zip(("dt", "dU", "dz", "db", "dc"), gk, gr, wanted):
            if not want:
                assert a.numel() == 0, (name, mask)
                continue
            assert a.dtype == dtype and a.device.type == torch.device(device).type, (name, a.dtype, a.device)
            (check or _close)(a, r, dtype, f"{name} (mask {mask})")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,n,m", [(1, 3, 5), (7, 9, 33), _BIG_FC, (0, 4, 6)])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("tangent", [False, True])
def test_fc_rows_vs_reference(dtype, N, n, m, has_bias, tangent, device):
    """poincare_fc_rows_fwd/bwd run _fc_fwd_kernel / _fc_bwd_kernel on t (not the eager reference): values, dt,
    dU, the column part of dz, db, dc against the float64 reference for every mask."""
    x, z, b, gout = _fc_rows_case(N, n, m, has_bias, tangent, N * 1000 + n * 10 + m + 7)
    t, U = x @ z, x.pow(2).sum(1)
    masks = (15, 14, 10, 6, 2, 4, 8, 0, 1) if N in (7, 0) else (15, 0)
    _fc_rows_check(t, U, z, b, _c(0.7), gout, ref.default_eps(dtype), tangent, dtype, device, masks)


def test_fc_rows_matches_fc(device):
    """The rows entry and poincare_fc on the same rows: the same y and dt z^T + 2 dU x = dx, x^T dt + dz_rows = dz."""
    for tangent in (False, True):
        x, z, b, gout = _fc_rows_case(13, 6, 9, True, tangent, 11)
        c = _c(0.7)
        eps = ref.default_eps(torch.float64)
        dev = [a.to(device) for a in (x, z, b, c, gout)]
        y, t = P.poincare_fc_fwd(*dev[:4], eps, True, tangent)
        gx, gz, gb, gc = P.poincare_fc_bwd(dev[4], *dev[:4], t, eps, 15, tangent)
        U = dev[0].pow(2).sum(1)
        yr = P.poincare_fc_rows_fwd(t, U, dev[1], dev[2], dev[3], eps, tangent)
        gt, gU, gzr, gbr, gcr = P.poincare_fc_rows_bwd(dev[4], t, U, dev[1], dev[2], dev[3], eps, 15, tangent)
        for name, a, r in (("y", yr, y), ("dx", gt @ dev[1].t() + 2 * gU[:, None] * dev[0], gx),
                           ("dz", dev[0].t() @ gt + gzr, gz), ("db", gbr, gb), ("dc", gcr, gc)):
            _close(a, r, torch.float64, f"{name} tangent={tangent}")


def test_fc_rows_projection_branch(device):
    """Rows beyond the margin (large curvature, big z): the projection's gradients through the rows entry."""
    g, x, z, b, c, eps = _projection_case()
    gout = torch.randn(11, 7, generator=g, dtype=torch.float64)
    t, U = x @ z, x.pow(2).sum(1)
    assert (R.poincare_fc_rows_fwd(t, U, z, b, c, eps, False).norm(dim=1) >= (1 - eps) / 2 ** 0.5 - 1e-9).any()
    for tangent in (False, True):
        _fc_rows_check(t, U, z, b, c, gout, eps, tangent, torch.float64, device, masks=(15,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [8, 300])
@pytest.mark.parametrize("case", ["distances", "offsets"])
def test_fc_rows_large_distances_and_offsets_vs_reference(dtype, m, case, device):
    """test_fc_large_distances_and_offsets_vs_reference's cases through the rows entry: the scaled row form
    (largest |u| > 20) and the scaled offsets (|2 sc r| > 20) finite and within the 2x rule of the float64
    reference (the same-dtype reference's error of the float64 truth)."""
    g = torch.Generator().manual_seed(7 * m + (dtype == torch.float32))
    N, n = _large_rows(m), 16
    cv = 0.8
    c = _c(cv)
    x = _ball(N, n, cv, 0.9, g)
    x[::7] *= 1e-5
    if case == "distances":
        z, b = _near_columns(n, m, _FC_SCALES[dtype], g, c=cv)
    else:
        z, b = _near_columns(n, m, 0.15 if dtype == torch.float32 else 0.4, g,
                             bias_angle=150.0 if dtype == torch.float32 else 1000.0, c=cv)
    T = (c.sqrt() * ref.hyperplane_dists(x, z, b, c)).abs().amax(dim=1)
    if case == "distances":
        assert (T > 20).any() and (T <= 20).any() and T.max().item() > (45 if dtype == torch.float32 else 360)
    gout = torch.randn(N, m, generator=g, dtype=torch.float64)
    eps = ref.default_eps(dtype)
    t, U = x @ z, x.pow(2).sum(1)

    def vals_grads(fwd, bwd, *a):
        return [fwd(*a[:5], eps, False)] + list(bwd(a[5], *a[:5], eps, 15, False))

    truth = vals_grads(R.poincare_fc_rows_fwd, R.poincare_fc_rows_bwd, t, U, z, b, c, gout)
    args = [a.to(dtype) for a in (t, U, z, b, c, gout)]
    same = vals_grads(R.poincare_fc_rows_fwd, R.poincare_fc_rows_bwd, *args)
    ours = vals_grads(P.poincare_fc_rows_fwd, P.poincare_fc_rows_bwd, *[a.to(device) for a in args])
    for name, o, tr, r in zip(("y", "dt", "dU", "dz", "db", "dc"), ours, truth, same):
        o, tr, r = o.detach().cpu().double(), tr.detach().double(), r.detach().double()
        assert o.shape == tr.shape and torch.isfinite(o).all(), f"{case} {dtype} m={m}: {name} not finite"
        scale = tr.abs().max().item()
        floor = (1e-9 if dtype == torch.float64 else 1e-5) * scale + 1e-300
        err, err_ref = (o - tr).abs().max().item(), (r - tr).abs().max().item()
        assert err <= 2 * err_ref + floor, f"{case} {dtype} m={m}: {name} error {err:.3g} (reference {err_ref:.3g})"


def test_fc_rows_knob_runs_reference(monkeypatch, device):
    """GEOOPS_POINCARE_TRITON_FC_ROWS=0 (read per call) sends both directions to the eager reference; the kernels
    otherwise (the reference is not called)."""
    x, z, b, gout = _fc_rows_case(9, 5, 7, True, False, 21)
    t, U = x @ z, x.pow(2).sum(1)
    c = _c(0.7)
    calls = []
    orig_f, orig_b = R.poincare_fc_rows_fwd, R.poincare_fc_rows_bwd
    monkeypatch.setattr(R, "poincare_fc_rows_fwd", staticmethod(lambda *a: calls.append("f") or orig_f(*a)))
    monkeypatch.setattr(R, "poincare_fc_rows_bwd", staticmethod(lambda *a: calls.append("b") or orig_b(*a)))
    dev = [a.to(device) for a in (t, U, z, b, c, gout)]
    for knob, expect in (("1", []), ("0", ["f", "b"])):
        calls.clear()
        monkeypatch.setenv("GEOOPS_POINCARE_TRITON_FC_ROWS", knob)
        y = P.poincare_fc_rows_fwd(*dev[:5], 1e-5, False)
        gs = P.poincare_fc_rows_bwd(dev[5], *dev[:5], 1e-5, 15, False)
        assert calls == expect
        _close(y, orig_f(t, U, z, b, c, 1e-5, False), torch.float64, f"y knob={knob}")
        for a, r in zip(gs, orig_b(gout, t, U, z, b, c, 1e-5, 15, False)):
            _close(a, r, torch.float64, f"grad knob={knob}")


# ---------------------------------------------------------------- ReLU
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,D", [(1, 1), (9, 7), (33, 300), (0, 5)])
@pytest.mark.parametrize("radius,c", [(0.9, 1.0), (0.999999, 3.0)])
def test_relu_vs_reference(dtype, N, D, radius, c, device):
    g = torch.Generator().manual_seed(N + D)
    x = _ball(N, D, c, radius, g)
    if N > 2:
        x[0] = 0.0
        x[1] = -x[1].abs()  # an all-negative row
    cc = _c(c)
    eps = ref.default_eps(dtype) if radius < 0.99 else 0.2  # the second case: the projection branch
    yr = R.poincare_relu_fwd(x, cc, eps)
    gout = torch.randn(N, D, generator=g, dtype=torch.float64)
    gxr, gcr = R.poincare_relu_bwd(gout, x, cc, eps)
    cast = (lambda t: t.to(device=device, dtype=dtype))
    y = P.poincare_relu_fwd(cast(x), cast(cc), eps)
    _close(y, yr, dtype, "y")
    gx, gc = P.poincare_relu_bwd(cast(gout), cast(x), cast(cc), eps)
    _close(gx, gxr, dtype, "dx")
    _close(gc, gcr, dtype, "dc")


# ---------------------------------------------------------------- midpoint sums
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,D", [(1, 1), (13, 5), (130, 300), (0, 4)])
def test_midpoint_sums_vs_reference(dtype, N, D, device):
    g = torch.Generator().manual_seed(N * 7 + D)
    c = _c(1.3)
    x = _ball(N, D, 1.3, 0.95, g)
    cast = (lambda t: t.to(device=device, dtype=dtype))
    F, L = P.poincare_midpoint_sums_fwd(cast(x), cast(c))
    Fr, Lr = R.poincare_midpoint_sums_fwd(x, c)
    _close(F, Fr, dtype, "F")
    _close(L, Lr, dtype, "L")
    gF = torch.randn(D, generator=g, dtype=torch.float64)
    gL = torch.randn((), generator=g, dtype=torch.float64)
    gx, gc = P.poincare_midpoint_sums_bwd(cast(gF), cast(gL), cast(x), cast(c))
    gxr, gcr = R.poincare_midpoint_sums_bwd(gF, gL, x, c)
    _close(gx, gxr, dtype, "dx")
    _close(gc, gcr, dtype, "dc")


# ---------------------------------------------------------------- batch norm row pass
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,D", [(1, 1), (11, 6), (40, 200), (0, 3)])
@pytest.mark.parametrize("scale", [0.5, 8.0])
def test_bn_rows_vs_reference(dtype, N, D, scale, device):
    g = torch.Generator().manual_seed(N + 3 * D)
    c = _c(0.8)
    u = torch.randn(N, D, generator=g, dtype=torch.float64) * 0.4
    M = torch.randn(D, D, generator=g, dtype=torch.float64) * scale / D ** 0.5
    b = _ball(1, D, 0.8, 0.6, g)[0]
    eps = ref.default_eps(dtype)
    yr = R.poincare_bn_rows_fwd(u, M, b, c, eps)
    cast = (lambda t: t.to(device=device, dtype=dtype))
    y = P.poincare_bn_rows_fwd(cast(u), cast(M), cast(b), cast(c), eps)
    _close(y, yr, dtype, "y")
    gout = torch.randn(N, D, generator=g, dtype=torch.float64)
    gr = R.poincare_bn_rows_bwd(gout, u, M, b, c, eps)
    gk = P.poincare_bn_rows_bwd(cast(gout), cast(u), cast(M), cast(b), cast(c), eps)
    for name, a, r in zip(("du", "dM", "db", "dc"), gk, gr):
        _close(a, r.reshape(a.shape), dtype, name)


def test_errors_before_launch():
    with pytest.raises(TypeError, match="float32 or float64"):
        P.poincare_relu_fwd(torch.zeros(2, 3, dtype=torch.float16), _c(1.0), 1e-3)
    with pytest.raises(ValueError, match="M must be"):
        P.poincare_bn_rows_fwd(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(3), _c(1.0), 1e-3)


# ---------------------------------------------------------------- public API through the triton backend
def _close_with_grads(y, yr, leaves, g, what):
    """y (this backend, from the CPU fp64 leaves) against the reference yr, then both vjps of one random upstream
    gradient (drawn from g) into the leaves, all in fp64."""
    _close(y.detach().cpu(), yr.detach(), torch.float64, what)
    w = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((y.cpu() * w).sum(), leaves)
    gr = torch.autograd.grad((yr * w).sum(), leaves)
    for a, r in zip(ga, gr):
        _close(a, r, torch.float64, what + " grad")


def test_public_layers_on_triton_backend(device):
    """poincare_fc / poincare_relu / conv2d through geoops.poincare (triton backend) vs the fp64 reference."""
    from geoops._ops import poincare as ops

    assert ops.kernels(torch.device(device)) is P  # the Triton kernels, not the reference composition
    g = torch.Generator().manual_seed(11)
    c = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    x = _ball(6, 5, 0.9, 0.8, g).requires_grad_(True)
    z = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    b = (torch.randn(4, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    y = gp.poincare_fc(x.to(device), z.to(device), b.to(device), c=c.to(device))
    yr = ref.poincare_fc(x, z, b, c)
    _close_with_grads(y, yr, (x, z, b, c), g, "poincare_fc")
    xr = _ball(5, 7, 0.9, 0.9, g).requires_grad_(True)
    yrl = gp.poincare_relu(xr.to(device), c=c.to(device))
    _close(yrl.detach().cpu(), ref.poincare_relu(xr, c).detach(), torch.float64, "poincare_relu")
    xi = (_ball(2 * 5 * 5, 3, 0.9, 0.7, g).reshape(2, 5, 5, 3).permute(0, 3, 1, 2)).contiguous().requires_grad_(True)
    zc = (torch.randn(27, 4, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    yc = gp.poincare_conv2d(xi.to(device), zc.to(device), None, c=c.to(device), kernel_size=3, padding=1)
    ycr = ref.poincare_conv2d(xi, zc, None, c, 3, padding=1)
    _close_with_grads(yc, ycr, (xi, zc, c), g, "poincare_conv2d")


def test_batch_norm_on_triton_backend(device):
    g = torch.Generator().manual_seed(12)
    c = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    x = _ball(23, 6, 1.1, 0.9, g).requires_grad_(True)
    bias = (torch.randn(6, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    weight = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    out = gp.batch_norm(x.to(device), bias.to(device), weight.to(device), c=c.to(device))
    y = out[0] if isinstance(out, tuple) else out
    yr = ref.batch_norm(x, bias, weight, c)[0]
    _close_with_grads(y, yr, (x, bias, weight, c), g, "batch_norm")


def test_batch_norm_backward_makes_no_zero_var_gradient():
    """Session 38 (perfcheck's open item): BnTransportFn's var output is not differentiable; autograd filled a zero
    gradient for it on every backward (aten.zeros per training step).  With set_materialize_grads(False) the
    batch norm's backward on the Triton path makes no zeros, and the gradients are unchanged."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from _compare import record_ops

    import geoops
    import geoops.nn as gnn

    g = torch.Generator().manual_seed(0)
    with geoops.use_backend("triton"):
        bn = gnn.PoincareBatchNorm(8, gnn.PoincareBall())
        x = (torch.randn(16, 8, generator=g) * 0.1).requires_grad_()
        gout = torch.randn(16, 8, generator=g)
        leaves = (x, *[p for p in bn.parameters() if p.requires_grad])
        want = torch.autograd.grad(bn(x), leaves, gout, allow_unused=True)
        y = bn(x)
        with record_ops() as rec:
            got = torch.autograd.grad(y, leaves, gout, allow_unused=True)
    assert not [n for n in rec.names if "zeros" in n], rec.names
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b)
