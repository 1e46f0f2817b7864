"""Our checkpoint directory format: ``config.json`` + ``model.safetensors``.

The model side (``VisualRWKV.save_pretrained`` / ``VisualRWKV.from_pretrained``) turns a model into a
configuration dict and a state dict and back; this module only stores and reads them. Tensors that share
memory are stored once, with an alias table in the safetensors metadata. Both files are written under
temporary names and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..._io import atomic_file

__all__ = ["CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "read_pretrained", "write_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "rwkvblocks.visualrwkv/2"


def write_pretrained(
    directory: str | os.PathLike, config: Mapping[str, Any], state: Mapping[str, Tensor], *, encoder_weights: bool
) -> Path:
    """Write ``config`` (JSON) and ``state`` (safetensors) into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
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
        f.write((json.dumps({"format": FORMAT, **config}, indent=2, sort_keys=True) + "\n").encode())
    return directory


def read_pretrained(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor], bool]:
    """The configuration dict, every tensor (aliases restored) and whether encoder weights were stored.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: ``config.json`` is not a JSON object.
    """
    from safetensors import safe_open

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found (expected a save_pretrained directory)")
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{directory / CONFIG_NAME}: not a JSON file: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_NAME}: expected a JSON object, got {type(config).__name__}")
    config.pop("format", None)
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
    for alias, key in json.loads(metadata.get("aliases", "{}")).items():
        state[alias] = state[key]
    return config, state, metadata.get("encoder_weights", "true") == "true"
