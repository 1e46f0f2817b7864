"""One RWKV block: ``x = x + att(ln1(x)); x = x + ffn(ln2(x))``, with ``ln0`` first in block 0."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .state import RWKVBlockState, takes_context

__all__ = ["LAYER_NORM_EPS", "RWKVBlock"]

LAYER_NORM_EPS = 1e-5


class RWKVBlock(nn.Module):
    """Pre-norm residual block around an injected token mixer and channel mixer.

    Args:
        att: Token mixer with the ``TimeMix`` contract: ``att(x, (shift, wkv) | None) -> (y, (shift, wkv))``,
            plus ``init_state`` / ``check_state``. If its ``forward`` has a ``context`` parameter it receives
            the stack's per-forward context (RWKV-7's ``v_first``).
        ffn: Channel mixer with the ``ChannelMix`` contract: ``ffn(x, shift | None) -> (y, shift)``.
        tiny_att: Optional layer after the FFN with the ``PreNormTinyAttention`` contract
            (``tiny_att(x, cache | None) -> (x, cache)``, residual inside): VisualRWKV-Hybrid.
        dim: Channels ``C``.
        layer_idx: Position in the stack; block 0 also owns ``ln0``, which normalises whatever
            enters the stack (token embeddings and, in VisualRWKV, image features).
        device, dtype: Of the LayerNorms.

    Shapes:
        forward(x `[B, T, C]`, state ``RWKVBlockState`` or ``None``) -> (x `[B, T, C]`, ``RWKVBlockState``).

    Example:
        >>> import torch
        >>> from rwkvblocks import ChannelMix, TimeMix
        >>> block = RWKVBlock(TimeMix.rwkv6(64, head_dim=32), ChannelMix.rwkv6(64), dim=64)
        >>> y, state = block(torch.randn(2, 7, 64))
        >>> y.shape, state.wkv.shape
        (torch.Size([2, 7, 64]), torch.Size([2, 2, 32, 32]))
    """

    def __init__(
        self,
        att: nn.Module,
        ffn: nn.Module,
        *,
        dim: int,
        layer_idx: int = 0,
        tiny_att: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"eps": LAYER_NORM_EPS, "device": device, "dtype": dtype}
        self.dim, self.layer_idx = dim, layer_idx
        self.ln0 = nn.LayerNorm(dim, **kw) if layer_idx == 0 else None
        self.ln1 = nn.LayerNorm(dim, **kw)
        self.ln2 = nn.LayerNorm(dim, **kw)
        self.att = att
        self.ffn = ffn
        self.tiny_att = tiny_att
        self._att_takes_context = takes_context(att)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RWKVBlockState:
        """The state before the first token: those of ``att``, ``ffn`` and (hybrid) ``tiny_att``."""
        shift, wkv = self.att.init_state(batch_size, device)
        kv = None if self.tiny_att is None else self.tiny_att.init_state(batch_size, device)
        return RWKVBlockState(shift, wkv, self.ffn.init_state(batch_size, device), kv)

    def check_state(self, state: RWKVBlockState, batch_size: int) -> None:
        """Raise ``ValueError`` naming the field of ``state`` that does not fit this block (shapes only)."""
        if not isinstance(state, RWKVBlockState):
            raise ValueError(f"block {self.layer_idx}: state must be an RWKVBlockState, got {type(state).__name__}")
        try:
            self.att.check_state((state.att_shift, state.wkv), batch_size)
            self.ffn.check_state(state.ffn_shift, batch_size)
            if state.kv is not None:
                if self.tiny_att is None:
                    raise ValueError("state.kv holds a KV cache, but the block has no tiny_att")
                self.tiny_att.check_state(state.kv, batch_size)
        except ValueError as err:
            raise ValueError(f"block {self.layer_idx}: {err}") from None

    def forward(
        self,
        x: Tensor,
        state: RWKVBlockState | None = None,
        context: dict[str, Any] | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, RWKVBlockState]:
        """``cu_seqlens`` `[N+1]`: N sequences packed along T (B = 1, ``state`` ``None``), each computed as if
        alone (``att`` and ``ffn`` restart their token shift and WKV at every sequence). A block with
        ``tiny_att`` refuses packing: its attention is not masked per sequence."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"RWKVBlock {self.layer_idx}: x must be [B, T, {self.dim}], got {tuple(x.shape)}")
        packed = {}
        if cu_seqlens is not None:
            if self.tiny_att is not None:
                raise ValueError(
                    f"RWKVBlock {self.layer_idx}: packed sequences (cu_seqlens) are not supported with tiny_att "
                    "(VisualRWKV-Hybrid): its attention would read across sequences; use a padded batch"
                )
            packed = {"cu_seqlens": cu_seqlens}
        if self.ln0 is not None:
            x = self.ln0(x)
        att_state = None if state is None else (state.att_shift, state.wkv)
        if self._att_takes_context:
            y, (att_shift, wkv) = self.att(self.ln1(x), att_state, context=context, **packed)
        else:
            y, (att_shift, wkv) = self.att(self.ln1(x), att_state, **packed)
        x = x + y
        y, ffn_shift = self.ffn(self.ln2(x), None if state is None else state.ffn_shift, **packed)
        x = x + y
        kv = None
        if self.tiny_att is not None:
            x, kv = self.tiny_att(x, None if state is None else state.kv)
        return x, RWKVBlockState(att_shift, wkv, ffn_shift, kv)

    def extra_repr(self) -> str:
        return f"{self.dim}, layer_idx={self.layer_idx}"
