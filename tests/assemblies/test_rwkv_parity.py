"""Parity with BlinkDL's models as run by the PyPI ``rwkv`` package (DESIGN.md §13).

Each case writes a tiny random checkpoint in BlinkDL's format (tests/blinkdl.py, no rwkvblocks
code), loads it with ``assemblies.load_blinkdl`` and compares, in fp32, within 1e-5 absolute:
logits of a 40-token sequence run at once, logits of the same tokens fed one at a time with the
carried state, and all three state tensors of every layer after both.
"""

from __future__ import annotations

import pytest
import torch

from assemblies import load_blinkdl
from tests.blinkdl import blinkdl_state_dict
from tests.rwkv_reference import run_reference

CASES = {
    "x052-head64-2layers": dict(version="x052", dim=128, num_layers=2, head_dim=64),
    "x052-head32-3layers": dict(version="x052", dim=96, num_layers=3, head_dim=32),
    "x060-head64-ranks32/64": dict(version="x060", dim=128, num_layers=2, head_dim=64),
    "x060-head32-ranks64/128": dict(version="x060", dim=96, num_layers=3, head_dim=32, mix_rank=64, decay_rank=128),
}
T = 40
ATOL = 1e-5


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request, tmp_path_factory):
    kwargs = CASES[request.param]
    path = tmp_path_factory.mktemp("ckpt") / f"{request.param.replace('/', '-')}.pth"
    torch.save(blinkdl_state_dict(**kwargs, vocab_size=300, seed=len(request.param)), path)
    tokens = torch.randint(0, 300, (T,), generator=torch.Generator().manual_seed(7)).tolist()
    return kwargs, path, tokens


def _assert_states(ours, theirs, num_layers):
    assert ours.num_layers == num_layers and len(theirs) == 3 * num_layers
    for i, layer in enumerate(ours.layers):
        for j, name in enumerate(("att_shift", "wkv", "ffn_shift")):
            where = f"layer {i} {name}"
            torch.testing.assert_close(
                getattr(layer, name)[0], theirs[3 * i + j], atol=ATOL, rtol=0, msg=lambda m, w=where: f"{w}: {m}"
            )


def test_parallel_matches_reference(case):
    kwargs, path, tokens = case
    model = load_blinkdl(path)
    with torch.no_grad():
        logits, state = model(torch.tensor([tokens]))
    ref_logits, ref_state = run_reference(path, tokens, one_by_one=False)
    assert logits.shape == (1, T, 300) and logits.dtype == torch.float32
    assert ref_logits.abs().max() > 1, "degenerate reference logits"
    torch.testing.assert_close(logits[0], ref_logits, atol=ATOL, rtol=0)
    _assert_states(state, ref_state, kwargs["num_layers"])


def test_recurrent_matches_reference(case):
    kwargs, path, tokens = case
    model = load_blinkdl(path)
    rows, state = [], None
    with torch.no_grad():
        for token in tokens:
            out, state = model(torch.tensor([[token]]), state)
            rows.append(out[0, 0])
    ref_logits, ref_state = run_reference(path, tokens, one_by_one=True)
    torch.testing.assert_close(torch.stack(rows), ref_logits, atol=ATOL, rtol=0)
    _assert_states(state, ref_state, kwargs["num_layers"])


def test_wkv_state_is_not_trivial(case):
    """Guards the state comparisons: decays and the state must actually carry information."""
    _, path, tokens = case
    model = load_blinkdl(path)
    with torch.no_grad():
        _, state = model(torch.tensor([tokens]))
        _, half = model(torch.tensor([tokens[T // 2 :]]))
    for full, partial in zip(state.layers, half.layers):
        assert full.wkv.abs().max() > 0.1
        assert (full.wkv - partial.wkv).abs().max() > 1e-3  # the first half still matters


def _max_differences(name: str, directory) -> dict[str, float]:
    """The largest absolute differences of one case, for ``python -m tests.assemblies.test_rwkv_parity``."""
    path = directory / "case.pth"
    torch.save(blinkdl_state_dict(**CASES[name], vocab_size=300, seed=len(name)), path)
    tokens = torch.randint(0, 300, (T,), generator=torch.Generator().manual_seed(7)).tolist()
    model = load_blinkdl(path)
    fields = ("att_shift", "wkv", "ffn_shift")

    def state_diff(ours, theirs):
        return max(
            (getattr(layer, f)[0] - theirs[3 * i + j]).abs().max().item()
            for i, layer in enumerate(ours.layers)
            for j, f in enumerate(fields)
        )

    with torch.no_grad():
        logits, state = model(torch.tensor([tokens]))
        rows, step_state = [], None
        for token in tokens:
            out, step_state = model(torch.tensor([[token]]), step_state)
            rows.append(out[0, 0])
    ref_logits, ref_state = run_reference(path, tokens, one_by_one=False)
    ref_rows, ref_step_state = run_reference(path, tokens, one_by_one=True)
    return {
        "parallel logits": (logits[0] - ref_logits).abs().max().item(),
        "parallel states": state_diff(state, ref_state),
        "recurrent logits": (torch.stack(rows) - ref_rows).abs().max().item(),
        "recurrent states": state_diff(step_state, ref_step_state),
    }


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            diffs = _max_differences(case, Path(tmp))
            print(f"{case}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
