"""Benchmarks of geoops against the eager peers users run today and their torch.compile.

Installed as ``geoops.bench``: run ``python -m geoops.bench`` from anywhere (``python -m bench``
also works from the repository root); ``--help`` for the options.  One module per family
(``bench/<family>.py``) lists its rows; ``bench/_runner.py`` times them.  The pytest-benchmark
cases: ``pytest bench/bench_stereographic.py --benchmark-only``.
"""
