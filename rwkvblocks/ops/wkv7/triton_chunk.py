"""Chunked RWKV-7 WKV in Triton: a fused forward and a recomputing backward.

One program owns one (sequence, head, block of ``BV`` value rows) and streams the sequence in chunks of
``BT = 16`` tokens; the `[BV, K]` block of the state stays in fp32 registers from chunk to chunk (rows of
the state are independent, so value blocks never communicate). Per chunk it evaluates the WY / UT form of
``README.md``: the four pair matrices ``A_ab``, ``A_ak``, ``A_rb``, ``A_rk``, the inverse of the unit lower
triangular ``I - A_ab`` by forward substitution, ``W = T^-1 a^``, ``U = T^-1 A_ak v``, the corrections
``Z = W S^T + U``, the outputs ``O = r^ S^T + A_rb Z + A_rk v`` and the state leaving the chunk
``S diag(gamma) + Z^T b_ + v^T k_``.

Every exponent is ``<= 0``: the state factors are referred to the chunk's start and end, and the pair
matrices are built one key column ``s`` at a time, each column referred to its own token
(``e^{g^_t - g_s}`` for ``t > s``), never factored into ``e^{g^_t} e^{-g_s}``; so any decay is safe. The
chunk-local cumulative sum of ``w`` runs in fp64 (its differences are exponents). Matrix products use
``tl.dot`` with fp32 operands: ``input_precision="ieee"`` for fp32 inputs, ``"tf32"`` for bf16/fp16.

The backward first replays the state recursion to store the state entering every chunk (freed after the
backward), then walks the chunks in reverse carrying the state gradient in registers, recomputing the
chunk's matrices and applying the formulas of ``README.md`` ("chunked: backward"). With several value
blocks, the gradients of r, w, k, a, b are written per block in fp32 and summed.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.library import wrap_triton

from ..wkv._triton_common import bind_triton
from .triton_recurrent import flat_inputs

__all__ = ["CHUNK", "triton_chunk_ops", "wkv7_triton_chunk"]

CHUNK = 16  # tokens per chunk; also the tl.dot minimum
tl = None  # triton.language, bound by _kernels() (Triton is imported lazily)
_seq_bounds = None  # the shared @triton.jit helper, bound with tl by bind_triton()


def _block_v(K: int, V: int) -> int:
    """Value rows per program: the state block `[BV, K]` and its gradient stay in registers."""
    return min(V, 64 if K <= 64 else 32)


def _pick_row(x, offs_t, j):
    """Row ``j`` of a register tile `[BT, D]` as `[D]`."""
    return tl.sum(tl.where((offs_t == j)[:, None], x, 0.0), 0)


def _pick_col(x, offs_t, j):
    """Column ``j`` of a register tile `[BT, BT]` as `[BT]`."""
    return tl.sum(tl.where((offs_t == j)[None, :], x, 0.0), 1)


def _load_chunk(r, w, k, v, a, b, c, bos, L, i_h, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, offs_v):
    """Rows of chunk ``c``; rows past the sequence end are zero (no decay, no input)."""
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, K)
    p = c * BT + offs_t
    valid = p < L
    tok = bos + p
    m = valid[:, None]
    kk = tok[:, None] * (H * K) + i_h * K + offs_k[None, :]
    b_r = tl.load(r + kk, mask=m, other=0.0).to(tl.float32)
    b_w = tl.load(w + kk, mask=m, other=0.0).to(tl.float32)
    b_k = tl.load(k + kk, mask=m, other=0.0).to(tl.float32)
    b_a = tl.load(a + kk, mask=m, other=0.0).to(tl.float32)
    b_b = tl.load(b + kk, mask=m, other=0.0).to(tl.float32)
    b_v = tl.load(v + tok[:, None] * (H * V) + i_h * V + offs_v[None, :], mask=m, other=0.0).to(tl.float32)
    return tok, valid, b_r, b_w, b_k, b_v, b_a, b_b


def _chunk_matrices(b_r, b_w, b_k, b_a, b_b, BT: tl.constexpr):
    """The pair matrices of a chunk, each entry built with its own key token as the reference point, and the
    cumulative log-decays: ``(A_ab, A_ak, A_rb, A_rk, g, gx, g_last)`` (``g``, ``gx``, ``g_last`` fp64)."""
    offs_t = tl.arange(0, BT)
    g = tl.cumsum(b_w.to(tl.float64), axis=0)  # inclusive
    gx = g - b_w  # exclusive
    g_last = _pick_row(g, offs_t, BT - 1)
    A_ab = tl.zeros([BT, BT], dtype=tl.float32)
    A_ak = tl.zeros([BT, BT], dtype=tl.float32)
    A_rb = tl.zeros([BT, BT], dtype=tl.float32)
    A_rk = tl.zeros([BT, BT], dtype=tl.float32)
    for j in tl.static_range(BT):
        b_j = _pick_row(b_b, offs_t, j)
        k_j = _pick_row(b_k, offs_t, j)
        g_j = _pick_row(g, offs_t, j)
        e_a = tl.exp(tl.where((offs_t > j)[:, None], (gx - g_j[None, :]).to(tl.float32), float("-inf")))
        e_r = tl.exp(tl.where((offs_t >= j)[:, None], (g - g_j[None, :]).to(tl.float32), float("-inf")))
        ae = b_a * e_a
        re = b_r * e_r
        col = (offs_t == j)[None, :]
        A_ab += tl.where(col, tl.sum(ae * b_j[None, :], axis=1)[:, None], 0.0)
        A_ak += tl.where(col, tl.sum(ae * k_j[None, :], axis=1)[:, None], 0.0)
        A_rb += tl.where(col, tl.sum(re * b_j[None, :], axis=1)[:, None], 0.0)
        A_rk += tl.where(col, tl.sum(re * k_j[None, :], axis=1)[:, None], 0.0)
    return A_ab, A_ak, A_rb, A_rk, g, gx, g_last


def _unit_lower_inverse(A, BT: tl.constexpr):
    """``(I - A)^-1`` for a strictly lower triangular `[BT, BT]` ``A``, by forward substitution:
    row i is ``e_i + sum_{j<i} A[i, j] row_j``."""
    offs_t = tl.arange(0, BT)
    X = tl.where(offs_t[:, None] == offs_t[None, :], 1.0, 0.0)
    for i in tl.static_range(1, BT):
        a_i = _pick_row(A, offs_t, i)
        row = tl.sum(a_i[:, None] * X, axis=0) + tl.where(offs_t == i, 1.0, 0.0)
        X = tl.where((offs_t == i)[:, None], row[None, :], X)
    return X


def _wkv7_fwd_kernel(
    r,
    w,
    k,
    v,
    a,
    b,
    s0,
    o,
    s_final,
    states,
    cu_seqlens,
    T,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    HAS_S0: tl.constexpr,
    STORE_O: tl.constexpr,
    STORE_STATES: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, eos = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    L = eos - bos
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    s_offs = i_nh.to(tl.int64) * (V * K) + offs_v[:, None] * K + offs_k[None, :]
    if HAS_S0:
        S = tl.load(s0 + s_offs).to(tl.float32)
    else:
        S = tl.zeros([BV, K], dtype=tl.float32)
    slot0 = bos // BT + i_n  # this sequence's first slot in ``states``
    for c in range(tl.cdiv(L, BT)):
        tok, valid, b_r, b_w, b_k, b_v, b_a, b_b = _load_chunk(r, w, k, v, a, b, c, bos, L, i_h, H, K, V, BT, offs_v)
        A_ab, A_ak, A_rb, A_rk, g, gx, g_last = _chunk_matrices(b_r, b_w, b_k, b_a, b_b, BT)
        Tinv = _unit_lower_inverse(A_ab, BT)
        e_end = tl.exp((g_last[None, :] - g).to(tl.float32))
        W = tl.dot(Tinv, b_a * tl.exp(gx.to(tl.float32)), input_precision=DOT_PREC)  # [BT, K]
        U = tl.dot(Tinv, tl.dot(A_ak, b_v, input_precision=DOT_PREC), input_precision=DOT_PREC)  # [BT, BV]
        Z = tl.dot(W, tl.trans(S), input_precision=DOT_PREC) + U  # z_t = S_{t-1} a_t
        if STORE_STATES:
            tl.store(states + ((slot0 + c) * H + i_h).to(tl.int64) * (V * K) + offs_v[:, None] * K + offs_k[None, :], S)
        if STORE_O:
            b_o = tl.dot(b_r * tl.exp(g.to(tl.float32)), tl.trans(S), input_precision=DOT_PREC)
            b_o += tl.dot(A_rb, Z, input_precision=DOT_PREC) + tl.dot(A_rk, b_v, input_precision=DOT_PREC)
            o_offs = tok[:, None] * (H * V) + i_h * V + offs_v[None, :]
            tl.store(o + o_offs, b_o.to(o.dtype.element_ty), mask=valid[:, None])
        S = S * tl.exp(g_last.to(tl.float32))[None, :]
        S += tl.dot(tl.trans(Z), b_b * e_end, input_precision=DOT_PREC)
        S += tl.dot(tl.trans(b_v), b_k * e_end, input_precision=DOT_PREC)
    tl.store(s_final + s_offs, S)


def _wkv7_bwd_kernel(
    r,
    w,
    k,
    v,
    a,
    b,
    do,
    ds_final,
    states,
    ds0,
    dr,
    dw,
    dk,
    dv,
    da,
    db,
    cu_seqlens,
    T,
    H,
    n_tokens,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    HAS_DS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, eos = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    L = eos - bos
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    s_offs = i_nh.to(tl.int64) * (V * K) + offs_v[:, None] * K + offs_k[None, :]
    if HAS_DS:
        G = tl.load(ds_final + s_offs).to(tl.float32)  # gradient of the state leaving the chunk
    else:
        G = tl.zeros([BV, K], dtype=tl.float32)
    strict = offs_t[:, None] > offs_t[None, :]
    lower = offs_t[:, None] >= offs_t[None, :]
    slot0 = bos // BT + i_n
    part = i_v.to(tl.int64) * n_tokens * (H * K)  # this value block's slice of dr, dw, dk, da, db
    n_chunks = tl.cdiv(L, BT)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        tok, valid, b_r, b_w, b_k, b_v, b_a, b_b = _load_chunk(r, w, k, v, a, b, c, bos, L, i_h, H, K, V, BT, offs_v)
        m = valid[:, None]
        v_offs = tok[:, None] * (H * V) + i_h * V + offs_v[None, :]
        b_do = tl.load(do + v_offs, mask=m, other=0.0).to(tl.float32)
        S = tl.load(states + ((slot0 + c) * H + i_h).to(tl.int64) * (V * K) + offs_v[:, None] * K + offs_k[None, :])
        A_ab, A_ak, A_rb, A_rk, g, gx, g_last = _chunk_matrices(b_r, b_w, b_k, b_a, b_b, BT)
        Tinv = _unit_lower_inverse(A_ab, BT)
        e_gx = tl.exp(gx.to(tl.float32))
        e_g = tl.exp(g.to(tl.float32))
        e_end = tl.exp((g_last[None, :] - g).to(tl.float32))
        gamma = tl.exp(g_last.to(tl.float32))
        a_h = b_a * e_gx
        r_h = b_r * e_g
        b_bar = b_b * e_end
        k_bar = b_k * e_end
        W = tl.dot(Tinv, a_h, input_precision=DOT_PREC)
        U = tl.dot(Tinv, tl.dot(A_ak, b_v, input_precision=DOT_PREC), input_precision=DOT_PREC)
        Z = tl.dot(W, tl.trans(S), input_precision=DOT_PREC) + U
        dZ = tl.dot(tl.trans(A_rb), b_do, input_precision=DOT_PREC)
        dZ += tl.dot(b_bar, tl.trans(G), input_precision=DOT_PREC)
        lam = tl.dot(tl.trans(Tinv), dZ, input_precision=DOT_PREC)
        dA_ab = tl.where(strict, tl.dot(lam, tl.trans(Z), input_precision=DOT_PREC), 0.0)
        dA_ak = tl.where(strict, tl.dot(lam, tl.trans(b_v), input_precision=DOT_PREC), 0.0)
        dA_rb = tl.where(lower, tl.dot(b_do, tl.trans(Z), input_precision=DOT_PREC), 0.0)
        dA_rk = tl.where(lower, tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC), 0.0)
        b_dv = tl.dot(tl.trans(A_rk), b_do, input_precision=DOT_PREC)
        b_dv += tl.dot(tl.trans(A_ak), lam, input_precision=DOT_PREC)
        b_dv += tl.dot(k_bar, tl.trans(G), input_precision=DOT_PREC)
        d_ah = tl.dot(lam, S, input_precision=DOT_PREC)
        d_rh = tl.dot(b_do, S, input_precision=DOT_PREC)
        d_bbar = tl.dot(Z, G, input_precision=DOT_PREC)
        d_kbar = tl.dot(b_v, G, input_precision=DOT_PREC)
        d_gamma = tl.sum(S * G, axis=0)
        # the pair matrices, one key column s = j at a time (as they were built)
        da_p = tl.zeros([BT, K], dtype=tl.float32)
        dr_p = tl.zeros([BT, K], dtype=tl.float32)
        db_p = tl.zeros([BT, K], dtype=tl.float32)
        dk_p = tl.zeros([BT, K], dtype=tl.float32)
        for j in tl.static_range(BT):
            b_j = _pick_row(b_b, offs_t, j)
            k_j = _pick_row(b_k, offs_t, j)
            g_j = _pick_row(g, offs_t, j)
            e_a = tl.exp(tl.where((offs_t > j)[:, None], (gx - g_j[None, :]).to(tl.float32), float("-inf")))
            e_r = tl.exp(tl.where((offs_t >= j)[:, None], (g - g_j[None, :]).to(tl.float32), float("-inf")))
            t_ab = _pick_col(dA_ab, offs_t, j)[:, None] * e_a
            t_ak = _pick_col(dA_ak, offs_t, j)[:, None] * e_a
            t_rb = _pick_col(dA_rb, offs_t, j)[:, None] * e_r
            t_rk = _pick_col(dA_rk, offs_t, j)[:, None] * e_r
            da_p += t_ab * b_j[None, :] + t_ak * k_j[None, :]
            dr_p += t_rb * b_j[None, :] + t_rk * k_j[None, :]
            row = (offs_t == j)[:, None]
            db_p += tl.where(row, tl.sum(t_ab * b_a + t_rb * b_r, axis=0)[None, :], 0.0)
            dk_p += tl.where(row, tl.sum(t_ak * b_a + t_rk * b_r, axis=0)[None, :], 0.0)
        b_da = da_p + d_ah * e_gx
        b_dr = dr_p + d_rh * e_g
        b_db = db_p + d_bbar * e_end
        b_dk = dk_p + d_kbar * e_end
        # log-decay: x = y e^{phi} gives d phi = dx * x; g = cumsum(w), gx = g - w, g_last = sum(w)
        end_terms = d_bbar * b_bar + d_kbar * k_bar
        dg = dr_p * b_r + d_rh * r_h - db_p * b_b - dk_p * b_k - end_terms
        dgx = da_p * b_a + d_ah * a_h
        dgl = tl.sum(end_terms, axis=0) + d_gamma * gamma
        b_dw = tl.cumsum(dg + dgx, axis=0, reverse=True) - dgx + dgl[None, :]

        k_offs = part + tok[:, None] * (H * K) + i_h * K + offs_k[None, :]
        tl.store(dr + k_offs, b_dr, mask=m)
        tl.store(dw + k_offs, b_dw, mask=m)
        tl.store(dk + k_offs, b_dk, mask=m)
        tl.store(da + k_offs, b_da, mask=m)
        tl.store(db + k_offs, b_db, mask=m)
        tl.store(dv + v_offs, b_dv.to(dv.dtype.element_ty), mask=m)
        G = G * gamma[None, :]
        G += tl.dot(tl.trans(b_do), r_h, input_precision=DOT_PREC)
        G += tl.dot(tl.trans(dZ), W, input_precision=DOT_PREC)
    tl.store(ds0 + s_offs, G)


@functools.cache
def _kernels():
    """The compiled (or, under ``TRITON_INTERPRET=1``, interpreted) forward and backward kernels."""
    triton = bind_triton(globals(), ("_pick_row", "_pick_col", "_load_chunk", "_chunk_matrices", "_unit_lower_inverse"))
    return triton.jit(_wkv7_fwd_kernel), triton.jit(_wkv7_bwd_kernel)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_forward(flat, shape, N, s0, cu_seqlens, o, states) -> Tensor:
    """Run the forward kernel, writing ``o`` and ``states`` when given; returns the final state fp32."""
    fwd, _ = _kernels()
    _, T, H, K, V = shape
    BV = _block_v(K, V)
    s_final = torch.empty(N, H, V, K, dtype=torch.float32, device=flat[0].device)
    wrap_triton(fwd)[(V // BV, N * H)](
        *flat,
        s0,
        o,
        s_final,
        states,
        cu_seqlens,
        T,
        H,
        K=K,
        V=V,
        BT=CHUNK,
        BV=BV,
        HAS_S0=s0 is not None,
        STORE_O=o is not None,
        STORE_STATES=states is not None,
        IS_VARLEN=cu_seqlens is not None,
        DOT_PREC=_dot_precision(flat[0].dtype),
        num_warps=4,
    )
    return s_final


def _forward(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor]:
    B, T, H, K = r.shape
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # written as the flat [B*T, H, V] stream
    s0 = state.contiguous() if state is not None else None
    flat = flat_inputs(r, w, k, v, a, b)
    return o, _launch_forward(flat, (B, T, H, K, v.shape[-1]), N, s0, cu_seqlens, o=o, states=None)


def _backward(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    do: Tensor,
    ds_final: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _, bwd = _kernels()
    B, T, H, K = r.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BV = _block_v(K, V)
    NV = V // BV
    tokens = B * T
    dev = r.device
    flat = flat_inputs(r, w, k, v, a, b)
    s0 = state.contiguous() if state is not None else None
    # Replay the state recursion, keeping the state that enters every chunk. Sequence n's chunks start at
    # slot bos_n // CHUNK + n: a bound that needs no host sync on cu_seqlens.
    states = torch.empty(tokens // CHUNK + N, H, V, K, dtype=torch.float32, device=dev)
    _launch_forward(flat, (B, T, H, K, V), N, s0, cu_seqlens, o=None, states=states)
    dr, dw, dk, da, db = (torch.empty(NV, tokens, H, K, dtype=torch.float32, device=dev) for _ in range(5))
    dv = torch.empty(tokens, H, V, dtype=v.dtype, device=dev)
    ds0 = torch.empty(N, H, V, K, dtype=torch.float32, device=dev)
    ds = ds_final.float().contiguous() if ds_final is not None else None
    wrap_triton(bwd)[(NV, N * H)](
        *flat,
        do.contiguous().view(tokens, H, V),
        ds,
        states,
        ds0,
        dr,
        dw,
        dk,
        dv,
        da,
        db,
        cu_seqlens,
        T,
        H,
        tokens,
        K=K,
        V=V,
        BT=CHUNK,
        BV=BV,
        HAS_DS=ds is not None,
        IS_VARLEN=cu_seqlens is not None,
        DOT_PREC=_dot_precision(flat[0].dtype),
        num_warps=4,
    )
    grads = [g.sum(0).view(x.shape).to(x.dtype) for g, x in zip((dr, dw, dk), (r, w, k), strict=True)]
    return (*grads, dv.view(v.shape), da.sum(0).view(a.shape).to(a.dtype), db.sum(0).view(b.shape).to(b.dtype), ds0)


@functools.cache
def triton_chunk_ops():
    """The forward and backward ``torch.library.triton_op``s, registered on first use.

    Registering a Triton op imports Triton, which ``import rwkvblocks`` must not do. The forward,
    ``rwkvblocks::wkv7_triton_chunk(r, w, k, v, a, b, state, cu_seqlens) -> (o, final_state)``, is
    differentiable through ``rwkvblocks::wkv7_triton_chunk_backward(..., do, ds_final) -> (dr, dw, dk, dv,
    da, db, dstate)``; ``dstate`` is fp32 `[N, H, V, K]` even without an initial state.
    """
    from torch.library import triton_op

    forward = triton_op("rwkvblocks::wkv7_triton_chunk", mutates_args=())(_forward)
    backward = triton_op("rwkvblocks::wkv7_triton_chunk_backward", mutates_args=())(_backward)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)

    def differentiate(ctx, do, ds_final):
        r, w, k, v, a, b, state, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        *grads, ds0 = backward(r, w, k, v, a, b, state, cu_seqlens, do, ds_final)
        return (*grads, ds0.to(state.dtype) if state is not None else None, None)

    forward.register_autograd(differentiate, setup_context=setup_context)
    return forward, backward


def wkv7_triton_chunk(
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
    """Chunked RWKV-7 WKV in Triton, forward and backward (no argument checks; see ``ops.wkv7``).

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. Gradients flow to r, w, k, v, a, b
    and the initial state. Registered as the Triton op ``rwkvblocks::wkv7_triton_chunk`` (see
    ``triton_chunk_ops``). Reference: ``wkv7_reference``.

    Shapes:
        r, w, k, a, b: `[B, T, H, K]`; v: `[B, T, H, V]`; state: `[N, H, V, K]` fp32 with ``N = B``, or the
        number of sequences when ``cu_seqlens`` (int `[N+1]`, ``B = 1``) packs several. K and V are powers
        of two in 16..128; inputs fp32, bf16 or fp16. Returns o `[B, T, H, V]` in ``v.dtype`` and the final
        states `[N, H, V, K]` fp32.
    """
    forward, _ = triton_chunk_ops()
    return forward(r, w, k, v, a, b, state, cu_seqlens)
