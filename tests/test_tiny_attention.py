"""TinyAttention: an explicit attention oracle, KV-cache decoding, backends, and the hybrid block."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvblocks import (
    BackendUnavailableError,
    ChannelMix,
    PreNormTinyAttention,
    RWKVBlock,
    RWKVState,
    TimeMix,
    TinyAttention,
)
from rwkvblocks.ops.attention import attention_dispatcher, causal_attention

F64 = {"dtype": torch.float64}


def _oracle(att: TinyAttention, x: torch.Tensor) -> torch.Tensor:
    """Per query: softmax over the keys up to it, written out with loops; pre-norm and residual for
    ``PreNormTinyAttention``."""
    B, T, _ = x.shape
    prenorm = isinstance(att, PreNormTinyAttention)
    n = torch.nn.functional.layer_norm(x, (att.dim,), att.tiny_ln.weight, att.tiny_ln.bias, 1e-5) if prenorm else x
    q, k, v = n @ att.tiny_q.weight.T, n @ att.tiny_k.weight.T, n @ att.tiny_v.weight.T
    out = torch.zeros(B, T, att.attn_dim, dtype=x.dtype)
    D = att.head_dim
    for b in range(B):
        for h in range(att.num_heads):
            cols = slice(h * D, (h + 1) * D)
            for t in range(T):
                scores = torch.stack([q[b, t, cols] @ k[b, s, cols] / math.sqrt(D) for s in range(t + 1)])
                weights = torch.softmax(scores, 0)
                out[b, t, cols] = sum(weights[s] * v[b, s, cols] for s in range(t + 1))
    return (x if prenorm else 0) + out @ att.tiny_o.weight.T


def _attention(seed=0, cls=PreNormTinyAttention, **kw):
    torch.manual_seed(seed)
    att = cls(48, head_dim=16, **kw, **F64)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_(0, 0.3)
    return att


@pytest.mark.parametrize("cls", [TinyAttention, PreNormTinyAttention])
def test_matches_the_explicit_attention(cls):
    att = _attention(cls=cls)
    x = torch.randn(2, 7, 48, **F64)
    y, cache = att(x)
    torch.testing.assert_close(y, _oracle(att, x))
    assert cache.k.shape == (2, 3, 7, 16)


def test_the_plain_attention_has_no_norm_and_no_residual():
    plain = _attention(cls=TinyAttention)
    assert not hasattr(plain, "tiny_ln")
    x = torch.randn(1, 5, 48, **F64)
    with torch.no_grad():
        plain.tiny_o.weight.zero_()  # attention output 0: a residual would return x, the plain layer 0
    assert torch.equal(plain(x)[0], torch.zeros_like(x))
    wrapped = _attention(cls=PreNormTinyAttention)
    with torch.no_grad():
        wrapped.tiny_o.weight.zero_()
    assert torch.equal(wrapped(x)[0], x)
    assert plain.init_state(2).k.shape == (2, 3, 0, 16)


def test_kv_cache_token_by_token_equals_the_full_causal_pass():
    att = _attention(1)
    x = torch.randn(2, 11, 48, **F64)
    full, full_cache = att(x)
    rows, cache = [], None
    for t in range(11):
        y, cache = att(x[:, t : t + 1], cache)
        rows.append(y)
    torch.testing.assert_close(torch.cat(rows, 1), full)
    first, c = att(x[:, :4])
    rest, c = att(x[:, 4:], c)  # several new queries over a cached prefix
    torch.testing.assert_close(torch.cat([first, rest], 1), full)
    torch.testing.assert_close(c.k, full_cache.k)


def test_xformers_is_never_silently_used_and_refuses_cpu_tensors():
    q = torch.randn(1, 2, 3, 8)
    assert attention_dispatcher.names()[0] == "torch"  # automatic choice takes the first that fits
    with pytest.raises(BackendUnavailableError, match="xformers"):
        causal_attention(q, q, q, backend="xformers")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_and_xformers_agree_on_cuda():
    if attention_dispatcher.get("xformers").availability() is not None:
        pytest.skip("xformers not importable here")
    q, k, v = (torch.randn(2, 4, 33, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for kk, vv in ((k, v), (torch.cat([k, k], 2), torch.cat([v, v], 2))):
        a = causal_attention(q, kk, vv, backend="torch")
        b = causal_attention(q, kk, vv, backend="xformers")
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_hybrid_block_parallel_equals_recurrent_and_keeps_upstream_names():
    torch.manual_seed(0)
    block = RWKVBlock(
        TimeMix.rwkv6(48, head_dim=16, mix_rank=4, decay_rank=8, **F64),
        ChannelMix.rwkv6(48, **F64),
        dim=48,
        tiny_att=_attention(2),
        **F64,
    )
    names = {k for k in block.state_dict() if k.startswith("tiny_att.")}
    assert names == {
        f"tiny_att.{n}"
        for n in ("tiny_ln.weight", "tiny_ln.bias", "tiny_q.weight", "tiny_k.weight", "tiny_v.weight", "tiny_o.weight")
    }
    x = torch.randn(2, 9, 48, **F64)
    whole, state = block(x)
    rows, s = [], None
    for t in range(9):
        y, s = block(x[:, t : t + 1], s)
        rows.append(y)
    torch.testing.assert_close(torch.cat(rows, 1), whole)
    assert s.kv.k.shape == (2, 3, 9, 16)
    # the state object carries, indexes and joins the KV cache
    stack = RWKVState((s,))
    torch.testing.assert_close(stack[1].layers[0].kv.v, s.kv.v[1:2])
    joined = RWKVState.cat([stack[0], stack[1]])
    torch.testing.assert_close(joined.layers[0].kv.k, s.kv.k)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of head_dim"):
        TinyAttention(48, head_dim=20)
    att = _attention()
    with pytest.raises(ValueError, match=r"x must be \[B, T, 48\]"):
        att(torch.randn(1, 2, 40, **F64))
    _, cache = att(torch.randn(1, 2, 48, **F64))
    with pytest.raises(ValueError, match="cache must hold"):
        att(torch.randn(2, 1, 48, **F64), cache)
    with pytest.raises(ValueError, match=r"Tk >= 3"):
        causal_attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4))
