"""Per-token decode cost and memory against context length: our RWKV-6 LM beside a Llama transformer.

    python benchmarks/inference.py                 # CPU, fp32, C=256 L=4 V=1000, contexts 256 .. 8K
    python benchmarks/inference.py --threads 1     # steadier numbers on a busy machine
    python benchmarks/inference.py --quick --out /tmp/inference    # smoke run (< 30 s); writes only with --out
    python benchmarks/inference.py --device cuda --dtype bf16 --preset 1b6   # 1.6B models, contexts to 24,576
    python benchmarks/inference.py --preset 1b6 --dry-run   # build both on ``meta``: sizes and plan, no run

The paper's efficiency claim (DESIGN.md §14): an RNN's per-token decode time and memory stay flat with
the context, a transformer's grow (VisualRWKV at 24,576 tokens: 3.98x faster than LLaVA-1.5 and 54% less
GPU memory). Both models have the same width, depth and vocabulary and random weights:

- ours: ``build_rwkv_lm(RWKVConfig("x060", ...))``; prefill is one parallel call
  ``model(tokens, logits_to_keep=1)``, decode ``model(token[:, None], state)`` per token (recurrent).
- the transformer: ``transformers.LlamaForCausalLM`` built from a ``LlamaConfig`` in code (nothing is
  downloaded), ``attn_implementation="sdpa"``, multi-head attention with head size 64 (as LLaVA-1.5's
  Vicuna), untied head. Prefill fills a ``DynamicCache``; decode feeds one token with it.
  Its MLP width is solved so that a Llama layer has as many parameters as ours: our layer holds
  ``6 C^2 + 2 C F`` matrices (F = ``int(3.5 C) // 32 * 32``) plus the x060 LoRAs; a Llama layer
  ``4 C^2 + 3 C I``, so ``I`` = (our layer's parameters - ``4 C^2`` - norms) / ``3 C``, rounded to a
  multiple of 32 (928 = 3.6 C at C=256, where the LoRAs weigh more; 6304 = 3.1 C at C=2048). Both
  parameter counts are printed. A ``DynamicCache`` grows by concatenation, copying itself every step, as
  in ``generate``; attention reads the whole cache either way.

For each context the two models are measured in the same loop, interleaved: prefill repeats alternate
between them, and decode steps alternate in blocks of 8 consecutive steps per model (the order flips every
block), so that neither model's step runs in caches the other just filled. Each
decode step starts from exactly that context: after a timed step the transformer's cache is cropped
back by one token (outside the timing); our state has no length. Reported:

1. decode latency per token: median over ``--steps`` steps after ``--warmup``, with the interquartile range;
2. memory: the carried state (our WKV state and shifts; the transformer's KV cache) in exact bytes, and
   the memory decoding needs: that state plus the largest extra a decode step allocates, measured on CUDA
   with ``torch.cuda.max_memory_allocated`` and on the CPU as the peak resident set (``VmHWM``, reset
   through ``/proc/self/clear_refs``) with glibc told to unmap every freed block of 64 KiB or more while
   probing (``mallopt``; see ``PeakMemory``); also the peak of the prefill above the loaded model;
3. prefill throughput (tokens/s, median of ``--prefill-repeats``);
4. decode throughput at several batch sizes (``--batches``) at one context (``--batch-context``): one
   sequence is prefilled and its state (KV cache) repeated along the batch.

On the CPU every ``nn.Linear`` weight of both models is stored as the transpose of a contiguous
`[in, out]` matrix (``RWKVLanguageModel.use_decode_layout_``: about twice as fast for one-token
matrix-vector products; values unchanged); ``--plain-layout`` keeps PyTorch's `[out, in]`.

Output: Markdown tables and the key ratios (flatness: ours at the largest context / ours at the
smallest; the transformer's growth over the same span), written with a PNG of the curves (latency and
memory against context, log-x) to ``benchmarks/results/inference-<device>-<dtype>.{md,png}`` unless
``--no-write`` (``--out DIR`` writes there instead; ``--quick`` writes only with ``--out``). Needs the
``bench`` extra (``pip install -e '.[bench]'``: transformers, matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import inspect
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from assemblies import RWKVConfig, build_rwkv_lm  # noqa: E402
from benchmarks._machine import cpu_name  # noqa: E402
from rwkvblocks.state import RWKVState, cat_states  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "results"
MiB = 2**20


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model shape and measurement plan."""

    dim: int
    num_layers: int
    vocab_size: int
    contexts: tuple[int, ...]
    batch_context: int
    batches: tuple[int, ...]
    steps: int = 32
    warmup: int = 3
    prefill_repeats: int = 3
    memory_steps: int = 4


PRESETS = {
    "cpu": Preset(256, 4, 1000, (256, 512, 1024, 2048, 4096, 8192), 512, (1, 4, 16, 64)),
    # VisualRWKV-1.6B's language model (RWKV-6 World 1.6B shape) and the paper's longest context
    "1b6": Preset(2048, 24, 65536, (256, 512, 1024, 2048, 4096, 8192, 16384, 24576), 4096, (1, 4, 16, 64)),
    "quick": Preset(64, 2, 100, (16, 32), 16, (1, 2), steps=3, warmup=1, prefill_repeats=1, memory_steps=1),
}


# --- the two models ---------------------------------------------------------------------------------------


def matched_intermediate(rwkv_block_params: int, dim: int, kv_dim: int) -> int:
    """The Llama MLP width whose layer has as many parameters as ``rwkv_block_params`` (multiple of 32).

    A Llama layer: q and o `[C, C]`, k and v `[kv_dim, C]`, gate, up and down `C x I`, two RMSNorms.
    """
    attention = 2 * dim * dim + 2 * dim * kv_dim + 2 * dim
    return max(32, round((rwkv_block_params - attention) / (3 * dim) / 32) * 32)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _decode_layout_(model: nn.Module) -> None:
    """Store every ``nn.Linear`` weight as the transpose of a contiguous `[in, out]` matrix (values unchanged)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():
                module.weight = nn.Parameter(module.weight.t().contiguous().t(), requires_grad=False)


def build_models(
    shape: Preset,
    device: str,
    dtype: torch.dtype,
    *,
    head_dim: int = 64,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_context: int | None = None,
    decode_layout: bool = False,
    seed: int = 0,
):
    """Our x060 model and a parameter-matched ``LlamaForCausalLM``, random weights, in eval mode.

    On ``meta`` nothing is initialised (sizes only). Returns ``(ours, llama, info)``; ``info`` holds the
    parameter counts and the Llama MLP width.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    C, L, V = shape.dim, shape.num_layers, shape.vocab_size
    if C % head_dim:
        raise ValueError(f"dim={C} must be a multiple of head_dim={head_dim}")
    heads = C // head_dim
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide the number of heads {heads}")
    meta = device == "meta"
    torch.manual_seed(seed)
    build_device = "meta" if meta else device
    ours = build_rwkv_lm(RWKVConfig("x060", vocab_size=V, dim=C, num_layers=L, head_dim=head_dim), device=build_device)
    if intermediate is None:
        intermediate = matched_intermediate(_count(ours.blocks) // L, C, kv_heads * head_dim)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=C,
        intermediate_size=intermediate,
        num_hidden_layers=L,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_context or max(shape.contexts + (shape.batch_context,)) + 64,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        use_cache=True,
    )
    with torch.device(build_device):
        llama = LlamaForCausalLM(config)
    if not meta:
        with torch.no_grad():  # O(1) activations through every path (BlinkDL's init zeroes output matrices)
            for name, p in ours.named_parameters():
                if p.dim() == 2 and "lora" not in name:
                    p.normal_(0, p.shape[1] ** -0.5)
    ours.to(dtype)
    llama.to(dtype)
    if decode_layout and not meta:
        _decode_layout_(ours)
        _decode_layout_(llama)
    ours.eval().requires_grad_(False)
    llama.eval().requires_grad_(False)
    info = {"ours_params": _count(ours), "llama_params": _count(llama), "intermediate": intermediate}
    return ours, llama, info


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(item) for item in x)
    return 0


class Ours:
    """Prefill in parallel, decode recurrently with the carried ``RWKVState``."""

    name = "ours"

    def __init__(self, model) -> None:
        self.model = model

    def prefill(self, tokens):
        _, state = self.model(tokens, logits_to_keep=1)
        return state

    def step(self, token, state):
        _, state = self.model(token, state)
        return state

    def rewind(self, state) -> None:
        """Nothing to undo: the state has no length."""

    def repeat(self, state: RWKVState, batch: int) -> RWKVState:
        return RWKVState(tuple(cat_states([layer] * batch) for layer in state.layers))

    def state_bytes(self, state: RWKVState) -> int:
        return _nbytes(state.layers)

    def state_bytes_for(self, batch: int, context: int) -> int:
        """Bytes of the carried state at any context (``init_state`` on ``meta``: nothing allocated)."""
        return _nbytes(self.model.init_state(batch, device="meta").layers)


class Transformer:
    """Prefill into a ``DynamicCache``, decode one token at a time with it."""

    name = "transformer"

    def __init__(self, model) -> None:
        from transformers import DynamicCache

        self.model = model
        self._cache_class = DynamicCache
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x

    def prefill(self, tokens):
        cache = self._cache_class(config=self.model.config)
        self.model(tokens, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        return cache

    def step(self, token, cache):
        self.model(token, use_cache=True, **{self._cache_kw: cache})
        return cache

    def rewind(self, cache) -> None:
        cache.crop(-1)

    def repeat(self, cache, batch: int):
        cache.batch_repeat_interleave(batch)
        return cache

    def state_bytes(self, cache) -> int:
        return sum(_nbytes((layer.keys, layer.values)) for layer in cache.layers)

    def state_bytes_for(self, batch: int, context: int) -> int:
        """Bytes of the KV cache after ``context`` tokens."""
        cfg = self.model.config
        itemsize = self.model.lm_head.weight.element_size()
        return 2 * cfg.num_hidden_layers * batch * context * cfg.num_key_value_heads * cfg.head_dim * itemsize


# --- measurement ------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _libc():
    """glibc, or ``None`` (another C library: the CPU peaks are then coarser)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakMemory:
    """Peak memory above a baseline: CUDA allocations, or the CPU process's resident set.

    On the CPU, freed memory that glibc keeps for reuse would hide a later allocation from the resident
    set, so while probing (``with probing():``) glibc serves every block of 64 KiB or more by ``mmap`` and
    unmaps it when freed, and the heap is trimmed before the baseline: the resident set then follows the
    live tensors. That costs a page fault per fresh page, so the timings run outside the probe, with
    freed blocks up to 32 MiB kept for reuse (the ceiling of glibc's default adaptive threshold).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.available = self.cuda or os.access("/proc/self/clear_refs", os.W_OK)
        self.libc = None if self.cuda else _libc()
        self.base = self.start = 0

    @contextlib.contextmanager
    def probing(self):
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
            self.libc.mallopt(_M_TRIM_THRESHOLD, 1 << 16)
        try:
            yield self
        finally:
            if self.libc is not None:
                self.libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                self.libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)

    def _current(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _status_kib("VmRSS") * 1024

    def baseline(self) -> None:
        """Remember the memory in use now and start a new peak."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        elif self.libc is not None:
            self.libc.malloc_trim(0)
        self.base = self._current()
        self.restart()

    def restart(self) -> None:
        """Start a new peak from what is in use now (the baseline stays)."""
        if not self.available:
            return
        self.start = self._current()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS

    def _peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else _status_kib("VmHWM") * 1024

    def added(self) -> int | None:
        """Peak bytes above the baseline since the last ``restart``."""
        return max(0, self._peak() - self.base) if self.available else None

    def added_since_restart(self) -> int | None:
        """Peak bytes above what was in use at the last ``restart``."""
        return max(0, self._peak() - self.start) if self.available else None


@dataclasses.dataclass
class Point:
    """One model at one context."""

    decode_s: list[float] = dataclasses.field(default_factory=list)
    prefill_s: list[float] = dataclasses.field(default_factory=list)
    state_bytes: int = 0
    prefill_peak: int | None = None
    decode_peak: int | None = None

    @property
    def decode_ms(self) -> float:
        return statistics.median(self.decode_s) * 1e3

    @property
    def decode_iqr_ms(self) -> tuple[float, float]:
        if len(self.decode_s) < 2:
            return self.decode_ms, self.decode_ms
        q1, _, q3 = statistics.quantiles(self.decode_s, n=4, method="inclusive")
        return q1 * 1e3, q3 * 1e3

    @property
    def prefill_ms(self) -> float:
        return statistics.median(self.prefill_s) * 1e3


def _tokens(vocab: int, batch: int, length: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def measure_memory(runner, prompt, token, steps: int, mem: PeakMemory, device: str) -> Point:
    """One model alone: the peak of a prefill above the memory in use before it, and the memory decoding
    needs: the carried state (exact) plus the largest extra that ``steps`` decode steps allocate.

    Measuring the decode steps from the level after the prefill (not from before it) keeps whatever the
    prefill leaves behind in the allocator out of the decode figure.
    """
    point = Point()
    mem.baseline()
    state = runner.prefill(prompt)
    _sync(device)
    point.prefill_peak = mem.added()
    point.state_bytes = runner.state_bytes(state)
    mem.restart()
    for _ in range(steps):
        state = runner.step(token, state)
        runner.rewind(state)
    _sync(device)
    extra = mem.added_since_restart()
    point.decode_peak = None if extra is None else point.state_bytes + extra
    del state
    return point


DECODE_BLOCK = 8  # consecutive decode steps of one model before the other takes its turn


def measure_context(runners, context: int, plan: Preset, vocab: int, device: str, mem: PeakMemory, seed: int):
    """Memory alone per model, then interleaved prefill and decode timings; ``{name: Point}``."""
    prompt = _tokens(vocab, 1, context, device, seed)
    stream = _tokens(vocab, 1, plan.warmup + plan.steps, device, seed + 1)
    points = {}
    with mem.probing():
        for runner in runners:  # also the warm-up of this context's prefill
            points[runner.name] = measure_memory(runner, prompt, stream[:, :1], plan.memory_steps, mem, device)
            gc.collect()
    states = {}
    for i in range(plan.prefill_repeats):
        for runner in runners if i % 2 == 0 else runners[::-1]:
            states.pop(runner.name, None)
            _sync(device)
            t0 = time.perf_counter()
            states[runner.name] = runner.prefill(prompt)
            _sync(device)
            points[runner.name].prefill_s.append(time.perf_counter() - t0)
    # Blocks of consecutive steps per model, the order flipping every block: a step right after the other
    # model's would find the caches full of the other's weights and KV cache (64 MiB at 8K), which is not how
    # a server decodes; blocks still spread the machine's noise over both models.
    total = plan.warmup + plan.steps
    for b, start in enumerate(range(0, total, DECODE_BLOCK)):
        for runner in runners if b % 2 == 0 else runners[::-1]:
            for i in range(start, min(start + DECODE_BLOCK, total)):
                token = stream[:, i : i + 1]
                t0 = time.perf_counter()
                states[runner.name] = runner.step(token, states[runner.name])
                _sync(device)
                if i >= plan.warmup:
                    points[runner.name].decode_s.append(time.perf_counter() - t0)
                runner.rewind(states[runner.name])
    del states
    gc.collect()
    return points


def measure_batches(runners, plan: Preset, vocab: int, device: str, seed: int):
    """Decode throughput at each batch size at ``plan.batch_context``; ``{batch: {name: Point}}``."""
    prompt = _tokens(vocab, 1, plan.batch_context, device, seed)
    results = {}
    for batch in plan.batches:
        stream = _tokens(vocab, batch, plan.warmup + plan.steps, device, seed + 1)
        states, points = {}, {}
        for runner in runners:
            states[runner.name] = runner.repeat(runner.prefill(prompt), batch)
            points[runner.name] = Point(state_bytes=runner.state_bytes(states[runner.name]))
        for i in range(plan.warmup + plan.steps):
            token = stream[:, i : i + 1]
            for runner in runners if i % 2 == 0 else runners[::-1]:
                _sync(device)
                t0 = time.perf_counter()
                states[runner.name] = runner.step(token, states[runner.name])
                _sync(device)
                if i >= plan.warmup:
                    points[runner.name].decode_s.append(time.perf_counter() - t0)
                runner.rewind(states[runner.name])
        results[batch] = points
        del states
        gc.collect()
    return results


# --- report -----------------------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / MiB:.2f} MiB" if n < 10 * MiB else f"{n / MiB:,.0f} MiB"


def _ms(point: Point) -> str:
    lo, hi = point.decode_iqr_ms
    digits = 3 if point.decode_ms < 1 else 2
    return f"{point.decode_ms:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def _ctx(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else str(n)


CONTEXT_HEADER = [
    "| context | ours ms/token (IQR) | transformer ms/token (IQR) | ours / transformer | ours state "
    "| transformer KV cache | ours decode peak | transformer decode peak |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
PREFILL_HEADER = [
    "| context | ours prefill | ours tokens/s | transformer prefill | transformer tokens/s | ours / transformer "
    "| ours prefill peak | transformer prefill peak |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
BATCH_HEADER = [
    "| batch | ours tokens/s | transformer tokens/s | ours / transformer | ours state | transformer KV cache |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
]


def context_row(context: int, ours: Point, theirs: Point) -> str:
    return (
        f"| {context} | {_ms(ours)} | {_ms(theirs)} | {ours.decode_ms / theirs.decode_ms:.2f}x "
        f"| {_mib(ours.state_bytes)} | {_mib(theirs.state_bytes)} | {_mib(ours.decode_peak)} "
        f"| {_mib(theirs.decode_peak)} |"
    )


def prefill_row(context: int, ours: Point, theirs: Point) -> str:
    return (
        f"| {context} | {ours.prefill_ms:.1f} ms | {context / ours.prefill_ms * 1e3:,.0f} "
        f"| {theirs.prefill_ms:.1f} ms | {context / theirs.prefill_ms * 1e3:,.0f} "
        f"| {ours.prefill_ms / theirs.prefill_ms:.2f}x | {_mib(ours.prefill_peak)} | {_mib(theirs.prefill_peak)} |"
    )


def batch_row(batch: int, ours: Point, theirs: Point) -> str:
    o, t = batch / ours.decode_ms * 1e3, batch / theirs.decode_ms * 1e3
    return f"| {batch} | {o:,.0f} | {t:,.0f} | {o / t:.2f}x | {_mib(ours.state_bytes)} | {_mib(theirs.state_bytes)} |"


def key_ratios(by_context: dict[int, dict[str, Point]]) -> list[str]:
    """Flatness of ours and growth of the transformer from the smallest to the largest context."""
    lo, hi = min(by_context), max(by_context)
    o_lo, o_hi = by_context[lo]["ours"], by_context[hi]["ours"]
    t_lo, t_hi = by_context[lo]["transformer"], by_context[hi]["transformer"]
    span = f"{_ctx(hi)} / {_ctx(lo)}"
    lines = [
        f"- ours decode per token: {span} = {o_hi.decode_ms / o_lo.decode_ms:.2f}x (flat is 1.00x)",
        f"- transformer decode per token: {span} = {t_hi.decode_ms / t_lo.decode_ms:.2f}x",
        f"- at {_ctx(hi)} per token: ours / transformer = {o_hi.decode_ms / t_hi.decode_ms:.2f}x "
        f"(transformer / ours = {t_hi.decode_ms / o_hi.decode_ms:.2f}x)",
        f"- carried state: ours {_mib(o_hi.state_bytes)} at every context; the transformer's KV cache "
        f"{_mib(t_lo.state_bytes)} at {_ctx(lo)}, {_mib(t_hi.state_bytes)} at {_ctx(hi)}",
    ]
    if o_hi.decode_peak is not None and t_hi.decode_peak:
        change = 1 - o_hi.decode_peak / t_hi.decode_peak
        lines.append(
            f"- memory decoding needs at {_ctx(hi)}: ours {_mib(o_hi.decode_peak)}, transformer "
            f"{_mib(t_hi.decode_peak)} (ours {100 * abs(change):.0f}% {'less' if change >= 0 else 'more'})"
        )
    return lines


def plot(by_context: dict[int, dict[str, Point]], path: Path, title: str) -> None:
    """Decode latency and memory against context (log-x), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted(by_context)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label, color in (("ours", "ours (RWKV-6)", "tab:blue"), ("transformer", "Llama (sdpa)", "tab:red")):
        points = [by_context[c][name] for c in contexts]
        ms = [p.decode_ms for p in points]
        lo, hi = zip(*(p.decode_iqr_ms for p in points))
        ax_t.plot(contexts, ms, "o-", color=color, label=label)
        ax_t.fill_between(contexts, lo, hi, color=color, alpha=0.2)
        ax_m.plot(contexts, [p.state_bytes / MiB for p in points], "o--", color=color, label=f"{label}: state")
        if all(p.decode_peak is not None for p in points):
            peaks = [p.decode_peak / MiB for p in points]
            ax_m.plot(contexts, peaks, "s-", color=color, label=f"{label}: decode peak")
    for ax, ylabel in ((ax_t, "decode ms / token (median, IQR)"), (ax_m, "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [_ctx(c) for c in contexts])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_title("decode latency per token")
    ax_m.set_title("memory of decoding")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


# --- command line -----------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in text.replace(",", " ").split())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=["cpu", "1b6"], help="model shape and plan (default cpu)")
    p.add_argument("--quick", action="store_true", help="smoke run: C=64 L=2 V=100, contexts 16,32, 3 steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--dim", type=int, help="width C")
    p.add_argument("--layers", type=int, help="depth L")
    p.add_argument("--vocab", type=int, help="vocabulary V")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kv-heads", type=int, help="transformer key/value heads (default: all heads, MHA)")
    p.add_argument("--intermediate", type=int, help="transformer MLP width (default: parameter-matched)")
    p.add_argument("--contexts", type=_ints, help="e.g. 256,512,1024")
    p.add_argument("--steps", type=int, help="timed decode steps per context and batch")
    p.add_argument("--warmup", type=int, help="untimed decode steps first")
    p.add_argument("--prefill-repeats", type=int)
    p.add_argument("--memory-steps", type=int, help="decode steps in the memory probe")
    p.add_argument("--batches", type=_ints, help="batch sizes for decode throughput, e.g. 1,4,16,64")
    p.add_argument("--batch-context", type=int, help="context of the batch table")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--plain-layout", action="store_true", help="CPU: keep [out, in] weights (see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help=f"write the table and PNG to DIR (default {RESULTS})")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="build both models on meta, print sizes and the plan")
    args = p.parse_args(argv)
    base = PRESETS["quick" if args.quick else args.preset]
    overrides = {
        "dim": args.dim,
        "num_layers": args.layers,
        "vocab_size": args.vocab,
        "contexts": args.contexts,
        "steps": args.steps,
        "warmup": args.warmup,
        "prefill_repeats": args.prefill_repeats,
        "memory_steps": args.memory_steps,
        "batches": args.batches,
        "batch_context": args.batch_context,
    }
    plan = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if plan.steps < 1 or plan.prefill_repeats < 1 or plan.warmup < 0 or plan.memory_steps < 0:
        raise SystemExit("--steps and --prefill-repeats must be >= 1, --warmup and --memory-steps >= 0")
    return args, plan


def _command(argv: Sequence[str] | None) -> str:
    return "`python benchmarks/inference.py" + (" " + " ".join(argv) if argv else "") + "`"


def dry_run(args, plan: Preset, dtype: torch.dtype) -> dict:
    """Both models on ``meta``: parameter counts, the MLP width and the carried state at each context."""
    ours, llama, info = build_models(
        plan, "meta", dtype, head_dim=args.head_dim, kv_heads=args.kv_heads, intermediate=args.intermediate
    )
    o, t = Ours(ours), Transformer(llama)
    print(
        f"ours {info['ours_params']:,} parameters; transformer {info['llama_params']:,} "
        f"(MLP width {info['intermediate']}); {args.device} {args.dtype}"
    )
    print("| context | ours state | transformer KV cache |\n| ---: | ---: | ---: |")
    for context in plan.contexts:
        print(f"| {context} | {_mib(o.state_bytes_for(1, context))} | {_mib(t.state_bytes_for(1, context))} |")
    b = max(plan.batches)
    print(
        f"batches {', '.join(map(str, plan.batches))} at context {plan.batch_context}: at batch {b} ours "
        f"{_mib(o.state_bytes_for(b, plan.batch_context))}, transformer "
        f"{_mib(t.state_bytes_for(b, plan.batch_context))}"
    )
    return {"info": info, "plan": plan, "llama_config": llama.config}


def main(argv: Sequence[str] | None = None) -> dict:
    args, plan = parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        return dry_run(args, plan, dtype)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device (--dry-run checks the shapes without one)")
    import transformers

    device = args.device
    max_context = max(plan.contexts + (plan.batch_context,)) + 64
    decode_layout = device == "cpu" and not args.plain_layout
    ours_model, llama_model, info = build_models(
        plan,
        device,
        dtype,
        head_dim=args.head_dim,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        max_context=max_context,
        decode_layout=decode_layout,
        seed=args.seed,
    )
    runners = [Ours(ours_model), Transformer(llama_model)]
    cfg = llama_model.config
    layout = " On the CPU both store weights in the [in, out] decode layout." if decode_layout else ""
    header = [
        f"# Decode cost against context: RWKV-6 beside a Llama transformer ({_machine(device)})",
        "",
        f"C={plan.dim}, L={plan.num_layers}, V={plan.vocab_size}, head size {args.head_dim}, {args.dtype}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; random weights. "
        f"Ours: x060, {info['ours_params']:,} parameters. Transformer: LlamaForCausalLM, sdpa, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, MLP width {info['intermediate']} "
        f"(parameter-matched), DynamicCache, {info['llama_params']:,} parameters.{layout} "
        f"Decode: median of {plan.steps} steps (interleaved in blocks of {DECODE_BLOCK}) after {plan.warmup} "
        f"warm-up, each at exactly that context; prefill: median of {plan.prefill_repeats}. Command: {_command(argv)}",
        "",
        "Paper (DESIGN.md §14): at 24,576 tokens VisualRWKV is 3.98x faster than LLaVA-1.5 and uses 54% less memory.",
        "",
    ]
    print("\n".join(header), flush=True)
    mem = PeakMemory(device)
    with torch.inference_mode():
        warm = _tokens(plan.vocab_size, 1, 8, device, args.seed)
        for runner in runners:  # first calls (thread pools, kernel selection) outside every measurement
            state = runner.prefill(warm)
            for i in range(2):
                state = runner.step(warm[:, i : i + 1], state)
        del state
        print("\n".join(CONTEXT_HEADER), flush=True)
        by_context = {}
        for context in plan.contexts:
            by_context[context] = measure_context(runners, context, plan, plan.vocab_size, device, mem, args.seed)
            print(context_row(context, by_context[context]["ours"], by_context[context]["transformer"]), flush=True)
        by_batch = measure_batches(runners, plan, plan.vocab_size, device, args.seed)
    context_rows = CONTEXT_HEADER + [
        context_row(c, by_context[c]["ours"], by_context[c]["transformer"]) for c in plan.contexts
    ]
    prefill_rows = PREFILL_HEADER + [
        prefill_row(c, by_context[c]["ours"], by_context[c]["transformer"]) for c in plan.contexts
    ]
    batch_rows = BATCH_HEADER + [batch_row(b, by_batch[b]["ours"], by_batch[b]["transformer"]) for b in plan.batches]
    how = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak resident set, VmHWM"
    memory_note = (
        "Memory: state = the tensors carried from step to step (exact bytes); decode peak = that state plus the "
        f"largest extra one decode step allocates ({how}); prefill peak (below) = above the loaded model."
        if mem.available
        else "Memory: state = the tensors carried from step to step (exact bytes); peaks are not measurable here."
    )
    ratios = key_ratios(by_context)
    body = [
        "## Decode, batch 1",
        "",
        *context_rows,
        "",
        memory_note,
        "",
        *ratios,
        "",
        "## Prefill, batch 1 (last position's logits only)",
        "",
        *prefill_rows,
        "",
        f"## Decode throughput against batch size, context {plan.batch_context}",
        "",
        *batch_rows,
    ]
    print("\n" + "\n".join(body[body.index(memory_note) :]), flush=True)
    out = args.out or (None if args.quick or args.no_write else RESULTS)
    written = []
    if out is not None and not args.no_write:
        out.mkdir(parents=True, exist_ok=True)
        where = device.split(":")[0]
        if where == "cuda":  # the card's name: tables from different GPUs sit side by side
            where = torch.cuda.get_device_name(device).replace(" ", "-")
        stem = f"inference-{where}-{args.dtype}"
        md = out / f"{stem}.md"
        if not args.no_plot:
            png = out / f"{stem}.png"
            plot(by_context, png, f"C={plan.dim} L={plan.num_layers} {args.dtype}, {_machine(device)}")
            body += ["", f"![decode latency and memory against context]({png.name})"]
            written.append(png)
        _write(md, "\n".join(header + body) + "\n")
        written.insert(0, md)
        for path in written:
            print(f"wrote {path}")
    return {"info": info, "by_context": by_context, "by_batch": by_batch, "written": written}


if __name__ == "__main__":
    main(sys.argv[1:])
