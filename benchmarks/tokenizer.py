"""Encode throughput of our World tokenizer against the ``rwkv`` package's reference, side by side.

    python benchmarks/tokenizer.py              # 10 MB of mixed text, median of 3 runs each
    python benchmarks/tokenizer.py --quick      # 1 MB, one run

The text (built here, deterministic) mixes Python's standard-library sources (code and English
comments), Chinese made of the vocabulary's CJK tokens, and emoji/whitespace runs. It is encoded
as one string and as its lines one call each (what a dataset does); the runs alternate between the
two tokenizers and the ids are checked to be identical. ``--out DIR`` writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._machine import cpu_name  # noqa: E402
from rwkvblocks.prompting import WorldTokenizer  # noqa: E402

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u3000"]


def reference_tokenizer():
    """The ``rwkv`` package's TRIE tokenizer on its own copy of the vocabulary."""
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"))


def make_text(megabytes: float, reference, seed: int = 0) -> str:
    """About ``megabytes`` MB (UTF-8): 70% stdlib source, 20% Chinese, 10% emoji and whitespace."""
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    cjk = []
    for token in reference.idx2token.values():
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all("\u4e00" <= c <= "\u9fff" for c in text):
            cjk.append(text)
    parts, size = [], 0
    while size < target:
        roll = rng.random()
        if roll < 0.7:
            part = rng.choice(sources).read_text(encoding="utf-8", errors="replace")[: rng.randint(2000, 20000)]
        elif roll < 0.9:
            part = "".join(rng.choice(cjk) + rng.choice(["", "", "，", "。\n"]) for _ in range(rng.randint(200, 2000)))
        else:
            part = "".join(rng.choice(EMOJI) for _ in range(rng.randint(100, 1000)))
        parts.append(part)
        size += len(part.encode("utf-8"))
    return "".join(parts)


def time_encoders(encoders: dict, inputs: list[str], repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median seconds per encoder over ``repeats`` alternating runs, and the token counts."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    ids: dict[str, list] = {}
    for _ in range(repeats):
        for name, encode in encoders.items():
            t0 = time.perf_counter()
            out = [encode(s) for s in inputs]
            times[name].append(time.perf_counter() - t0)
            ids[name] = out
    first = next(iter(ids.values()))
    if any(other != first for other in ids.values()):
        raise AssertionError("the tokenizers disagree on this text")
    return {name: statistics.median(ts) for name, ts in times.items()}, sum(map(len, first))


def _machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=10.0, help="size of the text in MB (default 10)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 MB, one run")
    p.add_argument("--machine", help="the machine's name for the table's title (default: from /proc/cpuinfo)")
    p.add_argument("--out", type=Path, help="write the table to DIR/tokenizer-cpu.md")
    args = p.parse_args(argv)
    megabytes, repeats = (1.0, 1) if args.quick else (args.mb, args.repeats)

    t0 = time.perf_counter()
    reference = reference_tokenizer()
    load_reference = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = WorldTokenizer()
    ours.encode("warm up")
    load_ours = time.perf_counter() - t0
    text = make_text(megabytes, reference)
    size = len(text.encode("utf-8"))
    lines = text.splitlines(keepends=True)
    encoders = {
        "rwkvblocks WorldTokenizer (pyrwkv-tokenizer)": ours.encode,
        "rwkv 0.8.32 TRIE_TOKENIZER": reference.encode,
    }

    header = [
        f"# World tokenizer encode throughput on {args.machine or _machine()}",
        "",
        f"{size / 1e6:.2f} MB of text (70% stdlib source, 20% Chinese, 10% emoji/whitespace), median of "
        f"{repeats} alternating runs, ids identical in every run; command: `python benchmarks/tokenizer.py"
        + (" --quick" if args.quick else "")
        + "`",
        "",
        "| input | tokenizer | load | encode | MB/s | Mtokens/s | vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(header), flush=True)
    rows = []
    loads = dict(zip(encoders, (load_ours, load_reference), strict=True))
    for label, inputs in (("one string", [text]), (f"{len(lines):,} lines, one call each", lines)):
        seconds, tokens = time_encoders(encoders, inputs, repeats)
        ref = seconds["rwkv 0.8.32 TRIE_TOKENIZER"]
        for name, s in seconds.items():
            rows.append(
                f"| {label} | {name} | {loads[name]:.2f} s | {s:.3f} s | {size / 1e6 / s:.1f} | "
                f"{tokens / 1e6 / s:.2f} | {ref / s:.1f}x |"
            )
            print(rows[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "tokenizer-cpu.md"
        path.write_text("\n".join(header + rows) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
