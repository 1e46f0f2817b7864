"""Training VisualRWKV: the paper's two-stage recipe, the stages' trainable sets, the loop, the data pipeline.

- ``recipe(stage, size)`` / ``TrainRecipe``: optimisation hyper-parameters of a stage, and
  ``TrainRecipe.data_for(model.data_config)``: the stage's prompt mode and context length.
- ``configure_stage`` / ``set_trainable``: which parameters train.
- ``train(model, loader, plan)``: AdamW, cosine schedule, clipping, exact gradient accumulation; ``precision``
  (``PRECISIONS``: fp32, bf16 autocast over fp32 master weights, pure bf16) and training checkpoints with exact
  resume (``checkpoint_dir=``, ``resume=``; ``latest_checkpoint`` / ``load_checkpoint``); a JSON-lines step log,
  TensorBoard scalars and a run summary (``log_file=``, ``tensorboard_dir=``, ``on_summary=``; ``logs.py``:
  ``TrainLog``, ``micro_batch_tokens``, ``peak_memory``); ``nonfinite="stop" | "skip"`` (``NONFINITE``).
- ``train(..., strategy="ddp" | "fsdp2")`` under ``torchrun``: data-parallel training (``distributed.py``,
  ``STRATEGIES``), a step equal to one process's; ``full_state_dict`` gathers an FSDP2-sharded model's weights.
- ``make_dataset`` / ``data_loader``: LLaVA data built from a ``DataConfig`` (``pack=True``: samples packed
  into rows with ``cu_seqlens``, no padding computed).
- ``build_optimizer`` / ``build_scheduler``: AdamW with weight decay on matrices only, warm-up then cosine.
- ``load_stage_config`` / ``shipped_configs``: stage configuration files (TOML) for ``rwkvblocks train --config``.
"""

from .checkpoint import TrainCheckpoint, latest_checkpoint, load_checkpoint
from .config import StageConfig, load_stage_config, shipped_configs
from .data import data_loader, make_dataset, make_prompt_builder, make_tokenizer
from .distributed import STRATEGIES, full_state_dict
from .logs import TrainLog, micro_batch_tokens, peak_memory
from .loop import NONFINITE, PRECISIONS, TrainingInterrupted, micro_batch_weight, train
from .recipes import TrainRecipe, build_optimizer, build_scheduler, recipe
from .stages import STAGES, configure_stage, set_trainable, trainable_parameter_names

__all__ = [
    "NONFINITE",
    "PRECISIONS",
    "STAGES",
    "STRATEGIES",
    "StageConfig",
    "TrainCheckpoint",
    "TrainLog",
    "TrainRecipe",
    "TrainingInterrupted",
    "build_optimizer",
    "build_scheduler",
    "configure_stage",
    "data_loader",
    "full_state_dict",
    "latest_checkpoint",
    "load_checkpoint",
    "load_stage_config",
    "make_dataset",
    "make_prompt_builder",
    "make_tokenizer",
    "micro_batch_tokens",
    "micro_batch_weight",
    "peak_memory",
    "recipe",
    "set_trainable",
    "shipped_configs",
    "train",
    "trainable_parameter_names",
]
