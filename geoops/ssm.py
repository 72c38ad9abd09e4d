"""Diagonal state-space (S4D / DSS) convolution: Vandermonde kernel generation and FFT long convolution.

::

    import geoops.ssm as gs
    K = gs.s4d_kernel(log_dt, A, B, C, L)            # (H, L) real, never materialises (H, N, L)
    y = gs.fftconv(u, K, D)                           # u (B, H, L) -> (B, H, L)
    y = gs.ssm_conv(u, log_dt, A, B, C, D)            # the pair in one call

Conventions
-----------
* **Half spectrum** (S4D's): the N complex modes of ``A`` stand for N conjugate pairs of a
  real 2N-state system, so ``K[h, l] = 2 Re sum_n C~[h, n] Abar[h, n]**l`` (the factor 2 and the
  real part are in the kernel; pass the N modes with, e.g., Im A >= 0 only).
* **Discretisation**, with ``dt = exp(log_dt)`` per channel:
  ``"zoh"``: ``Abar = exp(dt A)``, ``C~ = C B (exp(dt A) - 1) / A``;
  ``"bilinear"``: ``Abar = (1 + dt A/2) / (1 - dt A/2)``, ``C~ = C B dt / (1 - dt A/2)``.
* **Bidirectional** (state-spaces' convention): ``k[..., 0, :, :]`` is a causal kernel, ``k[..., 1, :, :]``
  an anti-causal one; the length-2L circular kernel is ``pad(k0, (0, L)) + pad(flip(k1), (L, 0))``, so
  ``y[t] = sum_{l<=t} k0[l] u[t-l] + sum_{l<=L-2-t} k1[l] u[t+1+l] + D u[t]`` (``k1[L-1]`` is unused).
  state-spaces stores the pair as the leading ``(2*C)`` channel axis, ``s`` outermost:
  ``k_ss.view(2, C, H, L).transpose(0, 1)`` is our ``(C, 2, H, L)``.
* **Complex gradients** follow torch's autograd convention (the conjugate Wirtinger derivative
  ``dLoss/dRe z + i dLoss/dIm z``), checked with gradcheck in complex128 through the kernels.
* **Transforms**: reverse mode only (autograd, ``torch.func`` grad / vjp / jacrev / vmap).  Forward mode (jvp,
  jacfwd, hessian, forward_ad dual tensors) raises NotImplementedError; second derivatives raise RuntimeError
  (the backward kernels are once-differentiable).

Numerics
--------
The phase of ``exp(x l)`` is computed in double for every input dtype (O(H N sqrt L) work), and only
the final real GEMM runs in the output precision: fp32 results are within ~1e-6 of the fp64 oracle
(relative to each channel's max |K|) up to L = 65536, slowly decaying modes included.  The
discretisation (O(H N), one C++ pass forward and backward) runs in complex double for every input
dtype, for the same reason: rounding ``dt*A`` to fp32 alone moves the phase at l = 65536 by ~1e-4.
FFT convolutions use n = the smallest 2-3-5 size >= 2L - 1 (a causal product needs no more).

Backends: C++/OpenMP on CPU (``geoops._C``), Triton on CUDA, the eager reference anywhere
(``geoops.set_backend``).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _args, _backend, _library
from ._ops import ssm as _ops
from .reference import ssm as _ref

__all__ = ["vandermonde", "s4d_kernel", "fftconv", "ssm_conv", "discretize",
           "VandermondeFn", "FftconvFn", "DiscretizeFn", "SsmConvFn"]

_REAL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)


# ---------------------------------------------------------------- autograd
@_library.with_func_twin
class VandermondeFn(torch.autograd.Function):
    """autograd.Function of vandermonde: torch.ops.geoops.vandermonde_fwd / _bwd.

    v (C, H, N) complex, x (H, N) complex, L int, out64 bool -> K (C, H, L) real.
    """

    @staticmethod
    def forward(ctx, v, x, L: int, out64: bool):
        ctx.save_for_backward(v, x)  # (op_context's work)
        return _ops.vandermonde_fwd(v, x, L, out64)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs[:2])

    @staticmethod
    @_library.first_order_only
    def backward(ctx, grad):
        v, x = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 2)
        if mask == 0:
            return None, None, None, None
        dv, dx = _ops.vandermonde_bwd(grad.contiguous(), v, x, mask)
        return (dv if need[0] else None), (dx if need[1] else None), None, None


_DIRECT_FFT = []  # cached: whether geoops._C runs the per-row MKL path (queried once, outside tracing)


def _keep_spectrum(u) -> bool:
    """Whether the forward should keep rfft(u) for the backward (no on the CPU's per-row MKL path).

    Only a speed choice: the backward kernels recompute the spectrum when it was not kept.
    """
    if u.device.type != "cpu" or _backend.resolve(u.device, "ssm") != "cpp":
        return True
    return not _direct_fft()


@_backend._constant_for_dynamo
def _direct_fft() -> bool:
    """Whether geoops._C runs the per-row MKL path (asked once).  torch.compile takes the answer as a constant at
    trace time: reading the cache list there put a guard on it, so a graph traced before the first eager call was
    recompiled once after it (session 36)."""
    if not _DIRECT_FFT:
        _DIRECT_FFT.append(bool(_backend.compiled().ssm_direct_fft(-1)))
    return _DIRECT_FFT[0]


@_library.with_func_twin
class FftconvFn(torch.autograd.Function):
    """autograd.Function of fftconv: torch.ops.geoops.fftconv_fwd / _bwd.

    u (B, H, L), k (C, S, H, L), D (C, H) or None -> (y (B, C, H, L), uf); uf (non-differentiable, possibly
    empty) is also an output so that torch.compile binds its length, an unbacked size for a dynamic L
    (session 36); the public function returns y.  The forward keeps rfft(u, n) for
    the backward when k needs a gradient (as the eager recipe's autograd does), except on the CPU's
    per-row path, where recomputing each row's transform in the backward (in cache) is cheaper than
    writing, faulting in and reading back the (B, H, n/2+1) spectrum.
    """

    @staticmethod
    def forward(ctx, u, k, D):
        save = bool(ctx.needs_input_grad[1]) and _keep_spectrum(u)
        res = _ops.fftconv_fwd(u, k, D, save)
        FftconvFn.op_context(ctx, (u, k, D, save), res)
        return res  # uf an output too: its length may be a new unbacked size under a dynamic L (_ops.ssm._nfreq)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program, where the
        op's `save` flag is the traced one; without the spectrum the backward recomputes it)."""
        u, k, D, _ = inputs
        uf = output[1]
        ctx.save_for_backward(u, uf, k, D)
        ctx.mark_non_differentiable(uf)
        ctx.set_materialize_grads(False)  # (no zeros made per backward for uf's unused gradient)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, grad, _guf=None):
        u, uf, k, D = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 3)  # (no D: its bit is clear)
        if mask == 0 or grad is None:  # (None: y's gradient unused, set_materialize_grads(False))
            return None, None, None
        du, dk, dD = _ops.fftconv_bwd(grad.contiguous(), u, uf, k, D, mask)
        return (du if need[0] else None), (dk if need[1] else None), (dD if mask & 4 else None)


@_library.with_func_twin
class DiscretizeFn(torch.autograd.Function):
    """autograd.Function of the discretisation: torch.ops.geoops.ssm_discretize_fwd / _bwd.

    log_dt (H,), A, B (H, N), C (..., H, N), disc -> (v = C Bbar (C's shape), x = log Abar (H, N)), complex128.
    """

    @staticmethod
    def forward(ctx, log_dt, A, B, C, disc: str):
        ctx.disc = disc  # (op_context's work)
        ctx.save_for_backward(log_dt, A, B, C)
        return _ops.ssm_discretize_fwd(log_dt, A, B, C, disc)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        ctx.save_for_backward(*inputs[:4])
        ctx.disc = inputs[4]

    @staticmethod
    @_library.first_order_only
    def backward(ctx, gv, gx):
        log_dt, A, B, C = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 4)
        if mask == 0:
            return None, None, None, None, None
        gv = gv.contiguous() if gv is not None else C.new_empty(0, dtype=torch.complex128)
        gx = gx.contiguous() if gx is not None else A.new_empty(0, dtype=torch.complex128)
        grads = _ops.ssm_discretize_bwd(gv, gx, log_dt, A, B, C, ctx.disc, mask)
        return tuple(g if need[i] else None for i, g in enumerate(grads)) + (None,)


@_library.with_func_twin
class SsmConvFn(torch.autograd.Function):
    """autograd.Function of the fused ssm_conv: torch.ops.geoops.ssm_conv_fwd / _bwd.

    u (B, H, L), v (C, S, H, N), x (H, N) complex, D (C, H) or None -> (y (B, C, H, L), kf, uf), the spectra
    non-differentiable outputs as in FftconvFn.  The forward keeps
    the kernel's spectrum (for du) and, off the CPU's per-row path, rfft(u) (for dK, when v or x needs a
    gradient; see FftconvFn).
    """

    @staticmethod
    def forward(ctx, u, v, x, D):
        save = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and _keep_spectrum(u)
        res = _ops.ssm_conv_fwd(u, v, x, D, save)
        SsmConvFn.op_context(ctx, (u, v, x, D, save), res)
        return res  # the spectra outputs too (see FftconvFn)

    @staticmethod
    def op_context(ctx, inputs, output):
        """What backward needs (also the op's own autograd, _library.op_autograd: an exported program)."""
        u, v, x, D = inputs[:4]
        _, kf, uf = output
        if len(inputs) > 5 and not inputs[5]:
            # the op called without keep_kf (the forward-only call of a program exported without gradients), now
            # differentiated: the kernel's spectrum once more, as a forward that keeps it has it
            with torch.no_grad():
                kf = _ops.ssm_conv_fwd(u, v, x, D, False, True)[1]
        ctx.save_for_backward(u, uf, kf, v, x, D)
        ctx.mark_non_differentiable(kf, uf)
        ctx.set_materialize_grads(False)  # (no zeros of the spectra's shapes made per backward for their gradients)

    @staticmethod
    @_library.first_order_only
    def backward(ctx, grad, _gkf=None, _guf=None):
        u, uf, kf, v, x, D = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = _library.grad_mask(need, 4)  # (no D: its bit is clear)
        if mask == 0 or grad is None:  # (None: y's gradient unused, set_materialize_grads(False))
            return None, None, None, None
        du, dv, dx, dD = _ops.ssm_conv_bwd(grad.contiguous(), u, uf, kf, v, x, D, mask)
        return (du if need[0] else None), (dv if need[1] else None), (dx if need[2] else None), \
            (dD if mask & 8 else None)


for _fn, _op in ((VandermondeFn, "vandermonde"), (FftconvFn, "fftconv"), (DiscretizeFn, "ssm_discretize"),
                 (SsmConvFn, "ssm_conv")):
    _library.op_autograd(f"geoops::{_op}_fwd", _fn)


def _apply(op: str, cls, *args):
    """_library.apply, forward-mode AD refused with a message naming the op."""
    return _library.apply(cls, *args, op=f"geoops.ssm.{op}")


# ---------------------------------------------------------------- argument handling
def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"geoops.ssm.{op}: {msg}")


def _tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    return t


def _check_complex(op, name, t):
    _tensor(op, name, t)
    if t.dtype not in _COMPLEX:
        if t.dtype in _REAL_FLOATS:
            _fail(op, f"{name} must be complex (complex64 or complex128), got the real dtype {t.dtype}: "
                      f"the diagonal SSM's modes are complex (half-spectrum convention; use "
                      f"torch.complex(re, im) or a view_as_complex of an (..., 2) real tensor)", TypeError)
        _fail(op, f"{name} must be complex64 or complex128, got {t.dtype}", TypeError)
    return t


def _check_real(op, name, t, allowed=_REAL_FLOATS):
    _tensor(op, name, t)
    if t.dtype not in allowed:
        _fail(op, f"{name} must be a floating-point tensor ({', '.join(str(d).replace('torch.', '') for d in allowed)}), "
                  f"got {t.dtype}", TypeError)
    return t


def _check_L(op, L):
    if isinstance(L, torch.SymInt):
        return L
    return _args.int_arg(f"geoops.ssm.{op}", "L", L, lo=0, what=">= 0")


def _same_device(op, named: dict):
    """One device for every named tensor (the first is the one named in the error); their dtypes are checked
    before (_check_real / _check_complex, whose messages say more)."""
    _library.check_tensors(f"geoops.ssm.{op}", named, dtypes=None)


def _use_reference(device) -> bool:
    return _backend.resolve(device, "ssm") == "reference"


# ---------------------------------------------------------------- public API
def _vandermonde_rows(op: str, v, x, L: int, out64: bool):
    """vandermonde's kernels on checked inputs: v (H, N) or (C, H, N), x (H, N) -> (H, L) or (C, H, L); one
    autograd node (VandermondeFn) when a gradient is wanted, else the forward op alone."""
    v3 = v if v.dim() == 3 else v.unsqueeze(0)
    if _library.autograd_wanted(v, x):
        K = _apply(op, VandermondeFn, v3, x, L, out64)
    else:
        K = _ops.vandermonde_fwd(v3, x, L, out64)
    return K if v.dim() == 3 else K.squeeze(0)


def vandermonde(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """Vandermonde kernel ``K[..., h, l] = 2 Re sum_n v[..., h, n] exp(x[h, n] * l)``, ``l = 0 .. L-1``.

    Args:
        v: (H, N) or (C, H, N) complex64/complex128: the mode weights (C: output channels).
        x: (H, N) complex64/complex128: the log of the per-step decay/rotation of each mode.
        L: the kernel length (int >= 0).

    Returns:
        (H, L) or (C, H, L) real: float64 if v or x is complex128, else float32.

    Gradients flow to v and x (torch's conjugate-Wirtinger convention):
    ``dv = 2 conj(sum_l g[l] exp(x l))``, ``dx = sum_c 2 conj(v sum_l g[l] l exp(x l))``.

    Numerics: never materialises (H, N, L); memory O(H N sqrt(L) + H L).  The powers exp(x l) are split as
    exp(x jT) exp(x i) (l = jT + i, T ~ sqrt L), both factors computed in double from the exact product
    x*m, and combined by one real GEMM per channel in the output precision.  Unlike state-spaces'
    CUDA Vandermonde kernel (fast-math fp32 phases, ~1e-3 relative error at L = 64K) the fp32 result
    is within ~1e-6 of the fp64 oracle at any L.  Growing modes (Re x > 0) are allowed here (the caller's
    business); overflow gives inf as the eager recipe does.
    """
    op = "vandermonde"
    _check_complex(op, "v", v)
    _check_complex(op, "x", x)
    L = _check_L(op, L)
    if x.dim() != 2:
        _fail(op, f"x must have shape (H, N), got {tuple(x.shape)}")
    if v.dim() not in (2, 3) or tuple(v.shape[-2:]) != tuple(x.shape):
        _fail(op, f"v must have shape (H, N) = {tuple(x.shape)} or (C, H, N), matching x; got {tuple(v.shape)}")
    _same_device(op, {"x": x, "v": v})
    _library.check_finite(f"geoops.ssm.{op}", {"v": v, "x": x})
    out64 = torch.complex128 in (v.dtype, x.dtype)
    if _use_reference(x.device):
        cdt = torch.complex128 if out64 else torch.complex64
        return _ref.vandermonde(v.to(cdt), x.to(cdt), L)
    return _vandermonde_rows(op, v, x, L, out64)


def _check_ssm_params(op, log_dt, A, B, C, discretization, c_lead: int, want_C=None):
    """Validate log_dt (H,), A (H, N), B (H, N), C (*lead, H, N) with len(lead) <= c_lead."""
    _check_real(op, "log_dt", log_dt, (torch.float32, torch.float64))
    _check_complex(op, "A", A)
    _check_complex(op, "B", B)
    _check_complex(op, "C", C)
    if discretization not in ("zoh", "bilinear"):
        _fail(op, f"discretization must be 'zoh' or 'bilinear', got {discretization!r}")
    if A.dim() != 2:
        _fail(op, f"A must have shape (H, N), got {tuple(A.shape)}")
    H, N = A.shape
    if log_dt.shape != (H,):
        _fail(op, f"log_dt must have shape (H,) = ({H},) matching A (H, N) = {tuple(A.shape)}, got {tuple(log_dt.shape)}")
    if B.shape != A.shape:
        _fail(op, f"B must have the shape of A (H, N) = {tuple(A.shape)}, got {tuple(B.shape)}")
    if C.dim() < 2 or C.dim() > 2 + c_lead or tuple(C.shape[-2:]) != (H, N):
        want = want_C or {0: "(H, N)", 1: "(H, N) or (C_out, H, N)", 2: "(2, H, N) or (C_out, 2, H, N)"}[c_lead]
        _fail(op, f"C must have shape {want} with (H, N) = {(H, N)}, got {tuple(C.shape)}")
    _same_device(op, {"A": A, "log_dt": log_dt, "B": B, "C": C})
    _library.check_finite(f"geoops.ssm.{op}", {"log_dt": log_dt, "A": A, "B": B, "C": C})
    if _library.concrete(A) and A.numel() and _stability_checked(A) and bool((A.real >= 0).any()):
        _fail(op, "A must have negative real parts (Re A < 0): the SSM must be stable, else Abar**l grows "
                  "without bound along the sequence and the ZOH factor (exp(dt A) - 1)/A is singular at A = 0; "
                  f"max Re A = {A.real.max().item():g}")
    return H, N


def _stability_checked(A: torch.Tensor) -> bool:
    """Whether the Re A < 0 check reads A: always on the CPU (H N values); on other devices only under the debug
    switch (GEOOPS_CHECK=1), since reading the result waits for a GPU on every call (the largest host cost left of
    s4d_kernel / ssm_conv there).  Meta / fake tensors are never read (_library.concrete)."""
    return A.device.type == "cpu" or _backend.checks_enabled()


def discretize(log_dt, A, B, C, discretization: str = "zoh"):
    """(v, x) of the discretised diagonal SSM, in complex128: ``K = vandermonde(v, x, L)``.

    x = log Abar: ``dt A`` (ZOH) or ``2 artanh(dt A / 2)`` (bilinear); v = C~ (see the module docstring).
    One C++ pass over (H, N) in complex double, forward and backward (the chain rule to log_dt, A, B, C is
    hand-written); :func:`geoops.reference.ssm.discretize_log` is the readable torch version.

    Args: log_dt (H,) float32/float64; A, B (H, N) complex, Re A < 0; C (H, N), (C_out, H, N), (2, H, N) or
    (C_out, 2, H, N) complex (v has C's shape); discretization "zoh" or "bilinear".
    """
    _check_ssm_params("discretize", log_dt, A, B, C, discretization, 2, "(H, N), (C_out, H, N) or (C_out, 2, H, N)")
    return _discretize(log_dt, A, B, C, discretization)


def _discretize(log_dt, A, B, C, discretization):
    """discretize without the argument checks (the callers have run them)."""
    if _library.autograd_wanted(log_dt, A, B, C):
        return _apply("discretize", DiscretizeFn, log_dt, A, B, C, discretization)
    return _ops.ssm_discretize_fwd(log_dt, A, B, C, discretization)


def s4d_kernel(log_dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, L: int,
               discretization: str = "zoh") -> torch.Tensor:
    """The S4D convolution kernel ``K[..., h, l] = 2 Re sum_n C[..., h, n] Bbar[h, n] Abar[h, n]**l``.

    Args:
        log_dt: (H,) float32/float64, the log step size per channel (dt = exp(log_dt)).
        A: (H, N) complex, Re A < 0 (stable modes; half-spectrum convention: N of the 2N conjugate modes).
        B: (H, N) complex.
        C: (H, N) or (C_out, H, N) complex.
        L: kernel length (int >= 0).
        discretization: "zoh" (Abar = exp(dt A), Bbar = (Abar - 1)/A B) or "bilinear"
            (Abar = (1 + dt A/2)/(1 - dt A/2), Bbar = dt/(1 - dt A/2) B).

    Returns:
        (H, L) or (C_out, H, L) real: float64 if any input is float64/complex128, else float32.

    Gradients flow to log_dt, A, B, C (complex ones in torch's convention).  The discretisation runs in
    complex double (O(H N), one C++ pass forward and backward), the kernel through :func:`vandermonde` (no (H, N, L) tensor;
    memory O(H (N sqrt L + L)) forward and backward).  Same values as state-spaces' S4D kernel
    ``2 * einsum('hn,hnl->hl', C * (exp(dtA) - 1) / A, exp(dtA.unsqueeze(-1) * arange(L))).real`` (with B
    folded in), to fp32 rounding, where that recipe's own fp32 phase error allows.
    """
    op = "s4d_kernel"
    L = _check_L(op, L)
    _check_ssm_params(op, log_dt, A, B, C, discretization, 1)
    out64 = log_dt.dtype == torch.float64 or torch.complex128 in (A.dtype, B.dtype, C.dtype)
    if _use_reference(A.device):
        cd = torch.complex128 if out64 else torch.complex64
        rd = torch.float64 if out64 else torch.float32
        return _ref.s4d_kernel(log_dt.to(rd), A.to(cd), B.to(cd), C.to(cd), L, discretization)
    v, x = _discretize(log_dt, A, B, C, discretization)
    return _vandermonde_rows(op, v, x, L, out64)  # v has C's shape (C_out, H, N) or (H, N)


def _check_like_u(op, name, t, u):
    """k and D (fftconv, ssm_conv) take u's dtype, or float32 for a float16 / bfloat16 u: no silent cast
    (a float64 D with a float32 u is refused as torch's conv refuses a bias of another dtype)."""
    half = u.dtype in (torch.float16, torch.bfloat16)
    if t is not None and t.dtype != u.dtype and not (half and t.dtype == torch.float32):
        _fail(op, f"{name} must have u's dtype {u.dtype}" + (" or float32" if half else "") + f", got {t.dtype}",
              TypeError)


def _fftconv_args(op, u, k, D, bidirectional):
    _check_real(op, "u", u)
    _check_real(op, "k", k)
    if D is not None:
        _check_real(op, "D", D)
    if not isinstance(bidirectional, bool):
        _fail(op, f"bidirectional must be a bool, got {type(bidirectional).__name__}", TypeError)
    if u.dim() != 3:
        _fail(op, f"u must have shape (B, H, L), got {tuple(u.shape)}")
    Bsz, H, L = u.shape
    base = 3 if bidirectional else 2
    want = "(2, H, L) or (C, 2, H, L)" if bidirectional else "(H, L) or (C, H, L)"
    if k.dim() not in (base, base + 1):
        _fail(op, f"k must have shape {want} (bidirectional={bidirectional}), got {tuple(k.shape)}")
    if bidirectional and k.shape[-3] != 2:
        _fail(op, f"k must have shape {want}: axis -3 holds the causal and the anti-causal kernel and must have "
                  f"size 2, got {tuple(k.shape)}")
    if k.shape[-2] != H:
        _fail(op, f"k has {k.shape[-2]} channels (axis -2) but u has H = {H}: shapes {tuple(k.shape)} and {tuple(u.shape)}")
    if k.shape[-1] != L:
        _fail(op, f"k has length {k.shape[-1]} but u has length L = {L}: the kernel length must equal the "
                  f"sequence length (pad or truncate k)")
    has_c = k.dim() == base + 1
    Cn = k.shape[0] if has_c else 1
    if D is not None:
        okD = (D.shape == (H,)) or (has_c and D.shape == (Cn, H))
        if not okD:
            _fail(op, f"D must have shape (H,) = ({H},)" + (f" or (C, H) = ({Cn}, {H})" if has_c else "")
                  + f", got {tuple(D.shape)}")
    for name, t in (("k", k), ("D", D)):
        _check_like_u(op, name, t, u)
    _same_device(op, {"u": u, "k": k, "D": D})
    _library.check_finite(f"geoops.ssm.{op}", {"u": u, "k": k, "D": D})
    return Bsz, H, L, has_c, Cn


def fftconv(u: torch.Tensor, k: torch.Tensor, D: Optional[torch.Tensor] = None, *,
            bidirectional: bool = False) -> torch.Tensor:
    """Long convolution by a real FFT: ``y[b, h, t] = sum_{l<=t} k[h, l] u[b, h, t-l] + D[h] u[b, h, t]``.

    Args:
        u: (B, H, L) float16/bfloat16/float32/float64.
        k: (H, L) or (C, H, L) (C output channels per input channel); with ``bidirectional=True``
            (2, H, L) or (C, 2, H, L): causal kernel k[..., 0, :, :], anti-causal k[..., 1, :, :]
            (state-spaces' convention, see the module docstring).  u's dtype, or float32 for half u.
        D: None, (H,) or (C, H): the skip term.
        bidirectional: see k.

    Returns:
        (B, H, L), or (B, C, H, L) when k has a C axis, in u's dtype.

    Any L (FFT size n = the smallest 2-3-5 size >= 2L - 1, not only powers of two).  Half inputs are computed in float32 (fp32 accumulation).
    Gradients flow to u, k and D: ``du = irfft(conj(K^) G^)[:L] + D g``, ``dk = irfft(sum_b conj(U^_b) G^_b)[:L]``
    (summed over the batch before the inverse FFT), ``dD = sum g u``.  The spectral product, the sums, the
    truncation and the skip term are fused (no padded copies, no separate D*u pass).
    """
    op = "fftconv"
    Bsz, H, L, has_c, Cn = _fftconv_args(op, u, k, D, bidirectional)
    if _use_reference(u.device):
        cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
        y = _ref.fftconv(u.to(cdt), k.to(cdt), None if D is None else D.to(cdt), bidirectional)
        return y.to(u.dtype)
    k4 = k.reshape(Cn, 2 if bidirectional else 1, H, L)
    D2 = None if D is None else (D if D.dim() == 2 else D.unsqueeze(0)).expand(Cn, H)
    if D2 is not None and D2.stride(0) == 0 and Cn > 1:
        D2 = D2.contiguous()
    # a strided u (S4D(transposed=False)'s (B, L, H) input seen as (B, H, L)) is made contiguous once, here, and
    # that copy is what the Function saves: the kernels' own copy ran in the forward and again in the backward
    u = u.contiguous()
    if _library.autograd_wanted(u, k, D):
        y = _apply(op, FftconvFn, u, k4, D2)[0]
    else:
        y, _ = _ops.fftconv_fwd(u, k4, D2, False)
    return y if has_c else y.squeeze(1)


def ssm_conv(u: torch.Tensor, log_dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor] = None, discretization: str = "zoh", bidirectional: bool = False) -> torch.Tensor:
    """The S4D layer's convolution: ``fftconv(u, s4d_kernel(log_dt, A, B, C, L), D, bidirectional=...)``.

    Args:
        u: (B, H, L); log_dt (H,); A, B (H, N) complex; C (H, N) or (C_out, H, N) complex — with
            ``bidirectional=True`` (2, H, N) or (C_out, 2, H, N) (the causal and anti-causal output matrices);
            D None, (H,) or (C_out, H).
    Returns:
        (B, H, L) or (B, C_out, H, L) in u's dtype.

    Fused: the kernel is generated (blocked Vandermonde GEMM per channel, float32 -- float64 for float64 u)
    straight into the zero-padded FFT input buffer and transformed once per channel; no (C, H, L) kernel
    tensor exists, only its spectrum (kept for the backward).  The backward hands each channel's dK row,
    still in cache, to the Vandermonde backward.  Same values and gradients as
    ``fftconv(u, s4d_kernel(log_dt, A, B, C, L), D, bidirectional=...)``.
    """
    op = "ssm_conv"
    _check_real(op, "u", u)
    if u.dim() != 3:
        _fail(op, f"u must have shape (B, H, L), got {tuple(u.shape)}")
    _check_ssm_params(op, log_dt, A, B, C, discretization, 2 if bidirectional else 1)
    if not isinstance(bidirectional, bool):
        _fail(op, f"bidirectional must be a bool, got {type(bidirectional).__name__}", TypeError)
    if bidirectional and (C.dim() < 3 or C.shape[-3] != 2):
        _fail(op, f"C must have shape (2, H, N) or (C_out, 2, H, N) with bidirectional=True, got {tuple(C.shape)}")
    if A.shape[0] != u.shape[1]:
        _fail(op, f"A has H = {A.shape[0]} channels but u has {u.shape[1]} (u is (B, H, L))")
    _same_device(op, {"u": u, "A": A})
    H, N = A.shape
    L = u.shape[-1]
    kd = torch.float64 if u.dtype == torch.float64 else torch.float32
    has_c = C.dim() == (4 if bidirectional else 3)
    Cn = C.shape[0] if has_c else 1
    if D is not None:
        _check_real(op, "D", D)
        if not (D.shape == (H,) or (has_c and D.shape == (Cn, H))):
            _fail(op, f"D must have shape (H,) = ({H},)" + (f" or (C_out, H) = ({Cn}, {H})" if has_c else "")
                  + f", got {tuple(D.shape)}")
        _check_like_u(op, "D", D, u)
        _same_device(op, {"u": u, "D": D})
    _library.check_finite(f"geoops.ssm.{op}", {"u": u, "D": D})
    if D is not None:
        D = D.to(kd)  # u's dtype, or float32 (the kernels' dtype) for half u
    if _use_reference(u.device):
        Cf = C.flatten(0, -3) if C.dim() > 2 else C
        # K in u's precision at least, as the fused kernels build it (float64 for a float64 u, whatever the
        # parameters' dtype): s4d_kernel of float32 parameters alone would round K to float32
        K = s4d_kernel(log_dt.to(_args.promote_types(log_dt.dtype, kd)), A, B, Cf, L, discretization)
        if C.dim() > 2:
            K = K.reshape(*C.shape[:-2], H, L)
        return fftconv(u, K.to(kd), D, bidirectional=bidirectional)
    v, x = _discretize(log_dt, A, B, C, discretization)
    v4 = v.reshape(Cn, 2 if bidirectional else 1, H, N)
    D2 = None if D is None else (D if D.dim() == 2 else D.unsqueeze(0)).expand(Cn, H).contiguous()
    u = u.contiguous()  # one copy of a strided u, saved for the backward (see fftconv)
    if _library.autograd_wanted(u, v4, x, D2):
        y = _apply(op, SsmConvFn, u, v4, x, D2)[0]
    else:
        y, _, _ = _ops.ssm_conv_fwd(u, v4, x, D2, False, False)  # forward only: no kernel spectrum kept
    return y if has_c else y.squeeze(1)
