"""Stage config files (``training/config.py``), the optimiser and schedule a recipe builds, ``train --config``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from assemblies.cli import main
from assemblies.demo import write_dataset
from assemblies.training import recipe
from assemblies.training.config import CONFIG_DIR, load_stage_config, shipped_configs
from assemblies.training.recipes import TrainRecipe, build_optimizer, build_scheduler
from rwkvblocks.errors import ConfigError


@pytest.mark.parametrize("name", [n for n in shipped_configs() if "tiny" not in n])
def test_the_shipped_paper_configs_are_the_recipe(name):
    config = load_stage_config(name)
    stage, size = config.values["train.stage"], config.values["train.size"]
    assert config.recipe().to_dict() == recipe(stage, size).to_dict()  # every number, and the data changes
    assert config.values["data.context_length"] == recipe(stage, size).data_changes["context_length"]
    if stage == "instruction":
        assert Path(config.values["model.init"]) == CONFIG_DIR / "stage1"  # relative to the file


def test_every_shipped_config_loads():
    names = shipped_configs()
    assert {f"visualrwkv_{s}_stage{i}" for s in ("1b6", "3b", "7b", "tiny") for i in (1, 2)} <= set(names)
    for name in names:
        load_stage_config(name).recipe()


def test_set_overrides_with_type_checking():
    config = load_stage_config("visualrwkv_1b6_stage2", ["train.lr_init=2e-5", "train.betas=[0.9, 0.95]"])
    assert config.recipe().lr_init == 2e-5 and config.recipe().betas == (0.9, 0.95)
    with pytest.raises(ConfigError, match=r"visualrwkv_1b6_stage2\.toml.*train\.lr_init must be a number"):
        load_stage_config("visualrwkv_1b6_stage2", ["train.lr_init=fast"])
    with pytest.raises(ConfigError, match=r"train\.nope is not a field of \[train\]"):
        load_stage_config("visualrwkv_1b6_stage2", ["train.nope=1"])


@pytest.mark.parametrize(
    "text, field, problem",
    [
        ("[train]\nbatch_size = 2.5\n", "train.batch_size", "must be an int >= 1"),
        ("[train]\nsteps = 0\n", "train.steps", "must be an int >= 1"),
        ("[train]\nactivation_checkpointing = 1\n", "train.activation_checkpointing", "must be true or false"),
        ("[train]\nstage = 'pretrain'\n", "train.stage", "must be one of"),
        ("[data]\njson = 3\n", "data.json", "must be a path"),
        ("[model]\ncolour = 'red'\n", "model.colour", "is not a field"),
        ("[optimizer]\nlr = 1\n", "optimizer", "is not a section"),
    ],
)
def test_a_bad_field_names_the_file_and_the_field(tmp_path, text, field, problem):
    path = tmp_path / "stage.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_stage_config(path)
    assert err.value.source == str(path) and err.value.field == field and problem in err.value.problem


def test_the_scheduler_without_warmup_is_cosine_annealing_exactly():
    plan = recipe("instruction", "3b")
    runs = []
    for make in (
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=17, eta_min=plan.lr_final),
        lambda opt: build_scheduler(plan, opt, 17),
    ):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=plan.lr_init)
        sched, lrs = make(opt), []
        for _ in range(17):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        runs.append((lrs, sched.state_dict()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]


def test_the_scheduler_warms_up_then_decays():
    plan = TrainRecipe(lr_init=1.0, lr_final=0.1, warmup_steps=4)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=plan.lr_init)
    sched, lrs = build_scheduler(plan, opt, 10), []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[10] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="fewer than"):
        build_scheduler(plan, opt, 4)


def test_weight_decay_goes_to_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    mix = torch.nn.Parameter(torch.zeros(1, 1, 4))  # an RWKV mixing vector stored 3-D
    named = [*model.named_parameters(), ("time_maa_x", mix)]
    opt = build_optimizer(TrainRecipe(weight_decay=0.1), named)
    groups = {g["weight_decay"]: g["names"] for g in opt.param_groups}
    assert groups == {0.1: ["0.weight"], 0.0: ["0.bias", "1.weight", "1.bias", "time_maa_x"]}
    opt = build_optimizer(TrainRecipe(weight_decay=0.1, decay_matrices_only=False), named)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1] and len(opt.param_groups[0]["params"]) == 5


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="micro_batch_size 3 does not divide batch_size 8"):
        recipe("alignment", batch_size=8, micro_batch_size=3)


def test_train_config_runs_both_tiny_stages(tmp_path, capsys):
    write_dataset(tmp_path / "data", 8, seed=1)
    for i in (1, 2):
        shutil.copy(CONFIG_DIR / f"visualrwkv_tiny_stage{i}.toml", tmp_path)
    assert main(["train", "--config", str(tmp_path / "visualrwkv_tiny_stage1.toml"), "--steps", "2"]) == 0
    log = json.loads((tmp_path / "stage1" / "train_alignment.json").read_text())
    assert len(log["losses"]) == 2  # the explicit flag won over train.steps = 3
    assert log["recipe"]["warmup_steps"] == 1 and log["data"]["tokenizer"] == "byte"
    argv = ["train", "--config", str(tmp_path / "visualrwkv_tiny_stage2.toml"), "--set", "train.steps=1"]
    assert main(argv) == 0
    log = json.loads((tmp_path / "stage2" / "train_instruction.json").read_text())
    assert len(log["losses"]) == 1 and log["recipe"]["weight_decay"] == 0.01 and log["data"]["prompt"] == "sandwich"
    assert "loss" in capsys.readouterr().out


def test_encoder_checkpoint_is_loaded_and_not_recorded(tmp_path):
    from assemblies.models import create_assembly

    write_dataset(tmp_path / "data", 4, seed=2)
    shutil.copy(CONFIG_DIR / "visualrwkv_tiny_stage1.toml", tmp_path)
    torch.manual_seed(5)
    encoder = create_assembly("visualrwkv_tiny").encoder
    weights = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), weights)
    argv = ["train", "--config", str(tmp_path / "visualrwkv_tiny_stage1.toml"), "--set", "train.steps=2"]
    try:
        code = main([*argv, "--encoder-checkpoint", str(weights)])
    except (TypeError, ValueError) as err:  # an encoder that cannot read this kind of file
        pytest.skip(f"the tiny encoder does not load {weights.name}: {err}")
    assert code == 0
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "stage1" / "model.safetensors")
    for key, value in encoder.state_dict().items():  # the frozen encoder: the file's weights
        torch.testing.assert_close(saved[f"encoder.{key}"], value, msg=key)
    assert str(tmp_path) not in (tmp_path / "stage1" / "config.json").read_text()
