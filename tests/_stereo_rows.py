"""Shared pieces of the stereographic row tests (tests/test_stereographic_short.py, tests/test_stereographic_long_f32.py):
per-row curvatures and the row-wise error against the fp64 reference."""
from __future__ import annotations

import torch

# The ops whose output is written as a x + b y (or a x + b u): the write cancels in float where the terms are much
# larger than the output, so their error is measured relative to the larger of |out| and |x| / 10.
WRITE_CANCELS = ("mobius_add", "expmap", "logmap")


def per_row_k(n, values, dtype=None):
    """Curvatures of shape (n, 1): `values` repeated over the rows (default dtype unless given)."""
    return torch.tensor(list(values) * n, dtype=dtype)[:n].reshape(n, 1)


def row_rel_err(out, expect, x=None):
    """Row-wise error of `out` against the float64 `expect` (rows along the last dim): |out - expect| / |expect|, or
    with `x` given, relative to the larger of |expect| and |x| / 10 (see WRITE_CANCELS); the scale clamped at 1e-30."""
    scale = expect.norm(dim=-1)
    if x is not None:
        scale = torch.maximum(scale, x.double().norm(dim=-1) * 1e-1)
    return (out.double() - expect).norm(dim=-1) / scale.clamp_min(1e-30)


def op_row_err(op, out, expect, x):
    """row_rel_err of op's output: relative to the larger of |expect| and |x| / 10 where op's write cancels
    (WRITE_CANCELS), else to |expect|.  An output of one value per row (dist: shape (N,)) is N rows of one value."""
    if out.dim() == 1:
        out, expect = out.unsqueeze(-1), expect.unsqueeze(-1)
    return row_rel_err(out, expect, x if op in WRITE_CANCELS else None)


def rows_finite(t):
    """Per row: every value of t finite (t of shape (N, D), or (N,): one value per row)."""
    ok = torch.isfinite(t)
    return ok if ok.dim() == 1 else ok.all(-1)


# ---------------------------------------------------------------- the short-row kernels' layout on this build
def short_layout() -> dict:
    """The compiled short-row layout (``geoops._C.stereo_short_layout()``, csrc/cpu/stereographic_lanes.cpp), every
    field computed in C++ from the kernels' own constants: ``isa`` ("AVX512", "AVX2" or "DEFAULT" under
    GEOOPS_PORTABLE=1), ``double_lanes`` / ``float_lanes`` (rows per vector), ``block_rows`` (rows per short-row
    block), ``register_pass`` and ``float_mobius_terms`` (whether those paths take any op on this build),
    ``short_row_max_d``, ``f32_max_d``; from the kernels' per-ISA table (f32rows::kOpPaths,
    csrc/cpu/stereographic_rows_f32_paths.h, which reg_takes / reg_range / lanes_core_g read) and the register pass's
    group trait (f32rows::RegGroup, stereographic_rows_f32_reg.h): ``register_pass_max_d`` (its largest D, 0: none),
    ``register_pass_rows`` (rows per group), ``register_pass_ops`` (the ops it takes, a tuple of names),
    ``register_pass_op_max_d`` ({op: its largest D}), ``register_pass_declined_d`` ({op: the D <= its largest that
    the register pass declines by default, session 40: those take the fused / eight-loop blocks,
    GEOOPS_STEREO_F32_REG=0's path, and GEOOPS_STEREO_F32_REG=2 the register pass}, only ops with such D),
    ``register_pass_bits_as_fused`` (its writes are the fused
    blocks' at D = 3..8: the same bits) and ``float_mobius_ops`` (the ops whose lane math takes the float Mobius
    terms).  The build's own constants: torch's ``get_cpu_capability()`` names the machine, not what -march=native
    (or a portable build) compiled."""
    from geoops._backend import compiled

    return dict(compiled().stereo_short_layout())


def paths_bitwise() -> bool:
    """Whether this build's row paths agree bit for bit where the tests say so (a declined block's rows = the double
    path's, a block of one path = the same rows through another) and its float paths round visibly unlike the double
    path in every block.  True on SIMD builds (AVX2, AVX-512: hardware fma, one rounding in every fmadd).  False on
    portable builds (GEOOPS_PORTABLE=1, isa "DEFAULT"): baseline x86-64 has no fma, so ATen's vector fmadd is a
    multiply and an add (two roundings) while the scalar code's std::fma rounds once -- the paths there are a few
    ulps apart (measured: 1 ulp in some rows of a declined block), and the float paths' more exact arithmetic can
    round a whole block as the double path does (expmap0 at D = 1 in 4,096 rows: no element differs).  The tests
    compare within a few ulps there instead, and skip the "the float path ran" half."""
    return short_layout()["isa"] != "DEFAULT"


def reg_takes(op: str, d: int, reg: str = "1") -> bool:
    """Whether the fp32 register pass takes `op` at row width `d` on this build with GEOOPS_STEREO_F32_REG=`reg`:
    "1" (or unset: the default) at 1 <= d <= its largest D but not at the D it declines (register_pass_declined_d),
    "2" at every such d (the tests' way to the register pass at the declined D), "0" never."""
    if reg not in ("0", "1", "2"):
        raise ValueError(f"reg_takes: reg must be '0', '1' or '2' (GEOOPS_STEREO_F32_REG), got {reg!r}")
    layout = short_layout()
    if reg == "0" or not 1 <= d <= layout["register_pass_op_max_d"].get(op, 0):
        return False
    return reg == "2" or d not in layout["register_pass_declined_d"].get(op, ())


def block_rows(dtype: torch.dtype = torch.float32) -> int:
    """Rows per short-row block for rows of `dtype`: 4 double vectors of rows (32 with AVX-512, 16 with AVX2), the
    same for every dtype (the row math runs in double lanes whatever the storage; the fp32 fast path, its register
    pass and the fp32 backward of expmap0 / logmap0 take the same blocks and fall back to the double path per
    block).  Tests place hard rows and tails in terms of it (B - 1, B, B + 1, 2B - 1, ...)."""
    if dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"block_rows: dtype must be a floating dtype the row kernels take, got {dtype}")
    return int(short_layout()["block_rows"])
