"""Readable eager implementations: the oracle of the tests and the `reference` backend.

One module per family (``geoops.reference.<family>``), with the public functions' names.
"""
import importlib as _importlib

from .._families import FAMILIES

for _family in FAMILIES:
    globals()[_family] = _importlib.import_module(f"{__name__}.{_family}")
del _family

__all__ = list(FAMILIES)
