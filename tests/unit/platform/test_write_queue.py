"""WriteQueue: SQLite writers of one process take the write lock foreground first, FIFO, no starvation."""

from __future__ import annotations

import asyncio
from pathlib import Path

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

    async def holder() -> None:
        async with queue.hold():
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    return task


async def _queued_behind_holder(queue: WriteQueue, jobs: list[tuple[str, bool]]) -> list[str]:
    """Start `jobs` (name, background) while the lock is held, release it, return the grant order."""
    order: list[str] = []
    release = asyncio.Event()
    first = await _hold_until(queue, release)
    tasks = []
    for name, background in jobs:
        tasks.append(asyncio.create_task(_writer(queue, order, name, background=background)))
        await asyncio.sleep(0)  # enqueue in this order
    assert queue.waiting == len(jobs)
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
    queue = WriteQueue()
    order: list[str] = []
    release = asyncio.Event()
    first = await _hold_until(queue, release)
    doomed = asyncio.create_task(_writer(queue, order, "doomed"))
    later = asyncio.create_task(_writer(queue, order, "later", background=True))
    await asyncio.sleep(0)
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
        audit = asyncio.create_task(write("audit", True))
        await assert_eventually(lambda: _waiting(writers, 1))
        projection = asyncio.create_task(write("projection", False))
        await assert_eventually(lambda: _waiting(writers, 2))
        release.set()
        await asyncio.gather(first, audit, projection)
        async with db.snapshot() as session:
            rows = (await session.execute(text("SELECT who FROM log ORDER BY id"))).scalars().all()
        assert rows == ["holder", "projection", "audit"]
    finally:
        await db.dispose()


def _waiting(writers: object, count: int) -> None:
    assert writers.waiting == count  # type: ignore[attr-defined]
