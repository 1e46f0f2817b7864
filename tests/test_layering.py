"""Import direction (DESIGN.md §2) and lazy heavy imports, checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("triton", "timm", "open_clip", "xformers")


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "assemblies":
        return "assemblies"
    if len(parts) > 1 and parts[1] in ("ops", "vision", "prompting"):
        return parts[1]
    return "blocks"


# which layers each layer may import
ALLOWED = {
    "ops": {"ops"},
    "blocks": {"ops", "blocks"},
    "vision": {"ops", "blocks", "vision"},
    "prompting": {"ops", "blocks", "prompting"},
    "assemblies": {"ops", "blocks", "vision", "prompting", "assemblies"},
}


def _imports(path: Path, module: str):
    """(imported module, top-level?) for every import in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, id(node) in top_level


def _modules():
    for top in ("rwkvblocks", "assemblies"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield path, ".".join(parts)


def test_imports_go_one_way():
    violations = []
    for path, module in _modules():
        src_layer = _layer(module)
        for name, _ in _imports(path, module):
            if name.split(".")[0] not in ("rwkvblocks", "assemblies"):
                continue
            dst_layer = _layer(name) if name != "rwkvblocks" else "blocks"
            if dst_layer not in ALLOWED[src_layer]:
                violations.append(f"{module} ({src_layer}) imports {name} ({dst_layer})")
    assert not violations, "\n".join(violations)


def test_heavy_dependencies_are_imported_lazily():
    offenders = []
    for path, module in _modules():
        for name, top_level in _imports(path, module):
            if top_level and name.split(".")[0] in HEAVY:
                offenders.append(f"{module} imports {name} at module level")
    assert not offenders, "\n".join(offenders)


def test_import_rwkvblocks_pulls_no_heavy_package():
    code = (
        "import sys, rwkvblocks, rwkvblocks.ops, rwkvblocks.vision, rwkvblocks.prompting, assemblies\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
