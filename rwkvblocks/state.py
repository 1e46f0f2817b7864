"""Recurrent state of an RWKV stack: per layer the two token-shift vectors and the WKV matrix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["KVCache", "LayerState", "RWKVState"]


class KVCache(NamedTuple):
    """Keys and values of every position an attention layer has seen (``TinyAttention``).

    Shapes:
        k, v: `[B, H, L, D]` in the model dtype.
    """

    k: Tensor
    v: Tensor


class LayerState(NamedTuple):
    """State of one RWKV block.

    Shapes:
        att_shift: `[B, C]`, the last ln1 output (model dtype).
        wkv: `[B, H, K, V]` fp32 (fp64 for fp64 models), key index first.
        ffn_shift: `[B, C]`, the last ln2 output (model dtype).
        kv: the ``KVCache`` of the block's ``TinyAttention`` (hybrid models), else ``None``.
    """

    att_shift: Tensor
    wkv: Tensor
    ffn_shift: Tensor
    kv: KVCache | None = None


@dataclass(frozen=True)
class RWKVState:
    """The state of a whole stack, one ``LayerState`` per block; immutable, cheap to pass around.

    Models return a new ``RWKVState`` and never modify the one they were given, so a state can be
    kept to branch from (e.g. a shared prompt prefix) without cloning.

    Example:
        >>> import torch
        >>> s = RWKVState.zeros(num_layers=2, batch_size=3, dim=8, num_heads=2, head_dim=4)
        >>> s[1:].batch_size, s.wkv(0).shape
        (2, torch.Size([3, 2, 4, 4]))
    """

    layers: tuple[LayerState, ...]

    @classmethod
    def zeros(
        cls,
        *,
        num_layers: int,
        batch_size: int,
        dim: int,
        num_heads: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RWKVState:
        """The start state (all zeros). ``dtype`` is the shift dtype; WKV is fp32 (fp64 for fp64)."""
        dtype = dtype or torch.get_default_dtype()
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        layer = lambda: LayerState(  # noqa: E731
            torch.zeros(batch_size, dim, device=device, dtype=dtype),
            torch.zeros(batch_size, num_heads, head_dim, head_dim, device=device, dtype=acc),
            torch.zeros(batch_size, dim, device=device, dtype=dtype),
        )
        return cls(tuple(layer() for _ in range(num_layers)))

    @classmethod
    def cat(cls, states: Sequence[RWKVState]) -> RWKVState:
        """Join states along the batch (e.g. to decode several conversations together)."""
        if not states:
            raise ValueError("RWKVState.cat needs at least one state")
        depths = {s.num_layers for s in states}
        if len(depths) != 1:
            raise ValueError(f"cannot join states with different layer counts: {sorted(depths)}")
        layers = []
        for parts in zip(*(s.layers for s in states)):
            caches = [p.kv for p in parts]
            if any(c is None for c in caches) and not all(c is None for c in caches):
                raise ValueError("cannot join states where only some carry an attention KV cache")
            if caches[0] is not None and len({c.k.shape[2] for c in caches}) != 1:
                raise ValueError("cannot join attention KV caches of different lengths")
            kv = None if caches[0] is None else KVCache(*(torch.cat(t, 0) for t in zip(*caches)))
            layers.append(LayerState(*(torch.cat(t, 0) for t in zip(*(p[:3] for p in parts))), kv))
        return cls(tuple(layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def batch_size(self) -> int:
        return self.layers[0].wkv.shape[0]

    @property
    def device(self) -> torch.device:
        return self.layers[0].wkv.device

    def wkv(self, layer_idx: int) -> Tensor:
        return self.layers[layer_idx].wkv

    def __iter__(self) -> Iterator[LayerState]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> RWKVState:
        """Select samples along the batch; an ``int`` keeps the batch axis (size 1)."""
        if isinstance(index, int):
            n = self.batch_size
            if not -n <= index < n:
                raise IndexError(f"sample {index} out of range for a state of batch size {n}")
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def clone(self) -> RWKVState:
        return self._map(torch.clone)

    def detach(self) -> RWKVState:
        """Cut the autograd graph (truncated backpropagation through time)."""
        return self._map(Tensor.detach)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RWKVState:
        """Move to ``device``; ``dtype`` applies to shifts and KV caches (WKV stays fp32/fp64)."""
        return RWKVState(
            tuple(
                LayerState(
                    layer.att_shift.to(device=device, dtype=dtype),
                    layer.wkv.to(device=device),
                    layer.ffn_shift.to(device=device, dtype=dtype),
                    None if layer.kv is None else KVCache(*(t.to(device=device, dtype=dtype) for t in layer.kv)),
                )
                for layer in self.layers
            )
        )

    def _map(self, fn) -> RWKVState:
        def one(layer: LayerState) -> LayerState:
            kv = None if layer.kv is None else KVCache(*(fn(t) for t in layer.kv))
            return LayerState(*(fn(t) for t in layer[:3]), kv)

        return RWKVState(tuple(one(layer) for layer in self.layers))
