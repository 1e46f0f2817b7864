"""The training recipe: paper hyper-parameters, gradient accumulation, and ``rwkvblocks train``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from assemblies import DataConfig, create_assembly
from assemblies.cli import main
from assemblies.demo import write_dataset
from assemblies.training import micro_batch_weight, recipe, train
from rwkvblocks import BatchLevelCE
from rwkvblocks.prompting import ByteTokenizer, LLaVACollator, LLaVADataset, prompt_builder
from tests.blinkdl import blinkdl_state_dict


def test_paper_recipe():
    s1, s2 = recipe("alignment"), recipe("instruction", "7b")
    d1, d2 = s1.data_for(DataConfig()), s2.data_for(DataConfig())  # the stages' data: prompt and context
    assert (s1.lr_init, s1.lr_final, s1.batch_size, d1.context_length, s1.epochs) == (1e-3, 1e-5, 256, 1024, 1.0)
    assert (s2.lr_init, s2.lr_final, s2.batch_size, d2.context_length, s2.epochs) == (4e-5, 1e-5, 128, 2048, 2.0)
    assert (d1.prompt, d2.prompt) == ("image_first", "sandwich")
    assert s2.data_for(DataConfig(prompt="image_last")).prompt == "image_last"  # stage 2 keeps the model's prompt
    assert recipe("instruction", "3b").lr_init == 5e-5 and recipe("instruction").lr_final == 1.5e-5
    assert s1.betas == (0.9, 0.99) and s1.eps == 1e-8 and s1.weight_decay == 0 and s1.grad_clip == 1.0
    with pytest.raises(ValueError, match="stage"):
        recipe("pretraining")


def _batches(tmp_path, micro, preset="visualrwkv_tiny"):
    align, _, _ = write_dataset(tmp_path, 8, seed=0)
    model = create_assembly(preset, dtype=torch.float64)
    data = LLaVADataset(
        align,
        tmp_path / "images",
        prompt_builder("image_first", ByteTokenizer()),
        image_transform=model.encoder.transform.per_image,
    )
    collate = LLaVACollator(model.image_tokens)
    items = [data[i] for i in range(4)]
    return [collate(items[i : i + micro]) for i in range(0, 4, micro)]


@pytest.mark.parametrize(
    "preset, overrides",
    [("visualrwkv_tiny", {}), ("visualrwkv_base_tiny", {}), ("visualrwkv7_tiny", {"l2wrap": False})],
    ids=["sample-level", "batch-level", "visualrwkv7"],
)
def test_gradient_accumulation_equals_one_big_batch(tmp_path, preset, overrides):
    """Sample-level loss: micro-batches weighted by samples; batch-level loss: by valid tokens. (L2Wrap, on in
    the VisualRWKV-7 presets as upstream, scales its gradient by each micro-batch's own size, as upstream's does:
    it is switched off here to compare exactly.)"""
    tokens = [micro_batch_weight(BatchLevelCE(), b) for b in _batches(tmp_path, 1, preset)]
    assert len(set(tokens)) > 1  # samples of different lengths: weighting by samples would be wrong here
    results = []
    for micro in (1, 2, 4):
        torch.manual_seed(0)
        model = create_assembly(preset, dtype=torch.float64, **overrides)
        plan = recipe("instruction", batch_size=4, micro_batch_size=micro, lr_init=1e-2, lr_final=1e-2)
        assert plan.data_for(model.data_config).prompt == model.data_config.prompt  # stage 2: the model's own
        losses = train(model, _batches(tmp_path, micro, preset), plan, steps=1, progress=False)
        results.append((losses[0], {k: v.clone() for k, v in model.state_dict().items()}))
    for loss, state in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        for key, value in state.items():
            torch.testing.assert_close(value, results[0][1][key], atol=1e-12, rtol=0, msg=key)


def test_train_command_runs_both_stages(tmp_path, capsys):
    align, instruct, _ = write_dataset(tmp_path / "data", 24, seed=1)
    lm = tmp_path / "lm.pth"
    sd = blinkdl_state_dict("x060", vocab_size=257, dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    torch.save(sd, lm)
    common = [
        "--images",
        str(tmp_path / "data" / "images"),
        "--tokenizer",
        "byte",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
    ]
    stage1 = tmp_path / "stage1"
    assert (
        main(
            [
                "train",
                "--preset",
                "visualrwkv_tiny",
                "--init-lm",
                str(lm),
                "--stage",
                "alignment",
                "--data",
                str(align),
                "--out",
                str(stage1),
                *common,
            ]
        )
        == 0
    )
    log = json.loads((stage1 / "train_alignment.json").read_text())
    assert len(log["losses"]) == 2 and log["data"]["prompt"] == "image_first" and log["data"]["tokenizer"] == "byte"
    saved = load_file(stage1 / "model.safetensors")
    torch.testing.assert_close(saved["lm.blocks.1.att.key.weight"], sd["blocks.1.att.key.weight"])  # LM frozen
    stage2 = tmp_path / "stage2"
    assert (
        main(
            [
                "train",
                "--init",
                str(stage1),
                "--stage",
                "instruction",
                "--data",
                str(instruct),
                "--out",
                str(stage2),
                *common,
            ]
        )
        == 0
    )
    log = json.loads((stage2 / "train_instruction.json").read_text())
    assert log["data"]["prompt"] == "sandwich" and log["skipped"].startswith("skipped 0")
    after = load_file(stage2 / "model.safetensors")
    assert not torch.equal(after["lm.blocks.1.att.key.weight"], saved["lm.blocks.1.att.key.weight"])
    assert torch.equal(after["lm.emb.weight"], saved["lm.emb.weight"])  # the embedding stays frozen
    assert "loss" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["visualrwkv_tiny", "visualrwkv7_tiny"])
def test_packed_training_equals_padded_training(tmp_path, preset):
    """``data_loader(pack=True)``: each micro-batch's samples in rows with ``cu_seqlens``; the same losses and
    weights as the padded batches (sample-level loss, L2Wrap off: its factor depends on the batch shape)."""
    from assemblies.training import data_loader, make_dataset

    align, _, _ = write_dataset(tmp_path, 8, seed=0)
    results = []
    for pack in (False, True):
        torch.manual_seed(0)
        model = create_assembly(preset, dtype=torch.float64, l2wrap=False)
        data = model.data_config
        dataset = make_dataset(
            data, align, tmp_path / "images", image_transform=model.encoder.transform.per_image, vocab_size=257
        )
        loader = data_loader(dataset, data, image_tokens=model.image_tokens, batch_size=2, shuffle=False, pack=pack)
        if pack:
            assert all("cu_seqlens" in row for item in loader for row in item)
        plan = recipe("instruction", batch_size=4, micro_batch_size=2, lr_init=1e-2, lr_final=1e-2)
        losses = train(model, loader, plan, steps=2, progress=False)
        results.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (padded, padded_state), (packed, packed_state) = results
    assert packed == pytest.approx(padded, rel=1e-10)
    for key, value in padded_state.items():
        torch.testing.assert_close(packed_state[key], value, atol=1e-10, rtol=0, msg=key)
