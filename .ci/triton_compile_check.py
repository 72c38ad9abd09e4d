#!/usr/bin/env python3
"""Compile every launchable Triton kernel variant for sm_80 / sm_90 on a machine without a GPU.

Triton's active driver is replaced by a stand-in that reports a CUDA target (no GPU, no libcuda);
kernels are compiled through the real launchers with ``warmup=True`` semantics (``JITFunction.run``
is patched to compile and return instead of launching), so what is compiled is exactly what the
launcher would launch: same constexprs, same block heuristics, same argument specialisation.

Discovery (family-neutral): every ``kernels/<family>.py`` is imported as ``geoops.kernels.<family>``
and asked for its variants through the module-level hook ``compile_variants()`` (documented in
``kernels/__init__.py``).  Each entry is a dict::

    {"label": "mobius_add/float32/one-tile fwd",     # unique within the family
     "launch": callable,                             # calls the family's launcher on small CPU tensors
     "expect": {"index64": True,                     # (defaults) the program id is widened to i64
                "max_spill_bytes": 0,                #   before any arithmetic; no spills;
                "ieee_div": False}}                  #   True: no div.full/div.approx f32 in the PTX

``launch`` may launch several kernels; each distinct compiled kernel becomes one row.  A module-level
string ``COMPILE_NOTES`` is printed above the family's table (what its spills or approximations mean).
Autotuned kernels (triton.autotune) compile every config.  A failed compile, a spill above ``max_spill_bytes``, a
32-bit program-id multiply (``index64``), or an approximate f32 division (``ieee_div``) fails the check.

Per compiled kernel it records registers, spill stores/loads and stack frame (ptxas -v, from Triton's
own ptxas call), shared memory, warps, the PTX instruction count and the counts of approximate
instructions (div.full.f32, *.approx.*: rcp, sqrt, rsqrt, ex2, lg2, sin, cos, tanh) and writes them as
JSON (``--json``); ``--merge`` turns several JSON runs (Triton versions x archs) into the markdown
table kernels/COMPILE_REPORT.md.

    python .ci/triton_compile_check.py --arch 90 --json /tmp/c90.json     # one Triton, one arch
    python .ci/triton_compile_check.py --merge /tmp/c*.json --report kernels/COMPILE_REPORT.md
    bash .ci/triton_compile_check.sh        # CI: Triton of the environment + Triton 3.6, sm_80 + sm_90

A full run also fails when a ``@triton.jit`` ``*_kernel`` of the module was never compiled (no entry launches
it); ``--coverage`` checks only that, in seconds (a dry run of the launchers, nothing compiled).

Run it in its own process (it installs the stand-in driver and patches Triton's JIT).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Families whose kernels/<family>.py has not yet joined the check (no compile_variants() hook): reported
# as PENDING, not failed.  Any other family without the hook fails the check; remove a name once its
# hook lands (tests/test_compile_check.py keeps this list exact).
PENDING_HOOKS: frozenset = frozenset()


# ---------------------------------------------------------------- PTX / TTIR analysis (no Triton needed)
APPROX_PATTERNS = {
    "div.full": r"\bdiv\.full\.f32",
    "div.approx": r"\bdiv\.approx(\.ftz)?\.f32",
    "rcp.approx": r"\brcp\.approx",
    "sqrt.approx": r"\bsqrt\.approx",
    "rsqrt.approx": r"\brsqrt\.approx",
    "ex2.approx": r"\bex2\.approx",
    "lg2.approx": r"\blg2\.approx",
    "sin.approx": r"\bsin\.approx",
    "cos.approx": r"\bcos\.approx",
    "tanh.approx": r"\btanh\.approx",
}


# Shared memory one block may use (opt-in maximum), by compute capability: a kernel above it compiles but
# cannot launch (Triton raises OutOfResources at the first call on such a device).
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def _needle(pat: str) -> str:
    """The literal text every match of `pat` (\\b, then literal text, then maybe a group) contains."""
    return re.split(r"[(?\[]", pat.replace(r"\b", ""), maxsplit=1)[0].replace("\\.", ".")


# A pattern's regex scan (\b first: no fast literal search) took ~2.5 ms per 76 kB PTX module, 12 scans per kernel:
# 30 of the 50 s of a check whose kernels all came from the cache.  The regex now runs only where its literal
# text occurs (a plain substring search); absent, it cannot match, so every count is the same.
_COUNTED = {name: (_needle(pat), re.compile(pat)) for name, pat in
            list(APPROX_PATTERNS.items()) + [("div_rn_f32", r"\bdiv\.rn\.f32")]}


def _count(name: str, ptx: str) -> int:
    needle, rx = _COUNTED[name]
    return len(rx.findall(ptx)) if needle in ptx else 0


def ptx_stats(ptx: str) -> dict:
    """Counts of approximate instructions and of all instructions in a PTX module."""
    counts = {name: _count(name, ptx) for name in APPROX_PATTERNS}
    instr = 0
    for line in ptx.splitlines():
        s = line.strip()
        if s.endswith(";") and not s.startswith((".", "//")):  # not a directive (.reg, .param, ...)
            instr += 1
    return {"approx": counts, "approx_total": sum(counts.values()), "ptx_instructions": instr,
            "div_rn_f32": _count("div_rn_f32", ptx)}


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def ptxas_stats(log: str) -> dict:
    """Registers, stack frame and spill bytes from a `ptxas -v` log (None where absent)."""
    out = {}
    for key, rx in _PTXAS_RE.items():
        m = rx.search(log)
        out[key] = int(m.group(1)) if m else None
    return out


def pid32_uses(ttir: str) -> list:
    """Lines of the TTIR that use a program id in 32-bit arithmetic (anything but a widening to i64)."""
    pids = re.findall(r"(%[\w.#]+) = tt\.get_program_id", ttir)
    bad = []
    for pid in pids:
        use = re.compile(re.escape(pid) + r"(?![\w.#])")
        for line in ttir.splitlines():
            s = line.strip()
            if "tt.get_program_id" in s or not use.search(s.split("=", 1)[-1]):
                continue
            if re.search(r"arith\.extsi .* to i64", s) or s.startswith(("tt.return", "//")):
                continue
            bad.append(s.split(" loc(")[0])
    return bad


def allowance_problem(label: str, expect: dict) -> str | None:
    """Spill allowances are for float64 variants only: a hook that tolerates a spill in any other variant
    (its label does not name float64) fails the check, whatever that variant compiles to.  float32 and the
    half types must be spill-free (a new spill there fails CI; it cannot hide behind an allowance)."""
    if expect["max_spill_bytes"] > 0 and "float64" not in label:
        return (f"{label}: max_spill_bytes={expect['max_spill_bytes']} in a variant that is not float64 "
                "(only float64 variants may tolerate spills; explain them in COMPILE_NOTES)")
    return None


def row_problems(row: dict, expect: dict, arch: int, pid_bad: list) -> list:
    """What fails the check for one compiled kernel (its ptxas/PTX stats in `row`)."""
    problems = []
    if row["registers"] is None:
        problems.append("no ptxas log (cached kernel?)")
    spill = (row["spill_stores"] or 0) + (row["spill_loads"] or 0)
    if spill > expect["max_spill_bytes"]:
        problems.append(f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads "
                        f"(allowed {expect['max_spill_bytes']})")
    if arch in SMEM_LIMIT and (row["shared"] or 0) > SMEM_LIMIT[arch]:
        problems.append(f"shared memory {row['shared']} B > {SMEM_LIMIT[arch]} B per block on sm_{arch}: cannot launch")
    if expect["index64"] and pid_bad:
        problems.append(f"program id in 32-bit arithmetic: {pid_bad[0]}")
    if expect["ieee_div"]:
        n_div = row["approx"]["div.full"] + row["approx"]["div.approx"]
        if n_div:
            problems.append(f"{n_div} approximate f32 divisions (ieee_div expected)")
    return problems


# ---------------------------------------------------------------- the stand-in driver
def install_standin(arch: int):
    """Make Triton compile for sm_<arch> without a GPU (compile only: nothing can be launched)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime import driver

    class StandInCudaDriver(DriverBase):
        """Reports a CUDA target; every launch-side method raises."""

        def __init__(self):
            self.target = GPUTarget("cuda", arch, 32)

        @staticmethod
        def is_active():
            return False

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=0):
            return divmod(arch, 10)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            return torch.cuda

        def map_python_to_cpp_type(self, ty):
            raise RuntimeError("stand-in driver: no launcher")

        def get_benchmarker(self):
            raise RuntimeError("stand-in driver: no benchmarks (autotuned kernels compile every config instead)")

        def get_empty_cache_for_benchmark(self):
            raise RuntimeError("stand-in driver: no benchmarks")

    driver.set_active(StandInCudaDriver())


class Recorder:
    """Patches JITFunction.run (compile, never launch) and Autotuner.run (every config); records kernels."""

    def __init__(self, stats=None):
        self.compiled = []  # (jit fn name, constexprs, CompiledKernel, ptxas log, from cache)
        # ptxas logs by kernel hash: a kernel that comes from Triton's on-disk cache (a persistent
        # TRITON_CACHE_DIR) is not assembled again, so its log is kept here (saved beside the cache)
        self.stats = {} if stats is None else stats

    @contextlib.contextmanager
    def active(self):
        from triton import knobs
        from triton.runtime import jit as jit_mod

        orig_run = jit_mod.JITFunction.run
        rec = self

        def compile_once(self_fn, args, grid, kwargs):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                kernel = orig_run(self_fn, *args, grid=grid, warmup=True, **kwargs)
            log = buf.getvalue()
            return kernel, (log if "registers" in log else None)

        def run(self_fn, *args, grid, warmup, **kwargs):
            kernel, log = compile_once(self_fn, args, grid, kwargs)
            cached = log is None
            if cached:
                log = rec.stats.get(kernel.hash)
            if log is None:
                # from a cache filled without our logs: evict it (disk and memory) and compile again
                from triton.runtime.cache import get_cache_manager

                shutil.rmtree(get_cache_manager(kernel.hash).cache_dir, ignore_errors=True)
                self_fn.device_caches.clear()
                kernel, log = compile_once(self_fn, args, grid, kwargs)
                cached = False
            if log is not None:
                rec.stats[kernel.hash] = log
            consts = {k: _short(v) for k, v in kwargs.items()}
            rec.compiled.append((self_fn.__name__, consts, kernel, log or "", cached))
            return kernel

        patches = [(jit_mod.JITFunction, "run", run)]
        try:
            from triton.runtime import autotuner as at_mod

            def at_run(self_at, *args, **kwargs):
                last = None
                for cfg in self_at.configs:
                    last = self_at.fn.run(*args, **{**kwargs, **cfg.all_kwargs(), "warmup": True})
                return last

            patches.append((at_mod.Autotuner, "run", at_run))
        except ImportError:  # pragma: no cover
            pass
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        old_dump = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        try:
            yield self
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)
            knobs.nvidia.dump_ptxas_log = old_dump


def defined_kernels(mod) -> set:
    """The names of the module's ``@triton.jit`` kernels (the functions named ``*_kernel``; helpers are inlined)."""
    from triton.runtime.jit import JITFunction

    return {n for n, v in vars(mod).items() if isinstance(v, JITFunction) and n.endswith("_kernel")}


@contextlib.contextmanager
def _dry_launches(names: list):
    """Launchers run, nothing is compiled or launched: each kernel launch appends its name to `names` (autotuned
    kernels once per config)."""
    from triton.runtime import jit as jit_mod

    def run(self_fn, *args, grid=None, warmup=False, **kwargs):
        names.append(self_fn.__name__)

    patches = [(jit_mod.JITFunction, "run", run)]
    try:
        from triton.runtime import autotuner as at_mod

        def at_run(self_at, *args, **kwargs):
            for cfg in self_at.configs:
                self_at.fn.run(*args, **{**kwargs, **cfg.all_kwargs(), "warmup": True})

        patches.append((at_mod.Autotuner, "run", at_run))
    except ImportError:  # pragma: no cover
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        yield names
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def uncovered_kernels(mod) -> set:
    """The kernels of `mod` that no entry of its compile_variants() launches (a dry run of every entry's launcher
    under the stand-in driver, a few seconds for every family): those would never be compile-checked."""
    launched: list = []
    with _dry_launches(launched):
        for e in mod.compile_variants():
            e["launch"]()
    return defined_kernels(mod) - set(launched)


def _short(v):
    s = getattr(v, "name", None) if type(v).__name__ == "dtype" else None
    if s is not None:
        return s
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


# ---------------------------------------------------------------- discovery and the run
def families(only=None):
    names = sorted(p.stem for p in (ROOT / "kernels").glob("*.py") if not p.stem.startswith("_"))
    return [n for n in names if not only or n in only]


def run_check(arch: int, only=None, limit=None, verbose=False, match=None) -> dict:
    os.environ["TRITON_INTERPRET"] = "0"
    import triton

    install_standin(arch)
    stats_file = Path(os.environ["TRITON_CACHE_DIR"]) / "geoops-ptxas-logs.json"
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        stats = {}
    rec = Recorder(stats)
    saved_at = time.time()
    results = {"triton": triton.__version__, "arch": arch, "families": {}, "errors": [], "from_cache": 0}
    for fam in families(only):
        entries_out = []
        results["families"][fam] = entries_out
        try:
            mod = importlib.import_module(f"geoops.kernels.{fam}")
        except Exception as e:
            results["errors"].append(f"{fam}: import failed: {type(e).__name__}: {e}")
            continue
        if getattr(mod, "COMPILE_NOTES", None):  # the family's explanation of what its table shows
            results.setdefault("notes", {})[fam] = str(mod.COMPILE_NOTES).strip()
        hook = getattr(mod, "compile_variants", None)
        if hook is None:
            if fam in PENDING_HOOKS:
                results.setdefault("pending", []).append(fam)
                print(f"PENDING  {fam}: kernels/{fam}.py has no compile_variants() hook yet (PENDING_HOOKS)")
                continue
            results["errors"].append(f"{fam}: kernels/{fam}.py has no compile_variants() hook (see kernels/__init__.py)")
            continue
        entries = list(hook())
        if match:
            entries = [e for e in entries if re.search(match, e["label"])]
        if limit:
            entries = entries[:limit]
        labels = [e["label"] for e in entries]
        if len(set(labels)) != len(labels):
            results["errors"].append(f"{fam}: duplicate labels in compile_variants()")
        n_family = len(rec.compiled)
        for e in entries:
            expect = {"index64": True, "max_spill_bytes": 0, "ieee_div": False, **e.get("expect", {})}
            bad_allowance = allowance_problem(e["label"], expect)
            if bad_allowance:
                results["errors"].append(f"{fam}: {bad_allowance}")
                print(f"FAIL  sm_{arch} {fam}: {bad_allowance}", flush=True)
            n0 = len(rec.compiled)
            t0 = time.time()
            err = None
            try:
                with rec.active():
                    e["launch"]()
            except Exception as ex:  # a compile error (or a launcher that cannot run on CPU tensors)
                err = f"{type(ex).__name__}: {ex}".strip()
                if verbose:
                    traceback.print_exc()
            secs = time.time() - t0
            # a launcher that launches one binary twice (same kernel hash) gives one row
            seen = set()
            kernels = [c for c in rec.compiled[n0:] if not (c[2].hash in seen or seen.add(c[2].hash))]
            if err is None and not kernels:
                err = "launch() compiled no Triton kernel"
            if err is not None:
                entries_out.append({"label": e["label"], "error": err[-2000:], "ok": False, "seconds": secs})
                print(f"FAIL  sm_{arch} {fam}: {e['label']}: {err.splitlines()[0][:300]}", flush=True)
                continue
            for name, consts, k, log, cached in kernels:
                results["from_cache"] += bool(cached)
                row = {"label": e["label"], "kernel": name, "seconds": round(secs / len(kernels), 3),
                       "num_warps": k.metadata.num_warps, "num_stages": getattr(k.metadata, "num_stages", None),
                       "shared": k.metadata.shared, "hash": k.hash,
                       "constexprs": {c: v for c, v in consts.items() if c not in ("num_warps", "num_stages")}}
                row.update(ptxas_stats(log))
                row.update(ptx_stats(k.asm["ptx"]))
                pid_bad = pid32_uses(k.asm["ttir"])
                problems = row_problems(row, expect, arch, pid_bad)
                spill = (row["spill_stores"] or 0) + (row["spill_loads"] or 0)
                row["problems"] = problems
                row["ok"] = not problems
                row["expect"] = expect
                entries_out.append(row)
                if problems:
                    print(f"FAIL  sm_{arch} {fam}: {e['label']} [{name}]: {'; '.join(problems)}", flush=True)
                if not cached and time.time() - saved_at > 60:  # a killed or timed-out run keeps its logs
                    saved_at = _save_stats(stats_file, rec.stats) or time.time()
                elif verbose:
                    print(f"ok    sm_{arch} {fam}: {e['label']} [{name}] regs {row['registers']} "
                          f"spill {spill} smem {row['shared']} approx {row['approx_total']} ({secs:.1f}s)", flush=True)
        if not match and not limit:  # a full run: every kernel of the module must have been compiled
            missing = defined_kernels(mod) - {c[0] for c in rec.compiled[n_family:]}
            if missing:
                results["errors"].append(f"{fam}: kernels no compile_variants() entry launches: {sorted(missing)}")
    _save_stats(stats_file, rec.stats)
    return results


def _save_stats(stats_file: Path, stats: dict) -> None:
    """The ptxas logs beside the Triton cache (a cached kernel without its log is compiled again)."""
    try:
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_file)
    except OSError:
        pass


# ---------------------------------------------------------------- the report
def _fmt_regs(row):
    if row is None:
        return "-"
    if not row.get("ok", False) and "error" in row:
        return "ERROR"
    s = str(row["registers"])
    sp = (row.get("spill_stores") or 0) + (row.get("spill_loads") or 0)
    if sp:
        s += f" ({row['spill_stores']}/{row['spill_loads']} B spill)"
    return s


def merge(runs: list, report: Path) -> bool:
    """Write the markdown table of several runs; True when every run passed."""
    runs = sorted(runs, key=lambda r: (tuple(int(p) for p in re.findall(r"\d+", r["triton"])[:3]), r["arch"]))
    cols = [f"{r['triton']} sm_{r['arch']}" for r in runs]
    ok = all(not r["errors"] for r in runs)
    fams = sorted({f for r in runs for f in r["families"]})
    lines = [
        "# Triton compile report",
        "",
        "Generated by `bash .ci/triton_compile_check.sh` (do not edit): every launchable Triton kernel variant",
        "compiled for each column's Triton version and GPU architecture on a CPU machine (stand-in driver,",
        "never launched).  Per variant: registers as `ptxas -v` reports them (spill stores/loads in bytes where",
        "non-zero), then, from the last column's compile, shared memory in",
        "bytes, warps, PTX instruction count, approximate instructions (div.full.f32 and `*.approx*`) and IEEE",
        "f32 divisions (div.rn.f32).  `ok` means: compiled, no spills beyond what the family allows, the",
        "program id widened to 64 bits before any arithmetic, and no approximate f32 division where the family",
        "asks for IEEE division.",
        "",
    ]
    pending = sorted({f for r in runs for f in r.get("pending", [])})
    if pending:
        lines.append(f"- not yet compiled (no compile_variants() hook: PENDING_HOOKS): {', '.join(pending)}")
    for r in runs:
        n = sum(len(v) for v in r["families"].values())
        lines.append(f"- Triton {r['triton']}, sm_{r['arch']}: {n} kernels, "
                     f"{sum(1 for v in r['families'].values() for e in v if not e.get('ok'))} failing"
                     + (f"; errors: {'; '.join(r['errors'])}" if r["errors"] else ""))
    lines.append("")
    summary = []
    for fam in fams:
        rows = {}
        order = []
        for ci, r in enumerate(runs):
            seen = {}
            for e in r["families"].get(fam, []):
                # one launch may compile one jit function twice (other constexprs/specialisation): #2, #3, ...
                base = (e["label"], e.get("kernel", ""))
                seen[base] = seen.get(base, 0) + 1
                key = base if seen[base] == 1 else (base[0], f"{base[1]} #{seen[base]}")
                if key not in rows:
                    rows[key] = [None] * len(runs)
                    order.append(key)
                rows[key][ci] = e
        lines += [f"## {fam}", ""]
        note = next((r.get("notes", {}).get(fam) for r in reversed(runs) if r.get("notes", {}).get(fam)), None)
        if note:
            lines += ["Notes (kernels/%s.py, COMPILE_NOTES):" % fam, "", note, ""]
        hdr = ["variant", "kernel"] + [f"regs {c}" for c in cols] + ["smem B", "warps", "PTX instr", "approx",
                                                                     "div.full", "div.rn", "ok"]
        lines.append("| " + " | ".join(hdr) + " |")
        lines.append("|" + "---|" * len(hdr))
        for key in order:
            cells = rows[key]
            last = next((c for c in reversed(cells) if c is not None and "registers" in c), None)
            good = all(c is not None and c.get("ok") for c in cells)
            ok = ok and good
            tail = ["-"] * 6 if last is None else [
                str(last["shared"]), str(last["num_warps"]), str(last["ptx_instructions"]),
                str(last["approx_total"]), str(last["approx"]["div.full"]), str(last["div_rn_f32"])]
            lines.append("| " + " | ".join([key[0], key[1].strip("_")] + [_fmt_regs(c) for c in cells] + tail
                                           + ["ok" if good else "**FAIL**"]) + " |")
        for ci, r in enumerate(runs):
            es = [e for e in r["families"].get(fam, []) if "registers" in e and e["registers"] is not None]
            if not es:
                continue
            worst = max(es, key=lambda e: e["registers"])
            spilling = [e for e in es if (e["spill_stores"] or 0) + (e["spill_loads"] or 0)]
            summary.append(f"| {fam} | {cols[ci]} | {len(r['families'].get(fam, []))} | {worst['registers']} "
                           f"({worst['label']}) | {len(spilling)} | "
                           f"{max([(e['spill_stores'] or 0) for e in spilling], default=0)} | "
                           f"{sum(e['approx']['div.full'] for e in es)} |")
        lines.append("")
    lines += ["## Summary", "",
              "| family | Triton / arch | kernels | max registers (variant) | kernels spilling | max spill stores B "
              "| div.full.f32 total |", "|---|---|---|---|---|---|---|"] + summary + [""]
    report.write_text("\n".join(lines))
    return ok


def coverage_main(only=None) -> int:
    """--coverage: each family's uncovered kernels (see :func:`uncovered_kernels`); non-zero if any."""
    os.environ["TRITON_INTERPRET"] = "0"
    install_standin(90)
    failed = False
    for fam in families(only):
        mod = importlib.import_module(f"geoops.kernels.{fam}")
        if getattr(mod, "compile_variants", None) is None:
            print(f"PENDING  {fam}: no compile_variants() hook")
            failed |= fam not in PENDING_HOOKS
            continue
        missing = uncovered_kernels(mod)
        if missing:
            failed = True
            print(f"FAIL  {fam}: kernels no compile_variants() entry launches: {sorted(missing)}")
        else:
            print(f"covered  {fam}: {len(defined_kernels(mod))} kernels")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (80, 90)")
    p.add_argument("--families", default="", help="comma-separated kernels/<family>.py names (default: all)")
    p.add_argument("--json", help="write the run's results here")
    p.add_argument("--limit", type=int, default=0, help="only the first N entries of each family (debugging)")
    p.add_argument("--match", help="only entries whose label matches this regex (debugging)")
    p.add_argument("--merge", nargs="+", help="JSON runs to merge into --report")
    p.add_argument("--report", default=str(ROOT / "kernels" / "COMPILE_REPORT.md"))
    p.add_argument("--coverage", action="store_true",
                   help="only check that every kernel is launched by some compile_variants() entry (a dry run of "
                        "the launchers: nothing compiled; seconds)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.coverage:
        return coverage_main([f for f in a.families.split(",") if f] or None)
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        ok = merge(runs, Path(a.report))
        print(f"report: {a.report} ({'all ok' if ok else 'FAILURES'})")
        return 0 if ok else 1
    only = [f for f in a.families.split(",") if f] or None
    t0 = time.time()
    if "TRITON_CACHE_DIR" not in os.environ:  # a fresh cache: every kernel really compiles (and logs ptxas)
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="geoops-triton-cc-")
    res = run_check(a.arch, only, a.limit, a.verbose, a.match)
    res["seconds"] = round(time.time() - t0, 1)
    n = sum(len(v) for v in res["families"].values())
    bad = sum(1 for v in res["families"].values() for e in v if not e.get("ok"))
    for err in res["errors"]:
        print(f"FAIL  sm_{a.arch}: {err}")
    print(f"triton {res['triton']} sm_{a.arch}: {n} kernels compiled ({res['from_cache']} from the cache "
          f"{os.environ['TRITON_CACHE_DIR']}), {bad} failing, {len(res['errors'])} errors, {res['seconds']} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0 if (bad == 0 and not res["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
