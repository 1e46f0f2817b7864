"""The LLaVA data pipeline on synthetic JSON files and images made in a temporary folder."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rwkvblocks.prompting import (
    IGNORE_INDEX,
    BadSampleError,
    ByteTokenizer,
    ImageFirstPromptBuilder,
    LLaVACollator,
    LLaVADataset,
    LLaVASample,
    Prompt,
    SandwichPromptBuilder,
    SkippedSample,
    SkipReport,
    _records,
)
from rwkvblocks.prompting._records import JsonRecords

COLORS = {"red.png": (255, 0, 0), "green.jpg": (0, 255, 0), "blue.png": (0, 0, 255)}


def b(text: str) -> list[int]:
    """Byte tokenizer ids, written out independently of the code under test."""
    return [x + 1 for x in text.encode("utf-8")]


def sample(i, image="red.png", question="<image>\nWhat is it?", answer="A square."):
    record = {
        "id": f"s{i}",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name, color in COLORS.items():
        Image.new("RGB", (6, 4), color).save(root / name)
    (root / "garbage.png").write_bytes(b"this is not an image at all")
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return root


def write(path, records, indent=None):
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


# --- the lazy record index ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["indented", "compact", "jsonl", "bom"])
def test_records_read_back_across_tiny_blocks(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(_records, "_BLOCK_BYTES", 7)  # splits multi-byte characters and records
    records = [{"id": i, "v": "é世😀" * i + '"},{ ]', "n": [{"a": 1}, {"b": [2, {}]}]} for i in range(40)]
    path = tmp_path / "data.json"
    if layout == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    elif layout == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False).encode("utf-8"))
    else:
        write(path, records, indent=2 if layout == "indented" else None)
    index = JsonRecords(path)
    assert len(index) == 40
    assert [index[i] for i in range(40)] == records
    assert index[-1] == records[-1]
    with pytest.raises(IndexError, match="record 40 out of range for 40 records"):
        index[40]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("[", "the array is not closed"),
        ('[{"a":1} {"b":2}]', r"expected ',' or '\]' at byte 9 \(record 1\)"),
        ('[{"a":1},]', r"invalid JSON \(Expecting value\) at byte 9 \(record 1\)"),
        ("[1, 2]", r"expected a JSON object, found int at byte 1 \(record 0\)"),
        ('[{"a":1}] x', r"data after the closing '\]'"),
        ('{"a":1}\n{"a":', r"invalid JSON .* \(record 1\)"),
    ],
)
def test_records_reject_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        JsonRecords(path)


def test_empty_array_is_an_empty_dataset(tmp_path):
    assert len(LLaVADataset(write(tmp_path / "d.json", []), None, ImageFirstPromptBuilder(ByteTokenizer()))) == 0


# --- samples ----------------------------------------------------------------------------


class CountingTokenizer(ByteTokenizer):
    def __init__(self):
        self.texts = []

    def encode(self, text):
        self.texts.append(text)
        return super().encode(text)


def test_only_requested_items_are_tokenized(tmp_path, image_root):
    tok = CountingTokenizer()
    builder = ImageFirstPromptBuilder(tok)
    tok.texts.clear()
    records = [sample(i, question=f"<image>\nQuestion {i}?") for i in range(1000)]
    data = LLaVADataset(write(tmp_path / "d.json", records), image_root, builder)
    assert len(data) == 1000 and tok.texts == []
    item = data[637]
    assert tok.texts == ["User: ", "\nQuestion 637?\n\n", "Assistant: A square.\n\n"]
    assert item.sample_id == "s637" and item.index == 637


def test_image_sample_content(tmp_path, image_root):
    records = [
        sample(0, image="green.jpg"),
        sample(1, image=None, question="Hi"),
        sample(2, image=["red.png", "blue.png"], question="<image><image>Same?"),
    ]
    data = LLaVADataset(write(tmp_path / "d.json", records), image_root, ImageFirstPromptBuilder(ByteTokenizer()))
    first = data[0]
    assert isinstance(first, LLaVASample)
    assert first.prompt.text == "User: <image>\nWhat is it?\n\nAssistant: A square.\n\n"
    assert first.prompt.input_ids == b("User: ") + b("\nWhat is it?\n\n") + b("Assistant: A square.\n\n")
    assert first.prompt.image_offsets == [len(b("User: "))]
    (image,) = first.images
    assert image.shape == (3, 4, 6) and image.dtype == torch.uint8
    assert (image[1].float().mean() > 240) and (image[0].float().mean() < 15)  # green, after JPEG
    text_only = data[1]
    assert text_only.images == [] and text_only.prompt.image_offsets == []
    two = data[2]
    assert [tuple(x[:, 0, 0].tolist()) for x in two.images] == [(255, 0, 0), (0, 0, 255)]
    assert two.prompt.text.startswith("User: <image>\n<image>\nSame?\n\n")


BAD = {
    "missing_image": (sample(7, image="nowhere.png"), "no file .*nowhere.png"),
    "corrupt_image": (sample(7, image="garbage.png"), "cannot decode .*garbage.png"),
    "truncated_jpeg": (sample(7, image="truncated.jpg"), "cannot decode .*truncated.jpg"),
    "empty_answer": (sample(7, answer="  \n"), r"turn 1 \(gpt\) is empty"),
    "placeholder_without_image": (sample(7, image=None), r"1 <image> placeholder\(s\) and 0 image file\(s\)"),
    "image_without_placeholder": (
        sample(7, question="What is it?"),
        r"0 <image> placeholder\(s\) and 1 image",
    ),
    "turn_order": (
        {"id": "s7", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        "must alternate human/gpt",
    ),
    "image_field": (sample(7, image=3), "'image' must be a path or a list of paths, got 3"),
    "no_conversations": ({"id": "s7", "image": "red.png"}, "a conversation is a list of turns, got NoneType"),
}
REASON = {
    "truncated_jpeg": "corrupt_image",
    "empty_answer": "empty_turn",
    "placeholder_without_image": "image_mismatch",
    "image_without_placeholder": "image_mismatch",
    "image_field": "malformed",
    "no_conversations": "malformed",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_raises_with_its_id(tmp_path, image_root, case):
    record, detail = BAD[case]
    path = write(tmp_path / "d.json", [sample(0), record])
    data = LLaVADataset(path, image_root, ImageFirstPromptBuilder(ByteTokenizer()))
    reason = REASON.get(case, case)
    with pytest.raises(BadSampleError, match=rf"sample 's7' \(index 1\): {reason}: .*{detail}") as info:
        data[1]
    assert info.value.sample_id == "s7" and info.value.reason == reason


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_is_skipped_with_its_reason(tmp_path, image_root, case):
    record, _ = BAD[case]
    path = write(tmp_path / "d.json", [sample(0), record])
    data = LLaVADataset(path, image_root, ImageFirstPromptBuilder(ByteTokenizer()), on_bad_sample="skip")
    skipped = data[1]
    assert isinstance(skipped, SkippedSample)
    assert (skipped.index, skipped.sample_id, skipped.reason) == (1, "s7", REASON.get(case, case))
    assert isinstance(data[0], LLaVASample)


def test_dataset_argument_errors(tmp_path, image_root):
    path = write(tmp_path / "d.json", [sample(0)])
    builder = ImageFirstPromptBuilder(ByteTokenizer())
    with pytest.raises(ValueError, match="on_bad_sample must be 'raise' or 'skip', got 'ignore'"):
        LLaVADataset(path, image_root, builder, on_bad_sample="ignore")
    with pytest.raises(ValueError, match="builder must be a PromptBuilder, got str"):
        LLaVADataset(path, image_root, "sandwich")
    with pytest.raises(ValueError, match="pass image_root"):
        LLaVADataset(path, None, builder)[0]


# --- collation ----------------------------------------------------------------------------


def item(ids, labels, offsets, images=(), sample_id="x"):
    return LLaVASample(0, sample_id, Prompt("", list(ids), list(labels), list(offsets)), list(images))


def test_collate_pads_right_and_places_image_spans():
    img = [torch.full((3, 2, 2), float(k)) for k in range(3)]
    items = [
        item([1, 2, 3], [-100, 2, 3], [1], img[:1], "a"),
        item([4, 5], [-100, 5], [], [], "b"),
        item([6], [-100], [0, 1], img[1:], "c"),
    ]
    batch = LLaVACollator(image_tokens=3, pad_id=0)(items)
    assert batch["input_ids"].tolist() == [
        [1, 0, 0, 0, 2, 3, 0],
        [4, 5, 0, 0, 0, 0, 0],
        [0, 0, 0, 6, 0, 0, 0],
    ]
    n = IGNORE_INDEX
    assert batch["labels"].tolist() == [[n, n, n, n, 2, 3, n], [n, 5, n, n, n, n, n], [n] * 7]
    assert batch["lengths"].tolist() == [6, 2, 7]
    assert batch["image_spans"].tolist() == [[0, 1, 0, 3], [2, 0, 0, 3], [2, 4, 0, 3]]
    assert torch.equal(batch["images"], torch.stack(img))
    assert batch["sample_ids"] == ["a", "b", "c"] and batch["skipped"] == []


def test_truncation_keeps_the_head_when_a_label_survives_else_the_tail():
    n = IGNORE_INDEX
    collate = LLaVACollator(image_tokens=4, context_length=5)
    # expanded: 1 2 [image x4] 3 4 5 6 -> 10 positions
    head = collate([item([1, 2, 3, 4, 5, 6], [n, 2, n, n, n, 6], [2], [torch.zeros(1)])])
    assert head["input_ids"].tolist() == [[1, 2, 0, 0, 0]] and head["labels"].tolist() == [[n, 2, n, n, n]]
    assert head["image_spans"].tolist() == [[0, 2, 0, 3]]  # the image's first 3 features
    tail = collate([item([1, 2, 3, 4, 5, 6], [n, n, n, n, n, 6], [2], [torch.zeros(1)])])
    assert tail["input_ids"].tolist() == [[0, 3, 4, 5, 6]] and tail["labels"].tolist() == [[n, n, n, n, 6]]
    assert tail["image_spans"].tolist() == [[0, 0, 3, 1]]  # the image's last feature only


def test_truncation_head_with_label_and_dropped_image():
    collate = LLaVACollator(image_tokens=3, context_length=4)
    batch = collate([item([1, 2, 3, 4, 5], [IGNORE_INDEX, 2, 3, 4, 5], [5], [torch.zeros(1)])])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, 4]]
    assert batch["images"] is None and batch["image_spans"].shape == (0, 4)


def test_collate_drops_skipped_samples_and_checks_image_shapes():
    skipped = SkippedSample(3, "bad", "corrupt_image", "cannot decode")
    batch = LLaVACollator(image_tokens=2)([skipped])
    assert batch["input_ids"].shape == (0, 0) and batch["skipped"] == [skipped]
    mixed = [item([1], [1], [0], [torch.zeros(3, 2, 2)]), item([1], [1], [0], [torch.zeros(3, 4, 4)])]
    with pytest.raises(ValueError, match=r"one shape, got \[\(3, 2, 2\), \(3, 4, 4\)\]"):
        LLaVACollator(image_tokens=2)(mixed)
    with pytest.raises(ValueError, match="image_tokens must be a positive int, got 0"):
        LLaVACollator(image_tokens=0)
    with pytest.raises(ValueError, match="context_length must be a positive int or None, got -1"):
        LLaVACollator(image_tokens=1, context_length=-1)


# --- a DataLoader with worker processes ------------------------------------------------------


def _loader_dataset(tmp_path, image_root, policy):
    records = [sample(i, image=["red.png", "blue.png"][i % 2], answer=f"Answer {i}.") for i in range(10)]
    records[5] = sample(5, image="garbage.png")
    records.insert(8, sample(10, image=None, question="No image here?", answer="Right."))
    return LLaVADataset(
        write(tmp_path / "d.json", records, indent=1),
        image_root,
        SandwichPromptBuilder(ByteTokenizer()),
        on_bad_sample=policy,
    )


def test_dataloader_with_two_workers_skips_and_reports(tmp_path, image_root, caplog):
    data = _loader_dataset(tmp_path, image_root, "skip")
    collate = LLaVACollator(image_tokens=5, context_length=64)
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate)
    report = SkipReport()
    with caplog.at_level(logging.INFO, logger="rwkvblocks.prompting.dataset"):
        batches = list(report.epoch(loader))
    assert [bt["sample_ids"] for bt in batches] == [
        ["s0", "s1", "s2", "s3"],
        ["s4", "s6", "s7"],
        ["s10", "s8", "s9"],
    ]
    assert report.counts() == {"corrupt_image": 1} and report.seen == 11
    assert report.summary() == "skipped 1 of 11 samples: corrupt_image 1 (ids: s5)"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "epoch done: skipped 1 of 11 samples: corrupt_image 1 (ids: s5)" in caplog.text
    # the same batches as collating in this process
    for k, bt in enumerate(batches):
        expected = collate([data[i] for i in range(4 * k, min(4 * k + 4, len(data)))])
        assert torch.equal(bt["input_ids"], expected["input_ids"]) and torch.equal(bt["labels"], expected["labels"])
        assert torch.equal(bt["images"], expected["images"])
        assert torch.equal(bt["image_spans"], expected["image_spans"])
    # spot-check one row against the sandwich template by hand: s1 is blue, 5 image tokens
    row = batches[0]["input_ids"][1].tolist()
    head = b("User: What is it?\n")
    assert row[: len(head)] == head and row[len(head) : len(head) + 5] == [0] * 5
    assert batches[0]["images"][1][:, 0, 0].tolist() == [0, 0, 255]
    answer = b(" Answer 1.\n\n")
    labels = [x for x in batches[0]["labels"][1].tolist() if x != IGNORE_INDEX]
    assert labels == answer
    # the text-only sample has no span; a second epoch adds to the whole run's counts
    assert batches[2]["image_spans"][:, 0].tolist() == [1, 2]
    list(report.epoch(loader))
    assert report.seen == 22 and len(report.skipped) == 2


def test_dataloader_with_two_workers_raises_under_raise_policy(tmp_path, image_root):
    data = _loader_dataset(tmp_path, image_root, "raise")
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=LLaVACollator(image_tokens=5))
    with pytest.raises(BadSampleError, match=r"sample 's5' \(index 5\): corrupt_image"):
        list(loader)


def test_clean_epoch_logs_info(caplog):
    report = SkipReport()
    batch = {"sample_ids": ["a", "b"], "skipped": []}
    with caplog.at_level(logging.INFO, logger="rwkvblocks.prompting.dataset"):
        assert list(report.epoch([batch])) == [batch]
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert report.summary() == "skipped 0 of 2 samples"


def test_summary_lists_reasons_and_caps_ids():
    report = SkipReport()
    skipped = [SkippedSample(i, f"m{i}", "missing_image", "") for i in range(7)] + [
        SkippedSample(9, "e", "empty_turn", "")
    ]
    report.update({"sample_ids": ["ok"], "skipped": skipped})
    assert report.summary(max_ids=2) == (
        "skipped 8 of 9 samples: empty_turn 1 (ids: e); missing_image 7 (ids: m0, m1, ...)"
    )
