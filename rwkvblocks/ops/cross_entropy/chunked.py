"""Weighted cross entropy over row chunks: never an fp32 copy of all the logits.

The forward walks each sample's predicting rows in chunks of ``CHUNK_ELEMENTS // V`` rows, casting
only the chunk to fp32 and keeping one log-sum-exp per row; the backward recomputes the chunk's
softmax from that log-sum-exp, in place in the chunk's fp32 copy, and writes it straight into a
gradient of the logits' dtype. The math is in ``README.md`` beside this file.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK_ELEMENTS", "accumulation_dtype", "chunked_backward", "chunked_forward"]

CHUNK_ELEMENTS = 1 << 22  # one fp32 chunk: 16 MiB; read at every call, so tests may patch it


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Loss and log-sum-exp dtype for logits of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spans(batch: int, rows: int, vocab: int):
    """``(b, first, last)`` of every chunk: contiguous rows of one sample, so no slice of the logits
    wider than one chunk is ever copied."""
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for b in range(batch):
        for a in range(0, rows, step):
            yield b, a, min(a + step, rows)


def chunked_forward(logits: Tensor, targets: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The weighted sum of the rows' cross entropies and every row's log-sum-exp (no autograd).

    Shapes:
        logits `[B, T, V]`; targets (int64) and weights `[B, N]`, ``N <= T``: row ``t < N`` of sample
        ``b`` predicts ``targets[b, t]``. Returns the scalar loss and lse `[B, N]`, both fp32 (fp64 for
        fp64 logits).
    """
    B, _, V = logits.shape
    N = targets.shape[1]
    acc = accumulation_dtype(logits.dtype)
    weights = weights.to(acc)
    total = torch.zeros((), dtype=acc, device=logits.device)
    lse = torch.empty(B, N, dtype=acc, device=logits.device)
    for b, a, e in _spans(B, N, V):
        chunk = logits[b, a:e].to(acc)
        lse[b, a:e] = torch.logsumexp(chunk, dim=-1)
        picked = chunk.gather(1, targets[b, a:e, None]).squeeze(1)
        total += (weights[b, a:e] * (lse[b, a:e] - picked)).sum()
    return total, lse


def chunked_backward(
    logits: Tensor, targets: Tensor, weights: Tensor, lse: Tensor, grad_loss: Tensor, l2wrap: float
) -> tuple[Tensor, Tensor]:
    """Gradients of ``chunked_forward`` with respect to the logits and the weights (no autograd).

    ``l2wrap > 0`` adds ``l2wrap * max logit`` at every predicting row's arg-max logit, whatever the
    row's weight and ``grad_loss`` (upstream's L2Wrap). Rows from ``N`` on get a zero gradient.

    Shapes:
        As ``chunked_forward``; grad_loss is a scalar. Returns the gradient of the logits `[B, T, V]`
        in their dtype and that of the weights `[B, N]` in theirs.
    """
    B, T, V = logits.shape
    N = targets.shape[1]
    acc = lse.dtype
    w = weights.to(acc)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if N < T:
        grad[:, N:] = 0
    grad_weights = torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)
    for b, a, e in _spans(B, N, V):
        rows = torch.arange(e - a, device=logits.device)
        chunk = logits[b, a:e].to(acc, copy=True)  # the only chunk-sized temporary
        picked = chunk.gather(1, targets[b, a:e, None]).squeeze(1)
        grad_weights[b, a:e] = (lse[b, a:e] - picked) * grad_loss
        if l2wrap:
            top, where = chunk.max(dim=-1)
        scale = w[b, a:e] * grad_loss
        g = chunk.sub_(lse[b, a:e, None]).exp_().mul_(scale[:, None])  # softmax * scale, in place
        g[rows, targets[b, a:e]] -= scale
        if l2wrap:
            g[rows, where] += top * l2wrap
        grad[b, a:e] = g
    return grad, grad_weights
