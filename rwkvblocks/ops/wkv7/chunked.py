"""Chunked RWKV-7 WKV in plain PyTorch, with a hand-written backward.

The sequence is cut into chunks of ``L = 16`` tokens. Inside a chunk the product of the transitions
``diag(e^{w_t}) + a_t b_t^T`` is handled in the WY / UT form of the DPLR delta rule: the rank-one
corrections ``z_t = S_{t-1} a_t`` of the chunk's tokens solve one unit lower-triangular `[L, L]` system,
after which the chunk's outputs, the state it leaves and its state-to-state map are matrix products.
Across chunks one sequential pass carries the state (``S <- S M + P`` with ``M`` the chunk's `[K, K]` map,
applied in its low-rank form when that is cheaper).
The math, the numerical range and the derivation of the backward are in ``README.md`` beside this file.

Work is done tile by tile (all heads of a few samples, a run of whole chunks, ~2^19 elements), laid out
chunk-major so that every step of the sequential pass reads contiguous memory. Memory: the forward keeps
the inputs and one state per chunk (`[T/L, B, H, V, K]`, fp32); the backward recomputes the rest tile by
tile; both are linear in ``T``.
Packed sequences (``cu_seqlens``) run one after another, their boundaries read on the host (no sync for
CPU tensors).
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import accumulation_dtype

__all__ = ["DEFAULT_CHUNK_SIZE", "chunked_backward", "chunked_forward", "entering_shape", "wkv7_chunked"]

DEFAULT_CHUNK_SIZE = 16
_TILE_ELEMENTS = 1 << 19  # target size of one input tile: ~2 MiB in fp32


class _Terms:
    """The intra-chunk quantities of one tile, shared by the forward and the backward.

    Inputs are `[N, R, L, K]` (``v``: `[N, R, L, V]`) in the accumulation dtype, N = chunks, R = rows
    (sample, head): chunk-major, so that each step of the sequential scan reads contiguous memory. With ``g``
    the inclusive and ``gx`` the exclusive cumulative sum of ``w`` over the chunk, and ``c`` the exclusive sum
    at the chunk's midpoint (the reference of the pair terms):

    - pair factors ``a~ = a e^{gx-c}``, ``r~ = r e^{g-c}``, ``b~ = b e^{c-g}``, ``k~ = k e^{c-g}``, stacked as
      ``left = [a~; r~]`` and ``right = [b~; k~]`` `[2L, K]`;
    - state factors ``a^ = a e^{gx}``, ``r^ = r e^{g}`` (from the chunk start), ``b_ = b e^{g_L-g}``,
      ``k_ = k e^{g_L-g}`` (to the chunk end) and ``gamma = e^{g_L}``: exponents ``<= 0``;
    - ``full = left right^T`` `[2L, 2L]` masked to its blocks ``[[A_ab, A_ak], [A_rb, A_rk]]`` (top: strictly
      lower, bottom: lower triangular);
    - ``Tinv = (I - A_ab)^{-1}``, ``W = Tinv a^``, ``U = Tinv A_ak v``: the corrections are ``Z = W S^T + U``.
    """

    def __init__(self, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, keep_factors: bool):
        """``keep_factors``: keep the exponential factors (``e_in``, ``e_r``, ``e_out``, ``e_gx``, ``e_g``,
        ``e_end``), which the backward needs; without them the forward builds everything in place (on a CPU
        every fresh temporary costs page faults, about as much as the arithmetic)."""
        N, R, L, K = r.shape
        self.r, self.w, self.k, self.v, self.a, self.b = r, w, k, v, a, b
        g = _cumsum(w)
        gx = g - w
        c = gx[..., L // 2 : L // 2 + 1, :]
        gl = g[..., -1:, :]
        self.left = torch.empty(N, R, 2 * L, K, dtype=r.dtype, device=r.device)
        self.right = torch.empty_like(self.left)
        la, lr, rb, rk = self.left[..., :L, :], self.left[..., L:, :], self.right[..., :L, :], self.right[..., L:, :]
        torch.sub(gx, c, out=la).exp_()
        torch.sub(g, c, out=lr).exp_()
        torch.sub(c, g, out=rb).exp_()
        if keep_factors:
            self.e_in, self.e_r, self.e_out = la.clone(), lr.clone(), rb.clone()
        torch.mul(rb, k, out=rk)
        rb.mul_(b)
        la.mul_(a)
        lr.mul_(r)
        self.mask = _block_mask(L, r.device)
        self.full = (self.left @ self.right.transpose(-1, -2)).masked_fill_(~self.mask, 0)
        self.A_ab, self.A_ak = self.full[..., :L, :L], self.full[..., :L, L:]
        self.bottom = self.full[..., L:, :]  # [A_rb, A_rk]
        eye = torch.eye(L, dtype=r.dtype, device=r.device)
        self.Tinv = torch.linalg.solve_triangular(
            eye - self.A_ab, eye.expand_as(self.A_ab), upper=False, unitriangular=True
        )
        self.gamma = torch.exp(gl)  # [N, R, 1, K]
        e_end = torch.sub(gl, g).exp_()
        self.b_bar = b * e_end
        if keep_factors:
            self.e_end, self.e_gx, self.e_g = e_end.clone(), torch.exp(gx), torch.exp(g)
            self.a_h, self.r_h = a * self.e_gx, r * self.e_g
        else:  # gx and g (c and gl are views of them) are no longer needed
            self.a_h, self.r_h = gx.exp_().mul_(a), g.exp_().mul_(r)
        self.k_bar = e_end.mul_(k)
        self.W = self.Tinv @ self.a_h
        self.U = self.Tinv @ (self.A_ak @ v)

    def low_rank(self) -> bool:
        """Whether the chunk-to-chunk map ``M = diag(gamma) + W^T b_`` is applied in its low-rank form
        (``2 L K V`` per chunk in the sequential scan) rather than built as a `[K, K]` matrix (``K^2 V``)."""
        return 2 * self.r.shape[-2] < self.r.shape[-1]

    def transition(self) -> Tensor:
        """``M = diag(gamma) + W^T b_`` `[N, R, K, K]`: ``S_out = S M + U^T b_ + v^T k_``."""
        m = self.W.transpose(-1, -2) @ self.b_bar
        m.diagonal(dim1=-2, dim2=-1).add_(self.gamma.squeeze(-2))
        return m


def _cumsum(w: Tensor) -> Tensor:
    """Inclusive cumulative sum over the chunk axis (-2): a short loop of row additions, faster on a CPU than
    ``torch.cumsum`` along a strided axis."""
    g = w.clone()
    for i in range(1, w.shape[-2]):
        g[..., i, :] += g[..., i - 1, :]
    return g


@functools.cache
def _block_mask(L: int, device: torch.device) -> Tensor:
    lower = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    strict = lower.tril(-1)
    return torch.cat([torch.cat([strict, strict], 1), torch.cat([lower, lower], 1)], 0)


def _forward_tile(r, w, k, v, a, b, s):
    """One tile (`[N, R, L, *]` inputs, entering state ``s`` `[R, V, K]`): o, the state after the tile and the
    state entering every chunk `[N, R, V, K]`. Every step of the sequential scan works in place on contiguous
    memory (a fresh tensor per step would cost a page fault per page on a CPU)."""
    t = _Terms(r, w, k, v, a, b, keep_factors=False)
    N, R, L, K = r.shape
    states = torch.empty(N + 1, R, v.shape[-1], K, dtype=r.dtype, device=r.device)
    states[0] = s
    z = t.U.clone()  # becomes Z = W S^T + U, z_t = S_{t-1} a_t
    if t.low_rank():  # S <- S diag(gamma) + Z^T b_ + v^T k_
        for n in range(N):
            s = states[n]
            z[n].baddbmm_(t.W[n], s.transpose(-1, -2))
            nxt = torch.mul(s, t.gamma[n], out=states[n + 1])
            nxt.baddbmm_(z[n].transpose(-1, -2), t.b_bar[n]).baddbmm_(v[n].transpose(-1, -2), t.k_bar[n])
    else:  # S <- S M + U^T b_ + v^T k_
        trans = t.transition()
        push = t.U.transpose(-1, -2) @ t.b_bar
        push += v.transpose(-1, -2) @ t.k_bar  # [N, R, V, K]
        for n in range(N):
            torch.baddbmm(push[n], states[n], trans[n], out=states[n + 1])
        z += t.W @ states[:N].transpose(-1, -2)
    entering = states[:N]
    o = t.bottom[..., :L] @ z
    o += t.bottom[..., L:] @ v
    o += t.r_h @ entering.transpose(-1, -2)
    return o, states[N], entering


def _backward_tile(r, w, k, v, a, b, do, entering, ds):
    """Gradients of one tile (`[N, R, L, *]` inputs, ``entering`` `[N, R, V, K]`); ``ds`` `[R, V, K]` is the
    gradient of the state leaving the tile. Returns dr, dw, dk, dv, da, db (`[N, R, L, *]`) and the gradient
    of the state entering the tile."""
    t = _Terms(r, w, k, v, a, b, keep_factors=True)
    N, R, L, _ = r.shape
    A_rb = t.bottom[..., :L]
    s0 = entering
    # The gradient of the state leaving each chunk, scanned against time:
    # dS_in = dS_out diag(gamma) + dO^T r^ + dZ^T W, with dZ = A_rb^T dO + b_ dS_out^T.
    grads = torch.empty(N + 1, *ds.shape, dtype=r.dtype, device=r.device)
    grads[N] = ds
    push = do.transpose(-1, -2) @ t.r_h  # [N, R, V, K]
    if t.low_rank():
        dz_t = do.transpose(-1, -2) @ A_rb  # [N, R, V, L], completed in the scan to dZ^T
        for n in range(N - 1, -1, -1):
            g = grads[n + 1]
            dz_t[n].baddbmm_(g, t.b_bar[n].transpose(-1, -2))
            torch.addcmul(push[n], g, t.gamma[n], out=grads[n]).baddbmm_(dz_t[n], t.W[n])
        dz = dz_t.transpose(-1, -2)
    else:
        trans_t = t.transition().transpose(-1, -2)
        push += (do.transpose(-1, -2) @ A_rb) @ t.W
        for n in range(N - 1, -1, -1):
            torch.baddbmm(push[n], grads[n + 1], trans_t[n], out=grads[n])
        dz = A_rb.transpose(-1, -2) @ do
        dz += t.b_bar @ grads[1:].transpose(-1, -2)
    leaving = grads[1:]
    lamdo = torch.cat([t.Tinv.transpose(-1, -2) @ dz, do], dim=-2)  # [lam; dO] [N, R, 2L, V]
    z = t.W @ s0.transpose(-1, -2)
    z += t.U  # z_t = S_{t-1} a_t
    zv = torch.cat([z, v], dim=-2)
    d_full = (lamdo @ zv.transpose(-1, -2)).masked_fill_(~t.mask, 0)  # [[dA_ab, dA_ak], [dA_rb, dA_rk]]
    d_left = d_full @ t.right  # [da~; dr~]
    d_right = d_full.transpose(-1, -2) @ t.left  # [db~; dk~]
    dv = t.full[..., L:].transpose(-1, -2) @ lamdo
    dv += t.k_bar @ leaving.transpose(-1, -2)
    d_state_in = lamdo @ s0  # [da^; dr^]
    d_bbar, d_kbar = z @ leaving, v @ leaving
    d_gamma = (s0 * leaving).sum(-2, keepdim=True)  # [N, R, 1, K]

    d_ah, d_rh = d_state_in[..., :L, :], d_state_in[..., L:, :]
    dr = d_left[..., L:, :] * t.e_r + d_rh * t.e_g
    da = d_left[..., :L, :] * t.e_in + d_ah * t.e_gx
    db = d_right[..., :L, :] * t.e_out + d_bbar * t.e_end
    dk = d_right[..., L:, :] * t.e_out + d_kbar * t.e_end

    # Log-decay: every factor x = y e^{phi} gives d phi = dx * x; then g = cumsum(w) (inclusive),
    # gx = g - w (exclusive) and g_L = sum(w). The midpoint reference c cancels pair by pair.
    pair_left = d_left * t.left
    pair_right = d_right * t.right
    end_terms = d_bbar * t.b_bar + d_kbar * t.k_bar
    dg = pair_left[..., L:, :] + d_rh * t.r_h
    dg -= pair_right[..., :L, :] + pair_right[..., L:, :]
    dg -= end_terms
    dgx = pair_left[..., :L, :] + d_ah * t.a_h
    dgl = end_terms.sum(-2, keepdim=True) + d_gamma * t.gamma
    total = dg + dgx
    suffix = total.flip(-2).cumsum(-2).flip(-2)  # sum_{t >= s}
    dw = suffix - dgx + dgl
    return dr, dw, dk, dv, da, db, grads[0]


class _Tiling:
    """How a `[B, T, H, *]` problem is cut into tiles: a few samples, all heads, a run of whole chunks, stored
    chunk-major (`[chunks, samples * heads, L, D]`) so that one sequential state scan serves every head at
    once and reads contiguous memory at each step."""

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

    def load(self, x: Tensor, b0: int, b1: int, t0: int, t1: int, dtype) -> Tensor:
        """``x[b0:b1, t0:t1]`` (zero past ``T``: no decay, no input) as a fresh `[(t1-t0)/L, (b1-b0)*H, L, D]`."""
        part = x[b0:b1, t0 : min(t1, self.T)]
        if t1 > self.T:
            part = F.pad(part.to(dtype), (0, 0, 0, 0, 0, t1 - self.T))
        nb, _, H, D = part.shape
        n = (t1 - t0) // self.chunk
        out = torch.empty(n, nb, H, self.chunk, D, dtype=dtype, device=x.device)
        out.copy_(part.view(nb, n, self.chunk, H, D).permute(1, 0, 3, 2, 4))
        return out.view(n, nb * H, self.chunk, D)

    def store(self, dst: Tensor, tile: Tensor, b0: int, b1: int, t0: int, t1: int) -> None:
        """Write a `[N, (b1-b0)*H, L, D]` tile back into ``dst[b0:b1, t0:t1]`` (cut at ``T``)."""
        t1c = min(t1, self.T)
        H, D = dst.shape[2], tile.shape[-1]
        flat = tile.view(-1, b1 - b0, H, self.chunk, D).permute(1, 0, 3, 2, 4).reshape(b1 - b0, t1 - t0, H, D)
        dst[b0:b1, t0:t1c].copy_(flat[:, : t1c - t0])


def _forward(r, w, k, v, a, b, s0, chunk: int, keep_states: bool = True):
    """Returns o, the final state and (if ``keep_states``) the state entering every chunk."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    tiles = _Tiling(B, T, H, K, chunk)
    o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    s_final = torch.empty(B, H, V, K, dtype=acc, device=r.device)
    entering = torch.empty(tiles.n_chunks if keep_states else 0, B, H, V, K, dtype=acc, device=r.device)
    for b0, b1 in tiles.sample_groups():
        rows = (b1 - b0) * H
        s = r.new_zeros(rows, V, K, dtype=acc) if s0 is None else s0[b0:b1].reshape(rows, V, K).to(acc)
        for t0, t1 in tiles.segments(False):
            inputs = (tiles.load(x, b0, b1, t0, t1, acc) for x in (r, w, k, v, a, b))
            ot, s, ent = _forward_tile(*inputs, s)
            tiles.store(o, ot, b0, b1, t0, t1)
            if keep_states:
                entering[t0 // chunk : t1 // chunk, b0:b1] = ent.view(-1, b1 - b0, H, V, K)
        s_final[b0:b1] = s.view(b1 - b0, H, V, K)
    return o, s_final, entering


def _backward(r, w, k, v, a, b, entering, do, ds_final, chunk: int):
    """Gradients of ``_forward`` (dr, dw, dk, dv, da, db in their inputs' dtypes, dstate in fp32/fp64)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    tiles = _Tiling(B, T, H, K, chunk)
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (r, w, k, v, a, b)]
    ds0 = torch.empty(B, H, V, K, dtype=acc, device=r.device)
    for b0, b1 in tiles.sample_groups():
        rows = (b1 - b0) * H
        g = r.new_zeros(rows, V, K, dtype=acc) if ds_final is None else ds_final[b0:b1].reshape(rows, V, K).to(acc)
        for t0, t1 in tiles.segments(True):
            inputs = [tiles.load(x, b0, b1, t0, t1, acc) for x in (r, w, k, v, a, b, do)]
            ent = entering[t0 // chunk : t1 // chunk, b0:b1].reshape(-1, rows, V, K)
            *tile_grads, g = _backward_tile(*inputs, ent, g)
            for dst, gt in zip(grads, tile_grads, strict=True):
                tiles.store(dst, gt, b0, b1, t0, t1)
        ds0[b0:b1] = g.view(b1 - b0, H, V, K)
    return (*grads, ds0)


def entering_shape(
    B: int, T: int, H: int, K: int, V: int, chunk: int, num_seqs: int | None, keep_states: bool = True
) -> tuple[int, ...]:
    """Shape of the states ``chunked_forward`` keeps for its backward (sizes may be symbolic).

    `[ceil(T/L), B, H, V, K]` (chunk-major) for B sequences of length T. Packed (``num_seqs`` N): `[T//L + N, H, V, K]`,
    sequence n's chunks from slot ``bos_n // L + n`` on, a bound that needs no sequence length. The chunk
    axis is empty when ``keep_states`` is false.
    """
    if num_seqs is None:
        return (-(-T // chunk) if keep_states else 0, B, H, V, K)
    return (T // chunk + num_seqs if keep_states else 0, H, V, K)


def chunked_forward(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    *,
    chunk: int = DEFAULT_CHUNK_SIZE,
    keep_states: bool,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunked WKV7 forward without autograd: o, the final states, and the states its backward needs.

    Shapes:
        As ``wkv7_chunked``; the third output has ``entering_shape(...)`` (fp32, fp64 for fp64 inputs).
        Packed sequences run one after another, their boundaries read on the host.
    """
    if cu_seqlens is None:
        return _forward(r, w, k, v, a, b, state, chunk, keep_states)
    _, T, H, K = r.shape
    V = v.shape[-1]
    acc = accumulation_dtype(r.dtype)
    bounds = cu_seqlens.tolist()
    N = len(bounds) - 1
    o = torch.empty(1, T, H, V, dtype=r.dtype, device=r.device)
    s_final = torch.empty(N, H, V, K, dtype=acc, device=r.device)
    entering = torch.empty(entering_shape(1, T, H, K, V, chunk, N, keep_states), dtype=acc, device=r.device)
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        s_n = state[n : n + 1] if state is not None else None
        if eos == bos:
            s_final[n] = state[n] if state is not None else 0
            continue
        part = slice(bos, eos)
        o_n, f_n, ent = _forward(*(x[:, part] for x in (r, w, k, v, a, b)), s_n, chunk, keep_states)
        o[:, part] = o_n
        s_final[n] = f_n[0]
        if keep_states:
            slot = bos // chunk + n
            entering[slot : slot + ent.shape[0]] = ent[:, 0]
    return o, s_final, entering


def chunked_backward(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    entering: Tensor,
    do: Tensor,
    ds_final: Tensor | None,
    *,
    chunk: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``chunked_forward`` from the states it kept (no autograd).

    Returns dr, dw, dk, dv, da, db (in their inputs' dtypes) and the gradient of the initial states in
    fp32 (fp64 for fp64 inputs).
    """
    if cu_seqlens is None:
        return _backward(r, w, k, v, a, b, entering, do, ds_final, chunk)
    H, K, V = r.shape[2], r.shape[3], v.shape[3]
    acc = accumulation_dtype(r.dtype)
    bounds = cu_seqlens.tolist()
    N = len(bounds) - 1
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (r, w, k, v, a, b)]
    ds0 = torch.empty(N, H, V, K, dtype=acc, device=r.device)
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        g_n = ds_final[n : n + 1] if ds_final is not None else None
        if eos == bos:  # the final state is the initial state
            ds0[n] = ds_final[n] if ds_final is not None else 0
            continue
        part = slice(bos, eos)
        slot, n_chunks = bos // chunk + n, -(-(eos - bos) // chunk)
        ent = entering[slot : slot + n_chunks].unsqueeze(1)  # [n_chunks, 1, H, V, K]
        *grads_n, ds0_n = _backward(*(x[:, part] for x in (r, w, k, v, a, b)), ent, do[:, part], g_n, chunk)
        for dst, g in zip(grads, grads_n, strict=True):
            dst[:, part] = g
        ds0[n] = ds0_n[0]
    return (*grads, ds0)


class _WKV7Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0, chunk, cu_seqlens):
        keep = any(ctx.needs_input_grad)
        o, s_final, entering = chunked_forward(
            r, w, k, v, a, b, s0, chunk=chunk, keep_states=keep, cu_seqlens=cu_seqlens
        )
        ctx.save_for_backward(r, w, k, v, a, b, entering, cu_seqlens)
        ctx.chunk = chunk
        ctx.s0_dtype = None if s0 is None else s0.dtype
        return o, s_final

    @staticmethod
    def backward(ctx, do, ds_final):
        r, w, k, v, a, b, entering, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        *grads, ds0 = chunked_backward(r, w, k, v, a, b, entering, do, ds_final, chunk=ctx.chunk, cu_seqlens=cu_seqlens)
        ds0 = ds0.to(ctx.s0_dtype) if ctx.s0_dtype is not None else None
        return (*grads, ds0, None, None)


def wkv7_chunked(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked WKV7 with a linear-memory, hand-written backward (no argument checks).

    Use ``rwkvblocks.ops.wkv7`` for the checked, dispatched entry point (a registered op that runs
    ``chunked_forward`` / ``chunked_backward`` when it picks this backend).

    Shapes:
        r, w, k, a, b: `[B, T, H, K]`; v: `[B, T, H, V]`; state: `[B, H, V, K]`. Returns o `[B, T, H, V]`
        in ``r.dtype`` and the final state `[B, H, V, K]` in fp32 (fp64 for fp64 inputs). With
        ``cu_seqlens`` (`[N+1]`, ``B = 1``) the N packed sequences run one after another, each from its
        own state: state and final state are `[N, H, V, K]`. ``chunk_size`` (a power of two) bounds the
        decays that are safe in fp32 (see ``README.md``).
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    return _WKV7Chunked.apply(r, w, k, v, a, b, state, chunk_size, cu_seqlens)
