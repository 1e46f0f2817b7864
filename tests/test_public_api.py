"""Every public module has an ``__all__``; every name in it resolves, and it is sorted without duplicates."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import assemblies
import rwkvblocks


def _packages():
    names = []
    for root in (rwkvblocks, assemblies):
        names.append(root.__name__)
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _packages())
def test_all_resolves_and_is_sorted(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    public = not any(part.startswith("_") for part in name.split("."))
    if exported is None:
        assert not public, f"public module {name} has no __all__"
        return
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


def test_top_level_exports_the_operator():
    assert rwkvblocks.wkv6 is rwkvblocks.ops.wkv6
    assert rwkvblocks.__version__
