"""When to run argument checks that read a tensor's values.

Checks of shapes, dtypes and devices are metadata and always run. Checks of values (``w <= 0``, sequence
boundaries, token ids in range) need the numbers on the host: on a CPU tensor that is free, on a CUDA
tensor it waits for the device (a device-to-host sync in the hot path) and under ``torch.compile`` it
breaks the graph. ``check_values`` is the one rule every op and block follows.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

__all__ = ["check_cu_seqlens", "check_values", "shape_error"]


def check_values(tensor: Tensor, validate: bool | None = None) -> bool:
    """Whether a check that reads the values of ``tensor`` should run.

    Args:
        tensor: The tensor whose values the check reads.
        validate: ``True`` runs the check on any device (a CUDA tensor then costs a device-to-host sync;
            under ``torch.compile(fullgraph=True)`` reading a value fails to trace). ``False`` never runs
            it. ``None`` (the default) runs it only where it is free: on CPU tensors, outside
            ``torch.compile`` tracing.

    Returns:
        ``True`` when the caller should run its value check. Tensors without values (``meta`` or fake
        tensors) are never checked, whatever ``validate`` says.

    Example:
        >>> import torch
        >>> from rwkvblocks.ops import check_values
        >>> check_values(torch.zeros(3)), check_values(torch.zeros(3), validate=False)
        (True, False)
    """
    if validate is False:
        return False
    if torch.compiler.is_compiling():
        return bool(validate)
    if tensor.device.type == "meta" or is_fake(tensor):
        return False
    return bool(validate) or tensor.device.type == "cpu"


def shape_error(name: str, expected: str, x: Tensor) -> ValueError:
    """The ``ValueError`` for an argument of the wrong shape."""
    return ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")


def check_cu_seqlens(cu_seqlens, r: Tensor, validate: bool | None) -> int:
    """Check packed-sequence boundaries (FlashAttention convention, ``B = 1``); returns the number of sequences N.

    Values (start 0, end T, non-decreasing) are read only where ``check_values(cu_seqlens, validate)`` allows.
    """
    if not isinstance(cu_seqlens, Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [N+1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != r.device:
        raise ValueError(f"cu_seqlens must be on {r.device} like r, got {cu_seqlens.device}")
    B, T = r.shape[:2]
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T and B must be 1, got B={B}")
    if check_values(cu_seqlens, validate):
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {bounds[0]} ... {bounds[-1]}")
        if any(b < a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds}")
    return cu_seqlens.numel() - 1
