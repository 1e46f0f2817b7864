"""rwkvblocks: composable, verified building blocks for linear-RNN (RWKV) visual language models.

Layers, from the bottom: ``rwkvblocks.ops`` (functional kernels), blocks (``rwkvblocks``),
``rwkvblocks.vision`` and ``rwkvblocks.prompting``; whole models live in ``assemblies``.
Heavy optional dependencies (triton, timm, open_clip, xformers) are imported lazily.
"""

from .ops import BackendUnavailableError, wkv5, wkv6

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "__version__", "wkv5", "wkv6"]
