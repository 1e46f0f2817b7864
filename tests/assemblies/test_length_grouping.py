"""Length-grouped batching (``data_loader(..., group_by_length=True)``): every sample once per epoch, less padding
than random batches on skewed lengths, and the same batches for the same seed."""

from __future__ import annotations

import random

import pytest
import torch

from assemblies.demo import write_dataset
from assemblies.models.config import DataConfig
from assemblies.training.data import LengthGroupedBatchSampler, data_loader, make_dataset, sample_lengths


def skewed_lengths(n: int = 2000, seed: int = 0) -> list[int]:
    """Mostly short samples, a fifth long ones (as in LLaVA instruction data)."""
    rng = random.Random(seed)
    return [rng.randint(200, 1000) if rng.random() < 0.2 else rng.randint(20, 60) for _ in range(n)]


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_every_sample_once_per_epoch():
    lengths = skewed_lengths(1003)
    sampler = LengthGroupedBatchSampler(lengths, 8, megabatch_size=10, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 126
    for _ in range(2):  # two epochs: two different orders, each a permutation
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(1 <= len(b) <= 8 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(1003))


def test_less_padding_than_random_batches():
    lengths = skewed_lengths()
    grouped = list(LengthGroupedBatchSampler(lengths, 8, generator=torch.Generator().manual_seed(0)))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert padding(grouped, lengths) < 0.5 * padding(shuffled, lengths)


def test_deterministic_for_a_seed():
    lengths = skewed_lengths(500)

    def epochs(seed: int) -> list[list[list[int]]]:
        sampler = LengthGroupedBatchSampler(lengths, 4, generator=torch.Generator().manual_seed(seed))
        return [list(sampler) for _ in range(2)]

    assert epochs(3) == epochs(3)
    assert epochs(3) != epochs(4)
    first, second = epochs(3)
    assert first != second  # a new order every epoch


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="no 'lengths'"):
        sample_lengths([1, 2, 3], image_tokens=4)


def test_llava_dataset_lengths_and_loader(tmp_path):
    """A ``LLaVADataset`` is measured from its prompts alone (no image read); the loader yields every sample."""
    _, instruct, _ = write_dataset(tmp_path, 12, seed=0)
    data = DataConfig(tokenizer="byte")
    dataset = make_dataset(data, instruct, tmp_path / "images", image_transform=None)
    lengths = sample_lengths(dataset, image_tokens=5)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert lengths[i] == len(sample.prompt.input_ids) + 5 * sample.prompt.num_images
    loader = data_loader(
        dataset, data, image_tokens=5, batch_size=4, group_by_length=True, generator=torch.Generator().manual_seed(0)
    )
    seen = sorted(i for batch in loader.batch_sampler for i in batch)
    assert seen == list(range(12)) and len(loader) == 3
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 4


def test_train_command_groups_by_length(tmp_path):
    from assemblies.cli import main

    _, instruct, _ = write_dataset(tmp_path / "data", 8, seed=0)
    args = ["train", "--preset", "visualrwkv_tiny", "--tokenizer", "byte", "--stage", "instruction"]
    args += ["--data", str(instruct), "--images", str(tmp_path / "data" / "images"), "--out", str(tmp_path / "out")]
    assert main([*args, "--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--group-by-length"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main([*args, "--steps", "2", "--group-by-length", "--pack"]) == 2
