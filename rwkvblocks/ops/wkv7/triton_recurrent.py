"""Fused recurrent RWKV-7 WKV in Triton for decoding: one token at a time, forward only.

One program owns one (sequence, head, block of ``BV`` value rows); its `[BV, K]` block of the state lives
in fp32 registers for the whole call and is read from and written to memory once. Rows of the state are
independent (``z_t[i] = S[i, :] a_t`` needs only row ``i``), so blocks of value rows need no communication.
Each token costs one read of r, w, k, v, a, b and one write of o. The only exponent is ``exp(w_t) <= 1``.
There is no backward: the dispatcher refuses this backend when a gradient is required.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.library import wrap_triton

from ..wkv._triton_common import bind_triton

__all__ = ["flat_inputs", "triton_recurrent_op", "wkv7_triton_recurrent"]

tl = None  # triton.language, bound by _kernel() (Triton is imported lazily)
_seq_bounds = None  # the shared @triton.jit helper, bound with tl by bind_triton()


def _block_v(V: int) -> int:
    """Value rows per program: small blocks give one-token decoding more programs."""
    return min(V, 32)


def flat_inputs(*xs: Tensor) -> list[Tensor]:
    """Each `[B, T, H, D]` input as a contiguous `[B*T, H, D]` token stream (a view when already contiguous)."""
    return [x.contiguous().view(-1, x.shape[2], x.shape[3]) for x in xs]


def _wkv7_recurrent_fwd_kernel(
    r,
    w,
    k,
    v,
    a,
    b,
    s0,
    o,
    s_final,
    cu_seqlens,
    T,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
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
    s_offs = i_nh.to(tl.int64) * (V * K) + offs_v[:, None] * K + offs_k[None, :]  # [V, K] per head
    if HAS_S0:
        S = tl.load(s0 + s_offs).to(tl.float32)
    else:
        S = tl.zeros([BV, K], dtype=tl.float32)
    for tok in range(bos, eos):
        kk = tok * (H * K) + i_h * K + offs_k
        b_r = tl.load(r + kk).to(tl.float32)
        b_w = tl.load(w + kk).to(tl.float32)
        b_k = tl.load(k + kk).to(tl.float32)
        b_a = tl.load(a + kk).to(tl.float32)
        b_b = tl.load(b + kk).to(tl.float32)
        vv = tok * (H * V) + i_h * V + offs_v
        b_v = tl.load(v + vv).to(tl.float32)
        sa = tl.sum(S * b_a[None, :], axis=1)  # [BV]: S_{t-1} a_t
        S = S * tl.exp(b_w)[None, :] + sa[:, None] * b_b[None, :] + b_v[:, None] * b_k[None, :]
        b_o = tl.sum(S * b_r[None, :], axis=1)
        tl.store(o + vv, b_o.to(o.dtype.element_ty))
    tl.store(s_final + s_offs, S)


@functools.cache
def _kernel():
    """The compiled (or, under ``TRITON_INTERPRET=1``, interpreted) kernel."""
    return bind_triton(globals(), ()).jit(_wkv7_recurrent_fwd_kernel)


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
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BV = _block_v(V)
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # written as the flat [B*T, H, V] stream
    s_final = torch.empty(N, H, V, K, dtype=torch.float32, device=r.device)
    s0 = state.contiguous() if state is not None else None
    wrap_triton(_kernel())[(V // BV, N * H)](
        *flat_inputs(r, w, k, v, a, b),
        s0,
        o,
        s_final,
        cu_seqlens,
        T,
        H,
        K=K,
        V=V,
        BV=BV,
        HAS_S0=s0 is not None,
        IS_VARLEN=cu_seqlens is not None,
        num_warps=2,
    )
    return o, s_final


@functools.cache
def triton_recurrent_op():
    """``rwkvblocks::wkv7_triton_recurrent(r, w, k, v, a, b, state, cu_seqlens) -> (o, final_state)``, a
    ``torch.library.triton_op`` registered on first use (registering imports Triton). Forward only."""
    from torch.library import triton_op

    return triton_op("rwkvblocks::wkv7_triton_recurrent", mutates_args=())(_forward)


def wkv7_triton_recurrent(
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
    """Token-by-token RWKV-7 WKV in one Triton kernel, forward only (no argument checks; see ``ops.wkv7``).

    For decoding and other short inputs without gradients. Runs on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``. Registered as the Triton op ``rwkvblocks::wkv7_triton_recurrent``.
    Reference: ``wkv7_reference``.

    Shapes:
        r, w, k, a, b: `[B, T, H, K]`; v: `[B, T, H, V]`; state: `[N, H, V, K]` fp32 with ``N = B``, or the
        number of sequences when ``cu_seqlens`` (int `[N+1]`, ``B = 1``) packs several. K and V are powers
        of two in 16..128; inputs fp32, bf16 or fp16. Returns o `[B, T, H, V]` in ``v.dtype`` and the final
        states `[N, H, V, K]` fp32 (neither tracks gradients).
    """
    detached = (x.detach() if x is not None else None for x in (r, w, k, v, a, b, state))
    return triton_recurrent_op()(*detached, cu_seqlens)
