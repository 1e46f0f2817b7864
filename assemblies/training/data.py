"""The data pipeline of a ``DataConfig``: tokenizer, prompt builder, LLaVA dataset and its loader.

Every training and inference path builds its prompts here, so the prompt mode, context length and
tokenizer come from one ``DataConfig`` (the model's, or the stage's from ``TrainRecipe.data_for``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from rwkvblocks.prompting import LLaVACollator, LLaVADataset, LLaVAPackingCollator, SkipReport, Tokenizer

from ..models.config import DataConfig, make_prompt_builder, make_tokenizer

__all__ = [
    "AllSamplesBad",
    "LengthGroupedBatchSampler",
    "data_loader",
    "make_dataset",
    "make_prompt_builder",
    "make_tokenizer",
    "sample_lengths",
    "usable_epochs",
]


def make_dataset(
    data: DataConfig,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike | None,
    *,
    image_transform: Callable[..., Any] | None,
    tokenizer: Tokenizer | None = None,
    vocab_size: int | None = None,
    **kwargs: Any,
) -> LLaVADataset:
    """A ``LLaVADataset`` whose prompts follow ``data`` (prompt mode and tokenizer).

    Args:
        data: The data configuration (the stage's, from ``TrainRecipe.data_for``).
        json_file, image_root: LLaVA-1.5 JSON and its image folder.
        image_transform: The encoder's per-image transform (``model.encoder.transform.per_image``).
        tokenizer: Overrides ``data.tokenizer``.
        vocab_size: The model's vocabulary; a tokenizer with more ids is refused.
        **kwargs: More ``LLaVADataset`` arguments (``on_bad_sample``, ``max_pixels``...).
    """
    builder = make_prompt_builder(data, tokenizer)
    if vocab_size is not None and builder.tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"the {data.tokenizer} tokenizer has {builder.tokenizer.vocab_size} ids, the model {vocab_size}"
        )
    return LLaVADataset(json_file, image_root, builder, image_transform=image_transform, **kwargs)


def sample_lengths(dataset: Any, image_tokens: int, context_length: int | None = None) -> list[int]:
    """Every sample's sequence length (text tokens plus ``image_tokens`` per image, cut to ``context_length``).

    A dataset with a ``lengths`` attribute (a sequence, or a method taking ``image_tokens``) is asked for it; a
    ``LLaVADataset`` is measured by building each record's prompt (tokenizing only, no image is read); a record
    whose conversation cannot be built counts as length 0 (the dataset reports it when it is loaded).
    """
    lengths = getattr(dataset, "lengths", None)
    if callable(lengths):
        lengths = lengths(image_tokens)
    if lengths is None:
        if not isinstance(dataset, LLaVADataset):
            raise ValueError(
                f"group_by_length: {type(dataset).__name__} has no 'lengths' (a length per sample) to group by"
            )
        lengths = []
        for record in dataset.records:
            try:
                prompt = dataset.builder.build(record.get("conversations"))
            except ValueError:  # ConversationError: the sample is bad; the loader will skip or raise on it
                lengths.append(0)
                continue
            lengths.append(len(prompt.input_ids) + prompt.num_images * image_tokens)
    lengths = [int(n) for n in lengths]
    if len(lengths) != len(dataset):
        raise ValueError(f"group_by_length: {len(lengths)} lengths for {len(dataset)} samples")
    return lengths if context_length is None else [min(n, context_length) for n in lengths]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of samples of similar length, so that little padding is computed.

    Every epoch: a random permutation of the samples is cut into megabatches of ``megabatch_size * batch_size``,
    each megabatch is sorted by length (longest first) and cut into batches, and the order of all the batches is
    shuffled. Every sample is in one batch per epoch (the last batch may be short); the order depends only on
    ``generator`` (seed it for a run that can be replayed: a fresh generator of the same seed gives the same epochs;
    ``None``: torch's global generator).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        megabatch_size: int = 50,
        generator: torch.Generator | None = None,
    ):
        if batch_size < 1 or megabatch_size < 1:
            raise ValueError(f"batch_size and megabatch_size must be >= 1, got {batch_size}, {megabatch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.megabatch_size = megabatch_size
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n, size = len(self.lengths), self.batch_size
        order = torch.randperm(n, generator=self.generator).tolist()
        mega = size * self.megabatch_size
        batches = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])  # stable: ties stay random
            batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def data_loader(
    dataset: Any,
    data: DataConfig,
    *,
    image_tokens: int,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    on_truncation: str = "keep",
    pack: bool = False,
    group_by_length: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A ``DataLoader`` of ``LLaVACollator`` batches cut to ``data.context_length``.

    Args:
        pack: Lay each batch's samples end to end in rows of at most ``data.context_length`` positions
            (``LLaVAPackingCollator``: no padding computed, ``cu_seqlens`` per row); each loader item is then a
            list of rows, which ``train`` runs as micro-batches. Not for hybrid models or ``pad_multiple > 1``.
        on_truncation: What the collator does with a sample the cut robs of image positions or of every
            supervised label (``LLaVACollator``): ``"keep"`` (the default, as upstream: train on what is left,
            count it and warn), ``"skip"`` or ``"raise"``. Long conversations are normal in LLaVA data, so the
            dataset's ``on_bad_sample`` policy for unreadable samples does not apply here.
        group_by_length: Batches of samples of similar length (``LengthGroupedBatchSampler`` over
            ``sample_lengths``: megabatches of 50 batches sorted by length, batches shuffled), always shuffled.
        generator: The shuffling's random generator (seed it for an order a resumed run replays).
    """
    collate = (LLaVAPackingCollator if pack else LLaVACollator)(
        image_tokens, data.context_length, on_truncation=on_truncation
    )
    if group_by_length:
        lengths = sample_lengths(dataset, image_tokens, data.context_length)
        sampler = LengthGroupedBatchSampler(lengths, batch_size, generator=generator)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
    )


class AllSamplesBad(ValueError):
    """A whole pass over the data gave no usable sample (every one skipped as bad): training cannot step."""


class _UsableEpochs:
    def __init__(self, loader: Iterable[Mapping], report: SkipReport | None, source: str):
        self.loader, self.report, self.source = loader, report, source

    def __iter__(self) -> Iterator[Mapping]:
        report = self.report if self.report is not None else SkipReport()
        kept = 0
        for batch in report.epoch(self.loader):
            kept += len(batch["sample_ids"])
            yield batch
        if kept == 0:
            raise AllSamplesBad(f"{self.source}: no usable sample in a whole pass over the data; {report.summary()}")


def usable_epochs(loader: Iterable[Mapping], report: SkipReport | None = None, *, source: str = "the data") -> Any:
    """``loader`` as an iterable of epochs that stops a run whose data has no usable sample.

    Every pass over it is an epoch of ``report`` (when given); a pass in which every sample was skipped as bad
    (``on_bad_sample="skip"``, or the collator's ``on_truncation="skip"``) raises ``AllSamplesBad`` naming
    ``source`` and the skip counts per reason, at the end of that first pass, instead of the training loop
    cycling through empty micro-batches for ever.
    """
    return _UsableEpochs(loader, report, source)
