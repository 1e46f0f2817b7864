"""Every checkpoint file loads completely or is refused with a ``CheckpointError`` naming it and why; a
``save_pretrained`` interrupted at any step leaves the old or the new checkpoint, never a mix."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import assemblies._io as io_module
from assemblies import create_assembly
from assemblies._io import atomic_file
from assemblies.models.formats.blinkdl import load_blinkdl, save_blinkdl
from assemblies.models.formats.upstream import read_upstream
from assemblies.models.rwkv_lm import RWKVConfig, build_rwkv_lm
from assemblies.models.visualrwkv import VisualRWKV
from rwkvblocks import CheckpointError
from rwkvblocks.vision import load_state_dict_file
from tests.assemblies.upstream import upstream_state_dict
from tests.blinkdl import blinkdl_state_dict

PARAM = "proj.weight"  # with the context length, compared to tell the old checkpoint from the new one
OURS = {"config.json", "model.safetensors"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_assembly("visualrwkv_tiny")


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


def _refused(call, path, *reason: str) -> CheckpointError:
    """``call()`` raises a CheckpointError whose message starts with ``path`` and contains every ``reason``."""
    with pytest.raises(CheckpointError) as info:
        call()
    err = info.value
    assert isinstance(err, ValueError) and err.path == os.fspath(path)
    assert str(err).startswith(f"{path}: "), str(err)
    for text in reason:
        assert re.search(text, str(err)), (text, str(err))
    return err


def _lm_file(tmp_path, name="lm.pth", num_layers=2, **kw):
    sd = blinkdl_state_dict("x060", dim=64, num_layers=num_layers, head_dim=32, mix_rank=8, decay_rank=16, **kw)
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


# -- unreadable files ------------------------------------------------------------------------


def test_truncated_safetensors_is_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    before = _listing(tmp_path / "m")
    _refused(lambda: VisualRWKV.from_pretrained(tmp_path / "m"), weights, "truncated or corrupt safetensors")
    _refused(lambda: load_state_dict_file(weights), weights, "truncated or corrupt safetensors")
    assert _listing(tmp_path / "m") == before  # reading writes nothing


def test_corrupt_safetensors_header_is_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"{not json at all"
    weights.write_bytes(bytes(data))
    _refused(lambda: VisualRWKV.from_pretrained(tmp_path / "m"), weights, "corrupt safetensors", "header")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _refused(lambda: load_state_dict_file(empty), empty, "empty file")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy_pickle"])
def test_truncated_pth_is_refused(tmp_path, legacy):
    _, sd = _lm_file(tmp_path)
    path = tmp_path / "cut.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(lambda: load_blinkdl(path), path, "truncated or corrupt")
    _refused(lambda: load_state_dict_file(path), path, "truncated or corrupt")


def test_text_and_empty_files_as_pth_are_refused(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is a README, not a checkpoint\n")
    _refused(lambda: load_blinkdl(text), text, "not a torch.save checkpoint", "this is a R")
    _refused(lambda: read_upstream(text), text, "not a torch.save checkpoint")
    _refused(lambda: load_state_dict_file(text), text, "not a torch.save checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _refused(lambda: load_blinkdl(empty), empty, "empty file")


def test_a_file_of_the_other_format_is_refused(tmp_path):
    path, sd = _lm_file(tmp_path)
    as_safetensors = tmp_path / "lm.safetensors"
    save_file(sd, as_safetensors)
    renamed = tmp_path / "really_safetensors.pth"
    renamed.write_bytes(as_safetensors.read_bytes())
    _refused(lambda: load_blinkdl(renamed), renamed, "a safetensors file, not a torch.save checkpoint")
    _refused(lambda: load_state_dict_file(renamed), renamed, "safetensors file", r"\*\.safetensors")
    pth_named_safetensors = tmp_path / "really_pth.safetensors"
    pth_named_safetensors.write_bytes(path.read_bytes())
    _refused(
        lambda: load_state_dict_file(pth_named_safetensors),
        pth_named_safetensors,
        "torch.save file",
        "not a safetensors",
    )


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path):
    _, sd = _lm_file(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({**sd, "x": _Payload()}, evil)
    _refused(lambda: load_blinkdl(evil), evil, r"weights_only=True", "GLOBAL")
    _refused(lambda: load_state_dict_file(evil), evil, r"weights_only=True")
    up = tmp_path / "evil_upstream.pth"
    torch.save({**upstream_state_dict("x060", tower=False), "x": _Payload()}, up)
    _refused(lambda: read_upstream(up), up, r"weights_only=True")
    odd = tmp_path / "odd.pth"
    torch.save({**sd, "step": {"epoch": 3}}, odd)  # a plain dict passes weights_only, but is not a tensor
    _refused(lambda: load_blinkdl(odd), odd, r"refusing entries: step \(dict\)")


def test_missing_files_stay_file_not_found(tmp_path):
    # kept a FileNotFoundError (other callers catch it); its message names the file
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_blinkdl(tmp_path / "nope.pth")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VisualRWKV.from_pretrained(tmp_path / "half")


# -- blocks ----------------------------------------------------------------------------------


def _renumber(sd, old: int, new: int, prefix="blocks."):
    return {
        (k.replace(f"{prefix}{old}.", f"{prefix}{new}.", 1) if k.startswith(f"{prefix}{old}.") else k): v
        for k, v in sd.items()
    }


def test_non_contiguous_blocks_are_refused(tmp_path):
    _, sd = _lm_file(tmp_path, num_layers=3)
    gap = tmp_path / "gap.pth"
    torch.save(_renumber(sd, 2, 3), gap)  # blocks 0, 1, 3
    _refused(lambda: load_blinkdl(gap), gap, "not contiguous", r"N = 0, 1, 3", r"missing blocks\.2")
    up = upstream_state_dict("x060", tower=True)
    gap_up = tmp_path / "gap_upstream.pth"
    torch.save(_renumber(up, 1, 2, prefix="rwkv.blocks."), gap_up)
    _refused(lambda: read_upstream(gap_up), gap_up, "not contiguous", r"missing blocks\.1")
    tower_gap = tmp_path / "tower_gap.pth"
    torch.save(_renumber(up, 1, 5, prefix="vit.vision_model.encoder.layers."), tower_gap)
    _refused(lambda: read_upstream(tower_gap), tower_gap, "not contiguous", r"encoder\.layers\.1")


def test_inconsistent_block_keys_are_refused(tmp_path):
    _, sd = _lm_file(tmp_path, num_layers=3)
    del sd["blocks.2.att.key.weight"]
    odd = tmp_path / "odd.pth"
    torch.save(sd, odd)
    err = _refused(lambda: load_blinkdl(odd), odd, "blocks that differ")
    assert "blocks.N.att.key.weight is in blocks 0, 1 but not in blocks 2" in str(err)
    assert "missing (1): blocks.2.att.key.weight" in str(err)
    up = upstream_state_dict("x060", tower=True)
    del up["vit.vision_model.encoder.layers.1.mlp.fc2.bias"]
    tower = tmp_path / "tower.pth"
    torch.save(up, tower)
    _refused(
        lambda: read_upstream(tower), tower, r"encoder\.layers\.N\.mlp\.fc2\.bias is in blocks 0 but not in blocks 1"
    )


def test_x070_layer0_value_lora_may_be_absent_but_later_layers_need_it(tmp_path):
    for layer0 in (False, True):
        sd = blinkdl_state_dict("x070", dim=64, num_layers=3, head_dim=32, layer0_value_lora=layer0)
        torch.save(sd, tmp_path / "ok.pth")
        load_blinkdl(tmp_path / "ok.pth")  # blocks.0.att.v0/v1/v2 are optional
    del sd["blocks.2.att.v1"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    _refused(lambda: load_blinkdl(bad), bad, r"blocks\.N\.att\.v1 is in blocks 1 but not in blocks 2")


def test_key_problems_of_a_pretrained_directory_are_checkpoint_errors(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(weights)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    state["lm.ln_out.bias"] = torch.zeros(3)
    save_file(state, weights, metadata={"save_id": meta["save_id"], "aliases": "{}"})
    _refused(lambda: VisualRWKV.from_pretrained(tmp_path / "m"), tmp_path / "m", r"lm\.ln_out\.bias: expected")


def test_config_and_weights_of_different_saves_are_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "a")
    tiny.save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    _refused(lambda: VisualRWKV.from_pretrained(tmp_path / "a"), tmp_path / "a" / "model.safetensors", "another save")


# -- atomic saving ---------------------------------------------------------------------------


class _Crash(BaseException):
    """The process dies here: nothing after it runs (not even cleanup), whatever catches Exception."""


class _Faults:
    """Counts every write, fsync, chmod, rename and unlink of a save; fails at step ``at``.

    ``crash``: from step ``at`` on every step raises ``_Crash`` (a dead process cleans nothing up); otherwise
    only step ``at`` raises an ``OSError`` (a full disk) and the code's own cleanup runs.
    """

    def __init__(self, at: int, crash: bool) -> None:
        self.at, self.crash, self.count, self.failed = at, crash, 0, False

    def step(self, what: str) -> bool:
        """Count a step; True when it must fail (the caller raises after any partial write)."""
        if self.failed and self.crash:
            raise _Crash(f"after the crash: {what}")
        self.count += 1
        if self.count == self.at:
            self.failed = True
            return True
        return False

    def error(self, what: str) -> BaseException:
        return _Crash(what) if self.crash else OSError(f"injected failure at step {self.count}: {what}")

    def wrap(self, name: str, real):
        def call(*args, **kwargs):
            if self.step(name):
                raise self.error(name)
            return real(*args, **kwargs)

        return call

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for name in ("replace", "rename", "unlink", "remove", "fsync", "chmod", "link"):
            mp.setattr(os, name, self.wrap(f"os.{name}", getattr(os, name)))
        real_save = save_file

        def partial_save(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            if self.step("safetensors save_file"):
                with open(filename, "r+b") as f:  # half of it reached the disk
                    f.truncate(os.path.getsize(filename) // 2)
                raise self.error("safetensors save_file")

        mp.setattr("safetensors.torch.save_file", partial_save)
        faults, real_open = self, open

        class _File:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                if faults.step("write"):
                    self._f.write(data[: len(data) // 2])
                    raise faults.error("write")
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        mp.setattr(io_module, "open", lambda *a, **k: _File(real_open(*a, **k)), raising=False)


def _legacy(directory) -> None:
    """Make ``directory`` look written before save ids existed."""
    cfg = json.loads((directory / "config.json").read_text())
    del cfg["save_id"]
    (directory / "config.json").write_text(json.dumps(cfg))
    weights = directory / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "save_id"}
    save_file(load_file(weights), weights, metadata=meta)


def _signature(model):
    return model.state_dict()[PARAM], model.data_config.context_length


def _same(a, b) -> bool:
    return a is not None and b is not None and torch.equal(a[0], b[0]) and a[1] == b[1]


def _loaded(directory):
    """The compared parameter and setting of the checkpoint in ``directory``, or None if there is none."""
    try:
        return _signature(VisualRWKV.from_pretrained(directory))
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("previous", ["none", "ours", "legacy"])
def test_an_interrupted_save_leaves_the_old_or_the_new_checkpoint(tiny, tmp_path, previous):
    old, new, newer = tiny, copy.deepcopy(tiny), copy.deepcopy(tiny)
    with torch.no_grad():
        new.proj.weight.add_(1.0)
        newer.proj.weight.add_(2.0)
    # config.json differs too, so that old settings with new weights (or the reverse) would be caught
    new.data_config = new.data_config.replace(context_length=old.data_config.context_length + 1)
    want_old = None if previous == "none" else _signature(old)
    want_new = _signature(new)
    total = None
    for crash in (True, False):
        at = 1
        while True:
            directory = tmp_path / f"{crash}-{at}"
            directory.mkdir()
            (directory / "notes.txt").write_text("the user's own file")
            if previous != "none":
                old.save_pretrained(directory)
                if previous == "legacy":
                    _legacy(directory)
            faults = _Faults(at, crash)
            with pytest.MonkeyPatch.context() as mp:
                faults.install(mp)
                with contextlib.suppress(_Crash, OSError):
                    new.save_pretrained(directory)
            visible = {n for n in os.listdir(directory) if not n.startswith(".")}
            assert visible <= OURS | {"notes.txt"}, (at, visible)  # nothing half-written under a final name
            assert (directory / "notes.txt").read_text() == "the user's own file"
            got = _loaded(directory)
            if not faults.failed:  # every step passed: the save is complete
                assert _same(got, want_new)
                assert _listing(directory) == sorted(OURS | {"notes.txt"})  # no temporary left
                assert oct(os.stat(directory / "model.safetensors").st_mode & 0o777) == oct(0o666 & ~_umask())
                total = faults.count if total is None else total
                assert faults.count == total
                break
            if got is None:  # nothing to load: only right for a new directory
                assert want_old is None, (crash, at)
            else:
                assert _same(got, want_old) or _same(got, want_new), (crash, at)
            if not crash:  # the code's own cleanup ran: no temporary file is left
                assert not [n for n in os.listdir(directory) if n.endswith(".tmp")], (at, _listing(directory))
            newer.save_pretrained(directory)  # a later save succeeds and clears what the interruption left
            assert _listing(directory) == sorted(OURS | {"notes.txt"}), (crash, at)
            assert _same(_loaded(directory), _signature(newer))
            at += 1
    assert total >= 8  # the writes, fsyncs and renames were all counted


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_saved_files_get_normal_permissions(tiny, tmp_path, umask022):
    tiny.save_pretrained(tmp_path / "m")
    for name in OURS:
        assert oct(os.stat(tmp_path / "m" / name).st_mode & 0o777) == "0o644", name
    save_blinkdl(build_rwkv_lm(RWKVConfig("x052", 50, 32, 1, 16)), tmp_path / "lm.pth")
    assert oct(os.stat(tmp_path / "lm.pth").st_mode & 0o777) == "0o644"
    with atomic_file(tmp_path / "plain.json") as f:
        f.write(b"{}")
    assert oct(os.stat(tmp_path / "plain.json").st_mode & 0o777) == "0o644"
    os.umask(0o077)  # the umask is honoured, not overridden
    with atomic_file(tmp_path / "private.json") as f:
        f.write(b"{}")
    assert oct(os.stat(tmp_path / "private.json").st_mode & 0o777) == "0o600"
    assert _listing(tmp_path) == ["lm.pth", "m", "plain.json", "private.json"]
