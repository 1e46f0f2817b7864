"""VisualRWKV assemblies: paper sizes, batching, parallel vs recurrent, stages, checkpoints, ablations."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from assemblies import (
    ABLATIONS,
    DataConfig,
    VisualRWKV,
    VisualRWKVConfig,
    configure_stage,
    create_assembly,
    get_assembly_config,
    list_assemblies,
)
from assemblies.training import make_dataset
from rwkvblocks import BatchLevelCE, DataDependentDecay, PreNormTinyAttention, SampleLevelCE, StaticDecay
from rwkvblocks.prompting import ImageFirstPromptBuilder, ImageLastPromptBuilder, SandwichPromptBuilder
from rwkvblocks.scan import SCHEDULES
from tests.assemblies.upstream import upstream_state_dict
from tests.helpers import spread_weights_

FAMILIES = ["visualrwkv_tiny", "visualrwkv_base_tiny", "visualrwkv_hybrid_tiny"]
N = 17  # image tokens of the tiny encoder: 4 x 4 patches + CLS


@pytest.mark.parametrize(
    "name, total, lm",
    [
        ("visualrwkv_1b6_clipl336", 1.9e9, 1.6e9),
        ("visualrwkv_3b_clipl336", 3.4e9, 3.1e9),
        ("visualrwkv_7b_clipl336", 7.9e9, 7.6e9),
    ],
)
def test_paper_parameter_counts_on_meta(name, total, lm):
    model = create_assembly(name, device="meta")
    count = sum(p.numel() for p in model.parameters())
    lm_count = sum(p.numel() for p in model.lm.parameters())
    assert abs(count / total - 1) < 0.01, count
    assert abs(lm_count / lm - 1) < 0.01, lm_count
    assert model.image_tokens == 577 and model.encoder.dim == 1024


def test_registry():
    names = list_assemblies()
    for required in (
        "visualrwkv_1b6_clipl336",
        "visualrwkv_3b_clipl336",
        "visualrwkv_7b_clipl336",
        "visualrwkv_base_1b6_clipl336",
        "visualrwkv_base_7b_clipl336",
        "visualrwkv_hybrid_1b6_clipl336",
        "visualrwkv_hybrid_7b_clipl336",
        *FAMILIES,
    ):
        assert required in names
    assert list_assemblies("*tiny") == sorted([*FAMILIES, "visualrwkv7_tiny"])
    hybrid = get_assembly_config("visualrwkv_hybrid_7b_clipl336").config
    assert hybrid.hybrid_layers == (31,) and hybrid.lm.version == "x052" and hybrid.scan == "uni"
    v6, data = get_assembly_config("visualrwkv_1b6_clipl336")
    assert (v6.scan, data.prompt, v6.encoder.cls, data.loss) == ("bi", "sandwich", "last", "sample")
    with pytest.raises(ValueError, match="unknown assembly"):
        create_assembly("visualrwkv_9b")
    with pytest.raises(ValueError, match="unknown VisualRWKVConfig fields"):
        create_assembly("visualrwkv_tiny", scanning="bi")
    with pytest.raises(ValueError, match="scan must be"):
        create_assembly("visualrwkv_tiny", scan="sideways")
    with pytest.raises(ValueError, match="unknown EncoderConfig fields"):
        create_assembly("visualrwkv_tiny", encoder={"grid": 3})


_BUILDERS = {
    "image_first": ImageFirstPromptBuilder,
    "image_last": ImageLastPromptBuilder,
    "sandwich": SandwichPromptBuilder,
}
_TOKENS = {
    "577 (24x24 + CLS)": 577,
    "1 (CLS only)": 1,
    **{f"{g * g + 1} ({g}x{g} pooled + CLS)": g * g + 1 for g in (12, 8, 6, 4, 3, 2)},
}


def _prompt_used_by_the_data_pipeline(model, tmp_path) -> str:
    """Build the data pipeline from the model's data configuration and read where it put the image."""
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "conversations": conv}]))
    dataset = make_dataset(model.data_config, data, None, image_transform=None)
    builder = dataset.builder
    text = builder.build(conv).text
    assert type(builder) is _BUILDERS[model.data_config.prompt]
    return {
        "User: <image>\nWhat is it?\n\nAssistant: A cat.\n\n": "image_first",
        "User: What is it?\n<image>\n\nAssistant: A cat.\n\n": "image_last",
        "User: What is it?\n<image>\nWhat is it?\n\nAssistant: A cat.\n\n": "sandwich",
    }[text]


@pytest.mark.parametrize("table, knob, variant, preset, overrides", ABLATIONS, ids=[a[2] for a in ABLATIONS])
def test_every_ablation_is_one_call_and_its_knob_takes_effect(table, knob, variant, preset, overrides, tmp_path):
    model = create_assembly(preset, device="meta", **overrides)
    cfg, data = model.config, model.data_config
    base, base_data = get_assembly_config(preset)
    if knob == "recurrence":
        version = overrides.get("lm", {}).get("version", base.lm.version)
        decay = StaticDecay if version == "x052" else DataDependentDecay
        assert all(isinstance(block.att.decay, decay) for block in model.lm.blocks)
    elif knob == "prompt":
        assert _prompt_used_by_the_data_pipeline(model, tmp_path) == overrides.get("prompt", base_data.prompt)
    elif knob == "scan":
        assert model.scan.directions == SCHEDULES[overrides.get("scan", base.scan)]
        assert [model.scan.direction(i) for i in range(4)][: len(model.scan.directions)] == list(model.scan.directions)
    elif knob == "image tokens":
        assert model.image_tokens == _TOKENS[variant]
    elif knob == "hybrid":
        with_attention = [i for i, block in enumerate(model.lm.blocks) if block.tiny_att is not None]
        assert with_attention == list(overrides["hybrid_layers"])
        assert isinstance(model.lm.blocks[23].tiny_att, PreNormTinyAttention)
    elif knob == "loss":
        want = SampleLevelCE if overrides.get("loss", base_data.loss) == "sample" else BatchLevelCE
        assert type(model.loss_fn) is want
    else:
        raise AssertionError(f"no check for the knob {knob!r}")
    assert VisualRWKVConfig.from_json(cfg.to_json()) == cfg
    assert DataConfig.from_dict(json.loads(json.dumps(data.to_dict()))) == data


def test_model_and_data_configurations_are_apart_and_hashable():
    model_fields = {f.name for f in dataclasses.fields(VisualRWKVConfig)}
    assert not model_fields & {"prompt", "context_length", "tokenizer", "loss", "l2wrap"}
    cfg, data = get_assembly_config("visualrwkv_tiny")
    assert hash(cfg) == hash(get_assembly_config("visualrwkv_tiny").config)  # options are hashable
    assert hash(data) and cfg.encoder.options["vision_overrides"]["width"] == 64
    changed = cfg.replace(encoder={"options": {"vision_overrides": {"head_width": 16}}})
    assert changed.encoder.options["vision_overrides"]["width"] == 64  # merged, not replaced
    assert changed.encoder.options["vision_overrides"]["head_width"] == 16


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = create_assembly(name, dtype=torch.float64)
    spread_weights_(model.lm, lora=0)
    return model.eval()


def _batch(seed=0):
    """Two samples whose images sit at different positions (sample 1 has two images)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 257, (2, 60), generator=g)
    images = torch.randn(3, 3, 56, 56, generator=g, dtype=torch.float64)
    spans = torch.tensor([[0, 4, 0, N], [1, 11, 0, N], [1, 35, 0, N]])
    labels = ids.clone()
    labels[:, :8] = -100
    return ids, labels, images, spans


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_samples_equal_each_sample_alone(name):
    model = _model(name)
    ids, labels, images, spans = _batch()
    with torch.no_grad():
        out = model(ids, labels, images, spans)
        alone0 = model(ids[:1], None, images[:1], spans[:1]).logits
        s1 = spans[1:].clone()
        s1[:, 0] = 0
        alone1 = model(ids[1:], None, images[1:], s1).logits
    torch.testing.assert_close(out.logits[:1], alone0, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.logits[1:], alone1, atol=1e-10, rtol=0)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", FAMILIES)
def test_parallel_equals_recurrent(name):
    model = _model(name, seed=1)
    ids, _, images, spans = _batch(seed=1)
    ids, images, spans = ids[1:], images[1:], spans[1:].clone()
    spans[:, 0] = 0
    with torch.no_grad():
        full = model(ids, None, images, spans).logits
        # prefill the first 55 positions (both images inside), then one token at a time
        last, state = model.prefill(ids[:, :55], images, spans)
        rows = [last]
        for t in range(55, 60):
            step, state = model.lm(ids[:, t : t + 1], state)
            rows.append(step[:, -1])
    torch.testing.assert_close(torch.stack(rows, 1), full[:, 54:60], atol=1e-10, rtol=0)
    if model.config.hybrid_layers:
        assert state.layers[-1].kv.k.shape[2] == 60


def test_scan_schedule_changes_the_result_and_truncated_images_stay_raster():
    model = _model("visualrwkv_tiny")
    ids, _, images, spans = _batch()
    with torch.no_grad():
        bi = model(ids, None, images, spans).logits
        model.scan = type(model.scan)("uni")
        uni = model(ids, None, images, spans).logits
        cut = spans.clone()
        cut[0, 2:] = torch.tensor([5, N - 5])  # only the last 12 tokens of image 0 are in the window
        model.scan = type(model.scan)("bi")
        truncated_bi = model(ids, None, images, cut).logits
        model.scan = type(model.scan)("uni")
        truncated_uni = model(ids, None, images, cut).logits
    assert (bi - uni).abs().max() > 1e-4
    torch.testing.assert_close(truncated_bi[:1], truncated_uni[:1], atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "stage, trains",
    [
        ("alignment", {"proj"}),
        ("instruction", {"proj", "lm"}),
    ],
)
def test_loss_reaches_exactly_the_trainable_parameters(stage, trains):
    model = _model("visualrwkv_hybrid_tiny")
    configure_stage(model, stage)
    model.train()
    ids, labels, images, spans = _batch()
    model(ids, labels, images, spans).loss.backward()
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        should = part in trains and not name.startswith("lm.emb.")
        assert p.requires_grad == should, name
        if should:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not model.encoder.training  # frozen encoders stay in eval mode


def test_generate_runs_greedy_decoding():
    model = _model("visualrwkv_tiny")
    ids, _, images, spans = _batch()
    out = model.generate(ids[:1, :30], images[:1], spans[:1], max_new_tokens=5, stop_tokens=())
    assert len(out) == 5 and all(0 <= t < 257 for t in out)
    with torch.no_grad():
        logits = model(ids[:1, :30], None, images[:1], spans[:1]).logits
    assert out[0] == int(logits[0, -1].argmax())


def test_bad_batches_are_named():
    model = _model("visualrwkv_tiny")
    ids, _, images, spans = _batch()
    with pytest.raises(ValueError, match="without image_spans"):
        model(ids, None, images, None)
    with pytest.raises(ValueError, match=r"\[N, 4\] rows"):
        model(ids, None, images, spans[:2])
    bad = spans.clone()
    bad[0, 1] = 55
    with pytest.raises(ValueError, match="do not fit"):
        model(ids, None, images, bad)


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("version, hybrid", [("x060", False), ("x052", False), ("x052", True)])
@pytest.mark.parametrize("tower", [True, False], ids=["with-tower", "without-tower"])
def test_upstream_checkpoint_round_trip(tmp_path, version, hybrid, tower):
    src = tmp_path / "upstream.pth"
    torch.save(upstream_state_dict(version, tower=tower, hybrid=hybrid), src)
    # a file without the tower: its encoder must be named (the tiny tower here; upstream's is ViT-L/14-336)
    extra = {} if tower else {"encoder": {"options": get_assembly_config("visualrwkv_tiny").config.encoder.options}}
    model = VisualRWKV.from_upstream(src, dtype=torch.float64, **extra)
    cfg = model.config
    assert cfg.lm.version == version and cfg.lm.dim == 64 and cfg.lm.num_layers == 2
    assert cfg.hybrid_layers == ((1,) if hybrid else ())
    assert cfg.scan == ("bi" if version == "x060" else "uni")
    assert model.image_tokens == N and all(not p.requires_grad for p in model.encoder.parameters())
    if tower:
        raw = torch.load(src, weights_only=True)
        got = model.encoder.visual.transformer.resblocks[0].attn.in_proj_weight
        want = torch.cat([raw[f"vit.vision_model.encoder.layers.0.self_attn.{n}_proj.weight"] for n in "qkv"])
        torch.testing.assert_close(got, want.double())
    ids, _, images, spans = _batch()
    with torch.no_grad():
        before = model(ids, None, images, spans).logits
    model.save_pretrained(tmp_path / "converted")
    again = VisualRWKV.from_pretrained(tmp_path / "converted")
    with torch.no_grad():
        after = again(ids, None, images, spans).logits
    # identical up to the last bits of fp64: MKL's results can depend on memory alignment
    torch.testing.assert_close(after, before, atol=1e-12, rtol=0)
    stored = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert stored["model"]["lm"]["version"] == version
    assert stored["data"]["prompt"] == ("sandwich" if version == "x060" else "image_first")


def test_upstream_wrong_shape_and_non_tensor_pickles_are_refused(tmp_path):
    sd = upstream_state_dict("x060", tower=True)
    sd["rwkv.blocks.1.att.key.weight"] = torch.zeros(64, 32)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"blocks\.1\.att\.key\.weight: expected \[64, 64\], got \[64, 32\]"):
        VisualRWKV.from_upstream(bad)
    sd = upstream_state_dict("x060", tower=False)
    sd["training_state"] = {"step": 3}
    odd = tmp_path / "odd.pth"
    torch.save(sd, odd)
    with pytest.raises(ValueError, match=r"only tensors; refusing entries: training_state \(dict\)"):
        VisualRWKV.from_upstream(odd)
    sd = upstream_state_dict("x060", tower=True)
    sd["vit.vision_model.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(256, 32)
    tower = tmp_path / "tower.pth"
    torch.save(sd, tower)
    with pytest.raises(
        ValueError,
        match=r"encoder\.visual\.transformer\.resblocks\.0\.mlp\.c_fc\.weight: expected \[256, 64\], got \[256, 32\]",
    ):
        VisualRWKV.from_upstream(tower)


def test_pretrained_without_encoder_weights(tmp_path):
    model = _model("visualrwkv_tiny")
    model.save_pretrained(tmp_path / "small", encoder_weights=False)
    again = VisualRWKV.from_pretrained(tmp_path / "small")
    lm_keys = [k for k in model.state_dict() if not k.startswith("encoder.")]
    assert all(torch.equal(model.state_dict()[k], again.state_dict()[k]) for k in lm_keys)
    with pytest.raises(FileNotFoundError, match="config.json"):
        VisualRWKV.from_pretrained(tmp_path / "nowhere")


def test_init_lm_starts_from_a_blinkdl_checkpoint(tmp_path):
    from tests.blinkdl import blinkdl_state_dict

    sd = blinkdl_state_dict("x060", vocab_size=257, dim=96, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    path = tmp_path / "lm.pth"
    torch.save(sd, path)
    model = create_assembly("visualrwkv_tiny", init_lm=path)
    assert model.config.lm.dim == 96 and model.proj.weight.shape == (96, 64)
    torch.testing.assert_close(model.lm.blocks[1].att.key.weight, sd["blocks.1.att.key.weight"])


def test_readme_lists_every_ablation_call():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for _, _, _, preset, overrides in ABLATIONS:
        args = "".join(f", {k}={v!r}" for k, v in overrides.items())
        assert f'`create_assembly("{preset}"{args})`' in readme, (preset, overrides)


def test_image_features_land_at_their_spans_including_cut_images():
    model = _model("visualrwkv_tiny")
    ids, _, images, spans = _batch()
    cut = spans.clone()
    cut[2, 2:] = torch.tensor([3, 9])  # image 2 keeps its tokens 3..11 only
    with torch.no_grad():
        embeds, _ = model.embed(ids, images, cut)
        feats = model.encode_images(images)
        text = model.lm.embed(ids)
    mask = torch.ones(ids.shape, dtype=torch.bool)
    for i, (b, start, first, length) in enumerate(cut.tolist()):
        torch.testing.assert_close(embeds[b, start : start + length], feats[i, first : first + length])
        mask[b, start : start + length] = False
    torch.testing.assert_close(embeds[mask], text[mask])
