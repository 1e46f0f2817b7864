"""Our checkpoint directory format: ``config.json`` + ``model.safetensors``.

The model side (``VisualRWKV.save_pretrained`` / ``VisualRWKV.from_pretrained``) turns a model into a
configuration dict and a state dict and back; this module only stores and reads them. Tensors that share
memory are stored once, with an alias table in the safetensors metadata.

Saving is atomic for the directory as a whole: a crash at any point leaves the old checkpoint or the new one
loadable, never the old ``config.json`` with the new weights. Every save draws a ``save_id`` that both files
record (``config.json``'s ``"save_id"``, the safetensors metadata's ``"save_id"``); ``config.json`` is the commit
point. The steps:

1. both files are written completely under hidden temporary names and fsynced;
2. the current weights, if ``config.json`` refers to them, are renamed aside to ``.model-<old id>.safetensors``;
3. the new weights are renamed to ``model.safetensors``;
4. the new ``config.json`` is renamed into place (the commit);
5. what step 2 set aside, and the leftovers of earlier interrupted saves, are removed.

A reader takes the weights whose ``save_id`` is the one ``config.json`` names: ``model.safetensors`` or, after an
interruption between steps 2 and 4, the copy set aside. Other files in the directory are never touched;
only our two names and hidden ``.config.json.*.tmp``, ``.model.safetensors.*.tmp`` and ``.model-*.safetensors``
files are. Files get mode 0666 less the umask. Checkpoints written before ``save_id`` existed load as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from rwkvblocks.errors import CheckpointError, ConfigError

from ..._io import atomic_file, fsync_directory
from ._common import read_safetensors

__all__ = ["CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "read_pretrained", "write_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "rwkvblocks.visualrwkv/2"
_LEGACY = "legacy"  # the set-aside name of weights whose config.json has no save_id
_ASIDE = re.compile(r"\.model-([0-9a-f]+|legacy)\.safetensors")
_TEMPORARY = re.compile(rf"\.({re.escape(CONFIG_NAME)}|{re.escape(WEIGHTS_NAME)})\.[0-9a-f]+\.tmp")


def _aside(directory: Path, save_id: str | None) -> Path:
    return directory / f".model-{save_id or _LEGACY}.safetensors"


def _stored_id(directory: Path) -> tuple[bool, str | None]:
    """``(readable, save_id)`` of the current ``config.json``: whether it is a JSON object, and its id."""
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False, None
    if not isinstance(config, dict):
        return False, None
    save_id = config.get("save_id")
    return True, save_id if isinstance(save_id, str) else None


def _weights_id(path: Path) -> tuple[bool, str | None]:
    """``(readable, save_id)`` of a safetensors file's header (only the header is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return True, (f.metadata() or {}).get("save_id")
    except Exception:
        return False, None


def write_pretrained(
    directory: str | os.PathLike, config: Mapping[str, Any], state: Mapping[str, Tensor], *, encoder_weights: bool
) -> Path:
    """Write ``config`` (JSON) and ``state`` (safetensors) into ``directory`` (created if needed), atomically.

    See the module docstring: an interruption at any point leaves the previous checkpoint (or none, for a new
    directory) or the new one loadable; files of the directory other than ours are left as they are.
    """
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
    save_id = secrets.token_hex(8)
    metadata = {
        "format": FORMAT,
        "aliases": json.dumps(aliases),
        "encoder_weights": str(encoder_weights).lower(),
        "save_id": save_id,
    }
    text = json.dumps({"format": FORMAT, "save_id": save_id, **config}, indent=2, sort_keys=True) + "\n"
    weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    written: list[Path] = []
    try:
        with atomic_file(weights, replace=False) as f:  # 1. both files complete under temporary names
            written.append(Path(f.name))
            save_file(tensors, f.name, metadata=metadata)
        with atomic_file(config_path, replace=False) as f:
            written.append(Path(f.name))
            f.write(text.encode())
        new_weights, new_config = written
        readable, old_id = _stored_id(directory)
        if readable and weights.is_file() and _weights_id(weights) == (True, old_id):
            os.replace(weights, _aside(directory, old_id))  # 2. keep the weights config.json refers to
        os.replace(new_weights, weights)  # 3.
        fsync_directory(directory)  # the renames above are on disk before the commit
        os.replace(new_config, config_path)  # 4. the commit
    except BaseException:
        for tmp in written:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise
    fsync_directory(directory)
    for leftover in directory.iterdir():  # 5. nothing refers to these any more
        if _ASIDE.fullmatch(leftover.name) or _TEMPORARY.fullmatch(leftover.name):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return directory


def read_pretrained(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor], bool]:
    """The configuration dict, every tensor (aliases restored) and whether encoder weights were stored.

    The weights read are those of the save ``config.json`` belongs to (see the module docstring).

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        CheckpointError: (a ``ValueError``) ``config.json`` is not JSON or of another format, or
            ``model.safetensors`` is empty, truncated, corrupt, not a safetensors file, from another save than
            ``config.json``, or has a broken alias table; the message starts with the file's path.
        ConfigError: ``config.json`` is not a JSON object, or its ``format`` / ``save_id`` are not strings.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found (expected a save_pretrained directory)")
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(config_path, f"not a JSON file: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(config_path, "(top level)", f"must be a JSON object, got {type(config).__name__}")
    for name in ("format", "save_id"):
        if name in config and not isinstance(config[name], str):
            raise ConfigError(config_path, name, f"must be a string, got {config[name]!r}")
    fmt = config.pop("format", FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(config_path, f"format {fmt!r}: this version reads {FORMAT!r} checkpoints")
    save_id = config.pop("save_id", None)
    weights = directory / WEIGHTS_NAME
    aside = _aside(directory, save_id)
    if not weights.is_file() and not aside.is_file():
        raise FileNotFoundError(f"{weights} not found (expected a save_pretrained directory)")
    state, metadata = read_safetensors(weights) if weights.is_file() else ({}, {"save_id": None})
    if metadata.get("save_id") != save_id or not weights.is_file():
        # a save was interrupted between setting the old weights aside and committing config.json
        if not aside.is_file():
            raise CheckpointError(
                weights,
                f"from another save than {config_path} (save_id {metadata.get('save_id')!r}, config.json names "
                f"{save_id!r}) and no {aside.name} beside it: the two files do not form one checkpoint",
            )
        weights = aside
        state, metadata = read_safetensors(aside)
        if metadata.get("save_id") != save_id:
            raise CheckpointError(aside, f"save_id {metadata.get('save_id')!r}, {config_path} names {save_id!r}")
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(weights, f"corrupt alias table in the metadata: {err}") from err
    if not isinstance(aliases, dict):
        raise CheckpointError(weights, f"corrupt alias table in the metadata: {aliases!r}")
    for alias, key in aliases.items():
        if key not in state:
            raise CheckpointError(weights, f"alias {alias!r} refers to {key!r}, which the file does not hold")
        state[alias] = state[key]
    return config, state, metadata.get("encoder_weights", "true") == "true"
