"""LLaVA-1.5 training data: a lazy dataset, a right-padding collate function and a bad-data report.

The files are LLaVA-1.5's JSON (``[{"id", "image"?, "conversations": [{"from", "value"}]}]``, the
558K alignment set and the 665K instruction mix alike; a sample without ``"image"`` is text only,
and ``"image"`` may also be a list of files, one per ``<image>``). Opening a file keeps only each
record's byte range; a sample is parsed, tokenized and its images loaded when it is asked for, in
whichever DataLoader worker asks.

Bad samples follow the dataset's ``on_bad_sample`` policy: ``"raise"`` a ``BadSampleError`` naming
the sample (its index and id) and, for an image, the file; or ``"skip"``: the dataset returns a
``SkippedSample``, the collate function drops it from the batch and lists it under ``batch["skipped"]``,
and ``SkipReport`` counts them over the whole run (every epoch, every worker: the records travel with
the batches) and logs a summary. Reasons: ``malformed``, ``turn_order``, ``empty_turn``,
``image_mismatch`` (``<image>`` count differs from the number of image files), ``missing_image``,
``corrupt_image`` (empty, truncated, not an image, or anything else the decoder refuses),
``oversized_image`` (the header declares more than ``max_pixels`` pixels: refused before decoding), and
from the collate function ``truncated_image`` (the context length cuts image positions) and
``truncated_answer`` (no supervised label survives the cut). Images in any mode (CMYK, palette,
16-bit, with alpha...) are converted to RGB.

Under ``"raise"`` in a DataLoader worker, PyTorch re-raises the error in the main process; the
``BadSampleError`` it rebuilds keeps the original message as its first line (the worker's traceback is
kept in ``worker_traceback``).

Example (``transform`` is the vision encoder's preprocessing, PIL image → tensor; the files are LLaVA's)::

    from torch.utils.data import DataLoader
    tok = WorldTokenizer()
    data = LLaVADataset("llava_v1_5_mix665k.json", "images/", SandwichPromptBuilder(tok),
                        image_transform=transform, on_bad_sample="skip")
    loader = DataLoader(data, batch_size=8, num_workers=2,
                        collate_fn=LLaVACollator(image_tokens=577, context_length=2048, on_truncation="skip"))
    report = SkipReport()
    for epoch in range(2):
        for batch in report.epoch(loader):
            ...  # batch["input_ids"], batch["labels"], batch["images"], batch["image_spans"]
    report.summary()  # both epochs
"""

from __future__ import annotations

import ast
import logging
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._images import to_rgb
from ._records import JsonRecords
from .prompt import IGNORE_INDEX, ConversationError, Prompt, PromptBuilder

__all__ = [
    "BadSampleError",
    "LLaVACollator",
    "LLaVADataset",
    "LLaVAPackingCollator",
    "LLaVASample",
    "SkipReport",
    "SkippedSample",
    "pack_batch",
]

logger = logging.getLogger(__name__)
Policy = Literal["raise", "skip"]
TruncationPolicy = Literal["keep", "raise", "skip"]

DEFAULT_MAX_PIXELS = 64_000_000
"""The default ``max_pixels`` of ``LLaVADataset``: 64 megapixels (8000 x 8000), checked on the header."""

# PyTorch rebuilds a worker's exception in the main process as ``type(message)`` with this message
_WORKER_MESSAGE = re.compile(r"\ACaught \w+ (?P<where>in DataLoader worker process \d+)\.\nOriginal (?P<tb>.*)\Z", re.S)
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_FIELDS = re.compile(rf"\Asample (?P<id>{_QUOTED}) \(index (?P<index>-?\d+)\): (?P<reason>\w+): ")
_FILE = re.compile(rf"\bfile (?P<file>{_QUOTED})")


class BadSampleError(ValueError):
    """A sample that breaks the data contract, raised under the ``"raise"`` policy.

    The message starts ``sample '<id>' (index <i>): <reason>: `` and names the image file when one is at
    fault. Raised in a DataLoader worker, it reaches the main process with the same first line, then a line
    naming the worker (PyTorch rebuilds it from the worker's formatted traceback, which is kept in
    ``worker_traceback``; the attributes are recovered from the message).

    Attributes:
        sample_id: the sample's ``"id"`` (or its index when it has none).
        reason: one of the reason codes in the module docstring.
        index: the sample's index in the dataset.
        file: the image file at fault, or None.
        worker_traceback: the worker's traceback when raised in a DataLoader worker, else None.
    """

    def __init__(
        self,
        message: str,
        sample_id: str | None = None,
        reason: str | None = None,
        *,
        index: int | None = None,
        file: str | None = None,
    ):
        self.worker_traceback = None
        worker = _WORKER_MESSAGE.match(message) if isinstance(message, str) else None
        original = worker and _final_message(worker["tb"], type(self))
        if original is not None:
            self.worker_traceback = worker["tb"]
            message = f"{original}\n(raised {worker['where']}; its traceback: .worker_traceback)"
            sample_id, reason, index, file = _message_fields(original)
        super().__init__(message)
        self.sample_id = sample_id
        self.reason = reason
        self.index = index
        self.file = file


def _final_message(formatted: str, cls: type) -> str | None:
    """The message of the last ``cls`` exception in a formatted traceback (its final line or lines)."""
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = formatted.rfind(marker)
    return None if at < 0 else formatted[at + len(marker) :].rstrip("\n")


def _message_fields(message: str) -> tuple[str | None, str | None, int | None, str | None]:
    """``(sample_id, reason, index, file)`` read back from a ``BadSampleError`` message."""
    head, file = _FIELDS.match(message), _FILE.search(message)
    try:
        path = ast.literal_eval(file["file"]) if file else None
        if head is None:
            return None, None, None, path
        return ast.literal_eval(head["id"]), head["reason"], int(head["index"]), path
    except (ValueError, SyntaxError):  # a message of another shape: keep it, without the fields
        return None, None, None, None


def _bad_sample_error(index: int, sample_id: str, reason: str, detail: str, file: str | None) -> BadSampleError:
    return BadSampleError(
        f"sample {sample_id!r} (index {index}): {reason}: {detail}", sample_id, reason, index=index, file=file
    )


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a bad sample under the ``"skip"`` policy (and records a sample kept truncated)."""

    index: int
    sample_id: str
    reason: str
    detail: str


@dataclass
class LLaVASample:
    """One good sample: its tokenized prompt and one transformed image per ``prompt.image_offsets``.

    ``files`` are the image paths as given in the data file (for messages), one per image.
    """

    index: int
    sample_id: str
    prompt: Prompt
    images: list[Tensor]
    files: list[str] = field(default_factory=list)


def _to_uint8_tensor(image) -> Tensor:
    """PIL RGB image → ``[3, H, W]`` uint8 tensor."""
    width, height = image.size
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


def _decode(path: Path, max_pixels: int | None):
    """``path`` fully decoded to RGB, or ``_BadSample``: missing, empty, oversized (refused on the header,
    before a pixel is decoded) or anything the decoder raises (truncated, not an image, corrupt)."""
    from PIL import Image

    shown = repr(str(path))
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise _BadSample("missing_image", f"no file {shown}", str(path)) from exc
    except OSError as exc:
        raise _BadSample("corrupt_image", f"cannot read file {shown}: {exc}", str(path)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise _BadSample("corrupt_image", f"cannot decode file {shown}: not a regular file", str(path))
    if info.st_size == 0:
        raise _BadSample("corrupt_image", f"cannot decode file {shown}: the file is empty (0 bytes)", str(path))
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our own limit decides below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
    except FileNotFoundError as exc:
        raise _BadSample("missing_image", f"no file {shown}", str(path)) from exc
    except Image.DecompressionBombError as exc:
        raise _BadSample("oversized_image", f"file {shown}: {exc}; refused before decoding", str(path)) from exc
    except Exception as exc:  # PIL's readers raise many types on malformed headers
        raise _BadSample("corrupt_image", f"cannot decode file {shown}: {exc}", str(path)) from exc
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise _BadSample(
                "oversized_image",
                f"file {shown} declares {width}x{height} = {width * height} pixels, more than max_pixels="
                f"{max_pixels}: refused before decoding (a decompression bomb, or too large)",
                str(path),
            )
        try:
            image.load()  # decodes every pixel: a truncated file fails here, not later
            return to_rgb(image)
        except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, struct.error...
            raise _BadSample("corrupt_image", f"cannot decode file {shown}: {exc}", str(path)) from exc


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
        max_pixels: an image whose header declares more pixels (width x height) is a bad sample
            (``oversized_image``), refused before decoding; default 64 megapixels; None: only PIL's own
            limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, refused the same way) applies.

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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if not isinstance(builder, PromptBuilder):
            raise ValueError(f"builder must be a PromptBuilder, got {type(builder).__name__}")
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
        ):
            raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
        self.records = JsonRecords(data_file)
        self.image_root = None if image_root is None else Path(image_root)
        self.builder = builder
        self.image_transform = image_transform or _to_uint8_tensor
        self.on_bad_sample = on_bad_sample
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LLaVASample | SkippedSample:
        record = self.records[index]
        sample_id = str(record.get("id", index))
        try:
            return self._sample(index, sample_id, record)
        except _BadSample as bad:
            if self.on_bad_sample == "raise":
                raise _bad_sample_error(index, sample_id, bad.reason, bad.detail, bad.file) from bad.__cause__
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
        images = [self.image_transform(self._load(f)) for f in files]
        return LLaVASample(index, sample_id, prompt, images, list(files))

    def _load(self, file: str):
        if self.image_root is None:
            raise ValueError("this dataset has image samples; pass image_root")
        return _decode(self.image_root / file, self.max_pixels)


class _BadSample(Exception):
    def __init__(self, reason: str, detail: str, file: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.file = file


class LLaVACollator:
    """Expands image placeholders, truncates, pads on the right; drops and lists skipped samples.

    Args:
        image_tokens: the number of positions one image takes (the encoder's token count: 577
            for CLIP ViT-L/14-336 with CLS, fewer after pooling).
        context_length: the maximum sequence length; None keeps every sequence whole. A longer
            sequence keeps its head if any supervised label falls in it, else its tail (upstream).
            An image cut by the window keeps its visible part; one outside it is dropped.
        pad_id: the padding id (labels are padded with -100).
        on_truncation: what happens to a sample whose cut loses image positions (``truncated_image``)
            or leaves no supervised label (``truncated_answer``): ``"keep"`` it as cut (listed under
            ``batch["truncated"]``), ``"skip"`` it (listed under ``batch["skipped"]``), or ``"raise"`` a
            ``BadSampleError`` naming it. Kept and skipped ones are logged as warnings.

    Returns a dict, for B kept samples, N images and T the longest kept length:

    Shapes:
        - ``input_ids``: ``[B, T]`` int64; image positions hold ``pad_id``.
        - ``labels``: ``[B, T]`` int64, -100 where no loss.
        - ``lengths``: ``[B]`` int64, each sample's length before padding.
        - ``images``: ``[N, ...]``, the images in order of (sample, position); None when N = 0.
        - ``image_spans``: ``[N, 4]`` int64, per image ``(sample, start, first, length)``: the
          image's features ``first : first + length`` go to ``input_ids[sample, start : start + length]``
          (``first`` > 0 or ``length`` < image_tokens only for an image cut by truncation).
        - ``sample_ids``: list of B ids; ``skipped``: list of ``SkippedSample``; ``truncated``: list of
          ``SkippedSample`` records of samples kept although the cut lost part of them.
    """

    def __init__(
        self,
        image_tokens: int,
        context_length: int | None = None,
        pad_id: int = 0,
        *,
        on_truncation: TruncationPolicy = "keep",
    ):
        if isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 1:
            raise ValueError(f"image_tokens must be a positive int, got {image_tokens!r}")
        if context_length is not None and (not isinstance(context_length, int) or context_length < 1):
            raise ValueError(f"context_length must be a positive int or None, got {context_length!r}")
        if on_truncation not in ("keep", "raise", "skip"):
            raise ValueError(f"on_truncation must be 'keep', 'raise' or 'skip', got {on_truncation!r}")
        self.image_tokens = image_tokens
        self.context_length = context_length
        self.pad_id = pad_id
        self.on_truncation = on_truncation

    def __call__(self, items: Sequence[LLaVASample | SkippedSample]) -> dict:
        samples = [s for s in items if isinstance(s, LLaVASample)]
        skipped = [s for s in items if isinstance(s, SkippedSample)]
        truncated: list[SkippedSample] = []
        rows, images, spans, kept_ids = [], [], [], []
        for sample in samples:
            ids, labels, starts = sample.prompt.expand(self.image_tokens, self.pad_id)
            begin = self._window_start(labels)
            end = begin + (self.context_length or len(ids))
            cut = self._truncation(sample, labels, starts, begin, end)
            if cut is not None:
                if self.on_truncation == "raise":
                    file = sample.files[cut[2]] if cut[2] is not None and cut[2] < len(sample.files) else None
                    raise _bad_sample_error(sample.index, sample.sample_id, cut[0], cut[1], file)
                record = SkippedSample(sample.index, sample.sample_id, cut[0], cut[1])
                action = "skipped" if self.on_truncation == "skip" else "kept as cut"
                logger.warning("sample %r (index %d): %s: %s (%s)", sample.sample_id, sample.index, *cut[:2], action)
                if self.on_truncation == "skip":
                    skipped.append(record)
                    continue
                truncated.append(record)
            row = len(rows)
            rows.append((ids[begin:end], labels[begin:end]))
            kept_ids.append(sample.sample_id)
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
            "sample_ids": kept_ids,
            "skipped": skipped,
            "truncated": truncated,
        }

    def _window_start(self, labels: list[int]) -> int:
        n = self.context_length
        if n is None or len(labels) <= n or any(label != IGNORE_INDEX for label in labels[:n]):
            return 0
        return len(labels) - n

    def _truncation(
        self, sample: LLaVASample, labels: list[int], starts: list[int], begin: int, end: int
    ) -> tuple[str, str, int | None] | None:
        """``(reason, detail, image number or None)`` when the window ``begin:end`` loses the answer or image
        positions, else None."""
        if begin == 0 and end >= len(labels):
            return None
        window = (
            f"the prompt takes {len(labels)} positions and context_length {self.context_length} keeps {begin}:{end}"
        )
        supervised = any(label != IGNORE_INDEX for label in labels)
        if supervised and not any(label != IGNORE_INDEX for label in labels[begin:end]):
            return "truncated_answer", f"{window}: no supervised label is left", None
        for k, start in enumerate(starts):
            visible = max(0, min(start + self.image_tokens, end) - max(start, begin))
            if visible < self.image_tokens:
                name = f" (file {sample.files[k]!r})" if k < len(sample.files) else ""
                return (
                    "truncated_image",
                    f"{window}: image {k}{name} keeps {visible} of its {self.image_tokens} positions",
                    k,
                )
        return None


def pack_batch(batch: dict, max_length: int | None = None) -> list[dict]:
    """Pack the samples of an ``LLaVACollator`` batch into rows of one sample after another, no padding.

    Greedy and order-preserving: samples join the current row while its length stays within
    ``max_length`` (None: every sample in one row); a sample longer than ``max_length`` gets a row of its
    own. Each row is a batch for ``VisualRWKV.forward_batch`` with ``B = 1``: the model runs every sample
    of the row exactly as if alone (``cu_seqlens``) and the losses treat each as a sample.

    Each sample's first label is set to -100: it is never a target of the sample alone (labels shift by
    one), and so no position predicts the next sample's first token even in a loss not given
    ``cu_seqlens``. The ``skipped`` and ``truncated`` records go with the first row (others: empty lists),
    so that ``SkipReport`` counts each once.

    Returns a list of dicts, for a row of N samples, M images and T their total length:

    Shapes:
        - ``input_ids``, ``labels``: ``[1, T]`` int64.
        - ``lengths``: ``[N]`` int64; ``cu_seqlens``: ``[N+1]`` int64 offsets ``0, ..., T`` (CPU).
        - ``images``: ``[M, ...]`` or None; ``image_spans``: ``[M, 4]`` ``(0, start, first, length)`` with
          ``start`` counted from the row's start.
        - ``sample_ids``: list of N ids; ``skipped``, ``truncated``: as ``LLaVACollator``.
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    lengths = [int(n) for n in batch["lengths"]]
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if not groups or (max_length is not None and used + n > max_length):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    spans, images = batch["image_spans"], batch["images"]
    rows = []
    for number, members in enumerate(groups):
        ids, labels, row_spans, picked = [], [], [], []
        offset = 0
        for i in members:
            n = lengths[i]
            ids.append(batch["input_ids"][i, :n])
            lab = batch["labels"][i, :n].clone()
            lab[:1] = IGNORE_INDEX
            labels.append(lab)
            mine = (spans[:, 0] == i).nonzero().flatten().tolist()
            for j in mine:
                _, start, first, length = spans[j].tolist()
                row_spans.append((0, start + offset, first, length))
            picked += mine
            offset += n
        member_lengths = torch.tensor([lengths[i] for i in members], dtype=torch.long)
        rows.append(
            {
                "input_ids": torch.cat(ids)[None],
                "labels": torch.cat(labels)[None],
                "lengths": member_lengths,
                "cu_seqlens": torch.cat([member_lengths.new_zeros(1), member_lengths.cumsum(0)]),
                "images": images[picked] if picked else None,
                "image_spans": torch.tensor(row_spans, dtype=torch.long).view(-1, 4),
                "sample_ids": [batch["sample_ids"][i] for i in members],
                "skipped": list(batch["skipped"]) if number == 0 else [],
                "truncated": list(batch["truncated"]) if number == 0 else [],
            }
        )
    if not rows:  # every sample skipped: one empty row keeps the records
        rows.append({**batch, "cu_seqlens": torch.zeros(1, dtype=torch.long)})
    return rows


class LLaVAPackingCollator(LLaVACollator):
    """``LLaVACollator`` whose samples are packed into rows (``pack_batch``) instead of padded.

    Args:
        image_tokens, context_length, pad_id, on_truncation: As ``LLaVACollator`` (each sample is cut to
            ``context_length`` first).
        max_length: The longest row; default ``context_length`` (None: all the samples in one row).

    Returns the list of rows ``pack_batch`` returns: run each as one micro-batch of ``B = 1``. A row's
    ``SampleLevelCE`` is the mean over its samples; weigh rows by ``len(row["sample_ids"])`` to average
    over all the samples of the batch.
    """

    def __init__(
        self,
        image_tokens: int,
        context_length: int | None = None,
        pad_id: int = 0,
        *,
        on_truncation: TruncationPolicy = "keep",
        max_length: int | None = None,
    ):
        super().__init__(image_tokens, context_length, pad_id, on_truncation=on_truncation)
        self.max_length = context_length if max_length is None else max_length
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")

    def __call__(self, items: Sequence[LLaVASample | SkippedSample]) -> list[dict]:  # type: ignore[override]
        return pack_batch(super().__call__(items), self.max_length)


def _summary(seen: int, skipped: Sequence[SkippedSample], truncated: Sequence[SkippedSample], max_ids: int) -> str:
    """``skipped K of N samples[: reason n (ids: ...); ...][; kept T truncated: reason n (ids: ...)]``."""

    def by_reason(records: Sequence[SkippedSample]) -> str:
        parts = []
        for reason, n in sorted(Counter(s.reason for s in records).items()):
            ids = list(dict.fromkeys(s.sample_id for s in records if s.reason == reason))  # once each
            more = ", ..." if len(ids) > max_ids else ""
            parts.append(f"{reason} {n} (ids: {', '.join(ids[:max_ids])}{more})")
        return "; ".join(parts)

    text = f"skipped {len(skipped)} of {seen} samples" + (f": {by_reason(skipped)}" if skipped else "")
    if truncated:
        text += f"; kept {len(truncated)} truncated: {by_reason(truncated)}"
    return text


class SkipReport:
    """Counts the samples skipped (and kept truncated) in collated batches over a whole run.

    The counts come with the batches (``batch["skipped"]``, ``batch["truncated"]``), so samples skipped in
    DataLoader worker processes are counted too; ``epoch`` logs each epoch's summary, and ``summary``
    covers every batch seen since the report was made (all epochs), as ``seen``, ``skipped`` and
    ``truncated`` do. A sample skipped in two epochs counts twice (its id is listed once).

    Example (``loader`` a DataLoader of ``LLaVACollator`` batches with one corrupt image)::

        report = SkipReport()
        for epoch in range(2):
            for batch in report.epoch(loader):  # logs the epoch's summary when the loader is exhausted
                train_step(batch)
        report.counts()  # Counter({'corrupt_image': 2}): both epochs
    """

    def __init__(self):
        self.seen = 0
        self.skipped: list[SkippedSample] = []
        self.truncated: list[SkippedSample] = []
        self.epochs = 0

    def update(self, batch: dict | list[dict]) -> None:
        """Record one collated batch (or the rows ``LLaVAPackingCollator`` makes of one)."""
        for row in batch if isinstance(batch, list) else (batch,):
            self.seen += len(row["sample_ids"]) + len(row.get("skipped", []))
            self.skipped += row.get("skipped", [])
            self.truncated += row.get("truncated", [])

    def counts(self) -> Counter:
        """Skipped samples per reason, over the whole run."""
        return Counter(s.reason for s in self.skipped)

    def summary(self, max_ids: int = 5) -> str:
        """One line for the whole run: how many were skipped, per reason, with the first ``max_ids`` sample
        ids, then the samples kept truncated, if any."""
        return _summary(self.seen, self.skipped, self.truncated, max_ids)

    def epoch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield ``batches`` (one epoch) and count them; log the epoch's summary when they run out.

        From the second epoch on the line adds the whole run's. It is a warning when anything was skipped
        or kept truncated, else an info message.
        """
        seen, skipped, truncated = self.seen, len(self.skipped), len(self.truncated)
        for batch in batches:
            self.update(batch)
            yield batch
        self.epochs += 1
        text = _summary(self.seen - seen, self.skipped[skipped:], self.truncated[truncated:], 5)
        if self.epochs > 1:
            text += f"; whole run ({self.epochs} epochs): {self.summary()}"
        level = logging.WARNING if self.skipped or self.truncated else logging.INFO
        logger.log(level, "epoch done: %s", text)
