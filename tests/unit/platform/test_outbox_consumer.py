"""Worker (the queue-consumer runner) on the in-process broker: settle rules, inbox dedup, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import context
from services.platform.db import Database, platform_metadata
from services.platform.errors import FailedPrecondition, Unavailable
from services.platform.identity import Caller
from services.platform.messaging import (
    ENQUEUED_AT,
    REQUEST_ID,
    HandlerContext,
    MemoryBroker,
    Message,
    QueueSpec,
    Worker,
)
from services.platform.settings import MessagingSettings
from tests.helpers import assert_eventually

SETTINGS = MessagingSettings(
    max_attempts=3, retry_delay_seconds=0.01, retry_delay_max_seconds=0.05, prefetch=8
)
effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("times", sa.Integer, nullable=False),
)


@pytest.fixture(name="broker")
async def _broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(SETTINGS)
    yield broker
    await broker.close()


@pytest.fixture(name="db")
async def _db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'worker.sqlite3'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(effects_metadata.create_all)
    yield db
    await db.dispose()


@pytest.fixture(name="make_worker")
async def _make_worker(broker: MemoryBroker, db: Database) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    workers: list[Worker] = []

    async def make(spec: QueueSpec, handler: object, *, concurrency: int | None = None) -> Worker:
        worker = Worker(broker, service="task", settings=SETTINGS, database=db)
        worker.register(spec, handler, concurrency=concurrency)  # type: ignore[arg-type]
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.stop(1.0)


async def send(broker: MemoryBroker, queue: str, message_id: str, **headers: object) -> None:
    await broker.publish(exchange="", routing_key=queue, body=b"x", message_id=message_id, headers=headers)


async def times_applied(db: Database, key: str) -> int:
    async with db.snapshot() as s:
        return int((await s.execute(sa.select(effects.c.times).where(effects.c.key == key))).scalar() or 0)


async def apply_effect(session: AsyncSession, key: str) -> None:
    updated = await session.execute(
        sa.update(effects).where(effects.c.key == key).values(times=effects.c.times + 1)
    )
    if not updated.rowcount:  # type: ignore[attr-defined]
        await session.execute(sa.insert(effects).values(key=key, times=1))


def handled(queue: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "foundry_messages_handled_total", {"service": "task", "queue": queue, "outcome": outcome}
        )
        or 0.0
    )


async def test_successful_handler_acks_once(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    seen: list[Message] = []

    async def handler(message: Message, ctx: HandlerContext) -> None:
        seen.append(message)

    before = handled("q.ok", "ack")
    await make_worker(QueueSpec("q.ok"), handler)
    await send(broker, "q.ok", "m1")
    await assert_eventually(lambda: _eq(handled("q.ok", "ack") - before, 1))
    assert [m.message_id for m in seen] == ["m1"]
    assert broker.unsettled_count("q.ok") == broker.ready_count("q.ok") == 0
    assert broker.dead_letters("q.ok") == []


def latency(queue: str, sample: str) -> float:
    return (
        REGISTRY.get_sample_value(
            f"foundry_message_queue_latency_seconds_{sample}", {"service": "task", "queue": queue}
        )
        or 0.0
    )


async def test_queue_latency_is_observed_from_the_enqueue_time_on_first_attempts_only(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """`x-enqueued-at-ms` (stamped by the outbox or the publish) to handler start, per queue; the
    retries of a message wait for their backoff, which is not queue latency."""
    attempts: list[int] = []

    async def twice(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        if message.message_id == "late" and ctx.attempt == 1:
            raise Unavailable("peer down")

    count, total = latency("q.lat", "count"), latency("q.lat", "sum")
    await make_worker(QueueSpec("q.lat"), twice)
    await send(broker, "q.lat", "late", **{ENQUEUED_AT: time.time_ns() // 1_000_000 - 5000})  # 5 s ago
    await assert_eventually(lambda: _eq(attempts, [1, 2]))
    assert latency("q.lat", "count") - count == 1  # the retry is not counted
    assert 5.0 <= latency("q.lat", "sum") - total < 15.0
    await send(broker, "q.lat", "fresh")  # the broker stamps it now
    await assert_eventually(lambda: _eq(attempts, [1, 2, 1]))
    assert latency("q.lat", "count") - count == 2
    assert latency("q.lat", "sum") - total < 15.0


async def test_retryable_failure_is_retried_until_the_handler_succeeds(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    attempts: list[int] = []

    async def flaky(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise Unavailable("peer down")

    await make_worker(QueueSpec("q.flaky"), flaky)
    await send(broker, "q.flaky", "m1")
    await assert_eventually(lambda: _eq(attempts, [1, 2, 3]))
    await assert_eventually(lambda: _eq(broker.unsettled_count("q.flaky"), 0))
    assert broker.dead_letters("q.flaky") == []


async def test_message_is_dead_lettered_after_max_attempts(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    attempts: list[int] = []

    async def always_fails(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("bug")

    await make_worker(QueueSpec("q.poison", max_attempts=4), always_fails)
    await send(broker, "q.poison", "m1")
    await assert_eventually(lambda: _eq(len(broker.dead_letters("q.poison")), 1))
    assert attempts == [1, 2, 3, 4]
    [dead] = broker.dead_letters("q.poison")
    assert dead.message_id == "m1"
    assert dead.headers["x-dead-letter-reason"] == "RuntimeError: bug"


async def test_non_retryable_error_goes_to_the_dlq_at_once(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    attempts: list[int] = []

    async def refuses(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise FailedPrecondition("task is archived")

    await make_worker(QueueSpec("q.refuse"), refuses)
    await send(broker, "q.refuse", "m1")
    await assert_eventually(lambda: _eq(len(broker.dead_letters("q.refuse")), 1))
    assert attempts == [1]


async def test_retry_delays_double_from_the_base_and_are_capped() -> None:
    worker = Worker(
        MemoryBroker(),
        service="task",
        settings=MessagingSettings(max_attempts=6, retry_delay_seconds=1.0, retry_delay_max_seconds=5.0),
    )
    spec = QueueSpec("q")
    assert [worker.retry_delay(spec, attempt) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    explicit = QueueSpec("q", retry_delays=(0.5, 3.0))
    assert [worker.retry_delay(explicit, attempt) for attempt in range(1, 6)] == [0.5, 3.0, 3.0, 3.0, 3.0]


async def test_redelivered_message_has_no_second_effect(
    broker: MemoryBroker, db: Database, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """The effect commits, then the handler fails before the ack: the retry finds the inbox row."""
    runs: list[int] = []

    async def commits_then_crashes(message: Message, ctx: HandlerContext) -> None:
        runs.append(ctx.attempt)
        async with ctx.transaction() as session:
            await apply_effect(session, message.message_id)
        if ctx.attempt == 1:
            raise ConnectionError("lost before ack")

    before = handled("q.once", "duplicate")
    await make_worker(QueueSpec("q.once"), commits_then_crashes)
    await send(broker, "q.once", "m1")
    await assert_eventually(lambda: _eq(handled("q.once", "duplicate") - before, 1))
    assert runs == [1, 2]
    assert await times_applied(db, "m1") == 1
    assert broker.unsettled_count("q.once") == 0


async def test_same_message_id_published_twice_is_applied_once(
    broker: MemoryBroker, db: Database, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    async def apply(message: Message, ctx: HandlerContext) -> None:
        async with ctx.transaction() as session:
            await apply_effect(session, message.message_id)

    before = handled("q.dup", "duplicate")
    await make_worker(QueueSpec("q.dup"), apply)
    await send(broker, "q.dup", "m1")
    await send(broker, "q.dup", "m1")
    await send(broker, "q.dup", "m2")
    await assert_eventually(lambda: _eq(handled("q.dup", "duplicate") - before, 1))
    assert [await times_applied(db, "m1"), await times_applied(db, "m2")] == [1, 1]


async def test_failed_transaction_leaves_no_inbox_row_so_the_retry_applies(
    broker: MemoryBroker, db: Database, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    async def fails_inside_first_time(message: Message, ctx: HandlerContext) -> None:
        async with ctx.transaction() as session:
            await apply_effect(session, message.message_id)
            if ctx.attempt == 1:
                raise Unavailable("rolled back")

    await make_worker(QueueSpec("q.rollback"), fails_inside_first_time)
    await send(broker, "q.rollback", "m1")
    await assert_eventually(
        lambda: _eq(broker.unsettled_count("q.rollback") + broker.ready_count("q.rollback"), 0)
    )
    await assert_eventually(lambda: times_applied_eq(db, "m1", 1))


async def times_applied_eq(db: Database, key: str, expected: int) -> None:
    assert await times_applied(db, key) == expected


async def test_handler_runs_with_the_message_request_id_and_the_service_caller(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    seen: list[tuple[str | None, Caller | None]] = []

    async def handler(message: Message, ctx: HandlerContext) -> None:
        seen.append((context.request_id(), context.caller()))

    await make_worker(QueueSpec("q.ctx"), handler)
    await send(broker, "q.ctx", "m1", **{REQUEST_ID: "req-7"})
    await assert_eventually(lambda: _eq(len(seen), 1))
    assert seen == [("req-7", Caller.service("task"))]


async def test_drain_requeues_deliveries_not_started_and_lets_running_ones_finish(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def slow(message: Message, ctx: HandlerContext) -> None:
        started.append(message.message_id)
        await release.wait()

    worker = await make_worker(QueueSpec("q.drain", prefetch=4), slow, concurrency=1)
    for i in range(3):
        await send(broker, "q.drain", f"m{i}")
    await assert_eventually(lambda: _eq((started, broker.unsettled_count("q.drain")), (["m0"], 3)))
    assert worker.active_by_queue() == {"q.drain": 1}

    await worker.stop_consuming()
    assert broker.ready_count("q.drain") == 2  # m1, m2 went back; m0 is still running
    assert broker.unsettled_count("q.drain") == 1
    release.set()
    assert await worker.wait_idle(5.0)
    assert worker.active == 0
    assert started == ["m0"]
    assert broker.unsettled_count("q.drain") == 0


async def test_wait_idle_cancels_handlers_past_the_timeout_and_requeues_them(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    async def stuck(message: Message, ctx: HandlerContext) -> None:
        await asyncio.Event().wait()

    worker = await make_worker(QueueSpec("q.stuck"), stuck)
    await send(broker, "q.stuck", "m1")
    await assert_eventually(lambda: _eq(worker.active, 1))
    await worker.stop_consuming()
    assert not await worker.wait_idle(0.05)
    assert worker.active == 0
    assert broker.ready_count("q.stuck") == 1


async def test_wait_idle_bounds_the_cleanup_of_cancelled_handlers_by_the_unwind_budget(
    broker: MemoryBroker, make_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """A cancelled handler whose cleanup hangs must not hold the drain past deadline + unwind."""
    cleanup_may_end, cleanup_ended = asyncio.Event(), asyncio.Event()

    async def slow_cleanup(message: Message, ctx: HandlerContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await cleanup_may_end.wait()  # e.g. a peer call handing work back that does not answer
            cleanup_ended.set()
            raise

    worker = await make_worker(QueueSpec("q.unwind"), slow_cleanup)
    await send(broker, "q.unwind", "m1")
    await assert_eventually(lambda: _eq(worker.active, 1))
    await worker.stop_consuming()
    async with asyncio.timeout(5):
        assert not await worker.wait_idle(0.05, unwind=0.1)
    assert not cleanup_ended.is_set() and worker.active == 1  # still unwinding: left behind, logged
    cleanup_may_end.set()
    await assert_eventually(lambda: _eq(worker.active, 0))
    assert broker.ready_count("q.unwind") == 1  # requeued once its cleanup ended


def _eq(actual: object, expected: object) -> None:
    assert actual == expected
