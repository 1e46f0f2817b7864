"""Packed variable-length sequences (``cu_seqlens``) on the PyTorch backends, and their checks."""

from __future__ import annotations

import pytest
import torch

from rwkvblocks.ops import wkv5, wkv6, wkv6_chunked

from .wkv_oracle import make_case, make_packed_case, rel_err, wkv_loop_packed

LENGTHS = (1, 15, 0, 63, 100, 7)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_packed_matches_fp64_oracle_with_gradients(backend, reverse, with_state):
    r, k, v, w, u, s0, cu = make_packed_case(LENGTHS, 2, 16, strong=True, with_state=with_state, seed=1)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)] + (
        [s0.clone().requires_grad_()] if with_state else []
    )
    o, s = wkv6(*leaves[:5], leaves[5] if with_state else None, reverse=reverse, cu_seqlens=cu, backend=backend)
    assert o.shape == v.shape and s.shape == (len(LENGTHS), 2, 16, 16)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    o_ref, s_ref = wkv_loop_packed(*ref[:5], ref[5] if with_state else None, cu, reverse=reverse)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    g = torch.Generator().manual_seed(2)
    do, ds = (
        torch.randn(o.shape, generator=g, dtype=torch.float64),
        torch.randn(s.shape, generator=g, dtype=torch.float64),
    )
    got = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    want = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), ref)
    for name, a, b in zip(("dr", "dk", "dv", "dw", "du", "dstate"), got, want):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_packed_equals_separate_calls(backend):
    r, k, v, w, u, s0, cu = make_packed_case((9, 30), 2, 16, with_state=True, seed=3)
    o, s = wkv6(r, k, v, w, u, s0, cu_seqlens=cu.long(), backend=backend)
    o1, s1 = wkv6(r[:, :9], k[:, :9], v[:, :9], w[:, :9], u, s0[:1], backend=backend)
    o2, s2 = wkv6(r[:, 9:], k[:, 9:], v[:, 9:], w[:, 9:], u, s0[1:], backend=backend)
    torch.testing.assert_close(o, torch.cat([o1, o2], dim=1))
    torch.testing.assert_close(s, torch.cat([s1, s2]))


def test_wkv5_packed_and_empty_input():
    r, k, v, _, u, s0, cu = make_packed_case((5, 6), 2, 8, with_state=True, seed=4)
    w5 = -torch.rand(2, 8, dtype=torch.float64)
    o, s = wkv5(r, k, v, w5, u, s0, cu_seqlens=cu)
    o_ref, s_ref = wkv_loop_packed(r, k, v, w5.expand(1, 11, 2, 8), u, s0, cu)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    empty = [x[:, :0] for x in (r, k, v)]
    o, s = wkv6(*empty, w5.expand(1, 0, 2, 8), u, s0, cu_seqlens=torch.tensor([0, 0, 0]))
    assert o.shape == (1, 0, 2, 8)
    torch.testing.assert_close(s, s0)


@pytest.mark.parametrize(
    "cu, state_n, match",
    [
        (torch.tensor([0.0, 5.0, 11.0]), 2, "int32 or int64"),
        ([0, 5, 11], 2, "must be a torch.Tensor"),
        (torch.tensor([[0, 5, 11]]), 2, r"1-D \[N\+1\]"),
        (torch.tensor([0]), 1, r"1-D \[N\+1\]"),
        (torch.tensor([1, 5, 11]), 2, "start at 0 and end at T=11"),
        (torch.tensor([0, 5, 10]), 2, "start at 0 and end at T=11"),
        (torch.tensor([0, 7, 5, 11]), 3, "non-decreasing"),
        (torch.tensor([0, 5, 11]), 3, r"state must have shape \[N, H, K, V\] = \[2, 2, 8, 8\]"),
    ],
)
def test_cu_seqlens_validation(cu, state_n, match):
    r, k, v, w, u, _ = make_case(1, 11, 2, 8)
    state = torch.zeros(state_n, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        wkv6(r, k, v, w, u, state, cu_seqlens=cu)


def test_cu_seqlens_needs_batch_of_one_and_same_device():
    r, k, v, w, u, _ = make_case(2, 11, 2, 8)
    with pytest.raises(ValueError, match="B must be 1, got B=2"):
        wkv6(r, k, v, w, u, cu_seqlens=torch.tensor([0, 11]))
    r, k, v, w, u, _ = (x.to("meta") if x is not None else None for x in make_case(1, 11, 2, 8))
    with pytest.raises(ValueError, match="cu_seqlens must be on meta"):
        wkv6(r, k, v, w, u, cu_seqlens=torch.tensor([0, 11]))


def test_cu_seqlens_value_checks_follow_validate():
    r, k, v, w, u, _ = make_case(1, 11, 2, 8)
    short = torch.tensor([0, 5, 10])
    with pytest.raises(ValueError, match="start at 0 and end at T=11"):
        wkv6(r, k, v, w, u, cu_seqlens=short, validate=True)
    _, s = wkv6(r, k, v, w, u, cu_seqlens=short, validate=False)  # not checked: it runs
    assert s.shape == (2, 2, 8, 8)


@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_chunked_packed_keeps_each_sequence_in_its_own_state_slots(chunk, reverse):
    """Sequence n's chunk states start at slot bos_n // L + n: no two sequences overlap at any L."""
    r, k, v, w, u, s0, cu = make_packed_case((3, 0, 17, 1, 9), 2, 8, strong=True, with_state=True, seed=5)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u, s0)]
    o, s = wkv6_chunked(*leaves, reverse=reverse, chunk_size=chunk, cu_seqlens=cu)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    o_ref, s_ref = wkv_loop_packed(*ref, cu, reverse=reverse)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    g = torch.Generator().manual_seed(6)
    do, ds = (torch.randn(x.shape, generator=g, dtype=torch.float64) for x in (o, s))
    got = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    want = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), ref)
    for name, a, b in zip(("dr", "dk", "dv", "dw", "du", "dstate"), got, want):
        assert rel_err(a, b) < 1e-10, name
