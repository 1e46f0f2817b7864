"""The CPU's name for benchmark table titles (``model name`` from ``/proc/cpuinfo``)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name
