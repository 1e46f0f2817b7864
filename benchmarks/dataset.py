"""Opening and reading a large LLaVA-1.5 JSON file with ``LLaVADataset``, against ``json.load``.

    python benchmarks/dataset.py                # 100,000 synthetic conversations
    python benchmarks/dataset.py --quick        # 10,000

It writes a synthetic file in the LLaVA-1.5 instruction-mix format (1-5 rounds, 10% text only,
some Chinese) and a few small images to a temporary folder, then, each in a fresh subprocess:
opens it with ``LLaVADataset`` (the time and the resident memory it adds, current and peak),
loads it whole with ``json.load`` for comparison, reads random samples (World tokenizer, sandwich
prompt, image decoding) one by one, and iterates a DataLoader with 2 workers.
``--out DIR`` writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._machine import cpu_name  # noqa: E402

QUESTIONS = [
    "What is the man holding in his hand?",
    "Describe the image in detail.",
    "What color is the bus?\nAnswer the question using a single word or phrase.",
    "How many people are in the picture?",
    "图片中的动物是什么？",
    "Is there a dog in the image?\n\nPlease answer yes or no.",
]
ANSWERS = [
    "He is holding a red umbrella.",
    "The image shows a busy street with several cars, a bus and people walking on the sidewalk.",
    "Blue",
    "There are three people in the picture: two adults and a child.",
    "图片中的动物是一只猫。",
    "Yes",
]


def make_file(path: Path, entries: int, images: int = 8, seed: int = 0) -> None:
    """``entries`` LLaVA-1.5 samples referring to ``images`` image files (not written here)."""
    rng = random.Random(seed)
    records = []
    for i in range(entries):
        rounds = rng.randint(1, 5)
        turns = []
        for _ in range(rounds):
            turns.append({"from": "human", "value": rng.choice(QUESTIONS)})
            turns.append({"from": "gpt", "value": " ".join(rng.choices(ANSWERS, k=rng.randint(1, 3)))})
        record = {"id": f"{i:012d}", "conversations": turns}
        if rng.random() >= 0.1:
            record["image"] = f"coco/train2017/{i % images:012d}.jpg"
            turns[0]["value"] = rng.choice(["<image>\n", ""]) + turns[0]["value"]
            if "<image>" not in turns[0]["value"]:
                turns[0]["value"] += "\n<image>"
        records.append(record)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False)


def make_images(root: Path, images: int = 8) -> None:
    from PIL import Image

    folder = root / "coco" / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.effect_noise((336, 336), 40 + i).convert("RGB").save(folder / f"{i:012d}.jpg", quality=90)


def _rss() -> tuple[int, int]:
    """(current, peak) resident memory of this process in bytes."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak-RSS counter
        f.write("5")


def _probe(what: str, data_file: str, image_root: str, count: int) -> None:
    """Subprocess body: run one measurement, print it as JSON."""
    import torch
    from torch.utils.data import DataLoader

    from rwkvblocks.prompting import LLaVACollator, LLaVADataset, SandwichPromptBuilder, WorldTokenizer

    torch.set_num_threads(1)
    builder = SandwichPromptBuilder(WorldTokenizer())
    rss0, _ = _rss()
    _reset_peak()
    t0 = time.perf_counter()
    if what == "json.load":
        with open(data_file, encoding="utf-8") as f:
            held = json.load(f)
    else:
        held = LLaVADataset(data_file, image_root, builder)
    seconds = time.perf_counter() - t0
    rss1, peak = _rss()
    result = {"seconds": seconds, "rss": rss1 - rss0, "peak": peak - rss0, "n": len(held)}
    if what == "samples":
        order = random.Random(1).sample(range(len(held)), count)
        t0 = time.perf_counter()
        for i in order:
            held[i]
        result["seconds"] = time.perf_counter() - t0
    elif what == "loader":
        collate = LLaVACollator(image_tokens=577, context_length=2048)
        sampler = random.Random(2).sample(range(len(held)), count)
        loader = DataLoader(held, batch_size=16, sampler=sampler, num_workers=2, collate_fn=collate)
        t0 = time.perf_counter()
        seen = sum(len(batch["sample_ids"]) for batch in loader)
        result["seconds"] = time.perf_counter() - t0
        assert seen == count
    print(json.dumps(result))


def measure(what: str, data_file: Path, image_root: Path, count: int) -> dict:
    cmd = [sys.executable, __file__, "--_probe", what, str(data_file), str(image_root), str(count)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def _machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=1000, help="samples read one by one and through the loader")
    p.add_argument("--quick", action="store_true", help="10,000 entries, 200 samples")
    p.add_argument("--machine", help="the machine's name for the table's title (default: from /proc/cpuinfo)")
    p.add_argument("--out", type=Path, help="write the table to DIR/dataset-cpu.md")
    p.add_argument("--_probe", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        what, data_file, image_root, count = args._probe
        _probe(what, data_file, image_root, int(count))
        return
    entries, samples = (10_000, 200) if args.quick else (args.entries, args.samples)

    with tempfile.TemporaryDirectory() as tmp:
        data_file, image_root = Path(tmp) / "llava_synthetic.json", Path(tmp) / "images"
        make_file(data_file, entries)
        make_images(image_root)
        size = data_file.stat().st_size
        header = [
            f"# LLaVADataset on {args.machine or _machine()}",
            "",
            f"{entries:,} synthetic LLaVA-1.5 conversations ({size / 1e6:.1f} MB of JSON, 1-5 rounds, "
            f"10% text only), sandwich prompt, World tokenizer, 336 px JPEGs; each row in a fresh process; "
            f"command: `python benchmarks/dataset.py" + (" --quick" if args.quick else "") + "`",
            "",
            "| step | time | per sample | RSS added | peak RSS added |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        print("\n".join(header), flush=True)
        rows = []
        steps = [
            ("open: `LLaVADataset(...)`", "open", 0),
            ("open: `json.load` (for comparison)", "json.load", 0),
            (f"read {samples:,} random samples one by one", "samples", samples),
            (f"DataLoader, 2 workers, batch 16: {samples:,} random samples", "loader", samples),
        ]
        for label, what, count in steps:
            r = measure(what, data_file, image_root, count)
            per = f"{r['seconds'] / count * 1e3:.2f} ms" if count else "-"
            memory = (
                f"{r['rss'] / 2**20:.1f} MiB | {r['peak'] / 2**20:.1f} MiB"
                if what in ("open", "json.load")
                else "- | -"
            )
            rows.append(f"| {label} | {r['seconds']:.3f} s | {per} | {memory} |")
            print(rows[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "dataset-cpu.md"
        path.write_text("\n".join(header + rows) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
