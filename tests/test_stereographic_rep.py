"""Row-group form of the eager fast path (session 29) and the short-row backward at D = 9..16.

A point x of shape (..., 1, D) broadcast against points y of shape (..., R, D) (the WordNet loss's
``ball.dist(emb[u].unsqueeze(1), emb[cand])``): the fast path hands x's rows to the row-group kernels
(``stereo_fwd_rep_cpu`` / ``stereo_bwd_rep_cpu``: row i reads x row i // R) instead of materialising the broadcast,
and the backward sums dx over each group in C++ in a fixed order (four chains, csrc/cpu/stereographic.cpp: sum_groups).
Forward, dy and dk: the same bits as the materialising path (GEOOPS_STEREO_REP=0: the same kernels on the copied
rows); dx: the same bits as an explicit sum in the kernel's order, within a few float ulps of the float64 sum.
"""
from __future__ import annotations

import math

import pytest
import torch

import geoops.stereographic as gs
from geoops import _backend
from geoops._ops.stereographic import STEREO_OPS

C = _backend.compiled()
OPS_Y = ("dist", "mobius_add", "mobius_sub", "logmap", "expmap")
DTYPES = (torch.float32, torch.float64)


def _points(g, shape, dtype, scale=0.6):
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    v = v / (1 + v.norm(dim=-1, keepdim=True)) * scale
    return v.to(dtype)


def _group_sum(d, G, rep):
    """dx of x's G rows from the op's (G * rep, D) rows, in sum_groups' order (four chains, the rest in chain 0)."""
    d = d.view(G, rep, -1)
    acc = [torch.zeros_like(d[:, 0]) for _ in range(4)]
    m = rep // 4 * 4
    for j in range(m):
        acc[j % 4] = acc[j % 4] + d[:, j]
    for j in range(m, rep):
        acc[0] = acc[0] + d[:, j]
    return ((acc[0] + acc[1]) + acc[2]) + acc[3]


@pytest.mark.parametrize("xshape,yshape,form", [
    ((64, 1, 10), (64, 11, 10), (64, 11)),
    ((10,), (7, 10), (1, 7)),
    ((1, 10), (7, 10), (1, 7)),
    ((3, 1, 1, 5), (3, 2, 4, 5), (3, 8)),
    ((3, 2, 1, 5), (3, 2, 4, 5), (6, 4)),
    ((1, 3, 1, 5), (3, 2, 5), (3, 2)),      # x has more dims (leading 1): G = 3 rows of the broadcast (1, 3, 2, 5)
    ((1, 11, 10), (64, 11, 10), None),      # x tiled along a leading dim: not rows in a row
    ((64, 11, 10), (64, 11, 10), None),     # x of the broadcast shape
    ((64, 1, 1), (64, 11, 10), None),       # x broadcast along D
    ((64, 1, 10), (64, 1, 10), None),
])
def test_rep_form(xshape, yshape, form):
    shape = torch.broadcast_shapes(xshape, yshape)
    assert gs._rep_form(torch.Size(xshape), shape) == form


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS_Y)
@pytest.mark.parametrize("rep", [1, 3, 4, 11, 17])
def test_rep_kernels_match_the_materialised_rows(op, dtype, rep):
    """stereo_fwd_rep_cpu / stereo_bwd_rep_cpu against stereo_fwd_cpu / stereo_bwd_cpu on the copied rows: the same
    bits (forward, dy, dk); dx the same bits as the group sum in the kernel's order."""
    g = torch.Generator().manual_seed(rep)
    G, D = 37, 10
    code = STEREO_OPS[op].code
    x = _points(g, (G, D), dtype)
    y = _points(g, (G * rep, D), dtype)
    k = torch.tensor([-0.7], dtype=dtype)
    xr = x.repeat_interleave(rep, 0)
    eps = 1e-5 if dtype == torch.float32 else 1e-10
    out = C.stereo_fwd_rep_cpu(code, x, y, k, None, eps, rep)
    assert torch.equal(out, C.stereo_fwd_cpu(code, xr, y, k, None, eps))
    gr = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    dx, dy, dk, _ = C.stereo_bwd_rep_cpu(code, gr, x, y, k, None, eps, 7, rep)
    ex, ey, ek, _ = C.stereo_bwd_cpu(code, gr, xr, y, k, None, eps, 7)
    assert torch.equal(dy, ey) and torch.equal(dk, ek)
    assert dx.shape == x.shape
    assert torch.equal(dx, _group_sum(ex, G, rep))
    # within a few ulps of the float64 sum of the rows' terms (relative to the sum of their magnitudes)
    ref = ex.double().view(G, rep, D).sum(1)
    mag = ex.double().abs().view(G, rep, D).sum(1)
    assert ((dx.double() - ref).abs() <= rep * torch.finfo(dtype).eps * mag + 1e-300).all()
    if rep == 1:
        return
    # a strided x (rows of stride 2D) and dx only
    xs = torch.cat([x, x], 1)[:, :D]
    assert torch.equal(C.stereo_fwd_rep_cpu(code, xs, y, k, None, eps, rep), out)
    # (against mask 3: without dk wanted dist's backward skips its call, which changes the last bits: bwd_skip_call_on)
    dx1, dy1, _, _ = C.stereo_bwd_rep_cpu(code, gr, xs, y, k, None, eps, 1, rep)
    assert torch.equal(dx1, C.stereo_bwd_rep_cpu(code, gr, x, y, k, None, eps, 3, rep)[0]) and dy1.numel() == 0


def test_rep_kernels_bad_arguments():
    x = torch.randn(4, 3)
    k = torch.tensor([-1.0])
    with pytest.raises(RuntimeError, match="rep must be >= 1"):
        C.stereo_fwd_rep_cpu(STEREO_OPS["dist"].code, x, torch.randn(4, 3), k, None, 1e-5, 0)
    with pytest.raises(RuntimeError, match="y must have G \\* rep = 8 rows"):
        C.stereo_fwd_rep_cpu(STEREO_OPS["dist"].code, x, torch.randn(6, 3), k, None, 1e-5, 2)
    with pytest.raises(RuntimeError, match="takes an op with a second input y"):
        C.stereo_fwd_rep_cpu(STEREO_OPS["expmap0"].code, x, torch.randn(8, 3), k, None, 1e-5, 2)
    with pytest.raises(RuntimeError, match="needs y"):
        C.stereo_bwd_rep_cpu(STEREO_OPS["dist"].code, torch.randn(8), x, None, k, None, 1e-5, 1, 2)
    with pytest.raises(RuntimeError, match="float32 / float64"):
        C.stereo_fwd_rep_cpu(STEREO_OPS["dist"].code, x.half(), torch.randn(8, 3).half(), k, None, 1e-5, 2)


def _spy(monkeypatch):
    calls = []
    for name in ("stereo_fwd_rep_cpu", "stereo_bwd_rep_cpu"):
        fn = getattr(C, name)

        def wrapped(*a, _fn=fn, _name=name):
            calls.append(_name)
            return _fn(*a)

        monkeypatch.setattr(C, name, wrapped)
    return calls


def _run(op, x, y, k, gout, keepdim=False):
    """(out, dx, dy, dk) of gs.<op> with the caller's tensors."""
    xs, ys, ks = (t.detach().clone().requires_grad_(t.requires_grad) for t in (x, y, k))
    out = getattr(gs, op)(xs, ys, k=ks, keepdim=keepdim) if op == "dist" else getattr(gs, op)(xs, ys, k=ks)
    grads = torch.autograd.grad(out, [t for t in (xs, ys, ks) if t.requires_grad], gout)
    it = iter(grads)
    return (out.detach(),) + tuple(next(it) if t.requires_grad else None for t in (xs, ys, ks))


# Builds without a SIMD ISA (GEOOPS_PORTABLE=1: build_isa() "DEFAULT") measured the materialising path's rows 1 ulp
# apart from the same rows made contiguous (logmap, float32, x of shape (10,) against (9, 10)), which the row-group
# kernels match: there the forward / dy / dk are compared to 4 ulps, bit for bit on SIMD builds.
_EXACT = _backend.build_isa() != "DEFAULT"


def _same(a, b):
    if _EXACT:
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a, b, rtol=4 * torch.finfo(a.dtype).eps, atol=0, equal_nan=True)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS_Y)
@pytest.mark.parametrize("xshape,yshape", [((64, 1, 10), (64, 11, 10)), ((10,), (9, 10)), ((3, 1, 1, 5), (3, 2, 4, 5))])
@pytest.mark.parametrize("wants", ["xyk", "x", "y"])
def test_fast_path_rep_matches_materialising_path(op, dtype, xshape, yshape, wants, monkeypatch):
    """The public op on the fast path takes the row-group kernels and gives the materialising path's values and
    gradients (GEOOPS_STEREO_REP=0): forward, dy, dk bit for bit, dx within the group sum's rounding (bit for bit
    where the group sum's order is torch.sum's: float32 at the WordNet loss's (64, 11, 10))."""
    g = torch.Generator().manual_seed(len(xshape) * 7 + len(wants))
    x = _points(g, xshape, dtype).requires_grad_("x" in wants)
    y = _points(g, yshape, dtype).requires_grad_("y" in wants)
    k = torch.tensor(-0.9, dtype=dtype).requires_grad_("k" in wants)
    shape = torch.broadcast_shapes(xshape, yshape)
    oshape = shape[:-1] if op == "dist" else shape
    gout = torch.randn(oshape, generator=g, dtype=torch.float64).to(dtype)
    calls = _spy(monkeypatch)
    new = _run(op, x, y, k, gout)
    assert calls == ["stereo_fwd_rep_cpu", "stereo_bwd_rep_cpu"]
    with torch.no_grad():  # the no-grad forward too
        assert torch.equal(getattr(gs, op)(x, y, k=k), new[0])
    assert calls[-1] == "stereo_fwd_rep_cpu"
    monkeypatch.setenv("GEOOPS_STEREO_REP", "0")
    n0 = len(calls)
    old = _run(op, x, y, k, gout)
    assert len(calls) == n0  # the knob: the materialising path
    assert _same(new[0], old[0])
    assert (new[2] is None) == (old[2] is None) and (new[2] is None or _same(new[2], old[2]))
    if new[1] is not None:
        tol = 8 * torch.finfo(dtype).eps * old[1].abs().max().item()
        assert new[1].shape == x.shape and (new[1] - old[1]).abs().max().item() <= tol
        if dtype == torch.float32 and xshape == (64, 1, 10) and _EXACT:
            assert torch.equal(new[1], old[1])
    if new[3] is not None:
        assert _same(new[3], old[3])


def test_fast_path_rep_dist_keepdim_and_wordnet_loss(monkeypatch):
    """The WordNet loss through geoopt's PoincareBall after patch_geoopt(): the row-group kernels, the same loss and
    gradient bits as the materialising path."""
    geoopt = pytest.importorskip("geoopt")
    import geoops.compat as compat

    g = torch.Generator().manual_seed(3)
    emb0 = _points(g, (200, 10), torch.float32, scale=0.3)
    u = torch.randint(0, 200, (64,), generator=g)
    cand = torch.randint(0, 200, (64, 11), generator=g)
    was = compat.is_patched()
    compat.patch_geoopt()
    try:
        ball = geoopt.PoincareBall(c=1.0)

        def step():
            emb = emb0.clone().requires_grad_()
            d = ball.dist(emb[u].unsqueeze(1), emb[cand])
            loss = torch.nn.functional.cross_entropy(-d, torch.zeros(64, dtype=torch.int64))
            loss.backward()
            return d.detach(), emb.grad

        calls = _spy(monkeypatch)
        d1, g1 = step()
        assert calls == ["stereo_fwd_rep_cpu", "stereo_bwd_rep_cpu"]
        monkeypatch.setenv("GEOOPS_STEREO_REP", "0")
        d0, g0 = step()
        assert torch.equal(d1, d0) and torch.equal(g1, g0)
    finally:
        (compat.patch_geoopt if was else compat.unpatch_geoopt)()
    x = emb0[u].unsqueeze(1).requires_grad_()
    out = gs.dist(x, emb0[cand], k=torch.tensor(-1.0), keepdim=True)
    assert out.shape == (64, 11, 1)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_rep_backward_under_a_dispatch_mode():
    """A backward that meets a dispatch mode goes through the custom op (the fallback materialises x's rows there and
    sums dx per group): the same gradients to rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(5)
    for wants in ((True, True, True), (True, False, False), (False, True, False)):
        x = _points(g, (8, 1, 6), torch.float64).requires_grad_(wants[0])
        y = _points(g, (8, 5, 6), torch.float64).requires_grad_(wants[1])
        k = torch.tensor(-1.0, dtype=torch.float64, requires_grad=wants[2])
        gout = torch.randn(8, 5, generator=g, dtype=torch.float64)
        out = gs.dist(x, y, k=k)
        ins = [t for t in (x, y, k) if t.requires_grad]
        ref = torch.autograd.grad(out, ins, gout, retain_graph=True)
        seen.clear()
        with Record():
            got = torch.autograd.grad(out, ins, gout)
        assert any("geoops.dist_bwd" in s for s in seen), seen
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rep_gradcheck_and_torch_func():
    """fp64 gradcheck through the row-group kernels; torch.func.grad (the materialising path) agrees."""
    g = torch.Generator().manual_seed(11)
    x = _points(g, (4, 1, 5), torch.float64).requires_grad_()
    y = _points(g, (4, 3, 5), torch.float64).requires_grad_()
    k = torch.tensor(-0.6, dtype=torch.float64, requires_grad=True)
    for op in OPS_Y:
        assert torch.autograd.gradcheck(lambda a, b, c, op=op: getattr(gs, op)(a, b, k=c), (x, y, k))
    f = lambda a, b: gs.dist(a, b, k=k.detach()).sum()  # noqa: E731
    gx = torch.func.grad(f)(x.detach(), y.detach())
    ex = torch.autograd.grad(f(x, y), x)[0]
    torch.testing.assert_close(gx, ex, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the short-row backward at D = 9..16
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [9, 10, 16])
@pytest.mark.parametrize("op", ["dist", "mobius_add", "logmap", "expmap", "lambda_x", "mobius_scalar_mul", "dist0"])
def test_short_row_backward_wide(op, dtype, d, monkeypatch):
    """The backward's short-row blocks at D = 9..16 (default) against the long-row path (GEOOPS_STEREO_BWD_SHORT=0):
    the same math with the row sums in another order, so gradients within a few ulps (relative to each gradient
    row's largest term); both within the fp64 reference's rule (tests/test_stereographic_short.py)."""
    spec = STEREO_OPS[op]
    g = torch.Generator().manual_seed(d)
    n = 75  # two blocks and a partial one on every build
    x = _points(g, (n, d), dtype)
    y = _points(g, (n, d), dtype) if spec.has_y else None
    r = torch.randn(n, 1, generator=g, dtype=torch.float64).to(dtype) if spec.has_r else None
    k = torch.tensor(-0.8, dtype=dtype)

    def grads():
        args = [x.clone().requires_grad_()]
        if y is not None:
            args.append(y.clone().requires_grad_())
        if r is not None:  # mobius_scalar_mul(r, x, k=k)
            args.insert(0, r.clone().requires_grad_())
        kt = k.clone().requires_grad_()
        out = getattr(gs, op)(*args, k=kt)
        gout = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(dtype)
        return torch.autograd.grad(out, args + [kt], gout)

    new = grads()
    monkeypatch.setenv("GEOOPS_STEREO_BWD_SHORT", "0")
    old = grads()
    eps = torch.finfo(dtype).eps
    for a, b in zip(new, old):
        # (per row for vector gradients; one scale for dr (n, 1), whose row sums can cancel, and for dk)
        scale = b.abs().amax(dim=-1, keepdim=True) if b.dim() > 1 and b.shape[-1] > 1 else b.abs().max()
        if b.dim() <= 1 and b.numel() == 1:  # dk: a sum over the rows
            scale = scale * n
        assert ((a - b).abs() <= 16 * eps * scale + 1e-300).all()


# ---------------------------------------------------------------- dist / dist0's backward without its call
def _dist_rows(g, n, d, kv, dtype):
    """n row pairs mixing interior points, points near the boundary, close pairs (|z| around the double series cut and
    below it), equal pairs and zero rows."""
    x = _points(g, (n, d), torch.float64, scale=0.9)
    y = _points(g, (n, d), torch.float64, scale=0.9)
    if kv < 0:
        x[3:9] = x[3:9] / x[3:9].norm(dim=-1, keepdim=True) * (1 - torch.tensor([1e-3, 5e-4, 2e-3, 1e-3, 3e-3, 1e-3],
                                                                                dtype=torch.float64))[:, None]
    x[10:16] = y[10:16] + torch.tensor([1e-1, 3e-2, 1e-2, 3e-3, 1e-4, 1e-6], dtype=torch.float64)[:, None] * \
        torch.randn(6, d, generator=g, dtype=torch.float64)
    x[20] = y[20]
    x[21] = 0
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [2, 10, 33])
@pytest.mark.parametrize("op", ["dist", "dist0"])
@pytest.mark.parametrize("kv", [-1.0, -0.05, 0.5])
def test_bwd_skip_call(op, d, kv, dtype, monkeypatch):
    """dist / dist0's backward without the vjp's atanc call (default, when dk is not wanted: A cancels from the
    gradient to x and y above the series cut) against the call (GEOOPS_STEREO_BWD_SKIP_CALL=0): dx, dy within a few
    ulps of each gradient row's scale, every dtype and k of both signs; with dk wanted, the call (the same bits)."""
    g = torch.Generator().manual_seed(d + int(kv * 10))
    n = 75
    x, y = _dist_rows(g, n, d, kv, dtype)
    gout = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)

    def grads(with_k):
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        k = torch.tensor(kv, dtype=dtype, requires_grad=with_k)
        out = gs.dist(xs, ys, k=k) if op == "dist" else gs.dist0(xs, k=k)
        ins = ([xs, ys] if op == "dist" else [xs]) + ([k] if with_k else [])
        return torch.autograd.grad(out, ins, gout)

    new, new_k = grads(False), grads(True)
    monkeypatch.setenv("GEOOPS_STEREO_BWD_SKIP_CALL", "0")
    old, old_k = grads(False), grads(True)
    for a, b in zip(new_k, old_k):  # dk wanted: the call
        assert torch.equal(a, b)
    ulps = 2 if dtype == torch.bfloat16 else 8
    for a, b in zip(new, old):
        # (a floor of 1e-6 of the largest gradient: bf16 rounds the near-boundary rows onto the boundary, where both
        # calls give gradients ~1e-15 through the clamped q that differ in their leading digit)
        scale = b.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-6 * b.float().abs().max().item())
        assert ((a.float() - b.float()).abs() <= ulps * torch.finfo(dtype).eps * scale).all()


def test_bwd_skip_call_accuracy(monkeypatch):
    """fp32 dist gradients without the call against the float64 gradient of the same inputs: within the low-precision
    rule |ours - ref64| <= 2 |ref32 - ref64| + floor (ref32: the kernels' float32 result with the call)."""
    g = torch.Generator().manual_seed(2)
    x, y = _dist_rows(g, 96, 10, -1.0, torch.float64)
    gout = torch.randn(96, generator=g, dtype=torch.float64)

    def grads(a, b, go):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        return torch.autograd.grad(gs.dist(a, b, k=torch.tensor(-1.0, dtype=a.dtype)), [a, b], go)

    x32, y32 = x.float(), y.float()
    ours = grads(x32, y32, gout.float())
    monkeypatch.setenv("GEOOPS_STEREO_BWD_SKIP_CALL", "0")
    ref32 = grads(x32, y32, gout.float())
    # the float64 gradient at the float32 inputs
    ref64 = grads(x32.double(), y32.double(), gout.float().double())
    for o, r32, r64 in zip(ours, ref32, ref64):
        floor = 4 * torch.finfo(torch.float32).eps * r64.abs().amax(dim=-1, keepdim=True)
        assert ((o.double() - r64).abs() <= 2 * (r32.double() - r64).abs() + floor).all()
