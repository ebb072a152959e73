"""One shared upstream Watch per topic key: opened once, fanned out to every browser stream of this
replica that shows the topic.

- The Watch runs under the gateway's service identity; the manager checks each subscriber's
  membership (with the subscriber's identity) before attaching it, and per-user item types are never
  fanned out (gateway.stream.topics.PER_USER_TYPES).
- Every upstream event is rendered to JSON once (`gateway.stream.frames`); the bytes go to all
  subscribers. The entry keeps the topic's current items (to give a late subscriber a snapshot
  without a second upstream) and a bounded history of recent frames (to resume a subscriber whose
  token is recent without any snapshot).
- The first subscriber's resume token opens the upstream, so a page that reconnects after a gateway
  restart resumes without a refetch. A later subscriber that needs state this entry cannot give
  (the entry was opened from a token, so it never saw a snapshot) makes it reopen without a token.
- END rotate/draining/lagging reopen at once with the token (another replica when draining);
  transport errors reconnect with backoff 1 s → 30 s; RESET/END expired reopen without a token;
  PERMISSION_DENIED, NOT_FOUND-free terminal codes and END unauthorized fail the topic for everyone.
- Teardown: `linger_seconds` after the last subscriber leaves (a returning subscriber cancels it).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from foundry.common.v1 import watch_pb2

from gateway import metrics
from gateway.stream import frames
from gateway.stream.frames import Frame
from gateway.stream.topics import Topic
from services.platform import context as request_context
from services.platform.logging import get_logger

log = get_logger("foundry.gateway.upstream")

TERMINAL_CODES = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
_RESUMABLE_ENDS = {
    watch_pb2.WATCH_END_REASON_ROTATE: "rotate",
    watch_pb2.WATCH_END_REASON_DRAINING: "draining",
    watch_pb2.WATCH_END_REASON_LAGGING: "lagging",
}
OpenStream = Callable[[Topic, str], Any]  # (topic, resume token) -> grpc.aio UnaryStreamCall


class Subscriber(Protocol):
    """A browser stream attached to topics (gateway.stream.connection.Connection)."""

    def deliver(self, label: str, frame: Frame | None, token: str | None, *, drop: bool = False) -> None: ...


class _Ended(Exception):
    """The upstream ended with END; `resume` is the token to reopen with ('' = new snapshot)."""

    def __init__(self, reason: str, resume: str) -> None:
        super().__init__(reason)
        self.reason, self.resume = reason, resume


class _Failed(Exception):
    """The upstream refused the topic for good (END unauthorized)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class SharedUpstream:
    """The shared upstream of one topic key. Not thread-safe; lives on the event loop."""

    def __init__(
        self,
        topic: Topic,
        open_stream: OpenStream,
        *,
        linger_seconds: float,
        on_stopped: Callable[[SharedUpstream, asyncio.Task[None] | None], None],
        history_size: int = 256,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.topic = topic
        self.kind = topic.spec.kind
        self.label = topic.label
        self._open = open_stream
        self._linger = linger_seconds
        self._on_stopped = on_stopped
        self._backoff = (backoff_initial, backoff_max)
        self.subscribers: dict[Subscriber, None] = {}
        self.token = ""
        self.start_token = ""
        self.complete = False
        self.items: dict[str, bytes] = {}
        self.history: collections.deque[tuple[str, Frame | None]] = collections.deque(maxlen=history_size)
        self._truncated = False
        self._pending: dict[str, bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        self.opened = 0  # upstream calls made (first open + reconnects)
        self.stopped = False

    # -- subscribers ---------------------------------------------------------------------------
    def attach(self, subscriber: Subscriber, token: str) -> None:
        """Attach a subscriber that has applied everything up to `token` ('' = it has nothing)."""
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        self.subscribers[subscriber] = None
        metrics.SUBSCRIBERS.labels(self.kind).inc()
        if self._task is None:
            self._start(token)
            return
        if token and token == self.token:
            return
        if token:
            replay = self._history_after(token)
            if replay is not None:
                for past_token, frame in replay:
                    subscriber.deliver(self.label, frame, past_token)
                return
        if self.complete and self._pending is None:
            frame = frames.snapshot(self.label, list(self.items.values()))
            metrics.EVENTS_RENDERED.labels(self.kind).inc()
            subscriber.deliver(self.label, frame, self.token)
        elif self._pending is None and self.start_token:
            self._restart("")  # a resumed upstream has no full state to give: bootstrap it
        # else: a snapshot is on its way to every subscriber

    def detach(self, subscriber: Subscriber) -> None:
        """Detach; the upstream lingers `linger_seconds` after the last subscriber leaves."""
        if self.subscribers.pop(subscriber, 0) is None:
            metrics.SUBSCRIBERS.labels(self.kind).dec()
        if self.subscribers or self.stopped:
            return
        if self._linger <= 0:
            self.stop()
        else:
            self._linger_handle = asyncio.get_running_loop().call_later(self._linger, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger_handle = None
        if not self.subscribers:
            self.stop()

    def _history_after(self, token: str) -> list[tuple[str, Frame | None]] | None:
        entries = list(self.history)
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][0] == token:
                return entries[i + 1 :]
        if token == self.start_token and not self._truncated:
            return entries
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, token: str) -> None:
        metrics.UPSTREAM_STREAMS.labels(self.kind).inc()
        self._begin(token)

    def _begin(self, token: str) -> None:
        self.token = self.start_token = token
        self.history.clear()
        self._truncated = False
        self._pending = None
        if not token:
            self.complete = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(token), name=f"upstream:{self.topic.key}"
        )

    def _restart(self, token: str) -> None:
        old = self._task
        self._begin(token)
        if old is not None:
            old.cancel()

    def stop(self) -> None:
        """Close the upstream now (idempotent); the manager forgets this entry."""
        if self.stopped:
            return
        self.stopped = True
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        metrics.UPSTREAM_STREAMS.labels(self.kind).dec()
        self._on_stopped(self, task)

    # -- the upstream loop ---------------------------------------------------------------------
    async def _run(self, resume: str) -> None:
        attempt = 0
        with request_context.bound(caller=None):  # service identity: shared by many users
            while True:
                call = self._open(self.topic, resume)
                self.opened += 1
                self._pending = None
                received = 0
                try:
                    async for response in _events(call):
                        self._apply(response.event)
                        received += 1
                        if attempt:
                            attempt = 0
                            self._fan(frames.status(self.label, "live"), None)
                    raise _Ended("cut", self.token)  # EOF without END: the stream was cut off
                except _Ended as ended:
                    if ended.reason == "cut" or not received:  # an END at once must not spin
                        attempt += 1
                        await self._backoff_sleep(attempt, ended.reason.upper(), "upstream ended at once")
                    metrics.RECONNECTS.labels(self.kind, ended.reason).inc()
                    resume = ended.resume
                except _Failed as failed:
                    self._fail(failed.code, failed.message)
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in TERMINAL_CODES:
                        self._fail(exc.code().name, exc.details() or exc.code().name)
                        return
                    attempt += 1
                    metrics.RECONNECTS.labels(self.kind, exc.code().name.lower()).inc()
                    await self._backoff_sleep(attempt, exc.code().name, exc.details() or "")
                    resume = self.token
                finally:
                    call.cancel()

    async def _backoff_sleep(self, attempt: int, code: str, message: str) -> None:
        delay = min(self._backoff[0] * 2 ** (attempt - 1), self._backoff[1])
        log.info("upstream_reconnecting", topic=self.topic.key, attempt=attempt, delay_s=delay, code=code)
        self._fan(
            frames.status(
                self.label, "reconnecting", attempt=attempt, retryInSeconds=delay, code=code, message=message
            ),
            None,
        )
        await asyncio.sleep(delay)

    def _apply(self, event: watch_pb2.WatchEvent) -> None:
        kind = event.kind
        if kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT:
            if self._pending is None:
                self._pending = {}
            for item in event.items:
                rendered = frames.item_json(item)
                if rendered is not None:
                    self._pending[item.name] = rendered
        elif kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END:
            self.items, self._pending = self._pending or {}, None
            self.complete = True
            self.token = self.start_token = event.resume_token
            self.history.clear()
            self._truncated = False
            self._fan(frames.snapshot(self.label, list(self.items.values())), self.token, rendered=True)
        elif kind in (watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE):
            frame: Frame | None = None
            for item in event.items:
                if kind == watch_pb2.WATCH_EVENT_KIND_DELETE:
                    self.items.pop(item.name, None)
                    frame = frames.delete(self.label, item.name)
                elif (rendered := frames.item_json(item)) is not None:
                    self.items[item.name] = rendered
                    frame = frames.upsert(self.label, rendered)
            self._record(event.resume_token, frame)
        elif kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK:
            self._record(event.resume_token, None)
        elif kind == watch_pb2.WATCH_EVENT_KIND_RESET:
            self.items.clear()
            self.complete = False
            self.token = ""
            self.history.clear()
            self._fan(frames.reset(self.label, event.message or "history expired"), "", rendered=True)
        elif kind == watch_pb2.WATCH_EVENT_KIND_END:
            if event.end_reason in _RESUMABLE_ENDS:
                raise _Ended(_RESUMABLE_ENDS[event.end_reason], event.resume_token or self.token)
            if event.end_reason == watch_pb2.WATCH_END_REASON_EXPIRED:
                raise _Ended("expired", "")
            raise _Failed("PERMISSION_DENIED", event.message or "access to the topic ended")

    def _record(self, token: str, frame: Frame | None) -> None:
        self.token = token
        if len(self.history) == self.history.maxlen:
            self._truncated = True
        self.history.append((token, frame))
        self._fan(frame, token, rendered=frame is not None)

    def _fan(self, frame: Frame | None, token: str | None, *, rendered: bool = False) -> None:
        if rendered:
            metrics.EVENTS_RENDERED.labels(self.kind).inc()
        for subscriber in list(self.subscribers):
            subscriber.deliver(self.label, frame, token)
        if frame is not None and self.subscribers:
            metrics.EVENTS_FANNED_OUT.labels(self.kind).inc(len(self.subscribers))

    def _fail(self, code: str, message: str) -> None:
        log.info("upstream_failed", topic=self.topic.key, code=code, message=message)
        frame = frames.error(self.label, code, message)
        for subscriber in list(self.subscribers):
            subscriber.deliver(self.label, frame, None, drop=True)
            metrics.SUBSCRIBERS.labels(self.kind).dec()
        self.subscribers.clear()
        self._task = None  # we are that task: don't cancel ourselves
        self.stop()


async def _events(call: Any) -> AsyncIterator[Any]:
    async for response in call:
        yield response
