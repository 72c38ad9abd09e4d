"""Argument helpers shared by the families (they know no family).

``int_arg``: an integer argument (``dim``, a size, a count) as a Python int.  Any integer that
``operator.index`` takes is accepted -- a Python int, a numpy integer, a 0-d integer numpy array or tensor (as
torch's own ``dim=`` does) -- and a bool, a float, a string or a tensor / array with dimensions is refused with a
TypeError naming the argument, before any kernel runs.

``bool_arg``: a flag (``keepdim``) as a bool; a string or an int (whose truth value Python would take) is refused.

``float_arg``: a real scalar argument (a step size, a margin) as a finite Python float -- a Python int / float, a
numpy scalar or a 0-d real tensor; a string, a bool, a complex, a tensor with dimensions, NaN or +-inf is refused
naming the argument, before any kernel runs (NaN compares false, so a kernel's ``eps < 0`` / ``n > r`` branches would
otherwise take it silently).

``promote_types``: torch.promote_types of any number of dtypes from a table built at import (torch.export records
each torch.promote_types call as a dead ``aten.promote_types`` node that dynamo cannot trace: compiling the loaded
program of a model failed with "torch.* op returned non-Tensor").

``called_as``: an argument error raised by the geoops function that a public wrapper forwards to (poincare.dist ->
stereographic.dist, stereographic.inner -> lambda_x), re-addressed to the function the user called and its
argument names.

``broadcast_shapes``: torch.broadcast_shapes of tensor shapes in plain Python for int sizes (torch's costs ~10 us
per call on the CPU, a sixth of a small Gaunt product's time); symbolic sizes (torch.compile / export) go through
torch.broadcast_shapes, which guards as little as possible.
"""
from __future__ import annotations

import operator
import re
from typing import Optional

import torch


def as_index(v) -> Optional[int]:
    """``v`` as a Python int when it is an integer (not a bool, not a tensor or array with dimensions), else None."""
    if type(v) is int or isinstance(v, torch.SymInt):  # a SymInt (a size under torch.compile / export) as it is
        return v
    if isinstance(v, bool):
        return None
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype == torch.bool or v.is_floating_point() or v.is_complex():
            return None
    elif getattr(v, "ndim", 0) != 0 or getattr(getattr(v, "dtype", None), "kind", "i") not in "iu":
        return None  # a numpy array with dimensions, or a numpy bool / non-integer scalar
    try:
        return operator.index(v)
    except TypeError:
        return None


def int_arg(who: str, name: str, v, *, lo: Optional[int] = None, what: str = "", none_ok: bool = False,
            type_what: str = ""):
    """``v`` as a Python int (``None`` stays None when ``none_ok``); at least ``lo`` when given (``what`` says what
    is expected, e.g. "a positive int"; ``type_what`` the TypeError's wording, default "an int [or None]").  Errors
    start with ``who`` (e.g. ``geoops.ssm.s4d_kernel``)."""
    if v is None and none_ok:
        return None
    n = as_index(v)
    if n is None:
        expected = type_what or f"an int{' or None' if none_ok else ''}"
        raise TypeError(f"{who}: {name} must be {expected}, got {type(v).__name__}")
    if lo is not None and type(n) is int and n < lo:  # (no guard on a SymInt)
        raise ValueError(f"{who}: {name} must be {what or f'an int >= {lo}'}, got {n}")
    return n


def bool_arg(who: str, name: str, v) -> bool:
    """A flag (``keepdim``) as a bool: a Python or numpy bool; anything else (a string, an int: Python's truth value
    would take "no" as True) is refused naming the argument, as torch's own ``keepdim=`` refuses it."""
    if type(v) is bool:
        return v
    if type(v).__module__ == "numpy" and type(v).__name__ in ("bool_", "bool"):
        return bool(v)
    raise TypeError(f"{who}: {name} must be a bool, got {type(v).__name__}")


def float_arg(who: str, name: str, v, *, below: Optional[float] = None, what: str = "") -> float:
    """``v`` as a finite Python float, below ``below`` when given (``what`` says what is expected).  Errors start
    with ``who`` and name the argument."""
    if type(v) is float and v == v and v not in (_INF, -_INF) and (below is None or v < below):
        return v  # (the common case: one type check and three comparisons)
    if isinstance(v, (bool, str, bytes, complex)) or (isinstance(v, torch.Tensor) and (
            v.dim() != 0 or v.dtype == torch.bool or v.is_complex())):
        raise TypeError(f"{who}: {name} must be a real number, got {_describe(v)}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a real number, got {_describe(v)}") from None
    if f != f or f in (_INF, -_INF) or (below is not None and not f < below):
        raise ValueError(f"{who}: {name} must be {what or 'a finite number'}, got {f!r}")
    return f


_INF = float("inf")


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    return type(v).__name__


_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
           torch.float32, torch.float64, torch.complex64, torch.complex128)
_PROMOTED = {(a, b): torch.promote_types(a, b) for a in _DTYPES for b in _DTYPES}


def promote_types(first: torch.dtype, *others: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` folded over the dtypes, without calling the op for the usual dtypes (no node in an
    exported graph, no host cost per call)."""
    out = first
    for d in others:
        if d is not out:
            p = _PROMOTED.get((out, d))
            out = p if p is not None else torch.promote_types(out, d)
    return out


def broadcast2(a, b) -> torch.Size:
    """torch.broadcast_shapes(a, b) for two shapes (RuntimeError when they do not broadcast), without its per-call
    cost in eager mode; a symbolic size sends the pair through torch.broadcast_shapes."""
    la, lb = len(a), len(b)
    out = list(a) if la >= lb else list(b)
    short = b if la >= lb else a
    off = len(out) - len(short)
    for i, q in enumerate(short):
        p = out[off + i]
        if type(p) is not int or type(q) is not int:
            return torch.broadcast_shapes(a, b)
        if p != q:
            if p == 1:
                out[off + i] = q
            elif q != 1:
                raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
    return torch.Size(out)


def broadcast_shapes(*shapes) -> torch.Size:
    """torch.broadcast_shapes of tensor shapes (:func:`broadcast2` folded over them; a symbolic size anywhere: torch's
    own, over all of them at once)."""
    for s in shapes:
        for v in s:
            if type(v) is not int:
                return torch.broadcast_shapes(*shapes)
    out = torch.Size(())
    for s in shapes:
        out = broadcast2(out, s)
    return out


# The argument errors that the family modules raise (prefixed "geoops.<module>.<function>: ").
ARG_ERRORS = (TypeError, ValueError, IndexError)
_PREFIX = re.compile(r"geoops\.[A-Za-z_][\w.]*: ")


def called_as(e: BaseException, who: str, **renames: str) -> BaseException:
    """``e`` (an error of :data:`ARG_ERRORS`) re-addressed to ``who``, the public function the user called (e.g.
    ``geoops.poincare.dist``), where ``e`` was raised by a geoops function it forwards to: that function's
    ``geoops.<module>.<name>:`` prefix replaced by ``who``'s, and its argument names by the caller's (``renames``:
    inner name = the caller's, whole words).  An error without such a prefix (torch's own) or already naming ``who``
    comes back as it is.  Use: ``except ARG_ERRORS as e: raise called_as(e, who) from None`` (a try block costs
    nothing until something raises)."""
    msg = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else None
    m = _PREFIX.match(msg) if msg is not None else None
    if m is None or msg.startswith(who + ":"):
        return e
    rest = msg[m.end():]
    for inner, outer in renames.items():
        rest = re.sub(rf"\b{inner}\b", outer, rest)
    return type(e)(f"{who}: {rest}")
