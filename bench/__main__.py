"""``python -m bench`` (in a checkout) / ``python -m geoops.bench`` (installed): the benchmark suite.

See bench/_runner.py for what is measured and how; ``--help`` for the options.
"""
import sys

from ._runner import main

if __name__ == "__main__":
    sys.exit(main())
