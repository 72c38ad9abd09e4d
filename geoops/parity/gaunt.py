"""Parity cases of the Gaunt family (run by ``python -m geoops.parity``).

Each route ("grid", "direct", "fft") and "auto" of gaunt_tensor_product against the dense fp64 contraction of
geoops.reference.gaunt, at L1 != L2, truncated and full lmax_out, with per-degree weights (broadcast over a
channel dim) and without; many-body gaunt_product (nu = 3) on the grid and Fourier routes.  Gradients w.r.t.
every input and weight.  The weights stay float32 when the data is half precision.
"""
from __future__ import annotations

import functools
from typing import List

import torch

from . import Case
from .. import gaunt as ga
from ..reference import gaunt as ref

ROUTES = ("auto", "grid", "grid_gemm", "direct", "fft")


def _tp(route: str, lmax_out: int):
    return functools.partial(ga.gaunt_tensor_product, lmax_out=lmax_out, route=route)


def _ref_tp(lmax_out: int):
    return functools.partial(ref.gaunt_tensor_product, lmax_out=lmax_out)


def cases(quick: bool = False, seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shapes = [(2, 3, 4), (4, 4, 4)] if quick else [(2, 3, 4), (4, 4, 4), (1, 5, 3), (6, 6, 6), (3, 8, 8)]
    out = []
    for route in ROUTES:
        for L1, L2, L3 in shapes:
            x1, x2 = rnd(7, 3, (L1 + 1) ** 2), rnd(1, 3, (L2 + 1) ** 2)
            out.append(Case(f"gaunt_tensor_product/{route}/L={L1},{L2}->{L3}", "gaunt_tensor_product",
                            _tp(route, L3), _ref_tp(L3), {"x1": x1, "x2": x2}))
        L1, L2, L3 = 3, 2, 4
        kw = {"weight1": rnd(3, L1 + 1), "weight2": rnd(L2 + 1), "weight_out": rnd(5, 3, L3 + 1)}
        out.append(Case(f"gaunt_tensor_product/{route}/weights", "gaunt_tensor_product", _tp(route, L3),
                        _ref_tp(L3), {"x1": rnd(5, 3, (L1 + 1) ** 2), "x2": rnd(5, 3, (L2 + 1) ** 2)}, kw=kw,
                        params=tuple(kw)))
    for route in ("grid", "grid_gemm", "fft"):
        xs = {"a": rnd(6, 9), "b": rnd(6, 16), "c": rnd(6, 4)}
        out.append(Case(f"gaunt_product/{route}/nu=3", "gaunt_product",
                        lambda a, b, c, route=route: ga.gaunt_product([a, b, c], 4, route=route),
                        lambda a, b, c: ref.gaunt_product([a, b, c], 4), xs))
    return out
