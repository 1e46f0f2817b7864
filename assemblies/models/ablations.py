"""The paper's ablations as ``create_assembly`` calls: one preset plus the overrides of one knob.

Each entry is ``(table, knob, variant, preset, overrides)``; ``README.md`` lists them, and
``tests/assemblies/test_visualrwkv.py`` builds every one (on the ``meta`` device) and checks that its knob took
effect. Overrides go to the configuration that has the field: ``prompt`` and ``loss`` to the ``DataConfig``,
the rest to the ``VisualRWKVConfig``.
"""

from __future__ import annotations

__all__ = ["ABLATIONS"]

_V6 = "visualrwkv_1b6_clipl336"
_V5 = "visualrwkv_base_1b6_clipl336"

ABLATIONS: list[tuple[str, str, str, str, dict]] = [
    ("1", "recurrence", "RWKV-5: static token shift and decay", _V6, {"lm": {"version": "x052"}}),
    ("1", "recurrence", "RWKV-6: data-dependent (VisualRWKV)", _V6, {}),
    ("3", "prompt", "image first", _V6, {"prompt": "image_first"}),
    ("3", "prompt", "image last", _V6, {"prompt": "image_last"}),
    ("3", "prompt", "sandwich (VisualRWKV)", _V6, {"prompt": "sandwich"}),
    ("4", "scan", "unidirectional", _V6, {"scan": "uni"}),
    ("4", "scan", "bidirectional (VisualRWKV)", _V6, {"scan": "bi"}),
    ("4", "scan", "multidirectional", _V6, {"scan": "multi"}),
    ("9", "image tokens", "577 (24x24 + CLS)", _V6, {}),
    *[
        ("9", "image tokens", f"{g * g + 1} ({g}x{g} pooled + CLS)", _V6, {"encoder": {"pool": g}})
        for g in (12, 8, 6, 4, 3, 2)
    ],
    ("9", "image tokens", "1 (CLS only)", _V6, {"encoder": {"keep_patches": False}}),
    ("14", "hybrid", "TinyAttention after the last block (VisualRWKV-Hybrid)", _V5, {"hybrid_layers": (23,)}),
    ("14", "hybrid", "TinyAttention on VisualRWKV (RWKV-6)", _V6, {"hybrid_layers": (23,)}),
    ("D", "loss", "sample-level CE (VisualRWKV)", _V6, {"loss": "sample"}),
    ("D", "loss", "batch-level CE (VisualRWKV-Base)", _V6, {"loss": "batch"}),
]
