"""Whole models built from ``rwkvblocks``: the VisualRWKV family, presets, checkpoints, stages, CLI.

- ``create_assembly(name, **overrides)`` / ``list_assemblies(pattern)``: presets of VisualRWKV,
  VisualRWKV-Base and VisualRWKV-Hybrid (paper sizes and tiny ones); ``ABLATIONS`` lists the paper's
  ablations as overrides.
- ``save_pretrained`` / ``from_pretrained``: ``config.json`` + ``model.safetensors``;
  ``load_upstream``: howard-hou/VisualRWKV ``.pth`` files.
- ``build_rwkv_lm``, ``load_rwkv_lm``, ``save_rwkv_lm``: RWKV-5/6 language models and BlinkDL ``.pth``.
- ``configure_stage``: the trainable parameters of each training stage.
"""

from .ablations import ABLATIONS
from .pretrained import from_pretrained, load_upstream, save_pretrained
from .registry import create_assembly, get_assembly_config, list_assemblies, register_assembly
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
from .stages import STAGES, configure_stage, set_trainable
from .visualrwkv import EncoderConfig, VisualRWKV, VisualRWKVConfig, VisualRWKVOutput, build_visualrwkv

__all__ = [
    "ABLATIONS",
    "EncoderConfig",
    "RWKVConfig",
    "STAGES",
    "VisualRWKV",
    "VisualRWKVConfig",
    "VisualRWKVOutput",
    "blinkdl_to_state_dict",
    "build_rwkv_lm",
    "build_visualrwkv",
    "configure_stage",
    "create_assembly",
    "from_pretrained",
    "get_assembly_config",
    "infer_rwkv_config",
    "list_assemblies",
    "load_rwkv_lm",
    "load_upstream",
    "register_assembly",
    "rwkv_config_of",
    "save_pretrained",
    "save_rwkv_lm",
    "set_trainable",
    "state_dict_to_blinkdl",
]
