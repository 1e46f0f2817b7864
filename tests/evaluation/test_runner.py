"""``rwkvblocks eval`` end to end on a tiny model and a generated 20-question benchmark in each of the eight formats;
``--mode rank`` equal to full forwards of prompt + choice; resuming; bad inputs named."""

from __future__ import annotations

import json

import pytest
import torch

import rwkvblocks
from assemblies import VisualRWKV, create_assembly
from assemblies.cli import main
from assemblies.evaluation import BENCHMARKS, get_benchmark, score_file
from assemblies.evaluation.answers import _image
from assemblies.models.config import make_prompt_builder, make_tokenizer
from rwkvblocks.metrics import PROMPT_SUFFIXES

from .data import make_benchmark

MULTIPLE_CHOICE = sorted(n for n, b in BENCHMARKS.items() if b.multiple_choice)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)  # image-first prompts: short, and questions about one image share its prefix state
    create_assembly("visualrwkv_base_tiny", context_length=512).save_pretrained(root / "base")
    torch.manual_seed(1)  # the paper's sandwich prompt and bidirectional scan, for the ranking oracle
    create_assembly("visualrwkv_tiny", context_length=1024).save_pretrained(root / "sandwich")
    return root, {name: make_benchmark(name, root / name) for name in BENCHMARKS}


def _eval_args(root, data, name, model="base", out=None, *extra):
    args = ["eval", "--model", str(root / model), "--benchmark", name, "--questions", str(data[name].questions)]
    args += ["--annotations", str(data[name].annotations), "--out", str(out or root / "out" / model / name)]
    if data[name].images is not None:
        args += ["--images", str(data[name].images)]
    return [*args, "--batch-size", "20", "--max-new-tokens", "2", *extra]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_eval_answers_scores_and_records_the_protocol(setup, name, capsys):
    root, data = setup
    out = root / "out" / "base" / name
    assert main(_eval_args(root, data, name)) == 0
    printed = capsys.readouterr().out
    bench = get_benchmark(name)
    answers = [json.loads(line) for line in (out / "answers_generate.jsonl").read_text().splitlines()]
    assert len(answers) == 20
    for a in answers:
        assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata", "question"} <= set(a)
        assert a["prompt"].endswith(PROMPT_SUFFIXES[name]) and a["metadata"]["tokens"] <= 2
        assert a["question"]["question_id"] == a["question_id"] and a["model_id"] == "base"
    result = json.loads((out / "result_generate.json").read_text())
    assert result["headline"]["name"] == bench.headline and isinstance(result["headline"]["value"], float)
    assert f"{bench.headline}  " in printed and "<- headline" in printed
    protocol = result["protocol"]
    assert protocol["prompt_suffix"] == PROMPT_SUFFIXES[name] and protocol["mode"] == "generate"
    assert protocol["scorer"] == f"rwkvblocks.metrics.{bench.metric_class.__name__}"
    assert protocol["decoding"]["max_new_tokens"] == 2 and protocol["decoding"]["temperature"] == 0.0
    assert result["model"]["id"] == "base" and result["model"]["prompt"] == "image_first"
    assert result["library"]["version"].startswith(rwkvblocks.__version__)
    assert result["files"]["questions"] == data[name].questions.name and result["counts"]["scored"] == 20
    # the same answers through `rwkvblocks score` give the same numbers
    again = score_file(name, out / "answers_generate.jsonl", annotations=data[name].annotations)
    assert again["scores"] == result["scores"]


@pytest.mark.parametrize("name", MULTIPLE_CHOICE)
def test_rank_mode_picks_a_choice_for_every_multiple_choice_benchmark(setup, name):
    root, data = setup
    out = root / "rank" / name
    assert main([*_eval_args(root, data, name, "base", out), "--mode", "rank"]) == 0
    answers = [json.loads(line) for line in (out / "answers_rank.jsonl").read_text().splitlines()]
    assert len(answers) == 20
    for a in answers:
        logprobs = a["metadata"]["logprobs"]
        assert list(logprobs) == a["question"]["choices"] and a["text"] == max(logprobs, key=logprobs.get)
    result = json.loads((out / "result_rank.json").read_text())
    assert result["protocol"]["mode"] == "rank" and "argmax over choices" in result["protocol"]["decoding"]
    assert isinstance(result["headline"]["value"], float)


def _full_forward_logprob(model: VisualRWKV, prompt_text: str, image, choice: str) -> float:
    """log p(choice | prompt) from one forward over the whole prompt + choice, no state carried."""
    tokenizer = make_tokenizer(model.data_config)
    conv = [{"from": "human", "value": ("<image>\n" if image is not None else "") + prompt_text}]
    ids, _, starts = (
        make_prompt_builder(model.data_config, tokenizer).build(conv, mode="inference").expand(model.image_tokens)
    )
    cont = tokenizer.encode(" " + choice)
    tokens = torch.tensor([ids + cont])
    with torch.no_grad():
        if image is None:
            logits = model(tokens).logits
        else:
            spans = torch.tensor([[0, s, 0, model.image_tokens] for s in starts])
            logits = model(tokens, None, model.encoder.transform([image]), spans).logits
    logp = torch.log_softmax(logits[0, len(ids) - 1 : -1].double(), -1)
    return float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum())


@pytest.mark.parametrize(("name", "limit"), [("scienceqa", 8), ("pope", 4), ("mmbench_cn", 4)])
def test_rank_equals_separate_full_forwards(setup, name, limit):
    """Sandwich prompt, bidirectional scan: each choice's log-likelihood after one shared prefill equals the one
    computed by running the whole prompt + choice through the model."""
    root, data = setup
    out = root / "rank_sandwich" / name
    assert main([*_eval_args(root, data, name, "sandwich", out), "--mode", "rank", "--limit", str(limit)]) == 0
    model = VisualRWKV.from_pretrained(root / "sandwich").eval()
    bench = get_benchmark(name)
    questions = {json.dumps(q.question_id): q for q in bench.read_questions(data[name].questions)}
    answers = [json.loads(line) for line in (out / "answers_rank.jsonl").read_text().splitlines()]
    assert len(answers) == limit
    for a in answers:
        q = questions[json.dumps(a["question_id"])]
        image = _image(q, data[name].images)  # a path, or MMBench's decoded PIL image
        full = [_full_forward_logprob(model, a["prompt"], image, c) for c in q.choices]
        torch.testing.assert_close(list(a["metadata"]["logprobs"].values()), full, rtol=1e-4, atol=1e-4)
        assert a["text"] == q.choices[max(range(len(full)), key=full.__getitem__)]
    if name == "scienceqa":
        assert any(not q.has_image for q in list(questions.values())[:limit])  # text-only questions ranked too


def test_eval_resumes_and_skips_answered_questions(setup, tmp_path):
    root, data = setup
    args = _eval_args(root, data, "gqa", "base", tmp_path)
    assert main([*args, "--limit", "5"]) == 0
    answers = tmp_path / "answers_generate.jsonl"
    lines = answers.read_text().splitlines(keepends=True)
    assert len(lines) == 5 and json.loads((tmp_path / "result_generate.json").read_text())["counts"]["scored"] == 5
    answers.write_text("".join(lines[:4]) + lines[4][:30])  # a kill mid-line: the cut line is dropped
    assert main(args) == 0
    again = answers.read_text().splitlines(keepends=True)
    assert again[:4] == lines[:4] and len(again) == 20
    assert len({json.loads(line)["question_id"] for line in again}) == 20
    counts = json.loads((tmp_path / "result_generate.json").read_text())["counts"]
    assert (counts["answered_before"], counts["answered_now"], counts["scored"]) == (4, 16, 20)
    assert main(args) == 0
    counts = json.loads((tmp_path / "result_generate.json").read_text())["counts"]
    assert (counts["answered_before"], counts["answered_now"]) == (20, 0)
    assert answers.read_text().splitlines(keepends=True) == again


def test_eval_without_ground_truth_writes_answers_only(setup, tmp_path, capsys):
    root, data = setup
    args = _eval_args(root, data, "vqav2", "base", tmp_path, "--limit", "2")
    at = args.index("--annotations")
    del args[at : at + 2]  # VQAv2 test-dev: scored by the EvalAI server
    assert main(args) == 0
    assert "not scored" in capsys.readouterr().out
    result = json.loads((tmp_path / "result_generate.json").read_text())
    assert result["scores"] is None and result["counts"]["answered_now"] == 2


def test_eval_names_bad_inputs(setup, tmp_path, capsys):
    root, data = setup

    def error(args):
        assert main(args) == 2
        return capsys.readouterr().err

    args = _eval_args(root, data, "vqav2", "base", tmp_path)
    assert "--mode rank needs a multiple-choice benchmark (mmbench, mmbench_cn, mme, pope, scienceqa)" in error(
        [*args, "--mode", "rank"]
    )
    at = args.index("--questions") + 1
    missing = list(args)
    missing[at] = str(tmp_path / "none.jsonl")
    assert f"questions file {tmp_path / 'none.jsonl'} does not exist" in error(missing)

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "image": "x.jpg", "text": "Hi?"}\n{"question_id": 2, "text": "?"\n')
    broken = list(args)
    broken[at] = str(bad)
    assert f"{bad}:2: not a JSON line" in error(broken)
    bad.write_text('{"question_id": 1, "image": "x.jpg"}\n')
    assert f"{bad}:1: missing text" in error(broken)
    bad.write_text('{"question_id": 1000, "image": "nowhere.jpg", "text": "Hi?"}\n')
    assert "nowhere.jpg of question 1000 does not exist" in error(broken)

    unknown = list(args)
    unknown[unknown.index("--benchmark") + 1] = "okvqa"
    assert "unknown benchmark 'okvqa'; expected one of gqa, mmbench" in error(unknown)
    assert "limit must be at least 1, got 0" in error([*args, "--limit", "0"])


def test_the_commands_help_names_every_benchmark(capsys):
    for command in ("eval", "score"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        printed = " ".join(capsys.readouterr().out.split())
        assert all(name in printed for name in BENCHMARKS), printed
