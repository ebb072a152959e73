"""MemoryBroker: the in-process transport keeps RabbitMQ's routing, prefetch and settle semantics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.platform.context import bound
from services.platform.errors import Unavailable
from services.platform.messaging import ATTEMPT, REQUEST_ID, Delivery, MemoryBroker, QueueSpec
from services.platform.settings import MessagingSettings
from tests.helpers import assert_eventually


@pytest.fixture(name="broker")
async def _broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(MessagingSettings(prefetch=8))
    await broker.connect()
    yield broker
    await broker.close()


class Collector:
    """A consumer handler that keeps every delivery and optionally acks it."""

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


async def publish_work(broker: MemoryBroker, queue: str, message_id: str, **headers: object) -> None:
    await broker.publish(
        exchange="", routing_key=queue, body=message_id.encode(), message_id=message_id, headers=headers
    )


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("task.*", ["task.created"], ["task.summary.updated", "task", "org.created"]),
        ("task.#", ["task", "task.created", "task.summary.updated"], ["org.task.created"]),
        ("*.summary.*", ["task.summary.updated"], ["task.summary", "task.summary.updated.now"]),
        ("#.updated", ["updated", "a.b.updated"], ["a.updated.b"]),
        ("#", ["anything.at.all", "x"], []),
    ],
)
async def test_events_route_by_amqp_topic_pattern(
    broker: MemoryBroker, pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    got = Collector()
    await broker.consume(QueueSpec("subscriber", bindings=(pattern,)), got)
    for key in [*not_matching, *matching]:
        await broker.publish(exchange="events", routing_key=key, body=b"", message_id=key)
    await assert_eventually(lambda: _assert_equal(sorted(got.ids), sorted(matching)))
    assert [d.message.routing_key for d in got.deliveries] == [d.message.message_id for d in got.deliveries]
    assert all(d.message.exchange == "events" for d in got.deliveries)


async def test_event_goes_to_every_bound_queue_and_nobody_is_fine(broker: MemoryBroker) -> None:
    a, b = Collector(), Collector()
    await broker.consume(QueueSpec("a", bindings=("task.#",)), a)
    await broker.consume(QueueSpec("b", bindings=("task.summary.*",)), b)
    await broker.publish(exchange="events", routing_key="task.summary.updated", body=b"", message_id="m1")
    await broker.publish(exchange="events", routing_key="github.sync.progress", body=b"", message_id="m2")
    await assert_eventually(lambda: _assert_equal((a.ids, b.ids), (["m1"], ["m1"])))


async def test_publish_to_undeclared_work_queue_raises_unavailable(broker: MemoryBroker) -> None:
    with pytest.raises(Unavailable) as info:
        await publish_work(broker, "nobody.listens", "m1")
    assert info.value.reason == "UNROUTABLE"


async def test_publish_after_close_raises_unavailable(broker: MemoryBroker) -> None:
    await broker.declare_queue(QueueSpec("q"))
    await broker.close()
    with pytest.raises(Unavailable):
        await publish_work(broker, "q", "m1")


async def test_declared_queue_holds_messages_until_a_consumer_comes(broker: MemoryBroker) -> None:
    await broker.declare_queue(QueueSpec("q"))
    for i in range(3):
        await publish_work(broker, "q", f"m{i}")
    assert broker.ready_count("q") == 3
    got = Collector()
    await broker.consume(QueueSpec("q"), got)
    await assert_eventually(lambda: _assert_equal(got.ids, ["m0", "m1", "m2"]))
    assert broker.ready_count("q") == 0


async def test_prefetch_bounds_unsettled_deliveries_per_consumer(broker: MemoryBroker) -> None:
    held = Collector(ack=False)
    await broker.consume(QueueSpec("q", prefetch=2), held)
    for i in range(5):
        await publish_work(broker, "q", f"m{i}")
    await assert_eventually(lambda: _assert_equal(len(held.deliveries), 2))
    assert (broker.unsettled_count("q"), broker.ready_count("q")) == (2, 3)
    await held.deliveries[0].ack()
    await assert_eventually(lambda: _assert_equal(held.ids, ["m0", "m1", "m2"]))
    assert (broker.unsettled_count("q"), broker.ready_count("q")) == (2, 2)


async def test_two_consumers_share_a_queue_and_each_message_goes_to_one(broker: MemoryBroker) -> None:
    a, b = Collector(), Collector()
    await broker.consume(QueueSpec("q"), a)
    await broker.consume(QueueSpec("q"), b)
    for i in range(10):
        await publish_work(broker, "q", f"m{i}")
    await assert_eventually(lambda: _assert_equal(len(a.ids) + len(b.ids), 10))
    assert sorted(a.ids + b.ids) == sorted(f"m{i}" for i in range(10))
    assert a.ids and b.ids


async def test_retry_redelivers_after_the_delay_with_attempt_plus_one(broker: MemoryBroker) -> None:
    got = Collector(ack=False)
    await broker.consume(QueueSpec("q"), got)
    await publish_work(broker, "q", "m1")
    await assert_eventually(lambda: _assert_equal(len(got.deliveries), 1))
    first = got.deliveries[0]
    assert first.message.attempt == 1
    started = time.monotonic()
    await first.retry(0.2)
    await assert_eventually(lambda: _assert_equal(len(got.deliveries), 2))
    assert time.monotonic() - started >= 0.2
    again = got.deliveries[1].message
    assert (again.message_id, again.attempt, again.headers[ATTEMPT], again.body) == ("m1", 2, 2, b"m1")


async def test_dead_letter_moves_the_message_to_the_queue_dlq_with_reason(broker: MemoryBroker) -> None:
    got = Collector(ack=False)
    await broker.consume(QueueSpec("q"), got)
    await publish_work(broker, "q", "m1")
    await assert_eventually(lambda: _assert_equal(len(got.deliveries), 1))
    await got.deliveries[0].dead_letter("boom")
    [dead] = broker.dead_letters("q")
    assert (dead.message_id, dead.headers["x-dead-letter-reason"]) == ("m1", "boom")
    assert broker.ready_count("q") == broker.unsettled_count("q") == 0


async def test_requeue_redelivers_first_with_same_attempt_and_redelivered_flag(broker: MemoryBroker) -> None:
    got = Collector(ack=False)
    await broker.consume(QueueSpec("q", prefetch=1), got)
    await publish_work(broker, "q", "m1")
    await publish_work(broker, "q", "m2")
    await assert_eventually(lambda: _assert_equal(got.ids, ["m1"]))
    await got.deliveries[0].requeue()
    await assert_eventually(lambda: _assert_equal(got.ids, ["m1", "m1"]))
    again = got.deliveries[1].message
    assert (again.attempt, again.redelivered) == (1, True)


async def test_settling_a_delivery_twice_raises(broker: MemoryBroker) -> None:
    got = Collector(ack=False)
    await broker.consume(QueueSpec("q"), got)
    await publish_work(broker, "q", "m1")
    await assert_eventually(lambda: _assert_equal(len(got.deliveries), 1))
    await got.deliveries[0].ack()
    with pytest.raises(RuntimeError):
        await got.deliveries[0].ack()


async def test_cancelled_consumer_gets_nothing_new_but_settles_what_it_holds(broker: MemoryBroker) -> None:
    held = Collector(ack=False)
    sub = await broker.consume(QueueSpec("q"), held)
    await publish_work(broker, "q", "m1")
    await assert_eventually(lambda: _assert_equal(held.ids, ["m1"]))
    await sub.cancel()
    await publish_work(broker, "q", "m2")
    await held.deliveries[0].requeue()
    assert held.ids == ["m1"]
    assert broker.ready_count("q") == 2
    other = Collector()
    await broker.consume(QueueSpec("q"), other)
    await assert_eventually(lambda: _assert_equal(other.ids, ["m1", "m2"]))


async def test_close_returns_unsettled_deliveries_to_their_queue(broker: MemoryBroker) -> None:
    held = Collector(ack=False)
    await broker.consume(QueueSpec("q"), held)
    await publish_work(broker, "q", "m1")
    await assert_eventually(lambda: _assert_equal(held.ids, ["m1"]))
    await broker.close()
    assert broker.ready_count("q") == 1


async def test_publish_carries_the_bound_request_id(broker: MemoryBroker) -> None:
    got = Collector()
    await broker.consume(QueueSpec("q"), got)
    with bound(request_id="req-42"):
        await publish_work(broker, "q", "m1")
    await publish_work(broker, "q", "m2", **{REQUEST_ID: "explicit"})
    await assert_eventually(lambda: _assert_equal(len(got.deliveries), 2))
    assert [d.message.headers[REQUEST_ID] for d in got.deliveries] == ["req-42", "explicit"]


async def test_broadcast_reaches_every_matching_subscription_until_cancelled(broker: MemoryBroker) -> None:
    """Each broadcast reaches exactly the subscriptions whose pattern matches its topic; a cancelled
    subscription gets no later broadcast."""
    seen: dict[str, list[tuple[str, bytes]]] = {"scope": [], "all": [], "other": []}

    def recorder(key: str):  # type: ignore[no-untyped-def]
        async def handler(topic: str, body: bytes) -> None:
            seen[key].append((topic, body))

        return handler

    scope_sub = await broker.subscribe_broadcast("watch.task.*", recorder("scope"))
    await broker.subscribe_broadcast("watch.#", recorder("all"))
    await broker.subscribe_broadcast("other.*", recorder("other"))
    await broker.broadcast("watch.task.t1", b"v1")
    await assert_eventually(lambda: _assert_equal((len(seen["scope"]), len(seen["all"])), (1, 1)))
    await scope_sub.cancel()
    await broker.broadcast("watch.task.t1", b"v2")
    await _broadcast_marker_and_wait(broker)
    assert seen == {
        "scope": [("watch.task.t1", b"v1")],
        "all": [("watch.task.t1", b"v1"), ("watch.task.t1", b"v2")],
        "other": [],
    }


async def test_event_subscriptions_get_a_copy_of_matching_events_until_cancelled(
    broker: MemoryBroker,
) -> None:
    """An event subscription gets a copy of each matching event published on the events exchange
    (and nothing else); once cancelled it gets none, although a newer subscription with a matching
    pattern gets the same later event."""
    seen: list[tuple[str, bytes]] = []

    async def record(key: str, body: bytes) -> None:
        seen.append((key, body))

    subscription = await broker.subscribe_events("organization.member.*", record)
    await broker.publish(
        exchange="events", routing_key="organization.member.removed", body=b"m1", message_id="1"
    )
    await broker.publish(exchange="events", routing_key="task.summary.updated", body=b"no", message_id="2")
    await assert_eventually(lambda: _assert_equal(seen, [("organization.member.removed", b"m1")]))
    await subscription.cancel()
    later: list[tuple[str, bytes]] = []

    async def witness_handler(key: str, body: bytes) -> None:
        later.append((key, body))

    witness = await broker.subscribe_events("#", witness_handler)
    await broker.publish(
        exchange="events", routing_key="organization.member.changed", body=b"m2", message_id="3"
    )
    # The marker is published after m2, so each handler m2 started (the cancelled one's, if it still
    # got one) has run before the witness sees the marker: the broker starts handlers in publish
    # order and these finish without awaiting.
    await broker.publish(exchange="events", routing_key="test.marker", body=b"marker", message_id="4")
    await assert_eventually(
        lambda: _assert_equal(later, [("organization.member.changed", b"m2"), ("test.marker", b"marker")])
    )
    await witness.cancel()
    assert seen == [("organization.member.removed", b"m1")]


async def _broadcast_marker_and_wait(broker: MemoryBroker) -> None:
    """Broadcast a marker and wait until a subscription to it has it: by then every broadcast made
    before has been handled by each subscription it was handed to (the broker starts handlers in
    broadcast order, and the tests' handlers finish without awaiting)."""
    arrived = asyncio.Event()

    async def handler(topic: str, body: bytes) -> None:
        arrived.set()

    marker = await broker.subscribe_broadcast("test.marker", handler)
    try:
        await broker.broadcast("test.marker", b"marker")
        async with asyncio.timeout(10):
            await arrived.wait()
    finally:
        await marker.cancel()


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected
