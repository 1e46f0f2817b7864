"""Next-token cross-entropy with sample-level or batch-level reduction (DESIGN.md §9).

Both losses shift by one position (``logits[:, :-1]`` predicts ``labels[:, 1:]``) and ignore ``-100``.

- ``SampleLevelCE``: each sample's mean over its own valid tokens, then the mean over samples. A long
  answer weighs as much as a short one, and the value does not depend on which samples share a
  micro-batch (so gradient accumulation gives the same gradients as one big batch). A sample without
  a valid token contributes 0 (never NaN) and still counts in the mean over samples.
- ``BatchLevelCE``: the mean over every valid token of the micro-batch (upstream VisualRWKV-Base).

Large vocabularies: the logits of a VisualRWKV training micro-batch (B=8, T=2048, V=65536) are 2 GiB
in bf16; an fp32 copy of them would double that and its softmax again. The loss here never builds
one: it walks the rows in chunks, computing each chunk's log-sum-exp in fp32 in the forward and
recomputing that chunk's softmax in the backward, writing the gradient straight into a tensor of the
logits' dtype. Optional ``l2wrap`` adds upstream's "L2Wrap" gradient (``1e-4 / (B*T) * max logit`` at
each predicting position's arg-max logit; the value of the loss is unchanged).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchLevelCE", "IGNORE_INDEX", "SampleLevelCE", "cross_entropy_per_token"]

IGNORE_INDEX = -100
L2WRAP_FACTOR = 1e-4
CHUNK_ELEMENTS = 1 << 22  # one fp32 chunk: 16 MiB


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


class _WeightedCE(torch.autograd.Function):
    """``sum weight[b, t] * (logsumexp(logits[b, t]) - logits[b, t, target[b, t]])`` over ``t < T - 1``.

    Rows are visited in chunks of contiguous positions of one sample, so neither the shifted view of
    ``logits`` nor any fp32 copy of all of it is ever materialised.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weights: Tensor, l2wrap: float) -> Tensor:
        B, T, V = logits.shape
        acc = _accumulation(logits.dtype)
        total = torch.zeros((), dtype=acc, device=logits.device)
        lse = torch.empty(B, T - 1, dtype=acc, device=logits.device)
        step = _rows_per_chunk(V)
        for b in range(B):
            for a in range(0, T - 1, step):
                e = min(a + step, T - 1)
                chunk = logits[b, a:e].to(acc)
                lse[b, a:e] = torch.logsumexp(chunk, dim=-1)
                picked = chunk.gather(1, targets[b, a:e, None]).squeeze(1)
                total += (weights[b, a:e] * (lse[b, a:e] - picked)).sum()
        ctx.save_for_backward(logits, targets, weights, lse)
        ctx.l2wrap = l2wrap
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        logits, targets, weights, lse = ctx.saved_tensors
        B, T, V = logits.shape
        grad = torch.empty_like(logits)
        grad[:, -1] = 0  # the last position predicts nothing
        step = _rows_per_chunk(V)
        for b in range(B):
            for a in range(0, T - 1, step):
                e = min(a + step, T - 1)
                rows = torch.arange(e - a, device=logits.device)
                chunk = logits[b, a:e].to(lse.dtype, copy=True)  # the only chunk-sized temporary
                if ctx.l2wrap:
                    top, where = chunk.max(dim=-1)
                scale = weights[b, a:e] * grad_total
                g = chunk.sub_(lse[b, a:e, None]).exp_().mul_(scale[:, None])  # softmax * scale, in place
                g[rows, targets[b, a:e]] -= scale
                if ctx.l2wrap:
                    g[rows, where] += top * ctx.l2wrap
                grad[b, a:e] = g
        return grad, None, None, None


def _targets(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Shifted targets `[B, T-1]` and their validity mask, after checking shapes and ids."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [B, T] = {list(logits.shape[:2])}, got {list(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be int64 token ids, got dtype {labels.dtype}")
    targets = labels[:, 1:].long()
    valid = targets != ignore_index
    V = logits.shape[-1]
    bad = valid & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"labels must be in [0, {V}) or {ignore_index}, got {targets[bad][:5].tolist()}")
    return targets, valid


def cross_entropy_per_token(
    logits: Tensor, labels: Tensor, weights: Tensor, *, ignore_index: int = IGNORE_INDEX, l2wrap: bool = False
) -> Tensor:
    """``sum weights * CE`` over the shifted positions, in fp32, without an fp32 copy of ``logits``.

    ``l2wrap`` adds ``1e-4 / (B * (T-1)) * max logit`` to the gradient of each predicting position's
    arg-max logit (upstream's factor, whose ``T`` counts predicting positions).

    Shapes:
        logits `[B, T, V]` (any float dtype); labels `[B, T]`; weights `[B, T-1]` for the shifted
        positions (ignored positions get weight 0 whatever is passed). Returns a scalar fp32 tensor (fp64 for fp64 logits).
    """
    targets, valid = _targets(logits, labels, ignore_index)
    if weights.shape != targets.shape:
        raise ValueError(f"weights must be [B, T-1] = {list(targets.shape)}, got {list(weights.shape)}")
    return _weighted_ce(logits, targets, valid, weights, l2wrap)


def _weighted_ce(logits: Tensor, targets: Tensor, valid: Tensor, weights: Tensor, l2wrap: bool) -> Tensor:
    B, T, _ = logits.shape
    w = (weights * valid).to(_accumulation(logits.dtype))
    factor = L2WRAP_FACTOR / (B * (T - 1)) if l2wrap and T > 1 else 0.0
    return _WeightedCE.apply(logits, targets.clamp_min(0), w, factor)


class SampleLevelCE(nn.Module):
    """Mean over each sample's valid tokens, then mean over samples (VisualRWKV, Appendix D).

    Args:
        ignore_index: Label value that carries no loss.
        l2wrap: Add upstream's L2Wrap gradient (see the module docstring).

    Shapes:
        forward(logits `[B, T, V]`, labels `[B, T]`) -> scalar fp32.

    Example:
        >>> import torch
        >>> logits, labels = torch.randn(2, 5, 11), torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 5, 6, -100]])
        >>> loss = SampleLevelCE()(logits, labels)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, l2wrap: bool = False) -> None:
        super().__init__()
        self.ignore_index, self.l2wrap = ignore_index, l2wrap

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets, valid = _targets(logits, labels, self.ignore_index)
        per_sample = valid.sum(1, keepdim=True).clamp_min(1)
        return _weighted_ce(logits, targets, valid, valid / (per_sample * valid.shape[0]), self.l2wrap)


class BatchLevelCE(nn.Module):
    """Mean over every valid token of the micro-batch (VisualRWKV-Base; plain token-level CE).

    Shapes:
        forward(logits `[B, T, V]`, labels `[B, T]`) -> scalar fp32 (0 when no token is valid).
    """

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, l2wrap: bool = False) -> None:
        super().__init__()
        self.ignore_index, self.l2wrap = ignore_index, l2wrap

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets, valid = _targets(logits, labels, self.ignore_index)
        return _weighted_ce(logits, targets, valid, valid / valid.sum().clamp_min(1), self.l2wrap)
