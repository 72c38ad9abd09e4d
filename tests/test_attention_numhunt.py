"""Session 35 numerical trial (helper "numhunt"): geoops.attention at the edges of the math."""
from __future__ import annotations

import pytest
import torch

import geoops
import geoops.attention as ga


@pytest.mark.parametrize("which", [3, 4])  # v1, v2
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(2, 3))])
def test_nonfinite_future_value_stays_out_of_earlier_queries(which, bad, kw):
    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(1, 2, 6, 3, generator=g) for _ in range(3)] + [torch.randn(1, 2, 6, 2, generator=g) for _ in range(2)]
    clean = ga.triple_attention(*ts, **kw)
    ts[which][0, 1, 4, 1] = bad  # position 4 of key head 1: queries 0..3 never see it
    out = ga.triple_attention(*ts, **kw)
    torch.testing.assert_close(out[:, :, :4], clean[:, :, :4], rtol=0, atol=0)
    assert torch.equal(out[:, 0], clean[:, 0])  # the other head


# ---------------------------------------------------------------- session 48 (helper "mask48"): masked pairs are no terms
# A non-finite input at a position that a query may not see must not reach that query (out, dq), nor reach the
# gradient of a key through a query that may not see the key.  Inputs: 0 q, 1 k1, 2 k2, 3 v1, 4 v2, 5 dout.
MASK48_MODES = [dict(causal=True), dict(window=(2, 3)), dict(window=(3, 2))]  # (3, 2): the kernels fold k2


def _seen(which, p, n, mask):
    """Which of n queries may see row p of key input `which` (1..4)."""
    w = mask.get("window", (0, 0))[(which - 1) % 2]
    i = torch.arange(n)
    return (i >= p) & ((i < p + w) if w else True)


def _run(backend, ts, go, mask):
    xs = [t.clone().requires_grad_() for t in ts]
    with geoops.use_backend(backend):
        out = ga.triple_attention(*xs, **mask)
        out.backward(go)
    return [out.detach()] + [x.grad for x in xs]


def check_masked_nonfinite(backend, dtype, mask, which, bad, device="cpu", batch=2):
    """Batch 2, 4 query heads on 2 key heads, N = 12 queries, keys of length 16 (an unfilled buffer: rows 12..15
    are seen by no query).  (a) every row >= 12 of a key input non-finite: out and all five gradients as with
    finite rows there (the rows' own gradients 0).  (b) one non-finite element at row p = 5 of one input (batch 0,
    key head 1 / query head 2): every output and gradient entry that may not depend on it is unchanged and finite.
    batch = 1: the untouched batch left out (the clean key head 0 and query heads 0, 1 still sit beside the
    element; the Triton interpreter's share, whose cost grows with each kernel program)."""
    g = torch.Generator().manual_seed(48 + which)
    B, H, Hk, N, M = batch, 4, 2, 12, 16
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    ts = [mk(B, H, N, 5), mk(B, Hk, M, 5), mk(B, Hk, M, 5), mk(B, Hk, M, 3), mk(B, Hk, M, 3)]
    go = mk(B, H, N, 3)
    clean = _run(backend, ts, go, mask)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)

    def same(a, b, keep, name):
        assert bool(torch.isfinite(a[keep]).all()), (name, a)
        torch.testing.assert_close(a[keep], b[keep], **tol, msg=lambda m: f"{name}: {m}")

    names = ("out", "dq", "dk1", "dk2", "dv1", "dv2")
    if 1 <= which <= 4:  # (a) the unfilled rows
        bt = [t.clone() for t in ts]
        bt[which][:, :, N:] = bad
        got = _run(backend, bt, go, mask)
        for name, a, b in zip(names, got, clean):
            same(a, b, torch.ones_like(a, dtype=torch.bool), name)
        assert not got[which + 1][:, :, N:].any()  # no query sees those rows: zero gradients
    p = 5  # (b) one element at row p
    bt, bgo = [t.clone() for t in ts], go.clone()
    (bgo if which == 5 else bt[which])[0, 2 if which in (0, 5) else 1, p, 1] = bad
    got = _run(backend, bt, bgo, mask)
    keep = [torch.ones_like(a, dtype=torch.bool) for a in got]
    if which in (0, 5):  # query p (head 2): its own out / dq; the key rows that p sees (key head 1)
        if which == 0:
            keep[0][0, 2, p] = False
        keep[1][0, 2, p] = False
        for s in (1, 2, 3, 4):
            keep[s + 1][0, 1] &= ~_rows_seen_by(s, p, M, mask).view(-1, 1).to(device)
    else:  # the queries that see row p (query heads 2, 3); key gradients of key head 1 (dS of those queries)
        seen = _seen(which, p, N, mask).view(-1, 1).to(device)
        keep[0][0, 2:4] &= ~seen
        keep[1][0, 2:4] &= ~seen
        for s in (2, 3, 4, 5):
            keep[s][0, 1] = False
    for name, a, b, k in zip(names, got, clean, keep):
        same(a, b, k, name)


def _rows_seen_by(which, p, m, mask):
    """The rows of key input `which` (1..4, length m) that query p may see."""
    w = mask.get("window", (0, 0))[(which - 1) % 2]
    j = torch.arange(m)
    return (j <= p) & ((j > p - w) if w else True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("mask", MASK48_MODES, ids=lambda m: str(m))
@pytest.mark.parametrize("which", range(6), ids=("q", "k1", "k2", "v1", "v2", "dout"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_at_masked_positions_stays_out(dtype, mask, which, bad):
    check_masked_nonfinite("auto", dtype, mask, which, bad)
