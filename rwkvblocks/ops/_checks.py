"""When to run argument checks that read a tensor's values.

Checks of shapes, dtypes and devices are metadata and always run. Checks of values (``w <= 0``, sequence
boundaries, token ids in range) need the numbers on the host: on a CPU tensor that is free, on a CUDA
tensor it waits for the device (a device-to-host sync in the hot path) and under ``torch.compile`` it
breaks the graph. ``check_values`` is the one rule every op and block follows.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

__all__ = ["check_values"]


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
