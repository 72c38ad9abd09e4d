"""Shared comparisons of the tests: outputs relative to their largest entry, and the low-precision rule."""
from __future__ import annotations

import torch


def assert_close_to_largest(got, want, tag=(), **tol):
    """Output by output: the same shape and dtype, and assert_close(**tol) after dividing both by the reference's
    largest |entry| (at least 1): entries that scale with a huge factor (rows near the boundary) set the scale."""
    assert len(got) == len(want), tag
    for i, (a, r) in enumerate(zip(got, want)):
        assert a.shape == r.shape and a.dtype == r.dtype, (*tag, i)
        scale = r.abs().max().clamp_min(1) if r.numel() else 1
        torch.testing.assert_close(a / scale, r / scale, **tol, msg=lambda s: f"{tag} output {i}: {s}")


def assert_2x_rule(ours, ref, truth, floor, tag=()):
    """The low-precision rule: max |ours - truth| <= 2 max |ref - truth| + floor, with `ref` the reference path in
    ours' dtype and `truth` the float64 result."""
    err, ref_err = (ours.double() - truth).abs().max(), (ref.double() - truth).abs().max()
    assert err <= 2 * ref_err + floor, (*tag, float(err), float(ref_err))


def record_ops():
    """A dispatch mode that records the names of the aten ops run inside it (``with record_ops() as rec:`` then
    ``rec.names``): tests that a path makes no op of some kind (e.g. no zeros per backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    return RecordOps()


def memory_events(f):
    """The allocations / frees of torch's CPU allocator while f() runs (the profiler's "[memory]" events, in time
    order; nbytes() < 0 for a free); skips the test on a torch without the kineto results."""
    import pytest
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        f()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # pragma: no cover - a torch without the kineto results
        pytest.skip("no profiler allocation timeline")
    return sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
