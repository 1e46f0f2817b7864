"""Backend dispatch and argument checking of the WKV entry points, and the rule for value checks."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from rwkvblocks.ops import Backend, BackendUnavailableError, Dispatcher, check_values, wkv5, wkv6, wkv_dispatcher

from .sync import forbid_host_reads
from .wkv_oracle import make_case


def _case(T=5, H=2, K=8):
    return [x.float() if x is not None else None for x in make_case(2, T, H, K, with_state=True)]


def _dispatcher(prefer=None):
    def positive(x):
        return [] if x > 0 else ["x must be positive"]

    picky = Backend("picky", lambda x: "picky", unsupported_reasons=positive)
    gone = Backend("gone", lambda x: None, probe=lambda: "needs a GPU")
    anything = Backend("anything", lambda x: "anything")
    return Dispatcher("toy", "RWKVBLOCKS_TOY_BACKEND", [gone, picky, anything], prefer=prefer)


def test_auto_selection_takes_first_backend_without_reasons():
    d = _dispatcher()
    assert d.select(1).name == "picky"
    assert d.select(-1).name == "anything"


def test_explicit_backend_raises_with_reasons_never_swaps():
    d = _dispatcher()
    with pytest.raises(BackendUnavailableError, match="x must be positive"):
        d.select(-1, "picky")
    with pytest.raises(BackendUnavailableError, match="needs a GPU"):
        d.select(1, "gone")
    with pytest.raises(ValueError, match="unknown backend 'nope'.*gone, picky, anything"):
        d.select(1, "nope")


def test_environment_variable_selects_and_is_checked(monkeypatch):
    d = _dispatcher()
    monkeypatch.setenv("RWKVBLOCKS_TOY_BACKEND", "anything")
    assert d.select(1).name == "anything"
    monkeypatch.setenv("RWKVBLOCKS_TOY_BACKEND", "picky")
    with pytest.raises(BackendUnavailableError, match=r"from \$RWKVBLOCKS_TOY_BACKEND"):
        d.select(-1)
    assert d.select(-1, "anything").name == "anything"  # the argument beats the variable


def test_prefer_heuristic_and_registration():
    d = _dispatcher(prefer=lambda x: ["anything"] if x > 10 else [])
    assert d.select(100).name == "anything"
    assert d.select(5).name == "picky"
    d.register(Backend("first", lambda x: None), before="gone")
    assert d.names()[0] == "first"
    with pytest.raises(ValueError, match="already registered"):
        d.register(Backend("first", lambda x: None))


def test_choice_is_logged_once(caplog):
    d = _dispatcher()
    with caplog.at_level(logging.INFO, logger="rwkvblocks.ops"):
        d.select(1, device_key="cpu")
        d.select(2, device_key="cpu")
    assert sum("using backend 'picky'" in r.message for r in caplog.records) == 1


def test_wkv_env_var_and_backend_argument(monkeypatch):
    r, k, v, w, u, s = _case()
    monkeypatch.setenv("RWKVBLOCKS_WKV_BACKEND", "nonexistent")
    with pytest.raises(ValueError, match="unknown backend 'nonexistent'"):
        wkv6(r, k, v, w, u, s)
    monkeypatch.setenv("RWKVBLOCKS_WKV_BACKEND", "reference")
    o_env, _ = wkv6(r, k, v, w, u, s)
    o_ref, _ = wkv6(r, k, v, w, u, s, backend="reference")
    assert torch.equal(o_env, o_ref)


def test_decode_prefers_reference_on_cpu():
    from rwkvblocks.ops.wkv import WKVInputs

    cpu = torch.device("cpu")
    decode = WKVInputs(8, 1, 2, 8, 8, torch.float32, cpu, False, True, False)
    prefill = WKVInputs(1, 512, 2, 8, 8, torch.float32, cpu, False, False, True)
    assert wkv_dispatcher.select(decode).name == "reference"
    assert wkv_dispatcher.select(prefill).name == "chunked"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(r=a["r"][0]), r"r must have shape \[B, T, H, K\] \(4-D\)"),
        (lambda a: a.update(k=a["k"][:, :3]), "k must have shape"),
        (lambda a: a.update(v=a["v"][:, :, :1]), "v must have shape"),
        (lambda a: a.update(w=a["w"][..., :4]), "w must have shape"),
        (lambda a: a.update(u=a["u"][:1]), r"u must have shape \[H, K\]"),
        (lambda a: a.update(state=a["state"][:, :1]), "state must have shape"),
        (lambda a: a.update(w=a["w"].abs() + 0.1), "w is the log of the decay and must be <= 0"),
        (lambda a: a.update(k=a["k"].double()), "r, k and v must share a dtype"),
        (lambda a: a.update(v=a["v"].long()), "v must be a floating-point tensor"),
        (lambda a: a.update(state=a["state"].bfloat16()), "state must be float32"),
        (lambda a: a.update(u=[1.0]), "u must be a torch.Tensor"),
        (lambda a: a.update(r=a["r"].to("meta")), "all inputs must be on one device.*r on meta"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(mutate, message):
    r, k, v, w, u, s = _case()
    args = dict(r=r, k=k, v=v, w=w, u=u, state=s)
    mutate(args)
    with pytest.raises(ValueError, match=message):
        wkv6(**args)


def test_wkv5_requires_static_decay_shape():
    r, k, v, w, u, s = _case()
    with pytest.raises(ValueError, match=r"w must have shape \[H, K\] = \[2, 8\] \(static"):
        wkv5(r, k, v, w, u, s)
    with pytest.raises(ValueError, match="must be <= 0"):
        wkv5(r, k, v, torch.ones(2, 8), u, s)


def test_backend_error_is_a_value_error():
    assert issubclass(BackendUnavailableError, ValueError)


def test_auto_reasons_skip_a_backend_only_in_automatic_selection():
    only_by_name = Backend("by_name", lambda x: "by_name", auto_reasons=lambda x: ["only on request"])
    d = Dispatcher("toy", "RWKVBLOCKS_TOY_BACKEND", [only_by_name, Backend("anything", lambda x: "anything")])
    assert d.select(1).name == "anything"
    assert d.select(1, "by_name").name == "by_name"


def test_resolve_remembers_and_follows_the_environment(monkeypatch):
    calls = []
    d = Dispatcher("toy", "RWKVBLOCKS_TOY_BACKEND", [Backend("a", lambda x: "a"), Backend("b", lambda x: "b")])
    d.select = lambda inputs, backend=None, device_key="": calls.append(backend) or d.get(backend or "a")
    assert d.resolve(1).name == "a" and d.resolve(1).name == "a" and calls == [None]
    monkeypatch.setenv("RWKVBLOCKS_TOY_BACKEND", "b")
    d.resolve(1)
    assert len(calls) == 2  # a new variable value is a new key
    d.register(Backend("c", lambda x: "c"))
    d.resolve(1)
    assert len(calls) == 3  # registration forgets what was resolved


def test_check_values_rule():
    cpu = torch.zeros(2)
    assert check_values(cpu) and check_values(cpu, True) and not check_values(cpu, False)
    meta = cpu.to("meta")
    assert not check_values(meta) and not check_values(meta, True)  # no values to read
    with FakeTensorMode():
        assert not check_values(torch.zeros(2), True)
    default = torch.compile(lambda x: x + 1 if check_values(x) else x - 1, fullgraph=True, backend="eager")
    assert torch.equal(default(cpu), cpu - 1)  # never while compiling, unless asked
    asked = torch.compile(lambda x: x + 1 if check_values(x, True) else x - 1, fullgraph=True, backend="eager")
    assert torch.equal(asked(cpu), cpu + 1)


def test_value_checks_follow_validate():
    r, k, v, w, u, s = _case()
    positive = w.abs() + 0.1
    with pytest.raises(ValueError, match="must be <= 0"):
        wkv6(r, k, v, positive, u, s, validate=True)
    o, _ = wkv6(r, k, v, positive, u, s, validate=False)  # not checked: it runs
    assert o.shape == v.shape
    with pytest.raises(ValueError, match="must be <= 0"):
        wkv5(r, k, v, torch.ones(2, 8), u, s, validate=True)
    wkv5(r, k, v, torch.ones(2, 8), u, s, validate=False)


def test_default_reads_values_on_cpu_and_validate_false_reads_none():
    r, k, v, w, u, s = (x.requires_grad_() for x in _case(T=40))
    with forbid_host_reads(), pytest.raises(AssertionError, match=r"Tensor.item\(\)"):
        wkv6(r, k, v, w, u, s)  # by default a CPU input has its maximum log-decay read
    with forbid_host_reads():
        for backend in ("chunked", "reference"):
            o, s1 = wkv6(r, k, v, w, u, s, validate=False, backend=backend)
            (o.sum() + s1.sum()).backward()
