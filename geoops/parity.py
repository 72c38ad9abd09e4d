"""Numerical-parity run: every available backend against the fp64 reference.

    python -m geoops.parity [--device cpu|cuda|all] [--backends cpp,triton,...] [--quick]

For each op, backend and dtype it evaluates the op and its gradients (w.r.t.
every tensor argument, k included) on a fixed set of cases — random interior
points, points within 1e-3 of the boundary, tiny and zero vectors, several
curvatures of both signs — and compares with ``geoops.reference`` run in
float64 on the same (rounded) inputs.  The tolerance of a dtype is the
low-precision rule of the test-suite:

    max |ours - ref64| <= 2 * max |ref_dtype - ref64| + floor(dtype)

i.e. geoops must be at most twice as far from the truth as the eager
reference computed in the same dtype.  It prints one line per (op, backend,
dtype) with the worst error and the bound it was held to, and exits non-zero
if any line fails.  The pytest suite runs the same cases (tests/test_stereographic.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from . import _backend, _ops
from . import stereographic as gs
from .reference import stereographic as ref

OPS = ("mobius_add", "mobius_sub", "project", "lambda_x", "mobius_scalar_mul", "expmap", "expmap0", "logmap",
       "logmap0", "dist", "dist0")
# Absolute floors (relative to the output's scale) of the low-precision rule.
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CURVATURES = (-1.0, -0.25, -1e-4, 0.0, 1e-4, 0.8)


@dataclass
class Case:
    """Inputs of one op call (fp64 masters; rounded to the dtype under test)."""

    name: str
    op: str
    args: Dict[str, torch.Tensor]  # positional tensors in signature order: x/y/u/r
    k: torch.Tensor
    kwargs: dict

    def call(self, fn: Callable, dtype: torch.dtype, device, grad: bool = False, kdtype=None):
        """fn(*args, k=k, **kwargs) on copies in `dtype` (k and r in `kdtype`); returns (out, leaves)."""
        if kdtype is None:
            kdtype = torch.float64 if dtype == torch.float64 else torch.float32
        leaves = {}
        vals = []
        for n, t in self.args.items():
            v = t.to(device=device, dtype=dtype if n != "r" else kdtype).detach()
            if grad:
                v.requires_grad_(True)
            leaves[n] = v
            vals.append(v)
        kk = self.k.to(device=device, dtype=kdtype).detach()
        if grad:
            kk.requires_grad_(True)
        leaves["k"] = kk
        return fn(*vals, k=kk, **self.kwargs), leaves


def _ball_points(g: torch.Generator, n: int, d: int, k: float, frac) -> torch.Tensor:
    """n points with norms frac * radius (radius 1/sqrt|k|, or 1 for k >= 0)."""
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    radius = 1 / math.sqrt(-k) if k < 0 else 1.0
    return v * (torch.as_tensor(frac, dtype=torch.float64).reshape(-1, 1) * radius)


def make_cases(quick: bool = False, seed: int = 0) -> List[Case]:
    """The parity cases: op x curvature x regime (interior, boundary, tiny, zero, odd D)."""
    g = torch.Generator().manual_seed(seed)
    curv = (-1.0, 0.0, 0.8) if quick else CURVATURES
    cases = []
    for op in OPS:
        spec = _ops.STEREO_OPS[op]
        for kv in curv:
            k = torch.tensor(kv, dtype=torch.float64)
            regimes = {
                "interior": (9, 33, torch.rand(9, generator=g, dtype=torch.float64) * 0.9),
                "odd-D1": (5, 1, torch.rand(5, generator=g, dtype=torch.float64) * 0.9),
                "tiny": (4, 3, torch.tensor([1e-8, 1e-6, 1e-5, 3e-4], dtype=torch.float64)),
            }
            if kv < 0:
                regimes["boundary"] = (6, 16, 1 - torch.tensor([1e-3, 5e-4, 2e-3, 1e-3, 3e-3, 1e-3], dtype=torch.float64))
            for reg, (n, d, frac) in regimes.items():
                x = _ball_points(g, n, d, kv, frac)
                args = {}
                if op == "mobius_scalar_mul":
                    args["r"] = torch.randn(n, 1, generator=g, dtype=torch.float64)
                args["x"] = x
                if spec.has_y:
                    if op == "expmap":  # a tangent vector of moderate length
                        args["y"] = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3
                    else:
                        y = _ball_points(g, n, d, kv, torch.rand(n, generator=g, dtype=torch.float64) * 0.9)
                        if reg == "tiny":  # close pairs: y = x + tiny offset
                            y = x + 1e-7 * torch.randn(n, d, generator=g, dtype=torch.float64)
                        args["y"] = y
                if op == "project":  # scale a few points out of the ball so the projection acts
                    args["x"] = x * torch.tensor([1.5, 1.0, 3.0] * n, dtype=torch.float64)[:n].reshape(-1, 1)
                cases.append(Case(f"{op}/k={kv:g}/{reg}", op, args, k, {}))
            # the zero vector: finite values and gradients
            zero = torch.zeros(2, 5, dtype=torch.float64)
            args = {"x": zero}
            if op == "mobius_scalar_mul":
                args = {"r": torch.tensor([[0.5], [2.0]], dtype=torch.float64), "x": zero}
            elif spec.has_y:
                args["y"] = zero.clone() if op in ("dist", "logmap") else _ball_points(g, 2, 5, kv, [0.3, 0.5])
            cases.append(Case(f"{op}/k={kv:g}/zero", op, args, k, {}))
    return cases


def _grads(out: torch.Tensor, leaves: dict, gout: torch.Tensor) -> Dict[str, torch.Tensor]:
    names = list(leaves)
    gs_ = torch.autograd.grad(out, [leaves[n] for n in names], gout.to(out.dtype), allow_unused=True)
    return {n: (torch.zeros_like(leaves[n]) if v is None else v) for n, v in zip(names, gs_)}


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.double().cpu() - b.double().cpu()).abs().max())


@dataclass
class Result:
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


def check_case(case: Case, backend: str, dtype: torch.dtype, device="cpu") -> List[tuple]:
    """[(quantity, err, bound, finite)] for the output and each gradient of one case."""
    fn_ours = getattr(gs, case.op)
    fn_ref = getattr(ref, case.op)
    # the truth: the reference in float64 on the inputs rounded to `dtype`
    kdt = torch.float64 if dtype == torch.float64 else torch.float32
    if case.op == "project":  # the truth projects with the margin of the dtype under test
        case = Case(case.name, case.op, case.args, case.k, {**case.kwargs, "eps": ref.default_eps(dtype)})
    rounded = Case(case.name, case.op, {n: t.to(dtype if n != "r" else kdt).double() for n, t in case.args.items()},
                   case.k.to(kdt).double(), case.kwargs)
    with _backend.use_backend("reference"):
        out64, l64 = rounded.call(fn_ref, torch.float64, "cpu", grad=True)
        gout = torch.randn(out64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        g64 = _grads(out64, l64, gout)
        outd, ld = case.call(fn_ref, dtype, "cpu", grad=True, kdtype=dtype) if dtype != torch.float64 else (out64, l64)
        gd = _grads(outd, ld, gout) if dtype != torch.float64 else g64
    with _backend.use_backend(backend):
        outo, lo = case.call(fn_ours, dtype, device, grad=True)
        go = _grads(outo, lo, gout.to(device))
    rows = []
    floor = FLOOR[dtype]
    big = torch.finfo(dtype).max
    for qname, o, t, d in [("out", outo, out64, outd)] + [(f"d{n}", go[n], g64[n], gd[n]) for n in g64]:
        o, t, d = o.detach(), t.detach(), d.detach()
        scale = max(1.0, float(t.abs().max()) if t.numel() else 1.0)
        if scale > big / 4:  # the true value overflows this dtype: nothing to compare
            continue
        bound = 2 * _err(d, t) + floor * scale
        # a reference that blows up in low precision does not license garbage: cap at the scale
        bound = min(bound, 0.5 * scale) if dtype != torch.float64 else bound
        finite = bool(torch.isfinite(o).all())
        rows.append((qname, _err(o, t), bound, finite))
    return rows


def run(backends: List[str], devices: List[str], dtypes: List[torch.dtype], quick: bool, out=None,
        required: bool = False) -> bool:
    """Print the parity table; True when every line passed.  A (backend, device) pair that cannot run is
    reported on its own line; with `required` (backends named explicitly) it fails the run."""
    out = sys.stdout if out is None else out
    cases = make_cases(quick)
    results: List[Result] = []
    missing = []
    for device in devices:
        for backend in backends:
            if not _backend.available(backend, torch.device(device)):
                missing.append(f"{backend}@{device}")
                print(f"{backend}@{device}: unavailable ({_why_unavailable(backend, device)})"
                      + ("" if required else "; skipped"), file=out)
                continue
            for dtype in dtypes:
                by_op: Dict[str, Result] = {}
                for case in cases:
                    for q, e, b, fin in check_case(case, backend, dtype, device):
                        r = by_op.get(case.op)
                        ratio = e / b if fin else math.inf
                        if r is None or ratio > (r.err / r.bound if r.finite else math.inf):
                            by_op[case.op] = Result(case.op, f"{backend}@{device}", dtype, e, b, f"{case.name}:{q}", fin)
                results += by_op.values()
    w = max([len(r.worst) for r in results] + [10])
    print(f"{'op':<18} {'backend':<14} {'dtype':<9} {'max err':>10} {'bound':>10}  {'worst case':<{w}} ok", file=out)
    for r in results:
        print(f"{r.op:<18} {r.backend:<14} {str(r.dtype).replace('torch.', ''):<9} {r.err:10.3e} {r.bound:10.3e}  "
              f"{r.worst:<{w}} {'ok' if r.ok else 'FAIL'}", file=out)
    bad = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(bad)} passed, {len(bad)} failed"
          + (f", unavailable: {', '.join(missing)}" if missing else ""), file=out)
    return not bad and bool(results) and not (required and missing)


def _why_unavailable(backend: str, device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if backend == "cuda":
        C = _backend.compiled()
        return "geoops._C is not built" if C is None else "geoops._C was built without CUDA"
    if backend == "triton":
        err = _backend._cache.get("triton_error")
        if err:
            return f"the Triton kernels failed to import: {err}"
        return "Triton runs CUDA tensors, or CPU tensors only under TRITON_INTERPRET=1"
    if backend == "cpp":
        return "geoops._C is not built" if device == "cpu" else "cpp runs CPU tensors only"
    return f"unknown backend (choose from {', '.join(_backend.BACKENDS[1:])})"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m geoops.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--backends", default=None,
                   help="comma-separated (default cpp,triton,cuda: unavailable ones are reported and skipped; "
                        "named explicitly, an unavailable one fails the run)")
    p.add_argument("--dtypes", default="float64,float32,float16,bfloat16")
    p.add_argument("--quick", action="store_true", help="fewer curvatures")
    a = p.parse_args(argv)
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    if not torch.cuda.is_available() and a.device == "all":
        print("cuda: no CUDA device; only the CPU is checked")
        devices = [d for d in devices if d != "cuda"]
    dtypes = [getattr(torch, n) for n in a.dtypes.split(",")]
    required = a.backends is not None or a.device == "cuda"
    backends = [b.strip() for b in (a.backends or "cpp,triton,cuda").split(",") if b.strip()]
    if a.backends is None and a.device == "cuda":
        backends = [b for b in backends if b != "cpp"]
    import geoops

    print("geoops parity run:", geoops.backend_info())
    if torch.cuda.is_available():
        print("cuda device:", torch.cuda.get_device_name())
    return 0 if run(backends, devices, dtypes, a.quick, required=required) else 1


if __name__ == "__main__":
    sys.exit(main())
