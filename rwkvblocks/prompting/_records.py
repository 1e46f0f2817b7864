"""Random access to the records of a large JSON array (or JSON Lines) file without loading it.

Opening scans the file once, in blocks, with the C JSON decoder, and keeps only each record's byte
range (16 bytes per record); a record is parsed again when it is read. Workers forked by a
DataLoader share the ranges and open their own file descriptor.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from array import array
from pathlib import Path

_NON_WHITESPACE = re.compile(r"[^ \t\n\r]")
_BLOCK_BYTES = 1 << 22


class JsonRecords:
    """The top-level objects of ``path``: a JSON array of objects, or one object per line.

    Args:
        path: the file.

    Raises:
        ValueError: the file is not a JSON array of objects nor JSON Lines (the message names the
            record index and byte offset).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._starts = array("q")
        self._ends = array("q")
        self._scan()
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        if self._pid != os.getpid():  # after a fork the descriptor's offset would be shared
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        start, end = self._starts[index], self._ends[index]
        return json.loads(os.pread(self._fd, end - start, start))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _scan(self) -> None:
        with open(self.path, "rb") as f:
            bom = len(codecs.BOM_UTF8) if f.read(3) == codecs.BOM_UTF8 else 0
            f.seek(bom)
            cursor = _Cursor(f, bom)
            try:
                self._scan_records(cursor)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{self.path}: not UTF-8 near byte {cursor.base}: {exc.reason}") from None

    def _scan_records(self, cursor: _Cursor) -> None:
        def error(what: str, at: int | None = None) -> ValueError:
            at = cursor.base if at is None else at
            return ValueError(f"{self.path}: {what} at byte {at} (record {len(self._starts)})")

        first = cursor.peek()
        if not first:
            raise ValueError(f"{self.path}: the file is empty")
        in_array = first == "["
        if in_array:
            cursor.skip()
        while True:
            char = cursor.peek()
            if in_array and char == "]":
                cursor.skip()
                if cursor.peek():
                    raise error("data after the closing ']'")
                return
            if not char:
                if in_array:
                    raise error("the array is not closed")
                return
            if in_array and self._starts:
                if char != ",":
                    raise error("expected ',' or ']'")
                cursor.skip()
                cursor.peek()
            try:
                record, start, end = cursor.value()
            except json.JSONDecodeError as exc:
                raise error(f"invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise error(f"expected a JSON object, found {type(record).__name__}", start)
            self._starts.append(start)
            self._ends.append(end)


class _Cursor:
    """Reads a file as text in blocks, tracking the byte offset of the current position."""

    def __init__(self, f, base: int):
        self._file = f
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self.text = ""
        self.pos = 0
        self.base = base  # byte offset of text[pos] in the file
        self.eof = False

    def _more(self) -> None:
        block = self._file.read(_BLOCK_BYTES)
        self.eof = not block
        self.text = self.text[self.pos :] + self._utf8.decode(block, final=self.eof)
        self.pos = 0

    def _move(self, pos: int) -> None:
        self.base += len(self.text[self.pos : pos].encode("utf-8"))
        self.pos = pos

    def peek(self) -> str:
        """Move to the next non-whitespace character and return it ("" at the end of the file)."""
        while True:
            match = _NON_WHITESPACE.search(self.text, self.pos)
            if match:
                self._move(match.start())
                return self.text[self.pos]
            self._move(len(self.text))
            if self.eof:
                return ""
            self._more()

    def skip(self) -> None:
        self._move(self.pos + 1)

    def value(self) -> tuple[object, int, int]:
        """Decode the JSON value here: (value, start byte, end byte), reading more as needed."""
        while True:
            try:
                value, end = self._decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                self._more()
                continue
            start = self.base
            self._move(end)
            return value, start, self.base
