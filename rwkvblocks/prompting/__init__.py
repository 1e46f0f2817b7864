"""Prompt builders (image first / last / sandwich), chat template, labels, tokenizers and LLaVA data.

- ``ImageFirstPromptBuilder``, ``ImageLastPromptBuilder``, ``SandwichPromptBuilder``: upstream VisualRWKV's chat
  format, turning a LLaVA conversation into token ids, labels and image span offsets (``Prompt``).
- ``WorldTokenizer`` (RWKV World vocabulary), ``ByteTokenizer`` (257 ids, for demos) and the
  ``Tokenizer`` interface they share.
- ``LLaVADataset``, ``LLaVACollator``, ``SkipReport``: LLaVA-1.5 JSON files read lazily, batches padded
  on the right with per-sample image spans, and a whole-run report of skipped bad samples.
"""

from .dataset import BadSampleError, LLaVACollator, LLaVADataset, LLaVASample, SkippedSample, SkipReport
from .prompt import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    SHORT_ANSWER_PHRASE,
    ConversationError,
    ImageFirstPromptBuilder,
    ImageLastPromptBuilder,
    Prompt,
    PromptBuilder,
    SandwichPromptBuilder,
    prompt_builder,
)
from .tokenizer import ByteTokenizer, Tokenizer, WorldTokenizer

__all__ = [
    "BadSampleError",
    "ByteTokenizer",
    "ConversationError",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "ImageFirstPromptBuilder",
    "ImageLastPromptBuilder",
    "LLaVACollator",
    "LLaVADataset",
    "LLaVASample",
    "Prompt",
    "PromptBuilder",
    "SHORT_ANSWER_PHRASE",
    "SandwichPromptBuilder",
    "SkipReport",
    "SkippedSample",
    "Tokenizer",
    "WorldTokenizer",
    "prompt_builder",
]
