"""geoops._C keeps its symbols to itself (setup.py builds it with hidden visibility).

With default visibility the module exported ~745 symbols, 17 of them STB_GNU_UNIQUE (the local statics of inline
functions and inline variables: the family binders' list, the float32 row ops' path table, the MKL and BLAS entry
points found at run time).  The dynamic loader unifies those process-wide, so a second build of _C loaded into the
same process (scripts/short_rows/ab_build.py's in-process A/B) used the first build's copies: its module init ran
the first build's binding functions as well (every function an overload chain whose first entry was, per family,
either build's) and its row ops read the first build's path table -- the A/B compared a build with itself."""
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from geoops import _backend


def _so():
    mod = _backend.compiled()
    if mod is None:
        pytest.skip("needs the compiled extension")
    return pathlib.Path(mod.__file__)


def test_extension_exports_only_its_module_init():
    so = _so()
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils)")
    out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    syms = [line.split() for line in out.splitlines() if line.strip()]
    assert [s[-1] for s in syms] == ["PyInit__C"], f"{so.name} exports {len(syms)} symbols: {syms[:20]}"


def test_second_build_in_one_process_keeps_its_own_functions(tmp_path):
    """A copy of _C at another path, loaded beside the package's (a second build as ab_build.py loads it): its
    functions are its own (no pybind11 overload chains from the first build's binders) and bind every family once."""
    so = _so()
    copy = tmp_path / "other" / so.name
    copy.parent.mkdir()
    shutil.copy2(so, copy)
    code = textwrap.dedent(f"""
        from geoops import _backend
        first = _backend.compiled()
        second = _backend.load_other_build({str(copy)!r})  # raises if its functions are the first build's
        fns = [n for n in dir(second) if type(getattr(second, n)).__name__ == "builtin_function_or_method"]
        chained = [n for n in fns if "Overloaded function" in (getattr(second, n).__doc__ or "")]
        print(len(fns), len(chained), chained[:5])
        assert fns and not chained, chained
        assert second.bound_families == first.bound_families, (second.bound_families, first.bound_families)
        assert all(getattr(second, n) is not getattr(first, n) for n in fns)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def test_load_other_build_twice_loads_each_path(tmp_path):
    """Two other builds loaded one after the other (an A/B of two older builds beside the package's): each call returns
    the module of its own path.  Its module name was the same on both calls (from len(_cache), unchanged between
    them), under which Python returned the first call's module for the second path: an A/B of the second build timed
    the first (session 46, review45)."""
    so = _so()
    paths = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / so.name)
        shutil.copy2(so, paths[-1])
    code = textwrap.dedent(f"""
        import os
        from geoops import _backend
        a = _backend.load_other_build({str(paths[0])!r})
        b = _backend.load_other_build({str(paths[1])!r})
        assert a is not b, (a.__file__, b.__file__)
        assert os.path.samefile(a.__file__, {str(paths[0])!r}) and os.path.samefile(b.__file__, {str(paths[1])!r})
        assert a.stereo_midpoint_mean_fwd_cpu is not b.stereo_midpoint_mean_fwd_cpu
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
