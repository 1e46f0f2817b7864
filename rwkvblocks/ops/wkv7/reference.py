"""Step-by-step RWKV-7 WKV recurrence: the oracle, and the backend that always accepts.

The math is in ``README.md`` beside this file. Gradients come from autograd over the time loop,
so the tape grows with ``T`` (a few `[B, H, V, K]` tensors per step): fine for a reference and
for short inputs, not for training on long ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["accumulation_dtype", "per_sequence", "wkv7_reference"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype for inputs of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sequence(
    impl: Callable[..., tuple[Tensor, Tensor]],
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Run ``impl`` on each packed sequence in turn, each from its own initial state.

    Shapes:
        r, w, k, a, b: `[1, T, H, K]`; v: `[1, T, H, V]`; state: `[N, H, V, K]` or ``None``;
        cu_seqlens: `[N+1]` boundaries from 0 to T. Returns o `[1, T, H, V]` and the final
        states `[N, H, V, K]` (an empty sequence passes its initial state through).
    """
    bounds = cu_seqlens.tolist()
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    acc = accumulation_dtype(r.dtype)
    outs, finals = [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            finals.append(s_n.to(acc) if s_n is not None else r.new_zeros(1, H, V, K, dtype=acc))
            continue
        part = slice(bos, eos)
        o_n, s_n = impl(r[:, part], w[:, part], k[:, part], v[:, part], a[:, part], b[:, part], s_n, **kwargs)
        outs.append(o_n)
        finals.append(s_n)
    o = torch.cat(outs, dim=1) if outs else v.new_empty(v.shape)
    return o, torch.cat(finals, dim=0)


def wkv7_reference(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    *,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-7 recurrence evaluated one token at a time (no argument checks; see ``ops.wkv7``).

    Per head ``S_t = S_{t-1} (diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T`` and ``o_t = S_t r_t``.

    Shapes:
        r, w, k, a, b: `[B, T, H, K]`; v: `[B, T, H, V]`; state: `[B, H, V, K]` (value index first),
        or `[N, H, V, K]` when ``cu_seqlens`` (`[N+1]`, ``B = 1``) packs N sequences, each run from its
        own state. Returns o `[B, T, H, V]` in ``r.dtype`` and the final state `[B, H, V, K]`
        (`[N, H, V, K]` when packed) in fp32 (fp64 for fp64 inputs).
    """
    if cu_seqlens is not None:
        return per_sequence(wkv7_reference, r, w, k, v, a, b, state, cu_seqlens)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    s = r.new_zeros(B, H, V, K, dtype=acc) if state is None else state.to(acc)
    # unbind, not r[:, t]: its backward is one stack instead of T full-size scatters.
    rs, ks, vs, as_, bs = (x.to(acc).unbind(1) for x in (r, k, v, a, b))
    ds = torch.exp(w.to(acc)).unbind(1)
    outs = []
    for t in range(T):
        sa = s @ as_[t].unsqueeze(-1)  # [B, H, V, 1]
        s = s * ds[t].unsqueeze(-2) + sa * bs[t].unsqueeze(-2) + vs[t].unsqueeze(-1) * ks[t].unsqueeze(-2)
        outs.append((s @ rs[t].unsqueeze(-1)).squeeze(-1))
    o = torch.stack(outs, dim=1).to(r.dtype) if outs else v.new_empty(v.shape)
    return o, s
