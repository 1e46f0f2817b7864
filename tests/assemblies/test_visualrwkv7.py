"""VisualRWKV-7 (upstream v7.00): preset sizes, upstream files against upstream's forward, the padding switch,
batching, parallel vs recurrent, the three-tower encoder and generation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from assemblies import VisualRWKV, create_assembly, generate, get_assembly_config
from assemblies.models.config import make_prompt_builder
from assemblies.models.formats.upstream7 import v7_tower_configs
from rwkvblocks import TimeMix7
from rwkvblocks.generation import SamplingConfig
from rwkvblocks.prompting import ByteTokenizer
from rwkvblocks.vision import IMAGENET_MEAN, IMAGENET_STD, ConcatEncoder, TimmEncoder
from tests.assemblies.upstream7 import (
    TOKENS,
    VOCAB,
    tower_models,
    tower_pixels,
    upstream7_forward,
    upstream7_state_dict,
)
from tests.helpers import spread_weights_

PRESETS = {  # LM parameters of RWKV-7 World 0.1B / 0.4B / 1.5B (DESIGN.md §15 shapes, 65,536-token vocabulary)
    "visualrwkv7_0b1_dinosiglipsam": 0.191e9,
    "visualrwkv7_0b4_dinosiglipsam": 0.452e9,
    "visualrwkv7_1b5_dinosiglipsam": 1.527e9,
}
TOWER_SIZES = {"dino": 304.0e6, "siglip": 428.6e6, "sam": 89.7e6}  # DINOv2-L/14 reg4, SigLIP so400m, SAM ViT-B


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameter_counts_on_meta(name):
    model = create_assembly(name, device="meta")
    lm = sum(p.numel() for p in model.lm.parameters())
    assert abs(lm / PRESETS[name] - 1) < 0.005, lm
    for tower, size in TOWER_SIZES.items():
        count = sum(p.numel() for p in model.encoder.towers[tower].parameters())
        assert abs(count / size - 1) < 0.005, (tower, count)
    C = model.config.lm.dim
    assert sum(p.numel() for p in model.proj.parameters()) == 3200 * 3200 + 3200 * C + 2 * C
    assert model.image_tokens == 1024 and model.encoder.dim == 3200 and model.encoder.grid == (32, 32)
    assert isinstance(model.lm.blocks[1].att, TimeMix7)
    config, data = get_assembly_config(name)
    assert (config.scan, config.projector, config.pad_multiple, data.prompt) == ("uni", "gated", 1, "image_first")
    sizes = dict(model.encoder.sizes)
    assert sizes == {"dino": (448, 448), "siglip": (448, 448), "sam": (1024, 1024)}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    path = tmp_path_factory.mktemp("v7") / "visualrwkv7.pth"
    sd = upstream7_state_dict()
    torch.save(sd, path)
    return path, sd, tower_models()


def _prompt(seed, length=45, starts=(3, 25)):
    ids = torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    return ids, list(starts), torch.tensor([[0, s, 0, TOKENS] for s in starts])


def test_upstream_file_matches_upstreams_forward_and_round_trips(upstream, tmp_path):
    path, sd, towers = upstream
    model = VisualRWKV.from_upstream(path)
    c = model.config
    assert (c.lm.version, c.lm.decay_rank, c.lm.a_rank, c.lm.value_rank, c.lm.gate_rank) == ("x070", 24, 16, 8, 20)
    assert (c.projector, c.pad_multiple, c.scan, model.data_config.prompt) == ("gated", 16, "uni", "image_first")
    assert model.image_tokens == TOKENS and model.encoder.dim == 192
    pixels = tower_pixels(2)
    ids, starts, spans = _prompt(1)  # 45 positions: upstream pads 3
    reference = upstream7_forward(sd, towers, ids, starts, pixels)
    packed = model.encoder.pack(pixels)
    with torch.no_grad():
        ours = model(torch.tensor([ids]), images=packed, image_spans=spans).logits[0]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "m")
    again = VisualRWKV.from_pretrained(tmp_path / "m")
    assert again.config == model.config and again.data_config == model.data_config
    with torch.no_grad():
        reloaded = again(torch.tensor([ids]), images=packed, image_spans=spans).logits[0]
    torch.testing.assert_close(reloaded, ours, atol=0, rtol=0)


def test_padding_switch_reproduces_upstream_and_the_default_pads_nothing(upstream):
    path, sd, towers = upstream
    padded, plain = VisualRWKV.from_upstream(path), VisualRWKV.from_upstream(path, pad_multiple=1)
    pixels = tower_pixels(1, seed=2)
    for length, differs in ((37, True), (48, False)):
        ids, starts, spans = _prompt(2, length, starts=(5,))
        images = padded.encoder.pack(pixels)
        with torch.no_grad():
            a = padded(torch.tensor([ids]), images=images, image_spans=spans).logits[0]
            b = plain(torch.tensor([ids]), images=images, image_spans=spans).logits[0]
            last, _ = padded.prefill(torch.tensor([ids]), images, spans)
        torch.testing.assert_close(a, upstream7_forward(sd, towers, ids, starts, pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            b, upstream7_forward(sd, towers, ids, starts, pixels, pad=False), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(last[0], a[-1], atol=1e-6, rtol=1e-6)
        assert ((a - b).abs().max() > 1e-4) == differs  # logits depend on the padding unless T % 16 == 0


def test_file_without_towers_takes_the_given_encoder(tmp_path, caplog):
    sd = upstream7_state_dict(towers=False)
    torch.save(sd, tmp_path / "no_towers.pth")
    encoder = get_assembly_config("visualrwkv7_tiny").config.encoder
    with caplog.at_level(logging.WARNING, logger="assemblies"):
        model = VisualRWKV.from_upstream(tmp_path / "no_towers.pth", encoder=encoder)
    assert "random weights" in caplog.text and model.encoder.dim == 192
    with torch.no_grad():
        out = model(
            torch.tensor([[1] * 20]),
            images=torch.zeros(1, model.encoder.image_size[1]),
            image_spans=torch.tensor([[0, 2, 0, TOKENS]]),
        )
    assert torch.isfinite(out.logits).all()


def test_malformed_upstream_files_are_named(upstream, tmp_path):
    _, sd, _ = upstream
    cases = {
        "missing": ({k: v for k, v in sd.items() if not k.startswith("vit.sam_featurizer.")}, "vit.sam_featurizer"),
        "no_proj": ({k: v for k, v in sd.items() if not k.startswith("proj.")}, "no projector"),
        "clip": ({**sd, "vit.vision_model.post_layernorm.weight": torch.ones(4)}, "CLIP tower"),
        "extra": ({**sd, "vit.dino_featurizer.bogus": torch.ones(3)}, "bogus"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=message):
            VisualRWKV.from_upstream(tmp_path / f"{name}.pth")


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_assembly("visualrwkv7_tiny", dtype=torch.float64, **overrides)
    spread_weights_(model.lm, lora=0)
    torch.nn.init.normal_(model.proj.gate.weight, std=0.2)
    return model.eval()


def _packed(model, n, seed=0):
    return model.encoder.pack({k: v.double() for k, v in tower_pixels(n, seed).items()})


def test_batch_of_two_with_images_at_different_positions_equals_each_alone():
    model = _tiny()
    ids = torch.randint(1, 257, (2, 60), generator=torch.Generator().manual_seed(0))
    images = _packed(model, 3)
    spans = torch.tensor([[0, 4, 0, TOKENS], [1, 11, 0, TOKENS], [1, 35, 0, TOKENS]])  # one image, then two
    with torch.no_grad():
        both = model(ids, None, images, spans).logits
        alone0 = model(ids[:1], None, images[:1], spans[:1]).logits
        s1 = spans[1:].clone()
        s1[:, 0] = 0
        alone1 = model(ids[1:], None, images[1:], s1).logits
    torch.testing.assert_close(both[:1], alone0, atol=1e-10, rtol=0)
    torch.testing.assert_close(both[1:], alone1, atol=1e-10, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-3


@pytest.mark.parametrize("pad_multiple", [1, 16])
def test_parallel_equals_recurrent(pad_multiple):
    model = _tiny(seed=1, pad_multiple=pad_multiple, lm={"vocab_size": 300})
    ids = torch.randint(1, 300, (1, 61), generator=torch.Generator().manual_seed(1))
    images = _packed(model, 2, seed=1)
    spans = torch.tensor([[0, 3, 0, TOKENS], [0, 28, 0, TOKENS]])
    with torch.no_grad():
        full = model(ids, None, images, spans).logits
        # 45 = 61 - 16: with upstream's padding the prefill is padded as the whole sequence was (3 positions)
        last, state = model.prefill(ids[:, :45], images, spans)
        rows = [last]
        for t in range(45, 61):
            step, state = model.lm(ids[:, t : t + 1], state)
            rows.append(step[:, -1])
    torch.testing.assert_close(torch.stack(rows, 1), full[:, 44:61], atol=1e-10, rtol=0)


def test_encoder_takes_packed_or_per_tower_batches_and_squash_resizes():
    model = _tiny()
    enc: ConcatEncoder = model.encoder
    pixels = {k: v.double() for k, v in tower_pixels(2).items()}
    packed = enc.pack(pixels)
    assert packed.shape == (2, 3 * (56 * 56 * 2 + 128 * 128))
    with torch.no_grad():
        out = enc(packed)
        torch.testing.assert_close(enc(pixels), out, atol=0, rtol=0)
        torch.testing.assert_close(enc([pixels["dino"], pixels["siglip"], pixels["sam"]]), out, atol=0, rtol=0)
        parts = [enc.towers[t].features(pixels[t])[1] for t in ("dino", "siglip", "sam")]
    torch.testing.assert_close(out, torch.cat(parts, dim=2), atol=0, rtol=0)  # [DINO | SigLIP | SAM] channels

    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)  # wide: squashed, not cropped
    got = enc.transform(Image.fromarray(rgb))[0]
    expected = []
    for size, mean, std in (
        (56, IMAGENET_MEAN, IMAGENET_STD),
        (56, (0.5,) * 3, (0.5,) * 3),
        (128, IMAGENET_MEAN, IMAGENET_STD),
    ):
        resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        x = torch.from_numpy(resized / 255.0).permute(2, 0, 1)
        expected.append(((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).reshape(-1))
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="expected packed images"):
        enc(packed[:, :-1])
    with pytest.raises(ValueError, match="missing \\['sam'\\]"):
        enc({"dino": pixels["dino"], "siglip": pixels["siglip"]})
    with pytest.raises(ValueError, match="tower 'sam' expects images \\[B, 3, 128, 128\\]"):
        enc({**pixels, "sam": pixels["dino"]})
    with pytest.raises(ValueError, match="patch grids differ"):
        ConcatEncoder({"a": enc.towers["dino"], "b": TimmEncoder("vit_tiny_patch16_224", img_size=32, depth=1)})


def test_adaptive_pooling_to_a_non_dividing_grid():
    model = _tiny(encoder={"pool": 3})
    assert model.image_tokens == 9
    images = _packed(model, 1)
    with torch.no_grad():
        _, patches = model.encoder.features(images)
        pooled = model.encoder(images)
    grid = patches.transpose(1, 2).reshape(1, -1, 4, 4)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(grid, 3).flatten(2).transpose(1, 2), atol=1e-12, rtol=0)


def test_greedy_generation_with_an_image_equals_argmax_of_full_forwards():
    model = _tiny()
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}]
    got = generate(model, conv, image, SamplingConfig(max_new_tokens=5, stop_tokens=()))[0]
    built = make_prompt_builder(model.data_config, ByteTokenizer()).build(conv, mode="inference")
    ids, _, starts = built.expand(model.image_tokens)
    assert starts == [len("User: ")]
    pixels = model.encoder.transform(image).double()
    spans = torch.tensor([[0, s, 0, TOKENS] for s in starts])
    out = []
    with torch.no_grad():
        for _ in range(5):
            out.append(int(model(torch.tensor([ids + out]), None, pixels, spans).logits[0, -1].argmax()))
    assert got.tokens == out


def test_sam_tower_equals_metas_sam_image_encoder_on_upstream_keys(tmp_path):
    """Meta's ``segment_anything`` encoder (what upstream's ``build_sam_vit_b`` builds: LayerNorm eps 1e-6,
    relative positions, windowed and global blocks) with random weights, saved under upstream's
    ``vit.sam_featurizer.*`` names, read by ``from_upstream``: our tower's tokens equal SAM's neck output after a
    2 x 2 space-to-depth."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    sam = ImageEncoderViT(
        img_size=128,
        patch_size=16,
        embed_dim=64,
        depth=3,
        num_heads=1,
        out_chans=16,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(2,),
    ).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised relative positions and norms away from defaults
    sd = {k: v for k, v in upstream7_state_dict().items() if not k.startswith("vit.sam_featurizer.")}
    sd.update({f"vit.sam_featurizer.{k}": v for k, v in sam.state_dict().items()})
    torch.save(sd, tmp_path / "meta_sam.pth")
    model = VisualRWKV.from_upstream(tmp_path / "meta_sam.pth")
    pixels = tower_pixels(2, seed=5)["sam"]
    with torch.no_grad():
        ours = model.encoder.towers["sam"].features(pixels)[1]
        neck = sam(pixels)  # [2, 16, 8, 8]
    s2d = neck.view(2, 16, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 64, 16)  # channel c * 4 + dy * 2 + dx
    torch.testing.assert_close(ours, s2d.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_convert_command_reads_a_v7_file(upstream, tmp_path, capsys):
    from assemblies.cli import main

    path, sd, towers = upstream
    assert main(["convert", str(path), str(tmp_path / "out")]) == 0
    assert "x070, 2 layers" in capsys.readouterr().out
    model = VisualRWKV.from_pretrained(tmp_path / "out")
    ids, starts, spans = _prompt(3, 40, starts=(2,))
    pixels = tower_pixels(1, seed=3)
    with torch.no_grad():
        out = model(torch.tensor([ids]), images=model.encoder.pack(pixels), image_spans=spans).logits[0]
    torch.testing.assert_close(out, upstream7_forward(sd, towers, ids, starts, pixels), atol=1e-5, rtol=1e-5)


def test_bad_vision_options_are_named():
    from rwkvblocks.vision import squash_transform

    with pytest.raises(ValueError, match="interpolation must be one of"):
        squash_transform(56, interpolation="cubic")
    with pytest.raises(ValueError, match="size must be positive"):
        squash_transform(0)
    with pytest.raises(ValueError, match="space_to_depth must be a positive int"):
        TimmEncoder("vit_tiny_patch16_224", img_size=32, depth=1, space_to_depth=0)
    with pytest.raises(ValueError, match="space_to_depth=3 does not tile the 2x2 feature map"):
        TimmEncoder("vit_tiny_patch16_224", img_size=32, depth=1, space_to_depth=3, layout=_no_prefix())
    with pytest.raises(ValueError, match="resize must be 'timm' or 'squash'"):
        TimmEncoder("vit_tiny_patch16_224", img_size=32, depth=1, resize="crop")
    with pytest.raises(ValueError, match="tokens per image must be a positive square"):
        v7_tower_configs({}, {}, {}, tokens=10)
    with pytest.raises(ValueError, match="pad_token must be a token id"):
        create_assembly("visualrwkv7_tiny", pad_multiple=16)  # 261 is outside the 257-id byte vocabulary


def _no_prefix():
    from rwkvblocks.vision import TokenLayout

    return TokenLayout(prefix="none")
