"""The eager reference's logmap and dist (geoops.reference.stereographic, the oracle of the parity tests) against
50-digit mpmath near the ball's boundary (session 46, helper reflog).  Before, Möbius addition's a x + b y and its
denominator 1 + 2k<x,y> + k^2|x|^2|y|^2 cancelled for close pairs near the boundary and artanh's 1 - sqrt(-k)|s| was
formed from |s|: at 1 - sqrt(-k)|x| = 1e-6 logmap was 1e-4 off and its k-gradient 8e-3 (dist 1e-5 / 3e-5), where the
problem itself is conditioned to ~eps / delta.

The bound is the problem's own condition, measured: the exact answer's move when every input coordinate moves by
an ulp, and k too (two random draws of signs), times 32, plus 32 ulps of the answer's size (dk: of its terms)."""
import math

import mpmath as mp
import pytest
import torch

import geoops.stereographic as gs
from geoops.reference import stereographic as ref

EPS = 2.0 ** -52
D = 3


def _mp_logmap(x, y, k):
    xx, yy = mp.fsum(a * a for a in x), mp.fsum(b * b for b in y)
    xy = mp.fsum(a * b for a, b in zip(x, y))
    a = 1 + 2 * k * xy - k * yy  # (-x) (+) y = (-a x + b y) / den, at 50 digits nothing cancels to nothing
    b = 1 + k * xx
    den = 1 + 2 * k * xy + k * k * xx * yy
    s = [(-a * xi + b * yi) / den for xi, yi in zip(x, y)]
    t = mp.sqrt(abs(k) * mp.fsum(v * v for v in s))
    f = 1 if t == 0 else (mp.atanh(t) if k < 0 else mp.atan(t)) / t
    return [b * f * v for v in s]  # 2 / lambda_x = 1 + k|x|^2


def _mp_dist(x, y, k):
    s = _mp_logmap(x, y, k)
    b = 1 + k * mp.fsum(a * a for a in x)
    return [2 * mp.sqrt(mp.fsum(v * v for v in s)) / b]  # |logmap| = dist / lambda_x


_MP = {"logmap": _mp_logmap, "dist": _mp_dist}


def _mp_answer(op, x, y, k, g):
    """Value and the gradients (x, y, k) of <g, op(x, y, k)>, at 50 digits, as one flat list."""
    with mp.workdps(50):
        X, Y, K, G = ([mp.mpf(v) for v in t] for t in (x, y, [k], g))
        K = K[0]
        f = _MP[op]
        loss = lambda X_, Y_, K_: mp.fsum(gi * oi for gi, oi in zip(G, f(X_, Y_, K_)))
        out = f(X, Y, K)
        dx = [mp.diff(lambda v: loss(X[:i] + [v] + X[i + 1:], Y, K), X[i]) for i in range(len(X))]
        dy = [mp.diff(lambda v: loss(X, Y[:i] + [v] + Y[i + 1:], K), Y[i]) for i in range(len(Y))]
        dk = mp.diff(lambda v: loss(X, Y, v), K)
        return [float(v) for v in out], [float(v) for v in dx], [float(v) for v in dy], float(dk)


def _case(k, delta, pair, seed):
    """x with 1 - sqrt|k| |x| = delta (k > 0: delta < 0 puts x beyond the equator, at sqrt(k)|x| = -delta); y near x
    (|y - x| = 0.3 |delta| / sqrt|k|), a little inside (~20 delta), far (|y| sqrt|k| = 0.5), or far and as near the
    boundary ("both", k < 0); both inside the ball for k < 0."""
    gen = torch.Generator().manual_seed(seed)
    unit = lambda: (lambda v: v / v.norm())(torch.randn(D, generator=gen, dtype=torch.float64))
    sc = math.sqrt(abs(k))
    x = unit() * ((1 - delta) if delta > 0 else -delta) / sc
    delta = abs(delta)
    if pair == "near":
        r = unit() * 0.3 * delta / sc
        y = x + r if abs(k) * float((x + r).dot(x + r)) < 1 else x - r
    elif pair == "both":  # y near the boundary too, far from x: q = (1 + k xx)(1 + k yy) / den ~ delta^2
        y = unit() * (1 - delta) / sc
    elif pair == "mid":
        r = unit() * 5 * delta / sc
        y = x * (1 - 20 * delta) + r - 2 * torch.clamp(r.dot(x), min=0) * x / x.dot(x)  # r turned inward
    else:
        y = unit() * 0.5 / sc
    return x, y, torch.randn(D if pair else 1, generator=gen, dtype=torch.float64)


def _ours(fn, x, y, k, g, k_grad=True):
    """Value and gradients of <g, fn(x, y, k)>; k_grad False: k without grad (dk comes back NaN), the kernels' path
    without dk (the C++ dist backward's SkipCallMath)."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    kt = torch.tensor(k, dtype=torch.float64, requires_grad=k_grad)
    out = fn(x, y, k=kt).reshape(-1)
    grads = torch.autograd.grad((out * g).sum(), (x, y, kt) if k_grad else (x, y))
    return out.detach(), grads[0], grads[1], float(grads[2]) if k_grad else math.nan


def _errors_and_bounds(op, fn, k, delta, pair, seed=0, k_grad=True):
    x, y, g = _case(k, delta, pair, seed)
    if op == "dist":
        g = g[:1]
    exact = _mp_answer(op, x.tolist(), y.tolist(), k, g.tolist())
    # the problem's condition: the exact answer's move for an ulp's move of every input coordinate
    gen = torch.Generator().manual_seed(seed + 1)
    moves = [0.0] * 4
    for _ in range(2):
        sx, sy = (torch.randint(0, 2, (D,), generator=gen).double() * 2 - 1 for _ in range(2))
        sk = float(sx[0])
        moved = _mp_answer(op, (x * (1 + EPS * sx)).tolist(), (y * (1 + EPS * sy)).tolist(), k * (1 + EPS * sk),
                           g.tolist())
        for i in range(4):
            moves[i] = max(moves[i], _dist(moved[i], exact[i]))
    ours = _ours(fn, x, y, k, g, k_grad)
    errs = [_dist(ours[i], exact[i]) for i in range(4)]
    # dk's own terms: with out(s x, s y, k / s^2) = s out(x, y, k), 2k dk = <dx, x> + <dy, y> - <g, out>
    sizes = [_size(exact[i]) for i in range(3)]
    sizes.append((sizes[1] * _size(x) + sizes[2] * _size(y) + _size(g) * sizes[0]) / abs(k))
    bounds = [32 * moves[i] + 32 * EPS * sizes[i] for i in range(4)]
    return errs, bounds


def _dist(a, b):
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).norm())


def _size(a):
    return float(torch.as_tensor(a, dtype=torch.float64).norm())


# delta = 1e-8 with a close pair puts (-x) (+) y's denominator below its 1e-15 clamp (geoopt's), where no
# implementation computes the unclamped value: left out (the clamp's own test: test_stereographic_reliability.py).
# k > 0 far out (sqrt(k)|x| = 100, 3; delta = -100, -3): logmap's y form (x the farther point), a x + b y's regime.
_CASES = [(k, delta, pair) for k in (-1.0, -0.3, 1.0, 0.3) for delta in (1e-4, 1e-6, 1e-7, 1e-8)
          for pair in ("near", "mid", "far") if not (k < 0 and delta == 1e-8 and pair == "near")]
_CASES += [(1.0, -100.0, pair) for pair in ("near", "far")] + [(0.3, -3.0, pair) for pair in ("near", "far")]


@pytest.mark.parametrize("op", ["logmap", "dist"])
@pytest.mark.parametrize("k,delta,pair", _CASES)
def test_reference_near_boundary_exact(op, k, delta, pair):
    """Before (main's reference, logmap, k = -1): value 1.2e-4 / 1.4e-2 off relative at delta = 1e-6 / 1e-7 (near),
    dk 8.4e-3 / 8.2e-2; dist 1.1e-5 / 1.6e-3, dk 3.2e-5 / 4.7e-3; k > 0 close pairs: logmap's dk up to 1.0."""
    errs, bounds = _errors_and_bounds(op, getattr(ref, op), k, delta, pair)
    for name, e, b in zip(("value", "dx", "dy", "dk"), errs, bounds):
        assert e <= b, f"{op} {name}: {e:.3g} > {b:.3g}"


@pytest.mark.parametrize("op", ["logmap", "dist"])
@pytest.mark.parametrize("k,delta,pair", [(-1.0, 1e-7, "near"), (-0.3, 1e-6, "mid"), (1.0, 1e-7, "near")])
def test_kernel_near_boundary_exact(op, k, delta, pair):
    """The public op (C++ on the CPU) within the same bound: the reference is not the only one held to it."""
    errs, bounds = _errors_and_bounds(op, getattr(gs, op), k, delta, pair)
    for name, e, b in zip(("value", "dx", "dy", "dk"), errs, bounds):
        assert e <= b, f"{op} {name}: {e:.3g} > {b:.3g}"


@pytest.mark.parametrize("k_grad", [True, False])
@pytest.mark.parametrize("k,delta", [(-1.0, 1e-4), (-1.0, 1e-6), (-1.0, 1e-8), (-0.3, 1e-7)])
def test_kernel_dist_dy_far_pair_near_boundary(k, delta, k_grad):
    """x near the boundary, y far (session 46, helper distdy): dy is O(1), but the dist backward formed dd's adjoint
    as ss_ / den plus the denominator's -k den_, two ~1 / delta-sized terms that cancel, ~eps / delta relative off
    (3.5e-11 at delta = 1e-6, 4.5e-9 at 1e-8; 9x .. 2e5x the bound).  Now their sum as one product.  k without grad:
    the C++ backward without dk (no atanc call) and its own form of the same adjoint."""
    errs, bounds = _errors_and_bounds("dist", gs.dist, k, delta, "far", k_grad=k_grad)
    for name, e, b in list(zip(("value", "dx", "dy", "dk"), errs, bounds))[:4 if k_grad else 3]:
        assert e <= b, f"dist {name}: {e:.3g} > {b:.3g}"


# Both points within delta of the boundary and far apart (session 47, helper qclamp47): artanh's q = (1 + k|x|^2)
# (1 + k|y|^2) / den ~ delta^2 falls below 1e-15 at delta ~ 1e-8 (float64).  Every implementation clamped q there
# as if the points were outside the ball: dist 6e-2 (an antipodal pair at delta 1e-8), 1.6e-1 (1e-9) relative
# short, silently, in the reference, C++ and Triton; logmap's length the same.  Now only q <= 0 is clamped.
_BOTH = [(-1.0, 5e-9), (-1.0, 1e-9), (-0.3, 3e-9), (-0.3, 3e-10)]  # q: 3.3e-16, 1.3e-17, 1.2e-16, 1.2e-18


@pytest.mark.parametrize("op", ["logmap", "dist"])
@pytest.mark.parametrize("k,delta", _BOTH)
def test_reference_both_near_boundary_exact(op, k, delta):
    errs, bounds = _errors_and_bounds(op, getattr(ref, op), k, delta, "both")
    for name, e, b in zip(("value", "dx", "dy", "dk"), errs, bounds):
        assert e <= b, f"{op} {name}: {e:.3g} > {b:.3g}"


@pytest.mark.parametrize("k_grad", [True, False])
@pytest.mark.parametrize("op", ["logmap", "dist"])
@pytest.mark.parametrize("k,delta", _BOTH)
def test_kernel_both_near_boundary_exact(op, k, delta, k_grad):
    """The public op (C++ on the CPU); k without grad: the backward without dk (dist's SkipCallMath)."""
    errs, bounds = _errors_and_bounds(op, getattr(gs, op), k, delta, "both", k_grad=k_grad)
    for name, e, b in list(zip(("value", "dx", "dy", "dk"), errs, bounds))[:4 if k_grad else 3]:
        assert e <= b, f"{op} {name}: {e:.3g} > {b:.3g}"


def both_rows(k, delta, n, d, seed=0, dtype=torch.float64):
    """n pairs of rows in R^d, each point at 1 - delta of the radius, directions random (far apart)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, n, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True) * ((1 - delta) / math.sqrt(abs(k)))
    return u[0].to(dtype), u[1].to(dtype)


def mp_dist_rows(x, y, k):
    with mp.workdps(50):
        return [float(_mp_dist([mp.mpf(v) for v in a], [mp.mpf(v) for v in b], mp.mpf(k))[0])
                for a, b in zip(x.double().tolist(), y.double().tolist())]


@pytest.mark.parametrize("d", [2, 5, 64])
@pytest.mark.parametrize("k,delta", [(-1.0, 1e-9), (-0.3, 3e-9)])
def test_kernel_both_near_boundary_rows(k, delta, d):
    """Many rows (the C++ lane / vector paths of dist, its batched atanc calls; cdist's and knn's epilogues) against
    mpmath, within 32 eps / delta absolute: the rounding of |x|^2 moves 1 + k|x|^2 by ~eps / delta relative, the
    distance by that much (before: 2.3 .. 12 short, 6e-2 .. 1.6e-1 relative)."""
    x, y = both_rows(k, delta, 37, d)
    exact = torch.tensor(mp_dist_rows(x, y, k), dtype=torch.float64)
    row0 = torch.tensor(mp_dist_rows(x[:1].expand_as(y), y, k), dtype=torch.float64)  # x[0] against every y
    kt = torch.tensor(k, dtype=torch.float64)
    for name, got in (("dist", gs.dist(x, y, k=kt)), ("cdist", gs.cdist(x, y, k=kt).diagonal()),
                      ("knn", gs.knn(x[:1], y, 3, k=kt, largest=True)[0].reshape(-1)),
                      ("dist (reference)", ref.dist(x, y, k=kt))):
        want = row0.sort(descending=True).values[:3] if name == "knn" else exact
        err = float((got - want).abs().max())
        assert err < 32 * EPS / delta, f"{name} d={d}: {err:.3g}"


def test_both_outside_still_clamped():
    """Both points just outside the ball (q = pp / den > 0 but no point inside's): still the clamp, bounded
    gradients, in the reference and the kernels alike."""
    x, y = both_rows(-1.0, -1e-9, 5, 3)
    kt = torch.tensor(-1.0, dtype=torch.float64)
    vals = []
    for fn in (gs.dist, ref.dist):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        v = fn(a, b, k=kt)
        ga, gb = torch.autograd.grad(v.sum(), (a, b))
        assert torch.isfinite(v).all() and float(v.max()) < 40
        assert float(ga.abs().max()) < 1e10 and float(gb.abs().max()) < 1e10
        vals.append(v.detach())
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-10, atol=0)


@pytest.mark.parametrize("k", [-1.0, -4.0])
def test_reference_float16_pairs_finite(k):
    """float16 pairs both at 1 - sqrt|k||x| = 2e-3 (distances ~14 / sqrt|k|) and pairs with a point outside: the
    reference's artanh ratio 2s (1 + s) / q ~ e^(d sqrt|k|) passed float16's 65504 beyond d sqrt|k| ~ 11 and its
    1e-15 clamp of q rounded to 0, so dist and logmap were inf and the gradients NaN (session 48; the C++ backend
    was right).  Now q in float32: the values within float16's own rounding of |x|^2 of the exact (1.3e-2
    measured), the gradients near float64's (0.11 of their max measured), the clamped pairs as the kernels'."""
    x, y = both_rows(k, 2e-3, 8, 3, seed=3, dtype=torch.float16)
    exact = torch.tensor(mp_dist_rows(x, y, k), dtype=torch.float64)
    kt = torch.tensor(k, dtype=torch.float16)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    v = ref.dist(a, b, k=kt)
    ga, gb = torch.autograd.grad(v.sum(), (a, b))
    assert float(((v.double() - exact) / exact).abs().max()) < 3e-2
    a64, b64 = x.double().requires_grad_(), y.double().requires_grad_()
    want = torch.autograd.grad(ref.dist(a64, b64, k=kt.double()).sum(), (a64, b64))
    for g, w in zip((ga, gb), want):
        assert float((g.double() - w).abs().max()) < 0.3 * float(w.abs().max())
    lm, lm64 = ref.logmap(x, y, k=kt).double(), ref.logmap(x.double(), y.double(), k=kt.double())
    assert float((lm - lm64).abs().max()) < 0.3 * float(lm64.abs().max())
    out = x.double() * 1.01  # outside, against y inside, and both outside: clamped, finite, as the C++ kernels
    for p, r in ((x, out), (out, y), (out, out.flip(0))):
        p, r = p.half().requires_grad_(), r.half().requires_grad_()
        v = ref.dist(p, r, k=kt)
        assert torch.isfinite(v).all() and all(torch.isfinite(g).all() for g in torch.autograd.grad(v.sum(), (p, r)))
        torch.testing.assert_close(v, gs.dist(p, r, k=kt), rtol=3e-2, atol=0)  # float16 |x|^2
