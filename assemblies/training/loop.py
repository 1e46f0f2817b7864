"""One stage of training: AdamW with a cosine schedule, gradient clipping and exact gradient accumulation.

A batch of ``batch_size`` samples is accumulated from micro-batches, and each micro-batch's loss is weighted
so that the accumulated gradient equals the gradient of the loss over the whole batch: by its share of the
samples for the sample-level loss (a mean over samples), by its share of the valid (supervised) tokens for the
batch-level loss (a mean over tokens). Under ``torchrun`` (``strategy="ddp"`` or ``"fsdp2"``, ``distributed.py``) the
ranks share each batch's micro-batches and the shares are of the global batch: a step equals one process's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from rwkvblocks import BatchLevelCE
from rwkvblocks.losses import IGNORE_INDEX
from rwkvblocks.prompting import SkipReport

from ..models.visualrwkv import VisualRWKV
from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from .distributed import setup_distributed
from .logs import TrainLog, micro_batch_tokens
from .recipes import TrainRecipe, build_optimizer, build_scheduler
from .stages import configure_stage

__all__ = ["NONFINITE", "PRECISIONS", "TrainingInterrupted", "micro_batch_weight", "train"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16-autocast", "bf16-pure")
"""``train``'s precisions: ``"fp32"`` (compute in the parameters' own dtype, fp32 or fp64), ``"bf16-autocast"``
(fp32 master weights and optimiser state, the forward under bf16 autocast: mixed precision as the paper trains),
``"bf16-pure"`` (bf16 parameters stepped directly, no fp32 master copy: updates smaller than a bf16 ulp of a weight
are lost, so at stage-2 learning rates most weights never change; only for memory-bound experiments)."""


NONFINITE = ("stop", "skip")
"""``train``'s policies for a step whose loss or gradient norm is NaN or infinite: ``"stop"`` (raise ``ValueError``
before the weights are stepped) or ``"skip"`` (drop the step's gradients, do not step, go on)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``train`` after it wrote a checkpoint (``checkpoint``: its directory)."""

    def __init__(self, checkpoint: os.PathLike | None, signum: int):
        super().__init__(f"training stopped by signal {signum}; checkpoint {checkpoint}")
        self.checkpoint, self.signum = checkpoint, signum


def _to(batch: Mapping, device: torch.device) -> dict:
    """Tensors to ``device``, except ``image_spans``: layout metadata the model reads on the CPU."""
    cpu = ("image_spans", "cu_seqlens")  # layout metadata, checked on the host; the model copies what it needs
    return {k: v.to(device) if isinstance(v, torch.Tensor) and k not in cpu else v for k, v in batch.items()}


def _culprits(parts: list[torch.Tensor], batches: list[Mapping], dist) -> str:
    """Which of this rank's micro-batches (of the step's, counted across ranks) have a non-finite loss: one host read,
    only once the step's total is known to be non-finite."""
    finite = torch.isfinite(torch.stack(parts)).tolist()
    total = len(parts) * dist.world_size
    bad = [
        f"micro-batch {dist.rank + i * dist.world_size + 1} of {total} (sample ids {list(batches[i]['sample_ids'])})"
        for i, ok in enumerate(finite)
        if not ok
    ]
    if not bad:
        return f" (no micro-batch of rank {dist.rank}'s; another rank's)" if dist.active else ""
    return " in " + ", ".join(bad)


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
        for item in loader:
            empty = False
            for batch in item if isinstance(item, list) else (item,):  # a packing collator gives rows
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


def _precision(params: list[torch.nn.Parameter], precision: str | None) -> str:
    """``precision`` checked against the trainable parameters' dtypes (``None``: ``"fp32"``)."""
    dtypes = {p.dtype for p in params}
    if torch.float16 in dtypes:
        raise ValueError(
            "fp16 parameters: training in fp16 needs a gradient scaler, which train() does not have (the loss "
            "under- or overflows to NaN); keep the parameters fp32 and use precision='bf16-autocast'"
        )
    if precision is None:
        if torch.bfloat16 in dtypes:
            raise ValueError(
                "bf16 parameters: keep the parameters fp32 and use precision='bf16-autocast' (fp32 master "
                "weights), or pass precision='bf16-pure' to step the bf16 weights directly (small updates are lost)"
            )
        precision = "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16-pure" and dtypes != {torch.bfloat16}:
        raise ValueError(f"precision='bf16-pure' needs bf16 trainable parameters, got {sorted(map(str, dtypes))}")
    if precision != "bf16-pure" and not dtypes <= {torch.float32, torch.float64}:
        raise ValueError(
            f"precision={precision!r} needs fp32 (or fp64) trainable parameters as master weights, "
            f"got {sorted(map(str, dtypes))}"
        )
    return precision


class _StopSignals:
    """While active (main thread only), SIGINT and SIGTERM only set ``received``; the loop checkpoints and stops."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("signal %d: writing a checkpoint after this step, then stopping", signum)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


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
    precision: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    stop_at: int | None = None,
    strategy: str = "none",
    nonfinite: str = "stop",
    log_file: str | os.PathLike | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    on_summary: Callable[[dict], object] | None = None,
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
        precision: One of ``PRECISIONS``. ``"fp32"`` (the default for fp32/fp64 parameters): no autocast.
            ``"bf16-autocast"``: the trainable parameters and AdamW's state stay fp32 (master weights), the
            forward runs under ``torch.autocast(device_type, torch.bfloat16)``, the backward outside it.
            ``"bf16-pure"``: bf16 parameters stepped directly (the old ``--dtype bf16``; tiny updates vanish),
            only when asked for. fp16 parameters are refused (no gradient scaler); so is a bf16 model without
            an explicit precision. A non-finite loss or gradient: see ``nonfinite``.
        checkpoint_dir: Write training checkpoints here (``checkpoint.py``): every ``checkpoint_every`` steps,
            at the end, at ``stop_at`` and on SIGINT/SIGTERM (the loop then raises ``TrainingInterrupted``).
        checkpoint_every: Steps between checkpoints (``None``: only at the end, ``stop_at`` and on a signal).
        keep: Keep the newest ``keep`` checkpoints (``None``: all).
        resume: Go on from the newest checkpoint in ``checkpoint_dir`` (start afresh when there is none): the
            trainable weights, optimiser, scheduler and RNG states are restored and the micro-batches it had
            consumed are drawn from ``loader`` again and dropped. The result is exactly that of an uninterrupted
            run only if ``loader`` yields the same sequence again: a fixed order, or shuffling with its own
            seeded generator (``DataLoader(..., generator=torch.Generator().manual_seed(s))``), not the global
            RNG; and the frozen weights must be the same as built for the first run. The recipe, ``steps``,
            precision and trainable set must match the checkpoint's (``ValueError`` otherwise).
        stop_at: Stop after optimiser step ``stop_at`` of ``steps`` (the schedule still spans ``steps``),
            writing a checkpoint when ``checkpoint_dir`` is set; resume later to finish.
        strategy: ``"none"`` (one process), ``"ddp"`` or ``"fsdp2"`` (``STRATEGIES``; ``distributed.py``): under
            ``torchrun``, the process group is initialised if it is not (NCCL for a CUDA model, put on
            ``cuda:LOCAL_RANK`` by the caller; gloo on the CPU). Every rank gets the same ``loader``; of each
            step's ``batch_size / micro_batch_size`` micro-batches, rank ``r`` of ``W`` takes ``r, r + W, ...``
            (so that number must be a multiple of ``W``), and the weights are shares of the global batch: the
            step, its loss (all-reduced) and the checkpoints equal one process's with ``W`` times the
            accumulation. Only rank 0 logs, shows progress and writes checkpoints (full, gathered weights under
            FSDP2, in the format of one process: a run can resume under another strategy or world size, to
            rounding); a resume reads the checkpoint on every rank (a shared file system). A signal on any rank
            stops all of them at the same step. Under FSDP2 the model stays sharded after the run
            (``full_state_dict`` gathers its weights).
        nonfinite: What a step whose loss (the whole batch's) or gradient norm (``clip_grad_norm_``'s) is NaN or
            infinite does (``NONFINITE``). ``"stop"``: raise ``ValueError`` naming the step and, for the loss,
            which of its micro-batches went non-finite and their sample ids (looked for only then: one host read
            per step as before, plus one when the total is non-finite), before the weights are stepped.
            ``"skip"``: warn, zero the gradients, do not step the optimiser; the step still counts (its data
            is consumed, the scheduler advances, so the schedule and the run's length are unchanged, and its
            non-finite loss is in the returned list) and is counted as skipped (log lines, summary). No
            checkpoint is written right after a skipped step (not at ``checkpoint_every``, the end or a signal:
            ``TrainingInterrupted`` then names the newest checkpoint), so the last good one stays the newest.
        log_file: Append a JSON line per logged step (every ``plan.log_every`` steps and the last; a skipped
            step always) to this file, flushed and fsync'ed line by line (``logs.TrainLog``: step, loss, lr,
            grad_norm, tokens, tokens_per_s, elapsed_s, skipped, skipped_steps). Rank 0 only.
        tensorboard_dir: Also write those scalars with TensorBoard's ``SummaryWriter``, if ``tensorboard`` is
            installed (else one warning). Rank 0 only.
        on_summary: Called at the end, on every rank, with the run's summary (``TrainLog.summary``: steps and
            skipped steps of this call, tokens, wall seconds, tokens per second, this process's peak memory);
            rank 0 also logs it. Tokens are the real (non-pad) positions of the micro-batches, text and
            image (``logs.micro_batch_tokens``: the collator's ``lengths``, else all of ``input_ids``), of all
            ranks. The progress bar shows the loss, the learning rate and the tokens per second of this call.

    Returns:
        The loss of every optimiser step so far (that of its whole accumulated batch), including those run
        before a resume.
    """
    from tqdm import tqdm

    accumulation = plan.accumulation
    device = next(model.lm.parameters()).device
    dist = setup_distributed(strategy, device)
    if accumulation % dist.world_size:
        raise ValueError(
            f"strategy={strategy!r} with {dist.world_size} ranks: the {accumulation} micro-batches of a step "
            f"(batch_size {plan.batch_size} / micro_batch_size {plan.micro_batch_size}) must split evenly"
        )
    if steps is None:
        if micro_batches_per_epoch is None:
            micro_batches_per_epoch = len(loader)  # type: ignore[arg-type]
        steps = max(1, math.ceil(plan.epochs * micro_batches_per_epoch / accumulation))
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    end = steps if stop_at is None else min(stop_at, steps)
    configure_stage(model, plan.stage)
    model.lm.activation_checkpointing = plan.activation_checkpointing  # recompute blocks in the backward
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    precision = _precision([p for _, p in named], precision)
    meta = {
        "recipe": json.loads(json.dumps(plan.to_dict())),
        "steps": steps,
        "precision": precision,
        "trainable": [n for n, _ in named],
    }
    done, consumed, losses, restored_rng = 0, 0, [], None
    found = latest_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if found is not None:
        ckpt = load_checkpoint(found)
        for key, value in meta.items():
            if ckpt.meta.get(key) != value:
                theirs = ckpt.meta.get(key)
                raise ValueError(f"cannot resume from {found}: its {key} is {theirs!r}, this run's {value!r}")
        with torch.no_grad():
            for name, p in named:
                p.copy_(ckpt.weights[name])  # before the wrapping: every rank then holds the same weights
        done, consumed, losses = ckpt.step, ckpt.consumed, list(ckpt.losses)
        ranks_rng = ckpt.state.get("rng_ranks")
        same_ranks = ranks_rng is not None and len(ranks_rng) == dist.world_size
        restored_rng = ranks_rng[dist.rank] if same_ranks else ckpt.state["rng"]
        if dist.main:
            logger.info("resuming from %s: step %d of %d, %d micro-batches consumed", found, done, steps, consumed)
    elif resume and dist.main:
        logger.info("no checkpoint in %s: starting afresh", checkpoint_dir)
    module = dist.wrap(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # FSDP2: now DTensors
    params = [p for _, p in named]
    opt = build_optimizer(plan, named)  # weight decay on matrices only (plan.decay_matrices_only)
    sched = build_scheduler(plan, opt, steps)  # linear warm-up, then cosine to lr_final
    if found is not None:
        order = [n for group in opt.param_groups for n in group["names"]]  # the optimiser's parameter order
        dist.load_optimizer_state(module, opt, ckpt.state["optimizer"], order)
        sched.load_state_dict(ckpt.state["scheduler"])

    def checkpoint() -> os.PathLike | None:
        if checkpoint_dir is None:
            return None
        rng = rng_states(device)
        state = {"optimizer": dist.optimizer_state(module, opt), "scheduler": sched.state_dict(), "rng": rng}
        if dist.active:
            state["rng_ranks"] = dist.gather_objects(rng)
        weights = dist.full_weights(named) if dist.strategy == "fsdp2" else dict(named)
        if dist.main:
            save_checkpoint(
                checkpoint_dir,
                step=done,
                consumed=consumed,
                losses=losses,
                weights=weights,
                state=state,
                meta=meta,
                keep=keep,
            )
        dist.barrier()  # the checkpoint is complete before any rank goes on (or reads it)
        return checkpoint_path(checkpoint_dir, done)

    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if precision == "bf16-autocast"
        else contextlib.nullcontext
    )
    module.train()
    micro = _micro_batches(loader if skip_report is None else _Reported(loader, skip_report), steps * accumulation)
    for _ in range(consumed):  # the data the checkpointed run had consumed: drawn again and dropped
        next(micro)
    if restored_rng is not None:  # after the replay, so a loader drawing from the global RNG cannot shift it
        set_rng_states(restored_rng)
    label = description or f"stage {plan.stage}"
    log_every = max(1, int(getattr(plan, "log_every", 1) or 1))
    log = TrainLog(log_file, tensorboard_dir, device=device, active=dist.main)
    good = True  # the last step was stepped (not skipped as non-finite): a checkpoint may follow it

    def good_checkpoint() -> os.PathLike | None:
        if good:
            return checkpoint()
        return latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None

    summary = None
    try:
        with (
            _StopSignals(checkpoint_dir is not None) as signals,
            tqdm(total=steps, initial=done, desc=label, unit="step", disable=not (progress and dist.main)) as bar,
        ):
            while done < end:
                opt.zero_grad(set_to_none=True)
                batches = [next(micro) for _ in range(accumulation)][dist.rank :: dist.world_size]  # this rank's
                weights = [micro_batch_weight(model.loss_fn, b) for b in batches]
                tokens = sum(micro_batch_tokens(b) for b in batches)  # on the CPU batches: no sync
                whole = sum(weights)
                if dist.active:  # the global batch's samples (or valid tokens)
                    whole = int(dist.all_sum([whole]).item())
                whole = max(whole, 1)
                parts = []
                for i, (batch, weight) in enumerate(zip(batches, weights)):
                    with dist.sync_gradients(module, final=i == len(batches) - 1):
                        with autocast():
                            out_loss = dist.forward(module, _to(batch, device))
                        loss = out_loss.to(torch.promote_types(out_loss.dtype, torch.float32)) * (weight / whole)
                        # DDP and FSDP2 average the ranks' gradients: scaled by W, their sum is the global batch's
                        (loss * dist.world_size if dist.active else loss).backward()
                    parts.append(loss.detach())
                norm = torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)  # global under DDP / FSDP2
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
                local = torch.stack(parts).sum().to(torch.float64)
                if dist.active:  # the loss, tokens, and whether any rank got a signal: one all-reduce
                    flags = torch.stack(
                        [
                            local,
                            norm.to(local) / dist.world_size,
                            local.new_tensor(float(tokens)),
                            local.new_tensor(float(signals.received is not None)),
                        ]
                    )
                    step_loss, grad_norm, tokens, stop = dist.all_sum(flags).tolist()
                    tokens = int(tokens)
                    stop_signal = (signals.received or signal.SIGTERM) if stop else None
                else:  # one host read per optimiser step, for the log and the checks
                    step_loss, grad_norm = torch.stack([local, norm.to(local)]).tolist()
                    stop_signal = signals.received
                problem = None
                if not math.isfinite(step_loss):
                    problem = f"the loss is {step_loss} at step {done + 1}{_culprits(parts, batches, dist)}"
                elif not math.isfinite(grad_norm):
                    problem = f"the gradient norm is {grad_norm} (the loss {step_loss:.6g}) at step {done + 1}"
                if problem is not None and nonfinite == "stop":
                    raise ValueError(f"{problem} (precision {precision!r}); the weights were not stepped with it")
                good = problem is None
                if good:
                    opt.step()
                else:  # nonfinite="skip"
                    opt.zero_grad(set_to_none=True)
                    if dist.main:
                        logger.warning("%s (precision %r): step skipped, the weights not stepped", problem, precision)
                sched.step()  # a skipped step still advances the schedule
                done, consumed = done + 1, consumed + accumulation
                losses.append(step_loss)
                log.count(tokens, skipped=not good)
                lr = sched.get_last_lr()[0]
                if dist.main and (done % log_every == 0 or done == end or not good):
                    log.write(done, step_loss, lr, grad_norm, skipped=not good)
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{log.tokens_per_s:.0f}")
                bar.update()
                if stop_signal is not None:
                    raise TrainingInterrupted(good_checkpoint(), stop_signal)
                if good and checkpoint_every is not None and done % checkpoint_every == 0 and done < end:
                    checkpoint()
            good_checkpoint()  # at the end (or at stop_at), unless the last step was skipped
        summary = log.summary()
    finally:
        log.close(summary)
    module.eval()
    if dist.main:
        logger.info("training summary: %s", json.dumps(summary))
    if on_summary is not None:
        on_summary(summary)
    if skip_report is not None and dist.main:
        bad = skip_report.skipped or skip_report.truncated
        logger.log(logging.WARNING if bad else logging.INFO, "training done: %s", skip_report.summary())
    return losses
