"""Sampling settings and the logits processors of ChatRWKV (DESIGN.md §17), one request at a time.

Order per step (``process_logits``): bans, then penalties on the tokens generated so far (repetition, presence,
frequency), then temperature, then the cut-offs (top-k, top-p, min-p). ``temperature=0`` is greedy decoding (the
default, as evaluation wants); every random choice draws from the request's own ``torch.Generator`` so a seed
reproduces a request whatever else shares its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Penalties", "SamplingConfig", "process_logits", "sample_token", "top_logprobs"]


@dataclass(frozen=True)
class SamplingConfig:
    """How one request decodes.

    Attributes:
        max_new_tokens: Tokens to generate at most (the stop token not counted).
        temperature: 0 = greedy; otherwise logits are divided by it before sampling.
        top_k: Keep the ``k`` most likely tokens (0 = all).
        top_p: Keep the smallest set whose probability reaches ``p``, in (0, 1].
        min_p: Drop tokens less likely than ``min_p`` times the most likely one, in [0, 1).
        repetition_penalty: Divide positive logits (multiply negative ones) of tokens already generated (1 = off).
        presence_penalty: ChatRWKV's alpha_presence: subtracted once from every generated token's logit.
        frequency_penalty: ChatRWKV's alpha_frequency: subtracted per (decayed) occurrence.
        penalty_decay: Each step the occurrence counts are multiplied by this (ChatRWKV chat: 0.996).
        banned_tokens: Ids that are never generated.
        stop_tokens: Ids that end generation (not returned): ``"\\n\\n"`` (261) and 0 in the World vocabulary.
        stop_strings: Texts that end generation and are not returned; they may span several tokens.
        seed: Seed of this request's generator (``None``: a fresh random seed).
        logprobs: Also return each token's log-probability and the ``logprobs`` most likely alternatives
            (``None``: none; 0: the chosen token's only).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 1.0
    banned_tokens: tuple[int, ...] = ()
    stop_tokens: tuple[int, ...] = (261, 0)
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        for name in ("banned_tokens", "stop_tokens", "stop_strings"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                raise ValueError(f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        checks = {
            "max_new_tokens": (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an int >= 1"),
            "temperature": (_finite(self.temperature) and self.temperature >= 0, "a finite number >= 0"),
            "top_k": (isinstance(self.top_k, int) and self.top_k >= 0, "an int >= 0 (0 = off)"),
            "top_p": (_finite(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            "min_p": (_finite(self.min_p) and 0 <= self.min_p < 1, "in [0, 1)"),
            "repetition_penalty": (_finite(self.repetition_penalty) and self.repetition_penalty > 0, "a number > 0"),
            "presence_penalty": (_finite(self.presence_penalty), "a finite number"),
            "frequency_penalty": (_finite(self.frequency_penalty), "a finite number"),
            "penalty_decay": (_finite(self.penalty_decay) and 0 < self.penalty_decay <= 1, "in (0, 1]"),
            "stop_strings": (all(isinstance(s, str) and s for s in self.stop_strings), "non-empty strings"),
            "logprobs": (self.logprobs is None or (isinstance(self.logprobs, int) and self.logprobs >= 0), ">= 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ``ValueError`` when a banned or stop id is outside ``[0, vocab_size)``."""
        for name in ("banned_tokens", "stop_tokens"):
            bad = [t for t in getattr(self, name) if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{name} must be ids in [0, {vocab_size}), got {bad}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Penalties:
    """The decayed occurrence counts of one request's generated tokens (ChatRWKV's ``occurrence``)."""

    def __init__(self, vocab_size: int, device: torch.device | str) -> None:
        self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)

    def update(self, token: int, decay: float) -> None:
        if decay != 1:
            self.counts.mul_(decay)
        self.counts[token] += 1
        self.seen[token] = True


def process_logits(logits: Tensor, config: SamplingConfig, penalties: Penalties | None = None) -> Tensor:
    """The processed logits `[V]` (fp32) of one request: bans, penalties, temperature, top-k / top-p / min-p."""
    x = logits.float().clone()
    if config.banned_tokens:
        x[list(config.banned_tokens)] = -math.inf
    if penalties is not None and config.penalised:
        seen = penalties.seen
        if config.repetition_penalty != 1:
            picked = x[seen]
            x[seen] = torch.where(picked > 0, picked / config.repetition_penalty, picked * config.repetition_penalty)
        x -= (config.presence_penalty * seen) + config.frequency_penalty * penalties.counts
    if config.greedy:
        return x
    x /= config.temperature
    if config.top_k and config.top_k < x.numel():
        kth = torch.topk(x, config.top_k).values[-1]
        x[x < kth] = -math.inf
    if config.top_p < 1 or config.min_p > 0:
        probs = torch.softmax(x, -1)
        if config.min_p > 0:
            x[probs < config.min_p * probs.max()] = -math.inf
        if config.top_p < 1:
            order = torch.argsort(probs, descending=True)
            before = torch.cumsum(probs[order], 0) - probs[order]  # mass of the tokens ranked above
            x[order[before >= config.top_p]] = -math.inf
    return x


def sample_token(processed: Tensor, config: SamplingConfig, generator: torch.Generator | None) -> int:
    """Greedy arg-max, or a draw from ``softmax(processed)`` with the request's generator."""
    if config.greedy:
        return int(processed.argmax())
    probs = torch.softmax(processed, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logits: Tensor, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of ``token`` and its ``n`` most likely alternatives (``(id, logprob)``)."""
    logp = torch.log_softmax(logits.float(), -1)
    alternatives: Sequence[tuple[int, float]] = []
    if n:
        values, ids = torch.topk(logp, min(n, logp.numel()))
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), list(alternatives)
