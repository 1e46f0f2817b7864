"""Evaluation on the paper's eight benchmarks, scored as LLaVA-1.5 scores them (DESIGN.md §12).

- ``benchmarks``: each benchmark's question and ground-truth files as LLaVA distributes them (``BENCHMARKS``,
  ``get_benchmark``), the prompt suffix, and the fields its metric (``rwkvblocks.metrics``) takes.
- ``records``: ``Question`` and JSON-lines reading (imports no metric: the ``generate`` command uses it).
- ``answers``: answers files (LLaVA's JSON lines) and ``answer_questions``, the batched, resumable loop that
  fills them by generation or by choice ranking (``rank_choices``: log-likelihoods after one shared prefill).
- ``runner``: ``evaluate`` (answer, score, record the protocol), ``score_file`` (an existing answers file, ours,
  LLaVA's or upstream VisualRWKV's), ``result_table``.
- ``lmms``: the lmms-eval model plugin (``pip install 'rwkvblocks[lmms]'``; imported only by lmms-eval).

The commands: ``rwkvblocks eval`` and ``rwkvblocks score``. Names are imported on first use, so that answering
questions (``rwkvblocks generate``) does not import the metrics and torchmetrics.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AnswerCounts",
    "BENCHMARKS",
    "Benchmark",
    "Question",
    "answer_questions",
    "answered_keys",
    "continuation_ids",
    "evaluate",
    "get_benchmark",
    "prefill_conversation",
    "question_key",
    "rank_choices",
    "read_answers",
    "result_table",
    "score_answers",
    "score_file",
    "write_result",
]

_HOME = {
    "AnswerCounts": "answers",
    "answer_questions": "answers",
    "answered_keys": "answers",
    "continuation_ids": "answers",
    "prefill_conversation": "answers",
    "rank_choices": "answers",
    "read_answers": "answers",
    "BENCHMARKS": "benchmarks",
    "Benchmark": "benchmarks",
    "get_benchmark": "benchmarks",
    "Question": "records",
    "question_key": "records",
    "evaluate": "runner",
    "result_table": "runner",
    "score_answers": "runner",
    "score_file": "runner",
    "write_result": "runner",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
