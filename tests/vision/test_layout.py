"""Token layout and grid pooling: counts, positions and values against explicit loops."""

from __future__ import annotations

import pytest
import torch

from rwkvblocks.vision import TokenLayout, pool_patches

# upstream's token-count ablation (paper Table 9): pooled side -> tokens with CLS
TABLE9 = {24: 577, 12: 145, 8: 65, 6: 37, 4: 17, 3: 10, 2: 5}


def _pool_loop(patches, grid, size):
    """Mean of each kernel block, written out with explicit loops."""
    (h, w), (gh, gw) = grid, size
    kh, kw = h // gh, w // gw
    x = patches.reshape(patches.shape[0], h, w, -1)
    out = torch.empty(patches.shape[0], gh * gw, patches.shape[-1], dtype=patches.dtype)
    for i in range(gh):
        for j in range(gw):
            out[:, i * gw + j] = x[:, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].mean(dim=(1, 2))
    return out


@pytest.mark.parametrize(
    ("grid", "size"), [((24, 24), (12, 12)), ((24, 24), (3, 3)), ((6, 4), (3, 2)), ((5, 5), (1, 1))]
)
def test_pool_patches_matches_block_means(grid, size):
    torch.manual_seed(0)
    patches = torch.randn(2, grid[0] * grid[1], 5, dtype=torch.float64)
    torch.testing.assert_close(pool_patches(patches, grid, size), _pool_loop(patches, grid, size))


@pytest.mark.parametrize(("g", "expected"), sorted(TABLE9.items()))
def test_table9_token_counts_with_cls(g, expected):
    layout = TokenLayout(prefix="last", pool=g)
    prefix, patches = torch.randn(1, 1, 8), torch.randn(1, 576, 8)
    out = layout(prefix, patches, (24, 24))
    assert out.shape == (1, expected, 8)
    assert layout.num_tokens(1, (24, 24)) == expected
    torch.testing.assert_close(out[:, -1:], prefix)  # CLS last


def test_cls_only_is_one_token():
    layout = TokenLayout(prefix="first", keep_patches=False)
    prefix = torch.randn(3, 1, 8)
    out = layout(prefix, torch.randn(3, 576, 8), (24, 24))
    assert out.shape == (3, 1, 8) and layout.num_tokens(1, (24, 24)) == 1
    torch.testing.assert_close(out, prefix)


@pytest.mark.parametrize("position", ["first", "last", "none"])
def test_prefix_position_and_spans(position):
    torch.manual_seed(0)
    prefix, patches = torch.randn(2, 3, 4), torch.randn(2, 16, 4)
    layout = TokenLayout(prefix=position, pool=2)
    out = layout(prefix, patches, (4, 4))
    prefix_span, patch_span = layout.spans(3, (4, 4))
    expected_prefix = {"first": slice(0, 3), "last": slice(4, 7), "none": slice(0, 0)}[position]
    assert prefix_span == expected_prefix
    assert out.shape[1] == (4 if position == "none" else 7)
    torch.testing.assert_close(out[:, patch_span], _pool_loop(patches, (4, 4), (2, 2)))
    if position != "none":
        torch.testing.assert_close(out[:, prefix_span], prefix)


def test_bad_layouts_raise():
    with pytest.raises(ValueError, match="'middle'"):
        TokenLayout(prefix="middle")
    with pytest.raises(ValueError, match="0"):
        TokenLayout(pool=0)
    with pytest.raises(ValueError, match="no tokens"):
        TokenLayout(prefix="none", keep_patches=False)
    with pytest.raises(ValueError, match="keep_patches=False"):
        TokenLayout(pool=2, keep_patches=False)
    with pytest.raises(ValueError, match="5x5 must evenly divide the patch grid 24x24"):
        TokenLayout(pool=5).num_tokens(1, (24, 24))
    with pytest.raises(ValueError, match="keeps no tokens"):
        TokenLayout(keep_patches=False).num_tokens(0, (7, 7))
    with pytest.raises(ValueError, match=r"\[B, 16, D\]"):
        pool_patches(torch.randn(1, 15, 4), (4, 4), 2)
