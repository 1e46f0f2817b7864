"""rwkvblocks.generation: sampling settings, the batched decode loop, streaming text, prefix cache, scoring."""

from __future__ import annotations

import os
import resource

import pytest
import torch
from torch import nn

from assemblies import RWKVConfig, build_rwkv_lm
from rwkvblocks import RWKVState
from rwkvblocks.generation import (
    PrefixCache,
    SamplingConfig,
    TextStream,
    decode,
    generate_ids,
    lm_functions,
    process_logits,
    score_continuations,
)
from rwkvblocks.prompting import ByteTokenizer
from tests.helpers import spread_weights_

V = 257


def _lm(seed=0, version="x060"):
    torch.manual_seed(seed)
    cfg = RWKVConfig(version, vocab_size=V, dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    return spread_weights_(build_rwkv_lm(cfg, dtype=torch.float64)).eval()


def _prompt(n, seed):
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _argmax_by_full_forwards(model, prompt, steps):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_equals_argmax_of_repeated_full_forwards():
    model = _lm()
    prompt = _prompt(9, 1)
    out = generate_ids(model, [prompt], SamplingConfig(max_new_tokens=12, stop_tokens=()))[0]
    assert out.tokens == _argmax_by_full_forwards(model, prompt, 12)
    assert out.finish_reason == "length" and out.prompt_tokens == 9


def test_batched_prompts_of_three_lengths_equal_one_by_one():
    model = _lm(seed=1)
    prompts = [_prompt(n, s) for n, s in ((3, 1), (11, 2), (7, 3), (11, 4))]
    configs = [
        SamplingConfig(max_new_tokens=8 + i, stop_tokens=(), temperature=0.8, top_p=0.9, seed=i) for i in range(4)
    ]
    batched = generate_ids(model, prompts, configs)
    for prompt, cfg, got in zip(prompts, configs, batched):
        alone = generate_ids(model, [prompt], cfg)[0]
        assert got.tokens == alone.tokens
    assert [len(r.tokens) for r in batched] == [8, 9, 10, 11]  # rows left the batch one by one


def test_seeded_sampling_is_reproducible_and_differs_across_seeds():
    model = _lm(seed=2)
    prompt = _prompt(5, 7)

    def run(seed):
        cfg = SamplingConfig(max_new_tokens=20, stop_tokens=(), temperature=1.5, top_k=50, seed=seed)
        return generate_ids(model, [prompt], cfg)[0].tokens

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_logits_processors():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    cfg = SamplingConfig(temperature=1.0, top_k=2)
    assert torch.isinf(process_logits(logits, cfg)[2:]).all()
    kept = process_logits(logits, SamplingConfig(temperature=1.0, top_p=0.7))
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]  # p(0) = 0.61 < 0.7 <= p(0) + p(1) = 0.83
    kept = process_logits(logits, SamplingConfig(temperature=1.0, min_p=0.3))
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]  # e^-1 = 0.37 >= 0.3 > e^-1.5
    assert torch.isinf(process_logits(logits, SamplingConfig(banned_tokens=(0,)))[0])
    from rwkvblocks.generation import Penalties

    pen = Penalties(5, "cpu")
    pen.update(0, 0.5)
    pen.update(0, 0.5)  # ChatRWKV: occurrence decays, then +1: 1.5
    got = process_logits(logits, SamplingConfig(presence_penalty=0.4, frequency_penalty=0.2), pen)
    torch.testing.assert_close(got[0], torch.tensor(2.0 - 0.4 - 0.2 * 1.5))
    for bad in ({"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}, {"stop_strings": ("",)}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingConfig(**bad)


class ScriptedLM(nn.Module):
    """A state-protocol model that emits a fixed script of ids: its state is the position in the script."""

    vocab_size = V

    def __init__(self, script):
        super().__init__()
        self.script = torch.tensor(script)
        self.emb = nn.Embedding(V, 1)

    def forward(self, tokens, state=None, logits_to_keep=None):
        B, T = tokens.shape
        count = torch.zeros(B, dtype=torch.long) if state is None else state.layers[0] + T  # tokens emitted
        logits = torch.full((B, T, V), -10.0)
        logits[:, -1].scatter_(1, self.script[count.clamp(max=len(self.script) - 1)][:, None], 10.0)
        return logits, RWKVState((count,))


def test_streaming_yields_whole_characters_and_joins_to_the_text():
    tok = ByteTokenizer()
    answer = "猫在睡觉 😴 ok"
    model = ScriptedLM(tok.encode(answer) + [0])
    prefill, step = lm_functions(model)
    start = prefill(torch.tensor([[5, 6]]))
    pieces = [
        e.piece
        for e in decode(step, [start], [SamplingConfig(stop_tokens=(0,))], vocab_size=V, decode_bytes=tok.decode_bytes)
    ]
    assert "".join(pieces) == answer
    assert all("\ufffd" not in p for p in pieces) and sum(1 for p in pieces if p) >= 6
    assert "" in pieces  # bytes of an incomplete character were held back


def test_stop_strings_end_generation_and_are_not_returned():
    tok = ByteTokenizer()
    model = ScriptedLM(tok.encode("red.\n\nUser: more") + [0])
    out = generate_ids(
        model, [[1, 2]], SamplingConfig(stop_tokens=(0,), stop_strings=("\n\n",)), decode_bytes=tok.decode_bytes
    )
    assert out[0].text == "red." and out[0].finish_reason == "stop"  # "\n\n" spans two byte tokens
    stream = TextStream(tok.decode_bytes, ("STOP", "\n\n"))
    pieces = [stream.push(t) for t in tok.encode("abSTxSTOPzz")]
    assert "".join(pieces) == "abSTx" and stream.stopped == "STOP"


def test_prefix_cache_budget_and_lru():
    state = RWKVState((torch.zeros(1, 256),))  # 1 KiB
    logits = torch.zeros(1, 256)
    cache = PrefixCache(max_bytes=4096)
    for i in range(3):
        cache.put("m", None, [i], logits, state)
    assert len(cache) == 2 and cache.bytes <= 4096  # 2 KiB per entry
    assert cache.get("m", None, [0]) is None and cache.get("m", None, [2]) is not None
    cache.put("m", "img", [1, 2], logits, state)
    n, _, got = cache.longest_prefix("m", "img", [1, 2, 3])
    assert n == 2 and got is state
    assert cache.longest_prefix("m", "other", [1, 2, 3])[0] == 0


def test_choice_ranking_equals_separate_full_forwards():
    model = _lm(seed=3)
    prefix = _prompt(6, 9)
    choices = [[5], [7, 8, 9], [10, 11]]
    prefill, step = lm_functions(model)
    logits, state = prefill(torch.tensor([prefix]))
    got = score_continuations(step, logits, state, choices)
    with torch.no_grad():
        for c, score in zip(choices, got):
            full, _ = model(torch.tensor([prefix + c]))
            logp = torch.log_softmax(full[0].float(), -1)
            want = sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(c))
            assert score == pytest.approx(want, abs=1e-9)


def test_bad_prompts_are_named():
    model = _lm()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_ids(model, [[1], []])
    with pytest.raises(ValueError, match=r"outside \[0, 257\)"):
        generate_ids(model, [[1, 999]])
    with pytest.raises(ValueError, match="more than the context length 4"):
        generate_ids(model, [[1, 2, 3, 4, 5]], context_length=4)
    with pytest.raises(ValueError, match=r"stop_tokens must be ids in \[0, 257\)"):
        generate_ids(model, [[1, 2]], SamplingConfig(stop_tokens=(261,)))


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


@pytest.mark.slow
def test_5000_token_generation_keeps_resident_memory_flat():
    model = _lm(seed=4)
    model.float()
    prefill, step = lm_functions(model)
    start = prefill(torch.tensor([_prompt(16, 1)]))
    cfg = SamplingConfig(max_new_tokens=5000, stop_tokens=(), temperature=1.0, seed=0)
    rss = []
    for i, _event in enumerate(decode(step, [start], [cfg], vocab_size=V)):
        if i in (500, 4999):  # after warm-up, and at the end
            rss.append(_rss_kib())
    growth = (rss[1] - rss[0]) / rss[0]
    print(f"resident memory {rss[0]} KiB after 500 tokens, {rss[1]} KiB after 5000: {growth:+.2%}")
    assert growth < 0.05
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_requests_join_between_steps_and_match_running_alone():
    from rwkvblocks.generation import Decoder

    model = _lm(seed=5)
    prefill, step = lm_functions(model)
    prompts = [_prompt(4, 1), _prompt(9, 2), _prompt(6, 3)]
    configs = [SamplingConfig(max_new_tokens=10, stop_tokens=(), temperature=0.9, seed=i) for i in range(3)]
    decoder = Decoder(step, vocab_size=V)
    events = []
    for prompt, cfg in zip(prompts, configs):  # one new request every 3 steps, while the others decode
        decoder.add(*prefill(torch.tensor([prompt])), cfg, prompt_tokens=len(prompt))
        for _ in range(3):
            events += decoder.step()
    while decoder.active:
        events += decoder.step()
    results = {e.index: e.result for e in events if e.result is not None}
    for i, (prompt, cfg) in enumerate(zip(prompts, configs)):
        assert results[i].tokens == generate_ids(model, [prompt], cfg)[0].tokens
    with pytest.raises(ValueError, match="one request at a time"):
        decoder.add(*prefill(torch.tensor([prompts[0], prompts[0]])), configs[0])


@pytest.mark.slow
def test_compiled_step_decodes_as_the_eager_one():
    """``compile=True``: the batch shrinks as rows finish (new shapes), and every row's tokens and log-probabilities
    equal the eager decode's; a bad ``compile`` value is refused."""
    from rwkvblocks.generation import step_function

    model = _lm(seed=6)
    prompts = [_prompt(5, 1), _prompt(8, 2), _prompt(3, 3)]
    configs = [SamplingConfig(max_new_tokens=n, stop_tokens=(), logprobs=2) for n in (6, 3, 9)]
    eager = generate_ids(model, prompts, configs)
    compiled = generate_ids(model, prompts, configs, compile=True)
    for a, b in zip(eager, compiled):
        assert a.tokens == b.tokens
        assert [t.logprob for t in a.logprobs] == pytest.approx([t.logprob for t in b.logprobs], abs=1e-9)
    with pytest.raises(ValueError, match="compile must be"):
        step_function(model, compile=3)
