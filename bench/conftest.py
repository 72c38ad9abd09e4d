"""pytest setup for the benchmark cases in bench/ (they are not part of the test suite).

The main suite runs from tests/ (testpaths in pyproject.toml), and benchmark
files are named bench_*.py, which pytest's default python_files does not
match, so a plain ``pytest`` (or ``pytest .``) never collects them.  They run
when asked for by path::

    pytest bench/bench_stereographic.py --benchmark-only
    pytest bench --benchmark-only          # every bench_*.py here
"""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _bench_requested(config) -> bool:
    """Was bench/ (or something inside it) named on the command line?"""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        p = (base / str(arg).split("::", 1)[0]).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself whatever their
    # name; this adds the bench_*.py files of bench/ when the folder is asked for.
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_") or file_path.parent != HERE:
        return None
    if parent.session.isinitpath(file_path) or not _bench_requested(parent.config):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "results" and collection_path.parent == HERE:
        return True
    return None
