"""MME: answer parsing, acc and acc+ paired by image id (not line order), the Perception / Cognition sums."""

from __future__ import annotations

import random

import pytest

from rwkvblocks.metrics import MME_COGNITION, MME_PERCEPTION, MMEScore, parse_mme_answer


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("Yes", "yes"),
        ("NO", "no"),
        ("  yes \n", "yes"),
        ("Yes, there is.", "yes"),
        ("No, it is not.", "no"),
        ("Not at all", "no"),
        ("None", "no"),
        ("yesno", "yes"),  # "yes" is looked for first
        ("I think yes", "other"),  # not within the first 4 characters
        ("The answer is no", "other"),
        ("", "other"),
    ],
)
def test_parse_mme_answer(prediction, answer):
    assert parse_mme_answer(prediction) == answer


def test_subtask_names_are_the_calculation_scripts():
    assert len(MME_PERCEPTION) == 10 and len(MME_COGNITION) == 4
    assert "OCR" in MME_PERCEPTION and "commonsense_reasoning" in MME_COGNITION


# (subtask, image, prediction, answer); image b has one question wrong, d both, so acc+ differs from acc
ROWS = [
    ("color", "a.jpg", "Yes", "Yes"),
    ("color", "a.jpg", "No", "No"),
    ("color", "b.jpg", "Yes", "Yes"),
    ("color", "b.jpg", "Yes", "No"),
    ("color", "c.jpg", "no", "No"),
    ("color", "c.jpg", "yes", "Yes"),
    ("color", "d.jpg", "Maybe", "Yes"),
    ("color", "d.jpg", "Yes", "No"),
    ("numerical_calculation", "a.jpg", "Yes", "Yes"),
    ("numerical_calculation", "a.jpg", "Yes", "No"),
    ("numerical_calculation", "e.jpg", "No", "No"),
    ("numerical_calculation", "e.jpg", "Yes", "Yes"),
]


def _score(rows):
    metric = MMEScore()
    subtasks, images, predictions, answers = (list(c) for c in zip(*rows))
    metric.update(predictions, answers=answers, subtasks=subtasks, image_ids=images)
    return metric.compute()


def test_acc_acc_plus_and_totals():
    scores = _score(ROWS)
    assert scores["color/acc"] == 5 / 8 and scores["color/acc_plus"] == 2 / 4
    assert scores["color"] == pytest.approx(62.5 + 50.0)
    # numerical_calculation's a.jpg is its own pair: the color a.jpg pair does not help it
    assert scores["numerical_calculation/acc"] == 3 / 4 and scores["numerical_calculation/acc_plus"] == 1 / 2
    assert scores["numerical_calculation"] == pytest.approx(75.0 + 50.0)
    assert scores["perception"] == pytest.approx(112.5) and scores["cognition"] == pytest.approx(125.0)
    assert "existence" not in scores


def test_pairing_is_by_image_id_not_line_order():
    shuffled = ROWS[:]
    random.Random(0).shuffle(shuffled)
    assert _score(shuffled) == _score(ROWS)
    # pairing consecutive lines of the shuffled order would give another acc+
    consecutive = [(s, f"pair{i // 2}", p, a) for i, (s, _, p, a) in enumerate(shuffled)]
    assert _score(consecutive) != _score(ROWS)


def test_full_marks():
    rows = [(t, f"{t}.jpg", a, a) for t in MME_PERCEPTION + MME_COGNITION for a in ("Yes", "No")]
    scores = _score(rows)
    assert scores["perception"] == 2000.0 and scores["cognition"] == 800.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_nothing_scored():
    assert MMEScore().compute() == {"perception": 0.0, "cognition": 0.0}


def test_bad_input_names_the_argument():
    metric = MMEScore()
    with pytest.raises(ValueError, match=r"subtasks\[0\] is 'ocr'"):
        metric.update(["Yes"], answers=["Yes"], subtasks=["ocr"], image_ids=["a"])
    with pytest.raises(ValueError, match=r"answers\[0\] is 'Maybe'"):
        metric.update(["Yes"], answers=["Maybe"], subtasks=["OCR"], image_ids=["a"])
    with pytest.raises(ValueError, match="image_ids has 0 entries"):
        metric.update(["Yes"], answers=["Yes"], subtasks=["OCR"], image_ids=[])
    assert metric.subtask == []
