"""Any timm model as an image encoder: ViTs with prefix tokens, or a convolutional net's feature map."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .encoder import ImageEncoder
from .layout import TokenLayout
from .transforms import ImageTransform, squash_transform

__all__ = ["TimmEncoder"]


class TimmEncoder(ImageEncoder):
    """A timm model's tokens from one layer, through timm's ``forward_intermediates``.

    Vision transformers give their prefix tokens (class token, then any register or distillation
    tokens, in timm's order; ``model.num_prefix_tokens``) and their patch tokens; convolutional nets
    give no prefix tokens and their feature map, read as a grid of tokens. Patch tokens come in raster
    (row-major) order. The classifier head is removed (``num_classes=0``). Preprocessing is timm's
    evaluation transform for the model's data config.

    Weights come only from local files; nothing is downloaded. ``checkpoint_path`` alone loads a state
    dict of this exact model (for example one saved from ``encoder.model``), strictly, through timm's
    ``load_checkpoint``. With ``pretrained=True`` the file is read as a timm pretrained release (e.g.
    a ``model.safetensors`` fetched beforehand from the model's hub page) and goes through timm's own
    pretrained loader, which adapts it to the model (drops the classifier, resizes position
    embeddings, converts original formats).

    Args:
        name: timm model name, optionally with a pretrained tag (``"vit_base_patch16_clip_224.openai"``);
            ``"hf-hub:"`` names are refused because they download their configuration.
        pretrained: Whether ``checkpoint_path`` is a timm pretrained release (requires the path).
        checkpoint_path: Local ``.safetensors``, ``.pth`` or ``.bin`` weights.
        layer: Index into the model's feature levels (transformer blocks for ViTs, stages for
            convolutional nets); negative counts from the end, -1 is the last.
        norm: Apply the model's final normalisation to the chosen layer (timm's ``norm=True``; for SAM's
            ViT, ``samvit_*``, this is its convolutional neck); the default takes the layer's raw output, as
            upstream does for CLIP and for VisualRWKV-7's DINOv2 and SigLIP towers.
        space_to_depth: Fold each ``s`` x ``s`` block of the feature map into the channels (channel
            ``c * s * s + dy * s + dx``, ``torch.nn.functional.pixel_unshuffle``): VisualRWKV-7 turns SAM's
            64 x 64 x 256 neck output into 32 x 32 x 1024 this way. 1 leaves the map as it is.
        layer_norm_eps: Set the epsilon of every LayerNorm of the model (``None`` keeps timm's): SAM's own
            image encoder uses 1e-6 where timm's ``samvit_*`` port uses PyTorch's 1e-5 in its blocks.
        resize: ``"timm"``: timm's evaluation transform (resize the short side, centre crop); ``"squash"``:
            resize the whole image to ``image_size`` with the data config's interpolation, mean and std
            (``squash_transform``; upstream VisualRWKV-7).
        layout: Prefix placement and pooling; defaults to prefix first, full grid.
        image_size: `(H, W)` (or one int) of the input; defaults to a ViT's ``patch_embed.img_size``, else
            the data config's input size.
        transform: Replaces timm's preprocessing.
        frozen: Start frozen (see ``ImageEncoder``).
        device: Device to build the model on.
        dtype: Parameter dtype.
        **model_kwargs: Passed to ``timm.create_model`` (``img_size``, ``depth``, ``drop_path_rate``...).

    Shapes:
        images: `[B, 3, H, W]` -> tokens `[B, num_tokens, dim]` (see ``ImageEncoder``).
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        layer: int = -1,
        norm: bool = False,
        space_to_depth: int = 1,
        resize: str = "timm",
        layer_norm_eps: float | None = None,
        layout: TokenLayout | None = None,
        image_size: int | tuple[int, int] | None = None,
        transform: ImageTransform | None = None,
        frozen: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(layout=layout)
        import timm
        from timm.data import create_transform, resolve_data_config

        if name.startswith("hf-hub:"):
            raise ValueError(f"model name {name!r} would download its configuration; use a built-in timm name")
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
        if not isinstance(space_to_depth, int) or isinstance(space_to_depth, bool) or space_to_depth < 1:
            raise ValueError(f"space_to_depth must be a positive int, got {space_to_depth!r}")
        if resize not in ("timm", "squash"):
            raise ValueError(f"resize must be 'timm' or 'squash', got {resize!r}")
        if pretrained and checkpoint_path is None:
            raise ValueError("pretrained=True needs checkpoint_path: weights are only read from local files")
        path = None if checkpoint_path is None else Path(checkpoint_path)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")

        with torch.device(device) if device is not None else contextlib.nullcontext():
            if pretrained:
                # "source": "" keeps timm from preferring a hub source over the local file
                overlay = {"file": str(path), "source": ""}
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **model_kwargs
                )
            else:
                model = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
        if path is not None and not pretrained:
            timm.models.load_checkpoint(model, str(path), strict=True)
        if layer_norm_eps is not None:
            if not layer_norm_eps > 0:
                raise ValueError(f"layer_norm_eps must be positive, got {layer_norm_eps!r}")
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.eps = float(layer_norm_eps)
        if dtype is not None:
            model.to(dtype=dtype)
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates; TimmEncoder needs it")
        self.model = model
        self.name = name
        self.norm = norm
        self.space_to_depth = space_to_depth

        num_layers = len(model.feature_info)
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer={layer} is out of range for {name!r} with {num_layers} feature levels")
        self.layer = layer % num_layers
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        if space_to_depth > 1 and self.num_prefix_tokens and self.layout.prefix != "none":
            raise ValueError(
                f"space_to_depth={space_to_depth} widens the patch tokens beyond the {self.num_prefix_tokens} prefix "
                "tokens of the same model: drop them (layout prefix='none')"
            )

        if image_size is None:
            patch_embed_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
            if patch_embed_size is not None:
                image_size = tuple(patch_embed_size)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        args = {} if image_size is None else {"input_size": (3, *image_size)}
        self.data_config = resolve_data_config(args, model=model)
        self.image_size = tuple(self.data_config["input_size"][1:])
        if transform is None and resize == "squash":
            cfg = self.data_config
            transform = squash_transform(
                self.image_size, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"] or "bicubic"
            )
        self.transform = transform or ImageTransform(create_transform(**self.data_config), image_size=self.image_size)

        # One dry run at the input size gives the token width and the grid for any architecture.
        model.eval()
        parameter = next(model.parameters())
        probe = torch.zeros(1, 3, *self.image_size, device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            _, feature_map = self._feature_map(probe)
        self.dim = feature_map.shape[1]
        self.grid = (feature_map.shape[2], feature_map.shape[3])
        self.layout.num_tokens(self.num_prefix_tokens, self.grid)  # fail now on an impossible layout
        if frozen:
            self.freeze()
        else:
            self.train()

    def _feature_map(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix tokens `[B, P, D]` and the chosen layer as a map `[B, D, h, w]`."""
        kwargs: dict[str, Any] = {"return_prefix_tokens": True} if self.num_prefix_tokens else {}
        (out,) = self.model.forward_intermediates(
            images, indices=[self.layer], norm=self.norm, stop_early=True, intermediates_only=True, **kwargs
        )
        if self.num_prefix_tokens:
            feature_map, prefix = out
        else:
            feature_map = out
        if self.space_to_depth > 1:
            s = self.space_to_depth
            if feature_map.shape[2] % s or feature_map.shape[3] % s:
                raise ValueError(
                    f"space_to_depth={s} does not tile the {feature_map.shape[2]}x{feature_map.shape[3]} feature map"
                )
            feature_map = torch.nn.functional.pixel_unshuffle(feature_map, s)
        if not self.num_prefix_tokens:
            prefix = feature_map.new_zeros(feature_map.shape[0], 0, feature_map.shape[1])
        return prefix, feature_map

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        prefix, feature_map = self._feature_map(images)
        return prefix, feature_map.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        s2d = f", space_to_depth={self.space_to_depth}" if self.space_to_depth > 1 else ""
        return f"name={self.name!r}, layer={self.layer}, grid={self.grid}, dim={self.dim}{s2d}, frozen={self.frozen}"
