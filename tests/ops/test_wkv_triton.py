"""Triton WKV kernels against the independent fp64 oracle: outputs, final states, every gradient.

Without a CUDA device these run on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1``, set by ``conftest.py`` before any kernel is built): the same kernel
source, executed op by op in NumPy, so sizes are small. ``gpu``-marked tests compile the kernels
for real at larger sizes.

Tolerances (relative RMS error against fp64, on o, final state and every gradient):

| backend          | fp32 inputs | bf16 inputs |
| ---              | ---         | ---         |
| triton_chunk     | 1e-5        | 5e-3        |
| triton_recurrent | 1e-5        | 5e-3        |
"""

from __future__ import annotations

import functools

import pytest
import torch

from rwkvblocks.ops import BackendUnavailableError, WKVInputs, wkv5, wkv6, wkv6_chunked, wkv_dispatcher
from rwkvblocks.ops.wkv import _prefer
from rwkvblocks.ops.wkv import triton_chunk as chunk_mod

from .wkv_oracle import make_case, make_packed_case, rel_err, wkv_loop, wkv_loop_packed

TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3}
NAMES = ("o", "state", "dr", "dk", "dv", "dw", "du", "dstate")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@functools.cache
def oracle(lengths, B, H, K, strong, with_state, reverse, seed=0):
    """Inputs, cotangents and the fp64 oracle's outputs and gradients. ``lengths`` is a tuple of
    packed sequence lengths (B = 1, with cu_seqlens), or an int T for B sequences of length T."""
    if isinstance(lengths, tuple):
        r, k, v, w, u, s0, cu = make_packed_case(lengths, H, K, strong=strong, with_state=with_state, seed=seed)
    else:
        r, k, v, w, u, s0 = make_case(B, lengths, H, K, strong=strong, with_state=with_state, seed=seed)
        cu = None
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    s_leaf = s0.clone().requires_grad_() if s0 is not None else None
    if cu is None:
        o, s = wkv_loop(*leaves, s_leaf, reverse=reverse)
    else:
        o, s = wkv_loop_packed(*leaves, s_leaf, cu, reverse=reverse)
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves + ([s_leaf] if s0 is not None else []))
    return (r, k, v, w, u, s0, cu), (do, ds), (o.detach(), s.detach()) + tuple(grads)


def run(backend, inputs, cot, dtype, reverse, grad=True):
    """Run ``wkv6`` on ``DEVICE`` with r, k, v, u in ``dtype`` (w and the state fp32, as TimeMix
    gives them); returns outputs and, if ``grad``, the gradients, all on the CPU."""
    r, k, v, w, u, s0, cu = inputs
    leaves = [x.to(DEVICE, dtype).requires_grad_(grad) for x in (r, k, v)]
    w_leaf = w.to(DEVICE, torch.float32).requires_grad_(grad)
    u_leaf = u.to(DEVICE, dtype).requires_grad_(grad)
    s_leaf = s0.to(DEVICE, torch.float32).requires_grad_(grad) if s0 is not None else None
    cu_dev = cu.to(DEVICE) if cu is not None else None
    o, s = wkv6(*leaves, w_leaf, u_leaf, s_leaf, reverse=reverse, cu_seqlens=cu_dev, backend=backend)
    assert o.dtype == dtype and o.shape == v.shape and s.dtype == torch.float32
    if not grad:
        return o.cpu(), s.cpu()
    do, ds = cot
    loss = (o.double() * do.to(DEVICE)).sum() + (s.double() * ds.to(DEVICE)).sum()
    wrt = leaves + [w_leaf, u_leaf] + ([s_leaf] if s0 is not None else [])
    return (o, s) + tuple(x.cpu() for x in torch.autograd.grad(loss, wrt))


def check(got, want, tol, label):
    errors = {name: rel_err(g.cpu(), w) for name, g, w in zip(NAMES, got, want)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"{label}: relative RMS error above {tol:g}: {bad} (all: {errors})"
    assert all(torch.isfinite(x).all() for x in got), f"{label}: NaN or inf"


# (lengths or T, B, K, strong decay, initial state, reverse): every axis of the matrix is
# covered — T in {1, 15, 63, 100, 130}, K in {16, 64}, forward and reverse, with and without a
# state, packed and not, decays to -30 — without the full product (the interpreter is slow).
CHUNK_CASES = [
    (1, 2, 16, False, False, False),
    (15, 2, 16, True, True, True),
    (63, 2, 64, False, True, False),
    (100, 2, 16, True, False, True),
    (130, 1, 64, True, True, False),
    (130, 1, 16, False, True, True),
    ((1, 15, 0, 63, 33), 1, 16, True, True, False),
    ((17, 100, 13), 1, 64, False, True, True),
    ((40, 1, 22), 1, 16, True, False, True),
]


def _case_id(case):
    lengths, B, K, strong, with_state, reverse = case
    seqs = "packed" + "-".join(map(str, lengths)) if isinstance(lengths, tuple) else f"B{B}T{lengths}"
    return "-".join(
        [
            seqs,
            f"K{K}",
            "decay30" if strong else "rwkv6",
            "state" if with_state else "nostate",
            "rev" if reverse else "fwd",
        ]
    )


@pytest.mark.parametrize("case", CHUNK_CASES, ids=_case_id)
def test_triton_chunk_fp32_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, reverse = case
    inputs, cot, want = oracle(lengths, B, 2, K, strong, with_state, reverse)
    got = run("triton_chunk", inputs, cot, torch.float32, reverse)
    check(got, want, TOL[torch.float32], f"triton_chunk fp32 {_case_id(case)}")


@pytest.mark.parametrize(
    "case",
    [(100, 2, 64, False, True, False), ((15, 63, 52), 1, 64, True, True, True)],
    ids=_case_id,
)
def test_triton_chunk_bf16_matches_fp64_oracle(case):
    lengths, B, K, strong, with_state, reverse = case
    inputs, cot, want = oracle(lengths, B, 2, K, strong, with_state, reverse)
    got = run("triton_chunk", inputs, cot, torch.bfloat16, reverse)
    check(got, want, TOL[torch.bfloat16], f"triton_chunk bf16 {_case_id(case)}")


def test_triton_chunk_split_value_blocks(monkeypatch):
    """V split over several programs: dr, dk, dw, du are sums of per-block partials."""
    monkeypatch.setattr(chunk_mod, "_block_v", lambda K, V: 16)
    inputs, cot, want = oracle(33, 1, 2, 64, True, True, False)
    got = run("triton_chunk", inputs, cot, torch.float32, False)
    check(got, want, TOL[torch.float32], "triton_chunk BV=16")


def test_triton_chunk_wkv5_static_decay_is_not_copied():
    """A broadcast `[H, K]` decay runs through stride-0 addressing; its gradient is summed."""
    r, k, v, _, u, s0 = (x.float() for x in make_case(2, 20, 2, 16, with_state=True, seed=4))
    w5 = (-torch.rand(2, 16) * 3).requires_grad_()
    args = [x.to(DEVICE).requires_grad_() for x in (r, k, v)]
    o, s = wkv5(*args, w5.to(DEVICE), u.to(DEVICE), s0.to(DEVICE), backend="triton_chunk")
    (o.sum() + s.square().sum()).backward()
    w6 = w5.detach().expand(2, 20, 2, 16).double().requires_grad_()
    ref_args = [x.detach().double().requires_grad_() for x in (r, k, v)]
    o_ref, s_ref = wkv_loop(*ref_args, w6, u.double(), s0.double())
    (o_ref.sum() + s_ref.square().sum()).backward()
    assert rel_err(o.cpu(), o_ref) < 1e-5 and rel_err(s.cpu(), s_ref) < 1e-5
    assert rel_err(w5.grad, w6.grad.sum(dim=(0, 1))) < 1e-5
    for a, b in zip(args, ref_args):
        assert rel_err(a.grad.cpu(), b.grad) < 1e-5


def test_triton_chunk_no_grad_and_only_state_gradient():
    inputs, cot, want = oracle(40, 1, 2, 16, False, True, False)
    o, s = run("triton_chunk", inputs, cot, torch.float32, False, grad=False)
    assert rel_err(o, want[0]) < 1e-5 and rel_err(s, want[1]) < 1e-5
    r, k, v, w, u, s0, _ = (x.float().to(DEVICE) if x is not None else None for x in inputs)
    s0.requires_grad_()
    _, s_final = wkv6(r, k, v, w, u, s0, backend="triton_chunk")
    (g,) = torch.autograd.grad(s_final.sum(), s0)  # o unused: its cotangent arrives as None
    ref = s0.detach().double().requires_grad_()
    _, s_ref = wkv_loop(r.double(), k.double(), v.double(), w.double(), u.double(), ref)
    (g_ref,) = torch.autograd.grad(s_ref.sum(), ref)
    assert rel_err(g.cpu(), g_ref) < 1e-5


RECURRENT_CASES = [
    (1, 3, 64, False, True, False),
    (15, 2, 16, False, False, True),
    (130, 1, 16, True, True, False),
    ((1, 1, 0, 5), 1, 64, False, True, True),
    ((63, 30), 1, 16, True, False, False),
]


@pytest.mark.parametrize("case", RECURRENT_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_recurrent_matches_fp64_oracle(case, dtype):
    lengths, B, K, strong, with_state, reverse = case
    inputs, cot, want = oracle(lengths, B, 2, K, strong, with_state, reverse)
    with torch.no_grad():
        got = run("triton_recurrent", inputs, cot, dtype, reverse, grad=False)
    check(got, want[:2], TOL[dtype], f"triton_recurrent {dtype} {_case_id(case)}")


def test_triton_recurrent_refuses_gradients():
    r, k, v, w, u, s0 = (x.float().to(DEVICE) for x in make_case(1, 3, 2, 16, with_state=True))
    with pytest.raises(BackendUnavailableError, match="forward only"):
        wkv6(r.requires_grad_(), k, v, w, u, s0, backend="triton_recurrent")


@needs_cuda
def test_triton_chunk_matches_recurrent_and_chunked_on_cuda():
    case = [x.float().cuda() for x in make_case(2, 70, 2, 64, with_state=True, seed=11)]
    with torch.no_grad():
        outs = {b: wkv6(*case, backend=b) for b in ("triton_chunk", "triton_recurrent", "chunked")}
    for b in ("triton_recurrent", "chunked"):
        torch.testing.assert_close(outs[b][0], outs["triton_chunk"][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(outs[b][1], outs["triton_chunk"][1], rtol=1e-4, atol=1e-4)


def _inputs(T=5, device="cpu", dtype=torch.float32, grad=False, K=64):
    return WKVInputs(2, T, 4, K, K, dtype, torch.device(device), False, True, grad)


def test_automatic_selection_on_cpu_never_picks_triton():
    """Under the interpreter the Triton backends accept CPU tensors, but only by name."""
    for T in (1, 100):
        for grad in (False, True):
            assert wkv_dispatcher.select(_inputs(T, grad=grad)).name in ("chunked", "reference")
    for name in ("triton_chunk", "triton_recurrent"):
        assert wkv_dispatcher.get(name).auto_reasons(_inputs())


def test_triton_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match=r"needs a CUDA tensor \(or TRITON_INTERPRET=1"):
        wkv_dispatcher.select(_inputs(), "triton_chunk")


@pytest.mark.parametrize("name", ["triton_chunk", "triton_recurrent"])
def test_triton_refuses_unsupported_dtype_and_head_size(name):
    backend = wkv_dispatcher.get(name)
    assert any("float64" in x for x in backend.reasons(_inputs(dtype=torch.float64)))
    assert any("K = 48" in x for x in backend.reasons(_inputs(K=48)))
    assert any("K = 256" in x for x in backend.reasons(_inputs(K=256)))


def test_cuda_prefers_recurrent_for_decoding_and_chunk_for_training():
    assert _prefer(_inputs(T=1, device="cuda")) == ["triton_recurrent"]
    assert _prefer(_inputs(T=64, device="cuda")) == ["triton_recurrent"]
    assert _prefer(_inputs(T=65, device="cuda")) == []
    assert _prefer(_inputs(T=1, device="cuda", grad=True)) == []
    packed = WKVInputs(1, 64, 4, 64, 64, torch.bfloat16, torch.device("cuda"), False, True, False, 8)
    assert _prefer(packed) == ["triton_recurrent"]  # eight sequences of 8 tokens on average


# Compiled kernels at training-like sizes, against the chunked PyTorch path in fp64 (itself
# checked against the fp64 loop in test_wkv.py).


def _fp64_reference(inputs, cot, reverse, cu=None):
    leaves = [x.double().requires_grad_() if x is not None else None for x in inputs]
    o, s = wkv6_chunked(*leaves, reverse=reverse, cu_seqlens=cu)
    do, ds = cot
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), [x for x in leaves if x is not None])
    return (o.detach(), s.detach()) + grads


def _gpu_case(B, T, H, K, w_min, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, device="cuda", generator=g) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, K, device="cuda", generator=g)
    w = w_min * torch.rand(B, T, H, K, device="cuda", generator=g)
    u = torch.randn(H, K, device="cuda", generator=g) * 0.5
    s0 = torch.randn(B, H, K, K, device="cuda", generator=g)
    do = torch.randn(B, T, H, K, device="cuda", generator=g, dtype=torch.float64)
    ds = torch.randn(B, H, K, K, device="cuda", generator=g, dtype=torch.float64)
    return (r, k, v, w, u, s0), (do, ds)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("K, w_min", [(64, -60.0), (128, -5.0), (32, -30.0)])
def test_gpu_triton_chunk_large(dtype, reverse, K, w_min):
    inputs, cot = _gpu_case(2, 1000, 4, K, w_min)
    want = _fp64_reference(inputs, cot, reverse)
    full = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], None)
    got = run("triton_chunk", full, cot, dtype, reverse)
    check(got, [x.cpu() for x in want], TOL[dtype] if dtype == torch.bfloat16 else 2e-5, f"gpu K={K} {dtype}")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_triton_chunk_and_recurrent_packed(dtype):
    lengths = (1, 700, 64, 0, 1235)
    r, k, v, w, u, s0, cu = make_packed_case(lengths, 4, 64, strong=True, with_state=True, seed=3)
    inputs = tuple(x.cuda() for x in (r, k, v, w, u, s0))
    g = torch.Generator().manual_seed(9)
    cot = (
        torch.randn(v.shape, generator=g, dtype=torch.float64).cuda(),
        torch.randn(s0.shape, generator=g, dtype=torch.float64).cuda(),
    )
    for reverse in (False, True):
        want = _fp64_reference(inputs, cot, reverse, cu.cuda())
        got = run("triton_chunk", inputs + (cu,), cot, dtype, reverse)
        check(got, [x.cpu() for x in want], TOL[dtype], f"gpu packed chunk {dtype}")
        with torch.no_grad():
            got = run("triton_recurrent", inputs + (cu,), cot, dtype, reverse, grad=False)
        check(got, [x.cpu() for x in want[:2]], TOL[dtype], f"gpu packed recurrent {dtype}")


@gpu
@needs_cuda
def test_gpu_decode_batch_64_matches_chunked():
    inputs, _ = _gpu_case(64, 1, 32, 64, -8.0)
    with torch.no_grad():
        o, s = wkv6(*inputs)  # automatic: the recurrent kernel
        o_ref, s_ref = wkv6_chunked(*(x.double() for x in inputs))
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
