"""Atomic file writes shared by every checkpoint writer in ``assemblies``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """An open temporary file beside ``path`` that replaces ``path`` only if the block succeeds.

    Writers that need a file name (safetensors) may write to ``f.name``. On any error the temporary
    file is removed and ``path`` is left as it was; on success the data is fsynced, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # opened by name, so ``f.name`` is the path
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
