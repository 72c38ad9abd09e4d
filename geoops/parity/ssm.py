"""Parity cases of the diagonal SSM family (run by ``python -m geoops.parity``).

vandermonde / s4d_kernel (both discretisations, C_out > 1, odd L, L = 1, slowly decaying modes at
L = 8192) in float64 and float32; fftconv (causal and bidirectional, C_out > 1, odd L, L = 1) in every
dtype, with k and D kept float32 under half u (the layer's parameters); ssm_conv in float64/float32.
Gradients w.r.t. every tensor argument.  The "reference in the same dtype" of fftconv computes half
inputs in float32 (torch's CPU FFT has no half) and rounds the result.
"""
from __future__ import annotations

import math
from typing import List

import torch

from . import Case
from .. import ssm as gs
from ..reference import ssm as ref

_HALF = (torch.float16, torch.bfloat16)
_FULL = (torch.float64, torch.float32)


def _ref_fftconv(u, k, D=None, bidirectional=False):
    if u.dtype in _HALF:
        return ref.fftconv(u.float(), k.float(), None if D is None else D.float(), bidirectional).to(u.dtype)
    return ref.fftconv(u, k.to(u.dtype), None if D is None else D.to(u.dtype), bidirectional)


def _ours_fftconv(u, k, D=None, bidirectional=False):
    return gs.fftconv(u, k, D, bidirectional=bidirectional)


def _params(g, H, N, C_out=None, dt=(1e-3, 1e-1), slow=False):
    lo, hi = math.log(dt[0]), math.log(dt[1])
    log_dt = torch.rand(H, generator=g, dtype=torch.float64) * (hi - lo) + lo
    re = -0.5 * (1 + 0.2 * torch.rand(H, N, generator=g, dtype=torch.float64))
    A = torch.complex(re, math.pi * torch.arange(N, dtype=torch.float64).expand(H, N))
    B = torch.complex(torch.ones(H, N, dtype=torch.float64), 0.1 * torch.randn(H, N, generator=g, dtype=torch.float64))
    shape = (H, N) if C_out is None else (C_out, H, N)
    C = torch.randn(*shape, generator=g, dtype=torch.complex128)
    return {"log_dt": log_dt, "A": A, "B": B, "C": C}


def cases(quick: bool = False, seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    out = []
    Ls = (1, 37, 512) if quick else (1, 37, 512, 2049)
    for L in Ls:
        H, N = 3, 4
        x = torch.complex(-torch.rand(H, N, generator=g, dtype=torch.float64) * 0.05,
                          torch.randn(H, N, generator=g, dtype=torch.float64))
        v = torch.randn(2, H, N, generator=g, dtype=torch.complex128)
        out.append(Case(f"vandermonde/L={L}", "vandermonde", gs.vandermonde, ref.vandermonde,
                        {"v": v, "x": x}, kwargs={"L": L}, dtypes=_FULL))
        for disc in ("zoh", "bilinear"):
            for C_out in (None, 2):
                out.append(Case(f"s4d_kernel/{disc}/L={L}/C={C_out}", f"s4d_kernel/{disc}", gs.s4d_kernel,
                                ref.s4d_kernel, _params(g, H, N, C_out), kwargs={"L": L, "discretization": disc},
                                dtypes=_FULL))
    # slowly decaying modes, long L (fp32 phases of the eager recipe drift here)
    Lslow = 2048 if quick else 8192
    for disc in ("zoh", "bilinear"):
        out.append(Case(f"s4d_kernel/{disc}/slow/L={Lslow}", f"s4d_kernel/{disc}", gs.s4d_kernel, ref.s4d_kernel,
                        _params(g, 2, 8, dt=(2e-4, 4e-4)), kwargs={"L": Lslow, "discretization": disc}, dtypes=_FULL))
    for L in ((1, 20, 301) if quick else (1, 20, 301, 1000)):
        for bid in (False, True):
            for C_out in (None, 2):
                B, H = 2, 3
                kshape = ((C_out,) if C_out else ()) + ((2,) if bid else ()) + (H, L)
                decay = torch.exp(-torch.arange(L, dtype=torch.float64) / 40.0)
                args = {"u": torch.randn(B, H, L, generator=g, dtype=torch.float64),
                        "k": torch.randn(*kshape, generator=g, dtype=torch.float64) * decay,
                        "D": torch.randn(H, generator=g, dtype=torch.float64)}
                out.append(Case(f"fftconv/bid={bid}/C={C_out}/L={L}", "fftconv" + ("/bidirectional" if bid else ""),
                                _ours_fftconv, _ref_fftconv, args, kwargs={"bidirectional": bid},
                                params=("k", "D")))
    for L in (1, 64, 333):
        args = {"u": torch.randn(2, 3, L, generator=g, dtype=torch.float64), **_params(g, 3, 4),
                "D": torch.randn(3, generator=g, dtype=torch.float64)}
        out.append(Case(f"ssm_conv/L={L}", "ssm_conv", gs.ssm_conv, ref.ssm_conv, args, dtypes=_FULL))
    return out
