"""The CLIP tower's head count of an upstream checkpoint: given by the user, read from its config, or assumed aloud.

Shapes cannot tell 4 heads of 16 from 1 head of 64, so the tiny 64-wide tower of ``tests.assemblies.upstream`` is
declared to have 4 heads of 16 and every way of saying so is checked against a plain-PyTorch CLIP vision forward
with 4 heads; the default (heads of 64) must warn and give a different output.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from assemblies import VisualRWKV
from assemblies.cli import main
from assemblies.models.formats.upstream import read_upstream
from tests.assemblies.upstream import TOWER, upstream_state_dict

HEADS = 4  # the tower's truth in these tests: 4 heads of 16
PREFIX = "vit.vision_model."
TINY_CLIP = {  # what the tower's Hugging Face config.json would say (CLIPVisionConfig)
    "model_type": "clip_vision_model",
    "hidden_size": TOWER["width"],
    "intermediate_size": 4 * TOWER["width"],
    "num_hidden_layers": TOWER["layers"],
    "num_attention_heads": HEADS,
    "image_size": TOWER["image"],
    "patch_size": TOWER["patch"],
    "hidden_act": "quick_gelu",
}


def _clip_forward(sd, images, heads, act="quick_gelu"):
    """Hugging Face ``CLIPVisionModel(...).last_hidden_state`` written out: ``[B, 1 + patches, D]``, CLS first."""

    def w(name):
        return sd[PREFIX + name].double()

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:], w(name + ".weight"), w(name + ".bias"), eps=1e-5)

    def linear(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")

    conv = w("embeddings.patch_embedding.weight")
    batch, width, patch = images.shape[0], conv.shape[0], conv.shape[-1]
    h = F.conv2d(images, conv, stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([w("embeddings.class_embedding").expand(batch, 1, width), h], dim=1)
    h = layer_norm(h + w("embeddings.position_embedding.weight"), "pre_layrnorm")
    head_dim = width // heads
    for i in range(TOWER["layers"]):
        p = f"encoder.layers.{i}."
        x = layer_norm(h, p + "layer_norm1")
        q, k, v = (linear(x, p + f"self_attn.{n}_proj").view(batch, -1, heads, head_dim).transpose(1, 2) for n in "qkv")
        attn = torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1) @ v
        h = h + linear(attn.transpose(1, 2).reshape(batch, -1, width), p + "self_attn.out_proj")
        x = linear(layer_norm(h, p + "layer_norm2"), p + "mlp.fc1")
        x = x * torch.sigmoid(1.702 * x) if act == "quick_gelu" else F.gelu(x)
        h = h + linear(x, p + "mlp.fc2")
    return h  # before post_layernorm


@pytest.fixture
def upstream(tmp_path):
    """An upstream x060 file with the tiny tower, and the tower's weights as saved."""
    sd = upstream_state_dict("x060", tower=True)
    path = tmp_path / "visualrwkv.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture
def images():
    return torch.randn(2, 3, TOWER["image"], TOWER["image"], generator=torch.Generator().manual_seed(3)).double()


def _tokens(model, images):
    with torch.no_grad():
        cls, patches = model.encoder.features(images)
    return torch.cat([cls, patches], dim=1)


def _heads(model):
    return model.encoder.visual.transformer.resblocks[0].attn.num_heads


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "assemblies" and r.levelno == logging.WARNING]


def test_default_assumes_heads_of_64_says_so_and_misses_the_4_head_tower(upstream, images, caplog):
    path, sd = upstream
    with caplog.at_level(logging.WARNING, logger="assemblies"):
        model = VisualRWKV.from_upstream(path, dtype=torch.float64)
    (warning,) = [m for m in _warnings(caplog) if "head count" in m]
    assert "assuming heads of 64" in warning and str(path) in warning
    assert "vision_heads=N" in warning and "--vision-heads N" in warning and "head_width" in warning
    assert _heads(model) == 1 and model.config.encoder.options["vision_overrides"]["head_width"] == 64
    got, want = _tokens(model, images), _clip_forward(sd, images, HEADS)
    assert (got - want).norm() / want.norm() > 0.05  # the wrong head count shows: this comparison can fail
    torch.testing.assert_close(got, _clip_forward(sd, images, 1))  # and the reference agrees given 1 head


def _config_file(tmp_path, data, name="config.json"):
    (tmp_path / "tower").mkdir(exist_ok=True)
    (tmp_path / "tower" / name).write_text(json.dumps(data))
    return tmp_path / "tower" / name


WAYS = {
    "vision_heads": lambda tmp_path: {"vision_heads": HEADS},
    "head_width_override": lambda tmp_path: {"encoder": {"options": {"vision_overrides": {"head_width": 16}}}},
    "vision_config_file": lambda tmp_path: {"vision_config": _config_file(tmp_path, TINY_CLIP)},
    "vision_config_dir": lambda tmp_path: {"vision_config": _config_file(tmp_path, TINY_CLIP).parent},
    # a CLIPConfig / LLaVA config nests the tower's; here as a str path and with the defaults left out
    "nested_config": lambda tmp_path: {
        "vision_config": str(_config_file(tmp_path, {"model_type": "clip", "vision_config": TINY_CLIP}))
    },
    "config_dict": lambda tmp_path: {"vision_config": dict(TINY_CLIP)},
    "all_agreeing": lambda tmp_path: {"vision_heads": HEADS, "vision_config": dict(TINY_CLIP)},
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_head_count_given_each_way_matches_a_4_head_clip_forward(upstream, images, tmp_path, caplog, way):
    path, sd = upstream
    with caplog.at_level(logging.WARNING, logger="assemblies"):
        model = VisualRWKV.from_upstream(path, dtype=torch.float64, **WAYS[way](tmp_path))
    assert not [m for m in _warnings(caplog) if "head count" in m]
    assert _heads(model) == HEADS
    want = _clip_forward(sd, images, HEADS)
    torch.testing.assert_close(_tokens(model, images), want)
    with torch.no_grad():  # what the projector sees: x060 puts CLS last
        torch.testing.assert_close(model.encoder(images), torch.cat([want[:, 1:], want[:, :1]], dim=1))


def test_config_activation_is_used(upstream, images):
    path, sd = upstream
    model = VisualRWKV.from_upstream(path, dtype=torch.float64, vision_config={**TINY_CLIP, "hidden_act": "gelu"})
    assert model.config.encoder.options["quick_gelu"] is False
    torch.testing.assert_close(_tokens(model, images), _clip_forward(sd, images, HEADS, act="gelu"))


def test_lone_head_width_override_merges_into_the_inferred_shape(upstream):
    path, _ = upstream
    inferred = {"width": 64, "layers": 2, "patch_size": 14, "image_size": 56, "mlp_ratio": 4.0}
    # before the fix the override replaced the inferred shape: a ViT-L-sized tower, 264 missing keys
    model = VisualRWKV.from_upstream(
        path, encoder={"cls": "first", "options": {"vision_overrides": {"head_width": 16}}}
    )
    assert model.config.encoder.options["vision_overrides"] == {**inferred, "head_width": 16}
    assert model.config.encoder.cls == "first" and _heads(model) == HEADS
    # merge order: the inferred shape first, the user's entries last
    ckpt = read_upstream(path, encoder={"options": {"vision_overrides": {"head_width": 16, "image_size": 112}}})
    assert ckpt.config.encoder.options["vision_overrides"] == {**inferred, "head_width": 16, "image_size": 112}


def test_convert_flag_round_trips_into_a_pretrained_directory(upstream, images, tmp_path, capsys):
    path, sd = upstream
    want = _clip_forward(sd, images, HEADS)
    config = _config_file(tmp_path, TINY_CLIP)
    for flags, said in ((["--vision-heads", "4"], "--vision-heads"), (["--vision-config", str(config)], str(config))):
        out = tmp_path / f"out{flags[0]}"
        assert main(["convert", str(path), str(out), "--dtype", "fp64", *flags]) == 0
        assert f"vision tower: 4 attention heads of 16 (from {said})" in capsys.readouterr().out
        stored = json.loads((out / "config.json").read_text())
        assert stored["model"]["encoder"]["options"]["vision_overrides"]["head_width"] == 16
        model = VisualRWKV.from_pretrained(out)
        assert _heads(model) == HEADS
        torch.testing.assert_close(_tokens(model, images), want)
    assert main(["convert", str(path), str(tmp_path / "default")]) == 0
    assert "1 attention heads of 64 (not given, so heads of 64" in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "bad"), "--vision-heads", "3"]) == 2
    assert "vision_heads=3 must be a positive divisor of the CLIP tower's width 64" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _narrowed(sd, width):
    """The tower cut to ``width`` channels (every 64-sized dimension of ``vit.*``): a width 64 cannot divide."""
    out = dict(sd)
    for key, value in sd.items():
        if key.startswith(PREFIX):
            out[key] = value[tuple(slice(0, width) if n == TOWER["width"] else slice(None) for n in value.shape)]
    return out


def test_contradictions_and_impossible_head_counts_are_named(upstream, tmp_path):
    path, sd = upstream
    with pytest.raises(ValueError, match=r"given differently: vision_overrides head_width=32 \(heads of 32\), "):
        read_upstream(path, vision_heads=4, encoder={"options": {"vision_overrides": {"head_width": 32}}})
    with pytest.raises(ValueError, match="vision_overrides head_width=24 must be a positive divisor .* width 64"):
        read_upstream(path, encoder={"options": {"vision_overrides": {"head_width": 24}}})
    with pytest.raises(ValueError, match=r"describes another tower than .*: width: config 768, file 64"):
        read_upstream(path, vision_config={"model_type": "clip", "vision_config": {}})  # ViT-B/32 defaults
    narrow = tmp_path / "narrow.pth"
    torch.save(_narrowed(sd, 48), narrow)
    with pytest.raises(ValueError, match=r"heads of 64 \(OpenAI CLIP, assumed otherwise\) do not divide its width 48"):
        read_upstream(narrow)
    assert read_upstream(narrow, vision_heads=3).config.encoder.options["vision_overrides"]["head_width"] == 16
    bare = tmp_path / "bare.pth"
    torch.save(upstream_state_dict("x060", tower=False), bare)
    with pytest.raises(ValueError, match="vision_heads=4 needs the CLIP tower"):
        read_upstream(bare, vision_heads=4)
    # without the tower, the config describes the encoder to build
    options = read_upstream(bare, vision_config=TINY_CLIP).config.encoder.options
    assert options["vision_overrides"]["head_width"] == 16 and options["vision_overrides"]["width"] == 64
