"""POPE: LLaVA's yes/no parsing, per-split precision/recall/F1/accuracy/yes-ratio, and the mean F1."""

from __future__ import annotations

import math

import pytest

from rwkvblocks.metrics import POPE_SPLITS, POPEScores, parse_pope_answer


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("No, there is not.", "no"),
        ("No", "no"),
        ("no", "no"),
        ("There is not a dog in the image.", "no"),
        ("Nope", "yes"),
        ("", "yes"),
        ("Yes", "yes"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("Not really", "yes"),  # "Not" is not one of No / not / no
        ("No.", "no"),
        ("NO", "yes"),
        ("No\nthere is none", "yes"),  # split on single spaces: "No\nthere" is one word
    ],
)
def test_parse_pope_answer(prediction, answer):
    assert parse_pope_answer(prediction) == answer


def _confusion_inputs(split, tp, fp, tn, fn):
    predictions = ["Yes"] * (tp + fp) + ["No"] * (tn + fn)
    labels = ["yes"] * tp + ["no"] * fp + ["no"] * tn + ["yes"] * fn
    return predictions, labels, [split] * len(labels)


def test_per_split_scores_and_mean_f1():
    metric = POPEScores()
    counts = {"adversarial": (3, 1, 4, 2), "random": (5, 0, 4, 1)}
    for split, c in counts.items():
        predictions, labels, splits = _confusion_inputs(split, *c)
        metric.update(predictions, labels=labels, splits=splits)
    scores = metric.compute()
    f1s = []
    for split, (tp, fp, tn, fn) in counts.items():
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        assert scores[f"{split}/precision"] == pytest.approx(precision)
        assert scores[f"{split}/recall"] == pytest.approx(recall)
        assert scores[f"{split}/f1"] == pytest.approx(f1)
        assert scores[f"{split}/accuracy"] == pytest.approx((tp + tn) / (tp + fp + tn + fn))
        assert scores[f"{split}/yes_ratio"] == pytest.approx((tp + fp) / (tp + fp + tn + fn))
    assert not any(key.startswith("popular/") for key in scores)  # a split without questions is not reported
    assert scores["mean_f1"] == pytest.approx(sum(f1s) / 2)


def test_mean_f1_over_all_three_splits():
    metric = POPEScores()
    for split, counts in zip(POPE_SPLITS, [(1, 1, 1, 1), (2, 0, 2, 0), (1, 0, 1, 1)]):
        predictions, labels, splits = _confusion_inputs(split, *counts)
        metric.update(predictions, labels=labels, splits=splits)
    assert metric.compute()["mean_f1"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)


def test_all_no_answers_give_zero_precision_and_f1():
    metric = POPEScores()
    metric.update(["No", "No"], labels=["yes", "no"], splits=["popular", "popular"])
    scores = metric.compute()
    assert (scores["popular/precision"], scores["popular/recall"], scores["popular/f1"]) == (0.0, 0.0, 0.0)
    assert scores["popular/accuracy"] == 0.5 and scores["popular/yes_ratio"] == 0.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_labels_fold_case_and_nothing_scored_is_nan():
    metric = POPEScores()
    assert math.isnan(metric.compute()["mean_f1"])
    metric.update(["Yes"], labels=[" Yes"], splits=["random"])
    assert metric.compute()["random/f1"] == 1.0


def test_bad_input_names_the_argument():
    metric = POPEScores()
    with pytest.raises(ValueError, match=r"splits\[1\] is 'coco'"):
        metric.update(["Yes", "No"], labels=["yes", "no"], splits=["random", "coco"])
    with pytest.raises(ValueError, match=r"labels\[0\] is 'maybe'"):
        metric.update(["Yes"], labels=["maybe"], splits=["random"])
    with pytest.raises(ValueError, match="labels has 1 entries"):
        metric.update(["Yes", "No"], labels=["yes"], splits=["random", "random"])
    assert metric.confusion.sum() == 0
