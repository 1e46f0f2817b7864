"""Weight files and the Hugging Face -> open_clip renaming: fused q/k/v order and clear failures."""

from __future__ import annotations

import os

import pytest
import torch

from rwkvblocks.vision import hf_clip_vision_to_open_clip, load_state_dict_file


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
