"""Readable eager implementations: the oracle of the tests and the `reference` backend."""
from . import gaunt, stereographic

__all__ = ["stereographic", "gaunt"]
