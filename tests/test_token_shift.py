"""TokenShift / DataDependentTokenShift against formulas written out per token (DESIGN.md §4)."""

from __future__ import annotations

import pytest
import torch

from rwkvblocks import DataDependentTokenShift, TokenShift, shift_tokens

B, T, C = 2, 7, 12


def _x(seed=0, t=T):
    return torch.randn(B, t, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _randomise(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 0.5)
    return module


def test_shift_tokens_uses_the_state_for_the_first_token():
    x = _x()
    state = torch.randn(B, C, dtype=torch.float64)
    prev = shift_tokens(x, state)
    torch.testing.assert_close(prev[:, 0], state)
    torch.testing.assert_close(prev[:, 1:], x[:, :-1])
    assert (shift_tokens(x, None)[:, 0] == 0).all()
    torch.testing.assert_close(shift_tokens(x[:, :1], state)[:, 0], state)


@pytest.mark.parametrize("form", ["maa", "lerp"])
def test_static_token_shift_formula(form):
    shift = _randomise(TokenShift(C, names=("k", "v", "r"), form=form, dtype=torch.float64))
    x, state = _x(), torch.randn(B, C, dtype=torch.float64)
    (xk, xv, xr), new_state = shift(x, state)
    for n, out in enumerate((xk, xv, xr)):
        mix = shift.mix[n]
        for t in range(T):
            prev = state if t == 0 else x[:, t - 1]
            if form == "maa":
                want = x[:, t] + (prev - x[:, t]) * mix
            else:
                want = x[:, t] * mix + prev * (1 - mix)
            torch.testing.assert_close(out[:, t], want)
    torch.testing.assert_close(new_state, x[:, -1])


def test_data_dependent_token_shift_formula():
    rank = 3
    names = ("w", "k", "v", "r", "g")
    shift = _randomise(DataDependentTokenShift(C, names=names, rank=rank, dtype=torch.float64))
    x, state = _x(), torch.randn(B, C, dtype=torch.float64)
    outs, new_state = shift(x, state)
    for b in range(B):
        for t in range(T):
            xt = x[b, t]
            xx = (state[b] if t == 0 else x[b, t - 1]) - xt
            hidden = torch.tanh((xt + xx * shift.mix_x) @ shift.lora_a)  # [5 * rank], grouped w,k,v,r,g
            for n in range(5):
                m = hidden[n * rank : (n + 1) * rank] @ shift.lora_b[n]
                torch.testing.assert_close(outs[n][b, t], xt + xx * (shift.mix[n] + m))
    torch.testing.assert_close(new_state, x[:, -1])


@pytest.mark.parametrize("make", [lambda: TokenShift(C, names=("k", "r")), lambda: DataDependentTokenShift(C, rank=4)])
def test_split_sequence_equals_whole(make):
    shift = _randomise(make().double())
    x = _x(t=11)
    whole, end = shift(x)
    first, mid = shift(x[:, :4])
    second, end2 = shift(x[:, 4:], mid)
    for w, a, b in zip(whole, first, second):
        torch.testing.assert_close(torch.cat([a, b], 1), w)
    torch.testing.assert_close(end2, end)


def test_state_is_a_copy_not_a_view():
    x = _x()
    _, state = TokenShift(C, names=("k",)).double()(x)
    assert state.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


def test_bad_arguments_name_the_problem():
    shift = TokenShift(C, names=("k", "r"))
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 12\]"):
        shift(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"state must have shape \[B, C\] = \[2, 12\]"):
        shift(torch.randn(2, 3, C), torch.randn(3, C))
    with pytest.raises(ValueError, match="distinct"):
        TokenShift(C, names=("k", "k"))
    with pytest.raises(ValueError, match="form"):
        TokenShift(C, names=("k",), form="mean")  # type: ignore[arg-type]
