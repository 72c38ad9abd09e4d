"""Triton backend of the diagonal SSM family (geoops.kernels.ssm), tiny shapes.

Through the public API geoops.ssm (forced to the triton backend by conftest) against the fp64
reference: vandermonde / s4d_kernel values and gradients (float64 and float32), fftconv values and
gradients (causal, bidirectional, C_out > 1, D or not, half u), and op by op against the C++ kernels.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.ssm as gs  # noqa: E402
from geoops import _backend  # noqa: E402
from geoops.reference import ssm as ref  # noqa: E402
from geoops.kernels import ssm as S  # noqa: E402

HAVE_CPP = _backend.compiled() is not None


def _params(H, N, seed=0, C_out=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    log_dt = (torch.rand(H, generator=g, dtype=torch.float64) * 3 - 5).to(dtype)
    A = torch.complex(-0.5 - 0.1 * torch.rand(H, N, generator=g, dtype=torch.float64),
                      math.pi * torch.arange(N, dtype=torch.float64).expand(H, N)).to(cd)
    B = torch.randn(H, N, generator=g, dtype=torch.complex128).to(cd)
    C = torch.randn(*((C_out,) if C_out else ()), H, N, generator=g, dtype=torch.complex128).to(cd)
    return log_dt, A, B, C


def _rel(a, b):
    return ((a.to(b.dtype) - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _check_vs_reference(out, ins, reference, gout):
    """out (computed from the leaves ins) and the leaves' gradients for gout against reference(*copies of ins):
    values to 1e-10, gradients to 1e-9 relative to the largest entry."""
    out.backward(gout)
    q = [t.detach().clone().requires_grad_() for t in ins]
    expect = reference(*q)
    expect.backward(gout)
    assert _rel(out, expect) < 1e-10
    for a, b in zip(ins, q):
        assert _rel(a.grad, b.grad) < 1e-9


@pytest.mark.parametrize("L", [1, 10, 37])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_values_and_grads(device, L, disc):
    p = [t.to(device).requires_grad_() for t in _params(2, 3, seed=L, C_out=2)]
    K = gs.s4d_kernel(*p, L, disc)
    gK = torch.randn(K.shape, dtype=K.dtype, device=device)
    _check_vs_reference(K, p, lambda *q: ref.s4d_kernel(*q, L, disc), gK)


def test_s4d_kernel_fp32(device):
    p = [t.to(device) for t in _params(2, 4, seed=3, dtype=torch.float32)]
    K = gs.s4d_kernel(*p, 300)
    expect = ref.s4d_kernel(*[t.to(torch.complex128) if t.is_complex() else t.double() for t in p], 300)
    assert K.dtype == torch.float32 and _rel(K, expect) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("C_out", [None, 2])
@pytest.mark.parametrize("L", [1, 13])
def test_fftconv_values_and_grads(device, bidirectional, C_out, L):
    g = torch.Generator().manual_seed(L)
    kshape = ((C_out,) if C_out else ()) + ((2,) if bidirectional else ()) + (3, L)
    u = torch.randn(2, 3, L, generator=g, dtype=torch.float64).to(device).requires_grad_()
    k = torch.randn(*kshape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    D = torch.randn(3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    y = gs.fftconv(u, k, D, bidirectional=bidirectional)
    gy = torch.randn(y.shape, dtype=y.dtype, device=device)
    y.backward(gy)
    q = [t.detach().clone().requires_grad_() for t in (u, k, D)]
    yr = ref.fftconv(*q, bidirectional)
    yr.backward(gy)
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    for a, b in zip((u, k, D), q):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fftconv_low_precision(device, dtype):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 20, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(3, 20, generator=g).to(device)
    D = torch.randn(3, generator=g).to(device)
    y = gs.fftconv(u, k, D)
    assert y.dtype == dtype
    r64 = ref.fftconv(u.double(), k.double(), D.double())
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert (y.double() - r64).abs().max() <= tol * r64.abs().max() + 2 * (r64.to(dtype).double() - r64).abs().max()


@pytest.mark.skipif(not HAVE_CPP, reason="geoops._C not built")
def test_ops_match_cpp(device):
    C_ = _backend.compiled()
    g = torch.Generator().manual_seed(5)
    x = torch.complex(-torch.rand(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64))
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.complex128)
    for L in (1, 7, 50):
        for out64 in (False, True):
            a = S.vandermonde_fwd(v.to(device), x.to(device), L, out64).cpu()
            b = C_.vandermonde_fwd_cpu(v, x, L, out64)
            assert a.dtype == b.dtype and _rel(a, b.double()) < (1e-12 if out64 else 1e-5)
        gK = torch.randn(2, 3, L, generator=g, dtype=torch.float64)
        for mask in (1, 2, 3):
            a = S.vandermonde_bwd(gK.to(device), v.to(device), x.to(device), mask)
            b = C_.vandermonde_bwd_cpu(gK, v, x, mask)
            for s, t in zip(a, b):
                assert s.shape == t.shape
                if t.numel():
                    assert _rel(s.cpu(), t) < 1e-9
    u = torch.randn(2, 3, 11, generator=g)
    k = torch.randn(2, 2, 3, 11, generator=g)
    D = torch.randn(2, 3, generator=g)
    ya, ufa = S.fftconv_fwd(u.to(device), k.to(device), D.to(device), True)
    yb, ufb = C_.fftconv_fwd_cpu(u, k, D, True)
    torch.testing.assert_close(ya.cpu(), yb, rtol=1e-5, atol=1e-5)
    gy = torch.randn(yb.shape, generator=g)
    for mask in (1, 2, 4, 7):
        a = S.fftconv_bwd(gy.to(device), u.to(device), ufa, k.to(device), D.to(device), mask)
        b = C_.fftconv_bwd_cpu(gy, u, ufb, k, D, mask)
        for s, t in zip(a, b):
            assert s.shape == t.shape
            torch.testing.assert_close(s.cpu(), t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bidirectional,C_shape", [(False, ()), (True, (2,)), (False, (2,))])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_ssm_conv_values_and_grads(device, bidirectional, C_shape, disc):
    """The fused pair's ops on this backend (composition of the Triton pieces) against the fp64 reference."""
    p = [t.to(device) for t in _params(2, 3, seed=4, C_out=C_shape[0] if C_shape else None)]
    g = torch.Generator().manual_seed(9)
    u = torch.randn(2, 2, 13, generator=g, dtype=torch.float64).to(device)
    D = torch.randn(2, generator=g, dtype=torch.float64).to(device)
    ins = [t.detach().clone().requires_grad_() for t in [u] + p + [D]]
    y = gs.ssm_conv(*ins, discretization=disc, bidirectional=bidirectional)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=g).to(device)
    _check_vs_reference(y, ins, lambda *q: ref.ssm_conv(*q, disc, bidirectional), gy)


@pytest.mark.skipif(not HAVE_CPP, reason="geoops._C not built")
def test_fused_ops_match_cpp(device):
    C_ = _backend.compiled()
    log_dt, A, B, C = _params(3, 4, seed=6, C_out=2)
    for disc in ("zoh", "bilinear"):
        va, xa = S.ssm_discretize_fwd(log_dt.to(device), A.to(device), B.to(device), C.to(device), disc)
        vb, xb = C_.ssm_discretize_fwd_cpu(log_dt, A, B, C, disc)
        assert _rel(va.cpu(), vb) < 1e-13 and _rel(xa.cpu(), xb) < 1e-13
    v4 = vb.reshape(2, 1, 3, 4)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(2, 3, 11, generator=g)
    D = torch.randn(2, 3, generator=g)
    ya, kfa, ufa = S.ssm_conv_fwd(u.to(device), v4.to(device), xb.to(device), D.to(device), True)
    yb, kfb, ufb = C_.ssm_conv_fwd_cpu(u, v4, xb, D, True, True)
    torch.testing.assert_close(ya.cpu(), yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kfa.cpu(), kfb, rtol=1e-5, atol=1e-6)
    # forward only (keep_kf=False): the same y, no spectrum, on both backends
    yc, kfc, _ = S.ssm_conv_fwd(u.to(device), v4.to(device), xb.to(device), D.to(device), False, False)
    yd, kfd, _ = C_.ssm_conv_fwd_cpu(u, v4, xb, D, False, False)
    assert kfc.numel() == 0 and kfd.numel() == 0
    torch.testing.assert_close(yc.cpu(), ya.cpu(), rtol=0, atol=0)
    assert torch.equal(yd, yb)
    gy = torch.randn(yb.shape, generator=g)
    for mask in (1, 2, 4, 8, 15):
        a = S.ssm_conv_bwd(gy.to(device), u.to(device), ufa, kfa, v4.to(device), xb.to(device), D.to(device), mask)
        b = C_.ssm_conv_bwd_cpu(gy, u, ufb, kfb, v4, xb, D, mask)
        for s, t in zip(a, b):
            assert s.shape == t.shape
            if t.numel():
                assert _rel(s.cpu(), t) < 1e-4


@pytest.mark.parametrize("L", [1, 2, 3, 13, 40, 67])
@pytest.mark.parametrize("S_", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_forward_matches_composition(device, L, S_, dtype):
    """ssm_conv_fwd stores K straight into the circular FFT buffer (the anti-causal half reversed, strided
    stores with a length limit): its spectrum must equal the one built from a separate K tensor, at lengths
    where the blocking J*T exceeds L, L = 1 (no anti-causal taps) and L = 2 (n = 2L - 1: the two halves meet)."""
    g = torch.Generator().manual_seed(L * 10 + S_)
    C, H, N = 2, 3, 4
    v = torch.complex(torch.randn(C, S_, H, N, generator=g, dtype=torch.float64),
                      torch.randn(C, S_, H, N, generator=g, dtype=torch.float64))
    x = torch.complex(-0.05 - 0.5 * torch.rand(H, N, generator=g, dtype=torch.float64),
                      torch.randn(H, N, generator=g, dtype=torch.float64))
    u = torch.randn(2, H, L, generator=g, dtype=dtype)
    D = torch.randn(C, H, generator=g, dtype=dtype)
    y, kf, _ = S.ssm_conv_fwd(u.to(device), v.to(device), x.to(device), D.to(device), False)
    K = S.vandermonde_fwd(v.reshape(C * S_, H, N).to(device), x.to(device), L, dtype == torch.float64)
    kf_ref = S._kernel_spectrum(K.view(C, S_, H, L), L, ref.fft_size(L), dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert kf.shape == kf_ref.shape
    assert _rel(kf.cpu(), kf_ref.cpu()) < tol
    y_ref = S.fftconv_fwd(u.to(device), K.view(C, S_, H, L), D.to(device), False)[0]
    assert _rel(y.cpu(), y_ref.cpu()) < tol


# ---------------------------------------------------------------- session 32: the factors inside the kernels
def _knob(monkeypatch, on: bool):
    monkeypatch.setenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", "1" if on else "0")


def _both(monkeypatch, fn):
    """fn() with the factor kernels (GEOOPS_SSM_TRITON_FUSED_FACTORS unset) and with the torch factors (=0)."""
    monkeypatch.delenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", raising=False)
    new = fn()
    _knob(monkeypatch, False)
    old = fn()
    monkeypatch.delenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", raising=False)
    return new, old


def _modes(H, N, g, slow=False):
    re = -(1e-4 if slow else 0.5) * (1 + torch.rand(H, N, generator=g, dtype=torch.float64))
    return torch.complex(re, torch.randn(H, N, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("L,C,cdt", [(1, 1, torch.complex64), (37, 1, torch.complex64), (1, 1, torch.complex128),
                                     (37, 1, torch.complex128), (100, 3, torch.complex128),
                                     (301, 1, torch.complex128)], ids=str)
def test_vandermonde_fused_factors_match_torch_factors(device, monkeypatch, L, C, cdt):
    """The factor kernels against the torch factors (the path before session 32, under the knob): forward
    float32 within 2 float32 ulps of the largest entry (the same float64 factors, rounded alike: bit-identical in
    practice), float64 within 1e-14; the backward (the sums over j in float64 in another order) within 1e-6 /
    1e-13 of the largest entry, for each mask; N = 17 spans two mode tiles.  C = 3 (not H = 2: the channel loop
    and p = c H + h) at L = 100 only (J = 10 position blocks; session 53 dropped L = 2, C = 3: the same channel code
    with J = 1); J > 8 blocks at L = 100 and 301 (T = 18, J = 17, J T > L as at L = 37).  out64, not cdt, picks the
    factors' and gradients' dtype (the kernels widen x and v to float64 on load): complex64 changes only those loads
    and dv / dx's stores, which its L = 1 and 37 cases run (session 54 dropped its L = 100, C = 3 and L = 301 cases,
    ~6 CPU s: the same programs as complex128's past the loads)."""
    g = torch.Generator().manual_seed(L + 7 * C)
    H, N = 2, 17
    x = _modes(H, N, g).to(cdt).to(device)
    v = torch.randn(C, H, N, generator=g, dtype=torch.complex128).to(cdt).to(device)
    for out64 in (False, True):
        new, old = _both(monkeypatch, lambda: S.vandermonde_fwd(v, x, L, out64))
        assert new.shape == old.shape == (C, H, L) and new.dtype == old.dtype
        assert _rel(new.cpu(), old.cpu().double()) <= (1e-14 if out64 else 2.4e-7)
        gK = torch.randn(C, H, L, generator=g, dtype=new.dtype).to(device)
        for mask in (1, 2, 3):
            new, old = _both(monkeypatch, lambda: S.vandermonde_bwd(gK, v, x, mask))
            for a, b in zip(new, old):
                assert a.shape == b.shape and a.dtype == b.dtype
                if b.numel() and b.abs().max() > 0:
                    assert _rel(torch.view_as_real(a).cpu(), torch.view_as_real(b).cpu().double()) <= \
                        (1e-13 if out64 else 1e-6)
                elif b.numel():  # L = 1: dx = 0
                    assert a.abs().max() == 0


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("C_out", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_discretize_kernels_match_torch(device, monkeypatch, disc, C_out, dtype):
    """_zoh_fwd_kernel / _bilinear_fwd_kernel / _disc_bwd_kernel against the complex128 torch path: x to 1e-15
    per element (relative), v to 2e-15 of each channel's largest entry, the gradients to 2e-15 of each output's
    largest entry (float64 rounding of
    another evaluation order: Kahan expm1 / log1p, Smith division, a hand atan2; d log_dt, a sum over the modes
    with cancellation, to 1e-14; float32 gradients within one float32 rounding), masks, gv or gx absent.
    Steps from 1e-5 to 2 (|dt A| up to ~1e2: the atan2 octants) and N = 40 (two mode tiles)."""
    H, N = 5, 40
    log_dt, A, B, C = _params(H, N, seed=11, C_out=C_out, dtype=dtype)
    log_dt = (torch.linspace(math.log(1e-5), math.log(2.0), H, dtype=torch.float64)).to(dtype)
    ins = [t.to(device) for t in (log_dt, A, B, C)]
    new, old = _both(monkeypatch, lambda: S.ssm_discretize_fwd(*ins, disc))
    for a, b in zip(new, old):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.complex128
    assert ((new[1] - old[1]).abs() / old[1].abs()).max() <= 1e-15
    assert ((new[0] - old[0]).abs().amax(-1) / old[0].abs().amax(-1)).max() <= 2e-15  # per (c, h) channel
    g = torch.Generator().manual_seed(2)
    gv = torch.randn(C.shape, generator=g, dtype=torch.complex128).to(device)
    gx = torch.randn(H, N, generator=g, dtype=torch.complex128).to(device)
    none = gv.new_empty(0)
    # every mask with both cotangents; each absent one with mask 15 only (the kernel's HAS_GV / HAS_GX branches
    # hold every masked store, so the other masks there ran no other code: session 53)
    for gvi, gxi, masks in ((gv, gx, (15, 1, 6, 8)), (gv, none, (15,)), (none, gx, (15,))):
        for mask in masks:
            new, old = _both(monkeypatch, lambda: S.ssm_discretize_bwd(gvi, gxi, *ins, disc, mask))
            for i, (a, b) in enumerate(zip(new, old)):
                assert a.shape == b.shape and a.dtype == b.dtype
                if b.numel():  # d log_dt: a sum over the N modes (with cancellation) in another order
                    bound = (1e-14 if i == 0 else 2e-15) if dtype == torch.float64 else 1.2e-7
                    assert (a - b).abs().max() <= bound * b.abs().max()


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("C_out", [None, 2])
@pytest.mark.parametrize("L", [1, 33])
def test_s4d_kernel_fp32_values_and_grads(device, disc, C_out, L):
    """float32 parameters through the factor kernels: K and every gradient against the float64 reference
    (K to 1e-5, the gradients to 1e-4 of their largest entries: the float32 GEMMs)."""
    p = _params(3, 5, seed=L, C_out=C_out, dtype=torch.float32)
    ins = [t.to(device).requires_grad_() for t in p]
    K = gs.s4d_kernel(*ins, L, disc)
    assert K.dtype == torch.float32
    gK = torch.randn(K.shape, generator=torch.Generator().manual_seed(1)).to(device)
    K.backward(gK)
    q = [(t.detach().to(torch.complex128) if t.is_complex() else t.detach().double()).cpu().requires_grad_()
         for t in ins]
    expect = ref.s4d_kernel(*q, L, disc)
    expect.backward(gK.double().cpu())
    assert _rel(K.detach().cpu(), expect) < 1e-5
    for a, b in zip(ins, q):
        assert a.grad.dtype == a.dtype
        assert _rel(a.grad.cpu(), b.grad) < 1e-4


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_fp32_long_slow_modes(device, disc):
    """fp32 relative error <= 1e-5 at L = 65536 for slowly decaying modes (Re(dt A) ~ -1e-4 per step; the
    CPU suite's case, tests/test_ssm.py): the phases exp(x jT), exp(x i) in float64 inside the factor kernel."""
    H, N, L = 2, 16, 65536
    g = torch.Generator().manual_seed(3)
    log_dt = torch.full((H,), math.log(2e-4), dtype=torch.float32)
    A = torch.complex(-0.5 * (1 + 0.2 * torch.rand(H, N, generator=g, dtype=torch.float64)),
                      math.pi * torch.arange(N, dtype=torch.float64).expand(H, N)).to(torch.complex64)
    B = torch.complex(1 + 0.1 * torch.randn(H, N, generator=g, dtype=torch.float64),
                      0.1 * torch.randn(H, N, generator=g, dtype=torch.float64)).to(torch.complex64)
    C = torch.randn(H, N, generator=g, dtype=torch.complex128).to(torch.complex64)
    ins = [t.to(device) for t in (log_dt, A, B, C)]
    K = gs.s4d_kernel(*ins, L, disc)
    expect = ref.s4d_kernel(log_dt.double(), A.to(torch.complex128), B.to(torch.complex128), C.to(torch.complex128),
                            L, disc)
    assert _rel(K.cpu(), expect) < 1e-5


def test_s4d_kernel_host_work(device, host_work, monkeypatch):
    """The host cost of s4d_kernel (H = 4, N = 8, L = 100): the forward in 3 launches (discretisation, factors,
    GEMM) and at most 34 torch ops (31 counted in session 32, 17 of them the API's checks and the custom ops'
    dispatch; the torch factors ran 72 ops); forward + backward 7 launches, at most 88 ops (80; before: 212)."""
    monkeypatch.delenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", raising=False)
    p = [t.to(device) for t in _params(4, 8, seed=0)]
    gs.s4d_kernel(*p, 100)  # compile / warm caches outside the count
    with host_work() as w:
        gs.s4d_kernel(*p, 100)
    assert len(w.launches) == 3 and len(w.ops) <= 34, w
    q = [t.clone().requires_grad_() for t in p]
    with host_work() as w:
        gs.s4d_kernel(*q, 100).sum().backward()
    assert len(w.launches) == 7 and len(w.ops) <= 88, w


def test_fused_factors_knob_read_per_call(device, host_work, monkeypatch):
    """GEOOPS_SSM_TRITON_FUSED_FACTORS=0 (read per call) runs the torch factors: the GEMM launch alone."""
    p = [t.to(device) for t in _params(2, 3, seed=1)]
    for on in (False, True, False):
        _knob(monkeypatch, on)
        with host_work() as w:
            gs.s4d_kernel(*p, 20)
        assert ("_fwd_factors_kernel" in w.launches) == on and ("_zoh_fwd_kernel" in w.launches) == on, w


@pytest.mark.parametrize("S_", [1, 2])
def test_ssm_conv_fused_factors_match_torch_factors(device, monkeypatch, S_):
    """ssm_conv's forward (the GEMM stores K into the FFT buffer from the kernel-made factors) and backward
    (the factor kernels of vandermonde_bwd) against the torch factors: float32 within 1e-6, float64 1e-13."""
    g = torch.Generator().manual_seed(S_)
    C, H, N, L = 2, 3, 5, 29
    v = torch.randn(C, S_, H, N, generator=g, dtype=torch.complex128).to(device)
    x = _modes(H, N, g).to(device)
    for dtype in (torch.float32, torch.float64):
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        u = torch.randn(2, H, L, generator=g, dtype=dtype).to(device)
        D = torch.randn(C, H, generator=g, dtype=dtype).to(device)
        new, old = _both(monkeypatch, lambda: S.ssm_conv_fwd(u, v, x, D, True))
        for a, b in zip(new, old):
            assert _rel(torch.view_as_real(a).cpu() if a.is_complex() else a.cpu(),
                        (torch.view_as_real(b) if b.is_complex() else b).cpu().double()) < tol
        y, kf, uf = new
        gy = torch.randn(y.shape, generator=g, dtype=dtype).to(device)
        new, old = _both(monkeypatch, lambda: S.ssm_conv_bwd(gy, u, uf, kf, v, x, D, 15))
        for a, b in zip(new, old):
            ra = torch.view_as_real(a) if a.is_complex() else a
            rb = torch.view_as_real(b) if b.is_complex() else b
            assert _rel(ra.cpu(), rb.cpu().double()) < tol


def test_bilinear_log_octants(device, monkeypatch):
    """x = 2 atanh(dt A / 2) of _bilinear_fwd_kernel (hand log1p and atan2: a table of atan(k/8), k = 0..8, and
    the octants) on a grid of w = dt A / 2 that reaches every k and both signs of 1 - |w|^2, against torch's
    complex atanh: per element within 1e-15 (relative)."""
    p = -torch.tensor([0.01, 0.05, 0.3, 0.6, 0.9, 1.6, 3.0, 9.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.02, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0, 1.3, 2.0, 5.0], dtype=torch.float64)
    q = torch.cat([q, -q[1:]])
    A = torch.complex(2 * p[:, None].expand(-1, q.numel()), 2 * q[None, :].expand(p.numel(), -1)).reshape(1, -1)
    log_dt = torch.zeros(1, dtype=torch.float64)
    B = torch.ones_like(A)
    ins = [t.to(device) for t in (log_dt, A, B, B)]
    new, old = _both(monkeypatch, lambda: S.ssm_discretize_fwd(*ins, "bilinear"))
    assert ((new[1] - old[1]).abs() / old[1].abs()).max() <= 1e-15


@pytest.mark.skipif(not HAVE_CPP, reason="compares with the C++ backend")
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_mode_with_zero_decay_is_finite(monkeypatch, fused, dtype):
    """A mode at the bilinear pole (dt A = -2: Abar = 0, x = log Abar = -inf) contributes at l = 0 only: the
    factor kernels' and the torch factors' exp(x * 0) must be 1, not exp(-inf * 0) = NaN (as the C++ kernels)."""
    if fused:
        monkeypatch.delenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", raising=False)
    else:
        monkeypatch.setenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", "0")
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    A = torch.tensor([[-2.0 + 0.0j, -0.5 + math.pi * 1j]], dtype=cd)
    B = torch.tensor([[1.0 + 0.5j, 0.3 - 0.2j]], dtype=cd)
    C = torch.tensor([[0.7 - 1.1j, -0.4 + 0.9j]], dtype=cd)
    log_dt = torch.zeros(1, dtype=dtype)
    L = 40  # more than one block of positions: the j T + i split has j = 0 and i = 0 factors
    K = gs.s4d_kernel(log_dt, A, B, C, L, "bilinear")
    with geoops.use_backend("cpp"):
        Kc = gs.s4d_kernel(log_dt, A, B, C, L, "bilinear")
    assert torch.isfinite(K).all(), K
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(K.double(), Kc.double(), rtol=tol, atol=tol)


def _dD_case(device, dtype=torch.float32, B=3, C=2, H=3, L=300, seed=11):
    """g, u whose dD sums cancel (products spanning six decades, both signs) and the exact dD (float64 of the
    float32 values: their products are exact in float64, the sum nearly so)."""
    g = torch.Generator().manual_seed(seed)
    gy = (torch.randn(B, C, H, L, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, L, dtype=torch.float64))
    u = torch.randn(B, H, L, generator=g, dtype=torch.float64)
    gy, u = gy.to(dtype), u.to(dtype)
    exact = torch.einsum("bchl,bhl->ch", gy.double(), u.double())
    return gy.to(device), u.to(device), exact


def test_fftconv_bwd_dD_has_no_float64_temporaries(device):
    """Session 37: the float32 backward formed dD as an einsum of float64 copies of g (B, C, H, L) and u (B, H, L):
    two float64 temporaries of the activations' size and a float64 GEMM (1/64 rate on consumer GPUs).  dD is now a
    compensated float32 sum (_dd_kernel): no float64 tensor of more than C*H elements in fftconv_bwd or
    ssm_conv_bwd (mask dD alone)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    gy, u, _ = _dD_case(device)
    B, C, H, L = gy.shape
    k = torch.randn(C, 1, H, L).to(device)
    D = torch.randn(C, H).to(device)

    class Big64(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype in (torch.float64, torch.complex128) and t.numel() > C * H:
                    self.seen.append((str(func), tuple(t.shape)))
            return out

    with Big64():
        dD = S.fftconv_bwd(gy, u, u.new_empty(0, dtype=torch.complex64), k, D, 4)[2]
    assert not Big64.seen, Big64.seen
    assert dD.dtype == torch.float32 and dD.shape == (C, H)


@pytest.mark.parametrize("shape", [(3, 2, 3, 300), (1, 1, 1, 1), (2, 1, 2, 257), (5, 3, 1, 40)])
def test_fftconv_bwd_dD_float32_is_float64_accurate(device, shape):
    """The compensated float32 dD is as accurate as the float64 sum rounded to float32 (one rounding: within one
    float32 ulp of the exact value), on sums that cancel; fftconv_bwd and ssm_conv_bwd, odd lengths, one element,
    a partial last block; against the C++ kernels (a double accumulation) too."""
    B, C, H, L = shape
    gy, u, exact = _dD_case(device, B=B, C=C, H=H, L=L, seed=L)
    k = torch.randn(C, 1, H, L).to(device)
    D = torch.randn(C, H).to(device)
    ulp = exact.abs() * 2.0 ** -23 + 1e-30
    dD = S.fftconv_bwd(gy, u, u.new_empty(0, dtype=torch.complex64), k, D, 4)[2].cpu().double()
    assert ((dD - exact).abs() <= ulp).all(), ((dD - exact).abs() / ulp).max()
    # the eager float32 sum's error is larger (the 2x rule holds with room)
    ref32 = (gy.cpu() * u.cpu()[:, None]).sum(dim=(0, 3)).double()
    assert (dD - exact).abs().max() <= 2 * (ref32 - exact).abs().max() + 1e-30
    if HAVE_CPP:
        b = _backend.compiled().fftconv_bwd_cpu(gy.cpu(), u.cpu(), u.new_empty(0, dtype=torch.complex64).cpu(),
                                                k.cpu(), D.cpu(), 4)[2].double()
        assert ((dD - b).abs() <= 2 * ulp).all()
    v4 = torch.randn(C, 2, H, 2, dtype=torch.complex128).to(device) * 0.1
    x2 = torch.complex(-torch.rand(H, 2, dtype=torch.float64) - 0.1, torch.randn(H, 2, dtype=torch.float64)).to(device)
    uf = u.new_empty(0, dtype=torch.complex64)
    kf = S.ssm_conv_fwd(u, v4, x2, D, True)[1]
    dD2 = S.ssm_conv_bwd(gy, u, uf, kf, v4, x2, D, 8)[3].cpu().double()
    assert ((dD2 - exact).abs() <= ulp).all()
