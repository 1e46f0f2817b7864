"""Generation with VisualRWKV: conversations and images in, batched greedy answers equal to full forwards, and
prefix reuse that skips the image encoder."""

from __future__ import annotations

import pytest
import torch

from assemblies import create_assembly, generate
from rwkvblocks.generation import PrefixCache, SamplingConfig
from rwkvblocks.prompting import ByteTokenizer
from tests.helpers import spread_weights_

STEPS = 6


def _model(name, **overrides):
    torch.manual_seed(0)
    model = create_assembly(name, dtype=torch.float64, **overrides)
    spread_weights_(model.lm, lora=0)
    return model.eval()


def _image(seed):
    return torch.rand(3, 56, 56, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _conv(question):
    return [{"from": "human", "value": f"<image>\n{question}"}]


def _argmax_by_full_forwards(model, conv, image, steps):
    """Each new token from a full forward over the growing sequence (no state carried)."""
    prompt = model.data_config.prompt
    from assemblies.models.config import make_prompt_builder

    built = make_prompt_builder(model.data_config, ByteTokenizer()).build(conv, mode="inference")
    assert prompt
    ids, _, starts = built.expand(model.image_tokens)
    spans = torch.tensor([[0, s, 0, model.image_tokens] for s in starts])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + out]), None, image[None], spans).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("name", ["visualrwkv_tiny", "visualrwkv_hybrid_tiny"])
def test_greedy_generation_equals_argmax_of_full_forwards(name):
    model = _model(name)
    conv = _conv("What colour is the square?")
    got = generate(model, conv, _image(1), SamplingConfig(max_new_tokens=STEPS, stop_tokens=()))[0]
    assert got.tokens == _argmax_by_full_forwards(model, conv, _image(1), STEPS)
    assert got.text == ByteTokenizer().decode([t for t in got.tokens if t]) and got.finish_reason == "length"


@pytest.mark.parametrize("name", ["visualrwkv_tiny", "visualrwkv_hybrid_tiny"])
def test_batched_conversations_equal_one_by_one(name):
    model = _model(name)
    convs = [_conv("Colour?"), _conv("What is the colour of the square in the picture?"), _conv("Which colour?")]
    images = [_image(1), _image(2), _image(3)]
    cfg = SamplingConfig(max_new_tokens=STEPS, stop_tokens=())
    batched = generate(model, convs, images, cfg)
    for conv, image, got in zip(convs, images, batched):
        assert got.tokens == generate(model, conv, image, cfg)[0].tokens


def test_a_follow_up_about_the_same_image_skips_the_encoder():
    model = _model("visualrwkv_base_tiny")  # image-first prompt: "User: <image>" is the shared prefix
    calls = []
    original = model.encoder.forward
    model.encoder.forward = lambda images: calls.append(len(images)) or original(images)
    cache = PrefixCache(max_bytes=1 << 24)
    cfg = SamplingConfig(max_new_tokens=STEPS, stop_tokens=())
    first = generate(model, _conv("What colour is it?"), _image(5), cfg, cache=cache)[0]
    assert calls == [1] and len(cache) == 1
    follow_up = generate(model, _conv("And its shape?"), _image(5), cfg, cache=cache)[0]
    assert calls == [1], "the cached prefix must not run the image encoder again"
    assert cache.hits == 1
    uncached = generate(model, _conv("And its shape?"), _image(5), cfg)[0]
    assert follow_up.tokens == uncached.tokens and calls == [1, 1]
    other_image = generate(model, _conv("And its shape?"), _image(6), cfg, cache=cache)[0]
    assert calls == [1, 1, 1] and other_image.prompt_tokens == follow_up.prompt_tokens
    assert first.prompt_tokens != follow_up.prompt_tokens


def test_bad_requests_are_named():
    model = _model("visualrwkv_tiny", context_length=30)
    with pytest.raises(ValueError, match="more than the context length 30"):
        generate(model, _conv("a long question " * 5), _image(1))
    with pytest.raises(ValueError, match="1 <image> placeholders and 0 images"):
        generate(model, _conv("Colour?"))
    with pytest.raises(ValueError, match="an inference conversation must end with a human turn"):
        generate(model, [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
