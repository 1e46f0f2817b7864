"""An independent fp64 oracle for the RWKV-7 WKV recurrence (DESIGN.md §15), written for the tests.

It shares no code with ``rwkvblocks``: plain Python loops over batch, heads and time, the state kept per
(batch, head) in fla's transposed `[K, V]` layout (``S^T_t = (diag(e^{w_t}) + b_t a_t^T) S^T_{t-1} + k_t v_t^T``,
``o_t = (S^T_t)^T r_t``) and transposed back to ours (`[V, K]`) only at the end. Gradients come from autograd
over this loop in fp64. Inputs are drawn the way RWKV-7 blocks make them (``a = -kk``, ``b = kk * gate``,
``kk`` L2-normalised per head), so the transition is a contraction.
"""

from __future__ import annotations

import itertools
import math

import torch

W_MIN = -math.exp(-0.5)  # RWKV-7's log-decay -e^{-1/2} sigmoid(z) lies in (W_MIN, 0)


def wkv7_loop(r, w, k, v, a, b, state=None):
    """fp64 step loop. r, w, k, a, b `[B, T, H, K]`, v `[B, T, H, V]`, state `[B, H, V, K]` or None.
    Returns (o `[B, T, H, V]`, final state `[B, H, V, K]`), both fp64."""
    r, w, k, v, a, b = (x.double() for x in (r, w, k, v, a, b))
    B, T, H, K = r.shape
    V = v.shape[-1]
    outs, finals = [], []
    for n in range(B):
        per_head_o, per_head_s = [], []
        for h in range(H):
            st = state[n, h].double().T if state is not None else torch.zeros(K, V, dtype=torch.float64)
            o_nh = []
            for t in range(T):
                transition = torch.diag(torch.exp(w[n, t, h])) + torch.outer(b[n, t, h], a[n, t, h])  # [K, K]
                st = transition @ st + torch.outer(k[n, t, h], v[n, t, h])
                o_nh.append(torch.einsum("j,ji->i", r[n, t, h], st))
            per_head_o.append(torch.stack(o_nh) if T else torch.zeros(0, V, dtype=torch.float64))
            per_head_s.append(st.T)
        outs.append(torch.stack(per_head_o, dim=1))  # [T, H, V]
        finals.append(torch.stack(per_head_s))  # [H, V, K]
    return torch.stack(outs), torch.stack(finals)


def wkv7_loop_packed(r, w, k, v, a, b, state, cu_seqlens):
    """``wkv7_loop`` over packed sequences (B = 1, boundaries ``cu_seqlens``, a list or tensor `[N+1]`),
    state `[N, H, V, K]` or None; each sequence starts from its own state."""
    bounds = [int(x) for x in cu_seqlens]
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    outs, finals = [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            finals.append(s_n.double() if s_n is not None else torch.zeros(1, H, V, K, dtype=torch.float64))
            continue
        part = slice(bos, eos)
        o_n, f_n = wkv7_loop(*(x[:, part] for x in (r, w, k, v, a, b)), s_n)
        outs.append(o_n)
        finals.append(f_n)
    return torch.cat(outs, dim=1), torch.cat(finals)


def make_case7(B, T, H, K, *, with_state=False, seed=0, V=None, w_min=W_MIN):
    """Random fp64 RWKV-7-like inputs ``(r, w, k, v, a, b, state)``.

    The log-decay is ``w_min * sigmoid(z)`` with a wide ``z ~ N(0, 3^2)``, so it covers ``(w_min, 0)``
    from decays of almost 1 to the strongest; ``w_min`` below RWKV-7's ``-0.6065`` goes beyond its range.
    """
    g = torch.Generator().manual_seed(seed)
    V = V or K
    f64 = torch.float64
    r = torch.randn(B, T, H, K, generator=g, dtype=f64) * 0.5
    w = w_min * torch.sigmoid(3.0 * torch.randn(B, T, H, K, generator=g, dtype=f64))
    k = torch.randn(B, T, H, K, generator=g, dtype=f64) * 0.5
    v = torch.randn(B, T, H, V, generator=g, dtype=f64)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=f64), dim=-1)
    gate = torch.sigmoid(torch.randn(B, T, H, K, generator=g, dtype=f64))
    a, b = -kk, kk * gate
    s0 = torch.randn(B, H, V, K, generator=g, dtype=f64) if with_state else None
    return r, w, k, v, a, b, s0


def make_packed_case7(lengths, H, K, *, with_state=False, seed=0, w_min=W_MIN):
    """``make_case7`` with B = 1 over ``sum(lengths)`` tokens, N initial states and int32 boundaries."""
    T = sum(lengths)
    *inputs, _ = make_case7(1, T, H, K, seed=seed, w_min=w_min)
    g = torch.Generator().manual_seed(seed + 7)
    s0 = torch.randn(len(lengths), H, K, K, generator=g, dtype=torch.float64) if with_state else None
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return (*inputs, s0, cu)


def rel_err(x, ref):
    """Relative RMS error ||x - ref|| / ||ref|| in fp64; the absolute error ||x|| where ``ref`` is exactly zero
    (e.g. the decay gradients of one token from a zero state)."""
    ref = ref.double()
    scale = ref.norm()
    diff = (x.double() - ref).norm()
    return (diff / scale).item() if scale > 0 else diff.item()
