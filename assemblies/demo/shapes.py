"""The shapes demo (``rwkvblocks demo --task shapes``): a VisualRWKV that must read the question and the image.

1. Writes disjoint train / test splits of ``assemblies.synthetic`` (coloured shapes on a 4 x 4 grid, one shape
   per 16 px patch; questions of the chosen types).
2. Builds a small VisualRWKV (RWKV-6, bidirectional scan, sandwich prompt, a two-layer ViT trained from scratch:
   no pretrained weights can be downloaded).
3. Trains it with the real entry point: stage 1 on captions (image first), stage 2 on the questions (sandwich),
   every parameter training (the encoder starts from random weights).
4. Scores the test questions per type through the batched generation API, next to a text-only baseline (the
   same model shown a blank image) and chance; saves the model with ``save_pretrained``; answers the questions
   of a fresh image; writes ``summary.json`` and ``report.png`` (loss curves, accuracy per type).

It returns 1 when the accuracy over all test questions is below ``threshold``.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["CHANCE", "run_shapes_demo"]

CHANCE = {"colour_at": 1 / 5, "shape_of": 1 / 3, "count": 1 / 4, "exists": 1 / 2, "left_of": 1 / 2, "above": 1 / 2}


def _build(dim: int, layers: int, seed: int, position: str = "learnable"):
    import dataclasses

    from ..models import EncoderConfig, create_assembly, get_assembly_config

    torch.manual_seed(seed)
    vision = {
        "width": 64,
        "layers": 2,
        "head_width": 32,
        "patch_size": 16,
        "image_size": 64,
        "pos_embed_type": position,
    }
    encoder = EncoderConfig("open_clip", "ViT-L-14-336", cls="last", options={"vision_overrides": vision})
    base, _ = get_assembly_config("visualrwkv_tiny")
    return create_assembly(
        "visualrwkv_tiny", encoder=encoder, lm=dataclasses.replace(base.lm, dim=dim, num_layers=layers)
    )


def _train_stage(model, json_file, images, stage_prompt: str, steps: int, lr: float, batch: int, label: str):
    from ..training import TrainRecipe, data_loader, make_dataset, train

    data = model.data_config
    plan = TrainRecipe(
        "full", {"context_length": data.context_length, "prompt": stage_prompt}, lr, lr / 20, batch, batch
    )
    stage_data = plan.data_for(data)
    dataset = make_dataset(stage_data, json_file, images, image_transform=model.encoder.transform.per_image)
    loader = data_loader(dataset, stage_data, image_tokens=model.image_tokens, batch_size=batch)
    print(f"{label}: {len(dataset)} conversations, {stage_data.prompt} prompt, {steps} steps of {batch}, lr {lr:g}")
    return train(model, loader, plan, steps=steps, description=label)


def _answers(model, questions: Sequence[dict], images: Path | None, batch: int = 32) -> list[str]:
    """Greedy answers to single-turn questions; ``images=None`` shows a blank grey image (text-only baseline)."""
    from PIL import Image

    from ..models import generate

    blank = Image.new("RGB", (64, 64), (110, 110, 110))
    out = []
    with torch.inference_mode():
        for i in range(0, len(questions), batch):
            part = questions[i : i + batch]
            convs = [[{"from": "human", "value": "<image>\n" + q["text"]}] for q in part]
            pics = [blank if images is None else images / q["image"] for q in part]
            out += [r.text.strip() for r in generate(model, convs, pics)]
    return out


def _score(questions: Sequence[dict], answers: Sequence[str]) -> dict[str, float]:
    right, total = defaultdict(int), defaultdict(int)
    for q, a in zip(questions, answers, strict=True):
        right[q["type"]] += a.lower() == q["answer"]
        total[q["type"]] += 1
    scores = {t: right[t] / total[t] for t in sorted(total)}
    scores["all"] = sum(right.values()) / max(1, sum(total.values()))
    return scores


def run_shapes_demo(
    out: str | None = None,
    *,
    types: Sequence[str] = ("colour_at",),
    n_train: int = 8000,
    n_test: int = 100,
    caption_steps: int = 0,
    qa_steps: int = 600,
    batch: int = 16,
    lr: float = 3e-3,
    dim: int = 128,
    layers: int = 2,
    threshold: float = 0.9,
    seed: int = 0,
    record: str | None = None,
    position: str = "learnable",
) -> int:
    """Run the shapes demo; returns 0 when the test accuracy over all questions reaches ``threshold``, else 1.

    Args:
        out: Keep data, checkpoint, ``summary.json`` and ``report.png`` here (default: a temporary directory).
        types: Question types (``assemblies.synthetic.QUESTION_TYPES``).
        n_train, n_test: Images per split (three questions each).
        caption_steps, qa_steps: Optimiser steps of stage 1 (captions) and stage 2 (questions).
        batch, lr: Batch size and peak learning rate of both stages (cosine to ``lr / 20``).
        dim, layers: Width and depth of the RWKV-6 language model.
        threshold: Pass mark of the test accuracy over all questions.
        seed: Seeds the data, the initialisation and the data order.
        record: Also write the printed table, timings and fresh answers to this markdown file (atomically).
        position: The encoder's position embedding: ``"learnable"`` (open_clip's default) or ``"sin_cos_2d"``
            (fixed 2D sine-cosine).
    """
    import tempfile

    from ..models import VisualRWKV
    from ..synthetic import ask, caption, draw, make_scene, write_split

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        train_files = write_split(root / "data", "train", n_train, seed=seed, types=types)
        test_files = write_split(root / "data", "test", n_test, seed=seed, types=types)
        questions = [json.loads(line) for line in test_files["questions"].read_text().splitlines()]
        print(f"data: {n_train} train and {n_test} test images ({len(questions)} test questions) in {root / 'data'}")
        model = _build(dim, layers, seed, position)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: RWKV-6 L{layers} C{dim}, bi scan, sandwich prompt, {model.image_tokens} image tokens, "
            f"{n_params / 1e6:.2f} M parameters (all trained from scratch)"
        )
        losses = {}
        if caption_steps:
            losses["stage 1 (captions)"] = _train_stage(
                model,
                train_files["captions"],
                train_files["images"],
                "image_first",
                caption_steps,
                lr,
                batch,
                "stage 1 (captions)",
            )
        losses["stage 2 (questions)"] = _train_stage(
            model,
            train_files["conversations"],
            train_files["images"],
            model.data_config.prompt,
            qa_steps,
            lr,
            batch,
            "stage 2 (questions)",
        )
        t_train = time.perf_counter() - t0
        model.eval()
        scores = _score(questions, _answers(model, questions, test_files["images"]))
        blind = _score(questions, _answers(model, questions, None))
        chance = {t: CHANCE[t] for t in scores if t != "all"}
        save_dir = model.save_pretrained(root / "checkpoint")
        reloaded = VisualRWKV.from_pretrained(save_dir)

        rng = random.Random(f"fresh-{seed}")
        scene = make_scene(rng)
        fresh = root / "fresh.png"
        draw(scene).save(fresh)
        asked = {q["question"]: q for q in (ask(scene, t, rng) for t in types for _ in range(2)) if q is not None}
        fresh_q = [{"text": q["question"], "image": fresh.name, **q} for q in asked.values()]
        fresh_a = _answers(reloaded, fresh_q, root)

        rows = ["| question type | trained | text only (blank image) | chance |", "| --- | ---: | ---: | ---: |"]
        for t in [*chance, "all"]:
            c = chance.get(t, sum(CHANCE[x] for x in chance) / len(chance))
            rows.append(f"| {t} | {scores[t]:.1%} | {blind[t]:.1%} | {c:.1%} |")
        print("\n".join(rows))
        print(f"fresh image {fresh} ({caption(scene)}):")
        for q, a in zip(fresh_q, fresh_a):
            print(f"  Q: {q['text']}  A: {a!r}  truth: {q['answer']!r}")
        elapsed = time.perf_counter() - t0
        summary = {
            "types": list(types),
            "scores": scores,
            "text_only": blind,
            "chance": chance,
            "threshold": threshold,
            "train_seconds": t_train,
            "total_seconds": elapsed,
            "parameters": n_params,
            "checkpoint": str(save_dir),
            "fresh": [{"question": q["text"], "answer": a, "truth": q["answer"]} for q, a in zip(fresh_q, fresh_a)],
            "losses": losses,
        }
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
        _report(root / "report.png", losses, scores, blind, chance)
        print(
            f"summary: {root / 'summary.json'}, report: {root / 'report.png'}; total {elapsed:.0f} s "
            f"(training {t_train:.0f} s)"
        )
        if record:
            _record(Path(record), rows, summary)
        passed = scores["all"] >= threshold
        if not passed:
            print(f"FAILED: test accuracy {scores['all']:.1%} is below the pass mark of {threshold:.0%}")
        return 0 if passed else 1


def _report(path: Path, losses: dict, scores: dict, blind: dict, chance: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    start = 0
    for name, curve in losses.items():
        a.plot(range(start, start + len(curve)), curve, label=name)
        start += len(curve)
    a.set(xlabel="optimiser step", ylabel="loss", yscale="log", title="training loss")
    a.legend()
    kinds = list(chance)
    x = torch.arange(len(kinds)).tolist()
    b.bar([i - 0.27 for i in x], [scores[k] for k in kinds], 0.27, label="trained")
    b.bar(x, [blind[k] for k in kinds], 0.27, label="text only (blank image)")
    b.bar([i + 0.27 for i in x], [chance[k] for k in kinds], 0.27, label="chance")
    b.set_xticks(x, kinds)
    b.set(ylim=(0, 1), ylabel="test accuracy", title="accuracy per question type")
    b.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _record(path: Path, rows: list[str], summary: dict) -> None:
    import platform
    import sys

    from .._io import atomic_file

    lines = [
        "# `rwkvblocks demo --task shapes`",
        "",
        f"`{' '.join(['rwkvblocks', *sys.argv[1:]])}`; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{summary['parameters'] / 1e6:.2f} M parameters; "
        f"training {summary['train_seconds']:.0f} s, total {summary['total_seconds']:.0f} s.",
        "",
        *rows,
        "",
        "Fresh image:",
        "",
        *(f"- Q: {f['question']} A: {f['answer']!r} (truth {f['truth']!r})" for f in summary["fresh"]),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(("\n".join(lines) + "\n").encode())
