"""SampleLevelCE / BatchLevelCE: definitions, batch-composition invariance, chunking, bf16, L2Wrap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rwkvblocks.losses as losses
from rwkvblocks import BatchLevelCE, SampleLevelCE

V = 17


def _batch(lengths, T=None, seed=0, dtype=torch.float64):
    """Logits and labels where sample i has lengths[i] supervised (shifted) positions."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths) + 3
    logits = torch.randn(len(lengths), T, V, generator=g, dtype=dtype).requires_grad_()
    labels = torch.full((len(lengths), T), -100)
    for i, n in enumerate(lengths):
        labels[i, T - n :] = torch.randint(0, V, (n,), generator=g)
    return logits, labels


def _ce_of_sample(logits_i, labels_i):
    """Mean CE over one sample's valid shifted positions, with torch's own cross_entropy."""
    return F.cross_entropy(logits_i[:-1], labels_i[1:], ignore_index=-100)


def test_batch_level_is_torch_cross_entropy_over_all_valid_tokens():
    logits, labels = _batch([3, 7, 1, 5])
    got = BatchLevelCE()(logits, labels)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, logits)
    g_want, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want)


def test_sample_level_equals_the_mean_of_single_sample_losses_and_gradients():
    logits, labels = _batch([3, 7, 1, 5])
    got = SampleLevelCE()(logits, labels)
    singles = [_ce_of_sample(logits[i], labels[i]) for i in range(4)]
    want = torch.stack(singles).mean()
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, logits)
    g_want, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want)
    # gradient accumulation: two micro-batches of 2, each averaged, give the same gradient
    loss = SampleLevelCE()
    acc = sum(torch.autograd.grad(loss(logits[i : i + 2], labels[i : i + 2]) / 2, logits)[0] for i in (0, 2))
    torch.testing.assert_close(acc, g_want)


def test_paper_example_100_200_300_400_tokens():
    """Batch-level weighs sample i by n_i / 1000; sample-level by 1/4 each (Appendix D)."""
    lengths = [100, 200, 300, 400]
    logits, labels = _batch(lengths, seed=3)
    per_sample = torch.stack([_ce_of_sample(logits[i], labels[i]) for i in range(4)]).detach()
    batch = BatchLevelCE()(logits, labels)
    sample = SampleLevelCE()(logits, labels)
    torch.testing.assert_close(batch, (per_sample * torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).sum())
    torch.testing.assert_close(sample, per_sample.mean())
    # the gradient mass that reaches each sample: the same split
    share = lambda loss: torch.autograd.grad(loss, logits)[0].abs().sum((1, 2))  # noqa: E731
    per_token = share(batch) / torch.tensor(lengths)
    torch.testing.assert_close(per_token / per_token[0], torch.ones(4, dtype=torch.float64), rtol=0.2, atol=0)
    per_sample_mass = share(sample)
    torch.testing.assert_close(per_sample_mass / per_sample_mass[0], torch.ones(4, dtype=torch.float64), rtol=0.2, atol=0)


def test_a_sample_without_valid_tokens_contributes_zero_and_no_nan():
    logits, labels = _batch([4, 0, 2])
    loss = SampleLevelCE()(logits, labels)
    want = (_ce_of_sample(logits[0], labels[0]) + _ce_of_sample(logits[2], labels[2])) / 3
    torch.testing.assert_close(loss, want)
    grad, = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()
    empty_logits, empty_labels = _batch([0, 0])
    for fn in (SampleLevelCE(), BatchLevelCE()):
        value = fn(empty_logits, empty_labels)
        assert value.item() == 0.0


def test_result_does_not_depend_on_the_chunking(monkeypatch):
    logits, labels = _batch([9, 4, 11], T=14)
    whole = SampleLevelCE()(logits, labels)
    g_whole, = torch.autograd.grad(whole, logits)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 3 * V)  # 3 rows per chunk
    chunked = SampleLevelCE()(logits, labels)
    g_chunked, = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunked, g_whole)


def test_bf16_logits_give_bf16_gradients_close_to_fp32():
    logits, labels = _batch([20, 31, 7], dtype=torch.float32)
    low = logits.detach().bfloat16().requires_grad_()
    loss = SampleLevelCE()(low, labels)
    assert loss.dtype == torch.float32
    grad, = torch.autograd.grad(loss, low)
    assert grad.dtype == torch.bfloat16
    want = SampleLevelCE()(low.detach().float().requires_grad_(), labels)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)  # same rounded inputs, fp32 math
    ref_grad, = torch.autograd.grad(SampleLevelCE()(logits, labels), logits)
    rel = (grad.float() - ref_grad).norm() / ref_grad.norm()
    assert rel < 1e-2


def test_l2wrap_changes_the_gradient_not_the_value():
    logits, labels = _batch([5, 6])
    plain = BatchLevelCE()(logits, labels)
    wrapped = BatchLevelCE(l2wrap=True)(logits, labels)
    torch.testing.assert_close(plain, wrapped)
    g_plain, = torch.autograd.grad(plain, logits)
    g_wrap, = torch.autograd.grad(wrapped, logits)
    B, T = labels.shape
    extra = torch.zeros_like(logits)
    top, where = logits[:, :-1].detach().max(-1)
    extra[:, :-1].scatter_(-1, where[..., None], top[..., None] * 1e-4 / (B * (T - 1)))
    torch.testing.assert_close(g_wrap - g_plain, extra)


def test_bad_inputs_are_named():
    logits, labels = _batch([3])
    with pytest.raises(ValueError, match=r"labels must be \[B, T\]"):
        SampleLevelCE()(logits, labels[:, :-1])
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\]"):
        SampleLevelCE()(logits[0], labels)
    bad = labels.clone()
    bad[0, -1] = V
    with pytest.raises(ValueError, match=r"labels must be in \[0, 17\) or -100"):
        BatchLevelCE()(logits, bad)
