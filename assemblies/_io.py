"""What every file writer and config reader in ``assemblies`` shares.

- ``atomic_file``: a file that appears under its final name complete or not at all (0666 less the umask).
- ``fsync_directory``: make the renames inside a directory durable.
- ``typed_fields``: a dataclass from a JSON object, every field checked against its annotation
  (``ConfigError`` naming the source and the dotted field).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, Union

from rwkvblocks.errors import ConfigError

__all__ = ["atomic_file", "fsync_directory", "typed_fields"]


def _new_temporary(path: Path) -> Path:
    """A new empty file beside ``path`` with a hidden, unique name and ordinary permissions.

    ``tempfile.mkstemp`` would create it with mode 0600; ``os.open`` with 0666 lets the umask decide, as for
    any file the user writes (0644 under umask 022).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, replace: bool = True) -> Iterator[BinaryIO]:
    """An open temporary file beside ``path`` that replaces ``path`` only if the block succeeds.

    Writers that need a file name (safetensors) may write to ``f.name``. On any error the temporary
    file is removed and ``path`` is left as it was; on success the data is fsynced, then renamed.
    The file gets mode 0666 less the umask (0644 under umask 022). ``replace=False`` leaves the complete,
    fsynced temporary file in place and yields its path as ``f.name``: the caller renames it (several files
    committed together, ``write_pretrained``) and removes it on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0666 less the umask
        with open(tmp, "wb") as f:  # opened by name, so ``f.name`` is the path
            yield f
        # a writer given ``f.name`` may have replaced the file (safetensors writes a new one, mode 0600): set the
        # mode and fsync by name, not through ``f``
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def fsync_directory(directory: str | os.PathLike) -> None:
    """fsync ``directory`` so that renames inside it survive a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some platforms and file systems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# typed reading of JSON objects into frozen dataclasses

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(hint: Any) -> str:
    """``hint`` as the JSON a user would write: ``an int``, ``null``, ``one of 'a', 'b'``, ``a list of ints``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    names = {bool: "a bool", int: "an int", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    return "an object"


def _shown(value: Any) -> str:
    kind = {dict: "an object", list: "a list", bool: "a bool", str: "a string", type(None): "null"}
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    for t, name in kind.items():
        if type(value) is t:
            return f"{name} ({text})" if t in (dict, list) else text
    if isinstance(value, Mapping):
        return f"an object ({text})"
    if isinstance(value, tuple):
        return f"a list ({text})"
    return text


class _Mismatch(Exception):
    """``value`` does not fit the hint (internal: turned into a ``ConfigError`` by ``_convert``)."""


def _fit(value: Any, hint: Any, source: str, field: str) -> Any:
    """``value`` converted to ``hint`` (lists to tuples, objects to dataclasses), or ``_Mismatch``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _fit(value, arm, source, field)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:  # True is an int in Python, not in a config
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _Mismatch
        return tuple(_convert(v, h, source, f"{field}.{i}") for i, (v, h) in enumerate(zip(value, items)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return typed_fields(hint, value, source=source, prefix=field)
    if isinstance(hint, type) and issubclass(hint, Mapping):  # FrozenOptions: any JSON inside, string keys
        if not isinstance(value, Mapping):
            raise _Mismatch
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(source, field, f"must have string keys, got {bad!r}")
        return value if isinstance(value, hint) else hint(value)
    return value


def _convert(value: Any, hint: Any, source: str, field: str) -> Any:
    try:
        return _fit(value, hint, source, field)
    except _Mismatch:
        raise ConfigError(source, field, f"must be {_describe(hint)}, got {_shown(value)}") from None


def typed_fields(cls: type, data: Any, *, source: str | os.PathLike, prefix: str = "") -> Any:
    """``cls(**data)`` with every field of ``data`` checked against ``cls``'s annotations first.

    Lists become tuples where the annotation is a tuple, objects become nested dataclasses (or the mapping
    type the annotation names), and a bool is never taken for an int. Fields left out keep their defaults.
    What ``cls.__post_init__`` refuses is re-raised with the field's dotted name.

    Raises:
        ConfigError: ``data`` is not an object, a field is unknown, or a value has the wrong type or value;
            the message names ``source`` and the field as ``prefix.field``.
    """
    source = os.fspath(source)
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix or "(top level)", f"must be an object, got {_shown(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((k for k in data if k not in names), key=str)
    if unknown:
        raise ConfigError(
            source,
            _dotted(prefix, str(unknown[0])),
            f"is not a field: unknown {cls.__name__} fields: {unknown} (known: {', '.join(names)})",
        )
    hints = _hints(cls)
    values = {name: _convert(value, hints[name], source, _dotted(prefix, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as err:  # __post_init__'s checks name the field relative to cls
        raise ConfigError(source, _dotted(prefix, err.field), err.problem) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(source, prefix or cls.__name__, f"is not a valid {cls.__name__}: {err}") from err
