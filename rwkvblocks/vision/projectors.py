"""Projectors from image-encoder width to language-model width."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedProjector", "LinearProjector", "MLPProjector"]


class LinearProjector(nn.Linear):
    """One linear map, no bias by default: upstream VisualRWKV's ``proj`` (1024 -> C).

    Its only parameter is ``weight`` `[dim, vision_dim]`, so as a submodule named ``proj`` it loads the
    upstream checkpoint's ``proj.weight`` unchanged.

    Args:
        vision_dim: Width of the image tokens (1024 for CLIP ViT-L/14).
        dim: Width C of the language model.
        bias: Whether to add a bias (upstream: no).
        device: Parameter device.
        dtype: Parameter dtype.

    Shapes:
        `[..., vision_dim]` -> `[..., dim]`.
    """

    def __init__(
        self,
        vision_dim: int,
        dim: int,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if vision_dim < 1 or dim < 1:
            raise ValueError(f"vision_dim and dim must be positive, got {vision_dim} and {dim}")
        super().__init__(vision_dim, dim, bias=bias, device=device, dtype=dtype)


class MLPProjector(nn.Sequential):
    """``depth`` linear layers with ``activation`` between them (LLaVA-1.5's ``mlp2x_gelu`` by default).

    Layer i maps ``vision_dim`` (i = 0) or ``hidden_dim`` to ``hidden_dim`` (or ``dim`` for the last
    layer). Submodules are numbered as in ``nn.Sequential`` (``0``, ``2``, ... are the linear layers), the
    naming LLaVA's ``mm_projector`` checkpoints use.

    Args:
        vision_dim: Width of the image tokens.
        dim: Width C of the language model.
        depth: Number of linear layers (>= 1; 1 is a plain linear map with bias).
        hidden_dim: Width between layers; defaults to ``dim``.
        activation: Module class placed between linear layers, called without arguments.
        bias: Whether the linear layers have a bias.
        device: Parameter device.
        dtype: Parameter dtype.

    Shapes:
        `[..., vision_dim]` -> `[..., dim]`.
    """

    def __init__(
        self,
        vision_dim: int,
        dim: int,
        *,
        depth: int = 2,
        hidden_dim: int | None = None,
        activation: type[nn.Module] = nn.GELU,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        hidden_dim = dim if hidden_dim is None else hidden_dim
        if min(vision_dim, dim, hidden_dim) < 1:
            raise ValueError(f"vision_dim, dim and hidden_dim must be positive, got {vision_dim}, {dim}, {hidden_dim}")
        widths = [vision_dim] + [hidden_dim] * (depth - 1) + [dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i:
                layers.append(activation())
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias, device=device, dtype=dtype))
        super().__init__(*layers)


class GatedProjector(nn.Module):
    """Upstream VisualRWKV-7's projector: ``ln_v(o_proj(x * sigmoid(gate(x))))``.

    A context gate of the image features' own width, a bias-free map to the language model's width, and a
    LayerNorm; the submodule names (``gate``, ``o_proj``, ``ln_v``) are those of upstream's ``proj.*`` keys.

    Args:
        vision_dim: Width of the image tokens (3200 for DINOv2 + SigLIP + SAM).
        dim: Width C of the language model.
        eps: LayerNorm epsilon (PyTorch's default, as upstream).
        device: Parameter device.
        dtype: Parameter dtype.

    Shapes:
        `[..., vision_dim]` -> `[..., dim]`.
    """

    def __init__(
        self,
        vision_dim: int,
        dim: int,
        *,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if vision_dim < 1 or dim < 1:
            raise ValueError(f"vision_dim and dim must be positive, got {vision_dim} and {dim}")
        kw = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(vision_dim, vision_dim, bias=False, **kw)
        self.o_proj = nn.Linear(vision_dim, dim, bias=False, **kw)
        self.ln_v = nn.LayerNorm(dim, eps=eps, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_v(self.o_proj(x * torch.sigmoid(self.gate(x))))
