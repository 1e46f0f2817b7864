"""The model API refuses raw pixels and misshaped images with a message about the images, takes dtypes as names,
and checks for NaN/inf only when asked (``validate=True``)."""

from __future__ import annotations

import pytest
import torch

from assemblies import VisualRWKV, create_assembly
from assemblies.models.dtypes import resolve_dtype


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_assembly("visualrwkv_base_tiny").eval()


def _call(model, images, spans=None):
    n = model.image_tokens
    spans = torch.tensor([[0, 2, 0, n]]) if spans is None else spans
    with torch.no_grad():
        return model(torch.randint(1, 257, (1, n + 6)), images=images, image_spans=spans)


def test_raw_uint8_pixels_are_refused_never_read_as_0_to_255(model):
    raw = torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8)
    with pytest.raises(ValueError, match="float pixels, got torch.uint8.*encoder.transform"):
        _call(model, raw)
    with pytest.raises(ValueError, match="float pixels, got torch.uint8"):
        model.encoder(raw)
    converted = model.encoder.transform(raw)  # the documented path: scaled and normalised
    assert converted.dtype == torch.float32 and converted.abs().max() < 5
    assert torch.isfinite(_call(model, converted).logits).all()


def test_wrong_image_rank_and_size_are_about_the_images_not_the_spans(model):
    one = torch.randn(3, 56, 56)
    with pytest.raises(ValueError, match=r"images must be a batch \[N, 3, H, W\].*images\[None\]"):
        _call(model, one)
    with pytest.raises(ValueError, match=r"images must be a batch .* got shape \(1, 3, 40, 40\)"):
        _call(model, torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="images must be a tensor"):
        _call(model, [torch.randn(3, 56, 56)])


def test_packed_images_of_visualrwkv7_are_checked_too():
    v7 = create_assembly("visualrwkv7_tiny").eval()
    width = v7.encoder.image_size[1]
    with pytest.raises(ValueError, match="float pixels"):
        _call(v7, torch.zeros(1, width, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"\[N, P\] packed = \[N, {width}\]"):
        _call(v7, torch.zeros(1, 3, 56, 56))


@pytest.mark.parametrize(
    "name, dtype",
    [("bf16", torch.bfloat16), ("float32", torch.float32), ("torch.float64", torch.float64), ("FP16", torch.float16)],
)
def test_dtypes_by_name(name, dtype, tmp_path):
    assert resolve_dtype(name) == dtype
    model = create_assembly("visualrwkv_tiny", dtype=name)
    assert model.lm.emb.weight.dtype == dtype
    model.save_pretrained(tmp_path / "m")
    assert VisualRWKV.from_pretrained(tmp_path / "m", dtype="fp32").lm.emb.weight.dtype == torch.float32


@pytest.mark.parametrize("bad", ["int8", "bfloat", torch.int32, 3])
def test_bad_dtypes_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="dtype"):
        create_assembly("visualrwkv_tiny", dtype=bad)


def test_nan_pixels_are_found_only_with_validate(model):
    images = torch.randn(1, 3, 56, 56)
    images[0, 0, 3, 3] = float("nan")
    unchecked = _call(model, images)  # the default path does not look (no host sync)
    assert not torch.isfinite(unchecked.logits).all()
    n = model.image_tokens
    with pytest.raises(ValueError, match=r"images hold NaN or infinite values \(1 entries\)"), torch.no_grad():
        model(
            torch.randint(1, 257, (1, n + 6)),
            images=images,
            image_spans=torch.tensor([[0, 2, 0, n]]),
            validate=True,
        )
