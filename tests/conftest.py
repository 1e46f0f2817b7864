"""Run the Triton WKV kernels through the Triton interpreter when no CUDA device is present.

Why here: ``triton.jit`` picks compiler or interpreter when a kernel is *decorated*, and
rwkvblocks decorates its kernels lazily, on their first call. Setting ``TRITON_INTERPRET=1``
while this conftest is imported (collection time, before any test runs) therefore holds even
if another module imported ``triton`` earlier in the process, and subprocesses that the tests
start inherit it. With a CUDA device the variable is left alone and the kernels compile.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
