"""Which parameters train in each stage of the recipe (paper, Appendix A; DESIGN.md §11).

- ``"alignment"`` (stage 1): the projector only; encoder and language model frozen.
- ``"instruction"`` (stage 2): projector and language model, except the token embedding; encoder frozen.
- ``"full"``: everything but the encoder.

``set_trainable`` sets any combination; the functions below are the named ones.
"""

from __future__ import annotations

from ..models.visualrwkv import VisualRWKV

__all__ = ["STAGES", "configure_stage", "set_trainable", "trainable_parameter_names"]

STAGES = {
    "alignment": {"encoder": False, "projector": True, "language_model": False, "embedding": False},
    "instruction": {"encoder": False, "projector": True, "language_model": True, "embedding": False},
    "full": {"encoder": False, "projector": True, "language_model": True, "embedding": True},
}


def set_trainable(
    model: VisualRWKV, *, encoder: bool, projector: bool, language_model: bool, embedding: bool
) -> VisualRWKV:
    """Freeze or unfreeze each part; ``embedding`` is applied after ``language_model``.

    A frozen encoder also stays in eval mode and records no autograd graph (``ImageEncoder.freeze``).
    """
    if encoder:
        model.encoder.unfreeze()
    else:
        model.encoder.freeze()
    model.proj.requires_grad_(projector)
    model.lm.requires_grad_(language_model)
    model.lm.emb.requires_grad_(embedding)
    return model


def configure_stage(model: VisualRWKV, stage: str) -> VisualRWKV:
    """Apply the trainable set of ``stage`` (``"alignment"``, ``"instruction"`` or ``"full"``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    return set_trainable(model, **STAGES[stage])


def trainable_parameter_names(model: VisualRWKV) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
