"""The benchmark scripts run end to end (tiny shapes; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_wkv7_benchmark_rows(tmp_path, capsys):
    bench = _load("wkv")
    bench.main(["--op", "wkv7", "--shape", "tiny=1,40,2,16", "--repeats", "1", "--no-memory", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "# WKV7 backends" in out and "| tiny | chunked |" in out and "| tiny | reference |" in out
    assert "| tiny | chunked |" in (tmp_path / "wkv7-cpu-fp32.md").read_text()
    bench.memory_table(["chunked"], "fp32", [64], op="wkv7")
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
            "--no-compile",  # compiled decoding has its own test (tests/generation)
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "| rwkvblocks |" in out and "| rwkv 0.8.32 |" in out
    assert results["max_abs_diff"] < 1e-4  # both sides ran the same checkpoint
    assert "| rwkv 0.8.32 |" in (tmp_path / "lm-cpu-fp32.md").read_text()


def test_lm_benchmark_x070_runs_against_the_reference_in_its_own_process(tmp_path):
    """x070: the package must be imported with RWKV_V7_ON=1, so the run is a child process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lm.py"), "--version", "x070", "--layers", "1", "--dim", "64"]
    cmd += ["--vocab", "100", "--T", "12", "--decode-tokens", "2", "--repeats", "1", "--no-compile"]
    run = subprocess.run(cmd + ["--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "lm-cpu-fp32.md").read_text()
    assert "x070, 1 layers" in table and "| rwkvblocks |" in table and "| rwkv 0.8.32 |" in table
    diff = float(run.stdout.split("max |diff| = ")[1].split(".\n")[0].rstrip("."))
    assert diff < 1e-4  # both sides ran the same RWKV-7 checkpoint


def test_lm_benchmark_refuses_a_package_in_the_other_mode(monkeypatch):
    bench = _load("lm")
    monkeypatch.setenv("RWKV_V7_ON", "1")
    with pytest.raises(SystemExit, match="unset RWKV_V7_ON"):
        bench._reference_class("x060")


def test_losses_benchmark_measures_both_implementations(tmp_path, capsys):
    bench = _load("losses")
    rows = bench.main(["--B", "1", "--T", "16", "--V", "64", "--out", str(tmp_path)])
    assert any("rwkvblocks SampleLevelCE" in r for r in rows) and any("plain F.cross_entropy" in r for r in rows)
    assert "MiB" in (tmp_path / "losses-cpu-bf16.md").read_text()


def test_inference_benchmark_quick_run_writes_table_and_plot(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "inference.py"),
        "--quick",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "inference-cpu-fp32.md").read_text()
    assert "| ours ms/token (IQR) | transformer ms/token (IQR) |" in table
    for context in (16, 32):  # one row per context, a latency for each model
        row = next(line for line in table.splitlines() if line.startswith(f"| {context} | "))
        ours, theirs = (float(cell.split()[0]) for cell in row.split("|")[2:4])
        assert ours > 0 and theirs > 0
    assert "ours decode per token: 32 / 16 =" in table and "transformer decode per token: 32 / 16 =" in table
    assert (tmp_path / "inference-cpu-fp32.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically

    # the 1.6B GPU plan, on meta (no device needed): both models 1.6B-sized, contexts to 24,576
    plan = _load("inference").main(["--preset", "1b6", "--device", "cuda", "--dtype", "bf16", "--dry-run"])
    ours, theirs = plan["info"]["ours_params"], plan["info"]["llama_params"]
    assert 1.55e9 < ours < 1.65e9 and abs(theirs - ours) / ours < 0.01
    assert max(plan["plan"].contexts) == 24576
    cfg = plan["llama_config"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (2048, 24, 65536)


def test_serve_benchmark_runs_clients_against_the_server(tmp_path, capsys):
    bench = _load("serve")
    args = ["--dim", "64", "--layers", "1", "--clients", "1,2", "--requests", "1", "--max-tokens", "3"]
    lines = bench.main([*args, "--out", str(tmp_path)])
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all(int(row.split("|")[3]) == 3 * int(row.split("|")[2]) for row in rows)
    assert "TTFT median ms" in (tmp_path / "serve-cpu.md").read_text()
