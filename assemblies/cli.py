"""The ``rwkvblocks`` command.

    rwkvblocks convert SRC DST [--dtype bf16] [--no-encoder-weights]   upstream .pth -> safetensors dir
    rwkvblocks list [PATTERN]                                           presets and their knobs
    rwkvblocks info                                                     ops x backends on this machine
    rwkvblocks demo [--steps N] [--out DIR]                             the end-to-end demo (make demo)
"""

from __future__ import annotations

import argparse
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


def _list(args: argparse.Namespace) -> int:
    from .registry import get_assembly_config, list_assemblies

    names = list_assemblies(args.pattern)
    if not names:
        print(f"no preset matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(f"{'preset':<34} {'lm':<18} {'scan':<6} {'prompt':<12} {'encoder':<14} {'cls':<5} hybrid  loss")
    for name in names:
        c = get_assembly_config(name)
        lm = f"{c.lm.version} L{c.lm.num_layers} C{c.lm.dim}"
        scan = c.scan if isinstance(c.scan, str) else "custom"
        hybrid = ",".join(map(str, c.hybrid_layers)) or "-"
        print(f"{name:<34} {lm:<18} {scan:<6} {c.prompt:<12} {c.encoder.name:<14} {c.encoder.cls:<5} {hybrid:<7} {c.loss}")
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
    p = sub.add_parser("list", help="list the presets")
    p.add_argument("pattern", nargs="?", default="*")
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
