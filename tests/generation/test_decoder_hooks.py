"""The ``Decoder`` hooks a server needs: drop a request, read its live result, isolate one request's failure, and
continue from a finished request's ``(logits, state)``."""

from __future__ import annotations

import importlib

import pytest
import torch

from assemblies import RWKVConfig, build_rwkv_lm
from rwkvblocks.generation import Decoder, SamplingConfig, generate_ids, lm_functions
from tests.helpers import spread_weights_

V = 257


def _lm(seed=0):
    torch.manual_seed(seed)
    cfg = RWKVConfig("x060", vocab_size=V, dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    return spread_weights_(build_rwkv_lm(cfg, dtype=torch.float64)).eval()


def _prompt(n, seed):
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(decoder):
    events = []
    while decoder.active:
        events += decoder.step()
    return {e.index: e.result for e in events if e.result is not None}


def test_cancel_drops_one_request_and_the_others_decode_as_alone():
    model = _lm()
    prefill, step = lm_functions(model)
    prompts = [_prompt(n, s) for n, s in ((4, 1), (7, 2), (5, 3))]
    cfg = SamplingConfig(max_new_tokens=8, stop_tokens=(), logprobs=2)
    decoder = Decoder(step, vocab_size=V)
    ids = [decoder.add(*prefill(torch.tensor([p])), cfg) for p in prompts]
    for _ in range(3):
        decoder.step()
    live = decoder.result(ids[1])
    assert len(live.tokens) == 3 and len(live.logprobs) == 3  # the live result grows step by step
    assert decoder.cancel(ids[1]) and decoder.active == 2
    assert not decoder.cancel(ids[1]) and not decoder.cancel(99)
    with pytest.raises(KeyError, match="not active"):
        decoder.result(ids[1])
    results = _run(decoder)
    assert set(results) == {ids[0], ids[2]}
    for i in (0, 2):
        assert results[ids[i]].tokens == generate_ids(model, [prompts[i]], cfg)[0].tokens
    assert decoder.cancel(ids[0]) is False  # finished requests are gone


def test_a_failing_request_ends_alone_when_errors_are_isolated(monkeypatch):
    model = _lm(seed=1)
    prefill, step = lm_functions(model)
    prompts = [_prompt(5, 1), _prompt(6, 2), _prompt(3, 3)]
    good = SamplingConfig(max_new_tokens=6, stop_tokens=())
    bad = SamplingConfig(max_new_tokens=6, stop_tokens=(), seed=13)  # greedy: the seed only marks it
    decode_module = importlib.import_module("rwkvblocks.generation.decode")
    original = decode_module.sample_token

    def faulty(processed, config, generator):
        if config.seed == 13:
            raise RuntimeError("injected fault")
        return original(processed, config, generator)

    monkeypatch.setattr(decode_module, "sample_token", faulty)
    decoder = Decoder(step, vocab_size=V, isolate_errors=True)
    ids = [decoder.add(*prefill(torch.tensor([p])), c) for p, c in zip(prompts, (good, bad, good))]
    results = _run(decoder)
    assert results[ids[1]].finish_reason == "error" and "injected fault" in results[ids[1]].error
    for i in (0, 2):
        assert results[ids[i]].finish_reason == "length"
        assert results[ids[i]].tokens == generate_ids(model, [prompts[i]], good)[0].tokens
    strict = Decoder(step, vocab_size=V)
    strict.add(*prefill(torch.tensor([prompts[1]])), bad)
    with pytest.raises(RuntimeError, match="injected fault"):
        strict.step()


def test_a_finished_request_continues_from_its_logits_and_state():
    model = _lm(seed=2)
    prefill, step = lm_functions(model)
    prompt = _prompt(6, 4)
    decoder = Decoder(step, vocab_size=V, return_state=True)
    decoder.add(*prefill(torch.tensor([prompt])), SamplingConfig(max_new_tokens=5, stop_tokens=()))
    first = next(iter(_run(decoder).values()))
    fed = prompt + first.tokens[:-1]  # the last chosen token was never fed
    logits, state = prefill(torch.tensor([fed]))
    torch.testing.assert_close(first.logits, logits)
    torch.testing.assert_close(first.state.layers[0][1], state.layers[0][1])
    assert int(first.logits.argmax()) == first.tokens[-1]
