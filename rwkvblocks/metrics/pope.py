"""POPE (object hallucination) scores per split, as LLaVA-1.5's ``llava/eval/eval_pope.py`` computes them.

Answer parsing: keep the text before the first ``.``, delete commas, split on single spaces; the answer is "no"
if one of the words is exactly ``No``, ``not`` or ``no``, and "yes" otherwise (so ``""`` and ``"Nope"`` are "yes").
"yes" is the positive class. Per split: precision, recall, F1, accuracy and the ratio of "yes" answers; the
summary is the mean F1 over the splits present (LLaVA-1.5 reports the F1 averaged over the three splits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ._common import check_batch, check_choice, ratio, safe_ratio

__all__ = ["POPEScores", "POPE_SPLITS", "parse_pope_answer"]

POPE_SPLITS = ("adversarial", "popular", "random")
_NO_WORDS = frozenset({"No", "not", "no"})


def parse_pope_answer(prediction: str) -> str:
    """``"yes"`` or ``"no"`` by LLaVA's rule (module docstring).

    Example:
        >>> [parse_pope_answer(p) for p in ["No, there is not.", "Nope", "", "Yes. It is not red."]]
        ['no', 'yes', 'yes', 'yes']
    """
    first_sentence = prediction.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


class POPEScores(Metric):
    """Precision, recall, F1, accuracy and yes-ratio per POPE split, and their mean F1.

    ``compute()`` returns, for each split with questions, ``"<split>/precision"``, ``"<split>/recall"``,
    ``"<split>/f1"``, ``"<split>/accuracy"``, ``"<split>/yes_ratio"`` (fractions), and ``"mean_f1"`` over those
    splits (NaN when there are none). Upstream divides by zero when a split has no "yes" answer or no "yes"
    label; here precision, recall and F1 are then 0.

    Example:
        >>> metric = POPEScores()
        >>> metric.update(["Yes", "No, there is not.", "Yes", "There is a dog."], labels=["yes", "no", "no", "yes"],
        ...               splits=["random"] * 4)
        >>> scores = metric.compute()
        >>> scores["random/precision"], scores["random/recall"], scores["random/yes_ratio"], scores["mean_f1"]
        (0.6666666666666666, 1.0, 0.75, 0.8)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # per split: true positives, false positives, true negatives, false negatives
        self.add_state("confusion", default=torch.zeros(len(POPE_SPLITS), 4, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], labels: Sequence[str], splits: Sequence[str]) -> None:
        """Add a batch.

        Args:
            predictions: the model's answers.
            labels: ``"yes"`` or ``"no"`` (case and surrounding spaces ignored).
            splits: ``"adversarial"``, ``"popular"`` or ``"random"`` for each question.

        Raises:
            ValueError: lengths differ, or a label or split is not one of those.
        """
        check_batch(predictions, labels=labels, splits=splits)
        confusion = [[0] * 4 for _ in POPE_SPLITS]
        for i, (prediction, label, split) in enumerate(zip(predictions, labels, splits)):
            truth = check_choice(f"labels[{i}]", label, ("yes", "no"), fold=True) == "yes"
            row = POPE_SPLITS.index(check_choice(f"splits[{i}]", split, POPE_SPLITS))
            said_yes = parse_pope_answer(prediction) == "yes"
            confusion[row][(0 if truth else 1) if said_yes else (3 if truth else 2)] += 1
        self.confusion += torch.tensor(confusion, dtype=torch.int64, device=self.confusion.device)

    def compute(self) -> dict[str, float]:
        """The per-split scores and ``"mean_f1"`` (class docstring)."""
        scores: dict[str, float] = {}
        f1s = []
        for split, (tp, fp, tn, fn) in zip(POPE_SPLITS, self.confusion.tolist()):
            total = tp + fp + tn + fn
            if not total:
                continue
            precision, recall = safe_ratio(tp, tp + fp), safe_ratio(tp, tp + fn)
            f1 = safe_ratio(2 * precision * recall, precision + recall)
            scores[f"{split}/precision"] = precision
            scores[f"{split}/recall"] = recall
            scores[f"{split}/f1"] = f1
            scores[f"{split}/accuracy"] = (tp + tn) / total
            scores[f"{split}/yes_ratio"] = (tp + fp) / total
            f1s.append(f1)
        scores["mean_f1"] = ratio(math.fsum(f1s), len(f1s))
        return scores
