"""Causal multi-head attention with a key/value prefix (a KV cache), behind the backend dispatcher.

``causal_attention(q, k, v)`` lets query ``i`` of the ``Tq`` queries, which are the last ``Tq`` of the
``Tk`` positions, attend to keys ``0 .. Tk - Tq + i`` (the causal mask aligned bottom-right, so that a
cached prefix of ``Tk - Tq`` keys is visible to every new query). Backends:

- ``torch``: ``torch.nn.functional.scaled_dot_product_attention``; the default, runs everywhere.
- ``xformers``: ``xformers.ops.memory_efficient_attention`` with a bottom-right causal bias; only when
  xformers imports and the tensors are on CUDA (it has no CPU operators). Never picked automatically:
  ask for it with ``backend="xformers"`` or ``RWKVBLOCKS_ATTENTION_BACKEND=xformers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dispatch import Backend, Dispatcher

__all__ = ["AttentionInputs", "attention_dispatcher", "causal_attention"]

ENV_VAR = "RWKVBLOCKS_ATTENTION_BACKEND"


@dataclass(frozen=True)
class AttentionInputs:
    batch: int
    num_heads: int
    q_len: int
    k_len: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def _run_torch(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v)
    offset = Tk - Tq
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=offset)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _run_xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    import xformers.ops as xops

    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


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
        Backend("torch", _run_torch, description="torch scaled_dot_product_attention; default, any device"),
        Backend(
            "xformers",
            _run_xformers,
            unsupported_reasons=_xformers_reasons,
            probe=_probe_xformers,
            description="xformers memory_efficient_attention; CUDA only, on request",
        ),
    ],
)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str | None = None) -> Tensor:
    """Softmax attention with scale ``1/sqrt(D)`` and a bottom-right-aligned causal mask.

    Shapes:
        q: `[B, H, Tq, D]`; k, v: `[B, H, Tk, D]` with ``Tk >= Tq`` (the first ``Tk - Tq`` positions are
        a cached prefix). Returns `[B, H, Tq, D]` in the dtype of ``q``.

    Reference: ``torch`` backend. Backends: ``torch``, ``xformers``.

    Raises:
        ValueError: mismatched shapes, dtypes or devices.
        BackendUnavailableError: the requested backend cannot run this input.
    """
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"q must be [B, H, Tq, D] and k, v [B, H, Tk, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D or k.shape[2] < Tq:
        raise ValueError(f"k and v must be [{B}, {H}, Tk >= {Tq}, {D}], got {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share a dtype and a device")
    inputs = AttentionInputs(B, H, Tq, k.shape[2], D, q.dtype, q.device)
    chosen = attention_dispatcher.select(inputs, backend, device_key=f"{q.device.type}/{q.dtype}")
    return chosen.run(q, k, v)
