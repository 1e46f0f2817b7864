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
    # the tower the preset really builds (not the open_clip name its overrides shrink), and its size in millions
    row = next(line.split() for line in out.splitlines() if line.startswith("visualrwkv_hybrid_tiny "))
    assert "ViT-L-14-336" not in out and row[6:9] == ["ViT", "2x64/14@56", "first"]
    total, lm, encoder = map(float, row[-3:])
    assert 0.1 < total < 1 and abs(total - lm - encoder) < 0.01  # the projector: about 4k parameters
    assert main(["list", "nothing*"]) == 1
    assert main(["info"]) == 0
    assert "wkv6" in capsys.readouterr().out


def test_list_describes_every_preset_from_its_config(capsys):
    assert main(["list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "ViT-L-14-336" in rows["visualrwkv_1b6_clipl336"] and "ViT 2x64/14@56" in rows["visualrwkv_tiny"]
    assert "dino L/14@448+siglip so400m/14@448+sam B/16" in rows["visualrwkv7_0b1_dinosiglipsam"]
    assert "dino 3x64/14@56+siglip 3x64/14@56+sam 2x64/16@128" in rows["visualrwkv7_tiny"]


def test_demo_runs_end_to_end_and_fails_below_the_pass_mark(tmp_path, capsys):
    record = tmp_path / "demo.md"
    # 3 steps cannot learn the colours: the run completes, and exits 1 because accuracy is below the mark
    assert main(["demo", "--steps", "3", "--out", str(tmp_path), "--record", str(record)]) == 1
    out = capsys.readouterr().out
    assert "| stage instruction |" in out and "same answers" in out and "below the pass mark of 30" in out
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert "correct colours" in record.read_text()
