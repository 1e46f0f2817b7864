"""``rwkvblocks demo --task shapes``: the pipeline end to end at a toy size, and its pass/fail contract.

At this size (a few optimiser steps) the model cannot have learned to read the image, so the run must report
the same accuracy with and without the image and exit 1; what the full-size run reaches is in the README.
"""

import json

import pytest

from assemblies.cli import main
from assemblies.demo.shapes import CHANCE, _score


def test_shapes_demo_runs_end_to_end_and_fails_when_training_is_cut(tmp_path, capsys):
    args = ["demo", "--task", "shapes", "--types", "colour_at,above", "--steps", "2", "--n-train", "40"]
    assert main([*args, "--dim", "32", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| colour_at |" in out and "| above |" in out and "below the pass mark of 90%" in out
    assert "fresh image" in out and "truth:" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["scores"]) == {"colour_at", "above", "all"} and summary["chance"]["colour_at"] == 0.2
    assert len(summary["losses"]["stage 2 (questions)"]) == 2 and summary["fresh"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp.png"))  # the report is written whole, then renamed


def test_scores_per_type_and_overall():
    qs = [{"type": "count", "answer": "2"}, {"type": "count", "answer": "0"}, {"type": "exists", "answer": "yes"}]
    assert _score(qs, ["2", "1", "Yes"]) == {"count": 0.5, "exists": 1.0, "all": pytest.approx(2 / 3)}
    assert set(CHANCE) == {"colour_at", "shape_of", "count", "exists", "left_of", "above"}
