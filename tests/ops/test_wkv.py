"""WKV operator: backends against the independent fp64 oracle, gradients, invariants, errors.

Tolerances (relative RMS error against the fp64 loop, outputs, final state and every gradient):

| backend   | fp64 inputs | fp32 inputs | bf16 inputs |
| ---       | ---         | ---         | ---         |
| chunked   | 1e-10       | 1e-5        | 1e-2        |
| reference | 1e-10       | 1e-5        | 1e-2        |
"""

from __future__ import annotations

import functools

import pytest
import torch

from rwkvblocks.ops import wkv5, wkv6
from rwkvblocks.ops.wkv import chunked as chunked_mod

from .wkv_oracle import make_case, rel_err, wkv_loop

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}
NAMES = ("o", "state", "dr", "dk", "dv", "dw", "du", "dstate")


@functools.cache
def oracle(B, T, H, K, strong, with_state, reverse, seed=0):
    """Inputs, cotangents, and the oracle's outputs and gradients (all fp64)."""
    r, k, v, w, u, s0 = make_case(B, T, H, K, strong=strong, with_state=with_state, seed=seed)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    s_leaf = s0.clone().requires_grad_() if s0 is not None else None
    o, s = wkv_loop(*leaves, s_leaf, reverse=reverse)
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves + ([s_leaf] if s0 is not None else []))
    inputs = (r, k, v, w, u, s0)
    return inputs, (do, ds), (o.detach(), s.detach()) + tuple(grads)


def run_backend(backend, inputs, cot, dtype, reverse, op=wkv6):
    """Run ``op`` with inputs cast to ``dtype`` (log-decay and state kept in fp32/fp64 as
    TimeMix produces them) and return outputs and gradients."""
    r, k, v, w, u, s0 = inputs
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [x.to(dtype).requires_grad_() for x in (r, k, v, u)]
    w_leaf = w.to(w_dtype).requires_grad_()
    s_leaf = s0.to(state_dtype).requires_grad_() if s0 is not None else None
    rr, kk, vv, uu = leaves
    o, s = op(rr, kk, vv, w_leaf, uu, s_leaf, reverse=reverse, backend=backend)
    assert o.dtype == dtype and o.shape == v.shape
    assert s.dtype == state_dtype and s.shape == (r.shape[0], r.shape[2], r.shape[3], v.shape[3])
    do, ds = cot
    loss = (o.double() * do).sum() + (s.double() * ds).sum()
    wrt = [rr, kk, vv, w_leaf, uu] + ([s_leaf] if s0 is not None else [])
    grads = torch.autograd.grad(loss, wrt)
    return (o, s) + tuple(grads)


def check(got, want, tol, label):
    errors = {name: rel_err(g, w) for name, g, w in zip(NAMES, got, want)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"{label}: relative RMS error above {tol:g}: {bad} (all: {errors})"


LENGTHS = [1, 15, 63, 100, 1000]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("K", [16, 64])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("strong", [False, True], ids=["rwkv6-decay", "decay-to-30"])
def test_chunked_matches_fp64_loop(T, K, with_state, reverse, strong):
    B, H = (1, 2) if T == 1000 else (2, 2)
    inputs, cot, want = oracle(B, T, H, K, strong, with_state, reverse)
    for dtype in (torch.float64, torch.float32):
        got = run_backend("chunked", inputs, cot, dtype, reverse)
        check(got, want, TOL[dtype], f"chunked {dtype} T={T} K={K}")
        assert all(torch.isfinite(x).all() for x in got)


@pytest.mark.parametrize("T", [1, 15, 100])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("strong", [False, True], ids=["rwkv6-decay", "decay-to-30"])
def test_reference_matches_fp64_loop(T, reverse, strong):
    inputs, cot, want = oracle(2, T, 2, 16, strong, True, reverse)
    for dtype in (torch.float64, torch.float32):
        got = run_backend("reference", inputs, cot, dtype, reverse)
        check(got, want, TOL[dtype], f"reference {dtype} T={T}")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_bf16_inputs_within_1e2_of_fp64(backend, reverse):
    inputs, cot, want = oracle(2, 100, 2, 64, False, True, reverse)
    got = run_backend(backend, inputs, cot, torch.bfloat16, reverse)
    check(got, want, TOL[torch.bfloat16], f"{backend} bf16")


@pytest.mark.parametrize("chunk", [1, 2, 4, 8, 32])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_chunked_every_chunk_size_and_tiling(monkeypatch, chunk, reverse):
    """Small tiles force several samples groups and time segments (the state carried across)."""
    monkeypatch.setattr(chunked_mod, "_TILE_ELEMENTS", 2 * 16 * 8)
    inputs, cot, want = oracle(3, 45, 2, 16, True, True, reverse)
    r, k, v, w, u, s0 = [x.clone().requires_grad_() for x in inputs]
    o, s = chunked_mod.wkv6_chunked(r, k, v, w, u, s0, reverse=reverse, chunk_size=chunk)
    loss = (o * cot[0]).sum() + (s * cot[1]).sum()
    got = (o, s) + torch.autograd.grad(loss, (r, k, v, w, u, s0))
    check(got, want, 1e-10, f"chunk={chunk}")


def test_chunked_rejects_bad_chunk_size():
    r, k, v, w, u, _ = make_case(1, 4, 1, 4)
    with pytest.raises(ValueError, match="power of two"):
        chunked_mod.wkv6_chunked(r, k, v, w, u, chunk_size=3)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_fp64(backend, reverse):
    r, k, v, w, u, s0 = make_case(1, 7, 2, 4, with_state=True, seed=3, V=3)
    args = [x.clone().requires_grad_() for x in (r, k, v, w, u, s0)]

    def fn(r, k, v, w, u, s0):
        return wkv6(r, k, v, w, u, s0, reverse=reverse, backend=backend)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_gradcheck_wkv5_static_decay(backend):
    r, k, v, _, u, s0 = make_case(2, 5, 2, 4, with_state=True, seed=4)
    w = -torch.rand(2, 4, dtype=torch.float64) - 0.1
    args = [x.clone().requires_grad_() for x in (r, k, v, w, u, s0)]

    def fn(r, k, v, w, u, s0):
        return wkv5(r, k, v, w, u, s0, backend=backend)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T, split", [(100, 37), (64, 1), (129, 128)])
def test_state_continuation(backend, reverse, T, split):
    """All T tokens at once == two pieces with the state carried between them."""
    r, k, v, w, u, s0 = (x.float() for x in make_case(2, T, 2, 16, with_state=True, seed=5))
    o, s = wkv6(r, k, v, w, u, s0, reverse=reverse, backend=backend)
    first, second = slice(0, split), slice(split, T)
    if reverse:  # time runs backwards: the tail goes first
        first, second = second, first
    o1, s1 = wkv6(r[:, first], k[:, first], v[:, first], w[:, first], u, s0, reverse=reverse, backend=backend)
    o2, s2 = wkv6(r[:, second], k[:, second], v[:, second], w[:, second], u, s1, reverse=reverse, backend=backend)
    pieces = torch.cat([o2, o1] if reverse else [o1, o2], dim=1)
    torch.testing.assert_close(pieces, o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_reverse_is_flip_forward_flip(backend):
    r, k, v, w, u, s0 = make_case(2, 50, 3, 16, with_state=True, seed=6)
    o, s = wkv6(r, k, v, w, u, s0, reverse=True, backend=backend)
    flip = [x.flip(1) for x in (r, k, v, w)]
    of, sf = wkv6(*flip, u, s0, backend=backend)
    torch.testing.assert_close(o, of.flip(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s, sf, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_wkv5_equals_wkv6_with_broadcast_decay(backend):
    r, k, v, _, u, s0 = make_case(2, 33, 2, 16, with_state=True, seed=7)
    w5 = -torch.rand(2, 16, dtype=torch.float64) * 3
    w5.requires_grad_()
    o5, s5 = wkv5(r, k, v, w5, u, s0, backend=backend)
    w6 = w5.detach().expand(2, 33, 2, 16).clone().requires_grad_()
    o6, s6 = wkv6(r, k, v, w6, u, s0, backend=backend)
    torch.testing.assert_close(o5, o6)
    torch.testing.assert_close(s5, s6)
    (o5.sum() + s5.sum()).backward()
    (o6.sum() + s6.sum()).backward()
    torch.testing.assert_close(w5.grad, w6.grad.sum(dim=(0, 1)))


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_inputs_are_not_modified(backend):
    """H == 1 makes tiles alias the inputs: the kernels must still leave them untouched."""
    case = [x.float() for x in make_case(2, 40, 1, 16, with_state=True, seed=8)]
    before = [x.clone() for x in case]
    wkv6(*case, backend=backend)
    for x, y in zip(case, before):
        assert torch.equal(x, y)


def test_output_dtypes_and_empty_sequence():
    r, k, v, w, u, s0 = (x.float() for x in make_case(1, 3, 2, 8, with_state=True))
    o, s = wkv6(r.half(), k.half(), v.half(), w, u, s0)
    assert o.dtype == torch.float16 and s.dtype == torch.float32
    o, s = wkv6(r[:, :0], k[:, :0], v[:, :0], w[:, :0], u, s0)
    assert o.shape == (1, 0, 2, 8)
    torch.testing.assert_close(s, s0)


def test_no_grad_forward_matches_grad_forward():
    case = [x.float() for x in make_case(1, 70, 2, 16, with_state=True, seed=9)]
    with torch.no_grad():
        o1, s1 = wkv6(*case, backend="chunked")
    o2, s2 = wkv6(*[x.requires_grad_() for x in case], backend="chunked")
    assert torch.equal(o1, o2.detach()) and torch.equal(s1, s2.detach())
