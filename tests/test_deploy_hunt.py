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


def _run(code: str, timeout: int = 300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_TESTS, _ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=_TESTS)


# ---------------------------------------------------------------- torch.export in-process: dynamic shapes
def test_knn_export_with_a_dynamic_batch_and_key_count():
    """knn tiled its queries and keys in Python loops over ``range(0, N, nb)`` with ``nb = min(N, ...)``: under
    torch.export a dynamic N (or M) was specialised ("Constraints violated (batch)! ... specialized it to be a
    constant").  A symbolic size is now one tile along it."""
    y0 = 0.1 * torch.randn(6, 3)

    class M(torch.nn.Module):
        def forward(self, x, y):
            return gs.knn(x, y, 2, k=-1.0)

    x = 0.2 * torch.randn(4, 3)
    ep = torch.export.export(M(), (x, y0), dynamic_shapes=({0: Dim("n", min=2, max=64)},
                                                            {0: Dim("m", min=3, max=64)}))
    for n, m in ((4, 6), (9, 5), (3, 11)):
        xx, yy = 0.2 * torch.randn(n, 3), 0.2 * torch.randn(m, 3)
        _assert_same(ep.module()(xx, yy), gs.knn(xx, yy, 2, k=-1.0))


@pytest.mark.parametrize("f", dm.FAMILIES)
def test_export_decompose_and_compile_the_exported_module(f):
    """Each family's model exports with a dynamic batch (S4D: and length); ``run_decompositions()`` keeps the geoops
    ops (they have no decomposition: opaque custom ops) and computes the same; ``torch.compile(ep.module(),
    fullgraph=True)`` compiles (inference: under no_grad).  torch.promote_types, called by the public functions,
    was recorded into the exported graph as a dead ``aten.promote_types`` node, which dynamo cannot trace ("torch.*
    op returned non-Tensor"): compiling the loaded program failed for the Poincaré, S4D and Gaunt models."""
    m, args, dyn = dm.build(f)
    want = m(*args)
    ep = torch.export.export(m, args, dynamic_shapes=dyn)
    assert not [n for n in ep.graph.nodes if n.op == "call_function" and "promote_types" in str(n.target)]
    geo = {str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "geoops" in str(n.target)}
    assert geo
    dec = ep.run_decompositions()
    assert geo <= {str(n.target) for n in dec.graph.nodes if n.op == "call_function"}
    big = _bigger(args, f)
    _assert_same(dec.module()(*args), want)
    _assert_same(dec.module()(*big), m(*big))
    if f in ("ssm", "gaunt"):  # (a few seconds each; the others are checked by the graph above)
        with torch.no_grad():
            cm = torch.compile(ep.module(), fullgraph=True, dynamic=True)
            _assert_same(cm(*args), want)
