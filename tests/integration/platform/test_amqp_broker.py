"""AmqpBroker against the real RabbitMQ (a vhost of this test run): confirms, routing, DLQ, delays."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import pytest

from services.platform.errors import FailedPrecondition, Unavailable
from services.platform.messaging import (
    ATTEMPT,
    ENQUEUED_AT,
    AmqpBroker,
    Delivery,
    HandlerContext,
    Message,
    QueueSpec,
    Worker,
)
from services.platform.settings import MessagingSettings
from tests.helpers import assert_eventually, unique_name
from tests.helpers.servers import PrivateRabbit, rabbitmqctl

pytestmark = pytest.mark.integration

SETTINGS = MessagingSettings(max_attempts=3, retry_delay_seconds=0.1, retry_delay_max_seconds=0.4, prefetch=8)
BrokerFactory = Callable[..., Awaitable[AmqpBroker]]


@pytest.fixture(name="prefix")
def _prefix() -> str:
    return unique_name("it")


@pytest.fixture(name="make_broker")
async def _make_broker(amqp_url: str, prefix: str) -> AsyncIterator[BrokerFactory]:
    brokers: list[AmqpBroker] = []

    async def make(settings: MessagingSettings = SETTINGS) -> AmqpBroker:
        broker = AmqpBroker(amqp_url, prefix=prefix, settings=settings)
        await broker.connect()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


@pytest.fixture(name="broker")
async def _broker(make_broker: BrokerFactory) -> AmqpBroker:
    return await make_broker()


class Collector:
    def __init__(self, *, ack: bool = True) -> None:
        self.deliveries: list[Delivery] = []
        self.ack = ack

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            await delivery.ack()

    @property
    def ids(self) -> list[str]:
        return [d.message.message_id for d in self.deliveries]


async def queue_messages(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Drain `queue` with basic.get (inspection only), acking what it takes."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=True)
        out = []
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            out.append(message)
        return out
    finally:
        await connection.close()


async def test_confirmed_work_message_is_durable_and_delivered_with_its_headers(
    broker: AmqpBroker, prefix: str
) -> None:
    spec = QueueSpec(f"{prefix}.task.provision")
    await broker.declare_queue(spec)
    await broker.declare_queue(spec)  # idempotent
    await broker.publish(exchange="", routing_key=spec.name, body=b"t1", message_id="m1", headers={"k": "v"})
    got = Collector()
    await broker.consume(spec, got)
    await assert_eventually(lambda: _eq(got.ids, ["m1"]))
    message = got.deliveries[0].message
    assert (message.body, message.headers["k"], message.attempt, message.exchange) == (b"t1", "v", 1, "")
    assert message.routing_key == spec.name
    # Stamped at publish in unix milliseconds, an integer so the AMQP field table keeps it exact
    # (a float travels as float32: today's seconds rounded to a multiple of 128).
    enqueued = message.headers[ENQUEUED_AT]
    assert isinstance(enqueued, int) and abs(time.time() * 1000 - enqueued) < 5000


async def test_publish_to_an_undeclared_queue_raises_unavailable(broker: AmqpBroker, prefix: str) -> None:
    with pytest.raises(Unavailable) as info:
        await broker.publish(exchange="", routing_key=f"{prefix}.nobody", body=b"", message_id="m1")
    assert info.value.reason == "UNROUTABLE"
    await broker.declare_queue(QueueSpec(f"{prefix}.after"))
    await broker.publish(
        exchange="", routing_key=f"{prefix}.after", body=b"", message_id="m2"
    )  # channel still fine


async def test_publish_without_a_confirm_in_time_raises_unavailable(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker(MessagingSettings(confirm_timeout_seconds=1e-6))
    await broker.declare_queue(QueueSpec(f"{prefix}.slow"))
    with pytest.raises(Unavailable) as info:
        await broker.publish(exchange="", routing_key=f"{prefix}.slow", body=b"", message_id="m1")
    assert info.value.reason == "CONFIRM_TIMEOUT"


async def test_events_reach_queues_bound_by_topic_pattern_and_unbound_events_are_fine(
    broker: AmqpBroker, prefix: str
) -> None:
    summaries, everything = Collector(), Collector()
    await broker.consume(QueueSpec(f"{prefix}.org.summaries", bindings=("task.summary.*",)), summaries)
    await broker.consume(QueueSpec(f"{prefix}.audit.all", bindings=("#",)), everything)
    await broker.publish(exchange="events", routing_key="task.summary.updated", body=b"", message_id="e1")
    await broker.publish(
        exchange="events", routing_key="sandbox.session.turn_completed", body=b"", message_id="e2"
    )
    await assert_eventually(lambda: _eq((summaries.ids, sorted(everything.ids)), (["e1"], ["e1", "e2"])))
    assert summaries.deliveries[0].message.exchange == "events"
    assert summaries.deliveries[0].message.routing_key == "task.summary.updated"


async def test_prefetch_bounds_unacked_deliveries(broker: AmqpBroker, prefix: str) -> None:
    spec = QueueSpec(f"{prefix}.bounded", prefetch=2)
    await broker.declare_queue(spec)
    for i in range(5):
        await broker.publish(exchange="", routing_key=spec.name, body=b"", message_id=f"m{i}")
    held = Collector(ack=False)
    await broker.consume(spec, held)
    await assert_eventually(lambda: _eq(len(held.deliveries), 2))
    await held.deliveries[0].ack()
    await assert_eventually(lambda: _eq(held.ids, ["m0", "m1", "m2"]))


async def test_retry_goes_through_a_delay_queue_and_really_waits(broker: AmqpBroker, prefix: str) -> None:
    spec = QueueSpec(f"{prefix}.delayed", retry_delays=(1.0,))
    got = Collector(ack=False)
    await broker.consume(spec, got)
    await broker.publish(exchange="", routing_key=spec.name, body=b"x", message_id="m1")
    await assert_eventually(lambda: _eq(len(got.deliveries), 1))
    retried_at = time.monotonic()
    await got.deliveries[0].retry(1.0)
    await assert_eventually(lambda: _eq(len(got.deliveries), 2), timeout=10)
    assert time.monotonic() - retried_at >= 0.9
    again = got.deliveries[1].message
    assert (again.message_id, again.attempt, again.headers[ATTEMPT], again.body) == ("m1", 2, 2, b"x")
    # A retry keeps the first enqueue time (queue latency is measured on first attempts only).
    assert again.headers[ENQUEUED_AT] == got.deliveries[0].message.headers[ENQUEUED_AT]
    assert again.routing_key == spec.name
    await got.deliveries[1].ack()


async def test_worker_dead_letters_after_max_attempts_with_the_reason(
    broker: AmqpBroker, prefix: str, amqp_url: str
) -> None:
    spec = QueueSpec(f"{prefix}.poison")
    attempts: list[int] = []

    async def always_fails(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("bug")

    worker = Worker(broker, service="task", settings=SETTINGS)
    worker.register(spec, always_fails)
    await worker.start()
    await broker.publish(exchange="", routing_key=spec.name, body=b"x", message_id="m1")
    await assert_eventually(lambda: _eq(attempts, [1, 2, 3]), timeout=10)
    await worker.stop(5.0)
    dead = await assert_eventually(lambda: _nonempty(queue_messages(amqp_url, f"{spec.name}.dlq")))
    assert [(m.message_id, m.headers["x-dead-letter-reason"]) for m in dead] == [("m1", "RuntimeError: bug")]


async def test_non_retryable_error_is_dead_lettered_on_first_delivery(
    broker: AmqpBroker, prefix: str, amqp_url: str
) -> None:
    spec = QueueSpec(f"{prefix}.refused")
    attempts: list[int] = []

    async def refuses(message: Message, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise FailedPrecondition("archived")

    worker = Worker(broker, service="task", settings=SETTINGS)
    worker.register(spec, refuses)
    await worker.start()
    await broker.publish(exchange="", routing_key=spec.name, body=b"x", message_id="m1")
    dead = await assert_eventually(lambda: _nonempty(queue_messages(amqp_url, f"{spec.name}.dlq")))
    await worker.stop(5.0)
    assert attempts == [1]
    assert [m.message_id for m in dead] == ["m1"]


async def test_drain_requeues_unstarted_deliveries_for_another_consumer(
    make_broker: BrokerFactory, prefix: str
) -> None:
    spec = QueueSpec(f"{prefix}.drain", prefetch=5)
    first, second = await make_broker(), await make_broker()
    release = asyncio.Event()
    started: list[str] = []

    async def slow(message: Message, ctx: HandlerContext) -> None:
        started.append(message.message_id)
        await release.wait()

    worker = Worker(first, service="task", settings=SETTINGS)
    worker.register(spec, slow, concurrency=1)
    await worker.start()
    for i in range(3):
        await first.publish(exchange="", routing_key=spec.name, body=b"", message_id=f"m{i}")
    await assert_eventually(lambda: _eq(started, ["m0"]))
    await worker.stop_consuming()
    other = Collector()
    await second.consume(spec, other)
    await assert_eventually(lambda: _eq(sorted(other.ids), ["m1", "m2"]))
    assert all(d.message.redelivered for d in other.deliveries)
    release.set()
    assert await worker.wait_idle(5.0)
    assert started == ["m0"]


async def test_broadcast_reaches_every_connected_process_subscribed(make_broker: BrokerFactory) -> None:
    a, b = await make_broker(), await make_broker()
    seen_a: list[tuple[str, bytes]] = []
    seen_b: list[tuple[str, bytes]] = []

    async def on_a(topic: str, body: bytes) -> None:
        seen_a.append((topic, body))

    async def on_b(topic: str, body: bytes) -> None:
        seen_b.append((topic, body))

    await a.subscribe_broadcast("watch.task.*", on_a)
    sub_b = await b.subscribe_broadcast("watch.#", on_b)
    await a.broadcast("watch.task.t1", b"v1")
    await a.broadcast("other.topic", b"no")
    await assert_eventually(
        lambda: _eq((seen_a, seen_b), ([("watch.task.t1", b"v1")], [("watch.task.t1", b"v1")]))
    )
    await sub_b.cancel()
    await b.broadcast("watch.task.t2", b"v2")
    await assert_eventually(lambda: _eq(len(seen_a), 2))
    assert seen_b == [("watch.task.t1", b"v1")]


async def test_event_subscriptions_give_every_process_a_copy_besides_the_queue_bindings(
    make_broker: BrokerFactory,
) -> None:
    a, b = await make_broker(), await make_broker()
    seen_a: list[tuple[str, bytes]] = []
    seen_b: list[tuple[str, bytes]] = []

    async def on_a(key: str, body: bytes) -> None:
        seen_a.append((key, body))

    async def on_b(key: str, body: bytes) -> None:
        seen_b.append((key, body))

    await a.subscribe_events("organization.member.*", on_a)
    sub_b = await b.subscribe_events("organization.member.*", on_b)
    await a.publish(exchange="events", routing_key="organization.member.removed", body=b"m1", message_id="e1")
    await a.publish(exchange="events", routing_key="task.summary.updated", body=b"no", message_id="e2")
    expected = [("organization.member.removed", b"m1")]
    await assert_eventually(lambda: _eq((seen_a, seen_b), (expected, expected)))
    await sub_b.cancel()
    await b.publish(exchange="events", routing_key="organization.member.changed", body=b"m2", message_id="e3")
    await assert_eventually(lambda: _eq(len(seen_a), 2))
    assert seen_b == expected


async def test_robust_connection_recovers_publish_and_consume_after_the_broker_drops_it(
    amqp_url: str, prefix: str
) -> None:
    """RabbitMQ closes the connection (a node restart, a network cut, `close_connection`): the robust
    connection reconnects, publishing works again and the existing consumers and event
    subscriptions receive again, with no action from the service. Only this broker's connection is
    closed, found by its connection name (no vhost is created or deleted mid-run: deleting a vhost
    full of quorum queues is what we suspect of wedging RabbitMQ 3.10 on this machine)."""
    name = f"{prefix}@robust-test"
    broker = AmqpBroker(amqp_url, prefix=prefix, settings=SETTINGS, connection_name=name)
    await broker.connect()
    try:
        spec = QueueSpec(f"{prefix}.robust")
        got = Collector()
        await broker.consume(spec, got)
        events: list[str] = []

        async def on_event(key: str, body: bytes) -> None:
            events.append(body.decode())

        await broker.subscribe_events("robust.#", on_event)
        await broker.publish(exchange="", routing_key=spec.name, body=b"", message_id="before")
        await broker.publish(exchange="events", routing_key="robust.x", body=b"e0", message_id="e0")
        await assert_eventually(lambda: _eq((got.ids, events), (["before"], ["e0"])))

        pids = await asyncio.to_thread(_connection_pids, name)
        assert len(pids) == 1, pids  # the name reached the broker: exactly our connection
        await asyncio.to_thread(rabbitmqctl, "close_connection", pids[0], "test: robust reconnect")
        dropped_at = time.monotonic()
        deadline = dropped_at + 30  # aio-pika retries every 5 s

        async def published(routing_key: str, exchange: str, body: bytes) -> None:
            while True:
                try:
                    return await broker.publish(
                        exchange=exchange, routing_key=routing_key, body=body, message_id=body.decode()
                    )
                except Unavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        await published(spec.name, "", b"after")
        # Events are at most once: one published before the subscription's queue is declared and bound
        # again on the new connection reaches no queue (the publisher's channel may come back first).
        # So events go out until one arrives: the subscription came back by itself.
        sent: list[str] = []
        while len(events) < 2 and time.monotonic() < deadline:
            sent.append(f"e{len(sent) + 1}")
            await published("robust.y", "events", sent[-1].encode())
            await asyncio.sleep(0.2)
        await assert_eventually(
            lambda: _eq(got.ids, ["before", "after"]), timeout=max(1.0, deadline - time.monotonic())
        )
        after = events[1:]  # in order, none twice, none skipped once they flow again
        assert events[0] == "e0" and after, (events, sent)
        first = sent.index(after[0])
        assert after == sent[first : first + len(after)], (events, sent)
        assert time.monotonic() - dropped_at < 30
        assert await asyncio.to_thread(_connection_pids, name) != pids  # a new connection, same name
    finally:
        await broker.close()


async def test_a_handler_running_when_the_connection_drops_finishes_and_its_message_comes_again(
    amqp_url: str, prefix: str
) -> None:
    """aiormq runs each consumer callback as a task of its channel and cancels those tasks when the
    channel closes. A handler half-way through a multi-step effect (a sandbox turn: claim, run the
    agent, record the end) must not stop at an arbitrary await because the broker restarted: it
    finishes, its ack is lost with the channel (logged, not raised), and the broker delivers the
    message again after the reconnect (at least once; handlers are idempotent)."""
    name = f"{prefix}@handler-survives"
    broker = AmqpBroker(amqp_url, prefix=prefix, settings=SETTINGS, connection_name=name)
    await broker.connect()
    try:
        spec = QueueSpec(f"{prefix}.survives")
        release = asyncio.Event()
        runs: list[tuple[str, bool]] = []  # message id, redelivered
        finished: list[str] = []
        cancelled: list[str] = []

        async def long_effect(message: Message, ctx: HandlerContext) -> None:
            runs.append((message.message_id, message.redelivered))
            try:
                if len(runs) == 1:
                    await release.wait()  # the connection drops while the effect is under way
            except asyncio.CancelledError:
                cancelled.append(message.message_id)
                raise
            finished.append(message.message_id)

        worker = Worker(broker, service="sandbox", settings=SETTINGS)
        worker.register(spec, long_effect)
        await worker.start()
        await broker.publish(exchange="", routing_key=spec.name, body=b"", message_id="turn")
        await assert_eventually(lambda: _eq(runs, [("turn", False)]))
        pids = await asyncio.to_thread(_connection_pids, name)
        assert len(pids) == 1, pids
        await asyncio.to_thread(rabbitmqctl, "close_connection", pids[0], "test: handler survives")
        await assert_eventually(lambda: _eq(bool(broker.unavailable_reason), True), timeout=10)
        release.set()
        await assert_eventually(lambda: _eq(finished, ["turn"]), timeout=5)
        # Unacked when its channel closed: delivered again once the robust connection is back.
        await assert_eventually(lambda: _eq(runs, [("turn", False), ("turn", True)]), timeout=30)
        await assert_eventually(lambda: _eq(finished, ["turn", "turn"]), timeout=5)
        assert cancelled == []
        assert await worker.wait_idle(5.0)
        await worker.stop(5.0)
    finally:
        await broker.close()


def _connection_pids(connection_name: str) -> list[str]:
    """Erlang pids of the open connections whose client properties carry `connection_name`."""
    listed = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    return [line.split("\t", 1)[0] for line in listed.stdout.splitlines() if connection_name in line]


def _eq(actual: object, expected: object) -> None:
    assert actual == expected


async def _nonempty(
    coro: Awaitable[list[aio_pika.abc.AbstractIncomingMessage]],
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    result = await coro
    assert result
    return result


async def test_a_broker_restart_keeps_every_confirmed_message_and_the_service_reconnects() -> None:
    """RabbitMQ restarts (a node of this test's own, stopped with SIGTERM and started again on the
    same ports and data): every message whose publish was confirmed before the stop is still queued
    (durable quorum queue, persistent messages), the service's robust connection comes back by
    itself, and publishing and consuming go on; nothing is lost and nothing is delivered twice."""
    # Not under pytest's tmp_path: the node runs as the `rabbitmq` user when we are root, and pytest's
    # base directory is private to us.
    with tempfile.TemporaryDirectory(prefix="foundry-rabbit-restart-") as root:
        os.chmod(root, 0o755)  # traversable by the node's user
        await _restart_keeps_confirmed_messages(PrivateRabbit(Path(root) / "node"))


async def _restart_keeps_confirmed_messages(node: PrivateRabbit) -> None:
    await asyncio.to_thread(node.start)
    prefix = unique_name("restart")
    quorum = MessagingSettings(**{**SETTINGS.model_dump(), "queue_type": "quorum"})
    broker = AmqpBroker(node.url, prefix=prefix, settings=quorum)
    try:
        await broker.connect()
        spec = QueueSpec(f"{prefix}.work")
        await broker.declare_queue(spec)
        before = [f"before-{i}" for i in range(5)]
        for message_id in before:  # confirmed by the broker when publish returns
            await broker.publish(exchange="", routing_key=spec.name, body=b"", message_id=message_id)

        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.start)

        deadline = time.monotonic() + 30  # aio-pika's robust connection retries every 5 s
        while True:
            try:
                await broker.publish(exchange="", routing_key=spec.name, body=b"", message_id="after")
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        got = Collector()
        await broker.consume(spec, got)
        await assert_eventually(lambda: _eq(got.ids, [*before, "after"]), timeout=20)
    finally:
        await broker.close()
        await asyncio.to_thread(node.stop)
