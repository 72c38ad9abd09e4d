"""A/B of the fp32 short-row forward: default vs GEOOPS_STEREO_F32_MOB=0 (or KNOB=0), x the limit op.
1 thread, time.thread_time, interleaved rounds (bench._timing.round_order), medians.  usage: ab.py DIMS OPS ROUNDS [KNOB]
(KNOB may be a comma list: every one of them set to 0 for "old", e.g. GEOOPS_STEREO_F32_REG,GEOOPS_STEREO_F32_MOB;
KNOB=VAL sets that value instead of 0, e.g. GEOOPS_STEREO_F32_ROWS=2)
pf: median minor page faults per call (limit / new): a call whose output lands on fresh pages (glibc returns large
blocks to the OS depending on the heap's history) pays ~2-4x its time, so a ratio is only comparable where both
read 0.  MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 in the environment keeps the outputs on
the heap (no faults after the first calls) for a kernel-only comparison."""
import os, sys, time, resource, statistics as st
import torch
torch.set_num_threads(1)
import geoops.stereographic as gs
from bench.stereographic import make_inputs, limit_call, op_call, geoops_fn
from bench._timing import round_order

dims = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "2,5,10,16").split(",")]
ops = (sys.argv[2] if len(sys.argv) > 2 else "mobius_add,expmap,logmap,expmap0,logmap0").split(",")
R = int(sys.argv[3]) if len(sys.argv) > 3 else 9
KNOB = sys.argv[4] if len(sys.argv) > 4 else "GEOOPS_STEREO_F32_MOB"  # or GEOOPS_STEREO_F32_REG, _ROWS
N = 2 ** 20
PF = {}
def t1(f, tag=None):
    p = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    t = time.thread_time(); f(); dt = time.thread_time() - t
    if tag: PF.setdefault(tag, []).append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - p)
    return dt
for d in dims:
    for op in ops:
        inp = make_inputs(op, N, d, torch.float32, "cpu")
        g = op_call(geoops_fn(op), op); lim = limit_call(op)
        def new():
            for kn in KNOB.split(","): os.environ.pop(kn.split("=")[0], None)
            g(inp)
        def old():
            for kn in KNOB.split(","): os.environ[kn.split("=")[0]] = kn.split("=")[1] if "=" in kn else "0"
            g(inp)
        for f in (new, old, lambda: lim(inp)): f(); f()
        tl, tn, to = [], [], []
        PF.clear()
        F = {"l": (tl, lambda: lim(inp), "l"), "n": (tn, new, "n"), "o": (to, old, None)}
        for r in range(R):  # the runner's round order: position and predecessor vary
            for k in round_order(list(F), r):
                F[k][0].append(t1(F[k][1], F[k][2]))
        for kn in KNOB.split(","): os.environ.pop(kn.split("=")[0], None)
        ml = st.median(tl)
        print(f"D={d:2d} {op:10s} limit {ml*1e3:6.2f} ms  new {st.median(tn)/ml:5.2f}x (min {min(tn)/min(tl):4.2f})  "
              f"old {st.median(to)/ml:5.2f}x (min {min(to)/min(tl):4.2f})  new/old {st.median([a/b for a,b in zip(tn,to)]):.3f}"
              f"  pf {st.median(PF['l']):.0f} / {st.median(PF['n']):.0f}",
              flush=True)
