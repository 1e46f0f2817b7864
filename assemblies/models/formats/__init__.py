"""Checkpoint formats. None of these modules imports the model modules that use them.

- ``pretrained``: our directory format (``config.json`` + ``model.safetensors``).
- ``upstream``: howard-hou/VisualRWKV ``.pth`` files.
- ``blinkdl``: BlinkDL's RWKV-5/6/7 language-model ``.pth`` files (``load_blinkdl`` / ``save_blinkdl``).
- ``fla``: RWKV-7 weights between BlinkDL's names and fla's / Hugging Face's (``blinkdl_to_fla`` / ``fla_to_blinkdl``).
"""

from .blinkdl import load_blinkdl, save_blinkdl

__all__ = ["load_blinkdl", "save_blinkdl"]
