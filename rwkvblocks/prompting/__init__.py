"""Prompt builders (image first / last / sandwich), chat template, labels and tokenizer.

Nothing is implemented here yet; see the project's issue tracker.
"""

__all__: list[str] = []
