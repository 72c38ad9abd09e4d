"""The benchmarked ops: inputs, the contenders' calls, the "limit" op, the byte model.

Shared by ``python -m bench`` and ``bench/bench_stereographic.py`` so that both
time exactly the same work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class OpSpec:
    name: str
    args: Tuple[str, ...]  # positional tensor arguments, in call order, as keys of the inputs dict
    scalar_out: bool  # one value per row (dist, dist0, lambda_x)
    limit: str  # "add" | "neg" | "vecdot" | "norm"

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
        OpSpec("mobius_scalar_mul", ("r", "x"), False, "neg"),
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

LIMIT_TEXT = {
    "add": "x + y",
    "neg": "x.neg()",
    "vecdot": "linalg.vecdot(x, y)",
    "norm": "linalg.vector_norm(x, dim=-1)",
}

HALF = (torch.float16, torch.bfloat16)


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
    if kind == "vecdot":
        return lambda inp: torch.linalg.vecdot(inp["x"], inp["y"])
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


def parse_ops(text: Optional[str], default: Sequence[str]) -> Tuple[str, ...]:
    if not text:
        return tuple(default)
    if text.strip().lower() == "all":
        return ALL_OPS
    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise SystemExit(f"unknown op(s) {', '.join(bad)}; choose from {', '.join(ALL_OPS)} or 'all'")
    return ops


_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}  # fmt: skip

DTYPE_SHORT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def parse_dtypes(text: Optional[str], default: Sequence[str]) -> Tuple[torch.dtype, ...]:
    names = [t.strip().lower() for t in (text.split(",") if text else default) if t.strip()]
    bad = [t for t in names if t not in _DTYPES]
    if bad:
        raise SystemExit(f"unknown dtype(s) {', '.join(bad)}; choose from fp32, fp64, bf16, fp16")
    return tuple(dict.fromkeys(_DTYPES[t] for t in names))
