"""BlinkDL's RWKV-5/6/7 ``.pth`` checkpoints, both ways: ``load_blinkdl`` / ``save_blinkdl``.

A BlinkDL checkpoint is a flat dict of tensors (DESIGN.md §5, §15). Everything about the model — version
(x052 / x060 / x070), vocabulary, width, layers, heads and head size, FFN width, LoRA ranks — is read from
tensor shapes, so any released size loads without a configuration file.

x070 files: ``blocks.0.att.v0/v1/v2`` (a value-residual LoRA that layer 0 never uses) may be present or
absent; they are dropped on loading and not written on saving, as the ``rwkv`` package ignores them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rwkvblocks import DataDependentTokenShift, RWKVBlock, RWKVLanguageModel, TimeMix7
from rwkvblocks.errors import CheckpointError

from ..._io import atomic_file
from ..rwkv_lm import RWKVConfig, build_rwkv_lm
from ._common import block_differences, check_blocks, raise_key_problems, read_checkpoint

__all__ = [
    "blinkdl_to_state_dict",
    "infer_rwkv_config",
    "load_blinkdl",
    "read_blinkdl",
    "rwkv_config_of",
    "save_blinkdl",
    "state_dict_to_blinkdl",
]

# --------------------------------------------------------------------------------------------
# BlinkDL <-> rwkvblocks key layout


@dataclass(frozen=True)
class _Entry:
    ours: str
    theirs: tuple[str, ...]  # several: stacked along dim 0 on our side
    their_shape: tuple[int, ...]  # of each
    our_shape: tuple[int, ...]


def _layout(config: RWKVConfig) -> list[_Entry]:
    C, H, K, F, V = config.dim, config.num_heads, config.head_dim, config.ffn_dim, config.vocab_size

    def same(key: str, shape: tuple[int, ...]) -> _Entry:
        return _Entry(key, (key,), shape, shape)

    def stacked(ours: str, theirs: list[str]) -> _Entry:
        return _Entry(ours, tuple(theirs), (1, 1, C), (len(theirs), C))

    def vector(ours: str, theirs: str) -> _Entry:
        return _Entry(ours, (theirs,), (1, 1, C), (C,))

    entries = [same("emb.weight", (V, C))]
    for i in range(config.num_layers):
        p = f"blocks.{i}."
        if i == 0:
            entries += [same(p + "ln0.weight", (C,)), same(p + "ln0.bias", (C,))]
        for ln in ("ln1", "ln2"):
            entries += [same(f"{p}{ln}.weight", (C,)), same(f"{p}{ln}.bias", (C,))]
        a, f = p + "att.", p + "ffn."
        if config.version == "x070":
            entries += _layout_x070(config, i, same, stacked, vector)
            continue
        if config.version == "x060":
            Dm, Dd = config.mix_rank, config.decay_rank
            entries += [
                _Entry(a + "token_shift.mix_x", (a + "time_maa_x",), (1, 1, C), (C,)),
                stacked(a + "token_shift.mix", [a + f"time_maa_{n}" for n in "wkvrg"]),
                same(a + "time_maa_w1", (C, 5 * Dm)),
                same(a + "time_maa_w2", (5, Dm, C)),
                _Entry(a + "decay.time_decay", (a + "time_decay",), (1, 1, C), (C,)),
                same(a + "time_decay_w1", (C, Dd)),
                same(a + "time_decay_w2", (Dd, C)),
                stacked(f + "token_shift.mix", [f + f"time_maa_{n}" for n in "kr"]),
            ]
        else:
            entries += [
                stacked(a + "token_shift.mix", [a + f"time_mix_{n}" for n in "kvrg"]),
                _Entry(a + "decay.time_decay", (a + "time_decay",), (H, K), (H, K)),
                stacked(f + "token_shift.mix", [f + f"time_mix_{n}" for n in "kr"]),
            ]
        entries += [same(a + "time_faaaa", (H, K))]
        entries += [same(a + f"{n}.weight", (C, C)) for n in ("receptance", "key", "value", "gate", "output")]
        entries += [same(a + "ln_x.weight", (C,)), same(a + "ln_x.bias", (C,))]
        entries += [same(f + "key.weight", (F, C)), same(f + "receptance.weight", (C, C))]
        entries += [same(f + "value.weight", (C, F))]
    entries += [same("ln_out.weight", (C,)), same("ln_out.bias", (C,)), same("head.weight", (V, C))]
    return entries


def _layout_x070(config: RWKVConfig, i: int, same, stacked, vector) -> list[_Entry]:
    C, H, K, F = config.dim, config.num_heads, config.head_dim, config.ffn_dim
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    loras = [("w", config.decay_rank), ("a", config.a_rank)]
    loras += [("v", config.value_rank)] if i > 0 else []  # layer 0's are unused: _IGNORED_X070
    entries = [stacked(a + "token_shift.mix", [a + f"x_{n}" for n in "rwkvag"])]
    for name, rank in loras:
        entries += [
            vector(a + f"{name}0", a + f"{name}0"),
            same(a + f"{name}1", (C, rank)),
            same(a + f"{name}2", (rank, C)),
        ]
    entries += [same(a + "g1", (C, config.gate_rank)), same(a + "g2", (config.gate_rank, C))]
    entries += [vector(a + "k_k", a + "k_k"), vector(a + "k_a", a + "k_a"), same(a + "r_k", (H, K))]
    entries += [same(a + f"{n}.weight", (C, C)) for n in ("receptance", "key", "value", "output")]
    entries += [same(a + "ln_x.weight", (C,)), same(a + "ln_x.bias", (C,))]
    entries += [stacked(f + "token_shift.mix", [f + "x_k"])]
    entries += [same(f + "key.weight", (F, C)), same(f + "value.weight", (C, F))]
    return entries


_IGNORED_X070 = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")  # accepted and dropped

# Our module names for the x060 LoRA matrices (BlinkDL keeps them on the attention module).
_RENAMES = {
    "time_maa_w1": "token_shift.lora_a",
    "time_maa_w2": "token_shift.lora_b",
    "time_decay_w1": "decay.lora_a",
    "time_decay_w2": "decay.lora_b",
}


def _our_key(key: str) -> str:
    head, _, last = key.rpartition(".")
    return f"{head}.{_RENAMES[last]}" if last in _RENAMES else key


def _shape(sd: Mapping[str, Tensor], key: str, ndim: int | None = None) -> tuple[int, ...] | None:
    t = sd.get(key)
    if not isinstance(t, Tensor) or (ndim is not None and t.dim() != ndim):
        return None
    return tuple(t.shape)


def _layer0_only(i: int, name: str) -> bool:
    """Keys that only layer 0 has (``ln0``), or that it may lack (x070's unused value-residual LoRA)."""
    return i == 0 and (name.startswith("ln0.") or name in ("att.v0", "att.v1", "att.v2"))


def infer_rwkv_config(state_dict: Mapping[str, Tensor], *, source: str | os.PathLike = "<state dict>") -> RWKVConfig:
    """Read an ``RWKVConfig`` from the tensor shapes of a BlinkDL state dict.

    ``source`` names the file in messages.

    Raises:
        CheckpointError: (a ``ValueError``) block indices with a gap (0, 1, 3), or a tensor needed to infer the
            shape missing or of the wrong rank; the message names them. (Missing, unexpected or mis-shaped
            tensors elsewhere, and blocks that do not all carry the same keys, are reported together by
            ``blinkdl_to_state_dict``.)
    """
    check_blocks(state_dict, source)
    if "blocks.0.att.r_k" in state_dict:
        return _infer_x070(state_dict, source)
    need = {
        "emb.weight": 2,
        "blocks.0.att.time_faaaa": 2,
        "blocks.0.ffn.key.weight": 2,
    }
    problems = [f"{k} (expected a {n}-D tensor)" for k, n in need.items() if _shape(state_dict, k, n) is None]
    if problems:
        raise CheckpointError(
            source, "not an RWKV-5/6/7 checkpoint in BlinkDL format; missing or malformed: " + ", ".join(problems)
        )
    V, C = _shape(state_dict, "emb.weight")
    H, K = _shape(state_dict, "blocks.0.att.time_faaaa")
    F = _shape(state_dict, "blocks.0.ffn.key.weight")[0]
    layers = _layer_indices(state_dict)
    if "blocks.0.att.time_maa_x" in state_dict:
        w1 = _shape(state_dict, "blocks.0.att.time_maa_w1", 2)
        d1 = _shape(state_dict, "blocks.0.att.time_decay_w1", 2)
        missing = [k for k, s in (("time_maa_w1", w1), ("time_decay_w1", d1)) if s is None]
        if missing:
            raise CheckpointError(
                source, f"x060 checkpoint: missing or malformed blocks.0.att.{', blocks.0.att.'.join(missing)}"
            )
        if w1[1] % 5:
            raise CheckpointError(source, f"blocks.0.att.time_maa_w1 must be [C, 5*Dm], got {list(w1)}")
        return RWKVConfig("x060", V, C, max(layers) + 1, K, F, w1[1] // 5, d1[1])
    if "blocks.0.att.time_mix_k" in state_dict:
        return RWKVConfig("x052", V, C, max(layers) + 1, K, F)
    raise CheckpointError(
        source,
        "cannot tell the RWKV version: none of blocks.0.att.r_k (x070), blocks.0.att.time_maa_x (x060) and "
        "blocks.0.att.time_mix_k (x052) is present",
    )


def _layer_indices(state_dict: Mapping[str, Tensor]) -> set[int]:
    return {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}


def _infer_x070(state_dict: Mapping[str, Tensor], source: str | os.PathLike) -> RWKVConfig:
    """x070: heads and head size from ``r_k``, every LoRA rank from its matrix (never from a formula)."""
    need = ["emb.weight", "blocks.0.att.r_k", "blocks.0.ffn.key.weight"]
    need += [f"blocks.0.att.{n}1" for n in "wag"]
    problems = [f"{k} (expected a 2-D tensor)" for k in need if _shape(state_dict, k, 2) is None]
    if problems:
        raise CheckpointError(
            source, "x070 checkpoint (it has blocks.0.att.r_k): missing or malformed: " + ", ".join(problems)
        )
    V, C = _shape(state_dict, "emb.weight")
    H, K = _shape(state_dict, "blocks.0.att.r_k")
    F = _shape(state_dict, "blocks.0.ffn.key.weight")[0]
    indices = _layer_indices(state_dict)
    layers = max(indices) + 1
    value_ranks = [  # from the first value LoRA matrix found, layer 0's (unused) last
        shape[axis]
        for i in sorted(indices, key=lambda i: (i == 0, i))
        for key, axis in (("v1", 1), ("v2", 0))
        if (shape := _shape(state_dict, f"blocks.{i}.att.{key}", 2))
    ]
    value_rank = value_ranks[0] if value_ranks else RWKVConfig.value_rank  # one layer: no value residual
    return RWKVConfig(
        "x070",
        V,
        C,
        layers,
        K,
        F,
        decay_rank=_shape(state_dict, "blocks.0.att.w1")[1],
        a_rank=_shape(state_dict, "blocks.0.att.a1")[1],
        value_rank=value_rank,
        gate_rank=_shape(state_dict, "blocks.0.att.g1")[1],
    )


def _describe_entry(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def blinkdl_to_state_dict(
    state_dict: Mapping[str, Tensor], config: RWKVConfig, *, source: str | os.PathLike = "<state dict>"
) -> dict[str, Tensor]:
    """Rename and reshape a BlinkDL state dict into ``RWKVLanguageModel`` keys (no copies of data).

    Raises:
        CheckpointError: (a ``ValueError``, of ``source``) block indices with a gap, or naming every missing,
            unexpected and mis-shaped key at once, and the keys some blocks carry and others lack (layer 0's
            ``ln0`` and x070's ``att.v0/v1/v2`` aside).
    """
    check_blocks(state_dict, source)
    layout = _layout(config)
    expected = {key: entry.their_shape for entry in layout for key in entry.theirs}
    ignored = _IGNORED_X070 if config.version == "x070" else ()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and k not in ignored)
    misshaped = sorted(
        f"{k}: expected {list(s)}, got {_describe_entry(state_dict[k])}"
        for k, s in expected.items()
        if k in state_dict and (not isinstance(state_dict[k], Tensor) or tuple(state_dict[k].shape) != s)
    )
    raise_key_problems(
        f"checkpoint does not match an RWKV {config.version} model ({config.describe()})",
        missing,
        unexpected,
        misshaped,
        path=source,
        blocks=block_differences(state_dict, optional=_layer0_only),
    )
    out = {}
    for entry in layout:
        parts = [state_dict[k] for k in entry.theirs]
        t = torch.cat([p.reshape(1, -1) for p in parts]) if len(parts) > 1 else parts[0]
        out[_our_key(entry.ours)] = t.reshape(entry.our_shape)
    return out


def state_dict_to_blinkdl(state_dict: Mapping[str, Tensor], config: RWKVConfig) -> dict[str, Tensor]:
    """The inverse of ``blinkdl_to_state_dict``: our keys to BlinkDL's names and shapes."""
    out = {}
    for entry in _layout(config):
        t = state_dict[_our_key(entry.ours)]
        parts = t.unbind(0) if len(entry.theirs) > 1 else (t,)
        for key, part in zip(entry.theirs, parts):
            out[key] = part.reshape(entry.their_shape)
    return out


def rwkv_config_of(model: RWKVLanguageModel) -> RWKVConfig:
    """The ``RWKVConfig`` of a model made by ``build_rwkv_lm`` / ``load_blinkdl``.

    Raises:
        ValueError: the stack is not a plain x052 / x060 / x070 RWKV stack (a mixed stack has no BlinkDL form).
    """
    others = sorted({type(b).__name__ for b in model.blocks if not isinstance(b, RWKVBlock)})
    if others:
        raise ValueError(f"only a stack of RWKVBlock has a BlinkDL checkpoint form; this one also has {others}")
    att, ffn = model.blocks[0].att, model.blocks[0].ffn
    if isinstance(att, TimeMix7):
        value_att = model.blocks[1].att if len(model.blocks) > 1 else att
        return RWKVConfig(
            "x070",
            model.vocab_size,
            model.dim,
            len(model.blocks),
            att.head_dim,
            ffn.hidden_dim,
            decay_rank=att.decay_rank,
            a_rank=att.a_rank,
            value_rank=value_att.value_rank,
            gate_rank=att.gate_rank,
        )
    if isinstance(att.token_shift, DataDependentTokenShift):
        return RWKVConfig(
            "x060",
            model.vocab_size,
            model.dim,
            len(model.blocks),
            att.head_dim,
            ffn.hidden_dim,
            att.token_shift.rank,
            att.decay.rank,
        )
    return RWKVConfig("x052", model.vocab_size, model.dim, len(model.blocks), att.head_dim, ffn.hidden_dim)


def read_blinkdl(path: str | os.PathLike) -> tuple[RWKVConfig, dict[str, Tensor]]:
    """A BlinkDL ``.pth`` as its inferred ``RWKVConfig`` and a state dict in our key names."""
    sd = read_checkpoint(path)
    config = infer_rwkv_config(sd, source=path)
    return config, blinkdl_to_state_dict(sd, config, source=path)


def load_blinkdl(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> RWKVLanguageModel:
    """Load a BlinkDL RWKV-5 (x052), RWKV-6 (x060) or RWKV-7 (x070) ``.pth`` checkpoint.

    The configuration is inferred from tensor shapes; the file is read with
    ``torch.load(weights_only=True)`` (memory-mapped when possible).

    Args:
        path: The ``.pth`` file.
        device: Where the model goes (default CPU).
        dtype: Parameter dtype; ``None`` keeps the checkpoint's (that of ``emb.weight``).

    Returns:
        An ``RWKVLanguageModel`` in eval mode; call it as ``model(tokens, state) -> (logits, state)``.
        On the CPU its matrices use the decode layout (``RWKVLanguageModel.use_decode_layout_``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) the file is empty, truncated, corrupt, not a ``torch.save`` file or
            not a tensor dict, holds pickled code, has blocks with a gap or with different keys, or its
            keys/shapes do not form an RWKV model (every missing, unexpected and mis-shaped key is named).
    """
    config, ours = read_blinkdl(path)
    dtype = dtype or ours["emb.weight"].dtype
    with torch.device("meta"):
        model = build_rwkv_lm(config, dtype=dtype)
    target = torch.device(device) if device is not None else torch.device("cpu")
    model.load_state_dict({k: v.to(device=target, dtype=dtype) for k, v in ours.items()}, assign=True)
    if target.type == "cpu":
        model.use_decode_layout_()
    return model.eval()


def save_blinkdl(model: RWKVLanguageModel, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write ``model`` as a BlinkDL ``.pth`` (readable by ``load_blinkdl`` and the ``rwkv`` package).

    The file is written to a temporary name beside ``path`` and renamed into place, so a crash
    never leaves a truncated checkpoint. ``dtype=None`` keeps the parameter dtype.
    """
    path = Path(path)
    config = rwkv_config_of(model)
    theirs = state_dict_to_blinkdl(model.state_dict(), config)
    theirs = {k: v.detach().to(device="cpu", dtype=dtype or v.dtype).contiguous() for k, v in theirs.items()}
    with atomic_file(path) as f:
        torch.save(theirs, f)
