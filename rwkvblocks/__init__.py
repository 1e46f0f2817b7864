"""rwkvblocks: composable, verified building blocks for linear-RNN (RWKV) visual language models.

Layers, from the bottom: ``rwkvblocks.ops`` (functional kernels), blocks (``rwkvblocks``),
``rwkvblocks.vision`` and ``rwkvblocks.prompting``; whole models live in ``assemblies``.
Heavy optional dependencies (triton, timm, open_clip, xformers) are imported lazily.
"""

from .block import RWKVBlock
from .channel_mix import ChannelMix, ffn_dim
from .channel_mix7 import ChannelMix7
from .errors import CheckpointError, ConfigError
from .lm import RWKVLanguageModel
from .losses import BatchLevelCE, SampleLevelCE
from .ops import BackendUnavailableError, wkv5, wkv6
from .scan import Scanned, ScanPermuter, ScanPlan
from .state import KVCache, RWKVBlockState, RWKVState, TimeMixState
from .time_mix import DataDependentDecay, StaticDecay, TimeMix
from .time_mix7 import TimeMix7
from .tiny_attention import PreNormTinyAttention, TinyAttention
from .token_shift import DataDependentTokenShift, TokenShift, shift_tokens

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BatchLevelCE",
    "ChannelMix",
    "ChannelMix7",
    "CheckpointError",
    "ConfigError",
    "DataDependentDecay",
    "DataDependentTokenShift",
    "KVCache",
    "PreNormTinyAttention",
    "RWKVBlock",
    "RWKVBlockState",
    "RWKVLanguageModel",
    "RWKVState",
    "SampleLevelCE",
    "ScanPermuter",
    "ScanPlan",
    "Scanned",
    "StaticDecay",
    "TimeMix",
    "TimeMix7",
    "TimeMixState",
    "TinyAttention",
    "TokenShift",
    "__version__",
    "ffn_dim",
    "shift_tokens",
    "wkv5",
    "wkv6",
]
