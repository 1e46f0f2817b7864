"""Image loading and preprocessing: PIL images, file paths or uint8 tensors in, a normalised batch out.

Each encoder carries the transform it expects (``encoder.transform``): timm models use timm's data config,
open_clip towers open_clip's preprocessing, and ``clip_transform`` reproduces the Hugging Face
``CLIPImageProcessor`` that upstream VisualRWKV uses. PIL (and timm or open_clip for theirs) is imported
only when a transform is built or called.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from .._images import to_rgb

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageInput",
    "ImageTransform",
    "clip_transform",
    "load_image",
    "squash_transform",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos")

ImageInput = Union["Image.Image", str, os.PathLike, Tensor]
"""One image: a PIL image, a path to an image file, or a uint8 tensor `[3, H, W]`."""


DEFAULT_MAX_PIXELS = 64_000_000
"""``load_image``'s default pixel limit: 64 megapixels (8000 x 8000), checked on the header before decoding."""


def load_image(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``image`` as a fully decoded RGB PIL image.

    Any mode is converted to RGB: CMYK, palette (through RGBA when it has transparency), grey, with alpha
    (dropped), 16- and 32-bit integer pixels (scaled to 8 bits, where PIL's own conversion would clip them)
    and float pixels (in [0, 1] scaled to [0, 255]).

    Args:
        image: A PIL image (converted to RGB), a path to an image file (decoded completely, so a
            truncated file fails here and not later), or a uint8 tensor `[3, H, W]` (RGB).
        max_pixels: A file whose header declares more pixels (width x height), or a PIL image with more, is
            refused before a pixel is decoded (a decompression bomb: a small file that expands to
            gigabytes). Default 64 megapixels; None leaves only PIL's own limit
            (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, refused here the same way).

    Raises:
        FileNotFoundError: The path does not exist; the message names it.
        ValueError: The file cannot be decoded (empty, not an image, truncated, corrupt) or declares more
            than ``max_pixels`` pixels — the message names the file — or a tensor that is not uint8
            `[3, H, W]`.
    """
    from PIL import Image

    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if isinstance(image, Image.Image):
        _check_pixels(image.size, max_pixels, "the image")
        return to_rgb(image)
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be uint8 [3, H, W] (RGB), got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())
    if isinstance(image, (str, os.PathLike)):
        return _read_image_file(Path(image), max_pixels)
    raise ValueError(f"expected a PIL image, a file path or a uint8 tensor, got {type(image).__name__}")


def _check_pixels(size: tuple[int, int], max_pixels: int | None, what: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}: refused"
            " before decoding (a decompression bomb, or too large)"
        )


def _read_image_file(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (header only), check the declared size, decode every pixel, convert to RGB."""
    import warnings

    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image file {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # the limit below decides, not PIL's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)  # reads the header only
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image file {path}: {err}; refused before decoding") from err
    except Exception as err:  # PIL's readers raise many types on malformed headers
        raise ValueError(f"cannot read image file {path}: {err}") from err
    with opened:
        _check_pixels(opened.size, max_pixels, f"image file {path}")
        try:
            opened.load()  # decode now: PIL is lazy and would report truncation much later
            return to_rgb(opened)
        except Exception as err:  # OSError, SyntaxError, ValueError, EOFError, struct.error...
            raise ValueError(f"cannot read image file {path}: {err}") from err


class ImageTransform:
    """Turns images in any accepted form into the normalised batch an encoder expects.

    Args:
        per_image: Maps one RGB PIL image to a float tensor `[3, H, W]` (resize, crop, scale,
            normalise), e.g. a torchvision ``Compose`` built by timm or open_clip.
        image_size: `(H, W)` that ``per_image`` produces.

    Shapes:
        Input: one image or a sequence of images (PIL images, file paths, uint8 tensors `[3, H, W]`),
        or a uint8 batch `[B, 3, H, W]`. Output: float32 `[B, 3, H, W]`.
    """

    def __init__(self, per_image: Callable[[Image.Image], Tensor], *, image_size: tuple[int, int]) -> None:
        self.per_image = per_image
        self.image_size = image_size

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        if isinstance(images, Tensor) and images.dim() == 4:
            items: Sequence[ImageInput] = list(images.unbind(0))
        elif isinstance(images, (str, os.PathLike, Tensor)) or not isinstance(images, Sequence):
            items = [images]
        else:
            items = images
        if not items:
            raise ValueError("expected at least one image, got an empty sequence")
        return torch.stack([self.per_image(load_image(item)) for item in items])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, per_image={self.per_image!r})"


class _ResizeCropNormalize:
    """Hugging Face ``CLIPImageProcessor`` on one RGB image (see ``clip_transform``)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        import numpy as np
        from PIL import Image

        size = self.size
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short != size:
            new_long = int(size * long / short)  # truncation, as transformers does
            new_size = (size, new_long) if width <= height else (new_long, size)
            image = image.resize(new_size, Image.Resampling.BICUBIC)
            width, height = new_size
        left, top = (width - size) // 2, (height - size) // 2  # floor: transformers' center_crop
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ResizeCropNormalize(size={self.size}, interpolation=bicubic)"


def clip_transform(
    size: int = 336,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> ImageTransform:
    """Upstream VisualRWKV's preprocessing (Hugging Face ``CLIPImageProcessor``, OpenAI CLIP settings).

    Resize the shortest side to ``size`` with PIL bicubic (the long side truncated to an integer), crop
    the centre ``size`` x ``size`` (offsets rounded down), scale to [0, 1], subtract ``mean``, divide by
    ``std``. open_clip's own transform differs only in rounding the crop offset to nearest.

    Args:
        size: Output side in pixels.
        mean: Per-channel mean (RGB).
        std: Per-channel standard deviation (RGB).

    Shapes:
        Returns an ``ImageTransform`` producing float32 `[B, 3, size, size]`.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    return ImageTransform(_ResizeCropNormalize(size, mean, std), image_size=(size, size))


class _SquashNormalize:
    """Resize to exactly `(H, W)` (aspect ratio not kept), scale to [0, 1], normalise (see ``squash_transform``)."""

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], interpolation: str) -> None:
        self.size = size
        self.interpolation = interpolation
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        import numpy as np
        from PIL import Image

        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), getattr(Image.Resampling, self.interpolation.upper()))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def __repr__(self) -> str:
        return f"SquashNormalize(size={self.size}, interpolation={self.interpolation})"


def squash_transform(
    size: int | tuple[int, int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> ImageTransform:
    """Upstream VisualRWKV-7's preprocessing: squash-resize to ``size`` (no crop), scale to [0, 1], normalise.

    The whole image is resized to exactly `(H, W)` with PIL (what torchvision's ``Resize((H, W))`` does on a
    PIL image), so a non-square image is stretched rather than cropped. Upstream v7.00 uses it for every
    tower: DINOv2 and SAM with ImageNet mean/std, SigLIP with 0.5/0.5, bicubic (timm's interpolation for
    both ViTs).

    Args:
        size: `(H, W)` or one side for a square output.
        mean, std: Per-channel normalisation (RGB).
        interpolation: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"lanczos"``.

    Shapes:
        Returns an ``ImageTransform`` producing float32 `[B, 3, H, W]`.
    """
    pair = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if interpolation not in _RESAMPLING:
        raise ValueError(f"interpolation must be one of {', '.join(_RESAMPLING)}, got {interpolation!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    return ImageTransform(_SquashNormalize(pair, mean, std, interpolation), image_size=pair)
