"""Shared pieces of the from-scratch initialisation of RWKV-5/6 blocks (DESIGN.md §4)."""

from __future__ import annotations

import inspect
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
def orthogonal_(weight: Tensor, gain: float, *, shape_gain: bool = True) -> None:
    """BlinkDL's matrix init: orthogonal with ``gain * sqrt(out / in)`` when ``out > in``; 0 -> zeros.

    ``shape_gain=False`` drops the ``sqrt(out / in)`` factor (BlinkDL's x070 init of ``Linear`` weights).
    Computed in fp32 (fp64 for fp64; QR has no bf16 kernel) and copied; a no-op on ``meta``.
    """
    if weight.is_meta:
        return
    if gain == 0:
        weight.zero_()
        return
    out_features, in_features = weight.shape
    if shape_gain and out_features > in_features:
        gain *= math.sqrt(out_features / in_features)
    tmp = torch.empty(weight.shape, dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
    nn.init.orthogonal_(tmp, gain=gain)
    weight.copy_(tmp)


@torch.no_grad()
def fill_(param: Tensor, values: Tensor) -> None:
    """Copy fp64 ``values`` into ``param`` (a no-op on ``meta``)."""
    if not param.is_meta:
        param.copy_(values.reshape(param.shape))


# BlinkDL's from-scratch token-shift ramps, per mixed output: ``ramp = ddd ** (p * r1) + q * r0`` for
# ``(p, q)`` (DESIGN.md §4). Time mixing reads ``r`` and ``g`` with half the exponent and ``v`` with an offset;
# channel mixing uses ``ddd ** r1`` for both of its outputs, which is also the default for other names.
TIME_MIX_RAMPS = {"w": (1.0, 0.0), "k": (1.0, 0.0), "v": (1.0, 0.3), "r": (0.5, 0.0), "g": (0.5, 0.0)}
CHANNEL_MIX_RAMPS = {"k": (1.0, 0.0), "r": (1.0, 0.0)}


def mix_ramp(dim: int, layer_idx: int, num_layers: int, exponent: float, offset: float) -> Tensor:
    """``ddd ** (exponent * r1) + offset * r0`` in fp64: the "lerp" form of one token-shift mix."""
    r0, r1 = layer_ratios(layer_idx, num_layers)
    return channel_ramp(dim) ** (exponent * r1) + offset * r0


def decay_ramp(dim: int, layer_idx: int, num_layers: int) -> Tensor:
    """``time_decay[n] = -6 + 5 (n / (C - 1)) ** (0.7 + 1.3 r0)`` in fp64 (RWKV-5/6 decay init)."""
    r0, _ = layer_ratios(layer_idx, num_layers)
    n = torch.arange(dim, dtype=torch.float64)
    return -6 + 5 * (n / max(dim - 1, 1)) ** (0.7 + 1.3 * r0)


@torch.no_grad()
def uniform_(param: Tensor, bound: float) -> None:
    """``U(-bound, bound)`` in place (a no-op on ``meta``)."""
    if not param.is_meta:
        param.uniform_(-bound, bound)


def reset_injected(owner: nn.Module, name: str, layer_idx: int, num_layers: int) -> None:
    """Call ``reset_parameters(layer_idx, num_layers)`` of the injected part ``owner.<name>``.

    Raises:
        ValueError: the part has no such method; it must initialise itself (or be initialised by the user,
            who then does not call the owner's ``reset_parameters``).
    """
    part = getattr(owner, name)
    reset = getattr(part, "reset_parameters", None)
    try:
        params = inspect.signature(reset).parameters if callable(reset) else {}
    except (TypeError, ValueError):
        params = {}
    if "layer_idx" not in params or "num_layers" not in params:
        raise ValueError(
            f"{type(owner).__name__}.reset_parameters: its {name} ({type(part).__name__}) has no "
            "reset_parameters(layer_idx, num_layers); give it one, or initialise it yourself and do not call "
            f"{type(owner).__name__}.reset_parameters"
        )
    reset(layer_idx, num_layers)
