"""VisualRWKV checkpoints: our directory format (``config.json`` + ``model.safetensors``) and upstream ``.pth``.

- ``save_pretrained(model, dir)`` / ``from_pretrained(dir)``: the configuration as JSON and every tensor
  in safetensors; tensors that share memory are stored once (with an alias table in the metadata).
  Both files are written under temporary names and renamed into place.
- ``load_upstream(path)``: a checkpoint of howard-hou/VisualRWKV (DESIGN.md §5): ``rwkv.*`` (a BlinkDL
  RWKV state dict, hybrid blocks adding ``rwkv.blocks.N.tiny_att.*``), ``proj.weight``, and optionally
  the CLIP tower in Hugging Face naming under ``vit.vision_model.*``. The configuration is inferred from
  tensor shapes; the family defaults (scan, prompt, token order, loss) follow from the recurrence and
  the presence of tiny attention, and any field can be overridden.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rwkvblocks.vision import OpenCLIPEncoder, TimmEncoder, hf_clip_vision_to_open_clip

from ._io import atomic_file
from .rwkv_lm import blinkdl_to_state_dict, infer_rwkv_config, raise_key_problems, read_checkpoint
from .visualrwkv import EncoderConfig, VisualRWKV, VisualRWKVConfig, build_visualrwkv

__all__ = ["from_pretrained", "load_upstream", "save_pretrained"]

logger = logging.getLogger("assemblies")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "rwkvblocks.visualrwkv/1"


def save_pretrained(model: VisualRWKV, directory: str | os.PathLike, *, encoder_weights: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Args:
        model: The model.
        directory: Target directory.
        encoder_weights: Store the (frozen) encoder's weights too; without them the files are small and
            ``from_pretrained`` takes the encoder weights from elsewhere.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if encoder_weights or not k.startswith("encoder.")}
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().to("cpu").contiguous()
    metadata = {"format": FORMAT, "aliases": json.dumps(aliases), "encoder_weights": str(encoder_weights).lower()}
    with atomic_file(directory / WEIGHTS_NAME) as f:
        save_file(tensors, f.name, metadata=metadata)
    with atomic_file(directory / CONFIG_NAME) as f:
        f.write((model.config.to_json() + "\n").encode())
    return directory


def _rebuild_encoder(model: VisualRWKV, device, dtype, checkpoint: str | os.PathLike | None) -> None:
    """Replace the (meta) encoder with a real one: random weights, or ``checkpoint`` (local file)."""
    enc: EncoderConfig = model.config.encoder
    options = dict(enc.options)
    if checkpoint is not None:
        options["checkpoint_path"] = checkpoint
    cls = OpenCLIPEncoder if enc.kind == "open_clip" else TimmEncoder
    model.encoder = cls(enc.name, layer=enc.layer, layout=enc.layout(), device=device, dtype=dtype, **options)
    if checkpoint is None:
        logger.warning("the encoder has random weights: pass encoder_checkpoint= to load them from a file")


def _assign(model: VisualRWKV, state: Mapping[str, Tensor], device, dtype, *, encoder_loaded: bool, source: str) -> None:
    """Load ``state`` into a model built on ``meta``; every key of the model must be covered."""
    expected = model.state_dict()
    wanted = {k for k in expected if encoder_loaded or not k.startswith("encoder.")}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: expected {list(expected[k].shape)}, got {list(state[k].shape)}"
        for k in wanted & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    raise_key_problems(f"{source} does not match the model it describes", missing, unexpected, misshaped)
    converted = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() and dtype is not None else v.dtype)
        for k, v in state.items()
    }
    model.load_state_dict(converted, strict=False, assign=True)


def from_pretrained(
    directory: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    encoder_weights: bool = True,
    encoder_checkpoint: str | os.PathLike | None = None,
) -> VisualRWKV:
    """Load a model saved by ``save_pretrained``.

    Args:
        directory: Holds ``config.json`` and ``model.safetensors``.
        device: Target device (default CPU).
        dtype: Parameter dtype; ``None`` keeps the stored dtypes.
        encoder_weights: Load the encoder's weights from the directory. With ``False`` (or when they were
            not saved) the encoder comes from ``encoder_checkpoint``, else it keeps random weights.
        encoder_checkpoint: Local encoder weights (see ``OpenCLIPEncoder`` / ``TimmEncoder``).

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: unreadable JSON, or tensors that do not fit the configuration (named).
    """
    from safetensors import safe_open

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found (expected a save_pretrained directory)")
    try:
        config = VisualRWKVConfig.from_json((directory / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_NAME}: not a VisualRWKV configuration: {err}") from err
    target = torch.device(device) if device is not None else torch.device("cpu")
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    for alias, key in json.loads(metadata.get("aliases", "{}")).items():
        state[alias] = state[key]
    stored_encoder = metadata.get("encoder_weights", "true") == "true"
    load_encoder = encoder_weights and stored_encoder
    if not load_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    with torch.device("meta"):
        model = build_visualrwkv(config)
    _assign(model, state, target, dtype, encoder_loaded=load_encoder, source=str(directory / WEIGHTS_NAME))
    if not load_encoder:
        _rebuild_encoder(model, target, dtype or next(model.proj.parameters()).dtype, encoder_checkpoint)
    return model.eval()


# --------------------------------------------------------------------------------------------
# upstream VisualRWKV .pth

_TINY = re.compile(r"blocks\.(\d+)\.tiny_att\.(.+)")
_FAMILIES = {  # what the paper pairs with each recurrence
    "x060": {"scan": "bi", "prompt": "sandwich", "loss": "sample", "cls": "last"},
    "x052": {"scan": "uni", "prompt": "image_first", "loss": "batch", "cls": "first"},
}


def _tower_config(tower: Mapping[str, Tensor]) -> dict:
    """open_clip ``vision_cfg`` entries read from a Hugging Face CLIP vision state dict's shapes."""
    width = tower["embeddings.class_embedding"].shape[0]
    patch = tower["embeddings.patch_embedding.weight"].shape[-1]
    positions = tower["embeddings.position_embedding.weight"].shape[0]
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid != positions - 1:
        raise ValueError(f"vit position embedding has {positions} rows: not a square grid plus CLS")
    layers = 1 + max(int(m.group(1)) for k in tower if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    hidden = tower["encoder.layers.0.mlp.fc1.weight"].shape[0]
    return {
        "width": width,
        "layers": layers,
        "patch_size": patch,
        "image_size": grid * patch,
        "head_width": 64 if width % 64 == 0 else width,  # OpenAI CLIP: heads of 64
        "mlp_ratio": hidden / width,
    }


_CLIP_L336 = {"width": 1024, "layers": 24, "patch_size": 14, "image_size": 336, "head_width": 64, "mlp_ratio": 4.0}


def load_upstream(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    encoder_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> VisualRWKV:
    """Load an upstream VisualRWKV ``.pth`` (read with ``torch.load(weights_only=True)``).

    Args:
        path: The checkpoint.
        device, dtype: Target device (default CPU) and dtype (default: that of ``rwkv.emb.weight``).
        encoder_checkpoint: Encoder weights for a file without the ``vit.*`` tower (else random).
        **overrides: ``VisualRWKVConfig`` fields that shapes cannot tell (``scan``, ``prompt``,
            ``encoder={"cls": ...}``, ``loss``...); defaults follow the family.

    Raises:
        ValueError: not a tensor dict (pickled objects are refused), or keys/shapes that do not form a
            VisualRWKV model: every missing, unexpected and mis-shaped key is named with both shapes.
    """
    source = os.fspath(path)
    raw = read_checkpoint(source)
    rwkv, tiny, tower, rest = {}, {}, {}, {}
    for key, value in raw.items():
        if key.startswith("rwkv."):
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
        raise ValueError(f"{source}: no 'rwkv.*' tensors: not an upstream VisualRWKV checkpoint")
    lm_config = infer_rwkv_config(rwkv)
    lm_state = blinkdl_to_state_dict(rwkv, lm_config)
    family = dict(_FAMILIES[lm_config.version])
    hybrid_layers = tuple(sorted({i for i, _ in tiny}))
    hybrid_dim = None
    if hybrid_layers:
        q = tiny.get((hybrid_layers[0], "tiny_q.weight"))
        if q is None:
            raise ValueError(f"{source}: missing rwkv.blocks.{hybrid_layers[0]}.tiny_att.tiny_q.weight")
        hybrid_dim = q.shape[0]
    proj = rest.pop("proj.weight", None)
    if proj is None or proj.dim() != 2:
        raise ValueError(f"{source}: missing or malformed proj.weight (expected [C, vision_dim])")
    encoder_options: dict = {}
    if tower:
        shape = _tower_config({k[len("vision_model.") :]: v for k, v in tower.items()})
        if shape != _CLIP_L336:
            encoder_options = {"vision_overrides": {k: v for k, v in shape.items()}}
    encoder = EncoderConfig("open_clip", "ViT-L-14-336", cls=family.pop("cls"), options=encoder_options)
    config = VisualRWKVConfig(
        lm=lm_config,
        encoder=encoder,
        hybrid_layers=hybrid_layers,
        hybrid_dim=hybrid_dim,
        hybrid_head_dim=64 if hybrid_dim is None or hybrid_dim % 64 == 0 else hybrid_dim,
        **family,
    )
    if overrides:
        config = config.replace(**overrides)
    state: dict[str, Tensor] = {f"lm.{k}": v for k, v in lm_state.items()}
    for (i, name), value in tiny.items():
        state[f"lm.blocks.{i}.tiny_att.{name}"] = value
    state["proj.weight"] = proj
    for key in rest:
        state[f"(unrecognised) {key}"] = rest[key]
    with torch.device("meta"):
        model = build_visualrwkv(config)
    if tower:
        visual = hf_clip_vision_to_open_clip(tower, prefix="vision_model.")
        unused = model.encoder.visual.proj  # open_clip's output projection: unused by the encoder, absent upstream
        if "proj" not in visual and unused is not None:
            visual["proj"] = torch.zeros(unused.shape, dtype=proj.dtype)
        state.update({f"encoder.visual.{k}": v for k, v in visual.items()})
    dtype = dtype or lm_state["emb.weight"].dtype
    target = torch.device(device) if device is not None else torch.device("cpu")
    _assign(model, state, target, dtype, encoder_loaded=bool(tower), source=source)
    if not tower:
        _rebuild_encoder(model, target, dtype, encoder_checkpoint)
    return model.eval()
