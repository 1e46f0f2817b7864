"""TinyAttention: the causal self-attention of VisualRWKV-Hybrid (DESIGN.md §10), and its pre-norm residual form.

- ``TinyAttention``: multi-head causal softmax attention, nothing else (no norm, no residual), so it drops in
  wherever a model wants "the attention": ``y = tiny_o(attention(tiny_q(x), tiny_k(x), tiny_v(x)))``.
- ``PreNormTinyAttention``: ``x + TinyAttention(tiny_ln(x))``, the layer the hybrid adds after the FFN of a
  block. It subclasses ``TinyAttention`` (rather than holding one) so that its parameters keep upstream's flat
  checkpoint names: ``tiny_att.tiny_ln``, ``tiny_att.tiny_q``, ``tiny_k``, ``tiny_v``, ``tiny_o``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .block import LAYER_NORM_EPS
from .ops.attention import causal_attention
from .state import KVCache

__all__ = ["PreNormTinyAttention", "TinyAttention"]


class TinyAttention(nn.Module):
    """``y = tiny_o(attention(tiny_q(x), tiny_k(x), tiny_v(x)))``: causal, no positional encoding.

    Unlike the recurrent blocks its state grows: the ``KVCache`` holds every position's keys and values, so
    that decoding token by token equals the full causal pass.

    Args:
        dim: Channels ``C`` of the input and output.
        attn_dim: Width of q, k, v (default ``C``); heads = ``attn_dim / head_dim``.
        head_dim: Head size (64 upstream).
        backend: Attention backend (``"torch"`` default, ``"xformers"``); ``None`` lets the
            dispatcher choose (see ``rwkvblocks.ops.attention``).
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, cache ``KVCache`` or ``None``) -> (y `[B, T, C]`, new ``KVCache``
        with ``L + T`` positions, `[B, H, L + T, D]`).

    Reference: an explicit per-query softmax loop (``tests/test_tiny_attention.py``).
    Backends: those of ``rwkvblocks.ops.attention.causal_attention``.

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
        self.tiny_q = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_k = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_v = nn.Linear(dim, attn_dim, bias=False, **kw)
        self.tiny_o = nn.Linear(attn_dim, dim, bias=False, **kw)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty cache: ``k`` and ``v`` of shape `[B, H, 0, D]`."""
        weight = self.tiny_k.weight
        empty = torch.zeros(
            batch_size,
            self.num_heads,
            0,
            self.head_dim,
            device=weight.device if device is None else device,
            dtype=weight.dtype,
        )
        return KVCache(empty, empty.clone())

    def check_state(self, state: KVCache, batch_size: int) -> None:
        """Raise ``ValueError`` when the cache is not `[B, H, L, D]` for this layer (no device access)."""
        k = state.k
        if k.dim() != 4 or k.shape[:2] != (batch_size, self.num_heads) or k.shape[3] != self.head_dim:
            raise ValueError(
                f"cache must hold [B, H, L, D] = [{batch_size}, {self.num_heads}, L, {self.head_dim}], "
                f"got {tuple(k.shape)}"
            )
        if state.v.shape != k.shape:
            raise ValueError(f"cache.v must have the shape of cache.k {tuple(k.shape)}, got {tuple(state.v.shape)}")

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x must be [B, T, {self.dim}], got {tuple(x.shape)}")
        B, T, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.tiny_q(x)), heads(self.tiny_k(x)), heads(self.tiny_v(x))
        if cache is not None:
            self.check_state(cache, B)
            k = torch.cat([cache.k, k], dim=2)
            v = torch.cat([cache.v, v], dim=2)
        y = causal_attention(q, k, v, backend=self.backend)
        return self.tiny_o(y.transpose(1, 2).reshape(B, T, self.attn_dim)), KVCache(k, v)

    def extra_repr(self) -> str:
        return f"{self.dim}, attn_dim={self.attn_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class PreNormTinyAttention(TinyAttention):
    """``y = x + TinyAttention(tiny_ln(x))``: the pre-norm residual layer of VisualRWKV-Hybrid.

    Args: as ``TinyAttention``; ``tiny_ln`` is a LayerNorm over ``dim`` (eps 1e-5, affine).

    Shapes:
        forward(x `[B, T, C]`, cache ``KVCache`` or ``None``) -> (y `[B, T, C]`, new ``KVCache``).

    Example:
        >>> import torch
        >>> layer = PreNormTinyAttention(64, head_dim=32)
        >>> y, cache = layer(torch.randn(1, 3, 64))
        >>> sorted(name for name, _ in layer.named_parameters())[:3]
        ['tiny_k.weight', 'tiny_ln.bias', 'tiny_ln.weight']
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
        super().__init__(dim, attn_dim=attn_dim, head_dim=head_dim, backend=backend, device=device, dtype=dtype)
        self.tiny_ln = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x must be [B, T, {self.dim}], got {tuple(x.shape)}")
        y, cache = super().forward(self.tiny_ln(x), cache)
        return x + y, cache
