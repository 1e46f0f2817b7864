"""The benchmark scripts run end to end (tiny shapes; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_wkv_benchmark_runs_and_writes_table(tmp_path, capsys):
    bench = _load("wkv")
    bench.main(["--shape", "tiny=1,40,2,16", "--repeats", "1", "--no-memory", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| tiny | chunked |" in out and "| tiny | reference |" in out
    written = list(tmp_path.glob("wkv-cpu-fp32.md"))
    assert written and "| tiny | chunked |" in written[0].read_text()


def test_wkv_benchmark_memory_probe(capsys):
    bench = _load("wkv")
    bench.memory_table(["chunked"], "fp32", [64])
    assert "MiB" in capsys.readouterr().out


def test_lm_benchmark_runs_against_the_reference(tmp_path, capsys):
    bench = _load("lm")
    results = bench.main(
        [
            "--layers",
            "1",
            "--dim",
            "64",
            "--vocab",
            "100",
            "--T",
            "12",
            "--decode-tokens",
            "2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "| rwkvblocks |" in out and "| rwkv 0.8.32 |" in out
    assert results["max_abs_diff"] < 1e-4  # both sides ran the same checkpoint
    assert "| rwkv 0.8.32 |" in (tmp_path / "lm-cpu-fp32.md").read_text()


def test_losses_benchmark_measures_both_implementations(tmp_path, capsys):
    bench = _load("losses")
    rows = bench.main(["--B", "1", "--T", "16", "--V", "64", "--out", str(tmp_path)])
    assert any("rwkvblocks SampleLevelCE" in r for r in rows) and any("plain F.cross_entropy" in r for r in rows)
    assert "MiB" in (tmp_path / "losses-cpu-bf16.md").read_text()
