"""Stage config files: one training stage as a TOML file, for ``rwkvblocks train --config FILE [--set k=v ...]``.

Sections and fields (every one optional in the file; ``train.stage``, ``data.json`` and ``output.dir`` must come
from the file, ``--set`` or a command-line flag)::

    [model]   preset, init (a save_pretrained directory: stage 2 names stage 1's output), init_lm (BlinkDL .pth),
              encoder_checkpoint (local encoder weights), tokenizer ("world" | "byte")
    [data]    json (LLaVA-1.5 JSON), images (image folder), prompt, context_length, on_bad_sample ("raise" |
              "skip"), workers
    [train]   stage ("alignment" | "instruction": which parameters train, see ``stages.py``), size ("1b6" | "3b"
              | "7b": the stage-2 learning rates), batch_size, micro_batch_size, lr_init, lr_final, warmup_steps,
              betas, eps, weight_decay, decay_matrices_only, grad_clip, epochs, steps, activation_checkpointing,
              log_every, checkpoint_every, keep_checkpoints, seed, dtype ("fp32" | "bf16" | "fp64"), pure_bf16,
              device
    [output]  dir (the output directory)

The recipe of ``recipe(train.stage, train.size)`` fills every ``[train]`` number the file leaves out. Relative
paths in a file are relative to the file's directory; in ``--set`` relative to the working directory.
``--set train.lr_init=2e-5`` overrides one field (the value is read as TOML, else taken as a string) and is
type-checked as the file is. Flags given explicitly on the command line win over both. A field of the wrong type
or value, or an unknown section or field, is a ``ConfigError`` naming the file and the dotted field.

The shipped configs (``shipped_configs()``; ``--config NAME`` finds them by name) lay out a run directory: copy
one next to the data (``data.json``, ``data.images``), run it, and stage 1 writes ``stage1/``, which the stage-2
config starts from (``init = "stage1"``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rwkvblocks.errors import ConfigError

from ..models.config import PROMPTS
from .recipes import TrainRecipe, recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the tomli package (pip install tomli)
    try:
        import tomli as tomllib
    except ImportError:  # a stage config then says what is missing when it is read
        tomllib = None

__all__ = ["CONFIG_DIR", "StageConfig", "load_stage_config", "resolve_config", "shipped_configs"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The shipped stage configs: the paper's two stages at 1.6B, 3B and 7B, and the tiny presets'."""


def _choice(*options: str):
    def check(value: Any) -> str | None:
        if value not in options:
            return f"must be one of {', '.join(repr(o) for o in options)}, got {value!r}"
        return None

    return check


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def _int(low: int):
    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f"must be an int >= {low}, got {value!r}"
        return None

    return check


def _number(positive: bool):
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            return f"must be a number {'> 0' if positive else '>= 0'}, got {value!r}"
        return None

    return check


def _betas(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    return None if ok else f"must be two numbers in [0, 1), got {value!r}"


_PATH = "path"

# section -> field -> (the train command's argument it sets, its check or _PATH)
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "model": {
        "preset": ("preset", _str),
        "init": ("init", _PATH),
        "init_lm": ("init_lm", _PATH),
        "encoder_checkpoint": ("encoder_checkpoint", _PATH),
        "tokenizer": ("tokenizer", _choice("world", "byte")),
    },
    "data": {
        "json": ("data", _PATH),
        "images": ("images", _PATH),
        "prompt": ("prompt", _choice(*PROMPTS)),
        "context_length": ("context_length", _int(1)),
        "on_bad_sample": ("on_bad_sample", _choice("raise", "skip")),
        "workers": ("workers", _int(0)),
    },
    "train": {
        "stage": ("stage", _choice("alignment", "instruction")),
        "size": ("size", _choice("1b6", "3b", "7b")),
        "batch_size": ("batch_size", _int(1)),
        "micro_batch_size": ("micro_batch_size", _int(1)),
        "lr_init": ("lr_init", _number(True)),
        "lr_final": ("lr_final", _number(False)),
        "warmup_steps": ("warmup_steps", _int(0)),
        "betas": ("betas", _betas),
        "eps": ("eps", _number(False)),
        "weight_decay": ("weight_decay", _number(False)),
        "decay_matrices_only": ("decay_matrices_only", _bool),
        "grad_clip": ("grad_clip", _number(True)),
        "epochs": ("epochs", _number(True)),
        "steps": ("steps", _int(1)),
        "activation_checkpointing": ("activation_checkpointing", _bool),
        "log_every": ("log_every", _int(1)),
        "checkpoint_every": ("checkpoint_every", _int(1)),
        "keep_checkpoints": ("keep_checkpoints", _int(1)),
        "seed": ("seed", _int(0)),
        "dtype": ("dtype", _choice("fp32", "bf16", "fp64")),
        "pure_bf16": ("pure_bf16", _bool),
        "device": ("device", _str),
    },
    "output": {"dir": ("out", _PATH)},
}

# the [train] fields that are TrainRecipe fields of the same name
_RECIPE_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainRecipe) if f.name in _SCHEMA["train"] and f.name not in ("stage",)
)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """A checked stage config: ``values`` maps dotted fields (``"train.lr_init"``) to values, paths resolved.

    Attributes:
        source: The file (or ``"--set"`` when there is none), as errors name it.
        values: Only the fields the file and the ``--set`` overrides gave.
    """

    source: str
    values: Mapping[str, Any]

    def arguments(self) -> dict[str, Any]:
        """The ``rwkvblocks train`` arguments (``argparse`` names) these fields set."""
        out = {}
        for dotted, value in self.values.items():
            section, name = dotted.split(".", 1)
            out[_SCHEMA[section][name][0]] = tuple(value) if name == "betas" else value
        return out

    def recipe(self) -> TrainRecipe:
        """``recipe(train.stage, train.size)`` with the file's ``[train]`` numbers and ``[data]`` changes."""
        stage = self.values.get("train.stage")
        if stage is None:
            raise ConfigError(self.source, "train.stage", "is required")
        changes = {k: self.values[f"train.{k}"] for k in _RECIPE_FIELDS if f"train.{k}" in self.values}
        if "betas" in changes:
            changes["betas"] = tuple(changes["betas"])
        data = {k: self.values[f"data.{k}"] for k in ("prompt", "context_length") if f"data.{k}" in self.values}
        if data:
            changes["data_changes"] = data
        try:
            return recipe(stage, self.values.get("train.size", "1b6"), **changes)
        except ValueError as err:
            raise ConfigError(self.source, "train", f"does not form a recipe: {err}") from None


def shipped_configs() -> list[str]:
    """The names of the shipped stage configs (``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve_config(name: str | os.PathLike) -> Path:
    """``name`` as a file, else the shipped config of that name (``visualrwkv_tiny_stage1``)."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    shipped = CONFIG_DIR / f"{name}.toml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(2, f"No such file (nor a shipped config: {', '.join(shipped_configs())})", str(name))


def _check(source: str, dotted: str, value: Any, base: Path) -> Any:
    section, _, name = dotted.partition(".")
    fields = _SCHEMA.get(section)
    if fields is None:
        raise ConfigError(source, section, f"is not a section of a stage config (known: {', '.join(_SCHEMA)})")
    if name not in fields:
        raise ConfigError(source, dotted, f"is not a field of [{section}] (known: {', '.join(fields)})")
    check = fields[name][1]
    if check == _PATH:
        if not isinstance(value, str) or not value:
            raise ConfigError(source, dotted, f"must be a path (a non-empty string), got {value!r}")
        return str(base / Path(value).expanduser())
    problem = check(value)
    if problem is not None:
        raise ConfigError(source, dotted, problem)
    return value


def _parse_set(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError("--set", item, "must be SECTION.FIELD=VALUE (e.g. train.lr_init=2e-5)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    return key, value


def load_stage_config(path: str | os.PathLike | None, sets: Iterable[str] = ()) -> StageConfig:
    """Read and check the stage config ``path`` (a file or a shipped name; ``None``: none) with ``sets`` applied.

    Raises:
        FileNotFoundError: no such file or shipped config.
        ConfigError: (a ``ValueError``) a field of the wrong type or value, an unknown section or field, a bad
            ``--set``, a file that is not TOML.
    """
    if tomllib is None:
        raise ValueError("stage configs need Python 3.11's tomllib, or the tomli package on Python 3.10")
    values: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        file = resolve_config(path)
        source = str(file)
        with open(file, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(source, "(the file)", f"is not valid TOML: {err}") from None
        base = file.parent
        for section, fields in raw.items():
            if not isinstance(fields, dict):
                raise ConfigError(source, section, f"must be a [section] of fields, got {fields!r}")
            for name, value in fields.items():
                dotted = f"{section}.{name}"
                values[dotted] = _check(source, dotted, value, base)
    for item in sets:
        key, value = _parse_set(item)
        values[key] = _check(f"{source} (--set {key})" if path is not None else "--set", key, value, Path())
    return StageConfig(source, values)
