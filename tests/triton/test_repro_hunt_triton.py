"""Session 38 reproducibility hunt (helper "reprohunt"), Triton backend under the interpreter: geoops' Triton
kernels have no atomics and fixed reduction orders (split partials summed in order), so
``torch.use_deterministic_algorithms(True)`` (and ``warn_only=True``) changes nothing: no error, no warning, the same
bits as without it and from call to call; torch's fill_uninitialized_memory (NaN in every torch.empty under the
switch) finds no output element a launcher forgot to write.  Interpreter fixtures from conftest.py."""
import os
import sys
import warnings

import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the CPU hunts' per-family cases

from test_threads_hunt import FAMILIES, _same  # noqa: E402


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_deterministic_algorithms_same_bits_no_error(device, family):
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    ref = FAMILIES[family](1)
    for warn_only in (False, True):
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = FAMILIES[family](1)
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        bad = [j for j, (a, b) in enumerate(zip(ref, got)) if not _same(a, b)]
        assert not bad, f"results {bad} change under use_deterministic_algorithms(True, warn_only={warn_only})"
