"""ScanPermuter: permutation properties (hypothesis), exact visiting orders, and an RWKV stack
scanned bidirectionally against upstream's flip-the-span method, in parallel and recurrent mode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assemblies import RWKVConfig, build_rwkv_lm
from rwkvblocks import ChannelMix, RWKVBlock, Scanned, ScanPermuter, TimeMix
from rwkvblocks.scan import DIRECTIONS
from tests.helpers import spread_weights_


def expected_order(direction: str, h: int, w: int) -> list[int]:
    """Raster indices in the order a direction reads an h x w grid (written out plainly)."""
    raster = [r * w + c for r in range(h) for c in range(w)]
    column = [r * w + c for c in range(w) for r in range(h)]
    return {
        "forward": raster,
        "backward": raster[::-1],
        "column_forward": column,
        "column_backward": column[::-1],
    }[direction]


@st.composite
def layouts(draw):
    """A batch of 1-3 samples, each with 1-3 images at random, non-overlapping places."""
    batch = draw(st.integers(1, 3))
    spans, lengths = [], []
    for b in range(batch):
        pos = draw(st.integers(0, 3))  # leading text
        for _ in range(draw(st.integers(1, 3))):
            h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            cls_first = draw(st.booleans())
            pos += cls_first  # a CLS token before the patches stays in place
            spans.append((b, pos, h, w))
            pos += h * w + draw(st.integers(0, 3))  # CLS-last or text after the image
        lengths.append(pos)
    return batch, max(lengths) + draw(st.integers(0, 2)), spans


@settings(max_examples=60, deadline=None)
@given(layouts(), st.sampled_from(["uni", "bi", "multi"]))
def test_permute_then_unpermute_is_identity_and_only_patches_move(layout, schedule):
    B, T, spans = layout
    plan = ScanPermuter(schedule).plan(spans, batch_size=B, seq_len=T)
    x = torch.arange(B * T, dtype=torch.float64).view(B, T, 1).expand(B, T, 3).contiguous()
    in_span = torch.zeros(B, T, dtype=torch.bool)
    for b, s, h, w in spans:
        in_span[b, s : s + h * w] = True
    for layer in range(4):
        permuted = plan.permute(x, layer)
        assert torch.equal(plan.unpermute(permuted, layer), x)
        assert torch.equal(permuted[~in_span], x[~in_span])  # text and CLS never move
        direction = plan.permuter.direction(layer)
        for b, s, h, w in spans:
            got = (permuted[b, s : s + h * w, 0] - x[b, s, 0]).long().tolist()
            assert got == expected_order(direction, h, w), (direction, h, w)


def test_each_direction_on_a_labelled_grid():
    h, w, start = 3, 4, 2
    T = start + h * w + 2
    x = torch.full((1, T, 1), -1.0)
    x[0, start : start + h * w, 0] = torch.arange(h * w, dtype=torch.float32)  # label = raster index
    plan = ScanPermuter(list(DIRECTIONS)).plan([(0, start, h, w)], batch_size=1, seq_len=T)
    want = {
        "forward": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        "backward": [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        "column_forward": [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11],
        "column_backward": [11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0],
    }
    for layer, direction in enumerate(DIRECTIONS):
        got = plan.permute(x, layer)[0, start : start + h * w, 0].long().tolist()
        assert got == want[direction], direction


def test_schedules():
    assert [ScanPermuter("bi").direction(i) for i in range(4)] == ["forward", "backward"] * 2
    assert [ScanPermuter("multi").direction(i) for i in range(5)] == list(DIRECTIONS) + ["forward"]
    assert {ScanPermuter("uni").direction(i) for i in range(7)} == {"forward"}
    assert ScanPermuter(["backward"]).direction(3) == "backward"


def test_bad_layouts_are_refused():
    permuter = ScanPermuter("bi")
    with pytest.raises(ValueError, match="overlap"):
        permuter.plan([(0, 0, 2, 2), (0, 3, 1, 2)], batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="outside the sequence"):
        permuter.plan([(0, 5, 2, 2)], batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="sample index"):
        permuter.plan([(1, 0, 2, 2)], batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="schedule"):
        ScanPermuter("zigzag")
    with pytest.raises(ValueError, match="directions"):
        ScanPermuter(["forward", "sideways"])
    plan = permuter.plan([(0, 0, 2, 2)], batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match=r"made for \[B, T\] = \[1, 8\]"):
        plan.permute(torch.zeros(1, 9, 4), 1)


C, V, L = 64, 50, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_rwkv_lm(RWKVConfig("x060", V, C, L, 16, None, 4, 8), dtype=torch.float64)
    return spread_weights_(m, lora=0).eval()


def _sequence(model, seed=0):
    """Two samples: text, a 3x4 image (CLS first in sample 0, CLS last in sample 1), text."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, V, (2, 14), generator=g)
    image = torch.randn(2, 13, C, generator=g, dtype=torch.float64)
    x = torch.cat([model.embed(text[:, :5]), image, model.embed(text[:, 5:])], 1)  # T = 27
    spans = [(0, 5 + 1, 3, 4), (1, 5, 3, 4)]
    return x, spans


def _upstream_bi(model, x, spans):
    """Upstream's method: flip each patch span before odd blocks, flip it back after them."""

    def flip(t):
        t = t.clone()
        for b, s, h, w in spans:
            t[b, s : s + h * w] = t[b, s : s + h * w].flip(0)
        return t

    for i, block in enumerate(model.blocks):
        if i % 2:
            x = flip(block(flip(x))[0])
        else:
            x = block(x)[0]
    return model.head(model.ln_out(x))


def test_bi_scanned_stack_equals_upstream_flip(model):
    x, spans = _sequence(model)
    plan = ScanPermuter("bi").plan(spans, batch_size=2, seq_len=x.shape[1])
    with torch.no_grad():
        ours, _ = model(embeds=x, scan=plan)
        want = _upstream_bi(model, x, spans)
        plain, _ = model(embeds=x)
    torch.testing.assert_close(ours, want, atol=1e-10, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # scanning changed something


@pytest.mark.parametrize("schedule", ["bi", "multi"])
def test_recurrent_prefill_equals_parallel(model, schedule):
    x, spans = _sequence(model, seed=1)
    T = x.shape[1]
    permuter = ScanPermuter(schedule)
    with torch.no_grad():
        whole, whole_state = model(embeds=x, scan=permuter.plan(spans, batch_size=2, seq_len=T))
        # chunk 1: leading text; chunk 2: the image span inside it (positions shifted); then 1 token at a time
        first, state = model(embeds=x[:, :3])
        mid_spans = [(b, s - 3, h, w) for b, s, h, w in spans]
        second, state = model(embeds=x[:, 3:24], state=state, scan=permuter.plan(mid_spans, batch_size=2, seq_len=21))
        rows = [first, second]
        for t in range(24, T):
            out, state = model(embeds=x[:, t : t + 1], state=state)
            rows.append(out)
    torch.testing.assert_close(torch.cat(rows, 1), whole, atol=1e-10, rtol=0)
    for a, b in zip(state, whole_state):
        torch.testing.assert_close(a.wkv, b.wkv, atol=1e-10, rtol=0)


def test_scanned_wrapper_around_any_block():
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    block = RWKVBlock(TimeMix.rwkv5(32, head_dim=16, **f64), ChannelMix.rwkv5(32, **f64), dim=32, **f64)
    with torch.no_grad():
        block.att.output.weight.normal_(0, 0.2)
    wrapped = Scanned(block, layer_idx=1)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    plan = ScanPermuter("bi").plan([(0, 2, 2, 3)], batch_size=1, seq_len=10)
    y, state = wrapped(x, None, plan=plan)
    flipped = x.clone()
    flipped[0, 2:8] = x[0, 2:8].flip(0)
    want, want_state = block(flipped)
    want = want.clone()
    want[0, 2:8] = want[0, 2:8].flip(0).clone()
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(state.wkv, want_state.wkv)
    torch.testing.assert_close(wrapped(x)[0], block(x)[0])  # no plan: unchanged
