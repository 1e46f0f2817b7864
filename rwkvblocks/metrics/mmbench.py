"""MMBench / MMBench-CN accuracy under circular evaluation, with rule-based option extraction.

Circular evaluation (MMBench, as VLMEvalKit runs it): each question is asked once per circular shift of its
options; the copies share ``index % 1_000_000`` (the original row keeps its index, shift ``k`` adds
``k · 1_000_000``). A question counts right only if every copy of it that was scored is answered right.

LLaVA-1.5 submits MMBench predictions to the OpenCompass server; offline, this module extracts the chosen letter
with VLMEvalKit's rule-based matcher, ``vlmeval/utils/matching_util.py::can_infer`` (open-compass/VLMEvalKit,
the version without the answer-length guard, ``VERBOSE`` unset), and counts a prediction it cannot read as wrong
where VLMEvalKit would ask an LLM judge:

1. ``can_infer_option``: a refusal phrase ("Sorry, I can't help with images of people yet.", "I can't process
   this file.", "I'm sorry, but without the image provided", "Cannot determine the answer") gives no answer.
   Otherwise each of ``. ( ) [ ] , : ; ! * # { }`` becomes a space and the text is split on whitespace; if exactly
   one option letter is among the words, that letter is the answer (``"B"``, ``"B."``, ``"(B)"``, ``"B)"``,
   ``"The answer is B"``); if none is but ``Z`` is, there is no answer.
2. else ``can_infer_text``: if exactly one option's text (lower-cased) occurs in the lower-cased prediction,
   that option is the answer.

Case matters for the letters (``"b"`` is not ``B``); an English article "A" counts as the letter A, as upstream.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from ._common import IdStateMetric, all_true_per_group, check_batch, check_index, ratio

__all__ = ["CIRCULAR_STRIDE", "MMBenchAccuracy", "parse_mmbench_answer"]

CIRCULAR_STRIDE = 1_000_000
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_API_FAILURE = "Failed to obtain answer via API"
_SEPARATORS = ".()[],:;!*#{}"
_NO_ANSWER = "Z"


def _letter_from_words(prediction: str, letters: Sequence[str]) -> str:
    """VLMEvalKit's ``can_infer_option``: a letter, ``"Z"`` for no answer, or ``""`` when it cannot tell."""
    if _API_FAILURE in prediction:
        return ""
    if any(refusal in prediction for refusal in _REFUSALS):
        return _NO_ANSWER
    text = prediction
    for separator in _SEPARATORS:
        text = text.replace(separator, " ")
    words = text.split()
    hits = [letter for letter in letters if letter in words]
    if len(hits) == 1:
        return hits[0]
    if not hits and _NO_ANSWER in words:
        return _NO_ANSWER
    return ""


def _letter_from_text(prediction: str, options: Mapping[str, str]) -> str:
    """VLMEvalKit's ``can_infer_text``: the one option whose text the prediction contains, or ``""``."""
    lowered = prediction.lower()
    hits = [letter for letter, text in options.items() if text.lower() in lowered]
    return hits[0] if len(hits) == 1 else ""


def _as_options(name: str, options: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(options, Mapping):
        table = dict(options)
    elif isinstance(options, Sequence) and not isinstance(options, str):
        table = dict(zip(string.ascii_uppercase, options))
    else:
        raise ValueError(f"{name} must map option letters to texts or list the texts, got {type(options).__name__}")
    if not table:
        raise ValueError(f"{name} is empty; expected at least one option")
    for letter, text in table.items():
        if not (isinstance(letter, str) and len(letter) == 1 and letter in string.ascii_uppercase):
            raise ValueError(f"{name} has the key {letter!r}; expected capital option letters")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name}[{letter!r}] is {text!r}; expected the option's text")
    return table


def parse_mmbench_answer(prediction: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter VLMEvalKit's ``can_infer`` reads from ``prediction``, or None (module docstring).

    Args:
        prediction: the model's answer.
        options: letter → option text (``{"A": "cat", "B": "dog"}``), or the texts in order (A, B, …).

    Example:
        >>> options = {"A": "a cat", "B": "a dog", "C": "a bird"}
        >>> [parse_mmbench_answer(p, options) for p in ["B", "(C) a bird", "B. a dog", "It is a dog.", "A or B"]]
        ['B', 'C', 'B', 'B', None]
    """
    table = _as_options("options", options)
    letter = _letter_from_words(prediction, list(table)) or _letter_from_text(prediction, table)
    return letter if letter in table else None


class MMBenchAccuracy(IdStateMetric):
    """MMBench (and MMBench-CN) circular accuracy with rule-based option extraction (``parse_mmbench_answer``).

    ``compute()`` returns ``{"accuracy": float}``: the fraction of questions (groups of rows with equal
    ``index % 1_000_000``) whose every copy is right; NaN before any row. States are int64 rows (group, right or
    not), concatenated across processes.

    Example:
        >>> metric = MMBenchAccuracy()
        >>> options = [["cat", "dog"], ["dog", "cat"], ["red", "blue"], ["blue", "red"]]
        >>> metric.update(["A", "B", "B", "A"], answers=["A", "B", "A", "B"], options=options,
        ...               indices=[7, 1_000_007, 8, 1_000_008])
        >>> metric.compute()
        {'accuracy': 0.5}
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_id_state("group")
        self.add_id_state("correct")

    def update(
        self,
        predictions: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Mapping[str, str] | Sequence[str]],
        indices: Sequence[int],
    ) -> None:
        """Add a batch of rows (each circular copy is a row of its own).

        Args:
            predictions: the model's answers.
            answers: the right option letter of each row, in that row's option order.
            options: each row's options, letter → text or the texts in order (A, B, …).
            indices: each row's MMBench ``index``; rows with equal ``index % 1_000_000`` are one question.

        Raises:
            ValueError: lengths differ, options are malformed, an answer is not one of the row's letters, or an
                index is not a non-negative integer.
        """
        check_batch(predictions, answers=answers, options=options, indices=indices)
        groups, correct = [], []
        for i, (prediction, answer, row_options, index) in enumerate(zip(predictions, answers, options, indices)):
            table = _as_options(f"options[{i}]", row_options)
            if answer not in table:
                raise ValueError(f"answers[{i}] is {answer!r}; expected one of the row's letters {', '.join(table)}")
            groups.append(check_index(f"indices[{i}]", index) % CIRCULAR_STRIDE)
            correct.append(int(parse_mmbench_answer(prediction, table) == answer))
        self.append_ids("group", groups)
        self.append_ids("correct", correct)

    def compute(self) -> dict[str, float]:
        """``{"accuracy": circular accuracy}``."""
        return {"accuracy": ratio(*all_true_per_group(self.ids("group"), self.ids("correct")))}
