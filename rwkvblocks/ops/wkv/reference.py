"""Step-by-step WKV recurrence: the oracle, and the backend that always accepts.

The math is in ``README.md`` beside this file. Gradients come from autograd over the
time loop, so the tape grows with ``T`` (one ``[B, H, K, V]`` state per step): fine
for a reference and for short inputs, not for training on long ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["per_sequence", "wkv6_reference"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype for inputs of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sequence(
    impl: Callable[..., tuple[Tensor, Tensor]],
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Run ``impl`` on each packed sequence in turn, each from its own initial state.

    Shapes:
        r, k, w: `[1, T, H, K]`; v: `[1, T, H, V]`; state: `[N, H, K, V]` or ``None``;
        cu_seqlens: `[N+1]` boundaries from 0 to T. Returns o `[1, T, H, V]` and the final
        states `[N, H, K, V]` (an empty sequence passes its initial state through).
    """
    bounds = cu_seqlens.tolist()
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    acc = accumulation_dtype(r.dtype)
    outs, finals = [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            finals.append(s_n.to(acc) if s_n is not None else r.new_zeros(1, H, K, V, dtype=acc))
            continue
        part = slice(bos, eos)
        o_n, s_n = impl(r[:, part], k[:, part], v[:, part], w[:, part], u, s_n, **kwargs)
        outs.append(o_n)
        finals.append(s_n)
    return torch.cat(outs, dim=1), torch.cat(finals, dim=0)


def wkv6_reference(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    *,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """WKV recurrence evaluated one token at a time (no argument checks; see ``ops.wkv6``).

    Shapes:
        r, k, w: `[B, T, H, K]` (``w`` may be a broadcast view, e.g. of a static `[H, K]`).
        v: `[B, T, H, V]`. u: `[H, K]`. state: `[B, H, K, V]`, or `[N, H, K, V]` when
        ``cu_seqlens`` (`[N+1]`, ``B = 1``) packs N sequences, each run from its own state.
        Returns o `[B, T, H, V]` in ``r.dtype`` and the final state `[B, H, K, V]`
        (`[N, H, K, V]` when packed) in fp32 (fp64 for fp64 inputs).
    """
    if cu_seqlens is not None:
        return per_sequence(wkv6_reference, r, k, v, w, u, state, cu_seqlens, reverse=reverse)
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
