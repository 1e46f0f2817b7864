"""The ``rwkvblocks`` command: convert, list, info, and a short run of the demo."""

from __future__ import annotations

import torch

from assemblies import VisualRWKV
from assemblies.cli import main
from tests.assemblies.upstream import upstream_state_dict


def test_convert_upstream_to_a_pretrained_directory(tmp_path, capsys):
    src = tmp_path / "visualrwkv.pth"
    torch.save(upstream_state_dict("x060", tower=True), src)
    assert main(["convert", str(src), str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "x060, 2 layers, C=64" in out and "model.safetensors" in out
    model = VisualRWKV.from_pretrained(tmp_path / "out")
    assert model.lm.emb.weight.dtype == torch.bfloat16
    assert model.encoder.visual.conv1.weight.dtype == torch.bfloat16


def test_convert_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_list_and_info(capsys):
    assert main(["list", "*tiny", "--params"]) == 0
    out = capsys.readouterr().out
    assert "visualrwkv_hybrid_tiny" in out and "x052" in out and "visualrwkv_1b6" not in out
    assert main(["list", "nothing*"]) == 1
    assert main(["info"]) == 0
    assert "wkv6" in capsys.readouterr().out


def test_demo_runs_end_to_end_and_fails_below_the_pass_mark(tmp_path, capsys):
    record = tmp_path / "demo.md"
    # 3 steps cannot learn the colours: the run completes, and exits 1 because accuracy is below the mark
    assert main(["demo", "--steps", "3", "--out", str(tmp_path), "--record", str(record)]) == 1
    out = capsys.readouterr().out
    assert "| stage instruction |" in out and "same answers" in out and "below the pass mark of 30" in out
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert "correct colours" in record.read_text()
