"""Whole models built from ``rwkvblocks``, by concern.

- ``assemblies.models``: the VisualRWKV family and the RWKV-5/6/7 language model — configurations
  (``VisualRWKVConfig`` for the network, ``DataConfig`` for prompt, context, tokenizer and loss), builders,
  presets (``create_assembly(name, **overrides)``, ``list_assemblies(pattern)``), the paper's ``ABLATIONS``,
  and checkpoint formats (``VisualRWKV.from_pretrained`` / ``save_pretrained`` / ``from_upstream``,
  ``load_blinkdl`` / ``save_blinkdl``).
- ``assemblies.training``: the paper's two-stage recipe, trainable sets, the training loop, the data pipeline.
- ``assemblies.cli`` (the ``rwkvblocks`` command) and ``assemblies.demo`` sit on top; nothing imports them.
"""

from .models import (
    ABLATIONS,
    DataConfig,
    EncoderConfig,
    Preset,
    RWKVConfig,
    VisualRWKV,
    VisualRWKVConfig,
    VisualRWKVOutput,
    build_rwkv_lm,
    build_visualrwkv,
    create_assembly,
    generate,
    generate_stream,
    get_assembly_config,
    list_assemblies,
    load_blinkdl,
    register_assembly,
    save_blinkdl,
)
from .training import STAGES, TrainRecipe, configure_stage, recipe, set_trainable, train

__all__ = [
    "ABLATIONS",
    "DataConfig",
    "EncoderConfig",
    "Preset",
    "RWKVConfig",
    "STAGES",
    "TrainRecipe",
    "VisualRWKV",
    "VisualRWKVConfig",
    "VisualRWKVOutput",
    "build_rwkv_lm",
    "build_visualrwkv",
    "configure_stage",
    "create_assembly",
    "generate",
    "generate_stream",
    "get_assembly_config",
    "list_assemblies",
    "load_blinkdl",
    "recipe",
    "register_assembly",
    "save_blinkdl",
    "set_trainable",
    "train",
]
