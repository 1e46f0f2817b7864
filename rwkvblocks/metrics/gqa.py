"""GQA accuracy: LLaVA-1.5's ``scripts/convert_gqa_for_eval.py`` then the official GQA ``eval.py``.

The converter keeps ``prediction.rstrip('.').lower()``; the official script counts a question right when that
string equals the annotated answer exactly (GQA answers are lower-case words). LLaVA reports the balanced
test-dev split; which questions to feed is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ._common import check_batch, ratio

__all__ = ["GQAAccuracy", "normalize_gqa_answer"]


def normalize_gqa_answer(prediction: str) -> str:
    """Trailing periods removed, then lower-cased (nothing else: no whitespace strip, no article removal).

    Example:
        >>> normalize_gqa_answer("Dog."), normalize_gqa_answer("a dog")
        ('dog', 'a dog')
    """
    return prediction.rstrip(".").lower()


class GQAAccuracy(Metric):
    """Exact-match accuracy of ``normalize_gqa_answer(prediction)`` against the GQA answer.

    ``compute()`` returns ``{"accuracy": float}``, a fraction (LLaVA prints 100x); NaN before any question.

    Example:
        >>> metric = GQAAccuracy()
        >>> metric.update(["Dog.", "a dog"], ["dog", "dog"])
        >>> metric.compute()
        {'accuracy': 0.5}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[str]) -> None:
        """Add a batch.

        Args:
            predictions: the model's answers.
            answers: the annotated answer of each question, compared as given.

        Raises:
            ValueError: lengths differ or an answer is not a string.
        """
        n = check_batch(predictions, answers=answers)
        correct = 0
        for i, (prediction, answer) in enumerate(zip(predictions, answers)):
            if not isinstance(answer, str):
                raise ValueError(f"answers[{i}] must be a string, got {type(answer).__name__}")
            correct += normalize_gqa_answer(prediction) == answer
        self.correct += correct
        self.total += n

    def compute(self) -> dict[str, float]:
        """``{"accuracy": fraction of questions answered exactly}``."""
        return {"accuracy": ratio(int(self.correct), int(self.total))}
