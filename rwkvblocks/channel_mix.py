"""RWKV channel mixing (the FFN): ``sigmoid(receptance(x_r)) * value(relu(key(x_k)) ** 2)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._init import CHANNEL_MIX_RAMPS, layer_ratios, orthogonal_, reset_injected
from .token_shift import TokenShift
from .token_shift import _run_shift as _shift

__all__ = ["ChannelMix", "ffn_dim"]


def ffn_dim(dim: int) -> int:
    """BlinkDL's hidden width for RWKV-5/6: ``int(3.5 * C) // 32 * 32``."""
    return int(3.5 * dim) // 32 * 32


class ChannelMix(nn.Module):
    """RWKV channel mixing with an injected (static) token shift.

    Args:
        dim: Channels ``C``.
        hidden_dim: FFN width ``F`` (``ffn_dim(C)`` in released models).
        token_shift: Produces the mixed inputs ``k`` and ``r`` (a ``TokenShift``: ``form="maa"``
            for RWKV-6, ``"lerp"`` for RWKV-5). ``reset_parameters`` calls its
            ``reset_parameters(layer_idx, num_layers)``.
        layer_idx, num_layers: Position in the stack; used only by ``reset_parameters``.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state: shift `[B, C]` or ``None``) -> (y `[B, T, C]`, shift `[B, C]`).
        ``key`` `[F, C]`, ``receptance`` `[C, C]`, ``value`` `[C, F]` (``nn.Linear`` weights).

    Reference: BlinkDL RWKV-LM x052 / x060 ``RWKV_ChannelMix`` (DESIGN.md §4).

    Example:
        >>> import torch
        >>> ffn = ChannelMix.rwkv6(64)
        >>> y, shift = ffn(torch.randn(1, 3, 64))
        >>> y.shape, shift.shape
        (torch.Size([1, 3, 64]), torch.Size([1, 64]))
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        token_shift: nn.Module,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        names = set(getattr(token_shift, "names", ()))
        if not {"k", "r"} <= names:
            raise ValueError(f"token_shift must produce ['k', 'r'], it produces {sorted(names)}")
        layer_ratios(layer_idx, num_layers)
        self.dim, self.hidden_dim = dim, hidden_dim
        self.layer_idx, self.num_layers = layer_idx, num_layers
        kw = {"device": device, "dtype": dtype}
        self.token_shift = token_shift
        self.key = nn.Linear(dim, hidden_dim, bias=False, **kw)
        self.receptance = nn.Linear(dim, dim, bias=False, **kw)
        self.value = nn.Linear(hidden_dim, dim, bias=False, **kw)

    @classmethod
    def rwkv6(
        cls,
        dim: int,
        *,
        hidden_dim: int | None = None,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ChannelMix:
        """RWKV-6 (x060) channel mixing (``time_maa_k/r``), initialised."""
        return cls._build(dim, hidden_dim, "maa", layer_idx, num_layers, device, dtype)

    @classmethod
    def rwkv5(
        cls,
        dim: int,
        *,
        hidden_dim: int | None = None,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ChannelMix:
        """RWKV-5 (x052) channel mixing (``time_mix_k/r``), initialised."""
        return cls._build(dim, hidden_dim, "lerp", layer_idx, num_layers, device, dtype)

    @classmethod
    def _build(cls, dim, hidden_dim, form, layer_idx, num_layers, device, dtype) -> ChannelMix:
        kw = {"device": device, "dtype": dtype}
        module = cls(
            dim,
            ffn_dim(dim) if hidden_dim is None else hidden_dim,
            token_shift=TokenShift(dim, names=("k", "r"), form=form, ramps=CHANNEL_MIX_RAMPS, **kw),
            layer_idx=layer_idx,
            num_layers=num_layers,
            **kw,
        )
        module.reset_parameters()
        return module

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BlinkDL's from-scratch initialisation (DESIGN.md §4), the token shift's included.

        Raises:
            ValueError: the token shift has no ``reset_parameters(layer_idx, num_layers)``.
        """
        reset_injected(self, "token_shift", self.layer_idx, self.num_layers)
        orthogonal_(self.key.weight, 1.0)
        orthogonal_(self.receptance.weight, 0.0)
        orthogonal_(self.value.weight, 0.0)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The shift before the first token: zeros `[B, C]` in the parameters' dtype."""
        weight = self.key.weight
        return torch.zeros(batch_size, self.dim, device=weight.device if device is None else device, dtype=weight.dtype)

    def check_state(self, state: Tensor, batch_size: int) -> None:
        """Raise ``ValueError`` when ``state`` is not a `[B, C]` tensor (no device access)."""
        if not isinstance(state, Tensor) or tuple(state.shape) != (batch_size, self.dim):
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"state.ffn_shift must have shape [B, {self.dim}] with B = {batch_size}, got {got}")

    def forward(
        self, x: Tensor, state: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``cu_seqlens`` `[N+1]` (packed sequences, B = 1): the token shift restarts at each sequence."""
        mixed, new_shift = _shift(self.token_shift, x, state, cu_seqlens)
        inputs = dict(zip(self.token_shift.names, mixed))
        k = torch.relu_(self.key(inputs["k"])).square()  # in place on the projection: one pass fewer
        return torch.sigmoid(self.receptance(inputs["r"])) * self.value(k), new_shift

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden_dim={self.hidden_dim}, layer_idx={self.layer_idx}"
