"""Run existing geoopt code on geoops kernels with one call.

    import geoops.compat
    geoops.compat.patch_geoopt()      # geoopt's stereographic math now runs on geoops
    ...                               # unchanged geoopt code: PoincareBall, Stereographic, SphereProjection,
                                      # ManifoldParameter, RiemannianSGD / RiemannianAdam
    geoops.compat.unpatch_geoopt()    # geoopt exactly as before

``patch_geoopt()`` replaces the functions of ``geoopt.manifolds.stereographic.math`` (``mobius_add``,
``dist``, ``expmap``, ``logmap``, ``project``, ``lambda_x``, ... and the rest of geoopt's math surface
that geoops provides) by the geoops functions of the same name and signature.  geoopt's manifold
classes (``Stereographic``, ``PoincareBall``, ``SphereProjection``, their ``Scaled``/``Exact``
variants) call these module functions at call time, so their methods (``dist``, ``expmap``,
``retr_transp``, ``egrad2rgrad``, ...) and everything built on them (Riemannian optimisers,
``ManifoldParameter``) run on geoops kernels.  Results equal geoopt's to rounding, except where
geoops is deliberately more accurate (see ``geoops.stereographic``).  ``unpatch_geoopt()`` puts every
original object back (identity, not a copy).  Both are idempotent.  geoopt is optional: without it
both raise ImportError saying so.

Also usable as a context manager: ``with geoops.compat.patched_geoopt(): ...``.
"""
from __future__ import annotations

import contextlib

__all__ = ["patch_geoopt", "unpatch_geoopt", "patched_geoopt", "is_patched", "PATCHED_NAMES"]

# geoopt.manifolds.stereographic.math names that geoops replaces (same signatures)
PATCHED_NAMES = (
    "project", "lambda_x", "mobius_add", "mobius_sub", "mobius_scalar_mul", "expmap", "expmap0", "logmap",
    "logmap0", "dist", "dist0", "mobius_matvec", "mobius_pointwise_mul", "gyration", "mobius_coadd",
    "mobius_cosub", "parallel_transport", "parallel_transport0", "parallel_transport0back", "egrad2rgrad",
    "inner", "norm", "geodesic", "geodesic_unit", "antipode", "sproj", "inv_sproj", "dist2plane",
    "weighted_midpoint", "mobius_fn_apply", "mobius_fn_apply_chain",
)

_saved: dict = {}


def _geoopt_math():
    try:
        import geoopt.manifolds.stereographic.math as gm
    except ImportError as e:
        raise ImportError(
            "geoops.compat.patch_geoopt() needs geoopt, which is not installed (pip install geoopt); "
            f"geoops itself does not need it ({e})"
        ) from e
    return gm


def is_patched() -> bool:
    """Whether patch_geoopt() is in effect."""
    return bool(_saved)


def patch_geoopt() -> None:
    """Make geoopt's stereographic math (and so its manifolds and optimisers) run on geoops kernels."""
    gm = _geoopt_math()
    if _saved:
        return
    import geoops.stereographic as gs

    for name in PATCHED_NAMES:
        if hasattr(gm, name) and hasattr(gs, name):
            _saved[name] = getattr(gm, name)
            setattr(gm, name, getattr(gs, name))


def unpatch_geoopt() -> None:
    """Restore geoopt exactly as it was before patch_geoopt()."""
    gm = _geoopt_math()
    for name, fn in _saved.items():
        setattr(gm, name, fn)
    _saved.clear()


@contextlib.contextmanager
def patched_geoopt():
    """Context manager: geoopt runs on geoops kernels inside the block."""
    already = is_patched()
    patch_geoopt()
    try:
        yield
    finally:
        if not already:
            unpatch_geoopt()
