"""Fail loudly when code under test reads a tensor value on the host.

``.item()``, ``.tolist()`` and ``bool`` / ``int`` / ``float`` of a tensor are how Python code pulls a
value off a device (a device-to-host sync on CUDA, a graph break under ``torch.compile``).
``forbid_host_reads`` replaces them on ``torch.Tensor`` for the duration of a ``with`` block, so a test
on CPU or ``meta`` tensors proves that a forward and backward never ask for one.
"""

from __future__ import annotations

import contextlib

import torch

READS = ("item", "tolist", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def forbid_host_reads():
    """Within the block, any of ``READS`` on a tensor raises ``AssertionError`` naming the method."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def forbidden(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}() read a value on the host (shape {tuple(self.shape)})")

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, forbidden(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
