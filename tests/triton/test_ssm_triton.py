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
