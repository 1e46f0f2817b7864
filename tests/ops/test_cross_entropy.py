"""weighted_cross_entropy: against torch's cross_entropy (values, logits and weights gradients), rows past
N, chunking, L2Wrap, bf16, gradcheck, argument errors and the dispatcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rwkvblocks.ops.cross_entropy.chunked as ce_chunked
from rwkvblocks.ops import BackendUnavailableError, cross_entropy_dispatcher, weighted_cross_entropy

V = 13


def _case(B=3, T=9, N=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    N = T - 1 if N is None else N
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (B, N), generator=g)
    weights = torch.rand(B, N, generator=g, dtype=torch.float64).requires_grad_()
    return logits, targets, weights


def _oracle(logits, targets, weights):
    """The same sum with torch's own cross_entropy on the first N rows."""
    B, N = targets.shape
    per_row = F.cross_entropy(logits[:, :N].reshape(B * N, V), targets.reshape(-1), reduction="none")
    return (per_row.view(B, N) * weights).sum()


@pytest.mark.parametrize("N", [8, 9, 1, 0], ids=["shifted", "aligned", "one-row", "no-rows"])
def test_matches_torch_cross_entropy_with_every_gradient(N):
    logits, targets, weights = _case(N=N)
    got = weighted_cross_entropy(logits, targets, weights)
    want = _oracle(logits, targets, weights)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got, (logits, weights), allow_unused=True)
    g_want = torch.autograd.grad(want, (logits, weights), allow_unused=True)
    if N:
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b)
    assert (g_got[0][:, N:] == 0).all()  # rows from N on carry no loss


def test_chunking_does_not_change_the_result(monkeypatch):
    logits, targets, weights = _case(B=2, T=14)
    whole = weighted_cross_entropy(logits, targets, weights)
    g_whole = torch.autograd.grad(whole, (logits, weights))
    monkeypatch.setattr(ce_chunked, "CHUNK_ELEMENTS", 3 * V)  # 3 rows per chunk, the last one short
    chunked = weighted_cross_entropy(logits, targets, weights)
    g_chunked = torch.autograd.grad(chunked, (logits, weights))
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(g_chunked, g_whole):
        torch.testing.assert_close(a, b)


def test_gradcheck_fp64():
    logits, targets, weights = _case(B=2, T=4, N=3, seed=1)

    def fn(logits, weights):
        return weighted_cross_entropy(logits, targets, weights)

    assert torch.autograd.gradcheck(fn, (logits, weights), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_l2wrap_adds_max_logit_at_the_argmax_of_every_predicting_row():
    logits, targets, weights = _case(N=7)
    plain = weighted_cross_entropy(logits, targets, weights)
    wrapped = weighted_cross_entropy(logits, targets, weights, l2wrap=0.01)
    torch.testing.assert_close(plain, wrapped)
    (g_plain,) = torch.autograd.grad(plain * 2, logits)
    (g_wrap,) = torch.autograd.grad(wrapped * 2, logits)
    extra = torch.zeros_like(logits)
    top, where = logits[:, :7].detach().max(-1)
    extra[:, :7].scatter_(-1, where[..., None], top[..., None] * 0.01)  # not scaled by the cotangent
    torch.testing.assert_close(g_wrap - g_plain, extra)


def test_bf16_logits_fp32_loss_bf16_gradient_and_no_fp32_copy_of_the_result():
    logits, targets, weights = _case(dtype=torch.bfloat16)
    loss = weighted_cross_entropy(logits, targets, weights.detach().float())
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.dtype == torch.bfloat16 and grad.shape == logits.shape
    want = _oracle(logits.detach().float(), targets, weights.detach().float())
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)  # same rounded inputs, fp32 math


def test_int32_targets_and_non_contiguous_logits():
    logits, targets, weights = _case(T=10)
    strided = logits.transpose(0, 1).contiguous().transpose(0, 1)
    got = weighted_cross_entropy(strided, targets.int(), weights)
    torch.testing.assert_close(got, _oracle(logits, targets, weights))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(logits=a["logits"][0]), r"logits must be a floating-point \[B, T, V\]"),
        (lambda a: a.update(logits=a["logits"].long()), r"logits must be a floating-point \[B, T, V\]"),
        (lambda a: a.update(targets=a["targets"].float()), "targets must be an int64 or int32 tensor"),
        (lambda a: a.update(targets=torch.zeros(3, 10, dtype=torch.long)), r"targets must be \[B, N\] = \[3, N <= 9\]"),
        (lambda a: a.update(weights=a["weights"][:, :2]), r"weights must be a floating-point tensor of shape \[3, 8\]"),
        (lambda a: a.update(l2wrap=-1.0), "l2wrap must be >= 0"),
        (lambda a: a.update(targets=a["targets"].clone().fill_(V)), r"targets must be in \[0, 13\)"),
        (lambda a: a.update(weights=a["weights"].to("meta")), "must share a device"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(mutate, message):
    logits, targets, weights = _case()
    args = {"logits": logits, "targets": targets, "weights": weights}
    mutate(args)
    with pytest.raises(ValueError, match=message):
        weighted_cross_entropy(**args)


def test_target_range_check_follows_validate():
    logits, targets, weights = _case()
    bad = targets.clone()
    bad[0, 0] = -3
    with pytest.raises(ValueError, match=r"targets must be in \[0, 13\), got \[-3\]"):
        weighted_cross_entropy(logits, bad, weights, validate=True)
    with pytest.raises(RuntimeError, match="out of bounds"):  # unchecked: the gather itself fails
        weighted_cross_entropy(logits, bad, weights, validate=False)


def test_dispatcher_has_one_backend_and_refuses_unknown_names(monkeypatch):
    assert cross_entropy_dispatcher.names() == ["chunked"]
    logits, targets, weights = _case()
    got = weighted_cross_entropy(logits, targets, weights, backend="chunked")
    torch.testing.assert_close(got, _oracle(logits, targets, weights))
    with pytest.raises(ValueError, match="unknown backend 'fused'"):
        weighted_cross_entropy(logits, targets, weights, backend="fused")
    monkeypatch.setenv("RWKVBLOCKS_CROSS_ENTROPY_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        weighted_cross_entropy(logits, targets, weights)
    assert issubclass(BackendUnavailableError, ValueError)
