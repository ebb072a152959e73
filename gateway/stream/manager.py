"""The replica's subscription manager: browser streams (Connections) ↔ shared upstreams by topic key.

    manager = SubscriptionManager(open_stream, authorize, linger_seconds=30)
    conn = manager.connect(principal)
    await manager.subscribe(conn, [("organization:organizations/acme", "")])
    ... conn.frames() ...
    manager.release(conn)          # synchronous: the tab's shares are freed in the same tick

Each subscriber's membership is checked (`authorize(principal, "organizations/<id>")`, with the
subscriber's own identity) before it is attached to a shared upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from gateway import metrics
from gateway.auth.sessions import Principal
from gateway.errors import GatewayError
from gateway.stream import frames
from gateway.stream.connection import Connection
from gateway.stream.topics import Topic, parse
from gateway.stream.upstream import DEFAULT_BACKOFF, OpenStream, SharedUpstream, backoff_delay
from services.platform.aio import cancel_and_log
from services.platform.errors import FoundryError
from services.platform.logging import get_logger

log = get_logger("foundry.gateway.stream")

Authorize = Callable[[Principal, str], Awaitable[None]]  # raises when the principal is not a member


class SubscriptionManager:
    """Owns every Connection and SharedUpstream of this gateway replica."""

    def __init__(
        self,
        open_stream: OpenStream,
        authorize: Authorize,
        *,
        linger_seconds: float = 30.0,
        heartbeat_seconds: float = 15.0,
        max_stream_seconds: float = 600.0,
        queue_size: int = 1000,
        history_size: int = 256,
        backoff_initial: float = DEFAULT_BACKOFF[0],
        backoff_max: float = DEFAULT_BACKOFF[1],
    ) -> None:
        self._open = open_stream
        self._authorize = authorize
        self._linger = linger_seconds
        self._max_stream_seconds = max_stream_seconds
        self._queue_size = queue_size
        self._history_size = history_size
        self._backoff = (backoff_initial, backoff_max)
        self.heartbeat_seconds = heartbeat_seconds
        self.upstreams: dict[str, SharedUpstream] = {}
        self.connections: dict[str, Connection] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.draining = False

    @property
    def linger_seconds(self) -> float:
        """How long an upstream outlives its last subscriber."""
        return self._linger

    def backoff_delay(self, attempt: int) -> float:
        """The wait before an upstream's reconnect `attempt` (1-based), as every upstream uses it."""
        return backoff_delay(attempt, *self._backoff)

    def connect(self, principal: Principal, resume: dict[str, str] | None = None) -> Connection:
        """A new tab stream (its `hello` frame queued first). `resume` ({topic: token}, what the tab
        is about to subscribe) is the hello's id: a tab cut off right after the hello reconnects
        with every topic and token it came with, not with an empty position."""
        conn = Connection(
            principal,
            heartbeat_seconds=self.heartbeat_seconds,
            max_stream_seconds=self._max_stream_seconds,
            queue_size=self._queue_size,
        )
        self.connections[conn.id] = conn
        metrics.CONNECTIONS.inc()
        position = frames.encode_position(resume) if resume else None
        conn.push(frames.hello(conn.id, [], self.heartbeat_seconds), position=position)
        return conn

    def connection(self, stream_id: str, principal: Principal) -> Connection:
        """The open stream `stream_id` of this principal; GatewayError(NOT_FOUND) otherwise."""
        conn = self.connections.get(stream_id)
        if conn is None or conn.principal.auth_session != principal.auth_session:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"no open stream {stream_id} on this gateway",
                reason="STREAM_NOT_FOUND",
            )
        return conn

    async def subscribe(self, conn: Connection, wanted: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
        """Attach `conn` to topics (label, resume token); returns per-topic errors (also sent as frames)."""
        errors: list[dict[str, str]] = []
        for label, token in wanted:
            if label in conn.topics:
                continue
            try:
                topic = parse(label, auth_session=conn.principal.auth_session, caller=conn.principal.caller)
                if topic.organization is not None:
                    await self._authorize(conn.principal, topic.organization)
            except (GatewayError, FoundryError, grpc.RpcError) as exc:
                code, message = _describe(exc)
                errors.append({"topic": label, "code": code, "message": message})
                conn.push(frames.error(label, code, message))
                continue
            if conn.end_reason is not None or conn.id not in self.connections:
                break  # the tab went away while we checked
            self._attach(conn, topic, token)
        conn.push(frames.subscribed(list(conn.tokens)))
        return errors

    def _attach(self, conn: Connection, topic: Topic, token: str) -> None:
        conn.topics[topic.label] = topic
        conn.tokens[topic.label] = token
        upstream = self.upstreams.get(topic.key)
        if upstream is None:
            upstream = SharedUpstream(
                topic,
                self._open,
                linger_seconds=self._linger,
                on_stopped=self._stopped,
                retire=self._retire,
                history_size=self._history_size,
                backoff_initial=self._backoff[0],
                backoff_max=self._backoff[1],
            )
            self.upstreams[topic.key] = upstream
        upstream.attach(conn, token)

    def unsubscribe(self, conn: Connection, labels: Iterable[str]) -> None:
        for label in labels:
            topic = conn.topics.pop(label, None)
            conn.tokens.pop(label, None)
            if topic is not None and (upstream := self.upstreams.get(topic.key)) is not None:
                upstream.detach(conn)
        conn.push(frames.subscribed(list(conn.tokens)))

    def release(self, conn: Connection) -> None:
        """The tab is gone: detach it from every upstream now (synchronously)."""
        if self.connections.pop(conn.id, None) is None:
            return
        metrics.CONNECTIONS.dec()
        for topic in list(conn.topics.values()):
            if (upstream := self.upstreams.get(topic.key)) is not None:
                upstream.detach(conn)
        conn.topics.clear()

    def _stopped(self, upstream: SharedUpstream) -> None:
        if self.upstreams.get(upstream.topic.key) is upstream:
            del self.upstreams[upstream.topic.key]

    def _retire(self, task: asyncio.Task[None]) -> None:
        """A cancelled upstream task (shared or catch-up) still unwinding; `close` awaits it."""
        if not task.done():
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def end_all(self, reason: str) -> None:
        """End every tab stream with `reason` (`draining` when the gateway drains)."""
        for conn in list(self.connections.values()):
            conn.end(reason)

    def drain(self) -> None:
        self.draining = True
        self.end_all("draining")

    async def close(self) -> None:
        """Stop every upstream and wait for their tasks."""
        for upstream in list(self.upstreams.values()):
            upstream.stop()
        # Already cancelled: cancel_and_wait re-cancels a task that swallowed it, for at most 10 s.
        await cancel_and_log(list(self._stopping), log, "upstream_tasks_ignored_cancel")

    def stats(self) -> dict[str, Any]:
        """{"connections": n, "upstreams": {topic key: subscriber count}}."""
        return {
            "connections": len(self.connections),
            "upstreams": {key: len(u.subscribers) for key, u in self.upstreams.items()},
        }


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, GatewayError):
        return exc.code.name, exc.message
    if isinstance(exc, FoundryError):
        return exc.code.name, exc.message
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        return code.name, (exc.details() if hasattr(exc, "details") else "") or code.name
    return "INTERNAL", str(exc)
