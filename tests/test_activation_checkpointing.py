"""Activation checkpointing recomputes each block in the backward: the same loss and gradients as without."""

from __future__ import annotations

import pytest
import torch

from assemblies import RWKVConfig, build_rwkv_lm
from rwkvblocks import SampleLevelCE
from tests.helpers import spread_weights_


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_checkpointed_blocks_give_the_same_gradients(version):
    torch.manual_seed(0)
    cfg = RWKVConfig(
        version,
        vocab_size=64,
        dim=64,
        num_layers=3,
        head_dim=32,
        mix_rank=8,
        decay_rank=8,
        a_rank=8,
        value_rank=8,
        gate_rank=8,
    )
    lm = build_rwkv_lm(cfg, dtype=torch.float64)
    spread_weights_(lm)
    lm.train()
    tokens = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    grads, losses = [], []
    for on in (False, True):
        lm.zero_grad(set_to_none=True)
        lm.activation_checkpointing = on
        logits, _ = lm(tokens)
        loss = SampleLevelCE()(logits, tokens)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], atol=0, rtol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-12, rtol=0, msg=name)


def test_checkpointing_is_off_in_eval_and_without_grad():
    lm = build_rwkv_lm(RWKVConfig("x060", vocab_size=32, dim=64, num_layers=1, head_dim=32))
    lm.activation_checkpointing = True
    lm.eval()
    with torch.no_grad():
        logits, state = lm(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 32) and state is not None
