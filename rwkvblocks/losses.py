"""Next-token cross-entropy with sample-level or batch-level reduction (DESIGN.md §9).

By default both losses shift by one position (``logits[:, :-1]`` predicts ``labels[:, 1:]``); with
``shift=False`` the labels are already aligned (``logits[:, t]`` predicts ``labels[:, t]``, all T
positions count). Labels equal to ``ignore_index`` (``-100``) carry no loss.

- ``SampleLevelCE``: each sample's mean over its own valid tokens, then the mean over samples. A long
  answer weighs as much as a short one, and the value does not depend on which samples share a
  micro-batch (so gradient accumulation gives the same gradients as one big batch). A sample without
  a valid token contributes 0 (never NaN) and still counts in the mean over samples.
- ``BatchLevelCE``: the mean over every valid token of the micro-batch (upstream VisualRWKV-Base).

Large vocabularies: the logits of a VisualRWKV training micro-batch (B=8, T=2048, V=65536) are 2 GiB
in bf16; an fp32 copy of them would double that and its softmax again. The losses run the op
``rwkvblocks.ops.weighted_cross_entropy``, which never builds one (chunked log-sum-exp forward,
recomputing backward, gradient written in the logits' dtype). Optional ``l2wrap`` adds upstream's
"L2Wrap" gradient (``1e-4 / (B*N) * max logit`` at each of the N predicting positions' arg-max logit,
N = T-1 shifted and T not; the value of the loss is unchanged).

Packed rows (``cu_seqlens=`` `[N+1]` offsets of N samples packed into one row `[1, T]`, as
``RWKVLanguageModel(..., cu_seqlens=)`` takes them): both losses treat each packed sample as a sample. No
position predicts across a boundary (the last position of sample i does not predict the first label of
sample i + 1), and ``SampleLevelCE`` averages within each sample, then over the N samples: a packed row
gives the loss of the same samples in a padded batch.

Label checks (ids in ``[0, V)`` or ``ignore_index``) read values, so they follow
``rwkvblocks.ops.check_values``: by default they run on CPU labels only (no device sync), outside
``torch.compile``; ``validate=True`` runs them everywhere, ``validate=False`` never.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops import check_values, weighted_cross_entropy

__all__ = ["BatchLevelCE", "IGNORE_INDEX", "SampleLevelCE", "cross_entropy_per_token"]

IGNORE_INDEX = -100
L2WRAP_FACTOR = 1e-4


def _targets(
    logits: Tensor, labels: Tensor, ignore_index: int, shift: bool, validate: bool | None
) -> tuple[Tensor, Tensor]:
    """Targets `[B, N]` (N = T-1 shifted, T not) and their validity mask, after checking shapes and ids."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [B, T] = {list(logits.shape[:2])}, got {list(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be int64 token ids, got dtype {labels.dtype}")
    targets = (labels[:, 1:] if shift else labels).long()
    valid = targets != ignore_index
    if check_values(labels, validate):
        V = logits.shape[-1]
        bad = valid & ((targets < 0) | (targets >= V))
        if bad.any():
            raise ValueError(f"labels must be in [0, {V}) or {ignore_index}, got {targets[bad][:5].tolist()}")
    return targets, valid


def cross_entropy_per_token(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    l2wrap: bool = False,
    shift: bool = True,
    validate: bool | None = None,
) -> Tensor:
    """``sum weights * CE`` over the predicting positions, in fp32, without an fp32 copy of ``logits``.

    Args:
        logits: Next-token scores.
        labels: Token ids, ``ignore_index`` where there is no loss.
        weights: Weight of each predicting position (ignored positions get weight 0 whatever is passed).
        ignore_index: Label value that carries no loss.
        l2wrap: Add ``1e-4 / (B * N) * max logit`` to the gradient of each predicting position's arg-max
            logit (upstream's factor, whose ``N`` counts predicting positions).
        shift: ``True``: ``logits[:, t]`` predicts ``labels[:, t + 1]`` (N = T-1 positions); ``False``:
            the labels are aligned, ``logits[:, t]`` predicts ``labels[:, t]`` (N = T).
        validate: Label-range check (reads values): ``None`` on CPU only, ``True`` always, ``False`` never.

    Shapes:
        logits `[B, T, V]` (any float dtype); labels `[B, T]`; weights `[B, N]`. Returns a scalar fp32
        tensor (fp64 for fp64 logits).
    """
    targets, valid = _targets(logits, labels, ignore_index, shift, validate)
    if weights.shape != targets.shape:
        raise ValueError(f"weights must be [B, N] = {list(targets.shape)} (shift={shift}), got {list(weights.shape)}")
    return _weighted_ce(logits, targets, valid, weights, l2wrap)


def _accumulation(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _weighted_ce(logits: Tensor, targets: Tensor, valid: Tensor, weights: Tensor, l2wrap: bool) -> Tensor:
    B, N = targets.shape
    w = (weights * valid).to(_accumulation(logits))
    factor = L2WRAP_FACTOR / (B * N) if l2wrap and N > 0 else 0.0
    # ignored positions still index the logits: any id in range does, and its weight is 0
    return weighted_cross_entropy(logits, targets.masked_fill(~valid, 0), w, l2wrap=factor, validate=False)


class _NextTokenCE(nn.Module):
    """What both reductions share: the options, and the checked shifted targets."""

    def __init__(
        self,
        *,
        ignore_index: int = IGNORE_INDEX,
        l2wrap: bool = False,
        shift: bool = True,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.l2wrap, self.shift, self.validate = ignore_index, l2wrap, shift, validate

    def _targets(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return _targets(logits, labels, self.ignore_index, self.shift, self.validate)

    def _segments(self, valid: Tensor, cu_seqlens: Tensor, seq_len: int) -> tuple[Tensor, Tensor, int]:
        """Packed row: (``valid`` without the predictions across a boundary, the sample of each target `[N']`, N)."""
        if valid.shape[0] != 1:
            raise ValueError(
                f"with cu_seqlens the samples are packed into one row and B must be 1, got {valid.shape[0]}"
            )
        if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(
                f"cu_seqlens must be int32/int64 [N+1] with N >= 1, got {cu_seqlens.dtype} {cu_seqlens.shape}"
            )
        cu = cu_seqlens.to(valid.device, torch.long)
        position = torch.arange(int(self.shift), seq_len, device=valid.device)  # the label each target is
        if self.shift:
            starts = torch.zeros(seq_len + 1, dtype=torch.bool, device=valid.device).index_fill(0, cu[:-1], True)
            valid = valid & ~starts[1:seq_len].unsqueeze(0)
        return valid, torch.searchsorted(cu[1:], position, right=True), cu.numel() - 1

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, l2wrap={self.l2wrap}, shift={self.shift}"


class SampleLevelCE(_NextTokenCE):
    """Mean over each sample's valid tokens, then mean over samples (VisualRWKV, Appendix D).

    Args:
        ignore_index: Label value that carries no loss.
        l2wrap: Add upstream's L2Wrap gradient (see the module docstring).
        shift: ``True``: next-token prediction, ``logits[:, :-1]`` against ``labels[:, 1:]``; ``False``:
            labels already aligned with the logits (every position counts).
        validate: Label-range check, which reads values: ``None`` runs it on CPU labels only (no device
            sync, not under ``torch.compile``), ``True`` always, ``False`` never.

    Shapes:
        forward(logits `[B, T, V]`, labels `[B, T]`, cu_seqlens `[N+1]` or None) -> scalar fp32. With
        ``cu_seqlens`` (B = 1) the row holds N packed samples, each a sample of the mean (see the module
        docstring).

    Reference: ``torch.nn.functional.cross_entropy`` per sample. Backends: those of
    ``rwkvblocks.ops.weighted_cross_entropy``.

    Example:
        >>> import torch
        >>> logits, labels = torch.randn(2, 5, 11), torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 5, 6, -100]])
        >>> loss = SampleLevelCE()(logits, labels)
        >>> loss.shape
        torch.Size([])
    """

    def forward(self, logits: Tensor, labels: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        targets, valid = self._targets(logits, labels)
        if cu_seqlens is not None:
            valid, sample, n = self._segments(valid, cu_seqlens, logits.shape[1])
            ones = valid.to(_accumulation(logits))
            per_sample = ones.new_zeros(n).index_add_(0, sample, ones[0]).clamp_min(1)
            return _weighted_ce(logits, targets, valid, ones / (per_sample[sample] * n), self.l2wrap)
        ones = valid.to(_accumulation(logits))  # weights in the accumulation dtype: 1/n is not exact in fp32
        per_sample = ones.sum(1, keepdim=True).clamp_min(1)
        return _weighted_ce(logits, targets, valid, ones / (per_sample * valid.shape[0]), self.l2wrap)


class BatchLevelCE(_NextTokenCE):
    """Mean over every valid token of the micro-batch (VisualRWKV-Base; plain token-level CE).

    Args:
        ignore_index, l2wrap, shift, validate: As ``SampleLevelCE``.

    Shapes:
        forward(logits `[B, T, V]`, labels `[B, T]`, cu_seqlens `[N+1]` or None) -> scalar fp32 (0 when no
        token is valid). With ``cu_seqlens`` (B = 1) no position predicts across a packed sample's boundary.

    Reference: ``torch.nn.functional.cross_entropy``. Backends: those of
    ``rwkvblocks.ops.weighted_cross_entropy``.
    """

    def forward(self, logits: Tensor, labels: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        targets, valid = self._targets(logits, labels)
        if cu_seqlens is not None:
            valid = self._segments(valid, cu_seqlens, logits.shape[1])[0]
        ones = valid.to(_accumulation(logits))
        return _weighted_ce(logits, targets, valid, ones / ones.sum().clamp_min(1), self.l2wrap)
