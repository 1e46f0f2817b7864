"""Import direction (STYLE.md "Layout"), no import circle anywhere, and lazy heavy imports; checked on the source.

Layers, from the bottom: ``rwkvblocks.ops`` -> blocks (``rwkvblocks``) -> ``rwkvblocks.vision``,
``rwkvblocks.prompting`` -> ``rwkvblocks.generation`` -> ``assemblies``; ``rwkvblocks.metrics`` imports nothing of
ours. Inside ``assemblies``: ``models`` -> ``training`` -> ``evaluation``, ``serving`` -> ``cli``, ``demo`` (on
top: nothing but the CLI imports the demo, nothing imports the CLI). Layers that do not exist yet are listed
so that they are checked from the day they are created.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("triton", "timm", "open_clip", "xformers")
OURS = ("rwkvblocks", "assemblies")

LIBRARY = {"ops", "blocks", "vision", "prompting", "generation"}
# which layers each layer may import
ALLOWED = {
    "ops": {"ops"},
    "blocks": {"ops", "blocks"},
    "vision": {"ops", "blocks", "vision"},
    "prompting": {"ops", "blocks", "prompting"},
    "generation": LIBRARY,
    "metrics": {"metrics"},
    "assemblies": LIBRARY | {"metrics", "assemblies"},  # shared private modules (``_io``)
    "assemblies.models": LIBRARY | {"assemblies", "assemblies.models"},
    "assemblies.training": LIBRARY | {"assemblies", "assemblies.models", "assemblies.training"},
    "assemblies.evaluation": LIBRARY | {"metrics", "assemblies", "assemblies.models", "assemblies.evaluation"},
    "assemblies.serving": LIBRARY | {"assemblies", "assemblies.models", "assemblies.serving"},
    "assemblies.demo": LIBRARY | {"assemblies", "assemblies.models", "assemblies.training"},
}
# the package's own ``__init__``: the curated re-exports of every layer below the CLI and the demo
ALLOWED["assemblies.api"] = set().union(*(ALLOWED[k] for k in ALLOWED if k.startswith("assemblies"))) - {
    "assemblies.demo"
} | {"assemblies.api"}
ALLOWED["assemblies.cli"] = (
    LIBRARY | {"metrics"} | {a for a in ALLOWED if a.startswith("assemblies")} | {"assemblies.cli"}
)


def _layer(module: str) -> str:
    parts = module.split(".")
    if module == "assemblies":
        return "assemblies.api"
    if parts[0] == "assemblies":
        if len(parts) > 1 and f"assemblies.{parts[1]}" in ALLOWED:
            return f"assemblies.{parts[1]}"
        return "assemblies"  # the package itself and shared private modules (_io)
    if len(parts) > 1 and parts[1] in ("ops", "vision", "prompting", "generation", "metrics"):
        return parts[1]
    return "blocks"


def _module_names() -> set[str]:
    return {module for _, module in _modules()}


def _modules():
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield path, ".".join(parts)


def _imports(path: Path, module: str, known: set[str]):
    """(imported module, top-level?) for every import in ``path`` (module level and inside functions).

    Relative imports are resolved; ``from package import name`` counts as an import of ``package.name`` when
    that is one of our modules, else of ``package``.
    """
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
            subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
            if subs:
                for sub in subs:
                    yield sub, id(node) in top_level
            if len(subs) < len(node.names):
                yield name, id(node) in top_level


def _graph() -> dict[str, set[str]]:
    known = _module_names()
    graph: dict[str, set[str]] = {}
    for path, module in _modules():
        graph[module] = {name for name, _ in _imports(path, module, known) if name in known and name != module}
    return graph


def test_imports_go_one_way():
    known = _module_names()
    violations = []
    for path, module in _modules():
        src_layer = _layer(module)
        for name, _ in _imports(path, module, known):
            if name.split(".")[0] not in OURS:
                continue
            dst_layer = _layer(name) if name != "rwkvblocks" else "blocks"
            if dst_layer == "assemblies.api" and src_layer != "assemblies.api":
                dst_layer = "assemblies.cli"  # importing the package root pulls in every layer
            if dst_layer not in ALLOWED[src_layer]:
                violations.append(f"{module} ({src_layer}) imports {name} ({dst_layer})")
    assert not violations, "\n".join(violations)


def test_nothing_imports_the_command_line_and_only_it_imports_the_demo():
    offenders = []
    for module, targets in _graph().items():
        for name in targets:
            if name.startswith("assemblies.cli") and not module.startswith("assemblies.cli"):
                offenders.append(f"{module} imports {name}")
            if name.startswith("assemblies.demo") and not module.startswith(("assemblies.cli", "assemblies.demo")):
                offenders.append(f"{module} imports {name}")
    assert not offenders, "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), i.e. every import circle."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_anywhere():
    cycles = _cycles(_graph())
    assert not cycles, "import circles (lazy imports inside functions count too):\n" + "\n".join(map(str, cycles))


def test_the_circle_detector_finds_circles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_heavy_dependencies_are_imported_lazily():
    known = _module_names()
    offenders = []
    for path, module in _modules():
        for name, top_level in _imports(path, module, known):
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
