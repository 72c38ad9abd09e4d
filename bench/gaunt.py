"""Benchmark of geoops.gaunt: every route and "auto" vs e3nn's TensorProduct and the unfused torch grid route.

    python -m bench.gaunt                      # lmax 1..8, 2048 rows x 16 channels, fp32, fwd and fwd+bwd
    python -m bench.gaunt --lmax 2,4,6 --no-bwd
    python -m bench.gaunt --write-routes       # also regenerate this CPU class's "auto" tables (geoops/_gaunt_routes.py)
    python -m bench.gaunt --cpu-time --no-wall --write-routes --no-e3nn   # the same by 1-thread CPU time: the
                                               # forward and the forward+backward rankings (--rank, --stat)
    python -m bench.gaunt --device cuda --write-routes --repeats 9   # the GPU's table (its compute capability's
                                               # class, e.g. "cuda-sm90"), wall clock; scripts/gpu_check.sh runs it

L1 = L2 = lmax_out = lmax.  Contenders run interleaved (bench/_timing.py), median of --repeats samples after
warm-up.  e3nn computes the same Gaunt product: TensorProduct(C x (0e+1o+...), ..., "uuu" paths with path
weights G^2, irrep_normalization="none", path_normalization="none").  Many-body: nu = 3 (gaunt_power(x, 3))
at --many-lmax vs two chained binary products (truncated to lmax_out only at the end, exact).
Rows of `python -m geoops.bench`: also `gaunt_forces` (--gaunt-forces-lmax, default 2,4,6): the double backward of
a forces loop (E = sum(c * out), forces = dE/dx1 with create_graph, |forces|^2 backpropagated), auto vs e3nn.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import time
from pathlib import Path

import torch

import geoops
from geoops._ops import gaunt as impl
from geoops import gaunt as ga
from geoops.reference import gaunt as R

from ._runner import DTYPE_SHORT, Row, parse_list
from ._timing import interleaved, round_order

TITLE = "Gaunt tensor product (L1 = L2 = lmax_out) vs e3nn TensorProduct"
PEER = "e3nn"
PEER_MODULES = ("e3nn",)  # import names of the peers (their versions go into the JSON)
OP_NAMES = ("gaunt_tensor_product", "gaunt_forces")  # the ops --ops may name
ROUTES = ("grid", "grid_gemm", "direct", "fft")
ROOT = Path(__file__).resolve().parent.parent


def e3nn_gaunt_tp(L: int, C: int):
    """e3nn's TensorProduct computing the Gaunt product of degrees <= L, C channels ("uuu")."""
    from e3nn import o3

    irr = o3.Irreps([(C, (l, (-1) ** l)) for l in range(L + 1)])
    G = R.gaunt_coefficients(L, L, L)
    instr = []
    for l1 in range(L + 1):
        for l2 in range(L + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, L) + 1):
                if (l1 + l2 + l3) % 2 == 0:
                    g = G[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2].norm().item()
                    instr.append((l1, l2, l3, "uuu", False, g * g))
    return o3.TensorProduct(irr, irr, irr, instr, irrep_normalization="none", path_normalization="none")


def to_e3nn_layout(x: torch.Tensor) -> torch.Tensor:
    """[B, C, (L+1)^2] -> e3nn's [B, sum_l C (2l+1)] (mul-major blocks per degree)."""
    L = R.lmax_of(x.shape[-1])
    return torch.cat([x[..., l * l:(l + 1) ** 2].reshape(x.shape[0], -1) for l in range(L + 1)], -1).contiguous()


def e3nn_out_weight(w: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
    """weight_out (C, L + 1) as one row of e3nn's layout, (1, sum_l C (2l+1)), broadcast over the batch."""
    return to_e3nn_layout(w[:, deg].unsqueeze(0))


def _fwd_bwd(fn, inputs):
    def run():
        for t in inputs:
            t.grad = None
        out = fn()
        out.backward(torch.ones_like(out))
    return run


def measure(L: int, rows: int, C: int, dtype, *, bwd: bool, repeats: int, with_e3nn: bool = True):
    g = torch.Generator().manual_seed(L)
    n = (L + 1) ** 2
    x1 = torch.randn(rows, C, n, generator=g).to(dtype)
    x2 = torch.randn(rows, C, n, generator=g).to(dtype)
    res = {}
    for mode in (("fwd", "fwd+bwd") if bwd else ("fwd",)):
        need = mode == "fwd+bwd"
        a, b = x1.clone().requires_grad_(need), x2.clone().requires_grad_(need)
        fns = {}
        for route in ("auto",) + ROUTES:
            f = (lambda r=route: ga.gaunt_tensor_product(a, b, L, route=r))
            fns[route] = _fwd_bwd(f, (a, b)) if need else f
        ra, rb = a.detach().reshape(-1, n).contiguous(), b.detach().reshape(-1, n).contiguous()
        if not need:
            fns["torch-grid"] = lambda: impl.grid_torch([ra, rb], [None, None], None, L)
        else:
            ta, tb = ra.clone().requires_grad_(), rb.clone().requires_grad_()
            fns["torch-grid"] = _fwd_bwd(lambda: impl.grid_torch([ta, tb], [None, None], None, L), (ta, tb))
        if with_e3nn:
            tp = e3nn_gaunt_tp(L, C).to(dtype)
            ea = to_e3nn_layout(a.detach()).requires_grad_(need)
            eb = to_e3nn_layout(b.detach()).requires_grad_(need)
            fe = lambda: tp(ea, eb)  # noqa: E731
            fns["e3nn"] = _fwd_bwd(fe, (ea, eb)) if need else fe
        # Two interleaved groups: the routes among themselves, then the peers against "auto".  The peers
        # allocate large temporaries that the allocator returns to the OS, and whichever contender runs next
        # pays the page faults of fresh memory: in one group that was always "auto" (the rotated order puts
        # it after torch-grid), which read 8-160 % slower than the very route it dispatches to.
        routes = {k: fns[k] for k in ("auto",) + ROUTES}
        peers = {k: f for k, f in fns.items() if k not in ROUTES}
        with torch.set_grad_enabled(need):
            t = interleaved(routes, torch.device("cpu"), repeats=repeats, warmup=1)
            tp = interleaved(peers, torch.device("cpu"), repeats=repeats, warmup=1)
        res[mode] = {k: v.median_ms for k, v in t.items()}
        res[mode].update({k: v.median_ms for k, v in tp.items() if k != "auto"})
        res[mode]["auto (peer group)"] = tp["auto"].median_ms
    return res


def measure_many(L: int, rows: int, C: int, dtype, repeats: int):
    g = torch.Generator().manual_seed(100 + L)
    x = torch.randn(rows, C, (L + 1) ** 2, generator=g).to(dtype)
    fns = {}
    for route in ("auto", "grid", "grid_gemm", "fft"):
        fns[f"power3-{route}"] = lambda r=route: ga.gaunt_power(x, 3, L, route=r)
    for route in ("auto",) + ROUTES:
        fns[f"chain2-{route}"] = lambda r=route: ga.gaunt_tensor_product(
            ga.gaunt_tensor_product(x, x, 2 * L, route=r), x, L, route=r)
    t = interleaved(fns, torch.device("cpu"), repeats=repeats, warmup=1)
    return {k: v.median_ms for k, v in t.items()}


# ---------------------------------------------------------------- rows of the neutral runner (python -m bench)
def add_arguments(parser) -> None:
    g = parser.add_argument_group("gaunt")
    g.add_argument("--gaunt-lmax", default=None, help="gaunt: comma list of lmax (default 2,4,6; --full 1..8)")
    g.add_argument("--gaunt-rows", type=int, default=2048, help="gaunt: rows (default 2048; x 16 channels)")
    g.add_argument("--gaunt-channels", type=int, default=16, help="gaunt: channels (default 16)")
    g.add_argument("--gaunt-routes", default=None,
                   help="gaunt: comma list of auto,grid,grid_gemm,direct,fft,torch-grid (default auto; --full all)")
    g.add_argument("--gaunt-forces-lmax", default="2,4,6",
                   help="gaunt: lmax of the forces rows (double backward, auto vs e3nn; '' for none; default 2,4,6)")


def _flops(L: int, rows: int) -> float:
    """FLOPs of the exact-grid route (two evaluations, product, projection): the work the GEMMs do."""
    P = len(R.sphere_grid(3 * L)[0])
    return rows * (2.0 * P * 3 * (L + 1) ** 2 + P)


def rows(args, device: torch.device):
    ops = parse_list(args.ops, OP_NAMES, OP_NAMES, "op")
    full = args.mode == "full"
    Ls = [int(v) for v in args.gaunt_lmax.split(",")] if args.gaunt_lmax else (list(range(1, 9)) if full else [2, 4, 6])
    routes = (args.gaunt_routes.split(",") if args.gaunt_routes else
              (["auto", "grid", "grid_gemm", "direct", "fft", "torch-grid"] if full else ["auto"]))
    dtypes = args.dtypes or (torch.float32,)
    B, C = args.gaunt_rows, args.gaunt_channels
    forces = [int(v) for v in args.gaunt_forces_lmax.split(",") if v.strip()] if args.gaunt_forces_lmax else []
    forces = forces if "gaunt_forces" in ops else []
    Ls = Ls if "gaunt_tensor_product" in ops else []
    for dtype in dtypes:
        if "fwd+bwd" in args.passes and "auto" in routes:
            for L in forces:
                yield Row(family="gaunt", op="gaunt_forces", pass_="fwd+bwd", shape=[B, C, (L + 1) ** 2],
                          dtype=DTYPE_SHORT[dtype], setup=_forces_setup(L, B, C, dtype, device),
                          work=_flops(L, B * C) * 4, unit="GFLOP/s", limit="", peer=PEER,
                          label="auto, double backward")
        for L in Ls:
            for route in routes:
                for pass_ in args.passes:
                    yield Row(family="gaunt", op="gaunt_tensor_product", pass_=pass_, shape=[B, C, (L + 1) ** 2],
                              dtype=DTYPE_SHORT[dtype], setup=_setup(L, B, C, dtype, device, route, pass_, args),
                              work=_flops(L, B * C) * (3 if pass_ == "fwd+bwd" else 1), unit="GFLOP/s",
                              limit="GEMM of the grid route's FLOPs", peer=PEER, label=route,
                              check_tol=1e-9 if dtype == torch.float64 else 1e-4)


def _setup(L, B, C, dtype, device, route, pass_, args):
    def setup():
        g = torch.Generator().manual_seed(L)
        n = (L + 1) ** 2
        need = pass_ == "fwd+bwd"
        x1 = torch.randn(B, C, n, generator=g).to(device=device, dtype=dtype).requires_grad_(need)
        x2 = torch.randn(B, C, n, generator=g).to(device=device, dtype=dtype).requires_grad_(need)
        if route == "torch-grid":
            r1 = x1.detach().reshape(-1, n).requires_grad_(need)
            r2 = x2.detach().reshape(-1, n).requires_grad_(need)
            ours = lambda: impl.grid_torch([r1, r2], [None, None], None, L)  # noqa: E731
            leaves = (r1, r2)
        else:
            ours = lambda: ga.gaunt_tensor_product(x1, x2, L, route=route)  # noqa: E731
            leaves = (x1, x2)
        P = len(R.sphere_grid(3 * L)[0])
        a = torch.randn(B * C, 3 * n, device=device, dtype=dtype).requires_grad_(need)
        w = torch.randn(3 * n, P, device=device, dtype=dtype).requires_grad_(need)
        limit = lambda: a @ w  # noqa: E731  (same FLOPs as the grid route's conversions)
        # fwd+bwd: the GEMM's forward and backward (dA, dW: 3x its FLOPs, like the row's work model)
        fns = {"geoops": _fwd_bwd(ours, leaves) if need else ours, "limit": _fwd_bwd(limit, (a, w)) if need else limit}
        skipped = {}
        check = None
        if route != "auto":
            skipped["peer"] = skipped["compiled"] = "timed in the auto row"
        else:
            try:
                tp = e3nn_gaunt_tp(L, C).to(device=device, dtype=dtype)
            except ImportError:
                tp = None
                skipped["peer"] = skipped["compiled"] = "n/a: e3nn is not installed"
            if tp is not None:
                ea = to_e3nn_layout(x1.detach()).requires_grad_(need)
                eb = to_e3nn_layout(x2.detach()).requires_grad_(need)
                pe = lambda: tp(ea, eb)  # noqa: E731
                fns["peer"] = _fwd_bwd(pe, (ea, eb)) if need else pe
                skipped["compiled"] = "skipped: e3nn compiles its own fx code (torch.compile of it takes minutes)"
                if not need:
                    def check():
                        with torch.no_grad():
                            return to_e3nn_layout(ours()), pe()
        return fns, check, skipped

    return setup


def _forces_setup(L, B, C, dtype, device):
    """The double backward of interatomic potentials: x1 depends on positions, E = sum(c * out) with out = x1 (x)
    x2 (weight_out per channel and degree, learnable), forces = dE/dx1 with create_graph=True, then the loss
    |forces|^2 backpropagated to x2 and weight_out (training on forces).  geoops `auto` vs e3nn's TensorProduct
    computing the same Gaunt product (its output times the same per-degree weight).  The work column counts ~4
    grid-route products (forward, grad x1, the backward of grad x1)."""
    def setup():
        g = torch.Generator().manual_seed(L)
        n = (L + 1) ** 2
        pos = torch.randn(B, C, n, generator=g).to(device=device, dtype=dtype).requires_grad_()
        x2 = torch.randn(B, C, n, generator=g).to(device=device, dtype=dtype).requires_grad_()
        wo = torch.randn(C, L + 1, generator=g).to(device=device, dtype=dtype).requires_grad_()
        c = torch.randn(B, C, n, generator=g).to(device=device, dtype=dtype)
        deg = R.degree_of_index(L).to(device)

        def step(prod, p, b, w, cc):
            def run():
                for t in (p, b, w):
                    t.grad = None
                x1 = p * 1.0  # position-dependent features (a non-leaf, as a model's would be)
                E = (prod(x1, b, w) * cc).sum()
                f, = torch.autograd.grad(E, x1, create_graph=True)
                (f * f).sum().backward()
                return f
            return run

        fns = {"geoops": step(lambda a, b, w: ga.gaunt_tensor_product(a, b, L, weight_out=w), pos, x2, wo, c)}
        skipped = {"compiled": "skipped: e3nn compiles its own fx code (torch.compile of it takes minutes)"}
        check = None
        try:
            tp = e3nn_gaunt_tp(L, C).to(device=device, dtype=dtype)
        except ImportError:
            tp = None
            skipped["peer"] = "n/a: e3nn is not installed"
        if tp is not None:
            epos = to_e3nn_layout(pos.detach()).requires_grad_()
            ex2 = to_e3nn_layout(x2.detach()).requires_grad_()
            ewo = wo.detach().clone().requires_grad_()
            ec = to_e3nn_layout(c)
            peer = step(lambda a, b, w: tp(a, b) * e3nn_out_weight(w, deg), epos, ex2, ewo, ec)
            fns["peer"] = peer
            if L > 4:  # the check runs both once more: at lmax 6 e3nn's step takes seconds (the tests compare
                return fns, None, skipped  # the double backward with an fp64 oracle)

            def check():
                ours = fns["geoops"]()
                grads = (to_e3nn_layout(ours.detach()), to_e3nn_layout(x2.grad), wo.grad)
                theirs = peer()
                return torch.cat([t.reshape(-1) for t in grads]), torch.cat(
                    [t.detach().reshape(-1) for t in (theirs, ex2.grad, ewo.grad)])
        return fns, check, skipped

    return setup


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_ms_interleaved(calls: dict, repeats: int) -> dict:
    """Process CPU time (ms) of each call, the contenders interleaved (each round in the runner's round order:
    positions and predecessors vary) after one warm-up call each: {name: (min, median)} over `repeats` rounds."""
    import statistics

    for fn in calls.values():
        fn()
    samples = {k: [] for k in calls}
    for r in range(repeats):
        for k in round_order(list(calls), r):
            fn = calls[k]
            t0 = time.process_time()
            fn()
            samples[k].append((time.process_time() - t0) * 1e3)
    return {k: (min(v), statistics.median(v)) for k, v in samples.items()}


def _route_calls(L: int, rows: int, C: int, dtype, device, many: bool, bwd: bool) -> dict:
    """{route: call} of the route rankings at lmax L (rows x C, seeded by L): binary products, or nu = 3 powers
    (many); bwd: each call runs forward + backward (inputs requiring grad, out.backward(ones))."""
    g = torch.Generator().manual_seed(L)
    x1 = torch.randn(rows, C, (L + 1) ** 2, generator=g).to(device=device, dtype=dtype).requires_grad_(bwd)
    x2 = torch.randn(rows, C, (L + 1) ** 2, generator=g).to(device=device, dtype=dtype).requires_grad_(bwd)
    if many:
        calls = {r: (lambda r=r: ga.gaunt_power(x1, 3, L, route=r)) for r in ("grid", "grid_gemm", "fft")}
    else:
        calls = {r: (lambda r=r: ga.gaunt_tensor_product(x1, x2, L, route=r)) for r in ROUTES}
    return {r: _fwd_bwd(f, (x1, x2)) for r, f in calls.items()} if bwd else calls


def cpu_time_routes(Ls, rows: int, C: int, dtype, repeats: int = 3, threads: int = 1, many: bool = False,
                    bwd: bool = False, stat: str = "min"):
    """Route ranking by process CPU time (robust when other jobs share the cores): {L: {route: ms}}.

    The minimum (stat="min") or median (stat="median") over the samples, single-threaded by default: wall-clock
    medians on a loaded machine swing by several x, CPU time of one thread much less; the routes parallelise alike
    over row tiles, so the ranking carries over.  bwd=True times forward + backward (every input requires grad,
    out.backward(ones)): the ranking `auto` reads when a call will need a backward.
    """
    out = {}
    with _threads(threads):
        for L in Ls:
            calls = _route_calls(L, rows, C, dtype, torch.device("cpu"), many, bwd)
            with torch.set_grad_enabled(bwd):
                res = {route: v[0 if stat == "min" else 1] for route, v in cpu_ms_interleaved(calls, repeats).items()}
            out[L] = res
            print(f"{'nu=3 ' if many else ''}lmax {L} {'fwd+bwd' if bwd else 'fwd'} cpu-time ({threads} thread, "
                  f"{stat}): " + "  ".join(f"{k}={v:.2f}" for k, v in res.items()), flush=True)
    return out


def cpu_time_vs_e3nn(Ls, rows: int, C: int, dtype, repeats: int = 3, threads: int = 1):
    """auto, the unfused torch grid route and e3nn, fwd and fwd+bwd, by process CPU time (contenders
    interleaved, median of `repeats` rounds)."""
    out = {}
    with _threads(threads):
        for L in Ls:
            g = torch.Generator().manual_seed(L)
            n = (L + 1) ** 2
            x1 = torch.randn(rows, C, n, generator=g).to(dtype)
            x2 = torch.randn(rows, C, n, generator=g).to(dtype)
            a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
            r1, r2 = x1.reshape(-1, n), x2.reshape(-1, n)
            tr1, tr2 = r1.clone().requires_grad_(), r2.clone().requires_grad_()
            tp = e3nn_gaunt_tp(L, C).to(dtype)
            e1, e2 = to_e3nn_layout(x1), to_e3nn_layout(x2)
            te1, te2 = e1.clone().requires_grad_(), e2.clone().requires_grad_()
            calls = {
                "auto fwd": lambda: ga.gaunt_tensor_product(x1, x2, L),
                "auto fwd+bwd": _fwd_bwd(lambda: ga.gaunt_tensor_product(a, b, L), (a, b)),
                "torch-grid fwd": lambda: impl.grid_torch([r1, r2], [None, None], None, L),
                "torch-grid fwd+bwd": _fwd_bwd(lambda: impl.grid_torch([tr1, tr2], [None, None], None, L),
                                               (tr1, tr2)),
                "e3nn fwd": lambda: tp(e1, e2),
                "e3nn fwd+bwd": _fwd_bwd(lambda: tp(te1, te2), (te1, te2)),
            }
            # interleaved rounds; the medians (the minima are in the json)
            t = cpu_ms_interleaved(calls, repeats)
            res = {k: v[1] for k, v in t.items()}
            res.update({f"{k} min": v[0] for k, v in t.items()})
            res["x e3nn fwd"] = res["e3nn fwd"] / res["auto fwd"]
            res["x e3nn fwd+bwd"] = res["e3nn fwd+bwd"] / res["auto fwd+bwd"]
            out[L] = res
            print(f"lmax {L} cpu-time ({threads} thread, ms): " + "  ".join(f"{k}={v:.2f}" for k, v in res.items()),
                  flush=True)
    return out


def cpu_time_many(L: int, rows: int, C: int, dtype, repeats: int = 3, threads: int = 1, bwd: bool = False):
    """nu = 3 (gaunt_power(x, 3, L)) against two chained binary products (intermediate degree 2L, truncated to L
    only at the end: exact), by process CPU time, interleaved: {name: (min, median)} ms.  bwd=True: forward +
    backward (x requires grad)."""
    g = torch.Generator().manual_seed(100 + L)
    x = torch.randn(rows, C, (L + 1) ** 2, generator=g).to(dtype).requires_grad_(bwd)
    calls = {f"power3-{r}": (lambda r=r: ga.gaunt_power(x, 3, L, route=r)) for r in ("auto", "grid", "fft")}
    for r in ("auto", "grid", "direct", "fft"):
        calls[f"chain2-{r}"] = lambda r=r: ga.gaunt_tensor_product(ga.gaunt_tensor_product(x, x, 2 * L, route=r), x,
                                                                    L, route=r)
    if bwd:
        calls = {k: _fwd_bwd(f, (x,)) for k, f in calls.items()}
    with _threads(threads), torch.set_grad_enabled(bwd):
        t = cpu_ms_interleaved(calls, repeats)
    print(f"nu=3 vs chained, lmax {L} {'fwd+bwd' if bwd else 'fwd'} cpu-time ({threads} thread, min / median ms): "
          + "  ".join(f"{k}={v[0]:.2f}/{v[1]:.2f}" for k, v in t.items()), flush=True)
    return t


def device_routes(Ls, rows: int, C: int, dtype, device: torch.device, repeats: int = 15, many: bool = False,
                  bwd: bool = False):
    """Route ranking on a GPU by wall clock (device synchronised around each sample, routes interleaved, median of
    `repeats` samples after a warm-up call that compiles the kernels): {L: {route: ms}}.  The shape of the CPU
    tables (rows x C, L1 = L2 = lmax_out; many = nu 3); bwd=True: forward + backward (out.backward(ones))."""
    out = {}
    for L in Ls:
        calls = _route_calls(L, rows, C, dtype, device, many, bwd)
        with torch.set_grad_enabled(bwd):
            for f in calls.values():
                f()  # compile every route's kernels before the clock
            res = {k: v.median_ms for k, v in interleaved(calls, device, repeats=repeats, warmup=2).items()}
        out[L] = res
        print(f"{'nu=3 ' if many else ''}lmax {L} {'fwd+bwd' if bwd else 'fwd'} {device} wall ms (median of "
              f"{repeats}): " + "  ".join(f"{k}={v:.4f}" for k, v in res.items()), flush=True)
    return out


def write_routes(table: dict, many: dict, path: Path, how: str = "", table_bwd: dict = None, many_bwd: dict = None,
                 how_bwd: str = "", device: torch.device = None):
    """Write this machine's route tables (its CPU class, geoops._backend.cpu_class(), or `device`'s class:
    geoops._backend.device_class(), "cuda-sm90", ...) into geoops/_gaunt_routes.py.

    Two rankings per class and kind: "binary" / "many" by the forward time, "binary_fwd_bwd" / "many_fwd_bwd" by
    forward + backward (what `auto` reads when the call will need a backward).  The other classes' tables stay as
    they were measured; degrees (and rankings) this run did not measure keep their entry from this class's current
    table (a run with --lmax 4,6, --no-bwd or the wall-clock run's single many-body lmax must not drop the rest)."""
    from geoops import _backend, _gaunt_routes
    cls = _backend.device_class(device) if device is not None else _backend.cpu_class()
    tables = {k: {kind: dict(t) for kind, t in v.items()} for k, v in _gaunt_routes.TABLES.items()}
    measured = dict(_gaunt_routes.MEASURED)
    measured_bwd = dict(getattr(_gaunt_routes, "MEASURED_FWD_BWD", {}))
    old = tables.get(cls, {})
    model = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else _cpu_model()
    stamp = f"{_dt.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {model}, "
    new = dict(old)
    for kind, t in (("binary", table), ("many", many), ("binary_fwd_bwd", table_bwd or {}),
                    ("many_fwd_bwd", many_bwd or {})):
        if t or kind in ("binary", "many"):
            new[kind] = dict(sorted({**old.get(kind, {}), **t}.items()))
    tables[cls] = new
    if table or many:
        measured[cls] = stamp + (how or f"{torch.get_num_threads()} threads, wall clock")
    if table_bwd or many_bwd:
        measured_bwd[cls] = stamp + (how_bwd or how or f"{torch.get_num_threads()} threads, wall clock")
    lines = ['"""Route tables of geoops.gaunt\'s route="auto" (generated by `python -m bench.gaunt --write-routes`; '
             'do not edit).', "",
             "TABLES[class][kind][lmax] = the fastest route measured at that lmax on a machine of that class",
             "(geoops._backend.cpu_class() for the CPU, device_class() for a GPU: \"cuda-sm90\", ...; L1 = L2 = "
             "lmax_out,",
             "nu = 2 or 3).  kind \"binary\" / \"many\" ranks the forward time, \"binary_fwd_bwd\" / "
             "\"many_fwd_bwd\" forward +",
             "backward: `auto` reads those when the call will need a backward (grad mode on and an input or weight",
             "requires grad); a class without them falls back to its forward ranking.  A run rewrites its own "
             "class's",
             "tables (keeping the degrees and rankings it did not measure) and keeps the others as measured.",
             "geoops.gaunt.route_table: the class's table, else (CPU) one of the same architecture and vendor, else",
             "DEFAULT_CLASS's; (CUDA) the nearest measured compute capability, else none (grid).  MEASURED /",
             "MEASURED_FWD_BWD: when, on what, with how many threads.", '"""',
             f"DEFAULT_CLASS = {_gaunt_routes.DEFAULT_CLASS!r}", "MEASURED = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in measured.items()]
    lines += ["}", "MEASURED_FWD_BWD = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in measured_bwd.items()]
    lines += ["}", "TABLES = {"]
    for k, v in tables.items():
        lines += [f"    {k!r}: {{"]
        lines += [f"        \"{kind}\": {v[kind]!r}," for kind in ("binary", "many", "binary_fwd_bwd", "many_fwd_bwd")
                  if kind in v]
        lines += ["    },"]
    lines += ["}", ""]
    path.write_text("\n".join(lines))


def main_device(args, device: torch.device, dtype, Ls):
    """--device DEV: the route rankings on that device by wall clock (binary and nu = 3, forward and forward +
    backward as --rank says), written to its class table with --write-routes (a GPU's: "cuda-sm90", ...)."""
    from geoops import _backend
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gaunt --device cuda: no CUDA device")
    ranks = [r.strip() for r in args.rank.split(",") if r.strip()]
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
               "class": _backend.device_class(device), "rows": args.rows, "channels": args.channels,
               "dtype": args.dtype, "repeats": args.repeats}
    best = {}
    for rank in ranks:
        bwd = rank == "fwd+bwd"
        for many in (False, True):
            key = ("nu3" if many else "binary") + ("_fwd_bwd" if bwd else "")
            results[key] = device_routes(Ls, args.rows, args.channels, dtype, device, args.repeats, many=many,
                                         bwd=bwd)
            best[key] = {L: min(r, key=r.get) for L, r in results[key].items()}
    if args.write_routes:
        how = f"wall clock, median of {args.repeats} synchronised samples, {args.rows} rows x {args.channels} channels"
        write_routes(best.get("binary", {}), best.get("nu3", {}), ROOT / "geoops" / "_gaunt_routes.py", how,
                     best.get("binary_fwd_bwd", {}), best.get("nu3_fwd_bwd", {}), how + ", forward + backward",
                     device=device)
        print("wrote geoops/_gaunt_routes.py:", best)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lmax", default="1,2,3,4,5,6,7,8")
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp64"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-bwd", action="store_true")
    p.add_argument("--no-e3nn", action="store_true")
    p.add_argument("--many-lmax", type=int, default=4)
    p.add_argument("--write-routes", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--cpu-time", action="store_true",
                   help="rank the routes by single-thread process CPU time (robust under load); with "
                        "--write-routes the table comes from this ranking")
    p.add_argument("--cpu-time-e3nn", action="store_true",
                   help="auto / unfused torch grid / e3nn, fwd and fwd+bwd, by single-thread CPU time")
    p.add_argument("--cpu-time-many", action="store_true",
                   help="nu = 3 at --many-lmax vs two chained binary products, fwd and fwd+bwd, by 1-thread CPU time")
    p.add_argument("--no-wall", action="store_true", help="skip the wall-clock table (with --cpu-time)")
    p.add_argument("--rank", default="fwd,fwd+bwd",
                   help="with --cpu-time or --device: the rankings to measure (and write with --write-routes): fwd, "
                        "fwd+bwd or both (default); a ranking not measured keeps its table")
    p.add_argument("--device", default=None,
                   help="rank the routes on this device (cuda: the GPU) by wall clock, synchronised, median of "
                        "--repeats (the CPU tables and peers are skipped) and, with --write-routes, write the "
                        "device's class table (geoops._backend.device_class())")
    p.add_argument("--stat", default="min", choices=("min", "median"),
                   help="with --cpu-time: rank by the min (default) or the median of the interleaved rounds")
    args = p.parse_args(argv)
    dtype = torch.float32 if args.dtype == "fp32" else torch.float64
    Ls = [int(s) for s in args.lmax.split(",") if s]
    ranks = [r.strip() for r in args.rank.split(",") if r.strip()]
    if not ranks or any(r not in ("fwd", "fwd+bwd") for r in ranks):  # before either path measures anything
        p.error(f"--rank: comma list of fwd, fwd+bwd; got {args.rank!r}")
    if args.device is not None:
        return main_device(args, torch.device(args.device), dtype, Ls)
    results = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "rows": args.rows, "channels": args.channels, "dtype": args.dtype, "lmax": {}}
    best = {}
    print(f"{TITLE}: {args.rows} rows x {args.channels} channels, {args.dtype}, median of {args.repeats} (ms)")
    for L in ([] if args.no_wall else Ls):
        r = measure(L, args.rows, args.channels, dtype, bwd=not args.no_bwd, repeats=args.repeats,
                    with_e3nn=not args.no_e3nn)
        results["lmax"][L] = r
        best[L] = min(ROUTES, key=lambda k: r["fwd"][k])
        for mode, t in r.items():
            e = t.get("e3nn")
            cells = "  ".join(f"{k}={v:8.3f}" for k, v in t.items())
            ratio = f"  auto vs e3nn {e / t.get('auto (peer group)', t['auto']):6.1f}x" if e else ""
            print(f"lmax {L} {mode:8s} {cells}{ratio}", flush=True)
    if args.many_lmax and not args.no_wall:
        m = measure_many(args.many_lmax, args.rows, args.channels, dtype, args.repeats)
        results["many_body"] = {"lmax": args.many_lmax, "nu": 3, "ms": m}
        print(f"many-body nu=3 lmax {args.many_lmax}: " + "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
    if args.cpu_time:
        ck = dict(repeats=args.repeats, stat=args.stat)
        if "fwd" in ranks:
            results["cpu_time_1thread"] = cpu_time_routes(Ls, args.rows, args.channels, dtype, **ck)
            best = {L: min(r, key=r.get) for L, r in results["cpu_time_1thread"].items()}
            results["cpu_time_1thread_nu3"] = cpu_time_routes(Ls, args.rows, args.channels, dtype, many=True, **ck)
        else:
            best = {}
        if "fwd+bwd" in ranks:
            results["cpu_time_1thread_fwd_bwd"] = cpu_time_routes(Ls, args.rows, args.channels, dtype, bwd=True, **ck)
            results["cpu_time_1thread_nu3_fwd_bwd"] = cpu_time_routes(Ls, args.rows, args.channels, dtype, many=True,
                                                                      bwd=True, **ck)
    if args.cpu_time_many:
        results["cpu_time_many"] = {m: cpu_time_many(args.many_lmax or 4, args.rows, args.channels, dtype,
                                                     args.repeats, bwd=m == "fwd+bwd")
                                    for m in (("fwd",) if args.no_bwd else ("fwd", "fwd+bwd"))}
    if args.cpu_time_e3nn:
        results["cpu_time_vs_e3nn"] = cpu_time_vs_e3nn(Ls, args.rows, args.channels, dtype, args.repeats)
    if args.write_routes:
        many, best_bwd, many_bwd = {}, {}, {}
        if args.cpu_time:
            many = {L: min(r, key=r.get) for L, r in results.get("cpu_time_1thread_nu3", {}).items()}
            best_bwd = {L: min(r, key=r.get) for L, r in results.get("cpu_time_1thread_fwd_bwd", {}).items()}
            many_bwd = {L: min(r, key=r.get) for L, r in results.get("cpu_time_1thread_nu3_fwd_bwd", {}).items()}
        else:
            if "many_body" in results:
                mm = results["many_body"]["ms"]
                many = {args.many_lmax: min(("grid", "grid_gemm", "fft"), key=lambda k: mm[f"power3-{k}"])}
            best_bwd = {L: min(ROUTES, key=lambda k: r["fwd+bwd"][k])
                        for L, r in results["lmax"].items() if "fwd+bwd" in r}
        how = (f"1 thread, process CPU time ({args.stat} of {args.repeats} interleaved rounds)" if args.cpu_time
               else "")
        how_bwd = (f"1 thread, process CPU time, forward + backward ({args.stat} of {args.repeats} interleaved "
                   "rounds)" if args.cpu_time else "")
        write_routes(best, many, ROOT / "geoops" / "_gaunt_routes.py", how, best_bwd, many_bwd, how_bwd)
        print("wrote geoops/_gaunt_routes.py:", best, many, "fwd+bwd:", best_bwd, many_bwd)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
