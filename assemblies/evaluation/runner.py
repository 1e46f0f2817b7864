"""The evaluation runner: answer a benchmark's question file, score the answers, and say how (the protocol).

- ``evaluate``: generation (or choice ranking) over the question file into ``answers_<mode>.jsonl`` (batched,
  resumable), then scoring; writes ``result_<mode>.json`` and returns it.
- ``score_answers``: the metric over answers already written, ours or LLaVA's or upstream VisualRWKV's.
- ``result_table``: the scores as the text table the commands print.

A result records the protocol every number was made under: benchmark, prompt suffix, prompt mode (where the image
goes), decoding settings or the ranking rule, the scorer class, the model id, the library version, and the
question, annotation and answers file names.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rwkvblocks.generation import SamplingConfig

from .._io import atomic_file
from ..models import VisualRWKV
from ..models.config import default_sampling
from .answers import MODES, answer_questions, read_answers
from .benchmarks import BENCHMARKS, Benchmark, Question, get_benchmark

__all__ = ["evaluate", "library_version", "result_table", "score_answers", "score_file", "write_result"]

RANK_RULE = "argmax over choices of sum log p(' ' + choice | prompt), no end-of-turn token; one prefill per question"


def library_version() -> str:
    """``rwkvblocks.__version__`` (and the installed distribution's version where it differs)."""
    from importlib import metadata

    import rwkvblocks

    try:
        installed = metadata.version("rwkvblocks")
    except metadata.PackageNotFoundError:
        return rwkvblocks.__version__
    return rwkvblocks.__version__ if installed == rwkvblocks.__version__ else f"{rwkvblocks.__version__} ({installed})"


class _Questions:
    """Questions by id, to find the question of an answer written without its question record."""

    def __init__(self, benchmark: Benchmark, questions: Sequence[Question] | None):
        self.benchmark = benchmark
        self.by_id: dict[str, list[Question]] = {}
        for q in questions or ():
            self.by_id.setdefault(json.dumps(q.question_id), []).append(q)

    def of(self, answer: Mapping[str, Any]) -> Question:
        """The answer's question: its own record, else the question file's, else one made from its prompt."""
        if isinstance(answer.get("question"), Mapping):
            return Question.from_record(answer["question"])
        prompt = answer.get("prompt", "")
        candidates = self.by_id.get(json.dumps(answer["question_id"]), [])
        if len(candidates) > 1:  # ids repeat (TextVQA, MME): tell them apart by the question asked
            matching = [
                q for q in candidates if prompt in (q.text, self.benchmark.prompt(q)) or (q.text and q.text in prompt)
            ]
            if len(matching) != 1:
                raise ValueError(
                    f"question id {answer['question_id']} appears {len(candidates)} times in the questions file and "
                    f"{len(matching)} of them match the answer's prompt {prompt!r}"
                )
            candidates = matching
        if candidates:
            return candidates[0]
        return Question(answer["question_id"], prompt)  # what LLaVA's own scripts read: the prompt as the question


def score_answers(
    benchmark: Benchmark | str,
    answers: Sequence[Mapping[str, Any]],
    annotations: Any,
    *,
    questions: Sequence[Question] | None = None,
    where: str = "the annotations",
) -> dict[str, float]:
    """The benchmark's metric over ``answers`` (``compute()``'s dict).

    Args:
        benchmark: A ``Benchmark`` or its name.
        answers: Answer records (``read_answers``); each needs ``question_id`` and ``text``.
        annotations: ``benchmark.read_annotations(...)``.
        questions: The question file's questions, for answers written without their question (LLaVA's files).
        where: Names the ground truth in errors.

    Raises:
        ValueError: no answers; answered questions without ground truth (their ids named); malformed ground truth
            (the question named).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if not answers:
        raise ValueError("there are no answers to score")
    lookup = _Questions(bench, questions)
    predictions, targets, missing = [], [], []
    for answer in answers:
        question = lookup.of(answer)
        try:
            targets.append(bench.target(annotations, question, answer))
        except KeyError:
            missing.append(answer["question_id"])
            continue
        predictions.append(answer["text"])
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} answered question ids have no ground truth in {where}: {shown}")
    metric = bench.metric()
    try:
        metric.update(predictions, **{key: [t[key] for t in targets] for key in targets[0]})
    except ValueError as err:
        found = re.search(r"\[(\d+)\]", str(err))
        if found is None:
            raise
        raise ValueError(f"question {answers[int(found.group(1))]['question_id']!r}: {err}") from None
    return metric.compute()


def _file_name(path: str | os.PathLike | None) -> str | None:
    return None if path is None else Path(path).name


def _protocol(bench: Benchmark, mode: str, decoding: dict | str | None) -> dict[str, Any]:
    cls = bench.metric_class
    return {
        "benchmark": bench.name,
        "mode": mode,
        "prompt_suffix": bench.suffix,
        "decoding": decoding,
        "scorer": f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__qualname__}",
        "scorer_rules": (cls.__doc__ or "").strip().split("\n")[0],
        "questions_format": bench.questions_format,
        "annotations_format": bench.annotations_format,
    }


def _result(bench, scores, protocol, model, files, counts) -> dict[str, Any]:
    if scores is not None:  # NaN (nothing counted) is not JSON
        scores = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in scores.items()}
    headline = None if scores is None else {"name": bench.headline, "value": scores.get(bench.headline)}
    return {
        "benchmark": bench.name,
        "headline": headline,
        "scores": scores,
        "counts": counts,
        "protocol": protocol,
        "model": model,
        "library": {"name": "rwkvblocks", "version": library_version()},
        "files": files,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a result as JSON (atomically: a complete file or none); returns the path."""
    path = Path(path)
    with atomic_file(path) as f:
        f.write((json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def result_table(result: Mapping[str, Any]) -> str:
    """The scores of a result as an aligned text table, the headline (the paper's number) first.

    Example:
        >>> print(result_table({"benchmark": "gqa", "headline": {"name": "accuracy", "value": 0.5},
        ...                     "scores": {"accuracy": 0.5}, "protocol": {"mode": "generate"}}))
        gqa (generate)
          accuracy  0.5000  <- headline
    """
    lines = [f"{result['benchmark']} ({result.get('protocol', {}).get('mode', '?')})"]
    scores = result.get("scores")
    if not scores:
        lines.append("  not scored (no ground truth given)")
        return "\n".join(lines)
    head = (result.get("headline") or {}).get("name")
    names = sorted(scores, key=lambda k: (k != head, k))
    width = max(len(k) for k in names)
    for name in names:
        mark = "  <- headline" if name == head else ""
        value = "n/a" if scores[name] is None else f"{scores[name]:.4f}"
        lines.append(f"  {name:<{width}}  {value}{mark}")
    return "\n".join(lines)


def score_file(
    benchmark: Benchmark | str,
    answers: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    questions: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score an existing answers file (ours, LLaVA's or upstream VisualRWKV's): a result dict (``result_table``).

    Raises:
        ValueError: a missing or malformed file (named), or answers without ground truth.
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    records = read_answers(answers)
    questions_list = bench.read_questions(questions) if questions is not None else None
    truth = bench.read_annotations(annotations, questions)
    where = str(annotations if annotations is not None else questions)
    scores = score_answers(bench, records, truth, questions=questions_list, where=where)
    modes = {r.get("metadata", {}).get("mode", "generate") for r in records if isinstance(r.get("metadata"), dict)}
    mode = modes.pop() if len(modes) == 1 else "mixed" if modes else "generate"
    model_ids = sorted({str(r["model_id"]) for r in records if "model_id" in r})
    files = {"answers": _file_name(answers), "questions": _file_name(questions), "annotations": _file_name(annotations)}
    counts = {"answers": len(records), "scored": len(records)}
    if questions_list is not None:
        counts["questions"] = len(questions_list)
    return _result(bench, scores, _protocol(bench, mode, None), {"id": ", ".join(model_ids) or None}, files, counts)


def evaluate(
    model: VisualRWKV,
    benchmark: Benchmark | str,
    questions: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    mode: str = "generate",
    out: str | os.PathLike = "eval",
    batch_size: int = 8,
    limit: int | None = None,
    config: SamplingConfig | None = None,
    model_id: str = "model",
    compile: bool | str = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer a benchmark's questions with ``model``, score the answers, and write both into ``out``.

    ``out/answers_<mode>.jsonl`` gets the answers (resumable: a second call answers only what is missing);
    ``out/result_<mode>.json`` the result (``result_table`` prints it). Without ground truth (``annotations``
    ``None`` where the benchmark needs it, e.g. VQAv2 test-dev) the answers are written and not scored.

    Args:
        model: A ``VisualRWKV``.
        benchmark: A ``Benchmark`` or its name (``BENCHMARKS``).
        questions: The benchmark's question file (module docstring of ``benchmarks``).
        images: The folder the questions' image paths are relative to.
        annotations: The ground truth (file or folder, per benchmark).
        mode: ``"generate"`` or ``"rank"`` (multiple-choice benchmarks: the most likely choice).
        out: Output folder.
        batch_size: Questions per generation batch.
        limit: Only the first ``limit`` questions.
        config: Decoding settings (default: greedy to the end of the turn, at most 128 new tokens).
        model_id: Recorded in every answer and in the result.
        compile: Compile the decode step.
        progress: Show progress bars.

    Raises:
        ValueError: an unknown benchmark or mode, rank mode on an open-answer benchmark, a missing or malformed
            file (named), answered questions without ground truth.
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "rank" and not bench.multiple_choice:
        ranked = sorted(n for n, b in BENCHMARKS.items() if b.multiple_choice)
        raise ValueError(f"--mode rank needs a multiple-choice benchmark ({', '.join(ranked)}); {bench.name} is not")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    all_questions = bench.read_questions(questions)
    if not all_questions:
        raise ValueError(f"questions file {questions} holds no questions")
    chosen = all_questions[:limit] if limit is not None else all_questions
    scoring = annotations is not None or not bench.needs_annotations
    truth = bench.read_annotations(annotations, questions) if scoring else None  # read first: fail before generating
    config = config if config is not None else default_sampling(model.data_config, max_new_tokens=128)

    out = Path(out)
    answers_path = out / f"answers_{mode}.jsonl"
    t0 = time.perf_counter()
    counts = answer_questions(
        model,
        chosen,
        answers_path,
        prompt=bench.prompt,
        mode=mode,
        config=config,
        images=images,
        batch_size=batch_size,
        model_id=model_id,
        keep_questions=True,
        compile=compile,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    wanted = {json.dumps(q.question_id) for q in chosen}
    records = [r for r in read_answers(answers_path) if json.dumps(r["question_id"]) in wanted]
    where = str(annotations if annotations is not None else questions)
    scores = score_answers(bench, records, truth, questions=chosen, where=where) if scoring else None

    decoding: dict | str = RANK_RULE if mode == "rank" else dataclasses.asdict(config)
    data = model.data_config
    model_info = {
        "id": model_id,
        "prompt": data.prompt,
        "tokenizer": data.tokenizer,
        "context_length": data.context_length,
        "image_tokens": model.image_tokens,
    }
    files = {
        "questions": _file_name(questions),
        "annotations": _file_name(annotations),
        "images": None if images is None else str(images),
        "answers": answers_path.name,
    }
    tally = {
        "questions": len(all_questions),
        "asked": len(chosen),
        "answered_before": counts.skipped,
        "answered_now": counts.written,
        "scored": len(records) if scoring else 0,
        "seconds": round(seconds, 3),
    }
    result = _result(bench, scores, _protocol(bench, mode, decoding), model_info, files, tally)
    write_result(result, out / f"result_{mode}.json")
    return result
