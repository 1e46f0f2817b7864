"""Upstream VisualRWKV ``.pth`` checkpoints (howard-hou/VisualRWKV, DESIGN.md §5), read into our layout.

A file holds ``rwkv.*`` (a BlinkDL RWKV state dict; hybrid blocks add ``rwkv.blocks.N.tiny_att.*``),
``proj.weight``, and optionally the CLIP tower in Hugging Face naming under ``vit.vision_model.*``. The
configuration is inferred from tensor shapes; the family defaults (scan, prompt, token order, loss) follow
from the recurrence, and any field can be overridden. ``VisualRWKV.from_upstream`` builds the model.

The one thing of the tower that shapes cannot tell is its head count (4 heads of 16 and 1 head of 64 have the
same tensors), and the file does not store it: upstream saves ``state_dict()`` alone, and the architecture
is that of the Hugging Face model named by its ``--vision_tower_name``. So it comes from the user
(``vision_heads=N``, or ``encoder={"options": {"vision_overrides": {"head_width": K}}}``) or from that model's
``config.json`` (``vision_config=``), all who give it agreeing; else heads of 64 are assumed (OpenAI CLIP, whose
ViT-L/14-336 upstream uses) and a warning on the ``"assemblies"`` logger says so.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from rwkvblocks.errors import CheckpointError
from rwkvblocks.vision import hf_clip_vision_to_open_clip
from rwkvblocks.vision.checkpoint import hf_clip_vision_cfg

from ..config import DataConfig, EncoderConfig, VisualRWKVConfig, split_overrides
from ._common import check_blocks, read_checkpoint
from .blinkdl import blinkdl_to_state_dict, infer_rwkv_config
from .upstream7 import v7_encoder, v7_encoder_config, v7_tower_state, v7_upstream_key

__all__ = ["UpstreamCheckpoint", "read_upstream"]

_TINY = re.compile(r"blocks\.(\d+)\.tiny_att\.(.+)")
_FAMILIES = {  # what the paper pairs with each recurrence: (model fields, data fields, CLS position)
    "x060": ({"scan": "bi"}, {"prompt": "sandwich", "loss": "sample"}, "last"),
    "x052": ({"scan": "uni"}, {"prompt": "image_first", "loss": "batch"}, "first"),
    "x070": ({"scan": "uni", "pad_multiple": 16}, {"prompt": "image_first", "loss": "sample", "l2wrap": True}, "none"),
}
_CLIP_L336 = {"width": 1024, "layers": 24, "patch_size": 14, "image_size": 336, "head_width": 64, "mlp_ratio": 4.0}
_ASSUMED_HEAD_WIDTH = 64  # OpenAI CLIP's, when neither the user nor a config says
_HOW_TO_SAY = (
    "pass vision_heads=N, vision_config='path/to/config.json' (the Hugging Face config of the tower upstream "
    "trained with) or encoder={'options': {'vision_overrides': {'head_width': K}}}; "
    "rwkvblocks convert: --vision-heads N or --vision-config PATH"
)

logger = logging.getLogger("assemblies")


class UpstreamCheckpoint(NamedTuple):
    """What ``read_upstream`` found: both configurations, the tensors in our key names, and the tower.

    Attributes:
        config, data_config: The inferred (and overridden) configurations.
        state: ``lm.*``, ``proj.weight`` and, with a tower, ``encoder.visual.*`` tensors (our names).
        has_tower: Whether the file carried the CLIP tower.
        source: The path, for messages.
    """

    config: VisualRWKVConfig
    data_config: DataConfig
    state: dict[str, Tensor]
    has_tower: bool
    source: str


def _tower_config(tower: Mapping[str, Tensor], source: str) -> dict:
    """open_clip ``vision_cfg`` entries read from a Hugging Face CLIP vision state dict's shapes.

    Everything but ``head_width``: the head count leaves no trace in the shapes.

    Raises:
        CheckpointError: a tensor the shape is read from is missing or of the wrong rank, or the tower's layers
            have a gap or do not all carry the same tensors.
    """
    need = {
        "embeddings.class_embedding": 1,
        "embeddings.patch_embedding.weight": 4,
        "embeddings.position_embedding.weight": 2,
        "encoder.layers.0.mlp.fc1.weight": 2,
    }
    bad = [
        f"vit.vision_model.{k} (expected a {n}-D tensor)"
        for k, n in need.items()
        if not isinstance(tower.get(k), Tensor) or tower[k].dim() != n
    ]
    if bad:
        raise CheckpointError(
            source, "the CLIP tower (vit.vision_model.*) is incomplete: missing or malformed " + ", ".join(bad)
        )
    layers = len(check_blocks(tower, source, prefix="encoder.layers.", optional=lambda i, name: False))
    width = tower["embeddings.class_embedding"].shape[0]
    patch = tower["embeddings.patch_embedding.weight"].shape[-1]
    positions = tower["embeddings.position_embedding.weight"].shape[0]
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid != positions - 1:
        raise CheckpointError(source, f"vit position embedding has {positions} rows: not a square grid plus CLS")
    hidden = tower["encoder.layers.0.mlp.fc1.weight"].shape[0]
    return {
        "width": width,
        "layers": layers,
        "patch_size": patch,
        "image_size": grid * patch,
        "mlp_ratio": hidden / width,
    }


def _split_vision_overrides(encoder: Any) -> tuple[dict, Any]:
    """The user's ``encoder={"options": {"vision_overrides": ...}}`` apart from the rest of the override."""
    if not isinstance(encoder, Mapping) or not isinstance(encoder.get("options"), Mapping):
        return {}, encoder
    options = dict(encoder["options"])
    vision = options.pop("vision_overrides", None) or {}
    if not isinstance(vision, Mapping):
        raise ValueError(f"encoder options vision_overrides must be a mapping, got {type(vision).__name__}")
    rest = {k: v for k, v in encoder.items() if k != "options"}
    if options:
        rest["options"] = options
    return dict(vision), rest


def _divides(value: Any, width: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and width % value == 0


def _head_width(width: int, source: str, said: list[tuple[int, str]], canonical: bool = False) -> int:
    """The tower's head width from whoever gave one (``(head width, who)`` pairs): they must agree.

    With nobody, heads of 64 (OpenAI CLIP) are assumed and a warning says so; an error when 64 cannot be
    right because it does not divide the width. ``canonical``: the tower has exactly the shape of CLIP
    ViT-L/14-336, which upstream always builds from OpenAI's release (16 heads of 64), so the assumption is
    logged at info level only.
    """
    if len({value for value, _ in said}) > 1:
        raise ValueError(
            f"{source}: the CLIP tower's head count is given differently: "
            + ", ".join(f"{who} (heads of {value})" for value, who in said)
        )
    if said:
        return said[0][0]
    if width % _ASSUMED_HEAD_WIDTH:
        raise ValueError(
            f"{source}: the CLIP tower's head count is not in the file and shapes cannot tell it; heads of "
            f"{_ASSUMED_HEAD_WIDTH} (OpenAI CLIP, assumed otherwise) do not divide its width {width}: {_HOW_TO_SAY}"
        )
    if canonical:
        logger.info(
            "%s: the CLIP tower has the shape of OpenAI's ViT-L/14-336 (upstream's tower); using its 16 heads of %d",
            source,
            _ASSUMED_HEAD_WIDTH,
        )
        return _ASSUMED_HEAD_WIDTH
    logger.warning(
        "%s: the CLIP tower's head count is not in the file and shapes cannot tell it; assuming heads of %d "
        "as in OpenAI CLIP (width %d = %d x %d). If the tower has other heads its output is wrong: %s",
        source,
        _ASSUMED_HEAD_WIDTH,
        width,
        width // _ASSUMED_HEAD_WIDTH,
        _ASSUMED_HEAD_WIDTH,
        _HOW_TO_SAY,
    )
    return _ASSUMED_HEAD_WIDTH


def _encoder_options(
    shape: dict | None, user_vision: dict, vision_heads: int | None, vision_config: Any, source: str
) -> dict:
    """The open_clip encoder options for the tower of inferred ``shape`` (``None``: the file has none).

    Its head width from whoever says it, the activation of ``vision_config``, and the user's
    ``vision_overrides`` merged last.
    """
    described, quick_gelu = hf_clip_vision_cfg(vision_config) if vision_config is not None else (None, None)
    named = os.fspath(vision_config) if isinstance(vision_config, (str, os.PathLike)) else "vision_config"
    if shape is None:
        if vision_heads is not None:
            raise ValueError(
                f"{source}: vision_heads={vision_heads} needs the CLIP tower (vit.*) in the file, to know its "
                "width; describe the encoder with encoder={'options': {'vision_overrides': {...}}} or vision_config="
            )
        vision = dict(described or {})
    else:
        if described is not None:
            differ = [f"{k}: config {described[k]}, file {v}" for k, v in shape.items() if described[k] != v]
            if differ:
                raise ValueError(f"{named} describes another tower than {source}'s: {'; '.join(differ)}")
        width, said = shape["width"], []
        if "head_width" in user_vision:
            if not _divides(user_vision["head_width"], width):
                raise ValueError(
                    f"vision_overrides head_width={user_vision['head_width']!r} must be a positive divisor of the "
                    f"CLIP tower's width {width} in {source}"
                )
            said.append((user_vision["head_width"], f"vision_overrides head_width={user_vision['head_width']}"))
        if vision_heads is not None:
            if not _divides(vision_heads, width):
                raise ValueError(
                    f"vision_heads={vision_heads!r} must be a positive divisor of the CLIP tower's width {width} "
                    f"in {source}"
                )
            said.append((width // vision_heads, f"vision_heads={vision_heads}"))
        if described is not None:
            said.append((described["head_width"], f"{named} ({width // described['head_width']} heads)"))
        canonical = {k: v for k, v in shape.items() if k != "head_width"} == {
            k: v for k, v in _CLIP_L336.items() if k != "head_width"
        }
        vision = {**shape, "head_width": _head_width(width, source, said, canonical)}
    vision.update(user_vision)  # inferred shape first, the user's entries last
    options: dict = {} if quick_gelu is None else {"quick_gelu": quick_gelu}
    if vision and vision != _CLIP_L336:
        options["vision_overrides"] = vision
    return options


def read_upstream(
    path: str | os.PathLike,
    *,
    vision_heads: int | None = None,
    vision_config: str | os.PathLike | Mapping | Any | None = None,
    **overrides: Any,
) -> UpstreamCheckpoint:
    """Read an upstream VisualRWKV ``.pth`` (``torch.load(weights_only=True)``) into our layout.

    The CLIP tower's shape is read from its tensors, except its head count (see the module docstring):
    ``vision_heads``, a ``head_width`` in ``encoder={"options": {"vision_overrides": ...}}`` or
    ``vision_config`` give it (when several do, they must agree); without any of them heads of 64 are
    assumed and a warning says so. A partial ``vision_overrides`` is merged into the inferred shape, the
    user's entries last.

    Args:
        path: The checkpoint.
        vision_heads: Attention heads of the file's CLIP tower (head width = width / heads).
        vision_config: The tower's Hugging Face config (``config.json``, its directory, a dict or a
            transformers ``CLIPConfig`` / ``CLIPVisionConfig``; see ``hf_clip_vision_cfg``): the head count
            and the activation come from it, and it must describe the tower in the file. For a file without
            the tower it gives the encoder's shape.
        **overrides: ``VisualRWKVConfig`` or ``DataConfig`` fields that shapes cannot tell (``scan``,
            ``prompt``, ``encoder={"cls": ...}``, ``loss``...); defaults follow the family.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) an unreadable file (empty, truncated, corrupt, not a ``torch.save``
            file, pickled objects), not a tensor dict, no ``rwkv.*`` / ``proj.weight``, blocks (RWKV or CLIP) with
            a gap or with different keys.
        ValueError: a head
            count that does not divide the tower's width or that sources give differently, a ``vision_config``
            that describes another tower, or ``vision_heads`` for a file without the tower.
    """
    source = os.fspath(path)
    raw = read_checkpoint(source)
    rwkv, tiny, tower, towers7, rest = {}, {}, {}, {}, {}
    for key, value in raw.items():
        v7 = v7_upstream_key(key)
        if v7 is not None:
            towers7.setdefault(v7[0], {})[v7[1]] = value
        elif key.startswith("rwkv."):
            sub = key[len("rwkv.") :]
            m = _TINY.fullmatch(sub)
            if m:
                tiny[(int(m.group(1)), m.group(2))] = value
            else:
                rwkv[sub] = value
        elif key.startswith("vit.vision_model."):
            tower[key[len("vit.") :]] = value
        else:
            rest[key] = value
    if not rwkv:
        raise CheckpointError(source, "no 'rwkv.*' tensors: not an upstream VisualRWKV checkpoint")
    lm_config = infer_rwkv_config(rwkv, source=source)
    lm_state = blinkdl_to_state_dict(rwkv, lm_config, source=source)
    if lm_config.version == "x070" or towers7:
        return _read_v7(source, lm_config, lm_state, towers7, tower, tiny, rest, vision_heads, vision_config, overrides)
    model_defaults, data_defaults, cls = _FAMILIES[lm_config.version]
    hybrid_layers = tuple(sorted({i for i, _ in tiny}))
    hybrid_dim = None
    if hybrid_layers:
        q = tiny.get((hybrid_layers[0], "tiny_q.weight"))
        if q is None:
            raise CheckpointError(source, f"missing rwkv.blocks.{hybrid_layers[0]}.tiny_att.tiny_q.weight")
        hybrid_dim = q.shape[0]
    proj = rest.pop("proj.weight", None)
    if proj is None or proj.dim() != 2:
        raise CheckpointError(source, "missing or malformed proj.weight (expected [C, vision_dim])")
    encoder = overrides.pop("encoder", None)
    user_vision, encoder = _split_vision_overrides(encoder)
    if encoder:
        overrides["encoder"] = encoder
    if isinstance(encoder, EncoderConfig):  # the whole encoder replaced: nothing inferred is used
        if vision_heads is not None or vision_config is not None:
            raise ValueError(
                "vision_heads / vision_config describe the file's tower; encoder=EncoderConfig(...) "
                "replaces it: give one or the other"
            )
        encoder_options = {}
    else:
        shape = _tower_config({k[len("vision_model.") :]: v for k, v in tower.items()}, source) if tower else None
        encoder_options = _encoder_options(shape, user_vision, vision_heads, vision_config, source)
    config = VisualRWKVConfig(
        lm=lm_config,
        encoder=EncoderConfig("open_clip", "ViT-L-14-336", cls=cls, options=encoder_options),
        hybrid_layers=hybrid_layers,
        hybrid_dim=hybrid_dim,
        hybrid_head_dim=64 if hybrid_dim is None or hybrid_dim % 64 == 0 else hybrid_dim,
        **model_defaults,
    )
    data_config = DataConfig(**data_defaults)
    model_changes, data_changes = split_overrides(overrides)
    config = config.replace(**model_changes) if model_changes else config
    data_config = data_config.replace(**data_changes) if data_changes else data_config
    state: dict[str, Tensor] = {f"lm.{k}": v for k, v in lm_state.items()}
    for (i, name), value in tiny.items():
        state[f"lm.blocks.{i}.tiny_att.{name}"] = value
    state["proj.weight"] = proj
    for key in rest:
        state[f"(unrecognised) {key}"] = rest[key]
    if tower:
        visual = hf_clip_vision_to_open_clip(tower, prefix="vision_model.")
        state.update({f"encoder.visual.{k}": v for k, v in visual.items()})
    return UpstreamCheckpoint(config, data_config, state, bool(tower), source)


def _read_v7(
    source: str,
    lm_config,
    lm_state: dict[str, Tensor],
    towers: dict[str, dict[str, Tensor]],
    clip_tower: dict[str, Tensor],
    tiny: dict,
    rest: dict[str, Tensor],
    vision_heads: int | None,
    vision_config: Any,
    overrides: dict[str, Any],
) -> UpstreamCheckpoint:
    """A VisualRWKV-7 (v7.00) file: x070 ``rwkv.*``, ``proj.*`` and the DINOv2 / SigLIP / SAM towers."""
    if lm_config.version != "x070":
        raise CheckpointError(source, f"VisualRWKV-7 towers (vit.*_featurizer) next to an {lm_config.version} RWKV")
    if clip_tower or tiny:
        found = "a CLIP tower (vit.vision_model.*)" if clip_tower else "TinyAttention layers (tiny_att)"
        raise CheckpointError(source, f"an x070 VisualRWKV-7 checkpoint does not carry {found}")
    if vision_heads is not None or vision_config is not None:
        raise ValueError(
            "vision_heads / vision_config describe a CLIP tower; a VisualRWKV-7 file has DINOv2 / SigLIP / SAM "
            "towers (their shapes are read from the file; encoder=... overrides them)"
        )
    proj = {k[len("proj.") :]: rest.pop(k) for k in list(rest) if k.startswith("proj.")}
    if set(proj) == {"weight"}:
        projector = "linear"
    elif {"gate.weight", "o_proj.weight"} <= set(proj):
        projector = "gated"
    else:
        raise CheckpointError(
            source,
            "no projector: expected proj.gate.weight, proj.o_proj.weight and proj.ln_v.* (or proj.weight), "
            f"found {sorted('proj.' + k for k in proj) or 'no proj.* keys'}",
        )
    model_defaults, data_defaults, _ = _FAMILIES["x070"]
    encoder = v7_encoder_config(towers, source) if towers else None
    config = VisualRWKVConfig(lm=lm_config, projector=projector, **model_defaults)
    if encoder is not None:
        config = config.replace(encoder=encoder)
    elif not isinstance(overrides.get("encoder"), EncoderConfig):
        config = config.replace(encoder=v7_encoder())  # no towers in the file: upstream's, random weights
    data_config = DataConfig(**data_defaults)
    model_changes, data_changes = split_overrides(overrides)
    config = config.replace(**model_changes) if model_changes else config
    data_config = data_config.replace(**data_changes) if data_changes else data_config
    state: dict[str, Tensor] = {f"lm.{k}": v for k, v in lm_state.items()}
    state.update({f"proj.{k}": v for k, v in proj.items()})
    state.update(v7_tower_state(towers))
    for key, value in rest.items():
        state[f"(unrecognised) {key}"] = value
    return UpstreamCheckpoint(config, data_config, state, bool(towers), source)
