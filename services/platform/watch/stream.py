"""One Watch stream: bootstrap or resume, then live changes, bookmarks and an explicit end.

See `services.platform.watch` for the contract; `WatchHub.stream` is the public entry point.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from foundry.common.v1 import watch_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.aio import wait_event
from services.platform.db.engine import Database
from services.platform.errors import PermissionDenied, Unauthenticated
from services.platform.settings import WatchSettings
from services.platform.watch import metrics
from services.platform.watch.changes import is_contiguous, read_changes, read_scope
from services.platform.watch.envelope import (
    BOOKMARK,
    END,
    END_REASON_NAMES,
    RESET,
    SNAPSHOT_END,
    EndReason,
    change_event,
    control_event,
    snapshot_pages,
)
from services.platform.watch.feed import Entry, ScopeFeed, Subscriber
from services.platform.watch.tokens import BadToken, TokenCodec

M = TypeVar("M", bound=Message)
Snapshot = Callable[[AsyncSession], Awaitable[Sequence[tuple[str, Message]]]]
"""Reads the scope's current items as (resource name, resource) inside the stream's snapshot transaction."""
Authorize = Callable[[], Awaitable[None]]
"""Raises `PermissionDenied` (or `Unauthenticated`) when the caller may not watch the scope."""

_DRAINING = watch_pb2.WATCH_END_REASON_DRAINING
_LAGGING = watch_pb2.WATCH_END_REASON_LAGGING
_ROTATE = watch_pb2.WATCH_END_REASON_ROTATE
_EXPIRED = watch_pb2.WATCH_END_REASON_EXPIRED
_UNAUTHORIZED = watch_pb2.WATCH_END_REASON_UNAUTHORIZED


class StreamHost(Protocol):
    """What a stream needs from its hub."""

    db: Database
    settings: WatchSettings
    service: str

    @property
    def draining(self) -> bool: ...

    def join(self, scope: str, subscriber: Subscriber, kind: str) -> ScopeFeed: ...

    def leave(self, scope: str, subscriber: Subscriber, kind: str) -> None: ...


async def watch_events(
    host: StreamHost,
    scope: str,
    *,
    kind: str,
    resume_token: str,
    snapshot: Snapshot,
    authorize: Authorize | None,
) -> AsyncGenerator[watch_pb2.WatchEvent, None]:
    """The stream's WatchEvents in order; `WatchHub.stream` wraps them into the RPC's response type."""
    if authorize is not None:
        await authorize()  # refused before any event: the RPC fails with PERMISSION_DENIED
    labels = (host.service, kind)
    if host.draining:
        yield _end(labels, _DRAINING, resume_token, "server is draining; reconnect to another replica")
        return
    codec = TokenCodec(scope)
    resume_from: int | None = None
    if resume_token:
        try:
            resume_from = codec.decode(resume_token)
        except BadToken as exc:
            metrics.RESUMES.labels(*labels, "reset").inc()
            for event in _reset(labels, f"resume token rejected ({exc.reason}); watch again without a token"):
                yield event
            return
    settings = host.settings
    subscriber = Subscriber(settings.subscriber_buffer)
    # Subscribe before reading the snapshot or validating the token: nothing committed after that
    # read can be missed, and anything buffered at or below the position is dropped.
    feed = host.join(scope, subscriber, kind)
    try:
        if resume_from is None:
            started = time.perf_counter()
            async with host.db.snapshot() as session:
                position = (await read_scope(session, scope)).version
                items = list(await snapshot(session))
            token = codec.encode(position)
            for page in snapshot_pages(items, token, settings.snapshot_page_size):
                if host.draining:
                    yield _end(labels, _DRAINING, "", "server is draining; bootstrap again elsewhere")
                    return
                yield _sent(labels, page)
            # A buffer that overflowed while the snapshot was sent is not lagging yet: the loop
            # below catches up from the database. Lagging counts from here on.
            subscriber.overflowed = False
            metrics.BOOTSTRAP_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            yield _sent(labels, control_event(SNAPSHOT_END, token))
            target = position
        else:
            position = resume_from
            async with host.db.snapshot() as session:
                state = await read_scope(session, scope)
            if position > state.version or position < state.compacted_through:
                why = (
                    "is newer than the scope"
                    if position > state.version
                    else "is older than retained history"
                )
                metrics.RESUMES.labels(*labels, "reset").inc()
                for event in _reset(labels, f"resume token {why}; watch again without a token"):
                    yield event
                return
            target = state.version
            metrics.RESUMES.labels(*labels, "caught_up" if position == target else "replay").inc()
            if position == target:
                # Nothing to replay: say "caught up" at once, so a resuming client (and the gateway's
                # reconnect status) knows the stream is live without waiting for the next change.
                yield _sent(labels, control_event(BOOKMARK, resume_token))

        loop = asyncio.get_running_loop()
        rotate_at = loop.time() + settings.max_stream_seconds * random.uniform(0.9, 1.0)
        last_sent = loop.time()
        replay: deque[Entry] = deque()
        while True:
            subscriber.wake.clear()
            now = loop.time()
            if host.draining:
                yield _end(labels, _DRAINING, codec.encode(position), "server is draining; resume elsewhere")
                return
            if subscriber.overflowed:
                yield _end(
                    labels, _LAGGING, codec.encode(position), "client fell behind; resume with the token"
                )
                return
            if now >= rotate_at:
                yield _end(labels, _ROTATE, codec.encode(position), "stream reached its maximum lifetime")
                return
            entry: Entry | None = None
            if replay:
                entry = replay.popleft()
            else:
                queue = subscriber.queue
                while queue and queue[0][0] <= position:
                    queue.popleft()
                if queue and queue[0][0] == position + 1:
                    entry = queue.popleft()
                else:
                    # Behind the fan-out (joined mid-read, resumed, or the buffer was dropped):
                    # read the missing versions ourselves. Versions are gap-free, so a hole
                    # means compaction removed them.
                    upto = queue[0][0] - 1 if queue else max(target, feed.cursor or 0)
                    if upto > position:
                        if not await _load(
                            host.db, scope, codec, replay, position, upto, settings.snapshot_page_size
                        ):
                            for event in _reset(labels, "history was compacted; watch again without a token"):
                                yield event
                            return
                        continue
            if entry is not None:
                position = entry[0]
                yield _sent(labels, entry[1])
                last_sent = loop.time()
                continue
            if now - last_sent >= settings.bookmark_seconds:
                if authorize is not None:
                    try:
                        await authorize()
                    except (PermissionDenied, Unauthenticated) as exc:
                        yield _end(labels, _UNAUTHORIZED, codec.encode(position), exc.message)
                        return
                yield _sent(labels, control_event(BOOKMARK, codec.encode(position)))
                last_sent = loop.time()
                continue
            timeout = min(last_sent + settings.bookmark_seconds, rotate_at) - now
            await wait_event(subscriber.wake, max(timeout, 0.001))
    finally:
        host.leave(scope, subscriber, kind)


async def _load(
    db: Database, scope: str, codec: TokenCodec, replay: deque[Entry], after: int, upto: int, page: int
) -> bool:
    """Queue one page of changes (after, upto] from the log; False if some were compacted away."""
    async with db.snapshot() as session:
        changes = await read_changes(session, scope, after=after, upto=upto, limit=page)
    if not changes or not is_contiguous(after, changes):
        return False
    replay.extend((c.version, change_event(c, codec.encode(c.version))) for c in changes)
    return True


def _sent(labels: tuple[str, str], event: watch_pb2.WatchEvent) -> watch_pb2.WatchEvent:
    metrics.EVENTS_SENT.labels(*labels, watch_pb2.WatchEventKind.Name(event.kind)).inc()
    return event


def _end(labels: tuple[str, str], reason: EndReason, token: str, message: str) -> watch_pb2.WatchEvent:
    metrics.STREAM_ENDS.labels(*labels, END_REASON_NAMES[reason]).inc()
    return _sent(labels, control_event(END, token, reason=reason, message=message))


def _reset(labels: tuple[str, str], message: str) -> tuple[watch_pb2.WatchEvent, ...]:
    """RESET, then END `expired` with no token: the client must drop its state and bootstrap."""
    metrics.RESETS.labels(*labels).inc()
    return _sent(labels, control_event(RESET, "", message=message)), _end(labels, _EXPIRED, "", message)
