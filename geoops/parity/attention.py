"""Parity cases of Kronecker triple attention (run by ``python -m geoops.parity``).

Dense, causal and windowed (including a window wider than the sequence, w = 1, and a query with no
admissible pair), grouped keys (H = 4, H_kv = 2), M1 != M2 != N, Dv != D, N = 1, and large logits
(input scale 2 with scale = 1).  Gradients w.r.t. q, k1, k2, v1, v2 with one random upstream gradient.
"""
from __future__ import annotations

from typing import List

import torch

from . import Case
from .. import attention as ga
from ..reference import attention as ref


def _case(name: str, g: torch.Generator, B, H, Hk, N, M1, M2, D, Dv, scale_in=1.0, **kw) -> Case:
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * scale_in  # noqa: E731
    args = {"q": mk(B, H, N, D), "k1": mk(B, Hk, M1, D), "k2": mk(B, Hk, M2, D), "v1": mk(B, Hk, M1, Dv),
            "v2": mk(B, Hk, M2, Dv)}
    return Case(f"triple_attention/{name}", "triple_attention", ga.triple_attention, ref.triple_attention, args,
                kwargs=kw)


def cases(quick: bool = False, seed: int = 0) -> List[Case]:
    g = torch.Generator().manual_seed(seed)
    out = [
        _case("dense/N17-M19-M23", g, 2, 2, 1, 17, 19, 23, 8, 5),
        _case("causal/N33", g, 1, 4, 2, 33, 33, 31, 16, 16, causal=True),
        _case("window(5,3)/N33", g, 1, 2, 2, 33, 33, 33, 16, 8, window=(5, 3)),
        _case("window(2,1)/M2<N (empty rows)", g, 1, 2, 1, 12, 12, 6, 4, 4, window=(2, 1)),
        _case("N1", g, 1, 1, 1, 1, 3, 2, 4, 4),
    ]
    if not quick:
        out += [
            _case("window(1,1)/N20", g, 1, 2, 2, 20, 20, 20, 8, 8, window=(1, 1)),
            _case("window(100,4)/wider-than-N", g, 1, 2, 1, 30, 30, 30, 8, 8, window=(100, 4)),
            _case("dense/large-logits", g, 1, 1, 1, 24, 20, 22, 16, 16, scale_in=2.0, scale=1.0),
            _case("causal/N64-D64", g, 1, 1, 1, 64, 64, 64, 64, 64, causal=True),
        ]
    return out
