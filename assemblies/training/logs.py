"""What ``train`` reports: tokens per micro-batch, a JSON-lines step log, TensorBoard scalars, the run's summary.

- ``micro_batch_tokens(batch)``: the real (non-pad) positions of a collated micro-batch, counted on the CPU.
- ``TrainLog``: rank 0's step log: a JSON line per logged step (appended, flushed and fsync'ed line by line,
  so a crash keeps every line written, each whole), TensorBoard scalars when ``tensorboard`` is installed
  (else one warning; it is never required), and the summary at the end (``summary``).
- ``peak_memory(device)``: the peak memory of the run: CUDA's peak allocation, else the process's peak RSS.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping

import torch

__all__ = ["TrainLog", "micro_batch_tokens", "peak_memory"]

logger = logging.getLogger(__name__)

_warned_tensorboard = False


def micro_batch_tokens(batch: Mapping) -> int:
    """The positions of ``batch`` that are real tokens, text or image, not padding.

    The sum of the collator's ``lengths`` (each sample's length before padding; a packed row's members), else
    every position of ``input_ids`` (a batch without ``lengths``: all of it counted). Read from the CPU batch,
    so it costs no device sync.

    >>> micro_batch_tokens({"input_ids": torch.zeros(2, 5), "lengths": torch.tensor([5, 3])})
    8
    >>> micro_batch_tokens({"input_ids": torch.zeros(2, 5)})
    10
    """
    lengths = batch.get("lengths")
    if lengths is not None:
        return int(torch.as_tensor(lengths).sum())
    return batch["input_ids"].numel()


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, source)``: ``torch.cuda.max_memory_allocated`` on a CUDA device (``"cuda_max_allocated"``), else
    the process's peak resident set, ``VmHWM`` of ``/proc/self/status`` (``"vmhwm"``) or ``getrusage``'s
    ``ru_maxrss`` (``"ru_maxrss"``); ``(0, "unknown")`` when none can be read."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "vmhwm"  # kB
    except OSError:
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024), "ru_maxrss"  # bytes on macOS, else kB
    except (ImportError, OSError):
        return 0, "unknown"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # strict JSON has no NaN / Infinity


class TrainLog:
    """Rank 0's record of a run (``active=False`` on the other ranks: it only counts).

    Args:
        log_file: Append a JSON line per logged step here: ``step``, ``loss``, ``lr``, ``grad_norm``, ``tokens``
            (real tokens of this call's steps so far, ``micro_batch_tokens``, all ranks), ``tokens_per_s`` (those
            over ``elapsed_s``, the seconds since the first step of this call), ``skipped`` (whether this step was
            skipped as non-finite), ``skipped_steps`` (so far). Non-finite values are written as ``null``.
        tensorboard_dir: Write the same scalars with ``torch.utils.tensorboard.SummaryWriter`` (if importable).
        device: For ``peak_memory``.
        active: Write anything at all (rank 0).
    """

    def __init__(
        self,
        log_file: str | os.PathLike | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
        *,
        device: torch.device | None = None,
        active: bool = True,
    ):
        self.device, self.active = torch.device("cpu") if device is None else device, active
        self.start = time.perf_counter()
        self.steps = self.tokens = self.skipped = 0
        self._file = None
        self._writer = None
        if active and log_file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            self._file = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if active and tensorboard_dir is not None:
            self._writer = _summary_writer(tensorboard_dir)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.elapsed, 1e-9)

    def count(self, tokens: int, skipped: bool = False) -> None:
        """One step ran (every step, logged or not): ``tokens`` real tokens; ``skipped``: non-finite, not stepped."""
        self.steps += 1
        self.tokens += tokens
        self.skipped += bool(skipped)

    def write(self, step: int, loss: float, lr: float, grad_norm: float, skipped: bool = False) -> dict:
        """Log step ``step`` (after ``count``): a whole JSON line, flushed and fsync'ed; TensorBoard scalars."""
        record = {
            "step": step,
            "loss": _finite_or_none(loss),
            "lr": lr,
            "grad_norm": _finite_or_none(grad_norm),
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "elapsed_s": self.elapsed,
            "skipped": skipped,
            "skipped_steps": self.skipped,
        }
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")  # one write of the whole line
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "skipped_steps"):
                if record[key] is not None:
                    self._writer.add_scalar(f"train/{key}", record[key], step)
        return record

    def summary(self) -> dict:
        """The run's summary: ``steps`` (run by this call), ``skipped_steps``, ``tokens``, ``wall_s``,
        ``tokens_per_s``, ``peak_memory_bytes`` (this process's) and ``peak_memory_source`` (``peak_memory``)."""
        memory, source = peak_memory(self.device)
        return {
            "steps": self.steps,
            "skipped_steps": self.skipped,
            "tokens": self.tokens,
            "wall_s": self.elapsed,
            "tokens_per_s": self.tokens_per_s,
            "peak_memory_bytes": memory,
            "peak_memory_source": source,
        }

    def close(self, summary: dict | None = None) -> None:
        """Write ``summary``'s scalars to TensorBoard and close the files."""
        if self._writer is not None:
            if summary is not None:
                for key in ("tokens", "wall_s", "tokens_per_s", "peak_memory_bytes", "skipped_steps"):
                    self._writer.add_scalar(f"summary/{key}", summary[key], self.steps)
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _summary_writer(path: str | os.PathLike):
    """A ``SummaryWriter`` on ``path``, or ``None`` (with one warning per process) when tensorboard is missing."""
    global _warned_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned_tensorboard:
            logger.warning("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
            _warned_tensorboard = True
        return None
    return SummaryWriter(log_dir=os.fspath(path))
