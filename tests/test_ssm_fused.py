"""Diagonal SSM family, the fused parts: ssm_conv (kernel generated into the FFT buffer, its backward
into the Vandermonde backward) against the two-call composition and the fp64 reference, the C++
discretisation and its hand-written chain rule, the FFT size, both FFT paths (per-row MKL and the
batched ATen fallback), opcheck and torch.compile of the new ops."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.ssm as gs
from geoops import _backend
from geoops.reference import ssm as ref

_C = _backend.compiled()
needs_cpp = pytest.mark.skipif(_C is None, reason="geoops._C not built")


@contextlib.contextmanager
def fft_path(direct: bool):
    """Force the per-row MKL path (direct=True, where available) or the batched ATen fallback."""
    if _C is None:
        yield
        return
    before = _C.ssm_direct_fft(-1)
    _C.ssm_direct_fft(1 if direct else 0)
    try:
        yield
    finally:
        _C.ssm_direct_fft(1 if before else 0)


PATHS = [True, False]


def _params(H, N, seed=0, C_shape=(), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    log_dt = (torch.rand(H, generator=g, dtype=torch.float64) * 2.5 - 4.5).to(dtype)
    A = torch.complex(-0.5 - 0.3 * torch.rand(H, N, generator=g, dtype=torch.float64),
                      math.pi * torch.arange(N, dtype=torch.float64).expand(H, N)).to(cd)
    B = torch.complex(1 + 0.1 * torch.randn(H, N, generator=g, dtype=torch.float64),
                      0.1 * torch.randn(H, N, generator=g, dtype=torch.float64)).to(cd)
    C = torch.randn(*C_shape, H, N, generator=g, dtype=torch.complex128).to(cd)
    return log_dt, A, B, C


def _composition(u, log_dt, A, B, C, D, disc, bid):
    L = u.shape[-1]
    H, N = A.shape
    K = gs.s4d_kernel(log_dt, A, B, C.reshape(-1, H, N) if C.dim() > 2 else C, L, disc)
    if C.dim() > 2:
        K = K.reshape(*C.shape[:-2], H, L)
    kd = torch.float64 if u.dtype == torch.float64 else torch.float32
    return gs.fftconv(u, K.to(kd), D, bidirectional=bid)


@needs_cpp
@pytest.mark.parametrize("direct", PATHS)
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("bid,C_shape", [(False, ()), (False, (3,)), (True, (2,)), (True, (2, 2))])
@pytest.mark.parametrize("L", [1, 7, 100, 1001])
def test_ssm_conv_matches_composition_fp64(L, bid, C_shape, disc, direct):
    H, N, Bn = 3, 4, 2
    log_dt, A, B, C = _params(H, N, seed=L, C_shape=C_shape)
    g = torch.Generator().manual_seed(L + 1)
    u = torch.randn(Bn, H, L, generator=g, dtype=torch.float64)
    D = torch.randn(*((C_shape[0],) if len(C_shape) == (2 if bid else 1) else ()), H, generator=g,
                    dtype=torch.float64)
    ins = [t.detach().clone().requires_grad_() for t in (u, log_dt, A, B, C, D)]
    ins2 = [t.detach().clone().requires_grad_() for t in (u, log_dt, A, B, C, D)]
    with fft_path(direct):
        y = gs.ssm_conv(*ins, discretization=disc, bidirectional=bid)
        y2 = _composition(*ins2, disc, bid)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        y.backward(gy)
        y2.backward(gy)
    expect = ref.ssm_conv(u, log_dt, A, B, C, D, disc, bid)
    torch.testing.assert_close(y, expect, rtol=1e-9, atol=1e-10 * expect.abs().max().item())
    torch.testing.assert_close(y, y2, rtol=1e-9, atol=1e-10 * expect.abs().max().item())
    for name, a, b in zip(("u", "log_dt", "A", "B", "C", "D"), ins, ins2):
        scale = b.grad.abs().max().item()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-9 * scale + 1e-300, msg=name)


@needs_cpp
@pytest.mark.parametrize("direct", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bid,C_shape", [(False, ()), (False, (3,)), (True, (2, 2))])
def test_ssm_conv_forward_only_keeps_no_spectrum(direct, dtype, bid, C_shape):
    """The forward-only call (no autograd: keep_kf=False, the spectra stay in per-thread scratch) gives the
    same y, bit for bit, as the autograd forward that keeps kf, and matches the fp64 reference."""
    H, N, L, Bn = 5, 6, 777, 3
    log_dt, A, B, C = _params(H, N, seed=11, C_shape=C_shape, dtype=dtype)
    g = torch.Generator().manual_seed(12)
    u = torch.randn(Bn, H, L, generator=g, dtype=torch.float64).to(dtype)
    Cn = C_shape[0] if C_shape else 1
    D = torch.randn(Cn, H, generator=g, dtype=torch.float64).to(dtype) if C_shape else torch.randn(H, generator=g).to(dtype)
    ops = torch.ops.geoops
    v, x = ops.ssm_discretize_fwd(log_dt, A, B, C, "zoh")
    v4 = v.reshape(Cn, 2 if bid else 1, H, N)
    D2 = (D if D.dim() == 2 else D.unsqueeze(0)).expand(Cn, H).contiguous()
    with fft_path(direct):
        y0, kf0, uf0 = ops.ssm_conv_fwd(u, v4, x, D2, False, False)
        y1, kf1, _ = ops.ssm_conv_fwd(u, v4, x, D2, False, True)
        y2 = gs.ssm_conv(u, log_dt, A, B, C, D, bidirectional=bid)  # no grad wanted: the keep_kf=False call
    assert kf0.numel() == 0 and uf0.numel() == 0 and kf1.shape == (Cn, H, _C.ssm_fft_size(L) // 2 + 1)
    assert torch.equal(y0, y1)
    assert torch.equal(y2, y0 if C_shape else y0.squeeze(1))
    r = [t.to(torch.complex128 if t.is_complex() else torch.float64) for t in (u, log_dt, A, B, C, D)]
    expect = ref.ssm_conv(*r, "zoh", bid)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert ((y2.double() - expect).abs().max() / expect.abs().max()).item() < tol


@needs_cpp
@pytest.mark.parametrize("direct", PATHS)
@pytest.mark.parametrize("udt", [torch.float32, torch.bfloat16], ids=str)
def test_ssm_conv_fp32_and_half(direct, udt):
    """fp32 parameters, long-ish L: the fused pair vs the fp64 reference (values and gradients)."""
    H, N, L = 4, 8, 3000
    p32 = _params(H, N, seed=3, dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, H, L, generator=g).to(udt)
    D = torch.randn(H, generator=g)
    ins = [t.detach().clone().requires_grad_() for t in (u,) + p32 + (D,)]
    with fft_path(direct):
        y = gs.ssm_conv(*ins)
        gy = torch.randn(y.shape, generator=g)
        y.float().backward(gy)
    assert y.dtype == udt
    r = [t.detach().double().requires_grad_() if not t.is_complex() else t.detach().to(torch.complex128).requires_grad_()
         for t in (u,) + p32 + (D,)]
    yr = ref.ssm_conv(*r)
    yr.backward(gy.double())
    tol = 1e-5 if udt == torch.float32 else 1e-2
    assert ((y.double() - yr).abs().max() / yr.abs().max()).item() < tol
    if udt == torch.float32:
        for name, a, b in zip(("u", "log_dt", "A", "B", "C", "D"), ins, r):
            err = ((a.grad.to(b.grad.dtype) - b.grad).abs().max() / b.grad.abs().max()).item()
            assert err < 1e-4, (name, err)


@needs_cpp
@pytest.mark.parametrize("direct", PATHS)
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_gradcheck_ssm_conv_fused(disc, direct):
    log_dt, A, B, C = _params(2, 3, seed=7, C_shape=(2,))
    g = torch.Generator().manual_seed(8)
    u = torch.randn(2, 2, 9, generator=g, dtype=torch.float64)
    D = torch.randn(2, 2, generator=g, dtype=torch.float64)
    ins = [t.detach().clone().requires_grad_() for t in (u, log_dt, A, B, C, D)]
    with fft_path(direct):
        assert gradcheck(lambda *a: gs.ssm_conv(*a, discretization=disc), ins, fast_mode=True)
        Cb = torch.randn(2, 2, 3, generator=g, dtype=torch.complex128, requires_grad=True)
        assert gradcheck(lambda u, Cb, ld: gs.ssm_conv(u, ld, A.detach(), B.detach(), Cb, None, disc, True),
                         (ins[0], Cb, ins[1]), fast_mode=True)


# ---------------------------------------------------------------- discretisation
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("C_shape", [(), (2,)])
def test_discretize_matches_reference(disc, C_shape):
    log_dt, A, B, C = _params(3, 5, seed=2, C_shape=C_shape)
    A = A.clone()
    A[0, 0] = complex(-1e-9, 1e-9)  # ZOH's (e^z - 1)/A near z = 0 without cancellation
    v, x = gs.discretize(log_dt, A, B, C, disc)
    vr, xr = ref.discretize_log(log_dt, A, B, C, disc)
    assert v.dtype == x.dtype == torch.complex128 and v.shape == C.shape and x.shape == A.shape
    torch.testing.assert_close(v, vr, rtol=1e-13, atol=0)
    torch.testing.assert_close(x, xr, rtol=1e-13, atol=0)
    # x is log Abar of the textbook discretisation
    Ct, Abar = ref.discretize(log_dt, A, B, C, disc)
    torch.testing.assert_close(torch.exp(x), Abar, rtol=1e-13, atol=0)
    torch.testing.assert_close(v, Ct, rtol=1e-12, atol=0)


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_gradcheck_discretize(disc, monkeypatch):
    log_dt, A, B, C = _params(2, 3, seed=5, C_shape=(2,))
    ins = [t.detach().clone().requires_grad_() for t in (log_dt, A, B, C)]
    assert gradcheck(lambda *a: gs.discretize(*a, disc), ins)
    # the closed-form chain rule of the Triton/CUDA backend's torch path (GEOOPS_SSM_TRITON_FUSED_FACTORS=0: CPU
    # tensors outside the interpreter; its kernel, _disc_bwd_kernel, is held to this path in tests/triton)
    # against the reference autograd
    pytest.importorskip("triton")
    from geoops.kernels import ssm as K

    monkeypatch.setenv("GEOOPS_SSM_TRITON_FUSED_FACTORS", "0")

    g = torch.Generator().manual_seed(6)
    gv = torch.randn(C.shape, generator=g, dtype=torch.complex128)
    gx = torch.randn(A.shape, generator=g, dtype=torch.complex128)
    ours = K.ssm_discretize_bwd(gv, gx, log_dt, A, B, C, disc, 15)
    cpp = torch.ops.geoops.ssm_discretize_bwd(gv, gx, log_dt, A, B, C, disc, 15)
    v, x = ref.discretize_log(*ins, disc)
    expect = torch.autograd.grad((v, x), ins, (gv, gx))
    for a, b, c in zip(ours, cpp, expect):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-14)


def test_discretize_fp32_inputs_give_fp32_grads():
    log_dt, A, B, C = _params(2, 3, seed=1, dtype=torch.float32)
    ins = [t.detach().clone().requires_grad_() for t in (log_dt, A, B, C)]
    v, x = gs.discretize(*ins, "zoh")
    (v.abs().sum() + x.real.sum()).backward()
    assert [t.grad.dtype for t in ins] == [torch.float32, torch.complex64, torch.complex64, torch.complex64]


# ---------------------------------------------------------------- FFT size and paths
@needs_cpp
def test_fft_size():
    for L in list(range(0, 70)) + [1009, 16000, 16384, 16385, 65536]:
        n = ref.fft_size(L)
        assert n == _C.ssm_fft_size(L) and n >= max(2, 2 * L - 1)
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1
    assert ref.fft_size(16384) == 32768 and ref.fft_size(1009) == 2025 and ref.fft_size(16000) == 32000


@needs_cpp
@pytest.mark.parametrize("direct", PATHS)
@pytest.mark.parametrize("L", [1, 1009])
def test_fftconv_paths_agree(direct, L):
    """Prime L (n = 2025 < 2L), both FFT paths, causal and bidirectional, against the fp64 reference."""
    g = torch.Generator().manual_seed(L)
    u = torch.randn(2, 3, L, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 3, L, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    with fft_path(direct):
        y = gs.fftconv(u, k, D, bidirectional=True)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(y, (u, k, D), gy)
    u2, k2, D2 = (t.detach().clone().requires_grad_() for t in (u, k, D))
    y2 = ref.fftconv(u2, k2, D2, True)
    expect = torch.autograd.grad(y2, (u2, k2, D2), gy)
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, expect):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- torch.library / torch.compile
def test_opcheck_fused_ops():
    g = torch.Generator().manual_seed(0)
    log_dt, A, B, C = _params(3, 4, seed=0, C_shape=(2, 2))
    ops = torch.ops.geoops
    for disc in ("zoh", "bilinear"):
        torch.library.opcheck(ops.ssm_discretize_fwd.default, (log_dt, A, B, C, disc))
        v, x = ops.ssm_discretize_fwd(log_dt, A, B, C, disc)
        torch.library.opcheck(ops.ssm_discretize_bwd.default, (torch.randn_like(v), torch.randn_like(x), log_dt, A, B,
                                                                 C, disc, 15))
        torch.library.opcheck(ops.ssm_discretize_bwd.default, (v[:0].reshape(0), torch.randn_like(x), log_dt.float(),
                                                                 A, B, C, disc, 3))
    v, x = ops.ssm_discretize_fwd(log_dt, A, B, C, "zoh")
    u = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    D = torch.randn(2, 3, generator=g, dtype=torch.float64)
    torch.library.opcheck(ops.ssm_conv_fwd.default, (u, v, x, D, True))
    torch.library.opcheck(ops.ssm_conv_fwd.default, (u.float(), v[:, :1], x, None, False))
    torch.library.opcheck(ops.ssm_conv_fwd.default, (u, v, x, D, False, False))
    y, kf, uf = ops.ssm_conv_fwd(u, v, x, D, True)
    gy = torch.randn_like(y)
    torch.library.opcheck(ops.ssm_conv_bwd.default, (gy, u, uf, kf, v, x, D, 15))
    torch.library.opcheck(ops.ssm_conv_bwd.default, (gy, u, uf[:0].reshape(0), kf, v, x, None, 5))


def test_compile_ssm_conv_fused_bidirectional():
    log_dt, A, B, C = _params(3, 4, seed=2, C_shape=(2,), dtype=torch.float32)
    u = torch.randn(2, 3, 33)
    D = torch.randn(3)
    fn = torch.compile(lambda *a: gs.ssm_conv(*a, discretization="bilinear", bidirectional=True), fullgraph=True,
                       backend="aot_eager")
    ins = [t.detach().clone().requires_grad_() for t in (u, log_dt, A, B, C, D)]
    out = fn(*ins)
    torch.testing.assert_close(out, gs.ssm_conv(u, log_dt, A, B, C, D, "bilinear", True))
    out.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in ins)
