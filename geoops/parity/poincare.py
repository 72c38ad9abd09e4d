"""Parity cases of the Poincaré-ball layer family (run by ``python -m geoops.parity``).

poincare_fc (with and without offsets, rows on the projection branch, N = 1, odd sizes), poincare_conv2d
(3x3 padded, 2x2 strided), poincare_relu and batch_norm against geoops.reference.poincare in float64 and
float32 (fc also in the half types, computed in float32).  c is a parameter (kept float32 under half data).
Gradients w.r.t. every tensor argument, c included.  poincare_fc's truth projects with the margin of the dtype
under test (the same ball), the other layers with float64's.
"""
from __future__ import annotations

import math
from typing import List

import torch

from . import Case
from .. import poincare as gp
from ..reference import poincare as ref

_FULL = (torch.float64, torch.float32)


def _pts(g, *shape, dim=-1, radius=0.9, c=1.0):
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    n = v.norm(dim=dim, keepdim=True)
    return v / n * torch.rand(n.shape, generator=g, dtype=torch.float64) * radius / math.sqrt(c)


def _ref_fc(x, z, bias, c, eps=-1.0):
    return ref.poincare_fc(x, z, bias, c.to(x.dtype), eps=eps)


def _ours_fc(x, z, bias, c, eps=-1.0):
    return gp.poincare_fc(x, z, bias, c=c, eps=eps)


def _ref_fc_nob(x, z, c, eps=-1.0):
    return _ref_fc(x, z, None, c, eps)


def _ours_fc_nob(x, z, c, eps=-1.0):
    return gp.poincare_fc(x, z, None, c=c, eps=eps)


def _eps_for(dtype):
    """The projection margin of the dtype under test, also for the float64 truth (the same ball)."""
    return {"eps": ref.default_eps(dtype)}


def _ref_conv(x, z, bias, c, k=3, p=1, s=1):
    return ref.poincare_conv2d(x, z, bias, c.to(x.dtype), k, padding=p, stride=s)


def _ours_conv(x, z, bias, c, k=3, p=1, s=1):
    return gp.poincare_conv2d(x, z, bias, c=c, kernel_size=k, padding=p, stride=s)


def _ref_relu(x, c):
    return ref.poincare_relu(x, c.to(x.dtype), dim=1)


def _ours_relu(x, c):
    return gp.poincare_relu(x, c=c, dim=1)


def _ref_bn(x, bias, weight, c):
    return ref.batch_norm(x, bias, weight, c.to(x.dtype))[0]


def _ours_bn(x, bias, weight, c):
    return gp.batch_norm(x, bias, weight, c=c)


def cases(quick: bool = False, seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    out = []
    shapes = [(1, 3, 2), (37, 13, 11), (64, 32, 48)] + ([] if quick else [(257, 96, 80)])
    for N, n, m in shapes:
        for scale in (1.0, 5.0):  # 5.0: most rows end on the projection branch
            c = torch.tensor(0.8, dtype=torch.float64)
            x = _pts(g, N, n, c=0.8)
            z = torch.randn(n, m, generator=g, dtype=torch.float64) * scale / math.sqrt(n)
            b = torch.randn(m, generator=g, dtype=torch.float64) * 0.3
            tag = f"{N}x{n}->{m}/scale={scale}"
            out.append(Case(f"poincare_fc/{tag}", "poincare_fc", _ours_fc, _ref_fc,
                            {"x": x, "z": z, "bias": b, "c": c}, params=("c",), kwargs_for=_eps_for))
            out.append(Case(f"poincare_fc/no-bias/{tag}", "poincare_fc", _ours_fc_nob, _ref_fc_nob,
                            {"x": x, "z": z, "c": c}, params=("c",), kwargs_for=_eps_for))
    for k, p, s in ((3, 1, 1), (2, 0, 2)):
        c = torch.tensor(1.2, dtype=torch.float64)
        x = _pts(g, 2, 3, 6, 5, dim=1, c=1.2)
        z = torch.randn(3 * k * k, 4, generator=g, dtype=torch.float64) * 0.4
        b = torch.randn(4, generator=g, dtype=torch.float64) * 0.2
        out.append(Case(f"poincare_conv2d/k={k},p={p},s={s}", "poincare_conv2d", _ours_conv, _ref_conv,
                        {"x": x, "z": z, "bias": b, "c": c}, kwargs={"k": k, "p": p, "s": s}, params=("c",),
                        dtypes=_FULL))
    c = torch.tensor(0.9, dtype=torch.float64)
    out.append(Case("poincare_relu", "poincare_relu", _ours_relu, _ref_relu,
                    {"x": _pts(g, 3, 5, 4, 4, dim=1, c=0.9), "c": c}, params=("c",), dtypes=_FULL))
    out.append(Case("batch_norm", "batch_norm", _ours_bn, _ref_bn,
                    {"x": _pts(g, 40, 6, radius=0.7), "bias": torch.randn(6, generator=g, dtype=torch.float64) * 0.2,
                     "weight": torch.tensor(0.8, dtype=torch.float64), "c": c}, params=("c", "weight"), dtypes=_FULL))
    return out
