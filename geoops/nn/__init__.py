"""torch.nn modules of geoops (imported lazily: optional dependencies load only when a module is used)."""
from __future__ import annotations

import importlib

_MODULES = {"GauntTensorProduct": "gaunt"}

__all__ = list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
