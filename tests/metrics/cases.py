"""One small, varied input set per metric; the invariance tests and the torchrun worker split them up.

Rows are shuffled with a fixed seed so that the questions of one MME image or one MMBench group are spread over
batches and ranks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rwkvblocks.metrics import (
    GQAAccuracy,
    MMBenchAccuracy,
    MMEScore,
    POPEScores,
    ScienceQAAccuracy,
    TextVQAAccuracy,
    VQAv2Accuracy,
)


def take(inputs: dict[str, list], rows: Sequence[int]) -> dict[str, list]:
    """The rows ``rows`` of every field of ``inputs``."""
    return {key: [values[i] for i in rows] for key, values in inputs.items()}


def _shuffled(inputs: dict[str, list], seed: int) -> dict[str, list]:
    order = list(range(len(inputs["predictions"])))
    random.Random(seed).shuffle(order)
    return take(inputs, order)


def _vqa() -> dict[str, list]:
    humans = [
        ["2"] * 3 + ["two"] * 2 + ["3"] * 5,
        ["yes"] * 10,
        ["red and white"] * 4 + ["red"] * 6,
        ["don't know"] * 1 + ["dont know"] * 9,
        ["1,000"] * 2 + ["1000"] * 8,
        ["cat"] * 10,
        ["the dog"] * 5 + ["dog"] * 5,
    ]
    predictions = ["Two", "Yes.", "red and white", "dont know", "1,000", "Dog", "A dog."]
    return {"predictions": predictions, "answers": humans}


def _gqa() -> dict[str, list]:
    return {
        "predictions": ["Dog.", "a dog", "Yes", "no", "Left.", "blue ", "TABLE"],
        "answers": ["dog", "dog", "yes", "no", "right", "blue", "table"],
    }


def _scienceqa() -> dict[str, list]:
    return {
        "predictions": [
            "A",
            "B. magnet",
            "The answer is C.",
            "D",
            "E",
            "(A)",
            "The answer is B. The answer is A.",
            "C",
        ],
        "answers": [0, 1, 2, 0, 4, 0, 1, 2],
        "has_image": [True, True, False, True, False, True, True, False],
    }


def _pope() -> dict[str, list]:
    predictions = ["Yes", "No, there is not.", "Yes", "There is a dog.", "No", "no", "Nope", "", "Yes", "not"]
    labels = ["yes", "no", "no", "yes", "yes", "no", "no", "yes", "yes", "no"]
    splits = ["random", "random", "popular", "popular", "adversarial", "adversarial", "random", "popular"] + [
        "adversarial",
        "random",
    ]
    return _shuffled({"predictions": predictions, "labels": labels, "splits": splits}, seed=1)


def _mme() -> dict[str, list]:
    rows = []
    spec = [  # subtask, image, (prediction, answer) for its two questions
        ("existence", "a.jpg", ("Yes", "Yes"), ("No", "No")),
        ("existence", "b.jpg", ("Yes", "No"), ("Yes", "Yes")),
        ("count", "a.jpg", ("No", "No"), ("Maybe", "Yes")),
        ("count", "c.jpg", ("yes, two", "Yes"), ("no.", "No")),
        ("OCR", "d.jpg", ("No", "Yes"), ("No", "No")),
        ("code_reasoning", "e.png", ("Yes", "Yes"), ("No", "No")),
        ("code_reasoning", "f.png", ("Yes", "Yes"), ("Yes", "No")),
        ("text_translation", "g.png", ("I don't know", "No"), ("Yes", "Yes")),
    ]
    for subtask, image, *questions in spec:
        for prediction, answer in questions:
            rows.append((prediction, answer, subtask, image))
    predictions, answers, subtasks, images = (list(column) for column in zip(*rows))
    inputs = {"predictions": predictions, "answers": answers, "subtasks": subtasks, "image_ids": images}
    return _shuffled(inputs, seed=2)


def _mmbench() -> dict[str, list]:
    texts = ["cat", "dog", "bird", "fish"]
    rows = []
    # question 5: every copy right; question 6: the third copy wrong; question 7: two options, both copies right
    for shift in range(4):
        options = texts[shift:] + texts[:shift]
        letter = "ABCD"[options.index("dog")]
        rows.append((letter, letter, options, 5 + shift * 1_000_000))
        rows.append((letter if shift != 2 else "A", letter, options, 6 + shift * 1_000_000))
    rows.append(("B. blue", "B", {"A": "red", "B": "blue"}, 7))
    rows.append(("It is blue.", "A", {"A": "blue", "B": "red"}, 1_000_007))
    rows.append(("I cannot tell.", "A", ["left", "right"], 8))  # question 8: wrong, asked once
    predictions, answers, options, indices = (list(column) for column in zip(*rows))
    inputs = {"predictions": predictions, "answers": answers, "options": options, "indices": indices}
    return _shuffled(inputs, seed=3)


CASES = {
    "vqav2": (VQAv2Accuracy, _vqa()),
    "textvqa": (TextVQAAccuracy, _vqa()),
    "gqa": (GQAAccuracy, _gqa()),
    "scienceqa": (ScienceQAAccuracy, _scienceqa()),
    "pope": (POPEScores, _pope()),
    "mme": (MMEScore, _mme()),
    "mmbench": (MMBenchAccuracy, _mmbench()),
}
