"""The lmms-eval model plugin: run lmms-eval's tasks on a VisualRWKV (``pip install 'rwkvblocks[lmms]'``).

``lmms-eval --model rwkvblocks --model_args pretrained=DIR_OR_PRESET,device=cuda --tasks pope`` finds the model
through lmms-eval's entry-point group ``lmms_eval.models`` (``pyproject.toml`` names ``manifest`` there), which
registers ``RWKVBlocksLMM`` under ``rwkvblocks`` (alias ``visualrwkv``).

- ``generate_until``: our batched generation (``assemblies.models.generate``) with each request's generation
  kwargs (``until`` strings become stop strings; greedy unless ``temperature`` > 0 and ``do_sample``).
- ``loglikelihood``: the requests of one document and context share one prefill, and every continuation of them
  is scored from that state in one batch (``rwkvblocks.generation.score_continuations``); the greedy flag is read
  from the same logits. What it returns per request is what lmms-eval's tasks take from their models (its LLaVA
  and LLaVA-HF models return the language-model loss, and ``multiple_choice`` tasks pick the ``argmin``): the
  mean negative log-likelihood per continuation token, not the summed log-likelihood its base-class docstring
  names.
- Both keep the state after each image prefix in one ``PrefixCache``, so a second question about an image, or a
  loglikelihood request after a generation about it, skips the image (with image-first prompts; see
  ``assemblies.models.generation``).

Contexts are the user's turn of the model's own prompt format (DESIGN.md §8); ``<image>`` placeholders are put in
front of a context that has none, one per visual. This module imports lmms-eval when it is installed; without
it the class exists but refuses to be built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rwkvblocks.generation import PrefixCache, SamplingConfig, score_continuations, step_function

from ..models import VisualRWKV, create_assembly, generate, list_assemblies
from ..models.config import default_sampling, make_tokenizer
from .answers import continuation_ids, prefill_conversation

try:
    from lmms_eval.api.model import lmms as _LMMBase
except ImportError:  # the optional extra is not installed
    _LMMBase = object
    LMMS_EVAL = False
else:
    LMMS_EVAL = True

__all__ = ["LMMS_EVAL", "RWKVBlocksLMM", "manifest"]


def manifest():
    """lmms-eval's ``ModelManifest`` for this plugin (the entry point lmms-eval loads)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="rwkvblocks", simple_class_path=f"{__name__}.RWKVBlocksLMM", aliases=("visualrwkv",))


def _load(pretrained: str | VisualRWKV, device: str, dtype: str | None) -> tuple[VisualRWKV, str]:
    if isinstance(pretrained, VisualRWKV):
        return pretrained.eval(), "model"
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    if dtype is not None and dtype not in dtypes:
        raise ValueError(f"dtype is {dtype!r}; expected one of {', '.join(dtypes)}")
    torch_dtype = dtypes.get(dtype) if dtype else None
    if Path(pretrained).is_dir():
        return VisualRWKV.from_pretrained(pretrained, device=device, dtype=torch_dtype).eval(), Path(pretrained).name
    if pretrained in list_assemblies():
        return create_assembly(pretrained, device=device, dtype=torch_dtype).eval(), pretrained
    raise ValueError(f"pretrained={pretrained!r} is neither a save_pretrained directory nor a preset")


class RWKVBlocksLMM(_LMMBase):
    """A ``VisualRWKV`` as an lmms-eval ``lmms`` model (module docstring).

    Args:
        pretrained: A ``save_pretrained`` directory, a preset name, or a ``VisualRWKV``.
        device: Where to run it.
        dtype: ``fp32``, ``bf16``, ``fp16`` or ``fp64`` (default: the stored one).
        batch_size: Requests generated together.
        max_new_tokens: Used when a request's generation kwargs do not say.
        cache_mb: Budget of the prefix-state cache.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | VisualRWKV = "visualrwkv_tiny",
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int | str = 128,
        cache_mb: float | str = 256,
        **kwargs: Any,
    ) -> None:
        if not LMMS_EVAL:
            raise ImportError("the lmms-eval plugin needs lmms-eval: pip install 'rwkvblocks[lmms]'")
        super().__init__()
        self.model, self.model_id = _load(pretrained, device, dtype)
        self.tokenizer = make_tokenizer(self.model.data_config)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.cache = PrefixCache(max_bytes=max(1, int(float(cache_mb) * (1 << 20))))
        self._step = step_function(self.model.lm)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        flat = []
        for v in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        return [v.convert("RGB") if hasattr(v, "convert") else v for v in flat if v is not None]

    @staticmethod
    def _conversation(context: str, images: int) -> list[dict[str, str]]:
        if images and "<image>" not in context:
            context = "<image>\n" * images + context
        return [{"from": "human", "value": context}]

    def _sampling(self, gen_kwargs: dict) -> SamplingConfig:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(gen_kwargs.get("do_sample", False)) and float(gen_kwargs.get("temperature") or 0) > 0
        base = default_sampling(
            self.model.data_config,
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=float(gen_kwargs["temperature"]) if sample else 0.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0) if sample else 1.0,
        )
        return dataclasses.replace(base, stop_strings=base.stop_strings + tuple(u for u in until if u))

    def generate_until(self, requests: Sequence) -> list[str]:
        """Greedy (or sampled) answers, batched ``batch_size`` requests at a time, in request order."""
        from tqdm import tqdm

        out: list[str] = []
        with tqdm(total=len(requests), desc="rwkvblocks generate", disable=self.rank != 0) as bar:
            for start in range(0, len(requests), self.batch_size):
                batch = requests[start : start + self.batch_size]
                convs, images, configs = [], [], []
                for request in batch:
                    context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                    visuals = self._visuals(doc_to_visual, doc_id, task, split)
                    convs.append(self._conversation(context, len(visuals)))
                    images.append(visuals or None)
                    configs.append(self._sampling(dict(gen_kwargs or {})))
                results = generate(self.model, convs, images, configs, tokenizer=self.tokenizer, cache=self.cache)
                out.extend(r.text for r in results)
                bar.update(len(batch))
        return out

    def loglikelihood(self, requests: Sequence) -> list[tuple[float, bool]]:
        """``(-log p(continuation | context) / its token count, whether greedy decoding gives it)`` per request.

        Requests with the same context about the same document share one prefill (a multiple-choice question's
        options); their continuations are scored together.
        """
        from tqdm import tqdm

        groups: dict[tuple, list[tuple[int, str]]] = {}
        visual_of: dict[tuple, Any] = {}
        for i, request in enumerate(requests):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            key = (context, task, split, doc_id)
            groups.setdefault(key, []).append((i, continuation))
            visual_of[key] = doc_to_visual
        out: list = [None] * len(requests)
        with tqdm(total=len(requests), desc="rwkvblocks loglikelihood", disable=self.rank != 0) as bar:
            for key, members in groups.items():
                context, task, split, doc_id = key
                visuals = self._visuals(visual_of[key], doc_id, task, split)
                conv = self._conversation(context, len(visuals))
                logits, state, _ = prefill_conversation(
                    self.model, conv, visuals, tokenizer=self.tokenizer, cache=self.cache
                )
                ids = [continuation_ids(self.tokenizer, c) for _, c in members]
                for (i, _), tokens, score, greedy in zip(members, ids, *self._score(logits, state, ids)):
                    out[i] = (-score / len(tokens), greedy)  # the loss, as lmms-eval's models return it
                bar.update(len(members))
        return out

    def _score(self, logits, state, continuations: list[list[int]]) -> tuple[list[float], list[bool]]:
        """Log-likelihoods (``score_continuations``) and greedy flags, read from the logits it computes."""
        seen = []

        def step(tokens, state):
            result = self._step(tokens, state)
            seen.append(result[0])
            return result

        scores = score_continuations(step, logits, state, continuations)
        first = int(logits.reshape(-1).argmax())
        greedy = []
        for row, ids in enumerate(continuations):
            ok = first == ids[0]
            if ok and len(ids) > 1:
                picked = seen[0][row, : len(ids) - 1].argmax(-1).cpu()
                ok = bool((picked == torch.tensor(ids[1:])).all())
            greedy.append(ok)
        return scores, greedy

    def generate_until_multi_round(self, requests: Sequence) -> list[str]:
        """Not supported: multi-round tasks need the task's own round logic."""
        raise NotImplementedError("rwkvblocks: generate_until_multi_round is not supported")
