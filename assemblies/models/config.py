"""The two configurations of a VisualRWKV assembly: the network, and the data and loss it is trained with.

- ``VisualRWKVConfig``: the architecture only — language model, image encoder and token layout, projector,
  scan schedule, hybrid attention layers. It decides the parameters and the computation.
- ``DataConfig``: how conversations become sequences and how their loss is reduced — prompt mode, context
  length, tokenizer, loss reduction and L2Wrap. The data pipeline, the training loop and inference read the
  prompt mode from here and nowhere else.

A preset pairs the two; ``config.json`` of a ``save_pretrained`` directory stores both. Both are frozen,
hashable and JSON-serialisable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rwkvblocks.errors import ConfigError
from rwkvblocks.generation import SamplingConfig
from rwkvblocks.prompting import ByteTokenizer, PromptBuilder, Tokenizer, WorldTokenizer, prompt_builder
from rwkvblocks.scan import DIRECTIONS, SCHEDULES
from rwkvblocks.vision import TokenLayout

from .._io import typed_fields
from .rwkv_lm import RWKVConfig

__all__ = [
    "DataConfig",
    "EncoderConfig",
    "FrozenOptions",
    "VisualRWKVConfig",
    "configs_from_dict",
    "default_sampling",
    "make_prompt_builder",
    "make_tokenizer",
    "split_overrides",
]

PROMPTS = ("image_first", "image_last", "sandwich")
TOKENIZERS = ("world", "byte")
LOSSES = ("sample", "batch")


class FrozenOptions(Mapping):
    """An immutable, hashable mapping (nested mappings frozen too, lists become tuples).

    It lets a frozen dataclass hold keyword arguments (``EncoderConfig.options``) and still be hashable;
    ``to_dict`` gives plain dicts and lists back for JSON.

    Example:
        >>> opts = FrozenOptions({"vision_overrides": {"width": 64}, "img_size": [56, 56]})
        >>> opts["vision_overrides"]["width"], opts["img_size"], hash(opts) == hash(FrozenOptions(opts))
        (64, (56, 56), True)
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        items = dict(items or {})
        bad = [k for k in items if not isinstance(k, str)]
        if bad:
            raise ValueError(f"option names must be strings, got {bad!r}")
        self._items = tuple(sorted((k, _freeze(v)) for k, v in items.items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenOptions):
            return self._items == other._items
        return isinstance(other, Mapping) and self._items == FrozenOptions(other)._items

    def __repr__(self) -> str:
        return f"FrozenOptions({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._items}

    def merged(self, changes: Mapping[str, Any]) -> FrozenOptions:
        """A copy with ``changes``; a nested mapping is merged key by key, not replaced."""
        out = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **_thaw(FrozenOptions(value))}
            else:
                out[key] = value
        return FrozenOptions(out)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, FrozenOptions) else FrozenOptions(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, FrozenOptions):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _check(checks: Mapping[str, tuple[bool, str]], owner: Any) -> None:
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ConfigError(type(owner).__name__, name, f"must be {expected}, got {getattr(owner, name)!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _replace_fields(instance: Any, changes: Mapping[str, Any]) -> Any:
    unknown = set(changes) - {f.name for f in dataclasses.fields(instance)}
    if unknown:
        raise ValueError(f"unknown {type(instance).__name__} fields: {sorted(unknown)}")
    return dataclasses.replace(instance, **changes)


@dataclass(frozen=True)
class EncoderConfig:
    """Which image encoder, which layer, and how its tokens are laid out.

    Attributes:
        kind: ``"open_clip"``, ``"timm"`` or ``"concat"`` (several towers side by side, ``ConcatEncoder``).
        name: open_clip model name (``"ViT-L-14-336"``), timm model name, or a label for a ``"concat"``
            encoder.
        layer: Transformer block (or stage) whose output is used; -1 = last (upstream v6), -2 = second to
            last (VisualRWKV-7's DINOv2 and SigLIP).
        cls: Where the class (prefix) tokens go: ``"first"`` (Base, Hybrid), ``"last"`` (VisualRWKV)
            or ``"none"``.
        pool: Side ``g`` of the average-pooled patch grid (24, 12, 8, 6, 4, 3, 2), ``None`` = full grid.
        adaptive_pool: Pool with ``AdaptiveAvgPool2d`` (VisualRWKV-7) rather than an exact tiling.
        keep_patches: ``False`` keeps only the class token (1 token per image).
        options: Extra keyword arguments of the encoder (a ``FrozenOptions``; pass a dict):
            ``vision_overrides`` / ``pretrained_tag`` / ``quick_gelu`` for open_clip, ``timm.create_model``
            arguments (``img_size``, ``depth``...) and ``TimmEncoder`` ones (``norm``, ``space_to_depth``,
            ``resize``) for timm; for ``"concat"``, ``towers``: `(name, encoder config dict)` pairs in
            concatenation order.
    """

    kind: Literal["open_clip", "timm", "concat"] = "open_clip"
    name: str = "ViT-L-14-336"
    layer: int = -1
    cls: Literal["first", "last", "none"] = "last"
    pool: int | None = None
    adaptive_pool: bool = False
    keep_patches: bool = True
    options: FrozenOptions = field(default_factory=FrozenOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.options, FrozenOptions):
            if not isinstance(self.options, Mapping):
                raise ConfigError("EncoderConfig", "options", f"must be a mapping, got {type(self.options).__name__}")
            object.__setattr__(self, "options", FrozenOptions(self.options))
        _check(
            {
                "kind": (self.kind in ("open_clip", "timm", "concat"), "'open_clip', 'timm' or 'concat'"),
                "cls": (self.cls in ("first", "last", "none"), "'first', 'last' or 'none'"),
            },
            self,
        )
        if self.kind == "concat":
            self.towers()  # fail now on a malformed tower list

    def layout(self) -> TokenLayout:
        return TokenLayout(prefix=self.cls, pool=self.pool, keep_patches=self.keep_patches, adaptive=self.adaptive_pool)

    def towers(self) -> list[tuple[str, EncoderConfig]]:
        """The `(name, EncoderConfig)` of every tower of a ``"concat"`` encoder, in concatenation order.

        Raises:
            ValueError: not a ``"concat"`` encoder, or ``options["towers"]`` is not a non-empty list of
                `(unique name, encoder config)` pairs.
        """
        if self.kind != "concat":
            raise ValueError(f"only a 'concat' encoder has towers, this one is {self.kind!r}")
        raw = self.options.get("towers")
        if not isinstance(raw, tuple) or not raw:
            raise ConfigError(
                "EncoderConfig",
                "options.towers",
                "is needed by a 'concat' encoder: a list of (name, encoder config) pairs",
            )
        out = []
        for i, item in enumerate(raw):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ConfigError(
                    "EncoderConfig",
                    f"options.towers.{i}",
                    f"must be a (name, encoder config) pair, got {_thaw(item)!r}",
                )
            name, cfg = item
            if not isinstance(cfg, EncoderConfig):
                cfg = typed_fields(EncoderConfig, cfg, source="EncoderConfig", prefix=f"options.towers.{i}.1")
            if cfg.kind == "concat":
                raise ConfigError(
                    "EncoderConfig",
                    f"options.towers.{i}",
                    f"(tower {name!r}) is itself a 'concat' encoder; nest towers in one list instead",
                )
            out.append((name, cfg))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise ConfigError("EncoderConfig", "options.towers", f"must have unique tower names, got {names}")
        return out

    def kwargs(self) -> dict[str, Any]:
        """``options`` as plain keyword arguments for the encoder class."""
        return self.options.to_dict()

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with ``changes``; ``options=`` is merged into the current options (nested dicts too)."""
        if "options" in changes and isinstance(changes["options"], Mapping):
            changes = {**changes, "options": self.options.merged(changes["options"])}
        return _replace_fields(self, changes)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["options"] = self.options.to_dict()
        return data


@dataclass(frozen=True)
class VisualRWKVConfig:
    """The network of a VisualRWKV model (everything that decides its parameters and computation).

    Attributes:
        lm: The RWKV language model (``version`` x052 = RWKV-5 static recurrence, x060 = RWKV-6
            data-dependent recurrence, x070 = RWKV-7 generalised delta rule).
        encoder: The image encoder and its token layout.
        projector: ``"linear"`` (upstream v5/v6: one bias-free ``Linear``), ``"mlp"`` (LLaVA-style) or
            ``"gated"`` (upstream v7: ``GatedProjector``, a context gate, a map and a LayerNorm).
        projector_depth: Linear layers of the MLP projector.
        scan: ``"uni"``, ``"bi"``, ``"multi"`` or a tuple of directions (see ``ScanPermuter``).
        hybrid_layers: Blocks followed by a ``PreNormTinyAttention`` layer (VisualRWKV-Hybrid: the last).
        hybrid_dim: Width of the tiny attention (``None`` = ``lm.dim``); head size ``hybrid_head_dim``.
        pad_multiple: Left-pad every whole sequence run from an empty state to a multiple of this many
            positions with the embedding of ``pad_token`` and drop those positions' logits: 16 reproduces
            upstream VisualRWKV-7 exactly (its kernel needs T % 16 == 0, and the logits of its checkpoints
            depend on the padding); 1 (the default) pads nothing.
        pad_token: The token whose embedding pads (upstream: 261, ``"\n\n"``).
    """

    lm: RWKVConfig = field(default_factory=RWKVConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: Literal["linear", "mlp", "gated"] = "linear"
    projector_depth: int = 2
    scan: str | tuple[str, ...] = "bi"
    hybrid_layers: tuple[int, ...] = ()
    hybrid_dim: int | None = None
    hybrid_head_dim: int = 64
    pad_multiple: int = 1
    pad_token: int = 261

    def __post_init__(self) -> None:
        if isinstance(self.lm, Mapping):
            object.__setattr__(self, "lm", RWKVConfig.from_dict(self.lm))
        if isinstance(self.encoder, Mapping):
            object.__setattr__(self, "encoder", _from_fields(EncoderConfig, self.encoder))
        if not isinstance(self.scan, str):
            object.__setattr__(self, "scan", tuple(self.scan))
        object.__setattr__(self, "hybrid_layers", tuple(sorted(set(self.hybrid_layers))))
        custom_scan_ok = not isinstance(self.scan, str) and bool(self.scan) and set(self.scan) <= set(DIRECTIONS)
        _check(
            {
                "projector": (self.projector in ("linear", "mlp", "gated"), "'linear', 'mlp' or 'gated'"),
                "scan": (
                    self.scan in SCHEDULES if isinstance(self.scan, str) else custom_scan_ok,
                    f"one of {sorted(SCHEDULES)} or a tuple of {DIRECTIONS}",
                ),
                "hybrid_layers": (
                    all(0 <= i < self.lm.num_layers for i in self.hybrid_layers),
                    f"block indices in [0, {self.lm.num_layers})",
                ),
                "pad_multiple": (_positive_int(self.pad_multiple), "a positive int (1 = no padding)"),
                "pad_token": (
                    self.pad_multiple == 1
                    or (_positive_int(self.pad_token + 1) and self.pad_token < self.lm.vocab_size)
                    if isinstance(self.pad_token, int)
                    else False,
                    f"a token id in [0, {self.lm.vocab_size}) when pad_multiple > 1",
                ),
            },
            self,
        )

    def replace(self, **changes: Any) -> VisualRWKVConfig:
        """A copy with ``changes``; ``lm=`` and ``encoder=`` also accept dicts of the fields to change."""
        if isinstance(changes.get("lm"), Mapping):
            lm_changes = dict(changes["lm"])
            if "dim" in lm_changes and "ffn_dim" not in lm_changes:
                lm_changes["ffn_dim"] = None  # follow the new width
            changes = {**changes, "lm": _replace_fields(self.lm, lm_changes)}
        if isinstance(changes.get("encoder"), Mapping):
            changes = {**changes, "encoder": self.encoder.replace(**changes["encoder"])}
        return _replace_fields(self, changes)

    def to_dict(self) -> dict:
        return {
            "lm": self.lm.to_dict(),
            "encoder": self.encoder.to_dict(),
            "projector": self.projector,
            "projector_depth": self.projector_depth,
            "scan": self.scan if isinstance(self.scan, str) else list(self.scan),
            "hybrid_layers": list(self.hybrid_layers),
            "hybrid_dim": self.hybrid_dim,
            "hybrid_head_dim": self.hybrid_head_dim,
            "pad_multiple": self.pad_multiple,
            "pad_token": self.pad_token,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping, *, source: str | os.PathLike = "VisualRWKVConfig", prefix: str = ""
    ) -> VisualRWKVConfig:
        """The configuration ``to_dict`` wrote, every field type-checked (lists become tuples).

        Raises:
            ConfigError: a field of the wrong type or value, or an unknown one, named ``prefix.field``
                (``model.lm.num_layers``) after ``source`` (the ``config.json`` path).
        """
        return typed_fields(cls, data, source=source, prefix=prefix)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VisualRWKVConfig:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class DataConfig:
    """How conversations become token sequences, and how their loss is reduced.

    Attributes:
        prompt: Where images go in a turn: ``"image_first"``, ``"image_last"`` or ``"sandwich"``
            (``rwkvblocks.prompting.prompt_builder``). Training stages may change it (stage 1 uses image
            first); ``assemblies.training.TrainRecipe.data_for`` derives the stage's ``DataConfig``.
        context_length: Longest sequence the collator keeps (truncation rule of DESIGN.md §8).
        tokenizer: ``"world"`` (RWKV World vocabulary, 65,536 ids) or ``"byte"`` (257 ids, for toys).
        loss: ``"sample"`` (``SampleLevelCE``: mean per sample, then over samples) or ``"batch"``
            (``BatchLevelCE``: mean over every valid token).
        l2wrap: Add upstream's L2Wrap gradient to the loss.
    """

    prompt: Literal["image_first", "image_last", "sandwich"] = "sandwich"
    context_length: int = 2048
    tokenizer: Literal["world", "byte"] = "world"
    loss: Literal["sample", "batch"] = "sample"
    l2wrap: bool = False

    def __post_init__(self) -> None:
        _check(
            {
                "prompt": (self.prompt in PROMPTS, " or ".join(repr(p) for p in PROMPTS)),
                "context_length": (isinstance(self.context_length, int) and self.context_length >= 1, "a positive int"),
                "tokenizer": (self.tokenizer in TOKENIZERS, " or ".join(repr(t) for t in TOKENIZERS)),
                "loss": (self.loss in LOSSES, "'sample' or 'batch'"),
            },
            self,
        )

    def replace(self, **changes: Any) -> DataConfig:
        return _replace_fields(self, changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str | os.PathLike = "DataConfig", prefix: str = "") -> DataConfig:
        """The configuration ``to_dict`` wrote, every field type-checked (see ``VisualRWKVConfig.from_dict``)."""
        return typed_fields(cls, data, source=source, prefix=prefix)


def _from_fields(cls, data: Mapping):
    return typed_fields(cls, data, source=cls.__name__)


def configs_from_dict(raw: Any, source: str | os.PathLike) -> tuple[VisualRWKVConfig, DataConfig]:
    """Both configurations of a ``config.json`` object: ``{"model": {...}, "data": {...}}``.

    Both sections are required (a missing one is not taken to mean the defaults), nothing else may be
    there, and every field is type-checked.

    Raises:
        ConfigError: a missing, mistyped or unknown section or field, named with its dotted path
            (``model.lm.num_layers``) after ``source``.
    """
    source = os.fspath(source)
    if not isinstance(raw, Mapping):
        raise ConfigError(source, "(top level)", f"must be an object with 'model' and 'data', got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in ("model", "data"))
    if unknown:
        raise ConfigError(source, unknown[0], f"is not a section: unknown sections {unknown} (known: model, data)")
    for section in ("model", "data"):
        if section not in raw:
            raise ConfigError(source, section, "is missing (a config.json holds both 'model' and 'data')")
    model = VisualRWKVConfig.from_dict(raw["model"], source=source, prefix="model")
    return model, DataConfig.from_dict(raw["data"], source=source, prefix="data")


_DATA_FIELDS = frozenset(f.name for f in dataclasses.fields(DataConfig))
_MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(VisualRWKVConfig))


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route ``create_assembly``-style overrides to the model config and the data config by field name.

    Raises:
        ValueError: a name that is a field of neither (all such names listed).
    """
    unknown = set(overrides) - _DATA_FIELDS - _MODEL_FIELDS
    if unknown:
        raise ValueError(
            f"unknown VisualRWKVConfig fields: {sorted(unknown)} (model fields: {sorted(_MODEL_FIELDS)}; "
            f"data fields: {sorted(_DATA_FIELDS)})"
        )
    model = {k: v for k, v in overrides.items() if k in _MODEL_FIELDS}
    data = {k: v for k, v in overrides.items() if k in _DATA_FIELDS}
    return model, data


def make_tokenizer(data: DataConfig) -> Tokenizer:
    """``WorldTokenizer`` for ``"world"``, ``ByteTokenizer`` for ``"byte"``."""
    return WorldTokenizer() if data.tokenizer == "world" else ByteTokenizer()


def make_prompt_builder(data: DataConfig, tokenizer: Tokenizer | None = None) -> PromptBuilder:
    """The prompt builder of ``data.prompt`` over ``tokenizer`` (default: ``make_tokenizer(data)``)."""
    return prompt_builder(data.prompt, tokenizer if tokenizer is not None else make_tokenizer(data))


def default_sampling(data: DataConfig, **changes: Any) -> SamplingConfig:
    """Greedy decoding that stops where an assistant turn ends: the ``"\n\n"`` token (261) of the World
    vocabulary, or the ``"\n\n"`` string for byte-level tokenizers; and at id 0 (end of document)."""
    if data.tokenizer == "world":
        stops: dict[str, Any] = {"stop_tokens": (261, 0)}
    else:
        stops = {"stop_tokens": (0,), "stop_strings": ("\n\n",)}
    return SamplingConfig(**{**stops, **changes})
