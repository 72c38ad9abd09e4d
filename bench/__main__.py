"""geoops benchmark: geoops vs geoopt vs torch.compile(geoopt), with the "limit" op.

    python -m bench                 # --quick: 5 ops, N=2^18 x D=64, fp32, fwd and fwd+bwd
    python -m bench --full          # all 11 ops, D in {16, 64, 256}, fp32/fp64/bf16
    python -m bench --ops dist,logmap --dtype fp64 --no-compile

For each (op, pass) row, geoops (the default backend for the device), the
limit op, geoopt and torch.compile(geoopt) run interleaved in the same loop
(see bench/_timing.py); each time is the median over several samples after
warm-up and, for torch.compile, after compilation.  Results go to
bench/results/<device-tag>-<date>.json (+ .png) and bench/results/latest-<device>.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from . import _cases as C
from ._timing import copy_bandwidth, interleaved, time_call

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CONTENDERS = ("geoops", "limit", "geoopt", "compiled")
VS_LIMIT_FLAG = 1.25  # flag rows where geoops takes more than this times the limit op
TIE = 0.05  # a speedup within 5% below 1 is reported as a tie, not as "slower"


# ---------------------------------------------------------------- environment
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "unknown"


def device_tag(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return "cuda-" + _slug(torch.cuda.get_device_name(device))
    return f"cpu-{_slug(cpu_name())}-{threads}t"


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def git_info() -> dict:
    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "geoopt", "geoops"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # missing, or broken on import
            out[mod] = None
    return out


# ---------------------------------------------------------------- one row
def _fmt_err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double(), b.detach().double()
    diff = (a - b).abs()
    finite = torch.isfinite(a) & torch.isfinite(b)
    scale = b[finite].abs().max().item() if bool(finite.any()) else 1.0
    return {
        "max_abs_diff": diff[finite].max().item() if bool(finite.any()) else float("nan"),
        "max_rel_diff": (diff[finite].max().item() / max(scale, 1e-30)) if bool(finite.any()) else float("nan"),
        "nonfinite_mismatch": int((torch.isfinite(a) != torch.isfinite(b)).sum().item()),
    }


try:
    import geoopt  # noqa: F401  (the eager peer; optional, e.g. on a bare GPU machine)

    _HAVE_GEOOPT = True
except ImportError:
    _HAVE_GEOOPT = False


def bench_row(op, pass_, n, d, dtype, device, args, compiled_cache, log) -> dict:
    spec = C.OPS[op]
    half = dtype in C.HALF
    base = C.make_inputs(op, n, d, dtype, device)
    inp = C.for_pass(base, op, pass_)
    g = C.grad_out(op, n, d, dtype, device) if pass_ == "fwd+bwd" else None
    calls = {
        "geoops": C.op_call(C.geoops_fn(op), op),
        "limit": C.limit_call(op),
    }
    skipped = {}
    if half:
        skipped["geoopt"] = skipped["compiled"] = "n/a: geoopt does not support half precision"
    elif not _HAVE_GEOOPT:
        skipped["geoopt"] = skipped["compiled"] = "n/a: geoopt is not installed"
    else:
        calls["geoopt"] = C.op_call(C.geoopt_fn(op), op)
        if args.no_compile:
            skipped["compiled"] = "skipped (--no-compile)"
        else:
            if op not in compiled_cache:
                compiled_cache[op] = torch.compile(C.geoopt_fn(op), dynamic=False)
            calls["compiled"] = C.op_call(compiled_cache[op], op)

    row = {
        "op": op, "pass": pass_, "shape": [n, d], "dtype": C.DTYPE_SHORT[dtype],
        "backend": _geoops_backend(device), "limit_op": C.LIMIT_TEXT[spec.limit],
        "bytes": C.byte_model(op, n, d, dtype, pass_), "errors": dict(skipped), "first_call_s": {},
    }

    # First call of each contender (JIT / torch.compile happen here), not timed as a sample.
    fns = {}
    for name, call in calls.items():
        fn = C.runner(call, inp, op, pass_, g)
        try:
            row["first_call_s"][name] = round(time_call(fn, device), 4)
            fns[name] = fn
        except Exception as e:  # a contender that cannot run this row is reported, not fatal
            row["errors"][name] = _fmt_err(e)
            log(f"  ! {op} {pass_} {name}: {row['errors'][name]}")
    if "geoops" not in fns:
        row["timings"] = {}
        return _finish_row(row)

    if pass_ == "fwd" and "geoopt" in fns:  # sanity check: are we timing the same function?
        with torch.no_grad():
            row["check_vs_geoopt"] = _compare(calls["geoops"](inp), calls["geoopt"](inp))

    timings = interleaved(fns, device, repeats=args.repeats, warmup=args.warmup)
    row["timings"] = {name: t.as_dict() for name, t in timings.items()}
    del fns, inp, base, g
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _finish_row(row)


def _dynamo_stats() -> dict:
    try:
        from torch._dynamo.utils import counters

        return {"unique_graphs": counters["stats"].get("unique_graphs"),
                "graph_breaks": sum(counters["graph_break"].values())}
    except Exception:
        return {}


def _geoops_backend(device) -> str:
    from geoops import _backend

    try:
        return _backend.resolve(device)
    except Exception as e:
        return f"error ({_fmt_err(e)})"


def _finish_row(row: dict) -> dict:
    t = {k: v["median_ms"] for k, v in row.get("timings", {}).items()}
    ms = t.get("geoops")
    row["geoops_ms"] = ms
    row["gbps"] = row["bytes"] / (ms * 1e-3) / 1e9 if ms else None
    row["limit_ms"] = t.get("limit")
    row["vs_limit"] = ms / t["limit"] if ms and t.get("limit") else None
    row["geoopt_ms"] = t.get("geoopt")
    row["speedup_geoopt"] = t["geoopt"] / ms if ms and t.get("geoopt") else None
    row["compiled_ms"] = t.get("compiled")
    row["speedup_compiled"] = t["compiled"] / ms if ms and t.get("compiled") else None
    flags = []
    if ms is None:
        flags.append("geoops failed")
    if row["vs_limit"] is not None and row["vs_limit"] > VS_LIMIT_FLAG:
        flags.append(f">{VS_LIMIT_FLAG}x limit")
    if row["speedup_geoopt"] is not None and row["speedup_geoopt"] < 1:
        flags.append("slower than geoopt" if row["speedup_geoopt"] < 1 - TIE else "~ geoopt (within 5%)")
    if row["speedup_compiled"] is not None and row["speedup_compiled"] < 1:
        flags.append("slower than compiled" if row["speedup_compiled"] < 1 - TIE else "~ compiled (within 5%)")
    chk = row.get("check_vs_geoopt")
    tol = {"fp64": 1e-9}.get(row["dtype"], 1e-3)
    if chk and (chk["nonfinite_mismatch"] or not chk["max_rel_diff"] <= tol):
        flags.append("differs from geoopt")
    gt = row.get("timings", {}).get("geoops")
    if gt and gt["samples_ms"] and (max(gt["samples_ms"]) - min(gt["samples_ms"])) / gt["median_ms"] > 0.5:
        flags.append("noisy")
    row["flags"] = flags
    return row


# ---------------------------------------------------------------- output
COLUMNS = [
    # header, key, width, format
    ("op", "op", 17, "s"),
    ("pass", "pass", 7, "s"),
    ("shape", "shape_s", 10, "s"),
    ("dtype", "dtype", 5, "s"),
    ("backend", "backend", 9, "s"),
    ("geoops ms", "geoops_ms", 9, "ms"),
    ("GB/s", "gbps", 6, ".1f"),
    ("limit ms", "limit_ms", 9, "ms"),
    ("x limit", "vs_limit", 7, "x"),
    ("geoopt ms", "geoopt_ms", 9, "ms"),
    ("vs geoopt", "speedup_geoopt", 9, "x"),
    ("compiled ms", "compiled_ms", 11, "ms"),
    ("vs compiled", "speedup_compiled", 11, "x"),
]


def _cell(row, key, fmt) -> str:
    if key == "shape_s":
        return "x".join(_pow2(v) for v in row["shape"])
    v = row.get(key)
    if v is None:
        return "n/a"
    if fmt == "ms":
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    if fmt == "x":
        return f"{v:.2f}x"
    if fmt == "s":
        return str(v)
    return format(v, fmt)


def _pow2(v: int) -> str:
    return f"2^{v.bit_length() - 1}" if v > 256 and v & (v - 1) == 0 else str(v)


def text_header() -> str:
    return "  ".join(h.rjust(w) if f != "s" else h.ljust(w) for h, _, w, f in COLUMNS) + "  flags"


def text_row(row) -> str:
    cells = [_cell(row, k, f) for _, k, _, f in COLUMNS]
    line = "  ".join(c.rjust(w) if f != "s" else c.ljust(w) for c, (_, _, w, f) in zip(cells, COLUMNS))
    return line + ("  " + "; ".join(row["flags"]) if row["flags"] else "")


def markdown(meta: dict, rows: list) -> str:
    lines = [
        f"<!-- generated by `{' '.join(['python -m bench'] + meta['argv'])}` on {meta['date']} -->",
        f"**{meta['device_name']}** ({meta['device']}, {meta['threads']} threads), "
        f"copy bandwidth {meta['copy_bandwidth']['gbps']:.1f} GB/s; torch {meta['versions']['torch']}, "
        f"geoopt {meta['versions']['geoopt']}, geoops {meta['versions']['geoops']} "
        f"@ {meta['git']['commit'] or '?'}{' (dirty)' if meta['git']['dirty'] else ''}; k = -1; "
        f"median of {meta['repeats']} interleaved samples"
        + ("; THP_MEM_ALLOC_ENABLE=1 (large tensors on transparent huge pages, kernel mode "
           f"{meta.get('thp_kernel_mode', '?')})." if meta.get("thp_alloc") else "."),
        "",
        "| " + " | ".join(h for h, *_ in COLUMNS) + " |",
        "|" + "|".join(":--" if f == "s" else "--:" for *_, f in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for _, k, _, f in COLUMNS) + " |")
    lines += [
        "",
        f"GB/s: {C.BYTE_MODEL}. limit: the simplest torch op with the same inputs and output "
        "(x + y; x.neg(); linalg.vecdot; linalg.vector_norm), same pass through autograd; "
        "x limit = geoops time / limit time. vs geoopt / vs compiled: time of geoopt / "
        "torch.compile(geoopt) divided by geoops time (> 1: geoops is faster). "
        "fwd+bwd: x[, y] require grad, k (and r) do not; out.backward(g) with a fixed random g.",
    ]
    comp = meta.get("compile")
    if comp:
        lines += ["", f"compiled: `{comp['call']}`, nested_graph_breaks={comp['nested_graph_breaks']} "
                      "(geoopt branches on k; dynamo compiles the pieces around the branches); "
                      "compilation not timed."]
    flagged = [r for r in rows if r["flags"]]
    if flagged:
        lines += ["", "Flags: " + "; ".join(f"{r['op']} {r['pass']}: {', '.join(r['flags'])}" for r in flagged) + "."]
    lines.append("")
    return "\n".join(lines)


def plot(meta: dict, rows: list, path: Path) -> bool:
    """Bar chart of the speedups vs geoopt and vs torch.compile(geoopt): one panel per (shape, dtype)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    rows = [r for r in rows if r.get("speedup_geoopt") or r.get("speedup_compiled")]
    if not rows:
        return False
    configs = list(dict.fromkeys((tuple(r["shape"]), r["dtype"]) for r in rows))
    per = max(sum(1 for r in rows if (tuple(r["shape"]), r["dtype"]) == c) for c in configs)
    fig, axes = plt.subplots(len(configs), 1, figsize=(max(7.0, 0.55 * per + 2), 4.2 * len(configs)), squeeze=False)
    w = 0.4
    for ax, (shape, dtype) in zip(axes[:, 0], configs):
        sub = [r for r in rows if (tuple(r["shape"]), r["dtype"]) == (shape, dtype)]
        xs = list(range(len(sub)))
        for off, key, name in ((-w / 2, "speedup_geoopt", "vs geoopt"),
                               (w / 2, "speedup_compiled", "vs torch.compile(geoopt)")):
            vals = [r.get(key) or 0.0 for r in sub]
            bars = ax.bar([x + off for x in xs], vals, w, label=name)
            for b, v in zip(bars, vals):
                if v:
                    ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup of geoops (x)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r['op']} {r['pass']}" for r in sub], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{meta['device_name']} ({meta['threads']} threads), "
                     f"{'x'.join(_pow2(v) for v in shape)} {dtype}, k=-1", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help=f"(default) ops {','.join(C.QUICK_OPS)}; N=2^18 x D=64; fp32")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="all 11 ops; D in 16,64,256; fp32, fp64, bf16 (geoopt n/a for bf16)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="comma list of fp32, fp64, bf16, fp16 (overrides the mode's)")
    p.add_argument("--ops", default=None, help="comma list of ops, or 'all' (overrides the mode's)")
    p.add_argument("--dims", default=None, help="comma list of D (overrides the mode's)")
    p.add_argument("--rows", type=int, default=2 ** 18, help="N, the number of vectors (default 2^18)")
    p.add_argument("--passes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per contender (median taken)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender after the first call")
    p.add_argument("--backend", default=None, help="force a geoops backend (geoops.set_backend); default: auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default bench/results)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(geoopt)")
    p.add_argument("--compile-nested", choices=("on", "off"), default="on",
                   help="torch._dynamo.config.nested_graph_breaks for torch.compile(geoopt) (default on: "
                        "off makes dynamo fall back to eager geoopt at its branches on k)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--thp", action="store_true",
                   help="CPU: rerun under THP_MEM_ALLOC_ENABLE=1 (torch's CPU allocator puts large tensors on "
                        "transparent huge pages) so that page faults of fresh outputs, paid alike by every "
                        "contender, weigh less; results go to latest-cpu-thp.md")
    a = p.parse_args(argv)
    a.mode = a.mode or "quick"
    return a


def _thp_state() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "unknown"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    if args.thp and not thp:
        # torch reads the variable once, at its first large allocation: set it for a fresh process.
        env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
        os.execve(sys.executable, [sys.executable, "-m", "bench", *argv], env)
    t_start = time.perf_counter()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    full = args.mode == "full"
    ops = C.parse_ops(args.ops, C.ALL_OPS if full else C.QUICK_OPS)
    dtypes = C.parse_dtypes(args.dtype, ("fp32", "fp64", "bf16") if full else ("fp32",))
    dims = tuple(int(v) for v in args.dims.split(",")) if args.dims else ((16, 64, 256) if full else (64,))
    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    if any(p not in C.PASSES for p in passes):
        raise SystemExit(f"--passes: choose from {', '.join(C.PASSES)}")
    if args.repeats is None:
        args.repeats = (25 if full else 15) if device.type == "cuda" else (7 if full else 5)
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 2

    import geoops

    if args.backend:
        geoops.set_backend(args.backend)
    if not args.no_compile:
        import torch._dynamo as dynamo

        # One torch.compile wrapper per op sees every (shape, dtype, grad) variant.
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(256, getattr(dynamo.config, knob)))
        # geoopt branches on k (`if torch.all(k_zero): ...` inside its TorchScript helpers). Dynamo
        # cannot trace that, and without nested graph breaks it gives up on the whole op and runs
        # geoopt's TorchScript unchanged, so "compiled" would equal eager geoopt.  With them it
        # compiles the straight-line pieces around each branch: torch.compile's best effort.
        if args.compile_nested == "on" and not hasattr(dynamo.config, "nested_graph_breaks"):
            print("note: this torch has no torch._dynamo.config.nested_graph_breaks; "
                  "torch.compile(geoopt) will fall back to eager geoopt around k-branches", flush=True)
        if hasattr(dynamo.config, "nested_graph_breaks"):
            dynamo.config.nested_graph_breaks = args.compile_nested == "on"

    threads = torch.get_num_threads()
    meta = {
        "argv": argv, "mode": args.mode, "device": device.type, "device_name": device_name(device),
        "cpu_name": cpu_name(), "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": threads, "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "geoops_backend_env": os.environ.get("GEOOPS_BACKEND"), "geoops_backend_info": geoops.backend_info(),
        "versions": versions(), "git": git_info(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "repeats": args.repeats, "warmup": args.warmup,
        "thp_alloc": thp, "thp_kernel_mode": _thp_state(),
        "k": -1.0, "byte_model": C.BYTE_MODEL, "timing": (
            "per row: geoops, limit, geoopt, torch.compile(geoopt) run interleaved (order rotated each round); "
            "first call (compile) excluded, then warm-up, then median of the samples; "
            + ("CUDA events, L2 flushed before each sample" if device.type == "cuda" else "time.perf_counter")),
    }
    meta["loadavg_start"] = _loadavg()
    bw = copy_bandwidth(device)
    meta["copy_bandwidth"] = bw

    def log(msg):
        print(msg, flush=True)

    v = meta["versions"]
    log(f"geoops benchmark ({args.mode}): {meta['device_name']} [{device.type}], {threads} threads; "
        f"torch {v['torch']}, triton {v['triton']}, geoopt {v['geoopt']}, geoops {v['geoops']} "
        f"@ {meta['git']['commit']}{' (dirty)' if meta['git']['dirty'] else ''}")
    busy = device.type == "cpu" and meta["loadavg_start"] and meta["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1)
    if busy:
        log(f"WARNING: load average {meta['loadavg_start'][0]:.2f} before the run: other processes share "
            f"the CPU, timings will be noisy and slow")
    log(f"copy bandwidth (y.copy_(x), {bw['mib']} MiB fp32): {bw['gbps']:.1f} GB/s ({bw['median_ms']:.3f} ms)")
    log(f"k = -1 (tensor, no grad); fwd+bwd: x[, y] require grad, out.backward(g), fixed random g; "
        f"median of {args.repeats} interleaved samples after {args.warmup} warm-up calls")
    log(f"{C.BYTE_MODEL}")
    if not args.no_compile:
        log(f"compiled = torch.compile(geoopt_fn, dynamic=False), one per op, nested_graph_breaks="
            f"{args.compile_nested}; its compilation (first call) is not timed")
    log("limit: simplest torch op with the same inputs/outputs (x + y; x.neg(); linalg.vecdot(x, y); "
        "linalg.vector_norm(x, dim=-1)), same pass; x limit = geoops / limit; vs X = X time / geoops time")
    log("")
    log(text_header())

    rows = []
    compiled_cache: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. inductor chatter; geoops' RuntimeWarnings still show
        for dtype in dtypes:
            for d in dims:
                for op in ops:
                    for pass_ in passes:
                        row = bench_row(op, pass_, args.rows, d, dtype, device, args, compiled_cache, log)
                        rows.append(row)
                        log(text_row(row))

    wall = time.perf_counter() - t_start
    meta["wall_s"] = round(wall, 1)
    meta["compile"] = None if args.no_compile else {
        "call": "torch.compile(geoopt_fn, dynamic=False)", "nested_graph_breaks": args.compile_nested == "on",
        **_dynamo_stats()}
    meta["loadavg_end"] = _loadavg()
    flagged = [r for r in rows if r["flags"]]
    log("")
    if flagged:
        log("flags:")
        for r in flagged:
            log(f"  {r['op']} {r['pass']} {'x'.join(map(str, r['shape']))} {r['dtype']}: {'; '.join(r['flags'])}")
    compile_s = {f"{r['op']} {r['pass']}": r["first_call_s"].get("compiled") for r in rows
                 if "compiled" in r["first_call_s"]}
    if device.type == "cpu" and meta["loadavg_end"]:
        log(f"load average at the end {meta['loadavg_end'][0]:.2f} (1 min), {meta['loadavg_end'][1]:.2f} (5 min)")
    if compile_s:
        log(f"torch.compile first calls (compilation) took {sum(compile_s.values()):.1f} s in all")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = out / f"{device_tag(device, threads)}{'-thp' if thp else ''}-{stamp}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md_path = out / f"latest-{device.type}{'-thp' if thp else ''}.md"
    md_path.write_text(markdown(meta, rows))
    written = [json_path, md_path]
    if not args.no_plot:
        png = stem.with_suffix(".png")
        if plot(meta, rows, png):
            written.append(png)
        else:
            log("(plot skipped: matplotlib missing or nothing to plot)")
    log(f"wrote {', '.join(str(p) for p in written)}")
    log(f"wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
