"""geoops: compiled kernels for geometric deep learning.

Families: the names in ``geoops.FAMILIES`` (``geoops._families``).  Each is a module ``geoops.<family>`` of public
functions; ``geoops.reference.<family>`` holds the eager references, ``geoops.nn`` the modules built on them.
Backends and switches: see ``geoops._backend``.  Adding an op or a family: ``docs/contributing.md``.
"""
import importlib as _importlib

from ._backend import BACKENDS, checks_enabled, get_backend, set_backend, set_checks, use_backend
from . import _backend as _backend_mod
from ._families import FAMILIES
from . import reference

__version__ = "0.1.0"

for _family in FAMILIES:  # each family's public module registers its torch.ops.geoops.* on import
    globals()[_family] = _importlib.import_module(f"{__name__}.{_family}")
del _family

_backend_mod.preload(FAMILIES)

__all__ = [
    "BACKENDS",
    "FAMILIES",
    "get_backend",
    "set_backend",
    "use_backend",
    "checks_enabled",
    "set_checks",
    "reference",
    "backend_info",
    "__version__",
    *FAMILIES,
]


def backend_info() -> dict:
    """What runs where in this installation (for bug reports and the parity run)."""
    import torch

    from . import _backend

    C = _backend.compiled()
    forced = get_backend()
    cpu = torch.device("cpu")
    return {
        "geoops": __version__,
        "torch": torch.__version__,
        "compiled_extension": C is not None,
        "cuda_kernels_built": bool(C is not None and getattr(C, "with_cuda", False)),
        "triton": {f: _backend.triton_kernels(f) is not None for f in FAMILIES},
        "forced_backend": forced,
        "cpu_backend": {f: _backend.resolve(cpu, f) for f in FAMILIES} if forced in ("auto", "cpp", "reference")
        else None,
    }
