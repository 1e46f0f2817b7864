"""The paper's two-stage training recipe (Appendix A; DESIGN.md §11) as a reusable loop.

- Stage 1, ``"alignment"``: projector only; image-first prompt; context 1024; AdamW lr 1e-3 -> 1e-5
  (cosine, no warm-up); batch 256; 1 epoch.
- Stage 2, ``"instruction"``: projector and language model except the embedding; sandwich prompt;
  context 2048; batch 128; 2 epochs; lr 6e-5 -> 1.5e-5 (1.6B), 5e-5 -> 1.25e-5 (3B), 4e-5 -> 1e-5 (7B).
- Both: AdamW betas (0.9, 0.99), eps 1e-8, weight decay 0, gradient clipping at 1.0.

A batch of ``batch_size`` samples is accumulated from micro-batches; with the sample-level loss the
gradient is the same as one big batch (each micro-batch's loss is weighted by its share of samples).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from .stages import configure_stage
from .visualrwkv import VisualRWKV

__all__ = ["TrainRecipe", "recipe", "train"]


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one training stage."""

    stage: str = "alignment"
    prompt: str = "image_first"
    context_length: int = 1024
    lr_init: float = 1e-3
    lr_final: float = 1e-5
    batch_size: int = 256
    micro_batch_size: int = 16
    epochs: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def replace(self, **changes) -> TrainRecipe:
        return dataclasses.replace(self, **changes)


_STAGE2_LR = {"1b6": (6e-5, 1.5e-5), "3b": (5e-5, 1.25e-5), "7b": (4e-5, 1e-5)}


def recipe(stage: str, size: str = "1b6", **changes) -> TrainRecipe:
    """The paper's recipe for ``stage`` (``"alignment"`` or ``"instruction"``) and model ``size``."""
    if stage == "alignment":
        base = TrainRecipe()
    elif stage == "instruction":
        if size not in _STAGE2_LR:
            raise ValueError(f"size must be one of {sorted(_STAGE2_LR)} for the instruction stage, got {size!r}")
        lr_init, lr_final = _STAGE2_LR[size]
        base = TrainRecipe("instruction", "sandwich", 2048, lr_init, lr_final, 128, 16, 2.0)
    else:
        raise ValueError(f"stage must be 'alignment' or 'instruction', got {stage!r}")
    return base.replace(**changes) if changes else base


def _to(batch: Mapping, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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


def train(
    model: VisualRWKV,
    loader: Iterable[Mapping],
    plan: TrainRecipe,
    *,
    steps: int | None = None,
    micro_batches_per_epoch: int | None = None,
    progress: bool = True,
    description: str | None = None,
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

    Returns:
        The loss of every optimiser step (mean over its micro-batches).
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
    micro = _micro_batches(loader, steps * accumulation)
    with tqdm(total=steps, desc=description or f"stage {plan.stage}", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            batches = [next(micro) for _ in range(accumulation)]
            samples = sum(len(b["sample_ids"]) for b in batches)
            total = 0.0
            for batch in batches:
                share = len(batch["sample_ids"]) / samples  # sample-level: weight by samples
                loss = model.forward_batch(_to(batch, device)).loss * share
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
            opt.step()
            sched.step()
            losses.append(total)
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            bar.update()
    model.eval()
    return losses
