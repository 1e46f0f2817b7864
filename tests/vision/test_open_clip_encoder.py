"""OpenCLIPEncoder: the default ViT-L/14-336 tower, Hugging Face CLIP weights, local-only loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from rwkvblocks.vision import OpenCLIPEncoder, TokenLayout, hf_clip_vision_to_open_clip

WIDTH, LAYERS, HEADS, PATCH, IMAGE = 64, 2, 4, 14, 56


@pytest.fixture(scope="module")
def vit_l():
    """The default tower (0.3 B parameters, random weights), one image, its tokens CLS first."""
    torch.manual_seed(0)
    encoder = OpenCLIPEncoder()
    images = torch.randn(1, 3, 336, 336)
    return encoder, images, encoder(images)


def test_default_tower_gives_577_tokens_of_width_1024_in_both_orders(vit_l):
    encoder, images, first = vit_l
    assert (encoder.grid, encoder.dim, encoder.image_size, encoder.layer) == ((24, 24), 1024, (336, 336), 23)
    assert first.shape == (1, 577, 1024) and encoder.prefix_span == slice(0, 1)
    layout = encoder.layout
    encoder.layout = TokenLayout(prefix="last")
    try:
        last = encoder(images)
        assert last.shape == (1, 577, 1024) and encoder.prefix_span == slice(576, 577)
    finally:
        encoder.layout = layout
    torch.testing.assert_close(last[:, -1], first[:, 0])
    torch.testing.assert_close(last[:, :-1], first[:, 1:])


def test_last_layer_before_ln_post_is_the_towers_intermediate(vit_l):
    encoder, images, first = vit_l
    with torch.no_grad():
        out = encoder.visual.forward_intermediates(
            images, indices=[23], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
    (patches,), (cls,) = out["image_intermediates"], out["image_intermediates_prefix"]
    torch.testing.assert_close(first, torch.cat([cls, patches], dim=1))
    assert isinstance(encoder.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)  # OpenAI CLIP's activation


def test_frozen_default_tower_stores_no_graph(vit_l):
    encoder, _, first = vit_l
    assert first.grad_fn is None and not first.requires_grad and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


# ---- a small tower in Hugging Face naming, checked against a plain-PyTorch CLIP vision forward ----


def _hf_state_dict(prefix="vision_model.", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def norm(name):
        return {f"{name}.weight": 1 + rand(WIDTH, scale=0.1), f"{name}.bias": rand(WIDTH, scale=0.1)}

    sd = {
        "embeddings.class_embedding": rand(WIDTH),
        "embeddings.patch_embedding.weight": rand(WIDTH, 3, PATCH, PATCH, scale=0.05),
        "embeddings.position_embedding.weight": rand((IMAGE // PATCH) ** 2 + 1, WIDTH),
        "embeddings.position_ids": torch.arange((IMAGE // PATCH) ** 2 + 1).unsqueeze(0),
        **norm("pre_layrnorm"),
        **norm("post_layernorm"),
    }
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = rand(WIDTH, WIDTH), rand(WIDTH)
        sd.update({p + k: v for k, v in {**norm("layer_norm1"), **norm("layer_norm2")}.items()})
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(4 * WIDTH, WIDTH), rand(4 * WIDTH)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rand(WIDTH, 4 * WIDTH), rand(WIDTH)
    return {prefix + k: v for k, v in sd.items()}


def _clip_vision_reference(sd, images, prefix="vision_model."):
    """Hugging Face CLIPVisionTransformer, written out: hidden state after each encoder layer."""

    def w(name):
        return sd[prefix + name]

    def layer_norm(x, name):
        return F.layer_norm(x, (WIDTH,), w(name + ".weight"), w(name + ".bias"), eps=1e-5)

    def linear(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")

    batch, head_dim = images.shape[0], WIDTH // HEADS
    patches = F.conv2d(images, w("embeddings.patch_embedding.weight"), stride=PATCH).flatten(2).transpose(1, 2)
    cls = w("embeddings.class_embedding").expand(batch, 1, WIDTH)
    h = torch.cat([cls, patches], dim=1) + w("embeddings.position_embedding.weight")
    h = layer_norm(h, "pre_layrnorm")
    states = []
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        x = layer_norm(h, p + "layer_norm1")
        q, k, v = (
            linear(x, p + f"self_attn.{n}").view(batch, -1, HEADS, head_dim).transpose(1, 2)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        attn = torch.softmax((q * head_dim**-0.5) @ k.transpose(-1, -2), dim=-1) @ v
        h = h + linear(attn.transpose(1, 2).reshape(batch, -1, WIDTH), p + "self_attn.out_proj")
        x = linear(layer_norm(h, p + "layer_norm2"), p + "mlp.fc1")
        h = h + linear(x * torch.sigmoid(1.702 * x), p + "mlp.fc2")  # quick_gelu
        states.append(h)
    return states


@pytest.fixture
def small_model(tmp_path):
    """A 64-wide, 2-layer open_clip config in a local directory (no hub, no bundled name)."""
    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": IMAGE,
            "layers": LAYERS,
            "width": WIDTH,
            "head_width": WIDTH // HEADS,
            "patch_size": PATCH,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    return f"local-dir:{tmp_path}"


@pytest.mark.parametrize("layer", [-1, 0])
def test_converted_hf_weights_match_a_plain_clip_forward(small_model, layer):
    sd = _hf_state_dict()
    encoder = OpenCLIPEncoder(small_model, layer=layer, dtype=torch.float64)
    encoder.load_tower_state_dict(sd)
    images = torch.randn(2, 3, IMAGE, IMAGE, dtype=torch.float64)
    tokens = encoder(images)
    assert tokens.shape == (2, 17, WIDTH)
    torch.testing.assert_close(tokens, _clip_vision_reference(sd, images)[layer])
    torch.testing.assert_close(encoder.visual.ln_post.bias, sd["vision_model.post_layernorm.bias"])


def test_upstream_checkpoint_file_brings_its_tower(small_model, tmp_path):
    tower = _hf_state_dict(prefix="vit.vision_model.", seed=1)
    upstream = {**tower, "proj.weight": torch.randn(8, WIDTH), "rwkv.emb.weight": torch.randn(10, 8)}
    upstream = {k: v.float() if v.is_floating_point() else v for k, v in upstream.items()}
    save_file(upstream, tmp_path / "visualrwkv.safetensors")
    encoder = OpenCLIPEncoder(small_model, checkpoint_path=tmp_path / "visualrwkv.safetensors", dtype=torch.float64)
    images = torch.randn(1, 3, IMAGE, IMAGE, dtype=torch.float64)
    expected = _clip_vision_reference({k: v.double() for k, v in upstream.items()}, images, prefix="vit.vision_model.")
    torch.testing.assert_close(encoder(images), expected[-1])


def test_open_clip_naming_loads_and_bad_weights_are_named(small_model, tmp_path):
    converted = hf_clip_vision_to_open_clip(_hf_state_dict())
    torch.save({"visual." + k: v for k, v in converted.items()}, tmp_path / "clip.pt")
    encoder = OpenCLIPEncoder(small_model, checkpoint_path=tmp_path / "clip.pt", dtype=torch.float64)
    torch.testing.assert_close(encoder.visual.class_embedding, converted["class_embedding"])
    del converted["ln_pre.bias"]
    torch.save(converted, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'partial.pt'} does not fit .* missing \['ln_pre.bias'\]"):
        OpenCLIPEncoder(small_model, checkpoint_path=tmp_path / "partial.pt")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.pt")):
        OpenCLIPEncoder(small_model, checkpoint_path=tmp_path / "absent.pt")


def test_activation_follows_the_release():
    laion = OpenCLIPEncoder("ViT-B-32", pretrained_tag="laion2b_s34b_b79k")
    assert isinstance(laion.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    openai = OpenCLIPEncoder("ViT-B-32", pretrained_tag="openai")
    assert isinstance(openai.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    with pytest.raises(ValueError, match="'ViT-B-32-quickgelu' is defined with QuickGELU"):
        OpenCLIPEncoder("ViT-B-32-quickgelu", quick_gelu=False)
    with pytest.raises(ValueError, match="unknown pretrained_tag 'nope'"):
        OpenCLIPEncoder("ViT-B-32", pretrained_tag="nope")


def test_bad_names_and_layers(small_model):
    with pytest.raises(ValueError, match="hf-hub:timm/ViT-B-16-SigLIP"):
        OpenCLIPEncoder("hf-hub:timm/ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        OpenCLIPEncoder("ViT-Z-99")
    with pytest.raises(ValueError, match="'convnext_base'.*TimmEncoder"):
        OpenCLIPEncoder("convnext_base")
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        OpenCLIPEncoder(small_model, layer=2)
