"""Docstrings, errors and docs point to files that exist in the repository, and to sections that exist in them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for folder in ("rwkvblocks", "assemblies", "benchmarks", "tests")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in (".py", ".md", ".sh") and "__pycache__" not in p.parts
] + [ROOT / "README.md"]
DESIGN_SECTIONS = set(re.findall(r"^## (\d+)\.", (ROOT / "DESIGN.md").read_text(), re.M))
# a path into this repository: one of its top-level folders, then a file name (LLaVA's docs/..., llava/eval/...
# paths that docstrings cite are not ours and not checked)
REPO_PATH = re.compile(r"\b((?:rwkvblocks|assemblies|benchmarks|tests)/[\w./-]*\w\.(?:py|md|sh|json|png))\b")


def test_design_references_name_sections_that_exist():
    bad = []
    for path in SOURCES:
        for number in re.findall(r"DESIGN\.md §(\d+)", path.read_text(errors="replace")):
            if number not in DESIGN_SECTIONS:
                bad.append(f"{path.relative_to(ROOT)}: DESIGN.md §{number}")
    assert not bad, bad
    assert len(DESIGN_SECTIONS) >= 17


def test_repository_paths_mentioned_anywhere_exist():
    missing = []
    for path in SOURCES:
        for ref in REPO_PATH.findall(path.read_text(errors="replace")):
            if "*" in ref or "DIR/" in ref or "<" in ref:
                continue
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {ref}")
    assert not missing, missing
