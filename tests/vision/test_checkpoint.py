"""Weight files, the Hugging Face -> open_clip renaming (fused q/k/v order, clear failures), and HF CLIP configs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rwkvblocks.vision import hf_clip_vision_to_open_clip, load_state_dict_file
from rwkvblocks.vision.checkpoint import hf_clip_vision_cfg


def _one_layer(prefix="vit.vision_model."):
    names = ["embeddings.class_embedding", "pre_layrnorm.weight"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        names += [f"encoder.layers.0.self_attn.{proj}.weight", f"encoder.layers.0.self_attn.{proj}.bias"]
    return {prefix + n: torch.full((2, 2) if n.endswith("weight") else (2,), float(i)) for i, n in enumerate(names)}


def test_qkv_fused_in_q_k_v_order_and_other_keys_ignored():
    sd = {**_one_layer(), "proj.weight": torch.zeros(3, 2), "rwkv.emb.weight": torch.zeros(4, 3)}
    out = hf_clip_vision_to_open_clip(sd)
    assert sorted(out) == [
        "class_embedding",
        "ln_pre.weight",
        "transformer.resblocks.0.attn.in_proj_bias",
        "transformer.resblocks.0.attn.in_proj_weight",
    ]
    weight = out["transformer.resblocks.0.attn.in_proj_weight"]
    assert weight.shape == (6, 2) and weight[:, 0].tolist() == [2, 2, 4, 4, 6, 6]  # q rows, k rows, v rows
    assert out["transformer.resblocks.0.attn.in_proj_bias"].tolist() == [3, 3, 5, 5, 7, 7]


def test_conversion_failures_name_the_keys():
    sd = _one_layer()
    del sd["vit.vision_model.encoder.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"missing \['vit.vision_model.encoder.layers.0.self_attn.k_proj.bias'\]"):
        hf_clip_vision_to_open_clip(sd)
    with pytest.raises(ValueError, match="vit.vision_model.encoder.layers.0.self_attn.rotary"):
        hf_clip_vision_to_open_clip(
            {**_one_layer(), "vit.vision_model.encoder.layers.0.self_attn.rotary": torch.ones(1)}
        )
    with pytest.raises(ValueError, match="no key ends with 'embeddings.class_embedding'"):
        hf_clip_vision_to_open_clip({"conv1.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="several"):
        hf_clip_vision_to_open_clip({**_one_layer(), **_one_layer("vision_model.")})


def test_load_state_dict_file_unwraps_and_refuses(tmp_path):
    weights = {"a": torch.arange(3.0)}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "wrapped.ckpt")
    torch.testing.assert_close(load_state_dict_file(tmp_path / "wrapped.ckpt")["a"], weights["a"])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'list.pt'} does not hold a dict of tensors"):
        load_state_dict_file(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gone.pt")):
        load_state_dict_file(tmp_path / "gone.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_and_garbage_are_refused_naming_the_file(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload()}, evil)
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only"):
        load_state_dict_file(evil)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.bin"):
        load_state_dict_file(garbage)


# openai/clip-vit-large-patch14-336's config.json (a CLIPConfig): the vision part as transformers saves it, with
# the entries equal to CLIPVisionConfig's defaults (hidden_act="quick_gelu", ...) left out
OPENAI_L336 = {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "model_type": "clip_text_model", "num_attention_heads": 12},
    "vision_config": {
        "dropout": 0.0,
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    },
}
L336 = {"width": 1024, "layers": 24, "head_width": 64, "patch_size": 14, "image_size": 336, "mlp_ratio": 4.0}


class _TransformersLikeConfig:  # what a transformers config object offers: to_dict()
    def __init__(self, data):
        self.data = data

    def to_dict(self):
        return dict(self.data)


def test_hf_clip_config_gives_the_head_width_and_activation(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OPENAI_L336))
    for given in (tmp_path, tmp_path / "config.json", str(tmp_path), OPENAI_L336, _TransformersLikeConfig(OPENAI_L336)):
        assert hf_clip_vision_cfg(given) == (L336, True)
    # a CLIPVisionConfig at the top level; a laion tower in Hugging Face naming uses exact GELU
    vision = {**OPENAI_L336["vision_config"], "hidden_act": "gelu", "num_attention_heads": 8}
    assert hf_clip_vision_cfg(vision) == ({**L336, "head_width": 128}, False)
    # a CLIPConfig with nothing said is transformers' default: ViT-B/32 at 224, 12 heads of 64
    default = {"width": 768, "layers": 12, "head_width": 64, "patch_size": 32, "image_size": 224, "mlp_ratio": 4.0}
    assert hf_clip_vision_cfg({"model_type": "clip"}) == (default, True)


def test_hf_clip_config_failures_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        hf_clip_vision_cfg(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json as a JSON config"):
        hf_clip_vision_cfg(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="model_type 'siglip_vision_model'"):
        hf_clip_vision_cfg({"model_type": "siglip_vision_model", "hidden_size": 768})
    with pytest.raises(ValueError, match="num_attention_heads=5 must be a positive divisor of hidden_size=64"):
        hf_clip_vision_cfg({"hidden_size": 64, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        hf_clip_vision_cfg({"hidden_act": "relu"})
    with pytest.raises(ValueError, match="got int"):
        hf_clip_vision_cfg(3)
