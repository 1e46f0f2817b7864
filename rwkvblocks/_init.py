"""Shared pieces of the from-scratch initialisation of RWKV-5/6 blocks (DESIGN.md §4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def layer_ratios(layer_idx: int, num_layers: int) -> tuple[float, float]:
    """``(r0, r1) = (i / (L - 1), 1 - i / L)``; a one-layer model counts as ``r0 = 0``."""
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must be in [0, {num_layers}), got {layer_idx}")
    r0 = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    return r0, 1.0 - layer_idx / num_layers


def channel_ramp(dim: int) -> Tensor:
    """``ddd[c] = c / C`` in fp64 (cast by the caller)."""
    return torch.arange(dim, dtype=torch.float64) / dim


@torch.no_grad()
def orthogonal_(weight: Tensor, gain: float) -> None:
    """BlinkDL's matrix init: orthogonal with ``gain * sqrt(out / in)`` when ``out > in``; 0 -> zeros.

    Computed in fp32 (fp64 for fp64; QR has no bf16 kernel) and copied; a no-op on ``meta``.
    """
    if weight.is_meta:
        return
    if gain == 0:
        weight.zero_()
        return
    out_features, in_features = weight.shape
    if out_features > in_features:
        gain *= math.sqrt(out_features / in_features)
    tmp = torch.empty(weight.shape, dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
    nn.init.orthogonal_(tmp, gain=gain)
    weight.copy_(tmp)


@torch.no_grad()
def fill_(param: Tensor, values: Tensor) -> None:
    """Copy fp64 ``values`` into ``param`` (a no-op on ``meta``)."""
    if not param.is_meta:
        param.copy_(values.reshape(param.shape))
