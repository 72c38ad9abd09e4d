"""Benchmark rows of the kappa-stereographic family: geoops vs geoopt vs torch.compile(geoopt).

Inputs, the contenders' calls, the "limit" op (the simplest torch op with the same inputs and
output: x + y, x.neg(), r * x, einsum('nd,nd->n') (a dot per row), linalg.vector_norm) and the byte model; shared by
``python -m bench`` (through :func:`rows`) and ``bench/bench_stereographic.py`` so that both time
exactly the same work.

    python -m bench --families stereographic            # quick: 7 ops, N=2^18 x D=64, fp32
    python -m bench --families stereographic --full     # all 11 ops, D in {16, 64, 256}, fp32/fp64/bf16
    python -m bench --families stereographic --short-rows   # the six target ops at 2^20 x D, D in {2,5,10,16}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ._runner import DTYPE_SHORT, HALF, PASSES, Row, compiled_peer, parse_list

TITLE = "kappa-stereographic ops (k = -1) vs geoopt"
PEER = "geoopt"
PEER_MODULES = ("geoopt",)  # import names of the peers (their versions go into the JSON)


@dataclass(frozen=True)
class OpSpec:
    name: str
    args: Tuple[str, ...]  # positional tensor arguments, in call order, as keys of the inputs dict
    scalar_out: bool  # one value per row (dist, dist0, lambda_x)
    limit: str  # "add" | "neg" | "mul" | "vecdot" | "norm"

    @property
    def grad_args(self) -> Tuple[str, ...]:
        """Inputs that require grad in the fwd+bwd pass (r, like k, does not)."""
        return tuple(a for a in self.args if a != "r")


# Same order as geoopt's stereographic math module.
OPS: Dict[str, OpSpec] = {
    s.name: s
    for s in (
        OpSpec("project", ("x",), False, "neg"),
        OpSpec("lambda_x", ("x",), True, "norm"),
        OpSpec("mobius_add", ("x", "y"), False, "add"),
        OpSpec("mobius_sub", ("x", "y"), False, "add"),
        OpSpec("mobius_scalar_mul", ("r", "x"), False, "mul"),  # reads the per-row r too
        OpSpec("expmap", ("x", "y"), False, "add"),  # y is the tangent vector u
        OpSpec("expmap0", ("x",), False, "neg"),  # x is the tangent vector u
        OpSpec("logmap", ("x", "y"), False, "add"),
        OpSpec("logmap0", ("x",), False, "neg"),  # x is the point y
        OpSpec("dist", ("x", "y"), True, "vecdot"),
        OpSpec("dist0", ("x",), True, "norm"),
    )
}
ALL_OPS = tuple(OPS)
# --quick: one op of each shape of work (two points, one point, tangent input,
# heavy two-point op, per-row scalar input, scalar output).
QUICK_OPS = ("mobius_add", "expmap", "expmap0", "logmap", "logmap0", "dist", "mobius_scalar_mul")
# --short-rows: issue 6's short-row target (the six target ops of the row-wise family at 2^20 x D).
SHORT_OPS = ("mobius_add", "expmap", "expmap0", "logmap", "logmap0", "dist")
SHORT_DIMS = (2, 5, 10, 16)
SHORT_ROWS = 2 ** 20

LIMIT_TEXT = {
    "add": "x + y",
    "neg": "x.neg()",
    "mul": "r * x",
    "vecdot": "einsum('nd,nd->n', x, y)",  # one pass (linalg.vecdot writes x * y first: ~3x its time on CPU)
    "norm": "linalg.vector_norm(x, dim=-1)",
}


# ---------------------------------------------------------------- inputs
def _ball(n: int, d: int, gen: torch.Generator, max_norm: float) -> torch.Tensor:
    """Points with uniformly random directions and norms uniform in [0, max_norm)."""
    v = torch.randn(n, d, generator=gen)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v * (torch.rand(n, 1, generator=gen) * max_norm)


def make_inputs(op: str, n: int, d: int, dtype: torch.dtype, device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Inputs of `op` for k = -1 (unit ball): dict with x[, y][, r] and k, none requiring grad.

    Points lie at norms < 0.9 (project: < 1.2, so some are pulled back); tangent
    vectors (expmap's u, expmap0's u) have norms < 1.5; r is one value per row in [0.5, 2).
    """
    gen = torch.Generator().manual_seed(seed)
    spec = OPS[op]
    out: Dict[str, torch.Tensor] = {}
    if op == "project":
        out["x"] = _ball(n, d, gen, 1.2)
    elif op == "expmap0":
        out["x"] = _ball(n, d, gen, 1.5)
    else:
        out["x"] = _ball(n, d, gen, 0.9)
    if "y" in spec.args:
        out["y"] = _ball(n, d, gen, 1.5 if op == "expmap" else 0.9)
    if "r" in spec.args:
        out["r"] = 0.5 + 1.5 * torch.rand(n, 1, generator=gen)
    out = {key: t.to(device=device, dtype=dtype).contiguous() for key, t in out.items()}
    out["k"] = torch.tensor(-1.0, dtype=dtype, device=device)
    return out


def grad_out(op: str, n: int, d: int, dtype: torch.dtype, device, seed: int = 1) -> torch.Tensor:
    """The fixed upstream gradient for out.backward(g): shape (N,) for scalar-output ops, else (N, D)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if OPS[op].scalar_out else (n, d)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def for_pass(inputs: Dict[str, torch.Tensor], op: str, pass_: str) -> Dict[str, torch.Tensor]:
    """Views of the inputs for one pass: the grad arguments become requires_grad leaves for fwd+bwd."""
    want = set(OPS[op].grad_args) if pass_ == "fwd+bwd" else set()
    return {key: t.detach().requires_grad_(key in want) for key, t in inputs.items()}


# ---------------------------------------------------------------- contenders
def geoops_fn(op: str) -> Callable:
    import geoops.stereographic as gs

    return getattr(gs, op)


def geoopt_fn(op: str) -> Callable:
    import geoopt.manifolds.stereographic.math as gm

    return getattr(gm, op)


def op_call(fn: Callable, op: str) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """inputs dict -> fn(*positional tensors, k=k), with geoopt's signature."""
    names = OPS[op].args

    def call(inp):
        return fn(*(inp[a] for a in names), k=inp["k"])

    return call


def limit_call(op: str) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """The simplest torch op with the same tensor inputs and output shape as `op`."""
    kind = OPS[op].limit
    if kind == "add":
        return lambda inp: inp["x"] + inp["y"]
    if kind == "neg":
        return lambda inp: inp["x"].neg()
    if kind == "mul":
        return lambda inp: inp["r"] * inp["x"]
    if kind == "vecdot":
        return lambda inp: torch.einsum("...d,...d->...", inp["x"], inp["y"])
    if kind == "norm":
        return lambda inp: torch.linalg.vector_norm(inp["x"], dim=-1)
    raise ValueError(kind)


def runner(call: Callable, inp: Dict[str, torch.Tensor], op: str, pass_: str,
           g: Optional[torch.Tensor] = None) -> Callable[[], None]:
    """Zero-argument callable doing one pass.

    fwd:      out = call(inp)  (inputs do not require grad)
    fwd+bwd:  x.grad = y.grad = None; call(inp).backward(g)
    """
    if pass_ == "fwd":
        def run_fwd():
            call(inp)

        return run_fwd
    if g is None:
        raise ValueError("fwd+bwd needs the upstream gradient g")
    leaves = [inp[a] for a in OPS[op].grad_args]

    def run_fwd_bwd():
        for t in leaves:
            t.grad = None
        call(inp).backward(g)

    return run_fwd_bwd


# ---------------------------------------------------------------- byte model
BYTE_MODEL = (
    "bytes = minimum traffic: fwd reads the inputs (x[, y][, per-row r]) and writes the output; "
    "fwd+bwd adds the backward's reads of the inputs and grad_out and its writes of dx[, dy] "
    "(k is a scalar and not counted); GB/s = bytes / geoops time"
)


def byte_model(op: str, n: int, d: int, dtype: torch.dtype, pass_: str) -> int:
    spec = OPS[op]
    e = torch.empty((), dtype=dtype).element_size()
    size = {"x": n * d * e, "y": n * d * e, "r": n * e}
    inputs = sum(size[a] for a in spec.args)
    out = n * e if spec.scalar_out else n * d * e
    total = inputs + out
    if pass_ == "fwd+bwd":
        grads = sum(size[a] for a in spec.grad_args)
        total += inputs + out + grads  # re-read inputs, read grad_out (shaped like out), write grads
    return total


# ---------------------------------------------------------------- rows for the runner
def add_arguments(parser) -> None:
    g = parser.add_argument_group("stereographic")
    g.add_argument("--rows", type=int, default=2 ** 18, help="stereographic: N, the number of vectors (default 2^18)")
    g.add_argument("--dims", default=None, help="stereographic: comma list of D (default 64; --full 16,64,256)")
    g.add_argument("--short-rows", action="store_true",
                   help="stereographic: only the short-row rows: the six target ops at 2^20 x D, D in {2,5,10,16} "
                        "(--dims/--ops/--rows override; no pairwise rows)")
    g.add_argument("--pair-shape", default="2048,2048,64",
                   help="stereographic: N,M,D of the cdist rows (default 2048,2048,64)")
    g.add_argument("--knn-shape", default="8192,8192,10,10",
                   help="stereographic: N,M,D,n of the knn row (default 8192,8192,10,10)")
    g.add_argument("--matvec-shape", default="65536,256,256",
                   help="stereographic: rows, D_in, D_out of the mobius_matvec rows (default 2^16,256,256)")
    g.add_argument("--blockdiag-shapes", default="16384x8x8,16384x16x4,16384x4x32",
                   help="stereographic: mobius_blockdiag_matvec rows, comma list of ROWSxNBLOCKSxBLOCK (square blocks; "
                        "default 16384x8x8,16384x16x4,16384x4x32)")
    g.add_argument("--midpoint-shapes", default="65536x64:0,4096x32x64:1",
                   help="stereographic: weighted_midpoint rows, comma list of SHAPE:REDUCEDIM (default "
                        "65536x64:0,4096x32x64:1: one midpoint of 2^16 points, 4096 midpoints of 32 points)")
    g.add_argument("--compile-nested", choices=("on", "off"), default="on",
                   help="stereographic: torch._dynamo.config.nested_graph_breaks for torch.compile(geoopt) "
                        "(default on: off makes dynamo fall back to eager geoopt at its branches on k)")


def prepare(args, log) -> dict:
    """Once per run: dynamo's nested graph breaks for torch.compile(geoopt); returns notes for the table."""
    if args.no_compile:
        return {}
    import torch._dynamo as dynamo

    # geoopt branches on k (`if torch.all(k_zero): ...` inside its TorchScript helpers). Dynamo cannot trace
    # that, and without nested graph breaks it gives up on the whole op and runs geoopt's TorchScript
    # unchanged, so "compiled" would equal eager geoopt.  With them it compiles the straight-line pieces
    # around each branch: torch.compile's best effort.
    if hasattr(dynamo.config, "nested_graph_breaks"):
        dynamo.config.nested_graph_breaks = args.compile_nested == "on"
    elif args.compile_nested == "on":
        log("note: this torch has no torch._dynamo.config.nested_graph_breaks; "
            "torch.compile(geoopt) falls back to eager geoopt around k-branches")
    return {"compile": f"torch.compile(geoopt_fn, dynamic=False), nested_graph_breaks={args.compile_nested} "
                       "(geoopt branches on k; dynamo compiles the pieces around the branches)"}


try:
    import geoopt  # noqa: F401  (the eager peer; optional, e.g. on a bare GPU machine)

    _HAVE_GEOOPT = True
except ImportError:
    _HAVE_GEOOPT = False

_compiled: Dict[str, Callable] = {}


def rows(args, device: torch.device):
    """One Row per (dtype, D, op, pass); then the pairwise rows (cdist, knn, mobius_matvec)."""
    full = args.mode == "full"
    short = getattr(args, "short_rows", False)
    default_ops = SHORT_OPS if short else (ALL_OPS + PAIR_OPS + TRIPLE_OPS if full else
                                           QUICK_OPS + PAIR_OPS + TRIPLE_OPS)
    ops = parse_list(args.ops, default_ops, OP_NAMES, "op")
    yield from pair_rows(args, device, [o for o in ops if o in PAIR_OPS])
    yield from triple_rows(args, device, [o for o in ops if o in TRIPLE_OPS])
    ops = [o for o in ops if o in OPS]
    dtypes = args.dtypes or ((torch.float32, torch.float64, torch.bfloat16) if full else (torch.float32,))
    dims = tuple(int(v) for v in args.dims.split(",")) if args.dims else (
        SHORT_DIMS if short else ((16, 64, 256) if full else (64,)))
    n = SHORT_ROWS if short and args.rows == 2 ** 18 else args.rows
    for dtype in dtypes:
        for d in dims:
            for op in ops:
                for pass_ in args.passes:
                    yield Row(
                        family="stereographic", op=op, pass_=pass_, shape=[n, d], dtype=DTYPE_SHORT[dtype],
                        setup=_setup(op, pass_, n, d, dtype, device, args), work=byte_model(op, n, d, dtype, pass_),
                        unit="GB/s", limit=LIMIT_TEXT[OPS[op].limit], peer=PEER, check_tol=1e-9 if dtype == torch.float64
                        else 1e-3)


def _setup(op, pass_, n, d, dtype, device, args):
    def setup():
        base = make_inputs(op, n, d, dtype, device)
        inp = for_pass(base, op, pass_)
        g = grad_out(op, n, d, dtype, device) if pass_ == "fwd+bwd" else None
        calls = {"geoops": op_call(geoops_fn(op), op), "limit": limit_call(op)}
        skipped = {}
        if dtype in HALF:
            skipped["peer"] = skipped["compiled"] = "n/a: geoopt does not support half precision"
        elif not _HAVE_GEOOPT:
            skipped["peer"] = skipped["compiled"] = "n/a: geoopt is not installed"
        else:
            calls["peer"] = op_call(geoopt_fn(op), op)
            comp = compiled_peer(_compiled, op, geoopt_fn(op), args.no_compile, skipped)
            if comp is not None:
                calls["compiled"] = op_call(comp, op)
        fns = {name: runner(call, inp, op, pass_, g) for name, call in calls.items()}
        return fns, (_peer_check(calls, inp) if pass_ == "fwd" else None), skipped

    return setup


# ---------------------------------------------------------------- pairwise rows
PAIR_OPS = ("cdist", "knn", "mobius_matvec", "mobius_blockdiag_matvec", "wordnet", "weighted_midpoint", "weighted_midpoint_composed")
PEER_CHUNK = 256  # geoopt's broadcast dist is timed in blocks of this many x rows (same work, bounded memory)


def _pair_points(n, d, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return _ball(n, d, gen, 0.9).to(device=device, dtype=dtype).contiguous()


def pair_rows(args, device, ops):
    dtypes = args.dtypes or (torch.float32,)
    for dtype in dtypes:
        if dtype in HALF:
            continue
        if "cdist" in ops:
            N, M, D = (int(v) for v in args.pair_shape.split(","))
            for pass_ in args.passes:
                flops = 2.0 * N * M * D * (1 if pass_ == "fwd" else 3)
                yield Row(family="stereographic", op="cdist", pass_=pass_, shape=[N, M, D], dtype=DTYPE_SHORT[dtype],
                          setup=_cdist_setup(N, M, D, dtype, device, pass_), work=flops, unit="GFLOP/s",
                          limit="torch.cdist (Euclidean)", peer=f"{PEER} dist broadcast",
                          check_tol=1e-9 if dtype == torch.float64 else 1e-3)
        if "knn" in ops and "fwd" in args.passes:
            N, M, D, n = (int(v) for v in args.knn_shape.split(","))
            yield Row(family="stereographic", op="knn", pass_="fwd", shape=[N, M, D, n], dtype=DTYPE_SHORT[dtype],
                      setup=_knn_setup(N, M, D, n, dtype, device), work=2.0 * N * M * D, unit="GFLOP/s",
                      limit="geoops cdist (full matrix)", peer="topk(geoops cdist)", check_tol=1e-3,
                      label="vs topk(cdist)")
        if "wordnet" in ops and "fwd+bwd" in args.passes and dtype == torch.float32 and _HAVE_GEOOPT \
                and torch.device(device).type == "cpu":
            yield wordnet_row(dtype)
        for op in ("weighted_midpoint", "weighted_midpoint_composed"):
            if op not in ops:
                continue
            for spec in args.midpoint_shapes.split(","):
                shape_s, red_s = spec.split(":")
                shape = [int(v) for v in shape_s.split("x")]
                red = [int(v) for v in red_s.split("+")]
                for pass_ in args.passes:
                    nbytes = midpoint_bytes(shape, red, dtype, pass_)
                    yield Row(family="stereographic", op=op, pass_=pass_, shape=shape, dtype=DTYPE_SHORT[dtype],
                              setup=_midpoint_setup(op, shape, red, dtype, device, pass_, args.no_compile), work=nbytes, unit="GB/s",
                              limit="weighted Euclidean sum einsum(x, w) over reducedim", peer=PEER,
                              label=f"reducedim={red}", check_tol=1e-9 if dtype == torch.float64 else 1e-4)
        if "mobius_matvec" in ops:
            R, Din, Dout = (int(v) for v in args.matvec_shape.split(","))
            for pass_ in args.passes:
                flops = 2.0 * R * Din * Dout * (1 if pass_ == "fwd" else 3)
                yield Row(family="stereographic", op="mobius_matvec", pass_=pass_, shape=[R, Din, Dout],
                          dtype=DTYPE_SHORT[dtype], setup=_matvec_setup(R, Din, Dout, dtype, device, pass_),
                          work=flops, unit="GFLOP/s", limit="x @ m.T", peer=PEER,
                          check_tol=1e-9 if dtype == torch.float64 else 1e-3)

        if "mobius_blockdiag_matvec" in ops:
            for spec in args.blockdiag_shapes.split(","):
                R, nb, b = (int(v) for v in spec.split("x"))
                for pass_ in args.passes:
                    flops = 2.0 * R * nb * b * b * (1 if pass_ == "fwd" else 3)
                    yield Row(family="stereographic", op="mobius_blockdiag_matvec", pass_=pass_, shape=[R, nb, b],
                              dtype=DTYPE_SHORT[dtype], setup=_blockdiag_setup(R, nb, b, dtype, device, pass_),
                              work=flops, unit="GFLOP/s", limit="einsum('rnj,nij->rni', x, W) (per block)",
                              peer="geoops mobius_matvec(block_diag(W))",
                              label="rows, blocks, block size; vs dense mobius_matvec",
                              check_tol=1e-9 if dtype == torch.float64 else 1e-4)

def midpoint_bytes(shape, red, dtype, pass_) -> int:
    """Minimum traffic of weighted_midpoint of points `shape` (..., D) with weights shape[:-1] over dims `red`:
    fwd reads x and w and writes the midpoints; fwd+bwd adds the backward's reads of x, w and grad_out and its
    writes of dx and dw."""
    e = torch.empty((), dtype=dtype).element_size()
    x = math.prod(shape)
    w = math.prod(shape[:-1])
    out = math.prod(v for i, v in enumerate(shape) if i not in {r % len(shape) for r in red})
    return e * ((x + w + out) if pass_ == "fwd" else (3 * x + 3 * w + 2 * out))


def wordnet_row(dtype):
    """One epoch of Poincaré embeddings of the WordNet mammals (bench/wordnet.py): geoopt vs patch_geoopt()."""
    from . import wordnet

    return Row(family="stereographic", op="wordnet", pass_="fwd+bwd", shape=[1182, 10, 64, 10],
               dtype=DTYPE_SHORT[dtype], setup=wordnet.epoch_row_setup, work=0.0, unit="GB/s",
               limit="same loop, Euclidean distance + torch SGD", peer="geoopt RiemannianSGD epoch",
               label=f"epoch at {wordnet.ROW_THREADS} thread{'s' if wordnet.ROW_THREADS > 1 else ''}: nodes, dim, "
                     "batch, negatives")


def _fwd_bwd(call, leaves, g):
    def run():
        for t in leaves:
            t.grad = None
        call().backward(g)

    return run


def _peer_check(calls, *args):
    """The check of a forward row: geoops's and the peer's results on args, under no_grad (None without a peer)."""
    if "peer" not in calls:
        return None

    def check():
        with torch.no_grad():
            return calls["geoops"](*args), calls["peer"](*args)
    return check


def _timed_calls(calls, leaves, g, need):
    """(fns, check) of a row: each call as forward + backward(g) into `leaves` when `need`, else under no_grad;
    check compares geoops with the peer (forward rows only)."""
    if need:
        return {name: _fwd_bwd(c, leaves, g) for name, c in calls.items()}, None

    def nograd(c):
        def run():
            with torch.no_grad():
                return c()
        return run

    return {name: nograd(c) for name, c in calls.items()}, _peer_check(calls)


def _cdist_setup(N, M, D, dtype, device, pass_):
    def setup():
        import geoops.stereographic as gs

        need = pass_ == "fwd+bwd"
        x = _pair_points(N, D, dtype, device, 10).requires_grad_(need)
        y = _pair_points(M, D, dtype, device, 11).requires_grad_(need)
        k = torch.tensor(-1.0, dtype=dtype, device=device)
        g = torch.randn(N, M, generator=torch.Generator().manual_seed(12)).to(device=device, dtype=dtype)
        calls = {"geoops": lambda: gs.cdist(x, y, k=k), "limit": lambda: torch.cdist(x, y)}
        skipped = {"compiled": "n/a: torch.compile of the broadcast peer is not timed for the pairwise rows"}
        if _HAVE_GEOOPT:
            import geoopt.manifolds.stereographic.math as gm

            def peer():
                if need:  # same work as the full broadcast, in blocks of rows: backward per block
                    for i in range(0, N, PEER_CHUNK):
                        gm.dist(x[i:i + PEER_CHUNK, None, :], y[None, :, :], k=k).backward(g[i:i + PEER_CHUNK])
                    return None
                with torch.no_grad():
                    return torch.cat([gm.dist(x[i:i + PEER_CHUNK, None, :], y[None, :, :], k=k)
                                      for i in range(0, N, PEER_CHUNK)])

            calls["peer"] = peer
        else:
            skipped["peer"] = "n/a: geoopt is not installed"
        if need:
            fns = {}
            for name, c in calls.items():
                if name == "peer":
                    def run(c=c):
                        x.grad = y.grad = None
                        c()
                    fns[name] = run
                else:
                    fns[name] = _fwd_bwd(c, [x, y], g)
        else:
            fns = {name: c for name, c in calls.items()}
        return fns, (None if need else _peer_check(calls)), skipped

    return setup


def _knn_setup(N, M, D, n, dtype, device):
    def setup():
        import geoops.stereographic as gs

        x = _pair_points(N, D, dtype, device, 13)
        y = _pair_points(M, D, dtype, device, 14)
        k = torch.tensor(-1.0, dtype=dtype, device=device)

        def full():
            return torch.topk(gs.cdist(x, y, k=k), n, dim=-1, largest=False)

        fns = {"geoops": lambda: gs.knn(x, y, n, k=k), "limit": lambda: gs.cdist(x, y, k=k), "peer": full}
        skipped = {"compiled": "n/a"}

        def check():
            return gs.knn(x, y, n, k=k)[0], full()[0]

        return fns, check, skipped

    return setup


def _matvec_setup(R, Din, Dout, dtype, device, pass_):
    def setup():
        import geoops.stereographic as gs

        need = pass_ == "fwd+bwd"
        x = _pair_points(R, Din, dtype, device, 15).requires_grad_(need)
        m = (torch.randn(Dout, Din, generator=torch.Generator().manual_seed(16)) / Din ** 0.5).to(
            device=device, dtype=dtype).requires_grad_(need)
        k = torch.tensor(-1.0, dtype=dtype, device=device)
        g = torch.randn(R, Dout, generator=torch.Generator().manual_seed(17)).to(device=device, dtype=dtype)
        calls = {"geoops": lambda: gs.mobius_matvec(m, x, k=k), "limit": lambda: x @ m.T}
        skipped = {"compiled": "n/a: not timed for mobius_matvec"}
        if _HAVE_GEOOPT:
            import geoopt.manifolds.stereographic.math as gm

            calls["peer"] = lambda: gm.mobius_matvec(m, x, k=k)
        else:
            skipped["peer"] = "n/a: geoopt is not installed"
        return (*_timed_calls(calls, [x, m], g, need), skipped)

    return setup



def _blockdiag_setup(R, nb, b, dtype, device, pass_):
    """H4G's block-diagonal Moebius matvec: the fused op vs the dense route (mobius_matvec on torch.block_diag of
    the blocks, the peer) and the Euclidean block product (the limit: a batched GEMM over the blocks, the same
    inputs and FLOPs); FLOPs counted for the block-diagonal work."""
    def setup():
        import geoops.stereographic as gs

        need = pass_ == "fwd+bwd"
        x = _pair_points(R, nb * b, dtype, device, 18).requires_grad_(need)
        blocks = (torch.randn(nb, b, b, generator=torch.Generator().manual_seed(19)) / b ** 0.5).to(
            device=device, dtype=dtype).requires_grad_(need)
        dense = torch.block_diag(*blocks.detach()).requires_grad_(need)
        k = torch.tensor(-1.0, dtype=dtype, device=device)
        g = torch.randn(R, nb * b, generator=torch.Generator().manual_seed(20)).to(device=device, dtype=dtype)
        calls = {"geoops": lambda: gs.mobius_blockdiag_matvec(blocks, x, k=k),
                 "peer": lambda: gs.mobius_matvec(dense, x, k=k),
                 "limit": lambda: torch.einsum("rnj,nij->rni", x.view(R, nb, b), blocks).reshape(R, nb * b)}
        skipped = {"compiled": "n/a: not timed for mobius_blockdiag_matvec"}
        return (*_timed_calls(calls, [x, blocks, dense], g, need), skipped)

    return setup

def _midpoint_setup(op, shape, red, dtype, device, pass_, no_compile=False):
    """weighted_midpoint (weights given, k = -1) of points of `shape` over `red`: geoops (op "weighted_midpoint": the
    fused reduction; "weighted_midpoint_composed": the previous composition of row kernels and torch ops), geoopt,
    torch.compile(geoopt), and the weighted Euclidean sum (one einsum contraction) as the byte limit."""
    def setup():
        import geoops.stereographic as gs

        need = pass_ == "fwd+bwd"
        gen = torch.Generator().manual_seed(18)
        D = shape[-1]
        n = 1
        for v in shape[:-1]:
            n *= v
        x = _ball(n, D, gen, 0.9).reshape(shape).to(device=device, dtype=dtype).requires_grad_(need)
        w = (torch.rand(shape[:-1], generator=gen) + 0.1).to(device=device, dtype=dtype).requires_grad_(need)
        k = torch.tensor(-1.0, dtype=dtype, device=device)
        d = len(shape) - 1
        if op == "weighted_midpoint":
            ours = lambda: gs.weighted_midpoint(x, w, k=k, reducedim=red)  # noqa: E731
        else:
            ours = lambda: gs._weighted_midpoint_composed(x, w, k=k, reducedim=red, dim=d, keepdim=False,  # noqa: E731
                                                          lincomb=False, posweight=False)
        # the limit: the weighted Euclidean sum over red as one contraction (reads x once, no x-sized temporary)
        idx = "abcdefgh"[:len(shape)]
        red_n = {r % len(shape) for r in red}
        eq = f"{idx},{idx[:-1]}->{''.join(c for i, c in enumerate(idx) if i not in red_n)}"
        calls = {"geoops": ours, "limit": lambda: torch.einsum(eq, x, w)}
        skipped = {}
        if _HAVE_GEOOPT:
            import geoopt.manifolds.stereographic.math as gm

            def peer_fn(x, w, k):
                return gm.weighted_midpoint(x, weights=w, k=k, reducedim=red)

            calls["peer"] = lambda: peer_fn(x, w, k)
            comp = compiled_peer(_compiled, ("weighted_midpoint", tuple(red)), peer_fn, no_compile, skipped)
            if comp is not None:
                calls["compiled"] = lambda: comp(x, w, k)
        else:
            skipped["peer"] = skipped["compiled"] = "n/a: geoopt is not installed"
        g = torch.randn(ours().shape, generator=torch.Generator().manual_seed(19)).to(device=device, dtype=dtype) \
            if need else None
        return (*_timed_calls(calls, [x, w], g, need), skipped)

    return setup


# ---------------------------------------------------------------- three-vector row ops
# gyration, parallel_transport, dist2plane: fused kernels (csrc/cpu/stereographic_triple.cpp) against geoopt, and
# against the composition geoops ran before them (row label "vs composition": the peer column is that composition).
TRIPLE_OPS = ("gyration", "parallel_transport", "dist2plane")


def _composition(op):
    """The composition of fused row ops and torch ops that geoops.stereographic ran before the fused kernels."""
    import geoops.stereographic as gs
    from geoops.reference import stereographic as ref

    if op == "gyration":
        return lambda a, b, u, k: ref.gyration(a, b, u, k=k)
    if op == "parallel_transport":
        return lambda x, y, v, k: (ref.gyration(y, -x, v, k=k) * gs.lambda_x(x, k=k, keepdim=True)
                                   / gs.lambda_x(y, k=k, keepdim=True))

    def d2p(x, p, a, k):
        diff = gs.mobius_add(-p, x, k=k)
        diff2 = (diff * diff).sum(-1, keepdim=True).clamp_min(1e-15)
        sc = (diff * a).sum(-1, keepdim=True).abs()
        an = a.norm(dim=-1, keepdim=True)
        den = (1 + k * diff2) * an
        den = torch.where(den >= 0, den.clamp_min(1e-15), den.clamp_max(-1e-15))
        return gs.arsin_k(2.0 * sc / den, k).squeeze(-1)

    return d2p


def triple_rows(args, device, ops):
    dtypes = args.dtypes or (torch.float32,)
    dims = tuple(int(v) for v in args.dims.split(",")) if args.dims else (64,)
    for dtype in dtypes:
        if dtype in HALF:
            continue
        e = torch.empty((), dtype=dtype).element_size()
        for d in dims:
            for op in ops:
                for pass_ in args.passes:
                    n = args.rows
                    out = n * (1 if op == "dist2plane" else d) * e
                    work = 3 * n * d * e + out + ((3 * n * d * e + out + 3 * n * d * e) if pass_ == "fwd+bwd" else 0)
                    for vs in ("geoopt", "composition"):
                        yield Row(family="stereographic", op=op, pass_=pass_, shape=[n, d], dtype=DTYPE_SHORT[dtype],
                                  setup=_triple_setup(op, pass_, n, d, dtype, device, vs), work=work, unit="GB/s",
                                  limit="einsum('nd,nd->n', x + y, u)" if op == "dist2plane" else "addcmul(x, y, u)",
                                  peer=PEER if vs == "geoopt" else "geoops composition (before)",
                                  label="" if vs == "geoopt" else "vs composition",
                                  check_tol=1e-9 if dtype == torch.float64 else 1e-3)


def _triple_setup(op, pass_, n, d, dtype, device, vs):
    def setup():
        import geoops.stereographic as gs

        need = pass_ == "fwd+bwd"
        gen = torch.Generator().manual_seed(20)
        x = _ball(n, d, gen, 0.9).to(device=device, dtype=dtype).requires_grad_(need)
        y = _ball(n, d, gen, 0.9).to(device=device, dtype=dtype).requires_grad_(need)
        u = _ball(n, d, gen, 1.0).to(device=device, dtype=dtype).requires_grad_(need)
        k = torch.tensor(-1.0, dtype=dtype, device=device)
        shape = (n,) if op == "dist2plane" else (n, d)
        g = torch.randn(*shape, generator=torch.Generator().manual_seed(21)).to(device=device, dtype=dtype)
        # the limit: one pass reading x, y, u and writing the output (dist2plane: no single torch op reads three
        # rows into a scalar; x + y is an (N, D) temporary there)
        limit = ((lambda: torch.einsum("nd,nd->n", x + y, u)) if op == "dist2plane"
                 else (lambda: torch.addcmul(x, y, u)))
        calls = {"geoops": lambda: getattr(gs, op)(x, y, u, k=k), "limit": limit}
        skipped = {"compiled": "n/a: not timed for the three-vector ops"}
        if vs == "composition":
            comp = _composition(op)
            calls["peer"] = lambda: comp(x, y, u, k)
        elif _HAVE_GEOOPT:
            import geoopt.manifolds.stereographic.math as gm

            calls["peer"] = lambda: getattr(gm, op)(x, y, u, k=k)
        else:
            skipped["peer"] = "n/a: geoopt is not installed"
        return (*_timed_calls(calls, [x, y, u], g, need), skipped)

    return setup


OP_NAMES = ALL_OPS + PAIR_OPS + TRIPLE_OPS  # the ops --ops may name
DTYPES_NOTE = "stereographic: fp16 / bf16 for the row ops only, not the pairwise and three-vector ops"
