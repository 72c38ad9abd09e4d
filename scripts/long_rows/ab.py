"""A/B of the fp32 long-row forward (the --thp rows, 2^18 x 64 by default): default vs KNOB=0, x the limit op.
1 thread, time.thread_time, interleaved rounds (bench._timing.round_order), medians.  usage: ab.py OPS ROUNDS [KNOB] [N] [D]
KNOB: a comma list, every one set to 0 for "old" (KNOB=VAL sets VAL), e.g. GEOOPS_STEREO_LONG_SUMS (the per-row
double sums of builds without the long-row sums).  Run under THP_MEM_ALLOC_ENABLE=1 (as `bench --thp`) and
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 4294967296 for a kernel-only reading (see
scripts/short_rows/ab.py)."""
import os, sys, time, statistics as st
import torch
torch.set_num_threads(1)
from bench.stereographic import make_inputs, limit_call, op_call, geoops_fn
from bench._timing import round_order

ops = (sys.argv[1] if len(sys.argv) > 1 else
       "mobius_add,expmap,expmap0,logmap,logmap0,dist,mobius_scalar_mul").split(",")
R = int(sys.argv[2]) if len(sys.argv) > 2 else 7
KNOB = sys.argv[3] if len(sys.argv) > 3 else "GEOOPS_STEREO_LONG_SUMS"
N = int(sys.argv[4]) if len(sys.argv) > 4 else 2 ** 18
D = int(sys.argv[5]) if len(sys.argv) > 5 else 64
def t1(f):
    t = time.thread_time(); f(); return time.thread_time() - t
def setk(on):
    for kn in KNOB.split(","):
        if on: os.environ.pop(kn.split("=")[0], None)
        else: os.environ[kn.split("=")[0]] = kn.split("=")[1] if "=" in kn else "0"
for op in ops:
    inp = make_inputs(op, N, D, torch.float32, "cpu")
    g = op_call(geoops_fn(op), op); lim = limit_call(op)
    def new(): setk(True); g(inp)
    def old(): setk(False); g(inp)
    for f in (new, old, lambda: lim(inp)): f(); f()
    tl, tn, to = [], [], []
    F = {"l": (tl, lambda: lim(inp)), "n": (tn, new), "o": (to, old)}
    for r in range(R):  # the runner's round order: position and predecessor vary
        for k in round_order(list(F), r):
            F[k][0].append(t1(F[k][1]))
    setk(True)
    ml = st.median(tl)
    print(f"{op:18s} limit {ml*1e3:6.3f} ms  new {st.median(tn)/ml:5.2f}x  old {st.median(to)/ml:5.2f}x  "
          f"new/old {st.median([a/b for a,b in zip(tn,to)]):.3f}", flush=True)
