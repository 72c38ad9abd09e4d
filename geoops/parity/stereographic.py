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
    return out + pair_cases(quick, seed) + surface_cases(quick, seed)


def _case(name: str, op: str, args: dict, k: torch.Tensor) -> Case:
    """geoops.stereographic.<op>(*args, k=k) against geoops.reference.stereographic.<op>."""
    kwargs_for = None
    if op == "project":  # the truth projects with the margin of the dtype under test
        kwargs_for = lambda dtype: {"eps": ref.default_eps(dtype)}  # noqa: E731
    return Case(name, op, getattr(gs, op), getattr(ref, op), args, kw={"k": k}, params=("k", "r"),
                kwargs_for=kwargs_for)


# ---------------------------------------------------------------- pairwise ops (cdist, knn, pairwise_rank, matvec)
PAIR_CURVATURES = (-1.0, -0.3, 0.0, 1e-4, 0.7)
_PAIR_DTYPES = (torch.float64, torch.float32)


def _geoopt_math():
    try:
        import geoopt.manifolds.stereographic.math as gm
    except ImportError:  # geoopt is optional: its cases are left out
        return None
    return gm


def _knn_values(n):
    return lambda x, y, k: gs.knn(x, y, n, k=k)[0]


def _knn_truth(n):
    return lambda x, y, k: torch.topk(ref.cdist(x, y, k=k), n, dim=-1, largest=False, sorted=True).values


def _rank_ours(x, y, q, t, k):
    return gs.pairwise_rank(x, y, q, t, k=k)


def _rank_truth(x, y, q, t, k):
    d = ref.cdist(x, y, k=k)
    dt = d[q, t]
    closer = (d[q] < dt[:, None]).sum(-1)
    return closer - (d[q, t] < dt).to(closer.dtype)  # the target itself never counts


def pair_cases(quick: bool = False, seed: int = 0) -> List[Case]:
    """cdist, knn (distances; n of 1, 3 and 0), pairwise_rank (float64) and mobius_matvec /
    mobius_pointwise_mul, against the fp64 reference and (when installed) geoopt's broadcast formulas:
    interior points, close pairs (y = x + 1e-6 noise, and x against itself), points within 1e-3 of the
    boundary (k < 0), batched inputs with broadcast batch dimensions, k of both signs and k = 0."""
    g = torch.Generator().manual_seed(seed + 7)
    gm = _geoopt_math()
    curv = (-1.0, 0.0, 0.7) if quick else PAIR_CURVATURES
    out = []
    for kv in curv:
        k = torch.tensor(kv, dtype=torch.float64)
        x = _ball_points(g, 7, 6, kv, torch.rand(7, generator=g, dtype=torch.float64) * 0.9)
        y = _ball_points(g, 5, 6, kv, torch.rand(5, generator=g, dtype=torch.float64) * 0.9)
        regimes = {
            "interior": (x, y),
            "close": (x, torch.cat([x[:3], x[:3] + 1e-6 * torch.randn(3, 6, generator=g, dtype=torch.float64)])),
            "batched": (_ball_points(g, 2 * 4, 5, kv, torch.rand(8, generator=g, dtype=torch.float64) * 0.9)
                        .reshape(2, 1, 4, 5),
                        _ball_points(g, 3 * 3, 5, kv, torch.rand(9, generator=g, dtype=torch.float64) * 0.9)
                        .reshape(3, 3, 5)),
        }
        if kv < 0:
            regimes["boundary"] = (_ball_points(g, 4, 6, kv, 1 - torch.tensor([1e-3, 5e-4, 2e-3, 1e-3])),
                                   _ball_points(g, 3, 6, kv, 1 - torch.tensor([1e-3, 3e-3, 1e-3])))
        for reg, (a, b) in regimes.items():
            args = {"x": a, "y": b}
            # Close pairs: float64 keeps A to 1e-12 relative (close_tau in csrc/cpu/stereographic_pairwise.cpp
            # recomputes pairs with A < u (D + 4) 1e12 (|x|^2 + |y|^2) from the rows), so no floor there.
            # Near the boundary the gradients are ~1e3-1e4: float64 rounding of their sums, as for knn below.
            fl = {torch.float64: 1e-9} if reg == "boundary" else None
            out.append(Case(f"cdist/k={kv:g}/{reg}", "cdist", gs.cdist, ref.cdist, args, kw={"k": k},
                            params=("k",), dtypes=_PAIR_DTYPES, floor=fl))
            # geoopt: not at k = 0 (its dist branches on k == 0 in a way autograd cannot cross), nor for close
            # pairs or at the boundary (its |(-x) (+) y| cancels, its artanh is clamped: there geoopt is the
            # less accurate side, see docs/families/stereographic-pairwise.md)
            if gm is not None and kv != 0 and reg in ("interior", "batched"):
                out.append(Case(f"cdist/k={kv:g}/{reg}/geoopt", "cdist vs geoopt", gs.cdist,
                                lambda x, y, k, gm=gm: gm.dist(x[..., :, None, :], y[..., None, :, :], k=k),
                                args, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES, floor=fl))
            if reg != "close":  # knn of close pairs: ties of the truth's ranking, not of ours
                for n in (1, 3, 0):
                    # near the boundary the distances' gradients are ~1e3: float64 rounding of their sums
                    out.append(Case(f"knn/n={n}/k={kv:g}/{reg}", "knn", _knn_values(n), _knn_truth(n), args,
                                    kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES,
                                    floor={torch.float64: 1e-9} if reg == "boundary" else None))
        # pairwise_rank: float64 (the ranks are exact there), every (query, target) of a small set
        q = torch.arange(7).repeat_interleave(5)
        t = torch.arange(5).repeat(7)
        out.append(Case(f"pairwise_rank/k={kv:g}", "pairwise_rank", _rank_ours, _rank_truth,
                        {"x": x, "y": y, "q": q, "t": t}, kw={"k": k}, params=("k",), grads=(),
                        dtypes=(torch.float64,)))
        # mobius_matvec (a zero row: exact 0, as geoopt) and mobius_pointwise_mul
        m = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5
        xm = torch.cat([x, torch.zeros(1, 6, dtype=torch.float64)])
        w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
        mv = {"m": m, "x": xm}
        pw = {"w": w, "x": x}
        out.append(Case(f"mobius_matvec/k={kv:g}", "mobius_matvec", gs.mobius_matvec, ref.mobius_matvec, mv,
                        kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES, grads=("m", "k")))
        out.append(Case(f"mobius_pointwise_mul/k={kv:g}", "mobius_pointwise_mul", gs.mobius_pointwise_mul,
                        ref.mobius_pointwise_mul, pw, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES))
        if gm is not None:
            out.append(Case(f"mobius_matvec/k={kv:g}/geoopt", "mobius_matvec vs geoopt", gs.mobius_matvec,
                            gm.mobius_matvec, {"m": m, "x": x}, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES))
            out.append(Case(f"mobius_pointwise_mul/k={kv:g}/geoopt", "mobius_pointwise_mul vs geoopt",
                            gs.mobius_pointwise_mul, gm.mobius_pointwise_mul, pw, kw={"k": k}, params=("k",),
                            dtypes=_PAIR_DTYPES))
    return out


def _midpoint_ref(xs, w, k):
    return gs._weighted_midpoint_composed(xs, w, k=k, reducedim=[0], dim=-1, keepdim=False, lincomb=False,
                                          posweight=False)


def surface_cases(quick: bool = False, seed: int = 0) -> List[Case]:
    """The fused ops of geoopt's wider surface: the three-vector row ops (gyration, the transports, dist2plane)
    against the reference compositions and geoopt, weighted_midpoint against the composition of the row ops and
    geoopt, mobius_coadd's closed form against geoopt's x (+) gyr[x, -y] y; interior and near-boundary points,
    k of both signs and k = 0 (geoopt: not at k = 0, where its formulas branch)."""
    g = torch.Generator().manual_seed(seed + 11)
    gm = _geoopt_math()
    out = []
    for kv in ((-1.0, 0.0, 0.7) if quick else PAIR_CURVATURES):
        k = torch.tensor(kv, dtype=torch.float64)
        fracs = {"interior": torch.rand(6, generator=g, dtype=torch.float64) * 0.9}
        if kv < 0:
            fracs["boundary"] = 1 - torch.tensor([1e-3, 5e-4, 2e-3, 1e-3, 3e-3, 1e-3], dtype=torch.float64)
        for reg, frac in fracs.items():
            a, b, c = (_ball_points(g, 6, 7, kv, frac.roll(i)) for i in range(3))
            v = torch.randn(6, 7, generator=g, dtype=torch.float64)
            calls = {
                "gyration": {"a": a, "b": b, "u": v},
                "parallel_transport": {"x": a, "y": b, "v": v},
                "parallel_transport0": {"y": b, "v": v},
                "parallel_transport0back": {"x": a, "v": v},
                "dist2plane": {"x": a, "p": b, "a": v},
            }
            fl = {torch.float64: 1e-9} if reg == "boundary" else None
            for op, args in calls.items():
                out.append(Case(f"{op}/k={kv:g}/{reg}", op, getattr(gs, op), getattr(ref, op), args, kw={"k": k},
                                params=("k",), dtypes=_PAIR_DTYPES, floor=fl))
                if gm is not None and kv != 0 and reg == "interior":
                    out.append(Case(f"{op}/k={kv:g}/{reg}/geoopt", f"{op} vs geoopt", getattr(gs, op),
                                    getattr(gm, op), args, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES))
            w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
            mid = {"xs": a, "weights": w}
            out.append(Case(f"weighted_midpoint/k={kv:g}/{reg}", "weighted_midpoint",
                            lambda xs, weights, k: gs.weighted_midpoint(xs, weights, k=k, reducedim=[0]),
                            _midpoint_ref, mid, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES, floor=fl))
            if gm is not None and kv != 0 and reg == "interior":
                out.append(Case(f"weighted_midpoint/k={kv:g}/{reg}/geoopt", "weighted_midpoint vs geoopt",
                                lambda xs, weights, k: gs.weighted_midpoint(xs, weights, k=k, reducedim=[0]),
                                lambda xs, weights, k: gm.weighted_midpoint(xs, weights, k=k, reducedim=[0]),
                                mid, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES))
                out.append(Case(f"mobius_coadd/k={kv:g}/{reg}/geoopt", "mobius_coadd vs geoopt", gs.mobius_coadd,
                                gm.mobius_coadd, {"x": a, "y": b}, kw={"k": k}, params=("k",), dtypes=_PAIR_DTYPES))
    return out
