"""Parity with BlinkDL's RWKV-7 (x070) as run by the PyPI ``rwkv`` package in x070 mode (DESIGN.md §13, §15).

Each case writes a tiny random x070 checkpoint in BlinkDL's format (tests/blinkdl.py, no rwkvblocks code)
with LoRA ranks that no formula gives, loads it with ``assemblies.load_blinkdl`` and compares, in fp32,
within 1e-5 absolute: logits of a 40-token sequence run at once, logits of the same tokens fed one at a
time with the carried state, and all three state tensors of every layer after both. The package runs in
one child process for all cases (``tests/rwkv7_reference.py``: ``RWKV_V7_ON=1`` must precede its import).
"""

from __future__ import annotations

import pytest
import torch

from assemblies import load_blinkdl
from tests.blinkdl import blinkdl_state_dict
from tests.rwkv7_reference import reference_available, run_reference7

CASES = {
    "C64-head16-2layers-ranks24/20/12/40": dict(
        dim=64, num_layers=2, head_dim=16, decay_rank=24, a_rank=20, value_rank=12, gate_rank=40
    ),
    "C128-head32-3layers-ranks40/28/20/56-layer0-v": dict(
        dim=128,
        num_layers=3,
        head_dim=32,
        decay_rank=40,
        a_rank=28,
        value_rank=20,
        gate_rank=56,
        layer0_value_lora=True,
    ),
    "C128-head64-2layers-ranks16/48/8/72": dict(
        dim=128, num_layers=2, head_dim=64, decay_rank=16, a_rank=48, value_rank=8, gate_rank=72
    ),
}
T = 40
VOCAB = 300
ATOL = 1e-5
FIELDS = ("att_shift", "wkv", "ffn_shift")

pytestmark = [
    pytest.mark.skipif(not reference_available(), reason="the rwkv package is not installed"),
    pytest.mark.slow,  # ~30-50 s on two busy cores: a child process imports torch and TorchScripts the package
]


def _tokens() -> list[int]:
    return torch.randint(0, VOCAB, (T,), generator=torch.Generator().manual_seed(7)).tolist()


def _write(name: str, directory) -> object:
    path = directory / f"{name.replace('/', '-')}.pth"
    torch.save(blinkdl_state_dict("x070", **CASES[name], vocab_size=VOCAB, seed=len(name)), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case's checkpoint and the package's results for it, from one child process."""
    directory = tmp_path_factory.mktemp("x070")
    paths = {name: _write(name, directory) for name in CASES}
    results = run_reference7([(paths[name], _tokens()) for name in CASES])
    return {name: (paths[name], result, _ours(paths[name])) for name, result in zip(CASES, results)}


def _ours(path) -> dict:
    model = load_blinkdl(path)
    tokens = _tokens()
    with torch.no_grad():
        logits, state = model(torch.tensor([tokens]))
        rows, step_state = [], None
        for token in tokens:
            out, step_state = model(torch.tensor([[token]]), step_state)
            rows.append(out[0, 0])
    return {"parallel": (logits[0], state), "recurrent": (torch.stack(rows), step_state)}


def _state_differences(ours, theirs, num_layers: int) -> dict[str, float]:
    assert ours.num_layers == num_layers and len(theirs) == 3 * num_layers
    diffs = {}
    for j, name in enumerate(FIELDS):
        for i, layer in enumerate(ours.layers):
            mine, ref = getattr(layer, name)[0], theirs[3 * i + j]
            assert mine.shape == ref.shape and mine.dtype == ref.dtype == torch.float32, f"layer {i} {name}"
        diffs[name] = max(
            (getattr(layer, name)[0] - theirs[3 * i + j]).abs().max().item() for i, layer in enumerate(ours.layers)
        )
    return diffs


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_logits_and_states_match_the_package(runs, name, mode):
    _, reference, ours = runs[name]
    logits, state = ours[mode]
    ref_logits, ref_state = reference[mode]
    assert logits.shape == ref_logits.shape == (T, VOCAB) and logits.dtype == torch.float32
    assert ref_logits.abs().max() > 1, "degenerate reference logits"
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    for field, diff in _state_differences(state, ref_state, CASES[name]["num_layers"]).items():
        assert diff <= ATOL, f"{mode} {field}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", list(CASES))
def test_states_carry_information(runs, name):
    """Guards the comparisons: the WKV state is large and the first half of the sequence still matters."""
    path, _, _ = runs[name]
    model = load_blinkdl(path)
    tokens = _tokens()
    with torch.no_grad():
        _, state = model(torch.tensor([tokens]))
        _, half = model(torch.tensor([tokens[T // 2 :]]))
    for full, partial in zip(state.layers, half.layers):
        assert full.wkv.abs().max() > 0.1
        assert (full.wkv - partial.wkv).abs().max() > 1e-3


def max_differences() -> dict[str, dict[str, float]]:
    """The largest absolute differences per case and mode, for ``python -m tests.assemblies.test_rwkv7_parity``."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: _write(name, Path(tmp)) for name in CASES}
        results = run_reference7([(paths[name], _tokens()) for name in CASES])
        table = {}
        for name, reference in zip(CASES, results):
            ours = _ours(paths[name])
            for mode in ("parallel", "recurrent"):
                logits, state = ours[mode]
                ref_logits, ref_state = reference[mode]
                diffs = {"logits": (logits - ref_logits).abs().max().item()}
                diffs.update(_state_differences(state, ref_state, CASES[name]["num_layers"]))
                table[f"{name} {mode}"] = diffs
    return table


if __name__ == "__main__":
    for case, diffs in max_differences().items():
        print(f"{case}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
