"""The ``rwkvblocks`` command.

    rwkvblocks convert SRC DST [--dtype bf16] [--no-encoder-weights]   upstream .pth -> safetensors dir
    rwkvblocks train --preset NAME --stage alignment --data JSON --images DIR --out DIR [--init-lm PTH]
    rwkvblocks list [PATTERN] [--params]                                presets, knobs, parameter counts
    rwkvblocks info                                                     ops x backends on this machine
    rwkvblocks demo [--steps N] [--out DIR]                             the end-to-end demo (make demo)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

__all__ = ["main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _convert(args: argparse.Namespace) -> int:
    from .pretrained import load_upstream, save_pretrained

    t0 = time.perf_counter()
    print(f"reading {args.src} (torch.load, weights_only=True) ...", flush=True)
    model = load_upstream(args.src, dtype=DTYPES[args.dtype] if args.dtype else None)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"  {cfg.lm.version}, {cfg.lm.num_layers} layers, C={cfg.lm.dim}, hybrid layers {list(cfg.hybrid_layers)}, "
        f"encoder {cfg.encoder.name} ({model.image_tokens} tokens), {params / 1e9:.3f} B parameters"
    )
    out = save_pretrained(model, args.dst, encoder_weights=not args.no_encoder_weights)
    print(f"wrote {out}/config.json and {out}/model.safetensors in {time.perf_counter() - t0:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from torch.utils.data import DataLoader

    from rwkvblocks.prompting import ByteTokenizer, LLaVACollator, LLaVADataset, SkipReport, WorldTokenizer, prompt_builder

    from .pretrained import from_pretrained, save_pretrained
    from .registry import create_assembly
    from .train import recipe, train

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.init:
        model = from_pretrained(args.init, device=device, dtype=dtype)
    else:
        model = create_assembly(args.preset, init_lm=args.init_lm, device=device, dtype=dtype)
    changes = {k: v for k, v in (
        ("batch_size", args.batch_size), ("micro_batch_size", args.micro_batch_size), ("epochs", args.epochs),
        ("context_length", args.context_length), ("lr_init", args.lr_init), ("lr_final", args.lr_final),
    ) if v is not None}  # fmt: skip
    prompt = "image_first" if args.stage == "alignment" else model.config.prompt
    plan = recipe(args.stage, args.size, prompt=prompt, **changes)
    tokenizer = ByteTokenizer() if args.tokenizer == "byte" else WorldTokenizer()
    if tokenizer.vocab_size > model.lm.vocab_size:
        raise ValueError(f"the {args.tokenizer} tokenizer has {tokenizer.vocab_size} ids, the model {model.lm.vocab_size}")
    dataset = LLaVADataset(
        args.data, args.images, prompt_builder(plan.prompt, tokenizer),
        image_transform=model.encoder.transform.per_image, on_bad_sample=args.on_bad_sample,
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=plan.micro_batch_size, shuffle=True, num_workers=args.workers,
        collate_fn=LLaVACollator(model.image_tokens, plan.context_length),
    )  # fmt: skip
    report = SkipReport()

    class _Epochs:  # every pass over the loader is an epoch of the skip report
        def __iter__(self):
            return report.epoch(loader)

    print(f"{args.stage}: {len(dataset)} samples, {plan}", flush=True)
    losses = train(model, _Epochs(), plan, steps=args.steps, micro_batches_per_epoch=len(loader))
    out = save_pretrained(model, args.out)
    log = {"stage": args.stage, "recipe": dataclasses.asdict(plan), "losses": losses, "skipped": report.summary()}
    (Path(out) / f"train_{args.stage}.json").write_text(json.dumps(log, indent=2))
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; {report.summary()}; saved to {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .registry import create_assembly, get_assembly_config, list_assemblies

    names = list_assemblies(args.pattern)
    if not names:
        print(f"no preset matches {args.pattern!r}", file=sys.stderr)
        return 1
    extra = f" {'params (B)':>10} {'LM (B)':>8}" if args.params else ""
    print(f"{'preset':<34} {'lm':<18} {'scan':<6} {'prompt':<12} {'encoder':<14} {'cls':<5} hybrid  loss {extra}")
    for name in names:
        c = get_assembly_config(name)
        lm = f"{c.lm.version} L{c.lm.num_layers} C{c.lm.dim}"
        scan = c.scan if isinstance(c.scan, str) else "custom"
        hybrid = ",".join(map(str, c.hybrid_layers)) or "-"
        counts = ""
        if args.params:  # built on the meta device: shapes only, no memory
            model = create_assembly(name, device="meta")
            total = sum(p.numel() for p in model.parameters()) / 1e9
            counts = f" {total:>10.3f} {sum(p.numel() for p in model.lm.parameters()) / 1e9:>8.3f}"
        print(f"{name:<34} {lm:<18} {scan:<6} {c.prompt:<12} {c.encoder.name:<14} {c.encoder.cls:<5} {hybrid:<7} {c.loss:<6}{counts}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from rwkvblocks.info import report

    print(report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(steps=args.steps, out=args.out, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rwkvblocks", description="rwkvblocks: VisualRWKV building blocks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert an upstream VisualRWKV .pth into a save_pretrained directory")
    p.add_argument("src", help="upstream checkpoint (.pth)")
    p.add_argument("dst", help="output directory (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default: the checkpoint's)")
    p.add_argument("--no-encoder-weights", action="store_true", help="leave the frozen encoder's weights out")
    p.set_defaults(run=_convert)
    p = sub.add_parser("train", help="run one stage of the paper's recipe on LLaVA-format data")
    p.add_argument("--preset", default="visualrwkv_1b6_clipl336", help="assembly to build (ignored with --init)")
    p.add_argument("--init", help="continue from a save_pretrained directory (stage 2 after stage 1)")
    p.add_argument("--init-lm", help="BlinkDL RWKV .pth to start the language model from (stage 1)")
    p.add_argument("--stage", choices=["alignment", "instruction"], required=True)
    p.add_argument("--size", default="1b6", choices=["1b6", "3b", "7b"], help="selects the stage-2 learning rates")
    p.add_argument("--data", required=True, help="LLaVA-1.5 JSON file")
    p.add_argument("--images", help="image root folder")
    p.add_argument("--out", required=True, help="output directory (save_pretrained + train_<stage>.json)")
    p.add_argument("--tokenizer", choices=["world", "byte"], default="world")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--context-length", type=int)
    p.add_argument("--lr-init", type=float)
    p.add_argument("--lr-final", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default fp32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--on-bad-sample", choices=["raise", "skip"], default="raise")
    p.set_defaults(run=_train)
    p = sub.add_parser("list", help="list the presets")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--params", action="store_true", help="count parameters (each preset built on the meta device)")
    p.set_defaults(run=_list)
    p = sub.add_parser("info", help="ops, backends and devices on this machine")
    p.set_defaults(run=_info)
    p = sub.add_parser("demo", help="train a tiny VisualRWKV on synthetic images, save, reload and answer")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per stage")
    p.add_argument("--out", help="keep the run directory here (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"rwkvblocks {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
