"""What a question is and how JSON-lines files are read: the light part of evaluation (no metrics imported), shared
by the benchmarks, the answers files and the ``rwkvblocks generate`` command."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Question", "check_file", "question_key", "read_jsonl"]


def question_key(question_id: Any, prompt: str) -> tuple[str, str]:
    """What identifies an answered question in an answers file: its id (as JSON) and the prompt it was asked with."""
    return json.dumps(question_id, ensure_ascii=False), prompt


@dataclass(frozen=True)
class Question:
    """One question of a benchmark.

    Attributes:
        question_id: As the file gives it, an int or a string; it may repeat (TextVQA's are image ids, MME's
            image paths).
        text: The question as the file gives it, without the ``<image>`` placeholder and before the suffix.
        image: The image file, relative to the image folder (``None``: no image, or ``image_data``).
        image_data: The encoded image itself (MMBench's base64 column, decoded), else ``None``.
        choices: What ``--mode rank`` chooses among (option letters, ``"Yes"``/``"No"``); empty for open answers.
        fields: The other fields the scorer needs (e.g. POPE's ``category``, MMBench's ``index`` and ``options``).
    """

    question_id: Any
    text: str
    image: str | None = None
    image_data: bytes | None = field(default=None, repr=False)
    choices: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_data is not None

    def to_record(self) -> dict[str, Any]:
        """The question as the answers file keeps it (JSON; the image by name only, never its bytes)."""
        record: dict[str, Any] = {"question_id": self.question_id, "text": self.text}
        if self.image is not None:
            record["image"] = self.image
        if self.choices:
            record["choices"] = list(self.choices)
        if self.fields:
            record["fields"] = dict(self.fields)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Question:
        """The inverse of ``to_record`` (the image bytes, if any, are not kept there)."""
        return cls(
            question_id=record["question_id"],
            text=record["text"],
            image=record.get("image"),
            choices=tuple(record.get("choices", ())),
            fields=dict(record.get("fields", {})),
        )


def check_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path``; ValueError naming it (as ``what``) when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    return path


def read_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line of a JSON-lines file.

    Raises:
        ValueError: the file does not exist, or a line is not a JSON object (named as ``file:line``).
    """
    path = check_file(path, what)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON line: {err}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield n, record
