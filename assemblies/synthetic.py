"""Synthetic visual question answering: coloured shapes on a grid, questions that need the image and the question.

Each image is ``size`` pixels square, split into a ``grid x grid`` board of cells; a few cells hold one shape
(a colour from ``COLOURS``, a kind from ``SHAPES``), drawn inside its cell so that a vision transformer whose
patch is one cell sees each object in one patch. Questions (``QUESTION_TYPES``), every answer a word or a number:

- ``colour_at``: "What colour is at row 2, column 3?" (one object among many, named by position);
- ``shape_of``: "What shape is the red one?" (one object among many, named by colour; colours asked are unique);
- ``count``: "How many circles?" (0 ... the object count);
- ``exists``: "Is there a blue square?" (yes / no, balanced);
- ``left_of``: "Is the red circle left of the blue square?" (yes / no; objects in different columns);
- ``above``: "Is the red circle above the blue square?" (yes / no; objects in different rows: the relation a
  column-wise scan reads in order).

``write_split`` writes PNG images and LLaVA-format JSON (several questions per image, as multi-turn
conversations), a caption file (stage 1: every object and its cell, in reading order) and a question file
(one line per question, with its type and answer). Splits drawn with different ``split`` names never share a
scene: each scene's layout is hashed and a split keeps only the layouts that hash into it.

Example:
    >>> import random
    >>> scene = make_scene(random.Random(0))
    >>> q = ask(scene, "count", random.Random(1))
    >>> q["type"], q["answer"].isdigit()
    ('count', True)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COLOURS", "Obj", "QUESTION_TYPES", "SHAPES", "ask", "caption", "draw", "make_scene", "write_split"]

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "white": (250, 250, 250),
}
SHAPES = ("square", "circle", "triangle")
QUESTION_TYPES = ("colour_at", "shape_of", "count", "exists", "left_of", "above")
_SPLITS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # percent of the layout hash space


@dataclass(frozen=True)
class Obj:
    """One shape: its colour, its kind and its cell (``row``, ``col`` from 1)."""

    colour: str
    shape: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def make_scene(rng: random.Random, grid: int = 4, objects: tuple[int, int] = (3, 5)) -> list[Obj]:
    """Objects in distinct cells; no two share both colour and shape (so "the red circle" names one)."""
    if grid < 2 or not 1 <= objects[0] <= objects[1] <= grid * grid:
        raise ValueError(f"grid={grid} and objects={objects} do not fit: need 1 <= min <= max <= grid * grid")
    n = rng.randint(*objects)
    cells = rng.sample([(r, c) for r in range(1, grid + 1) for c in range(1, grid + 1)], n)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    return sorted((Obj(c, s, r, col) for (c, s), (r, col) in zip(kinds, cells)), key=lambda o: (o.row, o.col))


def draw(scene: Sequence[Obj], size: int = 64, grid: int = 4, rng: random.Random | None = None):
    """A PIL image of ``scene`` (grey background; each shape fills about 3/4 of its cell, jittered by ``rng``)."""
    from PIL import Image, ImageDraw

    if size % grid:
        raise ValueError(f"size={size} must be a multiple of grid={grid}")
    cell = size // grid
    image = Image.new("RGB", (size, size), (110, 110, 110))
    pen = ImageDraw.Draw(image)
    margin = max(1, cell // 8)
    for o in scene:
        dx, dy = (rng.randint(-1, 1), rng.randint(-1, 1)) if rng and margin > 1 else (0, 0)
        x0, y0 = (o.col - 1) * cell + margin + dx, (o.row - 1) * cell + margin + dy
        x1, y1 = x0 + cell - 2 * margin - 1, y0 + cell - 2 * margin - 1
        fill = COLOURS[o.colour]
        if o.shape == "square":
            pen.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "circle":
            pen.ellipse([x0, y0, x1, y1], fill=fill)
        else:
            pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def caption(scene: Sequence[Obj]) -> str:
    """Every object and its cell in reading order: "red circle at row 1, column 2; ..."."""
    return "; ".join(f"{o.name} at row {o.row}, column {o.col}" for o in scene) + "."


def ask(scene: Sequence[Obj], kind: str, rng: random.Random, grid: int = 4) -> dict | None:
    """One question of ``kind`` about ``scene``: ``{"type", "question", "answer"}``, or ``None`` when the scene
    cannot pose it (no unique colour, no pair in different rows or columns)."""
    if kind == "colour_at":
        o = rng.choice(scene)
        return _q(kind, f"What colour is at row {o.row}, column {o.col}?", o.colour)
    if kind == "shape_of":
        counts = {c: sum(o.colour == c for o in scene) for c in COLOURS}
        unique = [o for o in scene if counts[o.colour] == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return _q(kind, f"What shape is the {o.colour} one?", o.shape)
    if kind == "count":
        shape = rng.choice(SHAPES)
        return _q(kind, f"How many {shape}s?", str(sum(o.shape == shape for o in scene)))
    if kind == "exists":
        present = {(o.colour, o.shape) for o in scene}
        if rng.random() < 0.5:
            colour, shape = rng.choice(sorted(present))
        else:
            colour, shape = rng.choice(sorted({(c, s) for c in COLOURS for s in SHAPES} - present))
        return _q(kind, f"Is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no")
    if kind in ("left_of", "above"):
        axis = "col" if kind == "left_of" else "row"
        pairs = [(a, b) for a in scene for b in scene if getattr(a, axis) != getattr(b, axis)]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        word = "left of" if kind == "left_of" else "above"
        answer = "yes" if getattr(a, axis) < getattr(b, axis) else "no"
        return _q(kind, f"Is the {a.name} {word} the {b.name}?", answer)
    raise ValueError(f"unknown question type {kind!r}; expected one of {QUESTION_TYPES}")


def _q(kind: str, question: str, answer: str) -> dict:
    return {"type": kind, "question": question, "answer": answer}


def _layout_bucket(scene: Sequence[Obj]) -> int:
    key = ",".join(f"{o.colour}{o.shape}{o.row}{o.col}" for o in scene).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") % 100


def write_split(
    root: str | Path,
    split: str,
    n_images: int,
    *,
    seed: int = 0,
    size: int = 64,
    grid: int = 4,
    questions_per_image: int = 3,
    types: Sequence[str] = QUESTION_TYPES,
    objects: tuple[int, int] = (3, 5),
) -> dict[str, Path]:
    """Write ``n_images`` scenes of ``split`` (``"train"``, ``"val"`` or ``"test"``) under ``root/split``.

    Files: ``images/*.png``; ``captions.json`` (LLaVA format, one caption turn per image: stage 1);
    ``conversations.json`` (LLaVA format, ``questions_per_image`` turns per image, the image in the first);
    ``questions.jsonl`` (``question_id``, ``image``, ``text``, ``answer``, ``type``; one line per question).
    Returns their paths. The same ``seed`` and arguments write the same files.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    bad = [t for t in types if t not in QUESTION_TYPES]
    if bad or not types:
        raise ValueError(f"unknown question types {bad}; expected a non-empty subset of {QUESTION_TYPES}")
    lo, hi = _SPLITS[split]
    out = Path(root) / split
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-{split}")
    captions, conversations, questions = [], [], []
    i = 0
    while i < n_images:
        scene = make_scene(rng, grid, objects)
        if not lo <= _layout_bucket(scene) < hi:
            continue
        name = f"{split}-{i:05d}.png"
        draw(scene, size, grid, rng).save(images / name)
        captions.append(_conversation(f"{split}-c{i}", name, [("Describe the image.", caption(scene))]))
        asked = []
        for kind in (rng.choice(types) for _ in range(questions_per_image * 4)):
            q = ask(scene, kind, rng, grid)
            if q is not None and q["question"] not in {a["question"] for a in asked}:
                asked.append(q)
            if len(asked) == questions_per_image:
                break
        conversations.append(_conversation(f"{split}-q{i}", name, [(q["question"], q["answer"]) for q in asked]))
        for j, q in enumerate(asked):
            questions.append({"question_id": f"{split}-{i}-{j}", "image": name, "text": q["question"], **q})
        i += 1
    paths = {"images": images, "captions": out / "captions.json", "conversations": out / "conversations.json"}
    paths["questions"] = out / "questions.jsonl"
    paths["captions"].write_text(json.dumps(captions))
    paths["conversations"].write_text(json.dumps(conversations))
    paths["questions"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    return paths


def _conversation(cid: str, image: str, turns: Sequence[tuple[str, str]]) -> dict:
    conv = []
    for k, (question, answer) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
        conv.append({"from": "gpt", "value": answer})
    return {"id": cid, "image": image, "conversations": conv}
