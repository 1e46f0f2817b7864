"""What the benchmark metrics share: input checks, a process-independent id hash, ratios, id-state handling."""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def check_batch(predictions: Sequence[str], **fields: Any) -> int:
    """The number of samples in a batch; each of ``fields`` must hold one entry per prediction.

    Raises:
        ValueError: ``predictions`` is not a sequence of strings, or a field's length differs from it.
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] must be a string, got {type(prediction).__name__}")
    n = len(predictions)
    for name, values in fields.items():
        if isinstance(values, str) or not hasattr(values, "__len__"):
            raise ValueError(f"{name} must be a sequence with one entry per prediction, got {type(values).__name__}")
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries but predictions has {n}; expected one per prediction")
    return n


def check_choice(name: str, value: Any, allowed: Sequence[str], *, fold: bool = False) -> str:
    """``value`` (stripped and, with ``fold``, lower-cased) if it is one of ``allowed``, else ValueError naming it."""
    text = value.strip().lower() if fold and isinstance(value, str) else value
    if not isinstance(text, str) or text not in allowed:
        raise ValueError(f"{name} is {value!r}; expected one of {', '.join(allowed)}")
    return text


def check_index(name: str, value: Any) -> int:
    """``value`` as a non-negative Python int (ints, NumPy ints and 0-d integer tensors pass)."""
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} is {value!r}; expected a non-negative integer") from None
    if index < 0:
        raise ValueError(f"{name} is {index}; expected a non-negative integer")
    return index


def stable_id(value: object) -> int:
    """A signed 64-bit hash of ``str(value)`` that every process computes alike.

    Python's ``hash`` of a string changes from process to process (``PYTHONHASHSEED``), so it cannot key
    states that are gathered across ranks.
    """
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when nothing was counted."""
    return numerator / denominator if denominator else math.nan


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, 0.0 when the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    return numerator / denominator if denominator else 0.0


class IdStateMetric(Metric):
    """A metric whose states are 1-D int64 tensors gathered with ``dist_reduce_fx="cat"`` (ids, 0/1 flags).

    torchmetrics gives a rank that saw no update an empty tensor of the metric's ``dtype`` to gather; ``dtype``
    is therefore always int64 here, so that it matches the other ranks' states, and ``set_dtype`` leaves the
    integer states alone (a float cast would corrupt 64-bit ids), as ``half``/``float``/``double`` already do.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    @property
    def dtype(self) -> torch.dtype:
        """int64: every state is an integer id or flag."""
        return torch.int64

    def set_dtype(self, dst_type: str | torch.dtype) -> IdStateMetric:
        """Keeps the int64 states as they are; returns the metric."""
        return self

    def add_id_state(self, name: str) -> None:
        """A list state of int64 rows, concatenated across updates and processes."""
        self.add_state(name, default=[], dist_reduce_fx="cat")

    def append_ids(self, name: str, values: Sequence[int]) -> None:
        getattr(self, name).append(torch.tensor(list(values), dtype=torch.int64, device=self.device))

    def ids(self, name: str) -> Tensor:
        """The state ``name`` as one 1-D int64 tensor on the CPU (empty before any update)."""
        state = getattr(self, name)
        if isinstance(state, list) and not state:
            return torch.zeros(0, dtype=torch.int64)
        return dim_zero_cat(state).to("cpu", torch.int64)


def all_true_per_group(groups: Tensor, flags: Tensor) -> tuple[int, int]:
    """(groups whose every flag is 1, number of groups) for 1-D int64 ``groups`` and 0/1 ``flags``."""
    if groups.numel() == 0:
        return 0, 0
    _, inverse = torch.unique(groups, return_inverse=True)
    size = torch.bincount(inverse)
    hits = torch.bincount(inverse, weights=flags.to(torch.float64)).to(torch.int64)
    return int((hits == size).sum()), int(size.numel())
