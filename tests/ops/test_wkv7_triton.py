"""RWKV-7 Triton kernels against the independent fp64 oracle: outputs, final states, every gradient.

Without a CUDA device these run on CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py`` before any kernel is built): the same kernel source executed op by op in NumPy, so sizes are
small (one (sequence, head) program per chunk costs about a second forward and backward). ``gpu``-marked tests
compile the kernels for real at larger sizes.

Tolerances (relative RMS error against fp64, on o, the final state and every gradient; bf16 against the oracle
on the bf16-rounded inputs):

| backend          | fp32 inputs | bf16 inputs |
| ---              | ---         | ---         |
| triton_chunk     | 1e-5        | 5e-3        |
| triton_recurrent | 1e-5        | 5e-3        |
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from rwkvblocks.ops import BackendUnavailableError, WKV7Inputs, wkv7, wkv7_chunked, wkv7_dispatcher

from .wkv7_oracle import W_MIN, make_case7, make_packed_case7, rel_err, wkv7_loop, wkv7_loop_packed

wkv7_pkg = importlib.import_module("rwkvblocks.ops.wkv7")  # the package (``ops.wkv7`` the attribute is the op)
chunk_mod = importlib.import_module("rwkvblocks.ops.wkv7.triton_chunk")

TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3}
NAMES = ("o", "state", "dr", "dw", "dk", "dv", "da", "db", "dstate")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@functools.cache
def oracle(lengths, H, K, with_state, w_min=W_MIN, seed=0, rounded_to=None):
    """Inputs (with ``cu_seqlens`` or None), cotangents and the fp64 oracle's outputs and gradients.
    ``lengths`` is a tuple of packed sequence lengths (B = 1), or an int T (B = 1)."""
    if isinstance(lengths, tuple):
        *inputs, s0, cu = make_packed_case7(lengths, H, K, with_state=with_state, seed=seed, w_min=w_min)
    else:
        *inputs, s0 = make_case7(1, lengths, H, K, with_state=with_state, seed=seed, w_min=w_min)
        cu = None
    if rounded_to is not None:
        inputs = [x if i == 1 else x.to(rounded_to).double() for i, x in enumerate(inputs)]
    leaves = [x.clone().requires_grad_() for x in inputs] + ([s0.clone().requires_grad_()] if with_state else [])
    s_leaf = leaves[6] if with_state else None
    o, s = wkv7_loop(*leaves[:6], s_leaf) if cu is None else wkv7_loop_packed(*leaves[:6], s_leaf, cu)
    g = torch.Generator().manual_seed(seed + 1)
    cot = (
        torch.randn(o.shape, generator=g, dtype=torch.float64),
        torch.randn(s.shape, generator=g, dtype=torch.float64),
    )
    grads = torch.autograd.grad((o * cot[0]).sum() + (s * cot[1]).sum(), leaves)
    return (*inputs, s0, cu), cot, (o.detach(), s.detach(), *grads)


def run(backend, inputs, cot, dtype, grad=True):
    """``wkv7`` on ``DEVICE`` with r, k, v, a, b in ``dtype`` (w and the state fp32, as the blocks make them);
    returns outputs and, if ``grad``, every gradient, all on the CPU."""
    *xs, s0, cu = inputs
    leaves = [x.to(DEVICE, torch.float32 if i == 1 else dtype).requires_grad_(grad) for i, x in enumerate(xs)]
    s_leaf = s0.to(DEVICE, torch.float32).requires_grad_(grad) if s0 is not None else None
    o, s = wkv7(*leaves, s_leaf, cu_seqlens=cu.to(DEVICE) if cu is not None else None, backend=backend)
    assert o.dtype == dtype and o.shape == xs[3].shape and s.dtype == torch.float32
    if not grad:
        return o.cpu(), s.cpu()
    do, ds = (c.to(DEVICE) for c in cot)
    wrt = leaves + ([s_leaf] if s0 is not None else [])
    grads = torch.autograd.grad((o.double() * do).sum() + (s.double() * ds).sum(), wrt)
    return (o.cpu(), s.cpu(), *(x.cpu() for x in grads))


def check(got, want, tol, label):
    errors = {name: rel_err(g, w) for name, g, w in zip(NAMES, got, want)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"{label}: relative RMS error above {tol:g}: {bad} (all: {errors})"
    assert all(torch.isfinite(x).all() for x in got), f"{label}: NaN or inf"


# (lengths or T, H, K, initial state, w_min): lengths 1 to 37, packed with an empty sequence, K 16 and 32,
# with and without a state, RWKV-7's decays and decays to -30 (exact: every pair has its own reference)
CHUNK_CASES = [
    (1, 1, 16, False, W_MIN),
    (20, 1, 16, True, W_MIN),
    (37, 1, 32, False, -30.0),
    ((1, 0, 17, 5), 1, 16, True, -3.0),
]


def _case_id(case):
    lengths, H, K, with_state, w_min = case
    seqs = "packed" + "-".join(map(str, lengths)) if isinstance(lengths, tuple) else f"T{lengths}"
    return f"{seqs}-H{H}-K{K}-{'state' if with_state else 'nostate'}-w{w_min:.3g}"


@pytest.mark.parametrize("case", CHUNK_CASES, ids=_case_id)
def test_triton_chunk_fp32_matches_fp64_oracle(case):
    lengths, H, K, with_state, w_min = case
    inputs, cot, want = oracle(lengths, H, K, with_state, w_min)
    check(run("triton_chunk", inputs, cot, torch.float32), want, TOL[torch.float32], f"triton_chunk {_case_id(case)}")


def test_triton_chunk_bf16_matches_fp64_oracle():
    inputs, cot, want = oracle(20, 1, 16, True, rounded_to=torch.bfloat16)
    check(run("triton_chunk", inputs, cot, torch.bfloat16), want, TOL[torch.bfloat16], "triton_chunk bf16")


def test_triton_chunk_split_value_blocks(monkeypatch):
    """V split over two programs: the r, w, k, a, b gradients are sums of per-block partials."""
    monkeypatch.setattr(chunk_mod, "_block_v", lambda K, V: 16)
    inputs, cot, want = oracle(17, 1, 32, True, -1.0, seed=2)
    check(run("triton_chunk", inputs, cot, torch.float32), want, TOL[torch.float32], "triton_chunk BV=16")


def test_triton_chunk_without_gradient_and_state_only_gradient():
    inputs, cot, want = oracle(20, 1, 16, True)
    o, s = run("triton_chunk", inputs, cot, torch.float32, grad=False)
    assert rel_err(o, want[0]) < 1e-5 and rel_err(s, want[1]) < 1e-5
    *xs, s0, _ = inputs
    xs = [x.float().to(DEVICE) for x in xs]
    s0 = s0.float().to(DEVICE).requires_grad_()
    _, s_final = wkv7(*xs, s0, backend="triton_chunk")
    (g,) = torch.autograd.grad(s_final.sum(), s0)  # o unused: its cotangent arrives as None
    ref = s0.detach().double().requires_grad_()
    _, s_ref = wkv7_loop(*(x.double() for x in xs), ref)
    (g_ref,) = torch.autograd.grad(s_ref.sum(), ref)
    assert rel_err(g.cpu(), g_ref) < 1e-5


def test_triton_chunk_compiles_fullgraph():
    torch._dynamo.reset()
    *xs, s0 = (x.float().to(DEVICE) for x in make_case7(1, 5, 1, 16, with_state=True, seed=3))

    def fn(*args):
        o, s = wkv7(*args, backend="triton_chunk")
        return (o * o).sum() + s.sin().sum()

    results = []
    for f in (torch.compile(fn, fullgraph=True, backend="aot_eager"), fn):
        args = [x.clone().requires_grad_() for x in (*xs, s0)]
        out = f(*args)
        results.append((out, torch.autograd.grad(out, args)))
    torch._dynamo.reset()
    torch.testing.assert_close(results[0][0], results[1][0])
    for x, y in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(x, y)


RECURRENT_CASES = [
    (1, 2, 16, True, W_MIN),
    (15, 2, 64, False, -3.0),
    ((1, 1, 0, 9), 2, 16, True, W_MIN),
]


@pytest.mark.parametrize("case", RECURRENT_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_recurrent_matches_fp64_oracle(case, dtype):
    lengths, H, K, with_state, w_min = case
    rounded = torch.bfloat16 if dtype == torch.bfloat16 else None
    inputs, cot, want = oracle(lengths, H, K, with_state, w_min, rounded_to=rounded)
    with torch.no_grad():
        got = run("triton_recurrent", inputs, cot, dtype, grad=False)
    check(got, want[:2], TOL[dtype], f"triton_recurrent {dtype} {_case_id(case)}")


def test_triton_recurrent_refuses_gradients():
    *xs, s0 = (x.float().to(DEVICE) for x in make_case7(1, 3, 2, 16, with_state=True))
    with pytest.raises(BackendUnavailableError, match="forward only"):
        wkv7(xs[0].requires_grad_(), *xs[1:], s0, backend="triton_recurrent")


def _inputs(T=5, device="cpu", dtype=torch.float32, grad=False, K=64, num_seqs=None):
    return WKV7Inputs(2 if num_seqs is None else 1, T, 4, K, K, dtype, torch.device(device), True, grad, num_seqs)


def test_automatic_selection_on_cpu_never_picks_triton():
    """Under the interpreter the Triton backends accept CPU tensors, but only by name."""
    for T in (1, 100):
        for grad in (False, True):
            assert wkv7_dispatcher.select(_inputs(T, grad=grad)).name in ("chunked", "reference")
    for name in ("triton_chunk", "triton_recurrent"):
        assert wkv7_dispatcher.get(name).auto_reasons(_inputs())


def test_triton_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match=r"needs a CUDA tensor \(or TRITON_INTERPRET=1"):
        wkv7_dispatcher.select(_inputs(), "triton_chunk")


@pytest.mark.parametrize("name", ["triton_chunk", "triton_recurrent"])
def test_triton_refuses_unsupported_dtype_and_head_size(name):
    backend = wkv7_dispatcher.get(name)
    assert any("float64" in x for x in backend.reasons(_inputs(dtype=torch.float64)))
    assert any("K = 48" in x for x in backend.reasons(_inputs(K=48)))
    assert any("K = 256" in x for x in backend.reasons(_inputs(K=256)))


def test_cuda_prefers_recurrent_for_decoding_and_chunk_for_training():
    prefer = wkv7_pkg._prefer
    assert prefer(_inputs(T=1, device="cuda")) == ["triton_recurrent"]
    assert prefer(_inputs(T=64, device="cuda")) == ["triton_recurrent"]
    assert prefer(_inputs(T=65, device="cuda")) == []
    assert prefer(_inputs(T=1, device="cuda", grad=True)) == []
    assert prefer(_inputs(T=64, device="cuda", num_seqs=8)) == ["triton_recurrent"]  # 8 tokens each on average


# Compiled kernels at training-like sizes, against the chunked PyTorch path in fp64 (itself checked against
# the fp64 loop in test_wkv7.py).


def _gpu_case(B, T, H, K, w_min, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, device="cuda", generator=g) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, K, device="cuda", generator=g)
    w = w_min * torch.rand(B, T, H, K, device="cuda", generator=g)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda", generator=g), dim=-1)
    gate = torch.rand(B, T, H, K, device="cuda", generator=g)
    s0 = torch.randn(B, H, K, K, device="cuda", generator=g)
    do = torch.randn(B, T, H, K, device="cuda", generator=g, dtype=torch.float64)
    ds = torch.randn(B, H, K, K, device="cuda", generator=g, dtype=torch.float64)
    return (r, w, k, v, -kk, kk * gate, s0), (do, ds)


def _fp64_reference(inputs, cot, cu=None):
    leaves = [x.double().requires_grad_() for x in inputs]
    o, s = wkv7_chunked(*leaves, cu_seqlens=cu)
    grads = torch.autograd.grad((o * cot[0]).sum() + (s * cot[1]).sum(), leaves)
    return [x.cpu() for x in (o.detach(), s.detach(), *grads)]


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K, w_min", [(64, W_MIN), (128, -2.0), (32, -5.0)])
def test_gpu_triton_chunk_large(dtype, K, w_min):
    inputs, cot = _gpu_case(2, 1000, 4, K, w_min)
    want = _fp64_reference(inputs, cot)
    got = run("triton_chunk", (*inputs, None), cot, dtype)
    check(got, want, 1e-2 if dtype == torch.bfloat16 else 2e-5, f"gpu K={K} {dtype}")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_triton_chunk_and_recurrent_packed(dtype):
    *xs, s0, cu = make_packed_case7((1, 700, 64, 0, 1235), 4, 64, with_state=True, seed=3)
    inputs = tuple(x.cuda() for x in (*xs, s0))
    g = torch.Generator().manual_seed(9)
    cot = tuple(torch.randn(x.shape, generator=g, dtype=torch.float64).cuda() for x in (xs[3], s0))
    want = _fp64_reference(inputs, cot, cu.cuda())
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-5
    check(run("triton_chunk", (*inputs, cu), cot, dtype), want, tol, f"gpu packed chunk {dtype}")
    with torch.no_grad():
        got = run("triton_recurrent", (*inputs, cu), cot, dtype, grad=False)
    check(got, want[:2], tol, f"gpu packed recurrent {dtype}")


@gpu
@needs_cuda
def test_gpu_decode_batch_64_matches_chunked():
    inputs, _ = _gpu_case(64, 1, 32, 64, W_MIN)
    with torch.no_grad():
        o, s = wkv7(*inputs)  # automatic: the recurrent kernel
        o_ref, s_ref = wkv7_chunked(*(x.double() for x in inputs))
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
