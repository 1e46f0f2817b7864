"""Benchmark scorers of the VisualRWKV paper, as LLaVA-1.5 scores them (DESIGN.md §12), as torchmetrics metrics.

A leaf: imports nothing else of ours. Every metric takes the model's answers as strings plus the benchmark's
ground-truth fields in ``update``, turns them into counts or int64 ids in plain Python, and keeps only tensors as
state, so that ``compute()`` (a dict of floats) is the same whether the data came in one batch, many, or over
several processes.

- ``VQAv2Accuracy``, ``TextVQAAccuracy`` and ``normalize_vqa_answer`` (the EvalAI answer processor).
- ``GQAAccuracy`` (``normalize_gqa_answer``), ``ScienceQAAccuracy`` (``parse_scienceqa_answer``).
- ``POPEScores`` (``parse_pope_answer``, ``POPE_SPLITS``), ``MMEScore`` (``parse_mme_answer``, ``MME_SUBTASKS``).
- ``MMBenchAccuracy`` for MMBench and MMBench-CN, circular (``parse_mmbench_answer``, ``CIRCULAR_STRIDE``).
- ``METRICS``, ``get_metric`` and ``PROMPT_SUFFIXES``: the benchmarks by name.

Example:
    >>> metric = get_metric("pope")
    >>> metric.update(["No, there is not.", "Yes"], labels=["no", "yes"], splits=["popular", "popular"])
    >>> metric.compute()["mean_f1"]
    1.0
"""

from .gqa import GQAAccuracy, normalize_gqa_answer
from .mmbench import CIRCULAR_STRIDE, MMBenchAccuracy, parse_mmbench_answer
from .mme import MME_COGNITION, MME_PERCEPTION, MME_SUBTASKS, MMEScore, parse_mme_answer
from .pope import POPE_SPLITS, POPEScores, parse_pope_answer
from .registry import METRICS, PROMPT_SUFFIXES, get_metric
from .scienceqa import ScienceQAAccuracy, parse_scienceqa_answer
from .vqa import TextVQAAccuracy, VQAv2Accuracy, normalize_vqa_answer

__all__ = [
    "CIRCULAR_STRIDE",
    "GQAAccuracy",
    "METRICS",
    "MMBenchAccuracy",
    "MMEScore",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "MME_SUBTASKS",
    "POPEScores",
    "POPE_SPLITS",
    "PROMPT_SUFFIXES",
    "ScienceQAAccuracy",
    "TextVQAAccuracy",
    "VQAv2Accuracy",
    "get_metric",
    "normalize_gqa_answer",
    "normalize_vqa_answer",
    "parse_mmbench_answer",
    "parse_mme_answer",
    "parse_pope_answer",
    "parse_scienceqa_answer",
]
