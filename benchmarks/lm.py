"""Prefill and decode speed of our RWKV language model against the ``rwkv`` package, on the CPU.

    python benchmarks/lm.py                  # 4-layer C=512 x060 model, T=1024, fp32
    python benchmarks/lm.py --quick          # shorter prompt, fewer repeats
    python benchmarks/lm.py --version x052 --layers 2 --dim 256
    python benchmarks/lm.py --version x070   # RWKV-7: the package runs in x070 mode (RWKV_V7_ON=1)

Both sides run the same random checkpoint, written once in BlinkDL's format: ours loaded with
``assemblies.load_blinkdl`` (as a user gets it), the reference with ``rwkv.model.RWKV(path, 'cpu fp32')``
(TorchScript on, its default). For ``--version x070`` the process sets ``RWKV_V7_ON=1`` before it imports
``rwkv`` (the package's RWKV-7 class takes the path without ``.pth``); a process that has imported the package
in the other mode, or has ``RWKV_V7_ON=1`` set for x052 / x060, refuses. Prefill feeds the whole prompt from a
zero state and computes the last position's logits (what generation needs); decode feeds one token at a time
with the carried state. Runs are interleaved and medians reported; the last-token logits of both are compared as
a correctness guard. The last line is the decode floor: the time to read every weight once per token at the
memory bandwidth the head's matrix-vector product achieves, and so the largest speed-up over the reference any
implementation could reach on this machine. ``--out DIR`` writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from assemblies import RWKVConfig, build_rwkv_lm, load_blinkdl, save_blinkdl  # noqa: E402
from benchmarks._machine import cpu_name  # noqa: E402
from rwkvblocks.generation import step_function  # noqa: E402


def _reference_class(version: str = "x060"):
    """``rwkv.model.RWKV`` with TorchScript on and CUDA off; the TF32 flags it flips are restored.

    x070 needs ``RWKV_V7_ON=1`` before the package is imported, after which the process can load no
    RWKV-5/6 model: this sets it for x070 and refuses a process whose package is in the other mode.
    """
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    v7 = version == "x070"
    loaded = sys.modules.get("rwkv.model")
    if loaded is not None and (loaded.RWKV.__name__ == "RWKV_x070") != v7:
        raise SystemExit(f"this process already imported rwkv in the other mode; run --version {version} on its own")
    if v7:
        os.environ["RWKV_V7_ON"] = "1"
    elif os.environ.get("RWKV_V7_ON") == "1":
        raise SystemExit("unset RWKV_V7_ON: it swaps the rwkv package to RWKV-7")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")  # deprecation notices
    from rwkv.model import RWKV

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return RWKV


def write_checkpoint(cfg: RWKVConfig, path: Path, seed: int = 0) -> None:
    """A random model with O(1) activations, saved in BlinkDL's format."""
    torch.manual_seed(seed)
    model = build_rwkv_lm(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if cfg.version == "x070" and p.dim() == 2 and not name.endswith((".weight", ".mix")):
                p.uniform_(-0.1, 0.1)  # the LoRAs (w1, a2, ...) and r_k
            elif p.dim() == 2 and "lora" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
    save_blinkdl(model, path)


class _Ours:
    name = "rwkvblocks"

    def __init__(self, model, compile: bool = False):
        self.model = model
        self._step = step_function(model, compile=compile)
        if compile:
            self.name = "rwkvblocks, compiled step"

    def prefill(self, tokens):
        logits, state = self.model(torch.tensor([tokens]), logits_to_keep=1)
        return logits[0, -1], state

    def step(self, token, state):
        logits, state = self._step(torch.tensor([[token]]), state)
        return logits[0, -1], state


class _Reference:
    name = "rwkv 0.8.32"

    def __init__(self, model):
        self.model = model

    def prefill(self, tokens):
        return self.model.forward(list(tokens), None)

    def step(self, token, state):
        return self.model.forward([token], state)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _span_ms(samples: list[float], digits: int) -> str:
    return f"{min(samples) * 1e3:.{digits}f}-{max(samples) * 1e3:.{digits}f}"


def _paired(base: list[float], ours: list[float]) -> tuple[float, float, float]:
    """``(min, median, max)`` of ``base[i] / ours[i]``: the speed-up within each interleaved repeat."""
    ratios = [b / o for b, o in zip(base, ours, strict=True)]
    return min(ratios), statistics.median(ratios), max(ratios)


def _ratio_cell(r: tuple[float, float, float]) -> str:
    return f"{r[1]:.2f}x ({r[0]:.2f}-{r[2]:.2f})"


def run(
    cfg: RWKVConfig, T: int, decode_tokens: int, repeats: int, with_reference: bool, compiled: bool = True
) -> tuple[list[str], dict]:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        write_checkpoint(cfg, path)
        ours = load_blinkdl(path)
        plain = load_blinkdl(path)
        for module in plain.modules():  # the layout build_rwkv_lm gives, for comparison
            if isinstance(module, torch.nn.Linear):
                module.weight = torch.nn.Parameter(module.weight.detach().contiguous())
        runners = [_Ours(ours)]
        plain_runner = _Ours(plain)
        plain_runner.name = "rwkvblocks, [out, in] weights"
        runners.append(plain_runner)
        if compiled:
            runners.insert(1, _Ours(ours, compile=True))
        if with_reference and cfg.version == "x070":
            runners.append(_Reference(_reference_class("x070")(str(path.with_suffix("")), "cpu fp32")))
        elif with_reference:
            runners.append(_Reference(_reference_class(cfg.version)(str(path), "cpu fp32", verbose=False)))
        torch.set_num_threads(threads)  # importing rwkv must not change it
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, cfg.vocab_size, (T,), generator=g).tolist()
        stream = torch.randint(0, cfg.vocab_size, (decode_tokens,), generator=g).tolist()
        prefill: dict[str, list[float]] = {r.name: [] for r in runners}
        decode: dict[str, list[float]] = {r.name: [] for r in runners}
        last: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for runner in runners:  # warm-up (TorchScript profiles its first calls; the compiled step compiles)
                logits, state = runner.prefill(prompt[:16])
                for token in stream[:4]:
                    logits, state = runner.step(token, state)
            for _ in range(repeats):
                for runner in runners:
                    t0 = time.perf_counter()
                    logits, state = runner.prefill(prompt)
                    prefill[runner.name].append(time.perf_counter() - t0)
                    last[runner.name] = logits.float()
                    steps = []
                    for token in stream:
                        t0 = time.perf_counter()
                        logits, state = runner.step(token, state)
                        steps.append(time.perf_counter() - t0)
                    decode[runner.name].append(statistics.median(steps))  # one figure per repeat
    base = runners[-1].name if with_reference else runners[0].name
    rows = [
        f"| implementation | prefill (T={T}) | prefill tokens/s | decode per token | decode tokens/s "
        "| prefill speed-up | decode speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    results = {}
    for runner in runners:
        p_ms, d_ms = _median_ms(prefill[runner.name]), _median_ms(decode[runner.name])
        p_up, d_up = _paired(prefill[base], prefill[runner.name]), _paired(decode[base], decode[runner.name])
        results[runner.name] = (p_ms, d_ms)
        results[f"{runner.name} speed-up"] = (p_up[1], d_up[1])
        rows.append(
            f"| {runner.name} | {p_ms:.1f} ms ({_span_ms(prefill[runner.name], 1)}) | {T / p_ms * 1e3:,.0f} "
            f"| {d_ms:.2f} ms ({_span_ms(decode[runner.name], 2)}) | {1e3 / d_ms:,.1f} "
            f"| {_ratio_cell(p_up)} | {_ratio_cell(d_up)} |"
        )
    rows += [
        "",
        "Times: median (min-max) over the repeats; a decode figure per repeat is the median of its steps. Speed-ups:",
        "the median (min-max) of the ratios within each repeat, where every implementation ran back to back, so a",
        "machine that drifts between repeats moves both sides of a ratio together.",
    ]
    if with_reference:
        diff = (last[runners[0].name] - last[base]).abs().max().item()
        rows.append("")
        rows.append(f"Last-token logits after prefill, ours vs reference: max |diff| = {diff:.2e}.")
        results["max_abs_diff"] = diff
    floor_ms, bandwidth = decode_floor(ours)
    rows.append("")
    line = (
        f"Decode floor: every weight read once per token ({_weight_bytes(ours) / 2**20:,.0f} MiB) at the bandwidth "
        f"of the head's matrix-vector product ({bandwidth / 1e9:.1f} GB/s) = {floor_ms:.2f} ms per token"
    )
    if with_reference:
        line += f"; the most any implementation could gain on the reference: {results[base][1] / floor_ms:.2f}x"
    rows.append(line + ".")
    results["decode_floor_ms"] = floor_ms
    pfloor_ms, flops = prefill_floor(ours, T)
    line = (
        f"Prefill floor: the prefill's matrix products ({_matmul_flops(ours, T) / 1e9:,.1f} GFLOP: every weight "
        f"matrix once per position, the head once) at this machine's fp32 GEMM rate ({flops / 1e9:,.0f} GFLOP/s, "
        f"a [{T}, C] x [C, F] product) = {pfloor_ms:.1f} ms"
    )
    if with_reference:
        line += f"; the most any implementation could gain on the reference: {results[base][0] / pfloor_ms:.2f}x"
    rows.append(line + ".")
    results["prefill_floor_ms"] = pfloor_ms
    return rows, results


def _matmul_flops(model, T: int) -> int:
    """Multiply-adds x 2 of a prefill of ``T`` positions: every 2-D weight (LoRAs included) but the embedding
    and the head once per position, the head for the last position only."""
    per_token = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("emb.", "head."))
    )
    return 2 * T * per_token + 2 * model.head.weight.numel()


def prefill_floor(model, T: int, repeats: int = 20) -> tuple[float, float]:
    """``(ms, FLOP/s)``: the prefill's matrix products at the fp32 rate of one ``[T, C] x [C, F]`` product
    (the channel mix's key, the largest block matrix; median of ``repeats``), and that rate."""
    weight = max((p for n, p in model.named_parameters() if p.dim() == 2 and ".ffn." in n), key=lambda p: p.numel())
    w = weight.detach().T.contiguous() if weight.shape[0] > weight.shape[1] else weight.detach()  # [C, F]
    x = torch.randn(T, w.shape[0])
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            torch.mm(x, w)
            times.append(time.perf_counter() - t0)
    rate = 2 * T * w.numel() / statistics.median(times[3:])
    return _matmul_flops(model, T) / rate * 1e3, rate


def _weight_bytes(model) -> int:
    """Bytes a decode step must read: every parameter but the embedding, of which it reads one row."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("emb."))


def decode_floor(model, repeats: int = 50) -> tuple[float, float]:
    """``(ms, bytes/s)``: the time to read every decode weight once at the speed the head's matrix-vector
    product streams memory (median of ``repeats``), and that speed."""
    head = model.head
    x = torch.randn(1, 1, head.in_features)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 5):
            t0 = time.perf_counter()
            head(x)
            times.append(time.perf_counter() - t0)
    bandwidth = head.weight.numel() * head.weight.element_size() / statistics.median(times[5:])
    return _weight_bytes(model) / bandwidth * 1e3, bandwidth


def _machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default="x060", choices=["x052", "x060", "x070"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--T", type=int, default=1024, help="prompt length for prefill")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="T=256, 3 repeats, 16 decode tokens")
    p.add_argument("--no-reference", action="store_true", help="skip the rwkv package")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled decode step")
    p.add_argument("--out", type=Path, help="write the table to DIR/NAME")
    p.add_argument("--name", default="lm-cpu-fp32.md", help="file name of the table under --out")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.repeats, args.decode_tokens = min(args.T, 256), 3, 16
    head_dim = 64 if args.dim % 64 == 0 else 32
    cfg = RWKVConfig(args.version, args.vocab, args.dim, args.layers, head_dim)
    title = (
        f"# RWKV language model on the CPU ({_machine()})\n\n"
        f"{args.version}, {args.layers} layers, C={args.dim}, V={args.vocab}, fp32, torch {torch.__version__}; "
        f"{args.repeats} interleaved repeats of a prefill and {args.decode_tokens} decode steps each; "
        f"command: `python benchmarks/lm.py{' ' + ' '.join(argv) if argv else ''}`\n"
    )
    print(title)
    rows, results = run(cfg, args.T, args.decode_tokens, args.repeats, not args.no_reference, not args.no_compile)
    print("\n".join(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / args.name).write_text(title + "\n" + "\n".join(rows) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
