"""Decoded text of a generation, streamed: whole UTF-8 characters only, stop strings cut and held back.

A token may end in the middle of a multi-byte character (half of a Chinese character or an emoji), so pieces are
decoded from bytes incrementally and an incomplete character waits for the next token. A stop string may span
tokens: the tail of the text that could still become one is held back until it can no longer.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["TextStream"]


class TextStream:
    """Turns generated token ids into text pieces.

    Args:
        decode_bytes: The tokenizer's ``decode_bytes(ids) -> bytes`` (exact bytes of the ids).
        stop_strings: Texts that end the generation; they are not part of the text.

    Attributes:
        text: Everything decoded so far (before any stop string).
        stopped: The stop string that ended the text, or ``None``.

    Example:
        >>> from rwkvblocks.prompting import ByteTokenizer
        >>> tok = ByteTokenizer()
        >>> stream = TextStream(tok.decode_bytes, stop_strings=("\\n\\n",))
        >>> [stream.push(t) for t in tok.encode("é!\\n\\nmore")][:5], stream.stopped
        (['', 'é', '!', '', ''], '\\n\\n')
    """

    def __init__(self, decode_bytes, stop_strings: Sequence[str] = ()) -> None:
        self._decode_bytes = decode_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stop_strings)
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""
        self._emitted = 0
        self.stopped: str | None = None

    def push(self, token: int) -> str:
        """Add one token; returns the new text that is final (possibly ``""``)."""
        if self.stopped is not None:
            return ""
        start = max(0, len(self.text) - self._longest + 1)
        data = b"" if token == 0 else self._decode_bytes([token])  # id 0 (end of document) has no text
        self.text += self._utf8.decode(data)
        hits = [(at, stop) for stop in self._stops if (at := self.text.find(stop, start)) >= 0]
        if hits:
            at, self.stopped = min(hits)
            self.text = self.text[:at]
        end = len(self.text) if self.stopped is not None else len(self.text) - self._held()
        piece, self._emitted = self.text[self._emitted : end], max(self._emitted, end)
        return piece

    def flush(self) -> str:
        """The rest at the end of the generation (held-back text and an incomplete character)."""
        if self.stopped is None:
            self.text += self._utf8.decode(b"", final=True)
        piece, self._emitted = self.text[self._emitted :], len(self.text)
        return piece

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(stop.startswith(tail) for stop in self._stops):
                return n
        return 0
