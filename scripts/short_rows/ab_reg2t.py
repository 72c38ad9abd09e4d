"""2-thread wall-time A/B of the fp32 register pass's dispatch (session 40): the limit op, the default,
GEOOPS_STEREO_F32_REG=0 (the fused / eight-loop blocks) and =2 (the register pass at every D it is compiled for),
interleaved in one process (the order rotating per round), medians.  usage: ab_reg2t.py DIMS OPS ROUNDS, e.g.
`MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python scripts/short_rows/ab_reg2t.py 4,5,6,7,8
logmap0,expmap0,mobius_add,logmap,expmap 11` (the MALLOC variables keep the outputs on the heap: no page faults).
Wall time at 2 threads is only readable on a quiet machine: another process's work shows as every call taking ~8 ms
(a scheduler quantum)."""
import os
import statistics as st
import sys
import time

import torch

from bench.stereographic import geoops_fn, limit_call, make_inputs, op_call

torch.set_num_threads(2)
dims = [int(v) for v in sys.argv[1].split(",")]
ops = sys.argv[2].split(",")
R = int(sys.argv[3])
N = 2 ** 20
ENV = {"lim": None, "def": None, "off": "0", "two": "2"}
for d in dims:
    for op in ops:
        inp = make_inputs(op, N, d, torch.float32, "cpu")
        g = op_call(geoops_fn(op), op)
        lim = limit_call(op)
        T = {tag: [] for tag in ENV}

        def run(tag):
            if ENV[tag] is not None:
                os.environ["GEOOPS_STEREO_F32_REG"] = ENV[tag]
            f = (lambda: lim(inp)) if tag == "lim" else (lambda: g(inp))
            f()
            t = time.perf_counter()
            f()
            T[tag].append(time.perf_counter() - t)
            os.environ.pop("GEOOPS_STEREO_F32_REG", None)

        tags = list(ENV)
        for r in range(R):
            for i in range(len(tags)):
                run(tags[(i + r) % len(tags)])
        m = {k: st.median(v) * 1e3 for k, v in T.items()}
        print(f"D={d} {op:10s} limit {m['lim']:.3f} ms  default {m['def'] / m['lim']:.2f}x  =0 {m['off'] / m['lim']:.2f}x"
              f"  =2 {m['two'] / m['lim']:.2f}x  default/=0 {m['def'] / m['off']:.3f}  default/=2 {m['def'] / m['two']:.3f}",
              flush=True)
