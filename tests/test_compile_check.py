"""The CI Triton compile check (.ci/triton_compile_check.py): its IR/PTX checks, and one real compile.

The checks are what catches, without a GPU, the defects a device would show: a program id multiplied in
32 bits (rows wrapping past 2^31), an approximate float32 division, a spill.  Each is tested on the IR
shape it must flag and on the one it must pass; one stereographic variant is compiled for sm_90 with the
stand-in driver, end to end, in a subprocess (the check patches Triton's JIT for its process).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("triton_compile_check", ROOT / ".ci" / "triton_compile_check.py")
CC = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CC)

# TTIR as Triton writes it, before (32-bit row index) and after (widened program id) the fix
TTIR_PID32 = """
    %c16_i32 = arith.constant 16 : i32 loc(#loc1)
    %0 = tt.get_program_id x : i32 loc(#loc2)
    %1 = arith.muli %0, %c16_i32 : i32 loc(#loc3)
    %2 = tt.make_range {end = 16 : i32, start = 0 : i32} : tensor<16xi32> loc(#loc4)
"""
TTIR_PID64 = """
    %c16_i64 = arith.constant 16 : i64 loc(#loc1)
    %0 = tt.get_program_id x : i32 loc(#loc2)
    %1 = arith.extsi %0 : i32 to i64 loc(#loc3)
    %2 = arith.muli %1, %c16_i64 : i64 loc(#loc3)
    %10 = arith.addi %2, %c16_i64 : i64 loc(#loc3)
"""


def test_pid_lint_flags_32_bit_row_index():
    bad = CC.pid32_uses(TTIR_PID32)
    assert len(bad) == 1 and "arith.muli %0" in bad[0]
    assert CC.pid32_uses(TTIR_PID64) == []


def test_ptx_counts_approximate_instructions():
    ptx = """
    .reg .f32 %f<9>;
    div.full.f32 %f3, %f1, %f2;
    div.rn.f32 %f4, %f1, %f2;
    rcp.approx.ftz.f64 %fd2, %fd1;
    ex2.approx.f32 %f5, %f4;
    // div.full.f32 in a comment is still counted by the regex, but not as an instruction
    ret;
    """
    st = CC.ptx_stats(ptx)
    assert st["approx"]["div.full"] == 2 and st["approx"]["rcp.approx"] == 1 and st["approx"]["ex2.approx"] == 1
    assert st["div_rn_f32"] == 1
    assert st["ptx_instructions"] == 5


def test_ptxas_log_parsing():
    log = ("ptxas info    : Compiling entry function '_k' for 'sm_90a'\n"
           "ptxas info    : Function properties for _k\n"
           "    24 bytes stack frame, 20 bytes spill stores, 36 bytes spill loads\n"
           "ptxas info    : Used 64 registers, used 1 barriers\n")
    assert CC.ptxas_stats(log) == {"registers": 64, "stack": 24, "spill_stores": 20, "spill_loads": 36}


def test_every_kernel_module_has_the_hook():
    """Each kernels/<family>.py declares compile_variants() (kernels/__init__.py documents it), except the
    families listed as pending, which must really lack it (the list only shrinks)."""
    for fam in CC.families():
        has = "def compile_variants(" in (ROOT / "kernels" / f"{fam}.py").read_text()
        if fam in CC.PENDING_HOOKS:
            assert not has, f"kernels/{fam}.py has its hook now: remove it from PENDING_HOOKS"
        else:
            assert has, f"kernels/{fam}.py lacks compile_variants() (or list it in PENDING_HOOKS)"


def test_stereographic_variants_cover_every_op_dtype_path():
    pytest.importorskip("triton")
    from geoops.kernels import stereographic as S

    labels = {e["label"] for e in S.compile_variants()}
    for name in S.OP_NAMES:
        for dt in ("float32", "float64", "float16", "bfloat16"):
            for path in ("one-tile", "chunked"):
                for kind in ("fwd", "bwd"):
                    assert f"{name}/{dt}/{path} {kind}" in labels


@pytest.mark.build_relative("Triton's compiler on kernels/ in a child process: no geoops._C entry point, the same on "
                            "both builds")
def test_one_variant_compiles_for_sm90_without_a_gpu(tmp_path):
    """End to end: the stand-in driver, Triton's compiler and ptxas; the result passes every check."""
    pytest.importorskip("triton")
    out = tmp_path / "r.json"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, str(ROOT / ".ci" / "triton_compile_check.py"), "--arch", "90",
                        "--families", "stereographic", "--match", r"^logmap/float32/one-tile bwd$",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads(out.read_text())["families"]["stereographic"]
    assert len(rows) == 1 and rows[0]["ok"], rows
    r = rows[0]
    assert r["registers"] > 0 and r["spill_stores"] == 0 and r["approx"]["div.full"] == 0
    assert r["constexprs"]["OP"] == 7 and r["constexprs"]["ONE_CHUNK"] is True


def test_attention_variants_cover_every_dtype_mask_and_pass():
    pytest.importorskip("triton")
    from geoops.kernels import attention as A

    labels = {e["label"] for e in A.compile_variants()}
    for dt in ("float32", "float64", "float16", "bfloat16"):
        for mode in ("full", "causal"):
            for D in A._COMPILE_DIMS:
                for kind in ("fwd", "bwd"):
                    assert f"{dt}/{mode}/D{D} {kind}" in labels


def test_pairwise_stereographic_variants_are_listed():
    """cdist (with and without the saved tensor), the rank keys, and the backward's roles and feature blocks, each
    also as the KPOS variant (a call with a k > 0 batch, session 41)."""
    pytest.importorskip("triton")
    from geoops.kernels import stereographic as S

    labels = {e["label"] for e in S.compile_variants()}
    for dt in ("float32", "float64"):
        for what in ("cdist", "cdist+A", "rank_key"):
            assert f"pair/{what}/{dt} fwd" in labels
        for D in S._PAIR_COMPILE_DIMS:
            assert f"pair/cdist/{dt}/D{D} bwd dx,dy,dk" in labels and f"pair/cdist/{dt}/D{D} bwd dx" in labels
            assert f"pair/cdist/{dt}/D{D} bwd kpos dx,dy,dk" in labels
            assert f"pair/cdist/{dt}/D{D} bwd split kpos dx" in labels
    for n in (2, 4, 8, 16, 32, 64):
        assert f"pair/knn/float32/n{n} nearest" in labels and f"pair/knn/float32/n{n} largest" in labels
    assert S.KNN_MAX_NEIGHBORS == 64


def test_report_prints_the_family_notes(tmp_path):
    """A family's COMPILE_NOTES (carried in the run's JSON) lands above its table."""
    row = {"label": "op/float32 fwd", "kernel": "_k", "registers": 40, "spill_stores": 0, "spill_loads": 0,
           "stack": 0, "shared": 0, "num_warps": 4, "ptx_instructions": 10, "approx_total": 0,
           "approx": {"div.full": 0}, "div_rn_f32": 0, "ok": True}
    run = {"triton": "3.9.0", "arch": 90, "families": {"fam": [row]}, "errors": [], "notes": {"fam": "why it spills"}}
    out = tmp_path / "r.md"
    assert CC.merge([run], out)
    text = out.read_text()
    assert text.index("why it spills") < text.index("| op/float32 fwd |")


def test_row_problems_flag_spills_shared_memory_pid32_and_division():
    expect = {"index64": True, "max_spill_bytes": 0, "ieee_div": True}
    row = {"registers": 64, "spill_stores": 0, "spill_loads": 0, "shared": 1024,
           "approx": {"div.full": 0, "div.approx": 0}}
    assert CC.row_problems(row, expect, 90, []) == []
    # 173 KB of shared memory compiles for sm_80 but cannot launch there (the A100's limit is 163 KB)
    big = dict(row, shared=173056)
    assert any("shared memory" in p for p in CC.row_problems(big, expect, 80, []))
    assert CC.row_problems(big, expect, 90, []) == []
    assert any("spills" in p for p in CC.row_problems(dict(row, spill_stores=4), expect, 90, []))
    assert any("32-bit" in p for p in CC.row_problems(row, expect, 90, ["arith.muli %0, %c16_i32 : i32"]))
    assert any("approximate" in p for p in CC.row_problems(
        dict(row, approx={"div.full": 2, "div.approx": 0}), expect, 90, []))


def test_spill_allowances_only_in_float64_variants():
    """A hook may tolerate spills in float64 variants only; any other tolerance fails the check."""
    ok = {"index64": True, "max_spill_bytes": 0, "ieee_div": True}
    assert CC.allowance_problem("op/float32 fwd", ok) is None
    assert CC.allowance_problem("op/float64 bwd", dict(ok, max_spill_bytes=32)) is None
    for label in ("op/float32 fwd", "pair/knn/float32/n64 nearest", "float16/full/D128 bwd", "op/bfloat16 fwd"):
        assert "not float64" in CC.allowance_problem(label, dict(ok, max_spill_bytes=8))


def test_every_hook_keeps_float32_and_half_variants_spill_free():
    """No family's compile_variants() tolerates a spill outside float64 (the hooks as they are now)."""
    pytest.importorskip("triton")
    import importlib

    for path in sorted((ROOT / "kernels").glob("*.py")):
        if path.stem == "__init__":
            continue
        mod = importlib.import_module(f"geoops.kernels.{path.stem}")
        for e in mod.compile_variants():
            expect = {"index64": True, "max_spill_bytes": 0, "ieee_div": False, **e.get("expect", {})}
            assert CC.allowance_problem(e["label"], expect) is None, (path.stem, e["label"])


_COVERAGE_TOY = r'''
import os, sys, types
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, sys.argv[1])
import torch, triton, triton.language as tl
import triton_compile_check as CC

@triton.jit
def _a_kernel(X):
    tl.store(X + tl.program_id(0).to(tl.int64), 1.0)

@triton.jit
def _b_kernel(X):
    tl.store(X + tl.program_id(0).to(tl.int64), 2.0)

mod = types.ModuleType("toy")
mod._a_kernel, mod._b_kernel = _a_kernel, _b_kernel
mod.compile_variants = lambda: [{"label": "a", "launch": lambda: _a_kernel[(1,)](torch.zeros(1))}]
CC.install_standin(90)
print(sorted(CC.uncovered_kernels(mod)))
'''


def test_uncovered_kernels_finds_a_kernel_no_variant_launches(tmp_path):
    """A Triton kernel that no compile_variants() entry launches would never be compile-checked: the dry run
    (launchers run, nothing compiled) names it."""
    pytest.importorskip("triton")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    toy = tmp_path / "toy_kernels.py"  # (@triton.jit needs its source in a file)
    toy.write_text(_COVERAGE_TOY)
    p = subprocess.run([sys.executable, str(toy), str(ROOT / ".ci")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "['_b_kernel']"


@pytest.mark.build_relative("Triton's compiler on kernels/ in a child process: no geoops._C entry point, the same on "
                            "both builds")
def test_every_triton_kernel_is_in_a_compile_variant():
    """Every @triton.jit ``*_kernel`` of kernels/<family>.py is launched by some compile_variants() entry
    (``--coverage``: a dry run of every launcher, ~2 s; the full check also fails on an uncovered kernel)."""
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, str(ROOT / ".ci" / "triton_compile_check.py"), "--coverage"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for fam in CC.families():
        assert f"covered  {fam}:" in p.stdout, p.stdout
