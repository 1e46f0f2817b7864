"""Answers files and the loop that fills them: batched, resumable, one whole JSON line per answer.

An answers file is LLaVA's (``llava/eval/model_vqa_loader.py``): one JSON object per line with ``question_id``,
``prompt`` (the question as asked), ``text`` (the answer), ``answer_id``, ``model_id`` and ``metadata``. The
evaluation runner adds ``question``: the question record itself (``Question.to_record``), so that scoring never
has to parse anything back out of a prompt.

``answer_questions`` appends to the file with ``O_APPEND`` and writes each answer as one ``write`` of a whole line,
synced after every batch; run again, it skips the questions already answered (by ``question_key``: id and prompt)
and drops a last line cut short by a kill. ``--mode rank`` answers a multiple-choice question with the choice of
highest log-likelihood (``rank_choices``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from rwkvblocks.generation import PrefixCache, SamplingConfig, score_continuations, step_function
from rwkvblocks.prompting import Tokenizer
from rwkvblocks.state import RWKVState

from ..models import VisualRWKV, generate
from ..models.config import default_sampling, make_prompt_builder, make_tokenizer
from ..models.generation import _pixels, _prefill
from .records import Question, question_key, read_jsonl

__all__ = [
    "AnswerCounts",
    "answer_questions",
    "answered_keys",
    "continuation_ids",
    "prefill_conversation",
    "rank_choices",
    "read_answers",
]

MODES = ("generate", "rank")


class AnswerCounts(NamedTuple):
    """What one ``answer_questions`` call did: questions given, skipped as already answered, answers written."""

    questions: int
    skipped: int
    written: int


def answered_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """``question_key`` of every answer already in ``path``; a last line cut by a kill is removed from the file.

    Raises:
        ValueError: a complete line that is not a JSON answer (named as ``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    keys = set()
    for n, record in read_jsonl(path, "answers file"):
        if "question_id" not in record:
            raise ValueError(f"{path}:{n}: missing question_id")
        keys.add(question_key(record["question_id"], record.get("prompt", "")))
    return keys


def read_answers(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every answer of an answers file (ours, LLaVA's or upstream VisualRWKV's), in file order.

    Raises:
        ValueError: the file does not exist, a line is not JSON, or lacks ``question_id`` or ``text`` (``file:line``).
    """
    answers = []
    for n, record in read_jsonl(path, "answers file"):
        missing = [k for k in ("question_id", "text") if k not in record]
        if missing:
            raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
        if not isinstance(record["text"], str):
            raise ValueError(f"{path}:{n}: text must be a string, got {type(record['text']).__name__}")
        answers.append(record)
    return answers


def _conversation(question: Question, prompt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": ("<image>\n" if question.has_image else "") + prompt}]


def _image(question: Question, root: Path | None) -> Any:
    """The question's image as ``generate`` takes it (a path or a PIL image), or None."""
    if question.image_data is not None:
        from PIL import Image

        return Image.open(io.BytesIO(question.image_data)).convert("RGB")
    if question.image is None:
        return None
    return (root or Path(".")) / question.image


def continuation_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of an assistant answer ``text`` after the prompt's closing ``"Assistant:"``.

    The answer starts with a space (``"Assistant: " + answer`` in training, DESIGN.md §8); a ``text`` that already
    starts with one keeps it. No end-of-turn token is added: the choice is scored, not where the answer stops.

    Example:
        >>> from rwkvblocks.prompting import ByteTokenizer
        >>> continuation_ids(ByteTokenizer(), "B") == ByteTokenizer().encode(" B")
        True
    """
    return tokenizer.encode(text if text.startswith(" ") else " " + text)


def prefill_conversation(
    model: VisualRWKV,
    conversation: Sequence[dict],
    images: Sequence[Any] = (),
    *,
    tokenizer: Tokenizer | None = None,
    cache: PrefixCache | None = None,
) -> tuple[Tensor, RWKVState, int]:
    """``(last logits [1, V], state, prompt length)`` after the inference prompt of ``conversation``.

    The state after the last image is reused from (and kept in) ``cache``, under the same key ``generate`` uses,
    so ranking and generation about one image share it.

    Raises:
        ValueError: the placeholders and images do not match, or the prompt is longer than the context length.
    """
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(model.data_config)
    prompt = make_prompt_builder(model.data_config, tokenizer).build(list(conversation), mode="inference")
    if prompt.num_images != len(images):
        raise ValueError(f"the conversation has {prompt.num_images} <image> placeholders and {len(images)} images")
    ids, _, starts = prompt.expand(model.image_tokens)
    limit = model.data_config.context_length
    if len(ids) > limit:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the context length {limit}")
    pixels = _pixels(model, list(images)) if images else None
    logits, state = _prefill(model, ids, pixels, starts, cache)
    return logits.reshape(1, -1), state, len(ids)


def rank_choices(
    model: VisualRWKV,
    conversation: Sequence[dict],
    images: Sequence[Any],
    choices: Sequence[str],
    *,
    tokenizer: Tokenizer | None = None,
    cache: PrefixCache | None = None,
    step: Callable | None = None,
) -> list[float]:
    """The log-likelihood of each choice as the assistant's answer, after one shared prefill of the prompt.

    Each choice is scored as ``continuation_ids(choice)`` (``rwkvblocks.generation.score_continuations``, all
    choices in one batch from the prompt's state).

    Example:
        >>> import torch
        >>> from assemblies import create_assembly
        >>> model = create_assembly("visualrwkv_tiny").eval()
        >>> conv = [{"from": "human", "value": "<image>\\nIs it red?"}]
        >>> scores = rank_choices(model, conv, [torch.rand(3, 56, 56)], ["Yes", "No"])
        >>> len(scores), all(s < 0 for s in scores)
        (2, True)
    """
    if not choices:
        raise ValueError("choices is empty: give at least one choice to rank")
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(model.data_config)
    logits, state, _ = prefill_conversation(model, conversation, images, tokenizer=tokenizer, cache=cache)
    step = step if step is not None else step_function(model.lm)
    return score_continuations(step, logits, state, [continuation_ids(tokenizer, c) for c in choices])


def _record(question: Question, prompt: str, text: str, model_id: str, metadata: dict, keep: bool) -> dict:
    record = {
        "question_id": question.question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": f"{model_id}-{question.question_id}",
        "model_id": model_id,
        "metadata": metadata,
    }
    if keep:
        record["question"] = question.to_record()
    return record


def _ranked(model, question: Question, conversation, picture, tokenizer, cache, step) -> tuple[str, dict]:
    """The best choice of a question and its metadata (every choice's log-likelihood)."""
    pictures = [] if picture is None else [picture]
    scores = rank_choices(model, conversation, pictures, question.choices, tokenizer=tokenizer, cache=cache, step=step)
    best = max(range(len(scores)), key=scores.__getitem__)
    return question.choices[best], {"mode": "rank", "logprobs": dict(zip(question.choices, scores))}


def answer_questions(
    model: VisualRWKV,
    questions: Sequence[Question],
    out: str | os.PathLike,
    *,
    prompt: Callable[[Question], str] | None = None,
    mode: str = "generate",
    config: SamplingConfig | None = None,
    images: str | os.PathLike | None = None,
    batch_size: int = 8,
    model_id: str = "model",
    keep_questions: bool = False,
    compile: bool | str = False,
    progress: bool = True,
) -> AnswerCounts:
    """Answer every question not yet in the answers file ``out``, appending one whole line per answer.

    Args:
        model: A ``VisualRWKV``.
        questions: The questions (``Benchmark.read_questions``).
        out: The answers file (JSON lines); answers already there are kept and their questions skipped.
        prompt: The text the model is asked for a question (default: its text as it is; the runner passes
            ``Benchmark.prompt``, which adds the benchmark's suffix).
        mode: ``"generate"`` (decode an answer) or ``"rank"`` (the most likely of ``Question.choices``).
        config: Decoding settings (default: greedy to the end of the turn, ``default_sampling``).
        images: The folder the questions' image paths are relative to (default: the working directory).
        batch_size: Questions generated together (and synced to disk together).
        model_id: Written as ``model_id`` (and in ``answer_id``).
        keep_questions: Write the question record (``Question.to_record``) into each answer as ``question``.
        compile: Compile the decode step (``rwkvblocks.generation.step_function``).
        progress: Show a progress bar (tqdm).

    Raises:
        ValueError: an unknown mode, a batch size below 1, a question's image that does not exist, or a question
            without choices in rank mode.
    """
    from tqdm import tqdm

    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; expected one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompt = prompt or (lambda q: q.text)
    root = Path(images) if images is not None else None
    done = answered_keys(out)
    todo = [q for q in questions if question_key(q.question_id, prompt(q)) not in done]
    for q in todo:
        if mode == "rank" and not q.choices:
            raise ValueError(f"question {q.question_id} has no choices to rank (--mode rank is for multiple choice)")
        if q.image is not None and q.image_data is None and not ((root or Path(".")) / q.image).is_file():
            raise ValueError(f"image {(root or Path('.')) / q.image} of question {q.question_id} does not exist")
    config = config if config is not None else default_sampling(model.data_config)
    tokenizer = make_tokenizer(model.data_config)
    cache = PrefixCache(max_bytes=1 << 28)
    step = step_function(model.lm, compile=compile) if mode == "rank" else None

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with tqdm(total=len(todo), unit="q", desc=mode, disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                prompts = [prompt(q) for q in batch]
                convs = [_conversation(q, p) for q, p in zip(batch, prompts)]
                pictures = [_image(q, root) for q in batch]
                if mode == "generate":
                    results = generate(
                        model, convs, pictures, config, tokenizer=tokenizer, cache=cache, compile=compile
                    )
                    answers = [(r.text, {"finish_reason": r.finish_reason, "tokens": len(r.tokens)}) for r in results]
                else:
                    rows = zip(batch, convs, pictures)
                    answers = [_ranked(model, q, c, p, tokenizer, cache, step) for q, c, p in rows]
                for q, p, (text, metadata) in zip(batch, prompts, answers):
                    line = json.dumps(_record(q, p, text, model_id, metadata, keep_questions), ensure_ascii=False)
                    os.write(fd, (line + "\n").encode())  # one whole line per write
                os.fsync(fd)
                bar.update(len(batch))
    finally:
        os.close(fd)
    return AnswerCounts(len(questions), len(questions) - len(todo), len(todo))
