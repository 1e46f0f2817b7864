"""RWKV time mixing (the token mixer): token shift, r/k/v/g projections, WKV, GroupNorm, output.

One class serves RWKV-5 (x052) and RWKV-6 (x060): the two differ only in the injected token shift
(static or data-dependent) and decay (static per channel, or data-dependent per token), which is
also what decides between ``ops.wkv5`` and ``ops.wkv6``. ``TimeMix.rwkv5`` / ``TimeMix.rwkv6``
build the released configurations with BlinkDL's from-scratch initialisation (DESIGN.md §4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._init import TIME_MIX_RAMPS, decay_ramp, fill_, layer_ratios, orthogonal_, reset_injected, uniform_
from .ops import wkv5, wkv6
from .state import TimeMixState
from .token_shift import DataDependentTokenShift, TokenShift
from .token_shift import _run_shift as _shift

__all__ = ["DataDependentDecay", "StaticDecay", "TimeMix"]

GROUP_NORM_EPS = 64e-5  # BlinkDL: ln_x eps 1e-5 on y / 8, i.e. 64e-5 on y


class StaticDecay(nn.Module):
    """RWKV-5 decay: one learned log-log decay per head and channel, ``w = -exp(time_decay)``.

    Shapes:
        forward(x_w=None) -> w `[H, K]` fp32 (the log of the decay, ``<= 0``).
        ``time_decay``: `[H, K]`.
    """

    input_name: str | None = None

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.time_decay = nn.Parameter(torch.full((num_heads, head_dim), -1.0, device=device, dtype=dtype))

    @torch.no_grad()
    def reset_parameters(self, layer_idx: int, num_layers: int) -> None:
        """``time_decay[n] = -6 + 5 (n / (C - 1)) ** (0.7 + 1.3 r0)`` over the ``C = H * K`` channels."""
        fill_(self.time_decay, decay_ramp(self.num_heads * self.head_dim, layer_idx, num_layers))

    def forward(self, x_w: Tensor | None = None) -> Tensor:
        return -torch.exp(self.time_decay.to(_accumulation(self.time_decay.dtype)))


class DataDependentDecay(nn.Module):
    """RWKV-6 decay: ``w = -exp(time_decay + tanh(x_w @ lora_a) @ lora_b)`` per token, in fp32.

    Args:
        dim: Channels ``C = H * K``.
        num_heads: Heads ``H``.
        rank: LoRA rank ``Dd`` (64 in released models, 128 at C = 4096).

    Shapes:
        forward(x_w `[B, T, C]`) -> w `[B, T, H, K]` fp32. ``time_decay`` `[C]`,
        ``lora_a`` `[C, Dd]`, ``lora_b`` `[Dd, C]` (both used as ``x @ W``).
    """

    input_name: str | None = "w"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        rank: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.rank = dim, num_heads, rank
        kw = {"device": device, "dtype": dtype}
        self.time_decay = nn.Parameter(torch.full((dim,), -1.0, **kw))
        self.lora_a = nn.Parameter(torch.zeros(dim, rank, **kw))
        self.lora_b = nn.Parameter(torch.zeros(rank, dim, **kw))

    @torch.no_grad()
    def reset_parameters(self, layer_idx: int, num_layers: int) -> None:
        """The static ramp of ``StaticDecay`` for ``time_decay``; ``lora_a = 0``, ``lora_b ~ U(+-0.01)``."""
        fill_(self.time_decay, decay_ramp(self.dim, layer_idx, num_layers))
        fill_(self.lora_a, torch.zeros(self.lora_a.shape, dtype=torch.float64))
        uniform_(self.lora_b, 0.01)

    def forward(self, x_w: Tensor | None = None) -> Tensor:
        if x_w is None:
            raise ValueError("DataDependentDecay needs the token-shifted input x_w")
        B, T, C = x_w.shape
        acc = _accumulation(x_w.dtype)
        lora_in = torch.tanh(x_w @ self.lora_a).view(B * T, -1)
        if x_w.dtype == acc == self.time_decay.dtype:  # the bias added inside the product: one pass fewer
            log_decay = torch.addmm(self.time_decay.view(-1), lora_in, self.lora_b)
        else:
            log_decay = self.time_decay.to(acc) + (lora_in @ self.lora_b).to(acc)
        w = -torch.exp(log_decay)
        return w.view(B, T, self.num_heads, C // self.num_heads)


class TimeMix(nn.Module):
    """RWKV time mixing with an injected token shift and decay.

    ``y = output(GroupNorm_H(WKV(r, k, v, w, u)) * silu(gate(x_g)))`` with ``r, k, v`` the
    projections of the token-shifted inputs ``x_r, x_k, x_v`` and ``u = time_faaaa``.

    Args:
        dim: Channels ``C``.
        num_heads: Heads ``H``; the head size is ``C / H`` (64 in released models).
        token_shift: Produces the mixed inputs; its ``names`` must contain ``k, v, r, g`` and,
            for a data-dependent decay, ``w``. ``reset_parameters`` calls its
            ``reset_parameters(layer_idx, num_layers)``.
        decay: ``StaticDecay`` (RWKV-5, runs ``ops.wkv5``) or ``DataDependentDecay``
            (RWKV-6, runs ``ops.wkv6``), or any module with the same contract (and, for
            ``reset_parameters``, a ``reset_parameters(layer_idx, num_layers)`` of its own).
        layer_idx, num_layers: Position in the stack; used only by ``reset_parameters``.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state ``TimeMixState(shift [B, C], wkv [B, H, K, K] fp32)`` or ``None``)
        -> (y `[B, T, C]`, new ``TimeMixState``). The same call runs a whole sequence (parallel,
        through the chunked WKV) or one token at a time with the carried state (recurrent).

    Reference: BlinkDL RWKV-LM x052 / x060 (DESIGN.md §4); checked against the ``rwkv``
    package in ``tests/assemblies/test_rwkv_parity.py``. Backends: those of ``ops.wkv6``.

    Example:
        >>> import torch
        >>> mixer = TimeMix.rwkv6(128, head_dim=32)  # any [B, T, C] token mixer slot
        >>> y, state = mixer(torch.randn(2, 10, 128))
        >>> y.shape, state[1].shape
        (torch.Size([2, 10, 128]), torch.Size([2, 4, 32, 32]))
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        token_shift: nn.Module,
        decay: nn.Module,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        needed = {"k", "v", "r", "g"} | ({decay.input_name} if decay.input_name else set())
        names = set(getattr(token_shift, "names", ()))
        if not needed <= names:
            raise ValueError(f"token_shift must produce {sorted(needed)}, it produces {sorted(names)}")
        layer_ratios(layer_idx, num_layers)  # validates the position
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.layer_idx, self.num_layers = layer_idx, num_layers
        kw = {"device": device, "dtype": dtype}
        self.token_shift = token_shift
        self.decay = decay
        self.time_faaaa = nn.Parameter(torch.zeros(num_heads, self.head_dim, **kw))
        self.receptance = nn.Linear(dim, dim, bias=False, **kw)
        self.key = nn.Linear(dim, dim, bias=False, **kw)
        self.value = nn.Linear(dim, dim, bias=False, **kw)
        self.gate = nn.Linear(dim, dim, bias=False, **kw)
        self.output = nn.Linear(dim, dim, bias=False, **kw)
        self.ln_x = nn.GroupNorm(num_heads, dim, eps=GROUP_NORM_EPS, **kw)

    @classmethod
    def rwkv6(
        cls,
        dim: int,
        *,
        head_dim: int = 64,
        mix_rank: int = 32,
        decay_rank: int = 64,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TimeMix:
        """RWKV-6 (x060) time mixing: data-dependent token shift and decay, initialised."""
        num_heads = _heads(dim, head_dim)
        kw = {"device": device, "dtype": dtype}
        module = cls(
            dim,
            num_heads=num_heads,
            token_shift=DataDependentTokenShift(
                dim, names=("w", "k", "v", "r", "g"), rank=mix_rank, ramps=TIME_MIX_RAMPS, **kw
            ),
            decay=DataDependentDecay(dim, num_heads, rank=decay_rank, **kw),
            layer_idx=layer_idx,
            num_layers=num_layers,
            **kw,
        )
        module.reset_parameters()
        return module

    @classmethod
    def rwkv5(
        cls,
        dim: int,
        *,
        head_dim: int = 64,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TimeMix:
        """RWKV-5 (x052) time mixing: static token shift and decay, initialised."""
        num_heads = _heads(dim, head_dim)
        kw = {"device": device, "dtype": dtype}
        module = cls(
            dim,
            num_heads=num_heads,
            token_shift=TokenShift(dim, names=("k", "v", "r", "g"), form="lerp", ramps=TIME_MIX_RAMPS, **kw),
            decay=StaticDecay(num_heads, dim // num_heads, **kw),
            layer_idx=layer_idx,
            num_layers=num_layers,
            **kw,
        )
        module.reset_parameters()
        return module

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BlinkDL's from-scratch initialisation (DESIGN.md §4), the injected parts' included.

        Raises:
            ValueError: the token shift or decay has no ``reset_parameters(layer_idx, num_layers)``.
        """
        C, L, i = self.dim, self.num_layers, self.layer_idx
        r0, _ = layer_ratios(i, L)
        n = torch.arange(C, dtype=torch.float64)
        fill_(self.time_faaaa, r0 * (1 - n / max(C - 1, 1)) + 0.1 * ((n + 1) % 3 - 1))
        reset_injected(self, "token_shift", i, L)
        reset_injected(self, "decay", i, L)
        for linear, gain in (
            (self.receptance, 1.0),
            (self.key, 0.1),
            (self.value, 1.0),
            (self.gate, 0.1),
            (self.output, 0.0),
        ):
            orthogonal_(linear.weight, gain)
        fill_(self.ln_x.weight, torch.full((C,), ((1 + i) / L) ** 0.7, dtype=torch.float64))
        fill_(self.ln_x.bias, torch.zeros(C, dtype=torch.float64))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> TimeMixState:
        """Zeros: the shift `[B, C]` in the parameters' dtype, the WKV `[B, H, K, K]` in fp32 (fp64)."""
        dtype = self.receptance.weight.dtype
        device = self.receptance.weight.device if device is None else device
        H, K = self.num_heads, self.head_dim
        return TimeMixState(
            torch.zeros(batch_size, self.dim, device=device, dtype=dtype),
            torch.zeros(batch_size, H, K, K, device=device, dtype=_accumulation(dtype)),
        )

    def check_state(self, state: TimeMixState, batch_size: int) -> None:
        """Raise ``ValueError`` naming a field of ``state`` whose shape does not fit (no device access)."""
        H, K = self.num_heads, self.head_dim
        _check_shape("shift", state[0], (batch_size, self.dim))
        _check_shape("wkv", state[1], (batch_size, H, K, K))

    def forward(
        self, x: Tensor, state: TimeMixState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, TimeMixState]:
        """``cu_seqlens`` `[N+1]`: N sequences packed along T (B = 1, ``state`` ``None``), each run as if alone:
        the token shift and the WKV restart at every sequence; the WKV state returned is then `[N, H, K, K]`."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TimeMix: x must have shape [B, T, {self.dim}], got {tuple(x.shape)}")
        _check_packing(x, state, cu_seqlens, "TimeMix")
        shift_state, wkv_state = (None, None) if state is None else state
        mixed, new_shift = _shift(self.token_shift, x, shift_state, cu_seqlens)
        inputs = dict(zip(self.token_shift.names, mixed))
        B, T, C = x.shape
        H, K = self.num_heads, self.head_dim
        r = self.receptance(inputs["r"]).view(B, T, H, K)
        k = self.key(inputs["k"]).view(B, T, H, K)
        v = self.value(inputs["v"]).view(B, T, H, K)
        g = F.silu(self.gate(inputs["g"]))
        w = self.decay(inputs.get(self.decay.input_name) if self.decay.input_name else None)
        u = self.time_faaaa.to(_accumulation(x.dtype))
        wkv = wkv5 if w.dim() == 2 else wkv6
        y, new_wkv = wkv(r, k, v, w, u, wkv_state, cu_seqlens=cu_seqlens)
        acc = _accumulation(x.dtype)  # GroupNorm in fp32 for low-precision models, as upstream
        norm = self.ln_x
        y = F.group_norm(y.reshape(B * T, C).to(acc), H, norm.weight.to(acc), norm.bias.to(acc), norm.eps)
        y = y.view(B, T, C).to(x.dtype) * g
        return self.output(y), TimeMixState(new_shift, new_wkv)

    def extra_repr(self) -> str:
        return f"{self.dim}, num_heads={self.num_heads}, layer_idx={self.layer_idx}"


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    """Decays, the bonus and GroupNorm run in fp32 (fp64 for fp64 models)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_packing(x: Tensor, state, cu_seqlens: Tensor | None, owner: str) -> None:
    if cu_seqlens is None:
        return
    if state is not None:
        raise ValueError(f"{owner}: packed sequences (cu_seqlens) start from the empty state; pass state=None")
    if x.shape[0] != 1:
        raise ValueError(f"{owner}: with cu_seqlens the sequences are packed along T and B must be 1, got {x.shape[0]}")


def _check_shape(name: str, t: Tensor, want: tuple[int, ...]) -> None:
    if tuple(t.shape) != want:
        dims = ", ".join(map(str, want[1:]))
        raise ValueError(f"state.{name} must have shape [B, {dims}] with B = {want[0]}, got {tuple(t.shape)}")


def _heads(dim: int, head_dim: int) -> int:
    if head_dim <= 0 or dim % head_dim:
        raise ValueError(f"dim={dim} must be a positive multiple of head_dim={head_dim}")
    return dim // head_dim
