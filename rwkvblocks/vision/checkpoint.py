"""Local weight files, and Hugging Face CLIP vision weights converted to open_clip's naming.

Upstream VisualRWKV checkpoints carry their frozen CLIP tower in Hugging Face ``CLIPVisionModel``
naming under ``vit.vision_model.*`` (DESIGN.md §5). ``hf_clip_vision_to_open_clip`` renames those
tensors for an open_clip ``VisionTransformer`` and fuses the separate q, k, v projections into
``in_proj_weight`` / ``in_proj_bias`` (rows in q, k, v order, as ``nn.MultiheadAttention`` splits them).

What the weights cannot say — the head count, the activation — lives in the tower's Hugging Face
configuration (``config.json``); ``hf_clip_vision_cfg`` reads it into open_clip's ``vision_cfg`` terms.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["hf_clip_vision_cfg", "hf_clip_vision_to_open_clip", "load_state_dict_file"]

_HF_CLS = "embeddings.class_embedding"
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
# Hugging Face name (under the vision_model prefix) -> open_clip VisionTransformer name
_HF_TOP = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",  # sic: "layrnorm" is the real Hugging Face name
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_HF_BLOCK = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_HF_IGNORED = ("embeddings.position_ids",)  # a buffer older transformers versions saved
# transformers' CLIPVisionConfig defaults: a saved config leaves out the values equal to them (nested configs
# are written as a difference from the defaults), so a missing entry means the default
_HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
}
_HF_ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip's quick_gelu flag


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a tensor dict from a local ``.safetensors`` file or a ``torch.save`` file.

    ``torch.load`` runs with ``weights_only=True`` (no pickled code). A top-level ``"state_dict"`` entry
    (Lightning and DeepSpeed exports) is unwrapped. The format follows the name (``*.safetensors`` or
    anything else for ``torch.save``); a file whose first bytes say otherwise is refused, naming what it is.

    Raises:
        FileNotFoundError: ``path`` is not a file; the message names it.
        CheckpointError: (a ``ValueError``) the file is empty, truncated or corrupt, of the other format, holds
            pickled code, or does not hold a dict of tensors; the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
    state = _read_torch(path, mmap=False, safetensors_hint="name it *.safetensors to read it as one")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            path, f"not a weights file: {path} does not hold a dict of tensors (it holds a {type(state).__name__})"
        )
    return state


def _sniff(path: Path) -> tuple[str, bytes]:
    """What the first bytes of ``path`` say it is: ``"empty"``, ``"safetensors"``, ``"zip"`` (``torch.save``),
    ``"pickle"`` (legacy ``torch.save``) or ``"unknown"``; and those bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "empty", head
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors", head  # an 8-byte header length, then the JSON header
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip", head
    if head[:1] == b"\x80":  # pickle protocol 2+
        return "pickle", head
    return "unknown", head


_KINDS = {
    "zip": "torch.save file (zip archive)",
    "pickle": "legacy torch.save file (pickle)",
    "safetensors": "safetensors file",
}


def _read_torch(path: Path, *, mmap: bool, safetensors_hint: str) -> Any:
    """``torch.load(path, weights_only=True)`` (memory-mapped if ``mmap`` and the file is a zip archive), every
    failure a ``CheckpointError`` saying why: empty, safetensors, not a ``torch.save`` file, pickled code refused,
    truncated or corrupt."""
    import pickle

    kind, head = _sniff(path)
    if kind == "empty":
        raise CheckpointError(path, "empty file (0 bytes): not a torch.save checkpoint")
    if kind == "safetensors":
        raise CheckpointError(path, f"a safetensors file, not a torch.save checkpoint: {safetensors_hint}")
    if kind == "unknown":
        raise CheckpointError(
            path, f"not a torch.save checkpoint: neither a zip archive nor a pickle (it starts with {head[:12]!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" not in text.lower():
            raise CheckpointError(path, f"truncated or corrupt {_KINDS[kind]}: {_first_line(text)}") from err
        detail = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.startswith(("Weights only load failed", "Check the documentation"))
        ]
        raise CheckpointError(
            path,
            "refused by torch.load(weights_only=True): it holds pickled code or objects other than tensors, or its "
            f"pickle is corrupt ({detail[0] if detail else _first_line(text)})",
        ) from err
    except Exception as err:  # EOFError, RuntimeError("PytorchStreamReader failed ..."), KeyError, ...
        raise CheckpointError(
            path, f"truncated or corrupt {_KINDS[kind]}: {type(err).__name__}: {_first_line(str(err))}"
        ) from err


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata; a ``CheckpointError`` saying why otherwise
    (a ``torch.save`` file, an empty, truncated or corrupt one)."""
    from safetensors import safe_open

    kind, _ = _sniff(path)
    if kind == "empty":
        raise CheckpointError(path, "empty file (0 bytes): not a safetensors file")
    if kind in ("zip", "pickle"):
        raise CheckpointError(path, f"a {_KINDS[kind]}, not a safetensors file: name it *.pt or *.pth")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
    except Exception as err:  # safetensors' SafetensorError: header too large, incomplete, invalid JSON...
        raise CheckpointError(path, f"truncated or corrupt safetensors file: {_first_line(str(err))}") from err
    return tensors, dict(metadata)


def _first_line(text: str) -> str:
    line = next((t.strip() for t in text.splitlines() if t.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."


def _hf_prefix(state_dict: dict[str, Tensor]) -> str | None:
    prefixes = sorted(k[: -len(_HF_CLS)] for k in state_dict if k.endswith(_HF_CLS))
    if len(prefixes) > 1:
        raise ValueError(f"state dict holds several Hugging Face CLIP towers: {prefixes}")
    return prefixes[0] if prefixes else None


def hf_clip_vision_to_open_clip(state_dict: dict[str, Tensor], *, prefix: str | None = None) -> dict[str, Tensor]:
    """Convert Hugging Face CLIP vision weights to an open_clip ``VisionTransformer`` state dict.

    Keys outside ``prefix`` (``rwkv.*``, ``proj.*`` in an upstream checkpoint) are ignored; every key
    inside it must be understood. The result has no ``proj`` (``CLIPVisionModel`` has no projection).

    Args:
        state_dict: Tensors named ``{prefix}embeddings.class_embedding``, ``{prefix}pre_layrnorm.weight``,
            ``{prefix}encoder.layers.{i}.self_attn.q_proj.weight``, ...
        prefix: The key prefix of the tower, e.g. ``"vit.vision_model."`` (upstream VisualRWKV) or
            ``"vision_model."`` (``CLIPVisionModel``); found from the class embedding's key if ``None``.

    Returns:
        A new dict in open_clip naming (``class_embedding``, ``conv1.weight``, ``ln_pre.*``,
        ``transformer.resblocks.{i}.attn.in_proj_weight``, ...), sharing the input tensors except the
        fused q/k/v.
    """
    if prefix is None:
        prefix = _hf_prefix(state_dict)
        if prefix is None:
            raise ValueError(f"no Hugging Face CLIP vision tower found: no key ends with {_HF_CLS!r}")
    tower = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if _HF_CLS not in tower:
        raise ValueError(f"no {prefix + _HF_CLS!r} in the state dict")
    out: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for name, tensor in tower.items():
        layer = _HF_LAYER.fullmatch(name)
        if name in _HF_TOP:
            out[_HF_TOP[name]] = tensor
        elif name in _HF_IGNORED:
            continue
        elif layer and layer.group(2) in _HF_BLOCK:
            out[f"transformer.resblocks.{layer.group(1)}.{_HF_BLOCK[layer.group(2)]}"] = tensor
        elif layer and layer.group(2).rsplit(".", 1)[0] in _HF_QKV:
            qkv.setdefault(int(layer.group(1)), {})[layer.group(2)] = tensor
        else:
            unknown.append(prefix + name)
    if unknown:
        raise ValueError(f"unrecognised Hugging Face CLIP vision keys: {unknown}")
    for i, parts in sorted(qkv.items()):
        for kind in ("weight", "bias"):
            names = [f"{proj}.{kind}" for proj in _HF_QKV]
            missing = [prefix + f"encoder.layers.{i}.{n}" for n in names if n not in parts]
            if missing:
                raise ValueError(f"incomplete q/k/v projections: missing {missing}")
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts[n] for n in names])
    return out


def _read_config(config: str | os.PathLike | Mapping | Any) -> dict:
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"Hugging Face CLIP config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {path} as a JSON config: {err}") from err
    elif isinstance(config, Mapping):
        data = config
    elif callable(getattr(config, "to_dict", None)):  # a transformers CLIPConfig / CLIPVisionConfig
        data = config.to_dict()
    else:
        raise ValueError(
            f"expected a config.json path, its directory, a dict or a transformers config, got {type(config).__name__}"
        )
    if not isinstance(data, Mapping):
        raise ValueError(f"a CLIP config must be a JSON object, got {type(data).__name__}")
    return dict(data)


def hf_clip_vision_cfg(config: str | os.PathLike | Mapping | Any) -> tuple[dict, bool]:
    """open_clip ``vision_cfg`` entries and the activation of the tower a Hugging Face CLIP config describes.

    The head count of a CLIP tower cannot be read from its weights (4 heads of 16 and 1 head of 64 have the
    same tensors); this is where it is written down. Accepted: a ``CLIPVisionConfig`` (``model_type``
    ``"clip_vision_model"``, ``num_attention_heads`` at the top level), or a config that nests one under
    ``vision_config`` (``CLIPConfig``, LLaVA). Entries a saved config leaves out take transformers'
    ``CLIPVisionConfig`` defaults, as ``from_pretrained`` would.

    Args:
        config: A ``config.json`` path or the model directory holding it (what upstream VisualRWKV's
            ``--vision_tower_name`` names), the parsed JSON, or a transformers config object.

    Returns:
        ``({"width", "layers", "head_width", "patch_size", "image_size", "mlp_ratio"}, quick_gelu)``.

    Raises:
        FileNotFoundError: no such file (or no ``config.json`` in the directory).
        ValueError: not a CLIP vision config, heads that do not divide the width, or an activation open_clip
            lacks (``hidden_act`` other than ``"quick_gelu"`` / ``"gelu"``).
    """
    data = _read_config(config)
    if any(k in data for k in ("vision_config", "vision_config_dict")) or data.get("model_type") == "clip":
        vision = {**(data.get("vision_config") or {}), **(data.get("vision_config_dict") or {})}
    else:
        vision = data
    kind = vision.get("model_type", "clip_vision_model")
    if kind != "clip_vision_model":
        raise ValueError(f"expected a CLIP vision config (model_type 'clip_vision_model'), got model_type {kind!r}")
    v = {**_HF_VISION_DEFAULTS, **{k: vision[k] for k in _HF_VISION_DEFAULTS if vision.get(k) is not None}}
    width, heads = v["hidden_size"], v["num_attention_heads"]
    if not (isinstance(heads, int) and heads > 0 and isinstance(width, int) and width % heads == 0):
        raise ValueError(f"num_attention_heads={heads!r} must be a positive divisor of hidden_size={width!r}")
    if v["hidden_act"] not in _HF_ACTIVATIONS:
        raise ValueError(f"hidden_act={v['hidden_act']!r}: open_clip towers have {sorted(_HF_ACTIVATIONS)}")
    shape = {
        "width": width,
        "layers": v["num_hidden_layers"],
        "head_width": width // heads,
        "patch_size": v["patch_size"],
        "image_size": v["image_size"],
        "mlp_ratio": v["intermediate_size"] / width,
    }
    return shape, _HF_ACTIVATIONS[v["hidden_act"]]
