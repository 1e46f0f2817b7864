"""Tokenizers: the RWKV World tokenizer, a tiny byte-level one, and the interface both follow.

The World tokenizer (vocabulary ``rwkv_vocab_v20230424.txt``, 65,529 tokens, greedy longest match on
UTF-8 bytes, id 0 reserved for end of document / padding) encodes with the Rust package
``pyrwkv-tokenizer``, which ships the vocabulary; it is checked token for token against the reference
tokenizer of the ``rwkv`` package (``tests/prompting/test_tokenizer.py``) and is about 20x faster
(``benchmarks/tokenizer.py``). Decoding uses the vocabulary's raw bytes, so ids whose bytes are not
valid UTF-8 on their own (half of a Chinese character, say) decode exactly with ``decode_bytes``.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ByteTokenizer", "Tokenizer", "WorldTokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the prompt builders need from a tokenizer.

    Id 0 is reserved for padding / end of document in every tokenizer of this package; the prompt
    builders never emit it, the collate function pads with it.
    """

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        ...


class ByteTokenizer:
    """One token per UTF-8 byte: id = byte + 1, id 0 is padding; 257 ids in all.

    These are exactly the World vocabulary's single-byte tokens (ids 1..256), so a model with a
    257-row embedding can run demos and tests without the real vocabulary.

    Example:
        >>> ByteTokenizer().encode("Hi\\n")
        [73, 106, 11]
    """

    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        bad = [i for i in ids if not 1 <= i <= 256]
        if bad:
            raise ValueError(f"ByteTokenizer decodes ids 1..256, got {bad[:5]}")
        return bytes(i - 1 for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _parse_vocab(path: Path) -> list[bytes | None]:
    """Token bytes by id from a World vocabulary file (lines ``<id> <python literal> <byte length>``)."""
    table: list[bytes | None] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            first, last = line.find(" "), line.rfind(" ")
            try:
                idx, length = int(line[:first]), int(line[last + 1 :])
                token = ast.literal_eval(line[first + 1 : last])
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"{path}:{lineno}: cannot parse vocabulary line {line!r}") from exc
            if isinstance(token, str):
                token = token.encode("utf-8")
            if not isinstance(token, bytes) or len(token) != length:
                raise ValueError(f"{path}:{lineno}: token {token!r} does not have {length} bytes")
            table.extend([None] * (idx + 1 - len(table)))
            table[idx] = token
    return table


class WorldTokenizer:
    """The RWKV World tokenizer (``rwkv_vocab_v20230424.txt``), encoding with ``pyrwkv-tokenizer``.

    Args:
        vocab_file: a World vocabulary file; default: the one ``pyrwkv-tokenizer`` ships (identical
            in content to the ``rwkv`` package's).

    ``vocab_size`` is 65,536, the embedding size of every RWKV World model (the vocabulary's
    largest id is 65,529). The object pickles (for DataLoader workers started with ``spawn``): the
    Rust encoder is rebuilt on first use in the new process.

    Example:
        >>> tok = WorldTokenizer()
        >>> tok.encode("User: hi\\n\\n")
        [24281, 59, 4571, 261]
        >>> tok.decode([5585, 41693, 59])
        'Assistant:'
    """

    vocab_size = 65536

    def __init__(self, vocab_file: str | Path | None = None):
        self.vocab_file = None if vocab_file is None else Path(vocab_file)
        if self.vocab_file is not None and not self.vocab_file.is_file():
            raise ValueError(f"vocab_file {str(self.vocab_file)!r} is not a file")
        self._encoder = None
        self._table: list[bytes | None] | None = None

    def _vocab_path(self) -> Path:
        if self.vocab_file is not None:
            return self.vocab_file
        import pyrwkv_tokenizer

        return Path(pyrwkv_tokenizer.__file__).parent / "rwkv_vocab_v20230424.txt"

    def __getstate__(self) -> dict:
        return {"vocab_file": self.vocab_file, "_encoder": None, "_table": None}

    def encode(self, text: str) -> list[int]:
        """Greedy longest-match token ids of the UTF-8 bytes of ``text``.

        Raises:
            ValueError: ``text`` is not valid Unicode (a lone surrogate has no UTF-8 form).
        """
        if self._encoder is None:
            import pyrwkv_tokenizer

            self._encoder = pyrwkv_tokenizer.WorldTokenizer(str(self._vocab_path()))
        try:
            return self._encoder.encode(text)
        except TypeError:
            raise ValueError(f"encode takes a str, got {type(text).__name__}") from None
        except UnicodeEncodeError as exc:
            raise ValueError(f"text has no UTF-8 form at index {exc.start}: {exc.reason}") from None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The exact bytes of ``ids``, valid UTF-8 or not.

        Raises:
            ValueError: an id is not in the vocabulary (0, the padding id, is not).
        """
        if self._table is None:
            self._table = _parse_vocab(self._vocab_path())
        table = self._table
        try:
            if len(ids) and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < len(table) and table[i] is not None)]
            raise ValueError(f"ids not in the World vocabulary: {bad[:5]}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
