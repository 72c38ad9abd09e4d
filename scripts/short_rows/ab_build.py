"""In-process A/B of two builds of geoops._C on the bench's short-row forward: this tree's build (new) against an older
_C (old, e.g. main's copied aside before rebuilding), with the bench's limit op in the same rounds.

usage: ab_build.py OLD_SO DIMS OPS ROUNDS
  e.g. ab_build.py /tmp/main_C.so 2,5,10,16 expmap,logmap,logmap0 15
1 thread, time.thread_time (thread CPU time: the least sensitive to other processes on a shared machine), 2^20 x D
fp32 (bench.stereographic.make_inputs), rounds in the bench runner's order (bench._timing.round_order: position and
predecessor vary); per op and D: medians of new / old per round (with the interquartile range), and of new and old
x the limit op per round.  Both builds run the public op (geoops.stereographic.<op>): the module the dispatch reads
(_backend.compiled()) is switched before each call.  Valid since session 45 only when at least one of the two builds has
hidden visibility (setup.py since then; _backend.load_other_build refuses two builds that share their symbols): with
two default-visibility builds the old build's module init ran this build's binding functions too, so its calls ran
this build's kernels (new/old ~1 and "bits same" whatever the sources; docs/history.md, session 45, helper vis45).
"""
import os
import statistics as st
import sys
import time

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.getcwd())
import geoops.stereographic as gs  # noqa: E402
from geoops import _backend  # noqa: E402
from bench.stereographic import make_inputs, limit_call, op_call, geoops_fn  # noqa: E402
from bench._timing import round_order  # noqa: E402

old_so, dims, ops, R = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
OLD = _backend.load_other_build(old_so)  # refuses a build that shares this one's symbols
NEW = _backend.compiled()
N = 2 ** 20


def t1(f):
    t = time.thread_time()
    f()
    return time.thread_time() - t


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


print(f"load {os.getloadavg()[0]:.2f}, rounds {R}", flush=True)
for d in [int(v) for v in dims.split(",")]:
    for op in ops.split(","):
        inp = make_inputs(op, N, d, torch.float32, "cpu")
        g = op_call(geoops_fn(op), op)
        lim = limit_call(op)

        def with_mod(m):
            def call():
                _backend._cache["C"] = m
                g(inp)
            return call
        F = {"l": lambda: lim(inp), "n": with_mod(NEW), "o": with_mod(OLD)}
        ref = None
        for k in ("n", "o"):
            _backend._cache["C"] = NEW if k == "n" else OLD
            out = g(inp)
            ref = out if ref is None else ref
            if k == "o":
                same = torch.equal(out.view(torch.int32), ref.view(torch.int32))
        for f in F.values():
            f(), f()
        T = {k: [] for k in F}
        for r in range(R):
            for k in round_order(list(F), r):
                T[k].append(t1(F[k]))
        _backend._cache["C"] = NEW
        no = [a / b for a, b in zip(T["n"], T["o"])]
        nl = [a / b for a, b in zip(T["n"], T["l"])]
        ol = [a / b for a, b in zip(T["o"], T["l"])]
        print(f"D={d:2d} {op:10s} limit {st.median(T['l'])*1e3:6.2f} ms  new/old {st.median(no):.3f} "
              f"(IQR {q(no, .25):.3f}-{q(no, .75):.3f})  x limit new {st.median(nl):.2f} old {st.median(ol):.2f}  "
              f"ms new {st.median(T['n'])*1e3:6.2f} old {st.median(T['o'])*1e3:6.2f}  bits {'same' if same else 'DIFFER'}",
              flush=True)
