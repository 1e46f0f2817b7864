"""Synthetic upstream VisualRWKV-7 (v7.00) checkpoints, and upstream's forward rewritten from DESIGN.md §15-16.

Nothing here uses rwkvblocks: the towers are timm models called the way upstream calls them
(``get_intermediate_layers`` at block L-2; SAM's ``forward_features`` then a 2 x 2 space-to-depth written out by
hand), the projector and the RWKV-7 stack are plain tensor code over the BlinkDL keys with a step-by-step WKV
loop, and the sequence is left-padded to a multiple of 16 with the embedding of token 261 as upstream's
``RWKV.forward`` does.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from tests.blinkdl import blinkdl_state_dict

VOCAB = 300  # above 261, upstream's padding token
DIM = 64
TOWERS = {  # timm name, create_model arguments, block read (None: SAM's neck)
    "dino": ("vit_large_patch14_reg4_dinov2", {"img_size": 56, "embed_dim": 64, "depth": 3, "num_heads": 1}),
    "siglip": ("vit_so400m_patch14_siglip_384", {"img_size": 56, "embed_dim": 64, "depth": 3, "num_heads": 1}),
    "sam": (
        "samvit_base_patch16",
        {
            "img_size": 128,
            "embed_dim": 64,
            "depth": 3,
            "num_heads": 1,
            "global_attn_indexes": [2],
            "window_size": 3,
            "neck_chans": 16,
        },
    ),
}
SIZES = {"dino": 56, "siglip": 56, "sam": 128}
WIDTH = 64 + 64 + 16 * 4  # 192 channels, 4 x 4 grid = 16 tokens per image
TOKENS = 16


def tower_models(seed: int = 0) -> dict[str, torch.nn.Module]:
    """The three toy towers as plain timm models with random weights (SAM's LayerNorms at eps 1e-6, as SAM)."""
    models = {}
    for i, (tower, (name, kwargs)) in enumerate(TOWERS.items()):
        torch.manual_seed(seed * 10 + i)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)  # layer-scale and norm weights away from their defaults
        if tower == "sam":
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.eps = 1e-6
        models[tower] = model
    return models


def upstream7_state_dict(seed: int = 0, *, towers: bool = True, ranks=(24, 16, 8, 20)) -> dict[str, torch.Tensor]:
    """``rwkv.*`` (x070, LoRA ranks ``ranks`` = Dw/Da/Dv/Dg), ``proj.*`` (gated) and ``vit.*_featurizer.*``."""
    dw, da, dv, dg = ranks
    lm = blinkdl_state_dict(
        "x070",
        vocab_size=VOCAB,
        dim=DIM,
        num_layers=2,
        head_dim=32,
        decay_rank=dw,
        a_rank=da,
        value_rank=dv,
        gate_rank=dg,
        seed=seed,
    )
    sd = {f"rwkv.{k}": v for k, v in lm.items()}
    g = torch.Generator().manual_seed(seed + 7)
    sd["proj.gate.weight"] = torch.randn(WIDTH, WIDTH, generator=g) / WIDTH**0.5
    sd["proj.o_proj.weight"] = torch.randn(DIM, WIDTH, generator=g) / WIDTH**0.5
    sd["proj.ln_v.weight"] = 1 + 0.1 * torch.randn(DIM, generator=g)
    sd["proj.ln_v.bias"] = 0.1 * torch.randn(DIM, generator=g)
    if towers:
        for tower, model in tower_models(seed).items():
            for k, v in model.state_dict().items():
                if tower == "sam":
                    k = k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2.")  # SAM's names
                sd[f"vit.{tower}_featurizer.{k}"] = v.clone()
    return sd


def tower_pixels(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(n, 3, s, s, generator=g) for t, s in SIZES.items()}


def _space_to_depth(x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape  # channel c * 4 + dy * 2 + dx
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, C * 4, H // 2, W // 2)


@torch.no_grad()
def upstream7_image_features(sd, models, pixels) -> torch.Tensor:
    """Upstream's ``encode_images``: towers concatenated, (no pooling at the full grid), gated projector."""
    dino, siglip = models["dino"], models["siglip"]
    d = dino.get_intermediate_layers(pixels["dino"], n=[len(dino.blocks) - 2])[0]
    s = siglip.get_intermediate_layers(pixels["siglip"], n=[len(siglip.blocks) - 2])[0]
    sam = _space_to_depth(models["sam"].forward_features(pixels["sam"]))
    B, C, H, W = sam.shape
    x = torch.cat([d, s, sam.view(B, C, H * W).permute(0, 2, 1)], dim=2)
    gated = x * torch.sigmoid(x @ sd["proj.gate.weight"].T)
    y = gated @ sd["proj.o_proj.weight"].T
    return F.layer_norm(y, (y.shape[-1],), sd["proj.ln_v.weight"], sd["proj.ln_v.bias"], 1e-5)


@torch.no_grad()
def rwkv7_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """RWKV-7 over embeddings ``x`` `[T, C]` (before ``ln0``) from BlinkDL keys under ``rwkv.``: logits `[T, V]`."""
    p = "rwkv."
    T, C = x.shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(p + "blocks."))

    def ln(v, name):
        return F.layer_norm(v, (C,), sd[p + name + ".weight"], sd[p + name + ".bias"], 1e-5)

    def shifted(v):
        return torch.cat([torch.zeros(1, C, dtype=v.dtype), v[:-1]])

    x = ln(x, "blocks.0.ln0")
    v_first = None
    for i in range(layers):
        b = f"{p}blocks.{i}."
        h, N = sd[b + "att.r_k"].shape
        xa = ln(x, f"blocks.{i}.ln1")
        xx = shifted(xa) - xa
        mix = {n: xa + xx * sd[b + f"att.x_{n}"].view(C) for n in "rwkvag"}
        r = mix["r"] @ sd[b + "att.receptance.weight"].T
        k = mix["k"] @ sd[b + "att.key.weight"].T
        v = mix["v"] @ sd[b + "att.value.weight"].T
        z = sd[b + "att.w0"].view(C) + torch.tanh(mix["w"] @ sd[b + "att.w1"]) @ sd[b + "att.w2"]
        decay = torch.exp(-torch.exp(-F.softplus(-z) - 0.5))
        if i == 0:
            v_first = v
        else:
            gate = torch.sigmoid(sd[b + "att.v0"].view(C) + (mix["v"] @ sd[b + "att.v1"]) @ sd[b + "att.v2"])
            v = v + (v_first - v) * gate
        a = torch.sigmoid(sd[b + "att.a0"].view(C) + (mix["a"] @ sd[b + "att.a1"]) @ sd[b + "att.a2"])
        g = torch.sigmoid(mix["g"] @ sd[b + "att.g1"]) @ sd[b + "att.g2"]
        kk = F.normalize((k * sd[b + "att.k_k"].view(C)).view(T, h, N), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * sd[b + "att.k_a"].view(C))
        rh, kh, vh, wh, ah = (t.view(T, h, N) for t in (r, k, v, decay, a))
        state = torch.zeros(h, N, N, dtype=x.dtype)  # [head, value i, key j]
        ys = []
        for t in range(T):
            aa, bb = -kk[t], kk[t] * ah[t]
            sa = torch.einsum("hij,hj->hi", state, aa)
            state = state * wh[t][:, None, :] + sa[:, :, None] * bb[:, None, :] + vh[t][:, :, None] * kh[t][:, None, :]
            ys.append(torch.einsum("hij,hj->hi", state, rh[t]))
        y = torch.stack(ys).reshape(T, C)
        y = F.group_norm(y, h, sd[b + "att.ln_x.weight"], sd[b + "att.ln_x.bias"], eps=64e-5)
        bonus = (rh * kh * sd[b + "att.r_k"]).sum(-1, keepdim=True) * vh
        x = x + ((y + bonus.reshape(T, C)) * g) @ sd[b + "att.output.weight"].T
        xf = ln(x, f"blocks.{i}.ln2")
        kf = torch.relu((xf + (shifted(xf) - xf) * sd[b + "ffn.x_k"].view(C)) @ sd[b + "ffn.key.weight"].T) ** 2
        x = x + kf @ sd[b + "ffn.value.weight"].T
    return ln(x, "ln_out") @ sd[p + "head.weight"].T


@torch.no_grad()
def upstream7_forward(sd, models, ids: list[int], image_starts: list[int], pixels, *, pad: bool = True):
    """Upstream's ``VisualRWKV.forward`` for one sample: logits `[T, V]` (padding dropped again)."""
    x = sd["rwkv.emb.weight"][torch.tensor(ids)].clone()
    if image_starts:
        feats = upstream7_image_features(sd, models, pixels)
        for n, start in enumerate(image_starts):
            x[start : start + TOKENS] = feats[n]
    extra = (-len(ids)) % 16 if pad else 0
    x = torch.cat([sd["rwkv.emb.weight"][261].expand(extra, -1), x])
    return rwkv7_logits(sd, x)[extra:]
