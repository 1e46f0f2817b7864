"""What every checkpoint reader shares: tensor-only ``torch.load`` and one report of key problems."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["raise_key_problems", "read_checkpoint"]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``torch.save`` file of tensors, read with ``weights_only=True`` (memory-mapped when possible).

    Raises:
        FileNotFoundError: no such file.
        ValueError: pickled code, not a ``torch.save`` file, or entries that are not tensors (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read {path} as a tensor-only checkpoint (weights_only=True refuses pickled "
            f"code, and the file must be a torch.save file): {err}"
        ) from err
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} holds a {type(sd).__name__}, expected a dict of tensors")
    others = sorted(f"{k} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, Tensor))
    if others:
        raise ValueError(f"{path} must hold only tensors; refusing entries: {', '.join(others[:10])}")
    return dict(sd)


def raise_key_problems(what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
    """One ``ValueError`` naming every missing, unexpected and mis-shaped key (nothing when all fit)."""
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
    raise ValueError("\n".join(lines))
