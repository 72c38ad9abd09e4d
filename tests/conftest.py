"""Which tests reach the compiled extension geoops._C (CI's portable stage runs only those again).

CI's main pytest stage runs on the native build; scripts/portable_tests.sh then runs the suite on the portable
build (GEOOPS_PORTABLE=1: no -march=native).  A test that never touches geoops._C runs the same Python on both
builds, so only the tests that do need the second run.  The rule is measured, not listed, so that a new test of a
C++ kernel joins by itself:

* GEOOPS_C_USAGE_RECORD=DIR (scripts/test.sh's pytest stage): every attribute read of the geoops._C module (every
  kernel call, build_isa(), lane layouts, ...) marks the test running at that moment, in any thread.  A test is
  recorded when it read geoops._C during its setup, call or teardown; when it uses a fixture whose setup read it
  (a cached module-scope fixture counts for every test that uses it); when its module or class read it while being
  collected (values in parametrize lists); when it started a process (a child's kernel calls are not seen here:
  subprocess, fork, multiprocessing); or when it did not pass (skipped, xfailed, failed: skip conditions may depend
  on the build).  One file per pytest process (xdist worker) in DIR: NAME.txt, the recorded tests, and NAME.skip,
  the others (tests that ran to their end, passed and never read geoops._C), both written test by test (a worker
  that crashes keeps what it wrote).
* GEOOPS_C_USAGE_SELECT=DIR (scripts/portable_tests.sh): deselects the tests of DIR's *.skip files (pytest reports
  them as deselected) and runs every other (but those marked build_relative, below): the recorded ones, and those the native run did not see to their end
  (a crash, a test it never reached, an id only this run has, e.g. build-dependent parameters).  No *.skip file in
  DIR: every test runs.

* ``@pytest.mark.build_relative("why")``: a test whose every check compares geoops with geoops in this build
  (a torch.compile / export / AOTInductor program against the same model run eagerly, a child process against this
  one) is deselected as well under GEOOPS_C_USAGE_SELECT: a kernel that computes differently on the portable
  build does so on both sides, and the eager tests of the same kernels, which stay, see it.  Only where the
  compiled route calls no geoops._C entry point that kept tests do not call (the reason says which tests).
  Also a test none of whose checks reads a compiled result (a child pytest's selection, a Triton compiler run,
  a script's --help): the two builds cannot make it differ (the reason says so).

Without either variable this file does nothing (the marker too).
"""
import os
import types

import pytest

_RECORD = os.environ.get("GEOOPS_C_USAGE_RECORD")
_SELECT = os.environ.get("GEOOPS_C_USAGE_SELECT")


class _Usage:
    touched = False  # geoops._C was read since the last reset (any thread)


def _mark(*_args, **_kwargs):
    _Usage.touched = True


class _TrackedModule(types.ModuleType):
    def __getattribute__(self, name):
        if not name.startswith("__"):
            _Usage.touched = True
        return types.ModuleType.__getattribute__(self, name)


def _install():
    """Track geoops._C (after geoops' own import, whose reads would otherwise count for the first test module)."""
    import subprocess

    import geoops
    from geoops import _backend

    mod = _backend.compiled()
    if mod is None:
        return False
    mod.__class__ = _TrackedModule

    # A child process calls kernels this process cannot see: starting one counts as a read.
    popen_init = subprocess.Popen.__init__

    def popen(self, *a, **k):
        _mark()
        return popen_init(self, *a, **k)

    subprocess.Popen.__init__ = popen
    fork = os.fork

    def tracked_fork():
        _mark()
        return fork()

    os.fork = tracked_fork
    import _posixsubprocess  # multiprocessing's spawn / forkserver start their process with it

    fork_exec = _posixsubprocess.fork_exec

    def tracked_fork_exec(*a, **k):
        _mark()
        return fork_exec(*a, **k)

    _posixsubprocess.fork_exec = tracked_fork_exec
    del geoops
    return True


class _Recorder:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        base = os.path.join(out_dir, f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}")
        # written test by test (line-buffered): a crash keeps every line written before it
        self.files = {True: open(base + ".txt", "w", buffering=1), False: open(base + ".skip", "w", buffering=1)}
        self.collected = []  # node-id prefixes whose collection read geoops._C
        self.fixtures = set()  # fixture names whose setup read geoops._C
        self.current = False

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        saved, _Usage.touched = _Usage.touched, False
        yield
        if _Usage.touched:
            self.collected.append(collector.nodeid)
        _Usage.touched = saved or _Usage.touched

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        saved, _Usage.touched = _Usage.touched, False
        yield
        if _Usage.touched:
            self.fixtures.add(fixturedef.argname)
        _Usage.touched = saved or _Usage.touched

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        _Usage.touched = False
        self.current = False
        yield
        nid = item.nodeid
        used = bool(_Usage.touched or self.current or self.fixtures.intersection(getattr(item, "fixturenames", ()))
                    or any(nid == p or nid.startswith(p + "::") or nid.startswith(p + "/") for p in self.collected))
        self.files[used].write(nid + "\n")

    def pytest_runtest_logreport(self, report):
        if report.outcome != "passed" or hasattr(report, "wasxfail"):
            self.current = True

    def pytest_sessionfinish(self, session):
        for f in self.files.values():
            f.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "build_relative(why): compares geoops with geoops in one build (or reads no "
                            "compiled result); CI's portable stage leaves it out (tests/conftest.py)")
    if not _RECORD:
        return
    worker = hasattr(config, "workerinput")
    if not worker:
        # a plain run, or the controller of an xdist run (before its workers start): start from an empty folder
        os.makedirs(_RECORD, exist_ok=True)
        for f in os.listdir(_RECORD):
            if f.endswith((".txt", ".skip")):
                os.remove(os.path.join(_RECORD, f))
        if getattr(config.option, "numprocesses", None):
            return  # an xdist controller runs no test: its workers record
    if _install():
        config.pluginmanager.register(_Recorder(_RECORD), "geoops-c-usage-recorder")


def _deselectable(sel_dir):
    """The node ids of sel_dir's *.skip files (tests the native run saw pass without reading geoops._C), or None
    where there is no such file."""
    if not os.path.isdir(sel_dir):
        return None
    files = [f for f in os.listdir(sel_dir) if f.endswith(".skip")]
    if not files:
        return None
    out = set()
    for f in files:
        with open(os.path.join(sel_dir, f)) as fh:
            out.update(line.rstrip("\n") for line in fh if line.strip())
    return out


def pytest_collection_modifyitems(config, items):
    if not _SELECT:
        return
    skip = _deselectable(_SELECT)
    if skip is None:
        return
    drop = [it for it in items if it.nodeid in skip or it.get_closest_marker("build_relative")]
    if drop:
        gone = set(map(id, drop))
        items[:] = [it for it in items if id(it) not in gone]
        config.hook.pytest_deselected(items=drop)
