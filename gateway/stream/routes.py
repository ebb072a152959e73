"""HTTP routes of the browser stream:

    GET  /v1/stream?topic=<label>&topic=…   (or ?topics=a,b; resume with Last-Event-ID or ?resume=<id>)
    POST /v1/streams/{stream}:subscribe     {"topics": ["task:organizations/acme/tasks/t1", …]}
    POST /v1/streams/{stream}:unsubscribe   {"topics": [...]}

The SSE response races the writer against `receive()` for `http.disconnect`, so a tab that goes away
releases its topic shares in the event-loop tick that receives the disconnect (no polling of
`is_disconnected()`, no waiting for a write to fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_response
from gateway.runtime import GatewayRuntime
from gateway.stream.frames import decode_position
from gateway.stream.manager import SubscriptionManager

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: flush every frame; the app adds no compression either
]


class SseResponse:
    """Stream `chunks` as text/event-stream; `on_close` runs as soon as the stream ends either way."""

    def __init__(
        self, chunks: AsyncIterator[bytes], on_close: Callable[[], None], runtime: GatewayRuntime
    ) -> None:
        self._chunks = chunks
        self._on_close = on_close
        self._runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._runtime.state
        state.open_streams += 1
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def write() -> None:
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self._on_close()

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            # Right here, in the tick the server hands us the disconnect: the shares are free before
            # this task's completion has to wake anybody else.
            close()

        writer = asyncio.create_task(write(), name="sse:write")
        watcher = asyncio.create_task(disconnected(), name="sse:disconnect")
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            close()  # first: the shares are free before anything else is awaited
            state.open_streams -= 1
            for task in (writer, watcher):
                task.cancel()
            for task in (writer, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task


def _manager(request: Request) -> SubscriptionManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def _wanted(request: Request) -> list[tuple[str, str]]:
    """The stream's topics with their resume tokens: every topic of the position (resumed), then any
    `topic` not in it (from a snapshot). A tab whose `:subscribe` reached another gateway replica
    (404) reopens with its position and all its topics, so the new stream has them wherever it lands."""
    # Last-Event-ID first: EventSource sends it only when it reconnects by itself, and then it is
    # newer than a `?resume=` the page put in the URL when it opened this EventSource.
    position = request.headers.get("last-event-id") or request.query_params.get("resume", "")
    tokens = decode_position(position)
    labels = request.query_params.getlist("topic")
    for joined in request.query_params.getlist("topics"):
        labels.extend(t for t in joined.split(",") if t)
    return list(tokens.items()) + [(label, "") for label in dict.fromkeys(labels) if label not in tokens]


async def open_stream(request: Request) -> Response | SseResponse:
    runtime: GatewayRuntime = request.app.state.runtime
    manager = _manager(request)
    try:
        if runtime.state.draining:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE, "gateway is draining; reconnect", reason="DRAINING"
            )
        principal = await runtime.require_principal(request)
    except GatewayError as exc:
        return error_response(exc)
    wanted = _wanted(request)
    conn = manager.connect(principal, resume=dict(wanted))
    try:
        await manager.subscribe(conn, wanted)
    except BaseException:
        manager.release(conn)
        raise
    return SseResponse(conn.frames(), lambda: manager.release(conn), runtime)


async def _topics_body(request: Request) -> list[str]:
    try:
        body = json.loads(await request.body() or b"{}")
        topics = body.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ValueError
        return topics
    except (ValueError, AttributeError) as exc:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            'body must be {"topics": ["<topic>", ...]}',
            reason="BAD_REQUEST_BODY",
        ) from exc


async def change_topics(request: Request) -> Response:
    runtime: GatewayRuntime = request.app.state.runtime
    manager = _manager(request)
    try:
        principal = await runtime.require_principal(request)
        conn = manager.connection(request.path_params["stream"], principal)
        topics = await _topics_body(request)
        errors: list[dict[str, str]] = []
        if request.path_params["verb"] == "subscribe":
            errors = await manager.subscribe(conn, [(t, "") for t in topics])
        elif request.path_params["verb"] == "unsubscribe":
            manager.unsubscribe(conn, topics)
        else:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, "unknown verb", reason="NO_ROUTE")
    except GatewayError as exc:
        return error_response(exc)
    return JSONResponse({"stream": conn.id, "topics": list(conn.tokens), "errors": errors})
