"""``rwkvblocks chat`` and ``rwkvblocks generate``, and the ChatSession that continues from the state."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from assemblies import create_assembly
from assemblies.cli import main
from assemblies.models.generation import ChatSession
from rwkvblocks.generation import SamplingConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    create_assembly("visualrwkv_tiny").save_pretrained(root / "model")
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (60, 50), colour).save(root / f"{i}.png")
    return root


def test_chat_one_question(saved, capsys):
    args = ["chat", "--model", str(saved / "model"), "--image", str(saved / "0.png"), "--max-new-tokens", "5"]
    assert main([*args, "What colour?"]) == 0
    assert capsys.readouterr().out.strip()  # the streamed answer


def test_chat_loop_reads_stdin_with_commands(saved, capsys, monkeypatch):
    lines = f"What colour?\n/image {saved / '1.png'}\nAnd now?\nSure?\n/reset\nHi\n/image nowhere.png\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(saved / "model"), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "(new conversation about" in captured.out and "(conversation reset)" in captured.out
    assert "nowhere.png" in captured.err  # an unreadable image is named, the loop goes on


def test_chat_session_follow_ups_feed_only_the_new_turn(saved):
    model = create_assembly("visualrwkv_tiny")
    fed, encoded = [], []
    lm_forward, enc_forward = model.lm.forward, model.encoder.forward
    model.lm.forward = lambda tokens=None, state=None, **kw: (
        fed.append(None if tokens is None else tokens.shape[1]) or lm_forward(tokens, state, **kw)
    )
    model.encoder.forward = lambda images: encoded.append(len(images)) or enc_forward(images)
    chat = ChatSession(model, SamplingConfig(max_new_tokens=4, stop_tokens=(0,)))
    chat.set_image(saved / "0.png")
    "".join(chat.ask("What colour is it?"))
    fed.clear()
    "".join(chat.ask("Sure?"))
    turn = len(model.data_config and chat.tokenizer.encode("User: Sure?\n\n")) + len(
        chat.tokenizer.encode("Assistant:")
    )
    assert encoded == [1] and chat.turns == 2
    assert fed[0] <= turn + 3  # the unfed last token and the turn's end, then the new turn: no re-prefill
    assert all(n == 1 for n in fed[1:])  # then one token per step
    with pytest.raises(ValueError, match="non-empty"):
        next(chat.ask("  "))


def test_generate_writes_whole_lines_and_resumes(saved, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    rows = [
        {"question_id": 1, "image": "0.png", "text": "What colour?"},
        {"question_id": 2, "image": "1.png", "text": "Colour of the picture?"},
        {"question_id": 3, "text": "Say hi."},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    args = ["generate", "--model", str(saved / "model"), "--questions", str(questions), "--images", str(saved)]
    args += ["--out", str(out), "--batch-size", "2", "--max-new-tokens", "4"]
    assert main(args) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2, 3]
    assert set(answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert answers[1]["prompt"] == "Colour of the picture?" and answers[0]["model_id"] == "model"
    # a kill mid-line: the partial line is dropped and its question answered again; finished ones are kept
    out.write_text(out.read_text().splitlines(keepends=True)[0] + '{"question_id": 2, "pro')
    assert main(args) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in again] == [1, 2, 3] and again[0] == answers[0]
    assert "2 already answered" not in capsys.readouterr().out
    assert main(args) == 0
    assert "3 already answered" in capsys.readouterr().out


def test_generate_names_bad_inputs(saved, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1}\n')
    args = ["generate", "--model", str(saved / "model"), "--questions", str(questions), "--out", str(tmp_path / "a")]
    assert main(args) == 2
    assert "missing text" in capsys.readouterr().err
    assert main(["chat", "--model", "no_such_model", "hi"]) == 2
    assert "neither a save_pretrained directory nor a preset" in capsys.readouterr().err
