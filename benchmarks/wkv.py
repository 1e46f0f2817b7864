"""Time the WKV backends side by side at named shapes, and measure their peak memory.

    python benchmarks/wkv.py                 # full run on the CPU, fp32
    python benchmarks/wkv.py --quick         # fewer repeats (what `make demo` runs)
    python benchmarks/wkv.py --device cuda --dtype bf16
    python benchmarks/wkv.py --device cuda --gpu-check --out benchmarks/results   # the issue's table
    python benchmarks/wkv.py --op wkv7       # the RWKV-7 operator's backends instead

For every shape and available backend it times the forward (no autograd) and the forward +
backward (gradients of r, k, v, w, u and the initial state), interleaving the backends run by
run and reporting medians, and prints each backend's speed-up over ``reference``. On the CPU it
then measures the peak resident memory that forward + backward adds, in a fresh subprocess per
point, at several sequence lengths. ``--out DIR`` writes the tables as Markdown.

``--op wkv7`` times the RWKV-7 operator (``rwkvblocks.ops.wkv7``) the same way: inputs as its TimeMix makes
them (log-decays in RWKV-7's ``(-0.6065, 0)``, ``a = -kk``, ``b = kk * gate`` with ``kk`` L2-normalised per
head), gradients of r, w, k, v, a, b and the initial state; the tables go to ``DIR/wkv7-<device>-<dtype>.md``.

``--gpu-check`` (CUDA, bf16) runs the Triton kernels' acceptance table instead: the card's copy
bandwidth, the first-call compile time, bf16 relative errors of o, the state and every gradient
against an fp64 reference (log-decays down to -60), a check of our output against fla's, then
median forward and forward+backward times at the named training shapes and one-token decoding,
side by side with fla's ``chunk_rwkv6`` / ``fused_recurrent_rwkv6`` when fla is importable,
with the ratio to fla and the fraction of the memory-bandwidth floor. It writes
``DIR/wkv-<card>.md``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._machine import cpu_name  # noqa: E402
from rwkvblocks.ops import WKV7Inputs, WKVInputs, wkv6, wkv7, wkv7_dispatcher, wkv_dispatcher  # noqa: E402


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
MEMORY_T7 = (256, 512, 1024)  # wkv7's reference tape holds ~5 states per token: ~18 GB at T=4096
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


def make_inputs7(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0):
    """Random RWKV-7 inputs ``(r, w, k, v, a, b, state)`` as its TimeMix makes them: log-decay
    ``-e^{-1/2} sigmoid(z)`` in fp32, ``a = -kk``, ``b = kk * sigmoid(.)`` with ``kk`` unit-norm per head."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, K = shape.B, shape.T, shape.H, shape.K

    def rnd(*size, scale=1.0):
        return torch.randn(*size, generator=g) * scale

    r, k = (rnd(B, T, H, K, scale=0.5) for _ in range(2))
    v = rnd(B, T, H, K)
    w = -torch.exp(torch.tensor(-0.5)) * torch.sigmoid(rnd(B, T, H, K))
    kk = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    a, b = -kk, kk * torch.sigmoid(rnd(B, T, H, K))
    state = rnd(B, H, K, K, scale=0.1)
    dev = [x.to(device) for x in (r, w, k, v, a, b, state)]
    return tuple(x if i in (1, 6) else x.to(dtype) for i, x in enumerate(dev))


# per op: the entry point, its inputs, its dispatcher, and what a backend is asked about
OPS = {
    "wkv6": (wkv6, make_inputs, wkv_dispatcher, lambda x: WKVInputs.from_tensors(x[0], x[2], x[5], False, True)),
    "wkv7": (wkv7, make_inputs7, wkv7_dispatcher, lambda x: WKV7Inputs.from_tensors(x[0], x[3], x[6], True)),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fwd(backend, inputs, device, op="wkv6"):
    with torch.no_grad():
        OPS[op][0](*inputs, backend=backend)
    _sync(device)


def _fwd_bwd(backend, inputs, device, op="wkv6"):
    leaves = [x.detach().requires_grad_() for x in inputs]
    o, s = OPS[op][0](*leaves, backend=backend)
    (o.float().square().mean() + s.square().mean()).backward()
    _sync(device)


def time_backends(shape: Shape, backends, dtype, device, repeats: int, grad: bool, op="wkv6") -> dict[str, float]:
    """Median seconds per backend, the backends interleaved run by run (one warm-up each)."""
    inputs = OPS[op][1](shape, dtype, device)
    fn = _fwd_bwd if grad else _fwd
    times: dict[str, list[float]] = {b: [] for b in backends}
    for b in backends:
        fn(b, inputs, device, op)
    for _ in range(repeats):
        for b in backends:
            t0 = time.perf_counter()
            fn(b, inputs, device, op)
            times[b].append(time.perf_counter() - t0)
    return {b: statistics.median(ts) for b, ts in times.items()}


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def speed_table(backends, dtype, device, repeats, shapes, op="wkv6") -> list[str]:
    rows = [
        "| shape | backend | forward | fwd+bwd | forward vs reference | fwd+bwd vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(rows), flush=True)
    for shape in shapes:
        fwd = time_backends(shape, backends, dtype, device, repeats, grad=False, op=op)
        bwd = time_backends(shape, backends, dtype, device, max(1, repeats // 2 + 1), grad=True, op=op)
        for b in backends:
            fr = f"{fwd['reference'] / fwd[b]:.2f}x" if "reference" in fwd else "-"
            br = f"{bwd['reference'] / bwd[b]:.2f}x" if "reference" in bwd else "-"
            rows.append(f"| {shape.name} | {b} | {_fmt_time(fwd[b])} | {_fmt_time(bwd[b])} | {fr} | {br} |")
            print(rows[-1], flush=True)
    return rows


def _peak_rss_probe(backend: str, T: int, dtype: str, op: str = "wkv6") -> None:
    """Subprocess body: peak RSS added by one forward+backward, printed as JSON (bytes)."""
    shape = Shape("probe", 1, T, 32, 64)
    make = OPS[op][1]
    inputs = make(shape, DTYPES[dtype], "cpu")
    _fwd_bwd(backend, make(Shape("warm", 1, 64, 32, 64), DTYPES[dtype], "cpu"), "cpu", op)
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak-RSS counter
        f.write("5")
    _fwd_bwd(backend, inputs, "cpu", op)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"added": peak - rss}))


def memory_table(backends, dtype_name: str, lengths, op: str = "wkv6") -> list[str]:
    rows = [
        "| T | " + " | ".join(f"{b} peak added" for b in backends) + " | reference / chunked |",
        "| ---: | " + " | ".join("---:" for _ in backends) + " | ---: |",
    ]
    print("\n".join(rows), flush=True)
    for T in lengths:
        added = {}
        for b in backends:
            cmd = [sys.executable, __file__, "--_probe", b, str(T), dtype_name, op]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            added[b] = json.loads(out.strip().splitlines()[-1])["added"]
        ratio = f"{added['reference'] / added['chunked']:.1f}x" if {"reference", "chunked"} <= added.keys() else "-"
        cells = " | ".join(f"{added[b] / 2**20:.0f} MiB" for b in backends)
        rows.append(f"| {T} | {cells} | {ratio} |")
        print(rows[-1], flush=True)
    return rows


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


GPU_SHAPES = [
    Shape("VisualRWKV-1.6B train: B=8 T=2048 H=32 K=64", 8, 2048, 32, 64),
    Shape("7B train: B=2 T=2048 H=64 K=64", 2, 2048, 64, 64),
    Shape("long: B=1 T=24576 H=32 K=64", 1, 24576, 32, 64),
]
DECODE_BATCHES = (1, 8, 64)
PRECISION_SHAPE = Shape("precision B=2 T=512 H=4 K=64", 2, 512, 4, 64)
GRAD_NAMES = ("o", "state", "dr", "dk", "dv", "dw", "du", "dstate")


def _fla_ops():
    """fla's ``chunk_rwkv6`` and ``fused_recurrent_rwkv6``, or ``None`` when fla is not importable."""
    try:
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
    except ImportError:
        return None
    return chunk_rwkv6, fused_recurrent_rwkv6


def _fla_runner(fn):
    """Call an fla RWKV-6 op in our convention: `[B, T, H, K]` layout, log-space ``w``, no scale,
    initial state in, final state out."""
    head_first = "head_first" in inspect.signature(fn).parameters

    def run(r, k, v, w, u, state):
        kwargs = {"scale": 1.0, "initial_state": state, "output_final_state": True}
        if head_first:
            kwargs["head_first"] = False
        return fn(r, k, v, w, u, **kwargs)

    return run


def _ours(backend):
    def run(r, k, v, w, u, state):
        return wkv6(r, k, v, w, u, state, backend=backend)

    return run


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    return 2 * nbytes / (_median_ms(lambda: y.copy_(x), 20) * 1e-3)


def _strong_inputs(shape: Shape, device: str, seed: int = 1):
    """fp64 inputs whose log-decays spread from -0.01 to -60 (log-uniform)."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, K = shape.B, shape.T, shape.H, shape.K
    f64 = torch.float64
    r, k = (torch.randn(B, T, H, K, generator=g, dtype=f64) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, K, generator=g, dtype=f64)
    w = -torch.exp(torch.empty(B, T, H, K, dtype=f64).uniform_(-4.6, 4.1, generator=g))
    u = torch.randn(H, K, generator=g, dtype=f64) * 0.5
    state = torch.randn(B, H, K, K, generator=g, dtype=f64) * 0.1
    return [x.to(device) for x in (r, k, v, w, u, state)]


def _outputs_and_grads(run, inputs, dtype, cot, grad: bool):
    """Outputs (and gradients) of ``run`` on ``inputs`` cast as TimeMix gives them: r, k, v, u
    in ``dtype``, w and the state fp32 (fp64 stays fp64)."""
    low = dtype != torch.float64
    leaves = [
        x.to(torch.float32 if low and i in (3, 5) else dtype).detach().requires_grad_(grad)
        for i, x in enumerate(inputs)
    ]
    o, s = run(*leaves)
    if not grad:
        return [o.detach(), s.detach()]
    do, ds = cot
    loss = (o.double() * do).sum() + (s.double() * ds).sum()
    return [o.detach(), s.detach()] + list(torch.autograd.grad(loss, leaves))


def _rel(x, ref) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def precision_table(device: str, shape: Shape, candidates: dict) -> list[str]:
    """bf16 relative RMS error of o, state and every gradient against fp64 ``chunked``."""
    inputs = _strong_inputs(shape, device)
    g = torch.Generator().manual_seed(2)
    V = shape.K
    cot = (
        torch.randn(shape.B, shape.T, shape.H, V, generator=g, dtype=torch.float64).to(device),
        torch.randn(shape.B, shape.H, shape.K, V, generator=g, dtype=torch.float64).to(device),
    )
    want = _outputs_and_grads(_ours("chunked"), inputs, torch.float64, cot, grad=True)
    rows = [
        f"bf16 relative RMS error against fp64 (`chunked` in fp64), {shape.name}, log-decays -0.01 to -60:",
        "",
        "| implementation | " + " | ".join(GRAD_NAMES) + " | finite |",
        "| --- | " + " | ".join("---:" for _ in GRAD_NAMES) + " | --- |",
    ]
    for name, (run, grad) in candidates.items():
        got = _outputs_and_grads(run, inputs, torch.bfloat16, cot, grad)
        errs = [f"{_rel(a, b):.2e}" for a, b in zip(got, want)] + ["-"] * (len(GRAD_NAMES) - len(got))
        finite = all(bool(torch.isfinite(x).all()) for x in got)
        rows.append(f"| {name} | " + " | ".join(errs) + f" | {'yes' if finite else 'NO'} |")
        print(rows[-1], flush=True)
    return rows


def _bf16_inputs(shape: Shape, device: str):
    r, k, v, w, u, state = make_inputs(shape, torch.bfloat16, device)
    return r, k, v, w, u, state


def _check_against_fla(shape: Shape, device: str, ours, fla) -> str:
    """Our output and final state against fla's on the same bf16 inputs; raises on mismatch."""
    inputs = _bf16_inputs(shape, device)
    with torch.no_grad():
        o1, s1 = ours(*inputs)
        o2, s2 = fla(*inputs)
    eo, es = _rel(o1, o2), _rel(s1, s2)
    if not (eo < 1e-2 and es < 1e-2):
        raise SystemExit(f"{shape.name}: our output differs from fla's (o {eo:.2e}, state {es:.2e}); no timings")
    return f"{shape.name}: ours vs fla: o {eo:.1e}, state {es:.1e}"


def _first_call_seconds(run, shape: Shape, device: str, grad: bool) -> float:
    inputs = [x.detach().requires_grad_(grad) for x in _bf16_inputs(shape, device)]
    t0 = time.perf_counter()
    o, s = run(*inputs)
    if grad:
        (o.float().square().mean() + s.square().mean()).backward()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _floor_bytes(shape: Shape, inputs) -> int:
    r, k, v, w = inputs[:4]
    return sum(x.numel() * x.element_size() for x in (r, k, v, w)) + v.numel() * v.element_size()


def gpu_speed_table(device: str, shapes, decode_batches, runners: dict, fla_names, bandwidth, repeats) -> list[str]:
    rows = [
        "| shape | implementation | forward | fwd+bwd | fwd / fla | fwd+bwd / fla | fwd % of floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(rows), flush=True)

    def fwd(run, inputs):
        with torch.no_grad():
            run(*inputs)

    def fwd_bwd(run, inputs):
        leaves = [x.detach().requires_grad_() for x in inputs]
        o, s = run(*leaves)
        (o.float().square().mean() + s.square().mean()).backward()

    cases = [(shape, False) for shape in shapes]
    cases += [(Shape(f"decode: B={b} T=1 H=32 K=64", b, 1, 32, 64), True) for b in decode_batches]
    for shape, decode in cases:
        inputs = _bf16_inputs(shape, device)
        floor_ms = _floor_bytes(shape, inputs) / bandwidth * 1e3
        names = [n for n in runners if decode or runners[n][1] != "decode"]
        f_ms = {n: _median_ms(functools.partial(fwd, runners[n][0], inputs), repeats) for n in names}
        b_ms = {
            n: _median_ms(functools.partial(fwd_bwd, runners[n][0], inputs), repeats)
            for n in names
            if not decode and runners[n][1] == "grad"
        }
        ref = fla_names[1] if decode else fla_names[0]
        for n in names:
            fr = f"{f_ms[n] / f_ms[ref]:.2f}x" if ref in f_ms else "-"
            br = f"{b_ms[n] / b_ms[ref]:.2f}x" if n in b_ms and ref in b_ms else "-"
            bt = f"{b_ms[n]:.3f} ms" if n in b_ms else "-"
            rows.append(
                f"| {shape.name} | {n} | {f_ms[n]:.3f} ms | {bt} | {fr} | {br} | {100 * floor_ms / f_ms[n]:.1f}% |"
            )
            print(rows[-1], flush=True)
    return rows


def gpu_check(
    device: str, repeats: int, shapes=GPU_SHAPES, decode_batches=DECODE_BATCHES, precision_shape=PRECISION_SHAPE
) -> list[str]:
    """The Triton kernels' acceptance table (see the module docstring)."""
    fla = _fla_ops()
    runners = {  # name -> (callable, "grad" | "nograd" | "decode")
        "triton_chunk": (_ours("triton_chunk"), "grad"),
        "triton_chunk64": (_ours("triton_chunk64"), "grad"),
        "chunked": (_ours("chunked"), "grad"),
        "triton_recurrent": (_ours("triton_recurrent"), "decode"),
    }
    fla_names = ("fla chunk_rwkv6", "fla fused_recurrent_rwkv6")
    if fla is not None:
        runners[fla_names[0]] = (_fla_runner(fla[0]), "grad")
        runners[fla_names[1]] = (_fla_runner(fla[1]), "decode")
    lines = [f"fla: {'importable' if fla else 'not installed (no fla columns)'}"]
    small = Shape("compile probe B=1 T=256 H=4 K=64", 1, 256, 4, 64)
    for name in ("triton_chunk", "triton_chunk64", fla_names[0]) if fla else ("triton_chunk", "triton_chunk64"):
        seconds = _first_call_seconds(runners[name][0], small, device, True)
        lines.append(f"first call (compile + autotune), fwd+bwd: {name} {seconds:.1f} s")
    decode = Shape("decode probe", 8, 1, 32, 64)
    for name in ("triton_recurrent", fla_names[1]) if fla else ("triton_recurrent",):
        seconds = _first_call_seconds(runners[name][0], decode, device, False)
        lines.append(f"first call (compile + autotune), decode: {name} {seconds:.1f} s")
    bandwidth = copy_bandwidth(device)
    lines.append(f"copy bandwidth (device to device, read + write): {bandwidth / 1e12:.2f} TB/s")
    print("\n".join(lines), flush=True)
    candidates = {n: (runners[n][0], runners[n][1] == "grad") for n in runners}
    lines += [""] + precision_table(device, precision_shape, candidates)
    if fla is not None:
        checks = [_check_against_fla(s, device, runners["triton_chunk"][0], runners[fla_names[0]][0]) for s in shapes]
        checks += [
            _check_against_fla(
                Shape(f"decode B={b}", b, 1, 32, 64), device, runners["triton_recurrent"][0], runners[fla_names[1]][0]
            )
            for b in decode_batches
        ]
        print("\n".join(checks), flush=True)
        lines += ["", "Output check against fla (relative RMS difference, bf16):", ""] + [f"- {c}" for c in checks]
    lines += ["", f"Median of {repeats} runs (CUDA events), bf16 inputs, fp32 log-decay:", ""]
    lines += gpu_speed_table(device, shapes, decode_batches, runners, fla_names, bandwidth, repeats)
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="wkv6", choices=sorted(OPS), help="the operator to time (default wkv6)")
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
    p.add_argument("--gpu-check", action="store_true", help="the Triton kernels' acceptance table (CUDA)")
    p.add_argument("--_probe", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        backend, T, dtype, *op = args._probe
        _peak_rss_probe(backend, int(T), dtype, *op)
        return
    if args.gpu_check and args.op != "wkv6":
        raise SystemExit("--gpu-check covers wkv6 only")
    if args.gpu_check:
        if not (args.device.startswith("cuda") and torch.cuda.is_available()):
            raise SystemExit("--gpu-check needs --device cuda and a CUDA device")
        card = torch.cuda.get_device_name()
        command = "`python benchmarks/wkv.py --device cuda --gpu-check`"
        header = [f"# WKV Triton kernels on {card}", "", f"torch {torch.__version__}; command: {command}", ""]
        print("\n".join(header), flush=True)
        lines = header + gpu_check(args.device, repeats=21 if args.repeats == 7 else args.repeats)
        out = args.out or Path(__file__).resolve().parent / "results"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"wkv-{card.replace(' ', '-')}.md"
        path.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {path}")
        return

    dtype = DTYPES[args.dtype]
    repeats = 3 if args.quick else args.repeats
    _, make, dispatcher, describe = OPS[args.op]
    sample = describe(make(Shape("probe", 1, 1, 1, 16), dtype, args.device))
    backends = args.backends or [
        b.name for b in dispatcher.backends if not (b.reasons(sample) or b.auto_reasons(sample))
    ]
    machine = _machine(args.device)
    title = "WKV" if args.op == "wkv6" else args.op.upper()
    header = [
        f"# {title} backends on {machine}",
        "",
        f"torch {torch.__version__}, dtype {args.dtype}, median of {repeats} interleaved runs "
        f"(fwd+bwd: {max(1, repeats // 2 + 1)}); command: `python benchmarks/wkv.py"
        + (f" --op {args.op}" if args.op != "wkv6" else "")
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
    lines = header + speed_table(backends, dtype, args.device, repeats, shapes, op=args.op)
    if args.device == "cpu" and not args.no_memory and os.path.exists("/proc/self/clear_refs"):
        memory_t = MEMORY_T if args.op == "wkv6" else MEMORY_T7
        lengths = (memory_t[0], memory_t[-1]) if args.quick else memory_t
        print("\nPeak resident memory added by one forward+backward (B=1 H=32 K=64):", flush=True)
        lines += ["", "Peak resident memory added by one forward+backward (B=1 H=32 K=64):", ""]
        lines += memory_table(backends, args.dtype, lengths, op=args.op)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = "cpu" if args.device == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
        prefix = "wkv" if args.op == "wkv6" else args.op
        path = args.out / f"{prefix}-{tag}-{args.dtype}.md"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
