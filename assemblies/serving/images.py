"""Images of API requests, decoded in memory under limits: base64 ``data:`` URLs, or ``file://`` paths inside one
folder; never fetched from the network, never written to disk.

The byte limit is checked before decoding the base64 text, the pixel limit on the image header before PIL
decodes a single pixel, so a small file that would expand to gigabytes (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import ApiError

__all__ = ["FORMATS", "ImageLimits", "decode_image", "load_image_url"]

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


@dataclass(frozen=True)
class ImageLimits:
    """What the server accepts as an image.

    Attributes:
        max_bytes: Size of the encoded image (PNG, JPEG, ...) at most.
        max_pixels: Width times height at most.
        image_dir: The folder ``file://`` URLs may point into (``None``: ``file://`` refused).
    """

    max_bytes: int = 8 << 20
    max_pixels: int = 25_000_000
    image_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.image_dir is not None:
            folder = Path(self.image_dir).resolve()
            if not folder.is_dir():
                raise ValueError(f"image_dir {self.image_dir} is not a folder")
            object.__setattr__(self, "image_dir", folder)


def _too_large(size: int, limits: ImageLimits, param: str) -> ApiError:
    return ApiError(
        400,
        f"the image is {size} bytes, more than the limit of {limits.max_bytes} bytes (--max-image-bytes)",
        param=param,
        code="image_too_large",
    )


def _data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ApiError(400, "a data: image URL must be base64: data:image/png;base64,...", param=param)
    if (len(payload) * 3) // 4 > limits.max_bytes + 3:
        raise _too_large((len(payload) * 3) // 4, limits, param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(400, f"the data: image URL is not valid base64 ({err})", param=param) from None
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits, param)
    return data


def _file_url(url: str, limits: ImageLimits, param: str) -> bytes:
    if limits.image_dir is None:
        raise ApiError(400, "file:// image URLs are refused: the server was started without --image-dir", param=param)
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ApiError(400, f"file:// URLs name a local path, got host {parsed.netloc!r}", param=param)
    path = Path(unquote(parsed.path)).resolve()  # symbolic links and ".." resolved before the check
    if not path.is_relative_to(limits.image_dir):
        raise ApiError(400, f"the image file {path} is outside --image-dir", param=param)
    if not path.is_file():
        raise ApiError(400, f"image file not found in --image-dir: {path.relative_to(limits.image_dir)}", param=param)
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        raise _too_large(size, limits, param)
    with open(path, "rb") as f:
        return f.read(limits.max_bytes + 1)


def decode_image(data: bytes, limits: ImageLimits, param: str = "image_url"):
    """An RGB PIL image from encoded bytes, refused (``ApiError`` 400) when it is not an image PIL reads, is not
    one of ``FORMATS``, is larger than ``limits.max_pixels`` or is corrupt."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ApiError(400, "the image_url data is not an image (no known image format)", param=param) from None
    except Image.DecompressionBombError as err:
        raise ApiError(400, f"the image is a decompression bomb: {err}", param=param, code="image_too_large") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, f"cannot read the image: {err}", param=param) from None
    with image:
        if image.format not in FORMATS:
            raise ApiError(
                400, f"image format {image.format} is not accepted; send one of {', '.join(FORMATS)}", param=param
            )
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ApiError(
                400,
                f"the image is {width}x{height} = {width * height} pixels, more than the limit of {limits.max_pixels}"
                " (--max-image-pixels): refused before decoding (a decompression bomb, or too large)",
                param=param,
                code="image_too_large",
            )
        try:
            image.load()
            return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
            raise ApiError(400, f"cannot decode the image: {err}", param=param) from None


def load_image_url(url: str, limits: ImageLimits, param: str = "image_url"):
    """``(RGB PIL image, sha256 of the encoded bytes)`` of an ``image_url``.

    Raises:
        ApiError: 400 naming the problem: a remote or unknown URL scheme, bad base64, a ``file://`` path outside
            ``limits.image_dir``, or any refusal of ``decode_image``.
    """
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a non-empty string", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url(url, limits, param)
    elif scheme == "file":
        data = _file_url(url, limits, param)
    elif scheme in ("http", "https"):
        raise ApiError(400, "remote image URLs are not fetched: send the image as a base64 data: URL", param=param)
    else:
        raise ApiError(400, f"unsupported image URL scheme {scheme or url[:20]!r}: use a base64 data: URL", param=param)
    return decode_image(data, limits, param), hashlib.sha256(data).hexdigest()
