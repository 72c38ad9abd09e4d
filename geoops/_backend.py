"""Which implementation runs for a tensor.

Backends:
    cpp        fused C++ kernels of geoops._C (CPU tensors)
    triton     Triton kernels of geoops.kernels (CUDA tensors; CPU tensors only
               under the Triton interpreter, TRITON_INTERPRET=1)
    cuda       CUDA C++ kernels of geoops._C (CUDA tensors; built when torch has CUDA)
    reference  the eager torch code of geoops.reference, differentiated by autograd
    auto       CPU -> cpp, CUDA -> triton (cuda if Triton is missing); reference
               wherever the preferred kernels are unavailable

Force one with the environment variable GEOOPS_BACKEND or geoops.set_backend();
geoops.use_backend() is the scoped form.  GEOOPS_CHECK=1 turns on the checks
that need a pass over the data (non-finite values, points outside the ball).
Both switches are process-wide: a switch made in one thread applies to the ops
that every thread runs after it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from pathlib import Path

import torch

BACKENDS = ("auto", "cpp", "triton", "cuda", "reference")
# Bumped whenever the binding's signatures change; a built _C with another
# value is stale and is not used.
ABI_VERSION = 1

_state = {"backend": None, "check": None}
_cache: dict = {}
# family -> the compiled backends ("cpp", "cuda") it has kernels for, for families that register them
# (geoops._library.family_kernels); a family that does not register is taken to have every one
_PROVIDES: dict = {}


def _after_fork_in_child() -> None:
    """A child made by os.fork (multiprocessing's "fork" start method: Hogwild workers, Pool) runs on one thread.
    GNU OpenMP cannot start a thread team in a child forked after the parent ran one: the child's first parallel
    kernel, geoops' or torch's own, waited forever (torch's DataLoader sets its workers to one thread for the same
    reason).  ``torch.set_num_threads(n)`` in the child asks for n again (safe where the parent never ran a
    parallel kernel); spawn / forkserver children start with torch's default."""
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def register_family(family: str, backends) -> None:
    """Record which compiled backends ("cpp", "cuda") `family` has kernels for: the others are unavailable to it
    (auto passes them by; forcing one raises), so a family may start with only its reference."""
    _PROVIDES[family] = frozenset(backends)


def _lacks(name: str, family: str) -> bool:
    return name in ("cpp", "cuda") and family in _PROVIDES and name not in _PROVIDES[family]


def _env_backend() -> str:
    name = os.environ.get("GEOOPS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"GEOOPS_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The forced backend, or 'auto'."""
    if _state["backend"] is None:
        _state["backend"] = _env_backend()
    return _state["backend"]


def set_backend(name: str) -> None:
    """Force a backend for every op: one of auto, cpp, triton, cuda, reference.  Process-wide (every thread's
    later calls)."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _state["backend"] = name.lower()


# the open use_backend blocks, oldest first: [backend in force before the block opened] per block (a list each, so
# that a block's identity is its entry); under _scope_lock
_scopes: list = []
_scope_lock = threading.Lock()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed ops with backend `name`.

    The switch is process-wide, like set_backend: while the block is open, ops in other threads run with `name`
    too.  Blocks opened and closed interleaved in several threads (thread A opens, B opens, A closes, B closes)
    leave the backend as it was before the first opened; the newest open block's backend is in force."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    with _scope_lock:
        entry = [get_backend()]
        _scopes.append(entry)
        _state["backend"] = name.lower()
    try:
        yield
    finally:
        with _scope_lock:
            i = next(j for j, e in enumerate(_scopes) if e is entry)
            del _scopes[i]
            if i == len(_scopes):  # the newest block: restore what was in force when it opened
                _state["backend"] = entry[0]
            else:  # a newer block is still open (another thread's): its backend stays, and when it closes it
                _scopes[i][0] = entry[0]  # restores what was in force before this one


def checks_enabled() -> bool:
    """Are the debug checks on?  (`set_checks`, else GEOOPS_CHECK=1; off by default.)"""
    if _state["check"] is None:
        _state["check"] = os.environ.get("GEOOPS_CHECK", "0").strip().lower() in ("1", "true", "yes", "on")
    return _state["check"]


def set_checks(enabled: bool) -> None:
    """Turn the data-dependent debug checks (GEOOPS_CHECK) on or off."""
    _state["check"] = bool(enabled)


# ---------------------------------------------------------------- compiled extension
def _stale_sources(so_path: Path, with_cuda: bool) -> list:
    """Sources of the built library that are newer than it (only in a source checkout)."""
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    if not csrc.is_dir():
        return []
    built = so_path.stat().st_mtime
    exts = (".cpp", ".h", ".cu", ".cuh")
    return [
        str(p.relative_to(csrc.parent))
        for p in csrc.rglob("*")
        if p.suffix in exts and (with_cuda or "cuda" not in p.name and "cuda" not in p.parent.name)
        and p.stat().st_mtime > built
    ]


def _constant_for_dynamo(fn):
    """torch.compile runs `fn` at trace time and bakes its result in as a constant (it reads a file, which
    dynamo cannot trace: gaunt's route="auto" failed under fullgraph=True before anything had filled the cache)."""
    mark = getattr(getattr(torch, "compiler", None), "assume_constant_result", None)
    return mark(fn) if mark is not None else fn


def build_isa() -> str:
    """The vector ISA geoops' CPU kernels were compiled for: "AVX512", "AVX2" or "DEFAULT" (a portable build,
    GEOOPS_PORTABLE=1, or neither ISA), or "" without the compiled extension.  The build's choice, which decides
    which kernel paths exist (e.g. AVX-512-only row lanes); `torch.backends.cpu.get_cpu_capability()` names the
    machine's, which a portable build does not use."""
    mod = compiled()
    return mod.build_isa() if mod is not None else ""


@_constant_for_dynamo
def cpu_class() -> str:
    """The class of this machine's CPU that measured tables are keyed by: "<arch>-<vendor>-<isa>", e.g.
    "x86_64-intel-avx512", "x86_64-amd-avx512", "x86_64-amd-avx2" (vendor and widest vector ISA from
    /proc/cpuinfo), or just the architecture ("aarch64") where those are unknown."""
    if "cpu_class" in _cache:
        return _cache["cpu_class"]
    import platform

    arch = platform.machine().lower() or "unknown"
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(val.strip(), val.strip().lower())
                elif key == "flags" and not flags:
                    flags = set(val.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    _cache["cpu_class"] = "-".join(p for p in (arch, vendor, isa) if p)
    return _cache["cpu_class"]



@_constant_for_dynamo
def device_class(device: torch.device) -> str:
    """The class of a device that measured tables are keyed by: cpu_class() for the CPU; "cuda-sm<major><minor>"
    for a CUDA device (its compute capability, e.g. "cuda-sm90" for an H100 / H200), the device's own name for
    others ("meta", ...)."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_class()
    if device.type != "cuda":
        return device.type
    key = ("device_class", device.index)
    if key not in _cache:
        major, minor = torch.cuda.get_device_capability(device)
        _cache[key] = f"cuda-sm{major}{minor}"
    return _cache[key]

def compiled():
    """The geoops._C module, or None (with one warning saying how to build it)."""
    if "C" in _cache:
        return _cache["C"]
    mod, why = None, None
    try:
        mod = importlib.import_module("geoops._C")
    except ImportError as e:  # not built, or built against another torch
        why = f"it could not be imported ({e})"
    if mod is not None:
        if getattr(mod, "abi_version", None) != ABI_VERSION:
            why, mod = f"it was built from other sources (abi {getattr(mod, 'abi_version', None)} != {ABI_VERSION})", None
        else:
            stale = _stale_sources(Path(mod.__file__), bool(getattr(mod, "with_cuda", False)))
            if stale:
                warnings.warn(
                    f"geoops._C is older than {len(stale)} source file(s) ({', '.join(stale[:3])}...); "
                    "rebuild with `pip install --no-build-isolation -e .`",
                    RuntimeWarning,
                    stacklevel=2,
                )
    if mod is None:
        warnings.warn(
            f"geoops: the compiled extension geoops._C is not used: {why}. Every op falls back to the "
            "eager reference (slow). Build it with `pip install --no-build-isolation -e .` "
            "in an environment that has torch.",
            RuntimeWarning,
            stacklevel=2,
        )
    _cache["C"] = mod
    return mod


_other_builds = 0  # load_other_build's calls (its module names)


def load_other_build(path) -> object:
    """Another build of geoops._C loaded from `path` beside this process's own, for in-process A/B runs (set
    `_cache["C"]` to it to route the public ops there).  Refuses a build whose functions are not its own: two builds
    that both export their inline functions' statics (default visibility, before session 45) share them process-wide,
    so the later one's module init also ran the first one's binding functions (every function then an overload chain
    that runs the first build's kernel).  One of the two built with hidden visibility (setup.py) keeps them apart."""
    import importlib.util

    global _other_builds
    _other_builds += 1
    # a new module name per call: under a name loaded before, Python returns that earlier module (the first
    # build loaded) whatever the path (session 46: a second call returned the first call's build)
    spec = importlib.util.spec_from_file_location(f"geoops_other_{_other_builds}._C", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if os.path.realpath(getattr(mod, "__file__", "")) != os.path.realpath(path):
        raise RuntimeError(f"{path}: loading it returned the module of {getattr(mod, '__file__', None)}")
    chained = [n for n in dir(mod) if "Overloaded function" in (getattr(getattr(mod, n), "__doc__", None) or "")]
    if chained:
        raise RuntimeError(
            f"{path}: {len(chained)} of its functions are also another loaded build's ({', '.join(chained[:3])}, ...): "
            "both builds export their symbols (default visibility), so its calls would run the other build's kernels; "
            "rebuild either with setup.py's hidden visibility (session 45) and load that one")
    return mod


def triton_kernels(family: str):
    """The module geoops.kernels.<family> when it and Triton import, else None.  Under torch.autocast its functions
    run with autocast off (geoops._library.torch_kernels): the modules compose torch ops around the kernels (the
    fallback routes, GEMMs, FFTs), which autocast would otherwise run in its low-precision dtype (session 36)."""
    mod = _triton_module(family)
    if mod is not None and _any_autocast():
        from ._library import torch_kernels
        return torch_kernels(mod)
    return mod


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: False)


def _triton_module(family: str):
    key = ("triton", family)
    if key not in _cache:
        if not _triton_wanted():
            _cache[key] = None  # Triton kernels only run on CUDA (or in its interpreter): never import Triton
        else:
            try:
                _cache[key] = importlib.import_module(f"geoops.kernels.{family}")
            except Exception as e:  # ImportError (no Triton, no kernels for this family), or a broken Triton
                _cache[key] = None
                _cache[("triton_error", family)] = f"{type(e).__name__}: {e}"
    return _cache[key]


def _triton_wanted() -> bool:
    return torch.cuda.is_available() or _interpreting()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(name: str, device: torch.device, family: str) -> bool:
    """Can backend `name` run the ops of `family` on tensors on `device`?"""
    if name == "reference":
        return True
    if _lacks(name, family):
        return False
    if name == "cpp":
        return device.type == "cpu" and compiled() is not None
    if name == "cuda":
        C = compiled()
        return device.type == "cuda" and C is not None and bool(getattr(C, "with_cuda", False))
    if name == "triton":
        ok_dev = device.type == "cuda" or (device.type == "cpu" and _interpreting())
        return ok_dev and triton_kernels(family) is not None
    return False


def resolve(device: torch.device, family: str) -> str:
    """The backend that runs the ops of `family` on tensors on `device` (raises if a forced one cannot)."""
    forced = get_backend()
    if forced != "auto":
        if _lacks(forced, family):
            raise RuntimeError(f"geoops backend {forced!r} cannot run tensors on {device.type}: "
                               f"geoops.{family} has no {forced} kernels")
        if not available(forced, device, family):
            raise RuntimeError(
                f"geoops backend {forced!r} cannot run tensors on {device.type}: "
                + {
                    "cpp": "it needs CPU tensors and the compiled extension geoops._C",
                    "cuda": "it needs CUDA tensors and geoops._C built with CUDA",
                    "triton": "it needs CUDA tensors (or TRITON_INTERPRET=1 for CPU) and an importable Triton",
                }.get(forced, "")
                + (f" (importing geoops.kernels.{family} failed: {_cache[('triton_error', family)]})"
                   if forced == "triton" and _cache.get(("triton_error", family)) else "")
            )
        return forced
    if device.type == "cpu":
        return "cpp" if available("cpp", device, family) else "reference"
    if device.type == "cuda":
        for name in ("triton", "cuda"):
            if available(name, device, family):
                return name
    return "reference"


def preload(families) -> None:
    """Resolve the optional modules once, eagerly, so that torch.compile never traces an import."""
    compiled()
    for family in families:
        triton_kernels(family)
