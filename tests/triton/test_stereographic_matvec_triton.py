"""Triton kernels of the Moebius matvec epilogue (mobius_scale: mobius_matvec, mobius_pointwise_mul,
mobius_blockdiag_matvec on the Triton backend) against the float64 composition and the reference ops
(interpreter on CPU, small odd shapes).

Run on their own: ``TRITON_INTERPRET=1 python -m pytest tests/triton/test_stereographic_matvec_triton.py``.
On a GPU (TRITON_INTERPRET=0) the same tests run the compiled kernels on CUDA tensors.
"""
import pytest
import torch

import geoops.stereographic as gs
from geoops._ops import stereographic as ops
from geoops.reference import stereographic as ref

pytest.importorskip("triton")


def _rows(R, D, dtype, device, seed, radius=0.8, k=-1.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(R, D, generator=g, dtype=torch.float64)
    r = radius * torch.rand(R, 1, generator=g, dtype=torch.float64) ** (1.0 / max(D, 1))
    scale = 1.0 / abs(k) ** 0.5 if k != 0 else 1.0
    return (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300) * r * scale).to(device, dtype)


def _composition(v, x, k):
    """The eager float64 composition (the path the Triton backend ran before session 32)."""
    st = ops._scale_reference_stats(v, x, k)
    return (v * (st[:, 2:3] * st[:, 4:5]).to(v.dtype)), st


def _composition_bwd(g, v, x, k, st):
    kk = k.to(torch.float64).reshape(-1, 1)
    x2, v2, a, da, b, db = (st[:, i:i + 1] for i in range(6))
    s = (g.double() * v.double()).sum(-1, keepdim=True)
    gv = g.double() * (a * b) + v.double() * (2 * s * a * db * kk * a * a)
    gx = x.double() * (2 * s * (da * kk * b + a * db * kk * v2 * 2 * a * da * kk))
    gk = (s * (da * x2 * b + a * db * (v2 * a * a + kk * v2 * 2 * a * da * x2))).reshape(-1)
    return gv, gx, gk


def test_the_triton_epilogue_is_used(device, host_work, monkeypatch):
    """mobius_matvec's forward on the Triton backend: the GEMM (torch) and one epilogue kernel launch, not the eager
    float64 composition (~40 torch ops on [R, D] float64 copies); GEOOPS_TRITON_MOBIUS_SCALE=0 restores that."""
    import geoops
    assert geoops._backend.resolve(torch.device(device), "stereographic") == "triton"
    m = torch.randn(9, 7, dtype=torch.float32, device=device) * 0.3
    x = _rows(33, 7, torch.float32, device, 0)
    with host_work() as w:
        gs.mobius_matvec(m, x, k=-1.0)
    assert w.launches == ["_scale_fwd_kernel"], w
    assert len(w.ops) <= 16, w  # views, the GEMM, two allocations (14 in session 32)
    monkeypatch.setenv("GEOOPS_TRITON_MOBIUS_SCALE", "0")
    with host_work() as w0:
        gs.mobius_matvec(m, x, k=-1.0)
    assert w0.launches == [] and len(w0.ops) > 3 * len(w.ops), w0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k", [-1.0, -0.3, 0.0, 0.8, "rows"])
@pytest.mark.parametrize("Do,Di", [(5, 3), (1, 1), (130, 7), (17, 257)])
def test_scale_kernels_match_the_composition(device, dtype, k, Do, Di):
    """Values, stats and every gradient of the epilogue kernels against the float64 composition: odd widths, rows
    wider than one 128-column chunk, per-row k of both signs."""
    from geoops.kernels import stereographic as tk
    R = 37
    kk = (torch.linspace(-1.2, 0.9, R, dtype=torch.float64) if k == "rows"
          else torch.tensor([k], dtype=torch.float64)).to(device)
    kd = kk if dtype == torch.float64 else kk.float()
    kk = kd.double()  # the float32 k the kernels see
    x = _rows(R, Di, dtype, device, 1, k=-1.0)
    v = _rows(R, Do, dtype, device, 2, radius=2.0) * 0.5
    g = _rows(R, Do, dtype, device, 3, radius=1.0)
    out, st = tk.scale_fwd(v, x, kd)
    want, wst = _composition(v.double(), x.double(), kk)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(st, wst, rtol=1e-9, atol=1e-12)  # a', b': cancellation near the series cut
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    for mask in (7, 1, 2, 4, 5):
        gv, gx, gk = tk.scale_bwd(g, v, x, kd, st, mask)
        wv, wx, wk = _composition_bwd(g.double(), v.double(), x.double(), kk, wst)
        for bit, got, ref_ in ((1, gv, wv), (2, gx, wx), (4, gk, wk)):
            if mask & bit:
                gt = max(tol, 1e-9)  # the stats' derivatives carry ~1e-11 (above) into the gradients
                torch.testing.assert_close(got.double(), ref_, rtol=gt, atol=gt * (ref_.abs().max().item() + 1e-30))
            else:
                assert got.numel() == 0


def test_scale_kernels_outside_the_ball_and_empty(device):
    """Points on or just outside the ball (k|x|^2 >= 1 for k < 0) take the C++ kernel's clamped values and bounded
    derivatives (the eager composition's a' there is ~ -5e14: the unbounded gradient issue 6 forbids); R = 0 launches
    nothing."""
    import geoops
    from geoops.kernels import stereographic as tk
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0000001], [0.6, 0.8], [0.0, 0.99999]], dtype=torch.float64)
    v = torch.tensor([[0.3, 0.2, 0.1], [0.1, -0.2, 0.3], [0.0, 0.5, 0.1], [0.1, 0.1, 0.1]], dtype=torch.float64)
    k = torch.tensor([-1.0], dtype=torch.float64)
    out, st = tk.scale_fwd(v.to(device), x.to(device), k.to(device))
    assert torch.isfinite(out).all() and torch.isfinite(st).all() and st[:, 3].abs().max() < 1e5
    gv, gx, gk = tk.scale_bwd(torch.ones_like(out), v.to(device), x.to(device), k.to(device), st, 7)
    assert all(torch.isfinite(t).all() and t.abs().max() < 1e8 for t in (gv, gx, gk))
    cpp = geoops._backend.compiled()
    if cpp is not None:
        cout, cst = cpp.mobius_scale_fwd_cpu(v, x, k)
        torch.testing.assert_close(out.cpu(), cout, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(st.cpu(), cst, rtol=1e-10, atol=1e-12)
        for got, want in zip((gv, gx, gk), cpp.mobius_scale_bwd_cpu(torch.ones_like(v), v, x, k, cst, 7)):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)
    e = torch.empty(0, 3, dtype=torch.float64, device=device)
    out, st = tk.scale_fwd(e, e[:, :2], k.to(device))
    assert out.shape == (0, 3) and st.shape == (0, 6)
    assert [t.numel() for t in tk.scale_bwd(e, e, e[:, :2], k.to(device), st, 7)] == [0, 0, 0]


@pytest.mark.parametrize("k", [-1.0, 0.5])
def test_public_ops_on_triton_match_the_reference(device, k):
    """mobius_matvec, mobius_pointwise_mul and mobius_blockdiag_matvec on the Triton backend: values and gradients
    (to m / w / blocks, x and k) against the reference ops in float64."""
    R, Di, Do = 11, 6, 5
    x0 = _rows(R, Di, torch.float64, device, 4, k=-1.0)
    m0 = torch.randn(Do, Di, dtype=torch.float64, device=device) * 0.4
    w0 = torch.randn(Di, dtype=torch.float64, device=device)
    b0 = torch.randn(3, 2, 2, dtype=torch.float64, device=device) * 0.5
    cases = (
        (lambda a, x, kk: gs.mobius_matvec(a, x, k=kk), lambda a, x, kk: ref.mobius_matvec(a, x, k=kk), m0),
        (lambda a, x, kk: gs.mobius_pointwise_mul(a, x, k=kk), lambda a, x, kk: ref.mobius_pointwise_mul(a, x, k=kk),
         w0),
        (lambda a, x, kk: gs.mobius_blockdiag_matvec(a, x, k=kk),
         lambda a, x, kk: ref.mobius_matvec(torch.block_diag(*a.unbind(0)), x, k=kk), b0),
    )
    for ours, theirs, a0 in cases:
        got, want = [], []
        for fn, sink in ((ours, got), (theirs, want)):
            a, x = a0.clone().requires_grad_(), x0.clone().requires_grad_()
            kk = torch.tensor(k, dtype=torch.float64, device=device, requires_grad=True)
            out = fn(a, x, kk)
            (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=device).reshape(out.shape)).sum() \
                .backward()
            sink += [out.detach(), a.grad, x.grad, kk.grad]
        for g_, w_ in zip(got, want):
            torch.testing.assert_close(g_, w_, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_kernels(device):
    from geoops.kernels import stereographic as tk  # noqa: F401  (the kernels must import)
    x = _rows(4, 3, torch.float64, device, 5, k=-1.0).requires_grad_()
    m = (torch.randn(2, 3, dtype=torch.float64, device=device) * 0.5).requires_grad_()
    k = torch.tensor(-0.7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m_, x_, k_: gs.mobius_matvec(m_, x_, k=k_), (m, x, k))
