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

It also replaces ``geoopt.optim.RiemannianSGD.step``: for a step without momentum whose parameters all
live on a ``Stereographic``/``PoincareBall``/``SphereProjection`` manifold (geoopt's ``retr = project(x + u)``
and ``egrad2rgrad = grad / lambda_x^2``) or are Euclidean, each parameter gets one fused update
(:func:`geoops.stereographic.riemannian_sgd_step_`) instead of geoopt's dozen small ops through the
manifold's methods; any other configuration (momentum, the ``Exact`` variants, other manifolds, sparse
gradients) runs geoopt's own step unchanged (on the patched math).  Weight decay and ``stabilize``
behave as in geoopt.

Also usable as a context manager: ``with geoops.compat.patched_geoopt(): ...``.
"""
from __future__ import annotations

import contextlib

import torch

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
_saved_optim: dict = {}


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
    import geoopt.optim

    orig = geoopt.optim.RiemannianSGD.step
    _saved_optim["RiemannianSGD.step"] = orig
    # the step torch.optim wraps (profiler range, step pre/post hooks): geoopt's own, for the fallback
    _saved_optim["plain"] = getattr(orig, "__wrapped__", orig) if getattr(orig, "hooked", False) else orig
    from geoopt.manifolds.stereographic.manifold import Stereographic

    _saved_optim["classes"] = (geoopt, Stereographic)
    step = torch.optim.Optimizer.profile_hook_step(_rsgd_step)  # hooks run as on the unpatched optimizer
    step.hooked = True
    geoopt.optim.RiemannianSGD.step = step


def unpatch_geoopt() -> None:
    """Restore geoopt exactly as it was before patch_geoopt()."""
    gm = _geoopt_math()
    for name, fn in _saved.items():
        setattr(gm, name, fn)
    _saved.clear()
    if "RiemannianSGD.step" in _saved_optim:
        import geoopt.optim

        geoopt.optim.RiemannianSGD.step = _saved_optim.pop("RiemannianSGD.step")
        _saved_optim.clear()


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


# ---------------------------------------------------------------- RiemannianSGD: one fused update per parameter
def _fused_kind(p, default_manifold):
    """('stereo' | 'euclid', manifold) when the fused update reproduces geoopt's for parameter p, else None."""
    geoopt, Stereographic = _saved_optim["classes"]
    man = p.manifold if isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)) else default_manifold
    cls = type(man)
    if isinstance(man, Stereographic):
        ok = cls.retr is Stereographic.retr and cls.egrad2rgrad is Stereographic.egrad2rgrad and man.k.numel() == 1
        return ("stereo", man) if ok and p.dim() >= 1 else None
    if cls is geoopt.Euclidean:
        return ("euclid", man)
    return None


def _rsgd_step(self, closure=None):
    """geoopt.optim.RiemannianSGD.step under patch_geoopt(): fused per-parameter updates where they apply."""
    import geoops.stereographic as gs

    plan = []
    for group in self.param_groups:
        if group["momentum"] != 0:
            return _saved_optim["plain"](self, closure)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                return _saved_optim["plain"](self, closure)  # geoopt's own error
            kind = _fused_kind(p, self._default_manifold)
            if kind is None:
                return _saved_optim["plain"](self, closure)
            plan.append((group, p) + kind)
    loss = closure() if closure is not None else None
    with torch.no_grad():
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        for group, p, kind, man in plan:
            grad = p.grad
            if group["weight_decay"]:
                grad.add_(p, alpha=group["weight_decay"])
            if kind == "stereo":
                gs.riemannian_sgd_step_(p, grad, lr=group["lr"], k=man.k)
            else:
                p.add_(grad, alpha=-group["lr"])
        for group in self.param_groups:
            if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                self.stabilize_group(group)
    return loss
