"""Prompt builders: a LLaVA conversation to token ids, labels and image span offsets.

Upstream VisualRWKV v6.0's chat format (DESIGN.md §8), exactly:

- Turns: human → ``"User: " + text + "\\n\\n"``, assistant → ``"Assistant: " + text + "\\n\\n"``; at
  inference the prompt ends with ``"Assistant:"``. No BOS, no system prompt.
- Every message is stripped and its blank-line runs collapse to one ``"\\n"``. A message holding
  ``<image>`` loses the placeholder(s) first; the builder then puts the image back: before the message
  (``ImageFirstPromptBuilder``), after it (``ImageLastPromptBuilder``), or between all of the conversation's human
  turns and the message (``SandwichPromptBuilder``).
- Each turn is tokenized on its own, split at ``<image>``; the image spans sit between the pieces.
- Labels (-100 = no loss) supervise only the assistant answers with their leading space and closing
  ``"\\n\\n"``; user turns, the ``"Assistant:"`` tokens and image positions are -100.

A message with k placeholders gets k images in a row (``"<image>\\n<image>"``); images in several
turns each go where their turn's template puts them. Upstream allows one image per conversation.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .tokenizer import Tokenizer

__all__ = [
    "ConversationError",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "ImageFirstPromptBuilder",
    "ImageLastPromptBuilder",
    "Prompt",
    "PromptBuilder",
    "SHORT_ANSWER_PHRASE",
    "SandwichPromptBuilder",
    "prompt_builder",
]

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
SHORT_ANSWER_PHRASE = "Answer the question using a single word or phrase."
_BLANK_LINES = re.compile(r"\n(\s*\n)+")
_ROLES = {"human": "User", "gpt": "Assistant"}
Mode = Literal["train", "inference"]


def _collapse(text: str) -> str:
    """Runs of blank lines (whitespace between newlines included) become one ``"\\n"``."""
    return _BLANK_LINES.sub("\n", text)


class ConversationError(ValueError):
    """A conversation the builders cannot turn into a prompt.

    Attributes:
        reason: a short code the dataset's bad-data report counts by: ``"malformed"``,
            ``"turn_order"``, ``"empty_turn"`` or ``"image_mismatch"``.
    """

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


@dataclass
class Prompt:
    """A tokenized conversation whose images are not yet expanded.

    Attributes:
        text: the prompt as one string, ``<image>`` marking each image (for inspection only: the
            ids are not its tokenization, they are tokenized turn by turn and piece by piece).
        input_ids: text token ids, ``[L]``.
        labels: ``[L]``, the target id where the loss applies, else ``IGNORE_INDEX``.
        image_offsets: for image j, the index into ``input_ids`` its span is inserted before
            (non-decreasing; ``len(input_ids)`` means at the end).
    """

    text: str
    input_ids: list[int]
    labels: list[int]
    image_offsets: list[int]

    @property
    def num_images(self) -> int:
        return len(self.image_offsets)

    def expand(self, image_tokens: int, pad_id: int = 0) -> tuple[list[int], list[int], list[int]]:
        """Insert ``image_tokens`` positions per image (filled with ``pad_id``, label -100).

        Shapes:
            returns ``input_ids [L + n*image_tokens]``, ``labels`` (same) and the start of each
            image span, ``[n]``.

        Example:
            >>> Prompt("ab<image>c", [1, 2, 3], [-100, -100, 3], [2]).expand(2)
            ([1, 2, 0, 0, 3], [-100, -100, -100, -100, 3], [2])
        """
        if isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 1:
            raise ValueError(f"image_tokens must be a positive int, got {image_tokens!r}")
        ids: list[int] = []
        labels: list[int] = []
        starts: list[int] = []
        prev = 0
        for offset in self.image_offsets:
            ids += self.input_ids[prev:offset]
            labels += self.labels[prev:offset]
            starts.append(len(ids))
            ids += [pad_id] * image_tokens
            labels += [IGNORE_INDEX] * image_tokens
            prev = offset
        ids += self.input_ids[prev:]
        labels += self.labels[prev:]
        return ids, labels, starts


class PromptBuilder(ABC):
    """Turns a LLaVA conversation (``[{"from": "human"|"gpt", "value": str}, ...]``) into a ``Prompt``.

    Subclasses decide only where a turn's images go (``place_images``). Turns must alternate
    human, gpt, human, ... In ``"train"`` mode the conversation ends with an answer; in
    ``"inference"`` mode it ends with a question (or with an answer whose value is empty or None,
    LLaVA's evaluation format), and the prompt ends with ``"Assistant:"``.

    Args:
        tokenizer: anything with ``encode(str) -> list[int]`` (see ``Tokenizer``).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._assistant_ids = tokenizer.encode("Assistant:")

    @abstractmethod
    def place_images(self, message: str, images: str, conversation: Sequence[tuple[str, str]]) -> str:
        """The message with its images put back.

        Args:
            message: the message without placeholders, stripped, blank lines collapsed.
            images: the placeholders to place, ``"<image>"`` k times joined by ``"\\n"``.
            conversation: every turn as ``(role, original value)``, roles ``"human"``/``"gpt"``.
        """

    def format(self, conversation: Sequence[Mapping], mode: Mode = "train") -> list[tuple[str, str]]:
        """Each turn's final text, as ``(role, text)``; the inference prompt's last text is ``"Assistant:"``.

        Raises:
            ConversationError: malformed turns, a turn order other than human/gpt alternating, an
                empty message, or ``<image>`` in an answer.
            ValueError: ``mode`` is not ``"train"`` or ``"inference"``.
        """
        if mode not in ("train", "inference"):
            raise ValueError(f"mode must be 'train' or 'inference', got {mode!r}")
        turns = _validated_turns(conversation, mode)
        texts = []
        for i, (role, value) in enumerate(turns):
            if IMAGE_PLACEHOLDER in value:
                images = "\n".join([IMAGE_PLACEHOLDER] * value.count(IMAGE_PLACEHOLDER))
                message = _collapse(value.replace(IMAGE_PLACEHOLDER, "").strip())
                text = self.place_images(message, images, turns).strip()
            else:
                text = _collapse(value.strip())
            if not text:
                raise ConversationError(f"turn {i} ({role}) is empty", "empty_turn")
            texts.append((role, f"{_ROLES[role]}: {text}\n\n"))
        if mode == "inference":
            texts.append(("gpt", "Assistant:"))
        return texts

    def build(self, conversation: Sequence[Mapping], mode: Mode = "train") -> Prompt:
        """Token ids, labels and image offsets of ``conversation`` (see the class docstring).

        Example:
            >>> from rwkvblocks.prompting import ByteTokenizer
            >>> conv = [{"from": "human", "value": "<image>\\nHi"}, {"from": "gpt", "value": "Yo"}]
            >>> p = ImageFirstPromptBuilder(ByteTokenizer()).build(conv)
            >>> p.text, p.image_offsets
            ('User: <image>\\nHi\\n\\nAssistant: Yo\\n\\n', [6])
        """
        encode = self.tokenizer.encode
        ids: list[int] = []
        labels: list[int] = []
        offsets: list[int] = []
        texts = self.format(conversation, mode)
        for k, (role, text) in enumerate(texts):
            if role == "human":
                for j, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
                    if j:
                        offsets.append(len(ids))
                    ids += encode(piece)
                labels += [IGNORE_INDEX] * (len(ids) - len(labels))
            else:
                turn = encode(text)
                masked = _common_prefix(turn, self._assistant_ids)
                if mode == "inference" and k == len(texts) - 1:
                    masked = len(turn)
                ids += turn
                labels += [IGNORE_INDEX] * masked + turn[masked:]
        return Prompt("".join(t for _, t in texts), ids, labels, offsets)


class ImageFirstPromptBuilder(PromptBuilder):
    """Image before the message: ``"<image>\\n" + message`` (VisualRWKV-Base, training stage 1)."""

    def place_images(self, message, images, conversation):
        return images + "\n" + message


class ImageLastPromptBuilder(PromptBuilder):
    """Image after the message: ``message + "\\n<image>"``."""

    def place_images(self, message, images, conversation):
        return message + "\n" + images


class SandwichPromptBuilder(PromptBuilder):
    """The paper's sandwich prompt: ``all_human + "\\n<image>\\n" + message`` (VisualRWKV, stage 2).

    ``all_human`` joins every human turn of the conversation with ``"\\n"``: a turn holding
    ``<image>`` enters without the placeholder and without ``SHORT_ANSWER_PHRASE``, stripped and
    blank-line-collapsed; every other human turn enters only stripped. The model thus reads all the
    questions before the image and the current one again after it.
    """

    def place_images(self, message, images, conversation):
        parts = []
        for role, value in conversation:
            if role != "human":
                continue
            if IMAGE_PLACEHOLDER in value:
                value = value.replace(IMAGE_PLACEHOLDER, "").strip()
                parts.append(_collapse(value.replace(SHORT_ANSWER_PHRASE, "").strip()))
            else:
                parts.append(value.strip())
        return "\n".join(parts) + "\n" + images + "\n" + message


_BUILDERS = {
    "image_first": ImageFirstPromptBuilder,
    "image_last": ImageLastPromptBuilder,
    "sandwich": SandwichPromptBuilder,
}


def prompt_builder(name: str, tokenizer: Tokenizer) -> PromptBuilder:
    """The builder called ``name``: ``"image_first"``, ``"image_last"`` or ``"sandwich"``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown prompt builder {name!r}; expected one of {sorted(_BUILDERS)}")
    return _BUILDERS[name](tokenizer)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _validated_turns(conversation: Sequence[Mapping], mode: Mode) -> list[tuple[str, str]]:
    """``(role, value)`` per turn, checked; an inference conversation's empty last answer is dropped."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise ConversationError(f"a conversation is a list of turns, got {type(conversation).__name__}")
    turns = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {i} is not a {{'from', 'value'}} mapping: {turn!r:.80}")
        role, value = turn["from"], turn["value"]
        role = role.lower() if isinstance(role, str) else role
        if role not in _ROLES:
            raise ConversationError(f"turn {i} is from {turn['from']!r}; expected 'human' or 'gpt'", "turn_order")
        if value is None and mode == "inference" and i == len(conversation) - 1 and role == "gpt":
            value = ""
        if not isinstance(value, str):
            raise ConversationError(f"turn {i} has a {type(value).__name__} value, expected str")
        turns.append((role, value))
    if mode == "inference" and turns and turns[-1] == ("gpt", ""):
        turns.pop()
    for i, (role, _) in enumerate(turns):
        if role != ("human" if i % 2 == 0 else "gpt"):
            order = "/".join(r for r, _ in turns)
            raise ConversationError(
                f"turn {i} is from {role!r}; turns must alternate human/gpt, got {order}", "turn_order"
            )
    if not turns:
        raise ConversationError("the conversation has no turns", "turn_order")
    if mode == "train" and turns[-1][0] != "gpt":
        raise ConversationError("a training conversation must end with a gpt turn", "turn_order")
    if mode == "inference" and turns[-1][0] != "human":
        raise ConversationError("an inference conversation must end with a human turn", "turn_order")
    for i, (role, value) in enumerate(turns):
        if role == "gpt" and IMAGE_PLACEHOLDER in value:
            raise ConversationError(
                f"turn {i} (gpt) holds {IMAGE_PLACEHOLDER}; images go in human turns", "image_mismatch"
            )
    return turns
