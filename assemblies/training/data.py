"""The data pipeline of a ``DataConfig``: tokenizer, prompt builder, LLaVA dataset and its loader.

Every training and inference path builds its prompts here, so the prompt mode, context length and
tokenizer come from one ``DataConfig`` (the model's, or the stage's from ``TrainRecipe.data_for``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from rwkvblocks.prompting import LLaVACollator, LLaVADataset, Tokenizer

from ..models.config import DataConfig, make_prompt_builder, make_tokenizer

__all__ = ["data_loader", "make_dataset", "make_prompt_builder", "make_tokenizer"]


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
) -> DataLoader:
    """A ``DataLoader`` of ``LLaVACollator`` batches cut to ``data.context_length``.

    Args:
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
        collate_fn=LLaVACollator(image_tokens, data.context_length, on_truncation=on_truncation),
    )
