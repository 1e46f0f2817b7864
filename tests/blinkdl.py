"""Tiny random checkpoints in BlinkDL's RWKV-5/6 ``.pth`` format, written without rwkvblocks.

Key names and shapes follow DESIGN.md §5 (and what the ``rwkv`` package reads). Values are drawn
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
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    C, H, K = dim, dim // head_dim, head_dim
    F = ffn_dim or int(3.5 * C) // 32 * 32

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
