"""Run under ``torchrun --nproc-per-node 2`` (gloo, CPU) by ``test_invariants.py``: synced == single process.

For every metric of ``cases.CASES``: rank 0 takes the first third of the rows and rank 1 the rest, each in two
updates; then only rank 0 updates, with every row (the other rank syncs empty states). Both synced results must
equal what one process gets from all rows. Exits 1 and prints the differences when one does not.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch.distributed as dist  # noqa: E402

from tests.metrics.cases import CASES, take  # noqa: E402


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def main() -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    failures = []
    for name, (cls, inputs) in CASES.items():
        n = len(inputs["predictions"])
        single = cls(sync_on_compute=False)
        single.update(**inputs)
        expected = single.compute()

        rows = list(range(n // 3)) if rank == 0 else list(range(n // 3, n))
        split = cls()
        split.update(**take(inputs, rows[: len(rows) // 2]))
        split.update(**take(inputs, rows[len(rows) // 2 :]))
        got = split.compute()
        if not _same(got, expected):
            failures.append(f"{name} split across ranks: {got} != {expected}")

        lopsided = cls()
        if rank == 0:
            lopsided.update(**inputs)
        got = lopsided.compute()
        if not _same(got, expected):
            failures.append(f"{name} with an idle rank: {got} != {expected}")
    dist.destroy_process_group()
    print(f"rank {rank}: " + ("OK" if not failures else "\n".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
