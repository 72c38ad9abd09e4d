"""A/B of the Poincaré batch norm layer (session 44: the transport in the rows [b; b - m], the running mean's step in
the difference): this checkout vs an older geoops._C and main's Python transport.

usage: ab.py OLD_SO [SHAPES] [ROUNDS]
  OLD_SO  path of a geoops._C built from the older sources;  SHAPES e.g. 4096x8,1024x64,64x16
1 thread, time.thread_time (CPU time: fair under load), interleaved rounds (bench._timing.round_order), medians and
the interquartile range of the per-round new/old ratios.  Per shape (float32): the eager CPU training layer with
running buffers, forward+backward (BnLayerFn: the C++ transport, its backward and the running update; old = OLD_SO's
calls), and the eval layer forward (the torch composition _gram / _transport_matrix; old = the pre-session-44
functions, scripts/bn_transport/old_form.py).
"""
import statistics as st
import sys
import time

import torch

torch.set_num_threads(1)
import geoops.poincare as gp  # noqa: E402
from geoops import _backend  # noqa: E402
from old_form import old_gram, old_transport_matrix  # noqa: E402

try:
    from bench._timing import round_order
except ImportError:
    from geoops.bench._timing import round_order

OLD = _backend.load_other_build(sys.argv[1])  # refuses a build that shares this one's symbols
NEW = _backend.compiled()
SHAPES = sys.argv[2] if len(sys.argv) > 2 else "4096x8,1024x64,64x16"
shapes = [tuple(int(v) for v in s.split("x")) for s in SHAPES.split(",")]
R = int(sys.argv[3]) if len(sys.argv) > 3 else 15
NEW_PY = (gp._gram, gp._transport_matrix)


def use(which):
    so = NEW if which == "new" else OLD
    _backend.compiled = lambda: so
    gp._gram, gp._transport_matrix = NEW_PY if which == "new" else (old_gram, old_transport_matrix)


def train_step(x, bias, w, rm, rv):
    y = gp.batch_norm(x, bias, w, c=1.0, running_mean=rm, running_var=rv, training=True)
    y.sum().backward()


def eval_step(x, bias, w, rm, rv):
    with torch.no_grad():
        gp.batch_norm(x, bias, w, c=1.0, running_mean=rm, running_var=rv, training=False)


def timed(fn, reps):
    t0 = time.thread_time()
    for _ in range(reps):
        fn()
    return (time.thread_time() - t0) / reps


for N, D in shapes:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(N, D, generator=g) * 0.3 / D ** 0.5).requires_grad_()
    bias = (torch.randn(D, generator=g) * 0.1).requires_grad_()
    w = torch.ones(1, requires_grad=True)
    rm, rv = torch.zeros(D), torch.ones(1)
    reps = max(1, int(2e6 / (N * D)))
    for mode, step in (("train fwd+bwd", train_step), ("eval fwd", eval_step)):
        t = {"old": [], "new": []}
        for r in range(R + 1):
            for which in round_order(["old", "new"], r):
                use(which)
                v = timed(lambda: step(x, bias, w, rm, rv), reps)
                if r:  # (round 0: warm-up)
                    t[which].append(v)
        ratios = sorted(n / o for n, o in zip(t["new"], t["old"]))
        q = st.quantiles(ratios, n=4)
        print(f"{N}x{D} {mode}: old {st.median(t['old']) * 1e6:.1f} us, new {st.median(t['new']) * 1e6:.1f} us, "
              f"new/old {st.median(ratios):.3f} [{q[0]:.3f}, {q[2]:.3f}]", flush=True)
use("new")
