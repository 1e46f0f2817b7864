"""``torch.compile(fullgraph=True)`` of the blocks and a 2-layer LM equals eager, and the hot path never reads
the device: a forward and backward on the ``meta`` device reaches no ``.item()`` / ``.tolist()`` / ``bool()``."""

from __future__ import annotations

import pytest
import torch

from assemblies import RWKVConfig, build_rwkv_lm, create_assembly
from rwkvblocks import ChannelMix, RWKVBlock, SampleLevelCE, TimeMix
from tests.helpers import spread_weights_

C = 32


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _leaves(item)]
    if hasattr(out, "layers"):  # RWKVState
        return _leaves(out.layers)
    return []


def _case(name, version):
    torch.manual_seed(0)
    if name == "lm":
        cfg = RWKVConfig(version, vocab_size=40, dim=C, num_layers=2, head_dim=8, mix_rank=4, decay_rank=4)
        module = spread_weights_(build_rwkv_lm(cfg))
        return module, lambda: torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    if name == "time_mix":
        make = TimeMix.rwkv6 if version == "x060" else TimeMix.rwkv5
        kw = {"mix_rank": 4, "decay_rank": 4} if version == "x060" else {}
        module = make(C, head_dim=8, layer_idx=1, num_layers=2, **kw)
    elif name == "channel_mix":
        module = (ChannelMix.rwkv6 if version == "x060" else ChannelMix.rwkv5)(C, layer_idx=1, num_layers=2)
    else:
        att = TimeMix.rwkv6(C, head_dim=8, mix_rank=4, decay_rank=4)
        module = RWKVBlock(att, ChannelMix.rwkv6(C), dim=C)
    spread_weights_(module)
    return module, lambda: torch.randn(2, 9, C, generator=torch.Generator().manual_seed(1))


# x052 runs wkv5 (static decay) and the "lerp" token shift; blocks and the LM share the x060 code path
CASES = [("time_mix", "x060"), ("time_mix", "x052"), ("channel_mix", "x060"), ("channel_mix", "x052")]
CASES += [("rwkv_block", "x060"), ("lm", "x060")]


@pytest.mark.slow
@pytest.mark.parametrize("name, version", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_compile_fullgraph_equals_eager(name, version):
    torch._dynamo.reset()
    module, make_input = _case(name, version)
    compiled = torch.compile(module, fullgraph=True)
    x = make_input()
    want = module(x)
    got = compiled(x)
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    # carry the state on (state in, state out) and take gradients of every parameter
    state = want[1]
    want_step = module(x[:, :3], state)
    got_step = compiled(x[:, :3], state)
    for a, b in zip(_leaves(got_step), _leaves(want_step), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    params = [p for p in module.parameters() if p.requires_grad]
    want_grads = torch.autograd.grad(want[0].square().mean(), params, allow_unused=True)
    got_grads = torch.autograd.grad(got[0].square().mean(), params, allow_unused=True)
    for (n, _), a, b in zip(module.named_parameters(), got_grads, want_grads, strict=True):
        if b is None:
            assert a is None, n
            continue
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-4, msg=n)


class _SyncDetector:
    """Counts every call that would read a tensor's values on the host, by patching ``Tensor``."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def spy(t, *args, _name=name, _original=original, **kwargs):
                if t.device.type != "cpu":
                    self.calls.append(f"Tensor.{_name} on {t.device.type} {tuple(t.shape)}")
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)


@pytest.mark.parametrize("version", ["x060", "x052"])
def test_lm_forward_and_backward_reach_no_device_sync(version, monkeypatch):
    cfg = RWKVConfig(version, vocab_size=300, dim=64, num_layers=2, head_dim=32, mix_rank=8, decay_rank=16)
    model = build_rwkv_lm(cfg, device="meta")
    tokens = torch.zeros(2, 33, dtype=torch.long, device="meta")
    labels = torch.zeros(2, 33, dtype=torch.long, device="meta")
    detector = _SyncDetector(monkeypatch)
    logits, state = model(tokens)
    logits2, _ = model(tokens[:, :1], state)  # recurrent step with the carried state
    loss = SampleLevelCE()(logits, labels) + logits2.float().mean()
    loss.backward()
    assert detector.calls == []
    assert logits.shape == (2, 33, 300) and model.head.weight.grad is not None


def test_visualrwkv_embed_and_loss_reach_no_device_sync(monkeypatch):
    model = create_assembly("visualrwkv_tiny", device="meta")
    n = model.image_tokens
    ids = torch.zeros(2, 50, dtype=torch.long, device="meta")
    images = torch.zeros(3, 3, 56, 56, device="meta")
    spans = torch.tensor([[0, 4, 0, n], [1, 2, 0, n], [1, 25, 3, n - 3]])  # CPU metadata, as the collator gives
    detector = _SyncDetector(monkeypatch)
    out = model(ids, ids, images, spans)
    out.loss.backward()
    assert detector.calls == []
    assert out.logits.shape == (2, 50, 257) and model.proj.weight.grad is not None
