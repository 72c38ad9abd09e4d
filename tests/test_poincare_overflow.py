"""Large hyperplane distances in the Poincaré layers (issue 11): w = sinh(sc v) / sc and |w|^2 overflow once
sc times a distance passes ~44 (float32; ~355 in float64), and the direct formulas gave NaN (or zeros) from finite
inputs.  Outputs and gradients must stay finite and match the float64 evaluation of the stable formula, on every
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
    eps = ref.default_eps(dtype)
    u = c.sqrt() * ref.hyperplane_dists(x, z, b, c)
    assert u.abs().amax().item() > (50 if dtype == torch.float32 else 400)  # the overflow point is passed
    truth = _vals_grads(lambda x, z, b, c: ref.poincare_fc(x, z, b, c, eps=eps), [x, z, b, c], g)
    args = [t.to(dtype) for t in (x, z, b, c)]
    same = _vals_grads(lambda x, z, b, c: ref.poincare_fc(x, z, b, c), args, g)
    if path == "no_lanes16":
        monkeypatch.setenv("GEOOPS_POINCARE_FC_LANES16", "0")
    if path == "composition":
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    f = (lambda x, z, b, c: ref.poincare_fc(x, z, b, c)) if path == "reference" else (
        lambda x, z, b, c: gp.poincare_fc(x, z, b, c=c))
    _check(_vals_grads(f, args, g), truth, same, f"{path} {dtype} m={m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cout", [8, 20])
def test_conv_large_distances_finite_and_accurate(dtype, cout):
    g0 = torch.Generator().manual_seed(5)
    v = torch.randn(2, 4, 6, 6, generator=g0, dtype=torch.float64)
    x = 0.9 * v / v.norm(dim=1, keepdim=True) * torch.rand(2, 1, 6, 6, generator=g0, dtype=torch.float64)
    z, b = _near_columns(36, cout, 1.5 * SCALES[dtype], seed=2)
    c = torch.tensor(1.2, dtype=torch.float64)
    g = torch.randn(2, cout, 6, 6, generator=g0, dtype=torch.float64)
    eps = ref.default_eps(dtype)
    conv = lambda x, z, b, c: gp.poincare_conv2d(x, z, b, c=c, kernel_size=3, padding=1)  # noqa: E731

    def ref_conv(x, z, b, c, eps=-1.0):
        B, C, H, W = x.shape
        u = ref.poincare_unfold(x, c, 3, padding=1)
        return ref.poincare_fc(u, z, b, c, dim=1, eps=eps).reshape(B, z.shape[1], H, W)

    truth = _vals_grads(lambda x, z, b, c: ref_conv(x, z, b, c, eps=eps), [x, z, b, c], g)
    args = [t.to(dtype) for t in (x, z, b, c)]
    same = _vals_grads(ref_conv, args, g)
    _check(_vals_grads(conv, args, g), truth, same, f"conv {dtype} cout={cout}")


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
