"""Shared pieces of the stereographic row tests (tests/test_stereographic_short.py, tests/test_stereographic_long_f32.py):
per-row curvatures and the row-wise error against the fp64 reference."""
from __future__ import annotations

import torch

# The ops whose output is written as a x + b y (or a x + b u): the write cancels in float where the terms are much
# larger than the output, so their error is measured relative to the larger of |out| and |x| / 10.
WRITE_CANCELS = ("mobius_add", "expmap", "logmap")


def per_row_k(n, values, dtype=None):
    """Curvatures of shape (n, 1): `values` repeated over the rows (default dtype unless given)."""
    return torch.tensor(list(values) * n, dtype=dtype)[:n].reshape(n, 1)


def row_rel_err(out, expect, x=None):
    """Row-wise error of `out` against the float64 `expect` (rows along the last dim): |out - expect| / |expect|, or
    with `x` given, relative to the larger of |expect| and |x| / 10 (see WRITE_CANCELS); the scale clamped at 1e-30."""
    scale = expect.norm(dim=-1)
    if x is not None:
        scale = torch.maximum(scale, x.double().norm(dim=-1) * 1e-1)
    return (out.double() - expect).norm(dim=-1) / scale.clamp_min(1e-30)


def op_row_err(op, out, expect, x):
    """row_rel_err of op's output: relative to the larger of |expect| and |x| / 10 where op's write cancels
    (WRITE_CANCELS), else to |expect|."""
    return row_rel_err(out, expect, x if op in WRITE_CANCELS else None)
