"""The PyPI ``rwkv`` package (pinned 0.8.32) in RWKV-7 mode as an oracle, run in a child process.

``RWKV_V7_ON=1`` must be set before ``rwkv`` is imported, and a process that did so loads no RWKV-5/6
model (``rwkv.model.RWKV`` is then the x070 class); the x052/x060 parity tests import the package
in-process (``tests/rwkv_reference.py``), so the x070 reference always runs here, in a subprocess:
``run_reference7(jobs)`` writes the jobs to a file, runs this module as a script and reads the results.

What the package wants in x070 mode (DESIGN.md §15): the model path without ``.pth`` (it appends it),
strategy ``'cpu fp32'`` (no ``verbose`` argument), one sequence (batch 1). It folds ``ln0`` into ``emb``
at load time, ignores ``blocks.0.att.v0/v1/v2``, and its state is a flat list
``[att_shift [C], wkv [H, V, K] fp32, ffn_shift [C]] * L``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def reference_available() -> bool:
    """Whether the ``rwkv`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("rwkv") is not None


def run_reference7(jobs: list[tuple[Path, list[int]]], *, timeout: float = 600) -> list[dict]:
    """For each ``(checkpoint.pth, tokens)``: the package's logits and states, parallel and token by token.

    Returns one dict per job: ``parallel`` and ``recurrent``, each ``(logits [T, V], states)`` with
    ``states`` the package's flat per-layer list ``[att_shift, wkv, ffn_shift] * L``.

    Raises:
        RuntimeError: the child process failed (its output is in the message).
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "jobs.pt", Path(tmp) / "results.pt"
        torch.save([(str(path), list(tokens)) for path, tokens in jobs], spec)
        env = {**os.environ, "RWKV_V7_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_JIT_ON": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), str(spec), str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if run.returncode != 0:
            raise RuntimeError(
                f"rwkv x070 reference failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
            )
        return torch.load(out, weights_only=True)


def _run_jobs(spec: str, out: str) -> None:
    if os.environ.get("RWKV_V7_ON") != "1":
        raise SystemExit("set RWKV_V7_ON=1 before importing rwkv (run_reference7 does)")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices
    from rwkv.model import RWKV

    results = []
    for path, tokens in torch.load(spec, weights_only=True):
        if not path.endswith(".pth"):
            raise SystemExit(f"{path}: the package appends '.pth' itself; pass a .pth file")
        model = RWKV(path[: -len(".pth")], "cpu fp32")
        logits, state = model.forward(list(tokens), None, full_output=True)
        parallel = (logits.clone(), [s.clone() for s in state])
        rows, state = [], None
        for token in tokens:
            row, state = model.forward([token], state)
            rows.append(row.clone())
        results.append({"parallel": parallel, "recurrent": (torch.stack(rows), [s.clone() for s in state])})
    torch.save(results, out)


if __name__ == "__main__":
    _run_jobs(*sys.argv[1:3])
