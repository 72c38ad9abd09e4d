"""Session 35 numerical trial (helper "numhunt"): geoops.ssm at the edges of the math, one test per defect."""
from __future__ import annotations

import pytest
import torch

import geoops
import geoops.ssm as gs
from geoops.reference import ssm as ref


def _params(H, N, re_a, log_dt, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(torch.full((H, N), re_a, dtype=torch.float64),
                      torch.pi * torch.arange(N, dtype=torch.float64).expand(H, N).contiguous())
    B = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    C = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    return torch.full((H,), float(log_dt), dtype=torch.float64), A, B, C


@pytest.mark.parametrize("fn", ["reference.s4d_kernel", "s4d_kernel", "ssm_conv"])
@pytest.mark.parametrize("re_a, log_dt", [(-0.5, 30.0), (-1e6, -6.0), (-2.0, 6.0)])
@pytest.mark.parametrize("L", [2, 5, 64])
def test_reference_s4d_kernel_gradient_where_abar_underflows(fn, re_a, log_dt, L):
    """The eager reference formed Abar**l: where dt |Re A| > ~745 (log_dt = 30, or a fast mode Re A = -1e6 at
    dt = 2.5e-3) Abar underflows to 0 and torch's complex pow has a NaN derivative at 0 (0**0 is NaN), so the
    reference backend's s4d_kernel / ssm_conv gave NaN gradients to log_dt and A where the math is finite (the
    C++ backend gave the right ones).  Now exp(l log Abar) with log Abar in closed form, as discretize_log."""
    ld, A, B, C = _params(2, 3, re_a, log_dt)
    u = torch.randn(2, 2, L, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(backend):
        args = [t.clone().requires_grad_() for t in (ld, A, B, C)]
        with geoops.use_backend(backend):
            if fn == "reference.s4d_kernel":
                y = ref.s4d_kernel(*args, L, "zoh")
            elif fn == "s4d_kernel":
                y = gs.s4d_kernel(*args, L)
            else:
                y = gs.ssm_conv(u, *args)
        w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        return [y.detach()] + list(torch.autograd.grad((y * w).sum(), args))

    got, exp = run("reference"), run("cpp")
    # d/dlog_dt and d/dA hold dt times terms of size |C B| |Im A| / |A|: the reference's own round-off (its exp(dt A) - 1 in
    # cos / sin of Im(dt A) ~ 1e13) is ~1e-16 of that scale, not of the (here zero) gradient
    dt_scale = torch.exp(ld).max().item() * (B * C).abs().sum().item() * (A.imag.abs().max() / A.abs().min()).item()
    for name, a, b in zip(("y", "log_dt", "A", "B", "C"), got, exp):
        assert torch.isfinite(a).all(), name
        atol = 1e-12 * (1 + b.abs().max().item() + (dt_scale * L if name in ("log_dt", "A") else 0.0))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=atol, msg=name)
