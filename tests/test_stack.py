"""The block state protocol: a mixed stack through RWKVLanguageModel, the per-forward context, stateless
blocks in scans, injected parts that own their initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rwkvblocks import (
    ChannelMix,
    KVCache,
    PreNormTinyAttention,
    RWKVBlock,
    RWKVBlockState,
    RWKVLanguageModel,
    RWKVState,
    ScanPermuter,
    TimeMix,
    TokenShift,
)
from rwkvblocks.block import LAYER_NORM_EPS
from tests.helpers import spread_weights_

F64 = {"dtype": torch.float64}
C, V = 32, 50


class GRUBlock(nn.Module):
    """A pre-norm residual GRU; its state is the hidden vector `[B, C]` (batch first, as the protocol says)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, **F64)
        self.gru = nn.GRU(dim, dim, batch_first=True, **F64)

    def init_state(self, batch_size, device=None):
        return torch.zeros(batch_size, self.gru.hidden_size, device=device, **F64)

    def forward(self, x, state=None):
        y, h = self.gru(self.ln(x), None if state is None else state.unsqueeze(0).contiguous())
        return x + y, h.squeeze(0)


class MLPBlock(nn.Module):
    """Stateless: returns a bare tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim, **F64), nn.Linear(dim, dim, **F64), nn.Tanh())

    def forward(self, x, state=None):
        return x + self.net(x)


class ValueResidualBlock(nn.Module):
    """RWKV-7-style value residual: the first such block publishes its ``v``, later ones mix it in."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value = nn.Linear(dim, dim, bias=False, **F64)

    def forward(self, x, state=None, context=None):
        v = self.value(x)
        if "v_first" not in context:
            context["v_first"] = v
        else:
            v = v + (context["v_first"] - v) * 0.5
        return x + v


def _rwkv(i, L):
    att = TimeMix.rwkv6(C, head_dim=8, mix_rank=4, decay_rank=4, layer_idx=i, num_layers=L, **F64)
    return RWKVBlock(att, ChannelMix.rwkv6(C, layer_idx=i, num_layers=L, **F64), dim=C, layer_idx=i, **F64)


def _mixed(seed=0):
    torch.manual_seed(seed)
    blocks = [_rwkv(0, 2), GRUBlock(C), PreNormTinyAttention(C, head_dim=8, **F64), MLPBlock(C), _rwkv(1, 2)]
    lm = RWKVLanguageModel(
        nn.Embedding(V, C, **F64),
        blocks,
        nn.LayerNorm(C, eps=LAYER_NORM_EPS, **F64),
        nn.Linear(C, V, bias=False, **F64),
    )
    return spread_weights_(lm).eval()


def _tokens(b, t, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a: RWKVState, b: RWKVState):
    flat_a = [t for layer in a for t in _leaves(layer)]
    flat_b = [t for layer in b for t in _leaves(layer)]
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=0)


def _leaves(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, tuple):
        return [t for item in state for t in _leaves(item)]
    return []


def test_mixed_stack_parallel_equals_recurrent_and_split():
    lm = _mixed()
    tokens = _tokens(2, 13)
    with torch.no_grad():
        logits, state = lm(tokens)
        rows, s = [], None
        for t in range(tokens.shape[1]):
            out, s = lm(tokens[:, t : t + 1], s)
            rows.append(out)
        first, mid = lm(tokens[:, :6])
        second, end = lm(tokens[:, 6:], mid)
    torch.testing.assert_close(torch.cat(rows, 1), logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=1e-10, rtol=0)
    _assert_states_close(s, state)
    _assert_states_close(end, state)
    kinds = [type(layer) for layer in state]
    assert kinds == [RWKVBlockState, torch.Tensor, KVCache, type(None), RWKVBlockState]
    assert state.layers[2].k.shape == (2, 4, 13, 8)  # the attention block's KV cache grew to 13 positions


def test_mixed_stack_state_protocol_per_sample():
    lm = _mixed(seed=2)
    tokens = _tokens(3, 7)
    init = lm.init_state(3)
    assert [type(layer) for layer in init] == [RWKVBlockState, torch.Tensor, KVCache, type(None), RWKVBlockState]
    assert init.layers[2].k.shape == (3, 4, 0, 8) and init.wkv(0).dtype == torch.float64
    with torch.no_grad():
        from_zero, _ = lm(tokens, init)
        plain, state = lm(tokens)
        _, alone = lm(tokens[1:2])
        more = _tokens(3, 4, seed=5)
        batched, _ = lm(more, state)
        single, _ = lm(more[1:2], state[1])
        joined = RWKVState.cat([state[0], state[1:]])
    torch.testing.assert_close(from_zero, plain, atol=1e-12, rtol=0)
    _assert_states_close(state[1], alone)
    torch.testing.assert_close(batched[1:2], single, atol=1e-10, rtol=0)
    _assert_states_close(joined, state)
    moved = state.to(dtype=torch.float32)
    assert moved.layers[1].dtype == torch.float32 and moved.layers[2].k.dtype == torch.float32
    assert moved.wkv(0).dtype == torch.float64  # WKV keeps its accumulation dtype
    with pytest.raises(ValueError, match="layer 2.k: shapes beyond the batch differ"):
        RWKVState.cat([state[0], lm(tokens[:1, :2])[1]])  # KV caches of 7 and 2 positions


def test_mixed_stack_checks_each_blocks_state():
    lm = _mixed()
    _, state = lm(_tokens(2, 3))
    bad = RWKVState(state.layers[:4] + (state.layers[4]._replace(wkv=torch.zeros(2, 4, 4, 4, **F64)),))
    with pytest.raises(ValueError, match=r"block 1: state.wkv must have shape \[B, 4, 8, 8\]"):
        lm(_tokens(2, 1), bad)
    bad_cache = RWKVState(
        state.layers[:2] + (KVCache(torch.zeros(2, 2, 3, 8), torch.zeros(2, 2, 3, 8)),) + state.layers[3:]
    )
    with pytest.raises(ValueError, match="cache must hold"):
        lm(_tokens(2, 1), bad_cache)


def test_per_forward_context_reaches_later_blocks():
    torch.manual_seed(3)
    first, second = ValueResidualBlock(C), ValueResidualBlock(C)
    lm = RWKVLanguageModel(
        nn.Embedding(V, C, **F64),
        [_rwkv(0, 1), first, second],
        nn.LayerNorm(C, **F64),
        nn.Linear(C, V, bias=False, **F64),
    )
    spread_weights_(lm)
    tokens = _tokens(2, 5)
    with torch.no_grad():
        got, state = lm(tokens)
        x = lm.blocks[0](lm.embed(tokens))[0]
        v_first = first.value(x)
        x = x + v_first
        v = second.value(x)
        x = x + v + (v_first - v) * 0.5
        want = lm.head(lm.ln_out(x))
        rows, s = [], None
        for t in range(5):  # v_first is recomputed every forward, never stored in the state
            out, s = lm(tokens[:, t : t + 1], s)
            rows.append(out)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.cat(rows, 1), got, atol=1e-10, rtol=0)
    assert state.layers[1] is None and state.layers[2] is None


def test_scan_plan_accepts_stateless_blocks_and_names_bad_returns():
    plan = ScanPermuter("bi").plan([(0, 1, 2, 2), (1, 0, 2, 2)], batch_size=2, seq_len=6)
    x = torch.randn(2, 6, 4)
    y, state = plan.apply(lambda t, s: t * 2, x, None, layer_idx=1)  # a bare tensor back, B = 2
    torch.testing.assert_close(y, x * 2)
    assert state is None
    y, state = plan.apply(lambda t, s: (t + 1, "kept"), x, None, layer_idx=1)
    torch.testing.assert_close(y, x + 1)
    assert state == "kept"
    with pytest.raises(ValueError, match=r"block 1 must return a tensor y or a pair \(y, state\), got a tuple of 3"):
        plan.apply(lambda t, s: (t, s, s), x, None, layer_idx=1)
    with pytest.raises(ValueError, match="got list"):
        plan.apply(lambda t, s: [t], x, None, layer_idx=1)


def test_mixed_stack_with_a_scan_plan_equals_recurrent_prefill():
    lm = _mixed(seed=4)
    tokens = _tokens(1, 12)
    plan = ScanPermuter("multi").plan([(0, 2, 2, 3)], batch_size=1, seq_len=12)
    with torch.no_grad():
        logits, _ = lm(tokens, scan=plan)
        plain, _ = lm(tokens)
        head = ScanPermuter("multi").plan([(0, 2, 2, 3)], batch_size=1, seq_len=8)
        first, state = lm(tokens[:, :8], scan=head)
        rest, _ = lm(tokens[:, 8:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), logits, atol=1e-10, rtol=0)
    assert (logits - plain).abs().max() > 1e-6  # the scan changed what the blocks read


class _OwnShift(nn.Module):
    """A user's token shift: produces the names TimeMix needs, with or without its own initialisation."""

    def __init__(self, dim, with_reset: bool):
        super().__init__()
        self.inner = TokenShift(dim, names=("k", "v", "r", "g"))
        self.names = self.inner.names
        self.calls = []
        if with_reset:
            self.reset_parameters = lambda layer_idx, num_layers: self.calls.append((layer_idx, num_layers))

    def forward(self, x, state=None):
        return self.inner(x, state)


def test_injected_parts_initialise_themselves_or_are_refused():
    from rwkvblocks import StaticDecay

    own = _OwnShift(16, with_reset=True)
    mixer = TimeMix(16, num_heads=2, token_shift=own, decay=StaticDecay(2, 8), layer_idx=1, num_layers=3)
    mixer.reset_parameters()
    assert own.calls == [(1, 3)]
    mixer = TimeMix(16, num_heads=2, token_shift=_OwnShift(16, with_reset=False), decay=StaticDecay(2, 8))
    with pytest.raises(
        ValueError, match=r"TimeMix.reset_parameters: its token_shift \(_OwnShift\) has no reset_parameters"
    ):
        mixer.reset_parameters()
    with pytest.raises(ValueError, match="token_shift must produce"):
        ChannelMix(16, 32, token_shift=nn.Identity())
