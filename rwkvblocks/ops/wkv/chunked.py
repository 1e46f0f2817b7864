"""Chunked WKV in plain PyTorch, with a hand-written backward.

The sequence is cut into chunks of ``L`` tokens (a power of two). Across chunks the state
carries the history; inside a chunk the token-to-token terms are evaluated by a binary split
tree whose decay factors are products of per-token decays in ``(0, 1]`` — no exponent is ever
positive, so strong decays (``w = -30`` per token and below) cannot overflow. The math and
the derivation of the backward pass are in ``README.md`` beside this file.

Work is done tile by tile (a few samples, all heads, a run of whole chunks, ~2^18 elements):
every temporary then stays in cache, which on a CPU matters as much as the arithmetic.
Memory: the forward keeps the inputs and one state per chunk (`[B, H, T/L, K, V]`, fp32);
the backward recomputes the rest tile by tile. Both are linear in ``T``. Packed sequences
(``cu_seqlens``) run one after another, their boundaries read on the host (no sync for CPU tensors).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import accumulation_dtype

__all__ = ["DEFAULT_CHUNK_SIZE", "chunked_backward", "chunked_forward", "entering_shape", "wkv6_chunked"]

DEFAULT_CHUNK_SIZE = 64
_TILE_ELEMENTS = 1 << 18  # target size of one tile: ~1 MiB in fp32


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` over leading batch dims. Batched GEMM of tiny matrices is slow on a CPU
    (a call per matrix), so the bottom levels of the split tree use broadcasting instead."""
    m, n, p = a.shape[-2], a.shape[-1], b.shape[-1]
    if n <= 2:  # sum of outer products
        out = a[..., 0:1] * b[..., 0:1, :]
        for j in range(1, n):
            out += a[..., j : j + 1] * b[..., j : j + 1, :]
        return out
    if m * p <= 4:  # a few dot products
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def _halves(x: Tensor, half: int) -> Tensor:
    """`[R, N, L, D]` -> view `[R*N*L/(2*half), 2, half, D]`: the two halves of each block."""
    return x.view(-1, 2, half, x.shape[-1])


class _Decays:
    """Decay factors of one chunked ``w``, built by products only (one ``exp`` per token).

    For an aligned block of ``n`` tokens and a token t in it, ``P_n(t)`` is the decay from the
    block start to just before t and ``S_n(t)`` the decay from just after t to the block end;
    ``D_n`` is the decay over the whole block. ``P_1 = S_1 = 1`` and ``D_1 = exp(w)``; doubling
    the block multiplies the second half of ``P`` (first half of ``S``) by the ``D`` of the
    other half. Every factor is a product of decays in ``(0, 1]``; underflow only hits terms
    that are negligible anyway.

    ``levels()`` walks the split tree bottom-up, yielding ``(half, P_half, S_half)``; once it
    is exhausted, ``lo = P_L``, ``hi = S_L`` and ``decay = D_L`` (`[R, N, 1, K]`).
    """

    def __init__(self, ec: Tensor):
        self.shape = ec.shape  # [R, N, L, K]
        self._d = ec  # exp(w)
        self.lo = torch.ones_like(ec)
        self.hi = torch.ones_like(ec)
        self.decay: Tensor | None = None

    def levels(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        R, N, chunk, K = self.shape
        d = self._d.view(-1, 1, K)  # one factor per block of size `half`
        half = 1
        while half < chunk:
            yield half, self.lo, self.hi
            lo, hi = _halves(self.lo, half), _halves(self.hi, half)
            dd = d.view(-1, 2, 1, K)
            lo[:, 1] *= dd[:, 0]
            hi[:, 0] *= dd[:, 1]
            d = dd[:, 0] * dd[:, 1]
            half *= 2
        self.decay = d.view(R, N, 1, K)


def _scan(start: Tensor, decay: Tensor, push: Tensor, backwards: bool) -> tuple[Tensor, Tensor]:
    """Sequential pass over chunks, ``S <- decay_n * S + push_n``.

    Shapes: start `[R, K, V]`, decay `[R, N, K, 1]`, push `[R, N, K, V]`. Returns the value
    *before* each chunk is applied `[R, N, K, V]` and the value after the last one.
    """
    n_chunks = push.shape[1]
    before = torch.empty_like(push)
    order = list(range(n_chunks - 1, -1, -1) if backwards else range(n_chunks))
    before[:, order[0]] = start
    for prev, n in zip(order, order[1:]):
        torch.addcmul(push[:, prev], decay[:, prev], before[:, prev], out=before[:, n])
    last = order[-1]
    return before, torch.addcmul(push[:, last], decay[:, last], before[:, last])


def _forward_tile(rc, kc, vc, ec, uf, s, reverse: bool):
    """One tile: rc, kc `[R, N, L, K]`, vc `[R, N, L, V]`, ec = exp(w) `[R, N, L, K]`,
    uf `[R, 1, K, 1]`, s `[R, K, V]`.

    Walks the same tree as ``_Decays`` but keeps ``r * P`` and ``k * S`` (forward time) in
    place of ``P`` and ``S``, which saves two products per level. ``rc`` and ``kc`` are
    consumed.
    """
    R, N, chunk, K = rc.shape
    o = ((rc * kc) @ uf) * vc  # bonus: the current token
    q, kk = rc, kc  # r*P (forward; r*S in reverse) and k*S (forward; k*P in reverse)
    qi, ki = (0, 1) if reverse else (1, 0)
    d = ec.view(-1, 1, K)
    half = 1
    while half < chunk:
        qh, kh = _halves(q, half), _halves(kk, half)
        p = _mm(qh[:, qi], kh[:, ki].transpose(-1, -2))  # [blocks, half, half]
        _halves(o, half)[:, qi] += _mm(p, _halves(vc, half)[:, ki])
        dd = d.view(-1, 2, 1, K)
        qh[:, qi] *= dd[:, ki]
        kh[:, ki] *= dd[:, qi]
        d = dd[:, 0] * dd[:, 1]
        half *= 2
    push = kk.transpose(-1, -2) @ vc  # [R, N, K, V]
    entering, s = _scan(s, d.view(R, N, K, 1), push, reverse)
    o += q @ entering
    return o, s, entering


def _backward_tile(rc, kc, vc, ec, doc, uf, entering, g, reverse: bool):
    """Gradients of one tile (``ec = exp(w)``); ``g`` `[R, K, V]` is the gradient of the state
    after the tile (in processing order). Returns dr, dk, dv, dw, du `[R, K]` and the gradient
    of the state before the tile."""
    d = _Decays(ec)
    dr = torch.zeros_like(rc)
    dk_nb = torch.zeros_like(kc)  # dk without the bonus term
    dv = torch.zeros_like(vc)
    qi, ki = (0, 1) if reverse else (1, 0)
    for half, lo, hi in d.levels():
        xq, xk = (hi, lo) if reverse else (lo, hi)
        xq, xk = _halves(xq, half)[:, qi], _halves(xk, half)[:, ki]
        q = _halves(rc, half)[:, qi] * xq
        kk = _halves(kc, half)[:, ki] * xk
        vk = _halves(vc, half)[:, ki]
        doq = _halves(doc, half)[:, qi]
        p = _mm(q, kk.transpose(-1, -2))
        dp = _mm(doq, vk.transpose(-1, -2))
        _halves(dv, half)[:, ki] += _mm(p.transpose(-1, -2), doq)
        _halves(dr, half)[:, qi] += _mm(dp, kk) * xq
        _halves(dk_nb, half)[:, ki] += _mm(dp.transpose(-1, -2), q) * xk
    er, ek = (d.hi, d.lo) if reverse else (d.lo, d.hi)
    decay = d.decay.transpose(-1, -2)

    # State gradient, scanned against the processing order.
    push = (rc * er).transpose(-1, -2) @ doc
    leaving, g = _scan(g, decay, push, not reverse)

    # Inter-chunk terms.
    dr.addcmul_(doc @ entering.transpose(-1, -2), er)
    dk_state = (vc @ leaving.transpose(-1, -2)) * ek
    dk_nb += dk_state
    dv += (kc * ek) @ leaving
    # Whole-chunk decay applied to the entering state, per key channel.
    rho = (leaving * entering).sum(-1).unsqueeze(-2) * d.decay  # [R, N, 1, K]

    # dw from the identity in README.md: with R = r*dr and C = k*dk (bonus excluded) and
    # Z = R - C, forward time gives dw = sum_{t>=x} Z - R_x + const, reverse time
    # dw = sum_{t<=x} Z - R_x + const. One prefix sum, in fp64 against cancellation.
    rr = rc * dr
    kd = kc * dk_nb
    cz = torch.cumsum(rr.to(torch.float64, copy=True).sub_(kd), dim=-2)
    const = ((kc * dk_state).sum(-2, keepdim=True) + rho).double()
    if reverse:
        dw = (cz - rr).add_(const)
    else:  # sum_{t>=x} Z = total - cz_x + Z_x, and Z_x - R_x = -C_x
        dw = (cz[..., -1:, :] - cz).sub_(kd).add_(const)

    # Bonus (current-token) terms.
    dc = (doc * vc).sum(-1, keepdim=True)
    rk = rc * kc
    du = (rk * dc).sum(dim=(1, 2))
    dv.addcmul_(rk @ uf.transpose(-1, -2), doc)
    dr.addcmul_(kc * uf, dc)
    dk_nb.addcmul_(rc * uf, dc)
    return dr, dk_nb, dv, dw, du, g


class _Tiling:
    """How a `[B, T, H, *]` problem is cut into tiles: a few samples, all heads, a run of
    whole chunks. Time-major tiles read contiguous memory and let one sequential state scan
    serve every head at once."""

    def __init__(self, B: int, T: int, H: int, K: int, chunk: int):
        self.B, self.T, self.chunk = B, T, chunk
        self.n_chunks = -(-T // chunk)
        padded = self.n_chunks * chunk
        per_chunk = H * chunk * K
        chunks_per_tile = max(1, _TILE_ELEMENTS // per_chunk)
        self.seg = min(padded, chunks_per_tile * chunk)
        self.samples = max(1, min(B, _TILE_ELEMENTS // (H * padded * K))) if self.seg == padded else 1

    def sample_groups(self) -> list[tuple[int, int]]:
        return [(b0, min(b0 + self.samples, self.B)) for b0 in range(0, self.B, self.samples)]

    def segments(self, backwards: bool) -> list[tuple[int, int]]:
        end = self.n_chunks * self.chunk
        spans = [(t0, min(t0 + self.seg, end)) for t0 in range(0, end, self.seg)]
        return spans[::-1] if backwards else spans

    def load(self, x: Tensor, b0: int, b1: int, t0: int, t1: int, dtype, exp: bool = False) -> Tensor:
        """``x[b0:b1, t0:t1]`` (zero past ``T``) as `[(b1-b0)*H, (t1-t0)/L, L, D]`; a fresh
        tensor that the caller may modify. ``exp=True`` returns ``exp`` of it instead."""
        part = x[b0:b1, t0 : min(t1, self.T)]
        if t1 > self.T:
            part = F.pad(part.to(dtype), (0, 0, 0, 0, 0, t1 - self.T))
        nb, _, H, D = part.shape
        out = torch.empty(nb, H, t1 - t0, D, dtype=dtype, device=x.device)
        if exp:
            torch.exp(part.transpose(1, 2), out=out)
        else:
            out.copy_(part.transpose(1, 2))
        return out.view(nb * H, (t1 - t0) // self.chunk, self.chunk, D)

    def store(self, dst: Tensor, tile: Tensor, b0: int, b1: int, t0: int, t1: int) -> None:
        """Write a `[(b1-b0)*H, N, L, D]` tile back into ``dst[b0:b1, t0:t1]`` (cut at ``T``)."""
        t1c = min(t1, self.T)
        H = dst.shape[2]
        flat = tile.view(b1 - b0, H, t1 - t0, tile.shape[-1])[:, :, : t1c - t0]
        dst[b0:b1, t0:t1c].copy_(flat.transpose(1, 2))


def _forward(r, k, v, w, u, s0, reverse: bool, chunk: int, keep_states: bool = True):
    """Returns o, the final state and (if ``keep_states``) the state entering every chunk."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    tiles = _Tiling(B, T, H, K, chunk)
    o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    s_final = torch.empty(B, H, K, V, dtype=acc, device=r.device)
    entering = torch.empty(B, H, tiles.n_chunks if keep_states else 0, K, V, dtype=acc, device=r.device)
    uf = u.to(acc).view(1, H, 1, 1, K)
    for b0, b1 in tiles.sample_groups():
        rows = (b1 - b0) * H
        if s0 is None:
            s = r.new_zeros(rows, K, V, dtype=acc)
        else:
            s = s0[b0:b1].reshape(rows, K, V).to(acc)
        ut = uf.expand(b1 - b0, H, 1, 1, K).reshape(rows, 1, 1, K)
        for t0, t1 in tiles.segments(reverse):
            rc, kc, vc = (tiles.load(x, b0, b1, t0, t1, acc) for x in (r, k, v))
            ec = tiles.load(w, b0, b1, t0, t1, acc, exp=True)
            ot, s, ent = _forward_tile(rc, kc, vc, ec, ut.transpose(-1, -2), s, reverse)
            tiles.store(o, ot, b0, b1, t0, t1)
            if keep_states:
                entering[b0:b1, :, t0 // chunk : t1 // chunk] = ent.view(b1 - b0, H, -1, K, V)
        s_final[b0:b1] = s.view(b1 - b0, H, K, V)
    return o, s_final, entering


def _backward(r, k, v, w, u, entering, do, ds_final, reverse: bool, chunk: int):
    """Gradients of ``_forward``; du comes back in fp64 (it sums over every token)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    tiles = _Tiling(B, T, H, K, chunk)
    dr, dk, dv = torch.empty_like(r), torch.empty_like(k), torch.empty_like(v)
    dw = torch.empty(w.shape, dtype=w.dtype, device=w.device)  # w may be a broadcast view
    du = torch.zeros(H, K, dtype=torch.float64, device=u.device)
    ds0 = torch.empty(B, H, K, V, dtype=acc, device=r.device)
    uf = u.to(acc).view(1, H, 1, 1, K)
    for b0, b1 in tiles.sample_groups():
        rows = (b1 - b0) * H
        if ds_final is None:
            g = r.new_zeros(rows, K, V, dtype=acc)
        else:
            g = ds_final[b0:b1].reshape(rows, K, V).to(acc)
        ut = uf.expand(b1 - b0, H, 1, 1, K).reshape(rows, 1, 1, K)
        for t0, t1 in tiles.segments(not reverse):
            rc, kc, vc, doc = (tiles.load(x, b0, b1, t0, t1, acc) for x in (r, k, v, do))
            ec = tiles.load(w, b0, b1, t0, t1, acc, exp=True)
            ent = entering[b0:b1, :, t0 // chunk : t1 // chunk].reshape(rows, -1, K, V)
            *tile_grads, du_t, g = _backward_tile(rc, kc, vc, ec, doc, ut, ent, g, reverse)
            for dst, gt in zip((dr, dk, dv, dw), tile_grads):
                tiles.store(dst, gt, b0, b1, t0, t1)
            du += du_t.double().view(b1 - b0, H, K).sum(0)
        ds0[b0:b1] = g.view(b1 - b0, H, K, V)
    return dr, dk, dv, dw, du, ds0


def entering_shape(
    B: int, T: int, H: int, K: int, V: int, chunk: int, num_seqs: int | None, keep_states: bool = True
) -> tuple[int, ...]:
    """Shape of the states ``chunked_forward`` keeps for its backward (sizes may be symbolic).

    `[B, H, ceil(T/L), K, V]` for B sequences of length T. Packed (``num_seqs`` N): `[T//L + N, H, K, V]`,
    sequence n's chunks from slot ``bos_n // L + n`` on, a bound that needs no sequence length. The
    chunk axis is empty when ``keep_states`` is false.
    """
    if num_seqs is None:
        return (B, H, -(-T // chunk) if keep_states else 0, K, V)
    return (T // chunk + num_seqs if keep_states else 0, H, K, V)


def chunked_forward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    *,
    reverse: bool,
    chunk: int,
    keep_states: bool,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunked WKV forward without autograd: o, the final states, and the states its backward needs.

    Shapes:
        As ``wkv6_chunked``; the third output has ``entering_shape(...)`` (fp32, fp64 for fp64 inputs).
        Packed sequences run one after another, their boundaries read on the host.
    """
    if cu_seqlens is None:
        return _forward(r, k, v, w, u, state, reverse, chunk, keep_states)
    _, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    bounds = cu_seqlens.tolist()
    N = len(bounds) - 1
    o = torch.empty(1, T, H, V, dtype=r.dtype, device=r.device)
    s_final = torch.empty(N, H, K, V, dtype=acc, device=r.device)
    entering = torch.empty(entering_shape(1, T, H, K, V, chunk, N, keep_states), dtype=acc, device=r.device)
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            s_final[n] = state[n] if state is not None else 0
            continue
        part = slice(bos, eos)
        o_n, f_n, ent = _forward(r[:, part], k[:, part], v[:, part], w[:, part], u, s_n, reverse, chunk, keep_states)
        o[:, part] = o_n
        s_final[n] = f_n[0]
        if keep_states:
            slot = bos // chunk + n
            entering[slot : slot + ent.shape[2]] = ent[0].transpose(0, 1)
    return o, s_final, entering


def chunked_backward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    entering: Tensor,
    do: Tensor,
    ds_final: Tensor | None,
    *,
    reverse: bool,
    chunk: int,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``chunked_forward`` from the states it kept (no autograd).

    Returns dr, dk, dv, dw (shaped like ``w``, a broadcast view included), du in ``u.dtype`` and the
    gradient of the initial states in fp32 (fp64 for fp64 inputs).
    """
    if cu_seqlens is None:
        dr, dk, dv, dw, du, ds0 = _backward(r, k, v, w, u, entering, do, ds_final, reverse, chunk)
        return dr, dk, dv, dw, du.to(u.dtype), ds0
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    acc = accumulation_dtype(r.dtype)
    bounds = cu_seqlens.tolist()
    N = len(bounds) - 1
    dr, dk, dv = torch.empty_like(r), torch.empty_like(k), torch.empty_like(v)
    dw = torch.empty(w.shape, dtype=w.dtype, device=w.device)
    du = torch.zeros(H, K, dtype=torch.float64, device=u.device)
    ds0 = torch.empty(N, H, K, V, dtype=acc, device=r.device)
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        g_n = ds_final[n : n + 1] if ds_final is not None else None
        if eos == bos:  # the final state is the initial state
            ds0[n] = ds_final[n] if ds_final is not None else 0
            continue
        part = slice(bos, eos)
        slot, n_chunks = bos // chunk + n, -(-(eos - bos) // chunk)
        ent = entering[slot : slot + n_chunks].transpose(0, 1).unsqueeze(0)  # [1, H, n_chunks, K, V]
        *grads, du_n, ds0_n = _backward(
            r[:, part], k[:, part], v[:, part], w[:, part], u, ent, do[:, part], g_n, reverse, chunk
        )
        for dst, g in zip((dr, dk, dv, dw), grads):
            dst[:, part] = g
        du += du_n
        ds0[n] = ds0_n[0]
    return dr, dk, dv, dw, du.to(u.dtype), ds0


class _WKVChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, s0, reverse, chunk, cu_seqlens):
        keep = any(ctx.needs_input_grad)
        o, s_final, entering = chunked_forward(
            r, k, v, w, u, s0, reverse=reverse, chunk=chunk, keep_states=keep, cu_seqlens=cu_seqlens
        )
        ctx.save_for_backward(r, k, v, w, u, entering, cu_seqlens)
        ctx.reverse, ctx.chunk = reverse, chunk
        ctx.s0_dtype = None if s0 is None else s0.dtype
        return o, s_final

    @staticmethod
    def backward(ctx, do, ds_final):
        r, k, v, w, u, entering, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros(r.shape[:-1] + v.shape[-1:], dtype=r.dtype, device=r.device)
        dr, dk, dv, dw, du, ds0 = chunked_backward(
            r, k, v, w, u, entering, do, ds_final, reverse=ctx.reverse, chunk=ctx.chunk, cu_seqlens=cu_seqlens
        )
        ds0 = ds0.to(ctx.s0_dtype) if ctx.s0_dtype is not None else None
        return dr, dk, dv, dw, du, ds0, None, None, None


def wkv6_chunked(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    *,
    reverse: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked WKV with a linear-memory, hand-written backward (no argument checks).

    Use ``rwkvblocks.ops.wkv6`` for the checked, dispatched entry point (a registered op that runs
    ``chunked_forward`` / ``chunked_backward`` when it picks this backend).

    Shapes:
        r, k, w: `[B, T, H, K]` (``w`` may be a broadcast view); v: `[B, T, H, V]`;
        u: `[H, K]`; state: `[B, H, K, V]`. Returns o `[B, T, H, V]` in ``r.dtype`` and the
        final state `[B, H, K, V]` in fp32 (fp64 for fp64 inputs). ``chunk_size`` must be
        a power of two. With ``cu_seqlens`` (`[N+1]`, ``B = 1``) the N packed sequences run
        one after another, each from its own state: state and final state are `[N, H, K, V]`.
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    return _WKVChunked.apply(r, k, v, w, u, state, reverse, chunk_size, cu_seqlens)
