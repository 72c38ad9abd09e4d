"""pytest-benchmark cases: geoops vs geoopt, kappa-stereographic ops.

    pytest bench/bench_stereographic.py --benchmark-only
    pytest bench/bench_stereographic.py --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

N = 2^16 vectors of D = 64, float32, k = -1 (tensor, no grad), on CUDA when
available (else CPU); fwd and fwd+bwd (x[, y] require grad, out.backward(g)
with a fixed random g; grads reset to None before each call).  The inputs and
calls are those of ``python -m bench`` (bench/stereographic.py); that runner also
times torch.compile(geoopt) and the elementary "limit" op.
"""
import pytest
import torch

pytest.importorskip("pytest_benchmark")
pytest.importorskip("geoopt")

from . import stereographic as C  # noqa: E402
from ._timing import synchronize  # noqa: E402

N, D = 2 ** 16, 64
DTYPE = torch.float32
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OPS = ("mobius_add", "expmap0", "logmap", "dist")
IMPLS = {"geoops": C.geoops_fn, "geoopt": C.geoopt_fn}
WARMUP = 3  # TorchScript (geoopt) and Triton specialise on their first calls


@pytest.fixture(scope="module")
def inputs():
    cache = {}

    def get(op):
        if op not in cache:
            cache[op] = (C.make_inputs(op, N, D, DTYPE, DEVICE), C.grad_out(op, N, D, DTYPE, DEVICE))
        return cache[op]

    return get


@pytest.mark.parametrize("pass_", C.PASSES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("op", OPS)
def test_stereographic(benchmark, inputs, op, impl, pass_):
    base, g = inputs(op)
    inp = C.for_pass(base, op, pass_)
    run = C.runner(C.op_call(IMPLS[impl](op), op), inp, op, pass_, g)

    if DEVICE.type == "cuda":
        def call():
            run()
            synchronize(DEVICE)
    else:
        call = run
    for _ in range(WARMUP):
        call()
    benchmark.group = f"{op} {pass_} {N}x{D} {C.DTYPE_SHORT[DTYPE]} {DEVICE.type}"
    benchmark.extra_info.update(op=op, impl=impl, pass_=pass_, shape=[N, D], dtype=C.DTYPE_SHORT[DTYPE],
                                bytes=C.byte_model(op, N, D, DTYPE, pass_))
    benchmark(call)
