"""Benchmark rows of the Poincaré-ball layer family: geoops vs HypLL vs the Euclidean layer of the same shape.

    python -m geoops.bench --families poincare                  # the issue's CPU targets (fp32)
    python -m geoops.bench --families poincare --ops fc,block   # a subset
    python -m geoops.bench --families poincare --poincare-digits   # + the digits CNN epoch (HypLL vs geoops)

Rows ("limit" is the Euclidean layer: what the same shape costs without hyperbolic geometry; "peer" is HypLL,
eager -- its ManifoldTensor code does not go through torch.compile, so "compiled" is not timed):
* ``fc`` 4096 x 512 -> 512: ``poincare_fc`` vs ``nn.functional.linear``; GFLOP/s counts the GEMM (2 N n m per
  pass, x3 for fwd+bwd).
* ``conv2d`` batch 32, 16 -> 16 channels, 32 x 32, 3 x 3, padding 1: ``PoincareConv2d`` vs ``nn.Conv2d``.
* ``batchnorm2d`` (32, 16, 32, 32): ``PoincareBatchNorm2d`` (training mode) vs ``nn.BatchNorm2d``.
* ``relu`` (32, 16, 32, 32): ``PoincareReLU`` vs ``torch.relu``.
* ``block``: the Poincaré residual block (conv-BN-ReLU-conv-BN, Möbius residual addition, ReLU) vs the same
  Euclidean block.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict

import torch

from ._runner import DTYPE_SHORT, Row, parse_list, pass_runner

TITLE = "Poincaré-ball layers (HNN++ / Poincaré ResNet) vs HypLL and vs the Euclidean layer"
PEER = "HypLL"
PEER_MODULES = ("hypll",)  # import names of the peers (their versions go into the JSON)
ALL_OPS = ("fc", "conv2d", "batchnorm2d", "relu", "block")
OP_NAMES = ALL_OPS  # the ops --ops may name
DTYPES = (torch.float32, torch.float64)  # the rows' dtypes


def add_arguments(parser) -> None:
    g = parser.add_argument_group("poincare")
    g.add_argument("--poincare-fc", default="4096,512,512", help="poincare: fc rows N,n,m (default 4096,512,512)")
    g.add_argument("--poincare-image", default="32,16,32,32", help="poincare: image B,C,H,W (default 32,16,32,32)")
    g.add_argument("--poincare-digits", action="store_true",
                   help="poincare: also train the digits CNN with HypLL and with geoops (seconds per epoch)")
    g.add_argument("--poincare-digits-epochs", type=int, default=7,
                   help="poincare: epochs of the digits CNN per library (default 7: the median of epochs 2..N is "
                        "reported; one epoch is ~24 steps, a fraction of a second for geoops, so few epochs are noisy)")


def prepare(args, log) -> dict:
    notes = {}
    if getattr(args, "poincare_digits", False):
        from . import poincare_digits as pdg

        # N epochs each, alternating epoch by epoch (see pdg.run); the first one of each pays one-time costs (lazy
        # initialisation, the allocator's first blocks, first calls), so the reported time is the median of the
        # others (steady state), with the first epoch's time and the range of the per-epoch ratios alongside.
        n = max(2, int(getattr(args, "poincare_digits_epochs", 7)))
        res = pdg.run(epochs=n)
        (lh, ah, th), (lg, ag, tg) = res["hypll"], res["geoops"]
        mh, mg = statistics.median(th[1:]), statistics.median(tg[1:])
        ratios = [u / v for u, v in zip(th[1:], tg[1:])]
        notes[f"digits CNN, per epoch (1500 images, batch 64, Adam fused=True on both sides; median of epochs 2-{n})"] = (
            f"HypLL {mh:.3f} s, geoops {mg:.3f} s ({mh / mg:.1f}x; per-epoch ratios {min(ratios):.1f}-"
            f"{max(ratios):.1f}x); first epoch HypLL {th[0]:.2f} s, geoops {tg[0]:.2f} s ({th[0] / tg[0]:.1f}x); "
            f"max |loss diff| epoch 1 {_maxdiff(lh, lg, len(lh) // n):.1e}, over {n} epochs "
            f"{_maxdiff(lh, lg, len(lh)):.1e} (fp32 rounding differences grow with the steps); "
            f"test accuracy HypLL {ah:.4f}, geoops {ag:.4f}")
    return notes


def _maxdiff(a, b, n):
    return max(abs(u - v) for u, v in zip(a[:n], b[:n]))


def _ints(text):
    return [int(v) for v in text.split(",")]


def _img(B, C, H, W, c=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, C, H, W, generator=g)
    n = v.norm(dim=1, keepdim=True)
    return v / n * torch.rand(n.shape, generator=g) * 0.8 / math.sqrt(c)




# ---------------------------------------------------------------- the networks of each row
def _hypll_ball():
    from hypll.manifolds.poincare_ball import Curvature, PoincareBall

    return PoincareBall(c=Curvature(1.0))


def _wrap_hypll(layer_fn, ball):
    from hypll.tensors import ManifoldTensor

    def f(x):
        return layer_fn(ManifoldTensor(data=x, manifold=ball, man_dim=1)).tensor
    return f


def _hyp_params(mods):
    return [getattr(p, "tensor", p) for m in mods for n, p in m.named_parameters() if not n.endswith("value")]


def _setup_fc(N, n, m, pass_, dtype=torch.float32):
    def setup():
        import geoops.poincare as gp

        want = pass_ == "fwd+bwd"
        g = torch.Generator().manual_seed(0)
        v = torch.randn(N, n, generator=g)
        x = (v / v.norm(dim=-1, keepdim=True) * torch.rand(N, 1, generator=g) * 0.8).to(dtype).requires_grad_(want)
        z = (torch.randn(n, m, generator=g) / math.sqrt(n)).to(dtype).requires_grad_(want)
        b = (torch.randn(m, generator=g) * 0.1).to(dtype).requires_grad_(want)
        W = torch.randn(m, n, generator=g).to(dtype).requires_grad_(want)
        c = torch.tensor(1.0, dtype=dtype)
        gout = torch.randn(N, m).to(dtype) if want else None
        fns = {"geoops": pass_runner(lambda x: gp.poincare_fc(x, z, b, c=c), [x], pass_, gout, [z, b]),
               "limit": pass_runner(lambda x: torch.nn.functional.linear(x, W, b), [x], pass_, gout, [W, b])}
        skipped = {"compiled": "n/a: HypLL is not compiled"}
        calls = {}
        try:
            from hypll.manifolds.poincare_ball.math import diffgeom, linalg

            def peer(x):
                return diffgeom.project(linalg.poincare_fully_connected(x, z, b, c), c)
            fns["peer"] = pass_runner(peer, [x], pass_, gout, [z, b])
            calls["peer"] = peer
        except ImportError:
            skipped["peer"] = "n/a: HypLL is not installed"
        check = None
        if not want and "peer" in calls:
            def check():
                with torch.no_grad():
                    return gp.poincare_fc(x, z, b, c=c), calls["peer"](x)
        return fns, check, skipped
    return setup


def _geo_layers(kind, C):
    from geoops.nn import poincare as P

    ball = P.PoincareBall(1.0)
    if kind == "conv2d":
        return ball, [P.PoincareConv2d(C, C, 3, ball, padding=1, id_init=False)]
    if kind == "batchnorm2d":
        return ball, [P.PoincareBatchNorm2d(C, ball)]
    if kind == "relu":
        return ball, [P.PoincareReLU(ball)]
    return ball, [P.PoincareConv2d(C, C, 3, ball, padding=1, id_init=False), P.PoincareBatchNorm2d(C, ball),
                  P.PoincareReLU(ball), P.PoincareConv2d(C, C, 3, ball, padding=1, id_init=False),
                  P.PoincareBatchNorm2d(C, ball)]


def _hyp_layers(kind, C, ball):
    import hypll.nn as hnn

    if kind == "conv2d":
        return [hnn.HConvolution2d(C, C, 3, ball, padding=1)]
    if kind == "batchnorm2d":
        return [hnn.HBatchNorm2d(C, ball, use_midpoint=True)]
    if kind == "relu":
        return [hnn.HReLU(ball)]
    return [hnn.HConvolution2d(C, C, 3, ball, padding=1), hnn.HBatchNorm2d(C, ball, use_midpoint=True),
            hnn.HReLU(ball), hnn.HConvolution2d(C, C, 3, ball, padding=1), hnn.HBatchNorm2d(C, ball, use_midpoint=True)]


def _euc_layers(kind, C):
    nn = torch.nn
    if kind == "conv2d":
        return [nn.Conv2d(C, C, 3, padding=1)]
    if kind == "batchnorm2d":
        return [nn.BatchNorm2d(C)]
    if kind == "relu":
        return [nn.ReLU()]
    return [nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C)]


def _setup_image(kind, B, C, H, W, pass_, dtype=torch.float32):
    def setup():
        import geoops.poincare as gp

        want = pass_ == "fwd+bwd"
        x = _img(B, C, H, W).to(dtype).requires_grad_(want)
        gout = torch.randn(B, C, H, W).to(dtype) if want else None
        ball, geo = _geo_layers(kind, C)
        euc = _euc_layers(kind, C)
        for m_ in [ball, *geo, *euc]:
            m_.to(dtype)

        def seq(mods, x):
            for m_ in mods:
                x = m_(x)
            return x

        if kind == "block":
            def f_geo(x):
                return gp.poincare_relu(gp.mobius_add(seq(geo, x), x, c=ball(), dim=1), c=ball(), dim=1)

            def f_euc(x):
                return torch.relu(seq(euc, x) + x)
        else:
            def f_geo(x):
                return seq(geo, x)

            def f_euc(x):
                return seq(euc, x)
        gparams = [p for m_ in geo for n, p in m_.named_parameters() if not n.endswith("value")]
        eparams = [p for m_ in euc for p in m_.parameters()]
        fns = {"geoops": pass_runner(f_geo, [x], pass_, gout, gparams),
               "limit": pass_runner(f_euc, [x], pass_, gout, eparams)}
        skipped = {"compiled": "n/a: HypLL is not compiled"}
        check = None
        try:
            hball = _hypll_ball().to(dtype)
            hyp = _hyp_layers(kind, C, hball)
            for m_ in hyp:
                m_.to(dtype)
            with torch.no_grad():  # same weights as ours
                for mg, mh in zip(geo, hyp):
                    for pg, ph in zip([p for n, p in mg.named_parameters() if not n.endswith("value")],
                                      _hyp_params([mh])):
                        ph.copy_(pg)
            from hypll.tensors import ManifoldTensor

            def f_hyp(x):
                h = ManifoldTensor(data=x, manifold=hball, man_dim=1)
                y = h
                for m_ in hyp:
                    y = m_(y)
                if kind == "block":
                    y = hyp[2](hball.mobius_add(y, h))
                return y.tensor
            fns["peer"] = pass_runner(f_hyp, [x], pass_, gout, _hyp_params(hyp))
            if not want:
                def check():
                    with torch.no_grad():
                        return f_geo(x), f_hyp(x)
        except ImportError:
            skipped["peer"] = "n/a: HypLL is not installed"
        return fns, check, skipped
    return setup


def rows(args, device: torch.device):
    if device.type != "cpu":
        return  # CUDA tensors run the reference composition (no Triton kernels for this family yet)
    ops = parse_list(args.ops, ALL_OPS, ALL_OPS, "op")
    N, n, m = _ints(args.poincare_fc)
    B, C, H, W = _ints(args.poincare_image)
    for dtype in args.dtypes or (torch.float32,):
        dt, tol, esize = DTYPE_SHORT[dtype], (1e-9 if dtype == torch.float64 else 1e-3), dtype.itemsize
        for op in ops:
            for pass_ in args.passes:
                mult = 1 if pass_ == "fwd" else 3
                if op == "fc":
                    yield Row(family="poincare", op="fc", pass_=pass_, shape=[N, n, m], dtype=dt,
                              setup=_setup_fc(N, n, m, pass_, dtype), work=2.0 * N * n * m * mult, unit="GFLOP/s",
                              limit="nn.functional.linear (same GEMM)", peer=PEER, check_tol=tol)
                else:
                    convs = {"conv2d": 1, "block": 2}.get(op, 0)
                    flops = 2.0 * B * H * W * C * C * 9 * convs
                    # bytes: fwd reads x, writes y; the backward reads grad_out and x, writes dx (5 tensors in all)
                    nbytes = esize * B * C * H * W * (2 if pass_ == "fwd" else 5)
                    yield Row(family="poincare", op=op, pass_=pass_, shape=[B, C, H, W], dtype=dt,
                              setup=_setup_image(op, B, C, H, W, pass_, dtype),
                              work=(flops * mult if flops else nbytes), unit="GFLOP/s" if flops else "GB/s",
                              limit={"conv2d": "nn.Conv2d", "batchnorm2d": "nn.BatchNorm2d", "relu": "torch.relu",
                                     "block": "the Euclidean residual block"}[op],
                              peer=PEER, check_tol=tol)
