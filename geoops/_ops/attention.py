"""torch.library registrations of Kronecker triple attention, with fake (meta) implementations.

    geoops::triple_attention_fwd(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, float scale,
                                 bool causal, int w1, int w2) -> (Tensor out, Tensor lse)
    geoops::triple_attention_bwd(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2,
                                 Tensor out, Tensor lse, float scale, bool causal, int w1, int w2)
        -> (Tensor dq, Tensor dk1, Tensor dk2, Tensor dv1, Tensor dv2)

q (B, H, N, D); k1 (B, Hk, M1, D); k2 (B, Hk, M2, D); v1 (B, Hk, M1, Dv); v2 (B, Hk, M2, Dv) with
H % Hk == 0, all of one floating dtype (validated by geoops.attention before any kernel runs).
w1, w2 > 0 are sliding windows (they imply causal); 0 means no window.  out has q's dtype, lse is
float32 (float64 for float64 inputs); the gradients come back in the inputs' dtype.

The implementation picks the backend per call (geoops._backend): C++ on CPU, Triton on CUDA (and on
CPU under TRITON_INTERPRET=1), the eager reference when forced or when nothing compiled is there.
"""
from __future__ import annotations

import torch

from .. import _backend, _library

FAMILY = "attention"
__all__ = ["attention_kernels", "FWD", "BWD"]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2):
        return tuple(_backend.compiled().triple_attention_fwd_cpu(q, k1, k2, v1, v2, scale, causal, w1, w2))

    @staticmethod
    def triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
        return tuple(_backend.compiled().triple_attention_bwd_cpu(dout, q, k1, k2, v1, v2, out, lse, scale, causal,
                                                                  w1, w2))


class _Reference:
    """The op contract above, evaluated with geoops.reference.attention (autograd for the backward)."""

    @staticmethod
    def _window(w1, w2):
        return (int(w1), int(w2)) if (w1 > 0 or w2 > 0) else None

    @classmethod
    def triple_attention_fwd(cls, q, k1, k2, v1, v2, scale, causal, w1, w2):
        from ..reference import attention as ref

        with torch.no_grad():
            out, lse = ref.triple_attention(q, k1, k2, v1, v2, scale=scale, causal=causal,
                                            window=cls._window(w1, w2), return_lse=True)
        return out.contiguous(), lse.contiguous()

    @classmethod
    def triple_attention_bwd(cls, dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
        from ..reference import attention as ref

        with _library.reference_autograd():
            leaves = [t.detach().requires_grad_(True) for t in (q, k1, k2, v1, v2)]
            o = ref.triple_attention(*leaves, scale=scale, causal=causal, window=cls._window(w1, w2))
            grads = torch.autograd.grad(o, leaves, dout, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, leaves))


def attention_kernels(device: torch.device):
    """The kernel set that the current backend setting picks for `device`."""
    C = _backend.compiled()
    cpp = _Cpp if C is not None and hasattr(C, "triple_attention_fwd_cpu") else None
    if cpp is None and device.type == "cpu" and _backend.get_backend() == "auto":
        return _Reference  # an extension built before this family existed
    return _library.kernel_set(FAMILY, device, cpp=cpp, reference=_Reference)


# ---------------------------------------------------------------- registration
_FWD_SCHEMA = ("(Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, float scale, bool causal, int w1, int w2)"
               " -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k1, Tensor k2, Tensor v1, Tensor v2, Tensor out, Tensor lse, "
               "float scale, bool causal, int w1, int w2) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _fwd(q, k1, k2, v1, v2, scale: float, causal: bool, w1: int, w2: int):
    return tuple(attention_kernels(q.device).triple_attention_fwd(q, k1, k2, v1, v2, scale, causal, w1, w2))


def _bwd(dout, q, k1, k2, v1, v2, out, lse, scale: float, causal: bool, w1: int, w2: int):
    return tuple(attention_kernels(q.device).triple_attention_bwd(dout, q, k1, k2, v1, v2, out, lse, scale, causal,
                                                                 w1, w2))


def _fwd_fake(q, k1, k2, v1, v2, scale, causal, w1, w2):
    B, H, N, _ = q.shape
    return q.new_empty((B, H, N, v1.shape[-1])), q.new_empty((B, H, N), dtype=_lse_dtype(q.dtype))


def _bwd_fake(dout, q, k1, k2, v1, v2, out, lse, scale, causal, w1, w2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2, v1, v2))


_fwd_op = _library.define_op("geoops::triple_attention_fwd", _FWD_SCHEMA, _fwd, _fwd_fake)
_bwd_op = _library.define_op("geoops::triple_attention_bwd", _BWD_SCHEMA, _bwd, _bwd_fake)
# vmap folds the mapped dim into the batch dim B (one kernel call; per-sample gradients under vmap(grad))
_library.fold_vmap("geoops::triple_attention_fwd")
_library.fold_vmap("geoops::triple_attention_bwd")
# what TripleAttentionFn calls: the kernel directly on the eager fast path, else the custom op
FWD = _library.caller(_fwd_op, _fwd)
BWD = _library.caller(_bwd_op, _bwd)
