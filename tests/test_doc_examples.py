"""Run every ```python example of README.md and docs/families/*.md (docs/history.md is history: not run).

Users copy these blocks first, so each must run as written against the current API.  A block runs by exec in
a fresh namespace (a subprocess when it sets environment variables or the backend, which must happen before
geoops is imported or would leak into other tests).  A block that needs an optional peer (geoopt, hypll, e3nn)
is skipped when that peer is missing.  A block that cannot run here at all (GPU only) carries the marker
``<!-- doc-example: skip (reason) -->`` on the line right above its fence.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs" / "families").glob("*.md"))
PEERS = {"geoopt", "hypll", "e3nn"}
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_SKIP = re.compile(r"^<!--\s*doc-example:\s*skip\s*\((.+)\)\s*-->\s*$")
_SUBPROCESS = re.compile(r"os\.environ|putenv|set_backend|use_backend")


def collect(path, root=ROOT):
    """[(label, code, skip_reason or None)] of the ```python blocks of one markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.match(before.strip())
        out.append((f"{path.relative_to(root).as_posix()}:{line}", m.group(1), skip.group(1) if skip else None))
    return out


BLOCKS = [b for p in DOC_FILES for b in collect(p)]


def run_block(code, label="<doc example>"):
    """Run one example; raises what the example raises."""
    if _SUBPROCESS.search(code):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            missing = re.search(r"No module named '(\w+)", r.stderr)
            if missing and missing.group(1) in PEERS:
                raise ModuleNotFoundError(r.stderr.strip().splitlines()[-1], name=missing.group(1))
            raise AssertionError(f"{label} failed:\n{r.stderr[-3000:]}")
        return {}
    import geoops.compat as compat

    ns = {"__name__": "__doc_example__"}
    was = {"geoopt": compat.is_patched(), "hypll": compat.is_hypll_patched()}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        try:
            exec(compile(code, label, "exec"), ns)
        finally:  # an example may patch a peer: leave the process as it was for the other tests
            if not was["geoopt"] and compat.is_patched():
                compat.unpatch_geoopt()
            if not was["hypll"] and compat.is_hypll_patched():
                compat.unpatch_hypll()
    return ns


@pytest.mark.parametrize("label,code,skip", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_doc_example_runs(label, code, skip):
    if skip:
        pytest.skip(f"marked in the docs: {skip}")
    try:
        run_block(code, label)
    except ModuleNotFoundError as e:
        if e.name in PEERS:
            pytest.skip(f"needs the optional peer {e.name}")
        raise


def test_every_page_has_its_examples():
    """The collector finds the blocks the docs have (a broken pattern would make the test above vacuous)."""
    per_file = {}
    for label, _, _ in BLOCKS:
        per_file[label.rsplit(":", 1)[0]] = per_file.get(label.rsplit(":", 1)[0], 0) + 1
    assert per_file.get("README.md", 0) >= 5, per_file
    for fam in ("attention", "gaunt", "poincare", "ssm", "stereographic-pairwise"):
        assert per_file.get(f"docs/families/{fam}.md", 0) >= 1, (fam, per_file)
    assert not any("history" in lab for lab, _, _ in BLOCKS)


def test_runner_leaves_peers_unpatched():
    pytest.importorskip("hypll")
    import geoops.compat as compat

    assert not compat.is_hypll_patched()
    run_block("import geoops.compat\ngeoops.compat.patch_hypll()\n")
    assert not compat.is_hypll_patched()


def test_runner_fails_on_a_broken_example():
    with pytest.raises(AttributeError):
        run_block("import geoops.stereographic as gs\ngs.no_such_op(1.0)\n")
    with pytest.raises(NameError):
        run_block("import geoops.ssm as ssm\nK = ssm.s4d_kernel(log_dt, A, B, C, L=16)\n")
    with pytest.raises(AssertionError, match="ValueError"):
        run_block("import os\nos.environ['X'] = '1'\nraise ValueError('boom')\n")


def test_skip_marker_is_read(tmp_path):
    p = tmp_path / "x.md"
    p.write_text("text\n<!-- doc-example: skip (needs a CUDA device) -->\n```python\nimport torch\n```\n\n"
                 "```python\nx = 1\n```\n")
    got = collect(p, root=tmp_path)
    assert [(lab, code, skip) for lab, code, skip in got] == [
        ("x.md:3", "import torch\n", "needs a CUDA device"), ("x.md:7", "x = 1\n", None)]
