"""RWKV-5/6 language models: the architecture configuration and the builder.

Checkpoints in BlinkDL's ``.pth`` format are read and written by ``assemblies.models.formats.blinkdl``
(``load_blinkdl`` / ``save_blinkdl``), which infers this configuration from tensor shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rwkvblocks import ChannelMix, RWKVBlock, RWKVLanguageModel, TimeMix, ffn_dim
from rwkvblocks.block import LAYER_NORM_EPS

__all__ = ["RWKVConfig", "build_rwkv_lm"]

Version = Literal["x052", "x060"]


@dataclass(frozen=True)
class RWKVConfig:
    """Architecture of an RWKV-5 (``x052``) or RWKV-6 (``x060``) language model.

    ``mix_rank`` / ``decay_rank`` are the x060 LoRA ranks (32/64 in released models, 64/128 at
    C = 4096) and are ignored for x052. ``ffn_dim=None`` means ``int(3.5 * dim) // 32 * 32``.
    """

    version: Version = "x060"
    vocab_size: int = 65536
    dim: int = 2048
    num_layers: int = 24
    head_dim: int = 64
    ffn_dim: int | None = None
    mix_rank: int = 32
    decay_rank: int = 64

    def __post_init__(self) -> None:
        if self.version not in ("x052", "x060"):
            raise ValueError(f"version must be 'x052' or 'x060', got {self.version!r}")
        for name in ("vocab_size", "dim", "num_layers", "head_dim", "mix_rank", "decay_rank"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.head_dim:
            raise ValueError(f"dim={self.dim} must be a multiple of head_dim={self.head_dim}")
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", ffn_dim(self.dim))

    @property
    def num_heads(self) -> int:
        return self.dim // self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> RWKVConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown RWKVConfig fields: {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """One line for messages: layers, width, heads, FFN, vocabulary and LoRA ranks."""
        ranks = f", mix/decay LoRA {self.mix_rank}/{self.decay_rank}" if self.version == "x060" else ""
        return (
            f"{self.num_layers} layers, C={self.dim}, {self.num_heads} heads of {self.head_dim}, "
            f"FFN {self.ffn_dim}, V={self.vocab_size}{ranks}"
        )


def build_rwkv_lm(
    config: RWKVConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> RWKVLanguageModel:
    """A freshly initialised RWKV language model (BlinkDL's from-scratch init; none on ``meta``).

    Example:
        >>> import torch
        >>> cfg = RWKVConfig(version="x060", vocab_size=100, dim=64, num_layers=2, head_dim=32)
        >>> model = build_rwkv_lm(cfg)
        >>> logits, state = model(torch.tensor([[1, 2, 3]]))
        >>> logits.shape
        torch.Size([1, 3, 100])
    """
    kw = {"device": device, "dtype": dtype}
    L, C = config.num_layers, config.dim
    blocks = []
    for i in range(L):
        if config.version == "x060":
            att = TimeMix.rwkv6(
                C,
                head_dim=config.head_dim,
                mix_rank=config.mix_rank,
                decay_rank=config.decay_rank,
                layer_idx=i,
                num_layers=L,
                **kw,
            )
            ffn = ChannelMix.rwkv6(C, hidden_dim=config.ffn_dim, layer_idx=i, num_layers=L, **kw)
        else:
            att = TimeMix.rwkv5(C, head_dim=config.head_dim, layer_idx=i, num_layers=L, **kw)
            ffn = ChannelMix.rwkv5(C, hidden_dim=config.ffn_dim, layer_idx=i, num_layers=L, **kw)
        blocks.append(RWKVBlock(att, ffn, dim=C, layer_idx=i, **kw))
    model = RWKVLanguageModel(
        nn.Embedding(config.vocab_size, C, **kw),
        blocks,
        nn.LayerNorm(C, eps=LAYER_NORM_EPS, **kw),
        nn.Linear(C, config.vocab_size, bias=False, **kw),
    )
    model.reset_parameters()
    return model
