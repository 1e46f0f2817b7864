"""Peak memory and time of the next-token losses on large-vocabulary logits, ours vs plain PyTorch.

    python benchmarks/losses.py              # B=8 T=2048 V=65536 bf16 logits (a VisualRWKV micro-batch)
    python benchmarks/losses.py --quick      # B=2 T=512

Each row runs in a fresh process on the CPU: it builds the bf16 logits, then measures the peak resident
memory that one forward + backward adds on top of them (``/proc/self/clear_refs`` resets the peak) and
the wall time. "plain" is what one writes without care: ``F.cross_entropy(logits.float(), ...,
reduction="none")`` reduced per sample — it materialises an fp32 copy of the logits, its log-softmax
and an fp32 gradient. Both compute the same sample-level loss (checked to 1e-4 in the same run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkvblocks import SampleLevelCE  # noqa: E402


def _plain_sample_level(logits, labels):
    B, T, V = logits.shape
    per_token = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
    ).view(B, T - 1)
    valid = labels[:, 1:] != -100
    return ((per_token * valid).sum(1) / valid.sum(1).clamp_min(1)).mean()


IMPLEMENTATIONS = {"rwkvblocks SampleLevelCE": SampleLevelCE(), "plain F.cross_entropy (fp32)": _plain_sample_level}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def _probe(name: str, B: int, T: int, V: int) -> None:
    """Subprocess body: loss value, seconds and peak RSS added by forward + backward, as JSON."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, : T // 4] = -100  # a prompt without loss
    fn = IMPLEMENTATIONS[name]
    small = logits[:1, :8].detach().clone().requires_grad_()
    fn(small, labels[:1, :8]).backward()  # warm-up
    rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    loss = fn(logits, labels)
    loss.backward()
    seconds = time.perf_counter() - t0
    print(json.dumps({"loss": loss.item(), "seconds": seconds, "added": _status("VmHWM") - rss}))


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--V", type=int, default=65536)
    p.add_argument("--quick", action="store_true", help="B=2 T=512")
    p.add_argument("--out", type=Path, help="write the table to DIR/losses-cpu-bf16.md")
    p.add_argument("--_probe", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        name, B, T, V = args._probe
        _probe(name, int(B), int(T), int(V))
        return []
    if args.quick:
        args.B, args.T = 2, 512
    logits_mib = args.B * args.T * args.V * 2 / 2**20
    title = (
        f"# Sample-level CE on bf16 logits B={args.B} T={args.T} V={args.V} ({logits_mib:.0f} MiB), CPU\n\n"
        f"torch {torch.__version__}; peak resident memory added by forward + backward on top of the logits, "
        f"one fresh process per row; command: `python benchmarks/losses.py{' ' + ' '.join(argv) if argv else ''}`\n"
    )
    rows = [
        "| implementation | loss | forward + backward | peak memory added | vs logits |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    print(title)
    print("\n".join(rows), flush=True)
    results = {}
    for name in IMPLEMENTATIONS:
        cmd = [sys.executable, __file__, "--_probe", name, str(args.B), str(args.T), str(args.V)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[name] = r
        added = r["added"] / 2**20
        rows.append(
            f"| {name} | {r['loss']:.5f} | {r['seconds']:.2f} s | {added:,.0f} MiB | {added / logits_mib:.2f}x |"
        )
        print(rows[-1], flush=True)
    values = [r["loss"] for r in results.values()]
    if abs(values[0] - values[1]) > 1e-4 * max(1.0, abs(values[1])):
        raise SystemExit(f"the two implementations disagree: {values}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "losses-cpu-bf16.md").write_text(title + "\n" + "\n".join(rows) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
