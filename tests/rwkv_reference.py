"""The PyPI ``rwkv`` package (pinned 0.8.32) as an oracle, imported safely (DESIGN.md §13).

Importing ``rwkv.model`` turns TF32 on process-wide and reads its switches from the environment,
so the import happens here once, with the switches set and the TF32 flags restored afterwards.
"""

from __future__ import annotations

import os

import pytest
import torch


def rwkv_model_class():
    """``rwkv.model.RWKV`` (skips the test when the package is missing)."""
    if os.environ.get("RWKV_V7_ON") == "1":
        pytest.fail("RWKV_V7_ON=1 would swap in the RWKV-7 model; unset it")
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ["RWKV_CUDA_ON"] = "0"
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        model = pytest.importorskip("rwkv.model")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return model.RWKV


def run_reference(path, tokens: list[int], *, one_by_one: bool):
    """Logits `[T, V]` and the flat per-layer state list ``[att_shift, wkv, ffn_shift] * L``."""
    RWKV = rwkv_model_class()
    model = RWKV(str(path), "cpu fp32", verbose=False)
    if not one_by_one:
        logits, state = model.forward(tokens, None, full_output=True)
        return logits, state
    rows, state = [], None
    for token in tokens:
        out, state = model.forward([token], state)
        rows.append(out)
    return torch.stack(rows), state
