"""torch.nn modules of Poincaré-ball networks (Poincaré ResNet / HypLL's layers) on geoops kernels.

Plain tensors in and out (no ManifoldTensor): images are ``(B, C, H, W)`` with the points along the channels
(dim 1), vectors ``(..., D)`` with the points along the last dimension.  Every layer takes the ball, a
:class:`PoincareBall` module whose ``forward()`` returns the curvature magnitude ``c`` (HypLL's ``Curvature``:
``softplus(value)`` by default, learnable on request), so that one ball is shared by a whole network::

    ball = PoincareBall(1.0)
    block = torch.nn.Sequential(PoincareConv2d(16, 16, 3, ball, padding=1), PoincareBatchNorm2d(16, ball),
                                PoincareReLU(ball))

Parameter layouts are HypLL's (``z`` is ``(in_features, out_features)``, one hyperplane per column), so its
the parameters map one to one: copy HypLL's ``z.tensor`` / ``weights.tensor`` and ``bias`` into ours.
"""
from __future__ import annotations

import numbers
import weakref
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.functional import softplus

from .. import _args, _backend, _library
from .. import poincare as gp

__all__ = [
    "PoincareBall", "PoincareLinear", "PoincareConv2d", "PoincareReLU", "PoincareBatchNorm", "PoincareBatchNorm2d",
    "PoincareFlatten", "PoincareMaxPool2d", "PoincareAvgPool2d", "PoincareEmbedding", "MobiusLinear", "PoincareMLR",
    "poincare_residual",
]


class PoincareBall(nn.Module):
    """The ball of curvature -c: ``forward()`` returns ``c = constraining_strategy(value)`` (softplus by default,
    as HypLL's Curvature); ``requires_grad=True`` learns it."""

    def __init__(self, value: float = 1.0, constraining_strategy: Callable = softplus, requires_grad: bool = False,
                 device=None, dtype=None):
        super().__init__()
        # (a floating tensor's dtype, else the default dtype, as HypLL's Curvature: a float64 model built under
        # set_default_dtype(float64) gets a float64 c)
        dt = dtype if dtype is not None else value.dtype if isinstance(value, torch.Tensor) and \
            value.is_floating_point() else torch.get_default_dtype()
        self.value = nn.Parameter(torch.as_tensor(value, dtype=dt, device=device).detach().clone(),
                                  requires_grad=requires_grad)
        self.constraining_strategy = constraining_strategy
        self._c_cache = None
        # the constructor's value (a CPU copy, not state: a ball built under torch.device("meta") and materialised
        # with to_empty gets it back, as does reset_parameters; None when it was itself a meta tensor)
        self._init_value = None if isinstance(value, torch.Tensor) and value.is_meta else \
            torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value, dtype=dt,
                            device="cpu").clone()

    def reset_parameters(self) -> None:
        """Set ``value`` back to the constructor's value."""
        init = getattr(self, "_init_value", None)
        if init is None:
            raise RuntimeError("PoincareBall.reset_parameters: the constructor's value is unknown (the ball was built "
                               "from a meta tensor, or unpickled from an older geoops); set ball.value under "
                               "torch.no_grad() or load a state_dict instead")
        with torch.no_grad():
            self.value.copy_(init)

    def _apply(self, fn, recurse=True):
        # to_empty would leave the value (a hyperparameter shared by every layer, fixed by default) as uninitialised
        # memory: torch.nn.utils.skip_init(PoincareLinear, 4, 6, ball) runs to_empty over the layer, so over the
        # shared ball too, and layers whose reset_parameters read c (PoincareEmbedding) may run before the ball's
        # own reset_parameters in a ``for m in model.modules()`` loop.  Every other _apply of torch (to, cuda, cpu,
        # half, double, ...) keeps the values, so the old value is copied into the new tensor whenever fn replaces
        # the value (while the old one is still at hand: fn's argument), and nothing is done or allocated when fn
        # returns the value itself (a no-op .to() / .float() / .cpu(): session 38; session 37 cloned the value before
        # every _apply).  A ball built on the meta device gets its constructor's value.
        value = self._parameters.get("value")
        meta = value is not None and value.is_meta

        def keep_value(t):
            new = fn(t)
            if t is value and not meta and isinstance(new, torch.Tensor) and new is not t and not new.is_meta \
                    and new.shape == t.shape and (new.device != t.device or new.data_ptr() != t.data_ptr()):
                with torch.no_grad():
                    new.copy_(t)
            return new

        out = super()._apply(keep_value if value is not None else fn, recurse)
        if meta and not self.value.is_meta and getattr(self, "_init_value", None) is not None:
            self.reset_parameters()
        return out

    def forward(self) -> torch.Tensor:
        v = self.value
        if (v.requires_grad and torch.is_grad_enabled()) or not _library.direct_call_ok(v):
            return self.constraining_strategy(v)
        # a curvature without gradient (the usual fixed ball): computed once per value of the parameter (its
        # version counter, storage, dtype and device, the strategy, and on the CPU the value itself: an in-place
        # change through ``.data`` keeps the version counter) and shared by every layer call, marked as checked
        # for geoops.poincare (no per-call softplus, positivity check, negation).  Off the CPU the value is not
        # read (item() would be a device sync per layer call) unless GEOOPS_CHECK is on: there an in-place change
        # through ``.data`` is not seen (change it under torch.no_grad() instead, as optimizers and
        # load_state_dict do, which counts a version)
        try:
            key = (v._version, v.data_ptr(), v.dtype, v.device, self.constraining_strategy,
                   v.item() if v.numel() == 1 and (gp._host_read_free(v) or _backend.checks_enabled()) else None)
        except RuntimeError:  # an inference tensor (a ball built under torch.inference_mode()): no version counter
            return self.constraining_strategy(v)
        hit = getattr(self, "_c_cache", None)
        # (and the very tensor the entry was computed from, alive: off the CPU the value is not read, and a new
        # tensor at a freed value's address -- the CUDA caching allocator's reuse: a parametrized value recomputed
        # per call, functional_call with per-step tensors -- can have the same version counter)
        if hit is not None and hit[0] == key and hit[1]._version == hit[2] and len(hit) > 3 and hit[3]() is v:
            return hit[1]
        # (a normal tensor even when this first call runs under torch.inference_mode(): later training calls use it;
        # no_grad inside it, as torch.inference_mode(False) turns grad mode back on: a learnable value evaluated
        # under torch.no_grad() would otherwise cache softplus's graph, and deepcopy of the model would fail)
        with torch.inference_mode(False), torch.no_grad():
            c = gp._mark_checked_curvature(self.constraining_strategy(v))  # (the mark's -c too)
        self._c_cache = (key, c, c._version, weakref.ref(v))
        return c

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_c_cache"] = None  # (holds a weak reference: not picklable; recomputed at the first call)
        return state

    def extra_repr(self) -> str:
        v = self.value
        if v.numel() != 1 or v.device.type == "meta":
            return f"value of shape {tuple(v.shape)}, requires_grad={v.requires_grad}"
        with torch.no_grad():
            c = self.constraining_strategy(v)
        name = getattr(self.constraining_strategy, "__name__", repr(self.constraining_strategy))
        return f"value={v.item():g}, c={name}(value)={c.item():.6g}, requires_grad={v.requires_grad}"


def _init_hyperplanes(z: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """HypLL's (and Poincaré ResNet's) rule: z = I/2 when in <= out (the layer is then the identity on its first
    `in` outputs), else N(0, (2 in out)^-1/2); bias 0."""
    n, m = z.shape
    with torch.no_grad():
        if n <= m:
            z.copy_(0.5 * torch.eye(n, m))
        else:
            nn.init.normal_(z, mean=0.0, std=(2 * n * m) ** -0.5)
        if bias is not None:
            bias.zero_()


def _check_size(owner: str, name: str, val, minimum: int = 1) -> int:
    """``val`` as a Python int (any integer operator.index takes, not a bool), after a TypeError / ValueError naming
    the argument for one that is not an int >= minimum (else torch fails deep inside, in torch.empty, or the
    initialisation divides by zero)."""
    return _args.int_arg(owner, name, val, lo=minimum, what=f">= {minimum}")


def _check_ball(owner: str, ball) -> None:
    if not isinstance(ball, nn.Module):
        raise TypeError(f"{owner}: ball must be a PoincareBall module (one shared by the layers, whose forward() "
                        f"returns c), got {type(ball).__name__}")


def _pair(owner: str, name: str, val) -> tuple:
    """An int or a pair of ints >= 1 (torch.nn.Conv2d's kernel_size) as a pair."""
    pair = tuple(val) if isinstance(val, (tuple, list)) else (val, val)
    if len(pair) != 2:
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {val!r}")
    return tuple(_check_size(owner, name, v) for v in pair)


def _check_momentum(owner: str, momentum) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"{owner}: momentum must be a float in [0, 1], got {type(momentum).__name__} (None, "
                        f"torch's cumulative moving average, is not supported)")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{owner}: momentum must be in [0, 1], got {momentum}")


class PoincareLinear(nn.Module):
    """Poincaré fully-connected layer (HypLL's HLinear): points along the last dimension, ``z`` (in, out)."""

    def __init__(self, in_features: int, out_features: int, ball: PoincareBall, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        in_features = _check_size("PoincareLinear", "in_features", in_features)
        out_features = _check_size("PoincareLinear", "out_features", out_features)
        _check_ball("PoincareLinear", ball)
        self.in_features, self.out_features, self.ball = in_features, out_features, ball
        self.z = nn.Parameter(torch.empty(in_features, out_features, **fk))
        self.bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the hyperplane normals z and biases (HypLL's initialisation)."""
        _init_hyperplanes(self.z, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"PoincareLinear: x has {x.shape[-1] if x.dim() else 'no'} entries along its last "
                             f"(manifold) dimension (shape {tuple(x.shape)}), expected in_features={self.in_features}")
        return gp.poincare_fc(x, self.z, self.bias, c=self.ball())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PoincareConv2d(nn.Module):
    """Poincaré 2D convolution (HypLL's HConvolution2d, Poincaré ResNet): x (B, C, H, W), points along dim 1.

    ``weights`` is (in_channels * kh * kw, out_channels) (HypLL's name and layout).  ``id_init=True`` with
    ``in_channels <= out_channels`` initialises the centre tap as I/2 and every other tap as 0, so that the
    layer starts as the identity up to the beta-rescaling of the patch (Poincaré ResNet's identity
    initialisation); otherwise HypLL's rule (:func:`_init_hyperplanes`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, ball: PoincareBall, bias: bool = True,
                 stride: int = 1, padding: int = 0, id_init: bool = True, device=None, dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        in_channels = _check_size("PoincareConv2d", "in_channels", in_channels)
        out_channels = _check_size("PoincareConv2d", "out_channels", out_channels)
        _check_ball("PoincareConv2d", ball)
        self.in_channels, self.out_channels, self.ball = in_channels, out_channels, ball
        self.kernel_size = _pair("PoincareConv2d", "kernel_size", kernel_size)  # a list too, as torch.nn.Conv2d
        # stride / padding: an int or a pair, checked here (an integer of any kind kept as a Python int)
        stride = _pair("PoincareConv2d", "stride", stride) if isinstance(stride, (tuple, list)) else \
            _check_size("PoincareConv2d", "stride", stride)
        padding = tuple(_check_size("PoincareConv2d", "padding", p, 0) for p in padding) if isinstance(
            padding, (tuple, list)) else _check_size("PoincareConv2d", "padding", padding, 0)
        self.stride, self.padding, self.id_init = stride, padding, id_init
        kv = self.kernel_size[0] * self.kernel_size[1]
        self.weights = nn.Parameter(torch.empty(kv * in_channels, out_channels, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the kernel: identity initialisation (Poincaré ResNet) when ``id_init`` and in_channels <= out_channels,
        else HypLL's hyperplane initialisation."""
        kh, kw = self.kernel_size
        if self.id_init and self.in_channels <= self.out_channels:
            with torch.no_grad():
                w = torch.zeros(self.in_channels, kh * kw, self.out_channels)
                w[:, (kh // 2) * kw + kw // 2, :] = 0.5 * torch.eye(self.in_channels, self.out_channels)
                self.weights.copy_(w.reshape(-1, self.out_channels))
                if self.bias is not None:
                    self.bias.zero_()
        else:
            _init_hyperplanes(self.weights, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PoincareConv2d: x must be (B, C, H, W) with C = in_channels = {self.in_channels} "
                             f"(the manifold dimension), got shape {tuple(x.shape)}")
        return gp.poincare_conv2d(x, self.weights, self.bias, c=self.ball(), kernel_size=self.kernel_size,
                                  padding=self.padding, stride=self.stride)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, id_init={self.id_init}")


class PoincareReLU(nn.Module):
    """expmap0(relu(logmap0(x))) along ``dim`` (HypLL's HReLU; dim=1 for images, -1 for vectors)."""

    def __init__(self, ball: PoincareBall, dim: int = 1):
        super().__init__()
        self.ball, self.dim = ball, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gp.poincare_relu(x, c=self.ball(), dim=self.dim if x.dim() > 1 else -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def poincare_residual(x: torch.Tensor, y: torch.Tensor, ball: PoincareBall, dim: int = 1) -> torch.Tensor:
    """Poincaré residual connection: Möbius addition x (+) y along ``dim``."""
    return gp.mobius_add(x, y, c=ball(), dim=dim)


class PoincareBatchNorm(nn.Module):
    """Poincaré midpoint batch norm (HypLL's HBatchNorm(use_midpoint=True)) of rows (N, features).

    Parameters as HypLL: ``bias`` (features,) in the tangent space at the origin (the output centre is
    expmap0(bias)), ``weight`` a scalar (the target variance).  With ``track_running_stats`` the module keeps
    ``running_mean`` (a point of the ball, moved along the geodesic towards each batch midpoint by
    ``momentum``) and ``running_var``; ``eval()`` normalises with them (HypLL has no eval mode)."""

    def __init__(self, features: int, ball: PoincareBall, momentum: float = 0.1, track_running_stats: bool = True,
                 device=None, dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        owner = type(self).__name__
        features = _check_size(owner, "features", features)
        _check_ball(owner, ball)
        _check_momentum(owner, momentum)
        self.features, self.ball, self.momentum = features, ball, momentum
        self.bias = nn.Parameter(torch.zeros(features, **fk))
        self.weight = nn.Parameter(torch.ones((), **fk))
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(features, **fk))
            self.register_buffer("running_var", torch.ones((), **fk))
        else:
            self.running_mean = self.running_var = None

    def reset_running_stats(self) -> None:
        """running_mean to the origin, running_var to 1 (torch.nn.BatchNorm's method)."""
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1.0)

    def reset_parameters(self) -> None:
        """The running statistics, ``bias`` (0: the output centre at the origin) and ``weight`` (1)."""
        self.reset_running_stats()
        with torch.no_grad():
            self.bias.zero_()
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"PoincareBatchNorm: x must be (N, features={self.features}), got shape {tuple(x.shape)}")
        return gp.batch_norm(x, self.bias, self.weight, c=self.ball(), running_mean=self.running_mean,
                             running_var=self.running_var, training=self.training, momentum=self.momentum)

    def extra_repr(self) -> str:
        return f"{self.features}, momentum={self.momentum}, track_running_stats={self.track_running_stats}"


class PoincareBatchNorm2d(PoincareBatchNorm):
    """:class:`PoincareBatchNorm` over (B, C, H, W) images with points along the channels (HypLL's HBatchNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.features:
            raise ValueError(f"PoincareBatchNorm2d: x must be (B, C, H, W) with C = features = {self.features} "
                             f"(the manifold dimension), got shape {tuple(x.shape)}")
        return gp.batch_norm2d(x, self.bias, self.weight, c=self.ball(), running_mean=self.running_mean,
                               running_var=self.running_var, training=self.training, momentum=self.momentum)


class PoincareFlatten(nn.Module):
    """HypLL's HFlatten (beta-concatenation when the manifold dimension ``man_dim`` is flattened)."""

    def __init__(self, ball: PoincareBall, start_dim: int = 1, end_dim: int = -1, man_dim: int = 1):
        super().__init__()
        self.ball, self.start_dim, self.end_dim, self.man_dim = ball, start_dim, end_dim, man_dim

    def forward(self, x):
        return gp.flatten(x, c=self.ball(), start_dim=self.start_dim, end_dim=self.end_dim, man_dim=self.man_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}, man_dim={self.man_dim}"


class PoincareMaxPool2d(nn.Module):
    """HypLL's HMaxPool2d: max pooling in the tangent space at the origin (points along dim 1)."""

    def __init__(self, kernel_size, ball: PoincareBall, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.ball, self.stride, self.padding = kernel_size, ball, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        return gp.max_pool2d(x, c=self.ball(), kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, ceil_mode=self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class PoincareAvgPool2d(nn.Module):
    """HypLL's HAvgPool2d(use_midpoint=True)."""

    def __init__(self, kernel_size, ball: PoincareBall, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.ball, self.stride, self.padding = kernel_size, ball, stride, padding

    def forward(self, x):
        return gp.avg_pool2d(x, c=self.ball(), kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class PoincareEmbedding(nn.Module):
    """Embedding table on the ball (HypLL's HEmbedding: rows initialised as expmap0 of N(0, 1) samples)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, ball: PoincareBall, device=None, dtype=None):
        super().__init__()
        num_embeddings = _check_size("PoincareEmbedding", "num_embeddings", num_embeddings, minimum=0)
        embedding_dim = _check_size("PoincareEmbedding", "embedding_dim", embedding_dim)
        _check_ball("PoincareEmbedding", ball)
        self.num_embeddings, self.embedding_dim, self.ball = num_embeddings, embedding_dim, ball
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self):
        """Re-initialise the embedding: standard normal tangent vectors mapped into the ball with expmap0."""
        with torch.no_grad():
            w = self.weight  # (drawn on its device, c brought there: skip_init builds it on meta, the ball elsewhere)
            self.weight.copy_(gp.expmap0(torch.randn(w.shape, device=w.device, dtype=w.dtype),
                                         c=self.ball().detach().to(device=w.device, dtype=w.dtype)))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class MobiusLinear(nn.Module):
    """HNN's Möbius linear layer: project(weight (x) x (+) bias), points along the last dimension.

    ``blocks=nb``: a block-diagonal weight stored as its (nb, out/nb, in/nb) diagonal blocks (H4G), never dense.
    The bias is a point of the ball (initialised at the origin)."""

    def __init__(self, in_features: int, out_features: int, ball: PoincareBall, bias: bool = True,
                 blocks: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        in_features = _check_size("MobiusLinear", "in_features", in_features)
        out_features = _check_size("MobiusLinear", "out_features", out_features)
        _check_ball("MobiusLinear", ball)
        if blocks is not None:
            blocks = _check_size("MobiusLinear", "blocks", blocks)
        self.in_features, self.out_features, self.ball, self.blocks = in_features, out_features, ball, blocks
        if blocks is None:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **fk))
        else:
            if in_features % blocks or out_features % blocks:
                raise ValueError(f"MobiusLinear: blocks={blocks} must divide in_features={in_features} and "
                                 f"out_features={out_features}")
            self.weight = nn.Parameter(torch.empty(blocks, out_features // blocks, in_features // blocks, **fk))
        self.bias = nn.Parameter(torch.zeros(out_features, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """Re-initialise the weight (or each diagonal block) with Kaiming-uniform and the bias with zeros."""
        for w in (self.weight,) if self.blocks is None else self.weight:
            nn.init.kaiming_uniform_(w, a=5 ** 0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        return gp.mobius_linear(x, self.weight, self.bias, c=self.ball(), blocks=self.blocks)

    def extra_repr(self) -> str:
        blocks = "" if self.blocks is None else f", blocks={self.blocks}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{blocks}"


class PoincareMLR(nn.Module):
    """Hyperbolic multinomial logistic regression head (HNN++): logits = signed distances to num_classes
    hyperplanes (z (in, classes), offsets bias)."""

    def __init__(self, in_features: int, num_classes: int, ball: PoincareBall, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        in_features = _check_size("PoincareMLR", "in_features", in_features)
        num_classes = _check_size("PoincareMLR", "num_classes", num_classes)
        _check_ball("PoincareMLR", ball)
        self.ball, self.in_features, self.num_classes = ball, in_features, num_classes
        self.z = nn.Parameter(torch.empty(in_features, num_classes, **fk))
        self.bias = nn.Parameter(torch.zeros(num_classes, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """z ~ N(0, (2 in classes)^-1/2), bias 0."""
        nn.init.normal_(self.z, std=(2 * self.in_features * self.num_classes) ** -0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        return gp.mlr(x, self.z, self.bias, c=self.ball())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"
