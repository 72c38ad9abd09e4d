"""nn.Module layers built on geoops kernels (one submodule per family; imported lazily)."""
import importlib

_LAZY = {"S4D": "ssm", "S4DKernel": "ssm"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
