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
