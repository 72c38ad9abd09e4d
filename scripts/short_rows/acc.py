"""Near-boundary accuracy of the fp32 short-row forward (mobius_add, expmap, logmap) against the fp64 reference:
x with |x| within 1e-3 .. 1e-6 (relative) of the boundary 1/sqrt(-k), y random in the ball (a third of them within
1e-3 .. 1e-6 of it), in random directions (no nearly opposite / equal pairs: there the write a x + b y cancels and
its float rounding, not the terms, is the error), expmap's u = v a (1 + k|x|^2) / 2 with v random of norm <= 1 and a over
1e-3 .. 1e1 (lambda_x |u| from 1e-3 to 10); k in {-1, -0.25, -4} (one value per call).  Prints the largest row-wise relative error (relative to the
larger of |expect| and |x| / 10, the tests' op_row_err scale) per op, D, k.  usage: acc.py [DIMS] [N]"""
import sys
import torch
import geoops.stereographic as gs
from geoops.reference import stereographic as ref

dims = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "1,2,3,5,8,10,16").split(",")]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
torch.set_num_threads(1)


def pts(g, n, d, k, lo, hi):
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    delta = torch.exp(torch.empty(n, 1, dtype=torch.float64).uniform_(torch.log(torch.tensor(lo)).item(),
                                                                     torch.log(torch.tensor(hi)).item(), generator=g))
    return v / v.norm(dim=-1, keepdim=True) * (1 - delta) / (-k) ** 0.5


def inputs(op, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = pts(g, n, d, k, 1e-6, 1e-3)
    y = pts(g, n, d, k, 1e-6, 1.0)
    y[::3] = pts(g, len(y[::3]), d, k, 1e-6, 1e-3)
    if op == "expmap":
        a = torch.exp(torch.empty(n, 1, dtype=torch.float64).uniform_(-6.9, 2.3, generator=g))
        y = y * (-k) ** 0.5 * a * (1 + k * (x * x).sum(-1, keepdim=True)) / 2 / (-k) ** 0.5
    return x.float(), y.float()


for d in dims:
    for op in ("mobius_add", "expmap", "logmap"):
        row = []
        for k in (-1.0, -0.25, -4.0):
            x, y = inputs(op, d, k, seed=17 * d + int(-4 * k))
            kt = torch.tensor(k)
            out = getattr(gs, op)(x, y, k=kt)
            expect = getattr(ref, op)(x.double(), y.double(), k=kt.double())
            ok = torch.isfinite(expect).all(-1)
            scale = torch.maximum(expect.norm(dim=-1), x.double().norm(dim=-1) * 0.1).clamp_min(1e-30)
            err = ((out.double() - expect).norm(dim=-1) / scale)[ok]
            row.append(f"k={k:5.2f} max {err.max().item():.2e} p99.9 {err.quantile(0.999).item():.2e}")
        print(f"D={d:2d} {op:10s} " + "  ".join(row), flush=True)
