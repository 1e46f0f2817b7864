"""Training checkpoints: atomic, pruned to the last K, and a resumed run bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from assemblies import create_assembly
from assemblies.cli import main
from assemblies.demo import write_dataset
from assemblies.training import latest_checkpoint, load_checkpoint, recipe, train
from rwkvblocks.prompting import ByteTokenizer, LLaVACollator, LLaVADataset, prompt_builder


def _setup(data_dir):
    """A fresh model (seeded) and 4 micro-batches of 2 in a fixed order."""
    _, instruct, _ = write_dataset(data_dir, 8, seed=0)
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_tiny")
    builder = prompt_builder(model.data_config.prompt, ByteTokenizer())
    data = LLaVADataset(instruct, data_dir / "images", builder, image_transform=model.encoder.transform.per_image)
    collate = LLaVACollator(model.image_tokens)
    items = [data[i] for i in range(8)]
    return model, [collate(items[i : i + 2]) for i in range(0, 8, 2)]


PLAN = recipe("instruction", batch_size=4, micro_batch_size=2, lr_init=1e-3, lr_final=1e-5)


def test_resume_is_bitwise_equal(tmp_path):
    model, batches = _setup(tmp_path / "data")
    full = train(model, batches, PLAN, steps=5, progress=False)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    ckpts = tmp_path / "ckpt"
    model, batches = _setup(tmp_path / "data")
    first = train(model, batches, PLAN, steps=5, stop_at=3, checkpoint_dir=ckpts, checkpoint_every=1, keep=2)
    assert first == full[:3]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000003"]  # the last 2, no partials
    saved = load_checkpoint(latest_checkpoint(ckpts))
    assert (saved.step, saved.consumed) == (3, 6) and saved.meta["precision"] == "fp32"

    torch.manual_seed(123)  # a resumed process starts from other RNG states: the checkpoint's are restored
    model, batches = _setup(tmp_path / "data")
    rest = train(model, batches, PLAN, steps=5, checkpoint_dir=ckpts, resume=True, progress=False)
    assert rest == full
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert latest_checkpoint(ckpts).name == "step-00000005"


def test_resume_refuses_another_run(tmp_path):
    model, batches = _setup(tmp_path / "data")
    train(model, batches, PLAN, steps=5, stop_at=1, checkpoint_dir=tmp_path / "ckpt", progress=False)
    with pytest.raises(ValueError, match="its steps is 5"):
        train(model, batches, PLAN, steps=6, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    with pytest.raises(ValueError, match="its recipe"):
        train(model, batches, PLAN.replace(lr_init=1.0), steps=5, checkpoint_dir=tmp_path / "ckpt", resume=True)


def test_a_failed_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    import assemblies.training.checkpoint as ckpt_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", broken)
    model, batches = _setup(tmp_path / "data")
    with pytest.raises(OSError, match="disk full"):
        train(model, batches, PLAN, steps=1, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert list((tmp_path / "ckpt").iterdir()) == []


def _cli(tmp_path, out, *extra):
    align, _, _ = write_dataset(tmp_path / "data", 16, seed=1)
    return [
        "train", "--preset", "visualrwkv_tiny", "--stage", "alignment", "--data", str(align),
        "--images", str(tmp_path / "data" / "images"), "--tokenizer", "byte", "--steps", "4",
        "--batch-size", "4", "--micro-batch-size", "2", "--out", str(out), *extra,
    ]  # fmt: skip


def test_train_command_resumes_exactly(tmp_path):
    assert main(_cli(tmp_path, tmp_path / "full")) == 0
    # a first run that stopped after 2 of 4 steps: its checkpoint, as --checkpoint-every 2 would have left it
    assert main(_cli(tmp_path, tmp_path / "part", "--checkpoint-every", "2")) == 0
    ckpts = tmp_path / "part" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000004"]
    (tmp_path / "part" / "model.safetensors").unlink()
    for p in ckpts.glob("step-00000004"):
        import shutil

        shutil.rmtree(p)
    assert main(_cli(tmp_path, tmp_path / "part", "--resume")) == 0
    from safetensors.torch import load_file

    full, part = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    logs = [json.loads((tmp_path / d / "train_alignment.json").read_text())["losses"] for d in ("full", "part")]
    assert logs[0] == logs[1] and len(logs[0]) == 4


_CHILD = """
import sys, time
from pathlib import Path
from assemblies.training import TrainingInterrupted, train
from tests.assemblies.test_train_resume import PLAN, _setup

class Slow:  # time for the signal to arrive mid-run
    def __init__(self, batches):
        self.batches = batches
    def __iter__(self):
        for b in self.batches:
            time.sleep(0.3)
            yield b

tmp = Path(sys.argv[1])
model, batches = _setup(tmp / "data")
try:
    train(model, Slow(batches), PLAN, steps=8, checkpoint_dir=tmp / "ckpt", checkpoint_every=1, progress=False)
except TrainingInterrupted as err:
    print("interrupted", err.checkpoint, flush=True)
    sys.exit(3)
sys.exit(0)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_and_resume_is_exact(tmp_path, signum):
    model, batches = _setup(tmp_path / "data")
    full = train(model, batches, PLAN, steps=8, progress=False)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], cwd=os.getcwd(), stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ckpt" / "step-00000001").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signum)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 3 and "interrupted" in out, out
    stopped = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert 1 <= stopped.step < 8 and stopped.losses == full[: stopped.step]

    model, batches = _setup(tmp_path / "data")
    assert train(model, batches, PLAN, steps=8, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False) == full
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
