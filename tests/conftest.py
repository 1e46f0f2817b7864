"""Run the Triton WKV kernels through the Triton interpreter when no CUDA device is present.

Why here, at the root of the tests: ``triton.jit`` picks compiler or interpreter when a function is
*decorated*. rwkvblocks decorates its kernels lazily, on their first call, but Triton decorates its own
library functions (``tl.sigmoid``, ``tl.cdiv``, ...) when ``triton`` is imported, and some test modules import
packages that import it (transformers, lmms-eval) while they are collected. This conftest is imported before
anything is collected, so the variable is set before any import of ``triton``; subprocesses that the tests
start inherit it. With a CUDA device the variable is left alone and the kernels compile.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
