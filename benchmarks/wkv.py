"""Time the WKV backends side by side at named shapes, and measure their peak memory.

    python benchmarks/wkv.py                 # full run on the CPU, fp32
    python benchmarks/wkv.py --quick         # fewer repeats (what `make demo` runs)
    python benchmarks/wkv.py --device cuda --dtype bf16

For every shape and available backend it times the forward (no autograd) and the forward +
backward (gradients of r, k, v, w, u and the initial state), interleaving the backends run by
run and reporting medians, and prints each backend's speed-up over ``reference``. On the CPU it
then measures the peak resident memory that forward + backward adds, in a fresh subprocess per
point, at several sequence lengths. ``--out DIR`` writes the tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkvblocks.ops import wkv6, wkv_dispatcher  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    T: int
    H: int
    K: int


SHAPES = [
    Shape("1.6B layer, B=1 T=4096 H=32 K=64", 1, 4096, 32, 64),
    Shape("decode B=8 T=1", 8, 1, 32, 64),
]
MEMORY_T = (1024, 2048, 4096)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0):
    """Random inputs with realistic RWKV-6 log-decays (``-exp(N(-1, 1))``) and a start state."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, K = shape.B, shape.T, shape.H, shape.K

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device)

    r, k, v = (rnd(B, T, H, K, scale=0.5).to(dtype) for _ in range(3))
    w = -torch.exp(rnd(B, T, H, K) - 1.0)  # fp32, as the TimeMix block produces it
    u = rnd(H, K, scale=0.5).to(dtype)
    state = rnd(B, H, K, K, scale=0.1)
    return r, k, v, w, u, state


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fwd(backend, inputs, device):
    with torch.no_grad():
        wkv6(*inputs, backend=backend)
    _sync(device)


def _fwd_bwd(backend, inputs, device):
    leaves = [x.detach().requires_grad_() for x in inputs]
    o, s = wkv6(*leaves, backend=backend)
    (o.float().square().mean() + s.square().mean()).backward()
    _sync(device)


def time_backends(shape: Shape, backends, dtype, device, repeats: int, grad: bool) -> dict[str, float]:
    """Median seconds per backend, the backends interleaved run by run (one warm-up each)."""
    inputs = make_inputs(shape, dtype, device)
    fn = _fwd_bwd if grad else _fwd
    times: dict[str, list[float]] = {b: [] for b in backends}
    for b in backends:
        fn(b, inputs, device)
    for _ in range(repeats):
        for b in backends:
            t0 = time.perf_counter()
            fn(b, inputs, device)
            times[b].append(time.perf_counter() - t0)
    return {b: statistics.median(ts) for b, ts in times.items()}


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def speed_table(backends, dtype, device, repeats, shapes) -> list[str]:
    rows = [
        "| shape | backend | forward | fwd+bwd | forward vs reference | fwd+bwd vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(rows), flush=True)
    for shape in shapes:
        fwd = time_backends(shape, backends, dtype, device, repeats, grad=False)
        bwd = time_backends(shape, backends, dtype, device, max(1, repeats // 2 + 1), grad=True)
        for b in backends:
            fr = f"{fwd['reference'] / fwd[b]:.2f}x" if "reference" in fwd else "-"
            br = f"{bwd['reference'] / bwd[b]:.2f}x" if "reference" in bwd else "-"
            rows.append(f"| {shape.name} | {b} | {_fmt_time(fwd[b])} | {_fmt_time(bwd[b])} | {fr} | {br} |")
            print(rows[-1], flush=True)
    return rows


def _peak_rss_probe(backend: str, T: int, dtype: str) -> None:
    """Subprocess body: peak RSS added by one forward+backward, printed as JSON (bytes)."""
    shape = Shape("probe", 1, T, 32, 64)
    inputs = make_inputs(shape, DTYPES[dtype], "cpu")
    _fwd_bwd(backend, make_inputs(Shape("warm", 1, 64, 32, 64), DTYPES[dtype], "cpu"), "cpu")
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak-RSS counter
        f.write("5")
    _fwd_bwd(backend, inputs, "cpu")
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"added": peak - rss}))


def memory_table(backends, dtype_name: str, lengths) -> list[str]:
    rows = [
        "| T | " + " | ".join(f"{b} peak added" for b in backends) + " | reference / chunked |",
        "| ---: | " + " | ".join("---:" for _ in backends) + " | ---: |",
    ]
    print("\n".join(rows), flush=True)
    for T in lengths:
        added = {}
        for b in backends:
            cmd = [sys.executable, __file__, "--_probe", b, str(T), dtype_name]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            added[b] = json.loads(out.strip().splitlines()[-1])["added"]
        ratio = (
            f"{added['reference'] / added['chunked']:.1f}x"
            if {"reference", "chunked"} <= added.keys()
            else "-"
        )
        cells = " | ".join(f"{added[b] / 2**20:.0f} MiB" for b in backends)
        rows.append(f"| {T} | {cells} | {ratio} |")
        print(rows[-1], flush=True)
    return rows


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="3 repeats, memory at two lengths only")
    p.add_argument("--backends", nargs="*", help="default: every backend available here")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--shape",
        action="append",
        metavar="NAME=B,T,H,K",
        help="time this shape instead of the named ones (repeatable)",
    )
    p.add_argument("--out", type=Path, help="write the tables to DIR/wkv-<device>.md")
    p.add_argument("--_probe", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        backend, T, dtype = args._probe
        _peak_rss_probe(backend, int(T), dtype)
        return

    dtype = DTYPES[args.dtype]
    repeats = 3 if args.quick else args.repeats
    probe = make_inputs(Shape("probe", 1, 1, 1, 16), dtype, args.device)
    from rwkvblocks.ops import WKVInputs

    sample = WKVInputs.from_tensors(probe[0], probe[2], probe[5], False, True)
    backends = args.backends or [b.name for b in wkv_dispatcher.backends if not b.reasons(sample)]
    machine = _machine(args.device)
    header = [
        f"# WKV backends on {machine}",
        "",
        f"torch {torch.__version__}, dtype {args.dtype}, median of {repeats} interleaved runs "
        f"(fwd+bwd: {max(1, repeats // 2 + 1)}); command: `python benchmarks/wkv.py"
        + (" --quick" if args.quick else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --dtype {args.dtype}" if args.dtype != "fp32" else "")
        + "`",
        "",
    ]
    print("\n".join(header), flush=True)
    shapes = SHAPES
    if args.shape:
        shapes = []
        for spec in args.shape:
            name, _, dims = spec.rpartition("=")
            B, T, H, K = (int(x) for x in dims.split(","))
            shapes.append(Shape(name or spec, B, T, H, K))
    lines = header + speed_table(backends, dtype, args.device, repeats, shapes)
    if args.device == "cpu" and not args.no_memory and os.path.exists("/proc/self/clear_refs"):
        lengths = (MEMORY_T[0], MEMORY_T[-1]) if args.quick else MEMORY_T
        print("\nPeak resident memory added by one forward+backward (B=1 H=32 K=64):", flush=True)
        lines += ["", "Peak resident memory added by one forward+backward (B=1 H=32 K=64):", ""]
        lines += memory_table(backends, args.dtype, lengths)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = "cpu" if args.device == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
        path = args.out / f"wkv-{tag}-{args.dtype}.md"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
