"""RWKV-7 (x070) weights between BlinkDL's ``.pth`` layout and fla's / Hugging Face's (``RWKV7ForCausalLM``).

flash-linear-attention's ``RWKV7ForCausalLM`` (``fla/models/rwkv7``) is what the Hugging Face RWKV-7
checkpoints (``fla-hub/rwkv7-*``, ``RWKV/RWKV7-Goose-*-HF``) hold. Its layer names, against BlinkDL's
(``i`` a layer, LoRA ``X`` one of ``w``, ``a``, ``v``, ``g``; "ᵀ" a transposed matrix):

| BlinkDL (``.pth``) | fla / HF | shape change |
| --- | --- | --- |
| ``emb.weight`` | ``model.embeddings.weight`` | |
| ``blocks.0.ln0.*`` | ``model.layers.0.pre_norm.*`` | |
| ``blocks.{i}.ln1.*`` / ``ln2.*`` | ``model.layers.{i}.attn_norm.*`` / ``ffn_norm.*`` | |
| ``blocks.{i}.att.x_{r,w,k,v,a,g}`` | ``model.layers.{i}.attn.x_{r,w,k,v,a,g}`` | ``[1, 1, C]`` both |
| ``att.X1`` ``[C, D]`` | ``attn.X_lora.lora.0.weight`` ``[D, C]`` | ᵀ |
| ``att.X2`` ``[D, C]`` | ``attn.X_lora.lora.2.weight`` ``[C, D]`` | ᵀ |
| ``att.{w,a,v}0`` ``[1, 1, C]`` | ``attn.{w,a,v}_lora.lora.2.bias`` ``[C]`` | squeezed (no ``g0``) |
| ``att.k_k``, ``att.k_a`` ``[1, 1, C]`` | ``attn.k_k``, ``attn.k_a`` ``[C]`` | squeezed |
| ``att.r_k`` ``[H, K]`` | ``attn.r_k`` ``[H, K]`` | |
| ``att.{receptance,key,value,output}.weight`` | ``attn.{r,k,v,o}_proj.weight`` | |
| ``att.ln_x.*`` | ``attn.g_norm.*`` | |
| ``ffn.x_k`` ``[1, 1, C]`` | ``model.layers.{i}.ffn.x_k`` ``[C]`` | squeezed |
| ``ffn.key.weight``, ``ffn.value.weight`` | ``ffn.key.weight``, ``ffn.value.weight`` | |
| ``ln_out.*`` | ``model.norm.*`` | |
| ``head.weight`` | ``lm_head.weight`` | |

Layer 0 has no ``v_lora`` in fla; BlinkDL files may carry an unused ``blocks.0.att.v0/v1/v2``, which
``blinkdl_to_fla`` drops (as fla's own converter, ``utils/convert_from_rwkv7.py``, does). The values
are copied exactly; the WKV state differs by a transpose (``rwkvblocks.ops.state_to_fla``). fla's model
config (``RWKV7Config``: ranks, head size, ``norm_eps``) is not part of this mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["blinkdl_to_fla", "fla_to_blinkdl"]

_TOP = {
    "emb.weight": "model.embeddings.weight",
    "ln_out.weight": "model.norm.weight",
    "ln_out.bias": "model.norm.bias",
    "head.weight": "lm_head.weight",
}
_PARTS = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
_LORA = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}  # BlinkDL's X0 / X1 / X2
_SQUEEZED = ("att.k_k", "att.k_a", "ffn.x_k")  # [1, 1, C] in BlinkDL's files, [C] in fla's
_VALID = {  # what may follow blocks.{i}.<part>.
    "att": r"x_[rwkvag]|[wav][012]|g[12]|k_k|k_a|r_k|(receptance|key|value|output)\.weight|ln_x\.(weight|bias)",
    "ffn": r"x_k|(key|value)\.weight",
    **dict.fromkeys(("ln0", "ln1", "ln2"), r"weight|bias"),
}
_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def _fla_key(key: str) -> tuple[str, bool, bool]:
    """fla's name of BlinkDL's ``key``, whether the tensor is transposed, whether it is squeezed to `[C]`."""
    if key in _TOP:
        return _TOP[key], False, False
    m = re.fullmatch(r"blocks\.(\d+)\.(att|ffn|ln0|ln1|ln2)\.(.+)", key)
    if m is None:
        raise ValueError(f"{key!r} is not a BlinkDL x070 key")
    layer, part, rest = m.groups()
    if not re.fullmatch(_VALID[part], rest):
        raise ValueError(f"{key!r} is not a BlinkDL x070 key")
    prefix = f"model.layers.{layer}.{_PARTS[part]}."
    lora = re.fullmatch(r"([wavg])([012])", rest) if part == "att" else None
    if lora is not None:
        name, num = lora.groups()
        return f"{prefix}{name}_lora.lora.{_LORA[num]}", num != "0", num == "0"
    head, _, tail = rest.partition(".")
    if part == "att" and head in _PROJ:
        rest = f"{_PROJ[head]}.{tail}"
    return prefix + rest, False, f"{part}.{rest}" in _SQUEEZED


def blinkdl_to_fla(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BlinkDL x070 tensors under fla's / Hugging Face's names and shapes (the table in the module docstring).

    Layer 0's unused ``v0/v1/v2`` are dropped; transposed matrices are returned contiguous.

    Raises:
        ValueError: a key that is not part of an x070 checkpoint (named).

    Example:
        >>> import torch
        >>> sd = {"blocks.1.att.w1": torch.zeros(8, 4), "blocks.1.att.w0": torch.zeros(1, 1, 8)}
        >>> {k: tuple(v.shape) for k, v in blinkdl_to_fla(sd).items()}
        {'model.layers.1.attn.w_lora.lora.0.weight': (4, 8), 'model.layers.1.attn.w_lora.lora.2.bias': (8,)}
    """
    out = {}
    for key, tensor in state_dict.items():
        if key in _UNUSED:
            continue
        name, transposed, squeezed = _fla_key(key)
        if transposed:
            tensor = tensor.t().contiguous()
        elif squeezed:
            tensor = tensor.reshape(-1)
        out[name] = tensor
    return out


def fla_to_blinkdl(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``blinkdl_to_fla``: fla's / Hugging Face's RWKV-7 tensors under BlinkDL's names and shapes.

    The result loads with ``assemblies.load_blinkdl`` once saved (``torch.save``) as a ``.pth``.

    Raises:
        ValueError: a key that has no BlinkDL counterpart (named).
    """
    inverse = {}
    for key in _blinkdl_keys(state_dict):
        inverse[_fla_key(key)[0]] = key
    out = {}
    for name, tensor in state_dict.items():
        if name not in inverse:
            raise ValueError(f"{name!r} has no BlinkDL x070 counterpart")
        key = inverse[name]
        _, transposed, squeezed = _fla_key(key)
        if transposed:
            tensor = tensor.t().contiguous()
        elif squeezed:
            tensor = tensor.reshape(1, 1, -1)
        out[key] = tensor
    return out


def _blinkdl_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Every BlinkDL key the layers of an fla state dict can map to (the candidates for the inverse)."""
    layers = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    keys = list(_TOP)
    for i in layers:
        p = f"blocks.{i}."
        keys += [p + f"{ln}.{t}" for ln in ("ln0", "ln1", "ln2") for t in ("weight", "bias")]
        keys += [p + f"att.x_{n}" for n in "rwkvag"]
        keys += [p + f"att.{n}{j}" for n in "wav" for j in "012"] + [p + "att.g1", p + "att.g2"]
        keys += [p + f"att.{n}" for n in ("k_k", "k_a", "r_k")]
        keys += [p + f"att.{n}.weight" for n in ("receptance", "key", "value", "output")]
        keys += [
            p + "att.ln_x.weight",
            p + "att.ln_x.bias",
            p + "ffn.x_k",
            p + "ffn.key.weight",
            p + "ffn.value.weight",
        ]
    return keys
