"""Backend dispatch and argument checking of the WKV entry points."""

from __future__ import annotations

import logging

import pytest
import torch

from rwkvblocks.ops import Backend, BackendUnavailableError, Dispatcher, wkv5, wkv6, wkv_dispatcher

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
