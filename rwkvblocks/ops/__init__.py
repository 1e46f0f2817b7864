"""Functional kernels (no ``nn.Module``): the WKV operator and its backends.

Each op has one checked, dispatching entry point (``wkv6``, ``wkv5``) and named
implementations (``wkv6_reference``, ``wkv6_chunked``, ``wkv6_triton_chunk``,
``wkv6_triton_recurrent``) that skip the checks.
"""

from ._dispatch import Backend, BackendUnavailableError, Dispatcher
from .wkv import (
    WKVInputs,
    wkv5,
    wkv6,
    wkv6_chunked,
    wkv6_reference,
    wkv6_triton_chunk,
    wkv6_triton_recurrent,
    wkv_dispatcher,
)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Dispatcher",
    "WKVInputs",
    "wkv5",
    "wkv6",
    "wkv6_chunked",
    "wkv6_reference",
    "wkv6_triton_chunk",
    "wkv6_triton_recurrent",
    "wkv_dispatcher",
]
