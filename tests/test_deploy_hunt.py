"""Session 37 deployment hunt ("deployhunt"): shipping a model that uses geoops.

One tiny model per family (tests/_deploy_models.py) through torch 2.13's deployment paths: the pickled whole
module and the state dict (``weights_only=True``), ``torch.export`` (.pt2, dynamic batch / length,
``run_decompositions``), AOTInductor (``slow``: the suite's only AOTI compile), ``torch.compile`` of the model and
of ``exported.module()``.  The loading side runs in a fresh Python process.  See README "Deploying models".
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.export import Dim

import geoops
import geoops.stereographic as gs

import _deploy_models as dm

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(geoops.__file__)))  # where this geoops was imported from


def _flat(o):
    return tuple(o) if isinstance(o, (tuple, list)) else (o,)


def _assert_same(got, want, atol=1e-6):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.is_floating_point():
            torch.testing.assert_close(g, w, rtol=1e-5, atol=atol)
        else:
            assert torch.equal(g, w)


def _bigger(args, f):
    """The example inputs with another batch size (and, for S4D, another length): a dynamic dim stays dynamic."""
    torch.manual_seed(3)
    if f == "ssm":
        return (torch.randn(5, 4, 23),)
    if f == "poincare":
        return (gs.expmap0(0.1 * torch.randn(5, 4, 4, 3), k=-1.0).permute(0, 3, 1, 2).contiguous(),)
    return tuple(torch.cat([a, 0.5 * a[:1]]) for a in args)


def _run(code: str, timeout: int = 300, tmpdir=None):
    env = dict(os.environ)
    if tmpdir is not None:  # the child's temporary files (AOTInductor's package extraction) go under pytest's tmp_path
        os.makedirs(tmpdir, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    env["PYTHONPATH"] = os.pathsep.join([_TESTS, _ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=_TESTS)


# ---------------------------------------------------------------- torch.export in-process: dynamic shapes
def test_knn_export_with_a_dynamic_batch_and_key_count():
    """knn tiled its queries and keys in Python loops over ``range(0, N, nb)`` with ``nb = min(N, ...)``: under
    torch.export a dynamic N (or M) was specialised ("Constraints violated (batch)! ... specialized it to be a
    constant").  A symbolic size is now one tile along it.  And its program did not load back: the eager
    kernels' ``torch.no_grad()`` block, empty under tracing, became a ``wrap_with_set_grad_enabled`` node without
    outputs that torch.export.load refused ("Node.meta wrap_with_set_grad_enabled is missing val field")."""
    y0 = 0.1 * torch.randn(6, 3)

    class M(torch.nn.Module):
        def forward(self, x, y):
            return gs.knn(x, y, 2, k=-1.0)

    x = 0.2 * torch.randn(4, 3)
    ep = torch.export.export(M(), (x, y0), dynamic_shapes=({0: Dim("n", min=2, max=64)},
                                                            {0: Dim("m", min=3, max=64)}))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    for n, m in ((4, 6), (9, 5), (3, 11)):
        xx, yy = 0.2 * torch.randn(n, 3), 0.2 * torch.randn(m, 3)
        _assert_same(ep.module()(xx, yy), gs.knn(xx, yy, 2, k=-1.0))
        _assert_same(loaded(xx, yy), gs.knn(xx, yy, 2, k=-1.0))


def test_knn_compiles_one_graph_for_dynamic_sizes():
    """Likewise under torch.compile(dynamic=True): one graph for every N and M (it recompiled per size)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    f = torch.compile(lambda x, y: gs.knn(x, y, 2, k=-1.0), dynamic=True, fullgraph=True, backend="aot_eager")
    for n, m in ((4, 6), (9, 7), (13, 11)):
        xx, yy = 0.2 * torch.randn(n, 3), 0.2 * torch.randn(m, 3)
        _assert_same(f(xx, yy), gs.knn(xx, yy, 2, k=-1.0))
    assert counters["stats"]["unique_graphs"] == 1


_EXPORTED = {}


def _exported(f):
    """(model, example args, exported program) of a family's model, exported once per test session."""
    if f not in _EXPORTED:
        m, args, dyn = dm.build(f)
        _EXPORTED[f] = m, args, torch.export.export(m, args, dynamic_shapes=dyn)
    return _EXPORTED[f]


@pytest.mark.parametrize("f", dm.FAMILIES)
def test_export_decompose_and_compile_the_exported_module(f):
    """Each family's model exports with a dynamic batch (S4D: and length); ``run_decompositions()`` keeps the geoops
    ops (they have no decomposition: opaque custom ops) and computes the same; ``torch.compile(ep.module(),
    fullgraph=True)`` compiles (inference: under no_grad).  torch.promote_types, called by the public functions,
    was recorded into the exported graph as a dead ``aten.promote_types`` node, which dynamo cannot trace ("torch.*
    op returned non-Tensor"): compiling the loaded program failed for the Poincaré, S4D and Gaunt models."""
    m, args, ep = _exported(f)
    want = m(*args)
    assert not [n for n in ep.graph.nodes if n.op == "call_function" and "promote_types" in str(n.target)]
    geo = {str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "geoops" in str(n.target)}
    assert geo
    dec = ep.run_decompositions()
    assert geo <= {str(n.target) for n in dec.graph.nodes if n.op == "call_function"}
    big = _bigger(args, f)
    _assert_same(dec.module()(*args), want)
    _assert_same(dec.module()(*big), m(*big))
    if f == "gaunt":  # (seconds each: one family; the others are checked by the graph above)
        with torch.no_grad():
            # (dynamo and AOTAutograd; Inductor's lowering of such a program: the AOTI test)
            cm = torch.compile(ep.module(), fullgraph=True, dynamic=True, backend="aot_eager")
            _assert_same(cm(*args), want)


def test_exported_program_differentiates():
    """Session 37: an exported program was inference-only (backward raised a RuntimeError saying so).  Session 38:
    each forward op carries its own autograd formula (geoops._library.op_autograd), so the program differentiates,
    also compiled outside no_grad (tests/test_export_grad.py checks every family against the eager gradients)."""
    m, args, ep = _exported("gaunt")
    mod = ep.module()
    x = [a.clone().requires_grad_() for a in args]
    mod(*x).sum().backward()
    x2 = [a.clone().requires_grad_() for a in args]
    m(*x2).sum().backward()
    for a, b in zip(x, x2):
        torch.testing.assert_close(a.grad, b.grad)
    torch.compile(mod, fullgraph=True, backend="aot_eager")(*args)


# ---------------------------------------------------------------- the loading side in a fresh process
def test_load_in_a_fresh_process(tmp_path):
    """Saved here, loaded in a new Python process, for every family: the pickled whole module
    (``torch.load(weights_only=False)``), the state dict (``weights_only=True``) into a fresh model, and the .pt2 of
    ``torch.export.save`` (dynamic batch / length kept).  Before ``import geoops`` the .pt2 does not load, and torch's
    message names the ``torch.ops.geoops`` op that is not registered (README: import geoops first)."""
    for f in dm.FAMILIES:
        m, args, ep = _exported(f)
        big = _bigger(args, f)
        torch.save(m, tmp_path / f"{f}_whole.pt")
        torch.save(m.state_dict(), tmp_path / f"{f}_sd.pt")
        torch.export.save(ep, tmp_path / f"{f}.pt2")
        torch.save({"args": args, "want": m(*args), "big": big, "want_big": m(*big)}, tmp_path / f"{f}_io.pt")
    r = _run(f"""
        import sys, torch
        d = {str(tmp_path)!r}
        try:  # without geoops: torch cannot resolve the ops
            torch.export.load(d + "/attention.pt2")
            print("LOADED WITHOUT GEOOPS")
        except Exception as e:
            print("NO GEOOPS:", type(e).__name__, e)
        assert "geoops" not in sys.modules
        import geoops, _deploy_models as dm

        def same(got, want):
            got = got if isinstance(got, tuple) else (got,)
            want = want if isinstance(want, tuple) else (want,)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and g.dtype == w.dtype
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)

        for f in dm.FAMILIES:
            io = torch.load(d + f"/{{f}}_io.pt", weights_only=True)
            whole = torch.load(d + f"/{{f}}_whole.pt", weights_only=False)
            fresh = dm.build(f)[0]
            with torch.no_grad():
                for p in fresh.parameters():
                    p.add_(0.25)
            fresh.load_state_dict(torch.load(d + f"/{{f}}_sd.pt", weights_only=True))
            prog = torch.export.load(d + f"/{{f}}.pt2").module()
            for mod in (whole, fresh, prog):
                same(mod(*io["args"]), io["want"])
                same(mod(*io["big"]), io["want_big"])
            print("OK", f)
    """)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for f in dm.FAMILIES:
        assert f"OK {f}" in r.stdout
    assert "NO GEOOPS: RuntimeError" in r.stdout, r.stdout
    err = r.stderr
    assert "torch.ops.geoops.triple_attention_fwd.default" in err and "not registered" in err, err[-3000:]


# ---------------------------------------------------------------- AOTInductor (the suite's only AOTI compile)
@pytest.mark.slow
@pytest.mark.build_relative("the package's numbers against the eager model's in one build; its one kernel entry point "
                            "(gaunt_direct_fwd_cpu) is read by tests/test_gaunt*.py, which the portable stage runs")
def test_aoti_package_runs_in_a_fresh_process(tmp_path):
    """AOTInductor on the CPU (~40 s: one compile, the Gaunt model, whose op takes a Tensor?[] list): the package
    runs geoops' Python-registered ops through torch's proxy executor, so it loads only in a Python process that
    imported geoops; there it gives the eager numbers at another batch size.  Without geoops torch's loader says
    "Could not find schema for geoops::gaunt_fwd" (README: import geoops first; no Python-free deployment).  The
    other families' packages were checked by hand in session 37 (same numbers, ≤ 4e-7 in float32)."""
    m, args, ep = _exported("gaunt")
    big = _bigger(args, "gaunt")
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "gaunt_aoti.pt2"))
    torch.save({"args": args, "want": m(*args), "big": big, "want_big": m(*big)}, tmp_path / "io.pt")
    r = _run(f"""
        import sys, torch
        try:
            torch._inductor.aoti_load_package({path!r})
            print("LOADED WITHOUT GEOOPS")
        except Exception as e:
            print("NO GEOOPS:", type(e).__name__, e)
        import geoops
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        runner = torch._inductor.aoti_load_package({path!r})
        torch.testing.assert_close(runner(*io["args"]), io["want"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(runner(*io["big"]), io["want_big"], rtol=1e-5, atol=1e-6)
        print("OK")
    """, tmpdir=tmp_path / "tmp")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    assert "NO GEOOPS: RuntimeError Could not find schema for geoops::gaunt_fwd" in r.stdout, r.stdout
