"""The eight benchmark formats: questions read as LLaVA's scripts read them, and the ground truth wired to the
metrics so that answers files written by LLaVA (or upstream VisualRWKV) score as they should; bad files named."""

from __future__ import annotations

import json

import pytest

from assemblies.cli import main
from assemblies.evaluation import BENCHMARKS, Question, get_benchmark, score_answers, score_file
from assemblies.evaluation.benchmarks import mme_question, textvqa_question
from rwkvblocks.metrics import METRICS, PROMPT_SUFFIXES

from .data import SHORT, make_benchmark

PERFECT = {
    "vqav2": 1.0,
    "gqa": 1.0,
    "textvqa": 1.0,
    "pope": 1.0,
    "mme": 600.0,  # existence, artwork and OCR: 200 each
    "scienceqa": 1.0,
    "mmbench": 1.0,
    "mmbench_cn": 1.0,
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return {name: make_benchmark(name, root / name) for name in BENCHMARKS}


def _llava_answers(path, truth, wrong=()):
    """An answers file as LLaVA's model_vqa*.py write it: the prompt is the question text, metadata empty."""
    rows = [
        {
            "question_id": qid,
            "prompt": text,
            "text": "Nope, wrong." if i in wrong else answer,
            "answer_id": f"uuid{i}",
            "model_id": "llava-v1.5-7b",
            "metadata": {},
        }
        for i, (qid, text, answer) in enumerate(truth)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_every_metric_has_a_benchmark_with_its_suffix():
    assert sorted(BENCHMARKS) == sorted(METRICS)
    for name, bench in BENCHMARKS.items():
        assert bench.suffix == PROMPT_SUFFIXES[name] and bench.metric_class is METRICS[name]
        assert bench.headline in ("accuracy", "img_accuracy", "mean_f1", "perception")


@pytest.mark.parametrize("name", sorted(PERFECT))
def test_questions_are_read_with_prompt_suffix_and_choices(generated, name):
    bench, g = get_benchmark(name), generated[name]
    questions = bench.read_questions(g.questions)
    assert len(questions) == 20
    assert [(q.question_id, q.text) for q in questions] == [(qid, text) for qid, text, _ in g.truth]
    for q in questions:
        prompt = bench.prompt(q)
        assert prompt.endswith(bench.suffix) and prompt.count(bench.suffix.strip()) == 1
        assert "<image>" not in prompt
        assert bench.multiple_choice == bool(q.choices)
        assert Question.from_record(json.loads(json.dumps(q.to_record()))).to_record() == q.to_record()
    if name in ("mmbench", "mmbench_cn"):
        assert all(q.image_data and q.image is None for q in questions)  # base64 in the tsv
        assert {len(q.choices) for q in questions} == {2, 3, 4}  # options up to the first empty cell
    elif name == "scienceqa":
        assert sum(q.has_image for q in questions) == 15 and {len(q.choices) for q in questions} == {2, 3, 4}
    else:
        assert all(q.image for q in questions)


@pytest.mark.parametrize("name", sorted(PERFECT))
def test_llava_answers_with_the_right_answers_score_perfectly(generated, name, tmp_path, capsys):
    bench, g = get_benchmark(name), generated[name]
    answers = _llava_answers(tmp_path / "answers.jsonl", g.truth)
    out = tmp_path / "result.json"
    args = ["score", "--benchmark", name, "--answers", str(answers), "--annotations", str(g.annotations)]
    assert main([*args, "--questions", str(g.questions), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["headline"] == {"name": bench.headline, "value": PERFECT[name]}
    assert result["protocol"]["prompt_suffix"] == bench.suffix and result["model"]["id"] == "llava-v1.5-7b"
    assert result["files"]["answers"] == "answers.jsonl" and result["counts"]["answers"] == 20
    assert bench.headline in capsys.readouterr().out
    if name != "pope":  # LLaVA's answers carry everything else the scorers need: the questions file is optional
        assert score_file(name, answers, annotations=g.annotations)["headline"]["value"] == PERFECT[name]


def test_wrong_answers_count_as_the_protocols_say(generated, tmp_path):
    def score(name, wrong):
        g = generated[name]
        answers = _llava_answers(tmp_path / f"{name}.jsonl", g.truth, wrong)
        return score_file(name, answers, annotations=g.annotations, questions=g.questions)["scores"]

    # MMBench: rows 0 and 1 are one question and its circular copy; one wrong copy fails the question
    assert score("mmbench", {1})["accuracy"] == pytest.approx(0.9)
    # MME: one wrong question of the 6 existence ones (3 images) costs acc and that image's acc+
    mme = score("mme", {0})
    assert mme["existence/acc"] == pytest.approx(5 / 6) and mme["existence/acc_plus"] == pytest.approx(2 / 3)
    # POPE: "Nope, wrong." reads as "yes" (no "no" word): question 1 (label no) is a false positive in popular
    pope = score("pope", {1})
    assert pope["popular/precision"] < 1 and pope["adversarial/f1"] == pope["random/f1"] == 1.0
    # ScienceQA: question 3 has no image, so it counts in accuracy only
    sqa = score("scienceqa", {3})
    assert sqa["accuracy"] == pytest.approx(19 / 20) and sqa["img_accuracy"] == 1.0


def test_mmbench_all_rounds_answers_are_circular_copies(generated, tmp_path):
    """model_vqa_mmbench.py --all-rounds: one question id, a round_id and the options as shown that round."""
    g = generated["mmbench"]
    questions = get_benchmark("mmbench").read_questions(g.questions)
    first = next(q for q in questions if len(q.choices) == 3)
    options = list(first.fields["options"].values())
    right = g.truth[[q.question_id for q in questions].index(first.question_id)][2]
    right_text = first.fields["options"][right]
    rows = []
    for round_id in range(3):
        shown = options[round_id:] + options[:round_id]
        letter = "ABC"[shown.index(right_text)]
        rows.append({"question_id": first.question_id, "round_id": round_id, "text": letter, "options": shown})
    truth = get_benchmark("mmbench").read_annotations(None, g.questions)
    assert score_answers("mmbench", rows, truth, questions=questions)["accuracy"] == 1.0
    rows[2]["text"] = "ABC"[(("ABC".index(rows[2]["text"])) + 1) % 3]
    assert score_answers("mmbench", rows, truth, questions=questions)["accuracy"] == 0.0


def test_upstream_visualrwkv_answers_score_with_the_questions_file(generated, tmp_path):
    """Upstream's evaluate.py writes the whole formatted prompt and no answer_id; ids repeat in TextVQA."""
    g = generated["textvqa"]
    rows = [
        {"question_id": qid, "prompt": f"User: <image>\n{text}\n\nAssistant:", "text": answer, "model_id": "v6"}
        for qid, text, answer in g.truth
    ]
    answers = tmp_path / "upstream.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = score_file("textvqa", answers, annotations=g.annotations, questions=g.questions)
    assert result["headline"]["value"] == 1.0


def test_question_extraction_rules():
    assert textvqa_question("OCR tokens: a, b. Question: What is it? Short answer: ") == "what is it?"
    assert textvqa_question("Reference OCR token: x\nWhat is it?\nAnswer briefly.") == "what is it?"
    assert textvqa_question("What is it?" + SHORT) == "what is it?"
    assert mme_question("Is it red? Please answer yes or no." + SHORT) == "Is it red? Please answer yes or no."
    assert mme_question("Is it red?") == "Is it red? Please answer yes or no."
    sqa = get_benchmark("scienceqa")
    text = "Context: N/A\nQuestion: Which?\nOptions: (A) a cat (B) a (C) dog"
    assert sqa._choices({"text": text}) == ("A", "B", "C")
    assert sqa._choices({"text": "Question: no options here"}) == ()


def test_bad_files_are_named(generated, tmp_path, capsys):
    g = generated["gqa"]
    score = ["score", "--benchmark", "gqa", "--annotations", str(g.annotations), "--answers"]

    assert main([*score, str(tmp_path / "missing.jsonl")]) == 2
    assert f"answers file {tmp_path / 'missing.jsonl'} does not exist" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "20968000", "text": "red"}\n{"question_id": 1, "text": \n')
    assert main([*score, str(bad)]) == 2
    assert f"{bad}:2: not a JSON line" in capsys.readouterr().err

    bad.write_text('{"question_id": "20968000"}\n')
    assert main([*score, str(bad)]) == 2
    assert f"{bad}:1: missing text" in capsys.readouterr().err

    stray = _llava_answers(tmp_path / "stray.jsonl", [*g.truth[:3], ("999", "What?", "red"), ("998", "?", "x")])
    assert main([*score, str(stray)]) == 2
    assert "2 answered question ids have no ground truth in" in capsys.readouterr().err

    assert main(["score", "--benchmark", "coco", "--answers", str(stray)]) == 2
    assert "unknown benchmark 'coco'; expected one of gqa, mmbench, mmbench_cn, mme, pope" in capsys.readouterr().err

    assert main(["score", "--benchmark", "gqa", "--answers", str(stray)]) == 2
    assert "gqa needs --annotations" in capsys.readouterr().err

    assert main([*score[:-3], "--annotations", str(tmp_path / "nowhere.json"), "--answers", str(stray)]) == 2
    assert f"annotations file {tmp_path / 'nowhere.json'} does not exist" in capsys.readouterr().err


def test_bad_ground_truth_is_named(generated, tmp_path):
    pope = generated["pope"]
    answers = _llava_answers(tmp_path / "pope.jsonl", pope.truth)
    with pytest.raises(ValueError, match="no category"):
        score_file("pope", answers, annotations=pope.annotations)  # LLaVA's POPE answers need the questions
    shuffled = tmp_path / "coco"
    shuffled.mkdir()
    for file in pope.annotations.iterdir():
        lines = file.read_text().splitlines()
        (shuffled / file.name).write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    with pytest.raises(ValueError, match="not in the same order"):
        score_file("pope", answers, annotations=shuffled, questions=pope.questions)

    mmbench = generated["mmbench"]
    header, *rows = mmbench.questions.read_text(encoding="utf-8").splitlines()
    cut = tmp_path / "test.tsv"
    cells = [r.split("\t") for r in rows]
    for row in cells:
        row[7] = "nan"  # the test split: answers kept by the server
    cut.write_text("\n".join([header] + ["\t".join(r) for r in cells]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.tsv:2: no answer"):
        get_benchmark("mmbench").read_annotations(None, cut)

    mme = tmp_path / "MME"
    (mme / "OCR").mkdir(parents=True)
    (mme / "OCR" / "1.txt").write_text("Is it? Please answer yes or no.\n")
    with pytest.raises(ValueError, match=r"1\.txt:1: expected 'question<TAB>answer'"):
        get_benchmark("mme").read_annotations(mme)

    vqa = tmp_path / "vqa.json"
    vqa.write_text(json.dumps({"annotations": [{"question_id": 1, "answers": [{"answer": "red"}] * 9}]}))
    truth = get_benchmark("vqav2").read_annotations(vqa)
    with pytest.raises(ValueError, match="question 1: answers.* has 9 human answers"):
        score_answers("vqav2", [{"question_id": 1, "text": "red"}], truth)
