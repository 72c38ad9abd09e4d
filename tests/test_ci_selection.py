"""CI's portable stage runs the tests that reached geoops._C in the native stage (tests/conftest.py): the record must
see a kernel call, leave out a test that never reads geoops._C, and the selection must run exactly the recorded ones."""
import os
import subprocess
import sys

import pytest

from geoops import _backend

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SAMPLE = '''
import os, subprocess, sys
import pytest
import torch
import geoops.stereographic as gs


@pytest.fixture(scope="module")
def from_kernel():
    x = torch.full((3, 4), 0.1)
    return gs.mobius_add(x, x, k=torch.tensor(-1.0))


def test_calls_a_kernel():
    x = torch.full((3, 4), 0.1)
    assert torch.isfinite(gs.mobius_add(x, x, k=torch.tensor(-1.0))).all()


def test_python_only():
    assert sum(range(4)) == 6


def test_first_fixture_user(from_kernel):
    assert from_kernel.shape == (3, 4)


def test_second_fixture_user(from_kernel):
    assert from_kernel.shape == (3, 4)


def test_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.build_relative("a compiled route against the eager one")
def test_compiled_against_eager():
    x = torch.full((3, 4), 0.1)
    assert torch.isfinite(gs.mobius_add(x, x, k=torch.tensor(-1.0))).all()


@pytest.mark.skip(reason="skipped here")
def test_skipped():
    pass


@pytest.mark.parametrize("build", [os.environ.get("SAMPLE_BUILD", "native")])
def test_build_dependent_id(build):
    assert build


def test_zz_crashes_the_native_run():
    if os.environ.get("GEOOPS_C_USAGE_RECORD"):
        os._exit(3)
'''


def _pytest(tmp_path, env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOOPS_C_USAGE_")}
    env.update(env_extra, PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(_backend.compiled() is None, reason="needs the compiled extension geoops._C")
@pytest.mark.build_relative("checks tests/conftest.py's record and selection (Python) in child pytest runs of a sample; "
                            "nothing it asserts depends on which build the children load")
def test_record_and_select_the_tests_that_reach_the_extension(tmp_path):
    """The record and the selection, on a sample whose native run dies in its last test (an xdist worker's crash
    leaves its record as this does).  What the selection deselects must be known to need no rerun: a test the
    native run saw pass without reading geoops._C.  So a test that crashed the native run, one it never reached
    and one whose id only the portable run has (build-dependent parameters) all run again (session 40: the record
    was written at the session's end, so a crashed worker's tests, and ids the native run never had, were
    deselected).  A test marked build_relative is deselected although it reached geoops._C."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    rec = tmp_path / "rec"
    r = _pytest(tmp_path, {"GEOOPS_C_USAGE_RECORD": str(rec)})
    assert r.returncode == 3, r.stdout + r.stderr  # (the crash)
    recorded = set()
    for f in os.listdir(rec):
        if f.endswith(".txt"):
            recorded.update(line.split("::")[-1] for line in (rec / f).read_text().split())
    assert recorded == {"test_calls_a_kernel", "test_first_fixture_user", "test_second_fixture_user",
                        "test_starts_a_process", "test_compiled_against_eager", "test_skipped"}, recorded
    r = _pytest(tmp_path, {"GEOOPS_C_USAGE_SELECT": str(rec), "SAMPLE_BUILD": "portable"}, "-rA")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 passed, 1 skipped, 2 deselected" in r.stdout, r.stdout  # test_python_only, the build_relative one
    assert "test_compiled_against_eager" not in r.stdout, r.stdout
    for name in ("test_build_dependent_id[portable]", "test_zz_crashes_the_native_run"):
        assert f"PASSED test_sample.py::{name}" in r.stdout, r.stdout
