"""Golden tests of the prompt builders against DESIGN.md §8 (upstream VisualRWKV v6.0).

Every expected string below was derived by hand from §8's rules; expected ids and labels are built
from hand-split segments (with the byte tokenizer: id = byte + 1) or from the ``rwkv`` package's
reference tokenizer, never by the code under test.
"""

from __future__ import annotations

import re

import pytest

from rwkvblocks.prompting import (
    IGNORE_INDEX,
    ByteTokenizer,
    ConversationError,
    ImageFirstPromptBuilder,
    ImageLastPromptBuilder,
    Prompt,
    PromptBuilder,
    SandwichPromptBuilder,
    prompt_builder,
)

PHRASE = "Answer the question using a single word or phrase."
IMG = object()  # marks an image span in a segment list


def conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


SINGLE = conv(f"<image>\nWhat color is the cat?\n{PHRASE}", "Black")
MULTI = conv("  Describe the image.\n\n \n<image>  ", "A dog.\n\n\nOn grass.  ", "Is it  happy?\n\n\tReally?", "Yes.")
TEXT_ONLY = conv("Hello\n\n\nthere", "Hi!")

GOLDEN = {
    ("image_first", "single"): (f"User: <image>\nWhat color is the cat?\n{PHRASE}\n\nAssistant: Black\n\n"),
    ("image_last", "single"): (f"User: What color is the cat?\n{PHRASE}\n<image>\n\nAssistant: Black\n\n"),
    ("sandwich", "single"): (
        f"User: What color is the cat?\n<image>\nWhat color is the cat?\n{PHRASE}\n\nAssistant: Black\n\n"
    ),
    ("image_first", "multi"): (
        "User: <image>\nDescribe the image.\n\nAssistant: A dog.\nOn grass.\n\n"
        "User: Is it  happy?\n\tReally?\n\nAssistant: Yes.\n\n"
    ),
    ("image_last", "multi"): (
        "User: Describe the image.\n<image>\n\nAssistant: A dog.\nOn grass.\n\n"
        "User: Is it  happy?\n\tReally?\n\nAssistant: Yes.\n\n"
    ),
    # all_human: the image turn cleaned, the other human turn only stripped (its blank line stays)
    ("sandwich", "multi"): (
        "User: Describe the image.\nIs it  happy?\n\n\tReally?\n<image>\nDescribe the image.\n\n"
        "Assistant: A dog.\nOn grass.\n\nUser: Is it  happy?\n\tReally?\n\nAssistant: Yes.\n\n"
    ),
}
CONVERSATIONS = {"single": SINGLE, "multi": MULTI}
BUILDERS = {
    "image_first": ImageFirstPromptBuilder,
    "image_last": ImageLastPromptBuilder,
    "sandwich": SandwichPromptBuilder,
}


def expected_from_segments(segments):
    """(ids, labels, image offsets) from ``[(text, supervised), IMG, ...]`` with id = byte + 1."""
    ids, labels, offsets = [], [], []
    for seg in segments:
        if seg is IMG:
            offsets.append(len(ids))
            continue
        text, supervised = seg
        piece = [b + 1 for b in text.encode("utf-8")]
        ids += piece
        labels += piece if supervised else [IGNORE_INDEX] * len(piece)
    return ids, labels, offsets


def assert_prompt(prompt, segments):
    ids, labels, offsets = expected_from_segments(segments)
    assert prompt.input_ids == ids
    assert prompt.labels == labels
    assert prompt.image_offsets == offsets


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_strings(name):
    builder_name, conv_name = name
    prompt = BUILDERS[builder_name](ByteTokenizer()).build(CONVERSATIONS[conv_name])
    assert prompt.text == GOLDEN[name]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_text_only_conversation_is_the_same_for_every_builder(builder):
    prompt = BUILDERS[builder](ByteTokenizer()).build(TEXT_ONLY)
    assert_prompt(prompt, [("User: Hello\nthere\n\nAssistant:", False), (" Hi!\n\n", True)])
    assert prompt.text == "User: Hello\nthere\n\nAssistant: Hi!\n\n"


def test_image_first_labels_and_offsets():
    prompt = ImageFirstPromptBuilder(ByteTokenizer()).build(MULTI)
    assert_prompt(
        prompt,
        [
            ("User: ", False),
            IMG,
            ("\nDescribe the image.\n\n", False),
            ("Assistant:", False),
            (" A dog.\nOn grass.\n\n", True),
            ("User: Is it  happy?\n\tReally?\n\n", False),
            ("Assistant:", False),
            (" Yes.\n\n", True),
        ],
    )


def test_image_last_labels_and_offsets():
    prompt = ImageLastPromptBuilder(ByteTokenizer()).build(SINGLE)
    assert_prompt(
        prompt,
        [
            (f"User: What color is the cat?\n{PHRASE}\n", False),
            IMG,
            ("\n\nAssistant:", False),
            (" Black\n\n", True),
        ],
    )


def test_sandwich_labels_and_offsets():
    prompt = SandwichPromptBuilder(ByteTokenizer()).build(SINGLE)
    assert_prompt(
        prompt,
        [
            ("User: What color is the cat?\n", False),
            IMG,
            (f"\nWhat color is the cat?\n{PHRASE}\n\nAssistant:", False),
            (" Black\n\n", True),
        ],
    )


def test_sandwich_keeps_the_phrase_of_turns_without_image_in_all_human():
    conversation = conv("<image>\nQ1?\n" + PHRASE, "A1", "  Q2?\n" + PHRASE + "  ", "A2")
    prompt = SandwichPromptBuilder(ByteTokenizer()).build(conversation)
    assert prompt.text.startswith(f"User: Q1?\nQ2?\n{PHRASE}\n<image>\nQ1?\n{PHRASE}\n\nAssistant: A1\n\n")
    assert prompt.text.endswith(f"User: Q2?\n{PHRASE}\n\nAssistant: A2\n\n")


def test_whitespace_only_blank_lines_collapse_in_messages():
    prompt = ImageFirstPromptBuilder(ByteTokenizer()).build(conv("a\n \t\n\n  \nb\n\nc <image>", "x\n\n\ny"))
    assert prompt.text == "User: <image>\na\nb\nc\n\nAssistant: x\ny\n\n"


def test_several_images_in_one_message_go_in_a_row():
    conversation = conv("<image>\nCompare <image> these.", "Same.")
    first = ImageFirstPromptBuilder(ByteTokenizer()).build(conversation)
    assert first.text == "User: <image>\n<image>\nCompare  these.\n\nAssistant: Same.\n\n"
    assert_prompt(
        first,
        [
            ("User: ", False),
            IMG,
            ("\n", False),
            IMG,
            ("\nCompare  these.\n\nAssistant:", False),
            (" Same.\n\n", True),
        ],
    )
    sandwich = SandwichPromptBuilder(ByteTokenizer()).build(conversation)
    assert sandwich.text.startswith("User: Compare  these.\n<image>\n<image>\nCompare  these.\n\n")


def test_images_in_several_turns_each_follow_the_template():
    conversation = conv("<image>\nWhat is this?", "A cat.", "And this? <image>", "A dog.")
    last = ImageLastPromptBuilder(ByteTokenizer()).build(conversation)
    assert last.text == (
        "User: What is this?\n<image>\n\nAssistant: A cat.\n\nUser: And this?\n<image>\n\nAssistant: A dog.\n\n"
    )
    assert_prompt(
        last,
        [
            ("User: What is this?\n", False),
            IMG,
            ("\n\nAssistant:", False),
            (" A cat.\n\n", True),
            ("User: And this?\n", False),
            IMG,
            ("\n\nAssistant:", False),
            (" A dog.\n\n", True),
        ],
    )
    sandwich = SandwichPromptBuilder(ByteTokenizer()).build(conversation)
    assert sandwich.text == (
        "User: What is this?\nAnd this?\n<image>\nWhat is this?\n\nAssistant: A cat.\n\n"
        "User: What is this?\nAnd this?\n<image>\nAnd this?\n\nAssistant: A dog.\n\n"
    )


@pytest.mark.parametrize("last_answer", [None, "", "absent"])
def test_inference_prompt_ends_with_assistant_colon(last_answer):
    conversation = conv("<image>\nWhat is it?")
    if last_answer != "absent":
        conversation.append({"from": "gpt", "value": last_answer})
    prompt = SandwichPromptBuilder(ByteTokenizer()).build(conversation, mode="inference")
    assert prompt.text == "User: What is it?\n<image>\nWhat is it?\n\nAssistant:"
    assert_prompt(prompt, [("User: What is it?\n", False), IMG, ("\nWhat is it?\n\nAssistant:", False)])


def test_inference_after_earlier_answers_supervises_only_them():
    prompt = ImageFirstPromptBuilder(ByteTokenizer()).build(conv("Hi", "Hello", "Bye"), mode="inference")
    assert_prompt(
        prompt,
        [("User: Hi\n\nAssistant:", False), (" Hello\n\n", True), ("User: Bye\n\nAssistant:", False)],
    )


def test_known_world_ids(world_tokenizer):
    assert world_tokenizer.encode("\n\n") == [261]
    assert world_tokenizer.encode("\n") == [11]
    assert world_tokenizer.encode("User:") == [24281, 59]
    assert world_tokenizer.encode("Assistant:") == [5585, 41693, 59]


def test_world_golden_ids():
    """Literal ids, recorded once from the rwkv package's reference tokenizer."""
    from rwkvblocks.prompting import WorldTokenizer

    prompt = ImageFirstPromptBuilder(WorldTokenizer()).build(conv("<image>\nhi", "hello"))
    # "User: " | image | "\nhi\n\n" | "Assistant: hello\n\n"
    assert prompt.input_ids == [24281, 59, 33, 11, 1922, 261, 5585, 41693, 59, 38685, 261]
    assert prompt.labels == [-100] * 9 + [38685, 261]
    assert prompt.image_offsets == [3]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("conv_name", ["single", "multi"])
def test_world_ids_are_per_turn_and_per_piece(builder, conv_name, world_tokenizer, reference_tokenizer):
    """Ids = the reference tokenizer on each turn's pieces; the 3 "Assistant:" tokens are masked."""
    prompt = BUILDERS[builder](world_tokenizer).build(CONVERSATIONS[conv_name])
    turns = re.split(r"(?<=\n\n)(?=User: |Assistant: )", GOLDEN[(builder, conv_name)])
    assert len(turns) == len(CONVERSATIONS[conv_name])
    ids, labels, offsets = [], [], []
    for turn in turns:
        if turn.startswith("User: "):
            for j, piece in enumerate(turn.split("<image>")):
                if j:
                    offsets.append(len(ids))
                ids += reference_tokenizer.encode(piece)
            labels += [IGNORE_INDEX] * (len(ids) - len(labels))
        else:
            turn_ids = reference_tokenizer.encode(turn)
            assert turn_ids[:3] == [5585, 41693, 59] and turn_ids[-1] == 261
            ids += turn_ids
            labels += [IGNORE_INDEX] * 3 + turn_ids[3:]
    assert prompt.input_ids == ids
    assert prompt.labels == labels
    assert prompt.image_offsets == offsets


def test_expand_inserts_image_positions():
    prompt = Prompt("a<image>bc<image>", [5, 6, 7], [-100, 6, 7], [1, 3])
    ids, labels, starts = prompt.expand(2, pad_id=9)
    assert ids == [5, 9, 9, 6, 7, 9, 9]
    assert labels == [-100, -100, -100, 6, 7, -100, -100]
    assert starts == [1, 5]
    with pytest.raises(ValueError, match="image_tokens must be a positive int, got 0"):
        prompt.expand(0)


@pytest.mark.parametrize(
    ("conversation", "reason", "message"),
    [
        (conv("Hi"), "turn_order", "must end with a gpt turn"),
        (
            [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}],
            "turn_order",
            "turn 0 is from 'gpt'",
        ),
        (conv("a", "b") + conv("c", "d")[1:], "turn_order", "human/gpt/gpt"),
        ([{"from": "system", "value": "x"}], "turn_order", "'system'"),
        (conv("<image>\nQ?", "  \n "), "empty_turn", "turn 1 \\(gpt\\) is empty"),
        (conv("Q?", "see <image>"), "image_mismatch", "turn 1 \\(gpt\\) holds <image>"),
        ([{"from": "human"}], "malformed", "turn 0 is not"),
        ([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}], "malformed", "int value"),
        ("User: hi", "malformed", "list of turns"),
        ([], "turn_order", "no turns"),
    ],
)
def test_bad_conversations_raise_with_a_reason(conversation, reason, message):
    with pytest.raises(ConversationError, match=message) as info:
        ImageFirstPromptBuilder(ByteTokenizer()).build(conversation)
    assert info.value.reason == reason


def test_bad_mode_and_builder_names():
    with pytest.raises(ValueError, match="mode must be 'train' or 'inference', got 'eval'"):
        ImageFirstPromptBuilder(ByteTokenizer()).build(SINGLE, mode="eval")
    with pytest.raises(ValueError, match="unknown prompt builder 'middle'"):
        prompt_builder("middle", ByteTokenizer())
    with pytest.raises(ConversationError, match="must end with a human turn"):
        ImageFirstPromptBuilder(ByteTokenizer()).build(SINGLE, mode="inference")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_prompt_builder_by_name(name):
    builder = prompt_builder(name, ByteTokenizer())
    assert type(builder) is BUILDERS[name] and isinstance(builder, PromptBuilder)


def test_role_prefix_mask_stops_at_a_token_that_reaches_into_the_answer():
    """A tokenizer that merges ": " with the answer keeps that token supervised."""

    class Merging(ByteTokenizer):
        def encode(self, text):
            ids = super().encode(text)
            if text.startswith("Assistant: "):  # one token for ": " + first answer byte
                return ids[:9] + [300] + ids[12:]
            return ids

    prompt = ImageFirstPromptBuilder(Merging()).build(conv("Q", "Yes"))
    answer_start = len("User: Q\n\n")
    assert prompt.labels[answer_start : answer_start + 9] == [IGNORE_INDEX] * 9
    assert prompt.labels[answer_start + 9 :] == [300] + [b + 1 for b in b"es\n\n"]
