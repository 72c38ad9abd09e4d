"""Per-call time of a tiny fp32 call (64 x 10 rows: mobius_add, expmap), 1 thread, time.thread_time: the median over
CHUNKS chunks of CALLS calls each, in microseconds per call.  Run it alternately from two trees for an A/B of the
per-call overhead (e.g. the env switches' reads): for i in 1..9: PYTHONPATH=A python tiny.py; PYTHONPATH=B ...
usage: tiny.py [CALLS] [CHUNKS] [N] [D]"""
import statistics as st
import sys
import time
import torch
import geoops.stereographic as gs

torch.set_num_threads(1)
calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 15
n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
d = int(sys.argv[4]) if len(sys.argv) > 4 else 10
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g) * 0.3 / d ** 0.5
y = torch.randn(n, d, generator=g) * 0.3 / d ** 0.5
k = torch.tensor(-1.0)
res = []
for name, f in (("mobius_add", lambda: gs.mobius_add(x, y, k=k)), ("expmap", lambda: gs.expmap(x, y, k=k))):
    for _ in range(200):
        f()
    ts = []
    for c in range(chunks):
        t = time.thread_time()
        for _ in range(calls):
            f()
        ts.append((time.thread_time() - t) / calls * 1e6)
    res.append(f"{name} {st.median(ts):.3f} (min {min(ts):.3f})")
print("  ".join(res))
