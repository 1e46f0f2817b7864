"""Checkpoint formats. None of these modules imports the model modules that use them.

- ``pretrained``: our directory format (``config.json`` + ``model.safetensors``).
- ``upstream``: howard-hou/VisualRWKV ``.pth`` files.
- ``blinkdl``: BlinkDL's RWKV-5/6 language-model ``.pth`` files (``load_blinkdl`` / ``save_blinkdl``).
"""

from .blinkdl import load_blinkdl, save_blinkdl

__all__ = ["load_blinkdl", "save_blinkdl"]
