"""TimmEncoder on four architectures with random weights: grids, token counts, order, loading, freezing."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from rwkvblocks.vision import TimmEncoder, TokenLayout

# name, create_model overrides (kept small), grid, prefix tokens, width
ARCHS = {
    "vit_cls": ("vit_small_patch16_384", {"depth": 2}, (24, 24), 1, 384),
    "vit_registers": ("vit_small_patch14_reg4_dinov2", {"depth": 2, "img_size": 224}, (16, 16), 5, 384),
    "resnet": ("resnet18", {}, (7, 7), 0, 512),
    "vit_tiny": ("vit_tiny_patch16_224", {}, (14, 14), 1, 192),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
    name, kwargs, grid, num_prefix, dim = ARCHS[request.param]
    torch.manual_seed(0)
    encoder = TimmEncoder(name, **kwargs)
    images = torch.randn(2, 3, *encoder.image_size)  # batch of 2: pooling must not mix samples
    return encoder, images, grid, num_prefix, dim


def test_grid_width_and_token_count(arch):
    encoder, images, grid, num_prefix, dim = arch
    assert (encoder.grid, encoder.num_prefix_tokens, encoder.dim) == (grid, num_prefix, dim)
    tokens = encoder(images)
    assert tokens.shape == (2, num_prefix + grid[0] * grid[1], dim)
    assert encoder.num_tokens == tokens.shape[1]


def test_tokens_are_timms_final_features_in_order(arch):
    # norm=True at the last layer is exactly timm's forward_features: prefix tokens, then raster patches
    encoder, images, *_ = arch
    with torch.no_grad():
        expected = encoder.model.forward_features(images)
    if expected.dim() == 4:  # convolutional map [B, D, h, w] -> raster tokens
        expected = expected.flatten(2).transpose(1, 2)
    encoder.norm = True
    try:
        torch.testing.assert_close(encoder(images), expected)
    finally:
        encoder.norm = False


def test_pooled_counts_are_exact(arch):
    encoder, images, grid, num_prefix, _ = arch
    prefix, patches = encoder.features(images)
    layout = encoder.layout
    try:
        for g in [d for d in range(1, grid[0] + 1) if grid[0] % d == 0]:
            encoder.layout = TokenLayout(prefix="last", pool=g)
            assert encoder.layout(prefix, patches, encoder.grid).shape[1] == encoder.num_tokens == g * g + num_prefix
        encoder.layout = TokenLayout(prefix="last", pool=1)  # end to end: one pooled token per sample
        assert encoder(images).shape[:2] == (2, 1 + num_prefix)
    finally:
        encoder.layout = layout


def test_upstream_pooled_counts_on_a_24x24_vit():
    torch.manual_seed(0)
    encoder = TimmEncoder("vit_small_patch16_384", depth=1)
    images = torch.randn(1, 3, 384, 384)
    prefix, patches = encoder.features(images)
    counts = {}
    for g in (24, 12, 8, 6, 4, 3, 2):
        encoder.layout = TokenLayout(prefix="first", pool=g)
        counts[g] = encoder.layout(prefix, patches, encoder.grid).shape[1]
        assert encoder.num_tokens == counts[g]
    assert counts == {24: 577, 12: 145, 8: 65, 6: 37, 4: 17, 3: 10, 2: 5}
    encoder.layout = TokenLayout(keep_patches=False)
    assert encoder(images).shape == (1, 1, 384)


def test_earlier_layer_is_that_blocks_output():
    torch.manual_seed(0)
    encoder = TimmEncoder("vit_tiny_patch16_224", depth=3, layer=1)
    model, images = encoder.model, torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # timm's ViT forward written out: patches, prefix + position, blocks 0 and 1
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        x = model.blocks[1](model.blocks[0](x))
    torch.testing.assert_close(encoder(images), x)
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        TimmEncoder("vit_tiny_patch16_224", depth=3, layer=3)


def test_convnext_feature_map_and_no_cls_only_layout():
    encoder = TimmEncoder("convnext_atto", layer=-2)  # stage 3 of 4: stride 16
    assert (encoder.grid, encoder.dim, encoder.num_prefix_tokens) == ((14, 14), 160, 0)
    with pytest.raises(ValueError, match="keeps no tokens"):
        TimmEncoder("convnext_atto", layout=TokenLayout(keep_patches=False))


def test_weights_load_only_from_local_files(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0)
    save_file(source.state_dict(), tmp_path / "tiny.safetensors")
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    for file in ("tiny.safetensors", "tiny.pth"):
        encoder = TimmEncoder("vit_tiny_patch16_224", depth=1, checkpoint_path=tmp_path / file)
        torch.testing.assert_close(encoder.model.pos_embed, source.pos_embed)
    # a timm release keeps its classifier; timm's pretrained loader (pretrained=True) drops it
    release = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=1000)
    torch.save(release.state_dict(), tmp_path / "release.pth")
    encoder = TimmEncoder("vit_tiny_patch16_224", depth=1, pretrained=True, checkpoint_path=tmp_path / "release.pth")
    torch.testing.assert_close(encoder.model.blocks[0].attn.qkv.weight, release.blocks[0].attn.qkv.weight)
    with pytest.raises(RuntimeError, match="head"):  # strict: a plain checkpoint must fit exactly
        TimmEncoder("vit_tiny_patch16_224", depth=1, checkpoint_path=tmp_path / "release.pth")


def test_missing_or_remote_weights_are_refused(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TimmEncoder("resnet18", checkpoint_path=missing)
    with pytest.raises(ValueError, match="needs checkpoint_path"):
        TimmEncoder("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="hf-hub:timm/resnet18.a1_in1k"):
        TimmEncoder("hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(ValueError, match="'resnet_nonexistent'"):
        TimmEncoder("resnet_nonexistent")


def test_frozen_encoder_stores_no_graph():
    encoder = TimmEncoder("vit_tiny_patch16_224", depth=2)
    parent = nn.Sequential(encoder, nn.Linear(192, 4))
    parent.train()
    assert not encoder.training and not encoder.model.training
    assert all(not p.requires_grad for p in encoder.parameters())
    images = torch.randn(2, 3, 224, 224, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.no_grad():
            out = encoder(images)
        assert out.grad_fn is None and not out.requires_grad
        encoder(images)  # frozen: no graph even outside no_grad, with an input that requires grad
        assert not saved
        encoder.unfreeze()
        parent.train()
        trained = encoder(images)
    assert saved and trained.grad_fn is not None  # the hook does see a graph when there is one
    trained.sum().backward()
    assert encoder.model.patch_embed.proj.weight.grad is not None


def test_input_size_is_checked():
    encoder = TimmEncoder("resnet18")
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 224, 224\], got \[1, 3, 200, 224\]"):
        encoder(torch.randn(1, 3, 200, 224))
    assert encoder.transform(torch.zeros(3, 300, 250, dtype=torch.uint8)).shape == (1, 3, 224, 224)
