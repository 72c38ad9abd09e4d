"""geoops: compiled kernels for geometric deep learning.

Families: ``geoops.stereographic`` (kappa-stereographic / Poincare-ball ops,
geoopt-compatible).  Backends and switches: see ``geoops._backend``.
"""
from ._backend import BACKENDS, checks_enabled, get_backend, set_backend, set_checks, use_backend
from . import _backend as _backend_mod
from . import _ops  # registers torch.ops.geoops.*
from . import reference, stereographic
from . import gaunt

__version__ = "0.1.0"

_backend_mod.preload()

__all__ = [
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "checks_enabled",
    "set_checks",
    "stereographic",
    "gaunt",
    "reference",
    "__version__",
]


def backend_info() -> dict:
    """What runs where in this installation (for bug reports and the parity run)."""
    import torch

    from . import _backend

    C = _backend.compiled()
    return {
        "geoops": __version__,
        "torch": torch.__version__,
        "compiled_extension": C is not None,
        "cuda_kernels_built": bool(C is not None and getattr(C, "with_cuda", False)),
        "triton": _backend.triton_kernels() is not None,
        "forced_backend": get_backend(),
        "cpu_backend": _backend.resolve(torch.device("cpu")) if get_backend() in ("auto", "cpp", "reference") else None,
    }
