"""The benchmark registry and LLaVA-1.5's prompt suffixes; the package stays a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torchmetrics import Metric

import rwkvblocks.metrics as metrics
from rwkvblocks.metrics import METRICS, PROMPT_SUFFIXES, get_metric

BENCHMARKS = {"vqav2", "textvqa", "gqa", "scienceqa", "pope", "mme", "mmbench", "mmbench_cn"}


def test_every_benchmark_has_a_metric_and_a_suffix():
    assert set(METRICS) == BENCHMARKS and set(PROMPT_SUFFIXES) == BENCHMARKS
    for name in BENCHMARKS:
        metric = get_metric(name)
        assert isinstance(metric, METRICS[name]) and isinstance(metric, Metric)
    assert METRICS["mmbench_cn"] is METRICS["mmbench"]


def test_prompt_suffixes_are_llavas():
    short = "\nAnswer the question using a single word or phrase."
    letter = "\nAnswer with the option's letter from the given choices directly."
    assert {k: v for k, v in PROMPT_SUFFIXES.items() if v == short}.keys() == {"vqav2", "gqa", "textvqa", "pope", "mme"}
    assert PROMPT_SUFFIXES["scienceqa"] == PROMPT_SUFFIXES["mmbench"] == letter
    assert PROMPT_SUFFIXES["mmbench_cn"] == "\n请直接回答选项字母。"


def test_get_metric_passes_metric_options_and_rejects_unknown_names():
    assert get_metric("gqa", sync_on_compute=False).sync_on_compute is False
    with pytest.raises(ValueError, match="name is 'vqa'; expected one of gqa, mmbench"):
        get_metric("vqa")


def test_the_package_imports_only_stdlib_torch_and_torchmetrics():
    allowed = {"torch", "torchmetrics", "__future__"}
    import sys

    for path in Path(metrics.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert tops <= allowed | set(sys.stdlib_module_names), (path.name, tops)
