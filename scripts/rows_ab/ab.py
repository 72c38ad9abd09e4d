"""Interleaved A/B of the fp32 2^18 x D row ops: the limit op, geoops (variants set by env knobs read per call) and
torch.compile(geoopt), in one process, rounds in the runner's order (bench._timing.round_order), medians (1 thread: thread CPU time, else wall time),
and the medians of the per-round ratios.

usage: python scripts/rows_ab/ab.py OPS THREADS ROUNDS [VARIANT ...]
  OPS: comma list (mobius_add, mobius_scalar_mul, ...); VARIANT: NAME=VAL[,NAME=VAL] env settings of one geoops
  variant ("-" for the default).  Set THP_MEM_ALLOC_ENABLE=1 before the run for huge pages.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from bench import stereographic as bs  # noqa: E402
from bench._timing import round_order  # noqa: E402


def timed_rounds(calls, inp, rounds, reps, clock, envs=None, warmup=0):
    """{name: [ms per round]}: each round calls every entry of `calls` (in the runner's round order) `reps` times
    with its env settings (envs[name]) in place, and keeps the median."""
    envs = envs or {}
    names = list(calls)
    t = {k: [] for k in names}
    for _ in range(warmup):
        for k in names:
            calls[k](inp)
    for r in range(rounds):
        for k in round_order(names, r):
            old = {e: os.environ.get(e) for e in envs.get(k, {})}
            os.environ.update(envs.get(k, {}))
            best = []
            for _ in range(reps):
                t0 = clock()
                calls[k](inp)
                best.append(clock() - t0)
            for e, v in old.items():
                if v is None:
                    os.environ.pop(e)
                else:
                    os.environ[e] = v
            t[k].append(statistics.median(best) * 1e3)
    return t


def main():
    ops = sys.argv[1].split(",")
    threads = int(sys.argv[2])
    rounds = int(sys.argv[3])
    variants = sys.argv[4:] or ["-"]
    n = int(os.environ.get("AB_N", 1 << 18))
    d = int(os.environ.get("AB_D", 64))
    reps = int(os.environ.get("AB_REPS", 3))
    torch.set_num_threads(threads)
    # 1 thread: CPU time of this thread (time sliced away under load does not count); more: wall time
    clock = time.thread_time if threads == 1 else time.perf_counter
    import torch._dynamo as dynamo
    dynamo.config.nested_graph_breaks = True
    for op in ops:
        inp = bs.make_inputs(op, n, d, torch.float32, "cpu")
        calls = {"limit": bs.limit_call(op)}
        ours = bs.op_call(bs.geoops_fn(op), op)
        envs = {}
        for v in variants:
            name = "ours" if v == "-" else "ours[" + v + "]"
            calls[name] = ours
            envs[name] = {} if v == "-" else dict(kv.split("=") for kv in v.split(","))
        if os.environ.get("AB_NOCOMPILE") != "1":
            calls["compiled"] = bs.op_call(torch.compile(bs.geoopt_fn(op), dynamic=False), op)
        t = timed_rounds(calls, inp, rounds, reps, clock, envs, warmup=2)
        names = list(calls)
        lim = statistics.median(t["limit"])
        print(f"{op} N={n} D={d} threads={threads} THP={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')} "
              f"rounds={rounds} load={os.getloadavg()[0]:.2f}")
        for k in names:
            m = statistics.median(t[k])
            extra = ""
            if k.startswith("ours") and "compiled" in t:
                rc = statistics.median(c / o for c, o in zip(t["compiled"], t[k]))
                extra = f"  compiled/ours {statistics.median(t['compiled']) / m:.3f} (per round {rc:.3f})"
            rl = statistics.median(o / li for o, li in zip(t[k], t["limit"]))
            print(f"  {k:34s} {m:8.3f} ms  x limit {m / lim:.3f} (per round {rl:.3f})  min {min(t[k]):.3f}{extra}")


if __name__ == "__main__":
    main()
