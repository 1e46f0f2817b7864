"""Tokens per second and peak memory of one training step of an RWKV language model, four ways.

    python benchmarks/train_step.py            # x060, 6 layers, C=512, V=65536, 8 samples of 64..512 tokens, fp32
    python benchmarks/train_step.py --quick    # 2 layers, C=128, 4 samples of 16..64 tokens

Every row runs in a fresh process on the CPU: forward, sample-level loss, backward and an AdamW step over the
same samples (lengths drawn uniformly, seeded), median of ``--repeats`` steps after a warm-up; "tokens" are the
samples' real tokens, so padding computed counts as time, not as tokens. The peak resident memory a step adds
(``/proc/self/clear_refs`` resets the peak) is reported on top of the process after warm-up. Rows:

- padded: one batch `[N, T_max]`, right-padded, labels -100 on the padding;
- packed: the samples laid end to end in one row `[1, sum(T_i)]` with ``cu_seqlens`` (nothing padded);
- each with and without activation checkpointing (``lm.activation_checkpointing = True``).

The padded and packed losses are the same sample-level loss (checked in the same run to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from assemblies import RWKVConfig, build_rwkv_lm  # noqa: E402
from benchmarks._machine import cpu_name  # noqa: E402
from rwkvblocks import SampleLevelCE  # noqa: E402

VARIANTS = ("padded", "padded + activation checkpointing", "packed", "packed + activation checkpointing")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def _samples(args) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.samples,), generator=g).tolist()
    return [torch.randint(0, args.vocab, (n,), generator=g) for n in lengths]


def _inputs(variant: str, samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if variant.startswith("packed"):
        row = torch.cat(samples)[None]
        offsets = torch.tensor([0] + [len(s) for s in samples]).cumsum(0)
        return row, row.clone(), offsets
    width = max(len(s) for s in samples)
    tokens = torch.zeros(len(samples), width, dtype=torch.long)
    labels = torch.full_like(tokens, -100)
    for i, s in enumerate(samples):
        tokens[i, : len(s)] = s
        labels[i, : len(s)] = s
    return tokens, labels, None


def _probe(variant: str, args) -> None:
    """Subprocess body: loss, median step seconds and peak RSS a step adds, as JSON."""
    torch.manual_seed(0)
    cfg = RWKVConfig(args.version, args.vocab, args.dim, args.layers, 64 if args.dim % 64 == 0 else 32)
    lm = build_rwkv_lm(cfg).train()
    lm.activation_checkpointing = "activation checkpointing" in variant
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    loss_fn = SampleLevelCE()
    samples = _samples(args)
    tokens, labels, offsets = _inputs(variant, samples)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits, _ = lm(tokens, cu_seqlens=offsets)
        loss = loss_fn(logits, labels, cu_seqlens=offsets) if offsets is not None else loss_fn(logits, labels)
        loss.backward()
        opt.step()
        return loss.item()

    first = step()  # warm-up: allocates AdamW's state; the first steps also pay for one-time dispatch work
    step()
    rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    real = sum(len(s) for s in samples)
    print(
        json.dumps(
            {
                "loss": first,
                "seconds": statistics.median(times),
                "spread": [min(times), max(times)],
                "tokens": real,
                "computed": tokens.numel(),
                "added": _status("VmHWM") - rss,
            }
        )
    )


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default="x060", choices=["x052", "x060", "x070"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 layers, C=128, V=1024, 4 samples of 16..64 tokens")
    p.add_argument("--out", type=Path, help="write the table to DIR/train-step-cpu.md")
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.vocab, args.samples, args.min_len, args.max_len = 2, 128, 1024, 4, 16, 64
        args.repeats = 3
    if args._probe:
        _probe(args._probe, args)
        return []
    forwarded = [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("version", "layers", "dim", "vocab", "samples")
    ]
    forwarded += [f"--min-len={args.min_len}", f"--max-len={args.max_len}", f"--repeats={args.repeats}"]
    title = (
        f"# One training step on the CPU ({cpu_name()}, {torch.get_num_threads()} threads)\n\n"
        f"{args.version}, {args.layers} layers, C={args.dim}, V={args.vocab}, fp32, AdamW; {args.samples} samples "
        f"of {args.min_len}..{args.max_len} tokens; median of {args.repeats} steps, one fresh process per row; "
        f"torch {torch.__version__}; command: `python benchmarks/train_step.py{' ' + ' '.join(argv) if argv else ''}`\n"
    )
    rows = [
        "| variant | positions computed | step (median, min..max) | real tokens/s | peak memory added | loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    print(title)
    print("\n".join(rows), flush=True)
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--_probe", variant, *forwarded]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[variant] = r
        lo, hi = r["spread"]
        rows.append(
            f"| {variant} | {r['computed']:,} | {r['seconds'] * 1e3:,.0f} ms ({lo * 1e3:,.0f}..{hi * 1e3:,.0f}) "
            f"| {r['tokens'] / r['seconds']:,.0f} | {r['added'] / 2**20:,.0f} MiB | {r['loss']:.5f} |"
        )
        print(rows[-1], flush=True)
    losses = [r["loss"] for r in results.values()]
    if max(losses) - min(losses) > 1e-5 * max(1.0, abs(losses[0])):
        raise SystemExit(f"the variants disagree on the loss: {losses}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train-step-cpu.md").write_text(title + "\n" + "\n".join(rows) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
