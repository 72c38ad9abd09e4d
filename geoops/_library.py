"""Family-neutral helpers for registering and calling geoops kernels.

Every family follows one path::

    geoops.<family>.<op>  ->  <Op>Fn.apply  ->  torch.ops.geoops.<op>_fwd   ->  the backend's kernel
                                              (or the kernel directly on the eager fast path)
    backward              ->  torch.ops.geoops.<op>_bwd  ->  the backend's backward kernel

* :func:`define_op` registers one custom op with its fake (shape) implementation, so that
  ``torch.compile(fullgraph=True)``, ``torch.export`` and ``FakeTensorMode`` see one opaque op.
* :func:`kernel_set` returns the namespace of kernels that the backend switch picks for a device:
  the family's ``cpp``/``cuda``/``reference`` classes, or the module ``geoops.kernels.<family>``
  for Triton.  All of them expose the same function names.
* :func:`caller` builds the function a Function's forward/backward calls: the kernel directly
  when that does exactly what dispatching the custom op would (:func:`direct_call_ok`), else the op.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _backend

__all__ = ["direct_call_ok", "kernel_set", "define_op", "caller"]

_len_fn_modes = getattr(torch._C, "_len_torch_function_stack", None)
_len_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_HAVE_MODE_CHECKS = None not in (_len_fn_modes, _len_dispatch_modes, _functorch_active)

_PLAIN = (torch.Tensor, torch.nn.Parameter)  # Parameter disables __torch_function__: a plain tensor here


def direct_call_ok(*tensors) -> bool:
    """Whether calling a backend's kernels directly does exactly what dispatching the custom op would.

    True for plain tensors in eager mode. False while torch.compile or export traces, under a torch-function
    or dispatch mode (FakeTensorMode, make_fx, ...), inside a functorch transform, and for tensor subclasses:
    those go through torch.ops.geoops.*, whose fake implementations and dispatch they need (nn.Parameter
    counts as plain).  The custom op's Python dispatch costs tens of microseconds per call, which dominates
    on small inputs.  Non-tensor arguments (None, numbers) are ignored.
    """
    if torch.compiler.is_compiling() or not _HAVE_MODE_CHECKS:
        return False
    if _len_fn_modes() or _len_dispatch_modes() or _functorch_active():
        return False
    for t in tensors:
        if isinstance(t, torch.Tensor) and type(t) not in _PLAIN:
            return False
    return True


def kernel_set(family: str, device: torch.device, *, cpp=None, cuda=None, reference=None):
    """The kernels that the current backend setting runs for `family` on `device`.

    `cpp`, `cuda` and `reference` are the family's kernel namespaces (classes or modules with the same
    function names); Triton's is the module ``geoops.kernels.<family>``.  A backend the family does not
    provide counts as unavailable to ``geoops._backend`` only through its own checks, so pass every one
    the family has.
    """
    name = _backend.resolve(device, family)
    if name == "triton":
        return _backend.triton_kernels(family)
    found = {"cpp": cpp, "cuda": cuda, "reference": reference}[name]
    if found is None:
        raise RuntimeError(f"geoops.{family}: no {name!r} kernels for tensors on {device.type}")
    return found


def define_op(qualname: str, schema: str, impl: Callable, fake: Callable):
    """Register the custom op `qualname` ("geoops::<name>") with `schema`, `impl` and the fake `fake`.

    Returns the default OpOverload (what torch.compile traces), e.g. ``torch.ops.geoops.<name>.default``.
    """
    op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


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
