"""Parameter dtypes given as ``torch.dtype`` objects or their usual names (``"bf16"``, ``"float32"``...)."""

from __future__ import annotations

import torch

__all__ = ["DTYPE_NAMES", "resolve_dtype"]

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "f16": torch.float16,
    "fp64": torch.float64,
    "float64": torch.float64,
    "double": torch.float64,
    "f64": torch.float64,
}


def resolve_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``value`` as a floating-point ``torch.dtype`` (``None`` stays ``None``: keep the stored dtypes).

    Accepts a ``torch.dtype`` or a name from ``DTYPE_NAMES`` (case-insensitive, an optional ``"torch."`` prefix).

    Raises:
        ValueError: an unknown name, another type, or a dtype that parameters cannot have (integers, bool).

    Example:
        >>> resolve_dtype("bf16"), resolve_dtype("torch.float32"), resolve_dtype(torch.float16)
        (torch.bfloat16, torch.float32, torch.float16)
    """
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {value!r}; use a torch.dtype or one of {', '.join(sorted(DTYPE_NAMES))}")
        return DTYPE_NAMES[key]
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or a name such as 'bf16', got {type(value).__name__} {value!r}")
    if not value.is_floating_point:
        raise ValueError(f"parameters need a floating-point dtype, got {value}")
    return value
