#!/usr/bin/env bash
# The wheel recipe of the README, checked end to end:
#   1. GEOOPS_PORTABLE=1 pip wheel --no-build-isolation --no-deps . -w dist
#      (a wheel without -march=native, compiled against this environment's torch;
#      incremental: objects stay in build/temp-*-portable);
#   2. a clean venv that sees only the wheel and this environment's torch
#      (a .pth line to torch's site-packages; no geoops source, no editable install);
#   3. from a folder outside the checkout: import geoops, check that the compiled
#      extension came from the wheel, and run mobius_add and dist (forward and
#      backward) on the C++ kernels against the float64 reference.
#   bash scripts/wheel_check.sh [OUT_DIR]     # default dist/
# GEOOPS_PORTABLE=0 checks a native wheel instead (reuses the objects of scripts/setup.sh's build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${GEOOPS_VENV:-.venv}
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
# shellcheck source=scripts/_build_progress.sh
. scripts/_build_progress.sh
OUT_DIR=${1:-dist}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
T0=$SECONDS

PORTABLE=${GEOOPS_PORTABLE:-1}
echo "[wheel] GEOOPS_PORTABLE=$PORTABLE pip wheel --no-build-isolation --no-deps . -w $OUT_DIR  (a full compile the first time, incremental after) ..."
log=$(mktemp)
rm -f "$OUT_DIR"/geoops-*.whl
set +e
GEOOPS_PORTABLE=$PORTABLE python -m pip wheel -v --no-build-isolation --no-deps . -w "$OUT_DIR" 2>&1 | tee "$log" | build_progress "$T0" "$ROOT"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "---- pip wheel failed (exit $rc):"; grep -v -E "^\s*$" "$log" | tail -n 60
  echo "wheel: 0 passed, 1 failed"; exit 1
fi
rm -f "$log"
whl=$(ls "$OUT_DIR"/geoops-*.whl)
echo "[wheel] built $(basename "$whl") ($(du -h "$whl" | cut -f1)) in $((SECONDS - T0)) s; contents:"
python - "$whl" <<'LIST'
import sys, textwrap, zipfile
names = sorted(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith((".py", ".so")))
print(textwrap.fill(", ".join(names), width=110, initial_indent="          ", subsequent_indent="          "))
LIST

t=$SECONDS
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python -m venv "$TMP/venv"
TORCH_SITE=$(python -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
SITE=$("$TMP/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$TORCH_SITE" > "$SITE/torch-of-the-build-env.pth"
"$TMP/venv/bin/python" -m pip install -q --no-deps --no-index --disable-pip-version-check "$whl"
echo "[wheel] installed into a clean venv (torch from $TORCH_SITE) in $((SECONDS - t)) s; running it from $TMP ..."
cd "$TMP"
"$TMP/venv/bin/python" - "$ROOT" <<'EOF'
import os, sys
import torch
import geoops
import geoops.reference.stereographic as ref
import geoops.stereographic as gm
from geoops import _backend

root = sys.argv[1]
site = os.path.dirname(os.path.dirname(geoops.__file__))
C = _backend.compiled()
assert not geoops.__file__.startswith(root), f"geoops imported from the checkout: {geoops.__file__}"
assert C is not None and C.__file__.startswith(site), f"compiled extension missing or not from the wheel: {C}"
assert geoops.backend_info()["cpu_backend"]["stereographic"] == "cpp", geoops.backend_info()
torch.manual_seed(0)
x = (torch.randn(37, 5) * 0.2).requires_grad_()
y = (torch.randn(37, 5) * 0.2).requires_grad_()
k = torch.tensor(-1.0)
d = gm.dist(gm.mobius_add(x, y, k=k), y, k=k)
d.sum().backward()
x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
d64 = ref.dist(ref.mobius_add(x64, y64, k=k.double()), y64, k=k.double())
d64.sum().backward()
torch.testing.assert_close(d.double(), d64.detach(), rtol=1e-5, atol=1e-6)
torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
print(f"[wheel] geoops {geoops.__version__} from {os.path.dirname(geoops.__file__)}")
print(f"[wheel] {os.path.basename(C.__file__)}; dist(mobius_add(x, y), y) and its gradient on the cpp backend match the fp64 reference")
EOF
echo "[wheel] ok in $((SECONDS - T0)) s"
echo "wheel: 1 passed, 0 failed"
