"""A/B of the three-vector row kernels (csrc/cpu/stereographic_triple.cpp): this build vs an older geoops._C.

usage: ab.py OLD_SO [SHAPES] [OPS] [ROUNDS] [DTYPES]
  OLD_SO  path of a geoops._C built from the older sources (copy geoops/_C*.so aside before rebuilding)
  SHAPES  e.g. 262144x64,16384x64,64x16;  OPS e.g. gyration,parallel_transport,dist2plane;  DTYPES float32,float64
1 thread, time.thread_time (CPU time: fair under load), interleaved rounds (bench._timing.round_order), medians (and the
interquartile range of the per-round new/old ratios).  Per op and shape:
  kernel fwd, kernel bwd (gradients to every vector), public fwd+bwd (autograd, gradients to every vector);
  old / new and geoopt's fwd and fwd+bwd in the same rounds.
"""
import statistics as st
import sys
import time

import torch

torch.set_num_threads(1)
import geoops.stereographic as gs
from geoops import _backend

try:
    from bench._timing import round_order
except ImportError:  # run from outside the checkout's root: the installed name
    from geoops.bench._timing import round_order

old_so = sys.argv[1]
shapes = [tuple(int(v) for v in s.split("x")) for s in (sys.argv[2] if len(sys.argv) > 2 else "262144x64,16384x64,64x16").split(",")]
ops = (sys.argv[3] if len(sys.argv) > 3 else "gyration,parallel_transport,parallel_transport0,parallel_transport0back,dist2plane").split(",")
R = int(sys.argv[4]) if len(sys.argv) > 4 else 7
dtypes = [getattr(torch, d) for d in (sys.argv[5] if len(sys.argv) > 5 else "float32,float64").split(",")]

OLD = _backend.load_other_build(old_so)  # refuses a build that shares this one's symbols
NEW = _backend.compiled()
try:
    import geoopt.manifolds.stereographic.math as gm
except ImportError:
    gm = None

CODE = {"gyration": 0, "parallel_transport": 1, "parallel_transport0": 2, "parallel_transport0back": 3, "dist2plane": 4}
NVEC = {"gyration": 3, "parallel_transport": 3, "parallel_transport0": 2, "parallel_transport0back": 2, "dist2plane": 3}


def inputs(op, N, D, dt):
    g = torch.Generator().manual_seed(0)
    vs = [(torch.randn(N, D, generator=g, dtype=torch.float64) * 0.3 / D ** 0.5).to(dt) for _ in range(NVEC[op])]
    return vs, torch.tensor([-1.0], dtype=torch.float64 if dt == torch.float64 else torch.float32)


def public(op, vs, k):
    if op == "dist2plane":
        return gs.dist2plane(*vs, k=k)
    return getattr(gs, op)(*vs, k=k)


def peer(op, vs, k):
    if op == "dist2plane":
        return gm.dist2plane(vs[0], vs[1], vs[2], k=k)
    if op == "parallel_transport":
        return gm.parallel_transport(vs[0], vs[1], vs[2], k=k)
    if op == "parallel_transport0":
        return gm.parallel_transport0(vs[0], vs[1], k=k)
    if op == "parallel_transport0back":
        return gm.parallel_transport0back(vs[0], vs[1], k=k)
    return gm.gyration(vs[0], vs[1], vs[2], k=k)


def t1(f):
    t = time.thread_time()
    f()
    return time.thread_time() - t


def fb(fn, vs, k):
    ws = [v.detach().requires_grad_() for v in vs]

    def run():
        out = fn(ws, k)
        out.backward(torch.ones_like(out))
    return run


for dt in dtypes:
    for N, D in shapes:
        for op in ops:
            vs, k = inputs(op, N, D, dt)
            v2 = vs[2] if NVEC[op] == 3 else None
            k64 = k.to(torch.float64)
            c = CODE[op]
            mask = 7 if NVEC[op] == 3 else 3
            out = NEW.stereo_triple_fwd_cpu(c, vs[0], vs[1], v2, k64, 0)
            g = torch.randn_like(out)
            cases = {
                "fwd old": lambda: OLD.stereo_triple_fwd_cpu(c, vs[0], vs[1], v2, k64, 0),
                "fwd new": lambda: NEW.stereo_triple_fwd_cpu(c, vs[0], vs[1], v2, k64, 0),
                "bwd old": lambda: OLD.stereo_triple_bwd_cpu(c, g, vs[0], vs[1], v2, k64, 0, mask),
                "bwd new": lambda: NEW.stereo_triple_bwd_cpu(c, g, vs[0], vs[1], v2, k64, 0, mask),
                "f+b pub": fb(lambda w, kk: public(op, w, kk), vs, k),
            }
            if gm is not None:
                cases["geoopt fwd"] = lambda: peer(op, vs, k)
                cases["geoopt f+b"] = fb(lambda w, kk: peer(op, w, kk), vs, k)
            reps = max(1, min(200, int(2e6 // (N * D))))
            for f in cases.values():
                f(), f()
            T = {name: [] for name in cases}
            for r in range(R):  # the runner's round order: position and predecessor vary
                for name in round_order(list(cases), r):
                    f = cases[name]
                    T[name].append(t1(lambda: [f() for _ in range(reps)]) / reps)
            m = {name: st.median(v) for name, v in T.items()}
            ratio = lambda a, b: st.median([x / y for x, y in zip(T[a], T[b])])

            def spread(a, b):  # the per-round ratios' quartiles
                q = st.quantiles([x / y for x, y in zip(T[a], T[b])], n=4) if R > 1 else [float("nan")] * 3
                return f"[{q[0]:5.3f}, {q[2]:5.3f}]"

            line = (f"{str(dt)[6:]:8s} {N}x{D:<3d} {op:24s} fwd {m['fwd new']*1e3:8.3f} ms (old {m['fwd old']*1e3:8.3f})"
                    f"  bwd {m['bwd new']*1e3:8.3f} (old {m['bwd old']*1e3:8.3f})  bwd/fwd new {m['bwd new']/m['fwd new']:4.2f}"
                    f" old {m['bwd old']/m['fwd old']:4.2f}  new/old fwd {ratio('fwd new', 'fwd old'):5.3f}"
                    f" {spread('fwd new', 'fwd old')} bwd {ratio('bwd new', 'bwd old'):5.3f} {spread('bwd new', 'bwd old')}"
                    f"  pub f+b {m['f+b pub']*1e3:8.3f}")
            if gm is not None:
                line += (f"  geoopt fwd {m['geoopt fwd']/m['fwd new']:5.1f}x f+b {m['geoopt f+b']/m['f+b pub']:5.1f}x")
            print(line, flush=True)
