"""Token shift: mix each token with the one before it (RWKV-5 static, RWKV-6 data-dependent).

Both forms take ``x`` `[B, T, C]` and return one mixed copy of it per name (``"k"``, ``"v"``, ...)
plus the shift state, which is simply the last input vector `[B, C]`: feed it back as ``state``
to continue the sequence. With ``x_prev[t] = x[t-1]`` (``x_prev[0]`` = state or zeros) and
``xx = x_prev - x``:

- ``TokenShift(form="maa")`` (RWKV-6 ``time_maa_*``): ``x_n = x + xx * mix_n``.
- ``TokenShift(form="lerp")`` (RWKV-5 ``time_mix_*``): ``x_n = x * mix_n + x_prev * (1 - mix_n)``.
- ``DataDependentTokenShift`` (RWKV-6 "ddlerp"):
  ``x_n = x + xx * (mix_n + tanh((x + xx * mix_x) @ lora_a)_n @ lora_b[n])``.

Packed sequences (``cu_seqlens``, `[N+1]` offsets of N sequences packed along T with B = 1, as the WKV ops
take them): ``x_prev`` is zero (the empty state) at each sequence's first position, so no token reads the
previous sequence's last one; ``state`` must then be ``None``.

The exact formulas and initialisation follow DESIGN.md §4 (BlinkDL x052 / x060).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ._init import fill_, mix_ramp, uniform_

__all__ = ["DataDependentTokenShift", "TokenShift", "sequence_starts", "shift_tokens"]


def sequence_starts(cu_seqlens: Tensor, seq_len: int) -> Tensor:
    """`[T]` bool: ``True`` at the first position of every packed sequence (no device-to-host copy).

    ``cu_seqlens`` `[N+1]` int32/int64 offsets (start 0, end T, non-decreasing: empty sequences allowed).
    """
    starts = torch.zeros(seq_len + 1, dtype=torch.bool, device=cu_seqlens.device)
    return starts.index_fill(0, cu_seqlens[:-1].long(), True)[:seq_len]


def shift_tokens(x: Tensor, state: Tensor | None, cu_seqlens: Tensor | None = None) -> Tensor:
    """The previous token of every position: ``x_prev[:, t] = x[:, t-1]``, ``x_prev[:, 0] = state``.

    With ``cu_seqlens`` (packed sequences, B = 1, ``state`` ``None``) ``x_prev`` is zero at every sequence's
    first position.

    Shapes:
        x: `[B, T, C]`; state: `[B, C]` or ``None`` (zeros); cu_seqlens: `[N+1]`. Returns `[B, T, C]`.
    """
    B, T, C = x.shape
    first = x.new_zeros(B, 1, C) if state is None else state.unsqueeze(1).to(x.dtype)
    x_prev = first if T == 1 else torch.cat([first, x[:, :-1]], dim=1)
    if cu_seqlens is None:
        return x_prev
    if state is not None:
        raise ValueError("shift_tokens: packed sequences (cu_seqlens) start from the empty state; pass state=None")
    if B != 1:
        raise ValueError(f"shift_tokens: with cu_seqlens the sequences are packed along T and B must be 1, got B={B}")
    return x_prev.masked_fill(sequence_starts(cu_seqlens.to(x.device), T).view(1, T, 1), 0)


def _run_shift(token_shift: nn.Module, x: Tensor, state: Tensor | None, cu_seqlens: Tensor | None):
    """``token_shift(x, state)``, with ``cu_seqlens=`` only when packing (an injected shift may not take it)."""
    if cu_seqlens is None:
        return token_shift(x, state)
    if "cu_seqlens" not in inspect.signature(token_shift.forward).parameters:
        raise ValueError(
            f"{type(token_shift).__name__} does not take cu_seqlens: packed sequences need a token shift that "
            "restarts at each sequence (TokenShift, DataDependentTokenShift)"
        )
    return token_shift(x, state, cu_seqlens=cu_seqlens)


def _check(x: Tensor, state: Tensor | None, dim: int, owner: str) -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{owner}: x must have shape [B, T, {dim}], got {tuple(x.shape)}")
    if state is not None and state.shape != (x.shape[0], dim):
        raise ValueError(f"{owner}: state must have shape [B, C] = [{x.shape[0]}, {dim}], got {tuple(state.shape)}")


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be a non-empty sequence of distinct names, got {names!r}")
    return names


def _ramps(names: tuple[str, ...], ramps: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """The ``(p, q)`` of each output; a table may cover more names than this shift produces."""
    ramps = dict(ramps or {})
    return {n: tuple(ramps.get(n, (1.0, 0.0))) for n in names}


def _lerp_ramps(module, layer_idx: int, num_layers: int) -> Tensor:
    """`[N, C]` fp64: the "lerp" form of every output's from-scratch mix."""
    return torch.stack([mix_ramp(module.dim, layer_idx, num_layers, *module.ramps[n]) for n in module.names])


class TokenShift(nn.Module):
    """Static token shift: one learned per-channel mix for each output (RWKV-5, RWKV-6 FFN).

    Args:
        dim: Channels ``C``.
        names: One mixed output per name, in this order (e.g. ``("k", "v", "r", "g")``).
        form: ``"maa"`` (RWKV-6: ``x + (x_prev - x) * mix``) or ``"lerp"`` (RWKV-5:
            ``x * mix + x_prev * (1 - mix)``). The two differ only in how ``mix`` is stored,
            so that checkpoints load without rounding.
        ramps: Per output name ``(p, q)`` of BlinkDL's from-scratch mix ``ddd ** (p * r1) + q * r0``
            (``reset_parameters``); names left out get ``(1, 0)``. ``TimeMix`` passes
            ``TIME_MIX_RAMPS``; channel mixing uses the default.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state `[B, C]` or ``None``, cu_seqlens `[N+1]` or ``None``) -> (tuple of
        ``len(names)`` tensors `[B, T, C]`, new state `[B, C]`). ``mix``: `[len(names), C]`.

    Example:
        >>> import torch
        >>> shift = TokenShift(8, names=("k", "r"))
        >>> (xk, xr), state = shift(torch.randn(2, 5, 8))
        >>> xk.shape, state.shape
        (torch.Size([2, 5, 8]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        dim: int,
        *,
        names: Sequence[str],
        form: Literal["maa", "lerp"] = "maa",
        ramps: Mapping[str, tuple[float, float]] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if form not in ("maa", "lerp"):
            raise ValueError(f"form must be 'maa' or 'lerp', got {form!r}")
        self.dim = dim
        self.names = _check_names(names)
        self.form = form
        self.ramps = _ramps(self.names, ramps)
        self.mix = nn.Parameter(torch.full((len(self.names), dim), 0.5, device=device, dtype=dtype))

    @torch.no_grad()
    def reset_parameters(self, layer_idx: int, num_layers: int) -> None:
        """BlinkDL's from-scratch mixes for layer ``layer_idx`` of ``num_layers`` (DESIGN.md §4)."""
        lerp = _lerp_ramps(self, layer_idx, num_layers)
        fill_(self.mix, lerp if self.form == "lerp" else 1 - lerp)

    def forward(
        self, x: Tensor, state: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        _check(x, state, self.dim, type(self).__name__)
        x_prev = shift_tokens(x, state, cu_seqlens)
        mix = self.mix.to(x.dtype)
        if self.form == "maa":  # x + (x_prev - x) * mix, one fused pass per output
            xx = x_prev - x
            mixed = tuple(torch.addcmul(x, xx, m) for m in mix)
        else:  # x * mix + x_prev * (1 - mix)
            mixed = tuple(torch.lerp(x_prev, x, m) for m in mix)
        return mixed, x[:, -1].clone()  # a copy: a view would pin all of x

    def extra_repr(self) -> str:
        return f"{self.dim}, names={self.names}, form={self.form!r}"


class DataDependentTokenShift(nn.Module):
    """RWKV-6 data-dependent token shift ("ddlerp") with its low-rank (LoRA) mixing.

    Args:
        dim: Channels ``C``.
        names: Mixed outputs in checkpoint order (x060 time mixing: ``("w", "k", "v", "r", "g")``).
        rank: LoRA rank ``Dm`` per output (32 in released models, 64 at C = 4096).
        ramps: From-scratch mixes per name, as for ``TokenShift``.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state `[B, C]` or ``None``, cu_seqlens `[N+1]` or ``None``) -> (tuple of
        ``len(names)`` tensors `[B, T, C]`, new state `[B, C]`). Parameters: ``mix_x`` `[C]`, ``mix`` `[N, C]`,
        ``lora_a`` `[C, N*Dm]` (used as ``x @ lora_a``), ``lora_b`` `[N, Dm, C]`.
    """

    def __init__(
        self,
        dim: int,
        *,
        names: Sequence[str] = ("w", "k", "v", "r", "g"),
        rank: int = 32,
        ramps: Mapping[str, tuple[float, float]] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.names = _check_names(names)
        self.rank = rank
        self.ramps = _ramps(self.names, ramps)
        n = len(self.names)
        kw = {"device": device, "dtype": dtype}
        self.mix_x = nn.Parameter(torch.full((dim,), 0.5, **kw))
        self.mix = nn.Parameter(torch.full((n, dim), 0.5, **kw))
        self.lora_a = nn.Parameter(torch.zeros(dim, n * rank, **kw))
        self.lora_b = nn.Parameter(torch.zeros(n, rank, dim, **kw))

    @torch.no_grad()
    def reset_parameters(self, layer_idx: int, num_layers: int) -> None:
        """BlinkDL's x060 init: ``mix_x = 1 - ddd ** r1``, mixes from ``ramps``, ``lora_a = 0``,
        ``lora_b ~ U(+-0.01)`` (DESIGN.md §4)."""
        fill_(self.mix, 1 - _lerp_ramps(self, layer_idx, num_layers))
        fill_(self.mix_x, 1 - mix_ramp(self.dim, layer_idx, num_layers, 1.0, 0.0))
        fill_(self.lora_a, torch.zeros(self.lora_a.shape, dtype=torch.float64))
        uniform_(self.lora_b, 0.01)

    def forward(
        self, x: Tensor, state: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        _check(x, state, self.dim, type(self).__name__)
        B, T, C = x.shape
        n = len(self.names)
        xx = shift_tokens(x, state, cu_seqlens) - x
        lora_in = torch.tanh(torch.addcmul(x, xx, self.mix_x).reshape(B * T, C) @ self.lora_a)  # [B*T, N*Dm]
        # One output at a time, each two fused passes over [B*T, C] (addmm, addcmul): a stacked
        # [N, B, T, C] intermediate costs three passes over N times the memory, and its fresh pages.
        x2, xx2 = x.reshape(B * T, C), xx.reshape(B * T, C)
        mixed = tuple(
            torch.addcmul(
                x2, xx2, torch.addmm(self.mix[i], lora_in[:, i * self.rank : (i + 1) * self.rank], self.lora_b[i])
            ).view(B, T, C)
            for i in range(n)
        )
        return mixed, x[:, -1].clone()  # a copy: a view would pin all of x

    def extra_repr(self) -> str:
        return f"{self.dim}, names={self.names}, rank={self.rank}"
