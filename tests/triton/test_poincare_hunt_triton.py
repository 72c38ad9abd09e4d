"""Session 35 hunt (helper "tritonhunt"): the Triton backend of geoops.poincare on inputs the other Triton tests do
not pass.  Interpreter fixtures from conftest.py (the triton backend forced for every test)."""
import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.poincare as gp  # noqa: E402
from geoops import _backend  # noqa: E402

needs_cpp = pytest.mark.skipif(_backend.compiled() is None, reason="geoops._C (the C++ CPU kernels) is not built")


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_tangent", [False, True])
@pytest.mark.parametrize("M", [2, 3, 4])
def test_fc_backward_with_a_nan_row(device, dtype, from_tangent, M):
    """A NaN point: its own output row and gradient row are NaN, the other rows' dx are the C++ backend's.  The
    backward kernel's argmax over |u| of an all-NaN row raised in the interpreter ("All-NaN slice encountered") when
    M filled the column tile (no padding column: M a power of two)."""
    g = torch.Generator().manual_seed(0)
    x = (0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)).to(dtype)
    x[1, 2] = float("nan")
    z = torch.randn(5, M, generator=g, dtype=torch.float64).to(dtype)
    b = (0.1 * torch.randn(M, generator=g, dtype=torch.float64)).to(dtype)
    grads = {}
    for backend in ("triton", "cpp"):
        dev = device if backend == "triton" else "cpu"
        xx, zz, bb = (t.clone().to(dev).requires_grad_() for t in (x, z, b))
        with geoops.use_backend(backend):
            y = gp.poincare_fc(xx, zz, bb, c=0.7, from_tangent=from_tangent)
            y.sum().backward()
        assert y[1].isnan().all() and y[[0, 2, 3]].isfinite().all()
        grads[backend] = xx.grad.cpu()
    keep = [0, 2, 3]
    torch.testing.assert_close(grads["triton"][keep], grads["cpp"][keep])
