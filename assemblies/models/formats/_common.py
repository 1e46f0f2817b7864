"""What every checkpoint reader shares: tensor-only ``torch.load``, safetensors, block checks, one report of key
problems. Every file that cannot be read completely is refused with a ``CheckpointError`` naming it and why."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import Tensor

from rwkvblocks.errors import CheckpointError
from rwkvblocks.vision.checkpoint import _read_safetensors, _read_torch

__all__ = ["block_differences", "check_blocks", "raise_key_problems", "read_checkpoint", "read_safetensors"]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``torch.save`` file of tensors, read with ``weights_only=True`` (memory-mapped when possible).

    Raises:
        FileNotFoundError: no such file (kept apart from ``CheckpointError`` so that ``except FileNotFoundError``
            keeps working).
        CheckpointError: (a ``ValueError``) an empty, truncated or corrupt file, a safetensors or other
            non-``torch.save`` file, pickled code (refused by ``weights_only=True``), or entries that are not
            tensors (named); the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sd = _read_torch(path, mmap=True, safetensors_hint="this reader takes .pth files written by torch.save")
    if not isinstance(sd, Mapping):
        raise CheckpointError(path, f"holds a {type(sd).__name__}, expected a dict of tensors")
    others = sorted(f"{k} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, Tensor))
    if others:
        raise CheckpointError(path, f"must hold only tensors; refusing entries: {', '.join(others[:10])}")
    keys = sorted(repr(k) for k in sd if not isinstance(k, str))
    if keys:
        raise CheckpointError(path, f"tensor names must be strings; refusing keys: {', '.join(keys[:10])}")
    return dict(sd)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor of a ``.safetensors`` file and its metadata.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: an empty, truncated or corrupt file, or a ``torch.save`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _read_safetensors(path)


def _short(items: list, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def raise_key_problems(
    what: str,
    missing: list[str],
    unexpected: list[str],
    misshaped: list[str],
    *,
    path: str | os.PathLike | None = None,
    blocks: list[str] = (),
) -> None:
    """One ``CheckpointError`` (of ``path``) naming every missing, unexpected and mis-shaped key, and the keys
    some blocks carry and others lack (``blocks``, from ``block_differences``); nothing when all fit. Without
    ``path`` the error is of ``"<state dict>"`` (tensors that came from no file)."""
    if not (missing or unexpected or misshaped or blocks):
        return
    lines = [f"{what}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
    if blocks:
        lines.append(f"  blocks that differ ({len(blocks)}): " + "; ".join(blocks))
    raise CheckpointError("<state dict>" if path is None else path, "\n".join(lines))


def _block_names(state_dict: Mapping[str, object], prefix: str) -> dict[int, set[str]]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    names: dict[int, set[str]] = {}
    for key in state_dict:
        m = pattern.fullmatch(key) if isinstance(key, str) else None
        if m:
            names.setdefault(int(m.group(1)), set()).add(m.group(2))
    return names


def block_differences(
    state_dict: Mapping[str, object],
    *,
    prefix: str = "blocks.",
    optional: Callable[[int, str], bool] = lambda i, name: False,
) -> list[str]:
    """One line per key name that some blocks ``{prefix}{i}.`` carry and others lack (``optional(i, name)``:
    keys block ``i`` may have or lack, such as layer 0's ``ln0``), naming both sets of blocks."""
    names = _block_names(state_dict, prefix)
    indices = sorted(names)
    compared = {i: {n for n in names[i] if not optional(i, n)} for i in indices}
    lines = []
    for name in sorted(set().union(*compared.values())):
        have = [i for i in indices if name in compared[i]]
        lack = [i for i in indices if name not in compared[i] and not optional(i, name)]
        if lack:
            lines.append(f"{prefix}N.{name} is in blocks {_short(have)} but not in blocks {_short(lack)}")
    return lines


def check_blocks(
    state_dict: Mapping[str, object],
    source: str | os.PathLike,
    *,
    prefix: str = "blocks.",
    optional: Callable[[int, str], bool] | None = None,
) -> list[int]:
    """The block indices of ``state_dict`` (keys ``{prefix}{i}.{name}``), checked to be 0, 1, ..., n - 1 without a
    gap; with ``optional`` also that every block carries the same key names, except those ``optional(i, name)``
    allows (see ``block_differences``).

    Raises:
        CheckpointError: a gap (the missing indices are named) or a key that some blocks have and others lack
            (the key and both sets of blocks are named).
    """
    indices = sorted(_block_names(state_dict, prefix))
    gaps = sorted(set(range(indices[-1] + 1)) - set(indices)) if indices else []
    if gaps:
        raise CheckpointError(
            source,
            f"block indices are not contiguous: {prefix}N has N = {_short(indices)}; "
            f"missing {_short([f'{prefix}{i}' for i in gaps])} (a file with blocks removed or renumbered)",
        )
    problems = block_differences(state_dict, prefix=prefix, optional=optional) if optional is not None else []
    if problems:
        more = f"; ... ({len(problems)} keys in all)" if len(problems) > 10 else ""
        raise CheckpointError(source, "blocks do not all carry the same tensors: " + "; ".join(problems[:10]) + more)
    return indices
