"""Session 38 (helper "tritonmlr"): the Poincaré MLR head (hyperplane_dists / mlr) on the Triton backend.

Before session 38 the Triton backend ran mlr as a composition of torch ops (or, for a curvature without gradient,
PoincareMlrFn), which saved ~12 (N, m) tensors for the backward (session 37 memhunt).  Now it runs the fused
kernels of geoops.kernels.poincare (poincare_mlr_fwd / poincare_mlr_bwd: t = x z by the family's IEEE GEMM, one
row pass forward; one row pass, the column finish and two GEMMs backward) through geoops::poincare_mlr_fwd /
_bwd and PoincareMlrOpFn, which saves what the C++ Function saves: x, z, bias, c and t.

Checked: the kernels against the float64 reference contract (values, all four gradients, float32 / float64, odd
sizes, empty N, large norms near the boundary, large offsets); the public function against the C++ backend
and the float64 reference; the saved tensors; the launches; gradcheck in float64.
"""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.poincare as gp  # noqa: E402
from geoops.reference import poincare as ref  # noqa: E402

from test_poincare_triton import TOL, _ball  # noqa: E402  (the family's Triton test helpers)


def _case(N, n, m, c=0.7, radius=0.9, bscale=0.3, has_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed + N * 1000 + n * 10 + m)
    x = _ball(N, n, c, radius, g)
    z = torch.randn(n, m, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(m, generator=g, dtype=torch.float64) * bscale if has_bias else None
    gout = torch.randn(N, m, generator=g, dtype=torch.float64)
    return x, z, b, torch.tensor(c, dtype=torch.float64), gout


def _ref_grads(x, z, b, c, gout):
    """float64 reference values and gradients (x, z, bias, c) by autograd of geoops.reference.poincare."""
    ins = [t.detach().clone().requires_grad_(True) for t in (x, z, c)] + \
        ([b.detach().clone().requires_grad_(True)] if b is not None else [])
    y = ref.hyperplane_dists(ins[0], ins[1], ins[3] if b is not None else None, ins[2])
    gs = torch.autograd.grad(y, ins, gout) if y.numel() else [torch.zeros_like(t) for t in ins]
    return y.detach(), gs[0], gs[1], (gs[3] if b is not None else None), gs[2]


def _err(a, b):
    a64, b64 = a.detach().double(), b.detach().double()
    if not b64.numel():
        return 0.0
    return ((a64 - b64).abs().max() / b64.abs().max().clamp_min(1.0)).item()


def _public(x, z, b, c, gout, dtype, device, want=(True, True, True, True)):
    cast = [None if t is None else t.to(device=device, dtype=dtype).requires_grad_(w)
            for t, w in zip((x, z, b, c), want)]
    y = gp.mlr(cast[0], cast[1], cast[2], c=cast[3])
    wrt = [t for t, w in zip(cast, want) if w and t is not None]
    gs = torch.autograd.grad(y, wrt, gout.to(device=device, dtype=dtype), allow_unused=True)
    return y, dict(zip([i for i, (t, w) in enumerate(zip(cast, want)) if w and t is not None], gs))


# ---------------------------------------------------------------- the kernels against the contract
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,n,m", [(1, 3, 5), (7, 9, 33), (9, 5, 300), (0, 4, 6), (5, 1, 1)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_mlr_kernels_vs_reference(dtype, N, n, m, has_bias, device):
    from geoops.kernels import poincare as P

    x, z, b, c, gout = _case(N, n, m, has_bias=has_bias)
    yr, gxr, gzr, gbr, gcr = _ref_grads(x, z, b, c, gout)
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    y, t = P.poincare_mlr_fwd(cast(x), cast(z), cast(b), cast(c))
    assert y.dtype == dtype and y.shape == (N, m) and t.shape == (N, m)
    assert _err(y.cpu(), yr) <= TOL[dtype]
    for mask in ((15, 1, 2, 4, 8) if m < 100 else (15,)):  # (m = 300: three programs, two column chunks)
        gx, gz, gb, gc = P.poincare_mlr_bwd(cast(gout), cast(x), cast(z), cast(b), cast(c), t, mask)
        if mask & 1:
            assert gx.dtype == dtype and _err(gx.cpu(), gxr) <= TOL[dtype], ("dx", mask)
        else:
            assert gx.numel() == 0
        if mask & 2:
            assert _err(gz.cpu(), gzr) <= TOL[dtype], ("dz", mask)
        if mask & 4 and has_bias:
            assert _err(gb.cpu(), gbr) <= TOL[dtype], ("dbias", mask)
        elif not has_bias:
            assert gb.numel() == 0
        if mask & 8:
            assert gc.dtype == dtype and gc.shape == () and _err(gc.cpu(), gcr) <= TOL[dtype], ("dc", mask)


# ---------------------------------------------------------------- the public function
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["odd", "boundary", "big offsets", "no bias", "small c", "empty"])
def test_mlr_matches_cpp_and_reference(dtype, case, device):
    """gp.mlr on Triton vs the C++ backend and the float64 reference: values and the four gradients; float32
    within 2x the eager reference's own float32 error (+ a floor)."""
    kw = {"odd": dict(N=11, n=7, m=13), "boundary": dict(N=9, n=5, m=6, radius=0.9995),
          "big offsets": dict(N=6, n=4, m=5, bscale=40.0), "no bias": dict(N=5, n=3, m=4, has_bias=False),
          "small c": dict(N=6, n=5, m=3, c=1e-3), "empty": dict(N=0, n=4, m=3)}[case]
    x, z, b, c, gout = _case(**kw)
    if case == "big offsets":
        b[0], b[1] = 400.0, -300.0  # |2 sc r| far beyond 20: the scaled columns
    yr, *gr = _ref_grads(x, z, b, c, gout)
    y, gs = _public(x, z, b, c, gout, dtype, device)
    with geoops.use_backend("cpp"):
        yc, gcpp = _public(x, z, b, c, gout, dtype, "cpu")
    # the eager reference's own float32 error (the low-precision rule)
    with geoops.use_backend("reference"):
        ye, ge = _public(x, z, b, c, gout, dtype, "cpu")
    floor = TOL[dtype]
    assert torch.isfinite(y).all()
    assert _err(y.cpu(), yr) <= max(2 * _err(ye, yr), floor), (_err(y.cpu(), yr), _err(ye, yr))
    assert _err(y.cpu(), yc) <= max(2 * _err(ye, yr) + _err(yc, yr), floor)
    for i, name in enumerate(("x", "z", "bias", "c")):
        if i not in gs:
            continue
        assert gs[i].dtype == dtype and gs[i].shape == gr[i].shape, name
        assert torch.isfinite(gs[i]).all(), name
        e, e_ref = _err(gs[i].cpu(), gr[i]), _err(ge[i], gr[i])
        assert e <= max(2 * e_ref, floor), (name, e, e_ref)
        assert _err(gs[i].cpu(), gcpp[i]) <= max(2 * e_ref + _err(gcpp[i], gr[i]), floor), name


def test_mlr_other_dim_and_batch(device):
    """dim=1 of a (B, n, L) batch and lead dimensions: the rows are folded around the kernels."""
    g = torch.Generator().manual_seed(5)
    x = _ball(2 * 6, 4, 1.0, 0.8, g).reshape(2, 6, 4).transpose(1, 2).contiguous()  # (2, 4, 6), points along 1
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64) * 0.2
    c = torch.tensor(1.0, dtype=torch.float64)
    y = gp.mlr(x.to(device), z.to(device), b.to(device), c=c, dim=1)
    yr = ref.hyperplane_dists(x, z, b, c, dim=1)
    assert y.shape == (2, 3, 6)
    torch.testing.assert_close(y.cpu(), yr, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c_grad", [True, False])
def test_mlr_saves_no_more_than_the_cpp_set(c_grad, device):
    """What the Triton mlr keeps for the backward: x, z, bias, c and t = x z (the C++ Function's five), not the
    composition's ~12 (N, m) tensors (session 37 memhunt: 4.6x inputs + output)."""
    N, n, m = 40, 8, 12
    x, z, b, c, _ = _case(N, n, m)
    ins = [t.float().to(device).requires_grad_(True) for t in (x, z, b)] + [c.float().requires_grad_(c_grad)]
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = gp.mlr(ins[0], ins[1], ins[2], c=ins[3])
    limit = sum(t.numel() * t.element_size() for t in ins) + y.numel() * y.element_size()  # inputs + t
    assert len(saved) <= 5, f"{len(saved)} saved storages"
    assert sum(saved.values()) <= limit + 64, (sum(saved.values()), limit)


def test_mlr_runs_the_fused_kernels(device, host_work):
    x, z, b, c, gout = _case(9, 5, 7)
    xs, zs, bs = (t.to(device).requires_grad_(True) for t in (x, z, b))
    with host_work() as w:
        y = gp.mlr(xs, zs, bs, c=c)
        y.backward(gout.to(device))
    names = set(w.launches)
    assert {"_mlr_fwd_kernel", "_mlr_bwd_kernel"} <= names, w


def test_mlr_gradcheck_float64(device):
    x, z, b, c, _ = _case(3, 2, 3, radius=0.95, seed=3)
    ins = [t.to(device).requires_grad_(True) for t in (x, z, b)] + [c.clone().requires_grad_(True)]
    torch.autograd.gradcheck(lambda x, z, b, c: gp.mlr(x, z, b, c=c), ins)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("angle", [150.0, 1500.0])
def test_mlr_large_offsets_on_triton(dtype, angle, monkeypatch):
    """tests/test_poincare_overflow.py's huge-offset MLR case (offset angles 150 / 1500: beyond cosh's float32 and
    float64 range) on the fused Triton head: values and gradients vs the float64 evaluation."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # (tests/: the CPU trial's helpers)
    import test_poincare_overflow as ov

    ov.test_mlr_large_offsets_finite_and_accurate(dtype, angle, "triton", monkeypatch)


@pytest.mark.parametrize("backend", ["cpp", "reference", "triton"])
def test_mlr_op_on_each_backend(backend, device):
    """geoops::poincare_mlr_fwd / _bwd on each kernel set (the C++ set wraps poincare_mlr_*_cpu) agree with the
    float64 reference; opcheck of the op pair (fake, schema, dispatch) on the triton set."""
    x, z, b, c, gout = _case(5, 3, 4)
    yr, gxr, gzr, gbr, gcr = _ref_grads(x, z, b, c, gout)
    dev = "cpu" if backend != "triton" else device
    xs, zs, bs, gs = (t.to(dev) for t in (x, z, b, gout))
    with geoops.use_backend(backend):
        y, t = torch.ops.geoops.poincare_mlr_fwd(xs, zs, bs, c)
        gx, gz, gb, gc = torch.ops.geoops.poincare_mlr_bwd(gs, xs, zs, bs, c, t, 15)
        for got, want in ((y, yr), (gx, gxr), (gz, gzr), (gb, gbr), (gc, gcr)):
            assert _err(got.cpu(), want) <= 1e-9
        gx, gz, gb, gc = torch.ops.geoops.poincare_mlr_bwd(gs, xs, zs, None, c, t, 1)
        assert gx.shape == x.shape and gz.numel() == gb.numel() == gc.numel() == 0
        if backend == "triton":
            torch.library.opcheck(torch.ops.geoops.poincare_mlr_fwd.default, (xs, zs, bs, c))
            torch.library.opcheck(torch.ops.geoops.poincare_mlr_bwd.default, (gs, xs, zs, None, c, t, 11))


def test_mlr_forward_mode_and_vmap_keep_the_composition(device):
    """Forward-mode AD (a dual level) and torch.func transforms take the composition on the Triton backend (as on the
    CPU path): the jvp is right (vs central differences), vmap equals the loop."""
    import torch.autograd.forward_ad as fwAD

    x, z, b, c, _ = _case(4, 3, 2)
    x, z, b = (t.to(device) for t in (x, z, b))
    tx = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1)).to(device)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(gp.mlr(fwAD.make_dual(x, tx), z, b, c=c)).tangent
    h = 1e-6
    want = (gp.mlr(x + h * tx, z, b, c=c) - gp.mlr(x - h * tx, z, b, c=c)) / (2 * h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    xb = torch.stack([x, x.flip(0)])
    torch.testing.assert_close(torch.func.vmap(lambda a: gp.mlr(a, z, b, c=c))(xb),
                               torch.stack([gp.mlr(a, z, b, c=c) for a in xb]), rtol=1e-12, atol=1e-12)
