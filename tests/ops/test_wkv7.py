"""RWKV-7 WKV operator: PyTorch backends against the independent fp64 oracle, gradients, invariants, errors.

Tolerances (relative RMS error against the fp64 loop: outputs, final state and every gradient, r w k v a b
and the initial state). bf16 is compared with the oracle run on the bf16-rounded inputs (log-decay and
state stay fp32, as the blocks make them), so it measures the op, not the rounding of its inputs:

| backend   | fp64 inputs | fp32 inputs | bf16 inputs |
| ---       | ---         | ---         | ---         |
| chunked   | 1e-10       | 1e-5        | 5e-3        |
| reference | 1e-10       | 1e-5        | 5e-3        |
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from rwkvblocks.ops import state_from_fla, state_to_fla, wkv7, wkv7_chunked, wkv7_dispatcher, wkv7_reference

from .wkv7_oracle import W_MIN, make_case7, rel_err, wkv7_loop

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-3}
NAMES = ("o", "state", "dr", "dw", "dk", "dv", "da", "db", "dstate")
BEYOND = -3.0  # five times RWKV-7's strongest log-decay


def _grads_of(o, s, cot, wrt):
    do, ds = cot
    return torch.autograd.grad((o.double() * do).sum() + (s.double() * ds).sum(), wrt)


@functools.cache
def oracle(B, T, H, K, with_state, w_min=W_MIN, seed=0, rounded_to=None):
    """Inputs, cotangents, and the oracle's outputs and gradients (fp64). ``rounded_to`` rounds r, k, v, a, b
    to that dtype first (the oracle then runs on exactly what a reduced-precision call receives)."""
    *inputs, s0 = make_case7(B, T, H, K, with_state=with_state, seed=seed, w_min=w_min)
    if rounded_to is not None:
        inputs = [x if i == 1 else x.to(rounded_to).double() for i, x in enumerate(inputs)]
    inputs = (*inputs, s0)
    leaves = [x.clone().requires_grad_() for x in inputs if x is not None]
    o, s = wkv7_loop(*leaves[:6], leaves[6] if with_state else None)
    g = torch.Generator().manual_seed(seed + 1)
    cot = (
        torch.randn(o.shape, generator=g, dtype=torch.float64),
        torch.randn(s.shape, generator=g, dtype=torch.float64),
    )
    grads = _grads_of(o, s, cot, leaves)
    return inputs, cot, (o.detach(), s.detach(), *grads)


def run(fn, inputs, cot, dtype):
    """``fn(r, w, k, v, a, b, state)`` with r, k, v, a, b in ``dtype`` (w and the state fp32, fp64 for fp64):
    outputs and the gradients of every input."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [
        x.to(acc if i in (1, 6) else dtype).requires_grad_() if x is not None else None for i, x in enumerate(inputs)
    ]
    o, s = fn(*leaves)
    r, v = inputs[0], inputs[3]
    assert o.dtype == dtype and o.shape == v.shape
    assert s.dtype == acc and s.shape == (r.shape[0], r.shape[2], v.shape[3], r.shape[3])
    return (o, s, *_grads_of(o, s, cot, [x for x in leaves if x is not None]))


def check(got, want, tol, label):
    errors = {name: rel_err(g, w) for name, g, w in zip(NAMES, got, want, strict=False)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"{label}: relative RMS error above {tol:g}: {bad} (all: {errors})"


def _backend(name):
    return functools.partial(wkv7, backend=name)


# (T, K): every length with the small head, the released head size at two lengths
SIZES = [(1, 16), (15, 16), (63, 16), (100, 16), (15, 64), (100, 64)]


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("T, K", SIZES, ids=[f"T{t}-K{k}" for t, k in SIZES])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("w_min", [W_MIN, BEYOND], ids=["rwkv7-decay", "decay-to-3"])
def test_backend_matches_fp64_loop(backend, T, K, with_state, w_min):
    inputs, cot, want = oracle(2 if K == 16 else 1, T, 2, K, with_state, w_min)
    for dtype in (torch.float64, torch.float32):
        check(run(_backend(backend), inputs, cot, dtype), want, TOL[dtype], f"{backend} {dtype}")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_chunked_long_sequence(with_state):
    inputs, cot, want = oracle(1, 1000, 2, 16, with_state)
    for dtype in (torch.float64, torch.float32):
        check(run(_backend("chunked"), inputs, cot, dtype), want, TOL[dtype], f"chunked T=1000 {dtype}")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("K", [16, 64])
def test_bf16_inputs(backend, K):
    inputs, cot, want = oracle(2 if K == 16 else 1, 100, 2, K, True, rounded_to=torch.bfloat16)
    check(run(_backend(backend), inputs, cot, torch.bfloat16), want, TOL[torch.bfloat16], f"{backend} bf16")


def test_named_chunked_function_and_chunk_sizes():
    """``wkv7_chunked`` (its own autograd.Function) at chunk sizes 1 to 64 (the fp32-safe range shrinks as the
    chunk grows; RWKV-7's decays are well inside it at 64)."""
    inputs, cot, want = oracle(2, 63, 2, 16, True)
    for chunk in (1, 2, 16, 64):
        fn = functools.partial(wkv7_chunked, chunk_size=chunk)
        check(run(fn, inputs, cot, torch.float64), want, 1e-10, f"chunk {chunk}")
    with pytest.raises(ValueError, match="chunk_size"):
        wkv7_chunked(*inputs, chunk_size=12)


def test_reference_function_matches_loop():
    inputs, cot, want = oracle(2, 15, 2, 16, True)
    check(run(wkv7_reference, inputs, cot, torch.float64), want, 1e-10, "wkv7_reference")


def test_strong_decays_at_the_fp32_limit_of_the_chunked_form():
    """Per-token log-decays down to -8 (thirteen times RWKV-7's range) stay exact in fp32 with 16-token chunks."""
    inputs, cot, want = oracle(1, 40, 2, 16, True, w_min=-8.0)
    check(run(_backend("chunked"), inputs, cot, torch.float32), want, 1e-5, "chunked fp32, w >= -8")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_gradcheck_fp64(backend):
    *inputs, s0 = make_case7(1, 5, 1, 4, with_state=True, seed=3)
    leaves = [x.clone().requires_grad_() for x in (*inputs, s0)]

    def fn(*args):
        o, s = wkv7(*args, backend=backend)
        return o, s

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_state_continuation(backend):
    """All at once == in two pieces with the carried state (the split off a chunk boundary)."""
    *inputs, s0 = make_case7(2, 50, 2, 16, with_state=True, seed=5)
    o, s = wkv7(*inputs, s0, backend=backend)
    o1, s1 = wkv7(*(x[:, :21] for x in inputs), s0, backend=backend)
    o2, s2 = wkv7(*(x[:, 21:] for x in inputs), s1, backend=backend)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, s, rtol=1e-12, atol=1e-12)


def test_final_state_only_and_output_only_gradients():
    inputs, _, _ = oracle(1, 20, 2, 16, True)
    leaves = [x.clone().requires_grad_() for x in inputs]
    for backend in ("chunked", "reference"):
        _, s = wkv7(*leaves, backend=backend)
        g_s = torch.autograd.grad(s.sum(), leaves)
        o, _ = wkv7(*leaves, backend=backend)
        g_o = torch.autograd.grad(o.sum(), leaves)
        ref = [x.detach().clone().requires_grad_() for x in inputs]
        o_ref, s_ref = wkv7_loop(*ref)
        for got, loss in ((g_s, s_ref.sum()), (g_o, o_ref.sum())):
            want = torch.autograd.grad(loss, ref, retain_graph=True, allow_unused=True, materialize_grads=True)
            for name, x, y in zip(NAMES[2:], got, want, strict=True):
                assert rel_err(x, y) < 1e-10, (backend, name)


def test_automatic_choice_and_environment_variable(monkeypatch):
    from rwkvblocks.ops.wkv7 import WKV7Inputs

    def chosen(T, **kw):
        inputs = WKV7Inputs(1, T, 2, 16, 16, torch.float32, torch.device("cpu"), False, False, **kw)
        return wkv7_dispatcher.select(inputs).name

    assert chosen(1) == "reference" and chosen(2) == "reference" and chosen(3) == "chunked"
    monkeypatch.setenv("RWKVBLOCKS_WKV7_BACKEND", "reference")
    assert chosen(100) == "reference"
    monkeypatch.setenv("RWKVBLOCKS_WKV7_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        wkv7(*make_case7(1, 3, 1, 16)[:6])


def test_eager_inference_bypasses_the_op(monkeypatch):
    """Without gradients the chosen backend runs directly (no op boundary), with the same result."""
    *inputs, s0 = (x.float() for x in make_case7(1, 9, 2, 16, with_state=True, seed=6))
    calls = []
    real = torch.ops.rwkvblocks.wkv7

    def spy(*args):
        calls.append(args)
        return real(*args)

    # the package by its module object: ``rwkvblocks.ops.wkv7`` as an attribute is the function
    monkeypatch.setattr(importlib.import_module("rwkvblocks.ops.wkv7"), "_wkv7_op", spy)
    with torch.no_grad():
        o, s = wkv7(*inputs, s0)
    assert calls == []
    o_ref, s_ref = wkv7_loop(*inputs, s0)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    leaves = [x.clone().requires_grad_() for x in inputs]
    wkv7(*leaves, s0)
    assert len(calls) == 1


def test_empty_sequence_returns_a_copy_of_the_state():
    *inputs, s0 = (x.float() for x in make_case7(2, 0, 2, 16, with_state=True))
    o, s = wkv7(*inputs, s0)
    assert o.shape == (2, 0, 2, 16)
    torch.testing.assert_close(s, s0)
    assert s.data_ptr() != s0.data_ptr()
    _, s = wkv7(*inputs)
    assert s.shape == (2, 2, 16, 16) and not s.any()


def test_fla_state_converters():
    """fla keeps the transpose: ``S_fla[k, v] = S[v, k]``; one step of fla's recurrence ``S^T (diag(e^w) + b a^T)``
    on the converted state equals ours, and the two converters are inverse."""
    r, w, k, v, a, b, s0 = make_case7(1, 1, 2, 16, with_state=True, seed=7)
    fla = state_to_fla(s0)
    assert fla.shape == (1, 2, 16, 16) and fla.is_contiguous()
    torch.testing.assert_close(state_from_fla(fla), s0)
    _, s1 = wkv7(r, w, k, v, a, b, s0)
    e, a0, b0, k0, v0 = torch.exp(w[0, 0]), a[0, 0], b[0, 0], k[0, 0], v[0, 0]  # [H, K]
    transition = torch.diag_embed(e) + b0.unsqueeze(-1) * a0.unsqueeze(-2)  # [H, K, K]: diag(e^w) + b a^T
    fla_next = transition @ fla[0] + k0.unsqueeze(-1) * v0.unsqueeze(-2)
    torch.testing.assert_close(state_from_fla(fla_next.unsqueeze(0)), s1)


def _bad_inputs():
    r, w, k, v, a, b, s0 = (x.float() for x in make_case7(2, 4, 2, 16, with_state=True))
    return {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b, "state": s0}


BAD = {
    "r-rank": (lambda x: {"r": x["r"][0]}, "r must have shape"),
    "k-shape": (lambda x: {"k": x["k"][:, :3]}, "k must have shape"),
    "w-shape": (lambda x: {"w": x["w"][..., :8]}, "w must have shape"),
    "a-shape": (lambda x: {"a": x["a"][:, :, :1]}, "a must have shape"),
    "b-shape": (lambda x: {"b": x["b"][:1]}, "b must have shape"),
    "v-shape": (lambda x: {"v": x["v"][:, :, :1]}, "v must have shape"),
    "state-shape": (lambda x: {"state": x["state"][:, :1]}, "state must have shape"),
    "a-dtype": (lambda x: {"a": x["a"].double()}, "r, k, v, a and b must share a dtype"),
    "b-int": (lambda x: {"b": x["b"].long()}, "b must be a floating-point tensor"),
    "v-not-tensor": (lambda x: {"v": 1.0}, "v must be a torch.Tensor"),
    "state-dtype": (lambda x: {"state": x["state"].bfloat16()}, "state must be float32"),
    "device": (lambda x: {"k": x["k"].to("meta")}, "all inputs must be on one device"),
    "w-positive": (lambda x: {"w": x["w"].abs()}, "w is the log of the decay"),
    "w-nan": (lambda x: {"w": x["w"].clone().fill_(float("nan"))}, "w is the log of the decay"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_naming_the_argument(case):
    change, message = BAD[case]
    args = _bad_inputs()
    args.update(change(args))
    state = args.pop("state")
    with pytest.raises(ValueError, match=message):
        wkv7(**args, state=state)


def test_value_checks_follow_validate():
    args = _bad_inputs()
    args["w"] = args["w"].abs()
    o, _ = wkv7(**args, validate=False)  # unchecked: runs (the result is meaningless)
    assert o.shape == args["v"].shape
