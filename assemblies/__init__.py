"""Whole models built from ``rwkvblocks``: presets, checkpoint conversion, recipes, CLI.

Nothing is implemented here yet; see the project's issue tracker.
"""

__all__: list[str] = []
