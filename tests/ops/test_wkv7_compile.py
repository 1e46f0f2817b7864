"""``wkv7`` as a ``torch.library`` op: ``torch.compile(fullgraph=True)`` equals eager (outputs and every gradient),
the op is one node of the traced forward and backward graphs, and its fake kernels run on ``meta`` tensors and
under ``FakeTensorMode`` without reading a value on the host."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._subclasses.fake_tensor import FakeTensorMode

from rwkvblocks.ops import wkv7

from .sync import forbid_host_reads
from .wkv7_oracle import make_case7, make_packed_case7


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaves(tensors):
    return [x.detach().clone().requires_grad_(x.is_floating_point()) if x is not None else None for x in tensors]


def _loss(backend=None):
    def fn(r, w, k, v, a, b, state, cu_seqlens=None):
        o, s = wkv7(r, w, k, v, a, b, state, cu_seqlens=cu_seqlens, backend=backend)
        return (o.float() * o.float()).sum() + s.sin().sum()

    return fn


def _compare(fn, tensors, **compile_kwargs):
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", **compile_kwargs)
    results = []
    for run in (compiled, fn):
        args = _leaves(tensors)
        out = run(*args)
        wrt = [a for a in args if a is not None and a.requires_grad]
        results.append((out, torch.autograd.grad(out, wrt)))
    (got, g_got), (want, g_want) = results
    torch.testing.assert_close(got, want)
    for x, y in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(x, y)


# name: (T, initial state, backend); T = 1 goes to the reference backend automatically
CASES = {
    "chunked-nostate": (37, False, None),
    "chunked-state": (37, True, None),
    "decode-reference": (1, True, None),
    "reference": (9, True, "reference"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiles_fullgraph_and_matches_eager(name):
    T, with_state, backend = CASES[name]
    *inputs, s0 = (x.float() if x is not None else None for x in make_case7(2, T, 2, 16, with_state=with_state, seed=1))
    _compare(_loss(backend), (*inputs, s0))


def test_packed_sequences_compile():
    *inputs, s0, cu = make_packed_case7((5, 0, 20, 12), 2, 16, with_state=True, seed=2)
    _compare(_loss(), (*inputs, s0, cu))


def test_dynamic_shapes_follow_the_length():
    """Symbolic T: the backend and chunk size are chosen by guards, so every length stays correct."""
    fn = _loss()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for T in (20, 37, 2):
        case = [x.float() for x in make_case7(1, T, 2, 16, with_state=True, seed=T)]
        a, b = _leaves(case), _leaves(case)
        got, want = compiled(*a), fn(*b)
        torch.testing.assert_close(got, want)
        for x, y in zip(torch.autograd.grad(got, a), torch.autograd.grad(want, b), strict=True):
            torch.testing.assert_close(x, y)


def test_compiled_cpu_decode_step_without_gradients_traces_the_recurrence():
    """No gradients, one CPU token, no forced backend: the graph holds the recurrence's plain ops, not the op,
    and equals eager; a longer input, or one forced to a backend, still calls the op."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(sorted(str(n.target) for n in gm.graph.nodes if str(n.target).startswith("rwkvblocks.")))
        return gm.forward

    case = [x.float() for x in make_case7(2, 1, 2, 16, with_state=True, seed=4)]
    longer = [x.float() for x in make_case7(2, 9, 2, 16, with_state=True, seed=5)]
    with torch.no_grad():
        for inputs, kwargs in ((case, {}), (longer, {}), (case, {"backend": "chunked"})):
            torch._dynamo.reset()
            got = torch.compile(lambda *a, kw=kwargs: wkv7(*a, **kw), fullgraph=True, backend=record)(*inputs)
            want = wkv7(*inputs, **kwargs)
            for x, y in zip(got, want, strict=True):
                torch.testing.assert_close(x, y)
    assert graphs == [[], ["rwkvblocks.wkv7.default"], ["rwkvblocks.wkv7.default"]]


def test_the_op_is_one_node_forward_and_backward():
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def fn(*args):
        o, s = wkv7(*args)
        return o.sum() + s.sum()

    inputs = [x.float().requires_grad_() for x in make_case7(1, 20, 2, 16, with_state=True)]
    torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))(*inputs).backward()
    forward, backward = graphs

    def calls(gm):
        ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        return [str(t) for t in ops if str(t).startswith("rwkvblocks.")]

    assert calls(forward) == ["rwkvblocks.wkv7.default"]
    assert calls(backward) == ["rwkvblocks.wkv7_backward.default"]


def _forward_backward(device):
    B, T, H, K = 1, 20, 2, 16
    r, w, k, v, a, b = (torch.randn(B, T, H, K, device=device, requires_grad=True) for _ in range(6))
    s0 = torch.randn(3, H, K, K, device=device, requires_grad=True)
    cu = torch.tensor([0, 5, 5, T], device=device)
    o, s = wkv7(r, w, k, v, a, b, s0, cu_seqlens=cu)
    o2, s2 = wkv7(r, w, k, v, a, b)
    (o.sum() + s.sum() + o2.sum() + s2.sum()).backward()
    return [x.grad.shape for x in (r, w, k, v, a, b, s0)], (o.shape, s.shape)


def test_meta_tensors_run_forward_and_backward_without_host_reads():
    with forbid_host_reads():
        grads, (o, s) = _forward_backward("meta")
    assert o == (1, 20, 2, 16) and s == (3, 2, 16, 16) and grads[-1] == (3, 2, 16, 16)


def test_fake_cpu_tensors_run_forward_and_backward_without_host_reads():
    """FakeTensorMode on CPU: what ``torch.compile`` traces with; CPU would otherwise run the value checks."""
    with FakeTensorMode(), forbid_host_reads():
        grads, (o, s) = _forward_backward("cpu")
    assert o == (1, 20, 2, 16) and s == (3, 2, 16, 16) and grads[1] == (1, 20, 2, 16)
