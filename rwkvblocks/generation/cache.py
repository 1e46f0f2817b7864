"""States after a prompt prefix, reused by later requests: a memory budget and least-recently-used eviction."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from torch import Tensor

from ..state import RWKVState

__all__ = ["PrefixCache"]


def _nbytes(state: RWKVState, logits: Tensor) -> int:
    total = logits.numel() * logits.element_size()

    def add(x) -> None:
        nonlocal total
        if isinstance(x, Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, tuple):
            for item in x:
                add(item)

    for layer in state.layers:
        add(layer)
    return total


class PrefixCache:
    """``(model key, image key, prefix ids) -> (last logits, state)``, within ``max_bytes``.

    States are immutable (models return new ones), so an entry is handed out as it is and may be decoded from by
    any number of requests. ``longest_prefix`` finds the longest cached prefix of a prompt.

    Args:
        max_bytes: Memory budget of the cached tensors (states and logits); the least recently used entries
            are dropped to stay under it. An entry larger than the budget is not kept.

    Example:
        >>> import torch
        >>> cache = PrefixCache(max_bytes=1 << 20)
        >>> state = RWKVState((torch.zeros(1, 8),))
        >>> cache.put("m", None, [1, 2, 3], torch.zeros(1, 5), state)
        >>> cache.longest_prefix("m", None, [1, 2, 3, 4])[0]
        3
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple, tuple[Tensor, RWKVState, int]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, model: Hashable, image: Hashable, prefix: Sequence[int], logits: Tensor, state: RWKVState) -> None:
        """Keep the state after ``prefix`` (and the logits of its last position)."""
        key = (model, image, tuple(int(t) for t in prefix))
        size = _nbytes(state, logits)
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[2]
        if size > self.max_bytes:
            return
        self._entries[key] = (logits, state, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][2]

    def get(self, model: Hashable, image: Hashable, prefix: Sequence[int]) -> tuple[Tensor, RWKVState] | None:
        """The exact prefix's ``(logits, state)``, or ``None``."""
        key = (model, image, tuple(int(t) for t in prefix))
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0], entry[1]

    def longest_prefix(
        self, model: Hashable, image: Hashable, ids: Sequence[int]
    ) -> tuple[int, Tensor | None, RWKVState | None]:
        """``(length, logits, state)`` of the longest cached prefix of ``ids`` (``(0, None, None)`` if none)."""
        ids = tuple(int(t) for t in ids)
        best = None
        for m, i, prefix in self._entries:
            matches = m == model and i == image and len(prefix) <= len(ids) and ids[: len(prefix)] == prefix
            if matches and (best is None or len(prefix) > len(best[2])):
                best = (m, i, prefix)
        if best is None:
            self.misses += 1
            return 0, None, None
        self._entries.move_to_end(best)
        self.hits += 1
        logits, state, _ = self._entries[best]
        return len(best[2]), logits, state
