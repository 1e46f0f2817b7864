"""Generated 20-question benchmarks in each of the eight LLaVA-1.5 file formats, with their ground truth.

``make_benchmark(name, root)`` writes the question file, the images (PIL) and the ground truth exactly as the
formats in ``assemblies.evaluation.benchmarks`` describe them, and returns their paths plus ``truth``: for every
question, an answer that the benchmark's scorer counts right (to build oracle answers files from).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

from PIL import Image

SHORT = "\nAnswer the question using a single word or phrase."
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "purple", "orange", "pink", "gray"]
RGB = {
    "red": (220, 20, 20),
    "blue": (20, 20, 220),
    "green": (20, 200, 20),
    "yellow": (230, 230, 20),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
    "purple": (130, 20, 160),
    "orange": (250, 140, 0),
    "pink": (250, 150, 200),
    "gray": (128, 128, 128),
}
N = 20


class Generated(NamedTuple):
    questions: Path
    images: Path | None
    annotations: Path
    truth: list[tuple[object, str, str]]  # (question_id, question text as in the file, a right answer)


def _image(colour: str) -> Image.Image:
    return Image.new("RGB", (60, 50), RGB[colour])


def _save(root: Path, rel: str, colour: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(colour).save(path)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _vqav2(root: Path) -> Generated:
    images, rows, annotations, truth = root / "val2014", [], [], []
    for i in range(N):
        colour = COLOURS[i % len(COLOURS)]
        name = f"COCO_val2014_{i:012d}.jpg"
        _save(images, name, colour)
        text = "What colour is the picture?" + SHORT
        rows.append({"question_id": 1000 + i, "image": name, "text": text, "category": "default"})
        humans = [colour] * 7 + ["dark " + colour] * 3
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(humans)]
        annotations.append({"question_id": 1000 + i, "image_id": i, "answers": answers, "answer_type": "other"})
        truth.append((1000 + i, text, colour.capitalize() + "."))
    ann = root / "v2_mscoco_val2014_annotations.json"
    ann.write_text(json.dumps({"annotations": annotations}))
    return Generated(_jsonl(root / "llava_vqav2_val.jsonl", rows), images, ann, truth)


def _gqa(root: Path) -> Generated:
    images, rows, table, truth = root / "images", [], {}, []
    for i in range(N):
        colour = COLOURS[i % len(COLOURS)]
        _save(images, f"n{i}.jpg", colour)
        qid = str(20968000 + i)
        text = "Which colour is the picture?" + SHORT
        rows.append({"question_id": qid, "image": f"n{i}.jpg", "text": text})
        table[qid] = {"imageId": f"n{i}", "question": "Which colour is the picture?", "answer": colour}
        truth.append((qid, text, colour.capitalize() + "."))
    ann = root / "testdev_balanced_questions.json"
    ann.write_text(json.dumps(table))
    return Generated(_jsonl(root / "llava_gqa_testdev_balanced.jsonl", rows), images, ann, truth)


def _textvqa(root: Path) -> Generated:
    images, rows, data, truth = root / "train_images", [], [], []
    asks = ["what colour is it?", "what does the sign say?"]
    for i in range(N):  # two questions per image: LLaVA's question_id is the image id, so ids repeat
        image_id = f"{i // 2:04x}abcd{i // 2:08x}"
        colour = COLOURS[(i // 2) % len(COLOURS)]
        if i % 2 == 0:
            _save(images, f"{image_id}.jpg", colour)
        ask = asks[i % 2]
        word = colour if i % 2 == 0 else "stop"
        text = f"{ask.capitalize()}\nReference OCR token: {word}, sign{SHORT}"
        rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
        data.append(
            {
                "question_id": 34000 + i,
                "image_id": image_id,
                "question": ask.capitalize(),
                "answers": [word] * 6 + ["a " + word] * 2 + ["other"] * 2,
            }
        )
        truth.append((image_id, text, word.upper()))
    ann = root / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps({"dataset_name": "textvqa", "dataset_split": "val", "data": data}))
    return Generated(_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", rows), images, ann, truth)


def _pope(root: Path) -> Generated:
    images, coco = root / "val2014", root / "coco"
    coco.mkdir(parents=True)
    rows, labels, truth = [], {"adversarial": [], "popular": [], "random": []}, []
    for i in range(N):
        split = ("adversarial", "popular", "random")[i % 3]
        colour = COLOURS[i % len(COLOURS)]
        name = f"COCO_val2014_{500 + i:012d}.jpg"
        _save(images, name, colour)
        thing = ("dog", "car", "person", "cup")[i % 4]
        label = "yes" if i % 2 == 0 else "no"
        bare = f"Is there a {thing} in the image?"
        rows.append({"question_id": i + 1, "image": name, "text": bare + SHORT, "category": split})
        labels[split].append({"question_id": len(labels[split]) + 1, "image": name, "text": bare, "label": label})
        truth.append((i + 1, bare + SHORT, "Yes, there is." if label == "yes" else "No, there is not."))
    for split, lines in labels.items():
        _jsonl(coco / f"coco_pope_{split}.json", lines)
    return Generated(_jsonl(root / "llava_pope_test.jsonl", rows), images, coco, truth)


def _mme(root: Path) -> Generated:
    base = root / "MME_Benchmark_release_version"
    rows, truth = [], []
    subtasks = [("existence", False), ("artwork", True), ("OCR", False), ("code_reasoning", False)]
    for i in range(N // 2):  # ten images, two questions each (one yes, one no)
        subtask, nested = subtasks[i % len(subtasks)]
        colour = COLOURS[i % len(COLOURS)]
        other = COLOURS[(i + 3) % len(COLOURS)]
        stem = f"{i:06d}"
        image = f"{subtask}/images/{stem}.jpg" if nested else f"{subtask}/{stem}.jpg"
        _save(base, image, colour)
        qa_dir = base / subtask / ("questions_answers_YN" if nested else "")
        qa_dir.mkdir(parents=True, exist_ok=True)
        asks = [(f"Is the picture {colour}?", "Yes"), (f"Is the picture {other}?", "No")]
        lines = []
        for k, (ask, answer) in enumerate(asks):
            # one answer file with upstream's two spaces before "Please", which the lookup must still find
            spaces = "  " if (i == 1 and k == 1) else " "
            lines.append(f"{ask}{spaces}Please answer yes or no.\t{answer}")
            text = f"{ask} Please answer yes or no.{SHORT}" if k == 0 else f"{ask}{SHORT}"
            rows.append({"question_id": f"{subtask}/{stem}.jpg", "image": image, "text": text, "category": subtask})
            truth.append((f"{subtask}/{stem}.jpg", text, answer))
        (qa_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return Generated(_jsonl(root / "llava_mme.jsonl", rows), base, base, truth)


def _scienceqa(root: Path) -> Generated:
    images = root / "images" / "test"
    items, problems, truth = [], {}, []
    for i in range(N):
        pid = str(100 + i)
        choices = COLOURS[i % 5 : i % 5 + 2 + i % 3]  # 2 to 4 choices
        answer = i % len(choices)
        has_image = i % 4 != 3
        options = " ".join(f"({'ABCDE'[k]}) {c}" for k, c in enumerate(choices))
        value = f"Context: N/A\nQuestion: Which colour is shown?\nOptions: {options}"
        item = {"id": pid, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}]}
        if has_image:
            _save(images, f"{pid}/image.png", choices[answer])
            item["image"] = f"{pid}/image.png"
            item["conversations"][0]["value"] = "<image>\n" + value
        items.append(item)
        problems[pid] = {
            "question": "Which colour is shown?",
            "choices": choices,
            "answer": answer,
            "hint": "",
            "image": "image.png" if has_image else None,
            "task": "closed choice",
            "split": "test",
        }
        truth.append((pid, value, "ABCDE"[answer]))
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": sorted(problems)}))
    questions = root / "llava_test_CQM-A.json"
    questions.write_text(json.dumps(items, indent=1))
    return Generated(questions, images, root, truth)


def _mmbench(root: Path, chinese: bool) -> Generated:
    names = ["红", "蓝", "绿", "黄"] if chinese else ["red", "blue", "green", "yellow"]
    ask = "图片是什么颜色？" if chinese else "What colour is the picture?"
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category"]
    rows, truth = [], []
    for i in range(N // 2):  # ten questions, each with one circularly shifted copy (index + 1_000_000)
        count = 2 + i % 3
        options = [names[(i + k) % 4] for k in range(count)]
        right = i % count
        buffer = io.BytesIO()
        _image(["red", "blue", "green", "yellow"][(i + right) % 4]).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        for shift in range(2):
            shown = options[shift:] + options[:shift]
            letter = "ABCD"[shown.index(options[right])]
            cells = shown + ["nan"] * (4 - count)  # empty options, as pandas writes them
            hint = "nan" if i % 2 else ("提示" if chinese else "Look closely.")
            index = i + shift * 1_000_000
            rows.append([index, ask, hint, *cells, letter, "colour", image, "generated", "perception"])
            question = ask if hint == "nan" else hint + "\n" + ask
            for k, option in enumerate(shown):
                question += f"\n{'ABCD'[k]}. {option}"
            truth.append((index, question, letter))
    path = root / ("mmbench_dev_cn_20231003.tsv" if chinese else "mmbench_dev_20230712.tsv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return Generated(path, None, path, truth)


MAKERS = {
    "vqav2": _vqav2,
    "gqa": _gqa,
    "textvqa": _textvqa,
    "pope": _pope,
    "mme": _mme,
    "scienceqa": _scienceqa,
    "mmbench": lambda root: _mmbench(root, chinese=False),
    "mmbench_cn": lambda root: _mmbench(root, chinese=True),
}


def make_benchmark(name: str, root: Path) -> Generated:
    """Write benchmark ``name``'s 20 questions, images and ground truth under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return MAKERS[name](root)
