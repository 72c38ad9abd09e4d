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


def geodesic_step_truth(x, y, t: float, c: float):
    """mpmath (80 digits) of x (+) t (x) ((-x) (+) y) on the ball of curvature -c (the batch norm's running-mean
    step; x, y: lists of floats inside the ball) as Python floats."""
    with mpmath.workdps(80):
        c, t = _mp(c), _mp(t)

        def add(a, b):
            ab = mpmath.fsum(u * v for u, v in zip(a, b))
            a2, b2 = mpmath.fsum(u * u for u in a), mpmath.fsum(v * v for v in b)
            den = 1 + 2 * c * ab + c * c * a2 * b2
            return [((1 + 2 * c * ab + c * b2) * u + (1 - c * a2) * v) / den for u, v in zip(a, b)]

        xm, ym = [_mp(v) for v in x], [_mp(v) for v in y]
        v = add([-u for u in xm], ym)
        n = mpmath.sqrt(mpmath.fsum(u * u for u in v))
        sc = mpmath.sqrt(c)
        w = [mpmath.tanh(t * mpmath.atanh(sc * n)) / (sc * n) * u for u in v]
        return [float(u) for u in add(xm, w)]


# (rows for the running-mean step: two far points at 1 - delta of the radius; float64 deltas whose 1 + k|v|^2 ~ delta^2
# falls below 1e-15 (the old clamp of |v| at 1 - 1e-15), float32 deltas below ~3e-4 (its clamp at 1 - 1e-7))
STEP_DELTAS = {torch.float64: (1e-3, 1e-6, 1e-8, 1e-9, 3e-10), torch.float32: (1e-2, 1e-3, 1e-4, 3e-5, 1e-5)}


# bound of step_err: float32 16 eps (measured <= 3.5 with x2 .. y2 in double); float64 2e-12 (~9000 eps: the rows' sums
# round |x|^2 by ~eps against 1 - c|x|^2 ~ 2 delta, measured <= 1566 eps at delta = 3e-10, c = 0.7)
STEP_TOL = {torch.float64: 2e-12 / torch.finfo(torch.float64).eps, torch.float32: 16.0}


def far_pair(delta: float, c: float, dtype):
    """Two points of the ball of curvature -c at 1 - delta of its radius, ~100 degrees apart (D = 4)."""
    u = torch.tensor([1.0, 0.3, -0.2, 0.1], dtype=torch.float64)
    w = torch.tensor([-0.9, 0.2, 0.4, -0.1], dtype=torch.float64)
    r = (1 - delta) / math.sqrt(c)
    return (u / u.norm() * r).to(dtype), (w / w.norm() * r).to(dtype)


def step_err(new: torch.Tensor, x: torch.Tensor, y: torch.Tensor, t: float, c: float) -> float:
    """max |new - truth| of a running-mean step x -> geodesic(t, x, y), in units of the dtype's eps (times |truth|)."""
    tr = torch.tensor(geodesic_step_truth(x.tolist(), y.tolist(), t, c), dtype=torch.float64)
    return ((new.double() - tr).abs().max() / (torch.finfo(new.dtype).eps * tr.abs().max())).item()
