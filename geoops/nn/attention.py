"""torch.nn layer of Kronecker triple attention: :class:`TripleAttention`."""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import nn

from .. import _args
from .. import attention as _attention

__all__ = ["TripleAttention"]


class TripleAttention(nn.Module):
    r"""Multi-head Kronecker triple (2-simplicial) attention block: a drop-in for a self-attention layer.

    For x of shape (B, N, E) it projects queries q = x W_q (H heads of size D = E / H by default), two key
    sets k1 = x W_k1, k2 = x W_k2 and two value sets v1 = x W_v1, v2 = x W_v2 (H_kv heads each: grouped
    keys when H_kv < H), runs :func:`geoops.attention.triple_attention` per head and projects the
    concatenated heads back to E with W_o::

        out_i = W_o concat_h sum_{j,k} softmax_{(j,k)}(s <q_i, k1_j (.) k2_k>) (v1_j (.) v2_k)

    Args:
        embed_dim: E, the model width (input and output features).
        num_heads: H.
        num_kv_heads: H_kv (default H); must divide H.
        head_dim: D (default E // H).
        causal: attend only to j, k <= i.
        window: (w1, w2) sliding windows (implies causal), or None.
        bias: biases on the projections.
        scale: the score scale (default 1 / sqrt(D)).
        device, dtype: of the parameters.

    Shapes: forward(x) with x (B, N, E) -> (B, N, E); forward(x, context) attends from x to the keys and
    values of `context` (B, M, E) (use causal/window only when positions line up).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, causal: bool = False,
                 window: Optional[Union[int, Tuple[int, int]]] = None, bias: bool = False,
                 scale: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        embed_dim, num_heads = (_args.int_arg("TripleAttention", n, v)
                                for n, v in (("embed_dim", embed_dim), ("num_heads", num_heads)))
        num_kv_heads, head_dim = (_args.int_arg("TripleAttention", n, v, none_ok=True)
                                  for n, v in (("num_kv_heads", num_kv_heads), ("head_dim", head_dim)))
        if not isinstance(causal, bool):
            raise TypeError(f"TripleAttention: causal must be a bool, got {type(causal).__name__}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
            raise TypeError(f"TripleAttention: scale must be a real number or None, got {type(scale).__name__}")
        if num_heads < 1:
            raise ValueError(f"TripleAttention: num_heads must be >= 1, got {num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"TripleAttention: num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"TripleAttention: embed_dim={embed_dim} is not a multiple of num_heads="
                                 f"{num_heads}; pass head_dim")
            head_dim = embed_dim // num_heads
        if window is not None:
            # raises (naming `window`) now rather than at the first call; kept as given (an int or a pair)
            lo_hi = _attention._window_arg(window, causal)
            window = lo_hi[0] if _args.as_index(window) is not None else lo_hi
        fk = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.causal, self.window, self.scale = causal, window, scale
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **fk)
        self.kv_proj = nn.Linear(embed_dim, 4 * num_kv_heads * head_dim, bias=bias, **fk)  # k1, k2, v1, v2
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **fk)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"TripleAttention: x must have shape (B, N, {self.embed_dim}), got {tuple(x.shape)}")
        ctx = x if context is None else context
        if context is not None and (not isinstance(context, torch.Tensor) or context.dim() != 3
                                    or context.shape[0] != x.shape[0] or context.shape[-1] != self.embed_dim):
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"TripleAttention: context must have shape ({x.shape[0]}, M, {self.embed_dim}) "
                             f"(x's batch size and embed_dim), got {shape}")
        B, N, _ = x.shape
        M = ctx.shape[1]
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_proj(ctx).view(B, M, 4, self.num_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k1, k2, v1, v2 = kv.unbind(0)
        o = _attention.triple_attention(q, k1, k2, v1, v2, scale=self.scale, causal=self.causal, window=self.window)
        return self.out_proj(o.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}, window={self.window}")
