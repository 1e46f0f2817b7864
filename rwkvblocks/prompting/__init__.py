"""Prompt builders (image first / last / sandwich), chat template, labels, tokenizers and LLaVA data.

- ``ImageFirstPromptBuilder``, ``ImageLastPromptBuilder``, ``SandwichPromptBuilder``: upstream VisualRWKV's chat
  format, turning a LLaVA conversation into token ids, labels and image span offsets (``Prompt``).
- ``WorldTokenizer`` (RWKV World vocabulary), ``ByteTokenizer`` (257 ids, for demos) and the
  ``Tokenizer`` interface they share.
- ``LLaVADataset``, ``LLaVACollator``, ``LLaVAPackingCollator`` / ``pack_batch`` (samples packed into rows with
  ``cu_seqlens``), ``SkipReport``: LLaVA-1.5 JSON files read lazily, batches padded
  on the right with per-sample image spans, and a whole-run report of skipped bad samples.
"""

from .dataset import (
    BadSampleError,
    LLaVACollator,
    LLaVADataset,
    LLaVAPackingCollator,
    LLaVASample,
    SkippedSample,
    SkipReport,
    pack_batch,
)
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
    "LLaVAPackingCollator",
    "LLaVASample",
    "Prompt",
    "PromptBuilder",
    "SHORT_ANSWER_PHRASE",
    "SandwichPromptBuilder",
    "SkipReport",
    "SkippedSample",
    "Tokenizer",
    "WorldTokenizer",
    "pack_batch",
    "prompt_builder",
]
