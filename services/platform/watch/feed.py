"""Per-scope fan-out: one reader per scope turns notifications into change events for all of its
subscribers, each of which has a bounded buffer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from foundry.common.v1 import watch_pb2

from services.platform.aio import wait_event
from services.platform.db.engine import Database
from services.platform.logging import get_logger
from services.platform.watch.changes import read_changes, read_scope
from services.platform.watch.envelope import change_event
from services.platform.watch.tokens import TokenCodec

log = get_logger(__name__)
Entry = tuple[int, watch_pb2.WatchEvent]
"""(version, UPSERT/DELETE event) as queued for a subscriber."""


class Subscriber:
    """One stream's buffer. Overflow drops everything buffered and sets `overflowed` (never grows
    past `limit` events); the stream then ends with `lagging` or catches up from the database."""

    __slots__ = ("limit", "overflowed", "queue", "wake")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: deque[Entry] = deque()
        self.overflowed = False
        self.wake = asyncio.Event()

    def offer(self, entries: Sequence[Entry]) -> None:
        if not self.overflowed:
            if len(self.queue) + len(entries) > self.limit:
                self.overflowed = True
                self.queue.clear()
            else:
                self.queue.extend(entries)
        self.wake.set()


class ScopeFeed:
    """Reads a scope's new changes once per notification and offers them to every subscriber.

    `cursor` is the highest version read so far (None until the first read): every committed
    version up to it has been offered to the subscribers present at the time. A stream whose
    position is below `cursor` with nothing buffered catches up from the database itself, which
    covers subscribers that joined mid-read or dropped their buffer.
    """

    def __init__(
        self, db: Database, scope: str, codec: TokenCodec, *, page_size: int, tick_seconds: float
    ) -> None:
        self.db = db
        self.scope = scope
        self.codec = codec
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None
        self._page_size = page_size
        self._tick = tick_seconds
        self._wanted = asyncio.Event()
        self._wanted.set()  # the first pass initialises the cursor

    def poke(self, version: int | None = None) -> None:
        """A change up to `version` committed (None: unknown, read anyway)."""
        if version is None or self.cursor is None or version > self.cursor:
            self._wanted.set()

    async def run(self) -> None:
        """Until cancelled: read and fan out after each poke, and at least every tick (which
        repairs a lost broadcast)."""
        while True:
            await wait_event(self._wanted, self._tick)
            self._wanted.clear()
            try:
                await self._pass()
            except Exception:  # keep the feed alive; the next tick retries
                log.warning("watch_feed_read_failed", scope=self.scope, exc_info=True)
                await asyncio.sleep(min(self._tick, 1.0))

    async def _pass(self) -> None:
        if self.cursor is None:
            async with self.db.snapshot() as session:
                self.cursor = (await read_scope(session, self.scope)).version
            self._wake_all()  # streams below the cursor catch up from the database
            return
        while True:
            async with self.db.snapshot() as session:
                changes = await read_changes(session, self.scope, after=self.cursor, limit=self._page_size)
            if not changes:
                return
            entries = [(c.version, change_event(c, self.codec.encode(c.version))) for c in changes]
            self.cursor = changes[-1].version
            for subscriber in self.subscribers:
                subscriber.offer(entries)
            if len(changes) < self._page_size:
                return

    def _wake_all(self) -> None:
        for subscriber in self.subscribers:
            subscriber.wake.set()
