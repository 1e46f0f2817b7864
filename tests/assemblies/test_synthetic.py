"""The synthetic shapes VQA generator: answers follow from the scene, splits are disjoint, files are LLaVA format."""

import json
import random

import pytest

from assemblies.synthetic import COLOURS, QUESTION_TYPES, SHAPES, Obj, ask, caption, draw, make_scene, write_split


def _scene():
    return [Obj("red", "circle", 1, 1), Obj("blue", "square", 2, 3), Obj("red", "triangle", 4, 2)]


def test_answers_follow_from_the_scene():
    scene = _scene()
    rng = random.Random(0)
    for _ in range(50):
        q = ask(scene, "colour_at", rng)
        row, col = (int(s) for s in q["question"].replace(",", "").replace("?", "").split()[-3::2])
        assert q["answer"] == next(o.colour for o in scene if (o.row, o.col) == (row, col))
        q = ask(scene, "shape_of", rng)
        assert q == {"type": "shape_of", "question": "What shape is the blue one?", "answer": "square"}  # red twice
        q = ask(scene, "count", rng)
        shape = q["question"].split()[2][:-2]
        assert q["answer"] == str(sum(o.shape == shape for o in scene))
    above = {ask(scene, "above", random.Random(i))["question"]: None for i in range(200)}
    assert "Is the red circle above the blue square?" in above
    assert ask([Obj("red", "circle", 1, 1), Obj("blue", "circle", 1, 2)], "above", rng) is None  # one row only
    assert ask(scene, "exists", random.Random(3))["answer"] in ("yes", "no")
    with pytest.raises(ValueError, match="unknown question type"):
        ask(scene, "colour", rng)


def test_yes_no_balanced_and_relations_correct():
    rng = random.Random(1)
    answers = {"exists": [], "left_of": [], "above": []}
    for _ in range(400):
        scene = make_scene(rng)
        for kind in answers:
            q = ask(scene, kind, rng)
            if q is None:
                continue
            answers[kind].append(q["answer"])
            if kind == "above":
                a, b = (next(o for o in scene if o.name == n) for n in q["question"][7:-1].split(" above the "))
                assert (q["answer"] == "yes") == (a.row < b.row)
    for kind, got in answers.items():
        assert 0.35 < got.count("yes") / len(got) < 0.65, kind


def test_scene_and_image():
    scene = make_scene(random.Random(2), objects=(5, 5))
    assert len({(o.row, o.col) for o in scene}) == 5 and len({o.name for o in scene}) == 5
    image = draw(scene, size=64, grid=4)
    assert image.size == (64, 64)
    for o in scene:  # each object's colour at the centre of its own cell (its 16 px patch)
        assert image.getpixel(((o.col - 1) * 16 + 8, (o.row - 1) * 16 + 10)) == COLOURS[o.colour]
    assert caption(scene).count(" at row ") == 5
    with pytest.raises(ValueError, match="multiple of grid"):
        draw(scene, size=65)
    with pytest.raises(ValueError, match="do not fit"):
        make_scene(random.Random(0), grid=2, objects=(3, 5))


def test_write_split_files_and_disjoint_splits(tmp_path):
    train = write_split(tmp_path, "train", 30, seed=4, questions_per_image=3)
    test = write_split(tmp_path, "test", 10, seed=4)
    convs = json.loads(train["conversations"].read_text())
    assert len(convs) == 30 and convs[0]["conversations"][0]["value"].startswith("<image>\n")
    assert all(len(c["conversations"]) == 6 for c in convs)  # three question/answer turns
    assert sum("<image>" in t["value"] for c in convs for t in c["conversations"]) == 30
    lines = [json.loads(x) for x in train["questions"].read_text().splitlines()]
    assert {q["type"] for q in lines} <= set(QUESTION_TYPES) and len(lines) == 90
    assert all((train["images"] / q["image"]).is_file() for q in lines)
    caps = json.loads(train["captions"].read_text())
    assert caps[0]["conversations"][1]["value"].endswith(".")

    def layouts(paths):
        return {c["conversations"][1]["value"] for c in json.loads(paths["captions"].read_text())}

    assert not layouts(train) & layouts(test)
    again = write_split(tmp_path / "again", "train", 30, seed=4, questions_per_image=3)
    assert again["conversations"].read_text() == train["conversations"].read_text()  # seeded
    with pytest.raises(ValueError, match="unknown split"):
        write_split(tmp_path, "dev", 1)
    with pytest.raises(ValueError, match="unknown question types"):
        write_split(tmp_path, "train", 1, types=("colour",))
    assert set(SHAPES) == {"square", "circle", "triangle"}
