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
_SUBPROCESS = re.compile(r"os\.environ|putenv|set_backend|use_backend|set_num_threads")


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
            last = (r.stderr.strip().splitlines() or [""])[-1]
            if re.match(r"(ModuleNotFound|Import)Error\b", last):  # maybe a missing peer: the caller decides
                missing = re.search(r"No module named '(\w+)", last)
                raise ImportError(last, name=missing.group(1) if missing else None)
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
    except ImportError as e:  # geoops' own "needs e3nn (pip install e3nn)" errors too
        peer = _missing_peer(e)
        if peer:
            pytest.skip(f"needs the optional peer {peer}")
        raise


def _missing_peer(e):
    """The optional peer an ImportError is about, if that peer is really not installed; else None."""
    import importlib.util

    for peer in sorted(PEERS):
        if (e.name or "").split(".")[0] == peer or peer in str(e).lower():
            try:
                if importlib.util.find_spec(peer) is None:
                    return peer
            except (ImportError, ValueError):  # e.g. sys.modules[peer] is None
                return peer
    return None


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


def test_missing_peer_skips(monkeypatch):
    """A block needing an absent peer skips (geoops' own ImportError names it); other ImportErrors fail."""
    gaunt = next(code for lab, code, _ in BLOCKS if lab.startswith("docs/families/gaunt.md"))
    monkeypatch.setitem(sys.modules, "e3nn", None)
    with pytest.raises(pytest.skip.Exception, match="e3nn"):
        test_doc_example_runs("gaunt.md", gaunt, None)
    with pytest.raises(ImportError):
        test_doc_example_runs("x", "import geoops_no_such_module\n", None)
    with pytest.raises(ImportError):  # the same through a subprocess block
        test_doc_example_runs("x", "import os\nos.environ['X'] = '1'\nimport geoops_no_such_module\n", None)


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


# ---- the commands the docs print: every `python -m <geoops runner> --flag` and `scripts/...` path exists ----

CMD_DOCS = [ROOT / "README.md", ROOT / "docs" / "contributing.md"] + sorted((ROOT / "docs" / "families").glob("*.md"))
_CMD = re.compile(r"python -m ((?:geoops\.)?(?:bench|parity)(?:\.\w+)?)([^`\n]*)")


def _documented_commands():
    cmds = {}
    for p in CMD_DOCS:
        if not p.exists():
            continue
        for m in _CMD.finditer(p.read_text(encoding="utf-8")):
            mod = m.group(1)
            if mod.startswith("parity"):
                continue
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2).split(" # ")[0])
            cmds.setdefault(mod, set()).update(flags)
    return cmds


COMMANDS = _documented_commands()


def test_documented_commands_are_found():
    assert {"geoops.bench", "geoops.parity", "bench.gaunt"} <= set(COMMANDS), sorted(COMMANDS)


_HELP = r"""
import contextlib, io, json, runpy, sys
out = {}
for mod in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [mod, "--help"]
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_module(mod, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    except Exception as e:  # a module that does not import or has no parser
        code = repr(e)
    out[mod] = [code, buf.getvalue()]
print("\\n@@HELP@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps():
    """Every documented module's --help text, from one subprocess (imports paid once)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _HELP, *sorted(COMMANDS)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert "@@HELP@@" in r.stdout, r.stderr[-3000:]
    import json

    return json.loads(r.stdout.rsplit("@@HELP@@", 1)[1])


@pytest.mark.build_relative("the --help text of each documented command (argparse, in one child process): its flags "
                            "are the same on both builds")
@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_documented_command_flags_exist(module, helps):
    """`python -m <module> --help` works and lists every flag the docs show for it."""
    code, text = helps[module]
    assert code == 0, f"python -m {module} --help failed: {code}"
    missing = sorted(f for f in COMMANDS[module] if not re.search(re.escape(f) + r"(?![\w-])", text))
    assert not missing, f"the docs show `python -m {module}` with flags its --help does not list: {missing}"


def test_documented_scripts_exist():
    named = set()
    for p in CMD_DOCS:
        if p.exists():
            named.update(re.findall(r"(?<![\w/.])(scripts/[\w./-]+\.(?:sh|py))", p.read_text(encoding="utf-8")))
    assert named
    missing = sorted(s for s in named if not (ROOT / s).exists())
    assert not missing, f"scripts the docs name that do not exist: {missing}"
