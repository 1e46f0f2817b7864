"""Image encoders (timm, open_clip), projectors, token layout and pooling, and preprocessing.

``encoder(images [B, 3, H, W]) -> tokens [B, N, D]`` for any timm model (``TimmEncoder``) or open_clip
vision transformer (``OpenCLIPEncoder``, by default upstream VisualRWKV's CLIP ViT-L/14 at 336 px), or several
towers concatenated on channels (``ConcatEncoder``: VisualRWKV-7's DINOv2 + SigLIP + SAM), with
the token layout (CLS first, last or dropped; patch grid pooled to g x g) chosen by a ``TokenLayout``.
timm, open_clip and PIL are imported only when an encoder or transform is built.
"""

from .checkpoint import hf_clip_vision_to_open_clip, load_state_dict_file
from .concat_encoder import ConcatEncoder, PackedTransform
from .encoder import ImageEncoder
from .layout import TokenLayout, pool_patches
from .open_clip_encoder import OpenCLIPEncoder
from .projectors import GatedProjector, LinearProjector, MLPProjector
from .timm_encoder import TimmEncoder
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageInput,
    ImageTransform,
    clip_transform,
    load_image,
    squash_transform,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ConcatEncoder",
    "GatedProjector",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageEncoder",
    "ImageInput",
    "ImageTransform",
    "LinearProjector",
    "MLPProjector",
    "OpenCLIPEncoder",
    "PackedTransform",
    "TimmEncoder",
    "TokenLayout",
    "clip_transform",
    "hf_clip_vision_to_open_clip",
    "load_image",
    "load_state_dict_file",
    "pool_patches",
    "squash_transform",
]
