"""torch.nn modules of the geoops families: ``geoops.nn.<family>`` (e.g. ``geoops.nn.attention``).

Family-neutral and lazy: ``geoops.nn.<Name>`` imports the family module that exports ``Name`` (in its
``__all__``) on first use, so importing geoops does not import every layer, and a family adds its
module without editing this file.
"""
from __future__ import annotations

import importlib

from .._families import FAMILIES


def _family_module(family: str):
    try:
        return importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{family}":
            return None  # this family has no nn layer
        raise


def __getattr__(name: str):
    for family in FAMILIES:
        if name == family:
            mod = _family_module(family)
            if mod is not None:
                return mod
        mod = _family_module(family) if not name.startswith("_") else None
        if mod is not None and name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    names = []
    for family in FAMILIES:
        mod = _family_module(family)
        if mod is not None:
            names += [family, *getattr(mod, "__all__", ())]
    return sorted(set(names))
