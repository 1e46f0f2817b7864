"""Distributed training (``train(strategy=...)``) under torchrun with gloo on the CPU: DDP and FSDP2 over 2 ranks give
one process's loss curve with twice the gradient accumulation, checkpoints of whole weights, and an exact resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from assemblies import create_assembly
from assemblies.demo import write_dataset
from assemblies.training import latest_checkpoint, load_checkpoint, recipe, train
from rwkvblocks.prompting import ByteTokenizer, LLaVACollator, LLaVADataset, prompt_builder

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_ddp_worker.py")
# a global batch of 4 micro-batches of 1: 2 per rank on 2 ranks, 4 in one process
PLAN = recipe("instruction", batch_size=4, micro_batch_size=1, lr_init=1e-3, lr_final=1e-5)
STEPS = 3


def setup(data_dir: Path):
    """A fresh fp32 model (seeded, the same on every rank) and 8 micro-batches of 1 in a fixed order."""
    _, instruct, _ = write_dataset(data_dir, 8, seed=0)
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_tiny")
    builder = prompt_builder(model.data_config.prompt, ByteTokenizer())
    data = LLaVADataset(instruct, data_dir / "images", builder, image_transform=model.encoder.transform.per_image)
    collate = LLaVACollator(model.image_tokens)
    return model, [collate([data[i]]) for i in range(8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(strategy: str, data_dir: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    command += [str(_free_port()), str(WORKER), strategy, str(data_dir), str(out)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, the whole global batch accumulated: its losses and its final checkpoint."""
    data_dir = tmp_path_factory.mktemp("data")
    model, batches = setup(data_dir)
    ckpts = tmp_path_factory.mktemp("ref")
    losses = train(model, batches, PLAN, steps=STEPS, progress=False, checkpoint_dir=ckpts)
    return data_dir, losses, load_checkpoint(latest_checkpoint(ckpts))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_equal_one_process(tmp_path, reference, strategy):
    data_dir, expected, ref_ckpt = reference
    result = _torchrun(strategy, data_dir, tmp_path)
    assert result["world_size"] == 2
    full = result["full"]
    assert len(full) == STEPS
    diff = max(abs(a - b) for a, b in zip(full, expected))
    print(f"{strategy}: losses {full} vs one process {expected}: max difference {diff:.3g}")
    assert diff < 1e-5
    # rank 0's checkpoint: whole trainable weights (gathered under FSDP2), close to one process's
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    assert ckpt.step == STEPS and ckpt.consumed == STEPS * 4 and ckpt.meta["trainable"] == ref_ckpt.meta["trainable"]
    assert len(ckpt.state["rng_ranks"]) == 2
    assert set(ckpt.weights) == set(ref_ckpt.weights)
    for name, value in ckpt.weights.items():
        assert value.shape == ref_ckpt.weights[name].shape, name
        torch.testing.assert_close(value, ref_ckpt.weights[name], atol=1e-4, rtol=0, msg=name)
    # stopped after step 2, resumed: the uninterrupted run's losses, bitwise
    assert result["first"] == full[:2]
    assert result["resumed"] == full
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    for name, value in resumed.weights.items():
        assert torch.equal(value, ckpt.weights[name]), name


def test_strategy_without_a_process_group_is_refused(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    model, batches = setup(tmp_path)
    with pytest.raises(ValueError, match="torchrun"):
        train(model, batches, PLAN, steps=1, progress=False, strategy="ddp")
    with pytest.raises(ValueError, match="strategy must be one of"):
        train(model, batches, PLAN, steps=1, progress=False, strategy="deepspeed")
