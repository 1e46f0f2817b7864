"""Training VisualRWKV: the paper's two-stage recipe, the stages' trainable sets, the loop, the data pipeline.

- ``recipe(stage, size)`` / ``TrainRecipe``: optimisation hyper-parameters of a stage, and
  ``TrainRecipe.data_for(model.data_config)``: the stage's prompt mode and context length.
- ``configure_stage`` / ``set_trainable``: which parameters train.
- ``train(model, loader, plan)``: AdamW, cosine schedule, clipping, exact gradient accumulation.
- ``make_dataset`` / ``data_loader``: LLaVA data built from a ``DataConfig``.
"""

from .data import data_loader, make_dataset, make_prompt_builder, make_tokenizer
from .loop import micro_batch_weight, train
from .recipes import TrainRecipe, recipe
from .stages import STAGES, configure_stage, set_trainable, trainable_parameter_names

__all__ = [
    "STAGES",
    "TrainRecipe",
    "configure_stage",
    "data_loader",
    "make_dataset",
    "make_prompt_builder",
    "make_tokenizer",
    "micro_batch_weight",
    "recipe",
    "set_trainable",
    "train",
    "trainable_parameter_names",
]
