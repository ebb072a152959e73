"""`WriteQueue`: the order in which one process's SQLite writers take the database's single write lock.

SQLite lets one transaction write at a time. Writers queue here (FIFO, handed over without polling)
rather than in SQLite's busy handler, which sleeps in steps of up to 100 ms. Background writers
(bulk appends nobody waits for, such as the audit log) queue behind foreground ones (a projection
change a watcher is waiting to see), so they do not add their transactions to the latency of the
foreground path; after `fairness` foreground grants in a row a waiting background writer goes
next, so neither class starves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class WriteQueue:
    """A lock with two FIFO classes of waiters (foreground first). Use one per SQLite database.

    Args:
        fairness: foreground grants in a row after which a waiting background writer goes first.
    """

    def __init__(self, *, fairness: int = 4) -> None:
        self._fairness = fairness
        self._held = False
        self._foreground: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self._foreground_streak = 0

    @property
    def waiting(self) -> int:
        """Writers waiting for the lock (both classes)."""
        return len(self._foreground) + len(self._background)

    @contextlib.asynccontextmanager
    async def hold(self, *, background: bool = False) -> AsyncIterator[None]:
        """Hold the write lock for the block; `background=True` queues behind foreground writers."""
        await self._acquire(background)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, background: bool) -> None:
        if not self._held and not self.waiting:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._background if background else self._foreground
        line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted just before the cancel arrived: pass it on
            else:
                line.remove(waiter)
            raise

    def _release(self) -> None:
        prefer_background = self._foreground_streak >= self._fairness
        lines = (
            (self._background, self._foreground)
            if prefer_background
            else (self._foreground, self._background)
        )
        for line in lines:
            while line:
                waiter = line.popleft()
                if waiter.done():  # cancelled while queued
                    continue
                self._foreground_streak = self._foreground_streak + 1 if line is self._foreground else 0
                waiter.set_result(None)  # ownership passes straight to the waiter
                return
        self._held = False
        self._foreground_streak = 0
