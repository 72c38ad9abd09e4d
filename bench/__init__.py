"""Benchmarks of geoops against geoopt and torch.compile(geoopt).

Run ``python -m bench`` from the repository root (``--help`` for the options),
or the pytest-benchmark cases with
``pytest bench/bench_stereographic.py --benchmark-only``.
Not part of the installed package.
"""
