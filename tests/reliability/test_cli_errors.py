"""The ``rwkvblocks`` command's error paths, each in a fresh interpreter, as a user meets them.

Every error of ours ends in exactly one line ``rwkvblocks <command>: error: <message>`` on stderr and exit code 2,
with no traceback; ``--debug`` shows the traceback; Ctrl-C exits 130 quietly. Both ``python -m assemblies.cli``
and ``python -m rwkvblocks`` are run (the installed ``rwkvblocks`` script calls the same ``main``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkvblocks
from assemblies import cli
from tests.assemblies.upstream import upstream_state_dict

ROOT = Path(__file__).resolve().parents[2]
ASSEMBLIES_CLI = ("-m", "assemblies.cli")
RWKVBLOCKS = ("-m", "rwkvblocks")


def _run(*args: str, module=ASSEMBLIES_CLI, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    return subprocess.run(
        [sys.executable, *module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def _one_error(out: subprocess.CompletedProcess, command: str) -> str:
    """The single error line of a failed run (exit 2, no traceback), without its prefix."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr
    prefix = f"rwkvblocks {command}: error: "
    assert errors[0].startswith(prefix), errors[0]
    return errors[0][len(prefix) :]


@pytest.fixture(scope="module")
def upstream_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upstream") / "visualrwkv.pth"
    torch.save(upstream_state_dict("x060", tower=True), path)
    return path


def test_convert_of_a_missing_file(tmp_path):
    message = _one_error(_run("convert", "missing.pth", "out", cwd=tmp_path), "convert")
    assert "missing.pth" in message and not (tmp_path / "out").exists()


def test_convert_of_a_text_file_posing_as_a_checkpoint(tmp_path):
    (tmp_path / "model.pth").write_text("this is not a torch.save file\n")
    message = _one_error(_run("convert", "model.pth", "out", cwd=tmp_path), "convert")
    assert "model.pth" in message  # the reader's words (a CheckpointError, or torch's, cut to one line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dst", ["a_file/out", "a_file"], ids=["under-a-file", "a-file-in-its-place"])
def test_convert_to_an_output_that_cannot_be_a_directory(tmp_path, upstream_pth, dst):
    (tmp_path / "a_file").write_text("in the way\n")
    out = _run("convert", str(upstream_pth), dst, "--vision-heads", "1", cwd=tmp_path)
    message = _one_error(out, "convert")
    assert "a_file" in message and "not a directory" in message
    assert "reading" not in out.stdout  # refused before the checkpoint is read, not after the work
    assert (tmp_path / "a_file").read_text() == "in the way\n"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_convert_into_a_read_only_directory(tmp_path, upstream_pth):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        message = _one_error(_run("convert", str(upstream_pth), "locked/out", cwd=tmp_path), "convert")
    finally:
        locked.chmod(0o700)
    assert "locked" in message and "Permission denied" in message


def test_an_unwritable_directory_is_refused_up_front(tmp_path, upstream_pth, monkeypatch, capsys):
    # in process, because root (CI containers) may write anywhere: the permission check itself
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    assert cli.main(["convert", str(upstream_pth), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    out = tmp_path / "out"
    assert err == f"rwkvblocks convert: error: {tmp_path}: Permission denied (so no output directory {out} in it)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "module, command, args",
    [
        (ASSEMBLIES_CLI, "generate", ["--questions", "q.jsonl", "--out", "answers.jsonl"]),
        (RWKVBLOCKS, "chat", ["What colour?"]),
    ],
    ids=["generate", "chat-via-python-m-rwkvblocks"],
)
def test_a_cuda_device_on_a_machine_without_cuda(tmp_path, module, command, args):
    out = _run(command, "--model", "visualrwkv_tiny", "--device", "cuda", *args, module=module, cwd=tmp_path)
    message = _one_error(out, command)
    assert "CUDA is not available" in message and "--device cpu" in message
    assert "note:" not in out.stdout  # checked before the model is built


def test_a_device_that_does_not_exist(tmp_path):
    message = _one_error(_run("chat", "--model", "visualrwkv_tiny", "--device", "gpu0", "hi", cwd=tmp_path), "chat")
    assert "'gpu0' is not a torch device" in message


@pytest.mark.parametrize(
    "command, args",
    [("chat", ["--model", "no_such_preset", "hi"]), ("train", ["--preset", "no_such_preset", "--stage", "alignment"])],
)
def test_an_unknown_preset(tmp_path, command, args):
    if command == "train":
        args = [*args, "--data", "d.json", "--out", "run"]
    assert "no_such_preset" in _one_error(_run(command, *args, cwd=tmp_path), command)


def test_a_bad_dtype_is_an_argparse_usage_error(tmp_path):
    out = _run("convert", "x.pth", "out", "--dtype", "fp8", cwd=tmp_path)
    message = _one_error(out, "convert")
    assert "--dtype" in message and "fp8" in message and out.stderr.startswith("usage: rwkvblocks convert")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    args = ["--debug", "convert", "missing.pth", "out"] if where == "before" else ["convert", "missing.pth", "out"]
    out = _run(*args, *(["--debug"] if where == "after" else []), cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" in out.stderr
    assert out.stderr.rstrip().splitlines()[-1] == "FileNotFoundError: checkpoint not found: missing.pth"


def test_version(tmp_path):
    for module in (ASSEMBLIES_CLI, RWKVBLOCKS):
        out = _run("--version", module=module, cwd=tmp_path)
        assert (out.returncode, out.stdout.strip(), out.stderr) == (0, f"rwkvblocks {rwkvblocks.__version__}", "")


def test_python_m_rwkvblocks_is_the_command(tmp_path):
    out = _run("--help", module=RWKVBLOCKS, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("usage: rwkvblocks ") and "convert" in out.stdout
    missing = _run("nosuch", module=RWKVBLOCKS, cwd=tmp_path)  # argparse's usage error, as for the script
    assert missing.returncode == 2 and "invalid choice: 'nosuch'" in missing.stderr


def test_importing_rwkvblocks_main_runs_nothing():
    code = "import sys, rwkvblocks.__main__; print(sorted(m for m in sys.modules if m.startswith('assemblies')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_info", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyboardInterrupt):
        cli.main(["info", "--debug"])


def test_messages_are_cut_to_one_line():
    assert cli._one_line(ValueError("first\n\nsecond")) == "first (more with --debug)"
    assert cli._one_line(ValueError("  just one  ")) == "just one"
    assert cli._one_line(FileExistsError(17, "File exists", "out")) == "out: File exists"
    assert cli._one_line(ValueError("")) == "ValueError"


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    from assemblies.demo import write_dataset

    align, _, _ = write_dataset(tmp_path / "data", 4, seed=1)
    return [
        "train", "--preset", "visualrwkv_tiny", "--stage", "alignment", "--data", str(align),
        "--images", str(tmp_path / "data" / "images"), "--tokenizer", "byte", "--out", str(tmp_path / "run"), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--batch-size", "0"], "--batch-size must be a positive int, got 0"),
        (["--micro-batch-size", "-2"], "--micro-batch-size must be a positive int, got -2"),
        (["--steps", "0"], "--steps must be a positive int, got 0"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--batch-size", "8", "--micro-batch-size", "3"], "micro_batch_size 3 does not divide batch_size 8"),
        (["--set", "train.lr_init=fast"], "--set: train.lr_init must be a number > 0, got 'fast'"),
        (["--encoder-checkpoint", "no_such.pt"], "no_such.pt"),
    ],
    ids=["batch", "micro-batch", "steps", "epochs", "indivisible", "set", "encoder-checkpoint"],
)
def test_train_refuses_bad_numbers_before_training(tmp_path, extra, words):
    out = _run(*_train_args(tmp_path, *extra), cwd=tmp_path)
    assert words in _one_error(out, "train") and not (tmp_path / "run").exists()


def test_train_into_a_file_is_refused_up_front(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    message = _one_error(_run(*_train_args(tmp_path, "--steps", "1"), cwd=tmp_path), "train")
    assert "--out" in message and "not a directory" in message


def test_train_on_data_that_is_all_bad_stops(tmp_path):
    import json

    args = _train_args(
        tmp_path, "--steps", "2", "--on-bad-sample", "skip", "--batch-size", "2", "--micro-batch-size", "1"
    )
    shutil_images = tmp_path / "data" / "images"
    for image in shutil_images.iterdir():  # every image gone: every sample is bad
        image.unlink()
    out = _run(*args, cwd=tmp_path)
    message = _one_error(out, "train")
    assert "no usable sample" in message and "skipped 4 of 4" in message, message
    assert json.loads((tmp_path / "data" / "align.json").read_text())  # the data was read, not the loop stuck


def test_train_config_error_names_the_file_and_field(tmp_path):
    config = tmp_path / "stage.toml"
    config.write_text("[train]\nstage = 'alignment'\nbatch_size = '8'\n")
    message = _one_error(_run("train", "--config", str(config), cwd=tmp_path), "train")
    assert message.startswith(f"{config}: train.batch_size must be an int >= 1")
