"""One stage of training: AdamW with a cosine schedule, gradient clipping and exact gradient accumulation.

A batch of ``batch_size`` samples is accumulated from micro-batches, and each micro-batch's loss is weighted
so that the accumulated gradient equals the gradient of the loss over the whole batch: by its share of the
samples for the sample-level loss (a mean over samples), by its share of the valid (supervised) tokens for the
batch-level loss (a mean over tokens).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping

import torch

from rwkvblocks import BatchLevelCE
from rwkvblocks.losses import IGNORE_INDEX
from rwkvblocks.prompting import SkipReport

from ..models.visualrwkv import VisualRWKV
from .recipes import TrainRecipe
from .stages import configure_stage

__all__ = ["micro_batch_weight", "train"]

logger = logging.getLogger(__name__)


def _to(batch: Mapping, device: torch.device) -> dict:
    """Tensors to ``device``, except ``image_spans``: layout metadata the model reads on the CPU."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) and k != "image_spans" else v for k, v in batch.items()}


def micro_batch_weight(loss_fn: torch.nn.Module, batch: Mapping) -> int:
    """What the loss of ``batch`` averages over: its valid tokens (``BatchLevelCE``), else its samples.

    Counted on the collator's CPU labels, so it costs no device sync.
    """
    if isinstance(loss_fn, BatchLevelCE):
        labels = batch["labels"]
        targets = labels[:, 1:] if getattr(loss_fn, "shift", True) else labels
        return int((targets != getattr(loss_fn, "ignore_index", IGNORE_INDEX)).sum())
    return len(batch["sample_ids"])


def _micro_batches(loader: Iterable[Mapping], total: int) -> Iterator[Mapping]:
    """``total`` micro-batches, cycling through ``loader`` (epochs may be fractional)."""
    produced = 0
    while produced < total:
        empty = True
        for batch in loader:
            empty = False
            if not batch["sample_ids"]:
                continue  # every sample of this micro-batch was skipped as bad data
            yield batch
            produced += 1
            if produced == total:
                return
        if empty:
            raise ValueError("the data loader yielded no batch")


class _Reported:
    """Every pass over ``loader`` is an epoch of ``report``."""

    def __init__(self, loader: Iterable[Mapping], report: SkipReport):
        self.loader, self.report = loader, report

    def __iter__(self) -> Iterator[Mapping]:
        return self.report.epoch(self.loader)


def train(
    model: VisualRWKV,
    loader: Iterable[Mapping],
    plan: TrainRecipe,
    *,
    steps: int | None = None,
    micro_batches_per_epoch: int | None = None,
    progress: bool = True,
    description: str | None = None,
    skip_report: SkipReport | None = None,
) -> list[float]:
    """Run one stage: set the trainable parameters, then AdamW with a cosine schedule and clipping.

    Args:
        model: The model (moved to its device and dtype by the caller).
        loader: Yields ``LLaVACollator`` batches of ``plan.micro_batch_size`` samples.
        plan: The stage's recipe.
        steps: Optimiser steps; default ``epochs * micro_batches_per_epoch / accumulation``.
        micro_batches_per_epoch: Needed when ``steps`` is not given (``len(loader)``).
        progress: Show a progress bar.
        description: Progress-bar label.
        skip_report: Counts the skipped (and kept truncated) samples of every batch the run consumes, each
            pass over ``loader`` one of its epochs; the whole run's summary is logged at the end (a warning
            when anything was skipped or truncated). Leave it out when ``loader`` already reports.

    Returns:
        The loss of every optimiser step (that of its whole accumulated batch).
    """
    from tqdm import tqdm

    accumulation = max(1, plan.batch_size // plan.micro_batch_size)
    if steps is None:
        if micro_batches_per_epoch is None:
            micro_batches_per_epoch = len(loader)  # type: ignore[arg-type]
        steps = max(1, math.ceil(plan.epochs * micro_batches_per_epoch / accumulation))
    configure_stage(model, plan.stage)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.lr_init, betas=plan.betas, eps=plan.eps, weight_decay=plan.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=plan.lr_final)
    device = next(model.lm.parameters()).device
    model.train()
    losses: list[float] = []
    micro = _micro_batches(loader if skip_report is None else _Reported(loader, skip_report), steps * accumulation)
    with tqdm(total=steps, desc=description or f"stage {plan.stage}", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            batches = [next(micro) for _ in range(accumulation)]
            weights = [micro_batch_weight(model.loss_fn, b) for b in batches]
            whole = max(sum(weights), 1)
            parts = []
            for batch, weight in zip(batches, weights):
                loss = model.forward_batch(_to(batch, device)).loss * (weight / whole)
                loss.backward()
                parts.append(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
            opt.step()
            sched.step()
            losses.append(torch.stack(parts).sum().item())  # one host read per optimiser step, for the log
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            bar.update()
    model.eval()
    if skip_report is not None:
        bad = skip_report.skipped or skip_report.truncated
        logger.log(logging.WARNING if bad else logging.INFO, "training done: %s", skip_report.summary())
    return losses
