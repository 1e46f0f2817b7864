"""RWKV-5/6/7 language models: the architecture configuration and the builder.

Checkpoints in BlinkDL's ``.pth`` format are read and written by ``assemblies.models.formats.blinkdl``
(``load_blinkdl`` / ``save_blinkdl``), which infers this configuration from tensor shapes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rwkvblocks import ChannelMix, ChannelMix7, RWKVBlock, RWKVLanguageModel, TimeMix, TimeMix7, ffn_dim
from rwkvblocks.block import LAYER_NORM_EPS
from rwkvblocks.errors import ConfigError

from .._io import typed_fields

__all__ = ["RWKVConfig", "build_rwkv_lm"]

Version = Literal["x052", "x060", "x070"]
VERSIONS = ("x052", "x060", "x070")

# Released World models (vocabulary 65536, head size 64): layers, width and LoRA ranks. x052 / x060:
# (mix, decay); x070: (decay, a, value, gate) — DESIGN.md §4 and §15.
RELEASED = {
    "x052": {"1b6": (24, 2048, (32, 64)), "3b": (32, 2560, (32, 64)), "7b": (32, 4096, (64, 128))},
    "x060": {"1b6": (24, 2048, (32, 64)), "3b": (32, 2560, (32, 64)), "7b": (32, 4096, (64, 128))},
    "x070": {
        "0b1": (12, 768, (64, 64, 32, 128)),
        "0b4": (24, 1024, (64, 64, 32, 160)),
        "1b5": (24, 2048, (96, 96, 64, 256)),
        "2b9": (32, 2560, (96, 96, 64, 320)),
    },
}


@dataclass(frozen=True)
class RWKVConfig:
    """Architecture of an RWKV-5 (``x052``), RWKV-6 (``x060``) or RWKV-7 (``x070``) language model.

    LoRA ranks: x060 uses ``mix_rank`` / ``decay_rank`` (32/64 in released models, 64/128 at C = 4096);
    x070 uses ``decay_rank``, ``a_rank``, ``value_rank`` and ``gate_rank`` (Dw/Da/Dv/Dg: 64/64/32/128 in the
    released 0.1B model; ``RWKVConfig.released`` has every released size); x052 uses none. Checkpoint
    loaders read all of them from tensor shapes. ``ffn_dim=None`` means ``int(3.5 * dim) // 32 * 32``
    (x052 / x060) or ``4 * dim`` (x070).

    Example:
        >>> cfg = RWKVConfig.released("x070", "1b5")
        >>> cfg.num_layers, cfg.dim, cfg.ffn_dim, (cfg.decay_rank, cfg.a_rank, cfg.value_rank, cfg.gate_rank)
        (24, 2048, 8192, (96, 96, 64, 256))
    """

    version: Version = "x060"
    vocab_size: int = 65536
    dim: int = 2048
    num_layers: int = 24
    head_dim: int = 64
    ffn_dim: int | None = None
    mix_rank: int = 32
    decay_rank: int = 64
    a_rank: int = 64
    value_rank: int = 32
    gate_rank: int = 128

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ConfigError(
                "RWKVConfig", "version", f"must be one of {', '.join(map(repr, VERSIONS))}, got {self.version!r}"
            )
        ranks = ("mix_rank", "decay_rank", "a_rank", "value_rank", "gate_rank")
        for name in ("vocab_size", "dim", "num_layers", "head_dim", *ranks, "ffn_dim"):
            value = getattr(self, name)
            if name == "ffn_dim" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError("RWKVConfig", name, f"must be an int, got {value!r}")
            if value <= 0:
                raise ConfigError("RWKVConfig", name, f"must be positive, got {value}")
        if self.dim % self.head_dim:
            raise ConfigError("RWKVConfig", "dim", f"must be a multiple of head_dim={self.head_dim}, got {self.dim}")
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 4 * self.dim if self.version == "x070" else ffn_dim(self.dim))

    @classmethod
    def released(cls, version: str, size: str, **overrides) -> RWKVConfig:
        """The shape of a released World model: ``version`` ``"x052"`` / ``"x060"`` with ``size`` ``"1b6"``,
        ``"3b"``, ``"7b"``, or ``"x070"`` with ``"0b1"``, ``"0b4"``, ``"1b5"``, ``"2b9"``; ``overrides``
        replace fields.

        Raises:
            ValueError: an unknown version or size (the message lists the known ones).
        """
        if version not in RELEASED or size not in RELEASED[version]:
            known = "; ".join(f"{v}: {', '.join(sizes)}" for v, sizes in RELEASED.items())
            raise ValueError(f"no released {version!r} model of size {size!r}; known: {known}")
        layers, dim, ranks = RELEASED[version][size]
        names = ("decay_rank", "a_rank", "value_rank", "gate_rank") if version == "x070" else ("mix_rank", "decay_rank")
        fields = {"version": version, "vocab_size": 65536, "dim": dim, "num_layers": layers, "head_dim": 64}
        return cls(**{**fields, **dict(zip(names, ranks)), **overrides})

    @property
    def num_heads(self) -> int:
        return self.dim // self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str | os.PathLike = "RWKVConfig", prefix: str = "") -> RWKVConfig:
        """The configuration ``to_dict`` wrote, every field type-checked (a bool or a float is not an int).

        Raises:
            ConfigError: an unknown field, or one of the wrong type or value, named ``prefix.field`` after
                ``source``.
        """
        return typed_fields(cls, data, source=source, prefix=prefix)

    def describe(self) -> str:
        """One line for messages: layers, width, heads, FFN, vocabulary and LoRA ranks."""
        ranks = ""
        if self.version == "x060":
            ranks = f", mix/decay LoRA {self.mix_rank}/{self.decay_rank}"
        elif self.version == "x070":
            ranks = f", decay/a/value/gate LoRA {self.decay_rank}/{self.a_rank}/{self.value_rank}/{self.gate_rank}"
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
        if config.version == "x070":
            att = TimeMix7.rwkv7(
                C,
                head_dim=config.head_dim,
                decay_rank=config.decay_rank,
                a_rank=config.a_rank,
                value_rank=config.value_rank,
                gate_rank=config.gate_rank,
                layer_idx=i,
                num_layers=L,
                **kw,
            )
            ffn = ChannelMix7.rwkv7(C, hidden_dim=config.ffn_dim, layer_idx=i, num_layers=L, **kw)
        elif config.version == "x060":
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
