"""MMBench: VLMEvalKit-style rule-based option extraction and circular evaluation."""

from __future__ import annotations

import math

import pytest

from rwkvblocks.metrics import CIRCULAR_STRIDE, MMBenchAccuracy, parse_mmbench_answer

OPTIONS = {"A": "a cat", "B": "a dog", "C": "a red bird", "D": "a fish"}


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B)", "B"),
        ("[B]", "B"),
        ("B: a dog", "B"),
        ("**B**", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("It is a dog.", "B"),  # no letter: the one option text it contains
        ("IT'S a DOG", "B"),  # text matching ignores case
        ("A dog", "A"),  # a capital article is the letter A, as upstream (VERBOSE unset)
        ("b", None),  # letters do not
        ("A or B", None),  # two letters, and no option text
        ("a bird", None),  # "a red bird" is not in it
        ("a cat or a dog", None),  # two option texts
        ("E", None),  # not an option
        ("Z", None),
        ("Cannot determine the answer, maybe a dog", None),  # a refusal stops the text match
        ("", None),
    ],
)
def test_parse_mmbench_answer(prediction, letter):
    assert parse_mmbench_answer(prediction, OPTIONS) == letter


def test_options_may_be_a_list_and_chinese_text_matches():
    assert parse_mmbench_answer("狗", ["猫", "狗"]) == "B"
    assert parse_mmbench_answer("答案是 A", ["猫", "狗"]) == "A"
    assert parse_mmbench_answer("答案是A。", ["猫", "狗"]) is None  # no separator around the letter, no option text


def _copies(question, correct_letters, predictions):
    texts = ["cat", "dog", "bird", "fish"]
    rows = []
    for shift, prediction in enumerate(predictions):
        options = texts[shift:] + texts[:shift]
        rows.append((prediction, "ABCD"[options.index(correct_letters)], options, question + shift * CIRCULAR_STRIDE))
    return rows


def _accuracy(rows):
    metric = MMBenchAccuracy()
    predictions, answers, options, indices = (list(c) for c in zip(*rows))
    metric.update(predictions, answers=answers, options=options, indices=indices)
    return metric.compute()["accuracy"]


def test_one_wrong_copy_fails_the_question():
    # "dog" sits at B, A, D, C in the four shifts
    assert _accuracy(_copies(3, "dog", ["B", "A", "D", "C"])) == 1.0
    assert _accuracy(_copies(3, "dog", ["B", "A", "B", "C"])) == 0.0
    assert _accuracy(_copies(3, "dog", ["B", "A", "D", "C"]) + _copies(4, "dog", ["dog", "dog", "B", "dog"])) == 0.5


def test_copies_are_grouped_by_index_modulo_a_million_in_any_order():
    rows = _copies(3, "dog", ["B", "A", "D", "C"]) + _copies(4, "fish", ["D", "C", "B", "B"])
    assert _accuracy(rows) == 0.5
    assert _accuracy(rows[::-1]) == 0.5
    assert _accuracy(rows[1::2]) == 0.5  # a question counts with the copies that were scored
    assert _accuracy(rows[::2]) == 1.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_nothing_scored_is_nan():
    assert math.isnan(MMBenchAccuracy().compute()["accuracy"])


def test_bad_input_names_the_argument():
    metric = MMBenchAccuracy()
    with pytest.raises(ValueError, match=r"answers\[0\] is 'C'"):
        metric.update(["A"], answers=["C"], options=[["x", "y"]], indices=[0])
    with pytest.raises(ValueError, match=r"indices\[0\] is -1"):
        metric.update(["A"], answers=["A"], options=[["x", "y"]], indices=[-1])
    with pytest.raises(ValueError, match=r"indices\[0\] is 'q1'"):
        metric.update(["A"], answers=["A"], options=[["x", "y"]], indices=["q1"])
    with pytest.raises(ValueError, match=r"options\[0\] is empty"):
        metric.update(["A"], answers=["A"], options=[[]], indices=[0])
    with pytest.raises(ValueError, match=r"options\[0\]\['B'\] is ''"):
        metric.update(["A"], answers=["A"], options=[{"A": "x", "B": ""}], indices=[0])
    with pytest.raises(ValueError, match="options has 2 entries"):
        metric.update(["A"], answers=["A"], options=[["x"], ["y"]], indices=[0])
    assert metric.group == []
