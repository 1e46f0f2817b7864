"""The World tokenizer against the ``rwkv`` package's reference, token for token; the byte tokenizer."""

from __future__ import annotations

import contextlib
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rwkvblocks.prompting import ByteTokenizer, Tokenizer, WorldTokenizer

ROOT = Path(__file__).resolve().parents[2]

WORDS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "I",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "Don't",
    "it's",
    "U.S.",
    "e.g.",
    "3.14",
    "1,000,000",
    "2024-05-01",
    "O'Reilly",
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "façade",
]
CHINESE = [
    "今天是美好的一天。",
    "我们在研究视觉语言模型",
    "这只猫是黑色的吗？",
    "请用一个词回答问题",
    "北京、上海和广州",
    "人工智能（AI）正在改变世界！",
    "循环神经网络",
    "「你好」，他说。",
    "第一章 总则",
    "数据集包含六十六万条样本",
]
EMOJI = [
    "😀",
    "🐱",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇯🇵",
    "🏳️‍🌈",
    "❤️",
    "🤖",
    "🧑🏿‍🚀",
    "✈︎",
    "🫠",
    "1️⃣",
    "🇺🇸🇩🇪",
]
WHITESPACE = [
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u3000",
    "\xa0",
    "\u2009",
    "\x0b",
    "\x0c",
    "\n \n",
    "\t\t\t",
]


def _code_lines() -> list[str]:
    lines = []
    for path in sorted((ROOT / "rwkvblocks").rglob("*.py")):
        lines += path.read_text(encoding="utf-8").splitlines(keepends=True)
    return lines


def _vocab_strings(reference) -> list[str]:
    out = []
    for token in reference.idx2token.values():
        with contextlib.suppress(UnicodeDecodeError):  # byte tokens that are not whole characters
            out.append(token.decode("utf-8"))
    return out


def corpus(reference, seed: int = 0) -> list[str]:
    """About 2,400 varied strings, deterministic for a seed."""
    rng = random.Random(seed)
    code = _code_lines()
    vocab = _vocab_strings(reference)
    cjk = [chr(c) for c in range(0x4E00, 0x9FFF)]

    def english():
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 40))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        return " ".join(words) + rng.choice([".", "?", "!", "", ",", ":", "..."])

    def chinese():
        parts = [rng.choice(CHINESE) if rng.random() < 0.6 else "".join(rng.choices(cjk, k=rng.randint(1, 30)))]
        return "".join(parts + [rng.choice(["，", "。", "！", "", " ", "\n"])] * rng.randint(1, 2))

    def source_code():
        start = rng.randrange(len(code))
        return "".join(code[start : start + rng.randint(1, 25)])

    def emoji():
        return "".join(rng.choice(EMOJI + [" ", "a", "中", "\n"]) for _ in range(rng.randint(1, 12)))

    def whitespace():
        return "".join(rng.choice(WHITESPACE + ["x", "yz", "中"]) for _ in range(rng.randint(1, 60)))

    def any_code_point():
        def point():
            while True:
                c = rng.choice(
                    [
                        rng.randrange(0x80),
                        rng.randrange(0x800),
                        rng.randrange(0x10000),
                        rng.randrange(0x110000),
                    ]
                )
                if not 0xD800 <= c <= 0xDFFF:
                    return chr(c)

        return "".join(point() for _ in range(rng.randint(1, 30)))

    def seams():
        return "".join(rng.choice(vocab) for _ in range(rng.randint(2, 20)))

    def runs():
        return rng.choice(["a", " ", "\n", "=", "-", "中", "😀", "ab", "\t", "0"]) * rng.randint(1, 3000)

    kinds = [english, chinese, source_code, emoji, whitespace, any_code_point, seams, runs]
    strings = ["", " ", "\x00", "\n\n", "User: hi\n\n", "Assistant:"]
    for _ in range(300):
        strings += [kind() for kind in kinds]
        strings.append("".join(rng.choice(kinds)() for _ in range(rng.randint(2, 5))))
    return strings


def test_corpus_is_large_and_varied(reference_tokenizer):
    strings = corpus(reference_tokenizer)
    assert len(strings) >= 2000
    assert any("\u4e00" <= c <= "\u9fff" for s in strings for c in s)
    assert any(ord(c) > 0xFFFF for s in strings for c in s)
    assert any("def " in s for s in strings)


def test_encode_matches_reference_on_the_corpus(world_tokenizer, reference_tokenizer):
    strings = corpus(reference_tokenizer)
    mismatches = [s for s in strings if world_tokenizer.encode(s) != reference_tokenizer.encode(s)]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, first: {mismatches[0]!r:.200}"


def test_decode_round_trips_the_corpus(world_tokenizer, reference_tokenizer):
    for s in corpus(reference_tokenizer, seed=1)[:600]:
        ids = world_tokenizer.encode(s)
        assert world_tokenizer.decode_bytes(ids) == s.encode("utf-8")
        assert world_tokenizer.decode(ids) == s


def test_every_vocabulary_entry_matches_reference(world_tokenizer, reference_tokenizer):
    ids = sorted(reference_tokenizer.idx2token)
    assert len(ids) == 65529 and ids[0] == 1 and ids[-1] == 65529
    assert [world_tokenizer.decode_bytes([i]) for i in ids] == [reference_tokenizer.idx2token[i] for i in ids]


def test_invalid_utf8_ids_decode_exactly(world_tokenizer, reference_tokenizer):
    """Ids whose bytes are not valid UTF-8 (lone bytes, half characters) keep their bytes."""
    rng = random.Random(2)
    partial = [i for i, t in reference_tokenizer.idx2token.items() if not _is_utf8(t)]
    assert len(partial) > 100  # the 128 bytes >= 0x80 at least
    invalid = 0
    for _ in range(500):
        ids = [rng.choice(partial) if rng.random() < 0.5 else rng.randint(1, 65529) for _ in range(rng.randint(1, 12))]
        expected = reference_tokenizer.decodeBytes(ids)
        assert world_tokenizer.decode_bytes(ids) == expected
        assert world_tokenizer.decode(ids) == expected.decode("utf-8", errors="replace")
        invalid += not _is_utf8(expected)
    assert invalid > 100


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_world_errors_name_the_bad_value(world_tokenizer):
    with pytest.raises(ValueError, match="no UTF-8 form at index 1"):
        world_tokenizer.encode("a\udcffb")
    with pytest.raises(ValueError, match="encode takes a str, got bytes"):
        world_tokenizer.encode(b"abc")
    for bad in ([0], [65530], [-1]):
        with pytest.raises(ValueError, match=rf"ids not in the World vocabulary: \[{bad[0]}\]"):
            world_tokenizer.decode([5, *bad])
    with pytest.raises(ValueError, match="vocab_file '/nonexistent.txt' is not a file"):
        WorldTokenizer("/nonexistent.txt")


def test_world_tokenizer_pickles_and_reads_another_vocab_file(tmp_path):
    import rwkv

    vocab = Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"  # the reference's own copy
    tok = WorldTokenizer(vocab)
    text = "Pickled 🥒 tokenizer, 腌黄瓜"
    ids = tok.encode(text)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == ids and clone.decode(ids) == text
    assert WorldTokenizer().encode(text) == ids


def test_byte_tokenizer_is_the_world_single_byte_subset(reference_tokenizer):
    tok = ByteTokenizer()
    assert all(reference_tokenizer.idx2token[b + 1] == bytes([b]) for b in range(256))
    text = "héllo\n\n😀"
    assert tok.encode(text) == [b + 1 for b in text.encode("utf-8")]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0xF0 + 1]) == "\ufffd"
    with pytest.raises(ValueError, match=r"ids 1..256, got \[0, 257\]"):
        tok.decode([0, 5, 257])


def test_tokenizers_follow_the_interface(world_tokenizer):
    assert isinstance(world_tokenizer, Tokenizer) and isinstance(ByteTokenizer(), Tokenizer)
    assert world_tokenizer.vocab_size == 65536 and ByteTokenizer.vocab_size == 257


def test_import_pulls_neither_pillow_nor_the_tokenizer_package():
    code = (
        "import sys, rwkvblocks.prompting\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'pyrwkv_tokenizer', 'rwkv'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
