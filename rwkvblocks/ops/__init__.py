"""Functional kernels (no ``nn.Module``): the WKV operators of RWKV-5/6 and RWKV-7, causal attention, weighted
cross entropy.

Each op has one checked, dispatching entry point (``wkv6``, ``wkv5``, ``wkv7``, ``causal_attention``,
``weighted_cross_entropy``) that calls one ``torch.library`` custom op (``torch.ops.rwkvblocks.*``, fake
kernels and autograd included), so ``torch.compile(fullgraph=True)`` and CUDA graphs see a single node;
its backend is chosen inside the op from metadata. Checks that read values follow ``check_values``.
The named WKV implementations (``wkv6_reference``, ``wkv6_chunked``, ``wkv6_triton_chunk``,
``wkv6_triton_recurrent``, ``wkv7_reference``, ``wkv7_chunked``, ``wkv7_triton_chunk``,
``wkv7_triton_recurrent``) skip the checks and the dispatch.
"""

from ._checks import check_values
from ._dispatch import Backend, BackendUnavailableError, Dispatcher
from .attention import attention_dispatcher, causal_attention
from .cross_entropy import cross_entropy_dispatcher, weighted_cross_entropy
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
from .wkv7 import (
    WKV7Inputs,
    state_from_fla,
    state_to_fla,
    wkv7,
    wkv7_chunked,
    wkv7_dispatcher,
    wkv7_reference,
    wkv7_triton_chunk,
    wkv7_triton_recurrent,
)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Dispatcher",
    "WKV7Inputs",
    "WKVInputs",
    "attention_dispatcher",
    "causal_attention",
    "check_values",
    "cross_entropy_dispatcher",
    "state_from_fla",
    "state_to_fla",
    "weighted_cross_entropy",
    "wkv5",
    "wkv6",
    "wkv6_chunked",
    "wkv6_reference",
    "wkv6_triton_chunk",
    "wkv6_triton_recurrent",
    "wkv7",
    "wkv7_chunked",
    "wkv7_dispatcher",
    "wkv7_reference",
    "wkv7_triton_chunk",
    "wkv7_triton_recurrent",
    "wkv_dispatcher",
]
