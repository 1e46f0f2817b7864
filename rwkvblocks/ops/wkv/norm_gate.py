"""TimeMix's epilogue in one pass: per-head GroupNorm of the WKV output, its affine, and the ``silu`` gate.

``wkv6_norm_gate(y, g, weight, bias, eps)`` computes, for ``y`` `[B, T, H, K]` and the gate's pre-activation
``g`` `[B, T, H*K]`::

    n = (y - mean_head(y)) / sqrt(var_head(y) + eps) * weight + bias      # GroupNorm(H, H*K) per token
    out = n * silu(g)                                                      # `[B, T, H*K]`, y's dtype

what ``TimeMix`` does in PyTorch as five or six passes over `[B, T, C]` (``group_norm``, its dtype casts,
``silu`` and the product). Statistics are fp32 (upstream runs GroupNorm in fp32 for low-precision models).

Backends: ``"triton"`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``): one kernel per direction,
a program per (block of ``ROWS`` tokens, head); the backward writes ``dy`` and ``dg`` in the inputs' dtype
and per-program fp32 partial sums of ``dweight`` / ``dbias`` (`[programs, C]`, summed after); and
``"reference"``: the PyTorch composition (any device, any dtype, autograd by PyTorch). ``backend=None`` picks
Triton for CUDA tensors it can take and the reference elsewhere (CPU tensors run the Triton interpreter only when
``backend="triton"`` is named). ``TimeMix`` does not call it yet: the kernels have been verified under the
interpreter only, and switching the block over waits for a run on a GPU (``pytest -m gpu``).

Example:
    >>> import torch
    >>> y, g = torch.randn(1, 3, 2, 16), torch.randn(1, 3, 32)
    >>> out = wkv6_norm_gate(y, g, torch.ones(32), torch.zeros(32), backend="reference")
    >>> out.shape
    torch.Size([1, 3, 32])
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ._triton_common import bind_triton, interpreting, triton_probe

__all__ = ["norm_gate_reference", "wkv6_norm_gate"]

ROWS = 16  # (token, head) rows per program


def norm_gate_reference(y: Tensor, g: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The PyTorch composition (``TimeMix``'s own code path): GroupNorm in fp32, then the gate in ``y``'s dtype."""
    B, T, H, K = y.shape
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    n = F.group_norm(y.reshape(B * T, H * K).to(acc), H, weight.to(acc), bias.to(acc), eps)
    return n.view(B, T, H * K).to(y.dtype) * F.silu(g)


def _check(y: Tensor, g: Tensor, weight: Tensor, bias: Tensor) -> None:
    if y.dim() != 4:
        raise ValueError(f"wkv6_norm_gate: y must be [B, T, H, K], got shape {tuple(y.shape)}")
    B, T, H, K = y.shape
    if tuple(g.shape) != (B, T, H * K):
        raise ValueError(
            f"wkv6_norm_gate: g must have shape {(B, T, H * K)} (y is {tuple(y.shape)}), got {tuple(g.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if tuple(t.shape) != (H * K,):
            raise ValueError(f"wkv6_norm_gate: {name} must have shape ({H * K},), got {tuple(t.shape)}")
    if g.dtype != y.dtype:
        raise ValueError(f"wkv6_norm_gate: g's dtype {g.dtype} differs from y's {y.dtype}")
    if y.device != g.device or weight.device != y.device or bias.device != y.device:
        raise ValueError("wkv6_norm_gate: y, g, weight and bias must be on one device")


def _triton_reasons(y: Tensor) -> list[str]:
    reasons = []
    probe = triton_probe()
    if probe:
        reasons.append(probe)
    if y.device.type != "cuda" and not (y.device.type == "cpu" and interpreting()):
        reasons.append(f"needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got {y.device.type}")
    if y.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"dtype {y.dtype} is not supported (float32, bfloat16, float16)")
    K = y.shape[-1]
    if K < 16 or K > 256 or K & (K - 1):
        reasons.append(f"head_dim K = {K} must be a power of two in 16..256")
    return reasons


def wkv6_norm_gate(
    y: Tensor, g: Tensor, weight: Tensor, bias: Tensor, eps: float = 64e-5, *, backend: str | None = None
) -> Tensor:
    """``GroupNorm_H(y) * weight + bias`` times ``silu(g)``, fused (see the module docstring).

    Args:
        y: WKV output `[B, T, H, K]`.
        g: Gate pre-activation `[B, T, H*K]`, ``y``'s dtype.
        weight, bias: GroupNorm affine `[H*K]`.
        eps: GroupNorm epsilon (RWKV-6: ``64e-5``, i.e. ``1e-5 * head_size_divisor ** 2``).
        backend: ``"triton"``, ``"reference"`` or ``None`` (Triton for CUDA tensors it can take).

    Returns:
        `[B, T, H*K]` in ``y``'s dtype.

    Raises:
        ValueError: a shape, dtype or device that does not fit, an unknown backend, or ``backend="triton"`` where
            it cannot run (the reasons named).
    """
    _check(y, g, weight, bias)
    if backend not in (None, "triton", "reference"):
        raise ValueError(f"wkv6_norm_gate: unknown backend {backend!r}; expected 'triton', 'reference' or None")
    reasons = _triton_reasons(y) if backend != "reference" else ["reference asked for"]
    if backend == "triton" and reasons:
        raise ValueError("wkv6_norm_gate: the triton backend cannot run: " + "; ".join(reasons))
    if backend is None and y.device.type != "cuda":  # the interpreter only when asked for by name
        reasons.append("CPU tensors take the reference unless backend='triton'")
    if reasons or y.numel() == 0:
        return norm_gate_reference(y, g, weight, bias, eps)
    return _NormGate.apply(y, g, weight, bias, float(eps))


tl = None  # triton.language, bound by _kernels()


def _norm_gate_fwd(y, g, w, b, out, mean, rstd, tokens, H, eps, K: tl.constexpr, ROWS: tl.constexpr):
    pid, h = tl.program_id(0), tl.program_id(1)
    offs_t = pid * ROWS + tl.arange(0, ROWS)
    offs_k = tl.arange(0, K)
    row = offs_t.to(tl.int64) * H + h  # (token, head) rows of the contiguous [tokens * H, K] layout
    mask = offs_t[:, None] < tokens
    ptr = row[:, None] * K + offs_k[None, :]
    x = tl.load(y + ptr, mask=mask, other=0.0).to(tl.float32)
    mu = tl.sum(x, axis=1) / K
    xc = x - mu[:, None]
    r = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / K + eps)
    n = xc * r[:, None] * tl.load(w + h * K + offs_k).to(tl.float32)[None, :]
    n += tl.load(b + h * K + offs_k).to(tl.float32)[None, :]
    gate = tl.load(g + ptr, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + ptr, (n * gate / (1.0 + tl.exp(-gate))).to(out.dtype.element_ty), mask=mask)
    tl.store(mean + row, mu, mask=offs_t < tokens)
    tl.store(rstd + row, r, mask=offs_t < tokens)


def _norm_gate_bwd(y, g, w, b, mean, rstd, dout, dy, dg, dw, db, tokens, H, K: tl.constexpr, ROWS: tl.constexpr):
    pid, h = tl.program_id(0), tl.program_id(1)
    offs_t = pid * ROWS + tl.arange(0, ROWS)
    offs_k = tl.arange(0, K)
    row = offs_t.to(tl.int64) * H + h
    mask = offs_t[:, None] < tokens
    ptr = row[:, None] * K + offs_k[None, :]
    x = tl.load(y + ptr, mask=mask, other=0.0).to(tl.float32)
    mu = tl.load(mean + row, mask=offs_t < tokens, other=0.0)
    r = tl.load(rstd + row, mask=offs_t < tokens, other=0.0)
    xhat = (x - mu[:, None]) * r[:, None]
    wt = tl.load(w + h * K + offs_k).to(tl.float32)[None, :]
    n = xhat * wt + tl.load(b + h * K + offs_k).to(tl.float32)[None, :]
    gate = tl.load(g + ptr, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-gate))
    do = tl.load(dout + ptr, mask=mask, other=0.0).to(tl.float32)
    tl.store(dg + ptr, (do * n * sig * (1.0 + gate * (1.0 - sig))).to(dg.dtype.element_ty), mask=mask)
    dn = do * gate * sig  # 0 on masked rows (do = 0 there)
    dxhat = dn * wt
    c1 = tl.sum(dxhat * xhat, axis=1) / K
    c2 = tl.sum(dxhat, axis=1) / K
    tl.store(dy + ptr, ((dxhat - xhat * c1[:, None] - c2[:, None]) * r[:, None]).to(dy.dtype.element_ty), mask=mask)
    part = pid.to(tl.int64) * H * K + h * K + offs_k  # this program's share of dweight / dbias
    tl.store(dw + part, tl.sum(dn * xhat, axis=0))
    tl.store(db + part, tl.sum(dn, axis=0))


@functools.cache
def _kernels():
    triton = bind_triton(globals(), ())
    return triton.jit(_norm_gate_fwd), triton.jit(_norm_gate_bwd)


class _NormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, g, weight, bias, eps):
        fwd, _ = _kernels()
        B, T, H, K = y.shape
        yc, gc = y.contiguous(), g.contiguous()
        tokens = B * T
        out = torch.empty_like(gc)
        mean = torch.empty(tokens * H, device=y.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        grid = (_cdiv(tokens, ROWS), H)
        fwd[grid](yc, gc, weight.contiguous(), bias.contiguous(), out, mean, rstd, tokens, H, eps, K=K, ROWS=ROWS)
        ctx.save_for_backward(yc, gc, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, dout):
        _, bwd = _kernels()
        y, g, weight, bias, mean, rstd = ctx.saved_tensors
        B, T, H, K = y.shape
        tokens = B * T
        programs = _cdiv(tokens, ROWS)
        dy, dg = torch.empty_like(y), torch.empty_like(g)
        dw = torch.empty(programs, H * K, device=y.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        bwd[(programs, H)](
            y, g, weight.contiguous(), bias.contiguous(), mean, rstd, dout.contiguous(), dy, dg, dw, db, tokens, H,
            K=K, ROWS=ROWS,
        )  # fmt: skip
        return dy, dg, dw.sum(0).to(weight.dtype), db.sum(0).to(bias.dtype), None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
