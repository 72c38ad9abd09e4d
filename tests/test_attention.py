"""Tests of geoops.attention (Kronecker triple attention) on the CPU backend.

Oracle: geoops.reference.attention (float64 einsum over the full N x M1 x M2 score tensor) for small shapes;
the rank-1 identity (k2 = 1 => ordinary softmax attention times a window mean of v2) at N = 2048.
"""
import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

import geoops
import geoops.attention as ga
from geoops.reference import attention as ref

torch.manual_seed(0)

HAVE_CPP = (geoops._backend.compiled() is not None
            and hasattr(geoops._backend.compiled(), "triple_attention_fwd_cpu"))
pytestmark = pytest.mark.skipif(not HAVE_CPP, reason="geoops._C without the attention kernels")


def _inputs(B, H, Hk, N, M1, M2, D, Dv, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return mk(B, H, N, D), mk(B, Hk, M1, D), mk(B, Hk, M2, D), mk(B, Hk, M1, Dv), mk(B, Hk, M2, Dv)


MASKS = [dict(), dict(causal=True), dict(window=(1, 1)), dict(window=(5, 3)), dict(window=(3, 7)),
         dict(window=(100, 2)), dict(window=4), dict(window=(1000, 1000))]
SHAPES = [  # B, H, Hk, N, M1, M2, D, Dv
    (1, 1, 1, 1, 1, 1, 4, 4),
    (2, 2, 1, 17, 19, 23, 8, 5),
    (1, 3, 3, 33, 33, 31, 16, 16),
    (1, 4, 2, 33, 40, 29, 5, 7),
]


def _grads(fn, ins, g):
    xs = [t.detach().clone().requires_grad_(True) for t in ins]
    out = fn(*xs)
    return out, torch.autograd.grad(out, xs, g)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: str(m) or "dense")
def test_parity_fp64_forward_and_gradients(shape, mask):
    ins = _inputs(*shape)
    out, lse = ga.triple_attention(*ins, return_lse=True, **mask)
    rout, rlse = ref.triple_attention(*ins, return_lse=True, **mask)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, rout, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.isinf(lse), torch.isinf(rlse))
    torch.testing.assert_close(lse, rlse, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(rout)
    _, ours = _grads(lambda *a: ga.triple_attention(*a, **mask), ins, g)
    _, theirs = _grads(lambda *a: ref.triple_attention(*a, **mask), ins, g)
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("in_scale", [0.5, 2.0])
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(6, 3))], ids=str)
def test_parity_fp32_input_scales(in_scale, mask):
    """Input scales 0.5 and 2 move the logits by 1/64 .. 64x (softmax rescaling in the online max)."""
    shape = (1, 2, 1, 37, 41, 35, 16, 12)
    ins64 = _inputs(*shape, scale=in_scale, seed=1)
    ins = [t.float() for t in ins64]
    out = ga.triple_attention(*ins, **mask)
    rout = ref.triple_attention(*ins64, **mask)
    tol = 2e-5 * max(1.0, in_scale ** 2)
    torch.testing.assert_close(out.double(), rout, rtol=tol, atol=tol)
    g = torch.randn_like(rout)
    _, ours = _grads(lambda *a: ga.triple_attention(*a, **mask), ins, g.float())
    _, theirs = _grads(lambda *a: ref.triple_attention(*a, **mask), ins64, g)
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), ours, theirs):
        scale = b.abs().max().item() + 1e-30
        assert (a.double() - b).abs().max().item() <= 1e-4 * scale, name


def test_large_logits_no_overflow():
    ins = _inputs(1, 1, 1, 20, 21, 22, 8, 8, dtype=torch.float32, scale=6.0)
    out, lse = ga.triple_attention(*ins, scale=1.0, return_lse=True)  # logits ~ 10^3
    rout, rlse = ref.triple_attention(*[t.double() for t in ins], scale=1.0, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(lse.double(), rlse, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.double(), rout, rtol=1e-3, atol=1e-3 * rout.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(1, 1)), dict(window=(3, 2))],
                         ids=lambda m: str(m) or "dense")
def test_nan_and_overflowed_scores_propagate(dtype, mask):
    """A NaN score (NaN input, NaN scale) or an overflowed one (+inf) gives NaN for that query, as the eager
    softmax does, never the zeros / lse = -inf of a query without admissible pairs (which hid NaN inputs)."""
    ins = list(_inputs(1, 2, 1, 20, 20, 20, 4, 3, dtype=dtype))
    k1 = ins[1].clone()
    k1[0, 0, 2, 0] = float("nan")  # NaN scores for every query that may see j = 2
    pos = [t.abs() for t in ins]  # scale = inf on positive inputs: every admissible score is +inf
    cases = [((ins[0], k1, *ins[2:]), {}), (ins, dict(scale=float("nan"))), (pos, dict(scale=float("inf")))]
    for args, kw in cases:
        out, lse = ga.triple_attention(*args, return_lse=True, **mask, **kw)
        rout, rlse = ref.triple_attention(*[t.double() for t in args], return_lse=True, **mask, **kw)
        nan_rows = rout.isnan().any(-1)
        assert nan_rows.any()
        assert torch.equal(out.isnan().all(-1), nan_rows) and lse[nan_rows].isnan().all()
        assert torch.equal(lse.isfinite(), rlse.isfinite())  # the eager lse: NaN, or +inf for +inf scores
        ok = ~nan_rows[..., None]
        torch.testing.assert_close(torch.where(ok, out.double(), 0.0), torch.where(ok, rout, 0.0),
                                   rtol=1e-2, atol=1e-2)
    # the gradient of a NaN output is NaN (eager autograd), not the zero gradient of an empty row
    xs = [t.detach().clone().requires_grad_(True) for t in (ins[0], k1, *ins[2:])]
    out = ga.triple_attention(*xs, **mask)
    out.sum().backward()
    assert xs[0].grad[out.isnan().any(-1)].isnan().all()


_NF_MODES = [dict(), dict(causal=True), dict(window=(2, 3)), dict(window=(3, 1))]


def _nonfinite_patterns(x):
    return x.isnan(), x.isinf() & (x > 0), x.isinf() & (x < 0)


def _elementwise_out(q, k1, k2, v1, v2, **mask):
    """out as the IEEE sum of the terms P[i,j,k] v1[j,e] v2[k,e] of the admissible pairs (masked pairs are no terms,
    session 48), in no particular order."""
    B, H, N, D = q.shape
    M1, M2 = k1.shape[2], k2.shape[2]
    T = torch.einsum("bhid,bhjd,bhkd->bhijk", q * D ** -0.5, k1, k2)
    w = mask.get("window")
    ok = ref.admissible_mask(N, M1, M2, causal=mask.get("causal", False), window=w)
    P = torch.softmax(T.masked_fill(~ok, float("-inf")).reshape(B, H, N, -1), -1).reshape(T.shape)
    P = torch.where(ok.any((-1, -2)).view(1, 1, N, 1, 1), P, 0.0)
    terms = P[..., None] * v1[:, :, None, :, None, :] * v2[:, :, None, None, :, :]
    return torch.where(ok[..., None], terms, 0.0).sum((3, 4))


_NF_SIZES = ((1, 1, 5, 5, 5), (2, 1, 6, 4, 7))  # (H, Hk, N, M1, M2)


def check_nan_rows_like_eager(backend, dtypes=(torch.float64,), sizes=_NF_SIZES, dense_rows=None, masks=_NF_MODES):
    """A NaN in one row of q, k1, k2, v1 or v2: out and all five gradients NaN exactly where the reference has them
    (masked pairs are no terms: the reference evaluates each query over its own key ranges, session 48), for
    dense, causal and windowed masks, grouped heads and unequal lengths.  Rows 0, middle and last of each input;
    dense_rows (a subset of those positions, 0 1 2) narrows the dense mask's rows, where every query sees every row
    (sizes, dense_rows and masks, a subset of _NF_MODES: the Triton interpreter's share, whose cost grows with each
    kernel program).  Each case's float64 reference (the eager per-query loop, most of the CPU time) is computed once
    for all of dtypes."""
    g = torch.Generator().manual_seed(80)
    for mask in masks:
        for (H, Hk, N, M1, M2) in sizes:
            shapes = [(1, H, N, 3), (1, Hk, M1, 3), (1, Hk, M2, 3), (1, Hk, M1, 2), (1, Hk, M2, 2)]
            for which in range(5):
                rows = (0, shapes[which][2] // 2, shapes[which][2] - 1)
                for row in rows if mask or dense_rows is None else [rows[i] for i in dense_rows]:
                    ins = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
                    ins[which][0, -1, row, 1] = float("nan")
                    b = [t.clone().requires_grad_() for t in ins]
                    go = torch.randn(1, H, N, 2, generator=g, dtype=torch.float64)
                    rout = ref.triple_attention(*b, **mask)
                    rout.backward(go)
                    for dtype in dtypes:
                        a = [t.clone().to(dtype).requires_grad_() for t in ins]
                        with geoops.use_backend(backend):
                            out = ga.triple_attention(*a, **mask)
                        out.backward(go.to(dtype))
                        case = (mask, H, which, row, dtype)
                        assert torch.equal(out.isnan(), rout.isnan()), case
                        for n, x, y in zip(("q", "k1", "k2", "v1", "v2"), a, b):
                            assert torch.equal(x.grad.isnan(), y.grad.isnan()), (case, n, x.grad.isnan().sum(),
                                                                                  y.grad.isnan().sum())


def check_inf_values_like_elementwise(backend, sizes=_NF_SIZES, dense_rows=None, masks=_NF_MODES):
    """+-inf in v1 or v2: out is NaN / +inf / -inf as the IEEE sum of the admissible terms P v1 (.) v2 (infinite
    terms of both signs, and inf * 0, are NaN; a masked pair is no term, session 48: before, its 0 * inf was NaN as
    in the eager einsum).  The kernels gave +-inf for an inf v1 against v2 values of both signs.  Every row of the
    input; sizes, dense_rows (row indices kept under the dense mask, where every query sees every row) and masks as
    in check_nan_rows_like_eager: the Triton interpreter's share."""
    g = torch.Generator().manual_seed(81)
    for mask in masks:
        for (H, Hk, N, M1, M2) in sizes:
            shapes = [(1, H, N, 3), (1, Hk, M1, 3), (1, Hk, M2, 3), (1, Hk, M1, 2), (1, Hk, M2, 2)]
            for which in (3, 4):
                rows = range(shapes[which][2])
                for row in rows if mask or dense_rows is None else [rows[i] for i in dense_rows]:
                    for val in (float("inf"), -float("inf")):
                        ins = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
                        ins[7 - which][..., 0] = ins[7 - which][..., 0].abs()  # column 0: other values of one sign
                        ins[7 - which][0, 0, 0, 1] = 0.0  # column 1: a zero among them (inf * 0 = NaN)
                        ins[which][0, 0, row] = val
                        with geoops.use_backend(backend):
                            out = ga.triple_attention(*ins, **mask)
                        want = _elementwise_out(*ins, **mask)
                        for u, v in zip(_nonfinite_patterns(out), _nonfinite_patterns(want)):
                            assert torch.equal(u, v), (mask, H, which, row, val, out[0, 0], want[0, 0])
                        fin = torch.isfinite(want)
                        torch.testing.assert_close(out[fin], want[fin])


def test_nan_rows_gradients_like_eager():
    check_nan_rows_like_eager("auto", (torch.float64, torch.float32))


def test_inf_values_like_elementwise_sum():
    check_inf_values_like_elementwise("auto")


def test_empty_rows_and_sizes():
    # window (1, 1) with M2 < N: queries i >= M2 have no admissible k -> out 0, lse -inf, finite gradients
    ins = [t.requires_grad_(True) for t in _inputs(1, 2, 2, 9, 9, 4, 3, 3)]
    out, lse = ga.triple_attention(*ins, window=(2, 1), return_lse=True)
    assert torch.isinf(lse[..., 4:]).all() and (lse[..., 4:] < 0).all()
    assert torch.equal(out[..., 4:, :], torch.zeros_like(out[..., 4:, :]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in ins)
    assert torch.equal(ins[0].grad[..., 4:, :], torch.zeros_like(ins[0].grad[..., 4:, :]))
    # empty key sequences / empty queries / empty batch
    for shape in [(1, 1, 1, 5, 0, 3, 4, 4), (1, 1, 1, 0, 3, 3, 4, 4), (0, 2, 1, 3, 3, 3, 4, 4)]:
        ins = [t.requires_grad_(True) for t in _inputs(*shape)]
        out, lse = ga.triple_attention(*ins, return_lse=True)
        B, H, N = shape[0], shape[1], shape[3]
        assert out.shape == (B, H, N, shape[7]) and not out.any() and (lse == -math.inf).all()
        out.sum().backward()
        assert all(t.grad is not None and t.grad.shape == t.shape and not t.grad.any() for t in ins)


def test_non_contiguous_inputs():
    ins = _inputs(2, 3, 3, 11, 12, 13, 6, 6)
    nc = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in ins]  # (B, N, H, D) memory
    assert not nc[0].is_contiguous()
    torch.testing.assert_close(ga.triple_attention(*nc, causal=True), ref.triple_attention(*ins, causal=True),
                               rtol=1e-10, atol=1e-10)


def test_rank1_oracle_windowed_n2048():
    """k2 = 1: T_ijk = s <q_i, k1_j> does not depend on k, so out_i = attn(q, k1, v1)_i (.) mean_k v2_k."""
    N, D, w1, w2 = 2048, 16, 64, 16
    q, k1, _, v1, v2 = _inputs(1, 2, 2, N, N, N, D, D, dtype=torch.float32, seed=3)
    k2 = torch.ones_like(k1)
    out = ga.triple_attention(q, k1, k2, v1, v2, window=(w1, w2))
    i = torch.arange(N)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w1)
    attn = F.scaled_dot_product_attention(q.double(), k1.double(), v1.double(), attn_mask=band, scale=D ** -0.5)
    c = torch.cat([torch.zeros_like(v2[..., :1, :]), v2.double().cumsum(-2)], dim=-2)  # prefix sums
    lo = (i - w2 + 1).clamp(min=0)
    mean_v2 = (c[..., i + 1, :] - c[..., lo, :]) / (i - lo + 1).double().view(-1, 1)
    expect = attn * mean_v2
    torch.testing.assert_close(out.double(), expect, rtol=1e-4, atol=1e-5)


def test_rank1_oracle_causal_dense():
    N, D = 160, 8
    q, k1, _, v1, v2 = _inputs(1, 1, 1, N, N, N, D, D, seed=4)
    k2 = torch.ones_like(k1)
    out = ga.triple_attention(q, k1, k2, v1, v2, causal=True)
    attn = F.scaled_dot_product_attention(q, k1, v1, is_causal=True, scale=D ** -0.5)
    mean_v2 = v2.cumsum(-2) / torch.arange(1, N + 1, dtype=torch.float64).view(-1, 1)
    torch.testing.assert_close(out, attn * mean_v2, rtol=1e-10, atol=1e-10)


def _vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) of this process
        return True
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("case", ["dense_n512", "window_n32768"])
def test_peak_memory_is_linear_in_n(case):
    """Forward + backward peak memory stays O(N D): far below one (N, M1, M2) score tensor of the eager form."""
    if case == "dense_n512":
        B, H, N, D, kw = 1, 1, 512, 8, dict(causal=True)
    else:
        B, H, N, D, kw = 1, 2, 32768, 16, dict(window=(16, 8))
    ins = [t.requires_grad_(True) for t in _inputs(B, H, H, N, N, N, D, D, dtype=torch.float32, seed=5)]
    g = torch.randn(B, H, N, D)
    ga.triple_attention(*[t.detach()[..., :16, :] for t in ins], **kw)  # warm-up (thread pools, MKL buffers)
    if not _reset_hwm():
        pytest.skip("cannot reset VmHWM")
    base = _vm_hwm_kib()
    out = ga.triple_attention(*ins, **kw)
    torch.autograd.backward(out, g)
    grew = (_vm_hwm_kib() - base) * 1024
    io_bytes = 4 * B * H * N * D * 4 * 4  # inputs, outputs, gradients and their float32 copies
    eager_bytes = 4 * B * H * N ** 3
    assert grew <= io_bytes + 48 * 2 ** 20, f"peak grew {grew / 2**20:.1f} MiB (io {io_bytes / 2**20:.1f} MiB)"
    assert grew < eager_bytes / 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", [dict(), dict(window=(7, 4))], ids=str)
def test_low_precision_2x_rule(dtype, mask):
    """|ours - ref64| <= 2 |ref_dtype - ref64| + floor, forward and gradients (max norms)."""
    ins64 = _inputs(1, 2, 1, 29, 31, 27, 16, 16, seed=6)
    ins = [t.to(dtype) for t in ins64]
    g64 = torch.randn(1, 2, 29, 16, dtype=torch.float64)
    out64, gr64 = _grads(lambda *a: ref.triple_attention(*a, **mask), [t.double() for t in ins], g64)
    outd, grd = _grads(lambda *a: ref.triple_attention(*a, **mask), ins, g64.to(dtype))
    ours, gro = _grads(lambda *a: ga.triple_attention(*a, **mask), ins, g64.to(dtype))
    assert ours.dtype == dtype and all(t.dtype == dtype for t in gro)
    floor = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for name, a, b, r in [("out", ours, outd, out64)] + list(zip(("dq", "dk1", "dk2", "dv1", "dv2"), gro, grd, gr64)):
        err = (a.double() - r).abs().max().item()
        err_ref = (b.double() - r).abs().max().item()
        assert err <= 2 * err_ref + floor * r.abs().max().item(), (name, err, err_ref)


def test_gradcheck_fp64_through_kernels():
    for kw in (dict(), dict(causal=True), dict(window=(2, 3))):
        ins = [t.requires_grad_(True) for t in _inputs(1, 2, 1, 5, 4, 6, 3, 2, seed=7)]
        assert torch.autograd.gradcheck(lambda *a: ga.triple_attention(*a, **kw), ins, eps=1e-6, atol=1e-7)


def test_backward_is_deterministic_across_threads():
    ins = [t.requires_grad_(True) for t in _inputs(2, 4, 2, 70, 64, 66, 16, 16, dtype=torch.float32, seed=8)]
    g = torch.randn(2, 4, 70, 16)
    res = []
    old = torch.get_num_threads()
    try:
        for nt in (old, 1, old):
            torch.set_num_threads(nt)
            _, grads = _grads(lambda *a: ga.triple_attention(*a, causal=True), ins, g)
            res.append(grads)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(res[0], res[1]):
        assert torch.equal(a, b)
    for a, b in zip(res[0], res[2]):
        assert torch.equal(a, b)


def test_default_scale_and_alman_song_scale():
    ins = _inputs(1, 1, 1, 7, 7, 7, 9, 4)
    torch.testing.assert_close(ga.triple_attention(*ins), ref.triple_attention(*ins, scale=1 / 3))
    torch.testing.assert_close(ga.triple_attention(*ins, scale=1.0), ref.triple_attention(*ins, scale=1.0))


def test_backends_agree():
    ins = _inputs(1, 2, 1, 9, 8, 10, 4, 4)
    with geoops.use_backend("reference"):
        a = ga.triple_attention(*ins, causal=True)
    b = ga.triple_attention(*ins, causal=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- errors
def _ok():
    return list(_inputs(1, 4, 2, 5, 6, 7, 8, 3, dtype=torch.float32))


@pytest.mark.parametrize("mutate, exc, words", [
    (lambda a: a.__setitem__(0, a[0][0]), ValueError, "q must be 4-D"),
    (lambda a: a.__setitem__(1, a[1][..., :7]), ValueError, "k1 has feature dim 7"),
    (lambda a: a.__setitem__(2, a[2][..., :7]), ValueError, "k2 has feature dim 7"),
    (lambda a: a.__setitem__(3, a[3][:, :, :5]), ValueError, "v1 has 5 positions"),
    (lambda a: a.__setitem__(4, a[4][:, :, :5]), ValueError, "v2 has 5 positions"),
    (lambda a: a.__setitem__(4, a[4][..., :2]), ValueError, "v1 and v2 must share"),
    (lambda a: a.__setitem__(2, a[2][:, :1]), ValueError, "k2 has 1 heads"),
    (lambda a: [a.__setitem__(i, torch.cat([a[i], a[i][:, :1]], 1)) for i in range(1, 5)], ValueError, "multiple of the key/value heads"),
    (lambda a: a.__setitem__(1, torch.cat([a[1], a[1]])), ValueError, "k1 has batch size 2"),
    (lambda a: a.__setitem__(3, a[3].double()), TypeError, "v1 has dtype torch.float64"),
    (lambda a: a.__setitem__(0, a[0].int()), TypeError, "q must be float16"),
    (lambda a: a.__setitem__(2, a[2].tolist()), TypeError, "k2 must be a torch.Tensor"),
])
def test_errors_name_the_argument(mutate, exc, words):
    args = _ok()
    mutate(args)
    with pytest.raises(exc, match=words):
        ga.triple_attention(*args)


@pytest.mark.parametrize("window, exc", [((0, 3), ValueError), ((3, -1), ValueError), (0, ValueError),
                                         ((1, 2, 3), TypeError), ((1.5, 2), TypeError), (True, TypeError),
                                         ("64", TypeError)])
def test_bad_window(window, exc):
    with pytest.raises(exc, match="window"):
        ga.triple_attention(*_ok(), window=window)


def test_huge_window_is_causal():
    """A window of N or more is plain causal; ints past int64 used to fail with a pybind signature dump."""
    ins = _inputs(1, 2, 1, 9, 7, 11, 4, 3)
    exp = ref.triple_attention(*ins, causal=True)
    for window in (9, 2 ** 62, 2 ** 64, (3 ** 50, 10 ** 30)):
        torch.testing.assert_close(ga.triple_attention(*ins, window=window), exp, rtol=1e-12, atol=1e-12)


def test_bad_scale_and_causal():
    with pytest.raises(TypeError, match="scale"):
        ga.triple_attention(*_ok(), scale="1")
    with pytest.raises(TypeError, match="causal"):
        ga.triple_attention(*_ok(), causal=None)
    with pytest.raises(TypeError, match="return_lse"):
        ga.triple_attention(*_ok(), return_lse="no")  # a truthy non-bool used to return a tuple


def test_debug_checks_name_the_non_finite_argument():
    """GEOOPS_CHECK=1 / geoops.set_checks(True) (README: "non-finite inputs") did nothing in attention before
    session 24 (NaN inputs gave NaN rows silently).  On: ValueError naming the argument (or scale), before any
    kernel; off: the documented NaN propagation."""
    prev = geoops._backend.checks_enabled()
    try:
        for i, name in enumerate(("q", "k1", "k2", "v1", "v2")):
            args = _ok()
            args[i] = args[i].clone()
            args[i][0, 0, 1, 2] = float("nan")
            geoops.set_checks(False)
            assert torch.isnan(ga.triple_attention(*args)).any()
            geoops.set_checks(True)
            with pytest.raises(ValueError, match=rf"\b{name} has non-finite values.*GEOOPS_CHECK"):
                ga.triple_attention(*args)
        with pytest.raises(ValueError, match=r"scale is not finite.*GEOOPS_CHECK"):
            ga.triple_attention(*_ok(), scale=float("inf"))
        ga.triple_attention(*_ok(), causal=True)  # finite: no error
    finally:
        geoops.set_checks(prev)


# ---------------------------------------------------------------- torch.library / torch.compile
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("kw", [(False, 0, 0), (True, 3, 2)], ids=str)
def test_opcheck(kw, backend):
    # (causal without a window, (True, 0, 0), dropped: the fakes take no flag and the op's Python path
    # (_nonfinite_values_nan) branches on `causal or w1 > 0`, which (True, 3, 2) takes; the parity tests check
    # the values under each mask)
    ins = _inputs(1, 2, 1, 6, 5, 7, 4, 3, dtype=torch.float32)
    with geoops.use_backend(backend):
        torch.library.opcheck(torch.ops.geoops.triple_attention_fwd.default, (*ins, 0.5, *kw))
        out, lse = torch.ops.geoops.triple_attention_fwd(*ins, 0.5, *kw)
        g = torch.randn_like(out)
        torch.library.opcheck(torch.ops.geoops.triple_attention_bwd.default, (g, *ins, out, lse, 0.5, *kw))


@pytest.mark.build_relative("compiled against eager in one build; the entry points it reads (triple_attention_fwd_cpu / "
                            "_bwd_cpu) are read by this file's eager tests, which the portable stage runs")
def test_torch_compile_fullgraph():
    ins = [t.requires_grad_(True) for t in _inputs(1, 2, 1, 9, 8, 10, 4, 4, dtype=torch.float32)]
    fn = torch.compile(lambda *a: ga.triple_attention(*a, window=(3, 4)).sin(), fullgraph=True, backend="aot_eager")
    out = fn(*ins)
    torch.testing.assert_close(out, ga.triple_attention(*ins, window=(3, 4)).sin())
    out.sum().backward()
    grads = [t.grad.clone() for t in ins]
    for t in ins:
        t.grad = None
    ga.triple_attention(*ins, window=(3, 4)).sin().sum().backward()
    for a, t in zip(grads, ins):
        torch.testing.assert_close(a, t.grad)


@pytest.mark.build_relative("compiled against eager in one build; the entry points it reads (triple_attention_fwd_cpu / "
                            "_bwd_cpu) are read by this file's eager tests, which the portable stage runs")
def test_torch_compile_inductor():
    ins = [t.requires_grad_(True) for t in _inputs(1, 2, 1, 9, 8, 10, 4, 4, dtype=torch.float32, seed=9)]
    fn = torch.compile(lambda *a: (ga.triple_attention(*a, causal=True) * 2).sum(), fullgraph=True)
    loss = fn(*ins)
    loss.backward()
    grads = [t.grad.clone() for t in ins]
    for t in ins:
        t.grad = None
    eager = (ga.triple_attention(*ins, causal=True) * 2).sum()
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for a, t in zip(grads, ins):
        torch.testing.assert_close(a, t.grad)


def test_backward_makes_no_zero_lse_gradient():
    """Session 38 (perfcheck): the lse output is not differentiable; autograd filled a zero (B, H, N) gradient for it on
    every backward (aten.zeros per call).  With set_materialize_grads(False) the backward makes none; the gradients
    are unchanged (lse stays non-differentiable)."""
    from _compare import record_ops

    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(1, 2, 6, 4, generator=g, requires_grad=True) for _ in range(5)]
    out = geoops.attention.triple_attention(*qkv)
    gout = torch.randn(out.shape, generator=g)
    want = torch.autograd.grad(geoops.attention.triple_attention(*qkv), qkv, gout)
    with record_ops() as ops:
        got = torch.autograd.grad(out, qkv, gout)
    assert not [n for n in ops.names if "zeros" in n], ops.names
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    out, lse = geoops.attention.triple_attention(*qkv, return_lse=True)
    assert lse.requires_grad and out.requires_grad  # (session 44: lse is differentiable)
    with record_ops() as ops:
        torch.autograd.grad(out, qkv, gout)
    assert not [n for n in ops.names if "zeros" in n or "cat" in n], ops.names  # lse unused: no extra column


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(5, 3)), dict(window=(100, 2))],
                         ids=lambda m: str(m) or "dense")
@pytest.mark.parametrize("use_out", [True, False], ids=["out+lse", "lse"])
def test_lse_gradient_fp64(shape, mask, use_out):
    """Session 44: a loss using lse (alone or beside out) gets its gradient (lse was non-differentiable: that part
    was silently dropped).  float64 against the reference's autograd through logsumexp, windows and causal masks
    included."""
    ins = _inputs(*shape, seed=3)
    g = torch.Generator().manual_seed(4)
    N, Dv = shape[3], shape[7]
    gout = torch.randn(shape[0], shape[1], N, Dv, generator=g, dtype=torch.float64)
    glse = torch.randn(shape[0], shape[1], N, generator=g, dtype=torch.float64)

    def loss(fn, xs):
        out, lse = fn(*xs, return_lse=True, **mask)
        lse = torch.where(torch.isfinite(lse), lse, 0.0)  # (empty rows: -inf)
        return (lse * glse).sum() + ((out * gout).sum() if use_out else 0.0)

    grads = []
    for fn in (ga.triple_attention, ref.triple_attention):
        xs = [t.detach().clone().requires_grad_(True) for t in ins]
        got = torch.autograd.grad(loss(fn, xs), xs, allow_unused=True)  # (lse alone: no v1, v2 in the graph)
        grads.append([torch.zeros_like(x) if d is None else d for x, d in zip(xs, got)])
    for name, a, b in zip(("dq", "dk1", "dk2", "dv1", "dv2"), *grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
    assert grads[1][0].abs().max() > 0  # (the lse part alone moves q)


def test_lse_gradcheck():
    """gradcheck of (out, lse) together (float64, causal, grouped heads)."""
    ins = [t.requires_grad_(True) for t in _inputs(1, 2, 1, 5, 6, 4, 3, 2, seed=7)]
    assert torch.autograd.gradcheck(lambda *a: ga.triple_attention(*a, causal=True, return_lse=True), ins)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(7, 4))], ids=lambda m: str(m) or "dense")
@pytest.mark.parametrize("use_out, glse_scale", [(True, 1.0), (False, 1.0), (True, 1e5)],
                         ids=["out+lse", "lse", "out+lse-1e5"])
def test_lse_gradient_half_2x_rule(dtype, mask, use_out, glse_scale):
    """Session 45 (review44): float16 / bfloat16 lse gradients.  The half backward forms delta from its own float32
    recompute (C++) or from sum P dP (Triton), never from the out it is given, so session 44's extra column
    (out = -dlse there) was ignored and lse's part of the gradient was silently dropped (dq 100 % off with lse
    alone).  The 2x rule against the float64 reference, as test_low_precision_2x_rule; a lse gradient of 1e5 (over
    float16's range: -dlse rounded to float16 would be inf) included."""
    ins64 = _inputs(1, 2, 1, 29, 31, 27, 16, 16, seed=6, scale=0.5)
    ins = [t.to(dtype) for t in ins64]
    g = torch.Generator().manual_seed(4)
    gout = torch.randn(1, 2, 29, 16, generator=g, dtype=torch.float64)
    glse = torch.randn(1, 2, 29, generator=g, dtype=torch.float64) * glse_scale

    def grads(fn, xs):
        xs = [t.detach().clone().requires_grad_(True) for t in xs]
        out, lse = fn(*xs, return_lse=True, **mask)
        loss = (torch.where(torch.isfinite(lse), lse, 0.0) * glse.to(lse.dtype)).sum()
        if use_out:
            loss = loss + (out * gout.to(out.dtype)).sum()
        got = torch.autograd.grad(loss, xs, allow_unused=True)
        return [torch.zeros_like(x) if d is None else d for x, d in zip(xs, got)]

    want = grads(ref.triple_attention, [t.double() for t in ins])  # (the rounded inputs, as the 2x rule's)
    eager = grads(ref.triple_attention, ins)
    ours = grads(ga.triple_attention, ins)
    assert all(t.dtype == dtype for t in ours)
    floor = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for name, a, b, r in zip(("dq", "dk1", "dk2", "dv1", "dv2"), ours, eager, want):
        if not use_out and name in ("dv1", "dv2"):
            continue  # (lse alone: no value gradient)
        err = (a.double() - r).abs().max().item()
        err_ref = (b.double() - r).abs().max().item()
        err_ref = err_ref if math.isfinite(err_ref) else 0.0  # (eager float16 overflows at 1e5: the floor rules)
        assert err <= 2 * err_ref + floor * r.abs().max().item(), (name, err, err_ref, r.abs().max().item())
