"""The image-encoder interface shared by the timm and open_clip adapters."""

from __future__ import annotations

import abc
import contextlib

import torch
from torch import Tensor, nn

from .layout import TokenLayout
from .transforms import ImageTransform

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module, metaclass=abc.ABCMeta):
    """Images in, a token sequence out: ``encoder(images [B, 3, H, W]) -> tokens [B, N, D]``.

    Subclasses wrap a backbone and implement ``features`` (prefix tokens and raster-ordered patch
    tokens of one layer); this class arranges them with a ``TokenLayout`` and handles freezing.

    A frozen encoder (the default) has ``requires_grad=False`` on every parameter, stays in eval mode
    even when a parent module calls ``train()``, and runs its forward under ``torch.no_grad`` so it
    never records an autograd graph. ``unfreeze()`` makes it trainable (then call ``train()``).

    Attributes:
        dim: Width D of the tokens.
        grid: `(h, w)` patch grid of the backbone at ``image_size``, before pooling.
        num_prefix_tokens: Prefix tokens (class, register, distillation) the backbone produces.
        image_size: `(H, W)` the encoder takes.
        layout: The ``TokenLayout`` applied to the backbone's tokens.
        transform: Preprocessing that turns PIL images, paths or uint8 tensors into the input batch.
        frozen: Whether the encoder is frozen.

    Shapes:
        images: `[B, 3, H, W]` float, normalised as ``transform`` does, `(H, W) = image_size`.
        output: `[B, num_tokens, dim]` in the parameters' dtype; the prefix tokens at ``prefix_span``,
        the (pooled) patch tokens in raster order at ``patch_span``.
    """

    dim: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    image_size: tuple[int, int]
    transform: ImageTransform

    def __init__(self, *, layout: TokenLayout | None = None) -> None:
        super().__init__()
        self.layout = TokenLayout() if layout is None else layout
        self.frozen = False

    @abc.abstractmethod
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone's prefix tokens `[B, P, D]` and patch tokens `[B, h*w, D]` (raster order)."""

    @property
    def num_tokens(self) -> int:
        """Length N of the output sequence."""
        return self.layout.num_tokens(self.num_prefix_tokens, self.grid)

    @property
    def output_grid(self) -> tuple[int, int]:
        """`(h, w)` of the patch tokens in the output (after pooling); `(0, 0)` if they are dropped."""
        return self.layout.output_grid(self.grid)

    @property
    def prefix_span(self) -> slice:
        """Positions of the prefix tokens in the output (empty when dropped)."""
        return self.layout.spans(self.num_prefix_tokens, self.grid)[0]

    @property
    def patch_span(self) -> slice:
        """Positions of the patch tokens in the output (empty when dropped)."""
        return self.layout.spans(self.num_prefix_tokens, self.grid)[1]

    def freeze(self) -> ImageEncoder:
        """Stop gradients to every parameter, switch to eval mode and keep it there."""
        self.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def unfreeze(self) -> ImageEncoder:
        """Make every parameter trainable again; the mode is left as it is (call ``train()``)."""
        self.requires_grad_(True)
        self.frozen = False
        return self

    def train(self, mode: bool = True) -> ImageEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(self.image_size):
            raise ValueError(
                f"expected images [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {list(images.shape)}; preprocess them with encoder.transform"
            )
        _check_float(images)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            prefix, patches = self.features(images)
            return self.layout(prefix, patches, self.grid)


def _check_float(images: Tensor) -> None:
    if not images.is_floating_point():
        raise ValueError(
            f"expected preprocessed float pixels, got {images.dtype}: raw pixels (uint8, PIL images, files) go "
            "through encoder.transform, which scales and normalises them"
        )
