"""Outbox relay and inbox on the real PostgreSQL and RabbitMQ: exactly the committed rows go out,
replicas relaying side by side never publish a row twice, and a redelivery has no second effect."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import context as request_context
from services.platform.db import Database, platform_metadata
from services.platform.messaging import (
    REQUEST_ID,
    AmqpBroker,
    Delivery,
    HandlerContext,
    Message,
    QueueSpec,
    Worker,
)
from services.platform.outbox import Outbox, OutboxRelay
from services.platform.settings import MessagingSettings
from tests.helpers import assert_eventually, unique_name

pytestmark = pytest.mark.integration

SETTINGS = MessagingSettings(max_attempts=3, retry_delay_seconds=0.05, outbox_sweep_seconds=60.0)
effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("times", sa.Integer, nullable=False),
)


@pytest.fixture(name="db")
async def _db(pg_url: str) -> AsyncIterator[Database]:
    db = Database(pg_url, schema=unique_name("outbox"))
    await db.ensure_schema()
    async with db.engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(effects_metadata.create_all)
    yield db
    await db.dispose()


@pytest.fixture(name="prefix")
def _prefix() -> str:
    return unique_name("it")


@pytest.fixture(name="brokers")
async def _brokers(amqp_url: str, prefix: str) -> AsyncIterator[list[AmqpBroker]]:
    brokers = [AmqpBroker(amqp_url, prefix=prefix, settings=SETTINGS) for _ in range(3)]
    for broker in brokers:
        await broker.connect()
    yield brokers
    for broker in brokers:
        await broker.close()


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.messages.append(delivery.message)
        await delivery.ack()

    @property
    def ids(self) -> list[str]:
        return [m.message_id for m in self.messages]


async def upsert_effect(session: AsyncSession, key: str) -> None:
    stmt = sa.dialects.postgresql.insert(effects).values(key=key, times=1)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["key"], set_={"times": effects.c.times + 1})
    )


async def test_relay_publishes_exactly_the_committed_rows(
    db: Database, brokers: list[AmqpBroker], prefix: str
) -> None:
    broker = brokers[0]
    queue = f"{prefix}.task.provision"
    got = Collector()
    await broker.consume(QueueSpec(queue), got)
    await broker.consume(QueueSpec(f"{prefix}.org.events", bindings=("task.#",)), got)
    relay = OutboxRelay(db, broker, SETTINGS, name="task")
    writer = Outbox(notify=relay.wake)
    run = asyncio.create_task(relay.run())
    try:
        async with db.transaction() as s:
            await writer.enqueue(s, queue=queue, message=b"provision", message_id="work-1")
            await writer.publish(s, routing_key="task.summary.updated", message=b"v1", message_id="event-1")
        with pytest.raises(ValueError, match="abort"):
            async with db.transaction() as s:
                await writer.enqueue(s, queue=queue, message=b"never", message_id="rolled-back")
                raise ValueError("abort")
        await assert_eventually(lambda: _eq(sorted(got.ids), ["event-1", "work-1"]))
    finally:
        await relay.stop()
        await run
    async with db.snapshot() as s:
        assert (await s.execute(sa.text("select count(*) from outbox"))).scalar() == 0
    assert "rolled-back" not in got.ids


async def test_two_relays_on_postgres_never_publish_a_row_twice(
    db: Database, brokers: list[AmqpBroker], prefix: str
) -> None:
    queue = f"{prefix}.fanin"
    got = Collector()
    await brokers[2].consume(QueueSpec(queue, prefetch=200), got)
    writer = Outbox()
    rows = 300
    for start in range(0, rows, 50):
        async with db.transaction() as s:
            for i in range(start, start + 50):
                await writer.enqueue(s, queue=queue, message=b"", message_id=f"m{i:04d}")
    relays = [OutboxRelay(db, brokers[i], SETTINGS, name=f"r{i}", batch_size=20) for i in range(2)]

    passes = await asyncio.gather(*(relay.relay_pending() for relay in relays for _ in range(3)))

    assert sum(p.published for p in passes) == rows
    assert all(p.published for p in passes[:2]), "both relays took part"
    await assert_eventually(lambda: _eq(len(got.ids), rows))
    assert Counter(got.ids).most_common(1)[0][1] == 1


async def test_redelivered_message_has_no_second_effect_on_postgres(
    db: Database, brokers: list[AmqpBroker], prefix: str
) -> None:
    spec = QueueSpec(f"{prefix}.apply")
    runs: list[int] = []

    async def commits_then_crashes(message: Message, ctx: HandlerContext) -> None:
        runs.append(ctx.attempt)
        async with ctx.transaction() as session:
            await upsert_effect(session, message.message_id)
        if ctx.attempt == 1:
            raise ConnectionError("lost before the ack")

    worker = Worker(brokers[0], service="task", settings=SETTINGS, database=db)
    worker.register(spec, commits_then_crashes)
    await worker.start()
    try:
        async with db.transaction() as s:
            await Outbox().enqueue(s, queue=spec.name, message=b"", message_id="m1")
        await OutboxRelay(db, brokers[1], SETTINGS).relay_pending()
        await assert_eventually(lambda: _eq(runs, [1, 2]), timeout=10)
        await assert_eventually(lambda: _eq(worker.active, 0))
    finally:
        await worker.stop(5.0)
    async with db.snapshot() as s:
        assert (await s.execute(sa.select(effects.c.times).where(effects.c.key == "m1"))).scalar() == 1
        inbox_rows = (await s.execute(sa.text("select consumer, message_id from inbox"))).all()
    assert [tuple(r) for r in inbox_rows] == [(f"task:{spec.name}", "m1")]


async def test_request_id_crosses_rabbitmq_into_the_worker_handlers_context(
    db: Database, brokers: list[AmqpBroker], prefix: str
) -> None:
    """The `x-request-id` of the request that wrote an outbox row (or published directly) is an AMQP
    header on the real broker, and the Worker binds it around the handler: `request_id()` and every
    log line of the handling carry it, though the relay publishes outside that request."""
    spec = QueueSpec(f"{prefix}.follow", bindings=("follow.#",))
    seen: dict[str, tuple[str | None, str | None, str]] = {}

    async def handler(message: Message, ctx: HandlerContext) -> None:
        caller = request_context.caller()
        seen[message.message_id] = (
            request_context.request_id(),
            caller.subject if caller else None,
            str(message.headers.get(REQUEST_ID)),
        )

    worker = Worker(brokers[0], service="organization", settings=SETTINGS, database=db)
    worker.register(spec, handler)
    await worker.start()
    relay = OutboxRelay(db, brokers[1], SETTINGS, name="task")
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            with request_context.bound(request_id="rid-outbox-1"):
                async with db.transaction() as s:
                    await Outbox().publish(
                        s, routing_key="follow.created", message=b"", message_id="via-outbox"
                    )
            with request_context.bound(request_id="rid-direct-2"):
                await brokers[2].publish(exchange="", routing_key=spec.name, body=b"", message_id="direct")
            assert request_context.request_id() is None  # the relay below runs in no request
            await relay.relay_pending()
            await assert_eventually(lambda: _eq(sorted(seen), ["direct", "via-outbox"]), timeout=10)
            await assert_eventually(lambda: _eq(worker.active, 0))
    finally:
        await worker.stop(5.0)
    assert seen == {
        "via-outbox": ("rid-outbox-1", "service/organization", "rid-outbox-1"),
        "direct": ("rid-direct-2", "service/organization", "rid-direct-2"),
    }
    handled = {e["message_id"]: e.get("request_id") for e in logs if e["event"] == "message_handled"}
    assert handled == {"via-outbox": "rid-outbox-1", "direct": "rid-direct-2"}


def _eq(actual: object, expected: object) -> None:
    assert actual == expected
