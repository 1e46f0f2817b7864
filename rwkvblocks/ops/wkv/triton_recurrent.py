"""Fused recurrent WKV in Triton for decoding: one token at a time, forward only.

One program owns one (sequence, head, block of ``BV`` value columns); its `[K, BV]` state lives
in fp32 registers for the whole call and is read from and written to memory once. Each token
costs one read of r, k, v, w and one write of o: for one-token decoding the kernel is bound by
moving the state. The only exponent is ``exp(w_t) <= 1``. ``reverse=True`` walks the tokens from
the end (index arithmetic, no flipped copy). There is no backward: the dispatcher refuses this
backend when a gradient is required.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.library import wrap_triton

from ._triton_common import Flat, bind_triton

__all__ = ["triton_recurrent_op", "wkv6_triton_recurrent"]

tl = None  # triton.language, bound by _kernel() (Triton is imported lazily)
_seq_bounds = None  # the shared @triton.jit helper, bound with tl by bind_triton()


def _block_v(V: int) -> int:
    """Value columns per program: small blocks give one-token decoding more programs."""
    return min(V, 32)


def _wkv6_recurrent_fwd_kernel(
    r,
    k,
    v,
    w,
    u,
    s0,
    o,
    s_final,
    cu_seqlens,
    T,
    H,
    w_tok,
    w_head,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_S0: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, eos = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    offs_k = tl.arange(0, K)
    offs_v = i_v * BV + tl.arange(0, BV)
    s_offs = i_nh.to(tl.int64) * (K * V) + offs_k[:, None] * V + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0 + s_offs).to(tl.float32)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    b_u = tl.load(u + i_h * K + offs_k).to(tl.float32)
    for p in range(eos - bos):
        if REVERSE:
            tok = eos - 1 - p
        else:
            tok = bos + p
        kk = tok * (H * K) + i_h * K + offs_k
        b_r = tl.load(r + kk).to(tl.float32)
        b_k = tl.load(k + kk).to(tl.float32)
        b_w = tl.load(w + tok * w_tok + i_h * w_head + offs_k).to(tl.float32)
        vv = tok * (H * V) + i_h * V + offs_v
        b_v = tl.load(v + vv).to(tl.float32)
        b_o = tl.sum(b_r[:, None] * S, axis=0) + tl.sum(b_r * b_u * b_k) * b_v
        tl.store(o + vv, b_o.to(o.dtype.element_ty))
        S = tl.exp(b_w)[:, None] * S + b_k[:, None] * b_v[None, :]
    tl.store(s_final + s_offs, S)


@functools.cache
def _kernel():
    """The compiled (or, under ``TRITON_INTERPRET=1``, interpreted) kernel."""
    return bind_triton(globals(), ()).jit(_wkv6_recurrent_fwd_kernel)


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
    _, T, H, K, V = f.shape
    BV = _block_v(V)
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # written as the flat [B*T, H, V] stream
    s_final = torch.empty(f.num_seqs, H, K, V, dtype=torch.float32, device=r.device)
    s0 = state.contiguous() if state is not None else None
    wrap_triton(_kernel())[(V // BV, f.num_seqs * H)](
        f.r,
        f.k,
        f.v,
        f.w,
        u.contiguous(),
        s0,
        o,
        s_final,
        f.cu_seqlens,
        T,
        H,
        f.w_tok,
        f.w_head,
        K=K,
        V=V,
        BV=BV,
        REVERSE=reverse,
        HAS_S0=s0 is not None,
        IS_VARLEN=cu_seqlens is not None,
        num_warps=2,
    )
    return o, s_final


@functools.cache
def triton_recurrent_op():
    """``rwkvblocks::wkv6_triton_recurrent(r, k, v, w, u, state, cu_seqlens, reverse) -> (o, final_state)``,
    a ``torch.library.triton_op`` registered on first use (registering imports Triton). Forward only."""
    from torch.library import triton_op

    return triton_op("rwkvblocks::wkv6_triton_recurrent", mutates_args=())(_forward)


def wkv6_triton_recurrent(
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
    """Token-by-token WKV in one Triton kernel, forward only (no argument checks; see ``ops.wkv6``).

    For decoding and other short inputs without gradients. Runs on CUDA tensors, or on CPU
    tensors under ``TRITON_INTERPRET=1``. Registered as the Triton op
    ``rwkvblocks::wkv6_triton_recurrent``. Reference: ``wkv6_reference``.

    Shapes:
        r, k, w: `[B, T, H, K]` (``w`` may be a broadcast view); v: `[B, T, H, V]`; u: `[H, K]`;
        state: `[N, H, K, V]` fp32 with ``N = B``, or the number of sequences when
        ``cu_seqlens`` (int `[N+1]`, ``B = 1``) packs several. K and V are powers of two in
        16..128; inputs fp32, bf16 or fp16. Returns o `[B, T, H, V]` in ``r.dtype`` and the
        final states `[N, H, K, V]` fp32 (neither tracks gradients).
    """
    detached = (x.detach() if x is not None else None for x in (r, k, v, w, u, state))
    return triton_recurrent_op()(*detached, cu_seqlens, reverse)
