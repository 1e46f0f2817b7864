"""Data-parallel training through ``torch.distributed``: ``train(..., strategy="ddp" | "fsdp2")`` under ``torchrun``.

- ``"none"``: one process (the default).
- ``"ddp"``: ``DistributedDataParallel``; every rank holds the whole model, gradients are all-reduced after the
  last micro-batch of a step (``no_sync`` before it).
- ``"fsdp2"``: ``torch.distributed.fsdp.fully_shard`` on every RWKV block ``model.lm.blocks[i]``, then on the root;
  a frozen encoder is left out of the sharding (``ignored_params``: replicated, as in one process). The model is
  sharded in place: its parameters become ``DTensor`` s (``full_state_dict`` gathers them back).

Launched under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), ``train`` initialises the
default process group when nobody has yet: NCCL for a CUDA model (put it on ``cuda:LOCAL_RANK`` first), gloo on the
CPU. It leaves the group initialised (the caller may still need it; ``torch.distributed.destroy_process_group()``
at exit).

How the data is split: every rank is given the same loader (same order) and walks the same global stream of
micro-batches; of each optimiser step's ``batch_size / micro_batch_size`` micro-batches, rank ``r`` of ``W`` takes
numbers ``r, r + W, r + 2W, ...``. So the skipped samples, the data position of a checkpoint and a resume are the
same on every rank and the same as in one process, and a step equals one process's step over the same global batch:
each micro-batch's loss is weighted by its share of the samples (or valid tokens) of the GLOBAL batch (the ranks'
sums all-reduced), and the loss reported is the global one. Every rank collates every micro-batch (the loader's
work is repeated on each rank; the model's is not).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.visualrwkv import VisualRWKV

__all__ = ["Distributed", "STRATEGIES", "full_state_dict", "launched_by_torchrun", "setup_distributed"]

STRATEGIES = ("none", "ddp", "fsdp2")
"""``train``'s ``strategy``: one process, ``DistributedDataParallel``, or FSDP2 (``fully_shard``)."""


def launched_by_torchrun() -> bool:
    """Whether the environment has ``torchrun``'s ``RANK`` and ``WORLD_SIZE``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class _Batch:
    """A batch hidden from DDP's and FSDP's input moving (``image_spans`` must stay on the CPU)."""

    def __init__(self, batch: Mapping):
        self.batch = batch


class _BatchLoss(nn.Module):
    """``forward(_Batch)``: the model's loss on the batch; the module DDP and FSDP2 wrap (they hook ``forward``)."""

    def __init__(self, model: VisualRWKV):
        super().__init__()
        self.model = model

    def forward(self, batch: _Batch) -> torch.Tensor:
        return self.model.forward_batch(batch.batch).loss


@dataclass
class Distributed:
    """The process's place in the run: ``strategy``, ``rank`` of ``world_size``, and the collectives ``train`` uses."""

    strategy: str = "none"
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """The sum over ranks (float64; on the model's device, as NCCL needs)."""
        t = torch.as_tensor(values, dtype=torch.float64).to(self.device)
        if self.active:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def wrap(self, model: VisualRWKV) -> nn.Module:
        """The module to train: ``forward(_Batch)`` returns the loss (``model`` itself is used for ``"none"``)."""
        if self.strategy == "none":
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: DDP then leaves the inputs where they are
            return DistributedDataParallel(_BatchLoss(model), device_ids=None)
        return self._fully_shard(model)

    def _fully_shard(self, model: VisualRWKV) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if "_fsdp_root" in model.__dict__:  # sharded by an earlier stage in this process
            return model.__dict__["_fsdp_root"]
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        encoder = list(model.encoder.parameters())
        ignored = set(encoder) if not any(p.requires_grad for p in encoder) else None
        for block in model.lm.blocks:
            fully_shard(block, mesh=mesh)
        root = _BatchLoss(model)
        fully_shard(root, mesh=mesh, ignored_params=ignored)
        model.__dict__["_fsdp_root"] = root  # not a submodule: the model's state_dict keys stay as they are
        return root

    def forward(self, module: nn.Module, batch: Mapping) -> torch.Tensor:
        if self.strategy == "none":
            return module.forward_batch(batch).loss  # type: ignore[operator]
        return module(_Batch(batch))

    def sync_gradients(self, module: nn.Module, final: bool):
        """The context of one micro-batch's backward: gradients are reduced only after the step's last one."""
        import contextlib

        if self.strategy == "ddp" and not final:
            return module.no_sync()  # type: ignore[operator]
        if self.strategy == "fsdp2":
            module.set_requires_gradient_sync(final)  # type: ignore[operator]
            module.set_is_last_backward(final)  # type: ignore[operator]
        return contextlib.nullcontext()

    def full_weights(self, named: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
        """The trainable weights, whole and on the CPU (on rank 0; a collective under FSDP2)."""
        out = {}
        for name, p in named:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            if self.main:
                out[name] = full.detach().cpu().clone()
        return out

    def optimizer_state(self, module: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """``opt.state_dict()`` as one process's would be (whole tensors, parameters by index); a collective."""
        if self.strategy != "fsdp2":
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return {}
        order = [fqn for group in full["param_groups"] for fqn in group["params"]]
        index = {fqn: i for i, fqn in enumerate(order)}
        return {
            "state": {index[k]: v for k, v in full["state"].items()},
            "param_groups": [{**g, "params": [index[f] for f in g["params"]]} for g in full["param_groups"]],
        }

    def load_optimizer_state(
        self, module: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], names: list[str]
    ) -> None:
        """Load ``optimizer_state``'s format (``names``: the trainable parameters' names, in the optimiser's order)."""
        if self.strategy != "fsdp2":
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        fqns = [f"model.{n}" for n in names]  # under the root ``_BatchLoss``
        full = {
            "state": {fqns[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [fqns[int(i)] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(module, opt, full, options=StateDictOptions(full_state_dict=True))


def setup_distributed(strategy: str, device: torch.device) -> Distributed:
    """``strategy`` checked, and the default process group initialised (under ``torchrun``) when needed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        return Distributed("none", device=device)
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(f"strategy={strategy!r}: this torch has no torch.distributed")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise ValueError(
                f"strategy={strategy!r} needs a process group: launch with torchrun (RANK, WORLD_SIZE, LOCAL_RANK) "
                "or call torch.distributed.init_process_group() first"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(strategy, dist.get_rank(), dist.get_world_size(), device)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every sharded (FSDP2 ``DTensor``) entry gathered whole, on the CPU.

    A collective under FSDP2: every rank must call it. Plain tensors are returned as they are (moved to the CPU).
    """
    out = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[name] = full.detach().cpu()
    return out
