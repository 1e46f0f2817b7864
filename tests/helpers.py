"""Shared test helpers."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def spread_weights_(module: nn.Module, *, lora: float = 0.2) -> nn.Module:
    """Replace BlinkDL's from-scratch init (zero output and FFN value matrices, zero LoRA inputs) by
    random values, so that every path of a block carries signal in equivalence tests."""
    for name, p in module.named_parameters():
        if "lora" in name:
            if lora:
                p.uniform_(-lora, lora)
        elif p.dim() == 2:
            p.normal_(0, p.shape[1] ** -0.5)
    return module
