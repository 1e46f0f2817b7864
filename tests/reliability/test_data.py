"""Every bad record of the data pipeline follows the declared policy: raise (naming the sample and the file) or
skip (and count, over the whole run, in worker processes too); odd image modes become RGB; a prompt the context
length robs of its image or its answer is reported."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from assemblies import DataConfig, create_assembly
from assemblies.demo import write_dataset
from assemblies.training import data_loader, recipe, train
from rwkvblocks.prompting import (
    IGNORE_INDEX,
    BadSampleError,
    ByteTokenizer,
    LLaVACollator,
    LLaVADataset,
    LLaVASample,
    Prompt,
    SkippedSample,
    SkipReport,
    prompt_builder,
)
from rwkvblocks.vision import load_image

LOGGER = "rwkvblocks.prompting.dataset"


def _header_png(width: int, height: int) -> bytes:
    """A 1x1 grey PNG whose header claims ``width`` x ``height`` (CRC fixed): a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _cut(fmt: str) -> bytes:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "ok.png")
    (root / "empty.png").write_bytes(b"")
    (root / "cut.jpg").write_bytes(_cut("JPEG"))
    (root / "cut.png").write_bytes(_cut("PNG"))
    (root / "notes.jpg").write_text("not an image")
    (root / "bomb.png").write_bytes(_header_png(100_000, 100_000))  # over PIL's own 2x limit
    (root / "big.png").write_bytes(_header_png(9000, 9000))  # 81 Mpx: over 64 Mpx, under PIL's warning
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "40px.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(root / "cmyk.jpg")
    palette = Image.new("P", (8, 8))
    palette.putpalette([10, 20, 30] * 256)
    palette.save(root / "palette.png")
    palette.info["transparency"] = 0
    palette.save(root / "palette_alpha.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(root / "grey16.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(root / "rgba.png")
    Image.new("LA", (8, 8), (90, 128)).save(root / "la.png")
    Image.new("1", (8, 8), 1).save(root / "bilevel.png")
    return root


# file, reason, what the message says, dataset arguments
FAILURES = {
    "missing": ("nowhere.png", "missing_image", "no file", {}),
    "zero_bytes": ("empty.png", "corrupt_image", "the file is empty", {}),
    "truncated_jpeg": ("cut.jpg", "corrupt_image", "truncated", {}),
    "truncated_png": ("cut.png", "corrupt_image", "truncated", {}),
    "not_an_image": ("notes.jpg", "corrupt_image", "cannot identify image file", {}),
    "bomb_over_pil_limit": ("bomb.png", "oversized_image", "decompression bomb", {}),
    "over_default_limit": (
        "big.png",
        "oversized_image",
        "9000x9000 = 81000000 pixels, more than max_pixels=64000000",
        {},
    ),
    "over_explicit_limit": (
        "40px.png",
        "oversized_image",
        "40x40 = 1600 pixels, more than max_pixels=1000",
        {"max_pixels": 1000},
    ),
}
# file -> expected RGB of pixel (0, 0)
MODES = {
    "cmyk.jpg": (255, 0, 255),
    "palette.png": (10, 20, 30),
    "palette_alpha.png": (10, 20, 30),
    "grey16.png": (156, 156, 156),  # 40000 / 257, not clipped to 255
    "rgba.png": (1, 2, 3),
    "la.png": (90, 90, 90),
    "bilevel.png": (255, 255, 255),
}


def record(i, image="ok.png", question="<image>\nWhat is it?", answer="A square."):
    rec = {"id": f"s{i}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


def dataset(tmp_path, images, records, policy="raise", **kwargs):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    builder = prompt_builder("image_first", ByteTokenizer())
    return LLaVADataset(path, images, builder, on_bad_sample=policy, **kwargs)


def sample_and_file(index, sample_id, file):
    """The message names the sample (id and index) first, then the file."""
    return rf"\Asample '{sample_id}' \(index {index}\): \w+: .*{re.escape(str(file))}"


# --- decode failures, main process ---------------------------------------------------------


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_decode_failure_raises_naming_sample_and_file(tmp_path, images, case):
    file, reason, says, kwargs = FAILURES[case]
    data = dataset(tmp_path, images, [record(0), record(1, file)], **kwargs)
    assert isinstance(data[0], LLaVASample)
    with pytest.raises(BadSampleError, match=sample_and_file(1, "s1", images / file)) as info:
        data[1]
    assert says in str(info.value)
    err = info.value
    assert (err.sample_id, err.index, err.reason, err.file) == ("s1", 1, reason, str(images / file))


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_decode_failure_is_skipped_and_counted(tmp_path, images, case):
    file, reason, says, kwargs = FAILURES[case]
    data = dataset(tmp_path, images, [record(0), record(1, file)], "skip", **kwargs)
    skipped = data[1]
    assert isinstance(skipped, SkippedSample)
    assert (skipped.index, skipped.sample_id, skipped.reason) == (1, "s1", reason)
    assert says in skipped.detail and str(images / file) in skipped.detail
    report = SkipReport()
    report.update(LLaVACollator(4)([data[0], data[1]]))
    assert report.counts() == {reason: 1} and report.summary() == f"skipped 1 of 2 samples: {reason} 1 (ids: s1)"


def test_bomb_is_refused_from_the_header_without_pil_warnings(tmp_path, images, recwarn):
    data = dataset(tmp_path, images, [record(0, "big.png"), record(1, "bomb.png")], "skip")
    assert [data[i].reason for i in range(2)] == ["oversized_image", "oversized_image"]
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    # no limit of ours: PIL's own limit (2x MAX_IMAGE_PIXELS) still refuses the bomb the same way
    loose = dataset(tmp_path, images, [record(1, "bomb.png")], "skip", max_pixels=None)
    assert loose[0].reason == "oversized_image" and "exceeds limit" in loose[0].detail
    with pytest.raises(ValueError, match="max_pixels must be a positive int or None, got 0"):
        dataset(tmp_path, images, [record(0)], max_pixels=0)


@pytest.mark.parametrize("file", sorted(MODES))
def test_odd_modes_become_rgb(tmp_path, images, file):
    data = dataset(tmp_path, images, [record(0, file)])
    (image,) = data[0].images
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert tuple(image[:, 0, 0].tolist()) == MODES[file]
    loaded = load_image(images / file)
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == MODES[file]


# --- load_image ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_load_image_refuses_naming_the_file(images, case):
    file, _, says, kwargs = FAILURES[case]
    error = FileNotFoundError if case == "missing" else ValueError
    with pytest.raises(error, match=re.escape(str(images / file))) as info:
        load_image(images / file, **kwargs)
    if case != "missing":
        assert says in str(info.value)


def test_load_image_limit_applies_to_pil_images_and_can_be_lifted(images):
    image = Image.new("RGB", (40, 40))
    with pytest.raises(ValueError, match="the image is 40x40 = 1600 pixels, more than max_pixels=1000"):
        load_image(image, max_pixels=1000)
    assert load_image(images / "40px.png", max_pixels=None).size == (40, 40)
    with pytest.raises(ValueError, match="max_pixels must be a positive int or None"):
        load_image(image, max_pixels=-1)


# --- DataLoader workers ----------------------------------------------------------------------


def _worker_records():
    good = [record(0), record(1, "palette.png")]
    bad = [record(2 + k, FAILURES[case][0]) for k, case in enumerate(sorted(FAILURES)) if not FAILURES[case][3]]
    long = record(99, question="<image>\n" + "Tell me everything about this picture, please. " * 3)
    return good + bad + [long]


def test_worker_raises_plainly_for_every_failure(tmp_path, images):
    records = _worker_records()
    data = dataset(tmp_path, images, records)
    collate = LLaVACollator(4, context_length=64, on_truncation="raise")
    loader = DataLoader(data, batch_size=1, num_workers=1, collate_fn=collate)
    iterator = iter(loader)  # one worker serves every case: an error ends the batch, not the loader
    assert next(iterator)["sample_ids"] == ["s0"] and next(iterator)["sample_ids"] == ["s1"]
    for index, rec in enumerate(records[2:], start=2):
        with pytest.raises(BadSampleError) as info:
            next(iterator)
        err = info.value
        first, second = str(err).splitlines()  # the original message, then where it came from
        if rec["id"] == "s99":
            assert first.startswith(f"sample 's99' (index {index}): truncated_image: ") and "'ok.png'" in first
            assert (err.sample_id, err.index, err.reason) == ("s99", index, "truncated_image")
        else:
            file, reason, says, _ = next(v for v in FAILURES.values() if v[0] == rec["image"])
            assert re.match(sample_and_file(index, rec["id"], images / file), first) and says in first
            assert (err.sample_id, err.index, err.reason, err.file) == (rec["id"], index, reason, str(images / file))
        assert second.startswith("(raised in DataLoader worker process 0")
        assert "Traceback (most recent call last)" in err.worker_traceback
    with pytest.raises(StopIteration):
        next(iterator)


def test_worker_skips_and_counts_every_failure(tmp_path, images):
    records = _worker_records()
    data = dataset(tmp_path, images, records, "skip")
    collate = LLaVACollator(4, context_length=64, on_truncation="skip")
    loader = DataLoader(data, batch_size=1, num_workers=1, collate_fn=collate)
    report = SkipReport()
    kept = [b["sample_ids"] for b in report.epoch(loader)]
    assert [ids for ids in kept if ids] == [["s0"], ["s1"]]
    assert report.counts() == {"missing_image": 1, "corrupt_image": 4, "oversized_image": 2, "truncated_image": 1}
    assert report.seen == len(records)


# --- the whole run ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_summary_covers_every_epoch(tmp_path, images, caplog, workers):
    data = dataset(tmp_path, images, [record(0), record(1, "notes.jpg"), record(2), record(3, "nowhere.png")], "skip")
    config = DataConfig(prompt="image_first", context_length=64, tokenizer="byte")
    loader = data_loader(data, config, image_tokens=4, batch_size=2, shuffle=False, num_workers=workers)
    report = SkipReport()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):  # the CLI's way: one report, an epoch per pass
            for _batch in report.epoch(loader):
                pass
    assert report.counts() == {"corrupt_image": 2, "missing_image": 2} and report.seen == 8
    assert report.summary() == "skipped 4 of 8 samples: corrupt_image 2 (ids: s1); missing_image 2 (ids: s3)"
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch done")]
    assert epoch_lines[0] == "epoch done: skipped 2 of 4 samples: corrupt_image 1 (ids: s1); missing_image 1 (ids: s3)"
    assert epoch_lines[1].endswith("whole run (2 epochs): " + report.summary())


# --- truncation --------------------------------------------------------------------------------


def _cut_image_dataset(tmp_path, images, policy):
    """s1's question pushes its answer out of a 40-position head, so the tail is kept and the image is cut."""
    long = record(1, question="<image>\n" + "Describe every detail of the image. " * 2)
    return dataset(tmp_path, images, [record(0), long], policy)


def test_truncation_losing_the_image_raises_naming_the_sample(tmp_path, images):
    data = _cut_image_dataset(tmp_path, images, "raise")
    config = DataConfig(prompt="image_first", context_length=40, tokenizer="byte")
    loader = data_loader(data, config, image_tokens=8, batch_size=2, shuffle=False, on_truncation="raise")
    with pytest.raises(BadSampleError, match=r"\Asample 's1' \(index 1\): truncated_image: .*'ok.png'") as info:
        next(iter(loader))
    assert "keeps 0 of its 8 positions" in str(info.value)
    assert (info.value.sample_id, info.value.index, info.value.reason) == ("s1", 1, "truncated_image")


def test_truncation_losing_the_image_is_skipped_counted_and_warned(tmp_path, images, caplog):
    data = _cut_image_dataset(tmp_path, images, "skip")
    config = DataConfig(prompt="image_first", context_length=40, tokenizer="byte")
    loader = data_loader(data, config, image_tokens=8, batch_size=2, shuffle=False, on_truncation="skip")
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (batch,) = list(report.epoch(loader))
    assert batch["sample_ids"] == ["s0"] and batch["image_spans"].tolist() == [[0, 6, 0, 8]]
    assert [(s.sample_id, s.reason) for s in batch["skipped"]] == [("s1", "truncated_image")]
    assert report.summary() == "skipped 1 of 2 samples: truncated_image 1 (ids: s1)"
    assert "sample 's1' (index 1): truncated_image: " in caplog.text and "(skipped)" in caplog.text


def test_truncation_kept_as_cut_by_default_is_still_reported(tmp_path, images, caplog):
    """The collator's own default keeps the visible part of a cut image, as before, but reports it."""
    data = _cut_image_dataset(tmp_path, images, "skip")
    collate = LLaVACollator(8, context_length=98)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batch = collate([data[0], data[1]])
    assert batch["sample_ids"] == ["s0", "s1"]
    assert batch["image_spans"].tolist() == [[0, 6, 0, 8], [1, 0, 6, 2]]  # s1 keeps its image's last 2 features
    assert [(s.sample_id, s.reason) for s in batch["truncated"]] == [("s1", "truncated_image")]
    report = SkipReport()
    report.update(batch)
    assert report.summary() == "skipped 0 of 2 samples; kept 1 truncated: truncated_image 1 (ids: s1)"
    assert "keeps 12:110: image 0 (file 'ok.png') keeps 2 of its 8 positions (kept as cut)" in caplog.text


def _no_answer_left():
    """Labels only in the middle: the head (2 positions) has none, and neither has the tail."""
    n = IGNORE_INDEX
    return LLaVASample(4, "h4", Prompt("", [1, 2, 3, 4, 5, 6], [n, n, 3, n, n, n], []), [])


def test_truncation_losing_the_answer_raises_naming_the_sample():
    with pytest.raises(BadSampleError, match=r"\Asample 'h4' \(index 4\): truncated_answer: .*no supervised label"):
        LLaVACollator(4, context_length=2, on_truncation="raise")([_no_answer_left()])


def test_truncation_losing_the_answer_is_skipped_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batch = LLaVACollator(4, context_length=2, on_truncation="skip")([_no_answer_left()])
    assert batch["sample_ids"] == [] and [s.reason for s in batch["skipped"]] == ["truncated_answer"]
    report = SkipReport()
    report.update(batch)
    assert report.summary() == "skipped 1 of 1 samples: truncated_answer 1 (ids: h4)"
    assert "sample 'h4' (index 4): truncated_answer" in caplog.text


def test_a_sample_that_fits_is_not_reported(tmp_path, images, caplog):
    data = dataset(tmp_path, images, [record(0)])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batch = LLaVACollator(8, context_length=1000, on_truncation="raise")([data[0]])
    assert batch["truncated"] == [] and batch["skipped"] == [] and not caplog.records
    with pytest.raises(ValueError, match="on_truncation must be 'keep', 'raise' or 'skip', got 'drop'"):
        LLaVACollator(8, on_truncation="drop")


def test_train_reports_the_whole_run(tmp_path, caplog):
    """``train(skip_report=...)``: 3 passes over a 4-sample set with one broken image, ending mid-epoch."""
    align, _, pairs = write_dataset(tmp_path, 4, seed=0)
    (tmp_path / "images" / pairs[1][0]).write_bytes(b"")
    model = create_assembly("visualrwkv_tiny", tokenizer="byte")
    data = LLaVADataset(
        align,
        tmp_path / "images",
        prompt_builder("image_first", ByteTokenizer()),
        image_transform=model.encoder.transform.per_image,
        on_bad_sample="skip",
    )
    config = DataConfig(prompt="image_first", context_length=2048, tokenizer="byte")
    loader = data_loader(data, config, image_tokens=model.image_tokens, batch_size=2, shuffle=False)
    plan = recipe("alignment", batch_size=2, micro_batch_size=2)
    report = SkipReport()
    with caplog.at_level(logging.INFO):
        losses = train(model, loader, plan, steps=5, progress=False, skip_report=report)  # 2 batches an epoch
    assert len(losses) == 5 and report.epochs == 2  # the third pass stops after its first batch
    assert report.summary() == "skipped 3 of 10 samples: corrupt_image 3 (ids: a1)"
    assert f"training done: {report.summary()}" in caplog.text


def test_truncation_is_kept_counted_and_warned_by_default(tmp_path, images, caplog):
    """Long conversations are normal in LLaVA data: by default the cut sample trains on what is left, and is
    listed and warned about, whatever the policy for unreadable samples."""
    data = _cut_image_dataset(tmp_path, images, "raise")
    config = DataConfig(prompt="image_first", context_length=40, tokenizer="byte")
    loader = data_loader(data, config, image_tokens=8, batch_size=2, shuffle=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (batch,) = list(loader)
    assert batch["sample_ids"] == ["s0", "s1"]
    assert [s.sample_id for s in batch["truncated"]] == ["s1"] and "s1" in caplog.text
