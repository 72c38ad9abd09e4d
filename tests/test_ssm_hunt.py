"""Session 33 user trial (helper "hunt1"): modes whose discretised decay Abar is exactly 0.

Abar = 0 (x = log Abar = -inf) is reached from finite, stable parameters: the bilinear transform's pole
dt * A = -2 (e.g. S4D-Real's A = -2 with dt = 1), or a ZOH step exp(dt A) that underflows (dt |Re A| > ~745).
The kernel is then exact and finite: Abar**0 = 1 at l = 0 and 0 after, so K[l] = 2 Re sum C~ Abar**l.  Before,
the C++ kernels computed exp(x * 0) = exp(-inf * 0) = NaN (the whole row: every l is split as j T + i, and
the j = 0 / i = 0 factors hit it), and the reference backend's Abar**0 = 0**0 gave NaN at l = 0.
"""
from __future__ import annotations

import math

import pytest
import torch

import geoops
import geoops.ssm as gs

CPU_BACKENDS = ["cpp", "reference"]


def _kernel_by_powers(log_dt, A, B, C, L, disc):
    """K[h, l] = 2 Re sum_n C B~ Abar**l in complex128 Python scalars: Abar**l by repeated products from 1."""
    H, N = A.shape
    K = torch.zeros(H, L, dtype=torch.float64)
    for h in range(H):
        dt = math.exp(float(log_dt[h]))
        for n in range(N):
            a, b, c = complex(A[h, n]), complex(B[h, n]), complex(C[h, n])
            z = dt * a
            if disc == "zoh":
                ab = complex(math.exp(z.real) * math.cos(z.imag), math.exp(z.real) * math.sin(z.imag)) \
                    if z.real > -745 else 0j
                bt = (ab - 1) / a * b
            else:
                ab = (1 + z / 2) / (1 - z / 2)
                bt = dt / (1 - z / 2) * b
            p = 1 + 0j
            for l in range(L):
                K[h, l] += 2 * (c * bt * p).real
                p *= ab
    return K


def _params(A_re, log_dt):
    A = torch.tensor([[complex(A_re, 0.0), complex(-0.5, math.pi)]], dtype=torch.complex128)
    B = torch.tensor([[1.0 + 0.5j, 0.3 - 0.2j]], dtype=torch.complex128)
    C = torch.tensor([[0.7 - 1.1j, -0.4 + 0.9j]], dtype=torch.complex128)
    return torch.tensor([log_dt], dtype=torch.float64), A, B, C


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["bilinear_pole", "zoh_underflow"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_s4d_kernel_mode_with_zero_decay(case, backend, dtype):
    """A mode with Abar = 0 contributes 2 Re C~ at l = 0 only: finite kernel, other modes unchanged."""
    disc, A_re, log_dt_v = ("bilinear", -2.0, 0.0) if case == "bilinear_pole" else ("zoh", -0.5, 8.0)
    log_dt, A, B, C = _params(A_re, log_dt_v)
    L = 7
    expect = _kernel_by_powers(log_dt, A, B, C, L, disc)
    assert torch.isfinite(expect).all()
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    with geoops.use_backend(backend):
        K = gs.s4d_kernel(log_dt.to(dtype), A.to(cd), B.to(cd), C.to(cd), L, disc)
        u = torch.randn(2, 1, L, dtype=dtype, generator=torch.Generator().manual_seed(0))
        y = gs.ssm_conv(u, log_dt.to(dtype), A.to(cd), B.to(cd), C.to(cd), None, disc)
        y_pair = gs.fftconv(u, expect.to(dtype))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.isfinite(K).all(), K
    torch.testing.assert_close(K.double(), expect, rtol=tol, atol=tol)
    assert torch.isfinite(y).all(), y
    torch.testing.assert_close(y.double(), y_pair.double(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("L", [1, 5, 300])
def test_vandermonde_minus_infinite_log_decay(backend, L):
    """x = -inf (Abar = 0): exp(x l) is 1 at l = 0 and 0 after (the power's limit), never NaN."""
    v = torch.tensor([[0.7 - 1.1j, -0.4 + 0.9j]], dtype=torch.complex128)
    x = torch.tensor([[complex(-math.inf, 0.0), complex(-0.01, 0.3)]], dtype=torch.complex128)
    ell = torch.arange(L, dtype=torch.float64)
    expect = 2 * (v[0, 1] * torch.exp(x[0, 1] * ell)).real
    expect[0] += 2 * v[0, 0].real
    vv, xx = v.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(1, L, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with geoops.use_backend(backend):
        K = gs.vandermonde(vv, xx, L)
        dv, dx = torch.autograd.grad(K, (vv, xx), g)
    torch.testing.assert_close(K[0].detach(), expect, rtol=1e-12, atol=1e-12)
    # the limits: dK[l]/dv = 2 [l = 0] (torch's convention: dv = 2 conj(sum_l g[l] exp(x l))), dK/dx = l v exp(x l) = 0
    torch.testing.assert_close(dv[0, 0], (2 * g[0, 0]).to(torch.complex128), rtol=1e-12, atol=1e-12)
    assert dx[0, 0] == 0
    assert torch.isfinite(torch.view_as_real(dv)).all() and torch.isfinite(torch.view_as_real(dx)).all()


@pytest.mark.parametrize("kw, name", [(dict(d_model=8.0), "d_model"), (dict(d_state=16.0), "d_state"),
                                      (dict(d_state=True), "d_state")], ids=str)
def test_s4d_layer_sizes_must_be_ints(kw, name):
    """S4D(8, 16.0) used to fail inside torch.randn ("argument 'size' must be tuple of ints"): now a TypeError
    naming the argument."""
    from geoops.nn import S4D
    from geoops.nn.ssm import S4DKernel

    args = dict(d_model=8, d_state=16)
    args.update(kw)
    with pytest.raises(TypeError, match=f"S4D: {name} must be an int"):
        S4D(**args)
    with pytest.raises(TypeError, match="S4DKernel: N \\(d_state\\) must be an int"):
        S4DKernel(8, N=16.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_ssm_conv_float64_u_with_float32_parameters(backend, bidirectional):
    """A float64 u gets a float64 kernel on every backend: the reference backend used to build K with s4d_kernel of
    the float32 parameters (K rounded to float32, ~7e-7 off a float64 result) where the C++ kernels are exact."""
    g = torch.Generator().manual_seed(3)
    H, N, L = 3, 4, 50
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N).float().expand(H, N))
    B = torch.randn(H, N, dtype=torch.complex64, generator=g)
    C = torch.randn(*((2,) if bidirectional else ()), H, N, dtype=torch.complex64, generator=g)
    log_dt = torch.rand(H, generator=g) * 2 - 4
    u = torch.randn(2, H, L, dtype=torch.float64, generator=g)
    D = torch.randn(H, dtype=torch.float64, generator=g)
    with geoops.use_backend("cpp"):  # the oracle: the same parameters upcast exactly to 64 bits
        expect = gs.ssm_conv(u, log_dt.double(), A.cdouble(), B.cdouble(), C.cdouble(), D, bidirectional=bidirectional)
    with geoops.use_backend(backend):
        y = gs.ssm_conv(u, log_dt, A, B, C, D, bidirectional=bidirectional)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)
