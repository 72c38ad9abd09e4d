"""Benchmark rows of Kronecker triple attention: geoops vs the eager einsum vs torch.compile(einsum).

FLOP model (GEMM work only): forward 4 * N * M1 * M2 * D per head (dense), (4/3) N^3 D (causal, N = M),
4 * D * sum_i min(i+1, w1) min(i+1, w2) (window (w1, w2): ~4 * N * w1 * w2 * D, less the bands cut by the
sequence start); forward+backward counts 4x the forward (the backward recomputes the scores and runs five more
GEMM-shaped products: dP, dV2, dK2, dS.K2, P.V2).  "limit" is one GEMM in the row's
dtype (torch.mm of 1024 x K by K x 1024: an SGEMM for fp32) with the same FLOP count: 1 / "x limit" is the share
of the machine's measured GEMM rate.  The peer is the eager einsum over the whole (N, M1, M2) score tensor
(geoops.reference.attention); for windows it is an eager banded form (unfold to the (N, w1, w2) band).

    python -m bench --families attention            # quick: N=192 dense, windowed (64,16) N=1024/4096
    python -m bench --families attention --full     # + windowed N=16384, causal N=1024 fwd+bwd (long)
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from ._runner import DTYPE_SHORT, Row, compiled_peer, parse_list, pass_runner

TITLE = "Kronecker triple attention vs eager einsum"
PEER = "einsum"
PEER_MODULES = ()  # import names of the peers (their versions go into the JSON)

FLOP_MODEL = ("GFLOP/s = 4*N*M1*M2*D*B*H (dense; causal /3; window 4*D*B*H*sum_i min(i+1,w1)*min(i+1,w2)) per "
              "forward, "
              "x4 for forward+backward, / geoops time; limit = a GEMM (torch.mm, the row's dtype) with the same FLOPs")


def flops(N: int, D: int, BH: int, causal: bool, window, pass_: str) -> float:
    if window:  # query i sees keys i - w < j <= i: min(i + 1, w1) x min(i + 1, w2) pairs
        pairs = sum(min(i, window[0]) * min(i, window[1]) for i in range(1, N + 1))
        f = 4.0 * pairs * D * BH
    else:
        f = 4.0 * N ** 3 * D * BH / (3.0 if causal else 1.0)
    return f * (4.0 if pass_ == "fwd+bwd" else 1.0)


def banded_eager(q, k1, k2, v1, v2, *, scale, window):
    """Eager windowed triple attention: gather the (w1, w2) band of every query, then dense math on it."""
    w1, w2 = window
    N = q.shape[2]

    def band(t, w):  # (B, H, N, D) -> (B, H, N, w, D): rows i - w + 1 .. i (zero-padded)
        pad = torch.nn.functional.pad(t, (0, 0, w - 1, 0))
        return pad.unfold(2, w, 1).transpose(-1, -2)

    K1, K2, V1, V2 = band(k1, w1), band(k2, w2), band(v1, w1), band(v2, w2)
    i = torch.arange(N, device=q.device).view(N, 1)
    ok1 = (i - w1 + 1 + torch.arange(w1, device=q.device)) >= 0  # (N, w1)
    ok2 = (i - w2 + 1 + torch.arange(w2, device=q.device)) >= 0
    T = torch.einsum("bhnd,bhnjd,bhnkd->bhnjk", q * scale, K1, K2)
    T = T.masked_fill(~(ok1[:, :, None] & ok2[:, None, :]), float("-inf"))
    P = torch.softmax(T.flatten(-2), dim=-1).view_as(T)
    return torch.einsum("bhnjk,bhnje,bhnke->bhne", P, V1, V2)


def add_arguments(parser):
    parser.add_argument("--attention-n", default=None,
                        help="attention: comma list of N for the windowed rows (default 1024,4096; --full adds 16384)")


OP_NAMES = ("triple_attention",)  # the ops --ops may name
_compiled: Dict[str, Callable] = {}
_GEMM = {torch.float32: "SGEMM", torch.float64: "DGEMM", torch.bfloat16: "bf16 GEMM", torch.float16: "HGEMM"}


def rows(args, device: torch.device):
    if not parse_list(args.ops, OP_NAMES, OP_NAMES, "op"):
        return
    full = args.mode == "full"
    dtypes = args.dtypes or (torch.float32,)
    wn = tuple(int(v) for v in args.attention_n.split(",")) if getattr(args, "attention_n", None) else (
        (1024, 4096, 16384) if full else (1024, 4096))
    configs = [dict(N=192, D=64, B=1, H=2, causal=False, window=None)]
    configs += [dict(N=n, D=64, B=1, H=2, causal=True, window=(64, 16)) for n in wn]
    if full:
        configs.append(dict(N=1024, D=64, B=1, H=2, causal=True, window=None))
    for dtype in dtypes:
        for c in configs:
            for pass_ in args.passes:
                label = f"window{c['window']}" if c["window"] else ("causal" if c["causal"] else "dense")
                yield Row(family="attention", op="triple_attention", pass_=pass_,
                          shape=[c["B"], c["H"], c["N"], c["D"]], dtype=DTYPE_SHORT[dtype], label=label,
                          setup=_setup(c, pass_, dtype, device, args),
                          work=flops(c["N"], c["D"], c["B"] * c["H"], c["causal"], c["window"], pass_),
                          unit="GFLOP/s", limit=f"{_GEMM.get(dtype, 'GEMM')} (torch.mm), same FLOPs", peer=PEER,
                          check_tol=1e-9 if dtype == torch.float64 else 2e-3)


def _eager_bytes(c, dtype) -> float:
    n = c["N"] * (c["window"][0] * c["window"][1] if c["window"] else c["N"] ** 2)
    return 3.0 * n * c["B"] * c["H"] * torch.finfo(dtype).bits / 8  # scores, probabilities, a product


def _setup(c, pass_, dtype, device, args):
    def setup():
        from geoops import attention as ga
        from geoops.reference import attention as ref

        g = torch.Generator().manual_seed(0)
        B, H, N, D = c["B"], c["H"], c["N"], c["D"]
        ins = [torch.randn(B, H, N, D, generator=g).to(device=device, dtype=dtype) for _ in range(5)]
        if pass_ == "fwd+bwd":
            ins = [t.requires_grad_(True) for t in ins]
        gout = torch.randn(B, H, N, D, generator=g).to(device=device, dtype=dtype)
        kw = dict(causal=c["causal"], window=c["window"])
        scale = D ** -0.5

        def ours(*a):
            return ga.triple_attention(*a, **kw)

        if c["window"]:
            def peer(*a):
                return banded_eager(*a, scale=scale, window=c["window"])
        else:
            def peer(*a):
                return ref.triple_attention(*a, scale=scale, causal=c["causal"])

        work = flops(N, D, B * H, c["causal"], c["window"], "fwd") * (4 if pass_ == "fwd+bwd" else 1)
        kdim = max(1, int(round(work / (2.0 * 1024 * 1024))))
        la = torch.randn(1024, kdim, generator=g).to(device=device, dtype=dtype)
        lb = torch.randn(kdim, 1024, generator=g).to(device=device, dtype=dtype)
        calls = {"geoops": ours, "limit": None}
        skipped = {}
        need = _eager_bytes(c, dtype) * (3 if pass_ == "fwd+bwd" else 1)
        if need > 6e9:
            skipped["peer"] = skipped["compiled"] = f"n/a: the eager form needs ~{need / 2**30:.0f} GiB"
        else:
            calls["peer"] = peer
            comp = compiled_peer(_compiled, f"{c}", peer, args.no_compile, skipped)
            if comp is not None:
                calls["compiled"] = comp

        fns = {name: pass_runner(fn, ins, pass_, gout) for name, fn in calls.items() if fn is not None}
        fns["limit"] = lambda: torch.mm(la, lb)
        check = None
        if pass_ == "fwd" and "peer" in calls:
            def check():
                with torch.no_grad():
                    return ours(*ins), calls["peer"](*ins)
        return fns, check, skipped

    return setup
