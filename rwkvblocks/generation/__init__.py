"""Generation over any model that follows the state protocol (``rwkvblocks.state``).

- ``SamplingConfig`` and the ChatRWKV logits processors: greedy, temperature, top-k, top-p, min-p, repetition,
  presence and frequency penalties with decay, bans, stop tokens and stop strings, a seed per request, and
  log-probabilities with the top alternatives.
- ``decode``: the batched loop — prompts of different lengths prefilled in equal-length groups (no padding
  through the recurrence), rows leaving the batch when done, events streamed per token; ``Decoder`` is the same
  batch for a server (requests join between steps); ``generate_ids`` runs it on an ``RWKVLanguageModel``.
- ``TextStream``: whole UTF-8 characters only; stop strings may span tokens and are never returned.
- ``PrefixCache``: states after a prefix, kept under a memory budget with LRU eviction.
- ``score_continuations``: the log-likelihood of several continuations after one shared prefill.
- ``step_function``: a model's decode step, eager or compiled (``compile=True``).
"""

from .cache import PrefixCache
from .decode import (
    Decoder,
    GenerationEvent,
    GenerationResult,
    TokenLogprob,
    decode,
    generate_ids,
    lm_functions,
    score_continuations,
    step_function,
)
from .sampling import Penalties, SamplingConfig, process_logits, sample_token, top_logprobs
from .text import TextStream

__all__ = [
    "Decoder",
    "GenerationEvent",
    "GenerationResult",
    "Penalties",
    "PrefixCache",
    "SamplingConfig",
    "TextStream",
    "TokenLogprob",
    "decode",
    "generate_ids",
    "lm_functions",
    "process_logits",
    "sample_token",
    "score_continuations",
    "step_function",
    "top_logprobs",
]
