"""Named VisualRWKV presets, timm-style: ``create_assembly(name, **overrides)``, ``list_assemblies(pattern)``.

Names carry the family, the language-model size and the encoder: ``visualrwkv_1b6_clipl336`` is the
paper's VisualRWKV on RWKV-6 1.6B with CLIP ViT-L/14 at 336 px. Families (DESIGN.md §1):

- ``visualrwkv_*``: RWKV-6 (x060), bidirectional scan, sandwich prompt, 576 patches then CLS, sample-level CE.
- ``visualrwkv_base_*``: RWKV-5 (x052), unidirectional scan, image-first prompt, CLS first, batch-level CE.
- ``visualrwkv_hybrid_*``: as Base, plus one TinyAttention layer after the FFN of the last block.
- ``visualrwkv7_*``: upstream VisualRWKV-7 (v7.00, DESIGN.md §16): RWKV-7 (x070) World 0.1B / 0.4B / 1.5B,
  DINOv2-L/14 reg4 + SigLIP so400m/14 at 448 px and SAM ViT-B/16 at 1024 px concatenated to 3200 channels
  (1024 tokens per image), the gated projector, unidirectional scan, image-first prompt, sample-level CE with
  L2Wrap. Upstream's left padding to a multiple of 16 is off here (``pad_multiple=16`` turns it on;
  ``VisualRWKV.from_upstream`` turns it on for v7 files).

``*_tiny`` presets have the same structure at toy size (a 2-layer RWKV of width 64 over the 257-id byte
vocabulary, a 2-layer CLIP-style tower on 56 px images; for ``visualrwkv7_tiny`` three toy towers giving
4 x 4 grids): for tests and ``make demo``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .config import DataConfig, EncoderConfig, VisualRWKVConfig, split_overrides
from .dtypes import resolve_dtype
from .formats.blinkdl import read_blinkdl
from .formats.upstream7 import v7_encoder, v7_tower_configs
from .rwkv_lm import RWKVConfig
from .visualrwkv import VisualRWKV, build_visualrwkv

__all__ = ["Preset", "create_assembly", "get_assembly_config", "list_assemblies", "register_assembly", "v7_encoder"]


class Preset(NamedTuple):
    """A preset: the network (``config``) paired with the data and loss it is used with (``data``)."""

    config: VisualRWKVConfig
    data: DataConfig

    def replace(self, **overrides: Any) -> Preset:
        """Apply ``create_assembly``-style overrides, each routed to the configuration that has the field."""
        model, data = split_overrides(overrides)
        return Preset(
            self.config.replace(**model) if model else self.config, self.data.replace(**data) if data else self.data
        )


_PRESETS: dict[str, Callable[[], Preset]] = {}


def register_assembly(fn: Callable[[], Preset]) -> Callable[[], Preset]:
    """Register a preset: a function without arguments, named like the preset, returning its ``Preset``."""
    if fn.__name__ in _PRESETS:
        raise ValueError(f"assembly {fn.__name__!r} is already registered")
    _PRESETS[fn.__name__] = fn
    return fn


def list_assemblies(pattern: str = "*") -> list[str]:
    """Sorted preset names matching the shell-style ``pattern`` (e.g. ``"*tiny"``)."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatchcase(n, pattern))


def get_assembly_config(name: str, **overrides: Any) -> Preset:
    """The ``Preset`` (model and data configurations) of ``name`` with ``overrides`` applied."""
    if name not in _PRESETS:
        close = fnmatch.filter(_PRESETS, f"*{name.split('_')[-1]}*") if "_" in name else []
        hint = f"; similar: {', '.join(sorted(close))}" if close else ""
        raise ValueError(f"unknown assembly {name!r}{hint}; see list_assemblies()")
    preset = _PRESETS[name]()
    return preset.replace(**overrides) if overrides else preset


def create_assembly(
    name: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    init_lm: str | os.PathLike | None = None,
    **overrides: Any,
) -> VisualRWKV:
    """Build preset ``name`` with ``overrides`` of any ``VisualRWKVConfig`` or ``DataConfig`` field.

    Args:
        name: A name from ``list_assemblies()``.
        device, dtype: Where and in which dtype to build (``device="meta"`` builds no weights; ``dtype`` a
            ``torch.dtype`` or a name such as ``"bf16"``).
        init_lm: A BlinkDL RWKV ``.pth`` to start the language model from (stage 1 of the recipe); its
            shape-inferred configuration replaces the preset's ``lm``.
        **overrides: e.g. ``scan="multi"``, ``prompt="image_last"``, ``encoder={"pool": 12}``,
            ``lm={"version": "x052"}``, ``hybrid_layers=(23,)``, ``loss="batch"``.

    Example:
        >>> model = create_assembly("visualrwkv_tiny", scan="multi", prompt="image_last")
        >>> model.config.scan, model.data_config.prompt, model.image_tokens
        ('multi', 'image_last', 17)
    """
    lm_state = None
    if init_lm is not None:
        overrides["lm"], lm_state = read_blinkdl(init_lm)
    config, data = get_assembly_config(name, **overrides)
    model = build_visualrwkv(config, data, device=device, dtype=resolve_dtype(dtype))
    if lm_state is not None:
        target = model.lm.emb.weight
        model.lm.load_state_dict({k: v.to(device=target.device, dtype=target.dtype) for k, v in lm_state.items()})
    return model


def _clip_l336(cls: str) -> EncoderConfig:
    return EncoderConfig("open_clip", "ViT-L-14-336", cls=cls)


def _tiny_clip(cls: str) -> EncoderConfig:
    overrides = {"width": 64, "layers": 2, "head_width": 32, "patch_size": 14, "image_size": 56}
    return EncoderConfig("open_clip", "ViT-L-14-336", cls=cls, options={"vision_overrides": overrides})


_SIZES = {  # released RWKV World shapes: layers, width, (mix, decay) LoRA ranks
    "1b6": (24, 2048, (32, 64)),
    "3b": (32, 2560, (32, 64)),
    "7b": (32, 4096, (64, 128)),
}


def _lm(version: str, size: str) -> RWKVConfig:
    layers, dim, (mix, decay) = _SIZES[size]
    return RWKVConfig(version, 65536, dim, layers, 64, None, mix, decay)


def _tiny_lm(version: str) -> RWKVConfig:
    return RWKVConfig(version, 257, 64, 2, 32, None, 8, 16)


def _visualrwkv(lm: RWKVConfig, encoder: EncoderConfig, tokenizer: str = "world") -> Preset:
    return Preset(
        VisualRWKVConfig(lm=lm, encoder=encoder, scan="bi"),
        DataConfig(prompt="sandwich", tokenizer=tokenizer, loss="sample"),
    )


def _base(lm: RWKVConfig, encoder: EncoderConfig, tokenizer: str = "world") -> Preset:
    return Preset(
        VisualRWKVConfig(lm=lm, encoder=encoder, scan="uni"),
        DataConfig(prompt="image_first", tokenizer=tokenizer, loss="batch"),
    )


def _hybrid(lm: RWKVConfig, encoder: EncoderConfig, tokenizer: str = "world") -> Preset:
    return _base(lm, encoder, tokenizer).replace(hybrid_layers=(lm.num_layers - 1,))


@register_assembly
def visualrwkv_1b6_clipl336() -> Preset:
    """VisualRWKV on RWKV-6 World 1.6B (paper: 1.9 B parameters in all)."""
    return _visualrwkv(_lm("x060", "1b6"), _clip_l336("last"))


@register_assembly
def visualrwkv_3b_clipl336() -> Preset:
    """VisualRWKV on RWKV-6 World 3B (paper: 3.4 B)."""
    return _visualrwkv(_lm("x060", "3b"), _clip_l336("last"))


@register_assembly
def visualrwkv_7b_clipl336() -> Preset:
    """VisualRWKV on RWKV-6 World 7B (paper: 7.9 B)."""
    return _visualrwkv(_lm("x060", "7b"), _clip_l336("last"))


@register_assembly
def visualrwkv_base_1b6_clipl336() -> Preset:
    """VisualRWKV-Base on RWKV-5 World 1.5B (24 layers, width 2048)."""
    return _base(_lm("x052", "1b6"), _clip_l336("first"))


@register_assembly
def visualrwkv_base_3b_clipl336() -> Preset:
    """VisualRWKV-Base on RWKV-5 World 3B."""
    return _base(_lm("x052", "3b"), _clip_l336("first"))


@register_assembly
def visualrwkv_base_7b_clipl336() -> Preset:
    """VisualRWKV-Base on RWKV-5 World 7B."""
    return _base(_lm("x052", "7b"), _clip_l336("first"))


@register_assembly
def visualrwkv_hybrid_1b6_clipl336() -> Preset:
    """VisualRWKV-Hybrid: Base 1.5B plus TinyAttention (width 2048, 32 heads) after the last block."""
    return _hybrid(_lm("x052", "1b6"), _clip_l336("first"))


@register_assembly
def visualrwkv_hybrid_7b_clipl336() -> Preset:
    """VisualRWKV-Hybrid: Base 7B plus TinyAttention (width 4096, 64 heads) after block 31 of 32."""
    return _hybrid(_lm("x052", "7b"), _clip_l336("first"))


@register_assembly
def visualrwkv_tiny() -> Preset:
    """Toy VisualRWKV (RWKV-6, bi scan, sandwich prompt, CLS last) for tests and the demo."""
    return _visualrwkv(_tiny_lm("x060"), _tiny_clip("last"), "byte").replace(context_length=256)


@register_assembly
def visualrwkv_base_tiny() -> Preset:
    """Toy VisualRWKV-Base (RWKV-5, uni scan, image-first prompt, CLS first)."""
    return _base(_tiny_lm("x052"), _tiny_clip("first"), "byte").replace(context_length=256)


@register_assembly
def visualrwkv_hybrid_tiny() -> Preset:
    """Toy VisualRWKV-Hybrid (toy Base plus TinyAttention after the last block)."""
    return _hybrid(_tiny_lm("x052"), _tiny_clip("first"), "byte").replace(context_length=256, hybrid_head_dim=32)


# -- VisualRWKV-7 (upstream v7.00) ------------------------------------------------------------------------


def _v7_tiny_encoder() -> EncoderConfig:
    return v7_tower_configs(
        {"img_size": 56, "embed_dim": 64, "depth": 3, "num_heads": 1},
        {"img_size": 56, "embed_dim": 64, "depth": 3, "num_heads": 1},
        {
            "img_size": 128,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 1,
            "global_attn_indexes": [1],
            "window_size": 3,
            "neck_chans": 16,
        },
    )


def _visualrwkv7(lm: RWKVConfig, encoder: EncoderConfig, tokenizer: str = "world") -> Preset:
    return Preset(
        VisualRWKVConfig(lm=lm, encoder=encoder, projector="gated", scan="uni"),
        DataConfig(prompt="image_first", tokenizer=tokenizer, loss="sample", l2wrap=True),
    )


@register_assembly
def visualrwkv7_0b1_dinosiglipsam() -> Preset:
    """VisualRWKV-7 v0700 0B1: RWKV-7 World 0.1B (12 x 768) with DINOv2 + SigLIP + SAM (upstream v7.00)."""
    return _visualrwkv7(RWKVConfig.released("x070", "0b1"), v7_encoder())


@register_assembly
def visualrwkv7_0b4_dinosiglipsam() -> Preset:
    """VisualRWKV-7 v0700 0B4: RWKV-7 World 0.4B (24 x 1024) with DINOv2 + SigLIP + SAM."""
    return _visualrwkv7(RWKVConfig.released("x070", "0b4"), v7_encoder())


@register_assembly
def visualrwkv7_1b5_dinosiglipsam() -> Preset:
    """VisualRWKV-7 v0700 1B5: RWKV-7 World 1.5B (24 x 2048) with DINOv2 + SigLIP + SAM."""
    return _visualrwkv7(RWKVConfig.released("x070", "1b5"), v7_encoder())


@register_assembly
def visualrwkv7_tiny() -> Preset:
    """Toy VisualRWKV-7: a 2-layer x070 RWKV (width 64) and three toy towers (4 x 4 grid, 192 channels)."""
    lm = RWKVConfig("x070", 257, 64, 2, 32, decay_rank=16, a_rank=16, value_rank=8, gate_rank=16)
    return _visualrwkv7(lm, _v7_tiny_encoder(), "byte").replace(context_length=256)
