"""Projectors: upstream's bias-free linear map and a configurable MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rwkvblocks.vision import LinearProjector, MLPProjector


def test_linear_projector_is_upstream_proj():
    proj = LinearProjector(1024, 2048, dtype=torch.float64)
    assert proj.bias is None
    assert [(n, tuple(p.shape)) for n, p in proj.named_parameters()] == [("weight", (2048, 1024))]
    x = torch.randn(2, 577, 1024, dtype=torch.float64)
    torch.testing.assert_close(proj(x), x @ proj.weight.T)


def test_mlp_projector_depth_and_activation():
    torch.manual_seed(0)
    mlp = MLPProjector(16, 8, depth=3, hidden_dim=12, activation=nn.ReLU)
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 12), (12, 12), (12, 8)]
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(2, 5, 16)
    expected = x
    for i, m in enumerate(linears):
        expected = expected @ m.weight.T + m.bias
        if i < 2:
            expected = expected.clamp_min(0)
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_projector_default_is_llava_mlp2x_gelu():
    mlp = MLPProjector(1024, 2048)
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert sorted(mlp.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert MLPProjector(4, 6, depth=1)[0].weight.shape == (6, 4)


def test_projector_arguments_are_checked():
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"):
        MLPProjector(4, 4, depth=0)
    with pytest.raises(ValueError, match="got 0 and 4"):
        LinearProjector(0, 4)
