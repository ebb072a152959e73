"""`WatchHub`: one per service process. It serves every Watch stream of the process, fans changes
out per scope, and tells the other replicas about local commits through broker broadcasts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from foundry.common.v1 import watch_pb2

from services.platform import clock
from services.platform.aio import cancel_and_log, wait_event
from services.platform.db.engine import Database
from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker, Subscription
from services.platform.settings import WatchSettings
from services.platform.watch import metrics
from services.platform.watch.changes import compact_changes, register_notifier
from services.platform.watch.feed import ScopeFeed, Subscriber
from services.platform.watch.stream import Authorize, M, Snapshot, watch_events
from services.platform.watch.tokens import TokenCodec

log = get_logger(__name__)


def scope_kind(scope: str) -> str:
    """Metrics label of a scope: the part before the first `:` (`task:organizations/a/tasks/t` → `task`)."""
    kind, sep, _ = scope.partition(":")
    return kind if sep else "default"


class WatchHub:
    """Serves the Watch streams of one service process.

    Args:
        db: the service's Database (holds `watch_scopes` / `watch_changes`).
        broker: broadcasts commits to the hubs of other replicas (topic `watch.<service>`); None
            when the process is the only one (each feed still re-reads once per bookmark tick).
        settings: `Settings.watch`.
        service: the service name, used in the broadcast topic and metric labels.
        compact_every_seconds: how often `compact()` runs in the background.

    Lifecycle: `await start()` … `await drain()` … `await stop()`, or `async with hub:`.
    """

    def __init__(
        self,
        db: Database,
        broker: Broker | None,
        settings: WatchSettings,
        *,
        service: str,
        compact_every_seconds: float = 3600.0,
    ) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings
        self.service = service
        self.topic = f"watch.{service}"
        self._id = uuid.uuid4().hex
        self._compact_every = compact_every_seconds
        self._feeds: dict[str, ScopeFeed] = {}
        self._feed_tasks: dict[str, asyncio.Task[None]] = {}
        self._open: Counter[str] = Counter()
        self._draining = False
        self._all_closed = asyncio.Event()
        self._outgoing: dict[str, int] = {}
        self._outgoing_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self._unregister: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to local commits and to other replicas; start the broadcaster and the compactor."""
        self._unregister = register_notifier(self.db.engine, self.notify)
        if self.broker is not None:
            self._subscription = await self.broker.subscribe_broadcast(self.topic, self._on_broadcast)
            self._tasks.append(
                asyncio.create_task(self._broadcast_loop(), name=f"watch-broadcast-{self.service}")
            )
        self._tasks.append(asyncio.create_task(self._compact_loop(), name=f"watch-compact-{self.service}"))

    async def drain(self, *, wait_seconds: float = 5.0) -> None:
        """End every open stream with END `draining` and its last token; later streams get it at once.

        Waits up to `wait_seconds` for the streams to send their END (a stream whose client does
        not read is left to the server's grace period).
        """
        self._draining = True
        for feed in self._feeds.values():
            for subscriber in feed.subscribers:
                subscriber.wake.set()
        if self._feeds:
            await wait_event(self._all_closed, wait_seconds)

    async def stop(self) -> None:
        """Drain (without waiting), stop listening, and cancel the background tasks."""
        self._draining = True
        for feed in self._feeds.values():
            for subscriber in feed.subscribers:
                subscriber.wake.set()
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.cancel()
            self._subscription = None
        tasks = [*self._tasks, *self._feed_tasks.values()]
        await cancel_and_log(tasks, log, "watch_tasks_ignored_cancel", service=self.service)
        self._tasks.clear()
        self._feed_tasks.clear()

    async def __aenter__(self) -> WatchHub:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def draining(self) -> bool:
        """True once `drain()` or `stop()` was called."""
        return self._draining

    # -- streams ---------------------------------------------------------------------------------

    async def stream(
        self,
        scope: str,
        *,
        resume_token: str = "",
        snapshot: Snapshot,
        authorize: Authorize | None = None,
        wrap: Callable[[watch_pb2.WatchEvent], M],
        kind: str | None = None,
    ) -> AsyncIterator[M]:
        """The Watch stream of `scope`, as the RPC's response messages (`wrap(event)` each).

        Args:
            scope: what is watched, `<kind>:<id>` by convention (e.g. `org_summary:acme`,
                `task:organizations/acme/tasks/t-1`); the writers pass the same string to
                `record_change`.
            resume_token: "" to bootstrap (SNAPSHOT pages, SNAPSHOT_END, then changes), or the
                token of the last event the client applied (no snapshot, replay, then live).
            snapshot: reads the scope's items inside the snapshot transaction.
            authorize: called before the first event (its `PermissionDenied` fails the RPC) and
                again at each bookmark (then the stream ends with END `unauthorized`).
            wrap: turns a WatchEvent into the RPC's response message.
            kind: metrics label; defaults to `scope_kind(scope)`.

        A malformed token, a token minted for another scope, one older than retained history or
        newer than the scope's version gets RESET followed by END `expired` (empty token).
        """
        events = watch_events(
            self,
            scope,
            kind=kind or scope_kind(scope),
            resume_token=resume_token,
            snapshot=snapshot,
            authorize=authorize,
        )
        try:
            async for event in events:
                yield wrap(event)
        finally:
            await events.aclose()

    @property
    def open_streams(self) -> int:
        """Streams currently open on this hub (for drain logs and readiness)."""
        return sum(self._open.values())

    def open_streams_by_kind(self) -> dict[str, int]:
        """Open streams per scope kind (`scope_kind`), omitting kinds with none."""
        return {kind: n for kind, n in self._open.items() if n}

    def buffered_events(self) -> int:
        """Events buffered for all subscribers together (each is capped at `subscriber_buffer`)."""
        return sum(len(s.queue) for feed in self._feeds.values() for s in feed.subscribers)

    def join(self, scope: str, subscriber: Subscriber, kind: str) -> ScopeFeed:
        """Attach `subscriber` to `scope`'s fan-out (created on first use). Used by streams."""
        feed = self._feeds.get(scope)
        if feed is None:
            feed = self._feeds[scope] = ScopeFeed(
                self.db,
                scope,
                TokenCodec(scope),
                page_size=self.settings.snapshot_page_size,
                tick_seconds=self.settings.bookmark_seconds,
            )
            self._feed_tasks[scope] = asyncio.create_task(feed.run(), name=f"watch-feed-{scope}")
            self._all_closed.clear()
        feed.subscribers.add(subscriber)
        self._open[kind] += 1
        metrics.STREAMS_OPEN.labels(self.service, kind).inc()
        return feed

    def leave(self, scope: str, subscriber: Subscriber, kind: str) -> None:
        """Detach `subscriber`; the feed stops when its last subscriber leaves. Used by streams."""
        self._open[kind] -= 1
        metrics.STREAMS_OPEN.labels(self.service, kind).dec()
        feed = self._feeds.get(scope)
        if feed is None:
            return
        feed.subscribers.discard(subscriber)
        if not feed.subscribers:
            del self._feeds[scope]
            task = self._feed_tasks.pop(scope, None)
            if task is not None:
                task.cancel()
            if not self._feeds:
                self._all_closed.set()

    # -- change notifications --------------------------------------------------------------------

    def notify(self, scope: str, version: int) -> None:
        """A change of `scope` up to `version` committed in this process: wake local streams and
        tell the other replicas (called after commit by `record_change`; never blocks)."""
        self._poke(scope, version)
        if self.broker is not None:
            self._outgoing[scope] = max(version, self._outgoing.get(scope, 0))
            self._outgoing_ready.set()

    def _poke(self, scope: str, version: int | None) -> None:
        feed = self._feeds.get(scope)
        if feed is not None:
            feed.poke(version)

    async def _on_broadcast(self, _topic: str, body: bytes) -> None:
        try:
            message = json.loads(body)
            if message.get("origin") == self._id:
                return
            for scope, version in message["scopes"].items():
                self._poke(str(scope), int(version))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("watch_broadcast_malformed", topic=self.topic)

    async def _broadcast_loop(self) -> None:
        assert self.broker is not None
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            scopes, self._outgoing = self._outgoing, {}
            body = json.dumps({"origin": self._id, "scopes": scopes}).encode()
            try:
                await self.broker.broadcast(self.topic, body)
            except Exception:  # best effort: other replicas repair at their next tick
                log.warning("watch_broadcast_failed", scopes=len(scopes), exc_info=True)

    # -- retention -------------------------------------------------------------------------------

    async def compact(self, *, now: dt.datetime | None = None) -> int:
        """Delete history older than `retention_hours` before `now` (default: the current time).

        Returns the number of changes deleted; tokens below the new `compacted_through` get RESET.
        """
        cutoff = (now or clock.now()) - dt.timedelta(hours=self.settings.retention_hours)
        return await compact_changes(self.db, older_than=cutoff)

    async def _compact_loop(self) -> None:
        while True:
            await asyncio.sleep(self._compact_every)
            try:
                deleted = await self.compact()
                log.info("watch_compacted", service=self.service, deleted=deleted)
            except Exception:  # retried at the next interval
                log.warning("watch_compact_failed", service=self.service, exc_info=True)
