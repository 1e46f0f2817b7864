"""Upstream VisualRWKV-7 ``.pth`` checkpoints (howard-hou/VisualRWKV ``VisualRWKV-v7/v7.00``, DESIGN.md §16).

A file holds ``rwkv.*`` (a BlinkDL x070 state dict), ``proj.*`` (the gated projector: ``proj.gate.weight``,
``proj.o_proj.weight``, ``proj.ln_v.*``; or one ``proj.weight``), and the three frozen towers:
``vit.dino_featurizer.*`` and ``vit.siglip_featurizer.*`` in timm's names, ``vit.sam_featurizer.*`` in SAM's
image-encoder names (``mlp.lin1``/``lin2`` where timm says ``fc1``/``fc2``). Every tower's shape is read from its
tensors: width, depth, MLP width, input size, SAM's windowed and global blocks (their relative-position tables
have 2 x window - 1 and 2 x grid - 1 rows) and its neck width. What shapes cannot tell is the head count; it is
taken as width / 64 (DINOv2 and SAM heads are 64 wide at every size, SigLIP's 64 except so400m's 16 heads of
72), and ``encoder=`` overrides anything. Upstream's left padding to a multiple of 16 is switched on
(``pad_multiple=16``), because the logits of its checkpoints depend on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..config import EncoderConfig

__all__ = ["TOWER_PREFIXES", "v7_encoder", "v7_encoder_config", "v7_tower_configs", "v7_tower_state", "v7_upstream_key"]

TOWER_PREFIXES = {"dino": "vit.dino_featurizer.", "siglip": "vit.siglip_featurizer.", "sam": "vit.sam_featurizer."}
_CANONICAL_HEADS = {("siglip", 1152): 16}  # so400m: 16 heads of 72; every other width here: heads of 64
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def v7_tower_configs(
    dino: Mapping[str, Any], siglip: Mapping[str, Any], sam: Mapping[str, Any], tokens: int | None = None
) -> EncoderConfig:
    """DINOv2 | SigLIP | SAM concatenated on channels (upstream v7.00), the grid adaptively pooled to ``tokens``.

    Args:
        dino, siglip, sam: ``timm.create_model`` arguments of each tower (``img_size``, ``embed_dim``...).
        tokens: Tokens per image after ``AdaptiveAvgPool2d`` (a square number); ``None`` keeps the whole grid.

    The towers: DINOv2-L/14 reg4 and SigLIP so400m/14 read at block L-2 without the final norm, SAM ViT-B/16
    through its neck (LayerNorm eps 1e-6, as SAM's own encoder) with a 2 x 2 space-to-depth; every tower
    squash-resizes its input.
    """
    pool = None
    if tokens is not None:
        pool = int(round(tokens**0.5))
        if tokens < 1 or pool * pool != tokens:
            raise ValueError(f"tokens per image must be a positive square number, got {tokens}")

    def tower(name: str, layer: int, options: Mapping[str, Any]) -> dict:
        return EncoderConfig("timm", name, layer=layer, cls="none", options={"resize": "squash", **options}).to_dict()

    towers = [
        ["dino", tower("vit_large_patch14_reg4_dinov2", -2, dino)],
        ["siglip", tower("vit_so400m_patch14_siglip_384", -2, siglip)],
        ["sam", tower("samvit_base_patch16", -1, {"norm": True, "space_to_depth": 2, "layer_norm_eps": 1e-6, **sam})],
    ]
    return EncoderConfig(
        "concat", "dinov2_siglip_sam", cls="none", pool=pool, adaptive_pool=True, options={"towers": towers}
    )


def v7_encoder(tokens: int | None = None) -> EncoderConfig:
    """Upstream VisualRWKV-7's encoder: DINOv2-L/14 reg4 and SigLIP so400m/14 at 448 px, SAM ViT-B/16 at 1024 px;
    ``tokens`` pools the 32 x 32 grid (``None``: all 1024, as every released script)."""
    return v7_tower_configs({"img_size": 448}, {"img_size": 448}, {}, tokens)


def _heads(tower: str, width: int, source: str) -> int:
    if (tower, width) in _CANONICAL_HEADS:
        return _CANONICAL_HEADS[(tower, width)]
    if width % 64:
        raise ValueError(
            f"{source}: the {tower} tower's head count is not in the file and its width {width} is not a multiple "
            "of 64; give the encoder yourself: encoder=EncoderConfig(...) (see registry.v7_encoder)"
        )
    return width // 64


def _need(tensors: Mapping[str, Tensor], key: str, tower: str, source: str) -> Tensor:
    """``key`` of a tower (SAM keys already in timm names: ``mlp.fc1`` for upstream's ``mlp.lin1``)."""
    if key not in tensors:
        raise ValueError(f"{source}: the {tower} tower has no {TOWER_PREFIXES[tower]}{key}")
    return tensors[key]


def _depth(tensors: Mapping[str, Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in tensors if (m := _BLOCK.match(k)))


def _mlp_ratio(hidden: int, width: int) -> float:
    # timm builds int(width * mlp_ratio) hidden units: aim half a unit above so the floor lands on `hidden`
    return (hidden + 0.5) / width


def _vit_options(tower: str, tensors: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """timm ``create_model`` arguments for a DINOv2 / SigLIP tower of these tensors."""
    patch = _need(tensors, "patch_embed.proj.weight", tower, source)
    width, size = patch.shape[0], patch.shape[-1]
    positions = _need(tensors, "pos_embed", tower, source).shape[1]  # no class position in either model
    grid = int(round(positions**0.5))
    if grid * grid != positions:
        raise ValueError(f"{source}: the {tower} tower's pos_embed has {positions} rows: not a square grid")
    hidden = _need(tensors, "blocks.0.mlp.fc1.weight", tower, source).shape[0]
    options: dict[str, Any] = {
        "img_size": grid * size,
        "patch_size": size,
        "embed_dim": width,
        "depth": _depth(tensors),
        "num_heads": _heads(tower, width, source),
        "mlp_ratio": _mlp_ratio(hidden, width),
    }
    if tower == "dino" and "reg_token" in tensors:
        options["reg_tokens"] = tensors["reg_token"].shape[1]
    return options


def _sam_options(tensors: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """timm ``samvit`` arguments for a SAM image encoder of these tensors (SAM's names)."""
    patch = _need(tensors, "patch_embed.proj.weight", "sam", source)
    width, size = patch.shape[0], patch.shape[-1]
    grid = _need(tensors, "pos_embed", "sam", source).shape[1]  # [1, g, g, D]
    depth = _depth(tensors)
    rows = [_need(tensors, f"blocks.{i}.attn.rel_pos_h", "sam", source).shape[0] for i in range(depth)]
    global_blocks = [i for i, r in enumerate(rows) if r == 2 * grid - 1]
    windows = {(r + 1) // 2 for i, r in enumerate(rows) if i not in global_blocks}
    if len(windows) > 1:
        raise ValueError(f"{source}: the sam tower's windowed blocks have different window sizes {sorted(windows)}")
    hidden = _need(tensors, "blocks.0.mlp.fc1.weight", "sam", source).shape[0]
    return {
        "img_size": grid * size,
        "patch_size": size,
        "embed_dim": width,
        "depth": depth,
        "num_heads": _heads("sam", width, source),
        "mlp_ratio": _mlp_ratio(hidden, width),
        "global_attn_indexes": global_blocks,
        "window_size": windows.pop() if windows else 14,
        "neck_chans": _need(tensors, "neck.0.weight", "sam", source).shape[0],
    }


def v7_encoder_config(towers: Mapping[str, Mapping[str, Tensor]], source: str) -> EncoderConfig:
    """The DINOv2 | SigLIP | SAM encoder whose towers have these tensors (each tower's keys without prefix)."""
    missing = [name for name in TOWER_PREFIXES if name not in towers]
    if missing:
        raise ValueError(
            f"{source}: a VisualRWKV-7 checkpoint with towers needs all three; missing "
            + ", ".join(f"{TOWER_PREFIXES[n]}*" for n in missing)
        )
    return v7_tower_configs(
        _vit_options("dino", towers["dino"], source),
        _vit_options("siglip", towers["siglip"], source),
        _sam_options(towers["sam"], source),
    )


def v7_upstream_key(key: str) -> tuple[str, str] | None:
    """``(tower, key inside the timm model)`` of an upstream ``vit.*`` key, ``None`` for any other key."""
    for tower, prefix in TOWER_PREFIXES.items():
        if key.startswith(prefix):
            inner = key[len(prefix) :]
            if tower == "sam":
                inner = inner.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2.")
            return tower, inner
    return None


def v7_tower_state(towers: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The towers' tensors under our names (``encoder.towers.{tower}.model.*``)."""
    return {f"encoder.towers.{tower}.model.{k}": v for tower, tensors in towers.items() for k, v in tensors.items()}
