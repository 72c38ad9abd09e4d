"""setup.py's precompiled header (_pch_ninja): which units get it, and the ninja file it writes; and the ccache
settings (_compiler_cache_env) that keep those units cacheable from any checkout.

The .gch must carry the ISA a unit picks itself (geoops/cpu_capability.h first, before any torch header: torch's
Half.h and at::vec read CPU_CAPABILITY), so only the units whose first include leads to cpu_capability.h use it.
No compiler runs here: ninja's `-t commands` shows the command lines the rewritten file gives each unit.
"""
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import time

import pytest
import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py's functions, without running setup() (no build command in argv: no torch, no compiler)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(setuptools, "setup", lambda **kw: None)
    mp.setattr(sys, "argv", ["setup.py", "--version"])
    try:
        yield runpy.run_path(str(ROOT / "setup.py"))
    finally:
        mp.undo()


def _unit(path, first_include, body="int f() { return 1; }\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"// a unit\n{first_include}\n#include <vector>\n{body}")
    return path


def _torch_style_ninja(tmp, sources):
    """A build.ninja as torch's _write_ninja_file writes it (one compile rule, one build line per source)."""
    lines = ["ninja_required_version = 1.3", "cxx = c++", "", "cflags = -O3 -Iinc -c",
             "post_cflags = -march=native -std=c++17", "",
             "rule compile", "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out $post_cflags",
             "  depfile = $out.d", "  deps = gcc", ""]
    lines += [f"build {tmp / 'obj' / (s.stem + '.o')}: compile {s}" for s in sources] + [""]
    path = tmp / "obj" / "build.ninja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def test_units_that_pick_their_isa_first_get_the_pch(setup_py, tmp_path):
    src = tmp_path / "src"
    direct = _unit(src / "direct.cpp", '#include "geoops/cpu_capability.h"  // first')
    (src / "lanes.h").write_text('#pragma once\n#include "geoops/cpu_capability.h"\n#include <ATen/ATen.h>\n')
    via_header = _unit(src / "via_header.cpp", '#include "lanes.h"')
    (src / "plain.h").write_text('#pragma once\n#include <ATen/ATen.h>\n#include "geoops/cpu_capability.h"\n')
    via_plain = _unit(src / "via_plain.cpp", '#include "plain.h"')
    torch_first = _unit(src / "torch_first.cpp", "#include <ATen/ATen.h>",
                        body='#include "geoops/cpu_capability.h"\nint g() { return 2; }\n')
    ninja = _torch_style_ninja(tmp_path, [direct, via_header, via_plain, torch_first])

    assert setup_py["_pch_ninja"](str(ninja), str(ninja.parent)) == 2
    hdr = ninja.parent / "pch" / "geoops_pch.h"
    assert hdr.read_text() == setup_py["_PCH_TEXT"]
    first = [ln for ln in hdr.read_text().splitlines() if ln.startswith("#include")][0]
    assert first == '#include "geoops/cpu_capability.h"'

    ninja_exe = shutil.which("ninja") or str(pathlib.Path(sys.executable).parent / "ninja")
    if not os.path.exists(ninja_exe):
        pytest.skip("ninja not found")
    cmds = subprocess.run([ninja_exe, "-f", str(ninja), "-t", "commands"], cwd=ninja.parent,
                          capture_output=True, text=True, check=True).stdout.splitlines()
    by_out = {c.split(" -o ")[1].split()[0]: c for c in cmds}
    gch = str(hdr) + ".gch"
    # the .gch: the compile rule's own flags (same -march, -std, defines), as a C++ header
    assert "-x c++-header" in by_out[gch] and "-O3 -Iinc" in by_out[gch] and "-march=native -std=c++17" in by_out[gch]
    assert cmds.index(by_out[gch]) < min(cmds.index(by_out[str(ninja.parent / f"{n}.o")])
                                         for n in ("direct", "via_header"))
    for name in ("direct", "via_header"):
        cmd = by_out[str(ninja.parent / f"{name}.o")]
        assert f"-O3 -Iinc -c -include {hdr} -Winvalid-pch" in cmd and "-march=native -std=c++17" in cmd
    for name in ("via_plain", "torch_first"):  # torch's headers before cpu_capability.h: their own scalar at::vec
        assert "-include" not in by_out[str(ninja.parent / f"{name}.o")]

    # a second rewrite of torch's file (every build writes it anew) gives the same file; the header is kept
    text = ninja.read_text()
    mtime = hdr.stat().st_mtime_ns
    _torch_style_ninja(tmp_path, [direct, via_header, via_plain, torch_first])
    setup_py["_pch_ninja"](str(ninja), str(ninja.parent))
    assert ninja.read_text() == text and hdr.stat().st_mtime_ns == mtime


def test_the_at_vec_units_of_csrc_get_the_pch(setup_py):
    """Every csrc/cpu unit that includes cpu_capability.h does so first (else it would parse torch without it)."""
    units = sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))
    pch = [u.name for u in units if setup_py["_first_include_is_capability"](str(u))]
    uses = [u.name for u in units
            if "geoops/cpu_capability.h" in u.read_text() or '"stereographic_lanes.h"' in u.read_text()]
    assert pch == uses and len(pch) >= 10


def test_geoops_pch_env(setup_py, monkeypatch):
    monkeypatch.setenv("GEOOPS_PCH", "0")
    assert setup_py["_pch_wanted"]() is False
    monkeypatch.setenv("GEOOPS_PCH", "maybe")
    with pytest.raises(SystemExit, match="GEOOPS_PCH"):
        setup_py["_pch_wanted"]()


def test_incremental_build_follows_the_pch_headers(setup_py, tmp_path):
    """Real g++ and ninja on a small tree (a stand-in for the torch headers): a header inside the .gch rebuilds the
    .gch and every unit that uses it (their depfiles do not list what came from the .gch), a unit's own header only
    that unit, and a second run does nothing."""
    ninja_exe = shutil.which("ninja") or str(pathlib.Path(sys.executable).parent / "ninja")
    cxx = shutil.which("g++")
    if not os.path.exists(ninja_exe) or cxx is None:
        pytest.skip("needs ninja and g++")
    src = tmp_path / "src"
    (src / "geoops").mkdir(parents=True)
    (src / "geoops" / "cpu_capability.h").write_text("#pragma once\n#define CAP 3\n")
    (src / "torchish.h").write_text("#pragma once\ninline int torchish() { return CAP * 2; }\n")
    (src / "own.h").write_text("#pragma once\ninline int own() { return 5; }\n")
    unit = _unit(src / "unit.cpp", '#include "geoops/cpu_capability.h"',
                 body='#include "torchish.h"\n#include "own.h"\nint f() { return torchish() + own(); }\n')
    plain = _unit(src / "plain.cpp", '#include "own.h"')
    ninja = _torch_style_ninja(tmp_path, [unit, plain])
    text = ninja.read_text().replace("cxx = c++", f"cxx = {cxx}").replace("-Iinc", f"-I{src}")
    ninja.write_text(text.replace("-march=native ", ""))
    write = setup_py["_pch_ninja"]
    pch_text = write.__globals__["_PCH_TEXT"]
    write.__globals__["_PCH_TEXT"] = '#include "geoops/cpu_capability.h"\n#include "torchish.h"\n'
    try:
        assert write(str(ninja), str(ninja.parent)) == 1
    finally:
        write.__globals__["_PCH_TEXT"] = pch_text

    def build(*extra):
        r = subprocess.run([ninja_exe, "-f", str(ninja), "-d", "explain", *extra], cwd=ninja.parent,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return {ln.split(" -o ")[1].split()[0] for ln in r.stdout.splitlines() if " -o " in ln}

    out = {n: str(ninja.parent / f"{n}.o") for n in ("unit", "plain")}
    gch = str(ninja.parent / "pch" / "geoops_pch.h.gch")
    assert build("-v") == {gch, out["unit"], out["plain"]}
    assert build("-v") == set()

    def touch(path):  # later than every output so far (file times tick in ms steps: an output may share the last one)
        time.sleep(0.1)
        os.utime(path)

    touch(src / "geoops" / "cpu_capability.h")
    assert build("-v") == {gch, out["unit"]}
    touch(src / "torchish.h")
    assert build("-v") == {gch, out["unit"]}
    touch(src / "own.h")
    assert build("-v") == {out["unit"], out["plain"]}
    assert build("-v") == set()


def test_ccache_settings_when_ccache_runs(setup_py, monkeypatch):
    """_compiler_cache_env: where torch's build runs the compiler through ccache, the checkout is ccache's base dir
    (a fresh clone elsewhere hits the same entries) and the pch units are cacheable; values already in the
    environment win; nothing is set without ccache or with TORCH_NO_COMPILER_WRAPPER (torch then runs no wrapper)."""
    fn = setup_py["_compiler_cache_env"]
    for var in ("CCACHE_BASEDIR", "CCACHE_SLOPPINESS", "TORCH_NO_COMPILER_WRAPPER"):
        monkeypatch.delenv(var, raising=False)
    on_path = {"ccache": "/usr/bin/ccache"}
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: on_path.get(name))
    fn()
    assert os.environ["CCACHE_BASEDIR"] == str(ROOT)
    assert {"pch_defines", "time_macros"} <= set(os.environ["CCACHE_SLOPPINESS"].split(","))
    monkeypatch.setenv("CCACHE_BASEDIR", "/elsewhere")
    monkeypatch.setenv("CCACHE_SLOPPINESS", "locale")
    fn()
    assert (os.environ["CCACHE_BASEDIR"], os.environ["CCACHE_SLOPPINESS"]) == ("/elsewhere", "locale")
    monkeypatch.setenv("TORCH_NO_COMPILER_WRAPPER", "1")
    for var in ("CCACHE_BASEDIR", "CCACHE_SLOPPINESS"):
        monkeypatch.delenv(var)
    fn()
    assert "CCACHE_BASEDIR" not in os.environ and "CCACHE_SLOPPINESS" not in os.environ
    monkeypatch.delenv("TORCH_NO_COMPILER_WRAPPER")
    on_path.clear()
    fn()
    assert "CCACHE_BASEDIR" not in os.environ and "CCACHE_SLOPPINESS" not in os.environ
