"""RWKV-7 ("Goose", BlinkDL x070) time mixing: static token shift, LoRA decay / in-context rate / gate,
value residual to layer 0, and the generalised delta-rule WKV (``ops.wkv7``).

The exact formulas are in DESIGN.md §15; ``TimeMix7.rwkv7`` builds the released configuration with
BlinkDL's from-scratch initialisation (``RWKV-v7/train_temp/src/model.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._init import fill_, layer_ratios, orthogonal_, reset_injected
from .ops import wkv7
from .state import TimeMixState
from .time_mix import GROUP_NORM_EPS, _accumulation, _check_packing, _check_shape, _heads
from .token_shift import TokenShift
from .token_shift import _run_shift as _shift

__all__ = ["TIME_MIX7_RAMPS", "TimeMix7"]

# BlinkDL's x070 from-scratch mixes ``x_n = 1 - ddd ** (p * r1)``, as ``TokenShift`` ramps ``(p, 0)``.
TIME_MIX7_RAMPS = {"r": (0.2, 0.0), "w": (0.9, 0.0), "k": (0.7, 0.0), "v": (0.7, 0.0), "a": (0.9, 0.0), "g": (0.2, 0.0)}
MIX_NAMES = ("r", "w", "k", "v", "a", "g")  # BlinkDL's order of x_r ... x_g
KK_EPS = 1e-12  # F.normalize's default, which BlinkDL's code and kernels use
DECAY_OFFSET = 0.5  # log-decay = -exp(-softplus(-z) - 0.5): soft-clamped to (-exp(-0.5), 0)


class TimeMix7(nn.Module):
    """RWKV-7 time mixing with an injected (static) token shift.

    With ``x_r, x_w, x_k, x_v, x_a, x_g`` the token-shifted inputs and LoRAs used as ``x @ W``:

    - ``r, k, v = receptance(x_r), key(x_k), value(x_v)``;
      log-decay ``w = -exp(-softplus(-(w0 + tanh(x_w @ w1) @ w2)) - 0.5)`` in fp32;
    - value residual: layer 0 writes its ``v`` to ``context["v_first"]``; later layers read it and use
      ``v + (v_first - v) * sigmoid(v0 + (x_v @ v1) @ v2)``;
    - ``a = sigmoid(a0 + (x_a @ a1) @ a2)``, ``g = sigmoid(x_g @ g1) @ g2``,
      ``kk = normalize_per_head(k * k_k)``, ``k = k * (1 + (a - 1) * k_a)``;
    - ``y = GroupNorm_H(WKV7(r, w, k, v, a=-kk, b=kk*a)) + sum_per_head(r * k * r_k) * v``;
      ``out = output(y * g)``.

    Args:
        dim: Channels ``C``.
        num_heads: Heads ``H``; the head size is ``C / H`` (64 in released models).
        token_shift: Produces the mixed inputs; its ``names`` must contain ``r, w, k, v, a, g``
            (``TokenShift(form="maa")`` for BlinkDL's model). ``reset_parameters`` calls its
            ``reset_parameters(layer_idx, num_layers)``.
        decay_rank, a_rank, value_rank, gate_rank: LoRA ranks ``Dw, Da, Dv, Dg`` (released World models:
            64/64/32/128 at 0.1B, 96/96/64/256 at 1.5B; always read them from checkpoint shapes).
        layer_idx: Position in the stack. Layer 0 has no value-residual LoRA (``v0 = v1 = v2 = None``)
            and provides ``v_first``; every other layer needs it. ``reset_parameters`` also uses it.
        num_layers: Depth of the stack; used only by ``reset_parameters``.
        device, dtype: Of the parameters.

    Shapes:
        forward(x `[B, T, C]`, state ``TimeMixState(shift [B, C], wkv [B, H, V, K] fp32)`` or ``None``,
        context ``dict`` or ``None``) -> (y `[B, T, C]`, new ``TimeMixState``). The WKV state is in
        BlinkDL's order, value index first (``ops.state_to_fla`` gives fla's). ``context["v_first"]``:
        `[B, T, C]` in the model dtype. Parameters: ``w0, a0, v0, k_k, k_a`` `[C]`; ``w1`` `[C, Dw]`,
        ``w2`` `[Dw, C]` (likewise ``a1/a2``, ``v1/v2``, ``g1/g2``); ``r_k`` `[H, K]`.

    Reference: BlinkDL RWKV-LM ``RWKV_Tmix_x070`` (DESIGN.md §15); checked against the ``rwkv`` package
    in x070 mode in ``tests/assemblies/test_rwkv7_parity.py``. Backends: those of ``ops.wkv7``.

    Example:
        >>> import torch
        >>> first = TimeMix7.rwkv7(64, head_dim=16, layer_idx=0, num_layers=2)
        >>> second = TimeMix7.rwkv7(64, head_dim=16, layer_idx=1, num_layers=2)
        >>> context = {}  # carries layer 0's v to layer 1, as RWKVLanguageModel does
        >>> x = torch.randn(2, 5, 64)
        >>> y, state = second(first(x, context=context)[0], context=context)
        >>> y.shape, state.wkv.shape, context["v_first"].shape
        (torch.Size([2, 5, 64]), torch.Size([2, 4, 16, 16]), torch.Size([2, 5, 64]))
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        token_shift: nn.Module,
        decay_rank: int,
        a_rank: int,
        value_rank: int,
        gate_rank: int,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        names = set(getattr(token_shift, "names", ()))
        if not set(MIX_NAMES) <= names:
            raise ValueError(f"token_shift must produce {sorted(MIX_NAMES)}, it produces {sorted(names)}")
        ranks = {"decay_rank": decay_rank, "a_rank": a_rank, "value_rank": value_rank, "gate_rank": gate_rank}
        for name, rank in ranks.items():
            if rank <= 0:
                raise ValueError(f"{name} must be positive, got {rank}")
        layer_ratios(layer_idx, num_layers)  # validates the position
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.decay_rank, self.a_rank, self.value_rank, self.gate_rank = decay_rank, a_rank, value_rank, gate_rank
        self.layer_idx, self.num_layers = layer_idx, num_layers
        kw = {"device": device, "dtype": dtype}
        C = dim
        self.token_shift = token_shift
        self.w0 = nn.Parameter(torch.zeros(C, **kw))
        self.w1 = nn.Parameter(torch.zeros(C, decay_rank, **kw))
        self.w2 = nn.Parameter(torch.zeros(decay_rank, C, **kw))
        self.a0 = nn.Parameter(torch.zeros(C, **kw))
        self.a1 = nn.Parameter(torch.zeros(C, a_rank, **kw))
        self.a2 = nn.Parameter(torch.zeros(a_rank, C, **kw))
        if layer_idx > 0:
            self.v0 = nn.Parameter(torch.zeros(C, **kw))
            self.v1 = nn.Parameter(torch.zeros(C, value_rank, **kw))
            self.v2 = nn.Parameter(torch.zeros(value_rank, C, **kw))
        else:  # layer 0 provides v_first and mixes nothing into its own v
            self.v0 = self.v1 = self.v2 = None
        self.g1 = nn.Parameter(torch.zeros(C, gate_rank, **kw))
        self.g2 = nn.Parameter(torch.zeros(gate_rank, C, **kw))
        self.k_k = nn.Parameter(torch.ones(C, **kw))
        self.k_a = nn.Parameter(torch.ones(C, **kw))
        self.r_k = nn.Parameter(torch.zeros(num_heads, self.head_dim, **kw))
        self.receptance = nn.Linear(C, C, bias=False, **kw)
        self.key = nn.Linear(C, C, bias=False, **kw)
        self.value = nn.Linear(C, C, bias=False, **kw)
        self.output = nn.Linear(C, C, bias=False, **kw)
        self.ln_x = nn.GroupNorm(num_heads, C, eps=GROUP_NORM_EPS, **kw)

    @classmethod
    def rwkv7(
        cls,
        dim: int,
        *,
        head_dim: int = 64,
        decay_rank: int = 64,
        a_rank: int = 64,
        value_rank: int = 32,
        gate_rank: int = 128,
        layer_idx: int = 0,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TimeMix7:
        """RWKV-7 (x070) time mixing, initialised (default ranks: those of the released 0.1B model)."""
        kw = {"device": device, "dtype": dtype}
        module = cls(
            dim,
            num_heads=_heads(dim, head_dim),
            token_shift=TokenShift(dim, names=MIX_NAMES, form="maa", ramps=TIME_MIX7_RAMPS, **kw),
            decay_rank=decay_rank,
            a_rank=a_rank,
            value_rank=value_rank,
            gate_rank=gate_rank,
            layer_idx=layer_idx,
            num_layers=num_layers,
            **kw,
        )
        module.reset_parameters()
        return module

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BlinkDL's from-scratch x070 initialisation (``RWKV-v7/train_temp/src/model.py``).

        With ``r0 = i / (L - 1)``, ``n = 0..C-1``, ``linear = n / (C - 1) - 0.5``, ``zigzag = z * |z|`` for
        ``z = ((n mod K) - (K - 1) / 2) / ((K - 1) / 2)`` and ``www = -6 + 6 (n / (C - 1)) ** (1 + r0 ** 0.3)``:
        ``w0 = www + 0.5 + 2.5 zigzag``, ``a0 = -0.19 + 0.3 zigzag + 0.4 linear``, ``v0 = 0.73 - 0.4 linear``,
        ``k_k = 0.71 - 0.1 linear``, ``k_a = 1.02``, ``r_k = -0.04``; ``w1 = a1 = v1 = g1 = 0`` and
        ``w2, a2, v2, g2`` orthogonal with gain 0.1; receptance / key / value / output orthogonal with
        gains 1 / 0.1 / 1 / 0 (0 = zeros); ``ln_x.weight = ((1 + i) / L) ** 0.7``, ``ln_x.bias = 0``; the
        token shift's own ``reset_parameters`` (``TIME_MIX7_RAMPS``: ``x_n = 1 - ddd ** (p_n r1)``).

        Raises:
            ValueError: the token shift has no ``reset_parameters(layer_idx, num_layers)``.
        """
        C, K, L, i = self.dim, self.head_dim, self.num_layers, self.layer_idx
        r0, _ = layer_ratios(i, L)
        n = torch.arange(C, dtype=torch.float64)
        linear = n / max(C - 1, 1) - 0.5
        half = (K - 1) / 2
        zigzag = ((n % K) - half) / half if K > 1 else torch.zeros(C, dtype=torch.float64)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / max(C - 1, 1)) ** (1 + r0**0.3)
        reset_injected(self, "token_shift", i, L)
        fill_(self.w0, www + 0.5 + zigzag * 2.5)
        fill_(self.a0, -0.19 + zigzag * 0.3 + linear * 0.4)
        fill_(self.k_k, 0.71 - linear * 0.1)
        fill_(self.k_a, torch.full((C,), 1.02, dtype=torch.float64))
        fill_(self.r_k, torch.full((C,), -0.04, dtype=torch.float64))
        loras = [(self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)]
        if self.v0 is not None:
            fill_(self.v0, 0.73 - linear * 0.4)
            loras.append((self.v1, self.v2))
        for down, up in loras:
            fill_(down, torch.zeros(down.shape, dtype=torch.float64))
            orthogonal_(up, 0.1)
        for linear_layer, gain in ((self.receptance, 1.0), (self.key, 0.1), (self.value, 1.0), (self.output, 0.0)):
            orthogonal_(linear_layer.weight, gain, shape_gain=False)
        fill_(self.ln_x.weight, torch.full((C,), ((1 + i) / L) ** 0.7, dtype=torch.float64))
        fill_(self.ln_x.bias, torch.zeros(C, dtype=torch.float64))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> TimeMixState:
        """Zeros: the shift `[B, C]` in the parameters' dtype, the WKV `[B, H, V, K]` in fp32 (fp64)."""
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
        self,
        x: Tensor,
        state: TimeMixState | None = None,
        context: dict[str, Any] | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, TimeMixState]:
        """``cu_seqlens`` `[N+1]`: N sequences packed along T (B = 1, ``state`` ``None``), each run as if alone:
        the token shift and the WKV restart at every sequence (``v_first`` is per position, so it needs nothing);
        the WKV state returned is then `[N, H, V, K]`."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TimeMix7: x must have shape [B, T, {self.dim}], got {tuple(x.shape)}")
        _check_packing(x, state, cu_seqlens, "TimeMix7")
        shift_state, wkv_state = (None, None) if state is None else state
        mixed, new_shift = _shift(self.token_shift, x, shift_state, cu_seqlens)
        inputs = dict(zip(self.token_shift.names, mixed))
        xr, xw, xk, xv, xa, xg = (inputs[n] for n in MIX_NAMES)
        B, T, C = x.shape
        H, K = self.num_heads, self.head_dim
        acc = _accumulation(x.dtype)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        z = (self.w0 + torch.tanh(xw @ self.w1) @ self.w2).to(acc)
        w = -torch.exp(-F.softplus(-z) - DECAY_OFFSET)  # log-decay in (-exp(-0.5), 0)
        if self.v0 is None:
            if context is not None:
                context["v_first"] = v
        else:
            v_first = None if context is None else context.get("v_first")
            if v_first is None:
                raise ValueError(
                    f"TimeMix7 layer {self.layer_idx} mixes in layer 0's value: pass context with 'v_first' "
                    "(a stack of RWKVBlock in RWKVLanguageModel does this)"
                )
            if v_first.shape != v.shape:
                raise ValueError(f"context['v_first'] must have shape {tuple(v.shape)}, got {tuple(v_first.shape)}")
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, K), dim=-1, p=2.0, eps=KK_EPS)
        k = k * (1 + (a - 1) * self.k_a)
        r, k, v, a = (t.view(B, T, H, K) for t in (r, k, v, a))
        y, new_wkv = wkv7(r, w.view(B, T, H, K), k, v, -kk, kk * a, wkv_state, cu_seqlens=cu_seqlens)
        norm = self.ln_x  # GroupNorm in fp32 for low-precision models, as upstream
        y = F.group_norm(y.reshape(B * T, C).to(acc), H, norm.weight.to(acc), norm.bias.to(acc), norm.eps)
        y = y.view(B, T, H, K).to(x.dtype) + (r * k * self.r_k).sum(-1, keepdim=True) * v
        return self.output(y.view(B, T, C) * g), TimeMixState(new_shift, new_wkv)

    def extra_repr(self) -> str:
        ranks = f"{self.decay_rank}/{self.a_rank}/{self.value_rank}/{self.gate_rank}"
        return f"{self.dim}, num_heads={self.num_heads}, ranks w/a/v/g={ranks}, layer_idx={self.layer_idx}"
