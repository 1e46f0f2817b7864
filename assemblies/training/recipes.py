"""The paper's two-stage training recipe (Appendix A; DESIGN.md §11) as data.

- Stage 1, ``"alignment"``: projector only; image-first prompt; context 1024; AdamW lr 1e-3 -> 1e-5
  (cosine, no warm-up); batch 256; 1 epoch.
- Stage 2, ``"instruction"``: projector and language model except the embedding; the model's own prompt
  (sandwich for VisualRWKV); context 2048; batch 128; 2 epochs; lr 6e-5 -> 1.5e-5 (1.6B), 5e-5 -> 1.25e-5 (3B),
  4e-5 -> 1e-5 (7B).
- Both: AdamW betas (0.9, 0.99), eps 1e-8, weight decay 0, gradient clipping at 1.0.

``build_optimizer`` and ``build_scheduler`` turn a recipe into the AdamW optimiser and the learning-rate schedule
(linear warm-up, then cosine to ``lr_final``; with no warm-up exactly ``CosineAnnealingLR``). Stage config files
(``config.py``, ``configs/*.toml``) name a recipe and its changes.

A ``TrainRecipe`` holds the optimisation of one stage. The prompt mode and context length are data, not
optimisation: they live in the model's ``DataConfig``, and ``TrainRecipe.data_for(model.data_config)`` is the
one place where a stage changes them (stage 1 reads images first, at context 1024).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.config import DataConfig, FrozenOptions

__all__ = ["TrainRecipe", "build_optimizer", "build_scheduler", "decays", "recipe"]

_RUN_CONTROL = ("log_every", "checkpoint_every")  # how a run reports and saves itself, not what it computes


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one training stage.

    Attributes:
        stage: ``"alignment"``, ``"instruction"`` or ``"full"`` (which parameters train; see ``configure_stage``).
        data_changes: ``DataConfig`` fields this stage sets on the model's data configuration.
        lr_init, lr_final: Cosine schedule from ``lr_init`` to ``lr_final`` over the run (``build_scheduler``).
        batch_size: Samples per optimiser step (accumulated from micro-batches); a multiple of ``micro_batch_size``,
            so the batch that trains is the batch that is recorded.
        micro_batch_size: Samples per forward/backward.
        epochs: Passes over the data (may be fractional; > 0).
        betas, eps, weight_decay: AdamW.
        grad_clip: Maximum gradient norm.
        warmup_steps: Optimiser steps of linear warm-up before the cosine (0, the paper's: none).
        decay_matrices_only: Apply ``weight_decay`` to weight matrices only (``decays``), as BlinkDL's RWKV
            trainer does; vectors, biases, norms and the RWKV mixing/decay vectors get none. ``False``: to all.
        activation_checkpointing: Recompute activations in the backward to save memory (a run setting the
            training loop reads; off in the paper's configs).
        log_every: Optimiser steps between loss log lines.
        checkpoint_every: Steps between training checkpoints (``None``: only at the end, on a signal).
        seed: Seeds the initialisation and the data order.

    ``log_every`` and ``checkpoint_every`` are left out of ``to_dict`` (what a resumed run must match): changing
    them changes no number of the run.
    """

    stage: str = "alignment"
    data_changes: FrozenOptions = field(
        default_factory=lambda: FrozenOptions({"prompt": "image_first", "context_length": 1024})
    )
    lr_init: float = 1e-3
    lr_final: float = 1e-5
    batch_size: int = 256
    micro_batch_size: int = 16
    epochs: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    decay_matrices_only: bool = True
    activation_checkpointing: bool = False
    log_every: int = 10
    checkpoint_every: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data_changes, FrozenOptions):
            object.__setattr__(self, "data_changes", FrozenOptions(self.data_changes))
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        DataConfig().replace(**self.data_changes)  # fail now on an unknown field or value
        for name in ("batch_size", "micro_batch_size", "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} does not divide batch_size {self.batch_size}: the "
                "batch is accumulated from whole micro-batches"
            )
        if self.checkpoint_every is not None and (not _is_int(self.checkpoint_every) or self.checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int or None, got {self.checkpoint_every!r}")
        for name in ("warmup_steps", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not _is_number(self.epochs) or not self.epochs > 0:
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        for name in ("lr_init", "lr_final", "eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or (name in ("lr_init", "grad_clip") and value == 0):
                raise ValueError(
                    f"{name} must be a number {'> 0' if name in ('lr_init', 'grad_clip') else '>= 0'}, got {value!r}"
                )
        if len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimiser step."""
        return self.batch_size // self.micro_batch_size

    def data_for(self, data: DataConfig) -> DataConfig:
        """The data configuration this stage trains with: ``data`` with the stage's changes."""
        return data.replace(**self.data_changes) if self.data_changes else data

    def replace(self, **changes: Any) -> TrainRecipe:
        """A copy with ``changes``; ``data_changes=`` is merged into the stage's current changes."""
        if isinstance(changes.get("data_changes"), Mapping):
            changes = {**changes, "data_changes": self.data_changes.merged(changes["data_changes"])}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values, less ``log_every`` and ``checkpoint_every`` (see the class)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RUN_CONTROL}
        data["data_changes"] = self.data_changes.to_dict()
        return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to parameter ``name``: a weight matrix (as BlinkDL's RWKV trainer decides).

    A ``...weight`` of two or more dimensions once its size-1 dimensions are squeezed out: linear and embedding
    weights decay; biases, norm weights and vectors stored as ``(1, 1, C)`` (RWKV's mixing coefficients) do not.
    """
    return name.rsplit(".", 1)[-1].endswith("weight") and param.squeeze().dim() >= 2


def build_optimizer(plan: TrainRecipe, named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> torch.optim.AdamW:
    """AdamW over ``named_params`` with the recipe's lr, betas and eps.

    With ``plan.decay_matrices_only`` (the default) two parameter groups: ``weight_decay=plan.weight_decay`` on
    the matrices (``decays``), 0 on the rest; empty groups are left out. Otherwise one group, all decayed. Each
    group has a ``"names"`` list of its parameters.
    """
    named = list(named_params)
    if plan.decay_matrices_only:
        split = [[(n, p) for n, p in named if decays(n, p)], [(n, p) for n, p in named if not decays(n, p)]]
        groups = [
            {"params": [p for _, p in part], "names": [n for n, _ in part], "weight_decay": wd}
            for part, wd in zip(split, (plan.weight_decay, 0.0))
            if part
        ]
    else:
        groups = [{"params": [p for _, p in named], "names": [n for n, _ in named], "weight_decay": plan.weight_decay}]
    if not groups:
        raise ValueError("no parameters to optimise")
    return torch.optim.AdamW(groups, lr=plan.lr_init, betas=plan.betas, eps=plan.eps, weight_decay=plan.weight_decay)


def build_scheduler(
    plan: TrainRecipe, optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate over ``steps`` optimiser steps: linear warm-up, then cosine from ``lr_init`` to ``lr_final``.

    Step ``t`` (from 0) of the warm-up trains at ``lr_init * (t + 1) / warmup_steps``; the cosine then runs
    from ``lr_init`` at step ``warmup_steps`` to ``lr_final`` at step ``steps``. With ``warmup_steps=0`` it is
    ``CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr_final)`` itself (the same sequence, bit for bit,
    and the same ``state_dict``).
    """
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    warmup = plan.warmup_steps
    if warmup == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=plan.lr_final)
    if warmup >= steps:
        raise ValueError(f"warmup_steps {warmup} must be fewer than the run's {steps} steps")
    floor, span = plan.lr_final / plan.lr_init, steps - warmup

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return floor + (1 - floor) * (1 + math.cos(math.pi * min(t - warmup, span) / span)) / 2

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_STAGE2_LR = {"1b6": (6e-5, 1.5e-5), "3b": (5e-5, 1.25e-5), "7b": (4e-5, 1e-5)}


def recipe(stage: str, size: str = "1b6", **changes: Any) -> TrainRecipe:
    """The paper's recipe for ``stage`` (``"alignment"`` or ``"instruction"``) and model ``size``.

    Example:
        >>> plan = recipe("instruction", "7b", micro_batch_size=8)
        >>> plan.lr_init, plan.batch_size, plan.data_changes["context_length"]
        (4e-05, 128, 2048)
    """
    if stage == "alignment":
        base = TrainRecipe()
    elif stage == "instruction":
        if size not in _STAGE2_LR:
            raise ValueError(f"size must be one of {sorted(_STAGE2_LR)} for the instruction stage, got {size!r}")
        lr_init, lr_final = _STAGE2_LR[size]
        base = TrainRecipe("instruction", FrozenOptions({"context_length": 2048}), lr_init, lr_final, 128, 16, 2.0)
    else:
        raise ValueError(f"stage must be 'alignment' or 'instruction', got {stage!r}")
    return base.replace(**changes) if changes else base
