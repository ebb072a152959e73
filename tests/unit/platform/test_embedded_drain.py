"""The embedded process's graceful drain and its in-process queues: nobody else will ever consume them,
so the drain lets the process's own consumers run them empty before it stops them (bounded by half the
grace), then the broker refuses publishing so the outbox keeps later rows for the next start.

`Process` runs a component built like a ServiceHost's queue side: a real `Worker` on the real
`MemoryBroker`, whose `begin_drain` stops consuming and whose `wait_idle` waits for its handlers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.platform.errors import Unavailable
from services.platform.messaging import HandlerContext, MemoryBroker, Message, QueueSpec, Worker
from services.platform.process import Process
from services.platform.settings import DrainSettings, MessagingSettings, Settings

QUEUE = QueueSpec("embedded.work", prefetch=1)
HANDLER_SECONDS = 0.02


class Consumers:
    """The queue side of a service host: one Worker, drained the way ServiceHost drains it."""

    name = "consumers"
    ready = True

    def __init__(self, broker: MemoryBroker, *, stuck: bool = False) -> None:
        self.broker = broker
        self.handled: list[str] = []
        self.stuck = stuck
        self.accepting_stopped_at = 0.0
        self.consuming_stopped_at = 0.0
        self.refused = ""  # why a publish during the drain was refused
        self.worker = Worker(broker, service="task", settings=MessagingSettings(prefetch=1))
        self.worker.register(QUEUE, self.handle, concurrency=1)

    async def handle(self, message: Message, ctx: HandlerContext) -> None:
        if self.stuck:
            await asyncio.Event().wait()  # never finishes (cancelled after the grace)
        await asyncio.sleep(HANDLER_SECONDS)
        self.handled.append(message.message_id)

    async def start(self) -> int:
        await self.worker.start()
        return 0

    async def stop_accepting(self) -> None:
        self.accepting_stopped_at = time.monotonic()

    async def begin_drain(self, deadline: float | None = None) -> None:
        self.consuming_stopped_at = time.monotonic()
        try:  # what an outbox relay pass would do now: the row must stay in the outbox
            await _publish(self.broker, 1)
        except Unavailable as exc:
            self.refused = str(exc)
        await self.worker.stop_consuming()

    async def wait_idle(self, timeout: float) -> dict[str, bool]:
        return {"handlers_finished": await self.worker.wait_idle(timeout, unwind=0.5)}

    async def close(self) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"service": self.name, "active_handlers": self.worker.active}


async def _publish(broker: MemoryBroker, count: int) -> list[str]:
    ids = [f"m{i:02d}" for i in range(count)]
    for message_id in ids:
        await broker.publish(exchange="", routing_key=QUEUE.name, body=b"", message_id=message_id)
    return ids


async def test_graceful_drain_consumes_what_is_queued_in_memory_before_stopping_consumers() -> None:
    settings = Settings(metrics_port=0, drain=DrainSettings(grace_seconds=10.0))
    broker = MemoryBroker(MessagingSettings(prefetch=1))
    consumers = Consumers(broker)
    process = Process(settings, "embedded", [consumers], broker)
    await process.start()
    ids = await _publish(broker, 20)  # relayed, still queued: ~0.4 s of work for one slow consumer
    await process.stop()
    assert consumers.handled == ids  # none left in memory to vanish with the process
    assert process.drain_started_at is not None
    # New work is refused at once (readiness off); only the consumers keep running until settled.
    assert consumers.accepting_stopped_at - process.drain_started_at < 0.05
    assert consumers.consuming_stopped_at - process.drain_started_at >= 0.9 * len(ids) * HANDLER_SECONDS
    assert consumers.refused == "in-process broker is draining"


async def test_settle_is_bounded_and_tells_how_many_messages_are_left() -> None:
    broker = MemoryBroker(MessagingSettings(prefetch=1))
    consumers = Consumers(broker, stuck=True)
    await consumers.start()
    ids = await _publish(broker, 3)
    started = time.monotonic()
    left = await broker.settle(started + 0.3)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert left == len(ids)  # one held by the stuck handler, two ready
    with pytest.raises(Unavailable, match="draining"):
        await _publish(broker, 1)
    await consumers.worker.stop(0.1)
    await broker.close()
    await broker.connect()  # a reused broker (tests) publishes again
    await broker.declare_queue(QUEUE)
    await _publish(broker, 1)
    await broker.close()


async def test_settle_does_not_wait_for_a_queue_nobody_consumes() -> None:
    broker = MemoryBroker(MessagingSettings())
    await broker.connect()
    await broker.declare_queue(QueueSpec("embedded.orphan"))
    await broker.publish(exchange="", routing_key="embedded.orphan", body=b"", message_id="x")
    started = time.monotonic()
    assert await broker.settle(started + 5) == 1
    assert time.monotonic() - started < 0.5
    await broker.close()
