"""``python -m rwkvblocks``: the ``rwkvblocks`` command (``assemblies.cli``), for when the script is not on PATH.

The command lives at the top of the layers (``assemblies.cli``; tests/test_layering.py), and the library never
imports it: this module has no ``import`` of ``assemblies``, it looks the command up by name only when run as
``python -m rwkvblocks``. Nothing imports this module, and importing it (``import rwkvblocks.__main__``) runs
nothing, so ``rwkvblocks`` stays usable without ``assemblies``; run this way without it, it says so and exits 2.
It is the one place where the library names the layer above it, on purpose: the distribution ships both
packages, and ``python -m <distribution>`` is where people look for the command.
"""

from __future__ import annotations

import importlib
import sys


def _run() -> int:
    try:
        cli = importlib.import_module("assemblies.cli")  # by name, at run time: see the docstring
    except ModuleNotFoundError as err:
        if err.name != "assemblies":
            raise
        print("rwkvblocks: error: the command needs the assemblies package (pip install rwkvblocks)", file=sys.stderr)
        return 2
    return cli.main()


if __name__ == "__main__":
    sys.exit(_run())
