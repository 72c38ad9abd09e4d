"""scripts/_early.sh, the background-job helpers of .ci/run and scripts/test.sh: .ci/run runs under `set -euo
pipefail` and calls early_kill from its EXIT trap, so a job that has ended before the trap must not turn a green run
into exit 1 (stop 55: every stage passed and CI still failed), and a job still running must be ended."""
import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EARLY = os.path.join(ROOT, "scripts", "_early.sh")


def _bash(script, tmp_path):
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body_rc", [0, 3])
def test_exit_trap_keeps_the_body_status_after_the_job_ended(tmp_path, body_rc):
    script = f"""set -euo pipefail
. {EARLY}
D=$(mktemp -d -p {tmp_path})
trap 'early_kill "$D"; rm -rf "$D"' EXIT
early_start "$D" true
early_wait "$D" > /dev/null
(exit {body_rc})
"""
    r = _bash(script, tmp_path)
    assert r.returncode == body_rc, r.stderr


def test_exit_trap_ends_a_job_still_running(tmp_path):
    marker = tmp_path / "survived"
    script = f"""set -euo pipefail
. {EARLY}
D={tmp_path}/job
trap 'early_kill "$D"' EXIT
early_start "$D" bash -c 'echo started; sleep 4; touch {marker}'
for _ in $(seq 300); do grep -q started "$D/log" && break; sleep 0.1; done  # running, in its own group
"""
    r = _bash(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "started" in (tmp_path / "job" / "log").read_text()
    pid = int((tmp_path / "job" / "pid").read_text())
    time.sleep(5)
    assert not marker.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_early_wait_returns_the_job_status(tmp_path):
    script = f""". {EARLY}
D={tmp_path}/job
early_start "$D" bash -c 'echo hello; exit 4'
early_wait "$D"
"""
    r = _bash(script, tmp_path)
    assert r.returncode == 4 and "hello" in r.stdout, (r.returncode, r.stdout, r.stderr)
