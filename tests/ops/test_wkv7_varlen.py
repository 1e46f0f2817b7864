"""RWKV-7 WKV over packed variable-length sequences (``cu_seqlens``) on the PyTorch backends, and their checks."""

from __future__ import annotations

import pytest
import torch

from rwkvblocks.ops import wkv7

from .wkv7_oracle import make_case7, make_packed_case7, rel_err, wkv7_loop_packed

LENGTHS = (1, 15, 0, 63, 100, 7)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_packed_matches_fp64_oracle_with_gradients(backend, with_state):
    *inputs, s0, cu = make_packed_case7(LENGTHS, 2, 16, with_state=with_state, seed=1)
    leaves = [x.clone().requires_grad_() for x in inputs] + ([s0.clone().requires_grad_()] if with_state else [])
    o, s = wkv7(*leaves[:6], leaves[6] if with_state else None, cu_seqlens=cu, backend=backend)
    assert o.shape == inputs[3].shape and s.shape == (len(LENGTHS), 2, 16, 16)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    o_ref, s_ref = wkv7_loop_packed(*ref[:6], ref[6] if with_state else None, cu)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    g = torch.Generator().manual_seed(2)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    want = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), ref)
    for name, x, y in zip(("dr", "dw", "dk", "dv", "da", "db", "dstate"), got, want):
        assert rel_err(x, y) < 1e-10, name


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_packed_equals_separate_calls(backend):
    *inputs, s0, cu = (x.float() for x in make_packed_case7((9, 30), 2, 16, with_state=True, seed=3))
    o, s = wkv7(*inputs, s0, cu_seqlens=cu.long(), backend=backend)
    o1, s1 = wkv7(*(x[:, :9] for x in inputs), s0[:1], backend=backend)
    o2, s2 = wkv7(*(x[:, 9:] for x in inputs), s0[1:], backend=backend)
    torch.testing.assert_close(o, torch.cat([o1, o2], dim=1))
    torch.testing.assert_close(s, torch.cat([s1, s2]))


def test_empty_packed_input_passes_the_states_through():
    *inputs, s0, _ = make_packed_case7((5, 6), 2, 8, with_state=True, seed=4)
    empty = [x[:, :0] for x in inputs]
    o, s = wkv7(*empty, s0, cu_seqlens=torch.tensor([0, 0, 0]))
    assert o.shape == (1, 0, 2, 8)
    torch.testing.assert_close(s, s0)


BAD_CU = {
    "float": (torch.tensor([0.0, 4.0]), "cu_seqlens must be int32 or int64"),
    "2-D": (torch.tensor([[0, 4]]), r"cu_seqlens must be 1-D \[N\+1\]"),
    "one-bound": (torch.tensor([0]), r"cu_seqlens must be 1-D \[N\+1\]"),
    "not-a-tensor": ([0, 4], "cu_seqlens must be a torch.Tensor"),
    "short": (torch.tensor([0, 3]), "cu_seqlens must start at 0 and end at T=4"),
    "start": (torch.tensor([1, 4]), "cu_seqlens must start at 0"),
    "decreasing": (torch.tensor([0, 3, 2, 4]), "cu_seqlens must be non-decreasing"),
    "device": (torch.tensor([0, 4], device="meta"), "cu_seqlens must be on cpu"),
}


@pytest.mark.parametrize("case", list(BAD_CU))
def test_bad_cu_seqlens_raise(case):
    cu, message = BAD_CU[case]
    inputs = make_case7(1, 4, 2, 8)[:6]
    with pytest.raises(ValueError, match=message):
        wkv7(*inputs, cu_seqlens=cu)


def test_packed_needs_batch_one_and_one_state_per_sequence():
    inputs = make_case7(2, 4, 2, 8)[:6]
    with pytest.raises(ValueError, match="B must be 1"):
        wkv7(*inputs, cu_seqlens=torch.tensor([0, 4]))
    *inputs, _, cu = make_packed_case7((2, 2), 2, 8)
    with pytest.raises(ValueError, match=r"state must have shape \[N, H, V, K\]"):
        wkv7(*inputs, torch.zeros(1, 2, 8, 8, dtype=torch.float64), cu_seqlens=cu)


def test_unchecked_bounds_skip_the_host_read():
    """``validate=False`` reads no value of ``cu_seqlens`` in the checks (the backend itself still needs them)."""
    inputs = make_case7(1, 4, 2, 8)[:6]
    o, _ = wkv7(*inputs, cu_seqlens=torch.tensor([0, 4]), validate=False)
    assert o.shape == (1, 4, 2, 8)
