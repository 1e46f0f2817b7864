"""Token layout: where an encoder's prefix tokens go, and average pooling of its patch grid (DESIGN.md §6)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TokenLayout", "pool_patches"]

PrefixPosition = Literal["first", "last", "none"]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def pool_patches(
    patches: Tensor, grid: tuple[int, int], size: int | tuple[int, int], *, adaptive: bool = False
) -> Tensor:
    """Average-pool a raster-ordered patch grid to ``size`` with kernel = stride = grid / size.

    Upstream VisualRWKV pools CLIP's 24 x 24 grid this way (g = 12, 8, 6, 4, 3, 2, 1). The kernel must
    tile the grid exactly: a size that does not divide the grid raises rather than silently dropping
    rows or columns. ``adaptive=True`` is ``torch.nn.AdaptiveAvgPool2d(size)`` instead (upstream
    VisualRWKV-7): any size up to the grid, overlapping windows where it does not divide.

    Args:
        patches: Patch tokens in raster (row-major) order.
        grid: `(h, w)` of the patch grid.
        size: Output grid `(g_h, g_w)`, or one int for a square grid.
        adaptive: Adaptive average pooling rather than an exact tiling.

    Shapes:
        patches: `[B, h*w, D]` -> `[B, g_h*g_w, D]`, raster order, same dtype.
    """
    (h, w), (gh, gw) = grid, _pair(size)
    if patches.dim() != 3 or patches.shape[1] != h * w:
        raise ValueError(f"expected patches [B, {h * w}, D] for a {h}x{w} grid, got {list(patches.shape)}")
    _check_pool(grid, (gh, gw), adaptive)
    if (gh, gw) == (h, w):
        return patches
    x = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)
    if adaptive:
        return F.adaptive_avg_pool2d(x, (gh, gw)).flatten(2).transpose(1, 2)
    kernel = (h // gh, w // gw)
    return F.avg_pool2d(x, kernel_size=kernel, stride=kernel).flatten(2).transpose(1, 2)


def _check_pool(grid: tuple[int, int], pool: tuple[int, int], adaptive: bool) -> None:
    (h, w), (gh, gw) = grid, pool
    if adaptive:
        if not (1 <= gh <= h and 1 <= gw <= w):
            raise ValueError(f"adaptive pooled grid {gh}x{gw} must lie within the patch grid {h}x{w}")
    elif gh < 1 or gw < 1 or h % gh or w % gw:
        raise ValueError(f"pooled grid {gh}x{gw} must evenly divide the patch grid {h}x{w}")


class TokenLayout(nn.Module):
    """Arranges an encoder's prefix tokens (CLS, registers) and patch tokens into one sequence.

    VisualRWKV (v6) uses ``prefix="last"`` (576 patches, then CLS); VisualRWKV-Base and Hybrid use
    ``prefix="first"``. ``pool=g`` average-pools the patch grid to g x g (upstream's token-count
    ablation: g = 24, 12, 8, 6, 4, 3, 2 give 577, 145, 65, 37, 17, 10, 5 tokens with CLS);
    ``keep_patches=False`` keeps only the prefix tokens (CLS alone: 1 token).

    Args:
        prefix: ``"first"``, ``"last"`` (after the patches) or ``"none"`` (dropped).
        pool: Side of the pooled patch grid (an int or `(g_h, g_w)`); ``None`` keeps the full grid.
        keep_patches: Whether patch tokens are emitted at all.
        adaptive: Pool with ``AdaptiveAvgPool2d`` (any ``pool`` up to the grid) instead of an exact tiling.

    Shapes:
        prefix tokens: `[B, P, D]`; patches: `[B, h*w, D]` in raster order;
        output: `[B, N, D]` with N = ``num_tokens(P, (h, w))``.
    """

    def __init__(
        self,
        *,
        prefix: PrefixPosition = "first",
        pool: int | tuple[int, int] | None = None,
        keep_patches: bool = True,
        adaptive: bool = False,
    ) -> None:
        super().__init__()
        if prefix not in ("first", "last", "none"):
            raise ValueError(f"prefix must be 'first', 'last' or 'none', got {prefix!r}")
        if pool is not None:
            if min(_pair(pool)) < 1:
                raise ValueError(f"pool must be a positive grid side, got {pool!r}")
            if not keep_patches:
                raise ValueError(f"pool={pool!r} has no effect with keep_patches=False")
        if prefix == "none" and not keep_patches:
            raise ValueError("prefix='none' with keep_patches=False leaves no tokens")
        self.prefix = prefix
        self.pool = None if pool is None else _pair(pool)
        self.keep_patches = keep_patches
        self.adaptive = adaptive

    def output_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The patch grid after pooling, `(0, 0)` when patches are dropped; checks divisibility."""
        if not self.keep_patches:
            return (0, 0)
        if self.pool is None:
            return grid
        _check_pool(grid, self.pool, self.adaptive)
        return self.pool

    def spans(self, num_prefix: int, grid: tuple[int, int]) -> tuple[slice, slice]:
        """Positions of the prefix tokens and of the patch tokens in the output sequence.

        Raises ``ValueError`` when the layout would emit no token (e.g. CLS only on a model with no
        class token).
        """
        gh, gw = self.output_grid(grid)
        num_patches, kept_prefix = gh * gw, (0 if self.prefix == "none" else num_prefix)
        if num_patches + kept_prefix == 0:
            raise ValueError(
                f"layout (prefix={self.prefix!r}, keep_patches={self.keep_patches}) keeps no tokens "
                f"of an encoder with {num_prefix} prefix tokens"
            )
        if self.prefix == "last":
            return slice(num_patches, num_patches + kept_prefix), slice(0, num_patches)
        return slice(0, kept_prefix), slice(kept_prefix, kept_prefix + num_patches)

    def num_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        """Length N of the output sequence for ``num_prefix`` prefix tokens and an `(h, w)` grid."""
        prefix_span, patch_span = self.spans(num_prefix, grid)
        return max(prefix_span.stop, patch_span.stop)

    def forward(self, prefix: Tensor, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        self.spans(prefix.shape[1], grid)
        parts = []
        if self.keep_patches:
            pooled = patches if self.pool is None else pool_patches(patches, grid, self.pool, adaptive=self.adaptive)
            parts.append(pooled)
        if self.prefix == "first":
            parts.insert(0, prefix)
        elif self.prefix == "last":
            parts.append(prefix)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def extra_repr(self) -> str:
        adaptive = ", adaptive=True" if self.adaptive else ""
        return f"prefix={self.prefix!r}, pool={self.pool}, keep_patches={self.keep_patches}{adaptive}"
