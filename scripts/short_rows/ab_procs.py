"""A/B of two builds of geoops._C, one worker process per build, interleaved round by round.

usage: ab_procs.py TREE_A TREE_B ROUNDS [CASES] [--threads N] [--wall] [--limit] [--calls C]
  TREE_X: a folder holding a `geoops` package with that build's _C (e.g. a copy of geoops/ with the .so swapped in,
    or a `git worktree` of an old commit built in place: its own Python with its own build);
  CASES: comma-separated names from CASES below, or any `OP_NxD` of bench.stereographic's ops (float32, k = -1, the
  bench's inputs; e.g. expmap0_1048576x5) (default: CASES).
  --threads N: torch / OpenMP threads of each worker (default 1); --wall: time wall-clock (perf_counter) instead of
  thread CPU time (needed for more than one thread); --calls C: the median of C calls per sample (default 1);
  --limit: each worker also times the case's limit op (bench.stereographic.limit_call) right after it in the same
  round, and the per-round ratio op / limit is printed per build (a ratio taken in one process, one round apart).
  The workers inherit the environment (e.g. THP_MEM_ALLOC_ENABLE=1 for the `--thp` rows); --env-b K=V[,K=V]: B's
  worker only also gets these (a knob's A/B within one build: TREE_B may be TREE_A).
Each worker (PYTHONPATH=TREE_X, 1 thread) builds every case's inputs once; the driver asks A and B in turn (order
alternating per round) to time `reps` calls of a case by thread CPU time (time.thread_time: the least sensitive to
other processes on a shared machine).  Prints per case the medians of A, B (per call) and of B / A per round with
its interquartile range.  Unlike an in-process switch, each build's process holds only that build.  A case whose
setup defines `out` (a function returning a tensor) also prints each worker's digest of it: "same" / "DIFFER" tells
whether the two builds compute the same bits (a check that the two workers did run different code where the sources
differ).  Cases: the bench's row ops; logmap0 (session 44 review43's ab_build check); the three-vector kernels fwd /
bwd (scripts/triple_bwd/ab.py's direct calls); the Poincaré batch norm's training layer fwd+bwd
(scripts/bn_transport/ab.py's shapes) and PoincareBatchNorm2d (the bench's (32, 16, 32, 32), and (8, 64, 32, 32)); weighted_midpoint over groups of
points far from the boundary and clustered near it (the root's second pass), fwd and fwd+bwd.
"""
import os
import statistics as st
import subprocess
import sys

ROW_CASE = """
from bench.stereographic import make_inputs, op_call, geoops_fn, limit_call
inp = make_inputs({op!r}, {n}, {d}, torch.float32, "cpu"); g = op_call(geoops_fn({op!r}), {op!r})
lim = limit_call({op!r})
f = lambda: g(inp); out = lambda: g(inp)
flim = lambda: lim(inp)"""

CASES = {  # name -> (setup code defining `f` (and for the row ops the limit op `flim`), a zero-argument call)
    **{f"{op}_{n}x{d}": (ROW_CASE.format(op=op, n=n, d=d), None)
       for op in ("mobius_add", "expmap", "logmap", "dist") for n, d in ((2 ** 20, 5), (2 ** 18, 64))},
    **{f"logmap0_{n}x{d}": (f"""
from bench.stereographic import make_inputs, op_call, geoops_fn
inp = make_inputs("logmap0", {n}, {d}, torch.float32, "cpu"); g = op_call(geoops_fn("logmap0"), "logmap0")
f = lambda: g(inp); out = lambda: g(inp)""", None) for n, d in ((2 ** 20, 5),)},
    **{f"triple_{op}_{dr}_{n}x{d}": (f"""
import geoops.stereographic, geoops._backend as B
gen = torch.Generator().manual_seed(0)
vs = [(torch.randn({n}, {d}, generator=gen, dtype=torch.float64) * 0.3 / {d} ** 0.5).float() for _ in range(3)]
k64 = torch.tensor([-1.0], dtype=torch.float64); C = B.compiled(); c = {code}
o = C.stereo_triple_fwd_cpu(c, vs[0], vs[1], vs[2], k64, 0); gr = torch.randn(o.shape, generator=gen)
fw = lambda: C.stereo_triple_fwd_cpu(c, vs[0], vs[1], vs[2], k64, 0)
bw = lambda: C.stereo_triple_bwd_cpu(c, gr, vs[0], vs[1], vs[2], k64, 0, 7)
f = {"fw" if dr == "fwd" else "bw"}; reps = {max(1, min(200, int(2e6 // (n * d))))}
out = lambda: torch.cat([t.reshape(-1) for t in (fw(), *bw())])""", None)
       for op, code, shapes in (("gyration", 0, ((2 ** 18, 64), (2 ** 20, 5))),
                                ("parallel_transport", 1, ((2 ** 18, 64), (2 ** 20, 5))),
                                ("dist2plane", 4, ((2 ** 18, 16),)))
       for dr in ("fwd", "bwd") for n, d in shapes},
    **{f"bn_train_{n}x{d}": (f"""
import geoops.poincare as gp
gen = torch.Generator().manual_seed(0)
x = (torch.randn({n}, {d}, generator=gen) * 0.3 / {d} ** 0.5).requires_grad_()
bias = (torch.randn({d}, generator=gen) * 0.1).requires_grad_(); w = torch.ones(1, requires_grad=True)
rm, rv = torch.zeros({d}), torch.ones(1)
def f():
    y = gp.batch_norm(x, bias, w, c=1.0, running_mean=rm, running_var=rv, training=True)
    y.sum().backward()
def out():
    x.grad = None
    y = gp.batch_norm(x, bias, w, c=1.0, running_mean=rm.clone(), running_var=rv.clone(), training=True)
    y.sum().backward()
    return torch.cat([y.detach().reshape(-1), x.grad.reshape(-1)])
reps = {max(1, int(2e6 / (n * d)))}""", None) for n, d in ((4096, 8), (1024, 64), (64, 16), (256, 8))},
    **{f"bn2d_train_{b}x{c}x{h}x{h}": (f"""
from bench.poincare import _img
from geoops.nn import poincare as P
torch.manual_seed(0)
x = _img({b}, {c}, {h}, {h}).requires_grad_(); gout = torch.randn({b}, {c}, {h}, {h})
ball = P.PoincareBall(1.0); bn = P.PoincareBatchNorm2d({c}, ball)
f = lambda: bn(x).backward(gout)
def out():
    x.grad = None
    y = bn(x); y.backward(gout)
    return torch.cat([y.detach().reshape(-1), x.grad.reshape(-1)])""", None) for b, c, h in ((32, 16, 32), (8, 64, 32))},
    **{f"midpoint_{dr}_{where}_{g}x{n}x{d}": (f"""
import geoops.stereographic as gs
gen = torch.Generator().manual_seed(0)
x = torch.randn({g}, {n}, {d}, generator=gen, dtype=torch.float64)
x = x[:, :1] + 0.05 * x if {where == "near"} else x  # near: each group clustered at a point 0.999 of the radius out
x = (x / x.norm(dim=-1, keepdim=True) * {0.999 if where == "near" else 0.3}).float().requires_grad_()
w = torch.rand({g}, {n}, generator=gen).requires_grad_(); k = torch.tensor(-1.0, requires_grad=True)
gy = torch.randn({g}, {d}, generator=gen)
def run():
    y = gs.weighted_midpoint(x, w, k=k, reducedim=[1])
    return torch.cat([y.reshape(-1), *(t.reshape(-1) for t in torch.autograd.grad(y, (x, w, k), gy))]) \
        if {dr == "fwdbwd"} else y.detach()
f = run; out = run; reps = {max(1, int(4e6 // (g * n * d)))}""", None)
       for dr in ("fwd", "fwdbwd") for where in ("far", "near") for g, n, d in ((64, 1024, 64), (4096, 64, 5))},
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


def setup_code(name):
    """CASES[name]'s setup, or a row op OP_NxD of bench.stereographic (defining f and its limit op flim)."""
    if name in CASES:
        return CASES[name][0]
    op, shape = name.rsplit("_", 1)
    n, d = (int(v) for v in shape.split("x"))
    return ROW_CASE.format(op=op, n=n, d=d)


WORKER = r"""
import hashlib, statistics, sys, time, torch
torch.set_num_threads(THREADS)
torch.manual_seed(0)
import geoops
clock = time.perf_counter if WALL else time.thread_time
fs, digests = {}, {}
for name in sys.argv[1].split(","):
    env = {"torch": torch}
    exec(SETUPS[name], env)
    if "out" in env:
        digests[name] = hashlib.sha1(env["out"]().detach().contiguous().numpy().tobytes()).hexdigest()[:12]
    env["f"](); env["f"]()
    fs[name] = (env["f"], env.get("reps", 1))
    if "flim" in env:
        env["flim"](); env["flim"]()
        fs["lim:" + name] = (env["flim"], env.get("reps", 1))
print("ready", geoops._backend.compiled().__file__, repr(digests), flush=True)


def one(f, reps):
    ts = []
    for _ in range(CALLS):
        t = clock()
        for _ in range(reps):
            f()
        ts.append((clock() - t) / reps)
    return statistics.median(ts)


for line in sys.stdin:
    name = line.strip()
    print(one(*fs[name]), flush=True)
"""


def main():
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    pos = [a for i, a in enumerate(sys.argv[1:]) if not a.startswith("--") and not (
        i > 0 and sys.argv[i] in ("--threads", "--calls", "--env-b"))]
    opt = lambda key, default: int(sys.argv[sys.argv.index(key) + 1]) if key in sys.argv else default
    threads, calls, wall, limit = opt("--threads", 1), opt("--calls", 1), "--wall" in flags, "--limit" in flags
    env_b = dict(kv.split("=", 1) for kv in sys.argv[sys.argv.index("--env-b") + 1].split(",")) \
        if "--env-b" in sys.argv else {}
    ta, tb, rounds = pos[0], pos[1], int(pos[2])
    names = pos[3].split(",") if len(pos) > 3 else list(CASES)
    code = ("SETUPS = %r\nTHREADS = %d\nCALLS = %d\nWALL = %r\n" % ({n: setup_code(n) for n in names}, threads,
                                                                   calls, wall) + WORKER)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = {}
    for key, tree in (("A", ta), ("B", tb)):
        env = dict(os.environ, PYTHONPATH=f"{tree}:{root}", OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), **(env_b if key == "B" else {}))
        p = subprocess.Popen([sys.executable, "-c", code, ",".join(names)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        procs[key] = p
    digests = {}
    for key, p in procs.items():
        line = p.stdout.readline().strip()
        print(key, line, flush=True)
        digests[key] = eval(line.split(" ", 2)[2]) if line.startswith("ready ") else {}
    print(f"load {os.getloadavg()[0]:.1f}, rounds {rounds}, threads {threads}, B's env {env_b}, "
          f"{'wall' if wall else 'thread CPU'} time, median of {calls} call(s) per sample", flush=True)

    def ask(key, name):
        procs[key].stdin.write(name + "\n"); procs[key].stdin.flush()
        return float(procs[key].stdout.readline())

    def quart(v):
        v = sorted(v)
        q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
        return f"{st.median(v):.3f} (IQR {q(.25):.3f}-{q(.75):.3f})"

    for name in names:
        T = {"A": [], "B": []}
        L = {"A": [], "B": []}
        lim = limit and "flim" in setup_code(name)
        for r in range(rounds):
            for key in (("A", "B") if r % 2 == 0 else ("B", "A")):
                T[key].append(ask(key, name))
                if lim:
                    L[key].append(ask(key, "lim:" + name))
        line = (f"{name:26s} A {st.median(T['A']) * 1e3:8.2f} ms  B {st.median(T['B']) * 1e3:8.2f} ms  "
                f"B/A {quart([b / a for a, b in zip(T['A'], T['B'])])}")
        if lim:
            line += (f"  xlimit A {quart([t / l for t, l in zip(T['A'], L['A'])])}"
                     f" B {quart([t / l for t, l in zip(T['B'], L['B'])])}  (limit A {st.median(L['A']) * 1e3:.2f}"
                     f" B {st.median(L['B']) * 1e3:.2f} ms)")
        if name in digests["A"] and name in digests["B"]:
            line += f"  bits {'same' if digests['A'][name] == digests['B'][name] else 'DIFFER'}"
        print(line, flush=True)
    for p in procs.values():
        p.stdin.close(); p.wait()


if __name__ == "__main__":
    main()
