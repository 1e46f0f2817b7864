"""Generation with a VisualRWKV model from LLaVA-style conversations and images.

``generate(model, conversations, images, config)`` builds each prompt with the model's prompt builder (its
``DataConfig``), prefills it with the image features in place (scan schedule honoured), and decodes all requests
in one batch through ``rwkvblocks.generation``; ``generate_stream(...)`` yields the text piece by piece.

Prefix reuse: with a ``PrefixCache``, the state after the last image of a prompt is kept, keyed by the model,
the images' content and the token ids up to there. A later prompt with the same prefix skips the image encoder
and the image span. With the image-first prompt that prefix is ``"User: <image>"``, so every question about an
image reuses it; with the sandwich prompt the questions come *before* the image, so only the same questions
reuse it (a follow-up turn of one conversation still does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rwkvblocks.generation import GenerationEvent, GenerationResult, PrefixCache, SamplingConfig, decode, step_function
from rwkvblocks.prompting import Tokenizer

from .config import default_sampling, make_prompt_builder, make_tokenizer
from .visualrwkv import VisualRWKV

__all__ = ["ChatSession", "generate", "generate_stream"]


def _conversations(conversations: Any) -> tuple[list[Sequence[Mapping]], bool]:
    """The conversations, and whether a single one (a list of turns) was given."""
    if isinstance(conversations, Sequence) and conversations and isinstance(conversations[0], Mapping):
        return [conversations], True
    if not isinstance(conversations, Sequence) or not conversations:
        raise ValueError("conversations must be a conversation (a list of turns) or a non-empty list of them")
    return list(conversations), False


def _images_of(images: Any, count: int, single: bool) -> list[list]:
    """Per conversation, the list of its images (paths, PIL images or tensors)."""
    if images is None:
        return [[] for _ in range(count)]
    if single:  # the one conversation's image, or its list of images
        images = [images]
    elif not isinstance(images, (list, tuple)):
        raise ValueError("for several conversations, images must be a list with one entry per conversation")
    if len(images) != count:
        raise ValueError(f"images must give one entry per conversation ({count}), got {len(images)}")
    return [[] if x is None else list(x) if isinstance(x, (list, tuple)) else [x] for x in images]


def _pixels(model: VisualRWKV, images: list) -> Tensor:
    """Preprocessed images `[n, 3, H, W]`: float tensors pass as they are, everything else through the transform."""
    if all(isinstance(x, Tensor) and x.is_floating_point() for x in images):
        return torch.stack([x if x.dim() == 3 else x.squeeze(0) for x in images])
    return model.encoder.transform(images)


def _digest(pixels: Tensor) -> str:
    return hashlib.sha256(pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def _prefill(model: VisualRWKV, ids: list[int], pixels: Tensor | None, starts: list[int], cache: PrefixCache | None):
    device = model.lm.emb.weight.device
    n = model.image_tokens
    tokens = torch.tensor([ids], device=device)
    if pixels is None:
        return model.prefill(tokens)
    spans = torch.tensor([[0, s, 0, n] for s in starts])
    cut = starts[-1] + n  # the state after the last image is what a later prompt can share
    if model.config.pad_multiple > 1:
        cut = len(ids)  # upstream pads the whole prompt: a split would pad another length
    key = (id(model), _digest(pixels))
    hit = cache.get(*key, ids[:cut]) if cache is not None else None
    if hit is None:
        logits, state = model.prefill(tokens[:, :cut], pixels.to(device), spans)
        if cache is not None:
            cache.put(*key, ids[:cut], logits, state)
    else:
        logits, state = hit
    if cut < len(ids):
        rest, state = model.lm(tokens[:, cut:], state, logits_to_keep=1)
        logits = rest[:, -1]
    return logits, state


def generate_stream(
    model: VisualRWKV,
    conversations: Any,
    images: Any = None,
    config: SamplingConfig | Sequence[SamplingConfig] | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    cache: PrefixCache | None = None,
    compile: bool | str = False,
) -> Iterator[GenerationEvent]:
    """Generate for every conversation in one batch, yielding a ``GenerationEvent`` per request and token.

    Args:
        model: A ``VisualRWKV``.
        conversations: One conversation (``[{"from": "human", "value": "<image>\\n..."}, ...]``, ending with a human
            turn) or a list of them.
        images: For one conversation its image or list of images; for several, one entry (image, list or
            ``None``) per conversation. Paths, PIL images, uint8 tensors, or preprocessed float tensors.
        config: One ``SamplingConfig`` for all, or one per conversation (default: greedy, stopping at the end of
            the assistant turn: ``default_sampling(model.data_config)``).
        tokenizer: Default: the one the model's ``DataConfig`` names.
        cache: Keep and reuse states after image prefixes (see the module docstring).
        compile: Compile the decode step (``rwkvblocks.generation.step_function``): faster steps after a first
            call that compiles.

    Raises:
        ValueError: a malformed conversation, a prompt longer than the context length (named), an image count
            that does not match the placeholders, an unreadable image.
    """
    convs, single = _conversations(conversations)
    per_image = _images_of(images, len(convs), single)
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(model.data_config)
    builder = make_prompt_builder(model.data_config, tokenizer)
    if config is None:
        config = default_sampling(model.data_config)
    configs = [config] * len(convs) if isinstance(config, SamplingConfig) else list(config)
    if len(configs) != len(convs):
        raise ValueError(f"got {len(configs)} sampling configs for {len(convs)} conversations")
    limit = model.data_config.context_length
    starts_and_states, lengths = [], []
    for i, (conv, imgs) in enumerate(zip(convs, per_image)):
        prompt = builder.build(conv, mode="inference")
        if prompt.num_images != len(imgs):
            raise ValueError(f"conversation {i} has {prompt.num_images} <image> placeholders and {len(imgs)} images")
        ids, _, starts = prompt.expand(model.image_tokens)
        if len(ids) > limit:
            raise ValueError(
                f"conversation {i}: the prompt has {len(ids)} tokens, more than the context length {limit}"
            )
        pixels = _pixels(model, imgs) if imgs else None
        starts_and_states.append(_prefill(model, ids, pixels, starts, cache))
        lengths.append(len(ids))

    return decode(
        step_function(model.lm, compile=compile),
        starts_and_states,
        configs,
        vocab_size=model.lm.vocab_size,
        decode_bytes=tokenizer.decode_bytes,
        prompt_tokens=lengths,
    )


def generate(
    model: VisualRWKV,
    conversations: Any,
    images: Any = None,
    config: SamplingConfig | Sequence[SamplingConfig] | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    cache: PrefixCache | None = None,
    compile: bool | str = False,
) -> list[GenerationResult]:
    """``generate_stream`` run to the end: one ``GenerationResult`` (tokens, text, finish reason, log-probabilities) per
    conversation, in order.

    Example:
        >>> import torch
        >>> from assemblies import create_assembly
        >>> model = create_assembly("visualrwkv_tiny")
        >>> conv = [{"from": "human", "value": "<image>\\nWhat colour?"}]
        >>> out = generate(model, conv, torch.rand(3, 56, 56), SamplingConfig(max_new_tokens=3, stop_tokens=(0,)))
        >>> len(out), len(out[0].tokens) <= 3
        (1, True)
    """
    results: list = [None] * len(_conversations(conversations)[0])
    events = generate_stream(model, conversations, images, config, tokenizer=tokenizer, cache=cache, compile=compile)
    for event in events:
        if event.result is not None:
            results[event.index] = event.result
    return results


class ChatSession:
    """A conversation that continues from the recurrent state: each follow-up feeds only its own turn.

    The first question builds the prompt with the model's prompt builder (and the image, if set); later ones
    append ``"User: ...\n\nAssistant:"`` to the state left by the previous answer, so the cost of a turn does not
    grow with the conversation. ``reset()`` forgets it; ``set_image`` starts a new conversation about an image.

    Args:
        model: A ``VisualRWKV``.
        config: Sampling settings (default ``default_sampling(model.data_config, max_new_tokens=256)``).
        tokenizer: Default: the one of the model's ``DataConfig``.
        compile: Compile the decode step (``rwkvblocks.generation.step_function``).

    Example:
        >>> import torch
        >>> from assemblies import create_assembly
        >>> chat = ChatSession(create_assembly("visualrwkv_tiny"), SamplingConfig(max_new_tokens=4, stop_tokens=(0,)))
        >>> chat.set_image(torch.rand(3, 56, 56))
        >>> answer = "".join(chat.ask("What colour?"))
        >>> follow_up = "".join(chat.ask("Sure?"))  # continues from the state
    """

    def __init__(
        self,
        model: VisualRWKV,
        config: SamplingConfig | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        compile: bool | str = False,
    ):
        self.model = model
        self._step = step_function(model.lm, compile=compile)
        self.tokenizer = tokenizer if tokenizer is not None else make_tokenizer(model.data_config)
        self.builder = make_prompt_builder(model.data_config, self.tokenizer)
        self.config = config or default_sampling(model.data_config, max_new_tokens=256)
        self.image = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the image stays)."""
        self.state = None
        self._pending: list[int] = []
        self.turns = 0

    def set_image(self, image: Any) -> None:
        """Start a new conversation about ``image`` (a path, PIL image or tensor; ``None`` for none)."""
        self.image = None if image is None else _pixels(self.model, [image])
        self.reset()

    @torch.no_grad()
    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to ``question`` (text pieces); the state moves on to the end of the answer."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        model, encode = self.model, self.tokenizer.encode
        if self.state is None:
            placeholder = "<image>\n" if self.image is not None else ""
            prompt = self.builder.build([{"from": "human", "value": placeholder + question}], mode="inference")
            ids, _, starts = prompt.expand(model.image_tokens)
            logits, state = _prefill(model, ids, self.image, starts, None)
        else:
            text = self.builder.format([{"from": "human", "value": question}], mode="inference")
            ids = self._pending + [t for _, piece in text for t in encode(piece)]
            out, state = model.lm(torch.tensor([ids], device=model.lm.emb.weight.device), self.state, logits_to_keep=1)
            logits = out[:, -1]

        events = decode(
            self._step,
            [(logits, state)],
            [self.config],
            vocab_size=model.lm.vocab_size,
            decode_bytes=self.tokenizer.decode_bytes,
            return_state=True,
        )
        result = None
        for event in events:
            if event.piece:
                yield event.piece
            result = event.result or result
        self.state, self._pending = result.state, self._end_of_turn(result)
        self.turns += 1

    def _end_of_turn(self, result: GenerationResult) -> list[int]:
        """Tokens the state has not seen yet: the last chosen token, and the turn's closing ``"\n\n"``.

        A stop token was chosen but never fed (the World ``"\n\n"`` token closes the turn itself); after a stop
        string or ``max_new_tokens`` the last generated token was never fed.
        """
        close = self.tokenizer.encode("\n\n")
        if isinstance(result.stop, int):
            closes = result.stop != 0 and self.tokenizer.decode([result.stop]) == "\n\n"
            return [result.stop] if closes else close
        return result.tokens[-1:] + ([] if result.stop == "\n\n" else close)
