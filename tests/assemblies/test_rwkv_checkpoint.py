"""BlinkDL checkpoints: configuration from shapes, exact round trip, and every failure named."""

from __future__ import annotations

import os

import pytest
import torch

import assemblies.models.formats.blinkdl as rwkv_lm
from assemblies import RWKVConfig, build_rwkv_lm, load_blinkdl, save_blinkdl
from assemblies.models.formats.blinkdl import infer_rwkv_config
from tests.blinkdl import blinkdl_state_dict


@pytest.mark.parametrize(
    "kwargs, want",
    [
        (dict(version="x060", dim=128, num_layers=3, head_dim=64), RWKVConfig("x060", 256, 128, 3, 64, 448, 32, 64)),
        (
            dict(version="x060", dim=96, num_layers=2, head_dim=32, mix_rank=64, decay_rank=128, ffn_dim=160),
            RWKVConfig("x060", 256, 96, 2, 32, 160, 64, 128),
        ),
        (dict(version="x052", dim=96, num_layers=2, head_dim=32), RWKVConfig("x052", 256, 96, 2, 32, 320)),
    ],
)
def test_config_is_inferred_from_shapes(kwargs, want):
    assert infer_rwkv_config(blinkdl_state_dict(**kwargs)) == want


@pytest.mark.parametrize("version", ["x052", "x060"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_then_save_reproduces_the_file(tmp_path, version, dtype):
    original = blinkdl_state_dict(version, dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16, dtype=dtype)
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(original, src)
    model = load_blinkdl(src)
    assert model.emb.weight.dtype == dtype and not model.training
    save_blinkdl(model, dst)
    again = torch.load(dst, weights_only=True)
    assert set(again) == set(original)
    for key, tensor in original.items():
        assert again[key].dtype == dtype and again[key].shape == tensor.shape, key
        assert torch.equal(again[key], tensor), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth", "out.pth"]  # no temporary left


def test_load_options_and_config_json_round_trip(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(blinkdl_state_dict("x060", dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16), path)
    model = load_blinkdl(os.fspath(path), device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    cfg = infer_rwkv_config(torch.load(path, weights_only=True))
    assert RWKVConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown RWKVConfig fields"):
        RWKVConfig.from_dict({**cfg.to_dict(), "n_embd": 3})


def test_key_problems_are_all_named_in_one_error(tmp_path):
    sd = blinkdl_state_dict("x060", dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    del sd["blocks.1.att.gate.weight"]
    del sd["ln_out.bias"]
    sd["blocks.1.att.time_state"] = torch.zeros(2, 32, 32)
    sd["blocks.0.ffn.value.weight"] = torch.zeros(64, 100)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_blinkdl(path)
    msg = str(err.value)
    assert "missing (2): blocks.1.att.gate.weight, ln_out.bias" in msg
    assert "unexpected (1): blocks.1.att.time_state" in msg
    assert "mis-shaped (1): blocks.0.ffn.value.weight: expected [64, 224], got [64, 100]" in msg


def test_unreadable_files_are_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_blinkdl(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_blinkdl(garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        load_blinkdl(listed)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match="missing or malformed: emb.weight"):
        load_blinkdl(other)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "x": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_blinkdl(path)


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    model = build_rwkv_lm(RWKVConfig("x052", 50, 32, 1, 16))
    path = tmp_path / "m.pth"
    path.write_bytes(b"previous checkpoint")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(rwkv_lm.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_blinkdl(model, path)
    assert path.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]
