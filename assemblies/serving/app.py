"""The ASGI app (Starlette, run by uvicorn): the OpenAI endpoints, server-sent events, the chat page at ``/``.

Endpoints: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /health`` (the loop's queue and cache counters), ``GET /`` (the page, ``static/``). Streams are
``text/event-stream``: ``data: {chunk}`` events, then ``data: [DONE]``; an error after the stream began is sent as
``data: {"error": ...}``. A client that goes away (streamed or not) has its requests dropped from the batch before
the next decode step.

Guards (an ASGI middleware in front of everything): the API key (``Authorization: Bearer KEY``, compared with
``hmac.compare_digest``) on ``/v1/``; the request body read up to ``max_body_bytes`` and refused beyond (413) before
any parsing; nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .engine import Busy, Engine, Finished, Started
from .protocol import (
    ApiError,
    Choice,
    Prepared,
    Served,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_logprobs,
    completion_response,
    usage,
)

__all__ = ["STATIC", "create_app"]

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    # the page loads nothing from elsewhere: scripts, styles and requests from this server only
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "script-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _Guard:
    """API key on ``/v1/`` and the request-body size limit, before the app sees the request."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.key = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                message = "Incorrect or missing API key: send Authorization: Bearer KEY"
                return await _error(ApiError(401, message, code="invalid_api_key"))(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_large = ApiError(
            413,
            f"the request body is larger than the limit of {self.max_body_bytes} bytes (--max-body-bytes)",
            code="request_too_large",
        )
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await _error(too_large)(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return await _error(too_large)(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's own messages (http.disconnect)

        await self.app(scope, replay, send)


class _EventStream(StreamingResponse):
    """Server-sent events that stop when the client disconnects, whatever the ASGI version; ``on_close`` runs
    however the stream ends (it drops the request's unfinished jobs)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as group:

                async def stream():
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        except OSError:  # the connection broke while sending
            pass
        finally:
            self.on_close()


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Api:
    def __init__(self, engine: Engine, served: Served):
        self.engine, self.served = engine, served
        self.decode_bytes = served.tokenizer.decode_bytes

    # -- plain endpoints --------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.served.model_id, **self.engine.stats()})

    def _card(self) -> dict[str, Any]:
        return {"id": self.served.model_id, "object": "model", "created": 0, "owned_by": "rwkvblocks"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name != self.served.model_id:
            raise ApiError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
        return JSONResponse(self._card())

    # -- generation ---------------------------------------------------------------------------------

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"We could not parse the JSON body of your request: {err}") from None

    async def chat(self, request: Request) -> Response:
        body = await self._json(request)
        return await self._answer(request, await run_in_threadpool(self.served.prepare_chat, body))

    async def completions(self, request: Request) -> Response:
        body = await self._json(request)
        return await self._answer(request, await run_in_threadpool(self.served.prepare_completion, body))

    async def _answer(self, request: Request, prepared: Prepared) -> Response:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        choices = [Choice(self.decode_bytes) for _ in prepared.jobs]
        rids: list[int] = []

        def cancel_unfinished() -> None:
            for rid, choice in zip(rids, choices):
                if not choice.done:
                    self.engine.cancel(rid)

        try:
            for k, job in enumerate(prepared.jobs):
                emit = lambda event, k=k: loop.call_soon_threadsafe(queue.put_nowait, (k, event))  # noqa: E731
                rids.append(self.engine.submit(job, emit))
        except Busy as err:
            cancel_unfinished()
            raise ApiError(503, str(err), code="server_busy") from None
        except ValueError as err:
            cancel_unfinished()
            raise ApiError(400, str(err)) from None
        if prepared.stream:
            events = self._chat_stream if prepared.kind == "chat" else self._completion_stream
            return _EventStream(events(prepared, queue, choices), cancel_unfinished)
        try:
            gone = await self._collect(request, queue, choices)
        finally:
            cancel_unfinished()
        if gone:
            return Response(status_code=499)  # nobody reads it
        failed = [c.error for c in choices if c.error is not None]
        if failed:
            raise ApiError(500, f"the request failed: {failed[0]}", code="generation_failed")
        model_id = self.served.model_id
        if prepared.kind == "chat":
            return JSONResponse(chat_response(prepared, choices[0], model_id))
        return JSONResponse(completion_response(prepared, choices, model_id))

    async def _collect(self, request: Request, queue: asyncio.Queue, choices: list[Choice]) -> bool:
        """Feed events to the choices until all are done; ``True`` when the client disconnected first."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            while not all(c.done for c in choices):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return True
                k, event = getter.result()
                choices[k].on(event)
            return False
        finally:
            watcher.cancel()

    async def _chat_stream(self, prepared: Prepared, queue: asyncio.Queue, choices: list[Choice]):
        model_id, choice = self.served.model_id, choices[0]
        yield _sse(chat_chunk(prepared, model_id, {"role": "assistant", "content": ""}))
        while not choice.done:
            _, event = await queue.get()
            piece, released = choice.on(event)
            if choice.error is not None:
                yield _sse(ApiError(500, f"the request failed: {choice.error}", code="generation_failed").body())
                break
            if isinstance(event, Finished):
                reason = "length" if event.result.finish_reason == "length" else "stop"
                yield _sse(chat_chunk(prepared, model_id, {}, released, self.decode_bytes, reason))
            elif piece or released:
                yield _sse(chat_chunk(prepared, model_id, {"content": piece}, released, self.decode_bytes))
        if prepared.include_usage and choice.error is None:
            yield _sse(chat_chunk(prepared, model_id, {}, usage=usage(choices, prepared.jobs)))
        yield "data: [DONE]\n\n"

    async def _completion_stream(self, prepared: Prepared, queue: asyncio.Queue, choices: list[Choice]):
        model_id, top = self.served.model_id, prepared.logprobs
        echo = prepared.echo
        while not all(c.done for c in choices):
            k, event = await queue.get()
            choice, job = choices[k], prepared.jobs[k]
            piece, released = choice.on(event)
            if choice.error is not None:
                yield _sse(ApiError(500, f"the request failed: {choice.error}", code="generation_failed").body())
                break
            shift = len(echo[k]) if echo is not None else 0
            logprobs = None
            if isinstance(event, Started):
                if echo is not None:
                    if top is not None:
                        scored = (job.ids, choice.prompt_logprobs)
                        logprobs = completion_logprobs(self.decode_bytes, top, [], 0, scored)
                    yield _sse(completion_chunk(prepared, model_id, k, echo[k], logprobs))
                continue
            if top is not None and released:
                logprobs = completion_logprobs(self.decode_bytes, top, released, shift)
            if isinstance(event, Finished):
                reason = "length" if event.result.finish_reason == "length" or not job.generate else "stop"
                yield _sse(completion_chunk(prepared, model_id, k, "", logprobs, reason))
            elif piece or released:
                yield _sse(completion_chunk(prepared, model_id, k, piece, logprobs))
        if prepared.include_usage and not any(c.error for c in choices):
            yield _sse(completion_chunk(prepared, model_id, 0, "", usage=usage(choices, prepared.jobs)))
        yield "data: [DONE]\n\n"


async def _api_error(request: Request, err: ApiError) -> Response:
    return _error(err)


async def _http_error(request: Request, err: HTTPException) -> Response:
    path = request.url.path
    message = f"no route {request.method} {path}" if err.status_code in (404, 405) else str(err.detail)
    return _error(ApiError(err.status_code, message, code="not_found" if err.status_code == 404 else None))


async def _server_error(request: Request, err: Exception) -> Response:
    return _error(ApiError(500, f"internal error: {type(err).__name__}: {err}"))


def create_app(engine: Engine, served: Served, *, api_key: str | None = None, max_body_bytes: int = 16 << 20):
    """The ASGI app over a started or unstarted ``Engine`` (the app's lifespan starts and stops it).

    Args:
        engine: The decode loop.
        served: The model as the API sees it (``protocol.Served``).
        api_key: Required as ``Authorization: Bearer KEY`` on ``/v1/`` when given.
        max_body_bytes: Request bodies larger than this are refused with 413.
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    api = _Api(engine, served)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)

    routes = [
        Route("/", api.index),
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/models/{name:path}", api.model),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return _Guard(app, api_key=api_key, max_body_bytes=max_body_bytes)
