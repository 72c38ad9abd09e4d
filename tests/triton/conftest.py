"""Setup of the Triton backend tests (run on their own: ``python -m pytest tests/triton``).

Without a GPU the kernels run in the Triton interpreter, which Triton decides
when the kernels are defined: TRITON_INTERPRET must be set before triton or
geoops is imported, hence before any other import here.  Run with
TRITON_INTERPRET=0 on a CUDA machine to test the compiled kernels instead.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Interpreted kernels run on CPU tensors; compiled ones need CUDA.
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)


def pytest_collection_modifyitems(config, items):
    if DEVICE is not None:
        return
    skip = pytest.mark.skip(reason="Triton tests need TRITON_INTERPRET=1 or a CUDA device")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def triton_backend():
    """Force the triton backend for every test (restored afterwards)."""
    import geoops

    old = geoops.get_backend()
    geoops.set_backend("triton")
    try:
        yield
    finally:
        geoops.set_backend(old)


@pytest.fixture
def device():
    return DEVICE
