"""``python -m rwkvblocks.info`` lists every op x backend."""

from __future__ import annotations

import subprocess
import sys

from rwkvblocks.ops import wkv_dispatcher


def test_info_lists_every_op_and_backend():
    out = subprocess.run(
        [sys.executable, "-m", "rwkvblocks.info"], capture_output=True, text=True, check=True
    ).stdout
    for op in ("wkv6", "wkv5"):
        assert f"op {op}" in out
    for b in wkv_dispatcher.backends:
        assert f"  {b.name} " in out
    assert "auto -> chunked" in out and "auto -> reference" in out


def test_info_lists_the_attention_op():
    out = subprocess.run(
        [sys.executable, "-m", "rwkvblocks.info"], capture_output=True, text=True, check=True
    ).stdout
    assert "op causal_attention" in out and "  torch " in out and "  xformers " in out
    assert "auto -> torch" in out
