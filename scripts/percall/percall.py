"""Per-call time of geoops' public ops at small shapes (host overhead) and a few large headline rows.

    PYTHONPATH=<checkout> python scripts/percall/percall.py [--group small|large|all] [--rows a,b] [--threads 1]

Prints one JSON object per line: {"row": name, "us": median per-call CPU time in microseconds, "wall_us": ...}.
Only public functions (the same call in every session since 33), so two checkouts can be compared: run it under
each checkout's PYTHONPATH in turn (A B A B) and take the ratio row by row.  A sample is ``inner`` back-to-back
calls; the median of the samples after a warm-up is quoted (CPU time of the process, one thread by default: on a
shared machine it does not count the time other processes take the core away).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch


def _ball(shape, g, scale=0.7):
    v = torch.randn(*shape, generator=g)
    return v / v.norm(dim=-1, keepdim=True) * torch.rand(*shape[:-1], 1, generator=g) * scale


def _fwd(fn, *args):
    from bench._runner import pass_runner  # (the bench suite's pass runner: the same call in every session since 33)

    return pass_runner(fn, args, "fwd")


def _fb(fn, leaves, *args):
    """fwd+bwd of fn(*args) with a fixed random output gradient, the leaves' .grad cleared before each call."""
    from bench._runner import pass_runner

    out0 = fn(*args)
    gout = torch.randn_like(out0) if out0.is_floating_point() else None
    return pass_runner(fn, args, "fwd+bwd", gout, params=leaves)


def rows_small():
    import geoops.stereographic as st
    import geoops.poincare as gp
    import geoops.gaunt as ga
    import geoops.attention as at
    import geoops.ssm as ss
    from geoops.nn import poincare as P

    g = torch.Generator().manual_seed(0)
    k = torch.tensor(-1.0)
    x, y = _ball((1024, 64), g), _ball((1024, 64), g)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    u = torch.randn(1024, 64, generator=g) * 0.3
    ug = u.clone().requires_grad_()
    r = {}
    r["st.mobius_add 1024x64 fwd"] = _fwd(lambda a, b: st.mobius_add(a, b, k=k), x, y)
    r["st.mobius_add 1024x64 fwd+bwd"] = _fb(lambda a, b: st.mobius_add(a, b, k=k), [xg, yg], xg, yg)
    r["st.expmap0 1024x64 fwd"] = _fwd(lambda a: st.expmap0(a, k=k), u)
    r["st.expmap0 1024x64 fwd+bwd"] = _fb(lambda a: st.expmap0(a, k=k), [ug], ug)
    r["st.dist 1024x64 fwd"] = _fwd(lambda a, b: st.dist(a, b, k=k), x, y)
    r["st.dist 1024x64 fwd+bwd"] = _fb(lambda a, b: st.dist(a, b, k=k), [xg, yg], xg, yg)
    r["st.mobius_add 16x8 fwd"] = _fwd(lambda a, b: st.mobius_add(a, b, k=k), x[:16, :8].contiguous(),
                                       y[:16, :8].contiguous())

    cx, cy = _ball((64, 64), g), _ball((64, 64), g)
    cxg, cyg = cx.clone().requires_grad_(), cy.clone().requires_grad_()
    r["cdist 64x64x64 fwd"] = _fwd(lambda a, b: st.cdist(a, b, k=k), cx, cy)
    r["cdist 64x64x64 fwd+bwd"] = _fb(lambda a, b: st.cdist(a, b, k=k), [cxg, cyg], cxg, cyg)
    kx, ky = _ball((256, 16), g), _ball((256, 16), g)
    r["knn 256x256x16 n8 fwd"] = _fwd(lambda a, b: st.knn(a, b, 8, k=k)[0], kx, ky)

    c = torch.tensor(1.0)
    fx = _ball((4, 64), g)
    fz = torch.randn(64, 64, generator=g) / 8
    fb = torch.randn(64, generator=g) * 0.1
    fxg, fzg, fbg = (t.clone().requires_grad_() for t in (fx, fz, fb))
    r["poincare_fc 4x64->64 fwd"] = _fwd(lambda a: gp.poincare_fc(a, fz, fb, c=c), fx)
    r["poincare_fc 4x64->64 fwd+bwd"] = _fb(lambda a, zz, bb: gp.poincare_fc(a, zz, bb, c=c), [fxg, fzg, fbg],
                                            fxg, fzg, fbg)
    ball = P.PoincareBall(1.0)
    img = _ball((4, 8, 8, 8), g).movedim(-1, 1).contiguous()  # points along the channels
    imgg = img.clone().requires_grad_()
    conv = P.PoincareConv2d(8, 8, 3, ball, padding=1, id_init=False)
    r["PoincareConv2d B4 8->8 8x8 fwd"] = _fwd(conv, img)
    r["PoincareConv2d B4 8->8 8x8 fwd+bwd"] = _fb(conv, [imgg] + list(conv.parameters()), imgg)
    bn = P.PoincareBatchNorm2d(8, ball)
    r["PoincareBatchNorm2d B4 8 8x8 train fwd"] = _fwd(bn, img)
    r["PoincareBatchNorm2d B4 8 8x8 train fwd+bwd"] = _fb(bn, [imgg] + list(bn.parameters()), imgg)
    relu = P.PoincareReLU(ball)
    r["PoincareReLU B4 8 8x8 fwd"] = _fwd(relu, img)

    g1, g2 = torch.randn(16, 4, 9, generator=g), torch.randn(16, 4, 9, generator=g)
    g1g, g2g = g1.clone().requires_grad_(), g2.clone().requires_grad_()
    r["gaunt lmax2 16x4 fwd"] = _fwd(lambda a, b: ga.gaunt_tensor_product(a, b), g1, g2)
    r["gaunt lmax2 16x4 fwd+bwd"] = _fb(lambda a, b: ga.gaunt_tensor_product(a, b), [g1g, g2g], g1g, g2g)

    qkv = [torch.randn(1, 1, 16, 16, generator=g) for _ in range(5)]
    qkvg = [t.clone().requires_grad_() for t in qkv]
    r["attention N16 D16 fwd"] = _fwd(lambda *a: at.triple_attention(*a), *qkv)
    r["attention N16 D16 fwd+bwd"] = _fb(lambda *a: at.triple_attention(*a), qkvg, *qkvg)

    H, N, L = 4, 8, 64
    log_dt = torch.rand(H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N, dtype=torch.float32).expand(H, N))
    B = torch.ones(H, N, dtype=torch.complex64)
    C = torch.randn(H, N, generator=g, dtype=torch.complex64)
    r["s4d_kernel H4 N8 L64 fwd"] = _fwd(lambda: ss.s4d_kernel(log_dt, A, B, C, L))
    ldg = log_dt.clone().requires_grad_()
    Cg = C.clone().requires_grad_()
    r["s4d_kernel H4 N8 L64 fwd+bwd"] = _fb(lambda a, cc: ss.s4d_kernel(a, A, B, cc, L), [ldg, Cg], ldg, Cg)
    uu = torch.randn(2, H, L, generator=g)
    kk = torch.randn(H, L, generator=g)
    DD = torch.randn(H, generator=g)
    uug, kkg, DDg = (t.clone().requires_grad_() for t in (uu, kk, DD))
    r["fftconv B2 H4 L64 fwd"] = _fwd(lambda a: ss.fftconv(a, kk, DD), uu)
    r["fftconv B2 H4 L64 fwd+bwd"] = _fb(lambda a, b, d: ss.fftconv(a, b, d), [uug, kkg, DDg], uug, kkg, DDg)
    return r


def rows_large():
    import geoops.stereographic as st
    import geoops.poincare as gp
    import geoops.ssm as ss
    from geoops.nn import poincare as P

    g = torch.Generator().manual_seed(0)
    k = torch.tensor(-1.0)
    r = {}

    def big_rows():
        return _ball((1 << 18, 64), g), _ball((1 << 18, 64), g)
    x, y = big_rows()
    r["st.mobius_add 2^18x64 fwd"] = _fwd(lambda a, b: st.mobius_add(a, b, k=k), x, y)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    r["st.mobius_add 2^18x64 fwd+bwd"] = _fb(lambda a, b: st.mobius_add(a, b, k=k), [xg, yg], xg, yg)
    cx, cy = _ball((2048, 64), g), _ball((2048, 64), g)
    r["cdist 2048^2x64 fwd"] = _fwd(lambda a, b: st.cdist(a, b, k=k), cx, cy)
    u = torch.randn(8, 256, 16384, generator=g)
    kk = torch.randn(256, 16384, generator=g) * torch.exp(-torch.arange(16384) / 2000.0)
    DD = torch.randn(256, generator=g)
    r["fftconv B8 H256 L16384 fwd"] = _fwd(lambda a: ss.fftconv(a, kk, DD), u)
    ball = P.PoincareBall(1.0)
    C = 16
    geo = [P.PoincareConv2d(C, C, 3, ball, padding=1, id_init=False), P.PoincareBatchNorm2d(C, ball),
           P.PoincareReLU(ball), P.PoincareConv2d(C, C, 3, ball, padding=1, id_init=False),
           P.PoincareBatchNorm2d(C, ball)]

    def block(x):
        h = x
        for m in geo:
            h = m(h)
        return gp.poincare_relu(gp.mobius_add(h, x, c=ball(), dim=1), c=ball(), dim=1)
    img = (_ball((32, 32, 32, C), g, 0.5).movedim(-1, 1).contiguous()).requires_grad_()
    params = [p for m in geo for n, p in m.named_parameters() if not n.endswith("value")]
    r["Poincare residual block B32 16ch 32x32 fwd+bwd"] = _fb(block, [img] + params, img)
    return r


def measure(fn, budget_s: float, samples: int):
    for _ in range(3):
        fn()
    t0 = time.process_time()
    n = 0
    while True:
        fn()
        n += 1
        el = time.process_time() - t0
        if el > 0.05 or n >= 1000:
            break
    per = el / n
    inner = max(1, int(budget_s / samples / max(per, 1e-7)))
    cpu, wall = [], []
    for _ in range(samples):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        cpu.append((time.process_time() - c0) / inner)
        wall.append((time.perf_counter() - w0) / inner)
    return statistics.median(cpu), statistics.median(wall), inner


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", default="small", choices=("small", "large", "all"))
    ap.add_argument("--rows", default="", help="comma-separated substrings: only rows whose name contains one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per row (small rows)")
    ap.add_argument("--samples", type=int, default=7)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = {}
    if a.group in ("small", "all"):
        rows.update(rows_small())
    if a.group in ("large", "all"):
        rows.update(rows_large())
    want = [s for s in a.rows.split(",") if s]
    for name, fn in rows.items():
        if want and not any(s in name for s in want):
            continue
        large = name in ("st.mobius_add 2^18x64 fwd",) or "2^18" in name or "2048" in name or "L16384" in name \
            or "B32" in name
        cpu, wall, inner = measure(fn, 1.5 if large else a.budget, 5 if large else a.samples)
        print(json.dumps({"row": name, "us": round(cpu * 1e6, 2), "wall_us": round(wall * 1e6, 2), "inner": inner}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
