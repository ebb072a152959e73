"""WriteQueue: SQLite writers of one process take the write lock foreground first, FIFO, no starvation."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.platform.db.engine import Database
from services.platform.db.write_queue import WriteQueue
from tests.helpers.eventually import assert_eventually


async def _writer(queue: WriteQueue, order: list[str], name: str, *, background: bool = False) -> None:
    async with queue.hold(background=background):
        order.append(name)
        await asyncio.sleep(0)


async def _hold_until(queue: WriteQueue, release: asyncio.Event) -> asyncio.Task[None]:
    """A writer that has the lock (granted before this returns) and keeps it until `release` is set."""
    holding = asyncio.Event()

    async def holder() -> None:
        async with queue.hold():
            holding.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    return task


async def _start_queued(queue: WriteQueue, writer: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Start `writer` and return once it waits in `queue` (one more waiter than before)."""
    before = queue.waiting
    task = asyncio.create_task(writer)
    await assert_eventually(lambda: _waiting(queue, before + 1))
    return task


async def _queued_behind_holder(queue: WriteQueue, jobs: list[tuple[str, bool]]) -> list[str]:
    """Start `jobs` (name, background) while the lock is held, release it, return the grant order."""
    order: list[str] = []
    release = asyncio.Event()
    first = await _hold_until(queue, release)
    tasks = [
        await _start_queued(queue, _writer(queue, order, name, background=background))  # in this order
        for name, background in jobs
    ]
    release.set()
    await asyncio.gather(first, *tasks)
    return order


async def test_foreground_writers_go_before_background_ones_each_in_fifo_order() -> None:
    order = await _queued_behind_holder(
        WriteQueue(), [("b1", True), ("f1", False), ("b2", True), ("f2", False)]
    )
    assert order == ["f1", "f2", "b1", "b2"]


async def test_a_waiting_background_writer_goes_after_fairness_foreground_grants() -> None:
    jobs = [("b1", True)] + [(f"f{i}", False) for i in range(5)]
    order = await _queued_behind_holder(WriteQueue(fairness=2), jobs)
    # The holder's grant does not count; f0, f1 are two foreground grants in a row, then b1.
    assert order == ["f0", "f1", "b1", "f2", "f3", "f4"]


async def test_a_writer_cancelled_while_queued_is_skipped_and_the_lock_is_freed() -> None:
    """A foreground writer cancelled while it waits never holds the lock: the background writer
    queued behind it gets the lock next, and then the lock is free."""
    queue = WriteQueue()
    order: list[str] = []
    release = asyncio.Event()
    first = await _hold_until(queue, release)
    doomed = await _start_queued(queue, _writer(queue, order, "doomed"))
    later = await _start_queued(queue, _writer(queue, order, "later", background=True))
    doomed.cancel()
    release.set()
    await asyncio.gather(first, later)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert order == ["later"]
    assert queue.waiting == 0
    async with asyncio.timeout(1):  # free again: a new writer gets it at once
        await _writer(queue, order, "after")
    assert order == ["later", "after"]


async def test_database_background_transactions_commit_after_queued_foreground_ones(tmp_path: Path) -> None:
    """On SQLite, a background transaction (audit) that queued for the write lock before a foreground
    one (projection) still commits after it."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.sqlite3'}")
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, who TEXT)"))
        release = asyncio.Event()
        holding = asyncio.Event()

        async def holder() -> None:
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO log (who) VALUES ('holder')"))
                holding.set()
                await release.wait()

        async def write(who: str, background: bool) -> None:
            async with db.transaction(background=background) as session:
                await session.execute(text("INSERT INTO log (who) VALUES (:who)"), {"who": who})

        writers = db._writers  # the queue under test: waiters are counted, not guessed with sleeps
        assert writers is not None
        first = asyncio.create_task(holder())
        await holding.wait()
        audit = await _start_queued(writers, write("audit", True))
        projection = await _start_queued(writers, write("projection", False))
        release.set()
        await asyncio.gather(first, audit, projection)
        async with db.snapshot() as session:
            rows = (await session.execute(text("SELECT who FROM log ORDER BY id"))).scalars().all()
        assert rows == ["holder", "projection", "audit"]
    finally:
        await db.dispose()


def _waiting(writers: WriteQueue, count: int) -> None:
    assert writers.waiting == count
