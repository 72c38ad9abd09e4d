"""Triton kernels of geoops.attention against the float64 reference (interpreter on CPU, tiny shapes).

Run on their own: ``TRITON_INTERPRET=1 python -m pytest tests/triton/test_attention_triton.py``.
"""
import os

import pytest
import torch

import geoops
import geoops.attention as ga
from geoops.reference import attention as ref

pytest.importorskip("triton")
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"

SHAPES = [  # B, H, Hk, N, M1, M2, D, Dv
    (1, 1, 1, 1, 1, 1, 4, 4),
    (1, 2, 1, 17, 19, 13, 8, 5),
    (1, 2, 2, 20, 20, 20, 16, 16),
]
MASKS = [dict(), dict(causal=True), dict(window=(3, 2)), dict(window=(1, 1))]


def _inputs(B, H, Hk, N, M1, M2, D, Dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)  # noqa: E731
    return [mk(B, H, N, D), mk(B, Hk, M1, D), mk(B, Hk, M2, D), mk(B, Hk, M1, Dv), mk(B, Hk, M2, Dv)]


def test_triton_backend_is_used():
    assert geoops._backend.resolve(torch.device(DEVICE), "attention") == "triton"


# odd head dims over several BLOCK_K = 16 chunks (the interpreter's): D = 37 (16 + 16 + 5), Dv = 21 (16 + 5)
CHUNKED = (1, 2, 1, 9, 7, 6, 37, 21)
CASES = ([(s, m, torch.float64) for s in SHAPES for m in MASKS] + [(SHAPES[1], m, torch.float32) for m in MASKS]
         + [(CHUNKED, m, dt) for dt in (torch.float64, torch.float32) for m in MASKS[:3]])


def test_chunked_shape_takes_several_chunks():
    """CHUNKED walks the head dims in more than one chunk, the last one partial (not a multiple of BLOCK_K)."""
    from geoops.kernels import attention as K
    D, Dv = CHUNKED[6], CHUNKED[7]
    bk = K._blocks(D, Dv, torch.float32)["BLOCK_K"]
    assert D > 2 * bk and D % bk and Dv > bk and Dv % bk and D % 2


@pytest.mark.parametrize("shape, mask, dtype", CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_forward_and_gradients(shape, mask, dtype):
    ins = [t.requires_grad_(True) for t in _inputs(*shape, dtype)]
    out, lse = ga.triple_attention(*ins, return_lse=True, **mask)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, ins, g)
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in ins]
    rout, rlse = ref.triple_attention(*leaves, return_lse=True, **mask)
    rgrads = torch.autograd.grad(rout, leaves, g.double().cpu())
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double().cpu(), rout, rtol=tol, atol=tol)
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(rlse))
    torch.testing.assert_close(lse.double().cpu(), rlse, rtol=tol, atol=tol)
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, rgrads):
        torch.testing.assert_close(a.double().cpu(), b, rtol=10 * tol, atol=10 * tol, msg=name)


def test_empty_rows():
    ins = _inputs(1, 1, 1, 6, 6, 3, 4, 4, torch.float32)
    out, lse = ga.triple_attention(*ins, window=(2, 1), return_lse=True)
    assert torch.isinf(lse[..., 3:]).all() and not out[..., 3:, :].any()


def test_nan_scores_propagate():
    """A NaN score gives NaN for that query (out and lse), not the zeros / -inf of a query without pairs."""
    ins = _inputs(1, 1, 1, 6, 6, 6, 4, 4, torch.float32)
    ins[1][0, 0, 2, 0] = float("nan")
    out, lse = ga.triple_attention(*ins, causal=True, return_lse=True)
    rout = ref.triple_attention(*[t.double().cpu() for t in ins], causal=True)
    assert torch.equal(out.isnan().any(-1).cpu(), rout.isnan().any(-1)) and lse[..., 2:].isnan().all()
    xs = [t.detach().clone().requires_grad_(True) for t in ins]
    ga.triple_attention(*xs, causal=True).sum().backward()
    assert xs[0].grad[..., 2:, :].isnan().all()


def _cpu_checks():
    """tests/test_attention.py, for its non-finite checks (run here on the Triton kernels)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_attention_cpu_tests", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test_attention.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(DEVICE != "cpu", reason="the checks build CPU tensors")
def test_nan_rows_gradients_like_eager():
    """The NaN patterns of out and the five gradients as the eager reference's (a NaN in one row of an input)."""
    _cpu_checks().check_nan_rows_like_eager("triton")


@pytest.mark.skipif(DEVICE != "cpu", reason="the checks build CPU tensors")
def test_inf_values_like_elementwise_sum():
    _cpu_checks().check_inf_values_like_elementwise("triton")
