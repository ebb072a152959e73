"""One shared upstream Watch per topic key: opened once, fanned out to every browser stream of this
replica that shows the topic.

- The Watch runs under the gateway's service identity; the manager checks each subscriber's
  membership (with the subscriber's identity) before attaching it, and per-user item types are never
  fanned out (gateway.stream.topics.PER_USER_TYPES). The exception is a per-user topic (`unread`):
  its key names one user, its Watch runs as that user, and it carries only that user's items.
- Every upstream event is rendered to JSON once (`gateway.stream.frames`); the bytes go to all
  subscribers. The entry keeps the topic's current items (to give a late subscriber a snapshot
  without a second upstream) and a bounded history of recent frames (to resume a subscriber whose
  token is recent without any snapshot).
- The first subscriber's resume token opens the upstream, so a page that reconnects after a gateway
  restart resumes without a refetch.

Every later subscriber resumes from its own token, gap-free, and never forces a snapshot on the
others (a page that comes back after a gateway restart must not refetch because another page of the
same topic came back with a different token):

- its token is the shared position: it just joins;
- its token is in the history: the frames after it are replayed to it, then it joins;
- it has no token and the entry holds the full state (or a snapshot is on its way): it gets that
  snapshot;
- otherwise (a token this entry never saw, or no token while the entry was itself resumed from a
  token and so never had the full state) it is *caught up*: a short-lived private upstream Watch
  opened from its own token ('' = a private snapshot) feeds only that subscriber, which meanwhile
  gets nothing from the shared fan-out. As soon as the two streams meet, the private Watch is closed
  and the subscriber joins the shared fan-out: when the private stream delivers the shared
  position, or a token of the history (the history after it is replayed first), or when the shared
  stream delivers the token the private one last delivered (the private one was ahead).

Why this design: resume tokens are opaque and may only be compared for equality, so "resume the
shared upstream from the oldest token and filter what each subscriber already has" cannot be done
(nobody can tell which token is older). Equality is enough for the catch-up, because a topic's
versions are gap-free and a token names one version: two Watches of a topic deliver the same token
for the same version, so a private stream that walks the versions from its token meets the shared
one. Until then the subscriber still gets every change, from its own stream. A catch-up that meets
the shared stream exactly at its position with a full state (a private snapshot) also hands that
state to a shared upstream that lacked it, so the next subscriber without a token gets a snapshot
from memory.

- END rotate/draining/lagging reopen at once with the token (another replica when draining);
  transport errors reconnect with backoff (`backoff_delay`: 1, 2, 4, 8, 16, 30, 30 … s by default);
  RESET/END expired reopen without a token; PERMISSION_DENIED and the other terminal codes, and END
  unauthorized, fail the topic for everyone on it (a private catch-up's failure: for its subscriber).
- Teardown: `linger_seconds` after the last subscriber leaves (a returning subscriber cancels it).
"""

from __future__ import annotations

import abc
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
DEFAULT_BACKOFF = (1.0, 30.0)  # first reconnect delay, cap (seconds)


def backoff_delay(
    attempt: int, initial: float = DEFAULT_BACKOFF[0], maximum: float = DEFAULT_BACKOFF[1]
) -> float:
    """Seconds to wait before reconnect `attempt` (1 = the first after a failure): doubling, capped."""
    return float(min(initial * 2 ** (attempt - 1), maximum))


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


class _Follower(abc.ABC):
    """Follows one topic's upstream Watch across reconnects: keeps its token and items, renders each
    event once and hands the frames to the hooks a subclass implements (`SharedUpstream` fans them
    out to every subscriber, a private catch-up feeds its one subscriber)."""

    def __init__(self, topic: Topic, open_stream: OpenStream, backoff: tuple[float, float]) -> None:
        self.topic = topic
        self.kind = topic.spec.kind
        self.label = topic.label
        self._open = open_stream
        self._backoff = backoff
        self.token = ""
        self.complete = False  # `items` is the topic's full state at `token`
        self.items: dict[str, bytes] = {}
        self._pending: dict[str, bytes] | None = None  # snapshot pages being received
        self.opened = 0  # upstream calls made (first open + reconnects)
        self.closed = False

    def backoff_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, *self._backoff)

    # -- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _on_snapshot(self, token: str) -> None:
        """`items` became the full state at `token`."""

    @abc.abstractmethod
    def _on_change(self, token: str, frame: Frame | None) -> None:
        """A change (`frame`) or a bookmark (None) at `token`."""

    @abc.abstractmethod
    def _on_reset(self, frame: Frame) -> None:
        """The state is void; a snapshot follows."""

    @abc.abstractmethod
    def _on_status(self, frame: Frame) -> None:
        """Upstream health (reconnecting / live)."""

    @abc.abstractmethod
    def _fail(self, code: str, message: str) -> None:
        """The upstream refused the topic for good."""

    # -- the upstream loop ---------------------------------------------------------------------
    async def _run(self, resume: str) -> None:
        attempt = 0
        # Service identity (shared by many users), or the one user of a per-user topic.
        with request_context.bound(caller=self.topic.caller):
            while not self.closed:
                call = self._open(self.topic, resume)
                self.opened += 1
                self._pending = None
                received = 0
                try:
                    async for response in _events(call):
                        if self.closed:
                            return
                        self._apply(response.event)
                        if self.closed:  # a hook closed us (a catch-up that joined)
                            return
                        received += 1
                        if attempt:
                            attempt = 0
                            self._on_status(frames.status(self.label, "live"))
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
        delay = self.backoff_delay(attempt)
        log.info("upstream_reconnecting", topic=self.topic.key, attempt=attempt, delay_s=delay, code=code)
        self._on_status(
            frames.status(
                self.label, "reconnecting", attempt=attempt, retryInSeconds=delay, code=code, message=message
            )
        )
        await asyncio.sleep(delay)

    def _apply(self, event: watch_pb2.WatchEvent) -> None:
        kind = event.kind
        if kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT:
            if self._pending is None:
                self._pending = {}
            for item in event.items:
                rendered = frames.item_json(item, per_user_topic=self.topic.spec.per_user)
                if rendered is not None:
                    self._pending[item.name] = rendered
        elif kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END:
            self.items, self._pending = self._pending or {}, None
            self.complete = True
            self.token = event.resume_token
            self._on_snapshot(self.token)
        elif kind in (watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE):
            frame: Frame | None = None
            for item in event.items:
                if kind == watch_pb2.WATCH_EVENT_KIND_DELETE:
                    self.items.pop(item.name, None)
                    frame = frames.delete(self.label, item.name)
                elif (
                    rendered := frames.item_json(item, per_user_topic=self.topic.spec.per_user)
                ) is not None:
                    self.items[item.name] = rendered
                    frame = frames.upsert(self.label, rendered)
            self.token = event.resume_token
            self._on_change(self.token, frame)
        elif kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK:
            self.token = event.resume_token
            self._on_change(self.token, None)
        elif kind == watch_pb2.WATCH_EVENT_KIND_RESET:
            self.items.clear()
            self.complete = False
            self.token = ""
            self._on_reset(frames.reset(self.label, event.message or "history expired"))
        elif kind == watch_pb2.WATCH_EVENT_KIND_END:
            if event.end_reason in _RESUMABLE_ENDS:
                raise _Ended(_RESUMABLE_ENDS[event.end_reason], event.resume_token or self.token)
            if event.end_reason == watch_pb2.WATCH_END_REASON_EXPIRED:
                raise _Ended("expired", "")
            raise _Failed("PERMISSION_DENIED", event.message or "access to the topic ended")


class SharedUpstream(_Follower):
    """The shared upstream of one topic key. Not thread-safe; lives on the event loop."""

    def __init__(
        self,
        topic: Topic,
        open_stream: OpenStream,
        *,
        linger_seconds: float,
        on_stopped: Callable[[SharedUpstream], None],
        retire: Callable[[asyncio.Task[None]], None],
        history_size: int = 256,
        backoff_initial: float = DEFAULT_BACKOFF[0],
        backoff_max: float = DEFAULT_BACKOFF[1],
    ) -> None:
        super().__init__(topic, open_stream, (backoff_initial, backoff_max))
        self._linger = linger_seconds
        self._on_stopped = on_stopped
        self._retire = retire  # cancelled tasks still finishing (the manager awaits them on close)
        self.subscribers: dict[Subscriber, None] = {}
        self.catchups: dict[Subscriber, CatchUp] = {}  # subscribers not yet on the shared fan-out
        self.start_token = ""  # where `history` starts ('' with no history: a snapshot is coming)
        self.history: collections.deque[tuple[str, Frame | None]] = collections.deque(maxlen=history_size)
        self._truncated = False
        self._task: asyncio.Task[None] | None = None
        self._linger_handle: asyncio.TimerHandle | None = None

    @property
    def stopped(self) -> bool:
        return self.closed

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
        if token:
            if token == self.token:
                return
            replay = self._history_after(token)
            if replay is not None:
                for past_token, frame in replay:
                    subscriber.deliver(self.label, frame, past_token)
                return
        elif self.complete and self._pending is None:
            frame = frames.snapshot(self.label, list(self.items.values()))
            metrics.EVENTS_RENDERED.labels(self.kind).inc()
            subscriber.deliver(self.label, frame, self.token)
            return
        elif not self.start_token:
            return  # a snapshot is on its way to every subscriber
        self._catch_up(subscriber, token)

    def detach(self, subscriber: Subscriber) -> None:
        """Detach; the upstream lingers `linger_seconds` after the last subscriber leaves."""
        if (catchup := self.catchups.pop(subscriber, None)) is not None:
            self._close_catchup(catchup)
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

    # -- catch-up ------------------------------------------------------------------------------
    def _catch_up(self, subscriber: Subscriber, token: str) -> None:
        catchup = CatchUp(self, subscriber, token)
        self.catchups[subscriber] = catchup
        metrics.UPSTREAM_CATCHUPS.labels(self.kind).inc()
        log.info("upstream_catch_up", topic=self.topic.key, from_token=token)
        catchup.start(token)

    def caught_up(self, catchup: CatchUp) -> None:
        """The private stream delivered `catchup.token`: join if the shared stream has been there."""
        if self.catchups.get(catchup.subscriber) is not catchup or not catchup.token:
            return
        if catchup.token == self.token:
            self._join(catchup, [])
        elif (replay := self._history_after(catchup.token)) is not None:
            self._join(catchup, replay)

    def _join_waiting(self, token: str) -> None:
        """The shared stream reached `token`: subscribers whose private stream is there join."""
        for catchup in list(self.catchups.values()):
            if catchup.token == token:
                self._join(catchup, [])

    def _join(self, catchup: CatchUp, replay: list[tuple[str, Frame | None]]) -> None:
        del self.catchups[catchup.subscriber]
        self._close_catchup(catchup)
        if not self.complete and self._pending is None and catchup.complete and catchup.token == self.token:
            self.items, self.complete = dict(catchup.items), True  # the full state it brought
        for past_token, frame in replay:
            catchup.subscriber.deliver(self.label, frame, past_token)
        log.info("upstream_caught_up", topic=self.topic.key, replayed=len(replay))

    def catchup_failed(self, catchup: CatchUp, code: str, message: str) -> None:
        if self.catchups.get(catchup.subscriber) is not catchup:
            return
        catchup.subscriber.deliver(self.label, frames.error(self.label, code, message), None, drop=True)
        self.detach(catchup.subscriber)

    def _close_catchup(self, catchup: CatchUp) -> None:
        task = catchup.close()
        if task is not None:
            self._retire(task)

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, token: str) -> None:
        metrics.UPSTREAM_STREAMS.labels(self.kind).inc()
        self.token = self.start_token = token
        self._task = asyncio.get_running_loop().create_task(
            self._run(token), name=f"upstream:{self.topic.key}"
        )

    def stop(self) -> None:
        """Close the upstream now (idempotent); the manager forgets this entry."""
        if self.closed:
            return
        self.closed = True
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        for catchup in list(self.catchups.values()):
            self._close_catchup(catchup)
        self.catchups.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self._retire(task)
        metrics.UPSTREAM_STREAMS.labels(self.kind).dec()
        self._on_stopped(self)

    # -- hooks of the shared stream ------------------------------------------------------------
    def _on_snapshot(self, token: str) -> None:
        self.start_token = token
        self.history.clear()
        self._truncated = False
        self._fan(frames.snapshot(self.label, list(self.items.values())), token, rendered=True)
        self._join_waiting(token)

    def _on_change(self, token: str, frame: Frame | None) -> None:
        if len(self.history) == self.history.maxlen:
            self._truncated = True
        self.history.append((token, frame))
        self._fan(frame, token, rendered=frame is not None)
        self._join_waiting(token)

    def _on_reset(self, frame: Frame) -> None:
        self.start_token = ""  # a snapshot follows
        self.history.clear()
        self._truncated = False
        self._fan(frame, "", rendered=True)

    def _on_status(self, frame: Frame) -> None:
        self._fan(frame, None)

    def _fan(self, frame: Frame | None, token: str | None, *, rendered: bool = False) -> None:
        if rendered:
            metrics.EVENTS_RENDERED.labels(self.kind).inc()
        fanned = 0
        for subscriber in list(self.subscribers):
            if subscriber not in self.catchups:  # its own stream feeds it until it joins
                subscriber.deliver(self.label, frame, token)
                fanned += 1
        if frame is not None and fanned:
            metrics.EVENTS_FANNED_OUT.labels(self.kind).inc(fanned)

    def _fail(self, code: str, message: str) -> None:
        log.info("upstream_failed", topic=self.topic.key, code=code, message=message)
        frame = frames.error(self.label, code, message)
        for subscriber in list(self.subscribers):
            subscriber.deliver(self.label, frame, None, drop=True)
            metrics.SUBSCRIBERS.labels(self.kind).dec()
        self.subscribers.clear()
        self.stop()


class CatchUp(_Follower):
    """A private upstream Watch that brings one subscriber from its own token to the shared
    upstream's position (see the module docstring); its frames go to that subscriber only."""

    def __init__(self, shared: SharedUpstream, subscriber: Subscriber, token: str) -> None:
        super().__init__(shared.topic, shared._open, shared._backoff)
        self.shared = shared
        self.subscriber = subscriber
        self.token = token
        self._task: asyncio.Task[None] | None = None

    def start(self, token: str) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(token), name=f"upstream-catch-up:{self.topic.key}"
        )

    def close(self) -> asyncio.Task[None] | None:
        """Stop following; returns the task to await if it was cancelled (not when it closes itself)."""
        self.closed = True
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task() or task.done():
            return None
        task.cancel()
        return task

    def _deliver(self, frame: Frame | None, token: str | None) -> None:
        self.subscriber.deliver(self.label, frame, token)

    def _on_snapshot(self, token: str) -> None:
        metrics.EVENTS_RENDERED.labels(self.kind).inc()
        self._deliver(frames.snapshot(self.label, list(self.items.values())), token)
        self.shared.caught_up(self)

    def _on_change(self, token: str, frame: Frame | None) -> None:
        if frame is not None:
            metrics.EVENTS_RENDERED.labels(self.kind).inc()
        self._deliver(frame, token)
        self.shared.caught_up(self)

    def _on_reset(self, frame: Frame) -> None:
        self._deliver(frame, "")

    def _on_status(self, frame: Frame) -> None:
        self._deliver(frame, None)

    def _fail(self, code: str, message: str) -> None:
        log.info("upstream_catch_up_failed", topic=self.topic.key, code=code, message=message)
        self.shared.catchup_failed(self, code, message)


async def _events(call: Any) -> AsyncIterator[Any]:
    async for response in call:
        yield response
