"""The OpenAI API subset the server speaks (DESIGN.md §17): requests checked field by field into engine jobs,
results and stream chunks shaped as OpenAI's, errors as ``{"error": {"message", "type", "param", "code"}}``.

Chat messages become a LLaVA conversation for the model's prompt builder: ``user`` turns are human turns,
``assistant`` turns answers; ``system`` and ``developer`` texts are put before the first user message (the
upstream format has no system prompt); consecutive messages of one role are joined by a newline; every
``image_url`` part becomes an ``<image>`` of its turn, which the prompt mode places. Defaults follow OpenAI's API
(``temperature`` 1, ``top_p`` 1); generation stops at the end of the assistant turn and never runs past the
model's context length (``finish_reason="length"`` there). ``logit_bias`` may only ban tokens (-100).
Extensions: ``top_k``, ``min_p``, ``repetition_penalty`` and ``penalty_decay`` (ChatRWKV's settings).

Log-probabilities are those of the model's raw next-token distribution. Only the tokens that begin inside the
returned text are reported: the tokens of a stop string are cut with it, streamed or not.
"""

from __future__ import annotations

import codecs
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rwkvblocks.generation import GenerationResult, SamplingConfig, TokenLogprob
from rwkvblocks.prompting import IMAGE_PLACEHOLDER, ConversationError

from .engine import Failed, Finished, Job, Started, Update
from .errors import ApiError
from .images import load_image_url

__all__ = [
    "ApiError",
    "Choice",
    "Logprob",
    "Prepared",
    "Served",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_logprobs",
    "completion_response",
    "token_text",
    "usage",
]

MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
MAX_PROMPTS = 64
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
SAMPLING = {
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "penalty_decay",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "model",
}
CHAT_FIELDS = SAMPLING | {"messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs"}
CHAT_FIELDS |= {"response_format", "tools", "tool_choice", "functions", "function_call", "logit_bias", "modalities"}
COMPLETION_FIELDS = SAMPLING | {"prompt", "max_tokens", "echo", "logprobs", "suffix", "best_of", "logit_bias"}


def _bad(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"{param} must be {expected}, got {value!r}", param=param, code="invalid_value")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Fields:
    """Typed, named access to a JSON request body."""

    def __init__(self, body: dict[str, Any]):
        self.body = body

    def given(self, name: str) -> bool:
        return self.body.get(name) is not None

    def number(self, name: str, lo: float, hi: float, default: float, *, low_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if not _is_number(value) or value > hi or value < lo or (low_open and value == lo):
            raise _bad(name, f"a number in {'(' if low_open else '['}{lo}, {hi}]", value)
        return float(value)

    def integer(self, name: str, lo: int, hi: int | None, default: int | None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            raise _bad(name, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""), value)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _bad(name, "true or false", value)
        return value

    def stop(self) -> tuple[str, ...]:
        value = self.body.get("stop")
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
            raise _bad("stop", f"a non-empty string or a list of at most {MAX_STOP} of them", value)
        return tuple(stops)


def token_text(decode_bytes: Callable[[Sequence[int]], bytes], token: int) -> tuple[str, bytes]:
    """A token's text as OpenAI writes it (``"bytes:\\xe4"`` for a piece of a character) and its bytes."""
    if token == 0:
        return "<|endoftext|>", b""
    data = decode_bytes([token])
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data), data


Logprob = tuple[int, TokenLogprob]
"""A generated token's log-probabilities and the offset of its first character in the returned text."""


class _Aligner:
    """Releases a token's log-probability once the text it begins in has been returned (a stop string's tokens
    never are), so that streamed and whole answers report the same tokens."""

    def __init__(self, decode_bytes):
        self._decode_bytes = decode_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = self._emitted = 0
        self._pending: list[tuple[int, TokenLogprob]] = []

    def push(self, piece: str, tokens: list[int], logprobs: list[TokenLogprob] | None) -> list[Logprob]:
        for k, token in enumerate(tokens):
            if logprobs is not None:
                self._pending.append((self._chars, logprobs[k]))
            self._chars += len(self._utf8.decode(b"" if token == 0 else self._decode_bytes([token])))
        self._emitted += len(piece)
        return self._release(self._emitted)

    def finish(self, text: str) -> list[Logprob]:
        return self._release(len(text))

    def _release(self, upto: int) -> list[Logprob]:
        out = [(start, lp) for start, lp in self._pending if start < upto]
        self._pending = [(start, lp) for start, lp in self._pending if start >= upto]
        return out


@dataclass
class Choice:
    """One choice of a response as its engine events arrive: text so far, released log-probabilities, the
    result or the error."""

    decode_bytes: Callable
    text: list[str] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)
    cached_tokens: int = 0
    prompt_logprobs: list | None = None
    result: GenerationResult | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self._aligner = _Aligner(self.decode_bytes)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def on(self, event) -> tuple[str, list[Logprob]]:
        """Take one engine event; returns the new text and the newly released log-probabilities."""
        if isinstance(event, Started):
            self.cached_tokens, self.prompt_logprobs = event.cached_tokens, event.prompt_logprobs
            return "", []
        if isinstance(event, Update):
            released = self._aligner.push(event.piece, event.tokens, event.logprobs)
        elif isinstance(event, Finished):
            self.result = event.result
            released = self._aligner.finish(event.result.text)
        elif isinstance(event, Failed):
            self.error = event.message
            return "", []
        else:
            raise TypeError(f"unknown engine event {event!r}")
        piece = event.piece if isinstance(event, Update) else ""
        self.text.append(piece)
        self.logprobs += released
        return piece, released


@dataclass
class Prepared:
    """A checked request: its engine jobs and how to answer."""

    kind: str  # "chat" or "completion"
    jobs: list[Job]
    stream: bool
    include_usage: bool
    logprobs: int | None  # top alternatives per token (chat: top_logprobs); None: no log-probabilities
    echo: list[str] | None = None  # completions: each prompt's text, returned before the completion
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = self.created or int(time.time())


class Served:
    """What the API layer knows of the model: its name, tokenizer, prompt builder, context length, image limits.

    Args:
        model: The ``VisualRWKV``.
        model_id: The name clients call it by (``GET /v1/models``).
        tokenizer: The model's tokenizer.
        limits: ``ImageLimits``.
    """

    def __init__(self, model, model_id: str, tokenizer, limits):
        from ..models.config import default_sampling, make_prompt_builder

        self.model, self.model_id, self.tokenizer, self.limits = model, model_id, tokenizer, limits
        self.builder = make_prompt_builder(model.data_config, tokenizer)
        self.context_length = model.data_config.context_length
        self.vocab_size = model.lm.vocab_size
        self.chat_defaults = default_sampling(model.data_config)

    # -- shared fields -----------------------------------------------------------------------------

    def _common(self, body: Any, fields: set[str]) -> _Fields:
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        unknown = sorted(set(body) - fields - IGNORED)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])
        model = body.get("model")
        if model is None:
            raise ApiError(400, "you must provide a model parameter", param="model")
        if model != self.model_id:
            raise ApiError(
                404,
                f"The model {model!r} does not exist; this server serves {self.model_id!r}",
                param="model",
                code="model_not_found",
            )
        f = _Fields(body)
        if body.get("n") not in (None, 1):
            raise _bad("n", "1 (one choice per request)", body["n"])
        return f

    def _banned(self, f: _Fields) -> tuple[int, ...]:
        """``logit_bias`` of -100 bans a token (the only bias supported)."""
        bias = f.body.get("logit_bias")
        if bias is None:
            return ()
        if not isinstance(bias, dict):
            raise _bad("logit_bias", "an object mapping token ids to -100", bias)
        banned = []
        for key, value in bias.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < self.vocab_size):
                raise _bad("logit_bias", f"keyed by token ids in [0, {self.vocab_size})", key)
            if value != -100:
                message = f"logit_bias: only -100 (never generate the token) is supported, got {value!r} for {key}"
                raise ApiError(400, message, param="logit_bias", code="unsupported_parameter")
            banned.append(int(key))
        return tuple(sorted(banned))

    def _sampling(self, f: _Fields, max_new_tokens: int, stops: dict[str, Any]) -> SamplingConfig:
        stop_strings = tuple(stops.get("stop_strings", ())) + f.stop()
        settings = dict(
            max_new_tokens=max_new_tokens,
            temperature=f.number("temperature", 0, 2, 1.0),
            top_p=f.number("top_p", 0, 1, 1.0, low_open=True),
            top_k=f.integer("top_k", 0, None, 0),
            min_p=f.number("min_p", 0, 1, 0.0),
            presence_penalty=f.number("presence_penalty", -2, 2, 0.0),
            frequency_penalty=f.number("frequency_penalty", -2, 2, 0.0),
            repetition_penalty=f.number("repetition_penalty", 0, 10, 1.0, low_open=True),
            penalty_decay=f.number("penalty_decay", 0, 1, 1.0, low_open=True),
            stop_tokens=stops["stop_tokens"],
            stop_strings=stop_strings,
            banned_tokens=self._banned(f),
            seed=f.integer("seed", -(2**63), 2**63 - 1, None),
            logprobs=stops.get("logprobs"),
        )
        try:
            return SamplingConfig(**settings)
        except ValueError as err:  # e.g. min_p = 1
            raise ApiError(400, str(err), code="invalid_value") from None

    def _stream(self, f: _Fields) -> tuple[bool, bool]:
        stream = f.boolean("stream")
        options = f.body.get("stream_options")
        if options is None:
            return stream, False
        if not stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options", 'an object {"include_usage": bool}', options)
        return stream, _Fields(options).boolean("include_usage")

    def _room(self, length: int, requested: int | None, param: str) -> int:
        room = self.context_length - length
        if room < 1:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.context_length} tokens, but the {param} take {length}"
                f" tokens (each image counts {self.model.image_tokens}); shorten them",
                param=param,
                code="context_length_exceeded",
            )
        return room if requested is None else min(requested, room)

    # -- chat --------------------------------------------------------------------------------------

    def prepare_chat(self, body: Any) -> Prepared:
        """Check a ``/v1/chat/completions`` body and build its job (images decoded here, under the limits)."""
        f = self._common(body, CHAT_FIELDS)
        for name in ("tools", "functions"):
            if f.body.get(name):
                raise ApiError(
                    400, f"{name} (tool calling) are not supported", param=name, code="unsupported_parameter"
                )
        for name in ("tool_choice", "function_call"):
            if f.given(name) and f.body[name] != "none":
                raise ApiError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
        fmt = f.body.get("response_format")
        if fmt is not None and fmt != {"type": "text"}:
            raise ApiError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
        if f.given("modalities") and f.body["modalities"] != ["text"]:
            raise ApiError(400, "modalities: only ['text'] is supported", param="modalities")
        stream, include_usage = self._stream(f)
        want = f.boolean("logprobs")
        top = f.integer("top_logprobs", 0, MAX_TOP_LOGPROBS, None)
        if top is not None and not want:
            raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        logprobs = (top or 0) if want else None
        requested = f.integer("max_completion_tokens", 1, None, None)
        if requested is None:
            requested = f.integer("max_tokens", 1, None, None)

        conversation, images, keys = self._conversation(f.body.get("messages"))
        try:
            prompt = self.builder.build(conversation, mode="inference")
        except ConversationError as err:
            raise ApiError(400, f"messages: {err}", param="messages") from None
        ids, _, starts = prompt.expand(self.model.image_tokens)
        room = self._room(len(ids), requested, "messages")
        defaults = self.chat_defaults
        stops = {"stop_tokens": defaults.stop_tokens, "stop_strings": defaults.stop_strings, "logprobs": logprobs}
        config = self._sampling(f, room, stops)
        pixels = self.model.encoder.transform(images) if images else None
        job = Job(ids, config, starts, pixels, tuple(keys), keep_answer=True, follow_up=self._follow_up(conversation))
        return Prepared("chat", [job], stream, include_usage, logprobs)

    def _follow_up(self, conversation: list[dict]):
        """``answer -> (ids, image starts)`` of the conversation with its answer, as every follow-up prompt begins;
        ``None`` where the prompt mode rebuilds earlier turns (the sandwich prompt)."""
        n = self.model.image_tokens

        def rebuild(answer: str):
            history = [*conversation, {"from": "gpt", "value": answer}]
            try:
                ids, _, starts = self.builder.build(history, mode="train").expand(n)
                probe = [*history, {"from": "human", "value": "?"}]
                next_ids = self.builder.build(probe, mode="inference").expand(n)[0]
            except ConversationError:  # an empty answer
                return None
            return (ids, starts) if next_ids[: len(ids)] == ids and len(ids) <= self.context_length else None

        return rebuild

    def _conversation(self, messages: Any) -> tuple[list[dict], list, list[str]]:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty array of messages", param="messages")
        system, turns, images, keys = [], [], [], []
        for i, message in enumerate(messages):
            param = f"messages[{i}]"
            if not isinstance(message, dict):
                raise _bad(param, "an object with role and content", message)
            role = message.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise ApiError(
                    400, f"{param}.role must be system, developer, user or assistant, got {role!r}", param=param
                )
            texts = []
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if content is None and role == "assistant":
                parts = []
            if not isinstance(parts, list):
                raise _bad(f"{param}.content", "a string or an array of content parts", content)
            for j, part in enumerate(parts):
                where = f"{param}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _bad(f"{where}.text", "a string", text)
                    if IMAGE_PLACEHOLDER in text:
                        raise ApiError(
                            400,
                            f"{where}: text must not hold {IMAGE_PLACEHOLDER}; send images as image_url parts",
                            param=where,
                        )
                    texts.append(text)
                elif kind == "image_url":
                    if role != "user":
                        raise ApiError(400, f"{where}: images are accepted in user messages only", param=where)
                    spec = part.get("image_url")
                    url = spec.get("url") if isinstance(spec, dict) else spec
                    image, key = load_image_url(url, self.limits, f"{where}.image_url")
                    images.append(image)
                    keys.append(key)
                    texts.append(IMAGE_PLACEHOLDER)
                else:
                    raise ApiError(
                        400, f"{where}: content part type {kind!r} is not supported (text, image_url)", param=where
                    )
            text = "\n".join(t for t in texts if t != IMAGE_PLACEHOLDER) + "".join(
                IMAGE_PLACEHOLDER for t in texts if t == IMAGE_PLACEHOLDER
            )
            if role in ("system", "developer"):
                system.append(text)
                continue
            who = "human" if role == "user" else "gpt"
            if turns and turns[-1]["from"] == who:
                turns[-1]["value"] += "\n" + text
            else:
                turns.append({"from": who, "value": text})
        if not turns or turns[-1]["from"] != "human":
            last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
            raise ApiError(400, f"the last message must be from the user, got role {last!r}", param="messages")
        if system:
            first = next(t for t in turns if t["from"] == "human")
            first["value"] = "\n".join(system) + "\n" + first["value"]
        return turns, images, keys

    # -- completions -------------------------------------------------------------------------------

    def prepare_completion(self, body: Any) -> Prepared:
        """Check a ``/v1/completions`` body: one job per prompt (text or token ids, no images)."""
        f = self._common(body, COMPLETION_FIELDS)
        if f.given("suffix"):
            raise ApiError(400, "suffix is not supported", param="suffix", code="unsupported_parameter")
        if body.get("best_of") not in (None, 1):
            raise _bad("best_of", "1", body["best_of"])
        stream, include_usage = self._stream(f)
        echo = f.boolean("echo")
        logprobs = f.integer("logprobs", 0, MAX_TOP_LOGPROBS, None)
        requested = f.integer("max_tokens", 0, None, 16)
        prompts = self._prompts(f.body.get("prompt"))
        jobs, texts = [], []
        for k, (text, ids) in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{k}]"
            if len(ids) > self.context_length:
                self._room(len(ids), None, param)  # raises: the prompt alone is too long
            room = min(requested, self.context_length - len(ids))  # 0: score the prompt only
            stops = {"stop_tokens": (0,), "logprobs": logprobs}
            config = self._sampling(f, max(room, 1), stops)
            score = logprobs if echo and logprobs is not None else None
            jobs.append(Job(ids, config, score=score, generate=room > 0))
            texts.append(text)
        return Prepared("completion", jobs, stream, include_usage, logprobs, echo=texts if echo else None)

    def _prompts(self, prompt: Any) -> list[tuple[str, list[int]]]:
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and len(prompt) <= MAX_PROMPTS:
            prompts = prompt
        else:
            raise _bad("prompt", f"a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} of either", prompt)
        out = []
        for k, p in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{k}]"
            if isinstance(p, str):
                ids = self.tokenizer.encode(p)
                text = p
            elif isinstance(p, list) and all(_is_int(t) for t in p):
                bad = [t for t in p if not 0 < t < self.vocab_size]
                if bad:
                    raise _bad(param, f"token ids in [1, {self.vocab_size})", bad[:5])
                ids = list(p)
                text = self.tokenizer.decode(ids)
            else:
                raise _bad(param, "a string or a list of token ids", p)
            if not ids:
                raise ApiError(400, f"{param} is empty: give at least one token", param=param)
            out.append((text, ids))
        return out


# -- responses ----------------------------------------------------------------------------------------


def usage(choices: Sequence[Choice], jobs: Sequence[Job]) -> dict[str, Any]:
    """Token counts of a response; ``prompt_tokens_details.cached_tokens`` came from the prefix cache."""
    prompt = sum(len(j.ids) for j in jobs)
    completion = sum(len(c.result.tokens) for c in choices if c.result is not None)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in choices)},
    }


def _finish_reason(result: GenerationResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _chat_logprobs(entries: Sequence[Logprob], decode_bytes) -> list[dict[str, Any]]:
    out = []
    for _, entry in entries:
        text, data = token_text(decode_bytes, entry.token)
        tops = []
        for token, logprob in entry.top:
            t, b = token_text(decode_bytes, token)
            tops.append({"token": t, "logprob": logprob, "bytes": list(b)})
        out.append({"token": text, "logprob": entry.logprob, "bytes": list(data), "top_logprobs": tops})
    return out


def chat_response(prepared: Prepared, choice: Choice, model_id: str) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished request."""
    logprobs = None
    if prepared.logprobs is not None:
        logprobs = {"content": _chat_logprobs(choice.logprobs, choice.decode_bytes), "refusal": None}
    return {
        "id": prepared.id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice.result.text, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": _finish_reason(choice.result),
            }
        ],
        "usage": usage([choice], prepared.jobs),
    }


def chat_chunk(
    prepared: Prepared,
    model_id: str,
    delta: dict[str, Any],
    logprobs: Sequence[Logprob] | None = None,
    decode_bytes=None,
    finish_reason: str | None = None,
    usage: dict | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` the closing chunk that has no choices."""
    chunk = {"id": prepared.id, "object": "chat.completion.chunk", "created": prepared.created, "model": model_id}
    if usage is not None:
        return {**chunk, "choices": [], "usage": usage}
    lp = None
    if prepared.logprobs is not None and logprobs:
        lp = {"content": _chat_logprobs(logprobs, decode_bytes), "refusal": None}
    return {**chunk, "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}]}


def _offsets(decode_bytes, tokens: Sequence[int], start: int) -> list[int]:
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out, at = [], start
    for token in tokens:
        out.append(at)
        at += len(utf8.decode(b"" if token == 0 else decode_bytes([token])))
    return out


def completion_logprobs(
    decode_bytes,
    top: int,
    entries: Sequence[Logprob],
    echo_length: int,
    prompt: tuple[list[int], list] | None = None,
) -> dict[str, Any]:
    """The legacy ``logprobs`` object: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``; the
    prompt's tokens first when ``prompt`` (its ids and scores) is given (the first token has no log-probability).
    Offsets of generated tokens count from the end of the ``echo_length`` characters of echoed prompt."""
    tokens, logprobs, tops, offsets = [], [], [], []
    if prompt is not None:
        ids, scored = prompt
        tokens += list(ids)
        logprobs += [None] + [lp for lp, _ in scored]
        tops += [None] + [{token_text(decode_bytes, t)[0]: v for t, v in alt} for _, alt in scored]
        offsets += _offsets(decode_bytes, ids, 0)
    tokens += [e.token for _, e in entries]
    logprobs += [e.logprob for _, e in entries]
    tops += [{token_text(decode_bytes, t)[0]: v for t, v in e.top} for _, e in entries]
    offsets += [echo_length + start for start, _ in entries]
    return {
        "tokens": [token_text(decode_bytes, t)[0] for t in tokens],
        "token_logprobs": logprobs,
        "top_logprobs": tops if top else None,
        "text_offset": offsets,
    }


def completion_response(prepared: Prepared, choices: Sequence[Choice], model_id: str) -> dict[str, Any]:
    """The ``text_completion`` object of finished requests, one choice per prompt."""
    out = []
    for k, (choice, job) in enumerate(zip(choices, prepared.jobs)):
        echo = prepared.echo[k] if prepared.echo is not None else ""
        text = echo + (choice.result.text if job.generate else "")
        logprobs = None
        if prepared.logprobs is not None:
            prompt = (job.ids, choice.prompt_logprobs) if prepared.echo is not None else None
            entries = choice.logprobs if job.generate else []
            logprobs = completion_logprobs(choice.decode_bytes, prepared.logprobs, entries, len(echo), prompt)
        reason = _finish_reason(choice.result) if job.generate else "length"
        out.append({"index": k, "text": text, "logprobs": logprobs, "finish_reason": reason})
    return {
        "id": prepared.id,
        "object": "text_completion",
        "created": prepared.created,
        "model": model_id,
        "choices": out,
        "usage": usage(choices, prepared.jobs),
    }


def completion_chunk(
    prepared: Prepared,
    model_id: str,
    index: int,
    text: str,
    logprobs: dict | None = None,
    finish_reason: str | None = None,
    usage: dict | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk (``usage``: the closing chunk without choices)."""
    chunk = {"id": prepared.id, "object": "text_completion", "created": prepared.created, "model": model_id}
    if usage is not None:
        return {**chunk, "choices": [], "usage": usage}
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return {**chunk, "choices": [choice]}
