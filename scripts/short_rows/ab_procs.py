"""A/B of two builds of geoops._C, one worker process per build, interleaved round by round.

usage: ab_procs.py TREE_A TREE_B ROUNDS [CASES]
  TREE_X: a folder holding a `geoops` package with that build's _C (e.g. a copy of geoops/ with the .so swapped in);
  CASES: comma-separated names from CASES below (default: all).
Each worker (PYTHONPATH=TREE_X, 1 thread) builds every case's inputs once; the driver asks A and B in turn (order
alternating per round) to time one call of a case by thread CPU time (time.thread_time: the least sensitive to other
processes on a shared machine).  Prints per case the medians of A, B and of B / A per round with its interquartile
range.  Unlike an in-process switch, each build's process holds only that build.
"""
import os
import statistics as st
import subprocess
import sys

CASES = {  # name -> (setup code defining `f`, a zero-argument call)
    **{f"{op}_{n}x{d}": (f"""
from bench.stereographic import make_inputs, op_call, geoops_fn
inp = make_inputs({op!r}, {n}, {d}, torch.float32, "cpu"); g = op_call(geoops_fn({op!r}), {op!r})
f = lambda: g(inp)""", None) for op in ("mobius_add", "expmap", "logmap", "dist") for n, d in ((2 ** 20, 5), (2 ** 18, 64))},
    "gaunt_L4_2048x16": ("""
import geoops.gaunt as ga
x1, x2 = torch.randn(2048, 16, 25), torch.randn(2048, 16, 25)
f = lambda: ga.gaunt_tensor_product(x1, x2)""", None),
    "triple_attention_1x4x128x32": ("""
import geoops.attention as ga
q, k1, k2, v1, v2 = (torch.randn(1, 4, 128, 32) for _ in range(5))
f = lambda: ga.triple_attention(q, k1, k2, v1, v2)""", None),
    "fftconv_8x64x4096": ("""
import geoops.ssm as gs
u, k = torch.randn(8, 64, 4096), torch.randn(64, 4096)
f = lambda: gs.fftconv(u, k)""", None),
}

WORKER = r"""
import sys, time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
import geoops
fs = {}
for name in sys.argv[1].split(","):
    env = {"torch": torch}
    exec(SETUPS[name], env)
    env["f"](); env["f"]()
    fs[name] = env["f"]
print("ready", geoops._backend.compiled().__file__, flush=True)
for line in sys.stdin:
    name = line.strip()
    t = time.thread_time(); fs[name](); t = time.thread_time() - t
    print(t, flush=True)
"""


def main():
    ta, tb, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(CASES)
    code = "SETUPS = %r\n" % {n: CASES[n][0] for n in names} + WORKER
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = {}
    for key, tree in (("A", ta), ("B", tb)):
        env = dict(os.environ, PYTHONPATH=f"{tree}:{root}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        p = subprocess.Popen([sys.executable, "-c", code, ",".join(names)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        procs[key] = p
    for key, p in procs.items():
        print(key, p.stdout.readline().strip(), flush=True)
    print(f"load {os.getloadavg()[0]:.1f}, rounds {rounds}", flush=True)
    for name in names:
        T = {"A": [], "B": []}
        for r in range(rounds):
            for key in (("A", "B") if r % 2 == 0 else ("B", "A")):
                procs[key].stdin.write(name + "\n"); procs[key].stdin.flush()
                T[key].append(float(procs[key].stdout.readline()))
        ratio = sorted(b / a for a, b in zip(T["A"], T["B"]))
        q = lambda p: ratio[min(len(ratio) - 1, int(p * len(ratio)))]
        print(f"{name:30s} A {st.median(T['A']) * 1e3:8.2f} ms  B {st.median(T['B']) * 1e3:8.2f} ms  "
              f"B/A {st.median(ratio):.3f} (IQR {q(.25):.3f}-{q(.75):.3f})", flush=True)
    for p in procs.values():
        p.stdin.close(); p.wait()


if __name__ == "__main__":
    main()
