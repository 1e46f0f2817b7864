"""Every ``>>>`` example in the docstrings of the packages runs and prints what it says (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import assemblies
import rwkvblocks

MODULES = [
    name
    for root in (rwkvblocks, assemblies)
    for name in [root.__name__] + [i.name for i in pkgutil.walk_packages(root.__path__, root.__name__ + ".")]
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
