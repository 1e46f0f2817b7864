"""Recurrent state: the protocol every block of a stack follows, and ``RWKVState``, the state of a stack.

The state protocol. A block ``block(x [B, T, C], state) -> (y, new_state)`` (or a bare ``y`` when it keeps
no state) declares its own state:

- ``init_state(batch_size, device=None)`` returns the state before the first token (zeros, an empty KV
  cache...). A block without ``init_state`` starts from ``None``.
- What it holds: a tensor, ``None``, or a tuple / ``NamedTuple`` of those (nested freely), **every tensor
  with the batch on dim 0**. That one convention is how a state is indexed per sample, joined along the
  batch and moved (``select_state``, ``cat_states``, ``move_state``); a ``NamedTuple`` class may list in
  ``KEEP_DTYPE`` the fields whose dtype never changes (the fp32 WKV matrix).
- Optionally ``check_state(state, batch_size)``: raise ``ValueError`` naming a field of the wrong shape
  (shape arithmetic only, so it never reads the device).

Blocks whose ``forward`` has a ``context`` parameter also receive the per-forward context: one dict the
stack creates per call and hands from block to block, for values a later layer reads from an earlier one
(RWKV-7's ``v_first``, the value of layer 0).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "KVCache",
    "RWKVBlockState",
    "RWKVState",
    "TimeMixState",
    "cat_states",
    "move_state",
    "select_state",
    "split_block_output",
    "state_batch_size",
    "takes_context",
]


class KVCache(NamedTuple):
    """Keys and values of every position an attention layer has seen (``TinyAttention``).

    Shapes:
        k, v: `[B, H, L, D]` in the model dtype.
    """

    k: Tensor
    v: Tensor


class TimeMixState(NamedTuple):
    """State of a ``TimeMix``.

    Shapes:
        shift: `[B, C]`, the last input (model dtype).
        wkv: `[B, H, K, V]` fp32 (fp64 for fp64 models), key index first; RWKV-7 (``TimeMix7``) keeps
            BlinkDL's `[B, H, V, K]`, value index first.
    """

    shift: Tensor
    wkv: Tensor

    KEEP_DTYPE = ("wkv",)


class RWKVBlockState(NamedTuple):
    """State of one ``RWKVBlock``.

    Shapes:
        att_shift: `[B, C]`, the last ln1 output (model dtype).
        wkv: `[B, H, K, V]` fp32 (fp64 for fp64 models), key index first (RWKV-7: `[B, H, V, K]`).
        ffn_shift: `[B, C]`, the last ln2 output (model dtype).
        kv: the ``KVCache`` of the block's ``PreNormTinyAttention`` (hybrid models), else ``None``.
    """

    att_shift: Tensor
    wkv: Tensor
    ffn_shift: Tensor
    kv: KVCache | None = None

    KEEP_DTYPE = ("wkv",)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _rebuild(template: tuple, items: list) -> tuple:
    return type(template)(*items) if _is_namedtuple(template) else tuple(items)


def _map(fn: Callable[[Tensor, bool], Tensor], state: Any, keep: bool = False) -> Any:
    """Apply ``fn(tensor, keep_dtype)`` to every tensor of ``state``; the structure is kept."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state, keep)
    if isinstance(state, tuple):
        kept = set(getattr(type(state), "KEEP_DTYPE", ())) if _is_namedtuple(state) else set()
        names = state._fields if _is_namedtuple(state) else (None,) * len(state)
        return _rebuild(state, [_map(fn, item, keep or name in kept) for name, item in zip(names, state)])
    raise ValueError(f"a block state holds tensors, None and tuples of them; got {type(state).__name__}")


def _tensors(state: Any) -> Iterator[Tensor]:
    if isinstance(state, Tensor):
        yield state
    elif isinstance(state, tuple):
        for item in state:
            yield from _tensors(item)


def state_batch_size(state: Any) -> int | None:
    """The batch size of a block state (dim 0 of its first tensor), ``None`` if it holds no tensor."""
    first = next(_tensors(state), None)
    return None if first is None else first.shape[0]


def select_state(state: Any, index: Any) -> Any:
    """The samples ``index`` (slice, index tensor or list) of a block state."""
    return _map(lambda t, keep: t[index], state)


def move_state(state: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """``state`` on ``device``; ``dtype`` applies to floating tensors except ``KEEP_DTYPE`` fields."""

    def move(t: Tensor, keep: bool) -> Tensor:
        cast = dtype if dtype is not None and t.is_floating_point() and not keep else None
        return t.to(device=device, dtype=cast)

    return _map(move, state)


def cat_states(states: Sequence[Any], where: str = "state") -> Any:
    """Join block states of one structure along the batch.

    Raises:
        ValueError: the structures differ (``None`` in one, a tensor in another...) or the shapes beyond
            the batch do not match (e.g. KV caches of different lengths); the message names the field.
    """
    first = states[0]
    if all(s is None for s in states):
        return None
    if any(s is None for s in states) or len({type(s) for s in states}) != 1:
        raise ValueError(f"cannot join {where}: it is None or of another kind in some states")
    if isinstance(first, Tensor):
        shapes = {tuple(s.shape[1:]) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"cannot join {where}: shapes beyond the batch differ: {sorted(shapes)}")
        return torch.cat(list(states), 0)
    if isinstance(first, tuple):
        if len({len(s) for s in states}) != 1:
            raise ValueError(f"cannot join {where}: tuples of different lengths")
        names = first._fields if _is_namedtuple(first) else [str(i) for i in range(len(first))]
        items = [cat_states([s[i] for s in states], f"{where}.{n}") for i, n in enumerate(names)]
        return _rebuild(first, items)
    raise ValueError(f"a block state holds tensors, None and tuples of them; got {type(first).__name__}")


def split_block_output(out: Any, owner: str = "block") -> tuple[Tensor, Any]:
    """``(y, state)`` from what a block returned: a bare tensor (no state) or a ``(y, state)`` pair.

    Raises:
        ValueError: anything else (a tuple of another length, a tuple whose first item is not a tensor).
    """
    if isinstance(out, Tensor):
        return out, None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor):
        return out[0], out[1]
    kind = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
    raise ValueError(f"{owner} must return a tensor y or a pair (y, state), got {kind}")


def takes_context(module: torch.nn.Module) -> bool:
    """Whether ``module.forward`` declares a ``context`` parameter (the per-forward context of a stack)."""
    try:
        return "context" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@dataclass(frozen=True)
class RWKVState:
    """The state of a whole stack, one block state per block; immutable, cheap to pass around.

    Models return a new ``RWKVState`` and never modify the one they were given, so a state can be kept to
    branch from (e.g. a shared prompt prefix) without cloning. Each entry is whatever its block declares
    (``RWKVBlockState`` for ``RWKVBlock``, a tensor for a GRU, a ``KVCache`` for attention, ``None`` for a
    stateless block); see the module docstring for the protocol.

    Example:
        >>> import torch
        >>> from rwkvblocks import ChannelMix, RWKVBlock, TimeMix
        >>> block = RWKVBlock(TimeMix.rwkv6(8, head_dim=4), ChannelMix.rwkv6(8, hidden_dim=32), dim=8)
        >>> s = RWKVState((block.init_state(3), block.init_state(3)))
        >>> s[1:].batch_size, s.wkv(0).shape
        (2, torch.Size([3, 2, 4, 4]))
    """

    layers: tuple[Any, ...]

    @classmethod
    def cat(cls, states: Sequence[RWKVState]) -> RWKVState:
        """Join states along the batch (e.g. to decode several conversations together)."""
        if not states:
            raise ValueError("RWKVState.cat needs at least one state")
        depths = {s.num_layers for s in states}
        if len(depths) != 1:
            raise ValueError(f"cannot join states with different layer counts: {sorted(depths)}")
        return cls(tuple(cat_states(parts, f"layer {i}") for i, parts in enumerate(zip(*(s.layers for s in states)))))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def batch_size(self) -> int:
        for layer in self.layers:
            n = state_batch_size(layer)
            if n is not None:
                return n
        raise ValueError("this state holds no tensor, so it has no batch size")

    @property
    def device(self) -> torch.device:
        for layer in self.layers:
            t = next(_tensors(layer), None)
            if t is not None:
                return t.device
        raise ValueError("this state holds no tensor, so it has no device")

    def wkv(self, layer_idx: int) -> Tensor:
        """The WKV matrix of layer ``layer_idx`` (a block whose state has a ``wkv`` field)."""
        return self.layers[layer_idx].wkv

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> RWKVState:
        """Select samples along the batch; an ``int`` keeps the batch axis (size 1)."""
        if isinstance(index, int):
            n = self.batch_size
            if not -n <= index < n:
                raise IndexError(f"sample {index} out of range for a state of batch size {n}")
            index = slice(index, index + 1 if index != -1 else None)
        return RWKVState(tuple(select_state(layer, index) for layer in self.layers))

    def clone(self) -> RWKVState:
        return RWKVState(tuple(_map(lambda t, keep: t.clone(), layer) for layer in self.layers))

    def detach(self) -> RWKVState:
        """Cut the autograd graph (truncated backpropagation through time)."""
        return RWKVState(tuple(_map(lambda t, keep: t.detach(), layer) for layer in self.layers))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RWKVState:
        """Move to ``device``; ``dtype`` applies to shifts and KV caches (WKV stays fp32/fp64)."""
        return RWKVState(tuple(move_state(layer, device, dtype) for layer in self.layers))
