"""S4D: a drop-in for state-spaces' standalone S4D layer, running on geoops.ssm kernels.

Same constructor, parameters (names, shapes, S4D-Lin initialisation, per-parameter ``_optim`` hints)
and forward contract as ``models/s4/s4d.py`` of state-spaces::

    layer = S4D(d_model=256, d_state=64, dropout=0.1, transposed=True, lr=1e-3)
    y, state = layer(u)          # u (B, H, L) -> y (B, H, L), state None

The layer runs :func:`geoops.ssm.ssm_conv` (the kernel generated straight into the FFT convolution's
input buffer: no (H, N, L) tensor, fp32-accurate phases, the D skip term fused); ``layer.kernel(L)`` still
returns the (H, L) kernel via :func:`geoops.ssm.s4d_kernel`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _args
from .. import ssm as _ssm

__all__ = ["S4D", "S4DKernel", "DropoutNd"]


class DropoutNd(nn.Module):
    """Dropout with the mask tied along the sequence axes (one draw per (batch, channel)), as state-spaces'."""

    def __init__(self, p: float = 0.5, tie: bool = True, transposed: bool = True):
        super().__init__()
        if p < 0 or p >= 1:
            raise ValueError(f"DropoutNd: p must be in [0, 1), got {p}")
        self.p, self.tie, self.transposed = p, tie, transposed

    def forward(self, X):
        if not self.training or self.p == 0:
            return X
        if not self.transposed:
            X = X.movedim(-1, 1)
        shape = X.shape[:2] + (1,) * (X.dim() - 2) if self.tie else X.shape
        keep = torch.rand(shape, device=X.device) < 1.0 - self.p
        X = X * keep * (1.0 / (1 - self.p))
        return X if self.transposed else X.movedim(1, -1)


def _kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """t, or t upcast to float32 when it is a half-precision float (the SSM kernels take float32 / float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_ints(owner: str, **named) -> list:
    """The sizes as Python ints (any integer operator.index takes), after a TypeError naming the argument for one
    that is not an int (else torch fails deep inside, in torch.randn)."""
    return [_args.int_arg(owner, name, val) for name, val in named.items()]


class S4DKernel(nn.Module):
    """The diagonal SSM kernel generator: K (H, L) = s4d_kernel(log_dt, A, 1, C, L) with ZOH.

    Parameters (state-spaces' names): ``log_dt`` (H,), ``C`` (H, N/2, 2) (view_as_real of complex),
    ``log_A_real`` (H, N/2), ``A_imag`` (H, N/2); A = -exp(log_A_real) + i A_imag (S4D-Lin:
    -1/2 + i pi n); log dt ~ U[log dt_min, log dt_max].  ``lr`` = 0 makes log_dt and A buffers, another
    value is attached as ``param._optim = {"lr": lr, "weight_decay": 0.0}`` (C is a normal parameter).
    """

    def __init__(self, d_model: int, N: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, lr=None):
        super().__init__()
        d_model, N = _check_ints("S4DKernel", d_model=d_model, **{"N (d_state)": N})
        if N < 2 or N % 2:
            raise ValueError(f"S4DKernel: N (d_state) must be an even number >= 2 (N/2 conjugate pairs), got {N}")
        self.dt_min, self.dt_max = dt_min, dt_max
        init = self._initial_values(d_model, N)
        self.C = nn.Parameter(init["C"])
        for name in ("log_dt", "log_A_real", "A_imag"):
            self._register(name, init[name], lr)

    def _initial_values(self, H: int, N: int) -> dict:
        """S4D-Lin's initial values (log_dt drawn before C, as state-spaces)."""
        dt_min, dt_max = getattr(self, "dt_min", 0.001), getattr(self, "dt_max", 0.1)
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat))
        # (the default dtype, as log_A_real and state-spaces' A_imag: torch.set_default_dtype(float64) gives float64)
        A_imag = math.pi * torch.arange(N // 2, dtype=torch.get_default_dtype()).expand(H, N // 2).clone()
        return {"log_dt": log_dt, "C": C, "log_A_real": torch.log(0.5 * torch.ones(H, N // 2)), "A_imag": A_imag}

    def reset_parameters(self) -> None:
        """Re-draw the S4D-Lin initialisation in place (log_dt, C, and A's parts, parameters or buffers): with
        ``to_empty`` this completes deferred (meta-device) initialisation."""
        H, N2 = self.log_A_real.shape
        with torch.no_grad():
            for name, value in self._initial_values(H, 2 * N2).items():
                getattr(self, name).copy_(value)

    def _register(self, name, tensor, lr=None):
        if lr == 0.0:
            self.register_buffer(name, tensor)
        else:
            self.register_parameter(name, nn.Parameter(tensor))
            optim = {"weight_decay": 0.0}
            if lr is not None:
                optim["lr"] = lr
            setattr(getattr(self, name), "_optim", optim)
            # also on the module: a parameter replaced by a new object loses its attributes (copy.deepcopy --
            # torch's Parameter.__deepcopy__ copies none, pickle does --, load_state_dict(assign=True) as in
            # meta-device initialisation, dtype / device conversion with torch.__future__'s overwrite or swap
            # flags), and the optimizer recipe would then silently decay log_dt and A at the default lr
            self.__dict__.setdefault("_optim_hints", {})[name] = optim

    def _restore_optim_hints(self):
        for name, hint in self.__dict__.get("_optim_hints", {}).items():
            p = self._parameters.get(name)
            if p is not None and getattr(p, "_optim", None) is None:
                p._optim = hint

    def __setstate__(self, state):
        super().__setstate__(state)
        self._restore_optim_hints()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._restore_optim_hints()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._restore_optim_hints()

    def ssm_params(self):
        """(log_dt, A, B, C) of the diagonal SSM (B = 1, as in state-spaces' S4D).

        Parameters stored in float16 / bfloat16 (after ``.half()`` / ``.bfloat16()``) are upcast to float32
        here: the kernels take float32 / float64 SSM parameters, and bfloat16 has no complex dtype; A's two
        parts are promoted to one precision.
        """
        log_dt, C, log_A_real, A_imag = (_kernel_dtype(t) for t in (self.log_dt, self.C, self.log_A_real, self.A_imag))
        C = torch.view_as_complex(C)
        rd = _args.promote_types(log_A_real.dtype, A_imag.dtype)  # torch.complex takes one dtype (mixed: float64)
        A = torch.complex(-torch.exp(log_A_real.to(rd)), A_imag.to(rd))
        return log_dt, A, torch.ones_like(A), C

    def forward(self, L: int) -> torch.Tensor:
        return _ssm.s4d_kernel(*self.ssm_params(), L, "zoh")

    def extra_repr(self) -> str:
        H, N2 = self.log_A_real.shape
        return f"d_model={H}, N={2 * N2}"


class S4D(nn.Module):
    """Standalone S4D layer (state-spaces' ``S4D``): kernel -> FFT convolution + D skip -> GELU -> dropout
    -> 1x1 Conv (H -> 2H) -> GLU.

    Args: d_model (H), d_state (N, even; N/2 complex modes), dropout, transposed (input (B, H, L) if True,
    (B, L, H) if False), and the kernel's keyword arguments (dt_min, dt_max, lr).
    forward(u) -> (y, None), y of u's shape.
    """

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, transposed: bool = True, **kernel_args):
        super().__init__()
        d_model, d_state = _check_ints("S4D", d_model=d_model, d_state=d_state)
        self.h = d_model
        self.n = d_state
        self.d_output = self.h
        self.transposed = transposed
        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = S4DKernel(self.h, N=self.n, **kernel_args)
        self.activation = nn.GELU()
        self.dropout = DropoutNd(dropout) if dropout > 0.0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))

    def reset_parameters(self) -> None:
        """Re-draw D ~ N(0, 1) (this module's own parameter; the kernel and the output convolution have their own
        reset_parameters, as torch's layers: ``for m in model.modules()`` resets all, in construction order)."""
        with torch.no_grad():
            self.D.copy_(torch.randn(self.h))

    def forward(self, u, **kwargs):
        if not self.transposed:
            u = u.transpose(-1, -2)
        kd = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32  # fp32 for half u
        # the fused pair: the kernel goes straight into the FFT buffer (same values as self.kernel(L) + fftconv)
        y = _ssm.ssm_conv(u, *self.kernel.ssm_params(), self.D.to(kd))
        y = self.dropout(self.activation(y))
        if y.shape[-1] == 0:
            # L = 0: torch's Conv1d refuses an empty sequence ("Kernel size can't be greater than actual input
            # size"); the 1x1 conv + GLU act per position, so run them on one zero column and keep none of it
            # (y (B, H, 0), zero-size input gradients, zero parameter gradients)
            y = self.output_linear(torch.nn.functional.pad(y, (0, 1)))[..., :0]
        else:
            y = self.output_linear(y)
        if not self.transposed:
            y = y.transpose(-1, -2)
        return y, None

    def extra_repr(self) -> str:
        return f"d_model={self.h}, d_state={self.n}, transposed={self.transposed}"
