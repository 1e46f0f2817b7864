"""Packing samples into one row (``cu_seqlens``): every sample is computed exactly as if it ran alone."""

from __future__ import annotations

import pytest
import torch

from assemblies import RWKVConfig, build_rwkv_lm
from rwkvblocks import BatchLevelCE, PreNormTinyAttention, SampleLevelCE, ScanPermuter, shift_tokens
from tests.helpers import spread_weights_

V = 97
LENGTHS = (5, 1, 9, 3)


def _model(version, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = RWKVConfig(version, vocab_size=V, dim=64, num_layers=3, head_dim=16, mix_rank=4, decay_rank=8)
    return spread_weights_(build_rwkv_lm(cfg, dtype=dtype)).eval()


def _samples(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (1, n), generator=g) for n in lengths]


def _cu(lengths, dtype=torch.int64):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=dtype)


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
@pytest.mark.parametrize("cu_dtype", [torch.int64, torch.int32])
def test_packed_row_logits_equal_each_sample_alone(version, cu_dtype):
    model = _model(version)
    samples = _samples()
    with torch.no_grad():
        alone = torch.cat([model(s)[0] for s in samples], dim=1)
        packed, state = model(torch.cat(samples, dim=1), cu_seqlens=_cu(LENGTHS, cu_dtype))
    assert state is None
    assert packed.shape == (1, sum(LENGTHS), V)
    torch.testing.assert_close(packed, alone, atol=1e-12, rtol=0)


@pytest.mark.parametrize("version", ["x060", "x070"])
def test_packed_gradients_equal_the_sum_over_samples(version):
    model = _model(version)
    samples = _samples()
    weights = [torch.randn(1, n, V, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) for n in LENGTHS]
    model.zero_grad()
    sum((model(s)[0] * w).sum() for s, w in zip(samples, weights)).backward()
    alone = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(torch.cat(samples, dim=1), cu_seqlens=_cu(LENGTHS))
    (logits * torch.cat(weights, dim=1)).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, alone[name], atol=1e-10, rtol=0, msg=name)


def test_packed_row_with_a_scan_plan_equals_each_sample_alone():
    """A bidirectional scan over an image-like span inside each sample: packing does not change it."""
    model = _model("x060")
    scan = ScanPermuter("bi")
    lengths = (10, 7)
    samples = _samples(lengths, seed=3)
    spans = [(2, 2, 3), (1, 2, 2)]  # (start, h, w) inside each sample
    with torch.no_grad():
        alone = []
        for s, (start, h, w) in zip(samples, spans):
            plan = scan.plan([(0, start, h, w)], batch_size=1, seq_len=s.shape[1])
            alone.append(model(s, scan=plan)[0])
        rows = [(0, spans[0][0], 2, 3), (0, lengths[0] + spans[1][0], 2, 2)]
        plan = scan.plan(rows, batch_size=1, seq_len=sum(lengths))
        packed, _ = model(torch.cat(samples, dim=1), scan=plan, cu_seqlens=_cu(lengths))
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), atol=1e-12, rtol=0)


def test_packing_is_refused_where_it_would_mix_samples():
    model = _model("x060")
    tokens = torch.cat(_samples((3, 4)), dim=1)
    cu = _cu((3, 4))
    with pytest.raises(ValueError, match="B must be 1"):
        model(tokens.expand(2, -1), cu_seqlens=cu)
    with pytest.raises(ValueError, match="state=None"):
        model(tokens, model.init_state(1), cu_seqlens=cu)
    with pytest.raises(ValueError, match="int32 or int64"):
        model(tokens, cu_seqlens=cu.float())
    model.blocks[1].tiny_att = PreNormTinyAttention(64, head_dim=32, dtype=torch.float64)
    with pytest.raises(ValueError, match="tiny_att"):
        model(tokens, cu_seqlens=cu)
    model.blocks[1].tiny_att = None
    model.blocks.append(torch.nn.Identity())
    model._takes_cu_seqlens += (False,)
    with pytest.raises(ValueError, match="block\\(s\\) 3 \\(Identity\\)"):
        model(tokens, cu_seqlens=cu)


def test_shift_tokens_restarts_at_each_sequence():
    x = torch.arange(1.0, 7.0).view(1, 6, 1)
    got = shift_tokens(x, None, torch.tensor([0, 2, 2, 6]))
    assert got.flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("shift", [True, False])
def test_losses_with_cu_seqlens_equal_a_padded_batch(shift):
    torch.manual_seed(0)
    lengths = (4, 6, 2)
    logits = [torch.randn(1, n, 11, dtype=torch.float64) for n in lengths]
    labels = [torch.randint(0, 11, (1, n)) for n in lengths]
    labels[1][0, 2] = -100
    T = max(lengths)
    padded_logits = torch.zeros(len(lengths), T, 11, dtype=torch.float64)
    padded_labels = torch.full((len(lengths), T), -100)
    for i, (lo, la) in enumerate(zip(logits, labels)):
        padded_logits[i, : lo.shape[1]] = lo[0]
        padded_labels[i, : la.shape[1]] = la[0]
    for loss in (SampleLevelCE(shift=shift), BatchLevelCE(shift=shift)):
        want = loss(padded_logits, padded_labels)
        got = loss(torch.cat(logits, 1), torch.cat(labels, 1), cu_seqlens=_cu(lengths))
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # without cu_seqlens the last position of sample i would predict the first label of sample i + 1
    if shift:
        crossing = BatchLevelCE()(torch.cat(logits, 1), torch.cat(labels, 1))
        assert not torch.allclose(crossing, BatchLevelCE()(padded_logits, padded_labels))
