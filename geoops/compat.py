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

HypLL (Poincaré ResNet's layers): ``patch_hypll()`` / ``unpatch_hypll()`` / ``patched_hypll()`` do the same for
``hypll.manifolds.poincare_ball`` (its PoincareBall and so every ``hypll.nn`` layer), see below.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from . import _backend
from ._ops import stereographic as _stereo_ops
from .reference import stereographic as _ref

_RSGD_DTYPES = (torch.float32, torch.float64)
_EPS = {dt: _ref.default_eps(dt) for dt in _RSGD_DTYPES}

__all__ = ["patch_geoopt", "unpatch_geoopt", "patched_geoopt", "is_patched", "PATCHED_NAMES",
           "patch_hypll", "unpatch_hypll", "patched_hypll", "is_hypll_patched", "HYPLL_PATCHED_NAMES"]

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
_ABSENT = object()  # a class attribute that was not there before patch_geoopt() (deleted again by unpatch)


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
    from geoopt.manifolds.stereographic.manifold import PoincareBall, SphereProjection

    _saved_optim["k_props"] = (PoincareBall.__dict__["k"], SphereProjection.__dict__["k"])  # see _step_k
    # the manifolds' k read from _step_k's cache (see _cached_k): the user's ball.dist(...) reads it on every call
    _saved_optim["k_cached"] = (_cached_k(PoincareBall, "isp_c", "c"), _cached_k(SphereProjection, "isp_k", None))
    PoincareBall.k, SphereProjection.k = _saved_optim["k_cached"]
    step = _hook_step(_rsgd_step)  # hooks run as on the unpatched optimizer
    step.hooked = True
    geoopt.optim.RiemannianSGD.step = step
    # zero_grad: torch's, with the profiler range opened only while a profiler records (see _zero_grad)
    for cls in (geoopt.optim.RiemannianSGD, geoopt.optim.RiemannianAdam):
        _saved_optim[("zero_grad", cls)] = cls.__dict__.get("zero_grad", _ABSENT)
        cls.zero_grad = _zero_grad


def unpatch_geoopt() -> None:
    """Restore geoopt exactly as it was before patch_geoopt() (the original objects), except that
    ``RiemannianSGD.step`` comes back wrapped in torch's step-hook runner when no RiemannianSGD had been built before
    the patch (as torch wraps it when the first one is built), so that optimizers built under the patch keep
    running their step hooks."""
    gm = _geoopt_math()
    for name, fn in _saved.items():
        setattr(gm, name, fn)
    _saved.clear()
    if "k_cached" in _saved_optim:
        from geoopt.manifolds.stereographic.manifold import PoincareBall, SphereProjection

        PoincareBall.k, SphereProjection.k = _saved_optim["k_props"]
    if "RiemannianSGD.step" in _saved_optim:
        import geoopt.optim

        step = _saved_optim.pop("RiemannianSGD.step")
        if not getattr(step, "hooked", False):
            # no RiemannianSGD existed before the patch: torch wraps the class's step in its hook runner when the
            # first instance is built, and an instance built under the patch saw the patched (hooked) step, so
            # the bare step would run without its hooks.  Put it back as torch's first constructor would wrap it.
            step = torch.optim.Optimizer.profile_hook_step(step)
            step.hooked = True
        geoopt.optim.RiemannianSGD.step = step
        for key, fn in _saved_optim.items():
            if isinstance(key, tuple) and key[0] == "zero_grad":
                if fn is _ABSENT:
                    if "zero_grad" in key[1].__dict__:
                        del key[1].zero_grad
                else:
                    key[1].zero_grad = fn
        _saved_optim.clear()


# patch function -> its open blocks, oldest first: [whether the patch was on when the block opened] per block
_scopes: dict = {}
_scope_lock = threading.Lock()


@contextlib.contextmanager
def _patch_scope(is_on, patch, unpatch):
    """patch() inside the block; unpatch() after it unless is_on() was already true before it.  The patch is
    process-wide: blocks opened and closed interleaved in several threads keep it until the last of them closes (a
    block that closes while a newer one is open hands its "was it on before" to that one, as nesting does)."""
    with _scope_lock:
        entry = [is_on()]
        patch()
        open_ = _scopes.setdefault(patch, [])
        open_.append(entry)
    try:
        yield
    finally:
        with _scope_lock:
            i = next(j for j, e in enumerate(open_) if e is entry)
            del open_[i]
            if i < len(open_):  # a newer block (another thread's) is still open: it unpatches if this would have
                open_[i][0] = entry[0]
            elif not entry[0]:
                unpatch()


def patched_geoopt():
    """Context manager: geoopt runs on geoops kernels inside the block."""
    return _patch_scope(is_patched, patch_geoopt, unpatch_geoopt)


# ---------------------------------------------------------------- RiemannianSGD: one fused update per parameter
def _fused_kind(p, default_manifold):
    """('stereo' | 'euclid', manifold) when the fused update reproduces geoopt's for parameter p, else None."""
    geoopt, Stereographic = _saved_optim["classes"]
    man = p.manifold if isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)) else default_manifold
    cls = type(man)
    if isinstance(man, Stereographic):
        ok = cls.retr is Stereographic.retr and cls.egrad2rgrad is Stereographic.egrad2rgrad
        return ("stereo", man) if ok and p.dim() >= 1 else None  # k's size: checked by the caller
    if cls is geoopt.Euclidean:
        return ("euclid", man)
    return None


def _hook_step(func):
    """torch.optim.Optimizer.profile_hook_step(func) (global and per-optimizer step pre/post hooks, the
    profiler range "Optimizer.step#<class>.step"), with the range opened only while a profiler records:
    outside a profile it costs more than the fused step it wraps (~10 us per call)."""
    import functools
    from itertools import chain

    from torch.optim import optimizer as _optim

    profiling = torch._C._autograd._profiler_enabled

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        self = args[0]
        if type(self).step is not wrapper:
            # called by a subclass's own step (super().step()), which torch has wrapped in its hook runner: the
            # hooks run there, once (as when geoopt's step is reached the same way unpatched)
            return func(*args, **kwargs)
        if profiling():
            with torch.autograd.profiler.record_function(f"Optimizer.step#{self.__class__.__name__}.step"):
                return _hooked_call(func, self, args, kwargs)
        return _hooked_call(func, self, args, kwargs)

    def _hooked_call(func, self, args, kwargs):
        # (the hook loops only when there are hooks: two chained iterators per step cost more than the checks)
        if _optim._global_optimizer_pre_hooks or self._optimizer_step_pre_hooks:
            for pre_hook in chain(_optim._global_optimizer_pre_hooks.values(),
                                  self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(
                            f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}.")
        out = func(*args, **kwargs)
        self._optimizer_step_code()
        if self._optimizer_step_post_hooks or _optim._global_optimizer_post_hooks:
            for post_hook in chain(self._optimizer_step_post_hooks.values(),
                                   _optim._global_optimizer_post_hooks.values()):
                post_hook(self, args, kwargs)
        return out

    return wrapper


def _zero_grad(self, set_to_none: bool = True) -> None:
    """torch.optim.Optimizer.zero_grad under patch_geoopt(): the same, except that the profiler range
    "Optimizer.zero_grad#<class>.zero_grad" is opened only while a profiler records (outside a profile
    it costs more than clearing one embedding's gradient)."""
    if set_to_none and not torch._C._autograd._profiler_enabled():
        if not hasattr(self, "_zero_grad_profile_name"):
            self._patch_step_function()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = None
        return
    torch.optim.Optimizer.zero_grad(self, set_to_none)


_CPU = torch.device("cpu")
# manifold -> (source, version, ptr, k, float k, the source's value on the CPU)
_K_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_k(cls, src_name: str, via) -> property:
    """cls.k (PoincareBall: -softplus(isp_c), SphereProjection: softplus(isp_k); two dispatches, ~3 us per read) under
    patch_geoopt(): _step_k's cached tensor (the same value, computed once per value of the source parameter) when no
    graph is wanted through it (the parameter does not require grad, or grad mode is off) and the class computes k
    from that parameter as geoopt does (a subclass that overrides ``k`` or ``via``, PoincareBall's ``c``, reads its
    own); else geoopt's getter.  The result is shared between reads: an in-place change of it is not supported (it is
    not in geoopt either, where each read is a fresh tensor that no one keeps)."""
    orig = cls.__dict__["k"]
    fget = orig.fget
    via_prop = cls.__dict__[via] if via else None

    def k(self):
        src = self._parameters.get(src_name)
        if (src is None or (src.requires_grad and torch.is_grad_enabled())
                or (via_prop is not None and getattr(type(self), via) is not via_prop)):
            return fget(self)
        e = _K_CACHE.get(self)
        if e is not None and e[0] is src and e[1] == src._version and e[2] == src.data_ptr() and (
                e[5] is None or e[5] == src.item()):
            return e[3]
        return _step_k(self)[0]

    return property(k, doc=orig.__doc__)


def _step_k(man):
    """(k, float(k)) of a fused parameter's manifold for the step, read once per value of the tensor k comes
    from: ``PoincareBall.k`` is ``-softplus(isp_c)`` (``SphereProjection``: ``softplus(isp_k)``), two dispatches
    per read, and ``float(k)`` is one more.  The cache entry holds that source tensor with its version counter,
    data pointer and, on the CPU, its value (an in-place change, a ``.data`` swap or a change through ``.data``
    reads k again; off the CPU a change through ``.data`` is not seen: change it under ``torch.no_grad()``); a
    manifold class with another ``k`` reads it every step, as geoopt does."""
    pb_k, sp_k = _saved_optim["k_props"]
    pb_kc, sp_kc = _saved_optim["k_cached"]
    kp = getattr(type(man), "k", None)  # the class's property; None for Stereographic (k: a registered Parameter)
    get = None  # geoopt's getter (the class's k may be _cached_k's, which reads this cache)
    if kp is pb_k or kp is pb_kc:
        src, get = man.isp_c, pb_k.fget
    elif kp is sp_k or kp is sp_kc:
        src, get = man.isp_k, sp_k.fget
    elif kp is None and "k" in man._parameters:
        src = man._parameters["k"]
    else:
        k = man.k
        return k, (float(k.detach()) if k.numel() == 1 else None)
    e = _K_CACHE.get(man)
    ver, ptr = src._version, src.data_ptr()
    # (on the CPU also the source's value, ~0.2 us: a change through ``.data``, e.g. ``ball.isp_c.data.clamp_(...)``,
    # counts no version, and geoopt reads k on every call; off the CPU a read would be a device sync)
    val = src.item() if src.numel() == 1 and src.device.type == "cpu" else None
    if e is not None and e[0] is src and e[1] == ver and e[2] == ptr and (e[5] is None or e[5] == val):
        return e[3], e[4]
    # (a normal tensor even when read first under torch.inference_mode(): later training steps use it; no_grad
    # inside it, as torch.inference_mode(False) turns grad mode back on: a learnable ball's k would carry softplus's
    # graph and come back requiring grad from reads under torch.no_grad())
    with torch.inference_mode(False), torch.no_grad():
        k = get(man) if get is not None else man.k
    kf = float(k.detach()) if k.numel() == 1 else None  # (a learnable Stereographic k is the Parameter itself)
    _K_CACHE[man] = (src, ver, ptr, k, kf, val)
    return k, kf


def _direct_rsgd_step(p, grad, k, kf, lr) -> bool:
    """riemannian_sgd_step_(p, grad, lr=lr, k=k) as one direct kernel call when p is the common case (a
    contiguous float32/float64 CPU matrix of rows, k on the CPU, the C++ backend); False (nothing done)
    otherwise.  Skips the argument checks that geoopt's parameter and its gradient already satisfy."""
    dt = p.dtype
    if (p.dim() != 2 or not p.is_cpu or dt not in _RSGD_DTYPES or grad.dtype != dt or grad.shape != p.shape
            or not p.is_contiguous() or not grad.is_contiguous() or not p.numel() or not k.is_cpu
            or _backend.resolve(_CPU, _stereo_ops.FAMILY) != "cpp"):
        return False
    _backend.compiled().stereo_rsgd_step_cpu(p, grad, kf, float(lr), _EPS[dt])
    torch.autograd.graph.increment_version(p)  # (written through the data pointer: autograd's version, as p.copy_)
    return True


def _rsgd_step(self, closure=None):
    """geoopt.optim.RiemannianSGD.step under patch_geoopt(): fused per-parameter updates where they apply.
    The closure runs first, as in geoopt: the plan reads the gradients it leaves (a closure that creates or
    clears gradients is seen)."""
    loss = closure() if closure is not None else None
    plan = []
    for group in self.param_groups:
        if group["momentum"] != 0:
            _saved_optim["plain"](self)
            return loss
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                _saved_optim["plain"](self)  # geoopt's own error
                return loss
            kind = _fused_kind(p, self._default_manifold)
            if kind is None:
                _saved_optim["plain"](self)
                return loss
            k = kf = None
            if kind[0] == "stereo":
                k, kf = _step_k(kind[1])  # the step's one read of k
                if kf is None:  # k of more than one element
                    _saved_optim["plain"](self)
                    return loss
            plan.append((group, p, kind[0], kind[1], k, kf))
    was = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)  # torch.no_grad() without its context-manager calls
    try:
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        moved = False  # a Euclidean parameter (a learnable curvature among them) updated earlier in this step
        state = self.state
        for group, p, kind, man, k, kf in plan:
            state[p]  # (geoopt's step leaves an empty state per updated parameter: the same state_dict)
            grad = p.grad
            if group["weight_decay"]:
                grad.add_(p, alpha=group["weight_decay"])
            if kind == "stereo":
                if moved:  # geoopt updates in order: a point after its curvature retracts with the updated k
                    k, kf = _step_k(man)
                if not _direct_rsgd_step(p, grad, k, kf, group["lr"]):
                    _gs().riemannian_sgd_step_(p, grad, lr=group["lr"], k=k)
            else:
                p.add_(grad, alpha=-group["lr"])
                moved = True
        for group in self.param_groups:
            if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                self.stabilize_group(group)
    finally:
        torch._C._set_grad_enabled(was)
    return loss


def _gs():
    import geoops.stereographic as gs

    return gs


# ---------------------------------------------------------------- HypLL (Poincaré ResNet's layers)
# hypll.manifolds.poincare_ball.manifold imports these functions by name and PoincareBall's methods call them at
# call time; patch_hypll() replaces them there (same signatures, c positional as in HypLL).
HYPLL_PATCHED_NAMES = ("poincare_fully_connected", "poincare_hyperplane_dists", "expmap0", "logmap0", "expmap",
                       "logmap", "mobius_add", "project", "transp", "dist")

_hypll_saved: dict = {}


def _hypll_manifold_module():
    try:
        import hypll.manifolds.poincare_ball.manifold as hm
    except ImportError as e:
        raise ImportError(
            "geoops.compat.patch_hypll() needs HypLL, which is not installed (pip install hypll); "
            f"geoops itself does not need it ({e})"
        ) from e
    return hm


def _neg_dim(dim, *tensors):
    """HypLL counts a non-negative dim in the broadcast frame of its inputs: make it negative (frame-free)."""
    return dim - max(t.dim() for t in tensors) if dim >= 0 else dim


def _hypll_replacements():
    import geoops.poincare as gp

    def poincare_fully_connected(x, z, bias, c, dim=-1):
        # HypLL's function does not project (PoincareBall.fully_connected projects after it): eps=0 keeps only
        # the mathematically inactive projection onto the ball's own radius (rounding at the boundary)
        return gp.poincare_fc(x, z, bias, c=c, dim=dim, eps=0.0)

    def poincare_hyperplane_dists(x, z, r, c, dim=-1):
        return gp.hyperplane_dists(x, z, r, c=c, dim=dim)

    def expmap0(v, c, dim=-1):
        return gp.expmap0(v, c=c, dim=dim)

    def logmap0(y, c, dim=-1):
        return gp.logmap0(y, c=c, dim=dim)

    def expmap(x, v, c, dim=-1):
        return gp.expmap(x, v, c=c, dim=_neg_dim(dim, x, v))

    def logmap(x, y, c, dim=-1):
        return gp.logmap(x, y, c=c, dim=_neg_dim(dim, x, y))

    def mobius_add(x, y, c, dim=-1):
        return gp.mobius_add(x, y, c=c, dim=_neg_dim(dim, x, y))

    def project(x, c, dim=-1, eps=-1.0):
        return gp.project(x, c=c, dim=dim, eps=None if eps < 0 else eps)

    def transp(x, y, v, c, dim=-1):
        return gp.transp(x, y, v, c=c, dim=_neg_dim(dim, x, y, v))

    def dist(x, y, c, dim=-1, keepdim=False):
        return gp.dist(x, y, c=c, dim=_neg_dim(dim, x, y), keepdim=keepdim)

    return {k: v for k, v in locals().items() if k in HYPLL_PATCHED_NAMES}


def _fully_connected_projected(self, x, z, bias):
    """PoincareBall.fully_connected on geoops: the fused layer already projects (HypLL projects again)."""
    from hypll.tensors import ManifoldTensor

    if z.man_dim != 0:
        raise ValueError(f"Expected the manifold dimension of the hyperplane orientations to be 0, but got "
                         f"{z.man_dim} instead")
    import geoops.poincare as gp

    y = gp.poincare_fc(x.tensor, z.tensor, bias, c=self.c(), dim=x.man_dim)
    return ManifoldTensor(data=y, manifold=self, man_dim=x.man_dim)


def is_hypll_patched() -> bool:
    """Whether patch_hypll() is in effect."""
    return bool(_hypll_saved)


def patch_hypll() -> None:
    """Make HypLL's PoincareBall (and so hypll.nn's layers: HLinear, HConvolution2d, HBatchNorm(2d), HReLU,
    pooling, flatten, ...) run on geoops kernels.  Idempotent; ``unpatch_hypll()`` restores HypLL exactly."""
    hm = _hypll_manifold_module()
    if _hypll_saved:
        return
    for name, fn in _hypll_replacements().items():
        _hypll_saved[name] = getattr(hm, name)
        setattr(hm, name, fn)
    _hypll_saved["PoincareBall.fully_connected"] = hm.PoincareBall.fully_connected
    hm.PoincareBall.fully_connected = _fully_connected_projected


def unpatch_hypll() -> None:
    """Restore HypLL exactly as it was before patch_hypll() (the original objects, not copies)."""
    hm = _hypll_manifold_module()
    for name, fn in _hypll_saved.items():
        if name == "PoincareBall.fully_connected":
            hm.PoincareBall.fully_connected = fn
        else:
            setattr(hm, name, fn)
    _hypll_saved.clear()


def patched_hypll():
    """Context manager: HypLL runs on geoops kernels inside the block."""
    return _patch_scope(is_hypll_patched, patch_hypll, unpatch_hypll)
