"""Numerical-parity run: every available backend of every family against the fp64 reference.

    python -m geoops.parity [--families stereographic,...] [--device cpu|cuda|all]
                            [--backends cpp,triton,cuda] [--dtypes float64,float32,...] [--quick]

Each family lists its cases in ``geoops.parity.<family>`` (``cases(quick) -> list[Case]``): inputs
as float64 (or complex128) masters, the op under test and its reference.  For each case, backend and
dtype the runner evaluates the op and its gradients (with one fixed random upstream gradient) and
compares them with the reference run in float64 on the same inputs rounded to the dtype (the
"truth").  The tolerance is the low-precision rule of the test-suite::

    max |ours - truth| <= 2 * max |reference_in_dtype - truth| + floor(dtype) * scale

i.e. geoops may be at most twice as far from the truth as the eager reference computed in the
same dtype (scale = max(1, max |truth|)).  It prints one line per (family, op, backend, dtype) with
the worst error and the bound it was held to, says which backends could not run and why, and exits
non-zero if any line fails.  The pytest suites run the same cases.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import _backend
from .._families import FAMILIES

__all__ = ["Case", "Result", "FLOOR", "check_case", "family_cases", "run", "main"]

# Default absolute floors (relative to the output's scale) of the low-precision rule.
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64,
            torch.float16: torch.complex64, torch.bfloat16: torch.complex64}


@dataclass
class Case:
    """One call of an op: ``fn(*args.values(), **kw, **kwargs)`` for fn in (ours, ref).

    Tensors are float64/complex128 masters (integer tensors pass unchanged).  Under a dtype `dt`,
    floating tensors are rounded to `dt` and complex ones to its complex counterpart, except the
    names in `params`, which stay float32/complex64 when `dt` is not float64 (curvatures, per-row
    scalars, SSM parameters: what users keep in fp32 while the data is half).  The reference "in the
    same dtype" rounds every tensor to `dt`.  Gradients are taken w.r.t. the tensors named in `grads`
    (default: every floating or complex one).
    """

    name: str  # e.g. "mobius_add/k=-1/interior" (unique, for messages)
    op: str  # the summary line this case counts towards
    ours: Callable
    ref: Callable
    args: Dict[str, torch.Tensor]
    kw: Dict[str, torch.Tensor] = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)
    params: Tuple[str, ...] = ()
    grads: Optional[Tuple[str, ...]] = None
    dtypes: Optional[Tuple[torch.dtype, ...]] = None  # the dtypes this case runs in (default all)
    kwargs_for: Optional[Callable[[torch.dtype], dict]] = None  # dtype-dependent extra kwargs
    floor: Optional[Dict[torch.dtype, float]] = None

    def _tensors(self) -> Dict[str, torch.Tensor]:
        return {**self.args, **self.kw}

    def call(self, fn: Callable, dtype: torch.dtype, device, *, rounding: str, grad: bool):
        """fn on copies of the inputs; rounding: "ours" (params kept fp32), "same" (all in dtype),
        "truth" (rounded as "ours", then float64).  Returns (outputs tuple, leaves dict)."""
        leaves: Dict[str, torch.Tensor] = {}
        vals: Dict[str, torch.Tensor] = {}
        want = self.grads
        for n, t in self._tensors().items():
            if t.is_floating_point() or t.is_complex():
                dt = dtype
                if rounding != "same" and n in self.params and dtype != torch.float64:
                    dt = torch.float32
                v = t.to(_COMPLEX[dt] if t.is_complex() else dt)
                if rounding == "truth":
                    v = v.to(torch.complex128 if t.is_complex() else torch.float64)
                v = v.to(device).detach()
                if grad and (want is None or n in want):
                    v.requires_grad_(True)
                    leaves[n] = v
            else:
                v = t.to(device)
            vals[n] = v
        kwargs = dict(self.kwargs)
        if self.kwargs_for is not None:
            kwargs.update(self.kwargs_for(dtype))
        out = fn(*(vals[n] for n in self.args), **{n: vals[n] for n in self.kw}, **kwargs)
        return (tuple(out) if isinstance(out, (tuple, list)) else (out,)), leaves


def _grads(outs, leaves: dict, gouts) -> Dict[str, torch.Tensor]:
    pairs = [(o, g) for o, g in zip(outs, gouts) if o.requires_grad]
    names = list(leaves)
    if not pairs or not names:
        return {n: torch.zeros_like(leaves[n]) for n in names}
    got = torch.autograd.grad([o for o, _ in pairs], [leaves[n] for n in names],
                              [g.to(device=o.device, dtype=o.dtype) for o, g in pairs], allow_unused=True)
    return {n: (torch.zeros_like(leaves[n]) if v is None else v) for n, v in zip(names, got)}


def _wide(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t.to(torch.complex128) if t.is_complex() else t.double()


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    d = (_wide(a) - _wide(b)).abs()
    both_inf = torch.isinf(_wide(a).abs()) & (_wide(a) == _wide(b))  # equal infinities (e.g. lse = -inf)
    d = torch.where(both_inf, torch.zeros_like(d), d)
    return float(d.max())


def _gout(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if t.is_complex():
        return torch.randn(t.shape, generator=g, dtype=torch.complex128)
    return torch.randn(t.shape, generator=g, dtype=torch.float64)


def check_case(case: Case, backend: str, dtype: torch.dtype, device="cpu") -> List[tuple]:
    """[(quantity, err, bound, finite)] for each output and each gradient of one case."""
    with _backend.use_backend("reference"):
        out64, l64 = case.call(case.ref, dtype, "cpu", rounding="truth", grad=True)
        gouts = [_gout(o, 1 + i) for i, o in enumerate(out64)]
        g64 = _grads(out64, l64, gouts)
        if dtype == torch.float64:
            outd, gd = out64, g64
        else:
            outd, ld = case.call(case.ref, dtype, "cpu", rounding="same", grad=True)
            gd = _grads(outd, ld, gouts)
    with _backend.use_backend(backend):
        outo, lo = case.call(case.ours, dtype, device, rounding="ours", grad=True)
        go = _grads(outo, lo, gouts)
    floor = (case.floor or FLOOR).get(dtype, FLOOR[dtype])
    big = torch.finfo(dtype).max
    quantities = [(("out" if len(out64) == 1 else f"out{i}"), outo[i], out64[i], outd[i]) for i in range(len(out64))]
    quantities += [(f"d{n}", go[n], g64[n], gd[n]) for n in g64]
    rows = []
    for qname, o, t, d in quantities:
        o, t, d = o.detach(), t.detach(), d.detach()
        finite_t = torch.isfinite(_wide(t).abs()) if t.numel() else t.new_ones(0, dtype=torch.bool)
        scale = max(1.0, float(_wide(t).abs()[finite_t].max()) if bool(finite_t.any()) else 1.0)
        if scale > big / 4:  # the true value overflows this dtype: nothing to compare
            continue
        bound = 2 * _err(d, t) + floor * scale
        # a reference that blows up in low precision does not license garbage: cap at the scale
        bound = min(bound, 0.5 * scale) if dtype != torch.float64 else bound
        # non-finite values are allowed only where the truth has the same non-finite value
        finite = bool((torch.isfinite(_wide(o).abs()) == finite_t).all()) if o.numel() else True
        rows.append((qname, _err(o, t), bound, finite))
    return rows


@dataclass
class Result:
    family: str
    op: str
    backend: str
    dtype: torch.dtype
    err: float
    bound: float
    worst: str
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.err <= self.bound


def family_cases(family: str, quick: bool) -> List[Case]:
    """The parity cases of `family` (geoops.parity.<family>.cases)."""
    return list(importlib.import_module(f"{__name__}.{family}").cases(quick))


def _unavailable_reason(backend: str, device: str, family: str) -> str:
    try:
        with _backend.use_backend(backend):
            _backend.resolve(torch.device(device), family)
    except Exception as e:  # the backend switch explains why
        return str(e).split(": ", 1)[-1]
    return "unavailable"


def run(families: Sequence[str], backends: Sequence[str], devices: Sequence[str],
        dtypes: Sequence[torch.dtype], quick: bool, out=None, log: Callable = print, required: bool = False) -> bool:
    """True when every line passed.  An unavailable backend is reported; with `required` (backends or the
    device named on the command line, as scripts/gpu_check.sh does) it also fails the run."""
    out = sys.stdout if out is None else out
    results: List[Result] = []
    missing: List[str] = []
    for family in families:
        cases = family_cases(family, quick)
        log(f"[{family}] {len(cases)} cases", file=out, flush=True)
        for device in devices:
            for backend in backends:
                if not _backend.available(backend, torch.device(device), family):
                    missing.append(f"{family}:{backend}@{device}")
                    log(f"[{family}] backend {backend} on {device}: not run ({_unavailable_reason(backend, device, family)})",
                        file=out, flush=True)
                    continue
                for dtype in dtypes:
                    by_op: Dict[str, Result] = {}
                    for case in cases:
                        if case.dtypes is not None and dtype not in case.dtypes:
                            continue
                        for q, e, b, fin in check_case(case, backend, dtype, device):
                            r = by_op.get(case.op)
                            ratio = e / b if fin else math.inf
                            if r is None or ratio > (r.err / r.bound if r.finite else math.inf):
                                by_op[case.op] = Result(family, case.op, f"{backend}@{device}", dtype, e, b,
                                                        f"{case.name}:{q}", fin)
                    results += by_op.values()
    w = max([len(r.worst) for r in results] + [10])
    log(f"{'family':<14} {'op':<22} {'backend':<14} {'dtype':<9} {'max err':>10} {'bound':>10}  "
        f"{'worst case':<{w}} ok", file=out)
    for r in results:
        log(f"{r.family:<14} {r.op:<22} {r.backend:<14} {str(r.dtype).replace('torch.', ''):<9} {r.err:10.3e} "
            f"{r.bound:10.3e}  {r.worst:<{w}} {'ok' if r.ok else 'FAIL'}", file=out)
    bad = [r for r in results if not r.ok]
    if missing:
        log(f"\nunavailable{' (required)' if required else ''}: {', '.join(missing)}", file=out)
    # the closing line, which scripts/test.sh reads: keep its form "N passed, N failed"
    log(f"\n{len(results) - len(bad)} passed, {len(bad)} failed", file=out)
    return not bad and bool(results) and not (required and missing)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m geoops.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--backends", default=None,
                   help="comma-separated (default cpp,triton,cuda: unavailable ones are reported; named "
                        "explicitly, an unavailable one also fails the run)")
    p.add_argument("--dtypes", default="float64,float32,float16,bfloat16")
    p.add_argument("--quick", action="store_true", help="fewer cases per family")
    a = p.parse_args(argv)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    if not torch.cuda.is_available():
        if a.device == "cuda":
            p.error("--device cuda: no CUDA device is available")
        devices = [d for d in devices if d != "cuda"]
    dtypes = [getattr(torch, n.strip()) for n in a.dtypes.split(",")]
    required = a.backends is not None
    backends = [b.strip() for b in (a.backends or "cpp,triton,cuda").split(",") if b.strip()]
    import geoops

    print("geoops parity run:", geoops.backend_info(), flush=True)
    if torch.cuda.is_available():
        print("cuda device:", torch.cuda.get_device_name(), flush=True)
    return 0 if run(families, backends, devices, dtypes, a.quick, required=required) else 1
