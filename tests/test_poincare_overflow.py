"""Large hyperplane distances in the Poincaré layers (issue 11): w = sinh(sc v) / sc and |w|^2 overflow once
sc times a distance passes ~44 (float32; ~355 in float64), and the direct formulas gave NaN (or zeros) from finite
inputs; likewise offsets whose angle 2 sc |r| passes cosh's range (float32 ~89, float64 ~710) in fc, conv and
MLR.  Outputs and gradients must stay finite and match the float64 evaluation of the stable formula, on every
path: the C++ kernels (wide rows, the 16-row float lanes, the convolution's row pass), the composition over the
custom ops (GEOOPS_POINCARE_FUSED=0: what CUDA and traced calls run) and the reference."""
from __future__ import annotations

import math

import pytest
import torch

import geoops.poincare as gp
from geoops.reference import poincare as ref


def _near_columns(n, m, scale, seed=0, dtype=torch.float64):
    """z (n, m) with columns of norm ~scale pointing nearly the same way, so that several outputs of a row have
    distances close to its largest (gradients not dominated by one column) and x in the ball."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = d / d.norm() + 0.05 * torch.randn(n, m, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=0) * scale * (1 + 0.02 * torch.rand(m, generator=g, dtype=torch.float64))
    b = 0.2 * torch.randn(m, generator=g, dtype=torch.float64)
    return z.to(dtype), b.to(dtype)


def _points(N, n, seed=1, radius=0.9):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(N, n, generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True) * radius * torch.rand(N, 1, generator=g, dtype=torch.float64)


def _vals_grads(f, args, g):
    a = [t.detach().clone().requires_grad_(True) for t in args]
    y = f(*a)
    return [y.detach()] + list(torch.autograd.grad(y, a, g.to(y.dtype)))


def _check(ours, truth, same_dtype_ref, label):
    """Each of value, dx, dz, db, dc: finite, and its error vs the float64 truth within 2x the reference's own error
    in the same dtype plus a floor (relative to the tensor's largest entry)."""
    for name, o, t, r in zip(("y", "dx", "dz", "db", "dc"), ours, truth, same_dtype_ref):
        assert torch.isfinite(o).all(), f"{label}: {name} not finite"
        scale = t.abs().max().item()
        floor = (1e-9 if o.dtype == torch.float64 else 1e-5) * scale + 1e-300
        err, err_ref = (o.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        assert err <= 2 * err_ref + floor, f"{label}: {name} error {err:.3g} (reference {err_ref:.3g}, scale {scale:.3g})"


# sc * distance reaches ~60-90 (float32: beyond the overflow at ~44) or ~500-800 (float64: beyond ~355)
SCALES = {torch.float32: 12.0, torch.float64: 110.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [8, 20])
@pytest.mark.parametrize("path", ["cpp", "no_lanes16", "composition", "reference"])
def test_fc_large_distances_finite_and_accurate(dtype, m, path, monkeypatch):
    N, n = 300, 16
    x = _points(N, n)
    z, b = _near_columns(n, m, SCALES[dtype])
    c = torch.tensor(0.8, dtype=torch.float64)
    g = torch.randn(N, m, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = c.sqrt() * ref.hyperplane_dists(x, z, b, c)
    assert u.abs().amax().item() > (50 if dtype == torch.float32 else 400)  # the overflow point is passed
    _check_fc_path(x, z, b, c, g, dtype, path, monkeypatch, f"{path} {dtype} m={m}")


def _check_fc_path(x, z, b, c, g, dtype, path, monkeypatch, label):
    """poincare_fc on `path` (cpp, no_lanes16, composition, reference) in dtype vs the float64 reference."""
    eps = ref.default_eps(dtype)
    truth = _vals_grads(lambda x, z, b, c: ref.poincare_fc(x, z, b, c, eps=eps), [x, z, b, c], g)
    assert all(torch.isfinite(t).all() for t in truth)
    args = [t.to(dtype) for t in (x, z, b, c)]
    same = _vals_grads(lambda x, z, b, c: ref.poincare_fc(x, z, b, c), args, g)
    if path == "no_lanes16":
        monkeypatch.setenv("GEOOPS_POINCARE_FC_LANES16", "0")
    if path == "composition":
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    f = (lambda x, z, b, c: ref.poincare_fc(x, z, b, c)) if path == "reference" else (
        lambda x, z, b, c: gp.poincare_fc(x, z, b, c=c))
    _check(_vals_grads(f, args, g), truth, same, label)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cout", [8, 20])
def test_conv_large_distances_finite_and_accurate(dtype, cout):
    g0 = torch.Generator().manual_seed(5)
    v = torch.randn(2, 4, 6, 6, generator=g0, dtype=torch.float64)
    x = 0.9 * v / v.norm(dim=1, keepdim=True) * torch.rand(2, 1, 6, 6, generator=g0, dtype=torch.float64)
    z, b = _near_columns(36, cout, 1.5 * SCALES[dtype], seed=2)
    c = torch.tensor(1.2, dtype=torch.float64)
    g = torch.randn(2, cout, 6, 6, generator=g0, dtype=torch.float64)
    _check_conv(x, z, b, c, g, dtype, f"conv {dtype} cout={cout}")


def _ref_conv(x, z, b, c, eps=-1.0):
    B, C, H, W = x.shape
    u = ref.poincare_unfold(x, c, 3, padding=1)
    return ref.poincare_fc(u, z, b, c, dim=1, eps=eps).reshape(B, z.shape[1], H, W)


def _check_conv(x, z, b, c, g, dtype, label):
    """poincare_conv2d (3x3, padding 1) in dtype vs the float64 reference composition, by the 2x rule."""
    eps = ref.default_eps(dtype)
    truth = _vals_grads(lambda x, z, b, c: _ref_conv(x, z, b, c, eps=eps), [x, z, b, c], g)
    args = [t.to(dtype) for t in (x, z, b, c)]
    same = _vals_grads(_ref_conv, args, g)
    conv = lambda x, z, b, c: gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=1)  # noqa: E731
    _check(_vals_grads(conv, args, g), truth, same, label)


def test_reference_map_unchanged_below_threshold_and_gradcheck_beyond():
    """The reference's map back into the ball: bit for bit the direct formula where every |u_j| <= 20; beyond,
    the scaled form is differentiable (gradcheck in float64, projection off) and finite."""
    x = _points(64, 6)
    z, b = _near_columns(6, 5, 1.0)
    c = torch.tensor(0.7, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        xs, zs, bs, cs = (t.to(dtype) for t in (x, z, b, c))
        sc = cs.sqrt()
        w = torch.sinh(sc * ref.hyperplane_dists(xs, zs, bs, cs)) / sc
        direct = ref.project(w / (1 + (1 + cs * w.pow(2).sum(-1, keepdim=True)).sqrt()), cs)
        assert (sc * ref.hyperplane_dists(xs, zs, bs, cs)).abs().max() < ref.SINH_SCALED_FROM
        assert torch.equal(ref.poincare_fc(xs, zs, bs, cs), direct)
    zb, bb = _near_columns(6, 4, 150.0)
    args = [t.clone().requires_grad_(True) for t in (x[:5], zb, bb, c)]
    assert torch.autograd.gradcheck(lambda x, z, b, c: ref.poincare_fc(x, z, b, c, eps=0.0), args)
    assert math.isfinite(ref.poincare_fc(*args, eps=0.0).sum().item())


# ---- large hyperplane offsets: 2 sc |r| beyond cosh's range (float32 ~89, the C++ paths in double ~710)
def _offset_columns(n, m, angle, c, seed=4, dtype=torch.float64):
    """z (n, m) and bias (m,) with offset angles 2 sc r of magnitude angle (+-30 %, alternating signs; every fifth
    column an ordinary 0.3), and column norms 20 / angle, so that sc times the distances stays near 40."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=0) * (20.0 / angle) * (1 + 0.5 * torch.rand(m, generator=g, dtype=torch.float64))
    sign = torch.where(torch.arange(m) % 2 == 0, 1.0, -1.0).to(torch.float64)
    ang = sign * angle * (1 + 0.3 * torch.rand(m, generator=g, dtype=torch.float64))
    ang[::5] = 0.3
    return z.to(dtype), (ang / (2 * math.sqrt(c))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("angle", [150.0, 1500.0])
@pytest.mark.parametrize("path", ["cpp", "no_lanes16", "composition", "reference"])
def test_fc_large_offsets_finite_and_accurate(dtype, angle, path, monkeypatch):
    """Offsets with 2 sc |r| ~ 150-200 / 1500-2000 next to ordinary ones: values and gradients finite and within
    the 2x rule of the float64 evaluation (NaN before: cosh(2 sc r) overflowed in float32 beyond 89, in double
    beyond 710)."""
    N, n, m = 200, 16, 20
    cv = 0.8
    x = _points(N, n)
    z, b = _offset_columns(n, m, angle, cv)
    c = torch.tensor(cv, dtype=torch.float64)
    g = torch.randn(N, m, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _check_fc_path(x, z, b, c, g, dtype, path, monkeypatch, f"{path} {dtype} angle={angle}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_large_offsets_finite_and_accurate(dtype):
    g0 = torch.Generator().manual_seed(6)
    v = torch.randn(2, 4, 6, 6, generator=g0, dtype=torch.float64)
    x = 0.9 * v / v.norm(dim=1, keepdim=True) * torch.rand(2, 1, 6, 6, generator=g0, dtype=torch.float64)
    cv = 1.2
    z, b = _offset_columns(36, 10, 1000.0, cv, seed=7)
    c = torch.tensor(cv, dtype=torch.float64)
    g = torch.randn(2, 10, 6, 6, generator=g0, dtype=torch.float64)
    _check_conv(x, z, b, c, g, dtype, f"conv offsets {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("angle", [150.0, 1500.0])
@pytest.mark.parametrize("path", ["cpp", "fixed_c", "composition"])
def test_mlr_large_offsets_finite_and_accurate(dtype, angle, path, monkeypatch):
    """The MLR logits (signed distances) with huge offsets: the C++ head, the eager Function of other backends
    (fixed curvature) and the composition; values and gradients vs the float64 evaluation (mpmath-checked in
    test_offset_asinh_vs_mpmath)."""
    import geoops

    N, n, m = 64, 12, 10
    cv = 0.7
    x = _points(N, n, seed=8)
    z, b = _offset_columns(n, m, angle, cv, seed=9)
    c = torch.tensor(cv, dtype=torch.float64)
    g = torch.randn(N, m, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    truth = _vals_grads(lambda x, z, b, c: ref.mlr(x, z, b, c), [x, z, b, c], g)
    args = [t.to(dtype) for t in (x, z, b, c)]
    same = _vals_grads(lambda x, z, b, c: ref.mlr(x, z, b, c), args, g)
    if path == "composition":
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    if path == "fixed_c":  # PoincareMlrFn: a curvature without gradient, off the C++ backend
        with geoops.use_backend("reference"):
            ours = _vals_grads(lambda x, z, b: gp.mlr(x, z, b, c=args[3]), args[:3], g)
        truth, same = truth[:4], same[:4]
    else:
        ours = _vals_grads(lambda x, z, b, c: gp.mlr(x, z, b, c=c), args, g)
    _check(ours, truth, same, f"mlr {path} {dtype} angle={angle}")


def test_offset_asinh_vs_mpmath():
    """The scaled column form of the reference (the oracle above) against mpmath at 60 digits: distances of points
    to hyperplanes with offset angles up to 3000, float64 and float32."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    x = _points(9, 4, seed=10)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    c = torch.tensor(0.7, dtype=torch.float64)
    for rho in (5.0, 25.0, 100.0, 400.0, 3000.0):
        b = torch.tensor([rho, -0.7 * rho, 0.3 * rho], dtype=torch.float64) / (2 * c.sqrt())
        for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 2e-6)):
            xs, zs, bs, cs = (t.to(dtype) for t in (x, z, b, c))
            y = ref.mlr(xs, zs, bs, cs).double()
            sc = mpmath.sqrt(mpmath.mpf(float(cs)))
            for i in range(x.shape[0]):
                xi = [mpmath.mpf(float(v)) for v in xs[i]]
                lam = 2 / (1 - sc * sc * sum(v * v for v in xi))
                for j in range(3):
                    zj = [mpmath.mpf(float(v)) for v in zs[:, j]]
                    zn = mpmath.sqrt(sum(v * v for v in zj))
                    t = sum(p * q for p, q in zip(xi, zj))
                    r = 2 * sc * mpmath.mpf(float(bs[j]))
                    v = 2 * zn / sc * mpmath.asinh(sc * lam * t * mpmath.cosh(r) / zn - (lam - 1) * mpmath.sinh(r))
                    assert abs(float(v) - y[i, j].item()) <= tol * max(1.0, abs(float(v))), (rho, dtype, i, j)


def test_large_offsets_gradcheck_cpp():
    """float64 gradcheck through the C++ fc and MLR kernels with offsets beyond cosh's double range."""
    x = _points(5, 4, seed=12)
    z, b = _offset_columns(4, 6, 900.0, 0.9, seed=13)
    c = torch.tensor(0.9, dtype=torch.float64)
    args = [t.clone().requires_grad_(True) for t in (x, z, b, c)]
    assert torch.autograd.gradcheck(lambda x, z, b, c: gp.mlr(x, z, b, c=c), args)
    assert torch.autograd.gradcheck(lambda x, z, b, c: gp.poincare_fc(x, z, b, c=c, eps=0.0), args)


def test_reference_offsets_unchanged_below_threshold():
    """Offsets within |2 sc r| <= 20 keep the direct formula bit for bit (reference and the eager Function)."""
    x = _points(50, 6, seed=14)
    z, _ = _near_columns(6, 5, 1.0)
    c = torch.tensor(0.7, dtype=torch.float64)
    b = torch.tensor([-11.9, -3.0, 0.0, 2.5, 11.9], dtype=torch.float64)  # 2 sc |r| up to ~19.9
    for dtype in (torch.float32, torch.float64):
        xs, zs, bs, cs = (t.to(dtype) for t in (x, z, b, c))
        sc = cs.sqrt()
        lam = 2 / (1 - cs * xs.pow(2).sum(-1, keepdim=True))
        zn = zs.norm(dim=0).clamp_min(ref.MIN_NORM)
        a = sc * lam * (xs @ zs) * torch.cosh(2 * sc * bs) / zn - (lam - 1) * torch.sinh(2 * sc * bs)
        assert torch.equal(ref.mlr(xs, zs, bs, cs), 2 * zn / sc * torch.asinh(a))
