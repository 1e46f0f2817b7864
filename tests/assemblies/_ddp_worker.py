"""Launched by ``test_train_distributed.py`` under torchrun: train the tiny VisualRWKV with a strategy, write results.

``python -m torch.distributed.run --nproc-per-node 2 _ddp_worker.py STRATEGY DATA_DIR OUT_DIR``: an uninterrupted
run, then one stopped after step 2 and resumed; rank 0 writes ``OUT_DIR/result.json`` (both runs' losses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for ``tests``

from assemblies.training import train  # noqa: E402
from tests.assemblies.test_train_distributed import PLAN, STEPS, setup  # noqa: E402


def main() -> None:
    strategy, data_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    model, batches = setup(data_dir)
    full = train(model, batches, PLAN, steps=STEPS, progress=False, strategy=strategy, checkpoint_dir=out / "full")
    model, batches = setup(data_dir)
    ckpts = out / "ckpt"
    first = train(model, batches, PLAN, steps=STEPS, stop_at=2, progress=False, strategy=strategy, checkpoint_dir=ckpts)
    torch.manual_seed(123 + dist.get_rank())  # the resumed run restores the checkpoint's RNG states
    model, batches = setup(data_dir)
    rest = train(
        model, batches, PLAN, steps=STEPS, progress=False, strategy=strategy, checkpoint_dir=ckpts, resume=True
    )
    if dist.get_rank() == 0:
        result = {"world_size": dist.get_world_size(), "full": full, "first": first, "resumed": rest}
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
