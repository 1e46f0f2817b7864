"""``rwkvblocks train --strategy ddp|fsdp2`` under torchrun (2 ranks, gloo on the CPU): rank 0 alone saves, and the
saved model equals one process's run over the same global batch (twice the gradient accumulation)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assemblies.cli import main
from assemblies.demo import write_dataset
from assemblies.models import VisualRWKV, create_assembly

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(data_dir: Path, instruct: Path, out: Path) -> list[str]:
    # a global batch of 4 micro-batches of 1: 2 per rank on 2 ranks, 4 accumulated in one process
    return [
        "train", "--preset", "visualrwkv_tiny", "--tokenizer", "byte", "--stage", "instruction",
        "--data", str(instruct), "--images", str(data_dir / "images"), "--out", str(out),
        "--steps", "2", "--batch-size", "4", "--micro-batch-size", "1", "--lr-init", "1e-3", "--lr-final", "1e-4",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, the whole global batch accumulated: its saved directory."""
    data_dir = tmp_path_factory.mktemp("data")
    _, instruct, _ = write_dataset(data_dir, 8, seed=0)
    out = tmp_path_factory.mktemp("ref") / "model"
    assert main(_flags(data_dir, instruct, out)) == 0
    return data_dir, instruct, out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_save_what_one_process_does(tmp_path, reference, strategy):
    data_dir, instruct, ref = reference
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    command += [str(_free_port()), "-m", "assemblies.cli", *_flags(data_dir, instruct, out), "--strategy", strategy]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    assert run.stdout.count("saved to") == 1  # rank 0 alone saves (and reports)
    log, expected = (json.loads((d / "train_instruction.json").read_text()) for d in (out, ref))
    assert len(log["losses"]) == 2
    assert max(abs(a - b) for a, b in zip(log["losses"], expected["losses"])) < 1e-5
    VisualRWKV.from_pretrained(out)  # loads
    saved, ref_weights = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert set(saved) == set(ref_weights)
    for name, value in saved.items():
        torch.testing.assert_close(value, ref_weights[name], rtol=0, atol=1e-5, msg=name)
    torch.manual_seed(0)  # the CLI's initialisation (seed 0): training moved the weights away from it
    init = create_assembly("visualrwkv_tiny", tokenizer="byte").state_dict()
    assert any(not torch.equal(value, init[name]) for name, value in saved.items())


def test_strategy_needs_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = _flags(tmp_path, tmp_path / "missing.json", tmp_path / "out") + ["--strategy", "ddp"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("rwkvblocks train: error: --strategy ddp") and "torchrun" in err
    assert not (tmp_path / "out").exists()
