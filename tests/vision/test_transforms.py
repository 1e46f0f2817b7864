"""Preprocessing: upstream CLIP (Hugging Face ``CLIPImageProcessor``) numbers, input kinds, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rwkvblocks.vision import CLIP_MEAN, CLIP_STD, clip_transform, load_image


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _normalise(array):
    x = array.astype(np.float64) / 255.0
    return torch.from_numpy(((x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)).float()


def test_odd_crop_offset_rounds_down():
    # 343 x 336: no resize; 7 spare columns -> Hugging Face crops from column 3 (torchvision would use 4)
    image = _image(343, 336)
    out = clip_transform(336)(image)
    assert out.shape == (1, 3, 336, 336)
    torch.testing.assert_close(out[0], _normalise(np.asarray(image)[:, 3:339]), atol=1e-5, rtol=0)


def test_shortest_side_resize_truncates_the_long_side():
    # 500 x 333 -> 336 * 500 / 333 = 504.5 -> 504 columns (bicubic), then columns 84..419
    image = _image(500, 333, seed=1)
    resized = np.asarray(image.resize((504, 336), Image.Resampling.BICUBIC))
    out = clip_transform(336)(image)
    torch.testing.assert_close(out[0], _normalise(resized[:, 84:420]), atol=1e-5, rtol=0)


def test_portrait_image_crops_rows():
    image = _image(336, 340, seed=2)
    out = clip_transform(336)([image])
    torch.testing.assert_close(out[0], _normalise(np.asarray(image)[2:338]), atol=1e-5, rtol=0)


def test_pil_path_and_uint8_tensor_inputs_agree(tmp_path):
    image = _image(64, 48, seed=3)
    path = tmp_path / "image.png"
    image.save(path)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    transform = clip_transform(32)
    from_pil, from_path, from_str = transform(image), transform(path), transform(str(path))
    from_tensor, from_batch = transform(tensor), transform(torch.stack([tensor, tensor]))
    for other in (from_path, from_str, from_tensor):
        torch.testing.assert_close(other, from_pil)
    assert from_batch.shape == (2, 3, 32, 32)
    torch.testing.assert_close(from_batch[1:], from_pil)
    gray = image.convert("L")
    assert load_image(gray).mode == "RGB"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    _image(128, 96).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cannot read image file {path}"):
        clip_transform(32)([path])


def test_unreadable_and_missing_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"cannot read image file {text}"):
        load_image(text)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.png")):
        load_image(tmp_path / "absent.png")


def test_bad_tensors_and_arguments():
    with pytest.raises(ValueError, match="uint8 \\[3, H, W\\].*torch.float32"):
        load_image(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[4, 8, 8\]"):
        load_image(torch.zeros(4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        clip_transform(8)([])
    with pytest.raises(ValueError, match="got 0"):
        clip_transform(0)
