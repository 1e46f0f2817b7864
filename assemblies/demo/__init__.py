"""The end-to-end demo (``make demo``): the paper's recipe on a toy task, on a CPU, in about a minute.

1. Writes a synthetic LLaVA-format dataset: 56 px images of one coloured square on grey, with
   conversations about its colour, as JSON + PNG files (nothing is downloaded).
2. Builds ``visualrwkv_tiny`` (RWKV-6 with bidirectional scanning, sandwich prompt, CLS-last image tokens)
   over the 257-id byte tokenizer, and gives its language model a short text-only warm-up (standing in for
   a pretrained RWKV checkpoint, which ``create_assembly(..., init_lm=path)`` would load).
3. Stage 1 (alignment: projector only, image-first prompt) and stage 2 (instruction tuning: projector and
   language model, sandwich prompt), with sample-level loss, through ``LLaVADataset`` / ``LLaVACollator``.
4. ``save_pretrained`` -> ``from_pretrained`` and greedy answers on held-out images, decoded token by
   token with the recurrent state; prints the accuracy and checks the reloaded model answers the same.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["PASS_ACCURACY", "run_demo", "write_dataset"]

PASS_ACCURACY = 0.75  # of the held-out colours; chance is 0.25
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def write_dataset(root: Path, n: int, seed: int) -> tuple[Path, Path, list[tuple[str, str]]]:
    """Images and two LLaVA JSON files (alignment, instruction); returns them and (file, colour) pairs."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    align, instruct, pairs = [], [], []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        image = Image.new("RGB", (56, 56), (128, 128, 128))
        x, y, s = rng.randint(0, 30), rng.randint(0, 30), rng.randint(18, 26)
        ImageDraw.Draw(image).rectangle([x, y, x + s, y + s], fill=COLOURS[colour])
        name = f"{i:04d}.png"
        image.save(images / name)
        pairs.append((name, colour))
        align.append(
            {
                "id": f"a{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": f"A {colour} square."},
                ],
            }
        )
        instruct.append(
            {
                "id": f"i{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "What colour is the square?\n<image>"},
                    {"from": "gpt", "value": colour},
                ],
            }
        )
    (root / "align.json").write_text(json.dumps(align))
    (root / "instruct.json").write_text(json.dumps(instruct))
    return root / "align.json", root / "instruct.json", pairs


def _warm_up_language_model(model, tokenizer, steps: int, seed: int) -> list[float]:
    """Text-only next-token training of the LM on the chat format (a stand-in for pretraining)."""
    from tqdm import tqdm

    from rwkvblocks import SampleLevelCE

    rng = random.Random(seed)
    lm = model.lm
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    loss_fn = SampleLevelCE()
    losses = []
    for _ in tqdm(range(steps), desc="LM warm-up (text only)", unit="step"):
        texts = [
            f"User: What colour is it?\n\nAssistant: {rng.choice(sorted(COLOURS))}\n\n"
            f"User: Describe it.\n\nAssistant: A {rng.choice(sorted(COLOURS))} square.\n\n"
            for _ in range(8)
        ]
        ids = [tokenizer.encode(t) for t in texts]
        width = max(map(len, ids))
        batch = torch.tensor([x + [0] * (width - len(x)) for x in ids])
        labels = batch.masked_fill(batch == 0, -100)
        logits, _ = lm(batch)
        loss = loss_fn(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _answer(model, builder, transform, image_path: Path) -> str:
    from PIL import Image

    conv = [{"from": "human", "value": "What colour is the square?\n<image>"}]
    prompt = builder.build(conv, mode="inference")
    ids, _, starts = prompt.expand(model.image_tokens)
    with Image.open(image_path) as im:
        pixels = transform(im.convert("RGB"))  # [1, 3, H, W]
    spans = torch.tensor([[0, starts[0], 0, model.image_tokens]])
    out = model.generate(torch.tensor([ids]), pixels, spans, max_new_tokens=8, stop_tokens=(11, 0))  # "\n" ends it
    return builder.tokenizer.decode(out).strip()


def run_demo(steps: int = 200, out: str | None = None, seed: int = 0, record: str | None = None) -> int:
    """Run the demo; returns 0 when the reloaded model answers as the trained one and at least
    ``PASS_ACCURACY`` of the held-out colours are right, else 1.

    Args:
        steps: Optimiser steps of the warm-up and of each stage.
        out: Keep the dataset and checkpoint in this directory (default: a temporary one).
        seed: Seed of the dataset and the initialisation.
        record: Also write the result table (markdown) to this file.
    """
    from ..models import VisualRWKV, create_assembly
    from ..training import TrainRecipe, data_loader, make_dataset, make_prompt_builder, make_tokenizer, train

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        align_json, instruct_json, pairs = write_dataset(root / "data", 400, seed)
        held_out = pairs[-40:]
        print(f"dataset: {len(pairs)} images and conversations in {root / 'data'} ({len(held_out)} held out)")

        model = create_assembly("visualrwkv_tiny")
        cfg, data = model.config, model.data_config
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: visualrwkv_tiny — {cfg.lm.version} L{cfg.lm.num_layers} C{cfg.lm.dim}, scan {cfg.scan}, "
            f"prompt {data.prompt}, {model.image_tokens} image tokens (CLS {cfg.encoder.cls}), "
            f"{n_params / 1e6:.2f} M parameters"
        )
        tokenizer = make_tokenizer(data)
        warm = _warm_up_language_model(model, tokenizer, steps, seed)

        transform = model.encoder.transform
        results = {"LM warm-up": warm}
        for stage, json_file, lr in (("alignment", align_json, 2e-3), ("instruction", instruct_json, 1e-3)):
            # the paper's stage data (stage 1: image first), at the toy's context length
            plan = TrainRecipe(stage, {"context_length": data.context_length}, lr, lr / 100, 16, 16)
            if stage == "alignment":
                plan = plan.replace(data_changes={"prompt": "image_first"})
            stage_data = plan.data_for(data)
            dataset = make_dataset(stage_data, json_file, root / "data" / "images", image_transform=transform.per_image)
            train_items = torch.utils.data.Subset(dataset, range(len(pairs) - len(held_out)))
            loader = data_loader(train_items, stage_data, image_tokens=model.image_tokens, batch_size=16)
            print(f"stage {stage}: {stage_data.prompt} prompt, AdamW {lr:g} -> {lr / 100:g} cosine, batch 16")
            results[f"stage {stage}"] = train(model, loader, plan, steps=steps)

        save_dir = model.save_pretrained(root / "checkpoint")
        reloaded = VisualRWKV.from_pretrained(save_dir)
        builder = make_prompt_builder(reloaded.data_config, tokenizer)  # inference: the model's own prompt
        images = root / "data" / "images"
        answers = [_answer(model, builder, transform, images / f) for f, _ in held_out]
        again = [_answer(reloaded, builder, transform, images / f) for f, _ in held_out]
        correct = sum(a == colour for a, (_, colour) in zip(answers, held_out))
        needed = math.ceil(PASS_ACCURACY * len(held_out))

        lines = ["| phase | first loss | last loss (mean of 10) |", "| --- | ---: | ---: |"]
        for phase, losses in results.items():
            lines.append(f"| {phase} | {losses[0]:.3f} | {sum(losses[-10:]) / len(losses[-10:]):.3f} |")
        lines.append("")
        lines.append(
            f"held-out answers (greedy, token by token): {correct}/{len(held_out)} correct colours "
            f"(chance {len(held_out) // len(COLOURS)}, pass mark {needed}); e.g. "
            + ", ".join(f"{c}->{a!r}" for a, (_, c) in list(zip(answers, held_out))[:4])
        )
        same = again == answers
        lines.append(f"save_pretrained -> from_pretrained: {'same answers' if same else 'DIFFERENT answers'}")
        print("\n" + "\n".join(lines))
        where = f"checkpoint {save_dir}" if out else "checkpoint in a temporary directory (--out DIR keeps it)"
        elapsed = time.perf_counter() - t_start
        print(f"{where}; total {elapsed:.0f} s")
        if record:
            _record(Path(record), lines, steps, seed, elapsed)
        if correct < needed:
            print(f"FAILED: {correct}/{len(held_out)} correct is below the pass mark of {needed}")
        return 0 if same and correct >= needed else 1


def _record(path: Path, lines: list[str], steps: int, seed: int, elapsed: float) -> None:
    import platform

    from .._io import atomic_file

    header = [
        "# `make demo` (`rwkvblocks demo`)",
        "",
        f"`python -m assemblies.cli demo --steps {steps} --seed {seed} --record {path}`; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{elapsed:.0f} s.",
        "",
    ]
    with atomic_file(path) as f:
        f.write(("\n".join(header + lines) + "\n").encode())
