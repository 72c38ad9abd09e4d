"""The op families of geoops: one line per family.

Each name is a module in every layer: ``geoops.<family>`` (public functions and their
autograd.Functions), ``geoops.reference.<family>``, ``geoops._ops.<family>`` (torch.library
registrations), ``geoops.kernels.<family>`` (Triton, optional), ``csrc/cpu/<family>.cpp``,
``geoops.parity.<family>`` (parity cases), ``bench/<family>.py`` (benchmark rows) and
``tests/test_<family>.py``.  The shared parts (backend switch, registration helpers, parity
and bench runners) iterate over this tuple and know nothing else about a family.
"""
FAMILIES = (
    "stereographic",
    "attention",
    "gaunt",
    "ssm",
    "poincare",
)
