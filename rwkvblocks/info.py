"""``python -m rwkvblocks.info``: versions, devices, and every op x backend with its status.

For each op (WKV, causal attention) and backend it prints whether the backend is available on this machine and, for a
few representative inputs, whether it accepts them (or the reasons it does not), plus the
backend that automatic selection picks.
"""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from .ops import WKVInputs, wkv_dispatcher

_PACKAGES = ("torch", "triton", "timm", "open_clip_torch", "safetensors", "xformers", "rwkv")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _sample_inputs() -> dict[str, WKVInputs]:
    cpu = torch.device("cpu")
    samples = {
        "cpu fp32 prefill B=1 T=4096 H=32 K=64": WKVInputs(1, 4096, 32, 64, 64, torch.float32, cpu, False, False, True),
        "cpu bf16 decode B=8 T=1 H=32 K=64": WKVInputs(8, 1, 32, 64, 64, torch.bfloat16, cpu, False, True, False),
    }
    if torch.cuda.is_available():
        cuda = torch.device("cuda", torch.cuda.current_device())
        samples["cuda bf16 train B=8 T=2048 H=32 K=64"] = WKVInputs(8, 2048, 32, 64, 64, torch.bfloat16, cuda, False, False, True)
        samples["cuda bf16 decode B=8 T=1 H=32 K=64"] = WKVInputs(8, 1, 32, 64, 64, torch.bfloat16, cuda, False, True, False)
    return samples


def report() -> str:
    """The text that ``python -m rwkvblocks.info`` prints."""
    from . import __version__

    lines = [f"rwkvblocks {__version__}  (python {platform.python_version()}, {platform.machine()})"]
    lines.append("packages: " + ", ".join(f"{p} {_version(p)}" for p in _PACKAGES))
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines.append(f"devices: cpu ({torch.get_num_threads()} threads), cuda: {cuda}")
    lines.append("")
    samples = _sample_inputs()
    for op in ("wkv6", "wkv5"):
        lines.append(f"op {op}  (environment variable {wkv_dispatcher.env_var})")
        for b in wkv_dispatcher.backends:
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
            lines.append(f"  auto -> {wkv_dispatcher.select(inputs).name:<10} for {label}")
        lines.append("")
    lines += _attention_report()
    return "\n".join(lines).rstrip() + "\n"


def _attention_report() -> list[str]:
    from .ops.attention import AttentionInputs, attention_dispatcher

    lines = [f"op causal_attention  (environment variable {attention_dispatcher.env_var})"]
    devices = [torch.device("cpu")] + ([torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else [])
    samples = {f"{d.type} bf16 B=8 H=32 T=2048 D=64": AttentionInputs(8, 32, 2048, 2048, 64, torch.bfloat16, d) for d in devices}
    for b in attention_dispatcher.backends:
        status = b.availability()
        lines.append(f"  {b.name:<12} {'available' if status is None else 'UNAVAILABLE: ' + status}")
        if b.description:
            lines.append(f"  {'':<12} {b.description}")
        if status is None:
            for label, inputs in samples.items():
                reasons = b.reasons(inputs)
                lines.append(f"  {'':<12}   {label}: {'accepts' if not reasons else 'refuses: ' + '; '.join(reasons)}")
    for label, inputs in samples.items():
        lines.append(f"  auto -> {attention_dispatcher.select(inputs).name:<10} for {label}")
    return lines


def main() -> None:
    print(report(), end="")


if __name__ == "__main__":
    main()
