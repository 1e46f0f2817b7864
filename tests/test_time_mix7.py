"""TimeMix7 and ChannelMix7 (RWKV-7, x070): the equations against an fp64 loop, BlinkDL's from-scratch init,
state continuation, the value residual through the stack's context, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rwkvblocks import ChannelMix7, RWKVBlock, RWKVLanguageModel, ScanPermuter, TimeMix7
from tests.helpers import spread_weights_

C, HEAD = 64, 16
LAYER, LAYERS = 1, 3
R0, R1 = LAYER / (LAYERS - 1), 1 - LAYER / LAYERS
DDD = torch.arange(C, dtype=torch.float64) / C
N = torch.arange(C, dtype=torch.float64)
RANKS = dict(decay_rank=12, a_rank=10, value_rank=6, gate_rank=20)


def _gram(w):
    return w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w


def _stack(num_layers=3, dim=C, head_dim=HEAD, vocab=50, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    blocks = [
        RWKVBlock(
            TimeMix7.rwkv7(dim, head_dim=head_dim, **RANKS, layer_idx=i, num_layers=num_layers, dtype=dtype),
            ChannelMix7.rwkv7(dim, layer_idx=i, num_layers=num_layers, dtype=dtype),
            dim=dim,
            layer_idx=i,
            dtype=dtype,
        )
        for i in range(num_layers)
    ]
    kw = {"dtype": dtype}
    lm = RWKVLanguageModel(
        nn.Embedding(vocab, dim, **kw), blocks, nn.LayerNorm(dim, **kw), nn.Linear(dim, vocab, bias=False, **kw)
    )
    return spread_weights_(lm).eval()


def _time_mix_fp64(att: TimeMix7, x, v_first, shift=None, wkv=None):
    """x070 time mixing written out from DESIGN.md §15, one token at a time, in fp64."""
    p = {n: t.detach().double() for n, t in att.named_parameters()}
    B, T, Cx = x.shape
    H, K = att.num_heads, att.head_dim
    x = x.double()
    prev = torch.zeros(B, Cx, dtype=torch.float64) if shift is None else shift.double()
    S = torch.zeros(B, H, K, K, dtype=torch.float64) if wkv is None else wkv.double().clone()
    mix = dict(zip(att.token_shift.names, p["token_shift.mix"]))
    out, vs = [], []
    for t in range(T):
        xt = x[:, t]
        xx = prev - xt
        prev = xt
        xr, xw, xk, xv, xa, xg = (xt + xx * mix[n] for n in "rwkvag")
        r = xr @ p["receptance.weight"].T
        k = xk @ p["key.weight"].T
        v = xv @ p["value.weight"].T
        decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(p["w0"] + torch.tanh(xw @ p["w1"]) @ p["w2"]))
        if att.layer_idx == 0:
            vs.append(v)
        else:
            v = v + (v_first[:, t].double() - v) * torch.sigmoid(p["v0"] + (xv @ p["v1"]) @ p["v2"])
        a = torch.sigmoid(p["a0"] + (xa @ p["a1"]) @ p["a2"])
        g = torch.sigmoid(xg @ p["g1"]) @ p["g2"]
        kk = (k * p["k_k"]).view(B, H, K)
        kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k * (1 + (a - 1) * p["k_a"])
        rh, kh, vh, ah = (z.view(B, H, K) for z in (r, k, v, a))
        y = torch.zeros(B, H, K, dtype=torch.float64)
        for b in range(B):
            for h in range(H):
                s = S[b, h]  # [value i, key j]
                s = s * decay.view(B, H, K)[b, h] + torch.outer(s @ -kk[b, h], kk[b, h] * ah[b, h])
                s = s + torch.outer(vh[b, h], kh[b, h])
                S[b, h] = s
                y[b, h] = s @ rh[b, h]
        y = F.group_norm(y.reshape(B, Cx), H, p["ln_x.weight"], p["ln_x.bias"], 64e-5).view(B, H, K)
        y = y + (rh * kh * p["r_k"]).sum(-1, keepdim=True) * vh
        out.append((y.reshape(B, Cx) * g) @ p["output.weight"].T)
    return torch.stack(out, 1), (prev, S), torch.stack(vs, 1) if vs else None


@pytest.mark.parametrize("T", [1, 15])
def test_time_mix_matches_the_equations_in_fp64(T):
    torch.manual_seed(1)
    first = spread_weights_(TimeMix7.rwkv7(C, head_dim=HEAD, **RANKS, layer_idx=0, num_layers=2, dtype=torch.float64))
    second = spread_weights_(TimeMix7.rwkv7(C, head_dim=HEAD, **RANKS, layer_idx=1, num_layers=2, dtype=torch.float64))
    x = torch.randn(2, T, C, dtype=torch.float64)
    shift, wkv = (
        torch.randn(2, C, dtype=torch.float64),
        0.3 * torch.randn(2, C // HEAD, HEAD, HEAD, dtype=torch.float64),
    )
    context = {}
    y0, s0 = first(x, (shift, wkv), context=context)
    want0, (want_shift, want_wkv), v_first = _time_mix_fp64(first, x, None, shift, wkv)
    torch.testing.assert_close(context["v_first"], v_first)
    y1, s1 = second(x, (shift, wkv), context=context)
    want1, (want_shift1, want_wkv1), _ = _time_mix_fp64(second, x, v_first, shift, wkv)
    assert want0.abs().max() > 0.1 and want1.abs().max() > 0.1
    for got, want in ((y0, want0), (s0.shift, want_shift), (s0.wkv, want_wkv), (y1, want1), (s1.wkv, want_wkv1)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    assert s0.wkv.dtype == torch.float64


def test_channel_mix_is_squared_relu_without_receptance():
    torch.manual_seed(2)
    ffn = spread_weights_(ChannelMix7.rwkv7(C, layer_idx=1, num_layers=2, dtype=torch.float64))
    x, prev = torch.randn(2, 5, C, dtype=torch.float64), torch.randn(2, C, dtype=torch.float64)
    y, shift = ffn(x, prev)
    xx = torch.cat([prev[:, None], x[:, :-1]], 1) - x
    k = torch.relu((x + xx * ffn.token_shift.mix[0]) @ ffn.key.weight.T) ** 2
    torch.testing.assert_close(y, k @ ffn.value.weight.T)
    torch.testing.assert_close(shift, x[:, -1])
    assert ffn.hidden_dim == 4 * C and not hasattr(ffn, "receptance")


def test_time_mix_init_follows_blinkdl_x070():
    att = TimeMix7.rwkv7(C, head_dim=HEAD, **RANKS, layer_idx=LAYER, num_layers=LAYERS, dtype=torch.float64)
    assert att.token_shift.names == ("r", "w", "k", "v", "a", "g") and att.token_shift.form == "maa"
    exponents = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}
    for row, name in enumerate(att.token_shift.names):
        torch.testing.assert_close(att.token_shift.mix[row], 1 - DDD ** (exponents[name] * R1), msg=name)
    linear = N / (C - 1) - 0.5
    z = ((N % HEAD) - (HEAD - 1) / 2) / ((HEAD - 1) / 2)
    zigzag = z * z.abs()
    www = -6 + 6 * (N / (C - 1)) ** (1 + R0**0.3)
    torch.testing.assert_close(att.w0, www + 0.5 + zigzag * 2.5)
    torch.testing.assert_close(att.a0, -0.19 + zigzag * 0.3 + linear * 0.4)
    torch.testing.assert_close(att.v0, 0.73 - linear * 0.4)
    torch.testing.assert_close(att.k_k, 0.71 - linear * 0.1)
    assert (att.k_a == 1.02).all() and (att.r_k == -0.04).all() and att.r_k.shape == (C // HEAD, HEAD)
    for down, up in (("w1", "w2"), ("a1", "a2"), ("v1", "v2"), ("g1", "g2")):
        assert (getattr(att, down) == 0).all(), down
        rank = getattr(att, up).shape[0]
        torch.testing.assert_close(_gram(getattr(att, up)), 0.01 * torch.eye(rank, dtype=torch.float64), msg=up)
    eye = torch.eye(C, dtype=torch.float64)
    for name, gain in (("receptance", 1.0), ("key", 0.1), ("value", 1.0)):
        torch.testing.assert_close(_gram(getattr(att, name).weight), gain**2 * eye, msg=name)
    assert (att.output.weight == 0).all()
    torch.testing.assert_close(att.ln_x.weight, torch.full((C,), ((1 + LAYER) / LAYERS) ** 0.7, dtype=torch.float64))
    assert (att.ln_x.bias == 0).all() and att.ln_x.eps == 64e-5


def test_layer_zero_has_no_value_residual_lora():
    first = TimeMix7.rwkv7(C, head_dim=HEAD, layer_idx=0, num_layers=2)
    assert first.v0 is None and first.v1 is None and first.v2 is None
    assert not {"v0", "v1", "v2"} & {name for name, _ in first.named_parameters()}
    assert {"v0", "v1", "v2"} <= {
        n for n, _ in TimeMix7.rwkv7(C, head_dim=HEAD, layer_idx=1, num_layers=2).named_parameters()
    }


def test_channel_mix_init_follows_blinkdl_x070():
    ffn = ChannelMix7.rwkv7(C, layer_idx=LAYER, num_layers=LAYERS, dtype=torch.float64)
    torch.testing.assert_close(ffn.token_shift.mix[0], 1 - DDD ** (R1**4))
    torch.testing.assert_close(ffn.key.weight.T @ ffn.key.weight, torch.eye(C, dtype=torch.float64))  # gain 1
    assert (ffn.value.weight == 0).all()


def test_parallel_equals_recurrent_and_two_pieces():
    lm = _stack()
    tokens = torch.randint(0, 50, (2, 15), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, state = lm(tokens)
        head, mid = lm(tokens[:, :6])
        tail, pieces = lm(tokens[:, 6:], mid)
        rows, step = [], None
        for t in range(tokens.shape[1]):
            out, step = lm(tokens[:, t : t + 1], step)
            rows.append(out)
    assert logits.abs().max() > 0.1
    torch.testing.assert_close(torch.cat([head, tail], 1), logits)
    torch.testing.assert_close(torch.cat(rows, 1), logits)
    for a, b, c in zip(state.layers, pieces.layers, step.layers):
        for field in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(b, field), getattr(a, field))
            torch.testing.assert_close(getattr(c, field), getattr(a, field))
    assert state.wkv(0).shape == (2, C // HEAD, HEAD, HEAD) and state.wkv(0).dtype == torch.float64


def test_v_first_is_recomputed_not_stored():
    lm = _stack()
    state = lm.init_state(1)
    assert all(len(layer) == 4 for layer in state.layers)  # att_shift, wkv, ffn_shift, kv: no v_first


def test_later_layers_need_v_first():
    att = TimeMix7.rwkv7(C, head_dim=HEAD, layer_idx=1, num_layers=2)
    x = torch.randn(1, 3, C)
    with pytest.raises(ValueError, match="context with 'v_first'"):
        att(x)
    with pytest.raises(ValueError, match=r"context\['v_first'\] must have shape \(1, 3, 64\)"):
        att(x, context={"v_first": torch.zeros(1, 2, C)})
    y, _ = att(x, context={"v_first": torch.zeros(1, 3, C)})
    assert y.shape == x.shape


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="head_dim=48"):
        TimeMix7.rwkv7(C, head_dim=48)
    with pytest.raises(ValueError, match="gate_rank must be positive"):
        TimeMix7.rwkv7(C, head_dim=HEAD, gate_rank=0)
    with pytest.raises(ValueError, match="token_shift must produce"):
        TimeMix7(C, num_heads=4, token_shift=nn.Identity(), decay_rank=4, a_rank=4, value_rank=4, gate_rank=4)
    att = TimeMix7.rwkv7(C, head_dim=HEAD)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 64\]"):
        att(torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match=r"state.wkv must have shape \[B, 4, 16, 16\]"):
        att.check_state((torch.zeros(2, C), torch.zeros(2, 4, 16, 8)), 2)


def test_low_precision_keeps_an_fp32_state():
    lm = _stack(num_layers=2, dtype=torch.bfloat16)
    state = lm.init_state(2)
    assert state.layers[0].att_shift.dtype == torch.bfloat16 and state.wkv(1).dtype == torch.float32
    with torch.no_grad():
        logits, state = lm(torch.tensor([[1, 2, 3], [4, 5, 6]]), state)
    assert logits.dtype == torch.bfloat16 and state.wkv(1).dtype == torch.float32
    assert torch.isfinite(logits.float()).all()


def test_gradients_match_finite_differences():
    torch.manual_seed(4)
    kw = dict(head_dim=4, decay_rank=3, a_rank=2, value_rank=2, gate_rank=3, num_layers=2, dtype=torch.float64)
    first = spread_weights_(TimeMix7.rwkv7(8, layer_idx=0, **kw))
    second = spread_weights_(TimeMix7.rwkv7(8, layer_idx=1, **kw))
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    wkv = 0.3 * torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def run(x, wkv):
        context = {}
        y0, _ = first(x, (torch.zeros(1, 8, dtype=torch.float64), wkv), context=context)
        y1, state = second(y0 + x, None, context=context)
        return y1, state.wkv

    assert torch.autograd.gradcheck(run, (x, wkv))


def test_v_first_follows_each_layers_scan_order():
    """With a bidirectional scan, layer 1 reads layer 0's values in its own (reversed) patch order."""
    lm = _stack(num_layers=2)
    tokens = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(5))
    plan = ScanPermuter("bi").plan([(0, 2, 2, 4)], batch_size=1, seq_len=12)
    with torch.no_grad():
        got, _ = lm(tokens, scan=plan)
        context = {}  # by hand: block 0 forward, block 1 on the reversed span
        x, _ = lm.blocks[0](lm.embed(tokens), context=context)
        scanned = {"v_first": plan.permute(context["v_first"], 1)}
        y, _ = lm.blocks[1](plan.permute(x, 1), context=scanned)
        want = lm.head(lm.ln_out(plan.unpermute(y, 1)))
        misaligned, _ = lm.blocks[1](plan.permute(x, 1), context=context)
    torch.testing.assert_close(got, want)
    assert (lm.head(lm.ln_out(plan.unpermute(misaligned, 1))) - want).abs().max() > 1e-3
