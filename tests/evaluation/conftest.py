"""One intra-op thread for the evaluation tests: their tiny models run faster on one than on two, and a second
thread only spins when the machine is busy."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
