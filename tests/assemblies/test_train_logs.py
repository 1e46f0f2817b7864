"""``train``'s step log (JSON lines), its summary, and its policy for a non-finite loss (``nonfinite=``)."""

from __future__ import annotations

import json

import pytest
import torch

from assemblies import create_assembly
from assemblies.training import micro_batch_tokens, recipe, train
from tests.assemblies.test_train import _batches


def _plan(**changes):
    return recipe("instruction", batch_size=4, micro_batch_size=2, lr_init=1e-2, lr_final=1e-2, **changes)


def test_jsonl_log_and_summary(tmp_path):
    batches = _batches(tmp_path, 2)
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    log, summaries = tmp_path / "logs" / "train.jsonl", []
    plan = _plan(log_every=2)
    losses = train(model, batches, plan, steps=3, progress=False, log_file=log, on_summary=summaries.append)
    assert type(losses) is list and len(losses) == 3
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert [r["step"] for r in records] == [2, 3]  # every log_every steps, and the last
    for r in records:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s", "skipped_steps"} <= r.keys()
        assert r["loss"] == pytest.approx(losses[r["step"] - 1]) and r["tokens"] > 0 and r["elapsed_s"] >= 0
    tokens = 3 * sum(micro_batch_tokens(b) for b in batches)  # each step takes both micro-batches
    assert records[-1]["tokens"] == tokens
    (summary,) = summaries
    assert summary["steps"] == 3 and summary["tokens"] == tokens > 0 and summary["skipped_steps"] == 0
    assert summary["wall_s"] > 0 and summary["tokens_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    train(model, batches, plan, steps=1, progress=False, log_file=log)  # appends
    assert len(log.read_text().splitlines()) == 3


def test_tensorboard_is_optional(tmp_path, caplog):
    batches = _batches(tmp_path, 2)
    model = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    train(model, batches, _plan(), steps=1, progress=False, tensorboard_dir=tmp_path / "tb")  # never raises


def _nan_at(model, step: int, micro: int):
    """The loss of micro-batch ``micro`` (0-based) of optimiser step ``step`` (1-based) is NaN."""
    forward, calls = model.loss_fn.forward, []

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(None)
        return out * float("nan") if len(calls) == (step - 1) * 2 + micro + 1 else out

    model.loss_fn.forward = patched  # an instance attribute: the module's __call__ runs it
    return patched


def test_nonfinite_stop_names_step_and_micro_batch(tmp_path):
    batches = _batches(tmp_path, 2)
    model = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    _nan_at(model, 2, 1)
    ids = list(batches[1]["sample_ids"])
    with pytest.raises(ValueError, match="step 2") as err:
        train(model, batches, _plan(), steps=3, progress=False)
    assert "micro-batch 2 of 2" in str(err.value) and str(ids) in str(err.value)


def test_nonfinite_skip(tmp_path):
    batches = _batches(tmp_path, 2)
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    torch.manual_seed(0)
    ref = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    train(ref, batches, _plan(), steps=1, progress=False)  # one good step: the weights the skip must keep
    trainable = [n for n, p in ref.named_parameters() if p.requires_grad]
    after_one = {n: p.detach().clone() for n, p in ref.named_parameters()}
    _nan_at(model, 2, 0)
    summaries = []
    log = tmp_path / "skip.jsonl"

    ckpt = tmp_path / "ckpt"
    losses = train(
        model,
        batches,
        _plan(),
        steps=2,
        progress=False,
        nonfinite="skip",
        log_file=log,
        on_summary=summaries.append,
        checkpoint_dir=ckpt,
        checkpoint_every=1,
    )
    seen = {n: p.detach() for n, p in model.named_parameters()}
    assert len(losses) == 2 and losses[1] != losses[1]  # the skipped step's loss is NaN
    assert summaries[0]["skipped_steps"] == 1 and summaries[0]["steps"] == 2
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1]["skipped"] and records[-1]["loss"] is None and records[-1]["skipped_steps"] == 1
    for name in trainable:  # step 2 left the weights as step 1 made them
        torch.testing.assert_close(seen[name], after_one[name], atol=0, rtol=0, msg=name)
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step-00000001"]  # none after step 2


def test_nonfinite_argument_checked(tmp_path):
    model = create_assembly("visualrwkv_tiny", dtype=torch.float64)
    with pytest.raises(ValueError, match="nonfinite"):
        train(model, _batches(tmp_path, 2), _plan(), steps=1, progress=False, nonfinite="ignore")
