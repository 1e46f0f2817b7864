"""Tiny random checkpoints in BlinkDL's RWKV-5/6/7 ``.pth`` format, written without rwkvblocks.

Key names and shapes follow DESIGN.md §5 and §15 (and what the ``rwkv`` package reads). Values are drawn
so that activations stay O(1) and decays span slow to fast: a 40-token run exercises every term.
"""

from __future__ import annotations

import torch


def blinkdl_state_dict(
    version: str,
    *,
    vocab_size: int = 256,
    dim: int = 128,
    num_layers: int = 2,
    head_dim: int = 64,
    ffn_dim: int | None = None,
    mix_rank: int = 32,
    decay_rank: int = 64,
    a_rank: int = 64,
    value_rank: int = 32,
    gate_rank: int = 128,
    layer0_value_lora: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """x052 / x060 use ``mix_rank`` / ``decay_rank``; x070 uses ``decay_rank``, ``a_rank``, ``value_rank``,
    ``gate_rank`` and, with ``layer0_value_lora``, also writes the unused ``blocks.0.att.v0/v1/v2``."""
    g = torch.Generator().manual_seed(seed)
    C, H, K = dim, dim // head_dim, head_dim
    F = ffn_dim or (4 * C if version == "x070" else int(3.5 * C) // 32 * 32)

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    def matrix(out_features, in_features):  # stored [out, in] like nn.Linear
        return torch.randn(out_features, in_features, generator=g, dtype=torch.float64) / in_features**0.5

    sd: dict[str, torch.Tensor] = {"emb.weight": torch.randn(vocab_size, C, generator=g, dtype=torch.float64)}
    for i in range(num_layers):
        p = f"blocks.{i}."
        lns = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        for ln in lns:
            sd[p + ln + ".weight"] = uniform(C, 0.7, 1.3)
            sd[p + ln + ".bias"] = uniform(C, -0.1, 0.1)
        a, f = p + "att.", p + "ffn."
        if version == "x070":
            for n in "rwkvag":
                sd[a + f"x_{n}"] = uniform((1, 1, C), 0, 1)
            sd[a + "w0"] = uniform((1, 1, C), -3.0, 2.0)  # log-decays from -0.03 to -0.54
            sd[a + "a0"] = uniform((1, 1, C), -2.0, 2.0)
            loras = {"w": decay_rank, "a": a_rank}
            if i > 0 or layer0_value_lora:
                sd[a + "v0"] = uniform((1, 1, C), -1.0, 1.0)
                loras["v"] = value_rank
            for n, rank in loras.items():
                sd[a + f"{n}1"] = uniform((C, rank), -0.2, 0.2)
                sd[a + f"{n}2"] = uniform((rank, C), -0.2, 0.2)
            sd[a + "g1"] = uniform((C, gate_rank), -0.2, 0.2)
            sd[a + "g2"] = uniform((gate_rank, C), -0.2, 0.2)
            sd[a + "k_k"] = uniform((1, 1, C), 0.5, 1.5)
            sd[a + "k_a"] = uniform((1, 1, C), 0.5, 1.5)
            sd[a + "r_k"] = uniform((H, K), -1.0, 1.0)
            for n in ("receptance", "key", "value", "output"):
                sd[a + n + ".weight"] = matrix(C, C)
            sd[a + "ln_x.weight"] = uniform(C, 0.5, 1.5)
            sd[a + "ln_x.bias"] = uniform(C, -0.1, 0.1)
            sd[f + "x_k"] = uniform((1, 1, C), 0, 1)
            sd[f + "key.weight"] = matrix(F, C)
            sd[f + "value.weight"] = matrix(C, F)
            continue
        if version == "x060":
            for n in "xwkvrg":
                sd[a + f"time_maa_{n}"] = uniform((1, 1, C), 0, 1)
            sd[a + "time_maa_w1"] = uniform((C, 5 * mix_rank), -0.1, 0.1)
            sd[a + "time_maa_w2"] = uniform((5, mix_rank, C), -0.1, 0.1)
            sd[a + "time_decay"] = uniform((1, 1, C), -3.0, 1.0)
            sd[a + "time_decay_w1"] = uniform((C, decay_rank), -0.1, 0.1)
            sd[a + "time_decay_w2"] = uniform((decay_rank, C), -0.1, 0.1)
            for n in "kr":
                sd[f + f"time_maa_{n}"] = uniform((1, 1, C), 0, 1)
        elif version == "x052":
            for n in "kvrg":
                sd[a + f"time_mix_{n}"] = uniform((1, 1, C), 0, 1)
            sd[a + "time_decay"] = uniform((H, K), -3.0, 1.0)
            for n in "kr":
                sd[f + f"time_mix_{n}"] = uniform((1, 1, C), 0, 1)
        else:
            raise ValueError(version)
        sd[a + "time_faaaa"] = uniform((H, K), -1.0, 1.0)
        for n in ("receptance", "key", "value", "gate", "output"):
            sd[a + n + ".weight"] = matrix(C, C)
        sd[a + "ln_x.weight"] = uniform(C, 0.5, 1.5)
        sd[a + "ln_x.bias"] = uniform(C, -0.1, 0.1)
        sd[f + "key.weight"] = matrix(F, C)
        sd[f + "receptance.weight"] = matrix(C, C)
        sd[f + "value.weight"] = matrix(C, F)
    sd["ln_out.weight"] = uniform(C, 0.7, 1.3)
    sd["ln_out.bias"] = uniform(C, -0.1, 0.1)
    sd["head.weight"] = matrix(vocab_size, C)
    return {k: v.to(dtype) for k, v in sd.items()}
