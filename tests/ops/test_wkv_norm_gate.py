"""The fused GroupNorm-and-gate epilogue: the Triton kernels (under the interpreter without a GPU) against an
fp64 evaluation of the PyTorch composition, values and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from rwkvblocks.ops.wkv.norm_gate import norm_gate_reference, wkv6_norm_gate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, T, H, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, T, H, K, generator=g) * 3 + 0.5  # an offset and scale the norm must remove
    gate = torch.randn(B, T, H * K, generator=g) * 2
    weight, bias = torch.randn(H * K, generator=g), torch.randn(H * K, generator=g)
    return [t.to(DEVICE, dtype) for t in (y, gate)] + [t.to(DEVICE) for t in (weight, bias)]


def _rel_rms(got, want):
    return ((got.double() - want.double()).pow(2).mean().sqrt() / want.double().pow(2).mean().sqrt()).item()


def _grads(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("B", "T", "H", "K", "dtype", "tol"),
    [
        (1, 1, 1, 16, torch.float32, 1e-5),
        (2, 17, 3, 16, torch.float32, 1e-5),
        (1, 33, 2, 64, torch.float32, 1e-5),
        (1, 20, 2, 64, torch.bfloat16, 5e-3),
        pytest.param(2, 512, 8, 64, torch.bfloat16, 5e-3, marks=pytest.mark.skipif(DEVICE == "cpu", reason="GPU size")),
    ],
)
def test_triton_matches_fp64_reference(B, T, H, K, dtype, tol):
    inputs = _inputs(B, T, H, K, dtype)
    dout = torch.randn(B, T, H * K, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    eps = 64e-5
    out, grads = _grads(lambda y, g, w, b: wkv6_norm_gate(y, g, w, b, eps, backend="triton"), inputs, dout)
    want, want_grads = _grads(
        lambda y, g, w, b: norm_gate_reference(y, g, w, b, eps), [t.double() for t in inputs], dout.double()
    )
    assert out.dtype == dtype and out.shape == (B, T, H * K)
    assert _rel_rms(out, want) < tol
    for name, got, ref in zip(("dy", "dg", "dweight", "dbias"), grads, want_grads):
        assert got.dtype == inputs[("dy", "dg", "dweight", "dbias").index(name)].dtype
        assert _rel_rms(got, ref) < tol, name


def test_reference_is_timemix_epilogue():
    y, g, w, b = _inputs(2, 5, 2, 16, torch.float32)
    want = F.group_norm(y.reshape(10, 32), 2, w, b, 64e-5).view(2, 5, 32) * F.silu(g)
    torch.testing.assert_close(norm_gate_reference(y, g, w, b, 64e-5), want)
    torch.testing.assert_close(wkv6_norm_gate(y, g, w, b, 64e-5, backend="reference"), want)


def test_bad_input_is_named(monkeypatch):
    y, g, w, b = _inputs(1, 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match=r"y must be \[B, T, H, K\]"):
        wkv6_norm_gate(y[0], g, w, b)
    with pytest.raises(ValueError, match="g must have shape"):
        wkv6_norm_gate(y, g[..., :-1], w, b)
    with pytest.raises(ValueError, match="weight must have shape"):
        wkv6_norm_gate(y, g, w[:-1], b)
    with pytest.raises(ValueError, match="g's dtype"):
        wkv6_norm_gate(y, g.double(), w, b)
    with pytest.raises(ValueError, match="unknown backend"):
        wkv6_norm_gate(y, g, w, b, backend="cuda")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="needs a CUDA tensor"):
            wkv6_norm_gate(y, g, w, b, backend="triton")
        torch.testing.assert_close(wkv6_norm_gate(y, g, w, b), norm_gate_reference(y, g, w, b, 64e-5))  # auto
