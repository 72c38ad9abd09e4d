"""The family-neutral benchmark runner: ``python -m geoops.bench`` (or ``python -m bench`` in a checkout).

Each family lists its rows in ``bench/<family>.py`` (installed as ``geoops.bench.<family>``)::

    TITLE = "..."                      # the table's heading
    PEER = "geoopt"                    # the eager peer's name (column "vs <PEER>")
    PEER_MODULES = ("geoopt",)         # the peers' import names: their versions go into the JSON
    OP_NAMES = ("dist", ...)           # every op --ops may name for this family
    DTYPES = (torch.float32, ...)      # optional: the dtypes its rows run (default all four)
    def add_arguments(parser): ...     # optional: the family's own options, named --<family>-... or
                                       # documented as the family's
    def prepare(args, log) -> dict:    # optional: once per run; returns notes printed under the table
    def rows(args, device):            # yields Row objects (inputs are built lazily by Row.setup)

``--ops`` and ``--dtype`` are split among the families: each gets the ones it has (``args.ops``, ``args.dtypes``
of its own copy of the options); a family with none is skipped, and a name no selected family has is an error
before anything is timed.  Every family's rows are listed before the first is timed (an option error stops the
run up front); torch's compile settings and thread count are restored after each family; a contender that raises
after its first call is reported in its row and the others are timed; a family that fails is reported in its table,
the others still run, the results are written (not published) and the exit status is 1 (Ctrl-C or SIGTERM, as
from `timeout`: the rows measured so far are written, exit status 130 or 143).

A row's contenders, all doing the same work in the same pass, run interleaved in one loop
(``bench/_timing.py``): "geoops" (the op under test, default backend for the device), "limit" (the
simplest torch op with the same inputs and outputs, or a GEMM with the same FLOPs: the machine's
limit for this work), "peer" (the eager code users run today) and "compiled" (torch.compile of the
peer).  Each time is the median of several samples after warm-up; the first call (JIT, compilation)
is timed separately and never counted.  Results: one table per family on stdout, and JSON + markdown
+ PNG in the output folder (default ``./geoops-bench``, git-ignored; ``--publish`` refreshes the
committed tables in the checkout's ``bench/results/``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ._timing import ContenderError, copy_bandwidth, interleaved, time_call

HERE = Path(__file__).resolve().parent
SOURCE_RESULTS = HERE / "results"  # committed tables (only in a source checkout)
DEFAULT_OUT = "geoops-bench"  # relative to the working directory; git-ignored in the checkout
PASSES = ("fwd", "fwd+bwd")
CONTENDERS = ("geoops", "limit", "peer", "compiled")
HALF = (torch.float16, torch.bfloat16)
VS_LIMIT_FLAG = 1.25  # flag rows where geoops takes more than this times the limit op
TIE = 0.05  # a speedup within 5% below 1 is reported as a tie, not as "slower"

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}  # fmt: skip
DTYPE_SHORT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Row:
    """One benchmark row: one op, one pass, one shape, one dtype.

    ``setup()`` builds the inputs and returns ``(fns, check, skipped)``: ``fns`` maps contender names
    (of CONTENDERS) to zero-argument callables doing one pass; ``check`` is None or a callable returning
    (geoops output, peer output) for a sanity comparison; ``skipped`` maps contenders that cannot run to
    the reason.  ``work`` is the byte count (unit "GB/s") or FLOP count (unit "GFLOP/s") of one call.
    """

    family: str
    op: str
    pass_: str
    shape: list
    dtype: str
    setup: Callable[[], Tuple[Dict[str, Callable[[], object]], Optional[Callable], Dict[str, str]]]
    work: float = 0.0
    unit: str = "GB/s"
    limit: str = ""
    peer: str = "eager"
    check_tol: float = 1e-3
    label: str = ""  # optional variant label shown next to the op (e.g. a route)
    extra: dict = field(default_factory=dict)  # facts measured by setup (e.g. peak memory), saved in JSON


def pass_runner(fn: Callable, inputs: Sequence[torch.Tensor], pass_: str, gout: Optional[torch.Tensor] = None,
                params: Sequence[torch.Tensor] = ()) -> Callable[[], object]:
    """A zero-argument call of ``fn(*inputs)`` for one pass: "fwd" under ``no_grad``; "fwd+bwd" clears the
    ``.grad`` of ``inputs`` and ``params`` first and back-propagates ``gout`` (the families' rows share it)."""
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    leaves = list(inputs) + list(params)

    def run_fb():
        for t in leaves:
            t.grad = None
        out = fn(*inputs)
        out.backward(gout)
        return out
    return run_fb


def compiled_peer(cache: dict, key, fn: Callable, no_compile: bool, skipped: dict) -> Optional[Callable]:
    """torch.compile(fn, dynamic=False), compiled once per key of a family's cache for the whole run; None under
    --no-compile (skipped["compiled"] then says so)."""
    if no_compile:
        skipped["compiled"] = "skipped (--no-compile)"
        return None
    if key not in cache:
        cache[key] = torch.compile(fn, dynamic=False)
    return cache[key]


def parse_list(text: Optional[str], default: Sequence[str], allowed: Sequence[str], what: str) -> Tuple[str, ...]:
    """A comma list of names from `allowed` ('all' for every one), or `default`."""
    if not text:
        return tuple(default)
    if text.strip().lower() == "all":
        return tuple(allowed)
    items = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in items if o not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}(s) {', '.join(bad)}; choose from {', '.join(allowed)} or 'all'")
    return items


def parse_dtypes(text: Optional[str]) -> Optional[Tuple[torch.dtype, ...]]:
    if not text:
        return None
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in _DTYPES]
    if bad:
        raise SystemExit(f"unknown dtype(s) {', '.join(bad)}; choose from fp32, fp64, bf16, fp16")
    return tuple(dict.fromkeys(_DTYPES[t] for t in names))


ALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def family_ops(mod) -> Tuple[str, ...]:
    """The ops --ops may name for a family (its bench module's OP_NAMES)."""
    return tuple(getattr(mod, "OP_NAMES", ()))


def family_dtypes(mod) -> Tuple[torch.dtype, ...]:
    """The dtypes a family's rows run (its bench module's DTYPES; default all four)."""
    return tuple(getattr(mod, "DTYPES", ALL_DTYPES))


def _dtype_names(dtypes) -> str:
    return ", ".join(DTYPE_SHORT[d] for d in dtypes)


def split_options(args, families: Sequence[str], mods: dict) -> Dict[str, Tuple[Optional[argparse.Namespace], str]]:
    """Per family, ``(its copy of args, note)``: ``args.ops`` / ``args.dtypes`` narrowed to the ops and dtypes the
    family has (the note says which asked-for dtypes it does not run); ``(None, why)`` for a family with none of
    them (skipped).  An op or dtype that no selected family has is a SystemExit naming it and every family's list,
    raised before anything runs."""
    items = None
    if args.ops and args.ops.strip().lower() != "all":
        items = [o.strip() for o in args.ops.split(",") if o.strip()]
        known = {o for f in families for o in family_ops(mods[f])}
        bad = [o for o in items if o not in known]
        if bad:
            lists = "; ".join(f"{f}: {', '.join(family_ops(mods[f]))}" for f in families)
            elsewhere = {o: [f for f, m in mods.items() if f not in families and o in family_ops(m)] for o in bad}
            hint = "".join(f" ({o} is an op of {', '.join(fs)}, not in --families)"
                           for o, fs in elsewhere.items() if fs)
            raise SystemExit(f"--ops: unknown op(s) {', '.join(bad)}{hint}; the families' ops: {lists}")
    if args.dtypes:
        if not any(d in family_dtypes(mods[f]) for f in families for d in args.dtypes):
            lists = "; ".join(f"{f}: {_dtype_names(family_dtypes(mods[f]))}" for f in families)
            raise SystemExit(f"--dtype {_dtype_names(args.dtypes)}: no selected family runs it; the families' "
                             f"dtypes: {lists}")
    out = {}
    for f in families:
        fa = copy.copy(args)
        note = ""
        if items is not None:
            mine = [o for o in items if o in family_ops(mods[f])]
            if not mine:
                out[f] = (None, f"none of --ops {args.ops} is an op of {f} ({', '.join(family_ops(mods[f]))})")
                continue
            fa.ops = ",".join(mine)
        if args.dtypes:
            have = family_dtypes(mods[f])
            mine_d = tuple(d for d in args.dtypes if d in have)
            if not mine_d:
                out[f] = (None, f"{f} runs none of --dtype {_dtype_names(args.dtypes)} (its rows: "
                                f"{_dtype_names(have)})")
                continue
            fa.dtypes = mine_d
            dropped = [d for d in args.dtypes if d not in have]
            if dropped:
                note = f"not run: {_dtype_names(dropped)} (this family's rows run {_dtype_names(have)})"
        out[f] = (fa, note)
    return out


def _compile_configs() -> list:
    """torch's compile settings modules (dynamo, inductor) whose values a family may change."""
    mods = []
    for name in ("torch._dynamo.config", "torch._inductor.config"):
        try:
            mods.append(importlib.import_module(name))
        except Exception:  # an old or stripped torch
            pass
    return mods


@contextlib.contextmanager
def family_scope():
    """Restores, on exit, what a family may set for its own rows: torch's compile settings (dynamo's
    nested_graph_breaks, ...) and the thread count; only the settings that changed are written back."""
    cfgs = [(c, c.get_config_copy()) for c in _compile_configs() if hasattr(c, "get_config_copy")]
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        for cfg, before in cfgs:
            now = cfg.get_config_copy()
            for key, old in before.items():
                try:
                    changed = now.get(key) is not old and now.get(key) != old
                except Exception:  # values without a plain ==
                    changed = True
                if changed:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        setattr(cfg, key, old)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


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
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


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
            r = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}


def versions(family_mods: Optional[dict] = None) -> dict:
    """Versions of python, torch, triton, each family's peers (its bench module's ``PEER_MODULES``) and geoops;
    None for a module that is missing or fails to import."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    peers = [m for mod in (family_mods or {}).values() for m in getattr(mod, "PEER_MODULES", ())]
    for mod in dict.fromkeys(["triton", *peers, "geoops"]):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # missing, or broken on import
            out[mod] = None
    return out


def _fmt_err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _compare(a, b) -> dict:
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    a, b = a.detach().double(), b.detach().double()
    diff = (a - b).abs()
    finite = torch.isfinite(a) & torch.isfinite(b)
    any_f = bool(finite.any())
    scale = b[finite].abs().max().item() if any_f else 1.0
    return {
        "max_abs_diff": diff[finite].max().item() if any_f else float("nan"),
        "max_rel_diff": (diff[finite].max().item() / max(scale, 1e-30)) if any_f else float("nan"),
        "nonfinite_mismatch": int((torch.isfinite(a) != torch.isfinite(b)).sum().item()),
    }


def _geoops_backend(device, family) -> str:
    from geoops import _backend

    try:
        return _backend.resolve(device, family)
    except Exception as e:
        return f"error ({_fmt_err(e)})"


# ---------------------------------------------------------------- one row
def bench_row(row: Row, device, args, log) -> dict:
    out = {"family": row.family, "op": row.op, "label": row.label, "pass": row.pass_, "shape": list(row.shape),
           "dtype": row.dtype, "backend": _geoops_backend(device, row.family), "limit_op": row.limit,
           "peer": row.peer, "work": row.work, "unit": row.unit, "errors": {}, "first_call_s": {}}
    try:
        fns, check, skipped = row.setup()
    except Exception as e:
        out["errors"]["setup"] = _fmt_err(e)
        log(f"  ! {row.op} {row.pass_}: setup failed: {out['errors']['setup']}")
        out["timings"] = {}
        return _finish_row(out, row)
    out["errors"].update(skipped)
    ready = {}
    for name, fn in fns.items():  # first call of each contender (JIT / torch.compile), not a sample
        if name == "compiled":
            log(f"  compiling the torch.compile baseline for {row.op} {row.pass_} (first call, up to ~1 min)...")
        try:
            out["first_call_s"][name] = round(time_call(fn, device), 4)
            ready[name] = fn
        except Exception as e:  # a contender that cannot run this row is reported, not fatal
            out["errors"][name] = _fmt_err(e)
            log(f"  ! {row.op} {row.pass_} {name}: {out['errors'][name]}")
    if "geoops" not in ready:
        out["timings"] = {}
        return _finish_row(out, row)
    if check is not None and "peer" in ready:
        try:
            out["check_vs_peer"] = _compare(*check())
        except Exception as e:
            out["errors"]["check"] = _fmt_err(e)
    timings = _timed(ready, device, args, out["errors"], log, f"{row.op} {row.pass_}")
    out["timings"] = {name: t.as_dict() for name, t in timings.items()}
    out["extra"] = dict(row.extra)
    del fns, ready, check
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _finish_row(out, row)


def _timed(ready: dict, device, args, errors: dict, log, what: str) -> dict:
    """interleaved(ready): a contender that raises in a later call (warm-up or sample: out of memory, a
    recompilation) is reported in `errors` and the others are timed again without it."""
    ready = dict(ready)
    while "geoops" in ready:
        try:
            return interleaved(ready, device, repeats=args.repeats, warmup=args.warmup,
                               clock=getattr(args, "clock", "wall"))
        except ContenderError as e:
            errors[e.name] = _fmt_err(e.error)
            log(f"  ! {what} {e.name}: {errors[e.name]} (after its first call; timing the others without it)")
            del ready[e.name]
    return {}


def _finish_row(out: dict, row: Row) -> dict:
    t = {k: v["median_ms"] for k, v in out.get("timings", {}).items()}
    ms = t.get("geoops")
    scale = 1e9
    out["geoops_ms"] = ms
    out["rate"] = row.work / (ms * 1e-3) / scale if ms and row.work else None
    out["limit_ms"] = t.get("limit")
    out["vs_limit"] = ms / t["limit"] if ms and t.get("limit") else None
    out["peer_ms"] = t.get("peer")
    out["speedup_peer"] = t["peer"] / ms if ms and t.get("peer") else None
    out["compiled_ms"] = t.get("compiled")
    out["speedup_compiled"] = t["compiled"] / ms if ms and t.get("compiled") else None
    flags = []
    if ms is None:
        flags.append("geoops failed")
    if out["vs_limit"] is not None and out["vs_limit"] > VS_LIMIT_FLAG:
        flags.append(f">{VS_LIMIT_FLAG}x limit")
    if out["speedup_peer"] is not None and out["speedup_peer"] < 1:
        flags.append(f"slower than {row.peer}" if out["speedup_peer"] < 1 - TIE else f"~ {row.peer} (within 5%)")
    if out["speedup_compiled"] is not None and out["speedup_compiled"] < 1:
        flags.append("slower than compiled" if out["speedup_compiled"] < 1 - TIE else "~ compiled (within 5%)")
    chk = out.get("check_vs_peer")
    if chk and (chk["nonfinite_mismatch"] or not chk["max_rel_diff"] <= row.check_tol):
        flags.append(f"differs from {row.peer}")
    gt = out.get("timings", {}).get("geoops")
    if gt and gt["samples_ms"] and (max(gt["samples_ms"]) - min(gt["samples_ms"])) / gt["median_ms"] > 0.5:
        flags.append("noisy")
    out["flags"] = flags
    return out


# ---------------------------------------------------------------- output
def _columns(unit: str, peer: str):
    return [
        # header, key, width, format
        ("op", "op_s", 20, "s"),
        ("pass", "pass", 7, "s"),
        ("shape", "shape_s", 14, "s"),
        ("dtype", "dtype", 5, "s"),
        ("backend", "backend", 9, "s"),
        ("geoops ms", "geoops_ms", 9, "ms"),
        (unit, "rate", max(6, len(unit)), ".1f") if unit != "mixed" else ("rate", "rate", 13, "rate"),
        ("limit ms", "limit_ms", 9, "ms"),
        ("x limit", "vs_limit", 7, "x"),
        (f"{peer} ms", "peer_ms", max(9, len(peer) + 3), "ms"),
        (f"vs {peer}", "speedup_peer", max(9, len(peer) + 3), "x"),
        ("compiled ms", "compiled_ms", 11, "ms"),
        ("vs compiled", "speedup_compiled", 11, "x"),
    ]


def _pow2(v) -> str:
    return f"2^{v.bit_length() - 1}" if isinstance(v, int) and v > 256 and v & (v - 1) == 0 else str(v)


def _cell(row, key, fmt) -> str:
    if key == "shape_s":
        return "x".join(_pow2(v) for v in row["shape"])
    if key == "op_s":
        return row["op"] + (f" [{row['label']}]" if row.get("label") else "")
    v = row.get(key)
    if v is None:
        return "n/a"
    if fmt == "ms":
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    if fmt == "x":
        return f"{v:.2f}x"
    if fmt == "rate":  # a table whose rows have different units (GB/s and GFLOP/s)
        return f"{v:.1f} {row.get('unit', '')}"
    if fmt == "s":
        return str(v)
    return format(v, fmt)


def text_header(cols) -> str:
    return "  ".join(h.rjust(w) if f != "s" else h.ljust(w) for h, _, w, f in cols) + "  flags"


def text_row(row, cols) -> str:
    cells = [_cell(row, k, f) for _, k, _, f in cols]
    line = "  ".join(c.rjust(w) if f != "s" else c.ljust(w) for c, (_, _, w, f) in zip(cells, cols))
    return line + ("  " + "; ".join(row["flags"]) if row["flags"] else "")


def markdown(meta: dict, tables: List[dict]) -> str:
    lines = [
        f"<!-- generated by `{' '.join(['python -m geoops.bench'] + meta['argv'])}` on {meta['date']} -->",
        f"**{meta['device_name']}** ({meta['device']}, {meta['threads']} threads), "
        f"copy bandwidth {meta['copy_bandwidth']['gbps']:.1f} GB/s; torch {meta['versions']['torch']}, "
        f"geoops {meta['versions']['geoops']} @ {meta['git']['commit'] or '?'}"
        f"{' (dirty)' if meta['git']['dirty'] else ''}; median of {meta['repeats']} interleaved samples"
        + ("; THP_MEM_ALLOC_ENABLE=1 (large tensors on transparent huge pages, kernel mode "
           f"{meta.get('thp_kernel_mode', '?')})." if meta.get("thp_alloc") else "."),
        "",
    ]
    for tab in tables:
        rows = tab["rows"]
        if not rows:
            if tab.get("error"):
                lines += [f"### {tab['family']}: {tab['title']}", "", f"Did not finish (no row measured): "
                                                                       f"{tab['error']}.", ""]
            continue
        cols = _columns(tab["unit"], tab["peer"])
        lines += [f"### {tab['family']}: {tab['title']}", "",
                  "| " + " | ".join(h for h, *_ in cols) + " |",
                  "|" + "|".join(":--" if f == "s" else "--:" for *_, f in cols) + "|"]
        lines += ["| " + " | ".join(_cell(r, k, f) for _, k, _, f in cols) + " |" for r in rows]
        limits = sorted({r["limit_op"] for r in rows if r["limit_op"]})
        lines += ["", f"limit: {'; '.join(limits)}. x limit = geoops time / limit time; vs {tab['peer']} / "
                      f"vs compiled: time of {tab['peer']} / torch.compile({tab['peer']}) divided by geoops time "
                      f"(> 1: geoops is faster). "
                      f"{tab['unit'] if tab['unit'] != 'mixed' else 'rate (GB/s or GFLOP/s)'} = work model / geoops time."]
        own = [r for r in rows if r.get("peer") and r["peer"] != tab["peer"]]
        if own:  # rows whose "vs" columns compare with another peer than the table's
            lines.append(f"Rows whose vs {tab['peer']} column is against another peer: " + "; ".join(
                f"{_cell(r, 'op_s', 's')} {r['pass']}: {r['peer']}" for r in own) + ".")
        for key, note in tab.get("notes", {}).items():
            lines.append(f"{key}: {note}")
        extras = [r for r in rows if r.get("extra")]
        if extras:
            lines += ["", "Measured extras: " + "; ".join(
                f"{r['op']} {r['pass']} {'x'.join(map(str, r['shape']))}: "
                + ", ".join(f"{k}={v}" for k, v in r["extra"].items()) for r in extras) + "."]
        if tab.get("error"):
            lines += ["", f"Did not finish ({len(rows)} rows measured): {tab['error']}."]
        flagged = [r for r in rows if r["flags"]]
        if flagged:
            lines += ["", "Flags: " + "; ".join(f"{r['op']} {r['pass']} {'x'.join(map(str, r['shape']))}: "
                                                 f"{', '.join(r['flags'])}" for r in flagged) + "."]
        lines.append("")
    return "\n".join(lines)


def plot(meta: dict, tables: List[dict], path: Path) -> bool:
    """Bar chart of the speedups vs the peer and vs its torch.compile: one panel per family."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    tables = [t for t in tables if any(r.get("speedup_peer") or r.get("speedup_compiled") for r in t["rows"])]
    if not tables:
        return False
    per = max(len(t["rows"]) for t in tables)
    fig, axes = plt.subplots(len(tables), 1, figsize=(max(7.0, 0.45 * per + 2), 4.2 * len(tables)), squeeze=False)
    w = 0.4
    for ax, tab in zip(axes[:, 0], tables):
        sub = tab["rows"]
        xs = list(range(len(sub)))
        for off, key, name in ((-w / 2, "speedup_peer", f"vs {tab['peer']}"),
                               (w / 2, "speedup_compiled", f"vs torch.compile({tab['peer']})")):
            vals = [r.get(key) or 0.0 for r in sub]
            bars = ax.bar([x + off for x in xs], vals, w, label=name)
            for b, v in zip(bars, vals):
                if v:
                    ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup of geoops (x)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{_cell(r, 'op_s', 's')} {r['pass']} {_cell(r, 'shape_s', 's')} {r['dtype']}"
                            for r in sub], rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{tab['family']}: {tab['title']} — {meta['device_name']} ({meta['threads']} threads)",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- main
def _family_module(family: str):
    return importlib.import_module(f"{__package__}.{family}")


def parse_args(argv, families_mods):
    from geoops import FAMILIES

    p = argparse.ArgumentParser(prog="python -m geoops.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=None, help=f"comma list from {', '.join(FAMILIES)} (default all)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="(default) each family's headline shapes, fp32")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="each family's full grid of shapes and dtypes")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    some = {f: m for f, m in families_mods.items() if family_dtypes(m) != ALL_DTYPES}
    p.add_argument("--dtype", default=None,
                   help="comma list of fp32, fp64, bf16, fp16 (overrides the mode's); each family runs the ones it has"
                        + "".join(f"; {f}: {_dtype_names(family_dtypes(m))}" for f, m in some.items())
                        + ("; the others: all four" if some else "")
                        + "".join(f" ({getattr(m, 'DTYPES_NOTE')})" for m in families_mods.values()
                                  if getattr(m, "DTYPES_NOTE", "")))
    p.add_argument("--ops", default=None,
                   help="comma list of ops, or 'all' (default: each family's own selection); each family runs the "
                        "ones it has, a family with none is skipped: "
                        + "; ".join(f"{f}: {', '.join(family_ops(m))}" for f, m in families_mods.items()))
    p.add_argument("--passes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per contender (median taken)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender after the first call")
    p.add_argument("--backend", default=None, help="force a geoops backend (geoops.set_backend); default: auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output folder for JSON/markdown/PNG (default ./{DEFAULT_OUT}, git-ignored)")
    p.add_argument("--publish", action="store_true",
                   help="also refresh the committed tables: write into the source checkout's bench/results/")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="CPU: what a sample measures: wall time (default, time.perf_counter) or the process's CPU "
                        "time (time.process_time, summed over its threads; with --threads 1 / OMP_NUM_THREADS=1 "
                        "it leaves out the time other processes hold the core, on a shared machine)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the peers")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--no-settle", action="store_true",
                   help="do not wait for the load average of a preceding build to settle before measuring")
    p.add_argument("--thp", action="store_true",
                   help="CPU: rerun under THP_MEM_ALLOC_ENABLE=1 (torch's CPU allocator puts large tensors on "
                        "transparent huge pages) so that page faults of fresh outputs, paid alike by every "
                        "contender, weigh less; results tagged -thp")
    for mod in families_mods.values():
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    a = p.parse_args(argv)
    a.mode = a.mode or "quick"
    a.dtypes = parse_dtypes(a.dtype)
    a.passes = tuple(x.strip() for x in a.passes.split(",") if x.strip())
    if any(x not in PASSES for x in a.passes):
        raise SystemExit(f"--passes: choose from {', '.join(PASSES)}")
    for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1)):
        v = getattr(a, name)
        if v is not None and v < low:
            raise SystemExit(f"--{name}: expected an integer >= {low}, got {v}")
    return a


def _cpu_clock_text(threads: int) -> str:
    """What a --clock cpu sample counts."""
    return "time.process_time (process CPU time" + (f", summed over the {threads} threads)" if threads > 1 else ")")


def _thp_state() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "unknown"


def _settle(log, max_wait_s: float = 90.0) -> None:
    """Wait (up to max_wait_s) for the 1-minute load average to drop below half the cores, saying so."""
    cpus = os.cpu_count() or 1
    la = _loadavg()
    if not la or la[0] <= 0.5 * cpus:
        return
    log(f"load average {la[0]:.2f} on {cpus} cores (e.g. a build that just finished): waiting up to "
        f"{max_wait_s:.0f} s for it to settle before measuring (--no-settle skips this)")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        time.sleep(5)
        la = _loadavg()
        if la and la[0] <= 0.5 * cpus:
            break
    log(f"load average now {la[0]:.2f} after {time.perf_counter() - t0:.0f} s"
        + ("" if la and la[0] <= 0.5 * cpus else ": other processes share the CPU, timings will be noisy"))


def main(argv=None) -> int:
    from geoops import FAMILIES

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--families", default=None)
    known, _ = pre.parse_known_args(argv)
    families = parse_list(known.families, FAMILIES, FAMILIES, "family")
    mods = {f: _family_module(f) for f in FAMILIES}  # every family's options are known to --help
    args = parse_args(argv, mods)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    if args.thp and not thp:
        # torch reads the variable once, at its first large allocation: set it for a fresh process.
        env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
        # (the same package: `python -m bench` in a checkout reruns the checkout's runner, not an installed one's)
        os.execve(sys.executable, [sys.executable, "-m", __package__ or "geoops.bench", *argv], env)
    t_start = time.perf_counter()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = (25 if args.mode == "full" else 15) if device.type == "cuda" else (7 if args.mode == "full" else 5)
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 2

    def log(msg=""):
        print(msg, flush=True)

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

    threads = torch.get_num_threads()
    meta = {
        "argv": argv, "mode": args.mode, "families": list(families), "device": device.type,
        "device_name": device_name(device), "cpu_name": cpu_name(),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": threads, "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "geoops_backend_env": os.environ.get("GEOOPS_BACKEND"), "geoops_backend_info": geoops.backend_info(),
        "versions": versions(mods), "git": git_info(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "repeats": args.repeats, "warmup": args.warmup,
        "thp_alloc": thp, "thp_kernel_mode": _thp_state(),
        "timing": ("per row: geoops, limit, peer, torch.compile(peer) run interleaved (order changed each round); "
                   "first call (compile) excluded, then warm-up, then median of the samples; "
                   + ("CUDA events, L2 flushed before each sample" if device.type == "cuda" else
                      _cpu_clock_text(threads) if args.clock == "cpu" else "time.perf_counter")),
    }
    v = meta["versions"]
    log(f"geoops benchmark ({args.mode}): {meta['device_name']} [{device.type}], {threads} threads; "
        f"torch {v['torch']}, triton {v['triton']}, geoops {v['geoops']} "
        f"@ {meta['git']['commit']}{' (dirty)' if meta['git']['dirty'] else ''}; families {', '.join(families)}")
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu: CPU device only (GPU samples are CUDA events)")
    if args.clock == "cpu" and threads > 1:
        log(f"note: --clock cpu: {_cpu_clock_text(threads)}: a row's ms is CPU time over all its threads (spin-waits "
            "included), not the call's duration; rates and ratios follow (--threads 1 for per-call CPU times)")
    # Every family's share of the options and its rows, before anything is timed: an option error stops here.
    plan = []
    for family, (fargs, note) in split_options(args, families, mods).items():
        rows = []
        if fargs is not None:
            try:
                rows = list(mods[family].rows(fargs, device))
            except (Exception, SystemExit) as e:
                raise SystemExit(f"{family}: its rows could not be listed (nothing was timed): "
                                 f"{e if isinstance(e, SystemExit) else _fmt_err(e)}") from None
        plan.append((family, fargs, rows, note))
    if device.type == "cpu" and not args.no_settle:
        _settle(log)
    meta["loadavg_start"] = _loadavg()
    bw = copy_bandwidth(device)
    meta["copy_bandwidth"] = bw
    log(f"copy bandwidth (y.copy_(x), {bw['mib']} MiB fp32): {bw['gbps']:.1f} GB/s ({bw['median_ms']:.3f} ms)")
    log(f"median of {args.repeats} interleaved samples after {args.warmup} warm-up calls; first calls "
        "(JIT, torch.compile) are not timed; x limit = geoops / limit; vs X = X time / geoops time")

    tables, failed, interrupted = [], [], False
    terminated = []

    def on_term(signum, frame):  # `timeout` and job schedulers stop a run with SIGTERM: keep what was measured
        terminated.append(signum)
        raise KeyboardInterrupt("SIGTERM")
    try:
        prev_term = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        prev_term = None
    try:  # (the handler goes back however the loop ends: a SystemExit from a family, Ctrl-C between families)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. inductor chatter; geoops' RuntimeWarnings still show
            for family, fargs, rows, note in plan:
                mod = mods[family]
                if fargs is None:
                    log("")
                    log(f"== {family}: skipped ({note})")
                    continue
                peer = getattr(mod, "PEER", "eager")
                units = {r.unit for r in rows}
                unit = units.pop() if len(units) == 1 else "mixed"
                tab = {"family": family, "title": getattr(mod, "TITLE", family), "peer": peer, "unit": unit,
                       "notes": {"--dtype": note} if note else {}, "rows": []}
                tables.append(tab)  # before its rows run: a failure or Ctrl-C keeps what was measured
                cols = _columns(unit, peer)
                try:
                    with family_scope():
                        notes = mod.prepare(fargs, log) if hasattr(mod, "prepare") else {}
                        tab["notes"].update(notes or {})
                        log("")
                        log(f"== {family}: {tab['title']} ({len(rows)} rows)" + (f"; --dtype: {note}" if note else ""))
                        log(text_header(cols))
                        for i, row in enumerate(rows, 1):
                            t_row = time.perf_counter()
                            res = bench_row(row, device, fargs, log)
                            tab["rows"].append(res)
                            log(text_row(res, cols) + f"  [{i}/{len(rows)}, {time.perf_counter() - t_row:.1f} s]")
                except KeyboardInterrupt:
                    interrupted = "SIGTERM" if terminated else "Ctrl-C"
                    tab["error"] = f"interrupted ({interrupted})"
                    log(f"\n== interrupted ({interrupted}) in {family}: writing the "
                        f"{sum(len(t['rows']) for t in tables)} rows measured")
                    break
                except Exception as e:  # one family's failure does not cost the others' results
                    tab["error"] = _fmt_err(e)
                    failed.append(family)
                    log(f"  ! {family} failed after {len(tab['rows'])} of {len(rows)} rows: {tab['error']}")
    except KeyboardInterrupt:  # between two families' own try blocks
        interrupted = "SIGTERM" if terminated else "Ctrl-C"
        log(f"\n== interrupted ({interrupted}): writing the {sum(len(t['rows']) for t in tables)} rows measured")
    finally:
        if prev_term is not None:
            signal.signal(signal.SIGTERM, prev_term)
    meta["failed_families"] = failed
    meta["interrupted"] = interrupted
    meta["skipped_families"] = {f: note for f, fa, _, note in plan if fa is None}

    wall = time.perf_counter() - t_start
    meta["wall_s"] = round(wall, 1)
    meta["loadavg_end"] = _loadavg()
    flagged = [(t["family"], r) for t in tables for r in t["rows"] if r["flags"]]
    log("")
    if flagged:
        log("flags:")
        for fam, r in flagged:
            log(f"  {fam} {r['op']} {r['pass']} {'x'.join(map(str, r['shape']))} {r['dtype']}: {'; '.join(r['flags'])}")
    if device.type == "cpu" and meta["loadavg_end"]:
        log(f"load average at the end {meta['loadavg_end'][0]:.2f} (1 min), {meta['loadavg_end'][1]:.2f} (5 min)")
    compile_s = [r["first_call_s"]["compiled"] for t in tables for r in t["rows"] if "compiled" in r["first_call_s"]]
    if compile_s:
        log(f"torch.compile first calls (compilation) took {sum(compile_s):.1f} s in all")

    outs = [Path(args.out)]
    if args.publish and (failed or interrupted):
        log(f"--publish: the run is partial ({'interrupted' if interrupted else 'failed: ' + ', '.join(failed)}); "
            f"results written to {args.out} only, the committed tables are left as they are")
    elif args.publish:
        src = SOURCE_RESULTS.parent  # the bench/ folder of a source checkout (a git work tree above it)
        if not src.joinpath("__main__.py").exists() or not (src.parent / ".git").exists():
            log(f"--publish: {src} is not a source checkout's bench/ folder; results written to {args.out} only")
        else:
            outs.append(SOURCE_RESULTS)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ran = [f for f, fa, _, _ in plan if fa is not None]
    fam_tag = "all" if tuple(ran) == tuple(FAMILIES) else "-".join(ran)
    written = []
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{device_tag(device, threads)}{'-thp' if thp else ''}-{fam_tag}-{stamp}"
        json_path = stem.with_suffix(".json")
        json_path.write_text(json.dumps({"meta": meta, "tables": tables}, indent=1) + "\n")
        md_path = out / f"latest-{device.type}{'-thp' if thp else ''}-{fam_tag}.md"
        md_path.write_text(markdown(meta, tables))
        written += [json_path, md_path]
        if not args.no_plot:
            png = stem.with_suffix(".png")
            if plot(meta, tables, png):
                written.append(png)
    log(f"wrote {', '.join(str(p) for p in written)}")
    log(f"wall time {wall:.1f} s")
    if failed:
        what = ", ".join(f"{t['family']} ({t['error']})" for t in tables if t["family"] in failed)
        log(f"failed: {what}; the other families' results are in the files above")
    return {"SIGTERM": 143, "Ctrl-C": 130}.get(interrupted, 1 if failed else 0)
