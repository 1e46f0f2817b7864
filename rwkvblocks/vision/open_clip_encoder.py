"""An open_clip vision transformer as an image encoder (default: CLIP ViT-L/14 at 336 px, upstream's)."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from .checkpoint import _hf_prefix, hf_clip_vision_to_open_clip, load_state_dict_file
from .encoder import ImageEncoder
from .layout import TokenLayout
from .transforms import ImageTransform

__all__ = ["OpenCLIPEncoder"]


class OpenCLIPEncoder(ImageEncoder):
    """Class and patch tokens of an open_clip ``VisionTransformer``, from one layer before ``ln_post``.

    Only the vision tower is built (open_clip's ``_build_vision_tower`` on the bundled model config):
    no text tower, and no hub access, not even for configurations. The features are the output of
    transformer block ``layer`` — the last by default, which is what upstream VisualRWKV takes (Hugging
    Face ``CLIPVisionModel(...).last_hidden_state``, i.e. before ``post_layernorm``). ``ln_post`` and
    ``proj`` stay in the tower, unused, so open_clip checkpoints load unchanged.

    Weights come only from the local ``checkpoint_path`` (or ``load_tower_state_dict``). Accepted
    layouts: the tower's own state dict, a full open_clip CLIP state dict (``visual.*``), or Hugging
    Face CLIP vision weights (``vision_model.*``, or upstream VisualRWKV's ``vit.vision_model.*``),
    converted by ``hf_clip_vision_to_open_clip``.

    Activation: OpenAI's CLIP weights — the ones upstream uses, where Hugging Face sets
    ``hidden_act="quick_gelu"`` — need QuickGELU (``x * sigmoid(1.702 x)``), while open_clip's
    ``ViT-L-14-336`` config says nn.GELU (its ``-quickgelu`` twin says QuickGELU). ``quick_gelu=None``
    therefore resolves to the flag of ``pretrained_tag`` when one is given, and to QuickGELU otherwise.

    Args:
        model_name: A built-in open_clip model name (``open_clip.list_models()``) with a
            ``VisionTransformer`` tower, or ``"local-dir:/path"``; ``"hf-hub:"`` names are refused.
        checkpoint_path: Local weights (``.safetensors``, ``.pt``, ``.pth``, ``.bin``).
        layer: Transformer block whose output is taken; negative counts from the end.
        layout: Prefix (CLS) placement and pooling; defaults to CLS first, full grid.
        pretrained_tag: The open_clip release the weights come from (``"openai"``,
            ``"laion2b_s32b_b82k"``...); only its metadata is used: preprocessing and activation.
        quick_gelu: Use QuickGELU in the MLPs; see above for ``None``.
        transform: Replaces open_clip's preprocessing (e.g. ``clip_transform()`` for upstream's exact
            Hugging Face crop rounding).
        frozen: Start frozen (see ``ImageEncoder``).
        vision_overrides: Entries that replace those of the model's ``vision_cfg`` (``width``, ``layers``,
            ``head_width``, ``patch_size``, ``image_size``, ``mlp_ratio``): a tower of another size with the
            same architecture, e.g. the small towers of tests or a converted checkpoint's own shape.
        device: Device to build the tower on.
        dtype: Parameter dtype.

    Shapes:
        images: `[B, 3, H, W]` -> tokens `[B, num_tokens, dim]`; the default tower gives
        `[B, 577, 1024]` (24 x 24 patches and CLS).
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14-336",
        *,
        checkpoint_path: str | os.PathLike | None = None,
        layer: int = -1,
        layout: TokenLayout | None = None,
        pretrained_tag: str | None = None,
        quick_gelu: bool | None = None,
        transform: ImageTransform | None = None,
        frozen: bool = True,
        vision_overrides: dict | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(layout=layout)
        import open_clip
        from open_clip.model import _build_vision_tower  # the vision tower alone, without the text tower
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        if model_name.startswith("hf-hub:"):
            raise ValueError(f"model name {model_name!r} would download its configuration")
        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
        vision_cfg = {**config["vision_cfg"], **(vision_overrides or {})}
        if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
            raise ValueError(
                f"open_clip model {model_name!r} has a timm or ResNet image tower, not a VisionTransformer; "
                "use TimmEncoder for it"
            )
        tag_config = {}
        if pretrained_tag is not None:
            tag_config = open_clip.get_pretrained_cfg(model_name, pretrained_tag)
            if not tag_config:
                known = open_clip.list_pretrained_tags_by_model(model_name)
                raise ValueError(f"unknown pretrained_tag {pretrained_tag!r} for {model_name!r}; known: {known}")
        if quick_gelu is None:
            quick_gelu = bool(tag_config.get("quick_gelu") or config.get("quick_gelu")) if tag_config else True
        if config.get("quick_gelu") and not quick_gelu:
            raise ValueError(
                f"open_clip model {model_name!r} is defined with QuickGELU; quick_gelu=False contradicts it"
            )
        self.model_name = model_name
        self.quick_gelu = quick_gelu
        self.vision_overrides = dict(vision_overrides or {})

        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.visual = _build_vision_tower(config["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
        if dtype is not None:
            self.visual.to(dtype=dtype)
        num_layers = len(self.visual.transformer.resblocks)
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer={layer} is out of range for {model_name!r} with {num_layers} blocks")
        self.layer = layer % num_layers
        self.dim = self.visual.transformer.width
        self.grid = tuple(self.visual.grid_size)
        self.image_size = tuple(self.visual.image_size)
        self.num_prefix_tokens = 1
        self.layout.num_tokens(self.num_prefix_tokens, self.grid)  # fail now on an impossible layout

        preprocess = merge_preprocess_dict(PreprocessCfg(), {**config.get("preprocess_cfg", {}), **tag_config})
        self.transform = transform or ImageTransform(
            open_clip.image_transform(
                self.image_size,
                is_train=False,
                mean=preprocess["mean"],
                std=preprocess["std"],
                resize_mode=preprocess["resize_mode"],
                interpolation=preprocess["interpolation"],
                fill_color=preprocess["fill_color"],
            ),
            image_size=self.image_size,
        )
        if checkpoint_path is not None:
            self.load_tower_state_dict(load_state_dict_file(checkpoint_path), source=str(checkpoint_path))
        if frozen:
            self.freeze()

    def load_tower_state_dict(self, state_dict: dict[str, Tensor], *, source: str = "state dict") -> None:
        """Load tower weights in open_clip, full-CLIP (``visual.*``) or Hugging Face naming.

        Every tensor of the tower must be present except ``proj`` (which the encoder does not use and
        Hugging Face's vision model lacks).

        Args:
            state_dict: The weights; keys of other models in the same dict (``rwkv.*``, ``proj.*``) are
                ignored when the tower is found under a prefix.
            source: Names the weights in error messages (the checkpoint path).
        """
        if _hf_prefix(state_dict) is not None:
            state_dict = hf_clip_vision_to_open_clip(state_dict)
        elif any(k.startswith("visual.") for k in state_dict):
            state_dict = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
        try:
            missing, unexpected = self.visual.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{source} does not fit the {self.model_name} tower: {err}") from err
        missing = [k for k in missing if k != "proj"]
        if missing or unexpected:
            raise ValueError(
                f"{source} does not fit the {self.model_name} tower: missing {missing}, unexpected {unexpected}"
            )

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        visual = self.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, h*w, D], raster order
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[: self.layer + 1]:
            x = block(x)
        return x[:, :1], x[:, 1:]

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, layer={self.layer}, quick_gelu={self.quick_gelu}, "
            f"grid={self.grid}, dim={self.dim}, frozen={self.frozen}"
        )
