"""causal_attention as a registered op: an explicit softmax oracle, gradcheck of the recomputing backward,
the KV-cache alignment of the mask, and the dispatcher's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvblocks.ops import BackendUnavailableError, causal_attention


def _oracle(q, k, v):
    """Scores with the bottom-right-aligned causal mask, written out."""
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    visible = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v


def _qkv(Tq, Tk, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, Tq, 8, generator=g, dtype=torch.float64).requires_grad_()
    k, v = (torch.randn(2, 3, Tk, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("Tq, Tk", [(7, 7), (1, 9), (4, 11)], ids=["prefill", "decode", "cached-prefix"])
def test_matches_the_explicit_softmax_with_every_gradient(Tq, Tk):
    q, k, v = _qkv(Tq, Tk)
    got = causal_attention(q, k, v)
    want = _oracle(q, k, v)
    torch.testing.assert_close(got, want)
    cot = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), cot), torch.autograd.grad(want, (q, k, v), cot)):
        torch.testing.assert_close(a, b)


def test_gradcheck_fp64():
    q, k, v = _qkv(3, 5, seed=1)
    assert torch.autograd.gradcheck(lambda q, k, v: causal_attention(q, k, v), (q, k, v))


def test_output_dtype_and_errors():
    q, k, v = (x.detach().float() for x in _qkv(2, 4))
    assert causal_attention(q, k, v).dtype == torch.float32
    with pytest.raises(ValueError, match=r"k and v must be \[2, 3, Tk >= 2, 8\]"):
        causal_attention(q, k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="share a dtype and a device"):
        causal_attention(q, k.double(), v.double())
    with pytest.raises(BackendUnavailableError, match="xformers"):
        causal_attention(q, k, v, backend="xformers")
