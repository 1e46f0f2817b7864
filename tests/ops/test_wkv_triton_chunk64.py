"""The chunk-parallel Triton forward and backward (``wkv6_chunk64_forward``, ``wkv6_chunk64_backward``)
against the independent fp64 oracle (gradients: autograd through the oracle's loop in fp64).

Without a CUDA device the kernels run on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1``, set by ``conftest.py``), so sizes are small. Compared: the output and the
final state(s), by relative RMS error and by the largest elementwise error relative to the largest
reference value; the gradients of r, k, v, w, u and the initial state by relative RMS error.

| inputs | relative RMS | max error / max value |
| ---    | ---          | ---                   |
| fp32   | 1e-5         | 1e-5                  |
| bf16   | 5e-3         | (not checked)         |
| fp16   | 5e-3         | (not checked)         |

Gradients: fp32 1e-5, bf16 and fp16 5e-3 (relative RMS).

bf16 under the interpreter: the kernels round the ``tl.dot`` operands and ``o`` to nearest as a GPU
does (``_round_bf16``: the interpreter's own conversion truncates and its bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import functools

import pytest
import torch

from rwkvblocks.ops import BackendUnavailableError, WKVInputs, wkv5, wkv6, wkv_dispatcher
from rwkvblocks.ops.wkv.triton_chunk64 import wkv6_chunk64_backward, wkv6_chunk64_forward

from .wkv_oracle import make_case, make_packed_case, rel_err, wkv_loop, wkv_loop_packed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 5e-3}


@functools.cache
def oracle(lengths, B, H, K, strong, with_state, reverse, seed=0):
    """fp64 inputs and the oracle's (o, final state). ``lengths``: a tuple of packed sequence
    lengths (B = 1, ``cu_seqlens``) or an int T for B sequences of length T."""
    if isinstance(lengths, tuple):
        r, k, v, w, u, s0, cu = make_packed_case(lengths, H, K, strong=strong, with_state=with_state, seed=seed)
        o, s = wkv_loop_packed(r, k, v, w, u, s0, cu, reverse=reverse)
    else:
        r, k, v, w, u, s0 = make_case(B, lengths, H, K, strong=strong, with_state=with_state, seed=seed)
        cu = None
        o, s = wkv_loop(r, k, v, w, u, s0, reverse=reverse)
    return (r, k, v, w, u, s0, cu), (o, s)


def run(inputs, dtype, reverse):
    """``wkv6_chunk64_forward`` on ``DEVICE`` with r, k, v, u in ``dtype`` (w and the state fp32, as
    TimeMix gives them); returns o and the final state on the CPU."""
    r, k, v, w, u, s0, cu = inputs
    args = [x.to(DEVICE, dtype) for x in (r, k, v)]
    w_dev = w.to(DEVICE, torch.float32)
    u_dev = u.to(DEVICE, dtype)
    s_dev = s0.to(DEVICE, torch.float32) if s0 is not None else None
    cu_dev = cu.to(DEVICE) if cu is not None else None
    o, s = wkv6_chunk64_forward(*args, w_dev, u_dev, s_dev, reverse=reverse, cu_seqlens=cu_dev)
    assert o.dtype == dtype and o.shape == v.shape and s.dtype == torch.float32
    return o.cpu(), s.cpu()


def max_rel(x, ref):
    ref = ref.double()
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def check(got, want, dtype, label):
    assert all(torch.isfinite(x).all() for x in got), f"{label}: NaN or inf"
    errors = {name: rel_err(g, w) for name, g, w in zip(("o", "state"), got, want)}
    if dtype == torch.float32:
        errors.update({f"max_{name}": max_rel(g, w) for name, g, w in zip(("o", "state"), got, want)})
    bad = {n: e for n, e in errors.items() if not e <= TOL[dtype]}
    assert not bad, f"{label}: error above {TOL[dtype]:g}: {bad} (all: {errors})"


# (lengths or T, B, K, strong decay, initial state, reverse). Every T of the issue with K = 16 and
# 64, the flags alternating so that each T sees both directions, with and without a state, and
# both decay regimes; K = 128 once; T = 1000 once (about 9 s under the interpreter: not `slow`).
CASES = [
    (1, 2, 16, False, False, False),
    (1, 1, 64, True, True, True),
    (15, 2, 16, True, True, True),
    (15, 1, 64, False, False, False),
    (63, 2, 16, False, True, False),
    (63, 1, 64, True, False, True),
    (64, 2, 16, True, False, False),
    (64, 1, 64, False, True, True),
    (65, 2, 16, False, False, True),
    (65, 1, 64, True, True, False),
    (100, 2, 16, True, True, False),
    (100, 1, 64, False, False, True),
    (100, 1, 64, True, True, True),
    (65, 1, 128, True, True, False),
    ((1, 63, 64, 200), 1, 16, True, True, False),
    ((1, 63, 64, 200), 1, 16, True, True, True),
    ((1, 63, 64, 200), 1, 64, False, False, False),
    ((64, 0, 1, 130, 0), 1, 16, True, True, True),
    (1000, 1, 16, True, True, False),
]


def _case_id(case):
    lengths, B, K, strong, with_state, reverse = case
    seqs = "packed" + "-".join(map(str, lengths)) if isinstance(lengths, tuple) else f"B{B}T{lengths}"
    flags = ["decay30" if strong else "rwkv6", "state" if with_state else "nostate", "rev" if reverse else "fwd"]
    return "-".join([seqs, f"K{K}", *flags])


def _ids(cases):
    return [_case_id(c) for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_chunk64_fp32_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, reverse = case
    inputs, want = oracle(lengths, B, 2, K, strong, with_state, reverse)
    check(run(inputs, torch.float32, reverse), want, torch.float32, _case_id(case))


BF16_CASES = [
    (100, 1, 64, False, True, False),
    (100, 1, 64, True, True, True),
    ((1, 63, 64, 200), 1, 16, True, True, True),
]


@pytest.mark.parametrize("case", BF16_CASES, ids=_ids(BF16_CASES))
def test_chunk64_bf16_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, reverse = case
    inputs, want = oracle(lengths, B, 2, K, strong, with_state, reverse)
    check(run(inputs, torch.bfloat16, reverse), want, torch.bfloat16, f"bf16 {_case_id(case)}")


def test_chunk64_fp16_matches_fp64_oracle():
    inputs, want = oracle(70, 1, 2, 16, False, True, False)
    check(run(inputs, torch.float16, False), want, torch.float16, "fp16")


def test_chunk64_state_continuation():
    """Two calls carrying the state equal one call (the chunk grid differs between them)."""
    r, k, v, w, u, s0 = (x.float().to(DEVICE) for x in make_case(1, 90, 2, 16, strong=True, with_state=True, seed=3))
    o, s = wkv6_chunk64_forward(r, k, v, w, u, s0)
    o1, s1 = wkv6_chunk64_forward(r[:, :37], k[:, :37], v[:, :37], w[:, :37], u, s0)
    o2, s2 = wkv6_chunk64_forward(r[:, 37:], k[:, 37:], v[:, 37:], w[:, 37:], u, s1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


def test_chunk64_static_decay_broadcast_view():
    """A wkv5-style `[H, K]` decay expanded to `[B, T, H, K]` (stride 0) is read, not copied."""
    r, k, v, _, u, s0 = make_case(2, 70, 2, 16, with_state=True, seed=4)
    w5 = -torch.rand(2, 16, dtype=torch.float64) * 3
    w = w5.expand(2, 70, 2, 16)
    o, s = wkv6_chunk64_forward(
        *(x.float().to(DEVICE) for x in (r, k, v)), w.float().to(DEVICE), u.float().to(DEVICE), s0.float().to(DEVICE)
    )
    o_ref, s_ref = wkv_loop(r, k, v, w, u, s0)
    assert rel_err(o.cpu(), o_ref) < 1e-5 and rel_err(s.cpu(), s_ref) < 1e-5


def test_chunk64_empty_sequence_returns_the_state():
    r, k, v, w, u, s0 = (x.float() for x in make_case(1, 0, 2, 16, with_state=True))
    o, s = wkv6_chunk64_forward(r, k, v, w, u, s0)
    assert o.shape == v.shape and torch.equal(s, s0) and s.data_ptr() != s0.data_ptr()


def test_chunk64_refuses_fp64():
    r, k, v, w, u, _ = make_case(1, 4, 1, 16)
    with pytest.raises(ValueError, match="float64"):
        wkv6_chunk64_forward(r, k, v, w, u)


# Gradients. The loss is <o, do> (+ <final state, ds> when ``ds_final`` is given), do and ds random.

GRAD_NAMES = ("dr", "dk", "dv", "dw", "du", "dstate")


@functools.cache
def grad_oracle(lengths, B, H, K, strong, with_state, with_ds, reverse, V=None, seed=0):
    """fp64 inputs, the cotangents (ds None without ``with_ds``) and the oracle's gradients of
    r, k, v, w, u (and the initial state when ``with_state``)."""
    if isinstance(lengths, tuple):
        r, k, v, w, u, s0, cu = make_packed_case(lengths, H, K, strong=strong, with_state=with_state, seed=seed)
    else:
        r, k, v, w, u, s0 = make_case(B, lengths, H, K, strong=strong, with_state=with_state, seed=seed, V=V)
        cu = None
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    s_leaf = s0.clone().requires_grad_() if s0 is not None else None
    if cu is None:
        o, s = wkv_loop(*leaves, s_leaf, reverse=reverse)
    else:
        o, s = wkv_loop_packed(*leaves, s_leaf, cu, reverse=reverse)
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64) if with_ds else None
    loss = (o * do).sum() + ((s * ds).sum() if with_ds else 0.0)
    wrt = leaves + ([s_leaf] if s0 is not None else [])
    # allow_unused: with T = 1, no state and no ds_final, w affects nothing (its gradient is 0)
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
    return (r, k, v, w, u, s0, cu), (do, ds), grads


def run_backward(inputs, cot, dtype, reverse):
    """``wkv6_chunk64_backward`` on ``DEVICE`` with r, k, v, u and do in ``dtype`` (w, the state and
    ds fp32); returns the gradients on the CPU (dstate None without an initial state)."""
    r, k, v, w, u, s0, cu = inputs
    do, ds = cot
    args = [x.to(DEVICE, dtype) for x in (r, k, v)]
    s_dev = s0.to(DEVICE, torch.float32) if s0 is not None else None
    ds_dev = ds.to(DEVICE, torch.float32) if ds is not None else None
    cu_dev = cu.to(DEVICE) if cu is not None else None
    grads = wkv6_chunk64_backward(
        *args,
        w.to(DEVICE, torch.float32),
        u.to(DEVICE, dtype),
        s_dev,
        do.to(DEVICE, dtype),
        ds_dev,
        reverse=reverse,
        cu_seqlens=cu_dev,
    )
    dr, dk, dv, dw, du, dstate = grads
    assert dr.dtype == dk.dtype == dv.dtype == dtype and dw.dtype == du.dtype == torch.float32
    assert dr.shape == r.shape and dv.shape == v.shape and dw.shape == r.shape and du.shape == u.shape
    assert (dstate is None) == (s0 is None)
    if dstate is not None:
        assert dstate.dtype == torch.float32 and dstate.shape == s0.shape
    return [x.cpu() for x in grads if x is not None]


def check_grads(got, want, tol, label):
    assert len(got) == len(want)
    assert all(torch.isfinite(x).all() for x in got), f"{label}: NaN or inf"
    errors = {name: rel_err(g, w) for name, g, w in zip(GRAD_NAMES, got, want)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"{label}: relative RMS error above {tol:g}: {bad} (all: {errors})"


# (lengths or T, B, K, strong decay, initial state, ds_final, reverse). Every T of the issue at
# K = 16 (B = 2 and two heads: the batch and head strides), the flags alternating so that each T sees
# both directions, with and without a state and ds_final, both decay regimes; K = 64 and K = 128
# (four value blocks in the dv kernel) once each; the packed case (1, 63, 64, 200) in both
# directions, and a pack with empty sequences.
GRAD_CASES = [
    (1, 2, 16, False, False, False, False),
    (1, 1, 16, True, True, True, True),
    (15, 2, 16, True, True, True, True),
    (15, 1, 16, False, False, False, False),
    (63, 2, 16, False, True, False, False),
    (63, 1, 16, True, False, True, True),
    (64, 2, 16, True, False, True, False),
    (64, 1, 16, False, True, False, True),
    (65, 2, 16, False, False, True, True),
    (65, 1, 16, True, True, False, False),
    (100, 2, 16, True, True, True, False),
    (100, 1, 16, False, False, False, True),
    (100, 1, 64, True, True, True, True),
    (65, 1, 128, True, True, True, False),
    ((1, 63, 64, 200), 1, 16, True, True, True, False),
    ((1, 63, 64, 200), 1, 16, True, True, True, True),
    ((1, 63, 64, 200), 1, 16, False, False, False, False),
    ((64, 0, 1, 130, 0), 1, 16, True, True, True, True),
]


def _grad_case_id(case):
    lengths, B, K, strong, with_state, with_ds, reverse = case
    seqs = "packed" + "-".join(map(str, lengths)) if isinstance(lengths, tuple) else f"B{B}T{lengths}"
    flags = ["decay30" if strong else "rwkv6", "state" if with_state else "nostate", "ds" if with_ds else "nods"]
    return "-".join([seqs, f"K{K}", *flags, "rev" if reverse else "fwd"])


@pytest.mark.parametrize("case", GRAD_CASES, ids=[_grad_case_id(c) for c in GRAD_CASES])
def test_chunk64_backward_fp32_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, with_ds, reverse = case
    H = 2 if K == 16 and not isinstance(lengths, tuple) else 1
    inputs, cot, want = grad_oracle(lengths, B, H, K, strong, with_state, with_ds, reverse)
    got = run_backward(inputs, cot, torch.float32, reverse)
    check_grads(got, want, TOL[torch.float32], _grad_case_id(case))


def test_chunk64_backward_value_dim_differs_from_key_dim():
    """V = 128 with K = 16: two value blocks in the state and dv kernels, summed over inside dqk."""
    inputs, cot, want = grad_oracle(70, 1, 1, 16, True, True, True, False, V=128)
    check_grads(run_backward(inputs, cot, torch.float32, False), want, TOL[torch.float32], "V=128")


BF16_GRAD_CASES = [
    (100, 1, 64, False, True, True, False),
    ((1, 63, 64, 200), 1, 16, True, True, True, True),
]


@pytest.mark.parametrize("case", BF16_GRAD_CASES, ids=[_grad_case_id(c) for c in BF16_GRAD_CASES])
def test_chunk64_backward_bf16_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, with_ds, reverse = case
    inputs, cot, want = grad_oracle(lengths, B, 1, K, strong, with_state, with_ds, reverse)
    got = run_backward(inputs, cot, torch.bfloat16, reverse)
    check_grads(got, want, TOL[torch.bfloat16], f"bf16 {_grad_case_id(case)}")


def test_chunk64_backward_fp16_matches_fp64_oracle():
    """fp16 inputs: fp32 operands (tf32 on a GPU), dr, dk, dv written in fp16."""
    inputs, cot, want = grad_oracle(70, 1, 1, 16, False, True, True, True)
    check_grads(run_backward(inputs, cot, torch.float16, True), want, TOL[torch.float16], "fp16")


def test_chunk64_backward_static_decay_broadcast_view():
    """A wkv5-style `[H, K]` decay expanded to `[B, T, H, K]` (stride 0): dw comes back per token."""
    r, k, v, _, u, s0 = make_case(2, 70, 2, 16, with_state=True, seed=4)
    w = (-torch.rand(2, 16, dtype=torch.float64) * 3).expand(2, 70, 2, 16)
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u, s0)]
    o, s = wkv_loop(*leaves)
    g = torch.Generator().manual_seed(5)
    do, ds = (
        torch.randn(o.shape, generator=g, dtype=torch.float64),
        torch.randn(s.shape, generator=g, dtype=torch.float64),
    )
    want = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    got = wkv6_chunk64_backward(*(x.float().to(DEVICE) for x in (r, k, v, w, u, s0, do, ds)))
    check_grads([x.cpu() for x in got], want, TOL[torch.float32], "static decay")


def test_chunk64_backward_empty_sequence():
    r, k, v, w, u, s0 = (x.float() for x in make_case(1, 0, 2, 16, with_state=True))
    ds = torch.randn(s0.shape)
    dr, dk, dv, dw, du, dstate = wkv6_chunk64_backward(r, k, v, w, u, s0, torch.zeros_like(v), ds)
    assert dr.shape == r.shape and dv.shape == v.shape and torch.equal(du, torch.zeros_like(du))
    assert torch.equal(dstate, ds) and dstate.data_ptr() != ds.data_ptr()
    *_, dstate = wkv6_chunk64_backward(r, k, v, w, u, None, torch.zeros_like(v), ds)
    assert dstate is None


def test_chunk64_backward_refuses_fp64():
    r, k, v, w, u, _ = make_case(1, 4, 1, 16)
    with pytest.raises(ValueError, match="float64"):
        wkv6_chunk64_backward(r, k, v, w, u, None, torch.zeros_like(v), None)


# The registered backend: ``wkv6(..., backend="triton_chunk64")`` through ``rwkvblocks::wkv6``.


def run_op(inputs, cot, dtype, reverse):
    """``wkv6`` with ``backend="triton_chunk64"`` and autograd: (o, final state, gradients...) on the CPU."""
    r, k, v, w, u, s0, cu = inputs
    leaves = [x.to(DEVICE, dtype).requires_grad_() for x in (r, k, v)]
    w_leaf = w.to(DEVICE, torch.float32).requires_grad_()
    u_leaf = u.to(DEVICE, dtype).requires_grad_()
    s_leaf = s0.to(DEVICE, torch.float32).requires_grad_() if s0 is not None else None
    cu_dev = cu.to(DEVICE) if cu is not None else None
    o, s = wkv6(*leaves, w_leaf, u_leaf, s_leaf, reverse=reverse, cu_seqlens=cu_dev, backend="triton_chunk64")
    assert o.dtype == dtype and s.dtype == torch.float32
    do, ds = cot
    loss = (o.double() * do.to(DEVICE)).sum() + ((s.double() * ds.to(DEVICE)).sum() if ds is not None else 0.0)
    wrt = leaves + [w_leaf, u_leaf] + ([s_leaf] if s0 is not None else [])
    grads = torch.autograd.grad(loss, wrt)
    assert all(g.dtype == x.dtype for g, x in zip(grads, wrt))
    return o.detach().cpu(), s.detach().cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize(
    "case",
    [(100, 2, 16, True, True, True, False), ((1, 63, 64, 200), 1, 16, True, True, True, True)],
    ids=_grad_case_id,
)
def test_wkv6_backend_triton_chunk64_matches_fp64_oracle(case):
    """Forward and backward through the registered op (the oracle cases of the kernel tests above)."""
    lengths, B, K, strong, with_state, with_ds, reverse = case
    H = 1 if isinstance(lengths, tuple) else 2
    inputs, cot, want = grad_oracle(lengths, B, H, K, strong, with_state, with_ds, reverse)
    r, k, v, w, u, s0, cu = inputs
    if cu is None:
        o_ref, s_ref = wkv_loop(r, k, v, w, u, s0, reverse=reverse)
    else:
        o_ref, s_ref = wkv_loop_packed(r, k, v, w, u, s0, cu, reverse=reverse)
    o, s, grads = run_op(inputs, cot, torch.float32, reverse)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    check_grads(grads, want, TOL[torch.float32], f"op {_grad_case_id(case)}")


def test_wkv6_backend_triton_chunk64_bf16():
    inputs, cot, want = grad_oracle(40, 1, 1, 16, False, True, True, False)
    _, _, grads = run_op(inputs, cot, torch.bfloat16, False)
    check_grads(grads, want, TOL[torch.bfloat16], "op bf16")


def test_wkv5_backend_triton_chunk64_sums_the_static_decay_gradient():
    r, k, v, _, u, s0 = (x.float() for x in make_case(1, 20, 2, 16, with_state=True, seed=6))
    w5 = (-torch.rand(2, 16) * 3).requires_grad_()
    o, s = wkv5(r, k, v, w5, u, s0, backend="triton_chunk64")
    (o.sum() + s.square().sum()).backward()
    w6 = w5.detach().double().expand(1, 20, 2, 16).requires_grad_()
    o_ref, s_ref = wkv_loop(r.double(), k.double(), v.double(), w6, u.double(), s0.double())
    (o_ref.sum() + s_ref.square().sum()).backward()
    assert rel_err(w5.grad, w6.grad.sum(dim=(0, 1))) < 1e-5


def test_wkv6_backend_triton_chunk64_compiles_fullgraph():
    """``torch.compile(fullgraph=True)`` (aot_eager) equals eager, values and gradients."""
    torch._dynamo.reset()
    r, k, v, w, u, s0 = (x.float().to(DEVICE) for x in make_case(1, 40, 2, 16, with_state=True, seed=2))

    def fn(r, k, v, w, u, s0):
        o, s = wkv6(r, k, v, w, u, s0, reverse=True, backend="triton_chunk64")
        return (o * o).sum() + s.sin().sum()

    results = []
    for f in (torch.compile(fn, fullgraph=True, backend="aot_eager"), fn):
        args = [x.detach().clone().requires_grad_() for x in (r, k, v, w, u, s0)]
        out = f(*args)
        results.append((out, torch.autograd.grad(out, args)))
    torch._dynamo.reset()
    (got, g_got), (want, g_want) = results
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def _inputs(T=5, device="cpu", dtype=torch.float32, grad=False, K=64):
    return WKVInputs(2, T, 4, K, K, dtype, torch.device(device), False, True, grad)


def test_triton_chunk64_is_never_chosen_automatically():
    for device in ("cpu", "cuda"):
        for grad in (False, True):
            assert wkv_dispatcher.get("triton_chunk64").auto_reasons(_inputs(100, device, grad=grad))
    for T in (1, 100):
        assert wkv_dispatcher.select(_inputs(T, grad=True)).name != "triton_chunk64"


def test_triton_chunk64_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    r, k, v, w, u = (x.float() for x in make_case(1, 5, 2, 16)[:5])
    with pytest.raises(BackendUnavailableError, match=r"triton_chunk64.*needs a CUDA tensor \(or TRITON_INTERPRET=1"):
        wkv6(r, k, v, w, u, backend="triton_chunk64")


def test_triton_chunk64_refuses_unsupported_dtype_and_head_size():
    backend = wkv_dispatcher.get("triton_chunk64")
    assert any("float64" in x for x in backend.reasons(_inputs(dtype=torch.float64)))
    assert any("K = 48" in x for x in backend.reasons(_inputs(K=48)))
