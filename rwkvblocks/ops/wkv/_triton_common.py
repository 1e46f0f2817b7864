"""What the two Triton WKV backends share: lazy kernel building, input flattening, and the
reasons a Triton backend gives for refusing an input.

Triton is imported only inside the functions that build kernels, so ``import rwkvblocks``
never imports it. ``triton.jit`` decides between the compiler and the interpreter when a
kernel is decorated, so building the kernels on first use (not at import) means
``TRITON_INTERPRET=1`` takes effect as long as it is set before the first call.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Flat",
    "INTERPRET_ENV",
    "bind_triton",
    "interpreting",
    "register_wkv_ops",
    "triton_probe",
    "triton_reasons",
]

INTERPRET_ENV = "TRITON_INTERPRET"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton kernels run under the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get(INTERPRET_ENV, "0").lower() in ("1", "true", "on", "yes")


def triton_probe() -> str | None:
    """Availability probe: Triton installed (found without importing it)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def _size_reason(name: str, n: int) -> str | None:
    if n < 16 or n > 128 or n & (n - 1):
        return f"{name} = {n} must be a power of two in 16..128"
    return None


def triton_reasons(inputs: Any) -> list[str]:
    """Reasons common to both Triton backends (device, dtype, head sizes)."""
    reasons = []
    if inputs.device.type != "cuda" and not (inputs.device.type == "cpu" and interpreting()):
        reasons.append(f"needs a CUDA tensor (or {INTERPRET_ENV}=1 for CPU tensors), got {inputs.device.type}")
    if inputs.dtype not in _DTYPES:
        reasons.append(f"dtype {inputs.dtype} is not supported (float32, bfloat16, float16)")
    for name, n in (("head_dim K", inputs.head_dim), ("value_dim V", inputs.value_dim)):
        reason = _size_reason(name, n)
        if reason:
            reasons.append(reason)
    return reasons


tl: Any = None  # triton.language once bind_triton() has run (Triton is imported lazily)


def _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    """``[bos, eos)`` of sequence ``i_n`` in the flat token stream (a ``@triton.jit`` helper)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@functools.cache
def _jit_seq_bounds():
    import triton

    return triton.jit(_seq_bounds)


def bind_triton(namespace: dict[str, Any], helpers: Sequence[str]):
    """Import Triton and make a kernel module's functions compilable.

    Kernel sources are plain module-level functions (their ``tl.constexpr`` annotations are
    strings under ``from __future__ import annotations``), so defining them imports nothing.
    This binds ``tl`` in ``namespace`` (the module's globals, which ``@triton.jit`` resolves
    names in, the interpreter included), binds the shared ``_seq_bounds`` helper, and replaces
    each function named in ``helpers`` by its ``triton.jit`` version. Call it once per module
    (from a cached builder). Returns the ``triton`` module.
    """
    global tl
    import triton
    import triton.language

    tl = triton.language
    namespace["tl"] = triton.language
    namespace["_seq_bounds"] = _jit_seq_bounds()
    for name in helpers:
        namespace[name] = triton.jit(namespace[name])
    return triton


class Flat:
    """A WKV call laid out for the kernels: every sequence in one stream of tokens.

    Attributes:
        r, k, v: Contiguous `[B*T, H, K]` / `[B*T, H, V]` views.
        w: `[B*T, H, K]`-addressable: ``w_tok`` and ``w_head`` are its token and head strides
            (0 for the broadcast static decay of ``wkv5``, so it is never copied).
        cu_seqlens: int tensor `[N+1]` of sequence boundaries, or ``None`` for ``B`` sequences
            of length ``T`` each.
        num_seqs, seq_len: ``N`` and ``T`` (``T`` is the packed length when ``cu_seqlens`` is given).
    """

    def __init__(self, r: Tensor, k: Tensor, v: Tensor, w: Tensor, cu_seqlens: Tensor | None):
        B, T, H, K = r.shape
        self.shape = (B, T, H, K, v.shape[-1])
        self.r = r.contiguous().view(B * T, H, K)
        self.k = k.contiguous().view(B * T, H, K)
        self.v = v.contiguous().view(B * T, H, v.shape[-1])
        if w.stride(3) != 1 or w.stride(0) != T * w.stride(1):
            w = w.contiguous()
        self.w, self.w_tok, self.w_head = w, w.stride(1), w.stride(2)
        self.cu_seqlens = cu_seqlens
        self.num_seqs = B if cu_seqlens is None else cu_seqlens.numel() - 1
        self.seq_len = T
        self.tokens = B * T


def register_wkv_ops(name: str, forward_impl, backward_impl):
    """Register ``rwkvblocks::{name}`` and ``rwkvblocks::{name}_backward`` as ``torch.library.triton_op``s, the
    forward differentiable through the backward; returns ``(forward, backward)``.

    Both take the WKV op's arguments: the forward ``(r, k, v, w, u, state, cu_seqlens, reverse) -> (o,
    final_state)``, the backward ``(r, k, v, w, u, state, cu_seqlens, do, ds_final, reverse) -> (dr, dk, dv, dw,
    du, dstate)`` with ``dstate`` fp32 `[N, H, K, V]` even without an initial state (cast back here).
    """
    from torch.library import triton_op

    forward = triton_op(f"rwkvblocks::{name}", mutates_args=())(forward_impl)
    backward = triton_op(f"rwkvblocks::{name}_backward", mutates_args=())(backward_impl)

    def setup_context(ctx, inputs, output):
        r, k, v, w, u, state, cu_seqlens, reverse = inputs
        ctx.save_for_backward(r, k, v, w, u, state, cu_seqlens)
        ctx.reverse = reverse
        ctx.set_materialize_grads(False)

    def differentiate(ctx, do, ds_final):
        r, k, v, w, u, state, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        *grads, ds0 = backward(r, k, v, w, u, state, cu_seqlens, do, ds_final, ctx.reverse)
        return (*grads, ds0.to(state.dtype) if state is not None else None, None, None)

    forward.register_autograd(differentiate, setup_context=setup_context)
    return forward, backward
