"""2D scanning of image patch spans inside a token sequence (VisualRWKV, DESIGN.md §7).

A recurrent block reads its sequence in one order. For an image, the raster order is one arbitrary
choice; scanning lets layer ``i`` read each image's patches in another order — backwards, or column by
column — while text tokens and CLS stay where they are. ``ScanPermuter`` holds the schedule (which
direction each layer uses); ``ScanPermuter.plan`` turns the image spans of a batch into a ``ScanPlan``
of precomputed gather indices (one gather in, one gather out per layer, no Python loop over samples
or tokens), and ``ScanPlan.apply`` runs any ``block(x, state) -> (y, state)`` in the permuted order.

Why not ``ops.wkv6(reverse=True)`` for the backward directions: that reverses the whole sequence,
text included, while scanning reverses only the patch span and the recurrence still runs forward
through the text around it; the two are not the same computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .state import split_block_output

__all__ = ["DIRECTIONS", "SCHEDULES", "ScanPermuter", "ScanPlan", "Scanned"]

DIRECTIONS = ("forward", "backward", "column_forward", "column_backward")
SCHEDULES = {
    "uni": ("forward",),
    "bi": ("forward", "backward"),
    "multi": ("forward", "backward", "column_forward", "column_backward"),
}


def _as_spans(spans: Tensor | Sequence[Sequence[int]]) -> Tensor:
    """The spans as a CPU int64 tensor: the plan is computed on the host (layout metadata, no device reads)."""
    if isinstance(spans, Tensor):
        t = spans.to(device="cpu", dtype=torch.long)
    else:
        t = torch.tensor([list(s) for s in spans], dtype=torch.long).reshape(-1, 4)
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"spans must be [N, 4] rows (sample, start, height, width), got shape {tuple(t.shape)}")
    return t


class ScanPermuter:
    """Which scan direction each layer uses, and the factory of per-batch ``ScanPlan`` objects.

    Args:
        schedule: ``"uni"`` (forward everywhere), ``"bi"`` (even layers forward, odd backward),
            ``"multi"`` (layer ``i mod 4``: forward, backward, column forward, column backward), or a
            custom sequence of directions from ``DIRECTIONS`` that layer ``i`` indexes ``mod`` its length.

    Directions, on a patch grid of ``h`` rows and ``w`` columns in raster order:
    ``forward`` keeps raster order; ``backward`` reverses it; ``column_forward`` reads the grid
    transposed (column by column, top to bottom); ``column_backward`` reverses that.

    Example:
        >>> import torch
        >>> plan = ScanPermuter("bi").plan([(0, 2, 2, 3)], batch_size=1, seq_len=9)  # 2x3 image at 2
        >>> x = torch.arange(9.0).view(1, 9, 1)
        >>> plan.permute(x, layer_idx=1).flatten().tolist()
        [0.0, 1.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 8.0]
    """

    def __init__(self, schedule: str | Sequence[str] = "bi") -> None:
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(
                    f"schedule must be one of {sorted(SCHEDULES)} or a list of directions, got {schedule!r}"
                )
            directions = SCHEDULES[schedule]
        else:
            directions = tuple(schedule)
            bad = [d for d in directions if d not in DIRECTIONS]
            if not directions or bad:
                raise ValueError(f"directions must be a non-empty sequence from {DIRECTIONS}, got {list(directions)}")
        self.schedule = schedule if isinstance(schedule, str) else "custom"
        self.directions: tuple[str, ...] = directions

    def direction(self, layer_idx: int) -> str:
        return self.directions[layer_idx % len(self.directions)]

    def plan(
        self,
        spans: Tensor | Sequence[Sequence[int]],
        *,
        batch_size: int,
        seq_len: int,
        device: torch.device | str | None = None,
    ) -> ScanPlan:
        """Precompute the gather indices of every direction in the schedule for one batch layout.

        Args:
            spans: One row ``(sample, start, height, width)`` per image: the patch tokens of that image
                occupy positions ``start .. start + height*width - 1`` of sample ``sample``, in raster
                order. Any number of images per sample; CLS and text are simply not in a span.
            batch_size, seq_len: The ``[B, T]`` of the sequences the plan will permute.
            device: Where the indices live (that of the activations). The plan is computed on the CPU
                and copied there once, so a CUDA forward never waits on it; pass CPU spans.

        Raises:
            ValueError: a span outside the sequence, an empty grid, or overlapping spans.
        """
        return ScanPlan(self, _as_spans(spans), batch_size, seq_len, device)

    def __repr__(self) -> str:
        return f"ScanPermuter({self.schedule!r}: {', '.join(self.directions)})"


class ScanPlan:
    """Gather indices of one batch layout for each direction of a ``ScanPermuter``.

    Shapes:
        permute / unpermute: x `[B, T, ...]` -> same shape. Indices: `[B, T]` int64 per direction.
    """

    def __init__(self, permuter: ScanPermuter, spans: Tensor, batch_size: int, seq_len: int, device) -> None:
        self.permuter = permuter
        self.batch_size, self.seq_len = batch_size, seq_len
        self.spans = spans
        sample, start, h, w = spans.unbind(1) if spans.numel() else (spans.new_zeros(0),) * 4
        sizes = h * w
        if spans.numel():
            problems = []
            if (h < 1).any() or (w < 1).any():
                problems.append("grids need height and width >= 1")
            if (sample < 0).any() or (sample >= batch_size).any():
                problems.append(f"sample index outside [0, {batch_size})")
            if (start < 0).any() or (start + sizes > seq_len).any():
                problems.append(f"span outside the sequence of length {seq_len}")
            if problems:
                raise ValueError(f"bad image spans {spans.tolist()}: " + "; ".join(problems))
        # one entry per patch token: its span, its rank j within the span, its raster position
        span_of = torch.repeat_interleave(torch.arange(len(sizes), device=spans.device), sizes)
        first = torch.cumsum(sizes, 0) - sizes
        j = torch.arange(int(sizes.sum()), device=spans.device) - first[span_of]
        n, hh, ww = sizes[span_of], h[span_of], w[span_of]
        rows = sample[span_of]
        dest = start[span_of] + j
        covered = torch.zeros(batch_size, seq_len, dtype=torch.long)
        covered.index_put_((rows, dest), torch.ones_like(dest), accumulate=True)
        if (covered > 1).any():
            raise ValueError(f"image spans overlap: {spans.tolist()}")
        order = {
            "forward": j,
            "backward": n - 1 - j,
            "column_forward": (j % hh) * ww + j // hh,  # j-th in column-major order = raster index
            "column_backward": ((n - 1 - j) % hh) * ww + (n - 1 - j) // hh,
        }
        identity = torch.arange(seq_len).expand(batch_size, seq_len)
        self._gather: dict[str, tuple[Tensor, Tensor] | None] = {}
        for direction in set(permuter.directions):
            if direction == "forward" or not spans.numel():
                self._gather[direction] = None
                continue
            src = start[span_of] + order[direction]
            index = identity.clone()
            index[rows, dest] = src  # permuted[t] = x[index[t]]
            inverse = identity.clone()
            inverse[rows, src] = dest
            self._gather[direction] = (index.to(device), inverse.to(device))

    def _index(self, x: Tensor, layer_idx: int, which: int) -> Tensor:
        if x.shape[:2] != (self.batch_size, self.seq_len):
            raise ValueError(
                f"the plan was made for [B, T] = [{self.batch_size}, {self.seq_len}], got x of shape {tuple(x.shape)}"
            )
        pair = self._gather[self.permuter.direction(layer_idx)]
        if pair is None:
            return x
        index = pair[which].view(self.batch_size, self.seq_len, *([1] * (x.dim() - 2))).expand_as(x)
        return torch.gather(x, 1, index)

    def permute(self, x: Tensor, layer_idx: int) -> Tensor:
        """Reorder the patch tokens of ``x`` into the direction of layer ``layer_idx``."""
        return self._index(x, layer_idx, 0)

    def unpermute(self, x: Tensor, layer_idx: int) -> Tensor:
        """Undo ``permute``: back to raster order."""
        return self._index(x, layer_idx, 1)

    def apply(self, block: Callable[..., Any], x: Tensor, state: Any, layer_idx: int, **kwargs) -> tuple[Tensor, Any]:
        """``block`` run in the scan order of layer ``layer_idx``: returns ``(y in raster order, state)``.

        ``block(x, state, **kwargs)`` may return ``(y, state)`` or a bare ``y`` (a stateless block: the state
        returned is then ``None``). Sequence tensors (`[B, T, ...]`) of a ``context=`` dict stay in raster
        order between blocks, like the residual stream: the block sees them in its own scan order (RWKV-7's
        ``v_first``, written by layer 0 and read by every later layer).

        Raises:
            ValueError: the block returned something else.
        """
        context = kwargs.get("context")
        if context is not None:
            seen = {k: self._to_scan(v, layer_idx) for k, v in context.items()}
            kwargs["context"] = dict(seen)
        y, state = split_block_output(block(self.permute(x, layer_idx), state, **kwargs), f"block {layer_idx}")
        if context is not None:
            for k, v in kwargs["context"].items():
                if k not in seen or v is not seen[k]:  # written by the block
                    context[k] = self._to_scan(v, layer_idx, inverse=True)
        return self.unpermute(y, layer_idx), state

    def _to_scan(self, value: Any, layer_idx: int, inverse: bool = False) -> Any:
        """A context value in (or, ``inverse``, out of) layer ``layer_idx``'s order, if it is a sequence."""
        if not isinstance(value, Tensor) or value.shape[:2] != (self.batch_size, self.seq_len):
            return value
        return self.unpermute(value, layer_idx) if inverse else self.permute(value, layer_idx)


class Scanned(torch.nn.Module):
    """Wraps any ``block(x, state) -> (y, state)`` so that it reads image patches in its layer's order.

    Args:
        block: The wrapped block (an ``RWKVBlock``, a Mamba layer, anything with that contract).
        layer_idx: Which entry of the plan's schedule this block uses.

    Shapes:
        forward(x `[B, T, C]`, state, plan ``ScanPlan`` or ``None``) -> (y `[B, T, C]`, state).
        Without a plan (text only, or decoding after the image) the block runs unchanged.
    """

    def __init__(self, block: torch.nn.Module, layer_idx: int) -> None:
        super().__init__()
        self.block = block
        self.layer_idx = layer_idx

    def forward(self, x: Tensor, state: Any = None, *, plan: ScanPlan | None = None):
        if plan is None:
            return self.block(x, state)
        return plan.apply(self.block, x, state, self.layer_idx)
