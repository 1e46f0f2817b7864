"""Chunked WKV in Triton: a fused forward and a recomputing backward.

One program owns one (sequence, head, block of ``BV`` value columns) and streams the sequence in
chunks of ``BT = 16`` tokens, in processing order (backwards in time for ``reverse=True``: the
kernels only index tokens from the end, nothing is flipped). The `[K, BV]` state stays in fp32
registers from chunk to chunk; the forward stores nothing but ``o`` and the final state.

Every exponent is ``<= 0``. With ``b`` the chunk-local inclusive cumulative sum of ``w`` and
``a = b - w`` (exclusive), the state terms use ``exp(a_t)`` and ``exp(b_last - b_s)``; the
token-to-token terms of a chunk use ``exp(a_t - b_s)`` for ``s < t``, evaluated column by column
(each key token ``s`` is its own reference point), never factored into ``exp(a_t) exp(-b_s)``.
Matrix products (state reads and updates, the `[BT, BT]` attention times ``v``) use ``tl.dot``
with fp32 operands: ``input_precision="ieee"`` for fp32 inputs (exact fp32), ``"tf32"`` for
bf16/fp16 inputs (rounding far below that of the inputs).

The backward first replays the state recursion (no intra-chunk work) to store the state
entering every chunk, then walks the chunks in reverse processing order carrying the state
gradient in registers and recomputing the chunk's attention matrix. The math is in
``README.md`` beside this file.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.library import wrap_triton

from ._triton_common import Flat, bind_triton, register_wkv_ops

__all__ = ["CHUNK", "triton_chunk_ops", "wkv6_triton_chunk"]

CHUNK = 16  # tokens per chunk; also the tl.dot minimum
tl = None  # triton.language, bound by _kernels() (Triton is imported lazily)
_seq_bounds = None  # the shared @triton.jit helper, bound with tl by bind_triton()


def _block_v(K: int, V: int) -> int:
    """Value columns per program: the state `[K, BV]` and its gradient stay in registers."""
    return min(V, 64 if K <= 64 else 32)


def _load_chunk(
    r,
    k,
    v,
    w,
    c,
    bos,
    eos,
    L,
    i_h,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    i_v,
    REVERSE: tl.constexpr,
):
    """Rows of chunk ``c`` in processing order; rows past the sequence end are zero."""
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    p = c * BT + offs_t
    valid = p < L
    if REVERSE:
        tok = eos - 1 - p
    else:
        tok = bos + p
    m = valid[:, None]
    rk = tok[:, None] * (H * K) + i_h * K + offs_k[None, :]
    b_r = tl.load(r + rk, mask=m, other=0.0).to(tl.float32)
    b_k = tl.load(k + rk, mask=m, other=0.0).to(tl.float32)
    b_w = tl.load(w + tok[:, None] * w_tok + i_h * w_head + offs_k[None, :], mask=m, other=0.0).to(tl.float32)
    b_v = tl.load(v + tok[:, None] * (H * V) + i_h * V + offs_v[None, :], mask=m, other=0.0).to(tl.float32)
    return tok, valid, b_r, b_k, b_w, b_v


def _pick_row(x, offs_t, j):
    """Row ``j`` of a register tile `[BT, D]` as `[D]`."""
    return tl.sum(tl.where((offs_t == j)[:, None], x, 0.0), 0)


def _wkv6_fwd_kernel(
    r,
    k,
    v,
    w,
    u,
    s0,
    o,
    s_final,
    states,
    cu_seqlens,
    T,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
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
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    s_offs = i_nh.to(tl.int64) * (K * V) + offs_k[:, None] * V + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0 + s_offs).to(tl.float32)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    b_u = tl.load(u + i_h * K + offs_k).to(tl.float32)
    slot0 = bos // BT + i_n  # this sequence's first slot in ``states``
    for c in range(tl.cdiv(L, BT)):
        tok, valid, b_r, b_k, b_w, b_v = _load_chunk(
            r, k, v, w, c, bos, eos, L, i_h, H, w_tok, w_head, K, V, BT, BV, i_v, REVERSE
        )
        b_b = tl.cumsum(b_w.to(tl.float64), axis=0)  # fp64: differences of it are exponents
        b_a = b_b - b_w  # ... up to just before t
        b_last = _pick_row(b_b, offs_t, BT - 1)
        if STORE_STATES:
            tl.store(states + ((slot0 + c) * H + i_h) * (K * V) + offs_k[:, None] * V + offs_v[None, :], S)
        if STORE_O:
            b_o = tl.dot(b_r * tl.exp(b_a.to(tl.float32)), S, input_precision=DOT_PREC)
            b_A = tl.zeros([BT, BT], dtype=tl.float32)
            for j in tl.static_range(BT):
                k_j = _pick_row(b_k, offs_t, j)
                b_j = _pick_row(b_b, offs_t, j)
                e = tl.exp(tl.where((offs_t > j)[:, None], (b_a - b_j[None, :]).to(tl.float32), float("-inf")))
                col = tl.sum(b_r * k_j[None, :] * e, axis=1)
                b_A += tl.where((offs_t == j)[None, :], col[:, None], 0.0)
            bonus = tl.sum(b_r * b_u[None, :] * b_k, axis=1)
            b_A += tl.where(offs_t[:, None] == offs_t[None, :], bonus[:, None], 0.0)
            b_o += tl.dot(b_A, b_v, input_precision=DOT_PREC)
            o_offs = tok[:, None] * (H * V) + i_h * V + offs_v[None, :]
            tl.store(o + o_offs, b_o.to(o.dtype.element_ty), mask=valid[:, None])
        b_kd = b_k * tl.exp((b_last[None, :] - b_b).to(tl.float32))
        S = tl.exp(b_last.to(tl.float32))[:, None] * S + tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PREC)
    tl.store(s_final + s_offs, S)


def _wkv6_bwd_kernel(
    r,
    k,
    v,
    w,
    u,
    do,
    ds_final,
    states,
    ds0,
    dr,
    dk,
    dv,
    dw,
    du,
    cu_seqlens,
    T,
    H,
    w_tok,
    w_head,
    n_tokens,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
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
    s_offs = i_nh.to(tl.int64) * (K * V) + offs_k[:, None] * V + offs_v[None, :]
    if HAS_DS:
        G = tl.load(ds_final + s_offs).to(tl.float32)  # gradient of the state after the chunk
    else:
        G = tl.zeros([K, BV], dtype=tl.float32)
    b_u = tl.load(u + i_h * K + offs_k).to(tl.float32)
    b_du = tl.zeros([K], dtype=tl.float32)
    eye = offs_t[:, None] == offs_t[None, :]
    slot0 = bos // BT + i_n
    part = i_v.to(tl.int64) * n_tokens * (H * K)  # this value block's slice of dr, dk, dw
    n_chunks = tl.cdiv(L, BT)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        tok, valid, b_r, b_k, b_w, b_v = _load_chunk(
            r, k, v, w, c, bos, eos, L, i_h, H, w_tok, w_head, K, V, BT, BV, i_v, REVERSE
        )
        m = valid[:, None]
        v_offs = tok[:, None] * (H * V) + i_h * V + offs_v[None, :]
        b_do = tl.load(do + v_offs, mask=m, other=0.0).to(tl.float32)
        S = tl.load(states + ((slot0 + c) * H + i_h) * (K * V) + offs_k[:, None] * V + offs_v[None, :])
        b_b = tl.cumsum(b_w.to(tl.float64), axis=0)
        b_a = b_b - b_w
        b_last = _pick_row(b_b, offs_t, BT - 1)
        e_a = tl.exp(b_a.to(tl.float32))
        e_h = tl.exp((b_last[None, :] - b_b).to(tl.float32))
        # through the state entering and leaving the chunk
        b_dr = tl.dot(b_do, tl.trans(S), input_precision=DOT_PREC) * e_a
        b_dk_state = tl.dot(b_v, tl.trans(G), input_precision=DOT_PREC) * e_h
        b_dv = tl.dot(b_k * e_h, G, input_precision=DOT_PREC)
        # token to token inside the chunk, one key column s = j at a time
        b_dA = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        b_dk = b_dk_state
        for j in tl.static_range(BT):
            k_j = _pick_row(b_k, offs_t, j)
            b_j = _pick_row(b_b, offs_t, j)
            dA_j = tl.sum(tl.where((offs_t == j)[None, :], b_dA, 0.0), axis=1)
            e = tl.exp(tl.where((offs_t > j)[:, None], (b_a - b_j[None, :]).to(tl.float32), float("-inf")))
            re = b_r * e
            b_A += tl.where((offs_t == j)[None, :], tl.sum(re * k_j[None, :], axis=1)[:, None], 0.0)
            b_dr += dA_j[:, None] * k_j[None, :] * e
            dk_j = tl.sum(dA_j[:, None] * re, axis=0)
            b_dk += tl.where((offs_t == j)[:, None], dk_j[None, :], 0.0)
        # log-decay: w_x enters a_t (t > x), b_s (s >= x) and b_last
        b_ra = b_r * b_dr
        b_kc = b_k * b_dk
        const = tl.sum(b_k * b_dk_state, axis=0) + tl.exp(b_last.to(tl.float32)) * tl.sum(G * S, axis=1)
        b_dw = tl.cumsum(b_ra - b_kc, axis=0, reverse=True) - b_ra + const[None, :]
        # the current token's bonus
        c_t = tl.sum(tl.where(eye, b_dA, 0.0), axis=1)  # do_t . v_t
        bonus = tl.sum(b_r * b_u[None, :] * b_k, axis=1)
        b_A += tl.where(eye, bonus[:, None], 0.0)
        b_dr += c_t[:, None] * b_u[None, :] * b_k
        b_dk += c_t[:, None] * b_u[None, :] * b_r
        b_du += tl.sum(c_t[:, None] * b_r * b_k, axis=0)
        b_dv += tl.dot(tl.trans(b_A), b_do, input_precision=DOT_PREC)

        k_offs = part + tok[:, None] * (H * K) + i_h * K + offs_k[None, :]
        tl.store(dr + k_offs, b_dr, mask=m)
        tl.store(dk + k_offs, b_dk, mask=m)
        tl.store(dw + k_offs, b_dw, mask=m)
        tl.store(dv + v_offs, b_dv.to(dv.dtype.element_ty), mask=m)
        G = tl.exp(b_last.to(tl.float32))[:, None] * G + tl.dot(tl.trans(b_r * e_a), b_do, input_precision=DOT_PREC)
    tl.store(ds0 + s_offs, G)
    tl.store(du + (i_v * tl.num_programs(1) + i_nh) * K + offs_k, b_du)


@functools.cache
def _kernels():
    """The compiled (or, under ``TRITON_INTERPRET=1``, interpreted) forward and backward kernels."""
    triton = bind_triton(globals(), ("_load_chunk", "_pick_row"))
    return triton.jit(_wkv6_fwd_kernel), triton.jit(_wkv6_bwd_kernel)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_forward(
    f: Flat, u: Tensor, s0: Tensor | None, reverse: bool, o: Tensor | None, states: Tensor | None
) -> Tensor:
    """Run the forward kernel, writing ``o`` (when given); returns the final state `[N, H, K, V]` fp32."""
    fwd, _ = _kernels()
    _, _, H, K, V = f.shape
    BV = _block_v(K, V)
    s_final = torch.empty(f.num_seqs, H, K, V, dtype=torch.float32, device=f.r.device)
    grid = (V // BV, f.num_seqs * H)
    wrap_triton(fwd)[grid](
        f.r,
        f.k,
        f.v,
        f.w,
        u,
        s0,
        o,
        s_final,
        states,
        f.cu_seqlens,
        f.seq_len,
        H,
        f.w_tok,
        f.w_head,
        K=K,
        V=V,
        BT=CHUNK,
        BV=BV,
        REVERSE=reverse,
        HAS_S0=s0 is not None,
        STORE_O=o is not None,
        STORE_STATES=states is not None,
        IS_VARLEN=f.cu_seqlens is not None,
        DOT_PREC=_dot_precision(f.r.dtype),
        num_warps=4,
    )
    return s_final


def _launch_backward(f: Flat, u: Tensor, s0: Tensor | None, do: Tensor, ds_final: Tensor | None, reverse: bool):
    _, bwd = _kernels()
    _, _, H, K, V = f.shape
    BV = _block_v(K, V)
    NV = V // BV
    dev = f.r.device
    # Replay the state recursion, keeping the state that enters every chunk. Sequence n's
    # chunks start at slot bos_n // CHUNK + n: a bound that needs no host sync on cu_seqlens.
    states = torch.empty(f.tokens // CHUNK + f.num_seqs, H, K, V, dtype=torch.float32, device=dev)
    _launch_forward(f, u, s0, reverse, o=None, states=states)
    dr, dk, dw = (torch.empty(NV, f.tokens, H, K, dtype=torch.float32, device=dev) for _ in range(3))
    dv = torch.empty_like(f.v)
    du = torch.empty(NV, f.num_seqs * H, K, dtype=torch.float32, device=dev)
    ds0 = torch.empty(f.num_seqs, H, K, V, dtype=torch.float32, device=dev)
    do = do.contiguous().view(f.tokens, H, V)
    wrap_triton(bwd)[(NV, f.num_seqs * H)](
        f.r,
        f.k,
        f.v,
        f.w,
        u,
        do,
        ds_final,
        states,
        ds0,
        dr,
        dk,
        dv,
        dw,
        du,
        f.cu_seqlens,
        f.seq_len,
        H,
        f.w_tok,
        f.w_head,
        f.tokens,
        K=K,
        V=V,
        BT=CHUNK,
        BV=BV,
        REVERSE=reverse,
        HAS_DS=ds_final is not None,
        IS_VARLEN=f.cu_seqlens is not None,
        DOT_PREC=_dot_precision(f.r.dtype),
        num_warps=4,
    )
    return dr.sum(0), dk.sum(0), dv, dw.sum(0), du.view(NV * f.num_seqs, H, K).sum(0), ds0


def _forward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    f = Flat(r, k, v, w, cu_seqlens)
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # written as the flat [B*T, H, V] stream
    s0 = state.contiguous() if state is not None else None
    return o, _launch_forward(f, u.contiguous(), s0, reverse, o=o, states=None)


def _backward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    do: Tensor,
    ds_final: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    f = Flat(r, k, v, w, cu_seqlens)
    s0 = state.contiguous() if state is not None else None
    ds = ds_final.float().contiguous() if ds_final is not None else None
    dr, dk, dv, dw, du, ds0 = _launch_backward(f, u.contiguous(), s0, do, ds, reverse)
    B, T, H, K = r.shape
    return (
        dr.view(r.shape).to(r.dtype),
        dk.view(k.shape).to(k.dtype),
        dv.view(v.shape),
        dw.view(B, T, H, K).to(w.dtype),
        du.to(u.dtype),
        ds0,
    )


@functools.cache
def triton_chunk_ops():
    """The forward and backward ``torch.library.triton_op``s, registered on first use.

    Registering a Triton op imports Triton, which ``import rwkvblocks`` must not do. The forward,
    ``rwkvblocks::wkv6_triton_chunk(r, k, v, w, u, state, cu_seqlens, reverse) -> (o, final_state)``,
    is differentiable through ``rwkvblocks::wkv6_triton_chunk_backward(..., do, ds_final, reverse)
    -> (dr, dk, dv, dw, du, dstate)``; ``dstate`` is fp32 `[N, H, K, V]` even without an initial state.
    """
    return register_wkv_ops("wkv6_triton_chunk", _forward, _backward)


def wkv6_triton_chunk(
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
    """Chunked WKV in Triton, forward and backward (no argument checks; see ``ops.wkv6``).

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. Gradients flow to
    r, k, v, w, u and the initial state. Registered as the Triton op ``rwkvblocks::wkv6_triton_chunk``
    (see ``triton_chunk_ops``). Reference: ``wkv6_reference``.

    Shapes:
        r, k, w: `[B, T, H, K]` (``w`` may be a broadcast view); v: `[B, T, H, V]`; u: `[H, K]`;
        state: `[N, H, K, V]` fp32 with ``N = B``, or the number of sequences when
        ``cu_seqlens`` (int `[N+1]`, ``B = 1``) packs several. K and V are powers of two in
        16..128; inputs fp32, bf16 or fp16. Returns o `[B, T, H, V]` in ``r.dtype`` and the
        final states `[N, H, K, V]` fp32.
    """
    forward, _ = triton_chunk_ops()
    return forward(r, k, v, w, u, state, cu_seqlens, reverse)
