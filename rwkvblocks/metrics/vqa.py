"""VQAv2 and TextVQA soft accuracy, with the EvalAI answer processor.

The answer processor is LLaVA-1.5's ``llava/eval/m4c_evaluator.py::EvalAIAnswerProcessor`` (copied there from
MMF/Pythia, itself a port of the official VQA evaluation ``vqaEval.py``), applied in this order:

1. lower-case; delete every ``,`` and ``?``; ``'s`` becomes ``" 's"``; strip.
2. newlines and tabs become spaces; strip.
3. punctuation: if the text has a comma between two digits, every mark of ``; / [ ] " { } ( ) = + \\ _ - > < @ `
   , ? !`` is deleted; otherwise a mark next to a space is deleted and any other becomes a space. Then every
   period not followed by a digit is deleted (``"3.5"`` keeps its period, ``"dogs."`` loses it).
4. words (split on whitespace): number words ``none``/``zero`` … ``ten`` become digits, the articles ``a``,
   ``an``, ``the`` are dropped, and the contractions table restores apostrophes (``"dont"`` → ``"don't"``).

Scoring: a question has 10 human answers; with ``k`` of them equal to the processed prediction, the score is the
mean over the 10 leave-one-out subsets of 9 answers of ``min(1, matches / 3)``, i.e. 0, 0.3, 0.6, 0.9 and 1.0
for ``k`` = 0, 1, 2, 3 and 4 or more.

- ``TextVQAAccuracy``: LLaVA's local ``TextVQAAccuracyEvaluator``; prediction and human answers both go through
  the processor.
- ``VQAv2Accuracy``: LLaVA runs the processor over the predictions (``scripts/convert_vqav2_for_submission.py``)
  and the EvalAI server scores them with the official ``vqaEval.py``: the prediction is processed again (steps 2-4,
  with the official comma rule ``\\d,\\d``), and the human answers are left as they are when all ten agree,
  else they get step 3 only (no number, article or contraction mapping).

Both keep an int64 histogram of ``k`` (11 bins) as their only state, so they sync across processes exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ._common import check_batch, ratio

__all__ = ["TextVQAAccuracy", "VQAv2Accuracy", "normalize_vqa_answer"]

NUM_HUMAN_ANSWERS = 10

# The contraction table of the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py), as m4c_evaluator.py has it;
# entries that are never reached (capitalised keys, after lower-casing) are kept so that the table is the same.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # in upstream's order
# Upstream writes this as ``(?!<=\d)(\.)(?!\d)``: the first group is a lookahead (not a lookbehind) that cannot fail
# in front of a period, so only the character after the period decides.
_PERIOD = re.compile(r"\.(?!\d)")
# Upstream passes ``re.UNICODE`` (= 32) where ``re.sub`` takes its count: at most 32 periods go.
_MAX_PERIODS = 32
_M4C_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")  # m4c_evaluator.py
_VQA_DIGIT_COMMA = re.compile(r"\d,\d")  # vqaEval.py


def _strip_punctuation(text: str, digit_comma: re.Pattern[str]) -> str:
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _map_words(text: str) -> str:
    words = (_NUMBERS.get(word, word) for word in text.lower().split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def _unwrap(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """The EvalAI answer processor (LLaVA's ``EvalAIAnswerProcessor``): the four steps of the module docstring.

    Example:
        >>> normalize_vqa_answer("Two dogs.")
        '2 dogs'
        >>> normalize_vqa_answer("1,000"), normalize_vqa_answer("3.5"), normalize_vqa_answer("The dont")
        ('1000', '3.5', "don't")
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _map_words(_strip_punctuation(_unwrap(text), _M4C_DIGIT_COMMA))


def _leave_one_out_score(matches: int, total: int = NUM_HUMAN_ANSWERS) -> float:
    """Mean over the ``total`` subsets that leave one human answer out of ``min(1, matches in subset / 3)``."""
    # leaving out a matching answer leaves matches - 1 of them; leaving out another leaves all of them
    left_out_match = matches * min(1.0, (matches - 1) / 3) if matches else 0.0
    left_out_other = (total - matches) * min(1.0, matches / 3)
    return (left_out_match + left_out_other) / total


_SCORES = tuple(_leave_one_out_score(k) for k in range(NUM_HUMAN_ANSWERS + 1))


class _SoftAccuracy(Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # questions by how many human answers equal the processed prediction
        self.add_state("matches", default=torch.zeros(NUM_HUMAN_ANSWERS + 1, dtype=torch.int64), dist_reduce_fx="sum")

    def _count_matches(self, prediction: str, answers: list[str]) -> int:
        raise NotImplementedError

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        """Add a batch.

        Args:
            predictions: the model's answers, one string per question.
            answers: the 10 human answers of each question (raw annotation strings).

        Raises:
            ValueError: lengths differ, or a question does not have exactly 10 human answers.
        """
        check_batch(predictions, answers=answers)
        counts = [0] * (NUM_HUMAN_ANSWERS + 1)
        for i, (prediction, human) in enumerate(zip(predictions, answers)):
            if isinstance(human, str) or not isinstance(human, Sequence) or not all(isinstance(a, str) for a in human):
                raise ValueError(f"answers[{i}] must be a list of {NUM_HUMAN_ANSWERS} strings, got {human!r}")
            if len(human) != NUM_HUMAN_ANSWERS:
                raise ValueError(f"answers[{i}] has {len(human)} human answers; expected {NUM_HUMAN_ANSWERS}")
            counts[self._count_matches(prediction, list(human))] += 1
        self.matches += torch.tensor(counts, dtype=torch.int64, device=self.matches.device)

    def compute(self) -> dict[str, float]:
        """``{"accuracy": mean soft score in [0, 1]}`` (NaN before any question)."""
        counts = self.matches.tolist()
        return {"accuracy": ratio(sum(n * s for n, s in zip(counts, _SCORES)), sum(counts))}


class TextVQAAccuracy(_SoftAccuracy):
    """TextVQA accuracy as LLaVA-1.5 computes it (``m4c_evaluator.TextVQAAccuracyEvaluator``).

    Prediction and the 10 human answers all go through ``normalize_vqa_answer``; the score of a question is the
    leave-one-out soft score (0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, 4+ matching humans). ``compute()`` returns
    ``{"accuracy": float}``, a fraction (LLaVA prints 100x).

    Example:
        >>> metric = TextVQAAccuracy()
        >>> metric.update(["Two dogs."], [["2 dogs"] * 2 + ["dogs"] * 8])
        >>> metric.compute()
        {'accuracy': 0.6}
    """

    def _count_matches(self, prediction: str, answers: list[str]) -> int:
        processed = normalize_vqa_answer(prediction)
        return sum(normalize_vqa_answer(a) == processed for a in answers)


class VQAv2Accuracy(_SoftAccuracy):
    """VQAv2 accuracy as LLaVA-1.5 gets it: its answer processor, then the EvalAI server's ``vqaEval.py``.

    The prediction goes through ``normalize_vqa_answer`` (LLaVA's submission converter) and then the server's own
    processing; the human answers are compared as given when all ten agree, else after the punctuation step only
    (module docstring). ``compute()`` returns ``{"accuracy": float}``, a fraction (the server reports 100x).

    Example:
        >>> metric = VQAv2Accuracy()
        >>> metric.update(["Yes.", "Two"], [["yes"] * 10, ["2"] * 3 + ["3"] * 7])
        >>> metric.compute()
        {'accuracy': 0.95}
    """

    def _count_matches(self, prediction: str, answers: list[str]) -> int:
        processed = _map_words(_strip_punctuation(_unwrap(normalize_vqa_answer(prediction)), _VQA_DIGIT_COMMA))
        if len(set(answers)) > 1:
            answers = [_strip_punctuation(a, _VQA_DIGIT_COMMA) for a in answers]
        return sum(a == processed for a in answers)
