"""The eight benchmarks' files as LLaVA-1.5 distributes and scores them: questions in, metric inputs out.

Each ``Benchmark`` knows four things about its benchmark:

- how to read its question file into ``Question`` records (id, text, image, and for multiple choice the choices
  ``--mode rank`` picks among), in the format LLaVA's ``scripts/v1_5/eval/*.sh`` feed to ``llava/eval/model_vqa*.py``;
- the prompt suffix (``rwkvblocks.metrics.PROMPT_SUFFIXES``), appended to a question that does not already end
  with it (LLaVA's short-answer files carry it in their text; ScienceQA and MMBench get it added, as
  ``--single-pred-prompt`` does);
- how to read its ground truth, in the format LLaVA's scoring scripts read;
- which ground-truth fields of a question its metric's ``update`` takes (``target``).

The formats, and the upstream file each is taken from (haotian-liu/LLaVA unless said otherwise):

- ``vqav2``: questions ``llava_vqav2_mscoco_test-dev2015.jsonl`` (question_id, image, text; read by
  ``llava/eval/model_vqa_loader.py``); test-dev is scored by the EvalAI server, so the ground truth here is an
  official VQA annotation file (``v2_mscoco_val2014_annotations.json`` format: ``annotations`` with
  ``question_id`` and the 10 ``answers``).
- ``gqa``: questions ``llava_gqa_testdev_balanced.jsonl``; ground truth ``testdev_balanced_questions.json``
  (question id -> ``answer``), as ``scripts/convert_gqa_for_eval.py`` and GQA's ``eval.py`` use it.
- ``textvqa``: questions ``llava_textvqa_val_v051_ocr.jsonl`` (question_id is the image id, the text carries the
  OCR tokens); ground truth ``TextVQA_0.5.1_val.json`` (``data``), matched on ``(image_id, question.lower())``
  with the question taken out of the text as ``llava/eval/eval_textvqa.py`` does (``textvqa_question``).
- ``pope``: questions ``llava_pope_test.jsonl`` (with ``category``: adversarial, popular, random); ground truth
  the folder of ``coco_pope_<split>.json`` label files (JSON lines with ``label``), the k-th question of a split
  paired with the k-th label as ``llava/eval/eval_pope.py`` pairs them (and the image checked where both name
  one).
- ``mme``: questions ``llava_mme.jsonl`` (question_id ``<subtask>/<image file>``); ground truth the
  ``MME_Benchmark_release_version`` folder: per subtask ``<image>.txt`` (or ``questions_answers_YN/<image>.txt``
  beside ``images/``) with ``question<TAB>answer`` lines, looked up as MME's ``convert_answer_to_mme.py`` does
  (``mme_question``).
- ``scienceqa``: questions ``llava_test_CQM-A.json``, a JSON list of LLaVA conversations (``id``, ``image``,
  ``conversations[0].value`` with ``Options: (A) ... (B) ...``), read as ``llava/eval/model_vqa_science.py``
  reads it (JSON lines with question_id and text are accepted too); ground truth the folder with
  ``problems.json`` (``answer`` index, ``choices``, ``image``), as ``llava/eval/eval_science_qa.py`` reads it.
- ``mmbench`` / ``mmbench_cn``: one TSV (``mmbench_dev_20230712.tsv``, ``mmbench_dev_cn_20231003.tsv``) with
  index, question, hint, A-D, answer, category and a base64 image, read and prompted as
  ``llava/eval/model_vqa_mmbench.py`` does (hint, question, then ``"A. ..."`` lines); the ground truth is its
  ``answer`` column (the questions file itself unless ``--annotations`` names another). Answer files written with
  ``--all-rounds`` (a ``round_id`` and the shifted ``options``) are scored as circular copies.

Question ids repeat in some of LLaVA's files (TextVQA's are image ids, MME's are image paths), so a question is
keyed by ``(question_id, prompt)`` (``Question.key``).

Example:
    >>> bench = get_benchmark("pope")
    >>> q = Question(question_id=1, text="Is there a dog in the image?", image="1.jpg", choices=("Yes", "No"))
    >>> bench.prompt(q)
    'Is there a dog in the image?\\nAnswer the question using a single word or phrase.'
    >>> sorted(BENCHMARKS) == sorted(PROMPT_SUFFIXES)
    True
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchmetrics import Metric

from rwkvblocks.metrics import CIRCULAR_STRIDE, METRICS, POPE_SPLITS, PROMPT_SUFFIXES, get_metric

from .records import Question, check_file, question_key, read_jsonl

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Question",
    "get_benchmark",
    "mme_question",
    "question_key",
    "read_jsonl",
    "textvqa_question",
]

_SHORT_ANSWER_PHRASE = "Answer the question using a single word or phrase."
_MME_YES_NO = " Please answer yes or no."
_LETTERS = "ABCDE"


def _require(record: Mapping, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")


def _load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


def _id(value: Any) -> str:
    """Question ids compared as text: JSON files key them by string, JSON lines often hold ints."""
    return str(value)


class Benchmark:
    """What the runner and the scorer need to know about one benchmark (module docstring).

    Attributes:
        name: The key of ``rwkvblocks.metrics.METRICS``.
        headline: The score the paper reports (a key of the metric's ``compute()``).
        needs_annotations: Whether scoring needs a ground-truth file beyond the question file.
    """

    name: str = ""
    headline: str = "accuracy"
    needs_annotations: bool = True
    questions_format: str = "LLaVA question JSON lines: question_id, image, text"
    annotations_format: str = ""

    @property
    def suffix(self) -> str:
        """The instruction appended to every question (``PROMPT_SUFFIXES``)."""
        return PROMPT_SUFFIXES[self.name]

    @property
    def metric_class(self) -> type[Metric]:
        return METRICS[self.name]

    @property
    def multiple_choice(self) -> bool:
        """Whether ``--mode rank`` applies."""
        return False

    def metric(self) -> Metric:
        return get_metric(self.name)

    def prompt(self, question: Question) -> str:
        """The question as the model is asked it: its text, with the suffix unless it already ends with it."""
        return question.text if question.text.endswith(self.suffix) else question.text + self.suffix

    def read_questions(self, path: str | os.PathLike) -> list[Question]:
        """Every question of the file, in file order."""
        questions = []
        for n, record in read_jsonl(path, "questions file"):
            _require(record, ("question_id", "text"), f"{path}:{n}")
            questions.append(self._question(record, f"{path}:{n}"))
        return questions

    def _question(self, record: dict, where: str) -> Question:
        fields = {k: v for k, v in record.items() if k not in ("question_id", "text", "image")}
        image = record.get("image") or None
        return Question(record["question_id"], record["text"], image, None, self._choices(record), fields)

    def _choices(self, record: Mapping) -> tuple[str, ...]:
        return ()

    def read_annotations(self, path: str | os.PathLike | None, questions_path: str | os.PathLike | None = None) -> Any:
        """The ground truth, in whatever form ``target`` reads (``questions_path``: for formats that keep it there).

        Raises:
            ValueError: the file is missing or malformed.
        """
        raise NotImplementedError

    def target(self, annotations: Any, question: Question, answer: Mapping) -> dict[str, Any]:
        """The metric's ``update`` keyword arguments for one answered question (each a single value).

        Raises:
            KeyError: the question has no ground truth in ``annotations``.
        """
        raise NotImplementedError


class _YesNo(Benchmark):
    @property
    def multiple_choice(self) -> bool:
        return True

    def _choices(self, record: Mapping) -> tuple[str, ...]:
        return ("Yes", "No")


class VQAv2(Benchmark):
    """VQAv2: LLaVA's test-dev question file; scored here on an annotation file in the official val format."""

    name = "vqav2"
    annotations_format = "VQA annotation JSON: {'annotations': [{'question_id', 'answers': [{'answer'} x 10]}]}"

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("vqav2 needs --annotations: an official VQA annotation file (val format)")
        data = _load_json(check_file(path, "annotations file"), "annotations file")
        rows = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"annotations file {path}: expected {{'annotations': [...]}} (the VQA format)")
        table = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "question_id" not in row or "answers" not in row:
                raise ValueError(f"annotations file {path}: annotations[{i}] lacks question_id or answers")
            table[_id(row["question_id"])] = [a["answer"] if isinstance(a, dict) else a for a in row["answers"]]
        return table

    def target(self, annotations, question, answer):
        return {"answers": annotations[_id(question.question_id)]}


class GQA(Benchmark):
    """GQA balanced test-dev: LLaVA's question file, the official questions JSON for the answers."""

    name = "gqa"
    annotations_format = "GQA questions JSON (testdev_balanced_questions.json): {question_id: {'answer', ...}}"

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("gqa needs --annotations: testdev_balanced_questions.json")
        data = _load_json(check_file(path, "annotations file"), "annotations file")
        if not isinstance(data, dict):
            raise ValueError(f"annotations file {path}: expected a JSON object keyed by question id")
        table = {}
        for qid, row in data.items():
            if not isinstance(row, dict) or "answer" not in row:
                raise ValueError(f"annotations file {path}: question {qid} has no answer")
            table[_id(qid)] = row["answer"]
        return table

    def target(self, annotations, question, answer):
        return {"answers": annotations[_id(question.question_id)]}


def textvqa_question(text: str) -> str:
    """The bare question inside a TextVQA prompt, lower-cased (``eval_textvqa.py``'s ``prompt_processor``).

    Where none of upstream's layouts fits (upstream asserts), the first line.

    Example:
        >>> textvqa_question("What brand?\\nReference OCR token: nikon\\nAnswer with a word.")
        'what brand?'
    """
    lines = text.split("\n")
    if text.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", text, re.DOTALL)
        question = match.group(1) if match else lines[0]
    elif "Reference OCR token: " in text and len(lines) == 3:
        question = lines[1] if text.startswith("Reference OCR token:") else lines[0]
    else:
        question = lines[0]
    return question.lower()


class TextVQA(Benchmark):
    """TextVQA val with OCR tokens in the prompt, as LLaVA-1.5 evaluates it."""

    name = "textvqa"
    questions_format = "LLaVA question JSON lines (question_id = the image id), text with 'Reference OCR token: ...'"
    annotations_format = "TextVQA JSON (TextVQA_0.5.1_val.json): {'data': [{'image_id', 'question', 'answers'}]}"

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("textvqa needs --annotations: TextVQA_0.5.1_val.json")
        data = _load_json(check_file(path, "annotations file"), "annotations file")
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"annotations file {path}: expected {{'data': [...]}} (the TextVQA format)")
        by_image, by_id = {}, {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not {"image_id", "question", "answers"} <= set(row):
                raise ValueError(f"annotations file {path}: data[{i}] lacks image_id, question or answers")
            by_image[(_id(row["image_id"]), row["question"].lower())] = row["answers"]
            if "question_id" in row:
                by_id[_id(row["question_id"])] = row["answers"]
        return by_image, by_id

    def target(self, annotations, question, answer):
        by_image, by_id = annotations
        asked = textvqa_question(question.text)
        for image_id in (_id(question.question_id), Path(question.image or "").stem):
            if (image_id, asked) in by_image:
                return {"answers": by_image[(image_id, asked)]}
        return {"answers": by_id[_id(question.question_id)]}


class POPE(_YesNo):
    """POPE on COCO val2014: one question file, one label file per split."""

    name = "pope"
    headline = "mean_f1"
    questions_format = "LLaVA question JSON lines with category (adversarial, popular, random)"
    annotations_format = "folder of coco_pope_<split>.json label files (JSON lines with 'label'), or one of them"

    def read_questions(self, path):
        questions, seen = [], {}
        for q in super().read_questions(path):
            split = q.fields.get("category")
            position = seen.get(split, 0)
            seen[split] = position + 1
            fields = {**q.fields, "position": position}
            questions.append(Question(q.question_id, q.text, q.image, None, q.choices, fields))
        return questions

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("pope needs --annotations: the folder of coco_pope_<split>.json label files")
        path = check_file(path, "annotations")
        files = sorted(path.glob("coco_pope_*.json")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"annotations folder {path} has no coco_pope_<split>.json label files")
        labels = {}
        for file in files:
            split = file.stem.removeprefix("coco_pope_")
            if split not in POPE_SPLITS:
                raise ValueError(f"label file {file}: expected coco_pope_<split>.json, split one of {POPE_SPLITS}")
            rows = []
            for n, row in read_jsonl(file, "label file"):
                _require(row, ("label",), f"{file}:{n}")
                rows.append(row)
            labels[split] = rows
        return labels

    def target(self, annotations, question, answer):
        split = question.fields.get("category")
        if split is None:
            raise ValueError(f"pope: question {question.question_id} has no category (split); pass --questions")
        if "label" in question.fields:
            return {"labels": question.fields["label"], "splits": split}
        rows, position = annotations[split], question.fields["position"]
        if position >= len(rows):
            raise KeyError(question.question_id)
        row = rows[position]  # the k-th question of a split: its k-th label
        if row.get("image") and question.image and row["image"] != question.image:
            raise ValueError(
                f"POPE question {question.question_id} ({split} #{position}) is about "
                f"{question.image} but its label line is about {row['image']}: the files are not in the same order"
            )
        return {"labels": row["label"], "splits": split}


def mme_question(text: str) -> str:
    """The MME question as its answer files write it (``convert_answer_to_mme.py``): the short-answer phrase taken
    out, ``" Please answer yes or no."`` ensured at the end.

    Example:
        >>> mme_question("Is it red?\\nAnswer the question using a single word or phrase.")
        'Is it red? Please answer yes or no.'
    """
    if _SHORT_ANSWER_PHRASE in text:
        text = text.replace(_SHORT_ANSWER_PHRASE, "").strip()
    if _MME_YES_NO.strip() not in text:
        text = text + _MME_YES_NO
    return text


class MME(_YesNo):
    """MME: 14 subtasks of yes/no questions, two per image."""

    name = "mme"
    headline = "perception"
    questions_format = "LLaVA question JSON lines, question_id '<subtask>/<image file>'"
    annotations_format = "MME_Benchmark_release_version/: <subtask>/[questions_answers_YN/]<image>.txt, 'q<TAB>a'"

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("mme needs --annotations: the MME_Benchmark_release_version folder")
        root = check_file(path, "annotations folder")
        if not root.is_dir():
            raise ValueError(f"mme --annotations must be the MME_Benchmark_release_version folder; {root} is a file")
        truth = {}
        for category in sorted(p for p in root.iterdir() if p.is_dir()):
            qa = category / "questions_answers_YN" if (category / "images").is_dir() else category
            for file in sorted(qa.glob("*.txt")):
                for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    parts = line.strip().split("\t")
                    if len(parts) != 2:
                        raise ValueError(f"{file}:{n}: expected 'question<TAB>answer'")
                    truth[(category.name, file.name, parts[0])] = parts[1]
        if not truth:
            raise ValueError(f"annotations folder {root} holds no <subtask>/<image>.txt answer files")
        return truth

    def target(self, annotations, question, answer):
        parts = _id(question.question_id).split("/")
        category, file = parts[0], Path(parts[-1]).stem + ".txt"
        asked = mme_question(question.text)
        key = (category, file, asked)
        if key not in annotations:  # upstream's fallback: some answer files have two spaces before "Please"
            key = (category, file, asked.replace(_MME_YES_NO, " " + _MME_YES_NO))
        return {"answers": annotations[key], "subtasks": category, "image_ids": file}


def _option_letters(text: str) -> tuple[str, ...]:
    """``("A", "B", ...)`` of a ScienceQA prompt's ``Options: (A) ... (B) ...`` line (consecutive from A)."""
    for line in text.split("\n"):
        if line.startswith("Options:"):
            found = set(re.findall(r"\(([A-E])\) ", line + " "))
            letters = []
            for letter in _LETTERS:
                if letter not in found:
                    break
                letters.append(letter)
            return tuple(letters)
    return ()


class ScienceQA(Benchmark):
    """ScienceQA test split, all questions and the image ones (ScienceQA-IMG, the paper's number)."""

    name = "scienceqa"
    headline = "img_accuracy"
    questions_format = "LLaVA JSON list (llava_test_CQM-A.json): id, image, conversations[0].value; or JSON lines"
    annotations_format = "folder with problems.json ({id: {'answer': index, 'choices', 'image'}}), or the file"

    @property
    def multiple_choice(self) -> bool:
        return True

    def read_questions(self, path):
        path = check_file(path, "questions file")
        with open(path, encoding="utf-8") as f:
            head = f.read(1)
            while head.isspace():
                head = f.read(1)
        if head != "[":
            return super().read_questions(path)
        data = _load_json(path, "questions file")
        questions = []
        for i, record in enumerate(data):
            where = f"{path}: item {i}"
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected an object with id and conversations")
            _require(record, ("id", "conversations"), where)
            turns = record["conversations"]
            if not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise ValueError(f"{where}: conversations[0] has no value")
            text = turns[0]["value"].replace("<image>", "").strip()  # as model_vqa_science.py
            fields = {k: v for k, v in record.items() if k not in ("id", "conversations", "image")}
            image = record.get("image") or None
            questions.append(Question(record["id"], text, image, None, _option_letters(text), fields))
        return questions

    def _choices(self, record):
        return _option_letters(record["text"])

    def read_annotations(self, path, questions_path=None):
        if path is None:
            raise ValueError("scienceqa needs --annotations: the folder with problems.json (or the file)")
        path = check_file(path, "annotations")
        file = path / "problems.json" if path.is_dir() else path
        problems = _load_json(check_file(file, "annotations file"), "annotations file")
        if not isinstance(problems, dict):
            raise ValueError(f"annotations file {file}: expected problems.json, an object keyed by problem id")
        return {_id(k): v for k, v in problems.items()}

    def target(self, annotations, question, answer):
        problem = annotations[_id(question.question_id)]
        return {"answers": problem["answer"], "has_image": bool(problem.get("image"))}


def _is_none(value: str | None) -> bool:
    """MMBench's empty cells (``model_vqa_mmbench.py``'s ``is_none``: NaN, "nan", "none")."""
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def _read_tsv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a tab-separated file with a header (MMBench's; cells may hold base64 images)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty: expected a header row")
        rows = []
        for row in reader:
            if None in row:
                raise ValueError(f"{path}:{reader.line_num}: more cells than the header has")
            rows.append((reader.line_num, row))
        return rows


class MMBench(Benchmark):
    """MMBench dev (English): questions, options, answers and base64 images in one TSV; circular groups by index."""

    name = "mmbench"
    needs_annotations = False
    questions_format = "MMBench TSV: index, question, hint, A, B, C, D, answer, category, image (base64)"
    annotations_format = "MMBench TSV with the answer column (default: the questions file itself)"

    @property
    def multiple_choice(self) -> bool:
        return True

    def _rows(self, path) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
        """``(where, row, options)`` for every row; options are A, B, ... up to the first empty one."""
        path = check_file(path, "questions file")
        for n, row in _read_tsv(path):
            where = f"{path}:{n}"
            _require(row, ("index", "question", "A", "B"), where)
            options = {}
            for letter in "ABCD":
                if _is_none(row.get(letter)):
                    break
                options[letter] = row[letter]
            if len(options) < 2:
                raise ValueError(f"{where}: expected at least the options A and B")
            yield where, row, options

    @staticmethod
    def _index(where: str, row: Mapping[str, str]) -> int:
        try:
            return int(row["index"])
        except ValueError:
            raise ValueError(f"{where}: index is {row['index']!r}; expected an integer") from None

    def read_questions(self, path):
        questions = []
        for where, row, options in self._rows(path):
            index = self._index(where, row)
            question = row["question"]
            if not _is_none(row.get("hint")):
                question = row["hint"] + "\n" + question
            for letter, option in options.items():
                question += "\n" + letter + ". " + option
            try:
                image = base64.b64decode(row["image"], validate=True) if not _is_none(row.get("image")) else None
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: the image column is not base64") from None
            fields = {"index": index, "options": options}
            fields.update({k: row[k] for k in ("category", "l2-category", "split") if not _is_none(row.get(k))})
            questions.append(Question(index, question, None, image, tuple(options), fields))
        return questions

    def read_annotations(self, path, questions_path=None):
        source = path if path is not None else questions_path
        if source is None:
            raise ValueError(f"{self.name} needs --annotations (the MMBench .tsv with the answer column)")
        truth = {}
        for where, row, options in self._rows(source):
            if _is_none(row.get("answer")):
                raise ValueError(f"{where}: no answer (the test split's answers are kept by the MMBench server)")
            truth[self._index(where, row)] = (row["answer"].strip(), options)
        return truth

    def target(self, annotations, question, answer):
        index = int(question.fields.get("index", question.question_id))
        right, options = annotations[index]
        round_id = int(answer.get("round_id", 0) or 0)
        if round_id and "options" in answer:  # model_vqa_mmbench.py --all-rounds: options shifted per round
            shown = dict(zip("ABCD", answer["options"]))
            right = next((k for k, v in shown.items() if v == options[right]), right)
            options = shown
        return {"answers": right, "options": options, "indices": index + round_id * CIRCULAR_STRIDE}


class MMBenchCN(MMBench):
    """MMBench-CN: the Chinese translation, with the Chinese option-letter instruction."""

    name = "mmbench_cn"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (VQAv2(), GQA(), TextVQA(), POPE(), MME(), ScienceQA(), MMBench(), MMBenchCN())
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark ``name`` (a key of ``BENCHMARKS``).

    Raises:
        ValueError: an unknown name (the known ones listed).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
