"""A tiny preset trains for a few dozen steps on a generated LLaVA dataset on the CPU: the loss falls; stage 2
changes the projector and the language model but never the embedding or the frozen encoder; stage 1 changes only
the projector.

Stage 2 runs first here because a from-scratch RWKV (BlinkDL's init zeroes every block's output projection)
passes nothing from one position to another, so image features reach no supervised position and stage 1 alone
would have no gradient; the demo warms its language model up for the same reason.
"""

from __future__ import annotations

import torch

from assemblies import create_assembly
from assemblies.demo import write_dataset
from assemblies.training import data_loader, make_dataset, recipe, train


def _run(model, tmp_path, stage, json_file, steps):
    plan = recipe(stage, batch_size=4, micro_batch_size=4, lr_init=3e-3, lr_final=1e-3)
    data = plan.data_for(model.data_config)
    dataset = make_dataset(
        data, json_file, tmp_path / "images", image_transform=model.encoder.transform.per_image, vocab_size=257
    )
    loader = data_loader(dataset, data, image_tokens=model.image_tokens, batch_size=4, shuffle=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, loader, plan, steps=steps, progress=False)
    after = model.state_dict()
    return losses, {k for k in before if not torch.equal(before[k], after[k])}


def test_loss_falls_and_each_stage_trains_only_its_parameters(tmp_path):
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_tiny")
    align, instruct, _ = write_dataset(tmp_path, 32, seed=3)
    losses, changed = _run(model, tmp_path, "instruction", instruct, 24)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert "proj.weight" in changed and any(k.startswith("lm.blocks.") for k in changed)
    assert not any(k.startswith(("lm.emb.", "encoder.")) for k in changed), sorted(changed)
    losses, changed = _run(model, tmp_path, "alignment", align, 12)
    assert changed == {"proj.weight"}, sorted(changed)
    assert all(torch.isfinite(torch.tensor(losses)))
