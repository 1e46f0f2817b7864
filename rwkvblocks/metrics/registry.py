"""The benchmarks by name: their metric class and the instruction LLaVA-1.5 appends to each question.

Prompt suffixes, as LLaVA-1.5 evaluates (``docs/Evaluation.md``, ``scripts/v1_5/eval/*.sh``):

- short answer (VQAv2, GQA, TextVQA, POPE, MME): ``"\\nAnswer the question using a single word or phrase."``,
  already part of the questions in LLaVA's evaluation files (MME's converter strips it again to find the
  official question);
- ScienceQA and MMBench: ``"\\nAnswer with the option's letter from the given choices directly."``, added by
  ``model_vqa_science.py`` / ``model_vqa_mmbench.py`` with ``--single-pred-prompt``;
- MMBench-CN: ``"\\n请直接回答选项字母。"`` (``model_vqa_mmbench.py --lang cn``).
"""

from __future__ import annotations

from typing import Any

from torchmetrics import Metric

from .gqa import GQAAccuracy
from .mmbench import MMBenchAccuracy
from .mme import MMEScore
from .pope import POPEScores
from .scienceqa import ScienceQAAccuracy
from .vqa import TextVQAAccuracy, VQAv2Accuracy

__all__ = ["METRICS", "PROMPT_SUFFIXES", "get_metric"]

_SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
_OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."

METRICS: dict[str, type[Metric]] = {
    "gqa": GQAAccuracy,
    "mmbench": MMBenchAccuracy,
    "mmbench_cn": MMBenchAccuracy,
    "mme": MMEScore,
    "pope": POPEScores,
    "scienceqa": ScienceQAAccuracy,
    "textvqa": TextVQAAccuracy,
    "vqav2": VQAv2Accuracy,
}
PROMPT_SUFFIXES: dict[str, str] = {
    "gqa": _SHORT_ANSWER,
    "mmbench": _OPTION_LETTER,
    "mmbench_cn": "\n请直接回答选项字母。",
    "mme": _SHORT_ANSWER,
    "pope": _SHORT_ANSWER,
    "scienceqa": _OPTION_LETTER,
    "textvqa": _SHORT_ANSWER,
    "vqav2": _SHORT_ANSWER,
}


def get_metric(name: str, **kwargs: Any) -> Metric:
    """A new metric for the benchmark ``name`` (a key of ``METRICS``); ``kwargs`` go to torchmetrics' ``Metric``.

    Raises:
        ValueError: ``name`` is not a known benchmark.

    Example:
        >>> metric = get_metric("gqa")
        >>> metric.update(["Yes."], ["yes"])
        >>> metric.compute(), PROMPT_SUFFIXES["gqa"]
        ({'accuracy': 1.0}, '\\nAnswer the question using a single word or phrase.')
    """
    if name not in METRICS:
        raise ValueError(f"name is {name!r}; expected one of {', '.join(sorted(METRICS))}")
    return METRICS[name](**kwargs)
