"""Shared fixtures: the rwkv package's reference World tokenizer (the oracle) and ours."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference_tokenizer():
    """``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` on the ``rwkv`` package's own vocabulary file.

    Only ``rwkv.rwkv_tokenizer`` is imported: ``rwkv.model`` would switch on TF32 process-wide.
    """
    import importlib.util

    spec = importlib.util.find_spec("rwkv")
    if spec is None:
        pytest.skip("the rwkv package (the reference tokenizer) is not installed")
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(Path(spec.origin).parent / "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="session")
def world_tokenizer():
    from rwkvblocks.prompting import WorldTokenizer

    return WorldTokenizer()
