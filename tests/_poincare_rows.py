"""Shared inputs of the Poincare batch norm tests (tests/test_poincare_layers.py, tests/test_poincare_bn_train_passes.py)."""
from __future__ import annotations

import math

import torch

import geoops.poincare as gp


def bn_rows(N, D, dtype, seed, c=0.9, bias_on_ball=True):
    """Batch norm rows from one generator, drawn in this order: x (N, D) = expmap0 of N(0, 0.8^2) rows, with row
    N // 2 moved to 1 - c|x|^2 ~ 2e-3 (the cancelling terms the kernels' sums must keep) when N > 2; the bias (D,)
    from N(0, 0.3^2) (its expmap0 with bias_on_ball, as is otherwise); the upstream gradient g (N, D); a D-vector
    gm (the gradient to the batch midpoint).  Drawn in float64, returned as `dtype`: [x, bias, g, gm]."""
    g0 = torch.Generator().manual_seed(seed)
    x = gp.expmap0(torch.randn(N, D, generator=g0, dtype=torch.float64) * 0.8, c=c)
    if N > 2:
        x[N // 2] = x[N // 2] / x[N // 2].norm() * (1 - 1e-3) / math.sqrt(c)
    bias = torch.randn(D, generator=g0, dtype=torch.float64) * 0.3
    if bias_on_ball:
        bias = gp.expmap0(bias, c=c)
    g = torch.randn(N, D, generator=g0, dtype=torch.float64)
    gm = torch.randn(D, generator=g0, dtype=torch.float64)
    return [t.to(dtype) for t in (x, bias, g, gm)]
