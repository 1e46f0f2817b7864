"""TimeMix and ChannelMix: from-scratch initialisation (DESIGN.md §4), state, independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rwkvblocks import ChannelMix, RWKVBlock, TimeMix, ffn_dim
from tests.helpers import spread_weights_

C, HEAD = 64, 16
LAYER, LAYERS = 1, 3
R0, R1 = LAYER / (LAYERS - 1), 1 - LAYER / LAYERS
DDD = torch.arange(C, dtype=torch.float64) / C
N = torch.arange(C, dtype=torch.float64)


def _gram(w):
    return w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w


def test_rwkv6_time_mix_init_follows_design():
    att = TimeMix.rwkv6(
        C, head_dim=HEAD, mix_rank=4, decay_rank=8, layer_idx=LAYER, num_layers=LAYERS, dtype=torch.float64
    )
    shift, decay = att.token_shift, att.decay
    torch.testing.assert_close(shift.mix_x, 1 - DDD**R1)
    expected = {
        "w": 1 - DDD**R1,
        "k": 1 - DDD**R1,
        "v": 1 - (DDD**R1 + 0.3 * R0),
        "r": 1 - DDD ** (0.5 * R1),
        "g": 1 - DDD ** (0.5 * R1),
    }
    for row, name in enumerate(shift.names):
        torch.testing.assert_close(shift.mix[row], expected[name], msg=name)
    assert (shift.lora_a == 0).all() and (decay.lora_a == 0).all()
    for lora_b in (shift.lora_b, decay.lora_b):
        assert lora_b.abs().max() <= 0.01 and lora_b.abs().max() > 0.005
    torch.testing.assert_close(decay.time_decay, -6 + 5 * (N / (C - 1)) ** (0.7 + 1.3 * R0))
    bonus = R0 * (1 - N / (C - 1)) + 0.1 * ((N + 1) % 3 - 1)
    torch.testing.assert_close(att.time_faaaa.flatten(), bonus)
    eye = torch.eye(C, dtype=torch.float64)
    for name, gain in (("receptance", 1.0), ("key", 0.1), ("value", 1.0), ("gate", 0.1)):
        torch.testing.assert_close(_gram(getattr(att, name).weight), gain**2 * eye, msg=name)
    assert (att.output.weight == 0).all()
    torch.testing.assert_close(att.ln_x.weight, torch.full((C,), ((1 + LAYER) / LAYERS) ** 0.7, dtype=torch.float64))
    assert att.ln_x.eps == 64e-5


def test_rwkv5_time_mix_init_uses_lerp_mixes_and_a_static_decay():
    att = TimeMix.rwkv5(C, head_dim=HEAD, layer_idx=LAYER, num_layers=LAYERS, dtype=torch.float64)
    shift = att.token_shift
    assert shift.names == ("k", "v", "r", "g") and shift.form == "lerp"
    torch.testing.assert_close(shift.mix[0], DDD**R1)
    torch.testing.assert_close(shift.mix[1], DDD**R1 + 0.3 * R0)
    torch.testing.assert_close(shift.mix[2], DDD ** (0.5 * R1))
    want = (-6 + 5 * (N / (C - 1)) ** (0.7 + 1.3 * R0)).view(C // HEAD, HEAD)
    torch.testing.assert_close(att.decay.time_decay, want)


@pytest.mark.parametrize("version", ["rwkv5", "rwkv6"])
def test_channel_mix_init(version):
    ffn = getattr(ChannelMix, version)(C, layer_idx=LAYER, num_layers=LAYERS, dtype=torch.float64)
    F = ffn_dim(C)
    assert ffn.key.weight.shape == (F, C) and ffn.value.weight.shape == (C, F)
    ramp = DDD**R1
    want = ramp if version == "rwkv5" else 1 - ramp
    torch.testing.assert_close(ffn.token_shift.mix, want.expand(2, C))
    # orthogonal with BlinkDL's sqrt(out / in) gain for tall matrices
    torch.testing.assert_close(ffn.key.weight.T @ ffn.key.weight, F / C * torch.eye(C, dtype=torch.float64))
    assert (ffn.receptance.weight == 0).all() and (ffn.value.weight == 0).all()


def test_ffn_width_matches_released_models():
    assert [ffn_dim(c) for c in (2048, 2560, 4096)] == [7168, 8960, 14336]


def _random_block(version, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    att = getattr(TimeMix, version)(C, head_dim=HEAD, dtype=dtype)
    ffn = getattr(ChannelMix, version)(C, dtype=dtype)
    return spread_weights_(RWKVBlock(att, ffn, dim=C, dtype=dtype))


@pytest.mark.parametrize("version", ["rwkv5", "rwkv6"])
def test_block_parallel_equals_recurrent_and_split(version):
    block = _random_block(version)
    x = torch.randn(2, 15, C, dtype=torch.float64)
    whole, state = block(x)
    rows, s = [], None
    for t in range(x.shape[1]):
        y, s = block(x[:, t : t + 1], s)
        rows.append(y)
    torch.testing.assert_close(torch.cat(rows, 1), whole, atol=1e-10, rtol=0)
    first, mid = block(x[:, :6])
    second, end = block(x[:, 6:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-10, rtol=0)
    for a, b, c in zip(state, s, end):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        torch.testing.assert_close(a, c, atol=1e-10, rtol=0)
    assert state.wkv.dtype == torch.float64 and state.wkv.shape == (2, C // HEAD, HEAD, HEAD)


@pytest.mark.parametrize("version", ["rwkv5", "rwkv6"])
def test_time_mix_gradcheck(version):
    torch.manual_seed(0)
    att = (
        getattr(TimeMix, version)(8, head_dim=4, mix_rank=2, decay_rank=2, dtype=torch.float64)
        if version == "rwkv6"
        else TimeMix.rwkv5(8, head_dim=4, dtype=torch.float64)
    )
    with torch.no_grad():
        for p in att.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    state = (torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: att(x, state)[0], (x,))


class _TinyTransformerLikeModel(nn.Module):
    """A model that is not an RWKV stack: TimeMix is just its token mixer."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mixer = TimeMix.rwkv6(dim, head_dim=16, mix_rank=4, decay_rank=8)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        y, _ = self.mixer(self.norm(x))
        x = x + y
        return self.out(x + self.mlp(x))


def test_time_mix_trains_as_a_drop_in_token_mixer():
    """Task: output the token seen two steps earlier (impossible without mixing across time)."""
    torch.manual_seed(0)
    vocab, model = 12, _TinyTransformerLikeModel(12, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        tokens = torch.randint(0, vocab, (16, 24))
        logits = model(tokens)[:, 2:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, :-2].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.5 * start, (start, end)


def test_time_mix_rejects_bad_wiring_and_shapes():
    att = TimeMix.rwkv6(C, head_dim=HEAD)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 64\]"):
        att(torch.randn(1, 3, 32))
    from rwkvblocks import DataDependentDecay, TokenShift

    with pytest.raises(ValueError, match=r"token_shift must produce \['g', 'k', 'r', 'v', 'w'\]"):
        TimeMix(C, num_heads=4, token_shift=TokenShift(C, names=("k", "v", "r", "g")), decay=DataDependentDecay(C, 4))
    with pytest.raises(ValueError, match="multiple of head_dim"):
        TimeMix.rwkv6(C, head_dim=24)
    with pytest.raises(ValueError, match="layer_idx"):
        TimeMix.rwkv5(C, layer_idx=3, num_layers=3)
