"""An independent fp64 oracle for the WKV recurrence (DESIGN.md §3), written for the tests.

It shares no code with ``rwkvblocks``: plain Python loops over time and heads, explicit
einsums, the state kept per (batch, head) as a `[K, V]` matrix, and time reversal done by
walking the index backwards. Gradients come from autograd over this loop in fp64.
"""

from __future__ import annotations

import itertools

import torch


def wkv_loop(r, k, v, w, u, state=None, reverse=False):
    """fp64 step loop. r, k, w `[B, T, H, K]` (w may be `[H, K]`), v `[B, T, H, V]`, u `[H, K]`,
    state `[B, H, K, V]` or None. Returns (o `[B, T, H, V]`, final state), both fp64."""
    r, k, v, w, u = (x.double() for x in (r, k, v, w, u))
    B, T, H, K = r.shape
    V = v.shape[-1]
    if w.dim() == 2:
        w = w.expand(B, T, H, K)
    outs = []
    finals = []
    for b in range(B):
        per_head_o = []
        per_head_s = []
        for h in range(H):
            s = state[b, h].double() if state is not None else torch.zeros(K, V, dtype=torch.float64)
            o_bh = [None] * T
            times = range(T - 1, -1, -1) if reverse else range(T)
            for t in times:
                rt, kt, vt, wt = r[b, t, h], k[b, t, h], v[b, t, h], w[b, t, h]
                kv = torch.outer(kt, vt)  # [K, V]
                o_bh[t] = torch.einsum("i,ij->j", rt, s + u[h].unsqueeze(1) * kv)
                s = torch.exp(wt).unsqueeze(1) * s + kv
            per_head_o.append(torch.stack(o_bh) if T else torch.zeros(0, V, dtype=torch.float64))
            per_head_s.append(s)
        outs.append(torch.stack(per_head_o, dim=1))  # [T, H, V]
        finals.append(torch.stack(per_head_s))  # [H, K, V]
    return torch.stack(outs), torch.stack(finals)


def make_case(B, T, H, K, *, strong=False, with_state=False, seed=0, V=None):
    """Random fp64 inputs. ``strong`` draws log-decays uniformly in [-30, 0]; otherwise from
    ``-exp(N(-1, 1))`` (RWKV-6-like)."""
    g = torch.Generator().manual_seed(seed)
    V = V or K
    f64 = torch.float64
    r = torch.randn(B, T, H, K, generator=g, dtype=f64) * 0.5
    k = torch.randn(B, T, H, K, generator=g, dtype=f64) * 0.5
    v = torch.randn(B, T, H, V, generator=g, dtype=f64)
    if strong:
        w = -30.0 * torch.rand(B, T, H, K, generator=g, dtype=f64)
    else:
        w = -torch.exp(torch.randn(B, T, H, K, generator=g, dtype=f64) - 1.0)
    u = torch.randn(H, K, generator=g, dtype=f64) * 0.5
    s0 = torch.randn(B, H, K, V, generator=g, dtype=f64) if with_state else None
    return r, k, v, w, u, s0


def rel_err(x, ref):
    """Relative RMS error ||x - ref|| / ||ref|| in fp64."""
    ref = ref.double()
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def wkv_loop_packed(r, k, v, w, u, state, cu_seqlens, reverse=False):
    """``wkv_loop`` over packed sequences: r, k, v, w `[1, T, H, *]`, boundaries ``cu_seqlens``
    (a list or tensor `[N+1]`), state `[N, H, K, V]` or None. Returns o `[1, T, H, V]` and the
    final states `[N, H, K, V]` (fp64); each sequence starts from its own state."""
    bounds = [int(b) for b in cu_seqlens]
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    outs, finals = [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            finals.append(s_n.double() if s_n is not None else torch.zeros(1, H, K, V, dtype=torch.float64))
            continue
        o_n, f_n = wkv_loop(r[:, bos:eos], k[:, bos:eos], v[:, bos:eos], w[:, bos:eos], u, s_n, reverse)
        outs.append(o_n)
        finals.append(f_n)
    return torch.cat(outs, dim=1), torch.cat(finals)


def make_packed_case(lengths, H, K, *, strong=False, with_state=False, seed=0):
    """Random fp64 packed inputs (``make_case`` with B = 1) and the boundaries as an int32 tensor."""
    T = sum(lengths)
    r, k, v, w, u, _ = make_case(1, T, H, K, strong=strong, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    N = len(lengths)
    s0 = torch.randn(N, H, K, K, generator=g, dtype=torch.float64) if with_state else None
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
    return r, k, v, w, u, s0, cu
