"""The decode loop: chunked prefill equals one prefill, chunks interleave with decode steps, follow-up turns reuse
the cached state (no second image encoding), and one request's fault leaves the others untouched."""

from __future__ import annotations

import importlib
import io
import threading

import openai
import pytest
import torch
from PIL import Image

from assemblies.models import generate
from assemblies.models.config import default_sampling, make_prompt_builder, make_tokenizer
from assemblies.serving.engine import Engine, Failed, Finished, Job, Started
from rwkvblocks.generation import SamplingConfig
from tests.serving.conftest import data_url, png_bytes, tiny_model, wait_until


def _job(model, question: str, colour, config: SamplingConfig) -> Job:
    builder = make_prompt_builder(model.data_config, make_tokenizer(model.data_config))
    prompt = builder.build([{"from": "human", "value": f"<image>\n{question}"}], mode="inference")
    ids, _, starts = prompt.expand(model.image_tokens)
    pixels = model.encoder.transform([Image.new("RGB", (60, 40), colour)])
    return Job(ids, config, starts, pixels, (str(colour),))


class _Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()


def _run(engine: Engine, jobs: list[Job]) -> list[_Collector]:
    collectors = [_Collector() for _ in jobs]
    for job, collector in zip(jobs, collectors):
        engine.submit(job, collector)
    for collector in collectors:
        assert collector.done.wait(60)
    return collectors


@pytest.mark.parametrize("name", ["visualrwkv_tiny", "visualrwkv_hybrid_tiny", "visualrwkv7_tiny"])
def test_chunked_prefill_and_batching_equal_generation_alone(name):
    model = tiny_model(name)
    tokenizer = make_tokenizer(model.data_config)
    config = SamplingConfig(max_new_tokens=10, stop_tokens=(), logprobs=2)
    questions = [("Colour?", "red"), ("What is in this picture, and what colour is it?", "blue"), ("Which?", "green")]
    jobs = [_job(model, q, c, config) for q, c in questions]
    seen = []
    engine = Engine(model, "m", decode_bytes=tokenizer.decode_bytes, prefill_chunk=5, cache_bytes=0)
    engine._trace = lambda kind, size: seen.append((kind, size))
    engine.start()
    try:
        collectors = _run(engine, jobs)
    finally:
        engine.stop()
    for (question, colour), collector in zip(questions, collectors):
        result = collector.events[-1].result
        conv = [{"from": "human", "value": f"<image>\n{question}"}]
        want = generate(model, conv, Image.new("RGB", (60, 40), colour), config)[0]
        assert result.tokens == want.tokens
        assert [lp.logprob for lp in result.logprobs] == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-9)
    chunks = [size for kind, size in seen if kind == "prefill"]
    assert max(chunks) <= 5 + model.image_tokens and len(chunks) > len(jobs)  # several chunks per prompt


def test_a_long_prefill_runs_one_chunk_between_decode_steps(local_server):
    client = openai.OpenAI(base_url=local_server.url + "/v1", api_key="-", max_retries=0)
    long_question = "Please describe every detail of the picture. " * 4
    with local_server.slowed(0.005):
        # a raw completion stops at id 0 only: it decodes for the whole of the second request's prefill
        first = client.completions.create(model="local", prompt="Hi", max_tokens=80, temperature=0, stream=True)
        next(iter(first))
        local_server.work.clear()
        second = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": long_question}], max_tokens=4, temperature=0
        )
        rest = "".join(c.choices[0].text for c in first if c.choices)
    work = local_server.work
    prefills = [i for i, (kind, _) in enumerate(work) if kind == "prefill"]
    assert len(prefills) >= 8 and second.usage.prompt_tokens > 8 * 16 and rest
    assert all(size <= 16 for kind, size in work if kind == "prefill")
    steps_between = [work[a + 1 : b] for a, b in zip(prefills, prefills[1:])]
    assert all(any(kind == "step" for kind, _ in between) for between in steps_between), work


def test_follow_up_turns_reuse_the_state_and_skip_the_image_encoder(local_server, monkeypatch):
    model = local_server.engine.model
    client = openai.OpenAI(base_url=local_server.url + "/v1", api_key="-", max_retries=0)
    encoded = []
    original = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda images: encoded.append(len(images)) or original(images))
    png = png_bytes("orange")
    image_part = {"type": "image_url", "image_url": {"url": data_url(png)}}
    kwargs = dict(model="local", max_tokens=12, temperature=0)
    turns = [{"role": "user", "content": [image_part, {"type": "text", "text": "What colour is it?"}]}]
    first = client.chat.completions.create(messages=turns, **kwargs)
    answer = first.choices[0].message.content
    assert encoded == [1]
    wait_until(local_server.idle, what="the warm-up of the answered turn")
    turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Are you sure?"}]
    second = client.chat.completions.create(messages=turns, **kwargs)
    assert encoded == [1], "the follow-up must not encode the image again"
    conv = [
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": answer},
        {"from": "human", "value": "Are you sure?"},
    ]
    builder = make_prompt_builder(model.data_config, make_tokenizer(model.data_config))
    history = builder.build(conv[:2], mode="train").expand(model.image_tokens)[0]
    assert second.usage.prompt_tokens_details.cached_tokens == len(history)  # only "User: Are you sure?..." is new
    want = generate(model, conv, Image.open(io.BytesIO(png)), default_sampling(model.data_config, max_new_tokens=12))
    assert second.choices[0].message.content == want[0].text  # reuse changes nothing in the answer
    encoded.clear()  # the oracle ran the encoder
    other = client.chat.completions.create(
        messages=[{"role": "user", "content": [image_part, {"type": "text", "text": "Any animals?"}]}], **kwargs
    )
    assert encoded == [], "another question about the same image starts from the state after the image"
    assert other.usage.prompt_tokens_details.cached_tokens == len("User: ") + model.image_tokens


def test_one_failing_request_does_not_take_down_the_batch(local_server, monkeypatch):
    decode_module = importlib.import_module("rwkvblocks.generation.decode")
    original = decode_module.sample_token
    calls = {"n": 0}

    def faulty(processed, config, generator):
        if config.seed == 13:
            calls["n"] += 1
            if calls["n"] == 3:  # fails in the middle of its decode, while the others are in the batch
                raise RuntimeError("injected sampling fault")
        return original(processed, config, generator)

    client = openai.OpenAI(base_url=local_server.url + "/v1", api_key="-", max_retries=0)
    prompts = ["Hello there", "Tell me a story", "What is this?"]
    kwargs = dict(model="local", max_tokens=24, temperature=0)
    alone = [client.chat.completions.create(messages=[{"role": "user", "content": p}], **kwargs) for p in prompts]
    monkeypatch.setattr(decode_module, "sample_token", faulty)
    results, errors = {}, {}

    def run(i, prompt, seed):
        try:
            stream = client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], seed=seed, stream=True, **kwargs
            )
            results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except openai.APIError as err:
            errors[i] = str(err)

    with local_server.slowed(0.01):
        threads = [threading.Thread(target=run, args=(i, p, 1)) for i, p in enumerate(prompts)]
        threads.append(threading.Thread(target=run, args=(3, "I will fail", 13)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert set(errors) == {3} and "injected sampling fault" in errors[3]
    assert [results[i] for i in range(3)] == [a.choices[0].message.content for a in alone]
    monkeypatch.setattr(decode_module, "sample_token", original)
    assert client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **kwargs).choices
    assert local_server.engine.stats()["failed"] >= 1


def test_a_failing_prefill_fails_its_request_alone():
    model = tiny_model()
    tokenizer = make_tokenizer(model.data_config)
    config = SamplingConfig(max_new_tokens=4, stop_tokens=())
    good = _job(model, "Colour?", "red", config)
    bad = _job(model, "Colour?", "blue", config)
    bad.pixels = torch.zeros(1, 3, 7, 7, dtype=torch.float64)  # not the encoder's input size
    engine = Engine(model, "m", decode_bytes=tokenizer.decode_bytes).start()
    try:
        collectors = _run(engine, [bad, good])
        wait_until(lambda: engine.stats()["finished"] == 1, what="the good request")
    finally:
        engine.stop()
    assert isinstance(collectors[0].events[-1], Failed) and "prefill failed" in collectors[0].events[-1].message
    assert isinstance(collectors[1].events[0], Started) and len(collectors[1].events[-1].result.tokens) == 4
    assert engine.stats()["failed"] == 1
