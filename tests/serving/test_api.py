"""``rwkvblocks serve`` driven by the official ``openai`` client: answers equal the model's own greedy generation,
streamed pieces join to the whole answer, log-probabilities are the model's own (full forwards as the oracle)."""

from __future__ import annotations

import io

import httpx
import openai
import pytest
import torch
from PIL import Image

from assemblies.cli import main
from assemblies.models import generate
from assemblies.models.config import default_sampling
from tests.serving.conftest import data_url, png_bytes

QUESTION = "What colour is the picture?"


def _image_message(url: str, question: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


def _oracle(reference, question: str, image, max_tokens: int, logprobs: int | None = None):
    """The model's own greedy generation of the same conversation (no server involved)."""
    conv = [{"from": "human", "value": ("<image>\n" if image is not None else "") + question}]
    cfg = default_sampling(reference.data_config, max_new_tokens=max_tokens, logprobs=logprobs)
    return generate(reference, conv, image, cfg)[0]


def test_models_health_and_the_key(cli_server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = cli_server.health()
    assert health["status"] == "ok" and health["model"] == "tiny"
    wrong = openai.OpenAI(base_url=cli_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect or missing API key"):
        wrong.models.list()
    assert httpx.get(cli_server.url + "/v1/models").status_code == 401  # no key at all
    assert httpx.get(cli_server.url + "/health").status_code == 200  # health and the page need none
    page = httpx.get(cli_server.url + "/")
    assert page.status_code == 200 and "<title>rwkvblocks chat</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_chat_with_a_data_image_equals_the_models_own_greedy_answer(client, reference):
    png = png_bytes("red")
    got = client.chat.completions.create(
        model="tiny", messages=_image_message(data_url(png)), temperature=0, max_tokens=24
    )
    want = _oracle(reference, QUESTION, Image.open(io.BytesIO(png)), 24)
    choice = got.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert got.usage.prompt_tokens == want.prompt_tokens
    assert got.usage.completion_tokens == len(want.tokens)
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")


def test_streamed_pieces_join_to_the_whole_greedy_answer(client, reference):
    messages = _image_message(data_url(png_bytes((20, 200, 90))), "Describe it.")
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=40)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the same prompt again: its state comes from the prefix cache, the answer does not change
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens


def test_logprobs_are_the_models_own_streamed_or_not(client, reference):
    png = png_bytes("navy")
    kwargs = dict(model="tiny", messages=_image_message(data_url(png)), temperature=0, max_tokens=12)
    got = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3)
    want = _oracle(reference, QUESTION, Image.open(io.BytesIO(png)), 12, logprobs=3)
    content = got.choices[0].logprobs.content
    kept = len(want.tokens) if want.finish_reason == "length" else len(content)  # a stop string's tokens are cut
    assert len(content) == kept and kept > 0
    for entry, ref in zip(content, want.logprobs):
        assert entry.bytes == list(bytes([ref.token - 1]))  # the byte tokenizer: id = byte + 1
        assert entry.logprob == pytest.approx(ref.logprob, abs=1e-9)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([v for _, v in ref.top], abs=1e-9)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the chosen one is the top
    stream = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def _full_forward_logprobs(reference, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = reference.lm(torch.tensor([ids]))
    logp = torch.log_softmax(logits[0].double(), -1)
    return logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def _ids(tokens: list[str]) -> list[int]:
    """Byte-tokenizer ids back from OpenAI token strings (``"bytes:\\xNN"`` for a piece of a character)."""
    data = b"".join(bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode() for t in tokens)
    return [b + 1 for b in data]


def test_completions_echo_logprobs_equal_the_models_log_likelihoods(client, reference):
    prompt = "The quick brown fox jumps over the lazy dog. " * 2
    ids = [b + 1 for b in prompt.encode()]
    scored = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = scored.choices[0]
    assert choice.text == prompt and "".join(choice.logprobs.tokens) == prompt
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    want = _full_forward_logprobs(reference, ids)
    torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs[1:], dtype=torch.float64), want)
    assert choice.logprobs.text_offset == list(range(len(prompt)))
    assert all(len(t) == 2 for t in choice.logprobs.top_logprobs[1:])
    assert scored.usage.prompt_tokens == len(ids) and scored.usage.completion_tokens == 0

    # echo + generation: every token's log-probability (prompt and completion) from one full forward
    both = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, echo=True, logprobs=0, temperature=0)
    lp = both.choices[0].logprobs
    new_ids = _ids(lp.tokens[len(ids) :])
    assert len(lp.tokens) == len(ids) + len(new_ids) and both.choices[0].text.startswith(prompt)
    want = _full_forward_logprobs(reference, ids + new_ids)
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:], dtype=torch.float64), want)
    assert lp.top_logprobs is None  # logprobs=0: the chosen tokens only


def test_completions_batch_of_prompts_and_token_ids(client, reference):
    prompts = ["Hello", "A longer prompt than the first one"]
    batch = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    for prompt, choice in zip(prompts, batch.choices):
        ids = torch.tensor([[b + 1 for b in prompt.encode()]])
        want = reference.generate(ids, max_new_tokens=5)  # stops at id 0 only, as completions do
        assert choice.text == bytes(t - 1 for t in want).decode("utf-8", errors="replace")
    by_ids = client.completions.create(model="tiny", prompt=[b + 1 for b in b"Hello"], max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == batch.choices[0].text
    stream = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0, stream=True)
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in batch.choices]


def test_file_urls_inside_the_image_dir(client, served_dir):
    path = served_dir / "images" / "red.png"
    by_file = client.chat.completions.create(
        model="tiny", messages=_image_message(path.as_uri()), temperature=0, max_tokens=8
    )
    by_data = client.chat.completions.create(
        model="tiny", messages=_image_message(data_url(path.read_bytes())), temperature=0, max_tokens=8
    )
    assert by_file.choices[0].message.content == by_data.choices[0].message.content


def test_sampling_with_a_seed_is_reproducible(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=16, temperature=1.0)
    a = client.chat.completions.create(**kwargs, seed=7, top_p=0.9, presence_penalty=0.4, frequency_penalty=0.4)
    b = client.chat.completions.create(**kwargs, seed=7, top_p=0.9, presence_penalty=0.4, frequency_penalty=0.4)
    assert a.choices[0].message.content == b.choices[0].message.content
    texts = {client.chat.completions.create(**kwargs, seed=s).choices[0].message.content for s in range(4)}
    assert len(texts) > 1


def test_serve_command_refuses_what_it_cannot_serve(capsys, tmp_path):
    assert main(["serve", "--model", "no_such_preset_or_dir"]) == 2
    assert "neither a save_pretrained directory nor a preset" in capsys.readouterr().err
    args = ["serve", "--model", "visualrwkv_tiny", "--image-dir", str(tmp_path / "missing")]
    assert main(args) == 2
    assert "is not a folder" in capsys.readouterr().err
