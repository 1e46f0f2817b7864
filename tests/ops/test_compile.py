"""The ops as ``torch.library`` ops: ``torch.compile(fullgraph=True)`` equals eager (outputs and every
gradient), each op is one node of the traced graphs, and the fake kernels run forward and backward on
``meta`` tensors and under ``FakeTensorMode`` without reading a value on the host.

Most cases compile with ``backend="aot_eager"`` (dynamo plus AOT autograd, eager kernels: it exercises
everything the registration is for, in seconds); one compiles with inductor, which builds C++ on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._subclasses.fake_tensor import FakeTensorMode

from rwkvblocks import BatchLevelCE, SampleLevelCE
from rwkvblocks.ops import causal_attention, weighted_cross_entropy, wkv5, wkv6

from .sync import forbid_host_reads
from .wkv_oracle import make_case, make_packed_case


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaves(tensors):
    return [x.detach().clone().requires_grad_(x.is_floating_point()) if x is not None else None for x in tensors]


def _compare(fn, tensors, backend="aot_eager", **compile_kwargs):
    """``fn(*tensors)`` (a scalar) compiled and eager: the values and the gradients of every float input."""
    compiled = torch.compile(fn, fullgraph=True, backend=backend, **compile_kwargs)
    results = []
    for run in (compiled, fn):
        args = _leaves(tensors)
        out = run(*args)
        wrt = [a for a in args if a is not None and a.requires_grad]
        results.append((out, torch.autograd.grad(out, wrt)))
    (got, g_got), (want, g_want) = results
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def _wkv_loss(op, reverse=False, backend=None):
    def fn(r, k, v, w, u, state, cu_seqlens=None):
        o, s = op(r, k, v, w, u, state, reverse=reverse, cu_seqlens=cu_seqlens, backend=backend)
        return (o.float() * o.float()).sum() + s.sin().sum()

    return fn


# name: (op, T, initial state, keyword arguments); T = 1 goes to the reference backend automatically
WKV_CASES = {
    "wkv6-nostate": (wkv6, 37, False, {}),
    "wkv6-state-reverse": (wkv6, 37, True, {"reverse": True}),
    "wkv6-decode-reference": (wkv6, 1, True, {}),
    "wkv6-reference": (wkv6, 9, True, {"backend": "reference"}),
    "wkv5-state": (wkv5, 21, True, {}),
    "wkv5-reverse": (wkv5, 21, False, {"reverse": True}),
}


@pytest.mark.parametrize("name", list(WKV_CASES))
def test_wkv_compiles_fullgraph_and_matches_eager(name):
    op, T, with_state, kwargs = WKV_CASES[name]
    case = make_case(2, T, 2, 16, with_state=with_state, seed=1)
    r, k, v, w, u, s0 = (x.float() if x is not None else None for x in case)
    if op is wkv5:
        w = w[0, 0]
    _compare(_wkv_loss(op, **kwargs), (r, k, v, w, u, s0))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_wkv_packed_sequences_compile(reverse):
    r, k, v, w, u, s0, cu = make_packed_case((5, 0, 20, 12), 2, 16, with_state=True, seed=2)
    _compare(_wkv_loss(wkv6, reverse=reverse), (r, k, v, w, u, s0, cu))


def test_wkv_triton_chunk_compiles_under_the_interpreter():
    r, k, v, w, u, s0 = (x.float() for x in make_case(1, 20, 2, 16, with_state=True, seed=3))
    _compare(_wkv_loss(wkv6, backend="triton_chunk"), (r, k, v, w, u, s0))


def test_wkv_dynamic_shapes_follow_the_length():
    """Symbolic T: the backend and chunk size are chosen by guards, so every length stays correct."""
    fn = _wkv_loss(wkv6)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for T in (20, 37, 2):
        case = [x.float() for x in make_case(1, T, 2, 16, with_state=True, seed=T)]
        a, b = _leaves(case), _leaves(case)
        got, want = compiled(*a), fn(*b)
        torch.testing.assert_close(got, want)
        for x, y in zip(torch.autograd.grad(got, a), torch.autograd.grad(want, b)):
            torch.testing.assert_close(x, y)


def test_compiled_cpu_decode_step_without_gradients_traces_the_recurrence():
    """No gradients, one CPU token, no forced backend: the graph holds the recurrence's plain ops (for the compiler to
    fuse), not the op, and equals eager; a longer input, or one forced to a backend, still calls the op."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(sorted(str(n.target) for n in gm.graph.nodes if str(n.target).startswith("rwkvblocks.")))
        return gm.forward

    case = [x.float() for x in make_case(2, 1, 2, 16, with_state=True, seed=4)]
    longer = [x.float() for x in make_case(2, 9, 2, 16, with_state=True, seed=5)]
    with torch.no_grad():
        for inputs, kwargs in ((case, {}), (longer, {}), (case, {"backend": "chunked"})):
            torch._dynamo.reset()
            got = torch.compile(lambda *a, kw=kwargs: wkv6(*a, **kw), fullgraph=True, backend=record)(*inputs)
            want = wkv6(*inputs, **kwargs)
            for x, y in zip(got, want):
                torch.testing.assert_close(x, y)
    assert graphs == [[], ["rwkvblocks.wkv6.default"], ["rwkvblocks.wkv6.default"]]


def test_each_op_is_one_node_forward_and_backward():
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def fn(r, k, v, w, u, s0, logits, targets, weights, q):
        o, s = wkv6(r, k, v, w, u, s0)
        a = causal_attention(q, q, q)
        ce = weighted_cross_entropy(logits, targets, weights)
        return o.sum() + s.sum() + a.sum() + ce

    r, k, v, w, u, s0 = (x.float().requires_grad_() for x in make_case(1, 20, 2, 16, with_state=True))
    logits = torch.randn(2, 5, 7, requires_grad=True)
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    out = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))(
        r, k, v, w, u, s0, logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), q
    )
    out.backward()
    forward, backward = graphs

    def calls(gm):
        ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        return sorted(str(t) for t in ops if str(t).startswith("rwkvblocks."))

    assert calls(forward) == [
        "rwkvblocks.causal_attention.default",
        "rwkvblocks.weighted_cross_entropy.default",
        "rwkvblocks.wkv6.default",
    ]
    assert calls(backward) == [
        "rwkvblocks.causal_attention_backward.default",
        "rwkvblocks.weighted_cross_entropy_backward.default",
        "rwkvblocks.wkv6_backward.default",
    ]


@pytest.mark.parametrize("Tq, Tk", [(6, 6), (1, 6), (3, 8)], ids=["prefill", "decode", "cached-prefix"])
def test_causal_attention_compiles(Tq, Tk):
    g = torch.Generator().manual_seed(Tq)
    q = torch.randn(2, 2, Tq, 8, generator=g)
    k, v = (torch.randn(2, 2, Tk, 8, generator=g) for _ in range(2))
    _compare(lambda q, k, v: causal_attention(q, k, v).square().sum(), (q, k, v))


@pytest.mark.parametrize("loss_cls", [SampleLevelCE, BatchLevelCE])
@pytest.mark.parametrize("shift", [True, False], ids=["shift", "aligned"])
def test_losses_and_cross_entropy_op_compile(loss_cls, shift):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 11, generator=g, dtype=torch.bfloat16)
    labels = torch.randint(0, 11, (3, 9), generator=g)
    labels[0, :4] = -100
    loss = loss_cls(shift=shift, l2wrap=True)
    _compare(lambda logits, labels: loss(logits, labels), (logits, labels))
    weights = torch.rand(3, 8, generator=g)
    targets = labels[:, 1:].clamp_min(0)
    _compare(lambda x, t, w: weighted_cross_entropy(x, t, w, l2wrap=1e-3), (logits.float(), targets, weights))


@pytest.mark.slow
def test_inductor_compiles_wkv_and_loss_together():
    """The default backend: inductor fuses the code around the ops and calls each op as an extern kernel."""

    def fn(r, k, v, w, u, s0, logits, labels):
        o, s = wkv6(r, k, v, w, u, s0)
        y = torch.nn.functional.gelu(o).flatten(2)[..., :11]
        return SampleLevelCE()(y + logits, labels) + s.square().mean()

    r, k, v, w, u, s0 = (x.float() for x in make_case(2, 17, 2, 8, with_state=True, seed=4))
    logits = torch.randn(2, 17, 11)
    labels = torch.randint(0, 11, (2, 17))
    _compare(fn, (r, k, v, w, u, s0, logits, labels), backend="inductor")


def _all_ops_forward_backward(device):
    """Forward and backward of every op (and both losses) on ``device``; returns the gradient shapes."""
    B, T, H, K = 1, 20, 2, 16
    r, k, v, w = (torch.randn(B, T, H, K, device=device, requires_grad=True) for _ in range(4))
    u = torch.randn(H, K, device=device, requires_grad=True)
    s0 = torch.randn(3, H, K, K, device=device, requires_grad=True)
    cu = torch.tensor([0, 5, 5, T], device=device)
    o, s = wkv6(r, k, v, w, u, s0, cu_seqlens=cu, reverse=True)
    w5 = torch.randn(H, K, device=device, requires_grad=True)
    o5, s5 = wkv5(r, k, v, w5, u)
    (o.sum() + s.sum() + o5.sum() + s5.sum()).backward()
    q = torch.randn(1, 2, 3, 8, device=device, requires_grad=True)
    kv = torch.randn(1, 2, 5, 8, device=device, requires_grad=True)
    causal_attention(q, kv, kv).sum().backward()
    logits = torch.randn(2, 6, 11, device=device, requires_grad=True)
    labels = torch.zeros(2, 6, dtype=torch.long, device=device)
    (SampleLevelCE(l2wrap=True)(logits, labels) + BatchLevelCE(shift=False)(logits, labels)).backward()
    return [x.grad.shape for x in (r, k, v, w, u, s0, w5, q, kv, logits)], (o.shape, s.shape)


def test_meta_tensors_run_forward_and_backward_without_host_reads():
    with forbid_host_reads():
        grads, (o, s) = _all_ops_forward_backward("meta")
    assert o == (1, 20, 2, 16) and s == (3, 2, 16, 16)
    assert grads[5] == (3, 2, 16, 16) and grads[6] == (2, 16) and grads[-1] == (2, 6, 11)


def test_fake_cpu_tensors_run_forward_and_backward_without_host_reads():
    """FakeTensorMode on CPU: what ``torch.compile`` traces with; CPU would otherwise run the value checks."""
    with FakeTensorMode(), forbid_host_reads():
        grads, (o, s) = _all_ops_forward_backward("cpu")
    assert o == (1, 20, 2, 16) and s == (3, 2, 16, 16) and grads[6] == (2, 16)


def test_the_sync_detector_can_fail():
    with forbid_host_reads(), pytest.raises(AssertionError, match=r"Tensor.item\(\)"):
        torch.zeros(1).item()
