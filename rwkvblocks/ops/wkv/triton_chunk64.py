"""Chunk-parallel WKV-6 forward and backward in Triton: chunks of 64 tokens processed side by side.

Entry points: ``wkv6_chunk64_forward`` and ``wkv6_chunk64_backward`` (its design in its docstring);
registered as the ``triton_chunk64`` backend of ``ops.wkv6`` through ``triton_chunk64_ops`` (by name
only: never timed on a GPU, so automatic selection never picks it). Same
layouts and semantics as ``wkv6_triton_chunk``: r, k, w `[B, T, H, K]`, v `[B, T, H, V]`, u
`[H, K]`, fp32 states `[N, H, K, V]`; ``reverse`` and packed sequences (``cu_seqlens``) included.
Reference: ``wkv6_reference``; the math is in ``README.md`` beside this file.

Design
------

Time is cut into chunks of ``BT = 64`` tokens *in processing order* (row ``p`` of chunk ``c`` is
token ``bos + 64c + p``, or ``eos - 1 - 64c - p`` for ``reverse=True``: reversal and packing are
index arithmetic, nothing is flipped or copied). A chunk never spans two sequences: with
``cu_seqlens`` every sequence gets ``ceil(len / 64)`` chunks of its own, numbered by a chunk map
built with torch ops on the device (``searchsorted`` over the cumulative chunk counts; no host
sync). The grid is sized by the bound ``T // 64 + N`` and the programs past the real chunk count
return at once. Three launches:

(a) ``_chunk_state_kernel``, grid (chunk, value block, head): the chunk's own contribution to the
    state, ``dS = sum_s (k_s * 2^{g_s}) v_s^T`` with ``g_s = sum_{x > s in chunk} w_x`` (decay
    from just after ``s`` to the chunk end), and the chunk's total log-decay ``D = sum_x w_x``.
(b) ``_chunk_scan_kernel``, grid (key x value block, sequence x head): the only serial part, a
    loop over the sequence's chunks, ``S <- 2^D * S + dS`` (``T / 64`` steps of a `[32, 32]` tile).
    It overwrites each ``dS`` with the state *entering* that chunk (one buffer, no second copy)
    and writes the final state.
(c) ``_chunk_output_kernel``, grid (chunk, value block, head): the chunk is four sub-blocks of
    ``BC = 16`` tokens. For query sub-block ``i``, with ``pre_t = sum_{16i <= x < t} w_x`` (decay
    from the sub-block start to just before ``t``) and ``off_i = sum_{x < 16i} w_x``:

    - inter-chunk: ``o_i = (r_i * 2^{pre} * 2^{off_i}) S_in`` (``tl.dot``);
    - earlier sub-blocks ``j < i`` (tensor cores): the pair ``s < t`` needs the decay of every
      token strictly between them, ``sum_{s < x < t} w_x``; it is split at the sub-block
      boundaries as ``pre_t + (sum of the whole sub-blocks strictly between j and i) + suf_s``
      with ``suf_s = sum_{s < x < 16(j+1)} w_x``, so ``A_ij = (r_i * 2^{pre}) (k_j * 2^{suf + mid})^T``
      and ``o_i += A_ij v_j``: both factors are ``tl.dot`` operands with magnitude ``<= |r|``,
      ``<= |k|``;
    - the diagonal sub-block: every pair's exponent exactly, as a `[16, 16, BKD]` elementwise
      block (key channels in slices of ``BKD = 16``), strictly lower-triangular, plus the bonus
      ``sum_i r_t u k_t`` on the diagonal; ``o_i += A_ii v_i``.

Reference points and signs. Every exponent is a sum of log-decays over a range of tokens, hence
``<= 0``: nothing is ever factored into ``2^{a_t} 2^{-b_s}`` (which overflows fp32 with decays of
-30 per token, DESIGN.md §3), and a factor that underflows only drops a term that is below fp32's
range anyway. Every exponent is also *evaluated* as a sum of exactly the tokens it covers (a
cumulative sum started at the range's own reference point), never as the difference of two long
cumulative sums, whose cancellation would cost ``eps * |cumsum|`` in the exponent (up to ~1e-4 of
relative error per term at -30 per token over a 64-token chunk). The one subtraction used,
``cumsum(w) - w`` for an exclusive sum, loses at most ``eps * (|result| + |w_t|)``. The sums run in
fp32 and in log2 units (``w * log2(e)``, then ``tl.exp2``); there is no fp64 anywhere.

Precision of the products: fp32 inputs use fp32 operands with ``input_precision="ieee"`` (the
interpreter and a GPU agree to ~1e-7); bf16 inputs use bf16 operands (the scaled factors are in
bf16's range, fp32 accumulation); fp16 inputs use fp32 operands with tf32 (fp16's narrow exponent
range would flush small decay factors). fp64 inputs raise ``ValueError`` (use ``wkv6_reference``
or ``wkv6_chunked``). Under ``TRITON_INTERPRET=1`` the bf16 products are emulated (operands rounded
to nearest bf16, multiplied in fp32), because the interpreter's bf16 ``tl.dot`` multiplies raw
bits and its fp32 -> bf16 conversion truncates where a GPU rounds; ``o`` is rounded the same way.

Registers: the loops over sub-blocks, earlier sub-blocks and key slices of (c) are runtime loops,
not unrolled, which keeps the bf16 K = 64 output kernel at ~225 registers (4 warps) / ~161 (8 warps)
without spills on sm_90 (unrolled: 255 with spills); only the sub-blocks that hold tokens are
visited, so a short last chunk costs less.

Tuning: (a) and (c) are ``triton.autotune``d over ``num_warps in {4, 8}`` x ``num_stages in {1, 2}``,
keyed on K, V and the argument dtypes; under ``TRITON_INTERPRET=1`` a single config is used. The
scan (b) is not autotuned (it updates its buffer in place, so benchmarking it would corrupt it).
Sequence lengths are not specialized on (``do_not_specialize``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.library import wrap_triton

from ._triton_common import Flat, bind_triton, interpreting, register_wkv_ops

__all__ = ["CHUNK64", "triton_chunk64_ops", "wkv6_chunk64_backward", "wkv6_chunk64_forward"]

CHUNK64 = 64  # tokens per chunk
SUB = 16  # tokens per sub-block (the tl.dot minimum)
_SCAN_BLOCK = 32  # key and value rows of the scan's state tile
tl = None  # triton.language, bound by _kernels() (Triton is imported lazily)
_seq_bounds = None  # the shared @triton.jit helper, bound with tl by bind_triton()


def _block_v(K: int, V: int) -> int:
    """Value columns per program of phases (a) and (c)."""
    return min(V, 64 if K <= 64 else 32)


def _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN: tl.constexpr):
    """Sequence, chunk index within it and ``[bos, eos)`` of global chunk ``i_g``.

    Without packing chunk ``i_g`` is chunk ``i_g % NT`` of sequence ``i_g // NT``; with packing the
    map gives both (sequence ``-1``: past the last real chunk).
    """
    if IS_VARLEN:
        i_n = tl.load(chunk_map + 2 * i_g)
        i_c = tl.load(chunk_map + 2 * i_g + 1)
    else:
        i_n = i_g // NT
        i_c = i_g % NT
    bos, eos = _seq_bounds(cu_seqlens, tl.maximum(i_n, 0), T, IS_VARLEN)
    return i_n, i_c, bos, eos


def _rows(bos, eos, first, n: tl.constexpr, REVERSE: tl.constexpr):
    """Token indices and validity of ``n`` rows starting at position ``first`` of a sequence."""
    pos = first + tl.arange(0, n)
    valid = pos < eos - bos
    if REVERSE:
        tok = eos - 1 - pos
    else:
        tok = bos + pos
    return tl.where(valid, tok, 0), valid


def _load_rows(x, tok, valid, i_h, col0, n_cols: tl.constexpr, tok_stride, head_stride, scale):
    """`[rows, n_cols]` fp32 tile of ``x`` (rows past the end are 0), times ``scale``."""
    offs = col0 + tl.arange(0, n_cols)
    ptr = x + tok[:, None].to(tl.int64) * tok_stride + i_h * head_stride + offs[None, :]
    return tl.load(ptr, mask=valid[:, None], other=0.0).to(tl.float32) * scale


def _round_bf16(x):
    """fp32 ``x`` rounded to the nearest bf16 (ties to even), kept in fp32.

    The interpreter's ``.to(tl.bfloat16)`` truncates, a GPU rounds to nearest: a truncation bias
    shared by every operand adds up in the products, so the interpreter emulates the GPU instead.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


def _mm(a, b, LOW: tl.constexpr, DOT_PREC: tl.constexpr):
    """``a @ b`` with fp32 accumulation: bf16 operands when ``LOW``, else fp32 ones.

    ``DOT_PREC == "emulate"`` (bf16 under the interpreter, whose ``tl.dot`` multiplies the raw
    bits of bf16 tensors): the operands are rounded to bf16 and multiplied in fp32, which is
    exactly a bf16 product with fp32 accumulation.
    """
    if LOW:
        if DOT_PREC == "emulate":
            return tl.dot(_round_bf16(a), _round_bf16(b), input_precision="ieee")
        else:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


def _chunk_state_kernel(
    k,
    v,
    w,
    states,
    decay,
    chunk_map,
    cu_seqlens,
    T,
    NT,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_g = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n, i_c, bos, eos = _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN)
    if i_n < 0:
        return
    tok, valid = _rows(bos, eos, i_c * BT, BT, REVERSE)
    b_k = _load_rows(k, tok, valid, i_h, 0, K, H * K, K, 1.0)
    b_w = _load_rows(w, tok, valid, i_h, 0, K, w_tok, w_head, 1.4426950408889634)  # log2 units
    b_v = _load_rows(v, tok, valid, i_h, i_v * BV, BV, H * V, V, 1.0)
    b_g = tl.cumsum(b_w, axis=0, reverse=True) - b_w  # decay from just after s to the chunk end
    b_ds = _mm(tl.trans(b_k * tl.exp2(b_g)), b_v, LOW, DOT_PREC)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    slot = i_g.to(tl.int64) * H + i_h
    tl.store(states + slot * (K * V) + offs_k[:, None] * V + offs_v[None, :], b_ds)
    if i_v == 0:
        tl.store(decay + slot * K + offs_k, tl.sum(b_w, axis=0))


def _chunk_scan_kernel(
    states,
    decay,
    s0,
    s_final,
    chunk_off,
    NT,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_S0: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_kv = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    NVB: tl.constexpr = V // BV
    offs_k = (i_kv // NVB) * BK + tl.arange(0, BK)
    offs_v = (i_kv % NVB) * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    if IS_VARLEN:
        c0 = tl.load(chunk_off + i_n).to(tl.int64)
        n_chunks = tl.load(chunk_off + i_n + 1).to(tl.int64) - c0
    else:
        c0 = i_n.to(tl.int64) * NT
        n_chunks = NT
    s_offs = i_nh.to(tl.int64) * (K * V) + tile
    if HAS_S0:
        S = tl.load(s0 + s_offs).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(n_chunks):
        slot = (c0 + c) * H + i_h
        p = states + slot * (K * V) + tile
        b_ds = tl.load(p)
        b_d = tl.load(decay + slot * K + offs_k)
        tl.store(p, S)  # the state entering chunk c replaces the chunk's contribution
        S = tl.exp2(b_d)[:, None] * S + b_ds
    tl.store(s_final + s_offs, S)


def _diag_block(r, k, w, u, tok, valid, i_h, H, w_tok, w_head, K: tl.constexpr, BC: tl.constexpr):
    """`[BC, BC]` pair matrix of one sub-block: ``A[t, s] = sum_i r_t k_s 2^{sum_{s<x<t} w_x}`` for
    ``s < t`` and the bonus ``sum_i r_t u k_t`` on the diagonal, every exponent exact."""
    BKD: tl.constexpr = 16  # key channels per slice: the [BC, BC, BKD] block stays small
    offs_t = tl.arange(0, BC)
    lower = (offs_t[:, None] > offs_t[None, :])[:, :, None]  # [t, s, 1]: s < t
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    b_bonus = tl.zeros([BC], dtype=tl.float32)
    for kk in range(K // BKD):
        b_r = _load_rows(r, tok, valid, i_h, kk * BKD, BKD, H * K, K, 1.0)
        b_k = _load_rows(k, tok, valid, i_h, kk * BKD, BKD, H * K, K, 1.0)
        b_w = _load_rows(w, tok, valid, i_h, kk * BKD, BKD, w_tok, w_head, 1.4426950408889634)
        # sum over s < x <= t, started at s + 1, minus w_t: the decay strictly between s and t
        b_wm = tl.where(lower, b_w[:, None, :], 0.0)
        b_e = tl.where(lower, tl.cumsum(b_wm, axis=0) - b_wm, float("-inf"))
        b_A += tl.sum(b_r[:, None, :] * b_k[None, :, :] * tl.exp2(b_e), axis=2)
        b_us = tl.load(u + i_h * K + kk * BKD + tl.arange(0, BKD)).to(tl.float32)
        b_bonus += tl.sum(b_r * b_us[None, :] * b_k, axis=1)
    return b_A + tl.where(offs_t[:, None] == offs_t[None, :], b_bonus[:, None], 0.0)


def _chunk_output_kernel(
    r,
    k,
    v,
    w,
    u,
    states,
    o,
    chunk_map,
    cu_seqlens,
    T,
    NT,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_g = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n, i_c, bos, eos = _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN)
    if i_n < 0:
        return
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    slot = i_g.to(tl.int64) * H + i_h
    S = tl.load(states + slot * (K * V) + offs_k[:, None] * V + offs_v[None, :])  # entering the chunk
    off = tl.zeros([K], dtype=tl.float32)  # decay from the chunk start to sub-block i
    n_sub = tl.cdiv(tl.minimum(eos - bos - i_c * BT, BT), BC)  # sub-blocks holding tokens
    for i in range(n_sub):
        tok, valid = _rows(bos, eos, i_c * BT + i * BC, BC, REVERSE)
        b_r = _load_rows(r, tok, valid, i_h, 0, K, H * K, K, 1.0)
        b_w = _load_rows(w, tok, valid, i_h, 0, K, w_tok, w_head, 1.4426950408889634)
        b_q = b_r * tl.exp2(tl.cumsum(b_w, axis=0) - b_w)  # r_t * decay from 16i to just before t
        b_o = _mm(b_q * tl.exp2(off)[None, :], S, LOW, DOT_PREC)
        b_A = _diag_block(r, k, w, u, tok, valid, i_h, H, w_tok, w_head, K, BC)
        b_o += _mm(b_A, _load_rows(v, tok, valid, i_h, i_v * BV, BV, H * V, V, 1.0), LOW, DOT_PREC)
        mid = tl.zeros([K], dtype=tl.float32)  # decay of the whole sub-blocks strictly between j and i
        for jj in range(i):
            j = i - 1 - jj
            tok_j, valid_j = _rows(bos, eos, i_c * BT + j * BC, BC, REVERSE)
            b_kj = _load_rows(k, tok_j, valid_j, i_h, 0, K, H * K, K, 1.0)
            b_wj = _load_rows(w, tok_j, valid_j, i_h, 0, K, w_tok, w_head, 1.4426950408889634)
            b_vj = _load_rows(v, tok_j, valid_j, i_h, i_v * BV, BV, H * V, V, 1.0)
            suf = tl.cumsum(b_wj, axis=0, reverse=True) - b_wj  # just after s to the end of j
            b_kf = b_kj * tl.exp2(suf + mid[None, :])
            b_o += _mm(_mm(b_q, tl.trans(b_kf), LOW, DOT_PREC), b_vj, LOW, DOT_PREC)
            mid += tl.sum(b_wj, axis=0)
        off += tl.sum(b_w, axis=0)
        o_ptr = o + tok[:, None].to(tl.int64) * (H * V) + i_h * V + offs_v[None, :]
        if DOT_PREC == "emulate":
            b_o = _round_bf16(b_o)  # round to nearest as a GPU does (the interpreter truncates)
        tl.store(o_ptr, b_o.to(o.dtype.element_ty), mask=valid[:, None])


def _vdot_t(
    a,
    b,
    tok_a,
    valid_a,
    tok_b,
    valid_b,
    i_h,
    H,
    V: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``a_rows @ b_rows^T`` `[BC, BC]` over all ``V`` value columns (``a``, ``b``: `[tokens, H, V]`)."""
    acc = tl.zeros([BC, BC], dtype=tl.float32)
    for vb in range(V // BV):
        xa = _load_rows(a, tok_a, valid_a, i_h, vb * BV, BV, H * V, V, 1.0)
        xb = _load_rows(b, tok_b, valid_b, i_h, vb * BV, BV, H * V, V, 1.0)
        acc += _mm(xa, tl.trans(xb), LOW, DOT_PREC)
    return acc


def _rows_state_t(
    x,
    tok,
    valid,
    i_h,
    H,
    st,
    offs_k,
    V: tl.constexpr,
    BV: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``x_rows @ M[offs_k, :]^T`` `[BC, BK]` for a `[K, V]` fp32 matrix ``M`` at ``st``."""
    acc = tl.zeros([BC, BK], dtype=tl.float32)
    for vb in range(V // BV):
        xa = _load_rows(x, tok, valid, i_h, vb * BV, BV, H * V, V, 1.0)
        offs_v = vb * BV + tl.arange(0, BV)
        m = tl.load(st + offs_k[:, None] * V + offs_v[None, :])
        acc += _mm(xa, tl.trans(m), LOW, DOT_PREC)
    return acc


def _diag_grads(b_r, b_k, b_w, b_dA, BC: tl.constexpr):
    """Gradients of r and k (one key slice) through the pair terms of one sub-block, every exponent
    exact: ``dr_t = sum_{s<t} dA[t, s] k_s 2^{e(t, s)}``, ``dk_s = sum_{t>s} dA[t, s] r_t 2^{e(t, s)}``.

    Returned as ``(dr_far, dk_far, dr_adj, dk_adj)``: pairs ``s < t - 1`` and adjacent pairs
    ``s = t - 1`` apart. An adjacent pair has no token between them, so it carries no log-decay and
    drops out of ``dw``; keeping it out of the suffix sums of the ``dw`` identity spares them the
    cancellation of the largest pair terms (factor 1) at strong decays."""
    offs_t = tl.arange(0, BC)
    lower = (offs_t[:, None] > offs_t[None, :])[:, :, None]  # [t, s, 1]: s < t
    adj = (offs_t[:, None] == offs_t[None, :] + 1)[:, :, None]  # s = t - 1
    b_wm = tl.where(lower, b_w[:, None, :], 0.0)
    b_e = tl.where(lower, tl.exp2(tl.cumsum(b_wm, axis=0) - b_wm), 0.0)  # decay strictly between s and t
    b_de = b_dA[:, :, None] * b_e
    b_far = tl.where(adj, 0.0, b_de)
    b_adj = tl.where(adj, b_de, 0.0)
    dr_far = tl.sum(b_far * b_k[None, :, :], axis=1)
    dk_far = tl.sum(b_far * b_r[:, None, :], axis=0)
    return dr_far, dk_far, tl.sum(b_adj * b_k[None, :, :], axis=1), tl.sum(b_adj * b_r[:, None, :], axis=0)


def _chunk_dstate_kernel(
    r,
    w,
    do,
    dstates,
    chunk_map,
    cu_seqlens,
    T,
    NT,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """The chunk's contribution to the gradient of the state entering it: ``(r * 2^{a})^T do``."""
    i_g = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n, i_c, bos, eos = _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN)
    if i_n < 0:
        return
    tok, valid = _rows(bos, eos, i_c * BT, BT, REVERSE)
    b_r = _load_rows(r, tok, valid, i_h, 0, K, H * K, K, 1.0)
    b_w = _load_rows(w, tok, valid, i_h, 0, K, w_tok, w_head, 1.4426950408889634)
    b_do = _load_rows(do, tok, valid, i_h, i_v * BV, BV, H * V, V, 1.0)
    b_a = tl.cumsum(b_w, axis=0) - b_w  # decay from the chunk start to just before t
    b_dg = _mm(tl.trans(b_r * tl.exp2(b_a)), b_do, LOW, DOT_PREC)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    slot = i_g.to(tl.int64) * H + i_h
    tl.store(dstates + slot * (K * V) + offs_k[:, None] * V + offs_v[None, :], b_dg)


def _chunk_dscan_kernel(
    dstates,
    decay,
    ds_final,
    ds0,
    chunk_off,
    NT,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_DS: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    """Against processing order: ``G <- 2^D * G + contribution``, seeded with ``ds_final``; each
    contribution is overwritten with ``G`` leaving its chunk, the last ``G`` is the initial state's."""
    i_kv = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    NVB: tl.constexpr = V // BV
    offs_k = (i_kv // NVB) * BK + tl.arange(0, BK)
    offs_v = (i_kv % NVB) * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * V + offs_v[None, :]
    if IS_VARLEN:
        c0 = tl.load(chunk_off + i_n).to(tl.int64)
        n_chunks = tl.load(chunk_off + i_n + 1).to(tl.int64) - c0
    else:
        c0 = i_n.to(tl.int64) * NT
        n_chunks = NT
    s_offs = i_nh.to(tl.int64) * (K * V) + tile
    if HAS_DS:
        G = tl.load(ds_final + s_offs).to(tl.float32)
    else:
        G = tl.zeros([BK, BV], dtype=tl.float32)
    for cc in range(n_chunks):
        slot = (c0 + n_chunks - 1 - cc) * H + i_h
        p = dstates + slot * (K * V) + tile
        b_dg = tl.load(p)
        b_d = tl.load(decay + slot * K + offs_k)
        tl.store(p, G)  # the gradient of the state leaving the chunk replaces its contribution
        G = tl.exp2(b_d)[:, None] * G + b_dg
    tl.store(ds0 + s_offs, G)


def _store_rows(x, b_x, tok, valid, i_h, col0, n_cols: tl.constexpr, tok_stride, head_stride, ROUND: tl.constexpr):
    """Store the `[rows, n_cols]` fp32 tile ``b_x`` into ``x`` in ``x``'s dtype (valid rows only)."""
    if ROUND:
        b_x = _round_bf16(b_x)  # round to nearest as a GPU does (the interpreter truncates)
    offs = col0 + tl.arange(0, n_cols)
    ptr = x + tok[:, None].to(tl.int64) * tok_stride + i_h * head_stride + offs[None, :]
    tl.store(ptr, b_x.to(x.dtype.element_ty), mask=valid[:, None])


def _chunk_dqk_kernel(
    r,
    k,
    v,
    w,
    u,
    do,
    states,
    dstates,
    decay,
    dr,
    dk,
    dw,
    du_part,
    chunk_map,
    cu_seqlens,
    T,
    NT,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dr, dk, dw of one chunk and key block (every term is separable over key channels), and
    the chunk's partial du. Sub-blocks are visited last to first so that the suffix sums of the
    ``dw`` identity are running `[BK]` vectors."""
    i_g = tl.program_id(0)
    i_kb = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n, i_c, bos, eos = _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN)
    if i_n < 0:
        return
    k0 = i_kb * BK
    offs_k = k0 + tl.arange(0, BK)
    slot = i_g.to(tl.int64) * H + i_h
    st_s = states + slot * (K * V)  # the state entering the chunk
    st_g = dstates + slot * (K * V)  # the gradient of the state leaving it
    rho = tl.zeros([BK], dtype=tl.float32)  # w enters 2^D * S_in: D[i] * sum_j G[i, j] S_in[i, j]
    for vb in range(V // BV):
        tile = offs_k[:, None] * V + vb * BV + tl.arange(0, BV)[None, :]
        rho += tl.sum(tl.load(st_g + tile) * tl.load(st_s + tile), axis=1)
    rho = rho * tl.exp2(tl.load(decay + slot * K + offs_k))
    b_u = tl.load(u + i_h * K + offs_k).to(tl.float32)
    eye = tl.arange(0, BC)[:, None] == tl.arange(0, BC)[None, :]
    corner = (tl.arange(0, BC)[:, None] == 0) & (tl.arange(0, BC)[None, :] == BC - 1)  # [first t, last s]
    ROUND: tl.constexpr = DOT_PREC == "emulate"
    n_sub = tl.cdiv(tl.minimum(eos - bos - i_c * BT, BT), BC)
    tail = tl.zeros([BK], dtype=tl.float32)  # log-decay of the sub-blocks after i
    suf_r = tl.zeros([BK], dtype=tl.float32)  # sum of r * dr over the sub-blocks after i
    suf_c = tl.zeros([BK], dtype=tl.float32)  # sum of k * dk (pair terms) over them
    b_du = tl.zeros([BK], dtype=tl.float32)
    for ii in range(n_sub):
        i = n_sub - 1 - ii
        tok, valid = _rows(bos, eos, i_c * BT + i * BC, BC, REVERSE)
        b_r = _load_rows(r, tok, valid, i_h, k0, BK, H * K, K, 1.0)
        b_k = _load_rows(k, tok, valid, i_h, k0, BK, H * K, K, 1.0)
        b_w = _load_rows(w, tok, valid, i_h, k0, BK, w_tok, w_head, 1.4426950408889634)
        pre = tl.cumsum(b_w, axis=0) - b_w  # sub-block start to just before t
        suf = tl.cumsum(b_w, axis=0, reverse=True) - b_w  # just after s to the sub-block end
        w_i = tl.sum(b_w, axis=0)
        # earlier sub-blocks j < i: the pairs (t in i, s in j) for dr, and the state terms of j
        # (k_j * dk_j^state) for the prefix sum of dw
        b_dr = tl.zeros([BC, BK], dtype=tl.float32)
        b_dr_adj = tl.zeros([BC, BK], dtype=tl.float32)  # adjacent pairs: no decay, no part in dw
        pfx = tl.zeros([BK], dtype=tl.float32)
        mid = tl.zeros([BK], dtype=tl.float32)  # log-decay of the sub-blocks strictly between j and i
        for jj in range(i):
            j = i - 1 - jj
            tok_j, valid_j = _rows(bos, eos, i_c * BT + j * BC, BC, REVERSE)
            b_kj = _load_rows(k, tok_j, valid_j, i_h, k0, BK, H * K, K, 1.0)
            b_wj = _load_rows(w, tok_j, valid_j, i_h, k0, BK, w_tok, w_head, 1.4426950408889634)
            suf_j = tl.cumsum(b_wj, axis=0, reverse=True) - b_wj
            b_dA = _vdot_t(do, v, tok, valid, tok_j, valid_j, i_h, H, V, BV, BC, LOW, DOT_PREC)
            b_kf = b_kj * tl.exp2(suf_j + mid[None, :])
            b_cut = corner & (jj == 0)  # j = i - 1: the adjacent pair (first of i, last of j)
            b_dr += _mm(tl.where(b_cut, 0.0, b_dA), b_kf, LOW, DOT_PREC)
            b_dr_adj += _mm(tl.where(b_cut, b_dA, 0.0), b_kf, LOW, DOT_PREC)
            b_dks = _rows_state_t(v, tok_j, valid_j, i_h, H, st_g, offs_k, V, BV, BC, BK, LOW, DOT_PREC)
            pfx += tl.sum(b_kj * b_dks * tl.exp2(suf_j + (mid + w_i + tail)[None, :]), axis=0)
            mid += tl.sum(b_wj, axis=0)
        b_dr = b_dr * tl.exp2(pre)
        # through the state entering the chunk (mid is now the decay from the chunk start to i)
        b_dss = _rows_state_t(do, tok, valid, i_h, H, st_s, offs_k, V, BV, BC, BK, LOW, DOT_PREC)
        b_dr += b_dss * tl.exp2(pre + mid[None, :])
        # later sub-blocks i2 > i: the pairs (t in i2, s in i) for dk
        b_dk = tl.zeros([BC, BK], dtype=tl.float32)
        b_dk_adj = tl.zeros([BC, BK], dtype=tl.float32)
        mid2 = tl.zeros([BK], dtype=tl.float32)
        for i2 in range(i + 1, n_sub):
            tok2, valid2 = _rows(bos, eos, i_c * BT + i2 * BC, BC, REVERSE)
            b_r2 = _load_rows(r, tok2, valid2, i_h, k0, BK, H * K, K, 1.0)
            b_w2 = _load_rows(w, tok2, valid2, i_h, k0, BK, w_tok, w_head, 1.4426950408889634)
            b_q2 = b_r2 * tl.exp2(tl.cumsum(b_w2, axis=0) - b_w2)
            b_dA2 = _vdot_t(do, v, tok2, valid2, tok, valid, i_h, H, V, BV, BC, LOW, DOT_PREC)
            b_cut = corner & (i2 == i + 1)  # the adjacent pair (first of i2, last of i)
            b_dk += _mm(tl.trans(tl.where(b_cut, 0.0, b_dA2)), b_q2, LOW, DOT_PREC) * tl.exp2(suf + mid2[None, :])
            b_dk_adj += _mm(tl.trans(tl.where(b_cut, b_dA2, 0.0)), b_q2, LOW, DOT_PREC)  # factors are 1
            mid2 += tl.sum(b_w2, axis=0)
        # through the state leaving the chunk (tail: just after the sub-block to the chunk end)
        b_dks = _rows_state_t(v, tok, valid, i_h, H, st_g, offs_k, V, BV, BC, BK, LOW, DOT_PREC)
        b_dks = b_dks * tl.exp2(suf + tail[None, :])
        # the diagonal sub-block, exact exponents
        b_dA = _vdot_t(do, v, tok, valid, tok, valid, i_h, H, V, BV, BC, LOW, DOT_PREC)
        d_r, d_k, d_r_adj, d_k_adj = _diag_grads(b_r, b_k, b_w, b_dA, BC)
        b_dr += d_r
        b_dk += d_k
        # dw_x = sum_{t>x} r dr - sum_{t>=x} k dk^pair + sum_{t<x} k dk^state + rho (bonus and
        # adjacent pairs excluded)
        b_rr = b_r * b_dr
        b_kc = b_k * b_dk
        b_ks = b_k * b_dks
        b_dw = (tl.cumsum(b_rr, axis=0, reverse=True) - b_rr + suf_r[None, :]) - (
            tl.cumsum(b_kc, axis=0, reverse=True) + suf_c[None, :]
        )
        b_dw += tl.cumsum(b_ks, axis=0) - b_ks + pfx[None, :] + rho[None, :]
        suf_r += tl.sum(b_rr, axis=0)
        suf_c += tl.sum(b_kc, axis=0)
        tail += w_i
        # the bonus of the current token
        c_t = tl.sum(tl.where(eye, b_dA, 0.0), axis=1)  # do_t . v_t
        b_dr += b_dr_adj + d_r_adj + c_t[:, None] * b_u[None, :] * b_k
        b_dk += b_dk_adj + d_k_adj + b_dks + c_t[:, None] * b_u[None, :] * b_r
        b_du += tl.sum(c_t[:, None] * b_r * b_k, axis=0)
        _store_rows(dr, b_dr, tok, valid, i_h, k0, BK, H * K, K, ROUND)
        _store_rows(dk, b_dk, tok, valid, i_h, k0, BK, H * K, K, ROUND)
        _store_rows(dw, b_dw, tok, valid, i_h, k0, BK, H * K, K, False)
    tl.store(du_part + slot * K + offs_k, b_du)


def _chunk_dv_kernel(
    r,
    k,
    w,
    u,
    do,
    dstates,
    dv,
    chunk_map,
    cu_seqlens,
    T,
    NT,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    LOW: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dv of one chunk and value block: ``A^T do`` (sub-block pairs as in the forward, the diagonal
    sub-block exact, the bonus) plus ``(k * 2^{g}) G`` through the state leaving the chunk."""
    i_g = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n, i_c, bos, eos = _chunk_coords(chunk_map, cu_seqlens, i_g, NT, T, IS_VARLEN)
    if i_n < 0:
        return
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    slot = i_g.to(tl.int64) * H + i_h
    G = tl.load(dstates + slot * (K * V) + offs_k[:, None] * V + offs_v[None, :])  # leaving the chunk
    n_sub = tl.cdiv(tl.minimum(eos - bos - i_c * BT, BT), BC)
    for j in range(n_sub):
        tok, valid = _rows(bos, eos, i_c * BT + j * BC, BC, REVERSE)
        b_k = _load_rows(k, tok, valid, i_h, 0, K, H * K, K, 1.0)
        b_w = _load_rows(w, tok, valid, i_h, 0, K, w_tok, w_head, 1.4426950408889634)
        suf = tl.cumsum(b_w, axis=0, reverse=True) - b_w
        b_A = _diag_block(r, k, w, u, tok, valid, i_h, H, w_tok, w_head, K, BC)
        b_do = _load_rows(do, tok, valid, i_h, i_v * BV, BV, H * V, V, 1.0)
        b_dv = _mm(tl.trans(b_A), b_do, LOW, DOT_PREC)
        mid = tl.zeros([K], dtype=tl.float32)  # decay of the whole sub-blocks strictly between j and i
        for i in range(j + 1, n_sub):
            tok_i, valid_i = _rows(bos, eos, i_c * BT + i * BC, BC, REVERSE)
            b_ri = _load_rows(r, tok_i, valid_i, i_h, 0, K, H * K, K, 1.0)
            b_wi = _load_rows(w, tok_i, valid_i, i_h, 0, K, w_tok, w_head, 1.4426950408889634)
            b_q = b_ri * tl.exp2(tl.cumsum(b_wi, axis=0) - b_wi)
            b_kf = b_k * tl.exp2(suf + mid[None, :])
            b_doi = _load_rows(do, tok_i, valid_i, i_h, i_v * BV, BV, H * V, V, 1.0)
            b_dv += _mm(_mm(b_kf, tl.trans(b_q), LOW, DOT_PREC), b_doi, LOW, DOT_PREC)
            mid += tl.sum(b_wi, axis=0)
        b_dv += _mm(b_k * tl.exp2(suf + mid[None, :]), G, LOW, DOT_PREC)  # mid: to the chunk end
        _store_rows(dv, b_dv, tok, valid, i_h, i_v * BV, BV, H * V, V, DOT_PREC == "emulate")


def _configs(triton):
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=nw, num_stages=ns) for nw in (4, 8) for ns in (1, 2)]


@functools.cache
def _kernels():
    """The kernels (compiled, or interpreted under ``TRITON_INTERPRET=1``), built on first use:
    forward ``(state, scan, out)`` and backward ``(dstate, dscan, dqk, dv)``."""
    helpers = ("_chunk_coords", "_rows", "_load_rows", "_round_bf16", "_mm", "_diag_block")
    helpers += ("_vdot_t", "_rows_state_t", "_diag_grads", "_store_rows")
    triton = bind_triton(globals(), helpers)
    no_spec = ["T", "NT"]

    def tuned(fn):
        return triton.autotune(_configs(triton), key=["K", "V"])(triton.jit(fn, do_not_specialize=no_spec))

    state = tuned(_chunk_state_kernel)
    scan = triton.jit(_chunk_scan_kernel, do_not_specialize=["NT"])
    out = tuned(_chunk_output_kernel)
    dstate = tuned(_chunk_dstate_kernel)
    dscan = triton.jit(_chunk_dscan_kernel, do_not_specialize=["NT"])
    dqk = tuned(_chunk_dqk_kernel)
    dv = tuned(_chunk_dv_kernel)
    return (state, scan, out), (dstate, dscan, dqk, dv)


def _chunk_map(cu_seqlens: Tensor, n_slots: int) -> tuple[Tensor, Tensor]:
    """Per global chunk ``(sequence, chunk within it)`` `[n_slots, 2]` int32 (sequence -1 past the
    last chunk) and each sequence's first chunk `[N+1]` int32, by torch ops on the device."""
    cu = cu_seqlens.to(torch.int64)
    counts = (cu[1:] - cu[:-1] + CHUNK64 - 1) // CHUNK64
    chunk_off = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    g = torch.arange(n_slots, device=cu.device)
    seq = torch.searchsorted(chunk_off[1:], g, right=True)
    n = counts.numel()
    local = g - chunk_off[seq.clamp(max=n - 1)]
    seq = torch.where(seq < n, seq, -1)
    return torch.stack([seq, local], 1).to(torch.int32).contiguous(), chunk_off.to(torch.int32)


def wkv6_chunk64_forward(
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
    """Chunk-parallel WKV-6 forward in Triton, 64-token chunks (no gradient, no argument checks
    beyond the dtype; see ``ops.wkv6``).

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. Reference:
    ``wkv6_reference``; the design is in this module's docstring.

    Shapes:
        r, k, w: `[B, T, H, K]` (``w``, the log-decay ``<= 0``, may be a broadcast view); v:
        `[B, T, H, V]`; u: `[H, K]`; state: `[N, H, K, V]` fp32 with ``N = B``, or the number of
        sequences when ``cu_seqlens`` (int `[N+1]`, ``B = 1``) packs several. K and V are powers
        of two in 16..128. Returns o `[B, T, H, V]` in ``v.dtype`` and the final states
        `[N, H, K, V]` fp32.

    Raises:
        ValueError: for fp64 inputs (the kernels have no fp64 path; use ``wkv6_reference`` or
            ``wkv6_chunked``) or another dtype than fp32, bf16, fp16.
    """
    _check_dtype("wkv6_chunk64_forward", r)
    B, T, H, K = r.shape
    V = v.shape[-1]
    p = _Plan(r, k, v, w, cu_seqlens)
    o = torch.empty(v.shape, dtype=v.dtype, device=r.device)
    if T == 0:
        s_final = state.float().clone() if state is not None else torch.zeros(p.N, H, K, V, device=r.device)
        return o, s_final
    (_, _, out_k), _ = _kernels()
    states, _, s_final = _run_states(p, state, reverse)
    f = p.f
    wrap_triton(out_k)[(p.n_slots, V // p.BV, H)](
        f.r,
        f.k,
        f.v,
        f.w,
        u.contiguous(),
        states,
        o,
        p.chunk_map,
        cu_seqlens,
        T,
        p.NT,
        H,
        f.w_tok,
        f.w_head,
        K=K,
        V=V,
        BT=CHUNK64,
        BC=SUB,
        BV=p.BV,
        REVERSE=reverse,
        IS_VARLEN=p.is_varlen,
        LOW=p.low,
        DOT_PREC=p.prec,
    )
    return o, s_final


def _check_dtype(name: str, r: Tensor) -> None:
    if r.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"{name} supports float32, bfloat16 and float16 inputs, got {r.dtype} "
            "(for float64 use wkv6_reference or wkv6_chunked)"
        )


class _Plan:
    """Launch parameters shared by the forward and the backward (shapes and the chunk map)."""

    def __init__(self, r: Tensor, k: Tensor, v: Tensor, w: Tensor, cu_seqlens: Tensor | None):
        B, T, H, K = r.shape
        self.f = Flat(r, k, v, w, cu_seqlens)
        self.shape = (B, T, H, K, v.shape[-1])
        self.N = self.f.num_seqs
        self.NT = -(-T // CHUNK64)
        self.is_varlen = cu_seqlens is not None
        self.chunk_map = self.chunk_off = None
        if cu_seqlens is None:
            self.n_slots = B * self.NT
        else:
            self.n_slots = T // CHUNK64 + self.N  # >= sum of ceil(len / 64): known from shapes alone
            if T > 0:
                self.chunk_map, self.chunk_off = _chunk_map(cu_seqlens, self.n_slots)
        self.BV = _block_v(K, v.shape[-1])
        self.low = r.dtype == torch.bfloat16
        self.prec = "ieee" if r.dtype == torch.float32 else "tf32"
        if self.low and interpreting():
            self.prec = "emulate"  # see _mm: the interpreter's bf16 tl.dot is wrong


def _run_states(p: _Plan, state: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Phases (a) and (b): the state entering every chunk `[n_slots, H, K, V]`, each chunk's total
    log2-decay `[n_slots, H, K]` and the final states `[N, H, K, V]`, all fp32."""
    (state_k, scan_k, _), _ = _kernels()
    B, T, H, K, V = p.shape
    f = p.f
    dev = f.r.device
    states = torch.empty(p.n_slots, H, K, V, dtype=torch.float32, device=dev)
    decay = torch.empty(p.n_slots, H, K, dtype=torch.float32, device=dev)
    s_final = torch.empty(p.N, H, K, V, dtype=torch.float32, device=dev)
    s0 = state.float().contiguous() if state is not None else None
    wrap_triton(state_k)[(p.n_slots, V // p.BV, H)](
        f.k,
        f.v,
        f.w,
        states,
        decay,
        p.chunk_map,
        f.cu_seqlens,
        T,
        p.NT,
        H,
        f.w_tok,
        f.w_head,
        K=K,
        V=V,
        BT=CHUNK64,
        BV=p.BV,
        REVERSE=reverse,
        IS_VARLEN=p.is_varlen,
        LOW=p.low,
        DOT_PREC=p.prec,
    )
    bk, bv = min(K, _SCAN_BLOCK), min(V, _SCAN_BLOCK)
    wrap_triton(scan_k)[((K // bk) * (V // bv), p.N * H)](
        states,
        decay,
        s0,
        s_final,
        p.chunk_off,
        p.NT,
        H,
        K=K,
        V=V,
        BK=bk,
        BV=bv,
        HAS_S0=s0 is not None,
        IS_VARLEN=p.is_varlen,
        num_warps=4,
    )
    return states, decay, s_final


def wkv6_chunk64_backward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    do: Tensor,
    ds_final: Tensor | None,
    *,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Chunk-parallel WKV-6 backward in Triton, 64-token chunks (no argument checks beyond the dtype).

    Given the forward's inputs, the cotangent ``do`` of ``o`` `[B, T, H, V]` and ``ds_final`` of the
    final states (`[N, H, K, V]`, or ``None`` for zero), returns ``(dr, dk, dv, dw, du, dstate)``:
    dr, dk, dv in the input dtypes, dw `[B, T, H, K]` and du `[H, K]` fp32, dstate `[N, H, K, V]`
    fp32 (``None`` when ``state`` is ``None``). ``w`` may be a broadcast view; its gradient is
    per token (sum it back yourself). Nothing is read on the host.

    Launches: phases (a) and (b) of the forward again (the state entering every chunk; nothing
    per 16 tokens is stored), then

    (d) ``_chunk_dstate_kernel``, grid (chunk, value block, head): the chunk's contribution
        ``(r * 2^{a})^T do`` to the gradient of the state entering it (``a``: decay from the chunk
        start to just before ``t``);
    (e) ``_chunk_dscan_kernel``: against processing order, ``G <- 2^D G + contribution`` seeded
        with ``ds_final``, writing the gradient ``G`` of the state *leaving* each chunk in place;
        its last value is ``dstate``;
    (f) ``_chunk_dqk_kernel``, grid (chunk, key block of 16, head): dr, dk, dw and a per-chunk
        partial du. Every term is separable over key channels (``dA = do v^T`` is summed over all
        value columns inside the program), so dr, dk and dw are written complete, not as partials
        over value blocks. Pairs of sub-blocks ``j < i`` use ``tl.dot`` with the forward's boundary
        reference points (``dr_i += (dA_ij (k_j 2^{suf + mid})) * 2^{pre}``,
        ``dk_j += (dA_ij^T (r_i 2^{pre})) * 2^{suf + mid}``), the diagonal sub-block every pair's
        exponent exactly. ``dw`` by the suffix-sum identity of ``README.md`` (chunked backward),
        evaluated without cancelling the state terms: ``dw_x = sum_{t>x} r dr - sum_{t>=x} k dk^pair
        + sum_{t<x} k dk^state + 2^D sum_j G S_in`` (bonus terms excluded), fp32. Adjacent pairs
        (``s = t - 1``, no log-decay between them) are left out of these sums and added to dr, dk
        apart: they are the largest pair terms at strong decays and would only cancel;
    (g) ``_chunk_dv_kernel``, grid (chunk, value block, head): ``dv = A^T do + (k 2^{g}) G``.

    ``du`` is the only sum of partials: one `[K]` vector per (chunk, head), summed by torch.
    Precision of the products as in the forward (bf16 operands for bf16 inputs, emulated under
    the interpreter; fp32 ``ieee`` for fp32).

    Raises:
        ValueError: for fp64 inputs or another dtype than fp32, bf16, fp16.
    """
    _check_dtype("wkv6_chunk64_backward", r)
    *grads, ds0 = _backward_all(r, k, v, w, u, state, do, ds_final, reverse, cu_seqlens)
    return (*grads, ds0 if state is not None else None)


def _backward_all(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    do: Tensor,
    ds_final: Tensor | None,
    reverse: bool,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``wkv6_chunk64_backward`` with the initial state's gradient always returned (fp32)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    p = _Plan(r, k, v, w, cu_seqlens)
    dev = r.device
    if T == 0:
        ds0 = ds_final.float().clone() if ds_final is not None else torch.zeros(p.N, H, K, V, device=dev)
        return (
            torch.zeros_like(r),
            torch.zeros_like(k),
            torch.zeros_like(v),
            torch.zeros(r.shape, dtype=torch.float32, device=dev),
            torch.zeros(u.shape, dtype=torch.float32, device=dev),
            ds0,
        )
    _, (dstate_k, dscan_k, dqk_k, dv_k) = _kernels()
    states, decay, _ = _run_states(p, state, reverse)
    f = p.f
    do = do.contiguous().view(B * T, H, V)
    u = u.contiguous()
    dstates = torch.empty(p.n_slots, H, K, V, dtype=torch.float32, device=dev)
    common = dict(K=K, V=V, BT=CHUNK64, REVERSE=reverse, IS_VARLEN=p.is_varlen, LOW=p.low, DOT_PREC=p.prec)
    wrap_triton(dstate_k)[(p.n_slots, V // p.BV, H)](
        f.r, f.w, do, dstates, p.chunk_map, f.cu_seqlens, T, p.NT, H, f.w_tok, f.w_head, BV=p.BV, **common
    )
    ds = ds_final.float().contiguous() if ds_final is not None else None
    ds0 = torch.empty(p.N, H, K, V, dtype=torch.float32, device=dev)
    bk, bv = min(K, _SCAN_BLOCK), min(V, _SCAN_BLOCK)
    wrap_triton(dscan_k)[((K // bk) * (V // bv), p.N * H)](
        dstates,
        decay,
        ds,
        ds0,
        p.chunk_off,
        p.NT,
        H,
        K=K,
        V=V,
        BK=bk,
        BV=bv,
        HAS_DS=ds is not None,
        IS_VARLEN=p.is_varlen,
        num_warps=4,
    )
    dr = torch.empty(B * T, H, K, dtype=r.dtype, device=dev)
    dk = torch.empty(B * T, H, K, dtype=k.dtype, device=dev)
    dv = torch.empty(B * T, H, V, dtype=v.dtype, device=dev)
    dw = torch.empty(B * T, H, K, dtype=torch.float32, device=dev)
    du_part = torch.zeros(p.n_slots, H, K, dtype=torch.float32, device=dev)  # unused slots stay 0
    wrap_triton(dqk_k)[(p.n_slots, K // SUB, H)](
        f.r,
        f.k,
        f.v,
        f.w,
        u,
        do,
        states,
        dstates,
        decay,
        dr,
        dk,
        dw,
        du_part,
        p.chunk_map,
        f.cu_seqlens,
        T,
        p.NT,
        H,
        f.w_tok,
        f.w_head,
        BC=SUB,
        BK=SUB,
        BV=p.BV,
        **common,
    )
    wrap_triton(dv_k)[(p.n_slots, V // p.BV, H)](
        f.r,
        f.k,
        f.w,
        u,
        do,
        dstates,
        dv,
        p.chunk_map,
        f.cu_seqlens,
        T,
        p.NT,
        H,
        f.w_tok,
        f.w_head,
        BC=SUB,
        BV=p.BV,
        **common,
    )
    return dr.view(r.shape), dk.view(k.shape), dv.view(v.shape), dw.view(B, T, H, K), du_part.sum(0), ds0


def _op_forward(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    return wkv6_chunk64_forward(r, k, v, w, u, state, reverse=reverse, cu_seqlens=cu_seqlens)


def _op_backward(
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
    _check_dtype("wkv6_chunk64_backward", r)
    dr, dk, dv, dw, du, ds0 = _backward_all(r, k, v, w, u, state, do, ds_final, reverse, cu_seqlens)
    return dr, dk, dv, dw.to(w.dtype), du.to(u.dtype), ds0


@functools.cache
def triton_chunk64_ops():
    """The forward and backward ``torch.library.triton_op``s, registered on first use (registering
    imports Triton, which ``import rwkvblocks`` must not do).

    ``rwkvblocks::wkv6_triton_chunk64(r, k, v, w, u, state, cu_seqlens, reverse) -> (o, final_state)``
    is differentiable through ``rwkvblocks::wkv6_triton_chunk64_backward(..., do, ds_final, reverse)
    -> (dr, dk, dv, dw, du, dstate)`` (dw, du in the dtypes of w, u; ``dstate`` fp32 `[N, H, K, V]`
    even without an initial state). Every kernel is launched through ``wrap_triton``.
    """
    return register_wkv_ops("wkv6_triton_chunk64", _op_forward, _op_backward)
