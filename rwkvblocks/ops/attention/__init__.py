"""Causal multi-head attention with a key/value prefix (a KV cache), behind the backend dispatcher.

``causal_attention(q, k, v)`` lets query ``i`` of the ``Tq`` queries, which are the last ``Tq`` of the
``Tk`` positions, attend to keys ``0 .. Tk - Tq + i`` (the causal mask aligned bottom-right, so that a
cached prefix of ``Tk - Tq`` keys is visible to every new query). Backends:

- ``torch``: ``torch.nn.functional.scaled_dot_product_attention``; the default, runs everywhere.
- ``xformers``: ``xformers.ops.memory_efficient_attention`` with a bottom-right causal bias; only when
  xformers imports and the tensors are on CUDA (it has no CPU operators). Never picked automatically:
  ask for it with ``backend="xformers"`` or ``RWKVBLOCKS_ATTENTION_BACKEND=xformers``.

``causal_attention`` checks shapes in Python and calls one registered op, ``rwkvblocks::causal_attention``,
which picks the backend inside (from metadata) and whose backward, ``rwkvblocks::causal_attention_backward``,
recomputes the chosen backend's forward: ``torch`` differentiates it with ``torch.func.vjp``, ``xformers``
calls its own forward-with-statistics and backward kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dispatch import Backend, Dispatcher

__all__ = ["AttentionInputs", "OP_NAMES", "attention_dispatcher", "causal_attention"]

ENV_VAR = "RWKVBLOCKS_ATTENTION_BACKEND"


@dataclass(frozen=True)
class AttentionInputs:
    """What a backend needs to know about an attention call to accept or refuse it."""

    batch: int
    num_heads: int
    q_len: int
    k_len: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def _causal_mask(Tq: int, Tk: int, device: torch.device) -> Tensor:
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def _run_torch(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(Tq, Tk, q.device))


def _backward_torch(q: Tensor, k: Tensor, v: Tensor, do: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute and differentiate. ``torch.func.vjp``: inside an op's kernel the dispatcher is already
    below autograd, so ``torch.autograd.grad`` would have no graph to walk."""
    _, vjp = torch.func.vjp(_run_torch, q, k, v)
    return vjp(do)


def _run_xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    import xformers.ops as xops

    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


def _backward_xformers(q: Tensor, k: Tensor, v: Tensor, do: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """xformers' own forward-with-statistics and backward kernels (no autograd needed inside the op)."""
    import xformers.ops as xops

    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    out, lse = xops.memory_efficient_attention_forward_requires_grad(qt, kt, vt, attn_bias=bias)
    dq, dk, dv = xops.memory_efficient_attention_backward(do.transpose(1, 2), out, lse, qt, kt, vt, attn_bias=bias)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def _probe_xformers() -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # missing, or built for another torch
        return f"xformers is not importable ({type(exc).__name__}: {exc})"
    return None


def _xformers_reasons(inputs: AttentionInputs) -> list[str]:
    if inputs.device.type != "cuda":
        return [f"xformers has no {inputs.device.type} operators (needs CUDA tensors)"]
    return []


attention_dispatcher = Dispatcher(
    "causal_attention",
    ENV_VAR,
    [
        Backend(
            "torch",
            _run_torch,
            description="torch scaled_dot_product_attention; default, any device",
            backward=_backward_torch,
        ),
        Backend(
            "xformers",
            _run_xformers,
            unsupported_reasons=_xformers_reasons,
            probe=_probe_xformers,
            description="xformers memory_efficient_attention; CUDA only, on request",
            backward=_backward_xformers,
        ),
    ],
)


def _select(q: Tensor, k: Tensor, backend: str | None) -> Backend:
    B, H, Tq, D = q.shape
    inputs = AttentionInputs(B, H, Tq, k.shape[2], D, q.dtype, q.device)
    return attention_dispatcher.resolve(inputs, backend, device_key=f"{q.device.type}/{q.dtype}")


@torch.library.custom_op("rwkvblocks::causal_attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, backend: str | None) -> Tensor:
    """Dispatching forward; the backend is chosen inside, from metadata."""
    return _select(q, k, backend).run(q, k, v).contiguous()


@_attention_op.register_fake
def _attention_fake(q, k, v, backend):
    _select(q, k, backend)  # the same errors as the real kernel, while tracing
    return q.new_empty(q.shape[:3] + v.shape[3:])


@torch.library.custom_op("rwkvblocks::causal_attention_backward", mutates_args=())
def _attention_backward_op(q: Tensor, k: Tensor, v: Tensor, do: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dq, dk, dv)``, recomputing the forward of the backend named by ``backend``."""
    grads = _select(q, k, backend).backward(q, k, v, do)
    return tuple(g.contiguous() for g in grads)


@_attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, do, backend):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))


def _attention_setup_context(ctx, inputs, output):
    q, k, v, backend = inputs
    ctx.save_for_backward(q, k, v)
    ctx.backend = _select(q, k, backend).name


def _attention_differentiate(ctx, do):
    q, k, v = ctx.saved_tensors
    return (*_attention_backward_op(q, k, v, do, ctx.backend), None)


_attention_op.register_autograd(_attention_differentiate, setup_context=_attention_setup_context)

OP_NAMES = ("rwkvblocks::causal_attention", "rwkvblocks::causal_attention_backward")


def causal_attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str | None = None) -> Tensor:
    """Softmax attention with scale ``1/sqrt(D)`` and a bottom-right-aligned causal mask.

    One registered op, ``torch.ops.rwkvblocks.causal_attention`` (fake kernel and autograd included; the
    backward, ``rwkvblocks::causal_attention_backward``, recomputes the forward), so
    ``torch.compile(fullgraph=True)`` and CUDA graphs see a single node.

    Shapes:
        q: `[B, H, Tq, D]`; k, v: `[B, H, Tk, D]` with ``Tk >= Tq`` (the first ``Tk - Tq`` positions are
        a cached prefix). Returns `[B, H, Tq, D]` in the dtype of ``q``.

    Reference: ``torch`` backend. Backends: ``torch``, ``xformers``.

    Raises:
        ValueError: mismatched shapes, dtypes or devices.
        BackendUnavailableError: the requested backend cannot run this input.
    """
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"q must be [B, H, Tq, D] and k, v [B, H, Tk, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D or k.shape[2] < Tq:
        raise ValueError(f"k and v must be [{B}, {H}, Tk >= {Tq}, {D}], got {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share a dtype and a device")
    return _attention_op(q, k, v, backend)
