"""TinyAttention: the single causal self-attention layer of VisualRWKV-Hybrid (DESIGN.md §10)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .block import LAYER_NORM_EPS
from .ops.attention import causal_attention
from .state import KVCache

__all__ = ["TinyAttention"]


class TinyAttention(nn.Module):
    """``y = x + tiny_o(attention(tiny_q(n), tiny_k(n), tiny_v(n)))`` with ``n = tiny_ln(x)``, causal.

    Multi-head softmax attention without positional encoding and without an FFN, residual. Parameter
    names match upstream checkpoints (``tiny_att.tiny_ln``, ``tiny_q``, ``tiny_k``, ``tiny_v``,
    ``tiny_o``). Unlike the recurrent blocks its state grows: the ``KVCache`` holds every position's
    keys and values, so that decoding token by token equals the full causal pass.

    Args:
        dim: Channels ``C`` of the residual stream.
        attn_dim: Width of q, k, v (default ``C``); heads = ``attn_dim / head_dim``.
        head_dim: Head size (64 upstream).
        backend: Attention backend (``"torch"`` default, ``"xformers"``); ``None`` lets the
            dispatcher choose (see ``rwkvblocks.ops.attention``).
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, cache ``KVCache`` or ``None``) -> (y `[B, T, C]`, new ``KVCache``
        with ``L + T`` positions).

    Example:
        >>> import torch
        >>> att = TinyAttention(128, head_dim=32)
        >>> y, cache = att(torch.randn(2, 5, 128))
        >>> y2, cache = att(torch.randn(2, 1, 128), cache)  # one more token
        >>> cache.k.shape
        torch.Size([2, 4, 6, 32])
    """

    def __init__(
        self,
        dim: int,
        *,
        attn_dim: int | None = None,
        head_dim: int = 64,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        attn_dim = dim if attn_dim is None else attn_dim
        if head_dim <= 0 or attn_dim % head_dim:
            raise ValueError(f"attn_dim={attn_dim} must be a positive multiple of head_dim={head_dim}")
        kw = {"device": device, "dtype": dtype}
        self.dim, self.attn_dim, self.head_dim = dim, attn_dim, head_dim
        self.num_heads = attn_dim // head_dim
        self.backend = backend
        self.tiny_ln = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.tiny_q = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_k = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_v = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_o = nn.Linear(attn_dim, dim, bias=False, **kw)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TinyAttention: x must be [B, T, {self.dim}], got {tuple(x.shape)}")
        B, T, _ = x.shape
        n = self.tiny_ln(x)

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.tiny_q(n)), heads(self.tiny_k(n)), heads(self.tiny_v(n))
        if cache is not None:
            if cache.k.shape[:2] != (B, self.num_heads) or cache.k.shape[3] != self.head_dim:
                raise ValueError(
                    f"cache must hold [B, H, L, D] = [{B}, {self.num_heads}, L, {self.head_dim}], got {tuple(cache.k.shape)}"
                )
            k = torch.cat([cache.k, k], dim=2)
            v = torch.cat([cache.v, v], dim=2)
        y = causal_attention(q, k, v, backend=self.backend)
        y = y.transpose(1, 2).reshape(B, T, self.attn_dim)
        return x + self.tiny_o(y), KVCache(k, v)

    def extra_repr(self) -> str:
        return f"{self.dim}, attn_dim={self.attn_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
