"""``python -m rwkvblocks.info`` lists every op x backend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rwkvblocks.ops import cross_entropy_dispatcher, wkv7_dispatcher, wkv_dispatcher


@pytest.fixture(scope="module")
def out():
    return subprocess.run([sys.executable, "-m", "rwkvblocks.info"], capture_output=True, text=True, check=True).stdout


def test_info_lists_every_op_and_backend():
    out = subprocess.run([sys.executable, "-m", "rwkvblocks.info"], capture_output=True, text=True, check=True).stdout
    for op in ("wkv6", "wkv5"):
        assert f"op {op}" in out
    for b in wkv_dispatcher.backends:
        assert f"  {b.name} " in out
    assert "auto -> chunked" in out and "auto -> reference" in out


def test_info_lists_the_attention_op():
    out = subprocess.run([sys.executable, "-m", "rwkvblocks.info"], capture_output=True, text=True, check=True).stdout
    assert "op causal_attention" in out and "  torch " in out and "  xformers " in out
    assert "auto -> torch" in out


def test_info_lists_the_cross_entropy_op_and_the_registered_op_names(out):
    assert "op weighted_cross_entropy  (environment variable RWKVBLOCKS_CROSS_ENTROPY_BACKEND)" in out
    for b in cross_entropy_dispatcher.backends:
        assert f"  {b.name} " in out
    assert "auto -> chunked    for cpu bf16 logits" in out
    for name in ("wkv6", "wkv6_backward", "causal_attention", "causal_attention_backward", "weighted_cross_entropy"):
        assert f"torch.ops.rwkvblocks.{name}" in out


def test_info_lists_the_wkv7_op_and_its_backends(out):
    assert "op wkv7  (environment variable RWKVBLOCKS_WKV7_BACKEND)" in out
    assert "torch.ops.rwkvblocks.wkv7, torch.ops.rwkvblocks.wkv7_backward" in out
    section = out.split("op wkv7 ")[1].split("\nop ")[0]
    for b in wkv7_dispatcher.backends:
        assert f"  {b.name} " in section
    assert "auto -> chunked    for cpu fp32 prefill" in section
