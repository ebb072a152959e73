"""In-process `Broker` for the embedded mode (every service in one process).

It keeps RabbitMQ's semantics so the production code paths (outbox relay, Worker acks, retries, DLQ)
behave the same on both transports:

- publishing to the default exchange (`exchange=""`) routes by queue name; an undeclared queue is
  unroutable and raises `Unavailable`, like a mandatory publish that comes back with basic.return;
- `exchange="events"` is a topic exchange: a copy goes to every queue with a matching binding
  (zero matches is fine, as for a non-mandatory topic publish);
- a consumer holds at most `prefetch` unsettled deliveries; several consumers of a queue share it
  round-robin; `requeue` puts the message back at the head with `redelivered=True`;
- `retry(delay)` re-enqueues after `delay` seconds with `x-attempt` + 1; `dead_letter(reason)` moves
  the message to the queue's DLQ (inspect it with `dead_letters(queue)`);
- broadcasts are best-effort and delivered to every matching subscription, this process included.

Nothing survives the process: messages are lost on exit (the outbox keeps what must not be lost).
A graceful stop calls `settle()` first: the consumers run the queues empty, then publishing is refused
(`Unavailable`), so the outbox keeps whatever is written later for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from services.platform.aio import cancel_and_log, wait_event
from services.platform.errors import Unavailable
from services.platform.logging import get_logger
from services.platform.messaging._topic import topic_matches
from services.platform.messaging.broker import (
    ATTEMPT,
    BroadcastHandler,
    ConnectionListener,
    DeliveryHandler,
    Message,
    QueueSpec,
    outgoing_headers,
)
from services.platform.settings import MessagingSettings

log = get_logger(__name__)

EVENTS_EXCHANGE = "events"
DEAD_LETTER_REASON = "x-dead-letter-reason"


class MemoryBroker:
    """`Broker` living in this process's event loop. Use only when every service shares the process."""

    def __init__(self, settings: MessagingSettings | None = None) -> None:
        self._settings = settings or MessagingSettings.model_validate({})
        self._queues: dict[str, _Queue] = {}
        self._broadcast_subs: list[_BroadcastSubscription] = []
        self._event_subs: list[_BroadcastSubscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._progress = asyncio.Event()  # set when a delivery settles or a retry timer fires (settle())
        self._closed = False
        self._sealed = False

    # -- Broker protocol ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to open; re-opens a closed broker (tests reuse one instance)."""
        self._closed = self._sealed = False

    @property
    def unavailable_reason(self) -> str:
        """Always "": there is no connection to lose."""
        return ""

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Nothing to report: the in-process broker cannot lose a connection."""

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Create the queue (and its DLQ) if missing; bindings are added, never removed (idempotent)."""
        queue = self._queues.get(spec.name)
        if queue is None:
            queue = self._queues[spec.name] = _Queue(self, spec.name)
        queue.bindings.update(spec.bindings)

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Route the message now. Raises `Unavailable` when closed or when no work queue is named."""
        if self._closed or self._sealed:
            raise Unavailable(
                "in-process broker is closed" if self._closed else "in-process broker is draining"
            )
        all_headers = outgoing_headers(headers)
        message = Message(
            message_id=message_id,
            body=bytes(body),
            headers=all_headers,
            routing_key=routing_key,
            exchange=exchange,
            attempt=_attempt_of(all_headers),
        )
        if exchange == "":
            queue = self._queues.get(routing_key)
            if queue is None:
                raise Unavailable(f"unroutable message: no queue named {routing_key!r}", reason="UNROUTABLE")
            queue.put(message)
        elif exchange == EVENTS_EXCHANGE:
            for queue in list(self._queues.values()):
                if any(topic_matches(pattern, routing_key) for pattern in queue.bindings):
                    queue.put(message)
            for sub in list(self._event_subs):
                if topic_matches(sub.pattern, routing_key):
                    self.spawn(sub.handler(routing_key, bytes(body)), what="event subscription handler")
        else:
            raise ValueError(f"unknown exchange {exchange!r} (use '' or 'events')")

    async def consume(self, spec: QueueSpec, handler: DeliveryHandler) -> _Consumer:
        """Start delivering `spec`'s messages to `handler` (each delivery in its own task)."""
        await self.declare_queue(spec)
        queue = self._queues[spec.name]
        consumer = _Consumer(queue, handler, spec.prefetch or self._settings.prefetch)
        queue.consumers.append(consumer)
        queue.pump()
        return consumer

    async def broadcast(self, topic: str, body: bytes) -> None:
        """Hand `body` to every subscription whose pattern matches `topic` (asynchronously)."""
        if self._closed:
            raise Unavailable("in-process broker is closed")
        for sub in list(self._broadcast_subs):
            if topic_matches(sub.pattern, topic):
                self.spawn(sub.handler(topic, bytes(body)), what="broadcast handler")

    async def subscribe_broadcast(
        self, topic_pattern: str, handler: BroadcastHandler
    ) -> _BroadcastSubscription:
        """Receive later broadcasts matching `topic_pattern` until the subscription is cancelled."""
        sub = _BroadcastSubscription(self, topic_pattern, handler)
        self._broadcast_subs.append(sub)
        return sub

    async def subscribe_events(
        self, routing_pattern: str, handler: BroadcastHandler
    ) -> _BroadcastSubscription:
        """Receive a copy of every later event matching `routing_pattern` until cancelled."""
        sub = _BroadcastSubscription(self, routing_pattern, handler, self._event_subs)
        self._event_subs.append(sub)
        return sub

    async def close(self) -> None:
        """Stop timers and handler tasks; unsettled deliveries go back to their queues (channel close)."""
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for queue in self._queues.values():
            for consumer in list(queue.consumers):
                consumer.detach()
            queue.consumers.clear()
        self._broadcast_subs.clear()
        self._event_subs.clear()
        # Bounded: a swallowed cancel must not hang close.
        await cancel_and_log(list(self._tasks), log, "broker_tasks_ignored_cancel")

    async def settle(self, deadline: float) -> int:
        """Drain step of the embedded process, before its consumers stop: nobody else will ever consume
        what is queued here, so wait until no message is ready, unsettled or waiting for a retry
        (or `deadline`, time.monotonic()), then refuse publishing until the next `connect()`: the
        outbox keeps later rows for the next start. Returns how many messages are left (lost on exit)."""
        await self.idle(deadline)
        self._sealed = True
        return self._pending()

    async def idle(self, deadline: float) -> bool:
        """Wait until every message published so far to a consumed queue has been handled and settled
        (or `deadline`, time.monotonic()); True when idle. Tests use it to prove a message had no
        effect without sleeping."""
        while self._pending(consumed_only=True):
            self._progress.clear()
            if not await wait_event(self._progress, deadline - time.monotonic()):
                return False  # the deadline passed
        return True

    def _pending(self, *, consumed_only: bool = False) -> int:
        """Messages ready (in a queue somebody consumes, with `consumed_only`), unsettled or waiting
        for their retry delay."""
        return len(self._timers) + sum(
            (len(q.ready) if q.consumers or not consumed_only else 0)
            + sum(len(c.unsettled) for c in q.all_consumers)
            for q in self._queues.values()
        )

    # -- inspection for tests and embedded diagnostics ---------------------------------------------

    def dead_letters(self, queue: str) -> list[Message]:
        """Messages dead-lettered from `queue`, oldest first (reason in header `x-dead-letter-reason`)."""
        q = self._queues.get(queue)
        return list(q.dlq) if q else []

    def ready_count(self, queue: str) -> int:
        """Messages waiting in `queue`, not yet delivered to a consumer."""
        q = self._queues.get(queue)
        return len(q.ready) if q else 0

    def unsettled_count(self, queue: str) -> int:
        """Deliveries of `queue` handed to consumers and not yet settled."""
        q = self._queues.get(queue)
        return sum(len(c.unsettled) for c in q.all_consumers) if q else 0

    # -- internals ---------------------------------------------------------------------------------

    def spawn(self, coro: Any, *, what: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, what))

    def _task_done(self, task: asyncio.Task[None], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("memory_broker_task_failed", what=what, exc_info=task.exception())

    def later(self, delay: float, callback: Any) -> None:
        loop = asyncio.get_running_loop()
        holder: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._timers.discard(holder[0])
            self._progress.set()
            if not self._closed:
                callback()

        handle = loop.call_later(max(0.0, delay), fire)
        holder.append(handle)
        self._timers.add(handle)


def _attempt_of(headers: Mapping[str, Any]) -> int:
    try:
        return max(1, int(headers.get(ATTEMPT, 1)))
    except (TypeError, ValueError):
        return 1


class _Queue:
    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.bindings: set[str] = set()
        self.ready: deque[Message] = deque()
        self.dlq: list[Message] = []
        self.consumers: list[_Consumer] = []
        self.all_consumers: list[_Consumer] = []  # includes cancelled ones still holding deliveries
        self._rr = itertools.count()

    def put(self, message: Message, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(message)
        else:
            self.ready.append(message)
        self.pump()

    def pump(self) -> None:
        """Hand ready messages to consumers with free prefetch slots, round-robin."""
        while self.ready and self.consumers:
            n = len(self.consumers)
            start = next(self._rr) % n
            target = next(
                (
                    self.consumers[(start + i) % n]
                    for i in range(n)
                    if self.consumers[(start + i) % n].has_room
                ),
                None,
            )
            if target is None:
                return
            target.deliver(self.ready.popleft())


class _Consumer:
    """One `consume()` registration; also the `Subscription` returned to the caller."""

    def __init__(self, queue: _Queue, handler: DeliveryHandler, prefetch: int) -> None:
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.unsettled: set[_MemoryDelivery] = set()
        queue.all_consumers.append(self)

    @property
    def has_room(self) -> bool:
        return len(self.unsettled) < self.prefetch

    def deliver(self, message: Message) -> None:
        delivery = _MemoryDelivery(self, message)
        self.unsettled.add(delivery)
        self.queue.broker.spawn(self.handler(delivery), what=f"consumer of {self.queue.name}")

    def settled(self, delivery: _MemoryDelivery) -> None:
        """Free the prefetch slot (the caller pumps once the message went wherever it goes)."""
        self.unsettled.discard(delivery)
        self.queue.broker._progress.set()
        if not self.unsettled and self not in self.queue.consumers and self in self.queue.all_consumers:
            self.queue.all_consumers.remove(self)

    def detach(self) -> None:
        """Channel closed: every unsettled delivery returns to the queue, marked redelivered."""
        for delivery in list(self.unsettled):
            delivery.settled = True
            self.unsettled.discard(delivery)
            self.queue.ready.appendleft(dataclasses.replace(delivery.message, redelivered=True))

    async def cancel(self) -> None:
        """Stop receiving new deliveries; deliveries already handed over still settle."""
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        if not self.unsettled and self in self.queue.all_consumers:
            self.queue.all_consumers.remove(self)
        self.queue.pump()


class _MemoryDelivery:
    def __init__(self, consumer: _Consumer, message: Message) -> None:
        self.consumer = consumer
        self.message = message
        self.settled = False

    def _settle(self) -> None:
        if self.settled:
            raise RuntimeError(f"delivery of {self.message.message_id} is already settled")
        self.settled = True
        self.consumer.settled(self)

    async def ack(self) -> None:
        self._settle()
        self.consumer.queue.pump()

    async def retry(self, delay_seconds: float) -> None:
        self._settle()
        attempt = self.message.attempt + 1
        again = dataclasses.replace(
            self.message,
            attempt=attempt,
            redelivered=False,
            headers={**self.message.headers, ATTEMPT: attempt},
        )
        queue = self.consumer.queue
        queue.broker.later(delay_seconds, lambda: queue.put(again))
        queue.pump()

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        headers = {**self.message.headers, DEAD_LETTER_REASON: reason}
        self.consumer.queue.dlq.append(dataclasses.replace(self.message, headers=headers))
        self.consumer.queue.pump()

    async def requeue(self) -> None:
        self._settle()
        self.consumer.queue.put(dataclasses.replace(self.message, redelivered=True), front=True)


class _BroadcastSubscription:
    def __init__(
        self,
        broker: MemoryBroker,
        pattern: str,
        handler: BroadcastHandler,
        registry: list[_BroadcastSubscription] | None = None,
    ) -> None:
        self.broker = broker
        self.pattern = pattern
        self.handler = handler
        self._registry = broker._broadcast_subs if registry is None else registry

    async def cancel(self) -> None:
        with contextlib.suppress(ValueError):
            self._registry.remove(self)
