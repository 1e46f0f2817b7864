"""The VisualRWKV family: image encoder -> projector -> image spans in the token sequence -> RWKV stack.

``build_visualrwkv(config, data_config)`` assembles the model from ``rwkvblocks`` parts; presets live in
``assemblies.models.registry``. Checkpoints: ``VisualRWKV.from_pretrained(dir)`` / ``model.save_pretrained(dir)``
(our format, ``assemblies.models.formats.pretrained``) and ``VisualRWKV.from_upstream(path)``
(howard-hou/VisualRWKV files, ``assemblies.models.formats.upstream``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rwkvblocks import (
    BatchLevelCE,
    PreNormTinyAttention,
    RWKVBlock,
    RWKVLanguageModel,
    RWKVState,
    SampleLevelCE,
    ScanPermuter,
    ScanPlan,
)
from rwkvblocks.generation import SamplingConfig, decode
from rwkvblocks.vision import (
    ConcatEncoder,
    GatedProjector,
    ImageEncoder,
    LinearProjector,
    MLPProjector,
    OpenCLIPEncoder,
    TimmEncoder,
)

from .config import DataConfig, EncoderConfig, VisualRWKVConfig
from .dtypes import resolve_dtype
from .formats._common import raise_key_problems
from .formats.pretrained import read_pretrained, write_pretrained
from .formats.upstream import read_upstream
from .rwkv_lm import build_rwkv_lm

__all__ = ["STOP_TOKEN", "VisualRWKV", "VisualRWKVOutput", "build_visualrwkv"]

logger = logging.getLogger("assemblies")

STOP_TOKEN = 261  # "\n\n" in the World vocabulary: the end of an assistant turn


class VisualRWKVOutput(NamedTuple):
    """``logits`` `[B, T, V]`; ``loss`` (scalar, when labels were given); the final ``state`` (``None`` when
    packed: ``cu_seqlens``)."""

    logits: Tensor
    loss: Tensor | None
    state: RWKVState | None


class VisualRWKV(nn.Module):
    """Encoder -> projector -> image features spliced into the token embeddings -> scanned RWKV stack.

    The image features enter the sequence before block 0, so block 0's ``ln0`` normalises them as it
    does token embeddings (upstream's behaviour). Block ``i`` reads every complete image's patch span in
    the scan schedule's direction for layer ``i``; text and class tokens keep their places.

    Args:
        config: The architecture the parts were built from (kept for ``save_pretrained``).
        data_config: The prompt mode, context length, tokenizer and loss the model is used with.
        encoder: Image encoder (frozen by default).
        proj: Projector from encoder width to ``lm.dim``.
        lm: The RWKV language model (hybrid blocks carry ``tiny_att``).
        scan: Scan schedule.
        loss: Loss module called as ``loss(logits, labels)``.

    Shapes:
        forward(input_ids `[B, T]`, labels `[B, T]` or None, images `[N, 3, H, W]` or None,
        image_spans `[N, 4]` rows ``(sample, start, first, length)`` as the ``LLaVACollator`` returns
        them, state ``RWKVState`` or None, validate) -> ``VisualRWKVOutput``. ``images`` must be preprocessed
        float pixels (``encoder.transform``); raw ``uint8`` pixels are refused, never read as 0-255 values.
        ``validate=True`` also refuses NaN or infinite pixels and embeddings: a host sync, so it is off by
        default. ``image_spans`` is layout metadata: keep it on the CPU (the collator does) and the forward
        needs no device-to-host copy. A ``ConcatEncoder`` (VisualRWKV-7) takes packed images `[N, P]`.
    """

    def __init__(
        self,
        config: VisualRWKVConfig,
        data_config: DataConfig,
        encoder: ImageEncoder,
        proj: nn.Module,
        lm: RWKVLanguageModel,
        *,
        scan: ScanPermuter,
        loss: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.data_config = data_config
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
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        *,
        pad: int = 0,
    ) -> tuple[Tensor, ScanPlan | None]:
        """Token embeddings with the image features in place, and the scan plan of the batch.

        ``pad`` positions holding the embedding of ``config.pad_token`` are put before the sequence (see
        ``VisualRWKVConfig.pad_multiple``); the scan plan accounts for them. The gather indices are
        computed from ``image_spans`` on the CPU and copied to the device once; nothing here reads a
        device tensor back to the host.
        """
        embeds = self.lm.embed(input_ids)
        B, T = input_ids.shape
        _check_images(images, self.encoder)
        spans = _check_spans(image_spans, images, B, T, self.image_tokens)
        if spans is not None:
            feats = self.encode_images(images)  # [N, n, C]
            sample, start, first, length = spans.unbind(1)
            span_of = torch.repeat_interleave(torch.arange(len(spans)), length)
            offset = torch.cumsum(length, 0) - length
            j = torch.arange(int(length.sum())) - offset[span_of]
            device = embeds.device
            rows, cols = sample[span_of].to(device), (start[span_of] + j).to(device)
            picked = feats[span_of.to(device), (first[span_of] + j).to(device)]
            embeds = embeds.index_put((rows, cols), picked)
        if pad:
            filler = self.lm.embed(torch.full((B, pad), self.config.pad_token, device=input_ids.device))
            embeds = torch.cat([filler, embeds], dim=1)
        if spans is None:
            return embeds, None
        spans = spans.clone()
        spans[:, 1] += pad
        return embeds, self._scan_plan(spans, B, T + pad, embeds.device)

    def _padding(self, seq_len: int, state: RWKVState | None) -> int:
        """Positions of upstream's left padding for a sequence of ``seq_len`` run from ``state``."""
        m = self.config.pad_multiple
        return (-seq_len) % m if m > 1 and state is None else 0

    def _scan_plan(self, spans: Tensor, batch_size: int, seq_len: int, device: torch.device) -> ScanPlan | None:
        """Scan rows ``(sample, patch start, h, w)`` for every image that is whole in the sequence."""
        gh, gw = self.encoder.output_grid
        if gh * gw == 0 or all(d == "forward" for d in self.scan.directions):
            return None
        whole = spans[(spans[:, 2] == 0) & (spans[:, 3] == self.image_tokens)]  # truncated images stay raster
        rows = torch.stack(
            [
                whole[:, 0],
                whole[:, 1] + self.encoder.patch_span.start,
                torch.full_like(whole[:, 0], gh),
                torch.full_like(whole[:, 0], gw),
            ],
            dim=1,
        )
        return self.scan.plan(rows, batch_size=batch_size, seq_len=seq_len, device=device)

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        state: RWKVState | None = None,
        *,
        validate: bool = False,
        cu_seqlens: Tensor | None = None,
    ) -> VisualRWKVOutput:
        """``cu_seqlens`` `[N+1]`: the row `[1, T]` packs N samples (``pack_batch``), each run exactly as alone
        (``RWKVLanguageModel`` packing) and each a sample of the loss (``loss_fn(..., cu_seqlens=)``); the
        state returned is then ``None``. Keep it on the CPU like ``image_spans``: it is then checked against
        the spans (no image may cross a sample boundary) with no device sync, and copied to the device once.
        Refused with ``state``, left padding (``config.pad_multiple > 1``) and hybrid (``tiny_att``) blocks."""
        if cu_seqlens is not None:
            cu_seqlens = self._check_packing(cu_seqlens, input_ids, image_spans, state)
        pad = self._padding(input_ids.shape[1], state)
        embeds, plan = self.embed(input_ids, images, image_spans, pad=pad)
        if validate:
            _check_finite(embeds, images)
        packing = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens.to(embeds.device)}
        logits, state = self.lm(embeds=embeds, state=state, scan=plan, **packing)
        logits = logits[:, pad:] if pad else logits
        loss = self.loss_fn(logits, labels, **packing) if labels is not None else None
        return VisualRWKVOutput(logits, loss, state)

    def forward_batch(self, batch: Mapping[str, Any]) -> VisualRWKVOutput:
        """``forward`` on an ``LLaVACollator`` batch (``input_ids``, ``labels``, ``images``, ``image_spans``) or a
        packed row of ``LLaVAPackingCollator`` / ``pack_batch`` (also ``cu_seqlens``)."""
        return self(
            batch["input_ids"],
            batch.get("labels"),
            batch.get("images"),
            batch.get("image_spans"),
            cu_seqlens=batch.get("cu_seqlens"),
        )

    def _check_packing(
        self, cu_seqlens: Tensor, input_ids: Tensor, image_spans: Tensor | None, state: RWKVState | None
    ) -> Tensor:
        """Packing options; on a CPU ``cu_seqlens`` also its values and the image spans against them."""
        if self._padding(input_ids.shape[1], None):
            raise ValueError(
                f"packed samples (cu_seqlens) cannot be left-padded as pad_multiple={self.config.pad_multiple} "
                "asks (the padding would belong to no sample): use a padded batch"
            )
        if state is not None:
            raise ValueError("packed samples (cu_seqlens) each start from the empty state: pass state=None")
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("cu_seqlens must be an int32 or int64 tensor [N+1] of sample offsets")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D [N+1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"packed samples (cu_seqlens) take one row [1, T], got shape {tuple(input_ids.shape)}")
        if cu_seqlens.device.type != "cpu":
            return cu_seqlens
        T = input_ids.shape[1]
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must run from 0 to T={T} without decreasing, got {bounds}")
        if image_spans is not None and image_spans.numel():
            spans = image_spans.to("cpu", torch.long).view(-1, 4)
            start, end = spans[:, 1].contiguous(), spans[:, 1] + spans[:, 3] - 1
            cu = cu_seqlens.long()[1:]
            crossing = torch.searchsorted(cu, start, right=True) != torch.searchsorted(cu, end, right=True)
            if crossing.any():
                raise ValueError(f"image spans {spans[crossing].tolist()} cross a sample boundary of {bounds}")
        return cu_seqlens

    @torch.no_grad()
    def prefill(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        image_spans: Tensor | None = None,
        state: RWKVState | None = None,
    ) -> tuple[Tensor, RWKVState]:
        """Run a prompt (scan schedule honoured) and return the last position's logits `[B, V]` and the state.

        From an empty state the prompt is left-padded as ``config.pad_multiple`` says (upstream VisualRWKV-7's
        ``pad_multiple=16``); the state then includes the padding, as upstream's does.
        """
        pad = self._padding(input_ids.shape[1], state)
        embeds, plan = self.embed(input_ids, images, image_spans, pad=pad)
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
        stop_tokens: Sequence[int] | None = None,
        config: SamplingConfig | None = None,
    ) -> list[int]:
        """Decode one tokenized prompt `[1, T]`: prefill (scan schedule honoured), then step the recurrent state.

        Args:
            input_ids, images, image_spans: As ``forward`` (one sample).
            max_new_tokens, stop_tokens: Used when no ``config`` is given (greedy); ``stop_tokens=None`` stops at
                id 0 and, for the World vocabulary, at ``"\n\n"`` (261).
            config: Full sampling settings (``rwkvblocks.generation.SamplingConfig``).

        Returns the generated ids, without the stop token. Conversations, images as files, batches, streaming
        and prefix reuse: ``assemblies.models.generate``.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"generate takes one prompt [1, T], got shape {tuple(input_ids.shape)}")
        if config is None:
            world = self.data_config.tokenizer == "world"
            stops = tuple(stop_tokens) if stop_tokens is not None else ((STOP_TOKEN, 0) if world else (0,))
            config = SamplingConfig(max_new_tokens=max_new_tokens, stop_tokens=stops)
        start = self.prefill(input_ids, images, image_spans)
        events = decode(lambda t, s: self.lm(t, s), [start], [config], vocab_size=self.lm.vocab_size)
        return next(e.result.tokens for e in events if e.result is not None)

    # -- checkpoints -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, *, encoder_weights: bool = True) -> Path:
        """Write ``config.json`` (both configurations) and ``model.safetensors`` into ``directory``.

        Args:
            directory: Target directory (created if needed); both files are replaced atomically.
            encoder_weights: Store the (frozen) encoder's weights too; without them the files are small and
                ``from_pretrained`` takes the encoder weights from elsewhere.
        """
        state = {k: v for k, v in self.state_dict().items() if encoder_weights or not k.startswith("encoder.")}
        config = {"model": self.config.to_dict(), "data": self.data_config.to_dict()}
        return write_pretrained(directory, config, state, encoder_weights=encoder_weights)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        encoder_weights: bool = True,
        encoder_checkpoint: str | os.PathLike | None = None,
    ) -> VisualRWKV:
        """Load a model saved by ``save_pretrained``.

        Args:
            directory: Holds ``config.json`` and ``model.safetensors``.
            device: Target device (default CPU).
            dtype: Parameter dtype (a ``torch.dtype`` or a name: ``"bf16"``, ``"float32"``...); ``None`` keeps the
                stored dtypes.
            encoder_weights: Load the encoder's weights from the directory. With ``False`` (or when they were
                not saved) the encoder comes from ``encoder_checkpoint``, else it keeps random weights.
            encoder_checkpoint: Local encoder weights (see ``OpenCLIPEncoder`` / ``TimmEncoder``).

        Raises:
            FileNotFoundError: a file is missing (the message names it).
            CheckpointError: (a ``ValueError``) an unreadable file (not JSON; empty, truncated or corrupt
                safetensors; files from different saves), or tensors that do not fit the configuration (named).
            ConfigError: (a ``ValueError``) a missing section, or a field of ``config.json`` of the wrong type or
                value, or unknown; named with its dotted path (``model.lm.num_layers``).
        """
        dtype = resolve_dtype(dtype)
        raw, state, stored_encoder = read_pretrained(directory)
        source = str(Path(directory) / "config.json")
        from .config import configs_from_dict  # both sections required, every field type-checked

        config, data_config = configs_from_dict(raw, source)
        load_encoder = encoder_weights and stored_encoder
        if not load_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        target = torch.device(device) if device is not None else torch.device("cpu")
        with torch.device("meta"):
            model = build_visualrwkv(config, data_config)
        model._assign(state, target, dtype, encoder_loaded=load_encoder, source=str(directory))
        if not load_encoder:
            model._rebuild_encoder(target, dtype or next(model.proj.parameters()).dtype, encoder_checkpoint)
        return model.eval()

    @classmethod
    def from_upstream(
        cls,
        path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        encoder_checkpoint: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> VisualRWKV:
        """Load an upstream VisualRWKV ``.pth`` (read with ``torch.load(weights_only=True)``).

        Args:
            path: The checkpoint.
            device, dtype: Target device (default CPU) and dtype (default: that of ``rwkv.emb.weight``).
            encoder_checkpoint: Encoder weights for a file without the ``vit.*`` tower (else random).
            **overrides: ``VisualRWKVConfig`` / ``DataConfig`` fields that shapes cannot tell (``scan``,
                ``prompt``, ``encoder={"cls": ...}``, ``loss``...); defaults follow the family.

        Raises:
            ValueError: not a tensor dict (pickled objects are refused), or keys/shapes that do not form a
                VisualRWKV model: every missing, unexpected and mis-shaped key is named with both shapes.
        """
        dtype = resolve_dtype(dtype)
        ckpt = read_upstream(path, **overrides)
        with torch.device("meta"):
            model = build_visualrwkv(ckpt.config, ckpt.data_config)
        state = dict(ckpt.state)
        unused = getattr(model.encoder, "visual", None)
        unused = getattr(unused, "proj", None)  # open_clip's output projection: unused here, absent upstream
        if ckpt.has_tower and "encoder.visual.proj" not in state and unused is not None:
            state["encoder.visual.proj"] = torch.zeros(unused.shape, dtype=state["proj.weight"].dtype)
        dtype = dtype or state["lm.emb.weight"].dtype
        target = torch.device(device) if device is not None else torch.device("cpu")
        model._assign(state, target, dtype, encoder_loaded=ckpt.has_tower, source=ckpt.source)
        if not ckpt.has_tower:
            model._rebuild_encoder(target, dtype, encoder_checkpoint)
        return model.eval()

    def _assign(self, state: Mapping[str, Tensor], device, dtype, *, encoder_loaded: bool, source: str) -> None:
        """Load ``state`` into a model built on ``meta``; every key of the model must be covered."""
        expected = self.state_dict()
        wanted = {k for k in expected if encoder_loaded or not k.startswith("encoder.")}
        missing = sorted(wanted - set(state))
        unexpected = sorted(set(state) - set(expected))
        misshaped = sorted(
            f"{k}: expected {list(expected[k].shape)}, got {list(state[k].shape)}"
            for k in wanted & set(state)
            if tuple(state[k].shape) != tuple(expected[k].shape)
        )
        raise_key_problems("does not match the model it describes", missing, unexpected, misshaped, path=source)
        converted = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() and dtype is not None else v.dtype)
            for k, v in state.items()
        }
        self.load_state_dict(converted, strict=False, assign=True)

    def _rebuild_encoder(self, device, dtype, checkpoint: str | os.PathLike | None) -> None:
        """Replace the (meta) encoder with a real one: random weights, or ``checkpoint`` (local file)."""
        options = {} if checkpoint is None else {"checkpoint_path": checkpoint}
        self.encoder = build_encoder(self.config.encoder, device=device, dtype=dtype, **options)
        if checkpoint is None:
            logger.warning("the encoder has random weights: pass encoder_checkpoint= to load them from a file")


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _check_images(images: Tensor | None, encoder: ImageEncoder) -> None:
    """Preprocessed float pixels of the rank the encoder takes; never raw 0-255 values."""
    if images is None:
        return
    per_image = (encoder.image_size[1],) if isinstance(encoder, ConcatEncoder) else (3, *encoder.image_size)
    layout = "[N, P] packed" if isinstance(encoder, ConcatEncoder) else "[N, 3, H, W]"
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a tensor {layout}, got {type(images).__name__}; use model.encoder.transform")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be preprocessed float pixels, got {images.dtype}: raw pixels (uint8, PIL images, files) "
            "go through model.encoder.transform first, which scales and normalises them"
        )
    if images.dim() != 1 + len(per_image) or tuple(images.shape[1:]) != per_image:
        hint = " (one image needs a leading batch axis: images[None])" if tuple(images.shape) == per_image else ""
        raise ValueError(
            f"images must be a batch {layout} = [N, {', '.join(map(str, per_image))}], got shape "
            f"{tuple(images.shape)}{hint}"
        )


def _check_finite(embeds: Tensor, images: Tensor | None) -> None:
    """``validate=True``: refuse NaN or infinite pixels or embeddings (a host sync, so off by default)."""
    if images is not None and not bool(torch.isfinite(images).all()):
        raise ValueError(f"images hold NaN or infinite values ({int((~torch.isfinite(images)).sum())} entries)")
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError("the input embeddings hold NaN or infinite values (the embedding or projector weights)")


def _check_spans(spans: Tensor | None, images: Tensor | None, B: int, T: int, n: int) -> Tensor | None:
    """Validated spans as a CPU int64 tensor (a CUDA tensor is copied once: keep spans on the CPU)."""
    if spans is None or spans.numel() == 0:
        if images is not None and len(images):
            raise ValueError(f"{len(images)} images were given without image_spans")
        return None
    if images is None:
        raise ValueError("image_spans were given without images")
    spans = spans.to("cpu", torch.long)
    if spans.dim() != 2 or spans.shape[1] != 4 or len(spans) != len(images):
        raise ValueError(
            f"image_spans must be [N, 4] rows (sample, start, first, length) with N = {len(images)} images, "
            f"got shape {tuple(spans.shape)}"
        )
    sample, start, first, length = spans.unbind(1)
    bad = (sample < 0) | (sample >= B) | (start < 0) | (length < 1) | (first < 0)
    bad |= (first + length > n) | (start + length > T)
    if bad.any():
        raise ValueError(
            f"image spans {spans[bad].tolist()} do not fit a [B, T] = [{B}, {T}] batch with {n} tokens per image"
        )
    return spans


def build_encoder(
    config: EncoderConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> ImageEncoder:
    """The image encoder ``config`` describes (random weights unless ``options`` name a ``checkpoint_path``).

    A ``"concat"`` encoder builds each tower from its own configuration (a tower's weights come from its
    own ``options``); ``options`` here must then be empty.
    """
    if config.kind == "concat":
        if options:
            raise ValueError(
                f"a 'concat' encoder takes no {sorted(options)}: give each tower its own options "
                "(encoder={'options': {'towers': [...]}}) or load the towers from a checkpoint"
            )
        towers = {name: build_encoder(cfg, device=device, dtype=dtype) for name, cfg in config.towers()}
        return ConcatEncoder(towers, layout=config.layout())
    cls = OpenCLIPEncoder if config.kind == "open_clip" else TimmEncoder
    return cls(
        config.name,
        layer=config.layer,
        layout=config.layout(),
        device=device,
        dtype=dtype,
        **{**config.kwargs(), **options},
    )


def build_visualrwkv(
    config: VisualRWKVConfig,
    data_config: DataConfig | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> VisualRWKV:
    """Assemble a freshly initialised VisualRWKV model (frozen encoder with random weights).

    Encoder weights come from local files only (``EncoderConfig.options`` ``checkpoint_path``), or from
    an upstream checkpoint through ``VisualRWKV.from_upstream``. ``data_config`` defaults to ``DataConfig()``.
    """
    data_config = DataConfig() if data_config is None else data_config
    kw = {"device": device, "dtype": resolve_dtype(dtype)}
    encoder = build_encoder(config.encoder, **kw)
    C = config.lm.dim
    if config.projector == "linear":
        proj: nn.Module = LinearProjector(encoder.dim, C, **kw)
    elif config.projector == "gated":
        proj = GatedProjector(encoder.dim, C, **kw)
    else:
        proj = MLPProjector(encoder.dim, C, depth=config.projector_depth, **kw)
    lm = build_rwkv_lm(config.lm, **kw)
    for i in config.hybrid_layers:
        block: RWKVBlock = lm.blocks[i]
        block.tiny_att = PreNormTinyAttention(C, attn_dim=config.hybrid_dim, head_dim=config.hybrid_head_dim, **kw)
    loss_cls = SampleLevelCE if data_config.loss == "sample" else BatchLevelCE
    return VisualRWKV(
        config, data_config, encoder, proj, lm, scan=ScanPermuter(config.scan), loss=loss_cls(l2wrap=data_config.l2wrap)
    )
