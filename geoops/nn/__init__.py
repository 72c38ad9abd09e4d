"""torch.nn modules built on geoops kernels: one submodule per family (``geoops.nn.<family>``).

Submodules are imported lazily, on first use of one of their names, so that optional
dependencies (e.g. e3nn for ``GauntTensorProduct``) load only when needed: ``geoops.nn.S4D``,
``geoops.nn.GauntTensorProduct``, ``geoops.nn.TripleAttention``, ...  Each submodule lists its
public names in ``__all__``; this package knows no family.
"""
from __future__ import annotations

import importlib
import importlib.util

from .._families import FAMILIES


def _submodules():
    for family in FAMILIES:
        if importlib.util.find_spec(f"{__name__}.{family}") is not None:
            yield family


def __getattr__(name):
    if not name.startswith("_"):
        for family in _submodules():
            mod = importlib.import_module(f"{__name__}.{family}")
            if name in getattr(mod, "__all__", ()):
                return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    names = set(globals())
    for family in _submodules():
        spec = importlib.util.find_spec(f"{__name__}.{family}")
        try:  # read __all__ without importing optional dependencies: parse the source
            import ast

            tree = ast.parse(open(spec.origin).read())
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                    names.update(ast.literal_eval(node.value))
        except Exception:
            pass
    return sorted(names)
