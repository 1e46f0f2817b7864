"""The server's one decode loop: a thread that owns the model and a ``Decoder`` and steps every active request.

Each turn of the loop takes in new requests and cancellations, runs **one prefill chunk** of the oldest request
still prefilling, then **one decode step** of every request that is decoding. Requests join the decode batch
when their prefill ends and leave it when they finish, so a long new prompt delays the others by one chunk per
token at most (a chunk that holds an image covers the image's whole span: the scan reads it at once).

Prefix reuse (``PrefixCache``, keyed by the model, the images' content hashes and the token ids): a request
starts from the longest cached prefix of its prompt, so a cached state is used only where its ids are exactly the
prompt's (the same messages give the same answer, cached or not). The loop keeps the state after the last image
of a prompt, after the whole prompt, and after the answer. A chat answer's turn is also *rebuilt* as the next
prompt will hold it (the builder strips answers, and a tokenizer may split ``"Assistant: answer"`` otherwise than
the generated tokens) and prefilled when the loop has nothing else to do (a *warm-up*), so the follow-up turn
prefills only its own text and the image encoder does not run again. That needs a prompt mode that keeps earlier
turns as a prefix: the image-first and image-last prompts do; the sandwich prompt puts every question before the
image, so there only the same prompt is reused.

Per-request faults (a bad image tensor, a sampling error) end that request alone; an error in the batched
decode step fails the requests that were decoding and the loop goes on with a fresh batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rwkvblocks.generation import Decoder, GenerationResult, PrefixCache, SamplingConfig, TokenLogprob, step_function

__all__ = ["Busy", "Engine", "Failed", "Finished", "Job", "Started", "Update", "wait_idle"]


@dataclass
class Job:
    """One request as the loop runs it (built by the HTTP layer from an API request).

    Attributes:
        ids: Prompt token ids with every image's positions expanded (image positions hold id 0).
        config: How to decode.
        image_starts: Where each image's span starts in ``ids``.
        pixels: Preprocessed images `[n, 3, H, W]` (``None`` without images).
        image_keys: Content hashes of the images, part of the prefix-cache key.
        score: Also return the log-probability of every prompt token after the first, with this many
            alternatives (``None``: no scoring). A scored prompt is run in full (no prefix reuse).
        generate: Decode after the prompt (``False``: scoring only).
        keep_answer: Cache the state after the answer, for a follow-up turn.
        follow_up: ``follow_up(answer text) -> (ids, image_starts)`` of the conversation so far as a follow-up
            prompt will begin (``None``: it cannot be known); those ids are prefilled and cached after the answer.
    """

    ids: list[int]
    config: SamplingConfig
    image_starts: list[int] = field(default_factory=list)
    pixels: Tensor | None = None
    image_keys: tuple[str, ...] = ()
    score: int | None = None
    generate: bool = True
    keep_answer: bool = False
    follow_up: Callable[[str], tuple[list[int], list[int]] | None] | None = None


class Started(NamedTuple):
    """The prompt is prefilled: ``cached_tokens`` of it came from the prefix cache; ``prompt_logprobs`` holds one
    ``(logprob, [(id, logprob), ...])`` per prompt token after the first when the job asked for scoring."""

    cached_tokens: int
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None


class Update(NamedTuple):
    """New final text (may be ``""``), the tokens generated since the last update and their log-probabilities."""

    piece: str
    tokens: list[int]
    logprobs: list[TokenLogprob] | None


class Finished(NamedTuple):
    """The request ended normally (``result.finish_reason`` is ``"stop"`` or ``"length"``)."""

    result: GenerationResult


class Failed(NamedTuple):
    """The request ended with an error inside the loop (``message`` says what)."""

    message: str


class Busy(RuntimeError):
    """The queue of waiting requests is full."""


Event = Started | Update | Finished | Failed
Emit = Callable[[Event], None]


class _Run:
    def __init__(self, rid: int, job: Job, emit: Emit, warm: bool = False):
        self.rid, self.job, self.emit, self.warm = rid, job, emit, warm
        self.logits: Tensor | None = None
        self.state = None
        self.chunks: list[tuple[int, int]] | None = None  # planned on the first chunk
        self.cached = 0
        self.prompt_logprobs: list | None = None
        self.index: int | None = None  # in the Decoder, once decoding
        self.sent = 0  # generated tokens already reported


class Engine:
    """Continuous batching for one ``VisualRWKV``: ``submit`` jobs from any thread, events come back per request.

    Args:
        model: A ``VisualRWKV`` in eval mode.
        model_id: The name the API serves it under (also the prefix-cache key).
        decode_bytes: The tokenizer's ``decode_bytes``.
        max_batch: Requests prefilling or decoding at once; later ones wait in line.
        max_waiting: Requests that may wait in line; ``submit`` raises ``Busy`` beyond.
        prefill_chunk: Prompt tokens prefilled per turn of the loop.
        cache_bytes: Budget of the prefix cache (0 turns it off).
        compile: Compile the decode step (``step_function``).
        trace: Called from the loop with ``("prefill", tokens)`` for each chunk and ``("step", batch)`` for each
            decode step (for tests and profiling).

    Example:
        >>> from assemblies.models import create_assembly
        >>> from rwkvblocks.prompting import ByteTokenizer
        >>> model = create_assembly("visualrwkv_tiny").eval()
        >>> engine = Engine(model, "tiny", decode_bytes=ByteTokenizer().decode_bytes).start()
        >>> events = []
        >>> done = threading.Event()
        >>> rid = engine.submit(Job([85, 116, 2], SamplingConfig(max_new_tokens=3, stop_tokens=())),
        ...                     lambda e: events.append(e) or isinstance(e, (Finished, Failed)) and done.set())
        >>> done.wait(60), len(events[-1].result.tokens)
        (True, 3)
        >>> engine.stop()
    """

    def __init__(
        self,
        model,
        model_id: str,
        *,
        decode_bytes: Callable,
        max_batch: int = 16,
        max_waiting: int = 256,
        prefill_chunk: int = 256,
        cache_bytes: int = 256 << 20,
        compile: bool | str = False,
        trace: Callable[[str, int], None] | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_waiting", max_waiting), ("prefill_chunk", prefill_chunk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0 (0 = no prefix cache), got {cache_bytes}")
        self.model, self.model_id, self.decode_bytes = model, model_id, decode_bytes
        self.max_batch, self.max_waiting, self.prefill_chunk = max_batch, max_waiting, prefill_chunk
        self.cache = PrefixCache(cache_bytes) if cache_bytes else None
        self._step = step_function(model.lm, compile=compile)
        self._trace = trace
        self._device = model.lm.emb.weight.device
        self._decoder = self._new_decoder()
        self._lock = threading.Condition()
        self._inbox: list[_Run] = []
        self._cancels: set[int] = set()
        self._waiting: deque[_Run] = deque()
        self._warm: deque[_Run] = deque()  # warm-ups: prefilled when no request waits
        self._prefilling: list[_Run] = []
        self._decoding: dict[int, _Run] = {}  # Decoder index -> run
        self._runs: dict[int, _Run] = {}
        self._next = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.finished = self.failed = self.cancelled = self.warmed = 0
        self.peak_decoding = 0  # the largest decode batch so far

    def _new_decoder(self) -> Decoder:
        vocab = self.model.lm.vocab_size
        return Decoder(
            self._step, vocab_size=vocab, decode_bytes=self.decode_bytes, return_state=True, isolate_errors=True
        )

    # -- the other threads' side ------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the loop's thread (returns ``self``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rwkvblocks-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the loop; requests still open get ``Failed("the server is shutting down")``."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job, emit: Emit) -> int:
        """Queue ``job``; ``emit`` is called from the loop's thread with each event of it. Returns its id.

        Raises:
            Busy: ``max_waiting`` requests are already waiting.
            ValueError: the job's sampling settings do not fit the vocabulary.
        """
        job.config.check_vocab(self.model.lm.vocab_size)
        with self._lock:
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._inbox) + len(self._waiting) >= self.max_waiting:
                raise Busy(f"{self.max_waiting} requests are already waiting; try again later")
            rid, self._next = self._next, self._next + 1
            self._inbox.append(_Run(rid, job, emit))
            self._lock.notify()
        return rid

    def cancel(self, rid: int) -> None:
        """Drop request ``rid`` (its client went away); its slot is free before the next decode step."""
        with self._lock:
            self._cancels.add(rid)
            self._lock.notify()

    def stats(self) -> dict[str, Any]:
        """Requests waiting, prefilling and decoding; finished, failed and cancelled counts; the prefix cache."""
        cache = self.cache
        return {
            "waiting": len(self._waiting) + len(self._inbox),
            "prefilling": len(self._prefilling),
            "decoding": len(self._decoding),
            "peak_decoding": self.peak_decoding,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "warm_ups": {"waiting": len(self._warm), "done": self.warmed},
            "cache": None
            if cache is None
            else {
                "entries": len(cache),
                "bytes": cache.bytes,
                "max_bytes": cache.max_bytes,
                "hits": cache.hits,
                "misses": cache.misses,
            },
        }

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.no_grad():  # grad mode is per thread
            while True:
                with self._lock:
                    while not (self._stopping or self._inbox or self._cancels or self._busy()):
                        self._lock.wait()
                    if self._stopping:
                        break
                    inbox, self._inbox = self._inbox, []
                    cancels, self._cancels = self._cancels, set()
                for run in inbox:
                    self._runs[run.rid] = run
                    self._waiting.append(run)
                for rid in cancels:
                    self.cancelled += self._drop(rid)
                while self._waiting and len(self._prefilling) + len(self._decoding) < self.max_batch:
                    self._prefilling.append(self._waiting.popleft())
                if self._warm and not self._prefilling and len(self._decoding) < self.max_batch:
                    self._prefilling.append(self._warm.popleft())
                if self._prefilling:
                    self._prefill_one_chunk(self._prefilling[0])
                if self._decoding:
                    self._decode_step()
        for run in list(self._runs.values()):
            self._fail(run, "the server is shutting down")

    def _busy(self) -> bool:
        return bool(self._waiting or self._prefilling or self._decoding or self._warm)

    def _send(self, run: _Run, event: Event) -> None:
        try:
            run.emit(event)
        except Exception:  # the receiving side is gone (its event loop closed): nobody wants the rest
            self._drop(run.rid)

    def _drop(self, rid: int) -> bool:
        """Forget request ``rid`` wherever it is; returns whether it was still open."""
        run = self._runs.pop(rid, None)
        if run is None:
            return False
        if run in self._waiting:
            self._waiting.remove(run)
        if run in self._warm:
            self._warm.remove(run)
        if run in self._prefilling:
            self._prefilling.remove(run)
        if run.index is not None and self._decoding.pop(run.index, None) is not None:
            self._decoder.cancel(run.index)
        return True

    def _fail(self, run: _Run, message: str) -> None:
        self._drop(run.rid)
        self.failed += 1
        self._send(run, Failed(message))

    # -- prefill ------------------------------------------------------------------------------------

    def _prefill_one_chunk(self, run: _Run) -> None:
        job = run.job
        try:
            if run.chunks is None:
                self._plan(run)
            if run.chunks:
                a, b = run.chunks.pop(0)
                self._run_chunk(run, a, b)
                if self._trace is not None:
                    self._trace("prefill", b - a)
        except Exception as err:  # this request's prompt or images: the others are not touched
            self._fail(run, f"prefill failed: {type(err).__name__}: {err}")
            return
        if run.chunks:
            return
        self._prefilling.remove(run)
        if self.cache is not None and run.cached < len(job.ids):
            self.cache.put(self.model_id, job.image_keys, job.ids, run.logits, run.state)
        self._send(run, Started(run.cached, run.prompt_logprobs))
        if run.rid not in self._runs:
            return
        if not job.generate:
            self._finish(run, GenerationResult(prompt_tokens=len(job.ids)))
            return
        run.index = self._decoder.add(run.logits, run.state, job.config, prompt_tokens=len(job.ids))
        self._decoding[run.index] = run
        run.logits = run.state = None

    def _spans(self, job: Job) -> list[tuple[int, int]]:
        n = self.model.image_tokens
        return [(s, s + n) for s in job.image_starts]

    def _plan(self, run: _Run) -> None:
        """The chunks still to run: from the longest cached prefix, ``prefill_chunk`` tokens each, never cutting
        an image span, with a cut after the last image (that state is cached for later prompts)."""
        job, spans = run.job, self._spans(run.job)
        start = 0
        if self.cache is not None and job.score is None:
            length, logits, state = self.cache.longest_prefix(self.model_id, job.image_keys, job.ids)
            if length and not any(s < length < e for s, e in spans):
                start, run.logits, run.state = length, logits, state
        run.cached = start
        if job.score is not None:
            run.prompt_logprobs = []
        cut = spans[-1][1] if spans else 0
        chunks, a = [], start
        while a < len(job.ids):
            b = min(a + self.prefill_chunk, len(job.ids))
            for s, e in spans:
                if s < b < e:
                    b = e
            if a < cut < b:
                b = cut
            chunks.append((a, b))
            a = b
        run.chunks = chunks

    def _run_chunk(self, run: _Run, a: int, b: int) -> None:
        job, model = run.job, self.model
        tokens = torch.tensor([job.ids[a:b]], device=self._device)
        inside = [k for k, (s, _) in enumerate(self._spans(job)) if a <= s < b]
        if job.score is not None:
            if inside:
                raise ValueError("scoring prompts with images is not supported")
            out, state = model.lm(tokens, run.state)  # every position's logits [1, t, V]
            rows = out[0] if run.logits is None else torch.cat([run.logits, out[0]])
            logp = torch.log_softmax(rows[: len(job.ids[a:b]) - (run.logits is None)].float(), -1)
            targets = torch.tensor(job.ids[a + (run.logits is None) : b], device=logp.device)
            picked = logp.gather(1, targets[:, None])[:, 0].tolist()
            if job.score:
                values, ids = torch.topk(logp, min(job.score, logp.shape[-1]))
                tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
            else:
                tops = [[] for _ in picked]
            run.prompt_logprobs += list(zip(picked, tops))
            run.logits, run.state = out[:, -1], state
            return
        if inside:
            pixels = job.pixels[inside].to(self._device)
            spans = torch.tensor([[0, job.image_starts[k] - a, 0, model.image_tokens] for k in inside])
            run.logits, run.state = model.prefill(tokens, pixels, spans, run.state)
        else:
            run.logits, run.state = model.prefill(tokens, state=run.state)
        spans = self._spans(job)
        if self.cache is not None and spans and b == spans[-1][1] and b < len(job.ids):
            self.cache.put(self.model_id, job.image_keys, job.ids[:b], run.logits, run.state)

    # -- decode -------------------------------------------------------------------------------------

    def _decode_step(self) -> None:
        batch = len(self._decoding)
        self.peak_decoding = max(self.peak_decoding, batch)
        try:
            events = self._decoder.step()
        except Exception as err:  # the batched forward itself: fail its requests, start a fresh batch
            message = f"decode step failed: {type(err).__name__}: {err}"
            for run in list(self._decoding.values()):
                self._fail(run, message)
            self._decoding.clear()
            self._decoder = self._new_decoder()
            return
        if self._trace is not None:
            self._trace("step", batch)
        for event in events:
            run = self._decoding.get(event.index)
            if run is None:
                continue
            result = event.result if event.result is not None else self._decoder.result(event.index)
            tokens = result.tokens[run.sent :]
            logprobs = result.logprobs[run.sent :] if result.logprobs is not None else None
            run.sent = len(result.tokens)
            if event.piece or tokens:
                self._send(run, Update(event.piece, tokens, logprobs))
            if event.result is None or run.rid not in self._runs:
                continue
            del self._decoding[event.index]
            if result.finish_reason == "error":
                result.state = result.logits = None
                self._fail(run, f"decoding failed: {result.error}")
            else:
                self._keep_answer(run, result)
                self._finish(run, result)

    def _keep_answer(self, run: _Run, result: GenerationResult) -> None:
        """Cache the state after the answer (the last chosen token was fed unless it was a stop token)."""
        state, logits = result.state, result.logits
        result.state = result.logits = None
        if self.cache is None or not run.job.keep_answer or state is None or not result.tokens:
            return
        fed = result.tokens if isinstance(result.stop, int) else result.tokens[:-1]
        if fed:
            self.cache.put(self.model_id, run.job.image_keys, run.job.ids + fed, logits, state.clone())

    def _finish(self, run: _Run, result: GenerationResult) -> None:
        self._runs.pop(run.rid, None)
        if run.warm:
            self.warmed += 1
            return
        self.finished += 1
        self._send(run, Finished(result))
        job = run.job
        if self.cache is None or job.follow_up is None or result.finish_reason not in ("stop", "length"):
            return
        try:
            rebuilt = job.follow_up(result.text)
        except Exception:  # e.g. an empty answer: no follow-up can hold it
            rebuilt = None
        if rebuilt is None:
            return
        ids, starts = rebuilt
        warm = Job(ids, job.config, starts, job.pixels, job.image_keys, generate=False)
        with self._lock:
            rid, self._next = self._next, self._next + 1
        self._runs[rid] = _Run(rid, warm, lambda event: None, warm=True)
        self._warm.append(self._runs[rid])


def wait_idle(engine: Engine, timeout: float = 30) -> bool:
    """Wait until no request is waiting, prefilling or decoding (for tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if not (s["waiting"] or s["prefilling"] or s["decoding"]):
            return True
        time.sleep(0.01)
    return False
