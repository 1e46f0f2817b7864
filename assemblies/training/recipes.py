"""The paper's two-stage training recipe (Appendix A; DESIGN.md §11) as data.

- Stage 1, ``"alignment"``: projector only; image-first prompt; context 1024; AdamW lr 1e-3 -> 1e-5
  (cosine, no warm-up); batch 256; 1 epoch.
- Stage 2, ``"instruction"``: projector and language model except the embedding; the model's own prompt
  (sandwich for VisualRWKV); context 2048; batch 128; 2 epochs; lr 6e-5 -> 1.5e-5 (1.6B), 5e-5 -> 1.25e-5 (3B),
  4e-5 -> 1e-5 (7B).
- Both: AdamW betas (0.9, 0.99), eps 1e-8, weight decay 0, gradient clipping at 1.0.

A ``TrainRecipe`` holds the optimisation of one stage. The prompt mode and context length are data, not
optimisation: they live in the model's ``DataConfig``, and ``TrainRecipe.data_for(model.data_config)`` is the
one place where a stage changes them (stage 1 reads images first, at context 1024).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..models.config import DataConfig, FrozenOptions

__all__ = ["TrainRecipe", "recipe"]


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one training stage.

    Attributes:
        stage: ``"alignment"``, ``"instruction"`` or ``"full"`` (which parameters train; see ``configure_stage``).
        data_changes: ``DataConfig`` fields this stage sets on the model's data configuration.
        lr_init, lr_final: Cosine schedule from ``lr_init`` to ``lr_final`` over the run, no warm-up.
        batch_size: Samples per optimiser step (accumulated from micro-batches).
        micro_batch_size: Samples per forward/backward.
        epochs: Passes over the data (may be fractional).
        betas, eps, weight_decay: AdamW.
        grad_clip: Maximum gradient norm.
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

    def __post_init__(self) -> None:
        if not isinstance(self.data_changes, FrozenOptions):
            object.__setattr__(self, "data_changes", FrozenOptions(self.data_changes))
        DataConfig().replace(**self.data_changes)  # fail now on an unknown field or value
        for name in ("batch_size", "micro_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")

    def data_for(self, data: DataConfig) -> DataConfig:
        """The data configuration this stage trains with: ``data`` with the stage's changes."""
        return data.replace(**self.data_changes) if self.data_changes else data

    def replace(self, **changes: Any) -> TrainRecipe:
        """A copy with ``changes``; ``data_changes=`` is merged into the stage's current changes."""
        if isinstance(changes.get("data_changes"), Mapping):
            changes = {**changes, "data_changes": self.data_changes.merged(changes["data_changes"])}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["data_changes"] = self.data_changes.to_dict()
        return data


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
