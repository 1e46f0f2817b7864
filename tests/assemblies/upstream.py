"""Synthetic checkpoints in upstream VisualRWKV's ``.pth`` layout (DESIGN.md §5), written without rwkvblocks."""

from __future__ import annotations

import torch

from tests.blinkdl import blinkdl_state_dict

TOWER = {"width": 64, "layers": 2, "patch": 14, "image": 56}  # 4 x 4 patches + CLS


def hf_clip_tower(seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A tiny CLIP vision tower in Hugging Face naming under ``vit.vision_model.``."""
    g = torch.Generator().manual_seed(seed)
    D, P, n = TOWER["width"], TOWER["patch"], (TOWER["image"] // TOWER["patch"]) ** 2 + 1

    def rnd(*shape, scale=0.05):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    p = "vit.vision_model."
    sd = {
        p + "embeddings.class_embedding": rnd(D),
        p + "embeddings.patch_embedding.weight": rnd(D, 3, P, P),
        p + "embeddings.position_embedding.weight": rnd(n, D),
        p + "pre_layrnorm.weight": 1 + rnd(D),
        p + "pre_layrnorm.bias": rnd(D),
        p + "post_layernorm.weight": 1 + rnd(D),
        p + "post_layernorm.bias": rnd(D),
    }
    for i in range(TOWER["layers"]):
        q = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{q}self_attn.{proj}.weight"] = rnd(D, D, scale=D**-0.5)
            sd[f"{q}self_attn.{proj}.bias"] = rnd(D)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[f"{q}{ln}.weight"] = 1 + rnd(D)
            sd[f"{q}{ln}.bias"] = rnd(D)
        sd[f"{q}mlp.fc1.weight"] = rnd(4 * D, D, scale=D**-0.5)
        sd[f"{q}mlp.fc1.bias"] = rnd(4 * D)
        sd[f"{q}mlp.fc2.weight"] = rnd(D, 4 * D, scale=(4 * D) ** -0.5)
        sd[f"{q}mlp.fc2.bias"] = rnd(D)
    return sd


def upstream_state_dict(version: str, *, tower: bool, hybrid: bool = False, dim: int = 64, seed: int = 0):
    """``rwkv.*`` + ``proj.weight`` (+ ``vit.vision_model.*``) (+ ``rwkv.blocks.1.tiny_att.*``)."""
    lm = blinkdl_state_dict(
        version, vocab_size=257, dim=dim, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16, seed=seed
    )
    sd = {f"rwkv.{k}": v for k, v in lm.items()}
    g = torch.Generator().manual_seed(seed + 1)
    sd["proj.weight"] = torch.randn(dim, TOWER["width"], generator=g) / TOWER["width"] ** 0.5
    if hybrid:
        t = "rwkv.blocks.1.tiny_att."
        sd[t + "tiny_ln.weight"] = torch.ones(dim)
        sd[t + "tiny_ln.bias"] = torch.zeros(dim)
        for name in ("tiny_q", "tiny_k", "tiny_v", "tiny_o"):
            sd[f"{t}{name}.weight"] = torch.randn(dim, dim, generator=g) / dim**0.5
    if tower:
        sd.update(hf_clip_tower(seed))
    return sd
