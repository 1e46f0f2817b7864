"""Step-by-step WKV recurrence: the oracle, and the backend that always accepts.

The math is in ``README.md`` beside this file. Gradients come from autograd over the
time loop, so the tape grows with ``T`` (one ``[B, H, K, V]`` state per step): fine
for a reference and for short inputs, not for training on long ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["wkv6_reference"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype for inputs of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def wkv6_reference(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    *,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """WKV recurrence evaluated one token at a time (no argument checks; see ``ops.wkv6``).

    Shapes:
        r, k, w: `[B, T, H, K]` (``w`` may be a broadcast view, e.g. of a static `[H, K]`).
        v: `[B, T, H, V]`. u: `[H, K]`. state: `[B, H, K, V]`.
        Returns o `[B, T, H, V]` in ``r.dtype`` and the final state `[B, H, K, V]` in fp32
        (fp64 for fp64 inputs).
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    if state is None:
        s = r.new_zeros(B, H, K, V, dtype=acc)
    else:
        s = state.to(acc)
    uf = u.to(acc)
    # unbind, not r[:, t]: its backward is one stack instead of T full-size scatters.
    rs, ks, vs, ws = (x.to(acc).unbind(1) for x in (r, k, v, w))
    outs: list[Tensor | None] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        rt, kt, vt, wt = rs[t], ks[t], vs[t], ws[t]  # [B, H, K] (vt: [B, H, V])
        bonus = (rt * uf * kt).sum(-1, keepdim=True) * vt
        outs[t] = (rt.unsqueeze(-2) @ s).squeeze(-2) + bonus
        s = torch.exp(wt).unsqueeze(-1) * s + kt.unsqueeze(-1) * vt.unsqueeze(-2)
    o = torch.stack(outs, dim=1).to(r.dtype)  # type: ignore[arg-type]
    return o, s
