"""LLaVA-1.5 training data: a lazy dataset, a right-padding collate function and a bad-data report.

The files are LLaVA-1.5's JSON (``[{"id", "image"?, "conversations": [{"from", "value"}]}]``, the
558K alignment set and the 665K instruction mix alike; a sample without ``"image"`` is text only,
and ``"image"`` may also be a list of files, one per ``<image>``). Opening a file keeps only each
record's byte range; a sample is parsed, tokenized and its images loaded when it is asked for, in
whichever DataLoader worker asks.

Bad samples follow the dataset's ``on_bad_sample`` policy: ``"raise"`` a ``BadSampleError`` naming
the sample, or ``"skip"``: the dataset returns a ``SkippedSample``, the collate function drops it
from the batch and lists it under ``batch["skipped"]``, and ``SkipReport`` counts them over an
epoch and logs a summary at its end. Reasons: ``malformed``, ``turn_order``, ``empty_turn``,
``image_mismatch`` (``<image>`` count differs from the number of image files), ``missing_image``,
``corrupt_image``.

Example (``transform`` is the vision encoder's preprocessing, PIL image → tensor; the files are LLaVA's)::

    from torch.utils.data import DataLoader
    tok = WorldTokenizer()
    data = LLaVADataset("llava_v1_5_mix665k.json", "images/", SandwichPromptBuilder(tok),
                        image_transform=transform, on_bad_sample="skip")
    loader = DataLoader(data, batch_size=8, num_workers=2,
                        collate_fn=LLaVACollator(image_tokens=577, context_length=2048))
    report = SkipReport()
    for batch in report.epoch(loader):
        ...  # batch["input_ids"], batch["labels"], batch["images"], batch["image_spans"]
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._records import JsonRecords
from .prompt import IGNORE_INDEX, ConversationError, Prompt, PromptBuilder

__all__ = ["BadSampleError", "LLaVACollator", "LLaVADataset", "LLaVASample", "SkipReport", "SkippedSample"]

logger = logging.getLogger(__name__)
Policy = Literal["raise", "skip"]


class BadSampleError(ValueError):
    """A sample that breaks the data contract, raised under the ``"raise"`` policy.

    Attributes:
        sample_id: the sample's ``"id"`` (or its index when it has none).
        reason: one of the reason codes in the module docstring.
    """

    def __init__(self, message: str, sample_id: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.sample_id = sample_id
        self.reason = reason


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a bad sample under the ``"skip"`` policy."""

    index: int
    sample_id: str
    reason: str
    detail: str


@dataclass
class LLaVASample:
    """One good sample: its tokenized prompt and one transformed image per ``prompt.image_offsets``."""

    index: int
    sample_id: str
    prompt: Prompt
    images: list[Tensor]


def _to_uint8_tensor(image) -> Tensor:
    """PIL RGB image → ``[3, H, W]`` uint8 tensor."""
    width, height = image.size
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


class LLaVADataset(Dataset):
    """LLaVA-1.5 JSON conversations with their images, tokenized on access.

    Args:
        data_file: a JSON array of samples (or JSON Lines).
        image_root: the folder the samples' ``"image"`` paths are relative to; may be None for a
            text-only file.
        builder: the prompt builder, which fixes the training stage's prompt (``ImageFirstPromptBuilder``
            for alignment, ``SandwichPromptBuilder`` for instruction tuning) and the tokenizer.
        image_transform: PIL RGB image → tensor (the vision encoder's preprocessing); default: the
            raw pixels as a ``[3, H, W]`` uint8 tensor.
        on_bad_sample: ``"raise"`` or ``"skip"`` (see the module docstring).

    Raises:
        ValueError: ``data_file`` is not a JSON array of objects, or a bad argument.
    """

    def __init__(
        self,
        data_file: str | Path,
        image_root: str | Path | None,
        builder: PromptBuilder,
        *,
        image_transform: Callable[[object], Tensor] | None = None,
        on_bad_sample: Policy = "raise",
    ):
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if not isinstance(builder, PromptBuilder):
            raise ValueError(f"builder must be a PromptBuilder, got {type(builder).__name__}")
        self.records = JsonRecords(data_file)
        self.image_root = None if image_root is None else Path(image_root)
        self.builder = builder
        self.image_transform = image_transform or _to_uint8_tensor
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LLaVASample | SkippedSample:
        record = self.records[index]
        sample_id = str(record.get("id", index))
        try:
            return self._sample(index, sample_id, record)
        except _BadSample as bad:
            if self.on_bad_sample == "raise":
                message = f"sample {sample_id!r} (index {index}): {bad.reason}: {bad.detail}"
                raise BadSampleError(message, sample_id, bad.reason) from bad.__cause__
            return SkippedSample(index, sample_id, bad.reason, bad.detail)

    def _sample(self, index: int, sample_id: str, record: dict) -> LLaVASample:
        files = record.get("image")
        files = [] if files is None else [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise _BadSample("malformed", f"'image' must be a path or a list of paths, got {record['image']!r:.80}")
        try:
            prompt = self.builder.build(record.get("conversations"))
        except ConversationError as exc:
            raise _BadSample(exc.reason, str(exc)) from exc
        if prompt.num_images != len(files):
            raise _BadSample(
                "image_mismatch",
                f"the conversation has {prompt.num_images} <image> placeholder(s) and {len(files)} image file(s)",
            )
        return LLaVASample(index, sample_id, prompt, [self.image_transform(self._load(f)) for f in files])

    def _load(self, file: str):
        from PIL import Image, UnidentifiedImageError

        if self.image_root is None:
            raise ValueError("this dataset has image samples; pass image_root")
        path = self.image_root / file
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # decodes every pixel: a truncated file fails here
        except FileNotFoundError as exc:
            raise _BadSample("missing_image", f"no file {str(path)!r}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _BadSample("corrupt_image", f"cannot decode {str(path)!r}: {exc}") from exc


class _BadSample(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class LLaVACollator:
    """Expands image placeholders, truncates, pads on the right; drops and lists skipped samples.

    Args:
        image_tokens: the number of positions one image takes (the encoder's token count: 577
            for CLIP ViT-L/14-336 with CLS, fewer after pooling).
        context_length: the maximum sequence length; None keeps every sequence whole. A longer
            sequence keeps its head if any supervised label falls in it, else its tail (upstream).
            An image cut by the window keeps its visible part; one outside it is dropped.
        pad_id: the padding id (labels are padded with -100).

    Returns a dict, for B kept samples, N images and T the longest kept length:

    Shapes:
        - ``input_ids``: ``[B, T]`` int64; image positions hold ``pad_id``.
        - ``labels``: ``[B, T]`` int64, -100 where no loss.
        - ``lengths``: ``[B]`` int64, each sample's length before padding.
        - ``images``: ``[N, ...]``, the images in order of (sample, position); None when N = 0.
        - ``image_spans``: ``[N, 4]`` int64, per image ``(sample, start, first, length)``: the
          image's features ``first : first + length`` go to ``input_ids[sample, start : start + length]``
          (``first`` > 0 or ``length`` < image_tokens only for an image cut by truncation).
        - ``sample_ids``: list of B ids; ``skipped``: list of ``SkippedSample``.
    """

    def __init__(self, image_tokens: int, context_length: int | None = None, pad_id: int = 0):
        if isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 1:
            raise ValueError(f"image_tokens must be a positive int, got {image_tokens!r}")
        if context_length is not None and (not isinstance(context_length, int) or context_length < 1):
            raise ValueError(f"context_length must be a positive int or None, got {context_length!r}")
        self.image_tokens = image_tokens
        self.context_length = context_length
        self.pad_id = pad_id

    def __call__(self, items: Sequence[LLaVASample | SkippedSample]) -> dict:
        samples = [s for s in items if isinstance(s, LLaVASample)]
        skipped = [s for s in items if isinstance(s, SkippedSample)]
        rows, images, spans = [], [], []
        for row, sample in enumerate(samples):
            ids, labels, starts = sample.prompt.expand(self.image_tokens, self.pad_id)
            begin = self._window_start(labels)
            end = begin + (self.context_length or len(ids))
            rows.append((ids[begin:end], labels[begin:end]))
            for image, start in zip(sample.images, starts, strict=True):
                lo, hi = max(start, begin), min(start + self.image_tokens, end)
                if hi > lo:
                    images.append(image)
                    spans.append((row, lo - begin, lo - start, hi - lo))
        lengths = torch.tensor([len(ids) for ids, _ in rows], dtype=torch.long)
        width = int(lengths.max()) if rows else 0
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, lab) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) > 1:
            raise ValueError(f"images in a batch must share one shape, got {sorted(shapes)}; pass an image_transform")
        return {
            "input_ids": input_ids,
            "labels": labels,
            "lengths": lengths,
            "images": torch.stack(images) if images else None,
            "image_spans": torch.tensor(spans, dtype=torch.long).view(-1, 4),
            "sample_ids": [s.sample_id for s in samples],
            "skipped": skipped,
        }

    def _window_start(self, labels: list[int]) -> int:
        n = self.context_length
        if n is None or len(labels) <= n or any(label != IGNORE_INDEX for label in labels[:n]):
            return 0
        return len(labels) - n


class SkipReport:
    """Counts the samples skipped in collated batches and summarises them at the end of an epoch.

    Example (``loader`` a DataLoader of ``LLaVACollator`` batches with one corrupt image)::

        report = SkipReport()
        for batch in report.epoch(loader):  # logs the summary when the loader is exhausted
            train_step(batch)
        report.counts()  # Counter({'corrupt_image': 1})
    """

    def __init__(self):
        self.seen = 0
        self.skipped: list[SkippedSample] = []

    def update(self, batch: dict) -> None:
        """Record one collated batch."""
        self.seen += len(batch["sample_ids"]) + len(batch["skipped"])
        self.skipped += batch["skipped"]

    def counts(self) -> Counter:
        """Skipped samples per reason."""
        return Counter(s.reason for s in self.skipped)

    def summary(self, max_ids: int = 5) -> str:
        """One line: how many were skipped, per reason, with the first ``max_ids`` sample ids."""
        if not self.skipped:
            return f"skipped 0 of {self.seen} samples"
        parts = []
        for reason, n in sorted(self.counts().items()):
            ids = [s.sample_id for s in self.skipped if s.reason == reason]
            more = ", ..." if len(ids) > max_ids else ""
            parts.append(f"{reason} {n} (ids: {', '.join(ids[:max_ids])}{more})")
        return f"skipped {len(self.skipped)} of {self.seen} samples: " + "; ".join(parts)

    def epoch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield ``batches`` (one epoch), counting from zero; log the summary when they run out.

        The summary is a warning when anything was skipped, else an info message.
        """
        self.seen = 0
        self.skipped = []
        for batch in batches:
            self.update(batch)
            yield batch
        logger.log(logging.WARNING if self.skipped else logging.INFO, "epoch done: %s", self.summary())
