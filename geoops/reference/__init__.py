"""Readable eager implementations: the oracle of the tests and the `reference` backend."""
from . import attention, stereographic

__all__ = ["attention", "stereographic"]
