"""GQA exact match after ``rstrip('.').lower()``; ScienceQA letter extraction and the IMG subset."""

from __future__ import annotations

import math

import pytest

from rwkvblocks.metrics import GQAAccuracy, ScienceQAAccuracy, normalize_gqa_answer, parse_scienceqa_answer


@pytest.mark.parametrize(
    ("prediction", "right"),
    [("Dog.", True), ("dog", True), ("DOG...", True), ("a dog", False), ("dog ", False), ("dogs", False)],
)
def test_gqa_exact_match(prediction, right):
    metric = GQAAccuracy()
    metric.update([prediction], ["dog"])
    assert metric.compute()["accuracy"] == float(right)
    assert (normalize_gqa_answer(prediction) == "dog") is right


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_gqa_accuracy_and_bad_input():
    metric = GQAAccuracy()
    assert math.isnan(metric.compute()["accuracy"])
    metric.update(["Yes.", "No", "left"], ["yes", "no", "right"])
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="answers has 1 entries"):
        metric.update(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a string"):
        metric.update(["a"], [1])


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("A", "A"),
        ("E", "E"),
        ("B. A magnet attracts iron.", "B"),
        ("C. ", "C"),
        ("The answer is C.", "C"),
        ("Because it floats. The answer is D.", "D"),
        ("The answer is C, since", "C"),  # upstream's "." after the letter matches any character
        ("The answer is C", None),  # ... but not the end of the text
        ("The answer is C. No wait, the answer is D. The answer is D.", None),  # more than one match
        ("the answer is C.", None),
        ("The answer is F.", None),  # no option F
        ("F", None),
        ("b", None),
        (" A", None),
        ("A\n", None),
        ("(A)", None),
        ("A.", None),  # too short for "X. "
        ("B.A", None),
        ("", None),
    ],
)
def test_scienceqa_letter_extraction(prediction, letter):
    assert parse_scienceqa_answer(prediction) == letter


def test_scienceqa_overall_and_image_accuracy():
    metric = ScienceQAAccuracy()
    metric.update(
        ["A", "B. cat", "The answer is C.", "D", "I do not know", "C"],
        answers=[0, 1, 1, 3, 0, 2],
        has_image=[True, False, True, True, True, False],
    )
    scores = metric.compute()
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["img_accuracy"] == pytest.approx(2 / 4)  # right: A, D; wrong: C (answer B), unreadable


def test_scienceqa_without_image_questions_has_nan_img_accuracy():
    metric = ScienceQAAccuracy()
    metric.update(["A"], answers=[0], has_image=[False])
    assert metric.compute()["accuracy"] == 1.0
    assert math.isnan(metric.compute()["img_accuracy"])


def test_scienceqa_bad_input_names_the_argument():
    metric = ScienceQAAccuracy()
    with pytest.raises(ValueError, match=r"answers\[1\] is 5"):
        metric.update(["A", "B"], answers=[0, 5], has_image=[True, True])
    with pytest.raises(ValueError, match=r"answers\[0\] is 'A'"):
        metric.update(["A"], answers=["A"], has_image=[True])
    with pytest.raises(ValueError, match="has_image has 1 entries but predictions has 2"):
        metric.update(["A", "B"], answers=[0, 1], has_image=[True])
    assert metric.counts.sum() == 0
