"""Whole models: configurations, the RWKV LM and VisualRWKV builders, presets, ablations, checkpoint formats."""

from .ablations import ABLATIONS
from .config import DataConfig, EncoderConfig, FrozenOptions, VisualRWKVConfig
from .formats import load_blinkdl, save_blinkdl
from .generation import generate, generate_stream
from .registry import Preset, create_assembly, get_assembly_config, list_assemblies, register_assembly
from .rwkv_lm import RWKVConfig, build_rwkv_lm
from .visualrwkv import VisualRWKV, VisualRWKVOutput, build_visualrwkv

__all__ = [
    "ABLATIONS",
    "DataConfig",
    "EncoderConfig",
    "FrozenOptions",
    "Preset",
    "RWKVConfig",
    "VisualRWKV",
    "VisualRWKVConfig",
    "VisualRWKVOutput",
    "build_rwkv_lm",
    "build_visualrwkv",
    "create_assembly",
    "generate",
    "generate_stream",
    "get_assembly_config",
    "list_assemblies",
    "load_blinkdl",
    "register_assembly",
    "save_blinkdl",
]
