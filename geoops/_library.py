"""Family-neutral helpers for registering and calling geoops kernels.

Every family follows one path::

    geoops.<family>.<op>  ->  <Op>Fn.apply  ->  torch.ops.geoops.<op>_fwd   ->  the backend's kernel
                                              (or the kernel directly on the eager fast path)
    backward              ->  torch.ops.geoops.<op>_bwd  ->  the backend's backward kernel

* :func:`define_op` registers one custom op with its fake (shape) implementation, so that
  ``torch.compile(fullgraph=True)``, ``torch.export`` and ``FakeTensorMode`` see one opaque op;
  :func:`define_pair` registers an op's ``_fwd`` / ``_bwd`` pair and returns their callers;
  :func:`op_autograd` gives a ``_fwd`` op its own autograd formula (its Function's ``op_context`` and ``backward``),
  which differentiates the op where the Function is not kept (a torch.export program, a torch.jit.trace replay).
* :func:`kernel_set` returns the namespace of kernels that the backend switch picks for a device:
  the family's ``cpp``/``cuda``/``reference`` classes, or the module ``geoops.kernels.<family>``
  for Triton.  All of them expose the same function names.  :func:`family_kernels` also registers
  which compiled backends the family has, and returns its ``kernels(device)``.
* :func:`caller` builds the function a Function's forward/backward calls: the kernel directly
  when that does exactly what dispatching the custom op would (:func:`direct_call_ok`), else the op.
* Backward ops take an ``int mask`` (bit i: input i's gradient is wanted; :func:`grad_mask` makes it from
  ``ctx.needs_input_grad``) and return 0-element tensors for the rest: :func:`masked_empty` (fake
  implementations) and :func:`masked_grads` (reference backends, whose backward differentiates the
  eager reference inside :func:`reference_autograd`; :func:`masked_autograd` differentiates only the
  inputs the mask asks for).
* :func:`fixed_sum` is ``torch.sum`` with the same bits for any ``torch.set_num_threads`` (backwards summing a
  per-row gradient to one shared parameter use it); :func:`fixed_expand` broadcasts a one-element tensor so that
  autograd's sum back to it has that property (compositions of torch ops with a shared parameter use it).
* :func:`check_tensors` raises the common bad-input errors (not a tensor, dtype, device) naming the
  argument; :func:`check_finite` the GEOOPS_CHECK one.
* :func:`autograd_wanted` decides whether a public function needs its Function (a gradient is wanted or
  forward-mode AD may carry tangents), and :func:`first_order_only` makes a second derivative through a
  once-differentiable backward raise instead of silently missing the op's terms.
* :func:`func_twin` makes a Function's torch.func variant (setup_context, generated vmap rule; the decorator
  :func:`with_func_twin` makes it at class definition, for :func:`apply`), and :func:`loop_vmap` (registered by
  :func:`define_op` for every op) lets vmap run any custom op.  Under torch.compile inside a transform,
  :func:`compiled_transform_fallback` graph-breaks where tracing the Function would be wrong.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from . import _backend

__all__ = ["direct_call_ok", "kernel_set", "family_kernels", "define_op", "define_pair", "op_autograd", "caller", "grad_mask", "check_tensors", "masked_empty", "masked_grads", "masked_autograd", "reference_autograd", "functorch_active",
           "forward_ad_active", "autograd_wanted", "first_order_only", "loop_vmap", "fold_vmap", "func_twin", "with_func_twin", "compiled_transform_args", "with_compiled_apply", "apply",
           "concrete", "check_finite", "no_autocast", "torch_kernels", "fixed_sum", "fixed_expand"]

_len_fn_modes = getattr(torch._C, "_len_torch_function_stack", None)
_len_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_HAVE_MODE_CHECKS = None not in (_len_fn_modes, _len_dispatch_modes, _functorch_active)
_jit_tracing = getattr(torch._C, "_get_tracing_state", None) or (lambda: None)  # (torch.jit.trace's state, ~60 ns)

_PLAIN = (torch.Tensor, torch.nn.Parameter)  # Parameter disables __torch_function__: a plain tensor here


# torch's CPU reductions (at::internal::GRAIN_SIZE): a reduction to ONE value over this many elements or more runs as
# one chunk per OpenMP thread whose partials are then added, so its last bits depend on torch.get_num_threads();
# a reduction with several outputs gives each output to one thread (the same bits for any thread count).
_GRAIN = 32768
_BLOCK = _GRAIN // 2  # (so that every blocked sum has at least two outputs)


def fixed_sum(t: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``t.sum(dim, keepdim)`` with the same bits for any thread count (the house rule for every backward).

    Only a CPU reduction to a single value over 32768 elements or more changes route: the elements in fixed
    blocks of 16384 (one output per block: each block summed by one thread), then the blocks' partials (fewer than
    32768: a serial sum; more: the same again).  Everything else is ``t.sum`` itself (same bits as before)."""
    if dim is None:
        out = t.sum() if t.numel() < _GRAIN or t.device.type != "cpu" else _blocked_sum(t.reshape(-1))
        return out.reshape((1,) * t.dim()) if keepdim else out
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if t.dim() == 0:  # (torch sums a 0-dim tensor over dim 0 / -1: itself)
        return t.sum(dims, keepdim=keepdim)
    n_red = 1
    for d in dims:
        n_red *= t.shape[d]
    if t.device.type != "cpu" or n_red < _GRAIN or t.numel() != n_red:
        return t.sum(dims, keepdim=keepdim)
    out = _blocked_sum(t.reshape(-1))
    if keepdim:
        return out.reshape((1,) * t.dim())
    nd = t.dim()
    return out.reshape(tuple(s for i, s in enumerate(t.shape) if i not in {d % nd for d in dims}))


def _blocked_sum(flat: torch.Tensor) -> torch.Tensor:
    n = flat.shape[0]
    if n < _GRAIN:
        return flat.sum()
    nb = n // _BLOCK
    parts = flat[:nb * _BLOCK].reshape(nb, _BLOCK).sum(1)
    if nb * _BLOCK != n:
        parts = torch.cat([parts, flat[nb * _BLOCK:].sum().reshape(1)])
    return _blocked_sum(parts)


def fixed_expand(t: torch.Tensor, shape) -> torch.Tensor:
    """A one-element ``t`` that requires grad, broadcast to ``shape`` (32768 elements or more, CPU) so that
    autograd's sum of the gradient back to ``t`` has the same bits for any thread count; ``t`` itself otherwise.

    A composition ``f(x, t)`` of torch ops gets t's gradient from autograd's broadcast sum (``torch.sum`` to one
    value: one chunk per thread).  Here ``t`` goes through two expands, to [nb] and then to fixed blocks [nb, 16384],
    whose sums back are a per-block reduction (one thread per block) and a serial sum of nb < 32768 partials.  The
    values are ``t``'s (the same forward bits); the cost is one copy of ``shape``'s size."""
    shape = tuple(shape)
    n = 1
    for s_ in shape:
        n *= s_
    if t.numel() != 1 or t.dim() > len(shape) or n < _GRAIN or t.device.type != "cpu" or not t.requires_grad:
        return t
    nb = -(-n // _BLOCK)
    e = t.reshape(1).expand(nb).reshape(nb, 1).expand(nb, _BLOCK).reshape(-1)
    return e[:n].reshape(shape)


def direct_call_ok(*tensors) -> bool:
    """Whether calling a backend's kernels directly does exactly what dispatching the custom op would.

    True for plain tensors in eager mode. False while torch.compile, export or torch.jit.trace traces (a direct
    call is invisible to the tracer: the trace kept only the output's allocation), while a forward_ad dual level
    is open (a direct call drops tangents), under a torch-function
    or dispatch mode (FakeTensorMode, make_fx, ...), inside a functorch transform, and for tensor subclasses:
    those go through torch.ops.geoops.*, whose fake implementations and dispatch they need (nn.Parameter
    counts as plain).  The custom op's Python dispatch costs tens of microseconds per call, which dominates
    on small inputs.  Non-tensor arguments (None, numbers) are ignored.
    """
    if torch.compiler.is_compiling() or not _HAVE_MODE_CHECKS:
        return False
    if _len_fn_modes() or _len_dispatch_modes() or _functorch_active():
        return False
    if _jit_tracing() is not None:  # torch.jit.trace records dispatched ops only: a kernel called directly would
        return False  # leave its output out of the trace (a replay returned torch.empty's uninitialised memory)
    if torch.autograd.forward_ad._current_level >= 0:  # a forward_ad dual level is open: a kernel called directly
        return False  # would drop the inputs' tangents (a silent zero derivative); dispatched, they reach the jvp or an error
    for t in tensors:
        if isinstance(t, torch.Tensor) and type(t) not in _PLAIN:
            return False
    return True


def kernel_set(family: str, device: torch.device, *, cpp=None, cuda=None, reference=None, fallback=None):
    """The kernels that the current backend setting runs for `family` on `device`.

    `cpp`, `cuda` and `reference` are the family's kernel namespaces (classes or modules with the same
    function names); Triton's is the module ``geoops.kernels.<family>``.  Pass every one the family has: under
    ``auto``, a backend the extension has but the family does not provide (``None``: e.g. the CUDA C++ kernels
    of another family on a GPU without Triton) runs the family's `reference` instead; a forced backend the family
    lacks raises RuntimeError.  `fallback`: what ``auto`` runs instead of `reference` where the family has no compiled
    kernels (faster torch compositions than the oracle; ``reference`` forced still runs `reference`).
    """
    name = _backend.resolve(device, family)
    if name == "triton":
        return _backend.triton_kernels(family)
    found = {"cpp": cpp, "cuda": cuda, "reference": reference}[name]
    auto = _backend.get_backend() == "auto"
    if found is None and auto and reference is not None:
        # auto picked a backend the extension has for some family but this family lacks (e.g. CUDA C++ kernels of
        # another family, Triton missing): its reference runs, as on a device without compiled kernels
        name, found = "reference", reference
    if name == "reference" and auto and fallback is not None:
        found = fallback
    if found is None:
        raise RuntimeError(f"geoops.{family}: no {name!r} kernels for tensors on {device.type}")
    return torch_kernels(found) if name == "reference" else found


def family_kernels(family: str, *, cpp=None, cuda=None, reference=None, fallback=None) -> Callable:
    """Register the compiled backends `family` has kernels for (the namespaces given: ``cpp``, ``cuda``) with the
    backend switch, and return its ``kernels(device)`` (:func:`kernel_set` with these namespaces and `fallback`).

    A family that registers so is known to lack the others: under ``auto`` they are passed by (a family with only
    a reference runs it on every device, and ``backend_info``, the parity run and the bench say so); forcing one
    raises."""
    _backend.register_family(family, [n for n, ns in (("cpp", cpp), ("cuda", cuda)) if ns is not None])

    def kernels(device: torch.device):
        return kernel_set(family, device, cpp=cpp, cuda=cuda, reference=reference, fallback=fallback)

    kernels.__doc__ = f"The kernel set of geoops.{family} that the current backend setting picks for `device`."
    return kernels


class _NoAutocastKernels:
    """A kernel namespace whose functions run with torch.autocast off (see :func:`torch_kernels`)."""

    def __init__(self, ns):
        self._ns = ns

    def __getattr__(self, name):
        f = getattr(self._ns, name)
        return no_autocast(f) if callable(f) else f


def torch_kernels(ns):
    """`ns`, a namespace of kernels written as torch compositions (a reference backend; a Triton kernel module,
    whose launchers and fallback routes use torch GEMMs and FFTs), with its functions run
    under torch.autocast off while autocast is on (:func:`no_autocast`); `ns` itself otherwise.  The eager fast
    path calls them directly, past the custom op's implementation."""
    return _NoAutocastKernels(ns) if _any_autocast() else ns


# ---------------------------------------------------------------- torch.autocast
# geoops' ops are not on autocast's cast lists: under torch.autocast they compute in their inputs' dtypes, as the
# kernels do.  A torch composition (a reference backend's kernel, a path under vmap or with the fused layers off)
# would otherwise run its matmul / conv2d in the autocast dtype: a bfloat16 result, or bfloat16 accuracy in a
# float32 one, or a dtype mismatch at the next kernel.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: False)
_AUTOCAST_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def _autocast_disabled():
    with contextlib.ExitStack() as stack:
        for dev in _AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(dev):
                stack.enter_context(torch.autocast(dev, enabled=False))
        yield


def no_autocast(fn: Callable) -> Callable:
    """`fn` run with torch.autocast off (a public function, or a custom op's implementation, that composes
    torch ops on autocast's cast lists).  Outside autocast `fn` itself runs."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():  # (what torch.compile traces: no private call, no ExitStack)
            if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
                with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        if _any_autocast():
            with _autocast_disabled():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


def define_pair(qualname: str, fwd_schema: str, fwd: Callable, fwd_fake: Callable, bwd_schema: str, bwd: Callable,
                bwd_fake: Callable):
    """Register the forward and backward ops ``<qualname>_fwd`` / ``<qualname>_bwd`` (:func:`define_op`) and return
    their callers ``(FWD, BWD)`` (:func:`caller`: the implementation itself on the eager fast path, else the op).

    `fwd` / `bwd` are the ops' implementations (they pick the backend's kernel, e.g. through :func:`kernel_set`);
    by convention the backward's schema ends with ``int mask`` (see :func:`masked_empty`) where its kernels can skip
    unwanted gradients (a backward that always forms them all, as triple attention's, takes none)."""
    fwd_op = define_op(qualname + "_fwd", fwd_schema, fwd, fwd_fake)
    bwd_op = define_op(qualname + "_bwd", bwd_schema, bwd, bwd_fake)
    return caller(fwd_op, fwd), caller(bwd_op, bwd)


def define_op(qualname: str, schema: str, impl: Callable, fake: Callable):
    """Register the custom op `qualname` ("geoops::<name>") with `schema`, `impl` and the fake `fake`.

    Returns the default OpOverload (what torch.compile traces), e.g. ``torch.ops.geoops.<name>.default``.
    `impl` runs with torch.autocast off (:func:`no_autocast`).
    """
    op = torch.library.custom_op(qualname, no_autocast(impl), mutates_args=(), schema=schema)
    op.register_fake(fake)
    if qualname.endswith("_fwd"):
        op.register_autograd(_no_formula_backward(qualname), setup_context=_no_context)
        FORWARD_OPS.append(qualname)
    loop_vmap(qualname)
    return _overload(qualname)


def op_autograd(qualname: str, fn=None, *, setup_context: Optional[Callable] = None,
                backward: Optional[Callable] = None, outputs: Optional[int] = None) -> None:
    """Give the forward op `qualname` ("geoops::<op>_fwd") its autograd formula: what differentiates it where it
    runs without its autograd.Function, as in a torch.export program (``ExportedProgram.module()``, a loaded .pt2,
    ``torch.compile`` of either), which keeps the op but not the Function.

    `fn`: the op's autograd.Function, whose forward is one call of the op on the Function's own arguments and
    which keeps what its backward needs in a static ``op_context(ctx, inputs, output)`` (torch's ``setup_context``
    form, under another name: a Function in the eager ``forward(ctx, ...)`` style may not define
    ``setup_context``; its forward does the same work, or calls it): the op is differentiated by ``fn.op_context``
    and ``fn.backward``, the very code of the eager path (its ``<op>_bwd`` call, the ``int mask`` from
    ``ctx.needs_input_grad``, a ``first_order_only`` guard), so the gradients are the eager ones.  Or
    `setup_context` / `backward` given directly (an adapter, where the Function does more than call the op).
    Inside a Function's forward the op runs without grad (nothing is recorded twice).  `outputs`: how many of the
    op's outputs the Function returns (its backward's gradients; default all): the rest are intermediates its
    backward reads, which the Function does not return: non-differentiable outputs of the op (a loss through
    one raises torch's no-gradient error instead of getting a silent zero gradient).
    """
    setup_context = setup_context or fn.op_context
    backward = backward or fn.backward
    if outputs is not None:
        # the op's intermediates past its Function's outputs: non-differentiable outputs of the op (their gradients
        # are not passed to backward; a loss through one, the op called directly, got a silent zero gradient)
        context = setup_context

        def setup_context(ctx, inputs, output):
            context(ctx, inputs, output)
            ctx.mark_non_differentiable(*(getattr(ctx, "non_differentiable", None) or ()), *output[outputs:])
    n_args = len(_overload(qualname)._schema.arguments)

    def op_backward(ctx, *grads):
        res = backward(ctx, *grads[:outputs])
        res = res if isinstance(res, tuple) else (res,)
        # (the op's trailing arguments that its Function computes, as a flag from needs_input_grad: no gradient)
        return res + (None,) * (n_args - len(res))

    torch.library.register_autograd(qualname, op_backward, setup_context=setup_context)
    OP_AUTOGRAD.add(qualname)


OP_AUTOGRAD: set = set()  # the forward ops given a formula by op_autograd (the others raise when differentiated)
FORWARD_OPS: list = []  # every forward op define_op registered ("geoops::<op>_fwd")


def _no_context(ctx, inputs, output) -> None:
    pass


def _no_formula_backward(qualname: str) -> Callable:
    """The autograd of a forward op without a formula of its own (:func:`op_autograd` gives one to the public ops'
    forward ops): a clear error.  geoops differentiates in the autograd.Function around the op, which a graph of
    the bare op (torch.export's program, its .pt2 or AOTInductor package) does not keep; without this torch's error
    invited the user to register an autograd formula."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{qualname}: this op cannot be differentiated on its own (outside the autograd.Function of its "
            f"public function, as in a torch.export program): run the exported program under torch.no_grad() "
            f"or torch.inference_mode(), or train the original model")
    return backward


def _overload(qualname: str):
    """torch.ops.<ns>.<name>.default for "ns::name"."""
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


def _per_tensor(a, d):
    """(tensor-or-value, in_dim) pairs of one vmap argument: a list argument's elements with their dims."""
    if isinstance(a, (list, tuple)):
        return list(zip(a, d if isinstance(d, (list, tuple)) else [d] * len(a)))
    return [(a, d)]


def caller(op, direct: Callable, tensors: Optional[Callable] = None) -> Callable:
    """A function with the op's arguments that runs `direct(*args)` on the eager fast path, else `op(*args)`.

    `direct` calls the kernel of the current backend (via :func:`kernel_set`); it must return exactly what
    the op returns.  `tensors(*args)` may pick the arguments the fast-path predicate looks at (default all).
    """
    if tensors is None:
        def call(*args):
            if direct_call_ok(*args):
                return direct(*args)
            return op(*args)
    else:
        def call(*args):
            if direct_call_ok(*tensors(*args)):
                return direct(*args)
            return op(*args)
    return call


# ---------------------------------------------------------------- backward ops: the `mask` convention
# A backward op `geoops::<op>_bwd(..., int mask)` returns one tensor per differentiable input; bit i of
# `mask` says whether input i's gradient is wanted.  An unwanted (or absent, for an optional input)
# gradient is a 0-element tensor, so that the op's schema stays a fixed tuple of Tensors.

def grad_mask(needs_input_grad, n: Optional[int] = None) -> int:
    """The `mask` of a backward op from a Function's ``ctx.needs_input_grad`` (its first `n` entries, default all):
    bit i set where input i's gradient is wanted."""
    mask = 0
    for i, need in enumerate(needs_input_grad):  # (a plain loop: sum over a generator costs ~0.3 us more a call)
        if n is not None and i >= n:
            break
        if need:
            mask |= 1 << i
    return mask


def _unused(i: int, like, optional: int) -> torch.Tensor:
    """The 0-element output for an unwanted gradient: of input i itself, or, for one of the `optional`
    trailing inputs (those that may be None), of the first input."""
    t = like[i]
    return (like[0] if i >= len(like) - optional or t is None else t).new_empty(0)


def masked_empty(mask: int, *like: Optional[torch.Tensor], optional: int = 0):
    """Fake-implementation outputs of a backward op: ``like[i]``-shaped empties where bit i of `mask` is
    set and ``like[i]`` is given, else 0-element tensors (see :func:`masked_grads`)."""
    return tuple(t.new_empty(t.shape) if (mask >> i) & 1 and t is not None else _unused(i, like, optional)
                 for i, t in enumerate(like))


def masked_grads(mask: int, grads, like, *, optional: int = 0):
    """A backward op's outputs from autograd's `grads` of the inputs `like` (as a reference backend
    computes them): cast to each input's dtype and contiguous, zeros where autograd gave None, and a 0-element tensor
    where bit i of `mask` is clear or the input is None — of that input's dtype, or of the first input's
    for the last `optional` inputs (those that may be None, like a skip term D)."""
    grads = list(grads) + [None] * (len(like) - len(grads))  # autograd skips absent optional inputs
    out = []
    for i, (g, t) in enumerate(zip(grads, like)):
        if not (mask >> i) & 1 or t is None:
            out.append(_unused(i, like, optional))
        else:
            out.append(torch.zeros_like(t) if g is None else g.to(t.dtype).contiguous())
    return tuple(out)


def masked_autograd(outputs, grad_outputs, leaves, mask: int, like: torch.Tensor, *, dtypes=None):
    """A backward op's outputs, differentiating only what `mask` asks for (inside
    :func:`reference_autograd`): autograd's gradients of `outputs` to each leaf whose bit i of `mask` is set
    and that is not None (zeros where autograd finds no path), cast to ``dtypes[i]`` when given, contiguous;
    a 0-element tensor of `like`'s dtype for every other leaf (the op's fake implementation says the same)."""
    want = [t for i, t in enumerate(leaves) if (mask >> i) & 1 and t is not None]
    grads = iter(torch.autograd.grad(outputs, want, grad_outputs, allow_unused=True) if want else ())
    out = []
    for i, t in enumerate(leaves):
        if (mask >> i) & 1 and t is not None:
            g = next(grads)
            g = torch.zeros_like(t) if g is None else g
            out.append((g if dtypes is None else g.to(dtypes[i])).contiguous())
        else:
            out.append(like.new_empty(0))
    return tuple(out)


# autograd's keys, and the lazy conjugate/negative views' (complex autograd makes those; AOT's runtime runs
# an op below them too)
_AUTOGRAD_KEYS = tuple(k for k in (getattr(torch._C.DispatchKey, n, None)
                                    for n in ("AutogradFunctionality", "ADInplaceOrView", "Conjugate", "Negative"))
                       if k is not None)
_TLS_KEYS = hasattr(torch._C, "_dispatch_tls_set_dispatch_key_excluded") and len(_AUTOGRAD_KEYS) == 4


@contextlib.contextmanager
def reference_autograd():
    """Record autograd inside a custom op's implementation, for the reference backends' backward ops
    (they differentiate the eager reference with ``torch.autograd.grad``).

    An op dispatched through the dispatcher runs its implementation below the autograd layer (the
    autograd keys are excluded in thread-local state), where ``torch.enable_grad()`` alone records
    nothing: a direct call of ``torch.ops.geoops.<op>_bwd`` or ``opcheck`` would fail; AOT's runtime also
    excludes the conjugate/negative view keys, which complex autograd needs for correct values.  This
    re-includes those keys for the block (restoring them after) and enables grad; outside an op it is
    just ``enable_grad``."""
    prev = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in _AUTOGRAD_KEYS] if _TLS_KEYS else []
    try:
        for k, p in zip(_AUTOGRAD_KEYS, prev):
            if p:
                torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
        with torch.enable_grad():
            yield
    finally:
        for k, p in zip(_AUTOGRAD_KEYS, prev):
            if p:
                torch._C._dispatch_tls_set_dispatch_key_excluded(k, True)


# ---------------------------------------------------------------- data-dependent checks (family-neutral)
def _batched(t) -> bool:
    """Whether `t` is (or wraps) a vmap-batched tensor, whose values cannot be read by bool()."""
    F = torch._C._functorch
    while F.is_functorch_wrapped_tensor(t):
        if F.is_batchedtensor(t):
            return True
        t = F.get_unwrapped(t)
    return False


def values_under_vmap(t) -> torch.Tensor:
    """The plain tensor holding every value of a vmap-batched `t` (all the batch entries; the functorch wrappers
    peeled), for a check that reads them; `t` itself when it is not wrapped."""
    F = torch._C._functorch
    while F.is_functorch_wrapped_tensor(t):
        t = F.get_unwrapped(t)
    return t


def concrete(t) -> bool:
    """Whether `t` holds readable values: a plain tensor (or Parameter) off the meta device, not traced by
    torch.compile and not batched by vmap (fake, meta and batched tensors cannot be read; the gradient
    wrappers of torch.func.grad / jacrev can)."""
    return (type(t) in _PLAIN and t.device.type != "meta" and not torch.compiler.is_compiling()
            and not (functorch_active() and _batched(t)))


_FLOAT_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}


def check_tensors(prefix: str, named: dict, *, dtypes=tuple(_FLOAT_NAMES), same_dtype: bool = False,
                  optional=()) -> None:
    """The argument checks every op starts with, raised before any kernel runs and naming the argument:
    ``"{prefix}: {name} must be a torch.Tensor, got list"`` (TypeError), ``"... must be float16, bfloat16, float32 or
    float64, got torch.int64"`` (TypeError; `dtypes` sets the allowed ones, None: not checked here, where the family's
    own dtype checks say more), with `same_dtype` ``"{name} has dtype
    ... but {first} has ..."`` (TypeError), and ``"{name} is on meta but {first} is on cpu; all tensors must be on one
    device"`` (ValueError).  `named` maps argument names to tensors in the order of the signature; None entries
    (absent optional arguments) are skipped; the first tensor is the one the others are compared with.  `optional`:
    the names that may be None (their first error says ``"must be a torch.Tensor or None"``)."""
    first = None
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            what = "a torch.Tensor or None" if name in optional else "a torch.Tensor"
            raise TypeError(f"{prefix}: {name} must be {what}, got {type(t).__name__}")
        if dtypes is not None and t.dtype not in dtypes:
            allowed = [_FLOAT_NAMES.get(d, str(d).replace("torch.", "")) for d in dtypes]
            text = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
            raise TypeError(f"{prefix}: {name} must be {text}, got {t.dtype}")
        if first is None:
            first = (name, t)
            continue
        fname, f = first
        if same_dtype and t.dtype != f.dtype:
            raise TypeError(f"{prefix}: {name} has dtype {t.dtype} but {fname} has {f.dtype}; all inputs must share "
                            "one dtype")
        if (not t.is_cpu or not f.is_cpu) and t.device != f.device:  # (is_cpu: no torch.device objects per call)
            raise ValueError(f"{prefix}: {name} is on {t.device} but {fname} is on {f.device}; all tensors must be "
                             "on one device")


_NON_FINITE = "{name} has non-finite values (NaN or Inf) [GEOOPS_CHECK]"


def check_finite(prefix: str, named: dict, message: str = _NON_FINITE, *, readable_only: bool = True) -> None:
    """GEOOPS_CHECK=1 (``geoops.set_checks``): raise ValueError ``"{prefix}: {name} has non-finite values (NaN or Inf)
    [GEOOPS_CHECK]"`` for the first named tensor holding NaN or Inf, before any kernel runs.  Off by default (a pass
    over the data).  None entries are ignored.

    `message`: the text after ``"{prefix}: "``, a format string with ``{name}`` (default above).
    `readable_only` (default): skip tensors whose values cannot be read (see :func:`concrete`: traced by
    torch.compile, fake / meta, vmap-batched) and empty ones.  False reads every tensor, as the stereographic
    family's checks always have: under torch.compile that is a graph break, and the check still runs."""
    if not _backend.checks_enabled():
        return
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or (readable_only and not (t.numel() and concrete(t))):
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{prefix}: {message.format(name=name)}")


# ---------------------------------------------------------------- derivative contracts (family-neutral)
def forward_ad_active() -> bool:
    """Whether forward-mode AD may be running: ``torch.autograd.forward_ad`` dual tensors (a dual level is
    open) or a ``torch.func.jvp`` / ``jacfwd`` transform around this call."""
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    if not functorch_active():
        return False
    return _jvp_in_transform_stack()


@torch._dynamo.assume_constant_result  # (torch.compile: read once while tracing, where the stack is the traced one)
def _jvp_in_transform_stack() -> bool:
    """Whether a torch.func.jvp / jacfwd transform is among those running around this call."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())


@torch._dynamo.assume_constant_result  # (a trace-time constant, like _jvp_in_transform_stack)
def _compile_fallback_reason() -> str:
    """Why torch.compile (2.13) must not trace a geoops Function inside the running torch.func transforms ('' when it
    may): read while tracing.  Traced, a Function becomes dynamo's autograd.Function op, whose backward is not
    differentiable, neither by autograd outside the transforms (the gradient of a torch.func.grad result with respect
    to parameters silently lost the Function's terms: force training) nor by an outer transform level (jacrev(grad(f))
    was wrong; a once-differentiable op gave zeros instead of its error), which vmap cannot map
    (pytorch/pytorch#129845), and whose forward-mode tangents are dropped."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    keys, outer_grad = [], None
    for i in retrieve_all_functorch_interpreters():  # (outermost first)
        keys.append(i.key())
        if outer_grad is None and i.key() == TransformType.Grad:
            outer_grad = i.prev_grad_mode()
    if TransformType.Jvp in keys:
        return "forward-mode AD (torch.func.jvp, jacfwd) is not traced"
    if TransformType.Vmap in keys and TransformType.Grad in keys:
        return ("vmap with a gradient transform (per-sample gradients) is not traced (pytorch/pytorch#129845: vmap "
                "of a traced autograd.Function)")
    if keys.count(TransformType.Grad) > 1:
        return "a nested reverse-mode transform (jacrev(grad(f)), hessian) is not traced: its outer level would miss the op's terms"
    if torch.is_grad_enabled() if outer_grad is None else outer_grad:
        return ("with autograd recording outside the transform (grad mode on), it is not traced: the result's "
                "gradient would miss the op's terms; run the compiled function under torch.no_grad() when its "
                "results are not differentiated")
    return ""


def compiled_transform_fallback() -> None:
    """Under torch.compile inside a torch.func transform: a graph break, so that the call runs eagerly (correct, as
    outside torch.compile; with fullgraph=True dynamo raises naming the reason), where tracing the Function could
    give a wrong answer (:func:`_compile_fallback_reason`).  Traced without a break, under ``torch.no_grad()``
    outside: one ``grad`` / ``vjp`` / ``jacrev`` level, or ``vmap``."""
    if torch.compiler.is_compiling():
        reason = _compile_fallback_reason()
        if reason:
            torch._dynamo.graph_break("geoops under torch.compile inside a torch.func transform: " + reason
                                      + "; it runs eagerly")


def reverse_wanted(*tensors) -> bool:
    """Whether a call on these arguments records a graph to backpropagate: grad mode is on and some tensor among
    them requires grad (``None`` and numbers are ignored).  False while torch.jit.trace records: the forward ops
    are traced without their Function (see :func:`_traced_forward`), so that the trace can be saved."""
    return (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
            and _jit_tracing() is None)


def autograd_wanted(*tensors) -> bool:
    """Whether a public function must call its autograd.Function rather than the forward op alone: reverse
    mode wants a gradient of some argument, or forward mode may carry tangents.  A custom op called outside
    its Function drops forward tangents silently (a ``jvp`` of zeros); through the Function they reach its
    ``jvp`` or torch's error for a Function without one.  ``None`` and numbers are ignored."""
    if torch.compiler.is_compiling() and functorch_active():
        # torch.compile (2.13) traces a transform's input with requires_grad=False until an op has run on it: the
        # Function always (what it adds outside reverse / forward mode, under vmap, is nothing)
        return True
    return reverse_wanted(*tensors) or forward_ad_active()


class _NoSecondDerivative(torch.autograd.Function):
    """Identity (a copy) on a backward's results whose own backward raises.  Its extra inputs (the backward's
    incoming gradients and saved tensors that require grad) connect it to everything a second derivative could
    differentiate through the backward.  Written in the torch.func form, so that it also works inside
    transforms (``jacrev(jacrev(f))``, ``hessian``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(name, n, *ts):
        return tuple(t.clone() for t in ts[:n])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"geoops: second derivatives through {ctx.name} are not supported (its backward "
                           "kernels are once-differentiable)")


def _node_name(cls: str) -> str:
    """The op a backward node's class stands for in first_order_only's error: "MobiusAddFn" for an eager
    Function's "MobiusAddFnBackward", "geoops::mobius_add_fwd" for the node torch.library makes for an op's own
    formula (an exported program: "GeneratedBackwardFor_geoops_mobius_add_fwd_defaultBackward", see
    op_autograd)."""
    gen = "GeneratedBackwardFor_"
    if cls.startswith(gen):
        ns, _, rest = cls[len(gen):].partition("_")
        for tail in ("Backward", "_default"):
            rest = rest[:-len(tail)] if rest.endswith(tail) else rest
        return f"{ns}::{rest}"
    return cls.replace("Backward", "")


def first_order_only(backward):
    """Decorate a Function's ``backward`` whose kernels have no derivative of their own.

    Under ``create_graph=True`` its results carry a node that raises when they are differentiated again.
    torch's ``once_differentiable`` is not enough: its error node hangs off the incoming gradients only, so
    ``torch.autograd.grad(g, inputs)`` prunes it whenever those gradients do not depend on the inputs (e.g.
    the gradient of ``f(x).sum()``) and the second derivative silently misses the op's terms.  The same holds
    inside torch.func transforms (:func:`func_twin` uses it for every once-differentiable Function): nested
    ``jacrev`` / ``hessian`` raise.  Without ``create_graph`` the backward runs unchanged."""
    import functools

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if not torch.is_grad_enabled():
            return backward(ctx, *grads)
        with torch.no_grad():
            outs = backward(ctx, *grads)
        single = not isinstance(outs, tuple)
        outs = (outs,) if single else outs
        deps = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        idx = [i for i, o in enumerate(outs) if isinstance(o, torch.Tensor)]
        if deps and idx:
            name = _node_name(type(ctx).__name__)
            res = _NoSecondDerivative.apply(name, len(idx), *[outs[i] for i in idx], *deps)
            outs = list(outs)
            for i, r in zip(idx, res):
                outs[i] = r
            outs = tuple(outs)
        return outs[0] if single else outs

    wrapper.first_order_only = True
    return wrapper


# ---------------------------------------------------------------- torch.func support (family-neutral)
def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running around this call."""
    return bool(_functorch_active and _functorch_active())


def loop_vmap(qualname: str) -> None:
    """Register a vmap rule for the custom op `qualname` that calls the op once per mapped index and stacks
    the results along dim 0.

    Correct for any schema (``Tensor[]`` / ``Tensor?`` arguments, tuple outputs), which torch's generated
    fallback is not; :func:`define_op` registers it for every op.  A family with a cheaper rule (folding the
    mapped dim into the kernel's rows, as geoops._ops.stereographic does) registers its own afterwards, which
    replaces this one.
    """
    op = _overload(qualname)

    def pick(a, d, i):
        if isinstance(a, (list, tuple)):
            return [pick(t, dd, i) for t, dd in _per_tensor(a, d)]
        if d is None or not isinstance(a, torch.Tensor):
            return a
        return a.select(d, i).contiguous()

    def rule(info, in_dims, *args):
        V = info.batch_size
        if V == 0:
            raise ValueError(f"{qualname}: torch.vmap over a dimension of size 0 is not supported")
        outs = [op(*[pick(a, d, i) for a, d in zip(args, in_dims)]) for i in range(V)]
        if isinstance(outs[0], (tuple, list)):
            return tuple(torch.stack([o[j] for o in outs]) for j in range(len(outs[0]))), (0,) * len(outs[0])
        return torch.stack(outs), 0

    torch.library.register_vmap(qualname, rule)


def fold_vmap(qualname: str, *, row_broadcast: tuple = ()) -> None:
    """Register a vmap rule for an op whose tensor arguments all lead with one batch (or row) dim: the mapped
    dim is folded into it, so vmap costs one kernel call instead of :func:`loop_vmap`'s one per index.

    Unmapped tensors are repeated along the folded dim, except a 1-row tensor at an argument position listed
    in `row_broadcast` (the op broadcasts such rows itself).  Every output's dim 0 unfolds into (mapped, rows).
    """
    op = _overload(qualname)

    def rule(info, in_dims, *args):
        V = info.batch_size
        # per-sample rows, from the first tensor that cannot broadcast
        lead = next(t.shape[0] if dd is None else t.movedim(dd, 0).shape[1]
                    for i, (a, d) in enumerate(zip(args, in_dims)) if i not in row_broadcast
                    for t, dd in _per_tensor(a, d) if isinstance(t, torch.Tensor))

        def fold(t, d, may_broadcast):
            if not isinstance(t, torch.Tensor):
                return t
            if d is None:
                if may_broadcast and t.shape[0] == 1:
                    return t
                # (contiguous: for a 1-row t the reshape is a stride-0 view, which row kernels refuse)
                return t.unsqueeze(0).expand(V, *t.shape).reshape(V * t.shape[0], *t.shape[1:]).contiguous()
            t = t.movedim(d, 0)
            if may_broadcast and t.shape[1] == 1 and lead != 1:
                t = t.expand(V, lead, *t.shape[2:])
            return t.reshape(V * t.shape[1], *t.shape[2:]).contiguous()

        folded = [[fold(t, dd, i in row_broadcast) for t, dd in _per_tensor(a, d)] if isinstance(a, (list, tuple))
                  else fold(a, d, i in row_broadcast) for i, (a, d) in enumerate(zip(args, in_dims))]
        res = op(*folded)

        def unfold(o):
            if o.dim() and o.shape[0] == V * lead:
                return o.view(V, lead, *o.shape[1:])
            return o.unsqueeze(0).expand(V, *o.shape)  # a placeholder (an empty gradient slot)

        if isinstance(res, (tuple, list)):
            return tuple(unfold(o) for o in res), (0,) * len(res)
        return unfold(res), 0

    torch.library.register_vmap(qualname, rule)


_FunctionCtx = torch.autograd.function.FunctionCtx


class _Recorder:
    """Stands in for ``ctx`` while a Function's ``forward(ctx, ...)`` runs for its torch.func twin: records
    what it saves and marks; reports every input as needing a gradient (so the forward keeps all it may
    need)."""

    def __init__(self, n_inputs: int):
        self.__dict__["_rec"] = {"saved": (), "nondiff": (), "attrs": {}}
        self.__dict__["needs_input_grad"] = (True,) * n_inputs

    def save_for_backward(self, *tensors):
        self._rec["saved"] = tensors

    def mark_non_differentiable(self, *tensors):
        self._rec["nondiff"] = tensors

    def set_materialize_grads(self, value):
        pass

    def __setattr__(self, key, value):
        self._rec["attrs"][key] = value

    def __getattr__(self, key):  # (an attribute the forward set and reads back, as ConvRowsFn's ctx.geo)
        try:
            return self.__dict__["_rec"]["attrs"][key]
        except KeyError:
            raise AttributeError(key) from None


def func_twin(cls, *, once_differentiable: bool = True):
    """The torch.func variant of an autograd.Function written in the eager ``forward(ctx, ...)`` style.

    torch.func needs ``forward(*args)`` + ``setup_context``; the eager style (which the families keep: it
    skips a per-call signature bind) records in forward.  The twin runs ``cls.forward`` with a recording
    ctx, returns the saved intermediates that are not inputs as extra outputs (non-differentiable), and
    ``setup_context`` saves them again; ``cls.backward`` runs unchanged.  What the recording ctx saw (which
    saved tensor is which input / output / extra, the ctx attributes, the output count) travels as the twin's
    last output, a Python tuple, so that no state outlives the call: a transform stack may call setup_context
    once per level, and ``torch.compile`` traces the twin (forward and setup_context in one) without a graph
    break.  vmap uses the generated rule (the custom ops inside carry vmap rules, see :func:`loop_vmap`).
    :func:`apply` calls the twin inside transforms (:func:`functorch_active`), ``cls.apply`` otherwise, and
    drops the twin's extra outputs.

    With ``once_differentiable`` (backward kernels without a derivative of their own), a nested derivative
    transform (``jacrev(grad(f))``, hessian) raises instead of silently returning zeros (:func:`first_order_only`,
    unless ``cls.backward`` already carries it).  Forward mode (``jvp``, ``jacfwd``) is not provided: torch
    raises.
    """
    def forward(*args):
        if args and isinstance(args[0], _FunctionCtx):
            # torch.compile inlines the forward of a call that records no gradient (a nested call inside a traced
            # backward) and passes its ctx first unless forward's parameters count one less than the arguments
            args = args[1:]
        rec = _Recorder(len(args))
        out = cls.forward(rec, *args)
        as_tuple = isinstance(out, (tuple, list))
        outs = tuple(out) if as_tuple else (out,)
        r = rec._rec
        layout, extras = [], []
        for t in r["saved"]:
            if t is None:
                layout.append(("none", None))
                continue
            j = next((i for i, a in enumerate(args) if a is t), None)
            if j is not None:
                layout.append(("in", j))
            else:
                j = next((i for i, o in enumerate(outs) if o is t), None)
                if j is not None:
                    layout.append(("out", j))
                else:
                    layout.append(("extra", len(extras)))
                    extras.append(t)
        nondiff = tuple(i for i, o in enumerate(outs) if any(o is t for t in r["nondiff"]))
        record = (tuple(layout), tuple(r["attrs"].items()), len(outs), nondiff, as_tuple)
        return (*outs, *extras, record)

    def setup_context(ctx, inputs, output):
        layout, attrs, n_out, nondiff, _ = output[-1]
        extras = output[n_out:-1]
        saved = [None if kind == "none" else inputs[j] if kind == "in" else output[j] if kind == "out"
                 else extras[j] for kind, j in layout]
        ctx.save_for_backward(*saved)
        for k, v in attrs:
            setattr(ctx, k, v)
        ctx.mark_non_differentiable(*[output[i] for i in nondiff], *extras)
        ctx._geoops_n_out = n_out

    def backward(ctx, *grads):
        return cls.backward(ctx, *grads[:ctx._geoops_n_out])

    if once_differentiable and not getattr(cls.backward, "first_order_only", False):
        backward = first_order_only(backward)
    body = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward), "generate_vmap_rule": True, "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} for torch.func transforms (grad, vmap, jacrev); see geoops._library.func_twin."}
    return type(cls.__name__ + "Func", (torch.autograd.Function,), body)


def with_func_twin(cls):
    """Class decorator of an autograd.Function that :func:`apply` calls: makes its :func:`func_twin` once, at class
    definition, and keeps it as ``cls.func_twin`` (a class whose backward is differentiable sets
    ``differentiable_backward = True`` first).  Nothing is looked up or made per call, so that torch.compile traces
    :func:`apply` inside a transform: dynamo traces the static method ``cls.func_twin_apply`` (the twin's apply;
    it does not trace an attribute of a Function class that is not a method)."""
    twin = func_twin(cls, once_differentiable=not getattr(cls, "differentiable_backward", False))

    def func_twin_apply(*args):
        """The torch.func twin's apply (what geoops._library.apply calls inside a transform)."""
        return twin.apply(*args)

    cls.func_twin = twin
    cls.func_twin_apply = staticmethod(func_twin_apply)
    return cls


def compiled_transform_args(args):
    """`args` for a Function's apply inside a torch.func transform: under torch.compile each tensor as a view of
    itself, else `args` unchanged.

    torch.compile (2.13) decides from the arguments' requires_grad whether it traces a Function's forward and
    backward (as eager does) or the forward alone; a transform's input passed straight in (``torch.func.grad(lambda
    x: op(x))``) still reads requires_grad=False there, so the custom backward was dropped (the forward's custom op
    then has no derivative: an error).  A view is a new traced tensor whose requires_grad is the transform's; it
    costs nothing in the compiled graph."""
    if not torch.compiler.is_compiling():
        return args
    return tuple(a.view_as(a) if isinstance(a, torch.Tensor) else a for a in args)


def distinct_inputs(args):
    """`args` for a Function's apply: under torch.compile a tensor passed again (``gaunt_power``'s factors,
    ``mobius_add(x, x)``, self-attention's ``k1 is k2``) as a view of itself from its second place on, else `args`
    unchanged.

    Dynamo (2.13) refuses ``autograd.Function.apply`` with one tensor in two places ("duplicate tensor input"): a
    graph break, so the op ran eagerly between graph fragments and fullgraph=True raised.  Each view is a distinct
    traced tensor whose gradient autograd adds to the original's, as eager sums the repeats' gradients; it costs
    nothing in the compiled graph, and eager mode skips it."""
    if not torch.compiler.is_compiling():
        return args
    seen, out = [], []
    for a in args:
        if isinstance(a, torch.Tensor):
            if any(a is s for s in seen):
                a = a.view_as(a)
            else:
                seen.append(a)
        out.append(a)
    return tuple(out)


def apply_distinct(cls, *args):
    """``cls.apply(*args)`` with repeated tensor inputs made distinct under torch.compile (:func:`distinct_inputs`):
    for the callers that call a Function directly rather than through :func:`apply`."""
    return cls.apply(*distinct_inputs(args)) if torch.compiler.is_compiling() else cls.apply(*args)


def with_compiled_apply(twin):
    """Give `twin`, a Function in the torch.func form with a custom ``jvp``, the static method ``compiled_apply``
    that its callers use inside transforms: ``twin.apply`` outside torch.compile; under torch.compile the apply of
    a copy without the jvp, on :func:`compiled_transform_args`.  torch.compile (2.13) does not trace a Function with
    a custom jvp (a graph break, "Unsupported custom jvp"); the copy traces with its backward and generated vmap rule,
    and forward mode through it (``jvp`` / ``jacfwd`` of a compiled function) raises torch's error for a Function
    without a jvp.  Returns `twin`."""
    keep = ("forward", "setup_context", "backward", "vmap", "generate_vmap_rule", "__module__", "__doc__")
    plain = type(twin.__name__, (torch.autograd.Function,), {k: v for k, v in vars(twin).items() if k in keep})

    def compiled_apply(*args):
        """apply inside a torch.func transform: under torch.compile that of a copy without the jvp."""
        if torch.compiler.is_compiling():
            compiled_transform_fallback()
            return plain.apply(*compiled_transform_args(args))
        return twin.apply(*args)

    twin.compiled_apply = staticmethod(compiled_apply)
    return twin


class _TraceCtx:
    """The ctx of a Function's forward run inline while torch.jit.trace records (:func:`_traced_forward`): no input
    wants a gradient, saved tensors are kept and dropped with it, marks are ignored."""

    materialize_grads = True

    def __init__(self, n: int):
        self.needs_input_grad = (False,) * n
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass


def _traced_forward(cls, args):
    """The forward of the Function `cls` run inline on `args`, for torch.jit.trace.

    Through ``cls.apply`` the tracer records the Python Function as one opaque node (``prim::PythonOp``), which
    ``torch.jit.save`` cannot export ("Could not export Python function call ..."); inline, it records the
    custom ops the forward dispatches (:func:`direct_call_ok` is false while tracing), which save and load.  The
    trace carries no custom backward: a backward through its replay raises torch's error naming the forward op
    (no autograd formula registered), never a wrong gradient."""
    with torch.no_grad():
        if getattr(cls, "setup_context", None) is not torch.autograd.Function.setup_context:
            return cls.forward(*args)  # (the torch.func form: a forward without ctx)
        return cls.forward(_TraceCtx(len(args)), *args)


def apply(cls, *args, op: Optional[str] = None):
    """``cls.apply(*args)``; inside a torch.func transform the same through ``cls.func_twin``
    (:func:`with_func_twin`), with the twin's extra outputs dropped, so callers see the same outputs either way.
    Forward-mode AD through a Function without a jvp raises NotImplementedError naming ``op`` (default: the
    Function) instead of torch's generic message."""
    try:
        if not functorch_active():
            if _jit_tracing() is not None:
                return _traced_forward(cls, args)
            return cls.apply(*distinct_inputs(args)) if torch.compiler.is_compiling() else cls.apply(*args)
        compiled_transform_fallback()
        res = cls.func_twin_apply(*compiled_transform_args(args))
    except NotImplementedError as e:
        if "jvp" not in str(e):
            raise
        hint = "; jacrev(jacrev(f)) for a Hessian" if getattr(cls, "differentiable_backward", False) else ""
        raise NotImplementedError(
            f"{op or cls.__module__ + '.' + cls.__name__}: forward-mode AD (torch.func.jvp, jacfwd, hessian, "
            "forward_ad dual tensors) is not supported: the kernels have no forward derivative; use reverse mode "
            f"(torch.func.grad, vjp, jacrev{hint})") from None
    n_out, as_tuple = res[-1][2], res[-1][4]
    return tuple(res[:n_out]) if as_tuple else res[0]
