"""The library's own error types: each a ``ValueError`` naming what was wrong and where.

- ``CheckpointError``: a weights file or checkpoint directory that cannot be read completely (missing,
  truncated, corrupt, the wrong format, unsafe pickles, keys that do not form the model). Its message starts
  with the file's path; ``path`` holds it.
- ``ConfigError``: a configuration (``config.json`` or a dict) with a missing section, a field of the wrong
  type or value, or an unknown field. The message names the source and the field; ``source`` and ``field``
  hold them.

Catching ``ValueError`` catches both; the CLI prints their message on one line (``rwkvblocks <command>: error:``).
"""

from __future__ import annotations

import os

__all__ = ["CheckpointError", "ConfigError"]


class CheckpointError(ValueError):
    """A checkpoint that is refused as a whole: ``str(err)`` is ``"<path>: <reason>"``.

    Example:
        >>> err = CheckpointError("model.safetensors", "truncated (header says 4096 bytes, 100 present)")
        >>> str(err), err.path
        ('model.safetensors: truncated (header says 4096 bytes, 100 present)', 'model.safetensors')
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(ValueError):
    """A configuration field (or section) that is missing, mistyped or unknown.

    Example:
        >>> str(ConfigError("config.json", "model.lm.num_layers", "must be an int, got 2.5"))
        'config.json: model.lm.num_layers must be an int, got 2.5'
    """

    def __init__(self, source: str | os.PathLike, field: str, problem: str) -> None:
        self.source = os.fspath(source)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.source}: {field} {problem}")
