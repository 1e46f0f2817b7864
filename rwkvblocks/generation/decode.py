"""The decode loop over any model that follows the state protocol: batched, padding-free, streaming.

A model here is two functions: ``prefill(tokens [b, T]) -> (last logits [b, V], state)`` for prompts of one
length, and ``step(tokens [B, 1], state) -> (logits [B, 1, V], state)``; ``RWKVLanguageModel`` gives both
(``lm_functions``). Prompts of different lengths are prefilled in groups of equal length and never padded, so
no row's state depends on another's; rows then decode together in one batch (a *cohort*) and leave it when they
finish (``RWKVState`` indexing). States that cannot share a batch (attention KV caches of different lengths, in
hybrid models) decode in cohorts of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..state import RWKVState
from .sampling import Penalties, SamplingConfig, process_logits, sample_token, top_logprobs
from .text import TextStream

__all__ = [
    "Decoder",
    "GenerationEvent",
    "GenerationResult",
    "TokenLogprob",
    "decode",
    "generate_ids",
    "lm_functions",
    "score_continuations",
    "step_function",
]

Prefill = Callable[[Tensor], tuple[Tensor, RWKVState]]
Step = Callable[[Tensor, RWKVState], tuple[Tensor, RWKVState]]


class TokenLogprob(NamedTuple):
    """A generated token, the model's log-probability of it, and the most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class GenerationResult:
    """What one request produced.

    Attributes:
        tokens: Generated ids (without the stop token).
        text: Their text (without the stop string), when a ``decode_bytes`` was given.
        finish_reason: ``"stop"`` (stop token or stop string), ``"length"`` (``max_new_tokens``), or ``"error"``
            (choosing its token raised, with ``Decoder(isolate_errors=True)``; the message is in ``error``).
        stop: The stop token id or stop string that ended it (``None`` for ``"length"``).
        logprobs: One ``TokenLogprob`` per token when the config asked for them.
        prompt_tokens: Length of the prompt.
        state: With ``decode(..., return_state=True)``: the state after the prompt and every generated token
            but the last (which was chosen and never fed); feed it (and the turn's end) to continue.
        logits: With ``state``: the logits `[1, V]` of the next token after ``state`` (the ones the last token was
            chosen from), so that ``(logits, state)`` is a prefilled start like any other.
        error: Why the request ended with ``finish_reason="error"``.
    """

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    stop: int | str | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_tokens: int = 0
    state: RWKVState | None = None
    logits: Tensor | None = None
    error: str | None = None


class GenerationEvent(NamedTuple):
    """One step of one request: its index, the token, the new final text (may be ``""``), and the result when
    the request has finished (else ``None``)."""

    index: int
    token: int | None
    piece: str
    result: GenerationResult | None


class _Row:
    def __init__(self, index: int, config: SamplingConfig, vocab: int, device, decode_bytes, prompt_tokens: int):
        self.index, self.config = index, config
        self.generator = None
        if not config.greedy:
            self.generator = torch.Generator(device="cpu")
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)
        self.penalties = Penalties(vocab, device) if config.penalised else None
        self.stream = TextStream(decode_bytes, config.stop_strings) if decode_bytes is not None else None
        self.result = GenerationResult(
            prompt_tokens=prompt_tokens, logprobs=[] if config.logprobs is not None else None
        )

    def choose(self, logits: Tensor) -> tuple[int | None, str, bool]:
        """Pick the next token from this row's logits `[V]`; returns (token fed next or None, piece, done)."""
        cfg, res = self.config, self.result
        token = sample_token(process_logits(logits, cfg, self.penalties), cfg, self.generator)
        if token in cfg.stop_tokens:
            res.finish_reason, res.stop = "stop", token
            return None, self._flush(), True
        res.tokens.append(token)
        if res.logprobs is not None:
            res.logprobs.append(TokenLogprob(token, *top_logprobs(logits, token, cfg.logprobs)))
        if self.penalties is not None:
            self.penalties.update(token, cfg.penalty_decay)
        piece = ""
        if self.stream is not None:
            piece = self.stream.push(token)
            if self.stream.stopped is not None:
                res.finish_reason, res.stop = "stop", self.stream.stopped
                return None, piece + self._flush(), True
        if len(res.tokens) >= cfg.max_new_tokens:
            res.finish_reason = "length"
            return None, piece + self._flush(), True
        return token, piece, False

    def _flush(self) -> str:
        if self.stream is None:
            return ""
        piece = self.stream.flush()
        self.result.text = self.stream.text
        return piece


class _Cohort:
    """Rows that decode in one batch: their states joined, their pending logits `[b, V]`."""

    def __init__(self, rows: list[_Row], state: RWKVState, logits: Tensor):
        self.rows, self.state, self.logits = rows, state, logits


def _join(cohorts: list[_Cohort], new: _Cohort) -> None:
    """Add ``new`` to the first cohort whose states it can be batched with, else keep it apart."""
    for cohort in cohorts:
        try:
            state = RWKVState.cat([cohort.state, new.state])
        except ValueError:  # e.g. attention KV caches of different lengths
            continue
        cohort.rows += new.rows
        cohort.state, cohort.logits = state, torch.cat([cohort.logits, new.logits])
        return
    cohorts.append(new)


class Decoder:
    """The decode batch of a server: requests join between steps and leave when they finish.

    Args:
        step: ``step(tokens [B, 1], state) -> (logits [B, 1, V], state)``.
        vocab_size: ``V``.
        decode_bytes: The tokenizer's ``decode_bytes``, for text and stop strings.
        return_state: Put each request's final state and its next-token logits in its result (to continue a
            conversation from it).
        isolate_errors: An exception while choosing one request's token (sampling, decoding its text) ends that
            request alone with ``finish_reason="error"``; the others go on. Default: the exception propagates.

    Example:
        >>> import torch
        >>> from assemblies import RWKVConfig, build_rwkv_lm
        >>> lm = build_rwkv_lm(RWKVConfig("x060", vocab_size=50, dim=64, num_layers=1, head_dim=32))
        >>> prefill, step = lm_functions(lm)
        >>> decoder = Decoder(step, vocab_size=50)
        >>> first = decoder.add(*prefill(torch.tensor([[1, 2, 3]])), SamplingConfig(max_new_tokens=4, stop_tokens=()))
        >>> events = decoder.step()  # one token for every active request
        >>> second = decoder.add(*prefill(torch.tensor([[4, 5]])), SamplingConfig(max_new_tokens=2, stop_tokens=()))
        >>> while decoder.active:
        ...     events += decoder.step()
        >>> sorted(len(e.result.tokens) for e in events if e.result is not None)
        [2, 4]
    """

    def __init__(
        self,
        step: Step,
        *,
        vocab_size: int,
        decode_bytes: Callable[[Sequence[int]], bytes] | None = None,
        return_state: bool = False,
        isolate_errors: bool = False,
    ) -> None:
        self._step, self.vocab_size = step, vocab_size
        self.decode_bytes, self.return_state, self.isolate_errors = decode_bytes, return_state, isolate_errors
        self._cohorts: list[_Cohort] = []
        self._next = 0

    @property
    def active(self) -> int:
        """Requests still decoding."""
        return sum(len(c.rows) for c in self._cohorts)

    def add(self, logits: Tensor, state: RWKVState, config: SamplingConfig, *, prompt_tokens: int = 0) -> int:
        """Add a prefilled request (last logits `[1, V]` or `[V]`, state of batch 1); returns its index."""
        config.check_vocab(self.vocab_size)
        if state.batch_size != 1:
            raise ValueError(f"add one request at a time: the state has batch size {state.batch_size}")
        index, self._next = self._next, self._next + 1
        row = _Row(index, config, self.vocab_size, logits.device, self.decode_bytes, prompt_tokens)
        _join(self._cohorts, _Cohort([row], state, logits.reshape(1, -1)))
        return index

    def result(self, index: int) -> GenerationResult:
        """The live result of active request ``index``: its tokens and log-probabilities so far."""
        cohort, j = self._find(index)
        return cohort.rows[j].result

    def cancel(self, index: int) -> bool:
        """Drop active request ``index`` between steps (its client went away); returns whether it was active."""
        try:
            cohort, j = self._find(index)
        except KeyError:
            return False
        if len(cohort.rows) == 1:
            self._cohorts.remove(cohort)
            return True
        keep = [k for k in range(len(cohort.rows)) if k != j]
        cohort.state, cohort.logits = cohort.state[torch.tensor(keep)], cohort.logits[keep]
        del cohort.rows[j]
        return True

    def _find(self, index: int) -> tuple[_Cohort, int]:
        for cohort in self._cohorts:
            for j, row in enumerate(cohort.rows):
                if row.index == index:
                    return cohort, j
        raise KeyError(f"request {index} is not active")

    def step(self) -> list[GenerationEvent]:
        """Choose one token for every active request and feed the batch once; finished requests leave."""
        events = []
        for cohort in list(self._cohorts):
            keep, tokens = [], []
            for j, row in enumerate(cohort.rows):
                try:
                    token, piece, done = row.choose(cohort.logits[j])
                except Exception as err:
                    if not self.isolate_errors:
                        raise
                    row.result.finish_reason, row.result.error = "error", f"{type(err).__name__}: {err}"
                    token, piece, done = None, "", True
                if done and self.return_state:
                    row.result.state, row.result.logits = cohort.state[j], cohort.logits[j : j + 1].clone()
                events.append(GenerationEvent(row.index, token, piece, row.result if done else None))
                if not done:
                    keep.append(j)
                    tokens.append(token)
            if not keep:
                self._cohorts.remove(cohort)
                continue
            state = cohort.state if len(keep) == len(cohort.rows) else cohort.state[torch.tensor(keep)]
            logits, state = self._step(torch.tensor(tokens, device=cohort.logits.device).view(-1, 1), state)
            cohort.rows = [cohort.rows[j] for j in keep]
            cohort.state, cohort.logits = state, logits[:, -1]
        return events


def decode(
    step: Step,
    starts: Sequence[tuple[Tensor, RWKVState]],
    configs: Sequence[SamplingConfig],
    *,
    vocab_size: int,
    decode_bytes: Callable[[Sequence[int]], bytes] | None = None,
    prompt_tokens: Sequence[int] | None = None,
    return_state: bool = False,
) -> Iterator[GenerationEvent]:
    """Decode every request from its prefilled ``(last logits [1, V] or [V], state of batch 1)`` (a ``Decoder``
    that every request joins at once).

    ``return_state=True`` puts each request's final state in its result (``GenerationResult.state``), for a
    conversation that continues from it.

    Yields a ``GenerationEvent`` per request per step, in request order within a step; the last event of a
    request carries its ``GenerationResult``.
    """
    if len(starts) != len(configs):
        raise ValueError(f"got {len(starts)} prefilled requests and {len(configs)} sampling configs")
    decoder = Decoder(step, vocab_size=vocab_size, decode_bytes=decode_bytes, return_state=return_state)
    for i, ((logits, state), cfg) in enumerate(zip(starts, configs)):
        decoder.add(logits, state, cfg, prompt_tokens=0 if prompt_tokens is None else prompt_tokens[i])
    while decoder.active:
        yield from decoder.step()


def lm_functions(model, *, compile: bool | str = False) -> tuple[Prefill, Step]:
    """``prefill`` and ``step`` of an ``RWKVLanguageModel`` (or anything called like one), without gradients.

    Args:
        model: The model.
        compile: Compile the decode step (``step_function``); the prefill runs eagerly either way.
    """

    @torch.no_grad()
    def prefill(tokens: Tensor) -> tuple[Tensor, RWKVState]:
        logits, state = model(tokens, logits_to_keep=1)
        return logits[:, -1], state

    return prefill, step_function(model, compile=compile)


def _model_step(model, tokens: Tensor, state: RWKVState) -> tuple[Tensor, RWKVState]:
    return model(tokens, state)


_COMPILED_STEPS: dict[tuple[str | None, bool], Callable] = {}


def step_function(model, *, compile: bool | str = False) -> Step:
    """``step(tokens [B, L], state) -> (logits [B, L, V], state)`` of ``model``, without gradients.

    Args:
        model: An ``RWKVLanguageModel`` or anything called as ``model(tokens, state)``.
        compile: ``True`` runs the step through ``torch.compile(fullgraph=True)``: one graph per model, whatever
            the batch size after the second one seen (sizes then become symbolic), with the blocks' element-wise
            work fused; the first call of each new shape compiles (seconds). On the CPU the graph is called
            through Inductor's C++ wrapper (``cpp_wrapper``), which takes the Python launcher's per-kernel
            overhead out of every token. A string is the compile ``mode`` (``"reduce-overhead"`` adds CUDA
            graphs on a GPU). ``False`` (default) runs eagerly.

    Example:
        >>> import torch
        >>> from assemblies import RWKVConfig, build_rwkv_lm
        >>> lm = build_rwkv_lm(RWKVConfig("x060", vocab_size=32, dim=64, num_layers=1, head_dim=32))
        >>> logits, state = lm(torch.tensor([[1, 2]]))
        >>> step = step_function(lm)
        >>> step(torch.tensor([[3]]), state)[0].shape
        torch.Size([1, 1, 32])
    """
    if compile is False:
        run = model
    else:
        if not isinstance(compile, (bool, str)):
            raise ValueError(f"compile must be a bool or a torch.compile mode string, got {compile!r}")
        mode = None if compile is True else compile
        parameter = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        cpp = mode is None and parameter is not None and parameter.device.type == "cpu"
        key = (mode, cpp)
        if key not in _COMPILED_STEPS:  # one compiled function per mode: its graphs are cached per model
            options = {"options": {"cpp_wrapper": True}} if cpp else {"mode": mode}
            _COMPILED_STEPS[key] = torch.compile(_model_step, fullgraph=True, **options)
        compiled = _COMPILED_STEPS[key]

        def run(tokens: Tensor, state: RWKVState):
            return compiled(model, tokens, state)

    @torch.no_grad()
    def step(tokens: Tensor, state: RWKVState) -> tuple[Tensor, RWKVState]:
        return run(tokens, state)

    return step


def _prefill_by_length(prefill: Prefill, prompts: Sequence[Tensor]) -> list[tuple[Tensor, RWKVState]]:
    """Prefill prompts of equal length together, never padding; one ``(logits [1, V], state)`` per prompt."""
    out: list = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for members in groups.values():
        logits, state = prefill(torch.stack([prompts[i] for i in members]))
        for j, i in enumerate(members):
            out[i] = (logits[j : j + 1], state[j])
    return out


def generate_ids(
    model,
    prompts: Sequence[Sequence[int] | Tensor],
    configs: SamplingConfig | Sequence[SamplingConfig] | None = None,
    *,
    decode_bytes: Callable[[Sequence[int]], bytes] | None = None,
    context_length: int | None = None,
    compile: bool | str = False,
) -> list[GenerationResult]:
    """Generate from token-id prompts with an ``RWKVLanguageModel``, all requests in one batch.

    Args:
        model: An ``RWKVLanguageModel`` (any state-protocol stack).
        prompts: One list (or 1-D tensor) of ids per request; lengths may differ.
        configs: One ``SamplingConfig`` for all, or one per request (default: greedy, ``SamplingConfig()``).
        decode_bytes: The tokenizer's ``decode_bytes``, for ``text`` and stop strings.
        context_length: Refuse prompts longer than this.
        compile: Compile the decode step (see ``step_function``).

    Raises:
        ValueError: an empty prompt, one longer than ``context_length``, or ids outside the vocabulary.
    """
    device = model.emb.weight.device
    tensors = _check_prompts(prompts, model.vocab_size, context_length, device)
    configs = SamplingConfig() if configs is None else configs
    configs = [configs] * len(tensors) if isinstance(configs, SamplingConfig) else list(configs)
    prefill, step = lm_functions(model, compile=compile)
    starts = _prefill_by_length(prefill, tensors)
    results: list = [None] * len(tensors)
    events = decode(
        step,
        starts,
        configs,
        vocab_size=model.vocab_size,
        decode_bytes=decode_bytes,
        prompt_tokens=[len(t) for t in tensors],
    )
    for event in events:
        if event.result is not None:
            results[event.index] = event.result
    return results


def _check_prompts(prompts, vocab_size: int, context_length: int | None, device) -> list[Tensor]:
    if not len(prompts):
        raise ValueError("prompts is empty: give at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        t = torch.as_tensor(p, dtype=torch.long).flatten().cpu()
        if t.numel() == 0:
            raise ValueError(f"prompt {i} is empty")
        if context_length is not None and t.numel() > context_length:
            raise ValueError(f"prompt {i} has {t.numel()} tokens, more than the context length {context_length}")
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise ValueError(
                f"prompt {i} has ids outside [0, {vocab_size}): {t[(t < 0) | (t >= vocab_size)][:5].tolist()}"
            )
        out.append(t.to(device))
    return out


@torch.no_grad()
def score_continuations(
    step: Step, logits: Tensor, state: RWKVState, continuations: Sequence[Sequence[int]]
) -> list[float]:
    """Log-likelihood of each continuation after one shared prefill, batched over the continuations.

    Args:
        step: ``step(tokens [n, L], state) -> (logits [n, L, V], state)`` (``lm_functions(model)[1]``).
        logits: The prefix's last logits `[V]` or `[1, V]`; ``state``: its state (batch 1).
        continuations: Token ids of each choice (non-empty).

    Returns:
        ``sum_j log p(c_j | prefix, c_<j)`` per continuation. Right padding of shorter continuations never
        reaches a scored position (the model is causal).
    """
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    n, width = len(continuations), max(len(c) for c in continuations)
    tokens = torch.zeros(n, width, dtype=torch.long, device=logits.device)
    for i, c in enumerate(continuations):
        tokens[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
    first = torch.log_softmax(logits.reshape(1, -1).float(), -1).expand(n, -1)
    scores = first.gather(1, tokens[:, :1]).squeeze(1)
    if width > 1:
        out, _ = step(tokens[:, :-1], RWKVState.cat([state] * n))
        logp = torch.log_softmax(out.float(), -1).gather(2, tokens[:, 1:, None]).squeeze(2)  # [n, width - 1]
        lengths = torch.tensor([len(c) for c in continuations], device=logits.device)
        mask = torch.arange(1, width, device=logits.device)[None] < lengths[:, None]
        scores = scores + (logp * mask).sum(1)
    return scores.tolist()
