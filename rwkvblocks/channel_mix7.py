"""RWKV-7 (x070) channel mixing (the FFN): ``value(relu(key(x + xx * x_k)) ** 2)``, no receptance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._init import layer_ratios, orthogonal_, reset_injected
from .token_shift import TokenShift
from .token_shift import _run_shift as _shift

__all__ = ["ChannelMix7"]


class ChannelMix7(nn.Module):
    """RWKV-7 channel mixing with an injected (static) token shift.

    Args:
        dim: Channels ``C``.
        hidden_dim: FFN width ``F`` (``4 * C`` in released models).
        token_shift: Produces the mixed input ``k`` (``TokenShift(form="maa")`` for BlinkDL's model).
            ``reset_parameters`` calls its ``reset_parameters(layer_idx, num_layers)``.
        layer_idx, num_layers: Position in the stack; used only by ``reset_parameters``.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state: shift `[B, C]` or ``None``) -> (y `[B, T, C]`, shift `[B, C]`).
        ``key`` `[F, C]`, ``value`` `[C, F]` (``nn.Linear`` weights).

    Reference: BlinkDL RWKV-LM ``RWKV_CMix_x070`` (DESIGN.md §15).

    Example:
        >>> import torch
        >>> ffn = ChannelMix7.rwkv7(64)
        >>> y, shift = ffn(torch.randn(1, 3, 64))
        >>> y.shape, shift.shape, ffn.hidden_dim
        (torch.Size([1, 3, 64]), torch.Size([1, 64]), 256)
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
        if "k" not in getattr(token_shift, "names", ()):
            raise ValueError(f"token_shift must produce ['k'], it produces {sorted(getattr(token_shift, 'names', ()))}")
        layer_ratios(layer_idx, num_layers)
        self.dim, self.hidden_dim = dim, hidden_dim
        self.layer_idx, self.num_layers = layer_idx, num_layers
        kw = {"device": device, "dtype": dtype}
        self.token_shift = token_shift
        self.key = nn.Linear(dim, hidden_dim, bias=False, **kw)
        self.value = nn.Linear(hidden_dim, dim, bias=False, **kw)

    @classmethod
    def rwkv7(
        cls,
        dim: int,
        *,
        hidden_dim: int | None = None,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ChannelMix7:
        """RWKV-7 (x070) channel mixing (``x_k``, ``F = 4 C`` by default), initialised."""
        _, r1 = layer_ratios(layer_idx, num_layers)
        kw = {"device": device, "dtype": dtype}
        # BlinkDL's x_k = 1 - ddd ** (r1 ** 4): the ramp ddd ** (p * r1) with p = r1 ** 3 for this layer
        shift = TokenShift(dim, names=("k",), form="maa", ramps={"k": (r1**3, 0.0)}, **kw)
        module = cls(
            dim,
            4 * dim if hidden_dim is None else hidden_dim,
            token_shift=shift,
            layer_idx=layer_idx,
            num_layers=num_layers,
            **kw,
        )
        module.reset_parameters()
        return module

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BlinkDL's from-scratch x070 init: ``key`` orthogonal with gain 1 (no ``sqrt(F / C)`` factor),
        ``value`` zeros, and the token shift's own ``reset_parameters``.

        Raises:
            ValueError: the token shift has no ``reset_parameters(layer_idx, num_layers)``.
        """
        reset_injected(self, "token_shift", self.layer_idx, self.num_layers)
        orthogonal_(self.key.weight, 1.0, shape_gain=False)
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
        xk = mixed[self.token_shift.names.index("k")]
        return self.value(torch.relu(self.key(xk)).square()), new_shift

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden_dim={self.hidden_dim}, layer_idx={self.layer_idx}"
