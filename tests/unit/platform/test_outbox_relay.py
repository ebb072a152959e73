"""Outbox writer + relay on SQLite and the in-process broker (the embedded mode's path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf.wrappers_pb2 import StringValue

from services.platform.context import bound
from services.platform.db import Database, outbox, platform_metadata
from services.platform.messaging import MESSAGE_TYPE, REQUEST_ID, Delivery, MemoryBroker, Message, QueueSpec
from services.platform.outbox import Outbox, OutboxRelay
from services.platform.settings import MessagingSettings
from tests.helpers import assert_eventually

SLOW_SWEEP = MessagingSettings(outbox_sweep_seconds=60.0)


@pytest.fixture(name="db")
async def _db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.sqlite3'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
    yield db
    await db.dispose()


@pytest.fixture(name="broker")
async def _broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker()
    yield broker
    await broker.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.messages.append(delivery.message)
        await delivery.ack()

    @property
    def ids(self) -> list[str]:
        return [m.message_id for m in self.messages]


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        await relay.stop()
        await task


async def pending_rows(db: Database) -> list[sa.Row]:  # type: ignore[type-arg]
    async with db.snapshot() as s:
        return list((await s.execute(sa.select(outbox).order_by(outbox.c.id))).all())


async def test_relay_publishes_committed_rows_in_order_and_never_rolled_back_ones(
    db: Database, broker: MemoryBroker
) -> None:
    got = Inbox()
    await broker.consume(QueueSpec("work"), got)
    writer = Outbox()
    async with db.transaction() as s:
        await writer.enqueue(s, queue="work", message=b"a", message_id="m1")
        await writer.enqueue(s, queue="work", message=b"b", message_id="m2")
    with pytest.raises(RuntimeError):
        async with db.transaction() as s:
            await writer.enqueue(s, queue="work", message=b"x", message_id="rolled-back")
            raise RuntimeError("abort the change")
    async with db.transaction() as s:
        await writer.enqueue(s, queue="work", message=b"c", message_id="m3")

    result = await OutboxRelay(db, broker, SLOW_SWEEP).relay_pending()

    assert (result.published, result.failed) == (3, 0)
    await assert_eventually(lambda: _eq(got.ids, ["m1", "m2", "m3"]))
    assert [m.body for m in got.messages] == [b"a", b"b", b"c"]
    assert await pending_rows(db) == []


async def test_protobuf_event_carries_its_type_and_the_writers_request_id(
    db: Database, broker: MemoryBroker
) -> None:
    got = Inbox()
    await broker.consume(QueueSpec("listener", bindings=("task.summary.*",)), got)
    async with db.transaction() as s:
        with bound(request_id="req-9"):
            mid = await Outbox().publish(
                s, routing_key="task.summary.updated", message=StringValue(value="t1")
            )

    await OutboxRelay(db, broker, SLOW_SWEEP).relay_pending()

    await assert_eventually(lambda: _eq(got.ids, [mid]))
    [message] = got.messages
    assert (message.exchange, message.routing_key) == ("events", "task.summary.updated")
    assert message.headers[MESSAGE_TYPE] == "google.protobuf.StringValue"
    assert message.headers[REQUEST_ID] == "req-9"
    assert StringValue.FromString(message.body).value == "t1"


async def test_commit_wakes_the_running_relay_without_waiting_for_the_sweep(
    db: Database, broker: MemoryBroker
) -> None:
    got = Inbox()
    await broker.consume(QueueSpec("work"), got)
    relay = OutboxRelay(db, broker, SLOW_SWEEP)  # the sweep alone would take a minute
    writer = Outbox(notify=relay.wake)
    async with running(relay):
        await asyncio.sleep(0)  # let the first (empty) pass start waiting
        async with db.transaction() as s:
            await writer.enqueue(s, queue="work", message=b"a", message_id="m1")
        await assert_eventually(lambda: _eq(got.ids, ["m1"]), timeout=5.0)


async def test_sweep_publishes_rows_whose_writer_never_woke_the_relay(
    db: Database, broker: MemoryBroker
) -> None:
    got = Inbox()
    await broker.consume(QueueSpec("work"), got)
    relay = OutboxRelay(db, broker, MessagingSettings(outbox_sweep_seconds=0.1))
    async with running(relay):
        async with db.transaction() as s:
            await Outbox(notify=None).enqueue(s, queue="work", message=b"a", message_id="orphan")
        await assert_eventually(lambda: _eq(got.ids, ["orphan"]), timeout=5.0)


async def test_unroutable_row_stays_pending_with_its_error_and_does_not_block_others(
    db: Database, broker: MemoryBroker
) -> None:
    got = Inbox()
    await broker.consume(QueueSpec("work"), got)
    writer = Outbox()
    async with db.transaction() as s:
        await writer.enqueue(s, queue="not-yet-declared", message=b"a", message_id="early")
        await writer.enqueue(s, queue="work", message=b"b", message_id="m2")
    relay = OutboxRelay(db, broker, SLOW_SWEEP)

    first = await relay.relay_pending()

    assert (first.published, first.failed) == (1, 1)
    await assert_eventually(lambda: _eq(got.ids, ["m2"]))
    [row] = await pending_rows(db)
    assert (row.message_id, row.attempts, row.published_at) == ("early", 1, None)
    assert "unroutable" in row.last_error
    late = Inbox()
    await broker.consume(QueueSpec("not-yet-declared"), late)
    assert (await relay.relay_pending()).published == 1
    await assert_eventually(lambda: _eq(late.ids, ["early"]))


async def test_retention_keeps_published_rows_marked_then_prunes_them(
    db: Database, broker: MemoryBroker
) -> None:
    await broker.declare_queue(QueueSpec("work"))
    async with db.transaction() as s:
        await Outbox().enqueue(s, queue="work", message=b"a", message_id="m1")
    relay = OutboxRelay(db, broker, SLOW_SWEEP, retention_seconds=3600)

    await relay.relay_pending()

    [row] = await pending_rows(db)
    assert row.published_at is not None
    assert (await relay.relay_pending()).published == 0  # a published row is never sent again
    assert await relay.prune() == 0  # younger than the retention
    assert await OutboxRelay(db, broker, SLOW_SWEEP, retention_seconds=1e-6).prune() == 1
    assert await pending_rows(db) == []


def _eq(actual: object, expected: object) -> None:
    assert actual == expected
