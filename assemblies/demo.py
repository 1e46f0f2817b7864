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
import random
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["run_demo"]

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
        align.append({"id": f"a{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": f"A {colour} square."},
        ]})  # fmt: skip
        instruct.append({"id": f"i{i}", "image": name, "conversations": [
            {"from": "human", "value": "What colour is the square?\n<image>"},
            {"from": "gpt", "value": colour},
        ]})  # fmt: skip
    (root / "align.json").write_text(json.dumps(align))
    (root / "instruct.json").write_text(json.dumps(instruct))
    return root / "align.json", root / "instruct.json", pairs


def _warm_up_language_model(model, tokenizer, steps: int, seed: int) -> list[float]:
    """Text-only next-token training of the LM on the chat format (a stand-in for pretraining)."""
    from rwkvblocks import SampleLevelCE
    from tqdm import tqdm

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


def _answer(model, builder, tokenizer, transform, image_path: Path) -> str:
    from PIL import Image

    conv = [{"from": "human", "value": "What colour is the square?\n<image>"}]
    prompt = builder.build(conv, mode="inference")
    ids, _, starts = prompt.expand(model.image_tokens)
    with Image.open(image_path) as im:
        pixels = transform(im.convert("RGB"))  # [1, 3, H, W]
    spans = torch.tensor([[0, starts[0], 0, model.image_tokens]])
    out = model.generate(torch.tensor([ids]), pixels, spans, max_new_tokens=8, stop_tokens=(11, 0))  # "\n" ends it
    return tokenizer.decode(out).strip()


def run_demo(steps: int = 200, out: str | None = None, seed: int = 0) -> int:
    """Run the demo; returns 0 when the reloaded model answers exactly as the trained one."""
    from rwkvblocks.prompting import ByteTokenizer, LLaVACollator, LLaVADataset, prompt_builder

    from .pretrained import from_pretrained, save_pretrained
    from .registry import create_assembly
    from .train import TrainRecipe, train

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        align_json, instruct_json, pairs = write_dataset(root / "data", 400, seed)
        held_out = pairs[-40:]
        print(f"dataset: {len(pairs)} images and conversations in {root / 'data'} ({len(held_out)} held out)")

        model = create_assembly("visualrwkv_tiny")
        cfg = model.config
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: visualrwkv_tiny — {cfg.lm.version} L{cfg.lm.num_layers} C{cfg.lm.dim}, scan {cfg.scan}, "
            f"prompt {cfg.prompt}, {model.image_tokens} image tokens (CLS {cfg.encoder.cls}), "
            f"{n_params / 1e6:.2f} M parameters"
        )
        tokenizer = ByteTokenizer()
        warm = _warm_up_language_model(model, tokenizer, steps, seed)

        transform = model.encoder.transform
        collate = LLaVACollator(model.image_tokens, context_length=cfg.context_length)
        results = {"LM warm-up": warm}
        for stage, prompt, data, lr in (
            ("alignment", "image_first", align_json, 2e-3),
            ("instruction", cfg.prompt, instruct_json, 1e-3),
        ):
            dataset = LLaVADataset(data, root / "data" / "images", prompt_builder(prompt, tokenizer), image_transform=transform.per_image)
            train_items = torch.utils.data.Subset(dataset, range(len(pairs) - len(held_out)))
            loader = torch.utils.data.DataLoader(train_items, batch_size=16, shuffle=True, collate_fn=collate)
            plan = TrainRecipe(stage, prompt, cfg.context_length, lr, lr / 100, batch_size=16, micro_batch_size=16)
            print(f"stage {stage}: {prompt} prompt, AdamW {lr:g} -> {lr / 100:g} cosine, batch 16")
            results[f"stage {stage}"] = train(model, loader, plan, steps=steps)

        save_dir = save_pretrained(model, root / "checkpoint")
        reloaded = from_pretrained(save_dir)
        builder = prompt_builder(cfg.prompt, tokenizer)
        answers = [_answer(model, builder, tokenizer, transform, root / "data" / "images" / f) for f, _ in held_out]
        again = [_answer(reloaded, builder, tokenizer, transform, root / "data" / "images" / f) for f, _ in held_out]
        correct = sum(a == colour for a, (_, colour) in zip(answers, held_out))

        print("\n| phase | first loss | last loss (mean of 10) |")
        print("| --- | ---: | ---: |")
        for phase, losses in results.items():
            print(f"| {phase} | {losses[0]:.3f} | {sum(losses[-10:]) / len(losses[-10:]):.3f} |")
        print(f"\nheld-out answers (greedy, token by token): {correct}/{len(held_out)} correct colours "
              f"(chance {len(held_out) // len(COLOURS)}); e.g. " + ", ".join(f"{c}->{a!r}" for a, (_, c) in list(zip(answers, held_out))[:4]))
        where = f"checkpoint {save_dir}" if out else "checkpoint in a temporary directory (--out DIR keeps it)"
        print(f"save_pretrained -> from_pretrained: {'same answers' if again == answers else 'DIFFERENT answers'}; {where}")
        print(f"total {time.perf_counter() - t_start:.0f} s")
        return 0 if again == answers else 1
