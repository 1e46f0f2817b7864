"""MME scores, as the official ``eval_tool/calculation.py`` computes them on LLaVA-1.5's converted answers.

- Answer parsing (``parse_pred_ans``): the prediction, stripped and lower-cased, is "yes" or "no" if it is
  exactly that; else "yes" if its first 4 characters contain ``yes``, else "no" if they contain ``no``, else
  "other" (always wrong). Ground truths are "Yes"/"No".
- Per subtask: ``acc`` = fraction of questions right, ``acc+`` = fraction of images with every question right
  (MME asks two per image), score = ``100·acc + 100·acc+`` (at most 200).
- Perception = sum of the 10 perception subtask scores (at most 2000), Cognition = sum of the 4 cognition ones
  (at most 800). Subtask names are the calculation script's ``eval_type_dict``.

The official script pairs the two questions of an image by line order; here they are grouped by
``(subtask, image id)``, so the order in which questions arrive (or which rank scores them) does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._common import IdStateMetric, all_true_per_group, check_batch, check_choice, ratio, stable_id

__all__ = ["MMEScore", "MME_COGNITION", "MME_PERCEPTION", "MME_SUBTASKS", "parse_mme_answer"]

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION


def parse_mme_answer(prediction: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` by MME's rule (module docstring).

    Example:
        >>> [parse_mme_answer(p) for p in ["Yes", " no ", "No, it is not.", "Not sure", "I think yes", ""]]
        ['yes', 'no', 'no', 'no', 'other', 'other']
    """
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


class MMEScore(IdStateMetric):
    """MME subtask scores and the Perception / Cognition totals.

    ``compute()`` returns, for each subtask with questions, ``"<subtask>"`` (score out of 200),
    ``"<subtask>/acc"`` and ``"<subtask>/acc_plus"`` (fractions), then ``"perception"`` and ``"cognition"``: the
    sums of the scores of the subtasks present. States are int64 rows (subtask, hashed image id, right or not),
    concatenated across processes.

    Example:
        >>> metric = MMEScore()
        >>> metric.update(["Yes", "No", "Yes", "Yes"], answers=["Yes", "No", "No", "Yes"],
        ...               subtasks=["existence"] * 4, image_ids=["1.jpg", "1.jpg", "2.jpg", "2.jpg"])
        >>> scores = metric.compute()
        >>> scores["existence"], scores["existence/acc"], scores["existence/acc_plus"], scores["perception"]
        (125.0, 0.75, 0.5, 125.0)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_id_state("subtask")
        self.add_id_state("image")
        self.add_id_state("correct")

    def update(
        self,
        predictions: Sequence[str],
        answers: Sequence[str],
        subtasks: Sequence[str],
        image_ids: Sequence[str | int],
    ) -> None:
        """Add a batch.

        Args:
            predictions: the model's answers.
            answers: ``"Yes"`` or ``"No"`` (case and surrounding spaces ignored).
            subtasks: the subtask of each question, one of ``MME_SUBTASKS`` (e.g. ``"OCR"``, ``"code_reasoning"``).
            image_ids: the image each question is about (e.g. its file name); the questions of one image in one
                subtask form its acc+ group.

        Raises:
            ValueError: lengths differ, or an answer or subtask is not one of those.
        """
        check_batch(predictions, answers=answers, subtasks=subtasks, image_ids=image_ids)
        rows = []
        for i, (prediction, answer, subtask, image) in enumerate(zip(predictions, answers, subtasks, image_ids)):
            truth = check_choice(f"answers[{i}]", answer, ("yes", "no"), fold=True)
            task = MME_SUBTASKS.index(check_choice(f"subtasks[{i}]", subtask, MME_SUBTASKS))
            rows.append((task, stable_id(image), int(parse_mme_answer(prediction) == truth)))
        tasks, images, correct = zip(*rows) if rows else ((), (), ())
        self.append_ids("subtask", tasks)
        self.append_ids("image", images)
        self.append_ids("correct", correct)

    def compute(self) -> dict[str, float]:
        """Per-subtask scores, ``"perception"`` and ``"cognition"`` (class docstring)."""
        tasks, images, correct = self.ids("subtask"), self.ids("image"), self.ids("correct")
        scores: dict[str, float] = {}
        totals = {"perception": 0.0, "cognition": 0.0}
        for index, name in enumerate(MME_SUBTASKS):
            mask = tasks == index
            if not bool(mask.any()):
                continue
            acc = ratio(int(correct[mask].sum()), int(mask.sum()))
            acc_plus = ratio(*all_true_per_group(images[mask], correct[mask]))
            scores[name] = acc * 100 + acc_plus * 100
            scores[f"{name}/acc"] = acc
            scores[f"{name}/acc_plus"] = acc_plus
            totals["perception" if name in MME_PERCEPTION else "cognition"] += scores[name]
        return scores | totals
