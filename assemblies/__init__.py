"""Whole models built from ``rwkvblocks``: builders, presets, checkpoint conversion, recipes, CLI.

So far: RWKV-5/6 language models (``build_rwkv_lm``) and BlinkDL checkpoints (``load_rwkv_lm``,
``save_rwkv_lm``).
"""

from .rwkv_lm import (
    RWKVConfig,
    blinkdl_to_state_dict,
    build_rwkv_lm,
    infer_rwkv_config,
    load_rwkv_lm,
    rwkv_config_of,
    save_rwkv_lm,
    state_dict_to_blinkdl,
)

__all__ = [
    "RWKVConfig",
    "blinkdl_to_state_dict",
    "build_rwkv_lm",
    "infer_rwkv_config",
    "load_rwkv_lm",
    "rwkv_config_of",
    "save_rwkv_lm",
    "state_dict_to_blinkdl",
]
