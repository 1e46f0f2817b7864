"""ScienceQA accuracy, overall and on the questions with an image (ScienceQA-IMG), as LLaVA-1.5 scores it.

Letter extraction is ``llava/eval/eval_science_qa.py`` of LLaVA-1.5 (also upstream VisualRWKV's
``eval/eval_science_qa.py``), with the options ``A`` … ``E``:

1. the prediction is exactly one of the letters; else
2. it is at least 3 characters long and starts with a letter followed by ``". "``; else
3. the regular expression ``The answer is ([A-Z]).`` matches exactly once (its final ``.`` is any character,
   as upstream: ``"The answer is C,"`` counts, ``"The answer is C"`` at the very end does not).

Anything else, or a letter past the question's choices, is wrong (upstream's index -1). The prediction is not
stripped or case-folded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ._common import check_batch, check_index, ratio

__all__ = ["ScienceQAAccuracy", "parse_scienceqa_answer"]

_LETTERS = ("A", "B", "C", "D", "E")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_scienceqa_answer(prediction: str) -> str | None:
    """The option letter LLaVA's rules read from ``prediction``, or None where they find none.

    Example:
        >>> [parse_scienceqa_answer(p) for p in ["B", "B. A magnet.", "I think. The answer is C.", "b", "(B)"]]
        ['B', 'B', 'C', None, None]
    """
    if prediction in _LETTERS:
        return prediction
    if len(prediction) >= 3 and prediction[0] in _LETTERS and prediction[1:3] == ". ":
        return prediction[0]
    found = _THE_ANSWER_IS.findall(prediction)
    if len(found) == 1 and found[0] in _LETTERS:
        return found[0]
    return None


class ScienceQAAccuracy(Metric):
    """ScienceQA accuracy with LLaVA's letter extraction (``parse_scienceqa_answer``).

    ``compute()`` returns fractions (LLaVA prints 100x), NaN where nothing was counted:

    - ``"accuracy"``: over every question;
    - ``"img_accuracy"``: over the questions with an image (the ScienceQA-IMG number the paper reports).

    Example:
        >>> metric = ScienceQAAccuracy()
        >>> metric.update(["A", "B. cat", "The answer is C.", "D"], answers=[0, 1, 0, 3],
        ...               has_image=[True, True, True, False])
        >>> metric.compute()
        {'accuracy': 0.75, 'img_accuracy': 0.6666666666666666}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # [all questions, questions with an image] x [correct, total]
        self.add_state("counts", default=torch.zeros(2, 2, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[int], has_image: Sequence[bool]) -> None:
        """Add a batch.

        Args:
            predictions: the model's answers.
            answers: the index of the right choice (``problems.json``'s ``answer``: 0 for A … 4 for E).
            has_image: whether each question comes with an image.

        Raises:
            ValueError: lengths differ or an answer index is not in 0 … 4.
        """
        check_batch(predictions, answers=answers, has_image=has_image)
        counts = [[0, 0], [0, 0]]
        for i, (prediction, answer, image) in enumerate(zip(predictions, answers, has_image)):
            index = check_index(f"answers[{i}]", answer)
            if index >= len(_LETTERS):
                raise ValueError(f"answers[{i}] is {index}; expected a choice index in 0 … {len(_LETTERS) - 1}")
            right = parse_scienceqa_answer(prediction) == _LETTERS[index]
            for row in (0, 1) if bool(image) else (0,):
                counts[row][0] += right
                counts[row][1] += 1
        self.counts += torch.tensor(counts, dtype=torch.int64, device=self.counts.device)

    def compute(self) -> dict[str, float]:
        """``{"accuracy": float, "img_accuracy": float}``."""
        (correct, total), (img_correct, img_total) = self.counts.tolist()
        return {"accuracy": ratio(correct, total), "img_accuracy": ratio(img_correct, img_total)}
