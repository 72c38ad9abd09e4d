"""Triton kernels of geoops.attention against the float64 reference (interpreter on CPU, tiny shapes).

Run on their own: ``TRITON_INTERPRET=1 python -m pytest tests/triton/test_attention_triton.py``.
"""
import dataclasses
import os

import pytest
import torch

import geoops
import geoops.attention as ga
from geoops.reference import attention as ref

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from geoops.kernels import attention as K  # noqa: E402
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
# (SHAPES[1] in float32 under every mask: test_dkv1_fallback_knob's default route, which checks the same forward and
# gradients at the same tolerances)
CASES = ([(s, m, torch.float64) for s in SHAPES for m in MASKS]
         + [(CHUNKED, m, dt) for dt in (torch.float64, torch.float32) for m in MASKS[:3]])


def test_chunked_shape_takes_several_chunks():
    """CHUNKED walks the head dims in more than one chunk, the last one partial (not a multiple of BLOCK_K)."""
    D, Dv = CHUNKED[6], CHUNKED[7]
    bk = K._blocks(D, Dv, torch.float32)["BLOCK_K"]
    assert D > 2 * bk and D % bk and Dv > bk and Dv % bk and D % 2


@pytest.mark.parametrize("shape, mask, dtype", CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_forward_and_gradients(shape, mask, dtype):
    ins = [t.requires_grad_(True) for t in _inputs(*shape, dtype)]
    out, lse = ga.triple_attention(*ins, return_lse=True, **mask)
    g = torch.randn_like(out)
    _check_against_reference(ins, mask, dtype, out, lse, g, torch.autograd.grad(out, ins, g))


def _check_against_reference(ins, mask, dtype, out, lse, g, grads):
    """out, lse and the five gradients (for the output gradient g) against the float64 reference."""
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in ins]
    rout, rlse = ref.triple_attention(*leaves, return_lse=True, **mask)
    rgrads = torch.autograd.grad(rout, leaves, g.double().cpu())
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double().cpu(), rout, rtol=tol, atol=tol)
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(rlse))
    torch.testing.assert_close(lse.double().cpu(), rlse, rtol=tol, atol=tol)
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, rgrads):
        torch.testing.assert_close(a.double().cpu(), b, rtol=10 * tol, atol=10 * tol, msg=name)


# head dims over 128 (a GPU launch takes _blocks' own branch for them): D = 256, Dv = 130 (16 chunks; 9, the last of 2)
WIDE = (1, 2, 1, 5, 6, 4, 256, 130)


@pytest.mark.parametrize("mask", [dict(), dict(causal=True)], ids=str)
def test_head_dim_256(mask):
    """Forward and gradients at head dim 256 (none of the cases above passes 128), float32 against the reference."""
    test_forward_and_gradients(WIDE, mask, torch.float32)


@pytest.mark.parametrize("shape, mask", [(SHAPES[2], dict(causal=True)), (CHUNKED, dict(window=(3, 2)))],
                         ids=["Dv16-causal", "chunked-window"])
def test_lse_gradient(shape, mask):
    """Session 44: lse is differentiable (the backward runs on one more value column: Dv = 16 -> 17 crosses a
    BLOCK_K chunk); float64, out and lse in one loss, against the reference's autograd."""
    ins = _inputs(*shape, torch.float64, seed=2)
    g = torch.Generator().manual_seed(3)
    gout = torch.randn(shape[0], shape[1], shape[3], shape[7], generator=g, dtype=torch.float64).to(DEVICE)
    glse = torch.randn(shape[0], shape[1], shape[3], generator=g, dtype=torch.float64).to(DEVICE)
    grads = []
    for fn in (ga.triple_attention, ref.triple_attention):
        xs = [t.detach().clone().requires_grad_(True) for t in ins]
        out, lse = fn(*xs, return_lse=True, **mask)
        loss = (out * gout).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * glse).sum()
        grads.append(torch.autograd.grad(loss, xs))
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), *grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_lse_gradient_half(dtype):
    """Session 45 (review44): the float16 / bfloat16 backward forms delta as sum P dP and never reads out, so the
    extra column's out = -dlse was ignored and lse's part of the gradient dropped (dq 100 % off with lse alone):
    such a backward now runs in float32.  lse alone, causal, against the reference on the rounded inputs."""
    ins = _inputs(*SHAPES[1], dtype, seed=2)
    glse = torch.randn(1, 2, SHAPES[1][3], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for fn, xs in ((ga.triple_attention, ins), (ref.triple_attention, [t.double() for t in ins])):
        xs = [t.detach().clone().requires_grad_(True) for t in xs]
        lse = fn(*xs, return_lse=True, causal=True)[1]
        grads.append(torch.autograd.grad((lse * glse.to(DEVICE, lse.dtype)).sum(), xs[:3]))
    for name, a, b in zip(("dq", "dk1", "dk2"), *grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double().cpu(), b.cpu(), rtol=0, atol=1e-2 * b.abs().max().item(), msg=name)

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


def _sibling_tests(name):
    """The CPU test module tests/<name>.py, loaded by path, for checks that run here on the Triton kernels."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_attention_" + name, os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu_checks():
    """tests/test_attention.py, for its non-finite checks."""
    return _sibling_tests("test_attention")


# the non-finite checks' masks here: dense and the two windows.  The causal mask left out (session 54): a causal launch
# is a window launch with both bounds 0 (the same CAUSAL kernels, per-tile tests and fix-ups), and its non-finite rows
# run in test_nonfinite_at_masked_positions_stays_out (float32-causal) and test_nonfinite_row_across_tiles.
_NF_MASKS = (dict(), dict(window=(2, 3)), dict(window=(3, 1)))


@pytest.mark.skipif(DEVICE != "cpu", reason="the checks build CPU tensors")
def test_nan_rows_gradients_like_eager():
    """The NaN patterns of out and the five gradients as the eager reference's (a NaN in one row of an input):
    the grouped-heads, unequal-lengths size only (the CPU test's other size, one head with N = M1 = M2, runs the
    same one-tile kernel paths), the dense mask at the middle row only (no masked pair: every row alike).  Both cut
    for the interpreter's cost (session 51: 120 -> 50 fwd + bwd runs); the causal mask too (_NF_MASKS; session 54:
    50 -> 35)."""
    _cpu_checks().check_nan_rows_like_eager("triton", sizes=((2, 1, 6, 4, 7),), dense_rows=(1,), masks=_NF_MASKS)


@pytest.mark.skipif(DEVICE != "cpu", reason="the checks build CPU tensors")
def test_inf_values_like_elementwise_sum():
    """+-inf values: out as the IEEE sum of the admissible terms.  As the NaN-row check above (session 53): the
    grouped-heads, unequal-lengths size only and the dense mask at row 1 only (the dense launches have no per-tile
    test or fix-up, every row alike); the window masks keep every row; the causal mask left out (_NF_MASKS; 168 ->
    70 -> 48 fwd runs)."""
    _cpu_checks().check_inf_values_like_elementwise("triton", sizes=((2, 1, 6, 4, 7),), dense_rows=(1,),
                                                    masks=_NF_MASKS)


def _numhunt_checks():
    """tests/test_attention_numhunt.py, for its masked non-finite check (session 48)."""
    return _sibling_tests("test_attention_numhunt")


_MASKED_MODES = {"float32-causal": (torch.float32, dict(causal=True)), "float64-window23": (torch.float64, dict(
    window=(2, 3))), "float64-window32": (torch.float64, dict(window=(3, 2)))}
_MASKED_CASES = [(which, mode) for which in range(6) for mode in _MASKED_MODES
                 if (which, mode) not in ((2, "float64-window32"), (4, "float64-window23"))]


@pytest.mark.parametrize("which, mode", _MASKED_CASES,
                         ids=[("q", "k1", "k2", "v1", "v2", "dout")[w] + "-" + m for w, m in _MASKED_CASES])
def test_nonfinite_at_masked_positions_stays_out(which, mode):
    """A NaN (inf for the values) where a query may not see it reaches neither its output nor its gradients, nor
    a key's gradients through a query that may not see the key (the masked products: _masked_dot, session 48).
    float32 only with the causal mask (the windows take the same kernel code; 18 s a case in the interpreter); one
    batch (the CPU test's second, untouched batch doubled the programs).  float64 with the windows only (session
    53): a causal launch is a window launch with both bounds 0 (the same CAUSAL kernels and fix-ups), float32-causal
    runs that mask and the windows float64's own k1 route (the swapped dkv kernel), with both bounds set.  k2 and v2
    one window each (session 54; their flagged k2 tile makes every first key's _masked_dot run: the costliest
    cases): what the check keeps there is out and dq of the queries that may not see row 5 and the clean key head's
    gradients (key head 1's are left out whole), i.e. the forward and dq fix-ups' masks, which either window tests
    below its bound (k2-window23 fails with the dq fix-up's _masked_dot admitting the pairs below the window,
    v2-window32 with the forward fix-up's; the float32-causal cases cannot: no lower bound)."""
    dtype, mask = _MASKED_MODES[mode]
    bad = float("inf") if which in (3, 4) else float("nan")
    _numhunt_checks().check_masked_nonfinite("triton", dtype, mask, which, bad, device=DEVICE, batch=1)


@pytest.mark.parametrize("which", (2, 3, 5), ids=("k2", "v1", "dout"))
def test_nonfinite_row_across_tiles(which):
    """The lean form (session 49): the common kernels leave out only the tiles that hold a non-finite row and the
    fix-up launch adds exactly those, so with several query and key tiles (N = M = 33: 16-row tiles 16 + 16 + 1
    here, the bad row in the middle one, a clean tile before and after it) out, lse and the five gradients match
    the reference backend (which evaluates each query over its own keys when an input or dout is non-finite) --
    NaN exactly where it has NaN, the same values elsewhere -- for one NaN row in the middle of one input.
    Two query heads on one key head where the NaN is in q or dout (a clean and a flagged query head share the key
    gradients); one head for the key inputs (both heads saw the same row: twice the programs, nothing new).
    The reference's gradients by the reference backward (session 51: its backward ran outside the backend block,
    i.e. on the Triton kernels under test, so a backward defect met itself).  One input per flag (session 53): the
    kernels flag rows by (k1, v1), (k2, v2) and (q, dout) prefix counts, so q / k1 / v2 ran the same fix-up
    programs over the same tiles as dout / v1 / k2; which input of a pair a flag reads is the masked test's (one
    tile: each of its inputs fails with that input left out of its prefix count).  k2 for the dq fix-up, v1 for the
    tile start of _bad_rows (session 51's mutants), dout for the dkv fix-ups of a flagged query tile."""
    _check_nonfinite_row(which, 33, 4, 3, 20, (dict(causal=True), dict(window=(9, 20))))


def _check_nonfinite_row(which, N, D, Dv, row, masks):
    """test_nonfinite_row_across_tiles' check: one NaN in row `row` of input `which` (5: dout), float64.  Two query
    heads on one key head where the NaN is in q or dout, one head otherwise (session 51)."""
    g = torch.Generator().manual_seed(49 + which)
    B, H, Hk = 1, 2 if which in (0, 5) else 1, 1
    shapes = [(B, H, N, D), (B, Hk, N, D), (B, Hk, N, D), (B, Hk, N, Dv), (B, Hk, N, Dv)]
    ins = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    go = torch.randn(B, H, N, Dv, generator=g, dtype=torch.float64)
    (go if which == 5 else ins[which])[0, -1, row, 1] = float("nan")
    tol = dict(rtol=1e-9, atol=1e-11)
    for mask in masks:
        a = [t.clone().to(DEVICE).requires_grad_() for t in ins]
        b = [t.clone().requires_grad_() for t in ins]
        with geoops.use_backend("triton"):
            out, lse = ga.triple_attention(*a, **mask, return_lse=True)
            out.backward(go.to(DEVICE))
        with geoops.use_backend("reference"):  # the op's reference backend: per query when an input is non-finite
            rout, rlse = ga.triple_attention(*b, **mask, return_lse=True)
            rout.backward(go)
        for name, x, y in [("out", out, rout), ("lse", lse, rlse)] + [
                ("d" + n, s.grad, t.grad) for n, s, t in zip(("q", "k1", "k2", "v1", "v2"), a, b)]:
            x = x.detach().cpu().double()
            y = y.detach()
            assert torch.equal(x.isnan(), y.isnan()), (mask, name, x.isnan().sum(), y.isnan().sum())
            torch.testing.assert_close(x.nan_to_num(), y.nan_to_num(), **tol, msg=lambda m: f"{mask} {name}: {m}")
        if "causal" in mask:  # and the rule itself: queries before row may not see it, keys after it are not seen
            grads = [t.grad.cpu() for t in a]
            assert bool(torch.isfinite(out.detach().cpu()[:, :, :row]).all()), which
            assert bool(torch.isfinite(grads[0][:, :, :row]).all()), which
            if which in (0, 5):
                assert all(bool(torch.isfinite(gr[:, :, row + 1:]).all()) for gr in grads[1:]), which


@pytest.mark.parametrize("dtype, bad, window", [(torch.float32, "values", (3, 2)), (torch.float64, "query", (0, 0))],
                         ids=("float32-v1v2-window32", "float64-q-causal"))
def test_chunked_fixups_add_real_terms(dtype, bad, window):
    """The chunked fix-ups (CH, _head_chunks; session 51) numerically: the launchers called directly at D = 136, Dv =
    130 (float32 3 chunks of 64, float64 5 of 32, the last partial), N = M = 12 (one 16-row tile), against the
    float64 reference on the entries it has finite.  A NaN key row kills every query that sees it and so every key
    those see (test_nonfinite_row_across_tiles: what the fix-ups add there is NaN anyway); these rows leave finite
    entries that only the fix-ups supply.  values (window (3, 2)): inf in v1 row 7, -inf in v2 row 5 (P stays finite;
    delta not, for queries 5-9): dq of queries 0-4 and 10-11 (their k2 tile read as 0: the dq fix-up), dv2 through j
    = 7 (the dkv fix-up), dv1 and dk1 (j <= 2, 10, 11) through the k2 tile (the dkv1 fix-up), all but one column.
    query (causal): a NaN q row 3, its tile left out of the common dkv kernels: dk / dv of keys 4-11 (the dkv
    fix-ups, both key sets in float64, dkb and dvb).  Break-checked: the test fails with each fix-up launch skipped
    and with any one column offset of the chunks dropped (kernels' offs_d / offs_e, each _masked_dot call's).  Each
    fix-up launch's chunk configuration asserted too (BLOCK_D = BLOCK_DV = the chunk, one program per chunk of D):
    session 54 folded test_nonfinite_row_head_dim_over_128 in here, whose one end-to-end run (float64, a NaN k2 row,
    D = 136, ~40 s in the interpreter) failed only with the dq fix-up launch skipped, as the values case does."""
    N, D, Dv = 12, 136, 130
    g = torch.Generator().manual_seed(256)
    shapes = [(1, 1, N, D), (1, 1, N, D), (1, 1, N, D), (1, 1, N, Dv), (1, 1, N, Dv)]
    ins = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).double() for s in shapes]
    go = torch.randn(1, 1, N, Dv, generator=g, dtype=torch.float64).to(dtype).double()
    if bad == "values":
        ins[3][0, 0, 7, 100] = float("inf")
        ins[4][0, 0, 5, 70] = float("-inf")
    else:
        ins[0][0, 0, 3, 90] = float("nan")
    chunked = []
    ch = 32 if dtype == torch.float64 else 64  # _FIX_CHUNK

    def spy(*args):  # the three fix-up launches take the chunked configuration
        blk, grid = head_chunks(*args)
        chunked.append(blk.get("CH", False) and blk["BLOCK_D"] == blk["BLOCK_DV"] == ch
                       and len(grid) == 3 and grid[2] == -(-D // ch))
        return blk, grid

    head_chunks, K._head_chunks = K._head_chunks, spy
    try:
        a = [t.to(DEVICE, dtype) for t in ins]
        out, lse = K._triple_attention_fwd(*a, D ** -0.5, True, *window)
        grads = K._triple_attention_bwd(go.to(DEVICE, dtype), *a, out, lse, D ** -0.5, True, *window)
    finally:
        K._head_chunks = head_chunks
    assert chunked == [True] * 3
    b = [t.clone().requires_grad_() for t in ins]
    rout = ref.triple_attention(*b, causal=True, window=window if window[0] else None, per_query=True)
    rgrads = torch.autograd.grad(rout, b, go)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for name, x, y in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, rgrads):
        x, ok = x.cpu().double(), torch.isfinite(y)
        assert torch.equal(torch.isfinite(x), ok), (name, int(torch.isfinite(x).sum()), int(ok.sum()))
        assert ok.any(), name  # finite entries to compare, every gradient
        torch.testing.assert_close(x[ok], y[ok], **tol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------- session 31: the parity run on the Triton kernels
from geoops import parity  # noqa: E402

PARITY_CASES = parity.family_cases("attention", False)
if DEVICE == "cpu":
    # The interpreter's tiles are 16 x 16 with 16-wide head-dim chunks (K._blocks), a GPU's 32-64: the two causal
    # cases sized for GPU tiles (N33 with H4 / Hk2, N64-D64) took ~45 % of this file's CPU time in the interpreter.
    # Here they run at the smallest shapes with the same structure in the interpreter's tiles (each in every
    # parity dtype): N17 / M1 19 / M2 18, 4 heads on 2 key heads (query and key tiles full + partial, so diagonal,
    # fully visible and skipped tile pairs; the last query tile is one row whose own key starts a key tile, which
    # catches a causal key bound one short: N33 / M2 31 did not), and N32-D32 (full tiles only, head dims in two
    # full chunks).
    # A GPU run (DEVICE cuda) and `python -m geoops.parity` keep the original cases.
    from geoops.parity import attention as _pa

    _SMALL = {"causal/N33": ("causal/N17-M19-M18", (1, 4, 2, 17, 19, 18, 16, 16)),
              "causal/N64-D64": ("causal/N32-D32", (1, 1, 1, 32, 32, 32, 32, 32))}
    def _interpreter_sized(c):  # (a generator per case: one case's inputs do not depend on the other's size)
        small = _SMALL.get(c.name.split("/", 1)[1])
        return c if small is None else _pa._case(small[0], torch.Generator().manual_seed(0), *small[1], **c.kwargs)

    PARITY_CASES = [_interpreter_sized(c) for c in PARITY_CASES]
    assert [c.name for c in PARITY_CASES if "N17-M19-M18" in c.name or "N32-D32" in c.name] == [
        "triple_attention/causal/N17-M19-M18", "triple_attention/causal/N32-D32"]
PARITY_DTYPES = tuple(parity.FLOOR)  # the dtypes `python -m geoops.parity` runs (float64 ... bfloat16)


def _first_batch(case):
    """case with its inputs' first batch only."""
    return dataclasses.replace(case, args={n: t[:1] for n, t in case.args.items()})


def _parity_failures(case, dtype):
    return [f"{q}: err {e:.3e} bound {b:.3e}{'' if fin else ' (non-finite)'}"
            for q, e, b, fin in parity.check_case(case, "triton", dtype, DEVICE) if not (fin and e <= b)]


@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: c.name.split("/", 1)[1])
def test_parity_cases(case, dtype):
    """Every case of geoops.parity.attention in every dtype of the parity run holds the house rule on the Triton
    kernels (out and the five gradients within 2x the eager same-dtype reference's error + floor).  Before
    session 31: dv1 at large logits (float32 2.1x, float16 2.8x the bound: the swapped-orientation scores of
    dk1/dv1), every bfloat16 case (the interpreter's bfloat16 dot, see test_interpreter_bf16_dot), and dq / dk of
    window(1,1) in float16/bfloat16 (one pair per query, exact dS = 0: delta was not formed from the rounded dP).
    In the interpreter the dense/N17 case (the only batch-2 case) runs bfloat16 on its first batch (session 54):
    the batch reaches the kernels only through the batch x head program id bh and the key head kvh, code without a
    dtype branch that float64, float32 and float16 (the half types' delta pass too) run at batch 2; what bfloat16
    runs differently from float16 (no row fit: _half_fit, the dkv kernel's F16; the bfloat16 dot) batch 1 runs."""
    if DEVICE == "cpu" and dtype == torch.bfloat16 and "dense/N17" in case.name:
        case = _first_batch(case)
    bad = _parity_failures(case, dtype)
    assert not bad, f"{case.name} {dtype}: " + "; ".join(bad)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's bfloat16 dot")
def test_interpreter_bf16_dot():
    """tl.dot of bfloat16 tiles in the interpreter gives the float32 product of the values (the shim of
    kernels/attention.py; the stock interpreter multiplied the uint16 bit patterns: ~1e10)."""

    @triton.jit
    def _dot(A, B, C, M: tl.constexpr):
        r = tl.arange(0, M)
        a = tl.load(A + r[:, None] * M + r[None, :])
        b = tl.load(B + r[:, None] * M + r[None, :])
        tl.store(C + r[:, None] * M + r[None, :], tl.dot(a, b))

    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(16, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    c = torch.empty(16, 16)
    _dot[(1,)](a, b, c, M=16)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_dkv1_fallback_knob(mask, monkeypatch):
    """GEOOPS_ATTN_TRITON_DKV1=0 (read per call): dk1/dv1 by the swapped dkv kernel, as before session 31; both
    routes agree with the float64 reference on ordinary logits (grouped heads, M1 != M2 != N, Dv != D).  The
    default route ("1") is also test_forward_and_gradients' float32 check of SHAPES[1] (out, lse, five gradients)."""
    ins = _inputs(*SHAPES[1], torch.float32)
    g = torch.randn(1, 2, 17, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    leaves = [t.double().cpu().requires_grad_(True) for t in ins]
    rgrads = torch.autograd.grad(ref.triple_attention(*leaves, **mask), leaves, g.double().cpu())
    for knob in ("1", "0"):
        monkeypatch.setenv("GEOOPS_ATTN_TRITON_DKV1", knob)
        xs = [t.clone().requires_grad_(True) for t in ins]
        out, lse = ga.triple_attention(*xs, return_lse=True, **mask)
        grads = torch.autograd.grad(out, xs, g)
        if knob == "1":
            _check_against_reference(xs, mask, torch.float32, out, lse, g, grads)
        for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), grads, rgrads):
            torch.testing.assert_close(a.double().cpu(), b, rtol=2e-4, atol=2e-4, msg=f"{name} knob={knob}")


# ---------------------------------------------------------------- session 32: the first keys split across programs
SPLIT_CASES = [(SHAPES[1], m, dt) for m in MASKS for dt in (torch.float64, torch.float32)] + [
    ((2, 2, 1, 9, 23, 6, 37, 21), dict(causal=True), torch.float32)]


@pytest.mark.parametrize("splits", ["2", "5"])
@pytest.mark.parametrize("shape, mask, dtype", SPLIT_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_split_first_keys(shape, mask, dtype, splits, monkeypatch, host_work):
    """GEOOPS_ATTN_TRITON_SPLIT=n: the forward, dq and dkv kernels each take a share of the first keys (more
    programs for small B H; on a GPU chosen from the multiprocessor count), the forward's partial softmax states
    merged by the combine kernel, the backward's partial gradients summed: the same values as the reference (and as
    the unsplit kernels up to rounding)."""
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", splits)
    ins = [t.requires_grad_(True) for t in _inputs(*shape, dtype, seed=3)]
    with host_work() as w:
        out, lse = ga.triple_attention(*ins, return_lse=True, **mask)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, ins, g)
    assert w.launches.count("_triple_attention_combine_kernel") == 1, w
    _check_against_reference(ins, mask, dtype, out, lse, g, grads)
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "0")
    with host_work() as w0:
        out0 = ga.triple_attention(*[t.detach() for t in ins], **mask)
    assert "_triple_attention_combine_kernel" not in w0.launches
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, out0, rtol=tol, atol=tol)


SPLIT_PARITY = [c for c in PARITY_CASES if any(t in c.name for t in ("dense/N17", "window(1,1)", "large-logits"))]
if DEVICE == "cpu":  # the dense case's first batch only (its second ran the same split programs again; session 52)
    SPLIT_PARITY = [_first_batch(c) if "dense/N17" in c.name else c for c in SPLIT_PARITY]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SPLIT_PARITY, ids=lambda c: c.name.split("/", 1)[1])
def test_split_half_types_parity(case, dtype, monkeypatch):
    """The half types split too (partial states in float32; the backward's delta pass stays unsplit): the parity
    run's house rule on the dense, one-pair-per-query and large-logit cases (the whole set under a split takes
    minutes in the interpreter)."""
    assert len(SPLIT_PARITY) == 3
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "3")
    bad = _parity_failures(case, dtype)
    assert not bad, f"{case.name} {dtype}: " + "; ".join(bad)


def test_split_float16_partial_sums_beyond_half_range(monkeypatch, host_work):
    """Session 53 (itrim52's open gap): each split's partial state (running max, sum, unnormalised accumulator) is
    stored in float32 for the half types: here one split's accumulator, sum over 8 x 64 near-uniform pairs of
    v1 (.) v2 ~ 156, is ~8e4, past float16's 65504, while out (~156) and lse are well in range.  Partial states in
    float16 (po / pml allocated in the input dtype) gave out = inf; test_split_half_types_parity did not see them
    (its sums stay small and the rounding is inside the parity bound).  float16 only: bfloat16's range is float32's."""
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "2")
    g = torch.Generator().manual_seed(53)
    B, H, N, M1, M2, D, Dv = 1, 1, 1, 16, 64, 16, 4  # 2 splits of 8 first keys, 4 key tiles: 512 pairs a split
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k1, k2 = 0.01 * rnd(B, H, N, D), rnd(B, H, M1, D), rnd(B, H, M2, D)  # |scores| < 0.1: P ~ 1 per pair
    v1, v2 = 12 + 0.5 * rnd(B, H, M1, Dv), 13 + 0.5 * rnd(B, H, M2, Dv)
    ins = [t.to(DEVICE, torch.float16) for t in (q, k1, k2, v1, v2)]
    with host_work() as w:
        out, lse = ga.triple_attention(*ins, return_lse=True)
    assert w.launches.count("_triple_attention_combine_kernel") == 1, w
    rout, rlse = ref.triple_attention(*[t.double().cpu() for t in ins], return_lse=True)
    assert v1.min() * v2.min() * M1 * M2 / 2 > 65504 > 2 * rout.abs().max()  # a split's sum past the range, out not
    _close_in_float16(out, rout, "out")
    _close_in_float16(lse, rlse, "lse")


def test_split_empty_rows_and_nan(monkeypatch):
    """Rows without an admissible pair (every split empty) keep out 0 / lse -inf; a NaN score still propagates."""
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "4")
    ins = _inputs(1, 1, 1, 6, 6, 3, 4, 4, torch.float32)
    out, lse = ga.triple_attention(*ins, window=(2, 1), return_lse=True)
    assert torch.isinf(lse[..., 3:]).all() and not out[..., 3:, :].any() and torch.isfinite(lse[..., :3]).all()
    ins = _inputs(1, 1, 1, 6, 6, 6, 4, 4, torch.float32)
    ins[1][0, 0, 2, 0] = float("nan")
    out, lse = ga.triple_attention(*ins, causal=True, return_lse=True)
    rout = ref.triple_attention(*[t.double().cpu() for t in ins], causal=True)
    assert torch.equal(out.isnan().any(-1).cpu(), rout.isnan().any(-1)) and lse[..., 2:].isnan().all()


def test_split_count_from_the_multiprocessors(monkeypatch):
    """On a GPU the split count fills ~2x the multiprocessors with programs, >= 4 first keys a split; a grid that
    already does needs none; the knob forces (n) or forbids (0)."""
    from types import SimpleNamespace

    import geoops.kernels as kernels
    monkeypatch.delenv("GEOOPS_ATTN_TRITON_SPLIT", raising=False)
    monkeypatch.setattr(K, "INTERPRETED", False)
    monkeypatch.setattr(kernels, "_SM_COUNTS", {})  # kernels.sm_count's cache: read the patched properties
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=132))
    cuda = torch.device("cuda", 0)
    assert K._split_count(12, 192, cuda) == 22  # the bench's B H = 2, N = 192: 12 programs
    assert K._split_count(12, 40, cuda) == 10  # >= 4 first keys a split
    assert K._split_count(264, 192, cuda) == 1 and K._split_count(1000, 192, cuda) == 1
    assert K._split_count(12, 1, cuda) == 1
    assert K._splits(12, 192, cuda) == (22, 9) and K._splits(12, 10, cuda) == (3, 4)
    assert K._split_count(12, 192, torch.device("cpu")) == 1
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "0")
    assert K._split_count(12, 192, cuda) == 1
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "7")
    assert K._split_count(12, 192, cuda) == 7 and K._split_count(12, 3, cuda) == 3


# ---------------------------------------------------------------- session 47: float16 operands rounded in range
def _float16_beyond_range(mask):
    """float16 inputs whose products q (.) k1 (scale 1) exceed float16's range (65504) while the scores, out and
    the gradients are moderate; (out, lse, five gradients) of the Triton kernels and of the float64 reference."""
    g = torch.Generator().manual_seed(47)
    B, H, N, M1, M2, D, Dv = 1, 1, 18, 17, 19, 20, 5  # two query / key tiles and two head-dim chunks; one head (52)
    sign = lambda *s: torch.randint(0, 2, s, generator=g).double() * 2 - 1  # noqa: E731
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k1, k2 = 300 * sign(B, H, N, D), 300 * sign(B, H, M1, D), 1e-5 * rnd(B, H, M2, D)  # |scores| ~ 10
    v1, v2, dout = rnd(B, H, M1, Dv), rnd(B, H, M2, Dv), 1e-2 * rnd(B, H, N, Dv)
    ins = [t.to(DEVICE, torch.float16).requires_grad_(True) for t in (q, k1, k2, v1, v2)]
    out, lse = ga.triple_attention(*ins, scale=1.0, return_lse=True, **mask)
    grads = torch.autograd.grad(out, ins, dout.to(DEVICE, torch.float16))
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in ins]
    rout, rlse = ref.triple_attention(*leaves, scale=1.0, return_lse=True, **mask)
    rgrads = torch.autograd.grad(rout, leaves, dout.to(torch.float16).double())
    names = ("out", "lse", "dq", "dk1", "dk2", "dv1", "dv2")
    return dict(zip(names, (out, lse, *grads))), dict(zip(names, (rout, rlse, *rgrads)))


def _close_in_float16(a, b, name):
    a = a.double().cpu()
    assert torch.isfinite(a).all(), name
    # float16's rounding of the products and of the results: ~5e-4 of the scale (the C++ backend's 4e-4)
    torch.testing.assert_close(a, b, rtol=0, atol=5e-3 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("mask", [dict(), dict(causal=True)], ids=str)
def test_float16_products_beyond_half_range(mask):
    """The score / dP products (q (.) k1, dout (.) v1) and dS are rounded to float16 as tensor-core operands: beyond
    65504 that was inf (out, lse and every gradient NaN, where the C++ backend, computing in float32, was right).
    Each such row is now scaled into range by a power of two first (kernels/attention.py ``_half_fit``; probe47)."""
    ours, refs = _float16_beyond_range(mask)
    for name in ("out", "lse", "dq", "dk1", "dv1", "dv2"):
        _close_in_float16(ours[name], refs[name], name)


@pytest.mark.parametrize("split", ["0", "3"])
def test_float16_products_beyond_half_range_key_side(monkeypatch, split):
    """dk2 (the key-side kernel, _triple_attention_bwd_dkv_kernel) of the same inputs: its dot dK2 += dS^T (q (.) k1_j)
    rounded q (.) k1_j to float16 unscaled (dk2 inf; a strict xfail in session 47).  Each such row is now scaled by
    the power of two of its max, taken while the scores are formed, and dS's row by the inverse (session 48).
    split "0": that float16 kernel; a GPU would otherwise split this small grid (2 dkv programs, fewer than twice its
    multiprocessors) and run the SPLIT kernel, whose float32 partial-sum operands never overflowed: there the test
    passed with the fix reverted (session 49).  split "3": the SPLIT kernel, finite too."""
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", split)
    ours, refs = _float16_beyond_range(dict())
    _close_in_float16(ours["dk2"], refs["dk2"], "dk2")


def test_float16_dout_v_beyond_half_range_key_side(monkeypatch):
    """dv2 where dout (.) v1_j passes float16's range (dout = v1 = +-300: 9e4) while dv2 itself (1.3e4), out and the
    other gradients are moderate: the key-side kernel's dot dV2 += P^T (dout (.) v1_j) rounded that operand to float16
    (inf; a strict xfail in sessions 48-50).  Each such row is now scaled by the power of two of its max, taken while
    the dP scores are formed, and P's row by the inverse (session 51).  The non-split kernel (a GPU would split this
    small grid; the split's float32 operands do not overflow)."""
    monkeypatch.setenv("GEOOPS_ATTN_TRITON_SPLIT", "0")
    g = torch.Generator().manual_seed(49)
    B, H, N, M1, M2, D, Dv = 1, 1, 18, 17, 19, 20, 5  # two query / key tiles and head-dim chunks; one head (52)
    sign = lambda *s: torch.randint(0, 2, s, generator=g).double() * 2 - 1  # noqa: E731
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k1, k2 = 0.1 * rnd(B, H, N, D), rnd(B, H, M1, D), rnd(B, H, M2, D)  # near-uniform P: dv2's sum cancels
    v1, v2, dout = 300 * sign(B, H, M1, Dv), 1e-5 * rnd(B, H, M2, Dv), 300 * sign(B, H, N, Dv)
    ins = [t.to(DEVICE, torch.float16).requires_grad_(True) for t in (q, k1, k2, v1, v2)]
    out = ga.triple_attention(*ins, scale=1.0)
    dv2 = torch.autograd.grad(out, ins[4], dout.to(DEVICE, torch.float16))[0]
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in ins]
    rdv2 = torch.autograd.grad(ref.triple_attention(*leaves, scale=1.0), leaves[4], dout.to(torch.float16).double())[0]
    assert 1e3 < rdv2.abs().max() < 6e4  # in float16's range
    _close_in_float16(dv2, rdv2, "dv2")


@triton.jit
def _rows_fit_kernel(Q, W, KB, MX, F, INV, L, BM: tl.constexpr, BK: tl.constexpr):
    r = tl.arange(0, BM)
    ok = r < BM
    _, mx = K._chunked_scores(Q + r * L, 1.0, W, KB + r * L, ok, ok, L, tl.float32, True, BM, BM, BK, ROWMAX=True)
    f, inv = K._half_pow2(mx)
    tl.store(MX + r, mx)
    tl.store(F + r, f)
    tl.store(INV + r, inv)


def test_float16_row_fit_keeps_the_rows_in_range():
    """The key-side fix's row factors (_chunked_scores' ROWMAX, _half_pow2): the max is the row's max |q (.) w| over
    every chunk of the head dim (exactly, as float32 forms it); a row below 2^15 gets f = 1/f = 1 (q (.) w and dS keep
    their bits), a row at or above it a power of two f (1/f its exact inverse) that brings the max into [2^14, 2^15);
    inf stays inf (f finite)."""
    L, BM = 20, 16  # two chunks of 16, the second masked
    g = torch.Generator().manual_seed(48)
    q = torch.randn(BM, L, generator=g)
    peak = [0.0, 1e-3, 1.0, 3e4, 32752.0, 32768.0, 65504.0, 7e4, 1e6, 1e8, float("inf")]  # 32752: below 2^15
    w = torch.ones(L)
    w[3], w[17] = -2.0, 2048.0
    for i, v in enumerate(peak):  # each row's largest product in the second chunk: q[i, 17] w[17] ~ peak[i]
        q[i] /= q[i].abs().max()
        q[i, 17] = v / w[17]
    q[2, 3] = 0.75  # 0.75 * -2: the row's max is |q (.) w| = 1.5, not max |q| = 1
    q, w = q.to(torch.float16), w.to(torch.float16)
    kb = torch.zeros(BM, L, dtype=torch.float16)
    mx, f, inv = (torch.empty(BM) for _ in range(3))
    q, w, kb, mx, f, inv = (t.to(DEVICE) for t in (q, w, kb, mx, f, inv))
    _rows_fit_kernel[(1,)](q, w, kb, mx, f, inv, L, BM=BM, BK=16)
    mx, f, inv = mx.cpu(), f.cpu(), inv.cpu()
    want = (q.float() * w.float()).abs().amax(1).cpu()
    assert torch.equal(mx, want)
    small = want < 2.0 ** 15
    assert small[:5].all() and not small[5:len(peak)].any()
    assert (f[small] == 1).all() and (inv[small] == 1).all()
    big = ~small
    assert torch.equal(f[big] * inv[big], torch.ones(int(big.sum())))
    assert torch.equal(torch.frexp(f[big]).mantissa, torch.full_like(f[big], 0.5))  # powers of two
    fitted = (mx * f)[big & torch.isfinite(mx)]
    assert ((fitted >= 2.0 ** 14) & (fitted < 2.0 ** 15)).all()
    assert torch.isfinite(f).all() and torch.isinf(mx[len(peak) - 1] * f[len(peak) - 1])
