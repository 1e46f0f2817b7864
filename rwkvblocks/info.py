"""``python -m rwkvblocks.info``: versions, devices, and every op x backend with its status.

For each op (WKV6/5, WKV7, causal attention, weighted cross entropy) it prints the ``torch.library`` ops it is
registered as, and for each backend whether it is available on this machine and, for a few
representative inputs, whether it accepts them (or the reasons it does not), plus the backend that
automatic selection picks.
"""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from .ops import Dispatcher, WKVInputs, wkv_dispatcher

__all__ = ["main", "report"]

_PACKAGES = ("torch", "triton", "timm", "open_clip_torch", "safetensors", "xformers", "rwkv")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[torch.device]:
    cuda = [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else []
    return [torch.device("cpu"), *cuda]


def _wkv_samples(inputs, decode_dtype: torch.dtype) -> dict:
    """Prefill/train and decode shapes for a WKV op; ``inputs(B, T, dtype, device, has_state, grad)`` builds
    the op's metadata record."""
    samples = {}
    for d in _devices():
        if d.type == "cpu":
            samples["cpu fp32 prefill B=1 T=4096 H=32 K=64"] = inputs(1, 4096, torch.float32, d, False, True)
        else:
            samples["cuda bf16 train B=8 T=2048 H=32 K=64"] = inputs(8, 2048, torch.bfloat16, d, False, True)
        name = "bf16" if decode_dtype == torch.bfloat16 else "fp32"
        samples[f"{d.type} {name} decode B=8 T=1 H=32 K=64"] = inputs(8, 1, decode_dtype, d, True, False)
    return samples


def _wkv6_inputs(B, T, dtype, device, has_state, grad) -> WKVInputs:
    return WKVInputs(B, T, 32, 64, 64, dtype, device, False, has_state, grad)


def _wkv7_inputs(B, T, dtype, device, has_state, grad):
    from .ops.wkv7 import WKV7Inputs

    return WKV7Inputs(B, T, 32, 64, 64, dtype, device, has_state, grad)


def _attention_samples() -> dict:
    from .ops.attention import AttentionInputs

    label = "{} bf16 B=8 H=32 T=2048 D=64"
    return {label.format(d.type): AttentionInputs(8, 32, 2048, 2048, 64, torch.bfloat16, d) for d in _devices()}


def _cross_entropy_samples() -> dict:
    from .ops.cross_entropy import CrossEntropyInputs

    label = "{} bf16 logits B=8 T=2048 V=65536"
    return {label.format(d.type): CrossEntropyInputs(8, 2048, 2047, 65536, torch.bfloat16, d) for d in _devices()}


def _op_report(
    title: str, op_names: tuple[str, ...], dispatcher: Dispatcher, samples: dict, note: str = ""
) -> list[str]:
    lines = [f"op {title}  (environment variable {dispatcher.env_var})"]
    lines.append("  registered: " + ", ".join(f"torch.ops.{name.replace('::', '.')}" for name in op_names) + note)
    for b in dispatcher.backends:
        status = b.availability()
        lines.append(f"  {b.name:<12} {'available' if status is None else 'UNAVAILABLE: ' + status}")
        if b.description:
            lines.append(f"  {'':<12} {b.description}")
        if status is None:
            for label, inputs in samples.items():
                reasons = b.reasons(inputs)
                verdict = "accepts" if not reasons else "refuses: " + "; ".join(reasons)
                lines.append(f"  {'':<12}   {label}: {verdict}")
    for label, inputs in samples.items():
        lines.append(f"  auto -> {dispatcher.select(inputs).name:<10} for {label}")
    lines.append("")
    return lines


def report() -> str:
    """The text that ``python -m rwkvblocks.info`` prints."""
    from . import __version__
    from .ops import attention, cross_entropy, wkv, wkv7_dispatcher
    from .ops.wkv7 import OP_NAMES as WKV7_OPS

    lines = [f"rwkvblocks {__version__}  (python {platform.python_version()}, {platform.machine()})"]
    lines.append("packages: " + ", ".join(f"{p} {_version(p)}" for p in _PACKAGES))
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines.append(f"devices: cpu ({torch.get_num_threads()} threads), cuda: {cuda}")
    lines.append(
        "every entry point below is one torch.library op (fake kernel and autograd included), its backend "
        "chosen inside from metadata; the Triton kernels register their own triton_ops on first use"
    )
    lines.append("")
    wkv_samples = _wkv_samples(_wkv6_inputs, torch.bfloat16)
    lines += _op_report("wkv6", wkv.OP_NAMES, wkv_dispatcher, wkv_samples)
    lines += _op_report("wkv5", wkv.OP_NAMES, wkv_dispatcher, wkv_samples, note=" (its static w as a broadcast view)")
    lines += _op_report("wkv7", WKV7_OPS, wkv7_dispatcher, _wkv_samples(_wkv7_inputs, torch.float32))
    lines += _op_report("causal_attention", attention.OP_NAMES, attention.attention_dispatcher, _attention_samples())
    ce = cross_entropy
    lines += _op_report("weighted_cross_entropy", ce.OP_NAMES, ce.cross_entropy_dispatcher, _cross_entropy_samples())
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    print(report(), end="")


if __name__ == "__main__":
    main()
