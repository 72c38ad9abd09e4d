"""pytest plugin (not a test): finds backwards that run under another backend than their forward.

geoops picks the backend per call, the backward's kernels too (at backward time): a test that runs a twin's
forward inside ``geoops.use_backend("reference")`` and its ``.backward()`` after the block ran the default
backend's backward for it, so the twins' gradients came from one backend (sessions 51 and 53 found such tests).
This plugin tags every Python ``autograd.Function`` node (every geoops op's, the torch.library ops' too) with the
backend setting in force at its forward, and records the tests in which a node's backward ran under another:

    PYTHONPATH=$PWD:$PWD/tests GEOOPS_BACKEND_TRACE=trace.jsonl python -m pytest tests/test_x.py -p _backend_trace

(``TRITON_INTERPRET=1`` and tests/triton/... likewise; xdist workers append to the same file.)  One JSON line per
test with such a node: {"test": nodeid, "hits": {"<module>.<Function> fwd=<b> bwd=<b>": count}}.  A test that
switches the backend between a forward and its backward on purpose (tests/test_threads_hunt.py's switch from
another thread) is listed too.  Session 54 (audit54) ran it over the backend-comparing gradient tests: none listed.
Not traced: eager compositions (the reference paths that record torch's own autograd: their backward is fixed at
the forward) and compiled graphs (their backward calls the ops directly).
"""
import json
import os

import pytest
import torch
from torch.autograd import function as _function

_LOG = os.environ.get("GEOOPS_BACKEND_TRACE", "backend_trace.jsonl")
_now = {"test": None, "hits": {}}


def _setting() -> str:
    from geoops import _backend

    name = _backend.get_backend()
    return "cpp" if name == "auto" else name  # (CPU tensors: auto runs the C++ kernels, as under TRITON_INTERPRET)


_apply = torch.autograd.Function.apply.__func__
_backward_apply = _function.BackwardCFunction.apply


def _traced_apply(cls, *args, **kwargs):
    out = _apply(cls, *args, **kwargs)
    for t in out if isinstance(out, (tuple, list)) else (out,):
        node = getattr(t, "grad_fn", None)
        if isinstance(node, _function.BackwardCFunction) and not hasattr(node, "_geoops_forward_backend"):
            node._geoops_forward_backend = _setting()
    return out


def _traced_backward(node, *grads):
    fwd = getattr(node, "_geoops_forward_backend", None)
    if fwd is not None and _now["test"] is not None and _setting() != fwd:
        cls = node._forward_cls
        key = f"{cls.__module__}.{cls.__qualname__} fwd={fwd} bwd={_setting()}"
        _now["hits"][key] = _now["hits"].get(key, 0) + 1
    return _backward_apply(node, *grads)


torch.autograd.Function.apply = classmethod(_traced_apply)
_function.BackwardCFunction.apply = _traced_backward


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _now["test"], _now["hits"] = item.nodeid, {}
    try:
        yield
    finally:
        if _now["hits"]:
            with open(_LOG, "a") as f:
                f.write(json.dumps({"test": item.nodeid, "hits": _now["hits"]}) + "\n")
        _now["test"] = None
