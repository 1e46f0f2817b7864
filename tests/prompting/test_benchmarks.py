"""The tokenizer and dataset benchmarks run end to end on tiny inputs (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tokenizer_benchmark_runs_and_writes_table(tmp_path, capsys, reference_tokenizer):
    _load("tokenizer").main(["--mb", "0.02", "--repeats", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| one string | rwkvblocks WorldTokenizer" in out and "| one string | rwkv 0.8.32 TRIE_TOKENIZER" in out
    assert "| one string |" in (tmp_path / "tokenizer-cpu.md").read_text()


def test_dataset_benchmark_runs_and_writes_table(tmp_path, capsys):
    _load("dataset").main(["--entries", "300", "--samples", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| open: `LLaVADataset(...)` |" in out and "MiB" in out
    assert "| DataLoader, 2 workers" in (tmp_path / "dataset-cpu.md").read_text()
