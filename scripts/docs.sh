#!/usr/bin/env bash
# API reference of geoops, built with pdoc from the docstrings into docs/api/
# (git-ignored: generated; CI builds it with --check so that it cannot rot).
#   bash scripts/docs.sh            # build, then open docs/api/index.html
#   bash scripts/docs.sh --check    # build and fail on a missing docstring or a pdoc warning
#   bash scripts/docs.sh --serve    # live preview on http://localhost:8080
# Uses the venv of scripts/setup.sh when there is one (pdoc: pip install pdoc).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GEOOPS_VENV:-.venv}
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
python -c "import pdoc" 2>/dev/null || { echo "docs: pdoc is not installed: pip install pdoc (or bash scripts/setup.sh)"; exit 1; }
exec python scripts/docs.py "$@"
