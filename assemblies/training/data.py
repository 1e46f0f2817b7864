"""The data pipeline of a ``DataConfig``: tokenizer, prompt builder, LLaVA dataset and its loader.

Every training and inference path builds its prompts here, so the prompt mode, context length and
tokenizer come from one ``DataConfig`` (the model's, or the stage's from ``TrainRecipe.data_for``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader

from rwkvblocks.prompting import LLaVACollator, LLaVADataset, LLaVAPackingCollator, SkipReport, Tokenizer

from ..models.config import DataConfig, make_prompt_builder, make_tokenizer

__all__ = ["AllSamplesBad", "data_loader", "make_dataset", "make_prompt_builder", "make_tokenizer", "usable_epochs"]


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
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=(LLaVAPackingCollator if pack else LLaVACollator)(
            image_tokens, data.context_length, on_truncation=on_truncation
        ),
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
