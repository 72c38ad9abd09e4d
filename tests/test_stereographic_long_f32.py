"""fp32 rows longer than the short-row cut in csrc/cpu/stereographic_lanes.h: the long-row sums of AVX-512 and (session
28) AVX2 builds against the row_sums path of other builds and dtypes (GEOOPS_STEREO_LONG_SUMS=0) and the one-pass loop.

Every row op at D from 17 to 128 (tails of 1..15 floats after whole 16-float vectors), a row count that leaves a
partial block of lanes, NaN rows, strided rows; against the fp64 reference and against the row_sums path.  At the
end: the one-call float ops' staging in registers against its fallback block_fwd_float_call
(GEOOPS_STEREO_FLOAT_STAGE=0), mobius_add / mobius_sub's float row sums against the double sums
(GEOOPS_STEREO_F32_SUMS=0), logmap's one reciprocal of the denominator (GEOOPS_STEREO_LOGMAP_RCP), mobius_scalar_mul's
float32 r read in place (RowScalars::rf).
"""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from geoops._ops.stereographic import STEREO_OPS
from geoops.reference import stereographic as ref

from _stereo_rows import per_row_k, row_rel_err, short_layout
from _stress import num_threads

OPS = list(STEREO_OPS)
DIMS = (17, 31, 32, 48, 63, 64, 100, 128)


def _long_block(d: int, streams: int = 3) -> int:
    """Rows per block of long fp32 rows of width d (lane_block / block_rows in csrc/cpu/stereographic_lanes.h,
    stereographic_rows.h: the rows of `streams` tensors in 16 KiB, at most 32, whole double vectors): 16 at D = 64
    with AVX-512, 20 with AVX2."""
    lanes = int(short_layout()["double_lanes"])
    return max(lanes, min(32, max(1, 16384 // (d * 4 * streams))) // lanes * lanes)


def _long_sums_build() -> bool:
    """Whether this build has the long-row sums (long_sums_f32: AVX-512, and AVX2 since session 28)."""
    return short_layout()["isa"] in ("AVX512", "AVX2")


def _skip_without_long_loops():
    """The knobs of the long-row loops (GEOOPS_STEREO_LONG_LOOP, _NT_STORES, _PASS_ROT) are read only where the build
    has the long-row sums (kLongSumsF32 in csrc/cpu/stereographic_lanes.h); elsewhere (DEFAULT: the portable build)
    every setting runs the same code, so a comparison of two settings could not fail there."""
    if not _long_sums_build():
        pytest.skip("no long-row loops on this build: the knobs compared here are not read")


def _staged_float_calls_build() -> bool:
    """Whether this build has the staged float calls (block_fwd_float_reg, block_fwd_logmap_rcp: AVX-512 only; AVX2
    and DEFAULT builds run block_fwd_float_call whatever GEOOPS_STEREO_FLOAT_STAGE / _LOGMAP_RCP say)."""
    return short_layout()["isa"] == "AVX512"


def _assert_close_nan(actual, expected, **kw):
    """torch.testing.assert_close(actual, expected, equal_nan=True, **kw), with a quick pass when the two have the
    same dtype and shape and are equal (NaN where NaN): the same verdict (equal values pass any rtol / atol).  On one
    intra-op thread: the comparisons, not the kernels (1 or 2 threads, _with_threads), were most of the loop tests'
    CPU time (each small torch op on two OpenMP threads of a loaded 2-core machine ~10 ms of CPU, on one ~0.5 ms)."""
    with num_threads(1):
        if actual.dtype == expected.dtype and actual.shape == expected.shape:
            an, en = actual.isnan(), expected.isnan()
            if torch.equal(an, en) and torch.equal(actual.masked_fill(an, 0), expected.masked_fill(en, 0)):
                return
        torch.testing.assert_close(actual, expected, equal_nan=True, **kw)


def _ball_rows(g, n, d, max_norm, near_step=0, near=0.0, width=None):
    """n random directions (the first d columns of width-column draws) with norms uniform in [0, max_norm), every
    near_step-th row at norm `near` instead; float64."""
    v = torch.randn(n, width or d, generator=g, dtype=torch.float64)[:, :d]
    v = v / v.norm(dim=-1, keepdim=True)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_norm
    if near_step:
        r[::near_step] = near
    return v * r


def _inputs(op: str, n: int, d: int, seed: int, width: int | None = None):
    """Bench-like rows for k = -1 (|x| < 0.9, some within 1e-3 of the boundary, close pairs); fp32.
    width > d: the rows are the first d columns of wider rows (row stride != d)."""
    g = torch.Generator().manual_seed(seed)

    def ball(max_norm, near=False):
        return _ball_rows(g, n, d, max_norm, near_step=7 if near else 0, near=1 - 1e-3, width=width)

    args = {"x": ball(1.5 if op in ("expmap0", "project") else 0.9, near=op not in ("expmap0", "project"))}
    if STEREO_OPS[op].has_y:
        y = ball(1.5 if op == "expmap" else 0.9)
        if op != "expmap":
            y[5:9] = args["x"][5:9] + 1e-6 * torch.randn(4, d, generator=g, dtype=torch.float64)
        args["y"] = y
    if op == "mobius_scalar_mul":
        args["r"] = 0.5 + 1.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    out = {}
    for key, t in args.items():
        if width and key != "r":
            wide = torch.zeros(n, width, dtype=torch.float32)
            wide[:, :d] = t.float()
            out[key] = wide[:, :d]
        else:
            out[key] = t.float()
    return out


def _ordered(op, args):
    """The op's positional arguments from the dict: (r, x) or (x[, y])."""
    order = ("r", "x") if op == "mobius_scalar_mul" else ("x", "y")
    return [args[a] for a in order if a in args]


def _call(op, args, k):
    return getattr(gs, op)(*_ordered(op, args), k=k)


def _ref(op, args, k):
    return getattr(ref, op)(*(a.double() for a in _ordered(op, args)), k=k.double())


def _row_err(out, expect, args):
    """Row-wise error relative to the larger of the output's and the inputs' size (the writes a x + b y
    cancel in float on both paths)."""
    if out.dim() == 1:
        return ((out.double() - expect).abs() / expect.abs().clamp_min(1e-6))
    return row_rel_err(out, expect, args["x"])


def _halved(args):
    """x and y (not r) scaled by 1/2: inside k = 0.25's domain."""
    return {key: (t * 0.5 if key in ("x", "y") else t) for key, t in args.items()}


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("op", OPS)
def test_long_rows_f32_parity(op, d, monkeypatch):
    """Against the fp64 reference on the same fp32 inputs: no worse than 2x the row_sums path's error plus 1e-6;
    16 * 5 + 7 rows (a partial block of lanes); NaN in two rows stays in those rows (and is NaN there as on the
    row_sums path)."""
    n = 16 * 5 + 7
    args = _inputs(op, n, d, seed=d)
    k = torch.tensor(-1.0)
    nan_rows = [3, n - 1]
    args["x"][nan_rows[0], d // 2] = float("nan")
    key = "y" if STEREO_OPS[op].has_y else "x"
    args[key][nan_rows[1], d - 1] = float("nan")  # the last element: in the masked tail when d % 16 != 0
    expect = _ref(op, args, k)
    monkeypatch.setenv("GEOOPS_STEREO_LONG_SUMS", "0")
    old = _call(op, args, k)
    monkeypatch.setenv("GEOOPS_STEREO_LONG_SUMS", "1")
    new = _call(op, args, k)
    bad = torch.zeros(n, dtype=torch.bool)
    bad[nan_rows] = True
    rows_nan = new.isnan() if new.dim() == 1 else new.isnan().any(-1)
    assert not (rows_nan & ~bad).any(), rows_nan.nonzero().flatten().tolist()  # NaN stays in its row
    assert torch.equal(new.isnan(), old.isnan())  # (project and lambda_x clamp a NaN row: both paths alike)
    if op not in ("project", "lambda_x"):
        assert rows_nan[bad].all()
    e_new = float(_row_err(new[~bad], expect[~bad], {"x": args["x"][~bad]}).max())
    e_old = float(_row_err(old[~bad], expect[~bad], {"x": args["x"][~bad]}).max())
    assert e_new <= 2 * e_old + 1e-6, (e_new, e_old)
    # (mobius_sub of the close pairs: ~1e-4 on both paths, the write cancels; project: fp32's own margin eps)
    assert op == "project" or e_new < 5e-4, e_new


@pytest.mark.parametrize("op", ("mobius_add", "logmap", "dist", "expmap0"))
def test_long_rows_f32_strided_and_per_row_k(op, monkeypatch):
    """Rows of stride 80 (views of wider rows) and per-row k of both signs: same as the row_sums path."""
    n, d = 16 * 3 + 5, 64
    args = _inputs(op, n, d, seed=11, width=80)
    k = per_row_k(n, (-1.0, -0.3, 0.0, 0.25))
    args = _halved(args)
    expect = _ref(op, args, k)
    new = _call(op, args, k)
    monkeypatch.setenv("GEOOPS_STEREO_LONG_SUMS", "0")
    old = _call(op, args, k)
    torch.testing.assert_close(new, old, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(new.double(), expect, rtol=2e-5, atol=1e-6)


VEC_OPS = [op for op in OPS if not STEREO_OPS[op].scalar_out]


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d", (17, 63, 64, 100))
@pytest.mark.parametrize("op", VEC_OPS)
def test_one_pass_against_reference(op, d, threads):
    """The one-pass loop (block j's sums interleaved with block j - 1's writes) against the fp64 reference: odd D
    (masked tails), row counts with a partial last block in each thread's chunk, a single partial block, NaN rows
    (staying NaN), per-row k, strided rows, 1 and 2 threads."""
    with num_threads(threads):
        for n, args, k in _cases(op, d, tiny=False):
            new = _call(op, args, k)
            assert new[n // 2].isnan().any() or op in ("project", "lambda_x")
            ok = ~new.isnan().any(-1)
            assert ok.sum() >= n - 1
            expect = _ref(op, args, k)
            err = float(_row_err(new[ok], expect[ok], {"x": args["x"][ok]}).max())
            assert op == "project" or err < 5e-4, (n, err)


# ---------------------------------------------------------------- float staging and float sums
# The one-call float ops' staging in registers: bit-identical to its fallback block_fwd_float_call
# (GEOOPS_STEREO_FLOAT_STAGE=0) on every case, k > 0 rows sending their block back to it.  mobius_add / mobius_sub's float row
# sums (GEOOPS_STEREO_F32_SUMS): within 2x the eager fp32 reference's error plus a floor, close to the double sums.
STAGE_OPS = ("expmap", "expmap0", "logmap", "logmap0", "dist", "mobius_scalar_mul")


def _with_threads(threads, fn):
    with num_threads(threads):
        return fn()


def _same_bits_both_ways(knob, op, args, k, n, threads, monkeypatch):
    """The op's output with `knob`=0 and =1 (read per call): equal bit for bit (NaN where NaN); returns the =1 one."""
    monkeypatch.setenv(knob, "0")
    old = _with_threads(threads, lambda: _call(op, args, k))
    monkeypatch.setenv(knob, "1")
    new = _with_threads(threads, lambda: _call(op, args, k))
    _assert_close_nan(new, old, rtol=0, atol=0, msg=f"{knob}, n={n}")
    return new


def _cases(op, d, tiny=True):
    """(n, args, k): a partial last block per thread chunk with a NaN row (row n // 2); one partial block; strided
    rows (stride d + 5) with per-row k of both signs; with `tiny`, rows 1..3 of the k = -1 cases scaled by 1e-4 (the
    series branch)."""
    out = []
    for n, width, per_row in ((1031, None, False), (13, None, False), (613, d + 5, True)):
        args = _inputs(op, n, d, seed=d + n)
        if width:
            args = {key: (torch.cat([t, torch.zeros(n, width - d)], 1)[:, :d] if key != "r" else t)
                    for key, t in args.items()}
        args["x"][n // 2, d // 3] = float("nan")
        if per_row:
            k = per_row_k(n, (-1.0, -0.3, 0.0, 0.25))
            args = _halved(args)
        else:
            k = torch.tensor(-1.0)
            if tiny:
                args["x"][1:4] *= 1e-4  # z below the series cut
        out.append((n, args, k))
    return out


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d", (17, 63, 64, 100))
@pytest.mark.parametrize("op", STAGE_OPS)
def test_float_stage_matches_staged_blocks(op, d, threads, monkeypatch):
    """GEOOPS_STEREO_FLOAT_STAGE on (the default) and off give the same output bit for bit; knob read per call
    (AVX-512 builds: the only ones with the staged calls, _staged_float_calls_build; elsewhere the default output
    alone against the fp64 reference)."""
    monkeypatch.setenv("GEOOPS_STEREO_LOGMAP_RCP", "0")  # (logmap's one-reciprocal lanes: tested below)
    staged = _staged_float_calls_build()
    for n, args, k in _cases(op, d):
        if staged:
            new = _same_bits_both_ways("GEOOPS_STEREO_FLOAT_STAGE", op, args, k, n, threads, monkeypatch)
        else:
            new = _with_threads(threads, lambda: _call(op, args, k))
        expect = _ref(op, args, k)
        ok = ~(new.isnan() if new.dim() == 1 else new.isnan().any(-1))
        assert ok.sum() >= n - 1
        assert float(_row_err(new[ok], expect[ok], {"x": args["x"][ok]}).max()) < 5e-4


def _sum_inputs(n, d, seed, k_signs):
    """mobius_add rows: norms up to the boundary (1 - 1e-4 of it), close pairs, opposite pairs (x (+) y ~ 0),
    tiny rows; k = -1 or per-row k of both signs (positive-k rows scaled inside their domain)."""
    g = torch.Generator().manual_seed(seed)
    x, y = (_ball_rows(g, n, d, 1.0, near_step=5, near=1 - 1e-4) for _ in range(2))
    y[7:15] = x[7:15] + 1e-5 * torch.randn(8, d, generator=g, dtype=torch.float64)
    y[15:23] = -x[15:23] * (1 - 1e-3)
    x[23:26] *= 1e-6
    if k_signs:
        k = torch.tensor([-1.0, -0.3, 0.0, 0.25] * n, dtype=torch.float64)[:n].reshape(n, 1)
        x, y = x * 0.7, y * 0.7
    else:
        k = torch.tensor(-1.0, dtype=torch.float64)
    return x.float(), y.float(), k


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("k_signs", (False, True))
@pytest.mark.parametrize("d", (17, 31, 64, 100, 256, 300))
@pytest.mark.parametrize("op", ("mobius_add", "mobius_sub"))
def test_float_sums_accuracy(op, d, k_signs, threads, monkeypatch):
    """The float row sums (default) against the fp64 reference: per-row error <= 2x the eager fp32 reference's error
    plus 1e-6 (relative to the output's / inputs' size) and <= 2x the double sums' (GEOOPS_STEREO_F32_SUMS=0, read
    per call) plus 2e-6; NaN rows stay NaN; D = 300 (past the cut) keeps the double sums bit for bit."""
    n = 16 * 9 + 5  # a partial last block
    x, y, k = _sum_inputs(n, d, seed=d + 3 * k_signs, k_signs=k_signs)
    x[n - 2, d - 1] = float("nan")
    fn = getattr(gs, op)
    kf = k.float()
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "1")
    new = _with_threads(threads, lambda: fn(x, y, k=kf))
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
    old = _with_threads(threads, lambda: fn(x, y, k=kf))
    expect = getattr(ref, op)(x.double(), y.double(), k=k)
    eager = getattr(ref, op)(x, y, k=kf)
    assert new[n - 2].isnan().all() and old[n - 2].isnan().all()
    ok = torch.ones(n, dtype=torch.bool)
    ok[n - 2] = False
    assert not new[ok].isnan().any()
    args = {"x": x[ok]}
    e_new = _row_err(new[ok], expect[ok], args)
    e_eager = _row_err(eager[ok], expect[ok], args)
    assert float(e_new.max()) <= 2 * float(e_eager.max()) + 1e-6, (float(e_new.max()), float(e_eager.max()))
    # row by row too, with a floor of a few float ulps of the output / input size
    assert bool((e_new <= 2 * e_eager + 1e-6).all()), int((e_new > 2 * e_eager + 1e-6).sum())
    # against the double sums: the near-boundary opposite pairs (den < 0.5) take them again, the rest is a few ulps
    e_old = _row_err(old[ok], expect[ok], args)
    assert bool((e_new <= 2 * e_old + 2e-6).all()), float((e_new - 2 * e_old).max())
    torch.testing.assert_close(new[ok], old[ok], rtol=2e-5, atol=2e-6)
    if d > 256:
        _assert_close_nan(new, old, rtol=0, atol=0)


@pytest.mark.parametrize("loop", ("pass", "row"))
@pytest.mark.parametrize("d", (9, 16, 64))
@pytest.mark.parametrize("op", ("mobius_add", "mobius_sub"))
def test_float_sums_overflow_falls_back(op, d, loop, monkeypatch):
    """A row whose float sums overflow (|x| ~ 3e25: |x|^2 beyond float's range, finite in double) sends its block's
    sums back to double: that block equals the double sums (GEOOPS_STEREO_F32_SUMS=0) bit for bit, the huge row
    included (before the fallback checked finiteness, the block kept its float sums: an infinite |x|^2).  One row at
    a time (GEOOPS_STEREO_LONG_LOOP=row, session 21): the huge row alone goes back to double."""
    monkeypatch.setenv("GEOOPS_STEREO_LONG_LOOP", loop)
    g = torch.Generator().manual_seed(77 + d)
    n = 16 * 4
    x = torch.randn(n, d, generator=g) * 0.3 / d ** 0.5
    y = torch.randn(n, d, generator=g) * 0.3 / d ** 0.5
    x[16 + 5] = 3e25
    fn = getattr(gs, op)
    k = torch.tensor(-1.0)
    monkeypatch.setenv("GEOOPS_STEREO_F32_ROWS", "0")  # (D <= 16: the long path, not the register pass)
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "1")
    new = fn(x, y, k=k)
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
    old = fn(x, y, k=k)
    B = _long_block(d)  # (the block of row 21: rows 16..31 with 16-row blocks, 20..39 with 20)
    rows = slice(21 // B * B, 21 // B * B + B) if loop == "pass" else slice(21, 22)
    _assert_close_nan(new[rows], old[rows], rtol=0, atol=0)
    _assert_close_nan(new, old, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- logmap's one reciprocal, msm's float r
# logmap's lanes with one reciprocal of the denominator (GEOOPS_STEREO_LOGMAP_RCP, the default) against the four
# divisions (=0): the coefficients differ by a few double roundings, so the outputs agree to a float ulp (in practice
# bit for bit) and keep the divisions' error against fp64; blocks with k > 0 / NaN rows go back to the divisions.
@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d", (17, 63, 64, 100))
def test_logmap_rcp_matches_divisions(d, threads, monkeypatch):
    """GEOOPS_STEREO_LOGMAP_RCP on and off: outputs within 1 float ulp of each other (relative to the row's size),
    errors against the fp64 reference within the divisions' + 1e-7; the near-boundary rows (1 - 1e-3) and close
    pairs of _inputs included; knob read per call.  AVX-512 builds only (block_fwd_logmap_rcp; elsewhere
    logmap_rcp_on() is false: both settings run the divisions)."""
    if not _staged_float_calls_build():
        pytest.skip("no one-reciprocal logmap lanes on this build (AVX-512 only): both settings run the divisions")
    ndiff = 0
    for n, args, k in _cases("logmap", d):
        monkeypatch.setenv("GEOOPS_STEREO_LOGMAP_RCP", "0")
        old = _with_threads(threads, lambda: _call("logmap", args, k))
        monkeypatch.setenv("GEOOPS_STEREO_LOGMAP_RCP", "1")
        new = _with_threads(threads, lambda: _call("logmap", args, k))
        assert torch.equal(new.isnan(), old.isnan())
        ok = ~new.isnan().any(-1)
        assert ok.sum() >= n - 1
        scale = torch.maximum(old.abs().amax(-1, keepdim=True), args["x"].abs().amax(-1, keepdim=True))[ok]
        assert bool(((new[ok] - old[ok]).abs() <= 2 ** -23 * scale).all()), f"n={n}"
        ndiff += int((new[ok] != old[ok]).sum())
        expect = _ref("logmap", args, k)
        e_new = _row_err(new[ok], expect[ok], {"x": args["x"][ok]})
        e_old = _row_err(old[ok], expect[ok], {"x": args["x"][ok]})
        assert bool((e_new <= e_old + 1e-7).all()), float((e_new - e_old).max())
    assert ndiff <= 4, ndiff  # (a coefficient within ~3e-16 of a float rounding boundary: rare)


# mobius_scalar_mul's float32 r read in place (RowScalars::rf): the C++ op with r in float32 and the same values in
# float64 (the double copy, as before) give the same output and gradients bit for bit; per-row r of stride 1 and 2,
# one r for all rows.
@pytest.mark.parametrize("d", (5, 64))
@pytest.mark.parametrize("r_kind", ("rows", "strided", "one"))
def test_scalar_mul_float_r_in_place(d, r_kind):
    from geoops import _backend
    from geoops._ops.stereographic import STEREO_OPS as SO

    C = _backend.compiled()
    code = SO["mobius_scalar_mul"].code
    n = 613
    g = torch.Generator().manual_seed(d)
    x = (torch.randn(n, d, generator=g) * 0.8 / d ** 0.5).float()
    x[n // 3, 0] = float("nan")
    gy = torch.randn(n, d, generator=g)
    r_wide = (0.5 + 1.5 * torch.rand(2 * n, generator=g)).float()
    r_wide[7] = -1.25
    r32 = {"rows": r_wide[:n], "strided": r_wide[::2], "one": r_wide[3:4]}[r_kind]
    assert r_kind != "strided" or r32.stride(0) == 2
    k = torch.tensor([-1.0])
    outs = []
    for r in (r32, r32.double()):
        out = C.stereo_fwd_cpu(code, x, None, k, r, 1e-5)
        dx, _, dk, dr = C.stereo_bwd_cpu(code, gy, x, None, k, r, 1e-5, 1 | 4 | 8)
        outs.append((out, dx, dk, dr))
    for a, b in zip(*outs):  # (dr comes back in r's dtype)
        _assert_close_nan(a, b.to(a.dtype), rtol=0, atol=0)


# ---------------------------------------------------------------- non-temporal row writes (session 20)
# The one-pass loop's row writes with non-temporal stores (write_row_f32_nt; GEOOPS_STEREO_NT_STORES=1 forces them,
# =0 forces the regular stores; the default takes them for outputs of >= 32 MiB on huge pages): the same operations
# as write_row's contracted loop, so the same bits.  D a multiple of 16 takes them (32, 64, 128); D = 17 / 100 keep
# the regular stores under the knob (checked not to break); strided inputs, per-row k, NaN rows, partial blocks.
NT_OPS = tuple(op for op in OPS if not STEREO_OPS[op].scalar_out)


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d", (17, 32, 64, 100, 128))
@pytest.mark.parametrize("op", NT_OPS)
def test_nt_stores_same_bits(op, d, threads, monkeypatch):
    """GEOOPS_STEREO_NT_STORES=1 and =0 give the same output bit for bit (knob read per call)."""
    _skip_without_long_loops()
    for n, args, k in _cases(op, d):
        _same_bits_both_ways("GEOOPS_STEREO_NT_STORES", op, args, k, n, threads, monkeypatch)


# ---------------------------------------------------------------- the loops over long rows (session 21)
# fwd_rows' three loops over long fp32 vector rows (GEOOPS_STEREO_LONG_LOOP, read per call): pass (block j's sums with
# block j - 1's writes; the default on Intel CPUs), block (a block's sums, lane math, writes), row (mobius_add /
# mobius_sub one row at a time; their default elsewhere).  pass and block: the same bits; row: the same bits where the
# row sums are in double (GEOOPS_STEREO_F32_SUMS=0), and with the float sums the same bits except rows that share a
# 16-row block with a row whose denominator sends its sums back to double (the block loops redo the block);
# regular and non-temporal writes; partial blocks per thread chunk, strided rows, per-row k of both signs, NaN rows.
# The non-temporal writes (GEOOPS_STEREO_NT_STORES=1) only at D = 64: fwd_rows takes them only for D a multiple of 16
# (`nt` there tests D % 16 == 0 before it reads the knob), so at D = 17 / 100 both settings run the same loops
# (test_nt_stores_same_bits checks the knob there).
D_NT = ((17, "0"), (64, "0"), (64, "1"), (100, "0"))


def _loop_out(loop, op, args, k, threads, monkeypatch):
    monkeypatch.setenv("GEOOPS_STEREO_LONG_LOOP", loop)
    return _with_threads(threads, lambda: _call(op, args, k))


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d,nt", D_NT)
@pytest.mark.parametrize("op", NT_OPS)
def test_long_loops(op, d, nt, threads, monkeypatch):
    """GEOOPS_STEREO_LONG_LOOP=pass / block / row: pass and block bit for bit; row bit for bit with double sums and
    within the float sums' rounding (and bit for bit where no block fell back to double) with them."""
    _skip_without_long_loops()
    monkeypatch.setenv("GEOOPS_STEREO_NT_STORES", nt)
    for n, args, k in _cases(op, d):
        ref_out = _loop_out("pass", op, args, k, threads, monkeypatch)
        blk = _loop_out("block", op, args, k, threads, monkeypatch)
        _assert_close_nan(blk, ref_out, rtol=0, atol=0, msg=f"block, n={n}")
        row = _loop_out("row", op, args, k, threads, monkeypatch)
        if op not in ("mobius_add", "mobius_sub"):
            _assert_close_nan(row, ref_out, rtol=0, atol=0, msg=f"row, n={n}")
            continue
        _assert_close_nan(row, ref_out, rtol=2e-6, atol=2e-7, msg=f"row, n={n}")
        monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
        try:
            a = _loop_out("pass", op, args, k, threads, monkeypatch)
            b = _loop_out("row", op, args, k, threads, monkeypatch)
        finally:
            monkeypatch.delenv("GEOOPS_STEREO_F32_SUMS")
        _assert_close_nan(b, a, rtol=0, atol=0, msg=f"row, double sums, n={n}")
        if d != 64:
            continue
        # (D = 64: blocks of B rows, _long_block) rows of the blocks with no row near the fallback (den < 0.5 or not
        # finite, with a margin): the same bits
        x, y = (t.double() for t in _ordered(op, args))
        kk = k.double().reshape(-1) if k.numel() > 1 else k.double().expand(n)
        sgn = -1.0 if op == "mobius_sub" else 1.0
        xx, yy, xy = (x * x).sum(-1), (y * y).sum(-1), (x * y).sum(-1)
        den = 1 - 2 * sgn * kk * xy + kk * kk * xx * yy
        bad = ~(den >= 0.6)
        B = _long_block(d)
        nb = (n + B - 1) // B
        bad_blk = torch.zeros(nb * B, dtype=torch.bool)
        bad_blk[:n] = bad
        keep = ~bad_blk.view(nb, B).any(-1, keepdim=True).expand(nb, B).reshape(-1)[:n]
        assert n < 100 or int(keep.sum()) >= n // 2
        _assert_close_nan(row[keep], ref_out[keep], rtol=0, atol=0, msg=f"row bits, n={n}")


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d,nt", D_NT)
@pytest.mark.parametrize("op", NT_OPS)
def test_pass_rotation_same_bits(op, d, nt, threads, monkeypatch):
    """GEOOPS_STEREO_PASS_ROT (the one pass's write order of the pending block: default, auto, 0, 3, 8, 15, 16 rows):
    every row written once, with its own coefficients: bit for bit the blocked loop's result."""
    _skip_without_long_loops()
    monkeypatch.setenv("GEOOPS_STEREO_NT_STORES", nt)
    for n, args, k in _cases(op, d):
        monkeypatch.delenv("GEOOPS_STEREO_PASS_ROT", raising=False)
        ref_out = _loop_out("block", op, args, k, threads, monkeypatch)
        for rot in (None, "auto", "0", "3", "8", "15", "16"):
            if rot is None:
                monkeypatch.delenv("GEOOPS_STEREO_PASS_ROT", raising=False)
            else:
                monkeypatch.setenv("GEOOPS_STEREO_PASS_ROT", rot)
            out = _loop_out("pass", op, args, k, threads, monkeypatch)
            _assert_close_nan(out, ref_out, rtol=0, atol=0, msg=f"rot {rot}, n={n}")
        monkeypatch.delenv("GEOOPS_STEREO_PASS_ROT", raising=False)


def test_row_loop_falls_back_per_row(monkeypatch):
    """mobius_add one row at a time: a near-boundary pair pointing apart (den < 0.5) takes the double sums for its
    row, whose result then equals the double-sum path's; its block neighbours keep the float sums."""
    n, d = 37, 64
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=-1, keepdim=True) * 0.3).float()
    y = (x * 0.5).clone()
    x[9] = x[9] / x[9].norm() * 0.97
    y[9] = -x[9] * 0.99
    k = torch.tensor(-1.0)
    args = {"x": x, "y": y}
    row = _loop_out("row", "mobius_add", args, k, 1, monkeypatch)
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
    dbl = _loop_out("row", "mobius_add", args, k, 1, monkeypatch)
    monkeypatch.delenv("GEOOPS_STEREO_F32_SUMS")
    assert torch.equal(row[9], dbl[9])
    expect = _ref("mobius_add", args, k)
    assert bool(torch.isfinite(row).all())
    torch.testing.assert_close(row.double(), expect.double(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- groups of a few rows (session 22)
# GEOOPS_STEREO_LONG_LOOP=group (the blocked loop on 8-row groups; group4: 4 rows) and the pass / block loops on
# 8 / 4 / 32-row blocks (pass8, pass4, pass32, block8): every row written once with its own coefficients.  Bit for bit
# the pass loop's result with the per-block choices pinned (every call in double, double sums), and with the defaults
# the same bits on every row whose 32-row neighbourhood has no row that declines the float call or the float sums (NaN
# rows, k > 0, near-boundary Mobius denominators: each loop redoes its own block or group), within the float call's
# rounding elsewhere.
GROUP_LOOPS = ("group", "group4", "pass8", "pass4", "pass32", "block8")


def _decliners(op, args, k, n):
    """Rows that may decline the float call / float sums (NaN, k > 0, Mobius denominators near the fallback), each
    widened to the 32 rows either side (the largest block)."""
    bad = torch.zeros(n, dtype=torch.bool)
    for t in args.values():
        if t.dim() == 2:
            bad |= t.isnan().any(-1)
    kk = k.double().reshape(-1) if k.numel() > 1 else k.double().expand(n)
    if op not in ("mobius_add", "mobius_sub"):
        bad |= kk > 0  # (the float call's k > 0 form is the double call)
    if op in ("mobius_add", "mobius_sub"):
        x, y = (t.double() for t in _ordered(op, args))
        sgn = -1.0 if op == "mobius_sub" else 1.0
        xx, yy, xy = (x * x).sum(-1), (y * y).sum(-1), (x * y).sum(-1)
        bad |= ~(1 - 2 * sgn * kk * xy + kk * kk * xx * yy >= 0.6)
    idx = bad.nonzero().flatten()
    near = torch.zeros(n, dtype=torch.bool)
    for i in idx.tolist():
        near[max(0, i - 32):i + 33] = True
    return near


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("d,nt", D_NT)
@pytest.mark.parametrize("op", NT_OPS)
def test_group_loops(op, d, nt, threads, monkeypatch):
    """GEOOPS_STEREO_LONG_LOOP=group / group4 / pass8 / pass4 / pass32 / block8 against pass: bit for bit with every
    call in double and double sums; with the defaults bit for bit away from declining rows, within 2e-6 everywhere."""
    _skip_without_long_loops()
    monkeypatch.setenv("GEOOPS_STEREO_NT_STORES", nt)
    for n, args, k in _cases(op, d):
        ref_out = _loop_out("pass", op, args, k, threads, monkeypatch)
        keep = ~_decliners(op, args, k, n)
        assert n < 100 or k.numel() > 1 or int(keep.sum()) >= n // 4
        for loop in GROUP_LOOPS:
            out = _loop_out(loop, op, args, k, threads, monkeypatch)
            _assert_close_nan(out, ref_out, rtol=2e-6, atol=2e-7, msg=f"{loop}, n={n}")
            _assert_close_nan(out[keep], ref_out[keep], rtol=0, atol=0, msg=f"{loop} bits, n={n}")
        monkeypatch.setenv("GEOOPS_STEREO_FLOAT_CALL", "0")
        monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
        try:
            a = _loop_out("pass", op, args, k, threads, monkeypatch)
            for loop in GROUP_LOOPS:
                b = _loop_out(loop, op, args, k, threads, monkeypatch)
                _assert_close_nan(b, a, rtol=0, atol=0, msg=f"{loop}, pinned, n={n}")
        finally:
            monkeypatch.delenv("GEOOPS_STEREO_FLOAT_CALL")
            monkeypatch.delenv("GEOOPS_STEREO_F32_SUMS")


# ---------------------------------------------------------------- the long-row sums on AVX2 (session 28)
# AVX2 builds run the long-row machinery too (long_sums_f32 / row_acc_f32 on 4-double / 8-float vectors, hsum4, the
# one-pass loop, the non-temporal writes): the tests above compare it with the per-row double sums
# (GEOOPS_STEREO_LONG_SUMS=0) and the fp64 reference on every build that has it.  This one checks that the path is
# reached: mobius_add's float row sums give other bits than the double sums on AVX-512 and AVX2 builds (and the same
# bits where the build has no long-row sums, DEFAULT / GEOOPS_PORTABLE=1), both within the float sums' bound.
@pytest.mark.parametrize("loop", ("pass", "row", "block"))
@pytest.mark.parametrize("d", (17, 64, 100))
def test_long_sums_reach_this_build(d, loop, monkeypatch):
    """GEOOPS_STEREO_F32_SUMS=1 / =0 (float / double long-row sums, mobius_add): different bits on some rows on
    AVX-512 / AVX2 builds, equal bits elsewhere; every row within 2x the eager fp32 reference's error + 1e-6."""
    n = 16 * 9 + 5
    x, y, k = _sum_inputs(n, d, seed=11 * d + 1, k_signs=False)
    monkeypatch.setenv("GEOOPS_STEREO_LONG_LOOP", loop)
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "1")
    fs = gs.mobius_add(x, y, k=k.float())
    monkeypatch.setenv("GEOOPS_STEREO_F32_SUMS", "0")
    ds = gs.mobius_add(x, y, k=k.float())
    monkeypatch.setenv("GEOOPS_STEREO_LONG_SUMS", "0")
    rs = gs.mobius_add(x, y, k=k.float())
    differ = int((fs != ds).any(-1).sum())
    if _long_sums_build():
        assert differ >= n // 10, differ
    else:
        assert differ == 0 and torch.equal(ds, rs)
    expect = ref.mobius_add(x.double(), y.double(), k=k)
    e_eager = _row_err(ref.mobius_add(x, y, k=k.float()), expect, {"x": x})
    for out in (fs, ds, rs):
        e = _row_err(out, expect, {"x": x})
        assert bool((e <= 2 * e_eager + 1e-6).all()), float((e - 2 * e_eager).max())
