"""Every metric: the same result in one update, in two, one row at a time, after reset, and over two processes."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.metrics.cases import CASES, take

ROOT = Path(__file__).resolve().parents[2]


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_updates_give_the_same_result(name):
    cls, inputs = CASES[name]
    n = len(inputs["predictions"])
    whole = cls()
    whole.update(**inputs)
    expected = whole.compute()
    assert all(isinstance(v, float) for v in expected.values())

    for cut in (1, n // 2, n - 1):
        parts = cls()
        parts.update(**take(inputs, range(cut)))
        parts.update(**take(inputs, range(cut, n)))
        assert _same(parts.compute(), expected), cut

    rows = cls()
    for i in range(n):
        rows.update(**take(inputs, [i]))
    rows.update(**take(inputs, []))
    assert _same(rows.compute(), expected)

    whole.reset()
    whole.update(**inputs)
    assert _same(whole.compute(), expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_second_batch_changes_the_result(name):
    """The invariance test above would pass for a metric that ignores its later updates; this one would not."""
    cls, inputs = CASES[name]
    n = len(inputs["predictions"])
    first = cls()
    first.update(**take(inputs, range(n // 2)))
    both = cls()
    both.update(**take(inputs, range(n // 2)))
    both.update(**take(inputs, range(n // 2, n)))
    assert not _same(first.compute(), both.compute())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 17-23 s on two busy cores: three processes import torch
def test_two_processes_sync_to_the_single_process_result():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(Path(__file__).with_name("dist_worker.py")),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rank 0: OK" in out.stdout and "rank 1: OK" in out.stdout, out.stdout + out.stderr
