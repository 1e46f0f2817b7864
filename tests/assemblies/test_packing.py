"""Packed VisualRWKV batches (``LLaVAPackingCollator`` / ``pack_batch`` -> ``forward_batch`` with ``cu_seqlens``).

A row of packed samples gives each sample's logits, loss and gradients exactly as the samples run one by
one or as a padded batch, for RWKV-6 (``visualrwkv_tiny``, bidirectional scan) and RWKV-7 (``visualrwkv7_tiny``).
"""

from __future__ import annotations

import pytest
import torch

from assemblies import create_assembly
from rwkvblocks import SampleLevelCE
from rwkvblocks.prompting import Prompt
from rwkvblocks.prompting.dataset import LLaVACollator, LLaVAPackingCollator, LLaVASample, SkippedSample, pack_batch
from tests.assemblies.upstream7 import tower_pixels
from tests.helpers import spread_weights_

NAMES = ["visualrwkv_tiny", "visualrwkv7_tiny"]


def _model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_assembly(name, dtype=torch.float64, l2wrap=False, **overrides)
    spread_weights_(model.lm, lora=0)
    if hasattr(model.proj, "gate"):
        torch.nn.init.normal_(model.proj.gate.weight, std=0.2)
    return model.eval()


def _images(model, n, seed):
    if model.config.encoder.kind == "concat":  # VisualRWKV-7: packed pixels [N, P]
        return model.encoder.pack({k: v.double() for k, v in tower_pixels(n, seed).items()})
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _samples(model):
    """Three samples: one image after some text, text only, two images (one at position 0)."""
    g = torch.Generator().manual_seed(5)
    plan = [(9, [3]), (7, []), (12, [0, 6])]  # (text tokens, image offsets)
    images = _images(model, 3, seed=2).unbind(0)
    samples, used = [], 0
    for index, (n, offsets) in enumerate(plan):
        ids = torch.randint(1, 257, (n,), generator=g).tolist()
        labels = [-100] * (n // 2) + ids[n // 2 :]
        prompt = Prompt("", ids, labels, offsets)
        samples.append(LLaVASample(index, f"s{index}", prompt, list(images[used : used + len(offsets)])))
        used += len(offsets)
    return samples


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _run(model, batches, weights):
    model.zero_grad()
    outs = [model.forward_batch(b) for b in batches]
    sum(w * o.loss for w, o in zip(weights, outs)).backward()
    return outs, _grads(model)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", ["sample", "batch"])
def test_packed_row_equals_samples_alone_and_a_padded_batch(name, loss):
    model = _model(name, loss=loss)
    samples = _samples(model)
    n = model.image_tokens
    alone_batches = [LLaVACollator(n)([s]) for s in samples]
    (row,) = LLaVAPackingCollator(n)(samples)
    padded = LLaVACollator(n)(samples)
    assert row["input_ids"].shape == (1, int(padded["lengths"].sum()))
    assert row["cu_seqlens"].tolist() == [0, *padded["lengths"].cumsum(0).tolist()]
    assert row["sample_ids"] == ["s0", "s1", "s2"] and len(row["images"]) == 3

    packed, g_packed = _run(model, [row], [1.0])
    batch, g_padded = _run(model, [padded], [1.0])
    tokens = [int((b["labels"][0, 1:] != -100).sum()) for b in alone_batches]
    weights = [1 / 3] * 3 if loss == "sample" else [t / sum(tokens) for t in tokens]
    alone, g_alone = _run(model, alone_batches, weights)
    (packed,), (batch,) = packed, batch
    assert packed.state is None

    bounds = row["cu_seqlens"].tolist()
    for i, out in enumerate(alone):  # logits and per-sample losses
        a, b = bounds[i], bounds[i + 1]
        torch.testing.assert_close(packed.logits[:, a:b], out.logits, atol=1e-10, rtol=0)
        own = SampleLevelCE()(packed.logits[:, a:b], row["labels"][:, a:b])
        torch.testing.assert_close(own, out.loss, atol=1e-12, rtol=0)
    want = sum(w * o.loss for w, o in zip(weights, alone))
    torch.testing.assert_close(packed.loss, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(packed.loss, batch.loss, atol=1e-12, rtol=0)
    assert g_packed.keys() == g_alone.keys() and len(g_packed) > 10
    for key in g_packed:
        torch.testing.assert_close(g_packed[key], g_alone[key], atol=1e-10, rtol=0, msg=key)
        torch.testing.assert_close(g_packed[key], g_padded[key], atol=1e-10, rtol=0, msg=key)


def test_pack_batch_rows_fit_max_length_and_keep_every_sample():
    model = _model("visualrwkv_tiny")
    n = model.image_tokens
    samples = _samples(model)
    skipped = SkippedSample(9, "bad", "malformed", "not JSON")
    padded = LLaVACollator(n)([*samples, skipped])
    lengths = padded["lengths"].tolist()
    rows = pack_batch(padded, max_length=lengths[0] + lengths[1])
    assert [r["sample_ids"] for r in rows] == [["s0", "s1"], ["s2"]]
    assert [len(r["skipped"]) for r in rows] == [1, 0]
    assert rows[1]["image_spans"].tolist() == [[0, 0, 0, n], [0, n + 6, 0, n]]
    assert rows[0]["image_spans"].tolist() == [[0, 3, 0, n]]
    assert all(r["labels"][0, r["cu_seqlens"][:-1]].eq(-100).all() for r in rows)
    with torch.no_grad():  # a row of one sample is the sample alone
        alone = model.forward_batch(LLaVACollator(n)([samples[2]]))
        torch.testing.assert_close(model.forward_batch(rows[1]).logits, alone.logits, atol=1e-12, rtol=0)


def test_packing_refusals_are_clear():
    model = _model("visualrwkv_tiny")
    (row,) = LLaVAPackingCollator(model.image_tokens)(_samples(model))
    cu = row["cu_seqlens"]
    args = (row["input_ids"], None, row["images"], row["image_spans"])
    with pytest.raises(ValueError, match="cross a sample boundary"):
        model(*args, cu_seqlens=torch.tensor([0, 5, int(cu[-1])]))
    with pytest.raises(ValueError, match="from 0 to T"):
        model(*args, cu_seqlens=cu + 1)
    with pytest.raises(ValueError, match="state=None"):
        model(*args, model.lm.init_state(1), cu_seqlens=cu)
    padded = _model("visualrwkv_tiny", pad_multiple=16, pad_token=0)
    with pytest.raises(ValueError, match="pad_multiple=16"):
        padded(*args, cu_seqlens=cu)
    hybrid = create_assembly("visualrwkv_hybrid_tiny", dtype=torch.float64)
    (row,) = LLaVAPackingCollator(hybrid.image_tokens)(_samples(hybrid))
    with pytest.raises(ValueError, match="tiny_att"):
        hybrid.forward_batch(row)
