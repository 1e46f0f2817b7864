"""VQAv2 / TextVQA: the EvalAI answer processor and the leave-one-out soft score, from the documented rules."""

from __future__ import annotations

import pytest

from rwkvblocks.metrics import TextVQAAccuracy, VQAv2Accuracy, normalize_vqa_answer

METRICS = [VQAv2Accuracy, TextVQAAccuracy]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # number word, final period
        ("1,000", "1000"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("5.", "5"),
        ("dont", "don't"),
        ("Isnt it", "isn't it"),
        ("The cat", "cat"),
        ("an apple and a pear", "apple and pear"),
        ("the", ""),
        ("none", "0"),
        ("TEN", "10"),
        ("Yes\n", "yes"),
        ("yes\tplease", "yes please"),
        ("hello?", "hello"),
        ("red-white", "red white"),  # a mark between letters becomes a space
        ("red - white", "red white"),  # a mark next to a space is deleted
        ("(left)", "left"),
        ("dog's bone", "dog 's bone"),
        ("  padded  ", "padded"),
        ("y" + "." * 40, "y" + "." * 8),  # upstream's re.sub count of 32 (re.UNICODE) removes 32 periods at most
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize("cls", METRICS)
@pytest.mark.parametrize(("k", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_score_by_number_of_agreeing_humans(cls, k, score):
    metric = cls()
    metric.update(["cat"], [["cat"] * k + ["dog"] * (10 - k)])
    assert metric.compute()["accuracy"] == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize("cls", METRICS)
def test_accuracy_is_the_mean_over_questions(cls):
    metric = cls()
    metric.update(["Two", "blue", "red"], [["2"] * 10, ["blue"] * 2 + ["navy"] * 8, ["green"] * 10])
    assert metric.compute()["accuracy"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)


@pytest.mark.parametrize("cls", METRICS)
def test_the_prediction_is_normalised(cls):
    metric = cls()
    metric.update(["The Two dogs."], [["2 dogs"] * 10])
    assert metric.compute()["accuracy"] == 1.0


def test_textvqa_normalises_the_human_answers_too():
    metric = TextVQAAccuracy()
    metric.update(["two"], [["Two."] * 10])
    assert metric.compute()["accuracy"] == 1.0


def test_vqav2_leaves_unanimous_human_answers_as_they_are():
    # vqaEval.py: ten equal human answers are compared without any processing, so "two" never matches "2"
    metric = VQAv2Accuracy()
    metric.update(["two"], [["two"] * 10])
    assert metric.compute()["accuracy"] == 0.0


def test_vqav2_gives_disagreeing_human_answers_the_punctuation_step_only():
    metric = VQAv2Accuracy()
    metric.update(["1,000", "dog", "two"], [["1,000"] * 3 + ["many"] * 7, ["dog!"] * 3 + ["cat"] * 7, ["two", "2"] * 5])
    # "1,000" -> "1000" (comma between digits), "dog!" -> "dog ", "two" keeps its number word
    scores = [0.9, 0.0, 1.0]
    assert metric.compute()["accuracy"] == pytest.approx(sum(scores) / 3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
@pytest.mark.parametrize("cls", METRICS)
def test_nothing_scored_is_nan(cls):
    import math

    assert math.isnan(cls().compute()["accuracy"])


@pytest.mark.parametrize("cls", METRICS)
def test_bad_input_names_the_argument(cls):
    metric = cls()
    with pytest.raises(ValueError, match=r"answers\[1\] has 9 human answers"):
        metric.update(["a", "b"], [["a"] * 10, ["b"] * 9])
    with pytest.raises(ValueError, match="answers has 1 entries but predictions has 2"):
        metric.update(["a", "b"], [["a"] * 10])
    with pytest.raises(ValueError, match="predictions must be a list of strings"):
        metric.update("a", [["a"] * 10])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a list"):
        metric.update(["a"], ["a" * 10])
    assert metric.matches.sum() == 0
