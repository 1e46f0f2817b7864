"""Several image encoders side by side, their patch tokens concatenated on channels (VisualRWKV-7, DESIGN.md §16).

Upstream VisualRWKV-7 runs DINOv2, SigLIP and SAM on the same image, each at its own resolution and with its own
normalisation, and concatenates their 32 x 32 patch grids into 1024 tokens of 1024 + 1152 + 1024 = 3200 channels.
``ConcatEncoder`` does that for any towers whose patch grids agree. Because the towers take different inputs, one
image is *packed*: every tower's preprocessed pixels, flattened and laid end to end in tower order
(``PackedTransform``), so a batch stays one `[B, P]` tensor that collators stack and devices move like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .encoder import ImageEncoder, _check_float
from .layout import TokenLayout
from .transforms import ImageTransform

__all__ = ["ConcatEncoder", "PackedTransform"]


class PackedTransform(ImageTransform):
    """Each tower's transform on the same image, flattened and concatenated: `[B, P]`, ``P = sum(3 * H_i * W_i)``.

    Args:
        transforms: The towers' ``ImageTransform``\\ s, in tower order, by tower name.

    Attributes:
        sizes: `(name, (H, W))` of every tower, in order: how ``ConcatEncoder.unpack`` splits a packed batch.
    """

    def __init__(self, transforms: Mapping[str, ImageTransform]) -> None:
        if not transforms:
            raise ValueError("PackedTransform needs at least one tower transform")
        self.transforms = dict(transforms)
        self.sizes = tuple((name, tuple(t.image_size)) for name, t in self.transforms.items())
        width = sum(3 * h * w for _, (h, w) in self.sizes)
        super().__init__(self._pack, image_size=(1, width))

    def _pack(self, image) -> Tensor:
        return torch.cat([t.per_image(image).reshape(-1) for t in self.transforms.values()])

    def __repr__(self) -> str:
        towers = ", ".join(f"{name}={t!r}" for name, t in self.transforms.items())
        return f"PackedTransform({towers})"


class ConcatEncoder(ImageEncoder):
    """Image towers run on the same images; their patch tokens concatenated on channels in tower order.

    Every tower must produce the same patch grid. Prefix tokens (class, registers) are never used: each tower's
    patch tokens are taken as the tower's ``features`` gives them (its own layout, e.g. pooling, is not
    applied), then this encoder's ``layout`` pools the concatenated grid (VisualRWKV-7: ``TokenLayout(
    prefix="none", pool=g, adaptive=True)``, upstream's ``AdaptiveAvgPool2d``).

    Args:
        towers: Encoders by name, in concatenation order (VisualRWKV-7: ``dino``, ``siglip``, ``sam``).
        layout: Pooling of the concatenated grid; the prefix placement must be ``"none"``.
        frozen: Start frozen (see ``ImageEncoder``); freezing or unfreezing applies to every tower.

    Attributes:
        dim: Sum of the towers' widths.
        grid: The common patch grid.
        image_size: `(1, P)`: a packed image (``PackedTransform``).

    Shapes:
        forward(images) -> `[B, num_tokens, dim]`, where ``images`` is a packed batch `[B, P]`, or the towers'
        own batches: a mapping from tower name to `[B, 3, H_i, W_i]`, or a sequence of them in tower order.
    """

    def __init__(
        self, towers: Mapping[str, ImageEncoder], *, layout: TokenLayout | None = None, frozen: bool = True
    ) -> None:
        layout = TokenLayout(prefix="none") if layout is None else layout
        if layout.prefix != "none":
            raise ValueError(f"ConcatEncoder layout prefix must be 'none', not {layout.prefix!r}")
        super().__init__(layout=layout)
        if not towers:
            raise ValueError("ConcatEncoder needs at least one tower")
        grids = {name: tuple(t.grid) for name, t in towers.items()}
        if len(set(grids.values())) != 1:
            raise ValueError(f"the towers' patch grids differ: {grids}; every tower must give the same grid")
        self.towers = nn.ModuleDict(dict(towers))
        self.grid = next(iter(grids.values()))
        self.dim = sum(t.dim for t in towers.values())
        self.num_prefix_tokens = 0
        self.transform = PackedTransform({name: t.transform for name, t in towers.items()})
        self.image_size = self.transform.image_size
        self.layout.num_tokens(0, self.grid)  # fail now on an impossible pooling
        if frozen:
            self.freeze()

    @property
    def sizes(self) -> tuple[tuple[str, tuple[int, int]], ...]:
        """`(name, (H, W))` of each tower's input, in order."""
        return tuple((name, tuple(t.image_size)) for name, t in self.towers.items())

    def unpack(self, images: Tensor | Mapping[str, Tensor] | Sequence[Tensor]) -> dict[str, Tensor]:
        """Each tower's pixel batch `[B, 3, H_i, W_i]` from a packed batch or the towers' own batches."""
        sizes = self.sizes
        if isinstance(images, Tensor):
            width = self.image_size[1]
            if images.dim() != 2 or images.shape[1] != width:
                towers = ", ".join(f"{n} 3x{h}x{w}" for n, (h, w) in sizes)
                raise ValueError(
                    f"expected packed images [B, {width}] (towers {towers}), got {list(images.shape)}; "
                    "preprocess them with encoder.transform"
                )
            _check_float(images)
            parts = images.split([3 * h * w for _, (h, w) in sizes], dim=1)
            return {name: part.reshape(-1, 3, h, w) for (name, (h, w)), part in zip(sizes, parts)}
        if isinstance(images, Mapping):
            unknown, missing = set(images) - set(self.towers), set(self.towers) - set(images)
            if unknown or missing:
                raise ValueError(
                    f"tower batches must be named {list(self.towers)}; missing {sorted(missing)}, "
                    f"unknown {sorted(unknown)}"
                )
            batches = {name: images[name] for name in self.towers}
        else:
            batches = list(images)
            if len(batches) != len(self.towers):
                raise ValueError(f"expected {len(self.towers)} tower batches ({list(self.towers)}), got {len(batches)}")
            batches = dict(zip(self.towers, batches))
        counts = set()
        for name, (h, w) in sizes:
            batch = batches[name]
            if not isinstance(batch, Tensor) or batch.dim() != 4 or tuple(batch.shape[1:]) != (3, h, w):
                shape = list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
                raise ValueError(f"tower {name!r} expects images [B, 3, {h}, {w}], got {shape}")
            _check_float(batch)
            counts.add(batch.shape[0])
        if len(counts) != 1:
            raise ValueError(f"the tower batches hold different numbers of images: {sorted(counts)}")
        return batches

    def pack(self, images: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """The packed batch `[B, P]` of the towers' own batches (the inverse of ``unpack``)."""
        batches = self.unpack(images)
        return torch.cat([b.reshape(b.shape[0], -1) for b in batches.values()], dim=1)

    def features(self, images: Tensor | Mapping[str, Tensor] | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        batches = self.unpack(images)
        patches = [tower.features(batches[name])[1] for name, tower in self.towers.items()]
        dtype = patches[0].dtype
        merged = torch.cat([p.to(dtype) for p in patches], dim=2)
        return merged.new_zeros(merged.shape[0], 0, merged.shape[2]), merged

    def forward(self, images: Tensor | Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
        batches = self.unpack(images)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            prefix, patches = self.features(batches)
            return self.layout(prefix, patches, self.grid)

    def freeze(self) -> ConcatEncoder:
        for tower in self.towers.values():
            tower.freeze()
        return super().freeze()

    def unfreeze(self) -> ConcatEncoder:
        for tower in self.towers.values():
            tower.unfreeze()
        return super().unfreeze()

    def extra_repr(self) -> str:
        return f"towers={list(self.towers)}, grid={self.grid}, dim={self.dim}, frozen={self.frozen}"
