"""Parity cases of the kappa-stereographic family (run by ``python -m geoops.parity``).

For each op: random interior points, points within 1e-3 of the boundary, tiny and zero vectors and
one-dimensional vectors, at several curvatures of both signs (k < 0 ball, k = 0, k > 0 sphere).
Gradients are checked w.r.t. every tensor argument, k (and r) included; k and r stay float32 when
the data is half precision.  tests/test_stereographic.py runs the same cases.
"""
from __future__ import annotations

import math
from typing import List

import torch

from . import Case
from .. import stereographic as gs
from .._ops.stereographic import STEREO_OPS
from ..reference import stereographic as ref

OPS = tuple(STEREO_OPS)
CURVATURES = (-1.0, -0.25, -1e-4, 0.0, 1e-4, 0.8)


def _ball_points(g: torch.Generator, n: int, d: int, k: float, frac) -> torch.Tensor:
    """n points with norms frac * radius (radius 1/sqrt|k|, or 1 for k >= 0)."""
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    radius = 1 / math.sqrt(-k) if k < 0 else 1.0
    return v * (torch.as_tensor(frac, dtype=torch.float64).reshape(-1, 1) * radius)


def cases(quick: bool = False, seed: int = 0) -> List[Case]:
    """The parity cases: op x curvature x regime (interior, boundary, tiny, zero, odd D)."""
    g = torch.Generator().manual_seed(seed)
    curv = (-1.0, 0.0, 0.8) if quick else CURVATURES
    out = []
    for op in OPS:
        spec = STEREO_OPS[op]
        for kv in curv:
            k = torch.tensor(kv, dtype=torch.float64)
            regimes = {
                "interior": (9, 33, torch.rand(9, generator=g, dtype=torch.float64) * 0.9),
                "odd-D1": (5, 1, torch.rand(5, generator=g, dtype=torch.float64) * 0.9),
                "tiny": (4, 3, torch.tensor([1e-8, 1e-6, 1e-5, 3e-4], dtype=torch.float64)),
            }
            if kv < 0:
                regimes["boundary"] = (6, 16, 1 - torch.tensor([1e-3, 5e-4, 2e-3, 1e-3, 3e-3, 1e-3], dtype=torch.float64))
            for reg, (n, d, frac) in regimes.items():
                x = _ball_points(g, n, d, kv, frac)
                args = {}
                if op == "mobius_scalar_mul":
                    args["r"] = torch.randn(n, 1, generator=g, dtype=torch.float64)
                args["x"] = x
                if spec.has_y:
                    if op == "expmap":  # a tangent vector of moderate length
                        args["y"] = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3
                    else:
                        y = _ball_points(g, n, d, kv, torch.rand(n, generator=g, dtype=torch.float64) * 0.9)
                        if reg == "tiny":  # close pairs: y = x + tiny offset
                            y = x + 1e-7 * torch.randn(n, d, generator=g, dtype=torch.float64)
                        args["y"] = y
                if op == "project":  # scale a few points out of the ball so the projection acts
                    args["x"] = x * torch.tensor([1.5, 1.0, 3.0] * n, dtype=torch.float64)[:n].reshape(-1, 1)
                out.append(_case(f"{op}/k={kv:g}/{reg}", op, args, k))
            # the zero vector: finite values and gradients
            zero = torch.zeros(2, 5, dtype=torch.float64)
            args = {"x": zero}
            if op == "mobius_scalar_mul":
                args = {"r": torch.tensor([[0.5], [2.0]], dtype=torch.float64), "x": zero}
            elif spec.has_y:
                args["y"] = zero.clone() if op in ("dist", "logmap") else _ball_points(g, 2, 5, kv, [0.3, 0.5])
            out.append(_case(f"{op}/k={kv:g}/zero", op, args, k))
    return out


def _case(name: str, op: str, args: dict, k: torch.Tensor) -> Case:
    """geoops.stereographic.<op>(*args, k=k) against geoops.reference.stereographic.<op>."""
    kwargs_for = None
    if op == "project":  # the truth projects with the margin of the dtype under test
        kwargs_for = lambda dtype: {"eps": ref.default_eps(dtype)}  # noqa: E731
    return Case(name, op, getattr(gs, op), getattr(ref, op), args, kw={"k": k}, params=("k", "r"),
                kwargs_for=kwargs_for)
