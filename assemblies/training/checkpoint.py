"""Training checkpoints: everything ``train`` needs to go on exactly where it stopped.

A checkpoint is a directory ``step-00000010`` inside the run's checkpoint directory, holding

- ``trainable.safetensors``: the trainable parameters, by name (the frozen ones come from the model as built);
- ``state.pt``: optimiser and scheduler state, the torch CPU (and CUDA) RNG states (of rank 0, and of every rank
  under ``"rng_ranks"`` in a distributed run);
- ``meta.json``: the step, the data position (micro-batches consumed), the losses so far, the recipe, the
  planned steps, the precision and the names of the trainable parameters (a resume that differs is refused).

Every file is written with ``atomic_file`` inside a hidden temporary directory, which is then renamed to its
final name (and the parent directory fsynced): a checkpoint directory is complete or absent, never partial.
Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_file, fsync_directory

__all__ = [
    "TrainCheckpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_states",
    "save_checkpoint",
    "set_rng_states",
]

_NAME = re.compile(r"^step-(\d{8,})$")
_WEIGHTS, _STATE, _META = "trainable.safetensors", "state.pt", "meta.json"


@dataclass
class TrainCheckpoint:
    """What a checkpoint holds, read back (``load_checkpoint``)."""

    path: Path
    step: int
    consumed: int
    losses: list[float]
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


def _steps(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """Where ``save_checkpoint`` writes the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step-{step:08d}"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``directory`` (``None`` when there is none)."""
    found = _steps(Path(directory))
    return found[-1][1] if found else None


def rng_states(device: torch.device) -> dict[str, Any]:
    """The torch CPU RNG state, and that of every CUDA device when ``device`` is a CUDA device."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    consumed: int,
    losses: list[float],
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then remove all but the newest ``keep`` (``None``: all).

    Returns:
        The checkpoint's directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step-*.partial-*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.partial-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        with atomic_file(tmp / _WEIGHTS) as f:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, f.name)
        with atomic_file(tmp / _STATE) as f:
            torch.save(state, f)
        with atomic_file(tmp / _META) as f:
            f.write(json.dumps({**meta, "step": step, "consumed": consumed, "losses": losses}, indent=1).encode())
        fsync_directory(tmp)
        if final.exists():  # the same step written again (a run resumed from an older checkpoint): swap it out
            old = directory / f".{final.name}.partial-{secrets.token_hex(6)}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        fsync_directory(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for _, old in _steps(directory)[:-keep] if keep > 0 else []:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return final


def load_checkpoint(path: str | os.PathLike) -> TrainCheckpoint:
    """Read a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    meta = json.loads((path / _META).read_text())
    state = torch.load(path / _STATE, map_location="cpu", weights_only=True)
    weights = load_file(path / _WEIGHTS)
    return TrainCheckpoint(path, meta["step"], meta["consumed"], meta["losses"], meta, weights, state)
