"""Rows at the Poincaré ball's boundary whose q = 1 - c|x|^2 is exact, and mpmath truths of the layers on them.

Shared by tests/test_poincare_ball_edge.py (C++) and tests/triton/test_poincare_ball_edge_triton.py (Triton
interpreter, its C++ twin).  artanh(s)/s takes q = 1 - s^2 = 1 - c|x|^2 from the caller; near the boundary q is
tiny and the kernels' row sums round |x|^2, so a row built at random has a q whose rounding is a large part of it.
Here the coordinates are integers times 2^-b / sqrt(c) (c a power of 4) whose squares sum exactly in the kernels'
precision: |x|^2 = (2^(2b) - n) 2^(-2b) / c, so q = n 2^(-2b) exactly (n > 0: inside, n <= 0: on or outside), and
the mpmath truth of the exact input is the kernels' problem exactly.
"""
from __future__ import annotations

import math

import mpmath
import torch


def _squares(m: int, parts: int, first: int):
    """Positive integers a_1 .. a_parts, a_1 = first - t for the smallest t >= 0 that works, with
    sum a_i^2 = m, the others greedy (largest square first); None if no t below 4096 works."""
    for t in range(4096):
        a = [first - t]
        rest = m - a[0] * a[0]
        if rest < 0:
            continue
        for _ in range(parts - 1):
            r = math.isqrt(rest)
            a.append(r)
            rest -= r * r
        if rest == 0 and min(a) > 0:  # no zero coordinate (relu's kink)
            return a
    return None


def edge_row(n: int, bits: int, c: float, pos: float, parts: int = 5):
    """One row (list of Python floats, exact in a float with `bits` >= 2 * (mantissa of the coordinates)):
    `parts` negative coordinates and one positive coordinate ~pos / sqrt(c) (the part relu keeps), with
    c |x|^2 = 1 - n 2^(-2 bits) exactly.  c: a power of 4."""
    sc = math.sqrt(c)
    scale = 2.0 ** -bits / sc
    b = int(pos * 2 ** bits)
    m = 2 ** (2 * bits) - n - b * b
    a = _squares(m, parts, math.isqrt(m) * 7 // 10)
    assert a is not None, (n, bits, c, pos)
    return [-ai * scale for ai in a] + [b * scale]


# float64 rows: 26-bit coordinates, q = n 2^-52 (n = 1 .. 4 below the old 1e-15 clamp; 5, 9 above it); float32 rows:
# 12-bit coordinates, q = n 2^-24 (above the old clamp: guards), exact in float32 sums too (the Triton ReLU's)
NS = {torch.float64: (1, 2, 3, 4, 5, 9), torch.float32: (1, 2, 5, 40)}
BITS = {torch.float64: 26, torch.float32: 12}
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}  # the rows' rel_err bound (values and gradients)
EPS = {torch.float64: 1e-5, torch.float32: 4e-3}  # the layers' default projection margins


def edge_rows(dtype, ns, c: float):
    """Rows edge_row(n) for n in ns (x, as `dtype`) and an upstream gradient g of the same shape."""
    x = torch.tensor([edge_row(n, BITS[dtype], c, 0.05 + 0.01 * i) for i, n in enumerate(ns)], dtype=torch.float64)
    g = torch.linspace(-1.0, 1.0, x.numel(), dtype=torch.float64).reshape(x.shape).flip(1) + 0.3
    return x.to(dtype), g.to(dtype)


def _mp(v):
    return mpmath.mpf(float(v))


def _atanc(X, c):
    """artanh(sqrt(c X)) / sqrt(c X) of an mpf X (inside the ball)."""
    s = mpmath.sqrt(c * X)
    return mpmath.atanh(s) / s if s != 0 else mpmath.mpf(1)


def relu_truth(x, g, c: float, eps: float):
    """mpmath (60 digits) of the fused Poincaré ReLU of one row x (floats) inside the ball: y = project(expmap0(
    relu(logmap0(x))), eps) and the gradients of L = <g, y>: (y, dx, dc) as Python floats."""
    with mpmath.workdps(60):
        c = _mp(c)
        gm = [_mp(v) for v in g]

        def out(xs, cc):
            X = sum(v * v for v in xs)
            h = _atanc(X, cc)
            r = [v if v > 0 else mpmath.mpf(0) for v in xs]
            R = sum(v * v for v in r)
            sc = mpmath.sqrt(cc)
            w = sc * h * mpmath.sqrt(R)
            f = mpmath.tanh(w) / w * h if w != 0 else h
            mx = (1 - _mp(eps)) / sc
            if f * mpmath.sqrt(R) > mx:
                f = mx / mpmath.sqrt(R)
            return [f * v for v in r]

        xm = [_mp(v) for v in x]
        y = out(xm, c)

        def loss(xs, cc):
            return mpmath.fsum(a * b for a, b in zip(gm, out(xs, cc)))

        dx = [mpmath.diff(lambda t, j=j: loss(xm[:j] + [t] + xm[j + 1:], c), xm[j]) for j in range(len(xm))]
        dc = mpmath.diff(lambda t: loss(xm, t), c)
        return [float(v) for v in y], [float(v) for v in dx], float(dc)


def logmap0_truth(x, g, c: float):
    """mpmath (60 digits) of logmap0(x) = atanc(-c|x|^2) x on the ball of curvature -c (one row inside it) and
    the gradients of L = <g, logmap0(x)>: (v, dx, dc) as Python floats."""
    with mpmath.workdps(60):
        c = _mp(c)
        gm = [_mp(v) for v in g]
        xm = [_mp(v) for v in x]

        def loss(xs, cc):
            A = _atanc(sum(v * v for v in xs), cc)
            return mpmath.fsum(a * A * b for a, b in zip(gm, xs))

        A = _atanc(sum(v * v for v in xm), c)
        dx = [mpmath.diff(lambda t, j=j: loss(xm[:j] + [t] + xm[j + 1:], c), xm[j]) for j in range(len(xm))]
        dc = mpmath.diff(lambda t: loss(xm, t), c)
        return [float(A * v) for v in xm], [float(v) for v in dx], float(dc)


def rel_err(a: torch.Tensor, truth) -> float:
    """max |a - truth| / max |truth| (truth: nested lists of floats)."""
    t = torch.tensor(truth, dtype=torch.float64)
    return ((a.detach().to(torch.float64).cpu() - t).abs().max() / t.abs().max().clamp_min(1e-300)).item()
