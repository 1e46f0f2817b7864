"""The VisualRWKV family: image encoder -> projector -> image spans in the token sequence -> RWKV stack.

One configuration dataclass records every knob of the paper's ablations (DESIGN.md §1): recurrence
(x052 / x060), scanning schedule, prompt, encoder and token layout, projector, hybrid attention layers,
loss reduction and context length. ``build_visualrwkv(config)`` assembles the model from ``rwkvblocks``
parts; presets live in ``assemblies.registry``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from rwkvblocks import (
    BatchLevelCE,
    RWKVBlock,
    RWKVLanguageModel,
    RWKVState,
    SampleLevelCE,
    ScanPermuter,
    TinyAttention,
)
from rwkvblocks.scan import DIRECTIONS, SCHEDULES
from rwkvblocks.vision import ImageEncoder, LinearProjector, MLPProjector, OpenCLIPEncoder, TimmEncoder, TokenLayout

from .rwkv_lm import RWKVConfig, build_rwkv_lm

__all__ = ["EncoderConfig", "VisualRWKV", "VisualRWKVConfig", "VisualRWKVOutput", "build_visualrwkv"]

STOP_TOKEN = 261  # "\n\n" in the World vocabulary: the end of an assistant turn


@dataclass(frozen=True)
class EncoderConfig:
    """Which image encoder, which layer, and how its tokens are laid out.

    Attributes:
        kind: ``"open_clip"`` or ``"timm"``.
        name: open_clip model name (``"ViT-L-14-336"``) or timm model name.
        layer: Transformer block (or stage) whose output is used; -1 = last (upstream).
        cls: Where the class (prefix) tokens go: ``"first"`` (Base, Hybrid), ``"last"`` (VisualRWKV)
            or ``"none"``.
        pool: Side ``g`` of the average-pooled patch grid (24, 12, 8, 6, 4, 3, 2), ``None`` = full grid.
        keep_patches: ``False`` keeps only the class token (1 token per image).
        options: Extra keyword arguments of the encoder: ``vision_overrides`` / ``pretrained_tag`` /
            ``quick_gelu`` for open_clip, ``timm.create_model`` arguments (``img_size``, ``depth``...)
            for timm.
    """

    kind: Literal["open_clip", "timm"] = "open_clip"
    name: str = "ViT-L-14-336"
    layer: int = -1
    cls: Literal["first", "last", "none"] = "last"
    pool: int | None = None
    keep_patches: bool = True
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("open_clip", "timm"):
            raise ValueError(f"encoder kind must be 'open_clip' or 'timm', got {self.kind!r}")
        if self.cls not in ("first", "last", "none"):
            raise ValueError(f"encoder cls must be 'first', 'last' or 'none', got {self.cls!r}")

    def layout(self) -> TokenLayout:
        return TokenLayout(prefix=self.cls, pool=self.pool, keep_patches=self.keep_patches)


@dataclass(frozen=True)
class VisualRWKVConfig:
    """Every knob of a VisualRWKV model; ``to_dict`` / ``from_dict`` give the ``config.json`` form.

    Attributes:
        lm: The RWKV language model (``version`` x052 = RWKV-5 static recurrence, x060 = RWKV-6
            data-dependent recurrence).
        encoder: The image encoder and its token layout.
        projector: ``"linear"`` (upstream: one bias-free ``Linear``) or ``"mlp"``.
        projector_depth: Linear layers of the MLP projector.
        scan: ``"uni"``, ``"bi"``, ``"multi"`` or a tuple of directions (see ``ScanPermuter``).
        prompt: ``"image_first"``, ``"image_last"`` or ``"sandwich"``.
        hybrid_layers: Blocks followed by a ``TinyAttention`` layer (VisualRWKV-Hybrid: the last).
        hybrid_dim: Width of the tiny attention (``None`` = ``lm.dim``); head size ``hybrid_head_dim``.
        loss: ``"sample"`` (sample-level CE) or ``"batch"`` (batch-level CE).
        l2wrap: Add upstream's L2Wrap gradient to the loss.
        context_length: Longest training sequence (stage 1: 1024, stage 2: 2048).
    """

    lm: RWKVConfig = field(default_factory=RWKVConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: Literal["linear", "mlp"] = "linear"
    projector_depth: int = 2
    scan: str | tuple[str, ...] = "bi"
    prompt: Literal["image_first", "image_last", "sandwich"] = "sandwich"
    hybrid_layers: tuple[int, ...] = ()
    hybrid_dim: int | None = None
    hybrid_head_dim: int = 64
    loss: Literal["sample", "batch"] = "sample"
    l2wrap: bool = False
    context_length: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.lm, Mapping):
            object.__setattr__(self, "lm", RWKVConfig.from_dict(self.lm))
        if isinstance(self.encoder, Mapping):
            object.__setattr__(self, "encoder", EncoderConfig(**self.encoder))
        if not isinstance(self.scan, str):
            object.__setattr__(self, "scan", tuple(self.scan))
        object.__setattr__(self, "hybrid_layers", tuple(sorted(set(self.hybrid_layers))))
        checks = {
            "projector": (self.projector in ("linear", "mlp"), "'linear' or 'mlp'"),
            "scan": (
                self.scan in SCHEDULES if isinstance(self.scan, str) else bool(self.scan) and set(self.scan) <= set(DIRECTIONS),
                f"one of {sorted(SCHEDULES)} or a tuple of {DIRECTIONS}",
            ),
            "prompt": (self.prompt in ("image_first", "image_last", "sandwich"), "'image_first', 'image_last' or 'sandwich'"),
            "loss": (self.loss in ("sample", "batch"), "'sample' or 'batch'"),
            "hybrid_layers": (
                all(0 <= i < self.lm.num_layers for i in self.hybrid_layers),
                f"block indices in [0, {self.lm.num_layers})",
            ),
            "context_length": (self.context_length >= 1, "a positive int"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> VisualRWKVConfig:
        """A copy with ``changes``; ``lm=`` and ``encoder=`` also accept dicts of the fields to change."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown VisualRWKVConfig fields: {sorted(unknown)}")
        for name, kind in (("lm", RWKVConfig), ("encoder", EncoderConfig)):
            if isinstance(changes.get(name), Mapping):
                current = dataclasses.asdict(getattr(self, name))
                extra = set(changes[name]) - set(current)
                if extra:
                    raise ValueError(f"unknown {kind.__name__} fields: {sorted(extra)}")
                fields = {**current, **changes[name]}
                if name == "lm" and "dim" in changes[name] and "ffn_dim" not in changes[name]:
                    fields["ffn_dim"] = None  # follow the new width
                changes[name] = kind(**fields)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["scan"] = self.scan if isinstance(self.scan, str) else list(self.scan)
        data["hybrid_layers"] = list(self.hybrid_layers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> VisualRWKVConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VisualRWKVConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VisualRWKVConfig:
        return cls.from_dict(json.loads(text))


class VisualRWKVOutput(NamedTuple):
    """``logits`` `[B, T, V]`; ``loss`` (scalar, when labels were given); the final ``state``."""

    logits: Tensor
    loss: Tensor | None
    state: RWKVState


class VisualRWKV(nn.Module):
    """Encoder -> projector -> image features spliced into the token embeddings -> scanned RWKV stack.

    The image features enter the sequence before block 0, so block 0's ``ln0`` normalises them as it
    does token embeddings (upstream's behaviour). Block ``i`` reads every complete image's patch span in
    the scan schedule's direction for layer ``i``; text and class tokens keep their places.

    Args:
        config: The configuration the parts were built from (kept for ``save_pretrained``).
        encoder: Image encoder (frozen by default).
        proj: Projector from encoder width to ``lm.dim``.
        lm: The RWKV language model (hybrid blocks carry ``tiny_att``).
        scan: Scan schedule.
        loss: Loss module called as ``loss(logits, labels)``.

    Shapes:
        forward(input_ids `[B, T]`, labels `[B, T]` or None, images `[N, 3, H, W]` or None,
        image_spans `[N, 4]` rows ``(sample, start, first, length)`` as the ``LLaVACollator`` returns
        them, state ``RWKVState`` or None) -> ``VisualRWKVOutput``.
    """

    def __init__(
        self,
        config: VisualRWKVConfig,
        encoder: ImageEncoder,
        proj: nn.Module,
        lm: RWKVLanguageModel,
        *,
        scan: ScanPermuter,
        loss: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.proj = proj
        self.lm = lm
        self.scan = scan
        self.loss_fn = loss

    @property
    def image_tokens(self) -> int:
        """Positions one image takes in the sequence (``LLaVACollator(image_tokens=...)``)."""
        return self.encoder.num_tokens

    def encode_images(self, images: Tensor) -> Tensor:
        """Projected image tokens `[N, image_tokens, C]` in the language model's dtype."""
        feats = self.encoder(images.to(_dtype(self.encoder)))
        return self.proj(feats.to(_dtype(self.proj))).to(self.lm.emb.weight.dtype)

    def embed(
        self, input_ids: Tensor, images: Tensor | None = None, image_spans: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """Token embeddings with the image features in place, and the scan plan of the batch."""
        embeds = self.lm.embed(input_ids)
        B, T = input_ids.shape
        spans = _check_spans(image_spans, images, B, T, self.image_tokens)
        if spans is None:
            return embeds, None
        feats = self.encode_images(images)  # [N, n, C]
        sample, start, first, length = spans.unbind(1)
        span_of = torch.repeat_interleave(torch.arange(len(spans), device=spans.device), length)
        offset = torch.cumsum(length, 0) - length
        j = torch.arange(int(length.sum()), device=spans.device) - offset[span_of]
        rows, cols = sample[span_of], start[span_of] + j
        embeds = embeds.index_put((rows, cols), feats[span_of, first[span_of] + j])
        return embeds, self._scan_plan(spans, B, T)

    def _scan_plan(self, spans: Tensor, batch_size: int, seq_len: int):
        """Scan rows ``(sample, patch start, h, w)`` for every image that is whole in the sequence."""
        gh, gw = self.encoder.output_grid
        if gh * gw == 0 or all(d == "forward" for d in self.scan.directions):
            return None
        whole = (spans[:, 2] == 0) & (spans[:, 3] == self.image_tokens)  # truncated images stay raster
        patch_start = self.encoder.patch_span.start
        rows = torch.stack(
            [spans[whole, 0], spans[whole, 1] + patch_start, torch.full_like(spans[whole, 0], gh), torch.full_like(spans[whole, 0], gw)],
            dim=1,
        )
        return self.scan.plan(rows, batch_size=batch_size, seq_len=seq_len, device=spans.device)

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        state: RWKVState | None = None,
    ) -> VisualRWKVOutput:
        embeds, plan = self.embed(input_ids, images, image_spans)
        logits, state = self.lm(embeds=embeds, state=state, scan=plan)
        loss = self.loss_fn(logits, labels) if labels is not None else None
        return VisualRWKVOutput(logits, loss, state)

    def save_pretrained(self, directory, *, encoder_weights: bool = True):
        """``assemblies.save_pretrained(self, directory)``: ``config.json`` + ``model.safetensors``."""
        from .pretrained import save_pretrained  # pretrained imports this module

        return save_pretrained(self, directory, encoder_weights=encoder_weights)

    def forward_batch(self, batch: Mapping[str, Any]) -> VisualRWKVOutput:
        """``forward`` on a batch from ``LLaVACollator`` (keys ``input_ids``, ``labels``, ``images``, ``image_spans``)."""
        return self(batch["input_ids"], batch.get("labels"), batch.get("images"), batch.get("image_spans"))

    @torch.no_grad()
    def prefill(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        state: RWKVState | None = None,
    ) -> tuple[Tensor, RWKVState]:
        """Run a prompt (scan schedule honoured) and return the last position's logits `[B, V]` and the state."""
        embeds, plan = self.embed(input_ids, images, image_spans)
        logits, state = self.lm(embeds=embeds, state=state, scan=plan, logits_to_keep=1)
        return logits[:, -1], state

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        *,
        max_new_tokens: int = 64,
        stop_tokens: Sequence[int] = (STOP_TOKEN, 0),
    ) -> list[int]:
        """Greedy decoding of one prompt `[1, T]`: prefill, then one token at a time with the state.

        Returns the generated ids, without the stop token.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"generate takes one prompt [1, T], got shape {tuple(input_ids.shape)}")
        logits, state = self.prefill(input_ids, images, image_spans)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax(-1))
            if token in stop_tokens:
                break
            out.append(token)
            step, state = self.lm(torch.tensor([[token]], device=input_ids.device), state)
            logits = step[:, -1]
        return out


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _check_spans(spans: Tensor | None, images: Tensor | None, B: int, T: int, n: int) -> Tensor | None:
    if spans is None or spans.numel() == 0:
        if images is not None and len(images):
            raise ValueError(f"{len(images)} images were given without image_spans")
        return None
    if images is None:
        raise ValueError("image_spans were given without images")
    spans = spans.long()
    if spans.dim() != 2 or spans.shape[1] != 4 or len(spans) != len(images):
        raise ValueError(
            f"image_spans must be [N, 4] rows (sample, start, first, length) with N = {len(images)} images, "
            f"got shape {tuple(spans.shape)}"
        )
    sample, start, first, length = spans.unbind(1)
    bad = (
        (sample < 0) | (sample >= B) | (start < 0) | (length < 1) | (first < 0)
        | (first + length > n) | (start + length > T)
    )  # fmt: skip
    if bad.any():
        raise ValueError(
            f"image spans {spans[bad].tolist()} do not fit a [B, T] = [{B}, {T}] batch with {n} tokens per image"
        )
    return spans


def build_visualrwkv(
    config: VisualRWKVConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisualRWKV:
    """Assemble a freshly initialised VisualRWKV model (frozen encoder with random weights).

    Encoder weights come from local files only (``EncoderConfig.options`` ``checkpoint_path``), or from
    an upstream checkpoint through ``assemblies.load_upstream``.
    """
    kw = {"device": device, "dtype": dtype}
    enc = config.encoder
    options = dict(enc.options)
    if enc.kind == "open_clip":
        encoder: ImageEncoder = OpenCLIPEncoder(enc.name, layer=enc.layer, layout=enc.layout(), **options, **kw)
    else:
        encoder = TimmEncoder(enc.name, layer=enc.layer, layout=enc.layout(), **options, **kw)
    C = config.lm.dim
    if config.projector == "linear":
        proj: nn.Module = LinearProjector(encoder.dim, C, **kw)
    else:
        proj = MLPProjector(encoder.dim, C, depth=config.projector_depth, **kw)
    lm = build_rwkv_lm(config.lm, **kw)
    for i in config.hybrid_layers:
        block: RWKVBlock = lm.blocks[i]
        block.tiny_att = TinyAttention(C, attn_dim=config.hybrid_dim, head_dim=config.hybrid_head_dim, **kw)
    loss_cls = SampleLevelCE if config.loss == "sample" else BatchLevelCE
    return VisualRWKV(config, encoder, proj, lm, scan=ScanPermuter(config.scan), loss=loss_cls(l2wrap=config.l2wrap))
