"""Image URLs under limits: what is decoded, and what is refused before any pixel is decoded."""

from __future__ import annotations

import hashlib
import os

import pytest

from assemblies.serving import ApiError, ImageLimits, load_image_url
from tests.serving.conftest import data_url, png_bytes


def test_data_urls_decode_to_rgb_and_are_keyed_by_their_bytes():
    data = png_bytes((10, 20, 30), (7, 5))
    image, key = load_image_url(data_url(data), ImageLimits())
    assert image.mode == "RGB" and image.size == (7, 5) and image.getpixel((0, 0)) == (10, 20, 30)
    assert key == hashlib.sha256(data).hexdigest()
    jpeg, _ = load_image_url(data_url(png_bytes("red", fmt="JPEG"), "image/jpeg"), ImageLimits())
    assert jpeg.size == (60, 40)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png,abc", "must be base64"),
        ("http://127.0.0.1/x.png", "remote image URLs are not fetched"),
        ("ftp://host/x.png", "unsupported image URL scheme 'ftp'"),
        ("", "non-empty string"),
        ("file:///etc/passwd", "started without --image-dir"),
    ],
)
def test_urls_that_are_refused(url, words):
    with pytest.raises(ApiError, match=words):
        load_image_url(url, ImageLimits())


def test_limits_on_bytes_pixels_and_format():
    with pytest.raises(ApiError, match="more than the limit of 100 bytes"):
        load_image_url(data_url(png_bytes("red")), ImageLimits(max_bytes=100))
    with pytest.raises(ApiError, match="60x40 = 2400 pixels, more than the limit of 1000"):
        load_image_url(data_url(png_bytes("red")), ImageLimits(max_pixels=1000))
    with pytest.raises(ApiError, match="format TIFF is not accepted"):
        load_image_url(data_url(png_bytes("red", fmt="TIFF")), ImageLimits())
    with pytest.raises(ApiError, match="cannot decode the image"):
        load_image_url(data_url(png_bytes("red")[:-30]), ImageLimits())  # truncated
    with pytest.raises(ValueError, match="max_pixels must be an int >= 1"):
        ImageLimits(max_pixels=0)


def test_file_urls_stay_inside_the_image_dir(tmp_path):
    inside, outside = tmp_path / "images", tmp_path / "secret"
    inside.mkdir()
    outside.mkdir()
    (inside / "ok.png").write_bytes(png_bytes("red"))
    (outside / "no.png").write_bytes(png_bytes("blue"))
    os.symlink(outside / "no.png", inside / "link.png")
    limits = ImageLimits(image_dir=inside)
    image, _ = load_image_url((inside / "ok.png").as_uri(), limits)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    for path in (outside / "no.png", inside / "link.png"):  # a symbolic link out of the folder is refused too
        with pytest.raises(ApiError, match="is outside --image-dir"):
            load_image_url(path.as_uri(), limits)
    with pytest.raises(ApiError, match="is outside --image-dir"):
        load_image_url(f"file://{inside}/../secret/no.png", limits)
    with pytest.raises(ApiError, match="image file not found in --image-dir: missing.png"):
        load_image_url((inside / "missing.png").as_uri(), limits)
    with pytest.raises(ApiError, match="name a local path"):
        load_image_url("file://otherhost/x.png", limits)
    with pytest.raises(ValueError, match="is not a folder"):
        ImageLimits(image_dir=tmp_path / "nowhere")
