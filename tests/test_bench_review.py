"""Review of the benchmark suite (bench/, session 39 helper "benchreview"): the mechanics of its rows.

Each test pins one thing a row's numbers depend on: a limit op that does the same work as the row claims (same
inputs, the same FLOPs in both passes, a backward in the fwd+bwd pass), a peak-memory figure that does not depend
on which contender was measured first.  Tiny shapes; no timing.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench import _runner

MiB = 2 ** 20


def _args(argv):
    from geoops import FAMILIES

    mods = {f: _runner._family_module(f) for f in FAMILIES}
    return _runner.parse_args(["--no-compile", *argv], mods)


def _rows(family, argv):
    mod = _runner._family_module(family)
    return list(mod.rows(_args(argv), torch.device("cpu")))


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


class _CountFFT(TorchDispatchMode):
    """Counts the aten FFT calls (forward and backward) of what runs under it."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "_fft_" in func.__name__:
            self.n += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- limit ops: same work as the row claims
def _limit_flops(rows):
    """{(op, label, pass): (limit FLOPs, row work)} of the rows whose limit is a GEMM."""
    out = {}
    for r in rows:
        fns, _, _ = r.setup()
        if "limit" in fns:
            fns["limit"]()  # settle lazy state; then count one call
            out[(r.op, r.label, r.pass_)] = (_flops(fns["limit"]), r.work)
    return out


@pytest.mark.parametrize("family,argv", [
    ("gaunt", ["--gaunt-lmax", "2", "--gaunt-rows", "8", "--gaunt-channels", "2", "--gaunt-forces-lmax", ""]),
    ("attention", ["--attention-n", "32"]),
    ("poincare", ["--ops", "fc", "--poincare-fc", "16,8,8"]),
    ("stereographic", ["--ops", "mobius_matvec", "--matvec-shape", "16,8,8"]),
    ("stereographic", ["--ops", "mobius_blockdiag_matvec", "--blockdiag-shapes", "16x4x3"]),
])
def test_gemm_limit_has_the_rows_flops(family, argv):
    """A GEMM limit ("GEMM with the same FLOPs") does the row's work model in both passes: in the fwd+bwd pass
    too (gaunt's limit was the forward GEMM alone there, a third of the row's FLOPs, so its "x limit" read ~3x
    too high); mobius_blockdiag_matvec's is the product with the blocks (it was the dense block_diag(W) GEMM:
    NBLOCKS times the FLOPs, and another input)."""
    got = _limit_flops(_rows(family, argv))
    assert {k[2] for k in got} == {"fwd", "fwd+bwd"}
    for key, (lf, work) in got.items():
        assert lf == pytest.approx(work, rel=0.1), (key, lf, work)


def test_s4d_limit_scales_with_the_pass_like_the_work():
    """s4d_kernel's limit is the blocked product's own GEMM (half the 8HNL "useful" FLOPs): its fwd+bwd / fwd FLOP
    ratio is the work model's."""
    rows = _rows("ssm", ["--ops", "s4d_kernel", "--ssm-H", "2", "--ssm-N", "2", "--ssm-L", "64",
                         "--ssm-no-memory"])
    got = {r.pass_: (_flops(r.setup()[0]["limit"]), r.work) for r in rows if r.label == ""}
    assert got["fwd+bwd"][0] / got["fwd"][0] == pytest.approx(got["fwd+bwd"][1] / got["fwd"][1])


@pytest.mark.parametrize("op", ["fftconv", "ssm_conv"])
def test_fft_limit_runs_the_backward_in_fwd_bwd(op):
    """The FFT limit of the convolution rows (irfft(rfft(u))) does its backward in the fwd+bwd rows (twice the
    forward's transforms, like the row's work model); it ran the forward alone, so "x limit" of fwd+bwd rows
    compared a forward + backward with a forward."""
    rows = _rows("ssm", ["--ops", op, "--ssm-H", "2", "--ssm-N", "2", "--ssm-L", "64", "--ssm-B", "2",
                         "--ssm-no-memory"])
    n = {}
    for r in rows:
        lim = r.setup()[0]["limit"]
        with _CountFFT() as c:
            lim()
        n[r.pass_] = c.n
    assert n["fwd"] >= 2 and n["fwd+bwd"] == 2 * n["fwd"], n


def test_row_op_limits_read_every_input():
    """The limit of a stereographic row op is the simplest torch op with the op's inputs: it reads each of them
    (mobius_scalar_mul's was x.neg(), which ignores r)."""
    from bench import stereographic as S

    for op, spec in S.OPS.items():
        inp = S.make_inputs(op, 8, 4, torch.float64, "cpu")
        base = S.limit_call(op)(inp)
        for a in spec.args:
            moved = dict(inp)
            moved[a] = inp[a] * 1.5 + 0.25
            assert not torch.equal(S.limit_call(op)(moved), base), (op, a)


# ---------------------------------------------------------------- peak memory
def test_peak_rss_does_not_depend_on_the_previous_calls():
    """The peak extra resident memory of one call is the same however often it is measured: memory that earlier
    calls freed but the C allocator kept resident is not reused for free by the next contender (it read 11, 7,
    0, 8 MiB for four measurements of the same 8 MiB temporary)."""
    from bench.ssm import peak_extra_rss

    def temp():
        t = torch.empty(8 * MiB // 4)
        t.fill_(1.0)
        return t.sum()

    got = [peak_extra_rss(temp) / MiB for _ in range(4)]
    assert min(got) >= 6, got


def test_peak_rss_of_fwd_bwd_contenders_is_order_free():
    """In a fwd+bwd row each contender's call first drops the inputs' .grad of the previous contender: measured
    second, the peer's peak read lower by the size of those gradients (96 vs 48 MiB here for the same call)."""
    from bench import ssm

    u = torch.randn(12 * MiB // 1).requires_grad_()  # 48 MiB
    k = torch.zeros(1)
    D = torch.zeros(1)
    g = torch.randn_like(u)

    def f(u, k, D):
        return u * 2

    extra = {}
    args = _args(["--families", "ssm"])
    ssm._conv_contenders({"geoops": f, "peer": f}, [u, k, D], "fwd+bwd", g, u.detach()[:8], 16, args, extra)
    a, b = extra["peak_extra_MiB_geoops"], extra["peak_extra_MiB_peer"]
    assert a > 80 and b == pytest.approx(a, rel=0.15), (a, b)


def test_peak_memory_on_cuda_is_the_devices(monkeypatch):
    """On a GPU the ssm rows' peak memory is the CUDA allocator's peak over the call, not the host process's
    resident set (the H200 table read host RSS: 205 MiB for geoops' s4d_kernel against 58 MiB for the eager recipe,
    whose (H, N, L) tensors live on the device).  Checked with a stand-in for torch.cuda's memory counters."""
    from bench import ssm

    state = {"alloc": 100 * MiB, "peak": 0}
    fake = {
        "synchronize": lambda *a, **k: None,
        "memory_allocated": lambda *a, **k: state["alloc"],
        "max_memory_allocated": lambda *a, **k: state["peak"],
        "reset_peak_memory_stats": lambda *a, **k: state.update(peak=state["alloc"]),
    }
    for name, f in fake.items():
        monkeypatch.setattr(torch.cuda, name, f)

    def call():  # "allocates" 300 MiB on the device at its peak, 1 MiB of host memory
        state["peak"] = state["alloc"] + 300 * MiB
        return torch.ones(MiB // 4)

    leaf = torch.zeros(3).requires_grad_()
    leaf.grad = torch.ones(3)
    got = ssm.peak_extra(call, torch.device("cuda"), leaves=[leaf])
    assert got == 300 * MiB and leaf.grad is None
    assert ssm.peak_extra(call, torch.device("cpu")) < 50 * MiB  # CPU: the process's resident set


@pytest.mark.parametrize("pass_,elems", [("fwd", 60 + 12 + 20), ("fwd+bwd", 3 * 60 + 3 * 12 + 2 * 20)])
def test_midpoint_byte_model_counts_every_tensor(pass_, elems):
    """weighted_midpoint's bytes: x (4, 3, 5) and w (4, 3) read, out (4, 5) written; fwd+bwd: the backward reads x,
    w and grad_out again and writes dx, dw (the model counted x alone: 60 of 92 forward elements here, ~1/D
    short at the default shapes)."""
    rows = _rows("stereographic", ["--ops", "weighted_midpoint", "--midpoint-shapes", "4x3x5:1", "--dtype", "fp64",
                                   "--passes", pass_])
    assert [r.work for r in rows] == [8 * elems]


def test_cpu_clock_with_several_threads_says_it_sums_them(monkeypatch, tmp_path, capsys):
    """--clock cpu reads time.process_time: the CPU time of every thread of the process (OpenMP spin-waits
    included), so at --threads 2 a "ms" is CPU-ms over both threads, not the call's time; the run says so in its
    log and in the JSON's timing note (it said "process CPU time" only)."""
    import json

    monkeypatch.setattr(_runner, "copy_bandwidth", lambda device: {"mib": 1, "median_ms": 1.0, "gbps": 1.0})
    old = torch.get_num_threads()
    try:
        _runner.main(["--families", "poincare", "--ops", "relu", "--poincare-image", "1,2,2,2", "--passes", "fwd",
                      "--repeats", "1", "--warmup", "1", "--no-compile", "--no-plot", "--no-settle", "--clock",
                      "cpu", "--threads", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(old)
    log = capsys.readouterr().out
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())["meta"]
    assert "summed over the 2 threads" in meta["timing"]
    assert "summed over the 2 threads" in log


def test_attention_limit_label_names_the_rows_gemm():
    """The attention limit is torch.mm in the row's dtype: an fp64 row's limit is a DGEMM, not the "SGEMM" its label
    said."""
    rows = _rows("attention", ["--attention-n", "32", "--dtype", "fp64,fp32"])
    labels = {r.dtype: r.limit for r in rows}
    assert "SGEMM" not in labels["fp64"] and "DGEMM" in labels["fp64"] and "SGEMM" in labels["fp32"]


@pytest.mark.parametrize("n", [3, 4])
def test_interleaved_varies_who_runs_just_before_each_contender(n):
    """Rotating one order keeps every contender's predecessor in a round fixed (geoops always right after
    torch.compile's or the peer's call, whose freed temporaries the next call's allocations meet: bench/gaunt.py
    measured 8-160 % from that alone).  The rounds vary the predecessors: over the samples each contender
    follows at least two others (every other one for 4 contenders)."""
    from bench._timing import interleaved

    seq = []
    fns = {name: (lambda name=name: seq.append(name)) for name in "abcd"[:n]}
    interleaved(fns, torch.device("cpu"), repeats=n + 1, warmup=1, min_sample_s=0.0, max_inner=1)
    seq = seq[n:]  # the timed rounds (the warm-up calls come first, one per contender)
    rounds = [seq[i:i + n] for i in range(0, len(seq), n)]
    for name in fns:
        before = {r[r.index(name) - 1] for r in rounds if r.index(name) > 0}
        assert len(before) >= min(2, n - 1) and (n % 2 or len(before) == n - 1), (name, before, rounds)


@pytest.mark.parametrize("n", range(1, 8))
def test_round_order_is_balanced_for_every_count(n):
    """round_order over one full cycle (n rounds for an even count, 2n for an odd one: the odd rounds reversed) is
    a balanced design: every round a permutation, every contender in every position equally often, and every
    ordered pair of neighbours equally often (so each contender follows every other one as often), 1 and odd counts
    included (session 40 review)."""
    from collections import Counter

    from bench._timing import round_order

    names = [f"c{i}" for i in range(n)]
    rounds = [round_order(names, r) for r in range(n if n % 2 == 0 else 2 * n)]
    assert all(sorted(o) == names for o in rounds)
    places = Counter((o[i], i) for o in rounds for i in range(n))
    pairs = Counter((o[i], o[i + 1]) for o in rounds for i in range(n - 1))
    assert len(places) == n * n and len(set(places.values())) == 1, places
    assert len(pairs) == n * (n - 1) and len(set(pairs.values())) <= 1, pairs


def test_gaunt_forces_peer_weights_the_output_once_per_channel():
    """The e3nn side of gaunt_forces multiplies its output by geoops' weight_out (C, L + 1) in e3nn's layout: one
    (1, C (L+1)^2) row broadcast over the batch, as a user would write it; it expanded the weights to the whole
    (B, C, (L+1)^2) batch and converted that layout on every call (forward and double backward: ~6 % of e3nn's
    step at lmax 2), work the geoops side does not do."""
    from bench import gaunt as bg
    from geoops.reference import gaunt as R

    L, B, C = 2, 3, 2
    w = torch.randn(C, L + 1, dtype=torch.float64)
    got = bg.e3nn_out_weight(w, R.degree_of_index(L))
    full = bg.to_e3nn_layout(w[:, R.degree_of_index(L)].expand(B, C, (L + 1) ** 2))
    assert got.shape == (1, C * (L + 1) ** 2) and torch.equal(got.expand(B, -1), full)


def test_attention_window_flops_count_the_band_each_query_has():
    """Causal windowed attention: query i sees min(i + 1, w1) x min(i + 1, w2) key pairs, 4 D FLOPs each (scores
    and the weighted sum); the model counted w1 w2 for every query, also the first ones whose band is cut by the
    sequence start (+3 % at N = 1024, w = (64, 16); +33 % at N = 128)."""
    from bench import attention as A

    # N = 4, w = (2, 3): bands 1x1, 2x2, 2x3, 2x3 -> 17 pairs
    assert A.flops(4, 5, 1, True, (2, 3), "fwd") == 4 * 5 * 17
    assert A.flops(4, 5, 2, True, (2, 3), "fwd+bwd") == 4 * 4 * 5 * 17 * 2


def test_poincare_memory_bound_rows_count_the_backwards_tensors():
    """relu / batchnorm2d rows (GB/s): the forward reads x and writes y; the backward reads grad_out and x and
    writes dx: 5 tensors of (B, C, H, W) in all for fwd+bwd (the model counted 6, 3x the forward, as for a GEMM's
    FLOPs)."""
    rows = _rows("poincare", ["--ops", "relu,batchnorm2d", "--poincare-image", "2,3,4,5"])
    t = 4 * 2 * 3 * 4 * 5
    assert {(r.op, r.pass_): r.work for r in rows} == {
        ("relu", "fwd"): 2 * t, ("relu", "fwd+bwd"): 5 * t,
        ("batchnorm2d", "fwd"): 2 * t, ("batchnorm2d", "fwd+bwd"): 5 * t}


def test_fftconv_flops_count_the_minimal_transforms():
    """fftconv's GFLOP/s counts real FFTs of n = 2L points (2.5 n log2 n each): forward rfft(u) (B H), rfft(k) (H),
    irfft (B H); backward rfft(grad) (B H), irfft for du (B H), one irfft for dk summed over the batch in frequency
    (H), reusing the forward's spectra: 4 B H + 2 H in all (the model counted 3 H)."""
    rows = _rows("ssm", ["--ops", "fftconv", "--ssm-B", "2", "--ssm-H", "3", "--ssm-L", "4", "--ssm-no-memory"])
    per = 2.5 * 8 * 3
    assert {r.pass_: r.work for r in rows} == {"fwd": per * (2 * 2 * 3 + 3), "fwd+bwd": per * (4 * 2 * 3 + 2 * 3)}


def _result(row: "_runner.Row", ms: dict) -> dict:
    out = {"family": row.family, "op": row.op, "label": row.label, "pass": row.pass_, "shape": list(row.shape),
           "dtype": row.dtype, "backend": "cpp", "limit_op": row.limit, "peer": row.peer, "work": row.work,
           "unit": row.unit, "errors": {}, "first_call_s": {},
           "timings": {k: {"median_ms": v, "min_ms": v, "inner": 1, "samples_ms": [v]} for k, v in ms.items()}}
    return _runner._finish_row(out, row)


def test_markdown_names_a_rows_own_peer():
    """A row whose peer is not the family's (knn: topk of geoops' cdist; mobius_blockdiag_matvec: the dense
    route) had its speed-up printed under the family's "vs geoopt" column with nothing saying so (the README read
    the blockdiag rows as "faster than geoopt"): the table names such peers under it."""
    rows = [_runner.Row("fam", "knn", "fwd", [4, 4], "fp32", setup=None, work=1e6, unit="GFLOP/s", limit="cdist",
                        peer="topk(geoops cdist)"),
            _runner.Row("fam", "dist", "fwd", [4, 4], "fp32", setup=None, work=1e6, unit="GFLOP/s", limit="cdist",
                        peer="geoopt")]
    tab = {"family": "fam", "title": "t", "peer": "geoopt", "unit": "GFLOP/s", "notes": {},
           "rows": [_result(r, {"geoops": 1.0, "limit": 1.0, "peer": 2.0}) for r in rows]}
    meta = {"argv": [], "date": "d", "device_name": "cpu", "device": "cpu", "threads": 1,
            "copy_bandwidth": {"gbps": 1.0}, "versions": {"torch": "t", "geoops": "g"},
            "git": {"commit": "c", "dirty": False}, "repeats": 1}
    md = _runner.markdown(meta, [tab])
    assert "knn fwd: topk(geoops cdist)" in md and "dist fwd: geoopt" not in md


def test_knn_and_blockdiag_labels_name_their_peer():
    rows = _rows("stereographic", ["--ops", "knn,mobius_blockdiag_matvec", "--knn-shape", "8,8,2,2",
                                   "--blockdiag-shapes", "4x2x2"])
    for r in rows:
        assert "vs " in r.label, (r.op, r.label)


class _MaxOut(TorchDispatchMode):
    """The largest new tensor (elements) written by the aten ops run under it (views of an input not counted)."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.ops = 0  # how many ops wrote a new tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
               if isinstance(a, torch.Tensor)}
        new = [t for t in (out if isinstance(out, (tuple, list)) else (out,))
               if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in ins]
        self.ops += bool(new)
        self.n = max([self.n] + [t.numel() for t in new])
        return out


def test_midpoint_limit_reads_the_points_once():
    """weighted_midpoint's limit, the weighted Euclidean sum over reducedim, is one contraction (einsum): it read x
    into an x-sized product w * x and then summed that (three passes over x's bytes), so geoops ran at 0.11-0.68x
    of its "limit" in bench/results/latest-cpu-midpoint.md."""
    rows = _rows("stereographic", ["--ops", "weighted_midpoint", "--midpoint-shapes", "64x8:0,16x4x8:1",
                                   "--passes", "fwd"])
    assert len(rows) == 2
    for r in rows:
        fns, _, _ = r.setup()
        with _MaxOut() as m:
            fns["limit"]()
        assert m.n < math.prod(r.shape) // 2, (r.shape, m.n)


def test_three_vector_limit_is_one_pass():
    """gyration / parallel_transport read three (N, D) tensors and write one: their limit is one torch op doing
    that (torch.addcmul(x, y, u)); x + y + u wrote and re-read an (N, D) temporary (6 tensor passes for 4)."""
    rows = _rows("stereographic", ["--rows", "64", "--dims", "8", "--passes", "fwd", "--ops",
                                   "gyration,parallel_transport"])
    for r in rows:
        fns, _, _ = r.setup()
        with _MaxOut() as m:
            fns["limit"]()
        assert m.ops == 1, (r.op, r.limit, m.ops)


def test_row_op_limits_are_one_pass():
    """Each row op's limit writes its output and nothing else: torch.linalg.vecdot (dist's limit) computes x * y
    into an (N, D) temporary and then sums it (3-3.6x the time of a one-pass contraction on this machine, at
    D = 2 ... 64), so dist read 0.22x "its limit"; the limit is einsum('nd,nd->n')."""
    from bench import stereographic as S

    for op in S.OPS:
        inp = S.make_inputs(op, 64, 8, torch.float32, "cpu")
        with _MaxOut() as m:
            out = S.limit_call(op)(inp)
        assert m.ops == 1 and m.n == out.numel(), (op, S.LIMIT_TEXT[S.OPS[op].limit], m.ops, m.n)


def test_peak_memory_is_a_steady_call_not_the_first():
    """The peak memory of a row is that of a call after the first: a first call's one-time allocations (lazy
    tables, a BLAS or cuBLAS workspace, thread stacks) stay resident and would be charged to whichever contender
    happened to be measured first in the process (it measured each contender's very first call)."""
    from bench import ssm

    cache = []

    def call():  # a 32 MiB one-time table on the first call, 8 MiB of temporaries on every call
        if not cache:
            cache.append(torch.ones(8 * MiB))
        t = torch.ones(2 * MiB)
        return t.sum()

    got = ssm.peak_extra(call, torch.device("cpu")) / MiB
    assert 6 <= got <= 14, got


def test_gaunt_cpu_time_rounds_vary_the_order():
    """bench.gaunt's CPU-time rankings (the route tables `auto` reads, the README's e3nn ratios) ran its contenders
    in one fixed order every round (A B C A B C ...): each always after the same one.  They follow the runner's
    round order now."""
    from bench import gaunt as bg

    seq = []
    calls = {n: (lambda n=n: seq.append(n)) for n in "abcd"}
    bg.cpu_ms_interleaved(calls, repeats=4)
    rounds = [seq[i:i + 4] for i in range(4, len(seq), 4)]  # after one warm-up call each
    assert len({tuple(r) for r in rounds}) == 4, rounds


# ---------------------------------------------------------------- the runner's mechanics (helper "benchfix2")
def _fake_family(name, ops, seen, *, dtypes=None, prepare=None, rows_error=None):
    """A family module for the runner: `ops` (each one row per dtype and pass, doing nothing); a row's setup
    appends (family, op, dtype) to `seen`.  `rows_error`: rows() raises it (a bad family option)."""
    import types

    mod = types.ModuleType(f"bench.fake_{name}")
    mod.TITLE, mod.PEER, mod.OP_NAMES = name, "eager", tuple(ops)
    if dtypes is not None:
        mod.DTYPES = tuple(dtypes)
    if prepare is not None:
        mod.prepare = prepare

    def rows(args, device):
        if rows_error is not None:
            raise rows_error
        for op in _runner.parse_list(args.ops, ops, ops, "op"):
            for dt in args.dtypes or (torch.float32,):
                for pass_ in args.passes:
                    def setup(op=op, dt=dt):
                        seen.append((name, op, _runner.DTYPE_SHORT[dt]))
                        return {"geoops": lambda: None, "limit": lambda: None}, None, {}
                    yield _runner.Row(family=name, op=op, pass_=pass_, shape=[1], dtype=_runner.DTYPE_SHORT[dt],
                                      setup=setup)
    mod.rows = rows
    return mod


@pytest.fixture
def fake_runner(monkeypatch):
    """Point the runner at fake families: fake_runner({name: module}) -> run(argv, tmp) -> (rc, json or None)."""
    import json

    import geoops

    monkeypatch.setattr(_runner, "copy_bandwidth", lambda device: {"mib": 1, "median_ms": 1.0, "gbps": 1.0})

    def install(mods):
        monkeypatch.setattr(geoops, "FAMILIES", tuple(mods))
        monkeypatch.setattr(_runner, "_family_module", lambda f: mods[f])

        def run(argv, out):
            rc = _runner.main([*argv, "--passes", "fwd", "--repeats", "1", "--warmup", "1", "--no-plot",
                               "--no-settle", "--device", "cpu", "--out", str(out)])
            files = list(out.glob("*.json"))
            return rc, (json.loads(files[0].read_text()) if files else None)
        return run
    return install


def test_ops_of_several_families_each_family_takes_its_own(fake_runner, tmp_path):
    """--ops naming ops of two families ran the first family, then stopped at the second one's op check (the op
    of the first family is not one of its ops) with SystemExit: nothing was written.  Each family now takes the
    ops it has; a family with none of them is skipped."""
    seen = []
    run = fake_runner({"fa": _fake_family("fa", ("a1", "a2"), seen), "fb": _fake_family("fb", ("b1", "b2"), seen),
                       "fc": _fake_family("fc", ("c1",), seen)})
    rc, res = run(["--no-compile", "--ops", "a2,b1"], tmp_path)
    assert rc == 0 and sorted(seen) == [("fa", "a2", "fp32"), ("fb", "b1", "fp32")]
    assert {t["family"]: [r["op"] for r in t["rows"]] for t in res["tables"]} == {"fa": ["a2"], "fb": ["b1"]}


def test_an_op_no_family_has_is_an_error_before_any_timing(fake_runner, tmp_path):
    seen = []
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen), "fb": _fake_family("fb", ("b1",), seen)})
    with pytest.raises(SystemExit) as e:
        run(["--no-compile", "--ops", "a1,zz"], tmp_path)
    msg = str(e.value)
    assert "zz" in msg and "fa: a1" in msg and "fb: b1" in msg, msg
    assert seen == [] and not list(tmp_path.glob("*.json"))


def test_a_bad_family_option_stops_the_run_before_any_timing(fake_runner, tmp_path):
    """Every family's rows are listed before the first one is timed: an option error of the second family (a
    malformed shape, say) stops the run up front, not after the first family's minutes of timing."""
    seen = []
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen),
                       "fb": _fake_family("fb", ("b1",), seen, rows_error=ValueError("bad --fb-shape"))})
    with pytest.raises(SystemExit) as e:
        run(["--no-compile"], tmp_path)
    assert "fb" in str(e.value) and "bad --fb-shape" in str(e.value)
    assert seen == []


def test_dtype_each_family_takes_the_dtypes_it_runs(fake_runner, tmp_path):
    """A family declares the dtypes its rows run (DTYPES); --dtype gives each the ones it has, a family with none
    is skipped (the table says so), and a dtype no selected family runs is an error up front."""
    seen = []
    mods = {"fa": _fake_family("fa", ("a1",), seen, dtypes=(torch.float32, torch.float64)),
            "fb": _fake_family("fb", ("b1",), seen)}
    run = fake_runner(mods)
    rc, res = run(["--no-compile", "--dtype", "fp64,bf16"], tmp_path)
    assert rc == 0 and sorted(seen) == [("fa", "a1", "fp64"), ("fb", "b1", "bf16"), ("fb", "b1", "fp64")]
    notes = {t["family"]: " ".join(t["notes"].values()) for t in res["tables"]}
    assert "bf16" in notes["fa"], notes
    seen.clear()
    with pytest.raises(SystemExit) as e:
        run(["--no-compile", "--families", "fa", "--dtype", "bf16"], tmp_path / "x")
    assert "bf16" in str(e.value) and "fa: fp32, fp64" in str(e.value)
    assert seen == []


def test_a_failing_family_keeps_the_others_results_and_fails_the_run(fake_runner, tmp_path):
    """A family that raised (its prepare, a contender failing after its first call) ended the run with a traceback
    and no results at all, the earlier families' included.  It is reported, the others still run, the results are
    written, and the exit status says the run is partial."""
    seen = []

    def boom(args, log):
        raise RuntimeError("prepare failed")
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen, prepare=boom), "fb": _fake_family("fb", ("b1",), seen)})
    rc, res = run(["--no-compile"], tmp_path)
    assert rc == 1 and seen == [("fb", "b1", "fp32")]
    tabs = {t["family"]: t for t in res["tables"]}
    assert "prepare failed" in tabs["fa"]["error"] and [r["op"] for r in tabs["fb"]["rows"]] == ["b1"]
    assert res["meta"]["failed_families"] == ["fa"]
    assert "prepare failed" in next(tmp_path.glob("*.md")).read_text()


def test_an_interrupted_run_writes_what_it_measured(fake_runner, tmp_path):
    """Ctrl-C in the middle of a long run lost every row measured so far; now they are written (the run marked
    interrupted) and the exit status is 130."""
    seen = []
    mod = _fake_family("fb", ("b1", "b2"), seen)
    rows0 = mod.rows

    def rows(args, device):
        for r in rows0(args, device):
            if r.op == "b2":
                def stop():
                    raise KeyboardInterrupt
                r.setup = stop
            yield r
    mod.rows = rows
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen), "fb": mod})
    rc, res = run(["--no-compile"], tmp_path)
    assert rc == 130 and res["meta"]["interrupted"]
    assert [[r["op"] for r in t["rows"]] for t in res["tables"]] == [["a1"], ["b1"]]


def test_a_familys_compile_settings_do_not_leak_into_the_next(fake_runner, tmp_path):
    """The stereographic family turns on dynamo's nested_graph_breaks for torch.compile(geoopt) and left it on for
    every family after it (their compiled peers then compiled under another setting than in a run of their own).
    The runner restores torch's compile settings (and the thread count) after each family."""
    import torch._dynamo as dynamo

    # (not monkeypatch.setattr: on a torch config module pytest records no old value, and its undo's delattr hides
    # the setting for good: every later torch.compile in the process failed with "nested_graph_breaks does not exist")
    with dynamo.config.patch(nested_graph_breaks=False):
        _compile_settings_scope_check(dynamo, fake_runner, tmp_path)
    assert isinstance(dynamo.config.nested_graph_breaks, bool)  # still a setting (raises if hidden)


def _compile_settings_scope_check(dynamo, fake_runner, tmp_path):
    from bench import stereographic

    seen, during = [], []
    mod = _fake_family("fb", ("b1",), seen)
    rows0 = mod.rows

    def rows(args, device):
        for r in rows0(args, device):
            setup0 = r.setup

            def setup(setup0=setup0):
                during.append((dynamo.config.nested_graph_breaks, torch.get_num_threads()))
                return setup0()
            r.setup = setup
            yield r
    mod.rows = rows

    def prep(args, log):
        torch.set_num_threads(1)
        return stereographic.prepare(args, log)
    threads = torch.get_num_threads()
    fa = _fake_family("fa", ("a1",), seen, prepare=prep)
    fa.add_arguments = stereographic.add_arguments  # --compile-nested
    run = fake_runner({"fa": fa, "fb": mod})
    rc, _ = run(["--compile-nested", "on"], tmp_path)
    assert rc == 0 and during == [(False, threads)]
    assert dynamo.config.nested_graph_breaks is False and torch.get_num_threads() == threads


def test_attention_and_gaunt_honour_ops():
    """attention and gaunt ignored --ops (every row ran whatever was asked)."""
    with pytest.raises(SystemExit, match="nope"):
        _rows("attention", ["--attention-n", "32", "--ops", "nope"])
    assert {r.op for r in _rows("attention", ["--attention-n", "32", "--ops", "triple_attention"])} == \
        {"triple_attention"}
    g = ["--gaunt-lmax", "1", "--gaunt-rows", "2", "--gaunt-channels", "1", "--gaunt-forces-lmax", "1"]
    assert {r.op for r in _rows("gaunt", [*g, "--ops", "gaunt_forces"])} == {"gaunt_forces"}
    assert {r.op for r in _rows("gaunt", [*g, "--ops", "gaunt_tensor_product"])} == {"gaunt_tensor_product"}
    from geoops import FAMILIES

    for fam in FAMILIES:  # every family lists the ops --ops may name (the runner splits --ops by them)
        ops = _runner._family_module(fam).OP_NAMES
        assert ops and all(isinstance(o, str) for o in ops), fam


@pytest.mark.parametrize("family,argv", [
    ("ssm", ["--ops", "s4d_kernel,fftconv,ssm_conv", "--ssm-H", "2", "--ssm-N", "2", "--ssm-L", "16", "--ssm-B", "1",
             "--ssm-no-memory"]),
    ("poincare", ["--ops", "fc,relu", "--poincare-fc", "4,3,2", "--poincare-image", "1,2,2,2"]),
])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_ssm_and_poincare_honour_dtype(family, argv, pass_):
    """ssm and poincare ran fp32 whatever --dtype said (and labelled the rows fp32)."""
    rows = _rows(family, [*argv, "--dtype", "fp64", "--passes", pass_])
    assert rows and {r.dtype for r in rows} == {"fp64"}
    for r in rows:
        fns, _, _ = r.setup()
        for name in ("geoops", "limit", "peer"):
            if name in fns:
                out = fns[name]()
                out = out[0] if isinstance(out, (tuple, list)) else out
                assert out.dtype in (torch.float64, torch.complex128), (r.op, name, out.dtype)


def test_help_says_which_ops_and_dtypes_each_family_runs(capsys):
    with pytest.raises(SystemExit):
        _args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ssm: s4d_kernel, s4d_kernel_64k, fftconv, ssm_conv" in text, text
    assert "gaunt: gaunt_tensor_product, gaunt_forces" in text
    assert "ssm: fp32, fp64" in text and "poincare: fp32, fp64" in text


def test_wordnet_row_says_it_runs_at_one_thread():
    """The wordnet row runs every contender at 1 torch thread whatever --threads says; its label did not say so
    (next to rows measured at 2 threads)."""
    import inspect

    from bench import stereographic, wordnet

    r = stereographic.wordnet_row(torch.float32)
    n = inspect.signature(wordnet.epoch_row_setup).parameters["threads"].default
    assert n == wordnet.ROW_THREADS == 1 and "1 thread" in r.label, r.label


def _load_script(path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ab_" + Path(path).parent.name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ab_scripts_use_the_runners_round_order():
    """scripts/*/ab.py kept their own orders (rows_ab rotated, the others one fixed order), each contender always
    after the same one; they take the runner's round order (bench._timing.round_order)."""
    from pathlib import Path

    from bench._timing import round_order

    root = Path(__file__).resolve().parents[1]
    ab = _load_script(root / "scripts" / "rows_ab" / "ab.py")
    seq = []
    calls = {n: (lambda inp, n=n: seq.append(n)) for n in "abc"}
    ab.timed_rounds(calls, None, 4, 1, time.perf_counter)
    assert [seq[3 * r:3 * r + 3] for r in range(4)] == [round_order(list("abc"), r) for r in range(4)]
    for name in ("long_rows", "short_rows", "triple_bwd"):
        src = (root / "scripts" / name / "ab.py").read_text()
        assert "round_order(" in src, name


def test_a_contender_failing_after_its_first_call_costs_only_itself(fake_runner, tmp_path):
    """A contender that passed its first call and then raised (a second call out of memory, a recompilation
    error) took the whole family down: the row now reports it and times the other contenders, and the family's
    next rows run."""
    seen = []
    mod = _fake_family("fa", ("a1", "a2"), seen)
    rows0 = mod.rows

    def rows(args, device):
        for r in rows0(args, device):
            if r.op == "a1":
                def setup():
                    calls = []

                    def flaky():
                        calls.append(1)
                        if len(calls) > 1:
                            raise RuntimeError("out of memory on a later call")
                    return {"geoops": lambda: None, "limit": lambda: None, "peer": flaky}, None, {}
                r.setup = setup
            yield r
    mod.rows = rows
    run = fake_runner({"fa": mod})
    rc, res = run(["--no-compile"], tmp_path)
    a1, a2 = res["tables"][0]["rows"]
    assert rc == 0 and "out of memory" in a1["errors"]["peer"] and set(a1["timings"]) == {"geoops", "limit"}
    assert a2["timings"] and seen == [("fa", "a2", "fp32")]


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"], ["--threads", "-2"]])
def test_bad_counts_are_errors_up_front(argv, fake_runner, tmp_path):
    """--repeats 0 reached statistics.median([]) in the first row (every row failed); the counts are checked with
    the other options."""
    seen = []
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen)})
    with pytest.raises(SystemExit) as e:
        _runner.main(["--no-compile", "--no-settle", "--out", str(tmp_path), *argv])
    assert argv[0] in str(e.value) and seen == []


def test_a_partial_run_does_not_publish(fake_runner, tmp_path, monkeypatch):
    """--publish of a run where a family failed overwrote the committed latest-*.md table with the partial one;
    a partial run writes to --out only and says so."""
    seen = []
    pub = tmp_path / "checkout" / "results"
    pub.parent.mkdir()
    (pub.parent / "__main__.py").write_text("")
    (tmp_path / ".git").mkdir()  # a source checkout's work tree (the test's own checkout may have none: CI's portable copy)
    monkeypatch.setattr(_runner, "SOURCE_RESULTS", pub)

    def boom(args, log):
        raise RuntimeError("prepare failed")
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen, prepare=boom), "fb": _fake_family("fb", ("b1",), seen)})
    rc, res = run(["--no-compile", "--publish"], tmp_path / "out")
    assert rc == 1 and res is not None and not pub.exists()
    rc, res = run(["--no-compile", "--publish", "--families", "fb"], tmp_path / "out2")
    assert rc == 0 and list(pub.glob("*.md"))


def test_a_run_stopped_by_sigterm_writes_what_it_measured(fake_runner, tmp_path, monkeypatch):
    """`timeout` (scripts/gpu_check.sh runs each bench step under one) stops a run with SIGTERM, which ended the
    process at once: every row measured so far was lost.  The runner treats it like Ctrl-C (rows written, exit 143)
    and puts the previous handler back when it returns."""
    import os
    import signal

    class Terminated(Exception):
        pass

    def ours(signum, frame):  # stands in for the default action (which would end pytest)
        raise Terminated

    monkeypatch.setattr(signal, "getsignal", signal.getsignal)
    old = signal.signal(signal.SIGTERM, ours)
    try:
        seen = []
        mod = _fake_family("fb", ("b1", "b2"), seen)
        rows0 = mod.rows

        def rows(args, device):
            for r in rows0(args, device):
                if r.op == "b2":
                    def term():
                        os.kill(os.getpid(), signal.SIGTERM)
                        return {"geoops": lambda: None}, None, {}
                    r.setup = term
                yield r
        mod.rows = rows
        run = fake_runner({"fa": _fake_family("fa", ("a1",), seen), "fb": mod})
        rc, res = run(["--no-compile"], tmp_path)
        assert rc == 143 and res["meta"]["interrupted"] == "SIGTERM"
        assert [[r["op"] for r in t["rows"]] for t in res["tables"]] == [["a1"], ["b1"]]
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_run_that_raises_puts_the_sigterm_handler_back(fake_runner, tmp_path):
    """The runner's SIGTERM handler (which turns `timeout`'s SIGTERM into the Ctrl-C path) was put back only when the
    family loop ended normally: a SystemExit from a family (its prepare() here) left it installed, so a later SIGTERM
    raised KeyboardInterrupt in whatever the process ran next (an in-process caller, pytest).  Session 40 review."""
    import signal

    def ours(signum, frame):
        raise AssertionError("not called")

    def bad(args, log):
        raise SystemExit("fa: a bad option")

    old = signal.signal(signal.SIGTERM, ours)
    try:
        run = fake_runner({"fa": _fake_family("fa", ("a1",), [], prepare=bad)})
        with pytest.raises(SystemExit, match="a bad option"):
            run(["--no-compile"], tmp_path)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, old)


def test_ctrl_c_between_two_families_writes_what_was_measured(fake_runner, tmp_path):
    """Ctrl-C (or `timeout`'s SIGTERM) outside a family's own try block (here: while the runner reads the next
    family's PEER) escaped main: nothing was written.  Now it ends the run as inside a family (rows written, exit
    130).  Session 40 review."""
    import types

    class Stops(types.ModuleType):
        @property
        def PEER(self):
            raise KeyboardInterrupt

    seen = []
    fb = _fake_family("fb", ("b1",), seen)
    fb.__class__ = Stops
    run = fake_runner({"fa": _fake_family("fa", ("a1",), seen), "fb": fb})
    rc, res = run(["--no-compile"], tmp_path)
    assert rc == 130 and res["meta"]["interrupted"] == "Ctrl-C"
    assert [[r["op"] for r in t["rows"]] for t in res["tables"]] == [["a1"]]


def test_gpu_check_keeps_a_partial_runs_results(tmp_path):
    """scripts/gpu_check.sh's bench step returned at a failing run's exit status before copying its JSON and markdown
    into the tarball: the rows a partial run wrote (a failed family, the step's timeout) were lost."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "fakepy.sh"  # "$PY -m bench ... --out DIR": writes a result, then fails like a partial run
    fake.write_text('#!/bin/bash\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'
                    'mkdir -p "$out"; echo "{}" > "$out/r.json"; echo t > "$out/latest.md"; exit 1\n')
    fake.chmod(0o755)
    script = (f'TMP={tmp_path}; PY={fake}; mkdir -p $TMP/bench-all\n'
              f'eval "$(sed -n \'/^bench() {{/,/^}}/p\' {root}/scripts/gpu_check.sh)"\n'
              'bench t cpp --families x; echo "rc=$?"')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert "rc=1" in r.stdout, (r.stdout, r.stderr)
    assert (tmp_path / "bench-all" / "bench-t.json").exists() and (tmp_path / "bench-all" / "bench-t-latest.md").exists()
