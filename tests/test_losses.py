"""SampleLevelCE / BatchLevelCE: definitions, batch-composition invariance, chunking, bf16, L2Wrap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rwkvblocks.ops.cross_entropy.chunked as ce_chunked
from rwkvblocks import BatchLevelCE, SampleLevelCE
from rwkvblocks.losses import cross_entropy_per_token

from .ops.sync import forbid_host_reads

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
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want)


def test_sample_level_equals_the_mean_of_single_sample_losses_and_gradients():
    logits, labels = _batch([3, 7, 1, 5])
    got = SampleLevelCE()(logits, labels)
    singles = [_ce_of_sample(logits[i], labels[i]) for i in range(4)]
    want = torch.stack(singles).mean()
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
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
    torch.testing.assert_close(
        per_sample_mass / per_sample_mass[0], torch.ones(4, dtype=torch.float64), rtol=0.2, atol=0
    )


def test_a_sample_without_valid_tokens_contributes_zero_and_no_nan():
    logits, labels = _batch([4, 0, 2])
    loss = SampleLevelCE()(logits, labels)
    want = (_ce_of_sample(logits[0], labels[0]) + _ce_of_sample(logits[2], labels[2])) / 3
    torch.testing.assert_close(loss, want)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()
    empty_logits, empty_labels = _batch([0, 0])
    for fn in (SampleLevelCE(), BatchLevelCE()):
        value = fn(empty_logits, empty_labels)
        assert value.item() == 0.0


def test_result_does_not_depend_on_the_chunking(monkeypatch):
    logits, labels = _batch([9, 4, 11], T=14)
    whole = SampleLevelCE()(logits, labels)
    (g_whole,) = torch.autograd.grad(whole, logits)
    monkeypatch.setattr(ce_chunked, "CHUNK_ELEMENTS", 3 * V)  # 3 rows per chunk
    chunked = SampleLevelCE()(logits, labels)
    (g_chunked,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunked, g_whole)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_logits_give_bf16_gradients_close_to_fp32(seed):
    logits, labels = _batch([20, 31, 7], dtype=torch.float32, seed=seed)
    low = logits.detach().bfloat16().requires_grad_()
    loss = SampleLevelCE()(low, labels)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, low)
    assert grad.dtype == torch.bfloat16
    want = SampleLevelCE()(low.detach().float().requires_grad_(), labels)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)  # same rounded inputs, fp32 math
    (ref_grad,) = torch.autograd.grad(SampleLevelCE()(logits, labels), logits)
    rel = (grad.float() - ref_grad).norm() / ref_grad.norm()
    assert rel < 4e-3  # measured: 1.7e-3 .. 2.1e-3 over seeds 0-9 (2.5e-3 at most with lengths 100, 3, 50, 64)


def test_l2wrap_changes_the_gradient_not_the_value():
    logits, labels = _batch([5, 6])
    plain = BatchLevelCE()(logits, labels)
    wrapped = BatchLevelCE(l2wrap=True)(logits, labels)
    torch.testing.assert_close(plain, wrapped)
    (g_plain,) = torch.autograd.grad(plain, logits)
    (g_wrap,) = torch.autograd.grad(wrapped, logits)
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


def _aligned(labels):
    """The labels of the shifted loss, moved so that position t holds the label that logits[:, t] predicts."""
    aligned = torch.full_like(labels, -100)
    aligned[:, :-1] = labels[:, 1:]
    return aligned


@pytest.mark.parametrize("loss_cls", [SampleLevelCE, BatchLevelCE])
def test_shift_false_on_pre_shifted_labels_equals_shift_true(loss_cls):
    logits, labels = _batch([3, 7, 1, 5], seed=4)
    shifted = loss_cls()(logits, labels)
    aligned = loss_cls(shift=False)(logits, _aligned(labels))
    torch.testing.assert_close(aligned, shifted)
    (g_shifted,) = torch.autograd.grad(shifted, logits)
    (g_aligned,) = torch.autograd.grad(aligned, logits)
    torch.testing.assert_close(g_aligned, g_shifted)


def test_shift_false_counts_every_position():
    logits, labels = _batch([6, 2], seed=5)
    labels[:, 0] = torch.tensor([1, 2])  # the first position counts too once nothing is shifted
    got = BatchLevelCE(shift=False)(logits, labels)
    want = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got, want)
    g_got, g_want = (torch.autograd.grad(x, logits)[0] for x in (got, want))
    torch.testing.assert_close(g_got, g_want)
    weights = torch.rand(2, labels.shape[1], dtype=torch.float64)
    per_token = cross_entropy_per_token(logits, labels, weights, shift=False)
    ce = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="none")
    torch.testing.assert_close(per_token, (ce.view(2, -1) * weights).sum())
    with pytest.raises(ValueError, match=r"weights must be \[B, N\] = \[2, 9\] \(shift=False\)"):
        cross_entropy_per_token(logits, labels, weights[:, 1:], shift=False)


def test_cross_entropy_per_token_shift_false_equals_shift_true_on_pre_shifted_labels():
    logits, labels = _batch([4, 8], seed=6)
    weights = torch.rand(2, labels.shape[1] - 1, dtype=torch.float64)
    shifted = cross_entropy_per_token(logits, labels, weights)
    aligned = cross_entropy_per_token(logits, _aligned(labels), F.pad(weights, (0, 1), value=0.5), shift=False)
    torch.testing.assert_close(aligned, shifted)
    g = [torch.autograd.grad(x, logits)[0] for x in (shifted, aligned)]
    torch.testing.assert_close(g[1], g[0])


def test_l2wrap_without_shift_uses_every_position_and_factor_over_b_t():
    logits, labels = _batch([5, 6], seed=7)
    plain = BatchLevelCE(shift=False)(logits, labels)
    wrapped = BatchLevelCE(shift=False, l2wrap=True)(logits, labels)
    torch.testing.assert_close(plain, wrapped)
    g_plain, g_wrap = (torch.autograd.grad(x, logits)[0] for x in (plain, wrapped))
    B, T = labels.shape
    extra = torch.zeros_like(logits)
    top, where = logits.detach().max(-1)
    extra.scatter_(-1, where[..., None], top[..., None] * 1e-4 / (B * T))
    torch.testing.assert_close(g_wrap - g_plain, extra)


def test_label_checks_follow_validate():
    logits, labels = _batch([3, 4])
    bad = labels.clone()
    bad[0, -1] = -5  # neither a token id nor ignore_index
    for loss in (SampleLevelCE(validate=True), BatchLevelCE(validate=True)):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 17\) or -100, got \[-5\]"):
            loss(logits, bad)
    with pytest.raises(RuntimeError, match="out of bounds"):  # not checked: the gather itself fails
        SampleLevelCE(validate=False)(logits, bad)
    with pytest.raises(ValueError, match="labels must be in"):
        cross_entropy_per_token(logits, bad, torch.ones(2, labels.shape[1] - 1), validate=True)


def test_default_reads_labels_on_cpu_and_validate_false_reads_nothing():
    logits, labels = _batch([3, 4])
    with forbid_host_reads(), pytest.raises(AssertionError, match="read a value on the host"):
        SampleLevelCE()(logits, labels)
    with forbid_host_reads():
        for loss in (SampleLevelCE(validate=False, l2wrap=True), BatchLevelCE(validate=False, shift=False)):
            loss(logits, labels).backward()
